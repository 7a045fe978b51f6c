//! `creditgate store copy`: moves every scope (account) from one store to
//! another, between any two backends, so that an operator can start on the
//! embedded redb file and move to a Redis shared by several gateways later (or
//! back).
//!
//! Each scope is read with `export_scope` (one consistent snapshot of it) and
//! written with `import_scope` (one atomic step), so no account is ever half
//! copied; the copy as a whole is not one snapshot, which is why it is meant for
//! a store no gateway is writing to (a redb file in use is refused anyway).
//!
//! `creditgate store accept-journal-loss`: opens a redb store whose journal is
//! missing after a crash, which every other command refuses, accepting that what
//! the journal held since the store's last checkpoint is lost; says what it
//! accepted, and closes the store cleanly with a new journal, so that the
//! commands after it open it as usual. An operator's decision, taken once and
//! knowingly: never a flag that a service file would repeat at every start.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use creditgate::store::{Alerts, Create, OpenOptions, ScopeDump, Store, names_a_file, parse_url};

use super::{Exit, Format, StoreArgs, open_redb, redis_url};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    Copy(CopyArgs),
    AcceptJournalLoss(AcceptArgs),
}

/// Opens a redb store whose journal is missing after a crash (refused by every
/// other command, exit 75), accepting that the decisions it held since the
/// store's last checkpoint are lost: their credits are handed out again, their
/// messages charged again if retried. Put the journal back instead if it can be.
#[derive(Debug, clap::Args)]
pub struct AcceptArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Report format: a line, or one JSON object saying what was accepted.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// Copies every account (records, counters, idempotency markers and memberships)
/// from one store to another: redb ↔ Redis, or between two of a kind.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// The store to copy from: a redb file or a Redis URL, as --store takes.
    #[arg(long, value_name = "STORE")]
    from: PathBuf,
    /// The store to copy into (a redb file is created if missing).
    #[arg(long, value_name = "STORE")]
    to: PathBuf,
    /// Copy even if the destination already holds accounts: the accounts both
    /// hold are replaced by the source's; the destination's others are kept.
    #[arg(long)]
    force: bool,
    /// With --force, copy even where the destination's accounts are ahead of
    /// the source's (an older backup restored over a live store): their spent
    /// credits are handed out again, and retries of the messages whose
    /// idempotency markers go are charged again. Refused without it, naming
    /// the accounts.
    #[arg(long, requires = "force")]
    roll_back: bool,
    /// Report format: a line, or one JSON object of the counts copied.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(command: Command) -> anyhow::Result<Exit> {
    match command {
        Command::Copy(args) => copy(&args),
        Command::AcceptJournalLoss(args) => accept_journal_loss(&args),
    }
}

/// What `accept-journal-loss` found.
#[derive(Debug, Serialize)]
struct Accepted {
    store: String,
    /// Whether a loss was accepted; false: the store did not need its journal,
    /// or the journal was there (and replayed).
    accepted: bool,
    journal: String,
    /// The last journal record the store holds; those after it were lost.
    applied: Option<u64>,
}

fn accept_journal_loss(args: &AcceptArgs) -> anyhow::Result<Exit> {
    let spec = match &args.store.store {
        Some(spec) => spec.clone(),
        None => creditgate::store::default_path()
            .context("no default store path: set $CREDITGATE_STORE or $HOME, or pass --store")?,
    };
    anyhow::ensure!(
        names_a_file(&spec),
        "{}: only a redb store file has a journal",
        describe(&spec)
    );
    let options = OpenOptions {
        create: Create::Never,
        accept_journal_loss: true,
        ..OpenOptions::default()
    };
    let store = open_redb(&spec, options)?;
    let loss = store.journal_loss().cloned();
    // The clean close: the next opening needs no journal but the new one.
    drop(store);
    let journal = creditgate::store::journal_path(&spec).display().to_string();
    let name = spec.display().to_string();
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string(&Accepted {
                store: name,
                accepted: loss.is_some(),
                journal,
                applied: loss.map(|l| l.applied),
            })?
        ),
        Format::Text => match loss {
            Some(loss) => println!(
                "accepted the loss of the journal {journal}: {}; the store {name} now holds \
                 what it held at its last checkpoint (journal record {}), and every decision \
                 acknowledged after it is lost; a new journal was started",
                loss.why, loss.applied
            ),
            None => println!(
                "nothing to accept: the store {name} opened with nothing lost (its journal \
                 {journal} was there, or the store was closed cleanly and did not need it)"
            ),
        },
    }
    Ok(Exit::Success)
}

/// What replacing an account of the destination with the source's takes
/// back: usage the destination counted that the source did not, and
/// idempotency markers the source lacks. Counters only grow until they
/// expire, so a destination ahead of its source has counted what the source
/// never saw.
#[derive(Debug, Default, PartialEq, Eq)]
struct Rollback {
    /// Counters that would go back, and by how much in all.
    counters: usize,
    units: u64,
    /// Live idempotency markers that would go.
    markers: usize,
}

impl Rollback {
    /// What copying `from` over `into` takes back, judged at `now` (what has
    /// expired takes nothing back).
    fn of(into: &ScopeDump, from: &ScopeDump, now: i64) -> Rollback {
        let live = |expires: Option<i64>| expires.is_none_or(|at| at > now);
        let mut back = Rollback::default();
        for (name, value, expires) in &into.counters {
            if !live(*expires) {
                continue;
            }
            let source = (from.counters.iter())
                .find(|(n, _, e)| n == name && live(*e))
                .map_or(0, |(_, v, _)| *v);
            if source < *value {
                back.counters += 1;
                back.units = back.units.saturating_add(value - source);
            }
        }
        back.markers = (into.once.iter())
            .filter(|(key, expires, _)| {
                live(Some(*expires)) && !from.once.iter().any(|o| &o.0 == key)
            })
            .count();
        back
    }

    fn is_empty(&self) -> bool {
        self.counters == 0 && self.markers == 0
    }
}

/// Refuses, before anything is written, a copy that would take back what the
/// destination's accounts counted (see [`Rollback`]), naming the accounts.
fn refuse_rollbacks(
    from: &dyn Store,
    to: &dyn Store,
    scopes: &[String],
    present: &[String],
    to_name: &str,
) -> anyhow::Result<()> {
    let now = creditgate::time::now();
    let mut behind = Vec::new();
    for scope in scopes.iter().filter(|s| present.binary_search(s).is_ok()) {
        let read = |store: &dyn Store| {
            store
                .export_scope(scope)
                .with_context(|| format!("reading account {scope:?}"))
        };
        let back = Rollback::of(&read(to)?, &read(from)?, now);
        if !back.is_empty() {
            behind.push((scope, back));
        }
    }
    let Some((first, _)) = behind.first() else {
        return Ok(());
    };
    let lines: Vec<String> = (behind.iter().take(5))
        .map(|(scope, back)| {
            format!(
                "  {}: {} counter(s) back by {} in all, {} idempotency marker(s) dropped",
                creditgate::names::escape(scope),
                back.counters,
                back.units,
                back.markers
            )
        })
        .collect();
    anyhow::bail!(
        "{} account(s) of {to_name} are ahead of the copy (the first: {:?}), which would \
         take back what they counted: their spent credits would be sold again, and a retry \
         of a message whose marker goes would be charged again:\n{}{}\npass --roll-back \
         with --force to copy anyway",
        behind.len(),
        first,
        lines.join("\n"),
        if behind.len() > 5 { "\n  ..." } else { "" }
    )
}

/// What a copy moved.
#[derive(Debug, Default, Serialize)]
struct Copied {
    scopes: usize,
    records: usize,
    counters: usize,
    once_markers: usize,
    memberships: usize,
    /// Whether the destination took the source's secret, so that the markers
    /// copied keep matching their retries (see [`Store::secret`]).
    secret_copied: bool,
}

fn copy(args: &CopyArgs) -> anyhow::Result<Exit> {
    let (from_name, to_name) = (describe(&args.from), describe(&args.to));
    anyhow::ensure!(
        args.from != args.to,
        "--from and --to are the same store ({from_name})"
    );
    // A missing source file would be created empty and "copied": a typo must not
    // pass for an empty store.
    if redis_url(&args.from).is_none() && !args.from.exists() {
        anyhow::bail!("no store at {from_name}");
    }
    anyhow::ensure!(
        args.from.as_os_str() != "memory" && args.to.as_os_str() != "memory",
        "a store copy needs two durable stores (a redb file or a Redis URL), not memory"
    );
    let from = open(&args.from, Create::Never)?;
    let to = open(&args.to, Create::IfMissing)?;
    let present = to
        .scopes()
        .with_context(|| format!("listing the accounts of {to_name}"))?;
    if !present.is_empty() && !args.force {
        anyhow::bail!(
            "{to_name} already holds {} account(s) (the first: {:?}); pass --force to copy \
             into it anyway, replacing the accounts both stores hold",
            present.len(),
            present[0]
        );
    }
    let scopes = from
        .scopes()
        .with_context(|| format!("listing the accounts of {from_name}"))?;
    if !args.roll_back {
        refuse_rollbacks(from.as_ref(), to.as_ref(), &scopes, &present, &to_name)?;
    }
    let mut copied = Copied::default();
    // Fingerprints of idempotency markers are keyed with their store's secret:
    // a store that holds no account yet takes the source's, before anything is
    // copied; one that does keeps its own, for the markers it holds.
    if present.is_empty() {
        let secret = from
            .secret()
            .with_context(|| format!("reading the secret of {from_name}"))?;
        to.set_secret(secret)
            .with_context(|| format!("writing the secret of {to_name}"))?;
        copied.secret_copied = true;
    }
    for scope in &scopes {
        let dump = from
            .export_scope(scope)
            .with_context(|| format!("reading account {scope:?} from {from_name}"))?;
        to.import_scope(scope, &dump)
            .with_context(|| format!("writing account {scope:?} to {to_name}"))?;
        copied.scopes += 1;
        copied.records += dump.records.len();
        copied.counters += dump.counters.len();
        copied.once_markers += dump.once.len();
        copied.memberships += dump.memberships.len();
    }
    // The host's alert log, which lives apart from every scope.
    let mut log = Vec::new();
    from.visit_alerts(Alerts::default(), &mut |owner, key, value| {
        log.push((owner.to_owned(), key.to_owned(), value.to_owned()));
        true
    })
    .with_context(|| format!("reading the alert log of {from_name}"))?;
    for (owner, key, value) in &log {
        to.alert_insert(owner, key, value)
            .with_context(|| format!("writing the alert log to {to_name}"))?;
    }
    to.persist()
        .with_context(|| format!("making the copy durable in {to_name}"))?;
    if !copied.secret_copied && copied.once_markers > 0 {
        eprintln!(
            "creditgate: warning: {to_name} held accounts, so it keeps its own secret: a retry \
             of one of the {} message(s) whose idempotency markers were copied is refused as a \
             reused key (idempotency-key-reused), never passed free",
            copied.once_markers
        );
    }
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&copied)?),
        Format::Text => println!(
            "copied {} account(s) from {from_name} to {to_name}: {} record(s), {} counter(s), \
             {} idempotency marker(s), {} membership(s)",
            copied.scopes, copied.records, copied.counters, copied.once_markers, copied.memberships
        ),
    }
    Ok(Exit::Success)
}

fn open(spec: &Path, create: Create) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    StoreArgs {
        store: Some(spec.to_owned()),
    }
    .open_as(create)
}

/// A store's name for messages: a file's path, or a Redis URL's servers without
/// its credentials.
fn describe(spec: &Path) -> String {
    match redis_url(spec).map(parse_url) {
        Some(Ok((target, _))) => format!("redis {}", target.label),
        Some(Err(_)) => "the Redis URL given".to_owned(),
        None => spec.display().to_string(),
    }
}
