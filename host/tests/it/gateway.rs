//! The worker pool with group commit: exact under concurrency, durable before it
//! answers, and reloadable without failing a request in flight.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;

use creditgate::bindings::{
    GroupCleared, GuardedAdd, GuardedMember, MemberAdded, MemberRemoved, MembersAdded, Reason,
    Tally,
};
use creditgate::gateway::{Gateway, ReloadError, StrandedPlan};
use creditgate::replay::parse_instant;
use creditgate::request::Request;
use creditgate::store::{
    Alerts, CounterAdd, CounterTally, MemberAdd, MemberAddGuarded, MemberAddMany, Members,
    Membership, RedbStore, ScopeDump, Store, StoreError, Visit, VisitAlert,
};

use crate::harness;

const POLICY: &str = "[plans.small]\nlead_credits = 20\nemail_credits = 50\n\n[plans.large]\nlead_credits = 40\nemail_credits = 100\n";

fn at(s: &str) -> i64 {
    parse_instant(s).expect("valid instant")
}

fn gateway(store: Arc<dyn Store>, workers: usize) -> Gateway {
    gateway_with(
        store,
        POLICY,
        workers,
        &["acme"],
        "small",
        at("2025-01-31T09:00:00Z"),
    )
}

/// A gateway of `workers` over `store` with `policy`, each of `accounts`
/// subscribed to `plan` at `now`.
fn gateway_with(
    store: Arc<dyn Store>,
    policy: &str,
    workers: usize,
    accounts: &[&str],
    plan: &str,
    now: i64,
) -> Gateway {
    let runtime = crate::harness::shared_runtime();
    let (gateway, _) = Gateway::start(runtime, store, policy, workers).expect("starts");
    for account in accounts {
        let subscribe = harness::subscription(account, plan);
        let d = gateway.decide_blocking(subscribe, now).expect("subscribes");
        assert_eq!(d.denied, None);
    }
    gateway
}

/// The sum of what `f(thread)` answers on each of `threads` threads, all run at
/// once.
fn summed_over_threads<T: Send + std::iter::Sum>(
    threads: usize,
    f: impl Fn(usize) -> T + Sync,
) -> T {
    thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                s.spawn(move || f(t))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    })
}

/// `threads` threads each send `each` one-recipient messages with their own ids.
fn race_for_email(gateway: &Gateway, threads: usize, each: usize) -> usize {
    summed_over_threads(threads, |t| {
        (0..each)
            .filter(|i| {
                let send = Request::ChargeEmail {
                    account: "acme".into(),
                    cost: 1,
                    message_id: Some(format!("m-{t}-{i}")),
                };
                let d = gateway
                    .decide_blocking(send, at("2025-02-01T00:00:00Z"))
                    .expect("decides");
                assert!(d.denied.is_none() || d.denied == Some(Reason::EmailCreditsExhausted));
                d.denied.is_none()
            })
            .count()
    })
}

/// What `err` says a refused reload would strand, asserted to be `accounts`
/// accounts on `plan` and nothing else.
fn stranded_by(err: &ReloadError, plan: &str, accounts: u64) -> Vec<StrandedPlan> {
    let ReloadError::StrandsAccounts(stranded) = err else {
        panic!("expected StrandsAccounts, got {err}");
    };
    let expected = StrandedPlan {
        plan: plan.into(),
        accounts,
    };
    assert_eq!(stranded, &[expected]);
    stranded.clone()
}

#[test]
fn racing_clients_get_exactly_the_limit_and_it_is_durable() {
    let (_dir, path) = harness::temp_path("race.redb");
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).expect("opens"));
    let gateway = gateway(store, 4);
    assert_eq!(race_for_email(&gateway, 16, 10), 50);
    gateway.shutdown();
    drop(gateway);

    // What was acknowledged is on disk: reopen the file in a fresh worker.
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).expect("reopens"));
    let mut worker = harness::worker_on(store, POLICY);
    let usage = worker
        .decide(
            &Request::Usage {
                account: "acme".into(),
            },
            at("2025-02-01T00:00:00Z"),
        )
        .expect("decides");
    assert_eq!(usage.usage.map(|u| u.email_credits.used), Some(50));
}

#[test]
fn racing_lead_additions_stop_at_the_lead_limit() {
    let gateway = gateway(Arc::new(creditgate::store::MemoryStore::new()), 4);
    let added: usize = summed_over_threads(8, |t| {
        (0..10)
            .filter(|i| {
                let add = Request::AddLead {
                    account: "acme".into(),
                    campaign: format!("c{}", t % 3),
                    email: format!("lead{t}x{i}@example.com"),
                };
                gateway
                    .decide_blocking(add, at("2025-02-01T00:00:00Z"))
                    .expect("decides")
                    .charged
                    == 1
            })
            .count()
    });
    assert_eq!(added, 20);
}

#[test]
fn a_message_retried_from_many_clients_is_charged_once() {
    let gateway = gateway(Arc::new(creditgate::store::MemoryStore::new()), 4);
    let charged: u64 = summed_over_threads(8, |_| {
        let retry = Request::ChargeEmail {
            account: "acme".into(),
            cost: 3,
            message_id: Some("postfix/4F2A".into()),
        };
        gateway
            .decide_blocking(retry, at("2025-02-01T00:00:00Z"))
            .expect("decides")
            .charged
    });
    assert_eq!(charged, 3);
}

#[test]
fn reloads_take_effect_between_requests_and_bad_ones_are_refused() {
    let gateway = gateway(Arc::new(creditgate::store::MemoryStore::new()), 2);
    let usage = || {
        let d = gateway
            .decide_blocking(
                Request::Usage {
                    account: "acme".into(),
                },
                at("2025-02-01T00:00:00Z"),
            )
            .expect("decides");
        d.usage.and_then(|u| u.email_credits.limit)
    };
    assert_eq!(usage(), Some(50));
    thread::scope(|s| {
        // Requests keep flowing while the policy changes under them.
        let traffic = s.spawn(|| {
            for _ in 0..300 {
                let d = gateway.decide_blocking(
                    Request::Usage {
                        account: "acme".into(),
                    },
                    at("2025-02-01T00:00:00Z"),
                );
                assert!(d.is_ok_and(|d| d.denied.is_none()));
            }
        });
        let err = gateway
            .reload(
                "[plans.small]\nlead_credits = -1\nemail_credits = 5\n",
                None,
                false,
            )
            .expect_err("refused");
        assert!(
            matches!(
                err,
                ReloadError::Load(creditgate::runtime::LoadError::Policy(_))
            ),
            "{err}"
        );
        assert_eq!(gateway.version(), 0);
        gateway
            .reload(
                &POLICY.replace("email_credits = 50", "email_credits = 75"),
                None,
                false,
            )
            .expect("valid");
        assert_eq!(gateway.version(), 1);
        traffic.join().expect("no request failed");
    });
    assert_eq!(usage(), Some(75));
}

/// Audit E.7: a reload that lowers a plan's limits below what accounts on it
/// use takes nothing back; the gateway counts those accounts, by plan, for the
/// reload to say so. A reload that lowers nothing scans nothing.
#[test]
fn a_reload_that_lowers_limits_counts_the_accounts_left_over_them() {
    let now = creditgate::time::now();
    let store: Arc<dyn Store> = Arc::new(creditgate::store::MemoryStore::new());
    let gateway = gateway_with(store, POLICY, 2, &["acme", "globex"], "small", now);
    let d = gateway
        .decide_blocking(harness::charge("acme", 5), now)
        .expect("charges");
    assert_eq!(d.denied, None);
    let (_, before) = gateway.policy_summary();
    let lowered = POLICY.replacen("email_credits = 50", "email_credits = 3", 1);
    gateway.reload(&lowered, None, false).expect("reloads");
    let over = gateway.over_lowered_limits(&before).expect("checks");
    assert_eq!(
        over,
        [creditgate::gateway::StrandedPlan {
            plan: "small".into(),
            accounts: 1
        }]
    );
    let (_, before) = gateway.policy_summary();
    gateway.reload(POLICY, None, false).expect("reloads");
    assert!(
        gateway
            .over_lowered_limits(&before)
            .expect("checks")
            .is_empty()
    );
}

/// Issue 13, item 1: a reload that drops a plan accounts are on strands them
/// (every request of theirs denied `unknown_plan`); it is refused, naming the plan
/// and how many accounts are on it, unless forced.
#[test]
fn a_reload_that_drops_a_plan_in_use_is_refused_unless_forced() {
    let gateway = gateway(Arc::new(creditgate::store::MemoryStore::new()), 2);
    let now = at("2025-02-01T00:00:00Z");
    for account in ["globex", "initech"] {
        let d = gateway
            .decide_blocking(harness::subscription(account, "large"), now)
            .expect("subscribes");
        assert_eq!(d.denied, None);
    }
    let without_large = "[plans.small]\nlead_credits = 20\nemail_credits = 50\n";
    let err = gateway
        .reload(without_large, None, false)
        .expect_err("strands two accounts");
    let stranded = stranded_by(&err, "large", 2);
    assert!(err.to_string().contains("\"large\" (2 accounts)"), "{err}");
    assert_eq!(gateway.version(), 0, "the policy in force keeps serving");
    assert_eq!(gateway.snapshot().reloads_refused, 1);
    assert!(gateway.stranded_plans().expect("checks").is_empty());

    // Forced: the accounts stay visible under the plan they are on, and take nothing.
    gateway
        .reload(without_large, None, true)
        .expect("forced in");
    assert_eq!(gateway.version(), 1);
    assert_eq!(gateway.stranded_plans().expect("checks"), stranded);
    let usage = gateway
        .decide_blocking(
            Request::Usage {
                account: "globex".into(),
            },
            now,
        )
        .expect("answers");
    assert_eq!(usage.denied, Some(Reason::UnknownPlan));
    let usage = usage
        .usage
        .expect("a stranded account's usage is still reported");
    assert_eq!(usage.plan, "large");
    assert_eq!(usage.email_credits.limit, Some(0));
    let send = gateway
        .decide_blocking(harness::charge("globex", 1), now)
        .expect("answers");
    assert_eq!((send.denied, send.charged), (Some(Reason::UnknownPlan), 0));

    // Moved to a plan the policy has, it sends again.
    let moved = gateway
        .decide_blocking(
            Request::ChangePlan {
                account: "globex".into(),
                plan: "small".into(),
            },
            now,
        )
        .expect("answers");
    assert_eq!(moved.denied, None);
    assert_eq!(
        gateway.stranded_plans().expect("checks")[0].accounts,
        1,
        "initech is still on it"
    );

    // Accounts a forced reload stranded do not block the reloads after it: only
    // the plans a reload takes away count, and this one takes none.
    gateway
        .reload(without_large, None, false)
        .expect("nothing more is stranded");
    // One that takes away `small` (acme and globex are on it) names only it.
    let err = gateway
        .reload(
            "[plans.other]\nlead_credits = 1\nemail_credits = 1\n",
            None,
            false,
        )
        .expect_err("strands acme and globex");
    stranded_by(&err, "small", 2);
}

/// Issue 14, item 9: a reload loads the new policy into an instance for every
/// worker before it switches, so no request waits for an instance and a parse.
#[test]
fn a_reload_prepares_every_workers_instance_before_it_switches() {
    let gateway = gateway(Arc::new(creditgate::store::MemoryStore::new()), 3);
    let now = at("2025-02-01T00:00:00Z");
    for round in 0..3 {
        let policy = POLICY.replace(
            "email_credits = 50",
            &format!("email_credits = {}", 60 + round),
        );
        gateway.reload(&policy, None, false).expect("reloads");
        // Enough requests, some at once, that every worker takes some.
        thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    for _ in 0..20 {
                        let d = gateway
                            .decide_blocking(
                                Request::CheckEmail {
                                    account: "acme".into(),
                                    cost: 1,
                                },
                                now,
                            )
                            .expect("answers");
                        assert_eq!(
                            d.usage.map(|u| u.email_credits.limit),
                            Some(Some(60 + round))
                        );
                    }
                });
            }
        });
    }
    assert_eq!(gateway.snapshot().unprepared_switches, 0);
}

#[test]
fn after_shutdown_requests_are_refused_not_lost() {
    let gateway = gateway(Arc::new(creditgate::store::MemoryStore::new()), 1);
    gateway.shutdown();
    let err = gateway
        .decide_blocking(
            Request::Usage {
                account: "acme".into(),
            },
            0,
        )
        .expect_err("stopped");
    assert!(matches!(err, creditgate::gateway::GatewayError::Stopped));
}

/// A redb store that holds the first charge it applies open for a while (as a
/// preempted worker would between two store calls) and keeps a copy of the file
/// as the first durable commit after that charge leaves it: the image a crash
/// right after that commit would restart from.
struct SlowAfterCharge {
    inner: RedbStore,
    path: std::path::PathBuf,
    image: std::path::PathBuf,
    charged: std::sync::atomic::AtomicBool,
    imaged: std::sync::atomic::AtomicBool,
    signal: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// When set, the first charge is held until this says go, not for 300 ms.
    hold: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl Store for SlowAfterCharge {
    fn counter_add_guarded(&self, add: CounterAdd<'_>) -> Result<GuardedAdd, StoreError> {
        let added = self.inner.counter_add_guarded(add)?;
        let charge = !add.scope.starts_with('\u{1}') && matches!(added, GuardedAdd::Applied(_));
        if charge && !self.charged.swap(true, Ordering::SeqCst) {
            if let Some(signal) = self.signal.lock().expect("lock").take() {
                let _ = signal.send(());
            }
            match self.hold.lock().expect("lock").take() {
                Some(go) => {
                    let _ = go.recv_timeout(std::time::Duration::from_secs(10));
                }
                None => std::thread::sleep(std::time::Duration::from_millis(300)),
            }
        }
        Ok(added)
    }
    fn persist(&self) -> Result<(), StoreError> {
        self.inner.persist()?;
        if self.charged.load(Ordering::SeqCst) && !self.imaged.swap(true, Ordering::SeqCst) {
            std::fs::copy(&self.path, &self.image).expect("copies the crash image");
            // The store's journal goes with it: what persist made durable is there.
            std::fs::copy(
                creditgate::store::journal_path(&self.path),
                creditgate::store::journal_path(&self.image),
            )
            .expect("copies the crash image's journal");
        }
        Ok(())
    }

    // The rest passes through.
    fn secret(&self) -> Result<[u8; creditgate::store::SECRET_LEN], StoreError> {
        self.inner.secret()
    }
    fn set_secret(&self, secret: [u8; creditgate::store::SECRET_LEN]) -> Result<(), StoreError> {
        self.inner.set_secret(secret)
    }
    fn host_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.host_record(key)
    }
    fn set_host_record(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.set_host_record(key, value)
    }
    fn record_get(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.record_get(scope, key)
    }
    fn record_insert(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        self.inner.record_insert(scope, key, value)
    }
    fn record_update(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        self.inner.record_update(scope, key, value)
    }
    fn record_update_guarded(
        &self,
        update: creditgate::store::GuardedUpdate<'_>,
    ) -> Result<bool, StoreError> {
        self.inner.record_update_guarded(update)
    }
    fn counter_get(&self, scope: &str, name: &str, now: i64) -> Result<u64, StoreError> {
        self.inner.counter_get(scope, name, now)
    }
    fn counter_tally(&self, tally: CounterTally<'_>) -> Result<Option<Tally>, StoreError> {
        self.inner.counter_tally(tally)
    }
    fn member_add(&self, add: MemberAdd<'_>) -> Result<MemberAdded, StoreError> {
        self.inner.member_add(add)
    }
    fn member_add_guarded(
        &self,
        add: MemberAddGuarded<'_>,
    ) -> Result<Option<GuardedMember>, StoreError> {
        self.inner.member_add_guarded(add)
    }
    fn member_add_many(&self, add: MemberAddMany<'_>) -> Result<MembersAdded, StoreError> {
        self.inner.member_add_many(add)
    }
    fn member_remove(&self, at: Membership<'_>) -> Result<MemberRemoved, StoreError> {
        self.inner.member_remove(at)
    }
    fn group_clear(&self, scope: &str, group: &str) -> Result<GroupCleared, StoreError> {
        self.inner.group_clear(scope, group)
    }
    fn member_count(&self, scope: &str) -> Result<u64, StoreError> {
        self.inner.member_count(scope)
    }
    fn scopes(&self) -> Result<Vec<String>, StoreError> {
        self.inner.scopes()
    }
    fn visit_members_after(&self, list: Members<'_>, visit: Visit<'_>) -> Result<(), StoreError> {
        self.inner.visit_members_after(list, visit)
    }
    fn export_scope(&self, scope: &str) -> Result<ScopeDump, StoreError> {
        self.inner.export_scope(scope)
    }
    fn import_scope(&self, scope: &str, dump: &ScopeDump) -> Result<(), StoreError> {
        self.inner.import_scope(scope, dump)
    }
    fn alert_sequence(&self, owner: &str) -> Result<u64, StoreError> {
        self.inner.alert_sequence(owner)
    }
    fn alert_insert(&self, owner: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        self.inner.alert_insert(owner, key, value)
    }
    fn visit_alerts(&self, list: Alerts<'_>, visit: VisitAlert<'_>) -> Result<(), StoreError> {
        self.inner.visit_alerts(list, visit)
    }
}

#[test]
fn no_commit_lands_between_a_charge_and_the_alert_it_fired() {
    let (dir, path) = harness::temp_path("live.redb");
    let image = dir.path().join("image.redb");
    let (signal, charged) = std::sync::mpsc::channel();
    let store = Arc::new(SlowAfterCharge {
        inner: RedbStore::open(&path).expect("opens"),
        path,
        image: image.clone(),
        charged: Default::default(),
        imaged: Default::default(),
        signal: Mutex::new(Some(signal)),
        hold: Mutex::new(None),
    });
    let policy = "[plans.one]\nlead_credits = 1\nemail_credits = 1\n";
    let accounts = ["acme", "zeta"];
    let subscribed = at("2026-01-01T00:00:00Z");
    let gateway = Arc::new(gateway_with(store, policy, 2, &accounts, "one", subscribed));
    // acme's one send crosses 80% and 100%; while it sits between its charge and
    // its alerts, zeta's send asks for a commit.
    let sender = gateway.clone();
    let crossing = std::thread::spawn(move || {
        let charge = harness::charge("acme", 1);
        sender
            .decide_blocking(charge, at("2026-01-02T00:00:00Z"))
            .expect("decides")
    });
    charged
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("acme's charge is applied");
    let other = harness::charge("zeta", 1);
    gateway
        .decide_blocking(other, at("2026-01-02T00:00:00Z"))
        .expect("decides");
    assert_eq!(crossing.join().expect("joins").charged, 1);
    gateway.shutdown();

    // The first durable state after the charge holds its alerts too.
    let image = RedbStore::open(&image).expect("the image opens");
    let used = image
        .counter_get("acme", "email/0", at("2026-01-02T00:00:00Z"))
        .expect("reads");
    let alerts: Vec<u8> = creditgate::alerts::list(&image, Some("acme"))
        .expect("reads the log")
        .iter()
        .map(|a| a.threshold)
        .collect();
    assert_eq!(used, 1, "the charge is in the image");
    assert_eq!(alerts, [80, 100], "and so are the alerts it fired");
}

/// An RCPT check waits for no charge: with the one writer held inside a charge
/// (as by a disk sync), a check on another account is answered, by the
/// read-only lane, before the charge is let go.
#[test]
fn a_read_only_request_never_waits_behind_a_charge() {
    let (dir, path) = harness::temp_path("gateway.redb");
    let (signal, charged) = std::sync::mpsc::channel();
    let (go, hold) = std::sync::mpsc::channel();
    let store = Arc::new(SlowAfterCharge {
        inner: RedbStore::open(&path).expect("opens"),
        path,
        image: dir.path().join("image.redb"),
        charged: Default::default(),
        imaged: Default::default(),
        signal: Mutex::new(Some(signal)),
        hold: Mutex::new(Some(hold)),
    });
    let policy = "[plans.big]\nlead_credits = 10\nemail_credits = 10\n";
    let now = at("2026-01-02T00:00:00Z");
    let gateway = Arc::new(gateway_with(
        store,
        policy,
        1,
        &["acme", "zeta"],
        "big",
        now,
    ));
    let sender = gateway.clone();
    let charging = std::thread::spawn(move || {
        let charge = harness::charge("acme", 1);
        sender.decide_blocking(charge, now)
    });
    charged
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("acme's charge is applied, and its worker now held");
    let (answered, answer) = std::sync::mpsc::channel();
    let checker = gateway.clone();
    std::thread::spawn(move || {
        let check = Request::CheckEmail {
            account: "zeta".into(),
            cost: 1,
        };
        let _ = answered.send(checker.decide_blocking(check, now));
    });
    let checked = answer
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the check is answered while the charge is held");
    assert_eq!(checked.expect("decides").denied, None);
    go.send(()).expect("lets the charge go");
    assert_eq!(charging.join().expect("joins").expect("decides").charged, 1);
}

/// Trust audit: a reload checked for stranded accounts, then switched to the new
/// version; a plan change decided under the old version in between put an
/// account on a plan the new policy lacks, and a reload that was not forced
/// stranded it all the same (12 of 173 accepted reloads in the audit's run).
/// Here acme's plan flips all along: every reload accepted without force
/// leaves nobody stranded.
#[test]
fn a_plan_change_racing_a_reload_never_strands_an_account() {
    let gateway = gateway(Arc::new(creditgate::store::MemoryStore::new()), 2);
    let without_large = "[plans.small]\nlead_credits = 20\nemail_credits = 50\n";
    let now = at("2025-02-01T00:00:00Z");
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Set when the rounds end, failed or not, so that the scope can end.
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    thread::scope(|s| {
        s.spawn(|| {
            for plan in ["large", "small"].iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let change = Request::ChangePlan {
                    account: "acme".into(),
                    plan: (*plan).into(),
                };
                gateway.decide_blocking(change, now).expect("decides");
            }
        });
        let _stop = Stop(&stop);
        let mut accepted = 0;
        for round in 0..150 {
            if gateway.reload(without_large, None, false).is_ok() {
                accepted += 1;
                let stranded = gateway.stranded_plans().expect("checks");
                assert!(stranded.is_empty(), "round {round}: {stranded:?}");
            }
            gateway
                .reload(POLICY, None, false)
                .expect("adds large back");
        }
        assert!(
            accepted > 0,
            "no reload was ever accepted: the race was not run"
        );
    });
}

/// Trust audit F6: two gateways on one store, with different policies (a
/// rolling upgrade). B, whose policy still has `large`, moves acme there; A's
/// policy lacks it, so A denies every request of acme (`unknown_plan`). That
/// was silent on A, and A's next reload, taking no plan away itself, was let
/// through without a look. Now A counts those denials, and refuses a reload
/// that still lacks `large` unless forced; once forced, acme's denials are
/// accepted (no longer counted) and later reloads are not blocked by them; and
/// once acme is on a plan A has, nothing is held against a reload.
#[test]
fn an_account_another_gateway_moved_off_this_ones_plans_is_counted_and_blocks_a_reload() {
    let store: Arc<dyn Store> = Arc::new(creditgate::store::MemoryStore::new());
    let without_large = "[plans.small]\nlead_credits = 20\nemail_credits = 50\n";
    let now = at("2025-02-01T00:00:00Z");
    let a = gateway_with(store.clone(), without_large, 1, &["acme"], "small", now);
    let b = gateway_with(store, POLICY, 1, &[], "small", now);
    let charge = || harness::charge("acme", 1);
    let to = |plan: &str| Request::ChangePlan {
        account: "acme".into(),
        plan: plan.into(),
    };
    // A plan change to a plan A's policy lacks is denied unknown_plan too,
    // for an account on a plan it has: nothing stranded there.
    let d = a.decide_blocking(to("large"), now).expect("decides");
    assert_eq!(d.denied, Some(Reason::UnknownPlan));
    assert_eq!(a.snapshot().stranded_denials, 0);
    a.reload(without_large, None, false)
        .expect("no account is on a plan this policy lacks");
    assert_eq!(
        b.decide_blocking(to("large"), now).expect("decides").denied,
        None
    );

    for _ in 0..2 {
        let d = a.decide_blocking(charge(), now).expect("decides");
        assert_eq!(d.denied, Some(Reason::UnknownPlan));
    }
    assert_eq!(a.snapshot().stranded_denials, 2);
    let err = a
        .reload(without_large, None, false)
        .expect_err("a reload that still lacks large is refused");
    stranded_by(&err, "large", 1);
    assert!(err.to_string().contains("the policy lacks 1 plan"), "{err}");

    // Forced: acme's plan is accepted as missing; its denials are not counted,
    // and they block no later reload.
    a.reload(without_large, None, true).expect("forced");
    let d = a.decide_blocking(charge(), now).expect("decides");
    assert_eq!(d.denied, Some(Reason::UnknownPlan));
    assert_eq!(a.snapshot().stranded_denials, 2);
    a.reload(without_large, None, false)
        .expect("what a forced reload accepted blocks nothing");

    // A policy with large again, then without it once acme is back on small:
    // nothing stranded, nothing refused.
    a.reload(POLICY, None, false).expect("large is back");
    assert_eq!(
        b.decide_blocking(to("small"), now).expect("decides").denied,
        None
    );
    a.reload(without_large, None, false)
        .expect("nobody is on large any more");
    let d = a.decide_blocking(charge(), now).expect("decides");
    assert_eq!(d.denied, None);
    assert_eq!(a.snapshot().stranded_denials, 2);
}

/// Trust audit 4b (suspected, reproduced here): a worker that could not load
/// the policy in force after a reload (the instance pool full, a load's time
/// budget run out on a starved machine) went on deciding under the policy the
/// reload replaced, whose limits may be higher, after the reload had been
/// acknowledged. It now refuses (fail closed), and tries again at its next
/// request. Four instances: the gateway's three lanes and the one the reload
/// prepares for the write lane; the read lane finds none to switch to.
#[test]
fn a_worker_that_cannot_load_the_policy_in_force_decides_nothing() {
    use creditgate::gateway::GatewayError;
    use creditgate::runtime::{ComponentSource, Runtime, RuntimeConfig};
    let config = RuntimeConfig {
        decision_budget: std::time::Duration::from_secs(2),
        instance_pool: Some(4),
        ..RuntimeConfig::default()
    };
    let runtime = Arc::new(Runtime::new(&ComponentSource::Builtin, config).expect("loads"));
    let store = Arc::new(creditgate::store::MemoryStore::new());
    let (gateway, _) = Gateway::start(runtime, store, POLICY, 1).expect("starts");
    let now = at("2025-01-31T09:00:00Z");
    let subscribe = harness::subscription("acme", "small");
    assert_eq!(
        gateway
            .decide_blocking(subscribe, now)
            .expect("subscribes")
            .denied,
        None
    );
    let lowered = POLICY.replace("email_credits = 50", "email_credits = 2");
    gateway.reload(&lowered, None, false).expect("reloads");

    let check = || {
        let check = Request::CheckEmail {
            account: "acme".into(),
            cost: 1,
        };
        gateway.decide_blocking(check, now)
    };
    match check() {
        Err(GatewayError::Behind(why)) => assert!(why.contains("instances"), "{why}"),
        other => panic!("decided under the replaced policy: {other:?}"),
    }
    assert_eq!(gateway.snapshot().unprepared_switches, 1);
    let charge = |id: &str| {
        let charge = Request::ChargeEmail {
            account: "acme".into(),
            cost: 1,
            message_id: Some(id.into()),
        };
        gateway
            .decide_blocking(charge, now)
            .expect("decides")
            .denied
    };
    assert_eq!([charge("m1"), charge("m2")], [None, None]);
    assert_eq!(charge("m3"), Some(Reason::EmailCreditsExhausted));
    // The write lane let its old instance go: the read lane switches now.
    let limit = check()
        .expect("decides")
        .usage
        .map(|u| u.email_credits.limit);
    assert_eq!(limit, Some(Some(2)));
}
