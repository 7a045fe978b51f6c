//! The server under test: its files (store, policy, config, component cache,
//! log), `serve` spawned on them and killed or stopped, and the crash images
//! copied after each kill.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

use creditgate::store::journal_path;
use creditgate_testkit::serve::ServeProcess;

use super::oracle::policy_toml;
use super::{WAIT, WORKERS};

/// Without this, Postfix would hear `DUNNO` for an unknown account too, and an
/// allowed charge could not be told from an account lost in a crash.
pub(super) const SERVE_CONFIG: &str = "[postfix.actions]\nunknown_account = \"fail_closed\"\n";

pub(super) struct Files {
    pub(super) store: PathBuf,
    pub(super) policy: PathBuf,
    pub(super) config: PathBuf,
    pub(super) cache: PathBuf,
    pub(super) log: PathBuf,
    pub(super) dir: PathBuf,
}

impl Files {
    pub(super) fn new(dir: &Path) -> Files {
        let files = Files {
            store: dir.join("gateway.redb"),
            policy: dir.join("policy.toml"),
            config: dir.join("serve.toml"),
            cache: dir.join("cache"),
            log: dir.join("serve.log"),
            dir: dir.to_owned(),
        };
        std::fs::write(&files.policy, policy_toml()).expect("writes the policy");
        std::fs::write(&files.config, SERVE_CONFIG).expect("writes the config");
        files
    }

    pub(super) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The CLI on the store, with the test's policy and component cache.
    pub(super) fn cli(&self, args: &[&str]) -> Value {
        let output = Command::new(env!("CARGO_BIN_EXE_creditgate"))
            .args(args)
            .arg("--store")
            .arg(&self.store)
            .arg("--policy")
            .arg(&self.policy)
            .env("CREDITGATE_CACHE_DIR", &self.cache)
            .stdin(Stdio::null())
            .output()
            .expect("creditgate runs");
        assert!(
            output.status.success(),
            "creditgate {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "creditgate {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

/// A running `serve`; killed if the test leaves it behind.
pub(super) struct Serve {
    pub(super) process: ServeProcess,
    pub(super) http: SocketAddr,
    pub(super) postfix: SocketAddr,
    pub(super) spawned: Instant,
}

/// `serve` on the test's files, on ports it binds itself, not waited for: a
/// kill may land anywhere in its start-up.
pub(super) fn spawn(files: &Files) -> ServeProcess {
    ServeProcess::builder(env!("CARGO_BIN_EXE_creditgate"), &files.log)
        .arg("--config")
        .arg(&files.config)
        .arg("--store")
        .arg(&files.store)
        .arg("--policy")
        .arg(&files.policy)
        .args(["--workers", WORKERS])
        .env("CREDITGATE_CACHE_DIR", &files.cache)
        // Every refusal is logged at info; the listeners' lines say where serve
        // listens, and whether a start-up kill landed before it did.
        .env("RUST_LOG", "warn,creditgate::serve=info")
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `serve` and waits until it listens.
pub(super) fn start(files: &Files) -> Serve {
    let spawned = Instant::now();
    let mut process = spawn(files);
    process
        .wait_listening(WAIT)
        .unwrap_or_else(|e| panic!("serve did not start: {e}"));
    Serve {
        http: process.http_addr(),
        postfix: process.postfix_addr(),
        process,
        spawned,
    }
}

/// SIGKILL, then the exit (bounded).
pub(super) fn kill(serve: ServeProcess) -> Instant {
    let killed = Instant::now();
    serve.kill();
    killed
}

/// Copies the store and its journal: the image a restart recovers from.
pub(super) fn copy_image(files: &Files, k: u64) -> PathBuf {
    let image = files.dir.join(format!("kill-{k}.redb"));
    std::fs::copy(&files.store, &image).expect("copies the crash image");
    let journal = journal_path(&files.store);
    if journal.exists() {
        std::fs::copy(&journal, journal_path(&image)).expect("copies the crash image's journal");
    }
    image
}

pub(super) fn image_label(image: &Path) -> String {
    format!(
        "image after {}",
        image
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("a kill")
    )
}

/// SIGTERM, and a clean exit (bounded).
pub(super) fn terminate(serve: Serve) {
    let (status, log) = serve.process.terminate();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "serve's exit after SIGTERM:\n{log}"
    );
}
