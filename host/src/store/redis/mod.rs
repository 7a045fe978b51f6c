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
//! With `?replicas=N` on the URL, every write (each pipeline of the collector
//! holding one, and each script run alone) is followed by `WAIT N` on the same
//! connection, and answered only if N replicas hold it: Redis replicates after
//! it answers, and a failover to a replica that lacked the last writes would
//! sell their credits again (see `conn::Wait`). It needs Redis 7.0 or later on
//! every primary, checked at opening (see `durability::WAIT_SINCE`).
//!
//! The scripts are Lua files in `lua/`, one per primitive and a prelude every
//! one starts with, included at build time. What a `--store` URL names is parsed
//! in `url.rs`; the connections and the collector that pipelines the calls are
//! in `conn.rs`.
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
//! | `P:{T}:fence`              | none   | never written: declared by every script so that Redis Cluster runs none while the slot moves (see `RedisStore::keys`) |
//! | `P:scopes`                 | set    | every scope ever written (no hash tag: one slot of its own) |
//! | `P:secret`                 | string | the store's secret (32 bytes, [`Store::secret`]), set by the first client that asks (`SET NX`) |
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
//! hosts), is still in the future by Redis's clock (`TIME`, read in the script)
//! gets `PEXPIREAT` at that instant; one already past it, or one that never
//! expires, gets no TTL: a trace replayed with instants of 1970, or a gateway
//! whose clock lags Redis's by more than the margin, would otherwise see its
//! counter vanish as it is written, and count from 0 at every charge. The
//! index sets (`ctrs`, `onces`) expire themselves with their last entry, and drop
//! entries past their deadline whenever a counter of the scope is created or
//! given another expiry (a new billing cycle's counter, about once a cycle):
//! not at every charge, where pruning would cost as much as the charge itself
//! and, within a cycle, finds nothing to drop. Memberships
//! and records never expire. Once Redis has dropped a counter it reads as 0 and is
//! no longer exported: only a caller whose clock lags Redis's by more than the
//! margin could tell, and such a caller's writes are kept for good.
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
//! Whatever the persistence, a server (or a cluster primary) with `maxmemory` and
//! an evicting `maxmemory-policy` is refused, and watched for one at runtime
//! (see [`durability`]): evicted counters and markers would oversell.
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
//! is safe to retry, it answers `repeated` if it had been applied, and the store
//! retries it once itself, so that a late reply does not fail a request whose
//! credits were taken. The cluster client itself retries a request after a lost
//! connection or a redirection.

mod conn;
mod durability;
mod url;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use redis::{Cmd, RedisError, RedisResult, Script};

use conn::{Call, Conn, block, collect, slot_of};
pub use durability::RedisDurability;
use durability::{Refusal, Watch};
pub use url::{RedisConfig, RedisTarget, is_redis_url, parse_url};

use super::{
    Alerts, CounterAdd, CounterTally, GroupCount, Guard, GuardedUpdate, Instant,
    MAX_GROUPS_PER_MEMBER, MemberAdd, MemberAddGuarded, MemberAddMany, Members, Membership,
    SECRET_LEN, ScopeDump, Store, StoreError, Visit, VisitAlert, too_many_groups,
};
use crate::bindings::{
    GroupCleared, GuardedAdd, GuardedMember, MemberAddOutcome, MemberAdded, MemberRemoveOutcome,
    MemberRemoved, MembersAdded, Tally,
};

/// Expiry stored for "never", as in the other backends.
const NEVER: Instant = i64::MAX;

/// Memberships fetched per round trip by [`Store::visit_members`].
const PAGE: usize = 1_000;

/// Whether a call may write: only writes wait for replicas (`?replicas=N`),
/// so that reads go on while a replica is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Reads,
    Writes,
}

/// `script`, which may write.
fn writes(script: &'static Script) -> (&'static Script, Access) {
    (script, Access::Writes)
}

/// `script`, which only reads.
fn reads(script: &'static Script) -> (&'static Script, Access) {
    (script, Access::Reads)
}

/// `script` on `keys` (a scope's, see `RedisStore::keys`) with `args` after the
/// scope's name, by hash.
fn evalsha(script: &Script, keys: &[String], scope: &str, args: &[Vec<u8>]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for key in keys {
        cmd.arg(key);
    }
    cmd.arg(scope);
    for arg in args {
        cmd.arg(arg.as_slice());
    }
    cmd
}

/// Why a call that timed out failed: its write may stand all the same.
fn no_answer(limit: Duration) -> String {
    format!(
        "no answer within {} ms (a write may have been applied all the same: a retry with \
         the same message id settles it)",
        limit.as_millis()
    )
}

/// The `WAIT` every write is followed by, when `config` asks for replicas: the
/// collector's pipelines and the scripts run alone take it from here.
fn replica_wait(config: &RedisConfig) -> Option<conn::Wait> {
    (config.replicas > 0).then_some(conn::Wait {
        replicas: config.replicas,
        timeout: config.replica_timeout,
    })
}

/// How long a cluster client trusts its memory that a scope is in `P:scopes`.
const REGISTERED_FOR: Duration = Duration::from_secs(300);

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
    /// Set while a primary may evict keys: every call is refused (see
    /// [`durability`]).
    refusal: Arc<Refusal>,
    /// `P:secret`'s value, once read.
    secret: Mutex<Option<[u8; SECRET_LEN]>>,
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
        let connect = conn::connect(target.clone(), config.clone());
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
        // A server that may delete keys is no place for a ledger: refused
        // here, and watched from now on.
        let refusal = Arc::new(Refusal::default());
        let first = Watch::first(
            conn.clone(),
            label.clone(),
            refusal.clone(),
            config.settings_check,
        );
        let first = block(&runtime, async move {
            tokio::time::timeout(config.bulk_timeout, first).await
        })
        .map_err(|e| unavailable(&e))?
        .map_err(|_| unavailable(&"no answer to INFO within the bulk timeout"))?;
        runtime.spawn(first?.run());
        let (calls, queue) = tokio::sync::mpsc::unbounded_channel();
        let wait = replica_wait(&config);
        runtime.spawn(collect(queue, conn.clone(), config.call_timeout, wait));
        let store = Self {
            conn,
            runtime: Some(runtime),
            registry: format!("{}:scopes", config.prefix),
            label,
            config,
            registered: Mutex::default(),
            calls,
            refusal,
            secret: Mutex::new(None),
        };
        if wait.is_some() {
            store.check_wait_support()?;
        }
        store.migrate_alert_log()?;
        Ok(store)
    }

    /// `P:alerts:{O}:`, the start of every key of `owner`'s alert log.
    fn alert_base(&self, owner: &str) -> String {
        let scoped = self.base(owner);
        let tagged = scoped.strip_prefix(&self.config.prefix).unwrap_or(&scoped);
        format!("{}:alerts{tagged}", self.config.prefix)
    }

    /// Where the store's secret is kept (see [`Store::secret`]).
    fn secret_key(&self) -> String {
        format!("{}:secret", self.config.prefix)
    }

    fn host_key(&self, key: &str) -> String {
        format!("{}:host:{key}", self.config.prefix)
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

    /// Replicas every write waits for (`?replicas=N`); 0: none.
    pub fn replicas_waited_for(&self) -> u32 {
        self.config.replicas
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
        self.refuse_while_evicting(what)?;
        let fut = make(self.conn.clone());
        match block(
            runtime,
            async move { tokio::time::timeout(limit, fut).await },
        ) {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(self.failure(what, &e)),
            Ok(Err(_)) => Err(self.unavailable(what, no_answer(limit))),
            Err(e) => Err(self.unavailable(what, e)),
        }
    }

    /// Fails closed while a primary may evict keys: what it answers could be
    /// a ledger with keys missing.
    fn refuse_while_evicting(&self, what: &str) -> Result<(), StoreError> {
        match self.refusal.reason() {
            Some(why) => Err(self.unavailable(what, why)),
            None => Ok(()),
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

    /// KEYS of a script on `scope`: its base and its fence, and with a single
    /// server the registry, which the script then maintains itself.
    ///
    /// The fence (`P:{S}:fence`) is never written. Declared beside the base
    /// (which is no key either), it makes every script a call on two keys of
    /// the scope's slot that do not exist, which Redis Cluster never runs while
    /// the slot is being moved: the node it leaves answers `ASK` (it holds none
    /// of the declared keys), and the node it goes to `TRYAGAIN` (a call on
    /// several keys it does not all hold). A script reads and writes keys it
    /// does not declare, so run on either node mid-move it would see only the
    /// keys moved so far: a counter missing reads 0, and its credits sell
    /// again. So a primitive on a scope whose slot is moving fails, as a store
    /// unavailable, until the move ends.
    fn keys(&self, scope: &str) -> Vec<String> {
        let base = self.base(scope);
        let fence = format!("{base}fence");
        match self.conn {
            Conn::Single(_) => vec![base, fence, self.registry.clone()],
            Conn::Cluster(_) => vec![base, fence],
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

    /// Runs `script` on `scope` with `args` after the scope's name; one that
    /// `writes` is followed by `WAIT` when the URL asks for replicas.
    fn script<T>(
        &self,
        what: &str,
        limit: Duration,
        (script, access): (&'static Script, Access),
        scope: &str,
        args: Vec<Vec<u8>>,
    ) -> Result<T, StoreError>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        // A write followed by WAIT in one pipeline, as the collector's are.
        let wait = replica_wait(&self.config).filter(|_| access == Access::Writes);
        let cmd = evalsha(script, &self.keys(scope), scope, &args);
        self.call(what, limit, |mut c| async move {
            let value = conn::query_alone(&mut c, &cmd, Some(script), wait).await?;
            redis::from_redis_value(value).map_err(RedisError::from)
        })
    }

    /// Runs `script` on `scope` with `args` after the scope's name, as a
    /// primitive: through the collector, in a pipeline with the other calls in
    /// flight to the same node, within [`RedisConfig::call_timeout`]; one that
    /// writes is followed by `WAIT` when the URL asks for replicas.
    fn primitive<T>(
        &self,
        what: &str,
        (script, access): (&'static Script, Access),
        scope: &str,
        args: &[Vec<u8>],
    ) -> Result<T, StoreError>
    where
        T: redis::FromRedisValue,
    {
        let keys = self.keys(scope);
        let cmd = evalsha(script, &keys, scope, args);
        self.send(what, &keys[0], cmd, Some(script), access)
    }

    /// Sends `cmd` (on the keys of the scope whose base is `base`) through the
    /// collector and waits for its answer, at most [`RedisConfig::call_timeout`].
    fn send<T>(
        &self,
        what: &str,
        base: &str,
        cmd: Cmd,
        script: Option<&'static Script>,
        access: Access,
    ) -> Result<T, StoreError>
    where
        T: redis::FromRedisValue,
    {
        let Some(runtime) = &self.runtime else {
            return Err(self.unavailable(what, "the store is shutting down"));
        };
        self.refuse_while_evicting(what)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let call = Call {
            slot: matches!(self.conn, Conn::Cluster(_)).then(|| slot_of(base.as_bytes())),
            cmd,
            script,
            writes: access == Access::Writes,
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
            Ok(Err(_)) => Err(self.unavailable(what, no_answer(limit))),
            Err(e) => Err(self.unavailable(what, e)),
        }
    }

    /// Runs the member-add script: the outcome (None: the guard did not hold) and
    /// the tally (the counter only when one is named).
    fn add_member(
        &self,
        add: MemberAdd<'_>,
        guard: Option<Guard<'_>>,
        counter: Option<(&str, Instant)>,
    ) -> Result<(Option<MemberAddOutcome>, Tally), StoreError> {
        let what = "member-add";
        let (scope, group, member, limit) = (add.scope, add.group, add.member, add.limit);
        self.register(scope)?;
        let mut args = vec![group.into(), member.into(), limit_arg(limit)];
        args.extend(guard_args(guard));
        // No counter: an empty `now` (a counter may be named "", an instant
        // is never empty).
        let (name, now) = counter.map_or(("", String::new()), |(n, now)| (n, now.to_string()));
        args.extend([name.into(), now.into()]);
        let (outcome, members, value): (u64, u64, String) =
            self.primitive(what, writes(&SCRIPTS.member_add), scope, &args)?;
        let tally = Tally {
            counter: decimal(what, &value)?,
            members,
        };
        Ok(match outcome {
            4 => (None, tally),
            TOO_MANY_GROUPS => return Err(too_many_groups(scope, member)),
            n => (Some(member_outcome(n)?), tally),
        })
    }

    /// The instant (ms since the epoch) until which Redis keeps something that
    /// expires at `expires_at`, or None: keep it for good (see the module docs).
    /// A deadline already past is the script's to judge, by Redis's clock: by
    /// this host's, it was judged wrongly whenever the host lagged Redis.
    fn gc_at(&self, expires_at: Instant) -> Option<i64> {
        if expires_at == NEVER {
            return None;
        }
        let margin = i64::try_from(self.config.gc_margin.as_millis()).ok()?;
        expires_at.div_euclid(1_000_000).checked_add(margin)
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

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("redis: {what}: {e}"))
}

fn decimal<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, StoreError> {
    s.parse()
        .map_err(|_| corrupt(what, format_args!("{s:?} is not a number")))
}

/// The member-add scripts' answer for a join past [`MAX_GROUPS_PER_MEMBER`]:
/// nothing was written.
const TOO_MANY_GROUPS: u64 = 5;

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

// The mechanism only: `Store` checks the arguments first (see `Backend`).
impl super::Backend for RedisStore {
    fn alert_sequence(&self, owner: &str) -> Result<u64, StoreError> {
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

    fn visit_alerts(&self, list: Alerts<'_>, visit: VisitAlert<'_>) -> Result<(), StoreError> {
        let Alerts { owner, after } = list;
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
        let base = self.base(scope);
        let mut cmd = redis::cmd("HGET");
        cmd.arg(format!("{base}rec")).arg(key);
        self.send("record-get", &base, cmd, None, Access::Reads)
    }

    fn record_insert(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        self.register(scope)?;
        let args = vec![key.into(), value.into()];
        let script = writes(&SCRIPTS.record_insert);
        self.primitive("record-insert", script, scope, &args)
    }

    fn record_update(&self, scope: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        let args = vec![key.into(), value.into()];
        let script = writes(&SCRIPTS.record_update);
        self.primitive("record-update", script, scope, &args)
    }

    fn record_update_guarded(&self, update: GuardedUpdate<'_>) -> Result<bool, StoreError> {
        let mut args = vec![update.key.into(), update.value.into()];
        args.extend(guard_args(Some(update.guard)));
        let script = &SCRIPTS.record_update_guarded;
        self.primitive("record-update-guarded", writes(script), update.scope, &args)
    }

    fn counter_get(&self, scope: &str, name: &str, now: Instant) -> Result<u64, StoreError> {
        let what = "counter-get";
        let base = self.base(scope);
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(format!("{base}ctr:{name}")).arg("v").arg("x");
        let (value, expires_at): (Option<String>, Option<String>) =
            self.send(what, &base, cmd, None, Access::Reads)?;
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

    fn counter_add_guarded(&self, add: CounterAdd<'_>) -> Result<GuardedAdd, StoreError> {
        let CounterAdd {
            scope, guard, name, ..
        } = add;
        self.register(scope)?;
        let what = "counter-add";
        // Some(NEVER) and None both mean never, as in the other backends.
        let expires_at = add.expires_at.filter(|&at| at != NEVER);
        let mut args: Vec<Vec<u8>> = vec![
            name.into(),
            add.amount.to_string().into(),
            limit_arg(add.limit),
            if add.once.is_some() { "1" } else { "0" }.into(),
            add.once.map_or(Vec::new(), |o| o.key.as_bytes().to_vec()),
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
        let run = || self.primitive(what, writes(&SCRIPTS.counter_add), scope, &args);
        // A call that got no answer may have been applied all the same: Redis
        // ran the script and the reply came late, or was lost with the
        // connection. Failing the request then would leave its credits taken,
        // and the client's retry (at Postfix, a new delivery attempt under a new
        // `instance`) would be charged again. With a once key the call is made
        // once more, which settles it: applied before, it is now a repeat and
        // the request stands on the charge it made; never applied, it applies
        // now. Without a once key a second call could charge twice, so the
        // failure stands.
        let answer = match add.once {
            Some(_) => run().or_else(|e| match e {
                StoreError::Unavailable(_) => run(),
                other => Err(other),
            }),
            None => run(),
        };
        let (outcome, value, members): (String, String, u64) = answer?;
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

    fn counter_tally(&self, tally: CounterTally<'_>) -> Result<Option<Tally>, StoreError> {
        let what = "counter-tally";
        let mut args: Vec<Vec<u8>> = vec![tally.name.into(), tally.now.to_string().into()];
        args.extend(guard_args(tally.guard));
        let (outcome, value, members): (String, String, u64) =
            self.primitive(what, reads(&SCRIPTS.counter_tally), tally.scope, &args)?;
        Ok(match outcome.as_str() {
            "tally" => Some(Tally {
                counter: decimal(what, &value)?,
                members,
            }),
            "stale" => None,
            other => return Err(corrupt(what, format_args!("outcome {other:?}"))),
        })
    }

    fn member_add(&self, add: MemberAdd<'_>) -> Result<MemberAdded, StoreError> {
        let (outcome, tally) = self.add_member(add, None, None)?;
        Ok(MemberAdded {
            outcome: outcome.ok_or_else(|| corrupt("member-add", "stale without a guard"))?,
            members: tally.members,
        })
    }

    fn member_add_guarded(
        &self,
        add: MemberAddGuarded<'_>,
    ) -> Result<Option<GuardedMember>, StoreError> {
        let counter = Some((add.name, add.now));
        let (outcome, tally) = self.add_member(add.member_add(), add.guard, counter)?;
        Ok(outcome.map(|outcome| GuardedMember { outcome, tally }))
    }

    fn member_add_many(&self, add: MemberAddMany<'_>) -> Result<MembersAdded, StoreError> {
        let (scope, members) = (add.scope, add.members);
        if !members.is_empty() {
            self.register(scope)?;
        }
        let mut args = Vec::with_capacity(members.len() + 2);
        args.push(add.group.into());
        args.push(limit_arg(add.limit));
        args.extend(members.iter().map(|m| m.clone().into_bytes()));
        // A full batch is tens of thousands of commands inside one script.
        let limit = self.config.bulk_timeout;
        let answer: Vec<u64> = self.script(
            "member-add-many",
            limit,
            writes(&SCRIPTS.member_add_many),
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
        if let Some(i) = outcomes.iter().position(|&o| o == TOO_MANY_GROUPS) {
            return Err(too_many_groups(scope, &members[i]));
        }
        Ok(MembersAdded {
            outcomes: outcomes
                .iter()
                .map(|&o| member_outcome(o))
                .collect::<Result<_, _>>()?,
            members: count,
        })
    }

    fn member_remove(&self, at: Membership<'_>) -> Result<MemberRemoved, StoreError> {
        let what = "member-remove";
        let args = vec![at.group.into(), at.member.into()];
        let (outcome, members): (u64, u64) =
            self.primitive(what, writes(&SCRIPTS.member_remove), at.scope, &args)?;
        let outcome = match outcome {
            0 => MemberRemoveOutcome::NotInGroup,
            1 => MemberRemoveOutcome::LeftGroup,
            2 => MemberRemoveOutcome::Released,
            _ => return Err(corrupt(what, format_args!("outcome {outcome}"))),
        };
        Ok(MemberRemoved { outcome, members })
    }

    fn group_clear(&self, scope: &str, group: &str) -> Result<GroupCleared, StoreError> {
        // A large group is a long script.
        let limit = self.config.bulk_timeout;
        let (removed, released, members): (u64, u64, u64) = self.script(
            "group-clear",
            limit,
            writes(&SCRIPTS.group_clear),
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
        let what = "group-counts";
        let flat: Vec<String> = self.script(
            what,
            self.config.bulk_timeout,
            reads(&SCRIPTS.group_counts),
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

    fn membership(&self, at: Membership<'_>) -> Result<Option<u64>, StoreError> {
        let args = vec![at.group.into(), at.member.into()];
        let n: i64 = self.primitive("membership", reads(&SCRIPTS.membership), at.scope, &args)?;
        Ok(u64::try_from(n).ok())
    }

    fn member_count(&self, scope: &str) -> Result<u64, StoreError> {
        let base = self.base(scope);
        let mut cmd = redis::cmd("HLEN");
        cmd.arg(format!("{base}mem"));
        self.send("member-count", &base, cmd, None, Access::Reads)
    }

    fn persist(&self) -> Result<(), StoreError> {
        // Each script was applied when it returned; how durable that is, is the
        // server's appendfsync setting (see the module docs).
        Ok(())
    }

    fn durable_on_return(&self) -> bool {
        true
    }

    fn health(&self) -> Result<(), StoreError> {
        // Calls fail (and recover) one by one otherwise; a server that may
        // evict keys fails them all, and says so here.
        self.refuse_while_evicting("serving")
    }

    fn secret(&self) -> Result<[u8; SECRET_LEN], StoreError> {
        if let Some(secret) = *self.secret.lock().unwrap_or_else(PoisonError::into_inner) {
            return Ok(secret);
        }
        let what = "the store's secret";
        let key = self.secret_key();
        // The first client to set it wins; every client reads the winner's.
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(super::new_secret()?.as_slice())
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key);
        let (stored,): (Vec<u8>,) =
            self.call(what, self.config.call_timeout, |mut c| async move {
                pipe.query_async(&mut c).await
            })?;
        let secret = <[u8; SECRET_LEN]>::try_from(stored.as_slice()).map_err(|_| {
            StoreError::Corrupt(format!(
                "{what}: {key} holds {} bytes where a secret has {SECRET_LEN}",
                stored.len()
            ))
        })?;
        *self.secret.lock().unwrap_or_else(PoisonError::into_inner) = Some(secret);
        Ok(secret)
    }

    fn set_secret(&self, secret: [u8; SECRET_LEN]) -> Result<(), StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(self.secret_key()).arg(secret.as_slice());
        self.call(
            "setting the store's secret",
            self.config.call_timeout,
            |mut c| async move { set.query_async::<()>(&mut c).await },
        )?;
        *self.secret.lock().unwrap_or_else(PoisonError::into_inner) = Some(secret);
        Ok(())
    }

    fn host_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(self.host_key(key));
        self.call(
            "reading a host record",
            self.config.call_timeout,
            |mut c| async move { get.query_async(&mut c).await },
        )
    }

    fn set_host_record(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(self.host_key(key)).arg(value);
        self.call(
            "setting a host record",
            self.config.call_timeout,
            |mut c| async move { set.query_async::<()>(&mut c).await },
        )
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

    fn visit_members_after(&self, list: Members<'_>, visit: Visit<'_>) -> Result<(), StoreError> {
        let (scope, group, after) = (list.scope, list.group, list.after);
        // Page by page, each page one atomic read: unlike redb, not one snapshot
        // of the whole scope (a visit concurrent with writes sees each page as of
        // its own read), but bounded in memory whatever the scope's size. The
        // first page is in the group of `after`.
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
        let what = "exporting a scope";
        let (records, counters, once, memberships): (
            Vec<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
        ) = self.script(
            what,
            self.config.bulk_timeout,
            reads(&SCRIPTS.export),
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
        self.script::<()>(
            what,
            self.config.bulk_timeout,
            writes(&SCRIPTS.import),
            scope,
            args,
        )
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
    record_update_guarded: Script,
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
    let script = |body: &str| {
        Script::new(&format!(
            "local MAX_GROUPS, TOO_MANY_GROUPS = {MAX_GROUPS_PER_MEMBER}, {TOO_MANY_GROUPS}\n\
             {PRELUDE}\n{body}"
        ))
    };
    Scripts {
        record_insert: script(RECORD_INSERT),
        record_update: script(RECORD_UPDATE),
        record_update_guarded: script(RECORD_UPDATE_GUARDED),
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

/// Shared by every script. KEYS[1] is the scope's key base, KEYS[2] its fence
/// (see `RedisStore::keys`), KEYS[3] (single server only) the registry; ARGV[1]
/// is the scope's name.
const PRELUDE: &str = include_str!("lua/prelude.lua");

const RECORD_INSERT: &str = include_str!("lua/record_insert.lua");

const RECORD_UPDATE: &str = include_str!("lua/record_update.lua");

const RECORD_UPDATE_GUARDED: &str = include_str!("lua/record_update_guarded.lua");

// ARGV[12]: the once key's fingerprint; ARGV[13..15]: the guard (see
// `guard_holds`). Answers the outcome, the counter's value and the scope's member
// count.
const COUNTER_ADD: &str = include_str!("lua/counter_add.lua");

// ARGV[2] the counter, ARGV[3] now, ARGV[4..6] the guard. Reads only.
const COUNTER_TALLY: &str = include_str!("lua/counter_tally.lua");

// Outcomes: 0 already-in-group, 1 joined, 2 inserted, 3 refused.
// ARGV[5..7]: the guard (see `guard_holds`); ARGV[8], ARGV[9]: a counter to
// read after the addition and `now` ('' for none). Outcome 4: the guard did not
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
