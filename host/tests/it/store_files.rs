//! Which commands may create a store file, and what an empty one means, through
//! the binary (issues 13.5 and 14.8): a mistyped `--store` given to a command
//! that only reads is an error, not an empty ledger; an empty file is refused
//! by every command unless `serve --init-store` (or `init_store = true`) asks
//! for a new ledger in it.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::harness;

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
/// (`--store` is appended).
const READERS: &[&[&str]] = &[
    &["account", "list"],
    &["account", "show", "acme"],
    &["account", "change-plan", "acme", "--plan", "pro"],
    &["usage", "acme"],
    &["alerts", "list"],
    &["leads", "list", "--account", "acme"],
    &[
        "leads",
        "delete",
        "--account",
        "acme",
        "--campaign",
        "q1",
        "--all",
    ],
    &[
        "leads",
        "import",
        "--account",
        "acme",
        "--campaign",
        "q1",
        "-",
    ],
    &[
        "leads",
        "import",
        "--account",
        "acme",
        "--campaign",
        "q1",
        "--dry-run",
        "-",
    ],
];

#[test]
fn a_command_that_only_reads_does_not_create_a_missing_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let typo = dir.path().join("creditgat.redb");
    for args in READERS {
        let o = run(&typo, args, b"");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let expected = format!("no store at {}", typo.display());
        assert!(stderr(&o).contains(&expected), "{args:?}: {}", stderr(&o));
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    let o = harness::creditgate_command()
        .args(["store", "copy", "--from"])
        .arg(&typo)
        .arg("--to")
        .arg(dir.path().join("copy.redb"))
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!typo.exists());
}

#[test]
fn a_subscription_creates_a_missing_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("new.redb");
    let o = run(
        &store,
        &["account", "subscribe", "acme", "--plan", "base"],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&store, &["account", "list"], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("acme"));
}

fn empty_file(dir: &Path) -> PathBuf {
    let store = dir.join("truncated.redb");
    std::fs::write(&store, b"").expect("an empty file");
    store
}

#[test]
fn an_empty_store_file_is_refused_by_every_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = empty_file(dir.path());
    let subscribe: &[&str] = &["account", "subscribe", "acme", "--plan", "base"];
    for args in READERS.iter().chain([&subscribe]) {
        let o = run(&store, args, b"");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let expected = format!("the store {} is an empty file", store.display());
        assert!(stderr(&o).contains(&expected), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("--init-store"), "{}", stderr(&o));
    }
    let o = run(&store, &["serve", "--postfix-listen", "off"], b"");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is an empty file"), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&store).expect("still there").len(), 0);
}

#[test]
fn a_file_that_is_not_a_store_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("notes.redb");
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
        &[
            "serve",
            "--postfix-listen",
            "off",
            "--http-listen",
            "off",
            "--init-store",
        ],
        b"",
    );
    assert!(
        stderr(&o).contains("every listener is off"),
        "{}",
        stderr(&o)
    );
    let o = run(&store, &["account", "list"], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // The same from the config file.
    let store = dir.path().join("second.redb");
    std::fs::write(&store, b"").expect("an empty file");
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        "init_store = true\npostfix_listen = \"off\"\nhttp_listen = \"off\"\n",
    )
    .expect("written");
    let o = run(
        &store,
        &["serve", "--config", config.to_str().expect("utf-8")],
        b"",
    );
    assert!(
        stderr(&o).contains("every listener is off"),
        "{}",
        stderr(&o)
    );
    assert!(std::fs::metadata(&store).expect("there").len() > 0);
}
