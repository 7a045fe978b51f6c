//! `creditgate leads ... --server`: lead imports and listings asked of a running
//! gateway, and `leads campaigns` (from the store or a gateway).
//!
//! An import reads the CSV here, exactly as a local import does
//! ([`import::read_addresses`]), and posts its addresses in batches of at most
//! [`MAX_LEADS_PER_REQUEST`] (the route's limit), adding up the gateway's answers
//! into the report a local import prints. Each batch is durable when its answer
//! arrives; an import cut short is completed by running it again, as locally.

use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher as _, RandomState};
use std::io::{self, BufRead, BufReader, BufWriter, Write as _};

use anyhow::Context as _;
use serde::Deserialize;

use creditgate::http::MAX_LEADS_PER_REQUEST;
use creditgate::import::{self, INVALID_ROWS_SHOWN, ImportReport, InvalidReason, InvalidRow};
use creditgate::request::Request;
use creditgate::wire::CreditsJson;

use super::account::{AccountView, account_path};
use super::leads::{ImportArgs, ListArgs, text_report};
use super::remote::{Server, escape};
use super::{Denied, Exit, Format, Place};

/// Most bytes of addresses per request: half the gateway's default body limit,
/// so that a batch of long addresses is cut short rather than refused.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The answer to `POST .../leads` (only what the report needs).
#[derive(Debug, Deserialize)]
struct LeadsAnswer {
    results: Vec<LeadResultJson>,
    lead_credits: Option<CreditsAnswer>,
}

#[derive(Debug, Deserialize)]
struct LeadResultJson {
    outcome: String,
}

#[derive(Debug, Deserialize)]
struct CreditsAnswer {
    used: u64,
    limit: super::account::LimitView,
}

impl From<&CreditsAnswer> for CreditsJson {
    fn from(c: &CreditsAnswer) -> Self {
        CreditsJson {
            used: c.used,
            limit: c.limit.count().into(),
            resets_at: None,
        }
    }
}

pub fn import(server: &Server, args: &ImportArgs) -> anyhow::Result<Exit> {
    let batch_size = args.batch.min(MAX_LEADS_PER_REQUEST);
    let stdin = args.file.as_os_str() == "-";
    let name = if stdin {
        "stdin".to_string()
    } else {
        args.file.display().to_string()
    };
    let input: Box<dyn BufRead> = if stdin {
        Box::new(io::stdin().lock())
    } else {
        let file = File::open(&args.file).with_context(|| format!("cannot read {name}"))?;
        Box::new(BufReader::with_capacity(64 * 1024, file))
    };
    // An unknown account is refused before the file is read, as locally.
    let before: AccountView = server.get(&account_path(&args.account, "usage"))?;
    let mut import = Batches {
        server,
        path: account_path(
            &args.account,
            &format!("campaigns/{}/leads", escape(&args.campaign)),
        ),
        report: ImportReport {
            account: args.account.clone(),
            campaign: args.campaign.clone(),
            lead_credits: Some(CreditsJson {
                used: before.lead_credits.used,
                limit: before.lead_credits.limit.count().into(),
                resets_at: None,
            }),
            ..ImportReport::default()
        },
        emails: Vec::new(),
        lines: Vec::new(),
        bytes: 0,
        seen: HashSet::new(),
        hasher: RandomState::new(),
    };
    let mut failure: Option<anyhow::Error> = None;
    let options = import::ImportOptions {
        column: args.column.clone(),
        delimiter: args.delimiter,
        ..import::ImportOptions::new(&args.account, &args.campaign, 0)
    };
    let read = import::read_addresses(input, &options, &mut |line, email| {
        match email {
            Ok(email) => {
                import.bytes += email.len();
                import.emails.push(email);
                import.lines.push(line);
                let full = import.emails.len() >= batch_size || import.bytes >= MAX_BATCH_BYTES;
                if full && let Err(e) = import.flush() {
                    failure = Some(e);
                    // Stops the reading; `failure` says why.
                    return Err(import::ImportError::BatchSize(0));
                }
            }
            Err(reason) => invalid(&mut import.report, line, reason),
        }
        Ok(())
    });
    if let Some(e) = failure {
        return Err(e.context(name));
    }
    match read {
        Ok(rows) => {
            import.report.rows = rows;
            import.flush().map_err(|e| e.context(name.clone()))?;
        }
        Err(e) => {
            // What was read before a read error is good: send it first.
            import.flush().map_err(|e| e.context(name.clone()))?;
            return Err(anyhow::Error::new(e).context(name));
        }
    }
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&import.report)?),
        Format::Text => print!("{}", text_report(&name, &import.report)),
    }
    Ok(Exit::Success)
}

/// Counts an invalid row, keeping the lowest line numbers in order.
fn invalid(report: &mut ImportReport, line: u64, reason: InvalidReason) {
    report.invalid += 1;
    let at = report.invalid_rows.partition_point(|r| r.line < line);
    if at < INVALID_ROWS_SHOWN {
        report.invalid_rows.insert(at, InvalidRow { line, reason });
        report.invalid_rows.truncate(INVALID_ROWS_SHOWN);
    }
}

struct Batches<'s> {
    server: &'s Server,
    path: String,
    report: ImportReport,
    emails: Vec<String>,
    lines: Vec<u64>,
    bytes: usize,
    /// Fingerprints of the addresses earlier batches sent: a later batch's
    /// "already in this campaign" for one of them is a duplicate in the file.
    /// (The policy may deem two spellings one contact; the gateway tells those
    /// apart within a batch, this only across batches for the same spelling.)
    seen: HashSet<u64>,
    hasher: RandomState,
}

impl Batches<'_> {
    fn flush(&mut self) -> anyhow::Result<()> {
        let (Some(&first), Some(&last)) = (self.lines.first(), self.lines.last()) else {
            return Ok(());
        };
        let emails = std::mem::take(&mut self.emails);
        let lines = std::mem::take(&mut self.lines);
        self.bytes = 0;
        let answer: LeadsAnswer = self
            .server
            .post(&self.path, &serde_json::json!({ "emails": emails }))
            .with_context(|| {
                format!(
                    "lines {first} to {last}: no answer ({} row(s) before them were processed; \
                     importing the file again completes the import, charging nothing twice)",
                    self.report.classified()
                )
            })?;
        anyhow::ensure!(
            answer.results.len() == emails.len(),
            "lines {first} to {last}: the gateway answered {} result(s) for {} address(es)",
            answer.results.len(),
            emails.len()
        );
        for ((email, line), result) in emails.iter().zip(&lines).zip(&answer.results) {
            let key = self.hasher.hash_one(email.trim().to_lowercase());
            let r = &mut self.report;
            match result.outcome.as_str() {
                "uploaded" => r.uploaded += 1,
                "already_in_campaign" if self.seen.contains(&key) => r.duplicates_in_file += 1,
                "already_in_campaign" => r.already_in_campaign += 1,
                "in_other_campaign" => r.in_other_campaign += 1,
                "duplicate_in_request" => r.duplicates_in_file += 1,
                "invalid_email" => invalid(r, *line, InvalidReason::InvalidEmail),
                "lead_credits_exhausted" => r.credits_exhausted += 1,
                other => {
                    anyhow::bail!("line {line}: the gateway answered an unknown outcome {other:?}")
                }
            }
            if result.outcome != "invalid_email" && result.outcome != "lead_credits_exhausted" {
                self.seen.insert(key);
            }
        }
        if let Some(credits) = &answer.lead_credits {
            self.report.lead_credits = Some(credits.into());
        }
        Ok(())
    }
}

/// One lead of a listing.
#[derive(Debug, Deserialize, serde::Serialize)]
struct Lead {
    campaign: String,
    email: String,
}

pub fn list(server: &Server, args: &ListArgs) -> anyhow::Result<Exit> {
    let query = args
        .campaign
        .as_deref()
        .map_or(String::new(), |c| format!("campaign={}", escape(c)));
    let json = args.format == Format::Json;
    let mut out = BufWriter::new(io::stdout().lock());
    let mut first = true;
    let listed = server.pages(
        &account_path(&args.account, "leads"),
        &query,
        "leads",
        &mut |page: Vec<Lead>| {
            for lead in page {
                if json {
                    let sep = if first { "[\n" } else { ",\n" };
                    write!(out, "{sep}{}", serde_json::to_string(&lead)?)?;
                } else if args.campaign.is_some() {
                    writeln!(out, "{}", lead.email)?;
                } else {
                    writeln!(out, "{}\t{}", lead.campaign, lead.email)?;
                }
                first = false;
            }
            Ok(())
        },
    );
    let finished = listed.and_then(|()| {
        match (json, first) {
            (true, true) => writeln!(out, "[]")?,
            (true, false) => writeln!(out, "\n]")?,
            _ => {}
        }
        out.flush()?;
        Ok(())
    });
    match finished {
        // A reader that stopped early (`| head`) is not an error.
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(Exit::Success)
        }
        Err(e) => Err(e),
        Ok(()) => Ok(Exit::Success),
    }
}

/// The text of a deletion's answer (the decision's JSON object).
pub fn deletion_text(outcome: &serde_json::Value) -> String {
    let freed = outcome["freed"].as_u64().unwrap_or(0);
    let credits = if freed == 1 { "credit" } else { "credits" };
    let mut text = format!("freed {freed} lead {credits}");
    let lead = &outcome["lead_credits"];
    if let Some(used) = lead["used"].as_u64() {
        match lead["limit"].as_u64() {
            Some(limit) => text += &format!("; lead credits used: {used} of {limit}"),
            None => text += &format!("; lead credits used: {used} (unlimited)"),
        }
    }
    text
}

/// Lists an account's campaigns with the number of contacts each holds.
#[derive(Debug, clap::Args)]
pub struct CampaignsArgs {
    #[command(flatten)]
    pub(super) place: Place,
    /// The account whose campaigns to list.
    #[arg(long)]
    pub(super) account: String,
    /// Output format: a table, or `{"account", "campaigns": [{"campaign", "leads",
    /// "exclusive"}]}` (`exclusive`: leads no other campaign holds, the lead
    /// credits deleting the campaign's leads frees).
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct Campaigns {
    account: String,
    campaigns: Vec<Campaign>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct Campaign {
    campaign: String,
    leads: u64,
    exclusive: u64,
}

pub fn campaigns(args: CampaignsArgs) -> anyhow::Result<Exit> {
    let answer: Campaigns = match args.place.server()? {
        Some(server) => server.get(&account_path(&args.account, "campaigns"))?,
        None => {
            let store = args.place.store.open_existing()?;
            let mut worker = args.place.policy.worker(std::sync::Arc::clone(&store))?;
            let usage = Request::Usage {
                account: args.account.clone(),
            };
            let decision = worker.decide_durable(&usage, creditgate::time::now())?;
            if let Some(denied) = Denied::of(&args.account, &decision) {
                return Err(denied.into());
            }
            let campaigns = creditgate::inspect::campaigns(&mut worker, &args.account)
                .with_context(|| format!("listing the campaigns of account {:?}", args.account))?
                .into_iter()
                .map(|c| Campaign {
                    campaign: c.name,
                    leads: c.leads,
                    exclusive: c.exclusive,
                })
                .collect();
            Campaigns {
                account: args.account.clone(),
                campaigns,
            }
        }
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&answer)?),
        Format::Text => {
            println!("{:<40} {:>10} {:>10}", "CAMPAIGN", "LEADS", "EXCLUSIVE");
            for c in &answer.campaigns {
                println!("{:<40} {:>10} {:>10}", c.campaign, c.leads, c.exclusive);
            }
        }
    }
    Ok(Exit::Success)
}
