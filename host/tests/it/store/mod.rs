//! The [`Store`] backends, tested by concern:
//!
//! - `conformance`: the suite, each test written once against `&dyn Store` and
//!   instantiated for [`MemoryStore`], [`RedbStore`] and `RedisStore` (on a
//!   `redis-server` of the test's own); [`SUITE`] lists it for other set-ups (the
//!   Redis Cluster test in `redis.rs`);
//! - `model`: a property test of each backend against the store contract's one
//!   model (`storemodel/`, the fuzzer's and the guest's tests' too);
//! - `copy`: exports from one backend imported into another;
//! - `redb_file`: what only the embedded file has (reopening, locking).
//!
//! This module holds what they share: the fixtures, and the comparable rendering
//! of answers ([`Out`]) with short spellings of the primitives.

mod conformance;
mod copy;
mod model;
mod redb_file;

pub(crate) use conformance::SUITE;
pub(crate) use model::matches_model;

use std::time::{Duration, Instant};

use creditgate::bindings::{
    CounterAdded, GroupCleared, GuardedAdd, MemberAddOutcome, MemberAdded, MemberRemoveOutcome,
    MemberRemoved, MembersAdded, Tally,
};
use creditgate::store::{
    BatchEnd, CounterAdd, CounterTally, Guard, GuardedUpdate, MAX_GROUPS_PER_MEMBER, MAX_NAME_LEN,
    MAX_VALUE_LEN, MemberAdd, MemberAddGuarded, MemberAddMany, Membership, MemoryStore, OnceKey,
    RedbStore, ScopeDump, Store, StoreError,
};
use tempfile::TempDir;

use crate::redis::{RedisServer, Stores as _};

/// A backend under test, with whatever must outlive it (redb's directory, the
/// Redis server). Fields drop in order: the store before what it runs on.
struct Fixture {
    store: Box<dyn Store>,
    _dir: Option<TempDir>,
    _server: Option<RedisServer>,
}

fn memory() -> Fixture {
    Fixture {
        store: Box::new(MemoryStore::new()),
        _dir: None,
        _server: None,
    }
}

/// A Redis server of the test's own, killed when the fixture drops.
fn redis_fixture() -> Fixture {
    let server = RedisServer::start();
    Fixture {
        store: Box::new(server.store("test")),
        _dir: None,
        _server: Some(server),
    }
}

fn redb() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(&dir.path().join("state.redb")).expect("open redb");
    Fixture {
        store: Box::new(store),
        _dir: Some(dir),
        _server: None,
    }
}

// The bindgen types have no PartialEq: tests compare these renderings instead.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Bool(bool),
    Value(Option<String>),
    Count(u64),
    Counter(&'static str, u64),
    /// A guarded add or a tally: outcome, counter, members.
    Tally(&'static str, u64, u64),
    Added(&'static str, u64),
    AddedMany(Vec<&'static str>, u64),
    Removed(&'static str, u64),
    Cleared(u64, u64, u64),
    Scopes(Vec<String>),
    Visited(Vec<(String, String)>),
    Dump(ScopeDump),
    Unit,
    Err(&'static str),
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

fn out<T>(r: Result<T, StoreError>, f: impl FnOnce(T) -> Out) -> Out {
    match r {
        Ok(v) => f(v),
        Err(StoreError::InvalidArgument(_)) => Out::Err("invalid-argument"),
        Err(StoreError::Unavailable(m)) => panic!("unavailable: {m}"),
        Err(StoreError::Corrupt(m)) => panic!("corrupt: {m}"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

// Short spellings for the tests below.

/// The fingerprint the short spellings give a `once` key.
const FP: u64 = 7;

fn add(s: &dyn Store, scope: &str, name: &str, amount: u64, limit: Option<u64>) -> Out {
    add_at(s, scope, name, amount, limit, None, None, 0)
}

#[allow(clippy::too_many_arguments)]
fn add_at(
    s: &dyn Store,
    scope: &str,
    name: &str,
    amount: u64,
    limit: Option<u64>,
    once: Option<(&str, i64)>,
    expires_at: Option<i64>,
    now: i64,
) -> Out {
    add_fp(
        s,
        scope,
        name,
        amount,
        limit,
        once.map(|(k, x)| (k, FP, x)),
        expires_at,
        now,
    )
}

/// [`add_at`] with the `once` key's fingerprint given: `(key, fingerprint, expires_at)`.
#[allow(clippy::too_many_arguments)]
fn add_fp(
    s: &dyn Store,
    scope: &str,
    name: &str,
    amount: u64,
    limit: Option<u64>,
    once: Option<(&str, u64, i64)>,
    expires_at: Option<i64>,
    now: i64,
) -> Out {
    let once = once.map(|(key, fingerprint, expires_at)| OnceKey {
        key,
        fingerprint,
        expires_at,
    });
    let args = CounterAdd {
        scope,
        guard: None,
        name,
        amount,
        limit,
        once,
        expires_at,
        now,
    };
    out(s.counter_add(args), counter)
}

#[allow(clippy::too_many_arguments)]
fn add_guarded(
    s: &dyn Store,
    scope: &str,
    guard: Option<(&str, &str)>,
    name: &str,
    amount: u64,
    limit: Option<u64>,
    once: Option<(&str, i64)>,
    now: i64,
) -> Out {
    let once = once.map(|(key, expires_at)| OnceKey {
        key,
        fingerprint: FP,
        expires_at,
    });
    let args = CounterAdd {
        scope,
        guard: guard.map(|(key, value)| Guard { key, value }),
        name,
        amount,
        limit,
        once,
        expires_at: Some(now + 100),
        now,
    };
    out(s.counter_add_guarded(args), |a| match a {
        GuardedAdd::Applied(t) => Out::Tally("applied", t.counter, t.members),
        GuardedAdd::Repeated(t) => Out::Tally("repeated", t.counter, t.members),
        GuardedAdd::Refused(t) => Out::Tally("refused", t.counter, t.members),
        GuardedAdd::Conflict(t) => Out::Tally("conflict", t.counter, t.members),
        GuardedAdd::Stale => Out::Tally("stale", 0, 0),
    })
}

fn tally(s: &dyn Store, scope: &str, guard: Option<(&str, &str)>, name: &str, now: i64) -> Out {
    let at = CounterTally {
        scope,
        guard: guard.map(|(key, value)| Guard { key, value }),
        name,
        now,
    };
    out(s.counter_tally(at), |t| match t {
        Some(Tally { counter, members }) => Out::Tally("tally", counter, members),
        None => Out::Tally("stale", 0, 0),
    })
}

#[allow(clippy::too_many_arguments)]
fn join_guarded(
    s: &dyn Store,
    scope: &str,
    guard: Option<(&str, &str)>,
    group: &str,
    member: &str,
    limit: Option<u64>,
    name: &str,
    now: i64,
) -> Out {
    let add = MemberAddGuarded {
        scope,
        guard: guard.map(|(key, value)| Guard { key, value }),
        group,
        member,
        limit,
        name,
        now,
    };
    out(s.member_add_guarded(add), |added| match added {
        Some(a) => Out::Tally(outcome(a.outcome), a.tally.counter, a.tally.members),
        None => Out::Tally("stale", 0, 0),
    })
}

fn get(s: &dyn Store, scope: &str, name: &str, now: i64) -> u64 {
    s.counter_get(scope, name, now).expect("counter_get")
}

fn join(s: &dyn Store, scope: &str, group: &str, member: &str, limit: Option<u64>) -> Out {
    let add = MemberAdd {
        scope,
        group,
        member,
        limit,
    };
    out(s.member_add(add), added)
}

fn join_many(s: &dyn Store, scope: &str, group: &str, members: &[&str], limit: Option<u64>) -> Out {
    let members: Vec<String> = members.iter().map(|&m| m.to_owned()).collect();
    let add = MemberAddMany {
        scope,
        group,
        members: &members,
        limit,
    };
    out(s.member_add_many(add), added_many)
}

fn many(outcomes: &[&'static str], members: u64) -> Out {
    Out::AddedMany(outcomes.to_vec(), members)
}

/// Every `(group, member)` `visit_members` reports.
fn visits(s: &dyn Store, scope: &str, group: Option<&str>) -> Out {
    let mut seen = Vec::new();
    let r = s.visit_members(scope, group, &mut |g, m| {
        seen.push((g.to_owned(), m.to_owned()));
        true
    });
    out(r, |()| Out::Visited(seen))
}

fn pairs(list: &[(&str, &str)]) -> Out {
    Out::Visited(
        list.iter()
            .map(|&(g, m)| (g.to_owned(), m.to_owned()))
            .collect(),
    )
}

fn export(s: &dyn Store, scope: &str) -> ScopeDump {
    s.export_scope(scope).expect("export_scope")
}

fn leave(s: &dyn Store, scope: &str, group: &str, member: &str) -> Out {
    let at = Membership {
        scope,
        group,
        member,
    };
    out(s.member_remove(at), removed)
}

fn clear(s: &dyn Store, scope: &str, group: &str) -> Out {
    out(s.group_clear(scope, group), cleared)
}

fn count(s: &dyn Store, scope: &str) -> u64 {
    s.member_count(scope).expect("member_count")
}

fn scopes(s: &dyn Store) -> Vec<String> {
    s.scopes().expect("scopes")
}

fn applied(v: u64) -> Out {
    Out::Counter("applied", v)
}
fn repeated(v: u64) -> Out {
    Out::Counter("repeated", v)
}
fn refused(v: u64) -> Out {
    Out::Counter("refused", v)
}
fn conflict(v: u64) -> Out {
    Out::Counter("conflict", v)
}
