//! The one place the host generates bindings from `wit/`. Every other module takes
//! the contract's types from here, so the WIT stays the single source of truth.
//!
//! The contract (`creditgate:policy@0.2.0`) is narrowed for the hot path: accounts
//! travel as handles, plans as indexes into the policy summary, and the `state`
//! imports take interned names. The rest of the host keeps speaking in names:
//! [`Decision`], [`AccountUsage`] and [`LeadBatch`] here carry the plan's name, as
//! in 0.1.0, and `runtime` converts what the component answers into them. So do
//! the store's own types ([`Once`], [`Guard`], [`CounterAdded`], [`MemberAdded`]),
//! which the contract no longer names but the [`Store`](crate::store::Store)
//! trait keeps.

/// The generated bindings, as the contract spells them.
pub mod wit {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy-engine",
        // Tests and callers compare decisions and outcomes whole.
        additional_derives: [PartialEq, Eq],
    });
}

pub use wit::creditgate::policy::state::{
    GroupCleared, GuardedAdd, GuardedMember, MemberAddOutcome, MemberRemoveOutcome, MemberRemoved,
    MembersAdded, StateError, Tally,
};
pub use wit::exports::creditgate::policy::policy::AddressProblem;
pub use wit::exports::creditgate::policy::policy::{
    Alert, Credit, CycleUsage, Diagnostic, EmailKind, EmailUsage, Error as GuestError, LeadOutcome,
    LeadResult, LeadUsage, Mode, PlanSummary, PolicySummary, Reason,
};

/// An account's plan and usage at one instant (WIT `account-usage`, with the
/// plan by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountUsage {
    /// The plan's name: one of the loaded policy's, or the one a stranded
    /// account's state holds.
    pub plan: String,
    pub anchor: i64,
    pub lead_credits: LeadUsage,
    pub email_credits: EmailUsage,
}

/// The answer to one request (WIT `decision`, with the plan by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub denied: Option<Reason>,
    pub charged: u64,
    pub freed: u64,
    pub usage: Option<AccountUsage>,
    pub alerts: Vec<Alert>,
    /// For a credit denial, the plan that would have allowed the request.
    pub upgrade_to: Option<String>,
    /// For a request a plan in shadow mode allowed, what enforcement would
    /// have answered.
    pub shadow: Option<Shadow>,
}

/// What enforcement would have answered a request a plan in shadow mode
/// allowed (WIT `shadow-refusal`, with the plan by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    pub reason: Reason,
    pub upgrade_to: Option<String>,
}

/// What `add-leads` did (WIT `lead-batch`, with the plan by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadBatch {
    pub denied: Option<Reason>,
    pub results: Vec<LeadResult>,
    pub usage: Option<AccountUsage>,
    pub alerts: Vec<Alert>,
    /// When contacts were refused for lead credits, the plan that would have
    /// taken them all.
    pub upgrade_to: Option<String>,
    /// When a plan in shadow mode took contacts past its limit.
    pub shadow: Option<Shadow>,
}

/// A once key as the store keeps it: the whole key, its fingerprint and expiry
/// (WIT `once` joins an interned prefix and the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Once {
    pub key: String,
    pub fingerprint: u64,
    pub expires_at: i64,
}

impl Once {
    /// The store's key for the contract's `once`: its interned `prefix`
    /// followed by its `key`, whole, as 0.1.0 wrote keys.
    pub fn joined(prefix: &str, key: &str, fingerprint: u64, expires_at: i64) -> Self {
        let mut whole = String::with_capacity(prefix.len() + key.len());
        whole.push_str(prefix);
        whole.push_str(key);
        Self {
            key: whole,
            fingerprint,
            expires_at,
        }
    }
}

/// A guard as the store compares it: the record's key and the value it must
/// hold (WIT `guard` names both by interned handles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub key: String,
    pub value: String,
}

/// What an unguarded counter addition did (the store's `counter_add`, which the
/// host's own alert log uses; the contract offers only the guarded one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterAdded {
    /// The amount was added; carries the counter's new value.
    Applied(u64),
    /// The `once` key had been seen with the same fingerprint: nothing was added.
    Repeated(u64),
    /// Adding would have passed the limit: nothing was added.
    Refused(u64),
    /// The `once` key had been seen with another fingerprint: nothing was added.
    Conflict(u64),
}

/// What an unguarded member addition did, and the scope's distinct members after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberAdded {
    pub outcome: MemberAddOutcome,
    pub members: u64,
}
