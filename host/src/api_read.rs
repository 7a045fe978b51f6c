//! The API's read-only listings: the plans in force, accounts with their usage,
//! an account's campaigns and leads, and the alert log, as JSON, for the CLI's
//! `--server` client and for scripts; and [`Bulk`], the cap that keeps these
//! listings and the dashboard's pages from crowding out senders.
//!
//! Lists are paged by keyset: each page ends with an opaque `next` cursor (the
//! last key listed, hex-encoded so that clients treat it as a token), and the
//! next page starts the store's ordered read just after it
//! ([`Store::scopes_after`], [`Store::visit_members_after`],
//! [`Store::visit_records`]): no page holds more than its own rows in memory or
//! reads from the start again. Which names are accounts, and what an account's
//! campaigns and leads are, the component says ([`crate::inspect`]); usage comes
//! from the policy, through the gateway's bulk lane ([`Gateway::decide_bulk`]),
//! exactly as `GET /v1/accounts/{account}/usage` computes it.
//!
//! # Why a cap, and why this one
//!
//! A listing or a page over 5,000 accounts is 5,000 usage decisions. Sent down
//! the read-only lane they would queue ahead of Postfix's RCPT checks, and sixteen
//! viewers at once kept every read-only worker busy (END-OF-MESSAGE p99 went from
//! 9 ms to 86 ms in the measurement). So bulk work is bounded twice:
//! its decisions go to a lane with one worker of its own (the gateway's bulk
//! lane), which no sender's request ever waits in; and at most [`BULK_SLOTS`]
//! bulk requests run at once here (a semaphore, fair in arrival order), which
//! bounds the rest of their cost (store scans, rendering) to about one core's
//! share. A request that cannot get a slot within [`BULK_WAIT`] is answered
//! 503 `busy` rather than queued for ever.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{MethodRouter, get};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use crate::alerts::{self, FiredAlert};
use crate::bindings::{AccountUsage, Decision, Reason};
use crate::gateway::{Gateway, GatewayError};
use crate::http::{AccountJson, ApiError, Path, json};
use crate::inspect::{self, AskError, Inspector};
use crate::names::{NameError, NameRules, escape};
use crate::request::Request;
use crate::store::{Store, StoreError};
use crate::time::now;
use crate::wire::LimitJson;

/// Bulk requests (a dashboard page, a listing) that run at once; more wait.
pub const BULK_SLOTS: usize = 1;

/// Longest a bulk request waits for a slot before it is answered 503 `busy`.
pub const BULK_WAIT: Duration = Duration::from_secs(30);

/// Rows of a listing page when `limit` is not given, and the most it may ask.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1_000;

/// The gateway, with the cap every page and listing goes through.
#[derive(Clone)]
pub struct Bulk {
    gateway: Arc<Gateway>,
    /// Asks the component about accounts and campaigns.
    inspector: Arc<Inspector>,
    slots: Arc<Semaphore>,
    wait: Duration,
    /// The naming rule the API applies, so that a listing finds what a decision
    /// route would (`ACME` is `acme` unless names are case-sensitive).
    names: NameRules,
}

impl std::fmt::Debug for Bulk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulk")
            .field("free_slots", &self.slots.available_permits())
            .finish_non_exhaustive()
    }
}

/// No bulk slot came free in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl Bulk {
    /// [`BULK_SLOTS`] slots over `gateway`.
    pub fn new(gateway: Arc<Gateway>) -> Bulk {
        Bulk::with_slots(gateway, BULK_SLOTS, BULK_WAIT)
    }

    /// The same, normalising names from paths and queries by `names`.
    pub fn with_names(self, names: NameRules) -> Bulk {
        Bulk { names, ..self }
    }

    /// The naming rule in force, for the pages that take a name.
    pub fn names(&self) -> NameRules {
        self.names
    }

    /// `slots` slots (at least one), each waited for at most `wait`.
    pub fn with_slots(gateway: Arc<Gateway>, slots: usize, wait: Duration) -> Bulk {
        Bulk {
            inspector: Arc::new(Inspector::new(gateway.clone())),
            gateway,
            slots: Arc::new(Semaphore::new(slots.max(1))),
            wait,
            names: NameRules::default(),
        }
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// A slot, held until the permit is dropped; [`Busy`] after the wait.
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, Busy> {
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a timeout is the only way here.
            Ok(Err(_)) | Err(_) => Err(Busy),
        }
    }

    /// `account`'s usage decision at `at`, in the gateway's bulk lane.
    pub async fn usage(&self, account: &str, at: i64) -> Result<Decision, GatewayError> {
        let request = Request::Usage {
            account: account.to_owned(),
        };
        self.gateway.decide_bulk(request, at).await
    }

    /// Runs `ask` on the component, off the async workers (see [`Inspector`]).
    pub async fn ask<T: Send + 'static>(
        &self,
        ask: impl FnOnce(&mut crate::runtime::Worker) -> Result<T, crate::runtime::DecideError>
        + Send
        + 'static,
    ) -> Result<T, AskError> {
        self.inspector.ask(ask).await
    }

    /// The warning levels of the policy in force (see [`Inspector`]).
    pub async fn warning_levels(&self) -> Result<inspect::Warn, AskError> {
        self.inspector.warning_levels().await
    }

    /// Runs a store read off the async workers (a store may block on disk or on
    /// the network).
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.gateway.store().clone();
        tokio::task::spawn_blocking(move || read(store.as_ref()))
            .await
            .map_err(|e| StoreError::Unavailable(format!("the read task failed: {e}")))?
    }
}

/// Every route of this module, with its handler.
fn table() -> [(&'static str, &'static str, MethodRouter<Bulk>); 5] {
    [
        ("get", "/v1/plans", get(plans)),
        ("get", "/v1/accounts", get(accounts)),
        ("get", "/v1/accounts/{account}/campaigns", get(campaigns)),
        ("get", "/v1/accounts/{account}/leads", get(leads)),
        ("get", "/v1/alerts", get(alerts_page)),
    ]
}

/// The routes, as `(method, path)`, for [`crate::http::routes`].
pub fn routes() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The listings over `bulk`; merged into the API's router.
pub fn router<S: Clone + Send + Sync + 'static>(bulk: Bulk) -> Router<S> {
    let mut router = Router::new();
    for (_, path, handler) in table() {
        router = router.route(path, handler);
    }
    router.with_state(bulk)
}

type ApiResult<T> = std::result::Result<T, ApiError>;

// ---- query parameters and cursors ----------------------------------------------

/// A listing's query: `limit`, `after`, and the filters its route takes.
struct Listing {
    limit: usize,
    /// The cursor's parts, checked against the listing it belongs to.
    after: Option<Vec<String>>,
    filters: BTreeMap<&'static str, String>,
}

impl Listing {
    /// Reads `query`, refusing (400 `invalid_query`, naming the parameter) an
    /// unknown or repeated parameter, a bad `limit`, or a cursor that is not one
    /// of `kind` with `parts` parts.
    fn parse(
        query: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
        filters: &[&'static str],
        kind: &str,
        parts: usize,
    ) -> ApiResult<Listing> {
        let Query(pairs) = query.map_err(|e| invalid_query(format!("query: {}", e.body_text())))?;
        let mut listing = Listing {
            limit: DEFAULT_LIMIT,
            after: None,
            filters: BTreeMap::new(),
        };
        let mut seen = Vec::new();
        for (key, value) in pairs {
            if seen.contains(&key) {
                return Err(invalid_query(format!("{key}: given more than once")));
            }
            match key.as_str() {
                "limit" => {
                    listing.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            invalid_query(format!(
                                "limit: {value:?} is not a whole number from 1 to {MAX_LIMIT}"
                            ))
                        })?;
                }
                // Empty: from the start, so that a client may always send it.
                "after" if value.is_empty() => {}
                "after" => listing.after = Some(decode_cursor(&value, kind, parts)?),
                other => match filters.iter().find(|f| **f == other) {
                    Some(filter) => {
                        listing.filters.insert(filter, value);
                    }
                    None => {
                        let mut known = vec!["limit", "after"];
                        known.extend(filters);
                        return Err(invalid_query(format!(
                            "{other}: not a parameter of this listing (it takes {})",
                            known.join(", ")
                        )));
                    }
                },
            }
            seen.push(key);
        }
        Ok(listing)
    }

    /// The listing's filter `what` (`campaign`, `account`), normalised by
    /// `normalize` (a bad name refused as such), and the two parts of the
    /// cursor, if any: refused when the listing is filtered on one `what` and
    /// the cursor is of another's.
    #[allow(clippy::type_complexity)]
    fn filter_and_after(
        &self,
        what: &str,
        normalize: impl FnOnce(&str) -> Result<String, NameError>,
    ) -> ApiResult<(Option<String>, Option<(String, String)>)> {
        let filter = (self.filters.get(what))
            .map(|raw| normalize(raw))
            .transpose()
            .map_err(ApiError::name)?;
        let Some(parts) = &self.after else {
            return Ok((filter, None));
        };
        let after = match (&parts[..], &filter) {
            ([first, _], Some(filter)) if first != filter => {
                return Err(invalid_query(format!(
                    "after: this cursor belongs to another {what}'s listing"
                )));
            }
            ([first, second], _) => Some((first.clone(), second.clone())),
            _ => None,
        };
        Ok((filter, after))
    }
}

fn invalid_query(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
}

/// A cursor: `[kind, parts...]` as JSON, in hex. Opaque to clients; only its
/// own listing takes it back.
fn encode_cursor(kind: &str, parts: &[&str]) -> String {
    let mut all = vec![kind];
    all.extend(parts);
    let text = serde_json::to_string(&all).unwrap_or_default();
    let mut out = String::with_capacity(text.len() * 2);
    for byte in text.bytes() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn decode_cursor(text: &str, kind: &str, parts: usize) -> ApiResult<Vec<String>> {
    let bad = || {
        invalid_query(format!(
            "after: {:?} is not a cursor this listing gave",
            text.chars().take(80).collect::<String>()
        ))
    };
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    let nibble = |c: u8| HEX.iter().position(|h| *h == c.to_ascii_lowercase());
    let bytes: Option<Vec<u8>> = text
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? as u8) << 4 | nibble(pair[1])? as u8))
        .collect();
    let all: Vec<String> = bytes
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(bad)?;
    match all.split_first() {
        Some((k, rest)) if k == kind && rest.len() == parts => Ok(rest.to_vec()),
        _ => Err(bad()),
    }
}

/// A page of `items` and the cursor of the next page, if there may be one.
#[derive(Serialize)]
struct Page<T: Serialize> {
    #[serde(flatten)]
    items: T,
    next: Option<String>,
}

fn busy(_: Busy) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        format!(
            "too many listings and dashboard pages at once: none could start within {BULK_WAIT:?}; retry"
        ),
    )
}

/// A question the component could not answer: as a failed decision would be.
fn ask_error(e: AskError) -> ApiError {
    match e {
        AskError::Decide(e) => ApiError::gateway("", GatewayError::from(e)),
        other => ApiError::internal(other.to_string()),
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(m) => {
            warn!(error = %m, "listing failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", m)
        }
        StoreError::InvalidArgument(m) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument", m)
        }
        e => ApiError::internal(e.to_string()),
    }
}

// ---- handlers ------------------------------------------------------------------

#[derive(Serialize)]
struct PlanJson {
    name: String,
    lead_credits: LimitJson,
    email_credits: LimitJson,
}

#[derive(Serialize)]
struct PlansJson {
    version: u64,
    plans: Vec<PlanJson>,
    /// Where the policy flags a credit as close to its limit, in percent.
    warning_levels: inspect::Warn,
}

async fn plans(State(bulk): State<Bulk>) -> ApiResult<Response> {
    let warning_levels = bulk.warning_levels().await.map_err(ask_error)?;
    let (version, summary) = bulk.gateway.policy_summary();
    Ok(json(&PlansJson {
        version,
        warning_levels,
        plans: summary
            .plans
            .iter()
            .map(|p| PlanJson {
                name: p.name.clone(),
                lead_credits: p.lead_credits.into(),
                email_credits: p.email_credits.into(),
            })
            .collect(),
    }))
}

#[derive(Serialize)]
struct Accounts<'a> {
    accounts: Vec<AccountJson<'a>>,
}

async fn accounts(
    State(bulk): State<Bulk>,
    query: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Response> {
    let listing = Listing::parse(query, &[], "accounts", 1)?;
    let _slot = bulk.slot().await.map_err(busy)?;
    let at = now();
    let mut from = listing.after.and_then(|a| a.into_iter().next());
    // Each with whether the policy in force lacks its plan (see `AccountJson`).
    let mut rows: Vec<(String, AccountUsage, bool)> = Vec::new();
    let chunk = u32::try_from(listing.limit.clamp(16, 256)).unwrap_or(256);
    'scan: loop {
        let after = from.clone();
        let page = bulk
            .ask(move |w| inspect::accounts_page(w, after.as_deref(), chunk))
            .await
            .map_err(ask_error)?;
        for name in page.accounts {
            from = Some(name.clone());
            let decision = match bulk.usage(&name, at).await {
                Ok(decision) => decision,
                // One malformed record does not take the whole listing down.
                Err(e) if e.is_corrupt() => {
                    warn!(account = %escape(&name), "account left out of the listing: {e}");
                    continue;
                }
                Err(e) => return Err(ApiError::gateway(&name, e)),
            };
            match (decision.denied, decision.usage) {
                (None, Some(usage)) => rows.push((name, usage, false)),
                // Stranded by a forced reload: listed, and said.
                (Some(Reason::UnknownPlan), Some(usage)) => rows.push((name, usage, true)),
                // Closed since it was listed.
                (Some(Reason::UnknownAccount), _) => {}
                (denied, _) => {
                    warn!(account = %name, reason = ?denied, "account left out of the listing: no usage");
                }
            }
            if rows.len() == listing.limit {
                break 'scan;
            }
        }
        match page.next {
            Some(next) => from = Some(next),
            None => break,
        }
    }
    // A full page has a next one only if some account follows its last.
    let next = match (&from, rows.len() == listing.limit) {
        (Some(last), true) => {
            let after = last.clone();
            let more = bulk
                .ask(move |w| inspect::any_account_after(w, &after))
                .await
                .map_err(ask_error)?;
            more.then(|| encode_cursor("accounts", &[last]))
        }
        _ => None,
    };
    Ok(json(&Page {
        items: Accounts {
            accounts: rows
                .iter()
                .map(|(name, usage, missing)| AccountJson::listed(name, usage, *missing))
                .collect(),
        },
        next,
    }))
}

/// Answers 404 `unknown_account` unless `account` is subscribed.
async fn known(bulk: &Bulk, account: &str) -> ApiResult<()> {
    let decision = bulk
        .usage(account, now())
        .await
        .map_err(|e| ApiError::gateway(account, e))?;
    match decision.denied {
        Some(Reason::UnknownAccount) => Err(ApiError::unknown_account(account)),
        // An account whose plan left the policy still has its leads.
        _ => Ok(()),
    }
}

#[derive(Serialize)]
struct CampaignJson {
    campaign: String,
    leads: u64,
    /// Leads no other campaign holds: the lead credits deleting them all frees.
    exclusive: u64,
}

#[derive(Serialize)]
struct Campaigns<'a> {
    account: &'a str,
    campaigns: Vec<CampaignJson>,
}

async fn campaigns(State(bulk): State<Bulk>, Path(account): Path<String>) -> ApiResult<Response> {
    let account = bulk.names.account(&account).map_err(ApiError::name)?;
    let _slot = bulk.slot().await.map_err(busy)?;
    known(&bulk, &account).await?;
    let name = account.clone();
    let campaigns = bulk
        .ask(move |w| inspect::campaigns(w, &name))
        .await
        .map_err(ask_error)?;
    Ok(json(&Campaigns {
        account: &account,
        campaigns: campaigns
            .into_iter()
            .map(|c| CampaignJson {
                campaign: c.name,
                leads: c.leads,
                exclusive: c.exclusive,
            })
            .collect(),
    }))
}

#[derive(Serialize)]
struct LeadJson {
    campaign: String,
    email: String,
}

#[derive(Serialize)]
struct Leads<'a> {
    account: &'a str,
    leads: Vec<LeadJson>,
}

async fn leads(
    State(bulk): State<Bulk>,
    Path(account): Path<String>,
    query: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Response> {
    let account = bulk.names.account(&account).map_err(ApiError::name)?;
    let listing = Listing::parse(query, &["campaign"], "leads", 2)?;
    let (campaign, after) = listing.filter_and_after("campaign", |c| bulk.names.campaign(c))?;
    let _slot = bulk.slot().await.map_err(busy)?;
    known(&bulk, &account).await?;
    let (name, limit) = (account.clone(), listing.limit);
    let after = after.map(|(campaign, email)| inspect::Lead { campaign, email });
    // One more than the page: whether there is a next page, for free.
    let ask = u32::try_from(limit + 1).unwrap_or(u32::MAX);
    let mut found: Vec<LeadJson> = bulk
        .ask(move |w| inspect::leads(w, &name, campaign.as_deref(), after.as_ref(), ask))
        .await
        .map_err(ask_error)?
        .into_iter()
        .map(|l| LeadJson {
            campaign: l.campaign,
            email: l.email,
        })
        .collect();
    let next = if found.len() > limit {
        found.truncate(limit);
        found
            .last()
            .map(|l| encode_cursor("leads", &[&l.campaign, &l.email]))
    } else {
        None
    };
    Ok(json(&Page {
        items: Leads {
            account: &account,
            leads: found,
        },
        next,
    }))
}

#[derive(Serialize)]
struct Alerts {
    alerts: Vec<FiredAlert>,
}

async fn alerts_page(
    State(bulk): State<Bulk>,
    query: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Response> {
    let listing = Listing::parse(query, &["account"], "alerts", 2)?;
    let (account, after) = listing.filter_and_after("account", |a| bulk.names.account(a))?;
    let _slot = bulk.slot().await.map_err(busy)?;
    let limit = listing.limit;
    // (account, key, value) of one more alert than the page holds.
    let mut found: Vec<(String, String, String)> = bulk
        .read(move |store| {
            let mut found = Vec::with_capacity(limit.min(64) + 1);
            let list = crate::store::Alerts {
                owner: account.as_deref(),
                after: after.as_ref().map(|(a, k)| (a.as_str(), k.as_str())),
            };
            store.visit_alerts(list, &mut |owner, key, value| {
                found.push((owner.to_owned(), key.to_owned(), value.to_owned()));
                found.len() <= limit
            })?;
            Ok(found)
        })
        .await
        .map_err(store_error)?;
    let next = if found.len() > limit {
        found.truncate(limit);
        found
            .last()
            .map(|(account, key, _)| encode_cursor("alerts", &[account, key]))
    } else {
        None
    };
    let alerts = found
        .into_iter()
        .map(|(account, key, value)| {
            alerts::decode(&account, &key, &value).map_err(|e| ApiError::internal(e.to_string()))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(json(&Page {
        items: Alerts { alerts },
        next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_give() {
        let cursor = encode_cursor("leads", &["q1", "a@b.c"]);
        assert!(cursor.bytes().all(|b| b.is_ascii_hexdigit()), "{cursor}");
        assert_eq!(
            decode_cursor(&cursor, "leads", 2).expect("decodes"),
            ["q1", "a@b.c"]
        );
        let odd = encode_cursor("accounts", &["\0\u{1}é\"/"]);
        assert_eq!(
            decode_cursor(&odd, "accounts", 1).expect("decodes"),
            ["\0\u{1}é\"/"]
        );
        for bad in ["zz", "abc", "", "7b7d", &cursor[2..]] {
            assert!(decode_cursor(bad, "leads", 2).is_err(), "{bad:?}");
        }
        assert!(
            decode_cursor(&cursor, "alerts", 2).is_err(),
            "another listing's cursor"
        );
        assert!(decode_cursor(&cursor, "leads", 1).is_err());
    }
}
