//! `creditgate serve`: the Postfix policy server as a long-running process. Reads
//! flags and an optional TOML file (flags win), starts the gateway, serves until
//! SIGTERM or SIGINT, and reloads the policy on SIGHUP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use creditgate::gateway::Gateway;
use creditgate::postfix::PostfixConfig;
use creditgate::runtime::{ComponentSource, LoadError, Runtime, RuntimeConfig};
use creditgate::serve::{ServeOptions, serve_postfix};

use super::{ComponentArgs, Exit, PolicyArgs, StoreArgs, located};

const DEFAULT_LISTEN: &str = "127.0.0.1:10040";

/// Serve credit decisions to Postfix (`check_policy_service`) until SIGTERM or
/// SIGINT; SIGHUP reloads the policy file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A TOML file with any of: postfix_listen, workers, idle_timeout_secs, store,
    /// policy, component, and a [postfix] table. Flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the Postfix policy listener. Default: 127.0.0.1:10040.
    #[arg(long, value_name = "ADDR")]
    postfix_listen: Option<SocketAddr>,
    /// Decision workers. Default: twice the available parallelism, at least 2.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Close a connection silent for this long. Default: 60.
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// Log format, on stderr. RUST_LOG filters (default: info).
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    policy: PolicyArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The `--config` file: the flags' keys, and the Postfix front end's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    postfix_listen: Option<SocketAddr>,
    workers: Option<usize>,
    idle_timeout_secs: Option<u64>,
    store: Option<PathBuf>,
    policy: Option<PathBuf>,
    component: Option<PathBuf>,
    #[serde(default)]
    postfix: PostfixConfig,
}

impl FileConfig {
    fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut config: FileConfig =
            toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        // Paths in the file are relative to the file, so that it can move with them.
        let dir = path.parent().unwrap_or(Path::new(""));
        let relative = |p: &mut Option<PathBuf>| {
            if let Some(p) = p.as_mut() {
                *p = dir.join(&*p);
            }
        };
        relative(&mut config.policy);
        relative(&mut config.component);
        if config.store.as_deref() != Some(Path::new("memory")) {
            relative(&mut config.store);
        }
        Ok(config)
    }
}

/// Everything `run` needs, flags and file merged.
struct Settings {
    listen: SocketAddr,
    workers: usize,
    options: ServeOptions,
    store: StoreArgs,
    policy: PolicyArgs,
    postfix: PostfixConfig,
}

impl Settings {
    fn new(args: Args) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let listen = match args.postfix_listen.or(file.postfix_listen) {
            Some(addr) => addr,
            None => DEFAULT_LISTEN.parse()?,
        };
        let workers = args.workers.or(file.workers).unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (2 * cores).max(2)
        });
        anyhow::ensure!(workers > 0, "workers must be at least 1");
        let idle = args.idle_timeout.or(file.idle_timeout_secs).unwrap_or(60);
        anyhow::ensure!(idle > 0, "idle timeout must be at least 1 second");
        Ok(Settings {
            listen,
            workers,
            options: ServeOptions {
                idle_timeout: Duration::from_secs(idle),
            },
            store: StoreArgs {
                store: args.store.store.or(file.store),
            },
            policy: PolicyArgs {
                policy: args.policy.policy.or(file.policy),
                component: ComponentArgs {
                    component: args.policy.component.component.or(file.component),
                },
            },
            postfix: file.postfix,
        })
    }
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    init_logging(args.log_format);
    let settings = Settings::new(args)?;
    let store = settings.store.open()?;
    let (policy_path, policy) = settings.policy.load()?;
    // The gateway's own decision budget, not the offline tools' generous one: a
    // guest stuck on a mail path must be cut off in milliseconds.
    let source = settings
        .policy
        .component
        .component
        .clone()
        .map_or(ComponentSource::Builtin, ComponentSource::File);
    let runtime = Arc::new(Runtime::new(&source, RuntimeConfig::default())?);
    let gateway = match Gateway::start(runtime, store, &policy, settings.workers) {
        Ok((gateway, summary)) => {
            for warning in &summary.warnings {
                warn!("{}", located(&policy_path, warning));
            }
            Arc::new(gateway)
        }
        Err(e) => return Err(load_error(&policy_path, e)),
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    tokio.block_on(serve(&settings, gateway.clone(), &policy_path))?;
    gateway.shutdown();
    eprint!("{}", gateway.latencies().report());
    Ok(Exit::Success)
}

async fn serve(
    settings: &Settings,
    gateway: Arc<Gateway>,
    policy_path: &Path,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let local = listener.local_addr()?;
    info!(
        workers = settings.workers,
        policy = %policy_path.display(),
        "listening on {local} (postfix policy)"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_postfix(
        listener,
        gateway.clone(),
        Arc::new(settings.postfix.clone()),
        settings.options,
        stopped,
    ));
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => reload(&gateway, &settings.policy),
        }
    }
    info!("shutting down: no new connections, finishing requests in flight");
    let _ = stop.send(());
    server.await.context("the server task failed")?;
    Ok(())
}

/// Re-reads the policy file and hands it to the gateway; a refused policy leaves
/// the current one serving.
fn reload(gateway: &Gateway, policy: &PolicyArgs) {
    let (path, text) = match policy.load() {
        Ok(loaded) => loaded,
        Err(e) => {
            warn!("reload refused, the current policy keeps serving: {e:#}");
            return;
        }
    };
    match gateway.reload(&text, None) {
        Ok(summary) => {
            for warning in &summary.warnings {
                warn!("{}", located(&path, warning));
            }
            info!(version = gateway.version(), policy = %path.display(), "policy reloaded");
        }
        Err(e) => warn!(
            "reload refused, the current policy keeps serving: {:#}",
            load_error(&path, e)
        ),
    }
}

fn load_error(path: &Path, e: LoadError) -> anyhow::Error {
    match e {
        LoadError::Policy(diagnostics) => {
            let lines: Vec<String> = diagnostics.iter().map(|d| located(path, d)).collect();
            anyhow::anyhow!("invalid policy {}:\n{}", path.display(), lines.join("\n"))
        }
        e => e.into(),
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
