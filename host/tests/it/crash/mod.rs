//! The crash test: `creditgate serve` on a redb file under concurrent load (HTTP
//! and the Postfix protocol), killed with SIGKILL at random moments, some of them
//! during start-up and recovery, and restarted on the same file, many times over.
//!
//! What it proves, against the oracle (the clients' log of every answer they got):
//!
//! - every crash image opens and passes redb's integrity check, and `serve` comes
//!   back on it, reporting the same usage the image holds;
//! - nothing acknowledged is lost: an acknowledged subscription, email charge
//!   (HTTP `message_id` or Postfix `instance`), lead addition or deletion is in
//!   every later image, and a message acknowledged once is answered "allowed,
//!   nothing charged" when retried, across any number of restarts;
//! - nothing is applied that no request asked for, and a request in flight at a
//!   kill (or answered with an error) is applied whole or not at all, and once:
//!   each account's email counter is exactly the sum of the costs of the message
//!   ids it remembers, and lies between the acknowledged charges and those plus
//!   the charges in flight; its lead count is exactly the number of distinct
//!   contacts its campaigns hold;
//! - no account ever has more credits used than its plan allows, except on the
//!   plan in shadow mode (issue 17.4), which is let through past its limits and
//!   never refused for credits, and whose charges are as exact as the others';
//! - an email alert is logged once per threshold reached, never for one not
//!   reached: a charge that crossed it is never kept without its alert.
//!
//! Each kill's image is copied before `serve` restarts (a SIGKILL loses no page
//! the process wrote, so the copy is the bytes the restart recovers) and checked
//! in this process with [`RedbStore`]. What was in flight at the kill is then known,
//! so the oracle is exact again before the load resumes. The end of the run stops
//! `serve` with SIGTERM and checks the file through the CLI as well.
//!
//! CI runs a few kills (`CREDITGATE_CRASH_KILLS`, default 12). The long run:
//!
//! ```text
//! CREDITGATE_CRASH_KILLS=200 cargo test --release -p creditgate --test it -- crash --nocapture
//! ```
//!
//! `CREDITGATE_CRASH_SEED` repeats a run's choices (operations, kill moments); the
//! interleaving of threads is the machine's.
//!
//! The test is a directory: this file drives it (kills, restarts, the report);
//! [`oracle`] holds what the clients know (plans, the log of every answer, the
//! control of the phases), [`traffic`] the clients and their requests,
//! [`server`] the files and the `serve` process, and [`checks`] the invariants
//! each crash image and the final file must hold.

mod checks;
mod oracle;
mod server;
mod traffic;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use checks::{Held, check_image, check_the_checker, check_through_the_cli, compare_usage};
use oracle::{AccountEntry, EndClients, Known, PLANS, Rng, Shared, Stats, lock};
use server::{Files, Serve, copy_image, image_label, kill, spawn, start, terminate};
use traffic::{api, client_loop, http};

/// Client threads, each with its own HTTP client and Postfix connection.
const CLIENTS: usize = 6;

/// Decision workers of the server: more than the cores, as in production.
const WORKERS: &str = "3";

/// Contacts each account's campaigns draw from: twice the small plan's lead
/// credits, so that campaigns share contacts and additions hit the limit.
const POOL: u64 = 16;

/// Bounds every wait on the server or the clients: a hang fails the test.
const WAIT: Duration = Duration::from_secs(90);

/// One request's bound. A client whose request fails stops until the next kill, so
/// a slow request is never retried while the server may still be deciding it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Retries of acknowledged messages per client in the last phase.
const SWEEP: usize = 60;

#[derive(Debug, Default)]
struct Report {
    kills_under_load: u64,
    kills_at_start: u64,
    kills_before_listening: u64,
    /// Email alerts reached and found logged, summed over the images.
    alerts_logged: u64,
    /// Cycles of accounts on the plan in shadow found past its email limit,
    /// summed over the images.
    shadow_over: u64,
    images: u64,
    settled_applied: u64,
    settled_not_applied: u64,
    restarts: Vec<Duration>,
    starts: Vec<Duration>,
    /// Opening a crash image: redb's recovery and the journal's replay.
    recoveries: Vec<Duration>,
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|e| panic!("{name}={text:?} is not a number: {e}")),
        Err(_) => default,
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

#[test]
fn serve_killed_at_random_moments_loses_and_oversells_nothing() {
    let kills = env_number("CREDITGATE_CRASH_KILLS", 12);
    let seed = env_number(
        "CREDITGATE_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    println!(
        "crash test: seed {seed} (CREDITGATE_CRASH_SEED={seed} repeats its choices), {kills} kills"
    );
    let began = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let files = Files::new(dir.path());
    let shared = Shared::new();
    let mut rng = Rng(seed);
    let mut report = Report::default();
    std::thread::scope(|scope| {
        let _end = EndClients(&shared);
        for id in 0..CLIENTS {
            let (shared, seed) = (&shared, rng.next());
            scope.spawn(move || client_loop(id, shared, seed));
        }
        run(&files, &shared, &mut rng, kills, &mut report);
    });

    let mut stats = Stats::default();
    for log in &shared.logs {
        stats.add(&lock(log).stats);
    }
    let accounts = lock(&shared.accounts).live.len();
    let violations = lock(&shared.violations).clone();
    let mut restarts = report.restarts.clone();
    restarts.sort();
    let mut starts = report.starts.clone();
    starts.sort();
    let mut recoveries = report.recoveries.clone();
    recoveries.sort();
    println!(
        "crash test: seed {seed}: {} kills ({} under load, {} during start-up, {} of those \
         before it listened), {} images checked, {:.1} s",
        report.kills_under_load + report.kills_at_start,
        report.kills_under_load,
        report.kills_at_start,
        report.kills_before_listening,
        report.images,
        began.elapsed().as_secs_f64()
    );
    println!(
        "crash test: {} acknowledged decisions ({} allowed; {} emails and {} contacts refused \
         for want of credits; {} retries of acknowledged messages charged nothing), {} checks, \
         {} accounts",
        stats.decisions,
        stats.allowed,
        stats.emails_exhausted,
        stats.leads_exhausted,
        stats.retries_free,
        stats.checks,
        accounts
    );
    println!(
        "crash test: {} requests in flight at kills, {} answered without a decision; settled \
         by the images: {} applied, {} not",
        stats.in_flight, stats.errors, report.settled_applied, report.settled_not_applied
    );
    println!(
        "crash test: restart latency (SIGKILL to listening again), {} restarts: p50 {:?}, \
         p90 {:?}, max {:?}; spawn to ready p50 {:?}",
        restarts.len(),
        percentile(&restarts, 50),
        percentile(&restarts, 90),
        percentile(&restarts, 100),
        percentile(&starts, 50),
    );
    println!(
        "crash test: recovery (opening a crash image: redb's repair and the journal's \
         replay), {} images: p50 {:?}, p99 {:?}, max {:?}",
        recoveries.len(),
        percentile(&recoveries, 50),
        percentile(&recoveries, 99),
        percentile(&recoveries, 100),
    );
    println!(
        "crash test: {} reached email alerts found logged once, summed over the images",
        report.alerts_logged
    );
    println!(
        "crash test: {} cycles of shadow accounts past their email limit, summed over the images",
        report.shadow_over
    );
    println!("crash test: {} violations", violations.len());
    assert!(
        report.shadow_over > 0,
        "no account on the plan in shadow went past its limit: the run tested nothing of it"
    );
    assert!(
        violations.is_empty(),
        "{} violations (seed {seed}):\n{}",
        violations.len(),
        violations
            .iter()
            .take(50)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The load reached what the test is about: allowed charges, and limits.
    assert!(stats.allowed > 0, "nothing was allowed: {stats:?}");
    assert!(
        stats.emails_exhausted > 0 && stats.leads_exhausted > 0,
        "no account ran out of credits: {stats:?}"
    );
}

/// The main thread: kills, restarts and checks.
fn run(files: &Files, shared: &Shared, rng: &mut Rng, kills: u64, report: &mut Report) {
    let first = start(files);
    report.starts.push(first.spawned.elapsed());
    // A few accounts to begin with; clients subscribe more as they go.
    {
        let probe = api(format!("http://{}", first.http));
        let mut accounts = lock(&shared.accounts);
        for (i, plan) in [0, 0, 2, 1].into_iter().enumerate() {
            let name = format!("seed{i}");
            let path = format!("/v1/accounts/{name}/subscription");
            let body = json!({ "plan": PLANS[plan].name });
            let answer = http(&probe, "POST", &path, Some(&body));
            assert!(
                matches!(answer, Ok((201, _))),
                "subscribing {name}: {answer:?}"
            );
            accounts.entries.insert(
                name.clone(),
                AccountEntry {
                    plan,
                    subscribed: Known::Yes,
                },
            );
            accounts.live.push(name);
        }
    }
    let mut serve = Some(first);
    let mut since = Since::default();
    for k in 1..=kills {
        let at_start = serve.is_none() && rng.chance(30);
        let running = match serve.take() {
            Some(running) => running,
            None if at_start => {
                // Somewhere between the exec and the first answer: before the store
                // opens, during its recovery, or while the workers load the policy.
                let child = spawn(files);
                let typical = percentile(&report.starts, 50).max(Duration::from_millis(20));
                let after = Duration::from_micros(rng.below(typical.as_micros() as u64 + 1));
                std::thread::sleep(after);
                since.last_kill = Some(kill(child));
                report.kills_at_start += 1;
                if !files.log_text().contains("listening on") {
                    report.kills_before_listening += 1;
                }
                since.images.push(copy_image(files, k));
                continue;
            }
            None => restart(files, shared, rng, report, &mut since),
        };
        shared.release(running.http, running.postfix, false);
        std::thread::sleep(Duration::from_millis(rng.between(100, 1200)));
        since.last_kill = Some(kill(running.process));
        report.kills_under_load += 1;
        shared.park_all();
        since.images.push(copy_image(files, k));
    }

    // The end: back up once more, every client retries acknowledged messages, then a
    // clean stop, and the file itself checked in-process and through the CLI.
    let running = restart(files, shared, rng, report, &mut since);
    shared.release(running.http, running.postfix, true);
    shared.wait_parked();
    terminate(running);
    let held = check_image(&files.store, "the final file", shared, report);
    check_through_the_cli(files, &held, rng, shared);
    check_the_checker(files, &held, shared);
}

/// What the kills since the last restart left: the images to check, when the
/// last kill was, and what the last image checked holds.
#[derive(Default)]
struct Since {
    images: Vec<PathBuf>,
    last_kill: Option<Instant>,
    held: BTreeMap<String, Held>,
}

/// Starts `serve` again after the last kill, checks the images taken since
/// (oldest first, each removed once checked), then the usage the restarted
/// server reports.
fn restart(
    files: &Files,
    shared: &Shared,
    rng: &mut Rng,
    report: &mut Report,
    since: &mut Since,
) -> Serve {
    let running = start(files);
    report.starts.push(running.spawned.elapsed());
    if let Some(killed) = since.last_kill {
        report.restarts.push(killed.elapsed());
    }
    for image in since.images.drain(..) {
        since.held = check_image(&image, &image_label(&image), shared, report);
        let _ = std::fs::remove_file(&image);
    }
    compare_usage(&running, &since.held, rng, shared);
    running
}
