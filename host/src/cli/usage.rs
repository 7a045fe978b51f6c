//! `creditgate usage`: one account's credits at a glance, as on a subscription page.

use std::time::Duration;

use console::{Style, style};

use creditgate::inspect::{self, Level, Warn};
use creditgate::names::{NameRules, escape};
use creditgate::time::{now, parse_instant};

use super::account::{AccountView, account_path, usage_of};

use super::{Exit, Format, Place};

/// Show an account's plan and credit usage.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The account's name.
    account: String,
    #[command(flatten)]
    pub(super) place: Place,
    /// Output format: a dashboard, or the account's JSON object.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

const BAR_WIDTH: usize = 30;

pub fn run(mut args: Args) -> anyhow::Result<Exit> {
    args.account = NameRules::from_env().account(&args.account)?;
    // Where a credit turns yellow is the policy's to say (its `[alerts]`, for
    // creditgate's own component): asked along with the usage.
    let (view, warn) = match args.place.server()? {
        Some(server) => {
            let view = server.get(&account_path(&args.account, "usage"))?;
            let plans: PlansWarn = server.get("/v1/plans")?;
            (view, plans.warning_levels)
        }
        None => {
            let mut worker = args
                .place
                .policy
                .worker(args.place.store.open_existing()?)?;
            let view = usage_of(&mut worker, &args.account)?;
            (view, inspect::warning_levels(&mut worker)?)
        }
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&view)?),
        Format::Text => print!("{}", dashboard(&view, warn, now())),
    }
    Ok(Exit::Success)
}

/// The terminal dashboard. Colour comes from `console`, which drops it when stdout
/// is not a terminal (or `NO_COLOR` is set).
fn dashboard(v: &AccountView, warn: Warn, at: i64) -> String {
    let mut out = format!(
        "{}  plan {}\n",
        style(escape(&v.account)).bold(),
        style(escape(&v.plan)).cyan()
    );
    let (lead, email) = (&v.lead_credits, &v.email_credits);
    out += &meter(
        "lead credits ",
        lead.used,
        lead.limit.count(),
        warn.lead_credits,
    );
    out += &meter(
        "email credits",
        email.used,
        email.limit.count(),
        warn.email_credits,
    );
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
    if let Some(Some(projected)) = &email.projected_exhaustion {
        let until = parse_instant(projected).map_or(String::new(), |at_pace| {
            let left = Duration::from_nanos(u64::try_from(at_pace.saturating_sub(at)).unwrap_or(0));
            format!(" (in {})", human_duration(left))
        });
        out += &format!("               at this cycle's pace, runs out {projected}{until}\n");
    }
    for (what, used, limit, level, when) in [
        (
            "lead credits",
            lead.used,
            lead.limit.count(),
            warn.lead_credits,
            "until leads are deleted or the plan upgraded",
        ),
        (
            "email credits",
            email.used,
            email.limit.count(),
            warn.email_credits,
            "until the reset or an upgrade",
        ),
    ] {
        let Some(limit) = limit else { continue };
        let level = Level::of(used, Some(limit), level);
        if level == Level::Exhausted {
            out += &format!(
                "{}\n",
                style(format!(
                    "⚠ {what} exhausted: {used} of {limit} used; nothing more {when}"
                ))
                .red()
                .bold()
            );
        } else if level == Level::Warning {
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

fn meter(label: &str, used: u64, limit: Option<u64>, warn: Option<u8>) -> String {
    let Some(limit) = limit else {
        return format!("{label}  {:<w$}  {used} / unlimited\n", "", w = BAR_WIDTH);
    };
    let share = if limit == 0 {
        1.0
    } else {
        (used as f64 / limit as f64).min(1.0)
    };
    let filled = ((share * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    let colour = match Level::of(used, Some(limit), warn) {
        Level::Exhausted => Style::new().red(),
        Level::Warning => Style::new().yellow(),
        Level::Ok => Style::new().green(),
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

/// The part of `GET /v1/plans` this command reads.
#[derive(serde::Deserialize)]
struct PlansWarn {
    warning_levels: Warn,
}
