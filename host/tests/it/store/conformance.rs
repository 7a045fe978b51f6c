//! The conformance suite: each test once, against `&dyn Store`, run on every
//! backend (`memory`, `redb`, `redis` below) and listed in [`SUITE`].

use std::collections::BTreeSet;

use super::*;

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

/// Issue 13.2: a `once` key is an idempotency key over what its fingerprint
/// covers. The same key with the same fingerprint is a retry (`repeated`); with
/// another, a `conflict` that adds nothing, remembers nothing new, and comes
/// before the limit; the first fingerprint stays the key's until it expires.
fn counter_once_fingerprints(s: &dyn Store) {
    let now = 1_000;
    let key = |fp| Some(("msg-1", fp, 2_000));
    assert_eq!(
        add_fp(s, "s", "c", 3, Some(10), key(1), None, now),
        applied(3)
    );
    assert_eq!(
        add_fp(s, "s", "c", 3, Some(10), key(1), None, now),
        repeated(3)
    );
    assert_eq!(
        add_fp(s, "s", "c", 3, Some(10), key(2), None, now),
        conflict(3)
    );
    assert_eq!(
        add_fp(s, "s", "c", 0, Some(10), key(0), None, now),
        conflict(3)
    );
    assert_eq!(
        add_fp(s, "s", "c", 9, Some(10), key(2), None, now),
        conflict(3)
    );
    assert_eq!(
        add_fp(s, "s", "c", 1, Some(10), key(1), None, now),
        repeated(3)
    );
    assert_eq!(get(s, "s", "c", now), 3);
    // Per scope, and a conflict changes nothing of the key's expiry either.
    assert_eq!(add_fp(s, "t", "c", 1, None, key(2), None, now), applied(1));
    assert_eq!(
        add_fp(s, "s", "c", 1, None, key(2), None, 1_999),
        conflict(3)
    );
    // Once the key expired, it is anyone's again.
    assert_eq!(
        add_fp(s, "s", "c", 1, None, Some(("msg-1", 2, 3_000)), None, 2_000),
        applied(4)
    );
    assert_eq!(
        add_fp(s, "s", "c", 1, None, key(1), None, 2_001),
        conflict(4)
    );
    // The guarded form answers the same.
    s.record_insert("s", "plan", "pro").unwrap();
    let guard = Some(Guard {
        key: "plan",
        value: "pro",
    });
    let once = OnceKey {
        key: "msg-1",
        fingerprint: 5,
        expires_at: 3_000,
    };
    let add = CounterAdd {
        scope: "s",
        guard,
        name: "c",
        amount: 1,
        limit: None,
        once: Some(once),
        expires_at: None,
        now: 2_002,
    };
    assert!(matches!(
        s.counter_add_guarded(add),
        Ok(GuardedAdd::Conflict(Tally { counter: 4, .. }))
    ));
    let stale = Some(Guard {
        key: "plan",
        value: "max",
    });
    assert!(matches!(
        s.counter_add_guarded(CounterAdd {
            guard: stale,
            ..add
        }),
        Ok(GuardedAdd::Stale)
    ));
    // Fingerprints at the edges of a u64 round-trip exactly (Redis keeps them
    // as decimal strings).
    for (i, fp) in [0, 1 << 53, (1 << 53) + 1, u64::MAX - 1, u64::MAX]
        .into_iter()
        .enumerate()
    {
        let key = format!("edge-{i}");
        let at = |fp| Some((key.as_str(), fp, 9_000));
        assert_eq!(
            add_fp(s, "e", "c", 1, None, at(fp), None, now),
            applied(i as u64 + 1)
        );
        assert_eq!(
            add_fp(s, "e", "c", 1, None, at(fp), None, now),
            repeated(i as u64 + 1)
        );
        let other = if fp == 0 { 1 } else { fp - 1 };
        assert_eq!(
            add_fp(s, "e", "c", 1, None, at(other), None, now),
            conflict(i as u64 + 1)
        );
    }
    let dump = export(s, "e");
    assert_eq!(dump.once.len(), 5);
    assert_eq!(dump.once[4], ("edge-4".to_owned(), 9_000, Some(u64::MAX)));
}

/// `counter-add-guarded` and `counter-tally`: nothing happens unless the guard's
/// record holds exactly its value, and the scope's member count comes along.
fn guarded_counters(s: &dyn Store) {
    let (pro, max) = (Some(("plan", "pro")), Some(("plan", "max")));
    let once = Some(("m1", 500));
    // No record at all: stale, nothing added, the once key not remembered.
    assert_eq!(
        add_guarded(s, "s", pro, "c", 1, None, once, 0),
        Out::Tally("stale", 0, 0)
    );
    assert_eq!(tally(s, "s", pro, "c", 0), Out::Tally("stale", 0, 0));
    assert_eq!(get(s, "s", "c", 0), 0);

    assert_eq!(
        out(s.record_insert("s", "plan", "pro"), Out::Bool),
        Out::Bool(true)
    );
    join(s, "s", "g", "ann", None);
    join(s, "s", "h", "bo", None);
    assert_eq!(
        add_guarded(s, "s", pro, "c", 1, None, once, 0),
        Out::Tally("applied", 1, 2)
    );
    assert_eq!(
        add_guarded(s, "s", pro, "c", 1, None, once, 0),
        Out::Tally("repeated", 1, 2)
    );
    assert_eq!(
        add_guarded(s, "s", pro, "c", 5, Some(5), None, 0),
        Out::Tally("refused", 1, 2)
    );
    // A value that differs by a byte, or a prefix of the record, does not hold.
    assert_eq!(
        add_guarded(s, "s", Some(("plan", "pr")), "c", 1, None, None, 0),
        Out::Tally("stale", 0, 0)
    );
    assert_eq!(
        add_guarded(s, "s", Some(("other", "pro")), "c", 1, None, None, 0),
        Out::Tally("stale", 0, 0)
    );
    assert_eq!(get(s, "s", "c", 0), 1);

    // The record changes (another host's plan change): the old guard is stale.
    assert_eq!(
        out(s.record_update("s", "plan", "max"), Out::Bool),
        Out::Bool(true)
    );
    assert_eq!(
        add_guarded(s, "s", pro, "c", 1, None, None, 0),
        Out::Tally("stale", 0, 0)
    );
    assert_eq!(tally(s, "s", pro, "c", 0), Out::Tally("stale", 0, 0));
    assert_eq!(
        add_guarded(s, "s", max, "c", 1, None, None, 0),
        Out::Tally("applied", 2, 2)
    );
    assert_eq!(tally(s, "s", max, "c", 0), Out::Tally("tally", 2, 2));
    // Without a guard: the plain primitive, with the member count.
    assert_eq!(tally(s, "s", None, "c", 0), Out::Tally("tally", 2, 2));
    assert_eq!(
        add_guarded(s, "t", None, "c", 4, None, None, 0),
        Out::Tally("applied", 4, 0)
    );
    // A tally reads the counter as `counter-get` does: expired is 0.
    assert_eq!(tally(s, "s", max, "c", 100), Out::Tally("tally", 0, 2));
    assert_eq!(
        tally(s, "s", max, "never-added", 0),
        Out::Tally("tally", 0, 2)
    );

    let long = "x".repeat(MAX_VALUE_LEN + 1);
    assert_eq!(
        add_guarded(s, "s", Some(("plan", &long)), "c", 1, None, None, 0),
        Out::Err("invalid-argument")
    );
    let long = "k".repeat(MAX_NAME_LEN + 1);
    assert_eq!(
        tally(s, "s", Some((&long, "max")), "c", 0),
        Out::Err("invalid-argument")
    );
}

/// `member-add-guarded`: `member-add`'s outcomes, only while the guard holds,
/// with a counter and the member count read in the same step.
fn guarded_members(s: &dyn Store) {
    let pro = Some(("plan", "pro"));
    let t = |o, c, m| Out::Tally(o, c, m);
    assert_eq!(
        join_guarded(s, "s", pro, "g", "ann", None, "c", 0),
        t("stale", 0, 0)
    );
    assert_eq!(count(s, "s"), 0);

    assert_eq!(
        out(s.record_insert("s", "plan", "pro"), Out::Bool),
        Out::Bool(true)
    );
    assert_eq!(add(s, "s", "c", 3, None), applied(3));
    assert_eq!(
        join_guarded(s, "s", pro, "g", "ann", Some(1), "c", 0),
        t("inserted", 3, 1)
    );
    assert_eq!(
        join_guarded(s, "s", pro, "g", "ann", Some(1), "c", 0),
        t("already-in-group", 3, 1)
    );
    // Joining another group takes no room, whatever the limit.
    assert_eq!(
        join_guarded(s, "s", pro, "h", "ann", Some(1), "c", 0),
        t("joined", 3, 1)
    );
    assert_eq!(
        join_guarded(s, "s", pro, "g", "bo", Some(1), "c", 0),
        t("refused", 3, 1)
    );
    assert_eq!(
        join_guarded(s, "s", pro, "g", "bo", None, "c", 0),
        t("inserted", 3, 2)
    );
    // A guard that does not hold changes nothing.
    assert_eq!(
        join_guarded(s, "s", Some(("plan", "max")), "g", "cy", None, "c", 0),
        t("stale", 0, 0)
    );
    assert_eq!(count(s, "s"), 2);
    // The counter as counter-get reads it: never added, or expired, is 0.
    assert_eq!(
        join_guarded(s, "s", pro, "g", "ann", None, "none", 0),
        t("already-in-group", 0, 2)
    );
    assert_eq!(add_at(s, "s", "e", 5, None, None, Some(50), 0), applied(5));
    assert_eq!(
        join_guarded(s, "s", pro, "g", "ann", None, "e", 49),
        t("already-in-group", 5, 2)
    );
    assert_eq!(
        join_guarded(s, "s", pro, "g", "ann", None, "e", 50),
        t("already-in-group", 0, 2)
    );
    // Without a guard: member-add with a tally.
    assert_eq!(
        join_guarded(s, "t", None, "g", "ann", None, "c", 0),
        t("inserted", 0, 1)
    );
    // A counter named "" is a counter like any other (Redis once read it as
    // "no counter": found by the property test against the model).
    assert_eq!(add(s, "t", "", 3, None), applied(3));
    assert_eq!(
        join_guarded(s, "t", None, "g", "bob", None, "", 0),
        t("inserted", 3, 2)
    );
    let long = "m".repeat(MAX_NAME_LEN + 1);
    assert_eq!(
        join_guarded(s, "s", pro, "g", &long, None, "c", 0),
        Out::Err("invalid-argument")
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
        assert_eq!(leave(s, scope, group, member), invalid);
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

/// `record-update-guarded`: replaces only an existing record, only while the
/// guard holds, and with the guard on the record itself is a compare-and-swap.
fn guarded_records(s: &dyn Store) {
    fn update(
        s: &dyn Store,
        scope: &str,
        guard: Guard<'_>,
        key: &str,
        value: &str,
    ) -> Result<bool, StoreError> {
        s.record_update_guarded(GuardedUpdate {
            scope,
            guard,
            key,
            value,
        })
    }
    let on = |value| Guard { key: "k", value };
    assert!(
        !update(s, "s", on(""), "k", "x").unwrap(),
        "an absent record"
    );
    assert!(scopes(s).is_empty(), "a refused update creates nothing");
    assert!(s.record_insert("s", "k", "v1").unwrap());
    assert!(!update(s, "s", on("v0"), "k", "v2").unwrap());
    assert_eq!(s.record_get("s", "k").unwrap().as_deref(), Some("v1"));
    assert!(update(s, "s", on("v1"), "k", "v2").unwrap());
    assert_eq!(s.record_get("s", "k").unwrap().as_deref(), Some("v2"));
    assert!(
        !update(s, "s", on("v1"), "k", "v3").unwrap(),
        "the version read before the swap is stale after it"
    );
    // A guard on another record, which must exist and match.
    let plan = Guard {
        key: "plan",
        value: "pro",
    };
    assert!(!update(s, "s", plan, "k", "v4").unwrap());
    assert!(s.record_insert("s", "plan", "pro").unwrap());
    assert!(!update(s, "s", plan, "absent", "v4").unwrap());
    assert!(update(s, "s", plan, "k", "v4").unwrap());
    assert_eq!(s.record_get("s", "k").unwrap().as_deref(), Some("v4"));
    assert_eq!(
        out(
            update(s, "s", on(&"x".repeat(MAX_VALUE_LEN + 1)), "k", "v"),
            Out::Bool
        ),
        Out::Err("invalid-argument")
    );

    // Racing swaps from one version: each version is replaced exactly once, so
    // the threads' successes count the versions, and the last is the record.
    assert!(s.record_insert("race", "n", "0").unwrap());
    let swapped: usize = std::thread::scope(|t| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                t.spawn(|| {
                    let mut swapped = 0;
                    for _ in 0..TRIES {
                        let read = s.record_get("race", "n").unwrap().unwrap_or_default();
                        let next = (read.parse::<usize>().unwrap() + 1).to_string();
                        let guard = Guard {
                            key: "n",
                            value: &read,
                        };
                        swapped += usize::from(update(s, "race", guard, "n", &next).unwrap());
                    }
                    swapped
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    });
    assert!(swapped > 0);
    assert_eq!(
        s.record_get("race", "n").unwrap(),
        Some(swapped.to_string()),
        "no swap was lost and none was applied twice"
    );
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
                        match join(s, "s", "g", &member, Some(100)) {
                            Out::Added("inserted", _) => inserted += 1,
                            Out::Added("refused", _) => {}
                            _ => panic!("distinct members can only be inserted or refused"),
                        }
                        match add(s, "s", "c", 1, Some(100)) {
                            Out::Counter("applied", _) => applied_adds += 1,
                            Out::Counter("refused", v) => assert_eq!(v, 100),
                            _ => panic!("no once key was given"),
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

/// Issue 13.2's atomicity: threads race to charge each key, each with a
/// fingerprint of its own (two requests under one id with different contents).
/// For every key exactly one is applied, and every other one is a conflict: no
/// window lets two contents both pass, nor one pass uncharged.
fn concurrent_once_conflicts(s: &dyn Store) {
    const KEYS: u64 = 20;
    let outcomes: Vec<Vec<&'static str>> = std::thread::scope(|t| {
        let workers: Vec<_> = (0..THREADS as u64)
            .map(|i| {
                t.spawn(move || {
                    (0..KEYS)
                        .map(|k| {
                            let key = format!("msg-{k}");
                            match add_fp(s, "s", "c", k + 1, None, Some((&key, i, 9)), None, 0) {
                                Out::Counter(outcome, _) => outcome,
                                other => panic!("{other:?}"),
                            }
                        })
                        .collect()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    for k in 0..KEYS as usize {
        let per_key: Vec<&str> = outcomes.iter().map(|o| o[k]).collect();
        let applied = per_key.iter().filter(|&&o| o == "applied").count();
        let conflicts = per_key.iter().filter(|&&o| o == "conflict").count();
        assert_eq!(
            (applied, conflicts),
            (1, THREADS - 1),
            "key {k}: {per_key:?}"
        );
    }
    // Each key charged its amount exactly once.
    assert_eq!(get(s, "s", "c", 0), (1..=KEYS).sum::<u64>());
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

// --- member_add_many

/// Replays `batches` in scope "seq" through `member_add` one member at a time and in
/// scope "bulk" through `member_add_many`: the two must answer and end the same.
fn member_add_many_is_sequential(s: &dyn Store) {
    let batches: &[(&str, &[&str], Option<u64>)] = &[
        ("g", &["a", "b", "a", "c"], None),
        ("h", &["c", "d", "a", "d", "e", "f"], Some(5)),
        ("g", &["f", "g", "e", "b", "h"], Some(6)),
        ("", &["", "a", "x"], Some(0)),
        ("g\0", &["g", "g", "x", "y"], Some(7)),
        ("h", &[], Some(0)),
        ("g", &["z", "a", "z"], None),
    ];
    for &(group, members, limit) in batches {
        let mut outcomes = Vec::new();
        let mut last = count(s, "seq");
        for &m in members {
            match join(s, "seq", group, m, limit) {
                Out::Added(o, n) => {
                    outcomes.push(o);
                    last = n;
                }
                other => panic!("member_add answered {other:?}"),
            }
        }
        assert_eq!(
            join_many(s, "bulk", group, members, limit),
            Out::AddedMany(outcomes, last),
            "group {group:?}, members {members:?}, limit {limit:?}"
        );
    }
    assert_eq!(count(s, "bulk"), count(s, "seq"));
    assert_eq!(visits(s, "bulk", None), visits(s, "seq", None));
    assert_eq!(export(s, "bulk"), export(s, "seq"));
    // The derived counts are right too: removing everything empties the scope.
    for g in ["", "g", "g\0", "h"] {
        assert_eq!(clear(s, "bulk", g), clear(s, "seq", g));
    }
    assert_eq!(count(s, "bulk"), 0);
    assert_eq!(scopes(s), Vec::<String>::new());
}

fn member_add_many_limit_mid_batch(s: &dyn Store) {
    join(s, "s", "g", "a", None);
    assert_eq!(
        join_many(s, "s", "h", &["b", "c", "a", "d", "c", "e", "b"], Some(3)),
        many(
            &[
                "inserted",
                "inserted",
                "joined",
                "refused",
                "already-in-group",
                "refused",
                "already-in-group"
            ],
            3
        )
    );
    assert_eq!(count(s, "s"), 3);
    assert_eq!(
        visits(s, "s", None),
        pairs(&[("g", "a"), ("h", "a"), ("h", "b"), ("h", "c")])
    );
    // A limit already below the count refuses every new member, joins the rest.
    assert_eq!(
        join_many(s, "s", "i", &["d", "c", "a", "b"], Some(1)),
        many(&["refused", "joined", "joined", "joined"], 3)
    );
    // Everything refused: nothing changes, the scope is not created.
    assert_eq!(
        join_many(s, "t", "g", &["a", "b"], Some(0)),
        many(&["refused", "refused"], 0)
    );
    assert_eq!(scopes(s), ["s"]);
    // Released members count against the limit again, within one batch too.
    assert_eq!(clear(s, "s", "h"), Out::Cleared(3, 0, 3));
    assert_eq!(clear(s, "s", "i"), Out::Cleared(3, 2, 1));
    assert_eq!(
        join_many(s, "s", "g", &["b", "c", "d"], Some(2)),
        many(&["inserted", "refused", "refused"], 2)
    );
}

fn member_add_many_duplicates(s: &dyn Store) {
    assert_eq!(
        join_many(s, "s", "g", &["x", "x", "y", "x"], None),
        many(
            &[
                "inserted",
                "already-in-group",
                "inserted",
                "already-in-group"
            ],
            2
        )
    );
    assert_eq!(
        join_many(s, "s", "h", &["x", "x", "z", "z"], Some(2)),
        many(&["joined", "already-in-group", "refused", "refused"], 2)
    );
    // A batch that changes nothing answers the current count.
    assert_eq!(
        join_many(s, "s", "g", &["x", "y", "y"], Some(0)),
        many(&["already-in-group"; 3], 2)
    );
    assert_eq!(count(s, "s"), 2);
    assert_eq!(leave(s, "s", "g", "x"), Out::Removed("left-group", 2));
    assert_eq!(leave(s, "s", "h", "x"), Out::Removed("released", 1));
    assert_eq!(leave(s, "s", "g", "y"), Out::Removed("released", 0));
    assert!(scopes(s).is_empty());
}

fn member_add_many_empty(s: &dyn Store) {
    assert_eq!(join_many(s, "s", "g", &[], None), many(&[], 0));
    assert!(scopes(s).is_empty(), "an empty batch creates nothing");
    join(s, "s", "g", "a", None);
    join(s, "s", "h", "b", None);
    assert_eq!(join_many(s, "s", "g", &[], Some(0)), many(&[], 2));
    assert_eq!(count(s, "s"), 2);
}

fn member_add_many_invalid_name(s: &dyn Store) {
    join(s, "s", "g", "a", None);
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let ok = "x".repeat(MAX_NAME_LEN);
    let invalid = Out::Err("invalid-argument");
    assert_eq!(
        join_many(s, "s", "g", &["b", "c", &long, "d"], None),
        invalid
    );
    assert_eq!(join_many(s, "s", "g", &[&long], None), invalid);
    assert_eq!(join_many(s, "s", &long, &["b"], None), invalid);
    assert_eq!(join_many(s, &long, "g", &["b"], None), invalid);
    assert_eq!(join_many(s, &long, "g", &[], None), invalid);
    assert_eq!(count(s, "s"), 1, "nothing applied");
    assert_eq!(visits(s, "s", None), pairs(&[("g", "a")]));
    assert_eq!(scopes(s), ["s"]);
    assert_eq!(
        join_many(s, "s", "g", &["b", &ok], None),
        many(&["inserted", "inserted"], 3)
    );
}

/// A reader never sees a batch half applied.
/// Joining is free, so a member joins at most `MAX_GROUPS_PER_MEMBER` groups of
/// its scope; a join past that is refused with nothing applied, whichever
/// primitive asks, and leaves a batch's other writes standing.
fn member_groups_bounded(s: &dyn Store) {
    let max = MAX_GROUPS_PER_MEMBER;
    let group = |i: u64| format!("g{i:04}");
    for i in 0..max {
        let expected = if i == 0 { "inserted" } else { "joined" };
        assert_eq!(join(s, "s", &group(i), "a", None), Out::Added(expected, 1));
    }
    let refused = Out::Err("invalid-argument");
    assert_eq!(join(s, "s", "past", "a", None), refused, "one group past");
    assert_eq!(
        join_guarded(s, "s", None, "past", "a", None, "c", 0),
        refused,
        "guarded"
    );
    assert_eq!(
        join_many(s, "s", "past", &["b", "a"], None),
        refused,
        "a batch with one member past"
    );
    assert_eq!(count(s, "s"), 1, "b was not added with it");
    let membership = |group: &str| {
        let at = Membership {
            scope: "s",
            group,
            member: "a",
        };
        s.membership(at).unwrap()
    };
    assert_eq!(membership("past"), None);
    assert_eq!(membership(&group(0)), Some(max));
    let by_group = s.group_counts("s").unwrap();
    assert_eq!(by_group.len() as u64, max, "no group `past`");

    // A group the member is in already, and one after it leaves another.
    assert_eq!(
        join(s, "s", &group(7), "a", None),
        Out::Added("already-in-group", 1)
    );
    assert_eq!(
        join_many(s, "s", &group(7), &["b", "a"], None),
        many(&["inserted", "already-in-group"], 2)
    );
    assert_eq!(leave(s, "s", &group(0), "a"), Out::Removed("left-group", 2));
    assert_eq!(join(s, "s", "past", "a", None), Out::Added("joined", 2));
    assert_eq!(join(s, "s", "later", "a", None), refused);

    // In a batch, the refusal is one primitive's answer, not the batch's end:
    // the writes around it are kept.
    let mut answers = Vec::new();
    let end = s
        .batch(&mut || {
            answers.push(join(s, "t", "g", "x", None));
            answers.push(join(s, "s", "later", "a", None));
            answers.push(join(s, "t", "g", "y", None));
            BatchEnd::Keep
        })
        .expect("the batch");
    assert_eq!(end, BatchEnd::Keep);
    let kept = [
        Out::Added("inserted", 1),
        refused,
        Out::Added("inserted", 2),
    ];
    assert_eq!(answers, kept);
    s.persist().unwrap();
    assert_eq!(count(s, "t"), 2);
}

fn member_add_many_atomic(s: &dyn Store) {
    const N: usize = 10_000;
    let members: Vec<String> = (0..N).map(|i| format!("member-{i:05}")).collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|t| {
        let reader = t.spawn(|| {
            let mut seen = BTreeSet::new();
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                seen.insert(count(s, "s"));
            }
            seen.insert(count(s, "s"));
            seen
        });
        let add = MemberAddMany {
            scope: "s",
            group: "g",
            members: &members,
            limit: None,
        };
        let added = s.member_add_many(add).unwrap();
        done.store(true, std::sync::atomic::Ordering::Release);
        assert_eq!(added.members, N as u64);
        assert!(
            added
                .outcomes
                .iter()
                .all(|o| matches!(o, MemberAddOutcome::Inserted))
        );
        reader.join().expect("reader")
    });
    assert!(
        seen.iter().all(|&n| n == 0 || n == N as u64),
        "a reader saw a partial batch: {seen:?}"
    );
    let mut n = 0;
    s.visit_members("s", Some("g"), &mut |_, m| {
        assert_eq!(m, members[n]);
        n += 1;
        true
    })
    .unwrap();
    assert_eq!(n, N);
}

// --- visit_members

fn visit_members_order(s: &dyn Store) {
    assert_eq!(visits(s, "s", None), pairs(&[]));
    for (g, m) in [
        ("h", "b"),
        ("g", "z"),
        ("gg", "a"),
        ("g\0", "a"),
        ("", "m"),
        ("g", "a"),
        ("h", "a"),
        ("g", "a\0"),
        ("g", ""),
    ] {
        join(s, "s", g, m, None);
    }
    // Neighbouring scopes, whose keys sort right next to those of "s".
    join(s, "s\0", "g", "n", None);
    join(s, "", "g", "o", None);
    join(s, "sa", "", "p", None);
    join(s, "r", "z", "q", None);
    s.record_insert("s", "k", "v").unwrap();
    assert_eq!(
        visits(s, "s", None),
        pairs(&[
            ("", "m"),
            ("g", ""),
            ("g", "a"),
            ("g", "a\0"),
            ("g", "z"),
            ("g\0", "a"),
            ("gg", "a"),
            ("h", "a"),
            ("h", "b"),
        ])
    );
    assert_eq!(
        visits(s, "s", Some("g")),
        pairs(&[("g", ""), ("g", "a"), ("g", "a\0"), ("g", "z")])
    );
    assert_eq!(visits(s, "s", Some("g\0")), pairs(&[("g\0", "a")]));
    assert_eq!(visits(s, "s", Some("")), pairs(&[("", "m")]));
    assert_eq!(visits(s, "s", Some("i")), pairs(&[]));
    assert_eq!(visits(s, "s\0", None), pairs(&[("g", "n")]));
    assert_eq!(visits(s, "", None), pairs(&[("g", "o")]));
    assert_eq!(visits(s, "", Some("")), pairs(&[]));
    assert_eq!(visits(s, "sa", None), pairs(&[("", "p")]));
    assert_eq!(visits(s, "t", None), pairs(&[]));

    // Early stop: visit answers false on the third call and is not called again.
    for (group, expected) in [
        (None, vec![("", "m"), ("g", ""), ("g", "a")]),
        (Some("g"), vec![("g", ""), ("g", "a"), ("g", "a\0")]),
    ] {
        let mut seen = Vec::new();
        s.visit_members("s", group, &mut |g, m| {
            seen.push((g.to_owned(), m.to_owned()));
            seen.len() < 3
        })
        .unwrap();
        assert_eq!(Out::Visited(seen), pairs(&expected));
    }
    let mut calls = 0;
    s.visit_members("s", None, &mut |_, _| {
        calls += 1;
        false
    })
    .unwrap();
    assert_eq!(calls, 1);

    // Removals show.
    clear(s, "s", "g");
    leave(s, "s", "h", "a");
    assert_eq!(
        visits(s, "s", None),
        pairs(&[("", "m"), ("g\0", "a"), ("gg", "a"), ("h", "b")])
    );

    let long = "x".repeat(MAX_NAME_LEN + 1);
    assert_eq!(visits(s, &long, None), Out::Err("invalid-argument"));
    assert_eq!(visits(s, "s", Some(&long)), Out::Err("invalid-argument"));
}

// --- export_scope / import_scope

/// Fills a store with a bit of everything, in several neighbouring scopes.
fn populate(s: &dyn Store) {
    for scope in ["s", "s\0", "", "sa"] {
        s.record_insert(scope, "k", &format!("v of {scope:?}"))
            .unwrap();
        s.record_insert(scope, "", "").unwrap();
        add_at(s, scope, "c", 3, None, Some(("m1", 500)), None, 10);
        join(s, scope, "g", "a", None);
    }
    s.record_insert("s", "big", &"x".repeat(MAX_VALUE_LEN))
        .unwrap();
    s.record_insert("s", "k\0", "w").unwrap();
    add_at(s, "s", "c", 4, None, Some(("m2", 50)), Some(1_000), 20);
    add_at(s, "s", "expired", 9, None, None, Some(30), 0);
    add_at(s, "s", "max", u64::MAX, None, Some(("", i64::MIN)), None, 0);
    add_at(
        s,
        "s",
        "zero",
        0,
        None,
        Some(("m3", 5)),
        Some(i64::MAX - 1),
        0,
    );
    for (g, m) in [
        ("g", "b"),
        ("h", "a"),
        ("h", "c"),
        ("", "d"),
        ("g\0", "e"),
        ("h", "e"),
        ("gg", ""),
    ] {
        join(s, "s", g, m, None);
    }
    s.record_insert("records-only", "k", "v").unwrap();
    add(s, "counters-only", "c", 1, None);
    join(s, "members-only", "g", "m", None);
}

/// Everything a store answers about `scope`, through its read primitives.
fn reads(s: &dyn Store, scope: &str, dump: &ScopeDump) -> Vec<Out> {
    let mut reads = vec![
        Out::Dump(export(s, scope)),
        Out::Count(count(s, scope)),
        visits(s, scope, None),
        Out::Scopes(scopes(s)),
    ];
    for (key, _) in &dump.records {
        reads.push(Out::Value(s.record_get(scope, key).unwrap()));
    }
    for (name, _, _) in &dump.counters {
        for now in [0, 29, 30, 999, 1_000, i64::MAX] {
            reads.push(Out::Count(get(s, scope, name, now)));
        }
    }
    for (group, _) in &dump.memberships {
        reads.push(visits(s, scope, Some(group)));
    }
    reads
}

/// Copies every scope of a populated `from` into `to` and checks that `to` answers
/// every read as `from` does, and then reacts to writes the same way.
pub(super) fn copy_between(from: &dyn Store, to: &dyn Store) {
    populate(from);
    let all = scopes(from);
    assert_eq!(
        all,
        [
            "",
            "counters-only",
            "members-only",
            "records-only",
            "s",
            "s\0",
            "sa"
        ]
    );
    let dumps: Vec<ScopeDump> = all.iter().map(|scope| export(from, scope)).collect();
    for (scope, dump) in all.iter().zip(&dumps) {
        to.import_scope(scope, dump).expect("import_scope");
    }
    for (scope, dump) in all.iter().zip(&dumps) {
        assert_eq!(&export(to, scope), dump, "scope {scope:?}");
        assert_eq!(
            reads(to, scope, dump),
            reads(from, scope, dump),
            "scope {scope:?}"
        );
    }
    let s = &dumps[4];
    assert_eq!(s.records.len(), 4);
    assert_eq!(
        s.counters,
        [
            ("c".to_owned(), 7, Some(1_000)),
            ("expired".to_owned(), 9, Some(30)),
            ("max".to_owned(), u64::MAX, None),
            ("zero".to_owned(), 0, Some(i64::MAX - 1)),
        ]
    );
    assert_eq!(
        s.once,
        [
            (String::new(), i64::MIN, Some(FP)),
            ("m1".to_owned(), 500, Some(FP)),
            ("m2".to_owned(), 50, Some(FP)),
            ("m3".to_owned(), 5, Some(FP)),
        ]
    );
    assert_eq!(s.memberships.len(), 8);
    // The copy behaves as the original under the same writes: once markers, expiry,
    // limits and the derived member counts all came across.
    for store in [from, to] {
        assert_eq!(
            add_at(store, "s", "c", 1, None, Some(("m1", 600)), None, 40),
            repeated(7)
        );
        assert_eq!(
            add_at(store, "s", "c", 1, None, Some(("m2", 600)), None, 50),
            applied(8)
        );
        assert_eq!(
            add_at(store, "s", "expired", 1, None, None, None, 30),
            applied(1)
        );
        assert_eq!(join(store, "s", "g", "c", Some(6)), Out::Added("joined", 6));
        assert_eq!(
            join(store, "s", "g", "f", Some(6)),
            Out::Added("refused", 6)
        );
        assert_eq!(leave(store, "s", "h", "e"), Out::Removed("left-group", 6));
        assert_eq!(clear(store, "s", "h"), Out::Cleared(2, 0, 6));
        assert_eq!(clear(store, "s", "g"), Out::Cleared(3, 3, 3));
    }
    for scope in &all {
        assert_eq!(export(to, scope), export(from, scope), "scope {scope:?}");
    }
}

fn import_replaces(s: &dyn Store) {
    populate(s);
    let neighbours: Vec<ScopeDump> = ["s\0", "", "sa"].iter().map(|n| export(s, n)).collect();
    let dump = ScopeDump {
        records: vec![("new".to_owned(), "value".to_owned())],
        counters: vec![("d".to_owned(), 2, Some(100))],
        once: vec![("m9".to_owned(), 1_000, Some(FP))],
        memberships: vec![
            ("g".to_owned(), "b".to_owned()),
            ("g".to_owned(), "z".to_owned()),
            ("h".to_owned(), "b".to_owned()),
        ],
    };
    s.import_scope("s", &dump).unwrap();
    assert_eq!(export(s, "s"), dump);
    assert_eq!(count(s, "s"), 2);
    assert_eq!(s.record_get("s", "k").unwrap(), None, "stale record gone");
    assert_eq!(s.record_get("s", "new").unwrap().as_deref(), Some("value"));
    assert_eq!(get(s, "s", "c", 0), 0, "stale counter gone");
    assert_eq!(get(s, "s", "d", 99), 2);
    assert_eq!(
        add_at(s, "s", "c", 1, None, Some(("m1", 600)), None, 40),
        applied(1),
        "stale once marker gone"
    );
    assert_eq!(
        add_at(s, "s", "c", 1, None, Some(("m9", 2_000)), None, 40),
        repeated(1)
    );
    assert_eq!(
        visits(s, "s", None),
        pairs(&[("g", "b"), ("g", "z"), ("h", "b")])
    );
    // The derived counts were rebuilt, not carried over.
    assert_eq!(join(s, "s", "h", "a", Some(2)), Out::Added("refused", 2));
    assert_eq!(join(s, "s", "h", "z", Some(2)), Out::Added("joined", 2));
    assert_eq!(leave(s, "s", "g", "b"), Out::Removed("left-group", 2));
    assert_eq!(clear(s, "s", "h"), Out::Cleared(2, 1, 1));
    assert_eq!(clear(s, "s", "g"), Out::Cleared(1, 1, 0));
    for (name, before) in ["s\0", "", "sa"].iter().zip(&neighbours) {
        assert_eq!(&export(s, name), before, "neighbour {name:?} untouched");
    }

    // An empty dump empties the scope.
    s.import_scope("members-only", &ScopeDump::default())
        .unwrap();
    assert_eq!(count(s, "members-only"), 0);
    assert_eq!(export(s, "members-only"), ScopeDump::default());
    assert!(!scopes(s).contains(&"members-only".to_owned()));
    s.import_scope("never-seen", &ScopeDump::default()).unwrap();
    assert!(!scopes(s).contains(&"never-seen".to_owned()));
}

fn import_refuses_bad_dumps(s: &dyn Store) {
    populate(s);
    let before = export(s, "s");
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let good = ScopeDump {
        records: vec![("k".to_owned(), "v".to_owned())],
        counters: vec![("c".to_owned(), 1, None)],
        once: vec![("o".to_owned(), 1, Some(FP))],
        memberships: vec![("g".to_owned(), "m".to_owned())],
    };
    let mut bad = Vec::new();
    for edit in 0..10 {
        let mut d = good.clone();
        match edit {
            0 => d.records.push((long.clone(), "v".to_owned())),
            1 => d
                .records
                .push(("big".to_owned(), "x".repeat(MAX_VALUE_LEN + 1))),
            2 => d.counters.push((long.clone(), 1, None)),
            3 => d.once.push((long.clone(), 1, None)),
            4 => d.memberships.push((long.clone(), "m".to_owned())),
            5 => d.memberships.push(("g".to_owned(), long.clone())),
            // The same key twice is ambiguous: refused rather than guessed at.
            6 => d.records.push(("k".to_owned(), "w".to_owned())),
            7 => d.counters.push(("c".to_owned(), 2, None)),
            8 => d.once.push(("o".to_owned(), 2, None)),
            _ => d.memberships.push(("g".to_owned(), "m".to_owned())),
        }
        bad.push(d);
    }
    for d in &bad {
        assert_eq!(
            out(s.import_scope("s", d), |()| Out::Unit),
            Out::Err("invalid-argument"),
            "{d:?}"
        );
        assert_eq!(export(s, "s"), before, "nothing applied");
    }
    assert_eq!(
        out(s.import_scope(&long, &good), |()| Out::Unit),
        Out::Err("invalid-argument")
    );
    assert_eq!(
        out(s.export_scope(&long), Out::Dump),
        Out::Err("invalid-argument")
    );
    // Order does not matter to an import; the export is sorted.
    let mut shuffled = before.clone();
    shuffled.records.reverse();
    shuffled.counters.reverse();
    shuffled.once.reverse();
    shuffled.memberships.reverse();
    s.import_scope("copy", &shuffled).unwrap();
    assert_eq!(export(s, "copy"), before);
    assert_eq!(count(s, "copy"), count(s, "s"));
}

/// A scope that holds only once markers (which only an import can make) keeps them
/// through member changes, and is not listed. A marker without a fingerprint (as
/// stored before markers had one) is a conflict for any call, and is copied as such.
fn import_once_only(s: &dyn Store) {
    let dump = ScopeDump {
        once: vec![
            ("k".to_owned(), 100, Some(FP)),
            ("old".to_owned(), 100, None),
        ],
        ..ScopeDump::default()
    };
    s.import_scope("s", &dump).unwrap();
    assert_eq!(export(s, "s"), dump);
    assert!(scopes(s).is_empty());
    join(s, "s", "g", "m", None);
    assert_eq!(scopes(s), ["s"]);
    leave(s, "s", "g", "m");
    join_many(s, "s", "g", &["m"], None);
    clear(s, "s", "g");
    assert_eq!(export(s, "s"), dump);
    assert_eq!(
        add_at(s, "s", "c", 1, None, Some(("k", 200)), None, 50),
        repeated(0)
    );
    for fp in [0, FP, u64::MAX] {
        assert_eq!(
            add_fp(s, "s", "c", 1, None, Some(("old", fp, 200)), None, 50),
            conflict(0)
        );
    }
    assert_eq!(export(s, "s"), dump);
    assert_eq!(
        add_fp(s, "s", "c", 1, None, Some(("old", FP, 200)), None, 100),
        applied(1),
        "expired, it blocks nothing"
    );
}

/// The store's secret: 32 bytes, random, the same at every call until set.
fn secret(s: &dyn Store) {
    let first = s.secret().expect("a secret");
    assert_eq!(first.len(), creditgate::store::SECRET_LEN);
    assert_ne!(
        first,
        [0; creditgate::store::SECRET_LEN],
        "random, not zeros"
    );
    assert_eq!(
        s.secret().expect("a secret"),
        first,
        "the same at every call"
    );
    let other = [42; creditgate::store::SECRET_LEN];
    s.set_secret(other).expect("sets it");
    assert_eq!(s.secret().expect("a secret"), other);
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $test() { super::$test(&*super::memory().store) } )*
        }
        mod redb {
            $( #[test] fn $test() { super::$test(&*super::redb().store) } )*
        }
        mod redis {
            $( #[test] fn $test() { super::$test(&*super::redis_fixture().store) } )*
        }
        /// Every test of the suite, by name, for set-ups of other modules.
        pub(crate) const SUITE: &[(&str, fn(&dyn Store))] = &[$( (stringify!($test), $test) ),*];
    };
}

conformance!(
    records,
    guarded_records,
    counter_limits,
    counter_once,
    counter_once_fingerprints,
    guarded_counters,
    guarded_members,
    counter_expiry,
    member_add_outcomes,
    member_remove_outcomes,
    group_clear_counts,
    scopes_listing,
    names_too_long,
    scope_isolation,
    concurrent_limits,
    concurrent_once_conflicts,
    concurrent_persist,
    member_add_many_is_sequential,
    member_add_many_limit_mid_batch,
    member_add_many_duplicates,
    member_add_many_empty,
    member_add_many_invalid_name,
    member_add_many_atomic,
    member_groups_bounded,
    visit_members_order,
    import_replaces,
    import_refuses_bad_dumps,
    import_once_only,
    secret,
);
