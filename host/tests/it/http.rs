//! The HTTP API, spoken to over real sockets: every route, its errors, and the
//! OpenAPI file kept true (every route documented, every status a test sees is a
//! status the file documents for that operation).

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use creditgate::gateway::Gateway;
use creditgate::http::{self, HttpOptions, ReloadRefused, Reloaded, Reloader};
use creditgate::store::{MemoryStore, RedbStore, Store};
use creditgate_testkit::http::Client;
use creditgate_testkit::serve::{ServeProcess, policy_exchange};

use crate::harness::{self, Serving};

/// Two plans: small (3 leads, 4 emails) and large (10, 20).
pub(crate) const POLICY: &str = "\
[plans.small]
lead_credits = 3
email_credits = 4

[plans.large]
lead_credits = 10
email_credits = 20
";

pub(crate) fn openapi() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let text = std::fs::read_to_string(&path).expect("host/openapi.json exists");
    serde_json::from_str(&text).expect("host/openapi.json is JSON")
}

#[test]
fn openapi_documents_exactly_the_routes() {
    let spec = openapi();
    let documented: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .expect("operations")
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = http::routes()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(documented, served);
}

/// A server in this process over `store`, with `policy`; the reloader reads the
/// policy back from a file the test can rewrite.
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) client: Client,
    spec: Value,
    pub(crate) policy_file: tempfile::NamedTempFile,
    pub(crate) gateway: Arc<Gateway>,
    _serving: Serving,
}

impl Api {
    pub(crate) fn start(store: Arc<dyn Store>, options: HttpOptions) -> Api {
        let policy_file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(policy_file.path(), POLICY).expect("writes");
        let (gateway, _) = Gateway::start(crate::harness::shared_runtime(), store, POLICY, 2)
            .expect("gateway starts");
        let gateway = Arc::new(gateway);
        let reload: Reloader = {
            let (gateway, path) = (gateway.clone(), policy_file.path().to_owned());
            Arc::new(move |force| {
                let text = std::fs::read_to_string(&path).map_err(|e| ReloadRefused {
                    message: e.to_string(),
                    diagnostics: vec![],
                })?;
                match gateway.reload(&text, None, force) {
                    Ok(_) => Ok(Reloaded {
                        version: gateway.version(),
                        warnings: vec![],
                    }),
                    Err(e) => Err(ReloadRefused {
                        message: e.to_string(),
                        diagnostics: vec![],
                    }),
                }
            })
        };
        let serving = Serving::http(gateway.clone(), reload, options);
        Api {
            base: serving.base(),
            client: client(serving.base()),
            spec: openapi(),
            policy_file,
            gateway,
            _serving: serving,
        }
    }

    pub(crate) fn memory() -> Api {
        Api::memory_with(HttpOptions::default())
    }

    /// [`Api::start`] over a fresh memory store.
    pub(crate) fn memory_with(options: HttpOptions) -> Api {
        Api::start(Arc::new(MemoryStore::new()), options)
    }

    /// Sends a request to the concrete `path`; checks the status is documented
    /// for that operation of its route ([`Api::route`]).
    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let template = self.route(path);
        let (status, text) = send(&self.client, method, path, body);
        let documented = &self.spec["paths"][&template][method]["responses"];
        assert!(
            documented.get(status.to_string()).is_some(),
            "{method} {path} answered {status}, which the OpenAPI file does not document for \
             {template}: {text}"
        );
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Writes `policy` where the reloader reads it, and reloads.
    pub(crate) fn reload_with(&self, policy: &str) -> (u16, Value) {
        std::fs::write(self.policy_file.path(), policy).expect("writes the policy");
        self.call("post", "/v1/admin/reload", None)
    }

    pub(crate) fn get(&self, path: &str) -> (u16, Value) {
        self.call("get", path, None)
    }

    pub(crate) fn delete(&self, path: &str) -> (u16, Value) {
        self.call("delete", path, None)
    }

    /// `POST` of the JSON `body`.
    pub(crate) fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.call("post", path, Some(body))
    }

    /// `PUT` of the JSON `body`.
    pub(crate) fn put(&self, path: &str, body: &str) -> (u16, Value) {
        self.call("put", path, Some(body))
    }

    /// The route of the concrete `path` (its query left out), as the OpenAPI file
    /// names it: the one whose segments all match, a `{parameter}` matching any
    /// one; of several, the one with the most fixed segments.
    pub(crate) fn route(&self, path: &str) -> String {
        let path = path.split('?').next().unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        let fixed = |route: &str| route.split('/').filter(|s| !s.starts_with('{')).count();
        let routes = self.spec["paths"]
            .as_object()
            .expect("the OpenAPI file's paths");
        let matching = routes.keys().filter(|route| {
            let parts: Vec<&str> = route.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| p.starts_with('{') || p == s)
        });
        let route = matching.max_by_key(|route| fixed(route));
        route
            .unwrap_or_else(|| panic!("the OpenAPI file has no route for {path}"))
            .clone()
    }

    pub(crate) fn subscribe(&self, account: &str, plan: &str) -> (u16, Value) {
        self.post(
            &format!("/v1/accounts/{account}/subscription"),
            &json!({ "plan": plan }).to_string(),
        )
    }

    /// A subscription of `account` to `plan` with `anchor` (as sent: checked by
    /// the server).
    pub(crate) fn subscribe_anchored(
        &self,
        account: &str,
        plan: &str,
        anchor: &str,
    ) -> (u16, Value) {
        self.post(
            &format!("/v1/accounts/{account}/subscription"),
            &json!({ "plan": plan, "anchor": anchor }).to_string(),
        )
    }

    pub(crate) fn usage(&self, account: &str) -> (u16, Value) {
        self.get(&format!("/v1/accounts/{account}/usage"))
    }

    pub(crate) fn email(&self, body: Value) -> (u16, Value) {
        self.post("/v1/decide/email", &body.to_string())
    }

    pub(crate) fn leads(&self, account: &str, campaign: &str, emails: &[&str]) -> (u16, Value) {
        self.post(
            &format!("/v1/accounts/{account}/campaigns/{campaign}/leads"),
            &json!({ "emails": emails }).to_string(),
        )
    }
}

/// A client of `base` with the bound these tests give a request.
fn client(base: impl Into<String>) -> Client {
    Client::with_timeout(base, Duration::from_secs(20))
}

/// One request (`method` as the OpenAPI file spells it, in lower case); its
/// status and body text. A body is sent as JSON.
pub(crate) fn send(client: &Client, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let answer = client.send(&method.to_ascii_uppercase(), path, body);
    (answer.status, answer.body)
}

pub(crate) fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("(no error code)")
}

/// The message of an error answer; empty when there is none.
pub(crate) fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

#[test]
fn subscription_and_plan_changes() {
    let api = Api::memory();
    let (status, body) = api.subscribe_anchored("acme", "small", "2026-01-31T09:00:00Z");
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["account"], "acme");
    assert_eq!(body["plan"], "small");
    assert_eq!(body["anchor"], "2026-01-31T09:00:00Z");
    assert_eq!(body["lead_credits"], json!({"used": 0, "limit": 3}));
    assert_eq!(body["email_credits"]["limit"], 4);

    let (status, body) = api.subscribe("acme", "large");
    assert_eq!((status, code(&body)), (409, "already_subscribed"), "{body}");
    let (status, body) = api.subscribe("other", "platinum");
    assert_eq!((status, code(&body)), (422, "unknown_plan"), "{body}");
    let (status, body) = api.subscribe_anchored("other", "small", "yesterday");
    assert_eq!((status, code(&body)), (422, "invalid_anchor"), "{body}");
    assert!(error_message(&body).contains("anchor"), "{body}");

    // An upgrade raises the limits at once; usage and anchor stay.
    let plan = |account: &str, plan: &str| {
        api.put(
            &format!("/v1/accounts/{account}/plan"),
            &json!({ "plan": plan }).to_string(),
        )
    };
    let (status, body) = plan("acme", "large");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plan"], "large");
    assert_eq!(body["anchor"], "2026-01-31T09:00:00Z");
    assert_eq!(body["lead_credits"]["limit"], 10);
    let (status, body) = plan("ghost", "large");
    assert_eq!((status, code(&body)), (404, "unknown_account"), "{body}");
    let (status, body) = plan("acme", "platinum");
    assert_eq!((status, code(&body)), (422, "unknown_plan"), "{body}");
}

#[test]
fn usage_reports_what_was_charged() {
    let api = Api::memory();
    let (status, body) = api.usage("ghost");
    assert_eq!((status, code(&body)), (404, "unknown_account"), "{body}");
    assert_eq!(api.subscribe("acme", "small").0, 201);
    api.leads("acme", "c1", &["a@x.io", "b@x.io"]);
    api.email(json!({"account": "acme", "to": ["a@x.io", "b@x.io"]}));
    let (status, body) = api.usage("acme");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lead_credits"], json!({"used": 2, "limit": 3}));
    assert_eq!(body["email_credits"]["used"], 2);
    assert_eq!(body["email_credits"]["limit"], 4);
    assert!(body["email_credits"]["resets_at"].is_string(), "{body}");
}

#[test]
fn email_decisions_charge_once_and_stop_at_the_limit() {
    let api = Api::memory();
    assert_eq!(api.subscribe("acme", "small").0, 201);
    let (status, body) = api.email(json!({
        "account": "acme", "to": "a@x.io", "kind": "first", "message_id": "m1"
    }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "allow");
    assert_eq!(body["charged"], 1);
    // A retry of one message is allowed and not charged again.
    let (_, body) = api.email(json!({"account": "acme", "to": "a@x.io", "message_id": "m1"}));
    assert_eq!(
        (&body["decision"], &body["charged"]),
        (&json!("allow"), &json!(0))
    );
    // Follow-ups and replies cost the same; a message to three costs three.
    let (_, body) = api.email(json!({
        "account": "acme", "to": ["b@x.io", "c@x.io", "d@x.io"], "kind": "follow_up"
    }));
    assert_eq!(
        (&body["decision"], &body["charged"]),
        (&json!("allow"), &json!(3))
    );
    // The limit (4) is reached: a denial is an answer, not an error.
    let (status, body) = api.email(json!({"account": "acme", "to": "e@x.io", "kind": "reply"}));
    assert_eq!(status, 200);
    assert_eq!(body["decision"], "deny");
    assert_eq!(body["reason"], "email_credits_exhausted");
    assert_eq!(body["email_credits"]["used"], 4);

    let (status, body) = api.email(json!({"account": "ghost", "to": "a@x.io"}));
    assert_eq!((status, &body["reason"]), (200, &json!("unknown_account")));
    let (status, body) = api.email(json!({"account": "acme", "to": "a@x.io", "kind": "bulk"}));
    assert_eq!((status, code(&body)), (422, "invalid_body"), "{body}");
    assert!(
        error_message(&body).contains("kind"),
        "the message names the field: {body}"
    );
    let (status, body) = api.email(json!({"account": "acme", "to": "a@x.io", "cc": "b@x.io"}));
    assert_eq!((status, code(&body)), (422, "invalid_body"), "{body}");
}

/// Issue 13.2 over HTTP: `message_id` is an idempotency key over the recipients.
/// An empty or blank one is an error naming the field, and reused for other
/// recipients it is denied `idempotency_key_reused` and charges nothing.
#[test]
fn a_message_id_is_an_idempotency_key_never_a_free_pass() {
    let api = Api::memory();
    assert_eq!(api.subscribe("acme", "large").0, 201);
    let (_, body) = api.email(json!({"account": "acme", "to": "a@x.io", "message_id": "m0"}));
    assert_eq!(body["charged"], 1, "{body}");
    for blank in ["", "   ", "\t"] {
        let (status, body) =
            api.email(json!({"account": "acme", "to": "b@x.io", "message_id": blank}));
        assert_eq!(
            (status, code(&body)),
            (400, "invalid_body"),
            "{blank:?}: {body}"
        );
        assert!(
            error_message(&body).contains("message_id"),
            "the message names the field: {body}"
        );
    }
    let send =
        |to: Value| api.email(json!({"account": "acme", "to": to, "message_id": "<m1@acme>"}));
    let (_, body) = send(json!(["a@x.io", "b@x.io"]));
    assert_eq!(
        (&body["decision"], &body["charged"]),
        (&json!("allow"), &json!(2))
    );
    let (_, body) = send(json!(["B@x.io", "a@x.io"]));
    assert_eq!(
        (&body["decision"], &body["charged"]),
        (&json!("allow"), &json!(0))
    );
    for other in [
        json!(["a@x.io", "c@x.io"]),
        json!("a@x.io"),
        json!(["a@x.io", "b@x.io", "c@x.io"]),
    ] {
        let (status, body) = send(other.clone());
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["decision"], &body["reason"], &body["charged"]),
            (&json!("deny"), &json!("idempotency_key_reused"), &json!(0)),
            "{other}"
        );
    }
    let (_, body) = api.usage("acme");
    assert_eq!(body["email_credits"]["used"], 3, "{body}");
}

#[test]
fn lead_batches_report_every_address() {
    let api = Api::memory();
    assert_eq!(api.subscribe("acme", "small").0, 201);
    assert_eq!(api.leads("acme", "c1", &["held@x.io"]).0, 200);
    assert_eq!(api.leads("acme", "c2", &["other@x.io"]).0, 200);
    let (status, body) = api.leads(
        "acme",
        "c1",
        &[
            "new@x.io",
            "held@x.io",
            "Other@X.io",
            "NEW@x.io",
            "not an address",
            "more@x.io",
        ],
    );
    assert_eq!(status, 200, "{body}");
    let expected = [
        ("total", 6),
        ("uploaded", 1),
        ("already_in_campaign", 1),
        ("in_other_campaign", 1),
        ("duplicates_in_request", 1),
        ("invalid", 1),
        ("credits_exhausted", 1),
    ];
    let counts: Vec<(&str, u64)> = expected
        .iter()
        .map(|&(k, _)| (k, body[k].as_u64().unwrap_or(u64::MAX)))
        .collect();
    assert_eq!(counts, expected, "{body}");
    let outcomes: Vec<&str> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        outcomes,
        [
            "uploaded",
            "already_in_campaign",
            "in_other_campaign",
            "duplicate_in_request",
            "invalid_email",
            "lead_credits_exhausted"
        ]
    );
    assert_eq!(body["lead_credits"], json!({"used": 3, "limit": 3}));

    let (status, body) = api.leads("ghost", "c1", &["a@x.io"]);
    assert_eq!((status, code(&body)), (404, "unknown_account"), "{body}");
    let many: Vec<String> = (0..=1_000).map(|i| format!("l{i}@x.io")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (status, body) = api.leads("acme", "c1", &many);
    assert_eq!((status, code(&body)), (422, "too_many_emails"), "{body}");
}

#[test]
fn deleting_leads_frees_credits_that_can_be_used_again() {
    let api = Api::memory();
    assert_eq!(api.subscribe("acme", "small").0, 201);
    api.leads("acme", "c1", &["a@x.io", "b@x.io", "c@x.io"]);
    api.leads("acme", "c2", &["a@x.io"]);
    let delete_one = |campaign: &str, email: &str| {
        api.delete(&format!(
            "/v1/accounts/acme/campaigns/{campaign}/leads/{email}"
        ))
    };
    // Held by c2 too: leaving c1 frees nothing.
    let (status, body) = delete_one("c1", "a@x.io");
    assert_eq!((status, &body["freed"]), (200, &json!(0)), "{body}");
    let (_, body) = delete_one("c1", "b@x.io");
    assert_eq!(body["freed"], 1, "{body}");
    let (status, body) = delete_one("c1", "not-an-address");
    assert_eq!((status, code(&body)), (422, "invalid_email"), "{body}");

    let (status, body) = api.delete("/v1/accounts/acme/campaigns/c2/leads");
    assert_eq!((status, &body["freed"]), (200, &json!(1)), "{body}");
    assert_eq!(
        body["lead_credits"]["used"], 1,
        "only c@x.io is held: {body}"
    );
    // The freed credits are really reusable: two new contacts fit.
    let (_, body) = api.leads("acme", "c3", &["d@x.io", "e@x.io", "f@x.io"]);
    assert_eq!(
        (&body["uploaded"], &body["credits_exhausted"]),
        (&json!(2), &json!(1))
    );

    let (status, body) = api.delete("/v1/accounts/ghost/campaigns/c2/leads");
    assert_eq!((status, code(&body)), (404, "unknown_account"), "{body}");
}

#[test]
fn malformed_requests_get_json_errors() {
    let api = Api::memory_with(HttpOptions {
        max_body_bytes: 1024,
        ..HttpOptions::default()
    });
    let (status, body) = api.post("/v1/decide/email", "{\"account\": \"acme\",\n \"to\": }");
    assert_eq!((status, code(&body)), (400, "invalid_json"), "{body}");
    assert!(
        error_message(&body).contains("line 2"),
        "the message says where: {body}"
    );
    let (status, body) = api.post(
        "/v1/decide/email",
        &json!({"account": "acme", "to": "x".repeat(2000)}).to_string(),
    );
    assert_eq!((status, code(&body)), (413, "body_too_large"), "{body}");
    let (status, body) = send(&api.client, "post", "/v1/accounts/acme/subscription", None);
    assert_eq!(status, 415, "{body}");
    let (status, body) = send(&api.client, "get", "/v2/nothing", None);
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = send(&api.client, "get", "/v1/decide/email", None);
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!((status, code(&body)), (405, "method_not_allowed"));
}

/// Audit G.3: one decision is one message; a list of 20,000 recipients held
/// the write lane every Postfix charge waits in for ~70 ms. Past
/// [`http::MAX_RECIPIENTS`], refused before anything is decided.
#[test]
fn an_email_decision_takes_at_most_a_messages_recipients() {
    let api = Api::memory();
    assert_eq!(api.subscribe("acme", "large").0, 201);
    let to = |n: usize| (0..n).map(|i| format!("r{i}@x.io")).collect::<Vec<_>>();
    let (status, body) = api.email(json!({"account": "acme", "to": to(http::MAX_RECIPIENTS + 1)}));
    assert_eq!((status, code(&body)), (422, "invalid_body"), "{body}");
    harness::assert_has(error_message(&body), "more than 1000 recipients");
    let (_, usage) = api.usage("acme");
    assert_eq!(usage["email_credits"]["used"], 0, "{usage}");
    let (status, body) = api.email(json!({"account": "acme", "to": to(3)}));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn health_and_metrics() {
    let api = Api::memory();
    let (status, body) = api.get("/healthz");
    assert_eq!(status, 200);
    assert_eq!(body, json!({"status": "ok", "policy_version": 0}));
    assert_eq!(api.subscribe("acme", "small").0, 201);
    for _ in 0..5 {
        api.email(json!({"account": "acme", "to": "a@x.io"}));
    }
    let (status, body) = api.get("/metrics");
    assert_eq!(status, 200);
    let text = body.as_str().expect("text");
    let value = |line: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in:\n{text}"))
    };
    assert_eq!(
        value("creditgate_decisions_total{op=\"send_email\",outcome=\"allow\"}"),
        4.0
    );
    assert_eq!(
        value("creditgate_decisions_total{op=\"send_email\",outcome=\"deny\"}"),
        1.0
    );
    assert_eq!(
        value("creditgate_decision_duration_seconds_count{op=\"send_email\"}"),
        5.0
    );
    assert_eq!(
        value("creditgate_decision_duration_seconds_bucket{op=\"send_email\",le=\"+Inf\"}"),
        5.0
    );
    assert!(value("creditgate_commits_total") >= 1.0);
    assert_eq!(value("creditgate_committed_decisions_total"), 6.0);
    assert_eq!(value("creditgate_guest_traps_total{kind=\"trap\"}"), 0.0);
    assert_eq!(value("creditgate_reloads_total{result=\"ok\"}"), 0.0);
    // Buckets are cumulative.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("creditgate_commit_wait_seconds_bucket"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&6.0));
}

#[test]
fn reload_takes_a_valid_policy_and_refuses_a_broken_one() {
    let api = Api::memory();
    assert_eq!(api.subscribe("acme", "small").0, 201);
    let reload = || api.call("post", "/v1/admin/reload", None);
    std::fs::write(
        api.policy_file.path(),
        "[plans.small]\nemail_credits = -1\n",
    )
    .expect("writes");
    let (status, body) = reload();
    assert_eq!((status, code(&body)), (422, "reload_refused"), "{body}");
    assert_eq!(api.usage("acme").1["email_credits"]["limit"], 4);
    std::fs::write(
        api.policy_file.path(),
        "[plans.small]\nlead_credits = 3\nemail_credits = 40\n",
    )
    .expect("writes");
    let (status, body) = reload();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(api.usage("acme").1["email_credits"]["limit"], 40);
    let (_, metrics) = api.get("/metrics");
    let metrics = metrics.as_str().expect("text");
    harness::assert_has(metrics, "creditgate_reloads_total{result=\"ok\"} 1");
    harness::assert_has(metrics, "creditgate_reloads_total{result=\"refused\"} 1");
}

/// Issue 13, item 1: a reload that drops a plan accounts are on is refused,
/// Audit E.5: one account whose record is malformed (a rollback to an older
/// release, a hand edit) is denied on its own requests, and takes nothing else
/// down: the listing, the dashboard and a reload that drops a plan go on.
#[test]
fn a_malformed_account_record_is_left_out_not_fatal() {
    let store = Arc::new(MemoryStore::new());
    let api = Api::start(store.clone(), HttpOptions::default());
    assert_eq!(api.subscribe("acme", "small").0, 201);
    assert_eq!(api.subscribe("globex", "large").0, 201);
    // The component's own record, as only a test may know it.
    assert!(
        store
            .record_update("globex", "account", "garbage")
            .expect("updates")
    );
    let (status, body) = api.email(json!({"account": "globex", "to": "a@x.io"}));
    assert_ne!(status, 200, "{body}");

    let (status, body) = api.get("/v1/accounts");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accounts"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["accounts"][0]["account"], "acme", "{body}");
    let (status, html) = send(&api.client, "get", "/", None);
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("acme"), "{html}");

    let (status, body) = api.reload_with("[plans.small]\nlead_credits = 3\nemail_credits = 4\n");
    assert_eq!(status, 200, "{body}");
}

/// naming the plan and how many are on it; forced, the accounts stay visible and
/// say which plan is missing.
#[test]
fn a_reload_that_strands_accounts_is_refused_unless_forced() {
    let api = Api::memory();
    assert_eq!(api.subscribe("acme", "small").0, 201);
    assert_eq!(api.subscribe("globex", "large").0, 201);
    let reload = |query: &str| api.call("post", &format!("/v1/admin/reload{query}"), None);
    std::fs::write(
        api.policy_file.path(),
        "[plans.small]\nlead_credits = 3\nemail_credits = 4\n",
    )
    .expect("writes");
    let (status, body) = reload("");
    assert_eq!((status, code(&body)), (422, "reload_refused"), "{body}");
    let message = body["error"]["message"].as_str().expect("a message");
    harness::assert_has(message, "\"large\" (1 account)");
    assert_eq!(
        api.usage("globex").0,
        200,
        "the policy in force still serves"
    );

    let (status, body) = reload("?force=maybe");
    assert_eq!((status, code(&body)), (400, "invalid_query"), "{body}");

    let (status, body) = reload("?force=true");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    let (status, body) = api.usage("globex");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plan"], "large");
    assert_eq!(body["plan_missing"], true);
    assert_eq!(body["email_credits"]["limit"], 0);
    let (status, body) = api.email(json!({"account": "globex", "to": "a@x.io"}));
    assert_eq!(
        (status, body["decision"].as_str()),
        (200, Some("deny")),
        "{body}"
    );
    assert_eq!(body["reason"], "unknown_plan");
    let (_, body) = api.usage("acme");
    assert!(body.get("plan_missing").is_none(), "{body}");

    // Every window keeps it: the listing, the dashboard's list and its page.
    let (status, body) = api.get("/v1/accounts");
    assert_eq!(status, 200, "{body}");
    let listed: Vec<(&str, bool)> = body["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| {
            (
                a["account"].as_str().unwrap_or_default(),
                a["plan_missing"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(listed, [("acme", false), ("globex", true)], "{body}");
    for page in ["/", "/accounts/globex"] {
        let (status, html) = send(&api.client, "get", page, None);
        assert_eq!(status, 200, "{page}: {html}");
        assert!(html.contains("globex"), "{page}: {html}");
        assert!(html.contains("not in the policy"), "{page}: {html}");
    }
}

/// Issue 13, item 4: a back-dated anchor reports the cycle containing now, the
/// same one the usage route reports; a future anchor is refused.
#[test]
fn a_back_dated_anchor_reports_the_current_cycle_and_a_future_one_is_refused() {
    let api = Api::memory();
    let (status, body) = api.subscribe_anchored("acme", "small", "2021-01-31T09:00:00Z");
    assert_eq!(status, 201, "{body}");
    let resets_at = body["email_credits"]["resets_at"]
        .as_str()
        .expect("resets_at");
    let resets_at = creditgate::time::parse_instant(resets_at).expect("an instant");
    assert!(resets_at > creditgate::time::now(), "{body}");
    assert_eq!(
        api.usage("acme").1["email_credits"]["resets_at"],
        body["email_credits"]["resets_at"]
    );

    let (status, body) = api.subscribe_anchored("globex", "small", "2099-01-01T00:00:00Z");
    assert_eq!((status, code(&body)), (422, "invalid_request"), "{body}");
    let message = body["error"]["message"].as_str().expect("a message");
    harness::assert_has(message, "2099-01-01T00:00:00Z is in the future");
    assert_eq!(api.usage("globex").0, 404, "nothing was created");

    // Without an anchor, now to the second: no nanoseconds nobody chose.
    let (status, body) = api.subscribe("initech", "small");
    assert_eq!(status, 201, "{body}");
    let anchor = body["anchor"].as_str().expect("an anchor");
    assert!(!anchor.contains('.'), "{anchor}");
}

#[test]
fn racing_clients_over_http_get_exactly_the_limit_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(&dir.path().join("state.redb")).expect("opens");
    let api = Api::start(Arc::new(store), HttpOptions::default());
    assert_eq!(api.subscribe("acme", "large").0, 201);
    let allowed = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for client in 0..16 {
            let (api, allowed) = (&api, &allowed);
            scope.spawn(move || {
                for i in 0..4 {
                    let (status, body) = api.email(json!({
                        "account": "acme", "to": format!("r{client}-{i}@x.io")
                    }));
                    assert_eq!(status, 200, "{body}");
                    if body["decision"] == "allow" {
                        allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(
        allowed.into_inner(),
        20,
        "the large plan's 20 email credits"
    );
    assert_eq!(api.usage("acme").1["email_credits"]["used"], 20);
}

// ---- through the binary: the real reloader and listeners ----------------------

/// `creditgate serve` with only the HTTP API (and the Postfix unix socket, when
/// asked), once it listens; its log in `dir`.
pub(crate) fn spawn_http(dir: &Path, args: &[&str]) -> (ServeProcess, String) {
    let serve = ServeProcess::builder(env!("CARGO_BIN_EXE_creditgate"), dir.join("serve.log"))
        .args(args)
        .postfix(false)
        .start();
    let base = serve.http_url();
    (serve, base)
}

/// SIGTERM, then a clean exit; serve's log.
pub(crate) fn terminate(serve: ServeProcess) -> String {
    let (status, log) = serve.terminate();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    log
}

#[test]
fn hot_reload_under_load_fails_no_request() {
    let (_dir, policy) = harness::temp_path("policy.toml");
    std::fs::write(&policy, POLICY).expect("writes");
    // The library's server, as `serve` runs it: its reloader re-reads the file.
    let server = harness::InProcess::start(
        creditgate::serve::Overrides {
            policy: Some(policy.clone()),
            ..creditgate::serve::Overrides::default()
        },
        Arc::new(MemoryStore::new()),
    );
    let base = server.http_url();
    let api = client(base.clone());
    let post = |path: &str, body: Value| send(&api, "post", path, Some(&body.to_string()));
    assert_eq!(
        post("/v1/accounts/acme/subscription", json!({"plan": "large"})).0,
        201
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let answered = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for client in 0..4 {
            let (stop, answered, base) = (&stop, &answered, &base);
            scope.spawn(move || {
                let own = self::client(base.clone());
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let body = json!({"account": "acme", "to": format!("c{client}-{i}@x.io")});
                    let (status, text) =
                        send(&own, "post", "/v1/decide/email", Some(&body.to_string()));
                    assert_eq!(status, 200, "a request failed during a reload: {text}");
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        let reload = || {
            let (status, text) = send(&api, "post", "/v1/admin/reload", None);
            (status, serde_json::from_str::<Value>(&text).expect("JSON"))
        };
        std::fs::write(
            &policy,
            "[plans.large]\nlead_credits = 10\nemail_credits = 1.5\n",
        )
        .expect("writes");
        let (status, body) = reload();
        assert_eq!((status, code(&body)), (422, "reload_refused"), "{body}");
        let diagnostics = body["error"]["diagnostics"].to_string();
        assert!(
            diagnostics.contains("policy.toml:3:") && diagnostics.contains("email_credits"),
            "the refusal points at the line and field: {body}"
        );
        std::fs::write(
            &policy,
            "[plans.large]\nlead_credits = 10\nemail_credits = 100000\n",
        )
        .expect("writes");
        let (status, body) = reload();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], 1);
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(answered.into_inner() > 0);
    let (_, usage) = send(&api, "get", "/v1/accounts/acme/usage", None);
    let usage: Value = serde_json::from_str(&usage).expect("JSON");
    assert_eq!(usage["email_credits"]["limit"], 100_000, "{usage}");
    // Counted as what they were: one reload refused, one done.
    let (_, metrics) = send(&api, "get", "/metrics", None);
    for line in [
        "creditgate_reloads_total{result=\"refused\"} 1",
        "creditgate_reloads_total{result=\"ok\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let stopped = server.stop();
    assert_eq!(
        (stopped.stats.reloads, stopped.stats.reloads_refused),
        (1, 1)
    );
}

#[test]
fn the_binary_serves_postfix_on_a_unix_socket() {
    let (dir, socket) = harness::temp_path("policy.sock");
    // A stale socket file from a crashed run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("binds"));
    let (child, _base) = spawn_http(
        dir.path(),
        &[
            "--store",
            "memory",
            "--postfix-unix",
            socket.to_str().expect("utf-8"),
        ],
    );
    let stream = std::os::unix::net::UnixStream::connect(&socket).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let reply = policy_exchange(
        stream,
        "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=nobody\n\n",
    );
    assert!(reply.starts_with("action="), "{reply:?}");
    terminate(child);
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

#[test]
fn admin_routes_need_the_token_when_one_is_set() {
    let token = "s3cret-admin-token-0123";
    let api = Api::memory_with(HttpOptions {
        admin_token: Some(Arc::from(token)),
        ..HttpOptions::default()
    });
    let subscribe = |authorization: Option<&str>| {
        let headers: Vec<_> = authorization
            .map(|v| ("authorization", v))
            .into_iter()
            .collect();
        let path = "/v1/accounts/acme/subscription";
        let answer = (api
            .client
            .try_send("POST", path, &headers, Some(r#"{"plan": "small"}"#)))
        .expect("answers");
        let challenge = answer.header("www-authenticate").map(str::to_owned);
        (answer.status, challenge, answer.json())
    };
    let (status, challenge, body) = subscribe(None);
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    assert_eq!(challenge.as_deref(), Some("Bearer"));
    let (status, _, body) = subscribe(Some("Bearer s3cret-admin-token-0124"));
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    let (status, _, body) = subscribe(Some(&format!("Bearer {token}")));
    assert_eq!(status, 201, "{body}");
    // Nothing was subscribed by the refused attempts, and the routes a sending
    // platform uses all day need no token.
    let (status, body) = api.email(json!({"account": "acme", "to": "a@x.io"}));
    assert_eq!((status, &body["charged"]), (200, &json!(1)), "{body}");
    assert_eq!(api.usage("acme").0, 200);
    let (status, body) = api.call("post", "/v1/admin/reload", None);
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    let (status, body) = api.delete("/v1/accounts/acme/campaigns/c1/leads");
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
}

#[test]
fn an_idle_http_connection_is_closed() {
    use std::io::Write as _;
    let api = Api::memory_with(HttpOptions {
        idle_timeout: Duration::from_millis(300),
        ..HttpOptions::default()
    });
    let addr = api.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Half a request, then silence: the server must not wait for the rest forever.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .expect("writes");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    // Other clients are served meanwhile and after.
    assert_eq!(api.get("/healthz").0, 200);
}

#[test]
fn a_full_listener_closes_an_idle_connection_to_serve_a_new_one() {
    use std::io::Write as _;
    let api = Api::memory_with(HttpOptions {
        max_connections: 1,
        idle_timeout: Duration::from_secs(30),
        ..HttpOptions::default()
    });
    let addr = api.base.trim_start_matches("http://").to_owned();
    // The one slot, held by a keep-alive connection that has been answered.
    let mut first = std::net::TcpStream::connect(&addr).expect("connects");
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("writes");
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).expect("answered");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // A second client is served at once rather than left in the backlog, and the
    // idle connection is closed to make room.
    let (status, _) = send(&client(format!("http://{addr}")), "get", "/healthz", None);
    assert_eq!(status, 200);
    let mut rest = Vec::new();
    let closed = first.read_to_end(&mut rest);
    assert!(
        matches!(closed, Ok(0)) || closed.is_err(),
        "still open: {closed:?}"
    );
}

/// Issue 14.6: a name that would collide with the host's own scopes, forge a log
/// line or a table row, or look like another name is refused with a message that
/// names it; the alert log stays readable.
#[test]
fn names_that_would_poison_the_store_are_refused() {
    let api = Api::memory();
    assert_eq!(api.subscribe("acme", "small").0, 201);
    // Fire acme's email alerts (80% and 100% of 4).
    for i in 0..4 {
        let (status, body) =
            api.email(json!({"account": "acme", "to": format!("p{i}@example.com")}));
        assert_eq!(
            (status, &body["decision"]),
            (200, &json!("allow")),
            "{body}"
        );
    }
    let long = "x".repeat(1100);
    for (path_name, needle) in [
        ("%01alerts%2Facme", "has U+0001 at character 1"),
        ("acme%2Fx", "has '/' at character 5"),
        ("evil%0AINFO%20forged", "has U+000A at character 5"),
        ("nul%00", "has U+0000 at character 4"),
        ("acme%E2%80%AEemca", "has U+202E at character 5"),
        ("%20%20", "is empty"),
        (
            long.as_str(),
            "is 1100 characters long; a name has at most 254",
        ),
    ] {
        let (status, body) = api.subscribe(path_name, "small");
        assert_eq!(
            (status, code(&body)),
            (422, "invalid_name"),
            "{path_name}: {body}"
        );
        let message = body["error"]["message"].as_str().expect("a message");
        harness::assert_starts(message, "account name \"");
        assert!(message.contains(needle), "{path_name}: {message}");
        assert!(
            !message.contains(['\u{1}', '\n', '\0', '\u{202e}']),
            "the message quotes the name escaped: {message:?}"
        );
        assert!(
            message.len() < 400,
            "a long name is quoted by its start: {message}"
        );
        let (status, body) = api.usage(path_name);
        assert_eq!((status, code(&body)), (422, "invalid_name"), "{body}");
    }
    let (status, body) = api.leads("acme", "q1%2Fq2", &["a@example.com"]);
    assert_eq!((status, code(&body)), (422, "invalid_name"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("campaign name \"q1/q2\" has '/'")),
        "{body}"
    );
    let (status, body) = api.email(json!({"account": "ac\u{200b}me", "to": "a@example.com"}));
    assert_eq!((status, code(&body)), (422, "invalid_name"), "{body}");

    // Nothing was stored under a poisoned name, and acme's alerts still read.
    let scopes = api.gateway.store().scopes().expect("scopes");
    assert!(
        scopes
            .iter()
            .all(|s| !s.contains('\n') && !s.contains('\u{202e}')),
        "{scopes:?}"
    );
    let alerts = creditgate::alerts::list(api.gateway.store().as_ref(), Some("acme"))
        .expect("acme's alert log reads");
    assert_eq!(alerts.len(), 2, "{alerts:?}");
}

/// Issue 14.6: one account however its name is spelt: case, surrounding space,
/// and Unicode normalisation.
#[test]
fn spellings_of_one_name_are_one_account() {
    let api = Api::memory();
    let (status, body) = api.subscribe("%20ACME%20", "small");
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["account"], "acme");
    let (status, body) = api.subscribe("Acme", "small");
    assert_eq!((status, code(&body)), (409, "already_subscribed"), "{body}");
    assert_eq!(api.usage("acme").0, 200);
    // `é` as one code point, then as `e` and a combining accent.
    assert_eq!(api.subscribe("caf%C3%A9", "small").0, 201);
    let (status, body) = api.subscribe("CAFE%CC%81", "small");
    assert_eq!((status, code(&body)), (409, "already_subscribed"), "{body}");
    let (status, body) = api.email(json!({"account": " Café ", "to": "a@example.com"}));
    assert_eq!((status, body["charged"].as_u64()), (200, Some(1)), "{body}");
    let (_, body) = api.usage("caf%C3%A9");
    assert_eq!(body["email_credits"]["used"], 1, "{body}");
}

/// Issue 13.7: every error names the value at fault and what is accepted.
#[test]
fn errors_name_the_value_and_what_is_accepted() {
    let api = Api::memory();
    let (status, body) = api.subscribe("acme", "platinum");
    assert_eq!((status, code(&body)), (422, "unknown_plan"), "{body}");
    assert_eq!(
        body["error"]["message"],
        "no plan \"platinum\"; the policy in force has: \"large\", \"small\"",
        "{body}"
    );
    assert_eq!(api.subscribe("acme", "small").0, 201);
    let (status, body) = api.put("/v1/accounts/acme/plan", r#"{"plan": "gold"}"#);
    assert_eq!((status, code(&body)), (422, "unknown_plan"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no plan \"gold\"") && m.contains("\"large\"")),
        "{body}"
    );

    // Which recipient is not an address, and why, in the policy's words.
    let (status, body) = api.email(json!({
        "account": "acme",
        "to": ["ann@example.com", "bo@@example.org"]
    }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reason"], "invalid_email", "{body}");
    assert_eq!(
        body["message"],
        "to[1] \"bo@@example.org\" is not a valid email address: it has more than one '@'",
        "{body}"
    );
    let (_, body) = api.email(json!({"account": "acme", "to": "cy@example"}));
    assert_eq!(
        body["message"], "to \"cy@example\" is not a valid email address: its domain has no dot",
        "{body}"
    );
    let (_, body) = api.email(json!({"account": "acme", "to": "cy@example.com"}));
    assert!(body.get("message").is_none(), "{body}");
    let (status, body) = api.delete("/v1/accounts/acme/campaigns/q1/leads/nobody");
    assert_eq!((status, code(&body)), (422, "invalid_email"), "{body}");
    assert_eq!(
        body["error"]["message"], "email \"nobody\" is not a valid email address: it has no '@'",
        "{body}"
    );

    // A recipient list of the wrong type says what it found and what it takes.
    let (status, body) = api.email(json!({"account": "acme", "to": 5}));
    assert_eq!((status, code(&body)), (422, "invalid_body"), "{body}");
    let message = body["error"]["message"].as_str().expect("a message");
    harness::assert_has(
        message,
        "to: invalid type: integer `5`, expected an email address (a string) or a list of email addresses",
    );
    let (_, body) = api.email(json!({"account": "acme", "to": ["a@example.com", 7]}));
    let message = body["error"]["message"].as_str().expect("a message");
    harness::assert_has(
        message,
        "invalid type: integer `7`, expected an email address (a string)",
    );
}

/// A request refused before its body is read (no admin token, a path that names
/// nothing valid, a browser's cross-site write) still gets its answer: the
/// server reads the body the client is sending, as it arrives, before it
/// answers, instead of closing a connection the client is still writing to,
/// which resets it and loses the answer. The body comes after a pause here, as
/// a slow network sends it. Three refusals in a row on one connection also
/// show that it stays open.
#[test]
fn a_request_refused_before_its_body_is_read_gets_its_answer() {
    use std::io::{BufRead as _, BufReader, Write as _};
    let api = Api::start(
        Arc::new(MemoryStore::new()),
        HttpOptions {
            admin_token: Some(Arc::from("s3cret-admin-token-0123")),
            ..HttpOptions::default()
        },
    );
    let address = api.base.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).expect("connects");
    let mut answers = BufReader::new(stream.try_clone().expect("a second handle"));
    let body = format!(r#"{{"plan": "small", "pad": "{}"}}"#, "x".repeat(4_000));
    for (path, host, content_type, expected) in [
        (
            "/v1/accounts/acme/subscription",
            "127.0.0.1",
            "application/json",
            "401",
        ),
        ("/v1/decide/email", "127.0.0.1", "text/plain", "415"),
        (
            "/v1/decide/email",
            "evil.example",
            "application/json",
            "403",
        ),
    ] {
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .expect("writes the head");
        stream.flush().expect("flushes");
        std::thread::sleep(Duration::from_millis(150));
        stream.write_all(body.as_bytes()).expect("writes the body");
        let mut status = String::new();
        answers
            .read_line(&mut status)
            .expect("reads the answer, not a reset");
        assert!(
            status.starts_with(&format!("HTTP/1.1 {expected} ")),
            "{path}: {status}"
        );
        let mut length = 0;
        loop {
            let mut line = String::new();
            answers.read_line(&mut line).expect("a header");
            if line == "\r\n" {
                break;
            }
            if let Some(n) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = n.trim().parse().expect("a length");
            }
        }
        let mut refusal = vec![0; length];
        std::io::Read::read_exact(&mut answers, &mut refusal).expect("the answer's body");
    }
}
