//! `creditgate usage`: one account's credits at a glance, as on a subscription page.

use std::time::Duration;

use console::{Style, style};
use serde::Serialize;

use creditgate::bindings::AccountUsage;
use creditgate::names::{NameRules, escape};
use creditgate::replay::{UsageJson, reason_code};
use creditgate::request::Request;
use creditgate::time::{format_instant, now};

use super::{Exit, Format, PolicyArgs, StoreArgs};

/// Show an account's plan and credit usage.
#[derive(Debug, clap::Args)]
pub struct Args {
    account: String,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// Share of a limit at which the dashboard warns.
const WARN_AT: f64 = 0.8;
const BAR_WIDTH: usize = 30;

pub fn run(mut args: Args) -> anyhow::Result<Exit> {
    args.account = NameRules::from_env().account(&args.account)?;
    let mut worker = args.policy.worker(args.store.open()?)?;
    let at = now();
    let decision = worker.decide(
        &Request::Usage {
            account: args.account.clone(),
        },
        at,
    )?;
    let (Some(usage), None) = (&decision.usage, decision.denied) else {
        let reason = decision.denied.map_or("no usage", reason_code);
        eprintln!("creditgate: {}: {reason}", escape(&args.account));
        return Ok(Exit::Failed);
    };
    match args.format {
        Format::Json => {
            #[derive(Serialize)]
            struct Json<'a> {
                account: &'a str,
                plan: &'a str,
                anchor: String,
                cycle_start: String,
                #[serde(flatten)]
                usage: UsageJson,
            }
            let json = Json {
                account: &args.account,
                plan: &usage.plan,
                anchor: format_instant(usage.anchor),
                cycle_start: format_instant(usage.email_credits.cycle_start),
                usage: UsageJson::from(usage),
            };
            println!("{}", serde_json::to_string(&json)?);
        }
        Format::Text => print!("{}", dashboard(&args.account, usage, at)),
    }
    Ok(Exit::Success)
}

/// The terminal dashboard. Colour comes from `console`, which drops it when stdout
/// is not a terminal (or `NO_COLOR` is set).
fn dashboard(account: &str, u: &AccountUsage, at: i64) -> String {
    let mut out = format!(
        "{}  plan {}\n",
        style(escape(account)).bold(),
        style(escape(&u.plan)).cyan()
    );
    out += &meter("lead credits ", u.lead_credits.used, u.lead_credits.limit);
    out += &meter("email credits", u.email_credits.used, u.email_credits.limit);
    let until = Duration::from_nanos(
        u64::try_from(u.email_credits.resets_at.saturating_sub(at)).unwrap_or(0),
    );
    out += &format!(
        "               cycle {} → resets {} (in {})\n",
        format_instant(u.email_credits.cycle_start),
        format_instant(u.email_credits.resets_at),
        human_duration(until)
    );
    for (what, used, limit, when) in [
        (
            "lead credits",
            u.lead_credits.used,
            u.lead_credits.limit,
            "until leads are deleted or the plan upgraded",
        ),
        (
            "email credits",
            u.email_credits.used,
            u.email_credits.limit,
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
