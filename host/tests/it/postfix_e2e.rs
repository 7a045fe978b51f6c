//! A real Postfix end to end (issue 4's acceptance): a private Postfix instance
//! relays mail to an SMTP sink in this test while asking `creditgate serve` about
//! every recipient and every message, until the account's email credits run out.
//!
//! The instance lives entirely in a temporary directory: its own
//! `config_directory` (`postfix -c DIR`), queue, data directory and log file, an
//! smtpd on a free loopback port and a relayhost that is the sink. Nothing of the
//! machine's mail configuration is read or written (Debian's "No configuration"
//! install has no `/etc/postfix/main.cf` at all), and [`Postfix`]'s `Drop` stops the
//! instance whether the test passes or panics. `postfix start` needs root, which
//! CI and this machine have; without Postfix the test fails and says how to
//! install it, because a skipped acceptance test would pass for a working one.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use creditgate_testkit::serve::ServeProcess;

use super::harness::{self, creditgate_command};

/// Every wait is bounded by this: a hang is a failure, not a stall. Generous,
/// because the first message makes master spawn smtpd, cleanup and smtp processes
/// on a busy two-core machine.
const WAIT: Duration = Duration::from_secs(60);

const POLICY: &str = "[plans.small]\nlead_credits = 10\nemail_credits = 5\n";
/// The plan's email credits: what the account may relay before it is refused.
const LIMIT: u64 = 5;

/// The account's senders are mapped to it by domain through a table, so the test
/// needs no SMTP AUTH (which Postfix would need Cyrus or Dovecot SASL for).
const ACME: &str = "news@acme.example";
/// A sender whose domain no table names: not a customer. This gateway also carries
/// mail outside creditgate (`unknown_account = "dunno"`), so it flows uncharged.
const STRANGER: &str = "info@other.example";

#[test]
fn postfix_relays_until_the_credits_run_out_then_refuses_with_the_configured_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let policy = root.join("policy.toml");
    let store = root.join("creditgate.redb");
    std::fs::write(&policy, POLICY).expect("writes the policy");
    let subscribed = creditgate(
        &["account", "subscribe", "acme", "--plan", "small"],
        &store,
        &policy,
    );
    assert!(subscribed.status.success(), "{}", show(&subscribed));

    let sink = Sink::start();
    let serve = Serve::start(root, &store, &policy);
    let postfix = Postfix::start(root, serve.port, sink.port);

    // Each recipient costs one credit, charged at END-OF-MESSAGE: 1 + 2 + 1 leaves
    // one of the five.
    relay(&postfix, &sink, ACME, 0, 1);
    relay(&postfix, &sink, ACME, 1, 2);
    relay(&postfix, &sink, ACME, 2, 1);

    // Two recipients with one credit left: each RCPT check passes (one credit is
    // there), and the charge of two at END-OF-MESSAGE is refused whole, so Postfix
    // rejects the message after DATA and relays nothing.
    let outcome = send(postfix.smtp_port, ACME, &recipients_for(3, 2), 3);
    assert_refused(&outcome, Stage::Data, &postfix);

    // The last credit still buys a one-recipient message.
    relay(&postfix, &sink, ACME, 4, 1);

    // Exhausted: the next message is refused at its first RCPT, before any body.
    let outcome = send(postfix.smtp_port, ACME, &recipients_for(5, 1), 5);
    assert_refused(&outcome, Stage::Rcpt, &postfix);

    // One account's exhaustion is not everyone's: a sender the table does not map
    // is no customer's, is let through as configured, and is relayed.
    relay(&postfix, &sink, STRANGER, 6, 1);

    // Nothing refused was queued behind the sink's back, and nothing else arrived.
    postfix.assert_queue_empty();
    let relayed = sink.messages();
    assert_eq!(relayed.len(), 5, "{relayed:#?}");
    let relayed_for_acme: usize = relayed
        .iter()
        .filter(|m| m.from == ACME)
        .map(|m| m.to.len())
        .sum();
    assert_eq!(relayed_for_acme as u64, LIMIT);

    // What the API reports, with serve still running, is what was relayed.
    let usage = serve.usage("acme");
    assert_eq!(usage["account"], "acme", "{usage}");
    assert_eq!(
        usage["email_credits"]["used"].as_u64(),
        Some(relayed_for_acme as u64),
        "the API's usage is the recipients relayed: {usage}"
    );
    assert_eq!(usage["email_credits"]["limit"].as_u64(), Some(LIMIT));

    // And it is durable: the store, read after serve stops, says the same.
    drop(postfix);
    let log = serve.stop();
    let usage = creditgate(&["usage", "acme", "--format", "json"], &store, &policy);
    assert!(usage.status.success(), "{}", show(&usage));
    let usage: serde_json::Value = serde_json::from_slice(&usage.stdout).expect("JSON usage");
    assert_eq!(
        usage["email_credits"]["used"].as_u64(),
        Some(relayed_for_acme as u64),
        "credits used are the recipients relayed: {usage}\nserve's log:\n{log}"
    );
}

/// Runs `creditgate ARGS` on the test's store and policy.
fn creditgate(args: &[&str], store: &Path, policy: &Path) -> Output {
    creditgate_command()
        .args(args)
        .arg("--store")
        .arg(store)
        .arg("--policy")
        .arg(policy)
        .output()
        .expect("creditgate runs")
}

/// Sends message `n` with `recipients` recipients, which Postfix must accept and
/// relay: it is the next message to reach the sink, with those recipients.
fn relay(postfix: &Postfix, sink: &Sink, from: &str, n: usize, recipients: usize) {
    let to = recipients_for(n, recipients);
    let before = sink.count();
    let outcome = send(postfix.smtp_port, from, &to, n);
    assert_eq!(
        outcome,
        Sent::Accepted,
        "message {n} to {to:?}\nPostfix's log:\n{}",
        postfix.log()
    );
    let message = sink.wait_for(before + 1);
    assert_eq!(
        (message.from.as_str(), &message.to),
        (from, &to),
        "message {n}"
    );
    assert!(message.data.contains(&message_id(n)), "{message:?}");
}

/// `count` distinct recipients for message `n`.
fn recipients_for(n: usize, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("lead{n}-{i}@example.org"))
        .collect()
}

fn message_id(n: usize) -> String {
    format!("<e2e-{n}@acme.example>")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Rcpt,
    Data,
}

/// What Postfix answered a message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    /// `250` to the final `.`: queued for relay.
    Accepted,
    /// A refusal: the stage, the reply code and the reply's text.
    Refused(Stage, u16, String),
}

/// The configured `exhausted = "reject"`: `REJECT 5.7.1 ...` from the policy, which
/// Postfix turns into its `access_map_reject_code` (554) with the policy's text.
fn assert_refused(outcome: &Sent, stage: Stage, postfix: &Postfix) {
    let Sent::Refused(at, code, text) = outcome else {
        panic!(
            "expected a refusal at {stage:?}, got {outcome:?}\nPostfix's log:\n{}",
            postfix.log()
        );
    };
    assert_eq!((*at, *code), (stage, 554), "{text}");
    harness::assert_starts(text, "5.7.1 ");
    harness::assert_has(text, "Email credits exhausted; they reset at 20");
}

/// Sends message `n` from `from` to `to` over one SMTP session with Postfix.
fn send(port: u16, from: &str, to: &[String], n: usize) -> Sent {
    let mut smtp = SmtpClient::connect(port);
    smtp.expect(220, "greeting");
    smtp.command("EHLO client.creditgate.test", 250);
    smtp.command(&format!("MAIL FROM:<{from}>"), 250);
    for rcpt in to {
        let (code, text) = smtp.ask(&format!("RCPT TO:<{rcpt}>"));
        if code != 250 {
            smtp.quit();
            return Sent::Refused(Stage::Rcpt, code, text);
        }
    }
    smtp.command("DATA", 354);
    let body = format!(
        "From: <{from}>\r\nTo: <{}>\r\nSubject: message {n}\r\nMessage-ID: {}\r\n\r\nHello from the creditgate end-to-end test.\r\n.",
        to.join(">, <"),
        message_id(n)
    );
    let (code, text) = smtp.ask(&body);
    smtp.quit();
    if code == 250 {
        Sent::Accepted
    } else {
        Sent::Refused(Stage::Data, code, text)
    }
}

/// A minimal SMTP client: one command, one (possibly multi-line) reply.
struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl SmtpClient {
    fn connect(port: u16) -> SmtpClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connects to Postfix's smtpd");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        let writer = stream.try_clone().expect("clones the stream");
        SmtpClient {
            reader: BufReader::new(stream),
            writer,
        }
    }

    /// Reads one reply: its code, and the text of its lines joined by spaces.
    fn reply(&mut self) -> (u16, String) {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .expect("a reply within the timeout");
            assert!(n > 0, "Postfix closed the session; so far: {text:?}");
            let line = line.trim_end_matches(['\r', '\n']);
            let code = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("not an SMTP reply: {line:?}"));
            text.push(line.get(4..).unwrap_or("").to_owned());
            // `250-...` continues, `250 ...` ends the reply.
            if line.as_bytes().get(3) != Some(&b'-') {
                return (code, text.join(" "));
            }
        }
    }

    fn ask(&mut self, line: &str) -> (u16, String) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("writes to Postfix");
        self.reply()
    }

    fn expect(&mut self, code: u16, what: &str) {
        let (got, text) = self.reply();
        assert_eq!(got, code, "{what}: {text}");
    }

    fn command(&mut self, line: &str, code: u16) {
        let (got, text) = self.ask(line);
        assert_eq!(got, code, "{line}: {text}");
    }

    fn quit(&mut self) {
        // The session's outcome is already known; a QUIT that fails changes nothing.
        let _ = self.writer.write_all(b"QUIT\r\n");
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
    }
}

/// One message as the sink received it.
#[derive(Debug, Clone)]
struct Relayed {
    from: String,
    to: Vec<String>,
    data: String,
}

#[derive(Default)]
struct Inbox {
    messages: Mutex<Vec<Relayed>>,
    arrived: Condvar,
}

/// The relayhost: an SMTP server on a loopback port that accepts every message and
/// records it. It does not advertise PIPELINING, so Postfix's client speaks one
/// command at a time.
struct Sink {
    port: u16,
    inbox: Arc<Inbox>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Sink {
    fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("sink binds");
        let port = listener.local_addr().expect("sink address").port();
        let inbox = Arc::new(Inbox::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (inbox, stopping) = (inbox.clone(), stopping.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let inbox = inbox.clone();
                    std::thread::spawn(move || {
                        // A session Postfix drops is Postfix's to retry; its
                        // messages so far are recorded.
                        let _ = sink_session(stream, &inbox);
                    });
                }
            })
        };
        Sink {
            port,
            inbox,
            stopping,
            acceptor: Some(acceptor),
        }
    }

    fn messages(&self) -> Vec<Relayed> {
        self.inbox
            .messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn count(&self) -> usize {
        self.messages().len()
    }

    /// Waits (bounded) until `count` messages arrived; returns the last of them.
    fn wait_for(&self, count: usize) -> Relayed {
        let messages = self
            .inbox
            .messages
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (messages, waited) = self
            .inbox
            .arrived
            .wait_timeout_while(messages, WAIT, |m| m.len() < count)
            .unwrap_or_else(|e| e.into_inner());
        assert!(
            !waited.timed_out(),
            "message {count} never reached the sink within {WAIT:?}; got {:#?}",
            *messages
        );
        messages[count - 1].clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Serves one SMTP session from Postfix's smtp client.
fn sink_session(stream: TcpStream, inbox: &Inbox) -> std::io::Result<()> {
    stream.set_read_timeout(Some(WAIT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    // Not Postfix's own myhostname, or its client would refuse the relay as a
    // mail loop.
    writer.write_all(b"220 sink.creditgate.test ESMTP\r\n")?;
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 sink.creditgate.test\r\n",
            "MAIL" => {
                from = angle(&command);
                to.clear();
                b"250 2.1.0 Ok\r\n"
            }
            "RCPT" => {
                to.push(angle(&command));
                b"250 2.1.5 Ok\r\n"
            }
            "DATA" => {
                writer.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line.trim_end_matches(['\r', '\n']) == "." {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                let message = Relayed {
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    data,
                };
                inbox
                    .messages
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(message);
                inbox.arrived.notify_all();
                b"250 2.0.0 Ok: queued\r\n"
            }
            "RSET" => {
                from.clear();
                to.clear();
                b"250 2.0.0 Ok\r\n"
            }
            "NOOP" => b"250 2.0.0 Ok\r\n",
            "QUIT" => {
                writer.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            _ => b"502 5.5.2 Command not recognized\r\n",
        };
        writer.write_all(reply)?;
    }
}

/// The address between `<` and `>` in `MAIL FROM:<a> SIZE=1`, lowercased as the
/// test's addresses are.
fn angle(command: &str) -> String {
    let start = command.find('<').map_or(0, |i| i + 1);
    let end = command[start..]
        .find('>')
        .map_or(command.len(), |i| start + i);
    command[start..end].to_ascii_lowercase()
}

/// A port free a moment ago, for Postfix's smtpd, which binds the port its
/// configuration names and cannot be handed a bound socket.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    listener.local_addr().expect("address").port()
}

/// Polls (bounded by [`WAIT`]) until `port` accepts a connection. `exited` says
/// why it never will (the server's process is gone), which ends the wait early.
fn wait_until_listening(
    port: u16,
    what: &str,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(why) = exited() {
            return Err(format!("{what} stopped before listening on {port}: {why}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} never listened on {port} within {WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `creditgate serve` on the test's store, with the account table and the
/// `reject` action in its config file, on ports it binds itself; its log goes to
/// a file so that it can never block on a full pipe.
struct Serve {
    serve: ServeProcess,
    port: u16,
}

impl Serve {
    fn start(root: &Path, store: &Path, policy: &Path) -> Serve {
        let config = root.join("serve.toml");
        std::fs::write(
            &config,
            format!(
                "store = {store:?}\npolicy = {policy:?}\n\
                 workers = 2\n\n\
                 [postfix.actions]\nexhausted = \"reject\"\nunknown_account = \"dunno\"\n\n\
                 [postfix.account_from.table]\nkey = \"sender_domain\"\n\
                 map = {{ \"acme.example\" = \"acme\" }}\n"
            ),
        )
        .expect("writes serve.toml");
        let serve = ServeProcess::builder(env!("CARGO_BIN_EXE_creditgate"), root.join("serve.log"))
            .arg("--config")
            .arg(&config)
            .current_dir(crate::harness::repo())
            .start();
        Serve {
            port: serve.postfix_addr().port(),
            serve,
        }
    }

    fn read_log(&self) -> String {
        self.serve.log_text()
    }

    /// `GET /v1/accounts/{account}/usage` from the HTTP API.
    fn usage(&self, account: &str) -> serde_json::Value {
        let answer = self
            .serve
            .client()
            .get(&format!("/v1/accounts/{account}/usage"));
        assert_eq!(
            answer.status,
            200,
            "{}\nserve's log:\n{}",
            answer.body,
            self.read_log()
        );
        answer.json()
    }

    /// SIGTERM, then a bounded wait for a clean exit, which closes the store for
    /// the commands that read it next. Returns serve's log.
    fn stop(self) -> String {
        let (status, log) = self.serve.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "serve exited with {status:?}:\n{log}"
        );
        log
    }
}

/// A private Postfix instance under `ROOT/postfix`, stopped on drop.
struct Postfix {
    config_dir: PathBuf,
    queue_dir: PathBuf,
    maillog: PathBuf,
    smtp_port: u16,
    /// Set once `postfix start` was attempted: from then on there may be a master
    /// to stop.
    started: bool,
}

impl Postfix {
    fn start(root: &Path, policy_port: u16, sink_port: u16) -> Postfix {
        // Postfix missing: fail at once, saying how to install it.
        sbin("postfix");
        let base = root.join("postfix");
        let config_dir = base.join("etc");
        let queue_dir = base.join("queue");
        std::fs::create_dir_all(&config_dir).expect("creates the config directory");
        // Postfix's daemons drop to the `postfix` user and chdir into the queue:
        // every directory on the way must be traversable (a temp dir is 0700).
        for dir in [root, &base] {
            set_mode(dir, 0o755);
        }
        // `postfix start` creates the queue's subdirectories and the data directory
        // with the right owners, but not the queue directory itself.
        std::fs::create_dir(&queue_dir).expect("creates the queue directory");
        // The package's master.cf (its services and their programs), copied and
        // then edited here; the original is only read.
        let default_dir = Command::new(sbin("postconf"))
            .args(["-h", "-d", "config_directory"])
            .output()
            .expect("postconf runs");
        let default_dir = PathBuf::from(String::from_utf8_lossy(&default_dir.stdout).trim());
        let master_cf = default_dir.join("master.cf");
        std::fs::copy(&master_cf, config_dir.join("master.cf"))
            .unwrap_or_else(|e| panic!("copying {}: {e}", master_cf.display()));
        std::fs::write(config_dir.join("main.cf"), "").expect("writes main.cf");
        let maillog = base.join("maillog");
        let smtp_port = free_port();
        let policy = format!(
            "check_policy_service {{ inet:127.0.0.1:{policy_port}, timeout=5s, \
             {{ default_action = 451 4.3.5 Policy service unavailable }} }}"
        );
        let base_text = base.to_str().expect("a UTF-8 temp path");
        let main_cf = [
            format!("queue_directory = {}", queue_dir.display()),
            format!("data_directory = {base_text}/data"),
            format!("maillog_file = {}", maillog.display()),
            // Postfix writes its log only under an allowed prefix (/var by default).
            format!("maillog_file_prefixes = {base_text}"),
            "syslog_name = postfix-creditgate-e2e".to_owned(),
            "compatibility_level = 3.6".to_owned(),
            "myhostname = postfix.creditgate.test".to_owned(),
            "inet_interfaces = loopback-only".to_owned(),
            "inet_protocols = ipv4".to_owned(),
            "mynetworks = 127.0.0.0/8".to_owned(),
            // Every recipient is remote, so every message goes to the relayhost.
            "mydestination =".to_owned(),
            "alias_maps =".to_owned(),
            "alias_database =".to_owned(),
            format!("relayhost = [127.0.0.1]:{sink_port}"),
            "smtp_dns_support_level = disabled".to_owned(),
            "smtpd_peername_lookup = no".to_owned(),
            // Relay permission comes from smtpd_relay_restrictions' default
            // (permit_mynetworks); the credit check must see every recipient.
            format!("smtpd_recipient_restrictions = {policy}"),
            format!("smtpd_end_of_data_restrictions = {policy}"),
        ];
        postconf(&config_dir, &[&["-e"], &as_strs(&main_cf)[..]].concat());
        postconf(&config_dir, &["-Fe", "*/*/chroot = n"]);
        // The machine's port 25 is not ours: the instance's only smtpd is on a
        // free loopback port.
        postconf(&config_dir, &["-MX", "smtp/inet"]);
        postconf(
            &config_dir,
            &[
                "-Me",
                &format!("127.0.0.1:{smtp_port}/inet = 127.0.0.1:{smtp_port} inet n - n - - smtpd"),
            ],
        );
        let mut instance = Postfix {
            config_dir,
            queue_dir,
            maillog,
            smtp_port,
            started: false,
        };
        let check = tool("postfix", &instance.config_dir, &["check"])
            .output()
            .expect("postfix check runs");
        assert!(check.status.success(), "postfix check: {}", show(&check));
        instance.started = true;
        let start = tool("postfix", &instance.config_dir, &["start"])
            .output()
            .expect("postfix start runs");
        assert!(
            start.status.success(),
            "postfix start (needs root): {}\nPostfix's log:\n{}",
            show(&start),
            instance.log()
        );
        wait_until_listening(smtp_port, "Postfix's smtpd", || None)
            .unwrap_or_else(|e| panic!("{e}\nPostfix's log:\n{}", instance.log()));
        instance
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.maillog).unwrap_or_default()
    }

    /// The instance's queue holds nothing: every accepted message was relayed, and
    /// nothing refused was kept (a `HOLD` or a deferral would show here).
    fn assert_queue_empty(&self) {
        let listed = tool("postqueue", &self.config_dir, &["-j"])
            .output()
            .expect("postqueue runs");
        assert!(listed.status.success(), "postqueue: {}", show(&listed));
        assert!(
            listed.stdout.is_empty(),
            "Postfix's queue is not empty: {}\nPostfix's log:\n{}",
            String::from_utf8_lossy(&listed.stdout),
            self.log()
        );
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if !self.started {
            return;
        }
        // `postfix stop` signals master, waits up to 5 s, then kills its process
        // group; it fails only when no master runs.
        let stopped = tool("postfix", &self.config_dir, &["stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if stopped.is_ok_and(|s| s.success()) {
            return;
        }
        // Belt and braces for a half-started instance: master is a session
        // leader, so its pid is its daemons' process group.
        let pid = std::fs::read_to_string(self.queue_dir.join("pid/master.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `PROGRAM -c DIR ARGS`: a Postfix program on the instance configured in
/// `config_dir`.
fn tool(program: &str, config_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(sbin(program));
    command.arg("-c").arg(config_dir).args(args);
    command
}

/// Runs `postconf -c DIR ARGS` and insists that it succeeds.
fn postconf(config_dir: &Path, args: &[&str]) {
    let out = tool("postconf", config_dir, args)
        .output()
        .expect("postconf runs");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "postconf {args:?}: {}",
        show(&out)
    );
}

/// The path of a Postfix program, looked for on `$PATH` and in the sbin
/// directories a non-root `$PATH` may lack. Fails the test, saying how to install
/// Postfix, when it is missing.
fn sbin(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found: this test needs Postfix (3.x) installed, without \
                 configuring the machine's own. On Debian or Ubuntu, as root:\n  \
                 echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections\n  \
                 DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix\n\
                 (.ci/run does this on a fresh machine)"
            )
        })
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn as_strs(strings: &[String]) -> Vec<&str> {
    strings.iter().map(String::as_str).collect()
}

/// A command's status and output, for failure messages.
fn show(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
