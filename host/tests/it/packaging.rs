//! What ships besides the binary: the systemd unit, the container image
//! definition, and the completions and manual page the binary generates.

use std::process::Command;

use crate::harness;

fn creditgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_creditgate"))
        .args(args)
        .output()
        .expect("creditgate runs")
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = harness::repo_text("packaging/creditgate.service");
    for line in [
        "Type=exec",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=creditgate",
        "ReadWritePaths=/var/lib/creditgate",
        "Environment=CREDITGATE_STORE=/var/lib/creditgate/creditgate.redb",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStartPre=/usr/bin/creditgate serve --check",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "{line} in the unit"
        );
    }
    // serve does not call sd_notify: Type=notify would never become ready.
    assert!(!unit.contains("Type=notify"));
    // The store must be where the state directory is.
    assert!(unit.contains("CREDITGATE_STORE=/var/lib/creditgate/"));

    // systemd-analyze checks that the binary exists: point it at the one built.
    let (_dir, path) = harness::temp_path("creditgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/creditgate", env!("CARGO_BIN_EXE_creditgate")),
    )
    .expect("unit copy");
    let verified = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (the Debian package `systemd`; .ci/test installs it)");
    let complaints = String::from_utf8_lossy(&verified.stderr);
    assert!(verified.status.success(), "{complaints}");
    // Unknown keys and bad values are only warnings: there must be none.
    assert_eq!(
        complaints.trim(),
        "",
        "systemd-analyze verify found problems"
    );
}

#[test]
fn the_example_config_passes_serve_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let o = Command::new(env!("CARGO_BIN_EXE_creditgate"))
        .args(["serve", "--check", "--config"])
        .arg(harness::repo().join("packaging/creditgate.toml"))
        .env("CREDITGATE_STORE", dir.path().join("cg.redb"))
        .current_dir(dir.path())
        .output()
        .expect("runs");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The container build cannot run here (no container engine, and no image
/// registry reachable), so its definition is checked for what would break it.
#[test]
fn the_containerfile_is_consistent_with_the_repository() {
    let text = harness::repo_text("packaging/Containerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    for from in &froms {
        let image = from.split_whitespace().nth(1).expect("an image");
        let (_, tag) = image.rsplit_once(':').expect("a tag");
        // Pinned: an explicit version, never a moving `latest` or bare name.
        assert!(
            tag.chars().next().is_some_and(|c| c.is_ascii_digit()) && tag.contains('.'),
            "{image} is not pinned to a version"
        );
    }
    // The build stage's Rust is the workspace's.
    let manifest = harness::repo_text("Cargo.toml");
    let rust = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("rust-version");
    assert!(
        froms[0].contains(&format!("rust:{rust}")),
        "{} for rust {rust}",
        froms[0]
    );

    // Every COPY from the build context names something in the repository, and
    // every workspace member is copied (cargo needs all their manifests).
    let mut copied = Vec::new();
    for line in lines.iter().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        if words.iter().any(|w| w.starts_with("--from=")) {
            continue;
        }
        for source in &words[..words.len() - 1] {
            assert!(
                harness::repo().join(source).exists(),
                "COPY {source}: not in the repository"
            );
            copied.push(*source);
        }
    }
    for member in ["guest", "host", "benches", "wit", "policies", "Cargo.lock"] {
        assert!(
            copied.contains(&member),
            "{member} is not copied into the build stage"
        );
    }
    // The binary the runtime stage takes is the one the build stage makes.
    assert!(text.contains("cargo build --release --locked -p creditgate --bin creditgate"));
    assert!(
        text.contains("COPY --from=build /src/target/release/creditgate /usr/local/bin/creditgate")
    );
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/creditgate\"]"));
    // Not root at run time.
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(user != "root" && user != "0", "runs as {user}");
}

#[test]
fn the_bash_completion_names_every_subcommand() {
    let o = creditgate(&["completions", "bash"]);
    harness::assert_exit(&o, 0);
    let script = String::from_utf8_lossy(&o.stdout);
    let help = String::from_utf8_lossy(&creditgate(&["--help"]).stdout).into_owned();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("a command list")
        .split("Options:")
        .next()
        .expect("commands")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(commands.len() >= 12, "{commands:?}");
    for command in commands {
        assert!(
            script.contains(command),
            "{command} missing from the bash completion"
        );
    }
    for shell in ["zsh", "fish"] {
        let o = creditgate(&["completions", shell]);
        harness::assert_exit(&o, 0);
        assert!(String::from_utf8_lossy(&o.stdout).contains("creditgate"));
    }
}

#[test]
fn the_manual_page_renders() {
    let o = creditgate(&["man"]);
    harness::assert_exit(&o, 0);
    let roff = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        roff.starts_with(".ie \\n(.g .ds Aq") || roff.contains(".TH creditgate 1"),
        "{roff}"
    );
    harness::assert_has(&roff, ".TH creditgate");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(roff.contains(section), "{section} in the page");
    }
    // Every request line is one roff knows the shape of.
    for line in roff.lines().filter(|l| l.starts_with('.')) {
        let request = line.split_whitespace().next().unwrap_or(".");
        assert!(
            request.len() >= 2
                && request[1..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "\\(\"'".contains(c)),
            "{line}"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let o = creditgate(&["man", "--dir", dir.path().to_str().expect("utf-8")]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for page in [
        "creditgate.1",
        "creditgate-serve.1",
        "creditgate-account-subscribe.1",
    ] {
        assert!(dir.path().join(page).exists(), "{page}");
    }
    // Where man is installed, it formats the page without complaint.
    if Command::new("man")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let page = dir.path().join("creditgate.1");
        let shown = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(&page)
            .env("MANWIDTH", "80")
            .output()
            .expect("man runs");
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(
            shown.status.success(),
            "{}",
            String::from_utf8_lossy(&shown.stderr)
        );
        harness::assert_has(&text, "creditgate");
        harness::assert_has(&text, "SUBCOMMANDS");
    }
}
