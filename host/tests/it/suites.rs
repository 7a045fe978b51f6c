//! `creditgate test` end to end: the shipped suites under `policies/tests/` pass, a
//! fixture suite with deliberate failures prints its golden report, and invalid
//! suites are input errors. Golden files are rewritten with `UPDATE_GOLDEN=1`.

use std::path::Path;

use crate::check::{assert_golden, assert_golden_stderr, creditgate};
use crate::harness::{self, text, words};

/// Suite files under `dir`, recursively: the `.toml` files with a `[[case]]`.
fn suite_files(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(suite_files(&path));
        } else if path.extension().is_some_and(|e| e == "toml") {
            let content = std::fs::read_to_string(&path).expect("readable suite");
            if content.lines().any(|l| l.trim() == "[[case]]") {
                found.push((path, content));
            }
        }
    }
    found
}

#[test]
fn the_shipped_suites_all_pass() {
    // Counted here independently of the runner, so that a suite it failed to find
    // or a case it skipped shows up as a wrong total.
    let cases: usize = suite_files(&harness::repo().join("policies/tests"))
        .iter()
        .map(|(_, content)| content.lines().filter(|l| l.trim() == "[[case]]").count())
        .sum();
    assert!(cases >= 40, "only {cases} cases under policies/tests");

    let out = creditgate(&["test"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with(" ... ok")).count(),
        cases,
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some(&*format!("{cases} passed, 0 failed"))
    );
    assert!(stdout.starts_with(&format!("running {cases} cases from ")));
}

#[test]
fn every_shipped_policy_is_documented_by_a_suite() {
    let named: Vec<std::path::PathBuf> = suite_files(&harness::repo().join("policies/tests"))
        .iter()
        .map(|(path, content)| {
            let suite: toml::Table = toml::from_str(content).expect("suite parses");
            let policy = suite["policy"].as_str().expect("policy is a string");
            path.parent()
                .expect("folder")
                .join(policy)
                .canonicalize()
                .expect("policy exists")
        })
        .collect();
    for policy in ["policies/smartlead.toml", "policies/example.toml"] {
        let policy = harness::repo()
            .join(policy)
            .canonicalize()
            .expect("policy exists");
        assert!(
            named.contains(&policy),
            "no suite tests {}",
            policy.display()
        );
    }
}

#[test]
fn a_failing_suite_prints_its_golden_report_and_exits_1() {
    let out = creditgate(&["test", "host/tests/fixtures/suites"]);
    harness::assert_exit(&out, 1);
    assert_eq!(text(&out.stderr), "");
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().last(), Some("1 passed, 2 failed"));
    assert_golden("host/tests/fixtures/suites/mixed.expected", &stdout);
}

#[test]
fn a_filter_runs_only_the_cases_whose_name_contains_it() {
    let out = creditgate(&words(
        "test --filter mixed::pass host/tests/fixtures/suites",
    ));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout),
        "running 1 case from 1 suite (2 filtered out)\n\n\
         test mixed::passes ... ok\n\n\
         1 passed, 0 failed\n"
    );

    let out = creditgate(&words(
        "test --filter expects_usage host/tests/fixtures/suites",
    ));
    harness::assert_exit(&out, 1);
    assert_eq!(text(&out.stdout).lines().last(), Some("0 passed, 1 failed"));
}

#[test]
fn invalid_suites_are_input_errors_and_nothing_runs() {
    let out = creditgate(&["test", "host/tests/fixtures/invalid-suites"]);
    harness::assert_exit(&out, 2);
    assert_golden_stderr(&out, "host/tests/fixtures/invalid-suites/errors.expected");
}

#[test]
fn a_missing_path_is_an_input_error() {
    let out = creditgate(&["test", "policies/no-such-suites"]);
    harness::assert_exit(&out, 2);
    harness::assert_starts(
        &text(&out.stderr),
        "error: cannot read policies/no-such-suites: ",
    );
}

/// Writes `files` (name, content) into a fresh temp dir.
fn temp_files(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("folder");
        std::fs::write(path, content).expect("written");
    }
    dir
}

const TWO_PLANS: &str = "[plans.base]\nlead_credits = 2\nemail_credits = 10\n";

/// Issue 13.12: a suite with several invalid cases reported only the first;
/// every one is reported now, each at its line, and nothing runs.
#[test]
fn every_invalid_case_of_a_suite_is_reported() {
    let dir = temp_files(&[
        ("policy.toml", TWO_PLANS),
        (
            "bad.toml",
            concat!(
                "policy = \"policy.toml\"\n",
                "\n",
                "[[case]]\n",
                "name = \"misspelt_op\"\n",
                "steps = [\n",
                "  { at = \"2025-01-31T09:00:00Z\", op = \"subscrbe\", account = \"a\", plan = \"base\" },\n",
                "]\n",
                "\n",
                "[[case]]\n",
                "name = \"fine\"\n",
                "steps = [{ at = \"2025-01-31T09:00:00Z\", op = \"usage\", account = \"a\" }]\n",
                "\n",
                "[[case]]\n",
                "name = \"misspelt_expectation\"\n",
                "steps = [\n",
                "  { at = \"2025-01-31T09:00:00Z\", op = \"usage\", account = \"a\", expect = { chargd = 3 } },\n",
                "]\n",
            ),
        ),
    ]);
    let suite = dir.path().join("bad.toml");
    let out = crate::harness::creditgate_command()
        .arg("test")
        .arg(&suite)
        .output()
        .expect("runs");
    harness::assert_exit(&out, 2);
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    let at = |line: u32| format!("error: {}:{line}:", suite.display());
    assert!(
        errors[0].starts_with(&at(6)) && errors[0].contains("subscrbe"),
        "{stderr}"
    );
    assert!(
        errors[1].starts_with(&at(16)) && errors[1].contains("chargd"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("2 problem(s) in the suites; no case ran\n"),
        "{stderr}"
    );
}

/// Issue 13.12: `creditgate test PATH` from outside a checkout: the suite names
/// its policy relative to itself, not to the current directory, and every
/// failing case of the suite is reported, not only the first.
#[test]
fn a_suite_runs_from_any_directory_and_reports_every_failing_case() {
    let dir = temp_files(&[
        ("suites/policies/tiny.toml", TWO_PLANS),
        (
            "suites/billing.toml",
            concat!(
                "policy = \"policies/tiny.toml\"\n",
                "[[case]]\nname = \"first_fails\"\n",
                "steps = [{ at = \"2025-01-31T09:00:00Z\", op = \"subscribe\", account = \"a\", plan = \"base\", expect = { decision = \"deny\" } }]\n",
                "[[case]]\nname = \"passes\"\n",
                "steps = [{ at = \"2025-01-31T09:00:00Z\", op = \"subscribe\", account = \"a\", plan = \"base\", expect = { lead_credits.limit = 2 } }]\n",
                "[[case]]\nname = \"second_fails\"\n",
                "steps = [{ at = \"2025-01-31T09:00:00Z\", op = \"subscribe\", account = \"a\", plan = \"base\", expect = { charged = 3 } }]\n",
            ),
        ),
    ]);
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let out = crate::harness::creditgate_command()
        .current_dir(elsewhere.path())
        .arg("test")
        .arg(dir.path().join("suites"))
        .output()
        .expect("runs");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    for line in [
        "test billing::first_fails ... FAILED",
        "test billing::passes ... ok",
        "test billing::second_fails ... FAILED",
        "---- billing::first_fails ----",
        "---- billing::second_fails ----",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in\n{stdout}"
        );
    }
    assert_eq!(stdout.lines().last(), Some("1 passed, 2 failed"));
}

#[test]
fn the_suite_format_is_documented_and_linked_from_the_readme() {
    let readme = harness::repo_text("README.md");
    assert!(
        readme.contains("(policies/tests/README.md)"),
        "the README does not link the suite format"
    );
    let format = harness::repo_text("policies/tests/README.md");
    for key in [
        "policy",
        "[[case]]",
        "name",
        "steps",
        "[[case.steps]]",
        "expect",
        "decision",
        "reason",
        "charged",
        "freed",
        "lead_credits.used",
        "lead_credits.limit",
        "email_credits.used",
        "email_credits.limit",
        "email_credits.resets_at",
        "--filter",
        "--component",
    ] {
        assert!(
            format.contains(key),
            "policies/tests/README.md does not mention {key}"
        );
    }
}
