//! What a run measured: latency histograms per kind of request, replies by
//! action, errors; merged across connections and printed as a table or JSON.
//! With `--spawn`, also serve's start-up and the reloads timed after the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::disk::SyncCost;
use crate::spawn::{CommitCounters, Startup};

/// Which decision a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Postfix at `RCPT`: a check, nothing charged.
    Rcpt,
    /// Postfix at `END-OF-MESSAGE`: the charge (its retries included).
    EndOfMessage,
    /// HTTP `POST /v1/decide/email`: a charge.
    Decide,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Rcpt => "rcpt",
            Stage::EndOfMessage => "end-of-message",
            Stage::Decide => "decide/email",
        }
    }
}

/// Latencies are recorded in nanoseconds, from 1 ns to 60 s, to 3 significant
/// digits.
fn histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts: no input reaches this.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// One connection's measurements, merged into the run's at the end.
#[derive(Debug, Default)]
pub struct Stats {
    latency: BTreeMap<Stage, Histogram<u64>>,
    replies: BTreeMap<String, u64>,
    pub messages: u64,
    pub retries: u64,
    pub errors: u64,
    /// The first few error messages, for the report.
    pub error_samples: Vec<String>,
}

impl Stats {
    /// One answered request: how long it took and the class of its reply (the
    /// action's first word, such as `DUNNO` or `DEFER`).
    pub fn record(&mut self, stage: Stage, latency: Duration, reply: &str) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.latency
            .entry(stage)
            .or_insert_with(histogram)
            .saturating_record(ns);
        if let Some(count) = self.replies.get_mut(reply) {
            *count += 1;
        } else {
            self.replies.insert(reply.to_owned(), 1);
        }
    }

    pub fn error(&mut self, what: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(what);
        }
    }

    pub fn merge(&mut self, other: Stats) {
        for (stage, h) in other.latency {
            // Same bounds on both sides, so adding cannot fail.
            let _ = self.latency.entry(stage).or_insert_with(histogram).add(&h);
        }
        for (reply, n) in other.replies {
            *self.replies.entry(reply).or_default() += n;
        }
        self.messages += other.messages;
        self.retries += other.retries;
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < 5 {
                self.error_samples.push(e);
            }
        }
    }

    fn all(&self) -> Histogram<u64> {
        let mut all = histogram();
        for h in self.latency.values() {
            let _ = all.add(h);
        }
        all
    }

    pub fn decisions(&self) -> u64 {
        self.latency.values().map(Histogram::len).sum()
    }
}

/// How the run was set up, for the report's first line.
#[derive(Debug)]
pub struct RunInfo {
    /// The workload (`mix` or `end-of-message`).
    pub state: &'static str,
    pub protocol: &'static str,
    pub target: String,
    pub connections: usize,
    pub threads: usize,
    pub elapsed: Duration,
    /// CPU time this generator used during the run.
    pub generator_cpu: Option<Duration>,
    /// What `--spawn` measured of serve itself.
    pub serve: Option<ServeFigures>,
    /// The disk's own cost of a durable write, measured before the load.
    pub fdatasync: Option<SyncCost>,
    /// The same workload on a peer, after serve's run (`--peer`).
    pub peer: Option<PeerRun>,
}

/// The same workload on another policy server, in the same run.
#[derive(Debug)]
pub struct PeerRun {
    pub name: &'static str,
    pub elapsed: Duration,
    pub stats: Stats,
    /// CPU time the peer used during its run, all its processes.
    pub cpu: Option<Duration>,
}

/// Serve's start-up and its reloads, as `--spawn` measured them.
#[derive(Debug)]
pub struct ServeFigures {
    /// CPU time serve used during the run, all threads.
    pub cpu: Option<Duration>,
    pub startup: Startup,
    /// Each `POST /v1/admin/reload`, in order, when they all succeeded.
    pub reloads: Result<Vec<Duration>, String>,
    /// Durable commits during the load, and the decisions they covered (serve's
    /// `/metrics` before and after).
    pub commits: Option<CommitCounters>,
    /// The median durable commit, from serve's own report when it stopped.
    pub commit_p50: Option<Duration>,
}

/// The median of the `commit (per batch)` row of serve's report (`name count
/// p50 p99 ...`, each time a number and a unit).
pub fn commit_p50(report: &str) -> Option<Duration> {
    let row = report
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("commit (per batch)"))?;
    let mut words = row.split_whitespace().skip(1);
    let (value, unit) = (words.next()?.parse::<f64>().ok()?, words.next()?);
    let scale = match unit {
        "ns" => 1e-9,
        "µs" | "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(value * scale).ok()
}

impl ServeFigures {
    /// The median (the lower one for an even count) and the largest reload.
    fn reload_p50_max(&self) -> Option<(Duration, Duration)> {
        let mut times = self.reloads.as_ref().ok()?.clone();
        times.sort();
        Some((*times.get((times.len().max(1) - 1) / 2)?, *times.last()?))
    }
}

/// `1.23 ms`, `456 µs`, `789 ns`: three significant digits or so.
fn human(ns: u64) -> String {
    let ns = ns as f64;
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The report as text: throughput, a latency table, replies by action, errors.
pub fn text(info: &RunInfo, stats: &Stats) -> String {
    let decisions = stats.decisions();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "creditgate-load: {} traffic, {} connections over {} to {} for {:.2} s ({} generator thread{})",
        info.state,
        info.connections,
        info.protocol,
        info.target,
        info.elapsed.as_secs_f64(),
        info.threads,
        if info.threads == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "decisions      {decisions:>10}   {:.0}/s",
        per_second(decisions, info.elapsed)
    );
    let _ = writeln!(
        out,
        "messages       {:>10}   {} charges retried with the same instance",
        stats.messages, stats.retries
    );
    let _ = writeln!(out, "errors         {:>10}", stats.errors);
    for e in &stats.error_samples {
        let _ = writeln!(out, "  {e}");
    }
    let _ = writeln!(
        out,
        "\n{:<16}{:>10}{:>11}{:>11}{:>11}{:>11}",
        "latency", "count", "p50", "p99", "p99.9", "max"
    );
    let all = stats.all();
    let rows = stats
        .latency
        .iter()
        .map(|(stage, h)| (stage.name(), h))
        .chain([("all", &all)]);
    for (name, h) in rows {
        let _ = writeln!(
            out,
            "{name:<16}{:>10}{:>11}{:>11}{:>11}{:>11}",
            h.len(),
            human(h.value_at_quantile(0.5)),
            human(h.value_at_quantile(0.99)),
            human(h.value_at_quantile(0.999)),
            human(h.max())
        );
    }
    let per_decision =
        |cpu: Duration| human((cpu.as_nanos() as f64 / stats.decisions().max(1) as f64) as u64);
    if let Some(cpu) = info.serve.as_ref().and_then(|s| s.cpu) {
        let _ = writeln!(
            out,
            "\nserve CPU      {:>10}   a decision ({:.2} cores over the run)",
            per_decision(cpu),
            cpu.as_secs_f64() / info.elapsed.as_secs_f64()
        );
    }
    durability(&mut out, info, stats);
    if let Some(cpu) = info.generator_cpu {
        let _ = writeln!(
            out,
            "generator CPU  {:>10}   a decision ({:.2} cores)",
            per_decision(cpu),
            cpu.as_secs_f64() / info.elapsed.as_secs_f64()
        );
    }
    if let Some(serve) = &info.serve {
        let _ = writeln!(
            out,
            "\nserve start-up {:>10}   spawn to the first answered policy request; {}",
            human(nanos(serve.startup.elapsed)),
            serve.startup.cache.describe()
        );
        match (&serve.reloads, serve.reload_p50_max()) {
            (Ok(times), Some((p50, max))) => {
                let _ = writeln!(
                    out,
                    "reloads        {:>10}   p50 {}, max {} (POST /v1/admin/reload, one at a time after the run)",
                    times.len(),
                    human(nanos(p50)),
                    human(nanos(max))
                );
            }
            (Ok(_), None) => {}
            (Err(e), _) => {
                let _ = writeln!(out, "reloads            failed   {e}");
            }
        }
    }
    if let Some(peer) = &info.peer {
        peer_text(&mut out, info, stats, peer);
    }
    let _ = writeln!(out, "\nreplies");
    let width = stats
        .replies
        .keys()
        .map(|r| r.len() + 2)
        .max()
        .unwrap_or(0)
        .max(24);
    for (reply, n) in &stats.replies {
        let share = 100.0 * *n as f64 / decisions.max(1) as f64;
        let _ = writeln!(out, "  {reply:<width$}{n:>10}  {share:5.1}%");
    }
    out
}

/// The disk's fdatasync beside serve's commit, and what each commit covered.
fn durability(out: &mut String, info: &RunInfo, stats: &Stats) {
    let disk = info.fdatasync.as_ref();
    if let Some(d) = disk {
        let _ = writeln!(
            out,
            "disk fdatasync {:>10}   p50 (p99 {}): 4 KiB pwrite + fdatasync beside the store, {} probes before the load",
            human(nanos(d.p50)),
            human(nanos(d.p99)),
            d.probes
        );
    }
    let Some(serve) = &info.serve else {
        return;
    };
    if let Some(p50) = serve.commit_p50 {
        let ratio = disk.map_or(String::new(), |d| {
            format!(
                ": {:.1}x the disk's fdatasync",
                p50.as_secs_f64() / d.p50.as_secs_f64().max(1e-9)
            )
        });
        let _ = writeln!(
            out,
            "serve commit   {:>10}   p50 (serve's report, `commit (per batch)`){ratio}",
            human(nanos(p50))
        );
    }
    if let Some(c) = serve.commits.filter(|c| c.commits > 0) {
        let _ = writeln!(
            out,
            "commits        {:>10}   {:.0}/s, {:.1} decisions per commit ({} of the run's {} decisions)",
            c.commits,
            per_second(c.commits, info.elapsed),
            c.decisions as f64 / c.commits as f64,
            c.decisions,
            stats.decisions()
        );
    }
}

/// The peer's throughput and latency beside serve's.
fn peer_text(out: &mut String, info: &RunInfo, stats: &Stats, peer: &PeerRun) {
    let ours = per_second(stats.decisions(), info.elapsed);
    let theirs = per_second(peer.stats.decisions(), peer.elapsed);
    let all = peer.stats.all();
    let _ = writeln!(
        out,
        "\npeer {:<10}{:>10}   {theirs:.0}/s over {:.2} s, p50 {}, p99 {}, {} errors (same workload, after serve's run)",
        peer.name,
        peer.stats.decisions(),
        peer.elapsed.as_secs_f64(),
        human(all.value_at_quantile(0.5)),
        human(all.value_at_quantile(0.99)),
        peer.stats.errors,
    );
    if let Some(cpu) = peer.cpu {
        let _ = writeln!(
            out,
            "peer CPU       {:>10}   a decision ({:.2} cores)",
            human((cpu.as_nanos() as f64 / peer.stats.decisions().max(1) as f64) as u64),
            cpu.as_secs_f64() / peer.elapsed.as_secs_f64().max(1e-9)
        );
    }
    let _ = writeln!(
        out,
        "creditgate / {} {:.2}x decisions per second",
        peer.name,
        ours / theirs.max(1e-9)
    );
    for (reply, n) in &peer.stats.replies {
        let _ = writeln!(out, "  {reply:<24}{n:>10}");
    }
}

/// The report as one JSON object; latencies in microseconds.
pub fn json(info: &RunInfo, stats: &Stats) -> serde_json::Value {
    let us = |ns: u64| ns as f64 / 1e3;
    let latency = |h: &Histogram<u64>| {
        serde_json::json!({
            "count": h.len(),
            "p50_us": us(h.value_at_quantile(0.5)),
            "p99_us": us(h.value_at_quantile(0.99)),
            "p99_9_us": us(h.value_at_quantile(0.999)),
            "max_us": us(h.max()),
        })
    };
    let by_stage: serde_json::Map<String, serde_json::Value> = stats
        .latency
        .iter()
        .map(|(stage, h)| (stage.name().to_owned(), latency(h)))
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let serve = info.serve.as_ref().map(|serve| {
        let reloads = match (&serve.reloads, serve.reload_p50_max()) {
            (Ok(times), Some((p50, max))) => serde_json::json!({
                "count": times.len(),
                "p50_ms": ms(p50),
                "max_ms": ms(max),
                "all_ms": times.iter().map(|&t| ms(t)).collect::<Vec<_>>(),
            }),
            (Ok(_), None) => serde_json::json!({"count": 0}),
            (Err(e), _) => serde_json::json!({"error": e}),
        };
        serde_json::json!({
            "commit_p50_us": serve.commit_p50.map(|d| d.as_secs_f64() * 1e6),
            "commits": serve.commits.map(|c| c.commits),
            "committed_decisions": serve.commits.map(|c| c.decisions),
            "commits_per_second": serve.commits.map(|c| per_second(c.commits, info.elapsed)),
            "cpu_seconds": serve.cpu.map(|c| c.as_secs_f64()),
            "startup_ms": ms(serve.startup.elapsed),
            "component_cache": serve.startup.cache.name(),
            "reloads": reloads,
        })
    });
    let fdatasync = info.fdatasync.map(|d| {
        serde_json::json!({
            "probes": d.probes,
            "p50_us": d.p50.as_secs_f64() * 1e6,
            "p99_us": d.p99.as_secs_f64() * 1e6,
        })
    });
    let peer = info.peer.as_ref().map(|p| {
        serde_json::json!({
            "name": p.name,
            "seconds": p.elapsed.as_secs_f64(),
            "decisions": p.stats.decisions(),
            "decisions_per_second": per_second(p.stats.decisions(), p.elapsed),
            "errors": p.stats.errors,
            "latency": latency(&p.stats.all()),
            "replies": p.stats.replies,
            "cpu_seconds": p.cpu.map(|c| c.as_secs_f64()),
        })
    });
    serde_json::json!({
        "state": info.state,
        "protocol": info.protocol,
        "target": info.target,
        "connections": info.connections,
        "threads": info.threads,
        "seconds": info.elapsed.as_secs_f64(),
        "decisions": stats.decisions(),
        "decisions_per_second": per_second(stats.decisions(), info.elapsed),
        "messages": stats.messages,
        "retries": stats.retries,
        "errors": stats.errors,
        "latency": latency(&stats.all()),
        "latency_by_stage": by_stage,
        "replies": stats.replies,
        "generator_cpu_seconds": info.generator_cpu.map(|c| c.as_secs_f64()),
        "serve": serve,
        "fdatasync": fdatasync,
        "peer": peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_stats_count_every_decision_and_reply() {
        let mut a = Stats::default();
        a.record(Stage::Rcpt, Duration::from_micros(100), "DUNNO");
        a.record(Stage::EndOfMessage, Duration::from_micros(300), "DEFER");
        let mut b = Stats::default();
        b.record(Stage::Rcpt, Duration::from_micros(200), "DUNNO");
        b.error("reset".into());
        a.merge(b);
        assert_eq!(a.decisions(), 3);
        assert_eq!(a.replies["DUNNO"], 2);
        assert_eq!(a.errors, 1);
        let info = RunInfo {
            state: "mix",
            protocol: "postfix",
            target: "127.0.0.1:1".into(),
            connections: 2,
            threads: 1,
            elapsed: Duration::from_secs(1),
            generator_cpu: None,
            serve: None,
            fdatasync: None,
            peer: None,
        };
        let json = json(&info, &a);
        assert_eq!(json["decisions"], 3);
        assert_eq!(json["replies"]["DEFER"], 1);
        let text = text(&info, &a);
        assert!(text.contains("decisions               3   3/s"), "{text}");
        assert!(text.contains("end-of-message"), "{text}");
    }

    #[test]
    fn serve_figures_report_start_up_and_reload_percentiles() {
        use crate::spawn::Cache;
        let ms = Duration::from_millis;
        let info = RunInfo {
            state: "mix",
            protocol: "postfix",
            target: "127.0.0.1:1".into(),
            connections: 1,
            threads: 1,
            elapsed: Duration::from_secs(2),
            generator_cpu: Some(ms(100)),
            serve: Some(ServeFigures {
                cpu: Some(ms(3000)),
                startup: Startup {
                    elapsed: ms(150),
                    cache: Cache::Warm,
                },
                reloads: Ok(vec![ms(9), ms(3), ms(5), ms(4)]),
                commits: None,
                commit_p50: None,
            }),
            fdatasync: None,
            peer: None,
        };
        let json = json(&info, &Stats::default());
        assert_eq!(json["serve"]["startup_ms"], 150.0);
        assert_eq!(json["serve"]["component_cache"], "warm");
        assert_eq!(json["serve"]["reloads"]["count"], 4);
        assert_eq!(json["serve"]["reloads"]["p50_ms"], 4.0);
        assert_eq!(json["serve"]["reloads"]["max_ms"], 9.0);
        assert_eq!(json["serve"]["cpu_seconds"], 3.0);
        assert_eq!(json["generator_cpu_seconds"], 0.1);
        let text = text(&info, &Stats::default());
        assert!(text.contains("serve start-up  150.00 ms"), "{text}");
        // No decisions: the CPU is reported over one, and in cores over the run.
        assert!(
            text.contains("serve CPU          3.00 s   a decision (1.50 cores"),
            "{text}"
        );
        assert!(
            text.contains("generator CPU   100.00 ms   a decision (0.05 cores)"),
            "{text}"
        );
        assert!(text.contains("p50 4.00 ms, max 9.00 ms"), "{text}");
    }

    #[test]
    fn the_commit_row_of_serves_report_is_read() {
        let report = "\
decision latency          count        p50        p99      p99.9        max
where the time went       count        p50        p99      p99.9        max
guest                     80000    12.3 µs    40.1 µs    90.0 µs     1.20 ms
commit wait               80000    1.10 ms    3.20 ms    5.00 ms     9.00 ms
commit (per batch)         4000    2.65 ms    6.00 ms    9.00 ms    12.00 ms
";
        assert_eq!(commit_p50(report), Some(Duration::from_micros(2650)));
        assert_eq!(commit_p50("decision latency\n"), None);
        let us = "commit (per batch)  10   310.5 µs   1.00 ms   1.00 ms   1.00 ms";
        assert_eq!(commit_p50(us), Some(Duration::from_nanos(310_500)));
    }

    #[test]
    fn durability_is_reported_beside_the_disk_and_the_peer_beside_serve() {
        use crate::spawn::Cache;
        let ms = Duration::from_millis;
        let mut stats = Stats::default();
        for _ in 0..400 {
            stats.record(Stage::EndOfMessage, ms(2), "DUNNO");
        }
        let mut theirs = Stats::default();
        for _ in 0..100 {
            theirs.record(Stage::EndOfMessage, ms(8), "DUNNO");
        }
        let info = RunInfo {
            state: "end-of-message",
            protocol: "postfix",
            target: "127.0.0.1:1".into(),
            connections: 64,
            threads: 1,
            elapsed: Duration::from_secs(2),
            generator_cpu: None,
            serve: Some(ServeFigures {
                cpu: Some(ms(40)),
                startup: Startup {
                    elapsed: ms(150),
                    cache: Cache::Warm,
                },
                reloads: Ok(Vec::new()),
                commits: Some(CommitCounters {
                    commits: 20,
                    decisions: 400,
                }),
                commit_p50: Some(Duration::from_micros(320)),
            }),
            fdatasync: Some(SyncCost {
                probes: 1000,
                p50: Duration::from_micros(160),
                p99: ms(1),
            }),
            peer: Some(PeerRun {
                name: "postfwd2",
                elapsed: Duration::from_secs(2),
                stats: theirs,
                cpu: None,
            }),
        };
        let text = text(&info, &stats);
        for line in [
            "end-of-message traffic, 64 connections",
            "disk fdatasync   160.0 µs   p50 (p99 1.00 ms)",
            "serve commit     320.0 µs   p50 (serve's report, `commit (per batch)`): 2.0x the disk's fdatasync",
            "commits                20   10/s, 20.0 decisions per commit",
            "serve CPU        100.0 µs   a decision",
            "creditgate / postfwd2 4.00x decisions per second",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        let json = json(&info, &stats);
        assert_eq!(json["state"], "end-of-message");
        assert_eq!(json["fdatasync"]["p50_us"], 160.0);
        assert_eq!(json["serve"]["commit_p50_us"], 320.0);
        assert_eq!(json["serve"]["commits"], 20);
        assert_eq!(json["peer"]["decisions"], 100);
        assert_eq!(json["peer"]["decisions_per_second"], 50.0);
    }

    #[test]
    fn human_units() {
        for (nanos, text) in [
            (789, "789 ns"),
            (45_600, "45.6 µs"),
            (1_234_000, "1.23 ms"),
            (2_500_000_000, "2.50 s"),
        ] {
            assert_eq!(human(nanos), text, "{nanos} ns");
        }
    }
}
