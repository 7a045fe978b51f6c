//! The web dashboard: every account's credits at a glance (`GET /`), and one page
//! per account (`GET /accounts/{account}`), served by `serve` next to the HTTP API.
//!
//! What an account is, what its campaigns are, how many billing cycles its chart
//! holds and where a credit turns to "warning" are the component's to say: the
//! pages ask it ([`crate::inspect`]) and know no layout or rule of their own.
//!
//! Server-rendered HTML with its CSS inline: no JavaScript, no build step, nothing
//! fetched from anywhere else, so it works in any browser, on a phone, and on a
//! gateway with no way out to the internet. Sorting and filtering are plain links
//! and a GET form. Every figure comes from the [`AccountUsage`] of a `usage`
//! decision asked of the same gateway as `GET /v1/accounts/{account}/usage`, so
//! the page and the API cannot disagree.
//!
//! The list is paged: [`PAGE_ROWS`] accounts a page, in the store's order of
//! names, each page resuming after the last name the previous one examined, so a
//! page costs the same with 50 accounts or 500,000. The name filter is applied to
//! names before any decision; the state filter needs each account's usage, so a
//! page examines at most [`EXAMINE_AT_MOST`] accounts and then offers the next
//! page. Sorting orders the rows of the page shown. Every page, and each account
//! page, runs under the cap of [`Bulk`]: its decisions go to the gateway's bulk
//! lane and at most [`crate::api_read::BULK_SLOTS`] pages or listings run at
//! once, so viewers cannot crowd out Postfix's checks.
//!
//! Account names are untrusted input (any client of the API may subscribe one):
//! every string goes through [`escape`] on its way into HTML and every name
//! through [`percent_encode`] on its way into a URL, and a Content-Security-Policy
//! that allows no script at all is there in case one is ever missed.
//!
//! [`data`] asks the gateway (what is shown), [`params`] reads and writes the
//! list's query parameters (what is asked for), [`html`] renders (how it looks),
//! and `style.css` is the stylesheet every page carries inline.
//!
//! [`AccountUsage`]: crate::bindings::AccountUsage

mod data;
mod html;
mod params;
#[cfg(test)]
mod tests;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;

use crate::api_read::Bulk;
use crate::bindings::Reason;
use crate::time::now;
use crate::wire::reason_code;

use data::{details, listed};
use html::{Page, account_main, index_main, plan_cell, shadow_badge};
pub use html::{escape, percent_encode};
use params::Params;

/// Accounts a page of the list shows at most.
pub const PAGE_ROWS: usize = 50;

/// Accounts a page of the list examines (one usage decision each) at most while
/// the state filter leaves rows out; past it, the page ends with what it found.
pub const EXAMINE_AT_MOST: usize = 500;

/// The dashboard's routes over `bulk`'s gateway. Generic in the state of the
/// router it is merged into: its own state is given here, so it fits any.
pub fn router<S: Clone + Send + Sync + 'static>(bulk: Bulk) -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/accounts/{account}", get(account))
        .with_state(bulk)
}

// ---- the list of accounts ---------------------------------------------------------

async fn index(
    State(bulk): State<Bulk>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Page {
    let pairs = query.map(|Query(pairs)| pairs).unwrap_or_default();
    let mut params = Params::parse(&pairs);
    let Ok(_slot) = bulk.slot().await else {
        return Page::busy();
    };
    params.warn = match bulk.warning_levels().await {
        Ok(warn) => warn,
        Err(e) => return Page::unavailable(&format!("cannot read the warning levels: {e}")),
    };
    let at = now();
    match listed(&bulk, &params, at).await {
        Ok(listed) => Page::ok("Accounts", index_main(&listed, &params, at)),
        Err(message) => Page::unavailable(&message),
    }
}

// ---- one account ---------------------------------------------------------------

async fn account(State(bulk): State<Bulk>, path: Result<Path<String>, PathRejection>) -> Page {
    let Ok(Path(account)) = path else {
        return Page::error(
            StatusCode::BAD_REQUEST,
            "Not an account address",
            "The account name in this address does not decode.",
        );
    };
    let account = match bulk.names().account(&account) {
        Ok(account) => account,
        Err(e) => {
            return Page::error(StatusCode::NOT_FOUND, "No such account", &e.to_string());
        }
    };
    let Ok(_slot) = bulk.slot().await else {
        return Page::busy();
    };
    let gateway = bulk.gateway();
    let at = now();
    let (usage, plan_missing) = match bulk.usage(&account, at).await {
        Err(e) => return Page::unavailable(&e.to_string()),
        Ok(d) => match (d.denied, d.usage) {
            (None, Some(usage)) => (usage, false),
            (Some(Reason::UnknownPlan), Some(usage)) => (usage, true),
            (Some(Reason::UnknownAccount), _) => {
                return Page::error(
                    StatusCode::NOT_FOUND,
                    "No such account",
                    &format!("There is no account {account:?}."),
                );
            }
            (Some(Reason::UnknownPlan), _) => {
                return Page::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Plan not in the policy",
                    &format!("The plan of {account:?} is not in the policy in force."),
                );
            }
            (denied, _) => {
                return Page::unavailable(&format!(
                    "the usage of {account:?} was answered without usage ({})",
                    denied.map_or("allowed", reason_code)
                ));
            }
        },
    };
    let details = match details(&bulk, &account, at).await {
        Ok(details) => details,
        Err(message) => return Page::unavailable(&message),
    };
    let mut main = account_main(&account, &usage, &details, at);
    if !plan_missing && gateway.plan_in_shadow(&usage.plan) {
        let plan = format!(r#"<dd class="plan">{}"#, escape(&usage.plan));
        main = main.replacen(&plan, &(plan.clone() + &shadow_badge(&usage)), 1);
    }
    if plan_missing {
        // Said at the top, and in the plan's own place.
        main = main.replacen(
            &format!(r#"<dd class="plan">{}</dd>"#, escape(&usage.plan)),
            &format!(r#"<dd class="plan">{}</dd>"#, plan_cell(&usage.plan, true)),
            1,
        );
    }
    Page::ok(account.clone(), main)
}
