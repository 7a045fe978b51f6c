//! What the host's views ask the component (WIT `inspect`), and the read-only walks
//! it offers the component in return (WIT `catalog`).
//!
//! The dashboard, the listing routes and the CLI show accounts, campaigns, leads,
//! usage history and warning levels. Which scopes are accounts, which groups are
//! campaigns, how many cycles a history holds and where a credit is "close to its
//! limit" are the component's rules, so the host asks: a component with another
//! layout or other rules is shown correctly without a host change.
//!
//! Questions go to a [`Worker`]: the CLI's own, or, in `serve`, the
//! [`Inspector`]'s, a worker of its own outside the gateway's lanes (as
//! [`Gateway::find_invalid_email`]'s), so that a listing never occupies a worker a
//! sender's request may need. Callers bound how many questions run at once
//! ([`crate::api_read::Bulk`]).

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::gateway::Gateway;
use crate::runtime::{DecideError, LoadError, Worker};
use crate::store::{Store, StoreError};

pub use crate::bindings::wit::creditgate::policy::catalog::{GroupSize, Membership};
pub use crate::bindings::wit::exports::creditgate::policy::inspect::{
    AccountPage, Campaign, InspectError, Lead, Levels,
};

/// Most names or memberships one catalog walk returns, whatever the guest asks:
/// a walk holds a store snapshot and the guest's memory holds its answer.
pub const MAX_WALK: u32 = 1_000;

// ---- the catalog the host offers ------------------------------------------------

/// `catalog.scopes-after`.
pub fn scopes_after(
    store: &dyn Store,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    store.scopes_after(after, limit.min(MAX_WALK) as usize)
}

/// `catalog.members-after`.
pub fn members_after(
    store: &dyn Store,
    scope: &str,
    group: Option<&str>,
    after: Option<&Membership>,
    limit: u32,
) -> Result<Vec<Membership>, StoreError> {
    let limit = limit.min(MAX_WALK) as usize;
    let mut found = Vec::with_capacity(limit.min(64));
    if limit == 0 {
        return Ok(found);
    }
    let list = crate::store::Members {
        scope,
        group,
        after: after.map(|a| (a.group.as_str(), a.member.as_str())),
    };
    store.visit_members_after(list, &mut |g, m| {
        found.push(Membership {
            group: g.to_owned(),
            member: m.to_owned(),
        });
        found.len() < limit
    })?;
    Ok(found)
}

/// `catalog.group-sizes`: the counts the store keeps per group
/// ([`Store::group_counts`]), read without visiting a member.
pub fn group_sizes(store: &dyn Store, scope: &str) -> Result<Vec<GroupSize>, StoreError> {
    Ok(store
        .group_counts(scope)?
        .into_iter()
        .map(|c| GroupSize {
            group: c.group,
            members: c.members,
            exclusive: c.exclusive,
        })
        .collect())
}

// ---- the questions, asked of a worker -----------------------------------------------

/// Most accounts [`accounts`] asks for in one call.
const ACCOUNTS_PAGE: u32 = 256;

/// One page of accounts after `after` (see WIT `inspect.accounts`).
pub fn accounts_page(
    worker: &mut Worker,
    after: Option<&str>,
    limit: u32,
) -> Result<AccountPage, DecideError> {
    let page = worker.inspect(|g, s| g.call_accounts(s, after, limit))?;
    // A next page must start after this one, or a listing would never end.
    if let (Some(next), Some(after)) = (&page.next, after)
        && next.as_str() <= after
    {
        return Err(DecideError::Contract(format!(
            "inspect.accounts after {after:?} answered the cursor {next:?}, which does not move on"
        )));
    }
    Ok(page)
}

/// Every account, in name order.
pub fn accounts(worker: &mut Worker) -> Result<Vec<String>, DecideError> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = accounts_page(worker, after.as_deref(), ACCOUNTS_PAGE)?;
        all.extend(page.accounts);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

/// Whether any account follows `after`.
pub fn any_account_after(worker: &mut Worker, after: &str) -> Result<bool, DecideError> {
    let mut after = after.to_owned();
    loop {
        let page = accounts_page(worker, Some(&after), ACCOUNTS_PAGE)?;
        if !page.accounts.is_empty() {
            return Ok(true);
        }
        match page.next {
            Some(next) => after = next,
            None => return Ok(false),
        }
    }
}

/// The campaigns of `account` with their lead counts, in name order.
pub fn campaigns(worker: &mut Worker, account: &str) -> Result<Vec<Campaign>, DecideError> {
    worker.inspect(|g, s| g.call_campaigns(s, account))
}

/// Up to `limit` leads of `account` (of `campaign` when given) after `after`.
pub fn leads(
    worker: &mut Worker,
    account: &str,
    campaign: Option<&str>,
    after: Option<&Lead>,
    limit: u32,
) -> Result<Vec<Lead>, DecideError> {
    let leads = worker.inspect(|g, s| g.call_leads(s, account, campaign, after, limit))?;
    if leads.len() > limit as usize {
        return Err(DecideError::Contract(format!(
            "inspect.leads answered {} leads for a limit of {limit}",
            leads.len()
        )));
    }
    Ok(leads)
}

/// How many billing cycles a usage history holds at most.
pub fn history_cycles(worker: &mut Worker) -> Result<u32, DecideError> {
    worker.inspect(|g, s| g.call_history_cycles(s).map(Ok))
}

/// The warning levels of the policy in force.
pub fn warning_levels(worker: &mut Worker) -> Result<Warn, DecideError> {
    let levels = worker.inspect(|g, s| g.call_warning_levels(s))?;
    Warn::checked(levels).map_err(DecideError::Contract)
}

// ---- levels -------------------------------------------------------------------------------

/// Where the policy flags each credit as close to its limit, in percent (as
/// `GET /v1/plans` gives them as `warning_levels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Warn {
    pub lead_credits: Option<u8>,
    pub email_credits: Option<u8>,
}

impl Warn {
    fn checked(levels: Levels) -> Result<Warn, String> {
        for (credit, level) in [
            ("lead", levels.lead_credits),
            ("email", levels.email_credits),
        ] {
            if let Some(p) = level
                && !(1..=100).contains(&p)
            {
                return Err(format!("a {credit}-credit warning level of {p}%"));
            }
        }
        Ok(Warn {
            lead_credits: levels.lead_credits,
            email_credits: levels.email_credits,
        })
    }

    /// The level both credits share, if they share one: what a single legend says.
    pub fn common(self) -> Option<u8> {
        (self.lead_credits == self.email_credits)
            .then_some(self.lead_credits)
            .flatten()
    }
}

/// How close one credit is to its limit. Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// At or over the policy's warning level for the credit.
    Warning,
    /// Nothing more can be charged until usage falls, the cycle resets or the
    /// plan grows.
    Exhausted,
}

impl Level {
    /// The level of `used` of `limit` (none: unlimited, always fine) under a
    /// warning level of `warn` percent (none: no warning before exhaustion).
    pub fn of(used: u64, limit: Option<u64>, warn: Option<u8>) -> Level {
        match limit {
            None => Level::Ok,
            Some(limit) if used >= limit => Level::Exhausted,
            Some(limit)
                if warn.is_some_and(|p| {
                    u128::from(used) * 100 >= u128::from(limit) * u128::from(p)
                }) =>
            {
                Level::Warning
            }
            Some(_) => Level::Ok,
        }
    }
}

// ---- serve's inspector ------------------------------------------------------------------

/// Why a question asked in `serve` got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AskError {
    /// No instance of the version in force could be made.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The component could not answer (see [`DecideError`]).
    #[error(transparent)]
    Decide(#[from] DecideError),
    /// The blocking task that asked it failed.
    #[error("the inspection task failed: {0}")]
    Task(String),
}

/// A worker of its own for questions in `serve`, on the gateway's store, made
/// again when a reload changes the version in force.
pub struct Inspector {
    gateway: Arc<Gateway>,
    worker: Mutex<Option<(Worker, u64)>>,
    /// The warning levels of a version, kept: they change only with it, and
    /// every page asks them, even while a slow listing holds the worker.
    warn: RwLock<Option<(u64, Warn)>>,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector").finish_non_exhaustive()
    }
}

impl Inspector {
    pub fn new(gateway: Arc<Gateway>) -> Inspector {
        Inspector {
            gateway,
            worker: Mutex::new(None),
            warn: RwLock::new(None),
        }
    }

    /// The warning levels of the version in force; blocks only the first time
    /// after a reload, and never behind another question.
    pub fn warning_levels_blocking(&self) -> Result<Warn, AskError> {
        let latest = self.gateway.version();
        let kept = *self.warn.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((version, warn)) = kept
            && version == latest
        {
            return Ok(warn);
        }
        // A worker of the moment: the inspector's may be busy with a listing.
        let (version, warn) = self
            .gateway
            .with_worker_over(None, |worker, version| (version, warning_levels(worker)))?;
        let warn = warn?;
        *self.warn.write().unwrap_or_else(PoisonError::into_inner) = Some((version, warn));
        Ok(warn)
    }

    /// [`Inspector::warning_levels_blocking`] off the async workers.
    pub async fn warning_levels(self: &Arc<Self>) -> Result<Warn, AskError> {
        let inspector = self.clone();
        tokio::task::spawn_blocking(move || inspector.warning_levels_blocking())
            .await
            .map_err(|e| AskError::Task(e.to_string()))?
    }

    /// Runs `ask` on the inspector's worker; blocks (call it from a blocking
    /// thread). Questions are answered one at a time.
    pub fn ask_blocking<T>(
        &self,
        ask: impl FnOnce(&mut Worker) -> Result<T, DecideError>,
    ) -> Result<T, AskError> {
        let mut held = self.worker.lock().unwrap_or_else(PoisonError::into_inner);
        let latest = self.gateway.version();
        if held
            .as_ref()
            .is_none_or(|(_, made_for)| *made_for != latest)
        {
            *held = None;
            *held = Some(self.gateway.spare_worker()?);
        }
        let Some((worker, _)) = held.as_mut() else {
            unreachable!("set just above");
        };
        Ok(ask(worker)?)
    }

    /// [`Inspector::ask_blocking`] off the async workers.
    pub async fn ask<T: Send + 'static>(
        self: &Arc<Self>,
        ask: impl FnOnce(&mut Worker) -> Result<T, DecideError> + Send + 'static,
    ) -> Result<T, AskError> {
        let inspector = self.clone();
        tokio::task::spawn_blocking(move || inspector.ask_blocking(ask))
            .await
            .map_err(|e| AskError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_warning_level_given() {
        assert_eq!(Level::of(79, Some(100), Some(80)), Level::Ok);
        assert_eq!(Level::of(80, Some(100), Some(80)), Level::Warning);
        assert_eq!(Level::of(80, Some(100), Some(90)), Level::Ok);
        assert_eq!(Level::of(99, Some(100), None), Level::Ok);
        assert_eq!(Level::of(100, Some(100), None), Level::Exhausted);
        assert_eq!(Level::of(0, Some(0), Some(80)), Level::Exhausted);
        assert_eq!(Level::of(u64::MAX, None, Some(1)), Level::Ok);
        assert_eq!(
            Level::of(u64::MAX - 1, Some(u64::MAX), Some(80)),
            Level::Warning
        );
    }

    #[test]
    fn a_level_outside_1_to_100_is_a_broken_contract() {
        let bad = Levels {
            lead_credits: Some(0),
            email_credits: None,
        };
        assert!(Warn::checked(bad).is_err());
        let good = Levels {
            lead_credits: Some(50),
            email_credits: Some(50),
        };
        assert_eq!(Warn::checked(good).map(Warn::common), Ok(Some(50)));
    }

    #[test]
    fn group_sizes_count_memberships_per_group() {
        let store = crate::store::MemoryStore::new();
        for (group, m) in [("q1", "a"), ("q1", "b"), ("q2", "a")] {
            let add = crate::store::MemberAddMany {
                scope: "s",
                group,
                members: &[m.to_owned()],
                limit: None,
            };
            store.member_add_many(add).expect("the memory store adds");
        }
        let sizes = group_sizes(&store, "s").expect("reads");
        assert_eq!(
            sizes
                .iter()
                .map(|g| (g.group.as_str(), g.members, g.exclusive))
                .collect::<Vec<_>>(),
            [("q1", 2, 1), ("q2", 1, 0)]
        );
        let page = members_after(&store, "s", None, None, 2).expect("reads");
        let rest = members_after(&store, "s", None, page.last(), 2).expect("reads");
        assert_eq!(rest.len(), 1);
        assert_eq!(
            (rest[0].group.as_str(), rest[0].member.as_str()),
            ("q2", "a")
        );
    }
}
