//! `creditgate alerts`: the credit alerts that fired, from the store's alert log.

use anyhow::Context as _;

use creditgate::alerts;
use creditgate::names::{NameRules, escape};

use super::{Exit, Format, StoreArgs};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every alert that fired (oldest first per account), with when and at what usage.
    List {
        /// Only this account's.
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

pub fn run(command: Command) -> anyhow::Result<Exit> {
    let Command::List {
        account,
        store,
        format,
    } = command;
    let account = match account {
        Some(account) => Some(NameRules::from_env().account(&account)?),
        None => None,
    };
    let store = store.open()?;
    let fired =
        alerts::list(store.as_ref(), account.as_deref()).context("reading the alert log")?;
    match format {
        Format::Json => {
            for alert in &fired {
                println!("{}", serde_json::to_string(alert)?);
            }
        }
        Format::Text => {
            println!(
                "{:<21} {:<24} {:<14} {:>9} {:>21}  RESETS",
                "AT", "ACCOUNT", "CREDIT", "THRESHOLD", "USED / LIMIT"
            );
            for a in &fired {
                println!(
                    "{:<21} {:<24} {:<14} {:>8}% {:>21}  {}",
                    a.at,
                    escape(&a.account),
                    a.credit,
                    a.threshold,
                    format!("{} / {}", a.used, a.limit),
                    a.resets_at.as_deref().unwrap_or("-"),
                );
            }
        }
    }
    Ok(Exit::Success)
}
