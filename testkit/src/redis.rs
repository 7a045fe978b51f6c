//! `redis-server` and a three-node Redis Cluster of a test's own, on loopback
//! ports with a temporary directory each, killed when dropped. Never a system
//! Redis.
//!
//! redis-server binds its port itself and cannot be handed a bound socket: its
//! port is probed, and when another process took it in between, the server fails
//! to start and is started again on another.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Every wait here is bounded by this: a hang is a failure, not a stall.
const WAIT: Duration = Duration::from_secs(15);

/// A `redis-server` of this test's own, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    program: PathBuf,
    dir: TempDir,
    args: Vec<String>,
}

/// A port nobody listens on right now (another process may take it before we
/// do: starting a server retries on another port).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Sends one inline command and returns the first reply line, or None if no
/// server answers.
pub fn ask(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        // A simple reply ends at its first CRLF; a bulk one ($N) after its body.
        let text = String::from_utf8_lossy(&reply);
        match text.strip_prefix('$') {
            Some(rest) => {
                if let Some((len, body)) = rest.split_once("\r\n")
                    && let Ok(len) = len.parse::<usize>()
                    && body.len() >= len + 2
                {
                    return Some(body[..len].to_owned());
                }
            }
            None => {
                if let Some((line, _)) = text.split_once("\r\n") {
                    return Some(line.to_owned());
                }
            }
        }
    }
    None
}

fn spawn_server(program: &Path, port: u16, dir: &Path, args: &[String]) -> Child {
    Command::new(program)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", "redis.log"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): these tests need redis-server installed \
                 (Debian: apt-get install redis-server; .ci/run installs it)",
                program.display()
            )
        })
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::start_with(&["--appendonly", "no"])
    }

    /// A server with extra `redis-server` arguments.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_program(Path::new("redis-server"), args)
    }

    /// [`RedisServer::start_with`], running `program` (a path to
    /// `redis-server`).
    pub fn start_program(program: &Path, args: &[&str]) -> Self {
        let mut server = RedisServer {
            child: None,
            port: 0,
            program: program.to_owned(),
            dir: tempfile::tempdir().expect("temp dir"),
            args: args.iter().map(|&a| a.to_owned()).collect(),
        };
        for attempt in 0.. {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
            // Most likely the port was taken in between: try another.
            server.kill();
            assert!(attempt < 5, "redis-server never started: {}", server.log());
        }
        unreachable!("the loop returns or panics")
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Starts the server on its port and directory; waits as [`Self::wait_ready`].
    fn spawn(&mut self) -> bool {
        self.child = Some(spawn_server(
            &self.program,
            self.port,
            self.dir.path(),
            &self.args,
        ));
        self.wait_ready()
    }

    /// Waits until the server answers PING; false if it exited or never answered.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                return false;
            }
            if ask(self.port, "PING").as_deref() == Some("+PONG") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends `signal` (STOP, CONT, ...) to the server.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// Kills the server at once (SIGKILL: a crash, no shutdown save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (so with the same
    /// append-only file), after a `kill`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        let deadline = Instant::now() + WAIT;
        loop {
            if self.spawn() {
                return;
            }
            self.kill();
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs one command through redis-cli; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// [`RedisServer::cli`] with the command as one line of words (no quoting:
    /// for keys and values without spaces).
    pub fn cli_line(&self, line: &str) -> String {
        self.cli(&line.split_whitespace().collect::<Vec<_>>())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three masters on loopback ports, no replicas, made a cluster by
/// `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
}

impl Cluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                // The bus port defaults to port + 10000, which a high free port
                // would push past 65535.
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-port",
                    &bus,
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let deadline = Instant::now() + WAIT;
        for node in &nodes {
            while !ask(node.port, "CLUSTER INFO").is_some_and(|i| i.contains("cluster_state:ok")) {
                assert!(Instant::now() < deadline, "the cluster never became ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Cluster { nodes }
    }

    /// `redis+cluster://HOST:PORT,...` with every node, under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        let hosts: Vec<String> = (self.nodes.iter())
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}?prefix={prefix}", hosts.join(","))
    }
}
