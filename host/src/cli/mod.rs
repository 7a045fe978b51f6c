//! Command-line front end: one module per subcommand, each a thin adapter over the
//! library.

mod account;
mod alerts;
mod check;
mod leads;
mod replay;
mod serve;
mod store;
mod test;
mod usage;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use creditgate::bindings::Diagnostic;
use creditgate::runtime::{ComponentSource, LoadError, Runtime, RuntimeConfig, Worker};
use creditgate::store::{MemoryStore, RedbStore, RedisStore, Store, is_redis_url};

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
    Check(check::Args),
    Test(test::Args),
    /// Lead imports, deletions and listings.
    #[command(subcommand)]
    Leads(leads::Command),
    /// Subscriptions and plans.
    #[command(subcommand)]
    Account(account::Command),
    Usage(usage::Args),
    Serve(serve::Args),
    /// Operations on whole stores: copies between backends.
    #[command(subcommand)]
    Store(store::Command),
    /// The credit alerts that fired.
    #[command(subcommand)]
    Alerts(alerts::Command),
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
        Command::Check(args) => check::run(args),
        Command::Test(args) => test::run(args),
        Command::Leads(command) => leads::run(command),
        Command::Account(command) => account::run(command),
        Command::Usage(args) => usage::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Store(command) => store::run(command),
        Command::Alerts(command) => alerts::run(command),
    }
}

/// Options every command that decides shares.
#[derive(Debug, clap::Args)]
struct PolicyArgs {
    /// Policy file (TOML). Default: policies/smartlead.toml if it exists here, else
    /// the copy of it built into the binary.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    component: ComponentArgs,
}

/// `--component`, for every command that runs the policy.
#[derive(Debug, clap::Args)]
struct ComponentArgs {
    /// A component implementing the `creditgate:policy/policy-engine` world, instead
    /// of the one built from `guest/`.
    #[arg(long, value_name = "FILE")]
    component: Option<PathBuf>,
}

impl ComponentArgs {
    /// Compiles (or loads the cached compilation of) the component.
    fn runtime(&self) -> anyhow::Result<Runtime> {
        // These are offline tools, not a gateway: a decision slowed by a busy
        // machine (a large import on two cores, a CI run) must not be taken for a
        // runaway guest. A real loop is still cut off, after seconds, not hours.
        let config = RuntimeConfig {
            decision_budget: Duration::from_secs(2),
            ..RuntimeConfig::default()
        };
        let source = self
            .component
            .clone()
            .map_or(ComponentSource::Builtin, ComponentSource::File);
        Ok(Runtime::new(&source, config)?)
    }
}

/// The default policy's path, and its text as built in.
const DEFAULT_POLICY: &str = "policies/smartlead.toml";
const BUILTIN_POLICY: &str = include_str!("../../../policies/smartlead.toml");

impl PolicyArgs {
    /// The policy's name for messages and its text.
    fn load(&self) -> anyhow::Result<(PathBuf, String)> {
        let path = self
            .policy
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY));
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            // Outside a checkout, the operator commands still work on Smartlead's plans.
            Err(e) if self.policy.is_none() && e.kind() == std::io::ErrorKind::NotFound => Ok((
                PathBuf::from("(built-in smartlead.toml)"),
                BUILTIN_POLICY.to_string(),
            )),
            Err(e) => Err(e).with_context(|| format!("cannot read policy {}", path.display())),
        }
    }

    /// Compiles the component and makes a worker over `store` with the policy loaded.
    fn worker(&self, store: Arc<dyn Store>) -> anyhow::Result<Worker> {
        Ok(self.worker_and_plans(store)?.0)
    }

    /// [`PolicyArgs::worker`], and the names of the policy's plans (for messages
    /// that say which plans exist).
    fn worker_and_plans(&self, store: Arc<dyn Store>) -> anyhow::Result<(Worker, Vec<String>)> {
        let (path, policy) = self.load()?;
        match self.component.runtime()?.worker(store, &policy) {
            Ok((worker, summary)) => {
                for warning in &summary.warnings {
                    eprintln!("warning: {}", located(&path, warning));
                }
                let plans = summary.plans.into_iter().map(|p| p.name).collect();
                Ok((worker, plans))
            }
            Err(LoadError::Policy(diagnostics)) => {
                let lines: Vec<String> = diagnostics.iter().map(|d| located(&path, d)).collect();
                anyhow::bail!("invalid policy {}:\n{}", path.display(), lines.join("\n"))
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

/// Opens a store: a Redis server or cluster when `spec` is a Redis URL, else a
/// redb file; a fresh in-memory one without `spec`.
fn open_store(spec: Option<&Path>) -> anyhow::Result<Arc<dyn Store>> {
    let Some(spec) = spec else {
        return Ok(Arc::new(MemoryStore::new()));
    };
    if let Some(url) = redis_url(spec) {
        // The URL may carry a password: the error names the server without it.
        let store = RedisStore::open(url).context("cannot open the Redis store")?;
        return Ok(Arc::new(store));
    }
    let store =
        RedbStore::open(spec).with_context(|| format!("cannot open store {}", spec.display()))?;
    Ok(Arc::new(store))
}

/// The Redis URL a `--store` value is, if it is one.
fn redis_url(spec: &Path) -> Option<&str> {
    spec.to_str().filter(|s| is_redis_url(s))
}

/// Whether a `--store` value (from the command line or `serve`'s config file)
/// names a file, as opposed to `memory` or a Redis URL: only a file's path is
/// taken relative to the config file.
pub(crate) fn names_a_file(spec: &Path) -> bool {
    spec.as_os_str() != "memory" && redis_url(spec).is_none()
}

/// Output format of the operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
enum Format {
    /// For people.
    #[default]
    Text,
    /// One JSON document, for programs.
    Json,
}

/// `--store` of the operator commands: the embedded redb file by default (the one
/// `serve` uses), `memory` for a throwaway run, or the Redis ledger several
/// gateway hosts share.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// A redb file; `memory` for a throwaway in-memory store;
    /// redis://[USER:PASS@]HOST:PORT[/DB] for a Redis server, or
    /// redis+cluster://HOST:PORT,HOST:PORT,... for a Redis Cluster (options:
    /// ?prefix=NAME&connect_timeout_ms=N&call_timeout_ms=N). Default:
    /// $CREDITGATE_STORE, else $XDG_DATA_HOME/creditgate/creditgate.redb, else
    /// ~/.local/share/creditgate/creditgate.redb.
    #[arg(long, value_name = "PATH|memory|redis://...")]
    store: Option<PathBuf>,
}

impl StoreArgs {
    fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        let spec = match &self.store {
            Some(spec) => spec.clone(),
            None => creditgate::store::default_path().context(
                "no default store path: set $CREDITGATE_STORE or $HOME, or pass --store",
            )?,
        };
        if spec.as_os_str() == "memory" {
            return open_store(None);
        }
        // Only the default location is created for the user; $CREDITGATE_STORE
        // may name a Redis URL, which has no directory.
        if self.store.is_none()
            && names_a_file(&spec)
            && let Some(dir) = spec.parent()
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        open_store(Some(&spec))
    }
}
