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
//! | `group_members`  | `(scope, group, member)`   | `()`                    |
//! | `member_groups`  | `(scope, member)`          | `u64` groups holding it (never 0) |
//! | `scope_members`  | `scope`                    | `u64` distinct members (never 0)  |
//!
//! `expires_at == i64::MAX` means never; an entry with `expires_at <= now` reads as
//! absent and is overwritten by the next applied `counter_add`. Member entries do not
//! expire; counts that reach 0 are deleted, so an empty scope leaves no trace.
//!
//! `member_add_many` and `import_scope` are one write transaction each, however
//! many members they carry; `visit_members` and `export_scope` read one read
//! transaction, a snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use redb::{
    CommitError, Database, DatabaseError, Durability, ReadOnlyTable, ReadableDatabase,
    ReadableTable, SetDurabilityError, StorageError, TableDefinition, TableError, TransactionError,
    WriteTransaction,
};

use super::{
    CounterAdd, Guard, Instant, ScopeDump, Store, StoreError, check_batch, check_counter,
    check_guarded_member, check_name, check_value,
};
use crate::bindings::{
    GroupCleared, GuardedAdd, MemberAddOutcome, MemberAdded, MemberRemoveOutcome, MemberRemoved,
    MembersAdded, Tally,
};

type Pair = (&'static str, &'static str);
type Triple = (&'static str, &'static str, &'static str);

const RECORDS: TableDefinition<Pair, &str> = TableDefinition::new("records");
const COUNTERS: TableDefinition<Pair, (u64, i64)> = TableDefinition::new("counters");
const ONCE: TableDefinition<Pair, i64> = TableDefinition::new("once");
/// A table of earlier versions: `group_members` with its key in another order,
/// written with every membership and never needed. Dropped when a file is opened.
const MEMBERSHIPS: TableDefinition<Triple, ()> = TableDefinition::new("memberships");
const GROUP_MEMBERS: TableDefinition<Triple, ()> = TableDefinition::new("group_members");
const MEMBER_GROUPS: TableDefinition<Pair, u64> = TableDefinition::new("member_groups");
const SCOPE_MEMBERS: TableDefinition<&str, u64> = TableDefinition::new("scope_members");

/// Expiry stored for "never".
const NEVER: Instant = i64::MAX;

/// redb's page cache, in bytes.
const CACHE_BYTES: usize = 128 << 20;

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
        // redb caches up to 1 GiB of the file by default, so a gateway's memory
        // would grow with its database. A bounded cache keeps it flat: the hot
        // part of a ledger (account records, this cycle's counters) is small.
        let db = match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
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
        txn.delete_table(MEMBERSHIPS).ctx(&what)?;
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

/// Whether `guard` holds for `scope`; `records` opens the table, and is called
/// only when there is a guard.
fn guard_holds<T: ReadableTable<Pair, &'static str>>(
    guard: Option<Guard<'_>>,
    scope: &str,
    records: impl FnOnce() -> Result<T, StoreError>,
) -> Result<bool, StoreError> {
    let Some(guard) = guard else {
        return Ok(true);
    };
    let records = records()?;
    let record = records
        .get((scope, guard.key))
        .ctx("reading a guard's record")?;
    Ok(guard.holds(record.as_ref().map(|v| v.value())))
}

/// A counter's value at `now`: 0 when it was never added to, or has expired.
fn counter_of(
    counters: &impl ReadableTable<Pair, (u64, i64)>,
    scope: &str,
    name: &str,
    now: Instant,
) -> Result<u64, StoreError> {
    Ok(
        match counters.get((scope, name)).ctx("reading a counter")? {
            Some(g) => match g.value() {
                (value, expires_at) if !expired(expires_at, now) => value,
                _ => 0,
            },
            None => 0,
        },
    )
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

/// Adds to `out` the first `limit` distinct scopes of `table` from `from` on.
fn scopes_from<V: redb::Value + 'static>(
    table: &ReadOnlyTable<Pair, V>,
    from: &str,
    limit: usize,
    out: &mut BTreeSet<String>,
) -> Result<(), StoreError> {
    let what = "listing scopes";
    let mut from = from.to_owned();
    for _ in 0..limit {
        let Some(entry) = table.range((from.as_str(), "")..).ctx(what)?.next() else {
            return Ok(());
        };
        let (key, _) = entry.ctx(what)?;
        let scope = key.value().0;
        from = next(scope);
        out.insert(scope.to_owned());
    }
    Ok(())
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
        counter_of(&txn.open_table(COUNTERS).ctx(what)?, scope, name, now)
    }

    fn counter_add_guarded(
        &self,
        scope: &str,
        guard: Option<Guard<'_>>,
        name: &str,
        add: CounterAdd<'_>,
    ) -> Result<GuardedAdd, StoreError> {
        check_counter(scope, guard, name, add.once)?;
        let what = "counter-add";
        self.write(what, |txn| {
            if !guard_holds(guard, scope, || txn.open_table(RECORDS).ctx(what))? {
                return Ok((GuardedAdd::Stale, false));
            }
            let members = members_of(&txn.open_table(SCOPE_MEMBERS).ctx(what)?, scope)?;
            let tally = |counter| Tally { counter, members };
            let mut counters = txn.open_table(COUNTERS).ctx(what)?;
            let current = counter_of(&counters, scope, name, add.now)?;
            let mut markers = txn.open_table(ONCE).ctx(what)?;
            if let Some(once) = add.once {
                let seen = markers
                    .get((scope, once.key.as_str()))
                    .ctx(what)?
                    .is_some_and(|g| !expired(g.value(), add.now));
                if seen {
                    return Ok((GuardedAdd::Repeated(tally(current)), false));
                }
            }
            let new = match current.checked_add(add.amount) {
                Some(new) if add.limit.is_none_or(|limit| new <= limit) => new,
                _ => return Ok((GuardedAdd::Refused(tally(current)), false)),
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
            Ok((GuardedAdd::Applied(tally(new)), true))
        })
    }

    fn counter_tally(
        &self,
        scope: &str,
        guard: Option<Guard<'_>>,
        name: &str,
        now: Instant,
    ) -> Result<Option<Tally>, StoreError> {
        check_counter(scope, guard, name, None)?;
        let what = "counter-tally";
        let txn = self.db.begin_read().ctx(what)?;
        if !guard_holds(guard, scope, || txn.open_table(RECORDS).ctx(what))? {
            return Ok(None);
        }
        Ok(Some(Tally {
            counter: counter_of(&txn.open_table(COUNTERS).ctx(what)?, scope, name, now)?,
            members: members_of(&txn.open_table(SCOPE_MEMBERS).ctx(what)?, scope)?,
        }))
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
        self.write("member-add", |txn| {
            add_member(txn, scope, group, member, limit)
        })
    }

    fn member_add_guarded(
        &self,
        scope: &str,
        guard: Option<Guard<'_>>,
        group: &str,
        member: &str,
        limit: Option<u64>,
        name: &str,
        now: Instant,
    ) -> Result<Option<(MemberAddOutcome, Tally)>, StoreError> {
        check_guarded_member(scope, guard, group, member, name)?;
        let what = "member-add";
        self.write(what, |txn| {
            if !guard_holds(guard, scope, || txn.open_table(RECORDS).ctx(what))? {
                return Ok((None, false));
            }
            let (added, changed) = add_member(txn, scope, group, member, limit)?;
            let tally = Tally {
                counter: counter_of(&txn.open_table(COUNTERS).ctx(what)?, scope, name, now)?,
                members: added.members,
            };
            Ok((Some((added.outcome, tally)), changed))
        })
    }

    fn member_add_many(
        &self,
        scope: &str,
        group: &str,
        members: &[String],
        limit: Option<u64>,
    ) -> Result<MembersAdded, StoreError> {
        check_batch(scope, group, members)?;
        let what = "member-add-many";
        self.write(what, |txn| {
            let mut counts = txn.open_table(SCOPE_MEMBERS).ctx(what)?;
            let before = members_of(&counts, scope)?;
            if members.is_empty() {
                let none = MembersAdded {
                    outcomes: Vec::new(),
                    members: before,
                };
                return Ok((none, false));
            }
            let mut group_members = txn.open_table(GROUP_MEMBERS).ctx(what)?;
            let mut member_groups = txn.open_table(MEMBER_GROUPS).ctx(what)?;

            // The tables are read and written in the members' byte order, so that
            // neighbouring keys share pages, while the outcomes are decided in the
            // order given. The sort is stable: of a member given twice, the first
            // of its run is the one given first.
            let mut order: Vec<usize> = (0..members.len()).collect();
            order.sort_by(|&a, &b| members[a].cmp(&members[b]));

            // 1. What the store holds for each distinct member, before the call.
            let mut found = vec![Found::New; members.len()];
            let mut first: Option<usize> = None;
            for &i in &order {
                let member = members[i].as_str();
                if let Some(f) = first
                    && members[f] == member
                {
                    found[i] = Found::Again(f);
                    continue;
                }
                first = Some(i);
                let groups = member_groups
                    .get((scope, member))
                    .ctx(what)?
                    .map(|g| g.value());
                found[i] = match groups {
                    None => Found::New,
                    Some(_)
                        if group_members
                            .get((scope, group, member))
                            .ctx(what)?
                            .is_some() =>
                    {
                        Found::InGroup
                    }
                    Some(n) => Found::Elsewhere(
                        n.checked_add(1)
                            .ok_or_else(|| corrupt(what, "group count overflows"))?,
                    ),
                };
            }

            // 2. The outcomes, in the order given, as one member-add after another
            // would have them. The count only grows within the call, so a member
            // refused once is refused again.
            let mut count = before;
            let mut outcomes = Vec::with_capacity(members.len());
            for f in &found {
                let outcome = match *f {
                    Found::InGroup => MemberAddOutcome::AlreadyInGroup,
                    Found::Elsewhere(_) => MemberAddOutcome::Joined,
                    Found::New if limit.is_some_and(|l| count >= l) => MemberAddOutcome::Refused,
                    Found::New => {
                        count = count
                            .checked_add(1)
                            .ok_or_else(|| corrupt(what, "member count overflows"))?;
                        MemberAddOutcome::Inserted
                    }
                    Found::Again(f) => match outcomes[f] {
                        MemberAddOutcome::Refused => MemberAddOutcome::Refused,
                        _ => MemberAddOutcome::AlreadyInGroup,
                    },
                };
                outcomes.push(outcome);
            }

            // 3. The writes, one table at a time.
            let joins = || {
                order.iter().filter_map(|&i| match (found[i], outcomes[i]) {
                    (Found::New, MemberAddOutcome::Inserted) => Some((members[i].as_str(), 1)),
                    (Found::Elsewhere(n), _) => Some((members[i].as_str(), n)),
                    _ => None,
                })
            };
            let mut changed = false;
            for (member, groups) in joins() {
                member_groups.insert((scope, member), groups).ctx(what)?;
                changed = true;
            }
            for (member, _) in joins() {
                group_members.insert((scope, group, member), ()).ctx(what)?;
            }
            if count != before {
                counts.insert(scope, count).ctx(what)?;
            }
            let answer = MembersAdded {
                outcomes,
                members: count,
            };
            Ok((answer, changed))
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
            let mut group_members = txn.open_table(GROUP_MEMBERS).ctx(what)?;
            let mut counts = txn.open_table(SCOPE_MEMBERS).ctx(what)?;
            let members = members_of(&counts, scope)?;
            if group_members
                .remove((scope, group, member))
                .ctx(what)?
                .is_none()
            {
                let outcome = MemberRemoveOutcome::NotInGroup;
                return Ok((MemberRemoved { outcome, members }, false));
            }
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
            let mut member_groups = txn.open_table(MEMBER_GROUPS).ctx(what)?;
            let mut released = 0u64;
            for member in &cleared {
                let member = member.as_str();
                group_members.remove((scope, group, member)).ctx(what)?;
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

    fn visit_members(
        &self,
        scope: &str,
        group: Option<&str>,
        visit: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Result<(), StoreError> {
        check_name("scope", scope)?;
        if let Some(group) = group {
            check_name("group", group)?;
        }
        let what = "visiting members";
        let txn = self.db.begin_read().ctx(what)?;
        let group_members = txn.open_table(GROUP_MEMBERS).ctx(what)?;
        let range = match group {
            Some(group) => {
                let end = next(group);
                group_members.range((scope, group, "")..(scope, end.as_str(), ""))
            }
            None => {
                let end = next(scope);
                group_members.range((scope, "", "")..(end.as_str(), "", ""))
            }
        };
        for entry in range.ctx(what)? {
            let (key, _) = entry.ctx(what)?;
            let (_, group, member) = key.value();
            if !visit(group, member) {
                break;
            }
        }
        Ok(())
    }

    fn scopes_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        let what = "listing scopes";
        let txn = self.db.begin_read().ctx(what)?;
        let from = after.map_or_else(String::new, next);
        // The first `limit` of each table's scopes hold the first `limit` of all.
        let mut out = BTreeSet::new();
        scopes_from(&txn.open_table(RECORDS).ctx(what)?, &from, limit, &mut out)?;
        scopes_from(&txn.open_table(COUNTERS).ctx(what)?, &from, limit, &mut out)?;
        let counts = txn.open_table(SCOPE_MEMBERS).ctx(what)?;
        for entry in counts.range(from.as_str()..).ctx(what)?.take(limit) {
            let (scope, _) = entry.ctx(what)?;
            out.insert(scope.value().to_owned());
        }
        Ok(out.into_iter().take(limit).collect())
    }

    fn visit_members_after(
        &self,
        scope: &str,
        group: Option<&str>,
        after: Option<(&str, &str)>,
        visit: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Result<(), StoreError> {
        check_name("scope", scope)?;
        if let Some(group) = group {
            check_name("group", group)?;
        }
        let what = "visiting members";
        let txn = self.db.begin_read().ctx(what)?;
        let group_members = txn.open_table(GROUP_MEMBERS).ctx(what)?;
        // From just after `after` (or the scope's start) to the end of the group
        // asked for (or of the scope).
        let after_member = after.map(|(_, m)| next(m));
        let mut lower = match after {
            Some((g, _)) => (g, after_member.as_deref().unwrap_or("")),
            None => ("", ""),
        };
        let (next_scope, next_group) = (next(scope), group.map(next));
        let upper = match (group, &next_group) {
            (Some(only), Some(next_group)) => {
                lower = lower.max((only, ""));
                (scope, next_group.as_str(), "")
            }
            _ => (next_scope.as_str(), "", ""),
        };
        if (scope, lower.0, lower.1) >= upper {
            return Ok(());
        }
        let range = group_members.range((scope, lower.0, lower.1)..upper);
        for entry in range.ctx(what)? {
            let (key, _) = entry.ctx(what)?;
            let (_, group, member) = key.value();
            if !visit(group, member) {
                break;
            }
        }
        Ok(())
    }

    fn visit_records(
        &self,
        scope: &str,
        after: Option<&str>,
        visit: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Result<(), StoreError> {
        check_name("scope", scope)?;
        let what = "visiting records";
        let txn = self.db.begin_read().ctx(what)?;
        let records = txn.open_table(RECORDS).ctx(what)?;
        let from = after.map_or_else(String::new, next);
        let end = next(scope);
        for entry in records
            .range((scope, from.as_str())..(end.as_str(), ""))
            .ctx(what)?
        {
            let (key, value) = entry.ctx(what)?;
            if !visit(key.value().1, value.value()) {
                break;
            }
        }
        Ok(())
    }

    fn export_scope(&self, scope: &str) -> Result<ScopeDump, StoreError> {
        check_name("scope", scope)?;
        let what = "exporting a scope";
        let txn = self.db.begin_read().ctx(what)?;
        let end = next(scope);
        let pairs = (scope, "")..(end.as_str(), "");
        let mut dump = ScopeDump::default();
        let records = txn.open_table(RECORDS).ctx(what)?;
        for entry in records.range(pairs.clone()).ctx(what)? {
            let (key, value) = entry.ctx(what)?;
            let record = (key.value().1.to_owned(), value.value().to_owned());
            dump.records.push(record);
        }
        let counters = txn.open_table(COUNTERS).ctx(what)?;
        for entry in counters.range(pairs.clone()).ctx(what)? {
            let (key, value) = entry.ctx(what)?;
            let (value, expires_at) = value.value();
            let expires_at = (expires_at != NEVER).then_some(expires_at);
            dump.counters
                .push((key.value().1.to_owned(), value, expires_at));
        }
        let markers = txn.open_table(ONCE).ctx(what)?;
        for entry in markers.range(pairs).ctx(what)? {
            let (key, expires_at) = entry.ctx(what)?;
            dump.once
                .push((key.value().1.to_owned(), expires_at.value()));
        }
        let group_members = txn.open_table(GROUP_MEMBERS).ctx(what)?;
        for entry in group_members
            .range((scope, "", "")..(end.as_str(), "", ""))
            .ctx(what)?
        {
            let (key, _) = entry.ctx(what)?;
            let (_, group, member) = key.value();
            dump.memberships.push((group.to_owned(), member.to_owned()));
        }
        Ok(dump)
    }

    fn import_scope(&self, scope: &str, dump: &ScopeDump) -> Result<(), StoreError> {
        check_name("scope", scope)?;
        for (key, value) in &dump.records {
            check_name("key", key)?;
            check_value(value)?;
        }
        for (name, _, _) in &dump.counters {
            check_name("counter name", name)?;
        }
        for (key, _) in &dump.once {
            check_name("once key", key)?;
        }
        for (group, member) in &dump.memberships {
            check_name("group", group)?;
            check_name("member", member)?;
        }
        let what = "importing a scope";
        self.write(what, |txn| {
            let end = next(scope);
            let pairs = (scope, "")..(end.as_str(), "");
            let triples = (scope, "", "")..(end.as_str(), "", "");

            // Everything the scope held goes first, derived counts included; after
            // that, an insert that finds a key in place found a repeat in the dump.
            let mut records = txn.open_table(RECORDS).ctx(what)?;
            let mut counters = txn.open_table(COUNTERS).ctx(what)?;
            let mut markers = txn.open_table(ONCE).ctx(what)?;
            let mut group_members = txn.open_table(GROUP_MEMBERS).ctx(what)?;
            let mut member_groups = txn.open_table(MEMBER_GROUPS).ctx(what)?;
            let mut counts = txn.open_table(SCOPE_MEMBERS).ctx(what)?;
            let mut changed = false;
            let mut any = || {
                changed = true;
                false
            };
            records.retain_in(pairs.clone(), |_, _| any()).ctx(what)?;
            counters.retain_in(pairs.clone(), |_, _| any()).ctx(what)?;
            markers.retain_in(pairs.clone(), |_, _| any()).ctx(what)?;
            group_members.retain_in(triples, |_, _| any()).ctx(what)?;
            member_groups.retain_in(pairs, |_, _| any()).ctx(what)?;
            changed |= counts.remove(scope).ctx(what)?.is_some();

            for (key, value) in &dump.records {
                let key = key.as_str();
                if records
                    .insert((scope, key), value.as_str())
                    .ctx(what)?
                    .is_some()
                {
                    return Err(repeated(format_args!("record {key:?}")));
                }
            }
            for (name, value, expires_at) in &dump.counters {
                let name = name.as_str();
                let stored = (*value, expires_at.unwrap_or(NEVER));
                if counters.insert((scope, name), stored).ctx(what)?.is_some() {
                    return Err(repeated(format_args!("counter {name:?}")));
                }
            }
            for (key, expires_at) in &dump.once {
                let key = key.as_str();
                if markers
                    .insert((scope, key), *expires_at)
                    .ctx(what)?
                    .is_some()
                {
                    return Err(repeated(format_args!("once key {key:?}")));
                }
            }
            let mut groups_of = BTreeMap::<&str, u64>::new();
            for (group, member) in &dump.memberships {
                let (group, member) = (group.as_str(), member.as_str());
                if group_members
                    .insert((scope, group, member), ())
                    .ctx(what)?
                    .is_some()
                {
                    return Err(repeated(format_args!(
                        "member {member:?} of group {group:?}"
                    )));
                }
                *groups_of.entry(member).or_default() += 1;
            }
            for (&member, &groups) in &groups_of {
                member_groups.insert((scope, member), groups).ctx(what)?;
            }
            if !groups_of.is_empty() {
                counts.insert(scope, groups_of.len() as u64).ctx(what)?;
            }
            let wrote = !(dump.records.is_empty()
                && dump.counters.is_empty()
                && dump.once.is_empty()
                && dump.memberships.is_empty());
            Ok(((), changed || wrote))
        })
    }
}

/// `member_add` in `txn`; answers whether it changed anything.
fn add_member(
    txn: &WriteTransaction,
    scope: &str,
    group: &str,
    member: &str,
    limit: Option<u64>,
) -> Result<(MemberAdded, bool), StoreError> {
    let what = "member-add";
    let mut group_members = txn.open_table(GROUP_MEMBERS).ctx(what)?;
    let mut counts = txn.open_table(SCOPE_MEMBERS).ctx(what)?;
    let members = members_of(&counts, scope)?;
    if group_members
        .get((scope, group, member))
        .ctx(what)?
        .is_some()
    {
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
    group_members.insert((scope, group, member), ()).ctx(what)?;
    Ok((MemberAdded { outcome, members }, true))
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

/// What [`Store::member_add_many`] finds for one of the members it is given.
#[derive(Clone, Copy)]
enum Found {
    /// Not in the scope.
    New,
    /// Already in the group.
    InGroup,
    /// In other groups only; carries its group count once it joins this one.
    Elsewhere(u64),
    /// Given earlier in the same call, at this index.
    Again(usize),
}

/// The error for a dump that gives the same key twice.
fn repeated(what: std::fmt::Arguments<'_>) -> StoreError {
    StoreError::InvalidArgument(format!("the dump holds {what} more than once"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written by a version that kept `memberships` opens with that table
    /// dropped and its members intact (they live in `group_members`).
    #[test]
    fn a_file_with_the_old_memberships_table_opens_without_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("old.redb");
        {
            let store = RedbStore::open(&path).expect("opens");
            store
                .member_add("acme", "q1", "ann@x.io", None)
                .expect("adds");
            store.persist().expect("durable");
            drop(store);
            let db = Database::create(&path).expect("reopens");
            let txn = db.begin_write().expect("writes");
            txn.open_table(MEMBERSHIPS)
                .expect("old table")
                .insert(("acme", "ann@x.io", "q1"), ())
                .expect("inserts");
            txn.commit().expect("commits");
        }
        let store = RedbStore::open(&path).expect("opens the old file");
        let txn = store.db.begin_read().expect("reads");
        assert!(matches!(
            txn.open_table(MEMBERSHIPS),
            Err(TableError::TableDoesNotExist(_))
        ));
        assert_eq!(store.member_count("acme").expect("counts"), 1);
        let removed = store
            .member_remove("acme", "q1", "ann@x.io")
            .expect("removes");
        assert_eq!(removed.outcome, MemberRemoveOutcome::Released);
    }
}
