//! redb only: the file (reopening, locking, integrity, a file that is no
//! database).

use super::*;

/// `member_add_many`, unwrapped.
fn add_many(
    s: &RedbStore,
    scope: &str,
    group: &str,
    members: &[String],
    limit: Option<u64>,
) -> MembersAdded {
    let add = MemberAddMany {
        scope,
        group,
        members,
        limit,
    };
    s.member_add_many(add).unwrap()
}

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

/// The secret is the file's: the same at every opening, another in another
/// file, and one that was set stays set.
#[test]
fn the_secret_is_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let (path, other) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
    let first = RedbStore::open(&path).unwrap().secret().unwrap();
    assert_eq!(RedbStore::open(&path).unwrap().secret().unwrap(), first);
    assert_ne!(RedbStore::open(&other).unwrap().secret().unwrap(), first);
    let set = [3; creditgate::store::SECRET_LEN];
    RedbStore::open(&path).unwrap().set_secret(set).unwrap();
    assert_eq!(RedbStore::open(&path).unwrap().secret().unwrap(), set);
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
fn member_add_many_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let members: Vec<String> = (0..1_000).map(|i| format!("m{i}")).collect();
    {
        let s = RedbStore::open(&path).unwrap();
        add_many(&s, "s", "g", &members, None);
        s.persist().unwrap();
    }
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(count(&s, "s"), 1_000);
    let added = add_many(&s, "s", "h", &members[..10], Some(0));
    assert_eq!(added_many(added), many(&["joined"; 10], 1_000));
    assert_eq!(clear(&s, "s", "g"), Out::Cleared(1_000, 990, 10));
}

/// Names that arrive in no particular order, like the addresses of a CSV file.
fn contact(i: u64) -> String {
    // splitmix64: a bijection, so every name is distinct.
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("contact-{:016x}@example.com", z ^ (z >> 31))
}

fn rate(members: usize, took: Duration) -> String {
    format!("{:>9.0} members/s", members as f64 / took.as_secs_f64())
}

/// `cargo test --release -p creditgate --test it member_add_many_throughput -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run it in release with --ignored --nocapture"]
fn member_add_many_throughput() {
    const BATCH: usize = 5_000;
    const BATCHES: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(&dir.path().join("state.redb")).unwrap();
    let batches: Vec<Vec<String>> = (0..BATCHES)
        .map(|b| {
            (0..BATCH)
                .map(|i| contact((b * BATCH + i) as u64))
                .collect()
        })
        .collect();

    // New members, in batches of BATCH, each batch made durable as an import would.
    let (mut calls, mut total) = (Duration::ZERO, Duration::ZERO);
    let mut window = Duration::ZERO;
    for (b, batch) in batches.iter().enumerate() {
        let started = Instant::now();
        let added = add_many(&s, "account", "campaign", batch, None);
        let call = started.elapsed();
        s.persist().unwrap();
        let with_persist = started.elapsed();
        assert_eq!(added.members, ((b + 1) * BATCH) as u64);
        calls += call;
        total += with_persist;
        window += call;
        if (b + 1) % 40 == 0 {
            println!(
                "new members {:>7}..{:>7}: {}",
                (b - 39) * BATCH,
                (b + 1) * BATCH,
                rate(40 * BATCH, window)
            );
            window = Duration::ZERO;
        }
    }
    let n = BATCH * BATCHES;
    println!(
        "new members, {n} in batches of {BATCH}: {} (calls only)",
        rate(n, calls)
    );
    println!(
        "new members, {n} in batches of {BATCH}: {} (with persist)",
        rate(n, total)
    );

    // The same batches again: into the same group, every one already in it;
    // into another group, every one joins.
    for (group, label) in [
        ("campaign", "already in group:"),
        ("other", "joining a group:"),
    ] {
        let started = Instant::now();
        for batch in &batches[..40] {
            add_many(&s, "account", group, batch, None);
        }
        println!("{label:<20}{}", rate(40 * BATCH, started.elapsed()));
    }

    // For scale: one member_add (one transaction) per member.
    let started = Instant::now();
    for i in 0..BATCH {
        let add = MemberAdd {
            scope: "account",
            group: "single",
            member: &contact((n + i) as u64),
            limit: None,
        };
        s.member_add(add).unwrap();
    }
    println!("member_add one by one: {}", rate(BATCH, started.elapsed()));
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
