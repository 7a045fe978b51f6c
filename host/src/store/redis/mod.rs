//! A [`Store`] on Redis (or Redis Cluster): the shared ledger of several gateway
//! hosts.
//!
//! # Atomicity
//!
//! Every primitive that writes is one Lua script run on the server (`EVALSHA`,
//! loaded again by the client on `NOSCRIPT` after a restart or a failover), or one
//! single command; a script reads and decides before it writes anything, and Redis
//! runs it whole with no other command in between. Nothing is read by the client
//! and written back. Reads that decide nothing (`record_get`, `counter_get`,
//! `member_count`) are single commands.
//!
//! Numbers cross into Lua as decimal strings: Lua's numbers are doubles, exact only
//! to 2^53, while counters are u64 and instants i64 nanoseconds (about 1.8e18
//! today). The scripts add and compare those strings digit-wise.
//!
//! The scripts are Lua files in `lua/`, one per primitive and a prelude every
//! one starts with, included at build time.
//!
//! # Key layout
//!
//! Every key of a scope starts with `PREFIX:{TAG}:`, where `PREFIX` is
//! `creditgate` unless configured (`?prefix=NAME` on the URL) and `TAG` is the
//! scope with `%` written `%25` and `}` written `%7D` (the empty scope is `%`), so
//! that the braces always hold exactly one non-empty Redis Cluster hash tag: every
//! key of one scope lives in one slot, and one script can touch them all.
//!
//! | key                        | type   | holds |
//! |----------------------------|--------|-------|
//! | `P:{T}:rec`                | hash   | record key → value |
//! | `P:{T}:ctr:NAME`           | hash   | `v` → value (u64), `x` → expires_at (i64 ns; absent: never) |
//! | `P:{T}:ctrs`               | zset   | counter names, scored by when Redis may drop them (ms; `inf`: never) |
//! | `P:{T}:once:KEY`           | string | the `once` marker: `EXPIRES_AT FINGERPRINT` (i64 ns, u64), or `EXPIRES_AT` alone as written before markers carried a fingerprint (read as none: it matches no call's) |
//! | `P:{T}:onces`              | zset   | once keys, scored like `ctrs` |
//! | `P:{T}:mem`                | hash   | member → number of groups holding it; `HLEN` is the member count |
//! | `P:{T}:groups`             | zset   | group names with at least one member (all scores 0: byte order) |
//! | `P:{T}:grp:GROUP`          | zset   | the group's members (all scores 0: byte order) |
//! | `P:{T}:excl`               | hash   | group → its members no other group holds (absent: 0) |
//! | `P:{T}:exclv`              | string | `1` while `excl` is kept; absent in a scope written before it was, whose first membership change computes it once |
//! | `P:scopes`                 | set    | every scope ever written (no hash tag: one slot of its own) |
//!
//! The host's alert log lives apart from every scope, under `P:alerts:{O}:`, `O`
//! the owner written as `T` is:
//!
//! | key                        | type   | holds |
//! |----------------------------|--------|-------|
//! | `P:alerts:{O}:log`         | hash   | alert key → value |
//! | `P:alerts:{O}:keys`        | zset   | the alert keys (all scores 0: byte order) |
//! | `P:alerts:{O}:seq`         | string | the last sequence number taken |
//! | `P:alert-owners`           | zset   | every owner with a log (scores 0), added before its first alert |
//!
//! A store written before the log had keys of its own kept it in scopes
//! `"\u{1}alerts/<owner>"`; connecting moves them (idempotently, so two hosts
//! connecting at once do no harm) and removes those scopes.
//!
//! # Expiry
//!
//! Semantics are judged against each call's `now`, exactly as in the other
//! backends: expires_at is stored in the value and compared in the script. Redis
//! TTLs only collect garbage: a counter or `once` marker whose expires_at, plus
//! [`RedisConfig::gc_margin`] (a day by default, which covers clock skew between
//! hosts), is still in the future by the real clock gets `PEXPIREAT` at that
//! instant; one already past it, or one that never expires, gets no TTL (a trace
//! replayed with instants of 1970 would otherwise vanish as it is written). The
//! index sets (`ctrs`, `onces`) expire themselves with their last entry, and drop
//! entries past their deadline whenever a counter of the scope is created or
//! given another expiry (a new billing cycle's counter, about once a cycle):
//! not at every charge, where pruning would cost as much as the charge itself
//! and, within a cycle, finds nothing to drop. Memberships
//! and records never expire. Once Redis has dropped a counter it reads as 0 and is
//! no longer exported: only a caller whose clock lags the real one by more than
//! the margin could tell.
//!
//! # Listing scopes
//!
//! `P:scopes` lists scopes for [`Store::scopes`] and `store copy`. It is only ever
//! added to, and `scopes()` keeps those that hold records, members or live
//! counters (checked by one read-only script per scope, run concurrently). With a
//! single server the write scripts add the scope themselves, atomically. In a
//! cluster that key lives in another slot than the scope's, so the client adds the
//! scope (`SADD`, idempotent) *before* the first write to it, and remembers for a
//! few minutes that it did: a crash between the two leaves at worst a listed scope
//! that holds nothing, never a scope with data that is not listed.
//!
//! # Durability
//!
//! [`Store::persist`] does nothing: each script is applied when it returns, and how
//! durable it is then is the server's `appendonly`/`appendfsync` setting, which an
//! operator must choose:
//!
//! - `appendonly yes` + `appendfsync always`: Redis writes and fsyncs the append-only
//!   file before it answers a write, so every decision a gateway answered survives
//!   a crash of Redis, of its host, or a power cut (`redis::a_crash_loses_no_…`
//!   kills redis-server with SIGKILL mid-stream and finds every acknowledged
//!   charge). Each write waits for a disk sync, which Redis shares among all the
//!   writes of one event-loop turn: throughput grows with the calls in flight
//!   until the server's CPU is the limit (`redis_store_throughput`;
//!   `benches/scripts/redis-gateways.sh` for whole gateways).
//! - `appendonly yes` + `appendfsync everysec` (Redis's default once AOF is on):
//!   a clean restart (`SHUTDOWN`, `systemctl restart`) loses nothing, but a crash
//!   can lose the writes of the last second or two that were acknowledged and not
//!   yet synced (Redis delays even the write to the file while a slow sync is
//!   under way): credits charged then are given back, and a message retried after
//!   the crash may be charged again.
//! - RDB snapshots only (`save ...`) or no persistence: a restart loses everything
//!   since the last snapshot. Not for a ledger.
//!
//! Keep `no-appendfsync-on-rewrite no` (the default): `yes` skips the syncs while
//! the file is being rewritten. Replication is asynchronous: a failover to a
//! replica may lose the last writes the old primary acknowledged, whatever the
//! fsync setting (`WAIT` would narrow that window; this store does not use it).
//!
//! # Connections
//!
//! One multiplexed connection per server ([`redis::aio::ConnectionManager`], or
//! [`redis::cluster_async::ClusterConnection`] with one per node), which
//! reconnects with exponential backoff after a failure. It runs on a small tokio
//! runtime owned by the store; the [`Store`] methods are synchronous and wait for
//! their answer, at most [`RedisConfig::call_timeout`]. The primitives go through
//! a collector ([`collect`]) that sends the calls every worker thread has in
//! flight as one pipeline per node, two at a time to each: one round trip per
//! group, each call still one atomic script with an answer of its own. With
//! `appendfsync always` a group then shares one fsync of the server, which is
//! what bounds a gateway on Redis: the more calls in flight, the more share it
//! (`serve` runs 32 workers a core on Redis for that). Bulk operations (listing,
//! export, import, batches) go out directly. A failure or timeout is
//! [`StoreError::Unavailable`] naming the server. A script is all or nothing, but
//! a call whose connection broke after the request left cannot know whether it
//! ran: a `counter_add` with a `once` key (every charge of the Postfix gateway)
//! is safe to retry, it answers `repeated` if it had been applied. The cluster
//! client itself retries a request after a lost connection or a redirection.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisError, RedisFuture, RedisResult, Script, Value};

use super::{
    CounterAdd, GroupCount, Guard, Instant, ScopeDump, Store, StoreError, check_batch,
    check_counter, check_guarded_member, check_member, check_name, check_value,
};
use crate::bindings::{
    GroupCleared, GuardedAdd, MemberAddOutcome, MemberAdded, MemberRemoveOutcome, MemberRemoved,
    MembersAdded, Tally,
};

/// Expiry stored for "never", as in the other backends.
const NEVER: Instant = i64::MAX;

/// Memberships fetched per round trip by [`Store::visit_members`].
const PAGE: usize = 1_000;

/// How long a cluster client trusts its memory that a scope is in `P:scopes`.
const REGISTERED_FOR: Duration = Duration::from_secs(300);

/// Settings of a [`RedisStore`] beyond the server's address.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The start of every key; several deployments can share one Redis
    /// under different prefixes. No braces.
    pub prefix: String,
    /// Limit on establishing the first connection (and each reconnection attempt).
    pub connect_timeout: Duration,
    /// Limit on each primitive, round trip included.
    pub call_timeout: Duration,
    /// Limit on the bulk operations: listing scopes, exporting or importing one,
    /// one page of a visit.
    pub bulk_timeout: Duration,
    /// How long after its expiry Redis keeps a counter or `once` marker.
    pub gc_margin: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "creditgate".to_owned(),
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_millis(500),
            bulk_timeout: Duration::from_secs(30),
            gc_margin: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a `--store` URL names: one server, or the seed nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `redis://` URLs, credentials and database included; several for a cluster.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// The servers without credentials, for messages.
    pub label: String,
}

/// True when `s` names a Redis store rather than a file: `redis://`,
/// `redis+cluster://`, and the TLS schemes this build refuses.
pub fn is_redis_url(s: &str) -> bool {
    [
        "redis://",
        "rediss://",
        "redis+cluster://",
        "rediss+cluster://",
    ]
    .iter()
    .any(|scheme| s.starts_with(scheme))
}

/// Parses `redis://[USER:PASS@]HOST:PORT[/DB][?OPTIONS]` or
/// `redis+cluster://[USER:PASS@]HOST:PORT,HOST:PORT,...[?OPTIONS]`. Options:
/// `prefix=NAME`, `connect_timeout_ms=N`, `call_timeout_ms=N`.
pub fn parse_url(url: &str) -> Result<(RedisTarget, RedisConfig), StoreError> {
    let bad = |why: &str| StoreError::InvalidArgument(format!("redis URL {url:?}: {why}"));
    if url.starts_with("rediss://") || url.starts_with("rediss+cluster://") {
        return Err(bad(
            "this build of creditgate has no TLS support (the redis crate's TLS features are \
             off); use redis:// on a trusted network, or a TLS tunnel such as stunnel",
        ));
    }
    let (cluster, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("redis://") {
        (false, rest)
    } else {
        return Err(bad("expected redis:// or redis+cluster://"));
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut config = RedisConfig::default();
    for option in query.split('&').filter(|o| !o.is_empty()) {
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        let millis = || {
            value
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| bad(&format!("{name} must be a positive number of ms")))
        };
        match name {
            "prefix" => {
                if value.is_empty() || value.contains(['{', '}']) {
                    return Err(bad("prefix must be non-empty and hold no braces"));
                }
                config.prefix = value.to_owned();
            }
            "connect_timeout_ms" => config.connect_timeout = millis()?,
            "call_timeout_ms" => config.call_timeout = millis()?,
            _ => {
                return Err(bad(&format!(
                    "unknown option {name:?} (known: prefix, connect_timeout_ms, call_timeout_ms)"
                )));
            }
        }
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    if hosts.is_empty() || hosts.split(',').any(str::is_empty) {
        return Err(bad("no host"));
    }
    if !path.is_empty() && path.parse::<u16>().is_err() {
        return Err(bad("the database must be a number"));
    }
    if cluster && !path.is_empty() && path != "0" {
        return Err(bad("Redis Cluster has only database 0"));
    }
    if !cluster && hosts.contains(',') {
        return Err(bad("several hosts: use redis+cluster:// for a cluster"));
    }
    let user = userinfo.map_or(String::new(), |u| format!("{u}@"));
    let db = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    let urls = hosts
        .split(',')
        .map(|host| format!("redis://{user}{host}{db}"))
        .collect();
    let label = if cluster {
        format!("cluster {hosts}")
    } else {
        format!("{hosts}{db}")
    };
    Ok((
        RedisTarget {
            urls,
            cluster,
            label,
        },
        config,
    ))
}

/// The connection, one server or a cluster; both pipeline concurrent requests.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A [`Store`] on a Redis server or cluster shared by any number of gateways.
pub struct RedisStore {
    conn: Conn,
    /// Taken by `drop`, which shuts it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
    label: String,
    config: RedisConfig,
    /// `P:scopes`.
    registry: String,
    /// Cluster only: scopes this client added to the registry, and when.
    registered: Mutex<HashMap<String, std::time::Instant>>,
    /// Where primitives wait to go out in pipelines (see [`collect`]).
    calls: tokio::sync::mpsc::UnboundedSender<Call>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // A plain drop blocks until the runtime's threads end, which tokio refuses
        // (panics) when the store is dropped inside some other async context.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl RedisStore {
    /// Connects to the server or cluster a `--store` URL names (see [`parse_url`]).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let (target, config) = parse_url(url)?;
        Self::connect(&target, config)
    }

    /// Connects to `target`; fails with [`StoreError::Unavailable`] when no
    /// connection is made within `config.connect_timeout`.
    pub fn connect(target: &RedisTarget, config: RedisConfig) -> Result<Self, StoreError> {
        if config.prefix.is_empty() || config.prefix.contains(['{', '}']) {
            return Err(StoreError::InvalidArgument(format!(
                "redis key prefix {:?} must be non-empty and hold no braces",
                config.prefix
            )));
        }
        let label = target.label.clone();
        let unavailable = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("redis {label}: cannot connect: {e}"))
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("creditgate-redis")
            .enable_all()
            .build()
            .map_err(|e| unavailable(&e))?;
        let connect = {
            let target = target.clone();
            let config = config.clone();
            async move {
                if target.cluster {
                    let client = ClusterClient::builder(target.urls.clone())
                        .connection_timeout(config.connect_timeout)
                        .response_timeout(config.bulk_timeout)
                        .build()?;
                    Ok::<_, RedisError>(Conn::Cluster(client.get_async_connection().await?))
                } else {
                    let url = target.urls.first().map(String::as_str).unwrap_or_default();
                    let client = redis::Client::open(url)?;
                    let manager = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(config.connect_timeout))
                        .set_response_timeout(Some(config.bulk_timeout))
                        .set_min_delay(Duration::from_millis(20))
                        .set_max_delay(Duration::from_secs(1))
                        .set_number_of_retries(5);
                    let mut conn = ConnectionManager::new_with_config(client, manager).await?;
                    // A cluster node answers a single-server client until the first
                    // script whose keys span two slots: say so at once instead.
                    let info: String = redis::cmd("INFO")
                        .arg("cluster")
                        .query_async(&mut conn)
                        .await?;
                    if info.contains("cluster_enabled:1") {
                        return Err(RedisError::from((
                            redis::ErrorKind::InvalidClientConfig,
                            "this server is a Redis Cluster node",
                            "use redis+cluster://HOST:PORT,... for a cluster".to_owned(),
                        )));
                    }
                    Ok(Conn::Single(conn))
                }
            }
        };
        let connected = block(&runtime, async move {
            tokio::time::timeout(config.connect_timeout, connect).await
        })
        .map_err(|e| unavailable(&e))?;
        let conn = match connected {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) if e.kind() == redis::ErrorKind::InvalidClientConfig => {
                return Err(StoreError::InvalidArgument(format!("redis {label}: {e}")));
            }
            Ok(Err(e)) => return Err(unavailable(&e)),
            Err(_) => {
                return Err(unavailable(&format_args!(
                    "no connection within {} ms",
                    config.connect_timeout.as_millis()
                )));
            }
        };
        let (calls, queue) = tokio::sync::mpsc::unbounded_channel();
        runtime.spawn(collect(queue, conn.clone(), config.call_timeout));
        let store = Self {
            conn,
            runtime: Some(runtime),
            registry: format!("{}:scopes", config.prefix),
            label,
            config,
            registered: Mutex::default(),
            calls,
        };
        store.migrate_alert_log()?;
        Ok(store)
    }

    /// `P:alerts:{O}:`, the start of every key of `owner`'s alert log.
    fn alert_base(&self, owner: &str) -> String {
        let scoped = self.base(owner);
        let tagged = scoped.strip_prefix(&self.config.prefix).unwrap_or(&scoped);
        format!("{}:alerts{tagged}", self.config.prefix)
    }

    fn alert_owners(&self) -> String {
        format!("{}:alert-owners", self.config.prefix)
    }

    /// Moves an alert log kept in `"\u{1}alerts/<owner>"` scopes (as stores were
    /// written before it had keys of its own) into its own keys.
    fn migrate_alert_log(&self) -> Result<(), StoreError> {
        for scope in self.scopes()? {
            let Some(owner) = super::legacy_alert_owner(&scope) else {
                continue;
            };
            let dump = self.export_scope(&scope)?;
            for (key, value) in &dump.records {
                self.alert_insert(owner, key, value)?;
            }
            if let Some((_, last, _)) = dump.counters.iter().find(|(n, ..)| n == "sequence") {
                let seq = format!("{}seq", self.alert_base(owner));
                let last = last.to_string();
                self.call(
                    "migrating the alert log",
                    self.config.call_timeout,
                    |mut c| async move {
                        ALERT_SEQUENCE_AT_LEAST
                            .key(seq)
                            .arg(last)
                            .invoke_async::<()>(&mut c)
                            .await
                    },
                )?;
            }
            self.import_scope(&scope, &ScopeDump::default())?;
        }
        Ok(())
    }

    /// The server (or cluster nodes) this store talks to, without credentials.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs `make(conn)` on the store's runtime and waits for it, at most `limit`.
    fn call<T, F>(
        &self,
        what: &str,
        limit: Duration,
        make: impl FnOnce(Conn) -> F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = RedisResult<T>> + Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(self.unavailable(what, "the store is shutting down"));
        };
        let fut = make(self.conn.clone());
        match block(
            runtime,
            async move { tokio::time::timeout(limit, fut).await },
        ) {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(self.failure(what, &e)),
            Ok(Err(_)) => Err(self.unavailable(
                what,
                format_args!("no answer within {} ms", limit.as_millis()),
            )),
            Err(e) => Err(self.unavailable(what, e)),
        }
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("redis {}: {what}: {e}", self.label))
    }

    fn failure(&self, what: &str, e: &RedisError) -> StoreError {
        if e.code() == Some("CGCORRUPT") {
            let detail = e.detail().unwrap_or_default();
            return StoreError::Corrupt(format!("redis {}: {what}: {detail}", self.label));
        }
        self.unavailable(what, e)
    }

    /// `P:{T}:`, the start of every key of `scope`.
    fn base(&self, scope: &str) -> String {
        let mut base = String::with_capacity(self.config.prefix.len() + scope.len() + 4);
        base.push_str(&self.config.prefix);
        base.push_str(":{");
        if scope.is_empty() {
            base.push('%');
        }
        for c in scope.chars() {
            match c {
                '%' => base.push_str("%25"),
                '}' => base.push_str("%7D"),
                c => base.push(c),
            }
        }
        base.push_str("}:");
        base
    }

    /// KEYS of a script on `scope`: its base, and with a single server the
    /// registry, which the script then maintains itself.
    fn keys(&self, scope: &str) -> Vec<String> {
        match self.conn {
            Conn::Single(_) => vec![self.base(scope), self.registry.clone()],
            Conn::Cluster(_) => vec![self.base(scope)],
        }
    }

    /// Cluster only: makes sure `scope` is in the registry before a write that may
    /// create it (see the module docs).
    fn register(&self, scope: &str) -> Result<(), StoreError> {
        if let Conn::Single(_) = self.conn {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let lock = || {
            self.registered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if lock()
            .get(scope)
            .is_some_and(|&at| now.duration_since(at) < REGISTERED_FOR)
        {
            return Ok(());
        }
        let mut cmd = redis::cmd("SADD");
        cmd.arg(&self.registry).arg(scope);
        self.call(
            "registering a scope",
            self.config.call_timeout,
            |mut c| async move { cmd.query_async::<()>(&mut c).await },
        )?;
        let mut registered = lock();
        // A bound on memory; forgetting only costs one idempotent SADD a scope.
        if registered.len() >= 100_000 {
            registered.clear();
        }
        registered.insert(scope.to_owned(), now);
        Ok(())
    }

    /// Runs `script` on `scope` with `args` after the scope's name.
    fn script<T>(
        &self,
        what: &str,
        limit: Duration,
        script: &'static Script,
        scope: &str,
        args: Vec<Vec<u8>>,
    ) -> Result<T, StoreError>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        let mut invocation = script.prepare_invoke();
        for key in self.keys(scope) {
            invocation.key(key);
        }
        invocation.arg(scope);
        for arg in args {
            invocation.arg(arg);
        }
        self.call(what, limit, |mut c| async move {
            invocation.invoke_async::<T>(&mut c).await
        })
    }

    /// Runs `script` on `scope` with `args` after the scope's name, as a
    /// primitive: through the collector, in a pipeline with the other calls in
    /// flight to the same node, within [`RedisConfig::call_timeout`].
    fn primitive<T>(
        &self,
        what: &str,
        script: &'static Script,
        scope: &str,
        args: Vec<Vec<u8>>,
    ) -> Result<T, StoreError>
    where
        T: redis::FromRedisValue,
    {
        let keys = self.keys(scope);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len());
        for key in &keys {
            cmd.arg(key);
        }
        cmd.arg(scope);
        for arg in &args {
            cmd.arg(arg.as_slice());
        }
        self.send(what, &keys[0], cmd, Some(script))
    }

    /// Sends `cmd` (on the keys of the scope whose base is `base`) through the
    /// collector and waits for its answer, at most [`RedisConfig::call_timeout`].
    fn send<T>(
        &self,
        what: &str,
        base: &str,
        cmd: Cmd,
        script: Option<&'static Script>,
    ) -> Result<T, StoreError>
    where
        T: redis::FromRedisValue,
    {
        let Some(runtime) = &self.runtime else {
            return Err(self.unavailable(what, "the store is shutting down"));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let call = Call {
            slot: matches!(self.conn, Conn::Cluster(_)).then(|| slot_of(base.as_bytes())),
            cmd,
            script,
            reply,
        };
        if self.calls.send(call).is_err() {
            return Err(self.unavailable(what, "the store's collector stopped"));
        }
        let limit = self.config.call_timeout;
        let answered = block(
            runtime,
            async move { tokio::time::timeout(limit, answer).await },
        );
        match answered {
            Ok(Ok(Ok(Ok(value)))) => {
                redis::from_redis_value(value).map_err(|e| self.failure(what, &RedisError::from(e)))
            }
            Ok(Ok(Ok(Err(e)))) => Err(self.failure(what, &e)),
            Ok(Ok(Err(_))) => Err(self.unavailable(what, "the store's collector stopped")),
            Ok(Err(_)) => Err(self.unavailable(
                what,
                format_args!("no answer within {} ms", limit.as_millis()),
            )),
            Err(e) => Err(self.unavailable(what, e)),
        }
    }

    /// Runs the member-add script: the outcome (None: the guard did not hold) and
    /// the tally (the counter only when one is named).
    fn add_member(
        &self,
        scope: &str,
        guard: Option<Guard<'_>>,
        group: &str,
        member: &str,
        limit: Option<u64>,
        counter: Option<(&str, Instant)>,
    ) -> Result<(Option<MemberAddOutcome>, Tally), StoreError> {
        let what = "member-add";
        self.register(scope)?;
        let mut args = vec![group.into(), member.into(), limit_arg(limit)];
        args.extend(guard_args(guard));
        let (name, now) = counter.unwrap_or(("", 0));
        args.extend([name.into(), now.to_string().into()]);
        let (outcome, members, value): (u64, u64, String) =
            self.primitive(what, &SCRIPTS.member_add, scope, args)?;
        let tally = Tally {
            counter: decimal(what, &value)?,
            members,
        };
        Ok(match outcome {
            4 => (None, tally),
            n => (Some(member_outcome(n)?), tally),
        })
    }

    /// The instant (ms since the epoch) until which Redis keeps something that
    /// expires at `expires_at`, or None: keep it for good (see the module docs).
    fn gc_at(&self, expires_at: Instant) -> Option<i64> {
        if expires_at == NEVER {
            return None;
        }
        let margin = i64::try_from(self.config.gc_margin.as_millis()).ok()?;
        let at = expires_at.div_euclid(1_000_000).checked_add(margin)?;
        let real_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok())?;
        (at > real_now).then_some(at)
    }

    fn gc_arg(&self, expires_at: Option<Instant>) -> String {
        expires_at
            .and_then(|at| self.gc_at(at))
            .map_or(String::new(), |at| at.to_string())
    }

    /// One page of `key` (a zset of equal scores) after `after`, in byte order.
    fn page(&self, key: String, after: Option<&str>) -> Result<Vec<String>, StoreError> {
        let mut cmd = redis::cmd("ZRANGEBYLEX");
        cmd.arg(key);
        match after {
            Some(after) => cmd.arg([b"(", after.as_bytes()].concat()),
            None => cmd.arg("-"),
        };
        cmd.arg("+").arg("LIMIT").arg(0).arg(PAGE);
        self.call(
            "visiting members",
            self.config.bulk_timeout,
            |mut c| async move { cmd.query_async::<Vec<String>>(&mut c).await },
        )
    }
}

/// Runs `fut` on `runtime` from a synchronous caller. From a plain thread the
/// caller polls it itself; from inside some async runtime (where `block_on` would
/// panic) it runs as a task and the caller waits on a channel.
fn block<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, &'static str> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(runtime.block_on(fut));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| "the store's runtime stopped")
}

/// Most calls one pipeline carries.
const PIPELINE_MAX: usize = 512;

/// Pipelines in flight at once to one node: one being answered while the next
/// is on its way, so that the server finds a group waiting whenever it ends a
/// turn (and, with `appendfsync always`, the one fsync that turn shares).
const PIPELINES_PER_NODE: usize = 2;

/// How long the collector trusts its map of which cluster node serves which
/// slot; it also reads the map again after any redirection.
const SLOT_MAP_FOR: Duration = Duration::from_secs(30);

/// A primitive waiting in the collector for the next pipeline to its node.
struct Call {
    /// The cluster slot of the call's keys; None on a single server.
    slot: Option<u16>,
    cmd: Cmd,
    /// The script `cmd` runs by hash (EVALSHA): loaded, and the call retried
    /// alone, when the server answers NOSCRIPT.
    script: Option<&'static Script>,
    reply: tokio::sync::oneshot::Sender<RedisResult<Value>>,
}

/// The collector: takes the primitives every worker thread has in flight and
/// sends them as one pipeline per node, at most [`PIPELINES_PER_NODE`] at a
/// time to each, so that while a node runs one group (and syncs its
/// append-only file) the next gathers. One round trip and one write per group
/// instead of per call, and the server reads a whole group in one turn. Each
/// call is still one script, atomic on its own: a pipeline is not a
/// transaction, and a call's answer (or error) is its own.
///
/// A pipeline that fails as a whole (a lost connection, a timeout) fails each
/// call in it: each script either ran whole or not at all, and a caller that
/// gets an error cannot know which, as with a single call (a charge carries a
/// `once` key, so a retry answers `repeated`). A call whose caller gave up
/// before its pipeline left is dropped, never sent.
async fn collect(
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Call>,
    conn: Conn,
    limit: Duration,
) {
    let redirected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let Conn::Cluster(cluster) = &conn else {
        return node(queue, conn, redirected, limit).await;
    };
    // A cluster: calls sorted by node, each node's in a queue of its own, so
    // that a slow node holds back no other.
    let mut cluster = cluster.clone();
    let mut slots = SlotMap::default();
    let mut nodes: HashMap<String, tokio::sync::mpsc::UnboundedSender<Call>> = HashMap::new();
    let mut calls = Vec::new();
    while queue.recv_many(&mut calls, PIPELINE_MAX).await > 0 {
        if redirected.swap(false, std::sync::atomic::Ordering::Relaxed) || slots.stale() {
            slots.read(&mut cluster).await;
        }
        for call in calls.drain(..) {
            let name = call.slot.map_or_else(String::new, |slot| slots.node(slot));
            let queue = nodes.entry(name).or_insert_with(|| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(node(rx, conn.clone(), redirected.clone(), limit));
                tx
            });
            if let Err(unsent) = queue.send(call) {
                let e = RedisError::from((redis::ErrorKind::Client, "the node's queue closed"));
                let _ = unsent.0.reply.send(Err(e));
            }
        }
    }
}

/// One node's calls: a pipeline of whatever gathered, at most
/// [`PIPELINES_PER_NODE`] in flight; while they are, the next calls gather.
async fn node(
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Call>,
    conn: Conn,
    redirected: std::sync::Arc<std::sync::atomic::AtomicBool>,
    limit: Duration,
) {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(PIPELINES_PER_NODE));
    let mut calls = Vec::new();
    loop {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            return;
        };
        if queue.recv_many(&mut calls, PIPELINE_MAX).await == 0 {
            return;
        }
        calls.retain(|call| !call.reply.is_closed());
        if calls.is_empty() {
            continue;
        }
        let group = std::mem::take(&mut calls);
        let (conn, redirected) = (conn.clone(), redirected.clone());
        tokio::spawn(async move {
            send_pipeline(conn, group, &redirected, limit).await;
            drop(permit);
        });
    }
}

/// Sends `calls` as one pipeline and answers each; calls the server refused to
/// run in the pipeline (NOSCRIPT, a cluster redirection) are run again alone.
async fn send_pipeline(
    mut conn: Conn,
    calls: Vec<Call>,
    redirected: &std::sync::atomic::AtomicBool,
    limit: Duration,
) {
    let mut pipeline = redis::pipe();
    for call in &calls {
        pipeline.add_command(call.cmd.clone());
    }
    let sent = async {
        match (&mut conn, calls.first().and_then(|c| c.slot)) {
            (Conn::Cluster(cluster), Some(slot)) => {
                use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                cluster
                    .route_pipeline(pipeline, 0, calls.len(), route)
                    .await
            }
            (conn, _) => conn.req_packed_commands(&pipeline, 0, calls.len()).await,
        }
    };
    // Every caller has given up by then (each waits `limit` from its own
    // start): the node's permit goes to the next group.
    let answers = tokio::time::timeout(2 * limit, sent)
        .await
        .unwrap_or_else(|_| {
            Err(RedisError::from((
                redis::ErrorKind::Io,
                "no answer to the pipeline in time",
            )))
        });
    let answers = match answers {
        Ok(answers) if answers.len() == calls.len() => answers,
        Ok(answers) => {
            let e = RedisError::from((
                redis::ErrorKind::Client,
                "a pipeline answered with the wrong number of replies",
                format!("{} for {} calls", answers.len(), calls.len()),
            ));
            for call in calls {
                let _ = call.reply.send(Err(e.clone()));
            }
            return;
        }
        Err(e) => {
            for call in calls {
                let _ = call.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    for (call, answer) in calls.into_iter().zip(answers) {
        let answer = answer.extract_error();
        let alone = match &answer {
            Err(e) => match e.kind() {
                redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => call.script.is_some(),
                redis::ErrorKind::Server(
                    redis::ServerErrorKind::Moved
                    | redis::ServerErrorKind::Ask
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::ClusterDown,
                ) => {
                    redirected.store(true, std::sync::atomic::Ordering::Relaxed);
                    true
                }
                _ => false,
            },
            Ok(_) => false,
        };
        if !alone {
            let _ = call.reply.send(answer);
            continue;
        }
        // Neither ran the script: running it again cannot apply it twice.
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let mut answer = call.cmd.query_async::<Value>(&mut conn).await;
            if let (Err(e), Some(script)) = (&answer, call.script)
                && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
            {
                answer = match script.load_async(&mut conn).await {
                    Ok(_) => call.cmd.query_async::<Value>(&mut conn).await,
                    Err(e) => Err(e),
                };
            }
            let _ = call.reply.send(answer);
        });
    }
}

/// Cluster only: which node serves each slot, as `CLUSTER SLOTS` last said, for
/// grouping calls by node. Only an optimisation: a pipeline goes to the node the
/// cluster client routes its first call's slot to, and a call another node
/// serves is redirected and run again alone.
#[derive(Default)]
struct SlotMap {
    /// `(first slot, last slot, node)`, in order.
    ranges: Vec<(u16, u16, String)>,
    read_at: Option<std::time::Instant>,
}

impl SlotMap {
    fn stale(&self) -> bool {
        self.read_at.is_none_or(|at| at.elapsed() > SLOT_MAP_FOR)
    }

    async fn read(&mut self, cluster: &mut ClusterConnection) {
        self.read_at = Some(std::time::Instant::now());
        let Ok(Value::Array(shards)) = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(cluster)
            .await
        else {
            // Without a map, calls are grouped by slot: still correct.
            self.ranges.clear();
            return;
        };
        let mut ranges = Vec::new();
        for shard in shards {
            let Value::Array(fields) = shard else {
                continue;
            };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(primary))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            let host = match primary.first() {
                Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(Value::SimpleString(host)) => host.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = primary.get(1) else {
                continue;
            };
            let (Ok(first), Ok(last)) = (u16::try_from(*first), u16::try_from(*last)) else {
                continue;
            };
            ranges.push((first, last, format!("{host}:{port}")));
        }
        ranges.sort();
        self.ranges = ranges;
    }

    /// The node serving `slot`; the slot itself when the map does not say.
    fn node(&self, slot: u16) -> String {
        let i = self.ranges.partition_point(|&(_, last, _)| last < slot);
        match self.ranges.get(i) {
            Some((first, _, node)) if *first <= slot => node.clone(),
            _ => format!("slot {slot}"),
        }
    }
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag, or of the
/// whole key without one, modulo 16384.
fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("redis: {what}: {e}"))
}

fn decimal<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, StoreError> {
    s.parse()
        .map_err(|_| corrupt(what, format_args!("{s:?} is not a number")))
}

fn member_outcome(code: u64) -> Result<MemberAddOutcome, StoreError> {
    Ok(match code {
        0 => MemberAddOutcome::AlreadyInGroup,
        1 => MemberAddOutcome::Joined,
        2 => MemberAddOutcome::Inserted,
        3 => MemberAddOutcome::Refused,
        _ => return Err(corrupt("member-add", format_args!("outcome {code}"))),
    })
}

/// The three script arguments of an optional guard (see `guard_holds`).
fn guard_args(guard: Option<Guard<'_>>) -> [Vec<u8>; 3] {
    match guard {
        Some(g) => ["1".into(), g.key.into(), g.value.into()],
        None => ["0".into(), Vec::new(), Vec::new()],
    }
}

fn limit_arg(limit: Option<u64>) -> Vec<u8> {
    limit.map_or(Vec::new(), |l| l.to_string().into_bytes())
}

/// The error for a dump that gives the same key twice.
fn repeated(what: std::fmt::Arguments<'_>) -> StoreError {
    StoreError::InvalidArgument(format!("the dump holds {what} more than once"))
}

impl Store for RedisStore {
    fn alert_sequence(&self, owner: &str) -> Result<u64, StoreError> {
        check_name("owner", owner)?;
        let mut cmd = redis::cmd("INCR");
        cmd.arg(format!("{}seq", self.alert_base(owner)));
        let next: i64 = self.call(
            "alert-sequence",
            self.config.call_timeout,
            |mut c| async move { cmd.query_async(&mut c).await },
        )?;
        u64::try_from(next).map_err(|_| {
            StoreError::Corrupt(format!("the alert sequence of {owner:?} reads {next}"))
        })
    }

    fn alert_insert(&self, owner: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        check_name("owner", owner)?;
        check_name("key", key)?;
        check_value(value)?;
        let what = "alert-insert";
        // The index first, as scopes are registered first: a crash between the two
        // leaves at worst an owner with no alert listed.
        let mut index = redis::cmd("ZADD");
        index.arg(self.alert_owners()).arg(0).arg(owner);
        self.call(what, self.config.call_timeout, |mut c| async move {
            index.query_async::<()>(&mut c).await
        })?;
        let base = self.alert_base(owner);
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call(what, self.config.call_timeout, |mut c| async move {
            ALERT_INSERT
                .key(format!("{base}log"))
                .key(format!("{base}keys"))
                .arg(key)
                .arg(value)
                .invoke_async(&mut c)
                .await
        })
    }

    fn visit_alerts(
        &self,
        owner: Option<&str>,
        after: Option<(&str, &str)>,
        visit: &mut dyn FnMut(&str, &str, &str) -> bool,
    ) -> Result<(), StoreError> {
        const PAGE: usize = 256;
        let what = "visit-alerts";
        let owners: Vec<String> = match owner {
            Some(owner) => vec![owner.to_owned()],
            None => {
                let mut cmd = redis::cmd("ZRANGEBYLEX");
                let from = after.map_or_else(|| "-".to_owned(), |(o, _)| format!("[{o}"));
                cmd.arg(self.alert_owners()).arg(from).arg("+");
                self.call(what, self.config.bulk_timeout, |mut c| async move {
                    cmd.query_async(&mut c).await
                })?
            }
        };
        for owner in owners {
            let base = self.alert_base(&owner);
            let mut from = match after {
                Some((o, k)) if o == owner => format!("({k}"),
                Some((o, _)) if o > owner.as_str() => continue,
                _ => "-".to_owned(),
            };
            loop {
                let mut range = redis::cmd("ZRANGEBYLEX");
                range
                    .arg(format!("{base}keys"))
                    .arg(&from)
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(PAGE);
                let keys: Vec<String> =
                    self.call(what, self.config.call_timeout, |mut c| async move {
                        range.query_async(&mut c).await
                    })?;
                let Some(last) = keys.last().cloned() else {
                    break;
                };
                let mut get = redis::cmd("HMGET");
                get.arg(format!("{base}log")).arg(&keys);
                let values: Vec<Option<String>> =
                    self.call(what, self.config.call_timeout, |mut c| async move {
                        get.query_async(&mut c).await
                    })?;
                for (key, value) in keys.iter().zip(values) {
                    let value = value.ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "redis {}: alert {key:?} of {owner:?} is indexed but not logged",
                            self.label
                        ))
                    })?;
                    if !visit(&owner, key, &value) {
                        return Ok(());
                    }
                }
                if keys.len() < PAGE {
                    break;
                }
                from = format!("({last}");
            }
        }
        Ok(())
    }

    fn record_get(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        check_name("scope", scope)?;
        check_name("key", key)?;
        let base = self.base(scope);
        let mut cmd = redis::cmd("HGET");
        cmd.arg(format!("{base}rec")).arg(key);
        self.send("record-get", &base, cmd, None)
    }

    fn record_insert(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        check_name("scope", scope)?;
        check_name("key", key)?;
        check_value(value)?;
        self.register(scope)?;
        let args = vec![key.into(), value.into()];
        self.primitive("record-insert", &SCRIPTS.record_insert, scope, args)
    }

    fn record_update(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        check_name("scope", scope)?;
        check_name("key", key)?;
        check_value(value)?;
        let args = vec![key.into(), value.into()];
        self.primitive("record-update", &SCRIPTS.record_update, scope, args)
    }

    fn counter_get(&self, scope: &str, name: &str, now: Instant) -> Result<u64, StoreError> {
        check_name("scope", scope)?;
        check_name("counter name", name)?;
        let what = "counter-get";
        let base = self.base(scope);
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(format!("{base}ctr:{name}")).arg("v").arg("x");
        let (value, expires_at): (Option<String>, Option<String>) =
            self.send(what, &base, cmd, None)?;
        let Some(value) = value else {
            return Ok(0);
        };
        if let Some(expires_at) = expires_at {
            let expires_at: Instant = decimal(what, &expires_at)?;
            if expires_at != NEVER && expires_at <= now {
                return Ok(0);
            }
        }
        decimal(what, &value)
    }

    fn counter_add_guarded(
        &self,
        scope: &str,
        guard: Option<Guard<'_>>,
        name: &str,
        add: CounterAdd<'_>,
    ) -> Result<GuardedAdd, StoreError> {
        check_counter(scope, guard, name, add.once)?;
        self.register(scope)?;
        let what = "counter-add";
        // Some(NEVER) and None both mean never, as in the other backends.
        let expires_at = add.expires_at.filter(|&at| at != NEVER);
        let mut args: Vec<Vec<u8>> = vec![
            name.into(),
            add.amount.to_string().into(),
            limit_arg(add.limit),
            if add.once.is_some() { "1" } else { "0" }.into(),
            add.once.map_or(Vec::new(), |o| o.key.clone().into_bytes()),
            add.once
                .map_or(Vec::new(), |o| o.expires_at.to_string().into_bytes()),
            expires_at.map_or(Vec::new(), |at| at.to_string().into_bytes()),
            add.now.to_string().into(),
            self.gc_arg(expires_at).into(),
            self.gc_arg(add.once.map(|o| o.expires_at)).into(),
            add.once
                .map_or(Vec::new(), |o| o.fingerprint.to_string().into_bytes()),
        ];
        args.extend(guard_args(guard));
        let (outcome, value, members): (String, String, u64) =
            self.primitive(what, &SCRIPTS.counter_add, scope, args)?;
        let tally = Tally {
            counter: decimal(what, &value)?,
            members,
        };
        Ok(match outcome.as_str() {
            "applied" => GuardedAdd::Applied(tally),
            "repeated" => GuardedAdd::Repeated(tally),
            "refused" => GuardedAdd::Refused(tally),
            "conflict" => GuardedAdd::Conflict(tally),
            "stale" => GuardedAdd::Stale,
            other => return Err(corrupt(what, format_args!("outcome {other:?}"))),
        })
    }

    fn counter_tally(
        &self,
        scope: &str,
        guard: Option<Guard<'_>>,
        name: &str,
        now: Instant,
    ) -> Result<Option<Tally>, StoreError> {
        check_counter(scope, guard, name, None)?;
        let what = "counter-tally";
        let mut args: Vec<Vec<u8>> = vec![name.into(), now.to_string().into()];
        args.extend(guard_args(guard));
        let (outcome, value, members): (String, String, u64) =
            self.primitive(what, &SCRIPTS.counter_tally, scope, args)?;
        Ok(match outcome.as_str() {
            "tally" => Some(Tally {
                counter: decimal(what, &value)?,
                members,
            }),
            "stale" => None,
            other => return Err(corrupt(what, format_args!("outcome {other:?}"))),
        })
    }

    fn member_add(
        &self,
        scope: &str,
        group: &str,
        member: &str,
        limit: Option<u64>,
    ) -> Result<MemberAdded, StoreError> {
        check_name("scope", scope)?;
        check_name("group", group)?;
        check_name("member", member)?;
        let (outcome, tally) = self.add_member(scope, None, group, member, limit, None)?;
        Ok(MemberAdded {
            outcome: outcome.ok_or_else(|| corrupt("member-add", "stale without a guard"))?,
            members: tally.members,
        })
    }

    fn member_add_guarded(
        &self,
        scope: &str,
        guard: Option<Guard<'_>>,
        group: &str,
        member: &str,
        limit: Option<u64>,
        name: &str,
        now: Instant,
    ) -> Result<Option<(MemberAddOutcome, Tally)>, StoreError> {
        check_guarded_member(scope, guard, group, member, name)?;
        let (outcome, tally) =
            self.add_member(scope, guard, group, member, limit, Some((name, now)))?;
        Ok(outcome.map(|outcome| (outcome, tally)))
    }

    fn member_add_many(
        &self,
        scope: &str,
        group: &str,
        members: &[String],
        limit: Option<u64>,
    ) -> Result<MembersAdded, StoreError> {
        check_batch(scope, group, members)?;
        if !members.is_empty() {
            self.register(scope)?;
        }
        let mut args = Vec::with_capacity(members.len() + 2);
        args.push(group.into());
        args.push(limit_arg(limit));
        args.extend(members.iter().map(|m| m.clone().into_bytes()));
        // A full batch is tens of thousands of commands inside one script.
        let limit = self.config.bulk_timeout;
        let answer: Vec<u64> = self.script(
            "member-add-many",
            limit,
            &SCRIPTS.member_add_many,
            scope,
            args,
        )?;
        let Some((&count, outcomes)) = answer.split_first() else {
            return Err(corrupt("member-add-many", "an empty answer"));
        };
        if outcomes.len() != members.len() {
            return Err(corrupt(
                "member-add-many",
                format_args!("{} outcomes for {} members", outcomes.len(), members.len()),
            ));
        }
        Ok(MembersAdded {
            outcomes: outcomes
                .iter()
                .map(|&o| member_outcome(o))
                .collect::<Result<_, _>>()?,
            members: count,
        })
    }

    fn member_remove(
        &self,
        scope: &str,
        group: &str,
        member: &str,
    ) -> Result<MemberRemoved, StoreError> {
        check_name("scope", scope)?;
        check_name("group", group)?;
        check_name("member", member)?;
        let what = "member-remove";
        let args = vec![group.into(), member.into()];
        let (outcome, members): (u64, u64) =
            self.primitive(what, &SCRIPTS.member_remove, scope, args)?;
        let outcome = match outcome {
            0 => MemberRemoveOutcome::NotInGroup,
            1 => MemberRemoveOutcome::LeftGroup,
            2 => MemberRemoveOutcome::Released,
            _ => return Err(corrupt(what, format_args!("outcome {outcome}"))),
        };
        Ok(MemberRemoved { outcome, members })
    }

    fn group_clear(&self, scope: &str, group: &str) -> Result<GroupCleared, StoreError> {
        check_name("scope", scope)?;
        check_name("group", group)?;
        // A large group is a long script.
        let limit = self.config.bulk_timeout;
        let (removed, released, members): (u64, u64, u64) = self.script(
            "group-clear",
            limit,
            &SCRIPTS.group_clear,
            scope,
            vec![group.into()],
        )?;
        Ok(GroupCleared {
            removed,
            released,
            members,
        })
    }

    fn group_counts(&self, scope: &str) -> Result<Vec<GroupCount>, StoreError> {
        check_name("scope", scope)?;
        let what = "group-counts";
        let flat: Vec<String> = self.script(
            what,
            self.config.bulk_timeout,
            &SCRIPTS.group_counts,
            scope,
            Vec::new(),
        )?;
        flat.chunks_exact(3)
            .map(|c| {
                Ok(GroupCount {
                    group: c[0].clone(),
                    members: decimal(what, &c[1])?,
                    exclusive: decimal(what, &c[2])?,
                })
            })
            .collect()
    }

    fn membership(
        &self,
        scope: &str,
        group: &str,
        member: &str,
    ) -> Result<Option<u64>, StoreError> {
        check_member(scope, group, member)?;
        let args = vec![group.into(), member.into()];
        let n: i64 = self.primitive("membership", &SCRIPTS.membership, scope, args)?;
        Ok(u64::try_from(n).ok())
    }

    fn member_count(&self, scope: &str) -> Result<u64, StoreError> {
        check_name("scope", scope)?;
        let base = self.base(scope);
        let mut cmd = redis::cmd("HLEN");
        cmd.arg(format!("{base}mem"));
        self.send("member-count", &base, cmd, None)
    }

    fn persist(&self) -> Result<(), StoreError> {
        // Each script was applied when it returned; how durable that is, is the
        // server's appendfsync setting (see the module docs).
        Ok(())
    }

    fn scopes(&self) -> Result<Vec<String>, StoreError> {
        let what = "listing scopes";
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(&self.registry);
        let candidates: Vec<String> =
            self.call(what, self.config.bulk_timeout, |mut c| async move {
                cmd.query_async(&mut c).await
            })?;
        let checks: Vec<(String, Vec<String>)> = candidates
            .into_iter()
            .map(|scope| {
                let keys = self.keys(&scope);
                (scope, keys)
            })
            .collect();
        let listed = self.call(what, self.config.bulk_timeout, |conn| async move {
            // Concurrent checks, pipelined on the connection(s), a bounded number
            // in flight.
            let mut listed = Vec::new();
            for chunk in checks.chunks(256) {
                let mut tasks = tokio::task::JoinSet::new();
                for (scope, keys) in chunk.iter().cloned() {
                    let mut conn = conn.clone();
                    tasks.spawn(async move {
                        let mut invocation = SCRIPTS.scope_listed.prepare_invoke();
                        for key in keys {
                            invocation.key(key);
                        }
                        invocation.arg(&scope);
                        let found: bool = invocation.invoke_async(&mut conn).await?;
                        Ok::<_, RedisError>(found.then_some(scope))
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    let found = done.map_err(|e| {
                        RedisError::from((
                            redis::ErrorKind::Client,
                            "a check failed",
                            e.to_string(),
                        ))
                    })??;
                    listed.extend(found);
                }
            }
            Ok(listed)
        })?;
        let mut listed: Vec<String> = listed;
        listed.sort();
        Ok(listed)
    }

    fn visit_members(
        &self,
        scope: &str,
        group: Option<&str>,
        visit: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Result<(), StoreError> {
        check_name("scope", scope)?;
        if let Some(group) = group {
            check_name("group", group)?;
        }
        // Page by page, each page one atomic read: unlike redb, not one snapshot
        // of the whole scope (a visit concurrent with writes sees each page as of
        // its own read), but bounded in memory whatever the scope's size.
        let base = self.base(scope);
        let mut visit_group = |group: &str| -> Result<bool, StoreError> {
            let mut after: Option<String> = None;
            loop {
                let page = self.page(format!("{base}grp:{group}"), after.as_deref())?;
                for member in &page {
                    if !visit(group, member) {
                        return Ok(false);
                    }
                }
                if page.len() < PAGE {
                    return Ok(true);
                }
                after = page.last().cloned();
            }
        };
        if let Some(group) = group {
            visit_group(group)?;
            return Ok(());
        }
        let mut after: Option<String> = None;
        loop {
            let groups = self.page(format!("{base}groups"), after.as_deref())?;
            for group in &groups {
                if !visit_group(group)? {
                    return Ok(());
                }
            }
            if groups.len() < PAGE {
                return Ok(());
            }
            after = groups.last().cloned();
        }
    }

    // The registry is a set, in no order: a page reads every name (names only)
    // and sorts them, but checks only as many scopes as the page needs.
    fn scopes_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        let what = "listing scopes";
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(&self.registry);
        let mut candidates: Vec<String> =
            self.call(what, self.config.bulk_timeout, |mut c| async move {
                cmd.query_async(&mut c).await
            })?;
        candidates.retain(|s| after.is_none_or(|a| s.as_str() > a));
        candidates.sort();
        let mut listed = Vec::new();
        for chunk in candidates.chunks(limit.clamp(1, 256)) {
            let checks: Vec<(String, Vec<String>)> = chunk
                .iter()
                .map(|scope| (scope.clone(), self.keys(scope)))
                .collect();
            let found: Vec<bool> =
                self.call(what, self.config.bulk_timeout, |conn| async move {
                    let mut found = Vec::with_capacity(checks.len());
                    for (scope, keys) in checks {
                        let mut conn = conn.clone();
                        let mut invocation = SCRIPTS.scope_listed.prepare_invoke();
                        for key in keys {
                            invocation.key(key);
                        }
                        invocation.arg(&scope);
                        found.push(invocation.invoke_async::<bool>(&mut conn).await?);
                    }
                    Ok(found)
                })?;
            listed.extend(
                chunk
                    .iter()
                    .zip(found)
                    .filter(|(_, found)| *found)
                    .map(|(scope, _)| scope.clone()),
            );
            if listed.len() >= limit {
                break;
            }
        }
        listed.truncate(limit);
        Ok(listed)
    }

    fn visit_members_after(
        &self,
        scope: &str,
        group: Option<&str>,
        after: Option<(&str, &str)>,
        visit: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Result<(), StoreError> {
        check_name("scope", scope)?;
        if let Some(group) = group {
            check_name("group", group)?;
        }
        // As `visit_members`, page by page, starting in the group of `after`.
        let base = self.base(scope);
        let mut visit_group =
            |group: &str, mut after: Option<String>| -> Result<bool, StoreError> {
                loop {
                    let page = self.page(format!("{base}grp:{group}"), after.as_deref())?;
                    for member in &page {
                        if !visit(group, member) {
                            return Ok(false);
                        }
                    }
                    if page.len() < PAGE {
                        return Ok(true);
                    }
                    after = page.last().cloned();
                }
            };
        if let Some(only) = group {
            match after {
                Some((g, _)) if g > only => {}
                Some((g, m)) if g == only => {
                    visit_group(only, Some(m.to_owned()))?;
                }
                _ => {
                    visit_group(only, None)?;
                }
            }
            return Ok(());
        }
        if let Some((g, m)) = after
            && !visit_group(g, Some(m.to_owned()))?
        {
            return Ok(());
        }
        let mut after_group = after.map(|(g, _)| g.to_owned());
        loop {
            let groups = self.page(format!("{base}groups"), after_group.as_deref())?;
            for group in &groups {
                if !visit_group(group, None)? {
                    return Ok(());
                }
            }
            if groups.len() < PAGE {
                return Ok(());
            }
            after_group = groups.last().cloned();
        }
    }

    fn export_scope(&self, scope: &str) -> Result<ScopeDump, StoreError> {
        check_name("scope", scope)?;
        let what = "exporting a scope";
        let (records, counters, once, memberships): (
            Vec<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
        ) = self.script(
            what,
            self.config.bulk_timeout,
            &SCRIPTS.export,
            scope,
            Vec::new(),
        )?;
        let mut dump = ScopeDump::default();
        for pair in records.chunks_exact(2) {
            dump.records.push((pair[0].clone(), pair[1].clone()));
        }
        for c in counters.chunks_exact(3) {
            let expires_at = if c[2].is_empty() {
                None
            } else {
                Some(decimal(what, &c[2])?)
            };
            dump.counters
                .push((c[0].clone(), decimal(what, &c[1])?, expires_at));
        }
        for pair in once.chunks_exact(2) {
            let (expires_at, fingerprint) = match pair[1].split_once(' ') {
                Some((x, f)) => (decimal(what, x)?, Some(decimal(what, f)?)),
                None => (decimal(what, &pair[1])?, None),
            };
            dump.once.push((pair[0].clone(), expires_at, fingerprint));
        }
        for pair in memberships.chunks_exact(2) {
            dump.memberships.push((pair[0].clone(), pair[1].clone()));
        }
        // Hash fields come in no particular order; the zsets' order is by score.
        dump.records.sort();
        dump.counters.sort();
        dump.once.sort();
        dump.memberships.sort();
        Ok(dump)
    }

    fn import_scope(&self, scope: &str, dump: &ScopeDump) -> Result<(), StoreError> {
        check_name("scope", scope)?;
        // Everything is checked here, before the script: it must not fail half way.
        let mut seen = BTreeSet::new();
        for (key, value) in &dump.records {
            check_name("key", key)?;
            check_value(value)?;
            if !seen.insert(key.as_str()) {
                return Err(repeated(format_args!("record {key:?}")));
            }
        }
        seen.clear();
        for (name, _, _) in &dump.counters {
            check_name("counter name", name)?;
            if !seen.insert(name.as_str()) {
                return Err(repeated(format_args!("counter {name:?}")));
            }
        }
        seen.clear();
        for (key, _, _) in &dump.once {
            check_name("once key", key)?;
            if !seen.insert(key.as_str()) {
                return Err(repeated(format_args!("once key {key:?}")));
            }
        }
        let mut pairs = BTreeSet::new();
        for (group, member) in &dump.memberships {
            check_name("group", group)?;
            check_name("member", member)?;
            if !pairs.insert((group.as_str(), member.as_str())) {
                return Err(repeated(format_args!(
                    "member {member:?} of group {group:?}"
                )));
            }
        }
        let empty = dump.records.is_empty()
            && dump.counters.is_empty()
            && dump.once.is_empty()
            && dump.memberships.is_empty();
        if !empty {
            self.register(scope)?;
        }
        let mut args: Vec<Vec<u8>> = vec![
            dump.records.len().to_string().into(),
            dump.counters.len().to_string().into(),
            dump.once.len().to_string().into(),
            dump.memberships.len().to_string().into(),
        ];
        for (key, value) in &dump.records {
            args.push(key.clone().into());
            args.push(value.clone().into());
        }
        for &(ref name, value, expires_at) in &dump.counters {
            let expires_at = expires_at.filter(|&at| at != NEVER);
            args.push(name.clone().into());
            args.push(value.to_string().into());
            args.push(expires_at.map_or(Vec::new(), |at| at.to_string().into_bytes()));
            args.push(self.gc_arg(expires_at).into());
        }
        for &(ref key, expires_at, fingerprint) in &dump.once {
            args.push(key.clone().into());
            args.push(match fingerprint {
                Some(f) => format!("{expires_at} {f}").into(),
                None => expires_at.to_string().into(),
            });
            args.push(self.gc_arg(Some(expires_at)).into());
        }
        for (group, member) in &dump.memberships {
            args.push(group.clone().into());
            args.push(member.clone().into());
        }
        let what = "importing a scope";
        self.script::<()>(what, self.config.bulk_timeout, &SCRIPTS.import, scope, args)
    }
}

/// Adds an alert (KEYS: log, keys; ARGV: key, value) unless its key is there.
static ALERT_INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then \
           redis.call('ZADD', KEYS[2], 0, ARGV[1]) return 1 end return 0",
    )
});

/// Raises a sequence (KEYS: seq) to at least ARGV[1], a decimal u64, compared
/// digit-wise (see the module docs on numbers in Lua).
static ALERT_SEQUENCE_AT_LEAST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local c = redis.call('GET', KEYS[1]) or '0' \
         if #c < #ARGV[1] or (#c == #ARGV[1] and c < ARGV[1]) then \
           redis.call('SET', KEYS[1], ARGV[1]) end",
    )
});

/// The server-side scripts, compiled (hashed) once per process.
struct Scripts {
    record_insert: Script,
    record_update: Script,
    counter_add: Script,
    counter_tally: Script,
    member_add: Script,
    member_add_many: Script,
    member_remove: Script,
    group_clear: Script,
    group_counts: Script,
    membership: Script,
    scope_listed: Script,
    export: Script,
    import: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let script = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
    Scripts {
        record_insert: script(RECORD_INSERT),
        record_update: script(RECORD_UPDATE),
        counter_add: script(COUNTER_ADD),
        counter_tally: script(COUNTER_TALLY),
        member_add: script(MEMBER_ADD),
        member_add_many: script(MEMBER_ADD_MANY),
        member_remove: script(MEMBER_REMOVE),
        group_clear: script(GROUP_CLEAR),
        group_counts: script(GROUP_COUNTS),
        membership: script(MEMBERSHIP),
        scope_listed: script(SCOPE_LISTED),
        export: script(EXPORT),
        import: script(IMPORT),
    }
});

/// Shared by every script. KEYS[1] is the scope's key base, KEYS[2] (single
/// server only) the registry; ARGV[1] is the scope's name.
const PRELUDE: &str = include_str!("lua/prelude.lua");

const RECORD_INSERT: &str = include_str!("lua/record_insert.lua");

const RECORD_UPDATE: &str = include_str!("lua/record_update.lua");

// ARGV[12]: the once key's fingerprint; ARGV[13..15]: the guard (see
// `guard_holds`). Answers the outcome, the counter's value and the scope's member
// count.
const COUNTER_ADD: &str = include_str!("lua/counter_add.lua");

// ARGV[2] the counter, ARGV[3] now, ARGV[4..6] the guard. Reads only.
const COUNTER_TALLY: &str = include_str!("lua/counter_tally.lua");

// Outcomes: 0 already-in-group, 1 joined, 2 inserted, 3 refused.
// ARGV[5..7]: the guard (see `guard_holds`); ARGV[8], ARGV[9]: a counter to
// read after the addition ('' for none) and `now`. Outcome 4: the guard did not
// hold.
const MEMBER_ADD: &str = include_str!("lua/member_add.lua");

// One member after another, as member-add would: a member given twice finds
// itself in the group (or still refused) the second time.
const MEMBER_ADD_MANY: &str = include_str!("lua/member_add_many.lua");

// Outcomes: 0 not-in-group, 1 left-group, 2 released.
const MEMBER_REMOVE: &str = include_str!("lua/member_remove.lua");

const GROUP_CLEAR: &str = include_str!("lua/group_clear.lua");

// Read-only: each group with its size and exclusive count, as strings, three
// per group. A scope whose counts are not kept yet has them computed here,
// without writing them.
const GROUP_COUNTS: &str = include_str!("lua/group_counts.lua");

// Read-only: the member's group count if it is in the group, else -1.
const MEMBERSHIP: &str = include_str!("lua/membership.lua");

// Read-only: whether the scope holds records, members or live counters.
const SCOPE_LISTED: &str = include_str!("lua/scope_listed.lua");

const EXPORT: &str = include_str!("lua/export.lua");

// ARGV[2..5]: how many records, counters, once markers and memberships follow.
const IMPORT: &str = include_str!("lua/import.lua");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (t, c) = parse_url("redis://127.0.0.1:6379/2?prefix=cg&call_timeout_ms=50").unwrap();
        assert_eq!(t.urls, ["redis://127.0.0.1:6379/2"]);
        assert!(!t.cluster);
        assert_eq!(t.label, "127.0.0.1:6379/2");
        assert_eq!(c.prefix, "cg");
        assert_eq!(c.call_timeout, Duration::from_millis(50));

        let (t, _) = parse_url("redis+cluster://u:p@a:1,b:2").unwrap();
        assert_eq!(t.urls, ["redis://u:p@a:1", "redis://u:p@b:2"]);
        assert!(t.cluster);
        assert_eq!(t.label, "cluster a:1,b:2");

        for bad in [
            "rediss://h:1",
            "rediss+cluster://h:1",
            "redis://",
            "redis://a:1,b:2",
            "redis+cluster://a:1/3",
            "redis://h:1/x",
            "redis://h:1?prefix=a{b}",
            "redis://h:1?nope=1",
            "redis://h:1?call_timeout_ms=0",
            "http://h:1",
        ] {
            assert!(
                matches!(parse_url(bad), Err(StoreError::InvalidArgument(_))),
                "{bad}"
            );
        }
        let Err(StoreError::InvalidArgument(tls)) = parse_url("rediss://h:1") else {
            panic!("TLS refused");
        };
        assert!(tls.contains("no TLS"), "{tls}");
    }

    /// The slots `CLUSTER KEYSLOT` gives for these keys.
    #[test]
    fn slots_follow_the_hash_tag() {
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"somekey"), 11058);
        assert_eq!(slot_of(b"{foo}:bar"), 12182);
        assert_eq!(slot_of(b"x:{foo}:y{z}"), 12182);
        // An empty tag is no tag: the whole key counts.
        assert_ne!(slot_of(b"{}foo"), slot_of(b"foo"));
    }

    #[test]
    fn urls_are_recognised() {
        assert!(is_redis_url("redis://h:1"));
        assert!(is_redis_url("redis+cluster://h:1"));
        assert!(is_redis_url("rediss://h:1"));
        assert!(!is_redis_url("state.redb"));
        assert!(!is_redis_url("memory"));
    }
}
