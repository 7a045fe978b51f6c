//! Connections to Redis: one multiplexed connection to a server
//! ([`ConnectionManager`], reconnecting with backoff) or to a cluster
//! ([`ClusterConnection`], one per node), and the collector that sends the calls
//! in flight as one pipeline per node (see the module docs of [`super`]).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisError, RedisFuture, RedisResult, Script, Value};

use super::url::{RedisConfig, RedisTarget};

/// The connection, one server or a cluster; both pipeline concurrent requests.
#[derive(Clone)]
pub(super) enum Conn {
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

/// Connects to `target`; an [`redis::ErrorKind::InvalidClientConfig`] error when
/// it is a cluster node addressed as a single server.
pub(super) async fn connect(target: RedisTarget, config: RedisConfig) -> RedisResult<Conn> {
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

/// Runs `fut` on `runtime` from a synchronous caller. From a plain thread the
/// caller polls it itself; from inside some async runtime (where `block_on` would
/// panic) it runs as a task and the caller waits on a channel.
pub(super) fn block<T: Send + 'static>(
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

/// `WAIT` after the writes (see [`super::RedisConfig::replicas`]): a write is
/// answered only once this many replicas hold it, within `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wait {
    pub(super) replicas: u32,
    pub(super) timeout: Duration,
}

impl Wait {
    fn cmd(self) -> Cmd {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(self.replicas).arg(self.timeout.as_millis() as u64);
        cmd
    }

    /// The error every write answered before `WAIT`'s `answer` gets, if it
    /// says fewer replicas than asked hold them.
    fn shortfall(self, answer: &RedisResult<Value>) -> Option<RedisError> {
        let held = match answer {
            Ok(Value::Int(n)) => *n,
            Ok(other) => {
                return Some(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "WAIT answered something other than a count",
                    format!("{other:?}"),
                )));
            }
            Err(e) => return Some(e.clone()),
        };
        (held < i64::from(self.replicas)).then(|| {
            RedisError::from((
                redis::ErrorKind::Io,
                "not replicated",
                format!(
                    "{held} of {} replica(s) acknowledged within {} ms: the write stands on \
                     the primary but is not acknowledged (a failover could lose it)",
                    self.replicas,
                    self.timeout.as_millis()
                ),
            ))
        })
    }
}

/// Runs `cmd` alone, then `WAIT` when `wait` says so, in one pipeline on one
/// connection (a `WAIT` on another connection, after a reconnect, would vouch
/// for nothing); a script the server lacks is loaded and `cmd` run again,
/// which cannot apply it twice (NOSCRIPT ran nothing).
pub(super) async fn query_alone(
    conn: &mut Conn,
    cmd: &Cmd,
    script: Option<&Script>,
    wait: Option<Wait>,
) -> RedisResult<Value> {
    let run = async |conn: &mut Conn| match wait {
        None => cmd.query_async::<Value>(conn).await,
        Some(wait) => {
            let mut pipe = redis::pipe();
            pipe.add_command(cmd.clone()).add_command(wait.cmd());
            let mut answers = conn.req_packed_commands(&pipe, 0, 2).await?.into_iter();
            let mut next = || answers.next().unwrap_or(Value::Nil).extract_error();
            let (answer, waited) = (next(), next());
            match (answer, wait.shortfall(&waited)) {
                (Ok(_), Some(e)) => Err(e),
                (answer, _) => answer,
            }
        }
    };
    let mut answer = run(conn).await;
    if let (Err(e), Some(script)) = (&answer, script)
        && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
    {
        answer = match script.load_async(conn).await {
            Ok(_) => run(conn).await,
            Err(e) => Err(e),
        };
    }
    answer
}

/// A primitive waiting in the collector for the next pipeline to its node.
pub(super) struct Call {
    /// The cluster slot of the call's keys; None on a single server.
    pub(super) slot: Option<u16>,
    pub(super) cmd: Cmd,
    /// The script `cmd` runs by hash (EVALSHA): loaded, and the call retried
    /// alone, when the server answers NOSCRIPT.
    pub(super) script: Option<&'static Script>,
    /// Whether it may write: only then is it followed by `WAIT`.
    pub(super) writes: bool,
    pub(super) reply: tokio::sync::oneshot::Sender<RedisResult<Value>>,
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
pub(super) async fn collect(
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Call>,
    conn: Conn,
    limit: Duration,
    wait: Option<Wait>,
) {
    let redirected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let Conn::Cluster(cluster) = &conn else {
        return node(queue, conn, redirected, limit, wait).await;
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
                tokio::spawn(node(rx, conn.clone(), redirected.clone(), limit, wait));
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
    wait: Option<Wait>,
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
            send_pipeline(conn, group, &redirected, limit, wait).await;
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
    wait: Option<Wait>,
) {
    let mut pipeline = redis::pipe();
    for call in &calls {
        pipeline.add_command(call.cmd.clone());
    }
    // After the calls, on the same connection: it vouches for all of them. A
    // group of reads waits for nothing.
    let wait = wait.filter(|_| calls.iter().any(|call| call.writes));
    let answers_expected = calls.len() + usize::from(wait.is_some());
    if let Some(wait) = wait {
        pipeline.add_command(wait.cmd());
    }
    let sent = async {
        match (&mut conn, calls.first().and_then(|c| c.slot)) {
            (Conn::Cluster(cluster), Some(slot)) => {
                use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                cluster
                    .route_pipeline(pipeline, 0, answers_expected, route)
                    .await
            }
            (conn, _) => {
                conn.req_packed_commands(&pipeline, 0, answers_expected)
                    .await
            }
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
        Ok(mut answers) if answers.len() == answers_expected => {
            // Fewer replicas than asked hold these writes: none is answered as
            // done (each stands on the primary: an over-count, never a sale).
            if let Some(wait) = wait
                && let Some(waited) = answers.pop()
                && let Some(e) = wait.shortfall(&waited.extract_error())
            {
                for call in calls {
                    let _ = call.reply.send(Err(e.clone()));
                }
                return;
            }
            answers
        }
        Ok(answers) => {
            let e = RedisError::from((
                redis::ErrorKind::Client,
                "a pipeline answered with the wrong number of replies",
                format!("{} for {answers_expected} commands", answers.len()),
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
            let wait = wait.filter(|_| call.writes);
            let answer = query_alone(&mut conn, &call.cmd, call.script, wait).await;
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
pub(super) fn slot_of(key: &[u8]) -> u16 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
