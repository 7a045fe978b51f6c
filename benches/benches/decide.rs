//! One decision, natively and through the component, plus the costs around it.
//!
//! Names read as dimensions: `decide/<op>/<native|wasm>/<store>`, so that the cost
//! of the WebAssembly boundary is the ratio of two neighbouring lines.
//!
//! `decide/email/wasm/redb` and `decide/email/wasm/redis` take the path of
//! `creditgate serve`: a [`Gateway`] (worker pool, group commit, every allow durable
//! before its answer) with [`CALLERS`] threads asking at once, as many smtpd
//! processes would. Their time is wall time per decision, so their throughput line
//! is decisions per second of the whole gateway; `redb-durable-1-caller` is the
//! same decision by one caller with one disk sync each, the cost group commit
//! shares out. The Redis one starts a `redis-server` of its own (see
//! [`RedisServer`]) and is skipped, with a line saying so, when there is none on
//! `PATH`.

// Benchmarks time decisions without a sync each (clippy.toml keeps commands off it).
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

use creditgate::bindings::EmailKind;
use creditgate::gateway::Gateway;
use creditgate::request::Request;
use creditgate::runtime::{ComponentSource, Runtime, RuntimeConfig, Worker};
use creditgate::store::{CounterAdd, MemoryStore, OnceKey, RedbStore, RedisStore, Store};
use creditgate_benches::NativeState;
use creditgate_guest::engine::Engine;
use creditgate_guest::policy::Policy;
use creditgate_testkit::redis::RedisServer;

const SMARTLEAD: &str = include_str!("../../policies/smartlead.toml");

/// The shipped plans plus [`UNLIMITED`], for the decision benchmarks. Even
/// `unlimited_prime` stops at 500,000 emails a cycle, which a loop at a
/// microsecond a decision spends within its warm-up, and then times denials.
const POLICY: &str = concat!(
    include_str!("../../policies/smartlead.toml"),
    r#"
[plans.bench_unlimited]
lead_credits = "unlimited"
email_credits = "unlimited"
"#
);

/// A plan of [`POLICY`] that never runs out.
const UNLIMITED: &str = "bench_unlimited";
const T0: i64 = 1_738_314_000_000_000_000; // 2025-01-31T09:00:00Z

fn send(account: &str) -> Request {
    Request::SendEmail {
        account: account.into(),
        to: vec!["ann@example.com".into()],
        kind: EmailKind::First,
        message_id: None,
    }
}

/// What serve asks at SMTP RCPT time: may one more email credit be spent?
fn check(account: &str) -> Request {
    Request::CheckEmail {
        account: account.into(),
        cost: 1,
    }
}

fn lead(account: &str) -> Request {
    Request::AddLead {
        account: account.into(),
        campaign: "q1".into(),
        email: "ann@example.com".into(),
    }
}

/// A worker over `store` with one account on [`UNLIMITED`], so that the
/// benchmark loop never runs out of credits.
fn wasm_worker(runtime: &Runtime, store: Arc<dyn Store>) -> Worker {
    let (mut worker, _) = runtime.worker(store, POLICY).expect("policy loads");
    let subscribe = Request::Subscribe {
        account: "acme".into(),
        plan: UNLIMITED.into(),
        anchor: None,
    };
    worker.decide(&subscribe, T0).expect("subscribes");
    worker
}

fn native_engine(st: &mut NativeState) -> Engine {
    let mut engine = Engine::default();
    engine.load_policy(POLICY).expect("policy loads");
    engine
        .subscribe(st, "acme", UNLIMITED, T0, T0)
        .expect("subscribes");
    engine
}

/// `CREDITGATE_BENCH_COUNT=<line>:<n>` (a line of [`decisions`] on the memory
/// store, say `decide/email/wasm/memory:100000`): that line's decision `n` times,
/// then the process exits. For `perf stat -e instructions:u`: two counts of
/// different `n` give instructions per decision, which hold on a machine whose
/// other load makes wall times noise.
fn counted() -> Option<(String, u64)> {
    let spec = std::env::var("CREDITGATE_BENCH_COUNT").ok()?;
    let (line, n) = spec.rsplit_once(':')?;
    Some((line.to_string(), n.parse().ok()?))
}

/// Runs `decide` `n` times and exits, for [`counted`].
fn count_and_exit<T>(n: u64, mut decide: impl FnMut() -> T) -> ! {
    for _ in 0..n {
        black_box(decide());
    }
    std::process::exit(0)
}

fn decisions(c: &mut Criterion) {
    let runtime =
        Runtime::new(&ComponentSource::Builtin, RuntimeConfig::default()).expect("component loads");
    let to = vec!["ann@example.com".to_string()];

    let mut st = NativeState::new(Arc::new(MemoryStore::new()));
    let engine = native_engine(&mut st);
    if let Some((line, n)) = counted() {
        let mut worker = wasm_worker(&runtime, Arc::new(MemoryStore::new()));
        let (email, add, rcpt) = (send("acme"), lead("acme"), check("acme"));
        match line.as_str() {
            "decide/email/native/memory" => count_and_exit(n, || {
                let kind = creditgate_guest::bindings::EmailKind::First;
                engine.send_email(&mut st, black_box("acme"), &to, kind, None, T0)
            }),
            "decide/lead/native/memory" => count_and_exit(n, || {
                engine.add_lead(&mut st, black_box("acme"), "q1", "ann@example.com", T0)
            }),
            "decide/email/wasm/memory" => {
                count_and_exit(n, || worker.decide(black_box(&email), T0))
            }
            "decide/lead/wasm/memory" => count_and_exit(n, || worker.decide(black_box(&add), T0)),
            "decide/check/native/memory" => {
                count_and_exit(n, || engine.check_email(&mut st, black_box("acme"), 1, T0))
            }
            "decide/check/wasm/memory" => count_and_exit(n, || worker.decide(black_box(&rcpt), T0)),
            other => panic!("CREDITGATE_BENCH_COUNT: no line {other:?} to count"),
        }
    }
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
    c.bench_function("decide/check/native/memory", |b| {
        b.iter(|| {
            engine
                .check_email(&mut st, black_box("acme"), 1, T0)
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
    // The call serve makes at END-OF-MESSAGE: a charge under a new message id
    // each time (Postfix's `instance`), so its keyed fingerprint is computed
    // and its idempotency marker written, as in serve.
    let mut message = 0u64;
    c.bench_function("decide/charge/wasm/memory", |b| {
        b.iter(|| {
            message += 1;
            let charge = Request::ChargeEmail {
                account: "acme".into(),
                cost: 1,
                message_id: Some(format!("postfix/{message:016X}")),
            };
            worker.decide(black_box(&charge), T0).expect("decides")
        })
    });
    // The call serve makes at SMTP RCPT time: no address crosses, a tally is read.
    let rcpt = check("acme");
    c.bench_function("decide/check/wasm/memory", |b| {
        b.iter(|| worker.decide(black_box(&rcpt), T0).expect("decides"))
    });

    // The floor under every line above: a call through `Worker` into the
    // component that does nothing (`history-cycles` answers a constant: no
    // argument, no state call, a result in a register), and one that answers a
    // small record through guest memory with a post-return call after it
    // (`warning-levels`). A decision cannot cost less than the first.
    c.bench_function("component/call/empty", |b| {
        b.iter(|| {
            worker
                .inspect(|g, s| g.call_history_cycles(s).map(Ok))
                .expect("answers")
        })
    });
    // The same call without the `Worker` around it (its clock reads, budget
    // and error mapping): wasmtime's own cost of entering the component, in
    // runs short enough for the decision budget.
    c.bench_function("component/call/bare", |b| {
        b.iter_custom(|iters| {
            let (mut spent, mut left) = (Duration::ZERO, iters);
            while left > 0 {
                let run = left.min(10_000);
                left -= run;
                spent += worker
                    .inspect(|g, s| {
                        let started = Instant::now();
                        for _ in 0..run {
                            black_box(g.call_history_cycles(&mut *s)?);
                        }
                        Ok(Ok(started.elapsed()))
                    })
                    .expect("answers");
            }
            spent
        })
    });
    c.bench_function("component/call/record", |b| {
        b.iter(|| {
            worker
                .inspect(|g, s| g.call_warning_levels(s))
                .expect("answers")
        })
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let redb = Arc::new(RedbStore::open(&dir.path().join("bench.redb")).expect("opens"));
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

/// Threads asking the gateway at once: far more than its workers, as with
/// Postfix's smtpd processes, so that decisions pile up behind each commit.
const CALLERS: usize = 32;

/// Accounts the callers spread over: caller `i` asks for account `i % ACCOUNTS`.
const ACCOUNTS: usize = 8;

/// `redis-server`'s durability in `decide/email/wasm/redis`: the setting the
/// README asks for, under which an acknowledged charge is on Redis's disk, as it
/// is on redb's under the gateway's group commit. So the two lines compare like
/// with like; `everysec` would answer before the sync.
const REDIS_APPENDFSYNC: &str = "always";

fn account(i: usize) -> String {
    format!("acct{i}")
}

/// `creditgate serve`'s default worker count: `per_core` workers a core, 2 on
/// redb and 32 on Redis, where a worker mostly waits out a round trip and the
/// server's fsync, which the calls in flight share (see `host/src/cli/serve.rs`).
fn serve_workers(per_core: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (per_core * cores).max(2)
}

/// A gateway over `store` with [`ACCOUNTS`] accounts on [`UNLIMITED`].
fn start_gateway(runtime: &Arc<Runtime>, store: Arc<dyn Store>, workers: usize) -> Gateway {
    let (gateway, _) =
        Gateway::start(runtime.clone(), store, POLICY, workers).expect("gateway starts");
    for i in 0..ACCOUNTS {
        let subscribe = Request::Subscribe {
            account: account(i),
            plan: UNLIMITED.into(),
            anchor: None,
        };
        let d = gateway.decide_blocking(subscribe, T0).expect("subscribes");
        assert!(d.denied.is_none(), "subscribing {}: {d:?}", account(i));
    }
    gateway
}

/// `iters` email decisions split among [`CALLERS`] threads asking at once; the
/// wall time from the moment all are ready to the last answer.
fn concurrently(gateway: &Gateway, iters: u64) -> Duration {
    let callers = CALLERS as u64;
    let ready = Barrier::new(CALLERS + 1);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let n = iters / callers + u64::from((caller as u64) < iters % callers);
                let ready = &ready;
                s.spawn(move || {
                    let account = account(caller % ACCOUNTS);
                    ready.wait();
                    for _ in 0..n {
                        let d = gateway
                            .decide_blocking(send(&account), T0)
                            .expect("decides");
                        // A run out of credits would time the cheaper denials.
                        assert!(d.denied.is_none(), "{account}: {d:?}");
                    }
                })
            })
            .collect();
        ready.wait();
        let started = Instant::now();
        for thread in threads {
            thread.join().expect("caller thread");
        }
        started.elapsed()
    })
}

fn gateways(c: &mut Criterion) {
    let runtime = Arc::new(
        Runtime::new(&ComponentSource::Builtin, RuntimeConfig::default()).expect("component loads"),
    );
    let mut group = c.benchmark_group("decide/email/wasm");
    group.throughput(Throughput::Elements(1));
    // Every sample the same size, each large enough that all callers stay busy
    // through many commits; a few samples suffice at milliseconds each.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);

    // Set up on first use, so that a filter that skips a benchmark skips its
    // store (and its redis-server) too.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut redb = None;
    group.bench_function("redb", |b| {
        let gateway = redb.get_or_insert_with(|| {
            let store = RedbStore::open(&dir.path().join("gateway.redb")).expect("opens");
            start_gateway(&runtime, Arc::new(store), serve_workers(2))
        });
        b.iter_custom(|iters| concurrently(gateway, iters))
    });
    // The group commit's figures: how many charges each disk sync carried.
    if let Some(gateway) = &redb {
        let stats = gateway.snapshot();
        let commits = stats.commit.summary();
        println!(
            "decide/email/wasm/redb: {} commits carried {} decisions ({:.1} per sync), \
             commit p50 {} us, p99 {} us",
            commits.count,
            stats.committed,
            stats.committed as f64 / commits.count.max(1) as f64,
            commits.p50 / 1_000,
            commits.p99 / 1_000,
        );
    }
    drop(redb);

    match on_path("redis-server") {
        None => eprintln!(
            "decide/email/wasm/redis: not run: no redis-server on PATH \
             (Debian: apt-get install redis-server)"
        ),
        Some(program) => {
            // The gateway first, so that it stops before its server does.
            let mut redis: Option<(Gateway, RedisServer)> = None;
            group.bench_function("redis", |b| {
                let (gateway, _) = redis.get_or_insert_with(|| {
                    // No snapshots; the append-only file on, synced as configured.
                    let server = RedisServer::start_program(
                        &program,
                        &["--appendonly", "yes", "--appendfsync", REDIS_APPENDFSYNC],
                    );
                    let store = RedisStore::open(&format!("{}?prefix=bench", server.url()))
                        .unwrap_or_else(|e| panic!("connects to {}: {e}", server.url()));
                    (
                        start_gateway(&runtime, Arc::new(store), serve_workers(32)),
                        server,
                    )
                });
                b.iter_custom(|iters| concurrently(gateway, iters))
            });
        }
    }
    group.finish();
}

/// `program` found in a directory of `$PATH`.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
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
    // A fresh instance with the policy loaded: what a worker costs at start-up,
    // at each reload, and after a trap; on demand (the library's default) and
    // from a pool (serve's).
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let pooled = Runtime::new(
        &ComponentSource::Builtin,
        RuntimeConfig {
            instance_pool: Some(16),
            ..RuntimeConfig::default()
        },
    )
    .expect("component loads");
    for (name, runtime) in [("on-demand", &runtime), ("pooled", &pooled)] {
        c.bench_function(&format!("component/instantiate/{name}"), |b| {
            b.iter(|| {
                runtime
                    .worker(store.clone(), SMARTLEAD)
                    .expect("instantiates")
            })
        });
    }

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

/// One email charged to `account` on `store`, message `i` (an idempotency key
/// each), as the policy charges it.
fn charge(store: &RedbStore, account: &str, i: u64) {
    let key = format!("msg/0/{i}");
    let once = OnceKey {
        key: &key,
        fingerprint: i,
        expires_at: i64::MAX,
    };
    let add = CounterAdd {
        scope: account,
        guard: None,
        name: "email/0",
        amount: 1,
        limit: None,
        once: Some(once),
        expires_at: None,
        now: T0,
    };
    store.counter_add(add).expect("adds");
}

/// The disk under the store against the store's commit, side by side:
/// `store/commit/fdatasync` writes 4 KiB into a file written before (as the
/// journal reuses its file) and syncs it; `fdatasync-append` appends 4 KiB to a
/// growing file and syncs it (the size must be synced too); `redb` is one
/// charge (a `counter_add` with an idempotency key) and the `persist` that makes
/// it durable, the commit every allowed charge waits for. A last pass takes the
/// three in turn, so that the disk's noise falls on all of them alike, and
/// prints their p50 and p99, the ratio the issue's target is stated in (commit
/// p50 at most twice the sync's).
fn commits(c: &mut Criterion) {
    use std::os::unix::fs::FileExt as _;

    let dir = tempfile::tempdir().expect("temp dir");
    const BLOCK: usize = 4096;
    const BLOCKS: u64 = 256;
    let block = vec![0x5a_u8; BLOCK];
    let reused = std::fs::File::create(dir.path().join("reused.bin")).expect("creates");
    reused
        .write_all_at(&vec![0u8; BLOCK * BLOCKS as usize], 0)
        .expect("preallocates");
    reused.sync_all().expect("syncs");
    let mut n = 0u64;
    let mut sync_reused = || {
        n += 1;
        reused
            .write_all_at(&block, (n % BLOCKS) * BLOCK as u64)
            .expect("writes");
        reused.sync_data().expect("syncs");
    };
    let growing = std::fs::File::create(dir.path().join("growing.bin")).expect("creates");
    let mut end = 0u64;
    let mut sync_growing = || {
        growing.write_all_at(&block, end).expect("writes");
        end += BLOCK as u64;
        growing.sync_data().expect("syncs");
    };
    let store = RedbStore::open(&dir.path().join("commit.redb")).expect("opens");
    let mut i = 0u64;
    let mut commit = || {
        i += 1;
        charge(&store, "acme", i);
        store.persist().expect("durable");
    };

    let mut group = c.benchmark_group("store/commit");
    group.sample_size(20);
    group.bench_function("fdatasync", |b| b.iter(&mut sync_reused));
    group.bench_function("fdatasync-append", |b| b.iter(&mut sync_growing));
    group.bench_function("redb", |b| b.iter(&mut commit));
    group.finish();

    const ROUNDS: usize = 2_000;
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        let time = |f: &mut dyn FnMut()| {
            let started = Instant::now();
            f();
            started.elapsed()
        };
        times[0].push(time(&mut sync_reused));
        times[1].push(time(&mut sync_growing));
        times[2].push(time(&mut commit));
    }
    let at = |t: &mut Vec<Duration>, p: usize| {
        t.sort();
        t[(t.len() - 1) * p / 100]
    };
    let [reused_t, growing_t, commit_t] = &mut times;
    let (sync50, commit50) = (at(reused_t, 50), at(commit_t, 50));
    println!(
        "store/commit side by side, {ROUNDS} rounds: fdatasync 4 KiB p50 {:?} p99 {:?}; \
         appending p50 {:?} p99 {:?}; redb commit of one charge p50 {:?} p99 {:?}; \
         commit p50 / fdatasync p50 = {:.2}",
        sync50,
        at(reused_t, 99),
        at(growing_t, 50),
        at(growing_t, 99),
        commit50,
        at(commit_t, 99),
        commit50.as_secs_f64() / sync50.as_secs_f64(),
    );
}

/// Recovery after a crash with the most journal the store keeps: a store that
/// applied and synced `records` charges since its last checkpoint is copied
/// while open (what a SIGKILL leaves; the page cache holds every write), and
/// the copy is opened: redb's repair of an unclean file, then the journal's
/// replay. Printed, not sampled by criterion: each opening consumes its copy.
fn recovery(_: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("recover.redb");
    // One below the default checkpoint, so that none is taken.
    let records = 39_999u64;
    let store = RedbStore::open(&path).expect("opens");
    let applying = Instant::now();
    for i in 0..records {
        charge(&store, &format!("acct{}", i % 100), i);
        if i % 64 == 63 {
            store.persist().expect("durable");
        }
    }
    store.persist().expect("durable");
    let applied = applying.elapsed();
    let journal = creditgate::store::journal_path(&path);
    let mut times = Vec::new();
    for k in 0..5 {
        let copy = dir.path().join(format!("copy{k}.redb"));
        std::fs::copy(&path, &copy).expect("copies");
        std::fs::copy(&journal, creditgate::store::journal_path(&copy)).expect("copies");
        let started = Instant::now();
        let reopened = RedbStore::open(&copy).expect("recovers");
        times.push(started.elapsed());
        drop(reopened);
    }
    times.sort();
    println!(
        "store/recover: opening a copy taken under way, {records} charges in the journal \
         (applied and synced in {applied:?} to begin with; the journal file is {} bytes): \
         p50 {:?}, max {:?} over {} copies",
        std::fs::metadata(&journal).map_or(0, |m| m.len()),
        times[times.len() / 2],
        times[times.len() - 1],
        times.len(),
    );
}

criterion_group!(benches, decisions, gateways, loading, commits, recovery);
criterion_main!(benches);
