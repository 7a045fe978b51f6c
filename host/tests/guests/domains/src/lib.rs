//! A second policy component for creditgate's world, with other rules than
//! creditgate's own (see [`rules`]): lead credits per domain, 30-day cycles, six
//! cycles of history, a warning level of the policy's choosing, and another state
//! layout. The host's tests run it under `serve`, the CLI and the dashboard to
//! show that the host assumes none of creditgate's rules.
//!
//! This file is only the binding glue: WIT types in and out of [`rules`].

#![allow(clippy::missing_safety_doc)]

pub mod rules;

use std::cell::RefCell;
use std::collections::BTreeMap;

wit_bindgen::generate!({
    path: "../../../../wit",
    world: "policy-engine",
});

use creditgate::policy::{catalog, state};
use exports::creditgate::policy::inspect::{
    self, AccountPage, Campaign, InspectError, Lead, Levels,
};
use exports::creditgate::policy::policy::{
    Account, AccountUsage, AddressProblem, Campaign as CampaignHandle, CycleUsage, Decision,
    Diagnostic, EmailKind, EmailUsage, Error, Guest, LeadBatch, LeadOutcome, LeadResult, LeadUsage,
    Mode, PlanRef, PlanSummary, PolicySummary, Reason,
};
use rules::{
    Added, Charge, Charged, Denial, Failure, LeadAdd, Member, Members, Outcome, Policy, Removed,
    Rules, Usage,
};

thread_local! {
    static POLICY: RefCell<Option<Policy>> = const { RefCell::new(None) };
    /// Names interned through the host, so that each is interned once (a
    /// `BTreeMap`: `HashMap`'s random seed is an import the host does not give).
    static NAMES: RefCell<BTreeMap<String, state::Name>> = const { RefCell::new(BTreeMap::new()) };
    /// Account names by handle (WIT `account-handle`).
    static ACCOUNTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// Campaign names by handle (WIT `campaign-handle`).
    static CAMPAIGNS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Names kept interned before all are forgotten: far below the host's limit.
const MAX_NAMES: usize = 65_536;

/// The handle of `text`, interned through the host once.
fn name(text: &str) -> Result<state::Name, state::StateError> {
    if let Some(name) = NAMES.with(|n| n.borrow().get(text).copied()) {
        return Ok(name);
    }
    let name = state::intern(text)?;
    NAMES.with(|n| n.borrow_mut().insert(text.to_owned(), name));
    Ok(name)
}

/// Forgets every interned name if there are too many; at the start of each
/// export, when no handle is held.
fn bound_names() {
    if NAMES.with(|n| n.borrow().len() >= MAX_NAMES) {
        NAMES.with(|n| n.borrow_mut().clear());
        state::forget_names();
    }
}

/// Keeps `text` under a new handle in `names`.
fn push_handle(names: &'static std::thread::LocalKey<RefCell<Vec<String>>>, text: String) -> u32 {
    names.with(|names| {
        let mut names = names.borrow_mut();
        names.push(text);
        u32::try_from(names.len() - 1).unwrap_or(u32::MAX)
    })
}

/// The name behind `handle` in `names`.
fn named(
    names: &'static std::thread::LocalKey<RefCell<Vec<String>>>,
    handle: u32,
    what: &str,
) -> Result<String, Error> {
    bound_names();
    names.with(|names| {
        usize::try_from(handle)
            .ok()
            .and_then(|i| names.borrow().get(i).cloned())
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "{what} handle {handle} was not given by this instance (or was forgotten)"
                ))
            })
    })
}

fn account_name(account: Account) -> Result<String, Error> {
    named(&ACCOUNTS, account, "account")
}

fn campaign_name(campaign: CampaignHandle) -> Result<String, Error> {
    named(&CAMPAIGNS, campaign, "campaign")
}

fn with_rules<T>(f: impl FnOnce(&Rules<'_>) -> T) -> T {
    POLICY.with(|p| {
        let policy = p.borrow();
        f(&Rules {
            policy: policy.as_ref(),
        })
    })
}

/// The host's state and catalog, as [`rules::Host`].
struct Host;

impl rules::Host for Host {
    type Error = state::StateError;
    fn record_get(&mut self, scope: &str, key: &str) -> Result<Option<String>, Self::Error> {
        state::record_get(name(scope)?, name(key)?)
    }
    fn record_insert(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, Self::Error> {
        state::record_insert(name(scope)?, name(key)?, value)
    }
    fn record_update(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, Self::Error> {
        state::record_update(name(scope)?, name(key)?, value)
    }
    fn counter_get(&mut self, scope: &str, name: &str, now: i64) -> Result<u64, Self::Error> {
        state::counter_get(self::name(scope)?, self::name(name)?, now)
    }
    fn charge(&mut self, charge: Charge<'_>) -> Result<Charged, Self::Error> {
        let guard = state::Guard {
            key: self::name("plan")?,
            version: self::name(charge.guard)?,
        };
        let once = match charge.once {
            Some((key, fingerprint)) => Some(state::Once {
                prefix: self::name("")?,
                key: key.to_owned(),
                fingerprint,
                expires_at: i64::MAX,
            }),
            None => None,
        };
        let added = state::counter_add_guarded(
            self::name(charge.scope)?,
            guard,
            self::name(charge.name)?,
            charge.amount,
            charge.limit,
            once.as_ref(),
            None,
            charge.now,
        )?;
        Ok(match added {
            state::GuardedAdd::Applied(_) => Charged::Applied,
            state::GuardedAdd::Repeated(_) => Charged::Repeated,
            state::GuardedAdd::Refused(_) => Charged::Refused,
            state::GuardedAdd::Conflict(_) => Charged::Conflict,
            state::GuardedAdd::Stale => Charged::Stale,
        })
    }
    fn member_add(&mut self, at: Member<'_>, limit: Option<u64>) -> Result<Added, Self::Error> {
        let (scope, group) = (name(at.scope)?, name(at.group)?);
        let added = state::member_add_many(scope, group, &[at.member.to_owned()], limit)?;
        Ok(match added.outcomes.first() {
            Some(state::MemberAddOutcome::AlreadyInGroup) => Added::AlreadyInGroup,
            Some(state::MemberAddOutcome::Joined) => Added::Joined,
            Some(state::MemberAddOutcome::Inserted) => Added::Inserted,
            Some(state::MemberAddOutcome::Refused) | None => Added::Refused,
        })
    }
    fn member_remove(&mut self, at: Member<'_>) -> Result<Removed, Self::Error> {
        let removed = state::member_remove(name(at.scope)?, name(at.group)?, at.member)?;
        Ok(match removed.outcome {
            state::MemberRemoveOutcome::NotInGroup => Removed::NotInGroup,
            state::MemberRemoveOutcome::LeftGroup => Removed::LeftGroup,
            state::MemberRemoveOutcome::Released => Removed::Released,
        })
    }
    fn group_clear(&mut self, scope: &str, group: &str) -> Result<(u64, u64), Self::Error> {
        let cleared = state::group_clear(name(scope)?, name(group)?)?;
        Ok((cleared.removed, cleared.released))
    }
    fn member_count(&mut self, scope: &str) -> Result<u64, Self::Error> {
        state::member_count(name(scope)?)
    }
    fn scopes_after(&mut self, after: &str, limit: u32) -> Result<Vec<String>, Self::Error> {
        catalog::scopes_after(Some(after), limit)
    }
    fn members_after(
        &mut self,
        list: Members<'_>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, Self::Error> {
        let after = list.after.map(|(g, m)| catalog::Membership {
            group: g.to_owned(),
            member: m.to_owned(),
        });
        Ok(
            catalog::members_after(list.scope, list.group, after.as_ref(), limit)?
                .into_iter()
                .map(|m| (m.group, m.member))
                .collect(),
        )
    }
    fn group_sizes(&mut self, scope: &str) -> Result<Vec<(String, u64, u64)>, Self::Error> {
        Ok(catalog::group_sizes(scope)?
            .into_iter()
            .map(|g| (g.group, g.members, g.exclusive))
            .collect())
    }
}

fn reason(d: Denial) -> Reason {
    match d {
        Denial::AlreadySubscribed => Reason::AlreadySubscribed,
        Denial::UnknownAccount => Reason::UnknownAccount,
        Denial::UnknownPlan => Reason::UnknownPlan,
        Denial::InvalidEmail => Reason::InvalidEmail,
        Denial::NoRecipients => Reason::NoRecipients,
        Denial::LeadCreditsExhausted => Reason::LeadCreditsExhausted,
        Denial::EmailCreditsExhausted => Reason::EmailCreditsExhausted,
        Denial::KeyReused => Reason::IdempotencyKeyReused,
    }
}

fn usage(u: Usage) -> AccountUsage {
    let loaded = POLICY.with(|p| {
        p.borrow()
            .as_ref()
            .and_then(|p| p.plans.iter().position(|plan| plan.name == u.plan))
    });
    AccountUsage {
        plan: match loaded.and_then(|i| u32::try_from(i).ok()) {
            Some(index) => PlanRef::Loaded(index),
            None => PlanRef::Missing(u.plan),
        },
        anchor: u.anchor,
        lead_credits: LeadUsage {
            used: u.leads_used,
            limit: u.leads_limit,
        },
        email_credits: EmailUsage {
            used: u.emails_used,
            limit: u.emails_limit,
            cycle_start: u.cycle_start,
            resets_at: u.resets_at,
            projected_exhaustion: None,
        },
    }
}

fn error(f: Failure<state::StateError>) -> Error {
    match f {
        Failure::NoPolicy => Error::NoPolicy,
        Failure::State(e) => Error::State(e),
        Failure::InvalidRequest(m) => Error::InvalidRequest(m),
    }
}

fn decision(outcome: Result<Outcome, Failure<state::StateError>>) -> Result<Decision, Error> {
    let o = outcome.map_err(error)?;
    Ok(Decision {
        denied: o.denied.map(reason),
        charged: o.charged,
        freed: o.freed,
        usage: o.usage.map(usage),
        alerts: Vec::new(),
        upgrade_to: None,
        shadow: None,
    })
}

fn inspect_error(e: state::StateError) -> InspectError {
    InspectError::State(e)
}

struct Domains;

export!(Domains);

impl Guest for Domains {
    fn account_handle(name: String) -> Account {
        push_handle(&ACCOUNTS, name)
    }
    fn campaign_handle(name: String) -> CampaignHandle {
        push_handle(&CAMPAIGNS, name)
    }
    fn forget_handles() {
        ACCOUNTS.with(|a| a.borrow_mut().clear());
        CAMPAIGNS.with(|c| c.borrow_mut().clear());
    }
    /// This component has no shadow mode: its plans are enforced whatever the
    /// gateway's mode, and it says so in the summary.
    fn load_policy(text: String, _gateway_mode: Mode) -> Result<PolicySummary, Vec<Diagnostic>> {
        let policy = rules::parse(&text).map_err(|problems| {
            problems
                .into_iter()
                .map(|(message, line)| Diagnostic {
                    message,
                    path: String::new(),
                    line,
                    column: u32::from(line > 0),
                })
                .collect::<Vec<_>>()
        })?;
        let summary = PolicySummary {
            plans: policy
                .plans
                .iter()
                .map(|p| PlanSummary {
                    name: p.name.clone(),
                    lead_credits: p.leads,
                    email_credits: p.emails,
                    mode: Mode::Enforce,
                })
                .collect(),
            warnings: Vec::new(),
        };
        POLICY.with(|p| *p.borrow_mut() = Some(policy));
        Ok(summary)
    }

    fn subscribe(account: Account, plan: String, anchor: i64, now: i64) -> Result<Decision, Error> {
        let account = account_name(account)?;
        decision(with_rules(|r| {
            r.subscribe(&mut Host, &account, &plan, anchor, now)
        }))
    }
    fn change_plan(account: Account, plan: String, now: i64) -> Result<Decision, Error> {
        let account = account_name(account)?;
        decision(with_rules(|r| {
            r.change_plan(&mut Host, &account, &plan, now)
        }))
    }
    fn add_lead(
        account: Account,
        campaign: CampaignHandle,
        email: String,
        now: i64,
    ) -> Result<Decision, Error> {
        let account = account_name(account)?;
        let campaign = campaign_name(campaign)?;
        decision(with_rules(|r| {
            r.add_lead(&mut Host, &account, &campaign, &email, now)
        }))
    }
    fn add_leads(
        account: Account,
        campaign: CampaignHandle,
        emails: Vec<String>,
        now: i64,
    ) -> Result<LeadBatch, Error> {
        let account = account_name(account)?;
        let campaign = campaign_name(campaign)?;
        let (denied, results, used) =
            with_rules(|r| r.add_leads(&mut Host, &account, &campaign, &emails, now))
                .map_err(error)?;
        Ok(LeadBatch {
            denied: denied.map(reason),
            results: results
                .into_iter()
                .zip(&emails)
                .map(|(outcome, email)| LeadResult {
                    outcome: match outcome {
                        LeadAdd::Added => LeadOutcome::Added,
                        LeadAdd::AlreadyInCampaign => LeadOutcome::AlreadyInCampaign,
                        LeadAdd::Joined => LeadOutcome::Joined,
                        LeadAdd::InvalidEmail => LeadOutcome::InvalidEmail,
                        LeadAdd::Exhausted => LeadOutcome::LeadCreditsExhausted,
                    },
                    contact: rules::address(email).map_or(0, |(l, d)| fingerprint(&l, &d)),
                })
                .collect(),
            usage: used.map(usage),
            alerts: Vec::new(),
            upgrade_to: None,
            shadow: None,
        })
    }
    fn delete_lead(
        account: Account,
        campaign: CampaignHandle,
        email: String,
        now: i64,
    ) -> Result<Decision, Error> {
        let account = account_name(account)?;
        let campaign = campaign_name(campaign)?;
        decision(with_rules(|r| {
            r.delete_lead(&mut Host, &account, &campaign, &email, now)
        }))
    }
    fn delete_campaign_leads(
        account: Account,
        campaign: CampaignHandle,
        now: i64,
    ) -> Result<Decision, Error> {
        let account = account_name(account)?;
        let campaign = campaign_name(campaign)?;
        decision(with_rules(|r| {
            r.delete_campaign_leads(&mut Host, &account, &campaign, now)
        }))
    }
    fn send_email(
        account: Account,
        to: Option<String>,
        more_to: Option<Vec<String>>,
        _kind: EmailKind,
        message_id: Option<String>,
        now: i64,
    ) -> Result<Decision, Error> {
        let to: Vec<String> = to
            .into_iter()
            .chain(more_to.into_iter().flatten())
            .collect();
        let account = account_name(account)?;
        decision(with_rules(|r| {
            r.send(&mut Host, &account, &to, message_id.as_deref(), now)
        }))
    }
    fn charge_email(
        account: Account,
        cost: u64,
        message_id: Option<String>,
        now: i64,
    ) -> Result<Decision, Error> {
        let account = account_name(account)?;
        decision(with_rules(|r| {
            r.charge(&mut Host, &account, cost, message_id.as_deref(), now)
        }))
    }
    fn check_email(account: Account, cost: u64, now: i64) -> Result<Decision, Error> {
        let account = account_name(account)?;
        decision(with_rules(|r| r.check(&mut Host, &account, cost, now)))
    }
    fn usage(account: Account, now: i64) -> Result<Decision, Error> {
        let account = account_name(account)?;
        decision(with_rules(|r| r.usage(&mut Host, &account, now)))
    }
    fn email_history(account: Account, cycles: u32, now: i64) -> Result<Vec<CycleUsage>, Error> {
        let account = account_name(account)?;
        let history =
            with_rules(|r| r.email_history(&mut Host, &account, cycles, now)).map_err(error)?;
        Ok(history
            .into_iter()
            .map(|(start, end, used)| CycleUsage { start, end, used })
            .collect())
    }
    fn find_invalid_email(emails: Vec<String>) -> Option<AddressProblem> {
        emails.iter().enumerate().find_map(|(index, email)| {
            rules::address(email).is_none().then(|| AddressProblem {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                problem: "not local@domain.tld".to_owned(),
            })
        })
    }
}

/// A contact's fingerprint: FNV-1a of its normalised form.
fn fingerprint(local: &str, domain: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in local.bytes().chain([b'@']).chain(domain.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl inspect::Guest for Domains {
    fn accounts(after: Option<String>, limit: u32) -> Result<AccountPage, InspectError> {
        bound_names();
        let (accounts, next) =
            Rules::accounts(&mut Host, after.as_deref(), limit).map_err(inspect_error)?;
        Ok(AccountPage { accounts, next })
    }
    fn campaigns(account: String) -> Result<Vec<Campaign>, InspectError> {
        bound_names();
        Ok(Rules::campaigns(&mut Host, &account)
            .map_err(inspect_error)?
            .into_iter()
            .map(|(name, leads, exclusive)| Campaign {
                name,
                leads,
                exclusive,
            })
            .collect())
    }
    fn leads(
        account: String,
        campaign: Option<String>,
        after: Option<Lead>,
        limit: u32,
    ) -> Result<Vec<Lead>, InspectError> {
        bound_names();
        let after = after
            .as_ref()
            .map(|l| (l.campaign.as_str(), l.email.as_str()));
        Ok(
            Rules::leads(&mut Host, &account, campaign.as_deref(), after, limit)
                .map_err(inspect_error)?
                .into_iter()
                .map(|(campaign, email)| Lead { campaign, email })
                .collect(),
        )
    }
    fn history_cycles() -> u32 {
        rules::HISTORY_CYCLES
    }
    fn warning_levels() -> Result<Levels, InspectError> {
        POLICY.with(|p| {
            let policy = p.borrow();
            let policy = policy.as_ref().ok_or(InspectError::NoPolicy)?;
            Ok(Levels {
                lead_credits: policy.warn,
                email_credits: policy.warn,
            })
        })
    }
}
