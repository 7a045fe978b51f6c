//! A guest that loops, recurses, hoards memory or traps fails its own request
//! and nothing else: the host interrupts or contains it, replaces the instance,
//! keeps serving, and loses nothing already stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use creditgate::request::Request;
use creditgate::runtime::{
    ComponentSource, DecideError, LoadError, Runtime, RuntimeConfig, Worker,
};
use creditgate::store::{MemoryStore, Store};

use crate::harness;

fn hostile_runtime(config: RuntimeConfig) -> Runtime {
    let source = ComponentSource::File(env!("CREDITGATE_HOSTILE_WASM").into());
    Runtime::new(&source, config).expect("the hostile component compiles")
}

fn config() -> RuntimeConfig {
    RuntimeConfig {
        decision_budget: Duration::from_millis(20),
        load_budget: Duration::from_millis(100),
        memory_limit: 16 << 20,
        ..RuntimeConfig::default()
    }
}

fn usage(account: &str) -> Request {
    Request::Usage {
        account: account.into(),
    }
}

/// The worker answers an innocent request after the hostile one failed.
#[track_caller]
fn still_serves(worker: &mut Worker) {
    let d = worker
        .decide(&usage("innocent"), 0)
        .expect("the replaced instance answers");
    assert_eq!(d.denied, None);
}

fn hostile_worker(mode: &str) -> (Worker, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let runtime = hostile_runtime(config());
    let (worker, _) = runtime.worker(store.clone(), mode).expect("mode loads");
    (worker, store)
}

/// `times` decisions of the guest in `mode` trap, each followed by one that
/// is answered: the trapped instance is replaced.
fn traps_then_serves(mode: &str, times: usize) {
    let (mut worker, _) = hostile_worker(mode);
    for _ in 0..times {
        let err = worker.decide(&usage("boom"), 0).expect_err("no decision");
        assert!(matches!(err, DecideError::Trap(_)), "{err}");
        still_serves(&mut worker);
    }
}

#[test]
fn a_looping_guest_is_interrupted_within_its_budget() {
    let (mut worker, _) = hostile_worker("loop");
    for _ in 0..3 {
        let started = Instant::now();
        let err = worker
            .decide(&usage("boom"), 0)
            .expect_err("a loop gets no decision");
        let took = started.elapsed();
        assert!(matches!(err, DecideError::Timeout { .. }), "{err}");
        // The budget (20 ms) stopped it, not something a hundred times longer:
        // how close to 20 ms is the scheduler's business on a loaded machine, and
        // a benchmark's to measure, not a test's.
        assert!(took < Duration::from_secs(2), "interrupted after {took:?}");
        still_serves(&mut worker);
    }
}

#[test]
fn unbounded_recursion_traps_and_the_instance_is_replaced() {
    traps_then_serves("recurse", 1);
}

#[test]
fn memory_growth_stops_at_the_cap() {
    // A budget no machine's load can exhaust first: the cap, and only the cap,
    // must be what stops the guest (the host says which limit it was).
    let runtime = hostile_runtime(RuntimeConfig {
        decision_budget: Duration::from_secs(60),
        ..config()
    });
    let (mut worker, _) = runtime
        .worker(Arc::new(MemoryStore::new()), "grow")
        .expect("mode loads");
    let err = worker.decide(&usage("boom"), 0).expect_err("no decision");
    assert!(
        matches!(err, DecideError::MemoryCap { limit } if limit == config().memory_limit),
        "{err}"
    );
    still_serves(&mut worker);
}

#[test]
fn a_trap_fails_only_its_request() {
    traps_then_serves("trap", 3);
}

#[test]
fn a_trap_after_a_store_call_loses_nothing_already_stored() {
    let (mut worker, store) = hostile_worker("charge-then-trap");
    store
        .record_insert("boom", "account", "kept")
        .expect("stored");
    let err = worker.decide(&usage("boom"), 0).expect_err("no decision");
    assert!(matches!(err, DecideError::Trap(_)), "{err}");
    assert_eq!(
        store
            .record_get("boom", "account")
            .expect("readable")
            .as_deref(),
        Some("kept")
    );
    // The primitive the guest completed before trapping stays applied: atomic,
    // whatever the guest does next. It over-counts rather than oversells.
    assert_eq!(store.member_count("boom").expect("readable"), 1);
    still_serves(&mut worker);
}

/// Trust audit F2: on the embedded store the gateway decides the charges
/// waiting in one store batch. A decision that wrote and then trapped got no
/// answer (its request is refused or retried), yet its writes were committed
/// with the batch: a credit taken for nothing. Now its batch is abandoned and
/// the other decisions in it are decided again: the trapped ones leave
/// nothing, every other one is answered and durable, and each trap abandons
/// exactly one batch (a job is never decided more than twice).
#[test]
fn a_trap_after_writing_in_a_batch_leaves_nothing_and_the_rest_stand() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("batch.redb");
    let store = Arc::new(creditgate::store::RedbStore::open(&path).expect("opens"));
    let runtime = Arc::new(hostile_runtime(config()));
    let (gateway, _) =
        creditgate::gateway::Gateway::start(runtime, store.clone(), "charge-then-trap", 1)
            .expect("starts");
    let accounts: Vec<String> = (0..32)
        .map(|i| {
            if i % 8 == 5 {
                format!("boom{i}")
            } else {
                format!("a{i}")
            }
        })
        .collect();
    // All at once, so that the write lane finds many waiting and decides them
    // in a few batches, the traps among them.
    let start = std::sync::Barrier::new(accounts.len());
    let answers: Vec<bool> = std::thread::scope(|threads| {
        let asked: Vec<_> = accounts
            .iter()
            .map(|account| {
                let (gateway, start) = (&gateway, &start);
                threads.spawn(move || {
                    start.wait();
                    let lead = Request::AddLead {
                        account: account.clone(),
                        campaign: "c".into(),
                        email: "ann@example.com".into(),
                    };
                    gateway.decide_blocking(lead, 0).is_ok()
                })
            })
            .collect();
        asked
            .into_iter()
            .map(|t| t.join().expect("joins"))
            .collect()
    });
    let booms = accounts.iter().filter(|a| a.starts_with("boom")).count();
    let abandoned = gateway.snapshot().abandoned_batches;
    gateway.shutdown();
    drop(gateway);
    let held = |store: &dyn Store| -> Vec<(bool, u64)> {
        accounts
            .iter()
            .map(|a| (a.starts_with("boom"), store.member_count(a).expect("reads")))
            .collect()
    };
    let expected: Vec<(bool, u64)> = accounts
        .iter()
        .map(|a| (a.starts_with("boom"), u64::from(!a.starts_with("boom"))))
        .collect();
    assert_eq!(held(&*store), expected, "one credit per answered decision");
    let answered: Vec<bool> = accounts.iter().map(|a| !a.starts_with("boom")).collect();
    assert_eq!(answers, answered);
    assert_eq!(abandoned, booms as u64, "one abandoned batch a trap");
    drop(store);
    let store = creditgate::store::RedbStore::open(&path).expect("opens again");
    assert_eq!(held(&store), expected, "durable as answered");
}

/// A store whose every call takes a while, like a disk under load.
struct SlowStore(MemoryStore);

macro_rules! slow {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> $ret {
            std::thread::sleep(Duration::from_micros(300));
            self.0.$name($($arg),*)
        })*
    };
}

impl Store for SlowStore {
    slow! {
        record_get(scope: &str, key: &str) -> Result<Option<String>, creditgate::store::StoreError>;
        record_insert(scope: &str, key: &str, value: &str) -> Result<bool, creditgate::store::StoreError>;
        record_update(scope: &str, key: &str, value: &str) -> Result<bool, creditgate::store::StoreError>;
        record_update_guarded(update: creditgate::store::GuardedUpdate<'_>) -> Result<bool, creditgate::store::StoreError>;
        counter_get(scope: &str, name: &str, now: i64) -> Result<u64, creditgate::store::StoreError>;
        counter_add_guarded(add: creditgate::store::CounterAdd<'_>) -> Result<creditgate::bindings::GuardedAdd, creditgate::store::StoreError>;
        counter_tally(tally: creditgate::store::CounterTally<'_>) -> Result<Option<creditgate::bindings::Tally>, creditgate::store::StoreError>;
        member_add(add: creditgate::store::MemberAdd<'_>) -> Result<creditgate::bindings::MemberAdded, creditgate::store::StoreError>;
        member_add_guarded(add: creditgate::store::MemberAddGuarded<'_>) -> Result<Option<creditgate::bindings::GuardedMember>, creditgate::store::StoreError>;
        member_remove(at: creditgate::store::Membership<'_>) -> Result<creditgate::bindings::MemberRemoved, creditgate::store::StoreError>;
        group_clear(scope: &str, group: &str) -> Result<creditgate::bindings::GroupCleared, creditgate::store::StoreError>;
        member_count(scope: &str) -> Result<u64, creditgate::store::StoreError>;
        persist() -> Result<(), creditgate::store::StoreError>;
        secret() -> Result<[u8; creditgate::store::SECRET_LEN], creditgate::store::StoreError>;
        set_secret(secret: [u8; creditgate::store::SECRET_LEN]) -> Result<(), creditgate::store::StoreError>;
        host_record(key: &str) -> Result<Option<String>, creditgate::store::StoreError>;
        set_host_record(key: &str, value: &str) -> Result<(), creditgate::store::StoreError>;
        scopes() -> Result<Vec<String>, creditgate::store::StoreError>;
        member_add_many(add: creditgate::store::MemberAddMany<'_>) -> Result<creditgate::bindings::MembersAdded, creditgate::store::StoreError>;
        visit_members_after(list: creditgate::store::Members<'_>, visit: creditgate::store::Visit<'_>) -> Result<(), creditgate::store::StoreError>;
        export_scope(scope: &str) -> Result<creditgate::store::ScopeDump, creditgate::store::StoreError>;
        import_scope(scope: &str, dump: &creditgate::store::ScopeDump) -> Result<(), creditgate::store::StoreError>;
        alert_sequence(owner: &str) -> Result<u64, creditgate::store::StoreError>;
        alert_insert(owner: &str, key: &str, value: &str) -> Result<bool, creditgate::store::StoreError>;
        visit_alerts(list: creditgate::store::Alerts<'_>, visit: creditgate::store::VisitAlert<'_>) -> Result<(), creditgate::store::StoreError>;
    }
}

#[test]
fn time_spent_in_the_store_does_not_count_against_the_guest() {
    let runtime = hostile_runtime(config());
    let (mut worker, _) = runtime
        .worker(Arc::new(SlowStore(MemoryStore::new())), "slow-store")
        .expect("loads");
    // 200 store calls of 300 µs each: 60 ms of host time against a 20 ms guest budget.
    let started = Instant::now();
    let d = worker
        .decide(&usage("boom"), 0)
        .expect("host time is not guest time");
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert_eq!(d.denied, None);
}

#[test]
fn a_policy_load_that_loops_or_traps_is_an_error() {
    let runtime = hostile_runtime(config());
    for mode in ["loop-on-load", "trap-on-load"] {
        let started = Instant::now();
        let err = runtime
            .worker(Arc::new(MemoryStore::new()), mode)
            .expect_err("no worker");
        assert!(matches!(err, LoadError::Trap(_)), "{mode}: {err}");
        // The load budget (100 ms) stopped it, not something a hundred times longer.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{mode}: {took:?}");
    }
}

#[test]
fn a_failed_reload_keeps_the_old_policy() {
    let (mut worker, _) = hostile_worker("trap");
    let err = worker
        .load_policy("trap-on-load")
        .expect_err("reload traps");
    assert!(matches!(err, LoadError::Trap(_)), "{err}");
    // Still the "trap" policy, in a fresh instance.
    assert!(matches!(
        worker.decide(&usage("boom"), 0),
        Err(DecideError::Trap(_))
    ));
    still_serves(&mut worker);
}

#[test]
fn bytes_that_are_not_a_component_are_refused() {
    let (_dir, path) = harness::temp_path("junk.wasm");
    std::fs::write(&path, b"\0asm definitely not a component").expect("written");
    let err =
        Runtime::new(&ComponentSource::File(path), RuntimeConfig::default()).expect_err("refused");
    assert!(matches!(err, LoadError::Component { .. }), "{err}");
}

#[test]
fn impossible_answers_are_errors_not_decisions() {
    let (mut worker, _) = hostile_worker("lie");
    for account in [
        "boom-denied-charged",
        "boom-reused-charged",
        "boom-alert",
        "boom-cycle",
    ] {
        let err = worker
            .decide(&usage(account), 0)
            .expect_err("a contradictory answer is not a decision");
        assert!(matches!(err, DecideError::Contract(_)), "{account}: {err}");
        still_serves(&mut worker);
    }
    // Issue 17.4: shadow never leaks into enforcement. A component that says it
    // let a request through in shadow on a plan it loaded as enforced, or
    // allowed a charge past an enforced limit, or names a plan to upgrade to for
    // a denial that is no lack of credits, gets no decision.
    for account in [
        "boom-shadow-enforced",
        "boom-past-limit",
        "boom-upgrade-elsewhere",
    ] {
        let charge = harness::charge(account, 1);
        let err = worker
            .decide(&charge, 0)
            .expect_err("shadow leaking into enforcement is not a decision");
        assert!(matches!(err, DecideError::Contract(_)), "{account}: {err}");
        still_serves(&mut worker);
    }
    // Trust audit: the host checks a charge against what the store applied. A
    // component that allows a counted message without charging it (no store
    // call, no repeat of a charged message), or claims a charge the store never
    // added, gets no decision: the gateway fails closed instead of sending free.
    for account in ["boom-free-charge", "boom-overstated"] {
        let err = worker
            .decide(&harness::charge(account, 1), 0)
            .expect_err("a charge the store did not apply is not a decision");
        assert!(matches!(err, DecideError::Contract(_)), "{account}: {err}");
        still_serves(&mut worker);
    }
    let emails: Vec<String> = ["a@x.io", "b@x.io", "c@x.io"].map(String::from).into();
    let err = worker
        .add_leads("innocent", "c", &emails, 0)
        .expect_err("a batch answered one short");
    assert!(
        err.to_string().contains("2 result(s) for a batch of 3"),
        "{err}"
    );

    // At the gateway, the same is an error its front ends answer per their
    // fail-open or fail-closed setting, and every other request goes on.
    let runtime = Arc::new(hostile_runtime(config()));
    let (gateway, _) =
        creditgate::gateway::Gateway::start(runtime, Arc::new(MemoryStore::new()), "lie", 1)
            .expect("starts");
    let charge = harness::charge("boom-denied-charged", 1);
    let err = gateway.decide_blocking(charge, 0).expect_err("no decision");
    assert!(err.to_string().contains("impossible result"), "{err}");
    let fine = gateway
        .decide_blocking(usage("innocent"), 0)
        .expect("the gateway keeps serving");
    assert_eq!(fine.denied, None);
}

/// Trust audit: the real component forgot its interned names by count only
/// (65,536), while the host also caps their bytes (16 MiB). Unknown accounts
/// with long names (anyone may ask `usage` or `decide/email` for any name)
/// filled the bytes first, and every decision needing a new name failed from
/// then on: no new account could be charged until a reload. 17,000 such names,
/// then a new account is served as usual.
#[test]
fn long_unknown_names_do_not_exhaust_the_instances_names() {
    let mut worker = harness::worker("[plans.small]\nlead_credits = 5\nemail_credits = 5\n");
    // 248 four-byte characters and a number: about 1,000 bytes a name.
    let stem = "\u{20000}".repeat(248);
    for i in 0..17_000 {
        let d = worker
            .decide(&usage(&format!("{stem}{i}")), 0)
            .unwrap_or_else(|e| panic!("name {i}: {e}"));
        assert_eq!(d.denied, Some(creditgate::bindings::Reason::UnknownAccount));
    }
    let subscribed = worker
        .decide(&harness::subscription("newcomer", "small"), 0)
        .expect("subscribes");
    assert_eq!(subscribed.denied, None);
    let sent = worker
        .decide(&harness::charge("newcomer", 1), 0)
        .expect("charges");
    assert_eq!((sent.denied, sent.charged), (None, 1));
}
