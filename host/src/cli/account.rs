//! `creditgate account`: subscriptions, plan changes and the list of accounts.

use anyhow::Context as _;
use serde::Serialize;

use creditgate::bindings::{AccountUsage, Decision, Reason};
use creditgate::names::{NameRules, escape, quote};
use creditgate::replay::{Outcome, UsageJson, reason_code};
use creditgate::request::Request;
use creditgate::runtime::Worker;
use creditgate::time::{format_instant, now, parse_instant};

use super::{Exit, Format, PolicyArgs, StoreArgs};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start an account on a plan; its billing cycles are anchored on the subscription.
    Subscribe {
        account: String,
        #[arg(long)]
        plan: String,
        /// The billing anchor (RFC 3339); default now.
        #[arg(long, value_name = "RFC3339")]
        anchor: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Move an account to another plan at once; usage and anchor are unchanged.
    ChangePlan {
        account: String,
        #[arg(long)]
        plan: String,
        #[command(flatten)]
        common: Common,
    },
    /// One account's plan, anchor and usage.
    Show {
        account: String,
        #[command(flatten)]
        common: Common,
    },
    /// Every account with its plan and usage.
    List {
        #[command(flatten)]
        common: Common,
    },
}

/// Options every account command takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

impl Common {
    fn worker(&self) -> anyhow::Result<Worker> {
        self.policy.worker(self.store.open()?)
    }
}

pub fn run(command: Command) -> anyhow::Result<Exit> {
    // Every account name is normalised by the one rule; a refused one is an
    // input error (exit 2) that names it, escaped.
    let names = NameRules::from_env();
    match command {
        Command::Subscribe {
            account,
            plan,
            anchor,
            common,
        } => {
            let account = names.account(&account)?;
            let at = match anchor {
                Some(text) => parse_instant(&text).map_err(|e| anyhow::anyhow!("--anchor: {e}"))?,
                None => now(),
            };
            let request = Request::Subscribe {
                account: account.clone(),
                plan: plan.clone(),
            };
            change(&common, &account, &plan, &request, at, "subscribed")
        }
        Command::ChangePlan {
            account,
            plan,
            common,
        } => {
            let account = names.account(&account)?;
            let request = Request::ChangePlan {
                account: account.clone(),
                plan: plan.clone(),
            };
            change(&common, &account, &plan, &request, now(), "moved")
        }
        Command::Show { account, common } => {
            let account = names.account(&account)?;
            let mut worker = common.worker()?;
            let decision = worker.decide(
                &Request::Usage {
                    account: account.clone(),
                },
                now(),
            )?;
            print_decision(common.format, &account, &decision, None);
            Ok(exit_of(&decision))
        }
        Command::List { common } => list(&common),
    }
}

/// Applies a subscription or plan change to `plan`, durably, and reports it.
fn change(
    common: &Common,
    account: &str,
    plan: &str,
    request: &Request,
    at: i64,
    verb: &str,
) -> anyhow::Result<Exit> {
    let (mut worker, plans) = common.policy.worker_and_plans(common.store.open()?)?;
    let decision = worker.decide(request, at)?;
    worker.persist().context("making the change durable")?;
    print_decision(common.format, account, &decision, Some(verb));
    if decision.denied == Some(Reason::UnknownPlan) && common.format == Format::Text {
        let plans: Vec<String> = plans.iter().map(|p| quote(p)).collect();
        eprintln!(
            "{}: no plan {} in the policy; its plans are: {}",
            escape(account),
            quote(plan),
            plans.join(", ")
        );
    }
    Ok(exit_of(&decision))
}

fn exit_of(decision: &Decision) -> Exit {
    if decision.denied.is_some() {
        Exit::Failed
    } else {
        Exit::Success
    }
}

fn print_decision(format: Format, account: &str, decision: &Decision, verb: Option<&str>) {
    match format {
        Format::Json => {
            #[derive(Serialize)]
            struct Json<'a> {
                account: &'a str,
                #[serde(flatten)]
                outcome: Outcome,
            }
            let json = Json {
                account,
                outcome: Outcome::from(decision),
            };
            println!("{}", serde_json::to_string(&json).unwrap_or_default());
        }
        Format::Text => {
            let shown = escape(account);
            if let Some(reason) = decision.denied {
                eprintln!("{shown}: denied: {}", reason_code(reason));
            } else if let (Some(verb), Some(u)) = (verb, &decision.usage) {
                println!("{shown}: {verb} to plan {}", escape(&u.plan));
            }
            if let Some(u) = &decision.usage {
                print!("{}", summary(account, u));
            }
        }
    }
}

/// Plan, anchor and both credits, one per line.
pub(super) fn summary(account: &str, u: &AccountUsage) -> String {
    let limit = |l: Option<u64>| l.map_or("unlimited".to_string(), |n| n.to_string());
    format!(
        "account        {}\nplan           {}\nanchor         {}\nlead credits   {} / {}\nemail credits  {} / {} (resets {})\n",
        escape(account),
        escape(&u.plan),
        format_instant(u.anchor),
        u.lead_credits.used,
        limit(u.lead_credits.limit),
        u.email_credits.used,
        limit(u.email_credits.limit),
        format_instant(u.email_credits.resets_at),
    )
}

fn list(common: &Common) -> anyhow::Result<Exit> {
    let store = common.store.open()?;
    let scopes = store.scopes().context("listing accounts")?;
    let mut worker = common.policy.worker(store)?;
    let at = now();
    let mut rows = Vec::new();
    for account in scopes {
        let decision = worker.decide(
            &Request::Usage {
                account: account.clone(),
            },
            at,
        )?;
        // A scope without an account record (left by another policy component, say)
        // is not an account.
        if let Some(usage) = decision.usage {
            rows.push((account, usage));
        }
    }
    match common.format {
        Format::Json => {
            #[derive(Serialize)]
            struct Row<'a> {
                account: &'a str,
                plan: &'a str,
                anchor: String,
                #[serde(flatten)]
                usage: UsageJson,
            }
            let json: Vec<Row<'_>> = rows
                .iter()
                .map(|(account, u)| Row {
                    account,
                    plan: &u.plan,
                    anchor: format_instant(u.anchor),
                    usage: UsageJson::from(u),
                })
                .collect();
            println!("{}", serde_json::to_string(&json).unwrap_or_default());
        }
        Format::Text => {
            let limit = |l: Option<u64>| l.map_or("unlimited".to_string(), |n| n.to_string());
            println!(
                "{:<24} {:<18} {:>21} {:>21}  RESETS",
                "ACCOUNT", "PLAN", "LEAD CREDITS", "EMAIL CREDITS"
            );
            for (account, u) in &rows {
                // A name stored before the naming rule may hold anything: one
                // row per account whatever it holds.
                println!(
                    "{:<24} {:<18} {:>21} {:>21}  {}",
                    escape(account),
                    escape(&u.plan),
                    format!("{} / {}", u.lead_credits.used, limit(u.lead_credits.limit)),
                    format!(
                        "{} / {}",
                        u.email_credits.used,
                        limit(u.email_credits.limit)
                    ),
                    format_instant(u.email_credits.resets_at)
                );
            }
        }
    }
    Ok(Exit::Success)
}
