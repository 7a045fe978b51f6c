//! A [`Store`] in one redb file: the backend of a single gateway host.
//!
//! Every primitive is one redb write transaction committed with
//! [`Durability::None`]: applied and visible to every reader when it returns, at the
//! cost of a few microseconds and no disk sync. Each one that changed anything is
//! also appended to the store's journal (see [`super::journal`]), a file beside the
//! database named as it is with `-journal` appended, and [`Store::persist`]
//! writes the records appended since the last call and syncs them: one
//! `fdatasync` of the bytes that changed, where a redb durable commit writes every
//! dirty page and syncs twice. Concurrent callers share one sync (group commit,
//! [`super::group_commit`]). A checkpoint (one redb durable commit, after
//! [`OpenOptions::checkpoint_records`] records or `checkpoint_bytes` bytes) lets
//! the journal start again from its head; opening the store replays what redb
//! does not hold yet. A batch ([`Store::batch`]) runs many primitives, those its
//! thread calls, in one write transaction, committed and journaled when the
//! batch ends; the thread's reads meanwhile read that transaction. Table
//! `journal` keeps the store's id, its boot count (one per opening), the
//! number of the last record whose effects redb holds, updated in the same
//! transaction as those effects, and whether the store was closed cleanly.
//!
//! A journal found missing is refused unless the store can do without it: a
//! clean close (dropping the store with its database open) ends with a durable
//! commit that makes everything applied durable in redb and sets `closed`;
//! every opening clears it in its own durable commit, before any call. So an
//! opening that finds no journal opens only a new store, one closed cleanly,
//! one written before the journal existed (no id), or one written by a release
//! that kept no mark (an id but no `closed`) that redb did not have to recover
//! (redb's own clean shutdown made its commits durable). Any other is refused
//! with [`StoreError::JournalMissing`], unless [`OpenOptions::accept_journal_loss`]
//! (`creditgate store accept-journal-loss`): the store then opens as of its
//! last checkpoint under a new id, so that the lost journal, if it turns up, is
//! refused as another store's rather than replayed over what came since.
//!
//! Tables (`&str` components compare bytewise, so scopes list in byte order):
//!
//! | table            | key                        | value                   |
//! |------------------|----------------------------|-------------------------|
//! | `records`        | `(scope, key)`             | `&str` value            |
//! | `counters`       | `(scope, name)`            | `(u64 value, i64 expires_at)` |
//! | `once_markers`   | `(scope, key)`             | `(i64 expires_at, Option<u64> fingerprint)` |
//! | `group_members`  | `(scope, group, member)`   | `()`                    |
//! | `member_groups`  | `(scope, member)`          | `u64` groups holding it (never 0) |
//! | `scope_members`  | `scope`                    | `u64` distinct members (never 0)  |
//! | `group_counts`   | `(scope, group)`           | `(u64 members, u64 exclusive)`: the group's size, and its members no other group holds (members never 0) |
//! | `alert_log`      | `(owner, key)`             | `&str` value (the host's alert log) |
//! | `alert_sequences`| `owner`                    | `u64` last sequence number taken |
//!
//! Files written before the alert log had tables of its own kept it in scopes
//! `"\u{1}alerts/<owner>"` (records, and a counter `sequence`); opening such a
//! file moves them into `alert_log` and `alert_sequences` and drops the scopes.
//!
//! Files written before `group_counts` existed get it at opening, computed
//! once from `group_members` and `member_groups` in the opening's transaction;
//! from then on every primitive that adds or removes members keeps it in the
//! same transaction, so the journal needs no record of its own for it.
//!
//! Files written before `once` markers carried a fingerprint keep them in a table
//! `once` (`(scope, key)` → `i64 expires_at`); opening such a file moves each into
//! `once_markers` with no fingerprint (`None`), which matches no call's
//! fingerprint (WIT `once`), and drops `once`.
//!
//! `expires_at == i64::MAX` means never; an entry with `expires_at <= now` reads as
//! absent and is overwritten by the next applied `counter_add`. Member entries do not
//! expire; counts that reach 0 are deleted, so an empty scope leaves no trace.
//!
//! `member_add_many` and `import_scope` are one write transaction each, however
//! many members they carry; `visit_members` and `export_scope` read one read
//! transaction, a snapshot.
//!
//! A failed commit or journal write (a full disk, an I/O error) closes the handle: what it had
//! applied and not yet made durable is gone with it, so no later call, reads
//! included, can decide on effects nobody acknowledged. Until the file reopens,
//! every call is refused with [`StoreError::Unavailable`] and [`Store::health`]
//! says why; the reopen is tried again at most once per
//! [`OpenOptions::retry_after`], by whichever call comes: redb rolls the file
//! back to its last durable commit, and the journal's synced records are
//! replayed on it. [`Store::losses`] counts these losses
//! for callers that must tell an effect applied before one from one applied after.

use std::cell::{RefCell, RefMut};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::io;
use std::ops::{Bound, Deref};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};
use std::time::Duration;

use redb::backends::FileBackend;
use redb::{
    BackendError, CommitError, Database, DatabaseError, Durability, Key, ReadOnlyTable,
    ReadTransaction, ReadableDatabase, ReadableTable, SetDurabilityError, StorageBackend,
    StorageError, Table, TableDefinition, TableError, TableHandle, TransactionError, Value,
    WriteTransaction,
};

#[cfg(any(doc, test))]
use super::Store;
use super::group_commit::GroupCommit;
use super::journal::{self, Journal, Many, Op, ReplayFrom};
use super::{
    Alerts, BatchEnd, CounterAdd, CounterTally, GroupCount, Guard, GuardedUpdate, Instant,
    MAX_GROUPS_PER_MEMBER, MemberAdd, MemberAddGuarded, MemberAddMany, Members, Membership,
    Records, SECRET_LEN, ScopeDump, StoreError, Visit, VisitAlert, is_retry, too_many_groups,
};
use crate::bindings::{
    GroupCleared, GuardedAdd, GuardedMember, MemberAddOutcome, MemberAdded, MemberRemoveOutcome,
    MemberRemoved, MembersAdded, Tally,
};

type Pair = (&'static str, &'static str);
type Triple = (&'static str, &'static str, &'static str);

const RECORDS: TableDefinition<Pair, &str> = TableDefinition::new("records");
const COUNTERS: TableDefinition<Pair, (u64, i64)> = TableDefinition::new("counters");
const ONCE: TableDefinition<Pair, (i64, Option<u64>)> = TableDefinition::new("once_markers");
/// `once` markers as earlier versions kept them, without a fingerprint. Moved
/// into [`ONCE`] when a file is opened.
const LEGACY_ONCE: TableDefinition<Pair, i64> = TableDefinition::new("once");
/// A table of earlier versions: `group_members` with its key in another order,
/// written with every membership and never needed. Dropped when a file is opened.
const MEMBERSHIPS: TableDefinition<Triple, ()> = TableDefinition::new("memberships");
const GROUP_MEMBERS: TableDefinition<Triple, ()> = TableDefinition::new("group_members");
const MEMBER_GROUPS: TableDefinition<Pair, u64> = TableDefinition::new("member_groups");
const SCOPE_MEMBERS: TableDefinition<&str, u64> = TableDefinition::new("scope_members");
const GROUP_COUNTS: TableDefinition<Pair, (u64, u64)> = TableDefinition::new("group_counts");
const ALERT_LOG: TableDefinition<Pair, &str> = TableDefinition::new("alert_log");
const ALERT_SEQUENCES: TableDefinition<&str, u64> = TableDefinition::new("alert_sequences");
/// The store's secret ([`Store::secret`]) under [`SECRET`]: made by the first
/// opening of a release that has it, in the opening's durable transaction.
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
const SECRET: &str = "secret";
/// The host's records ([`Store::host_record`]); made by the first write of one.
const HOST_RECORDS: TableDefinition<&str, &str> = TableDefinition::new("host_records");
/// The journal's bookkeeping: [`ID`], [`BOOT`], [`APPLIED`], [`CLOSED`].
const META: TableDefinition<&str, u64> = TableDefinition::new("journal");
/// A random number naming the store, which its journal's header repeats.
const ID: &str = "id";
/// How many times the store was opened: records carry the opening's number.
const BOOT: &str = "boot";
/// The last journal record whose effects the database holds.
const APPLIED: &str = "applied";
/// 1 when the store was closed cleanly (everything applied durable in redb, the
/// journal not needed), 0 while it is open. Absent in files of earlier releases.
const CLOSED: &str = "closed";

/// Expiry stored for "never".
const NEVER: Instant = i64::MAX;

/// The tables a transaction's primitives use, each opened at its first use and
/// kept open until the transaction ends. Opening a redb table is a lookup in the
/// table tree and closing it a staged root update: when every primitive opened
/// its own, that was half of a charge's time in redb (a guarded charge opens
/// four: 5.8 µs a charge in a batch of 50, 3.0 µs with them kept open).
///
/// [`WriteTables`] hold them open in a write transaction (a batch's for all of
/// its primitives, see [`TxnCell`]); [`ReadTables`] open them in a read
/// transaction, which is cheap. The two have the same methods, so one body reads
/// either (see `reading!`).
macro_rules! tables {
    ($($name:ident: $def:ident => $k:ty, $v:ty;)*) => {
        struct WriteTables<'t> {
            txn: &'t WriteTransaction,
            $($name: RefCell<Option<Table<'t, $k, $v>>>,)*
        }

        impl<'t> WriteTables<'t> {
            fn new(txn: &'t WriteTransaction) -> Self {
                WriteTables {
                    txn,
                    $($name: RefCell::new(None),)*
                }
            }
            $(fn $name(&self) -> Result<RefMut<'_, Table<'t, $k, $v>>, StoreError> {
                held_open(&self.$name, self.txn, $def)
            })*
        }

        struct ReadTables<'r>(&'r ReadTransaction);

        #[allow(dead_code, reason = "each table has both; not every one is read outside a batch")]
        impl ReadTables<'_> {
            $(fn $name(&self) -> Result<Held<ReadOnlyTable<$k, $v>>, StoreError> {
                self.0.open_table($def).ctx($def.name()).map(Held)
            })*
        }
    };
}

tables! {
    records: RECORDS => Pair, &'static str;
    counters: COUNTERS => Pair, (u64, i64);
    once: ONCE => Pair, (i64, Option<u64>);
    group_members: GROUP_MEMBERS => Triple, ();
    member_groups: MEMBER_GROUPS => Pair, u64;
    scope_members: SCOPE_MEMBERS => &'static str, u64;
    group_counts: GROUP_COUNTS => Pair, (u64, u64);
    alert_log: ALERT_LOG => Pair, &'static str;
    alert_sequences: ALERT_SEQUENCES => &'static str, u64;
}

/// `cell`'s table, opened in `txn` if it is not yet. A primitive holds a table
/// while it uses it and never asks for it twice at once; if one did, the answer
/// is an error, not a panic.
fn held_open<'c, 't, K: Key + 'static, V: Value + 'static>(
    cell: &'c RefCell<Option<Table<'t, K, V>>>,
    txn: &'t WriteTransaction,
    def: TableDefinition<'static, K, V>,
) -> Result<RefMut<'c, Table<'t, K, V>>, StoreError> {
    let mut slot = cell.try_borrow_mut().map_err(|_| {
        unavailable(
            def.name(),
            "the table is in use by the same primitive already",
        )
    })?;
    if slot.is_none() {
        *slot = Some(txn.open_table(def).ctx(def.name())?);
    }
    RefMut::filter_map(slot, Option::as_mut)
        .map_err(|_| unavailable(def.name(), "the table did not open"))
}

/// A table of a read transaction, behind a `Deref` as a [`WriteTables`]' table
/// is, so that one body reads either.
struct Held<T>(T);

impl<T> Deref for Held<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

self_cell::self_cell!(
    /// A write transaction and its open tables, held together while a batch (or
    /// a replay) runs primitive after primitive in it; [`TxnCell::into_owner`]
    /// closes the tables and gives the transaction back, to be committed.
    struct TxnCell {
        owner: WriteTransaction,
        #[not_covariant]
        dependent: WriteTables,
    }
);

impl TxnCell {
    fn open(txn: WriteTransaction) -> Self {
        TxnCell::new(txn, |txn| WriteTables::new(txn))
    }
}

/// redb's page cache by default, in bytes.
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

impl<T, E: RedbError> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| e.classify(what))
    }
}

fn unavailable(what: &str, e: impl Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

fn corrupt(what: &str, e: impl Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// One of redb's errors: whether it means the file is corrupt or the store is
/// unavailable for now.
trait RedbError: Display + Sized {
    fn classify(self, what: &str) -> StoreError;
}

impl RedbError for StorageError {
    fn classify(self, what: &str) -> StoreError {
        match self {
            StorageError::Corrupted(_) => corrupt(what, self),
            e => unavailable(what, e),
        }
    }
}

impl RedbError for TableError {
    fn classify(self, what: &str) -> StoreError {
        match self {
            TableError::Storage(e) => e.classify(what),
            // The file holds tables of other types than this code writes.
            TableError::TableTypeMismatch { .. }
            | TableError::TypeDefinitionChanged { .. }
            | TableError::TableIsMultimap(_)
            | TableError::TableDoesNotExist(_) => corrupt(what, self),
            e => unavailable(what, e),
        }
    }
}

impl RedbError for SetDurabilityError {
    fn classify(self, what: &str) -> StoreError {
        unavailable(what, self)
    }
}

/// The errors that are a [`StorageError`] (classified as such) or else
/// unavailability.
macro_rules! storage_or_unavailable {
    ($($error:ident),*) => {$(
        impl RedbError for $error {
            fn classify(self, what: &str) -> StoreError {
                match self {
                    $error::Storage(e) => e.classify(what),
                    e => unavailable(what, e),
                }
            }
        }
    )*};
}

storage_or_unavailable!(TransactionError, CommitError, DatabaseError);

/// What opening a store file may create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Create {
    /// Nothing: the file must exist and hold a ledger. For commands that only
    /// read, so that a mistyped path is not answered as an empty ledger.
    Never,
    /// A missing file, with an empty ledger. An existing empty file is still
    /// refused ([`StoreError::Empty`]): a ledger truncated to nothing must not
    /// pass for a fresh one, with every account unknown.
    #[default]
    IfMissing,
    /// A missing file, or a ledger in an existing empty one (`serve --init-store`).
    /// A file with anything in it is never overwritten.
    IfMissingOrEmpty,
}

/// Wraps the storage under a file of the store, the database or its journal,
/// given with its path (see [`OpenOptions::storage`]).
pub type WrapStorage =
    dyn Fn(&Path, Box<dyn StorageBackend>) -> Box<dyn StorageBackend> + Send + Sync;

/// How [`RedbStore::open_with`] opens a file.
#[derive(Clone)]
pub struct OpenOptions {
    pub create: Create,
    /// Least time between two attempts to reopen the file after a failed commit.
    /// Each attempt reads the file to repair it, so a gateway refusing decisions
    /// on a full disk must not try at every request.
    pub retry_after: Duration,
    /// Wraps the storage of the database and of its journal, at every open and
    /// reopen: tests make it fail on command, or keep only what was synced. None:
    /// the files as they are.
    pub storage: Option<Arc<WrapStorage>>,
    /// A checkpoint (one redb durable commit, after which the journal starts
    /// again) is taken once the journal holds this many records, or
    /// [`OpenOptions::checkpoint_bytes`] bytes. It bounds how much an opening
    /// replays, and so the time to recover after a crash.
    pub checkpoint_records: u64,
    pub checkpoint_bytes: u64,
    /// redb's page cache, in bytes. A gateway keeps the default; a bulk import,
    /// whose writes come in key order and are not read again, needs far less,
    /// and holds its own working set beside it.
    pub cache_bytes: usize,
    /// Open a store whose journal is missing though the store was not closed
    /// cleanly, instead of refusing it ([`StoreError::JournalMissing`]): what
    /// the journal held since the last checkpoint is lost, knowingly. Said in
    /// [`RedbStore::journal_loss`]. Never applies to a reopen after a failure.
    pub accept_journal_loss: bool,
}

/// What an opening with [`OpenOptions::accept_journal_loss`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalLoss {
    /// The journal found missing; a new one is in its place.
    pub journal: PathBuf,
    /// Why the store needed it (how it was last closed).
    pub why: String,
    /// The last journal record the store holds: those after it are lost.
    pub applied: u64,
}

/// Records between checkpoints by default. A checkpoint is one redb durable
/// commit, which writes every page the records since the last one dirtied and
/// syncs the file twice, on the write lane: 30–45 ms in `serve` under pure
/// charges, whatever the interval (every 2,500 records cost throughput; at
/// 10,000 the stalls set the p99.9 at 42–47 ms, at 40,000 at 25–27 ms, with 6%
/// more decisions a second). Replay re-runs each primitive in transactions of
/// REPLAY_BATCH with the tables kept open, so a full journal replays in about
/// 150 ms on a release build (`cargo bench --bench decide -- store/recover`).
const CHECKPOINT_RECORDS: u64 = 40_000;
/// Bytes between checkpoints by default: bulk imports fill it before the count.
const CHECKPOINT_BYTES: u64 = 8 << 20;

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            create: Create::default(),
            retry_after: Duration::from_secs(1),
            storage: None,
            checkpoint_records: CHECKPOINT_RECORDS,
            checkpoint_bytes: CHECKPOINT_BYTES,
            cache_bytes: CACHE_BYTES,
            accept_journal_loss: false,
        }
    }
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("create", &self.create)
            .field("retry_after", &self.retry_after)
            .field("storage", &self.storage.as_ref().map(|_| "wrapped"))
            .field("checkpoint_records", &self.checkpoint_records)
            .field("checkpoint_bytes", &self.checkpoint_bytes)
            .field("cache_bytes", &self.cache_bytes)
            .field("accept_journal_loss", &self.accept_journal_loss)
            .finish()
    }
}

/// The database, or why there is none.
enum Handle {
    Open(Open),
    /// A commit failed and the handle was closed.
    Failed(Failed),
}

/// The open database and its journal.
struct Open {
    /// Shared with the batch under way, if any (see [`Batch::db`]).
    db: Arc<Database>,
    journal: Journal,
    /// Set when a commit fails: neither file is written any more.
    fence: Arc<AtomicBool>,
    /// Which files the store and its journal are, and when that was last
    /// checked against their paths (see [`Identity`]).
    identity: Identity,
}

/// The store's and the journal's files as opened (device and inode). A file
/// removed or replaced under an open store takes every write after it where
/// no later opening looks: an operator's `rm`, a restore over it, a volume
/// remounted. [`RedbStore::flush`] compares them with the paths at most once
/// every [`IDENTITY_EVERY`], and fails the store closed when they differ.
struct Identity {
    files: [(u64, u64); 2],
    checked: Mutex<std::time::Instant>,
}

/// How often a flush checks that the store's paths still name its files.
const IDENTITY_EVERY: Duration = Duration::from_secs(1);

fn file_identity(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

impl Identity {
    fn of(path: &Path) -> io::Result<Self> {
        Ok(Identity {
            files: [
                file_identity(path)?,
                file_identity(&journal::path_of(path))?,
            ],
            checked: Mutex::new(std::time::Instant::now()),
        })
    }

    /// Whether the paths still name the files, when a check is due.
    fn check(&self, path: &Path) -> Result<(), StoreError> {
        {
            let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
            if checked.elapsed() < IDENTITY_EVERY {
                return Ok(());
            }
            *checked = std::time::Instant::now();
        }
        let journal = journal::path_of(path);
        for (file, was) in [path, journal.as_path()].into_iter().zip(self.files) {
            let now = file_identity(file).ok();
            if now != Some(was) {
                let what = if now.is_none() { "removed" } else { "replaced" };
                return Err(StoreError::Unavailable(format!(
                    "{} was {what} while the store had it open: what is written now goes \
                     where no later opening looks, so every decision is refused; put the \
                     file back, or stop serve (its decisions since are in the file it holds \
                     open, lost when it stops) and see to the ledger",
                    file.display()
                )));
            }
        }
        Ok(())
    }
}

struct Failed {
    /// What failed, named in every refusal until the file reopens.
    why: String,
    /// Why the last reopen failed, if one was tried.
    reopen: Option<String>,
    /// No reopen is tried before this.
    retry_at: std::time::Instant,
    /// The journal's `(durable_end, written_end)` when it failed: the reopen
    /// replays nothing past the first, and clears up to the second.
    journal_ends: (u64, u64),
}

/// The file under a [`Database`], which writes nothing more once fenced.
///
/// A failed commit fences it before the handle is closed. redb's close makes any
/// pending non-durable commit durable unless an I/O error is latched ("makes any
/// pending non-durable commit durable", `close_database` in redb-4.6.0
/// src/db.rs); every failure of the storage latches one today, but what the
/// failed commit held must not reach the file even through a failure that did
/// not, so the fence does not rely on it.
#[derive(Debug)]
struct Fenced {
    storage: Box<dyn StorageBackend>,
    fence: Arc<AtomicBool>,
}

impl Fenced {
    fn writable(&self) -> io::Result<()> {
        if self.fence.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "the store was closed after a failed commit",
            ));
        }
        Ok(())
    }
}

impl StorageBackend for Fenced {
    fn len(&self) -> io::Result<u64> {
        self.storage.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.storage.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        self.storage.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.writable()?;
        self.storage.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.writable()?;
        self.storage.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.storage.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.storage.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.storage.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.storage.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.storage.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.storage.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.storage.query_lock_range(start, end)
    }
}

/// The database and its journal's file, opened, before the journal is replayed.
struct Opened {
    db: Database,
    fence: Arc<AtomicBool>,
    journal: Box<dyn StorageBackend>,
    meta: Meta,
}

/// What table `journal` holds.
#[derive(Debug, Clone, Copy)]
struct Meta {
    id: u64,
    secret: [u8; SECRET_LEN],
    /// This opening's number.
    boot: u64,
    applied: u64,
    /// Why the journal this opening found missing was needed, the loss
    /// accepted ([`OpenOptions::accept_journal_loss`]); None when none was.
    lost: Option<&'static str>,
}

/// Opens the database in the file at `path`, with every table in place, and its
/// journal (created with the database, or if missing).
fn open_database(path: &Path, options: &OpenOptions) -> Result<Opened, StoreError> {
    let shown = path.display().to_string();
    let what = format!("opening {shown}");
    let existing = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
    };
    let opened = match options.create {
        Create::Never => existing().map(|file| (file, false)),
        Create::IfMissing | Create::IfMissingOrEmpty => {
            // The ledger holds customers' contacts and the secret its
            // idempotency fingerprints are keyed with: its owner's alone,
            // whatever the umask.
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(file) => Ok((file, true)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    existing().map(|file| (file, false))
                }
                Err(e) => Err(e),
            }
        }
    };
    let (file, created) = match opened {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::NotFound { path: shown });
        }
        Err(e) => return Err(unavailable(&what, e)),
    };
    let len = file.metadata().map_err(|e| unavailable(&what, e))?.len();
    if len == 0 && !created && options.create != Create::IfMissingOrEmpty {
        return Err(StoreError::Empty { path: shown });
    }
    // A journal with no store beside it is a deleted (or moved) store's, whose
    // decisions it may hold: a new ledger in its place would take it over.
    if created && options.create != Create::IfMissingOrEmpty && journal::is_journal(path) {
        let _ = std::fs::remove_file(path);
        return Err(StoreError::Corrupt(format!(
            "no store at {shown}, but a journal is beside it ({}): the store was deleted or \
             moved, and its journal may hold decisions it had not checkpointed. Put the store \
             file back; or, to start a new ledger here knowingly, move the journal aside (or \
             start serve with --init-store, which replaces it)",
            journal::path_of(path).display()
        )));
    }
    let fresh = created || len == 0;
    let missing = !fresh && !journal::path_of(path).exists();
    // redb panics on some damaged files (an index out of range, an
    // `unreachable!`) rather than returning an error: caught here, so that a
    // file damaged where the opening reads it is refused as corrupt (exit 2)
    // rather than crashing the process.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        database(file, path, options, missing)
    }));
    let read = read.unwrap_or_else(|panic| {
        let why = (panic.downcast_ref::<String>().map(String::as_str))
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(StoreError::Corrupt(format!(
            "{shown} is damaged: redb failed reading it ({why}); restore it from a backup"
        )))
    });
    let opened = read.and_then(|(db, fence, meta)| {
        // A journal left by a store that was deleted is not this one's; one
        // found missing was not needed, or its loss accepted (see `database`).
        let journal = open_journal(path, options, &fence, meta.id, fresh || missing)?;
        Ok(Opened {
            db,
            fence,
            journal,
            meta,
        })
    });
    // A file made here and left empty would be refused at the next start.
    if created && opened.is_err() {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(journal::path_of(path));
    }
    opened
}

/// Opens the journal of the store at `path` (see [`journal::open_file`]),
/// behind the store's fence.
fn open_journal(
    path: &Path,
    options: &OpenOptions,
    fence: &Arc<AtomicBool>,
    id: u64,
    fresh: bool,
) -> Result<Box<dyn StorageBackend>, StoreError> {
    let storage = journal::open_file(path, options.storage.as_deref(), id, fresh)?;
    Ok(Box::new(Fenced {
        storage,
        fence: fence.clone(),
    }))
}

/// Opens the database in `file`; `journal_missing`: its journal is not there,
/// which it refuses unless the store does not need it or the loss is accepted.
fn database(
    file: std::fs::File,
    path: &Path,
    options: &OpenOptions,
    journal_missing: bool,
) -> Result<(Database, Arc<AtomicBool>, Meta), StoreError> {
    let shown = path.display().to_string();
    let what = format!("opening {shown}");
    let storage: Box<dyn StorageBackend> =
        Box::new(FileBackend::new(file).map_err(|e| unavailable(&what, e))?);
    let storage = match &options.storage {
        Some(wrap) => wrap(path, storage),
        None => storage,
    };
    let fence = Arc::new(AtomicBool::new(false));
    let fenced = Fenced {
        storage,
        fence: fence.clone(),
    };
    // redb caches up to 1 GiB of the file by default, so a gateway's memory
    // would grow with its database. A bounded cache keeps it flat: the hot
    // part of a ledger (account records, this cycle's counters) is small.
    // Whether redb had to recover the file (it was not closed cleanly) tells
    // whether a file of an earlier release, which kept no mark, needs its journal.
    let recovered = Arc::new(AtomicBool::new(false));
    let db = match Database::builder()
        .set_cache_size(options.cache_bytes)
        .set_repair_callback({
            let recovered = recovered.clone();
            move |_| recovered.store(true, Ordering::Relaxed)
        })
        .create_with_backend(fenced)
    {
        Ok(db) => db,
        Err(DatabaseError::DatabaseAlreadyOpen) => {
            return Err(StoreError::Locked { path: shown });
        }
        // redb's answer to bytes that do not start with its magic number.
        Err(DatabaseError::Storage(StorageError::Io(e)))
            if e.kind() == io::ErrorKind::InvalidData =>
        {
            return Err(StoreError::Corrupt(format!(
                "{shown} is not a creditgate store: {e}"
            )));
        }
        Err(e) => return Err(e).ctx(&what),
    };
    // Creating every table up front lets read transactions open them without
    // handling "table does not exist" on a fresh file. Durable (redb's default):
    // the boot number must never be handed out twice.
    let txn = db.begin_write().ctx(&what)?;
    txn.open_table(RECORDS).ctx(&what)?;
    txn.open_table(COUNTERS).ctx(&what)?;
    migrate_once_markers(&txn).ctx(&what)?;
    txn.delete_table(MEMBERSHIPS).ctx(&what)?;
    txn.open_table(GROUP_MEMBERS).ctx(&what)?;
    txn.open_table(MEMBER_GROUPS).ctx(&what)?;
    txn.open_table(SCOPE_MEMBERS).ctx(&what)?;
    migrate_group_counts(&txn).ctx(&what)?;
    migrate_alert_log(&txn).ctx(&what)?;
    let secret = secret_of(&txn)?;
    let meta = {
        let mut meta = txn.open_table(META).ctx(&what)?;
        let get = |key| -> Result<Option<u64>, StoreError> {
            Ok(meta.get(key).ctx(&what)?.map(|v| v.value()))
        };
        let known = get(ID)?;
        let applied = get(APPLIED)?.unwrap_or(0);
        let needed = match (get(CLOSED)?, known) {
            (Some(1), _) | (None, None) => None,
            (Some(_), _) => Some(
                "the store was not closed cleanly (a crash, a kill, a copy of its file taken while it was open)",
            ),
            (None, Some(_)) if recovered.load(Ordering::Relaxed) => Some(
                "the store, written by an earlier release, was not closed cleanly (redb had to recover it)",
            ),
            (None, Some(_)) => None,
        };
        let lost = needed.filter(|_| journal_missing);
        if let Some(why) = lost
            && !options.accept_journal_loss
        {
            // The transaction aborts: the file stays as it was.
            return Err(StoreError::JournalMissing {
                path: shown,
                journal: journal::path_of(path).display().to_string(),
                why: why.to_owned(),
                records: options.checkpoint_records,
            });
        }
        // A store that lost its journal starts a new lineage: the old journal,
        // if it turns up, is another store's, never replayed over what follows.
        let id = match known {
            Some(id) if lost.is_none() => id,
            _ => journal::new_id(),
        };
        let boot = get(BOOT)?.unwrap_or(0).saturating_add(1);
        meta.insert(ID, id).ctx(&what)?;
        meta.insert(BOOT, boot).ctx(&what)?;
        // Not closed cleanly until the close says so.
        meta.insert(CLOSED, 0).ctx(&what)?;
        Meta {
            id,
            secret,
            boot,
            applied,
            lost,
        }
    };
    txn.commit().ctx(&what)?;
    if let Some(why) = meta.lost {
        tracing::warn!(
            store = %shown,
            journal = %journal::path_of(path).display(),
            applied = meta.applied,
            "the store's journal is missing and {why}: opened as of its last checkpoint \
             (journal record {}), as asked (accept journal loss); what the journal held \
             after it is lost",
            meta.applied
        );
    }
    Ok((db, fence, meta))
}

/// The secret `txn`'s file holds, made and written (durable with `txn`) if it
/// holds none yet.
fn secret_of(txn: &WriteTransaction) -> Result<[u8; SECRET_LEN], StoreError> {
    let what = "the store's secret";
    let mut secrets = txn.open_table(SECRETS).ctx(what)?;
    if let Some(stored) = secrets.get(SECRET).ctx(what)? {
        return <[u8; SECRET_LEN]>::try_from(stored.value()).map_err(|_| {
            corrupt(
                what,
                format!(
                    "it holds {} bytes where a secret has {SECRET_LEN}",
                    stored.value().len()
                ),
            )
        });
    }
    let secret = super::new_secret()?;
    secrets.insert(SECRET, secret.as_slice()).ctx(what)?;
    Ok(secret)
}

/// Makes everything applied so far durable in redb (one durable commit), then
/// starts the journal again from its head. Called with the writer lock held.
fn checkpoint(open: &Open) -> Result<(), StoreError> {
    let what = "checkpoint";
    let mut txn = open.db.begin_write().ctx(what)?;
    txn.set_durability(Durability::Immediate).ctx(what)?;
    txn.commit().ctx("checkpoint: durable commit")?;
    open.journal
        .restart()
        .map_err(|e| unavailable("checkpoint: restarting the journal", e))
}

/// Records in `txn` that the database holds the effects of journal record `seq`.
fn applied_through(txn: &WriteTransaction, seq: u64) -> Result<(), StoreError> {
    let what = "recording the journal position";
    txn.open_table(META)
        .ctx(what)?
        .insert(APPLIED, seq)
        .ctx(what)?;
    Ok(())
}

/// Journal records replayed per redb transaction.
const REPLAY_BATCH: u64 = 4096;

thread_local! {
    /// Set while this thread replays the journal: [`RedbStore::write`] then runs
    /// each primitive in [`RedbStore::replaying`]'s transaction.
    static REPLAYING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Clears [`REPLAYING`] however the replay of a record ends.
struct Replaying;

impl Replaying {
    fn start() -> Self {
        REPLAYING.set(true);
        Replaying
    }
}

impl Drop for Replaying {
    fn drop(&mut self) {
        REPLAYING.set(false);
    }
}

thread_local! {
    /// The address of the store whose batch ([`Store::batch`]) this thread is
    /// running, or 0: that store's primitives called on this thread then run in
    /// the batch's transaction.
    static BATCHING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Clears [`BATCHING`] however the batch's closure ends; if by a panic, drops
/// the batch too (its transaction aborts), which would otherwise hold redb's
/// writer for good.
struct Batching<'a>(&'a RedbStore);

impl<'a> Batching<'a> {
    fn start(store: &'a RedbStore) -> Self {
        BATCHING.set(store.address());
        Batching(store)
    }
}

impl Drop for Batching<'_> {
    fn drop(&mut self) {
        BATCHING.set(0);
        if std::thread::panicking() {
            drop(self.0.batch_slot().take());
        }
    }
}

/// Write primitives applied in one redb transaction, which commits, and whose
/// journal records are appended, when the batch ends (see [`Store::batch`]).
struct Batch {
    txn: TxnCell,
    /// The database, for read transactions the batch's thread begins meanwhile
    /// without taking the handle's lock again (which it holds, shared, for the
    /// whole batch: a second shared lock behind a waiting exclusive one would
    /// never be granted).
    db: Arc<Database>,
    /// The journal payloads of the primitives that changed anything, one after
    /// the other, and where each ends.
    payloads: Vec<u8>,
    ends: Vec<usize>,
    /// Set once a primitive failed after it may have applied part of its
    /// effects: the batch applies nothing more and is dropped whole.
    failed: Option<String>,
}

/// A [`Store`] in a redb database file.
pub struct RedbStore {
    /// Every call holds it shared for as long as it uses the database (an
    /// uncontended read lock: a few nanoseconds; the gateway bench
    /// `decide/email/wasm/redb` measured 63.0 µs per decision without it, 64.2
    /// with it, within its noise); a failed commit takes it exclusively to close
    /// the handle, and so does the reopen.
    handle: RwLock<Handle>,
    path: PathBuf,
    options: OpenOptions,
    /// Failed commits so far (see [`Store::losses`]).
    losses: AtomicU64,
    /// Held by the one call that is reopening the file.
    reopening: Mutex<()>,
    /// Held from a primitive's transaction to its journal record, so that the
    /// records are in the order of the commits (redb has one writer anyway).
    writer: Mutex<()>,
    group: GroupCommit,
    /// The transaction journal records are replayed in, while one is.
    replaying: Mutex<Option<TxnCell>>,
    /// The batch under way, if any; only its thread uses it meanwhile.
    batch: Mutex<Option<Batch>>,
    /// What the opening accepted losing (see [`OpenOptions::accept_journal_loss`]).
    journal_loss: Option<JournalLoss>,
    /// Read (or made) by the first opening; the file's, at every later one.
    secret: Mutex<[u8; SECRET_LEN]>,
}

impl RedbStore {
    /// Opens the database at `path`, creating the file if it does not exist (an
    /// existing empty file is refused: see [`Create::IfMissing`]), and replays
    /// its journal.
    ///
    /// Fails at once with [`StoreError::Locked`] if another handle (in this process
    /// or another) has the file open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, OpenOptions::default())
    }

    /// Opens the database at `path` as `options` say.
    pub fn open_with(path: &Path, options: OpenOptions) -> Result<Self, StoreError> {
        let mut store = Self {
            handle: RwLock::new(Handle::Failed(Failed {
                why: "not opened yet".into(),
                reopen: None,
                retry_at: std::time::Instant::now(),
                journal_ends: (0, 0),
            })),
            path: path.to_owned(),
            options,
            losses: AtomicU64::new(0),
            reopening: Mutex::new(()),
            writer: Mutex::new(()),
            group: GroupCommit::default(),
            replaying: Mutex::new(None),
            batch: Mutex::new(None),
            journal_loss: None,
            secret: Mutex::new([0; SECRET_LEN]),
        };
        let (open, meta, damage) = store.open_and_replay(&store.options, None)?;
        *store.handle_mut() = Handle::Open(open);
        *store
            .secret
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = meta.secret;
        let lost = match (meta.lost, damage) {
            (Some(why), _) => Some((why.to_owned(), meta.applied)),
            (None, Some(damage)) => Some((
                format!(
                    "it was damaged at byte {} (records {} to {} were synced and are lost)",
                    damage.offset,
                    damage.after + 1,
                    damage.synced
                ),
                damage.after,
            )),
            (None, None) => None,
        };
        store.journal_loss = lost.map(|(why, applied)| JournalLoss {
            journal: journal::path_of(path),
            why,
            applied,
        });
        Ok(store)
    }

    /// The journal loss this opening accepted, if it accepted one (see
    /// [`OpenOptions::accept_journal_loss`]).
    pub fn journal_loss(&self) -> Option<&JournalLoss> {
        self.journal_loss.as_ref()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the files and replays the journal; after a failure, `ends` are the
    /// failed journal's (see [`Failed::journal_ends`]).
    fn open_and_replay(
        &self,
        options: &OpenOptions,
        ends: Option<(u64, u64)>,
    ) -> Result<(Open, Meta, Option<journal::Damage>), StoreError> {
        let Opened {
            db,
            fence,
            journal: file,
            meta,
        } = open_database(&self.path, options)?;
        let at = journal::path_of(&self.path);
        let shown = at.display().to_string();
        if let Some((durable, written)) = ends {
            journal::clear(&*file, durable, written)
                .map_err(|e| unavailable(&format!("clearing the journal {shown}"), e))?;
        }
        let from = ReplayFrom {
            id: meta.id,
            applied: meta.applied,
            boot: meta.boot,
            limit: ends.map(|(durable, _)| durable),
            accept_loss: options.accept_journal_loss && ends.is_none(),
        };
        let replayed = self.replay(&db, &*file, &shown, &from)?;
        let journal = Journal::new(file, meta.boot, replayed.last + 1)
            .map_err(|e| unavailable(&format!("opening the journal {shown}"), e))?;
        if replayed.applied > 0 {
            // Records appended before the alert log had tables of its own may
            // have written its old scopes again: move them as at opening (made
            // durable by the checkpoint below).
            let what = "moving the alert log out of its old scopes";
            let mut txn = db.begin_write().ctx(what)?;
            txn.set_durability(Durability::None).ctx(what)?;
            migrate_alert_log(&txn).ctx(what)?;
            txn.commit().ctx(what)?;
        }
        let identity =
            Identity::of(&self.path).map_err(|e| unavailable(&format!("opening {shown}"), e))?;
        let open = Open {
            db: Arc::new(db),
            journal,
            fence,
            identity,
        };
        if replayed.applied > 0 {
            // The journal starts again empty, so that the next opening replays
            // nothing of it.
            checkpoint(&open)?;
            tracing::info!(
                store = %self.path.display(),
                records = replayed.applied,
                "replayed the journal"
            );
        }
        if let Some(damage) = replayed.abandoned {
            // What came before the damage is durable in redb now (or was
            // already): the records after it are given up for good, and the
            // journal's synced marks with them, so that no later opening
            // refuses the store for them again.
            let file = open.journal.file();
            (file.len())
                .and_then(|len| journal::clear(file, journal::HEADER_LEN, len))
                .map_err(|e| unavailable(&format!("clearing the journal {shown}"), e))?;
            tracing::warn!(
                store = %self.path.display(),
                journal = %shown,
                "the journal was damaged at byte {} after record {} (records up to {} were \
                 synced): opened with the records before the damage, as asked (accept journal \
                 loss); the records after it are lost",
                damage.offset, damage.after, damage.synced
            );
        }
        Ok((open, meta, replayed.abandoned))
    }

    /// Replays the records of the journal in `file` that `db` does not hold, by
    /// calling the primitives they record, in transactions of [`REPLAY_BATCH`].
    fn replay(
        &self,
        db: &Database,
        file: &dyn StorageBackend,
        shown: &str,
        from: &ReplayFrom,
    ) -> Result<journal::Replayed, StoreError> {
        let what = "replaying the journal";
        let mut in_batch = 0;
        let commit = |seq| -> Result<(), StoreError> {
            let txn = self.replaying().take();
            if let Some(txn) = txn.map(TxnCell::into_owner) {
                applied_through(&txn, seq)?;
                txn.commit().ctx(what)?;
            }
            Ok(())
        };
        let replayed = journal::replay(file, shown, from, &mut |seq: u64, payload: &[u8]| {
            {
                let mut slot = self.replaying();
                if slot.is_none() {
                    let mut txn = db.begin_write().ctx(what)?;
                    txn.set_durability(Durability::None).ctx(what)?;
                    *slot = Some(TxnCell::open(txn));
                }
            }
            let op = Op::decode(payload)
                .map_err(|e| corrupt(what, format!("{shown}, record {seq}: {e}")))?;
            let replaying = Replaying::start();
            op.apply(self).map_err(|e| {
                corrupt(
                    what,
                    format!("{shown}, record {seq} does not apply as it did: {e}"),
                )
            })?;
            drop(replaying);
            in_batch += 1;
            if in_batch == REPLAY_BATCH {
                in_batch = 0;
                commit(seq)?;
            }
            Ok(())
        });
        match replayed {
            Ok(replayed) => {
                commit(replayed.last)?;
                Ok(replayed)
            }
            Err(e) => {
                self.replaying().take();
                Err(e)
            }
        }
    }

    fn replaying(&self) -> MutexGuard<'_, Option<TxnCell>> {
        self.replaying
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Verifies every page checksum of the file and repairs the allocator state.
    /// `Ok(true)`: the file is sound; `Ok(false)`: it was damaged and repaired.
    /// Everything applied is made durable first (a checkpoint).
    pub fn check_integrity(&mut self) -> Result<bool, StoreError> {
        let what = "checking integrity";
        let handle = self
            .handle
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let sound = match handle {
            Handle::Open(open) => {
                checkpoint(open)?;
                // No batch can be under way (`&mut self`), so no one shares it.
                Arc::get_mut(&mut open.db)
                    .ok_or_else(|| unavailable(what, "the database is in use"))?
                    .check_integrity()
                    .ctx(what)?
            }
            Handle::Failed(failed) => return Err(refusal(&self.path, failed, what)),
        };
        self.group.all_durable();
        Ok(sound)
    }

    // The handle is only ever replaced whole, so a poisoned lock still holds one.
    fn handle(&self) -> RwLockReadGuard<'_, Handle> {
        self.handle.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn handle_mut(&self) -> RwLockWriteGuard<'_, Handle> {
        self.handle.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the open database, reopening it first if a commit failed and
    /// the time to try again has come; refuses while it stays closed.
    fn with_db<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Open) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        {
            let handle = self.handle();
            if let Handle::Open(open) = &*handle {
                return f(open);
            }
        }
        self.reopen(what)?;
        match &*self.handle() {
            Handle::Open(open) => f(open),
            Handle::Failed(failed) => Err(refusal(&self.path, failed, what)),
        }
    }

    /// Runs `write` in a durable transaction of its own, outside the journal:
    /// for what is rare (the secret, the host's records), durable on return.
    fn write_aside(
        &self,
        what: &str,
        write: impl FnOnce(&WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.with_db(what, |open| {
            let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let mut txn = open.db.begin_write().ctx(what)?;
            txn.set_durability(Durability::Immediate).ctx(what)?;
            write(&txn)?;
            txn.commit().ctx(what)
        })
    }

    /// A read transaction on the open database.
    fn begin_read(&self, what: &str) -> Result<ReadTransaction, StoreError> {
        if self.batching() {
            let db = self.batch_slot().as_ref().map(|batch| batch.db.clone());
            if let Some(db) = db {
                return db.begin_read().ctx(what);
            }
        }
        self.with_db(what, |open| open.db.begin_read().ctx(what))
    }

    /// What tells this store apart in [`BATCHING`].
    fn address(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Whether this thread is running a batch of this store.
    fn batching(&self) -> bool {
        BATCHING.get() == self.address()
    }

    // Only the batch's thread uses it while it runs, so a poisoned lock can only
    // hold a batch that thread left, which it then drops.
    fn batch_slot(&self) -> MutexGuard<'_, Option<Batch>> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the handle after a failed commit: what it applied and had not made
    /// durable is dropped with it, and nothing reaches the files any more.
    /// `generation` is [`RedbStore::losses`] as read while the handle that failed
    /// was in use: a later handle is not closed for an earlier one's failure.
    fn fail(&self, why: &StoreError, generation: u64) {
        let mut handle = self.handle_mut();
        let Handle::Open(open) = &*handle else {
            return;
        };
        if self.losses.load(Ordering::Acquire) != generation {
            return;
        }
        // Under the exclusive lock: no call is using the database, and every later
        // one finds it closed.
        open.fence.store(true, Ordering::Release);
        let journal_ends = open.journal.ends();
        self.losses.fetch_add(1, Ordering::AcqRel);
        let why = match why {
            StoreError::Unavailable(m) | StoreError::Corrupt(m) => m.clone(),
            other => other.to_string(),
        };
        let failed = Handle::Failed(Failed {
            why: why.clone(),
            reopen: None,
            retry_at: std::time::Instant::now() + self.options.retry_after,
            journal_ends,
        });
        // Closing writes nothing (fenced), and releases the files for the reopen.
        drop(std::mem::replace(&mut *handle, failed));
        drop(handle);
        tracing::error!(
            store = %self.path.display(),
            "a commit failed ({why}): the store is closed, what it had not made durable \
             is dropped, and every decision is refused until it reopens"
        );
    }

    /// Reopens the files after a failed commit, when the time to try again has
    /// come: redb rolls the database back to its last durable commit, and the
    /// journal's synced records are replayed on it.
    fn reopen(&self, what: &str) -> Result<(), StoreError> {
        // One reopen at a time; the others are refused meanwhile.
        let _reopening = match self.reopening.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return self.refused(what),
        };
        let ends = match &*self.handle() {
            Handle::Open(_) => return Ok(()),
            Handle::Failed(failed) if std::time::Instant::now() < failed.retry_at => {
                return Err(refusal(&self.path, failed, what));
            }
            Handle::Failed(failed) => failed.journal_ends,
        };
        // Never a fresh ledger in place of one that went missing meanwhile, nor a
        // journal lost meanwhile accepted: the first opening's choice was not that.
        let options = OpenOptions {
            create: Create::Never,
            accept_journal_loss: false,
            ..self.options.clone()
        };
        let opened = self.open_and_replay(&options, Some(ends));
        let mut handle = self.handle_mut();
        match (opened, &mut *handle) {
            (Ok((open, ..)), _) => {
                *handle = Handle::Open(open);
                drop(handle);
                tracing::warn!(
                    store = %self.path.display(),
                    "the store reopened after a failed commit, as of its last durable commit"
                );
                Ok(())
            }
            (Err(e), Handle::Failed(failed)) => {
                failed.reopen = Some(e.to_string());
                failed.retry_at = std::time::Instant::now() + self.options.retry_after;
                Err(refusal(&self.path, failed, what))
            }
            (Err(e), Handle::Open(_)) => Err(e),
        }
    }

    fn refused<T>(&self, what: &str) -> Result<T, StoreError> {
        match &*self.handle() {
            Handle::Failed(failed) => Err(refusal(&self.path, failed, what)),
            Handle::Open(_) => Err(unavailable(what, "the store is reopening")),
        }
    }

    /// Runs `f` in one write transaction committed without durability, and
    /// journals `op` for it. `f` answers the result and whether it changed
    /// anything: a transaction that changed nothing is aborted and not journaled,
    /// so that `persist` has nothing to sync for it. While the journal is
    /// replayed, `f` runs in the replay's transaction instead.
    fn write<'a, T>(
        &self,
        what: &str,
        op: impl FnOnce() -> Op<'a>,
        f: impl FnOnce(&WriteTables<'_>) -> Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        if REPLAYING.get() {
            let slot = self.replaying();
            let txn = slot
                .as_ref()
                .ok_or_else(|| unavailable(what, "no replay transaction"))?;
            return match txn.with_dependent(|_, tables| f(tables))? {
                (answer, true) => Ok(answer),
                (_, false) => Err(corrupt(what, "the record changed nothing")),
            };
        }
        if self.batching() {
            let mut slot = self.batch_slot();
            let batch = slot
                .as_mut()
                .ok_or_else(|| unavailable(what, "no batch transaction"))?;
            if let Some(why) = &batch.failed {
                return Err(unavailable(
                    what,
                    format!("refused: an earlier write of the same batch failed ({why})"),
                ));
            }
            return match batch.txn.with_dependent(|_, tables| f(tables)) {
                Ok((answer, changed)) => {
                    if changed {
                        op().encode(&mut batch.payloads);
                        batch.ends.push(batch.payloads.len());
                    }
                    Ok(answer)
                }
                Err(e) => {
                    // `f` may have applied part of its effects, which only
                    // dropping the whole transaction takes back.
                    batch.failed = Some(e.to_string());
                    Err(e)
                }
            };
        }
        let mut primitive = self.group.begin();
        // redb's own steps failing (not `f`'s answer) is the file failing: what
        // the handle holds can no longer be made durable.
        let mut broken = None;
        let answer = self.with_db(what, |open| {
            let mut fails = |_: &StoreError| broken = Some(self.losses.load(Ordering::Acquire));
            let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let txn = self.begin_write(open, what, &mut fails)?;
            // The tables close before the commit.
            let answer = f(&WriteTables::new(&txn));
            match answer {
                Ok((answer, true)) => {
                    let seq = open.journal.next_seq();
                    applied_through(&txn, seq).inspect_err(&mut fails)?;
                    txn.commit().ctx(what).inspect_err(&mut fails)?;
                    open.journal.append(seq, |out| op().encode(out));
                    primitive.committed = true;
                    Ok(answer)
                }
                Ok((answer, false)) => {
                    txn.abort().ctx(what).inspect_err(&mut fails)?;
                    Ok(answer)
                }
                Err(e) => {
                    // Already failing: the abort's own error would add nothing useful.
                    let _ = txn.abort();
                    Err(e)
                }
            }
        });
        if let (Some(generation), Err(e)) = (broken, &answer) {
            self.fail(e, generation);
        }
        answer
    }

    /// [`Store::batch`]: `f` runs with this thread's write primitives applied in
    /// one transaction, committed (without durability) when `f` returns, their
    /// journal records appended at once after it. Until then nothing of it is
    /// visible to other threads nor in the journal, so a `persist` meanwhile can
    /// never sync part of it, and dropping it takes back all of it: which is
    /// what `f` answering [`BatchEnd::Abandon`] does.
    fn run_batch(&self, f: &mut dyn FnMut() -> BatchEnd) -> Result<BatchEnd, StoreError> {
        if REPLAYING.get() || BATCHING.get() != 0 {
            f();
            return Ok(BatchEnd::Keep);
        }
        let what = "batch";
        let mut f = Some(f);
        let mut broken = None;
        let ran = self.with_db(what, |open| {
            let generation = self.losses.load(Ordering::Acquire);
            let mut fails = |_: &StoreError| broken = Some(generation);
            let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let txn = self.begin_write(open, what, &mut fails)?;
            *self.batch_slot() = Some(Batch {
                txn: TxnCell::open(txn),
                db: open.db.clone(),
                payloads: Vec::new(),
                ends: Vec::new(),
                failed: None,
            });
            let batching = Batching::start(self);
            let end = f.take().map_or(BatchEnd::Keep, |f| f());
            drop(batching);
            let batch = self
                .batch_slot()
                .take()
                .ok_or_else(|| unavailable(what, "the batch's transaction went missing"))?;
            let txn = batch.txn.into_owner();
            if end == BatchEnd::Abandon && batch.failed.is_none() {
                // Nothing of it was visible nor journaled: dropping it is all.
                txn.abort().ctx(what).inspect_err(&mut fails)?;
                return Ok(BatchEnd::Abandon);
            }
            if let Some(why) = batch.failed {
                // Nothing of it was visible nor journaled: dropping it is all.
                let _ = txn.abort();
                return Err(unavailable(
                    what,
                    format!("a write failed, and the batch it was part of was dropped: {why}"),
                ));
            }
            let Some(count) = batch.ends.len().checked_sub(1) else {
                txn.abort().ctx(what).inspect_err(&mut fails)?;
                return Ok(BatchEnd::Keep);
            };
            let mut primitive = self.group.begin();
            let first = open.journal.next_seq();
            applied_through(&txn, first + count as u64).inspect_err(&mut fails)?;
            txn.commit().ctx(what).inspect_err(&mut fails)?;
            open.journal.append_all(first, &batch.payloads, &batch.ends);
            primitive.committed = true;
            Ok(BatchEnd::Keep)
        });
        if let (Some(generation), Err(e)) = (broken, &ran) {
            self.fail(e, generation);
        }
        match (ran, f) {
            // The store could not begin a batch (closed, and not reopened): the
            // primitives run one by one, and each is refused or applied alone.
            (Err(_), Some(f)) => {
                f();
                Ok(BatchEnd::Keep)
            }
            (ran, _) => ran,
        }
    }

    /// `record_insert` (`exists` false) or `record_update` (true): writes
    /// `value` if the record's presence is `exists`; true if written.
    fn put_record(
        &self,
        scope: &str,
        key: &str,
        value: &str,
        exists: bool,
    ) -> Result<bool, StoreError> {
        let (what, op) = if exists {
            ("record-update", Op::RecordUpdate { scope, key, value })
        } else {
            ("record-insert", Op::RecordInsert { scope, key, value })
        };
        self.write(
            what,
            || op,
            |txn| {
                let mut records = txn.records()?;
                if records.get((scope, key)).ctx(what)?.is_some() != exists {
                    return Ok((false, false));
                }
                records.insert((scope, key), value).ctx(what)?;
                Ok((true, true))
            },
        )
    }

    /// A write transaction without durability, after a checkpoint if one is
    /// due. Called with the writer lock held; `fails` hears of redb's own steps
    /// failing.
    fn begin_write(
        &self,
        open: &Open,
        what: &str,
        fails: &mut impl FnMut(&StoreError),
    ) -> Result<WriteTransaction, StoreError> {
        let options = &self.options;
        if open
            .journal
            .checkpoint_due(options.checkpoint_records, options.checkpoint_bytes)
        {
            checkpoint(open).inspect_err(&mut *fails)?;
        }
        let mut txn = open.db.begin_write().ctx(what).inspect_err(&mut *fails)?;
        txn.set_durability(Durability::None).ctx(what)?;
        Ok(txn)
    }

    /// Writes and syncs the journal's records appended so far.
    fn flush(&self) -> Result<(), StoreError> {
        let mut broken = None;
        let flushed = self.with_db("persist", |open| {
            broken = Some(self.losses.load(Ordering::Acquire));
            open.identity.check(&self.path)?;
            open.journal.flush().map_err(|e| {
                let at = journal::path_of(&self.path);
                unavailable(&format!("persist: writing the journal {}", at.display()), e)
            })
        });
        if let (Some(generation), Err(e)) = (broken, &flushed) {
            self.fail(e, generation);
        }
        flushed
    }
}

/// The clean close: one durable commit that makes everything applied durable in
/// redb and marks the store closed cleanly, so that its next opening can do
/// without the journal. Not after a failed commit (the handle is closed
/// already), nor while a panic unwinds or left a transaction open: the next
/// opening then needs the journal, as after a crash.
impl Drop for RedbStore {
    fn drop(&mut self) {
        let batch = self
            .batch
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let replaying = self
            .replaying
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if batch.is_some() || replaying.is_some() || std::thread::panicking() {
            return;
        }
        let handle = self
            .handle
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let Handle::Open(open) = handle else {
            return;
        };
        let what = "closing the store";
        let closed = open.db.begin_write().ctx(what).and_then(|mut txn| {
            txn.set_durability(Durability::Immediate).ctx(what)?;
            txn.open_table(META)
                .ctx(what)?
                .insert(CLOSED, 1)
                .ctx(what)?;
            txn.commit().ctx(what)
        });
        if let Err(e) = closed {
            tracing::warn!(
                store = %self.path.display(),
                "the store could not be closed cleanly ({e}): its next opening needs its journal"
            );
        }
    }
}

/// The error of every call while the handle is closed.
fn refusal(path: &Path, failed: &Failed, what: &str) -> StoreError {
    let reopen = match &failed.reopen {
        Some(e) => format!("; reopening failed: {e}"),
        None => String::new(),
    };
    StoreError::Unavailable(format!(
        "{what}: refused: a commit to {} failed ({}), and what it had not made durable \
         was dropped; the store reopens as of its last durable commit once the file can \
         be written{reopen}",
        path.display(),
        failed.why,
    ))
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
fn guard_holds<R: Deref<Target: ReadableTable<Pair, &'static str>>>(
    guard: Option<Guard<'_>>,
    scope: &str,
    records: impl FnOnce() -> Result<R, StoreError>,
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

/// Runs `$body` with `$txn` bound to a transaction to read in: the batch's,
/// when this thread runs a batch of `$store` (so that a decision sees what the
/// decisions before it in the batch applied), else a new read transaction.
macro_rules! reading {
    ($store:ident, $what:expr, |$txn:ident| $body:expr) => {
        if $store.batching() {
            let slot = $store.batch_slot();
            let batch = slot
                .as_ref()
                .ok_or_else(|| unavailable($what, "no batch transaction"))?;
            batch.txn.with_dependent(|_, $txn| $body)
        } else {
            let txn = $store.begin_read($what)?;
            let $txn = &ReadTables(&txn);
            $body
        }
    };
}

// The mechanism only: `Store` checks the arguments first (see `Backend`).
impl super::Backend for RedbStore {
    fn alert_sequence(&self, owner: &str) -> Result<u64, StoreError> {
        let what = "alert-sequence";
        self.write(
            what,
            || Op::AlertSequence { owner },
            |txn| {
                let mut sequences = txn.alert_sequences()?;
                let last = sequences.get(owner).ctx(what)?.map_or(0, |v| v.value());
                let next = last.checked_add(1).ok_or_else(|| {
                    StoreError::InvalidArgument(format!("the alert log of {owner:?} is full"))
                })?;
                sequences.insert(owner, next).ctx(what)?;
                Ok((next, true))
            },
        )
    }

    fn alert_insert(&self, owner: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        let what = "alert-insert";
        self.write(
            what,
            || Op::AlertInsert { owner, key, value },
            |txn| {
                let mut log = txn.alert_log()?;
                if log.get((owner, key)).ctx(what)?.is_some() {
                    return Ok((false, false));
                }
                log.insert((owner, key), value).ctx(what)?;
                Ok((true, true))
            },
        )
    }

    fn visit_alerts(&self, list: Alerts<'_>, visit: VisitAlert<'_>) -> Result<(), StoreError> {
        let Alerts { owner, after } = list;
        let what = "visit-alerts";
        let txn = self.begin_read(what)?;
        let log = txn.open_table(ALERT_LOG).ctx(what)?;
        let start = match (owner, after) {
            (_, Some(after)) => Bound::Excluded(after),
            (Some(owner), None) => Bound::Included((owner, "")),
            (None, None) => Bound::Unbounded,
        };
        for entry in log
            .range::<(&str, &str)>((start, Bound::Unbounded))
            .ctx(what)?
        {
            let (key, value) = entry.ctx(what)?;
            let (o, k) = key.value();
            if let Some(want) = owner
                && o != want
            {
                if o > want {
                    break;
                }
                continue;
            }
            if !visit(o, k, value.value()) {
                break;
            }
        }
        Ok(())
    }

    fn record_get(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        let what = "record-get";
        reading!(self, what, |txn| {
            let records = txn.records()?;
            let value = records.get((scope, key)).ctx(what)?;
            Ok(value.map(|v| v.value().to_owned()))
        })
    }

    fn record_insert(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        self.put_record(scope, key, value, false)
    }

    fn record_update(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        self.put_record(scope, key, value, true)
    }

    fn record_update_guarded(&self, update: GuardedUpdate<'_>) -> Result<bool, StoreError> {
        let what = "record-update-guarded";
        let GuardedUpdate {
            scope,
            guard,
            key,
            value,
        } = update;
        self.write(
            what,
            || Op::RecordUpdateGuarded(update),
            |txn| {
                let mut records = txn.records()?;
                let holds = match records.get((scope, guard.key)).ctx(what)? {
                    Some(record) => guard.holds(Some(record.value())),
                    None => false,
                };
                if !holds || records.get((scope, key)).ctx(what)?.is_none() {
                    return Ok((false, false));
                }
                records.insert((scope, key), value).ctx(what)?;
                Ok((true, true))
            },
        )
    }

    fn counter_get(&self, scope: &str, name: &str, now: Instant) -> Result<u64, StoreError> {
        let what = "counter-get";
        reading!(self, what, |txn| counter_of(
            &*txn.counters()?,
            scope,
            name,
            now
        ))
    }

    fn counter_add_guarded(&self, add: CounterAdd<'_>) -> Result<GuardedAdd, StoreError> {
        let what = "counter-add";
        let CounterAdd { scope, name, .. } = add;
        let op = || Op::CounterAdd(add);
        self.write(what, op, |txn| {
            if !guard_holds(add.guard, scope, || txn.records())? {
                return Ok((GuardedAdd::Stale, false));
            }
            let members = members_of(&*txn.scope_members()?, scope)?;
            let tally = |counter| Tally { counter, members };
            let mut counters = txn.counters()?;
            let current = counter_of(&*counters, scope, name, add.now)?;
            let mut markers = txn.once()?;
            if let Some(once) = add.once {
                let seen = markers
                    .get((scope, once.key))
                    .ctx(what)?
                    .map(|g| g.value())
                    .filter(|&(exp, _)| !expired(exp, add.now));
                if let Some((_, fingerprint)) = seen {
                    let answer = if is_retry(fingerprint, once) {
                        GuardedAdd::Repeated(tally(current))
                    } else {
                        GuardedAdd::Conflict(tally(current))
                    };
                    return Ok((answer, false));
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
                let marker = (once.expires_at, Some(once.fingerprint));
                markers.insert((scope, once.key), marker).ctx(what)?;
            }
            Ok((GuardedAdd::Applied(tally(new)), true))
        })
    }

    fn counter_tally(&self, tally: CounterTally<'_>) -> Result<Option<Tally>, StoreError> {
        let what = "counter-tally";
        let CounterTally {
            scope,
            guard,
            name,
            now,
        } = tally;
        reading!(self, what, |txn| {
            if !guard_holds(guard, scope, || txn.records())? {
                return Ok(None);
            }
            Ok(Some(Tally {
                counter: counter_of(&*txn.counters()?, scope, name, now)?,
                members: members_of(&*txn.scope_members()?, scope)?,
            }))
        })
    }

    fn member_add(&self, add: MemberAdd<'_>) -> Result<MemberAdded, StoreError> {
        let op = || Op::MemberAdd(add);
        self.write("member-add", op, |txn| add_member(txn, add))
            .flatten()
    }

    fn member_add_guarded(
        &self,
        add: MemberAddGuarded<'_>,
    ) -> Result<Option<GuardedMember>, StoreError> {
        let what = "member-add";
        let scope = add.scope;
        let op = || Op::MemberAddGuarded(add);
        self.write(what, op, |txn| {
            if !guard_holds(add.guard, scope, || txn.records())? {
                return Ok((Ok(None), false));
            }
            let (added, changed) = add_member(txn, add.member_add())?;
            let added = match added {
                Ok(added) => added,
                Err(refusal) => return Ok((Err(refusal), false)),
            };
            let counters = txn.counters()?;
            let tally = Tally {
                counter: counter_of(&*counters, scope, add.name, add.now)?,
                members: added.members,
            };
            let outcome = added.outcome;
            Ok((Ok(Some(GuardedMember { outcome, tally })), changed))
        })
        .flatten()
    }

    fn member_add_many(&self, add: MemberAddMany<'_>) -> Result<MembersAdded, StoreError> {
        let what = "member-add-many";
        let (scope, group, members) = (add.scope, add.group, add.members);
        let op = || {
            Op::MemberAddMany(Many {
                scope,
                group,
                limit: add.limit,
                members: members.iter().map(String::as_str).collect(),
            })
        };
        self.write(what, op, |txn| {
            let mut counts = txn.scope_members()?;
            let before = members_of(&*counts, scope)?;
            if members.is_empty() {
                let none = MembersAdded {
                    outcomes: Vec::new(),
                    members: before,
                };
                return Ok((Ok(none), false));
            }
            let mut group_members = txn.group_members()?;
            let mut member_groups = txn.member_groups()?;

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
                    Some(n) if n >= MAX_GROUPS_PER_MEMBER => {
                        return Ok((Err(too_many_groups(scope, member)), false));
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
                    Found::New if add.limit.is_some_and(|l| count >= l) => {
                        MemberAddOutcome::Refused
                    }
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
            // The kept counts: the group grows by every join; a member new to
            // the scope is the group's alone, and one that was another group's
            // alone is that group's no more.
            let mut sizes = txn.group_counts()?;
            let (mut grown, mut alone) = (0i64, 0i64);
            let mut shared = BTreeMap::<String, i64>::new();
            let mut others: Option<Vec<String>> = None;
            for (member, groups) in joins() {
                grown += 1;
                match groups {
                    1 => alone += 1,
                    2 => {
                        if others.is_none() {
                            others = Some(groups_of(&*sizes, scope, group)?);
                        }
                        let candidates = others.as_deref().unwrap_or_default();
                        let only = only_group(&*group_members, scope, member, candidates)?;
                        *shared.entry(only.to_owned()).or_default() -= 1;
                    }
                    _ => {}
                }
            }
            if grown > 0 {
                bump(&mut sizes, scope, group, grown, alone)?;
            }
            for (other, lost) in &shared {
                bump(&mut sizes, scope, other, 0, *lost)?;
            }
            if count != before {
                counts.insert(scope, count).ctx(what)?;
            }
            let answer = MembersAdded {
                outcomes,
                members: count,
            };
            Ok((Ok(answer), changed))
        })
        .flatten()
    }

    fn member_remove(&self, at: Membership<'_>) -> Result<MemberRemoved, StoreError> {
        let what = "member-remove";
        let (scope, group, member) = (at.scope, at.group, at.member);
        let op = || Op::MemberRemove(at);
        self.write(what, op, |txn| {
            let mut m = Membered::open(txn, (scope, group, member), what)?;
            let members = m.members;
            if !m.held {
                let outcome = MemberRemoveOutcome::NotInGroup;
                return Ok((MemberRemoved { outcome, members }, false));
            }
            m.group_members.remove((scope, group, member)).ctx(what)?;
            let mut member_groups = txn.member_groups()?;
            let left = leave(&mut member_groups, scope, member)?;
            let released = left == 0;
            let mut sizes = txn.group_counts()?;
            bump(&mut sizes, scope, group, -1, -i64::from(released))?;
            if left == 1 {
                let others = groups_of(&*sizes, scope, group)?;
                let only = only_group(&*m.group_members, scope, member, &others)?;
                bump(&mut sizes, scope, only, 0, 1)?;
            }
            let (outcome, members) = if released {
                (
                    MemberRemoveOutcome::Released,
                    release(&mut m.counts, scope, 1)?,
                )
            } else {
                (MemberRemoveOutcome::LeftGroup, members)
            };
            Ok((MemberRemoved { outcome, members }, true))
        })
    }

    fn group_clear(&self, scope: &str, group: &str) -> Result<GroupCleared, StoreError> {
        let what = "group-clear";
        let op = || Op::GroupClear { scope, group };
        self.write(what, op, |txn| {
            let mut group_members = txn.group_members()?;
            let end = next(group);
            let cleared = group_members
                .range((scope, group, "")..(scope, end.as_str(), ""))
                .ctx(what)?
                .map(|entry| entry.map(|(k, _)| k.value().2.to_owned()))
                .collect::<Result<Vec<String>, _>>()
                .ctx(what)?;
            let mut counts = txn.scope_members()?;
            if cleared.is_empty() {
                let members = members_of(&*counts, scope)?;
                let none = GroupCleared {
                    removed: 0,
                    released: 0,
                    members,
                };
                return Ok((none, false));
            }
            let mut member_groups = txn.member_groups()?;
            let mut sizes = txn.group_counts()?;
            let others = groups_of(&*sizes, scope, group)?;
            let mut released = 0u64;
            let mut alone = BTreeMap::<String, i64>::new();
            for member in &cleared {
                let member = member.as_str();
                group_members.remove((scope, group, member)).ctx(what)?;
                match leave(&mut member_groups, scope, member)? {
                    0 => released += 1,
                    1 => {
                        let only = only_group(&*group_members, scope, member, &others)?;
                        *alone.entry(only.to_owned()).or_default() += 1;
                    }
                    _ => {}
                }
            }
            sizes.remove((scope, group)).ctx(what)?;
            for (other, gained) in &alone {
                bump(&mut sizes, scope, other, 0, *gained)?;
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
        let what = "member-count";
        reading!(self, what, |txn| members_of(&*txn.scope_members()?, scope))
    }

    fn group_counts(&self, scope: &str) -> Result<Vec<GroupCount>, StoreError> {
        let what = "group-counts";
        let txn = self.begin_read(what)?;
        let sizes = txn.open_table(GROUP_COUNTS).ctx(what)?;
        let end = next(scope);
        let mut counts = Vec::new();
        for entry in sizes.range((scope, "")..(end.as_str(), "")).ctx(what)? {
            let (key, value) = entry.ctx(what)?;
            let (members, exclusive) = value.value();
            counts.push(GroupCount {
                group: key.value().1.to_owned(),
                members,
                exclusive,
            });
        }
        Ok(counts)
    }

    fn membership(&self, at: Membership<'_>) -> Result<Option<u64>, StoreError> {
        let what = "membership";
        let txn = self.begin_read(what)?;
        let group_members = txn.open_table(GROUP_MEMBERS).ctx(what)?;
        let key = (at.scope, at.group, at.member);
        if group_members.get(key).ctx(what)?.is_none() {
            return Ok(None);
        }
        let member_groups = txn.open_table(MEMBER_GROUPS).ctx(what)?;
        let groups = member_groups.get((at.scope, at.member)).ctx(what)?;
        Ok(Some(groups.map_or(0, |g| g.value())))
    }

    fn persist(&self) -> Result<(), StoreError> {
        self.group.persist(|| self.flush())
    }

    fn secret(&self) -> Result<[u8; SECRET_LEN], StoreError> {
        Ok(*self.secret.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn set_secret(&self, secret: [u8; SECRET_LEN]) -> Result<(), StoreError> {
        let what = "setting the store's secret";
        self.write_aside(what, |txn| {
            txn.open_table(SECRETS)
                .ctx(what)?
                .insert(SECRET, secret.as_slice())
                .ctx(what)?;
            Ok(())
        })?;
        *self.secret.lock().unwrap_or_else(PoisonError::into_inner) = secret;
        Ok(())
    }

    fn host_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        let what = "reading a host record";
        let txn = self.begin_read(what)?;
        let table = match txn.open_table(HOST_RECORDS) {
            Ok(table) => table,
            // A store no release with host records has written to.
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e).ctx(what),
        };
        Ok(table.get(key).ctx(what)?.map(|v| v.value().to_owned()))
    }

    fn set_host_record(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let what = "setting a host record";
        self.write_aside(what, |txn| {
            txn.open_table(HOST_RECORDS)
                .ctx(what)?
                .insert(key, value)
                .ctx(what)?;
            Ok(())
        })
    }

    fn batch(&self, f: &mut dyn FnMut() -> BatchEnd) -> Result<BatchEnd, StoreError> {
        self.run_batch(f)
    }

    fn batches(&self) -> bool {
        true
    }

    fn losses(&self) -> u64 {
        self.losses.load(Ordering::Acquire)
    }

    fn health(&self) -> Result<(), StoreError> {
        if let Handle::Open(_) = &*self.handle() {
            return Ok(());
        }
        self.reopen("health check")
    }

    fn scopes(&self) -> Result<Vec<String>, StoreError> {
        // One listing, unbounded: each table is read a scope at a time either way.
        super::Backend::scopes_after(self, None, usize::MAX)
    }

    fn scopes_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        let what = "listing scopes";
        let txn = self.begin_read(what)?;
        let from = after.map_or_else(String::new, next);
        // The first `limit` of each table's scopes hold the first `limit` of all.
        let mut out = BTreeSet::new();
        scopes_from(&txn.open_table(RECORDS).ctx(what)?, &from, limit, &mut out)?;
        scopes_from(&txn.open_table(COUNTERS).ctx(what)?, &from, limit, &mut out)?;
        // Once markers are only written along with their counter, so their scopes
        // are already listed. One entry per scope holding members:
        let counts = txn.open_table(SCOPE_MEMBERS).ctx(what)?;
        for entry in counts.range(from.as_str()..).ctx(what)?.take(limit) {
            let (scope, _) = entry.ctx(what)?;
            out.insert(scope.value().to_owned());
        }
        Ok(out.into_iter().take(limit).collect())
    }

    fn visit_members_after(&self, list: Members<'_>, visit: Visit<'_>) -> Result<(), StoreError> {
        let (scope, group, after) = (list.scope, list.group, list.after);
        let what = "visiting members";
        let txn = self.begin_read(what)?;
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

    fn visit_records(&self, list: Records<'_>, visit: Visit<'_>) -> Result<(), StoreError> {
        let Records { scope, after } = list;
        let what = "visiting records";
        let txn = self.begin_read(what)?;
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
        let what = "exporting a scope";
        let txn = self.begin_read(what)?;
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
            let (key, marker) = entry.ctx(what)?;
            let (expires_at, fingerprint) = marker.value();
            dump.once
                .push((key.value().1.to_owned(), expires_at, fingerprint));
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
        let what = "importing a scope";
        let op = || Op::ImportScope {
            scope,
            dump: std::borrow::Cow::Borrowed(dump),
        };
        self.write(what, op, |txn| {
            let end = next(scope);
            let pairs = (scope, "")..(end.as_str(), "");
            let triples = (scope, "", "")..(end.as_str(), "", "");

            // Everything the scope held goes first, derived counts included (the
            // dump itself was checked for repeats by `Store::import_scope`).
            let mut records = txn.records()?;
            let mut counters = txn.counters()?;
            let mut markers = txn.once()?;
            let mut group_members = txn.group_members()?;
            let mut member_groups = txn.member_groups()?;
            let mut counts = txn.scope_members()?;
            let mut sizes = txn.group_counts()?;
            let mut changed = false;
            let mut any = || {
                changed = true;
                false
            };
            records.retain_in(pairs.clone(), |_, _| any()).ctx(what)?;
            counters.retain_in(pairs.clone(), |_, _| any()).ctx(what)?;
            markers.retain_in(pairs.clone(), |_, _| any()).ctx(what)?;
            group_members.retain_in(triples, |_, _| any()).ctx(what)?;
            member_groups
                .retain_in(pairs.clone(), |_, _| any())
                .ctx(what)?;
            sizes.retain_in(pairs, |_, _| any()).ctx(what)?;
            changed |= counts.remove(scope).ctx(what)?.is_some();

            for (key, value) in &dump.records {
                records
                    .insert((scope, key.as_str()), value.as_str())
                    .ctx(what)?;
            }
            for (name, value, expires_at) in &dump.counters {
                let stored = (*value, expires_at.unwrap_or(NEVER));
                counters.insert((scope, name.as_str()), stored).ctx(what)?;
            }
            for (key, expires_at, fingerprint) in &dump.once {
                markers
                    .insert((scope, key.as_str()), (*expires_at, *fingerprint))
                    .ctx(what)?;
            }
            let mut groups_of = BTreeMap::<&str, u64>::new();
            for (group, member) in &dump.memberships {
                let (group, member) = (group.as_str(), member.as_str());
                group_members.insert((scope, group, member), ()).ctx(what)?;
                *groups_of.entry(member).or_default() += 1;
            }
            for (&member, &groups) in &groups_of {
                member_groups.insert((scope, member), groups).ctx(what)?;
            }
            if !groups_of.is_empty() {
                counts.insert(scope, groups_of.len() as u64).ctx(what)?;
            }
            for count in super::group_counts_of(&dump.memberships) {
                let kept = (count.members, count.exclusive);
                sizes
                    .insert((scope, count.group.as_str()), kept)
                    .ctx(what)?;
            }
            let wrote = !(dump.records.is_empty()
                && dump.counters.is_empty()
                && dump.once.is_empty()
                && dump.memberships.is_empty());
            Ok(((), changed || wrote))
        })
    }
}

/// What `member_add` and `member_remove` look up first about `(scope, group,
/// member)`: the two tables they write in any case, the scope's member count,
/// and whether the member is in the group.
struct Membered<'a, 't> {
    group_members: RefMut<'a, Table<'t, Triple, ()>>,
    counts: RefMut<'a, Table<'t, &'static str, u64>>,
    members: u64,
    held: bool,
}

impl<'a, 't> Membered<'a, 't> {
    fn open(
        txn: &'a WriteTables<'t>,
        at: (&str, &str, &str),
        what: &str,
    ) -> Result<Self, StoreError> {
        let group_members = txn.group_members()?;
        let counts = txn.scope_members()?;
        let members = members_of(&*counts, at.0)?;
        let held = group_members.get(at).ctx(what)?.is_some();
        Ok(Membered {
            group_members,
            counts,
            members,
            held,
        })
    }
}

/// `member_add` in `txn`; answers whether it changed anything. A join past
/// [`MAX_GROUPS_PER_MEMBER`] is answered (refused, nothing changed), not failed:
/// a failure would take down the other writes of a batch with it.
fn add_member(
    txn: &WriteTables<'_>,
    add: MemberAdd<'_>,
) -> Result<(Result<MemberAdded, StoreError>, bool), StoreError> {
    let what = "member-add";
    let (scope, group, member, limit) = (add.scope, add.group, add.member, add.limit);
    let mut m = Membered::open(txn, (scope, group, member), what)?;
    let members = m.members;
    if m.held {
        let outcome = MemberAddOutcome::AlreadyInGroup;
        return Ok((Ok(MemberAdded { outcome, members }), false));
    }
    let mut member_groups = txn.member_groups()?;
    let groups = member_groups
        .get((scope, member))
        .ctx(what)?
        .map(|g| g.value());
    let mut sizes = txn.group_counts()?;
    let (outcome, groups, members) = match groups {
        Some(n) if n >= MAX_GROUPS_PER_MEMBER => {
            return Ok((Err(too_many_groups(scope, member)), false));
        }
        Some(n) => {
            if n == 1 {
                let others = groups_of(&*sizes, scope, group)?;
                let only = only_group(&*m.group_members, scope, member, &others)?;
                bump(&mut sizes, scope, only, 0, -1)?;
            }
            let n = n
                .checked_add(1)
                .ok_or_else(|| corrupt(what, "group count overflows"))?;
            (MemberAddOutcome::Joined, n, members)
        }
        None if limit.is_some_and(|l| members >= l) => {
            let outcome = MemberAddOutcome::Refused;
            return Ok((Ok(MemberAdded { outcome, members }), false));
        }
        None => {
            let grown = members
                .checked_add(1)
                .ok_or_else(|| corrupt(what, "member count overflows"))?;
            m.counts.insert(scope, grown).ctx(what)?;
            (MemberAddOutcome::Inserted, 1, grown)
        }
    };
    member_groups.insert((scope, member), groups).ctx(what)?;
    m.group_members
        .insert((scope, group, member), ())
        .ctx(what)?;
    bump(&mut sizes, scope, group, 1, i64::from(groups == 1))?;
    Ok((Ok(MemberAdded { outcome, members }), true))
}

/// Creates the `once_markers` table, and moves into it the markers of a file
/// written before they carried a fingerprint, without one.
fn migrate_once_markers(txn: &WriteTransaction) -> Result<(), TableError> {
    let mut markers = txn.open_table(ONCE)?;
    {
        let legacy = txn.open_table(LEGACY_ONCE)?;
        for entry in legacy.iter()? {
            let (key, expires_at) = entry?;
            markers.insert(key.value(), (expires_at.value(), None))?;
        }
    }
    txn.delete_table(LEGACY_ONCE)?;
    Ok(())
}

/// Creates the alert-log tables, and moves into them the log a file kept in
/// `"\u{1}alerts/<owner>"` scopes before it had tables of its own.
fn migrate_alert_log(txn: &WriteTransaction) -> Result<(), TableError> {
    let mut log = txn.open_table(ALERT_LOG)?;
    let mut sequences = txn.open_table(ALERT_SEQUENCES)?;
    let mut records = txn.open_table(RECORDS)?;
    take_legacy_alerts(&mut records, |owner, name, value| {
        log.insert((owner, name), value.value())?;
        Ok(())
    })?;
    let mut counters = txn.open_table(COUNTERS)?;
    take_legacy_alerts(&mut counters, |owner, name, value| {
        if name == "sequence" {
            let last = sequences.get(owner)?.map_or(0, |v| v.value());
            sequences.insert(owner, last.max(value.value().0))?;
        }
        Ok(())
    })
}

/// Removes from `table` the entries of the old `"\u{1}alerts/<owner>"` scopes,
/// after `take(owner, name, value)` has taken each.
fn take_legacy_alerts<V: redb::Value + 'static>(
    table: &mut redb::Table<'_, Pair, V>,
    mut take: impl FnMut(&str, &str, redb::AccessGuard<'_, V>) -> Result<(), TableError>,
) -> Result<(), TableError> {
    let mut taken: Vec<(String, String)> = Vec::new();
    for entry in table.range((super::LEGACY_ALERT_PREFIX, "")..)? {
        let (key, value) = entry?;
        let (scope, name) = key.value();
        let Some(owner) = super::legacy_alert_owner(scope) else {
            break;
        };
        take(owner, name, value)?;
        taken.push((scope.to_owned(), name.to_owned()));
    }
    for (scope, name) in &taken {
        table.remove((scope.as_str(), name.as_str()))?;
    }
    Ok(())
}

/// Takes `member` out of one of its groups; answers how many still hold it (0:
/// that was its last one).
fn leave(
    member_groups: &mut redb::Table<'_, Pair, u64>,
    scope: &str,
    member: &str,
) -> Result<u64, StoreError> {
    let what = "updating a member's groups";
    let groups = member_groups
        .get((scope, member))
        .ctx(what)?
        .map(|g| g.value());
    match groups {
        Some(n) if n > 1 => {
            member_groups.insert((scope, member), n - 1).ctx(what)?;
            Ok(n - 1)
        }
        Some(_) => {
            member_groups.remove((scope, member)).ctx(what)?;
            Ok(0)
        }
        None => Err(corrupt(
            what,
            format!("member {member:?} of scope {scope:?} is in a group but has no group count"),
        )),
    }
}

/// Adds `members` and `exclusive` (either may be negative) to the kept counts of
/// `group`; the entry goes when the group empties.
fn bump(
    sizes: &mut redb::Table<'_, Pair, (u64, u64)>,
    scope: &str,
    group: &str,
    members: i64,
    exclusive: i64,
) -> Result<(), StoreError> {
    let what = "updating a group's counts";
    let (m, e) = sizes
        .get((scope, group))
        .ctx(what)?
        .map_or((0, 0), |v| v.value());
    let shifted = |n: u64, by: i64| n.checked_add_signed(by);
    let (Some(m), Some(e)) = (shifted(m, members), shifted(e, exclusive)) else {
        return Err(corrupt(
            what,
            format!("group {group:?} of scope {scope:?} counts {m} members, {e} exclusive"),
        ));
    };
    if m == 0 {
        sizes.remove((scope, group)).ctx(what)?;
    } else {
        sizes.insert((scope, group), (m, e)).ctx(what)?;
    }
    Ok(())
}

/// The groups of `scope` with members, `except` left out.
fn groups_of(
    sizes: &impl ReadableTable<Pair, (u64, u64)>,
    scope: &str,
    except: &str,
) -> Result<Vec<String>, StoreError> {
    let what = "listing a scope's groups";
    let end = next(scope);
    let mut groups = Vec::new();
    for entry in sizes.range((scope, "")..(end.as_str(), "")).ctx(what)? {
        let (key, _) = entry.ctx(what)?;
        let group = key.value().1;
        if group != except {
            groups.push(group.to_owned());
        }
    }
    Ok(groups)
}

/// Which of `candidates` holds `member`, known to be in exactly one of them.
///
/// Probes each group: the store keeps no index from a member to its groups
/// (one more B-tree entry per membership, written by every import), and only a
/// member joining its second group or left with one needs this, at one lookup
/// per group of its scope past the first.
fn only_group<'a>(
    group_members: &impl ReadableTable<Triple, ()>,
    scope: &str,
    member: &str,
    candidates: &'a [String],
) -> Result<&'a str, StoreError> {
    let what = "finding a member's group";
    // The member is in exactly one other group: with one candidate (an account
    // with two campaigns, the common case), it is that one, without a lookup.
    if let [only] = candidates {
        return Ok(only);
    }
    for group in candidates {
        if group_members
            .get((scope, group.as_str(), member))
            .ctx(what)?
            .is_some()
        {
            return Ok(group);
        }
    }
    Err(corrupt(
        what,
        format!("member {member:?} of scope {scope:?} counts a group that holds it nowhere"),
    ))
}

/// Creates `group_counts`, computed from the memberships, in a file written
/// before it existed.
fn migrate_group_counts(txn: &WriteTransaction) -> Result<(), TableError> {
    if txn.list_tables()?.any(|t| t.name() == GROUP_COUNTS.name()) {
        return Ok(());
    }
    let mut sizes = txn.open_table(GROUP_COUNTS)?;
    let group_members = txn.open_table(GROUP_MEMBERS)?;
    let member_groups = txn.open_table(MEMBER_GROUPS)?;
    let mut current: Option<(String, String, u64, u64)> = None;
    for entry in group_members.iter()? {
        let (key, _) = entry?;
        let (scope, group, member) = key.value();
        let alone = member_groups.get((scope, member))?.map(|g| g.value()) == Some(1);
        match &mut current {
            Some((s, g, m, e)) if s.as_str() == scope && g.as_str() == group => {
                *m += 1;
                *e += u64::from(alone);
            }
            _ => {
                if let Some((s, g, m, e)) = current.take() {
                    sizes.insert((s.as_str(), g.as_str()), (m, e))?;
                }
                current = Some((scope.to_owned(), group.to_owned(), 1, u64::from(alone)));
            }
        }
    }
    if let Some((s, g, m, e)) = current {
        sizes.insert((s.as_str(), g.as_str()), (m, e))?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::CounterAdded;

    /// A file written by a version that kept `memberships` opens with that table
    /// dropped and its members intact (they live in `group_members`).
    #[test]
    fn a_file_with_the_old_memberships_table_opens_without_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("old.redb");
        {
            let store = RedbStore::open(&path).expect("opens");
            store.member_add(ANN_IN_Q1).expect("adds");
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
        let txn = store.begin_read("test").expect("reads");
        assert!(matches!(
            txn.open_table(MEMBERSHIPS),
            Err(TableError::TableDoesNotExist(_))
        ));
        assert_eq!(store.member_count("acme").expect("counts"), 1);
        let removed = store.member_remove(at("q1", "ann@x.io")).expect("removes");
        assert_eq!(removed.outcome, MemberRemoveOutcome::Released);
    }

    fn add(store: &RedbStore, amount: u64, limit: u64) -> Result<CounterAdded, StoreError> {
        let add = CounterAdd {
            scope: "acme",
            guard: None,
            name: "email",
            amount,
            limit: Some(limit),
            once: None,
            expires_at: None,
            now: 0,
        };
        store.counter_add(add)
    }

    const ANN_IN_Q1: MemberAdd<'static> = MemberAdd {
        scope: "acme",
        group: "q1",
        member: "ann@x.io",
        limit: None,
    };

    /// `member` of `group` of scope `acme`.
    fn at<'a>(group: &'a str, member: &'a str) -> Membership<'a> {
        Membership {
            scope: "acme",
            group,
            member,
        }
    }

    fn add_member(store: &RedbStore, group: &str, member: &str) {
        let add = MemberAdd {
            group,
            member,
            ..ANN_IN_Q1
        };
        store.member_add(add).expect("adds");
    }

    /// A batch's writes are seen by its own thread at once (a decision sees what
    /// the ones before it in the batch applied), by no other thread until the
    /// batch ends, and are durable after one `persist`, through the journal.
    #[test]
    fn a_batch_is_seen_by_its_thread_at_once_and_by_others_when_it_ends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("batch.redb");
        let store = std::sync::Arc::new(RedbStore::open(&path).expect("opens"));
        assert!(store.batches());
        let mut seen = Vec::new();
        store
            .batch(&mut || {
                store.record_insert("acme", "plan", "pro").expect("inserts");
                assert!(matches!(add(&store, 2, 5), Ok(CounterAdded::Applied(2))));
                assert!(matches!(add(&store, 2, 5), Ok(CounterAdded::Applied(4))));
                assert!(matches!(add(&store, 2, 5), Ok(CounterAdded::Refused(4))));
                seen.push(store.record_get("acme", "plan").expect("reads"));
                seen.push(
                    store
                        .counter_get("acme", "email", 0)
                        .ok()
                        .map(|v| v.to_string()),
                );
                let other = store.clone();
                let outside = std::thread::spawn(move || {
                    (
                        other.record_get("acme", "plan").expect("reads"),
                        other.counter_get("acme", "email", 0).expect("reads"),
                    )
                })
                .join()
                .expect("joins");
                assert_eq!(
                    outside,
                    (None, 0),
                    "another thread sees nothing of the batch yet"
                );
                BatchEnd::Keep
            })
            .expect("the batch commits");
        // The third addition was refused by the limit, as one call after another.
        assert_eq!(seen, [Some("pro".to_string()), Some("4".to_string())]);
        store.persist().expect("durable");
        drop(store);
        let store = RedbStore::open(&path).expect("opens again, replaying the journal");
        assert_eq!(
            store.record_get("acme", "plan").expect("reads").as_deref(),
            Some("pro")
        );
        assert_eq!(store.counter_get("acme", "email", 0).expect("reads"), 4);
    }

    /// A new store in `dir` with acme's `email` counter at 1, durably.
    fn charged_once(dir: &Path) -> (RedbStore, PathBuf) {
        let path = dir.join("batch.redb");
        let store = RedbStore::open(&path).expect("opens");
        add(&store, 1, 10).expect("adds");
        store.persist().expect("durable");
        (store, path)
    }

    /// A write that fails inside a batch drops the whole batch: nothing of it is
    /// visible or journaled, the writes after it are refused, and the store
    /// goes on as before it.
    #[test]
    fn a_failed_write_drops_its_whole_batch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, path) = charged_once(dir.path());
        let sequences = "\u{1}full";
        let mut answers = Vec::new();
        let batched = store.batch(&mut || {
            answers.push(add(&store, 2, 10).is_ok());
            // The alert log's sequence refuses to wrap: a failure inside `f`.
            let txn = store.batch_slot();
            let batch = txn.as_ref().expect("a batch is under way");
            batch.txn.with_dependent(|_, tables| {
                tables
                    .alert_sequences()
                    .expect("opens")
                    .insert(sequences, u64::MAX)
                    .expect("inserts");
            });
            drop(txn);
            answers.push(store.alert_sequence(sequences).is_ok());
            answers.push(add(&store, 3, 10).is_ok());
            BatchEnd::Keep
        });
        assert!(batched.is_err(), "the batch is dropped");
        assert_eq!(answers, [true, false, false]);
        assert_eq!(store.counter_get("acme", "email", 0).expect("reads"), 1);
        assert!(matches!(add(&store, 4, 10), Ok(CounterAdded::Applied(_))));
        store.persist().expect("durable");
        drop(store);
        let store = RedbStore::open(&path).expect("opens again");
        assert_eq!(store.counter_get("acme", "email", 0).expect("reads"), 5);
        assert_eq!(store.alert_sequence(sequences).expect("takes one"), 1);
    }

    /// A batch its closure abandons leaves nothing: not in the store, not in
    /// the journal; the store goes on as before it.
    #[test]
    fn an_abandoned_batch_leaves_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, path) = charged_once(dir.path());
        let batched = store.batch(&mut || {
            assert!(matches!(add(&store, 2, 10), Ok(CounterAdded::Applied(3))));
            store.record_insert("acme", "plan", "pro").expect("inserts");
            BatchEnd::Abandon
        });
        assert_eq!(batched.ok(), Some(BatchEnd::Abandon));
        assert_eq!(store.counter_get("acme", "email", 0).expect("reads"), 1);
        assert_eq!(store.record_get("acme", "plan").expect("reads"), None);
        assert!(matches!(add(&store, 4, 10), Ok(CounterAdded::Applied(5))));
        store.persist().expect("durable");
        drop(store);
        let store = RedbStore::open(&path).expect("opens again, replaying the journal");
        assert_eq!(store.counter_get("acme", "email", 0).expect("reads"), 5);
        assert_eq!(store.record_get("acme", "plan").expect("reads"), None);
    }

    /// The kept counts need no journal record of their own: replaying the
    /// primitives' records at opening keeps them as the primitives did.
    #[test]
    fn group_counts_come_back_with_the_journal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j.redb");
        let expected = {
            let store = RedbStore::open(&path).expect("opens");
            crate::store::add_members(&store, "acme", "q1", &["a", "b", "c"]);
            crate::store::add_members(&store, "acme", "q2", &["b", "d"]);
            add_member(&store, "q3", "c");
            store.member_remove(at("q1", "b")).expect("removes");
            store.group_clear("acme", "q3").expect("clears");
            store.persist().expect("durable");
            store.group_counts("acme").expect("reads")
        };
        let store = RedbStore::open(&path).expect("reopens, replaying the journal");
        assert_eq!(store.group_counts("acme").expect("reads"), expected);
        let dump = store.export_scope("acme").expect("exports");
        assert_eq!(expected, crate::store::group_counts_of(&dump.memberships));
    }

    /// Issue 17.1's migration: a file written before `group_counts` existed opens
    /// with the counts computed from its memberships, and they are kept from
    /// then on.
    #[test]
    fn a_file_without_group_counts_opens_with_them_computed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("old.redb");
        let memberships = [
            ("q1", "a"),
            ("q1", "b"),
            ("q2", "b"),
            ("q2", "c"),
            ("q3", "d"),
        ];
        {
            let mut store = RedbStore::open(&path).expect("opens");
            for (g, m) in memberships {
                add_member(&store, g, m);
            }
            // Everything in redb itself, nothing left for the journal to replay.
            assert!(store.check_integrity().expect("checkpoints"));
            drop(store);
            let db = Database::create(&path).expect("reopens");
            let txn = db.begin_write().expect("writes");
            assert!(txn.delete_table(GROUP_COUNTS).expect("deletes"));
            txn.commit().expect("commits");
        }
        let store = RedbStore::open(&path).expect("opens the old file");
        let counts = |store: &RedbStore| -> Vec<(String, u64, u64)> {
            (store.group_counts("acme").expect("reads").into_iter())
                .map(|c| (c.group, c.members, c.exclusive))
                .collect()
        };
        let expected = |list: &[(&str, u64, u64)]| -> Vec<(String, u64, u64)> {
            list.iter().map(|&(g, m, e)| (g.to_owned(), m, e)).collect()
        };
        assert_eq!(
            counts(&store),
            expected(&[("q1", 2, 1), ("q2", 2, 1), ("q3", 1, 1)])
        );
        store.member_remove(at("q2", "b")).expect("removes");
        assert_eq!(
            counts(&store),
            expected(&[("q1", 2, 2), ("q2", 1, 1), ("q3", 1, 1)])
        );
    }
}
