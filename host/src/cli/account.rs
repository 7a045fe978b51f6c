//! `creditgate account`: subscriptions, plan changes and the list of accounts.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use creditgate::bindings::{AccountUsage, Decision, Reason};
use creditgate::names::{NameRules, escape, quote};
use creditgate::request::Request;
use creditgate::runtime::{DurableError, Worker};
use creditgate::store::Create;
use creditgate::time::{format_instant, now, parse_instant, whole_second};

use super::remote::Server;
use super::{Denied, Exit, Format, Place};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start an account on a plan; its billing cycles are anchored on the subscription.
    Subscribe {
        /// The account's name.
        account: String,
        /// The plan to start on, as the policy names it (`creditgate plans`).
        #[arg(long)]
        plan: String,
        /// The billing anchor (RFC 3339); default now, to the second.
        #[arg(long, value_name = "RFC3339")]
        anchor: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Move an account to another plan at once; usage and anchor are unchanged.
    ChangePlan {
        /// The account's name.
        account: String,
        /// The plan to move to, as the policy names it (`creditgate plans`).
        #[arg(long)]
        plan: String,
        #[command(flatten)]
        common: Common,
    },
    /// One account's plan, anchor and usage.
    Show {
        /// The account's name.
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
    pub(super) place: Place,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

impl Common {
    /// A worker over the store; only a subscription may create it.
    fn worker(&self, create: Create) -> anyhow::Result<Worker> {
        self.place.policy.worker(self.place.store.open_as(create)?)
    }

    fn server(&self) -> anyhow::Result<Option<Server>> {
        self.place.server()
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
            let at = match &anchor {
                Some(text) => parse_instant(text).map_err(|e| anyhow::anyhow!("--anchor: {e}"))?,
                // Billing cycles are counted in whole seconds from the anchor: a
                // default with nanoseconds would only clutter every reply.
                None => whole_second(now()),
            };
            let view = match common.server()? {
                Some(server) => {
                    let mut body = serde_json::json!({ "plan": plan });
                    if let Some(anchor) = &anchor {
                        body["anchor"] = anchor.as_str().into();
                    }
                    server.post(&account_path(&account, "subscription"), &body)?
                }
                None => {
                    let request = Request::Subscribe {
                        account: account.clone(),
                        plan: plan.clone(),
                        anchor: Some(at),
                    };
                    change(&common, Create::IfMissing, &account, &plan, &request, now())?
                }
            };
            print_account(common.format, &view, Some("subscribed"))
        }
        Command::ChangePlan {
            account,
            plan,
            common,
        } => {
            let account = names.account(&account)?;
            let view = match common.server()? {
                Some(server) => server.put(
                    &account_path(&account, "plan"),
                    &serde_json::json!({ "plan": plan }),
                )?,
                None => {
                    let request = Request::ChangePlan {
                        account: account.clone(),
                        plan: plan.clone(),
                    };
                    change(&common, Create::Never, &account, &plan, &request, now())?
                }
            };
            print_account(common.format, &view, Some("moved"))
        }
        Command::Show { account, common } => {
            let account = names.account(&account)?;
            let view = match common.server()? {
                Some(server) => server.get(&account_path(&account, "usage"))?,
                None => {
                    let mut worker = common.worker(Create::Never)?;
                    usage_of(&mut worker, &account)?
                }
            };
            print_account(common.format, &view, None)
        }
        Command::List { common } => list(&common),
    }
}

/// `/v1/accounts/{account}/{rest}`, the account escaped.
pub(super) fn account_path(account: &str, rest: &str) -> String {
    format!("/v1/accounts/{}/{rest}", super::remote::escape(account))
}

/// An account as every command prints it and the HTTP API answers it: plan,
/// anchor and both credits. Unknown fields of an answer are ignored, so that a
/// newer gateway can say more.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AccountView {
    pub account: String,
    pub plan: String,
    /// The policy in force lacks the plan (a reload was forced): the account is
    /// denied unknown_plan, its limits 0, until it is moved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plan_missing: bool,
    pub anchor: String,
    /// When the current email cycle began, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle_start: Option<String>,
    pub lead_credits: CreditsView,
    pub email_credits: CreditsView,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CreditsView {
    pub used: u64,
    pub limit: LimitView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
    /// Email credits: when they run out at this cycle's pace, `null` when not
    /// before the reset (the outer None: not said, as for lead credits).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "said"
    )]
    pub projected_exhaustion: Option<Option<String>>,
}

/// A field that may be `null`, told apart from one left out.
fn said<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A count, or `"unlimited"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(super) enum LimitView {
    Count(u64),
    Unlimited(String),
}

impl LimitView {
    pub fn count(&self) -> Option<u64> {
        match self {
            LimitView::Count(n) => Some(*n),
            LimitView::Unlimited(_) => None,
        }
    }
}

impl std::fmt::Display for LimitView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitView::Count(n) => write!(f, "{n}"),
            LimitView::Unlimited(_) => f.write_str("unlimited"),
        }
    }
}

impl From<Option<u64>> for LimitView {
    fn from(limit: Option<u64>) -> Self {
        limit.map_or(LimitView::Unlimited("unlimited".into()), LimitView::Count)
    }
}

impl AccountView {
    pub fn new(account: &str, u: &AccountUsage) -> Self {
        AccountView {
            account: account.to_owned(),
            plan: u.plan.clone(),
            plan_missing: false,
            anchor: format_instant(u.anchor),
            cycle_start: Some(format_instant(u.email_credits.cycle_start)),
            lead_credits: CreditsView {
                used: u.lead_credits.used,
                limit: u.lead_credits.limit.into(),
                resets_at: None,
                projected_exhaustion: None,
            },
            email_credits: CreditsView {
                used: u.email_credits.used,
                limit: u.email_credits.limit.into(),
                resets_at: Some(format_instant(u.email_credits.resets_at)),
                projected_exhaustion: Some(
                    u.email_credits.projected_exhaustion.map(format_instant),
                ),
            },
        }
    }
}

/// An account's usage now, from the local store; a denial is an error.
pub(super) fn usage_of(worker: &mut Worker, account: &str) -> anyhow::Result<AccountView> {
    let decision = worker.decide_durable(
        &Request::Usage {
            account: account.to_owned(),
        },
        now(),
    )?;
    if let Some(stranded) = stranded(account, &decision) {
        return Ok(stranded);
    }
    if let Some(denied) = Denied::of(account, &decision) {
        return Err(denied.into());
    }
    allowed_view(account, &decision)
}

/// The account as an allowed decision leaves it.
fn allowed_view(account: &str, decision: &Decision) -> anyhow::Result<AccountView> {
    let usage = decision
        .usage
        .as_ref()
        .with_context(|| format!("the policy allowed {account:?} but gave no usage"))?;
    Ok(AccountView::new(account, usage))
}

/// The account of a usage decision that found it on a plan the policy lacks.
fn stranded(account: &str, decision: &Decision) -> Option<AccountView> {
    match (decision.denied, &decision.usage) {
        (Some(Reason::UnknownPlan), Some(usage)) => Some(AccountView {
            plan_missing: true,
            ..AccountView::new(account, usage)
        }),
        _ => None,
    }
}

/// The plan as a person reads it: flagged when the policy lacks it.
fn plan_text(v: &AccountView) -> String {
    if v.plan_missing {
        format!(
            "{} (not in the policy: denied until moved)",
            escape(&v.plan)
        )
    } else {
        escape(&v.plan).into_owned()
    }
}

/// Applies a subscription or plan change, durably.
fn change(
    common: &Common,
    create: Create,
    account: &str,
    plan: &str,
    request: &Request,
    at: i64,
) -> anyhow::Result<AccountView> {
    let (mut worker, plans) = common
        .place
        .policy
        .worker_and_plans(common.place.store.open_as(create)?)?;
    let decision = worker.decide_durable(request, at)?;
    if let Some(mut denied) = Denied::of(account, &decision) {
        if decision.denied == Some(Reason::UnknownPlan) {
            let plans: Vec<String> = plans.iter().map(|p| quote(p)).collect();
            denied = denied.with_detail(format!(
                "no plan {} in the policy; its plans are: {}",
                quote(plan),
                plans.join(", ")
            ));
        }
        return Err(denied.into());
    }
    allowed_view(account, &decision)
}

fn print_account(format: Format, view: &AccountView, verb: Option<&str>) -> anyhow::Result<Exit> {
    match format {
        Format::Json => println!("{}", serde_json::to_string(view)?),
        Format::Text => {
            if let Some(verb) = verb {
                println!(
                    "{}: {verb} to plan {}",
                    escape(&view.account),
                    escape(&view.plan)
                );
            }
            print!("{}", summary(view));
        }
    }
    Ok(Exit::Success)
}

/// Plan, anchor and both credits, one per line.
pub(super) fn summary(v: &AccountView) -> String {
    format!(
        "account        {}\nplan           {}\nanchor         {}\nlead credits   {} / {}\nemail credits  {} / {} (resets {})\n",
        escape(&v.account),
        plan_text(v),
        v.anchor,
        v.lead_credits.used,
        v.lead_credits.limit,
        v.email_credits.used,
        v.email_credits.limit,
        v.email_credits.resets_at.as_deref().unwrap_or("-"),
    )
}

fn list(common: &Common) -> anyhow::Result<Exit> {
    let mut rows: Vec<AccountView> = Vec::new();
    if let Some(server) = common.server()? {
        server.pages("/v1/accounts", "", "accounts", &mut |page| {
            rows.extend(page);
            Ok(())
        })?;
    } else {
        let store = common.place.store.open_existing()?;
        let mut worker = common.place.policy.worker(store)?;
        // Which names are accounts is the component's to say.
        let accounts = creditgate::inspect::accounts(&mut worker).context("listing accounts")?;
        let at = now();
        for account in accounts {
            let usage = Request::Usage {
                account: account.clone(),
            };
            let decision = match worker.decide_durable(&usage, at) {
                Ok(decision) => decision,
                // One malformed record does not take the whole list down.
                Err(DurableError::Decide(e)) if e.is_corrupt() => {
                    eprintln!(
                        "creditgate: warning: account {} left out: {e}",
                        escape(&account)
                    );
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            // Without usage: closed since it was listed.
            if let Some(usage) = &decision.usage {
                let mut view = stranded(&account, &decision)
                    .unwrap_or_else(|| AccountView::new(&account, usage));
                // The list's rows are the API's: no cycle start.
                view.cycle_start = None;
                rows.push(view);
            }
        }
    }
    match common.format {
        Format::Json => println!("{}", serde_json::to_string(&rows)?),
        Format::Text => {
            println!(
                "{:<24} {:<18} {:>21} {:>21}  RESETS",
                "ACCOUNT", "PLAN", "LEAD CREDITS", "EMAIL CREDITS"
            );
            for v in &rows {
                let plan = if v.plan_missing {
                    format!("{} (missing)", escape(&v.plan))
                } else {
                    escape(&v.plan).into_owned()
                };
                println!(
                    "{:<24} {:<18} {:>21} {:>21}  {}",
                    escape(&v.account),
                    plan,
                    format!("{} / {}", v.lead_credits.used, v.lead_credits.limit),
                    format!("{} / {}", v.email_credits.used, v.email_credits.limit),
                    v.email_credits.resets_at.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(Exit::Success)
}
