//! Issue 17 items 3 and 4 through the component: the plan that would have
//! allowed a credit denial (`upgrade_to`), and shadow mode, where a plan (or
//! the whole gateway) lets through what enforcement would refuse, counts it,
//! and never lets that leak into a plan that is enforced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use creditgate::bindings::{Decision, Mode, Reason};
use creditgate::gateway::Gateway;
use creditgate::request::Request;
use creditgate::store::MemoryStore;

use creditgate_testkit::http::Client;

use crate::harness::{self, charge};

/// `mid_b` and `mid_c` tie on email credits and lead credits: the name
/// decides. `mid_a` ties on email credits with more leads. `wide` holds many
/// leads and few emails; `open` is unlimited.
const UPGRADES: &str = include_str!("../fixtures/policies/upgrades.toml");

fn line(worker: &mut creditgate::runtime::Worker, event: Value) -> Value {
    let text = harness::outcome(worker, &event.to_string());
    serde_json::from_str(&text).expect("a JSON line")
}

fn at(second: u32) -> String {
    format!("2025-01-31T09:00:{second:02}Z")
}

#[test]
fn a_credit_denial_names_the_smallest_plan_that_would_allow_it() {
    let mut w = harness::worker(UPGRADES);
    let subscribe = json!({"at": at(0), "op": "subscribe", "account": "a", "plan": "small"});
    assert_eq!(line(&mut w, subscribe)["decision"], "allow");
    let charge = |cost: u64, second| json!({"at": at(second), "op": "charge_email", "account": "a", "cost": cost});
    assert_eq!(line(&mut w, charge(2, 1))["charged"], 2);
    // 2 used; 2 more need 4: mid_b, mid_c (10 emails, 5 leads) before mid_a
    // (10, 7); by name, mid_b. wide (3 emails) is too small.
    let denied = line(&mut w, charge(2, 2));
    assert_eq!(denied["reason"], "email_credits_exhausted");
    assert_eq!(denied["upgrade_to"], "mid_b");
    // One more fits wide: the smallest email limit wins over lead credits.
    assert_eq!(line(&mut w, charge(1, 3))["upgrade_to"], "wide");
    // Past every counted limit only the unlimited plan would do; past it, none.
    assert_eq!(line(&mut w, charge(20, 4))["upgrade_to"], "open");
    // Leads: 1 held of 1; a second needs 2.
    let lead = |email: &str, second| json!({"at": at(second), "op": "add_lead", "account": "a", "campaign": "c", "email": email});
    assert_eq!(line(&mut w, lead("one@x.io", 5))["charged"], 1);
    let denied = line(&mut w, lead("two@x.io", 6));
    assert_eq!(denied["reason"], "lead_credits_exhausted");
    assert_eq!(denied["upgrade_to"], "mid_b");
    // Other denials carry null; allowed decisions carry no upgrade_to at all.
    let invalid = line(&mut w, lead("not an address", 7));
    assert_eq!(invalid["reason"], "invalid_email");
    assert_eq!(invalid["upgrade_to"], Value::Null);
    assert!(
        invalid
            .as_object()
            .is_some_and(|o| o.contains_key("upgrade_to"))
    );
    let usage = line(&mut w, json!({"at": at(8), "op": "usage", "account": "a"}));
    assert!(
        !usage
            .as_object()
            .is_some_and(|o| o.contains_key("upgrade_to")),
        "{usage}"
    );
    // A batch names the plan that takes every contact it refused: 1 + 6 = 7.
    let emails: Vec<String> = (0..6).map(|i| format!("b{i}@x.io")).collect();
    let batch = w.add_leads("a", "c", &emails, 0).expect("a batch");
    assert_eq!(batch.upgrade_to.as_deref(), Some("mid_a"));
}

#[test]
fn no_plan_is_named_when_none_would_allow_it() {
    let policy = "[plans.a]\nlead_credits = 1\nemail_credits = 1\n\
                  [plans.b]\nlead_credits = 2\nemail_credits = 2\n";
    let mut w = harness::worker(policy);
    line(
        &mut w,
        json!({"at": at(0), "op": "subscribe", "account": "x", "plan": "a"}),
    );
    let denied = line(
        &mut w,
        json!({"at": at(1), "op": "charge_email", "account": "x", "cost": 3}),
    );
    assert_eq!(denied["reason"], "email_credits_exhausted");
    assert_eq!(denied["upgrade_to"], Value::Null);
}

const MODES: &str = include_str!("../fixtures/policies/modes.toml");

#[test]
fn a_plan_in_shadow_is_charged_past_its_limit_and_says_what_enforcement_would() {
    let mut w = harness::worker(MODES);
    for (account, plan) in [("s", "trial"), ("p", "paid")] {
        let event = json!({"at": at(0), "op": "subscribe", "account": account, "plan": plan});
        assert_eq!(line(&mut w, event)["decision"], "allow");
    }
    let send = |account: &str, to: Value, id: &str, second| json!({"at": at(second), "op": "send_email", "account": account, "to": to, "message_id": id});
    let within = line(&mut w, send("s", json!(["a@x.io", "b@x.io"]), "m1", 1));
    assert_eq!(within["decision"], "allow");
    assert!(within.get("shadow").is_none(), "{within}");
    let over = line(&mut w, send("s", json!(["c@x.io"]), "m2", 2));
    assert_eq!(over["decision"], "allow");
    assert_eq!(over["charged"], 1);
    assert_eq!(
        over["shadow"],
        json!({"decision": "deny", "reason": "email_credits_exhausted", "upgrade_to": "big"})
    );
    assert_eq!(
        over["email_credits"]["used"], 3,
        "used above the limit of 2"
    );
    // A retry of the message is charged once.
    let again = line(&mut w, send("s", json!(["c@x.io"]), "m2", 3));
    assert_eq!(
        (&again["charged"], &again["email_credits"]["used"]),
        (&json!(0), &json!(3))
    );
    // The enforced plan beside it is refused, with no shadow.
    line(&mut w, send("p", json!(["a@x.io", "b@x.io"]), "m1", 4));
    let refused = line(&mut w, send("p", json!(["c@x.io"]), "m2", 5));
    assert_eq!(refused["reason"], "email_credits_exhausted");
    assert!(refused.get("shadow").is_none(), "{refused}");
    // Leads too, one at a time and in a batch.
    let lead = |email: &str, second| json!({"at": at(second), "op": "add_lead", "account": "s", "campaign": "c", "email": email});
    line(&mut w, lead("one@x.io", 6));
    let over = line(&mut w, lead("two@x.io", 7));
    assert_eq!(
        (&over["decision"], &over["charged"]),
        (&json!("allow"), &json!(1))
    );
    assert_eq!(over["shadow"]["reason"], "lead_credits_exhausted");
    let batch = w
        .add_leads("s", "c", &["three@x.io".to_string()], 0)
        .expect("a batch");
    assert_eq!(batch.denied, None);
    assert_eq!(
        batch.shadow.map(|s| s.reason),
        Some(Reason::LeadCreditsExhausted)
    );
    assert_eq!(batch.usage.map(|u| u.lead_credits.used), Some(3));
}

fn subscribe(gateway: &Gateway, account: &str, plan: &str) {
    let d = gateway
        .decide_blocking(
            harness::subscription(account, plan),
            creditgate::time::now(),
        )
        .expect("subscribes");
    assert_eq!(d.denied, None);
}

/// Over its limit and allowed: only ever with a shadow refusal beside it.
#[track_caller]
fn never_silently_over(d: &Decision) {
    if d.denied.is_none() && d.charged > 0 {
        let u = d.usage.as_ref().expect("usage");
        let over = u
            .email_credits
            .limit
            .is_some_and(|l| u.email_credits.used > l);
        assert!(
            !over || d.shadow.is_some(),
            "allowed past the limit without shadow: {d:?}"
        );
    }
}

#[test]
fn shadow_never_leaks_into_enforcement_across_reloads() {
    let store = Arc::new(MemoryStore::new());
    let (gateway, summary) =
        Gateway::start_in(harness::shared_runtime(), store, MODES, Mode::Shadow, 2)
            .expect("starts");
    let modes: Vec<(&str, Mode)> = summary
        .plans
        .iter()
        .map(|p| (p.name.as_str(), p.mode))
        .collect();
    assert_eq!(
        modes,
        [
            ("big", Mode::Shadow),
            ("paid", Mode::Shadow),
            ("strict", Mode::Enforce),
            ("trial", Mode::Shadow)
        ],
        "plans without a mode take the gateway's; a plan that says enforce keeps it"
    );
    let gateway = Arc::new(gateway);
    let now = creditgate::time::now();
    for (account, plan) in [("p", "paid"), ("s", "strict"), ("t", "trial")] {
        subscribe(&gateway, account, plan);
    }
    // The gateway in shadow: paid is let through past its limit; strict is not.
    let d = gateway
        .decide_blocking(charge("p", 3), now)
        .expect("decides");
    assert_eq!((d.denied, d.charged), (None, 3));
    assert_eq!(
        d.shadow.as_ref().map(|s| s.reason),
        Some(Reason::EmailCreditsExhausted)
    );
    assert_eq!(d.shadow.and_then(|s| s.upgrade_to).as_deref(), Some("big"));
    let d = gateway
        .decide_blocking(charge("s", 3), now)
        .expect("decides");
    assert_eq!(d.denied, Some(Reason::EmailCreditsExhausted));
    assert_eq!(d.upgrade_to.as_deref(), Some("big"));
    assert!(d.shadow.is_none());
    let d = gateway
        .decide_blocking(charge("s", 2), now)
        .expect("decides");
    assert_eq!((d.denied, d.charged), (None, 2), "strict at its limit");
    assert!(gateway.plan_in_shadow("paid") && !gateway.plan_in_shadow("strict"));

    // Reloads flip the gateway between shadow and enforce while clients send.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = ["p", "s", "t"]
        .into_iter()
        .map(|account| {
            let (gateway, stop) = (gateway.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = 0;
                while !stop.load(Ordering::Relaxed) {
                    let d = gateway
                        .decide_blocking(charge(account, 1), creditgate::time::now())
                        .expect("decides");
                    never_silently_over(&d);
                    if account == "s" {
                        assert_eq!(d.denied, Some(Reason::EmailCreditsExhausted), "{d:?}");
                    }
                    if account == "t" {
                        assert_eq!(d.denied, None, "trial is in shadow whatever the gateway");
                    }
                    seen += 1;
                }
                seen
            })
        })
        .collect();
    for i in 0..10 {
        let mode = if i % 2 == 0 {
            Mode::Enforce
        } else {
            Mode::Shadow
        };
        gateway
            .reload_in(MODES, None, false, Some(mode))
            .expect("reloads");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        assert!(client.join().expect("a client") > 0);
    }
    // Last reload was to shadow; switch to enforce: refused at once, over limit.
    gateway
        .reload_in(MODES, None, false, Some(Mode::Enforce))
        .expect("reloads");
    assert_eq!(gateway.mode(), Mode::Enforce);
    let d = gateway
        .decide_blocking(charge("p", 1), now)
        .expect("decides");
    assert_eq!(d.denied, Some(Reason::EmailCreditsExhausted));
    let usage = d.usage.expect("usage");
    assert!(
        usage.email_credits.used > 2,
        "still over the limit: {usage:?}"
    );
    assert_eq!(
        d.upgrade_to.as_deref(),
        None,
        "big's 10 no longer fit {} + 1",
        usage.email_credits.used
    );
    // A plain reload keeps the mode in force.
    gateway.reload(MODES, None, false).expect("reloads");
    assert_eq!(gateway.mode(), Mode::Enforce);
    let stats = gateway.snapshot();
    assert!(stats.shadow_refusals(Reason::EmailCreditsExhausted) > 0);
    assert_eq!(stats.shadow_refusals(Reason::LeadCreditsExhausted), 0);
}

#[test]
fn serve_in_shadow_over_http_then_enforce_after_a_reload() {
    let (dir, policy) = harness::temp_path("policy.toml");
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &policy,
        "[plans.small]\nlead_credits = 3\nemail_credits = 2\n\
         [plans.large]\nlead_credits = 10\nemail_credits = 20\n",
    )
    .expect("writes");
    let write_config = |mode: &str| {
        std::fs::write(
            &config,
            format!("store = \"memory\"\npolicy = \"policy.toml\"\nmode = \"{mode}\"\n"),
        )
        .expect("writes")
    };
    write_config("shadow");
    let (child, base) =
        crate::http::spawn_http(dir.path(), &["--config", config.to_str().expect("utf-8")]);
    let api = Client::new(base.as_str());
    let post = |path: &str, body: Value| -> Value { api.post(path, &body.to_string()).json() };
    let get = |path: &str| -> String { api.get(path).body };
    post("/v1/accounts/acme/subscription", json!({"plan": "small"}));
    let email = json!({"account": "acme", "to": ["a@x.io", "b@x.io", "c@x.io"]});
    let answer = post("/v1/decide/email", email.clone());
    assert_eq!(answer["decision"], "allow", "{answer}");
    assert_eq!(answer["charged"], 3);
    assert_eq!(
        answer["shadow"],
        json!({"decision": "deny", "reason": "email_credits_exhausted", "upgrade_to": "large"})
    );
    let usage: Value = serde_json::from_str(&get("/v1/accounts/acme/usage")).expect("JSON");
    assert_eq!(
        (
            &usage["email_credits"]["used"],
            &usage["email_credits"]["limit"]
        ),
        (&json!(3), &json!(2))
    );
    let metrics = get("/metrics");
    harness::assert_has(
        &metrics,
        "creditgate_shadow_refusals_total{reason=\"email_credits_exhausted\"} 1",
    );
    let page = get("/");
    assert!(
        page.contains(r#"class="badge shadow""#),
        "the dashboard marks it"
    );
    assert!(
        page.contains("shadow, 1 email credits over"),
        "and says how far over"
    );
    let page = get("/accounts/acme");
    assert!(
        page.contains(r#"data-email-over="1""#),
        "the account page too: {page}"
    );

    // From shadow to enforce by reload: refused at once, naming the plan.
    write_config("enforce");
    let reloaded = post("/v1/admin/reload", json!({}));
    assert!(reloaded.get("version").is_some(), "{reloaded}");
    let answer = post("/v1/decide/email", email);
    assert_eq!(answer["decision"], "deny", "{answer}");
    assert_eq!(answer["reason"], "email_credits_exhausted");
    assert_eq!(answer["upgrade_to"], "large");
    assert!(answer.get("shadow").is_none());
    // A lead batch refused in part names the plan that takes them all.
    let emails: Vec<String> = (0..5).map(|i| format!("l{i}@x.io")).collect();
    let batch = post(
        "/v1/accounts/acme/campaigns/c/leads",
        json!({ "emails": emails }),
    );
    assert_eq!(batch["credits_exhausted"], 2, "{batch}");
    assert_eq!(batch["upgrade_to"], "large");

    let stderr = crate::http::terminate(child);
    assert!(
        stderr.contains("shadow: allowed what enforcement would have refused")
            && stderr.contains("acme")
            && stderr.contains("email_credits_exhausted"),
        "the log names the account and the reason: {stderr}"
    );
    harness::assert_has(&stderr, "the gateway's mode changed");

    let serve_check = |config: &std::path::Path| {
        harness::creditgate_command()
            .args(["serve", "--check", "--config"])
            .arg(config)
            .output()
            .expect("runs")
    };
    // `serve --check` says what a rollout in shadow will let through.
    write_config("shadow");
    let out = serve_check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "mode       gateway shadow; plans in shadow (allowed past their limits): large, small"
        ),
        "{stdout}"
    );

    // A mode the config cannot mean is refused at start, naming where.
    std::fs::write(
        &config,
        "store = \"memory\"\npolicy = \"policy.toml\"\nmode = \"shadw\"\n",
    )
    .expect("writes");
    let out = serve_check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("serve.toml") && stderr.contains("line 3") && stderr.contains("shadw"),
        "{stderr}"
    );
}

/// In shadow every mail decision is answered as allowed, not only those past a
/// limit: an account not yet subscribed, an address the policy refuses and a
/// message id reused are let through (with what enforcement would have said,
/// nothing charged), so that a rollout in shadow defers no mail. A plan that
/// says `enforce` keeps refusing them under a gateway in shadow, and a gateway
/// in enforce refuses them all.
#[test]
fn a_gateway_in_shadow_lets_every_mail_refusal_through_and_charges_none_of_them() {
    let send = |account: &str, to: &str, id: Option<&str>| Request::SendEmail {
        account: account.into(),
        to: vec![to.into()],
        kind: creditgate::bindings::EmailKind::First,
        message_id: id.map(Into::into),
    };
    let check = |account: &str| Request::CheckEmail {
        account: account.into(),
        cost: 1,
    };
    for mode in [Mode::Shadow, Mode::Enforce] {
        let store = Arc::new(MemoryStore::new());
        let (gateway, _) =
            Gateway::start_in(harness::shared_runtime(), store, MODES, mode, 2).expect("starts");
        let now = creditgate::time::now();
        subscribe(&gateway, "p", "paid");
        subscribe(&gateway, "s", "strict");
        let decide = |request: Request| gateway.decide_blocking(request, now).expect("decides");
        let first = decide(send("p", "a@x.io", Some("m1")));
        assert_eq!((first.denied, first.charged), (None, 1));
        let cases = [
            (
                "unknown account",
                decide(send("nobody", "a@x.io", None)),
                Reason::UnknownAccount,
            ),
            (
                "unknown account at RCPT",
                decide(check("nobody")),
                Reason::UnknownAccount,
            ),
            (
                "invalid address",
                decide(send("p", "not an address", None)),
                Reason::InvalidEmail,
            ),
            (
                "message id reused",
                decide(send("p", "other@x.io", Some("m1"))),
                Reason::IdempotencyKeyReused,
            ),
        ];
        for (what, d, reason) in cases {
            assert_eq!(d.charged, 0, "{what}: {d:?}");
            match mode {
                Mode::Shadow => {
                    assert_eq!(d.denied, None, "{what}: {d:?}");
                    assert_eq!(d.shadow.map(|s| s.reason), Some(reason), "{what}");
                }
                Mode::Enforce => {
                    assert_eq!(d.denied, Some(reason), "{what}: {d:?}");
                    assert!(d.shadow.is_none(), "{what}: {d:?}");
                }
            }
        }
        // strict says enforce: refused under either gateway mode.
        let d = decide(send("s", "not an address", None));
        assert_eq!(d.denied, Some(Reason::InvalidEmail), "{mode:?}: {d:?}");
        assert!(d.shadow.is_none(), "{mode:?}: {d:?}");
        let usage = decide(Request::Usage {
            account: "p".into(),
        });
        assert_eq!(
            usage.usage.expect("usage").email_credits.used,
            1,
            "nothing let through for another reason was charged"
        );
        gateway.shutdown();
    }
}
