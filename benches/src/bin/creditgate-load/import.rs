//! `creditgate-load import`: a lead import of a random list, timed beside
//! `sort -u` of the same file in the same run.
//!
//! It writes a CSV of distinct random-looking addresses (seeded: the same list
//! for the same flags; see `creditgate_benches::addresses`), times `sort -u` on
//! it, then `creditgate leads import` of it into a fresh redb store beside it,
//! sampling the import's peak resident set as it runs. A second process then
//! reads the account's usage back from the file: every lead must be there once
//! the import has returned.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

/// What `creditgate-load import` measures.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Distinct addresses in the generated list.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    leads: u64,
    /// Seed of the generated list.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the list and the store go (a temporary directory in it, removed
    /// after). Default: the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The creditgate binary. Default: the one next to this binary, else
    /// `creditgate` on $PATH.
    #[arg(long, value_name = "PATH")]
    creditgate: Option<PathBuf>,
    /// `--batch` for `creditgate leads import`. Default: its own.
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Keep the list, the store and the import's log afterwards (their
    /// directory is printed), to look at them or import again by hand.
    #[arg(long)]
    keep: bool,
    /// Print the figures as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// The plan the importing account is on: room for every lead of the list, so
/// that the credit check runs on each and refuses none.
fn policy(leads: u64) -> String {
    format!(
        "[plans.import]\nlead_credits = {}\nemail_credits = 1\n",
        leads.saturating_mul(2).max(1)
    )
}

/// Runs the comparison and prints it; `Ok(false)` when the import's figures are
/// not the list's.
pub fn run(args: &ImportArgs) -> anyhow::Result<bool> {
    ensure!(args.leads > 0, "--leads must be at least 1");
    let creditgate = crate::spawn::creditgate_binary(args.creditgate.clone());
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("creditgate-load-import")
        .tempdir_in(&base)
        .with_context(|| format!("creating a directory in {}", base.display()))?;
    let csv = dir.path().join("leads.csv");
    let store = dir.path().join("import.redb");
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, policy(args.leads)).context("writing the policy")?;

    eprintln!(
        "creditgate-load: writing {} random addresses to {}",
        args.leads,
        csv.display()
    );
    let started = Instant::now();
    let file = std::fs::File::create(&csv).context("creating the CSV")?;
    let mut out = BufWriter::new(file);
    creditgate_benches::addresses::write_csv(&mut out, args.leads, args.seed)
        .and_then(|()| out.flush())
        .context("writing the CSV")?;
    drop(out);
    let generated = started.elapsed();
    let csv_bytes = std::fs::metadata(&csv)?.len();

    // The same file, already in the page cache for both.
    let sorted = dir.path().join("sorted.csv");
    let started = Instant::now();
    let sort = Command::new("sort")
        .arg("-u")
        .arg("-o")
        .arg(&sorted)
        .arg(&csv)
        .output()
        .context("running sort -u")?;
    let sort_time = started.elapsed();
    ensure!(
        sort.status.success(),
        "sort -u failed: {}",
        text(&sort.stderr)
    );
    let _ = std::fs::remove_file(&sorted);

    let cli = |args: &[&str]| -> anyhow::Result<Output> {
        let out = Command::new(&creditgate)
            .args(args)
            .arg("--store")
            .arg(&store)
            .arg("--policy")
            .arg(&policy_file)
            .output()
            .with_context(|| format!("running {}", creditgate.display()))?;
        ensure!(
            out.status.success(),
            "creditgate {} failed ({}): {}",
            args.join(" "),
            out.status,
            text(&out.stderr)
        );
        Ok(out)
    };
    cli(&["account", "subscribe", "acme", "--plan", "import"])?;

    eprintln!(
        "creditgate-load: importing them with {}",
        creditgate.display()
    );
    let mut import = Command::new(&creditgate);
    import
        .args(["leads", "import", "--account", "acme", "--campaign", "list"])
        .args(["--format", "json", "--store"])
        .arg(&store)
        .arg("--policy")
        .arg(&policy_file);
    if let Some(batch) = args.batch {
        import.arg("--batch").arg(batch.to_string());
    }
    import.arg(&csv);
    let log = dir.path().join("import.log");
    let started = Instant::now();
    let (out, peak) = run_sampling_rss(&mut import, &log)?;
    let import_time = started.elapsed();
    ensure!(
        out.status.success(),
        "creditgate leads import failed ({}): {}",
        out.status,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the import's JSON report")?;
    // Read back by another process, from the file alone.
    let shown = cli(&["account", "show", "acme", "--format", "json"])?;
    let usage: serde_json::Value =
        serde_json::from_slice(&shown.stdout).context("the account's JSON usage")?;
    let durable = usage
        .pointer("/usage/lead_credits/used")
        .or_else(|| usage.pointer("/lead_credits/used"))
        .and_then(serde_json::Value::as_u64);
    let store_bytes = std::fs::metadata(&store).map_or(0, |m| m.len());

    let figures = Figures {
        leads: args.leads,
        csv_bytes,
        generated,
        sort: sort_time,
        import: import_time,
        peak_rss: peak,
        store_bytes,
        uploaded: report["uploaded"].as_u64(),
        durable,
    };
    if args.json {
        println!("{}", figures.json());
    } else {
        print!("{}", figures.text());
    }
    if args.keep {
        eprintln!("creditgate-load: kept {}", dir.keep().display());
    }
    Ok(figures.uploaded == Some(args.leads) && figures.durable == Some(args.leads))
}

/// What one comparison measured.
#[derive(Debug)]
struct Figures {
    leads: u64,
    csv_bytes: u64,
    generated: Duration,
    sort: Duration,
    import: Duration,
    peak_rss: u64,
    store_bytes: u64,
    /// New contacts the import's report counts.
    uploaded: Option<u64>,
    /// Lead credits used, as another process reads them from the store after.
    durable: Option<u64>,
}

impl Figures {
    fn ratio(&self) -> f64 {
        self.import.as_secs_f64() / self.sort.as_secs_f64().max(1e-9)
    }

    fn text(&self) -> String {
        let mb = |b: u64| b as f64 / f64::from(1 << 20);
        let count = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        format!(
            "creditgate-load import: {} distinct random addresses ({:.1} MB of CSV, written in {:.2} s)\n\
             sort -u             {:>8.2} s\n\
             leads import        {:>8.2} s   {:.0} leads/s, {:.1}x sort -u\n\
             peak RSS            {:>8.1} MB  (the import process, sampled every 5 ms)\n\
             store file          {:>8.1} MB\n\
             uploaded            {:>10}   (the import's report)\n\
             durable             {:>10}   (lead credits used, read back by another process)\n",
            self.leads,
            mb(self.csv_bytes),
            self.generated.as_secs_f64(),
            self.sort.as_secs_f64(),
            self.import.as_secs_f64(),
            self.leads as f64 / self.import.as_secs_f64().max(1e-9),
            self.ratio(),
            mb(self.peak_rss),
            mb(self.store_bytes),
            count(self.uploaded),
            count(self.durable),
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "leads": self.leads,
            "csv_bytes": self.csv_bytes,
            "sort_seconds": self.sort.as_secs_f64(),
            "import_seconds": self.import.as_secs_f64(),
            "leads_per_second": self.leads as f64 / self.import.as_secs_f64().max(1e-9),
            "import_to_sort": self.ratio(),
            "peak_rss_bytes": self.peak_rss,
            "store_bytes": self.store_bytes,
            "uploaded": self.uploaded,
            "durable": self.durable,
        })
    }
}

/// Runs `command` to the end, its stderr to `log`, sampling its peak resident
/// set (`VmHWM`) every 5 ms; its output and that peak, in bytes.
fn run_sampling_rss(command: &mut Command, log: &Path) -> anyhow::Result<(Output, u64)> {
    let stderr = std::fs::File::create(log).context("creating the import's log")?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("starting the import")?;
    // Only the report goes to stdout, at the end: the pipe cannot fill before.
    let mut peak = 0;
    while child.try_wait()?.is_none() {
        if let Some(rss) = peak_rss(child.id()) {
            peak = peak.max(rss);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output()?;
    if peak == 0 {
        bail!("no VmHWM reading of the import process");
    }
    Ok((out, peak))
}

/// The peak resident set of a live process so far, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
