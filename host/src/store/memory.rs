//! An in-memory [`Store`]: the backend of runs that need no durability (`persist`
//! does nothing) and of the native benchmarks. Not the contract's model
//! ([`super::model`] is): it keeps each member's groups, each group's members and
//! its exclusive count, so that a primitive costs a lookup or two where the model
//! recounts. Every primitive takes one process-wide lock
//! once, which is what makes it atomic; [`Store::visit_members`] calls its visitor
//! with that lock held, so the visitor must not call back into the store.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

#[cfg(doc)]
use super::Store;
use super::{
    Alerts, CounterAdd, CounterTally, GroupCount, Guard, GuardedUpdate, Instant,
    MAX_GROUPS_PER_MEMBER, MemberAdd, MemberAddGuarded, MemberAddMany, Members, Membership,
    Records, SECRET_LEN, ScopeDump, StoreError, Visit, VisitAlert, is_retry, too_many_groups,
};
use crate::bindings::{
    GroupCleared, GuardedAdd, GuardedMember, MemberAddOutcome, MemberAdded, MemberRemoveOutcome,
    MemberRemoved, MembersAdded, Tally,
};

/// Expiry stored for "never"; the redb backend uses the same sentinel, so the two
/// agree even on a call made at `now == i64::MAX`.
const NEVER: Instant = i64::MAX;

fn expired(expires_at: Instant, now: Instant) -> bool {
    expires_at != NEVER && expires_at <= now
}

/// One scope's state. A scope with nothing in it is removed from the map; one that
/// holds only `once` markers (which only [`Store::import_scope`] can leave) is kept,
/// like in redb, but not listed by [`Store::scopes`].
#[derive(Default)]
struct Scope {
    records: BTreeMap<String, String>,
    /// name -> (value, expires_at).
    counters: BTreeMap<String, (u64, Instant)>,
    /// once key -> (expires_at, fingerprint; None: stored before fingerprints).
    once: BTreeMap<String, (Instant, Option<u64>)>,
    /// member -> its groups; a member is present while it has at least one group.
    member_groups: BTreeMap<String, BTreeSet<String>>,
    /// group -> its members; the inverse of `member_groups`, for `group_clear`.
    groups: BTreeMap<String, BTreeSet<String>>,
    /// group -> members no other group holds (never 0: absent instead), kept as
    /// members join and leave ([`Store::group_counts`]).
    exclusive: BTreeMap<String, u64>,
}

impl Scope {
    // Once markers are not counted: one is only written with a counter, and
    // counters are never removed (the redb backend lists scopes the same way).
    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.counters.is_empty() && self.member_groups.is_empty()
    }

    /// Holds nothing at all, once markers included: may be dropped from the map.
    fn is_vacant(&self) -> bool {
        self.is_empty() && self.once.is_empty()
    }

    fn members(&self) -> u64 {
        self.member_groups.len() as u64
    }

    /// Keeps the exclusive counts as `member` joins `group`; call it before the
    /// member's groups change.
    fn joining(&mut self, group: &str, member: &str) {
        let mut held = self.member_groups.get(member).into_iter().flatten();
        match (held.next(), held.next()) {
            (None, _) => exclusive_add(&mut self.exclusive, group, true),
            (Some(only), None) if only != group => exclusive_add(&mut self.exclusive, only, false),
            _ => {}
        }
    }

    /// Keeps the exclusive counts after `member` left `group`; call it after the
    /// member's groups changed. Whether any group still holds the member.
    fn left(&mut self, group: &str, member: &str) -> bool {
        let mut still = self.member_groups.get(member).into_iter().flatten();
        match (still.next(), still.next()) {
            (None, _) => {
                exclusive_add(&mut self.exclusive, group, false);
                false
            }
            (Some(only), None) => {
                exclusive_add(&mut self.exclusive, only, true);
                true
            }
            _ => true,
        }
    }
}

/// Adds one to `group`'s count in `exclusive` (`gain`), or takes one away; a
/// count that reaches 0 goes. Allocates only for a group counted anew.
fn exclusive_add(exclusive: &mut BTreeMap<String, u64>, group: &str, gain: bool) {
    match exclusive.get_mut(group) {
        Some(n) if gain => *n += 1,
        Some(n) if *n > 1 => *n -= 1,
        Some(_) => {
            exclusive.remove(group);
        }
        None if gain => {
            exclusive.insert(group.to_owned(), 1);
        }
        None => {}
    }
}

/// Refuses, before anything is applied, a `member_add_many` that would put one
/// of `members` in more than [`MAX_GROUPS_PER_MEMBER`] groups of `scope`.
fn check_joins(
    scopes: &BTreeMap<String, Scope>,
    scope: &str,
    group: &str,
    members: &[String],
) -> Result<(), StoreError> {
    let Some(s) = scopes.get(scope) else {
        return Ok(());
    };
    let full = |member: &&String| {
        s.member_groups.get(member.as_str()).is_some_and(|groups| {
            !groups.contains(group) && groups.len() as u64 >= MAX_GROUPS_PER_MEMBER
        })
    };
    match members.iter().find(full) {
        Some(member) => Err(too_many_groups(scope, member)),
        None => Ok(()),
    }
}

/// `member_add` on the locked state.
fn add_member(
    scopes: &mut BTreeMap<String, Scope>,
    add: MemberAdd<'_>,
) -> Result<MemberAdded, StoreError> {
    let (scope, group, member, limit) = (add.scope, add.group, add.member, add.limit);
    let members = scopes.get(scope).map_or(0, Scope::members);
    let groups = scopes.get(scope).and_then(|s| s.member_groups.get(member));
    let outcome = match groups {
        Some(g) if g.contains(group) => MemberAddOutcome::AlreadyInGroup,
        Some(g) if g.len() as u64 >= MAX_GROUPS_PER_MEMBER => {
            return Err(too_many_groups(scope, member));
        }
        Some(_) => MemberAddOutcome::Joined,
        None if limit.is_some_and(|l| members >= l) => MemberAddOutcome::Refused,
        None => MemberAddOutcome::Inserted,
    };
    if matches!(
        outcome,
        MemberAddOutcome::AlreadyInGroup | MemberAddOutcome::Refused
    ) {
        return Ok(MemberAdded { outcome, members });
    }
    let s = scopes.entry(scope.to_owned()).or_default();
    s.joining(group, member);
    s.member_groups
        .entry(member.to_owned())
        .or_default()
        .insert(group.to_owned());
    s.groups
        .entry(group.to_owned())
        .or_default()
        .insert(member.to_owned());
    Ok(MemberAdded {
        outcome,
        members: s.members(),
    })
}

/// Whether `guard`, if any, holds for `scope`.
fn guard_holds(scope: Option<&Scope>, guard: Option<Guard<'_>>) -> bool {
    guard.is_none_or(|g| g.holds(scope.and_then(|s| s.records.get(g.key)).map(String::as_str)))
}

/// A counter's value at `now`: 0 when it was never added to, or has expired.
fn counter_of(scope: Option<&Scope>, name: &str, now: Instant) -> u64 {
    match scope.and_then(|s| s.counters.get(name)) {
        Some(&(value, expires_at)) if !expired(expires_at, now) => value,
        _ => 0,
    }
}

/// A [`Store`] kept in process memory, lost when dropped.
#[derive(Default)]
pub struct MemoryStore {
    scopes: Mutex<BTreeMap<String, Scope>>,
    alerts: Mutex<AlertLog>,
    /// Made at its first use, lost with the store.
    secret: Mutex<Option<[u8; SECRET_LEN]>>,
    /// The host's records ([`Store::host_record`]).
    host: Mutex<BTreeMap<String, String>>,
}

/// The alert log ([`Store::alert_insert`]), apart from the scopes.
#[derive(Default)]
struct AlertLog {
    /// `(owner, key)` → value.
    entries: BTreeMap<(String, String), String>,
    sequences: BTreeMap<String, u64>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    // A poisoned lock is recovered rather than reported: every primitive checks all
    // its arguments and reads before it mutates, and the mutations themselves
    // (map inserts and removals) cannot panic, so a panic while the lock was held
    // cannot have left the state half changed.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Scope>> {
        self.scopes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl MemoryStore {
    // Poisoning is recovered as for the scopes: each change is one map operation.
    fn alert_log(&self) -> MutexGuard<'_, AlertLog> {
        self.alerts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

// The mechanism only: `Store` checks the arguments first (see `Backend`).
impl super::Backend for MemoryStore {
    fn alert_sequence(&self, owner: &str) -> Result<u64, StoreError> {
        let mut log = self.alert_log();
        let next = log
            .sequences
            .get(owner)
            .map_or(Some(1), |n| n.checked_add(1));
        let next = next.ok_or_else(|| {
            StoreError::InvalidArgument(format!("the alert log of {owner:?} is full"))
        })?;
        log.sequences.insert(owner.to_owned(), next);
        Ok(next)
    }

    fn alert_insert(&self, owner: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        let mut log = self.alert_log();
        let entry = (owner.to_owned(), key.to_owned());
        if log.entries.contains_key(&entry) {
            return Ok(false);
        }
        log.entries.insert(entry, value.to_owned());
        Ok(true)
    }

    fn visit_alerts(&self, list: Alerts<'_>, visit: VisitAlert<'_>) -> Result<(), StoreError> {
        let Alerts { owner, after } = list;
        let log = self.alert_log();
        let start = match (owner, after) {
            (_, Some((o, k))) => Bound::Excluded((o.to_owned(), k.to_owned())),
            (Some(o), None) => Bound::Included((o.to_owned(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        for ((o, k), v) in log.entries.range((start, Bound::Unbounded)) {
            if owner.is_some_and(|want| want != o) {
                if owner.is_some_and(|want| o.as_str() > want) {
                    break;
                }
                continue;
            }
            if !visit(o, k, v) {
                break;
            }
        }
        Ok(())
    }

    fn record_get(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        let scopes = self.lock();
        Ok(scopes.get(scope).and_then(|s| s.records.get(key)).cloned())
    }

    fn record_insert(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        let mut scopes = self.lock();
        let s = scopes.entry(scope.to_owned()).or_default();
        if s.records.contains_key(key) {
            return Ok(false);
        }
        s.records.insert(key.to_owned(), value.to_owned());
        Ok(true)
    }

    fn record_update(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        let mut scopes = self.lock();
        match scopes.get_mut(scope).and_then(|s| s.records.get_mut(key)) {
            Some(v) => {
                value.clone_into(v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn record_update_guarded(&self, update: GuardedUpdate<'_>) -> Result<bool, StoreError> {
        let mut scopes = self.lock();
        let Some(s) = scopes.get_mut(update.scope) else {
            return Ok(false);
        };
        if !guard_holds(Some(s), Some(update.guard)) {
            return Ok(false);
        }
        Ok(s.records
            .get_mut(update.key)
            .map(|v| update.value.clone_into(v))
            .is_some())
    }

    fn counter_get(&self, scope: &str, name: &str, now: Instant) -> Result<u64, StoreError> {
        Ok(counter_of(self.lock().get(scope), name, now))
    }

    fn counter_add_guarded(&self, add: CounterAdd<'_>) -> Result<GuardedAdd, StoreError> {
        let CounterAdd { scope, name, .. } = add;
        let mut scopes = self.lock();
        let found = scopes.get(scope);
        if !guard_holds(found, add.guard) {
            return Ok(GuardedAdd::Stale);
        }
        let current = counter_of(found, name, add.now);
        let tally = |counter| Tally {
            counter,
            members: found.map_or(0, Scope::members),
        };
        if let Some(once) = add.once {
            let seen = found
                .and_then(|s| s.once.get(once.key))
                .filter(|&&(exp, _)| !expired(exp, add.now));
            if let Some(&(_, fingerprint)) = seen {
                return Ok(if is_retry(fingerprint, once) {
                    GuardedAdd::Repeated(tally(current))
                } else {
                    GuardedAdd::Conflict(tally(current))
                });
            }
        }
        let new = match current.checked_add(add.amount) {
            Some(new) if add.limit.is_none_or(|limit| new <= limit) => new,
            _ => return Ok(GuardedAdd::Refused(tally(current))),
        };
        let s = scopes.entry(scope.to_owned()).or_default();
        s.counters
            .insert(name.to_owned(), (new, add.expires_at.unwrap_or(NEVER)));
        if let Some(once) = add.once {
            // Kept even if already expired: a later call at an earlier `now` (a clock
            // stepped back) must still see it, as the contract says.
            s.once.insert(
                once.key.to_owned(),
                (once.expires_at, Some(once.fingerprint)),
            );
        }
        Ok(GuardedAdd::Applied(Tally {
            counter: new,
            members: s.members(),
        }))
    }

    fn counter_tally(&self, tally: CounterTally<'_>) -> Result<Option<Tally>, StoreError> {
        let scopes = self.lock();
        let found = scopes.get(tally.scope);
        if !guard_holds(found, tally.guard) {
            return Ok(None);
        }
        Ok(Some(Tally {
            counter: counter_of(found, tally.name, tally.now),
            members: found.map_or(0, Scope::members),
        }))
    }

    fn member_add(&self, add: MemberAdd<'_>) -> Result<MemberAdded, StoreError> {
        add_member(&mut self.lock(), add)
    }

    fn member_add_guarded(
        &self,
        add: MemberAddGuarded<'_>,
    ) -> Result<Option<GuardedMember>, StoreError> {
        let mut scopes = self.lock();
        if !guard_holds(scopes.get(add.scope), add.guard) {
            return Ok(None);
        }
        let added = add_member(&mut scopes, add.member_add())?;
        let tally = Tally {
            counter: counter_of(scopes.get(add.scope), add.name, add.now),
            members: added.members,
        };
        Ok(Some(GuardedMember {
            outcome: added.outcome,
            tally,
        }))
    }

    fn member_add_many(&self, add: MemberAddMany<'_>) -> Result<MembersAdded, StoreError> {
        let (scope, group, members) = (add.scope, add.group, add.members);
        let mut scopes = self.lock();
        if members.is_empty() {
            let members = scopes.get(scope).map_or(0, Scope::members);
            return Ok(MembersAdded {
                outcomes: Vec::new(),
                members,
            });
        }
        check_joins(&scopes, scope, group, members)?;
        let mut outcomes = Vec::with_capacity(members.len());
        let s = scopes.entry(scope.to_owned()).or_default();
        let mut count = s.members();
        let mut in_group = s.groups.remove(group).unwrap_or_default();
        for member in members {
            let outcome = match s.member_groups.get(member.as_str()) {
                Some(groups) if groups.contains(group) => MemberAddOutcome::AlreadyInGroup,
                Some(_) => MemberAddOutcome::Joined,
                None if add.limit.is_some_and(|l| count >= l) => MemberAddOutcome::Refused,
                None => {
                    count += 1;
                    MemberAddOutcome::Inserted
                }
            };
            if matches!(
                outcome,
                MemberAddOutcome::Joined | MemberAddOutcome::Inserted
            ) {
                s.joining(group, member);
                (s.member_groups.entry(member.clone()).or_default()).insert(group.to_owned());
                in_group.insert(member.clone());
            }
            outcomes.push(outcome);
        }
        if !in_group.is_empty() {
            s.groups.insert(group.to_owned(), in_group);
        }
        let members = s.members();
        if s.is_vacant() {
            scopes.remove(scope);
        }
        Ok(MembersAdded { outcomes, members })
    }

    fn member_remove(&self, at: Membership<'_>) -> Result<MemberRemoved, StoreError> {
        let (scope, group, member) = (at.scope, at.group, at.member);
        let mut scopes = self.lock();
        let Some(s) = scopes.get_mut(scope) else {
            return Ok(MemberRemoved {
                outcome: MemberRemoveOutcome::NotInGroup,
                members: 0,
            });
        };
        let Some(groups) = s.member_groups.get_mut(member) else {
            return Ok(MemberRemoved {
                outcome: MemberRemoveOutcome::NotInGroup,
                members: s.members(),
            });
        };
        if !groups.remove(group) {
            return Ok(MemberRemoved {
                outcome: MemberRemoveOutcome::NotInGroup,
                members: s.members(),
            });
        }
        let outcome = if s.left(group, member) {
            MemberRemoveOutcome::LeftGroup
        } else {
            s.member_groups.remove(member);
            MemberRemoveOutcome::Released
        };
        if let Some(members) = s.groups.get_mut(group) {
            members.remove(member);
            if members.is_empty() {
                s.groups.remove(group);
            }
        }
        let members = s.members();
        if s.is_vacant() {
            scopes.remove(scope);
        }
        Ok(MemberRemoved { outcome, members })
    }

    fn group_clear(&self, scope: &str, group: &str) -> Result<GroupCleared, StoreError> {
        let mut scopes = self.lock();
        let Some(s) = scopes.get_mut(scope) else {
            return Ok(GroupCleared {
                removed: 0,
                released: 0,
                members: 0,
            });
        };
        let cleared = s.groups.remove(group).unwrap_or_default();
        let mut released = 0;
        for member in &cleared {
            if let Some(groups) = s.member_groups.get_mut(member) {
                groups.remove(group);
                if !s.left(group, member) {
                    s.member_groups.remove(member);
                    released += 1;
                }
            }
        }
        let members = s.members();
        if s.is_vacant() {
            scopes.remove(scope);
        }
        Ok(GroupCleared {
            removed: cleared.len() as u64,
            released,
            members,
        })
    }

    fn member_count(&self, scope: &str) -> Result<u64, StoreError> {
        Ok(self.lock().get(scope).map_or(0, Scope::members))
    }

    fn group_counts(&self, scope: &str) -> Result<Vec<GroupCount>, StoreError> {
        let scopes = self.lock();
        let Some(s) = scopes.get(scope) else {
            return Ok(Vec::new());
        };
        Ok(s.groups
            .iter()
            .map(|(group, members)| GroupCount {
                group: group.clone(),
                members: members.len() as u64,
                exclusive: s.exclusive.get(group).copied().unwrap_or(0),
            })
            .collect())
    }

    fn membership(&self, at: Membership<'_>) -> Result<Option<u64>, StoreError> {
        let scopes = self.lock();
        let groups = (scopes.get(at.scope)).and_then(|s| s.member_groups.get(at.member));
        Ok(groups
            .filter(|g| g.contains(at.group))
            .map(|g| g.len() as u64))
    }

    fn secret(&self) -> Result<[u8; SECRET_LEN], StoreError> {
        let mut secret = self.secret.lock().unwrap_or_else(PoisonError::into_inner);
        match *secret {
            Some(secret) => Ok(secret),
            None => Ok(*secret.insert(super::new_secret()?)),
        }
    }

    fn set_secret(&self, secret: [u8; SECRET_LEN]) -> Result<(), StoreError> {
        *self.secret.lock().unwrap_or_else(PoisonError::into_inner) = Some(secret);
        Ok(())
    }

    fn host_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        let host = self.host.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(host.get(key).cloned())
    }

    fn set_host_record(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut host = self.host.lock().unwrap_or_else(PoisonError::into_inner);
        host.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    fn persist(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn scopes(&self) -> Result<Vec<String>, StoreError> {
        // Scopes are removed as they empty; the filter skips those holding only once\n        // markers.
        Ok(self
            .lock()
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(name, _)| name.clone())
            .collect())
    }

    fn scopes_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(self
            .lock()
            .range::<str, _>((from, Bound::Unbounded))
            .filter(|(_, s)| !s.is_empty())
            .take(limit)
            .map(|(name, _)| name.clone())
            .collect())
    }

    fn visit_members_after(&self, list: Members<'_>, visit: Visit<'_>) -> Result<(), StoreError> {
        let (scope, group, after) = (list.scope, list.group, list.after);
        let scopes = self.lock();
        let Some(s) = scopes.get(scope) else {
            return Ok(());
        };
        // From the later of `after`'s group and `group`: None sorts first.
        let first = after.map(|(g, _)| g).max(group);
        let first = first.map_or(Bound::Unbounded, Bound::Included);
        for (g, members) in s.groups.range::<str, _>((first, Bound::Unbounded)) {
            if group.is_some_and(|only| only != g) {
                if group.is_some_and(|only| only < g.as_str()) {
                    break;
                }
                continue;
            }
            let from = match after {
                Some((ag, am)) if ag == g => Bound::Excluded(am),
                _ => Bound::Unbounded,
            };
            for member in members.range::<str, _>((from, Bound::Unbounded)) {
                if !visit(g, member) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn visit_records(&self, list: Records<'_>, visit: Visit<'_>) -> Result<(), StoreError> {
        let Records { scope, after } = list;
        let scopes = self.lock();
        let Some(s) = scopes.get(scope) else {
            return Ok(());
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        for (key, value) in s.records.range::<str, _>((from, Bound::Unbounded)) {
            if !visit(key, value) {
                break;
            }
        }
        Ok(())
    }

    fn export_scope(&self, scope: &str) -> Result<ScopeDump, StoreError> {
        let scopes = self.lock();
        let Some(s) = scopes.get(scope) else {
            return Ok(ScopeDump::default());
        };
        Ok(ScopeDump {
            records: s
                .records
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            counters: s
                .counters
                .iter()
                .map(|(name, &(value, expires_at))| {
                    (
                        name.clone(),
                        value,
                        (expires_at != NEVER).then_some(expires_at),
                    )
                })
                .collect(),
            once: (s.once.iter())
                .map(|(k, &(exp, fingerprint))| (k.clone(), exp, fingerprint))
                .collect(),
            memberships: s
                .groups
                .iter()
                .flat_map(|(g, members)| members.iter().map(|m| (g.clone(), m.clone())))
                .collect(),
        })
    }

    fn import_scope(&self, scope: &str, dump: &ScopeDump) -> Result<(), StoreError> {
        // Built whole before the lock is taken; `Store` refused a dump with repeats.
        let mut new = Scope::default();
        for (key, value) in &dump.records {
            new.records.insert(key.clone(), value.clone());
        }
        for (name, value, expires_at) in &dump.counters {
            let stored = (*value, expires_at.unwrap_or(NEVER));
            new.counters.insert(name.clone(), stored);
        }
        for (key, expires_at, fingerprint) in &dump.once {
            new.once.insert(key.clone(), (*expires_at, *fingerprint));
        }
        for (group, member) in &dump.memberships {
            let members = new.groups.entry(group.clone()).or_default();
            members.insert(member.clone());
            new.member_groups
                .entry(member.clone())
                .or_default()
                .insert(group.clone());
        }
        for count in super::group_counts_of(&dump.memberships) {
            if count.exclusive > 0 {
                new.exclusive.insert(count.group, count.exclusive);
            }
        }
        let mut scopes = self.lock();
        if new.is_vacant() {
            scopes.remove(scope);
        } else {
            scopes.insert(scope.to_owned(), new);
        }
        Ok(())
    }
}
