//! The HTTP API, spoken to over real sockets: every route, its errors, and the
//! OpenAPI file kept true (every route documented, every status a test sees is a
//! status the file documents for that operation).

use std::collections::BTreeSet;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use creditgate::gateway::Gateway;
use creditgate::http::{self, HttpOptions, ReloadRefused, Reloaded, Reloader};
use creditgate::store::{MemoryStore, RedbStore, Store};

const POLICY: &str = "\
[plans.small]
lead_credits = 3
email_credits = 4

[plans.large]
lead_credits = 10
email_credits = 20
";

fn openapi() -> Value {
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
struct Api {
    base: String,
    agent: ureq::Agent,
    spec: Value,
    policy_file: tempfile::NamedTempFile,
    gateway: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Api {
    fn start(store: Arc<dyn Store>, options: HttpOptions) -> Api {
        let policy_file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(policy_file.path(), POLICY).expect("writes");
        let (gateway, _) = Gateway::start(crate::harness::shared_runtime(), store, POLICY, 2)
            .expect("gateway starts");
        let gateway = Arc::new(gateway);
        let reload: Reloader = {
            let (gateway, path) = (gateway.clone(), policy_file.path().to_owned());
            Arc::new(move || {
                let text = std::fs::read_to_string(&path).map_err(|e| ReloadRefused {
                    message: e.to_string(),
                    diagnostics: vec![],
                })?;
                match gateway.reload(&text, None) {
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
        let router = http::router(gateway.clone(), reload, &options);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let addr = listener.local_addr().expect("address");
        listener.set_nonblocking(true).expect("non-blocking");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    http::serve_http(listener, router, &options, async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serves");
                });
        });
        Api {
            base: format!("http://{addr}"),
            agent: agent(),
            spec: openapi(),
            policy_file,
            gateway,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn memory() -> Api {
        Api::start(Arc::new(MemoryStore::new()), HttpOptions::default())
    }

    /// Sends a request to the route `template` (as the OpenAPI file names it) at
    /// the concrete `path`; checks the status is documented for that operation.
    fn call(&self, method: &str, template: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = send(&self.agent, &self.base, method, path, body);
        let documented = &self.spec["paths"][template][method]["responses"];
        assert!(
            documented.get(status.to_string()).is_some(),
            "{method} {path} answered {status}, which the OpenAPI file does not document for \
             {template}: {text}"
        );
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    fn subscribe(&self, account: &str, plan: &str) -> (u16, Value) {
        self.call(
            "post",
            "/v1/accounts/{account}/subscription",
            &format!("/v1/accounts/{account}/subscription"),
            Some(&json!({ "plan": plan }).to_string()),
        )
    }

    fn usage(&self, account: &str) -> (u16, Value) {
        self.call(
            "get",
            "/v1/accounts/{account}/usage",
            &format!("/v1/accounts/{account}/usage"),
            None,
        )
    }

    fn email(&self, body: Value) -> (u16, Value) {
        self.call(
            "post",
            "/v1/decide/email",
            "/v1/decide/email",
            Some(&body.to_string()),
        )
    }

    fn leads(&self, account: &str, campaign: &str, emails: &[&str]) -> (u16, Value) {
        self.call(
            "post",
            "/v1/accounts/{account}/campaigns/{campaign}/leads",
            &format!("/v1/accounts/{account}/campaigns/{campaign}/leads"),
            Some(&json!({ "emails": emails }).to_string()),
        )
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.gateway.shutdown();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// One request; its status and body text. A body is sent as JSON.
fn send(
    agent: &ureq::Agent,
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let url = format!("{base}{path}");
    let response = match (method, body) {
        ("get", _) => agent.get(&url).call(),
        ("delete", _) => agent.delete(&url).call(),
        ("post", Some(body)) => agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body),
        ("post", None) => agent.post(&url).send_empty(),
        ("put", Some(body)) => agent
            .put(&url)
            .header("content-type", "application/json")
            .send(body),
        other => panic!("no such request in these tests: {other:?}"),
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("a body");
    (status, text)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("(no error code)")
}

#[test]
fn subscription_and_plan_changes() {
    let api = Api::memory();
    let (status, body) = api.call(
        "post",
        "/v1/accounts/{account}/subscription",
        "/v1/accounts/acme/subscription",
        Some(r#"{"plan": "small", "anchor": "2026-01-31T09:00:00Z"}"#),
    );
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
    let (status, body) = api.call(
        "post",
        "/v1/accounts/{account}/subscription",
        "/v1/accounts/other/subscription",
        Some(r#"{"plan": "small", "anchor": "yesterday"}"#),
    );
    assert_eq!((status, code(&body)), (422, "invalid_anchor"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("anchor")),
        "{body}"
    );

    // An upgrade raises the limits at once; usage and anchor stay.
    let plan = |account: &str, plan: &str| {
        api.call(
            "put",
            "/v1/accounts/{account}/plan",
            &format!("/v1/accounts/{account}/plan"),
            Some(&json!({ "plan": plan }).to_string()),
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
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("kind")),
        "the message names the field: {body}"
    );
    let (status, body) = api.email(json!({"account": "acme", "to": "a@x.io", "cc": "b@x.io"}));
    assert_eq!((status, code(&body)), (422, "invalid_body"), "{body}");
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
    let counts: Vec<u64> = [
        "total",
        "uploaded",
        "already_in_campaign",
        "in_other_campaign",
        "duplicates_in_request",
        "invalid",
        "credits_exhausted",
    ]
    .iter()
    .map(|k| body[*k].as_u64().unwrap_or(u64::MAX))
    .collect();
    assert_eq!(counts, [6, 1, 1, 1, 1, 1, 1], "{body}");
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
        api.call(
            "delete",
            "/v1/accounts/{account}/campaigns/{campaign}/leads/{email}",
            &format!("/v1/accounts/acme/campaigns/{campaign}/leads/{email}"),
            None,
        )
    };
    // Held by c2 too: leaving c1 frees nothing.
    let (status, body) = delete_one("c1", "a@x.io");
    assert_eq!((status, &body["freed"]), (200, &json!(0)), "{body}");
    let (_, body) = delete_one("c1", "b@x.io");
    assert_eq!(body["freed"], 1, "{body}");
    let (status, body) = delete_one("c1", "not-an-address");
    assert_eq!((status, code(&body)), (422, "invalid_email"), "{body}");

    let (status, body) = api.call(
        "delete",
        "/v1/accounts/{account}/campaigns/{campaign}/leads",
        "/v1/accounts/acme/campaigns/c2/leads",
        None,
    );
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

    let (status, body) = api.call(
        "delete",
        "/v1/accounts/{account}/campaigns/{campaign}/leads",
        "/v1/accounts/ghost/campaigns/c2/leads",
        None,
    );
    assert_eq!((status, code(&body)), (404, "unknown_account"), "{body}");
}

#[test]
fn malformed_requests_get_json_errors() {
    let api = Api::start(
        Arc::new(MemoryStore::new()),
        HttpOptions {
            max_body_bytes: 1024,
            ..HttpOptions::default()
        },
    );
    let (status, body) = api.call(
        "post",
        "/v1/decide/email",
        "/v1/decide/email",
        Some("{\"account\": \"acme\",\n \"to\": }"),
    );
    assert_eq!((status, code(&body)), (400, "invalid_json"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 2")),
        "the message says where: {body}"
    );
    let (status, body) = api.call(
        "post",
        "/v1/decide/email",
        "/v1/decide/email",
        Some(&json!({"account": "acme", "to": "x".repeat(2000)}).to_string()),
    );
    assert_eq!((status, code(&body)), (413, "body_too_large"), "{body}");
    let (status, body) = send(
        &api.agent,
        &api.base,
        "post",
        "/v1/accounts/acme/subscription",
        None,
    );
    assert_eq!(status, 415, "{body}");
    let (status, body) = send(&api.agent, &api.base, "get", "/v2/nothing", None);
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = send(&api.agent, &api.base, "get", "/v1/decide/email", None);
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!((status, code(&body)), (405, "method_not_allowed"));
}

#[test]
fn health_and_metrics() {
    let api = Api::memory();
    let (status, body) = api.call("get", "/healthz", "/healthz", None);
    assert_eq!(status, 200);
    assert_eq!(body, json!({"status": "ok", "policy_version": 0}));
    assert_eq!(api.subscribe("acme", "small").0, 201);
    for _ in 0..5 {
        api.email(json!({"account": "acme", "to": "a@x.io"}));
    }
    let (status, body) = api.call("get", "/metrics", "/metrics", None);
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
    let reload = || api.call("post", "/v1/admin/reload", "/v1/admin/reload", None);
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
    let (_, metrics) = api.call("get", "/metrics", "/metrics", None);
    let metrics = metrics.as_str().expect("text");
    assert!(
        metrics.contains("creditgate_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("creditgate_reloads_total{result=\"refused\"} 1"),
        "{metrics}"
    );
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

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    listener.local_addr().expect("address")
}

/// `creditgate serve` with only the HTTP API, once it answers.
fn spawn_http(args: &[&str]) -> (std::process::Child, String) {
    let addr = free_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_creditgate"))
        .arg("serve")
        .args(args)
        .args([
            "--postfix-listen",
            "off",
            "--http-listen",
            &addr.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let base = format!("http://{addr}");
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.get(format!("{base}/healthz")).call().is_err() {
        if let Some(status) = child.try_wait().expect("waits") {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            panic!("serve exited before listening: {status}\n{stderr}");
        }
        assert!(Instant::now() < deadline, "serve never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, base)
}

fn terminate(mut child: std::process::Child) -> String {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert_eq!(status.code(), Some(0), "{stderr}");
    stderr
}

#[test]
fn hot_reload_under_load_fails_no_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("writes");
    let policy_arg = policy.to_str().expect("utf-8");
    let (child, base) = spawn_http(&["--store", "memory", "--policy", policy_arg]);
    let agent = agent();
    let post = |path: &str, body: Value| send(&agent, &base, "post", path, Some(&body.to_string()));
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
                let client_agent = self::agent();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let body = json!({"account": "acme", "to": format!("c{client}-{i}@x.io")});
                    let (status, text) = send(
                        &client_agent,
                        base,
                        "post",
                        "/v1/decide/email",
                        Some(&body.to_string()),
                    );
                    assert_eq!(status, 200, "a request failed during a reload: {text}");
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        let reload = || {
            let (status, text) = send(&agent, &base, "post", "/v1/admin/reload", None);
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
    let (_, usage) = send(&agent, &base, "get", "/v1/accounts/acme/usage", None);
    let usage: Value = serde_json::from_str(&usage).expect("JSON");
    assert_eq!(usage["email_credits"]["limit"], 100_000, "{usage}");
    let stderr = terminate(child);
    assert!(stderr.contains("reload refused"), "{stderr}");
    assert!(stderr.contains("policy reloaded"), "{stderr}");
}

#[test]
fn the_binary_serves_postfix_on_a_unix_socket() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("policy.sock");
    // A stale socket file from a crashed run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("binds"));
    let (child, _base) = spawn_http(&[
        "--store",
        "memory",
        "--postfix-unix",
        socket.to_str().expect("utf-8"),
    ]);
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=nobody\n\n")
        .expect("writes");
    let mut reply = Vec::new();
    let mut buf = [0u8; 128];
    while !reply.ends_with(b"\n\n") {
        let n = stream.read(&mut buf).expect("a reply");
        assert!(n > 0, "closed without a reply");
        reply.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&reply).starts_with("action="),
        "{reply:?}"
    );
    drop(stream);
    terminate(child);
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

#[test]
fn admin_routes_need_the_token_when_one_is_set() {
    let token = "s3cret-admin-token-0123";
    let api = Api::start(
        Arc::new(MemoryStore::new()),
        HttpOptions {
            admin_token: Some(Arc::from(token)),
            ..HttpOptions::default()
        },
    );
    let url = format!("{}/v1/accounts/acme/subscription", api.base);
    let subscribe = |authorization: Option<&str>| {
        let mut request = api
            .agent
            .post(&url)
            .header("content-type", "application/json");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let mut response = request.send(r#"{"plan": "small"}"#).expect("answers");
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let body: Value =
            serde_json::from_str(&response.body_mut().read_to_string().expect("body"))
                .expect("JSON");
        (status, challenge, body)
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
    let (status, body) = api.call("post", "/v1/admin/reload", "/v1/admin/reload", None);
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    let (status, body) = api.call(
        "delete",
        "/v1/accounts/{account}/campaigns/{campaign}/leads",
        "/v1/accounts/acme/campaigns/c1/leads",
        None,
    );
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
}

#[test]
fn an_idle_http_connection_is_closed() {
    use std::io::Write as _;
    let api = Api::start(
        Arc::new(MemoryStore::new()),
        HttpOptions {
            idle_timeout: Duration::from_millis(300),
            ..HttpOptions::default()
        },
    );
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
    assert_eq!(api.call("get", "/healthz", "/healthz", None).0, 200);
}

#[test]
fn a_full_listener_closes_an_idle_connection_to_serve_a_new_one() {
    use std::io::Write as _;
    let api = Api::start(
        Arc::new(MemoryStore::new()),
        HttpOptions {
            max_connections: 1,
            idle_timeout: Duration::from_secs(30),
            ..HttpOptions::default()
        },
    );
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
    let (status, _) = send(&agent(), &format!("http://{addr}"), "get", "/healthz", None);
    assert_eq!(status, 200);
    let mut rest = Vec::new();
    let closed = first.read_to_end(&mut rest);
    assert!(
        matches!(closed, Ok(0)) || closed.is_err(),
        "still open: {closed:?}"
    );
}
