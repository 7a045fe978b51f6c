//! Which commands may create a store file, and what an empty one means, through
//! the binary (issues 13.5 and 14.8): a mistyped `--store` given to a command
//! that only reads is an error, not an empty ledger; an empty file is refused
//! by every command unless `serve --init-store` (or `init_store = true`) asks
//! for a new ledger in it. And the journal beside the store (issue 15): what
//! was made durable through it is there after a crash, for the library and
//! every command, and a journal that is not the store's is refused.

use std::path::{Path, PathBuf};
use std::process::Output;

use std::sync::Arc;

use creditgate::request::Request;
use creditgate::store::{OpenOptions, RedbStore, Store, StoreError, journal_path};

use crate::harness::{self, words};

/// Runs creditgate with `--store STORE` appended and `stdin` as its input (empty
/// in every refusal here: the store is opened before any input is read, and a
/// process that exits first would make writing a non-empty one fail).
fn run(store: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut command = harness::creditgate_command();
    command
        .args(args)
        .arg("--store")
        .arg(store)
        .env_remove("CREDITGATE_STORE")
        .env_remove("CLICOLOR_FORCE");
    harness::run_with_stdin(command, stdin)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every command that has nothing to do on an empty ledger, with its arguments
/// (`--store` is appended), as command lines.
const READERS: &[&str] = &[
    "account list",
    "account show acme",
    "account change-plan acme --plan pro",
    "usage acme",
    "alerts list",
    "leads list --account acme",
    "leads delete --account acme --campaign q1 --all",
    "leads import --account acme --campaign q1 -",
    "leads import --account acme --campaign q1 --dry-run -",
];

#[test]
fn a_command_that_only_reads_does_not_create_a_missing_store() {
    let (dir, typo) = harness::temp_path("creditgat.redb");
    for args in READERS.iter().map(|line| words(line)) {
        let o = run(&typo, &args, b"");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let expected = format!("no store at {}", typo.display());
        assert!(stderr(&o).contains(&expected), "{args:?}: {}", stderr(&o));
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
        assert!(!journal_path(&typo).exists(), "{args:?} created a journal");
    }
    let o = harness::creditgate_command()
        .args(["store", "copy", "--from"])
        .arg(&typo)
        .arg("--to")
        .arg(dir.path().join("copy.redb"))
        .output()
        .expect("runs");
    harness::assert_exit(&o, 2);
    assert!(!typo.exists());
}

#[test]
fn a_subscription_creates_a_missing_store() {
    let (_dir, store) = harness::temp_path("new.redb");
    let o = run(
        &store,
        &["account", "subscribe", "acme", "--plan", "base"],
        b"",
    );
    harness::assert_exit(&o, 0);
    let o = run(&store, &["account", "list"], b"");
    harness::assert_exit(&o, 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("acme"));
}

fn empty_file(dir: &Path) -> PathBuf {
    harness::write_file(dir, "truncated.redb", b"")
}

#[test]
fn an_empty_store_file_is_refused_by_every_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = empty_file(dir.path());
    let subscribe = "account subscribe acme --plan base";
    for args in READERS.iter().chain([&subscribe]).map(|line| words(line)) {
        let o = run(&store, &args, b"");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let expected = format!("the store {} is an empty file", store.display());
        assert!(stderr(&o).contains(&expected), "{args:?}: {}", stderr(&o));
        harness::assert_stderr_has(&o, "--init-store");
    }
    let o = run(&store, &["serve", "--postfix-listen", "off"], b"");
    harness::assert_exit(&o, 2);
    harness::assert_stderr_has(&o, "is an empty file");
    assert_eq!(std::fs::metadata(&store).expect("still there").len(), 0);
}

#[test]
fn a_file_that_is_not_a_store_is_refused_and_left_alone() {
    let (_dir, store) = harness::temp_path("notes.redb");
    std::fs::write(&store, b"not a ledger\n").expect("written");
    for args in [
        &["account", "list"][..],
        &["account", "subscribe", "acme", "--plan", "base"],
        &["serve", "--postfix-listen", "off", "--init-store"],
    ] {
        let o = run(&store, args, b"");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let expected = format!("{} is not a creditgate store", store.display());
        assert!(stderr(&o).contains(&expected), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(std::fs::read(&store).expect("read"), b"not a ledger\n");
}

/// `--init-store` starts a ledger in an empty file; with every listener off,
/// `serve` then stops at once (exit 2), after the store was opened.
#[test]
fn serve_init_store_starts_a_ledger_in_an_empty_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = empty_file(dir.path());
    let o = run(
        &store,
        &words("serve --postfix-listen off --http-listen off --init-store"),
        b"",
    );
    harness::assert_stderr_has(&o, "every listener is off");
    let o = run(&store, &["account", "list"], b"");
    harness::assert_exit(&o, 0);

    // The same from the config file.
    let store = harness::write_file(dir.path(), "second.redb", b"");
    let config = harness::write_file(
        dir.path(),
        "serve.toml",
        "init_store = true\npostfix_listen = \"off\"\nhttp_listen = \"off\"\n",
    );
    let o = run(
        &store,
        &["serve", "--config", config.to_str().expect("utf-8")],
        b"",
    );
    harness::assert_stderr_has(&o, "every listener is off");
    assert!(std::fs::metadata(&store).expect("there").len() > 0);
}

/// Copies the store and its journal as they are on disk now, while the store
/// is open: what a SIGKILL would leave (redb's commits since its last
/// checkpoint are not in its file; the journal's synced records are).
fn crash_copy(store: &Path, to: &Path) {
    std::fs::copy(store, to).expect("copies the store");
    std::fs::copy(journal_path(store), journal_path(to)).expect("copies the journal");
}

const POLICY: &str = "[plans.base]\nlead_credits = 10\nemail_credits = 10\n";

/// 2026-03-01T00:00:00Z.
const NOW: i64 = 1_772_323_200_000_000_000;

/// A worker on `store` after subscribing acme to `base`, durably.
fn subscribed(store: &Arc<RedbStore>) -> creditgate::runtime::Worker {
    let mut worker = harness::worker_on(store.clone(), POLICY);
    let subscribe = harness::subscription("acme", "base");
    assert_eq!(
        worker.decide(&subscribe, NOW).expect("decides").denied,
        None
    );
    store.persist().expect("durable");
    worker
}

#[test]
fn what_persist_acknowledged_is_replayed_from_the_journal_after_a_crash() {
    let (dir, path) = harness::temp_path("live.redb");
    // A checkpoint every 7 records: the copies cross several.
    let options = OpenOptions {
        checkpoint_records: 7,
        ..OpenOptions::default()
    };
    let store = Arc::new(RedbStore::open_with(&path, options).expect("opens"));
    let mut worker = subscribed(&store);
    for i in 0..10 {
        let charge = Request::ChargeEmail {
            account: "acme".into(),
            cost: 1,
            message_id: Some(format!("m{i}")),
        };
        assert_eq!(worker.decide(&charge, NOW).expect("decides").denied, None);
        store.persist().expect("durable");
        let image = dir.path().join(format!("image{i}.redb"));
        crash_copy(&path, &image);
        let reopened = RedbStore::open(&image).expect("recovers");
        let dump = reopened.export_scope("acme").expect("exports");
        assert_eq!(dump.counters.len(), 1, "{dump:?}");
        assert_eq!(dump.counters[0].1, i + 1, "after charge {i}");
        assert_eq!(dump.once.len() as u64, i + 1);
        drop(reopened);
        // Opening twice replays nothing twice.
        let again = RedbStore::open(&image).expect("opens again");
        assert_eq!(again.export_scope("acme").expect("exports"), dump);
    }
}

/// The alert log's writes (its own tables) are journaled like the scopes':
/// what `persist` acknowledged comes back after a crash, once.
#[test]
fn the_alert_log_is_replayed_from_the_journal_after_a_crash() {
    let (dir, path) = harness::temp_path("live.redb");
    let store = RedbStore::open(&path).expect("opens");
    assert_eq!(store.alert_sequence("acme").expect("a number"), 1);
    assert!(
        store
            .alert_insert("acme", "00000001", "{\"a\":1}")
            .expect("inserts")
    );
    assert!(
        !store
            .alert_insert("acme", "00000001", "{}")
            .expect("answers")
    );
    assert_eq!(store.alert_sequence("acme").expect("a number"), 2);
    store.persist().expect("durable");
    let image = dir.path().join("image.redb");
    crash_copy(&path, &image);
    drop(store);
    let log = |store: &RedbStore| {
        let mut log = Vec::new();
        store
            .visit_alerts(Default::default(), &mut |owner, key, value| {
                log.push((owner.to_owned(), key.to_owned(), value.to_owned()));
                true
            })
            .expect("visits");
        log
    };
    let reopened = RedbStore::open(&image).expect("recovers");
    let expected = vec![(
        "acme".to_owned(),
        "00000001".to_owned(),
        "{\"a\":1}".to_owned(),
    )];
    assert_eq!(log(&reopened), expected);
    drop(reopened);
    // Opening twice replays nothing twice.
    let again = RedbStore::open(&image).expect("opens again");
    assert_eq!(log(&again), expected);
    assert_eq!(again.alert_sequence("acme").expect("a number"), 3);
}

/// Every command that opens the store replays its journal: a read-only one
/// sees the account a crash left only in the journal.
#[test]
fn a_command_that_only_reads_replays_the_journal() {
    let (dir, path) = harness::temp_path("live.redb");
    let image = dir.path().join("image.redb");
    {
        let store = Arc::new(RedbStore::open(&path).expect("opens"));
        subscribed(&store);
        crash_copy(&path, &image);
    }
    let o = run(&image, &["account", "list"], b"");
    harness::assert_exit(&o, 0);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("acme"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn a_journal_that_is_not_the_stores_is_refused_and_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
    for path in [&a, &b] {
        let store = RedbStore::open(path).expect("creates");
        store.record_insert("acme", "k", "v").expect("inserts");
        store.persist().expect("durable");
    }
    std::fs::copy(journal_path(&a), journal_path(&b)).expect("copies a's journal");
    match RedbStore::open(&b) {
        Err(StoreError::Corrupt(m)) => {
            harness::assert_has(&m, "belongs to another store");
            assert!(m.contains(&journal_path(&b).display().to_string()), "{m}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    let o = run(&b, &["account", "list"], b"");
    harness::assert_exit(&o, 2);
    harness::assert_stderr_has(&o, "another store");
}

#[test]
fn the_journal_is_locked_with_the_store() {
    let (_dir, path) = harness::temp_path("locked.redb");
    let store = RedbStore::open(&path).expect("opens");
    let journal = std::fs::File::open(journal_path(&path)).expect("the journal is there");
    assert!(matches!(
        journal.try_lock(),
        Err(std::fs::TryLockError::WouldBlock)
    ));
    assert!(matches!(
        RedbStore::open(&path),
        Err(StoreError::Locked { .. })
    ));
    drop(store);
    journal.try_lock().expect("released with the store");
}
