//! What the Redis server's own settings let it lose. A gateway answers
//! "allowed" once Redis has answered the charge; whether that charge is still
//! there later is up to Redis's settings, which creditgate cannot change but can
//! read, on every primary of a cluster:
//!
//! - **Persistence** (`appendonly`, `appendfsync`): weaker than `yes` and
//!   `always`, a crash of Redis or its host takes back charges it acknowledged.
//!   `serve` says so at start and `serve --check` prints it; the gateway runs.
//! - **Eviction** (`maxmemory` with a `maxmemory-policy` other than
//!   `noeviction`): under memory pressure Redis deletes keys, and the counters
//!   and `once` markers of a ledger are the first a `volatile-*` policy picks
//!   (they carry a TTL). Usage then reads as reset and retried messages are
//!   charged again: credits oversold, silently. So the store refuses to open on
//!   such a server, and a [`Watch`] reads the setting again every few seconds:
//!   while a primary evicts (a `CONFIG SET` at runtime), every call fails closed
//!   and `health` says why; the store serves again once the setting is safe.
//!   Keys a primary evicted are logged as an error, with how many.
//! - **Time**, which is not Redis's setting but the gateways': a charge moves an
//!   account into the billing cycle of the clock that asks, for every gateway
//!   (see the guest's `known.rs`), so a gateway whose clock runs ahead ends its
//!   accounts' cycles early for all. The watch compares this host's clock with
//!   each primary's (`TIME`) and warns past [`MAX_SKEW`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, RedisError, RedisResult, Value};

use super::RedisStore;
use super::conn::Conn;
use crate::store::StoreError;

/// What a Redis server says of how it keeps writes (`CONFIG GET`): on a
/// cluster, the primary that keeps them least well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisDurability {
    /// `appendonly`: `yes` keeps an append-only file.
    pub appendonly: String,
    /// `appendfsync`: `always` syncs it before each answer.
    pub appendfsync: String,
    /// Cluster only: the primary these are of (`primary HOST:PORT`).
    pub node: Option<String>,
}

impl RedisDurability {
    /// What a crash could take back, when it could take anything; None when
    /// every acknowledged write survives a crash of Redis or its host.
    pub fn risk(&self) -> Option<&'static str> {
        if self.appendonly != "yes" {
            Some("every charge since the last snapshot")
        } else if self.appendfsync != "always" {
            Some("about the last second of charges")
        } else {
            None
        }
    }

    /// How bad [`RedisDurability::risk`] is, for picking a cluster's weakest.
    fn weakness(&self) -> u8 {
        match self.risk() {
            None => 0,
            Some(_) if self.appendonly == "yes" => 1,
            Some(_) => 2,
        }
    }
}

impl std::fmt::Display for RedisDurability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "appendonly {}, appendfsync {}",
            self.appendonly, self.appendfsync
        )?;
        match &self.node {
            Some(node) => write!(f, " ({node})"),
            None => Ok(()),
        }
    }
}

/// What one primary says of evicting keys (`INFO memory`, `INFO stats`: read
/// even where `CONFIG` is renamed, as managed services do).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Eviction {
    node: String,
    /// `maxmemory`: 0 means no limit, so nothing is evicted.
    maxmemory: u64,
    policy: String,
    /// `evicted_keys` since the server started.
    evicted: u64,
}

impl Eviction {
    fn evicts(&self) -> bool {
        self.maxmemory != 0 && self.policy != "noeviction"
    }

    /// Why a store must not run on this primary.
    fn refusal(&self) -> String {
        format!(
            "{} may delete keys (maxmemory {}, maxmemory-policy {}): the counters and \
             markers of a ledger would vanish, resetting usage and charging retried \
             messages again; set maxmemory-policy noeviction (or maxmemory 0)",
            self.node, self.maxmemory, self.policy
        )
    }
}

/// Whether the store refuses calls because a primary evicts, and why; shared by
/// the store and its [`Watch`].
#[derive(Debug, Default)]
pub(super) struct Refusal {
    /// Whether `reason` may hold one: a load on every call instead of a lock.
    refusing: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Refusal {
    /// Why calls are refused now; None while they are not.
    pub(super) fn reason(&self) -> Option<String> {
        if !self.refusing.load(Ordering::Acquire) {
            return None;
        }
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, reason: Option<String>) {
        let mut held = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        self.refusing.store(reason.is_some(), Ordering::Release);
        *held = reason;
    }
}

/// Runs `cmd` on every primary: the server itself, or each primary of the
/// cluster; their answers by node, named for messages (`the server`,
/// `primary HOST:PORT`).
async fn on_every_primary(conn: Conn, cmd: Cmd) -> RedisResult<Vec<(String, Value)>> {
    match conn {
        Conn::Single(mut c) => Ok(vec![(
            "the server".to_owned(),
            cmd.query_async(&mut c).await?,
        )]),
        Conn::Cluster(mut c) => {
            let every = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
            match c.route_command(cmd, every).await? {
                Value::Map(nodes) => nodes
                    .into_iter()
                    .map(|(node, answer)| {
                        let node: String = redis::from_redis_value(node)?;
                        Ok((format!("primary {node}"), answer))
                    })
                    .collect(),
                other => Err(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "an answer by node",
                    format!("{other:?}"),
                ))),
            }
        }
    }
}

/// `field:value` of an `INFO` answer.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// The oldest Redis on which `?replicas=N` vouches for every allow: `(7, 0)`.
///
/// `WAIT` waits for the replication offset of the connection's last command.
/// From 7.0 every command sets it, reads included; before, only a command
/// that propagated a write did. A retried charge answered from its idempotency
/// marker writes nothing: on Redis 6, on a connection that had written nothing
/// yet (another gateway's, or one just reconnected), its `WAIT` returned at
/// once, and the allow stood on a marker that might not have reached a replica.
pub const WAIT_SINCE: (u32, u32) = (7, 0);

/// The `major.minor` of `redis_version` in an `INFO server` answer.
fn version_of(info: &str) -> Option<(u32, u32)> {
    let mut parts = info_field(info, "redis_version")?.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// What the primaries said of evicting: each one's settings, and the ones
/// whose answer could not be read (loading, an error, a field missing), which
/// are judged again at the next reading.
#[derive(Debug, Default)]
struct Evictions {
    read: Vec<Eviction>,
    unreadable: Vec<String>,
}

/// Every primary's eviction settings and count.
async fn evictions(conn: Conn) -> RedisResult<Evictions> {
    let memory = on_every_primary(conn.clone(), redis::cmd("INFO").arg("memory").clone());
    let stats = on_every_primary(conn, redis::cmd("INFO").arg("stats").clone());
    let (memory, stats) = tokio::try_join!(memory, stats)?;
    let stats: HashMap<String, Value> = stats.into_iter().collect();
    let malformed = |node: &str, what: &str| {
        RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "INFO without a field",
            format!("{node}: no {what}"),
        ))
    };
    let mut found = Evictions::default();
    for (node, memory) in memory {
        let read = || {
            let memory: String = redis::from_redis_value(memory)?;
            let stats: String = match stats.get(&node) {
                Some(v) => redis::from_redis_value_ref(v)?,
                None => return Err(malformed(&node, "INFO stats")),
            };
            let number = |info: &str, field: &str| {
                info_field(info, field)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| malformed(&node, field))
            };
            Ok::<_, RedisError>(Eviction {
                maxmemory: number(&memory, "maxmemory")?,
                policy: info_field(&memory, "maxmemory_policy")
                    .ok_or_else(|| malformed(&node, "maxmemory_policy"))?
                    .to_owned(),
                evicted: number(&stats, "evicted_keys")?,
                node: node.clone(),
            })
        };
        match read() {
            Ok(eviction) => found.read.push(eviction),
            Err(_) => found.unreadable.push(node),
        }
    }
    Ok(found)
}

/// How far this host's clock may stray from Redis's before the watch warns.
const MAX_SKEW: Duration = Duration::from_secs(1);

/// This host's clock, in seconds since 1970 (fractional).
fn local_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How far this host's clock is ahead of the server's (negative: behind), from
/// a `TIME` answer (`[seconds, microseconds]`) and this host's clock read just
/// before and after asking: the server read its clock between the two.
fn skew(before: f64, after: f64, time: &[String]) -> Option<f64> {
    let [seconds, micros] = time else {
        return None;
    };
    let server = seconds.parse::<f64>().ok()? + micros.parse::<f64>().ok()? / 1e6;
    Some((before + after) / 2.0 - server)
}

/// The primary whose clock this host's strays furthest from, and by how much
/// (seconds, positive: this host is ahead).
async fn worst_skew(conn: Conn) -> RedisResult<Option<(String, f64)>> {
    let before = local_seconds();
    let times = on_every_primary(conn, redis::cmd("TIME")).await?;
    let after = local_seconds();
    let mut worst: Option<(String, f64)> = None;
    for (node, time) in times {
        let time: Vec<String> = redis::from_redis_value(time)?;
        if let Some(s) = skew(before, after, &time)
            && worst.as_ref().is_none_or(|(_, w)| s.abs() > w.abs())
        {
            worst = Some((node, s));
        }
    }
    Ok(worst)
}

/// Reads the eviction settings of every primary again every `every`, refusing
/// the store's calls while one evicts (see the module docs).
pub(super) struct Watch {
    conn: Conn,
    label: String,
    refusal: std::sync::Arc<Refusal>,
    every: Duration,
    /// Whether the last clock check warned.
    clock_warned: bool,
    /// Whether the last reading could not judge some primary, and said so.
    blind: bool,
    /// Each primary's `evicted_keys` at the last reading.
    evicted: HashMap<String, u64>,
    /// What a crash could take back at the last reading of `appendonly` and
    /// `appendfsync` (None: nothing, or not read yet), to say when it changes.
    risk: Option<String>,
    /// Primaries found to have evicted keys, and why that refuses every call:
    /// until an operator, having checked the ledger, resets the count
    /// (`CONFIG RESETSTAT`), whatever the policy says by then.
    evicted_from: HashMap<String, String>,
}

impl Watch {
    /// Checks the primaries once, for opening a store: an error names the one
    /// that may evict. A primary that will not answer `INFO` is let through
    /// with a warning, as durability is: the setting is then the operator's to
    /// check.
    pub(super) async fn first(
        conn: Conn,
        label: String,
        refusal: std::sync::Arc<Refusal>,
        every: Duration,
    ) -> Result<Self, StoreError> {
        let mut watch = Self {
            conn,
            label,
            refusal,
            every,
            clock_warned: false,
            blind: false,
            evicted: HashMap::new(),
            evicted_from: HashMap::new(),
            risk: None,
        };
        watch.check_clock().await;
        // Weak settings at the opening are the opening's to warn of.
        if let Ok(now) = weakest_durability(watch.conn.clone()).await {
            watch.risk = risk_of(&now);
        }
        match watch.look().await {
            Some(why) => Err(StoreError::Unavailable(format!(
                "redis {}: {why}",
                watch.label
            ))),
            None => Ok(watch),
        }
    }

    /// Runs until the store's runtime stops.
    pub(super) async fn run(mut self) {
        loop {
            tokio::time::sleep(self.every).await;
            self.check_clock().await;
            self.check_durability().await;
            let refusal = self.look().await;
            match (&refusal, self.refusal.reason()) {
                (Some(why), None) => tracing::error!(redis = %self.label,
                    "refusing every call: {why}"),
                (None, Some(_)) => tracing::warn!(redis = %self.label,
                    "no primary evicts, nor has evicted keys: serving again"),
                _ => {}
            }
            self.refusal.set(refusal);
        }
    }

    /// Reads every primary's eviction settings: why the store's calls must be
    /// refused, when they must. A refusal in force stands while some primary
    /// cannot be read (it may be the one that evicts). Logs the keys evicted
    /// since the last reading (since the server started, for a primary seen
    /// for the first time), and once when some primary cannot be read.
    async fn look(&mut self) -> Option<String> {
        let (read, unreadable) = match evictions(self.conn.clone()).await {
            Ok(found) => (found.read, found.unreadable),
            Err(e) => (Vec::new(), vec![format!("every primary ({e})")]),
        };
        let blind = !unreadable.is_empty();
        if blind && !self.blind {
            tracing::warn!(redis = %self.label, nodes = ?unreadable,
                "cannot read these primaries' eviction settings (INFO refused, loading, \
                 down): one that may evict keys goes unseen until they can be read; make \
                 sure they run with maxmemory-policy noeviction (or maxmemory 0)");
        }
        self.blind = blind;
        for node in &read {
            let before = self.evicted.insert(node.node.clone(), node.evicted);
            if node.evicted == 0 {
                // Reset by an operator (or a restart): what it refused for is
                // theirs to have judged.
                if self.evicted_from.remove(&node.node).is_some() {
                    tracing::warn!(redis = %self.label, node = %node.node,
                        "evicted_keys was reset: no longer refusing for the keys it evicted");
                }
                continue;
            }
            if before.is_none_or(|b| node.evicted > b) {
                tracing::error!(redis = %self.label, node = %node.node,
                    evicted = node.evicted - before.unwrap_or(0),
                    "Redis has evicted keys: if they were the ledger's, usage was reset and \
                     retried messages would be charged again; refusing every call");
                self.evicted_from.insert(node.node.clone(), format!(
                    "{} has evicted {} key(s) (evicted_keys in INFO stats): a ledger's counters \
                     and markers may be gone, and its credits sold again; every call is refused \
                     until an operator has checked the ledger (or restored it) and run CONFIG \
                     RESETSTAT on that node",
                    node.node, node.evicted
                ));
            }
        }
        let evicted = self.evicted_from.values().min().cloned();
        read.iter()
            .find(|n| n.evicts())
            .map(Eviction::refusal)
            .or(evicted)
            .or_else(|| blind.then(|| self.refusal.reason()).flatten())
    }

    /// Says, as an error, when a primary's `appendonly` or `appendfsync` is
    /// turned weaker while gateways run (`CONFIG SET appendonly no`): from then
    /// on a crash of Redis takes back charges they answered as allowed. The
    /// opening warns of weak settings; this catches them changed later.
    async fn check_durability(&mut self) {
        let Ok(now) = weakest_durability(self.conn.clone()).await else {
            return;
        };
        let risk = risk_of(&now);
        match (&self.risk, &risk) {
            (before, Some(lose)) if before.as_ref() != Some(lose) => {
                tracing::error!(redis = %self.label,
                    "Redis's durability changed ({lose}), which gateways answered as allowed; \
                     set appendonly yes and appendfsync always again")
            }
            (Some(_), None) => {
                tracing::warn!(redis = %self.label, "every primary keeps writes again ({now})")
            }
            _ => {}
        }
        self.risk = risk;
    }

    /// Warns when this host's clock strays past [`MAX_SKEW`] from a primary's,
    /// and says when it agrees again.
    async fn check_clock(&mut self) {
        let Ok(Some((node, skew))) = worst_skew(self.conn.clone()).await else {
            return;
        };
        let strays = skew.abs() > MAX_SKEW.as_secs_f64();
        if strays && !self.clock_warned {
            let (way, effect) = if skew > 0.0 {
                (
                    "ahead of",
                    "it starts its accounts' billing cycles early for every gateway",
                )
            } else {
                (
                    "behind",
                    "past ten minutes it lets a finished billing cycle be charged late",
                )
            };
            tracing::warn!(redis = %self.label, %node, skew_seconds = skew,
                "this host's clock is {:.1} s {way} Redis's: {effect}; keep the gateways' \
                 clocks synchronised (NTP)", skew.abs());
        } else if !strays && self.clock_warned {
            tracing::info!(redis = %self.label, %node, "this host's clock agrees with Redis's again");
        }
        self.clock_warned = strays;
    }
}

/// What a crash could take back under `durability`, said whole; None: nothing.
fn risk_of(durability: &RedisDurability) -> Option<String> {
    (durability.risk()).map(|r| format!("{durability}: a crash can lose {r}"))
}

/// Every primary's `appendonly` and `appendfsync`, the weakest of them (see
/// [`RedisStore::durability`]), or why they could not be read.
async fn weakest_durability(conn: Conn) -> Result<RedisDurability, String> {
    let cluster = matches!(conn, Conn::Cluster(_));
    let cmd = redis::cmd("CONFIG").arg("GET").arg("append*").clone();
    let nodes = on_every_primary(conn, cmd)
        .await
        .map_err(|e| e.to_string())?;
    let mut weakest: Option<RedisDurability> = None;
    for (node, config) in nodes {
        let config: HashMap<String, String> =
            redis::from_redis_value(config).map_err(|e| e.to_string())?;
        let setting = |name: &str| {
            (config.get(name).cloned()).ok_or_else(|| format!("CONFIG GET gave {node} no {name}"))
        };
        let this = RedisDurability {
            appendonly: setting("appendonly")?,
            appendfsync: setting("appendfsync")?,
            node: cluster.then_some(node),
        };
        if weakest
            .as_ref()
            .is_none_or(|w| this.weakness() > w.weakness())
        {
            weakest = Some(this);
        }
    }
    let mut weakest = weakest.ok_or("no primary answered")?;
    if weakest.risk().is_none() {
        // Every primary keeps writes: none to name.
        weakest.node = None;
    }
    Ok(weakest)
}

impl RedisStore {
    /// The server's `appendonly` and `appendfsync`; on a cluster, those of the
    /// primary that keeps writes least well, named. A server that refuses
    /// `CONFIG` (managed services often rename it) answers an error: durability
    /// is then the operator's to check.
    pub fn durability(&self) -> Result<RedisDurability, StoreError> {
        let what = "reading appendonly and appendfsync";
        self.call(what, self.config.call_timeout, |c| async move {
            Ok(weakest_durability(c).await)
        })?
        .map_err(|e| self.unavailable(what, e))
    }

    /// Refuses a store whose writes wait for replicas (`?replicas=N`) on a
    /// primary older than [`WAIT_SINCE`], or whose version cannot be read:
    /// there a `WAIT` can vouch for a write it never saw.
    pub(super) fn check_wait_support(&self) -> Result<(), StoreError> {
        let what = "reading the primaries' versions";
        let nodes = self.call(what, self.config.call_timeout, |c| async move {
            on_every_primary(c, redis::cmd("INFO").arg("server").clone()).await
        })?;
        for (node, info) in nodes {
            let info: String =
                redis::from_redis_value(info).map_err(|e| self.unavailable(what, e))?;
            let found = version_of(&info);
            if found.is_none_or(|v| v < WAIT_SINCE) {
                let runs = info_field(&info, "redis_version").unwrap_or("an unreadable version");
                return Err(StoreError::InvalidArgument(format!(
                    "redis {}: replicas={} needs Redis {}.{} or later on every primary, and \
                     {node} runs {runs}: before 7.0, WAIT on a connection whose last command \
                     wrote nothing returns at once, so a retried charge could be allowed on \
                     an idempotency marker no replica holds yet",
                    self.label, self.config.replicas, WAIT_SINCE.0, WAIT_SINCE.1,
                )));
            }
        }
        Ok(())
    }

    /// The primaries that have replicas, each with how many are connected
    /// (`INFO replication`, `connected_slaves`). Redis replicates after it
    /// answers, so a replica promoted in a failover can lack the last charges
    /// its primary acknowledged: gateways answered them as allowed, and the
    /// promoted replica sells those credits again.
    pub fn replicated_primaries(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let what = "reading the primaries' replicas";
        let nodes = self.call(what, self.config.call_timeout, |c| async move {
            on_every_primary(c, redis::cmd("INFO").arg("replication").clone()).await
        })?;
        let mut replicated = Vec::new();
        for (node, info) in nodes {
            let info: String =
                redis::from_redis_value(info).map_err(|e| self.unavailable(what, e))?;
            let replicas = info_field(&info, "connected_slaves")
                .ok_or_else(|| self.unavailable(what, format_args!("{node}: no connected_slaves")))?
                .parse::<u64>()
                .map_err(|e| self.unavailable(what, format_args!("{node}: {e}")))?;
            if replicas > 0 {
                replicated.push((node, replicas));
            }
        }
        Ok(replicated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_as_major_and_minor() {
        let info = "# Server\r\nredis_version:6.2.14\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(version_of(info), Some((6, 2)));
        assert!(version_of(info).is_some_and(|v| v < WAIT_SINCE));
        let seven = "redis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(version_of(seven), Some((7, 0)));
        assert!(version_of(seven).is_some_and(|v| v >= WAIT_SINCE));
        assert_eq!(version_of("redis_version:10.4.1\r\n"), Some((10, 4)));
        for unreadable in [
            "redis_version:\r\n",
            "redis_version:seven\r\n",
            "uptime:3\r\n",
        ] {
            assert_eq!(version_of(unreadable), None, "{unreadable:?}");
        }
    }

    #[test]
    fn info_fields_are_read_by_exact_name() {
        let info = "# Memory\r\nmaxmemory_human:0B\r\nmaxmemory:104857600\r\n\
                    maxmemory_policy:allkeys-lru\r\n";
        assert_eq!(info_field(info, "maxmemory"), Some("104857600"));
        assert_eq!(info_field(info, "maxmemory_policy"), Some("allkeys-lru"));
        assert_eq!(info_field(info, "evicted_keys"), None);
    }

    #[test]
    fn skew_is_this_hosts_clock_against_the_servers_at_the_midpoint() {
        let time = |s: &str, us: &str| vec![s.to_owned(), us.to_owned()];
        let ahead = skew(100.0, 100.2, &time("98", "600000")).expect("a time");
        assert!((ahead - 1.5).abs() < 1e-9, "{ahead}");
        let behind = skew(100.0, 100.0, &time("103", "0")).expect("a time");
        assert!((behind + 3.0).abs() < 1e-9, "{behind}");
        assert_eq!(skew(0.0, 0.0, &time("x", "0")), None);
        assert_eq!(skew(0.0, 0.0, &["1".to_owned()]), None);
    }

    #[test]
    fn only_a_bounded_memory_with_a_deleting_policy_evicts() {
        let node = |maxmemory, policy: &str| Eviction {
            node: "n".into(),
            maxmemory,
            policy: policy.into(),
            evicted: 0,
        };
        assert!(!node(0, "allkeys-lru").evicts());
        assert!(!node(1 << 30, "noeviction").evicts());
        for policy in [
            "allkeys-lru",
            "volatile-lru",
            "volatile-ttl",
            "allkeys-random",
        ] {
            assert!(node(1 << 30, policy).evicts(), "{policy}");
        }
    }

    #[test]
    fn a_cluster_names_its_least_durable_primary() {
        let d = |appendonly: &str, appendfsync: &str| RedisDurability {
            appendonly: appendonly.into(),
            appendfsync: appendfsync.into(),
            node: Some("primary 127.0.0.1:7001".into()),
        };
        assert!(d("no", "always").weakness() > d("yes", "everysec").weakness());
        assert!(d("yes", "everysec").weakness() > d("yes", "always").weakness());
        assert_eq!(
            d("no", "always").to_string(),
            "appendonly no, appendfsync always (primary 127.0.0.1:7001)"
        );
    }
}
