//! `creditgate replay`: runs a trace of events through the policy component.

use std::io::{self, Read};
use std::path::PathBuf;

use anyhow::Context as _;

use creditgate::store::Create;

use super::{Exit, PolicyArgs, open_store};

/// Replays events (JSON Lines) through the policy: one JSON decision per line on
/// stdout, a latency summary on stderr.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    policy: PolicyArgs,
    /// Events, one JSON object per line; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    events: PathBuf,
    /// A redb file or a Redis URL to keep state in across runs; without it (or
    /// with `memory`, as every command takes it), a fresh in-memory store.
    #[arg(long, value_name = "PATH.redb|memory|redis://...")]
    store: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    let input: Box<dyn Read> = if args.events.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.events)
                .with_context(|| format!("cannot read events {}", args.events.display()))?,
        )
    };
    // A trace subscribes its accounts: it may start a new store.
    let spec = args.store.as_deref().filter(|s| s.as_os_str() != "memory");
    let store = open_store(spec, Create::IfMissing)?;
    let mut worker = args.policy.worker(store)?;
    let names = creditgate::names::NameRules::from_env();
    let summary = creditgate::replay::replay_with(&mut worker, input, io::stdout().lock(), names)?;
    eprint!("{}", worker.latencies().report());
    if summary.errors > 0 {
        eprintln!("{} of {} line(s) had errors", summary.errors, summary.lines);
        return Ok(Exit::Failed);
    }
    Ok(Exit::Success)
}
