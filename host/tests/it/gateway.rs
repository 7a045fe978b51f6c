//! The worker pool with group commit: exact under concurrency, durable before it
//! answers, and reloadable without failing a request in flight.

use std::sync::Arc;
use std::thread;

use creditgate::bindings::Reason;
use creditgate::gateway::Gateway;
use creditgate::replay::parse_instant;
use creditgate::request::Request;
use creditgate::store::{RedbStore, Store};

use crate::harness;

const POLICY: &str = "[plans.small]\nlead_credits = 20\nemail_credits = 50\n\n[plans.large]\nlead_credits = 40\nemail_credits = 100\n";

fn at(s: &str) -> i64 {
    parse_instant(s).expect("valid instant")
}

fn gateway(store: Arc<dyn Store>, workers: usize) -> Gateway {
    let runtime = crate::harness::shared_runtime();
    let (gateway, _) = Gateway::start(runtime, store, POLICY, workers).expect("starts");
    let subscribe = Request::Subscribe {
        account: "acme".into(),
        plan: "small".into(),
    };
    let d = gateway
        .decide_blocking(subscribe, at("2025-01-31T09:00:00Z"))
        .expect("subscribes");
    assert_eq!(d.denied, None);
    gateway
}

/// `threads` threads each send `each` one-recipient messages with their own ids.
fn race_for_email(gateway: &Gateway, threads: usize, each: usize) -> usize {
    thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
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
                            assert!(
                                d.denied.is_none()
                                    || d.denied == Some(Reason::EmailCreditsExhausted)
                            );
                            d.denied.is_none()
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    })
}

#[test]
fn racing_clients_get_exactly_the_limit_and_it_is_durable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("race.redb");
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
    let added: usize = thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let gateway = &gateway;
                s.spawn(move || {
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
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    assert_eq!(added, 20);
}

#[test]
fn a_message_retried_from_many_clients_is_charged_once() {
    let gateway = gateway(Arc::new(creditgate::store::MemoryStore::new()), 4);
    let charged: u64 = thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let gateway = &gateway;
                s.spawn(move || {
                    let retry = Request::ChargeEmail {
                        account: "acme".into(),
                        cost: 3,
                        message_id: Some("postfix/4F2A".into()),
                    };
                    gateway
                        .decide_blocking(retry, at("2025-02-01T00:00:00Z"))
                        .expect("decides")
                        .charged
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
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
            )
            .expect_err("refused");
        assert!(
            matches!(err, creditgate::runtime::LoadError::Policy(_)),
            "{err}"
        );
        assert_eq!(gateway.version(), 0);
        gateway
            .reload(
                &POLICY.replace("email_credits = 50", "email_credits = 75"),
                None,
            )
            .expect("valid");
        assert_eq!(gateway.version(), 1);
        traffic.join().expect("no request failed");
    });
    assert_eq!(usage(), Some(75));
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
