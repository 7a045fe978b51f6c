//! The one place the host generates bindings from `wit/`. Every other module takes
//! the contract's types from here, so the WIT stays the single source of truth.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy-engine",
    // Tests and callers compare decisions and outcomes whole.
    additional_derives: [PartialEq, Eq],
});

pub use creditgate::policy::state::{
    CounterAdded, GroupCleared, Guard, GuardedAdd, GuardedMember, MemberAddOutcome, MemberAdded,
    MemberRemoveOutcome, MemberRemoved, MembersAdded, Once, StateError, Tally,
};
pub use exports::creditgate::policy::policy::AddressProblem;
pub use exports::creditgate::policy::policy::{
    AccountUsage, Alert, Credit, CycleUsage, Decision, Diagnostic, EmailKind, EmailUsage,
    Error as GuestError, LeadBatch, LeadOutcome, LeadResult, LeadUsage, PlanSummary, PolicySummary,
    Reason,
};
