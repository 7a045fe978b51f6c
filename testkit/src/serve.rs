//! A spawned `creditgate serve`: started on ports it binds itself (`127.0.0.1:0`),
//! found from its log, stopped with SIGTERM as systemd would.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::http::Client;
use crate::{WAIT, process};

/// How a [`ServeProcess`] is started.
#[derive(Debug)]
pub struct ServeBuilder {
    command: Command,
    log: PathBuf,
    postfix: bool,
    http: bool,
    wait: Duration,
}

/// A running `creditgate serve`, killed if dropped before it is stopped.
#[derive(Debug)]
pub struct ServeProcess {
    child: Option<Child>,
    log: PathBuf,
    /// Which listeners it was started with.
    expect_postfix: bool,
    expect_http: bool,
    postfix: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

impl ServeBuilder {
    /// `program serve`, its stderr (the log) written to `log`. By default both
    /// listeners are on, stdin and stdout are null, and `$CREDITGATE_ADMIN_TOKEN`
    /// is removed (a private serve: the shell's token would change its routes).
    pub fn new(program: impl AsRef<OsStr>, log: impl Into<PathBuf>) -> ServeBuilder {
        let mut command = Command::new(program);
        command
            .arg("serve")
            .env_remove("CREDITGATE_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        ServeBuilder {
            command,
            log: log.into(),
            postfix: true,
            http: true,
            wait: WAIT,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.command.args(args);
        self
    }

    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(name, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.command.current_dir(dir);
        self
    }

    /// Whether the Postfix policy listener is on (`--postfix-listen
    /// 127.0.0.1:0`) or off.
    pub fn postfix(mut self, on: bool) -> Self {
        self.postfix = on;
        self
    }

    /// Whether the HTTP API is on (`--http-listen 127.0.0.1:0`) or off.
    pub fn http(mut self, on: bool) -> Self {
        self.http = on;
        self
    }

    /// How long serve may take to listen (default [`WAIT`]).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Starts serve and waits until every listener asked for is bound; panics
    /// with its log if it exits or never listens.
    pub fn start(self) -> ServeProcess {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ServeBuilder::start`], the failure returned with serve's log.
    pub fn try_start(self) -> Result<ServeProcess, String> {
        let wait = self.wait;
        let mut serve = self.spawn()?;
        serve.wait_listening(wait)?;
        Ok(serve)
    }

    /// Starts serve without waiting for it: for a test that kills it while it
    /// starts. [`ServeProcess::wait_listening`] waits.
    pub fn spawn(mut self) -> Result<ServeProcess, String> {
        let listen = |on: bool| if on { "127.0.0.1:0" } else { "off" };
        self.command
            .args(["--postfix-listen", listen(self.postfix)])
            .args(["--http-listen", listen(self.http)]);
        let log = File::create(&self.log)
            .map_err(|e| format!("cannot create {}: {e}", self.log.display()))?;
        let child = self
            .command
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {:?}: {e}", self.command.get_program()))?;
        Ok(ServeProcess {
            child: Some(child),
            log: self.log,
            expect_postfix: self.postfix,
            expect_http: self.http,
            postfix: None,
            http: None,
        })
    }
}

/// The first whitespace-separated word of `text` (JSON logs end a message at a
/// quote).
fn word(text: &str) -> Option<&str> {
    text.split([' ', '"', '\n'])
        .next()
        .filter(|w| !w.is_empty())
}

/// The address of the first `listening on ADDR...` line that `parse` reads an
/// address from.
fn listening(log: &str, parse: impl Fn(&str) -> Option<&str>) -> Option<SocketAddr> {
    log.match_indices("listening on ")
        .find_map(|(at, prefix)| parse(&log[at + prefix.len()..])?.parse().ok())
}

impl ServeProcess {
    /// A builder for `program serve` logging to `log`.
    pub fn builder(program: impl AsRef<OsStr>, log: impl Into<PathBuf>) -> ServeBuilder {
        ServeBuilder::new(program, log)
    }

    /// Waits up to `wait` until every listener serve was started with is bound
    /// (its `listening on` lines, polled every 5 ms); the error holds its log.
    pub fn wait_listening(&mut self, wait: Duration) -> Result<(), String> {
        let deadline = Instant::now() + wait;
        loop {
            let text = self.log_text();
            // `listening on 127.0.0.1:PORT (postfix policy)`; the unix socket's
            // and the HTTP API's lines do not parse as a socket address.
            self.postfix = listening(&text, word);
            self.http = listening(&text, |rest| word(rest)?.strip_prefix("http://"));
            if self.postfix.is_some() == self.expect_postfix
                && self.http.is_some() == self.expect_http
            {
                return Ok(());
            }
            if let Some(status) = self.try_wait() {
                return Err(format!("serve exited before listening: {status}\n{text}"));
            }
            if Instant::now() > deadline {
                return Err(format!("serve never listened within {wait:?}\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The Postfix policy listener's address; panics when it is off.
    pub fn postfix_addr(&self) -> SocketAddr {
        self.postfix
            .expect("serve was started with the postfix listener")
    }

    /// The HTTP API's address; panics when it is off.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.expect("serve was started with the http listener")
    }

    /// `http://HOST:PORT` of the HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// A client of the HTTP API.
    pub fn client(&self) -> Client {
        Client::new(self.http_url())
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What serve logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Sends `signal` (`HUP`, `STOP`, ...); panics if it cannot be sent.
    pub fn signal(&self, signal: &str) {
        assert!(
            process::signal(self.pid(), signal),
            "kill -{signal} {}",
            self.pid()
        );
    }

    /// Whether serve has exited, and how.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok()?
    }

    /// Stops serve with SIGTERM and waits for it (bounded by [`WAIT`]: killed
    /// past it); its exit status (None if it had to be killed) and its log.
    pub fn terminate(mut self) -> (Option<ExitStatus>, String) {
        let status = match self.child.take() {
            Some(mut child) => process::terminate(&mut child, WAIT),
            None => None,
        };
        (status, self.log_text())
    }

    /// Kills serve at once (SIGKILL: a crash, nothing drained); its log.
    pub fn kill(mut self) -> String {
        self.kill_now();
        self.log_text()
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A Postfix policy request at `state` from `account` (SASL), with every
/// attribute Postfix sends and then `extra`, ending in the blank line.
pub fn postfix_request(state: &str, account: &str, extra: &[(&str, &str)]) -> String {
    let mut text = format!(
        "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
         client_address=127.0.0.1\nsasl_username={account}\nsender=al@example.com\n\
         recipient=bo@example.org\n"
    );
    for (name, value) in extra {
        text.push_str(&format!("{name}={value}\n"));
    }
    text.push('\n');
    text
}

/// One Postfix policy request (`name=value` lines and the blank line that ends
/// them) on a fresh connection to `addr`; the reply's attributes, trimmed
/// (`action=DUNNO`). Panics when no whole reply comes within [`WAIT`].
pub fn policy_request(addr: SocketAddr, request: &str) -> String {
    let stream = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connects to the policy listener {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).expect("sets a timeout");
    policy_exchange(stream, request)
}

/// One Postfix policy request on `stream`, a connection to a policy listener
/// (TCP or unix, its read timeout set); the reply's attributes, trimmed.
pub fn policy_exchange(mut stream: impl std::io::Read + std::io::Write, request: &str) -> String {
    stream
        .write_all(request.as_bytes())
        .expect("writes the request");
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    while !reply.ends_with(b"\n\n") {
        let n = stream.read(&mut buf).expect("a reply in time");
        assert!(n > 0, "closed without a reply");
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&reply).trim_end().to_owned()
}

/// The arguments of `--store PATH --policy PATH`, the pair most tests pass.
pub fn store_and_policy(store: impl Into<OsString>, policy: impl Into<OsString>) -> [OsString; 4] {
    [
        "--store".into(),
        store.into(),
        "--policy".into(),
        policy.into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_text_and_json_logs() {
        let text = "2026-12-06T23:00:00Z  INFO creditgate::serve: listening on 127.0.0.1:4100 \
                    (postfix policy) workers=4 policy=p.toml\n\
                    2026-12-06T23:00:00Z  INFO creditgate::serve: listening on http://127.0.0.1:4200\n";
        let postfix = listening(text, word);
        assert_eq!(postfix, Some("127.0.0.1:4100".parse().expect("address")));
        let http = listening(text, |rest| word(rest)?.strip_prefix("http://"));
        assert_eq!(http, Some("127.0.0.1:4200".parse().expect("address")));

        let json = r#"{"fields":{"message":"listening on http://127.0.0.1:4300"}}"#;
        let http = listening(json, |rest| word(rest)?.strip_prefix("http://"));
        assert_eq!(http, Some("127.0.0.1:4300".parse().expect("address")));
        assert_eq!(listening("nothing yet", word), None);
        assert_eq!(
            listening("listening on unix:/run/cg.sock (postfix policy)", word),
            None
        );
    }
}
