//! `creditgate leads`: imports a CSV of contacts into a campaign, deletes contacts
//! and lists them. A thin adapter: the import is [`creditgate::import`], deletions
//! are decisions of the policy, and the listing reads the store.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::ArgGroup;
use indicatif::{ProgressBar, ProgressStyle};

use creditgate::bindings::{Decision, Reason};
use creditgate::import::{self, DEFAULT_BATCH, ImportOptions, ImportReport, MAX_BATCH};
use creditgate::names::{NameRules, escape, quote};
use creditgate::request::Request;
use creditgate::wire::{CreditsJson, LimitJson, Outcome, reason_code};

use super::{Denied, Exit, Format, Place};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Imports the contacts of a CSV file into a campaign, charging one lead credit
    /// per new contact, and reports what happened to every row.
    ///
    /// Exit status 0 when the file was read through, even if some rows were invalid
    /// or credits ran out (the report says so); 1 when the policy refused the import
    /// (unknown account or plan) or could not decide; 2 for a bad file or a missing
    /// column; 75 when the store or the gateway is unavailable.
    Import(ImportArgs),
    /// Removes one contact, or all of them, from a campaign and reports the lead
    /// credits freed (a credit is freed when no other campaign holds the contact).
    /// With `--dry-run`, reports what the deletion would do and changes nothing.
    Delete(DeleteArgs),
    /// Lists an account's contacts: `campaign<TAB>address` per line, or only the
    /// addresses with `--campaign`.
    List(ListArgs),
    /// Lists an account's campaigns with the number of contacts each holds, and
    /// how many of those no other campaign holds: the lead credits deleting the
    /// campaign's contacts would free.
    Campaigns(super::leads_remote::CampaignsArgs),
}

pub fn run(command: Command) -> anyhow::Result<Exit> {
    // Names by the one rule (`creditgate::names`), before anything is opened.
    let names = NameRules::from_env();
    match command {
        Command::Import(mut args) => {
            args.account = names.account(&args.account)?;
            args.campaign = names.campaign(&args.campaign)?;
            run_import(args)
        }
        Command::Delete(mut args) => {
            args.account = names.account(&args.account)?;
            args.campaign = names.campaign(&args.campaign)?;
            run_delete(args)
        }
        Command::List(mut args) => {
            args.account = names.account(&args.account)?;
            args.campaign = args.campaign.map(|c| names.campaign(&c)).transpose()?;
            run_list(args)
        }
        Command::Campaigns(mut args) => {
            args.account = names.account(&args.account)?;
            super::leads_remote::campaigns(args)
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub(super) place: Place,
    /// The account the contacts are charged to.
    #[arg(long)]
    pub(super) account: String,
    /// The campaign to add them to.
    #[arg(long)]
    pub(super) campaign: String,
    /// CSV file with a header row; `-` reads stdin.
    #[arg(value_name = "FILE.csv")]
    pub(super) file: PathBuf,
    /// Header of the column holding the addresses (case-insensitive).
    #[arg(long, value_name = "NAME", default_value = "email")]
    pub(super) column: String,
    /// Report what the import would do, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Report format.
    #[arg(long, value_enum, default_value_t)]
    pub(super) format: Format,
    /// Addresses per policy call and store transaction (1 to 10000; with --server,
    /// per request, at most 1000).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH, value_parser = batch_size)]
    pub(super) batch: usize,
    /// Writes every row not imported to FILE as CSV (`line,value,reason`): invalid
    /// rows, repeats of an earlier row, and new contacts refused because the lead
    /// credits ran out.
    #[arg(long, value_name = "FILE")]
    pub(super) rejected: Option<PathBuf>,
    /// The field separator: one character, `tab` for a tab. Default: whichever of
    /// `,`, `;` and tab the header row holds most of.
    #[arg(long, value_name = "CHAR", value_parser = delimiter)]
    pub(super) delimiter: Option<u8>,
}

fn delimiter(text: &str) -> Result<u8, String> {
    match text {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        _ => match text.as_bytes() {
            [b'"' | b'\r' | b'\n'] => Err("a quote or a line end cannot separate fields".into()),
            [byte] => Ok(*byte),
            _ => Err("expected one ASCII character, or `tab`".into()),
        },
    }
}

fn batch_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_BATCH).contains(&n) => Ok(n),
        _ => Err(format!("expected a number from 1 to {MAX_BATCH}")),
    }
}

fn run_import(args: ImportArgs) -> anyhow::Result<Exit> {
    if let Some(server) = args.place.server()? {
        anyhow::ensure!(
            !args.dry_run,
            "--dry-run needs the store itself: a gateway has no dry run (drop --server, or \
             stop serve)"
        );
        anyhow::ensure!(
            args.rejected.is_none(),
            "--rejected needs the import's own decisions: through --server only the gateway's \
             report comes back (drop --server, or stop serve)"
        );
        return super::leads_remote::import(&server, &args);
    }
    let stdin = args.file.as_os_str() == "-";
    let name = if stdin {
        "stdin".to_string()
    } else {
        args.file.display().to_string()
    };
    let (input, size): (Box<dyn BufRead>, Option<u64>) = if stdin {
        (Box::new(io::stdin().lock()), None)
    } else {
        let file = File::open(&args.file).with_context(|| format!("cannot read {name}"))?;
        let size = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        (Box::new(BufReader::with_capacity(64 * 1024, file)), size)
    };

    let (store, exclusive) = args
        .place
        .store
        .open_existing_for_import(import::STORE_CACHE_BYTES)?;
    let store: Arc<dyn creditgate::store::Store> = if args.dry_run {
        Arc::new(
            import::DryRunStore::new(store, &args.account, &args.campaign)
                .with_context(|| format!("dry run: cannot read account {:?}", args.account))?,
        )
    } else {
        store
    };
    let mut worker = args.place.policy.worker(store)?;
    if args.dry_run {
        // What would fire is not news: nothing is charged.
        worker.set_notifier(creditgate::alerts::Notifier::none());
    }
    let options = ImportOptions {
        column: args.column.clone(),
        batch: args.batch,
        delimiter: args.delimiter,
        // Only a store no one else decides on meanwhile may take rows out of
        // file order (see `ImportOptions::sort_from`).
        sort_from: exclusive.then_some(import::SORT_FROM),
        ..ImportOptions::new(&args.account, &args.campaign, creditgate::time::now())
    };
    let mut rejected = match &args.rejected {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let mut writer = csv::Writer::from_writer(BufWriter::new(file));
            writer
                .write_record(["line", "value", "reason"])
                .with_context(|| format!("cannot write {}", path.display()))?;
            Some(writer)
        }
        None => None,
    };

    let bar = progress_bar(size);
    bar.set_message("0 rows");
    let result = import::import_with(
        &mut worker,
        input,
        &options,
        &mut |p| {
            bar.set_position(p.bytes);
            bar.set_message(format!(
                "{} rows, {} uploaded",
                p.report.rows, p.report.uploaded
            ));
        },
        &mut |row| match &mut rejected {
            Some(writer) => writer
                .write_record([
                    row.line.to_string().as_str(),
                    &spreadsheet_safe(&row.value),
                    row.reason.code(),
                ])
                .map_err(io::Error::other),
            None => Ok(()),
        },
    );
    bar.finish_and_clear();
    if let (Some(writer), Some(path)) = (&mut rejected, &args.rejected) {
        writer
            .flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    let mut report = match result {
        Ok(report) => report,
        Err(import::ImportError::Denied { account, reason }) => {
            return Err(Denied::new(&account, reason_code(reason)).into());
        }
        Err(e) if e.is_decision_failure() => {
            eprintln!("creditgate: error: {name}: {e}");
            return Ok(Exit::Failed);
        }
        Err(e) => return Err(anyhow::Error::new(e).context(name)),
    };
    report.dry_run = args.dry_run;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print!("{}", text_report(&name, &report)),
    }
    Ok(Exit::Success)
}

/// A bar over the file's bytes on a terminal; nothing when stderr is piped.
fn progress_bar(size: Option<u64>) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match size {
        Some(size) if size > 0 => {
            let bar = ProgressBar::new(size);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:30} {binary_bytes}/{binary_total_bytes}  {msg}  ~{eta} left",
            ) {
                bar.set_style(style);
            }
            bar
        }
        _ => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {binary_bytes}  {msg}") {
                bar.set_style(style);
            }
            bar
        }
    }
}

pub(super) fn text_report(name: &str, r: &ImportReport) -> String {
    let what = if r.dry_run {
        "dry run, nothing changed: importing"
    } else {
        "imported"
    };
    let mut out = format!(
        "{what} {name} into campaign {:?} of account {:?}\n",
        r.campaign, r.account
    );
    let invalid_lines = if r.invalid_rows.is_empty() {
        String::new()
    } else {
        let lines: Vec<String> = r.invalid_rows.iter().map(ToString::to_string).collect();
        let more = if r.invalid > r.invalid_rows.len() as u64 {
            ", ..."
        } else {
            ""
        };
        let label = if r.invalid == 1 { "line" } else { "lines" };
        format!("{label} {}{more}", lines.join(", "))
    };
    let rows = [
        ("rows read", r.rows, String::new()),
        ("uploaded", r.uploaded, "lead credits charged".into()),
        (
            "already in this campaign",
            r.already_in_campaign,
            String::new(),
        ),
        (
            "in another campaign",
            r.in_other_campaign,
            "added here too, no credit charged".into(),
        ),
        (
            "duplicates in this file",
            r.duplicates_in_file,
            String::new(),
        ),
        ("invalid addresses", r.invalid, invalid_lines),
        (
            "not imported, credits ran out",
            r.credits_exhausted,
            String::new(),
        ),
    ];
    let width = rows
        .iter()
        .map(|(_, n, _)| n.to_string().len())
        .max()
        .unwrap_or(1);
    for (label, count, note) in rows {
        let line = format!("  {label:<30} {count:>width$}  {note}");
        out += line.trim_end();
        out += "\n";
    }
    if let Some(credits) = &r.lead_credits {
        out += &format!("  {:<30} {}\n", "lead credits used", credits_text(credits));
    }
    out
}

fn credits_text(c: &CreditsJson) -> String {
    match c.limit {
        LimitJson::Count(limit) => format!("{} of {limit}", c.used),
        LimitJson::Unlimited(_) => format!("{} (unlimited)", c.used),
    }
}

#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("which").required(true).args(["email", "all"])))]
pub struct DeleteArgs {
    #[command(flatten)]
    pub(super) place: Place,
    /// The account holding the campaign.
    #[arg(long)]
    account: String,
    /// The campaign to remove contacts from.
    #[arg(long)]
    campaign: String,
    /// The contact to remove.
    #[arg(long, value_name = "ADDRESS")]
    email: Option<String>,
    /// Remove every contact of the campaign.
    #[arg(long)]
    all: bool,
    /// Report what the deletion would do (`freed` included) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format: a line, or the decision's JSON object.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

fn run_delete(args: DeleteArgs) -> anyhow::Result<Exit> {
    if let Some(server) = args.place.server()? {
        let mut path = super::account::account_path(
            &args.account,
            &format!("campaigns/{}/leads", super::remote::escape(&args.campaign)),
        );
        if let Some(email) = &args.email {
            path = format!("{path}/{}", super::remote::escape(email));
        }
        if args.dry_run {
            path += "?dry_run=true";
        }
        let outcome: serde_json::Value = server.delete(&path)?;
        match args.format {
            Format::Json => println!("{outcome}"),
            Format::Text => println!(
                "{}",
                dry_run_text(args.dry_run, super::leads_remote::deletion_text(&outcome))
            ),
        }
        return Ok(Exit::Success);
    }
    let store = args.place.store.open_existing()?;
    // A dry run: the policy decides the deletion as usual, on a view of the store
    // that answers removals without applying them.
    let store: Arc<dyn creditgate::store::Store> = if args.dry_run {
        Arc::new(creditgate::store::Preview::new(store))
    } else {
        store
    };
    let mut worker = args.place.policy.worker(store)?;
    // Asked before the deletion (after it the campaign is gone either way),
    // said after it, once the account is known to exist.
    let no_such_campaign = match &args.email {
        None => no_such_campaign(&mut worker, &args.account, &args.campaign),
        Some(_) => None,
    };
    let request = match &args.email {
        Some(email) => Request::DeleteLead {
            account: args.account.clone(),
            campaign: args.campaign.clone(),
            email: email.clone(),
        },
        None => Request::DeleteCampaignLeads {
            account: args.account.clone(),
            campaign: args.campaign.clone(),
        },
    };
    let decision = worker
        .decide_durable(&request, creditgate::time::now())
        .with_context(|| format!("account {:?}: no decision", args.account))?;
    if let Some(mut denied) = Denied::of(&args.account, &decision) {
        // Say what is wrong with the address, in the policy's words.
        if let (Some(Reason::InvalidEmail), Some(email)) = (decision.denied, &args.email)
            && let Ok(Some(problem)) = worker.find_invalid_email(std::slice::from_ref(email))
        {
            denied = denied.with_detail(format!(
                "--email {} is not a valid email address: {}",
                quote(email),
                escape(&problem.problem)
            ));
        }
        return Err(denied.into());
    }
    if let Some(warning) = no_such_campaign {
        eprintln!("creditgate: warning: {warning}");
    }
    match args.format {
        Format::Json => {
            let deleted = Deleted {
                outcome: Outcome::from(&decision),
                dry_run: args.dry_run,
            };
            println!("{}", serde_json::to_string(&deleted)?);
        }
        Format::Text => println!("{}", dry_run_text(args.dry_run, deletion_text(&decision))),
    }
    Ok(Exit::Success)
}

/// What to say when `campaign` holds no lead of `account`: `--all` on a
/// mistyped campaign frees nothing, which alone reads like success.
fn no_such_campaign(
    worker: &mut creditgate::runtime::Worker,
    account: &str,
    campaign: &str,
) -> Option<String> {
    let campaigns = creditgate::inspect::campaigns(worker, account).ok()?;
    if campaigns.iter().any(|c| c.name == campaign) {
        return None;
    }
    let names: Vec<String> = campaigns
        .iter()
        .map(|c| escape(&c.name).into_owned())
        .collect();
    Some(format!(
        "account {} has no campaign {} with leads (its campaigns: {}): nothing to delete",
        quote(account),
        quote(campaign),
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    ))
}

/// A deletion's decision as `DELETE .../leads` answers it: a dry run's says so.
#[derive(serde::Serialize)]
struct Deleted {
    #[serde(flatten)]
    outcome: Outcome,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
}

/// A deletion's line, said as what would happen in a dry run.
fn dry_run_text(dry_run: bool, text: String) -> String {
    match text.strip_prefix("freed ") {
        Some(rest) if dry_run => format!("dry run, nothing changed: would free {rest}"),
        _ => text,
    }
}

fn deletion_text(d: &Decision) -> String {
    let credits = if d.freed == 1 { "credit" } else { "credits" };
    let mut text = format!("freed {} lead {credits}", d.freed);
    if let Some(usage) = &d.usage {
        let used = creditgate::wire::UsageJson::from(usage).lead_credits;
        text += &format!("; lead credits used: {}", credits_text(&used));
    }
    text
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub(super) place: Place,
    /// The account whose contacts to list.
    #[arg(long)]
    pub(super) account: String,
    /// Only this campaign's contacts.
    #[arg(long)]
    pub(super) campaign: Option<String>,
    /// `json`: one array of `{"campaign", "email"}` objects, one per line.
    #[arg(long, value_enum, default_value_t)]
    pub(super) format: Format,
}

fn run_list(args: ListArgs) -> anyhow::Result<Exit> {
    if let Some(server) = args.place.server()? {
        return super::leads_remote::list(&server, &args);
    }
    let store = args.place.store.open_existing()?;
    // Whether an account exists is the policy's to say: an unknown one is an error,
    // not an empty list.
    let mut worker = args.place.policy.worker(Arc::clone(&store))?;
    let usage = Request::Usage {
        account: args.account.clone(),
    };
    let decision = worker
        .decide_durable(&usage, creditgate::time::now())
        .with_context(|| format!("account {:?}: no decision", args.account))?;
    if decision.denied == Some(creditgate::bindings::Reason::UnknownAccount) {
        return Err(Denied::new(&args.account, "unknown_account").into());
    }

    let mut out = BufWriter::new(io::stdout().lock());
    let json = args.format == Format::Json;
    let mut first = true;
    let mut failed: Option<io::Error> = None;
    let mut visit = |campaign: &str, email: &str| {
        let written = if json {
            let item = serde_json::json!({ "campaign": campaign, "email": email });
            let sep = if first { "[\n" } else { ",\n" };
            write!(out, "{sep}{item}")
        } else if args.campaign.is_some() {
            writeln!(out, "{email}")
        } else {
            writeln!(out, "{campaign}\t{email}")
        };
        first = false;
        match written {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    };
    // Where the leads are kept is the component's to say: asked page by page.
    let mut after: Option<creditgate::inspect::Lead> = None;
    'pages: loop {
        const PAGE: u32 = 1_000;
        let page = creditgate::inspect::leads(
            &mut worker,
            &args.account,
            args.campaign.as_deref(),
            after.as_ref(),
            PAGE,
        )
        .with_context(|| format!("listing the contacts of account {:?}", args.account))?;
        let full = page.len() == PAGE as usize;
        for lead in &page {
            if !visit(&lead.campaign, &lead.email) {
                break 'pages;
            }
        }
        match page.into_iter().last() {
            Some(last) if full => after = Some(last),
            _ => break,
        }
    }
    let finished = match failed {
        Some(e) => Err(e),
        None if json && first => writeln!(out, "[]"),
        None if json => writeln!(out, "\n]"),
        None => Ok(()),
    }
    .and_then(|()| out.flush());
    match finished {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Exit::Success),
        Err(e) => Err(anyhow::Error::new(e).context("writing the list")),
        Ok(()) => Ok(Exit::Success),
    }
}

/// `value` as a rejected-rows cell that a spreadsheet shows rather than runs:
/// a value from the uploaded list that starts like a formula (`=`, `+`, `-`,
/// `@`, a tab or a carriage return: `=HYPERLINK(...)`, `+cmd|...`) gets a
/// leading `'`, OWASP's advice for CSV injection. Nothing else changes.
fn spreadsheet_safe(value: &str) -> std::borrow::Cow<'_, str> {
    match value.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{value}").into(),
        _ => value.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::spreadsheet_safe;

    #[test]
    fn a_value_that_starts_like_a_formula_is_not_one() {
        for (value, cell) in [
            (
                "=HYPERLINK(\"http://evil.example\")",
                "'=HYPERLINK(\"http://evil.example\")",
            ),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-1+1", "'-1+1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("ann@example.com", "ann@example.com"),
            ("", ""),
        ] {
            assert_eq!(spreadsheet_safe(value), cell, "{value:?}");
        }
    }
}
