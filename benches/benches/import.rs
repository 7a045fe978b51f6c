//! Lead imports from CSV: leads per second through the whole path (splitting rows,
//! batching, the component, the store), into a fresh store per iteration.
//!
//! Names read as dimensions: `import/leads/<store>`. The redb store is not made
//! durable per batch but once a second and at the end, as `leads import` does.

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

/// A CSV of `LEADS` distinct contacts, shaped like a typical export.
fn csv() -> Vec<u8> {
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
    let data = csv();
    let options = ImportOptions::new("acme", "q1", T0);
    let dir = tempfile::tempdir().expect("temp dir");

    let mut group = c.benchmark_group("import/leads");
    group.throughput(Throughput::Elements(LEADS));
    group.sample_size(10);

    let run = |mut worker: Worker| {
        let report =
            import(&mut worker, black_box(&data[..]), &options, &mut |_| {}).expect("imports");
        assert_eq!(report.uploaded, LEADS);
        // The store (and, for redb, its file) is dropped outside the measurement.
        worker
    };
    group.bench_function("memory", |b| {
        b.iter_batched(
            || worker(&runtime, Arc::new(MemoryStore::new())),
            run,
            BatchSize::PerIteration,
        )
    });
    let mut n = 0;
    group.bench_function("redb", |b| {
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
    group.finish();
}

criterion_group!(benches, imports);
criterion_main!(benches);
