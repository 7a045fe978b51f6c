//! `--spawn`: a temporary store seeded with the mix's accounts, and a
//! `creditgate serve` on it, stopped (SIGTERM, so that it drains and prints its
//! own latency report) when the run ends. One command then measures everything.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::mix::Mix;

/// The plans `--spawn` seeds: `load` never runs out during a run, `small` does
/// within its first few messages, so that part of the traffic meets exhaustion.
pub const POLICY: &str = "\
[plans.load]
lead_credits = 1000
email_credits = 1000000000000

[plans.small]
lead_credits = 10
email_credits = 20
";

/// How long `serve` may take to listen: a cold start compiles the component.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A `creditgate serve` this process started, on a store in a temp dir.
#[derive(Debug)]
pub struct Spawned {
    child: Option<Child>,
    pub postfix: SocketAddr,
    pub http: Option<SocketAddr>,
    log: PathBuf,
    _dir: tempfile::TempDir,
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
    /// the HTTP API listens too.
    pub fn start(
        creditgate: &Path,
        mix: &Mix,
        workers: Option<usize>,
        http: bool,
    ) -> anyhow::Result<Spawned> {
        let dir = tempfile::tempdir().context("creating a temp dir")?;
        let policy = dir.path().join("policy.toml");
        let store = dir.path().join("load.redb");
        std::fs::write(&policy, POLICY).context("writing the policy")?;
        seed(creditgate, &store, &policy, mix)?;

        let postfix = free_port()?;
        let log = dir.path().join("serve.log");
        let mut command = Command::new(creditgate);
        command
            .arg("serve")
            .arg("--store")
            .arg(&store)
            .arg("--policy")
            .arg(&policy)
            .arg("--postfix-listen")
            .arg(postfix.to_string());
        if let Some(workers) = workers {
            command.arg("--workers").arg(workers.to_string());
        }
        // Always give the HTTP API its own free port when this serve has one, so
        // that a run never collides with another serve on the default 8080.
        let http = if serves_http(creditgate)? {
            let addr = free_port()?;
            command.arg("--http-listen").arg(addr.to_string());
            Some(addr)
        } else if http {
            bail!(
                "{} serve has no --http-listen: no HTTP API to load",
                creditgate.display()
            );
        } else {
            None
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("creating serve.log")?)
            .spawn()
            .with_context(|| format!("starting {} serve", creditgate.display()))?;
        let mut spawned = Spawned {
            child: Some(child),
            postfix,
            http,
            log,
            _dir: dir,
        };
        spawned.wait_listening(postfix)?;
        if let Some(http) = http {
            spawned.wait_listening(http)?;
        }
        Ok(spawned)
    }

    fn wait_listening(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(addr).is_err() {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "serve exited with {status} before listening:\n{}",
                    self.log()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "serve did not listen on {addr} within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, a bounded wait for the drain, and serve's own latency report (the
    /// end of its log).
    pub fn stop(mut self) -> anyhow::Result<String> {
        let Some(mut child) = self.child.take() else {
            return Ok(String::new());
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("running kill")?;
        ensure!(sent.success(), "kill -TERM {} failed", child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("serve did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self.log();
        ensure!(status.success(), "serve exited with {status}:\n{log}");
        let report = log
            .find("decision latency")
            .map_or(String::new(), |at| log[at..].to_owned());
        Ok(report)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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

/// A loopback port free a moment ago, for a server that must be told its port.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}
