//! `creditgate check`: validates policy files through the policy component, the way
//! the gateway will read them, and reports every error and warning with its place.
//!
//! The component is the only judge of a policy: the host has no parser of its own
//! that could drift from the one that enforces. Each file is loaded into a fresh
//! worker over an empty in-memory store, so checking touches no state. With
//! `--store`, the policy is also checked against the accounts of a store, which
//! is read, never written.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;

use creditgate::bindings::{Diagnostic, PlanSummary};
use creditgate::gateway::stranded_plans;
use creditgate::runtime::{LoadError, Runtime};
use creditgate::store::{Create, MemoryStore, Store};
use creditgate::time::now;
use creditgate::wire::LimitJson;

use super::{ComponentArgs, Exit, located};

/// Validates policy files, reporting every error and warning.
///
/// Each problem is one line, `error: file:line:column: key: message` (or
/// `warning: ...`), then a summary line. Exit status 0 when no file has errors
/// (warnings allowed), 1 when some file has errors, 2 when a file cannot be read.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy files (TOML).
    #[arg(value_name = "POLICY", required = true)]
    policies: Vec<PathBuf>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    component: ComponentArgs,
    /// Also check the policy against the accounts of this store (a redb file or a
    /// Redis URL, as `--store` elsewhere): a plan that accounts are on and the
    /// policy lacks is an error, as a reload of it would be refused.
    #[arg(long, value_name = "PATH|redis://...")]
    store: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// `error:` and `warning:` lines and a summary, for people.
    Text,
    /// One JSON array with an object per file, for tools.
    Json,
}

/// What checking one file found. Field order is the JSON format's.
#[derive(Debug, Serialize)]
struct FileReport {
    file: String,
    /// `ok`, `warnings`, `errors` or `unreadable`.
    status: &'static str,
    errors: Vec<DiagnosticJson>,
    warnings: Vec<DiagnosticJson>,
    /// The plans of a valid policy, in name order; empty otherwise.
    plans: Vec<PlanJson>,
}

#[derive(Debug, Serialize)]
struct DiagnosticJson {
    file: String,
    /// 1-based; null when the problem has no place (an unreadable file).
    line: Option<u32>,
    column: Option<u32>,
    /// The dotted key path; empty for the document as a whole.
    path: String,
    message: String,
    /// The whole `file:line:column: path: message` line, as text output shows it.
    #[serde(skip)]
    text: String,
}

#[derive(Debug, Serialize)]
struct PlanJson {
    name: String,
    lead_credits: LimitJson,
    email_credits: LimitJson,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    let runtime = args.component.runtime()?;
    let store = match &args.store {
        // Read, never created: a mistyped path is an error, not an empty ledger.
        Some(spec) => Some((spec, super::open_store(Some(spec), Create::Never)?)),
        None => None,
    };
    let reports = args
        .policies
        .iter()
        .map(|file| check(&runtime, file, store.as_ref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    match args.format {
        Format::Text => print!("{}", text(&reports)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
    }
    Ok(exit_status(&reports))
}

fn check(
    runtime: &Runtime,
    file: &Path,
    store: Option<&(&PathBuf, Arc<dyn Store>)>,
) -> anyhow::Result<FileReport> {
    let mut report = FileReport {
        file: file.display().to_string(),
        status: "ok",
        errors: Vec::new(),
        warnings: Vec::new(),
        plans: Vec::new(),
    };
    let policy = match std::fs::read_to_string(file) {
        Ok(policy) => policy,
        Err(e) => {
            report.status = "unreadable";
            report.errors.push(diagnostic(
                file,
                &Diagnostic {
                    message: format!("cannot read: {e}"),
                    path: String::new(),
                    line: 0,
                    column: 0,
                },
            ));
            return Ok(report);
        }
    };
    match runtime.worker(Arc::new(MemoryStore::new()), &policy) {
        Ok((_, summary)) => {
            report.warnings = summary
                .warnings
                .iter()
                .map(|d| diagnostic(file, d))
                .collect();
            report.plans = summary.plans.iter().map(plan).collect();
            if !report.warnings.is_empty() {
                report.status = "warnings";
            }
            if let Some((spec, store)) = store {
                let stranded = stranded_plans(runtime, store.clone(), &policy, now())
                    .with_context(|| {
                        format!("checking {} against {}", file.display(), spec.display())
                    })?;
                for p in stranded {
                    report.status = "errors";
                    report.errors.push(diagnostic(
                        file,
                        &Diagnostic {
                            message: format!(
                                "plan {:?} is not in this policy, and {} account(s) of {} are \
                                 on it: a reload would be refused (move them first, or force it)",
                                p.plan,
                                p.accounts,
                                spec.display()
                            ),
                            path: "plans".into(),
                            line: 0,
                            column: 0,
                        },
                    ));
                }
            }
        }
        Err(LoadError::Policy(diagnostics)) => {
            report.status = "errors";
            report.errors = diagnostics.iter().map(|d| diagnostic(file, d)).collect();
        }
        // The component failed, not the policy: nothing can be said about the file.
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("checking {}", file.display())));
        }
    }
    Ok(report)
}

fn diagnostic(file: &Path, d: &Diagnostic) -> DiagnosticJson {
    let place = |n: u32| (d.line != 0).then_some(n);
    DiagnosticJson {
        file: file.display().to_string(),
        line: place(d.line),
        column: place(d.column),
        path: d.path.clone(),
        message: d.message.clone(),
        text: located(file, d),
    }
}

fn plan(p: &PlanSummary) -> PlanJson {
    PlanJson {
        name: p.name.clone(),
        lead_credits: p.lead_credits.into(),
        email_credits: p.email_credits.into(),
    }
}

fn text(reports: &[FileReport]) -> String {
    let mut out = String::new();
    for report in reports {
        for e in &report.errors {
            out += &format!("error: {}\n", e.text);
        }
        for w in &report.warnings {
            out += &format!("warning: {}\n", w.text);
        }
    }
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let errors = reports.iter().map(|r| r.errors.len()).sum();
    let warnings = reports.iter().map(|r| r.warnings.len()).sum();
    let failed = reports.iter().filter(|r| !r.errors.is_empty()).count();
    let mut errors = count(errors, "error");
    if reports.len() > 1 && failed > 0 {
        errors += &format!(" in {}", count(failed, "file"));
    }
    out += &format!(
        "checked {}: {errors}, {}\n",
        count(reports.len(), "policy file"),
        count(warnings, "warning"),
    );
    out
}

fn exit_status(reports: &[FileReport]) -> Exit {
    if reports.iter().any(|r| r.status == "unreadable") {
        Exit::InputError
    } else if reports.iter().any(|r| !r.errors.is_empty()) {
        Exit::Failed
    } else {
        Exit::Success
    }
}
