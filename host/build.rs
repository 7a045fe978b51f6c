//! Builds the policy component from `guest/` for `wasm32-wasip2` and hands its path
//! to the host as `CREDITGATE_GUEST_WASM`, so that `cargo build`, `cargo run` and
//! `cargo test` need no separate step. Also builds the misbehaving test component
//! (`tests/guests/hostile`, as `CREDITGATE_HOSTILE_WASM`) and the one with other
//! rules (`tests/guests/domains`, as `CREDITGATE_DOMAINS_WASM`) for the host's tests.
//!
//! The nested cargo uses its own target directory (beside the outer one) because
//! the outer build holds the lock on its own; and the `guest` profile (LTO, abort
//! on panic) so that those settings never reach wasmtime's own build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace")
        .to_path_buf();
    for watched in [
        "guest/src",
        "guest/Cargo.toml",
        "host/tests/guests",
        "wit",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    ensure_target_installed();
    let target_dir = guest_target_dir();
    for (package, env_name) in [
        ("creditgate-guest", "CREDITGATE_GUEST_WASM"),
        ("creditgate-hostile-guest", "CREDITGATE_HOSTILE_WASM"),
        ("creditgate-domains-guest", "CREDITGATE_DOMAINS_WASM"),
    ] {
        let wasm = build_component(&root, &target_dir, package);
        println!("cargo:rustc-env={env_name}={}", wasm.display());
    }
}

fn build_component(root: &Path, target_dir: &Path, package: &str) -> PathBuf {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(root)
        .args(["rustc", "--package", package, "--crate-type", "cdylib"])
        .args(["--target", TARGET, "--profile", "guest", "--locked"])
        .arg("--target-dir")
        .arg(target_dir)
        // A smaller shadow stack than Rust's 1 MiB default: fresh instances fault in
        // fewer pages, and the engine's deepest recursion (TOML nesting) stays far below.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Clink-arg=-zstack-size=262144")
        // Settings the outer build passes to its build scripts that must not leak
        // into a build for another target (clippy's driver, the host's flags).
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR");
    let status = build
        .status()
        .expect("failed to run cargo for a guest component");
    assert!(status.success(), "building {package} for {TARGET} failed");

    let wasm = target_dir
        .join(TARGET)
        .join("guest")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(
        wasm.exists(),
        "the build of {package} did not produce {}",
        wasm.display()
    );
    wasm
}

/// `<outer target dir>/guest`: OUT_DIR is `<target>/<profile>/build/<pkg>-<hash>/out`.
/// Shared by debug, release and clippy builds, which all want the same component.
fn guest_target_dir() -> PathBuf {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    out_dir
        .ancestors()
        .nth(4)
        .map(|target| target.join("guest"))
        .unwrap_or_else(|| out_dir.join("guest"))
}

/// A fresh machine has rustup's Rust but not the wasm target: add it, the way
/// `rust-toolchain.toml` would if auto-install were on.
fn ensure_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = |sysroot: &Path| {
        sysroot
            .join("lib/rustlib")
            .join(TARGET)
            .join("lib")
            .is_dir()
    };
    if sysroot.as_deref().is_some_and(installed) {
        return;
    }
    println!("cargo:warning=installing the {TARGET} target with rustup (once)");
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        added,
        "the {TARGET} target is missing and `rustup target add {TARGET}` failed; install it and rebuild"
    );
}
