//! What every front end tells its clients, written once: the stable codes of
//! denial reasons, a decision as JSON (replay's output line, the HTTP API's
//! and the CLI's answers), an account's credits as JSON, and what each address
//! of a lead batch came to.
//!
//! Replay, the CLI, the HTTP API, the Postfix listener, the dashboard and the
//! CSV import all speak through these, so that one decision reads the same
//! wherever it is asked.

use std::collections::HashSet;

use serde::Serialize;

use crate::bindings::{AccountUsage, Decision, LeadOutcome, LeadResult, Reason, Shadow};
use crate::time::format_instant;

/// The stable code of a denial reason.
pub fn reason_code(reason: Reason) -> &'static str {
    match reason {
        Reason::AlreadySubscribed => "already_subscribed",
        Reason::UnknownAccount => "unknown_account",
        Reason::UnknownPlan => "unknown_plan",
        Reason::InvalidEmail => "invalid_email",
        Reason::NoRecipients => "no_recipients",
        Reason::LeadCreditsExhausted => "lead_credits_exhausted",
        Reason::EmailCreditsExhausted => "email_credits_exhausted",
        Reason::IdempotencyKeyReused => "idempotency_key_reused",
    }
}

/// A decision as one JSON output line. Field order is part of the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    /// On every denial: the plan that would have allowed it (for a lack of
    /// credits), else null. Absent when allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_to: Option<Option<String>>,
    /// When a plan in shadow mode allowed what enforcement would have refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowJson>,
    pub charged: u64,
    pub freed: u64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageJson>,
}

/// `lead_credits` and `email_credits`, as replay, the CLI and the HTTP API show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageJson {
    pub lead_credits: CreditsJson,
    pub email_credits: CreditsJson,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreditsJson {
    pub used: u64,
    pub limit: LimitJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

/// A count, or the string `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum LimitJson {
    Count(u64),
    Unlimited(&'static str),
}

impl From<Option<u64>> for LimitJson {
    fn from(limit: Option<u64>) -> Self {
        limit.map_or(LimitJson::Unlimited("unlimited"), LimitJson::Count)
    }
}

impl From<&AccountUsage> for UsageJson {
    fn from(u: &AccountUsage) -> Self {
        UsageJson {
            lead_credits: CreditsJson {
                used: u.lead_credits.used,
                limit: u.lead_credits.limit.into(),
                resets_at: None,
            },
            email_credits: CreditsJson {
                used: u.email_credits.used,
                limit: u.email_credits.limit.into(),
                resets_at: Some(format_instant(u.email_credits.resets_at)),
            },
        }
    }
}

/// What enforcement would have answered a request let through in shadow:
/// `{"decision": "deny", "reason": R, "upgrade_to": P}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowJson {
    pub decision: &'static str,
    pub reason: &'static str,
    pub upgrade_to: Option<String>,
}

impl From<&Shadow> for ShadowJson {
    fn from(s: &Shadow) -> Self {
        ShadowJson {
            decision: "deny",
            reason: reason_code(s.reason),
            upgrade_to: s.upgrade_to.clone(),
        }
    }
}

impl From<&Decision> for Outcome {
    fn from(d: &Decision) -> Self {
        Outcome {
            decision: if d.denied.is_some() { "deny" } else { "allow" },
            reason: d.denied.map(reason_code),
            upgrade_to: d.denied.map(|_| d.upgrade_to.clone()),
            shadow: d.shadow.as_ref().map(ShadowJson::from),
            charged: d.charged,
            freed: d.freed,
            usage: d.usage.as_ref().map(UsageJson::from),
        }
    }
}

/// What one address of a lead batch came to, as the HTTP API's answer and a CSV
/// import's report count it: the component's outcome, with repeats of a contact
/// named earlier in the same request (or file) told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadClass {
    /// A new contact, charged one lead credit.
    Uploaded,
    /// A contact the campaign already held.
    AlreadyInCampaign,
    /// A contact another campaign of the account held: now in this one too, no
    /// credit.
    InOtherCampaign,
    /// A contact an earlier address of the request (or file) named, in any
    /// spelling the policy deems the same contact, and not charged now.
    Repeat,
    /// Not a usable address.
    InvalidEmail,
    /// A new contact, not added because the account's lead credits ran out.
    CreditsExhausted,
}

/// Classifies the addresses of one request (or file) in order, remembering the
/// contacts named so far: the one rule for lead batches, whichever front end
/// sent them.
#[derive(Debug, Default)]
pub struct LeadClassifier {
    /// Fingerprints of the contacts named so far.
    seen: HashSet<u64>,
}

impl LeadClassifier {
    /// What `result`, the next address's, came to.
    pub fn classify(&mut self, result: &LeadResult) -> LeadClass {
        if result.outcome == LeadOutcome::InvalidEmail {
            return LeadClass::InvalidEmail;
        }
        let first = self.seen.insert(result.contact);
        match result.outcome {
            // A credit was charged, whatever came before: a repeat of a contact
            // refused for want of credits can be added if credits were freed
            // meanwhile.
            LeadOutcome::Added => LeadClass::Uploaded,
            _ if !first => LeadClass::Repeat,
            LeadOutcome::AlreadyInCampaign => LeadClass::AlreadyInCampaign,
            LeadOutcome::Joined => LeadClass::InOtherCampaign,
            LeadOutcome::LeadCreditsExhausted => LeadClass::CreditsExhausted,
            LeadOutcome::InvalidEmail => LeadClass::InvalidEmail,
        }
    }

    /// Whether an address classified so far named `contact`.
    pub fn named(&self, contact: u64) -> bool {
        self.seen.contains(&contact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_is_classified_once_and_its_repeats_as_such() {
        let result = |outcome, contact| LeadResult { outcome, contact };
        let mut classifier = LeadClassifier::default();
        let classes: Vec<LeadClass> = [
            result(LeadOutcome::AlreadyInCampaign, 1),
            result(LeadOutcome::AlreadyInCampaign, 1),
            result(LeadOutcome::InvalidEmail, 0),
            result(LeadOutcome::InvalidEmail, 0),
            result(LeadOutcome::LeadCreditsExhausted, 2),
            result(LeadOutcome::LeadCreditsExhausted, 2),
            // Freed meanwhile: a repeat that is charged counts as uploaded.
            result(LeadOutcome::Added, 2),
            result(LeadOutcome::Joined, 3),
            result(LeadOutcome::Joined, 3),
        ]
        .iter()
        .map(|r| classifier.classify(r))
        .collect();
        assert_eq!(
            classes,
            [
                LeadClass::AlreadyInCampaign,
                LeadClass::Repeat,
                LeadClass::InvalidEmail,
                LeadClass::InvalidEmail,
                LeadClass::CreditsExhausted,
                LeadClass::Repeat,
                LeadClass::Uploaded,
                LeadClass::InOtherCampaign,
                LeadClass::Repeat,
            ]
        );
        assert!(classifier.named(3) && !classifier.named(0));
    }
}
