//! Conformance suite of the [`Store`] backends: each test is written once, against
//! `&dyn Store`, and instantiated for [`MemoryStore`] and for [`RedbStore`]; a
//! property test checks both against a plain model of the WIT `state` contract.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use creditgate::bindings::{
    CounterAdded, GroupCleared, MemberAddOutcome, MemberAdded, MemberRemoveOutcome, MemberRemoved,
    Once,
};
use creditgate::store::{
    CounterAdd, MAX_NAME_LEN, MAX_VALUE_LEN, MemoryStore, RedbStore, Store, StoreError,
};
use proptest::prelude::*;
use tempfile::TempDir;

/// A backend under test, with whatever must outlive it (redb's directory).
struct Fixture {
    store: Box<dyn Store>,
    _dir: Option<TempDir>,
}

fn memory() -> Fixture {
    Fixture {
        store: Box::new(MemoryStore::new()),
        _dir: None,
    }
}

fn redb() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(&dir.path().join("state.redb")).expect("open redb");
    Fixture {
        store: Box::new(store),
        _dir: Some(dir),
    }
}

// The bindgen types have no PartialEq: tests compare these renderings instead.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Bool(bool),
    Value(Option<String>),
    Count(u64),
    Counter(&'static str, u64),
    Added(&'static str, u64),
    Removed(&'static str, u64),
    Cleared(u64, u64, u64),
    Scopes(Vec<String>),
    Unit,
    Err(&'static str),
}

fn counter(c: CounterAdded) -> Out {
    match c {
        CounterAdded::Applied(v) => Out::Counter("applied", v),
        CounterAdded::Repeated(v) => Out::Counter("repeated", v),
        CounterAdded::Refused(v) => Out::Counter("refused", v),
    }
}

fn added(a: MemberAdded) -> Out {
    let outcome = match a.outcome {
        MemberAddOutcome::AlreadyInGroup => "already-in-group",
        MemberAddOutcome::Joined => "joined",
        MemberAddOutcome::Inserted => "inserted",
        MemberAddOutcome::Refused => "refused",
    };
    Out::Added(outcome, a.members)
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
    let once = once.map(|(key, expires_at)| Once {
        key: key.to_owned(),
        expires_at,
    });
    let args = CounterAdd {
        amount,
        limit,
        once: once.as_ref(),
        expires_at,
        now,
    };
    out(s.counter_add(scope, name, args), counter)
}

fn get(s: &dyn Store, scope: &str, name: &str, now: i64) -> u64 {
    s.counter_get(scope, name, now).expect("counter_get")
}

fn join(s: &dyn Store, scope: &str, group: &str, member: &str, limit: Option<u64>) -> Out {
    out(s.member_add(scope, group, member, limit), added)
}

fn leave(s: &dyn Store, scope: &str, group: &str, member: &str) -> Out {
    out(s.member_remove(scope, group, member), removed)
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

// ---------------------------------------------------------------------------------
// The suite, each test once.

fn records(s: &dyn Store) {
    assert_eq!(s.record_get("s", "k").unwrap(), None);
    assert!(
        !s.record_update("s", "k", "x").unwrap(),
        "update of an absent record"
    );
    assert_eq!(s.record_get("s", "k").unwrap(), None);
    assert!(scopes(s).is_empty(), "a refused update creates nothing");

    assert!(s.record_insert("s", "k", "v1").unwrap());
    assert!(
        !s.record_insert("s", "k", "v2").unwrap(),
        "insert is if-absent"
    );
    assert_eq!(s.record_get("s", "k").unwrap().as_deref(), Some("v1"));
    assert!(s.record_update("s", "k", "v3").unwrap());
    assert_eq!(s.record_get("s", "k").unwrap().as_deref(), Some("v3"));

    // Empty names and values are ordinary strings.
    assert!(s.record_insert("", "", "").unwrap());
    assert_eq!(s.record_get("", "").unwrap().as_deref(), Some(""));

    let big = "x".repeat(MAX_VALUE_LEN);
    assert!(s.record_insert("s", "big", &big).unwrap());
    assert_eq!(s.record_get("s", "big").unwrap(), Some(big.clone()));
    let too_big = "x".repeat(MAX_VALUE_LEN + 1);
    assert_eq!(
        out(s.record_insert("s", "huge", &too_big), Out::Bool),
        Out::Err("invalid-argument")
    );
    assert_eq!(
        out(s.record_update("s", "k", &too_big), Out::Bool),
        Out::Err("invalid-argument")
    );
    assert_eq!(s.record_get("s", "huge").unwrap(), None);
    assert_eq!(s.record_get("s", "k").unwrap().as_deref(), Some("v3"));
}

fn counter_limits(s: &dyn Store) {
    assert_eq!(get(s, "s", "c", 0), 0);
    assert_eq!(add(s, "s", "c", 7, Some(10)), applied(7));
    assert_eq!(
        add(s, "s", "c", 3, Some(10)),
        applied(10),
        "exactly at the limit"
    );
    assert_eq!(add(s, "s", "c", 1, Some(10)), refused(10), "one over");
    assert_eq!(
        add(s, "s", "c", 0, Some(10)),
        applied(10),
        "0 within the limit"
    );
    assert_eq!(
        add(s, "s", "c", 0, Some(9)),
        refused(10),
        "limit lowered below"
    );
    assert_eq!(add(s, "s", "c", 5, None), applied(15), "no limit");
    assert_eq!(get(s, "s", "c", 0), 15);

    // A refused add on a fresh counter creates nothing.
    assert_eq!(add(s, "t", "c", 2, Some(1)), refused(0));
    assert_eq!(scopes(s), ["s"]);

    // Checked arithmetic: overflow is refused, with or without a limit.
    assert_eq!(add(s, "s", "big", u64::MAX, None), applied(u64::MAX));
    assert_eq!(add(s, "s", "big", 1, None), refused(u64::MAX));
    assert_eq!(add(s, "s", "big", 1, Some(u64::MAX)), refused(u64::MAX));
    assert_eq!(add(s, "s", "big", 0, None), applied(u64::MAX));
    assert_eq!(add(s, "s", "c", u64::MAX, None), refused(15));
    assert_eq!(get(s, "s", "big", 0), u64::MAX);
}

fn counter_once(s: &dyn Store) {
    let now = 1_000;
    let k = Some(("msg-1", 2_000));
    assert_eq!(add_at(s, "s", "c", 3, Some(10), k, None, now), applied(3));
    assert_eq!(add_at(s, "s", "c", 3, Some(10), k, None, now), repeated(3));
    assert_eq!(add(s, "s", "c", 2, None), applied(5));
    // Repeated answers the current value, and ignores the (now violated) limit.
    assert_eq!(add_at(s, "s", "c", 3, Some(1), k, None, now), repeated(5));
    // Keys are per scope, not per counter.
    assert_eq!(add_at(s, "s", "d", 1, None, k, None, now), repeated(0));
    assert_eq!(get(s, "s", "d", now), 0);
    assert_eq!(add_at(s, "t", "c", 1, None, k, None, now), applied(1));

    // A refused add does not remember its key.
    let k2 = Some(("msg-2", 2_000));
    assert_eq!(add_at(s, "s", "c", 6, Some(10), k2, None, now), refused(5));
    assert_eq!(add_at(s, "s", "c", 5, Some(10), k2, None, now), applied(10));
    assert_eq!(
        add_at(s, "s", "c", 5, Some(10), k2, None, now),
        repeated(10)
    );

    // An amount of 0 within the limit is applied and remembers its key.
    let k3 = Some(("msg-3", 2_000));
    assert_eq!(add_at(s, "s", "c", 0, Some(10), k3, None, now), applied(10));
    assert_eq!(
        add_at(s, "s", "c", 0, Some(10), k3, None, now),
        repeated(10)
    );

    // The marker blocks until just before its expiry, and not at it.
    assert_eq!(add_at(s, "s", "c", 1, None, k, None, 1_999), repeated(10));
    // Once expired, the key is applied again and remembered with its new expiry.
    let k_later = Some(("msg-1", 3_000));
    assert_eq!(
        add_at(s, "s", "c", 1, None, k_later, None, 2_000),
        applied(11)
    );
    assert_eq!(
        add_at(s, "s", "c", 1, None, k_later, None, 2_999),
        repeated(11)
    );
    // A key whose expiry is not after `now` blocks nothing, not even itself.
    let stale = Some(("msg-4", 2_999));
    assert_eq!(
        add_at(s, "s", "c", 1, None, stale, None, 2_999),
        applied(12)
    );
    assert_eq!(
        add_at(s, "s", "c", 1, None, stale, None, 2_999),
        applied(13)
    );
}

fn counter_expiry(s: &dyn Store) {
    assert_eq!(add_at(s, "s", "c", 5, None, None, Some(100), 0), applied(5));
    assert_eq!(
        add_at(s, "s", "c", 2, Some(7), None, Some(100), 50),
        applied(7)
    );
    assert_eq!(get(s, "s", "c", 99), 7);
    assert_eq!(get(s, "s", "c", 100), 0, "expired at expires_at");
    // An expired counter restarts from 0 before the addition, limit included.
    assert_eq!(
        add_at(s, "s", "c", 7, Some(7), None, Some(200), 100),
        applied(7)
    );
    assert_eq!(get(s, "s", "c", 150), 7);
    // Refused on an expired counter: its value is 0.
    assert_eq!(
        add_at(s, "s", "c", 8, Some(7), None, Some(300), 200),
        refused(0)
    );
    assert_eq!(get(s, "s", "c", 200), 0);
    // The latest applied addition sets the expiry; None means never.
    assert_eq!(add_at(s, "s", "c", 1, None, None, None, 200), applied(1));
    assert_eq!(get(s, "s", "c", i64::MAX - 1), 1);
    // Repeated on an expired counter answers 0.
    let k = Some(("k", 1_000));
    assert_eq!(add_at(s, "s", "e", 4, None, k, Some(300), 0), applied(4));
    assert_eq!(add_at(s, "s", "e", 4, None, k, Some(300), 300), repeated(0));
}

fn member_add_outcomes(s: &dyn Store) {
    let l = Some(2);
    assert_eq!(join(s, "s", "g", "a", Some(0)), Out::Added("refused", 0));
    assert!(scopes(s).is_empty(), "a refused member creates nothing");
    assert_eq!(join(s, "s", "g", "a", l), Out::Added("inserted", 1));
    assert_eq!(join(s, "s", "g", "a", l), Out::Added("already-in-group", 1));
    assert_eq!(join(s, "s", "h", "a", l), Out::Added("joined", 1));
    assert_eq!(join(s, "s", "g", "b", l), Out::Added("inserted", 2));
    assert_eq!(
        join(s, "s", "g", "c", l),
        Out::Added("refused", 2),
        "at limit"
    );
    assert_eq!(
        join(s, "s", "i", "b", l),
        Out::Added("joined", 2),
        "joins at limit"
    );
    // A limit lowered below the current count refuses new members only.
    assert_eq!(join(s, "s", "g", "d", Some(1)), Out::Added("refused", 2));
    assert_eq!(join(s, "s", "h", "b", Some(1)), Out::Added("joined", 2));
    assert_eq!(
        join(s, "s", "h", "b", Some(0)),
        Out::Added("already-in-group", 2)
    );
    assert_eq!(join(s, "s", "g", "c", None), Out::Added("inserted", 3));
    assert_eq!(count(s, "s"), 3);
    assert_eq!(count(s, "other"), 0);
}

fn member_remove_outcomes(s: &dyn Store) {
    assert_eq!(leave(s, "s", "g", "a"), Out::Removed("not-in-group", 0));
    join(s, "s", "g", "a", None);
    join(s, "s", "h", "a", None);
    join(s, "s", "g", "b", None);
    assert_eq!(leave(s, "s", "i", "a"), Out::Removed("not-in-group", 2));
    assert_eq!(leave(s, "s", "g", "c"), Out::Removed("not-in-group", 2));
    assert_eq!(leave(s, "s", "g", "a"), Out::Removed("left-group", 2));
    assert_eq!(leave(s, "s", "g", "a"), Out::Removed("not-in-group", 2));
    assert_eq!(leave(s, "s", "h", "a"), Out::Removed("released", 1));
    assert_eq!(count(s, "s"), 1);
    // A released member is new again: it counts against the limit.
    assert_eq!(join(s, "s", "h", "a", Some(1)), Out::Added("refused", 1));
    assert_eq!(leave(s, "s", "g", "b"), Out::Removed("released", 0));
    assert_eq!(count(s, "s"), 0);
    assert!(scopes(s).is_empty(), "the last member leaves no trace");
}

fn group_clear_counts(s: &dyn Store) {
    assert_eq!(clear(s, "s", "g"), Out::Cleared(0, 0, 0));
    for (g, m) in [("g", "a"), ("h", "a"), ("g", "b"), ("g", "c"), ("h", "d")] {
        join(s, "s", g, m, None);
    }
    // Groups whose names extend or follow "g" must not be touched.
    join(s, "s", "g\0", "e", None);
    join(s, "s", "gg", "f", None);
    join(s, "s", "", "x", None);
    assert_eq!(count(s, "s"), 7);
    assert_eq!(clear(s, "s", "g"), Out::Cleared(3, 2, 5));
    assert_eq!(count(s, "s"), 5);
    assert_eq!(
        join(s, "s", "h", "a", None),
        Out::Added("already-in-group", 5)
    );
    assert_eq!(
        join(s, "s", "g\0", "e", None),
        Out::Added("already-in-group", 5)
    );
    assert_eq!(
        join(s, "s", "gg", "f", None),
        Out::Added("already-in-group", 5)
    );
    assert_eq!(
        join(s, "s", "", "x", None),
        Out::Added("already-in-group", 5)
    );
    assert_eq!(leave(s, "s", "g", "a"), Out::Removed("not-in-group", 5));
    assert_eq!(clear(s, "s", "g"), Out::Cleared(0, 0, 5));
    assert_eq!(join(s, "s", "g", "b", Some(6)), Out::Added("inserted", 6));
    assert_eq!(clear(s, "s", ""), Out::Cleared(1, 1, 5));
    assert_eq!(clear(s, "s", "h"), Out::Cleared(2, 2, 3));
    assert_eq!(clear(s, "s", "g\0"), Out::Cleared(1, 1, 2));
    assert_eq!(clear(s, "s", "gg"), Out::Cleared(1, 1, 1));
    assert_eq!(clear(s, "s", "g"), Out::Cleared(1, 1, 0));
    assert!(scopes(s).is_empty());
}

fn scopes_listing(s: &dyn Store) {
    assert!(scopes(s).is_empty());
    s.record_insert("b", "k", "v").unwrap();
    add(s, "a", "c", 1, None);
    join(s, "c", "g", "m", None);
    s.record_insert("a\0", "k", "v").unwrap();
    s.record_insert("a", "k", "v").unwrap();
    add(s, "", "c", 0, None);
    join(s, "c", "h", "m", None);
    assert_eq!(scopes(s), ["", "a", "a\0", "b", "c"]);
    // Things that change nothing create no scope.
    assert!(!s.record_update("d", "k", "v").unwrap());
    assert_eq!(add(s, "e", "c", 1, Some(0)), refused(0));
    assert_eq!(join(s, "f", "g", "m", Some(0)), Out::Added("refused", 0));
    assert_eq!(leave(s, "g", "g", "m"), Out::Removed("not-in-group", 0));
    assert_eq!(clear(s, "h", "g"), Out::Cleared(0, 0, 0));
    assert_eq!(scopes(s), ["", "a", "a\0", "b", "c"]);
    clear(s, "c", "g");
    assert_eq!(scopes(s), ["", "a", "a\0", "b", "c"]);
    clear(s, "c", "h");
    assert_eq!(scopes(s), ["", "a", "a\0", "b"]);
}

fn names_too_long(s: &dyn Store) {
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let ok = "x".repeat(MAX_NAME_LEN);
    let l = long.as_str();
    let invalid = Out::Err("invalid-argument");
    for (scope, key) in [(l, "k"), ("s", l)] {
        assert_eq!(out(s.record_get(scope, key), Out::Value), invalid);
        assert_eq!(out(s.record_insert(scope, key, "v"), Out::Bool), invalid);
        assert_eq!(out(s.record_update(scope, key, "v"), Out::Bool), invalid);
        assert_eq!(out(s.counter_get(scope, key, 0), Out::Count), invalid);
        assert_eq!(add(s, scope, key, 1, None), invalid);
    }
    assert_eq!(
        add_at(s, "s", "c", 1, None, Some((l, 10)), None, 0),
        invalid
    );
    for (scope, group, member) in [(l, "g", "m"), ("s", l, "m"), ("s", "g", l)] {
        assert_eq!(join(s, scope, group, member, None), invalid);
        assert_eq!(out(s.member_remove(scope, group, member), removed), invalid);
    }
    assert_eq!(out(s.group_clear(l, "g"), cleared), invalid);
    assert_eq!(out(s.group_clear("s", l), cleared), invalid);
    assert_eq!(out(s.member_count(l), Out::Count), invalid);
    assert!(scopes(s).is_empty(), "nothing stored");
    assert_eq!(get(s, "s", "c", 0), 0);

    // Exactly the limit is accepted everywhere.
    assert!(s.record_insert(&ok, &ok, "v").unwrap());
    assert_eq!(s.record_get(&ok, &ok).unwrap().as_deref(), Some("v"));
    assert_eq!(
        add_at(s, &ok, &ok, 1, None, Some((&ok, 10)), None, 0),
        applied(1)
    );
    assert_eq!(join(s, &ok, &ok, &ok, None), Out::Added("inserted", 1));
    assert_eq!(scopes(s), [ok]);
}

fn scope_isolation(s: &dyn Store) {
    s.record_insert("x", "k", "vx").unwrap();
    add_at(s, "x", "c", 5, None, Some(("k", 100)), None, 0);
    join(s, "x", "g", "m", None);
    join(s, "x", "g", "n", None);
    assert_eq!(s.record_get("y", "k").unwrap(), None);
    assert_eq!(s.record_get("x\0", "k").unwrap(), None);
    assert!(s.record_insert("y", "k", "vy").unwrap());
    assert_eq!(get(s, "y", "c", 0), 0);
    assert_eq!(
        add_at(s, "y", "c", 1, None, Some(("k", 100)), None, 0),
        applied(1)
    );
    assert_eq!(count(s, "y"), 0);
    assert_eq!(join(s, "y", "g", "m", Some(1)), Out::Added("inserted", 1));
    assert_eq!(clear(s, "y", "g"), Out::Cleared(1, 1, 0));
    assert_eq!(count(s, "x"), 2);
    assert_eq!(s.record_get("x", "k").unwrap().as_deref(), Some("vx"));
    assert_eq!(get(s, "x", "c", 0), 5);
}

const THREADS: usize = 8;
const TRIES: usize = 25;

fn concurrent_limits(s: &dyn Store) {
    let (inserted, applied_adds) = std::thread::scope(|t| {
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                t.spawn(move || {
                    let mut inserted = 0;
                    let mut applied_adds = 0;
                    for j in 0..TRIES {
                        let member = format!("m{i}-{j}");
                        match s.member_add("s", "g", &member, Some(100)).unwrap().outcome {
                            MemberAddOutcome::Inserted => inserted += 1,
                            MemberAddOutcome::Refused => {}
                            _ => panic!("distinct members can only be inserted or refused"),
                        }
                        let args = CounterAdd {
                            amount: 1,
                            limit: Some(100),
                            once: None,
                            expires_at: None,
                            now: 0,
                        };
                        match s.counter_add("s", "c", args).unwrap() {
                            CounterAdded::Applied(_) => applied_adds += 1,
                            CounterAdded::Refused(v) => assert_eq!(v, 100),
                            CounterAdded::Repeated(_) => panic!("no once key was given"),
                        }
                    }
                    (inserted, applied_adds)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    });
    assert_eq!(inserted, 100);
    assert_eq!(applied_adds, 100);
    assert_eq!(count(s, "s"), 100);
    assert_eq!(get(s, "s", "c", 0), 100);
}

fn concurrent_persist(s: &dyn Store) {
    assert!(s.persist().is_ok(), "persist with nothing to do");
    std::thread::scope(|t| {
        for i in 0..THREADS {
            t.spawn(move || {
                for j in 0..10 {
                    s.record_insert("s", &format!("{i}-{j}"), "v").unwrap();
                    s.persist().expect("persist");
                    s.persist().expect("persist again");
                }
            });
        }
    });
    s.persist().expect("persist");
    assert_eq!(s.record_get("s", "7-9").unwrap().as_deref(), Some("v"));
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $test() { super::$test(&*super::memory().store) } )*
        }
        mod redb {
            $( #[test] fn $test() { super::$test(&*super::redb().store) } )*
        }
    };
}

conformance!(
    records,
    counter_limits,
    counter_once,
    counter_expiry,
    member_add_outcomes,
    member_remove_outcomes,
    group_clear_counts,
    scopes_listing,
    names_too_long,
    scope_isolation,
    concurrent_limits,
    concurrent_persist,
);

// ---------------------------------------------------------------------------------
// redb only: the file.

mod redb_file {
    use super::*;

    #[test]
    fn survives_reopen_after_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            assert_eq!(s.path(), path);
            s.record_insert("s", "k", "v").unwrap();
            add_at(&s, "s", "c", 4, None, Some(("once", 100)), Some(50), 0);
            join(&s, "s", "g", "a", None);
            join(&s, "s", "h", "a", None);
            join(&s, "t", "g", "b", None);
            s.persist().unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.record_get("s", "k").unwrap().as_deref(), Some("v"));
        assert_eq!(get(&s, "s", "c", 49), 4);
        assert_eq!(get(&s, "s", "c", 50), 0);
        assert_eq!(
            add_at(&s, "s", "c", 4, None, Some(("once", 100)), None, 10),
            repeated(4)
        );
        assert_eq!(count(&s, "s"), 1);
        assert_eq!(count(&s, "t"), 1);
        assert_eq!(
            join(&s, "s", "h", "a", None),
            Out::Added("already-in-group", 1)
        );
        assert_eq!(clear(&s, "s", "g"), Out::Cleared(1, 0, 1));
        assert_eq!(scopes(&s), ["s", "t"]);
    }

    #[test]
    fn second_open_is_locked_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let first = RedbStore::open(&path).unwrap();
        let started = Instant::now();
        match RedbStore::open(&path) {
            Err(StoreError::Locked { path: p }) => assert!(p.contains("state.redb")),
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("expected Locked, got a second handle"),
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(first);
        RedbStore::open(&path).expect("open once the first handle is gone");
    }

    #[test]
    fn integrity_check_passes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        join(&s, "s", "g", "a", None);
        assert!(s.check_integrity().unwrap());
        s.persist().unwrap();
        assert_eq!(count(&s, "s"), 1);
    }

    #[test]
    fn not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        match RedbStore::open(&path) {
            Err(StoreError::Corrupt(_) | StoreError::Unavailable(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened junk as a database"),
        }
    }
}

// ---------------------------------------------------------------------------------
// Both backends against a model of the contract.

#[derive(Debug, Clone)]
enum Op {
    RecordGet(usize, usize),
    RecordInsert(usize, usize, usize),
    RecordUpdate(usize, usize, usize),
    CounterGet(usize, usize),
    CounterAdd {
        scope: usize,
        name: usize,
        amount: u64,
        limit: Option<u64>,
        once: Option<(usize, i64)>,
        expires_in: Option<i64>,
    },
    MemberAdd(usize, usize, usize, Option<u64>),
    MemberRemove(usize, usize, usize),
    GroupClear(usize, usize),
    MemberCount(usize),
    Scopes,
    Persist,
}

// Tiny alphabets make collisions common; "s\0" and "g\0" probe the range bounds.
const SCOPES: [&str; 4] = ["", "s", "s\0", "t"];
const KEYS: [&str; 3] = ["k", "l", ""];
const VALUES: [&str; 3] = ["", "v", "w"];
const GROUPS: [&str; 4] = ["", "g", "g\0", "h"];
const MEMBERS: [&str; 5] = ["m", "n", "o", "p", "q"];

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0..4u64, 1 => (u64::MAX - 3)..=u64::MAX]
}

fn limit() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![1 => Just(None), 3 => (0..8u64).prop_map(Some), 1 => Just(Some(u64::MAX))]
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SCOPES.len();
    let k = 0..KEYS.len();
    let v = 0..VALUES.len();
    let g = 0..GROUPS.len();
    let m = 0..MEMBERS.len();
    prop_oneof![
        1 => (s.clone(), k.clone()).prop_map(|(s, k)| Op::RecordGet(s, k)),
        1 => (s.clone(), k.clone(), v.clone()).prop_map(|(s, k, v)| Op::RecordInsert(s, k, v)),
        1 => (s.clone(), k.clone(), v).prop_map(|(s, k, v)| Op::RecordUpdate(s, k, v)),
        1 => (s.clone(), k.clone()).prop_map(|(s, k)| Op::CounterGet(s, k)),
        4 => (
            s.clone(),
            k.clone(),
            amount(),
            limit(),
            proptest::option::of((k, -2..12i64)),
            proptest::option::of(-2..12i64),
        )
            .prop_map(|(scope, name, amount, limit, once, expires_in)| Op::CounterAdd {
                scope,
                name,
                amount,
                limit,
                once,
                expires_in,
            }),
        4 => (s.clone(), g.clone(), m.clone(), limit()).prop_map(|(s, g, m, l)| Op::MemberAdd(s, g, m, l)),
        2 => (s.clone(), g.clone(), m).prop_map(|(s, g, m)| Op::MemberRemove(s, g, m)),
        1 => (s.clone(), g).prop_map(|(s, g)| Op::GroupClear(s, g)),
        1 => s.prop_map(Op::MemberCount),
        1 => Just(Op::Scopes),
        1 => Just(Op::Persist),
    ]
}

/// The contract, written as plainly as possible.
#[derive(Default)]
struct Model {
    records: BTreeMap<(String, String), String>,
    /// (value, expires_at: None = never)
    counters: BTreeMap<(String, String), (u64, Option<i64>)>,
    once: BTreeMap<(String, String), i64>,
    /// (scope, member) -> groups; absent when it has none.
    groups: BTreeMap<(String, String), BTreeSet<String>>,
}

fn key(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

impl Model {
    fn members(&self, scope: &str) -> u64 {
        self.groups.keys().filter(|(s, _)| s == scope).count() as u64
    }

    fn counter(&self, scope: &str, name: &str, now: i64) -> u64 {
        match self.counters.get(&key(scope, name)) {
            Some(&(_, Some(exp))) if exp <= now => 0,
            Some(&(v, _)) => v,
            None => 0,
        }
    }

    fn apply(&mut self, op: &Op, now: i64) -> Out {
        match *op {
            Op::RecordGet(s, k) => Out::Value(self.records.get(&key(SCOPES[s], KEYS[k])).cloned()),
            Op::RecordInsert(s, k, v) => {
                let k = key(SCOPES[s], KEYS[k]);
                if self.records.contains_key(&k) {
                    return Out::Bool(false);
                }
                self.records.insert(k, VALUES[v].to_owned());
                Out::Bool(true)
            }
            Op::RecordUpdate(s, k, v) => match self.records.get_mut(&key(SCOPES[s], KEYS[k])) {
                Some(old) => {
                    *old = VALUES[v].to_owned();
                    Out::Bool(true)
                }
                None => Out::Bool(false),
            },
            Op::CounterGet(s, n) => Out::Count(self.counter(SCOPES[s], KEYS[n], now)),
            Op::CounterAdd {
                scope,
                name,
                amount,
                limit,
                once,
                expires_in,
            } => {
                let (scope, name) = (SCOPES[scope], KEYS[name]);
                let current = self.counter(scope, name, now);
                if let Some((k, _)) = once
                    && let Some(&exp) = self.once.get(&key(scope, KEYS[k]))
                    && exp > now
                {
                    return Out::Counter("repeated", current);
                }
                let Some(new) = current.checked_add(amount) else {
                    return Out::Counter("refused", current);
                };
                if limit.is_some_and(|l| new > l) {
                    return Out::Counter("refused", current);
                }
                let expires_at = expires_in.map(|d| now + d);
                self.counters.insert(key(scope, name), (new, expires_at));
                if let Some((k, d)) = once {
                    self.once.insert(key(scope, KEYS[k]), now + d);
                }
                Out::Counter("applied", new)
            }
            Op::MemberAdd(s, g, m, limit) => {
                let (scope, group, member) = (SCOPES[s], GROUPS[g], MEMBERS[m]);
                let members = self.members(scope);
                let k = key(scope, member);
                let outcome = match self.groups.get(&k) {
                    Some(gs) if gs.contains(group) => "already-in-group",
                    Some(_) => "joined",
                    None if limit.is_some_and(|l| members >= l) => "refused",
                    None => "inserted",
                };
                if outcome == "joined" || outcome == "inserted" {
                    self.groups.entry(k).or_default().insert(group.to_owned());
                }
                Out::Added(outcome, self.members(scope))
            }
            Op::MemberRemove(s, g, m) => {
                let (scope, group, member) = (SCOPES[s], GROUPS[g], MEMBERS[m]);
                let k = key(scope, member);
                let outcome = match self.groups.get_mut(&k) {
                    Some(gs) if gs.contains(group) => {
                        gs.remove(group);
                        if gs.is_empty() {
                            self.groups.remove(&k);
                            "released"
                        } else {
                            "left-group"
                        }
                    }
                    _ => "not-in-group",
                };
                Out::Removed(outcome, self.members(scope))
            }
            Op::GroupClear(s, g) => {
                let (scope, group) = (SCOPES[s], GROUPS[g]);
                let (mut removed, mut released) = (0, 0);
                for ((sc, _), gs) in self.groups.iter_mut() {
                    if sc == scope && gs.remove(group) {
                        removed += 1;
                        if gs.is_empty() {
                            released += 1;
                        }
                    }
                }
                self.groups.retain(|_, gs| !gs.is_empty());
                Out::Cleared(removed, released, self.members(scope))
            }
            Op::MemberCount(s) => Out::Count(self.members(SCOPES[s])),
            Op::Scopes => {
                let all: BTreeSet<String> = (self.records.keys())
                    .chain(self.counters.keys())
                    .chain(self.groups.keys())
                    .map(|(s, _)| s.clone())
                    .collect();
                Out::Scopes(all.into_iter().collect())
            }
            Op::Persist => Out::Unit,
        }
    }
}

fn run(s: &dyn Store, steps: &[(i64, Op)]) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut now = 0i64;
    for (i, (dt, op)) in steps.iter().enumerate() {
        now += dt;
        let expected = model.apply(op, now);
        let got = match *op {
            Op::RecordGet(s_, k) => out(s.record_get(SCOPES[s_], KEYS[k]), Out::Value),
            Op::RecordInsert(s_, k, v) => {
                out(s.record_insert(SCOPES[s_], KEYS[k], VALUES[v]), Out::Bool)
            }
            Op::RecordUpdate(s_, k, v) => {
                out(s.record_update(SCOPES[s_], KEYS[k], VALUES[v]), Out::Bool)
            }
            Op::CounterGet(s_, n) => out(s.counter_get(SCOPES[s_], KEYS[n], now), Out::Count),
            Op::CounterAdd {
                scope,
                name,
                amount,
                limit,
                once,
                expires_in,
            } => add_at(
                s,
                SCOPES[scope],
                KEYS[name],
                amount,
                limit,
                once.map(|(k, d)| (KEYS[k], now + d)),
                expires_in.map(|d| now + d),
                now,
            ),
            Op::MemberAdd(s_, g, m, l) => join(s, SCOPES[s_], GROUPS[g], MEMBERS[m], l),
            Op::MemberRemove(s_, g, m) => leave(s, SCOPES[s_], GROUPS[g], MEMBERS[m]),
            Op::GroupClear(s_, g) => clear(s, SCOPES[s_], GROUPS[g]),
            Op::MemberCount(s_) => out(s.member_count(SCOPES[s_]), Out::Count),
            Op::Scopes => out(s.scopes(), Out::Scopes),
            Op::Persist => out(s.persist(), |()| Out::Unit),
        };
        prop_assert_eq!(&got, &expected, "step {} {:?} at now={}", i, op, now);
    }
    let expected = model.apply(&Op::Scopes, now);
    prop_assert_eq!(out(s.scopes(), Out::Scopes), expected);
    Ok(())
}

fn steps() -> impl Strategy<Value = Vec<(i64, Op)>> {
    // Time mostly moves forward, sometimes stands still or steps back a little.
    proptest::collection::vec((prop_oneof![1 => -2..0i64, 4 => 0..4i64], op()), 1..120)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Keeps the source tree clean; a failure prints its minimal case.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]
    #[test]
    fn memory_matches_model(steps in steps()) {
        run(&*memory().store, &steps)?;
    }
}

proptest! {
    #![proptest_config(config(64))]
    #[test]
    fn redb_matches_model(steps in steps()) {
        run(&*redb().store, &steps)?;
    }
}
