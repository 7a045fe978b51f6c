//! CSV lead imports, `creditgate::import::import`, over a fresh `MemoryStore` with
//! a worker of the real policy component: the row splitter (quotes, CR/LF/CRLF,
//! blank lines, the 64 KiB row bound), the header and column lookup, the field
//! checks, and the counting of what the policy answers per batch.
//!
//! A CSV file is whatever a customer uploads. Whatever the bytes, an import must
//! not panic and must account for every row in exactly one outcome; it must list
//! the first invalid rows in line order, on data lines (the header is line 1);
//! it must charge one lead credit per row reported uploaded and never past the
//! plan's limit; and importing the same file again must charge nothing (every
//! contact is then already in the campaign, a duplicate, invalid, or still
//! refused for want of credits). A batch the component fails to decide (a trap
//! or a timeout on some input) is a finding too.
//!
//! Input layout: byte 0 picks the plan (bit 0: 2 lead credits or 2,000), whether
//! another campaign already holds `ann@example.com` (bit 1) and the batch size
//! (bits 2-4: 1 to 8 addresses, so batch boundaries fall everywhere); with bit 5,
//! each `~` of the file stands for 16 KiB of `x`, so that rows and headers past
//! the 64 KiB row limit fit in the fuzzer's 4 KiB inputs. The rest is the file.

#![no_main]

use std::sync::{Arc, LazyLock};

use creditgate::import::{INVALID_ROWS_SHOWN, ImportError, ImportOptions, ImportReport, import};
use creditgate::replay::parse_instant;
use creditgate::request::Request;
use creditgate::runtime::Worker;
use creditgate::store::MemoryStore;
use creditgate::wire::LimitJson;
use creditgate_fuzz::{POLICY, runtime};
use libfuzzer_sys::fuzz_target;

static NOW: LazyLock<i64> =
    LazyLock::new(|| parse_instant("2026-01-01T09:00:00Z").expect("a valid instant"));

fuzz_target!(|data: &[u8]| {
    let Some((&mode, csv)) = data.split_first() else {
        return;
    };
    let expanded;
    let csv = if mode & 0x20 != 0 {
        expanded = expand(csv);
        &expanded[..]
    } else {
        csv
    };
    let (plan, limit) = if mode & 1 == 0 {
        ("tiny", 2)
    } else {
        ("base", 2000)
    };
    let (mut worker, _) = runtime()
        .worker(Arc::new(MemoryStore::new()), POLICY)
        .expect("the policy loads");
    decide(
        &mut worker,
        Request::Subscribe {
            account: "acme".into(),
            plan: plan.into(),
            anchor: None,
        },
    );
    let mut used = 0;
    if mode & 2 != 0 {
        decide(
            &mut worker,
            Request::AddLead {
                account: "acme".into(),
                campaign: "other".into(),
                email: "ann@example.com".into(),
            },
        );
        used = 1;
    }
    let options = ImportOptions {
        batch: 1 + usize::from((mode >> 2) & 7),
        ..ImportOptions::new("acme", "q1", *NOW)
    };

    let Some(first) = run(&mut worker, csv, &options) else {
        return;
    };
    check(&first, used, limit);
    assert!(
        first.uploaded <= limit - used,
        "uploaded {} with {} of {limit} credits free",
        first.uploaded,
        limit - used
    );
    let again = run(&mut worker, csv, &options).expect("a file imported once imports again");
    check(&again, used + first.uploaded, limit);
    assert_eq!(
        again.rows, first.rows,
        "the same file read twice has the same rows"
    );
    assert_eq!(
        again.uploaded, 0,
        "a file imported twice was charged twice: {again:?}"
    );
    assert_eq!(
        again.invalid, first.invalid,
        "the same rows are invalid each time"
    );
});

/// `csv` with each `~` replaced by 16 KiB of `x`.
fn expand(csv: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(csv.len());
    for &byte in csv {
        if byte == b'~' {
            out.resize(out.len() + 16 * 1024, b'x');
        } else {
            out.push(byte);
        }
    }
    out
}

fn decide(worker: &mut Worker, request: Request) {
    let decision = worker
        .decide(&request, *NOW)
        .unwrap_or_else(|e| panic!("no decision for {request:?}: {e}"));
    assert!(
        decision.denied.is_none(),
        "{request:?} denied: {decision:?}"
    );
}

/// The report of importing `csv`, or `None` when the file is refused for a reason
/// of its own (no header, no such column or one named twice, a header too long, a
/// quote never closed).
fn run(worker: &mut Worker, csv: &[u8], options: &ImportOptions) -> Option<ImportReport> {
    match import(worker, csv, options, &mut |_| {}) {
        Ok(report) => Some(report),
        Err(ImportError::NoHeader { .. } | ImportError::MissingColumn { .. }) => None,
        Err(ImportError::AmbiguousColumn {
            line,
            count,
            positions,
            ..
        }) => {
            assert!(line >= 1, "an ambiguous header on line {line}");
            assert!(
                count >= 2 && positions.len() == count,
                "{count} columns at {positions:?}"
            );
            assert!(
                positions.windows(2).all(|p| p[0] < p[1]),
                "positions out of order: {positions:?}"
            );
            None
        }
        Err(ImportError::HeaderTooLong { line }) => {
            assert!(line >= 1, "a header on line {line}");
            None
        }
        // A quote never closed stops the import (what came before it stands).
        Err(ImportError::UnterminatedQuote { line, .. }) => {
            assert!(line >= 1, "a quote opened on line {line}");
            None
        }
        Err(e) => panic!("the import failed: {e}"),
    }
}

/// The report's own promises; `used_before` credits were used when it started.
fn check(report: &ImportReport, used_before: u64, limit: u64) {
    assert_eq!(
        report.classified(),
        report.rows,
        "every row is counted in exactly one outcome: {report:?}"
    );
    assert_eq!(
        report.invalid_rows.len() as u64,
        report.invalid.min(INVALID_ROWS_SHOWN as u64),
        "the first invalid rows are listed: {report:?}"
    );
    for pair in report.invalid_rows.windows(2) {
        assert!(
            pair[0].line < pair[1].line,
            "invalid rows out of order: {report:?}"
        );
    }
    if let Some(first) = report.invalid_rows.first() {
        assert!(
            first.line >= 2,
            "an invalid row on the header's line: {report:?}"
        );
    }
    let credits = report
        .lead_credits
        .as_ref()
        .expect("the account's credits are reported");
    assert_eq!(
        credits.used,
        used_before + report.uploaded,
        "one lead credit per upload: {report:?}"
    );
    assert_eq!(credits.limit, LimitJson::Count(limit));
    assert!(
        credits.used <= limit,
        "lead credits past the limit: {report:?}"
    );
}
