//! `creditgate serve`: the gateway as a long-running process, with the Postfix
//! policy listener (TCP and optionally a unix socket) and the HTTP API. Reads
//! flags and an optional TOML file (flags win), starts the gateway, serves until
//! SIGTERM or SIGINT, and reloads the policy and component on SIGHUP or
//! `POST /v1/admin/reload`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use creditgate::alerts::{self, Notifier, Retry, Webhook};
use creditgate::bindings::Mode;
use creditgate::gateway::{Gateway, ReloadError};
use creditgate::http::{self, HttpOptions, ReloadRefused, Reloaded, Reloader};
use creditgate::names::NameRules;
use creditgate::postfix::PostfixConfig;
use creditgate::runtime::{ComponentSource, LoadError, Runtime, RuntimeConfig};
use creditgate::serve::{PolicyListener, ServeOptions, serve_postfix};
use creditgate::store::Create;

use super::{ComponentArgs, Exit, PolicyArgs, StoreArgs, located};

const DEFAULT_LISTEN: &str = "127.0.0.1:10040";
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listen {
    At(SocketAddr),
    Off,
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Listen::Off);
        }
        s.parse()
            .map(Listen::At)
            .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:8080, nor `off`: {e}"))
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The gateway's mode in the config file: `mode = "enforce"` (the default) or
/// `"shadow"`, the mode of every plan that sets none (see the policy's
/// `[plans.NAME] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum GatewayMode {
    #[default]
    Enforce,
    Shadow,
}

impl From<GatewayMode> for Mode {
    fn from(mode: GatewayMode) -> Mode {
        match mode {
            GatewayMode::Enforce => Mode::Enforce,
            GatewayMode::Shadow => Mode::Shadow,
        }
    }
}

/// Serve credit decisions to Postfix (`check_policy_service`) until SIGTERM or
/// SIGINT; SIGHUP reloads the policy file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A TOML file with any of: postfix_listen, postfix_unix, http_listen,
    /// http_max_body_bytes, workers, idle_timeout_secs, store, init_store, policy,
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

/// The `--config` file: the flags' keys, and the Postfix front end's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// `"enforce"` (default) or `"shadow"`: observe only, for a safe rollout.
    /// Read again at each reload.
    #[serde(default)]
    mode: GatewayMode,
    postfix_listen: Option<Listen>,
    postfix_unix: Option<PathBuf>,
    http_listen: Option<Listen>,
    http_max_body_bytes: Option<usize>,
    max_connections: Option<usize>,
    /// Most connections from one client address, per listener.
    max_connections_per_client: Option<usize>,
    /// Seconds one request may take from its first byte to its last.
    request_timeout_secs: Option<u64>,
    /// Names the HTTP API may be reached by besides IP addresses and `localhost`.
    allowed_hosts: Option<Vec<String>>,
    /// Required as `Authorization: Bearer` by the HTTP routes that change an
    /// account's terms or delete leads, and by reload. Only in the file (or
    /// $CREDITGATE_ADMIN_TOKEN): a flag would show in `ps`.
    admin_token: Option<String>,
    /// Where fired credit alerts are POSTed: `[[webhooks]] url, secret`.
    #[serde(default)]
    webhooks: Vec<Webhook>,
    workers: Option<usize>,
    idle_timeout_secs: Option<u64>,
    store: Option<PathBuf>,
    /// As `--init-store`.
    #[serde(default)]
    init_store: bool,
    policy: Option<PathBuf>,
    component: Option<PathBuf>,
    #[serde(default)]
    postfix: PostfixConfig,
    /// Keep the case of account and campaign names (`Acme` and `acme` are two
    /// accounts). Default: $CREDITGATE_CASE_SENSITIVE_NAMES, else false.
    case_sensitive_names: Option<bool>,
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
        relative(&mut config.postfix_unix);
        if config.store.as_deref().is_some_and(super::names_a_file) {
            relative(&mut config.store);
        }
        Ok(config)
    }
}

/// Everything `run` needs, flags and file merged.
pub(super) struct Settings {
    /// The config file, read again for `mode` at each reload.
    config: Option<PathBuf>,
    pub(super) mode: Mode,
    webhooks: Vec<Webhook>,
    /// Where the admin token came from, when there is one (for the log).
    admin_token_from: Option<String>,
    listen: Listen,
    unix: Option<PathBuf>,
    pub(super) http: Listen,
    http_options: HttpOptions,
    workers: usize,
    options: ServeOptions,
    pub(super) store: StoreArgs,
    pub(super) init_store: bool,
    pub(super) policy: PolicyArgs,
    postfix: PostfixConfig,
}

impl Settings {
    fn new(args: Args) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let listen = match args.postfix_listen.or(file.postfix_listen) {
            Some(listen) => listen,
            None => Listen::At(DEFAULT_LISTEN.parse()?),
        };
        let http = match args.http_listen.or(file.http_listen) {
            Some(listen) => listen,
            None => Listen::At(DEFAULT_HTTP_LISTEN.parse()?),
        };
        let max_body_bytes = args
            .http_max_body_bytes
            .or(file.http_max_body_bytes)
            .unwrap_or(http::DEFAULT_MAX_BODY_BYTES);
        anyhow::ensure!(max_body_bytes > 0, "http_max_body_bytes must be at least 1");
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(http::DEFAULT_MAX_CONNECTIONS);
        anyhow::ensure!(max_connections > 0, "max_connections must be at least 1");
        let config_name = args.config.as_deref().map_or_else(
            || "the config".to_owned(),
            |path| path.display().to_string(),
        );
        let (admin_token, admin_token_from) = admin_token(file.admin_token, &config_name)?;
        let per_client = file
            .max_connections_per_client
            .unwrap_or(creditgate::serve::DEFAULT_MAX_CONNECTIONS_PER_CLIENT);
        anyhow::ensure!(
            per_client > 0,
            "max_connections_per_client must be at least 1"
        );
        let request_timeout = file.request_timeout_secs.map_or(
            creditgate::serve::DEFAULT_REQUEST_TIMEOUT,
            Duration::from_secs,
        );
        anyhow::ensure!(
            !request_timeout.is_zero(),
            "request_timeout_secs must be at least 1"
        );
        let allowed_hosts = file.allowed_hosts.unwrap_or_default();
        for host in &allowed_hosts {
            anyhow::ensure!(
                !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
                "allowed_hosts: {host:?} is not a host name (a name only, like \
                 gw.example.com: no scheme, port or path)"
            );
        }
        let store = args.store.store.clone().or(file.store.clone());
        let workers = args.workers.or(file.workers).unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            // A worker waits out each store call. On the embedded store that is
            // microseconds of CPU; on Redis it is a network round trip and, with
            // appendfsync always, the server's fsync, which every call that
            // arrived during the previous one shares: more workers keep more calls
            // in flight (4 → 16 workers gave 3.5 times the decisions per second;
            // redis-benchmark's writes 64 → 256 in flight, 8,300 → 19,500/s).
            let per_core = match &store {
                Some(spec) if !super::names_a_file(spec) && spec.as_os_str() != "memory" => 32,
                _ => 2,
            };
            (per_core * cores).max(2)
        });
        anyhow::ensure!(workers > 0, "workers must be at least 1");
        let idle = args.idle_timeout.or(file.idle_timeout_secs).unwrap_or(60);
        anyhow::ensure!(idle > 0, "idle timeout must be at least 1 second");
        for webhook in &file.webhooks {
            alerts::validate(webhook).map_err(anyhow::Error::msg)?;
        }
        let mut names = NameRules::from_env();
        if let Some(case_sensitive) = file.case_sensitive_names {
            names.case_sensitive = case_sensitive;
        }
        let mut postfix = file.postfix;
        postfix.names = names;
        Ok(Settings {
            config: args.config.clone(),
            mode: file.mode.into(),
            webhooks: file.webhooks,
            admin_token_from,
            listen,
            unix: args.postfix_unix.or(file.postfix_unix),
            http,
            http_options: HttpOptions {
                max_body_bytes,
                max_connections,
                max_connections_per_client: per_client,
                idle_timeout: Duration::from_secs(idle),
                request_timeout,
                allowed_hosts,
                admin_token: admin_token.map(Arc::from),
                names,
            },
            workers,
            options: ServeOptions {
                idle_timeout: Duration::from_secs(idle),
                request_timeout,
                max_connections,
                max_connections_per_client: per_client,
            },
            store: StoreArgs {
                store: args.store.store.or(file.store),
            },
            init_store: args.init_store || file.init_store,
            policy: PolicyArgs {
                policy: args.policy.policy.or(file.policy),
                component: ComponentArgs {
                    component: args.policy.component.component.or(file.component),
                },
            },
            postfix,
        })
    }
}

/// The admin token from $CREDITGATE_ADMIN_TOKEN (which wins) or the config
/// file, and where it came from. An empty or short token is an error wherever it
/// comes from: left to pass, it would turn admin auth off without a word.
fn admin_token(
    from_file: Option<String>,
    config: &str,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    const MIN_LEN: usize = 16;
    let (token, from) = match std::env::var("CREDITGATE_ADMIN_TOKEN") {
        Ok(token) => (token, "$CREDITGATE_ADMIN_TOKEN".to_owned()),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("$CREDITGATE_ADMIN_TOKEN is not valid UTF-8")
        }
        Err(std::env::VarError::NotPresent) => match from_file {
            Some(token) => (token, format!("admin_token in {config}")),
            None => return Ok((None, None)),
        },
    };
    anyhow::ensure!(
        !token.is_empty(),
        "{from} is empty: set a token of at least {MIN_LEN} characters, or remove \
         it to leave the admin routes open"
    );
    anyhow::ensure!(
        token.chars().all(|c| c.is_ascii_graphic()),
        "{from} must be printable ASCII without spaces (it is sent in a header)"
    );
    anyhow::ensure!(
        token.len() >= MIN_LEN,
        "{from} is {} characters long: at least {MIN_LEN} are needed",
        token.len()
    );
    Ok((Some(token), Some(from)))
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    if args.check {
        return super::serve_check::check(args.config.clone(), Settings::new(args)?);
    }
    init_logging(args.log_format);
    let settings = Settings::new(args)?;
    let store = settings.store.open_as(if settings.init_store {
        Create::IfMissingOrEmpty
    } else {
        Create::IfMissing
    })?;
    let (policy_path, policy) = settings.policy.load()?;
    // The gateway's own decision budget, not the offline tools' generous one: a
    // guest stuck on a mail path must be cut off in milliseconds. One runtime for
    // the life of the process, so its instances come from a pool.
    let runtime_config = RuntimeConfig {
        instance_pool: Some(Gateway::instances_needed(settings.workers)),
        ..RuntimeConfig::default()
    };
    let runtime = Arc::new(Runtime::new(
        &component_source(&settings.policy),
        runtime_config.clone(),
    )?);
    let gateway = match Gateway::start_in(runtime, store, &policy, settings.mode, settings.workers)
    {
        Ok((gateway, summary)) => {
            if settings.mode == Mode::Shadow {
                warn!(
                    "mode = \"shadow\": requests past a limit are allowed and counted, not refused"
                );
            }
            for warning in &summary.warnings {
                warn!("{}", located(&policy_path, warning));
            }
            // Not refused at start (the policy file may be the one fix that is
            // coming), but said: those accounts' mail is deferred until they move.
            for line in stranded_warnings(&gateway) {
                error!("{line}");
            }
            Arc::new(gateway)
        }
        Err(e) => return Err(load_error(&policy_path, e)),
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = tokio.block_on(serve(
        &settings,
        gateway.clone(),
        &policy_path,
        runtime_config,
    ));
    // Whatever stopped the listeners, what was decided is made durable and the
    // store closed cleanly.
    gateway.shutdown();
    eprint!("{}", gateway.snapshot().report());
    served?;
    Ok(Exit::Success)
}

pub(super) fn component_source(policy: &PolicyArgs) -> ComponentSource {
    policy
        .component
        .component
        .clone()
        .map_or(ComponentSource::Builtin, ComponentSource::File)
}

async fn serve(
    settings: &Settings,
    gateway: Arc<Gateway>,
    policy_path: &Path,
    runtime_config: RuntimeConfig,
) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let reloader = reloader(
        gateway.clone(),
        &settings.policy,
        settings.config.clone(),
        runtime_config,
    );
    // Every listener is bound before any serves: a bad address fails the start,
    // not the first request.
    let mut listeners: Vec<(String, PolicyListener)> = Vec::new();
    if let Listen::At(addr) = settings.listen {
        let listener = creditgate::serve::bind_tcp(addr)
            .with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push((listener.local_addr()?.to_string(), listener.into()));
    }
    if let Some(path) = &settings.unix {
        let listener = bind_unix(path)?;
        listeners.push((format!("unix:{}", path.display()), listener.into()));
    }
    let http = match settings.http {
        Listen::At(addr) => Some(
            creditgate::serve::bind_tcp(addr)
                .with_context(|| format!("cannot listen on {addr} (http)"))?,
        ),
        Listen::Off => None,
    };
    anyhow::ensure!(
        !listeners.is_empty() || http.is_some(),
        "every listener is off: nothing to serve"
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    if !settings.webhooks.is_empty() {
        let (notifier, delivery) =
            Notifier::with_webhooks(settings.webhooks.clone(), Retry::default());
        gateway.set_notifier(notifier);
        // Not joined at shutdown: deliveries still retrying are abandoned (every
        // alert stays in the store's log, `creditgate alerts list`).
        tokio::spawn(delivery);
        info!(
            webhooks = settings.webhooks.len(),
            "alerts are posted to webhooks"
        );
    }
    for (name, listener) in listeners {
        info!(workers = settings.workers, policy = %policy_path.display(),
            "listening on {name} (postfix policy)");
        tasks.spawn(serve_postfix(
            listener,
            gateway.clone(),
            Arc::new(settings.postfix.clone()),
            settings.options,
            until_stopped(),
        ));
    }
    if let Some(listener) = http {
        info!("listening on http://{}", listener.local_addr()?);
        let admin_routes = http::ADMIN_ROUTES
            .iter()
            .map(|(method, path)| format!("{} {path}", method.to_uppercase()))
            .collect::<Vec<_>>()
            .join(", ");
        match &settings.admin_token_from {
            Some(from) => info!("admin auth on (token from {from}) for {admin_routes}"),
            None => warn!(
                "admin auth off (no admin_token): anyone who can reach the HTTP listener \
                 may call {admin_routes}"
            ),
        }
        let router = http::router(gateway.clone(), reloader.clone(), &settings.http_options);
        let (shutdown, options) = (until_stopped(), settings.http_options.clone());
        tasks.spawn(async move {
            if let Err(e) = http::serve_http(listener, router, &options, shutdown).await {
                warn!(error = %e, "the http listener failed");
            }
        });
    }
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                let reloader = reloader.clone();
                // Off the async workers: a component may take a second to compile.
                // A signal carries no options: a policy that strands accounts is
                // refused here, and forced in only through the API.
                let _ = tokio::task::spawn_blocking(move || reloader(false)).await;
            }
        }
    }
    info!("shutting down: no new connections, finishing requests in flight");
    let _ = stop.send(true);
    while let Some(done) = tasks.join_next().await {
        done.context("a listener task failed")?;
    }
    if let Some(path) = &settings.unix {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Binds the unix socket, replacing a stale one (a socket file nobody listens on,
/// left by a crash), never any other kind of file.
fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "cannot listen on {}: it exists and is not a socket",
            path.display()
        );
        anyhow::ensure!(
            std::os::unix::net::UnixStream::connect(path).is_err(),
            "cannot listen on {}: another process is listening there",
            path.display()
        );
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    // Postfix's smtpd runs as its own user: give the socket's group (make it
    // postfix's, or run serve as postfix) read and write, nobody else anything.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}

/// The reload both SIGHUP and `POST /v1/admin/reload` run: re-read the policy
/// file and the component file (when one is configured), validate them on a
/// scratch instance, and switch; a refusal is logged and the current version keeps
/// serving.
fn reloader(
    gateway: Arc<Gateway>,
    policy: &PolicyArgs,
    config_file: Option<PathBuf>,
    config: RuntimeConfig,
) -> Reloader {
    let policy = PolicyArgs {
        policy: policy.policy.clone(),
        component: ComponentArgs {
            component: policy.component.component.clone(),
        },
    };
    Arc::new(move |force| {
        let refused = |message: String, diagnostics: Vec<String>| {
            warn!("reload refused, the current policy keeps serving: {message}");
            for line in &diagnostics {
                warn!("{line}");
            }
            ReloadRefused {
                message,
                diagnostics,
            }
        };
        // The gateway counts the reloads it refuses; those refused before it sees
        // them are counted here.
        let refused_early = |message: String| {
            gateway.refused_reload();
            refused(message, vec![])
        };
        let (path, text) = policy
            .load()
            .map_err(|e| refused(format!("{e:#}"), vec![]))?;
        // The gateway's mode, from the config file as it is now: a switch from
        // shadow to enforce applies with this reload. A config that no longer
        // reads refuses the reload; the mode in force stays.
        let mode = match &config_file {
            Some(file) => Some(
                FileConfig::read(file)
                    .map_err(|e| refused_early(format!("{e:#}")))?
                    .mode
                    .into(),
            ),
            None => None,
        };
        let runtime = match &policy.component.component {
            None => None,
            Some(_) => Some(Arc::new(
                Runtime::new(&component_source(&policy), config.clone())
                    .map_err(|e| refused_early(e.to_string()))?,
            )),
        };
        let before = gateway.mode();
        match gateway.reload_in(&text, runtime, force, mode) {
            Ok(summary) => {
                let mut warnings: Vec<String> =
                    summary.warnings.iter().map(|w| located(&path, w)).collect();
                if force {
                    warnings.extend(stranded_warnings(&gateway));
                }
                for warning in &warnings {
                    warn!("{warning}");
                }
                let version = gateway.version();
                let after = gateway.mode();
                if after != before {
                    warn!(
                        version,
                        from = mode_name(before),
                        to = mode_name(after),
                        "the gateway's mode changed"
                    );
                }
                info!(version, policy = %path.display(), mode = mode_name(after), "policy reloaded");
                Ok(Reloaded { version, warnings })
            }
            Err(ReloadError::Load(LoadError::Policy(diagnostics))) => Err(refused(
                format!("invalid policy {}", path.display()),
                diagnostics.iter().map(|d| located(&path, d)).collect(),
            )),
            Err(e) => Err(refused(e.to_string(), vec![])),
        }
    })
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Shadow => "shadow",
    }
}

/// One line per plan accounts are on that the policy in force lacks.
fn stranded_warnings(gateway: &Gateway) -> Vec<String> {
    match gateway.stranded_plans() {
        Ok(plans) => plans
            .iter()
            .map(|p| {
                format!(
                    "plan {:?} is not in the policy in force, and {} account(s) are on it: \
                     every request of theirs is denied unknown_plan until they are moved to \
                     another plan",
                    p.plan, p.accounts
                )
            })
            .collect(),
        Err(e) => vec![format!("cannot check which plans accounts are on: {e}")],
    }
}

pub(super) fn load_error(path: &Path, e: LoadError) -> anyhow::Error {
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
