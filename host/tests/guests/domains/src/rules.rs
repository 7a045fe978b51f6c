//! The rules, in plain Rust over [`Host`]: nothing here names a WIT type, so a
//! new version of the contract changes only the glue in `lib.rs`.
//!
//! What differs from creditgate's own component, on purpose, so that a host
//! that assumed creditgate's layout or rules would show this one wrongly:
//!
//! - a lead credit is a *domain*: ten contacts at one company cost one credit;
//! - billing cycles are 30 days from the subscription, not calendar months, and
//!   the history keeps [`HISTORY_CYCLES`] of them, not 12;
//! - the warning level is the policy's `warn` line, for both credits;
//! - state layout: account `A` is kept in two scopes, `acct:A` (record `plan` =
//!   `"<anchor> <plan>"`, contacts as members `domain/local` in groups
//!   `c:<campaign>`, counters `mail/<cycle>`) and `dom:A` (the domains, in the
//!   same groups). Its lead credits used are the member count of `dom:A`.
//!
//! A policy is lines of `plan NAME LEADS EMAILS` (a number or `unlimited`) and at
//! most one `warn PERCENT`; `#` starts a comment.
//!
//! Adding a lead takes two atomic steps (the domain, then the contact): enough
//! for a test component, which is never raced.

/// Billing cycles whose email counts `email_history` answers.
pub const HISTORY_CYCLES: u32 = 6;

/// A billing cycle: 30 days.
pub const CYCLE: i64 = 30 * 86_400 * 1_000_000_000;

/// One membership: `member` of `group` in `scope`.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub scope: &'a str,
    pub group: &'a str,
    pub member: &'a str,
}

/// A walk of the memberships of `scope` (of `group` only, when given) after
/// `after` = `(group, member)`.
#[derive(Debug, Clone, Copy)]
pub struct Members<'a> {
    pub scope: &'a str,
    pub group: Option<&'a str>,
    pub after: Option<(&'a str, &'a str)>,
}

/// Where one lead `local@domain` of a campaign is kept: its contact
/// (`domain/local`) in the account's scope and its domain in the domains scope,
/// both in the campaign's group.
struct Placed {
    contacts: String,
    domains: String,
    group: String,
    contact: String,
    domain: String,
}

impl Placed {
    fn new(account: &str, campaign: &str, local: &str, domain: &str) -> Self {
        Placed {
            contacts: scope(account),
            domains: domains(account),
            group: group(campaign),
            contact: contact(local, domain),
            domain: domain.to_owned(),
        }
    }

    fn contact(&self) -> Member<'_> {
        Member {
            scope: &self.contacts,
            group: &self.group,
            member: &self.contact,
        }
    }

    fn domain(&self) -> Member<'_> {
        Member {
            scope: &self.domains,
            group: &self.group,
            member: &self.domain,
        }
    }
}

/// [`Host::charge`]'s arguments: add `amount` to counter `name` of `scope`
/// unless it would pass `limit` or `once` (a key and its fingerprint) was
/// seen, while the record `plan` holds `guard`.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    pub scope: &'a str,
    pub guard: &'a str,
    pub name: &'a str,
    pub amount: u64,
    pub limit: Option<u64>,
    pub once: Option<(&'a str, u64)>,
    pub now: i64,
}

/// The host's primitives these rules use, with the host's error type.
pub trait Host {
    type Error;
    fn record_get(&mut self, scope: &str, key: &str) -> Result<Option<String>, Self::Error>;
    fn record_insert(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, Self::Error>;
    fn record_update(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, Self::Error>;
    fn counter_get(&mut self, scope: &str, name: &str, now: i64) -> Result<u64, Self::Error>;
    /// As WIT `counter-add-guarded` with the record `plan` as guard.
    fn charge(&mut self, charge: Charge<'_>) -> Result<Charged, Self::Error>;
    /// Adds the member to its group, new to the scope only under `limit`.
    fn member_add(&mut self, at: Member<'_>, limit: Option<u64>) -> Result<Added, Self::Error>;
    /// Removes the member from its group.
    fn member_remove(&mut self, at: Member<'_>) -> Result<Removed, Self::Error>;
    /// Empties `group`: (members removed, of those the ones that left the scope).
    fn group_clear(&mut self, scope: &str, group: &str) -> Result<(u64, u64), Self::Error>;
    fn member_count(&mut self, scope: &str) -> Result<u64, Self::Error>;
    fn scopes_after(&mut self, after: &str, limit: u32) -> Result<Vec<String>, Self::Error>;
    fn members_after(
        &mut self,
        list: Members<'_>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, Self::Error>;
    /// `(group, members, exclusive)` of each group of `scope`.
    fn group_sizes(&mut self, scope: &str) -> Result<Vec<(String, u64, u64)>, Self::Error>;
}

/// What a guarded charge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charged {
    Applied,
    Repeated,
    Refused,
    Conflict,
    /// The plan record changed meanwhile.
    Stale,
}

/// What a member removal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    NotInGroup,
    LeftGroup,
    /// It left its last group, and so the scope.
    Released,
}

/// What a member addition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    AlreadyInGroup,
    Joined,
    Inserted,
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub leads: Option<u64>,
    pub emails: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub plans: Vec<Plan>,
    pub warn: Option<u8>,
}

impl Policy {
    fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name == name)
    }
}

/// A problem in a policy: what, and on which line (1-based).
pub type Problem = (String, u32);

pub fn parse(text: &str) -> Result<Policy, Vec<Problem>> {
    let mut policy = Policy::default();
    let mut problems = Vec::new();
    let allowance = |word: &str| match word {
        "unlimited" => Some(None),
        n => n.parse::<u64>().ok().map(Some),
    };
    for (i, line) in text.lines().enumerate() {
        let at = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let line = line.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["plan", name, leads, emails] => match (allowance(leads), allowance(emails)) {
                (Some(leads), Some(emails)) if policy.plan(name).is_none() => {
                    policy.plans.push(Plan {
                        name: (*name).to_owned(),
                        leads,
                        emails,
                    });
                }
                (Some(_), Some(_)) => problems.push((format!("plan {name:?} given twice"), at)),
                _ => problems.push((
                    "expected a number or \"unlimited\" for each allowance".to_owned(),
                    at,
                )),
            },
            ["warn", p] => match p.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => policy.warn = Some(p),
                _ => problems.push(("expected a percentage from 1 to 100".to_owned(), at)),
            },
            _ => problems.push((
                "expected `plan NAME LEADS EMAILS` or `warn PERCENT`".to_owned(),
                at,
            )),
        }
    }
    if policy.plans.is_empty() && problems.is_empty() {
        problems.push(("a policy needs at least one plan".to_owned(), 0));
    }
    if problems.is_empty() {
        Ok(policy)
    } else {
        Err(problems)
    }
}

/// Why a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    AlreadySubscribed,
    UnknownAccount,
    UnknownPlan,
    InvalidEmail,
    NoRecipients,
    LeadCreditsExhausted,
    EmailCreditsExhausted,
    KeyReused,
}

/// An account's usage at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub plan: String,
    pub anchor: i64,
    pub leads_used: u64,
    pub leads_limit: Option<u64>,
    pub emails_used: u64,
    pub emails_limit: Option<u64>,
    pub cycle_start: i64,
    pub resets_at: i64,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub denied: Option<Denial>,
    pub charged: u64,
    pub freed: u64,
    pub usage: Option<Usage>,
}

/// What a batch of lead additions did: denied whole, or one result per address;
/// and the usage after.
pub type Batch = (Option<Denial>, Vec<LeadAdd>, Option<Usage>);

/// How one lead addition fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadAdd {
    Added,
    AlreadyInCampaign,
    Joined,
    InvalidEmail,
    Exhausted,
}

/// Why a request could not be decided.
#[derive(Debug)]
pub enum Failure<E> {
    NoPolicy,
    State(E),
    InvalidRequest(String),
}

impl<E> From<E> for Failure<E> {
    fn from(e: E) -> Self {
        Failure::State(e)
    }
}

type Answer<T, E> = Result<T, Failure<E>>;

fn scope(account: &str) -> String {
    format!("acct:{account}")
}
fn domains(account: &str) -> String {
    format!("dom:{account}")
}
fn group(campaign: &str) -> String {
    format!("c:{campaign}")
}

/// `local@domain` as `(local, domain)`, lower case; none when not an address.
pub fn address(email: &str) -> Option<(String, String)> {
    let (local, domain) = email.trim().rsplit_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.trim().contains(char::is_whitespace)
        && !local.contains('/');
    ok.then(|| (local.to_lowercase(), domain.to_lowercase()))
}

/// The member a contact is kept as: by domain first, so a domain's contacts sit
/// together in a group.
fn contact(local: &str, domain: &str) -> String {
    format!("{domain}/{local}")
}

/// The address a member stands for.
fn email_of(member: &str) -> String {
    match member.split_once('/') {
        Some((domain, local)) => format!("{local}@{domain}"),
        None => member.to_owned(),
    }
}

/// The 30-day cycle `now` falls in: (number, start, end).
fn cycle(anchor: i64, now: i64) -> (i64, i64, i64) {
    let n = now.saturating_sub(anchor).max(0) / CYCLE;
    let start = anchor.saturating_add(n.saturating_mul(CYCLE));
    (n, start, start.saturating_add(CYCLE))
}

/// The policy's rules over one host.
pub struct Rules<'p> {
    pub policy: Option<&'p Policy>,
}

/// An existing account: its record, anchor and plan (none: not in the policy).
struct Account<'p> {
    record: String,
    anchor: i64,
    plan_name: String,
    plan: Option<&'p Plan>,
}

impl<'p> Rules<'p> {
    fn loaded<E>(&self) -> Answer<&'p Policy, E> {
        self.policy.ok_or(Failure::NoPolicy)
    }

    fn account<H: Host>(&self, h: &mut H, account: &str) -> Answer<Option<Account<'p>>, H::Error> {
        let policy = self.loaded()?;
        let Some(record) = h.record_get(&scope(account), "plan")? else {
            return Ok(None);
        };
        let Some((anchor, plan_name)) = record
            .split_once(' ')
            .and_then(|(a, p)| Some((a.parse::<i64>().ok()?, p.to_owned())))
        else {
            return Err(Failure::InvalidRequest(format!(
                "the plan record of {account:?} is malformed"
            )));
        };
        Ok(Some(Account {
            plan: policy.plan(&plan_name),
            record,
            anchor,
            plan_name,
        }))
    }

    fn usage_of<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        a: &Account<'_>,
        now: i64,
    ) -> Answer<Usage, H::Error> {
        let (n, start, end) = cycle(a.anchor, now);
        let (leads_limit, emails_limit) = match a.plan {
            Some(p) => (p.leads, p.emails),
            None => (Some(0), Some(0)),
        };
        Ok(Usage {
            plan: a.plan_name.clone(),
            anchor: a.anchor,
            leads_used: h.member_count(&domains(account))?,
            leads_limit,
            emails_used: h.counter_get(&scope(account), &format!("mail/{n}"), now)?,
            emails_limit,
            cycle_start: start,
            resets_at: end,
        })
    }

    /// Runs `rule` for an existing account on a plan of the policy.
    fn with_account<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        now: i64,
        rule: impl FnOnce(&mut H, &Account<'p>, &Plan) -> Answer<Result<(u64, u64), Denial>, H::Error>,
    ) -> Answer<Outcome, H::Error> {
        let Some(a) = self.account(h, account)? else {
            return Ok(Outcome {
                denied: Some(Denial::UnknownAccount),
                ..Outcome::default()
            });
        };
        let Some(plan) = a.plan else {
            let usage = self.usage_of(h, account, &a, now)?;
            return Ok(Outcome {
                denied: Some(Denial::UnknownPlan),
                usage: Some(usage),
                ..Outcome::default()
            });
        };
        let done = rule(h, &a, plan)?;
        let usage = Some(self.usage_of(h, account, &a, now)?);
        Ok(match done {
            Ok((charged, freed)) => Outcome {
                denied: None,
                charged,
                freed,
                usage,
            },
            Err(denied) => Outcome {
                denied: Some(denied),
                usage,
                ..Outcome::default()
            },
        })
    }

    pub fn subscribe<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        plan: &str,
        anchor: i64,
        now: i64,
    ) -> Answer<Outcome, H::Error> {
        let policy = self.loaded()?;
        if anchor > now {
            return Err(Failure::InvalidRequest(
                "the anchor is after now".to_owned(),
            ));
        }
        if self.account(h, account)?.is_some() {
            return self.denied_with_usage(h, account, Denial::AlreadySubscribed, now);
        }
        if policy.plan(plan).is_none() {
            return Ok(Outcome {
                denied: Some(Denial::UnknownPlan),
                ..Outcome::default()
            });
        }
        if !h.record_insert(&scope(account), "plan", &format!("{anchor} {plan}"))? {
            return self.denied_with_usage(h, account, Denial::AlreadySubscribed, now);
        }
        self.usage(h, account, now)
    }

    fn denied_with_usage<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        denied: Denial,
        now: i64,
    ) -> Answer<Outcome, H::Error> {
        let mut outcome = self.usage(h, account, now)?;
        outcome.denied = Some(denied);
        Ok(outcome)
    }

    pub fn change_plan<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        plan: &str,
        now: i64,
    ) -> Answer<Outcome, H::Error> {
        let policy = self.loaded()?;
        let Some(a) = self.account(h, account)? else {
            return Ok(Outcome {
                denied: Some(Denial::UnknownAccount),
                ..Outcome::default()
            });
        };
        if policy.plan(plan).is_none() {
            let usage = self.usage_of(h, account, &a, now)?;
            return Ok(Outcome {
                denied: Some(Denial::UnknownPlan),
                usage: Some(usage),
                ..Outcome::default()
            });
        }
        h.record_update(&scope(account), "plan", &format!("{} {plan}", a.anchor))?;
        self.usage(h, account, now)
    }

    pub fn usage<H: Host>(&self, h: &mut H, account: &str, now: i64) -> Answer<Outcome, H::Error> {
        let Some(a) = self.account(h, account)? else {
            return Ok(Outcome {
                denied: Some(Denial::UnknownAccount),
                ..Outcome::default()
            });
        };
        let usage = Some(self.usage_of(h, account, &a, now)?);
        Ok(Outcome {
            denied: a.plan.is_none().then_some(Denial::UnknownPlan),
            usage,
            ..Outcome::default()
        })
    }

    /// One lead, on an account known to be on `plan`.
    fn add_one<H: Host>(
        h: &mut H,
        account: &str,
        campaign: &str,
        email: &str,
        plan: &Plan,
    ) -> Result<LeadAdd, H::Error> {
        let Some((local, domain)) = address(email) else {
            return Ok(LeadAdd::InvalidEmail);
        };
        let lead = Placed::new(account, campaign, &local, &domain);
        // Already here: nothing to take, whatever the credits left.
        if h.member_add(lead.contact(), None)? == Added::AlreadyInGroup {
            return Ok(LeadAdd::AlreadyInCampaign);
        }
        let took = h.member_add(lead.domain(), plan.leads)?;
        if took == Added::Refused {
            h.member_remove(lead.contact())?;
            return Ok(LeadAdd::Exhausted);
        }
        Ok(if took == Added::Inserted {
            LeadAdd::Added
        } else {
            LeadAdd::Joined
        })
    }

    pub fn add_lead<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        campaign: &str,
        email: &str,
        now: i64,
    ) -> Answer<Outcome, H::Error> {
        self.with_account(h, account, now, |h, _, plan| {
            Ok(match Self::add_one(h, account, campaign, email, plan)? {
                LeadAdd::Added => Ok((1, 0)),
                LeadAdd::AlreadyInCampaign | LeadAdd::Joined => Ok((0, 0)),
                LeadAdd::InvalidEmail => Err(Denial::InvalidEmail),
                LeadAdd::Exhausted => Err(Denial::LeadCreditsExhausted),
            })
        })
    }

    /// Each address as `add_lead` would take it, in order, and the usage after.
    pub fn add_leads<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        campaign: &str,
        emails: &[String],
        now: i64,
    ) -> Answer<Batch, H::Error> {
        let mut results = Vec::with_capacity(emails.len());
        let outcome = self.with_account(h, account, now, |h, _, plan| {
            for email in emails {
                results.push(Self::add_one(h, account, campaign, email, plan)?);
            }
            Ok(Ok((0, 0)))
        })?;
        if outcome.denied.is_some() {
            results.clear();
        }
        Ok((outcome.denied, results, outcome.usage))
    }

    pub fn delete_lead<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        campaign: &str,
        email: &str,
        now: i64,
    ) -> Answer<Outcome, H::Error> {
        self.with_account(h, account, now, |h, _, _| {
            let Some((local, domain)) = address(email) else {
                return Ok(Err(Denial::InvalidEmail));
            };
            let lead = Placed::new(account, campaign, &local, &domain);
            if h.member_remove(lead.contact())? == Removed::NotInGroup {
                return Ok(Ok((0, 0)));
            }
            // The domain stays taken while another of its contacts is in the group.
            let prefix = format!("{domain}/");
            let list = Members {
                scope: &lead.contacts,
                group: Some(&lead.group),
                after: Some((&lead.group, &prefix)),
            };
            let next = h.members_after(list, 1)?;
            if next.iter().any(|(_, m)| m.starts_with(&prefix)) {
                return Ok(Ok((0, 0)));
            }
            let released = h.member_remove(lead.domain())? == Removed::Released;
            Ok(Ok((0, u64::from(released))))
        })
    }

    pub fn delete_campaign_leads<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        campaign: &str,
        now: i64,
    ) -> Answer<Outcome, H::Error> {
        self.with_account(h, account, now, |h, _, _| {
            let g = group(campaign);
            h.group_clear(&scope(account), &g)?;
            let (_, released) = h.group_clear(&domains(account), &g)?;
            Ok(Ok((0, released)))
        })
    }

    /// Charges `cost` email credits (once per `message_id` in a cycle).
    pub fn charge<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        cost: u64,
        message_id: Option<&str>,
        now: i64,
    ) -> Answer<Outcome, H::Error> {
        if message_id.is_some_and(|m| m.trim().is_empty()) {
            return Err(Failure::InvalidRequest("a blank message id".to_owned()));
        }
        self.with_account(h, account, now, |h, a, plan| {
            if cost == 0 {
                return Ok(Err(Denial::NoRecipients));
            }
            let (n, ..) = cycle(a.anchor, now);
            let key = message_id.map(|m| format!("msg/{n}/{m}"));
            let once = key.as_deref().map(|k| (k, cost));
            let name = format!("mail/{n}");
            let charge = Charge {
                scope: &scope(account),
                guard: &a.record,
                name: &name,
                amount: cost,
                limit: plan.emails,
                once,
                now,
            };
            Ok(match h.charge(charge)? {
                Charged::Applied => Ok((cost, 0)),
                Charged::Repeated => Ok((0, 0)),
                Charged::Refused => Err(Denial::EmailCreditsExhausted),
                Charged::Conflict => Err(Denial::KeyReused),
                // A test component is never raced: a changed plan is a refusal.
                Charged::Stale => Err(Denial::UnknownPlan),
            })
        })
    }

    /// The cost of a send to `to`: one per distinct address.
    pub fn send<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        to: &[String],
        message_id: Option<&str>,
        now: i64,
    ) -> Answer<Outcome, H::Error> {
        let mut seen: Vec<(String, String)> = Vec::new();
        for email in to {
            match address(email) {
                Some(a) if !seen.contains(&a) => seen.push(a),
                Some(_) => {}
                None => {
                    return self
                        .with_account(h, account, now, |_, _, _| Ok(Err(Denial::InvalidEmail)));
                }
            }
        }
        self.charge(h, account, seen.len() as u64, message_id, now)
    }

    pub fn check<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        cost: u64,
        now: i64,
    ) -> Answer<Outcome, H::Error> {
        let mut outcome = self.usage(h, account, now)?;
        if let (None, Some(u)) = (outcome.denied, &outcome.usage)
            && u.emails_limit
                .is_some_and(|l| u.emails_used.saturating_add(cost) > l)
        {
            outcome.denied = Some(Denial::EmailCreditsExhausted);
        }
        Ok(outcome)
    }

    /// (start, end, used) of the last `cycles` cycles, oldest first.
    pub fn email_history<H: Host>(
        &self,
        h: &mut H,
        account: &str,
        cycles: u32,
        now: i64,
    ) -> Answer<Vec<(i64, i64, u64)>, H::Error> {
        let Some(a) = self.account(h, account)? else {
            return Ok(Vec::new());
        };
        let (current, ..) = cycle(a.anchor, now);
        let first = current
            .saturating_sub(i64::from(cycles.clamp(1, HISTORY_CYCLES) - 1))
            .max(0);
        let mut history = Vec::new();
        for n in first..=current {
            let start = a.anchor.saturating_add(n.saturating_mul(CYCLE));
            let used = h.counter_get(&scope(account), &format!("mail/{n}"), now)?;
            history.push((start, start.saturating_add(CYCLE), used));
        }
        Ok(history)
    }

    // ---- inspection ----

    /// Accounts after `after`: the `acct:` scopes.
    pub fn accounts<H: Host>(
        h: &mut H,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<String>, Option<String>), H::Error> {
        let limit = limit.max(1);
        let from = scope(after.unwrap_or(""));
        let scopes = h.scopes_after(&from, limit)?;
        let full = scopes.len() == limit as usize;
        let mut accounts = Vec::new();
        for s in &scopes {
            match s.strip_prefix("acct:") {
                Some(name) => accounts.push(name.to_owned()),
                // Past the last account scope: nothing follows.
                None => return Ok((accounts, None)),
            }
        }
        let next = full.then(|| accounts.last().cloned()).flatten();
        Ok((accounts, next))
    }

    /// (campaign, leads, exclusive leads) of `account`.
    pub fn campaigns<H: Host>(
        h: &mut H,
        account: &str,
    ) -> Result<Vec<(String, u64, u64)>, H::Error> {
        Ok(h.group_sizes(&scope(account))?
            .into_iter()
            .filter_map(|(g, n, e)| Some((g.strip_prefix("c:")?.to_owned(), n, e)))
            .collect())
    }

    /// (campaign, email) of `account`'s leads after `after`, in the layout's order.
    pub fn leads<H: Host>(
        h: &mut H,
        account: &str,
        campaign: Option<&str>,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, H::Error> {
        let g = campaign.map(group);
        let after = after.map(|(c, email)| {
            let member = match address(email) {
                Some((local, domain)) => contact(&local, &domain),
                None => email.to_owned(),
            };
            (group(c), member)
        });
        let list = Members {
            scope: &scope(account),
            group: g.as_deref(),
            after: after.as_ref().map(|(g, m)| (g.as_str(), m.as_str())),
        };
        Ok(h.members_after(list, limit)?
            .into_iter()
            .map(|(g, m)| (g.strip_prefix("c:").unwrap_or(&g).to_owned(), email_of(&m)))
            .collect())
    }
}
