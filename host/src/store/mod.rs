//! Durable state the host keeps for the guest: the mechanisms behind the WIT
//! `state` interface.
//!
//! A backend implements [`Store`]; every method is one atomic step on every backend
//! (one write transaction in redb, one server-side script in Redis), so no two
//! workers or gateway hosts sharing a store can both take the last unit of a
//! counter or of a scope's member limit. Nothing here knows what a scope, a counter
//! or a member *means*: that is the guest's business.
//!
//! Durability is split from atomicity so that many decisions can share one disk
//! sync: each primitive is applied (and visible to every reader) when it returns,
//! and [`Store::persist`] makes everything applied so far durable. The host calls
//! `persist` before it answers any request whose decision changed state.

mod memory;
mod redb_store;

pub use memory::MemoryStore;
pub use redb_store::RedbStore;

use crate::bindings::{CounterAdded, GroupCleared, MemberAdded, MemberRemoved, Once, StateError};

/// A point in time: nanoseconds since the Unix epoch, UTC (WIT `instant`).
pub type Instant = i64;

/// Longest scope, key, counter, group or member name a backend accepts, in bytes.
/// Longer names are refused with [`StoreError::InvalidArgument`].
pub const MAX_NAME_LEN: usize = 1024;

/// Longest record value a backend accepts, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

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
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => StateError::Unavailable(m),
            StoreError::Corrupt(m) => StateError::Corrupt(m),
            StoreError::InvalidArgument(m) => StateError::InvalidArgument(m),
            StoreError::Locked { .. } => StateError::Unavailable(e.to_string()),
        }
    }
}

/// The arguments of [`Store::counter_add`] besides the counter's name.
#[derive(Debug, Clone)]
pub struct CounterAdd<'a> {
    pub amount: u64,
    /// None: no bound.
    pub limit: Option<u64>,
    /// Makes the addition idempotent on a key (see WIT `once`).
    pub once: Option<&'a Once>,
    /// When the counter may be forgotten; None: never.
    pub expires_at: Option<Instant>,
    /// The instant the call is made at; expiries are judged against it.
    pub now: Instant,
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

    fn counter_get(&self, scope: &str, name: &str, now: Instant) -> Result<u64, StoreError>;
    fn counter_add(
        &self,
        scope: &str,
        name: &str,
        add: CounterAdd<'_>,
    ) -> Result<CounterAdded, StoreError>;

    fn member_add(
        &self,
        scope: &str,
        group: &str,
        member: &str,
        limit: Option<u64>,
    ) -> Result<MemberAdded, StoreError>;
    fn member_remove(
        &self,
        scope: &str,
        group: &str,
        member: &str,
    ) -> Result<MemberRemoved, StoreError>;
    fn group_clear(&self, scope: &str, group: &str) -> Result<GroupCleared, StoreError>;
    fn member_count(&self, scope: &str) -> Result<u64, StoreError>;

    /// Makes every effect applied before this call durable; returns once it is.
    /// Concurrent callers may share one disk sync (group commit).
    fn persist(&self) -> Result<(), StoreError>;

    /// Every scope that holds anything, in byte order of their names.
    fn scopes(&self) -> Result<Vec<String>, StoreError>;
}

/// Checks a name argument against [`MAX_NAME_LEN`]; shared by every backend so
/// they refuse the same inputs.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    if name.len() > MAX_NAME_LEN {
        return Err(StoreError::InvalidArgument(format!(
            "{what} is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
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
