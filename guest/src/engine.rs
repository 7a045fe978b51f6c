//! The rules: each request decided against the loaded policy and the host's state.
//!
//! State layout, in the host's generic terms (one scope per account):
//! - record `account`: `"<anchor-nanos> <plan>"`, created by `subscribe`, or
//!   `"<anchor-nanos>/<newest cycle> <plan>"` once a later cycle is charged (see
//!   `known.rs`);
//! - members: the account's contacts (normalised addresses), grouped by campaign.
//!   The scope's distinct-member count *is* the lead credits used, and
//!   `member-add`'s limit is the plan's lead credits, so taking a credit and adding
//!   the contact are one atomic step;
//! - counter `email/<cycle>`: email credits used in billing cycle `<cycle>`, kept
//!   for [`HISTORY_CYCLES`] cycles for `email-history`;
//! - `once` keys `msg/<message-id>`, one per message id and account (not per
//!   cycle), make a retried message free: nothing is charged twice for one
//!   message, even when its retry falls in the next cycle (or a clock steps
//!   back). A key expires at the end of the cycle that charged it plus
//!   [`ONCE_GRACE`](crate::known::ONCE_GRACE) (past Postfix's 5-day queue
//!   lifetime); a repeat in a later cycle charges nothing and reports that
//!   cycle's usage. Each key carries a fingerprint of what it was charged for
//!   ([`recipients_fingerprint`], [`cost_fingerprint`]), keyed with the store's
//!   secret ([`Secret`]): the same id for another message is a conflict, denied
//!   `idempotency-key-reused`, never a free send.
//!
//! Alerts need no state of their own: a threshold is crossed by the one request
//! whose atomic step took usage from under it to at or over it, and every
//! primitive here answers the usage right after its own step.
//!
//! Checks that need no state (plan names, addresses) come after the account is
//! found, so that an unknown account is always reported as such.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::hash::Hasher as _;

use siphasher::sip::SipHasher24;

use crate::address;
use crate::bindings::Diagnostic;
use crate::bindings::{
    AccountUsage, Alert, Credit, CycleUsage, Decision, EmailKind, EmailUsage, Error, GroupCleared,
    Guard, GuardedAdd, GuardedMember, Instant, LeadBatch, LeadOutcome, LeadResult, LeadUsage,
    MemberAddOutcome, MemberRemoveOutcome, MemberRemoved, MembersAdded, Mode, PlanRef,
    PolicySummary, Reason, ShadowRefusal, StateError, Tally,
};
use crate::cycle::{self, Cycle};
use crate::known::{
    Account, Fnv, KnownAccounts, account_record, email_counter, out_of_range, parse_account_record,
};
use crate::policy::{Alerts, Plan, Policy};

/// Billing cycles whose email counts are kept, the current one included.
pub const HISTORY_CYCLES: u32 = 12;

/// A name interned by [`State::intern`] (WIT `state.name`).
pub type Name = u32;

/// A once key for [`State::counter_add_guarded`] (WIT `state.once`), borrowed.
#[derive(Debug, Clone, Copy)]
pub struct OnceKey<'k> {
    /// The interned part: `msg/`.
    pub prefix: Name,
    /// The part new to each call: the message id.
    pub key: &'k str,
    pub fingerprint: u64,
    pub expires_at: Instant,
}

// The arguments of the primitives that take more than three, one struct each
// (as the host's `Store` takes them): built once where the engine decides, and
// passed through the wrappers untouched. Each field is the WIT parameter of
// its name.

/// [`State::member_add_many`]'s arguments (WIT `member-add-many`).
#[derive(Debug, Clone, Copy)]
pub struct MemberAddMany<'a> {
    pub scope: &'a str,
    pub group: &'a str,
    pub members: &'a [String],
    pub limit: Option<u64>,
}

/// [`State::member_remove`]'s arguments (WIT `member-remove`).
#[derive(Debug, Clone, Copy)]
pub struct Membership<'a> {
    pub scope: &'a str,
    pub group: &'a str,
    pub member: &'a str,
}

/// [`State::counter_add_guarded`]'s arguments (WIT `counter-add-guarded`).
#[derive(Debug, Clone, Copy)]
pub struct CounterAdd<'a> {
    pub scope: Name,
    pub guard: Guard,
    pub counter: Name,
    pub amount: u64,
    pub limit: Option<u64>,
    pub once: Option<OnceKey<'a>>,
    pub expires_at: Option<Instant>,
    pub now: Instant,
}

/// [`State::counter_tally`]'s arguments (WIT `counter-tally`).
#[derive(Debug, Clone, Copy)]
pub struct CounterTally {
    pub scope: Name,
    pub guard: Guard,
    pub counter: Name,
    pub now: Instant,
}

/// [`State::record_update_guarded`]'s arguments (WIT `record-update-guarded`).
#[derive(Debug, Clone, Copy)]
pub struct GuardedUpdate<'a> {
    pub scope: Name,
    pub guard: Guard,
    pub key: Name,
    pub value: &'a str,
}

/// [`State::member_add_guarded`]'s arguments (WIT `member-add-guarded`).
#[derive(Debug, Clone, Copy)]
pub struct MemberAddGuarded<'a> {
    pub scope: Name,
    pub guard: Guard,
    pub group: Name,
    pub member: &'a str,
    pub limit: Option<u64>,
    pub counter: Name,
    pub now: Instant,
}

/// The host's atomic primitives (WIT interface `state`). The component implements
/// it with its imports; native tests and benchmarks with an in-process store.
///
/// The calls a decision on a known account makes (`*_guarded`, `counter_tally`)
/// take the [`Name`]s the engine keeps for that account; the others take strings,
/// which the component interns on their way out (see `component.rs`).
pub trait State {
    /// The handle of `text` for the calls that take names.
    fn intern(&mut self, text: &str) -> Result<Name, StateError>;
    fn record_get(&mut self, scope: &str, key: &str) -> Result<Option<String>, StateError>;
    fn record_insert(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, StateError>;
    fn record_update(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, StateError>;
    fn record_update_guarded(&mut self, update: GuardedUpdate<'_>) -> Result<bool, StateError>;
    fn counter_get(&mut self, scope: &str, name: &str, now: Instant) -> Result<u64, StateError>;
    fn member_add_many(&mut self, add: MemberAddMany<'_>) -> Result<MembersAdded, StateError>;
    fn member_remove(&mut self, at: Membership<'_>) -> Result<MemberRemoved, StateError>;
    fn group_clear(&mut self, scope: &str, group: &str) -> Result<GroupCleared, StateError>;
    fn member_count(&mut self, scope: &str) -> Result<u64, StateError>;
    fn counter_add_guarded(&mut self, add: CounterAdd<'_>) -> Result<GuardedAdd, StateError>;
    fn counter_tally(&mut self, tally: CounterTally) -> Result<Option<Tally>, StateError>;
    fn member_add_guarded(
        &mut self,
        add: MemberAddGuarded<'_>,
    ) -> Result<Option<GuardedMember>, StateError>;
    /// The store's secret (WIT `store-secret`), the same at every call.
    fn secret(&mut self) -> Result<Secret, StateError>;
}

/// Bytes of a store's secret (WIT `store-secret`).
pub const SECRET_LEN: usize = 32;

/// A store's secret, as the keys of the fingerprints of message ids.
///
/// A fingerprint covers what the client chose (the recipients, the cost), and
/// is 64 bits: a client that could compute it would find two recipient lists
/// with one fingerprint in about 2^32 tries, then send the first under some id
/// and the second as a "retry" of it, free, as often as it likes. Keyed with a
/// secret it never sees, every try of a second list is a request the gateway
/// answers (`idempotency-key-reused`, logged), one in 2^64 of them a match.
/// SipHash-2-4 is a keyed function made for exactly that (inputs an adversary
/// picks, a key it does not know), and costs a fraction of a SHA-256 block.
#[derive(Clone, Copy)]
pub struct Secret {
    /// SipHash keyed with the secret's first half, the second half written
    /// into it: where every fingerprint starts from.
    seeded: SipHasher24,
}

impl Secret {
    pub fn new(bytes: [u8; SECRET_LEN]) -> Self {
        let (key, rest) = bytes.split_at(SECRET_LEN / 2);
        let mut key_bytes = [0; SECRET_LEN / 2];
        key_bytes.copy_from_slice(key);
        let mut seeded = SipHasher24::new_with_key(&key_bytes);
        seeded.write(rest);
        Secret { seeded }
    }

    /// The secret of a store that sent `bytes`, which must be [`SECRET_LEN`] long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, StateError> {
        <[u8; SECRET_LEN]>::try_from(bytes)
            .map(Secret::new)
            .map_err(|_| {
                StateError::Corrupt(format!(
                    "the store's secret has {} bytes, where {SECRET_LEN} were expected",
                    bytes.len()
                ))
            })
    }

    /// A keyed hasher for the fingerprint of what `id` names under `what`
    /// (which operation remembered it), with both written unambiguously.
    fn hasher(&self, what: &[u8], id: &str) -> SipHasher24 {
        let mut hash = self.seeded;
        hash.write(what);
        hash.write(&[0]);
        hash.write(&(id.len() as u64).to_be_bytes());
        hash.write(id.as_bytes());
        hash
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

pub(crate) const ACCOUNT_RECORD: &str = "account";

/// The limits an account is held to while the loaded policy lacks its plan
/// (after an operator forced such a policy in): none at all, so that it takes no
/// credit, and its usage (reported with its stored plan's name) stays visible.
const STRANDED: Plan = Plan {
    lead_credits: Some(0),
    email_credits: Some(0),
    mode: Some(Mode::Enforce),
};

/// The policy engine of one instance: the loaded policy, if any, and what it knows
/// of the accounts it has decided for.
#[derive(Debug)]
pub struct Engine {
    policy: Option<Policy>,
    /// The mode of plans that set none, given with the policy.
    gateway: Mode,
    known: RefCell<KnownAccounts>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            policy: None,
            gateway: Mode::Enforce,
            known: RefCell::default(),
        }
    }
}

/// A message id, and the fingerprint of the message it names.
#[derive(Clone, Copy)]
struct MessageKey<'m> {
    id: &'m str,
    fingerprint: u64,
}

/// What a decision on a known account does once the account is found.
enum Step<'m> {
    /// Take `cost` credits, at most once per message id while its key lives.
    Charge {
        cost: u64,
        message: Option<MessageKey<'m>>,
    },
    /// Say whether `cost` credits are left, taking none.
    Check {
        cost: u64,
    },
    /// Add `member` (a normalised contact) to `group` (a campaign), taking a
    /// lead credit if it is new to the account.
    AddMember {
        group: &'m str,
        member: String,
    },
    /// Report the usage only.
    Report,
    Deny(Reason),
}

/// Most tries of a decision whose guard keeps failing. Each failure means the
/// account's record changed after it was read, which takes a plan change.
const ATTEMPTS: usize = 4;

/// What a decision does besides allowing or denying.
#[derive(Default)]
struct Effect {
    charged: u64,
    freed: u64,
    /// The credit `charged` counts, when it counts one.
    credit: Option<Credit>,
    /// What enforcement would have said, for a plan in shadow mode.
    shadow: Option<ShadowRefusal>,
}

/// A denial and, for a credit denial, the plan that would have allowed it.
type Denial = (Reason, Option<u32>);

impl Engine {
    /// Replaces the policy in force if `text` is valid, under a gateway enforcing
    /// its limits; otherwise keeps the old one.
    pub fn load_policy(&mut self, text: &str) -> Result<PolicySummary, Vec<Diagnostic>> {
        self.load_policy_in(text, Mode::Enforce)
    }

    /// [`Engine::load_policy`] under a gateway in `gateway` mode, the mode of the
    /// plans that set none. The mode changes only with a valid policy: a refused
    /// reload leaves both as they were.
    pub fn load_policy_in(
        &mut self,
        text: &str,
        gateway: Mode,
    ) -> Result<PolicySummary, Vec<Diagnostic>> {
        let (policy, warnings) = Policy::parse(text)?;
        let summary = policy.summary(warnings, gateway);
        self.policy = Some(policy);
        self.gateway = gateway;
        self.known.get_mut().clear();
        Ok(summary)
    }

    /// Whether `plan` is decided in shadow mode.
    fn shadowed(&self, plan: &Plan) -> bool {
        plan.mode_under(self.gateway) == Mode::Shadow
    }

    /// The plan that would have allowed a request needing `need` of `credit`
    /// on an account on `current` (see the WIT's `decision.upgrade-to`): its
    /// index in the policy summary.
    fn upgrade_to(&self, current: &str, credit: Credit, need: u64) -> Option<u32> {
        // Unlimited sorts after every count.
        let key = |limit: Option<u64>| limit.map_or((1, 0), |n| (0, n));
        let policy = self.policy.as_ref()?;
        policy
            .plans
            .iter()
            .enumerate()
            .filter(|(_, (name, _))| *name != current)
            .filter_map(|(index, (name, plan))| {
                let (this, other) = match credit {
                    Credit::Lead => (plan.lead_credits, plan.email_credits),
                    Credit::Email => (plan.email_credits, plan.lead_credits),
                };
                this.is_none_or(|limit| limit >= need)
                    .then_some(((key(this), key(other), name), index))
            })
            .min_by(|a, b| a.0.cmp(&b.0))
            .and_then(|(_, index)| u32::try_from(index).ok())
    }

    /// The shadow refusal of a request that took usage of `credit` to `used`,
    /// past `limit`: none when it stayed within.
    fn over(
        &self,
        acct: &Account,
        credit: Credit,
        used: u64,
        limit: Option<u64>,
    ) -> Option<ShadowRefusal> {
        limit
            .is_some_and(|limit| used > limit)
            .then(|| ShadowRefusal {
                reason: match credit {
                    Credit::Lead => Reason::LeadCreditsExhausted,
                    Credit::Email => Reason::EmailCreditsExhausted,
                },
                upgrade_to: self.upgrade_to(&acct.plan_name, credit, used),
            })
    }

    /// Forgets what this instance knows of every account, with the [`Name`]s it
    /// kept for them: for a component about to forget its interned names.
    pub fn forget_known(&self) {
        self.known.borrow_mut().clear();
    }

    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    pub fn subscribe(
        &self,
        st: &mut impl State,
        account: &str,
        plan: &str,
        anchor: Instant,
        now: Instant,
    ) -> Result<Decision, Error> {
        let policy = self.loaded()?;
        if anchor > now {
            return Err(Error::InvalidRequest(format!(
                "the billing anchor {} is in the future (now is {}): an account's first \
                 cycle starts when it subscribes, at the latest now",
                cycle::format(anchor),
                cycle::format(now)
            )));
        }
        if !policy.plans.contains_key(plan) {
            let usage = match self.account(st, account)? {
                Some(Ok(acct)) => Some(self.usage_of(st, account, &acct, now)?),
                _ => None,
            };
            return Ok(deny(Reason::UnknownPlan, usage));
        }
        if !st.record_insert(account, ACCOUNT_RECORD, &account_record(anchor, 0, plan))? {
            return self.with_account(st, account, now, |_, _| Ok(Err(Reason::AlreadySubscribed)));
        }
        self.with_account(st, account, now, |_, _| Ok(Ok(Effect::default())))
    }

    pub fn change_plan(
        &self,
        st: &mut impl State,
        account: &str,
        plan: &str,
        now: Instant,
    ) -> Result<Decision, Error> {
        let policy = self.loaded()?;
        self.known.borrow_mut().forget(account);
        for _ in 0..ATTEMPTS {
            let Some((record, found)) = self.read_account(st, account)? else {
                return Ok(deny(Reason::UnknownAccount, None));
            };
            let acct = found.as_ref().unwrap_or_else(|stranded| stranded);
            if !policy.plans.contains_key(plan) {
                let usage = self.usage_of(st, account, acct, now)?;
                return Ok(deny(Reason::UnknownPlan, Some(usage)));
            }
            // A compare-and-swap on the record as read: a cycle moved on, or
            // another plan change, since then is read again, never overwritten.
            let replaced = account_record(acct.anchor, acct.newest, plan);
            let (scope, key) = (st.intern(account)?, st.intern(ACCOUNT_RECORD)?);
            let guard = Guard {
                key,
                version: st.intern(&record)?,
            };
            let update = GuardedUpdate {
                scope,
                guard,
                key,
                value: &replaced,
            };
            if !st.record_update_guarded(update)? {
                continue;
            }
            let old = found.as_ref().ok().map(|acct| acct.plan);
            let mut decision =
                self.with_account(st, account, now, |_, _| Ok(Ok(Effect::default())))?;
            if let Some(usage) = &decision.usage {
                decision.alerts = limit_change_alerts(&policy.alerts, old, usage);
            }
            return Ok(decision);
        }
        Err(changed_too_often(account))
    }

    pub fn add_lead(
        &self,
        st: &mut impl State,
        account: &str,
        campaign: &str,
        email: &str,
        now: Instant,
    ) -> Result<Decision, Error> {
        self.known_decision(st, account, now, || match address::normalize(email) {
            Some(member) => Step::AddMember {
                group: campaign,
                member,
            },
            None => Step::Deny(Reason::InvalidEmail),
        })
    }

    /// `add_lead` for many addresses at once: one state call for the whole batch.
    pub fn add_leads(
        &self,
        st: &mut impl State,
        account: &str,
        campaign: &str,
        emails: &[String],
        now: Instant,
    ) -> Result<LeadBatch, Error> {
        let acct = match self.account(st, account)? {
            None => {
                return Ok(LeadBatch {
                    denied: Some(Reason::UnknownAccount),
                    results: Vec::new(),
                    usage: None,
                    alerts: Vec::new(),
                    upgrade_to: None,
                    shadow: None,
                });
            }
            Some(Err(stranded)) => {
                return Ok(LeadBatch {
                    denied: Some(Reason::UnknownPlan),
                    results: Vec::new(),
                    usage: Some(self.usage_of(st, account, &stranded, now)?),
                    alerts: Vec::new(),
                    upgrade_to: None,
                    shadow: None,
                });
            }
            Some(Ok(acct)) => acct,
        };
        let contacts: Vec<Option<String>> = emails.iter().map(|e| address::normalize(e)).collect();
        let valid: Vec<String> = contacts.iter().flatten().cloned().collect();
        let limit = acct.plan.lead_credits;
        let shadow = self.shadowed(&acct.plan);
        let added = if valid.is_empty() {
            Vec::new()
        } else {
            let add = MemberAddMany {
                scope: account,
                group: campaign,
                members: &valid,
                limit: if shadow { None } else { limit },
            };
            st.member_add_many(add)?.outcomes
        };
        let mut outcomes = added.into_iter();
        let mut results = Vec::with_capacity(contacts.len());
        for contact in &contacts {
            let Some(contact) = contact else {
                results.push(LeadResult {
                    outcome: LeadOutcome::InvalidEmail,
                    contact: 0,
                });
                continue;
            };
            let outcome = match outcomes.next() {
                Some(MemberAddOutcome::Inserted) => LeadOutcome::Added,
                Some(MemberAddOutcome::AlreadyInGroup) => LeadOutcome::AlreadyInCampaign,
                Some(MemberAddOutcome::Joined) => LeadOutcome::Joined,
                Some(MemberAddOutcome::Refused) => LeadOutcome::LeadCreditsExhausted,
                None => {
                    return Err(Error::State(StateError::Corrupt(
                        "member-add-many answered fewer outcomes than members given".into(),
                    )));
                }
            };
            results.push(LeadResult {
                outcome,
                contact: fingerprint(contact),
            });
        }
        let usage = self.usage_of(st, account, &acct, now)?;
        let added = results
            .iter()
            .filter(|r| r.outcome == LeadOutcome::Added)
            .count() as u64;
        let alerts = crossed(
            &self.loaded()?.alerts,
            Credit::Lead,
            added,
            usage.lead_credits.used,
            usage.lead_credits.limit,
        );
        // Every refused contact is new to the account: the plan that takes them
        // all holds the usage after the batch and one credit for each.
        let refused: BTreeSet<&String> = contacts
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.outcome == LeadOutcome::LeadCreditsExhausted)
            .filter_map(|(contact, _)| contact.as_ref())
            .collect();
        let upgrade_to = (!refused.is_empty()).then(|| {
            let need = usage.lead_credits.used.saturating_add(refused.len() as u64);
            self.upgrade_to(&acct.plan_name, Credit::Lead, need)
        });
        let shadow = if added > 0 {
            self.over(&acct, Credit::Lead, usage.lead_credits.used, limit)
        } else {
            None
        };
        Ok(LeadBatch {
            denied: None,
            results,
            usage: Some(usage),
            alerts,
            upgrade_to: upgrade_to.flatten(),
            shadow,
        })
    }

    pub fn delete_lead(
        &self,
        st: &mut impl State,
        account: &str,
        campaign: &str,
        email: &str,
        now: Instant,
    ) -> Result<Decision, Error> {
        self.with_account(st, account, now, |st, _| {
            let Some(contact) = address::normalize(email) else {
                return Ok(Err(Reason::InvalidEmail));
            };
            let at = Membership {
                scope: account,
                group: campaign,
                member: &contact,
            };
            let freed = match st.member_remove(at)?.outcome {
                MemberRemoveOutcome::Released => 1,
                MemberRemoveOutcome::NotInGroup | MemberRemoveOutcome::LeftGroup => 0,
            };
            Ok(Ok(Effect {
                freed,
                ..Effect::default()
            }))
        })
    }

    pub fn delete_campaign_leads(
        &self,
        st: &mut impl State,
        account: &str,
        campaign: &str,
        now: Instant,
    ) -> Result<Decision, Error> {
        self.with_account(st, account, now, |st, _| {
            let cleared = st.group_clear(account, campaign)?;
            Ok(Ok(Effect {
                freed: cleared.released,
                ..Effect::default()
            }))
        })
    }

    pub fn send_email(
        &self,
        st: &mut impl State,
        account: &str,
        to: &[String],
        kind: EmailKind,
        message_id: Option<&str>,
        now: Instant,
    ) -> Result<Decision, Error> {
        let costs = self.loaded()?.email_costs;
        let unit = costs.of(kind);
        let message_id = checked_message_id(message_id)?;
        let keyed = keyed(st, message_id)?;
        self.known_decision(st, account, now, || {
            let (count, fingerprint) = match to {
                // The common case, without a set to count distinct recipients, and
                // with no normal form built when no message id needs it.
                [one] => match keyed {
                    None if address::is_valid(one) => (1, None),
                    None => return Step::Deny(Reason::InvalidEmail),
                    Some((secret, id)) => match address::normalize(one) {
                        Some(contact) => (
                            1,
                            Some(recipients_fingerprint(&secret, id, [&contact], unit)),
                        ),
                        None => return Step::Deny(Reason::InvalidEmail),
                    },
                },
                _ => {
                    let mut recipients = BTreeSet::new();
                    for raw in to {
                        let Some(contact) = address::normalize(raw) else {
                            return Step::Deny(Reason::InvalidEmail);
                        };
                        recipients.insert(contact);
                    }
                    if recipients.is_empty() {
                        return Step::Deny(Reason::NoRecipients);
                    }
                    let fingerprint = keyed
                        .map(|(secret, id)| recipients_fingerprint(&secret, id, &recipients, unit));
                    let count = u64::try_from(recipients.len()).unwrap_or(u64::MAX);
                    (count, fingerprint)
                }
            };
            Step::Charge {
                cost: count.saturating_mul(unit),
                message: message_id
                    .zip(fingerprint)
                    .map(|(id, fingerprint)| MessageKey { id, fingerprint }),
            }
        })
    }

    /// Charges `cost` email credits for a message whose recipients are counted, not
    /// listed (a gateway at the end of a message).
    pub fn charge_email(
        &self,
        st: &mut impl State,
        account: &str,
        cost: u64,
        message_id: Option<&str>,
        now: Instant,
    ) -> Result<Decision, Error> {
        let message = keyed(st, checked_message_id(message_id)?)?.map(|(secret, id)| MessageKey {
            id,
            fingerprint: cost_fingerprint(&secret, id, cost),
        });
        self.known_decision(st, account, now, || match cost {
            0 => Step::Deny(Reason::NoRecipients),
            _ => Step::Charge { cost, message },
        })
    }

    pub fn check_email(
        &self,
        st: &mut impl State,
        account: &str,
        cost: u64,
        now: Instant,
    ) -> Result<Decision, Error> {
        self.known_decision(st, account, now, || Step::Check { cost })
    }

    pub fn usage(
        &self,
        st: &mut impl State,
        account: &str,
        now: Instant,
    ) -> Result<Decision, Error> {
        self.known_decision(st, account, now, || Step::Report)
    }

    /// A decision on a known account: one guarded state call, which also answers
    /// the usage the decision reports. `step` runs once the account is found, so
    /// that an unknown account is reported as such whatever else is wrong with
    /// the request.
    fn known_decision<'m, S: State>(
        &self,
        st: &mut S,
        account: &str,
        now: Instant,
        step: impl Fn() -> Step<'m>,
    ) -> Result<Decision, Error> {
        // No policy is an error before the account is looked for.
        self.loaded()?;
        let mut known = self.known.borrow_mut();
        for _ in 0..ATTEMPTS {
            let entry = match known.get_mut(account) {
                Some(entry) => entry,
                None => match self.read_account(st, account)? {
                    None => return Ok(deny(Reason::UnknownAccount, None)),
                    Some((_, Err(stranded))) => {
                        let usage = self.usage_of(st, account, &stranded, now)?;
                        return Ok(deny(Reason::UnknownPlan, Some(usage)));
                    }
                    Some((record, Ok(found))) => known.insert(st, account, &record, found)?,
                },
            };
            let step = step();
            let charging = matches!(step, Step::Charge { .. });
            let Some((scope, guard, acct, cycle)) = entry.at(st, now, charging)? else {
                // Another worker or host changed the account: read it again.
                known.forget(account);
                continue;
            };
            let limit = acct.plan.email_credits;
            // A plan in shadow takes its credits past its limits, and says what
            // enforcement would have answered.
            let shadow = self.shadowed(&acct.plan);
            let enforced = |limit: Option<u64>| if shadow { None } else { limit };
            let tallied = |st: &mut S| {
                st.counter_tally(CounterTally {
                    scope,
                    guard,
                    counter: cycle.counter,
                    now,
                })
            };
            let charged = |credit, charged, shadow| Effect {
                charged,
                freed: 0,
                credit: Some(credit),
                shadow,
            };
            let exhausted = |credit, need| -> Denial {
                let reason = match credit {
                    Credit::Lead => Reason::LeadCreditsExhausted,
                    Credit::Email => Reason::EmailCreditsExhausted,
                };
                (reason, self.upgrade_to(&acct.plan_name, credit, need))
            };
            let plain = |reason| -> Denial { (reason, None) };
            let decided = match step {
                Step::Charge { cost, message } => {
                    let once = message.map(|m| OnceKey {
                        prefix: cycle.once_prefix,
                        key: m.id,
                        fingerprint: m.fingerprint,
                        expires_at: cycle.once_expires_at,
                    });
                    let added = st.counter_add_guarded(CounterAdd {
                        scope,
                        guard,
                        counter: cycle.counter,
                        amount: cost,
                        limit: enforced(limit),
                        once,
                        expires_at: Some(cycle.kept_until),
                        now,
                    })?;
                    match added {
                        GuardedAdd::Applied(t) => {
                            let over = self.over(acct, Credit::Email, t.counter, limit);
                            Some((Ok(charged(Credit::Email, cost, over)), t))
                        }
                        GuardedAdd::Repeated(t) => Some((Ok(Effect::default()), t)),
                        GuardedAdd::Refused(t) => Some((
                            Err(exhausted(Credit::Email, t.counter.saturating_add(cost))),
                            t,
                        )),
                        GuardedAdd::Conflict(t) => {
                            Some((Err(plain(Reason::IdempotencyKeyReused)), t))
                        }
                        GuardedAdd::Stale => None,
                    }
                }
                Step::AddMember { group, member } => {
                    let group = st.intern(group)?;
                    let limit = acct.plan.lead_credits;
                    st.member_add_guarded(MemberAddGuarded {
                        scope,
                        guard,
                        group,
                        member: &member,
                        limit: enforced(limit),
                        counter: cycle.counter,
                        now,
                    })?
                    .map(|added| {
                        let members = added.tally.members;
                        let outcome = match added.outcome {
                            MemberAddOutcome::AlreadyInGroup | MemberAddOutcome::Joined => {
                                Ok(Effect::default())
                            }
                            MemberAddOutcome::Inserted => {
                                let over = self.over(acct, Credit::Lead, members, limit);
                                Ok(charged(Credit::Lead, 1, over))
                            }
                            MemberAddOutcome::Refused => {
                                Err(exhausted(Credit::Lead, members.saturating_add(1)))
                            }
                        };
                        (outcome, added.tally)
                    })
                }
                Step::Check { cost } => tallied(st)?.map(|t| {
                    let need = t.counter.saturating_add(cost);
                    let fits = limit.is_none_or(|limit| {
                        t.counter
                            .checked_add(cost)
                            .is_some_and(|total| total <= limit)
                    });
                    let outcome = if fits {
                        Ok(Effect::default())
                    } else if shadow {
                        Ok(Effect {
                            shadow: self.over(acct, Credit::Email, need, limit),
                            ..Effect::default()
                        })
                    } else {
                        Err(exhausted(Credit::Email, need))
                    };
                    (outcome, t)
                }),
                Step::Report => tallied(st)?.map(|t| (Ok(Effect::default()), t)),
                Step::Deny(reason) => tallied(st)?.map(|t| (Err(plain(reason)), t)),
            };
            let Some((outcome, tally)) = decided else {
                // Another worker or host changed the account: read it again.
                known.forget(account);
                continue;
            };
            let usage = usage_from(acct, &cycle.cycle, tally, now);
            return Ok(match outcome {
                Ok(effect) => self.allowed(effect, usage)?,
                Err((reason, upgrade_to)) => Decision {
                    upgrade_to,
                    ..deny(reason, Some(usage))
                },
            });
        }
        Err(changed_too_often(account))
    }

    /// An allowed decision with its effect, the usage after it and the
    /// thresholds it crossed.
    fn allowed(&self, effect: Effect, usage: AccountUsage) -> Result<Decision, Error> {
        Ok(Decision {
            denied: None,
            charged: effect.charged,
            freed: effect.freed,
            alerts: match effect.credit {
                Some(credit) => {
                    let (used, limit) = used_and_limit(&usage, credit);
                    crossed(&self.loaded()?.alerts, credit, effect.charged, used, limit)
                }
                None => Vec::new(),
            },
            usage: Some(usage),
            upgrade_to: None,
            shadow: effect.shadow,
        })
    }

    fn loaded(&self) -> Result<&Policy, Error> {
        self.policy.as_ref().ok_or(Error::NoPolicy)
    }

    /// Runs `rule` for an existing account on a known plan and reports the usage after
    /// it; denies `unknown-account` or `unknown-plan` otherwise.
    fn with_account<S: State>(
        &self,
        st: &mut S,
        account: &str,
        now: Instant,
        rule: impl FnOnce(&mut Remembering<'_, S>, &Account) -> Result<Result<Effect, Reason>, Error>,
    ) -> Result<Decision, Error> {
        let acct = match self.account(st, account)? {
            None => return Ok(deny(Reason::UnknownAccount, None)),
            Some(Err(stranded)) => {
                let usage = self.usage_of(st, account, &stranded, now)?;
                return Ok(deny(Reason::UnknownPlan, Some(usage)));
            }
            Some(Ok(acct)) => acct,
        };
        let mut st = Remembering {
            inner: st,
            members: None,
        };
        let outcome = rule(&mut st, &acct)?;
        let usage = self.usage_of(&mut st, account, &acct, now)?;
        Ok(match outcome {
            Ok(effect) => self.allowed(effect, usage)?,
            Err(reason) => deny(reason, Some(usage)),
        })
    }

    pub fn email_history(
        &self,
        st: &mut impl State,
        account: &str,
        cycles: u32,
        now: Instant,
    ) -> Result<Vec<CycleUsage>, Error> {
        // A stranded account's history is its own whatever its plan.
        let Some(acct) = self
            .account(st, account)?
            .map(|found| found.unwrap_or_else(|a| a))
        else {
            return Ok(Vec::new());
        };
        let current = acct.cycle_at(now)?;
        let first = current
            .index
            .saturating_sub(cycles.clamp(1, HISTORY_CYCLES) - 1);
        let mut history = Vec::new();
        for index in first..=current.index {
            let cycle = cycle::cycle_number(acct.anchor, index).map_err(out_of_range)?;
            history.push(CycleUsage {
                start: cycle.start,
                end: cycle.end,
                used: st.counter_get(account, &email_counter(&cycle), now)?,
            });
        }
        Ok(history)
    }

    /// The account, if it exists: `Ok` with its plan, or `Err` when the loaded
    /// policy lacks its plan: then stranded, with [`STRANDED`] limits.
    /// when the plan is not in the loaded policy.
    #[allow(clippy::type_complexity)]
    fn account(
        &self,
        st: &mut impl State,
        account: &str,
    ) -> Result<Option<Result<Account, Account>>, Error> {
        Ok(self.read_account(st, account)?.map(|(_, found)| found))
    }

    /// [`Engine::account`] with the record it was read from.
    #[allow(clippy::type_complexity)]
    fn read_account(
        &self,
        st: &mut impl State,
        account: &str,
    ) -> Result<Option<(String, Result<Account, Account>)>, Error> {
        let policy = self.loaded()?;
        let Some(record) = st.record_get(account, ACCOUNT_RECORD)? else {
            return Ok(None);
        };
        let (anchor, newest, plan_name) = parse_account_record(&record).ok_or_else(|| {
            Error::State(StateError::Corrupt(format!(
                "account record of {account:?} is malformed: {record:?}"
            )))
        })?;
        // The plan's index in the policy summary, whose order is the map's.
        let found = match policy
            .plans
            .iter()
            .enumerate()
            .find(|(_, (n, _))| *n == plan_name)
        {
            Some((index, (_, plan))) => Ok(Account {
                anchor,
                plan_name: plan_name.to_string(),
                plan_index: u32::try_from(index).ok(),
                plan: *plan,
                newest,
            }),
            None => Err(Account {
                anchor,
                plan_name: plan_name.to_string(),
                plan_index: None,
                plan: STRANDED,
                newest,
            }),
        };
        Ok(Some((record, found)))
    }

    fn usage_of(
        &self,
        st: &mut impl State,
        account: &str,
        acct: &Account,
        now: Instant,
    ) -> Result<AccountUsage, Error> {
        let cycle = acct.cycle_at(now)?;
        let tally = Tally {
            counter: st.counter_get(account, &email_counter(&cycle), now)?,
            members: st.member_count(account)?,
        };
        Ok(usage_from(acct, &cycle, tally, now))
    }
}

/// An account's usage in `cycle` at `now`, from its email counter and member count.
fn usage_from(acct: &Account, cycle: &Cycle, tally: Tally, now: Instant) -> AccountUsage {
    AccountUsage {
        plan: match acct.plan_index {
            Some(index) => PlanRef::Loaded(index),
            None => PlanRef::Missing(acct.plan_name.clone()),
        },
        anchor: acct.anchor,
        lead_credits: LeadUsage {
            used: tally.members,
            limit: acct.plan.lead_credits,
        },
        email_credits: EmailUsage {
            used: tally.counter,
            limit: acct.plan.email_credits,
            cycle_start: cycle.start,
            resets_at: cycle.end,
            projected_exhaustion: crate::projection::projected_exhaustion(
                tally.counter,
                acct.plan.email_credits,
                cycle,
                now,
            ),
        },
    }
}

/// The state seen through one lead decision: it remembers the member count its
/// primitive just answered, so that reporting the usage after the decision does
/// not cross the boundary again to read it back.
struct Remembering<'s, S> {
    inner: &'s mut S,
    members: Option<u64>,
}

impl<S: State> State for Remembering<'_, S> {
    fn intern(&mut self, text: &str) -> Result<Name, StateError> {
        self.inner.intern(text)
    }
    fn record_get(&mut self, scope: &str, key: &str) -> Result<Option<String>, StateError> {
        self.inner.record_get(scope, key)
    }
    fn record_insert(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, StateError> {
        self.inner.record_insert(scope, key, value)
    }
    fn record_update(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, StateError> {
        self.inner.record_update(scope, key, value)
    }
    fn record_update_guarded(&mut self, update: GuardedUpdate<'_>) -> Result<bool, StateError> {
        self.inner.record_update_guarded(update)
    }
    fn counter_get(&mut self, scope: &str, name: &str, now: Instant) -> Result<u64, StateError> {
        self.inner.counter_get(scope, name, now)
    }
    fn member_add_many(&mut self, add: MemberAddMany<'_>) -> Result<MembersAdded, StateError> {
        let added = self.inner.member_add_many(add)?;
        self.members = Some(added.members);
        Ok(added)
    }
    fn member_remove(&mut self, at: Membership<'_>) -> Result<MemberRemoved, StateError> {
        let removed = self.inner.member_remove(at)?;
        self.members = Some(removed.members);
        Ok(removed)
    }
    fn group_clear(&mut self, scope: &str, group: &str) -> Result<GroupCleared, StateError> {
        let cleared = self.inner.group_clear(scope, group)?;
        self.members = Some(cleared.members);
        Ok(cleared)
    }
    fn member_count(&mut self, scope: &str) -> Result<u64, StateError> {
        match self.members {
            Some(members) => Ok(members),
            None => self.inner.member_count(scope),
        }
    }
    fn counter_add_guarded(&mut self, add: CounterAdd<'_>) -> Result<GuardedAdd, StateError> {
        self.inner.counter_add_guarded(add)
    }
    fn counter_tally(&mut self, tally: CounterTally) -> Result<Option<Tally>, StateError> {
        self.inner.counter_tally(tally)
    }
    fn member_add_guarded(
        &mut self,
        add: MemberAddGuarded<'_>,
    ) -> Result<Option<GuardedMember>, StateError> {
        self.inner.member_add_guarded(add)
    }
    fn secret(&mut self) -> Result<Secret, StateError> {
        self.inner.secret()
    }
}

fn deny(reason: Reason, usage: Option<AccountUsage>) -> Decision {
    Decision {
        denied: Some(reason),
        charged: 0,
        freed: 0,
        usage,
        alerts: Vec::new(),
        upgrade_to: None,
        shadow: None,
    }
}

/// The usage count a threshold of `percent` percent of `limit` is reached at; at
/// least 1, so that an empty account never counts as over a threshold.
fn threshold_count(percent: u8, limit: u64) -> u64 {
    let count = (u128::from(limit) * u128::from(percent)).div_ceil(100);
    u64::try_from(count).unwrap_or(u64::MAX).max(1)
}

fn thresholds(alerts: &Alerts, credit: Credit) -> &[u8] {
    match credit {
        Credit::Lead => &alerts.lead_credits,
        Credit::Email => &alerts.email_credits,
    }
}

fn used_and_limit(usage: &AccountUsage, credit: Credit) -> (u64, Option<u64>) {
    match credit {
        Credit::Lead => (usage.lead_credits.used, usage.lead_credits.limit),
        Credit::Email => (usage.email_credits.used, usage.email_credits.limit),
    }
}

/// The thresholds a request that took `charged` credits, leaving `used`, crossed.
fn crossed(
    alerts: &Alerts,
    credit: Credit,
    charged: u64,
    used: u64,
    limit: Option<u64>,
) -> Vec<Alert> {
    let Some(limit) = limit else {
        return Vec::new();
    };
    let before = used.saturating_sub(charged);
    thresholds(alerts, credit)
        .iter()
        .filter(|&&t| (before + 1..=used).contains(&threshold_count(t, limit)))
        .map(|&threshold| Alert {
            credit,
            threshold,
            used,
            limit,
        })
        .collect()
}

/// After a plan change: the thresholds usage is over under the new limits and was
/// not under the old ones (an unknown old plan counts as under none).
fn limit_change_alerts(alerts: &Alerts, old: Option<Plan>, usage: &AccountUsage) -> Vec<Alert> {
    let mut fired = Vec::new();
    for credit in [Credit::Lead, Credit::Email] {
        let (used, Some(limit)) = used_and_limit(usage, credit) else {
            continue;
        };
        let old_limit = old.map(|plan| match credit {
            Credit::Lead => plan.lead_credits,
            Credit::Email => plan.email_credits,
        });
        for &threshold in thresholds(alerts, credit) {
            let over_now = used >= threshold_count(threshold, limit);
            let over_before = match old_limit {
                Some(Some(old)) => used >= threshold_count(threshold, old),
                // Unlimited before: under every threshold.
                Some(None) | None => false,
            };
            if over_now && !over_before {
                fired.push(Alert {
                    credit,
                    threshold,
                    used,
                    limit,
                });
            }
        }
    }
    fired
}

/// The fingerprint message id `id` is remembered with by `send-email`: of the
/// distinct normalised recipients, given in byte order (a set's order), and of
/// what one recipient costs (`unit`, by the email's kind: without it, a retry
/// of a message under a dearer kind would pass for the same message), keyed
/// with the store's `secret`.
fn recipients_fingerprint<'a>(
    secret: &Secret,
    id: &str,
    recipients: impl IntoIterator<Item = &'a String>,
    unit: u64,
) -> u64 {
    let mut hash = secret.hasher(b"send-email", id);
    for recipient in recipients {
        // Normalised addresses hold no control characters: `\n` ends each one
        // unambiguously, and the cost's fixed 8 bytes come after the last.
        hash.write(recipient.as_bytes());
        hash.write(b"\n");
    }
    hash.write(&unit.to_be_bytes());
    hash.finish()
}

/// The fingerprint message id `id` is remembered with by `charge-email`: of the
/// cost, keyed with the store's `secret`.
fn cost_fingerprint(secret: &Secret, id: &str, cost: u64) -> u64 {
    let mut hash = secret.hasher(b"charge-email", id);
    hash.write(&cost.to_be_bytes());
    hash.finish()
}

/// The store's secret with `message_id`, when a message id is given: what its
/// fingerprint needs.
fn keyed<'a>(
    st: &mut impl State,
    message_id: Option<&'a str>,
) -> Result<Option<(Secret, &'a str)>, Error> {
    match message_id {
        Some(id) => Ok(Some((st.secret()?, id))),
        None => Ok(None),
    }
}

/// A message id as an idempotency key: none, or one that is not blank.
fn checked_message_id(message_id: Option<&str>) -> Result<Option<&str>, Error> {
    match message_id {
        Some(id) if id.trim().is_empty() => Err(Error::InvalidRequest(format!(
            "message-id {id:?} is empty or blank; give a message's own id, or none"
        ))),
        _ => Ok(message_id),
    }
}

/// FNV-1a over the normalised contact; never 0, which marks an invalid address.
fn fingerprint(contact: &str) -> u64 {
    let mut hash = Fnv::default();
    hash.write(contact.as_bytes());
    hash.finish().max(1)
}

/// A decision that found the account's record changed by others at each of
/// its [`ATTEMPTS`]: the store is busy with it, try again later.
fn changed_too_often(account: &str) -> Error {
    Error::State(StateError::Unavailable(format!(
        "the record of account {account:?} changed {ATTEMPTS} times during one decision"
    )))
}

impl From<StateError> for Error {
    fn from(e: StateError) -> Self {
        Error::State(e)
    }
}

#[cfg(test)]
mod tests {
    //! The engine natively, over a plain in-process state: fast checks of the
    //! mapping from rules to primitives. The host's tests run every rule through
    //! the component against the real stores.

    use super::*;
    use crate::mem_state::MemState;

    const T0: Instant = 1_738_314_000_000_000_000; // 2025-01-31T09:00:00Z

    fn engine() -> Engine {
        let mut engine = Engine::default();
        engine
            .load_policy("[plans.tiny]\nlead_credits = 1\nemail_credits = 2\n[plans.big]\nlead_credits = 9\nemail_credits = 9\n")
            .expect("valid policy");
        engine
    }

    fn brief(d: &Decision) -> (Option<Reason>, u64, u64) {
        (d.denied, d.charged, d.freed)
    }

    /// Account "a"'s record, as stored.
    fn record_of_a(st: &MemState) -> Option<String> {
        st.store.record_get("a", ACCOUNT_RECORD)
    }

    /// `charge-email` of `cost` to account "a" at `at`, without a message id:
    /// [`brief`], and the start of the cycle it counted in.
    fn charged_in(
        e: &Engine,
        st: &mut MemState,
        cost: u64,
        at: Instant,
    ) -> ((Option<Reason>, u64, u64), Option<Instant>) {
        let d = e.charge_email(st, "a", cost, None, at).unwrap();
        let start = d.usage.as_ref().map(|u| u.email_credits.cycle_start);
        (brief(&d), start)
    }

    #[test]
    fn no_policy_is_an_error_not_a_decision() {
        let err = Engine::default()
            .usage(&mut MemState::default(), "a", T0)
            .expect_err("no policy");
        assert!(matches!(err, Error::NoPolicy));
    }

    #[test]
    fn a_failed_load_keeps_the_old_policy() {
        let mut e = engine();
        assert!(
            e.load_policy("[plans.x]\nlead_credits = -1\nemail_credits = 1\n")
                .is_err()
        );
        assert!(e.policy().is_some_and(|p| p.plans.contains_key("tiny")));
    }

    #[test]
    fn a_back_dated_subscription_reports_the_cycle_that_contains_now() {
        let (e, st) = (engine(), &mut MemState::default());
        // Anchored on 31 January, subscribed on 10 December: the cycle is
        // 30 November to 31 December, not the anchor's own January cycle.
        let now = 1_765_357_200_000_000_000; // 2025-12-10T09:00:00Z
        let d = e.subscribe(st, "a", "tiny", T0, now).unwrap();
        assert_eq!(brief(&d), (None, 0, 0));
        let usage = d.usage.expect("usage");
        assert_eq!(usage.anchor, T0);
        assert_eq!(usage.email_credits.cycle_start, 1_764_493_200_000_000_000); // 2025-11-30T09:00Z
        assert_eq!(usage.email_credits.resets_at, 1_767_171_600_000_000_000); // 2025-12-31T09:00Z
        assert!(usage.email_credits.cycle_start <= now && now < usage.email_credits.resets_at);
        let later = e.usage(st, "a", now).unwrap().usage.expect("usage");
        assert_eq!(
            (
                later.email_credits.cycle_start,
                later.email_credits.resets_at
            ),
            (
                usage.email_credits.cycle_start,
                usage.email_credits.resets_at
            )
        );
    }

    #[test]
    fn a_subscription_anchored_in_the_future_is_refused() {
        let (e, st) = (engine(), &mut MemState::default());
        let err = e
            .subscribe(st, "a", "tiny", T0 + 1_000_000_000, T0)
            .expect_err("a future anchor");
        let Error::InvalidRequest(message) = err else {
            panic!("expected invalid-request, got {err:?}");
        };
        assert!(
            message.contains("2025-01-31T09:00:01Z is in the future"),
            "{message}"
        );
        assert_eq!(
            brief(&e.usage(st, "a", T0).unwrap()),
            (Some(Reason::UnknownAccount), 0, 0),
            "nothing was created"
        );
    }

    #[test]
    fn leads_map_onto_members_and_their_limit() {
        let (e, st) = (engine(), &mut MemState::default());
        assert_eq!(
            brief(&e.subscribe(st, "a", "tiny", T0, T0).unwrap()),
            (None, 0, 0)
        );
        assert_eq!(
            brief(&e.add_lead(st, "a", "c1", "X@y.io", T0).unwrap()),
            (None, 1, 0)
        );
        assert_eq!(
            brief(&e.add_lead(st, "a", "c2", "x@y.io", T0).unwrap()),
            (None, 0, 0)
        );
        assert_eq!(
            brief(&e.add_lead(st, "a", "c1", "z@y.io", T0).unwrap()),
            (Some(Reason::LeadCreditsExhausted), 0, 0)
        );
        assert_eq!(
            brief(&e.delete_campaign_leads(st, "a", "c1", T0).unwrap()),
            (None, 0, 0)
        );
        assert_eq!(
            brief(&e.delete_lead(st, "a", "c2", "x@y.io", T0).unwrap()),
            (None, 0, 1)
        );
        assert_eq!(
            brief(&e.add_lead(st, "a", "c1", "z@y.io", T0).unwrap()),
            (None, 1, 0)
        );
    }

    #[test]
    fn sends_map_onto_a_counter_per_cycle_with_message_ids_as_once_keys() {
        let (e, st) = (engine(), &mut MemState::default());
        e.subscribe(st, "a", "tiny", T0, T0).unwrap();
        let to = vec!["a@y.io".to_string(), "A@Y.IO".to_string()];
        assert_eq!(
            brief(
                &e.send_email(st, "a", &to, EmailKind::First, Some("m1"), T0)
                    .unwrap()
            ),
            (None, 1, 0)
        );
        assert_eq!(
            brief(
                &e.send_email(st, "a", &to, EmailKind::Reply, Some("m1"), T0)
                    .unwrap()
            ),
            (None, 0, 0)
        );
        let two = vec!["b@y.io".to_string(), "c@y.io".to_string()];
        let d = e
            .send_email(st, "a", &two, EmailKind::First, None, T0)
            .unwrap();
        assert_eq!(brief(&d), (Some(Reason::EmailCreditsExhausted), 0, 0));
        assert_eq!(d.usage.map(|u| u.email_credits.used), Some(1));
        assert_eq!(brief(&e.check_email(st, "a", 1, T0).unwrap()), (None, 0, 0));
        assert_eq!(
            brief(&e.check_email(st, "a", 2, T0).unwrap()),
            (Some(Reason::EmailCreditsExhausted), 0, 0)
        );
        let held = st.store.export("a");
        let counters: Vec<&str> = held.counters.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(counters, ["email/0"]);
        assert!(held.once.iter().any(|o| o.0 == "msg/m1"));
    }

    /// A message id is one key for the account, not one per cycle: a retry just
    /// after the cycle ends, or after the clock steps back, is free, and reports
    /// the usage of the cycle it falls in; the key lives until the charging
    /// cycle's end plus the grace, after which the id is a new message's.
    #[test]
    fn a_message_id_is_charged_once_across_a_cycle_boundary() {
        let (e, st) = (engine(), &mut MemState::default());
        e.subscribe(st, "a", "tiny", T0, T0).unwrap();
        let end = cycle::cycle_number(T0, 1).unwrap().start; // 2025-02-28T09:00Z
        let to = vec!["x@y.io".to_string()];
        let used = |d: &Decision| d.usage.as_ref().map(|u| u.email_credits.used);
        let send = |st: &mut MemState, id, at| {
            e.send_email(st, "a", &to, EmailKind::First, Some(id), at)
                .unwrap()
        };
        let d = send(st, "m1", end - 100_000_000);
        assert_eq!((brief(&d), used(&d)), ((None, 1, 0), Some(1)));
        // A charge just before the end, retried after it and after a step back.
        let charge = |st: &mut MemState, cost, at| {
            brief(&e.charge_email(st, "a", cost, Some("p1"), at).unwrap())
        };
        assert_eq!(charge(st, 1, end - 1), (None, 1, 0));
        // The retry of m1 0.2 s later, in the next cycle: free, that cycle's usage.
        let d = send(st, "m1", end + 100_000_000);
        assert_eq!((brief(&d), used(&d)), ((None, 0, 0), Some(0)));
        assert_eq!(charge(st, 1, end + 5), (None, 0, 0));
        assert_eq!(charge(st, 1, end - 2), (None, 0, 0));
        // The id for another message after the boundary: a conflict.
        assert_eq!(
            charge(st, 2, end + 10),
            (Some(Reason::IdempotencyKeyReused), 0, 0)
        );
        assert_eq!(
            brief(&send(st, "p1", end + 10)),
            (Some(Reason::IdempotencyKeyReused), 0, 0)
        );
        // Each key expires at the charging cycle's end plus the grace.
        let held = st.store.export("a");
        let expiries: Vec<(&str, Instant)> =
            held.once.iter().map(|o| (o.0.as_str(), o.1)).collect();
        let until = end + crate::known::ONCE_GRACE;
        assert_eq!(expiries, [("msg/m1", until), ("msg/p1", until)]);
        // At its last instant it is still a repeat; then a new message's id.
        assert_eq!(brief(&send(st, "m1", until - 1)), (None, 0, 0));
        let d = send(st, "m1", until);
        assert_eq!((brief(&d), used(&d)), ((None, 1, 0), Some(1)));
        // Charged in cycle 1, it is kept until cycle 1's end plus the grace.
        let end1 = cycle::cycle_number(T0, 2).unwrap().start;
        let held = st.store.export("a");
        let m1 = held.once.iter().find(|o| o.0 == "msg/m1").map(|o| o.1);
        assert_eq!(m1, Some(end1 + crate::known::ONCE_GRACE));
        // The history: one credit in cycle 0 for m1 and p1 each, one in cycle 1.
        let history: Vec<u64> = e
            .email_history(st, "a", 2, until)
            .unwrap()
            .iter()
            .map(|c| c.used)
            .collect();
        assert_eq!(history, [2, 1]);
    }

    /// Audit 3.2: a cycle that is over for one gateway is over for all. Two
    /// engines share one state, as two gateways share one store; the one whose
    /// clock is behind charges the newest cycle once the other has charged in
    /// it, so the cycle before, whose unused credits are gone, is not reopened.
    #[test]
    fn a_cycle_over_for_one_gateway_is_over_for_all() {
        let (ahead, behind, st) = (engine(), engine(), &mut MemState::default());
        ahead.subscribe(st, "a", "tiny", T0, T0).unwrap();
        let end = cycle::cycle_number(T0, 1).unwrap().start;
        const SEC: Instant = 1_000_000_000;
        let charge = charged_in;
        // The gateway behind uses one of cycle 0's two credits, ten seconds
        // before its end; the one ahead, ten seconds past it, cycle 1's two.
        assert_eq!(
            charge(&behind, st, 1, end - 10 * SEC),
            ((None, 1, 0), Some(T0))
        );
        assert_eq!(
            charge(&ahead, st, 2, end + 10 * SEC),
            ((None, 2, 0), Some(end))
        );
        // Its clock still before the end, the gateway behind is in cycle 1 now:
        // cycle 0's last credit is gone, and cycle 1 has none left.
        assert_eq!(
            charge(&behind, st, 1, end - 5 * SEC),
            ((Some(Reason::EmailCreditsExhausted), 0, 0), Some(end))
        );
        let usage = behind.usage(st, "a", end - 5 * SEC).unwrap().usage.unwrap();
        assert_eq!(
            (usage.email_credits.used, usage.email_credits.cycle_start),
            (2, end)
        );
        let record = record_of_a(st);
        assert_eq!(record, Some(account_record(T0, 1, "tiny")));
        // A plan change keeps the newest cycle: the upgrade is charged there too.
        ahead.change_plan(st, "a", "big", end + 20 * SEC).unwrap();
        assert_eq!(record_of_a(st), Some(account_record(T0, 1, "big")));
        assert_eq!(
            charge(&behind, st, 1, end - 4 * SEC),
            ((None, 1, 0), Some(end))
        );
        let history: Vec<u64> = (behind.email_history(st, "a", 2, end - 4 * SEC).unwrap())
            .iter()
            .map(|c| c.used)
            .collect();
        assert_eq!(history, [1, 3]);
    }

    /// The record's compare-and-swap: a plan change and a cycle moved on from
    /// one version of the record both stand, in either order; neither writer
    /// overwrites the other unseen.
    #[test]
    fn a_plan_change_and_a_new_cycle_from_one_record_both_stand() {
        let end = cycle::cycle_number(T0, 1).unwrap().start;
        let next_cycle_charge = |e: &Engine, st: &mut MemState| {
            let d = e.charge_email(st, "a", 1, None, end + 1).unwrap();
            assert_eq!(brief(&d), (None, 1, 0));
        };
        for plan_change_first in [true, false] {
            let (gateway, other, st) = (engine(), engine(), &mut MemState::default());
            gateway.subscribe(st, "a", "tiny", T0, T0).unwrap();
            // The gateway knows the account as subscribed (its guard: the record).
            gateway.charge_email(st, "a", 1, None, T0).unwrap();
            if plan_change_first {
                other.change_plan(st, "a", "big", T0).unwrap();
                next_cycle_charge(&gateway, st);
            } else {
                next_cycle_charge(&other, st);
                let d = gateway.change_plan(st, "a", "big", end + 2).unwrap();
                assert_eq!(brief(&d), (None, 0, 0));
            }
            assert_eq!(
                record_of_a(st),
                Some(account_record(T0, 1, "big")),
                "plan change first: {plan_change_first}"
            );
        }
    }

    /// A plan change whose read of the record another gateway's cycle advance
    /// overtakes reads it again: the advance stands, and so does the change.
    /// (Review of audit 3.2: with a plain write, the advance was overwritten.)
    #[test]
    fn a_cycle_advanced_between_a_plan_changes_read_and_write_stands() {
        let (e, st) = (engine(), &mut MemState::default());
        e.subscribe(st, "a", "tiny", T0, T0).unwrap();
        let end = cycle::cycle_number(T0, 1).unwrap().start;
        let advanced = account_record(T0, 1, "tiny");
        st.racing_write = Some(("a".into(), ACCOUNT_RECORD.into(), advanced));
        let d = e.change_plan(st, "a", "big", end + 1).unwrap();
        assert_eq!(brief(&d), (None, 0, 0));
        assert_eq!(
            record_of_a(st),
            Some(account_record(T0, 1, "big")),
            "the cycle advance was overwritten"
        );
    }

    /// A charge stamped by a clock far ahead (a gateway booted a year ahead)
    /// moves the record's newest cycle there, but holds no correct clock to it:
    /// only a clock within `TURNOVER_SKEW` of that cycle's start is. (Review of
    /// audit 3.2: the account was frozen in the future cycle for a year.)
    #[test]
    fn a_charge_from_a_clock_far_ahead_does_not_hold_the_account_in_its_cycle() {
        let (e, st) = (engine(), &mut MemState::default());
        e.subscribe(st, "a", "tiny", T0, T0).unwrap();
        const DAY: Instant = 86_400_000_000_000;
        let charge = |st: &mut MemState, at| charged_in(&e, st, 1, at);
        let year_on = cycle::cycle_number(T0, 12).unwrap().start;
        assert_eq!(charge(st, year_on + DAY), ((None, 1, 0), Some(year_on)));
        // Correct clocks: cycle 0's two credits, then cycle 1's, reset as ever.
        assert_eq!(charge(st, T0 + DAY), ((None, 1, 0), Some(T0)));
        assert_eq!(charge(st, T0 + 2 * DAY), ((None, 1, 0), Some(T0)));
        let next = cycle::cycle_number(T0, 1).unwrap().start;
        assert_eq!(charge(st, next + DAY), ((None, 1, 0), Some(next)));
        // Within the skew of cycle 12's start, a clock is held to it.
        let near = year_on - crate::known::TURNOVER_SKEW;
        let eleven = cycle::cycle_number(T0, 11).unwrap().start;
        assert_eq!(charge(st, near - 1), ((None, 1, 0), Some(eleven)));
        assert_eq!(charge(st, near), ((None, 1, 0), Some(year_on)));
    }

    /// Trust audit 4b.3: a charge from a clock months ahead moved the record's
    /// newest cycle there, and from then on a clock a little behind at a real
    /// boundary was no longer held to the next cycle: it charged the cycle just
    /// over, and sold its unused credits after its end.
    #[test]
    fn a_charge_from_a_clock_far_ahead_keeps_the_hold_at_the_boundaries_before_it() {
        let (e, st) = (engine(), &mut MemState::default());
        e.subscribe(st, "a", "tiny", T0, T0).unwrap();
        const DAY: Instant = 86_400_000_000_000;
        const MINUTE: Instant = 60_000_000_000;
        let charge = |st: &mut MemState, at| charged_in(&e, st, 1, at);
        let start = |n| cycle::cycle_number(T0, n).unwrap().start;
        assert_eq!(charge(st, T0 + DAY), ((None, 1, 0), Some(T0)));
        // One gateway's clock is two months ahead.
        assert_eq!(charge(st, start(2) + DAY), ((None, 1, 0), Some(start(2))));
        // At the first boundary, one a minute past it charges cycle 1; one five
        // minutes behind is held there too, not given cycle 0's last credit.
        assert_eq!(
            charge(st, start(1) + MINUTE),
            ((None, 1, 0), Some(start(1)))
        );
        assert_eq!(
            charge(st, start(1) - 5 * MINUTE),
            ((None, 1, 0), Some(start(1)))
        );
        let exhausted = Some(Reason::EmailCreditsExhausted);
        assert_eq!(
            charge(st, start(1) - 4 * MINUTE),
            ((exhausted, 0, 0), Some(start(1)))
        );
        // Further from the boundary, a clock counts in its own cycle, as ever.
        let history: Vec<u64> = (e.email_history(st, "a", 3, start(2) + DAY).unwrap())
            .iter()
            .map(|c| c.used)
            .collect();
        assert_eq!(history, [1, 2, 1]);
    }

    /// Issue 13.2: a message id is an idempotency key over what it charged. A
    /// retry (the same recipients in any order and spelling, or the same cost) is
    /// free; the id with other recipients or another cost is denied and charges
    /// nothing; an empty or blank id is an invalid request.
    #[test]
    fn a_message_id_reused_for_another_message_is_denied_not_free() {
        let (e, st) = (engine(), &mut MemState::default());
        e.subscribe(st, "a", "big", T0, T0).unwrap();
        let to = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let send = |st: &mut MemState, list: &[&str], id| {
            brief(
                &e.send_email(st, "a", &to(list), EmailKind::First, Some(id), T0)
                    .unwrap(),
            )
        };
        assert_eq!(send(st, &["x@y.io", "z@y.io"], "m1"), (None, 2, 0));
        assert_eq!(
            send(st, &["Z@y.io", " x@Y.io", "z@y.io"], "m1"),
            (None, 0, 0)
        );
        let reused = Some(Reason::IdempotencyKeyReused);
        assert_eq!(send(st, &["x@y.io"], "m1"), (reused, 0, 0));
        assert_eq!(send(st, &["x@y.io", "w@y.io"], "m1"), (reused, 0, 0));
        assert_eq!(send(st, &["x@y.io"], "m2"), (None, 1, 0));
        assert_eq!(send(st, &["X@y.io"], "m2"), (None, 0, 0));

        let charge = |st: &mut MemState, cost, id| {
            brief(&e.charge_email(st, "a", cost, Some(id), T0).unwrap())
        };
        assert_eq!(charge(st, 3, "p1"), (None, 3, 0));
        assert_eq!(charge(st, 3, "p1"), (None, 0, 0));
        assert_eq!(charge(st, 4, "p1"), (reused, 0, 0));
        // A send and a charge under one id are two messages.
        assert_eq!(charge(st, 2, "m1"), (reused, 0, 0));
        let d = e.usage(st, "a", T0).unwrap();
        assert_eq!(d.usage.map(|u| u.email_credits.used), Some(6));

        for blank in ["", "   ", "\t\n"] {
            let err = e
                .send_email(st, "a", &to(&["x@y.io"]), EmailKind::First, Some(blank), T0)
                .expect_err("a blank id is not a key");
            assert!(
                matches!(err, Error::InvalidRequest(_)),
                "{blank:?}: {err:?}"
            );
            let err = e
                .charge_email(st, "a", 1, Some(blank), T0)
                .expect_err("a blank id is not a key");
            assert!(
                matches!(err, Error::InvalidRequest(_)),
                "{blank:?}: {err:?}"
            );
        }
    }

    #[test]
    fn fingerprints_cover_the_set_of_recipients_and_the_cost() {
        let key = Secret::new([7; SECRET_LEN]);
        let fp = |list: &[&str], unit| {
            let set = list.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
            recipients_fingerprint(&key, "m1", &set, unit)
        };
        let ab = fp(&["a@x.io", "b@x.io"], 1);
        assert_eq!(ab, fp(&["b@x.io", "a@x.io"], 1));
        assert_ne!(ab, fp(&["a@x.io"], 1));
        assert_ne!(ab, fp(&["a@x.iob@x.io"], 1));
        // One message sent as a dearer kind is not the same message.
        assert_ne!(ab, fp(&["a@x.io", "b@x.io"], 2));
        assert_ne!(fp(&["a@x.io"], 2), fp(&["a@x.io"], 3));
        assert_ne!(
            cost_fingerprint(&key, "m1", 1),
            cost_fingerprint(&key, "m1", 2)
        );
        assert_ne!(cost_fingerprint(&key, "m1", 0), fp(&[], 1));
    }

    /// A fingerprint is keyed with the store's secret and bound to its message
    /// id: a pair of recipient lists that collide could only be found by asking
    /// the gateway, and would serve for one id, not every id.
    #[test]
    fn fingerprints_are_keyed_with_the_stores_secret_and_bound_to_their_id() {
        let set = ["a@x.io".to_string()];
        let (one, other) = (Secret::new([7; SECRET_LEN]), Secret::new([8; SECRET_LEN]));
        let fp = |key: &Secret, id: &str| recipients_fingerprint(key, id, &set, 1);
        assert_eq!(fp(&one, "m1"), fp(&one, "m1"));
        assert_ne!(fp(&one, "m1"), fp(&other, "m1"));
        assert_ne!(fp(&one, "m1"), fp(&one, "m2"));
        assert_ne!(
            cost_fingerprint(&one, "m1", 1),
            cost_fingerprint(&other, "m1", 1)
        );
        assert_ne!(
            cost_fingerprint(&one, "m1", 1),
            cost_fingerprint(&one, "m2", 1)
        );
        // The id's length is written before it, so that where the id ends and
        // the recipients begin is not ambiguous: without it, these two were one
        // stream of bytes.
        let after = |id: &str, to: &str| recipients_fingerprint(&one, id, &[to.to_string()], 1);
        assert_ne!(after("x", "ab@c.io"), after("xa", "b@c.io"));
        // Every byte of the secret counts.
        for i in 0..SECRET_LEN {
            let mut bytes = [7; SECRET_LEN];
            bytes[i] = 9;
            assert_ne!(fp(&one, "m1"), fp(&Secret::new(bytes), "m1"), "byte {i}");
        }
    }

    /// What one instance knows of an account goes stale when another changes the
    /// account; the guard of its next state call catches that, and the decision
    /// is made again on what the store holds now.
    #[test]
    fn a_plan_changed_elsewhere_takes_effect_on_the_next_decision() {
        let (e, st) = (engine(), &mut MemState::default());
        e.subscribe(st, "a", "tiny", T0, T0).unwrap();
        let one = vec!["b@y.io".to_string()];
        let send = |st: &mut MemState| {
            e.send_email(st, "a", &one, EmailKind::First, None, T0)
                .unwrap()
        };
        assert_eq!(brief(&send(st)), (None, 1, 0));
        assert_eq!(brief(&send(st)), (None, 1, 0));
        assert_eq!(
            brief(&send(st)),
            (Some(Reason::EmailCreditsExhausted), 0, 0)
        );
        // Another worker upgrades the account: this engine has not seen it.
        st.record_update("a", ACCOUNT_RECORD, &account_record(T0, 0, "big"))
            .unwrap();
        let d = send(st);
        assert_eq!(brief(&d), (None, 1, 0));
        let usage = d.usage.expect("usage");
        // "big" is the first plan of the summary, which lists them by name.
        assert!(matches!(usage.plan, PlanRef::Loaded(0)), "{:?}", usage.plan);
        assert_eq!(usage.email_credits.limit, Some(9));
        assert_eq!(usage.email_credits.used, 3);
        // Lead credits too: tiny's one is taken by the first contact, and big's
        // limit, set elsewhere, is seen by the next addition on this engine.
        st.record_update("a", ACCOUNT_RECORD, &account_record(T0, 0, "tiny"))
            .unwrap();
        assert_eq!(
            brief(&e.add_lead(st, "a", "q1", "x@y.io", T0).unwrap()),
            (None, 1, 0)
        );
        assert_eq!(
            brief(&e.add_lead(st, "a", "q1", "z@y.io", T0).unwrap()),
            (Some(Reason::LeadCreditsExhausted), 0, 0)
        );
        st.record_update("a", ACCOUNT_RECORD, &account_record(T0, 0, "big"))
            .unwrap();
        let d = e.add_lead(st, "a", "q1", "z@y.io", T0).unwrap();
        assert_eq!(brief(&d), (None, 1, 0));
        let usage = d.usage.expect("usage");
        assert_eq!(
            (usage.lead_credits.used, usage.lead_credits.limit),
            (2, Some(9))
        );
        assert_eq!(usage.email_credits.used, 3);
        // And moves it to a plan this policy does not have.
        st.record_update("a", ACCOUNT_RECORD, &account_record(T0, 0, "gone"))
            .unwrap();
        assert_eq!(brief(&send(st)), (Some(Reason::UnknownPlan), 0, 0));
        assert_eq!(
            brief(&e.check_email(st, "a", 1, T0).unwrap()),
            (Some(Reason::UnknownPlan), 0, 0)
        );
        // Stranded, not gone: its usage is reported under the plan it is on, with
        // no credit to take until it is moved.
        let d = e.usage(st, "a", T0).unwrap();
        assert_eq!(d.denied, Some(Reason::UnknownPlan));
        let usage = d.usage.expect("a stranded account's usage");
        assert!(
            matches!(&usage.plan, PlanRef::Missing(name) if name == "gone"),
            "{:?}",
            usage.plan
        );
        assert_eq!(
            (usage.lead_credits.used, usage.lead_credits.limit),
            (2, Some(0))
        );
        assert_eq!(
            (usage.email_credits.used, usage.email_credits.limit),
            (3, Some(0))
        );
        assert_eq!(e.email_history(st, "a", 1, T0).unwrap().len(), 1);
        // Moving it to a plan the policy has brings it back.
        let d = e.change_plan(st, "a", "big", T0).unwrap();
        assert_eq!(d.denied, None);
        assert_eq!(d.usage.map(|u| u.lead_credits.limit), Some(Some(9)));
    }

    #[test]
    fn a_malformed_account_record_is_reported_as_corrupt_state() {
        let (e, st) = (engine(), &mut MemState::default());
        st.record_insert("a", ACCOUNT_RECORD, "garbage").unwrap();
        let err = e.usage(st, "a", T0).expect_err("corrupt");
        assert!(
            matches!(err, Error::State(StateError::Corrupt(_))),
            "{err:?}"
        );
    }

    #[test]
    fn a_batch_of_leads_reports_each_contact() {
        let (e, st) = (engine(), &mut MemState::default());
        e.subscribe(st, "a", "big", T0, T0).unwrap();
        e.add_lead(st, "a", "old", "held@y.io", T0).unwrap();
        let emails: Vec<String> = ["new@y.io", "bad", "HELD@y.io", "New@Y.io", "x@y.io"]
            .map(String::from)
            .into();
        let batch = e.add_leads(st, "a", "c", &emails, T0).unwrap();
        let outcomes: Vec<LeadOutcome> = batch.results.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                LeadOutcome::Added,
                LeadOutcome::InvalidEmail,
                LeadOutcome::Joined,
                LeadOutcome::AlreadyInCampaign,
                LeadOutcome::Added
            ]
        );
        assert_eq!(batch.results[0].contact, batch.results[3].contact);
        assert_eq!(batch.results[1].contact, 0);
        assert_eq!(batch.usage.map(|u| u.lead_credits.used), Some(3));
        let tiny = e.add_leads(st, "nobody", "c", &emails, T0).unwrap();
        assert_eq!(
            (tiny.denied, tiny.results.len()),
            (Some(Reason::UnknownAccount), 0)
        );
    }

    fn alerts_of(alerts: &[Alert]) -> Vec<(Credit, u8, u64, u64)> {
        alerts
            .iter()
            .map(|a| (a.credit, a.threshold, a.used, a.limit))
            .collect()
    }

    const TEN: &str = "[plans.ten]\nlead_credits = 10\nemail_credits = 10\n[plans.hundred]\nlead_credits = 100\nemail_credits = 100\n[plans.eight]\nlead_credits = 8\nemail_credits = 8\n";

    #[test]
    fn an_email_threshold_fires_once_on_the_request_that_crosses_it() {
        let mut e = Engine::default();
        e.load_policy(TEN).expect("valid");
        let st = &mut MemState::default();
        e.subscribe(st, "a", "ten", T0, T0).unwrap();
        let mut fired = Vec::new();
        for i in 0..12 {
            let to = vec![format!("r{i}@y.io")];
            let d = e
                .send_email(st, "a", &to, EmailKind::First, Some("same"), T0)
                .unwrap();
            fired.extend(alerts_of(&d.alerts));
        }
        // One message id: charged once, nothing crossed after the first.
        assert!(fired.is_empty(), "{fired:?}");
        for i in 0..12 {
            let to = vec![format!("r{i}@y.io")];
            let d = e
                .send_email(st, "a", &to, EmailKind::First, None, T0)
                .unwrap();
            fired.extend(alerts_of(&d.alerts));
        }
        assert_eq!(
            fired,
            [(Credit::Email, 80, 8, 10), (Credit::Email, 100, 10, 10)]
        );
        // A charge of several credits may cross both at once.
        let st = &mut MemState::default();
        e.subscribe(st, "b", "ten", T0, T0).unwrap();
        let d = e.charge_email(st, "b", 10, None, T0).unwrap();
        assert_eq!(
            alerts_of(&d.alerts),
            [(Credit::Email, 80, 10, 10), (Credit::Email, 100, 10, 10)]
        );
    }

    #[test]
    fn a_lead_threshold_fires_again_only_after_usage_fell_back_under_it() {
        let mut e = Engine::default();
        e.load_policy(TEN).expect("valid");
        let st = &mut MemState::default();
        e.subscribe(st, "a", "ten", T0, T0).unwrap();
        let batch: Vec<String> = (0..7).map(|i| format!("l{i}@y.io")).collect();
        let b = e.add_leads(st, "a", "c", &batch, T0).unwrap();
        assert!(b.alerts.is_empty());
        let d = e.add_lead(st, "a", "c", "l7@y.io", T0).unwrap();
        assert_eq!(alerts_of(&d.alerts), [(Credit::Lead, 80, 8, 10)]);
        // Joining another campaign takes no credit and crosses nothing.
        let d = e.add_lead(st, "a", "d", "l7@y.io", T0).unwrap();
        assert!(d.alerts.is_empty());
        e.delete_lead(st, "a", "c", "l0@y.io", T0).unwrap();
        let d = e.add_lead(st, "a", "c", "l0@y.io", T0).unwrap();
        assert_eq!(alerts_of(&d.alerts), [(Credit::Lead, 80, 8, 10)]);
        let b = e
            .add_leads(st, "a", "c", &["x@y.io".into(), "z@y.io".into()], T0)
            .unwrap();
        assert_eq!(alerts_of(&b.alerts), [(Credit::Lead, 100, 10, 10)]);
    }

    #[test]
    fn a_plan_change_fires_what_the_new_limits_put_usage_over() {
        let mut e = Engine::default();
        e.load_policy(TEN).expect("valid");
        let st = &mut MemState::default();
        e.subscribe(st, "a", "ten", T0, T0).unwrap();
        e.charge_email(st, "a", 7, None, T0).unwrap();
        // 7 of 8 is over 80%: a downgrade fires it; back to 10, nothing.
        let d = e.change_plan(st, "a", "eight", T0).unwrap();
        assert_eq!(alerts_of(&d.alerts), [(Credit::Email, 80, 7, 8)]);
        let d = e.change_plan(st, "a", "hundred", T0).unwrap();
        assert!(d.alerts.is_empty());
        // The upgrade re-armed it: 80% of 100 fires when crossed.
        let d = e.charge_email(st, "a", 73, None, T0).unwrap();
        assert_eq!(alerts_of(&d.alerts), [(Credit::Email, 80, 80, 100)]);
    }

    #[test]
    fn thresholds_come_from_the_policy() {
        let mut e = Engine::default();
        e.load_policy("[plans.p]\nlead_credits = 4\nemail_credits = 4\n[alerts]\nemail_credits = [50]\nlead_credits = []\n")
            .expect("valid");
        let st = &mut MemState::default();
        e.subscribe(st, "a", "p", T0, T0).unwrap();
        let d = e.charge_email(st, "a", 4, None, T0).unwrap();
        assert_eq!(alerts_of(&d.alerts), [(Credit::Email, 50, 4, 4)]);
        let b = e
            .add_leads(
                st,
                "a",
                "c",
                &(0..4).map(|i| format!("{i}@y.io")).collect::<Vec<_>>(),
                T0,
            )
            .unwrap();
        assert!(b.alerts.is_empty());
        for (bad, message) in [
            ("[alerts]\nemail_credits = [100, 80]", "ascending"),
            ("[alerts]\nemail_credits = [0]", "from 1 to 100"),
            ("[alerts]\nemail_credits = [101]", "at most 100"),
            ("[alerts]\nemail_credits = 80", "list of percentages"),
            ("[alerts]\nsms = [80]", "unknown key"),
        ] {
            let text = format!("[plans.p]\nlead_credits = 4\nemail_credits = 4\n{bad}\n");
            let errors = e.load_policy(&text).expect_err(bad);
            assert!(
                errors
                    .iter()
                    .any(|d| d.message.contains(message) && d.line == 5),
                "{bad}: {errors:?}"
            );
        }
    }

    #[test]
    fn email_history_reports_each_cycle_oldest_first() {
        let mut e = Engine::default();
        e.load_policy(TEN).expect("valid");
        let st = &mut MemState::default();
        e.subscribe(st, "a", "hundred", T0, T0).unwrap();
        let month = 31 * 24 * 3_600 * 1_000_000_000_i64;
        for m in 0..3 {
            e.charge_email(st, "a", m + 1, None, T0 + month * i64::try_from(m).unwrap())
                .unwrap();
        }
        let now = T0 + 2 * month;
        let history = e.email_history(st, "a", 12, now).unwrap();
        let used: Vec<u64> = history.iter().map(|c| c.used).collect();
        assert_eq!(used, [1, 2, 3], "only cycles since the subscription");
        assert_eq!(history[0].start, T0);
        assert!(history.windows(2).all(|w| w[0].end == w[1].start));
        let last_two = e.email_history(st, "a", 2, now).unwrap();
        assert_eq!(last_two.iter().map(|c| c.used).collect::<Vec<_>>(), [2, 3]);
        assert!(e.email_history(st, "ghost", 12, now).unwrap().is_empty());
    }

    /// Plans for the upgrade rule: `small` is where accounts start; `mid_a` and
    /// `mid_b` tie on email credits and differ in lead credits; `wide` has the
    /// most leads; `open` is unlimited in both.
    const UPGRADES: &str = "[plans.small]\nlead_credits = 1\nemail_credits = 2\n\
        [plans.mid_b]\nlead_credits = 5\nemail_credits = 10\n\
        [plans.mid_a]\nlead_credits = 7\nemail_credits = 10\n\
        [plans.mid_c]\nlead_credits = 5\nemail_credits = 10\nmode = \"enforce\"\n\
        [plans.wide]\nlead_credits = 100\nemail_credits = 3\n\
        [plans.open]\nlead_credits = \"unlimited\"\nemail_credits = \"unlimited\"\n";

    fn plan_at(e: &Engine, index: Option<u32>) -> Option<&str> {
        let index = usize::try_from(index?).ok()?;
        e.policy()?.plans.keys().nth(index).map(String::as_str)
    }

    #[test]
    fn a_credit_denial_names_the_smallest_plan_that_would_allow_it() {
        let mut e = Engine::default();
        e.load_policy(UPGRADES).expect("valid");
        let st = &mut MemState::default();
        e.subscribe(st, "a", "small", T0, T0).unwrap();
        // 2 used of 2; a message of 2 needs 4: mid_b and mid_c (10, 5 leads)
        // tie with each other before mid_a (10, 7 leads); by name, mid_b.
        e.charge_email(st, "a", 2, None, T0).unwrap();
        let d = e.charge_email(st, "a", 2, None, T0).unwrap();
        assert_eq!(d.denied, Some(Reason::EmailCreditsExhausted));
        assert_eq!(plan_at(&e, d.upgrade_to), Some("mid_b"));
        // The check at RCPT names the same plan; wide (3 emails) would allow one.
        let check = e.check_email(st, "a", 1, T0).unwrap();
        assert_eq!(plan_at(&e, check.upgrade_to), Some("wide"));
        // Past every counted limit: only the unlimited plan.
        let d = e.charge_email(st, "a", 50, None, T0).unwrap();
        assert_eq!(plan_at(&e, d.upgrade_to), Some("open"));
        // Leads: 1 of 1 held; a second needs 2: mid_b (5) before mid_a (7).
        e.add_lead(st, "a", "c", "one@x.io", T0).unwrap();
        let d = e.add_lead(st, "a", "c", "two@x.io", T0).unwrap();
        assert_eq!(d.denied, Some(Reason::LeadCreditsExhausted));
        assert_eq!(plan_at(&e, d.upgrade_to), Some("mid_b"));
        // Other denials name none.
        let d = e.add_lead(st, "a", "c", "not an address", T0).unwrap();
        assert_eq!((d.denied, d.upgrade_to), (Some(Reason::InvalidEmail), None));
        // A batch names the plan that takes every refused contact: 1 held + 6.
        let emails: Vec<String> = (0..6).map(|i| format!("b{i}@x.io")).collect();
        let batch = e.add_leads(st, "a", "c", &emails, T0).unwrap();
        assert_eq!(plan_at(&e, batch.upgrade_to), Some("mid_a"));
    }

    #[test]
    fn no_plan_is_named_when_none_would_allow_it() {
        let mut e = Engine::default();
        e.load_policy("[plans.a]\nlead_credits = 1\nemail_credits = 1\n[plans.b]\nlead_credits = 2\nemail_credits = 2\n")
            .expect("valid");
        let st = &mut MemState::default();
        e.subscribe(st, "x", "a", T0, T0).unwrap();
        let d = e.charge_email(st, "x", 3, None, T0).unwrap();
        assert_eq!(
            (d.denied, d.upgrade_to),
            (Some(Reason::EmailCreditsExhausted), None)
        );
        // The account's own plan is never the answer, even when it would fit.
        let d = e.charge_email(st, "x", 2, None, T0).unwrap();
        assert_eq!(plan_at(&e, d.upgrade_to), Some("b"));
    }

    #[test]
    fn a_plan_in_shadow_takes_credits_past_its_limits_and_says_so() {
        let mut e = Engine::default();
        let policy = "[plans.trial]\nlead_credits = 1\nemail_credits = 2\nmode = \"shadow\"\n\
            [plans.paid]\nlead_credits = 1\nemail_credits = 2\n[plans.big]\nlead_credits = 9\nemail_credits = 9\n";
        let summary = e.load_policy(policy).expect("valid");
        let modes: Vec<Mode> = summary.plans.iter().map(|p| p.mode).collect();
        assert_eq!(modes, [Mode::Enforce, Mode::Enforce, Mode::Shadow]);
        let st = &mut MemState::default();
        e.subscribe(st, "s", "trial", T0, T0).unwrap();
        e.subscribe(st, "p", "paid", T0, T0).unwrap();
        for account in ["s", "p"] {
            let d = e.charge_email(st, account, 2, Some("m1"), T0).unwrap();
            assert_eq!(
                (d.denied, d.shadow.is_some()),
                (None, false),
                "within the limit"
            );
        }
        // Past the limit: the shadow plan is charged and told what enforcement says.
        let d = e.charge_email(st, "s", 3, Some("m2"), T0).unwrap();
        assert_eq!((d.denied, d.charged), (None, 3));
        let shadow = d.shadow.expect("a shadow refusal");
        assert_eq!(shadow.reason, Reason::EmailCreditsExhausted);
        assert_eq!(plan_at(&e, shadow.upgrade_to), Some("big"));
        assert_eq!(d.usage.as_ref().map(|u| u.email_credits.used), Some(5));
        // A retry of that message is charged once.
        let again = e.charge_email(st, "s", 3, Some("m2"), T0).unwrap();
        assert_eq!(
            (again.denied, again.charged, again.shadow.is_some()),
            (None, 0, false)
        );
        assert_eq!(again.usage.map(|u| u.email_credits.used), Some(5));
        // The enforced plan beside it is refused as always.
        let d = e.charge_email(st, "p", 3, Some("m2"), T0).unwrap();
        assert_eq!(
            (d.denied, d.charged, d.shadow.is_some()),
            (Some(Reason::EmailCreditsExhausted), 0, false)
        );
        // Leads past the limit, one and in a batch; the check at RCPT too.
        e.add_lead(st, "s", "c", "one@x.io", T0).unwrap();
        let d = e.add_lead(st, "s", "c", "two@x.io", T0).unwrap();
        assert_eq!((d.denied, d.charged), (None, 1));
        assert_eq!(
            d.shadow.map(|s| s.reason),
            Some(Reason::LeadCreditsExhausted)
        );
        let batch = e
            .add_leads(st, "s", "c", &["three@x.io".to_string()], T0)
            .unwrap();
        assert_eq!(batch.results[0].outcome, LeadOutcome::Added);
        assert_eq!(
            batch.shadow.map(|s| s.reason),
            Some(Reason::LeadCreditsExhausted)
        );
        assert_eq!(batch.usage.map(|u| u.lead_credits.used), Some(3));
        let check = e.check_email(st, "s", 1, T0).unwrap();
        assert_eq!((check.denied, check.charged), (None, 0));
        assert!(check.shadow.is_some());
    }

    #[test]
    fn the_gateway_mode_applies_to_plans_that_set_none_and_changes_only_with_a_valid_policy() {
        let mut e = Engine::default();
        let policy = "[plans.free]\nlead_credits = 1\nemail_credits = 1\n\
            [plans.strict]\nlead_credits = 1\nemail_credits = 1\nmode = \"enforce\"\n";
        e.load_policy_in(policy, Mode::Shadow).expect("valid");
        let st = &mut MemState::default();
        e.subscribe(st, "f", "free", T0, T0).unwrap();
        e.subscribe(st, "s", "strict", T0, T0).unwrap();
        let d = e.charge_email(st, "f", 2, None, T0).unwrap();
        assert_eq!(
            (d.denied, d.charged),
            (None, 2),
            "shadow under a gateway in shadow"
        );
        // A plan that says enforce is enforced under a gateway in shadow.
        let d = e.charge_email(st, "s", 2, None, T0).unwrap();
        assert_eq!(d.denied, Some(Reason::EmailCreditsExhausted));
        // A refused reload keeps the mode with the policy.
        assert!(
            e.load_policy_in("[plans.x]\nlead_credits = -1\n", Mode::Enforce)
                .is_err()
        );
        let d = e.charge_email(st, "f", 1, None, T0).unwrap();
        assert_eq!(d.denied, None);
        // Back to enforce: the account over its limit is refused at once.
        e.load_policy_in(policy, Mode::Enforce).expect("valid");
        let d = e.charge_email(st, "f", 1, None, T0).unwrap();
        assert_eq!(
            (d.denied, d.shadow.is_some()),
            (Some(Reason::EmailCreditsExhausted), false)
        );
        assert_eq!(
            d.usage.map(|u| u.email_credits.used),
            Some(3),
            "over its limit, kept"
        );
    }
}
