//! The operator commands against a real redb store, and through `--server`
//! against a running `creditgate serve` that holds it.

use std::path::Path;
use std::process::{Command, Output};

use creditgate_testkit::http::Client;
use creditgate_testkit::serve::ServeProcess;

use chrono::{Duration, Utc};

use crate::harness::{self, words};

/// Runs creditgate with `$CREDITGATE_STORE` set to `store` (and no gateway or
/// token from the environment running the tests).
pub(crate) fn run(store: &Path, args: &[&str]) -> Output {
    run_with(store, args, &[])
}

/// [`run`] with the words of `line` as arguments (no quoting: for arguments
/// without spaces).
pub(crate) fn cli(store: &Path, line: &str) -> Output {
    run(store, &words(line))
}

/// [`run`] with more environment variables.
pub(crate) fn run_with(store: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_creditgate"));
    command
        .args(args)
        .env("CREDITGATE_STORE", store)
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CREDITGATE_SERVER")
        .env_remove("CREDITGATE_ADMIN_TOKEN")
        .current_dir(harness::repo());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("creditgate runs")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub(crate) fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn subscribe_change_plan_show_and_list() {
    let (_dir, store) = harness::temp_path("cg.redb");
    let o = cli(
        &store,
        "account subscribe acme --plan base --anchor 2026-01-31T09:00:00Z",
    );
    harness::assert_exit(&o, 0);
    harness::assert_stdout_has(&o, "acme: subscribed to plan base");

    let o = run(&store, &["account", "subscribe", "acme", "--plan", "pro"]);
    harness::assert_exit(&o, 1);
    harness::assert_starts(
        &stderr(&o),
        "creditgate: error: account \"acme\": denied: already_subscribed",
    );

    let o = run(
        &store,
        &["account", "change-plan", "acme", "--plan", "platinum"],
    );
    harness::assert_exit(&o, 1);
    harness::assert_stderr_has(&o, "denied: unknown_plan");

    let o = cli(&store, "account change-plan acme --plan pro --format json");
    harness::assert_exit(&o, 0);
    let v = json(&o);
    assert_eq!(
        (v["plan"].as_str(), v["lead_credits"]["limit"].as_u64()),
        (Some("pro"), Some(30_000))
    );
    assert_eq!(v["anchor"], "2026-01-31T09:00:00Z");

    run(
        &store,
        &["account", "subscribe", "zeta", "--plan", "unlimited_prime"],
    );
    let o = run(&store, &["account", "list", "--format", "json"]);
    let v = json(&o);
    let names = harness::account_names(&v);
    assert_eq!(names, ["acme", "zeta"]);
    assert_eq!(v[0]["anchor"].as_str(), Some("2026-01-31T09:00:00Z"));
    assert_eq!(v[1]["lead_credits"]["limit"].as_str(), Some("unlimited"));

    let o = run(&store, &["account", "show", "ghost"]);
    harness::assert_exit(&o, 1);
}

/// Issue 13, item 4: `account subscribe` with a back-dated anchor reports the
/// cycle containing now; a future anchor is refused and creates nothing.
#[test]
fn a_back_dated_anchor_reports_the_current_cycle_and_a_future_one_is_refused() {
    let (_dir, store) = harness::temp_path("cg.redb");
    let anchor = rfc3339(Utc::now() - Duration::days(400));
    let o = run(
        &store,
        &words(&format!(
            "account subscribe acme --plan base --anchor {anchor} --format json"
        )),
    );
    harness::assert_exit(&o, 0);
    let resets_at = json(&o)["email_credits"]["resets_at"]
        .as_str()
        .expect("resets_at")
        .to_owned();
    let resets_at = chrono::DateTime::parse_from_rfc3339(&resets_at).expect("an instant");
    assert!(resets_at > Utc::now(), "{resets_at}");
    assert!(resets_at < Utc::now() + Duration::days(32), "{resets_at}");

    let future = rfc3339(Utc::now() + Duration::days(30));
    let o = run(
        &store,
        &words(&format!(
            "account subscribe globex --plan base --anchor {future}"
        )),
    );
    assert_ne!(o.status.code(), Some(0));
    harness::assert_stderr_has(&o, "is in the future");
    let o = run(&store, &["account", "show", "globex"]);
    assert_eq!(o.status.code(), Some(1), "nothing was created");
}

#[test]
fn an_unreadable_anchor_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let o = cli(
        &dir.path().join("cg.redb"),
        "account subscribe a --plan base --anchor yesterday",
    );
    harness::assert_exit(&o, 2);
    harness::assert_stderr_has(&o, "--anchor: expected an RFC 3339 timestamp");
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
    harness::assert_exit(&o, 0);
    run(store, &["usage", "acme"])
}

#[test]
fn usage_json_has_the_replay_objects() {
    let (_dir, store) = harness::temp_path("cg.redb");
    with_sends(&store, 3);
    let o = run(&store, &["usage", "acme", "--format", "json"]);
    harness::assert_exit(&o, 0);
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
    harness::assert_has(&text, "100 / 6000  (1.7%)");
    harness::assert_has(&text, "resets ");
    assert!(!text.contains('⚠'), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour when piped: {text:?}");

    let warm = stdout(&with_sends(&dir.path().join("warm.redb"), 4_800));
    harness::assert_has(&warm, "⚠ email credits at 80%: 1200 left");

    let spent = stdout(&with_sends(&dir.path().join("spent.redb"), 6_000));
    harness::assert_has(&spent, "6000 / 6000  (100.0%)");
    harness::assert_has(&spent, "⚠ email credits exhausted: 6000 of 6000 used");
}

#[test]
fn a_store_in_use_is_reported_not_waited_on() {
    let (_dir, store) = harness::temp_path("busy.redb");
    let _held = creditgate::store::RedbStore::open(&store).expect("opens");
    let o = run(&store, &["account", "list"]);
    harness::assert_exit(&o, 75);
    harness::assert_stderr_has(&o, "in use by another process");
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
        "75  unavailable",
    ] {
        harness::assert_has(&text, line);
    }
}

// ---- one error format, one JSON document, whole-second anchors (issue 13.10) ----

/// The one error line of a failed command, and that it was the only output.
fn only_error(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(stdout(o), "", "nothing on stdout when a command fails");
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    err
}

#[test]
fn an_unknown_account_is_the_same_error_from_every_command() {
    let (dir, store) = harness::temp_path("cg.redb");
    let csv = harness::write_file(dir.path(), "leads.csv", "email\na@x.io\n");
    let csv = csv.to_str().expect("utf-8");
    // A ledger with another account: only a store that exists is asked about ghost.
    let o = run(&store, &["account", "subscribe", "acme", "--plan", "base"]);
    harness::assert_exit(&o, 0);
    let expected = "creditgate: error: account \"ghost\": denied: unknown_account \
                    (no such account: subscribe it to a plan first)\n";
    for args in [
        &["account", "show", "ghost"][..],
        &["account", "change-plan", "ghost", "--plan", "pro"],
        &["usage", "ghost"],
        &["usage", "ghost", "--format", "json"],
        &["leads", "list", "--account", "ghost"],
        &["leads", "campaigns", "--account", "ghost"],
        &words("leads delete --account ghost --campaign c --all"),
        &words("leads delete --account ghost --campaign c --email a@x.io"),
        &words(&format!("leads import --account ghost --campaign c {csv}")),
        &words(&format!(
            "leads import --account ghost --campaign c --format json {csv}"
        )),
    ] {
        let o = run(&store, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert_eq!(only_error(&o), expected, "{args:?}");
    }
}

#[test]
fn a_usage_error_has_the_same_prefix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let o = run(&dir.path().join("cg.redb"), &["account", "show"]);
    harness::assert_exit(&o, 2);
    harness::assert_starts(&stderr(&o), "creditgate: error: ");
}

#[test]
fn alerts_list_json_is_one_array_even_when_empty() {
    let (dir, store) = harness::temp_path("cg.redb");
    let o = run(&store, &["account", "subscribe", "seed", "--plan", "base"]);
    harness::assert_exit(&o, 0);
    let o = run(&store, &["alerts", "list", "--format", "json"]);
    harness::assert_exit(&o, 0);
    assert_eq!(json(&o), serde_json::json!([]));

    // Alerts are recorded by the gateway: base has 6000 email credits, and
    // 4,800 sends cross the 80% alert.
    let gateway = Gateway::start(dir.path(), &store, &[]);
    let o = run(
        &store,
        &[
            "account",
            "subscribe",
            "acme",
            "--plan",
            "base",
            "--server",
            &gateway.url,
        ],
    );
    harness::assert_exit(&o, 0);
    send_emails(&gateway.url, "acme", 4_800);
    gateway.stop();
    let o = run(&store, &["alerts", "list", "--format", "json"]);
    let v = json(&o);
    let alerts = v.as_array().expect("one array");
    assert_eq!(alerts.len(), 1, "{v}");
    assert_eq!(alerts[0]["account"], "acme");
    assert_eq!(alerts[0]["credit"], "email_credits");
    assert_eq!(alerts[0]["threshold"], 80);
}

/// Emails to `count` recipients in all, in messages of at most a decision's
/// 1,000, decided by the gateway at `url`.
pub(crate) fn send_emails(url: &str, account: &str, count: usize) {
    let to: Vec<String> = (0..count).map(|i| format!("r{i}@example.com")).collect();
    let api = Client::with_timeout(url, std::time::Duration::from_secs(60));
    for message in to.chunks(creditgate::http::MAX_RECIPIENTS) {
        let body = serde_json::json!({ "account": account, "to": message });
        let answer = api.post("/v1/decide/email", &body.to_string());
        let v = answer.json();
        assert_eq!(v["decision"], "allow", "{v}");
    }
}

#[test]
fn account_show_json_is_the_account_object_with_plan_and_anchor() {
    let (_dir, store) = harness::temp_path("cg.redb");
    let anchor = "2026-01-31T09:00:00Z";
    let o = run(
        &store,
        &words(&format!(
            "account subscribe acme --plan base --anchor {anchor}"
        )),
    );
    harness::assert_exit(&o, 0);
    let show = json(&run(
        &store,
        &["account", "show", "acme", "--format", "json"],
    ));
    assert_eq!(show["account"], "acme");
    assert_eq!(show["plan"], "base");
    assert_eq!(show["anchor"], anchor);
    assert_eq!(show["lead_credits"]["limit"], 2000);
    // `usage --format json` prints the same object.
    let usage = json(&run(&store, &["usage", "acme", "--format", "json"]));
    assert_eq!(show, usage);
}

#[test]
fn a_default_anchor_is_a_whole_second() {
    let (_dir, store) = harness::temp_path("cg.redb");
    let o = cli(&store, "account subscribe acme --plan base --format json");
    harness::assert_exit(&o, 0);
    let anchor = json(&o)["anchor"].as_str().expect("anchor").to_owned();
    // 2026-12-06T17:00:00Z: 20 characters, no fraction.
    assert_eq!(anchor.len(), 20, "{anchor}");
    assert!(!anchor.contains('.'), "{anchor}");
    let text = stdout(&run(&store, &["account", "show", "acme"]));
    harness::assert_has(&text, &format!("anchor         {anchor}\n"));
}

// ---- the policy in force (audit E.1) -------------------------------------------

/// Starts `serve` on `store` under `policy` (HTTP only) with `env`, and stops it
/// once it has started: what a gateway leaves in its store for the commands.
fn serve_once(dir: &Path, store: &Path, policy: &Path, env: &[(&str, &str)]) -> String {
    let mut builder = ServeProcess::builder(env!("CARGO_BIN_EXE_creditgate"), dir.join("once.log"))
        .arg("--store")
        .arg(store)
        .arg("--policy")
        .arg(policy)
        .current_dir(harness::repo())
        .postfix(false);
    for (name, value) in env {
        builder = builder.env(name, value);
    }
    builder.start().terminate().1
}

#[test]
fn commands_on_a_gateways_store_decide_under_the_policy_it_serves() {
    let (dir, store) = harness::temp_path("cg.redb");
    // The gateway's base plan holds 3 leads; the policy file a command finds in
    // the directory it runs in (policies/smartlead.toml) says 2,000.
    let small = harness::SMARTLEAD.replacen("lead_credits = 2000", "lead_credits = 3", 1);
    let policy = harness::write_file(dir.path(), "small.toml", &small);
    // A first start creates the ledger, and says so: at any other start, that
    // would be the wrong path.
    let log = serve_once(dir.path(), &store, &policy, &[]);
    harness::assert_has(&log, "a new, empty ledger is created");

    let o = cli(&store, "account subscribe acme --plan base");
    harness::assert_exit(&o, 0);
    let five = "email\na@x.io\nb@x.io\nc@x.io\nd@x.io\ne@x.io\n";
    let csv = harness::write_file(dir.path(), "five.csv", five);
    let import = |rest: &str| {
        cli(
            &store,
            &format!("leads import --account acme {rest} {}", csv.display()),
        )
    };
    let o = import("--campaign c1 --format json");
    harness::assert_exit(&o, 0);
    let report = json(&o);
    assert_eq!(report["uploaded"], 3, "{report}");
    assert_eq!(report["credits_exhausted"], 2, "{report}");
    assert_eq!(report["lead_credits"]["limit"], 3, "{report}");

    // Another policy file is refused, and nothing is decided under it.
    let o = import("--campaign c2 --policy policies/smartlead.toml");
    assert!(!o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    harness::assert_has(&err, "policies/smartlead.toml (sha256 ");
    harness::assert_has(&err, "is not the policy in force on this store");
    harness::assert_has(&err, "small.toml");
    let usage = json(&cli(&store, "usage acme --format json"));
    assert_eq!(usage["lead_credits"]["used"], 3, "{usage}");
    assert_eq!(usage["lead_credits"]["limit"], 3, "{usage}");

    // The same file, named, is the policy in force.
    let small_arg = policy.to_str().expect("utf-8");
    let o = run(&store, &["usage", "acme", "--policy", small_arg]);
    harness::assert_exit(&o, 0);

    // A gateway started on other terms says so, and its terms are in force.
    let smartlead = harness::repo().join("policies/smartlead.toml");
    let log = serve_once(dir.path(), &store, &smartlead, &[]);
    harness::assert_has(&log, "every gateway on one store must run the same policy");
    assert!(!log.contains("a new, empty ledger"), "{log}");
    let usage = json(&cli(&store, "usage acme --format json"));
    assert_eq!(usage["lead_credits"]["limit"], 2000, "{usage}");
}

#[test]
fn a_command_that_takes_names_otherwise_than_the_gateway_is_refused() {
    let (dir, store) = harness::temp_path("cg.redb");
    let policy = harness::repo().join("policies/smartlead.toml");
    serve_once(
        dir.path(),
        &store,
        &policy,
        &[("CREDITGATE_CASE_SENSITIVE_NAMES", "1")],
    );
    let sensitive = [("CREDITGATE_CASE_SENSITIVE_NAMES", "1")];
    let o = run_with(
        &store,
        &words("account subscribe Acme --plan pro"),
        &sensitive,
    );
    harness::assert_exit(&o, 0);

    // Lowercased, `Acme` would be `acme`: another account than the gateway's.
    let o = cli(&store, "account change-plan Acme --plan base");
    assert!(!o.status.success(), "{}", stdout(&o));
    harness::assert_has(
        &stderr(&o),
        "set CREDITGATE_CASE_SENSITIVE_NAMES=1 to work on it",
    );
    let o = run_with(
        &store,
        &words("account show Acme --format json"),
        &sensitive,
    );
    harness::assert_exit(&o, 0);
    assert_eq!(json(&o)["plan"], "pro");
}

// ---- store copy over a live store (audit E.2) ------------------------------------

#[test]
fn a_copy_that_would_take_back_what_a_store_counted_is_refused() {
    let (dir, live) = harness::temp_path("live.redb");
    let backup = dir.path().join("backup.redb");
    let at = rfc3339(Utc::now());
    let event = |line: String| harness::write_file(dir.path(), "events.jsonl", line + "\n");
    let replay = |events: &Path| {
        let line = format!(
            "replay --store {} --events {}",
            live.display(),
            events.display()
        );
        let o = cli(&live, &line);
        harness::assert_exit(&o, 0);
        stdout(&o)
    };
    replay(&event(format!(
        r#"{{"at": "{at}", "op": "subscribe", "account": "acme", "plan": "base"}}"#
    )));
    let copy = |extra: &[&str]| {
        let (from, to) = (
            backup.to_str().expect("utf-8"),
            live.to_str().expect("utf-8"),
        );
        run(
            &live,
            &[&["store", "copy", "--from", from, "--to", to][..], extra].concat(),
        )
    };
    // The backup: the account before it sent anything.
    let o = run(
        &live,
        &[
            "store",
            "copy",
            "--from",
            live.to_str().expect("utf-8"),
            "--to",
            backup.to_str().expect("utf-8"),
        ],
    );
    harness::assert_exit(&o, 0);

    let send = event(format!(
        r#"{{"at": "{at}", "op": "send_email", "account": "acme", "to": ["a@x.io", "b@x.io"], "kind": "first", "message_id": "<m1@acme>"}}"#
    ));
    harness::assert_has(&replay(&send), r#""charged":2"#);

    // Restoring the backup would sell the two credits again and charge m1 twice.
    let o = copy(&["--force"]);
    assert!(!o.status.success(), "{}", stdout(&o));
    let err = stderr(&o);
    harness::assert_has(&err, "1 account(s) of ");
    harness::assert_has(
        &err,
        "acme: 1 counter(s) back by 2 in all, 1 idempotency marker(s) dropped",
    );
    harness::assert_has(&err, "pass --roll-back with --force");
    harness::assert_has(&replay(&send), r#""charged":0"#);

    // Asked for, it is done, and does what the refusal said.
    harness::assert_exit(&copy(&["--force", "--roll-back"]), 0);
    harness::assert_has(&replay(&send), r#""charged":2"#);
}

// ---- plans and serve --check (issue 13.9) -------------------------------------

#[test]
fn plans_lists_the_policy_in_force() {
    let dir = tempfile::tempdir().expect("temp dir");
    let o = run(&dir.path().join("cg.redb"), &["plans", "--format", "json"]);
    harness::assert_exit(&o, 0);
    let v = json(&o);
    let plans = v["plans"].as_array().expect("plans");
    let base = plans
        .iter()
        .find(|p| p["name"] == "base")
        .unwrap_or_else(|| panic!("no base plan: {v}"));
    assert_eq!(base["lead_credits"], 2000);
    assert_eq!(base["email_credits"], 6000);
    assert!(
        plans
            .iter()
            .any(|p| p["lead_credits"] == "unlimited" && p["name"] == "unlimited_prime"),
        "{v}"
    );
    let text = stdout(&run(&dir.path().join("cg.redb"), &["plans"]));
    harness::assert_starts(&text, "PLAN");
    harness::assert_has(&text, "base");
}

#[test]
fn serve_check_validates_without_creating_the_store() {
    let (dir, store) = harness::temp_path("new.redb");
    let store_arg = store.to_str().expect("utf-8");
    let o = run(&store, &["serve", "--check", "--store", store_arg]);
    harness::assert_exit(&o, 0);
    let text = stdout(&o);
    for line in [
        "config ",
        "component  built-in: ok",
        "policy ",
        "store ",
        "serve --check: valid",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    harness::assert_has(&text, "does not exist yet");
    assert!(!store.exists(), "--check created the store");

    // An existing store is opened read-only.
    let o = run(&store, &["account", "subscribe", "acme", "--plan", "base"]);
    harness::assert_exit(&o, 0);
    let o = run(&store, &["serve", "--check", "--store", store_arg]);
    harness::assert_exit(&o, 0);
    harness::assert_stdout_has(&o, "opened read-only");

    // A broken policy: the error with its place, non-zero.
    let policy = harness::write_file(
        dir.path(),
        "broken.toml",
        "[plans.base]\nlead_credits = \"lots\"\n",
    );
    let policy = policy.to_str().expect("utf-8");
    let o = run(
        &store,
        &words(&format!(
            "serve --check --store {store_arg} --policy {policy}"
        )),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    harness::assert_stderr_has(&o, "broken.toml:");

    // A config with an unknown key.
    let config = harness::write_file(dir.path(), "serve.toml", "http_listn = \"127.0.0.1:1\"\n");
    let config = config.to_str().expect("utf-8");
    let o = run(&store, &["serve", "--check", "--config", config]);
    harness::assert_exit(&o, 2);
    harness::assert_stderr_has(&o, "http_listn");
}

#[test]
fn serve_check_fails_a_policy_that_lacks_a_plan_accounts_are_on() {
    let (dir, store) = harness::temp_path("cg.redb");
    harness::assert_exit(&cli(&store, "account subscribe acme --plan pro"), 0);
    let store_arg = store.to_str().expect("utf-8");
    let o = run(&store, &["serve", "--check", "--store", store_arg]);
    harness::assert_exit(&o, 0);
    harness::assert_stdout_has(&o, "every account is on a plan of the policy");

    // Audit E.3: a restart under this policy would deny acme on every request.
    let no_pro = harness::SMARTLEAD.replace("[plans.pro]", "[plans.pro_v2]");
    let policy = harness::write_file(dir.path(), "no-pro.toml", no_pro);
    let line = format!(
        "serve --check --store {store_arg} --policy {}",
        policy.display()
    );
    let o = cli(&store, &line);
    harness::assert_exit(&o, 1);
    harness::assert_stdout_has(&o, "error: plan \"pro\" is not in ");
    harness::assert_stdout_has(&o, "and 1 account(s) are on it");
    harness::assert_stdout_has(&o, "serve --check: invalid");
}

// ---- --server: the commands against a running gateway (issue 13.8) --------------

/// `creditgate serve` on a redb store with only the HTTP API, on a port it binds
/// itself, read back from its log. A process, not the in-process server: the
/// store is held by another process, as the commands' hints say.
pub(crate) struct Gateway {
    serve: ServeProcess,
    pub url: String,
}

impl Gateway {
    pub(crate) fn start(dir: &Path, store: &Path, env: &[(&str, &str)]) -> Gateway {
        let mut builder =
            ServeProcess::builder(env!("CARGO_BIN_EXE_creditgate"), dir.join("serve.log"))
                .arg("--store")
                .arg(store)
                .current_dir(harness::repo())
                .env("RUST_LOG", "info")
                .postfix(false);
        for (name, value) in env {
            builder = builder.env(name, value);
        }
        let serve = builder.start();
        Gateway {
            url: serve.http_url(),
            serve,
        }
    }

    /// Stops serve with SIGTERM; its log.
    pub(crate) fn stop(self) -> String {
        self.serve.terminate().1
    }
}

/// The admin token the remote tests' gateways require.
pub(crate) const TOKEN: &str = "operator-test-token-0123456789";

#[test]
fn a_store_held_by_serve_names_it_and_the_server_flag() {
    let (dir, store) = harness::temp_path("cg.redb");
    let gateway = Gateway::start(dir.path(), &store, &[]);
    let o = run(&store, &["account", "list"]);
    harness::assert_exit(&o, 75);
    let err = only_error(&o);
    harness::assert_has(&err, "is in use by a running `creditgate serve` (pid ");
    harness::assert_has(&err, &format!("pass --server {} ", gateway.url));
    // serve --check on the store in use says so, and does not fail.
    let store_arg = store.to_str().expect("utf-8");
    let o = run(&store, &["serve", "--check", "--store", store_arg]);
    harness::assert_exit(&o, 0);
    harness::assert_stdout_has(&o, "in use by another process");
    gateway.stop();
}

#[test]
fn account_and_lead_commands_work_against_a_running_gateway() {
    let (dir, store) = harness::temp_path("cg.redb");
    let gateway = Gateway::start(dir.path(), &store, &[("CREDITGATE_ADMIN_TOKEN", TOKEN)]);
    let url = gateway.url.clone();
    let token = [("CREDITGATE_ADMIN_TOKEN", TOKEN)];
    let remote = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", &url]);
        run_with(&store, &all, &token)
    };

    // Without the token, the admin routes are refused with the way out.
    let o = run(
        &store,
        &words(&format!(
            "account subscribe acme --plan base --server {url}"
        )),
    );
    harness::assert_exit(&o, 2);
    harness::assert_has(&only_error(&o), "$CREDITGATE_ADMIN_TOKEN");

    let o = remote(&words(
        "account subscribe acme --plan base --anchor 2026-01-31T09:00:00Z",
    ));
    harness::assert_exit(&o, 0);
    harness::assert_starts(&stdout(&o), "acme: subscribed to plan base\n");
    harness::assert_stdout_has(&o, "anchor         2026-01-31T09:00:00Z");

    let o = remote(&["account", "subscribe", "acme", "--plan", "pro"]);
    harness::assert_exit(&o, 1);
    assert!(
        only_error(&o)
            .starts_with("creditgate: error: account \"acme\": denied: already_subscribed"),
        "{}",
        stderr(&o)
    );

    let o = remote(&words("account change-plan acme --plan pro --format json"));
    harness::assert_exit(&o, 0);
    let v = json(&o);
    assert_eq!(
        (v["plan"].as_str(), v["anchor"].as_str()),
        (Some("pro"), Some("2026-01-31T09:00:00Z"))
    );

    let o = remote(&["account", "show", "acme", "--format", "json"]);
    assert_eq!(json(&o)["lead_credits"]["limit"], 30_000);

    // The same unknown-account error as without --server.
    let o = remote(&["usage", "ghost"]);
    harness::assert_exit(&o, 1);
    assert_eq!(
        only_error(&o),
        "creditgate: error: account \"ghost\": denied: unknown_account \
         (no such account: subscribe it to a plan first)\n"
    );

    // $CREDITGATE_SERVER stands for --server.
    let o = run_with(&store, &["usage", "acme"], &[("CREDITGATE_SERVER", &url)]);
    harness::assert_exit(&o, 0);
    harness::assert_stdout_has(&o, "plan pro");

    // An import of 2,500 rows goes in batches of at most 1,000 addresses, and
    // reports as a local import of the same file does.
    let mut csv = String::from("name,email\n");
    for i in 0..2_500 {
        match i {
            7 => csv += "seven,not-an-address\n",
            // A row repeating one of the first batch, in the third.
            2_100 => csv += "again,lead3@example.com\n",
            _ => csv += &format!("n{i},lead{i}@example.com\n"),
        }
    }
    let file = harness::write_file(dir.path(), "leads.csv", &csv);
    let file = file.to_str().expect("utf-8");
    let o = remote(&words(&format!(
        "leads import --account acme --campaign spring {file} --format json"
    )));
    harness::assert_exit(&o, 0);
    let remote_report = json(&o);
    assert_eq!(remote_report["rows"], 2_500);
    assert_eq!(remote_report["uploaded"], 2_498);
    assert_eq!(remote_report["duplicates_in_file"], 1);
    assert_eq!(remote_report["invalid"], 1);
    assert_eq!(remote_report["invalid_rows"][0]["line"], 9);
    assert_eq!(remote_report["lead_credits"]["used"], 2_498);

    let local_store = dir.path().join("local.redb");
    run(
        &local_store,
        &["account", "subscribe", "acme", "--plan", "pro"],
    );
    let o = run(
        &local_store,
        &words(&format!(
            "leads import --account acme --campaign spring {file} --format json"
        )),
    );
    harness::assert_exit(&o, 0);
    assert_eq!(remote_report, json(&o), "the same report as a local import");

    // Again: every address already there.
    let o = remote(&words(&format!(
        "leads import --account acme --campaign spring {file}"
    )));
    harness::assert_exit(&o, 0);
    harness::assert_stdout_has(&o, "already in this campaign");

    let o = remote(&words(
        "leads delete --account acme --campaign spring --email lead1@example.com",
    ));
    harness::assert_exit(&o, 0);
    harness::assert_starts(
        &stdout(&o),
        "freed 1 lead credit; lead credits used: 2497 of 30000",
    );

    let o = remote(&words(&format!(
        "leads import --account acme --campaign spring {file} --dry-run"
    )));
    harness::assert_exit(&o, 2);
    harness::assert_has(&only_error(&o), "--dry-run");

    let o = remote(&["reload"]);
    harness::assert_exit(&o, 0);
    harness::assert_stdout_has(&o, "reloaded: policy version");

    // What the gateway did is in the store it holds.
    gateway.stop();
    let v = json(&run(&store, &["usage", "acme", "--format", "json"]));
    assert_eq!(v["lead_credits"]["used"], 2_497);
}

/// An unavailable store or gateway exits 75 (sysexits' EX_TEMPFAIL), not 2: a
/// script retries the one and fixes its arguments for the other.
#[test]
fn an_unavailable_backend_or_gateway_has_its_own_exit_status() {
    let (_dir, store) = harness::temp_path("cg.redb");
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port")
            .port()
    };

    // A Redis store nothing answers for.
    let redis = format!("redis://127.0.0.1:{}", port());
    let o = run(&store, &["account", "list", "--store", &redis]);
    harness::assert_exit(&o, 75);
    harness::assert_has(&only_error(&o), "cannot connect");

    // A gateway that answers, but cannot decide now (its store is down).
    let body = r#"{"error":{"code":"store_unavailable","message":"redis down"}}"#;
    let (url, server) = fake_gateway(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    let o = run_with(
        &store,
        &["usage", "acme", "--server", &url],
        &[("CREDITGATE_ADMIN_TOKEN", TOKEN)],
    );
    let head = server.join().expect("the fake gateway answered");
    harness::assert_exit(&o, 75);
    harness::assert_has(&only_error(&o), "redis down (store_unavailable)");
    // Audit G.4: a read never carries the admin token.
    assert!(
        !head.to_ascii_lowercase().contains("authorization"),
        "{head}"
    );

    // What is wrong with the command itself stays 2, store or no store.
    let o = run(&store, &["usage", "acme", "--server", "https://x"]);
    harness::assert_exit(&o, 2);
}

/// A one-request gateway on loopback that answers `answer` (a whole HTTP
/// response) and hands back the request's head.
fn fake_gateway(answer: String) -> (String, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let server = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let (stream, _) = listener.accept().expect("a request");
        let mut reader = BufReader::new(stream);
        // The request's head, up to its blank line (a body is left unread).
        let (mut head, mut line) = (String::new(), String::new());
        while reader.read_line(&mut line).expect("reads") > 2 {
            head.push_str(&line);
            line.clear();
        }
        reader
            .get_mut()
            .write_all(answer.as_bytes())
            .expect("answers");
        head
    });
    (url, server)
}

/// Audit G.4: a redirect turned `reload`'s POST into a GET elsewhere, whose
/// answer was reported as a reload. The client follows none.
#[test]
fn a_redirect_is_not_followed_by_the_command_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (url, server) = fake_gateway(
        "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/v1/admin/reload\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n"
            .to_owned(),
    );
    let o = run_with(
        &dir.path().join("cg.redb"),
        &["reload", "--server", &url],
        &[("CREDITGATE_ADMIN_TOKEN", TOKEN)],
    );
    let head = server.join().expect("the fake gateway answered");
    assert!(head.starts_with("POST /v1/admin/reload"), "{head}");
    assert!(!o.status.success(), "{}", stdout(&o));
    harness::assert_has(&only_error(&o), "status 302");
}

#[test]
fn a_server_that_is_not_there_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let o = run(
        &dir.path().join("cg.redb"),
        &["usage", "acme", "--server", &url],
    );
    harness::assert_exit(&o, 75);
    assert!(
        only_error(&o).starts_with(&format!(
            "creditgate: error: cannot reach the gateway at {url}"
        )),
        "{}",
        stderr(&o)
    );
    // Two places to work on: refused, not guessed between.
    let o = run(
        &dir.path().join("cg.redb"),
        &["usage", "acme", "--server", &url, "--store", "memory"],
    );
    harness::assert_exit(&o, 2);
    harness::assert_has(&only_error(&o), "--server and --store");
    // An explicit --store wins over $CREDITGATE_SERVER.
    let o = run_with(
        &dir.path().join("cg.redb"),
        &["account", "list", "--store", "memory", "--format", "json"],
        &[("CREDITGATE_SERVER", &url)],
    );
    harness::assert_exit(&o, 0);
    assert_eq!(json(&o), serde_json::json!([]));
    let o = run(
        &dir.path().join("cg.redb"),
        &["usage", "acme", "--server", "https://x"],
    );
    harness::assert_exit(&o, 2);
    harness::assert_stderr_has(&o, "expected http://HOST:PORT");
}

/// Issue 14.6: names are checked and normalised by the one rule on the command
/// line too; a refused one is a usage error that quotes it escaped.
#[test]
fn account_names_follow_the_one_rule() {
    let (_dir, store) = harness::temp_path("cg.redb");
    let o = run(
        &store,
        &["account", "subscribe", " ACME ", "--plan", "base"],
    );
    harness::assert_exit(&o, 0);
    harness::assert_starts(&stdout(&o), "acme: subscribed");
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
    harness::assert_exit(&o, 1);
    harness::assert_stderr_has(
        &o,
        "no plan \"platinum\" in the policy; its plans are: \"base\", ",
    );
}

/// Issue 14.6: names stored before the rule (or by another component) are listed
/// escaped, one row per account, whatever they hold.
#[test]
fn account_list_escapes_every_name() {
    let (_dir, path) = harness::temp_path("cg.redb");
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
            let request = harness::subscription(account, "base");
            let d = worker
                .decide(&request, 1_700_000_000_000_000_000)
                .expect("decides");
            assert_eq!(d.denied, None, "{account:?}");
        }
        worker.persist().expect("durable");
    }
    let o = run(&path, &["account", "list"]);
    harness::assert_exit(&o, 0);
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
