//! Durable state the host keeps for the guest: the mechanisms behind the WIT
//! `state` interface.
//!
//! Callers use [`Store`]; every method is one atomic step on every backend (one
//! write transaction in redb, one server-side script in Redis), so no two workers
//! or gateway hosts sharing a store can both take the last unit of a counter or of
//! a scope's member limit. Nothing here knows what a scope, a counter or a member
//! *means*: that is the guest's business.
//!
//! A backend (`memory`, `redb_store`, `redis/`) implements only its mechanism,
//! [`Backend`]; the arguments and dumps are checked once, here, by the one
//! [`Store`] implementation every backend gets. Wrappers ([`Preview`] and the
//! import's dry run, both a [`DryRun`]) implement [`Store`] over another store.
//! [`model`] holds the contract's plain model, which the backends are tested
//! against.
//!
//! Durability is split from atomicity so that many decisions can share one disk
//! sync: each primitive is applied (and visible to every reader) when it returns,
//! and [`Store::persist`] makes everything applied so far durable. The host calls
//! `persist` before it answers any request whose decision changed state.

mod group_commit;
mod journal;
mod memory;
pub mod model;
mod preview;
mod redb_store;
mod redis;

pub use journal::path_of as journal_path;
pub use memory::MemoryStore;
pub use preview::{DryRun, Predict, Preview, Removals};
pub use redb_store::{Create, JournalLoss, OpenOptions, RedbStore, WrapStorage};
pub use redis::{RedisConfig, RedisDurability, RedisStore, RedisTarget, is_redis_url, parse_url};

use crate::bindings::{
    CounterAdded, GroupCleared, GuardedAdd, GuardedMember, MemberAdded, MemberRemoved,
    MembersAdded, Once, StateError, Tally,
};

/// The embedded store's default file: `$CREDITGATE_STORE`, else
/// `$XDG_DATA_HOME/creditgate/creditgate.redb`, else
/// `~/.local/share/creditgate/creditgate.redb`. `None` when none of those is set.
pub fn default_path() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("CREDITGATE_STORE")
        .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("creditgate").join("creditgate.redb")))
        .or_else(|| env("HOME").map(|d| d.join(".local/share/creditgate/creditgate.redb")))
}

/// Whether a store spec (`--store`, `store =` in serve's config) names a file, as
/// opposed to `memory` or a Redis URL: only a file's path is taken relative to the
/// config file, and only a file's folder is created.
pub fn names_a_file(spec: &std::path::Path) -> bool {
    spec.as_os_str() != "memory" && !spec.to_str().is_some_and(is_redis_url)
}

/// A point in time: nanoseconds since the Unix epoch, UTC (WIT `instant`).
pub type Instant = i64;

/// Longest scope, key, counter, group or member name a backend accepts, in bytes.
/// Longer names are refused with [`StoreError::InvalidArgument`].
pub const MAX_NAME_LEN: usize = 1024;

/// Most members one `member_add_many` call takes. A batch holds the store's single
/// writer for its whole length (every other decision waits), so it is bounded;
/// 10,000 takes tens of milliseconds on redb.
pub const MAX_BATCH: usize = 10_000;

/// Longest record value a backend accepts, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// Most groups of its scope one member may be in. Joining another group is free
/// (a contact in a second campaign costs no second lead credit), so without a
/// bound a caller could grow a scope without limit on one credit; with it, a
/// scope holds at most this many memberships per member it counts. A join past
/// it is refused with [`StoreError::InvalidArgument`], applying nothing.
pub const MAX_GROUPS_PER_MEMBER: u64 = 1_000;

/// Longest value of a host record ([`Store::set_host_record`]): room for a
/// policy file's text.
pub const MAX_HOST_RECORD_LEN: usize = 1 << 20;

/// Bytes of a store's secret ([`Store::secret`]).
pub const SECRET_LEN: usize = 32;

/// A new secret for a store: random bytes from the operating system.
pub(crate) fn new_secret() -> Result<[u8; SECRET_LEN], StoreError> {
    let mut secret = [0; SECRET_LEN];
    getrandom::fill(&mut secret).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot make the store's secret: the operating system gave no random bytes ({e})"
        ))
    })?;
    Ok(secret)
}

/// Why a store operation failed. In every case nothing was applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed to read or commit (I/O error, lost connection, timeout).
    /// The operation may succeed if retried later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes do not decode as what the store wrote.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    /// An argument is outside what the store accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Another process holds the database open (a running `creditgate serve`, say).
    #[error("the store {path} is in use by another process")]
    Locked { path: String },
    /// No store file at the path, and the caller may not create one: it only reads.
    #[error(
        "no store at {path}: the file does not exist (commands that only read do not \
         create one; check the path, or subscribe an account first)"
    )]
    NotFound { path: String },
    /// The store file is empty: a ledger lost or truncated, not a fresh one, unless
    /// the operator says so.
    #[error(
        "the store {path} is an empty file, not a ledger: restore it from a backup if it \
         was lost or truncated; to start a new, empty ledger in it, run `creditgate serve \
         --init-store` once"
    )]
    Empty { path: String },
    /// The embedded store's journal is missing, and the store was not closed
    /// cleanly: the journal may hold acknowledged decisions the store file does
    /// not. Nothing was opened; the operator puts the journal back, or accepts
    /// the loss ([`OpenOptions::accept_journal_loss`]).
    #[error(
        "the journal {journal} of the store {path} is missing, and {why}: the journal holds \
         every decision acknowledged since the store's last checkpoint (up to {records} \
         records), which the store file alone does not, so opening it would hand out their \
         credits again and charge their messages again when retried. Put the journal back \
         beside the store (restore it with the store file; mount its volume), or, to open \
         the store as of its last checkpoint and accept that those decisions are lost, run \
         `creditgate store accept-journal-loss --store {path}` once"
    )]
    JournalMissing {
        path: String,
        journal: String,
        /// Why the store may need it: how it was last closed.
        why: String,
        /// The most records a journal holds between two checkpoints.
        records: u64,
    },
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => StateError::Unavailable(m),
            StoreError::Corrupt(m) => StateError::Corrupt(m),
            StoreError::InvalidArgument(m) => StateError::InvalidArgument(m),
            StoreError::Locked { .. }
            | StoreError::NotFound { .. }
            | StoreError::Empty { .. }
            | StoreError::JournalMissing { .. } => StateError::Unavailable(e.to_string()),
        }
    }
}

// The write primitives and the reads with a guard take their arguments as one
// struct each, named after the primitive: a signature is one line in the trait,
// in each backend and in each wrapper, a call names what it passes, and the
// journal records a redb write as the very struct it was called with (see
// `journal::Op`). Every field borrows, so building one costs nothing on the hot
// path.

/// What a [`Store::batch`]'s closure asks of the writes it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// Keep them: they become visible, and durable with the next `persist`.
    Keep,
    /// Drop them all, as if the batch had never run (a decision in it failed
    /// after writing, and the others are to be decided again without it).
    Abandon,
}

/// WIT `counter-add-guarded` (and `counter-add`, without a guard): add `amount`
/// to counter `name` of `scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterAdd<'a> {
    pub scope: &'a str,
    /// The record the addition depends on; None: none.
    pub guard: Option<Guard<'a>>,
    pub name: &'a str,
    pub amount: u64,
    /// None: no bound.
    pub limit: Option<u64>,
    /// Makes the addition idempotent on a key (see WIT `once`).
    pub once: Option<OnceKey<'a>>,
    /// When the counter may be forgotten; None: never.
    pub expires_at: Option<Instant>,
    /// The instant the call is made at; expiries are judged against it.
    pub now: Instant,
}

/// WIT `counter-tally`: counter `name` of `scope` at `now` and the scope's
/// member count, while `guard` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterTally<'a> {
    pub scope: &'a str,
    pub guard: Option<Guard<'a>>,
    pub name: &'a str,
    pub now: Instant,
}

/// WIT `member-add`: `member` into `group` of `scope`, a new member of the
/// scope only while it holds fewer than `limit` (None: no bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberAdd<'a> {
    pub scope: &'a str,
    pub group: &'a str,
    pub member: &'a str,
    pub limit: Option<u64>,
}

/// WIT `record-update-guarded`: record `key` of `scope` replaced with `value`
/// only while `guard` holds (with the guard on `key`, a compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardedUpdate<'a> {
    pub scope: &'a str,
    pub guard: Guard<'a>,
    pub key: &'a str,
    pub value: &'a str,
}

/// WIT `member-add-guarded`: a [`MemberAdd`] applied only while `guard` holds,
/// answering counter `name` at `now` beside the member count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberAddGuarded<'a> {
    pub scope: &'a str,
    pub guard: Option<Guard<'a>>,
    pub group: &'a str,
    pub member: &'a str,
    pub limit: Option<u64>,
    pub name: &'a str,
    pub now: Instant,
}

impl<'a> MemberAddGuarded<'a> {
    /// The addition alone, as applied once the guard holds.
    pub fn member_add(&self) -> MemberAdd<'a> {
        MemberAdd {
            scope: self.scope,
            group: self.group,
            member: self.member,
            limit: self.limit,
        }
    }
}

/// WIT `member-add-many`: each of `members`, in order, as a [`MemberAdd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberAddMany<'a> {
    pub scope: &'a str,
    pub group: &'a str,
    pub members: &'a [String],
    pub limit: Option<u64>,
}

/// One member of one group of a scope: what `member-remove` removes and
/// [`Store::membership`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership<'a> {
    pub scope: &'a str,
    pub group: &'a str,
    pub member: &'a str,
}

/// A listing's visitor: called with each pair in order (a membership's group
/// and member, a record's key and value), it answers false to stop the listing.
/// The rules of [`Store::visit_members`] hold for it.
pub type Visit<'v> = &'v mut dyn FnMut(&str, &str) -> bool;

/// The alert log's visitor: [`Visit`] with each entry's owner, key and value.
pub type VisitAlert<'v> = &'v mut dyn FnMut(&str, &str, &str) -> bool;

/// Which memberships [`Store::visit_members_after`] visits: those of `scope`
/// (of `group` only, when given) after `after` = `(group, member)`, exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Members<'a> {
    pub scope: &'a str,
    pub group: Option<&'a str>,
    pub after: Option<(&'a str, &'a str)>,
}

/// Which records [`Store::visit_records`] visits: those of `scope` whose key
/// is after `after`, exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Records<'a> {
    pub scope: &'a str,
    pub after: Option<&'a str>,
}

/// Which entries of the alert log [`Store::visit_alerts`] visits: those of
/// `owner`'s log (of every log, when None) after `after` = `(owner, key)`,
/// exclusive. The default visits every entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Alerts<'a> {
    pub owner: Option<&'a str>,
    pub after: Option<(&'a str, &'a str)>,
}

/// WIT `once`, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnceKey<'a> {
    pub key: &'a str,
    pub fingerprint: u64,
    pub expires_at: Instant,
}

impl<'a> OnceKey<'a> {
    /// Borrows the WIT record.
    pub fn of(once: &'a Once) -> Self {
        OnceKey {
            key: &once.key,
            fingerprint: once.fingerprint,
            expires_at: once.expires_at,
        }
    }
}

/// A record a call depends on (WIT `guard`): the call does anything only while
/// record `key` of its scope holds exactly `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

impl<'a> Guard<'a> {
    /// Borrows the WIT record.
    pub fn of(guard: &'a crate::bindings::Guard) -> Self {
        Guard {
            key: &guard.key,
            value: &guard.value,
        }
    }

    /// Whether the record, as read, satisfies the guard.
    pub(crate) fn holds(self, record: Option<&str>) -> bool {
        record == Some(self.value)
    }
}

/// Atomic primitives over scopes of records, counters and grouped members.
///
/// The semantics of each method are those of the same-named function of the WIT
/// `state` interface; read `wit/policy.wit` for the contract. Implementations must
/// be safe to call from many threads at once.
pub trait Store: Send + Sync {
    fn record_get(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError>;
    fn record_insert(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError>;
    fn record_update(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError>;
    fn record_update_guarded(&self, update: GuardedUpdate<'_>) -> Result<bool, StoreError>;

    fn counter_get(&self, scope: &str, name: &str, now: Instant) -> Result<u64, StoreError>;

    /// WIT `counter-add-guarded`, and without a guard `counter-add` with the
    /// scope's member count: the one primitive behind both, so that they cannot
    /// drift apart. Without a guard the answer is never [`GuardedAdd::Stale`].
    fn counter_add_guarded(&self, add: CounterAdd<'_>) -> Result<GuardedAdd, StoreError>;

    /// WIT `counter-tally`: the counter and the member count from one snapshot, or
    /// None when `guard` does not hold.
    fn counter_tally(&self, tally: CounterTally<'_>) -> Result<Option<Tally>, StoreError>;

    /// WIT `counter-add`: [`Store::counter_add_guarded`] without a guard (a
    /// guard in `add` is not looked at).
    fn counter_add(&self, add: CounterAdd<'_>) -> Result<CounterAdded, StoreError> {
        Ok(
            match self.counter_add_guarded(CounterAdd { guard: None, ..add })? {
                GuardedAdd::Applied(t) => CounterAdded::Applied(t.counter),
                GuardedAdd::Repeated(t) => CounterAdded::Repeated(t.counter),
                GuardedAdd::Refused(t) => CounterAdded::Refused(t.counter),
                GuardedAdd::Conflict(t) => CounterAdded::Conflict(t.counter),
                GuardedAdd::Stale => {
                    return Err(StoreError::Corrupt(
                        "the store answered `stale` to a counter-add without a guard".into(),
                    ));
                }
            },
        )
    }

    fn member_add(&self, add: MemberAdd<'_>) -> Result<MemberAdded, StoreError>;
    /// WIT `member-add-guarded`: `member_add` applied only while `guard` holds,
    /// answering counter `name` at `now` and the member count; None when the
    /// guard does not hold.
    fn member_add_guarded(
        &self,
        add: MemberAddGuarded<'_>,
    ) -> Result<Option<GuardedMember>, StoreError>;
    /// Adds each of `members` in order, as many `member_add` calls would, in one
    /// atomic step (one write transaction). An empty list changes nothing.
    /// Every name is checked first: one too long refuses the whole call with
    /// [`StoreError::InvalidArgument`], and nothing is applied.
    fn member_add_many(&self, add: MemberAddMany<'_>) -> Result<MembersAdded, StoreError>;
    fn member_remove(&self, at: Membership<'_>) -> Result<MemberRemoved, StoreError>;
    fn group_clear(&self, scope: &str, group: &str) -> Result<GroupCleared, StoreError>;
    fn member_count(&self, scope: &str) -> Result<u64, StoreError>;

    /// Every group of `scope` with its size and how many of its members no other
    /// group of the scope holds (`exclusive`: the members `group_clear` would
    /// release), in group order, from one snapshot. The three backends keep both
    /// counts as members come and go, so the answer costs one read per group, not
    /// one per member; the default, for wrappers and test stores, computes them
    /// from an export of the scope.
    fn group_counts(&self, scope: &str) -> Result<Vec<GroupCount>, StoreError> {
        Ok(group_counts_of(&self.export_scope(scope)?.memberships))
    }

    /// Whether `member` is in `group` of `scope`, and if so how many groups of the
    /// scope hold it (1: this one only), from one snapshot: what `member_remove`
    /// would find, read without removing anything. The backends read two keys;
    /// the default exports the scope.
    fn membership(&self, at: Membership<'_>) -> Result<Option<u64>, StoreError> {
        let memberships = self.export_scope(at.scope)?.memberships;
        let holding = || memberships.iter().filter(|(_, m)| m == at.member);
        Ok(holding()
            .any(|(g, _)| g == at.group)
            .then(|| holding().count() as u64))
    }

    /// Makes every effect applied before this call durable; returns once it is.
    /// Concurrent callers may share one disk sync (group commit).
    ///
    /// An effect applied before a failed commit is lost, even if a later `persist`
    /// succeeds: see [`Store::losses`].
    fn persist(&self) -> Result<(), StoreError>;

    /// Runs `f`; a backend that [`Store::batches`] applies the write primitives
    /// this thread calls inside it as one atomic step, visible to other threads
    /// (and made durable by a later `persist`) only once `f` returns, while the
    /// thread's own reads inside `f` see them at once. One transaction for many
    /// decisions instead of one each. An error means the backend dropped all of
    /// it: nothing `f` applied is kept, whatever the primitives answered.
    /// Otherwise it answers what became of them: [`BatchEnd::Abandon`] when `f`
    /// asked so and the backend dropped them all, [`BatchEnd::Keep`] when they
    /// are kept. Backends that do not batch run `f` with every primitive atomic
    /// on its own, and always answer Keep: what `f` applied stays applied.
    fn batch(&self, f: &mut dyn FnMut() -> BatchEnd) -> Result<BatchEnd, StoreError> {
        f();
        Ok(BatchEnd::Keep)
    }

    /// Whether [`Store::batch`] applies a batch as one step.
    fn batches(&self) -> bool {
        false
    }

    /// Whether every write is durable when it returns, so that [`Store::persist`]
    /// has nothing to do (Redis: each script is on the server's disk, as its
    /// `appendfsync` keeps it, before it answers). False unless a backend says so.
    fn durable_on_return(&self) -> bool {
        false
    }

    /// How many times the store has lost effects it had applied and not yet made
    /// durable (a failed commit on redb drops them all: see [`RedbStore`]). A
    /// caller that reads it before applying effects and finds it changed after its
    /// `persist` must treat them as lost. 0 for backends that never drop applied
    /// effects.
    fn losses(&self) -> u64 {
        0
    }

    /// Whether the store can serve calls now; the error says why not. A backend
    /// that fails call by call and recovers by itself answers Ok (memory; Redis
    /// unless a primary may evict keys, see `redis::durability`).
    fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The store's secret (WIT `state.store-secret`): [`SECRET_LEN`] random bytes
    /// made when the store is first opened by a release that has it, then the
    /// same for every call, every gateway on the store and every later opening.
    /// A guest keys with it what a client could otherwise search offline (the
    /// fingerprints of its idempotency keys). Never logged nor shown; copied
    /// only by `store copy`, into a store that holds no account yet.
    fn secret(&self) -> Result<[u8; SECRET_LEN], StoreError>;

    /// Makes `secret` the store's secret, durably: for `store copy` into a store
    /// that holds no account yet, so that the idempotency markers it copies keep
    /// matching their retries. Markers the store held before no longer do.
    fn set_secret(&self, secret: [u8; SECRET_LEN]) -> Result<(), StoreError>;

    /// The host's own record `key`, if set: what the host keeps about the
    /// deployment (the policy a gateway decides under, say), apart from the
    /// guest's scopes, never seen by the component nor listed among scopes.
    fn host_record(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Sets the host's record `key` to `value` (at most
    /// [`MAX_HOST_RECORD_LEN`] bytes), durably before it returns. Rare: a
    /// gateway's start and reloads.
    fn set_host_record(&self, key: &str, value: &str) -> Result<(), StoreError>;

    /// Every scope that holds anything, in byte order of their names.
    fn scopes(&self) -> Result<Vec<String>, StoreError>;

    /// Calls `visit(group, member)` for each membership of `scope` (of `group` only,
    /// when given), ordered by group then member, from one consistent snapshot,
    /// without holding them all in memory. `visit` returns false to stop early.
    ///
    /// `visit` must not call back into the store: a backend may hold a lock while
    /// it runs ([`MemoryStore`] does, and would deadlock). Keep it short, too: the
    /// snapshot holds back writers ([`MemoryStore`]) or the reuse of freed pages
    /// (redb) until it returns.
    fn visit_members(
        &self,
        scope: &str,
        group: Option<&str>,
        visit: Visit<'_>,
    ) -> Result<(), StoreError> {
        self.visit_members_after(
            Members {
                scope,
                group,
                after: None,
            },
            visit,
        )
    }

    /// Up to `limit` of the scopes [`Store::scopes`] lists, those after `after`
    /// (exclusive), in byte order: one page of a listing that resumes where the
    /// last one stopped. The default lists every scope; backends that keep scopes
    /// in order read only the page.
    fn scopes_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut scopes = self.scopes()?;
        scopes.retain(|s| after.is_none_or(|a| s.as_str() > a));
        scopes.truncate(limit);
        Ok(scopes)
    }

    /// [`Store::visit_members`] from the membership after `after` = `(group,
    /// member)` (exclusive) on, so that a listing resumes where it stopped without
    /// reading what came before: the one listing of memberships a store
    /// implements.
    fn visit_members_after(&self, list: Members<'_>, visit: Visit<'_>) -> Result<(), StoreError>;

    /// Calls `visit(key, value)` for each record of `scope` whose key is after
    /// `after` (exclusive), in key order; `visit` returns false to stop early. The
    /// same rules as [`Store::visit_members`] hold for `visit`. The default exports
    /// the scope; backends that keep records in order read only what is visited.
    fn visit_records(&self, list: Records<'_>, visit: Visit<'_>) -> Result<(), StoreError> {
        visit_exported_records(self.export_scope(list.scope)?, list.after, visit);
        Ok(())
    }

    /// Everything `scope` holds, from one consistent snapshot: for copies between
    /// stores and for dry runs against a throwaway copy.
    fn export_scope(&self, scope: &str) -> Result<ScopeDump, StoreError>;

    /// Replaces everything `scope` holds with `dump`, in one atomic step; an empty
    /// dump removes the scope. The dump's entries may come in any order. Names and
    /// values are checked as the primitives check them, and a dump that gives a
    /// record key, counter name, once key or membership twice is refused: either way
    /// with [`StoreError::InvalidArgument`], and nothing is applied.
    fn import_scope(&self, scope: &str, dump: &ScopeDump) -> Result<(), StoreError>;

    // ---- the host's alert log ([`crate::alerts`]) ----
    //
    // A namespace of its own, beside the guest's scopes, which no scope name can
    // reach and no scope listing shows. Logs are per owner (an account name, to
    // the host an opaque string). Writes are applied, not yet durable, as the
    // primitives' are: the caller's next [`Store::persist`] makes them so.

    /// The next sequence number of `owner`'s log (1, 2, ...), taken atomically: no
    /// two callers get the same one.
    fn alert_sequence(&self, owner: &str) -> Result<u64, StoreError>;

    /// Adds `value` under `key` to `owner`'s log if `key` is not there yet; true
    /// if added.
    fn alert_insert(&self, owner: &str, key: &str, value: &str) -> Result<bool, StoreError>;

    /// Calls `visit(owner, key, value)` for each entry of the log (of `owner`'s
    /// log only, when given) in (owner, key) byte order, from just after `after`
    /// = `(owner, key)` on; `visit` returns false to stop early. The same rules as
    /// [`Store::visit_members`] hold for `visit`.
    fn visit_alerts(&self, list: Alerts<'_>, visit: VisitAlert<'_>) -> Result<(), StoreError>;
}

/// [`Store::visit_records`] over an exported scope: for stores that keep no
/// records in order.
fn visit_exported_records(dump: ScopeDump, after: Option<&str>, visit: Visit<'_>) {
    for (key, value) in dump.records {
        if after.is_none_or(|a| key.as_str() > a) && !visit(&key, &value) {
            break;
        }
    }
}

/// A backend's mechanism: the [`Store`] primitives, called only with arguments
/// that passed the checks every backend makes alike (names against
/// [`MAX_NAME_LEN`], values against [`MAX_VALUE_LEN`], batches against
/// [`MAX_BATCH`], dumps without repeats). Every `Backend` is a [`Store`] through
/// the one implementation below, which checks and then calls it; so the
/// backends cannot drift apart in what they refuse, nor in the message. Each
/// method's contract is its [`Store`] namesake's.
///
/// Backends implement it as `impl super::Backend for ...` without importing it,
/// so that in their modules (and their tests) a call such as `store.record_get`
/// means the checked [`Store`] method, never this one. Wrappers that delegate
/// to another store ([`Preview`], the dry-run import, test stores) implement
/// [`Store`] itself: the store they wrap checks.
pub(crate) trait Backend: Send + Sync {
    fn record_get(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError>;
    fn record_insert(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError>;
    fn record_update(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError>;
    fn record_update_guarded(&self, update: GuardedUpdate<'_>) -> Result<bool, StoreError>;
    fn counter_get(&self, scope: &str, name: &str, now: Instant) -> Result<u64, StoreError>;
    fn counter_add_guarded(&self, add: CounterAdd<'_>) -> Result<GuardedAdd, StoreError>;
    fn counter_tally(&self, tally: CounterTally<'_>) -> Result<Option<Tally>, StoreError>;
    fn member_add(&self, add: MemberAdd<'_>) -> Result<MemberAdded, StoreError>;
    fn member_add_guarded(
        &self,
        add: MemberAddGuarded<'_>,
    ) -> Result<Option<GuardedMember>, StoreError>;
    fn member_add_many(&self, add: MemberAddMany<'_>) -> Result<MembersAdded, StoreError>;
    fn member_remove(&self, at: Membership<'_>) -> Result<MemberRemoved, StoreError>;
    fn group_clear(&self, scope: &str, group: &str) -> Result<GroupCleared, StoreError>;
    fn member_count(&self, scope: &str) -> Result<u64, StoreError>;
    fn group_counts(&self, scope: &str) -> Result<Vec<GroupCount>, StoreError>;
    fn membership(&self, at: Membership<'_>) -> Result<Option<u64>, StoreError>;
    fn persist(&self) -> Result<(), StoreError>;
    fn batch(&self, f: &mut dyn FnMut() -> BatchEnd) -> Result<BatchEnd, StoreError> {
        f();
        Ok(BatchEnd::Keep)
    }
    fn batches(&self) -> bool {
        false
    }
    fn durable_on_return(&self) -> bool {
        false
    }
    fn losses(&self) -> u64 {
        0
    }
    fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn secret(&self) -> Result<[u8; SECRET_LEN], StoreError>;
    fn set_secret(&self, secret: [u8; SECRET_LEN]) -> Result<(), StoreError>;
    fn host_record(&self, key: &str) -> Result<Option<String>, StoreError>;
    fn set_host_record(&self, key: &str, value: &str) -> Result<(), StoreError>;
    fn scopes(&self) -> Result<Vec<String>, StoreError>;
    fn scopes_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError>;
    fn visit_members_after(&self, list: Members<'_>, visit: Visit<'_>) -> Result<(), StoreError>;
    fn visit_records(&self, list: Records<'_>, visit: Visit<'_>) -> Result<(), StoreError> {
        visit_exported_records(Backend::export_scope(self, list.scope)?, list.after, visit);
        Ok(())
    }
    fn export_scope(&self, scope: &str) -> Result<ScopeDump, StoreError>;
    /// Called with a dump [`check_dump`] accepted.
    fn import_scope(&self, scope: &str, dump: &ScopeDump) -> Result<(), StoreError>;
    fn alert_sequence(&self, owner: &str) -> Result<u64, StoreError>;
    fn alert_insert(&self, owner: &str, key: &str, value: &str) -> Result<bool, StoreError>;
    fn visit_alerts(&self, list: Alerts<'_>, visit: VisitAlert<'_>) -> Result<(), StoreError>;
}

// The checks, once for every backend. Each is a few length comparisons, inlined
// into the backend's method: the hot path costs what it did when every backend
// made them itself.
impl<B: Backend> Store for B {
    fn record_get(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        check_record(scope, key, None)?;
        Backend::record_get(self, scope, key)
    }

    fn record_insert(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        check_record(scope, key, Some(value))?;
        Backend::record_insert(self, scope, key, value)
    }

    fn record_update(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        check_record(scope, key, Some(value))?;
        Backend::record_update(self, scope, key, value)
    }

    fn record_update_guarded(&self, update: GuardedUpdate<'_>) -> Result<bool, StoreError> {
        check_record(update.scope, update.key, Some(update.value))?;
        check_guard(Some(update.guard))?;
        Backend::record_update_guarded(self, update)
    }

    fn counter_get(&self, scope: &str, name: &str, now: Instant) -> Result<u64, StoreError> {
        check_counter(scope, None, name)?;
        Backend::counter_get(self, scope, name, now)
    }

    fn counter_add_guarded(&self, add: CounterAdd<'_>) -> Result<GuardedAdd, StoreError> {
        check_counter(add.scope, add.guard, add.name)?;
        add.once
            .map_or(Ok(()), |once| check_name("once key", once.key))?;
        Backend::counter_add_guarded(self, add)
    }

    fn counter_tally(&self, tally: CounterTally<'_>) -> Result<Option<Tally>, StoreError> {
        check_counter(tally.scope, tally.guard, tally.name)?;
        Backend::counter_tally(self, tally)
    }

    fn member_add(&self, add: MemberAdd<'_>) -> Result<MemberAdded, StoreError> {
        check_member(add.scope, add.group, add.member)?;
        Backend::member_add(self, add)
    }

    fn member_add_guarded(
        &self,
        add: MemberAddGuarded<'_>,
    ) -> Result<Option<GuardedMember>, StoreError> {
        check_counter(add.scope, add.guard, add.name)?;
        check_member(add.scope, add.group, add.member)?;
        Backend::member_add_guarded(self, add)
    }

    fn member_add_many(&self, add: MemberAddMany<'_>) -> Result<MembersAdded, StoreError> {
        check_batch(add.scope, add.group, add.members)?;
        Backend::member_add_many(self, add)
    }

    fn member_remove(&self, at: Membership<'_>) -> Result<MemberRemoved, StoreError> {
        check_member(at.scope, at.group, at.member)?;
        Backend::member_remove(self, at)
    }

    fn group_clear(&self, scope: &str, group: &str) -> Result<GroupCleared, StoreError> {
        check_group(scope, Some(group))?;
        Backend::group_clear(self, scope, group)
    }

    fn member_count(&self, scope: &str) -> Result<u64, StoreError> {
        check_name("scope", scope)?;
        Backend::member_count(self, scope)
    }

    fn group_counts(&self, scope: &str) -> Result<Vec<GroupCount>, StoreError> {
        check_name("scope", scope)?;
        Backend::group_counts(self, scope)
    }

    fn membership(&self, at: Membership<'_>) -> Result<Option<u64>, StoreError> {
        check_member(at.scope, at.group, at.member)?;
        Backend::membership(self, at)
    }

    fn persist(&self) -> Result<(), StoreError> {
        Backend::persist(self)
    }

    fn batch(&self, f: &mut dyn FnMut() -> BatchEnd) -> Result<BatchEnd, StoreError> {
        Backend::batch(self, f)
    }

    fn batches(&self) -> bool {
        Backend::batches(self)
    }

    fn durable_on_return(&self) -> bool {
        Backend::durable_on_return(self)
    }

    fn losses(&self) -> u64 {
        Backend::losses(self)
    }

    fn health(&self) -> Result<(), StoreError> {
        Backend::health(self)
    }

    fn secret(&self) -> Result<[u8; SECRET_LEN], StoreError> {
        Backend::secret(self)
    }

    fn set_secret(&self, secret: [u8; SECRET_LEN]) -> Result<(), StoreError> {
        Backend::set_secret(self, secret)
    }

    fn host_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        check_name("host record key", key)?;
        Backend::host_record(self, key)
    }

    fn set_host_record(&self, key: &str, value: &str) -> Result<(), StoreError> {
        check_name("host record key", key)?;
        if value.len() > MAX_HOST_RECORD_LEN {
            return Err(StoreError::InvalidArgument(format!(
                "host record {key:?} is {} bytes long; the limit is {MAX_HOST_RECORD_LEN}",
                value.len()
            )));
        }
        Backend::set_host_record(self, key, value)
    }

    fn scopes(&self) -> Result<Vec<String>, StoreError> {
        Backend::scopes(self)
    }

    fn scopes_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        Backend::scopes_after(self, after, limit)
    }

    fn visit_members_after(&self, list: Members<'_>, visit: Visit<'_>) -> Result<(), StoreError> {
        check_group(list.scope, list.group)?;
        Backend::visit_members_after(self, list, visit)
    }

    fn visit_records(&self, list: Records<'_>, visit: Visit<'_>) -> Result<(), StoreError> {
        check_name("scope", list.scope)?;
        Backend::visit_records(self, list, visit)
    }

    fn export_scope(&self, scope: &str) -> Result<ScopeDump, StoreError> {
        check_name("scope", scope)?;
        Backend::export_scope(self, scope)
    }

    fn import_scope(&self, scope: &str, dump: &ScopeDump) -> Result<(), StoreError> {
        check_name("scope", scope)?;
        check_dump(dump)?;
        Backend::import_scope(self, scope, dump)
    }

    fn alert_sequence(&self, owner: &str) -> Result<u64, StoreError> {
        check_name("owner", owner)?;
        Backend::alert_sequence(self, owner)
    }

    fn alert_insert(&self, owner: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        check_name("owner", owner)?;
        check_name("key", key)?;
        check_value(value)?;
        Backend::alert_insert(self, owner, key, value)
    }

    fn visit_alerts(&self, list: Alerts<'_>, visit: VisitAlert<'_>) -> Result<(), StoreError> {
        Backend::visit_alerts(self, list, visit)
    }
}

/// The scopes the alert log lived in before it had a namespace of its own:
/// `"\u{1}alerts/<owner>"`, with records `key → value` and the counter
/// `sequence`. Backends move them into the log when they open a store.
pub(crate) const LEGACY_ALERT_PREFIX: &str = "\u{1}alerts/";

/// The owner of a legacy alert-log scope, if `scope` is one.
pub(crate) fn legacy_alert_owner(scope: &str) -> Option<&str> {
    scope.strip_prefix(LEGACY_ALERT_PREFIX)
}

/// One group's counts (see [`Store::group_counts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupCount {
    pub group: String,
    /// Members the group holds.
    pub members: u64,
    /// Of those, members no other group of the scope holds.
    pub exclusive: u64,
}

/// [`Store::group_counts`] computed from a scope's memberships, as the backends'
/// kept counts must answer: for dumps (imports, migrations) and tests.
pub fn group_counts_of(memberships: &[(String, String)]) -> Vec<GroupCount> {
    let mut groups_of = std::collections::BTreeMap::<&str, u64>::new();
    for (_, member) in memberships {
        *groups_of.entry(member).or_default() += 1;
    }
    let mut counts = std::collections::BTreeMap::<&str, GroupCount>::new();
    for (group, member) in memberships {
        let count = counts.entry(group).or_insert_with(|| GroupCount {
            group: group.clone(),
            ..GroupCount::default()
        });
        count.members += 1;
        if groups_of.get(member.as_str()) == Some(&1) {
            count.exclusive += 1;
        }
    }
    counts.into_values().collect()
}

/// The whole content of one scope, in a backend-neutral form: the contract's
/// own shape, from its model.
pub use creditgate_storemodel::Dump as ScopeDump;

/// Whether a live `once` marker holding `stored` makes a call carrying `once` a
/// retry (`true`: answer `repeated`) or a reuse of the key for something else
/// (`false`: answer `conflict`). A marker without a fingerprint (stored before
/// markers had one) is never a retry: failing closed, it is a conflict.
/// Adds `members` to `group` of `scope`, with no limit: a fixture of the
/// backends' unit tests.
#[cfg(test)]
pub(crate) fn add_members(store: &dyn Store, scope: &str, group: &str, members: &[&str]) {
    let members: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
    let add = MemberAddMany {
        scope,
        group,
        members: &members,
        limit: None,
    };
    store.member_add_many(add).expect("adds");
}

pub(crate) fn is_retry(stored: Option<u64>, once: OnceKey<'_>) -> bool {
    stored == Some(once.fingerprint)
}

/// Checks a name argument against [`MAX_NAME_LEN`].
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    if name.len() > MAX_NAME_LEN {
        return Err(StoreError::InvalidArgument(format!(
            "{what} is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    Ok(())
}

/// Checks the arguments of `member_add_many`: names, and the batch against
/// [`MAX_BATCH`]. Nothing may be applied unless the whole batch is acceptable.
pub(crate) fn check_batch(scope: &str, group: &str, members: &[String]) -> Result<(), StoreError> {
    check_name("scope", scope)?;
    check_name("group", group)?;
    if members.len() > MAX_BATCH {
        return Err(StoreError::InvalidArgument(format!(
            "a batch of {} members; the limit is {MAX_BATCH}",
            members.len()
        )));
    }
    members
        .iter()
        .try_for_each(|member| check_name("member", member))
}

/// The refusal of a join that would put `member` in more than
/// [`MAX_GROUPS_PER_MEMBER`] groups of `scope`.
pub(crate) fn too_many_groups(scope: &str, member: &str) -> StoreError {
    StoreError::InvalidArgument(format!(
        "member {member:?} of scope {scope:?} is already in {MAX_GROUPS_PER_MEMBER} groups, \
         the most a member may join"
    ))
}

/// Checks the names a primitive on one member of one group takes.
fn check_member(scope: &str, group: &str, member: &str) -> Result<(), StoreError> {
    check_name("scope", scope)?;
    check_name("group", group)?;
    check_name("member", member)
}

/// Checks the names every counter primitive takes.
fn check_counter(scope: &str, guard: Option<Guard<'_>>, name: &str) -> Result<(), StoreError> {
    check_name("scope", scope)?;
    check_name("counter name", name)?;
    check_guard(guard)
}

/// Checks a guard's record key and version.
fn check_guard(guard: Option<Guard<'_>>) -> Result<(), StoreError> {
    match guard {
        Some(guard) => {
            check_name("guard key", guard.key)?;
            check_value(guard.value)
        }
        None => Ok(()),
    }
}

/// Checks the arguments of the record primitives (`value`: of a write).
fn check_record(scope: &str, key: &str, value: Option<&str>) -> Result<(), StoreError> {
    check_name("scope", scope)?;
    check_name("key", key)?;
    value.map_or(Ok(()), check_value)
}

/// Checks a scope and, when given, a group.
fn check_group(scope: &str, group: Option<&str>) -> Result<(), StoreError> {
    check_name("scope", scope)?;
    group.map_or(Ok(()), |group| check_name("group", group))
}

/// Checks a dump before anything of it is applied: its names and values as the
/// primitives check them, and that it gives no record key, counter name, once
/// key or membership twice.
pub(crate) fn check_dump(dump: &ScopeDump) -> Result<(), StoreError> {
    use std::collections::BTreeSet;
    let repeated = |what: std::fmt::Arguments<'_>| {
        StoreError::InvalidArgument(format!("the dump holds {what} more than once"))
    };
    let mut seen = BTreeSet::new();
    for (key, value) in &dump.records {
        check_name("key", key)?;
        check_value(value)?;
        if !seen.insert(key.as_str()) {
            return Err(repeated(format_args!("record {key:?}")));
        }
    }
    seen.clear();
    for (name, _, _) in &dump.counters {
        check_name("counter name", name)?;
        if !seen.insert(name.as_str()) {
            return Err(repeated(format_args!("counter {name:?}")));
        }
    }
    seen.clear();
    for (key, _, _) in &dump.once {
        check_name("once key", key)?;
        if !seen.insert(key.as_str()) {
            return Err(repeated(format_args!("once key {key:?}")));
        }
    }
    let mut pairs = BTreeSet::new();
    for (group, member) in &dump.memberships {
        check_name("group", group)?;
        check_name("member", member)?;
        if !pairs.insert((group.as_str(), member.as_str())) {
            return Err(repeated(format_args!(
                "member {member:?} of group {group:?}"
            )));
        }
    }
    Ok(())
}

/// Checks a record value against [`MAX_VALUE_LEN`].
pub(crate) fn check_value(value: &str) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(StoreError::InvalidArgument(format!(
            "record value is {} bytes long; the limit is {MAX_VALUE_LEN}",
            value.len()
        )));
    }
    Ok(())
}
