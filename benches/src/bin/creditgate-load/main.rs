//! `creditgate-load`: a closed-loop load generator for `creditgate serve`, over
//! the Postfix policy protocol or the HTTP API's `POST /v1/decide/email`.
//!
//! N connections (tasks) each send one request, wait for its reply, and send the
//! next, until a request count or a duration is used up; then the latencies of
//! all of them, merged from per-connection hdrhistograms, and the replies by
//! action are reported. The traffic ([`mix`]) is Postfix's: a check per `RCPT`,
//! a charge of 1–3 recipients per message at `END-OF-MESSAGE` with a unique
//! `instance`, some charges retried with the same one, across many accounts of
//! which some run out of credits. `--spawn` seeds a store and starts `serve`
//! itself ([`spawn`]), so that one command measures everything: the load, and
//! also serve's start-up (spawn to first answer) and, after the run, the latency
//! of `--reloads` hot reloads through the HTTP API.
//!
//! `--state end-of-message` sends pure charges instead (every request an
//! `END-OF-MESSAGE` charge for one random recipient), the traffic mail quota
//! servers are compared on; `--peer postfwd` then runs the same workload on
//! postfwd2 in the same run ([`peer`]). With `--spawn`, the disk's own
//! `fdatasync` is timed beside the store before the load ([`disk`]) and printed
//! beside serve's commit time. `creditgate-load import` times a lead import of a
//! random list beside `sort -u` of it ([`import`]).
//!
//! Only loopback targets are accepted: this is a benchmark, not a way to load
//! someone's production gateway.

mod disk;
mod http;
mod import;
mod mix;
mod peer;
mod postfix;
mod report;
mod spawn;

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;

use mix::{Budget, Mix, State};
use report::{PeerRun, RunInfo, ServeFigures, Stats};

const EXAMPLES: &str = "\
Examples:
  # Everything in one command: a release serve on a fresh redb store, 32
  # connections over the Postfix protocol for 20 s; also serve's start-up (spawn
  # to first answer) and 5 hot reloads timed after the run.
  cargo build --release -p creditgate -p creditgate-benches
  target/release/creditgate-load --spawn --connections 32 --duration 20s

  # Against a serve you started; its store must hold accounts load-0 .. load-999
  # (the first 10% on a plan that runs out), or every request fails open.
  target/release/creditgate-load --postfix 127.0.0.1:10040 --requests 200000

  # The HTTP API's POST /v1/decide/email instead.
  target/release/creditgate-load --spawn --http --duration 10s

  # Serve's first start ever (an empty component cache, so it compiles), and 20
  # timed hot reloads after the run instead of 5.
  target/release/creditgate-load --spawn --cold-start --reloads 20 --duration 5s

  # Pure charges (every request an END-OF-MESSAGE charge: 100 accounts, one
  # random recipient, 10% byte-identical re-sends) at 64 connections, then the
  # same on postfwd2 (Debian: apt-get install postfwd) in the same run.
  target/release/creditgate-load --spawn --state end-of-message --connections 64 \
      --duration 20s --peer postfwd

  # A lead import of 1,000,000 distinct random addresses, timed beside sort -u
  # of the same file, with the import's peak RSS.
  target/release/creditgate-load import --leads 1000000

Exit status: 0 when every request (and every reload) got an answer, 1 when
some failed, 2 on a usage error.";

/// Load `creditgate serve` over the Postfix policy protocol or the HTTP API and
/// report decisions per second and latency percentiles.
#[derive(Debug, Parser)]
#[command(
    name = "creditgate-load",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Subcommand>,
    #[command(flatten)]
    load: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Time `creditgate leads import` of a list of random addresses beside
    /// `sort -u` of the same file, with the import's peak RSS.
    Import(import::ImportArgs),
}

/// What the load sends, where, and for how long.
#[derive(Debug, clap::Args)]
struct Args {
    /// The Postfix policy listener to load (loopback only).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10040")]
    postfix: String,
    /// Load the HTTP API's POST /v1/decide/email instead; with --spawn, on the
    /// spawned serve (no ADDR needed).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
    http: Option<String>,
    /// Seed a temporary store with the accounts and start `creditgate serve` on
    /// it for the run; stop it (SIGTERM) at the end and show its own report.
    #[arg(long)]
    spawn: bool,
    /// The creditgate binary for --spawn. Default: the one next to this binary,
    /// else `creditgate` on $PATH.
    #[arg(long, value_name = "PATH")]
    creditgate: Option<PathBuf>,
    /// --workers for the spawned serve. Default: serve's own.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// --io-threads for the spawned serve. Default: serve's own.
    #[arg(long, value_name = "N", requires = "spawn")]
    io_threads: Option<usize>,
    /// After the run, time this many `POST /v1/admin/reload`s on the spawned
    /// serve, one at a time. Default 5; 0 for none.
    #[arg(long, value_name = "N", requires = "spawn")]
    reloads: Option<u32>,
    /// Give the spawned serve an empty component cache, so that its start-up
    /// includes compiling the component (its first start ever).
    #[arg(long, requires = "spawn")]
    cold_start: bool,
    /// Concurrent persistent connections, one request in flight on each.
    #[arg(long, default_value_t = 32, value_name = "N")]
    connections: usize,
    /// Stop after this many decisions in all.
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    requests: Option<u64>,
    /// Stop after this long: `20s`, `500ms`, `2m`, or seconds. Default 10s.
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// The traffic: `mix` (a check per RCPT, then the charge at END-OF-MESSAGE)
    /// or `end-of-message` (every request a charge, for one random recipient).
    #[arg(long, value_enum, default_value_t = State::Mix)]
    state: State,
    /// Accounts the traffic spreads over, named PREFIX0 .. PREFIX{N-1}.
    /// Default: 1000 for the mix, 100 for end-of-message.
    #[arg(long, value_name = "N")]
    accounts: Option<usize>,
    #[arg(long, default_value = "load-", value_name = "PREFIX")]
    account_prefix: String,
    /// Share of the accounts on the small plan, which runs out within a run.
    /// Default: 0.1 for the mix, 0 for end-of-message (every charge allowed).
    #[arg(long, value_name = "0..1")]
    exhausted_share: Option<f64>,
    /// Share of charges sent twice, byte for byte, with the same instance
    /// (Postfix's retry). Default: 0.05 for the mix, 0.1 for end-of-message.
    #[arg(long, value_name = "0..1")]
    retry_share: Option<f64>,
    /// After serve's run, run the same workload on a peer: `postfwd` (postfwd2,
    /// started here as a daemon; Debian package postfwd).
    #[arg(long, value_enum, value_name = "PEER")]
    peer: Option<Peer>,
    /// The postfwd2 binary for --peer postfwd. Default: /usr/sbin/postfwd2, else
    /// `postfwd2` on $PATH.
    #[arg(long, value_name = "PATH")]
    postfwd: Option<PathBuf>,
    /// 4 KiB pwrite + fdatasync probes timed beside the store before the load
    /// (with --spawn, or with --sync-dir); 0 for none.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    sync_probes: usize,
    /// Where to time fdatasync without --spawn: the directory of the store of
    /// the serve under load.
    #[arg(long, value_name = "DIR")]
    sync_dir: Option<PathBuf>,
    /// Generator threads. The default, 1, leaves the other cores to the server.
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: usize,
    /// Give up on a request (and reconnect) after this long.
    #[arg(long, default_value = "10s", value_name = "TIME", value_parser = parse_duration)]
    timeout: Duration,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// A policy server the same workload runs on, for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Peer {
    /// postfwd2: rate counters in memory, nothing durable.
    Postfwd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Subcommand::Import(args)) => import::run(args),
        None => run(cli.load),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("creditgate-load: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Reloads timed after a `--spawn` run unless `--reloads` says otherwise.
const DEFAULT_RELOADS: u32 = 5;

/// The protocol and address to load.
#[derive(Debug, Clone, Copy)]
enum Target {
    Postfix(SocketAddr),
    Http(SocketAddr),
}

/// Runs the load; `Ok(false)` when some requests failed.
fn run(args: Args) -> anyhow::Result<bool> {
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(args.threads > 0, "--threads must be at least 1");
    let end_of_message = args.state == State::EndOfMessage;
    let accounts = args
        .accounts
        .unwrap_or(if end_of_message { 100 } else { 1000 });
    let exhausted_share = args
        .exhausted_share
        .unwrap_or(if end_of_message { 0.0 } else { 0.1 });
    let retry_share = args
        .retry_share
        .unwrap_or(if end_of_message { 0.1 } else { 0.05 });
    ensure!(accounts > 0, "--accounts must be at least 1");
    ensure!(
        args.peer.is_none() || args.http.is_none(),
        "--peer speaks the Postfix policy protocol: leave out --http"
    );
    for (name, share) in [
        ("--exhausted-share", exhausted_share),
        ("--retry-share", retry_share),
    ] {
        ensure!(
            (0.0..=1.0).contains(&share),
            "{name} must be between 0 and 1"
        );
    }
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mix = Mix {
        state: args.state,
        prefix: args.account_prefix.clone(),
        accounts,
        small: (accounts as f64 * exhausted_share).round() as usize,
        retry_share,
        seed: args.seed,
        run_id,
    };

    let spawned = if args.spawn {
        let creditgate = spawn::creditgate_binary(args.creditgate.clone());
        eprintln!(
            "creditgate-load: seeding {accounts} accounts and starting {} serve",
            creditgate.display()
        );
        Some(spawn::Spawned::start(
            &creditgate,
            &mix,
            args.workers,
            args.io_threads,
            args.http.is_some(),
            args.cold_start,
        )?)
    } else {
        None
    };
    let target = match (&args.http, &spawned) {
        (Some(_), Some(s)) => Target::Http(s.http.context("the spawned serve has no HTTP API")?),
        (Some(addr), None) if addr.is_empty() => bail!("--http needs an ADDR without --spawn"),
        (Some(addr), None) => Target::Http(loopback(addr)?),
        (None, Some(s)) => Target::Postfix(s.postfix),
        (None, None) => Target::Postfix(loopback(&args.postfix)?),
    };

    let sync_dir = args
        .sync_dir
        .clone()
        .or_else(|| spawned.as_ref().map(|s| s.dir().to_owned()));
    let fdatasync = match sync_dir.filter(|_| args.sync_probes > 0) {
        Some(dir) => Some(disk::fdatasync_cost(&dir, args.sync_probes)?),
        None => None,
    };
    let budget = || match (args.requests, args.duration) {
        (Some(n), _) => Budget::Requests(AtomicU64::new(n)),
        (None, duration) => {
            Budget::Until(Instant::now() + duration.unwrap_or(Duration::from_secs(10)))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let cpu = || {
        let serve = spawned.as_ref().and_then(spawn::Spawned::cpu_time);
        (serve, spawn::cpu_time(std::process::id()))
    };
    let commits = || spawned.as_ref().and_then(spawn::Spawned::commits);
    let mix = Arc::new(mix);
    let commits_before = commits();
    let cpu_before = cpu();
    let started = Instant::now();
    let stats = runtime.block_on(load(target, &args, mix.clone(), Arc::new(budget())))?;
    let elapsed = started.elapsed();
    let cpu_after = cpu();
    let commits_after = commits();
    let used =
        |before: Option<Duration>, after: Option<Duration>| Some(after?.saturating_sub(before?));
    let generator_cpu = used(cpu_before.1, cpu_after.1);
    let serve = spawned.as_ref().map(|s| ServeFigures {
        cpu: used(cpu_before.0, cpu_after.0),
        startup: s.startup,
        reloads: match (args.reloads.unwrap_or(DEFAULT_RELOADS), s.http) {
            (0, _) => Ok(Vec::new()),
            (n, Some(http)) => runtime
                .block_on(http::reloads(http, n, args.timeout))
                .map_err(|e| format!("{e:#}")),
            (_, None) => Err("the spawned serve has no HTTP API".to_owned()),
        },
        commits: commits_before
            .zip(commits_after)
            .map(|(b, a)| spawn::CommitCounters {
                commits: a.commits.saturating_sub(b.commits),
                decisions: a.decisions.saturating_sub(b.decisions),
            }),
        commit_p50: None,
    });

    let serve_report = match spawned {
        Some(s) => Some(s.stop()?),
        None => None,
    };
    let serve = serve.map(|figures| ServeFigures {
        commit_p50: serve_report.as_deref().and_then(report::commit_p50),
        ..figures
    });
    // After serve has stopped, so that the two never share the cores.
    let peer = match args.peer {
        Some(Peer::Postfwd) => {
            let postfwd2 = peer::binary(args.postfwd.clone());
            eprintln!(
                "creditgate-load: starting {} for the same workload",
                postfwd2.display()
            );
            let probe = postfix::rcpt_request(&mix.account(0));
            let daemon = peer::Postfwd::start(&postfwd2, args.connections, &probe)?;
            let target = Target::Postfix(daemon.addr);
            // A new run id: instances the peer has not seen.
            let mix = Arc::new(Mix {
                run_id: run_id.wrapping_add(1),
                ..(*mix).clone()
            });
            let cpu_before = daemon.cpu_time();
            let started = Instant::now();
            let stats = runtime.block_on(load(target, &args, mix, Arc::new(budget())))?;
            let elapsed = started.elapsed();
            let cpu = used(cpu_before, daemon.cpu_time());
            daemon.stop()?;
            Some(PeerRun {
                name: "postfwd2",
                elapsed,
                stats,
                cpu,
            })
        }
        None => None,
    };
    drop(runtime);
    let reloads_failed = serve.as_ref().is_some_and(|s| s.reloads.is_err());
    let (protocol, addr) = match target {
        Target::Postfix(a) => ("the Postfix policy protocol", a),
        Target::Http(a) => ("HTTP POST /v1/decide/email", a),
    };
    let info = RunInfo {
        state: args.state.name(),
        protocol,
        target: addr.to_string(),
        connections: args.connections,
        threads: args.threads,
        elapsed,
        generator_cpu,
        serve,
        fdatasync,
        peer,
    };
    if args.json {
        println!("{}", report::json(&info, &stats));
    } else {
        print!("{}", report::text(&info, &stats));
    }
    if let Some(report) = serve_report.filter(|r| !r.is_empty()) {
        eprintln!("\nserve's own report:\n{report}");
    }
    let peer_failed = info
        .peer
        .as_ref()
        .is_some_and(|p| p.stats.errors > 0 || p.stats.decisions() == 0);
    Ok(stats.errors == 0 && stats.decisions() > 0 && !reloads_failed && !peer_failed)
}

/// Runs every connection to the end of the budget; their stats merged.
async fn load(
    target: Target,
    args: &Args,
    mix: Arc<Mix>,
    budget: Arc<Budget>,
) -> anyhow::Result<Stats> {
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..args.connections {
        let (mix, budget, timeout) = (mix.clone(), budget.clone(), args.timeout);
        tasks.spawn(connection_task(target, connection, mix, budget, timeout));
    }
    let mut stats = Stats::default();
    while let Some(done) = tasks.join_next().await {
        stats.merge(done.context("a connection task panicked")?);
    }
    Ok(stats)
}

/// One connection's loop. An error (a reset, a timeout, a malformed reply) is
/// counted and the connection replaced; a target that refuses connections ends
/// the task.
async fn connection_task(
    target: Target,
    connection: usize,
    mix: Arc<Mix>,
    budget: Arc<Budget>,
    timeout: Duration,
) -> Stats {
    let mut stats = Stats::default();
    let mut messages = mix.messages(connection);
    'connect: loop {
        let mut client = match Client::connect(target, timeout).await {
            Ok(client) => client,
            Err(e) => {
                stats.error(format!("{e:#}"));
                return stats;
            }
        };
        loop {
            if budget.exhausted() {
                return stats;
            }
            let Some(message) = messages.next() else {
                return stats;
            };
            let take = || budget.take();
            let sent = match &mut client {
                Client::Postfix(c) => c.send(&message, take, &mut stats).await,
                Client::Http(c) => c.send(&message, take, &mut stats).await,
            };
            if let Err(e) = sent {
                stats.error(format!("{e:#}"));
                continue 'connect;
            }
        }
    }
}

enum Client {
    Postfix(postfix::PolicyClient),
    Http(http::ApiClient),
}

impl Client {
    async fn connect(target: Target, timeout: Duration) -> anyhow::Result<Client> {
        Ok(match target {
            Target::Postfix(addr) => {
                Client::Postfix(postfix::PolicyClient::connect(addr, timeout).await?)
            }
            Target::Http(addr) => Client::Http(http::ApiClient::connect(addr, timeout).await?),
        })
    }
}

/// A TCP connection to `addr` within `timeout`, with Nagle off: requests are
/// small and each waits for its reply.
async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<tokio::net::TcpStream> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `addr` resolved, insisting that every address it names is on loopback.
fn loopback(addr: &str) -> anyhow::Result<SocketAddr> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("{addr:?} is not HOST:PORT"))?
        .collect();
    let Some(first) = resolved.first().copied() else {
        bail!("{addr:?} resolves to no address");
    };
    if let Some(remote) = resolved.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "{addr:?} resolves to {remote}, which is not loopback: creditgate-load only loads local servers"
        );
    }
    Ok(first)
}

/// `20s`, `500ms`, `2m`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |at| text.split_at(at));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 20s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "0s", "5h", "x", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_loopback_targets() {
        assert!(loopback("127.0.0.1:10040").is_ok());
        assert!(loopback("[::1]:10040").is_ok());
        let e = loopback("192.0.2.1:10040").unwrap_err().to_string();
        assert!(e.contains("not loopback"), "{e}");
        assert!(loopback("127.0.0.1").is_err());
    }

    #[test]
    fn the_arguments_parse() {
        let cli = Cli::try_parse_from(["creditgate-load", "--spawn", "--http", "--requests", "5"])
            .expect("parses");
        assert_eq!(cli.load.http.as_deref(), Some(""));
        assert_eq!(cli.load.state, State::Mix);
        assert!(
            Cli::try_parse_from(["creditgate-load", "--requests", "5", "--duration", "1s"])
                .is_err()
        );
        let cli = Cli::try_parse_from([
            "creditgate-load",
            "--state",
            "end-of-message",
            "--peer",
            "postfwd",
        ])
        .expect("parses");
        assert_eq!(cli.load.state, State::EndOfMessage);
        assert_eq!(cli.load.peer, Some(Peer::Postfwd));
        let cli =
            Cli::try_parse_from(["creditgate-load", "import", "--leads", "10"]).expect("parses");
        assert!(matches!(cli.command, Some(Subcommand::Import(_))));
        // The load's flags are not the import's.
        assert!(Cli::try_parse_from(["creditgate-load", "--spawn", "import"]).is_err());
        // Reloads and a cold start are of the serve this tool spawns.
        for flag in [&["--reloads", "3"][..], &["--cold-start"]] {
            let without = [&["creditgate-load"][..], flag].concat();
            assert!(Cli::try_parse_from(&without).is_err(), "{flag:?}");
            let with = [&["creditgate-load", "--spawn"][..], flag].concat();
            assert!(Cli::try_parse_from(&with).is_ok(), "{flag:?}");
        }
    }
}
