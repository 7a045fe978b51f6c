//! `serve`'s configuration: the TOML file, the overrides a caller (the binary's
//! flags) puts over it, the defaults, and their validation. Everything is checked
//! here, before anything is opened or bound, so that a mistake fails the start with
//! a message that names the field, never the first request.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{DEFAULT_MAX_CONNECTIONS_PER_CLIENT, DEFAULT_REQUEST_TIMEOUT, ServeOptions};
use crate::alerts::{self, Webhook};
use crate::bindings::Mode;
use crate::http::{self, HttpOptions};
use crate::names::NameRules;
use crate::postfix::PostfixConfig;
use crate::runtime::ComponentSource;
use crate::store::names_a_file;

/// Where the Postfix policy listener binds by default: 127.0.0.1:10040.
pub const DEFAULT_POSTFIX_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10040));
/// Where the HTTP API binds by default: 127.0.0.1:8080.
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// The default policy's path, relative to the working directory.
pub const DEFAULT_POLICY: &str = "policies/smartlead.toml";
/// The default policy's text, for a process started outside a checkout.
pub const BUILTIN_POLICY: &str = include_str!("../../../policies/smartlead.toml");

/// Why a configuration was refused. Nothing was opened or bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file is not valid TOML, or holds a key or value `serve` does not take
    /// (the message gives its line and column).
    #[error("invalid config {}: {error}", path.display())]
    Parse {
        path: PathBuf,
        error: Box<toml::de::Error>,
    },
    /// A value parsed but is out of range; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read policy {}: {error}", path.display())]
    Policy {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
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

/// The policy file and the component that runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySource {
    /// Default: [`DEFAULT_POLICY`] if it exists, else [`BUILTIN_POLICY`].
    pub policy: Option<PathBuf>,
    /// Default: the component built from `guest/`, inside the binary.
    pub component: Option<PathBuf>,
}

impl PolicySource {
    /// The policy's name for messages, and its text.
    pub fn load(&self) -> Result<(PathBuf, String), ConfigError> {
        let path = self
            .policy
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY));
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            // Outside a checkout, the defaults still work on Smartlead's plans.
            Err(e) if self.policy.is_none() && e.kind() == std::io::ErrorKind::NotFound => Ok((
                PathBuf::from("(built-in smartlead.toml)"),
                BUILTIN_POLICY.to_owned(),
            )),
            Err(error) => Err(ConfigError::Policy { path, error }),
        }
    }

    /// Where the component comes from.
    pub fn component_source(&self) -> ComponentSource {
        self.component
            .clone()
            .map_or(ComponentSource::Builtin, ComponentSource::File)
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

/// What a caller sets over the file (the binary: its flags). `None` leaves the
/// file's value, or the default.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub postfix_listen: Option<Listen>,
    pub postfix_unix: Option<PathBuf>,
    pub http_listen: Option<Listen>,
    pub http_max_body_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub workers: Option<usize>,
    pub io_threads: Option<usize>,
    pub idle_timeout_secs: Option<u64>,
    pub store: Option<PathBuf>,
    /// True: as `init_store = true` in the file.
    pub init_store: bool,
    pub policy: Option<PathBuf>,
    pub component: Option<PathBuf>,
    /// How long one request may take from its first byte to its last, on both
    /// listeners: the file's `request_timeout_secs`, to any precision.
    pub request_timeout: Option<Duration>,
    /// As the file's `allowed_hosts`, in its place.
    pub allowed_hosts: Option<Vec<String>>,
    /// The admin token, over the file's and `$CREDITGATE_ADMIN_TOKEN`: for a
    /// gateway that embeds the server. The binary never sets it (a flag would
    /// show in `ps`).
    pub admin_token: Option<String>,
}

/// The config file: the overrides' keys, and the front ends' settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
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
    /// Serve the admin routes without a token on an address that is not
    /// loopback: refused unless this says the network is trusted.
    #[serde(default)]
    insecure_open_admin: bool,
    /// Where fired credit alerts are POSTed: `[[webhooks]] url, secret`.
    #[serde(default)]
    webhooks: Vec<Webhook>,
    workers: Option<usize>,
    /// Threads that read and answer the sockets.
    io_threads: Option<usize>,
    idle_timeout_secs: Option<u64>,
    store: Option<PathBuf>,
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

impl File {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut file: File = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            error: Box::new(error),
        })?;
        // Paths in the file are relative to the file, so that it can move with them.
        let dir = path.parent().unwrap_or(Path::new(""));
        let relative = |p: &mut Option<PathBuf>| {
            if let Some(p) = p.as_mut() {
                *p = dir.join(&*p);
            }
        };
        relative(&mut file.policy);
        relative(&mut file.component);
        relative(&mut file.postfix_unix);
        if file.store.as_deref().is_some_and(names_a_file) {
            relative(&mut file.store);
        }
        Ok(file)
    }
}

/// Everything a [`super::Server`] needs, file and overrides merged and validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file read, if any (for messages, and for `mode` at each reload).
    pub file: Option<PathBuf>,
    /// The gateway's mode: every plan's that sets none.
    pub mode: Mode,
    pub postfix_listen: Listen,
    /// Also listen for Postfix on this unix socket.
    pub postfix_unix: Option<PathBuf>,
    pub http_listen: Listen,
    pub http: HttpOptions,
    /// Where the admin token came from, when there is one (for the log).
    pub admin_token_from: Option<String>,
    /// The Postfix listeners' own settings.
    pub listener: ServeOptions,
    pub postfix: PostfixConfig,
    pub workers: usize,
    /// Threads of the async runtime that reads and answers the sockets (both
    /// listeners); the decisions run on threads of their own ([`workers`],
    /// the committer).
    ///
    /// [`workers`]: Config::workers
    pub io_threads: usize,
    /// The store's spec (a file, `memory`, a Redis URL); `None`: the default file.
    /// The caller opens it: an embedding gateway may pass a store of its own.
    pub store: Option<PathBuf>,
    /// Start a new ledger in a store file that exists but is empty.
    pub init_store: bool,
    pub policy: PolicySource,
    pub webhooks: Vec<Webhook>,
}

impl Config {
    /// Reads `file` (if any), puts `overrides` over it and validates the result.
    /// Reads `$CREDITGATE_ADMIN_TOKEN` (which wins over the file's token) and
    /// `$CREDITGATE_CASE_SENSITIVE_NAMES` too.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid(message);
        let from = match file {
            Some(path) => File::read(path)?,
            None => File::default(),
        };
        let postfix_listen = (overrides.postfix_listen.or(from.postfix_listen))
            .unwrap_or(Listen::At(DEFAULT_POSTFIX_LISTEN));
        let http_listen =
            (overrides.http_listen.or(from.http_listen)).unwrap_or(Listen::At(DEFAULT_HTTP_LISTEN));
        let max_body_bytes = overrides
            .http_max_body_bytes
            .or(from.http_max_body_bytes)
            .unwrap_or(http::DEFAULT_MAX_BODY_BYTES);
        at_least_1(max_body_bytes, "http_max_body_bytes")?;
        let max_connections = overrides
            .max_connections
            .or(from.max_connections)
            .unwrap_or(http::DEFAULT_MAX_CONNECTIONS);
        at_least_1(max_connections, "max_connections")?;
        let file_name = file.map_or_else(
            || "the config".to_owned(),
            |path| path.display().to_string(),
        );
        let (admin_token, admin_token_from) =
            admin_token(overrides.admin_token, from.admin_token, &file_name)?;
        // Without a token, whoever reaches the API may subscribe accounts,
        // move them to any plan (unlimited credits for the asking) and reload
        // the policy: fine on loopback, not on a network unless it says so.
        if let Listen::At(addr) = http_listen
            && !addr.ip().is_loopback()
            && admin_token.is_none()
            && !from.insecure_open_admin
        {
            return Err(invalid(format!(
                "http_listen {addr} is reachable from the network and no admin_token is set: \
                 anyone who can reach it could subscribe accounts, move them to any plan and \
                 reload the policy; set admin_token in {file_name} (or \
                 $CREDITGATE_ADMIN_TOKEN), or insecure_open_admin = true if only trusted \
                 hosts can reach it"
            )));
        }
        let per_client = from
            .max_connections_per_client
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_CLIENT);
        at_least_1(per_client, "max_connections_per_client")?;
        let request_timeout = overrides
            .request_timeout
            .or(from.request_timeout_secs.map(Duration::from_secs))
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        if request_timeout.is_zero() {
            return Err(invalid("request_timeout_secs must be at least 1".into()));
        }
        let allowed_hosts = overrides
            .allowed_hosts
            .or(from.allowed_hosts)
            .unwrap_or_default();
        for host in &allowed_hosts {
            let name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
            if host.is_empty() || !host.chars().all(name) {
                return Err(invalid(format!(
                    "allowed_hosts: {host:?} is not a host name (a name only, like \
                     gw.example.com: no scheme, port or path)"
                )));
            }
        }
        let store = overrides.store.or(from.store);
        let workers = overrides
            .workers
            .or(from.workers)
            .unwrap_or_else(|| default_workers(store.as_deref()));
        at_least_1(workers, "workers")?;
        let io_threads = overrides
            .io_threads
            .or(from.io_threads)
            .unwrap_or_else(default_io_threads);
        at_least_1(io_threads, "io_threads")?;
        let idle = overrides
            .idle_timeout_secs
            .or(from.idle_timeout_secs)
            .unwrap_or(60);
        if idle == 0 {
            return Err(invalid("idle timeout must be at least 1 second".into()));
        }
        for webhook in &from.webhooks {
            alerts::validate(webhook).map_err(invalid)?;
        }
        let mut names = NameRules::from_env();
        if let Some(case_sensitive) = from.case_sensitive_names {
            names.case_sensitive = case_sensitive;
        }
        let mut postfix = from.postfix;
        postfix.names = names;
        let idle_timeout = Duration::from_secs(idle);
        Ok(Config {
            file: file.map(Path::to_owned),
            mode: from.mode.into(),
            postfix_listen,
            postfix_unix: overrides.postfix_unix.or(from.postfix_unix),
            http_listen,
            http: HttpOptions {
                max_body_bytes,
                max_connections,
                max_connections_per_client: per_client,
                idle_timeout,
                request_timeout,
                allowed_hosts,
                admin_token: admin_token.map(Arc::from),
                names,
            },
            admin_token_from,
            listener: ServeOptions {
                idle_timeout,
                request_timeout,
                max_connections,
                max_connections_per_client: per_client,
            },
            postfix,
            workers,
            io_threads,
            store,
            init_store: overrides.init_store || from.init_store,
            policy: PolicySource {
                policy: overrides.policy.or(from.policy),
                component: overrides.component.or(from.component),
            },
            webhooks: from.webhooks,
        })
    }
}

/// The gateway's mode as `file` says now: a reload reads it again, so that a
/// switch from shadow to enforce applies with the reload.
pub(super) fn mode_in(file: &Path) -> Result<Mode, ConfigError> {
    Ok(File::read(file)?.mode.into())
}

fn at_least_1(value: usize, field: &str) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid(format!("{field} must be at least 1")));
    }
    Ok(())
}

/// Decision workers by default: twice the cores on the embedded or in-memory
/// store, 32 times on Redis.
///
/// A worker waits out each store call. On the embedded store that is
/// microseconds of CPU; on Redis it is a network round trip and, with
/// appendfsync always, the server's fsync, which every call that arrived during
/// the previous one shares: more workers keep more calls in flight (4 → 16
/// workers gave 3.5 times the decisions per second; redis-benchmark's writes
/// 64 → 256 in flight, 8,300 → 19,500/s).
fn default_workers(store: Option<&Path>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_core = match store {
        Some(spec) if !names_a_file(spec) && spec.as_os_str() != "memory" => 32,
        _ => 2,
    };
    (per_core * cores).max(2)
}

/// Socket threads by default: one per core, as tokio's own default.
///
/// Which is faster depends on the traffic, and the difference is within what a
/// busy machine varies by (2 cores, 64 Postfix connections, runs alternated):
/// with every request a charge, one thread did more decisions a second in 7 of
/// 12 pairs and fewer in 3 (26,900/s against 25,300/s on average over six),
/// the charges' work being on the write worker and the committer, beside which
/// a second socket thread mostly adds context switches; with Postfix's mix,
/// where most requests are checks answered at once, two did 6–16% more in
/// three pairs of four.
fn default_io_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The admin token from the caller's overrides, $CREDITGATE_ADMIN_TOKEN or the
/// config file (the first there is), and where it came from. An empty or short
/// token is an error wherever it comes from: left to pass, it would turn admin
/// auth off without a word.
fn admin_token(
    overridden: Option<String>,
    from_file: Option<String>,
    config: &str,
) -> Result<(Option<String>, Option<String>), ConfigError> {
    const MIN_LEN: usize = 16;
    let invalid = |message: String| Err(ConfigError::Invalid(message));
    let given = match overridden {
        Some(token) => Ok((token, "the admin token given".to_owned())),
        None => std::env::var("CREDITGATE_ADMIN_TOKEN")
            .map(|token| (token, "$CREDITGATE_ADMIN_TOKEN".to_owned())),
    };
    let (token, from) = match given {
        Ok(given) => given,
        Err(std::env::VarError::NotUnicode(_)) => {
            return invalid("$CREDITGATE_ADMIN_TOKEN is not valid UTF-8".into());
        }
        Err(std::env::VarError::NotPresent) => match from_file {
            Some(token) => (token, format!("admin_token in {config}")),
            None => return Ok((None, None)),
        },
    };
    if token.is_empty() {
        return invalid(format!(
            "{from} is empty: set a token of at least {MIN_LEN} characters, or remove \
             it to leave the admin routes open"
        ));
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return invalid(format!(
            "{from} must be printable ASCII without spaces (it is sent in a header)"
        ));
    }
    if token.len() < MIN_LEN {
        return invalid(format!(
            "{from} is {} characters long: at least {MIN_LEN} are needed",
            token.len()
        ));
    }
    Ok((Some(token), Some(from)))
}
