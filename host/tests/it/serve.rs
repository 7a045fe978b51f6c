//! The Postfix policy server, spoken to over TCP in the raw protocol: replies in
//! order, charges once per message, refusals as configured, and one bad or slow
//! peer never costs another its answers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;

use creditgate::bindings::{Mode, Reason};
use creditgate::gateway::Gateway;
use creditgate::postfix::{Path as PostfixPath, PostfixConfig, ProtocolState, Uncharged};
use creditgate::request::Request;
use creditgate::serve::{ServeOptions, serve_postfix};
use creditgate::store::MemoryStore;
use creditgate::time::now;
use creditgate_testkit::serve::{ServeProcess, policy_request, postfix_request as request};

use crate::harness;

const POLICY: &str = "[plans.small]\nlead_credits = 20\nemail_credits = 5\n\
    [plans.large]\nlead_credits = 20\nemail_credits = 50\n";

/// Every wait in these tests is bounded by this: a hang is a failure, not a stall.
const WAIT: Duration = Duration::from_secs(10);

fn component() -> Arc<creditgate::runtime::Runtime> {
    crate::harness::shared_runtime()
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
        Server::start_in(POLICY, Mode::Enforce, config, options).await
    }

    /// A server with `policy` under a gateway in `mode`.
    async fn start_in(
        policy: &str,
        mode: Mode,
        config: PostfixConfig,
        options: ServeOptions,
    ) -> Server {
        let (gateway, _) =
            Gateway::start_in(component(), Arc::new(MemoryStore::new()), policy, mode, 2)
                .expect("starts");
        let gateway = Arc::new(gateway);
        let subscribe = harness::subscription("acme", "small");
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

    /// A server with the Postfix configuration `toml`, and a connection to it.
    async fn connected_with(toml: &str) -> (Server, TcpStream) {
        let config: PostfixConfig = toml::from_str(toml).expect("config");
        let server = Server::start(config, ServeOptions::default()).await;
        let connection = server.connect().await;
        (server, connection)
    }

    /// [`Server::default`] and a connection to it.
    async fn connected() -> (Server, TcpStream) {
        let server = Server::default().await;
        let connection = server.connect().await;
        (server, connection)
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

    /// Asserts that `acme` has used `emails` email credits, then stops.
    async fn stop_having_charged(self, emails: u64) {
        assert_eq!(self.emails_used().await, emails);
        self.stop().await;
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

/// A Postfix request at `RCPT` from the SASL user `user`.
fn rcpt(user: &str) -> String {
    request("RCPT", user, &[])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_requests_on_one_connection_are_answered_in_order() {
    let (server, mut c) = Server::connected().await;
    assert_eq!(ask(&mut c, &request("CONNECT", "", &[])).await, "DUNNO");
    assert_eq!(ask(&mut c, &rcpt("acme")).await, "DUNNO");
    // Pipelined in one write: three replies, in order.
    let three = [
        request("HELO", "", &[]),
        rcpt("acme"),
        request("DATA", "acme", &[]),
    ]
    .concat();
    c.write_all(three.as_bytes()).await.expect("writes");
    assert_eq!(read_replies(&mut c, 3).await, ["DUNNO"; 3]);
    assert_eq!(server.emails_used().await, 0, "RCPT only checks");
    server.stop().await;
}

/// Only END-OF-MESSAGE charges, so what Postfix asks is counted by state (a
/// Postfix that never asks there sends every message uncharged, and only the
/// counts show it), and a state Postfix does not document is answered as a
/// failure to decide, not ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_state_and_an_undocumented_state_fails_closed() {
    let (server, mut c) = Server::connected().await;
    for _ in 0..3 {
        assert_eq!(ask(&mut c, &rcpt("acme")).await, "DUNNO");
    }
    assert_eq!(ask(&mut c, &request("DATA", "acme", &[])).await, "DUNNO");
    assert_eq!(
        ask(&mut c, &request("XYZZY", "acme", &[])).await,
        "451 4.3.5 Policy service unavailable"
    );
    let eom = end_of_message("acme", "2", "1a2b.3c4d.9");
    assert_eq!(ask(&mut c, &eom).await, "DUNNO");
    let states = server.gateway.postfix_states();
    let counted = [
        ProtocolState::Rcpt,
        ProtocolState::Data,
        ProtocolState::EndOfMessage,
        ProtocolState::Mail,
    ]
    .map(|state| states.get(state));
    assert_eq!(counted, [3, 1, 1, 0]);
    assert_eq!(states.other(), 1);
    server.stop_having_charged(2).await;
}

/// Audit 4.1: under the default settings a client that relays without SMTP
/// AUTH names no account, and its message went out uncharged with nothing to
/// show for it but an INFO line. It still goes (`no_account = "fail_open"` is
/// the default, for mail that is not a customer's), but now counted with its
/// recipients, apart by the action that let it through; a request at RCPT is
/// not a message let through, and an action that fails closed lets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_let_through_uncharged_are_counted_with_their_recipients() {
    let (server, mut c) = Server::connected().await;
    assert_eq!(ask(&mut c, &rcpt("")).await, "DUNNO");
    for i in 0..3 {
        let eom = end_of_message("", "50", &format!("1a2b.3c4d.{i}"));
        assert_eq!(ask(&mut c, &eom).await, "DUNNO");
    }
    let unknown = end_of_message("nobody", "5", "1a2b.3c4d.9");
    let refused = ask(&mut c, &unknown).await;
    assert!(refused.starts_with("451 4.3.5 "), "{refused}");
    let states = server.gateway.postfix_states();
    assert_eq!(states.uncharged_count(Uncharged::NoAccount), (3, 150));
    assert_eq!(states.uncharged_count(Uncharged::UnknownAccount), (0, 0));
    server.stop_having_charged(0).await;

    let (server, mut c) =
        Server::connected_with("[actions]\nunknown_account = \"fail_open\"").await;
    assert_eq!(ask(&mut c, &unknown).await, "DUNNO");
    let states = server.gateway.postfix_states();
    assert_eq!(states.uncharged_count(Uncharged::UnknownAccount), (1, 5));
    assert_eq!(states.uncharged_count(Uncharged::NoAccount), (0, 0));
    server.stop_having_charged(0).await;
}

/// Audit 4.2: the report of mail never asked about at END-OF-MESSAGE is by
/// path, so a submission port whose clients skip the policy there is
/// reported while port 25's mail is charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_is_reported_uncharged_on_the_path_that_never_reaches_the_end() {
    let (server, mut c) = Server::connected().await;
    let on = |port: &str, state: &str| {
        postfix_request_on(
            port,
            state,
            "acme",
            &[("recipient_count", "1"), ("instance", port)],
        )
    };
    assert_eq!(ask(&mut c, &on("25", "RCPT")).await, "DUNNO");
    assert_eq!(ask(&mut c, &on("25", "END-OF-MESSAGE")).await, "DUNNO");
    let states = server.gateway.postfix_states();
    let submission = PostfixPath {
        server_port: Some(587),
        authenticated: true,
    };
    // Port 587's path has never reached the end: after 99 RCPTs there, the
    // 100th is reported, with the path serve read from the requests.
    for _ in 0..99 {
        assert_eq!(ask(&mut c, &on("587", "RCPT")).await, "DUNNO");
    }
    let reported = states.count(Some(ProtocolState::Rcpt), submission);
    assert_eq!(
        reported.map(|r| (r.requests, r.path)),
        Some((100, submission))
    );
    server.stop_having_charged(1).await;
}

/// [`request`] asked of the Postfix service on `port`.
fn postfix_request_on(port: &str, state: &str, account: &str, extra: &[(&str, &str)]) -> String {
    let mut extra = extra.to_vec();
    extra.push(("server_port", port));
    request(state, account, &extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listener_closes_a_stalled_connection_to_serve_a_new_one() {
    let options = ServeOptions {
        max_connections: 2,
        ..ServeOptions::default()
    };
    let server = Server::start(PostfixConfig::default(), options).await;
    // One slot held by half a request, the other by a connection answered
    // and now idle, as Postfix keeps its own.
    let mut stalled = server.connect().await;
    let full = rcpt("acme");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_message_charges_recipient_count_once_per_instance() {
    let (server, mut c) = Server::connected().await;
    assert_eq!(ask(&mut c, &rcpt("acme")).await, "DUNNO");
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
    server.stop_having_charged(4).await;
}

/// Issue 13.2 at the gateway: an `instance` already charged, asked again with
/// another `recipient_count`, charges nothing and is refused (by default with a
/// temporary failure: the message must not go out unmetered); a true retry is
/// still free. The reply is configurable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_reused_with_another_count_is_refused_not_free() {
    let (server, mut c) = Server::connected().await;
    assert_eq!(
        ask(&mut c, &end_of_message("acme", "2", "PFX1")).await,
        "DUNNO"
    );
    let reused = ask(&mut c, &end_of_message("acme", "1", "PFX1")).await;
    assert_eq!(
        reused,
        "DEFER 4.7.1 Message already charged with another recipient count"
    );
    assert_eq!(
        ask(&mut c, &end_of_message("acme", "2", "PFX1")).await,
        "DUNNO"
    );
    server.stop_having_charged(2).await;

    let (server, mut c) =
        Server::connected_with("[actions]\nidempotency_key_reused = \"reject\"").await;
    assert_eq!(
        ask(&mut c, &end_of_message("acme", "2", "PFX1")).await,
        "DUNNO"
    );
    let reused = ask(&mut c, &end_of_message("acme", "3", "PFX1")).await;
    harness::assert_starts(&reused, "REJECT 5.7.1 ");
    server.stop_having_charged(2).await;
}

/// Issue 13.6: `recipient_count=0` at END-OF-MESSAGE is the policy's
/// `no_recipients`, with a reply of its own (by default Postfix's own refusal of
/// a message without recipients), not the outage reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_recipients_gets_its_own_reply() {
    let (server, mut c) = Server::connected().await;
    let none = ask(&mut c, &end_of_message("acme", "0", "NONE.0")).await;
    assert_eq!(none, "REJECT 5.5.1 No valid recipients");
    server.stop_having_charged(0).await;

    let (server, mut c) = Server::connected_with("[actions]\nno_recipients = \"dunno\"").await;
    assert_eq!(
        ask(&mut c, &end_of_message("acme", "0", "NONE.0")).await,
        "DUNNO"
    );
    server.stop_having_charged(0).await;
}

/// Issue 14.3: message ids from the HTTP API and Postfix instances live in
/// namespaces of their own. An HTTP `message_id` of `postfix/PFX1` does not make
/// Postfix's `instance=PFX1` a retry (which answered `DUNNO` and charged nothing),
/// nor does a Postfix instance make an HTTP id one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_message_id_cannot_take_over_a_postfix_instance() {
    use creditgate::http::{self, HttpOptions, ReloadRefused};

    let server = Server::default().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let http_addr = listener.local_addr().expect("address");
    let reload: http::Reloader = Arc::new(|_force| {
        Err(ReloadRefused {
            message: "not in this test".into(),
            diagnostics: vec![],
        })
    });
    let options = HttpOptions::default();
    let router = http::router(server.gateway.clone(), reload, &options);
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http_task = tokio::spawn(async move {
        http::serve_http(listener, router, &options, async {
            let _ = http_stopped.await;
        })
        .await
    });
    let decide = |id: &str| {
        let body = serde_json::json!({"account": "acme", "to": "a@x.io", "message_id": id});
        http_post(http_addr, "/v1/decide/email", body.to_string())
    };

    let first = decide("postfix/PFX1").await;
    assert_eq!(
        (first["decision"].as_str(), first["charged"].as_u64()),
        (Some("allow"), Some(1))
    );
    let mut c = server.connect().await;
    assert_eq!(
        ask(&mut c, &end_of_message("acme", "3", "PFX1")).await,
        "DUNNO"
    );
    assert_eq!(server.emails_used().await, 4, "the instance was charged");
    // The other way: an HTTP id that spells a charged instance is charged too.
    let again = decide("postfix/PFX1").await;
    assert_eq!(
        again["charged"].as_u64(),
        Some(0),
        "the HTTP message's own retry"
    );
    assert_eq!(
        ask(&mut c, &end_of_message("acme", "1", "http/x")).await,
        "DUNNO"
    );
    let other = decide("x").await;
    assert_eq!(
        (other["decision"].as_str(), other["charged"].as_u64()),
        (Some("deny"), Some(0))
    );
    assert_eq!(other["reason"], "email_credits_exhausted");

    let _ = stop_http.send(());
    timeout(WAIT, http_task)
        .await
        .expect("HTTP stops in time")
        .expect("HTTP task")
        .expect("HTTP serves");
    server.stop().await;
}

/// A minimal HTTP/1.1 POST of a JSON body; the response body as JSON.
async fn http_post(addr: SocketAddr, path: &str, body: String) -> serde_json::Value {
    let mut stream = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connects in time")
        .expect("connects");
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("writes");
    let mut response = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("answers in time")
        .expect("reads");
    let response = String::from_utf8(response).expect("UTF-8");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 "), "{response}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_account_is_deferred_until_its_credits_reset() {
    let (server, mut c) = Server::connected().await;
    let eom = end_of_message("acme", "5", "full.0");
    assert_eq!(ask(&mut c, &eom).await, "DUNNO");
    let rcpt = ask(&mut c, &rcpt("acme")).await;
    harness::assert_starts(
        &rcpt,
        "DEFER 4.7.1 Email credits exhausted; they reset at 20",
    );
    // Issue 17.3: the default text names the plan that would let it through.
    assert!(rcpt.ends_with("Z, or upgrade to large"), "{rcpt}");
    // A charge past the limit is refused whole and takes nothing.
    let over = ask(&mut c, &end_of_message("acme", "1", "full.1")).await;
    harness::assert_starts(&over, "DEFER 4.7.1 ");
    server.stop_having_charged(5).await;
}

/// Issue 17.4: a gateway in shadow answers `DUNNO` past the limit, charges
/// what it let through (once per instance), and counts what it would have
/// refused; a plan that says `enforce` is deferred beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_in_shadow_lets_mail_through_and_counts_it() {
    let policy = "[plans.small]\nlead_credits = 20\nemail_credits = 5\n\
        [plans.strict]\nlead_credits = 20\nemail_credits = 5\nmode = \"enforce\"\n";
    let server = Server::start_in(
        policy,
        Mode::Shadow,
        PostfixConfig::default(),
        ServeOptions::default(),
    )
    .await;
    let subscribe = harness::subscription("strict", "strict");
    server
        .gateway
        .decide(subscribe, now())
        .await
        .expect("subscribes");
    let mut c = server.connect().await;
    assert_eq!(
        ask(&mut c, &end_of_message("acme", "5", "s.0")).await,
        "DUNNO"
    );
    assert_eq!(ask(&mut c, &rcpt("acme")).await, "DUNNO");
    assert_eq!(
        ask(&mut c, &end_of_message("acme", "3", "s.1")).await,
        "DUNNO"
    );
    // Postfix's retry of the same message is not charged again.
    assert_eq!(
        ask(&mut c, &end_of_message("acme", "3", "s.1")).await,
        "DUNNO"
    );
    assert_eq!(server.emails_used().await, 8, "counted past the limit of 5");
    let stats = server.gateway.snapshot();
    assert_eq!(stats.shadow_refusals(Reason::EmailCreditsExhausted), 2);
    assert!(
        stats
            .prometheus()
            .contains("creditgate_shadow_refusals_total{reason=\"email_credits_exhausted\"} 2"),
        "{}",
        stats.prometheus()
    );
    assert_eq!(
        ask(&mut c, &end_of_message("strict", "5", "t.0")).await,
        "DUNNO"
    );
    let refused = ask(&mut c, &end_of_message("strict", "1", "t.1")).await;
    harness::assert_starts(&refused, "DEFER 4.7.1 Email credits exhausted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_accounts_get_the_configured_reply() {
    // By default an account the ledger does not know is refused (fail
    // closed), while a request naming no account at all (no SMTP AUTH) flows.
    let (server, mut c) = Server::connected().await;
    assert_eq!(
        ask(&mut c, &rcpt("ghost")).await,
        "451 4.3.5 Sending account unknown to the credit policy"
    );
    assert_eq!(ask(&mut c, &rcpt("")).await, "DUNNO");
    assert_eq!(ask(&mut c, &rcpt("acme")).await, "DUNNO");
    server.stop().await;

    // Both configurable: a gateway that also carries mail outside creditgate
    // lets unknown accounts through; one that wants SMTP AUTH refuses without.
    let (server, mut c) = Server::connected_with(
        "[actions]\nunknown_account = \"dunno\"\nno_account = \"fail_closed\"",
    )
    .await;
    assert_eq!(ask(&mut c, &rcpt("ghost")).await, "DUNNO");
    assert_eq!(
        ask(&mut c, &rcpt("")).await,
        "451 4.3.5 No sending account for the credit policy"
    );
    server.stop().await;
}

/// Issue 14.2: an authenticated sender is the account its name normalises to,
/// however Postfix spells it; one that maps to no account is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_sender_never_slips_past_the_ledger() {
    let (server, mut c) = Server::connected().await;
    // Charged under other spellings: the charge lands on acme.
    let eom = end_of_message("ACME ", "3", "spell.0");
    assert_eq!(ask(&mut c, &eom).await, "DUNNO");
    assert_eq!(
        ask(&mut c, &end_of_message(" Acme", "2", "spell.1")).await,
        "DUNNO"
    );
    assert_eq!(server.emails_used().await, 5);
    // Exhausted: every spelling is deferred, none is let through for free.
    for user in ["acme", "ACME", "acme ", " acme", "acme\t", "Acme"] {
        let reply = ask(&mut c, &rcpt(user)).await;
        assert!(
            reply.starts_with("DEFER 4.7.1 Email credits exhausted"),
            "{user:?}: {reply}"
        );
        let over = ask(&mut c, &end_of_message(user, "1", &format!("over.{user}"))).await;
        assert!(over.starts_with("DEFER 4.7.1 "), "{user:?}: {over}");
    }
    assert_eq!(server.emails_used().await, 5);
    // Names no account can have are unknown accounts, refused.
    for user in ["ghost", "acme/x", "ac\u{202e}me", "\u{1}alerts/acme"] {
        assert_eq!(
            ask(&mut c, &rcpt(user)).await,
            "451 4.3.5 Sending account unknown to the credit policy",
            "{user:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_closes_only_its_connection() {
    let server = Server::default().await;
    let mut good = server.connect().await;
    let mut bad = server.connect().await;
    assert_eq!(ask(&mut good, &rcpt("acme")).await, "DUNNO");
    bad.write_all(b"request=smtpd_access_policy\nno equals sign here\n\n")
        .await
        .expect("writes");
    assert!(closed(&mut bad).await);
    assert_eq!(ask(&mut good, &rcpt("acme")).await, "DUNNO");
    let mut again = server.connect().await;
    assert_eq!(ask(&mut again, &rcpt("acme")).await, "DUNNO");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_line_closes_the_connection() {
    let (server, mut c) = Server::connected_with("[limits]\nmax_line_bytes = 256").await;
    assert_eq!(ask(&mut c, &rcpt("acme")).await, "DUNNO");
    let long = format!("ccert_subject={}\n", "x".repeat(4096));
    // The server may close while this is still being written.
    let _ = c.write_all(long.as_bytes()).await;
    assert!(closed(&mut c).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_timeout() {
    let options = ServeOptions {
        idle_timeout: Duration::from_millis(200),
        ..ServeOptions::default()
    };
    let server = Server::start(PostfixConfig::default(), options).await;
    let mut c = server.connect().await;
    assert_eq!(ask(&mut c, &rcpt("acme")).await, "DUNNO");
    let start = Instant::now();
    assert!(closed(&mut c).await);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_does_not_block_another() {
    let server = Server::default().await;
    let mut slow = server.connect().await;
    let full = rcpt("acme");
    let (first, rest) = full.split_at(full.len() / 2);
    slow.write_all(first.as_bytes()).await.expect("writes");
    let mut quick = server.connect().await;
    for _ in 0..3 {
        assert_eq!(ask(&mut quick, &full).await, "DUNNO");
    }
    assert_eq!(ask(&mut slow, rest).await, "DUNNO");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_closes_idle_connections() {
    let server = Server::default().await;
    let addr = server.addr;
    let mut c = server.connect().await;
    assert_eq!(ask(&mut c, &rcpt("acme")).await, "DUNNO");
    server.stop().await;
    assert!(closed(&mut c).await);
    let refused = timeout(WAIT, TcpStream::connect(addr)).await;
    assert!(matches!(refused, Ok(Err(_))), "{refused:?}");
}

/// `creditgate serve ARGS` with the Postfix listener only, once it listens; its
/// log in `dir`.
fn spawn_serve(dir: &Path, args: &[&str]) -> ServeProcess {
    ServeProcess::builder(env!("CARGO_BIN_EXE_creditgate"), dir.join("serve.log"))
        .args(args)
        .http(false)
        .start()
}

/// Stops serve with SIGTERM; its exit code and log.
fn stop(serve: ServeProcess) -> (Option<i32>, String) {
    let (status, log) = serve.terminate();
    (status.and_then(|s| s.code()), log)
}

#[test]
fn the_binary_answers_then_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = spawn_serve(dir.path(), &["--store", "memory", "--workers", "2"]);
    let port = serve.postfix_addr();
    // An account the (empty) store does not know: refused, fail closed.
    assert_eq!(
        policy_request(port, &rcpt("nobody")),
        "action=451 4.3.5 Sending account unknown to the credit policy"
    );
    let (status, stderr) = stop(serve);
    assert_eq!(status, Some(0), "{stderr}");
    harness::assert_has(&stderr, "listening on 127.0.0.1:");
    harness::assert_has(&stderr, "decision latency");
}

#[test]
fn sighup_reloads_the_policy_and_refuses_a_broken_one() {
    let (dir, policy) = harness::temp_path("policy.toml");
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
    harness::succeeds(
        Command::new(env!("CARGO_BIN_EXE_creditgate"))
            .args(harness::words("account subscribe acme --plan small"))
            .args(["--store", store_arg, "--policy", policy_arg]),
    );

    let serve = spawn_serve(dir.path(), &["--store", store_arg, "--policy", policy_arg]);
    let port = serve.postfix_addr();
    assert_eq!(
        policy_request(port, &end_of_message("acme", "1", "A1")),
        "action=DUNNO"
    );
    let exhausted = policy_request(port, &rcpt("acme"));
    harness::assert_starts(&exhausted, "action=DEFER 4.7.1");

    // A broken policy is refused: the old one keeps answering.
    std::fs::write(
        &policy,
        "[plans.small]\nlead_credits = 1\nemail_credits = -3\n",
    )
    .expect("writes");
    serve.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(policy_request(port, &rcpt("acme")).starts_with("action=DEFER"));

    // A valid one takes effect between requests.
    std::fs::write(
        &policy,
        "[plans.small]\nlead_credits = 1\nemail_credits = 5\n",
    )
    .expect("writes");
    serve.signal("HUP");
    let deadline = Instant::now() + WAIT;
    while policy_request(port, &rcpt("acme")) != "action=DUNNO" {
        assert!(
            Instant::now() < deadline,
            "the new policy never took effect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        policy_request(port, &end_of_message("acme", "2", "A2")),
        "action=DUNNO"
    );

    let (status, stderr) = stop(serve);
    assert_eq!(status, Some(0), "{stderr}");
    assert!(
        stderr.contains("email_credits: expected a non-negative integer"),
        "the refusal is logged: {stderr}"
    );
}

/// The socket threads: the file's `io_threads`, which a flag overrides; one per
/// core by default; 0 is refused by name.
#[test]
fn io_threads_come_from_the_file_or_a_flag_and_zero_is_refused() {
    use creditgate::serve::{Config, Overrides};
    let (_dir, file) = harness::temp_path("serve.toml");
    std::fs::write(&file, "store = \"memory\"\nio_threads = 3\n").expect("writes");
    let load = |io_threads| {
        let overrides = Overrides {
            io_threads,
            ..Overrides::default()
        };
        Config::load(Some(&file), overrides)
    };
    assert_eq!(load(None).expect("loads").io_threads, 3);
    assert_eq!(load(Some(1)).expect("loads").io_threads, 1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let default = Config::load(None, Overrides::default()).expect("loads");
    assert_eq!(default.io_threads, cores);
    let zero = load(Some(0)).expect_err("0 socket threads serve nothing");
    harness::assert_has(&zero.to_string(), "io_threads must be at least 1");
}

#[test]
fn the_binary_refuses_a_config_with_an_unknown_key() {
    let (_dir, config) = harness::temp_path("serve.toml");
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
    harness::assert_has(&stderr, "unknown field `listen`");
}
