//! `creditgate check` end to end, through the binary: golden reports for every broken
//! policy under `policies/invalid/`, warnings, the shipped policies, the JSON report
//! and exit statuses.
//!
//! Golden files hold the exact stdout. After an intended change of wording, rewrite
//! them with `UPDATE_GOLDEN=1 cargo test -p creditgate --test it -- check suites`
//! and review the diff.

use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::{self, text, words};

/// Runs the binary from the repository root, so that paths in its output are the
/// relative ones given here.
pub fn creditgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_creditgate"))
        .args(args)
        .current_dir(harness::repo())
        .output()
        .expect("creditgate runs")
}

/// Compares `actual` with the golden file `golden` (relative to the repository
/// root), or rewrites the file when `UPDATE_GOLDEN` is set. Returns a description
/// of the difference, if any.
pub fn golden(golden: &str, actual: &str) -> Option<String> {
    let path = harness::repo().join(golden);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("golden file written");
        return None;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    (expected != actual).then(|| {
        format!(
            "{golden} differs (UPDATE_GOLDEN=1 rewrites it)\n--- expected\n{expected}--- actual\n{actual}---"
        )
    })
}

/// Panics with the difference unless `actual` is the golden file's text.
pub fn assert_golden(golden_path: &str, actual: &str) {
    if let Some(difference) = golden(golden_path, actual) {
        panic!("{difference}");
    }
}

/// Asserts that `out` has nothing on stderr and the golden file's text on stdout.
pub fn assert_golden_stdout(out: &Output, golden_path: &str) {
    assert_eq!(text(&out.stderr), "");
    assert_golden(golden_path, &text(&out.stdout));
}

/// Asserts that `out` has nothing on stdout and the golden file's text on stderr.
pub fn assert_golden_stderr(out: &Output, golden_path: &str) {
    assert_eq!(text(&out.stdout), "");
    assert_golden(golden_path, &text(&out.stderr));
}

#[test]
fn every_invalid_policy_prints_its_golden_report_and_exits_1() {
    let mut names: Vec<String> = std::fs::read_dir(harness::repo().join("policies/invalid"))
        .expect("policies/invalid")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".toml").map(str::to_string))
        .collect();
    names.sort();
    // One file per kind of problem an operator can make.
    let kinds = [
        "absurd-number",
        "bad-email-costs",
        "bad-plan-name",
        "duplicate-plan",
        "float",
        "missing-email-credits",
        "missing-plans",
        "misspelt-key",
        "misspelt-value",
        "negative-credits",
        "plans-differing-in-case",
        "syntax-error",
        "too-many-plans",
        "unknown-plan-key",
        "unknown-top-level-key",
        "wrong-type",
        "wrong-version",
    ];
    for kind in kinds {
        assert!(
            names.iter().any(|n| n == kind),
            "no policies/invalid/{kind}.toml"
        );
    }
    let mut differences = Vec::new();
    for name in &names {
        let file = format!("policies/invalid/{name}.toml");
        let out = creditgate(&["check", &file]);
        assert_eq!(out.status.code(), Some(1), "{file}: {}", text(&out.stdout));
        assert_eq!(text(&out.stderr), "", "{file}");
        let stdout = text(&out.stdout);
        assert_eq!(
            stdout.lines().filter(|l| l.starts_with("error: ")).count(),
            1,
            "{file}: one problem per file\n{stdout}"
        );
        differences.extend(golden(
            &format!("policies/invalid/{name}.expected"),
            &stdout,
        ));
    }
    // Every golden file belongs to a policy.
    for entry in
        std::fs::read_dir(harness::repo().join("policies/invalid")).expect("policies/invalid")
    {
        let file = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(name) = file.strip_suffix(".expected") {
            assert!(names.iter().any(|n| n == name), "{file} has no policy");
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n\n"));
}

#[test]
fn an_error_names_file_line_column_key_and_what_was_expected() {
    let out = creditgate(&["check", "policies/invalid/negative-credits.toml"]);
    assert!(text(&out.stdout).starts_with(
        "error: policies/invalid/negative-credits.toml:7:17: plans.pro.email_credits: \
         expected a non-negative integer or \"unlimited\", found -5\n"
    ));
}

#[test]
fn warnings_are_reported_and_the_check_passes() {
    let file = "host/tests/fixtures/check/warnings.toml";
    let out = creditgate(&["check", file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_golden_stdout(&out, "host/tests/fixtures/check/warnings.expected");
}

#[test]
fn the_shipped_policies_check_clean() {
    let out = creditgate(&["check", "policies/smartlead.toml", "policies/example.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout),
        "checked 2 policy files: 0 errors, 0 warnings\n"
    );
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn the_json_report_is_an_array_of_files() {
    let out = creditgate(&words(
        "check --format json policies/smartlead.toml policies/invalid/negative-credits.toml host/tests/fixtures/check/warnings.toml",
    ));
    harness::assert_exit(&out, 1);
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let files = report.as_array().expect("an array of files");
    assert_eq!(files.len(), 3);

    let smartlead = &files[0];
    assert_eq!(smartlead["file"], "policies/smartlead.toml");
    assert_eq!(smartlead["status"], "ok");
    assert_eq!(smartlead["errors"], serde_json::json!([]));
    assert_eq!(smartlead["warnings"], serde_json::json!([]));
    assert_eq!(
        smartlead["plans"],
        serde_json::json!([
            {"name": "base", "lead_credits": 2000, "email_credits": 6000},
            {"name": "pro", "lead_credits": 30000, "email_credits": 90000},
            {"name": "unlimited_prime", "lead_credits": "unlimited", "email_credits": 500000},
            {"name": "unlimited_smart", "lead_credits": "unlimited", "email_credits": 150000},
        ])
    );

    let invalid = &files[1];
    assert_eq!(invalid["status"], "errors");
    assert_eq!(invalid["plans"], serde_json::json!([]));
    assert_eq!(
        invalid["errors"],
        serde_json::json!([{
            "file": "policies/invalid/negative-credits.toml",
            "line": 7,
            "column": 17,
            "path": "plans.pro.email_credits",
            "message": "expected a non-negative integer or \"unlimited\", found -5",
        }])
    );

    let warned = &files[2];
    assert_eq!(warned["status"], "warnings");
    let warnings = warned["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 3);
    assert_eq!(warnings[2]["path"], "plans.base-copy");
    assert_eq!(warnings[2]["line"], 18);
}

#[test]
fn an_unreadable_file_exits_2_and_the_others_are_still_checked() {
    let out = creditgate(&[
        "check",
        "policies/no-such-policy.toml",
        "policies/invalid/float.toml",
    ]);
    harness::assert_exit(&out, 2);
    let stdout = text(&out.stdout);
    harness::assert_starts(
        &stdout,
        "error: policies/no-such-policy.toml: cannot read: ",
    );
    harness::assert_has(&stdout, "error: policies/invalid/float.toml:5:17: ");
    assert!(
        stdout.ends_with("checked 2 policy files: 2 errors in 2 files, 0 warnings\n"),
        "{stdout}"
    );

    let out = creditgate(&["check", "--format", "json", "policies/no-such-policy.toml"]);
    harness::assert_exit(&out, 2);
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(report[0]["status"], "unreadable");
    assert_eq!(report[0]["errors"][0]["line"], Value::Null);
}

#[test]
fn no_file_is_a_usage_error() {
    let out = creditgate(&["check"]);
    harness::assert_exit(&out, 2);
}

#[test]
fn a_policy_over_the_size_limit_is_refused_before_it_reaches_the_guest() {
    use creditgate::runtime::{LoadError, MAX_POLICY_BYTES};
    let plan = "[plans.base]\nlead_credits = 1\nemail_credits = 1\n";
    let padded = |len: usize| {
        let mut text = plan.to_owned();
        text.push('#');
        text.push_str(&" ".repeat(len - text.len() - 1));
        text.truncate(len - 1);
        text.push('\n');
        text
    };
    let store = || std::sync::Arc::new(creditgate::store::MemoryStore::new());
    let at_limit = padded(MAX_POLICY_BYTES);
    assert_eq!(at_limit.len(), MAX_POLICY_BYTES);
    crate::harness::runtime()
        .worker(store(), &at_limit)
        .expect("a policy of exactly the limit loads");
    match crate::harness::runtime().worker(store(), &padded(MAX_POLICY_BYTES + 1)) {
        Err(LoadError::Policy(diagnostics)) => {
            assert_eq!(diagnostics.len(), 1);
            assert!(
                diagnostics[0].message.contains("the limit is 1048576"),
                "{:?}",
                diagnostics[0]
            );
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a policy over the limit loaded"),
    }
}

/// Issue 13, item 1: given the store, `check` refuses a policy that lacks a plan
/// accounts are on, naming the plan and how many, as a reload would.
#[test]
fn check_with_a_store_refuses_a_policy_that_strands_accounts() {
    let (dir, store) = harness::temp_path("state.redb");
    let store = store.to_str().expect("utf-8 path");
    for (account, plan) in [("acme", "base"), ("globex", "pro"), ("initech", "pro")] {
        let out = creditgate(&[
            "account",
            "subscribe",
            account,
            "--plan",
            plan,
            "--store",
            store,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let policy = harness::write_file(
        dir.path(),
        "base-only.toml",
        "[plans.base]\nlead_credits = 2000\nemail_credits = 6000\n",
    );
    let policy = policy.to_str().expect("utf-8 path");

    let out = creditgate(&["check", policy]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = creditgate(&["check", policy, "--store", store]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    harness::assert_has(
        &stdout,
        "plan \"pro\" is not in this policy, and 2 account(s)",
    );
    assert!(
        creditgate(&["check", "policies/smartlead.toml", "--store", store])
            .status
            .success()
    );
    let missing = dir.path().join("typo.redb");
    let out = creditgate(&["check", policy, "--store", missing.to_str().expect("utf-8")]);
    harness::assert_exit(&out, 2);
    assert!(!missing.exists(), "check created a store");
}
