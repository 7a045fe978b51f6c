//! creditgate's policy engine: the rules of lead and email credits.
//!
//! The same code runs in two places. Compiled for `wasm32-wasip2` it is the policy
//! component a gateway host loads (see [`component`]); compiled natively it is unit
//! tested and benchmarked against the component.
//!
//! - [`policy`] parses and validates a policy's TOML into plans;
//! - [`address`] says what one contact is (normalisation and validity);
//! - [`cycle`] computes billing cycles from the subscription anchor;
//! - [`engine`] decides each request against a [`engine::State`], the host's
//!   atomic primitives.

pub mod address;
pub mod cycle;
pub mod engine;
pub mod inspect;
mod known;
#[cfg(test)]
mod mem_state;
pub mod policy;
mod projection;

#[cfg(target_arch = "wasm32")]
mod component;

/// Types and imports generated from `wit/`, the single source of the contract.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "policy-engine",
        // The component module names its exporting type; natively nothing exports.
        pub_export_macro: true,
    });

    pub use creditgate::policy::catalog::{GroupSize, Membership};
    pub use creditgate::policy::state::{
        GroupCleared, Guard, GuardedAdd, GuardedMember, MemberAddOutcome, MemberRemoveOutcome,
        MemberRemoved, MembersAdded, Once, StateError, Tally,
    };
    pub use creditgate::policy::types::Instant;
    /// The `inspect` export's types (see [`crate::inspect`]).
    pub mod inspect {
        pub use super::exports::creditgate::policy::inspect::*;
    }
    pub use exports::creditgate::policy::policy::{
        AccountUsage, Alert, Allowance, Credit, CycleUsage, Decision, Diagnostic, EmailKind,
        EmailUsage, Error, LeadBatch, LeadOutcome, LeadResult, LeadUsage, Mode, PlanRef,
        PlanSummary, PolicySummary, Reason, ShadowRefusal,
    };
}
