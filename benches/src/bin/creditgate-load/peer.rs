//! `--peer postfwd`: the same workload, in the same run, on postfwd2 (Debian
//! package `postfwd`), a Postfix policy server whose rate counters live in
//! memory only: nothing it counts survives a restart, and nothing waits for a
//! disk. Its ruleset is one quota per `sasl_username`, counted in recipients at
//! `END-OF-MESSAGE` ([`RULES`]), as postfwd is set up for outbound quotas.
//!
//! A benchmark peer only: nothing in the tests or CI starts it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

/// A quota per SASL user, counted at `END-OF-MESSAGE` in recipients, high enough
/// never to be reached in a run (the accounts of `--spawn` are never exhausted in
/// the pure-charge mode either); everything else passes.
pub const RULES: &str = "\
id=QUOTA; protocol_state==END-OF-MESSAGE; action=rcpt(sasl_username/1000000000000/86400/DEFER_IF_PERMIT quota exceeded)
id=DEFAULT; action=DUNNO
";

/// How long postfwd2 may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A postfwd2 daemon started for the run, stopped when dropped.
#[derive(Debug)]
pub struct Postfwd {
    pub addr: SocketAddr,
    pid: Option<u32>,
    pid_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// The postfwd2 binary: `--postfwd`, else `postfwd2` on $PATH, else Debian's.
pub fn binary(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| {
        let debian = PathBuf::from("/usr/sbin/postfwd2");
        if debian.is_file() {
            debian
        } else {
            PathBuf::from("postfwd2")
        }
    })
}

impl Postfwd {
    /// Starts postfwd2 as a daemon on a free loopback port, with one child per
    /// connection (each serves one connection at a time), and waits until it
    /// answers `probe`.
    pub fn start(postfwd2: &Path, connections: usize, probe: &str) -> anyhow::Result<Postfwd> {
        let dir = tempfile::tempdir().context("creating a temp dir")?;
        // The daemon reads its rules after dropping privileges.
        set_mode(dir.path(), 0o755)?;
        let rules = dir.path().join("postfwd.cf");
        std::fs::write(&rules, RULES).context("writing postfwd's rules")?;
        set_mode(&rules, 0o644)?;
        let pid_file = dir.path().join("postfwd2.pid");
        let addr = crate::spawn::free_port()?;
        let cache = crate::spawn::free_port()?;
        let (user, group) = ids()?;
        let servers = connections.max(1);
        let status = Command::new(postfwd2)
            .arg("--daemon")
            .arg("--file")
            .arg(&rules)
            .arg(format!("--server_socket=tcp:{addr}"))
            .arg(format!("--cache_socket=tcp:{cache}"))
            .arg("--pidfile")
            .arg(&pid_file)
            // postfwd2's default group, `nobody`, does not exist on Debian.
            .args(["--user", &user, "--group", &group])
            .arg(format!("--min_servers={servers}"))
            .arg(format!("--max_servers={}", servers + 4))
            .arg("--min_spare_servers=1")
            .arg(format!("--max_spare_servers={}", servers + 2))
            // No DNS, no logging: its fastest configuration.
            .args(["--nodns", "--perfmon", "--noidlestats"])
            .status()
            .with_context(|| {
                format!(
                    "running {} (Debian: apt-get install postfwd)",
                    postfwd2.display()
                )
            })?;
        ensure!(
            status.success(),
            "{} exited with {status}",
            postfwd2.display()
        );
        let mut peer = Postfwd {
            addr,
            pid: None,
            pid_file,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if peer.pid.is_none() {
                peer.pid = std::fs::read_to_string(&peer.pid_file)
                    .ok()
                    .and_then(|p| p.trim().parse().ok());
            }
            if let Some(action) = crate::spawn::ask(addr, probe.as_bytes())? {
                ensure!(
                    action == "DUNNO",
                    "postfwd2 answered its first request with {action:?}"
                );
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "postfwd2 did not answer on {addr} within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if peer.pid.is_none() {
            bail!("postfwd2 wrote no pid file at {}", peer.pid_file.display());
        }
        Ok(peer)
    }

    /// CPU time the daemon's processes (its master, cache and policy children)
    /// have used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        let master = self.pid?;
        let mut total = Duration::ZERO;
        for pid in descendants(master) {
            total += crate::spawn::cpu_time(pid).unwrap_or_default();
        }
        Some(total)
    }

    /// SIGTERM to the daemon, and a bounded wait for it to go.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        let Some(pid) = self.pid.take() else {
            return Ok(());
        };
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("running kill")?;
        ensure!(sent.success(), "kill -TERM {pid} (postfwd2) failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr).is_ok() {
            ensure!(
                Instant::now() < deadline,
                "postfwd2 still listens 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Postfwd {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// `pid` and every process below it, from `/proc`.
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut found = vec![pid];
    let mut at = 0;
    while at < found.len() {
        let parent = found[at];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        at += 1;
    }
    found
}

/// The user and group the daemon runs as, by name (postfwd2 runs in Perl's taint
/// mode, which refuses ids given as numbers): `nobody` and `nogroup` for root,
/// else whoever runs the benchmark.
fn ids() -> anyhow::Result<(String, String)> {
    let id = |flag: &str| -> anyhow::Result<String> {
        let out = Command::new("id")
            .arg(flag)
            .output()
            .with_context(|| format!("running id {flag}"))?;
        ensure!(out.status.success(), "id {flag} failed");
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    if id("-u")? == "0" {
        return Ok(("nobody".to_owned(), "nogroup".to_owned()));
    }
    Ok((id("-un")?, id("-gn")?))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_include_the_process_itself() {
        let me = std::process::id();
        assert!(descendants(me).contains(&me));
    }
}
