//! `serve` against hostile clients (issue 14): floods of slow clients on both
//! listeners, requests that trickle in, admin auth that must not switch itself
//! off, and cross-site requests and DNS rebinding against the HTTP API.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use creditgate::http;
use creditgate::request::Request;
use creditgate::serve::{Listen, Overrides};
use creditgate::store::MemoryStore;
use creditgate::time::now;
use creditgate_testkit::serve::ServeProcess;

use crate::harness::{self, InProcess};

const POLICY: &str = "[plans.small]\nlead_credits = 20\nemail_credits = 50\n";

/// Every wait in these tests is bounded by this: a hang is a failure, not a stall.
const WAIT: Duration = Duration::from_secs(10);

/// How long a normal request may take while slow clients flood the listener
/// before it counts as starved. Answers take about a millisecond on a quiet
/// machine, and before the fix they never came (not within [`WAIT`]). Issue 14's
/// 100 ms is a figure for a benchmark to report: on two cores shared with a
/// parallel build, a scheduler stall alone can pass it, so the test holds the
/// server to twenty times that, which still tells "answered" from "starved".
const ANSWERED_WITHIN: Duration = Duration::from_secs(2);

/// Slow clients per flood.
const FLOOD: usize = 2_000;

/// The server's threads: two, as small as a gateway host gets, and one for what
/// ran on a thread of its own when these tests built their own server (its
/// accept loop), so that a flood meets the server it met then.
const SERVER_THREADS: usize = 3;

/// `serve`'s server in this process ([`InProcess`], on a runtime of its own,
/// so that the clients of a test compete with it as they would from outside),
/// two decision workers, a fresh in-memory store with `acme` subscribed, and
/// one listener.
struct Server {
    _server: InProcess,
    /// The listener's address.
    addr: SocketAddr,
    /// Holds the policy file, for the server's reloads.
    _dir: tempfile::TempDir,
}

impl Server {
    /// The Postfix policy listener alone, with `overrides`.
    fn postfix(overrides: Overrides) -> Server {
        let overrides = Overrides {
            http_listen: Some(Listen::Off),
            ..overrides
        };
        Server::start(overrides, InProcess::postfix_addr)
    }

    /// The HTTP API alone, with `overrides`.
    fn http(overrides: Overrides) -> Server {
        let overrides = Overrides {
            postfix_listen: Some(Listen::Off),
            ..overrides
        };
        Server::start(overrides, InProcess::http_addr)
    }

    fn start(overrides: Overrides, addr: fn(&InProcess) -> SocketAddr) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, POLICY).expect("writes the policy");
        let overrides = Overrides {
            policy: Some(policy),
            workers: Some(2),
            ..overrides
        };
        let server = InProcess::start_on(SERVER_THREADS, overrides, Arc::new(MemoryStore::new()));
        let subscribe = Request::Subscribe {
            account: "acme".into(),
            plan: "small".into(),
            anchor: None,
        };
        let decision = server
            .gateway()
            .decide_blocking(subscribe, now())
            .expect("subscribes");
        assert_eq!(decision.denied, None);
        Server {
            addr: addr(&server),
            _server: server,
            _dir: dir,
        }
    }
}

/// Runs `test` on a small multi-thread runtime of its own.
fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(test());
}

async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(addr).await
}

/// Slow clients: each connects from one of `sources`, sends `opening` and then
/// one byte a second, never finishing its request; when the server closes it, it
/// notices at its next byte and connects again, as an attacker would.
struct Flood {
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Flood {
    fn start(addr: SocketAddr, sources: &[Ipv4Addr], opening: &'static [u8]) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicUsize::new(0));
        let clients = (0..FLOOD)
            .map(|i| {
                let source = sources[i % sources.len()];
                let (stop, connected) = (stop.clone(), connected.clone());
                tokio::spawn(async move {
                    let mut stream: Option<TcpStream> = None;
                    while !stop.load(Ordering::Relaxed) {
                        match stream.as_mut() {
                            None => {
                                let attempt =
                                    tokio::time::timeout(WAIT, connect_from(source, addr)).await;
                                if let Ok(Ok(mut s)) = attempt
                                    && s.write_all(opening).await.is_ok()
                                {
                                    connected.fetch_add(1, Ordering::Relaxed);
                                    stream = Some(s);
                                }
                            }
                            Some(s) => {
                                if s.write_all(b"a").await.is_err() {
                                    stream = None;
                                    continue;
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        // A closed connection shows when the next byte is refused;
                        // a read that finds EOF notices a little sooner.
                        if let Some(s) = stream.as_mut() {
                            let mut buf = [0u8; 256];
                            if let Ok(Ok(0)) =
                                tokio::time::timeout(Duration::ZERO, s.read(&mut buf)).await
                            {
                                stream = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Flood {
            stop,
            connected,
            clients,
        }
    }

    /// Waits until every client has connected once (or `WAIT` has passed: past
    /// its cap a server without the fix leaves them in the backlog), then until
    /// each has had time to trickle.
    async fn in_place(&self) {
        let started = Instant::now();
        while self.connected.load(Ordering::Relaxed) < FLOOD && started.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.abort();
        }
    }
}

/// How long one normal request takes from `source`, on a new connection as a
/// fresh smtpd process or a health check makes one; `None` if not answered
/// within `WAIT`.
async fn timed(
    addr: SocketAddr,
    source: Ipv4Addr,
    request: &[u8],
    answered: &[u8],
) -> Option<Duration> {
    let started = Instant::now();
    let exchange = async {
        let mut stream = connect_from(source, addr).await.ok()?;
        stream.write_all(request).await.ok()?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 1024];
        while !reply.windows(answered.len()).any(|w| w == answered) {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            reply.extend_from_slice(&buf[..n]);
        }
        Some(started.elapsed())
    };
    tokio::time::timeout(WAIT, exchange).await.ok().flatten()
}

/// Floods `addr` from `sources` and checks that requests from `probe_from` are
/// still answered within [`ANSWERED_WITHIN`].
async fn flood_then_probe(
    addr: SocketAddr,
    sources: &[Ipv4Addr],
    opening: &'static [u8],
    probe_from: Ipv4Addr,
    request: &[u8],
    answered: &[u8],
) {
    // One flood at a time: each holds thousands of sockets and both cores.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let flood = Flood::start(addr, sources, opening);
    flood.in_place().await;
    let mut took = Vec::new();
    for _ in 0..5 {
        took.push(timed(addr, probe_from, request, answered).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connects = flood.connected.load(Ordering::Relaxed);
    flood.stop().await;
    eprintln!(
        "{FLOOD} slow clients from {} address(es), {connects} connections: \
         normal requests took {took:?}",
        sources.len()
    );
    assert!(
        took.iter().all(|t| t.is_some_and(|t| t < ANSWERED_WITHIN)),
        "with {FLOOD} slow clients from {} address(es), normal requests took {took:?} \
         (None: no answer within {WAIT:?})",
        sources.len()
    );
}

const LOCALHOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// 127.0.0.2 to 127.0.0.254: many clients, as a botnet would be.
fn many_addresses() -> Vec<Ipv4Addr> {
    (2..=254)
        .map(|last| Ipv4Addr::new(127, 0, 0, last))
        .collect()
}

const RCPT: &[u8] = b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
    client_address=192.0.2.1\nsasl_username=acme\nsender=al@example.com\n\
    recipient=bo@example.org\n\n";
/// A Postfix request that never ends: one attribute whose value grows a byte a second.
const POSTFIX_TRICKLE: &[u8] = b"request=smtpd_access_policy\nccert_subject=";

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
/// An HTTP head that never ends: one header whose value grows a byte a second.
const HTTP_TRICKLE: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

/// A listener under a flood: how its server starts, what a slow client sends,
/// and the normal request that must still be answered.
struct Flooded {
    server: fn(Overrides) -> Server,
    trickle: &'static [u8],
    request: &'static [u8],
    answered: &'static [u8],
}

const POSTFIX: Flooded = Flooded {
    server: Server::postfix,
    trickle: POSTFIX_TRICKLE,
    request: RCPT,
    answered: b"action=DUNNO\n\n",
};

const HTTP: Flooded = Flooded {
    server: Server::http,
    trickle: HTTP_TRICKLE,
    request: HEALTHZ,
    answered: b"\"status\":\"ok\"",
};

/// Floods `listener` from `sources` while normal requests come from 127.0.0.1.
fn flood(listener: &Flooded, sources: &[Ipv4Addr]) {
    let server = (listener.server)(Overrides::default());
    run(|| {
        flood_then_probe(
            server.addr,
            sources,
            listener.trickle,
            LOCALHOST,
            listener.request,
            listener.answered,
        )
    });
}

#[test]
fn postfix_answers_while_slow_clients_from_one_address_flood_it() {
    // Postfix and the attacker share the address, as on one machine.
    flood(&POSTFIX, &[LOCALHOST]);
}

#[test]
fn postfix_answers_while_slow_clients_from_many_addresses_flood_it() {
    flood(&POSTFIX, &many_addresses());
}

#[test]
fn healthz_answers_while_slow_header_clients_from_one_address_flood_it() {
    flood(&HTTP, &[LOCALHOST]);
}

#[test]
fn healthz_answers_while_slow_header_clients_from_many_addresses_flood_it() {
    flood(&HTTP, &many_addresses());
}

/// Sends `opening`, then one more byte every 50 ms, never finishing; returns how
/// long the server took to close the connection (`None`: still open after 3 s).
async fn trickle_until_closed(addr: SocketAddr, opening: &[u8]) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    stream.write_all(opening).await.expect("writes");
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(3) {
        // Whatever the server answers (hyper may say 408 or 400), the connection
        // must end.
        let read = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            return Some(started.elapsed());
        }
        if stream.write_all(b"a").await.is_err() {
            return Some(started.elapsed());
        }
    }
    None
}

#[test]
fn a_postfix_request_that_trickles_in_is_cut_off_at_the_request_timeout() {
    let server = Server::postfix(Overrides {
        request_timeout: Some(Duration::from_millis(300)),
        ..Overrides::default()
    });
    run(|| async {
        let took = trickle_until_closed(server.addr, POSTFIX_TRICKLE).await;
        assert!(
            took.is_some_and(|t| t >= Duration::from_millis(250)),
            "closed after {took:?}; the idle timeout (60 s) never trips on a trickle"
        );
        // A request that arrives whole is answered as before.
        let answered = timed(server.addr, LOCALHOST, RCPT, b"action=DUNNO\n\n").await;
        assert!(answered.is_some());
    });
}

#[test]
fn an_http_head_or_body_that_trickles_in_is_cut_off_at_the_request_timeout() {
    let server = Server::http(Overrides {
        request_timeout: Some(Duration::from_millis(300)),
        ..Overrides::default()
    });
    run(|| async {
        let head = trickle_until_closed(server.addr, HTTP_TRICKLE).await;
        let body = trickle_until_closed(
            server.addr,
            b"POST /v1/decide/email HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"account\": \"",
        )
        .await;
        for (what, took) in [("head", head), ("body", body)] {
            assert!(
                took.is_some_and(|t| t >= Duration::from_millis(250)),
                "a trickling {what} closed after {took:?}"
            );
        }
        let answered = timed(server.addr, LOCALHOST, HEALTHZ, b"\"status\":\"ok\"").await;
        assert!(answered.is_some());
    });
}

// ---- the HTTP guard: Host, Origin, Content-Type --------------------------------

/// One request over a raw connection (so that `Host` and the rest are exactly as
/// given); its status and body.
fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("writes");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reads the answer");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    (status, body)
}

/// `raw`, checking that the status is documented for `template` in
/// `host/openapi.json` and returning the error code, if any.
fn call(
    spec: &Value,
    addr: SocketAddr,
    method: &str,
    template: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, text) = raw(addr, &method.to_uppercase(), path, headers, body);
    let documented = &spec["paths"][template][method]["responses"];
    assert!(
        documented.get(status.to_string()).is_some(),
        "{method} {path} answered {status}, undocumented for {template}: {text}"
    );
    let code = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code)
}

/// Every route with its path filled in, and a body it would take.
fn every_route() -> Vec<(&'static str, &'static str, String, &'static str)> {
    http::routes()
        .into_iter()
        .map(|(method, template)| {
            let path = template
                .replace("{account}", "acme")
                .replace("{campaign}", "c1")
                .replace("{email}", "a@x.io");
            let body = match (method, template) {
                ("post", "/v1/accounts/{account}/subscription") => r#"{"plan": "small"}"#,
                ("put", _) => r#"{"plan": "small"}"#,
                ("post", "/v1/accounts/{account}/campaigns/{campaign}/leads") => {
                    r#"{"emails": ["a@x.io"]}"#
                }
                ("post", "/v1/decide/email") => r#"{"account": "acme", "to": "a@x.io"}"#,
                _ => "",
            };
            (method, template, path, body)
        })
        .collect()
}

#[test]
fn the_probe_of_issue_14_a_cross_site_reload_is_refused() {
    let server = Server::http(Overrides::default());
    let (status, body) = raw(
        server.addr,
        "POST",
        "/v1/admin/reload",
        &[
            ("Host", "attacker.example"),
            ("Origin", "http://attacker.example"),
            ("Content-Type", "text/plain"),
        ],
        "x",
    );
    assert_eq!(status, 403, "{body}");
    // Each of the three marks alone is enough.
    let host = server.addr.to_string();
    let spec = crate::http::openapi();
    let reload = |headers: &[(&str, &str)], body: &str| {
        call(
            &spec,
            server.addr,
            "post",
            "/v1/admin/reload",
            "/v1/admin/reload",
            headers,
            body,
        )
    };
    assert_eq!(
        reload(&[("Host", "attacker.example:8080")], ""),
        (403, "host_not_allowed".into())
    );
    assert_eq!(
        reload(
            &[("Host", &host), ("Origin", "http://attacker.example")],
            ""
        ),
        (403, "cross_origin".into())
    );
    assert_eq!(
        reload(&[("Host", &host), ("Origin", "null")], ""),
        (403, "cross_origin".into())
    );
    assert_eq!(
        reload(&[("Host", &host), ("Sec-Fetch-Site", "cross-site")], ""),
        (403, "cross_origin".into())
    );
    assert_eq!(
        reload(&[("Host", &host), ("Content-Type", "text/plain")], "x"),
        (415, "unsupported_media_type".into())
    );
    // Its own origin, a tool that sends no Origin, and no body at all: allowed.
    let origin = format!("http://{host}");
    assert_eq!(
        reload(
            &[
                ("Host", &host),
                ("Origin", &origin),
                ("Sec-Fetch-Site", "same-origin")
            ],
            ""
        )
        .0,
        200
    );
    assert_eq!(reload(&[("Host", "localhost")], "").0, 200);
}

#[test]
fn every_route_checks_host_and_every_state_change_its_origin_and_body() {
    let server = Server::http(Overrides {
        allowed_hosts: Some(vec!["gw.example.com".into()]),
        ..Overrides::default()
    });
    let spec = crate::http::openapi();
    let addr = server.addr;
    for (method, template, path, body) in every_route() {
        let json = [("Content-Type", "application/json")];
        let headers = |host: &'static str| {
            let mut h = vec![("Host", host)];
            if !body.is_empty() {
                h.extend(json);
            }
            h
        };
        let (status, code) = call(
            &spec,
            addr,
            method,
            template,
            &path,
            &headers("evil.example"),
            body,
        );
        assert_eq!(
            (status, code.as_str()),
            (403, "host_not_allowed"),
            "{method} {path}"
        );
        // A public name configured in allowed_hosts, in any case, and the
        // loopback names, are let through (to whatever the route answers).
        for host in [
            "GW.example.com:8080",
            "localhost:8080",
            "127.0.0.1",
            "[::1]:8080",
        ] {
            let (status, code) = call(&spec, addr, method, template, &path, &headers(host), body);
            assert_ne!(status, 403, "{method} {path} with Host {host}: {code}");
        }
        if method == "get" {
            continue;
        }
        let mut cross = headers("127.0.0.1");
        cross.push(("Origin", "http://evil.example"));
        let (status, code) = call(&spec, addr, method, template, &path, &cross, body);
        assert_eq!(
            (status, code.as_str()),
            (403, "cross_origin"),
            "{method} {path}"
        );
        let mut configured = headers("127.0.0.1");
        configured.push(("Origin", "https://gw.example.com"));
        let (status, _) = call(&spec, addr, method, template, &path, &configured, body);
        assert_ne!(status, 403, "{method} {path} from a configured origin");
        let form = [
            ("Host", "127.0.0.1"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        let (status, code) = call(&spec, addr, method, template, &path, &form, "a=b");
        assert_eq!(
            (status, code.as_str()),
            (415, "unsupported_media_type"),
            "{method} {path}"
        );
    }
    // The dashboard, which openapi.json leaves out, is guarded too.
    for path in ["/", "/accounts/acme"] {
        assert_eq!(
            raw(addr, "GET", path, &[("Host", "evil.example")], "").0,
            403,
            "{path}"
        );
        assert_eq!(
            raw(addr, "GET", path, &[("Host", "127.0.0.1")], "").0,
            200,
            "{path}"
        );
    }
}

#[test]
fn admin_routes_are_exactly_those_listed() {
    let server = Server::http(Overrides {
        admin_token: Some("0123456789abcdef-admin".into()),
        ..Overrides::default()
    });
    let mut needs_token = Vec::new();
    for (method, template, path, body) in every_route() {
        let mut headers = vec![("Host", "127.0.0.1")];
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        if raw(server.addr, &method.to_uppercase(), &path, &headers, body).0 == 401 {
            needs_token.push((method, template));
        }
    }
    assert_eq!(needs_token, http::ADMIN_ROUTES);
}

// ---- admin auth through the binary ---------------------------------------------

/// `creditgate serve` with `config` and `token` as $CREDITGATE_ADMIN_TOKEN
/// (unset when `None`), its HTTP API on a port it binds itself: its exit status
/// and log if it exits before it listens, else its log once it listens (then it
/// is stopped).
fn serve_with(config: &str, token: Option<&str>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("serve.toml");
    std::fs::write(&path, format!("store = \"memory\"\n{config}")).expect("writes");
    let mut builder = ServeProcess::builder(
        env!("CARGO_BIN_EXE_creditgate"),
        dir.path().join("serve.log"),
    )
    .postfix(false)
    .arg("--config")
    .arg(&path);
    if let Some(token) = token {
        builder = builder.env("CREDITGATE_ADMIN_TOKEN", token);
    }
    let mut serve = builder.spawn().unwrap_or_else(|e| panic!("{e}"));
    match serve.wait_listening(WAIT) {
        Ok(()) => (None, serve.terminate().1),
        Err(log) => (serve.try_wait().and_then(|s| s.code()), log),
    }
}

/// Audit G.2: without a token, whoever reaches the API may move any account to
/// any plan and reload the policy. On loopback that is the operator; on an
/// address the network reaches, serve refuses to start so unless told the
/// network is trusted.
#[test]
fn an_api_on_the_network_without_an_admin_token_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let check = |config: &str, token: Option<&str>| {
        let path = dir.path().join("serve.toml");
        let text = format!("store = \"memory\"\nhttp_listen = \"0.0.0.0:18399\"\n{config}");
        std::fs::write(&path, text).expect("writes");
        let mut command = harness::creditgate_command();
        command
            .args(["serve", "--check", "--config"])
            .arg(&path)
            .env_remove("CREDITGATE_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("CREDITGATE_ADMIN_TOKEN", token);
        }
        command.output().expect("runs")
    };
    let o = check("", None);
    harness::assert_exit(&o, 2);
    harness::assert_stderr_has(
        &o,
        "http_listen 0.0.0.0:18399 is reachable from the network",
    );
    harness::assert_stderr_has(&o, "insecure_open_admin = true");
    harness::assert_exit(&check("", Some("a-long-enough-admin-token")), 0);
    harness::assert_exit(&check("insecure_open_admin = true\n", None), 0);
}

#[test]
fn an_empty_admin_token_is_an_error_wherever_it_comes_from() {
    let from_file = "admin_token = \"a-long-enough-admin-token\"\n";
    // The empty variable used to override the file's token and open the routes.
    let (exited, stderr) = serve_with(from_file, Some(""));
    assert_eq!(exited, Some(2), "{stderr}");
    harness::assert_has(&stderr, "$CREDITGATE_ADMIN_TOKEN is empty");
    let (exited, stderr) = serve_with("admin_token = \"\"\n", None);
    assert_eq!(exited, Some(2), "{stderr}");
    assert!(
        stderr.contains("admin_token in ") && stderr.contains("is empty"),
        "{stderr}"
    );
    let (exited, stderr) = serve_with("", Some("short"));
    assert_eq!(exited, Some(2), "{stderr}");
    harness::assert_has(&stderr, "at least 16");
}

#[test]
fn start_up_says_whether_admin_auth_is_on_and_for_which_routes() {
    let (exited, stderr) = serve_with("admin_token = \"a-long-enough-admin-token\"\n", None);
    assert_eq!(exited, None, "{stderr}");
    assert!(
        stderr.contains("admin auth on (token from admin_token in ")
            && stderr.contains("POST /v1/admin/reload")
            && stderr.contains("PUT /v1/accounts/{account}/plan"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("a-long-enough-admin-token"),
        "the token is never logged"
    );
    let (exited, stderr) = serve_with("", Some("another-long-admin-token"));
    assert_eq!(exited, None, "{stderr}");
    harness::assert_has(&stderr, "token from $CREDITGATE_ADMIN_TOKEN");
    let (exited, stderr) = serve_with("", None);
    assert_eq!(exited, None, "{stderr}");
    assert!(
        stderr.contains("admin auth off") && stderr.contains("POST /v1/admin/reload"),
        "{stderr}"
    );
}
