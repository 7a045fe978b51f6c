//! `creditgate plans`: the plans in force, from the policy file or a running
//! gateway; and `creditgate reload`, which asks a running gateway to re-read its
//! policy (what SIGHUP does, from another host or without its pid).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use creditgate::runtime::LoadError;
use creditgate::store::MemoryStore;

use super::account::LimitView;
use super::remote::ServerArgs;
use super::{Exit, Format, PolicyArgs, located};

/// Lists the plans in force with their credits: the policy file's (loaded by the
/// component, as serve would) or, with --server, the running gateway's.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// Output format: a table, or `{"plans": [{"name", "lead_credits",
    /// "email_credits"}]}` (with the gateway's policy `version`, or the `policy`
    /// file read).
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// The plans and where they come from.
#[derive(Debug, Serialize, Deserialize)]
struct Plans {
    /// The gateway's policy version (its reload count), with --server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    /// The policy file read, without --server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    plans: Vec<Plan>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    name: String,
    lead_credits: LimitView,
    email_credits: LimitView,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    // `plans` opens no store: only --server takes the environment's gateway.
    let plans = match args.server.client(false)? {
        Some(server) => server.get("/v1/plans")?,
        None => local(&args.policy)?,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&plans)?),
        Format::Text => {
            println!(
                "{:<24} {:>14} {:>14}",
                "PLAN", "LEAD CREDITS", "EMAIL CREDITS"
            );
            for p in &plans.plans {
                println!(
                    "{:<24} {:>14} {:>14}",
                    p.name, p.lead_credits, p.email_credits
                );
            }
        }
    }
    Ok(Exit::Success)
}

fn local(policy: &PolicyArgs) -> anyhow::Result<Plans> {
    let (path, text) = policy.load()?;
    let runtime = policy.component.runtime()?;
    match runtime.worker(Arc::new(MemoryStore::new()), &text) {
        Ok((_, summary)) => {
            for warning in &summary.warnings {
                eprintln!("creditgate: warning: {}", located(&path, warning));
            }
            Ok(Plans {
                version: None,
                policy: Some(path.display().to_string()),
                plans: summary
                    .plans
                    .iter()
                    .map(|p| Plan {
                        name: p.name.clone(),
                        lead_credits: p.lead_credits.into(),
                        email_credits: p.email_credits.into(),
                    })
                    .collect(),
            })
        }
        Err(LoadError::Policy(diagnostics)) => {
            let lines: Vec<String> = diagnostics.iter().map(|d| located(&path, d)).collect();
            anyhow::bail!("invalid policy {}:\n{}", path.display(), lines.join("\n"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Asks a running gateway to reload its policy (and component) file, as SIGHUP
/// does; a policy it refuses is reported and the one in force keeps serving.
#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Load a policy even if it lacks plans that accounts are on: those accounts
    /// stay visible, denied unknown_plan until moved (without it, such a policy
    /// is refused, naming each plan and how many accounts are on it).
    #[arg(long)]
    force: bool,
    /// Output format: a line, or the gateway's `{"version", "warnings"}`.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reloaded {
    version: u64,
    #[serde(default)]
    warnings: Vec<String>,
}

pub fn reload(args: ReloadArgs) -> anyhow::Result<Exit> {
    let Some(server) = args.server.client(false)? else {
        anyhow::bail!(
            "reload asks a running gateway: pass --server URL or set $CREDITGATE_SERVER (or send \
             serve SIGHUP)"
        );
    };
    let path = if args.force {
        "/v1/admin/reload?force=true"
    } else {
        "/v1/admin/reload"
    };
    let reloaded: Reloaded = server.post(path, &serde_json::json!({}))?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&reloaded)?),
        Format::Text => {
            for warning in &reloaded.warnings {
                eprintln!("creditgate: warning: {warning}");
            }
            println!(
                "{} reloaded: policy version {}",
                server.url(),
                reloaded.version
            );
        }
    }
    Ok(Exit::Success)
}
