//! Decision latency, measured by the host around every call into the guest.
//!
//! Each operation has an HDR histogram of nanoseconds (3 significant digits), split
//! into the whole decision and the part spent in the store's primitives, so that a
//! slow decision can be told apart as guest work or storage work.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::request::Op;

/// Longest latency a histogram tracks; longer ones are clamped to it.
const MAX_TRACKED_NANOS: u64 = 60_000_000_000;

/// Latency histograms of one worker, or merged from many.
#[derive(Debug, Clone)]
pub struct Latencies {
    total: Vec<Histogram<u64>>,
    store: Vec<Histogram<u64>>,
}

impl Default for Latencies {
    fn default() -> Self {
        let new = || {
            Op::ALL
                .iter()
                .map(|_| {
                    Histogram::new_with_bounds(1, MAX_TRACKED_NANOS, 3)
                        .expect("static bounds are valid")
                })
                .collect()
        };
        Self {
            total: new(),
            store: new(),
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
    /// Records one decision: `total` around the guest call, `store` inside host imports.
    pub fn record(&mut self, op: Op, total: Duration, store: Duration) {
        let nanos = |d: Duration| {
            u64::try_from(d.as_nanos())
                .unwrap_or(u64::MAX)
                .clamp(1, MAX_TRACKED_NANOS)
        };
        self.total[op.index()].saturating_record(nanos(total));
        self.store[op.index()].saturating_record(nanos(store));
    }

    pub fn merge(&mut self, other: &Latencies) {
        for (mine, theirs) in self
            .total
            .iter_mut()
            .zip(&other.total)
            .chain(self.store.iter_mut().zip(&other.store))
        {
            // Same bounds on both sides: `add` cannot fail.
            let _ = mine.add(theirs);
        }
    }

    pub fn summary(&self, op: Op) -> Summary {
        summarize(&self.total[op.index()])
    }

    pub fn store_summary(&self, op: Op) -> Summary {
        summarize(&self.store[op.index()])
    }

    /// All operations together.
    pub fn overall(&self) -> Summary {
        let mut all =
            Histogram::new_with_bounds(1, MAX_TRACKED_NANOS, 3).expect("static bounds are valid");
        for h in &self.total {
            let _ = all.add(h);
        }
        summarize(&all)
    }

    /// A table of every operation that ran, for a terminal.
    pub fn report(&self) -> String {
        let mut out = format!(
            "{:<22} {:>8} {:>10} {:>10} {:>10} {:>10}\n",
            "decision latency", "count", "p50", "p99", "p99.9", "max"
        );
        let rows = Op::ALL
            .iter()
            .map(|op| (op.name(), self.summary(*op)))
            .chain([("all", self.overall())]);
        for (name, s) in rows.filter(|(_, s)| s.count > 0) {
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
