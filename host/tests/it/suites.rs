//! `creditgate test` end to end: the shipped suites under `policies/tests/` pass, a
//! fixture suite with deliberate failures prints its golden report, and invalid
//! suites are input errors. Golden files are rewritten with `UPDATE_GOLDEN=1`.

use std::path::Path;

use crate::check::{creditgate, golden, repo, text};

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
    let cases: usize = suite_files(&repo().join("policies/tests"))
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
    let named: Vec<std::path::PathBuf> = suite_files(&repo().join("policies/tests"))
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
        let policy = repo().join(policy).canonicalize().expect("policy exists");
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
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().last(), Some("1 passed, 2 failed"));
    if let Some(difference) = golden("host/tests/fixtures/suites/mixed.expected", &stdout) {
        panic!("{difference}");
    }
}

#[test]
fn a_filter_runs_only_the_cases_whose_name_contains_it() {
    let out = creditgate(&[
        "test",
        "--filter",
        "mixed::pass",
        "host/tests/fixtures/suites",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout),
        "running 1 case from 1 suite (2 filtered out)\n\n\
         test mixed::passes ... ok\n\n\
         1 passed, 0 failed\n"
    );

    let out = creditgate(&[
        "test",
        "--filter",
        "expects_usage",
        "host/tests/fixtures/suites",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).lines().last(), Some("0 passed, 1 failed"));
}

#[test]
fn invalid_suites_are_input_errors_and_nothing_runs() {
    let out = creditgate(&["test", "host/tests/fixtures/invalid-suites"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "");
    if let Some(difference) = golden(
        "host/tests/fixtures/invalid-suites/errors.expected",
        &text(&out.stderr),
    ) {
        panic!("{difference}");
    }
}

#[test]
fn a_missing_path_is_an_input_error() {
    let out = creditgate(&["test", "policies/no-such-suites"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("error: cannot read policies/no-such-suites: "),
        "{}",
        text(&out.stderr)
    );
}
