//! A state machine: random sequences of the WIT `state` primitives on
//! `creditgate::store::MemoryStore` and, when the input asks, `RedbStore` (a fresh
//! file on tmpfs), each result compared with a plain `BTreeMap` model of the
//! contract (`wit/policy.wit`, `state` interface), in the manner of redb's own
//! fuzzer.
//!
//! The stores hold what customers paid for: a result that differs from the model
//! (a counter past its limit, a member counted twice, an idempotency key ignored,
//! an invalid name half applied) is an oversold or lost credit. The property test
//! in `host/tests/it/store.rs` checks the same contract with proptest; here the
//! fuzzer's coverage feedback steers the sequences, and the alphabets add names
//! and values just past the stores' limits, which must be refused with nothing
//! applied, and scope copies (`export_scope` into `import_scope` of another scope).

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use creditgate::bindings::{
    CounterAdded, GroupCleared, MemberAddOutcome, MemberAdded, MemberRemoveOutcome, MemberRemoved,
    MembersAdded, Once,
};
use creditgate::store::{
    CounterAdd, MAX_NAME_LEN, MAX_VALUE_LEN, MemoryStore, RedbStore, ScopeDump, Store, StoreError,
};
use libfuzzer_sys::fuzz_target;

/// A name one byte longer than any store accepts.
static TOO_LONG: LazyLock<String> = LazyLock::new(|| "x".repeat(MAX_NAME_LEN + 1));
/// A name exactly as long as a store accepts.
static LONGEST: LazyLock<String> = LazyLock::new(|| "y".repeat(MAX_NAME_LEN));
/// A record value one byte past the limit.
static VALUE_TOO_LONG: LazyLock<String> = LazyLock::new(|| "v".repeat(MAX_VALUE_LEN + 1));

// Tiny alphabets make collisions common; "s\0" and "g\0" probe range bounds.
fn scope(i: u8) -> &'static str {
    [
        "",
        "s",
        "s\0",
        "t",
        "u",
        LONGEST.as_str(),
        TOO_LONG.as_str(),
    ][usize::from(i) % 7]
}
fn key(i: u8) -> &'static str {
    ["k", "l", "", TOO_LONG.as_str()][usize::from(i) % 4]
}
fn value(i: u8) -> &'static str {
    ["", "v", "w", VALUE_TOO_LONG.as_str()][usize::from(i) % 4]
}
fn group(i: u8) -> &'static str {
    ["", "g", "g\0", "h", TOO_LONG.as_str()][usize::from(i) % 5]
}
fn member(i: u8) -> &'static str {
    ["m", "n", "o", "p", "q", LONGEST.as_str(), TOO_LONG.as_str()][usize::from(i) % 7]
}

fn valid(names: &[&str]) -> bool {
    names.iter().all(|n| n.len() <= MAX_NAME_LEN)
}

/// Amounts are mostly tiny, sometimes near `u64::MAX` to probe overflow.
fn amount(a: u8) -> u64 {
    if a >= 250 {
        u64::MAX - u64::from(255 - a)
    } else {
        u64::from(a % 4)
    }
}

fn limit(l: u8) -> Option<u64> {
    match l % 5 {
        0 => None,
        4 => Some(u64::MAX),
        _ => Some(u64::from(l / 5 % 8)),
    }
}

/// A small offset in time: -2 to 11.
fn offset(d: u8) -> i64 {
    i64::from(d % 14) - 2
}

/// A `once` fingerprint from a small alphabet, so that keys often meet with
/// another one; and the edge of a u64.
fn fingerprint(f: u8) -> u64 {
    match f % 4 {
        3 => u64::MAX,
        f => u64::from(f),
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    redb: bool,
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
struct Step {
    /// Time mostly moves forward, sometimes stands still or steps back.
    dt: u8,
    op: Op,
}

#[derive(Debug, Clone, Arbitrary)]
enum Op {
    RecordGet(u8, u8),
    RecordInsert(u8, u8, u8),
    RecordUpdate(u8, u8, u8),
    CounterGet(u8, u8),
    CounterAdd {
        scope: u8,
        name: u8,
        amount: u8,
        limit: u8,
        /// (key, expires in, fingerprint)
        once: Option<(u8, u8, u8)>,
        expires_in: Option<u8>,
    },
    MemberAdd(u8, u8, u8, u8),
    MemberAddMany(u8, u8, Vec<u8>, u8),
    MemberRemove(u8, u8, u8),
    GroupClear(u8, u8),
    MemberCount(u8),
    Scopes,
    Persist,
    Visit(u8, Option<u8>),
    Export(u8),
    /// Exports a scope and imports it back: changes nothing observable.
    Reimport(u8),
    /// Exports one scope and imports it over another.
    Copy(u8, u8),
    /// The alert log, apart from the scopes: owners and keys are drawn as scopes
    /// and keys are.
    AlertSequence(u8),
    AlertInsert(u8, u8, u8),
    /// Owner filter; after (owner, key).
    VisitAlerts(Option<u8>, Option<(u8, u8)>),
    /// Each group's size and exclusive members, as the store keeps them.
    GroupCounts(u8),
    /// Whether a member is in a group, and its group count.
    Membership(u8, u8, u8),
}

// The bindgen types have no PartialEq: results are compared in this rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Bool(bool),
    Value(Option<String>),
    Count(u64),
    Counter(&'static str, u64),
    Added(&'static str, u64),
    AddedMany(Vec<&'static str>, u64),
    Removed(&'static str, u64),
    Cleared(u64, u64, u64),
    Scopes(Vec<String>),
    Visited(Vec<(String, String)>),
    Dump(ScopeDump),
    Alerts(Vec<(String, String, String)>),
    /// `(group, members, exclusive)` of each group.
    Groups(Vec<(String, u64, u64)>),
    Membership(Option<u64>),
    Unit,
    InvalidArgument,
}

/// The contract, written as plainly as possible.
#[derive(Default)]
struct Model {
    records: BTreeMap<(String, String), String>,
    /// (value, expires_at: None = never)
    counters: BTreeMap<(String, String), (u64, Option<i64>)>,
    /// (expires_at, fingerprint; None: stored before markers had one)
    once: BTreeMap<(String, String), (i64, Option<u64>)>,
    /// (scope, member) -> groups; absent when it has none.
    groups: BTreeMap<(String, String), BTreeSet<String>>,
    /// (owner, key) -> value
    alerts: BTreeMap<(String, String), String>,
    /// owner -> last sequence number taken
    sequences: BTreeMap<String, u64>,
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

impl Model {
    /// `(group, members, exclusive)` of each group of `scope`: exclusive members
    /// are held by that group alone.
    fn group_counts(&self, scope: &str) -> Vec<(String, u64, u64)> {
        let mut counts = BTreeMap::<String, (u64, u64)>::new();
        for ((s, _), gs) in &self.groups {
            if s != scope {
                continue;
            }
            for g in gs {
                let (members, exclusive) = counts.entry(g.clone()).or_default();
                *members += 1;
                *exclusive += u64::from(gs.len() == 1);
            }
        }
        counts.into_iter().map(|(g, (m, e))| (g, m, e)).collect()
    }

    fn members(&self, scope: &str) -> u64 {
        self.groups.keys().filter(|(s, _)| s == scope).count() as u64
    }

    fn member_add(
        &mut self,
        scope: &str,
        group: &str,
        member: &str,
        limit: Option<u64>,
    ) -> &'static str {
        let members = self.members(scope);
        let k = pair(scope, member);
        let outcome = match self.groups.get(&k) {
            Some(gs) if gs.contains(group) => "already-in-group",
            Some(_) => "joined",
            None if limit.is_some_and(|l| members >= l) => "refused",
            None => "inserted",
        };
        if outcome == "joined" || outcome == "inserted" {
            self.groups.entry(k).or_default().insert(group.to_owned());
        }
        outcome
    }

    /// `(group, member)` of `scope`, ordered by group then member.
    fn memberships(&self, scope: &str, group: Option<&str>) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = (self.groups.iter())
            .filter(|((s, _), _)| s == scope)
            .flat_map(|((_, m), gs)| gs.iter().map(move |g| (g.clone(), m.clone())))
            .filter(|(g, _)| group.is_none_or(|group| g == group))
            .collect();
        all.sort();
        all
    }

    fn export(&self, scope: &str) -> ScopeDump {
        let of_scope = |s: &String| s == scope;
        ScopeDump {
            records: (self.records.iter())
                .filter(|((s, _), _)| of_scope(s))
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect(),
            counters: (self.counters.iter())
                .filter(|((s, _), _)| of_scope(s))
                .map(|((_, n), &(v, exp))| (n.clone(), v, exp))
                .collect(),
            once: (self.once.iter())
                .filter(|((s, _), _)| of_scope(s))
                .map(|((_, k), &(exp, fp))| (k.clone(), exp, fp))
                .collect(),
            memberships: self.memberships(scope, None),
        }
    }

    /// Replaces everything `scope` holds with `dump` (valid: it came from `export`).
    fn import(&mut self, scope: &str, dump: &ScopeDump) {
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
            self.groups
                .entry(pair(scope, m))
                .or_default()
                .insert(g.clone());
        }
    }

    fn counter(&self, scope: &str, name: &str, now: i64) -> u64 {
        match self.counters.get(&pair(scope, name)) {
            Some(&(_, Some(exp))) if exp <= now => 0,
            Some(&(v, _)) => v,
            None => 0,
        }
    }

    fn scopes(&self) -> Vec<String> {
        let all: BTreeSet<String> = (self.records.keys())
            .chain(self.counters.keys())
            .chain(self.groups.keys())
            .map(|(s, _)| s.clone())
            .collect();
        all.into_iter().collect()
    }

    fn apply(&mut self, op: &Op, now: i64) -> Out {
        match *op {
            Op::RecordGet(s, k) => {
                let (s, k) = (scope(s), key(k));
                if !valid(&[s, k]) {
                    return Out::InvalidArgument;
                }
                Out::Value(self.records.get(&pair(s, k)).cloned())
            }
            Op::RecordInsert(s, k, v) => {
                let (s, k, v) = (scope(s), key(k), value(v));
                if !valid(&[s, k]) || v.len() > MAX_VALUE_LEN {
                    return Out::InvalidArgument;
                }
                if self.records.contains_key(&pair(s, k)) {
                    return Out::Bool(false);
                }
                self.records.insert(pair(s, k), v.to_owned());
                Out::Bool(true)
            }
            Op::RecordUpdate(s, k, v) => {
                let (s, k, v) = (scope(s), key(k), value(v));
                if !valid(&[s, k]) || v.len() > MAX_VALUE_LEN {
                    return Out::InvalidArgument;
                }
                match self.records.get_mut(&pair(s, k)) {
                    Some(old) => {
                        v.clone_into(old);
                        Out::Bool(true)
                    }
                    None => Out::Bool(false),
                }
            }
            Op::CounterGet(s, n) => {
                let (s, n) = (scope(s), key(n));
                if !valid(&[s, n]) {
                    return Out::InvalidArgument;
                }
                Out::Count(self.counter(s, n, now))
            }
            Op::CounterAdd {
                scope: s,
                name,
                amount: a,
                limit: l,
                once,
                expires_in,
            } => {
                let (s, name) = (scope(s), key(name));
                if !valid(&[s, name, once.map_or("", |(k, _, _)| key(k))]) {
                    return Out::InvalidArgument;
                }
                let current = self.counter(s, name, now);
                if let Some((k, _, f)) = once
                    && let Some(&(exp, stored)) = self.once.get(&pair(s, key(k)))
                    && exp > now
                {
                    let outcome = if stored == Some(fingerprint(f)) {
                        "repeated"
                    } else {
                        "conflict"
                    };
                    return Out::Counter(outcome, current);
                }
                let Some(new) = current.checked_add(amount(a)) else {
                    return Out::Counter("refused", current);
                };
                if limit(l).is_some_and(|l| new > l) {
                    return Out::Counter("refused", current);
                }
                let expires_at = expires_in.map(|d| now + offset(d));
                self.counters.insert(pair(s, name), (new, expires_at));
                if let Some((k, d, f)) = once {
                    self.once
                        .insert(pair(s, key(k)), (now + offset(d), Some(fingerprint(f))));
                }
                Out::Counter("applied", new)
            }
            Op::MemberAdd(s, g, m, l) => {
                let (s, g, m) = (scope(s), group(g), member(m));
                if !valid(&[s, g, m]) {
                    return Out::InvalidArgument;
                }
                let outcome = self.member_add(s, g, m, limit(l));
                Out::Added(outcome, self.members(s))
            }
            Op::MemberAddMany(s, g, ref ms, l) => {
                let (s, g) = (scope(s), group(g));
                let ms: Vec<&str> = ms.iter().map(|&m| member(m)).collect();
                if !valid(&[s, g]) || !valid(&ms) {
                    return Out::InvalidArgument;
                }
                let outcomes = ms
                    .iter()
                    .map(|m| self.member_add(s, g, m, limit(l)))
                    .collect();
                Out::AddedMany(outcomes, self.members(s))
            }
            Op::MemberRemove(s, g, m) => {
                let (s, g, m) = (scope(s), group(g), member(m));
                if !valid(&[s, g, m]) {
                    return Out::InvalidArgument;
                }
                let k = pair(s, m);
                let outcome = match self.groups.get_mut(&k) {
                    Some(gs) if gs.contains(g) => {
                        gs.remove(g);
                        if gs.is_empty() {
                            self.groups.remove(&k);
                            "released"
                        } else {
                            "left-group"
                        }
                    }
                    _ => "not-in-group",
                };
                Out::Removed(outcome, self.members(s))
            }
            Op::GroupClear(s, g) => {
                let (s, g) = (scope(s), group(g));
                if !valid(&[s, g]) {
                    return Out::InvalidArgument;
                }
                let (mut removed, mut released) = (0, 0);
                for ((sc, _), gs) in self.groups.iter_mut() {
                    if sc == s && gs.remove(g) {
                        removed += 1;
                        if gs.is_empty() {
                            released += 1;
                        }
                    }
                }
                self.groups.retain(|_, gs| !gs.is_empty());
                Out::Cleared(removed, released, self.members(s))
            }
            Op::MemberCount(s) => {
                if !valid(&[scope(s)]) {
                    return Out::InvalidArgument;
                }
                Out::Count(self.members(scope(s)))
            }
            Op::GroupCounts(s) => {
                if !valid(&[scope(s)]) {
                    return Out::InvalidArgument;
                }
                Out::Groups(self.group_counts(scope(s)))
            }
            Op::Membership(s, g, m) => {
                if !valid(&[scope(s), group(g), member(m)]) {
                    return Out::InvalidArgument;
                }
                Out::Membership(
                    (self.groups.get(&pair(scope(s), member(m))))
                        .filter(|gs| gs.contains(group(g)))
                        .map(|gs| gs.len() as u64),
                )
            }
            Op::Scopes => Out::Scopes(self.scopes()),
            Op::Persist => Out::Unit,
            Op::Visit(s, g) => {
                let (s, g) = (scope(s), g.map(group));
                if !valid(&[s, g.unwrap_or("")]) {
                    return Out::InvalidArgument;
                }
                Out::Visited(self.memberships(s, g))
            }
            Op::Export(s) => {
                if !valid(&[scope(s)]) {
                    return Out::InvalidArgument;
                }
                Out::Dump(self.export(scope(s)))
            }
            Op::Reimport(s) => {
                if !valid(&[scope(s)]) {
                    return Out::InvalidArgument;
                }
                Out::Unit
            }
            Op::Copy(from, to) => {
                let (from, to) = (scope(from), scope(to));
                if !valid(&[from, to]) {
                    return Out::InvalidArgument;
                }
                let dump = self.export(from);
                self.import(to, &dump);
                Out::Unit
            }
            Op::AlertSequence(o) => {
                let o = scope(o);
                if !valid(&[o]) {
                    return Out::InvalidArgument;
                }
                let next = self.sequences.get(o).map_or(1, |n| n + 1);
                self.sequences.insert(o.to_owned(), next);
                Out::Count(next)
            }
            Op::AlertInsert(o, k, v) => {
                let (o, k, v) = (scope(o), key(k), value(v));
                if !valid(&[o, k]) || v.len() > MAX_VALUE_LEN {
                    return Out::InvalidArgument;
                }
                if self.alerts.contains_key(&pair(o, k)) {
                    return Out::Bool(false);
                }
                self.alerts.insert(pair(o, k), v.to_owned());
                Out::Bool(true)
            }
            Op::VisitAlerts(owner, after) => {
                let owner = owner.map(scope);
                let after = after.map(|(o, k)| pair(scope(o), key(k)));
                Out::Alerts(
                    self.alerts
                        .iter()
                        .filter(|((o, _), _)| owner.is_none_or(|w| w == o))
                        .filter(|(entry, _)| after.as_ref().is_none_or(|a| *entry > a))
                        .map(|((o, k), v)| (o.clone(), k.clone(), v.clone()))
                        .collect(),
                )
            }
        }
    }
}

fn counter(c: CounterAdded) -> Out {
    match c {
        CounterAdded::Applied(v) => Out::Counter("applied", v),
        CounterAdded::Repeated(v) => Out::Counter("repeated", v),
        CounterAdded::Refused(v) => Out::Counter("refused", v),
        CounterAdded::Conflict(v) => Out::Counter("conflict", v),
    }
}

fn outcome(o: MemberAddOutcome) -> &'static str {
    match o {
        MemberAddOutcome::AlreadyInGroup => "already-in-group",
        MemberAddOutcome::Joined => "joined",
        MemberAddOutcome::Inserted => "inserted",
        MemberAddOutcome::Refused => "refused",
    }
}

fn added(a: MemberAdded) -> Out {
    Out::Added(outcome(a.outcome), a.members)
}

fn added_many(a: MembersAdded) -> Out {
    Out::AddedMany(a.outcomes.into_iter().map(outcome).collect(), a.members)
}

fn removed(r: MemberRemoved) -> Out {
    let outcome = match r.outcome {
        MemberRemoveOutcome::NotInGroup => "not-in-group",
        MemberRemoveOutcome::LeftGroup => "left-group",
        MemberRemoveOutcome::Released => "released",
    };
    Out::Removed(outcome, r.members)
}

fn cleared(c: GroupCleared) -> Out {
    Out::Cleared(c.removed, c.released, c.members)
}

/// A result in the common rendering. Only an invalid argument is a result the
/// model predicts; any other error on a healthy store is a failure.
fn out<T>(r: Result<T, StoreError>, f: impl FnOnce(T) -> Out) -> Out {
    match r {
        Ok(v) => f(v),
        Err(StoreError::InvalidArgument(_)) => Out::InvalidArgument,
        Err(e) => panic!("a store failed on a healthy backend: {e}"),
    }
}

fn run(store: &dyn Store, op: &Op, now: i64) -> Out {
    match *op {
        Op::RecordGet(s, k) => out(store.record_get(scope(s), key(k)), Out::Value),
        Op::RecordInsert(s, k, v) => {
            out(store.record_insert(scope(s), key(k), value(v)), Out::Bool)
        }
        Op::RecordUpdate(s, k, v) => {
            out(store.record_update(scope(s), key(k), value(v)), Out::Bool)
        }
        Op::CounterGet(s, n) => out(store.counter_get(scope(s), key(n), now), Out::Count),
        Op::CounterAdd {
            scope: s,
            name,
            amount: a,
            limit: l,
            once,
            expires_in,
        } => {
            let once = once.map(|(k, d, f)| Once {
                key: key(k).to_owned(),
                fingerprint: fingerprint(f),
                expires_at: now + offset(d),
            });
            let add = CounterAdd {
                amount: amount(a),
                limit: limit(l),
                once: once.as_ref(),
                expires_at: expires_in.map(|d| now + offset(d)),
                now,
            };
            out(store.counter_add(scope(s), key(name), add), counter)
        }
        Op::MemberAdd(s, g, m, l) => out(
            store.member_add(scope(s), group(g), member(m), limit(l)),
            added,
        ),
        Op::MemberAddMany(s, g, ref ms, l) => {
            let ms: Vec<String> = ms.iter().map(|&m| member(m).to_owned()).collect();
            out(
                store.member_add_many(scope(s), group(g), &ms, limit(l)),
                added_many,
            )
        }
        Op::MemberRemove(s, g, m) => {
            out(store.member_remove(scope(s), group(g), member(m)), removed)
        }
        Op::GroupClear(s, g) => out(store.group_clear(scope(s), group(g)), cleared),
        Op::MemberCount(s) => out(store.member_count(scope(s)), Out::Count),
        Op::GroupCounts(s) => out(store.group_counts(scope(s)), |counts| {
            Out::Groups(
                counts
                    .into_iter()
                    .map(|c| (c.group, c.members, c.exclusive))
                    .collect(),
            )
        }),
        Op::Membership(s, g, m) => out(
            store.membership(scope(s), group(g), member(m)),
            Out::Membership,
        ),
        Op::Scopes => out(store.scopes(), Out::Scopes),
        Op::Persist => out(store.persist(), |()| Out::Unit),
        Op::Visit(s, g) => {
            let mut seen = Vec::new();
            let visited = store.visit_members(scope(s), g.map(group), &mut |g, m| {
                seen.push((g.to_owned(), m.to_owned()));
                true
            });
            out(visited, |()| Out::Visited(seen))
        }
        Op::Export(s) => out(store.export_scope(scope(s)), Out::Dump),
        Op::Reimport(s) => match store.export_scope(scope(s)) {
            Ok(dump) => out(store.import_scope(scope(s), &dump), |()| Out::Unit),
            Err(e) => out(Err::<(), _>(e), |()| Out::Unit),
        },
        Op::Copy(from, to) => match store.export_scope(scope(from)) {
            Ok(dump) => out(store.import_scope(scope(to), &dump), |()| Out::Unit),
            Err(e) => out(Err::<(), _>(e), |()| Out::Unit),
        },
        Op::AlertSequence(o) => out(store.alert_sequence(scope(o)), Out::Count),
        Op::AlertInsert(o, k, v) => out(store.alert_insert(scope(o), key(k), value(v)), Out::Bool),
        Op::VisitAlerts(owner, after) => {
            let mut seen = Vec::new();
            let visited = store.visit_alerts(
                owner.map(scope),
                after.map(|(o, k)| (scope(o), key(k))),
                &mut |o, k, v| {
                    seen.push((o.to_owned(), k.to_owned(), v.to_owned()));
                    true
                },
            );
            out(visited, |()| Out::Alerts(seen))
        }
    }
}

/// Runs `steps` on `store` and the model side by side; panics at the first step
/// whose result differs, then compares the whole content.
fn check(name: &str, store: &dyn Store, steps: &[Step]) {
    let mut model = Model::default();
    let mut now = 0i64;
    for (i, step) in steps.iter().enumerate() {
        now += i64::from(step.dt % 6) - 2;
        let expected = model.apply(&step.op, now);
        let got = run(store, &step.op, now);
        assert_eq!(
            got, expected,
            "{name}: step {i} {:?} at now = {now}",
            step.op
        );
    }
    let scopes = model.scopes();
    assert_eq!(
        out(store.scopes(), Out::Scopes),
        Out::Scopes(scopes.clone()),
        "{name}: scopes at the end"
    );
    for s in &scopes {
        assert_eq!(
            out(store.export_scope(s), Out::Dump),
            Out::Dump(model.export(s)),
            "{name}: content of scope {s:?} at the end"
        );
    }
}

fuzz_target!(|input: Input| {
    check("memory", &MemoryStore::new(), &input.steps);
    if input.redb {
        // tmpfs where there is one: a file store, without paying for real syncs.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        };
        let dir = dir.expect("a temporary directory for redb");
        let store =
            RedbStore::open(&dir.path().join("fuzz.redb")).expect("a fresh redb file opens");
        check("redb", &store, &input.steps);
    }
});
