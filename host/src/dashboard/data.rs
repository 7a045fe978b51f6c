//! What the pages show, and how it is asked for: every account's usage through
//! the component (a `usage` decision each, in the gateway's bulk lane), the
//! list a page at a time, and an account page's details. Nothing here renders.

use std::collections::BTreeMap;

use crate::alerts::{self, FiredAlert};
use crate::api_read::Bulk;
use crate::bindings::{AccountUsage, CycleUsage, Reason};
use crate::gateway::Refusal;
use crate::inspect::{self, Level, Warn};

use super::params::Params;
use super::{EXAMINE_AT_MOST, PAGE_ROWS};

/// Names a page reads at most while the name filter matches none of them: a
/// store read each, no decision.
const NAMES_AT_MOST: usize = 20_000;

impl Level {
    /// The worse of an account's two credits, each at its warning level.
    pub(super) fn of_usage(u: &AccountUsage, warn: Warn) -> Level {
        Level::of(u.lead_credits.used, u.lead_credits.limit, warn.lead_credits).max(Level::of(
            u.email_credits.used,
            u.email_credits.limit,
            warn.email_credits,
        ))
    }
}

/// `used` as a percentage of `limit`, as `creditgate usage` prints it (a limit
/// of 0 is 100% used); `None` when unlimited.
pub(super) fn percent(used: u64, limit: Option<u64>) -> Option<f64> {
    match limit? {
        0 => Some(100.0),
        limit => Some(100.0 * used as f64 / limit as f64),
    }
}

/// One account and its usage.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) account: String,
    pub(super) usage: AccountUsage,
    /// The policy in force lacks the account's plan (a reload was forced): it is
    /// denied every request, its limits 0, until moved. Listed, and said.
    pub(super) plan_missing: bool,
    /// The account's plan is in shadow mode: it is let through past its
    /// limits. Marked, with how far over.
    pub(super) shadow: bool,
}

/// One page of the list: the accounts it shows, and where the next page starts.
#[derive(Debug, Default)]
pub(super) struct Listed {
    pub(super) rows: Vec<Row>,
    /// The last name examined, when more names follow it.
    pub(super) next: Option<String>,
    /// Accounts examined (one usage decision each) for this page.
    pub(super) examined: usize,
}

/// The page of accounts `params` select at `at`: accounts (as the component lists
/// them) in name order from just after `params.after`, each whose `usage`
/// decision is allowed and passes the filters, until the page is full or its
/// budget spent.
pub(super) async fn listed(bulk: &Bulk, params: &Params, at: i64) -> Result<Listed, String> {
    const CHUNK: u32 = 256;
    let mut listed = Listed::default();
    let mut from = params.after.clone();
    let mut names = 0;
    loop {
        let after = from.clone();
        let chunk = bulk
            .ask(move |w| inspect::accounts_page(w, after.as_deref(), CHUNK))
            .await
            .map_err(|e| format!("cannot list accounts: {e}"))?;
        for scope in chunk.accounts {
            if listed.rows.len() == PAGE_ROWS
                || listed.examined == EXAMINE_AT_MOST
                || names == NAMES_AT_MOST
            {
                // `scope` follows the last name examined: there is a next page.
                listed.next = from;
                return Ok(listed);
            }
            names += 1;
            from = Some(scope.clone());
            if !params.names(&scope) {
                continue;
            }
            listed.examined += 1;
            // One at a time, in the gateway's bulk lane: a page never has more
            // than one decision waiting, and never in a sender's lane.
            let decision = match bulk.usage(&scope, at).await {
                Ok(decision) => decision,
                // One malformed record does not take the whole page down.
                Err(e) if e.is_corrupt() => {
                    tracing::warn!(account = %crate::names::escape(&scope), "account left out of the dashboard: {e}");
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            // An account on a plan the policy lacks is shown with it.
            let plan_missing = decision.denied == Some(Reason::UnknownPlan);
            if let (None | Some(Reason::UnknownPlan), Some(usage)) =
                (decision.denied, decision.usage)
                && params.shows(&usage)
            {
                listed.rows.push(Row {
                    account: scope,
                    shadow: !plan_missing && bulk.gateway().plan_in_shadow(&usage.plan),
                    usage,
                    plan_missing,
                });
            }
        }
        match chunk.next {
            // Past names the component did not count as accounts, too.
            Some(next) => from = Some(next),
            None => return Ok(listed),
        }
    }
}

/// What an account page shows besides usage; each part may fail alone.
pub(super) struct Details {
    pub(super) history: Result<Vec<CycleUsage>, String>,
    /// Campaign → (leads, leads no other campaign holds).
    pub(super) campaigns: Result<BTreeMap<String, (u64, u64)>, String>,
    pub(super) refusals: Vec<Refusal>,
    pub(super) alerts: Result<Vec<FiredAlert>, String>,
    /// The policy's warning levels.
    pub(super) warn: Warn,
    /// Billing cycles the chart has room for: as many as the component keeps.
    pub(super) cycles: u32,
}

/// The details of `account`'s page at `at`: the warning levels and the number
/// of cycles the component keeps (without which there is no page: the error
/// says why), then its campaigns, email history, alerts and recent refusals,
/// each of which may fail alone.
pub(super) async fn details(bulk: &Bulk, account: &str, at: i64) -> Result<Details, String> {
    let gateway = bulk.gateway();
    let warn = bulk
        .warning_levels()
        .await
        .map_err(|e| format!("cannot read the warning levels: {e}"))?;
    let name = account.to_owned();
    let asked = bulk
        .ask(move |w| {
            let cycles = inspect::history_cycles(w)?;
            let campaigns = inspect::campaigns(w, &name).map(|found| {
                found
                    .into_iter()
                    .map(|c| (c.name, (c.leads, c.exclusive)))
                    .collect::<BTreeMap<_, _>>()
            });
            Ok((cycles, campaigns))
        })
        .await;
    let (cycles, campaigns) = match asked {
        Ok((cycles, campaigns)) => (cycles, campaigns.map_err(|e| e.to_string())),
        Err(e) => return Err(e.to_string()),
    };
    let history = gateway
        .email_history(account.to_owned(), cycles, at)
        .await
        .map_err(|e| e.to_string());
    let store = gateway.store().clone();
    let name = account.to_owned();
    let fired = tokio::task::spawn_blocking(move || {
        alerts::list(store.as_ref(), Some(&name)).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let refusals = gateway.recent_refusals(account);
    Ok(Details {
        history,
        campaigns,
        refusals,
        alerts: fired,
        warn,
        cycles,
    })
}
