//! The operator commands `account` and `usage` against a real redb store.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{Duration, Utc};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs creditgate with `--store` in `dir` appended to subcommands that take it.
fn run(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_creditgate"))
        .args(args)
        .env("CREDITGATE_STORE", store)
        .env_remove("CLICOLOR_FORCE")
        .current_dir(repo())
        .output()
        .expect("creditgate runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn subscribe_change_plan_show_and_list() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("cg.redb");
    let o = run(
        &store,
        &[
            "account",
            "subscribe",
            "acme",
            "--plan",
            "base",
            "--anchor",
            "2026-01-31T09:00:00Z",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("acme: subscribed to plan base"),
        "{}",
        stdout(&o)
    );

    let o = run(&store, &["account", "subscribe", "acme", "--plan", "pro"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("acme: denied: already_subscribed"),
        "{}",
        stderr(&o)
    );

    let o = run(
        &store,
        &["account", "change-plan", "acme", "--plan", "platinum"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("denied: unknown_plan"),
        "{}",
        stderr(&o)
    );

    let o = run(
        &store,
        &[
            "account",
            "change-plan",
            "acme",
            "--plan",
            "pro",
            "--format",
            "json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        (v["decision"].as_str(), v["lead_credits"]["limit"].as_u64()),
        (Some("allow"), Some(30_000))
    );

    run(
        &store,
        &["account", "subscribe", "zeta", "--plan", "unlimited_prime"],
    );
    let o = run(&store, &["account", "list", "--format", "json"]);
    let v = json(&o);
    let names: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["account"].as_str())
        .collect();
    assert_eq!(names, ["acme", "zeta"]);
    assert_eq!(v[0]["anchor"].as_str(), Some("2026-01-31T09:00:00Z"));
    assert_eq!(v[1]["lead_credits"]["limit"].as_str(), Some("unlimited"));

    let o = run(&store, &["account", "show", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn an_unreadable_anchor_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let o = run(
        &dir.path().join("cg.redb"),
        &[
            "account",
            "subscribe",
            "a",
            "--plan",
            "base",
            "--anchor",
            "yesterday",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--anchor: expected an RFC 3339 timestamp"),
        "{}",
        stderr(&o)
    );
}

/// Replays `events` into the store (state at the given instants), then asks for usage now.
fn with_sends(store: &Path, recipients: usize) -> Output {
    let anchor = Utc::now() - Duration::days(1);
    let at = rfc3339(Utc::now() - Duration::hours(1));
    let to: Vec<String> = (0..recipients)
        .map(|i| format!("r{i}@example.com"))
        .collect();
    let events = [
        serde_json::json!({"at": rfc3339(anchor), "op": "subscribe", "account": "acme", "plan": "base"}),
        serde_json::json!({"at": at, "op": "send_email", "account": "acme", "to": to}),
    ];
    let trace = store.with_extension("jsonl");
    std::fs::write(
        &trace,
        events.iter().map(|e| format!("{e}\n")).collect::<String>(),
    )
    .expect("trace");
    let store_arg = store.to_str().expect("utf-8");
    let o = run(
        store,
        &[
            "replay",
            "--events",
            trace.to_str().expect("utf-8"),
            "--store",
            store_arg,
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    run(store, &["usage", "acme"])
}

#[test]
fn usage_json_has_the_replay_objects() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("cg.redb");
    with_sends(&store, 3);
    let o = run(&store, &["usage", "acme", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["plan"], "base");
    assert_eq!(
        v["lead_credits"],
        serde_json::json!({"used": 0, "limit": 2000})
    );
    assert_eq!(v["email_credits"]["used"], 3);
    assert_eq!(v["email_credits"]["limit"], 6000);
    assert!(
        v["email_credits"]["resets_at"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
}

#[test]
fn the_dashboard_shows_bars_and_warns_at_80_and_100_percent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let calm = with_sends(&dir.path().join("calm.redb"), 100);
    let text = stdout(&calm);
    assert!(text.contains("100 / 6000  (1.7%)"), "{text}");
    assert!(text.contains("resets "), "{text}");
    assert!(!text.contains('⚠'), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour when piped: {text:?}");

    let warm = stdout(&with_sends(&dir.path().join("warm.redb"), 4_800));
    assert!(warm.contains("⚠ email credits at 80%: 1200 left"), "{warm}");

    let spent = stdout(&with_sends(&dir.path().join("spent.redb"), 6_000));
    assert!(spent.contains("6000 / 6000  (100.0%)"), "{spent}");
    assert!(
        spent.contains("⚠ email credits exhausted: 6000 of 6000 used"),
        "{spent}"
    );
}

#[test]
fn a_store_in_use_is_reported_not_waited_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("busy.redb");
    let _held = creditgate::store::RedbStore::open(&store).expect("opens");
    let o = run(&store, &["account", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("in use by another process"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_documents_the_exit_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let o = run(&dir.path().join("unused.redb"), &["--help"]);
    let text = stdout(&o);
    for line in [
        "0  success",
        "1  a decision, check or test failed",
        "2  usage or input error",
    ] {
        assert!(text.contains(line), "{text}");
    }
}

/// Issue 14.6: names are checked and normalised by the one rule on the command
/// line too; a refused one is a usage error that quotes it escaped.
#[test]
fn account_names_follow_the_one_rule() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("cg.redb");
    let o = run(
        &store,
        &["account", "subscribe", " ACME ", "--plan", "base"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("acme: subscribed"), "{}", stdout(&o));
    let o = run(&store, &["usage", "Acme", "--format", "json"]);
    assert_eq!(json(&o)["account"], "acme");

    for (name, needle) in [
        ("a/b", "account name \"a/b\" has '/' at character 2"),
        (
            "\u{1}alerts/acme",
            "account name \"\\u{1}alerts/acme\" has U+0001",
        ),
        ("evil\nrow", "account name \"evil\\nrow\" has U+000A"),
        ("acme\u{202e}", "has U+202E"),
    ] {
        let o = run(&store, &["account", "subscribe", name, "--plan", "base"]);
        assert_eq!(o.status.code(), Some(2), "{name:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(needle), "{name:?}: {err}");
        assert!(!err.contains(['\u{1}', '\u{202e}']), "{err:?}");
        assert_eq!(err.lines().count(), 1, "{err:?}");
    }
    let o = run(
        &store,
        &["account", "subscribe", "acme2", "--plan", "platinum"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("acme2: no plan \"platinum\" in the policy; its plans are: \"base\", "),
        "{}",
        stderr(&o)
    );
}

/// Issue 14.6: names stored before the rule (or by another component) are listed
/// escaped, one row per account, whatever they hold.
#[test]
fn account_list_escapes_every_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cg.redb");
    {
        let store = std::sync::Arc::new(creditgate::store::RedbStore::open(&path).expect("opens"));
        let mut worker =
            crate::harness::worker_on(store, "[plans.base]\nlead_credits = 1\nemail_credits = 1\n");
        for account in [
            "evil\nforged  row",
            "nul\0",
            "ctl\u{1}",
            "rtl\u{202e}lagel",
            "plain",
        ] {
            let request = creditgate::request::Request::Subscribe {
                account: account.into(),
                plan: "base".into(),
            };
            let d = worker
                .decide(&request, 1_700_000_000_000_000_000)
                .expect("decides");
            assert_eq!(d.denied, None, "{account:?}");
        }
        worker.persist().expect("durable");
    }
    let o = run(&path, &["account", "list"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out.lines().count(),
        1 + 5,
        "one header and one row each: {out:?}"
    );
    assert!(!out.contains(['\0', '\u{1}', '\u{202e}']), "{out:?}");
    for escaped in [
        "evil\\nforged  row",
        "nul\\0",
        "ctl\\u{1}",
        "rtl\\u{202e}lagel",
        "plain",
    ] {
        assert!(out.contains(escaped), "{escaped}: {out}");
    }
}
