//! Issue 16.3: a component with other rules than creditgate's, and another state
//! layout, runs under `serve`, its dashboard and the CLI with no host change.
//!
//! `tests/guests/domains` charges a lead credit per *domain*, keeps an account in
//! two scopes named `acct:A` and `dom:A` with campaigns as groups `c:NAME`, keeps
//! six 30-day cycles of history and warns at its policy's `warn` level. A host
//! that assumed creditgate's layout or rules would list `acct:acme` and
//! `dom:acme` as accounts, count `c:q1` as a campaign, draw twelve cycles, and
//! flag at 80%.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use crate::dashboard::{Serve, rows};
use crate::harness::{self, creditgate_command, succeeds};

const POLICY: &str = "plan small 2 10\nwarn 50\n";

fn wasm() -> &'static OsStr {
    OsStr::new(env!("CREDITGATE_DOMAINS_WASM"))
}

fn cli(args: &[&OsStr]) -> Output {
    succeeds(creditgate_command().args(args))
}

#[test]
fn a_component_with_other_rules_runs_under_serve_the_dashboard_and_the_cli() {
    let (dir, store) = harness::temp_path("store.redb");
    let policy = harness::write_file(dir.path(), "domains.policy", POLICY);
    let serve = Serve::start_with(&store, &policy, Some(Path::new(wasm())));

    serve.subscribe("acme", "small");
    serve.subscribe("beta", "small");
    let addresses = |list: &[&str]| list.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>();
    serve.leads("acme", "q1", &addresses(&["a@x.io", "b@x.io", "c@y.io"]));
    serve.leads("beta", "q1", &addresses(&["d@z.io"]));
    serve.send("acme", 3, "m");

    // The component's rule: two domains, two lead credits (creditgate's would be 3).
    let usage = serve.usage("acme");
    assert_eq!(usage["lead_credits"]["used"], 2, "{usage}");
    assert_eq!(usage["email_credits"]["used"], 3, "{usage}");

    // Its accounts, not its scopes.
    let (status, _, body) = serve.get("/v1/accounts");
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).expect("JSON");
    let names = harness::account_names(&listed["accounts"]);
    assert_eq!(names, ["acme", "beta"], "{body}");

    // Its campaigns and leads, in its terms.
    let (_, _, body) = serve.get("/v1/accounts/acme/campaigns");
    let campaigns: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        campaigns["campaigns"],
        json!([{"campaign": "q1", "leads": 3, "exclusive": 3}]),
        "{body}"
    );
    let (_, _, body) = serve.get("/v1/accounts/acme/leads?limit=2");
    let first: Value = serde_json::from_str(&body).expect("JSON");
    let cursor = first["next"].as_str().expect("a next page").to_owned();
    let (_, _, body) = serve.get(&format!("/v1/accounts/acme/leads?limit=2&after={cursor}"));
    let second: Value = serde_json::from_str(&body).expect("JSON");
    assert!(second["next"].is_null(), "{body}");
    let mut leads: Vec<(String, String)> = [&first, &second]
        .iter()
        .flat_map(|page| page["leads"].as_array().expect("leads").clone())
        .map(|l| {
            (
                l["campaign"].as_str().unwrap_or_default().to_owned(),
                l["email"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    leads.sort();
    let q1 = |e: &str| ("q1".to_owned(), e.to_owned());
    assert_eq!(leads, [q1("a@x.io"), q1("b@x.io"), q1("c@y.io")]);

    // Its warning level: beta at 50% of its lead credits is a warning here.
    let (_, _, body) = serve.get("/v1/plans");
    let plans: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        plans["warning_levels"],
        json!({"lead_credits": 50, "email_credits": 50}),
        "{body}"
    );
    let (status, _, html) = serve.get("/");
    assert_eq!(status, 200, "{html}");
    let states: Vec<(String, bool, bool)> = rows(&html)
        .into_iter()
        .map(|(name, row)| {
            (
                name,
                row.contains(r#"data-state="exhausted""#),
                row.contains(r#"data-state="warning""#),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("acme".to_owned(), true, false),
            ("beta".to_owned(), false, true)
        ],
        "{html}"
    );
    harness::assert_has(&html, "≥ 50%");

    // Its history: six slots, the current cycle in the last.
    let (status, _, page) = serve.get("/accounts/acme");
    assert_eq!(status, 200, "{page}");
    let slot = (880.0 - 56.0 - 8.0) / 6.0;
    let last = format!(r#"x="{:.1}""#, 56.0 + slot * 5.0 + slot * 0.15);
    assert!(page.contains(&last), "no bar at {last}: {page}");
    assert!(
        page.contains(r#"data-campaign="q1" data-leads="3""#),
        "{page}"
    );
    serve.stop();

    // The CLI, on the same store, through the same component.
    let local = |args: &[&str]| {
        let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        all.extend([
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--policy"),
            policy.as_os_str(),
            OsStr::new("--component"),
            wasm(),
        ]);
        String::from_utf8(cli(&all).stdout).expect("UTF-8")
    };
    let accounts: Value =
        serde_json::from_str(&local(&["account", "list", "--format", "json"])).expect("JSON");
    let names = harness::account_names(&accounts);
    assert_eq!(names, ["acme", "beta"]);
    let listed = local(&["leads", "list", "--account", "acme"]);
    let mut lines: Vec<&str> = listed.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["q1\ta@x.io", "q1\tb@x.io", "q1\tc@y.io"],
        "{listed}"
    );
    let shown = local(&["usage", "beta"]);
    harness::assert_has(&shown, "lead credits at 50%: 1 left");
}
