//! The terms a gateway decides under, recorded in its store: the policy's text
//! and how names are taken. `serve` records them when it starts and at every
//! reload; a command that decides on the same store from outside the gateway
//! (`leads import`, `account change-plan`, `replay --store`, ...) decides under
//! them, or refuses. Without this, such a command took the policy file of the
//! directory it ran in (or the built-in one) and the names rule of its own
//! environment: an import could fill an account past the limits the gateway
//! enforces, a plan change could move an account onto a plan the gateway does
//! not have, and a case-insensitive command could change `acme` for a
//! case-sensitive gateway's `Acme`.
//!
//! The record lives among the store's host records ([`Store::host_record`]),
//! apart from the component's scopes. One store, one set of terms: gateways
//! sharing a Redis store must run one policy, and each says so in its log when
//! it finds another's terms there.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::names::NameRules;
use crate::store::{Store, StoreError};

/// The host record's key.
pub const KEY: &str = "policy-in-force";

/// What a gateway decides under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InForce {
    /// SHA-256 of [`InForce::policy`], in hex: what tells two policies apart.
    pub sha256: String,
    /// Where the gateway read the policy, for messages.
    pub source: String,
    /// The policy's text, whole.
    pub policy: String,
    /// The gateway's [`NameRules::case_sensitive`].
    pub case_sensitive_names: bool,
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
    /// Which gateway recorded it: host name and process id.
    pub recorded_by: String,
}

/// Why the terms in force could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InForceError {
    #[error("cannot read the policy in force from the store: {0}")]
    Store(#[from] StoreError),
    #[error(
        "the store's record of the policy in force (host record {KEY:?}) is not valid: \
         {0}; the next `serve` to start on this store writes it again"
    )]
    Malformed(serde_json::Error),
}

impl InForce {
    /// The terms of `policy`, read from `source`, with `names`, recorded now by
    /// this process.
    pub fn new(source: &Path, policy: &str, names: NameRules) -> Self {
        InForce {
            sha256: digest(policy),
            source: source.display().to_string(),
            policy: policy.to_owned(),
            case_sensitive_names: names.case_sensitive,
            recorded_at: crate::time::format_instant(crate::time::now()),
            recorded_by: format!("{} pid {}", host_name(), std::process::id()),
        }
    }

    /// The terms recorded in `store`, if any gateway has recorded them.
    pub fn read(store: &dyn Store) -> Result<Option<Self>, InForceError> {
        match store.host_record(KEY)? {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(InForceError::Malformed),
        }
    }

    /// Records these terms in `store`, durably, in place of any before.
    pub fn record(&self, store: &dyn Store) -> Result<(), StoreError> {
        // A struct of strings and a bool always serializes.
        let json = serde_json::to_string(self).unwrap_or_default();
        store.set_host_record(KEY, &json)
    }

    /// Whether `policy` is the text in force.
    pub fn is(&self, policy: &str) -> bool {
        self.sha256 == digest(policy)
    }

    /// The first 12 hex digits of the digest, enough to tell policies apart in
    /// a message.
    pub fn short(&self) -> &str {
        self.sha256.get(..12).unwrap_or(&self.sha256)
    }

    /// The names rule in force.
    pub fn names(&self) -> NameRules {
        NameRules {
            case_sensitive: self.case_sensitive_names,
        }
    }

    /// One line naming these terms for a message: source, digest, who, when.
    pub fn describe(&self) -> String {
        format!(
            "{} (sha256 {}), recorded by {} at {}",
            self.source,
            self.short(),
            self.recorded_by,
            self.recorded_at
        )
    }
}

/// SHA-256 of `policy`, in hex.
pub fn digest(policy: &str) -> String {
    Sha256::digest(policy.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This machine's name, for [`InForce::recorded_by`]; `unknown` where the
/// kernel does not say.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn terms_round_trip_through_a_store_and_tell_policies_apart() {
        let store = MemoryStore::new();
        assert!(InForce::read(&store).expect("reads").is_none());
        let names = NameRules {
            case_sensitive: true,
        };
        let terms = InForce::new(Path::new("p.toml"), "[plans.a]\n", names);
        terms.record(&store).expect("records");
        let read = InForce::read(&store).expect("reads").expect("recorded");
        assert_eq!(read, terms);
        assert!(read.is("[plans.a]\n"));
        assert!(!read.is("[plans.b]\n"));
        assert!(read.names().case_sensitive);
        assert_eq!(read.short().len(), 12);
    }

    #[test]
    fn a_malformed_record_is_an_error_that_names_it() {
        let store = MemoryStore::new();
        store.set_host_record(KEY, "{not json").expect("sets");
        let error = InForce::read(&store).expect_err("malformed");
        assert!(error.to_string().contains("policy-in-force"), "{error}");
    }

    #[test]
    fn host_records_are_not_scopes() {
        let store = MemoryStore::new();
        store.set_host_record(KEY, "{}").expect("sets");
        assert!(store.scopes().expect("lists").is_empty());
    }
}
