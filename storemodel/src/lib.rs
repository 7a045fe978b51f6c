//! The store contract (the WIT `state` interface of `wit/policy.wit`, and the
//! host's alert log) written as plainly as possible: a few `BTreeMap`s, no index,
//! no cache, no concern for speed, so that each primitive reads as its contract
//! does. It is the one model every check of the contract uses, as redb checks
//! itself against one `BTreeMap`:
//!
//! - the host's conformance property test runs random [`Op`]s on each backend and
//!   on a [`Model`], and compares every [`Answer`] (`host/tests/it/store/`,
//!   through `creditgate::store::model`, which applies an [`Op`] to a `Store`);
//! - the store fuzzer does the same with coverage feedback and names past the
//!   limits (`host/fuzz/fuzz_targets/store_model.rs`);
//! - the guest's unit tests run the engine natively on a [`Model`] behind its
//!   `State` trait (`guest/src/mem_state.rs`).
//!
//! The host's `MemoryStore` is not this model: it keeps inverse indexes and
//! per-group counts so that every primitive costs a lookup or two (it is the
//! store of the native benchmarks), where the model recounts from scratch; and a
//! model that were the implementation under test would check nothing.
//!
//! Names and values are checked against [`Limits`] only by [`Model::apply`], as
//! a backend checks its arguments; the primitives themselves take anything.

use std::collections::{BTreeMap, BTreeSet};

/// A point in time: nanoseconds since the Unix epoch (WIT `instant`).
pub type Instant = i64;

/// A record a call depends on (WIT `guard`): the call does anything only while
/// record `key` of its scope holds exactly `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

/// An idempotency key of a counter addition (WIT `once`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Once<'a> {
    pub key: &'a str,
    /// What the key covers: the same key with another fingerprint is a conflict.
    pub fingerprint: u64,
    pub expires_at: Instant,
}

/// The arguments of a counter addition besides its scope, guard and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Add<'a> {
    pub amount: u64,
    /// None: no bound.
    pub limit: Option<u64>,
    pub once: Option<Once<'a>>,
    /// When the counter may be forgotten; None: never.
    pub expires_at: Option<Instant>,
    /// The instant of the call; expiries are judged against it.
    pub now: Instant,
}

/// What a counter addition did (WIT `counter-added`, without the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Applied,
    /// A live `once` marker with the same fingerprint: nothing added.
    Repeated,
    /// Past the limit, or past `u64::MAX`: nothing added.
    Refused,
    /// A live `once` marker with another fingerprint: nothing added.
    Conflict,
}

/// A counter and the scope's member count, from one snapshot (WIT `tally`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub counter: u64,
    pub members: u64,
}

/// What adding a member did (WIT `member-add-outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    AlreadyInGroup,
    /// Already a member of the scope, through another group.
    Joined,
    /// New to the scope.
    Inserted,
    /// New to the scope, which is at its member limit: nothing added.
    Refused,
}

/// What removing a member did (WIT `member-remove-outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    NotInGroup,
    /// Still held by another group of the scope.
    LeftGroup,
    /// Its last group: no longer a member of the scope.
    Released,
}

/// What clearing a group did (WIT `group-cleared`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleared {
    /// Members the group held.
    pub removed: u64,
    /// Of those, members no other group held.
    pub released: u64,
    /// The scope's member count after.
    pub members: u64,
}

/// The whole content of one scope, in a backend-neutral form (the host's
/// `store::ScopeDump`): what exports give and imports take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// `(key, value)`, ordered by key.
    pub records: Vec<(String, String)>,
    /// `(name, value, expires_at)`, ordered by name; as stored, expired or not
    /// (expiry is judged against each call's `now`).
    pub counters: Vec<(String, u64, Option<Instant>)>,
    /// `(key, expires_at, fingerprint)` of `once` markers, ordered by key. A
    /// fingerprint of None is a marker stored before markers carried one: it
    /// matches no call's fingerprint (WIT `once`).
    pub once: Vec<(String, Instant, Option<u64>)>,
    /// `(group, member)`, ordered by group then member.
    pub memberships: Vec<(String, String)>,
}

/// The longest name and value, the largest batch, and the most groups of its
/// scope a member may be in, that a store accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub name: usize,
    pub value: usize,
    pub batch: usize,
    pub groups: u64,
}

impl Limits {
    /// No limit at all.
    pub const NONE: Limits = Limits {
        name: usize::MAX,
        value: usize::MAX,
        batch: usize::MAX,
        groups: u64::MAX,
    };
}

/// An argument past [`Limits`]: the store must refuse the call, applying nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// One call of a primitive, with all its arguments, as data: what the property
/// test and the fuzzer generate and run on a store and on the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    RecordGet {
        scope: String,
        key: String,
    },
    RecordInsert {
        scope: String,
        key: String,
        value: String,
    },
    RecordUpdate {
        scope: String,
        key: String,
        value: String,
    },
    RecordUpdateGuarded {
        scope: String,
        /// `(key, value)`.
        guard: (String, String),
        key: String,
        value: String,
    },
    CounterGet {
        scope: String,
        name: String,
        now: Instant,
    },
    /// `counter-add` without a guard ([`Answer::Counter`]), `counter-add-guarded`
    /// with one ([`Answer::Guarded`]).
    CounterAdd {
        scope: String,
        /// `(key, value)`.
        guard: Option<(String, String)>,
        name: String,
        add: AddCall,
    },
    CounterTally {
        scope: String,
        guard: Option<(String, String)>,
        name: String,
        now: Instant,
    },
    MemberAdd {
        scope: String,
        group: String,
        member: String,
        limit: Option<u64>,
    },
    MemberAddGuarded {
        scope: String,
        guard: Option<(String, String)>,
        group: String,
        member: String,
        limit: Option<u64>,
        /// The counter read after the addition.
        name: String,
        now: Instant,
    },
    MemberAddMany {
        scope: String,
        group: String,
        members: Vec<String>,
        limit: Option<u64>,
    },
    MemberRemove {
        scope: String,
        group: String,
        member: String,
    },
    GroupClear {
        scope: String,
        group: String,
    },
    MemberCount {
        scope: String,
    },
    GroupCounts {
        scope: String,
    },
    Membership {
        scope: String,
        group: String,
        member: String,
    },
    Scopes,
    /// Makes everything durable: changes nothing observable.
    Persist,
    /// The memberships of a scope (of one group), in order.
    Visit {
        scope: String,
        group: Option<String>,
    },
    Export {
        scope: String,
    },
    /// Exports `from` and imports the dump over `to` (the same scope: changes
    /// nothing observable).
    Copy {
        from: String,
        to: String,
    },
    AlertSequence {
        owner: String,
    },
    AlertInsert {
        owner: String,
        key: String,
        value: String,
    },
    /// The alert log (of one owner), after `(owner, key)`, in order.
    VisitAlerts {
        owner: Option<String>,
        after: Option<(String, String)>,
    },
}

/// The arguments of a counter addition in an [`Op`] (see [`Add`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCall {
    pub amount: u64,
    pub limit: Option<u64>,
    /// `(key, fingerprint, expires_at)`.
    pub once: Option<(String, u64, Instant)>,
    pub expires_at: Option<Instant>,
    pub now: Instant,
}

impl AddCall {
    pub fn borrow(&self) -> Add<'_> {
        Add {
            amount: self.amount,
            limit: self.limit,
            once: self
                .once
                .as_ref()
                .map(|(key, fingerprint, expires_at)| Once {
                    key,
                    fingerprint: *fingerprint,
                    expires_at: *expires_at,
                }),
            expires_at: self.expires_at,
            now: self.now,
        }
    }
}

impl Op {
    /// The same call made `by` later: every instant of it moved by `by`.
    pub fn later(mut self, by: Instant) -> Op {
        match &mut self {
            Op::CounterGet { now, .. }
            | Op::CounterTally { now, .. }
            | Op::MemberAddGuarded { now, .. } => *now += by,
            Op::CounterAdd { add, .. } => {
                add.now += by;
                add.expires_at = add.expires_at.map(|at| at + by);
                if let Some((_, _, expires_at)) = &mut add.once {
                    *expires_at += by;
                }
            }
            _ => {}
        }
        self
    }
}

/// What a primitive answered, in one comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Bool(bool),
    Value(Option<String>),
    Count(u64),
    /// `counter-add`: the outcome and the counter's value.
    Counter(Added, u64),
    /// `counter-add-guarded`; None: the guard did not hold (`stale`).
    Guarded(Option<(Added, Tally)>),
    /// `counter-tally`; None: the guard did not hold.
    Tally(Option<Tally>),
    /// `member-add`: the outcome and the member count.
    Member(Joined, u64),
    /// `member-add-guarded`; None: the guard did not hold.
    GuardedMember(Option<(Joined, Tally)>),
    /// `member-add-many`: each member's outcome and the member count.
    Members(Vec<Joined>, u64),
    /// `member-remove`: the outcome and the member count.
    Removed(Left, u64),
    Cleared(Cleared),
    Scopes(Vec<String>),
    /// `(group, member)`.
    Visited(Vec<(String, String)>),
    Dump(Dump),
    /// `(group, members, exclusive)` of each group, in order.
    Groups(Vec<(String, u64, u64)>),
    Membership(Option<u64>),
    /// `(owner, key, value)`.
    Alerts(Vec<(String, String, String)>),
    Unit,
}

/// The state of a store, with the primitives over it.
#[derive(Debug, Clone, Default)]
pub struct Model {
    limits: Option<Limits>,
    /// (scope, key) → value.
    records: BTreeMap<(String, String), String>,
    /// (scope, name) → (value, expires_at: None = never).
    counters: BTreeMap<(String, String), (u64, Option<Instant>)>,
    /// (scope, once key) → (expires_at, fingerprint).
    once: BTreeMap<(String, String), (Instant, Option<u64>)>,
    /// (scope, member) → its groups; absent when it has none.
    groups: BTreeMap<(String, String), BTreeSet<String>>,
    /// (owner, key) → value.
    alerts: BTreeMap<(String, String), String>,
    /// owner → the last sequence number taken.
    sequences: BTreeMap<String, u64>,
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

impl Model {
    /// An empty store that takes any argument.
    pub fn new() -> Model {
        Model::default()
    }

    /// An empty store whose [`Model::apply`] refuses arguments past `limits`.
    pub fn with_limits(limits: Limits) -> Model {
        Model {
            limits: Some(limits),
            ..Model::default()
        }
    }

    pub fn record_get(&self, scope: &str, key: &str) -> Option<String> {
        self.records.get(&pair(scope, key)).cloned()
    }

    pub fn record_insert(&mut self, scope: &str, key: &str, value: &str) -> bool {
        let k = pair(scope, key);
        if self.records.contains_key(&k) {
            return false;
        }
        self.records.insert(k, value.to_owned());
        true
    }

    pub fn record_update(&mut self, scope: &str, key: &str, value: &str) -> bool {
        match self.records.get_mut(&pair(scope, key)) {
            Some(old) => {
                value.clone_into(old);
                true
            }
            None => false,
        }
    }

    /// `record-update` while `guard` holds.
    pub fn record_update_guarded(
        &mut self,
        scope: &str,
        guard: Guard<'_>,
        key: &str,
        value: &str,
    ) -> bool {
        self.guard_holds(scope, Some(guard)) && self.record_update(scope, key, value)
    }

    /// A counter's value at `now`: 0 when it was never added to, or has expired.
    pub fn counter_get(&self, scope: &str, name: &str, now: Instant) -> u64 {
        match self.counters.get(&pair(scope, name)) {
            Some(&(_, Some(expires_at))) if expires_at <= now => 0,
            Some(&(value, _)) => value,
            None => 0,
        }
    }

    /// Whether `guard`, if any, holds in `scope`: its record holds exactly its
    /// value. (`member-add-guarded` is this, then `member_add` and `counter_get`:
    /// one thread's calls on a model are as atomic as a store's one step.)
    pub fn guard_holds(&self, scope: &str, guard: Option<Guard<'_>>) -> bool {
        guard.is_none_or(|g| {
            self.records.get(&pair(scope, g.key)).map(String::as_str) == Some(g.value)
        })
    }

    /// `counter-add-guarded` (`counter-add` without a guard): None when the guard
    /// does not hold.
    pub fn counter_add(
        &mut self,
        scope: &str,
        guard: Option<Guard<'_>>,
        name: &str,
        add: Add<'_>,
    ) -> Option<(Added, Tally)> {
        if !self.guard_holds(scope, guard) {
            return None;
        }
        let members = self.member_count(scope);
        let current = self.counter_get(scope, name, add.now);
        let answer = |added, counter| Some((added, Tally { counter, members }));
        if let Some(once) = add.once
            && let Some(&(expires_at, stored)) = self.once.get(&pair(scope, once.key))
            && expires_at > add.now
        {
            return if stored == Some(once.fingerprint) {
                answer(Added::Repeated, current)
            } else {
                answer(Added::Conflict, current)
            };
        }
        let new = match current.checked_add(add.amount) {
            Some(new) if add.limit.is_none_or(|limit| new <= limit) => new,
            _ => return answer(Added::Refused, current),
        };
        self.counters
            .insert(pair(scope, name), (new, add.expires_at));
        if let Some(once) = add.once {
            // Kept even if already expired: a call at an earlier `now` sees it.
            let marker = (once.expires_at, Some(once.fingerprint));
            self.once.insert(pair(scope, once.key), marker);
        }
        answer(Added::Applied, new)
    }

    /// `counter-tally`: None when the guard does not hold.
    pub fn counter_tally(
        &self,
        scope: &str,
        guard: Option<Guard<'_>>,
        name: &str,
        now: Instant,
    ) -> Option<Tally> {
        self.guard_holds(scope, guard).then(|| Tally {
            counter: self.counter_get(scope, name, now),
            members: self.member_count(scope),
        })
    }

    /// `member-add`: the outcome and the member count after it.
    pub fn member_add(
        &mut self,
        scope: &str,
        group: &str,
        member: &str,
        limit: Option<u64>,
    ) -> (Joined, u64) {
        let k = pair(scope, member);
        let held = self.groups.get(&k);
        let outcome = if held.is_some_and(|groups| groups.contains(group)) {
            Joined::AlreadyInGroup
        } else if held.is_some() {
            Joined::Joined
        } else if limit.is_some_and(|l| self.member_count(scope) >= l) {
            Joined::Refused
        } else {
            Joined::Inserted
        };
        if let Joined::Joined | Joined::Inserted = outcome {
            self.groups.entry(k).or_default().insert(group.to_owned());
        }
        (outcome, self.member_count(scope))
    }

    /// `member-add-many`: each member added in order, as `member-add` would.
    pub fn member_add_many<M: AsRef<str>>(
        &mut self,
        scope: &str,
        group: &str,
        members: &[M],
        limit: Option<u64>,
    ) -> (Vec<Joined>, u64) {
        let outcomes = (members.iter())
            .map(|m| self.member_add(scope, group, m.as_ref(), limit).0)
            .collect();
        (outcomes, self.member_count(scope))
    }

    /// `member-remove`: the outcome and the member count after it.
    pub fn member_remove(&mut self, scope: &str, group: &str, member: &str) -> (Left, u64) {
        let k = pair(scope, member);
        let Some(groups) = self.groups.get_mut(&k) else {
            return (Left::NotInGroup, self.member_count(scope));
        };
        let outcome = if !groups.remove(group) {
            Left::NotInGroup
        } else if groups.is_empty() {
            self.groups.remove(&k);
            Left::Released
        } else {
            Left::LeftGroup
        };
        (outcome, self.member_count(scope))
    }

    pub fn group_clear(&mut self, scope: &str, group: &str) -> Cleared {
        let (mut removed, mut released) = (0, 0);
        for ((s, _), groups) in self.groups.iter_mut() {
            if s == scope && groups.remove(group) {
                removed += 1;
                released += u64::from(groups.is_empty());
            }
        }
        self.groups.retain(|_, groups| !groups.is_empty());
        Cleared {
            removed,
            released,
            members: self.member_count(scope),
        }
    }

    /// How many distinct members the scope's groups hold.
    pub fn member_count(&self, scope: &str) -> u64 {
        self.groups.keys().filter(|(s, _)| s == scope).count() as u64
    }

    /// `(group, members, exclusive)` of each group of `scope` holding members:
    /// exclusive members are held by that group alone.
    pub fn group_counts(&self, scope: &str) -> Vec<(String, u64, u64)> {
        let mut counts = BTreeMap::<String, (u64, u64)>::new();
        for ((s, _), groups) in &self.groups {
            if s != scope {
                continue;
            }
            for g in groups {
                let (members, exclusive) = counts.entry(g.clone()).or_default();
                *members += 1;
                *exclusive += u64::from(groups.len() == 1);
            }
        }
        counts.into_iter().map(|(g, (m, e))| (g, m, e)).collect()
    }

    /// How many groups hold `member` if `group` is one of them.
    pub fn membership(&self, scope: &str, group: &str, member: &str) -> Option<u64> {
        (self.groups.get(&pair(scope, member)))
            .filter(|groups| groups.contains(group))
            .map(|groups| groups.len() as u64)
    }

    /// Scopes holding records, counters or members (not those holding only
    /// `once` markers), in order.
    pub fn scopes(&self) -> Vec<String> {
        let all: BTreeSet<&String> = (self.records.keys())
            .chain(self.counters.keys())
            .chain(self.groups.keys())
            .map(|(s, _)| s)
            .collect();
        all.into_iter().cloned().collect()
    }

    /// `(group, member)` of `scope` (of `group` only, when given), ordered by
    /// group then member.
    pub fn memberships(&self, scope: &str, group: Option<&str>) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = (self.groups.iter())
            .filter(|((s, _), _)| s == scope)
            .flat_map(|((_, m), gs)| gs.iter().map(move |g| (g.clone(), m.clone())))
            .filter(|(g, _)| group.is_none_or(|group| g == group))
            .collect();
        all.sort();
        all
    }

    pub fn export(&self, scope: &str) -> Dump {
        Dump {
            records: (self.records.iter())
                .filter(|((s, _), _)| s == scope)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect(),
            counters: (self.counters.iter())
                .filter(|((s, _), _)| s == scope)
                .map(|((_, n), &(v, exp))| (n.clone(), v, exp))
                .collect(),
            once: (self.once.iter())
                .filter(|((s, _), _)| s == scope)
                .map(|((_, k), &(exp, fp))| (k.clone(), exp, fp))
                .collect(),
            memberships: self.memberships(scope, None),
        }
    }

    /// Replaces everything `scope` holds with `dump` (one without repeats).
    pub fn import(&mut self, scope: &str, dump: &Dump) {
        self.records.retain(|(s, _), _| s != scope);
        self.counters.retain(|(s, _), _| s != scope);
        self.once.retain(|(s, _), _| s != scope);
        self.groups.retain(|(s, _), _| s != scope);
        for (k, v) in &dump.records {
            self.records.insert(pair(scope, k), v.clone());
        }
        for (n, v, exp) in &dump.counters {
            self.counters.insert(pair(scope, n), (*v, *exp));
        }
        for (k, exp, fp) in &dump.once {
            self.once.insert(pair(scope, k), (*exp, *fp));
        }
        for (g, m) in &dump.memberships {
            let groups = self.groups.entry(pair(scope, m)).or_default();
            groups.insert(g.clone());
        }
    }

    /// The next number of `owner`'s alert sequence: 1, 2, ...
    pub fn alert_sequence(&mut self, owner: &str) -> u64 {
        let next = self.sequences.get(owner).map_or(1, |n| n + 1);
        self.sequences.insert(owner.to_owned(), next);
        next
    }

    pub fn alert_insert(&mut self, owner: &str, key: &str, value: &str) -> bool {
        let k = pair(owner, key);
        if self.alerts.contains_key(&k) {
            return false;
        }
        self.alerts.insert(k, value.to_owned());
        true
    }

    /// `(owner, key, value)` of the log (of `owner` only), after `after`.
    pub fn alerts(
        &self,
        owner: Option<&str>,
        after: Option<(&str, &str)>,
    ) -> Vec<(String, String, String)> {
        (self.alerts.iter())
            .filter(|((o, _), _)| owner.is_none_or(|w| w == o))
            .filter(|((o, k), _)| after.is_none_or(|a| (o.as_str(), k.as_str()) > a))
            .map(|((o, k), v)| (o.clone(), k.clone(), v.clone()))
            .collect()
    }

    /// Checks `op`'s arguments against the limits, then applies it.
    pub fn apply(&mut self, op: &Op) -> Result<Answer, Invalid> {
        self.check(op)?;
        /// A guard's `(key, value)`.
        fn held((key, value): &(String, String)) -> Guard<'_> {
            Guard { key, value }
        }
        fn guard(g: &Option<(String, String)>) -> Option<Guard<'_>> {
            g.as_ref().map(held)
        }
        Ok(match op {
            Op::RecordGet { scope, key } => Answer::Value(self.record_get(scope, key)),
            Op::RecordInsert { scope, key, value } => {
                Answer::Bool(self.record_insert(scope, key, value))
            }
            Op::RecordUpdate { scope, key, value } => {
                Answer::Bool(self.record_update(scope, key, value))
            }
            Op::RecordUpdateGuarded {
                scope,
                guard: g,
                key,
                value,
            } => Answer::Bool(self.record_update_guarded(scope, held(g), key, value)),
            Op::CounterGet { scope, name, now } => {
                Answer::Count(self.counter_get(scope, name, *now))
            }
            Op::CounterAdd {
                scope,
                guard: g,
                name,
                add,
            } => {
                let added = self.counter_add(scope, guard(g), name, add.borrow());
                match (g, added) {
                    (Some(_), added) => Answer::Guarded(added),
                    (None, Some((added, tally))) => Answer::Counter(added, tally.counter),
                    (None, None) => unreachable!("no guard, so it holds"),
                }
            }
            Op::CounterTally {
                scope,
                guard: g,
                name,
                now,
            } => Answer::Tally(self.counter_tally(scope, guard(g), name, *now)),
            Op::MemberAdd {
                scope,
                group,
                member,
                limit,
            } => {
                self.check_joins(scope, group, [member])?;
                let (outcome, members) = self.member_add(scope, group, member, *limit);
                Answer::Member(outcome, members)
            }
            Op::MemberAddGuarded {
                scope,
                guard: g,
                group,
                member,
                limit,
                name,
                now,
            } => {
                if !self.guard_holds(scope, guard(g)) {
                    return Ok(Answer::GuardedMember(None));
                }
                self.check_joins(scope, group, [member])?;
                let (outcome, members) = self.member_add(scope, group, member, *limit);
                let counter = self.counter_get(scope, name, *now);
                Answer::GuardedMember(Some((outcome, Tally { counter, members })))
            }
            Op::MemberAddMany {
                scope,
                group,
                members,
                limit,
            } => {
                self.check_joins(scope, group, members)?;
                let (outcomes, count) = self.member_add_many(scope, group, members, *limit);
                Answer::Members(outcomes, count)
            }
            Op::MemberRemove {
                scope,
                group,
                member,
            } => {
                let (outcome, members) = self.member_remove(scope, group, member);
                Answer::Removed(outcome, members)
            }
            Op::GroupClear { scope, group } => Answer::Cleared(self.group_clear(scope, group)),
            Op::MemberCount { scope } => Answer::Count(self.member_count(scope)),
            Op::GroupCounts { scope } => Answer::Groups(self.group_counts(scope)),
            Op::Membership {
                scope,
                group,
                member,
            } => Answer::Membership(self.membership(scope, group, member)),
            Op::Scopes => Answer::Scopes(self.scopes()),
            Op::Persist => Answer::Unit,
            Op::Visit { scope, group } => {
                Answer::Visited(self.memberships(scope, group.as_deref()))
            }
            Op::Export { scope } => Answer::Dump(self.export(scope)),
            Op::Copy { from, to } => {
                let dump = self.export(from);
                self.import(to, &dump);
                Answer::Unit
            }
            Op::AlertSequence { owner } => Answer::Count(self.alert_sequence(owner)),
            Op::AlertInsert { owner, key, value } => {
                Answer::Bool(self.alert_insert(owner, key, value))
            }
            Op::VisitAlerts { owner, after } => {
                let after = after.as_ref().map(|(o, k)| (o.as_str(), k.as_str()));
                Answer::Alerts(self.alerts(owner.as_deref(), after))
            }
        })
    }

    /// Whether each of `members` may join `group` of `scope`: not one of them
    /// outside it may already be in `limits.groups` groups of the scope. A call
    /// with one that may not is refused whole.
    fn check_joins<M: AsRef<str>>(
        &self,
        scope: &str,
        group: &str,
        members: impl IntoIterator<Item = M>,
    ) -> Result<(), Invalid> {
        let Some(limits) = self.limits else {
            return Ok(());
        };
        let full = |member: &str| {
            self.groups.get(&pair(scope, member)).is_some_and(|groups| {
                !groups.contains(group) && groups.len() as u64 >= limits.groups
            })
        };
        match members.into_iter().any(|m| full(m.as_ref())) {
            true => Err(Invalid),
            false => Ok(()),
        }
    }

    /// Whether `op`'s arguments are within the limits, as every backend checks
    /// them (names, record values and guard values, batch sizes).
    fn check(&self, op: &Op) -> Result<(), Invalid> {
        let Some(limits) = self.limits else {
            return Ok(());
        };
        let names_ok = |names: &[&str]| names.iter().all(|n| n.len() <= limits.name);
        let held_ok = |(k, v): &(String, String)| names_ok(&[k]) && v.len() <= limits.value;
        let guard_ok = |g: &Option<(String, String)>| g.as_ref().is_none_or(held_ok);
        let ok = match op {
            Op::RecordGet { scope, key } => names_ok(&[scope, key]),
            Op::RecordInsert { scope, key, value } | Op::RecordUpdate { scope, key, value } => {
                names_ok(&[scope, key]) && value.len() <= limits.value
            }
            Op::RecordUpdateGuarded {
                scope,
                guard,
                key,
                value,
            } => names_ok(&[scope, key]) && value.len() <= limits.value && held_ok(guard),
            Op::CounterGet { scope, name, .. } => names_ok(&[scope, name]),
            Op::CounterAdd {
                scope,
                guard,
                name,
                add,
            } => {
                let once = add.once.as_ref().map_or("", |(k, _, _)| k);
                names_ok(&[scope, name, once]) && guard_ok(guard)
            }
            Op::CounterTally {
                scope, guard, name, ..
            } => names_ok(&[scope, name]) && guard_ok(guard),
            Op::MemberAdd {
                scope,
                group,
                member,
                ..
            }
            | Op::MemberRemove {
                scope,
                group,
                member,
            }
            | Op::Membership {
                scope,
                group,
                member,
            } => names_ok(&[scope, group, member]),
            Op::MemberAddGuarded {
                scope,
                guard,
                group,
                member,
                name,
                ..
            } => names_ok(&[scope, group, member, name]) && guard_ok(guard),
            Op::MemberAddMany {
                scope,
                group,
                members,
                ..
            } => {
                names_ok(&[scope, group])
                    && members.len() <= limits.batch
                    && members.iter().all(|m| names_ok(&[m]))
            }
            Op::GroupClear { scope, group } => names_ok(&[scope, group]),
            Op::MemberCount { scope } | Op::GroupCounts { scope } | Op::Export { scope } => {
                names_ok(&[scope])
            }
            Op::Visit { scope, group } => names_ok(&[scope, group.as_deref().unwrap_or("")]),
            Op::Copy { from, to } => names_ok(&[from, to]),
            Op::AlertSequence { owner } => names_ok(&[owner]),
            Op::AlertInsert { owner, key, value } => {
                names_ok(&[owner, key]) && value.len() <= limits.value
            }
            Op::Scopes | Op::Persist | Op::VisitAlerts { .. } => true,
        };
        if ok { Ok(()) } else { Err(Invalid) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(amount: u64, limit: Option<u64>, once: Option<Once<'_>>, now: Instant) -> Add<'_> {
        Add {
            amount,
            limit,
            once,
            expires_at: Some(10),
            now,
        }
    }

    #[test]
    fn counters_stop_at_their_limit_and_expire() {
        let mut m = Model::new();
        let applied = m.counter_add("s", None, "c", add(2, Some(3), None, 0));
        assert_eq!(applied.map(|a| a.0), Some(Added::Applied));
        let refused = m.counter_add("s", None, "c", add(2, Some(3), None, 1));
        assert_eq!(refused.map(|a| a.0), Some(Added::Refused));
        assert_eq!(m.counter_get("s", "c", 9), 2);
        assert_eq!(m.counter_get("s", "c", 10), 0);
    }

    #[test]
    fn once_keys_repeat_or_conflict_by_fingerprint() {
        let mut m = Model::new();
        let once = |fingerprint| {
            Some(Once {
                key: "k",
                fingerprint,
                expires_at: 5,
            })
        };
        let outcome = |m: &mut Model, fp, now| {
            m.counter_add("s", None, "c", add(1, None, once(fp), now))
                .map(|(a, t)| (a, t.counter))
        };
        assert_eq!(outcome(&mut m, 1, 0), Some((Added::Applied, 1)));
        assert_eq!(outcome(&mut m, 1, 1), Some((Added::Repeated, 1)));
        assert_eq!(outcome(&mut m, 2, 1), Some((Added::Conflict, 1)));
        assert_eq!(outcome(&mut m, 2, 5), Some((Added::Applied, 2)));
    }

    #[test]
    fn members_join_leave_and_are_counted_once() {
        let mut m = Model::new();
        assert_eq!(m.member_add("s", "g", "a", Some(1)), (Joined::Inserted, 1));
        assert_eq!(m.member_add("s", "h", "a", Some(1)), (Joined::Joined, 1));
        assert_eq!(m.member_add("s", "h", "b", Some(1)), (Joined::Refused, 1));
        assert_eq!(
            m.group_counts("s"),
            [("g".into(), 1, 0), ("h".into(), 1, 0)]
        );
        assert_eq!(m.member_remove("s", "g", "a"), (Left::LeftGroup, 1));
        assert_eq!(
            m.group_clear("s", "h"),
            Cleared {
                removed: 1,
                released: 1,
                members: 0
            }
        );
        assert!(m.scopes().is_empty());
    }

    #[test]
    fn guards_hold_only_on_the_exact_value() {
        let mut m = Model::new();
        let guard = Some(Guard {
            key: "r",
            value: "v1",
        });
        assert_eq!(m.counter_tally("s", guard, "c", 0), None);
        m.record_insert("s", "r", "v1");
        assert_eq!(m.counter_tally("s", guard, "c", 0), Some(Tally::default()));
        m.record_update("s", "r", "v2");
        assert!(!m.guard_holds("s", guard));
        let stale = m.counter_add("s", guard, "c", add(1, None, None, 0));
        assert_eq!(stale, None);
        assert_eq!(m.counter_get("s", "c", 0), 0);
    }

    #[test]
    fn apply_refuses_arguments_past_the_limits() {
        let limits = Limits {
            name: 3,
            value: 2,
            batch: 1,
            groups: 2,
        };
        let mut m = Model::with_limits(limits);
        let insert = |value: &str| Op::RecordInsert {
            scope: "s".into(),
            key: "k".into(),
            value: value.into(),
        };
        assert_eq!(m.apply(&insert("abc")), Err(Invalid));
        assert_eq!(m.apply(&insert("ab")), Ok(Answer::Bool(true)));
        let many = Op::MemberAddMany {
            scope: "s".into(),
            group: "g".into(),
            members: vec!["a".into(), "b".into()],
            limit: None,
        };
        assert_eq!(m.apply(&many), Err(Invalid));
        assert_eq!(m.member_count("s"), 0);
    }

    #[test]
    fn a_member_joins_at_most_the_limits_groups() {
        let limits = Limits {
            groups: 2,
            ..Limits::NONE
        };
        let mut m = Model::with_limits(limits);
        let join = |group: &str, member: &str| Op::MemberAdd {
            scope: "s".into(),
            group: group.into(),
            member: member.into(),
            limit: None,
        };
        assert_eq!(
            m.apply(&join("g", "a")),
            Ok(Answer::Member(Joined::Inserted, 1))
        );
        assert_eq!(
            m.apply(&join("h", "a")),
            Ok(Answer::Member(Joined::Joined, 1))
        );
        assert_eq!(m.apply(&join("i", "a")), Err(Invalid), "a third group");
        let again = Ok(Answer::Member(Joined::AlreadyInGroup, 1));
        assert_eq!(m.apply(&join("h", "a")), again, "a group it is in");
        let many = |members: &[&str]| Op::MemberAddMany {
            scope: "s".into(),
            group: "i".into(),
            members: members.iter().map(|&m| m.into()).collect(),
            limit: None,
        };
        assert_eq!(m.apply(&many(&["b", "a"])), Err(Invalid), "refused whole");
        assert_eq!(m.member_count("s"), 1);
        assert_eq!(m.membership("s", "i", "b"), None, "nor b with it");
        m.member_remove("s", "g", "a");
        let joined = Ok(Answer::Members(vec![Joined::Inserted, Joined::Joined], 2));
        assert_eq!(
            m.apply(&many(&["b", "a"])),
            joined,
            "room again after a leave"
        );
    }
}
