//! `--spawn`: a temporary store seeded with the mix's accounts, and a
//! `creditgate serve` on it, stopped (SIGTERM, so that it drains and prints its
//! own latency report) when the run ends. One command then measures everything.
//!
//! It also times serve's start-up: from spawning the process to the answer to a
//! real policy request (an `RCPT` check), polled every [`POLL`], so the figure
//! includes opening the store, loading the component and the policy, starting the
//! workers and binding the listeners. Whether the component came precompiled
//! ([`Cache`]) is read off the cache directory, compared before and after.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail, ensure};
use creditgate_testkit::serve::ServeProcess;

use crate::mix::Mix;

/// The plans `--spawn` seeds: `load` never runs out during a run, `small` does
/// within its first few messages, so that part of the traffic meets exhaustion.
pub const POLICY: &str = include_str!("../../../load-policy.toml");

/// How long `serve` may take to answer: a cold start compiles the component.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How often start-up is polled: the resolution of the start-up figure.
const POLL: Duration = Duration::from_millis(2);

/// A `creditgate serve` this process started, on a store in a temp dir, on ports
/// it bound itself (`127.0.0.1:0`, read back from its log).
#[derive(Debug)]
pub struct Spawned {
    serve: Option<ServeProcess>,
    pub postfix: SocketAddr,
    pub http: Option<SocketAddr>,
    pub startup: Startup,
    _dir: tempfile::TempDir,
}

/// Serve's `creditgate_commits_total` and `creditgate_committed_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitCounters {
    /// Durable group commits (each one disk sync or more).
    pub commits: u64,
    /// Decisions those commits made durable.
    pub decisions: u64,
}

/// How serve started.
#[derive(Debug, Clone, Copy)]
pub struct Startup {
    /// From spawning `creditgate serve` to its first answered policy request.
    pub elapsed: Duration,
    pub cache: Cache,
}

/// Where serve's component came from, as its cache directory
/// (`$CREDITGATE_CACHE_DIR`, else `~/.cache/creditgate`) shows: a precompiled
/// file loads in about a millisecond, a compilation takes hundreds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// The cache held precompiled components before this run and serve wrote
    /// none: it loaded one.
    Warm,
    /// As warm, but the seeding `replay` (same binary, same cache) compiled the
    /// component moments before: the first start of this build.
    FilledBySeed,
    /// Serve compiled the component and wrote it to the cache (`--cold-start`).
    Compiled,
    /// No precompiled component and none written (no cache directory, or one it
    /// cannot write): serve compiled, as every start will.
    Uncached,
}

impl Cache {
    /// Classifies from the cache's `*.cwasm` files before seeding, before serve,
    /// and after serve answered.
    fn classify(before_seed: &Listing, before_serve: &Listing, after: &Listing) -> Cache {
        if after != before_serve {
            Cache::Compiled
        } else if before_serve.is_empty() {
            Cache::Uncached
        } else if before_serve != before_seed {
            Cache::FilledBySeed
        } else {
            Cache::Warm
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cache::Warm => "warm",
            Cache::FilledBySeed => "filled_by_seed",
            Cache::Compiled => "compiled",
            Cache::Uncached => "uncached",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Cache::Warm => "component cache warm",
            Cache::FilledBySeed => "component cache warm, filled by the seeding replay just before",
            Cache::Compiled => "component compiled (cold cache)",
            Cache::Uncached => "component compiled (no usable cache)",
        }
    }
}

/// The precompiled components in a cache directory: name → (modified, length).
type Listing = BTreeMap<OsString, (SystemTime, u64)>;

fn listing(dir: Option<&Path>) -> Listing {
    let Some(entries) = dir.and_then(|d| std::fs::read_dir(d).ok()) else {
        return Listing::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.file_name(), (meta.modified().ok()?, meta.len())))
        })
        .collect()
}

/// The `creditgate` binary: `--creditgate`, else the one next to this binary
/// (both land in `target/<profile>/`), else `creditgate` on `$PATH`.
pub fn creditgate_binary(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        let sibling = std::env::current_exe().ok()?.with_file_name("creditgate");
        sibling.is_file().then_some(sibling)
    })
    .unwrap_or_else(|| PathBuf::from("creditgate"))
}

impl Spawned {
    /// Seeds a store with `mix`'s accounts and starts `serve` on it; with `http`,
    /// the HTTP API listens too. With `cold_start`, serve gets an empty cache
    /// directory of its own, so that it compiles the component as on its first
    /// start ever.
    pub fn start(
        creditgate: &Path,
        mix: &Mix,
        workers: Option<usize>,
        io_threads: Option<usize>,
        http: bool,
        cold_start: bool,
    ) -> anyhow::Result<Spawned> {
        let dir = tempfile::tempdir().context("creating a temp dir")?;
        let policy = dir.path().join("policy.toml");
        let store = dir.path().join("load.redb");
        std::fs::write(&policy, POLICY).context("writing the policy")?;
        let cache_dir = if cold_start {
            Some(dir.path().join("cache"))
        } else {
            creditgate::runtime::default_cache_dir()
        };
        let before_seed = listing(cache_dir.as_deref());
        seed(creditgate, &store, &policy, mix)?;
        let before_serve = listing(cache_dir.as_deref());

        // The HTTP API is always on when this serve has one (on a port of its own,
        // so that a run never collides with another serve on the default 8080).
        let serves_http = serves_http(creditgate)?;
        ensure!(
            serves_http || !http,
            "{} serve has no --http-listen: no HTTP API to load",
            creditgate.display()
        );
        let mut builder = ServeProcess::builder(creditgate, dir.path().join("serve.log"))
            .arg("--store")
            .arg(&store)
            .arg("--policy")
            .arg(&policy)
            .http(serves_http)
            .wait(START_TIMEOUT);
        if let Some(workers) = workers {
            builder = builder.arg("--workers").arg(workers.to_string());
        }
        if let Some(threads) = io_threads {
            builder = builder.arg("--io-threads").arg(threads.to_string());
        }
        if let Some(cache_dir) = cache_dir.as_ref().filter(|_| cold_start) {
            builder = builder.env("CREDITGATE_CACHE_DIR", cache_dir);
        }
        let spawned_at = Instant::now();
        let mut serve = builder.spawn().map_err(anyhow::Error::msg)?;
        serve
            .wait_listening(START_TIMEOUT)
            .map_err(anyhow::Error::msg)?;
        let postfix = serve.postfix_addr();
        let probe = crate::postfix::rcpt_request(&mix.account(0));
        let deadline = Instant::now() + START_TIMEOUT;
        while ask(postfix, probe.as_bytes())?.is_none() {
            if let Some(status) = serve.try_wait() {
                bail!(
                    "serve exited with {status} before it answered a policy request:\n{}",
                    serve.log_text()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "serve did not answer a policy request on {postfix} within {START_TIMEOUT:?}:\n{}",
                serve.log_text()
            );
            std::thread::sleep(POLL);
        }
        let startup = Startup {
            elapsed: spawned_at.elapsed(),
            cache: Cache::classify(&before_seed, &before_serve, &listing(cache_dir.as_deref())),
        };
        Ok(Spawned {
            postfix,
            http: serves_http.then(|| serve.http_addr()),
            serve: Some(serve),
            startup,
            _dir: dir,
        })
    }

    /// The directory of the spawned serve's store.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Serve's durable commits so far, from its `/metrics`; None without the
    /// HTTP API or when the counters are missing.
    pub fn commits(&self) -> Option<CommitCounters> {
        let text = get(self.http?, "/metrics").ok()?;
        let counter = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|v| v as u64)
        };
        Some(CommitCounters {
            commits: counter("creditgate_commits_total")?,
            decisions: counter("creditgate_committed_decisions_total")?,
        })
    }

    /// CPU time `serve` has used so far, all its threads, user and system.
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time(self.serve.as_ref()?.pid())
    }

    /// SIGTERM, a bounded wait for the drain, and serve's own latency report (the
    /// end of its log).
    pub fn stop(mut self) -> anyhow::Result<String> {
        let Some(serve) = self.serve.take() else {
            return Ok(String::new());
        };
        let (status, log) = serve.terminate();
        ensure!(
            status.is_some_and(|s| s.success()),
            "serve did not stop cleanly after SIGTERM ({status:?}):\n{log}"
        );
        let report = log
            .find("decision latency")
            .map_or(String::new(), |at| log[at..].to_owned());
        Ok(report)
    }
}

/// Subscribes every account of the mix in one `creditgate replay` on the store:
/// the same subscription `creditgate account subscribe` makes, but one process
/// and one store opening for thousands of accounts instead of one each.
fn seed(creditgate: &Path, store: &Path, policy: &Path, mix: &Mix) -> anyhow::Result<()> {
    let at = creditgate::time::format_instant(creditgate::time::now());
    let mut events = String::new();
    for (account, plan) in mix.plans() {
        let line =
            serde_json::json!({"at": at, "op": "subscribe", "account": account, "plan": plan});
        events.push_str(&line.to_string());
        events.push('\n');
    }
    let mut child = Command::new(creditgate)
        .arg("replay")
        .arg("--store")
        .arg(store)
        .arg("--policy")
        .arg(policy)
        .arg("--events")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} replay", creditgate.display()))?;
    // Written from a thread: replay answers as it reads, and a full stdout pipe
    // would otherwise stall both sides.
    let mut stdin = child.stdin.take().context("replay's stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(events.as_bytes()));
    let output = child.wait_with_output().context("waiting for replay")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the seeding thread panicked"))?
        .context("writing the subscriptions to replay")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let allowed = stdout
        .lines()
        .filter(|l| l.starts_with(r#"{"decision":"allow""#))
        .count();
    ensure!(
        output.status.success() && allowed == mix.accounts,
        "seeding {} accounts: {allowed} subscribed ({}):\n{}",
        mix.accounts,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Whether this `creditgate serve` has the HTTP API (`--http-listen`).
fn serves_http(creditgate: &Path) -> anyhow::Result<bool> {
    let help = Command::new(creditgate)
        .args(["serve", "--help"])
        .output()
        .with_context(|| format!("running {} serve --help", creditgate.display()))?;
    ensure!(
        help.status.success(),
        "{} serve --help failed: {}",
        creditgate.display(),
        String::from_utf8_lossy(&help.stderr)
    );
    Ok(String::from_utf8_lossy(&help.stdout).contains("--http-listen"))
}

/// Sends one policy request to `addr` and returns the reply's action; `None`
/// while nothing listens there yet.
pub fn ask(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Option<String>> {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return Ok(None);
    };
    // Listening means the gateway is up: the answer itself takes microseconds.
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    stream
        .write_all(request)
        .context("sending serve its first request")?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 512];
    while !reply.ends_with(b"\n\n") {
        let n = stream
            .read(&mut chunk)
            .context("waiting for serve's first answer")?;
        ensure!(n > 0, "serve closed the connection before its first answer");
        reply.extend_from_slice(&chunk[..n]);
    }
    let reply = String::from_utf8_lossy(&reply);
    let action = reply
        .strip_prefix("action=")
        .and_then(|r| r.strip_suffix("\n\n"))
        .with_context(|| format!("serve's first answer is not a policy reply: {reply:?}"))?;
    Ok(Some(action.to_owned()))
}

/// The body of `GET path` on `addr`, in one short-lived HTTP/1.1 connection.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .with_context(|| format!("reading GET {path}"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: not an HTTP answer"))?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path}: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_owned())
}

/// A loopback port free a moment ago, for a server that must be told its port.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// CPU time process `pid` has used so far (`utime + stime` of
/// `/proc/<pid>/stat`, in the kernel's fixed 100 ticks a second); None off Linux.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count fields after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are the 12th and 13th after the name.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_classified_by_what_changed_in_it() {
        let file = |name: &str, secs: u64| {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            (OsString::from(name), (at, 100))
        };
        let none = Listing::new();
        let old = Listing::from([file("a.cwasm", 1)]);
        let seeded = Listing::from([file("a.cwasm", 1), file("b.cwasm", 2)]);
        let rewritten = Listing::from([file("a.cwasm", 3)]);
        assert_eq!(Cache::classify(&old, &old, &old), Cache::Warm);
        assert_eq!(Cache::classify(&old, &seeded, &seeded), Cache::FilledBySeed);
        assert_eq!(Cache::classify(&none, &none, &old), Cache::Compiled);
        assert_eq!(Cache::classify(&old, &old, &rewritten), Cache::Compiled);
        assert_eq!(Cache::classify(&none, &none, &none), Cache::Uncached);
    }
}
