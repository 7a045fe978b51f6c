//! A plain-Rust reference model of creditgate's credit semantics, written from the
//! specification (not from the guest's code), for the property tests in
//! `properties.rs` to compare the real component against.
//!
//! Clarity over speed: state is kept in the most literal form the specification
//! suggests (the set of contacts of every campaign, the email credits used in every
//! billing cycle, the message ids charged and until when each is remembered) and
//! every figure is computed from it when asked.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Months};
use creditgate::bindings::EmailKind;
use creditgate::replay::{Event, format_instant};
use creditgate::request::Request;
use creditgate::wire::{CreditsJson, LimitJson, Outcome, ShadowJson, UsageJson};

/// How long a charged message id is remembered past the end of the billing cycle
/// that charged it: 7 days, longer than Postfix's 5-day `maximal_queue_lifetime`,
/// so that a message retried until its sender gives up is charged once, whichever
/// cycle the retries fall in.
pub const ONCE_GRACE: i64 = 7 * 24 * 3600 * 1_000_000_000;

/// An allowance: `None` is unlimited.
pub type Allowance = Option<u64>;

/// One plan of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub lead_credits: Allowance,
    pub email_credits: Allowance,
}

/// What the model knows of a policy: its plans and what each kind of email costs.
#[derive(Debug, Clone)]
pub struct Policy {
    pub plans: BTreeMap<String, Plan>,
    /// Per distinct recipient: `first`, `follow_up`, `reply`.
    pub first: u64,
    pub follow_up: u64,
    pub reply: u64,
    /// Plans in shadow mode: let past their limits, and said so.
    pub shadow: BTreeSet<String>,
}

impl Policy {
    /// A policy with every email kind costing 1.
    pub fn new(plans: &[(&str, Allowance, Allowance)]) -> Self {
        Policy {
            plans: plans
                .iter()
                .map(|&(name, lead_credits, email_credits)| {
                    (
                        name.to_string(),
                        Plan {
                            lead_credits,
                            email_credits,
                        },
                    )
                })
                .collect(),
            first: 1,
            follow_up: 1,
            reply: 1,
            shadow: BTreeSet::new(),
        }
    }

    /// The same policy with `plan` in shadow mode.
    pub fn with_shadow(mut self, plan: &str) -> Self {
        self.shadow.insert(plan.to_string());
        self
    }

    /// The same policy with other email costs.
    pub fn with_costs(mut self, first: u64, follow_up: u64, reply: u64) -> Self {
        self.first = first;
        self.follow_up = follow_up;
        self.reply = reply;
        self
    }

    /// The policy as the TOML the component loads.
    pub fn toml(&self) -> String {
        fn allowance(a: Allowance) -> String {
            a.map_or_else(|| "\"unlimited\"".to_string(), |n| n.to_string())
        }
        let mut out = format!(
            "version = 1\n\n[email_costs]\nfirst = {}\nfollow_up = {}\nreply = {}\n",
            self.first, self.follow_up, self.reply
        );
        for (name, plan) in &self.plans {
            out += &format!(
                "\n[plans.{name}]\nlead_credits = {}\nemail_credits = {}\n",
                allowance(plan.lead_credits),
                allowance(plan.email_credits)
            );
            if self.shadow.contains(name) {
                out += "mode = \"shadow\"\n";
            }
        }
        out
    }

    /// What one recipient of an email of `kind` costs.
    pub fn cost(&self, kind: EmailKind) -> u64 {
        match kind {
            EmailKind::First => self.first,
            EmailKind::FollowUp => self.follow_up,
            EmailKind::Reply => self.reply,
        }
    }
}

/// One subscribed account.
#[derive(Debug, Clone)]
pub struct Account {
    pub plan: String,
    /// The billing anchor: when the account subscribed (ns since the epoch, UTC).
    pub anchor: i64,
    /// Campaign name → the (normalised) contacts it holds. Empty sets may linger.
    pub campaigns: BTreeMap<String, BTreeSet<String>>,
    /// Billing cycle index → email credits used in that cycle.
    pub emails_used: BTreeMap<u32, u64>,
    /// Message id → what it was charged for, and until when it is remembered:
    /// one entry per id, whatever cycle charged it.
    pub message_ids: BTreeMap<String, Remembered>,
    /// The newest billing cycle a charge was asked in: no instant counts in an
    /// earlier one (a clock stepped back, a gateway behind another).
    pub newest: u32,
}

/// A charged message id as the account remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub charged: Charged,
    /// The end of the cycle that charged it plus [`ONCE_GRACE`]: before this
    /// instant (a clock stepped back included), the id is this message's.
    pub until: i64,
}

impl Account {
    /// Lead credits used: the distinct contacts held over all campaigns.
    pub fn contacts(&self) -> BTreeSet<&String> {
        self.campaigns.values().flatten().collect()
    }

    pub fn lead_used(&self) -> u64 {
        self.contacts().len() as u64
    }

    /// Whether `campaign` holds `contact`.
    fn holds(&self, campaign: &str, contact: &str) -> bool {
        self.campaigns
            .get(campaign)
            .is_some_and(|s| s.contains(contact))
    }

    /// Takes `contact` out of `campaign`; whether it was there.
    fn take_out(&mut self, campaign: &str, contact: &str) -> bool {
        (self.campaigns.get_mut(campaign)).is_some_and(|s| s.remove(contact))
    }

    /// Whether some campaign other than `except` holds `contact`.
    fn held_elsewhere(&self, contact: &str, except: &str) -> bool {
        self.campaigns
            .iter()
            .any(|(name, set)| name != except && set.contains(contact))
    }

    pub fn emails_used_in(&self, cycle: u32) -> u64 {
        self.emails_used.get(&cycle).copied().unwrap_or(0)
    }

    /// The billing cycle that counts at `now`: the one `now` falls in, or the
    /// next one when a charge was asked in a later one and `now` is within
    /// [`TURNOVER_SKEW`] of its start (a clock a little behind another's).
    pub fn cycle_at(&self, now: i64) -> u32 {
        let cycle = cycle_of(self.anchor, now);
        let next_start = cycle_start(self.anchor, cycle + 1);
        if self.newest > cycle && next_start.saturating_sub(now) <= TURNOVER_SKEW {
            cycle + 1
        } else {
            cycle
        }
    }
}

/// How far before a cycle's end a clock is held to the next cycle once a
/// charge was asked in it (the guest's `known::TURNOVER_SKEW`): ten minutes.
pub const TURNOVER_SKEW: i64 = 10 * 60 * 1_000_000_000;

/// The start of billing cycle `n` of an account anchored at `anchor`: the anchor plus
/// `n` calendar months (day clamped to the month's length), same time of day, UTC.
pub fn cycle_start(anchor: i64, n: u32) -> i64 {
    DateTime::from_timestamp_nanos(anchor)
        .naive_utc()
        .checked_add_months(Months::new(n))
        .expect("cycle start within chrono's range")
        .and_utc()
        .timestamp_nanos_opt()
        .expect("cycle start within the i64 nanosecond range")
}

/// The billing cycle `now` falls in; instants before the anchor are in cycle 0.
pub fn cycle_of(anchor: i64, now: i64) -> u32 {
    let mut n = 0;
    while cycle_start(anchor, n + 1) <= now {
        n += 1;
    }
    n
}

/// The contact identity of an address, or `None` if the address is not valid.
pub fn normalise(address: &str) -> Option<String> {
    let a = address.trim().to_lowercase();
    if a.chars().count() > 254 || a.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let mut parts = a.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return None; // no `@`, or more than one
    };
    if local.is_empty()
        || domain.is_empty()
        || !domain.contains('.')
        || domain.split('.').any(str::is_empty)
    {
        return None;
    }
    Some(a)
}

/// What a message id was charged for: a retry must ask for the same again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charged {
    /// `send_email`: the set of distinct normalised recipients, and what one
    /// costs (by the email's kind): sent again as a dearer kind, it is another
    /// message.
    Recipients(BTreeSet<String>, u64),
    /// `charge_email`: the cost.
    Cost(u64),
}

/// Reason codes, as the specification names them.
pub const ALREADY_SUBSCRIBED: &str = "already_subscribed";
pub const UNKNOWN_ACCOUNT: &str = "unknown_account";
pub const UNKNOWN_PLAN: &str = "unknown_plan";
pub const INVALID_EMAIL: &str = "invalid_email";
pub const NO_RECIPIENTS: &str = "no_recipients";
pub const LEAD_CREDITS_EXHAUSTED: &str = "lead_credits_exhausted";
pub const EMAIL_CREDITS_EXHAUSTED: &str = "email_credits_exhausted";
pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";

/// The model: a policy and every account's state.
#[derive(Debug, Clone)]
pub struct Model {
    pub policy: Policy,
    pub accounts: BTreeMap<String, Account>,
}

/// What a decision did, before usage is attached.
struct Verdict {
    denied: Option<&'static str>,
    charged: u64,
    freed: u64,
    /// For a denial for want of credits: which credit (lead: true) and how many
    /// of it the request needed in all.
    needed: Option<(bool, u64)>,
    /// For a request let past a limit in shadow: the same, for what
    /// enforcement would have refused.
    shadow: Option<(bool, u64)>,
}

fn allow(charged: u64, freed: u64) -> Verdict {
    Verdict {
        denied: None,
        charged,
        freed,
        needed: None,
        shadow: None,
    }
}

fn deny(reason: &'static str) -> Verdict {
    Verdict {
        denied: Some(reason),
        charged: 0,
        freed: 0,
        needed: None,
        shadow: None,
    }
}

/// Allowed in shadow past a limit: `charged` taken, `needed` credits in all
/// (leads when `lead`).
fn past_limit(lead: bool, charged: u64, needed: u64) -> Verdict {
    Verdict {
        shadow: Some((lead, needed)),
        ..allow(charged, 0)
    }
}

/// A denial for want of `needed` credits in all (leads when `lead`).
fn exhausted(lead: bool, needed: u64) -> Verdict {
    Verdict {
        needed: Some((lead, needed)),
        ..deny(if lead {
            LEAD_CREDITS_EXHAUSTED
        } else {
            EMAIL_CREDITS_EXHAUSTED
        })
    }
}

/// Takes `cost` email credits of the cycle that counts at `now` (the newest,
/// whatever the answer, unless a later one is), all or nothing, once per
/// message id while the id is remembered (until the end of the cycle that
/// charged it plus [`ONCE_GRACE`], whatever cycle `now` is in): the id again for
/// the same message is free, for another message denied. A forgotten id names a
/// new message.
fn charge(
    acc: &mut Account,
    limit: Allowance,
    shadow: bool,
    now: i64,
    cost: u64,
    message: Option<(&str, Charged)>,
) -> Verdict {
    let cycle = acc.cycle_at(now);
    acc.newest = acc.newest.max(cycle);
    if let Some((id, charged)) = &message
        && let Some(before) = acc.message_ids.get(*id)
        && now < before.until
    {
        return if before.charged == *charged {
            allow(0, 0)
        } else {
            deny(IDEMPOTENCY_KEY_REUSED)
        };
    }
    let used = acc.emails_used_in(cycle);
    let over = limit.is_some_and(|limit| used + cost > limit);
    if over && !shadow {
        return exhausted(false, used.saturating_add(cost));
    }
    acc.emails_used.insert(cycle, used + cost);
    if let Some((id, charged)) = message {
        let until = cycle_start(acc.anchor, cycle + 1).saturating_add(ONCE_GRACE);
        acc.message_ids
            .insert(id.to_string(), Remembered { charged, until });
    }
    if over {
        past_limit(false, cost, used + cost)
    } else {
        allow(cost, 0)
    }
}

impl Model {
    pub fn new(policy: Policy) -> Self {
        Model {
            policy,
            accounts: BTreeMap::new(),
        }
    }

    /// Decides one event, applies its effects, and answers as replay would.
    pub fn apply(&mut self, event: &Event) -> Outcome {
        let now = event.at;
        let verdict = self.decide(&event.request, now);
        let current = self
            .accounts
            .get(event.request.account())
            .map(|a| a.plan.clone());
        Outcome {
            decision: if verdict.denied.is_some() {
                "deny"
            } else {
                "allow"
            },
            reason: verdict.denied,
            upgrade_to: verdict.denied.map(|_| {
                let (lead, needed) = verdict.needed?;
                self.upgrade_to(current.as_deref()?, lead, needed)
            }),
            shadow: verdict.shadow.map(|(lead, needed)| ShadowJson {
                decision: "deny",
                reason: if lead {
                    LEAD_CREDITS_EXHAUSTED
                } else {
                    EMAIL_CREDITS_EXHAUSTED
                },
                upgrade_to: current
                    .as_deref()
                    .and_then(|plan| self.upgrade_to(plan, lead, needed)),
            }),
            charged: verdict.charged,
            freed: verdict.freed,
            usage: self.usage(event.request.account(), now),
        }
    }

    /// The plan a request needing `needed` credits (leads when `lead`) would
    /// have been allowed on, for an account on `current`: as the issue words
    /// it, the plan other than the account's with the smallest limit for that
    /// credit that fits, ties broken by the smaller limit of the other credit,
    /// then by name; unlimited is larger than any limit.
    fn upgrade_to(&self, current: &str, lead: bool, needed: u64) -> Option<String> {
        let rank = |a: Allowance| a.map_or(u128::MAX, u128::from);
        let mut fitting: Vec<(u128, u128, &String)> = self
            .policy
            .plans
            .iter()
            .filter(|(name, _)| name.as_str() != current)
            .map(|(name, plan)| {
                let (this, other) = if lead {
                    (plan.lead_credits, plan.email_credits)
                } else {
                    (plan.email_credits, plan.lead_credits)
                };
                (this, other, name)
            })
            .filter(|(this, _, _)| this.is_none_or(|limit| limit >= needed))
            .map(|(this, other, name)| (rank(this), rank(other), name))
            .collect();
        fitting.sort();
        fitting.first().map(|(_, _, name)| (*name).clone())
    }

    /// An account's usage at `now`, as replay shows it; `None` when the account does
    /// not exist or its plan is not in the policy.
    pub fn usage(&self, account: &str, now: i64) -> Option<UsageJson> {
        let acc = self.accounts.get(account)?;
        let plan = self.policy.plans.get(&acc.plan)?;
        let cycle = acc.cycle_at(now);
        Some(UsageJson {
            lead_credits: CreditsJson {
                used: acc.lead_used(),
                limit: LimitJson::from(plan.lead_credits),
                resets_at: None,
            },
            email_credits: CreditsJson {
                used: acc.emails_used_in(cycle),
                limit: LimitJson::from(plan.email_credits),
                resets_at: Some(format_instant(cycle_start(acc.anchor, cycle + 1))),
            },
        })
    }

    /// The plan in force for an existing account.
    pub fn plan_of(&self, account: &str) -> Option<Plan> {
        self.accounts
            .get(account)
            .and_then(|a| self.policy.plans.get(&a.plan))
            .copied()
    }

    fn decide(&mut self, request: &Request, now: i64) -> Verdict {
        // Subscribe: plan known first, then the account must be new.
        if let Request::Subscribe { account, plan, .. } = request {
            if !self.policy.plans.contains_key(plan) {
                return deny(UNKNOWN_PLAN);
            }
            if self.accounts.contains_key(account) {
                return deny(ALREADY_SUBSCRIBED);
            }
            self.accounts.insert(
                account.clone(),
                Account {
                    plan: plan.clone(),
                    anchor: now,
                    campaigns: BTreeMap::new(),
                    emails_used: BTreeMap::new(),
                    message_ids: BTreeMap::new(),
                    newest: 0,
                },
            );
            return allow(0, 0);
        }

        // Every other op: the account must exist and its plan be known.
        let Some(plan) = self.plan_of(request.account()) else {
            return if self.accounts.contains_key(request.account()) {
                deny(UNKNOWN_PLAN)
            } else {
                deny(UNKNOWN_ACCOUNT)
            };
        };
        let policy = &self.policy;
        let acc = self
            .accounts
            .get_mut(request.account())
            .expect("checked above");
        let shadow = policy.shadow.contains(&acc.plan);

        match request {
            Request::Subscribe { .. } => unreachable!("handled above"),
            Request::CheckEmail { .. } => {
                unreachable!("check_email is not a replay op; the model does not cover it")
            }
            Request::AddLeads { .. } | Request::EmailHistory { .. } => {
                unreachable!("not replay ops, nor one decision; the model does not cover them")
            }
            Request::Usage { .. } => allow(0, 0),
            Request::ChargeEmail {
                cost, message_id, ..
            } => {
                if *cost == 0 {
                    return deny(NO_RECIPIENTS);
                }
                let message = message_id.as_deref().map(|id| (id, Charged::Cost(*cost)));
                charge(acc, plan.email_credits, shadow, now, *cost, message)
            }

            Request::ChangePlan { plan: new_plan, .. } => {
                if !policy.plans.contains_key(new_plan) {
                    return deny(UNKNOWN_PLAN);
                }
                acc.plan = new_plan.clone();
                allow(0, 0)
            }

            Request::AddLead {
                campaign, email, ..
            } => {
                let Some(contact) = normalise(email) else {
                    return deny(INVALID_EMAIL);
                };
                if acc.holds(campaign, &contact) {
                    return allow(0, 0);
                }
                let held = acc.contacts().contains(&contact);
                let needed = acc.lead_used() + 1;
                let over = !held && plan.lead_credits.is_some_and(|limit| needed > limit);
                if over && !shadow {
                    return exhausted(true, needed);
                }
                acc.campaigns
                    .entry(campaign.clone())
                    .or_default()
                    .insert(contact);
                if over {
                    past_limit(true, 1, needed)
                } else {
                    allow(if held { 0 } else { 1 }, 0)
                }
            }

            Request::DeleteLead {
                campaign, email, ..
            } => {
                let Some(contact) = normalise(email) else {
                    return deny(INVALID_EMAIL);
                };
                let freed = acc.take_out(campaign, &contact) && !acc.contacts().contains(&contact);
                allow(0, u64::from(freed))
            }

            Request::DeleteCampaignLeads { campaign, .. } => {
                let members = acc.campaigns.remove(campaign).unwrap_or_default();
                let freed = members
                    .iter()
                    .filter(|c| !acc.held_elsewhere(c, campaign))
                    .count();
                allow(0, freed as u64)
            }

            Request::SendEmail {
                to,
                kind,
                message_id,
                ..
            } => {
                let mut recipients = BTreeSet::new();
                for address in to {
                    let Some(contact) = normalise(address) else {
                        return deny(INVALID_EMAIL);
                    };
                    recipients.insert(contact);
                }
                if recipients.is_empty() {
                    return deny(NO_RECIPIENTS);
                }
                let unit = policy.cost(*kind);
                let cost = recipients.len() as u64 * unit;
                let message =
                    (message_id.as_deref()).map(|id| (id, Charged::Recipients(recipients, unit)));
                charge(acc, plan.email_credits, shadow, now, cost, message)
            }
        }
    }
}

#[test]
fn cycles_clamp_to_month_end_from_the_anchor() {
    let at = |s: &str| creditgate::replay::parse_instant(s).unwrap();
    let anchor = at("2024-01-31T10:00:00Z");
    let starts: Vec<String> = (0..5)
        .map(|n| format_instant(cycle_start(anchor, n)))
        .collect();
    assert_eq!(
        starts,
        [
            "2024-01-31T10:00:00Z",
            "2024-02-29T10:00:00Z",
            "2024-03-31T10:00:00Z",
            "2024-04-30T10:00:00Z",
            "2024-05-31T10:00:00Z"
        ]
    );
    assert_eq!(cycle_of(anchor, at("2023-06-01T00:00:00Z")), 0);
    assert_eq!(cycle_of(anchor, at("2024-02-29T09:59:59.999999999Z")), 0);
    assert_eq!(cycle_of(anchor, at("2024-02-29T10:00:00Z")), 1);
    assert_eq!(cycle_of(anchor, at("2025-01-31T10:00:00Z")), 12);
}

#[test]
fn addresses_normalise_as_specified() {
    assert_eq!(
        normalise(" Ann@Example.COM\t").as_deref(),
        Some("ann@example.com")
    );
    assert_eq!(
        normalise("\u{a0}Élodie@Exemple.FR").as_deref(),
        Some("élodie@exemple.fr")
    );
    for bad in [
        "",
        "ann",
        "ann@",
        "@example.com",
        "a@b@example.com",
        "ann@localhost",
        "ann@example..com",
        "ann@.example.com",
        "ann@example.com.",
        "a nn@example.com",
        "a\u{7}@example.com",
    ] {
        assert_eq!(normalise(bad), None, "{bad:?}");
    }
    let local = "x".repeat(254 - "@example.com".len());
    assert!(normalise(&format!("  {local}@example.com  ")).is_some());
    assert!(normalise(&format!("{local}y@example.com")).is_none());
}
