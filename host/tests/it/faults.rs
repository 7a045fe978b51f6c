//! The embedded store on a disk that fills up (issue 14.7): a storage backend
//! that refuses writes on command, as a full file system does (ENOSPC), under
//! the store alone, a worker and its cached accounts, and the HTTP API.
//!
//! What it proves: after a failed commit no later call, reads included, sees
//! what that commit held; `/healthz` answers 503 with the reason meanwhile; the
//! store reopens by itself once the disk takes writes again, as of its last
//! durable commit; nothing acknowledged is lost; closing the store after the
//! failure writes none of it; and a worker that cached an account record the
//! rollback took away decides on the record as it is now.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redb::StorageBackend;
use serde_json::{Value, json};

use creditgate::bindings::Reason;
use creditgate::gateway::{Gateway, GatewayError};
use creditgate::http::{HttpOptions, ReloadRefused, Reloader};
use creditgate::replay::parse_instant;
use creditgate::request::Request;
use creditgate::runtime::Worker;
use creditgate::store::{CounterAdd, CounterTally, OpenOptions, RedbStore, Store, StoreError};

use creditgate_testkit::http::Client;

use crate::harness::{self, Serving};
// The HTTP tests' two plans: small (3 leads, 4 emails) and large.
use crate::http::POLICY;

/// A disk that can be filled and emptied again, for every file opened through
/// [`Disk::options`].
#[derive(Clone, Default)]
struct Disk {
    full: Arc<AtomicBool>,
}

impl Disk {
    /// Options that open the file on this disk, reopening it at the first chance
    /// after a failed commit (no wait, so that the test need not sleep).
    fn options(&self) -> OpenOptions {
        let full = self.full.clone();
        OpenOptions {
            retry_after: Duration::ZERO,
            storage: Some(Arc::new(move |_, file| {
                Box::new(OnDisk {
                    file,
                    full: full.clone(),
                })
            })),
            ..OpenOptions::default()
        }
    }

    fn fill(&self) {
        self.full.store(true, Ordering::SeqCst);
    }

    fn free(&self) {
        self.full.store(false, Ordering::SeqCst);
    }
}

/// A file on a [`Disk`]: while the disk is full, writing or syncing fails with
/// ENOSPC; growing the file still works, as it does on most file systems (sparse).
#[derive(Debug)]
struct OnDisk {
    file: Box<dyn StorageBackend>,
    full: Arc<AtomicBool>,
}

impl OnDisk {
    fn room(&self) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }
}

impl StorageBackend for OnDisk {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.room()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.room()?;
        self.file.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.file.close()
    }
    crate::delegate_locks!(file);
}

const NOW: i64 = 1_800_000_000_000_000_000;

fn add(store: &RedbStore, amount: u64) -> Result<u64, StoreError> {
    let add = CounterAdd {
        scope: "acme",
        guard: None,
        name: "email",
        amount,
        limit: None,
        once: None,
        expires_at: None,
        now: NOW,
    };
    match store.counter_add(add)? {
        creditgate::bindings::CounterAdded::Applied(n) => Ok(n),
        other => panic!("not applied: {other:?}"),
    }
}

fn unavailable(result: Result<impl std::fmt::Debug, StoreError>, path: &Path) -> String {
    match result {
        Err(StoreError::Unavailable(m)) => {
            assert!(
                m.contains(&path.display().to_string()),
                "the refusal names the file: {m}"
            );
            m
        }
        other => panic!("expected the store to refuse, got {other:?}"),
    }
}

#[test]
fn after_a_failed_commit_nothing_it_held_is_seen_and_the_store_reopens_by_itself() {
    let (_dir, path, disk, store) = fresh_store_on_a_disk();
    assert_eq!(add(&store, 5).expect("adds"), 5);
    store.persist().expect("durable");
    assert_eq!(store.losses(), 0);

    disk.fill();
    // Applied and visible before its commit, as every primitive is.
    assert_eq!(add(&store, 3).expect("applied, not yet durable"), 8);
    let failed = store.persist().expect_err("the disk is full");
    assert!(
        failed.to_string().contains("No space left on device"),
        "{failed}"
    );
    assert_eq!(store.losses(), 1);

    // No later call sees the 3 nobody acknowledged: reads are refused too.
    unavailable(store.counter_get("acme", "email", NOW), &path);
    let tally = CounterTally {
        scope: "acme",
        guard: None,
        name: "email",
        now: NOW,
    };
    unavailable(store.counter_tally(tally), &path);
    unavailable(store.record_get("acme", "account"), &path);
    unavailable(store.scopes(), &path);
    unavailable(add(&store, 1), &path);
    let why = unavailable(store.health(), &path);
    harness::assert_has(&why, "No space left on device");

    disk.free();
    store.health().expect("reopens once the disk takes writes");
    assert_eq!(store.counter_get("acme", "email", NOW).expect("reads"), 5);
    assert_eq!(add(&store, 1).expect("adds"), 6);
    store.persist().expect("durable");
    drop(store);
    let reopened = RedbStore::open(&path).expect("opens");
    assert_eq!(
        reopened.counter_get("acme", "email", NOW).expect("reads"),
        6
    );
}

#[test]
fn a_call_reopens_the_store_without_a_health_check() {
    let (_dir, path, disk, store) = fresh_store_on_a_disk();
    assert_eq!(add(&store, 2).expect("adds"), 2);
    store.persist().expect("durable");
    disk.fill();
    add(&store, 3).expect("applied");
    store.persist().expect_err("the disk is full");
    // Still full: the reopen a call tries fails, and the call is refused.
    unavailable(store.counter_get("acme", "email", NOW), &path);
    disk.free();
    assert_eq!(store.counter_get("acme", "email", NOW).expect("reads"), 2);
}

#[test]
fn closing_after_a_failed_commit_writes_none_of_it() {
    let (_dir, path, disk, store) = fresh_store_on_a_disk();
    add(&store, 5).expect("adds");
    store.persist().expect("durable");
    disk.fill();
    add(&store, 3).expect("applied");
    store.persist().expect_err("the disk is full");
    // Space returns before the store closes: the close must not make durable
    // what the failed commit held (redb's close makes pending commits durable).
    disk.free();
    drop(store);
    let reopened = RedbStore::open(&path).expect("opens");
    assert_eq!(
        reopened.counter_get("acme", "email", NOW).expect("reads"),
        5
    );
}

fn at(s: &str) -> i64 {
    parse_instant(s).expect("valid instant")
}

fn charge(account: &str, id: &str) -> Request {
    Request::ChargeEmail {
        account: account.into(),
        cost: 1,
        message_id: Some(id.into()),
    }
}

/// A redb store at `path` on a fresh [`Disk`].
fn store_on_a_disk(path: &Path) -> (Disk, RedbStore) {
    let disk = Disk::default();
    let store = RedbStore::open_with(path, disk.options()).expect("opens");
    (disk, store)
}

/// [`store_on_a_disk`] in a fresh directory: the directory (removed when
/// dropped), the store's path, the disk and the store.
fn fresh_store_on_a_disk() -> (tempfile::TempDir, std::path::PathBuf, Disk, RedbStore) {
    let (dir, path) = harness::temp_path("full.redb");
    let (disk, store) = store_on_a_disk(&path);
    (dir, path, disk, store)
}

/// [`fresh_store_on_a_disk`], shared with a worker with [`POLICY`] over it.
fn worker_on_a_disk() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Disk,
    Arc<RedbStore>,
    Worker,
) {
    let (dir, path, disk, store) = fresh_store_on_a_disk();
    let store = Arc::new(store);
    let worker = harness::worker_on(store.clone(), POLICY);
    (dir, path, disk, store, worker)
}

/// A worker caches each account's record and guards every call with it; a
/// rollback that takes a plan change away must not leave it deciding on the
/// plan it cached.
#[test]
fn a_worker_that_cached_a_rolled_back_plan_decides_on_the_plan_kept() {
    let (_dir, _, disk, store, mut worker) = worker_on_a_disk();
    let t = at("2026-03-01T00:00:00Z");
    let subscribe = harness::subscription("acme", "small");
    assert_eq!(worker.decide(&subscribe, t).expect("decides").denied, None);
    store.persist().expect("durable");

    disk.fill();
    let upgrade = Request::ChangePlan {
        account: "acme".into(),
        plan: "large".into(),
    };
    assert_eq!(worker.decide(&upgrade, t).expect("decides").denied, None);
    // Decided on the upgrade: the worker now knows acme as `large`.
    let d = worker.decide(&charge("acme", "m0"), t).expect("decides");
    assert_eq!(d.usage.expect("usage").email_credits.limit, Some(20));
    store.persist().expect_err("the disk is full");
    disk.free();
    store.health().expect("reopens");

    // The upgrade and the charge are gone; the small plan's 4 credits are left.
    for i in 1..=4 {
        let d = worker
            .decide(&charge("acme", &format!("m{i}")), t)
            .expect("decides");
        assert_eq!(d.denied, None, "charge {i}");
        let usage = d.usage.expect("usage");
        assert_eq!(usage.plan, "small");
        assert_eq!(usage.email_credits.used, i);
    }
    let d = worker.decide(&charge("acme", "m5"), t).expect("decides");
    assert_eq!(d.denied, Some(Reason::EmailCreditsExhausted));
}

/// The HTTP API over a gateway of one writer (and one reader) on `store`.
struct Api {
    client: Client,
    serving: Serving,
}

impl Api {
    fn start(store: Arc<dyn Store>) -> Api {
        let (gateway, _) =
            Gateway::start(harness::shared_runtime(), store, POLICY, 1).expect("gateway starts");
        let gateway = Arc::new(gateway);
        let reload: Reloader = Arc::new(|_force| {
            Err(ReloadRefused {
                message: "no reloads here".into(),
                diagnostics: vec![],
            })
        });
        let serving = Serving::http(gateway, reload, HttpOptions::default());
        Api {
            client: Client::with_timeout(serving.base(), Duration::from_secs(20)),
            serving,
        }
    }

    /// `method` in lower case: `get`, or `post` with or without a JSON body.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let (status, text) = crate::http::send(&self.client, method, path, body.as_deref());
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn leads(&self, emails: &[&str]) -> (u16, Value) {
        self.call(
            "post",
            "/v1/accounts/acme/campaigns/q1/leads",
            Some(json!({ "emails": emails })),
        )
    }

    fn usage(&self) -> (u16, Value) {
        self.call("get", "/v1/accounts/acme/usage", None)
    }
}

#[test]
fn the_gateway_on_a_full_disk_is_unhealthy_refuses_and_recovers_with_what_it_acknowledged() {
    let (_dir, path, disk, store) = fresh_store_on_a_disk();
    let store = Arc::new(store);
    let api = Api::start(store);
    let (status, body) = api.call(
        "post",
        "/v1/accounts/acme/subscription",
        Some(json!({ "plan": "large" })),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.leads(&["a@x.io", "b@x.io"]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.call("get", "/healthz", None);
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");

    disk.fill();
    let (status, body) = api.leads(&["c@x.io", "d@x.io"]);
    // Refused at its commit (the journal's sync fails), or before: redb commits
    // without a sync, and the leads may need its file to grow, which a full
    // disk refuses too.
    assert_eq!(status, 503, "{body}");
    let code = &body["error"]["code"];
    assert!(
        code == "not_durable" || code == "store_unavailable",
        "{body}"
    );
    if api.call("get", "/healthz", None).0 == 200 {
        // The full disk was met inside the primitive (the file could not grow)
        // rather than at its commit: nothing was applied and the store stays
        // open. A charge, which needs no new page, then meets it at its commit.
        let send = json!({"account": "acme", "to": "x@y.io"});
        let (status, body) = api.call("post", "/v1/decide/email", Some(send));
        assert_eq!(status, 503, "{body}");
    }
    // Live usage does not count what nobody acknowledged: it is refused.
    let (status, body) = api.usage();
    assert_eq!(status, 503, "{body}");
    // Nor does an RCPT-time check (read-only) decide on them.
    let check = Request::CheckEmail {
        account: "acme".into(),
        cost: 1,
    };
    match api
        .serving
        .gateway
        .decide_blocking(check, at("2026-03-01T00:00:00Z"))
    {
        Err(GatewayError::Decide(_)) => {}
        other => panic!("a check on a closed store must fail, got {other:?}"),
    }
    let (status, body) = api.call("get", "/healthz", None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unhealthy");
    let reason = body["reason"].as_str().expect("a reason");
    harness::assert_has(reason, "No space left on device");
    assert!(reason.contains(&path.display().to_string()), "{reason}");

    disk.free();
    let (status, body) = api.call("get", "/healthz", None);
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");
    let (status, body) = api.usage();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lead_credits"]["used"], 2, "{body}");
    let (status, body) = api.leads(&["c@x.io", "d@x.io"]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(api.usage().1["lead_credits"]["used"], 4);
}

/// A command decides through `decide_durable` (issue 18 item 4): it returns an
/// allow only once it is durable, an allow it could not make durable is an
/// error (and is not kept), and a denial, which changes nothing, needs no sync.
#[test]
fn decide_durable_answers_only_what_it_made_durable() {
    use creditgate::runtime::{DecideError, DurableError};

    let (_dir, path, disk, store, mut worker) = worker_on_a_disk();
    let t = at("2026-03-01T00:00:00Z");
    let subscribe = harness::subscription("acme", "small");
    let subscribed = worker.decide_durable(&subscribe, t).expect("decides");
    assert_eq!(subscribed.denied, None);
    let charged = worker
        .decide_durable(&charge("acme", "m1"), t)
        .expect("decides");
    assert_eq!(charged.charged, 1);

    disk.fill();
    match worker.decide_durable(&charge("acme", "m2"), t) {
        Err(DurableError::Persist(StoreError::Unavailable(_)) | DurableError::Decide(_)) => {}
        other => panic!("an allow answered without a sync: {other:?}"),
    }
    let unknown = Request::Usage {
        account: "nobody".into(),
    };
    match worker.decide_durable(&unknown, t) {
        Ok(d) => assert_eq!(d.denied, Some(Reason::UnknownAccount)),
        // The store refused the read too (it reopens at the first call).
        Err(DurableError::Decide(DecideError::Policy(_))) => {}
        Err(e) => panic!("a denial needs no sync: {e}"),
    }
    disk.free();
    drop(worker);
    drop(store);

    // What was answered is there; what was refused is not.
    let reopened: Arc<dyn Store> = Arc::new(RedbStore::open(&path).expect("opens"));
    let mut worker = harness::worker_on(reopened, POLICY);
    let usage = Request::Usage {
        account: "acme".into(),
    };
    let d = worker.decide_durable(&usage, t).expect("decides");
    assert_eq!(d.usage.expect("usage").email_credits.used, 1);
}
