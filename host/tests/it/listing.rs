//! Paged listings (issues 13.8 and 14.9): the store's ordered reads resuming
//! after a cursor, on every backend; the API's JSON listings over them; the
//! dashboard's pages over many accounts; and the cap that keeps pages and
//! listings from delaying a sender's decision.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use creditgate::api_read::{Bulk, Busy};
use creditgate::bindings::{
    CounterAdded, GroupCleared, GuardedAdd, GuardedMember, MemberAdded, MemberRemoved,
    MembersAdded, Tally,
};
use creditgate::http::HttpOptions;
use creditgate::request::Request;
use creditgate::store::{
    Alerts, CounterAdd, CounterTally, MemberAdd, MemberAddGuarded, MemberAddMany, Members,
    Membership, MemoryStore, Records, RedbStore, ScopeDump, Store, StoreError, Visit, VisitAlert,
};

use crate::harness::{self, unescape};
use crate::http::{Api, code, send};

// ---- the store's paged reads ------------------------------------------------------

/// Scopes with records and memberships, a host scope among them.
fn fill(store: &dyn Store) {
    for i in 0..23 {
        let scope = format!("s{i:02}");
        store.record_insert(&scope, "account", "x").expect("insert");
    }
    store
        .record_insert("\u{1}alerts/s03", "k", "v")
        .expect("insert");
    for (group, count) in [("g0", 5), ("g1", 1), ("g2", 7), ("g3", 3)] {
        let members: Vec<String> = (0..count).map(|i| format!("m{i}@x.io")).collect();
        let add = MemberAddMany {
            scope: "s05",
            group,
            members: &members,
            limit: None,
        };
        store.member_add_many(add).expect("members");
    }
    for i in 0..11 {
        store
            .record_insert("s07", &format!("r{i:02}"), &format!("v{i}"))
            .expect("insert");
    }
}

/// Every pair of a paged read, `limit` a page: `read(after, visit)` visits the
/// pairs after `after` (the last pair read so far) until `visit` says stop.
fn page_through(
    limit: usize,
    mut read: impl FnMut(Option<&(String, String)>, &mut dyn FnMut(&str, &str) -> bool),
) -> Vec<(String, String)> {
    let mut paged: Vec<(String, String)> = Vec::new();
    loop {
        let mut page = Vec::new();
        read(paged.last(), &mut |a, b| {
            page.push((a.to_owned(), b.to_owned()));
            page.len() < limit
        });
        if page.is_empty() {
            return paged;
        }
        paged.extend(page);
    }
}

/// Checks that each paged read, page by page from the cursor, gives exactly
/// what the whole read gives.
fn pages_resume_after_the_cursor(store: &dyn Store) {
    fill(store);
    let all = store.scopes().expect("scopes");
    for limit in [1, 4, 100] {
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .scopes_after(after.as_deref(), limit)
                .expect("scopes after");
            assert!(page.len() <= limit);
            let Some(last) = page.last().cloned() else {
                break;
            };
            paged.extend(page);
            after = Some(last);
        }
        assert_eq!(paged, all, "scopes, {limit} a page");
    }

    let every = harness::memberships(store, "s05");
    assert_eq!(every.len(), 16);
    for group in [None, Some("g2"), Some("g1"), Some("nope")] {
        let whole: Vec<_> = every
            .iter()
            .filter(|(g, _)| group.is_none_or(|only| only == g))
            .cloned()
            .collect();
        for limit in [1, 3, 50] {
            let paged = page_through(limit, |after, visit| {
                let list = Members {
                    scope: "s05",
                    group,
                    after: after.map(|(g, m)| (g.as_str(), m.as_str())),
                };
                store.visit_members_after(list, visit).expect("visit after");
            });
            assert_eq!(paged, whole, "members of {group:?}, {limit} a page");
        }
    }
    // A cursor in another group than the one asked for: before it, from its
    // start; after it, nothing.
    let mut seen = Vec::new();
    let mut list = Members {
        scope: "s05",
        group: Some("g2"),
        after: Some(("g1", "zz")),
    };
    let mut collect = |_: &str, m: &str| {
        seen.push(m.to_owned());
        true
    };
    store
        .visit_members_after(list, &mut collect)
        .expect("visit after");
    list.after = Some(("g3", ""));
    store
        .visit_members_after(list, &mut collect)
        .expect("visit after");
    assert_eq!(seen.len(), 7, "{seen:?}");

    let records = store.export_scope("s07").expect("export").records;
    for limit in [1, 5, 50] {
        let paged = page_through(limit, |after, visit| {
            let list = Records {
                scope: "s07",
                after: after.map(|(k, _)| k.as_str()),
            };
            store.visit_records(list, visit).expect("records");
        });
        assert_eq!(paged, records, "records, {limit} a page");
    }
}

#[test]
fn paged_reads_resume_after_the_cursor_on_every_backend() {
    pages_resume_after_the_cursor(&MemoryStore::new());
    let dir = tempfile::tempdir().expect("temp dir");
    let redb = RedbStore::open(&dir.path().join("s.redb")).expect("opens");
    pages_resume_after_the_cursor(&redb);
    use crate::redis::Stores as _;
    let server = crate::redis::RedisServer::start();
    pages_resume_after_the_cursor(&server.store("paging"));
}

// ---- the JSON listings ----------------------------------------------------------

/// Every page of `path` (which takes `limit` and `after`), each checked
/// against the OpenAPI file; the items under `key`, and the number of pages.
fn all_pages(api: &Api, path: &str, key: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut after = String::new();
    for pages in 1.. {
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, body) = api.get(&format!("{path}{sep}after={after}"));
        assert_eq!(status, 200, "{path}: {body}");
        items.extend(body[key].as_array().expect("a list").iter().cloned());
        match &body["next"] {
            Value::Null => return (items, pages),
            Value::String(next) => after = next.clone(),
            other => panic!("next is {other}"),
        }
        assert!(pages < 100, "{path}: no end");
    }
    unreachable!()
}

fn listings_page_through_everything(api: &Api, store: &dyn Store) {
    let mut names = [
        "acme", "globex", "initech", "umbrella", "zeta", "acme-eu", "hooli",
    ];
    for (i, name) in names.iter().enumerate() {
        let plan = if i % 2 == 0 { "small" } else { "large" };
        assert_eq!(api.subscribe(name, plan).0, 201);
    }
    names.sort_unstable();

    // Accounts: every one once, in byte order, each exactly its usage answer.
    let (accounts, pages) = all_pages(api, "/v1/accounts?limit=3", "accounts");
    assert_eq!(pages, 3);
    let listed: Vec<&str> = accounts
        .iter()
        .map(|a| a["account"].as_str().expect("account"))
        .collect();
    assert_eq!(listed, names);
    for account in &accounts {
        let (_, usage) = api.usage(account["account"].as_str().expect("name"));
        assert_eq!(*account, usage);
    }
    let (_, body) = api.get("/v1/accounts");
    assert_eq!(body["accounts"].as_array().map(Vec::len), Some(names.len()));
    assert_eq!(body["next"], Value::Null);

    // Campaigns and leads.
    assert_eq!(
        api.leads("acme", "q2", &["B@x.io", "a@x.io"]).0,
        200,
        "leads"
    );
    assert_eq!(api.leads("acme", "q1", &["c@x.io"]).0, 200);
    let (status, body) = api.get("/v1/accounts/acme/campaigns");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"account": "acme", "campaigns": [
            {"campaign": "q1", "leads": 1, "exclusive": 1},
            {"campaign": "q2", "leads": 2, "exclusive": 2}]})
    );
    let (leads, pages) = all_pages(api, "/v1/accounts/acme/leads?limit=2", "leads");
    assert_eq!(pages, 2);
    assert_eq!(
        Value::from(leads),
        json!([{"campaign": "q1", "email": "c@x.io"},
               {"campaign": "q2", "email": "a@x.io"},
               {"campaign": "q2", "email": "b@x.io"}])
    );
    let (status, first) = api.get("/v1/accounts/acme/leads?campaign=q2&limit=1");
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["account"], "acme");
    assert_eq!(
        first["leads"],
        json!([{"campaign": "q2", "email": "a@x.io"}])
    );
    let cursor = first["next"].as_str().expect("a next page");
    let (_, second) = api.get(&format!(
        "/v1/accounts/acme/leads?campaign=q2&limit=1&after={cursor}"
    ));
    assert_eq!(
        second["leads"],
        json!([{"campaign": "q2", "email": "b@x.io"}])
    );
    assert_eq!(second["next"], Value::Null);
    let (status, body) = api.get(&format!(
        "/v1/accounts/acme/leads?campaign=q1&after={cursor}"
    ));
    assert_eq!((status, code(&body)), (400, "invalid_query"), "{body}");
    assert_eq!(
        body["error"]["message"],
        "after: this cursor belongs to another campaign's listing"
    );
    for path in ["/v1/accounts/nobody/campaigns", "/v1/accounts/nobody/leads"] {
        let (status, body) = api.get(path);
        assert_eq!(
            (status, code(&body)),
            (404, "unknown_account"),
            "{path}: {body}"
        );
    }

    // Alerts: acme (small: 3 lead credits) crossed 80% and 100% of its leads;
    // globex (large: 20 email credits) crosses 80% with 16 sends.
    let to: Vec<String> = (0..16).map(|i| format!("r{i}@y.io")).collect();
    let (status, body) = api.email(json!({"account": "globex", "to": to}));
    assert_eq!(status, 200, "{body}");
    let logged = creditgate::alerts::list(store, None).expect("the log");
    assert_eq!(logged.len(), 3, "{logged:?}");
    let (alerts, pages) = all_pages(api, "/v1/alerts?limit=1", "alerts");
    assert_eq!(pages, 3);
    assert_eq!(
        Value::from(alerts),
        serde_json::to_value(&logged).expect("JSON")
    );
    let (status, body) = api.get("/v1/alerts?account=globex");
    assert_eq!(status, 200, "{body}");
    let globex = creditgate::alerts::list(store, Some("globex")).expect("the log");
    assert_eq!(body["alerts"], serde_json::to_value(&globex).expect("JSON"));
    assert_eq!(body["next"], Value::Null);
    let (_, body) = api.get("/v1/alerts?account=acme&limit=1");
    let acme_cursor = body["next"].as_str().expect("a next page").to_owned();
    let (status, body) = api.get(&format!("/v1/alerts?account=globex&after={acme_cursor}"));
    assert_eq!((status, code(&body)), (400, "invalid_query"), "{body}");
    assert_eq!(
        body["error"]["message"],
        "after: this cursor belongs to another account's listing"
    );
    // Without the account filter, a cursor resumes the listing of all.
    let (_, body) = api.get(&format!("/v1/alerts?after={acme_cursor}"));
    assert_eq!(
        body["alerts"],
        serde_json::to_value(&logged[1..]).expect("JSON")
    );

    // Bad queries name the parameter.
    for (query, names_it) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=1&limit=2", "limit"),
        ("after=zz", "after"),
        (&format!("after={cursor}") as &str, "after"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = api.get(&format!("/v1/accounts?{query}"));
        assert_eq!(
            (status, code(&body)),
            (400, "invalid_query"),
            "{query}: {body}"
        );
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(message.starts_with(names_it), "{query}: {message}");
    }
}

#[test]
fn listings_page_through_accounts_campaigns_leads_and_alerts() {
    let store = Arc::new(MemoryStore::new());
    let api = Api::start(store.clone(), HttpOptions::default());
    listings_page_through_everything(&api, store.as_ref());

    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).expect("opens"));
    let api = Api::start(store.clone(), HttpOptions::default());
    listings_page_through_everything(&api, store.as_ref());
}

#[test]
fn plans_are_the_policy_in_force_at_the_version_healthz_reports() {
    let api = Api::memory();
    let (status, body) = api.get("/v1/plans");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 0);
    let mut plans = body["plans"].as_array().expect("plans").clone();
    plans.sort_by_key(|p| p["name"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        Value::from(plans),
        json!([{"name": "large", "lead_credits": 10, "email_credits": 20},
               {"name": "small", "lead_credits": 3, "email_credits": 4}])
    );
    let (status, body) =
        api.reload_with("[plans.scale]\nlead_credits = \"unlimited\"\nemail_credits = 7\n");
    assert_eq!(status, 200, "{body}");
    let (_, health) = api.get("/healthz");
    let (_, body) = api.get("/v1/plans");
    assert_eq!(body["version"], health["policy_version"]);
    assert_eq!(body["version"], 1);
    assert_eq!(
        body["plans"],
        json!([{"name": "scale", "lead_credits": "unlimited", "email_credits": 7}])
    );
}

// ---- the dashboard over many accounts ---------------------------------------------

/// The accounts a list page shows, with their states, and its next page's path.
fn list_page(api: &Api, path: &str) -> (Vec<(String, String)>, Option<String>) {
    let (status, html) = send(&api.client, "get", path, None);
    assert_eq!(status, 200, "{path}: {html}");
    let rows = html
        .split("<tr data-account=\"")
        .skip(1)
        .map(|piece| {
            let name = &piece[..piece.find('"').expect("closed")];
            let state = piece
                .split_once("data-state=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .expect("a state")
                .0;
            (unescape(name), state.to_owned())
        })
        .collect();
    let next = html
        .split_once(r#"rel="next" href=""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(href, _)| unescape(href));
    (rows, next)
}

/// Every page from `path` on: the rows, and the number of pages.
fn every_page(api: &Api, path: &str) -> (Vec<(String, String)>, usize) {
    let (mut rows, mut next) = list_page(api, path);
    let mut pages = 1;
    while let Some(path) = next {
        let (more, following) = list_page(api, &path);
        rows.extend(more);
        next = following;
        pages += 1;
        assert!(pages < 50, "no end");
    }
    (rows, pages)
}

#[test]
fn the_dashboard_pages_through_many_accounts_with_its_filters() {
    let api = Api::memory();
    let at = creditgate::time::now();
    let mut names: Vec<String> = (0..123).map(|i| format!("acct-{i:03}")).collect();
    names.push("Zed".to_owned());
    for name in &names {
        let subscribe = harness::subscription(name, "small");
        let d = api
            .gateway
            .decide_blocking(subscribe, at)
            .expect("subscribed");
        assert_eq!(d.denied, None);
    }
    // Every seventh account spends its 4 email credits.
    let exhausted: Vec<String> = names.iter().step_by(7).cloned().collect();
    for name in &exhausted {
        let send = Request::SendEmail {
            account: name.clone(),
            to: (0..4).map(|i| format!("r{i}@x.io")).collect(),
            kind: creditgate::bindings::EmailKind::First,
            message_id: None,
        };
        api.gateway.decide_blocking(send, at).expect("sent");
    }
    names.sort_unstable();

    let (rows, pages) = every_page(&api, "/");
    assert_eq!(pages, 3, "50 a page");
    let listed: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(listed, names, "every account once, in order");
    let (first, _) = list_page(&api, "/");
    assert_eq!(first.len(), creditgate::dashboard::PAGE_ROWS);

    let (rows, _) = every_page(&api, "/?state=exhausted");
    let mut expected: Vec<&str> = exhausted.iter().map(|n| n.as_str()).collect();
    expected.sort_unstable();
    let listed: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(listed, expected);
    assert!(rows.iter().all(|(_, state)| state == "exhausted"));

    let (rows, pages) = every_page(&api, "/?q=ACCT-1");
    assert_eq!(pages, 1);
    assert_eq!(rows.len(), 23, "acct-100 to acct-122");

    // Sorting orders the page: its exhausted accounts first, then name order.
    let (sorted, next) = list_page(&api, "/?sort=state");
    let (plain, _) = list_page(&api, "/");
    let mut expected = plain.clone();
    expected.sort_by_key(|(n, s)| (s != "exhausted", n.clone()));
    assert_eq!(sorted, expected);
    assert!(
        next.is_some_and(|n| n.contains("sort=state")),
        "the next page keeps the sort"
    );
}

// ---- the cap ---------------------------------------------------------------------------

/// A memory store whose `record_get` of the account `slow` waits while the gate
/// is closed, counting the callers waiting.
#[derive(Default)]
struct Gated {
    inner: MemoryStore,
    gate: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    inside: usize,
    most_inside: usize,
}

impl Gated {
    fn set(&self, closed: bool) {
        self.gate.lock().expect("gate").closed = closed;
        self.changed.notify_all();
    }

    /// Waits (at most a generous minute) until `n` callers wait at the gate.
    fn wait_inside(&self, n: usize) {
        let gate = self.gate.lock().expect("gate");
        let (gate, timeout) = self
            .changed
            .wait_timeout_while(gate, Duration::from_secs(60), |g| g.inside < n)
            .expect("gate");
        assert!(!timeout.timed_out(), "{} inside, not {n}", gate.inside);
    }
}

macro_rules! pass {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> $ret {
            self.inner.$name($($arg),*)
        })*
    };
}

impl Store for Gated {
    fn record_get(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        if scope == "slow" {
            let mut gate = self.gate.lock().expect("gate");
            if gate.closed {
                gate.inside += 1;
                gate.most_inside = gate.most_inside.max(gate.inside);
                self.changed.notify_all();
                let mut gate = self.changed.wait_while(gate, |g| g.closed).expect("gate");
                gate.inside -= 1;
            }
        }
        self.inner.record_get(scope, key)
    }

    pass! {
        record_insert(scope: &str, key: &str, value: &str) -> Result<bool, StoreError>;
        record_update(scope: &str, key: &str, value: &str) -> Result<bool, StoreError>;
        record_update_guarded(update: creditgate::store::GuardedUpdate<'_>) -> Result<bool, StoreError>;
        counter_get(scope: &str, name: &str, now: i64) -> Result<u64, StoreError>;
        counter_add_guarded(add: CounterAdd<'_>) -> Result<GuardedAdd, StoreError>;
        counter_tally(tally: CounterTally<'_>) -> Result<Option<Tally>, StoreError>;
        counter_add(add: CounterAdd<'_>) -> Result<CounterAdded, StoreError>;
        member_add(add: MemberAdd<'_>) -> Result<MemberAdded, StoreError>;
        member_add_guarded(add: MemberAddGuarded<'_>) -> Result<Option<GuardedMember>, StoreError>;
        member_add_many(add: MemberAddMany<'_>) -> Result<MembersAdded, StoreError>;
        member_remove(at: Membership<'_>) -> Result<MemberRemoved, StoreError>;
        group_clear(scope: &str, group: &str) -> Result<GroupCleared, StoreError>;
        member_count(scope: &str) -> Result<u64, StoreError>;
        persist() -> Result<(), StoreError>;
        secret() -> Result<[u8; creditgate::store::SECRET_LEN], StoreError>;
        set_secret(secret: [u8; creditgate::store::SECRET_LEN]) -> Result<(), StoreError>;
        host_record(key: &str) -> Result<Option<String>, StoreError>;
        set_host_record(key: &str, value: &str) -> Result<(), StoreError>;
        scopes() -> Result<Vec<String>, StoreError>;
        scopes_after(after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError>;
        visit_members_after(list: Members<'_>, visit: Visit<'_>) -> Result<(), StoreError>;
        export_scope(scope: &str) -> Result<ScopeDump, StoreError>;
        import_scope(scope: &str, dump: &ScopeDump) -> Result<(), StoreError>;
        alert_sequence(owner: &str) -> Result<u64, StoreError>;
        alert_insert(owner: &str, key: &str, value: &str) -> Result<bool, StoreError>;
        visit_alerts(list: Alerts<'_>, visit: VisitAlert<'_>) -> Result<(), StoreError>;
    }
}

struct Opens(Arc<Gated>);

impl Drop for Opens {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Issue 14.9: however many dashboard viewers and listings there are, their
/// decisions wait in a lane of their own. With the gateway's only read-only
/// worker (2 workers) and its bulk worker both free, a page stuck on a slow
/// account holds the bulk lane alone: a usage query and an email decision are
/// answered meanwhile. Before the fix, the page's decision held the read-only
/// worker and the usage query waited behind it until the gate opened.
#[test]
fn with_the_bulk_cap_full_senders_are_still_answered() {
    let store = Arc::new(Gated::default());
    let api = Api::start(store.clone(), HttpOptions::default());
    for account in ["other", "slow"] {
        assert_eq!(api.subscribe(account, "large").0, 201);
    }
    store.set(true);
    // Opens the gate however the test ends: a worker left waiting at it would
    // hold the gateway's shutdown for ever.
    let _open = Opens(store.clone());
    let viewers: Vec<_> = (0..3)
        .map(|_| {
            let client = api.client.clone();
            std::thread::spawn(move || send(&client, "get", "/", None))
        })
        .collect();
    let lister = {
        let client = api.client.clone();
        std::thread::spawn(move || send(&client, "get", "/v1/accounts", None))
    };
    store.wait_inside(1);

    let (status, body) = api.usage("other");
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.email(json!({"account": "other", "to": "a@b.io"}));
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("allow")),
        "{body}"
    );
    let (status, body) = api.get("/v1/plans");
    assert_eq!(status, 200, "{body}");

    store.set(false);
    for viewer in viewers {
        let (status, html) = viewer.join().expect("a viewer");
        assert_eq!(status, 200, "{html}");
        assert!(html.contains(r#"data-account="slow""#), "{html}");
    }
    let (status, body) = lister.join().expect("the lister");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        store.gate.lock().expect("gate").most_inside,
        1,
        "one bulk decision at a time"
    );
}

/// The slots themselves: with every slot taken, the next request waits, and
/// gives up (`busy`) after its wait rather than queueing for ever.
#[test]
fn a_bulk_slot_is_waited_for_and_then_refused() {
    let (gateway, _) = creditgate::gateway::Gateway::start(
        crate::harness::shared_runtime(),
        Arc::new(MemoryStore::new()),
        "[plans.p]\nlead_credits = 1\nemail_credits = 1\n",
        1,
    )
    .expect("starts");
    let bulk = Bulk::with_slots(Arc::new(gateway), 1, Duration::from_millis(200));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let held = bulk.slot().await.expect("the first slot");
        assert_eq!(bulk.slot().await.map(|_| ()), Err(Busy));
        drop(held);
        let _free = bulk.slot().await.expect("free again");
    });
}
