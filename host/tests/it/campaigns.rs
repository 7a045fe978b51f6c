//! Issue 17, items 1 and 2, through the component: the credits each campaign
//! would free (`exclusive`), dry runs of deletions that report exactly what the
//! deletion then does, and when email credits run out at the current pace.

use std::sync::Arc;

use creditgate::http::HttpOptions;
use creditgate::store::{MemoryStore, RedbStore, Store};
use serde_json::{Value, json};

use crate::harness::{self, words};
use crate::http::{Api, code};

fn campaigns(api: &Api, account: &str) -> Value {
    let (status, body) = api.get(&format!("/v1/accounts/{account}/campaigns"));
    assert_eq!(status, 200, "{body}");
    body
}

fn delete_all(api: &Api, account: &str, campaign: &str, query: &str) -> (u16, Value) {
    api.delete(&format!(
        "/v1/accounts/{account}/campaigns/{campaign}/leads{query}"
    ))
}

fn delete_one(api: &Api, account: &str, campaign: &str, email: &str, query: &str) -> (u16, Value) {
    api.delete(&format!(
        "/v1/accounts/{account}/campaigns/{campaign}/leads/{email}{query}"
    ))
}

/// A dry run's answer, without its `dry_run` flag, which the real one lacks.
fn without_flag(mut dry: Value) -> Value {
    let flag = dry.as_object_mut().and_then(|o| o.remove("dry_run"));
    assert_eq!(flag, Some(json!(true)), "a dry run says so: {dry}");
    dry
}

/// A dry run, then the real deletion: the same answer, and the dry run changed
/// nothing (campaigns and usage as before it).
fn dry_then_real(api: &Api, delete: impl Fn(&str) -> (u16, Value)) -> Value {
    let before = (campaigns(api, "acme"), api.usage("acme").1);
    let (status, dry) = delete("?dry_run=true");
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (campaigns(api, "acme"), api.usage("acme").1),
        before,
        "the dry run changed nothing"
    );
    let (status, real) = delete("");
    assert_eq!(status, 200, "{real}");
    assert_eq!(real.get("dry_run"), None, "{real}");
    assert_eq!(without_flag(dry), real, "the dry run reported the deletion");
    real
}

fn exclusive_counts_and_dry_runs(store: Arc<dyn Store>) {
    let api = Api::start(store, HttpOptions::default());
    assert_eq!(api.subscribe("acme", "large").0, 201);
    // a only in q1; b in q1 and q2; c in q1 and q3; d only in q2.
    assert_eq!(
        api.leads("acme", "q1", &["a@x.io", "b@x.io", "c@x.io"]).0,
        200
    );
    assert_eq!(api.leads("acme", "q2", &["b@x.io", "d@x.io"]).0, 200);
    assert_eq!(api.leads("acme", "q3", &["c@x.io"]).0, 200);
    assert_eq!(
        campaigns(&api, "acme"),
        json!({"account": "acme", "campaigns": [
            {"campaign": "q1", "leads": 3, "exclusive": 1},
            {"campaign": "q2", "leads": 2, "exclusive": 1},
            {"campaign": "q3", "leads": 1, "exclusive": 0}]})
    );

    // q1's exclusive count is what deleting its leads frees.
    let real = dry_then_real(&api, |q| delete_all(&api, "acme", "q1", q));
    assert_eq!(real["freed"], 1, "{real}");
    assert_eq!(real["lead_credits"]["used"], 3, "{real}");
    // b and c are now q2's and q3's alone.
    assert_eq!(
        campaigns(&api, "acme")["campaigns"],
        json!([
            {"campaign": "q2", "leads": 2, "exclusive": 2},
            {"campaign": "q3", "leads": 1, "exclusive": 1}])
    );

    // One lead: held elsewhere frees nothing; alone frees its credit; absent
    // frees nothing. Each dry run reports what the deletion then does.
    assert_eq!(api.leads("acme", "q3", &["d@x.io"]).0, 200);
    for (campaign, email, freed) in [
        ("q2", "d@x.io", 0),
        ("q2", "b@x.io", 1),
        ("q2", "nobody@x.io", 0),
        ("q3", "d@x.io", 1),
    ] {
        let real = dry_then_real(&api, |q| delete_one(&api, "acme", campaign, email, q));
        assert_eq!(real["freed"], freed, "{campaign}/{email}: {real}");
    }
    assert_eq!(
        campaigns(&api, "acme")["campaigns"],
        json!([{"campaign": "q3", "leads": 1, "exclusive": 1}])
    );

    // A dry run of an unknown account is refused as the deletion is.
    let (status, body) = delete_all(&api, "nobody", "q1", "?dry_run=true");
    assert_eq!((status, code(&body)), (404, "unknown_account"), "{body}");
    let (status, body) = delete_all(&api, "acme", "q3", "?dry_run=maybe");
    assert_eq!((status, code(&body)), (400, "invalid_query"), "{body}");
    assert_eq!(campaigns(&api, "acme")["campaigns"][0]["leads"], 1);
}

#[test]
fn exclusive_counts_and_dry_runs_on_memory() {
    exclusive_counts_and_dry_runs(Arc::new(MemoryStore::new()));
}

#[test]
fn exclusive_counts_and_dry_runs_on_redb() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(&dir.path().join("s.redb")).expect("opens");
    exclusive_counts_and_dry_runs(Arc::new(store));
}

/// The usage route's projection, from the component: none before anything is
/// sent, an instant before the reset once the pace would use the credits up.
#[test]
fn usage_projects_when_email_credits_run_out() {
    let api = Api::memory();
    assert_eq!(api.subscribe("acme", "large").0, 201);
    let (_, usage) = api.usage("acme");
    assert_eq!(
        usage["email_credits"]["projected_exhaustion"],
        Value::Null,
        "nothing sent: {usage}"
    );
    assert_eq!(usage["lead_credits"].get("projected_exhaustion"), None);
    let (status, sent) = api.email(json!({"account": "acme", "to": ["a@x.io", "b@x.io"]}));
    assert_eq!(status, 200, "{sent}");
    assert_eq!(
        sent["email_credits"].get("projected_exhaustion"),
        None,
        "decisions are unchanged: {sent}"
    );
    let (_, usage) = api.usage("acme");
    let email = &usage["email_credits"];
    let projected = email["projected_exhaustion"]
        .as_str()
        .unwrap_or_else(|| panic!("2 of 20 within seconds runs out before the reset: {usage}"));
    let resets = email["resets_at"].as_str().expect("resets_at");
    let at = |t: &str| creditgate::time::parse_instant(t).expect("an instant");
    assert!(at(projected) < at(resets), "{usage}");
    // The cycle started at the subscription (the anchor): the pace is counted from it.
    assert!(
        at(projected) >= at(usage["anchor"].as_str().expect("anchor")),
        "{usage}"
    );
}

/// The command line, on a store file: `leads campaigns` with `exclusive`, a
/// `--dry-run` deletion that reports what the deletion then does (JSON and
/// text), and `usage` with the projection.
#[test]
fn the_cli_lists_exclusive_leads_and_dry_runs_deletions() {
    let (_dir, store) = harness::temp_path("s.redb");
    let store = store.to_str().expect("utf-8 path");
    let run = |args: &[&str], stdin: &str| {
        let mut command = crate::harness::creditgate_command();
        command.args(args).args(["--store", store]);
        let out = crate::harness::run_with_stdin(command, stdin.as_bytes());
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        stdout
    };
    run(&["account", "subscribe", "acme", "--plan", "base"], "");
    let import = |campaign: &str, csv: &str| {
        let line = format!("leads import --account acme --campaign {campaign} -");
        run(&words(&line), csv)
    };
    import("q1", "email\na@x.io\nb@x.io\nc@x.io\n");
    import("q2", "email\nc@x.io\nd@x.io\n");
    let listed = run(&words("leads campaigns --account acme --format json"), "");
    assert_eq!(
        serde_json::from_str::<Value>(&listed).expect("JSON"),
        json!({"account": "acme", "campaigns": [
            {"campaign": "q1", "leads": 3, "exclusive": 2},
            {"campaign": "q2", "leads": 2, "exclusive": 1}]})
    );
    let table = run(&["leads", "campaigns", "--account", "acme"], "");
    harness::assert_starts(&table, "CAMPAIGN");
    harness::assert_has(&table, "EXCLUSIVE");

    let delete = words("leads delete --account acme --campaign q1 --all");
    let dry_text = run(&[&delete[..], &["--dry-run"]].concat(), "");
    assert_eq!(
        dry_text,
        "dry run, nothing changed: would free 2 lead credits; lead credits used: 2 of 2000\n"
    );
    let dry = run(
        &[&delete[..], &["--dry-run", "--format", "json"]].concat(),
        "",
    );
    assert_eq!(run(&["leads", "campaigns", "--account", "acme"], ""), table);
    let real = run(&[&delete[..], &["--format", "json"]].concat(), "");
    let dry: Value = serde_json::from_str(&dry).expect("JSON");
    let real: Value = serde_json::from_str(&real).expect("JSON");
    assert_eq!(without_flag(dry), real);
    assert_eq!(real["freed"], 2, "{real}");

    // Audit E.9: --all on a campaign the account has no leads in frees
    // nothing, and says why (a typo reads like success otherwise).
    let mut command = crate::harness::creditgate_command();
    command
        .args(words("leads delete --account acme --campaign q9 --all"))
        .args(["--store", store]);
    let out = crate::harness::run_with_stdin(command, b"");
    harness::assert_exit(&out, 0);
    harness::assert_stderr_has(
        &out,
        "account \"acme\" has no campaign \"q9\" with leads (its campaigns: q2)",
    );

    let usage: Value =
        serde_json::from_str(&run(&["usage", "acme", "--format", "json"], "")).expect("JSON");
    assert_eq!(
        usage["email_credits"]["projected_exhaustion"],
        Value::Null,
        "nothing sent: {usage}"
    );
}

/// Dry runs make instances outside the gateway's lanes, on `serve`'s bounded
/// pool. Many at once, while mail is decided and a reload comes, must neither
/// fail for want of an instance nor take one the lanes need: every dry run
/// answers what the real deletion would, and no mail decision fails.
#[test]
fn concurrent_dry_runs_stay_inside_the_instance_pool() {
    use creditgate_testkit::http::Client;

    const DRY_RUNS: usize = 48;
    let (_dir, policy) = harness::temp_path("policy.toml");
    std::fs::write(&policy, crate::http::POLICY).expect("writes");
    let server = harness::InProcess::start(
        creditgate::serve::Overrides {
            policy: Some(policy),
            ..creditgate::serve::Overrides::default()
        },
        Arc::new(MemoryStore::new()),
    );
    let client = Client::new(server.http_url());
    let subscribed = client.post("/v1/accounts/acme/subscription", r#"{"plan":"large"}"#);
    assert_eq!(subscribed.status, 201, "{}", subscribed.body);
    let leads = client.post(
        "/v1/accounts/acme/campaigns/q1/leads",
        r#"{"emails":["a@x.io","b@x.io","c@x.io"]}"#,
    );
    assert_eq!(leads.status, 200, "{}", leads.body);
    let path = "/v1/accounts/acme/campaigns/q1/leads";
    let expected = {
        let dry = client.delete(&format!("{path}?dry_run=true"));
        assert_eq!(dry.status, 200, "{}", dry.body);
        dry.json()
    };
    assert_eq!(expected["freed"], json!(3), "{expected}");

    let start = std::sync::Barrier::new(DRY_RUNS + 2);
    std::thread::scope(|s| {
        let dry_runs: Vec<_> = (0..DRY_RUNS)
            .map(|i| {
                let (client, start) = (Client::new(server.http_url()), &start);
                s.spawn(move || {
                    start.wait();
                    let dry = client.delete(&format!("{path}?dry_run=true"));
                    (i, dry.status, dry.body.clone(), dry.json())
                })
            })
            .collect();
        let mail = {
            let (client, start) = (Client::new(server.http_url()), &start);
            s.spawn(move || {
                start.wait();
                (0..40)
                    .map(|i| {
                        let body = json!({"account": "acme", "to": [format!("r{i}@y.io")]});
                        let sent = client.post("/v1/decide/email", &body.to_string());
                        (sent.status, sent.body)
                    })
                    .collect::<Vec<_>>()
            })
        };
        start.wait();
        let reloaded = client.post("/v1/admin/reload", "");
        assert_eq!(reloaded.status, 200, "{}", reloaded.body);
        for dry in dry_runs {
            let (i, status, body, answer) = dry.join().expect("the dry run's thread");
            assert_eq!(status, 200, "dry run {i}: {body}");
            // Email usage moves with the mail sent meanwhile; the rest may not.
            let without_email = |mut v: Value| {
                v.as_object_mut().map(|o| o.remove("email_credits"));
                v
            };
            assert_eq!(
                without_email(answer),
                without_email(expected.clone()),
                "dry run {i}"
            );
        }
        for (i, (status, body)) in mail
            .join()
            .expect("the mail thread")
            .into_iter()
            .enumerate()
        {
            assert_eq!(status, 200, "send {i}: {body}");
        }
    });
    let listed = client.get("/v1/accounts/acme/campaigns");
    assert_eq!(
        listed.json()["campaigns"][0]["leads"],
        3,
        "no dry run deleted: {}",
        listed.body
    );
}

/// A contact in a second campaign costs no second credit, so the store bounds
/// the campaigns one contact may be in (`MAX_GROUPS_PER_MEMBER`): an upload past
/// that is refused with a message naming the contact, applies nothing, and
/// leaves every other contact free to join.
#[test]
fn a_contact_joins_a_bounded_number_of_campaigns() {
    let api = Api::memory();
    assert_eq!(api.subscribe("acme", "large").0, 201);
    let upload = |campaign: &str, email: &str| {
        api.post(
            &format!("/v1/accounts/acme/campaigns/{campaign}/leads"),
            &json!({ "emails": [email] }).to_string(),
        )
    };
    let max = creditgate::store::MAX_GROUPS_PER_MEMBER;
    for i in 0..max {
        let (status, body) = upload(&format!("q{i}"), "ann@x.io");
        assert_eq!(status, 200, "campaign {i}: {body}");
    }
    let (status, body) = upload("past", "ann@x.io");
    assert_eq!(status, 422, "{body}");
    assert_eq!(code(&body), "invalid_argument", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("ann@x.io") && message.contains(&format!("{max} groups")),
        "{message}"
    );
    let (_, usage) = api.usage("acme");
    assert_eq!(usage["lead_credits"]["used"], json!(1), "{usage}");
    let (status, body) = upload("past", "bob@x.io");
    assert_eq!(status, 200, "another contact joins: {body}");
    let listed = campaigns(&api, "acme").to_string();
    assert!(listed.contains("\"past\""), "{listed}");
}
