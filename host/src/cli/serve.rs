//! `creditgate serve`: the flags, merged over the config file by
//! [`creditgate::serve::Config`], then the library's [`Server`] until SIGTERM or
//! SIGINT (SIGHUP reloads). The store is opened here, with the command line's
//! messages (a store held by another process names it).

use std::path::PathBuf;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

use creditgate::serve::{Config, Listen, Overrides, Server, Signals};
use creditgate::store::{Create, names_a_file};

use super::{Exit, PolicyArgs, StoreArgs};

/// Serve credit decisions to Postfix (`check_policy_service`) until SIGTERM or
/// SIGINT; SIGHUP reloads the policy file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A TOML file with any of: postfix_listen, postfix_unix, http_listen,
    /// http_max_body_bytes, workers, io_threads, idle_timeout_secs, store, init_store, policy,
    /// component, case_sensitive_names, and a [postfix] table. Flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the Postfix policy listener, or `off`. Default: 127.0.0.1:10040.
    #[arg(long, value_name = "ADDR|off")]
    postfix_listen: Option<Listen>,
    /// Also listen for Postfix on this unix socket (mode 0660; a stale socket
    /// file left by a crash is replaced).
    #[arg(long, value_name = "PATH")]
    postfix_unix: Option<PathBuf>,
    /// Address of the HTTP API, or `off`. Default: 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR|off")]
    http_listen: Option<Listen>,
    /// Largest HTTP request body, in bytes. Default: 524288.
    #[arg(long, value_name = "BYTES")]
    http_max_body_bytes: Option<usize>,
    /// Most connections open at once, per listener. Default: 1024.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Decision workers. Default: twice the available parallelism (32 times on
    /// Redis, where workers wait on the network), at least 2.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Threads that read and answer the sockets. Default: the available
    /// parallelism. Under pure END-OF-MESSAGE charges on 2 cores, 1 was often
    /// a little faster; under Postfix's mix, 2.
    #[arg(long, value_name = "N")]
    io_threads: Option<usize>,
    /// Close a connection silent for this long. Default: 60.
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// Log format, on stderr. RUST_LOG filters (default: info).
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(flatten)]
    store: StoreArgs,
    /// Start a new, empty ledger in a store file that exists but is empty (0
    /// bytes). Without it such a file is refused: a ledger truncated to nothing
    /// would otherwise pass for a fresh one, with every sender unknown. A missing
    /// file is always created; a file with anything in it is never overwritten.
    #[arg(long)]
    init_store: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Validate the config file, component, policy and store (opened read-only,
    /// never created), print what was checked, and exit without serving: 0 when
    /// everything is valid, 2 with the error otherwise.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Args {
    /// The flags as overrides of the config file.
    fn overrides(&self) -> Overrides {
        Overrides {
            postfix_listen: self.postfix_listen,
            postfix_unix: self.postfix_unix.clone(),
            http_listen: self.http_listen,
            http_max_body_bytes: self.http_max_body_bytes,
            max_connections: self.max_connections,
            workers: self.workers,
            io_threads: self.io_threads,
            idle_timeout_secs: self.idle_timeout,
            store: self.store.store.clone(),
            init_store: self.init_store,
            policy: self.policy.policy.clone(),
            component: self.policy.component.component.clone(),
            // The rest has no flag: set in the file (or by a gateway that embeds
            // the server).
            ..Overrides::default()
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    let config = Config::load(args.config.as_deref(), args.overrides())?;
    if args.check {
        return super::serve_check::check(&config);
    }
    init_logging(args.log_format);
    // A ledger that appears from nothing is right once, at the first start; at
    // any other it is the wrong path (an unmounted volume, a typo), and every
    // account is unknown until it is found: said before anything is decided.
    let spec = config
        .store
        .clone()
        .or_else(creditgate::store::default_path);
    if let Some(path) = spec.filter(|p| names_a_file(p) && !p.exists()) {
        tracing::warn!(
            store = %path.display(),
            "no store at this path: a new, empty ledger is created, in which every account \
             is unknown until subscribed; unless this is the gateway's first start, the \
             path is wrong and the ledger is elsewhere (stop serve and fix it)"
        );
    }
    let store = StoreArgs {
        store: config.store.clone(),
    }
    .open_as(if config.init_store {
        Create::IfMissingOrEmpty
    } else {
        Create::IfMissing
    })?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.io_threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stopped = tokio.block_on(async {
        // Before anything listens: a SIGTERM sent once serve is up must stop it
        // cleanly, never meet the default action.
        let signals = Signals::new()?;
        let server = Server::start(&config, store).await?;
        anyhow::Ok(server.run(signals).await)
    })?;
    // Everything decided was made durable and the store closed, whatever stopped
    // the listeners.
    eprint!("{}", stopped.stats.report());
    match stopped.failure {
        Some(e) => Err(e.into()),
        None => Ok(Exit::Success),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second subscriber (never in the binary) is not worth failing over.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
