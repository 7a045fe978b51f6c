//! Lead imports from CSV: leads per second through the whole path (splitting rows,
//! batching, the component, the store), into a fresh store per iteration.
//!
//! Names read as dimensions: `import/leads/<order>/<store>`. `random` lists are
//! as real ones are (`creditgate_benches::addresses`: every new contact lands
//! anywhere in the store's key order); `sequential` ones
//! (`lead{n}@example{n % 997}.com`) land each next to the previous, which flatters
//! the store, and are kept for comparison. The redb store is made durable as
//! `leads import` makes it.

// Benchmarks time decisions without a sync each (clippy.toml keeps commands off it).
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::io::Write as _;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use creditgate::import::{ImportOptions, import};
use creditgate::request::Request;
use creditgate::runtime::{ComponentSource, Runtime, RuntimeConfig, Worker};
use creditgate::store::{MemoryStore, RedbStore, Store};

const SMARTLEAD: &str = include_str!("../../policies/smartlead.toml");
const T0: i64 = 1_738_314_000_000_000_000; // 2025-01-31T09:00:00Z

/// Leads per iteration: enough batches that per-import set-up is noise.
const LEADS: u64 = 100_000;

/// A CSV of `LEADS` distinct contacts in near-sequential order, shaped like a
/// typical export.
fn sequential_csv() -> Vec<u8> {
    let mut out = b"first_name,last_name,email,company\n".to_vec();
    for i in 0..LEADS {
        let _ = writeln!(
            out,
            "Lead,Number {i},lead{i}@example{}.com,\"Company {i}, Inc.\"",
            i % 997
        );
    }
    out
}

/// A CSV of `LEADS` distinct random addresses, shaped the same.
fn random_csv() -> Vec<u8> {
    let mut out = Vec::new();
    creditgate_benches::addresses::write_csv(&mut out, LEADS, 1).expect("written to memory");
    out
}

/// A worker over `store` with an account on an unlimited plan.
fn worker(runtime: &Runtime, store: Arc<dyn Store>) -> Worker {
    let (mut worker, _) = runtime.worker(store, SMARTLEAD).expect("policy loads");
    let subscribe = Request::Subscribe {
        account: "acme".into(),
        plan: "unlimited_prime".into(),
        anchor: None,
    };
    worker.decide(&subscribe, T0).expect("subscribes");
    worker
}

fn imports(c: &mut Criterion) {
    let runtime =
        Runtime::new(&ComponentSource::Builtin, RuntimeConfig::default()).expect("component loads");
    let lists = [("random", random_csv()), ("sequential", sequential_csv())];
    let options = ImportOptions::new("acme", "q1", T0);
    let dir = tempfile::tempdir().expect("temp dir");

    let mut group = c.benchmark_group("import/leads");
    group.throughput(Throughput::Elements(LEADS));
    group.sample_size(10);

    let mut n = 0;
    for (order, data) in &lists {
        let run = |mut worker: Worker| {
            let report =
                import(&mut worker, black_box(&data[..]), &options, &mut |_| {}).expect("imports");
            assert_eq!(report.uploaded, LEADS);
            // The store (and, for redb, its file) is dropped outside the measurement.
            worker
        };
        group.bench_function(format!("{order}/memory"), |b| {
            b.iter_batched(
                || worker(&runtime, Arc::new(MemoryStore::new())),
                run,
                BatchSize::PerIteration,
            )
        });
        group.bench_function(format!("{order}/redb"), |b| {
            b.iter_batched(
                || {
                    // The last iteration's store is closed by now: keep one file at a time.
                    let _ = std::fs::remove_file(dir.path().join(format!("import-{n}.redb")));
                    n += 1;
                    let path = dir.path().join(format!("import-{n}.redb"));
                    worker(&runtime, Arc::new(RedbStore::open(&path).expect("opens")))
                },
                run,
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, imports);
criterion_main!(benches);
