//! Shared set-up: one compiled component for the whole test binary, and workers
//! over fresh stores.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use creditgate::bindings::Decision;
use creditgate::replay::parse_event;
use creditgate::runtime::{ComponentSource, Runtime, RuntimeConfig, Worker};
use creditgate::store::{MemoryStore, Store};
use creditgate::wire::Outcome;

/// The shipped Smartlead policy.
pub const SMARTLEAD: &str = include_str!("../../../policies/smartlead.toml");

/// Compiling the component takes a few hundred ms: do it once per test binary.
pub fn runtime() -> &'static Runtime {
    shared()
}

/// The same runtime, for what keeps one (a gateway).
pub fn shared_runtime() -> Arc<Runtime> {
    shared().clone()
}

fn shared() -> &'static Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        // Tests run in parallel in a debug build: a wall-clock budget of a few ms
        // would trip on preemption, which is not what these tests are about.
        let config = RuntimeConfig {
            decision_budget: Duration::from_secs(2),
            ..RuntimeConfig::default()
        };
        Arc::new(Runtime::new(&ComponentSource::Builtin, config).expect("built-in component loads"))
    })
}

/// A worker with `policy` loaded over `store`.
pub fn worker_on(store: Arc<dyn Store>, policy: &str) -> Worker {
    runtime().worker(store, policy).expect("policy loads").0
}

/// A worker with `policy` loaded over a fresh in-memory store.
pub fn worker(policy: &str) -> Worker {
    worker_on(Arc::new(MemoryStore::new()), policy)
}

/// Decides one event line (replay format) and returns the decision.
pub fn decide(worker: &mut Worker, line: &str) -> Decision {
    let event = parse_event(line).unwrap_or_else(|e| panic!("bad test event {line}: {e}"));
    worker
        .decide(&event.request, event.at)
        .unwrap_or_else(|e| panic!("no decision for {line}: {e}"))
}

/// Decides one event line and returns its replay output line.
pub fn outcome(worker: &mut Worker, line: &str) -> String {
    serde_json::to_string(&Outcome::from(&decide(worker, line))).expect("serializes")
}

/// The `creditgate` binary, run from the repository's root.
pub fn creditgate_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_creditgate"));
    command.current_dir(repo());
    command
}

/// Runs `command` with `stdin` as its standard input; collects its output.
pub fn run_with_stdin(mut command: std::process::Command, stdin: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("creditgate runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("stdin written");
    child.wait_with_output().expect("creditgate finishes")
}

/// The file-locking methods of a redb `StorageBackend` wrapper, passed on to
/// the wrapped backend in field `$file`: test wrappers change how bytes are
/// written and synced, never how the file is locked.
#[macro_export]
macro_rules! delegate_locks {
    ($file:ident) => {
        $crate::delegate_locks!(@each $file:
            try_lock_range -> bool,
            try_lock_shared_range -> bool,
            lock_range -> (),
            lock_shared_range -> (),
            unlock_range -> (),
            query_lock_range -> bool,
        );
    };
    (@each $file:ident: $($method:ident -> $answer:ty,)*) => {
        $(
            fn $method(
                &self,
                start: std::ops::Bound<u64>,
                end: std::ops::Bound<u64>,
            ) -> Result<$answer, redb::BackendError> {
                self.$file.$method(start, end)
            }
        )*
    };
}

/// The server of `creditgate serve` ([`creditgate::serve::Server`]) run in this
/// process, both listeners on `127.0.0.1:0`: for the tests that need no process
/// boundary (no signal, no crash, no lock held by another process). Shut down
/// (everything durable, the store closed) when stopped or dropped.
pub struct InProcess {
    tokio: tokio::runtime::Runtime,
    server: Option<creditgate::serve::Server>,
}

impl InProcess {
    /// Starts a server on `store` with `overrides` (their listeners, when unset,
    /// on `127.0.0.1:0`); panics with the reason if it does not start.
    pub fn start(overrides: creditgate::serve::Overrides, store: Arc<dyn Store>) -> InProcess {
        InProcess::start_on(2, overrides, store)
    }

    /// [`InProcess::start`] on a runtime of `threads` worker threads.
    pub fn start_on(
        threads: usize,
        overrides: creditgate::serve::Overrides,
        store: Arc<dyn Store>,
    ) -> InProcess {
        use creditgate::serve::{Config, Listen, Server};
        let any_port = Listen::At(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let overrides = creditgate::serve::Overrides {
            postfix_listen: overrides.postfix_listen.or(Some(any_port)),
            http_listen: overrides.http_listen.or(Some(any_port)),
            ..overrides
        };
        let config = Config::load(None, overrides).unwrap_or_else(|e| panic!("config: {e}"));
        let tokio = tokio_runtime_on(threads);
        let server = tokio
            .block_on(Server::start(&config, store))
            .unwrap_or_else(|e| panic!("serve starts: {e}"));
        InProcess {
            tokio,
            server: Some(server),
        }
    }

    fn server(&self) -> &creditgate::serve::Server {
        self.server.as_ref().expect("running")
    }

    /// `http://127.0.0.1:PORT` of the HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.server().http_addr().expect("http is on"))
    }

    /// The HTTP API's address; panics when it is off.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.server().http_addr().expect("http is on")
    }

    /// The Postfix policy listener's address; panics when it is off.
    pub fn postfix_addr(&self) -> std::net::SocketAddr {
        self.server()
            .postfix_addr()
            .expect("the postfix listener is on")
    }

    /// The gateway the listeners decide through.
    pub fn gateway(&self) -> &Arc<creditgate::gateway::Gateway> {
        self.server().gateway()
    }

    /// Stops the server: requests in flight answered, everything durable, the
    /// store closed once the caller's handles to it are gone.
    pub fn stop(mut self) -> creditgate::serve::Stopped {
        let server = self.server.take().expect("running");
        let stopped = self.tokio.block_on(server.shutdown());
        assert!(stopped.failure.is_none(), "{:?}", stopped.failure);
        stopped
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.tokio.block_on(server.shutdown());
        }
    }
}

/// A tokio runtime of two workers (as small as a gateway host gets): what every
/// server in this binary runs on. An async test asks for the same runtime with
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`.
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio_runtime_on(2)
}

/// A multi-threaded tokio runtime of `threads` workers, with I/O and timers.
pub fn tokio_runtime_on(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// What [`Serving::start`] serves: handed the listener, the gateway and the
/// signal to stop, it returns the serving future.
pub type Serve = Box<
    dyn FnOnce(
            tokio::net::TcpListener,
            Arc<creditgate::gateway::Gateway>,
            tokio::sync::oneshot::Receiver<()>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send,
>;

/// A gateway served by one front end on a thread of its own (its own
/// [`tokio_runtime`]), on `127.0.0.1:0` bound as `serve` binds (with its
/// backlog). Dropped: the front end told to stop, its thread joined, the
/// gateway shut down.
pub struct Serving {
    pub addr: std::net::SocketAddr,
    pub gateway: Arc<creditgate::gateway::Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Serving {
    /// Serves `gateway` with `serve`; returns once it listens.
    pub fn start(gateway: Arc<creditgate::gateway::Gateway>, serve: Serve) -> Serving {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, addr) = std::sync::mpsc::channel();
        let served = gateway.clone();
        let thread = std::thread::spawn(move || {
            tokio_runtime().block_on(async move {
                let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                let listener = creditgate::serve::bind_tcp(any_port).expect("binds");
                let _ = bound.send(listener.local_addr().expect("address"));
                serve(listener, served, stopped).await;
            });
        });
        let addr = (addr.recv_timeout(Duration::from_secs(10))).expect("the server listens");
        Serving {
            addr,
            gateway,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Serves the HTTP API of `gateway`, reloading with `reload`.
    pub fn http(
        gateway: Arc<creditgate::gateway::Gateway>,
        reload: creditgate::http::Reloader,
        options: creditgate::http::HttpOptions,
    ) -> Serving {
        Serving::start(
            gateway,
            Box::new(move |listener, gateway, stopped| {
                let router = creditgate::http::router(gateway, reload, &options);
                Box::pin(async move {
                    creditgate::http::serve_http(listener, router, &options, async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serves");
                })
            }),
        )
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.gateway.shutdown();
    }
}

/// HTML text back to what it escapes (the dashboard's five entities).
pub fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// A subscription of `account` to `plan`, its cycle anchored at the decision.
pub fn subscription(account: &str, plan: &str) -> creditgate::request::Request {
    creditgate::request::Request::Subscribe {
        account: account.into(),
        plan: plan.into(),
        anchor: None,
    }
}

/// The words of a command line as a test would type it (no quoting: for
/// arguments without spaces).
pub fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Runs `command` to its end; panics, naming the command and with its stderr,
/// unless it succeeds.
pub fn succeeds(command: &mut std::process::Command) -> std::process::Output {
    let output = command.output().expect("creditgate runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A fresh temporary directory and the path of `name` in it (not created): the
/// directory goes when the first is dropped.
pub fn temp_path(name: impl AsRef<std::path::Path>) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    (dir, path)
}

/// The `account` of each object in `list`, a JSON array of accounts (panics
/// when it is not an array).
pub fn account_names(list: &serde_json::Value) -> Vec<&str> {
    let list = list.as_array().expect("an array of accounts");
    list.iter().filter_map(|a| a["account"].as_str()).collect()
}

/// A charge of `cost` email credits to `account`, with no message id.
pub fn charge(account: &str, cost: u64) -> creditgate::request::Request {
    creditgate::request::Request::ChargeEmail {
        account: account.into(),
        cost,
        message_id: None,
    }
}

/// Adds 2 to `acme`'s counter `email/0` once under `key` with `fingerprint`,
/// the key kept until 5,000: the call the tests of markers written before they
/// carried a fingerprint (issue 13.2) make on each backend.
pub fn add_email_once(
    store: &dyn Store,
    key: &str,
    fingerprint: u64,
    now: i64,
) -> creditgate::bindings::CounterAdded {
    let once = creditgate::store::OnceKey {
        key,
        fingerprint,
        expires_at: 5_000,
    };
    let add = creditgate::store::CounterAdd {
        scope: "acme",
        guard: None,
        name: "email/0",
        amount: 2,
        limit: None,
        once: Some(once),
        expires_at: None,
        now,
    };
    store.counter_add(add).expect("counter_add")
}

/// Every (group, member) of `scope`, in the store's order.
pub fn memberships(store: &dyn Store, scope: &str) -> Vec<(String, String)> {
    let mut every = Vec::new();
    store
        .visit_members(scope, None, &mut |g, m| {
            every.push((g.to_owned(), m.to_owned()));
            true
        })
        .expect("visits the members");
    every
}

/// Writes `text` to the file `name` in `dir`; its path.
pub fn write_file(
    dir: &std::path::Path,
    name: impl AsRef<std::path::Path>,
    text: impl AsRef<[u8]>,
) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writes {}: {e}", path.display()));
    path
}

/// The text a command printed on one of its streams (lossy UTF-8).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that the command of `o` exited with `code`; the message shows its
/// stderr.
#[track_caller]
pub fn assert_exit(o: &std::process::Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}", text(&o.stderr));
}

/// Asserts that the command of `o` printed `needle` on stdout; the message
/// shows its stdout.
#[track_caller]
pub fn assert_stdout_has(o: &std::process::Output, needle: &str) {
    assert_has(&text(&o.stdout), needle);
}

/// Asserts that the command of `o` printed `needle` on stderr; the message
/// shows its stderr.
#[track_caller]
pub fn assert_stderr_has(o: &std::process::Output, needle: &str) {
    assert_has(&text(&o.stderr), needle);
}

/// The repository's root.
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The text of the file at `path` in the repository; panics naming it.
pub fn repo_text(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reads {path}: {e}"))
}

/// Asserts that `text` holds `needle`; the message shows `text`.
#[track_caller]
pub fn assert_has(text: &str, needle: &str) {
    assert!(text.contains(needle), "{text}");
}

/// Asserts that `text` starts with `prefix`; the message shows `text`.
#[track_caller]
pub fn assert_starts(text: &str, prefix: &str) {
    assert!(text.starts_with(prefix), "{text}");
}
