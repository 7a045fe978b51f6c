//! The Postfix policy server, spoken to over TCP in the raw protocol: replies in
//! order, charges once per message, refusals as configured, and one bad or slow
//! peer never costs another its answers.

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;

use creditgate::gateway::Gateway;
use creditgate::postfix::PostfixConfig;
use creditgate::request::Request;
use creditgate::serve::{ServeOptions, serve_postfix};
use creditgate::store::MemoryStore;
use creditgate::time::now;

const POLICY: &str = "[plans.small]\nlead_credits = 20\nemail_credits = 5\n";

/// Every wait in these tests is bounded by this: a hang is a failure, not a stall.
const WAIT: Duration = Duration::from_secs(10);

fn component() -> Arc<creditgate::runtime::Runtime> {
    crate::harness::shared_runtime()
}

/// Runs `test` on a small multi-thread runtime.
fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(test());
}

/// A server on a free port over a fresh store, with account `acme` on `small`.
struct Server {
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(config: PostfixConfig, options: ServeOptions) -> Server {
        let (gateway, _) =
            Gateway::start(component(), Arc::new(MemoryStore::new()), POLICY, 2).expect("starts");
        let gateway = Arc::new(gateway);
        let subscribe = Request::Subscribe {
            account: "acme".into(),
            plan: "small".into(),
        };
        let d = gateway.decide(subscribe, now()).await.expect("subscribes");
        assert_eq!(d.denied, None);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_postfix(
            listener,
            gateway.clone(),
            Arc::new(config),
            options,
            stopped,
        ));
        Server {
            addr,
            gateway,
            stop: Some(stop),
            task,
        }
    }

    async fn default() -> Server {
        Server::start(PostfixConfig::default(), ServeOptions::default()).await
    }

    async fn connect(&self) -> TcpStream {
        timeout(WAIT, TcpStream::connect(self.addr))
            .await
            .expect("connects in time")
            .expect("connects")
    }

    async fn emails_used(&self) -> u64 {
        let usage = Request::Usage {
            account: "acme".into(),
        };
        let d = self.gateway.decide(usage, now()).await.expect("usage");
        d.usage.expect("acme exists").email_credits.used
    }

    /// Stops the server and waits for it to return.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        timeout(WAIT, &mut self.task)
            .await
            .expect("stops in time")
            .expect("server task");
    }
}

/// A request as Postfix sends it: every attribute, `name=value` lines, an empty line.
fn request(state: &str, user: &str, extra: &[(&str, &str)]) -> String {
    let mut text = format!(
        "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
         client_address=127.0.0.1\nsasl_username={user}\nsender=al@example.com\n\
         recipient=bo@example.org\n"
    );
    for (name, value) in extra {
        text.push_str(&format!("{name}={value}\n"));
    }
    text.push('\n');
    text
}

fn end_of_message(user: &str, recipients: &str, instance: &str) -> String {
    request(
        "END-OF-MESSAGE",
        user,
        &[("recipient_count", recipients), ("instance", instance)],
    )
}

/// Reads until `replies` complete replies arrived; returns them.
async fn read_replies(stream: &mut TcpStream, replies: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.iter().filter(|&&b| b == b'\n').count() < 2 * replies {
        let n = timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("reply in time")
            .expect("reads");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(got).expect("UTF-8 reply");
    text.split_terminator("\n\n")
        .map(|r| r.strip_prefix("action=").expect("action=").to_owned())
        .collect()
}

/// Sends one request and returns its action.
async fn ask(stream: &mut TcpStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.expect("writes");
    let mut replies = read_replies(stream, 1).await;
    assert_eq!(replies.len(), 1);
    replies.remove(0)
}

/// True when the server closes `stream` (EOF or reset) within `WAIT`.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        timeout(WAIT, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[test]
fn several_requests_on_one_connection_are_answered_in_order() {
    run(|| async {
        let server = Server::default().await;
        let mut c = server.connect().await;
        assert_eq!(ask(&mut c, &request("CONNECT", "", &[])).await, "DUNNO");
        assert_eq!(ask(&mut c, &request("RCPT", "acme", &[])).await, "DUNNO");
        // Pipelined in one write: three replies, in order.
        let three = [
            request("HELO", "", &[]),
            request("RCPT", "acme", &[]),
            request("DATA", "acme", &[]),
        ]
        .concat();
        c.write_all(three.as_bytes()).await.expect("writes");
        assert_eq!(read_replies(&mut c, 3).await, ["DUNNO"; 3]);
        assert_eq!(server.emails_used().await, 0, "RCPT only checks");
        server.stop().await;
    });
}

#[test]
fn a_full_listener_closes_a_stalled_connection_to_serve_a_new_one() {
    run(|| async {
        let options = ServeOptions {
            max_connections: 2,
            ..ServeOptions::default()
        };
        let server = Server::start(PostfixConfig::default(), options).await;
        // One slot held by half a request, the other by a connection answered
        // and now idle, as Postfix keeps its own.
        let mut stalled = server.connect().await;
        let full = request("RCPT", "acme", &[]);
        stalled
            .write_all(&full.as_bytes()[..20])
            .await
            .expect("writes");
        let mut pooled = server.connect().await;
        assert_eq!(ask(&mut pooled, &full).await, "DUNNO");
        // A connection counts as stalled after a second without a whole request.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        // A new connection is served at once: the stalled one makes room.
        let mut newcomer = server.connect().await;
        assert_eq!(ask(&mut newcomer, &full).await, "DUNNO");
        assert!(closed(&mut stalled).await);
        assert_eq!(ask(&mut pooled, &full).await, "DUNNO");
        server.stop().await;
    });
}

#[test]
fn end_of_message_charges_recipient_count_once_per_instance() {
    run(|| async {
        let server = Server::default().await;
        let mut c = server.connect().await;
        assert_eq!(ask(&mut c, &request("RCPT", "acme", &[])).await, "DUNNO");
        let eom = end_of_message("acme", "3", "1a2b.3c4d.0");
        assert_eq!(ask(&mut c, &eom).await, "DUNNO");
        assert_eq!(server.emails_used().await, 3);
        // Postfix retries a request (try_limit 2), on this connection or another.
        assert_eq!(ask(&mut c, &eom).await, "DUNNO");
        let mut other = server.connect().await;
        assert_eq!(ask(&mut other, &eom).await, "DUNNO");
        assert_eq!(server.emails_used().await, 3);
        let next = end_of_message("acme", "1", "1a2b.3c4d.1");
        assert_eq!(ask(&mut other, &next).await, "DUNNO");
        assert_eq!(server.emails_used().await, 4);
        server.stop().await;
    });
}

#[test]
fn an_exhausted_account_is_deferred_until_its_credits_reset() {
    run(|| async {
        let server = Server::default().await;
        let mut c = server.connect().await;
        let eom = end_of_message("acme", "5", "full.0");
        assert_eq!(ask(&mut c, &eom).await, "DUNNO");
        let rcpt = ask(&mut c, &request("RCPT", "acme", &[])).await;
        assert!(
            rcpt.starts_with("DEFER 4.7.1 Email credits exhausted; they reset at 20"),
            "{rcpt}"
        );
        assert!(rcpt.ends_with('Z'), "{rcpt}");
        // A charge past the limit is refused whole and takes nothing.
        let over = ask(&mut c, &end_of_message("acme", "1", "full.1")).await;
        assert!(over.starts_with("DEFER 4.7.1 "), "{over}");
        assert_eq!(server.emails_used().await, 5);
        server.stop().await;
    });
}

#[test]
fn unknown_accounts_get_the_configured_reply() {
    run(|| async {
        let fail_closed: PostfixConfig =
            toml::from_str("[actions]\nunknown_account = \"fail_closed\"").expect("config");
        let server = Server::start(fail_closed, ServeOptions::default()).await;
        let mut c = server.connect().await;
        // Unknown to the policy, and no account at all (no SMTP AUTH).
        for user in ["ghost", ""] {
            let reply = ask(&mut c, &request("RCPT", user, &[])).await;
            assert_eq!(
                reply, "451 4.3.5 Sending account unknown to the credit policy",
                "{user:?}"
            );
        }
        assert_eq!(ask(&mut c, &request("RCPT", "acme", &[])).await, "DUNNO");
        server.stop().await;

        // The default lets mail that is no customer's flow.
        let server = Server::default().await;
        let mut c = server.connect().await;
        assert_eq!(ask(&mut c, &request("RCPT", "ghost", &[])).await, "DUNNO");
        server.stop().await;
    });
}

#[test]
fn a_malformed_request_closes_only_its_connection() {
    run(|| async {
        let server = Server::default().await;
        let mut good = server.connect().await;
        let mut bad = server.connect().await;
        assert_eq!(ask(&mut good, &request("RCPT", "acme", &[])).await, "DUNNO");
        bad.write_all(b"request=smtpd_access_policy\nno equals sign here\n\n")
            .await
            .expect("writes");
        assert!(closed(&mut bad).await);
        assert_eq!(ask(&mut good, &request("RCPT", "acme", &[])).await, "DUNNO");
        let mut again = server.connect().await;
        assert_eq!(
            ask(&mut again, &request("RCPT", "acme", &[])).await,
            "DUNNO"
        );
        server.stop().await;
    });
}

#[test]
fn an_oversized_line_closes_the_connection() {
    run(|| async {
        let config: PostfixConfig =
            toml::from_str("[limits]\nmax_line_bytes = 256").expect("config");
        let server = Server::start(config, ServeOptions::default()).await;
        let mut c = server.connect().await;
        assert_eq!(ask(&mut c, &request("RCPT", "acme", &[])).await, "DUNNO");
        let long = format!("ccert_subject={}\n", "x".repeat(4096));
        // The server may close while this is still being written.
        let _ = c.write_all(long.as_bytes()).await;
        assert!(closed(&mut c).await);
        server.stop().await;
    });
}

#[test]
fn an_idle_connection_is_closed_after_the_timeout() {
    run(|| async {
        let options = ServeOptions {
            idle_timeout: Duration::from_millis(200),
            ..ServeOptions::default()
        };
        let server = Server::start(PostfixConfig::default(), options).await;
        let mut c = server.connect().await;
        assert_eq!(ask(&mut c, &request("RCPT", "acme", &[])).await, "DUNNO");
        let start = Instant::now();
        assert!(closed(&mut c).await);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        server.stop().await;
    });
}

#[test]
fn a_slow_client_does_not_block_another() {
    run(|| async {
        let server = Server::default().await;
        let mut slow = server.connect().await;
        let full = request("RCPT", "acme", &[]);
        let (first, rest) = full.split_at(full.len() / 2);
        slow.write_all(first.as_bytes()).await.expect("writes");
        let mut quick = server.connect().await;
        for _ in 0..3 {
            assert_eq!(ask(&mut quick, &full).await, "DUNNO");
        }
        assert_eq!(ask(&mut slow, rest).await, "DUNNO");
        server.stop().await;
    });
}

#[test]
fn shutdown_stops_accepting_and_closes_idle_connections() {
    run(|| async {
        let server = Server::default().await;
        let addr = server.addr;
        let mut c = server.connect().await;
        assert_eq!(ask(&mut c, &request("RCPT", "acme", &[])).await, "DUNNO");
        server.stop().await;
        assert!(closed(&mut c).await);
        let refused = timeout(WAIT, TcpStream::connect(addr)).await;
        assert!(matches!(refused, Ok(Err(_))), "{refused:?}");
    });
}

/// A port free a moment ago: the binary must be told its port in advance.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    listener.local_addr().expect("address").port()
}

/// `creditgate serve ARGS` on a free port, once it listens.
fn spawn_serve(args: &[&str]) -> (std::process::Child, u16) {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_creditgate"))
        .arg("serve")
        .args(args)
        .args(["--postfix-listen", &format!("127.0.0.1:{port}")])
        .args(["--http-listen", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().expect("waits") {
            panic!("serve exited before listening: {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve never listened");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

/// One request on a fresh blocking connection; its reply's action.
fn ask_blocking(port: u16, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("writes");
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    while !reply.ends_with(b"\n\n") {
        let n = stream.read(&mut buf).expect("reply in time");
        assert!(n > 0, "closed without a reply");
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&reply).trim_end().to_string()
}

fn signal(child: &std::process::Child, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
}

/// Sends SIGTERM and waits (bounded) for the exit; returns the status and stderr.
fn stop(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    signal(&child, "TERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("reads stderr");
    (status, stderr)
}

#[test]
fn the_binary_answers_then_exits_cleanly_on_sigterm() {
    let (child, port) = spawn_serve(&["--store", "memory", "--workers", "2"]);
    assert_eq!(
        ask_blocking(port, &request("RCPT", "nobody", &[])),
        "action=DUNNO"
    );
    let (status, stderr) = stop(child);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("listening on 127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("decision latency"), "{stderr}");
}

#[test]
fn sighup_reloads_the_policy_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.toml");
    let store = dir.path().join("gateway.redb");
    let (policy_arg, store_arg) = (
        policy.to_str().expect("utf-8"),
        store.to_str().expect("utf-8"),
    );
    std::fs::write(
        &policy,
        "[plans.small]\nlead_credits = 1\nemail_credits = 1\n",
    )
    .expect("writes");
    let subscribed = Command::new(env!("CARGO_BIN_EXE_creditgate"))
        .args([
            "account",
            "subscribe",
            "acme",
            "--plan",
            "small",
            "--store",
            store_arg,
            "--policy",
            policy_arg,
        ])
        .output()
        .expect("runs");
    assert!(
        subscribed.status.success(),
        "{}",
        String::from_utf8_lossy(&subscribed.stderr)
    );

    let (child, port) = spawn_serve(&["--store", store_arg, "--policy", policy_arg]);
    assert_eq!(
        ask_blocking(port, &end_of_message("acme", "1", "A1")),
        "action=DUNNO"
    );
    let exhausted = ask_blocking(port, &request("RCPT", "acme", &[]));
    assert!(exhausted.starts_with("action=DEFER 4.7.1"), "{exhausted}");

    // A broken policy is refused: the old one keeps answering.
    std::fs::write(
        &policy,
        "[plans.small]\nlead_credits = 1\nemail_credits = -3\n",
    )
    .expect("writes");
    signal(&child, "HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(ask_blocking(port, &request("RCPT", "acme", &[])).starts_with("action=DEFER"));

    // A valid one takes effect between requests.
    std::fs::write(
        &policy,
        "[plans.small]\nlead_credits = 1\nemail_credits = 5\n",
    )
    .expect("writes");
    signal(&child, "HUP");
    let deadline = Instant::now() + WAIT;
    while ask_blocking(port, &request("RCPT", "acme", &[])) != "action=DUNNO" {
        assert!(
            Instant::now() < deadline,
            "the new policy never took effect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        ask_blocking(port, &end_of_message("acme", "2", "A2")),
        "action=DUNNO"
    );

    let (status, stderr) = stop(child);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("email_credits: expected a non-negative integer"),
        "the refusal is logged: {stderr}"
    );
}

#[test]
fn the_binary_refuses_a_config_with_an_unknown_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, "store = \"memory\"\nlisten = \"127.0.0.1:1\"\n").expect("writes");
    let output = Command::new(env!("CARGO_BIN_EXE_creditgate"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown field `listen`"), "{stderr}");
}
