//! `creditgate alerts`: the credit alerts that fired, from the store's alert log.

use anyhow::Context as _;

use creditgate::alerts::{self, FiredAlert};

use creditgate::names::{NameRules, escape};

use super::remote::ServerArgs;
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
        #[command(flatten)]
        server: ServerArgs,
        /// Output format: a table, or one JSON array of alert objects (the webhook's
        /// body), `[]` when none fired.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

pub fn run(command: Command) -> anyhow::Result<Exit> {
    let Command::List {
        account,
        store,
        server,
        format,
    } = command;
    // Names by the one rule (`creditgate::names`), as the alert log was written.
    let account = account
        .map(|a| NameRules::from_env().account(&a))
        .transpose()?;
    let fired: Vec<FiredAlert> = match server.client(store.store.is_some())? {
        Some(server) => {
            let query = account.as_deref().map_or(String::new(), |a| {
                format!("account={}", super::remote::escape(a))
            });
            let mut fired = Vec::new();
            server.pages("/v1/alerts", &query, "alerts", &mut |page| {
                fired.extend(page);
                Ok(())
            })?;
            fired
        }
        None => {
            let store = store.open_existing()?;
            alerts::list(store.as_ref(), account.as_deref()).context("reading the alert log")?
        }
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string(&fired)?),
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
