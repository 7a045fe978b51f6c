//! Credit alerts end to end: fired by the component on the crossing request only,
//! logged in the store with the decision, re-armed by the reset, by deletions and
//! by upgrades, listed by the CLI, and posted to webhooks that may fail or hang
//! without ever holding up a decision.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use creditgate::alerts::{self, FiredAlert, Notifier, Retry, Webhook};
use creditgate::gateway::Gateway;
use creditgate::request::Request;
use creditgate::store::{MemoryStore, RedbStore, Store};
use creditgate::time::parse_instant;

use crate::harness;

const POLICY: &str = include_str!("../fixtures/policies/alerts.toml");

fn at(text: &str) -> i64 {
    parse_instant(text).expect("instant")
}

fn gateway(store: Arc<dyn Store>) -> Gateway {
    let (gateway, _) =
        Gateway::start(crate::harness::shared_runtime(), store, POLICY, 2).expect("starts");
    gateway
}

fn decide(gateway: &Gateway, request: Request, now: i64) {
    let decision = gateway.decide_blocking(request, now).expect("decided");
    assert_eq!(decision.denied, None, "{decision:?}");
}

fn subscribe(gateway: &Gateway, account: &str, plan: &str) {
    let request = harness::subscription(account, plan);
    decide(gateway, request, at("2026-01-15T10:00:00Z"));
}

fn charge(gateway: &Gateway, account: &str, cost: u64, now: i64) {
    let request = harness::charge(account, cost);
    decide(gateway, request, now);
}

/// `(credit, threshold, used, limit)` of every alert logged for `account`.
/// A gateway over a fresh memory store, with `acme` on `plan`.
fn acme_on(plan: &str) -> (Arc<dyn Store>, Gateway) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let gateway = gateway(store.clone());
    subscribe(&gateway, "acme", plan);
    (store, gateway)
}

fn logged(store: &dyn Store, account: &str) -> Vec<(String, u8, u64, u64)> {
    alerts::list(store, Some(account))
        .expect("the log reads")
        .into_iter()
        .map(|a| (a.credit, a.threshold, a.used, a.limit))
        .collect()
}

fn email(threshold: u8, used: u64, limit: u64) -> (String, u8, u64, u64) {
    ("email_credits".into(), threshold, used, limit)
}

#[test]
fn crossing_80_percent_fires_once_and_the_reset_rearms_it() {
    let (store, gateway) = acme_on("ten");
    let january = at("2026-01-20T00:00:00Z");
    for _ in 0..7 {
        charge(&gateway, "acme", 1, january);
    }
    assert!(logged(store.as_ref(), "acme").is_empty());
    charge(&gateway, "acme", 1, january);
    assert_eq!(logged(store.as_ref(), "acme"), [email(80, 8, 10)]);
    // Further sends do not fire it again; exhaustion fires 100% once.
    charge(&gateway, "acme", 1, january);
    charge(&gateway, "acme", 1, january);
    assert_eq!(
        logged(store.as_ref(), "acme"),
        [email(80, 8, 10), email(100, 10, 10)]
    );
    // The next cycle starts at 0: crossing 80% again fires again.
    let february = at("2026-02-16T00:00:00Z");
    charge(&gateway, "acme", 8, february);
    let log = alerts::list(store.as_ref(), Some("acme")).expect("reads");
    assert_eq!(log.len(), 3);
    assert_eq!(
        (log[2].threshold, log[2].used, log[2].at.as_str()),
        (80, 8, "2026-02-16T00:00:00Z")
    );
    assert_eq!(log[2].resets_at.as_deref(), Some("2026-03-15T10:00:00Z"));
}

#[test]
fn an_upgrade_that_moves_usage_under_a_threshold_rearms_it() {
    let (store, gateway) = acme_on("ten");
    let now = at("2026-01-20T00:00:00Z");
    charge(&gateway, "acme", 9, now);
    assert_eq!(logged(store.as_ref(), "acme"), [email(80, 9, 10)]);
    let upgrade = Request::ChangePlan {
        account: "acme".into(),
        plan: "hundred".into(),
    };
    decide(&gateway, upgrade, now);
    charge(&gateway, "acme", 70, now);
    assert_eq!(logged(store.as_ref(), "acme"), [email(80, 9, 10)]);
    charge(&gateway, "acme", 1, now);
    assert_eq!(
        logged(store.as_ref(), "acme"),
        [email(80, 9, 10), email(80, 80, 100)]
    );
    // Back down: 80 of 10 is over 100%, which 80 of 100 was not; 80% was
    // already over and stays fired.
    let downgrade = Request::ChangePlan {
        account: "acme".into(),
        plan: "ten".into(),
    };
    decide(&gateway, downgrade, now);
    assert_eq!(
        logged(store.as_ref(), "acme"),
        [email(80, 9, 10), email(80, 80, 100), email(100, 80, 10)]
    );
}

#[test]
fn lead_alerts_fire_again_after_deletions_took_usage_back_under() {
    let (store, gateway) = acme_on("ten");
    let now = at("2026-01-20T00:00:00Z");
    let add = |email: &str| Request::AddLead {
        account: "acme".into(),
        campaign: "c".into(),
        email: email.into(),
    };
    for i in 0..8 {
        decide(&gateway, add(&format!("l{i}@x.io")), now);
    }
    let lead = |used| ("lead_credits".to_owned(), 80, used, 10);
    assert_eq!(logged(store.as_ref(), "acme"), [lead(8)]);
    let delete = Request::DeleteLead {
        account: "acme".into(),
        campaign: "c".into(),
        email: "l0@x.io".into(),
    };
    decide(&gateway, delete, now);
    decide(&gateway, add("l8@x.io"), now);
    assert_eq!(logged(store.as_ref(), "acme"), [lead(8), lead(8)]);
}

#[test]
fn the_cli_lists_what_fired() {
    let (_dir, path) = harness::temp_path("state.redb");
    {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).expect("opens"));
        let gateway = gateway(store);
        subscribe(&gateway, "acme", "ten");
        subscribe(&gateway, "zeta", "ten");
        charge(&gateway, "acme", 10, at("2026-01-20T00:00:00Z"));
        charge(&gateway, "zeta", 8, at("2026-01-21T00:00:00Z"));
        gateway.shutdown();
    }
    let store_arg = path.to_str().expect("utf-8");
    let output = crate::harness::creditgate_command()
        .args(["alerts", "list", "--store", store_arg, "--format", "json"])
        .output()
        .expect("runs");
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<FiredAlert> = serde_json::from_slice(&output.stdout).expect("one JSON array");
    let seen: Vec<(&str, u8)> = lines
        .iter()
        .map(|a| (a.account.as_str(), a.threshold))
        .collect();
    assert_eq!(seen, [("acme", 80), ("acme", 100), ("zeta", 80)]);
    let output = crate::harness::creditgate_command()
        .args(["alerts", "list", "--store", store_arg, "--account", "zeta"])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("zeta") && !text.contains("acme"), "{text}");
    harness::assert_has(&text, "8 / 10");
}

/// A webhook endpoint on loopback: answers each request with the next status of
/// `statuses` (then 200), or never, and reports what it received.
fn endpoint(statuses: Vec<u16>, answer: bool) -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let url = format!(
        "http://{}/hooks/credits",
        listener.local_addr().expect("addr")
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut statuses = statuses.into_iter();
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = tx.send((head, body));
            let mut stream = reader.into_inner();
            if answer {
                let status = statuses.next().unwrap_or(200);
                let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            } else {
                held.push(stream);
            }
        }
    });
    (url, rx)
}

const SECRET: &str = "a-webhook-secret-0123456789";

/// A gateway over a fresh store with `acme` on `plan`, its alerts delivered to
/// `url` with `retry`, on the runtime returned with it.
fn acme_with_webhook(url: String, retry: Retry, plan: &str) -> (Gateway, tokio::runtime::Runtime) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let (_, gateway) = acme_on(plan);
    let webhook = Webhook {
        url,
        secret: SECRET.into(),
    };
    alerts::validate(&webhook).expect("valid webhook");
    let (notifier, delivery) = Notifier::with_webhooks(vec![webhook], retry);
    tokio.spawn(delivery);
    gateway.set_notifier(notifier);
    (gateway, tokio)
}

#[test]
fn a_failing_webhook_is_retried_and_every_attempt_is_signed() {
    let (url, received) = endpoint(vec![500, 503], true);
    let retry = Retry {
        attempts: 5,
        first_backoff: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
    };
    let (gateway, _tokio) = acme_with_webhook(url, retry, "ten");
    charge(&gateway, "acme", 8, at("2026-01-20T00:00:00Z"));
    let mut attempts = Vec::new();
    for _ in 0..3 {
        attempts.push(
            received
                .recv_timeout(Duration::from_secs(10))
                .expect("an attempt arrives"),
        );
    }
    assert!(
        received.recv_timeout(Duration::from_millis(300)).is_err(),
        "no attempt after the 200"
    );
    for (head, body) in &attempts {
        harness::assert_starts(head, "POST /hooks/credits HTTP/1.1");
        let signature = alerts::signature(SECRET, body);
        harness::assert_has(head, &format!("X-Creditgate-Signature: {signature}"));
        let alert: FiredAlert = serde_json::from_slice(body).expect("a JSON alert");
        assert_eq!(
            (
                alert.event.as_str(),
                alert.account.as_str(),
                alert.threshold,
                alert.used
            ),
            ("credit_threshold_crossed", "acme", 80, 8)
        );
    }
}

#[test]
fn a_webhook_that_never_answers_does_not_delay_decisions() {
    let (url, received) = endpoint(Vec::new(), false);
    let retry = Retry {
        attempts: 2,
        first_backoff: Duration::from_secs(60),
        timeout: Duration::from_secs(60),
    };
    let (gateway, _tokio) = acme_with_webhook(url, retry, "hundred");
    let now = at("2026-01-20T00:00:00Z");
    // Every decision is answered while the endpoint holds the first delivery
    // open for a minute: each crossing queues its alert and moves on.
    charge(&gateway, "acme", 80, now);
    received
        .recv_timeout(Duration::from_secs(10))
        .expect("the delivery is under way");
    let gateway = Arc::new(gateway);
    let (done, finished) = mpsc::channel();
    let sender = gateway.clone();
    std::thread::spawn(move || {
        for _ in 0..20 {
            charge(&sender, "acme", 1, now);
        }
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("decisions are answered while the webhook hangs");
    let decision = gateway
        .decide_blocking(
            Request::Usage {
                account: "acme".into(),
            },
            now,
        )
        .expect("answered");
    assert_eq!(decision.usage.map(|u| u.email_credits.used), Some(100));
    assert_eq!(logged(gateway.store().as_ref(), "acme").len(), 2);
}

// ---- the log's own namespace (issue 16.3) ---------------------------------------

/// The log is kept apart from the component's scopes: a listing of scopes shows
/// only the account, and the log still lists what fired.
#[test]
fn the_log_is_no_scope_of_the_component() {
    let (store, gateway) = acme_on("ten");
    charge(&gateway, "acme", 8, at("2026-01-20T10:00:00Z"));
    gateway.shutdown();
    assert_eq!(store.scopes().expect("scopes"), ["acme"]);
    assert_eq!(logged(store.as_ref(), "acme"), [email(80, 8, 10)]);
}

fn fired(threshold: u8, used: u64) -> FiredAlert {
    FiredAlert {
        event: "credit_threshold_crossed".to_owned(),
        account: "acme".to_owned(),
        credit: "email_credits".to_owned(),
        threshold,
        used,
        limit: 10,
        at: "2026-01-20T10:00:00Z".to_owned(),
        resets_at: Some("2026-02-15T10:00:00Z".to_owned()),
    }
}

/// Account `acme` in `store`, with an alert log of two alerts as the previous
/// release kept it: records keyed `<at>/<sequence>/<credit>/<threshold>` and a
/// counter `sequence`, in a scope of its own. The two alerts.
fn acme_in_previous_layout(store: &dyn Store) -> (FiredAlert, FiredAlert) {
    let (first, second) = (fired(80, 8), fired(100, 10));
    store
        .record_insert("acme", "account", "0 ten")
        .expect("an account");
    store
        .import_scope("\u{1}alerts/acme", &previous_layout(&first, &second))
        .expect("the previous layout");
    (first, second)
}

fn previous_layout(first: &FiredAlert, second: &FiredAlert) -> creditgate::store::ScopeDump {
    let at = "00000000000000000100";
    creditgate::store::ScopeDump {
        records: vec![
            (
                format!("{at}/00000000000000000001/email_credits/080"),
                serde_json::to_string(first).expect("encodes"),
            ),
            (
                format!("{at}/00000000000000000002/email_credits/100"),
                serde_json::to_string(second).expect("encodes"),
            ),
        ],
        counters: vec![("sequence".to_owned(), 2, None)],
        ..Default::default()
    }
}

/// A file written before the log had a namespace of its own kept it in a scope
/// `"\u{1}alerts/<account>"` (records keyed `<at>/<sequence>/<credit>/<threshold>`
/// and a counter `sequence`), written here through the store's API exactly as
/// the previous release laid it out. Opening it moves the log, drops the old
/// scope, and numbers the next alert after the old ones.
#[test]
fn a_log_in_the_previous_layout_is_migrated_when_the_file_opens() {
    let (_dir, path) = harness::temp_path("previous.redb");
    let (first, second) = {
        let store = RedbStore::open(&path).expect("creates");
        let alerts = acme_in_previous_layout(&store);
        store.persist().expect("durable");
        assert_eq!(
            store.scopes().expect("scopes"),
            ["\u{1}alerts/acme", "acme"],
            "the file is in the previous layout"
        );
        alerts
    };
    for _ in 0..2 {
        // Opened twice: the second opening finds nothing left to move.
        let store = RedbStore::open(&path).expect("reopens");
        assert_eq!(store.scopes().expect("scopes"), ["acme"]);
        assert_eq!(
            alerts::list(&store, Some("acme")).expect("lists"),
            [first.clone(), second.clone()]
        );
        assert_eq!(alerts::list(&store, None).expect("lists").len(), 2);
    }
    let store = RedbStore::open(&path).expect("reopens");
    assert_eq!(store.alert_sequence("acme").expect("next"), 3);
}

/// Every backend answers the log's calls alike: sequences per owner, keys
/// unique per owner, and visits in (owner, key) order from a cursor.
fn the_log_conforms(store: &dyn Store) {
    assert_eq!(store.alert_sequence("b").expect("seq"), 1);
    assert_eq!(store.alert_sequence("b").expect("seq"), 2);
    assert_eq!(store.alert_sequence("a").expect("seq"), 1);
    for (owner, key) in [("b", "2"), ("a", "1"), ("b", "1"), ("c", "1")] {
        assert!(
            store
                .alert_insert(owner, key, &format!("{owner}{key}"))
                .expect("adds")
        );
    }
    assert!(!store.alert_insert("b", "1", "again").expect("refused"));
    let visit = |owner: Option<&str>, after: Option<(&str, &str)>| {
        let mut seen = Vec::new();
        store
            .visit_alerts(
                creditgate::store::Alerts { owner, after },
                &mut |o, k, v| {
                    seen.push(format!("{o}/{k}={v}"));
                    true
                },
            )
            .expect("visits");
        seen
    };
    assert_eq!(visit(None, None), ["a/1=a1", "b/1=b1", "b/2=b2", "c/1=c1"]);
    assert_eq!(visit(None, Some(("b", "1"))), ["b/2=b2", "c/1=c1"]);
    assert_eq!(visit(Some("b"), None), ["b/1=b1", "b/2=b2"]);
    assert_eq!(visit(Some("b"), Some(("b", "1"))), ["b/2=b2"]);
    assert_eq!(visit(Some("b"), Some(("a", "9"))), ["b/1=b1", "b/2=b2"]);
    assert!(visit(Some("a"), Some(("b", "0"))).is_empty());
    assert!(
        store.scopes().expect("scopes").is_empty(),
        "no scope holds the log"
    );
}

#[test]
fn the_log_pages_by_owner_and_key_on_memory_and_redb() {
    let dir = tempfile::tempdir().expect("temp dir");
    the_log_conforms(&RedbStore::open(&dir.path().join("log.redb")).expect("creates"));
    the_log_conforms(&MemoryStore::new());
}

/// The same on Redis, and a log in the previous layout (an `"\u{1}alerts/"`
/// scope, as the previous release wrote it) is moved when a store connects.
#[test]
fn on_redis_the_log_conforms_and_the_previous_layout_is_migrated_on_connect() {
    use crate::redis::Stores as _;
    let server = crate::redis::RedisServer::start();
    the_log_conforms(&server.store("conform"));
    let (first, second) = acme_in_previous_layout(&server.store("old"));
    for _ in 0..2 {
        let store = server.store("old");
        assert_eq!(store.scopes().expect("scopes"), ["acme"]);
        assert_eq!(
            alerts::list(&store, Some("acme")).expect("lists"),
            [first.clone(), second.clone()]
        );
    }
    assert_eq!(server.store("old").alert_sequence("acme").expect("next"), 3);
}

/// `store copy` copies the alert log too, now that no scope holds it.
#[test]
fn a_store_copy_carries_the_alert_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (from, to) = (dir.path().join("from.redb"), dir.path().join("to.redb"));
    {
        let store = RedbStore::open(&from).expect("creates");
        store
            .import_scope(
                "\u{1}alerts/acme",
                &previous_layout(&fired(80, 8), &fired(100, 10)),
            )
            .expect("the previous layout");
        store
            .record_insert("acme", "account", "0 ten")
            .expect("an account");
        store.persist().expect("durable");
    }
    harness::succeeds(
        harness::creditgate_command()
            .args(["store", "copy", "--from"])
            .arg(&from)
            .arg("--to")
            .arg(&to),
    );
    let copy = RedbStore::open(&to).expect("opens");
    assert_eq!(
        alerts::list(&copy, None).expect("lists"),
        [fired(80, 8), fired(100, 10)]
    );
    assert_eq!(copy.scopes().expect("scopes"), ["acme"]);
}
