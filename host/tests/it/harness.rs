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
    command.current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
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
        fn try_lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.$file.try_lock_range(start, end)
        }
        fn try_lock_shared_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.$file.try_lock_shared_range(start, end)
        }
        fn lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.$file.lock_range(start, end)
        }
        fn lock_shared_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.$file.lock_shared_range(start, end)
        }
        fn unlock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.$file.unlock_range(start, end)
        }
        fn query_lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.$file.query_lock_range(start, end)
        }
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
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("a tokio runtime");
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
