//! `creditgate test`: runs policy test suites (see [`creditgate::policy_suite`]) and
//! reports like `cargo test`: a line per case, then each failure, then
//! `N passed, M failed`.

use std::io::Write as _;
use std::path::PathBuf;

use creditgate::policy_suite::{CaseResult, Failure, Problem, Suite, SuiteError, discover};

use super::{ComponentArgs, Exit, located};

/// Where suites live when no path is given.
const DEFAULT_PATH: &str = "policies/tests";

/// Runs policy test suites: events with the decisions they must get.
///
/// Prints a line per case, each failure, then `N passed, M failed`. Exit status 0
/// when every case passes, 1 when one fails, 2 when a suite or its policy is invalid
/// (nothing runs then). The suite format is described in policies/tests/README.md.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Suite files, or folders searched recursively for `*.toml` suites (files with a
    /// top-level `plans` table are policies, and skipped).
    #[arg(value_name = "PATH", default_value = DEFAULT_PATH)]
    paths: Vec<PathBuf>,
    /// Runs only the cases whose `suite::case` name contains NAME.
    #[arg(long, value_name = "NAME")]
    filter: Option<String>,
    #[command(flatten)]
    component: ComponentArgs,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    let mut problems = Vec::new();
    let mut suites = Vec::new();
    for path in &args.paths {
        match discover(path) {
            Ok(found) => {
                for (file, name) in found {
                    match Suite::load_all(&file, name) {
                        Ok(suite) => suites.push(suite),
                        Err(every) => problems.extend(every),
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }

    let runtime = args.component.runtime()?;
    let mut checked = Vec::new();
    for suite in &suites {
        // Many suites share a policy: check each once.
        if checked.contains(&suite.policy_path) {
            continue;
        }
        checked.push(suite.policy_path.clone());
        if let Err(e) = suite.check_policy(&runtime) {
            problems.push(e);
        }
    }
    if !problems.is_empty() {
        for problem in &problems {
            report_problem(problem);
        }
        eprintln!(
            "creditgate: error: {} problem(s) in the suites; no case ran",
            problems.len()
        );
        return Ok(Exit::InputError);
    }

    let selected: Vec<(&Suite, usize)> = suites
        .iter()
        .flat_map(|suite| (0..suite.cases.len()).map(move |i| (suite, i)))
        .filter(|(suite, i)| {
            args.filter
                .as_deref()
                .is_none_or(|f| full_name(suite, *i).contains(f))
        })
        .collect();
    let total: usize = suites.iter().map(|s| s.cases.len()).sum();
    let mut out = std::io::stdout().lock();
    let mut suite_names: Vec<&str> = selected.iter().map(|(s, _)| s.name.as_str()).collect();
    suite_names.dedup();
    let filtered = total - selected.len();
    writeln!(
        out,
        "running {} from {}{}\n",
        count(selected.len(), "case"),
        count(suite_names.len(), "suite"),
        if filtered > 0 {
            format!(" ({filtered} filtered out)")
        } else {
            String::new()
        }
    )?;

    let mut failures = Vec::new();
    for (suite, i) in &selected {
        let name = full_name(suite, *i);
        let result = suite.run_case(&runtime, &suite.cases[*i]);
        let verdict = match result {
            CaseResult::Passed => "ok",
            CaseResult::Failed(failure) => {
                failures.push((name.clone(), suite, failure));
                "FAILED"
            }
        };
        writeln!(out, "test {name} ... {verdict}")?;
        out.flush()?;
    }

    if !failures.is_empty() {
        writeln!(out, "\nfailures:")?;
        for (name, suite, failure) in &failures {
            write!(out, "\n---- {name} ----\n{}", describe(suite, failure))?;
        }
        writeln!(out, "\nfailures:")?;
        for (name, _, _) in &failures {
            writeln!(out, "    {name}")?;
        }
    }
    writeln!(
        out,
        "\n{} passed, {} failed",
        selected.len() - failures.len(),
        failures.len()
    )?;
    Ok(if failures.is_empty() {
        Exit::Success
    } else {
        Exit::Failed
    })
}

fn full_name(suite: &Suite, case: usize) -> String {
    format!("{}::{}", suite.name, suite.cases[case].name)
}

fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn report_problem(problem: &SuiteError) {
    match problem {
        SuiteError::Policy {
            suite,
            policy,
            diagnostics,
        } => {
            for d in diagnostics {
                eprintln!("error: {}", located(policy, d));
            }
            eprintln!("  (the policy of {})", suite.display());
        }
        other => eprintln!("error: {other}"),
    }
}

/// A failure's report: where, the event, each differing field, the whole output.
fn describe(suite: &Suite, failure: &Failure) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    if failure.step > 0 {
        rows.push(("event".into(), failure.event.clone()));
    }
    match &failure.problem {
        Problem::Mismatch { mismatches, actual } => {
            for m in mismatches {
                rows.push((
                    m.field.to_string(),
                    format!("expected {}, found {}", m.expected, m.actual),
                ));
            }
            rows.push(("actual".into(), actual.clone()));
        }
        Problem::Error(message) => rows.push(("error".into(), message.clone())),
    }
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 1;
    let mut text = if failure.step > 0 {
        format!(
            "step {} ({}:{}:{}):\n",
            failure.step,
            suite.path.display(),
            failure.line,
            failure.column
        )
    } else {
        format!("{}:\n", suite.path.display())
    };
    for (label, value) in rows {
        text += &format!("  {:<width$} {value}\n", format!("{label}:"));
    }
    text
}
