//! One decision, natively and through the component, plus the costs around it.
//!
//! Names read as dimensions: `decide/<op>/<native|wasm>/<store>`, so that the cost
//! of the WebAssembly boundary is the ratio of two neighbouring lines.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};

use creditgate::bindings::EmailKind;
use creditgate::request::Request;
use creditgate::runtime::{ComponentSource, Runtime, RuntimeConfig, Worker};
use creditgate::store::{MemoryStore, Store};
use creditgate_benches::NativeState;
use creditgate_guest::engine::Engine;
use creditgate_guest::policy::Policy;

const SMARTLEAD: &str = include_str!("../../policies/smartlead.toml");
const T0: i64 = 1_738_314_000_000_000_000; // 2025-01-31T09:00:00Z

fn send(account: &str) -> Request {
    Request::SendEmail {
        account: account.into(),
        to: vec!["ann@example.com".into()],
        kind: EmailKind::First,
        message_id: None,
    }
}

fn lead(account: &str) -> Request {
    Request::AddLead {
        account: account.into(),
        campaign: "q1".into(),
        email: "ann@example.com".into(),
    }
}

/// A worker over `store` with one account on the unlimited plan, so that the
/// benchmark loop never runs out of credits.
fn wasm_worker(runtime: &Runtime, store: Arc<dyn Store>) -> Worker {
    let (mut worker, _) = runtime.worker(store, SMARTLEAD).expect("policy loads");
    let subscribe = Request::Subscribe {
        account: "acme".into(),
        plan: "unlimited_prime".into(),
    };
    worker.decide(&subscribe, T0).expect("subscribes");
    worker
}

fn native_engine(st: &mut NativeState) -> Engine {
    let mut engine = Engine::default();
    engine.load_policy(SMARTLEAD).expect("policy loads");
    engine
        .subscribe(st, "acme", "unlimited_prime", T0)
        .expect("subscribes");
    engine
}

fn decisions(c: &mut Criterion) {
    let runtime =
        Runtime::new(&ComponentSource::Builtin, RuntimeConfig::default()).expect("component loads");
    let to = vec!["ann@example.com".to_string()];

    let mut st = NativeState(Arc::new(MemoryStore::new()));
    let engine = native_engine(&mut st);
    c.bench_function("decide/email/native/memory", |b| {
        b.iter(|| {
            engine
                .send_email(
                    &mut st,
                    black_box("acme"),
                    &to,
                    creditgate_guest::bindings::EmailKind::First,
                    None,
                    T0,
                )
                .expect("decides")
        })
    });
    c.bench_function("decide/lead/native/memory", |b| {
        b.iter(|| {
            engine
                .add_lead(&mut st, black_box("acme"), "q1", "ann@example.com", T0)
                .expect("decides")
        })
    });

    let mut worker = wasm_worker(&runtime, Arc::new(MemoryStore::new()));
    let (email, add) = (send("acme"), lead("acme"));
    c.bench_function("decide/email/wasm/memory", |b| {
        b.iter(|| worker.decide(black_box(&email), T0).expect("decides"))
    });
    c.bench_function("decide/lead/wasm/memory", |b| {
        b.iter(|| worker.decide(black_box(&add), T0).expect("decides"))
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let redb = Arc::new(
        creditgate::store::RedbStore::open(&dir.path().join("bench.redb")).expect("opens"),
    );
    let mut worker = wasm_worker(&runtime, redb);
    // One caller, one disk sync per decision: the cost group commit amortises.
    c.bench_function("decide/email/wasm/redb-durable-1-caller", |b| {
        b.iter(|| {
            let d = worker.decide(black_box(&email), T0).expect("decides");
            worker.persist().expect("durable");
            d
        })
    });
}

fn loading(c: &mut Criterion) {
    let runtime =
        Runtime::new(&ComponentSource::Builtin, RuntimeConfig::default()).expect("component loads");
    let (mut worker, _) = runtime
        .worker(Arc::new(MemoryStore::new()), SMARTLEAD)
        .expect("policy loads");
    c.bench_function("policy/load/wasm", |b| {
        b.iter(|| worker.load_policy(black_box(SMARTLEAD)).expect("loads"))
    });
    c.bench_function("policy/load/native", |b| {
        b.iter(|| Policy::parse(black_box(SMARTLEAD)).expect("parses"))
    });

    let mut group = c.benchmark_group("component/load");
    group.sample_size(10);
    group.bench_function("compile", |b| {
        b.iter(|| {
            Runtime::new(
                &ComponentSource::Builtin,
                RuntimeConfig {
                    cache_dir: None,
                    ..RuntimeConfig::default()
                },
            )
        })
    });
    let cache = tempfile::tempdir().expect("temp dir");
    let cached = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    Runtime::new(&ComponentSource::Builtin, cached.clone()).expect("fills the cache");
    group.bench_function("precompiled", |b| {
        b.iter(|| Runtime::new(&ComponentSource::Builtin, cached.clone()))
    });
    group.finish();
}

criterion_group!(benches, decisions, loading);
criterion_main!(benches);
