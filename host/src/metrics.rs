//! Decision latency, measured by the host around every call into the guest.
//!
//! Each operation has an HDR histogram of nanoseconds (3 significant digits), split
//! into the whole decision and the part spent in the store's primitives, so that a
//! slow decision can be told apart as guest work or storage work.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::bindings::Reason;
use crate::request::Op;

/// Longest latency a histogram tracks; longer ones are clamped to it.
const MAX_TRACKED_NANOS: u64 = 60_000_000_000;

/// One latency distribution: an HDR histogram of nanoseconds (3 significant
/// digits) and the exact sum, which Prometheus histograms also expose.
///
/// The histogram is made on the first value: one spans 221 KiB, and a worker
/// holds three per operation, most of which never see a value. Allocating them
/// all (and unmapping them) was most of the cost of a fresh worker.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    histogram: Option<Box<Histogram<u64>>>,
    sum_nanos: u128,
}

fn new_histogram() -> Box<Histogram<u64>> {
    Box::new(Histogram::new_with_bounds(1, MAX_TRACKED_NANOS, 3).expect("static bounds are valid"))
}

impl Timing {
    pub fn record(&mut self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.histogram
            .get_or_insert_with(new_histogram)
            .saturating_record(nanos.clamp(1, MAX_TRACKED_NANOS));
        self.sum_nanos += u128::from(nanos);
    }

    pub fn merge(&mut self, other: &Timing) {
        if let Some(theirs) = &other.histogram {
            // Same bounds on both sides: `add` cannot fail.
            let _ = self
                .histogram
                .get_or_insert_with(new_histogram)
                .add(&**theirs);
        }
        self.sum_nanos += other.sum_nanos;
    }

    pub fn summary(&self) -> Summary {
        match &self.histogram {
            Some(h) => summarize(h),
            None => Summary {
                count: 0,
                p50: 0,
                p99: 0,
                p999: 0,
                max: 0,
            },
        }
    }

    /// The lines of a Prometheus histogram named `name` with `labels` (already
    /// rendered as `k="v",` pairs, possibly empty), in seconds.
    fn prometheus(&self, out: &mut String, name: &str, labels: &str) {
        // One pass over the recorded values, not one count per bucket: a scrape
        // must stay cheap however many values the histogram holds.
        let mut counts = [0u64; BUCKETS.len()];
        let recorded = self.histogram.iter().flat_map(|h| h.iter_recorded());
        for v in recorded {
            let seconds = v.value_iterated_to() as f64 / 1e9;
            let first = BUCKETS.partition_point(|bound| *bound < seconds);
            if let Some(c) = counts.get_mut(first) {
                *c += v.count_since_last_iteration();
            }
        }
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.histogram.as_ref().map_or(0, |h| h.len());
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let labels = labels.trim_end_matches(',');
        let sum = self.sum_nanos as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Upper bounds of the Prometheus histogram buckets, in seconds: from the cost of a
/// decision in memory (microseconds) to a slow disk sync (a second).
const BUCKETS: [f64; 18] = [
    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
    0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Latency histograms of one worker, or merged from many.
#[derive(Debug, Clone)]
pub struct Latencies {
    total: Vec<Timing>,
    store: Vec<Timing>,
    /// `total` less `store`, per decision: the component's own work.
    guest: Vec<Timing>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            total: vec![Timing::default(); Op::ALL.len()],
            store: vec![Timing::default(); Op::ALL.len()],
            guest: vec![Timing::default(); Op::ALL.len()],
        }
    }
}

/// Percentiles of one histogram, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latencies {
    /// Records one decision: `total` around the guest call, and `store` inside host
    /// imports when it was timed (one call in
    /// [`SPLIT_EVERY`](crate::runtime::SPLIT_EVERY): the split is a sample, which
    /// spares every other call two clock reads per store call).
    pub fn record(&mut self, op: Op, total: Duration, store: Option<Duration>) {
        self.total[op.index()].record(total);
        if let Some(store) = store {
            self.store[op.index()].record(store);
            self.guest[op.index()].record(total.saturating_sub(store));
        }
    }

    pub fn merge(&mut self, other: &Latencies) {
        for (mine, theirs) in self
            .total
            .iter_mut()
            .zip(&other.total)
            .chain(self.store.iter_mut().zip(&other.store))
            .chain(self.guest.iter_mut().zip(&other.guest))
        {
            mine.merge(theirs);
        }
    }

    pub fn summary(&self, op: Op) -> Summary {
        self.total[op.index()].summary()
    }

    pub fn store_summary(&self, op: Op) -> Summary {
        self.store[op.index()].summary()
    }

    /// All operations together.
    pub fn overall(&self) -> Summary {
        self.all(&self.total).summary()
    }

    /// One of the per-operation families merged over every operation.
    fn all(&self, family: &[Timing]) -> Timing {
        let mut all = Timing::default();
        family.iter().for_each(|t| all.merge(t));
        all
    }

    /// A table of every operation that ran, for a terminal.
    pub fn report(&self) -> String {
        let mut out = header("decision latency");
        let rows = Op::ALL
            .iter()
            .map(|op| (op.name(), self.summary(*op)))
            .chain([("all", self.overall())]);
        for (name, s) in rows.filter(|(_, s)| s.count > 0) {
            row(&mut out, name, s);
        }
        out
    }
}

fn header(title: &str) -> String {
    format!(
        "{title:<22} {:>8} {:>10} {:>10} {:>10} {:>10}\n",
        "count", "p50", "p99", "p99.9", "max"
    )
}

fn row(out: &mut String, name: &str, s: Summary) {
    let _ = writeln!(
        out,
        "{name:<22} {:>8} {:>10} {:>10} {:>10} {:>10}",
        s.count,
        human(s.p50),
        human(s.p99),
        human(s.p999),
        human(s.max)
    );
}

/// How a decision ended, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    /// No decision: a guest error, trap or timeout, or a failed commit.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Allow, Outcome::Deny, Outcome::Error];

    fn name(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
        }
    }
}

/// Everything a gateway has measured since it started: for `/metrics` and for
/// the report `serve` prints when it stops.
///
/// A decision's latency is split three ways: time in the guest (the component's
/// own work), time in the store (the host imports it called), and time waiting
/// for the group commit that made it durable.
#[derive(Debug, Clone, Default)]
pub struct GatewayStats {
    pub latencies: Latencies,
    /// Per operation, per [`Outcome`].
    outcomes: Vec<[u64; 3]>,
    /// One `persist` each: the durable commit a batch of decisions shares.
    pub commit: Timing,
    /// Per decision: from its answer being made to its commit being durable.
    pub commit_wait: Timing,
    /// Decisions released by the commits (their ratio to the commits is the
    /// mean group size).
    pub committed: u64,
    pub traps: u64,
    pub timeouts: u64,
    /// Requests denied because the account is on a plan the policy in force
    /// lacks that no forced reload here dropped (another gateway moved it).
    pub stranded_denials: u64,
    /// Store batches dropped whole because a decision in them got no answer:
    /// its writes went with the batch, and the others were decided again.
    pub abandoned_batches: u64,
    pub reloads: u64,
    pub reloads_refused: u64,
    /// Instances a worker had to make for a new version while a request waited,
    /// because the reload could not prepare one for it.
    pub unprepared_switches: u64,
    pub version: u64,
    /// Requests let through in shadow mode that enforcement would have refused:
    /// lead credits, then email credits.
    shadow_refusals: [u64; 2],
}

impl GatewayStats {
    pub fn count(&mut self, op: Op, outcome: Outcome) {
        if self.outcomes.is_empty() {
            self.outcomes = vec![[0; 3]; Op::ALL.len()];
        }
        self.outcomes[op.index()][outcome as usize] += 1;
    }

    /// Counts a request let through in shadow mode that enforcement would have
    /// refused for `reason` (a lack of lead or email credits).
    pub fn count_shadow(&mut self, reason: Reason) {
        match reason {
            Reason::LeadCreditsExhausted => self.shadow_refusals[0] += 1,
            Reason::EmailCreditsExhausted => self.shadow_refusals[1] += 1,
            _ => {}
        }
    }

    /// Requests let through in shadow that enforcement would have refused for
    /// `reason`.
    pub fn shadow_refusals(&self, reason: Reason) -> u64 {
        match reason {
            Reason::LeadCreditsExhausted => self.shadow_refusals[0],
            Reason::EmailCreditsExhausted => self.shadow_refusals[1],
            _ => 0,
        }
    }

    pub fn outcomes(&self, op: Op, outcome: Outcome) -> u64 {
        self.outcomes
            .get(op.index())
            .map_or(0, |o| o[outcome as usize])
    }

    /// The shutdown report: the per-operation table, then the split of all
    /// decisions into guest, store and commit wait.
    pub fn report(&self) -> String {
        let mut out = self.latencies.report();
        if self.latencies.overall().count == 0 {
            return out;
        }
        out.push_str(&header("where the time went"));
        row(
            &mut out,
            "guest",
            self.latencies.all(&self.latencies.guest).summary(),
        );
        row(
            &mut out,
            "store",
            self.latencies.all(&self.latencies.store).summary(),
        );
        // The same split per operation: an RCPT check and an END-OF-MESSAGE
        // charge cost the guest and the store very differently.
        for (part, family) in [
            ("guest", &self.latencies.guest),
            ("store", &self.latencies.store),
        ] {
            for (op, timing) in Op::ALL.iter().zip(family) {
                let s = timing.summary();
                if s.count > 0 {
                    row(&mut out, &format!("  {part} {}", op.name()), s);
                }
            }
        }
        row(&mut out, "commit wait", self.commit_wait.summary());
        row(&mut out, "commit (per batch)", self.commit.summary());
        out
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP creditgate_decisions_total Decisions answered, by operation and outcome.\n",
        );
        out.push_str("# TYPE creditgate_decisions_total counter\n");
        for op in Op::ALL {
            for outcome in Outcome::ALL {
                let _ = writeln!(
                    out,
                    "creditgate_decisions_total{{op=\"{}\",outcome=\"{}\"}} {}",
                    op.name(),
                    outcome.name(),
                    self.outcomes(op, outcome)
                );
            }
        }
        let families: [(&str, &str, &Vec<Timing>); 3] = [
            (
                "creditgate_decision_duration_seconds",
                "Time of one decision in the guest and the store, before its commit.",
                &self.latencies.total,
            ),
            (
                "creditgate_decision_store_seconds",
                "Time one decision spent in store primitives.",
                &self.latencies.store,
            ),
            (
                "creditgate_decision_guest_seconds",
                "Time one decision spent in the guest's own code (sampled).",
                &self.latencies.guest,
            ),
        ];
        for (name, help, timings) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (op, timing) in Op::ALL.iter().zip(timings) {
                timing.prometheus(&mut out, name, &format!("op=\"{}\",", op.name()));
            }
        }
        for (name, help, timing) in [
            (
                "creditgate_commit_duration_seconds",
                "Time of one durable group commit.",
                &self.commit,
            ),
            (
                "creditgate_commit_wait_seconds",
                "Time a decision waited for the commit that made it durable.",
                &self.commit_wait,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            timing.prometheus(&mut out, name, "");
        }
        out.push_str("# HELP creditgate_decision_latency_seconds Decision latency quantiles, split into guest, store and commit wait.\n");
        out.push_str("# TYPE creditgate_decision_latency_seconds gauge\n");
        let split = [
            ("guest", self.latencies.all(&self.latencies.guest).summary()),
            ("store", self.latencies.all(&self.latencies.store).summary()),
            ("commit_wait", self.commit_wait.summary()),
        ];
        for (part, s) in split {
            for (q, v) in [
                ("0.5", s.p50),
                ("0.99", s.p99),
                ("0.999", s.p999),
                ("1", s.max),
            ] {
                let _ = writeln!(
                    out,
                    "creditgate_decision_latency_seconds{{part=\"{part}\",quantile=\"{q}\"}} {}",
                    v as f64 / 1e9
                );
            }
        }
        let shadow = [Reason::LeadCreditsExhausted, Reason::EmailCreditsExhausted].map(|reason| {
            let code = crate::wire::reason_code(reason);
            (format!("reason=\"{code}\""), self.shadow_refusals(reason))
        });
        let counters: [(&str, &str, Samples); 8] = [
            (
                "creditgate_commits_total",
                "Durable group commits.",
                vec![("", self.commit.summary().count)],
            ),
            (
                "creditgate_committed_decisions_total",
                "Decisions made durable by the group commits.",
                vec![("", self.committed)],
            ),
            (
                "creditgate_guest_traps_total",
                "Guest calls that trapped or ran out of time; each replaced its instance.",
                vec![
                    ("kind=\"trap\"", self.traps),
                    ("kind=\"timeout\"", self.timeouts),
                ],
            ),
            (
                "creditgate_stranded_denials_total",
                "Requests denied because the account is on a plan the policy in force lacks that no forced reload here dropped.",
                vec![("", self.stranded_denials)],
            ),
            (
                "creditgate_abandoned_batches_total",
                "Store batches dropped because a decision in them got no answer; the others in them were decided again.",
                vec![("", self.abandoned_batches)],
            ),
            (
                "creditgate_reloads_total",
                "Policy or component reloads, by result.",
                vec![
                    ("result=\"ok\"", self.reloads),
                    ("result=\"refused\"", self.reloads_refused),
                ],
            ),
            (
                "creditgate_unprepared_switches_total",
                "Workers that made their own instance of a new policy version while a request waited.",
                vec![("", self.unprepared_switches)],
            ),
            (
                "creditgate_shadow_refusals_total",
                "Requests allowed in shadow mode that enforcement would have refused, by reason.",
                shadow
                    .iter()
                    .map(|(labels, value)| (labels.as_str(), *value))
                    .collect(),
            ),
        ];
        for (name, help, samples) in counters {
            family(&mut out, name, help, "counter", samples);
        }
        out.push_str("# HELP creditgate_policy_version Version of the policy in force; grows by one per reload.\n");
        out.push_str("# TYPE creditgate_policy_version gauge\n");
        let _ = writeln!(out, "creditgate_policy_version {}", self.version);
        out
    }
}

fn summarize(h: &Histogram<u64>) -> Summary {
    Summary {
        count: h.len(),
        p50: h.value_at_quantile(0.50),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

/// Nanoseconds in the unit that keeps 3 significant figures readable.
pub fn human(nanos: u64) -> String {
    match nanos {
        n if n < 1_000 => format!("{n} ns"),
        n if n < 1_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.2} ms", n as f64 / 1e6),
        n => format!("{:.2} s", n as f64 / 1e9),
    }
}

/// A family's samples: `(labels, value)`, as [`family`] writes them.
type Samples<'a> = Vec<(&'a str, u64)>;

/// One metric family in Prometheus' text format: its `# HELP` and `# TYPE`
/// lines, then a sample per `(labels, value)` (`labels` as written between the
/// braces; empty for none).
fn family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = if labels.is_empty() {
            writeln!(out, "{name} {value}")
        } else {
            writeln!(out, "{name}{{{labels}}} {value}")
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_and_store_split_is_reported_per_operation() {
        let mut stats = GatewayStats::default();
        let us = Duration::from_micros;
        stats.latencies.record(Op::CheckEmail, us(10), Some(us(4)));
        stats
            .latencies
            .record(Op::ChargeEmail, us(50), Some(us(30)));
        // Not sampled for the split: counted in the totals only.
        stats.latencies.record(Op::ChargeEmail, us(60), None);

        let report = stats.report();
        let line = |name: &str| {
            report
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name:?} row in\n{report}"))
                .split_whitespace()
                .skip(name.split_whitespace().count())
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("  guest check_email"), "1 6.0 µs");
        assert_eq!(line("  store check_email"), "1 4.0 µs");
        assert_eq!(line("  guest charge_email"), "1 20.0 µs");
        assert!(!report.contains("guest usage"), "{report}");

        let exposition = stats.prometheus();
        assert!(
            exposition.contains("creditgate_decision_guest_seconds_count{op=\"check_email\"} 1\n"),
            "{exposition}"
        );
        assert!(
            exposition.contains("creditgate_decision_guest_seconds_count{op=\"charge_email\"} 1\n"),
            "{exposition}"
        );
    }
}
