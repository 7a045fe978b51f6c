//! Lead imports from CSV, and `leads delete` / `leads list`: the parsing and the
//! counting through the library, then the commands end to end through the binary
//! against redb stores, and a large file in bounded memory.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use creditgate::bindings::Reason;
use creditgate::import::DryRunStore;
use creditgate::import::{
    ImportError, ImportOptions, ImportReport, InvalidReason, InvalidRow, MAX_ROW_BYTES, import,
    import_with,
};
use creditgate::runtime::Worker;
use creditgate::store::{MemoryStore, Store};
use serde_json::{Value, json};

use crate::harness::{self, text, words};

const T0: &str = "2025-01-31T09:00:00Z";
/// Any instant: lead credits do not depend on time.
const NOW: i64 = 1_738_314_000_000_000_000;

const TINY: &str = "[plans.tiny]\nlead_credits = 5\nemail_credits = 100\n";

// ---------------------------------------------------------------------------
// Through the library

/// A worker with account `acme` subscribed to `plan` of `policy`.
fn subscribed(policy: &str, plan: &str) -> Worker {
    let mut worker = harness::worker(policy);
    let subscribe = format!(r#"{{"at":"{T0}","op":"subscribe","account":"acme","plan":"{plan}"}}"#);
    assert_eq!(harness::decide(&mut worker, &subscribe).denied, None);
    worker
}

fn add_lead(worker: &mut Worker, campaign: &str, email: &str) {
    let line = format!(
        r#"{{"at":"{T0}","op":"add_lead","account":"acme","campaign":"{campaign}","email":"{email}"}}"#
    );
    assert_eq!(harness::decide(worker, &line).denied, None);
}

fn options(campaign: &str) -> ImportOptions {
    ImportOptions::new("acme", campaign, NOW)
}

fn run(worker: &mut Worker, csv: &[u8], options: &ImportOptions) -> ImportReport {
    let report =
        import(worker, csv, options, &mut |_| {}).unwrap_or_else(|e| panic!("import failed: {e}"));
    assert_eq!(report.rows, report.classified(), "{report:#?}");
    report
}

fn invalid(rows: &[(u64, InvalidReason)]) -> Vec<InvalidRow> {
    rows.iter()
        .map(|&(line, reason)| InvalidRow { line, reason })
        .collect()
}

/// The counts of a report, in the order of its fields.
fn counts(r: &ImportReport) -> [u64; 7] {
    [
        r.rows,
        r.uploaded,
        r.already_in_campaign,
        r.in_other_campaign,
        r.duplicates_in_file,
        r.invalid,
        r.credits_exhausted,
    ]
}

#[test]
fn the_header_is_found_whatever_its_case_with_a_bom_crlf_and_blank_lines() {
    let mut worker = subscribed(harness::SMARTLEAD, "base");
    let csv = b"\xef\xbb\xbfFirst Name, EMAIL ,Company\r\n\r\nAnn,ann@example.com,A\r\n\r\n\r\nBo,bo@example.org,\"B, Inc.\"\r\n";
    let report = run(&mut worker, csv, &options("q1"));
    assert_eq!(counts(&report), [2, 2, 0, 0, 0, 0, 0]);
    let credits = report.lead_credits.expect("usage");
    assert_eq!(credits.used, 2);
}

#[test]
fn a_custom_column_and_quoted_fields() {
    let mut worker = subscribed(harness::SMARTLEAD, "base");
    let csv = concat!(
        "name,work email,notes\n",
        "\"Doe, Jo\",jo@example.com,\"said \"\"hi\"\"\"\n",
        "Cy,\"cy@example.net\",\"two\nlines\"\n",
        "Di,\" di@example.io \",\n",
    );
    let mut opts = options("q1");
    opts.column = "Work Email".into();
    let report = run(&mut worker, csv.as_bytes(), &opts);
    assert_eq!(counts(&report), [3, 3, 0, 0, 0, 0, 0]);
}

#[test]
fn a_missing_column_lists_the_columns_found() {
    let mut worker = subscribed(harness::SMARTLEAD, "base");
    let err = import(
        &mut worker,
        &b"\n\nname,mail\nAnn,a@x.io\n"[..],
        &options("q1"),
        &mut |_| {},
    )
    .expect_err("no email column");
    assert!(
        matches!(err, ImportError::MissingColumn { line: 3, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        r#"line 3: the header has no "email" column (matched regardless of case); columns found: "name", "mail""#
    );
    assert!(!err.is_decision_failure());

    let err =
        import(&mut worker, &b"\r\n\n"[..], &options("q1"), &mut |_| {}).expect_err("no header");
    assert!(matches!(err, ImportError::NoHeader { .. }), "{err:?}");
}

/// A header that names the address column twice is refused, not read from the
/// first of them: which one holds the addresses is not the import's to guess.
#[test]
fn a_column_named_twice_is_refused_with_both_positions() {
    let mut worker = subscribed(harness::SMARTLEAD, "base");
    let csv = &b"Email,name,EMAIL
a@x.io,Ann,b@x.io
"[..];
    let err = import(&mut worker, csv, &options("q1"), &mut |_| {}).expect_err("two columns");
    assert_eq!(
        err.to_string(),
        r#"line 1: the header has 2 "email" columns (matched regardless of case), at positions 1, 3; rename all but one, or choose another with --column"#
    );
    assert!(!err.is_decision_failure());
    let usage = format!(r#"{{"at":"{T0}","op":"usage","account":"acme"}}"#);
    let usage = harness::decide(&mut worker, &usage)
        .usage
        .expect("acme exists");
    assert_eq!(usage.lead_credits.used, 0, "nothing imported");
}

#[test]
fn invalid_rows_are_counted_with_their_line_numbers_and_the_rest_imported() {
    let mut worker = subscribed(harness::SMARTLEAD, "base");
    let mut csv = b"name,email\n".to_vec(); // line 1
    csv.extend_from_slice(b"Ann,ann@example.com\n"); // 2
    csv.extend_from_slice(b"Bad,not-an-address\n"); // 3
    csv.extend_from_slice(b"Empty,\n"); // 4
    csv.extend_from_slice(b"Short\n"); // 5
    csv.extend_from_slice(b"\n"); // 6: blank, not a row
    csv.extend_from_slice(b"Latin,caf\xe9@example.com\n"); // 7
    csv.extend_from_slice(b"Name \xe9,cy@example.net\n"); // 8: only the address must be UTF-8
    csv.extend_from_slice(b"Huge,\""); // 9 to 10: a row past the limit
    csv.extend(std::iter::repeat_n(b'x', MAX_ROW_BYTES));
    csv.extend_from_slice(b"\nstill the same row\"\n");
    csv.extend_from_slice(b"Spaces,   \n"); // 11
    csv.extend_from_slice(b"Last,last@example.com"); // 12, no final line end
    let report = run(&mut worker, &csv, &options("q1"));
    assert_eq!(counts(&report), [9, 3, 0, 0, 0, 6, 0]);
    use InvalidReason::*;
    assert_eq!(
        report.invalid_rows,
        invalid(&[
            (3, InvalidEmail),
            (4, Empty),
            (5, MissingField),
            (7, NotUtf8),
            (9, RowTooLong),
            (11, Empty),
        ])
    );
}

#[test]
fn repeats_within_the_file_are_duplicates_across_batches_and_spellings() {
    let mut worker = subscribed(harness::SMARTLEAD, "base");
    add_lead(&mut worker, "q1", "old@example.com");
    add_lead(&mut worker, "q2", "other@example.com");
    let csv = concat!(
        "email\n",
        "new@example.com\n",   // uploaded
        "NEW@Example.com\n",   // duplicate (same contact, another spelling)
        "old@example.com\n",   // already in this campaign
        " Old@example.com\n",  // duplicate, not "already in this campaign"
        "other@example.com\n", // held by another campaign: joins, no credit
        "other@example.com\n", // duplicate
        "new@example.com\n",   // duplicate, in a later batch
    );
    let mut opts = options("q1");
    opts.batch = 2;
    let report = run(&mut worker, csv.as_bytes(), &opts);
    assert_eq!(counts(&report), [7, 1, 1, 1, 4, 0, 0]);
    // `old` and `other` were held before; `new` is the only credit taken.
    assert_eq!(report.lead_credits.expect("usage").used, 3);

    // Imported again: nothing new, every contact now already in the campaign.
    let again = run(&mut worker, csv.as_bytes(), &opts);
    assert_eq!(counts(&again), [7, 0, 3, 0, 4, 0, 0]);
}

#[test]
fn credits_running_out_part_way_stop_charging_but_not_reporting() {
    let mut worker = subscribed(TINY, "tiny");
    add_lead(&mut worker, "q2", "held@example.com"); // 1 of 5 used
    let mut csv = String::from("email\n");
    for i in 0..10 {
        csv += &format!("lead{i}@example.com\n");
        if i == 6 {
            // Past the limit, a contact another campaign holds still joins free.
            csv += "held@example.com\nnot valid\nlead0@example.com\n";
        }
    }
    let mut opts = options("q1");
    opts.batch = 3;
    let report = run(&mut worker, csv.as_bytes(), &opts);
    // 13 rows: lead0..lead3 uploaded (5 of 5 used), lead4..lead9 refused,
    // `held` joins, one invalid, `lead0` repeated.
    assert_eq!(counts(&report), [13, 4, 0, 1, 1, 1, 6]);
    let credits = report.lead_credits.expect("usage");
    assert_eq!((credits.used, credits.limit), (5, Some(5).into()));
    assert_eq!(
        report.invalid_rows,
        invalid(&[(10, InvalidReason::InvalidEmail)])
    );
}

#[test]
fn an_unknown_account_is_refused_before_the_file_is_read() {
    let mut worker = harness::worker(harness::SMARTLEAD);
    let err =
        import(&mut worker, &b""[..], &options("q1"), &mut |_| {}).expect_err("unknown account");
    assert!(
        matches!(
            &err,
            ImportError::Denied {
                reason: Reason::UnknownAccount,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_decision_failure());
    assert_eq!(
        err.to_string(),
        r#"unknown account "acme": it has not subscribed to a plan (unknown_account)"#
    );
}

/// A contact already in as many campaigns as it may be stops the import at its
/// batch, with a message naming it; the batches before it stay imported.
#[test]
fn a_contact_in_too_many_campaigns_stops_the_import_at_its_batch() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut worker = harness::worker_on(store.clone(), harness::SMARTLEAD);
    let subscribe = format!(r#"{{"at":"{T0}","op":"subscribe","account":"acme","plan":"base"}}"#);
    assert_eq!(harness::decide(&mut worker, &subscribe).denied, None);
    for i in 0..creditgate::store::MAX_GROUPS_PER_MEMBER {
        add_lead(&mut worker, &format!("q{i}"), "ann@x.io");
    }
    let csv = "email\nbo@x.io\ncy@x.io\nann@x.io\ndi@x.io\n";
    let options = ImportOptions {
        batch: 2,
        ..options("past")
    };
    // A dry run predicts the same stop, and changes nothing.
    let dry = DryRunStore::new(store.clone(), "acme", "past").expect("dry run");
    let mut dry_worker = harness::worker_on(Arc::new(dry), harness::SMARTLEAD);
    let predicted = import(&mut dry_worker, csv.as_bytes(), &options, &mut |_| {})
        .expect_err("a dry run stops too")
        .to_string();
    assert_eq!(store.member_count("acme").expect("count"), 1, "{predicted}");

    let err = import(&mut worker, csv.as_bytes(), &options, &mut |_| {})
        .expect_err("a contact past the bound");
    let message = err.to_string();
    assert_eq!(predicted, message, "the dry run predicted the real stop");
    assert!(
        message.contains("ann@x.io") && message.contains("1000 groups"),
        "{message}"
    );
    let usage = format!(r#"{{"at":"{T0}","op":"usage","account":"acme"}}"#);
    let used = harness::decide(&mut worker, &usage)
        .usage
        .map(|u| u.lead_credits.used);
    assert_eq!(
        used,
        Some(3),
        "ann, and the first batch (bo, cy): {message}"
    );
}

#[test]
fn progress_is_reported_after_each_batch() {
    let mut worker = subscribed(harness::SMARTLEAD, "base");
    let csv = numbered_csv("p", 10);
    let mut opts = options("q1");
    opts.batch = 4;
    let mut seen = Vec::new();
    import(&mut worker, csv.as_bytes(), &opts, &mut |p| {
        seen.push((p.report.rows, p.report.uploaded, p.bytes));
    })
    .expect("imports");
    let total = csv.len() as u64;
    assert_eq!(seen.last(), Some(&(10, 10, total)), "{seen:?}");
    assert_eq!(&seen[..2].iter().map(|s| s.1).collect::<Vec<_>>(), &[4, 8]);

    // Rows, not addresses, pace it: a long run of invalid rows shows too.
    seen.clear();
    let csv = format!("email\n{}", " \n".repeat(10));
    let report = import(&mut worker, csv.as_bytes(), &opts, &mut |p| {
        seen.push((p.report.rows, p.report.invalid, p.bytes));
    })
    .expect("imports");
    assert_eq!(report.invalid, 10);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [4, 8, 10]);
}

/// Issue 15: a chunk applied in the store's key order (`sort_from`) ends as the
/// same import in file order: the same report, the same rejected rows, the same
/// contacts, with repeats of a contact in spellings that sort apart (`Élan`
/// before `élan`), contacts held before by this campaign and by another, and
/// invalid rows; also with exactly as many credits left as addresses.
#[test]
fn key_order_changes_no_outcome_and_no_rejected_row() {
    // splitmix64, so that the file is the same in every run.
    let mut state = 7u64;
    let mut next = move |n: u64| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    };
    let mut csv = String::from("email\n");
    let mut addresses = 0;
    for _ in 0..400 {
        let c = next(60);
        let row = match next(12) {
            0 => "not an address".to_owned(),
            1 => " ".to_owned(),
            2 => format!("\u{c9}lan{c}@x.io"),
            3 => format!("\u{e9}lan{c}@x.io"),
            4 => format!("<Lead{c}@X.io>"),
            5 => format!("  LEAD{c}@x.io"),
            _ => format!("lead{c}@x.io"),
        };
        // What the host sends the policy: all but the blank field.
        addresses += usize::from(row != " ");
        csv += &row;
        csv += "\n";
    }
    let held = |worker: &mut Worker| {
        for c in (0..60).step_by(7) {
            add_lead(worker, "q1", &format!("lead{c}@x.io"));
            add_lead(worker, "q2", &format!("\u{e9}lan{c}@x.io"));
        }
        add_lead(worker, "q2", "lead3@x.io");
    };
    let run = |policy: &str, sort_from: Option<usize>| {
        let mut worker = subscribed(policy, "p");
        held(&mut worker);
        let mut opts = options("q1");
        opts.batch = 7;
        opts.sort_from = sort_from;
        let mut rows_at_first_progress = None;
        let mut rejected = Vec::new();
        let report = import_with(
            &mut worker,
            csv.as_bytes(),
            &opts,
            &mut |p| {
                rows_at_first_progress.get_or_insert(p.report.rows);
            },
            &mut |r| {
                rejected.push((r.line, r.value.clone(), r.reason.code()));
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("import failed: {e}"));
        assert_eq!(report.rows, report.classified(), "{report:#?}");
        let leads: Vec<(String, String)> =
            creditgate::inspect::leads(&mut worker, "acme", None, None, 1_000)
                .expect("lists")
                .into_iter()
                .map(|l| (l.campaign, l.email))
                .collect();
        (report, rejected, leads, rows_at_first_progress)
    };
    let unlimited = "[plans.p]\nlead_credits = \"unlimited\"\nemail_credits = 100\n";
    let (report, rejected, leads, first) = run(unlimited, None);
    assert_eq!(first, Some(7), "file order reports after each batch");
    assert!(report.duplicates_in_file > 100, "{report:#?}");
    assert!(
        rejected
            .iter()
            .any(|r| r.2 == "duplicate_in_file" && r.1.starts_with('\u{c9}'))
    );
    let (k_report, k_rejected, k_leads, k_first) = run(unlimited, Some(1));
    // The whole file is one chunk, read before its first batch.
    assert_eq!(k_first, Some(400), "key order was not taken");
    assert_eq!(k_report, report);
    assert_eq!(k_rejected, rejected);
    assert_eq!(k_leads, leads);

    // Exactly enough credits left for every address (some 19 are held already).
    let used = report.lead_credits.as_ref().expect("usage").used - report.uploaded;
    let exact = format!(
        "[plans.p]\nlead_credits = {}\nemail_credits = 100\n",
        used + addresses as u64
    );
    let (e_report, e_rejected, e_leads, e_first) = run(&exact, Some(1));
    assert_eq!(e_first, Some(400), "key order was not taken");
    assert_eq!(
        (counts(&e_report), &e_rejected, &e_leads),
        (counts(&report), &rejected, &leads)
    );
    // One credit fewer: file order, and the last new contacts are refused.
    let short = format!(
        "[plans.p]\nlead_credits = {}\nemail_credits = 100\n",
        used + addresses as u64 - 1
    );
    let (s_report, _, _, s_first) = run(&short, Some(1));
    assert_eq!(s_first, Some(7), "file order when credits could run out");
    assert_eq!(s_report.uploaded, report.uploaded);
}

// ---------------------------------------------------------------------------
// Through the binary

/// A temp dir with a redb store in which `acme` subscribed to `plan` of the policy
/// file `policy`.
struct Setup {
    dir: tempfile::TempDir,
    policy: PathBuf,
}

impl Setup {
    fn new(policy_text: Option<&str>, plan: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let policy = match policy_text {
            Some(text) => harness::write_file(dir.path(), "policy.toml", text),
            None => harness::repo().join("policies/smartlead.toml"),
        };
        let setup = Setup { dir, policy };
        let event = format!(r#"{{"at":"{T0}","op":"subscribe","account":"acme","plan":"{plan}"}}"#);
        let out = setup.run(
            &["replay", "--events", "-", "--store", &setup.store()],
            event.as_bytes(),
        );
        harness::assert_exit(&out, 0);
        setup
    }

    fn store(&self) -> String {
        self.path("state.redb")
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn write(&self, name: &str, data: &[u8]) -> String {
        let path = self.path(name);
        std::fs::write(&path, data).expect("file written");
        path
    }

    /// Runs creditgate with the setup's policy; the default store, should a
    /// command fall back on it, is in the temp dir too.
    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut command = harness::creditgate_command();
        command
            .args(args)
            .arg("--policy")
            .arg(&self.policy)
            .env("CREDITGATE_STORE", self.dir.path().join("default.redb"));
        harness::run_with_stdin(command, stdin)
    }

    /// `creditgate leads ARGS --account acme --store STORE`.
    fn leads(&self, args: &[&str], stdin: &[u8]) -> Output {
        let store = self.store();
        let mut all = vec!["leads"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--account", "acme", "--store", &store]);
        self.run(&all, stdin)
    }

    fn list(&self, campaign: Option<&str>) -> String {
        let mut args = vec!["list"];
        args.extend(campaign.map(|c| ["--campaign", c]).into_iter().flatten());
        let out = self.leads(&args, b"");
        harness::assert_exit(&out, 0);
        text(&out.stdout)
    }
}

/// A CSV of an `email` column: `{prefix}0@example.com` to `{prefix}{n-1}@…`.
fn numbered_csv(prefix: &str, n: usize) -> String {
    std::iter::once("email\n".to_string())
        .chain((0..n).map(|i| format!("{prefix}{i}@example.com\n")))
        .collect()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

const SAMPLE: &str = concat!(
    "Name,Email\r\n",
    "Ann,ann@example.com\r\n",
    "\"Bo, Jr\",bo@example.org\r\n",
    "Bad,not-an-address\r\n",
    "Ann again,ANN@example.com\r\n",
    "\r\n",
    "Cy,cy@example.net\r\n",
);

#[test]
fn import_prints_a_report_and_the_contacts_are_listed() {
    let s = Setup::new(None, "base");
    let file = s.write("leads.csv", SAMPLE.as_bytes());
    let out = s.leads(&["import", "--campaign", "q1", &file], b"");
    harness::assert_exit(&out, 0);
    let report = text(&out.stdout);
    assert!(report.starts_with(&format!(
        "imported {file} into campaign \"q1\" of account \"acme\"\n"
    )));
    let expected = [
        "  rows read                      5",
        "  uploaded                       3  lead credits charged",
        "  already in this campaign       0",
        "  in another campaign            0  added here too, no credit charged",
        "  duplicates in this file        1",
        "  invalid addresses              1  line 4 (not a valid address)",
        "  not imported, credits ran out  0",
        "  lead credits used              3 of 2000",
    ];
    assert_eq!(
        report.lines().skip(1).collect::<Vec<_>>(),
        expected,
        "{report}"
    );
    assert_eq!(
        s.list(None),
        "q1\tann@example.com\nq1\tbo@example.org\nq1\tcy@example.net\n"
    );
    assert_eq!(
        s.list(Some("q1")),
        "ann@example.com\nbo@example.org\ncy@example.net\n"
    );
    assert_eq!(s.list(Some("q2")), "");
}

#[test]
fn import_reads_stdin_and_reports_json() {
    let s = Setup::new(None, "base");
    let out = s.leads(
        &["import", "--campaign", "q1", "-", "--format", "json"],
        SAMPLE.as_bytes(),
    );
    harness::assert_exit(&out, 0);
    assert_eq!(
        json_of(&out),
        json!({
            "account": "acme",
            "campaign": "q1",
            "dry_run": false,
            "rows": 5,
            "uploaded": 3,
            "already_in_campaign": 0,
            "in_other_campaign": 0,
            "duplicates_in_file": 1,
            "invalid": 1,
            "invalid_rows": [{"line": 4, "reason": "invalid_email"}],
            "credits_exhausted": 0,
            "lead_credits": {"used": 3, "limit": 2000},
        })
    );
    // Piped stderr: no progress bar, nothing at all.
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn a_dry_run_reports_the_same_and_changes_nothing() {
    let s = Setup::new(Some(TINY), "tiny");
    let csv = numbered_csv("d", 8);
    let file = s.write("leads.csv", csv.as_bytes());
    // One contact already held, in another campaign.
    let out = s.leads(
        &["import", "--campaign", "q0", "-"],
        b"email\nd7@example.com\n",
    );
    harness::assert_exit(&out, 0);
    let before = s.list(None);

    let args = ["import", "--campaign", "q1", &file, "--format", "json"];
    let mut dry_args = args.to_vec();
    dry_args.push("--dry-run");
    let dry = s.leads(&dry_args, b"");
    harness::assert_exit(&dry, 0);
    let mut dry = json_of(&dry);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        (
            &dry["uploaded"],
            &dry["in_other_campaign"],
            &dry["credits_exhausted"]
        ),
        (&json!(4), &json!(1), &json!(3))
    );
    assert_eq!(s.list(None), before, "the dry run changed the store");
    let text_dry = s.leads(&["import", "--campaign", "q1", &file, "--dry-run"], b"");
    harness::assert_starts(
        &text(&text_dry.stdout),
        "dry run, nothing changed: importing",
    );
    assert_eq!(s.list(None), before);

    let real = s.leads(&args, b"");
    harness::assert_exit(&real, 0);
    dry["dry_run"] = json!(false);
    assert_eq!(
        json_of(&real),
        dry,
        "the real import differs from its dry run"
    );
    assert_ne!(s.list(None), before);
}

#[test]
fn credits_run_out_part_way_through_the_binary() {
    let s = Setup::new(Some(TINY), "tiny");
    let csv = numbered_csv("x", 9);
    let out = s.leads(
        &words("import --campaign q1 - --batch 2 --format json"),
        csv.as_bytes(),
    );
    harness::assert_exit(&out, 0);
    let report = json_of(&out);
    assert_eq!(
        (&report["uploaded"], &report["credits_exhausted"]),
        (&json!(5), &json!(4))
    );
    assert_eq!(report["lead_credits"], json!({"used": 5, "limit": 5}));
    assert_eq!(s.list(Some("q1")).lines().count(), 5);
}

#[test]
fn input_errors_name_the_file_and_line_and_exit_2() {
    let s = Setup::new(None, "base");
    let file = s.write("no-email.csv", b"name,mail\nAnn,a@x.io\n");
    let out = s.leads(&["import", "--campaign", "q1", &file], b"");
    harness::assert_exit(&out, 2);
    assert_eq!(
        text(&out.stderr),
        format!(
            "creditgate: error: {file}: line 1: the header has no \"email\" column (matched regardless of case); columns found: \"name\", \"mail\"\n"
        )
    );

    let missing = s.path("nowhere.csv");
    let out = s.leads(&["import", "--campaign", "q1", &missing], b"");
    harness::assert_exit(&out, 2);
    harness::assert_stderr_has(&out, &format!("cannot read {missing}"));

    let out = s.leads(&["import", "--campaign", "q1", "-", "--batch", "0"], b"");
    harness::assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("expected a number from 1 to 10000"));
}

#[test]
fn an_unknown_account_exits_1_and_a_memory_store_knows_no_account() {
    let s = Setup::new(None, "base");
    // A fresh in-memory store holds no account at all.
    let out = s.run(
        &words("leads import --account acme --campaign q1 --store memory -"),
        SAMPLE.as_bytes(),
    );
    harness::assert_exit(&out, 1);
    assert_eq!(
        text(&out.stderr),
        "creditgate: error: account \"acme\": denied: unknown_account (no such account: subscribe it to a plan first)\n"
    );
    assert!(
        !s.dir.path().join("default.redb").exists(),
        "--store memory opened the default store"
    );
    let out = s.run(
        &[
            "leads",
            "list",
            "--account",
            "nobody",
            "--store",
            &s.store(),
        ],
        b"",
    );
    harness::assert_exit(&out, 1);
    assert!(text(&out.stderr).contains("\"nobody\": denied: unknown_account"));
}

#[test]
fn delete_frees_the_credits_no_other_campaign_holds() {
    let s = Setup::new(None, "base");
    let import = |campaign: &str, csv: &str| {
        let out = s.leads(&["import", "--campaign", campaign, "-"], csv.as_bytes());
        harness::assert_exit(&out, 0);
    };
    import("q1", "email\na@x.io\nb@x.io\nc@x.io\nd@x.io\n");
    import("q2", "email\nc@x.io\n");

    let out = s.leads(&["delete", "--campaign", "q1", "--email", "A@X.io"], b"");
    harness::assert_exit(&out, 0);
    assert_eq!(
        text(&out.stdout),
        "freed 1 lead credit; lead credits used: 3 of 2000\n"
    );

    // Not in the campaign any more: nothing to free.
    let out = s.leads(
        &words("delete --campaign q1 --email a@x.io --format json"),
        b"",
    );
    harness::assert_exit(&out, 0);
    let outcome = json_of(&out);
    assert_eq!(
        (&outcome["decision"], &outcome["freed"]),
        (&json!("allow"), &json!(0))
    );

    // b and d leave the account; c stays, held by q2.
    let out = s.leads(&["delete", "--campaign", "q1", "--all"], b"");
    harness::assert_exit(&out, 0);
    assert_eq!(
        text(&out.stdout),
        "freed 2 lead credits; lead credits used: 1 of 2000\n"
    );
    assert_eq!(s.list(None), "q2\tc@x.io\n");

    let out = s.leads(&["delete", "--campaign", "q1", "--email", "nope"], b"");
    harness::assert_exit(&out, 1);
    harness::assert_stderr_has(&out, "denied: invalid_email");

    let out = s.leads(&["delete", "--campaign", "q1"], b"");
    assert_eq!(out.status.code(), Some(2), "--email or --all is required");
}

#[test]
fn list_prints_json_too() {
    let s = Setup::new(None, "base");
    let out = s.leads(&["list", "--format", "json"], b"");
    assert_eq!(json_of(&out), json!([]));
    let out = s.leads(&["import", "--campaign", "q2", "-"], b"email\nz@x.io\n");
    harness::assert_exit(&out, 0);
    let out = s.leads(
        &["import", "--campaign", "q1", "-"],
        b"email\nz@x.io\ny@x.io\n",
    );
    harness::assert_exit(&out, 0);
    let out = s.leads(&["list", "--format", "json"], b"");
    assert_eq!(
        json_of(&out),
        json!([
            {"campaign": "q1", "email": "y@x.io"},
            {"campaign": "q1", "email": "z@x.io"},
            {"campaign": "q2", "email": "z@x.io"},
        ])
    );
}

// ---------------------------------------------------------------------------
// A large file, in bounded memory

/// How the addresses of a generated file follow one another.
#[derive(Debug, Clone, Copy)]
enum Addresses {
    /// `lead{c}@example{c % 997}.com`: each new contact lands next to the previous
    /// one in the store's key order.
    Sequential,
    /// As real lead lists are: each new contact lands anywhere in the key order,
    /// over thousands of domains (see [`random_address`]).
    Random,
}

/// Contact `c`'s address, random-looking but distinct for distinct `c`: the
/// local part ends in `c` scrambled by splitmix64's finaliser, whose steps (an
/// addition, a multiplication by an odd number, a shift folded in by exclusive
/// or) are each a bijection of `u64`.
fn random_address(c: u64) -> String {
    const NAMES: [&str; 8] = ["ann", "bo.lee", "cy", "di_ross", "ed", "flo", "gus", "hal"];
    const TLDS: [&str; 4] = ["com", "io", "de", "co.uk"];
    let mut h = c.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let h = h ^ (h >> 31);
    let name = NAMES[(h % 8) as usize];
    let domain = (h >> 40) % 4_000;
    let tld = TLDS[((h >> 20) % 4) as usize];
    format!("{name}.{h:x}@firm{domain}.{tld}")
}

/// Writes a CSV of `rows` rows naming `distinct` contacts in turn, each row padded
/// with a notes column of `padding` bytes.
fn big_csv(path: &Path, rows: u64, distinct: u64, padding: usize, addresses: Addresses) {
    let file = std::fs::File::create(path).expect("csv created");
    let mut out = BufWriter::new(file);
    let notes = "n".repeat(padding);
    writeln!(out, "email,first_name,notes").expect("written");
    for i in 0..rows {
        let c = i % distinct;
        let email = match addresses {
            Addresses::Sequential => format!("lead{c}@example{}.com", c % 997),
            Addresses::Random => random_address(c),
        };
        writeln!(out, "{email},Lead {i},{notes}").expect("written");
    }
    out.flush().expect("written");
}

#[test]
fn random_addresses_are_distinct_and_out_of_order() {
    let addresses: Vec<String> = (0..50_000).map(random_address).collect();
    let distinct: std::collections::HashSet<&String> = addresses.iter().collect();
    assert_eq!(distinct.len(), addresses.len());
    let domains: std::collections::HashSet<&str> = addresses
        .iter()
        .filter_map(|a| a.split_once('@'))
        .map(|(_, d)| d)
        .collect();
    assert!(domains.len() > 3_000, "{} domains", domains.len());
    let ascending = addresses.windows(2).filter(|w| w[0] < w[1]).count();
    assert!(
        (20_000..30_000).contains(&ascending),
        "{ascending} in order"
    );
}

/// A memory figure of a process's `/proc/PID/status` (`VmHWM`, `RssAnon`), in
/// bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What a large import measured.
struct Measured {
    /// Peak resident set of the importing process, in bytes (`VmHWM`).
    peak: u64,
    /// Peak of its anonymous memory, sampled (`RssAnon`): what it allocated,
    /// without the pages of its executable and mapped files, of which the
    /// kernel maps in more or fewer as its page cache happens to hold them (a
    /// debug build of the binary is 80 MB).
    peak_anon: u64,
    /// Size of the CSV file and of the redb file afterwards, in bytes.
    csv: u64,
    store: u64,
}

/// Runs `creditgate leads import --account acme --format json --store STORE
/// --policy POLICY ARGS` and measures its peak resident set, in bytes.
fn import_measured(s: &Setup, args: &[&std::ffi::OsStr]) -> (Output, u64, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_creditgate"))
        .args(["leads", "import", "--account", "acme"])
        .args(["--format", "json", "--store", &s.store(), "--policy"])
        .arg(&s.policy)
        .args(args)
        .current_dir(harness::repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("creditgate runs");
    // VmHWM only grows, so the last reading before the process exits is its peak,
    // but for what the last few milliseconds add (the import is done by then,
    // the report being printed).
    let (mut peak, mut peak_anon) = (0, 0);
    while child.try_wait().expect("waits").is_none() {
        if let Some(rss) = status_bytes(child.id(), "VmHWM:") {
            peak = peak.max(rss);
        }
        if let Some(anon) = status_bytes(child.id(), "RssAnon:") {
            peak_anon = peak_anon.max(anon);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (child.wait_with_output().expect("finishes"), peak, peak_anon)
}

/// Imports a generated CSV (see [`big_csv`]) into a fresh redb store through the
/// binary, checks the report, and measures the process's peak memory.
fn import_big(rows: u64, distinct: u64, padding: usize, addresses: Addresses) -> Measured {
    let s = Setup::new(None, "unlimited_prime");
    let csv = s.dir.path().join("big.csv");
    big_csv(&csv, rows, distinct, padding, addresses);
    let store = s.store();
    let started = Instant::now();
    let (out, peak, peak_anon) =
        import_measured(&s, &["--campaign".as_ref(), "big".as_ref(), csv.as_ref()]);
    let elapsed = started.elapsed();
    harness::assert_exit(&out, 0);
    let report = json_of(&out);
    assert_eq!(report["rows"], json!(rows));
    assert_eq!(report["uploaded"], json!(distinct));
    assert_eq!(report["duplicates_in_file"], json!(rows - distinct));
    assert_eq!(report["lead_credits"]["used"], json!(distinct));
    assert!(peak > 0, "no VmHWM reading");
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let measured = Measured {
        peak,
        peak_anon,
        csv: size(&csv),
        store: size(Path::new(&store)),
    };
    eprintln!(
        "imported {rows} rows ({} MB) in {elapsed:.1?}: {:.0} rows/s, peak RSS {} MB \
         ({} MB anonymous), store {} MB",
        measured.csv >> 20,
        rows as f64 / elapsed.as_secs_f64(),
        measured.peak >> 20,
        measured.peak_anon >> 20,
        measured.store >> 20,
    );
    measured
}

const MB: u64 = 1 << 20;

#[test]
fn a_100k_row_file_imports_in_bounded_memory() {
    let m = import_big(100_000, 100_000, 0, Addresses::Sequential);
    assert!(m.peak < 200 * MB, "peak RSS {} MB", m.peak >> 20);
}

/// A file much larger than the memory the import may use, but few contacts (so
/// that the store stays small): were the file held in memory, it would show.
#[test]
fn the_file_never_sits_in_memory() {
    let m = import_big(100_000, 1_000, 1_100, Addresses::Sequential);
    assert!(m.csv > 100 * MB, "{} MB", m.csv >> 20);
    assert!(
        m.peak_anon < 64 * MB,
        "peak anonymous memory {} MB for a {} MB file (peak RSS {} MB)",
        m.peak_anon >> 20,
        m.csv >> 20,
        m.peak >> 20
    );
}

/// A million contacts, in bounded memory: the import holds one chunk of
/// addresses (at most 80 MiB) and one batch at a time, and redb's page cache is
/// capped (32 MiB for an import), so the peak does not grow with the file or
/// the database. The addresses are random, as in real lists (issue 15): in file
/// order every batch would land all over the store's tables; the chunk that
/// puts them in key order is what this bounds. Slow in a debug build; `.ci/run` runs it in release:
/// `cargo test --release -p creditgate --test it -- --ignored import`.
#[test]
#[ignore = "slow in a debug build; .ci/run runs it with --release"]
fn a_million_row_file_imports_in_bounded_memory() {
    let m = import_big(1_000_000, 1_000_000, 0, Addresses::Random);
    assert!(
        m.peak < 200 * MB,
        "peak RSS {} MB (store file {} MB)",
        m.peak >> 20,
        m.store >> 20
    );
}

// ---------------------------------------------------------------------------
// Issue 13: alerts from the command line, rejected rows, delimiters, quotes

/// `(credit, threshold, used, limit)` of every alert `alerts list` shows for acme.
fn alerts_listed(s: &Setup) -> Vec<(String, u64, u64, u64)> {
    let out = harness::creditgate_command()
        .args(["alerts", "list", "--account", "acme", "--format", "json"])
        .args(["--store", &s.store()])
        .output()
        .expect("runs");
    harness::assert_exit(&out, 0);
    let listed: Value = serde_json::from_str(&text(&out.stdout)).expect("one JSON document");
    listed
        .as_array()
        .expect("an array of alerts")
        .iter()
        .map(|a| {
            (
                a["credit"].as_str().expect("credit").to_string(),
                a["threshold"].as_u64().expect("threshold"),
                a["used"].as_u64().expect("used"),
                a["limit"].as_u64().expect("limit"),
            )
        })
        .collect()
}

/// Issue 13.3: an account taken to 2000/2000 by `leads import` logged no alert,
/// where the same crossing through the gateway logs 80% and 100%.
#[test]
fn a_cli_import_that_crosses_thresholds_logs_and_prints_its_alerts() {
    let s = Setup::new(None, "base");
    let csv = numbered_csv("p", 2000);
    let out = s.leads(
        &["import", "--campaign", "q1", "-", "--batch", "700"],
        csv.as_bytes(),
    );
    harness::assert_exit(&out, 0);
    let lead = |t: u64, used: u64| ("lead_credits".to_string(), t, used, 2000);
    // The batch that crosses 80% reports its usage after the whole batch.
    assert_eq!(alerts_listed(&s), [lead(80, 2000), lead(100, 2000)]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(r#"creditgate: alert: account "acme": lead_credits at 80% (2000 of 2000)"#)
            && stderr.contains("lead_credits at 100%"),
        "{stderr}"
    );

    // A dry run fires nothing and logs nothing, even where a real import would.
    let s = Setup::new(None, "base");
    let out = s.leads(
        &["import", "--campaign", "q1", "-", "--dry-run"],
        csv.as_bytes(),
    );
    harness::assert_exit(&out, 0);
    assert!(
        !text(&out.stderr).contains("alert"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(alerts_listed(&s), []);
}

/// Issue 13.3: a plan change from the command line logs the alerts it fires, as
/// the gateway does.
#[test]
fn a_cli_plan_change_logs_its_alerts() {
    let s = Setup::new(
        Some(
            "[plans.big]\nlead_credits = 10\nemail_credits = 10\n[plans.small]\nlead_credits = 5\nemail_credits = 10\n",
        ),
        "big",
    );
    let csv = "email\na@x.io\nb@x.io\nc@x.io\nd@x.io\n";
    let out = s.leads(&["import", "--campaign", "q1", "-"], csv.as_bytes());
    harness::assert_exit(&out, 0);
    assert_eq!(alerts_listed(&s), []);
    let out = s.run(
        &[
            "account",
            "change-plan",
            "acme",
            "--plan",
            "small",
            "--store",
            &s.store(),
        ],
        b"",
    );
    harness::assert_exit(&out, 0);
    assert_eq!(alerts_listed(&s), [("lead_credits".to_string(), 80, 4, 5)]);
}

/// Issue 13.11: `--rejected FILE` lists every row not imported, with its line,
/// its value and why, including the rows refused because credits ran out.
#[test]
fn rejected_rows_are_written_with_line_value_and_reason() {
    let s = Setup::new(Some(TINY), "tiny");
    let csv = concat!(
        "name,email\n",                   // 1
        "Ann,ann@example.com\n",          // 2 uploaded
        "Bad,not-an-address\n",           // 3 invalid_email
        "Empty,\n",                       // 4 empty
        "Short\n",                        // 5 missing_field
        "Ann again,ANN@example.com\n",    // 6 duplicate
        "\"Doe, Jo\",\"jo@x.io\"\n",      // 7 uploaded
        "c,c@x.io\nd,d@x.io\ne,e@x.io\n", // 8-10 uploaded
        "f,f@x.io\n",                     // 11 credits ran out
        "g,\"g, not an address\"\n",      // 12 invalid_email, quoted on the way out
    );
    let rejected = s.path("rejected.csv");
    let out = s.leads(
        &[
            "import",
            "--campaign",
            "q1",
            "-",
            "--batch",
            "3",
            "--format",
            "json",
            "--rejected",
            &rejected,
        ],
        csv.as_bytes(),
    );
    harness::assert_exit(&out, 0);
    let report = json_of(&out);
    assert_eq!(report["uploaded"], json!(5));
    let written = std::fs::read_to_string(&rejected).expect("rejected file");
    assert_eq!(
        written,
        concat!(
            "line,value,reason\n",
            "3,not-an-address,invalid_email\n",
            "4,,empty\n",
            "5,,missing_field\n",
            "6,ANN@example.com,duplicate_in_file\n",
            "11,f@x.io,lead_credits_exhausted\n",
            "12,\"g, not an address\",invalid_email\n",
        )
    );
}

/// Issue 13.11: semicolon- and tab-separated files are read by their header, or
/// with `--delimiter`.
#[test]
fn the_delimiter_is_detected_from_the_header_or_given() {
    let mut worker = subscribed(harness::SMARTLEAD, "base");
    let csv = "Name;Email;Company\nAnn;ann@example.com;\"A; Inc.\"\nBo;bo@example.org;B\n";
    let report = run(&mut worker, csv.as_bytes(), &options("q1"));
    assert_eq!(counts(&report), [2, 2, 0, 0, 0, 0, 0]);
    let tsv = "name\temail\nCy\tcy@example.net\n";
    let report = run(&mut worker, tsv.as_bytes(), &options("q1"));
    assert_eq!(counts(&report), [1, 1, 0, 0, 0, 0, 0]);
    // Given: a header with more commas than pipes still splits on the pipe.
    let mut opts = options("q1");
    opts.delimiter = Some(b'|');
    let piped = "name, first|email\nDi, D|di@example.io\n";
    let report = run(&mut worker, piped.as_bytes(), &opts);
    assert_eq!(counts(&report), [1, 1, 0, 0, 0, 0, 0]);

    let s = Setup::new(None, "base");
    let out = s.leads(
        &words("import --campaign q1 - --delimiter tab --format json"),
        b"email\tname,x\nev@example.com\tEv,1\n",
    );
    harness::assert_exit(&out, 0);
    assert_eq!(json_of(&out)["uploaded"], json!(1));
    // Detected, a comma would win the tie, and there would be no `email` column.
    let out = s.leads(&["import", "--campaign", "q1", "-"], b"email\tname,x\n");
    harness::assert_exit(&out, 2);
}

/// Issue 13.11: a quote that never closes used to swallow the rest of the file
/// into one field, silently; now the import stops there, naming the line the
/// quote opened on, with the rows before it imported.
#[test]
fn an_unterminated_quote_is_reported_at_its_line() {
    let mut worker = subscribed(harness::SMARTLEAD, "base");
    let csv = "name,email\nAnn,ann@example.com\nBo,\"bo@example.org\nCy,cy@example.net\nDi,di@example.io\n";
    let err = import(&mut worker, csv.as_bytes(), &options("q1"), &mut |_| {})
        .expect_err("an unterminated quote");
    assert!(
        matches!(err, ImportError::UnterminatedQuote { line: 3, done: 1 }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("line 3: a quoted field opens here and is never closed"),
        "{err}"
    );
    // The row before it is imported.
    let again = run(&mut worker, b"email\nann@example.com\n", &options("q1"));
    assert_eq!(again.already_in_campaign, 1);

    let s = Setup::new(None, "base");
    let file = s.write("quote.csv", csv.as_bytes());
    let out = s.leads(&["import", "--campaign", "q1", &file], b"");
    harness::assert_exit(&out, 2);
    harness::assert_stderr_has(&out, &format!("{file}: line 3: a quoted field opens here"));
}

/// Issue 13.11: a dry run copied the whole account into memory (every contact of
/// every campaign, twice over while copying), so on a large account it took
/// many times what the import itself takes. Now it reads the account in place
/// and remembers what it would add as fingerprints: a million contacts held, a
/// 100,000-row file, within the million-row import's bound. Run in release with
/// the million-row test.
#[test]
#[ignore = "slow in a debug build; .ci/run runs it with --release"]
fn a_dry_run_on_a_large_account_stays_in_bounded_memory() {
    use creditgate::store::{RedbStore, Store as _};
    const HELD: u64 = 1_000_000;
    let s = Setup::new(None, "unlimited_prime");
    {
        let store = RedbStore::open(Path::new(&s.store())).expect("store opens");
        for chunk in 0..HELD / 10_000 {
            let members: Vec<String> = (0..10_000)
                .map(|i| {
                    let n = chunk * 10_000 + i;
                    format!("held{n}@example{}.com", n % 997)
                })
                .collect();
            let add = creditgate::store::MemberAddMany {
                scope: "acme",
                group: "old",
                members: &members,
                limit: None,
            };
            store.member_add_many(add).expect("members added");
        }
        store.persist().expect("durable");
    }
    let csv = s.dir.path().join("new.csv");
    // Half already held by the account, half new.
    let file = std::fs::File::create(&csv).expect("csv created");
    let mut out = BufWriter::new(file);
    writeln!(out, "email").expect("written");
    for i in 0..100_000u64 {
        let n = if i % 2 == 0 { i } else { HELD + i };
        let name = if n < HELD { "held" } else { "new" };
        writeln!(out, "{name}{n}@example{}.com", n % 997).expect("written");
    }
    out.flush().expect("written");
    drop(out);

    let started = Instant::now();
    let args = [
        "--campaign".as_ref(),
        "q1".as_ref(),
        csv.as_os_str(),
        "--dry-run".as_ref(),
    ];
    let (dry, peak, _) = import_measured(&s, &args);
    let elapsed = started.elapsed();
    harness::assert_exit(&dry, 0);
    let report = json_of(&dry);
    assert_eq!(report["dry_run"], json!(true));
    assert_eq!(
        (&report["uploaded"], &report["in_other_campaign"]),
        (&json!(50_000), &json!(50_000))
    );
    assert_eq!(report["lead_credits"]["used"], json!(HELD + 50_000));
    eprintln!(
        "dry run of 100000 rows on an account of {HELD} contacts: {elapsed:.1?}, peak RSS {} MB",
        peak >> 20
    );
    assert!(peak < 200 * MB, "peak RSS {} MB", peak >> 20);
}
