//! Which commands may create a store file, and what an empty one means, through
//! the binary (issues 13.5 and 14.8): a mistyped `--store` given to a command
//! that only reads is an error, not an empty ledger; an empty file is refused
//! by every command unless `serve --init-store` (or `init_store = true`) asks
//! for a new ledger in it. And the journal beside the store (issue 15): what
//! was made durable through it is there after a crash, for the library and
//! every command, and a journal that is not the store's is refused; one missing
//! after a crash is refused too (the audit of 2026-12-07), unless the store
//! was closed cleanly or the operator accepts the loss.

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

/// Charges acme one email, message `message_id`, which must be allowed.
fn charge(worker: &mut creditgate::runtime::Worker, message_id: &str) {
    let charge = Request::ChargeEmail {
        account: "acme".into(),
        cost: 1,
        message_id: Some(message_id.into()),
    };
    assert_eq!(worker.decide(&charge, NOW).expect("decides").denied, None);
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
        charge(&mut worker, &format!("m{i}"));
        store.persist().expect("durable");
        let image = dir.path().join(format!("image{i}.redb"));
        let (dump, ()) = recover_acme(&path, &image, |_| ());
        assert_eq!(dump.counters.len(), 1, "{dump:?}");
        assert_eq!(dump.counters[0].1, i + 1, "after charge {i}");
        assert_eq!(dump.once.len() as u64, i + 1);
    }
}

/// Copies the store at `path` to `image` as a crash would leave it and opens
/// the copy twice, the second time to check that it replays nothing twice:
/// acme's scope as recovered, and what `read` found in the first opening.
fn recover_acme<T>(
    path: &Path,
    image: &Path,
    read: impl FnOnce(&RedbStore) -> T,
) -> (creditgate::store::ScopeDump, T) {
    crash_copy(path, image);
    let reopened = RedbStore::open(image).expect("recovers");
    let dump = reopened.export_scope("acme").expect("exports");
    let found = read(&reopened);
    drop(reopened);
    let again = RedbStore::open(image).expect("opens again");
    let replayed = again.export_scope("acme").expect("exports");
    assert_eq!(
        replayed, dump,
        "the second opening replayed something again"
    );
    (dump, found)
}

/// A billing cycle moved on (`record-update-guarded`, journal tag 12) is
/// replayed from the journal after a crash, once: the record reopens as moved
/// on, and the charge made in the new cycle with it.
#[test]
fn a_cycle_moved_on_is_replayed_from_the_journal_after_a_crash() {
    let (dir, path) = harness::temp_path("live.redb");
    let store = Arc::new(RedbStore::open(&path).expect("opens"));
    let mut worker = subscribed(&store);
    let next_cycle = NOW + 32 * 24 * 3600 * 1_000_000_000;
    let charge = Request::ChargeEmail {
        account: "acme".into(),
        cost: 2,
        message_id: Some("m-next".into()),
    };
    let d = worker.decide(&charge, next_cycle).expect("decides");
    assert_eq!((d.denied, d.charged), (None, 2));
    store.persist().expect("durable");
    let image = dir.path().join("image.redb");
    let (dump, record) = recover_acme(&path, &image, |s| s.record_get("acme", "account"));
    assert_eq!(record.expect("reads"), Some(format!("{NOW}/1 base")));
    let counters: Vec<(&str, u64)> = dump.counters.iter().map(|c| (c.0.as_str(), c.1)).collect();
    assert_eq!(counters, [("email/1", 2)]);
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

/// Audit F.5: a byte flipped in a store's first pages made redb panic while
/// the store opened (an `unreachable!` in its B-tree code), crashing `serve`
/// and every command with exit 101. The opening refuses it as corrupt.
#[test]
fn a_store_redb_panics_on_is_refused_as_corrupt() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The live store behind the image, closed cleanly.
    crash_image(dir.path(), 1, false);
    let path = dir.path().join("live.redb");
    let clean = std::fs::read(&path).expect("reads");
    let mut refused = 0;
    for at in (4096..clean.len().min(16384)).step_by(512) {
        let mut bytes = clean.clone();
        bytes[at] ^= 0x5a;
        std::fs::write(&path, &bytes).expect("writes");
        let _ = std::fs::remove_file(journal_path(&path));
        // Never a panic: opened (the flip missed what the opening reads) or refused.
        match RedbStore::open(&path) {
            Ok(_) => {}
            Err(StoreError::Corrupt(_)) => refused += 1,
            Err(e) => panic!("byte {at}: {e}"),
        }
    }
    assert!(refused > 0, "some flip hit what the opening reads");
}

// ---- the store file removed under a running store (audit F.4) ---------------

/// Removed while open, the store kept answering `allow` into a file no later
/// opening reads, and the next start made a new, empty ledger over its
/// journal. Now the next flush after the removal fails closed, and a new store
/// is refused beside the journal of a deleted one.
#[test]
fn a_store_file_removed_while_open_fails_closed_and_is_not_replaced_silently() {
    let (_dir, path) = harness::temp_path("live.redb");
    let store = Arc::new(RedbStore::open(&path).expect("opens"));
    let mut worker = subscribed(&store);
    charge(&mut worker, "m0");
    std::fs::remove_file(&path).expect("removes the store file");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let charged = Request::ChargeEmail {
        account: "acme".into(),
        cost: 1,
        message_id: Some("m1".into()),
    };
    // Decided in memory, then refused at the flush that would acknowledge it.
    let _ = worker.decide(&charged, NOW);
    match store.persist() {
        Err(StoreError::Unavailable(m)) => {
            harness::assert_has(&m, "was removed while the store had it open")
        }
        other => panic!("expected the flush refused, got {other:?}"),
    }
    assert!(store.health().is_err(), "every decision is refused");
    drop(worker);
    drop(store);

    match RedbStore::open(&path) {
        Err(StoreError::Corrupt(m)) => {
            harness::assert_has(&m, "but a journal is beside it");
            harness::assert_has(&m, "--init-store");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    assert!(!path.exists(), "no empty ledger was left in its place");
}

/// Audit G.5: the ledger holds customers' contacts and the secret its message
/// fingerprints are keyed with: created for its owner alone, whatever the
/// umask (0644 before).
#[test]
fn a_new_store_and_its_journal_are_their_owners_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let (_dir, path) = harness::temp_path("private.redb");
    drop(RedbStore::open(&path).expect("creates"));
    for file in [path.clone(), journal_path(&path)] {
        let mode = std::fs::metadata(&file)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}: {mode:o}", file.display());
    }
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

// ---- a journal missing (the audit of 2026-12-07) ------------------------------

/// A crash image of a store holding acme's subscription and two charges, made
/// durable only through the journal; then the journal removed, as a backup of
/// the store file alone, or a journal volume that did not mount, would leave it.
fn image_without_journal(dir: &Path) -> PathBuf {
    let image = crash_image(dir, 2, false);
    std::fs::remove_file(journal_path(&image)).expect("removes the journal");
    image
}

/// A crash image (`image.redb` in `dir`) of a store holding acme's
/// subscription and `charges` charges, made durable through the journal only:
/// each by a flush of its own when `flush_each`, else all by one.
fn crash_image(dir: &Path, charges: usize, flush_each: bool) -> PathBuf {
    let path = dir.join("live.redb");
    let image = dir.join("image.redb");
    let store = Arc::new(RedbStore::open(&path).expect("opens"));
    let mut worker = subscribed(&store);
    for i in 0..charges {
        charge(&mut worker, &format!("m{i}"));
        if flush_each {
            store.persist().expect("durable");
        }
    }
    store.persist().expect("durable");
    crash_copy(&path, &image);
    image
}

fn assert_journal_missing(err: &StoreError, image: &Path, why: &str) {
    match err {
        StoreError::JournalMissing { .. } => {
            let m = err.to_string();
            harness::assert_has(
                &m,
                &format!("the journal {}", journal_path(image).display()),
            );
            harness::assert_has(&m, why);
            harness::assert_has(&m, "accept-journal-loss");
        }
        other => panic!("expected the missing journal refused, got {other:?}"),
    }
}

#[test]
fn a_journal_missing_after_a_crash_is_refused_and_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = image_without_journal(dir.path());
    for _ in 0..2 {
        // Refused, and again: the refusal changes nothing the next one reads.
        let err = RedbStore::open(&image).map(|_| ()).expect_err("refused");
        assert_journal_missing(&err, &image, "was not closed cleanly");
        assert!(!journal_path(&image).exists(), "no journal was started");
    }
    // Every command that opens the store, with the status of an unavailable one.
    for args in [&["account", "list"][..], &["usage", "acme"]] {
        let o = run(&image, args, b"");
        harness::assert_exit(&o, 75);
        harness::assert_stderr_has(&o, "is missing, and the store was not closed cleanly");
        harness::assert_stderr_has(&o, "creditgate store accept-journal-loss --store");
    }
    let o = run(
        &image,
        &words("serve --postfix-listen off --http-listen off"),
        b"",
    );
    harness::assert_exit(&o, 75);
    harness::assert_stderr_has(&o, &journal_path(&image).display().to_string());
}

#[test]
fn with_the_loss_accepted_the_store_opens_as_of_its_last_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = image_without_journal(dir.path());
    let options = OpenOptions {
        accept_journal_loss: true,
        ..OpenOptions::default()
    };
    let store = RedbStore::open_with(&image, options).expect("opens, accepting the loss");
    let loss = store.journal_loss().expect("says what it accepted");
    assert_eq!(loss.journal, journal_path(&image));
    assert_eq!(loss.applied, 0, "nothing was checkpointed");
    harness::assert_has(&loss.why, "not closed cleanly");
    // What only the journal held is gone: that is what was accepted.
    assert!(store.scopes().expect("lists").is_empty());
    assert!(journal_path(&image).exists(), "a new journal was started");
    drop(store);
    // Closed cleanly with its new journal: opens as usual, accepting nothing.
    let store = RedbStore::open(&image).expect("opens");
    assert_eq!(store.journal_loss(), None);
}

/// The lost journal, found after its loss was accepted, is not replayed over
/// what the store did since: it is another store's.
#[test]
fn a_journal_lost_and_found_after_its_loss_was_accepted_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = image_without_journal(dir.path());
    let lost = dir.path().join("live.redb-journal");
    let options = OpenOptions {
        accept_journal_loss: true,
        ..OpenOptions::default()
    };
    drop(RedbStore::open_with(&image, options).expect("opens, accepting the loss"));
    std::fs::copy(&lost, journal_path(&image)).expect("puts the old journal back");
    match RedbStore::open(&image) {
        Err(StoreError::Corrupt(m)) => harness::assert_has(&m, "belongs to another store"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn store_accept_journal_loss_opens_it_and_says_what_it_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = image_without_journal(dir.path());
    let o = run(&image, &["store", "accept-journal-loss"], b"");
    harness::assert_exit(&o, 0);
    harness::assert_stdout_has(
        &o,
        &format!(
            "accepted the loss of the journal {}: the store was not closed cleanly",
            journal_path(&image).display()
        ),
    );
    harness::assert_stdout_has(&o, "(journal record 0)");
    let o = run(&image, &["account", "list", "--format", "json"], b"");
    harness::assert_exit(&o, 0);
    assert!(
        !harness::text(&o.stdout).contains("acme"),
        "{}",
        harness::text(&o.stdout)
    );
    // Again: nothing left to accept.
    let o = run(
        &image,
        &["store", "accept-journal-loss", "--format", "json"],
        b"",
    );
    harness::assert_exit(&o, 0);
    let answer: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(answer["accepted"], false, "{answer}");
}

// ---- a journal damaged in what was synced (audit F.2) ------------------------

/// A record damaged in a flush the journal's later flushes show was synced is
/// refused, where replay used to stop there and drop every acknowledged charge
/// after it in silence; `store accept-journal-loss` opens it knowingly.
#[test]
fn a_journal_damaged_in_what_was_synced_is_refused_until_the_loss_is_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = crash_image(dir.path(), 3, true);
    // One flipped byte in the first record's payload.
    let journal = journal_path(&image);
    let mut bytes = std::fs::read(&journal).expect("reads");
    bytes[4096 + 24] ^= 1;
    std::fs::write(&journal, bytes).expect("writes");

    match RedbStore::open(&image) {
        Err(StoreError::Corrupt(m)) => {
            harness::assert_has(&m, "is damaged at byte 4096");
            harness::assert_has(&m, "accept-journal-loss");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    let o = run(&image, &["usage", "acme"], b"");
    harness::assert_exit(&o, 2);

    let o = run(&image, &["store", "accept-journal-loss"], b"");
    harness::assert_exit(&o, 0);
    harness::assert_stdout_has(&o, "it was damaged at byte 4096");
    let store = RedbStore::open(&image).expect("opens as usual once accepted");
    assert_eq!(store.journal_loss(), None);
}

/// A clean close makes everything durable in the store file: its journal may
/// go, after a read-only open too (`serve --check` writes nothing).
#[test]
fn after_a_clean_close_a_missing_journal_loses_nothing() {
    let (_dir, path) = harness::temp_path("clean.redb");
    {
        let store = Arc::new(RedbStore::open(&path).expect("creates"));
        assert!(
            journal_path(&path).exists(),
            "a new store starts its journal"
        );
        let mut worker = subscribed(&store);
        charge(&mut worker, "m0");
        store.persist().expect("durable");
    }
    drop(redb::ReadOnlyDatabase::open(&path).expect("opens read-only"));
    std::fs::remove_file(journal_path(&path)).expect("removes the journal");
    let store = RedbStore::open(&path).expect("opens without its journal");
    assert_eq!(store.journal_loss(), None);
    let dump = store.export_scope("acme").expect("exports");
    assert_eq!(dump.once.len(), 1, "{dump:?}");
    assert!(journal_path(&path).exists(), "a new journal was started");
}

/// Table `journal` of the store at `path` as the previous release left it: no
/// `closed` mark. Opened with redb itself, which leaves the file closed
/// cleanly unless `while_open` copies it first.
fn without_mark(path: &Path, while_open: impl FnOnce()) {
    const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("journal");
    let db = redb::Database::create(path).expect("opens with redb");
    let txn = db.begin_write().expect("writes");
    let removed = txn
        .open_table(META)
        .expect("the journal's table")
        .remove("closed")
        .expect("removes")
        .map(|v| v.value());
    assert!(removed.is_some(), "this release marks every store");
    txn.commit().expect("commits");
    while_open();
}

/// Files written by the previous release have no `closed` mark: with their
/// journal they open, replaying it; without it, they open when redb did not
/// have to recover them (its clean shutdown made every commit durable) and are
/// refused when it did (a crash).
#[test]
fn a_store_of_the_previous_release_is_told_apart_by_redbs_recovery() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Closed cleanly, then its journal gone.
    let clean = dir.path().join("clean.redb");
    {
        let store = Arc::new(RedbStore::open(&clean).expect("creates"));
        subscribed(&store);
    }
    without_mark(&clean, || {});
    std::fs::remove_file(journal_path(&clean)).expect("removes the journal");
    let store = RedbStore::open(&clean).expect("opens without its journal");
    assert_eq!(store.scopes().expect("lists"), ["acme"]);
    drop(store);

    // Killed with acme only in its journal: the image of it, mark removed, is
    // copied while redb holds it open (as a kill would leave it).
    let live = dir.path().join("live.redb");
    let (killed, alone) = (
        dir.path().join("killed.redb"),
        dir.path().join("alone.redb"),
    );
    let store = Arc::new(RedbStore::open(&live).expect("creates"));
    subscribed(&store);
    let image = dir.path().join("image.redb");
    crash_copy(&live, &image);
    without_mark(&image, || {
        std::fs::copy(&image, &killed).expect("copies");
        std::fs::copy(&image, &alone).expect("copies");
    });
    std::fs::copy(journal_path(&image), journal_path(&killed)).expect("copies the journal");
    let store = RedbStore::open(&killed).expect("opens, replaying its journal");
    assert_eq!(store.scopes().expect("lists"), ["acme"]);
    let err = RedbStore::open(&alone).map(|_| ()).expect_err("refused");
    assert_journal_missing(
        &err,
        &alone,
        "written by an earlier release, was not closed cleanly",
    );
}

/// The audit's reproduction through `serve`: killed with acknowledged charges
/// in its journal, the journal moved aside; the restart is refused rather than
/// handing the credits out again.
#[test]
fn serve_killed_then_without_its_journal_does_not_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("k.redb");
    let spec = store.to_str().expect("utf-8");
    let (serve, base) = crate::http::spawn_http(dir.path(), &["--store", spec]);
    let api = creditgate_testkit::http::Client::new(base);
    let subscribed = api.post("/v1/accounts/tiny/subscription", r#"{"plan":"base"}"#);
    assert_eq!(subscribed.status, 201, "{}", subscribed.body);
    for i in 1..=3 {
        let body = format!(r#"{{"account":"tiny","to":["a{i}@x.io"],"message_id":"m{i}"}}"#);
        let answer = api.post("/v1/decide/email", &body);
        assert_eq!(answer.json()["decision"], "allow", "{}", answer.body);
    }
    serve.kill();
    std::fs::rename(journal_path(&store), dir.path().join("aside")).expect("moves it aside");
    let o = run(
        &store,
        &words("serve --postfix-listen off --http-listen 127.0.0.1:0"),
        b"",
    );
    harness::assert_exit(&o, 75);
    harness::assert_stderr_has(&o, "is missing, and the store was not closed cleanly");
    assert!(!journal_path(&store).exists());
    // Put back, it is replayed: nothing was lost.
    std::fs::rename(dir.path().join("aside"), journal_path(&store)).expect("puts it back");
    let o = run(&store, &["usage", "tiny", "--format", "json"], b"");
    harness::assert_exit(&o, 0);
    harness::assert_stdout_has(&o, r#""used":3"#);
}

/// Issue 13.2's migration: a file written before `once` markers carried a
/// fingerprint (`once`: `(scope, key)` → `i64`) opens with its markers moved
/// to `once_markers` without one, where they match no fingerprint: the key
/// is a conflict for any call until it expires, never a free retry. The old
/// table is gone, and opening again changes nothing.
#[test]
fn a_file_with_markers_without_fingerprints_opens_with_them_as_conflicts() {
    use creditgate::bindings::CounterAdded;
    use redb::{ReadableDatabase as _, TableDefinition};
    // The layout of the previous version.
    const RECORDS: TableDefinition<(&str, &str), &str> = TableDefinition::new("records");
    const COUNTERS: TableDefinition<(&str, &str), (u64, i64)> = TableDefinition::new("counters");
    const LEGACY_ONCE: TableDefinition<(&str, &str), i64> = TableDefinition::new("once");

    let (_dir, path) = harness::temp_path("old.redb");
    {
        let db = redb::Database::create(&path).expect("creates");
        let txn = db.begin_write().expect("writes");
        txn.open_table(RECORDS)
            .expect("records")
            .insert(("acme", "account"), "0 pro")
            .expect("inserts");
        txn.open_table(COUNTERS)
            .expect("counters")
            .insert(("acme", "email/0"), (3, i64::MAX))
            .expect("inserts");
        let mut legacy = txn.open_table(LEGACY_ONCE).expect("old once table");
        legacy
            .insert(("acme", "msg/0/postfix/PFX1"), 1_000)
            .expect("inserts");
        legacy.insert(("acme", "msg/0/gone"), 10).expect("inserts");
        drop(legacy);
        txn.commit().expect("commits");
    }
    for _ in 0..2 {
        let store = RedbStore::open(&path).expect("opens the old file");
        let dump = store.export_scope("acme").expect("exports");
        assert_eq!(
            dump.once,
            [
                ("msg/0/gone".to_owned(), 10, None),
                ("msg/0/postfix/PFX1".to_owned(), 1_000, None),
            ]
        );
        assert_eq!(dump.counters, [("email/0".to_owned(), 3, None)]);
        drop(store);
        let db = redb::Database::create(&path).expect("opens with redb");
        let txn = db.begin_read().expect("reads");
        assert!(matches!(
            txn.open_table(LEGACY_ONCE),
            Err(redb::TableError::TableDoesNotExist(_))
        ));
    }
    let store = RedbStore::open(&path).expect("opens");
    let add = |key: &str, fingerprint, now| harness::add_email_once(&store, key, fingerprint, now);
    for fingerprint in [0, 1, u64::MAX] {
        assert_eq!(
            add("msg/0/postfix/PFX1", fingerprint, 500),
            CounterAdded::Conflict(3)
        );
    }
    // An expired one blocks nothing, and is replaced with a fingerprint.
    assert_eq!(add("msg/0/gone", 7, 500), CounterAdded::Applied(5));
    assert_eq!(add("msg/0/gone", 7, 500), CounterAdded::Repeated(5));
    assert_eq!(
        add("msg/0/postfix/PFX1", 7, 1_000),
        CounterAdded::Applied(7)
    );
}
