//! `creditgate usage`: one account's credits at a glance, as on a subscription page.

use std::time::Duration;

use console::{Style, style};

use creditgate::names::{NameRules, escape};
use creditgate::time::{now, parse_instant};

use super::account::{AccountView, account_path, usage_of};
use super::remote::ServerArgs;
use super::{Exit, Format, PolicyArgs, StoreArgs};

/// Show an account's plan and credit usage.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The account's name.
    account: String,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Output format: a dashboard, or the account's JSON object.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// Share of a limit at which the dashboard warns.
const WARN_AT: f64 = 0.8;
const BAR_WIDTH: usize = 30;

pub fn run(mut args: Args) -> anyhow::Result<Exit> {
    args.account = NameRules::from_env().account(&args.account)?;
    let view = match args.server.client(args.store.store.is_some())? {
        Some(server) => server.get(&account_path(&args.account, "usage"))?,
        None => usage_of(
            &mut args.policy.worker(args.store.open_existing()?)?,
            &args.account,
        )?,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&view)?),
        Format::Text => print!("{}", dashboard(&view, now())),
    }
    Ok(Exit::Success)
}

/// The terminal dashboard. Colour comes from `console`, which drops it when stdout
/// is not a terminal (or `NO_COLOR` is set).
fn dashboard(v: &AccountView, at: i64) -> String {
    let mut out = format!(
        "{}  plan {}\n",
        style(escape(&v.account)).bold(),
        style(escape(&v.plan)).cyan()
    );
    let (lead, email) = (&v.lead_credits, &v.email_credits);
    out += &meter("lead credits ", lead.used, lead.limit.count());
    out += &meter("email credits", email.used, email.limit.count());
    if let Some(resets_at) = &email.resets_at {
        let cycle = v
            .cycle_start
            .as_ref()
            .map_or(String::new(), |start| format!("cycle {start} → "));
        let until = parse_instant(resets_at).map_or(String::new(), |resets| {
            let left = Duration::from_nanos(u64::try_from(resets.saturating_sub(at)).unwrap_or(0));
            format!(" (in {})", human_duration(left))
        });
        out += &format!("               {cycle}resets {resets_at}{until}\n");
    }
    for (what, used, limit, when) in [
        (
            "lead credits",
            lead.used,
            lead.limit.count(),
            "until leads are deleted or the plan upgraded",
        ),
        (
            "email credits",
            email.used,
            email.limit.count(),
            "until the reset or an upgrade",
        ),
    ] {
        let Some(limit) = limit else { continue };
        if used >= limit {
            out += &format!(
                "{}\n",
                style(format!(
                    "⚠ {what} exhausted: {used} of {limit} used; nothing more {when}"
                ))
                .red()
                .bold()
            );
        } else if limit > 0 && used as f64 >= WARN_AT * limit as f64 {
            out += &format!(
                "{}\n",
                style(format!(
                    "⚠ {what} at {:.0}%: {} left",
                    100.0 * used as f64 / limit as f64,
                    limit - used
                ))
                .yellow()
            );
        }
    }
    out
}

fn meter(label: &str, used: u64, limit: Option<u64>) -> String {
    let Some(limit) = limit else {
        return format!("{label}  {:<w$}  {used} / unlimited\n", "", w = BAR_WIDTH);
    };
    let share = if limit == 0 {
        1.0
    } else {
        (used as f64 / limit as f64).min(1.0)
    };
    let filled = ((share * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    let colour = if share >= 1.0 {
        Style::new().red()
    } else if share >= WARN_AT {
        Style::new().yellow()
    } else {
        Style::new().green()
    };
    let bar = format!(
        "{}{}",
        colour.apply_to("█".repeat(filled)),
        "░".repeat(BAR_WIDTH - filled)
    );
    let percent = if limit == 0 {
        100.0
    } else {
        100.0 * used as f64 / limit as f64
    };
    format!("{label}  {bar}  {used} / {limit}  ({percent:.1}%)\n")
}

fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    match (days, hours) {
        (0, 0) => format!("{minutes}m"),
        (0, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}
