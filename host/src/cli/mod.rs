//! Command-line front end: one module per subcommand, each a thin adapter over the
//! library.

mod account;
mod alerts;
mod check;
mod docs;
mod leads;
mod leads_remote;
mod locked;
mod plans;
mod remote;
mod replay;
mod serve;
mod serve_check;
mod store;
mod test;
mod usage;

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use creditgate::in_force::InForce;
use creditgate::names::NameRules;
pub(crate) use creditgate::runtime::located;
use creditgate::runtime::{ComponentSource, LoadError, Runtime, RuntimeConfig, Worker};
use creditgate::serve::PolicySource;
use creditgate::store::{
    Create, MemoryStore, OpenOptions, RedbStore, RedisStore, Store, StoreError, is_redis_url,
    names_a_file,
};
use remote::{Server, ServerArgs};

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  a decision, check or test failed (for replay: some event line was invalid or got no decision)
  2  usage or input error (bad arguments, unreadable or invalid policy, a store file that
     is missing, empty or not a store)
 75  unavailable: the store, its backend or the gateway asked could not be reached or
     could not commit, another process holds the store, or the store's journal is
     missing after a crash; nothing was applied, and the same command may succeed later
     (sysexits' EX_TEMPFAIL)

Errors are one line on stderr, `creditgate: error: ...`; a denial reads
`creditgate: error: account \"NAME\": denied: CODE (...)`. With --format json, stdout
holds one JSON document when the command succeeds, and nothing when it fails.

While `creditgate serve` holds the store, pass --server URL (or set
$CREDITGATE_SERVER) to ask the running gateway instead.";

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
    Plans(plans::Args),
    Serve(serve::Args),
    Reload(plans::ReloadArgs),
    /// Operations on whole stores: copies between backends.
    #[command(subcommand)]
    Store(store::Command),
    /// The credit alerts that fired.
    #[command(subcommand)]
    Alerts(alerts::Command),
    Completions(docs::CompletionsArgs),
    Man(docs::ManArgs),
}

/// Documented exit statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    Failed = 1,
    InputError = 2,
    /// Nothing is wrong with what was asked, but what it needs could not be reached
    /// or could not commit: retrying later may succeed. 75 is sysexits'
    /// `EX_TEMPFAIL`, which mail software (Postfix's `pipe`, cron wrappers) already
    /// reads as "try again later", and scripts can tell it from a usage error.
    Unavailable = 75,
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
        Command::Plans(args) => plans::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Reload(args) => plans::reload(args),
        Command::Store(command) => store::run(command),
        Command::Alerts(command) => alerts::run(command),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
    }
}

/// The exit status of a command that failed with `err`: 1 when the policy denied
/// what was asked (the command ran, the answer was no), 75 when the store, its
/// backend or the gateway was unavailable, else 2.
pub fn exit_of_error(err: &anyhow::Error) -> Exit {
    if err.chain().any(|e| e.is::<Denied>()) {
        Exit::Failed
    } else if err.chain().any(is_unavailable) {
        Exit::Unavailable
    } else {
        Exit::InputError
    }
}

/// Whether `e` says that something the command needs could not be reached or
/// could not commit, as opposed to something wrong with what was asked.
fn is_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    use creditgate::bindings::{GuestError, StateError};
    use creditgate::gateway::GatewayError;
    use creditgate::runtime::{DecideError, DurableError};

    let decide = |e: &DecideError| {
        matches!(
            e,
            DecideError::Policy(GuestError::State(StateError::Unavailable(_)))
        )
    };
    if let Some(e) = e.downcast_ref::<StoreError>() {
        matches!(
            e,
            StoreError::Unavailable(_)
                | StoreError::Locked { .. }
                | StoreError::JournalMissing { .. }
        )
    } else if let Some(e) = e.downcast_ref::<DecideError>() {
        decide(e)
    } else if let Some(e) = e.downcast_ref::<DurableError>() {
        match e {
            DurableError::Decide(e) => decide(e),
            // Its source, the store's error, is judged as the next link.
            _ => false,
        }
    } else if let Some(e) = e.downcast_ref::<GatewayError>() {
        match e {
            GatewayError::Decide(e) => decide(e),
            GatewayError::Persist(_) => true,
            _ => false,
        }
    } else if let Some(e) = e.downcast_ref::<ureq::Error>() {
        // Reaching the gateway failed; a malformed URL or answer is not this.
        matches!(
            e,
            ureq::Error::Io(_)
                | ureq::Error::Timeout(_)
                | ureq::Error::HostNotFound
                | ureq::Error::ConnectionFailed
                | ureq::Error::BodyStalled
        )
    } else {
        e.is::<Unavailable>()
    }
}

/// Something a command needs is unavailable, said in the command's own words (the
/// store held by a running gateway, a gateway answering 503): exit status 75.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

/// The policy denied what a command asked about one account: the same error,
/// worded the same way, whether the store was opened here or a gateway was asked.
#[derive(Debug, thiserror::Error)]
#[error("account {account:?}: denied: {code} ({}){}", explain(code), detail.as_deref().map(|d| format!("; {d}")).unwrap_or_default())]
pub struct Denied {
    account: String,
    code: String,
    /// What exactly was refused, where the command knows (the plan asked for
    /// and the plans there are; the address and what is wrong with it).
    detail: Option<String>,
}

impl Denied {
    pub fn new(account: &str, code: &str) -> Self {
        Denied {
            account: account.to_owned(),
            code: code.to_owned(),
            detail: None,
        }
    }

    /// The same denial, saying what exactly was refused.
    pub fn with_detail(self, detail: String) -> Self {
        Denied {
            detail: Some(detail),
            ..self
        }
    }

    /// The denial of a decision, if it is one, naming the plan that would have
    /// allowed it when the policy names one.
    fn of(account: &str, decision: &creditgate::bindings::Decision) -> Option<Self> {
        let denied = decision
            .denied
            .map(|reason| Denied::new(account, creditgate::wire::reason_code(reason)))?;
        Some(match &decision.upgrade_to {
            Some(plan) => denied.with_detail(format!("upgrade to plan {plan:?} to allow it")),
            None => denied,
        })
    }
}

fn explain(code: &str) -> &'static str {
    match code {
        "unknown_account" => "no such account: subscribe it to a plan first",
        "unknown_plan" => "the plan is not in the policy in force",
        "already_subscribed" => "it is on a plan already: change its plan instead",
        "lead_credits_exhausted" => "no lead credits left",
        "email_credits_exhausted" => "no email credits left",
        "invalid_email" => "not a valid address",
        "no_recipients" => "no recipients",
        "idempotency_key_reused" => "the message id was charged for another message",
        _ => "refused by the policy",
    }
}

/// Where a command that reads or changes accounts works: a running gateway
/// (`--server`), else a store (`--store`) under a policy (`--policy`,
/// `--component`).
#[derive(Debug, clap::Args)]
struct Place {
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    server: ServerArgs,
}

impl Place {
    /// The gateway to ask, if any (see [`ServerArgs::client`]).
    fn server(&self) -> anyhow::Result<Option<Server>> {
        self.server.client(self.store.store.is_some())
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

impl PolicyArgs {
    /// Where the policy and component come from, as `serve` takes them.
    fn source(&self) -> PolicySource {
        PolicySource {
            policy: self.policy.clone(),
            component: self.component.component.clone(),
        }
    }

    /// The policy's name for messages and its text: the default policy's file
    /// when it is here, else the copy of it built in.
    fn load(&self) -> anyhow::Result<(PathBuf, String)> {
        Ok(self.source().load()?)
    }

    /// The policy to decide under on `store`: the one a gateway recorded there
    /// (see [`creditgate::in_force`]) when `--policy` is left out, else the file,
    /// which must then be the policy in force. A store no gateway has served
    /// takes the policy as [`PolicyArgs::load`] finds it. Refused, too, when
    /// this command takes names otherwise than the gateway: the names it was
    /// given may then be other accounts than the gateway's.
    fn in_force(&self, store: &dyn Store) -> anyhow::Result<(PathBuf, String)> {
        let Some(terms) = InForce::read(store)? else {
            return self.load();
        };
        let names = NameRules::from_env();
        if terms.case_sensitive_names != names.case_sensitive {
            let (theirs, set) = match terms.case_sensitive_names {
                true => ("case-sensitive", "1"),
                false => ("lowercased", "0"),
            };
            anyhow::bail!(
                "the gateway on this store takes names {theirs} (case_sensitive_names = {}; \
                 its terms: {}), and this command would not: set {}={set} to work on it",
                terms.case_sensitive_names,
                terms.describe(),
                creditgate::names::CASE_SENSITIVE_ENV
            );
        }
        if self.policy.is_none() {
            let source = format!("{} (the policy in force on the store)", terms.source);
            return Ok((PathBuf::from(source), terms.policy));
        }
        let (path, text) = self.load()?;
        if !terms.is(&text) {
            anyhow::bail!(
                "{} (sha256 {}) is not the policy in force on this store: its gateway \
                 decides under {}. Leave out --policy to decide under the policy in \
                 force, or reload the gateway with this file first",
                path.display(),
                &creditgate::in_force::digest(&text)[..12],
                terms.describe()
            );
        }
        Ok((path, text))
    }

    /// Compiles the component and makes a worker over `store` with the policy loaded.
    fn worker(&self, store: Arc<dyn Store>) -> anyhow::Result<Worker> {
        Ok(self.worker_and_plans(store)?.0)
    }

    /// [`PolicyArgs::worker`], and the names of the policy's plans (for messages
    /// that say which plans exist).
    fn worker_and_plans(&self, store: Arc<dyn Store>) -> anyhow::Result<(Worker, Vec<String>)> {
        let (path, policy) = self.in_force(store.as_ref())?;
        match self.component.runtime()?.worker(store, &policy) {
            Ok((mut worker, summary)) => {
                for warning in &summary.warnings {
                    eprintln!("warning: {}", located(&path, warning));
                }
                // Alerts are logged in the store by the worker; the command line
                // delivers them on stderr once durable (webhooks are `serve`'s).
                worker.set_notifier(creditgate::alerts::Notifier::stderr());
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

/// Opens a store: a Redis server or cluster when `spec` is a Redis URL, else a
/// redb file, created only as `create` allows; a fresh in-memory one without `spec`.
fn open_store(spec: Option<&Path>, create: Create) -> anyhow::Result<Arc<dyn Store>> {
    let options = OpenOptions {
        create,
        ..OpenOptions::default()
    };
    open_store_with(spec, options)
}

/// Logs (for `serve`, whose log is on by now) when the Redis server could lose
/// what gateways acknowledged in a crash or a failover, or when it would not say.
fn warn_unless_durable(store: &RedisStore) {
    match store.durability() {
        Ok(durability) => {
            if let Some(risk) = durability.risk() {
                tracing::warn!(redis = store.label(), %durability,
                    "a crash of Redis can lose {risk} that gateways answered as allowed: \
                     run it with appendonly yes and appendfsync always");
            }
        }
        Err(e) => tracing::info!(error = %e,
            "cannot read Redis's durability settings: make sure it runs with appendonly yes \
             and appendfsync always"),
    }
    match store.replicated_primaries() {
        Ok(_) if store.replicas_waited_for() > 0 => {}
        Ok(replicated) => {
            for (node, replicas) in replicated {
                tracing::warn!(redis = store.label(), %node, replicas,
                    "Redis replicates after it answers: a failover to one of these replicas \
                     can lose the last charges gateways answered as allowed, and sell those \
                     credits again. Add ?replicas=N to the store's URL so that every write \
                     waits for N replicas, or promote only a replica whose master_repl_offset \
                     has caught up with its primary's (README, \"Redis\")");
            }
        }
        Err(e) => tracing::info!(error = %e, "cannot read whether Redis has replicas"),
    }
}

/// [`open_store`] with a redb file opened as `options` say.
fn open_store_with(spec: Option<&Path>, options: OpenOptions) -> anyhow::Result<Arc<dyn Store>> {
    let Some(spec) = spec else {
        return Ok(Arc::new(MemoryStore::new()));
    };
    if let Some(url) = redis_url(spec) {
        // The URL may carry a password: the error names the server without it.
        let store = RedisStore::open(url).context("cannot open the Redis store")?;
        warn_unless_durable(&store);
        return Ok(Arc::new(store));
    }
    Ok(Arc::new(open_redb(spec, options)?))
}

/// Opens the redb file at `spec`; the store's errors name the file and what is
/// wrong with it, and one held by another process says which.
fn open_redb(spec: &Path, options: OpenOptions) -> anyhow::Result<RedbStore> {
    match RedbStore::open_with(spec, options) {
        Ok(store) => Ok(store),
        Err(StoreError::Locked { .. }) => Err(Unavailable(locked::hint(spec)).into()),
        Err(e) => Err(e).context("cannot open the store"),
    }
}

/// The Redis URL a `--store` value is, if it is one.
fn redis_url(spec: &Path) -> Option<&str> {
    spec.to_str().filter(|s| is_redis_url(s))
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
    /// Opens the store for a command that has nothing to do on an empty ledger
    /// (it reads, or changes what an account already has): a missing file is an
    /// error, so that a mistyped path is not answered as a ledger with no accounts.
    fn open_existing(&self) -> anyhow::Result<Arc<dyn Store>> {
        self.open_as(Create::Never)
    }

    /// [`StoreArgs::open_existing`] for a bulk import: a redb file opens with a
    /// page cache of `cache_bytes`. Also says whether the store is a redb file,
    /// which this process then holds alone (no other decides on it meanwhile).
    fn open_existing_for_import(
        &self,
        cache_bytes: usize,
    ) -> anyhow::Result<(Arc<dyn Store>, bool)> {
        let spec = match &self.store {
            Some(spec) => spec.clone(),
            None => creditgate::store::default_path().context(
                "no default store path: set $CREDITGATE_STORE or $HOME, or pass --store",
            )?,
        };
        if !names_a_file(&spec) {
            return Ok((self.open_existing()?, false));
        }
        let options = OpenOptions {
            create: Create::Never,
            cache_bytes,
            ..OpenOptions::default()
        };
        Ok((open_store_with(Some(&spec), options)?, true))
    }

    /// Opens the store, creating the file only as `create` allows: commands that
    /// start accounts (a subscription, `serve`) may create a missing one.
    fn open_as(&self, create: Create) -> anyhow::Result<Arc<dyn Store>> {
        let spec = match &self.store {
            Some(spec) => spec.clone(),
            None => creditgate::store::default_path().context(
                "no default store path: set $CREDITGATE_STORE or $HOME, or pass --store",
            )?,
        };
        if spec.as_os_str() == "memory" {
            return open_store(None, create);
        }
        // Only the default location is created for the user; $CREDITGATE_STORE
        // may name a Redis URL, which has no directory.
        if self.store.is_none()
            && create != Create::Never
            && names_a_file(&spec)
            && let Some(dir) = spec.parent()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        open_store(Some(&spec), create)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Every subcommand, with its path, depth first.
    fn walk<'c>(
        path: String,
        command: &'c clap::Command,
        out: &mut Vec<(String, &'c clap::Command)>,
    ) {
        for sub in command.get_subcommands() {
            let name = format!("{path} {}", sub.get_name());
            out.push((name.clone(), sub));
            walk(name, sub, out);
        }
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Issue 13.10: help text for every option, argument and subcommand.
    #[test]
    fn every_subcommand_and_argument_has_help() {
        let root = Cli::command();
        let mut commands = vec![("creditgate".to_owned(), &root)];
        walk("creditgate".into(), &root, &mut commands);
        let mut missing = Vec::new();
        for (path, command) in &commands {
            if command.get_about().is_none() && path != "creditgate help" {
                missing.push(format!("{path}: no about"));
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: {id} has no help"));
                }
            }
        }
        assert!(missing.is_empty(), "missing help:\n{}", missing.join("\n"));
    }
}
