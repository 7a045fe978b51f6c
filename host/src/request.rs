//! What a front end (replay, the CLI, a protocol adapter) asks the policy: one
//! request per WIT function a front end calls, independent of how it arrived.
//! The one type a request travels in from the front end to the worker that
//! answers it ([`crate::gateway`]'s lanes carry it as it is), with its [`Op`]
//! for metrics and lanes, and the [`Answer`] it gets.

use crate::bindings::{CycleUsage, Decision, EmailKind, LeadBatch};

/// A request about one account. Most are answered with one [`Decision`]; a
/// batch of leads and a history are answered otherwise (see [`Answer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Subscribe {
        account: String,
        plan: String,
        /// The billing anchor, at or before the decision's instant; None: that instant.
        anchor: Option<i64>,
    },
    ChangePlan {
        account: String,
        plan: String,
    },
    AddLead {
        account: String,
        campaign: String,
        email: String,
    },
    DeleteLead {
        account: String,
        campaign: String,
        email: String,
    },
    DeleteCampaignLeads {
        account: String,
        campaign: String,
    },
    SendEmail {
        account: String,
        to: Vec<String>,
        kind: EmailKind,
        message_id: Option<String>,
    },
    ChargeEmail {
        account: String,
        cost: u64,
        message_id: Option<String>,
    },
    CheckEmail {
        account: String,
        cost: u64,
    },
    Usage {
        account: String,
    },
    /// Many contacts added to a campaign in one guest call and one store
    /// transaction: answered with the batch's results ([`Answer::Leads`]).
    AddLeads {
        account: String,
        campaign: String,
        emails: Vec<String>,
    },
    /// Email credits used in each of the last `cycles` billing cycles: answered
    /// with them ([`Answer::History`]). Reads only.
    EmailHistory {
        account: String,
        cycles: u32,
    },
}

/// What a worker answers a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Every request but the two below.
    Decision(Decision),
    /// [`Request::AddLeads`].
    Leads(LeadBatch),
    /// [`Request::EmailHistory`].
    History(Vec<CycleUsage>),
}

/// The kind of a request, for metrics and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Subscribe,
    ChangePlan,
    AddLead,
    DeleteLead,
    DeleteCampaignLeads,
    SendEmail,
    ChargeEmail,
    CheckEmail,
    Usage,
    /// A batch of lead additions ([`Request::AddLeads`]).
    AddLeads,
    /// Email credits used per billing cycle ([`Request::EmailHistory`]).
    EmailHistory,
}

impl Op {
    pub const ALL: [Op; 11] = [
        Op::Subscribe,
        Op::ChangePlan,
        Op::AddLead,
        Op::DeleteLead,
        Op::DeleteCampaignLeads,
        Op::SendEmail,
        Op::ChargeEmail,
        Op::CheckEmail,
        Op::Usage,
        Op::AddLeads,
        Op::EmailHistory,
    ];

    /// The name used in event files, metrics and reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Subscribe => "subscribe",
            Op::ChangePlan => "change_plan",
            Op::AddLead => "add_lead",
            Op::DeleteLead => "delete_lead",
            Op::DeleteCampaignLeads => "delete_campaign_leads",
            Op::SendEmail => "send_email",
            Op::ChargeEmail => "charge_email",
            Op::CheckEmail => "check_email",
            Op::Usage => "usage",
            Op::AddLeads => "add_leads",
            Op::EmailHistory => "email_history",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the operation only reads: its answer needs no commit to be true.
    pub fn is_read_only(self) -> bool {
        matches!(self, Op::CheckEmail | Op::Usage | Op::EmailHistory)
    }

    /// Whether the operation may put an account on a plan (which a reload must
    /// not race: see `gateway::PlanGate`).
    pub fn changes_plan(self) -> bool {
        matches!(self, Op::Subscribe | Op::ChangePlan)
    }
}

impl Request {
    pub fn op(&self) -> Op {
        match self {
            Request::Subscribe { .. } => Op::Subscribe,
            Request::ChangePlan { .. } => Op::ChangePlan,
            Request::AddLead { .. } => Op::AddLead,
            Request::DeleteLead { .. } => Op::DeleteLead,
            Request::DeleteCampaignLeads { .. } => Op::DeleteCampaignLeads,
            Request::SendEmail { .. } => Op::SendEmail,
            Request::ChargeEmail { .. } => Op::ChargeEmail,
            Request::CheckEmail { .. } => Op::CheckEmail,
            Request::Usage { .. } => Op::Usage,
            Request::AddLeads { .. } => Op::AddLeads,
            Request::EmailHistory { .. } => Op::EmailHistory,
        }
    }

    pub fn account(&self) -> &str {
        match self {
            Request::Subscribe { account, .. }
            | Request::ChangePlan { account, .. }
            | Request::AddLead { account, .. }
            | Request::DeleteLead { account, .. }
            | Request::DeleteCampaignLeads { account, .. }
            | Request::SendEmail { account, .. }
            | Request::ChargeEmail { account, .. }
            | Request::CheckEmail { account, .. }
            | Request::Usage { account }
            | Request::AddLeads { account, .. }
            | Request::EmailHistory { account, .. } => account,
        }
    }
}

/// The front end a message id came from. Each keeps its ids in a namespace of its
/// own, so that no bytes a client sends through one front end can name a message
/// charged through another (an HTTP `message_id` of `postfix/PFX1` is not Postfix's
/// `instance=PFX1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The HTTP API's `message_id`.
    Http,
    /// Postfix's `instance`.
    Postfix,
    /// A replayed event's `message_id` (`replay`, policy test suites).
    Replay,
}

/// A message id that is empty or only whitespace: no message's id, so no
/// idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message id {0:?} is empty or blank; give the message's own id, or none")]
pub struct BlankMessageId(pub String);

impl Origin {
    /// The prefix of every key from this front end. None is a prefix of another,
    /// and each ends in `/`, so two keys from two front ends always differ.
    pub fn prefix(self) -> &'static str {
        match self {
            Origin::Http => "http/",
            Origin::Postfix => "postfix/",
            Origin::Replay => "replay/",
        }
    }

    /// The message id the policy is given for `id` from this front end: the
    /// front end's prefix, then `id` as is. A blank `id` is refused: an empty
    /// idempotency key would make every message without one a retry of the first.
    pub fn message_id(self, id: &str) -> Result<String, BlankMessageId> {
        if id.trim().is_empty() {
            return Err(BlankMessageId(id.to_owned()));
        }
        Ok(format!("{}{id}", self.prefix()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14.3: whatever ids two front ends are given, their keys differ.
    #[test]
    fn front_ends_never_share_a_message_id() {
        const ALL: [Origin; 3] = [Origin::Http, Origin::Postfix, Origin::Replay];
        let ids = [
            "x",
            "postfix/x",
            "http/x",
            "replay/x",
            "/x",
            "http",
            "postfix/",
        ];
        for a in ALL {
            for b in ALL.into_iter().filter(|&b| b != a) {
                for i in ids {
                    for j in ids {
                        assert_ne!(a.message_id(i), b.message_id(j), "{a:?} {i:?}, {b:?} {j:?}");
                    }
                }
            }
        }
        for blank in ["", " ", "\t\r\n"] {
            assert_eq!(
                Origin::Http.message_id(blank),
                Err(BlankMessageId(blank.to_owned()))
            );
        }
        assert_eq!(
            Origin::Postfix.message_id("PFX1").as_deref(),
            Ok("postfix/PFX1")
        );
    }
}
