//! A [`Store`] in one redb file: the backend of a single gateway host.
//!
//! Every primitive is one redb write transaction committed with
//! [`Durability::None`]: applied and visible to every reader when it returns, at the
//! cost of a few microseconds and no disk sync. [`Store::persist`] commits an empty
//! transaction with [`Durability::Immediate`], which makes every earlier commit
//! durable. Concurrent callers share one such commit (group commit): one caller
//! leads, first letting the primitives already under way finish so its sync covers
//! them, and the others wait for it.
//!
//! Tables (`&str` components compare bytewise, so scopes list in byte order):
//!
//! | table            | key                        | value                   |
//! |------------------|----------------------------|-------------------------|
//! | `records`        | `(scope, key)`             | `&str` value            |
//! | `counters`       | `(scope, name)`            | `(u64 value, i64 expires_at)` |
//! | `once`           | `(scope, key)`             | `i64 expires_at`        |
//! | `memberships`    | `(scope, member, group)`   | `()`                    |
//! | `group_members`  | `(scope, group, member)`   | `()` (inverse, for `group_clear`) |
//! | `member_groups`  | `(scope, member)`          | `u64` groups holding it (never 0) |
//! | `scope_members`  | `scope`                    | `u64` distinct members (never 0)  |
//!
//! `expires_at == i64::MAX` means never; an entry with `expires_at <= now` reads as
//! absent and is overwritten by the next applied `counter_add`. Member entries do not
//! expire; counts that reach 0 are deleted, so an empty scope leaves no trace.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use redb::{
    CommitError, Database, DatabaseError, Durability, ReadOnlyTable, ReadableDatabase,
    ReadableTable, SetDurabilityError, StorageError, TableDefinition, TableError, TransactionError,
    WriteTransaction,
};

use super::{CounterAdd, Instant, Store, StoreError, check_name, check_value};
use crate::bindings::{
    CounterAdded, GroupCleared, MemberAddOutcome, MemberAdded, MemberRemoveOutcome, MemberRemoved,
};

type Pair = (&'static str, &'static str);
type Triple = (&'static str, &'static str, &'static str);

const RECORDS: TableDefinition<Pair, &str> = TableDefinition::new("records");
const COUNTERS: TableDefinition<Pair, (u64, i64)> = TableDefinition::new("counters");
const ONCE: TableDefinition<Pair, i64> = TableDefinition::new("once");
const MEMBERSHIPS: TableDefinition<Triple, ()> = TableDefinition::new("memberships");
const GROUP_MEMBERS: TableDefinition<Triple, ()> = TableDefinition::new("group_members");
const MEMBER_GROUPS: TableDefinition<Pair, u64> = TableDefinition::new("member_groups");
const SCOPE_MEMBERS: TableDefinition<&str, u64> = TableDefinition::new("scope_members");

/// Expiry stored for "never".
const NEVER: Instant = i64::MAX;

fn expired(expires_at: Instant, now: Instant) -> bool {
    expires_at != NEVER && expires_at <= now
}

/// The smallest string greater than `s`: a tuple key range from `(s, "")` to
/// `(next(s), "")` holds exactly the keys whose first component is `s`.
fn next(s: &str) -> String {
    format!("{s}\0")
}

/// Maps redb's errors to [`StoreError`], naming the operation that failed.
trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, StoreError>;
}

fn unavailable(what: &str, e: impl Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

fn corrupt(what: &str, e: impl Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn storage_error(what: &str, e: StorageError) -> StoreError {
    match e {
        StorageError::Corrupted(_) => corrupt(what, e),
        e => unavailable(what, e),
    }
}

impl<T> Context<T> for Result<T, StorageError> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| storage_error(what, e))
    }
}

impl<T> Context<T> for Result<T, TableError> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| match e {
            TableError::Storage(e) => storage_error(what, e),
            // The file holds tables of other types than this code writes.
            TableError::TableTypeMismatch { .. }
            | TableError::TypeDefinitionChanged { .. }
            | TableError::TableIsMultimap(_)
            | TableError::TableDoesNotExist(_) => corrupt(what, e),
            e => unavailable(what, e),
        })
    }
}

impl<T> Context<T> for Result<T, TransactionError> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| match e {
            TransactionError::Storage(e) => storage_error(what, e),
            e => unavailable(what, e),
        })
    }
}

impl<T> Context<T> for Result<T, CommitError> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| match e {
            CommitError::Storage(e) => storage_error(what, e),
            e => unavailable(what, e),
        })
    }
}

impl<T> Context<T> for Result<T, SetDurabilityError> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| unavailable(what, e))
    }
}

impl<T> Context<T> for Result<T, DatabaseError> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| match e {
            DatabaseError::Storage(e) => storage_error(what, e),
            e => unavailable(what, e),
        })
    }
}

/// Sequence numbers of commits, for group commit.
#[derive(Default)]
struct Commits {
    /// Non-durable commits applied so far.
    applied: u64,
    /// Every commit up to this one is durable.
    durable: u64,
    /// A leader is gathering or committing a durable commit.
    in_flight: bool,
    /// Primitives that have begun, and of those, that have ended (in any way).
    started: u64,
    ended: u64,
    /// The leader waits until `ended` reaches this.
    draining: Option<u64>,
}

/// A [`Store`] in a redb database file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    commits: Mutex<Commits>,
    /// Signalled whenever a durable commit ends, in success or failure.
    durable_done: Condvar,
    /// Signalled when the primitives a leader waits for have ended.
    drained: Condvar,
}

/// Clears `in_flight` and wakes the followers when the leader's durable commit ends,
/// even by a panic in redb, so that no follower waits forever.
struct Leader<'a> {
    store: &'a RedbStore,
    covers: Option<u64>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut commits = self.store.commits();
        commits.in_flight = false;
        commits.draining = None;
        if let Some(covers) = self.covers {
            commits.durable = commits.durable.max(covers);
        }
        drop(commits);
        self.store.durable_done.notify_all();
    }
}

/// Counts a primitive as ended however it ends, so that a leader waiting for it
/// never waits forever.
struct Primitive<'a> {
    store: &'a RedbStore,
    committed: bool,
}

impl Drop for Primitive<'_> {
    fn drop(&mut self) {
        let mut commits = self.store.commits();
        if self.committed {
            commits.applied = commits.applied.saturating_add(1);
        }
        commits.ended = commits.ended.saturating_add(1);
        let wake = commits.draining.is_some_and(|until| commits.ended >= until);
        drop(commits);
        if wake {
            self.store.drained.notify_all();
        }
    }
}

impl RedbStore {
    /// Opens the database at `path`, creating the file if it does not exist.
    ///
    /// Fails at once with [`StoreError::Locked`] if another handle (in this process
    /// or another) has the file open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let what = format!("opening {}", path.display());
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked {
                    path: path.display().to_string(),
                });
            }
            Err(e) => return Err(e).ctx(&what),
        };
        // Creating every table up front lets read transactions open them without
        // handling "table does not exist" on a fresh file.
        let txn = db.begin_write().ctx(&what)?;
        txn.open_table(RECORDS).ctx(&what)?;
        txn.open_table(COUNTERS).ctx(&what)?;
        txn.open_table(ONCE).ctx(&what)?;
        txn.open_table(MEMBERSHIPS).ctx(&what)?;
        txn.open_table(GROUP_MEMBERS).ctx(&what)?;
        txn.open_table(MEMBER_GROUPS).ctx(&what)?;
        txn.open_table(SCOPE_MEMBERS).ctx(&what)?;
        txn.commit().ctx(&what)?;
        Ok(Self {
            db,
            path: path.to_owned(),
            commits: Mutex::default(),
            durable_done: Condvar::new(),
            drained: Condvar::new(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Verifies every page checksum of the file and repairs the allocator state.
    /// `Ok(true)`: the file is sound; `Ok(false)`: it was damaged and repaired.
    /// Pending non-durable commits are made durable (or rolled back by a repair).
    pub fn check_integrity(&mut self) -> Result<bool, StoreError> {
        let sound = self.db.check_integrity().ctx("checking integrity")?;
        // Nothing is pending any more either way: durable, or rolled back.
        let commits = self
            .commits
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        commits.durable = commits.applied;
        Ok(sound)
    }

    // The lock only guards counters updated in single statements, so a poisoned one
    // still holds consistent numbers.
    fn commits(&self) -> MutexGuard<'_, Commits> {
        self.commits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in one write transaction committed without durability. `f` answers
    /// the result and whether it changed anything: a transaction that changed
    /// nothing is aborted, so that `persist` has nothing to sync for it.
    fn write<T>(
        &self,
        what: &str,
        f: impl FnOnce(&WriteTransaction) -> Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        let mut primitive = Primitive {
            store: self,
            committed: false,
        };
        {
            let mut commits = self.commits();
            commits.started = commits.started.saturating_add(1);
        }
        let mut txn = self.db.begin_write().ctx(what)?;
        txn.set_durability(Durability::None).ctx(what)?;
        match f(&txn) {
            Ok((answer, true)) => {
                txn.commit().ctx(what)?;
                primitive.committed = true;
                Ok(answer)
            }
            Ok((answer, false)) => {
                txn.abort().ctx(what)?;
                Ok(answer)
            }
            Err(e) => {
                // Already failing: the abort's own error would add nothing useful.
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    fn durable_commit(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().ctx("persist")?;
        // redb: a commit with `Durability::None` "will not be persisted to disk
        // unless followed by a commit with `Durability::Immediate`" (docs of
        // `Durability::None`); a durable commit writes the current root, which
        // includes every earlier commit, then `durable_commit` marks "any pending
        // non-durable commits as fully committed" (redb-4.6.0 src/transactions.rs).
        txn.set_durability(Durability::Immediate).ctx("persist")?;
        txn.commit().ctx("persist: durable commit")
    }
}

fn members_of(
    counts: &impl ReadableTable<&'static str, u64>,
    scope: &str,
) -> Result<u64, StoreError> {
    Ok(counts
        .get(scope)
        .ctx("reading member count")?
        .map_or(0, |g| g.value()))
}

/// Adds every scope that has a key in `table` to `out`, seeking from one scope to
/// the next rather than reading every key.
fn scopes_of<V: redb::Value + 'static>(
    table: &ReadOnlyTable<Pair, V>,
    out: &mut BTreeSet<String>,
) -> Result<(), StoreError> {
    let what = "listing scopes";
    let mut from = String::new();
    loop {
        let Some(entry) = table.range((from.as_str(), "")..).ctx(what)?.next() else {
            return Ok(());
        };
        let (key, _) = entry.ctx(what)?;
        let scope = key.value().0;
        from = next(scope);
        out.insert(scope.to_owned());
    }
}

impl Store for RedbStore {
    fn record_get(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        check_name("scope", scope)?;
        check_name("key", key)?;
        let what = "record-get";
        let txn = self.db.begin_read().ctx(what)?;
        let records = txn.open_table(RECORDS).ctx(what)?;
        let value = records.get((scope, key)).ctx(what)?;
        Ok(value.map(|v| v.value().to_owned()))
    }

    fn record_insert(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        check_name("scope", scope)?;
        check_name("key", key)?;
        check_value(value)?;
        let what = "record-insert";
        self.write(what, |txn| {
            let mut records = txn.open_table(RECORDS).ctx(what)?;
            if records.get((scope, key)).ctx(what)?.is_some() {
                return Ok((false, false));
            }
            records.insert((scope, key), value).ctx(what)?;
            Ok((true, true))
        })
    }

    fn record_update(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        check_name("scope", scope)?;
        check_name("key", key)?;
        check_value(value)?;
        let what = "record-update";
        self.write(what, |txn| {
            let mut records = txn.open_table(RECORDS).ctx(what)?;
            if records.get((scope, key)).ctx(what)?.is_none() {
                return Ok((false, false));
            }
            records.insert((scope, key), value).ctx(what)?;
            Ok((true, true))
        })
    }

    fn counter_get(&self, scope: &str, name: &str, now: Instant) -> Result<u64, StoreError> {
        check_name("scope", scope)?;
        check_name("counter name", name)?;
        let what = "counter-get";
        let txn = self.db.begin_read().ctx(what)?;
        let counters = txn.open_table(COUNTERS).ctx(what)?;
        Ok(match counters.get((scope, name)).ctx(what)? {
            Some(g) => match g.value() {
                (value, expires_at) if !expired(expires_at, now) => value,
                _ => 0,
            },
            None => 0,
        })
    }

    fn counter_add(
        &self,
        scope: &str,
        name: &str,
        add: CounterAdd<'_>,
    ) -> Result<CounterAdded, StoreError> {
        check_name("scope", scope)?;
        check_name("counter name", name)?;
        if let Some(once) = add.once {
            check_name("once key", &once.key)?;
        }
        let what = "counter-add";
        self.write(what, |txn| {
            let mut counters = txn.open_table(COUNTERS).ctx(what)?;
            let current = match counters.get((scope, name)).ctx(what)? {
                Some(g) => match g.value() {
                    (value, expires_at) if !expired(expires_at, add.now) => value,
                    _ => 0,
                },
                None => 0,
            };
            let mut markers = txn.open_table(ONCE).ctx(what)?;
            if let Some(once) = add.once {
                let seen = markers
                    .get((scope, once.key.as_str()))
                    .ctx(what)?
                    .is_some_and(|g| !expired(g.value(), add.now));
                if seen {
                    return Ok((CounterAdded::Repeated(current), false));
                }
            }
            let new = match current.checked_add(add.amount) {
                Some(new) if add.limit.is_none_or(|limit| new <= limit) => new,
                _ => return Ok((CounterAdded::Refused(current), false)),
            };
            counters
                .insert((scope, name), (new, add.expires_at.unwrap_or(NEVER)))
                .ctx(what)?;
            if let Some(once) = add.once {
                // Kept even if already expired: a later call at an earlier `now` (a
                // clock stepped back) must still see it, as the contract says.
                markers
                    .insert((scope, once.key.as_str()), once.expires_at)
                    .ctx(what)?;
            }
            Ok((CounterAdded::Applied(new), true))
        })
    }

    fn member_add(
        &self,
        scope: &str,
        group: &str,
        member: &str,
        limit: Option<u64>,
    ) -> Result<MemberAdded, StoreError> {
        check_name("scope", scope)?;
        check_name("group", group)?;
        check_name("member", member)?;
        let what = "member-add";
        self.write(what, |txn| {
            let mut memberships = txn.open_table(MEMBERSHIPS).ctx(what)?;
            let mut counts = txn.open_table(SCOPE_MEMBERS).ctx(what)?;
            let members = members_of(&counts, scope)?;
            if memberships.get((scope, member, group)).ctx(what)?.is_some() {
                let outcome = MemberAddOutcome::AlreadyInGroup;
                return Ok((MemberAdded { outcome, members }, false));
            }
            let mut member_groups = txn.open_table(MEMBER_GROUPS).ctx(what)?;
            let groups = member_groups
                .get((scope, member))
                .ctx(what)?
                .map(|g| g.value());
            let (outcome, groups, members) = match groups {
                Some(n) => {
                    let n = n
                        .checked_add(1)
                        .ok_or_else(|| corrupt(what, "group count overflows"))?;
                    (MemberAddOutcome::Joined, n, members)
                }
                None if limit.is_some_and(|l| members >= l) => {
                    let outcome = MemberAddOutcome::Refused;
                    return Ok((MemberAdded { outcome, members }, false));
                }
                None => {
                    let m = members
                        .checked_add(1)
                        .ok_or_else(|| corrupt(what, "member count overflows"))?;
                    counts.insert(scope, m).ctx(what)?;
                    (MemberAddOutcome::Inserted, 1, m)
                }
            };
            member_groups.insert((scope, member), groups).ctx(what)?;
            memberships.insert((scope, member, group), ()).ctx(what)?;
            let mut group_members = txn.open_table(GROUP_MEMBERS).ctx(what)?;
            group_members.insert((scope, group, member), ()).ctx(what)?;
            Ok((MemberAdded { outcome, members }, true))
        })
    }

    fn member_remove(
        &self,
        scope: &str,
        group: &str,
        member: &str,
    ) -> Result<MemberRemoved, StoreError> {
        check_name("scope", scope)?;
        check_name("group", group)?;
        check_name("member", member)?;
        let what = "member-remove";
        self.write(what, |txn| {
            let mut memberships = txn.open_table(MEMBERSHIPS).ctx(what)?;
            let mut counts = txn.open_table(SCOPE_MEMBERS).ctx(what)?;
            let members = members_of(&counts, scope)?;
            if memberships
                .remove((scope, member, group))
                .ctx(what)?
                .is_none()
            {
                let outcome = MemberRemoveOutcome::NotInGroup;
                return Ok((MemberRemoved { outcome, members }, false));
            }
            let mut group_members = txn.open_table(GROUP_MEMBERS).ctx(what)?;
            group_members.remove((scope, group, member)).ctx(what)?;
            let mut member_groups = txn.open_table(MEMBER_GROUPS).ctx(what)?;
            let released = leave(&mut member_groups, scope, member)?;
            let (outcome, members) = if released {
                (
                    MemberRemoveOutcome::Released,
                    release(&mut counts, scope, 1)?,
                )
            } else {
                (MemberRemoveOutcome::LeftGroup, members)
            };
            Ok((MemberRemoved { outcome, members }, true))
        })
    }

    fn group_clear(&self, scope: &str, group: &str) -> Result<GroupCleared, StoreError> {
        check_name("scope", scope)?;
        check_name("group", group)?;
        let what = "group-clear";
        self.write(what, |txn| {
            let mut group_members = txn.open_table(GROUP_MEMBERS).ctx(what)?;
            let end = next(group);
            let cleared = group_members
                .range((scope, group, "")..(scope, end.as_str(), ""))
                .ctx(what)?
                .map(|entry| entry.map(|(k, _)| k.value().2.to_owned()))
                .collect::<Result<Vec<String>, _>>()
                .ctx(what)?;
            let mut counts = txn.open_table(SCOPE_MEMBERS).ctx(what)?;
            if cleared.is_empty() {
                let members = members_of(&counts, scope)?;
                let none = GroupCleared {
                    removed: 0,
                    released: 0,
                    members,
                };
                return Ok((none, false));
            }
            let mut memberships = txn.open_table(MEMBERSHIPS).ctx(what)?;
            let mut member_groups = txn.open_table(MEMBER_GROUPS).ctx(what)?;
            let mut released = 0u64;
            for member in &cleared {
                let member = member.as_str();
                group_members.remove((scope, group, member)).ctx(what)?;
                memberships.remove((scope, member, group)).ctx(what)?;
                if leave(&mut member_groups, scope, member)? {
                    released += 1;
                }
            }
            let members = release(&mut counts, scope, released)?;
            let removed = cleared.len() as u64;
            let answer = GroupCleared {
                removed,
                released,
                members,
            };
            Ok((answer, true))
        })
    }

    fn member_count(&self, scope: &str) -> Result<u64, StoreError> {
        check_name("scope", scope)?;
        let what = "member-count";
        let txn = self.db.begin_read().ctx(what)?;
        let counts = txn.open_table(SCOPE_MEMBERS).ctx(what)?;
        members_of(&counts, scope)
    }

    fn persist(&self) -> Result<(), StoreError> {
        let mut commits = self.commits();
        // Everything this caller applied has returned, and so was counted, by now.
        let target = commits.applied;
        loop {
            if commits.durable >= target {
                return Ok(());
            }
            if !commits.in_flight {
                break;
            }
            // A durable commit is running: if it covers `target` this waits for it;
            // if it started before our effects, this waits to lead the next one.
            commits = self
                .durable_done
                .wait(commits)
                .unwrap_or_else(PoisonError::into_inner);
        }
        commits.in_flight = true;
        let mut leader = Leader {
            store: self,
            covers: None,
        };
        // Primitives already under way (most often queued for redb's single writer,
        // behind the previous durable commit) will end within microseconds: waiting
        // for them lets this one disk sync cover their callers too, where each would
        // otherwise need a sync of its own. It waits for as many endings as had
        // begun by now, so a steady stream of new primitives cannot hold it back.
        let until = commits.started;
        if commits.ended < until {
            commits.draining = Some(until);
            while commits.ended < until {
                commits = self
                    .drained
                    .wait(commits)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            commits.draining = None;
        }
        // Every commit counted in `applied` ended before this point, so the durable
        // transaction begun below comes after them and covers them all.
        let covers = commits.applied;
        drop(commits);
        // On failure the followers wake, find nothing durable, and retry as leaders.
        self.durable_commit()?;
        leader.covers = Some(covers);
        Ok(())
    }

    fn scopes(&self) -> Result<Vec<String>, StoreError> {
        let what = "listing scopes";
        let txn = self.db.begin_read().ctx(what)?;
        let mut out = BTreeSet::new();
        scopes_of(&txn.open_table(RECORDS).ctx(what)?, &mut out)?;
        scopes_of(&txn.open_table(COUNTERS).ctx(what)?, &mut out)?;
        // Once markers are only written along with their counter, so their scopes
        // are already listed. One entry per scope holding members:
        let counts = txn.open_table(SCOPE_MEMBERS).ctx(what)?;
        for entry in counts.iter().ctx(what)? {
            let (scope, _) = entry.ctx(what)?;
            out.insert(scope.value().to_owned());
        }
        Ok(out.into_iter().collect())
    }
}

/// Takes `member` out of one of its groups; true if that was its last one.
fn leave(
    member_groups: &mut redb::Table<'_, Pair, u64>,
    scope: &str,
    member: &str,
) -> Result<bool, StoreError> {
    let what = "updating a member's groups";
    let groups = member_groups
        .get((scope, member))
        .ctx(what)?
        .map(|g| g.value());
    match groups {
        Some(n) if n > 1 => {
            member_groups.insert((scope, member), n - 1).ctx(what)?;
            Ok(false)
        }
        Some(_) => {
            member_groups.remove((scope, member)).ctx(what)?;
            Ok(true)
        }
        None => Err(corrupt(
            what,
            format!("member {member:?} of scope {scope:?} is in a group but has no group count"),
        )),
    }
}

/// Subtracts `released` from the scope's member count; answers the new count.
fn release(
    counts: &mut redb::Table<'_, &'static str, u64>,
    scope: &str,
    released: u64,
) -> Result<u64, StoreError> {
    let what = "updating a scope's member count";
    let members = members_of(counts, scope)?;
    let left = members.checked_sub(released).ok_or_else(|| {
        corrupt(
            what,
            format!("scope {scope:?} releases {released} of {members} members"),
        )
    })?;
    if left == 0 {
        counts.remove(scope).ctx(what)?;
    } else if released > 0 {
        counts.insert(scope, left).ctx(what)?;
    }
    Ok(left)
}
