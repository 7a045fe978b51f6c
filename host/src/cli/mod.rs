//! Command-line front end: one module per subcommand, each a thin adapter over the
//! library.

mod replay;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use creditgate::bindings::Diagnostic;
use creditgate::runtime::{ComponentSource, LoadError, Runtime, RuntimeConfig, Worker};
use creditgate::store::{MemoryStore, RedbStore, Store};

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  a decision, check or test failed (for replay: some event line was invalid or got no decision)
  2  usage or input error (bad arguments, unreadable or invalid policy, store unavailable)";

/// Enforces lead and email credits at the mail gateway, through a WebAssembly policy.
#[derive(Debug, Parser)]
#[command(name = "creditgate", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Replay(replay::Args),
}

/// Documented exit statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    Failed = 1,
    InputError = 2,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Replay(args) => replay::run(args),
    }
}

/// Options every command that decides shares.
#[derive(Debug, clap::Args)]
struct PolicyArgs {
    /// Policy file (TOML).
    #[arg(long, value_name = "FILE", default_value = "policies/smartlead.toml")]
    policy: PathBuf,
    /// A component implementing the `creditgate:policy/policy-engine` world, instead
    /// of the one built from `guest/`.
    #[arg(long, value_name = "FILE")]
    component: Option<PathBuf>,
}

impl PolicyArgs {
    /// Compiles the component and makes a worker over `store` with the policy loaded.
    fn worker(&self, store: Arc<dyn Store>) -> anyhow::Result<Worker> {
        let policy = std::fs::read_to_string(&self.policy)
            .with_context(|| format!("cannot read policy {}", self.policy.display()))?;
        let source = self
            .component
            .clone()
            .map_or(ComponentSource::Builtin, ComponentSource::File);
        let runtime = Runtime::new(&source, RuntimeConfig::default())?;
        match runtime.worker(store, &policy) {
            Ok((worker, summary)) => {
                for warning in &summary.warnings {
                    eprintln!("warning: {}", located(&self.policy, warning));
                }
                Ok(worker)
            }
            Err(LoadError::Policy(diagnostics)) => {
                let lines: Vec<String> = diagnostics
                    .iter()
                    .map(|d| located(&self.policy, d))
                    .collect();
                anyhow::bail!(
                    "invalid policy {}:\n{}",
                    self.policy.display(),
                    lines.join("\n")
                )
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// `file:line:column: key.path: message`, the way compilers point at a problem.
fn located(file: &Path, d: &Diagnostic) -> String {
    let place = if d.line == 0 {
        file.display().to_string()
    } else {
        format!("{}:{}:{}", file.display(), d.line, d.column)
    };
    if d.path.is_empty() {
        format!("{place}: {}", d.message)
    } else {
        format!("{place}: {}: {}", d.path, d.message)
    }
}

/// Opens a store: a redb file, or a fresh in-memory one.
fn open_store(path: Option<&Path>) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match path {
        None => Arc::new(MemoryStore::new()),
        Some(path) => Arc::new(
            RedbStore::open(path)
                .with_context(|| format!("cannot open store {}", path.display()))?,
        ),
    })
}
