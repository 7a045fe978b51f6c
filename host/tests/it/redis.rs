//! The Redis backend against real servers: each test starts its own
//! `redis-server` (or a three-node cluster) on free loopback ports with a
//! temporary directory, and stops it when done. Never a system Redis.
//!
//! The conformance suite itself runs against Redis from `store.rs` (`store::redis`);
//! here are the cluster, faults, `store copy`, and the gateways sharing one Redis.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use creditgate::bindings::GuardedAdd;
use creditgate::store::{CounterAdd, MemberAdd, OnceKey, RedisStore, Store, StoreError};

/// Every wait here is bounded by this: a hang is a failure, not a stall.
const WAIT: Duration = Duration::from_secs(15);

pub use creditgate_testkit::redis::{Cluster, RedisServer};
use creditgate_testkit::serve::{ServeProcess, policy_request};

use crate::harness;

/// A store on a test's own server or cluster, under its own key prefix.
pub trait Stores {
    fn store(&self, prefix: &str) -> RedisStore;
}

impl Stores for RedisServer {
    fn store(&self, prefix: &str) -> RedisStore {
        RedisStore::open(&format!("{}?prefix={prefix}", self.url()))
            .unwrap_or_else(|e| panic!("connects to redis on {}: {e}", self.port))
    }
}

impl Stores for Cluster {
    fn store(&self, prefix: &str) -> RedisStore {
        let url = self.url(prefix);
        RedisStore::open(&url).unwrap_or_else(|e| panic!("connects to {url}: {e}"))
    }
}

/// One email credit of scope `acct`'s counter `sent`, for message `id` (an
/// idempotency key), under `limit`.
fn charge_message(store: &RedisStore, id: &str, limit: u64) -> Result<GuardedAdd, StoreError> {
    store.counter_add_guarded(CounterAdd {
        scope: "acct",
        guard: None,
        name: "sent",
        amount: 1,
        limit: Some(limit),
        once: Some(OnceKey {
            key: &format!("msg/{id}"),
            fingerprint: 1,
            expires_at: i64::MAX,
        }),
        expires_at: None,
        now: 1_000,
    })
}

/// Trust audit 4b.2: whether a counter's garbage-collection deadline had
/// passed was judged by the gateway's clock. On a gateway more than a day
/// behind Redis (the margin), a counter of the gateway's current cycle got a
/// deadline Redis had passed, and `PEXPIREAT` deleted it in the script that
/// wrote it: every charge counted from 0, and a plan of 5 emails sent 10 (the
/// auditor's run, its clock two years back). Redis's clock judges it now.
#[test]
fn a_gateway_whose_clock_lags_redis_keeps_counting() {
    let server = RedisServer::start();
    let store = server.store("lag");
    let day = 86_400 * 1_000_000_000_i64;
    let real_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).expect("fits"))
        .expect("after 1970");
    // Two years behind, in a cycle that ends in a month by its clock.
    let now = real_now - 730 * day;
    let ends = now + 30 * day;
    let charge = |id: &str| {
        store.counter_add_guarded(CounterAdd {
            scope: "acct",
            guard: None,
            name: "email/0",
            amount: 1,
            limit: Some(2),
            once: Some(OnceKey {
                key: id,
                fingerprint: 1,
                expires_at: ends,
            }),
            expires_at: Some(ends),
            now,
        })
    };
    assert!(matches!(charge("m1"), Ok(GuardedAdd::Applied(t)) if t.counter == 1));
    assert!(matches!(charge("m2"), Ok(GuardedAdd::Applied(t)) if t.counter == 2));
    assert!(matches!(charge("m3"), Ok(GuardedAdd::Refused(t)) if t.counter == 2));
    assert!(matches!(charge("m1"), Ok(GuardedAdd::Repeated(_))));
    for key in [
        "lag:{acct}:ctr:email/0",
        "lag:{acct}:once:m1",
        "lag:{acct}:ctrs",
        "lag:{acct}:onces",
    ] {
        assert_eq!(server.cli(&["PTTL", key]), "-1", "{key} is kept for good");
    }
}

/// Trust audit 4b.1: a script declared only its scope's key base (no key at
/// all), so while the scope's slot moved between nodes the node it went to ran
/// it (the client follows `ASK`) on the keys moved so far: with the counter
/// still behind, a charge read 0 and sold the credits again (2,390 allows
/// over a limit of 3,000 already spent, in the auditor's run). Now each
/// script also declares a fence key that never exists, and no node runs it
/// mid-move: the charge fails, as a store unavailable, until the move ends,
/// and then counts on from where the counter was.
#[test]
fn a_charge_is_refused_while_its_slot_moves_and_counts_on_after() {
    let cluster = Cluster::start();
    let store = cluster.store("moving");
    let charge = |id: &str| charge_message(&store, id, 5);
    let applied = |answer: Result<GuardedAdd, StoreError>| match answer {
        Ok(GuardedAdd::Applied(t)) => t.counter,
        other => panic!("not applied: {other:?}"),
    };
    for (i, id) in ["m1", "m2", "m3"].into_iter().enumerate() {
        assert_eq!(applied(charge(id)), i as u64 + 1);
    }

    let cli = |node: &RedisServer, line: &str| node.cli_line(line);
    let slot: u16 = cli(&cluster.nodes[0], "CLUSTER KEYSLOT moving:{acct}:rec")
        .trim()
        .parse()
        .expect("a slot");
    let holds =
        |node: &RedisServer| cli(node, &format!("CLUSTER COUNTKEYSINSLOT {slot}")).trim() != "0";
    let from = cluster
        .nodes
        .iter()
        .position(holds)
        .expect("a node holds the scope");
    let to = (from + 1) % cluster.nodes.len();
    let (source, target) = (&cluster.nodes[from], &cluster.nodes[to]);
    let id = |node: &RedisServer| cli(node, "CLUSTER MYID").trim().to_owned();
    let (source_id, target_id) = (id(source), id(target));
    cli(
        target,
        &format!("CLUSTER SETSLOT {slot} IMPORTING {source_id}"),
    );
    cli(
        source,
        &format!("CLUSTER SETSLOT {slot} MIGRATING {target_id}"),
    );
    // Every key but the counter moves first: the split the node the slot goes
    // to would have charged on, from 0.
    let keys = cli(source, &format!("CLUSTER GETKEYSINSLOT {slot} 100"));
    let counter = "moving:{acct}:ctr:sent";
    let (behind, moved): (Vec<&str>, Vec<&str>) =
        keys.lines().map(str::trim).partition(|k| *k == counter);
    assert_eq!(behind, [counter], "{keys}");
    let migrate = |keys: &[&str]| {
        let port = target.port.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys);
        assert_eq!(source.cli(&args), "OK", "{args:?}");
    };
    migrate(&moved);

    for id in ["m4", "m5", "m6", "m1"] {
        match charge(id) {
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("answered while the slot moves: {other:?}"),
        }
    }

    migrate(&[counter]);
    for node in &cluster.nodes {
        cli(node, &format!("CLUSTER SETSLOT {slot} NODE {target_id}"));
    }
    assert_eq!(applied(charge("m4")), 4);
    assert!(matches!(charge("m1"), Ok(GuardedAdd::Repeated(_))));
    assert_eq!(applied(charge("m5")), 5);
    assert!(matches!(charge("m6"), Ok(GuardedAdd::Refused(_))));
}

/// Issue 5: every primitive stays in one slot (the scope's hash tag), so the
/// whole conformance suite passes on a cluster, with scopes spread over the nodes.
#[test]
fn cluster_passes_the_conformance_suite() {
    let cluster = Cluster::start();
    for (i, &(name, test)) in crate::store::SUITE.iter().enumerate() {
        eprintln!("cluster: {name}");
        let store = cluster.store(&format!("suite{i}"));
        test(&store);
    }
    // Many scopes, so that each node holds some: the routing really is by slot.
    let store = cluster.store("spread");
    for i in 0..64 {
        let scope = format!("account-{i}");
        assert!(store.record_insert(&scope, "k", "v").expect("insert"));
        let add = MemberAdd {
            scope: &scope,
            group: "g",
            member: "m",
            limit: None,
        };
        store.member_add(add).expect("member");
    }
    let expected: Vec<String> = {
        let mut all: Vec<String> = (0..64).map(|i| format!("account-{i}")).collect();
        all.sort();
        all
    };
    assert_eq!(store.scopes().expect("scopes"), expected);
    for node in &cluster.nodes {
        let keys: u64 = node.cli_line("DBSIZE").parse().expect("a number");
        assert!(keys > 10, "node {} holds only {keys} keys", node.port);
    }
    tricky_scope_names(&cluster.store("tricky"));
    // A single-server URL on a cluster node is refused with a hint, not left to
    // fail at the first script that spans two slots.
    match RedisStore::open(&format!("redis://127.0.0.1:{}", cluster.nodes[0].port)) {
        Err(e @ creditgate::store::StoreError::InvalidArgument(_)) => {
            assert!(e.to_string().contains("redis+cluster://"), "{e}");
        }
        Err(e) => panic!("expected an invalid argument, got {e}"),
        Ok(_) => panic!("a cluster node opened as a single server"),
    }
    // The keys of one scope share a slot.
    let slots: Vec<String> = ["rec", "mem", "groups", "grp:g"]
        .iter()
        .map(|k| {
            cluster.nodes[0].cli(&["CLUSTER", "KEYSLOT", &format!("spread:{{account-7}}:{k}")])
        })
        .collect();
    assert!(slots.iter().all(|s| s == &slots[0]), "{slots:?}");
}

/// Issue 5's fault test: Redis killed (SIGKILL, as in a crash) and restarted in
/// the middle of a stream of charges from several threads. No panic; every charge
/// answered `applied` is counted after the restart (`appendfsync always`); calls
/// during the outage fail as unavailable; calls after it succeed again without
/// anyone reconnecting by hand.
#[test]
fn a_crash_loses_no_acknowledged_charge_and_service_resumes() {
    use creditgate::bindings::CounterAdded;
    use creditgate::store::StoreError;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const THREADS: usize = 4;
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = format!(
        "{}?prefix=fault&call_timeout_ms=300&connect_timeout_ms=500",
        server.url()
    );
    let store = RedisStore::open(&url).expect("connects");
    let stop = AtomicBool::new(false);
    let restarted = AtomicBool::new(false);
    let after_restart = AtomicUsize::new(0);
    let charge = |key: &str| {
        let once = OnceKey {
            key,
            fingerprint: 1,
            expires_at: 2_000,
        };
        let add = CounterAdd {
            scope: "acct",
            guard: None,
            name: "sent",
            amount: 1,
            limit: None,
            once: Some(once),
            expires_at: None,
            now: 1_000,
        };
        store.counter_add(add)
    };
    let (applied, failed) = std::thread::scope(|t| {
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                let (stop, restarted, after_restart, charge) =
                    (&stop, &restarted, &after_restart, &charge);
                t.spawn(move || {
                    let (mut applied, mut failed) = (Vec::new(), 0usize);
                    for n in 0.. {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let key = format!("{i}-{n}");
                        match charge(&key) {
                            // Repeated: a first call applied whose answer was
                            // lost in the crash, settled by the store's second
                            // asking. Either way the charge stands.
                            Ok(CounterAdded::Applied(_) | CounterAdded::Repeated(_)) => {
                                applied.push(key);
                                if restarted.load(Ordering::Acquire) {
                                    after_restart.fetch_add(1, Ordering::AcqRel);
                                }
                            }
                            Ok(other) => panic!("a fresh key answered {other:?}"),
                            Err(StoreError::Unavailable(m)) => {
                                assert!(m.contains("127.0.0.1:"), "names the server: {m}");
                                failed += 1;
                            }
                            Err(e) => panic!("unexpected error: {e}"),
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    (applied, failed)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400));
        server.kill();
        std::thread::sleep(Duration::from_millis(500));
        server.restart();
        restarted.store(true, Ordering::Release);
        let deadline = Instant::now() + WAIT;
        while after_restart.load(Ordering::Acquire) < 50 {
            assert!(
                Instant::now() < deadline,
                "calls never succeeded again after the restart"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Release);
        workers
            .into_iter()
            .map(|w| w.join().expect("no worker panicked"))
            .fold((Vec::new(), 0), |(mut a, f), (b, g)| {
                a.extend(b);
                (a, f + g)
            })
    });
    assert!(failed > 0, "the outage was seen");
    assert!(
        applied.len() > 100,
        "charges went through: {}",
        applied.len()
    );
    let counted = store.counter_get("acct", "sent", 1_000).expect("reads");
    // A call that failed may still have been applied (its answer was lost), never
    // the reverse.
    assert!(
        counted >= applied.len() as u64 && counted <= (applied.len() + failed) as u64,
        "{counted} counted, {} applied, {failed} failed",
        applied.len()
    );
    for key in &applied {
        assert!(
            matches!(charge(key), Ok(CounterAdded::Repeated(_))),
            "charge {key} was acknowledged but is not remembered"
        );
    }
    eprintln!(
        "{} charges applied, {failed} failed during the outage, {counted} counted",
        applied.len()
    );
}

/// Runs the binary; its exit code, stdout and stderr.
fn creditgate(args: &[&str]) -> (i32, String, String) {
    let out = crate::harness::creditgate_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("creditgate runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn creditgate_ok(args: &[&str]) -> String {
    let (code, stdout, stderr) = creditgate(args);
    assert_eq!(code, 0, "creditgate {args:?}: {stderr}");
    stdout
}

/// Issue 5: `store copy` redb → Redis → redb gives identical usage for every
/// account, and identical contents scope by scope; a non-empty destination is
/// refused without `--force`.
#[test]
fn store_copy_round_trip_redb_redis_redb() {
    use creditgate::store::RedbStore;

    let dir = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    let (a, b) = (path("a.redb"), path("b.redb"));
    let server = RedisServer::start();
    let redis = format!("{}?prefix=copy", server.url());

    // Accounts, leads in overlapping campaigns, and sends with message ids, all
    // through the CLI on the embedded store.
    creditgate_ok(&[
        "account",
        "subscribe",
        "acme",
        "--plan",
        "base",
        "--store",
        &a,
    ]);
    creditgate_ok(&[
        "account",
        "subscribe",
        "bolt",
        "--plan",
        "pro",
        "--store",
        &a,
    ]);
    let csv = crate::harness::write_file(
        dir.path(),
        "leads.csv",
        "email\nann@example.com\nbo@example.org\ncy@example.net\n",
    );
    let csv = csv.to_str().expect("utf-8");
    for (account, campaign) in [("acme", "q1"), ("acme", "q2"), ("bolt", "launch")] {
        creditgate_ok(&[
            "leads",
            "import",
            "--account",
            account,
            "--campaign",
            campaign,
            csv,
            "--store",
            &a,
        ]);
    }
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let events: String = [
        ("acme", r#"["ann@example.com","bo@example.org"]"#, "m1"),
        ("acme", r#""cy@example.net""#, "m2"),
        ("bolt", r#""ann@example.com""#, "m3"),
    ]
    .iter()
    .map(|(account, to, id)| {
        format!(
            "{{\"at\":\"{at}\",\"op\":\"send_email\",\"account\":\"{account}\",\"to\":{to},\"message_id\":\"{id}\"}}\n"
        )
    })
    .collect();
    let events_file = crate::harness::write_file(dir.path(), "events.jsonl", events);
    creditgate_ok(&[
        "replay",
        "--events",
        events_file.to_str().expect("utf-8"),
        "--store",
        &a,
    ]);

    let copied = creditgate_ok(&["store", "copy", "--from", &a, "--to", &redis]);
    harness::assert_has(&copied, "copied 2 account(s)");
    assert!(!copied.contains("127.0.0.1:0"), "{copied}");

    // Into a non-empty store: refused, unless forced.
    let (code, _, stderr) = creditgate(&["store", "copy", "--from", &a, "--to", &redis]);
    assert_eq!(code, 2, "{stderr}");
    harness::assert_has(&stderr, "--force");
    creditgate_ok(&["store", "copy", "--from", &a, "--to", &redis, "--force"]);

    creditgate_ok(&["store", "copy", "--from", &redis, "--to", &b]);

    for account in ["acme", "bolt"] {
        // Without the projection, which moves with the instant it is asked at.
        let usage = |store: &str| {
            let text = creditgate_ok(&["usage", account, "--format", "json", "--store", store]);
            let mut view: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            if let Some(email) = view["email_credits"].as_object_mut() {
                email.remove("projected_exhaustion");
            }
            view.to_string()
        };
        let original = usage(&a);
        harness::assert_has(&original, "\"used\":3");
        assert_eq!(usage(&redis), original, "{account} on Redis");
        assert_eq!(usage(&b), original, "{account} back on redb");
    }
    let list = |store: &str| {
        let text = creditgate_ok(&["account", "list", "--format", "json", "--store", store]);
        let mut accounts: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        for account in accounts.as_array_mut().into_iter().flatten() {
            if let Some(email) = account["email_credits"].as_object_mut() {
                email.remove("projected_exhaustion");
            }
        }
        accounts
    };
    assert_eq!(list(&redis), list(&a));
    assert_eq!(list(&b), list(&a));

    // The copies took the secret of the store they came from, so a message
    // charged before a copy is still a free retry after it, and its id reused
    // for another message is still a conflict.
    let retries = crate::harness::write_file(
        dir.path(),
        "retries.jsonl",
        format!(
            "{{\"at\":\"{at}\",\"op\":\"send_email\",\"account\":\"acme\",\"to\":[\"bo@example.org\",\"ann@example.com\"],\"message_id\":\"m1\"}}\n\
             {{\"at\":\"{at}\",\"op\":\"send_email\",\"account\":\"acme\",\"to\":\"ann@example.com\",\"message_id\":\"m2\"}}\n"
        ),
    );
    let retries = retries.to_str().expect("utf-8");
    for store in [&redis, &b] {
        let outcomes = creditgate_ok(&["replay", "--events", retries, "--store", store]);
        let outcomes: Vec<serde_json::Value> = outcomes
            .lines()
            .take(2)
            .map(|line| serde_json::from_str(line).expect("a JSON decision"))
            .collect();
        let (retry, reused) = (&outcomes[0], &outcomes[1]);
        assert_eq!(
            (&retry["decision"], &retry["charged"]),
            (&serde_json::json!("allow"), &serde_json::json!(0)),
            "{store}: {retry}"
        );
        assert_eq!(
            reused["reason"], "idempotency_key_reused",
            "{store}: {reused}"
        );
    }

    // Scope by scope, everything came back: counters, markers, memberships.
    let (a, b) = (
        RedbStore::open(Path::new(&a)).expect("opens a"),
        RedbStore::open(Path::new(&b)).expect("opens b"),
    );
    let scopes = a.scopes().expect("scopes");
    assert_eq!(scopes, ["acme", "bolt"]);
    assert_eq!(b.scopes().expect("scopes"), scopes);
    for scope in &scopes {
        let dump = a.export_scope(scope).expect("exports");
        assert!(
            !dump.once.is_empty() && !dump.memberships.is_empty(),
            "{dump:?}"
        );
        assert_eq!(b.export_scope(scope).expect("exports"), dump, "{scope}");
    }
}

/// `creditgate serve` with the Postfix listener only, killed if the test ends
/// without stopping it.
struct Gateway(ServeProcess);

impl Gateway {
    fn start(store: &str, policy: &Path, log: &Path) -> Gateway {
        let serve = ServeProcess::builder(env!("CARGO_BIN_EXE_creditgate"), log)
            .args(["--store", store, "--workers", "4", "--policy"])
            .arg(policy)
            .http(false)
            .start();
        Gateway(serve)
    }

    /// One policy request on a fresh connection; the reply's action.
    fn ask(&self, request: &str) -> String {
        policy_request(self.0.postfix_addr(), request)
    }

    /// SIGTERM, then a bounded wait for a clean exit.
    fn stop(self) {
        let (status, log) = self.0.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "serve exited with {status:?}\n{log}"
        );
    }
}

/// Postfix's END-OF-MESSAGE request, every attribute as Postfix sends them.
fn end_of_message(account: &str, recipients: u32, instance: &str) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nprotocol_name=ESMTP\n\
         client_address=127.0.0.1\nsasl_username={account}\nsender=al@example.com\n\
         recipient=\nrecipient_count={recipients}\ninstance={instance}\n\n"
    )
}

/// Account `acme` on a plan of `emails` email credits, in `store`, through the
/// CLI; the policy file it used.
fn acme_on_small_plan(dir: &Path, store: &str, emails: u64) -> std::path::PathBuf {
    acme_on_plan(dir, store, emails, "")
}

/// [`acme_on_small_plan`], with `extra` lines in the plan's table.
fn acme_on_plan(dir: &Path, store: &str, emails: u64, extra: &str) -> std::path::PathBuf {
    let policy = dir.join("policy.toml");
    let text = format!("[plans.small]\nlead_credits = 10\nemail_credits = {emails}\n{extra}");
    std::fs::write(&policy, text).expect("writes the policy");
    let policy_arg = policy.to_str().expect("utf-8");
    creditgate_ok(&[
        "account",
        "subscribe",
        "acme",
        "--plan",
        "small",
        "--store",
        store,
        "--policy",
        policy_arg,
    ]);
    policy
}

/// `acme`'s email credits used, as `creditgate usage` reports them.
fn acme_emails_used(store: &str, policy: &Path) -> u64 {
    let policy = policy.to_str().expect("utf-8");
    let usage = creditgate_ok(&[
        "usage", "acme", "--format", "json", "--store", store, "--policy", policy,
    ]);
    let usage: serde_json::Value = serde_json::from_str(&usage).expect("json");
    usage["email_credits"]["used"]
        .as_u64()
        .unwrap_or_else(|| panic!("no email credits used in {usage}"))
}

/// A primary with a replica is named, with how many it has (opening a store on
/// it then warns that a failover can lose acknowledged charges); one without,
/// not.
#[test]
fn a_primary_with_replicas_is_named() {
    let primary = RedisServer::start();
    let store = primary.store("replicated");
    assert_eq!(store.replicated_primaries().expect("reads"), []);
    let replica = RedisServer::start();
    replica.cli(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()]);
    let deadline = Instant::now() + WAIT;
    while store.replicated_primaries().expect("reads").is_empty() {
        assert!(Instant::now() < deadline, "the replica never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        store.replicated_primaries().expect("reads"),
        [("the server".to_owned(), 1)]
    );
}

/// `?replicas=1`: a write is answered once a replica holds it. With the
/// replica gone, every write (a charge through the collector, a batch of
/// leads through a direct script) is refused within the wait, naming the
/// shortfall, and stands on the primary only: counted, never answered, so
/// never sold twice after a failover.
#[test]
fn writes_wait_for_the_replicas_asked_for() {
    let primary = RedisServer::start();
    let replica = RedisServer::start();
    replica.cli(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()]);
    let store = RedisStore::open(&format!(
        "{}?prefix=waited&replicas=1&replica_timeout_ms=100",
        primary.url()
    ))
    .expect("opens");
    let connected = |want: u64| {
        let deadline = Instant::now() + WAIT;
        while store
            .replicated_primaries()
            .expect("reads")
            .iter()
            .map(|r| r.1)
            .sum::<u64>()
            != want
        {
            assert!(Instant::now() < deadline, "replicas never reached {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    connected(1);
    // Connected is not caught up: the first sync must end before it acknowledges.
    let deadline = Instant::now() + WAIT;
    while !replica
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let charge = |id: &str| charge_message(&store, id, 10);
    let leads = ["a@x.io".to_owned(), "b@x.io".to_owned()];
    let add_leads = |group: &str| {
        store.member_add_many(creditgate::store::MemberAddMany {
            scope: "acct",
            group,
            members: &leads,
            limit: Some(10),
        })
    };
    let first = charge("m1");
    assert!(matches!(first, Ok(GuardedAdd::Applied(_))), "{first:?}");
    add_leads("q1").expect("replicated");
    assert_eq!(replica.cli(&["EXISTS", "waited:{acct}:once:msg/m1"]), "1");

    replica.cli(&["REPLICAOF", "NO", "ONE"]);
    connected(0);
    for refused in [charge("m2").map(|_| ()), add_leads("q2").map(|_| ())] {
        let Err(StoreError::Unavailable(why)) = refused else {
            panic!("acknowledged without its replica: {refused:?}");
        };
        assert!(
            why.contains("0 of 1 replica(s) acknowledged within 100 ms"),
            "{why}"
        );
    }
    // It stands on the primary, counted; a retry of the same message charges
    // nothing more (and is refused too while no replica holds it).
    assert_eq!(store.counter_get("acct", "sent", 1_000).expect("reads"), 2);
    assert!(matches!(charge("m2"), Err(StoreError::Unavailable(_))));
    assert_eq!(store.counter_get("acct", "sent", 1_000).expect("reads"), 2);
}

/// Every gateway on one prefix keys fingerprints with one secret, whichever
/// made it first; another prefix is another store, with its own.
#[test]
fn gateways_on_one_prefix_share_its_secret() {
    let server = RedisServer::start();
    let (a, b) = (server.store("shared"), server.store("shared"));
    let threads: Vec<_> = [a, b]
        .into_iter()
        .map(|store| std::thread::spawn(move || store.secret().expect("a secret")))
        .collect();
    let secrets: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("joins"))
        .collect();
    assert_eq!(
        secrets[0], secrets[1],
        "both made one at once; one won for both"
    );
    assert_eq!(
        server.store("shared").secret().expect("a secret"),
        secrets[0]
    );
    assert_ne!(
        server.store("other").secret().expect("a secret"),
        secrets[0]
    );
}

/// Issue 5's exactness across hosts: two `serve` processes on one Redis, 64
/// clients racing for the last 16 email credits of one account, each message's
/// END-OF-MESSAGE sent to both gateways at once (as Postfix's retry on another
/// connection would): exactly 16 messages allowed, each charged once, and the
/// account ends exactly at its limit.
#[test]
fn two_gateways_on_one_redis_sell_exactly_the_limit() {
    let server = RedisServer::start();
    sell_exactly_the_limit(&format!("{}?prefix=hosts", server.url()));
}

/// The same through `redis+cluster://`: the gateways route each account's
/// scripts to the node that holds its slot.
#[test]
fn two_gateways_on_one_redis_cluster_sell_exactly_the_limit() {
    let cluster = Cluster::start();
    let hosts: Vec<String> = (cluster.nodes.iter())
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    sell_exactly_the_limit(&format!("redis+cluster://{}?prefix=hosts", hosts.join(",")));
}

/// `clients` messages of one recipient to `acme` (`race-0`, `race-1`, ...),
/// all at once, each asked of both gateways at once (as Postfix's retry on
/// another connection would); each message's two replies.
fn race(gateways: &[Gateway; 2], clients: usize) -> Vec<(String, String)> {
    let barrier = std::sync::Barrier::new(clients);
    std::thread::scope(|t| {
        let clients: Vec<_> = (0..clients)
            .map(|i| {
                let barrier = &barrier;
                t.spawn(move || {
                    let request = end_of_message("acme", 1, &format!("race-{i}"));
                    barrier.wait();
                    std::thread::scope(|t| {
                        let first = t.spawn(|| gateways[i % 2].ask(&request));
                        let again = gateways[(i + 1) % 2].ask(&request);
                        (first.join().expect("client"), again)
                    })
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect()
    })
}

fn sell_exactly_the_limit(store: &str) {
    const LIMIT: u64 = 40;
    const CLIENTS: usize = 64;
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = acme_on_small_plan(dir.path(), store, LIMIT);
    let gateways = [
        Gateway::start(store, &policy, &dir.path().join("serve-a.log")),
        Gateway::start(store, &policy, &dir.path().join("serve-b.log")),
    ];
    assert_eq!(
        gateways[0].ask(&end_of_message("acme", 24, "before")),
        "action=DUNNO"
    );

    let replies = race(&gateways, CLIENTS);
    let mut allowed = 0;
    for (first, again) in &replies {
        assert_eq!(first, again, "one message, two answers");
        match first.as_str() {
            "action=DUNNO" => allowed += 1,
            denied => assert!(
                denied.starts_with("action=DEFER 4.7.1 Email credits exhausted"),
                "{denied}"
            ),
        }
    }
    assert_eq!(allowed, 16, "exactly the credits left were sold");
    assert_eq!(acme_emails_used(store, &policy), LIMIT);
    // A retry of an allowed message, later, is still not charged again.
    assert_eq!(
        gateways[1].ask(&end_of_message("acme", 1, "race-0")),
        replies[0].0
    );
    // Issue 13.2 across hosts: an instance charged by either gateway, asked of
    // both with another count, is refused by both, not let through uncharged.
    let charged = (replies.iter())
        .position(|(first, _)| first == "action=DUNNO")
        .expect("some were allowed");
    for gateway in &gateways {
        let reused = gateway.ask(&end_of_message("acme", 2, &format!("race-{charged}")));
        harness::assert_starts(&reused, "action=DEFER 4.7.1 Message already charged");
    }
    assert_eq!(acme_emails_used(store, &policy), LIMIT);
    for gateway in gateways {
        gateway.stop();
    }
}

/// Issue 17.4's exactness in shadow, across hosts: the same race on a plan in
/// shadow mode lets every message through, charges each exactly once though
/// both gateways were asked, and leaves usage past the limit by what it let
/// through.
#[test]
fn two_gateways_on_one_redis_charge_a_shadow_plan_exactly_once() {
    const LIMIT: u64 = 40;
    const CLIENTS: usize = 32;
    let server = RedisServer::start();
    let store = format!("{}?prefix=shadow", server.url());
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = acme_on_plan(dir.path(), &store, LIMIT, "mode = \"shadow\"\n");
    let gateways = [
        Gateway::start(&store, &policy, &dir.path().join("serve-a.log")),
        Gateway::start(&store, &policy, &dir.path().join("serve-b.log")),
    ];
    assert_eq!(
        gateways[0].ask(&end_of_message("acme", 24, "before")),
        "action=DUNNO"
    );
    for (first, again) in race(&gateways, CLIENTS) {
        assert_eq!(
            (first.as_str(), again.as_str()),
            ("action=DUNNO", "action=DUNNO")
        );
    }
    assert_eq!(acme_emails_used(&store, &policy), 24 + CLIENTS as u64);
    // Retried later, on either gateway: still charged once.
    for gateway in &gateways {
        assert_eq!(
            gateway.ask(&end_of_message("acme", 1, "race-0")),
            "action=DUNNO"
        );
    }
    assert_eq!(acme_emails_used(&store, &policy), 24 + CLIENTS as u64);
    for gateway in gateways {
        gateway.stop();
    }
}

/// The trust audit: two gateways on one Redis whose clocks disagree by a
/// fraction of a second across the end of a billing cycle charge a message once,
/// whichever sees it first (Postfix's try-limit retry of one `instance` reaching
/// the other): the message id is one key for the account. And once the gateway
/// ahead has charged in the new cycle, the one behind decides there too (audit
/// 3.2): the old cycle is over for both, its unused credits not spent late.
#[test]
fn two_gateways_whose_clocks_straddle_a_cycle_boundary_charge_a_message_once() {
    use creditgate::bindings::Reason;
    use creditgate::request::{Origin, Request};
    use std::sync::Arc;

    let server = RedisServer::start();
    let gateway = || harness::worker_on(Arc::new(server.store("skew")), harness::SMARTLEAD);
    // The first gateway's clock is ahead; the second's behind.
    let (ahead, behind) = (0, 1);
    let mut gateways = [gateway(), gateway()];
    let at = |s: &str| creditgate::replay::parse_instant(s).expect("an instant");
    let subscribe = harness::subscription("acme", "base");
    let d = gateways[ahead].decide(&subscribe, at("2025-01-31T09:00:00Z"));
    assert_eq!(d.expect("subscribes").denied, None);
    let charge = |instance: &str, cost| Request::ChargeEmail {
        account: "acme".into(),
        cost,
        message_id: Some(Origin::Postfix.message_id(instance).expect("an id")),
    };
    let reused = Some(Reason::IdempotencyKeyReused);
    // (gateway, Postfix instance, recipients, its clock) and what it answers:
    // (denied, charged, email credits used in the deciding gateway's cycle).
    let steps = [
        // Charged by the gateway behind, in cycle 0, retried on the one ahead
        // (cycle 1): free, with cycle 1's usage.
        (behind, "B0", 2, "2025-02-28T08:59:59.8Z", (None, 2, 2)),
        (ahead, "B0", 2, "2025-02-28T09:00:00.05Z", (None, 0, 0)),
        // Charged by the gateway ahead (cycle 1), retried on the one behind:
        // free, and cycle 1's usage, since cycle 0 is over.
        (ahead, "A1", 3, "2025-02-28T09:00:00.1Z", (None, 3, 3)),
        (behind, "A1", 3, "2025-02-28T08:59:59.9Z", (None, 0, 3)),
        // A new message on the gateway behind: charged to cycle 1.
        (behind, "B2", 2, "2025-02-28T08:59:59.95Z", (None, 2, 5)),
        (ahead, "B2", 2, "2025-02-28T09:00:00.2Z", (None, 0, 5)),
        // Another count under an instance is refused on either.
        (ahead, "B2", 4, "2025-02-28T09:00:00.3Z", (reused, 0, 5)),
        (behind, "A1", 1, "2025-02-28T08:59:59.99Z", (reused, 0, 5)),
    ];
    for (i, (on, instance, cost, when, expected)) in steps.into_iter().enumerate() {
        let d = gateways[on].decide(&charge(instance, cost), at(when));
        let d = d.expect("decides");
        let used = d.usage.expect("usage").email_credits.used;
        assert_eq!((d.denied, d.charged, used), expected, "step {i}");
    }
}

fn real_now_ns() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_nanos()).expect("fits")
}

/// Issue 5's space item: a counter or marker that expires by the real clock gets
/// a Redis TTL (here with no margin, so that it passes within the test) and
/// vanishes by itself, index entries included; one whose expiry is already past
/// by the real clock (a synthetic `now`), one that never expires, and
/// memberships get none.
#[test]
fn real_expiries_become_ttls_and_vanish() {
    use creditgate::bindings::CounterAdded;
    use creditgate::store::{RedisConfig, parse_url};

    let server = RedisServer::start();
    let (target, _) = parse_url(&server.url()).expect("url");
    let config = RedisConfig {
        prefix: "gc".to_owned(),
        gc_margin: Duration::ZERO,
        ..RedisConfig::default()
    };
    let store = RedisStore::connect(&target, config).expect("connects");
    let now = real_now_ns();
    // Far enough ahead that a slow machine still writes before it.
    let soon = now + 2_000_000_000;
    let add = |name: &str, once: Option<OnceKey<'_>>, expires_at: Option<i64>, now: i64| {
        let add = CounterAdd {
            scope: "s",
            guard: None,
            name,
            amount: 1,
            limit: None,
            once,
            expires_at,
            now,
        };
        store.counter_add(add).expect("counter_add")
    };
    let once = OnceKey {
        key: "m",
        fingerprint: 1,
        expires_at: soon,
    };
    assert!(matches!(
        add("c", Some(once), Some(soon), now),
        CounterAdded::Applied(1)
    ));
    // A second charge finds the counter with its expiry: only its marker is new,
    // and gets its TTL and index entry all the same.
    let again = OnceKey { key: "m2", ..once };
    assert!(matches!(
        add("c", Some(again), Some(soon), now),
        CounterAdded::Applied(2)
    ));
    assert!(matches!(
        add("old", None, Some(1_000), 0),
        CounterAdded::Applied(1)
    ));
    assert!(matches!(
        add("forever", None, None, now),
        CounterAdded::Applied(1)
    ));
    let join = MemberAdd {
        scope: "s",
        group: "g",
        member: "x",
        limit: None,
    };
    store.member_add(join).expect("member_add");
    let expire_time = |key: &str| server.cli(&["PEXPIRETIME", key]);
    let soon_ms = (soon / 1_000_000).to_string();
    assert_eq!(expire_time("gc:{s}:ctr:c"), soon_ms);
    assert_eq!(expire_time("gc:{s}:once:m"), soon_ms);
    assert_eq!(expire_time("gc:{s}:once:m2"), soon_ms);
    assert_eq!(expire_time("gc:{s}:onces"), soon_ms);
    assert_eq!(server.cli_line("ZRANGE gc:{s}:onces 0 -1"), "m\nm2");
    for key in [
        "gc:{s}:ctr:old",
        "gc:{s}:ctr:forever",
        "gc:{s}:mem",
        "gc:{s}:grp:g",
        "gc:{s}:groups",
    ] {
        assert_eq!(expire_time(key), "-1", "{key} has no TTL");
    }
    // Semantics are judged against `now`, not the real clock.
    assert_eq!(store.counter_get("s", "old", 999).expect("reads"), 1);

    let wait = soon + 300_000_000 - real_now_ns();
    std::thread::sleep(Duration::from_nanos(u64::try_from(wait).unwrap_or(0)));
    assert_eq!(
        server.cli_line("EXISTS gc:{s}:ctr:c gc:{s}:once:m gc:{s}:once:m2"),
        "0"
    );
    assert_eq!(store.counter_get("s", "c", now).expect("reads"), 0);
    // A charge to a counter that is there with its expiry leaves the indexes be;
    // the next write that creates a counter (a new cycle's) drops the entries of
    // what Redis collected.
    assert!(matches!(
        add("forever", None, None, now),
        CounterAdded::Applied(2)
    ));
    assert!(matches!(
        add("later", None, None, now),
        CounterAdded::Applied(1)
    ));
    let dump = store.export_scope("s").expect("exports");
    let names: Vec<&str> = dump.counters.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, ["forever", "later", "old"]);
    assert!(dump.once.is_empty(), "{dump:?}");
    assert_eq!(
        server.cli_line("ZRANGE gc:{s}:ctrs 0 -1"),
        "forever\nlater\nold"
    );
    assert_eq!(
        server.cli_line("EXISTS gc:{s}:onces"),
        "0",
        "the empty index is gone"
    );
}

/// Issue 13.2's compatibility: a `once` marker written before markers carried a
/// fingerprint (the value `EXPIRES_AT` alone) is read as having none. It matches
/// no call's fingerprint, so its key is a conflict until it expires, never a free
/// retry; it exports as such, and a copy keeps it so.
#[test]
fn a_marker_without_a_fingerprint_reads_as_a_conflict() {
    use creditgate::bindings::CounterAdded;
    let server = RedisServer::start();
    let store = server.store("old");
    let add = |key: &str, fingerprint, now| harness::add_email_once(&store, key, fingerprint, now);
    assert_eq!(add("msg/0/new", 1, 0), CounterAdded::Applied(2));
    // As the previous version wrote it: the expiry alone, listed in the index.
    assert_eq!(
        server.cli_line("SET old:{acme}:once:msg/0/postfix/PFX1 1000"),
        "OK"
    );
    assert_eq!(
        server.cli_line("ZADD old:{acme}:onces inf msg/0/postfix/PFX1"),
        "1"
    );
    assert_eq!(
        server.cli_line("GET old:{acme}:once:msg/0/new"),
        "5000 1",
        "written with its fingerprint"
    );
    for fingerprint in [0, 1, u64::MAX] {
        assert_eq!(
            add("msg/0/postfix/PFX1", fingerprint, 500),
            CounterAdded::Conflict(2)
        );
    }
    let dump = store.export_scope("acme").expect("exports");
    assert_eq!(
        dump.once,
        [
            ("msg/0/new".to_owned(), 5_000, Some(1)),
            ("msg/0/postfix/PFX1".to_owned(), 1_000, None),
        ]
    );
    store.import_scope("copy", &dump).expect("imports");
    assert_eq!(store.export_scope("copy").expect("exports").once, dump.once);
    assert_eq!(
        server.cli_line("GET old:{copy}:once:msg/0/postfix/PFX1"),
        "1000",
        "a copy keeps the old form"
    );
    // Expired, it blocks nothing.
    assert_eq!(
        add("msg/0/postfix/PFX1", 3, 1_000),
        CounterAdded::Applied(4)
    );
}

/// A charge whose reply is late (Redis stalled past the call's timeout, the
/// script run all the same) is not a failure: the store asks once more under the
/// same once key and gets `repeated`, so the request stands on the charge it
/// made. Failing it instead left the credits taken and charged the client's
/// retry, a new Postfix `instance`, again.
#[test]
fn a_charge_answered_late_stands_and_is_counted_once() {
    use creditgate::bindings::CounterAdded;

    let server = RedisServer::start();
    let store = RedisStore::open(&format!(
        "{}?prefix=late&call_timeout_ms=2000",
        server.url()
    ))
    .expect("connects");
    let charge = |key| {
        store.counter_add(CounterAdd {
            scope: "acct",
            guard: None,
            name: "sent",
            amount: 3,
            limit: Some(10),
            once: Some(OnceKey {
                key,
                fingerprint: 7,
                expires_at: 2_000,
            }),
            expires_at: None,
            now: 1_000,
        })
    };
    assert_eq!(charge("m0").expect("charges"), CounterAdded::Applied(3));
    server.signal("STOP");
    let late = std::thread::scope(|t| {
        let late = t.spawn(|| charge("m1"));
        // Running again between the first call's timeout (2 s) and the
        // second's (4 s): both run then, the first applied, the second a repeat.
        std::thread::sleep(Duration::from_secs(3));
        server.signal("CONT");
        late.join().expect("charges")
    });
    assert_eq!(late.expect("stands"), CounterAdded::Repeated(6));
    assert_eq!(store.counter_get("acct", "sent", 1_000).expect("reads"), 6);
    assert_eq!(charge("m1").expect("repeats"), CounterAdded::Repeated(6));
}

/// A server that stops answering costs a call its timeout, not a hang, and the
/// error names the server; a server that is not there fails the open quickly.
#[test]
fn a_stalled_or_absent_server_is_unavailable_within_the_timeouts() {
    use creditgate::store::StoreError;

    let server = RedisServer::start();
    let store = RedisStore::open(&format!("{}?prefix=t&call_timeout_ms=200", server.url()))
        .expect("connects");
    assert!(store.record_insert("s", "k", "v").expect("inserts"));
    server.signal("STOP");
    let started = Instant::now();
    let stalled = store.record_insert("s", "k2", "v");
    let took = started.elapsed();
    server.signal("CONT");
    match stalled {
        Err(StoreError::Unavailable(m)) => {
            harness::assert_has(&m, &format!("127.0.0.1:{}", server.port));
            harness::assert_has(&m, "no answer within 200 ms");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The request was queued, not lost: once the server runs again it applies,
    // which is why a charge carries a once key (a retry answers repeated).
    let deadline = Instant::now() + WAIT;
    while store.record_get("s", "k2").ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "the server never answered again");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A port nothing listens on (free a moment ago: what is tested is a
    // connection refused).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let started = Instant::now();
    match RedisStore::open(&format!("redis://127.0.0.1:{port}?connect_timeout_ms=300")) {
        Err(StoreError::Unavailable(m)) => {
            harness::assert_has(&m, &format!("127.0.0.1:{port}"));
            harness::assert_has(&m, "cannot connect");
        }
        Err(e) => panic!("expected unavailable, got {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// After a restart or failover the server has no scripts: the client loads them
/// again on NOSCRIPT, and the caller sees nothing.
#[test]
fn scripts_are_loaded_again_after_a_flush() {
    let server = RedisServer::start();
    let store = server.store("flush");
    assert!(store.record_insert("s", "a", "v").expect("inserts"));
    assert_eq!(server.cli_line("SCRIPT FLUSH"), "OK");
    assert!(store.record_insert("s", "b", "v").expect("inserts again"));
    assert_eq!(store.scopes().expect("scopes"), ["s"]);
}

/// `rediss://` is refused with a clear message: this build has no TLS.
#[test]
fn tls_urls_are_refused_clearly() {
    let (code, _, stderr) = creditgate(&["usage", "acme", "--store", "rediss://127.0.0.1:1"]);
    assert_eq!(code, 2, "{stderr}");
    harness::assert_has(&stderr, "no TLS support");
}

/// Charges per second and their latency through [`RedisStore`] against a local
/// `redis-server` (AOF on), from 1, 8 and 32 threads, each charge a `counter_add`
/// with its own `once` key on one of 100 scopes, as the Postfix gateway makes them:
/// `cargo test --release -p creditgate --test it redis_store_throughput -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run it in release with --ignored --nocapture"]
fn redis_store_throughput() {
    for fsync in ["everysec", "always"] {
        let server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", fsync]);
        let store = server.store("bench");
        for threads in [1usize, 8, 32] {
            let run_for = Duration::from_secs(2);
            let mut latencies: Vec<Duration> = std::thread::scope(|t| {
                let workers: Vec<_> = (0..threads)
                    .map(|i| {
                        let store = &store;
                        t.spawn(move || {
                            let mut latencies = Vec::new();
                            let started = Instant::now();
                            let mut n = 0u64;
                            while started.elapsed() < run_for {
                                let key = format!("{threads}-{i}-{n}");
                                let scope = format!("acct{}", n % 100);
                                let add = CounterAdd {
                                    scope: &scope,
                                    guard: None,
                                    name: "sent",
                                    amount: 1,
                                    limit: Some(u64::MAX),
                                    once: Some(OnceKey {
                                        key: &key,
                                        fingerprint: n,
                                        expires_at: i64::MAX,
                                    }),
                                    expires_at: None,
                                    now: 0,
                                };
                                let call = Instant::now();
                                store.counter_add(add).expect("counter_add");
                                latencies.push(call.elapsed());
                                n += 1;
                            }
                            latencies
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().expect("worker"))
                    .collect()
            });
            latencies.sort();
            let at = |q: f64| {
                latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)]
            };
            println!(
                "appendfsync {fsync:<8} {threads:>2} thread(s): {:>7.0} charges/s, p50 {:>6.0} µs, p99 {:>6.0} µs",
                latencies.len() as f64 / run_for.as_secs_f64(),
                at(0.50).as_secs_f64() * 1e6,
                at(0.99).as_secs_f64() * 1e6,
            );
        }
    }
}

/// Issue 5's connection item at the gateway: with its Redis down, `serve`
/// answers as configured for an internal error (fail closed by default: `451
/// 4.3.5`, so nothing flows unmetered), logs a line naming the server, and
/// answers normally again once Redis is back, without a restart.
#[test]
fn a_gateway_fails_closed_while_redis_is_down_and_recovers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let store = format!(
        "{}?prefix=down&call_timeout_ms=300&connect_timeout_ms=300",
        server.url()
    );
    let policy = acme_on_small_plan(dir.path(), &store, 40);
    let log = dir.path().join("serve.log");
    let gateway = Gateway::start(&store, &policy, &log);
    assert_eq!(
        gateway.ask(&end_of_message("acme", 1, "up")),
        "action=DUNNO"
    );

    server.kill();
    let down = gateway.ask(&end_of_message("acme", 1, "down"));
    harness::assert_starts(&down, "action=451 4.3.5");
    let logged = std::fs::read_to_string(&log).expect("reads the log");
    assert!(
        logged.contains(&format!("redis 127.0.0.1:{}", server.port)),
        "the log names the server: {logged}"
    );

    // Long enough for the client's reconnection attempts to run out and start
    // over: recovery must not depend on the outage being short.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(3) {
        let reply = gateway.ask(&end_of_message("acme", 1, "down"));
        harness::assert_starts(&reply, "action=451 4.3.5");
        std::thread::sleep(Duration::from_millis(250));
    }
    server.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = gateway.ask(&end_of_message("acme", 1, "down"));
        if reply == "action=DUNNO" {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {reply}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The message refused while Redis was down was not charged then: one credit
    // for "up", one for "down" once it went through.
    assert_eq!(acme_emails_used(&store, &policy), 2);
    gateway.stop();
}

/// The model property test on the cluster: scopes spread over the nodes, and the
/// registry of scopes kept by the client beside each script.
#[test]
fn cluster_matches_model() {
    let cluster = Cluster::start();
    crate::store::matches_model(32, |case| Box::new(cluster.store(&format!("case{case}"))));
}

/// Scope names that could break the hash tag or collide once escaped: each is
/// its own scope, listed under its own name, in one slot of its own.
fn tricky_scope_names(s: &dyn Store) {
    let names = ["}", "%", "%7D", "%25", "{x}", "a}b", "{", "", "}{", "%%"];
    for (i, &name) in names.iter().enumerate() {
        assert!(s.record_insert(name, "k", &i.to_string()).expect("insert"));
        let add = MemberAdd {
            scope: name,
            group: "g}",
            member: "m{",
            limit: None,
        };
        let added = s.member_add(add).expect("member");
        assert_eq!(added.members, 1, "{name:?}");
    }
    let mut expected: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
    expected.sort();
    assert_eq!(s.scopes().expect("scopes"), expected);
    for (i, &name) in names.iter().enumerate() {
        let dump = s.export_scope(name).expect("export");
        assert_eq!(dump.records, [("k".to_owned(), i.to_string())], "{name:?}");
        assert_eq!(dump.memberships, [("g}".to_owned(), "m{".to_owned())]);
        assert_eq!(s.member_count(name).expect("count"), 1);
    }
}

#[test]
fn tricky_scope_names_stay_apart() {
    let server = RedisServer::start();
    tricky_scope_names(&server.store("tricky"));
}

/// `visit_members` reads a page of 1,000 at a time: across pages of groups and
/// of members, in order, and stopping when told to.
#[test]
fn visits_cross_pages_in_order() {
    use creditgate::store::ScopeDump;

    let server = RedisServer::start();
    let store = server.store("pages");
    let mut memberships: Vec<(String, String)> = (0..2_500)
        .flat_map(|g| {
            [
                (format!("g{g:04}"), "a".to_owned()),
                (format!("g{g:04}"), "b".to_owned()),
            ]
        })
        .collect();
    memberships.extend((0..2_500).map(|m| ("g0007".to_owned(), format!("m{m:04}"))));
    memberships.sort();
    let dump = ScopeDump {
        memberships: memberships.clone(),
        ..ScopeDump::default()
    };
    store.import_scope("s", &dump).expect("imports");
    assert_eq!(crate::harness::memberships(&store, "s"), memberships);
    let mut group = Vec::new();
    store
        .visit_members("s", Some("g0007"), &mut |_, m| {
            group.push(m.to_owned());
            true
        })
        .expect("visits");
    assert_eq!(group.len(), 2_502);
    let mut calls = 0;
    store
        .visit_members("s", None, &mut |_, _| {
            calls += 1;
            calls < 2_345
        })
        .expect("visits");
    assert_eq!(calls, 2_345);
}

/// One charge of `amount` on counter `c` of `scope`, idempotent on `key`.
fn charge(
    store: &dyn Store,
    scope: &str,
    key: &str,
    limit: u64,
) -> Result<creditgate::bindings::CounterAdded, creditgate::store::StoreError> {
    let once = OnceKey {
        key,
        fingerprint: 7,
        expires_at: i64::MAX,
    };
    let add = CounterAdd {
        scope,
        guard: None,
        name: "c",
        amount: 1,
        limit: Some(limit),
        once: Some(once),
        expires_at: None,
        now: 0,
    };
    store.counter_add(add)
}

/// Issue 15.5: the store's collector sends the calls every thread has in flight
/// as one pipeline per node. 64 callers through one store, racing for the last
/// credits of 8 accounts and sending each message twice (Postfix's retry):
/// each account sells exactly its limit, a retry of a charged message answers
/// `repeated`, and nothing else is charged. On one server and on a cluster,
/// where the accounts spread over the nodes.
#[test]
fn many_callers_sharing_pipelines_sell_exactly_the_limit() {
    let server = RedisServer::start();
    callers_race(&server.store("race"));
    let cluster = Cluster::start();
    callers_race(&cluster.store("race"));
}

fn callers_race(store: &RedisStore) {
    use creditgate::bindings::CounterAdded;

    const CALLERS: usize = 64;
    const MESSAGES: usize = 20;
    const ACCOUNTS: usize = 8;
    const LIMIT: u64 = 50;
    let barrier = std::sync::Barrier::new(CALLERS);
    let sold: Vec<[u64; ACCOUNTS]> = std::thread::scope(|t| {
        let callers: Vec<_> = (0..CALLERS)
            .map(|i| {
                let barrier = &barrier;
                t.spawn(move || {
                    let mut sold = [0u64; ACCOUNTS];
                    barrier.wait();
                    for j in 0..MESSAGES {
                        let account = (i + j) % ACCOUNTS;
                        let (scope, key) = (format!("acct-{account}"), format!("m-{i}-{j}"));
                        let first = charge(store, &scope, &key, LIMIT).expect("charges");
                        let again = charge(store, &scope, &key, LIMIT).expect("charges");
                        match (first, again) {
                            (CounterAdded::Applied(_), CounterAdded::Repeated(_)) => {
                                sold[account] += 1;
                            }
                            (CounterAdded::Refused(_), CounterAdded::Refused(_)) => {}
                            other => panic!("{scope} {key}: {other:?}"),
                        }
                    }
                    sold
                })
            })
            .collect();
        callers
            .into_iter()
            .map(|c| c.join().expect("caller"))
            .collect()
    });
    for account in 0..ACCOUNTS {
        let total: u64 = sold.iter().map(|s| s[account]).sum();
        assert_eq!(total, LIMIT, "acct-{account} sold");
        let scope = format!("acct-{account}");
        assert_eq!(store.counter_get(&scope, "c", 0).expect("reads"), LIMIT);
    }
}

/// Issue 15.5: a call that fails inside a pipeline fails alone. With the server
/// stopped, 32 callers' charges gather in the collector; once it runs again they
/// go out together. First with the server's scripts flushed (as after a
/// restart): every call meets NOSCRIPT, is run again alone with its script
/// loaded, and is applied once. Then with one account's counter holding
/// garbage: that call answers corrupt, every other one in its pipeline is
/// applied.
#[test]
fn a_call_failing_inside_a_pipeline_fails_alone() {
    use creditgate::bindings::CounterAdded;
    use creditgate::store::StoreError;

    const CALLERS: usize = 32;
    let server = RedisServer::start();
    let store = RedisStore::open(&format!(
        "{}?prefix=mid&call_timeout_ms=10000",
        server.url()
    ))
    .expect("connects");
    assert!(matches!(
        charge(&store, "bad", "first", 1_000),
        Ok(CounterAdded::Applied(1))
    ));
    let stopped_together = |round: &str| -> Vec<Result<CounterAdded, StoreError>> {
        server.signal("STOP");
        std::thread::scope(|t| {
            let callers: Vec<_> = (0..CALLERS)
                .map(|i| {
                    let store = &store;
                    t.spawn(move || {
                        let scope = if i == 0 {
                            "bad".to_owned()
                        } else {
                            format!("good-{}", i % 4)
                        };
                        charge(store, &scope, &format!("{round}-{i}"), 1_000)
                    })
                })
                .collect();
            // Long enough for every caller to be waiting in the collector.
            std::thread::sleep(Duration::from_millis(500));
            server.signal("CONT");
            callers
                .into_iter()
                .map(|c| c.join().expect("caller"))
                .collect::<Vec<_>>()
        })
    };

    assert_eq!(server.cli_line("SCRIPT FLUSH"), "OK");
    for (i, answer) in stopped_together("flushed").into_iter().enumerate() {
        assert!(
            matches!(answer, Ok(CounterAdded::Applied(_))),
            "caller {i}: {answer:?}"
        );
    }
    let good = |store: &RedisStore| -> u64 {
        (0..4)
            .map(|g| {
                store
                    .counter_get(&format!("good-{g}"), "c", 0)
                    .expect("reads")
            })
            .sum()
    };
    assert_eq!(good(&store), CALLERS as u64 - 1);
    assert_eq!(store.counter_get("bad", "c", 0).expect("reads"), 2);

    server.cli_line("HSET mid:{bad}:ctr:c v garbage");
    for (i, answer) in stopped_together("corrupt").into_iter().enumerate() {
        match (i, answer) {
            (0, Err(StoreError::Corrupt(m))) => assert!(m.contains("garbage"), "{m}"),
            (0, other) => panic!("the corrupt account answered {other:?}"),
            (i, answer) => {
                assert!(
                    matches!(answer, Ok(CounterAdded::Applied(_))),
                    "caller {i}: {answer:?}"
                );
            }
        }
    }
    assert_eq!(good(&store), 2 * (CALLERS as u64 - 1));
}

/// An allow is as durable as Redis keeps it, and Redis's defaults keep less
/// than a gateway promises. `serve --check` (and `serve`'s log at start, from
/// the same reading) says what the server's settings can lose in a crash.
#[test]
fn serve_check_says_what_redis_could_lose_in_a_crash() {
    for (args, expected) in [
        (
            &["--appendonly", "no"][..],
            "appendonly no, appendfsync everysec: WARNING, a crash can lose every charge \
             since the last snapshot",
        ),
        (
            &["--appendonly", "yes", "--appendfsync", "everysec"][..],
            "appendonly yes, appendfsync everysec: WARNING, a crash can lose about the last \
             second of charges",
        ),
        (
            &["--appendonly", "yes", "--appendfsync", "always"][..],
            "appendonly yes, appendfsync always",
        ),
    ] {
        let server = RedisServer::start_with(args);
        let out = crate::harness::creditgate_command()
            .args(["serve", "--check", "--store", &server.url()])
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {stdout}");
        let line = stdout
            .lines()
            .find(|l| l.starts_with("store"))
            .unwrap_or_else(|| panic!("{args:?}: no store line in {stdout}"));
        assert!(
            line.contains(&format!("scope(s); {expected}")),
            "{args:?}: {line}"
        );
        assert_eq!(
            line.contains("WARNING"),
            expected.contains("WARNING"),
            "{args:?}: {line}"
        );
    }
}

/// Audit F.3: `CONFIG SET appendonly no` on a running Redis went unseen (the
/// opening alone read the settings), and a crash then took back 1,000 charges
/// answered as allowed. The watch reads them again and says so, as an error.
#[test]
fn durability_weakened_at_runtime_is_said() {
    let server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("serve.log");
    let url = format!("{}?settings_check_ms=50", server.url());
    let gateway = Gateway::start(
        &url,
        &crate::harness::repo().join("policies/smartlead.toml"),
        &log,
    );
    assert!(!gateway.0.log_text().contains("durability changed"));
    server.cli(&["CONFIG", "SET", "appendonly", "no"]);
    until("the weakening is said", || {
        gateway.0.log_text().contains(
            "Redis's durability changed (appendonly no, appendfsync always: a crash can lose \
             every charge since the last snapshot)",
        )
    });
    server.cli(&["CONFIG", "SET", "appendonly", "yes"]);
    until("the mending is said", || {
        gateway
            .0
            .log_text()
            .contains("every primary keeps writes again")
    });
    gateway.stop();
}

/// Polls `done` until it holds, within [`WAIT`].
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Audit 3.1: a Redis that may evict keys under memory pressure deletes a
/// ledger's counters and markers first (they carry TTLs), so usage reads as
/// reset and retried messages are charged again. Such a server is refused at
/// open, and one switched to evicting at runtime has every call refused (and
/// `health` failing) until it is switched back.
#[test]
fn a_server_that_may_evict_keys_is_refused_and_watched() {
    let evicting =
        RedisServer::start_with(&["--maxmemory", "100mb", "--maxmemory-policy", "volatile-lru"]);
    match RedisStore::open(&evicting.url()) {
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("maxmemory-policy volatile-lru"), "{e}");
            assert!(e.contains("noeviction"), "{e}");
        }
        Ok(_) => panic!("a store opened on a server that evicts keys"),
    }
    // No memory bound: nothing is evicted, whatever the policy.
    let unbounded =
        RedisServer::start_with(&["--maxmemory", "0", "--maxmemory-policy", "allkeys-lru"]);
    unbounded.store("unbounded");

    let server =
        RedisServer::start_with(&["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"]);
    let store = RedisStore::open(&format!(
        "{}?prefix=watched&settings_check_ms=50",
        server.url()
    ))
    .expect("a server that never evicts is fine");
    charge(&store, "acme", "m1", 10).expect("charges");
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    until("calls refused while the server may evict", || {
        store.health().is_err()
    });
    let refused = charge(&store, "acme", "m2", 10).expect_err("refused while it may evict");
    assert!(refused.to_string().contains("allkeys-lru"), "{refused}");
    assert!(store.scopes().is_err(), "reads are refused too");
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    until("served again once nothing is evicted", || {
        store.health().is_ok()
    });
    charge(&store, "acme", "m2", 10).expect("charges again");
    assert_eq!(
        store.counter_get("acme", "c", 0).expect("reads"),
        2,
        "the refused call changed nothing"
    );
}

/// Audit F.1: keys evicted are gone whatever the policy says afterwards. A
/// server that has evicted keys (its `evicted_keys` above 0, at open or later)
/// refuses every call until an operator, having checked the ledger, resets the
/// count with `CONFIG RESETSTAT`: switching the policy back to `noeviction`
/// no longer serves again on a ledger whose counters may be gone.
#[test]
fn a_server_that_has_evicted_keys_is_refused_until_an_operator_resets_the_count() {
    let server =
        RedisServer::start_with(&["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"]);
    let url = format!("{}?prefix=evicted&settings_check_ms=50", server.url());
    let store = RedisStore::open(&url).expect("opens");
    charge(&store, "acme", "m1", 10).expect("charges");
    // Evict: a tight bound under an evicting policy, and keys to make room for.
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-random"]);
    let used: u64 = server
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    server.cli(&["CONFIG", "SET", "maxmemory", &(used + 200_000).to_string()]);
    for i in 0..200 {
        server.cli(&["SET", &format!("junk{i}"), &"x".repeat(10_000)]);
    }
    assert_ne!(stat(&server, "evicted_keys"), "0", "keys were evicted");
    server.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    std::thread::sleep(Duration::from_millis(300));
    let refused = charge(&store, "acme", "m2", 10).expect_err("refused after evictions");
    assert!(
        refused.to_string().contains("CONFIG RESETSTAT"),
        "{refused}"
    );
    // A gateway starting now is refused too.
    let err = RedisStore::open(&url)
        .map(|_| ())
        .expect_err("refused at open");
    assert!(err.to_string().contains("has evicted"), "{err}");

    server.cli(&["CONFIG", "RESETSTAT"]);
    until("served again once the count is reset", || {
        store.health().is_ok()
    });
    charge(&store, "acme", "m2", 10).expect("charges again");
}

fn stat(server: &RedisServer, name: &str) -> String {
    let prefix = format!("{name}:");
    server
        .cli(&["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()).map(|v| v.trim().to_owned()))
        .unwrap_or_default()
}

/// Audit 3.3: on a cluster the settings of every primary count. The durability
/// reading names the primary that keeps writes least well, and one primary that
/// may evict keys is enough for the store to be refused.
#[test]
fn a_cluster_is_judged_by_its_weakest_primary() {
    let cluster = Cluster::start();
    let always = ["appendonly", "yes", "appendfsync", "always"];
    for node in &cluster.nodes {
        node.cli(&[&["CONFIG", "SET"][..], &always[..]].concat());
    }
    let durability = cluster.store("judged").durability().expect("reads");
    assert_eq!(durability.risk(), None, "{durability}");
    assert_eq!(durability.to_string(), "appendonly yes, appendfsync always");

    let weak = &cluster.nodes[1];
    weak.cli(&["CONFIG", "SET", "appendfsync", "everysec"]);
    let durability = cluster.store("judged").durability().expect("reads");
    assert_eq!(
        durability.to_string(),
        format!(
            "appendonly yes, appendfsync everysec (primary 127.0.0.1:{})",
            weak.port
        )
    );

    weak.cli(&["CONFIG", "SET", "maxmemory", "100mb"]);
    weak.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"]);
    match RedisStore::open(&cluster.url("judged")) {
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains(&format!("127.0.0.1:{}", weak.port)), "{e}");
            assert!(e.contains("volatile-ttl"), "{e}");
        }
        Ok(_) => panic!("a store opened on a cluster with a primary that evicts keys"),
    }
}
