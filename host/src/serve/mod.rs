//! The gateway as a server: its configuration ([`Config`]), its listeners (the
//! Postfix policy protocol over TCP and a unix socket, and the HTTP API), reload
//! and shutdown. `creditgate serve` parses its flags into [`Overrides`], opens the
//! store and hands both here; a Rust gateway embeds the same [`Server`], and tests
//! run it in-process on ports bound to 0.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use creditgate::serve::{Config, Overrides, Server, Signals};
//! use creditgate::store::MemoryStore;
//!
//! let signals = Signals::new()?; // before anything can be signalled
//! let config = Config::load(None, Overrides::default())?;
//! let server = Server::start(&config, Arc::new(MemoryStore::new())).await?;
//! let stopped = server.run(signals).await; // until SIGTERM or SIGINT; SIGHUP reloads
//! eprint!("{}", stopped.stats.report());
//! # Ok(()) }
//! ```

mod config;
mod postfix;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

pub use config::{
    BUILTIN_POLICY, Config, ConfigError, DEFAULT_HTTP_LISTEN, DEFAULT_POLICY,
    DEFAULT_POSTFIX_LISTEN, Listen, Overrides, PolicySource,
};
pub use postfix::{
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT, DEFAULT_REQUEST_TIMEOUT, LISTEN_BACKLOG, PolicyListener,
    ServeOptions, bind_tcp, serve_postfix,
};

use crate::alerts::{Notifier, Retry};
use crate::bindings::{Mode, PolicySummary};
use crate::gateway::{Gateway, ReloadError};
use crate::http::{self, ReloadRefused, Reloaded, Reloader};
use crate::in_force::InForce;
use crate::metrics::GatewayStats;
use crate::names::NameRules;
use crate::runtime::{LoadError, Runtime, RuntimeConfig, located};
use crate::store::{Store, StoreError};

/// Why a server did not start, or stopped badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The policy is invalid: one line per problem, each naming its place.
    #[error("invalid policy {}:\n{}", path.display(), lines.join("\n"))]
    Policy { path: PathBuf, lines: Vec<String> },
    /// The component does not load.
    #[error(transparent)]
    Load(LoadError),
    #[error("cannot listen on {what}: {error}")]
    Listen { what: String, error: std::io::Error },
    #[error("every listener is off: nothing to serve")]
    NothingToServe,
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
    #[error("a listener task failed: {0}")]
    Listener(tokio::task::JoinError),
    #[error("cannot record the policy in force in the store: {0}")]
    InForce(StoreError),
}

impl ServeError {
    /// A component or policy that does not load, the policy's problems located in
    /// `path`.
    pub fn load(path: &Path, e: LoadError) -> Self {
        match e {
            LoadError::Policy(diagnostics) => ServeError::Policy {
                path: path.to_owned(),
                lines: diagnostics.iter().map(|d| located(path, d)).collect(),
            },
            e => ServeError::Load(e),
        }
    }
}

/// The signals a server answers: SIGTERM and SIGINT stop it, SIGHUP reloads.
/// Made before the server starts, so that a signal sent once it listens is never
/// met by the default action (which would kill the process mid-commit).
#[derive(Debug)]
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    /// Must be called within a tokio runtime.
    pub fn new() -> Result<Self, ServeError> {
        let on = |kind| signal(kind).map_err(ServeError::Signals);
        Ok(Signals {
            terminate: on(SignalKind::terminate())?,
            interrupt: on(SignalKind::interrupt())?,
            hangup: on(SignalKind::hangup())?,
        })
    }
}

/// A running gateway: the decision workers, and every listener the config asks
/// for, serving until [`Server::shutdown`].
pub struct Server {
    gateway: Arc<Gateway>,
    reloader: Reloader,
    postfix_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    unix: Option<PathBuf>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// What a stopped server leaves.
#[derive(Debug)]
pub struct Stopped {
    /// The gateway's figures over its life (`stats.report()` is what `serve`
    /// prints on exit).
    pub stats: GatewayStats,
    /// A listener task that failed (panicked); everything decided was still made
    /// durable.
    pub failure: Option<ServeError>,
}

impl Server {
    /// Binds every listener, compiles the component, starts the gateway on
    /// `store` with the policy and serves. Every listener is bound before any
    /// serves: a bad address fails the start, not the first request. Blocks its
    /// thread while the component compiles (once, at start).
    pub async fn start(config: &Config, store: Arc<dyn Store>) -> Result<Server, ServeError> {
        let listen = |what: String| move |error| ServeError::Listen { what, error };
        let mut postfix: Vec<(String, PolicyListener)> = Vec::new();
        let mut postfix_addr = None;
        if let Listen::At(addr) = config.postfix_listen {
            let listener = bind_tcp(addr).map_err(listen(addr.to_string()))?;
            let bound = listener.local_addr().map_err(listen(addr.to_string()))?;
            postfix_addr = Some(bound);
            postfix.push((bound.to_string(), listener.into()));
        }
        if let Some(path) = &config.postfix_unix {
            let listener = bind_unix(path)?;
            postfix.push((format!("unix:{}", path.display()), listener.into()));
        }
        let http_listener = match config.http_listen {
            Listen::At(addr) => Some(bind_tcp(addr).map_err(listen(format!("{addr} (http)")))?),
            Listen::Off => None,
        };
        let http_addr = match &http_listener {
            Some(listener) => Some(
                listener
                    .local_addr()
                    .map_err(listen("the http listener".into()))?,
            ),
            None => None,
        };
        if postfix.is_empty() && http_listener.is_none() {
            return Err(ServeError::NothingToServe);
        }

        let (policy_path, policy) = config.policy.load()?;
        // The gateway's own decision budget, not the offline tools' generous one: a
        // guest stuck on a mail path must be cut off in milliseconds. One runtime
        // for the life of the server, so its instances come from a pool.
        let runtime_config = RuntimeConfig {
            instance_pool: Some(Gateway::instances_needed(config.workers)),
            ..RuntimeConfig::default()
        };
        let runtime = Runtime::new(&config.policy.component_source(), runtime_config.clone())
            .map_err(ServeError::Load)?;
        let (gateway, summary) = Gateway::start_in(
            Arc::new(runtime),
            store,
            &policy,
            config.mode,
            config.workers,
        )
        .map_err(|e| ServeError::load(&policy_path, e))?;
        let gateway = Arc::new(gateway);
        if config.mode == Mode::Shadow {
            warn!("mode = \"shadow\": requests past a limit are allowed and counted, not refused");
        }
        for warning in &summary.warnings {
            warn!("{}", located(&policy_path, warning));
        }
        record_in_force(&gateway, &policy_path, &policy, config.postfix.names)
            .map_err(ServeError::InForce)?;
        // Not refused at start (the policy file may be the one fix that is coming),
        // but said: those accounts' mail is deferred until they move.
        for line in stranded_warnings(&gateway) {
            error!("{line}");
        }

        let reloader = reloader(
            gateway.clone(),
            config.policy.clone(),
            config.file.clone(),
            runtime_config,
            config.postfix.names,
        );
        let (stop, stopped) = watch::channel(false);
        let until_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let mut tasks = JoinSet::new();
        if !config.webhooks.is_empty() {
            let (notifier, delivery) =
                Notifier::with_webhooks(config.webhooks.clone(), Retry::default());
            gateway.set_notifier(notifier);
            // Not joined at shutdown: deliveries still retrying are abandoned (every
            // alert stays in the store's log, `creditgate alerts list`).
            tokio::spawn(delivery);
            info!(
                webhooks = config.webhooks.len(),
                "alerts are posted to webhooks"
            );
        }
        if !postfix.is_empty() {
            for warning in config.postfix.warnings() {
                warn!("{warning}");
            }
        }
        for (name, listener) in postfix {
            info!(workers = config.workers, io_threads = config.io_threads,
                policy = %policy_path.display(),
                "listening on {name} (postfix policy)");
            tasks.spawn(serve_postfix(
                listener,
                gateway.clone(),
                Arc::new(config.postfix.clone()),
                config.listener,
                until_stopped(),
            ));
        }
        if let (Some(listener), Some(addr)) = (http_listener, http_addr) {
            info!("listening on http://{addr}");
            let admin_routes = http::ADMIN_ROUTES
                .iter()
                .map(|(method, path)| format!("{} {path}", method.to_uppercase()))
                .collect::<Vec<_>>()
                .join(", ");
            match &config.admin_token_from {
                Some(from) => info!("admin auth on (token from {from}) for {admin_routes}"),
                None => warn!(
                    "admin auth off (no admin_token): anyone who can reach the HTTP listener \
                     may call {admin_routes}"
                ),
            }
            let router = http::router(gateway.clone(), reloader.clone(), &config.http);
            let (shutdown, options) = (until_stopped(), config.http.clone());
            tasks.spawn(async move {
                if let Err(e) = http::serve_http(listener, router, &options, shutdown).await {
                    warn!(error = %e, "the http listener failed");
                }
            });
        }
        Ok(Server {
            gateway,
            reloader,
            postfix_addr,
            http_addr,
            unix: config.postfix_unix.clone(),
            stop,
            tasks,
        })
    }

    /// Where the Postfix policy listener is bound (with the port the system
    /// chose, for `127.0.0.1:0`); None when it is off.
    pub fn postfix_addr(&self) -> Option<SocketAddr> {
        self.postfix_addr
    }

    /// Where the HTTP API is bound; None when it is off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The gateway the listeners decide through.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Re-reads the policy (and the component, when one is configured) and
    /// switches to it, as SIGHUP and `POST /v1/admin/reload` do; refused whole,
    /// the current version serving on, when it does not load or (unless `force`)
    /// lacks plans that accounts are on.
    pub async fn reload(&self, force: bool) -> Result<Reloaded, ReloadRefused> {
        let reloader = self.reloader.clone();
        // Off the async workers: a component may take a second to compile.
        tokio::task::spawn_blocking(move || reloader(force))
            .await
            .unwrap_or_else(|e| {
                Err(ReloadRefused {
                    message: format!("the reload failed: {e}"),
                    diagnostics: vec![],
                })
            })
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP, then shuts down.
    pub async fn run(self, mut signals: Signals) -> Stopped {
        loop {
            tokio::select! {
                _ = signals.terminate.recv() => break,
                _ = signals.interrupt.recv() => break,
                _ = signals.hangup.recv() => {
                    // A signal carries no options: a policy that strands accounts is
                    // refused here, and forced in only through the API.
                    let _ = self.reload(false).await;
                }
            }
        }
        self.shutdown().await
    }

    /// Stops accepting, lets every connection finish the request it is
    /// answering, then makes everything decided durable and closes the store,
    /// even when a listener task failed (said in [`Stopped::failure`]).
    pub async fn shutdown(mut self) -> Stopped {
        info!("shutting down: no new connections, finishing requests in flight");
        let _ = self.stop.send(true);
        let mut failure = None;
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = done {
                failure.get_or_insert(ServeError::Listener(e));
            }
        }
        if let Some(path) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
        let gateway = self.gateway.clone();
        // Joins the workers and syncs the store: off the async workers.
        let stats = tokio::task::spawn_blocking(move || {
            gateway.shutdown();
            gateway.snapshot()
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        Stopped { stats, failure }
    }
}

/// Binds the unix socket, replacing a stale one (a socket file nobody listens on,
/// left by a crash), never any other kind of file.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let refused = |message: String| ServeError::Listen {
        what: path.display().to_string(),
        error: std::io::Error::other(message),
    };
    let failed = |error| ServeError::Listen {
        what: path.display().to_string(),
        error,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(refused("it exists and is not a socket".into()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(refused("another process is listening there".into()));
        }
        std::fs::remove_file(path)
            .map_err(|e| refused(format!("cannot remove the stale socket: {e}")))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(failed)?;
    // Postfix's smtpd runs as its own user: give the socket's group (make it
    // postfix's, or run serve as postfix) read and write, nobody else anything.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| refused(format!("cannot set its mode: {e}")))?;
    Ok(listener)
}

/// The reload both SIGHUP and `POST /v1/admin/reload` run: re-read the policy
/// file and the component file (when one is configured), validate them on a
/// scratch instance, and switch; a refusal is logged and the current version keeps
/// serving.
fn reloader(
    gateway: Arc<Gateway>,
    policy: PolicySource,
    config_file: Option<PathBuf>,
    config: RuntimeConfig,
    names: NameRules,
) -> Reloader {
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
        let (path, text) = policy.load().map_err(|e| refused(e.to_string(), vec![]))?;
        // The gateway's mode, from the config file as it is now: a switch from
        // shadow to enforce applies with this reload. A config that no longer
        // reads refuses the reload; the mode in force stays.
        let mode = match &config_file {
            Some(file) => Some(config::mode_in(file).map_err(|e| refused_early(e.to_string()))?),
            None => None,
        };
        let runtime = match &policy.component {
            None => None,
            Some(_) => Some(Arc::new(
                Runtime::new(&policy.component_source(), config.clone())
                    .map_err(|e| refused_early(e.to_string()))?,
            )),
        };
        let before = gateway.mode();
        let (_, limits_before) = gateway.policy_summary();
        match gateway.reload_in(&text, runtime, force, mode) {
            Ok(summary) => {
                let mut warnings: Vec<String> =
                    summary.warnings.iter().map(|w| located(&path, w)).collect();
                if force {
                    warnings.extend(stranded_warnings(&gateway));
                }
                warnings.extend(over_limit_warnings(&gateway, &limits_before));
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
                // The switch is made: a store that cannot say so leaves the other
                // commands on the policy before, which the log says.
                if let Err(e) = record_in_force(&gateway, &path, &text, names) {
                    error!(
                        "cannot record the reloaded policy in the store ({e}): commands \
                         that decide on this store outside the gateway (leads import, \
                         account change-plan, replay --store) refuse to until it is"
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

/// Records in the gateway's store the policy it now decides under (see
/// [`crate::in_force`]), saying in the log when another gateway recorded other
/// terms there: gateways on one store must run one policy.
fn record_in_force(
    gateway: &Gateway,
    path: &Path,
    policy: &str,
    names: NameRules,
) -> Result<(), StoreError> {
    let store = gateway.store().as_ref();
    let terms = InForce::new(path, policy, names);
    match InForce::read(store) {
        Ok(Some(before)) if before.recorded_by != terms.recorded_by => {
            if !before.is(policy) || before.case_sensitive_names != names.case_sensitive {
                warn!(
                    "the store's terms were {}; this gateway's are {} (sha256 {}, \
                     case_sensitive_names = {}): every gateway on one store must run \
                     the same policy and names rule",
                    before.describe(),
                    terms.source,
                    terms.short(),
                    terms.case_sensitive_names
                );
            }
        }
        Ok(_) => {}
        Err(e) => warn!("{e}"),
    }
    terms.record(store)
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Shadow => "shadow",
    }
}

/// One line per plan whose limits the reload lowered below what some of its
/// accounts already use: a reload takes nothing back, so they are said.
fn over_limit_warnings(gateway: &Gateway, before: &PolicySummary) -> Vec<String> {
    match gateway.over_lowered_limits(before) {
        Ok(plans) => plans
            .iter()
            .map(|p| {
                format!(
                    "plan {:?} has lower limits than before, and {} account(s) on it use more \
                     than the new ones: they keep what they hold, and are denied what would \
                     take them further over (email credits until their cycle resets)",
                    p.plan, p.accounts
                )
            })
            .collect(),
        Err(e) => vec![format!(
            "cannot check the accounts against the lowered limits: {e}"
        )],
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
