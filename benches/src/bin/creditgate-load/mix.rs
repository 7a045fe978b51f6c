//! The workload: which account sends next, to how many recipients, and whether
//! Postfix retries the charge. Deterministic from a seed, so that two runs with
//! the same flags ask the same questions in the same order per connection.
//!
//! Two shapes ([`State`]): Postfix's mix (a check per `RCPT`, then the charge at
//! `END-OF-MESSAGE`), and pure charges (`END-OF-MESSAGE` only, one recipient),
//! the traffic mail quota servers such as postfwd and policyd-rate-limit are
//! compared on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use creditgate_benches::addresses::{Addresses, SplitMix64};

/// Which requests a message makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum State {
    /// A check per `RCPT` (1–3 recipients), then one charge at `END-OF-MESSAGE`.
    Mix,
    /// Only the charge at `END-OF-MESSAGE`, for one random recipient: every
    /// request is a charge.
    EndOfMessage,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Mix => "mix",
            State::EndOfMessage => "end-of-message",
        }
    }
}

/// What the generated traffic looks like.
#[derive(Debug, Clone)]
pub struct Mix {
    pub state: State,
    /// Accounts are `{prefix}0` .. `{prefix}{accounts - 1}`.
    pub prefix: String,
    pub accounts: usize,
    /// The first `small` accounts are on the plan that runs out during a run.
    pub small: usize,
    /// Share of charges sent a second time with the same `instance`, as Postfix
    /// does after a policy timeout (`smtpd_policy_service_try_limit`).
    pub retry_share: f64,
    pub seed: u64,
    /// Makes `instance`s unique across runs on one store: a repeated instance is
    /// charged nothing, which would flatter a second run.
    pub run_id: u64,
}

impl Mix {
    /// The name of account `index`.
    pub fn account(&self, index: usize) -> String {
        format!("{}{index}", self.prefix)
    }

    /// The accounts on the small plan, and the rest, as `--spawn` seeds them.
    pub fn plans(&self) -> impl Iterator<Item = (String, &'static str)> + '_ {
        (0..self.accounts).map(|i| {
            let plan = if i < self.small { "small" } else { "load" };
            (self.account(i), plan)
        })
    }

    /// The message stream of connection `connection`.
    pub fn messages(&self, connection: usize) -> Messages<'_> {
        let seed = self.seed ^ (connection as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Messages {
            mix: self,
            rng: SplitMix64(seed),
            addresses: (self.state == State::EndOfMessage).then(|| Addresses::new(seed)),
            connection,
            sequence: 0,
        }
    }
}

/// One message a connection sends: RCPT checks, then one charge (or two, when
/// retried) at END-OF-MESSAGE.
#[derive(Debug, Clone)]
pub struct Message {
    /// Whether each recipient is checked at `RCPT` before the charge.
    pub rcpt_checks: bool,
    pub account: String,
    pub recipients: Vec<String>,
    /// Postfix's `instance`: unique per message, shared by its retries.
    pub instance: String,
    pub retried: bool,
    /// `first` or `follow_up`, for the HTTP API's `kind`.
    pub kind: &'static str,
}

impl Message {
    /// How many times its charge is sent: twice when retried.
    pub fn attempts(&self) -> u32 {
        if self.retried { 2 } else { 1 }
    }
}

/// An endless stream of [`Message`]s for one connection.
#[derive(Debug)]
pub struct Messages<'a> {
    mix: &'a Mix,
    rng: SplitMix64,
    /// Random recipients, for [`State::EndOfMessage`].
    addresses: Option<Addresses>,
    connection: usize,
    sequence: u64,
}

impl Iterator for Messages<'_> {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        let account = self
            .mix
            .account(self.rng.below(self.mix.accounts as u64) as usize);
        let recipients = match &mut self.addresses {
            Some(addresses) => vec![addresses.any()],
            None => {
                let count = 1 + self.rng.below(3) as usize;
                (0..count)
                    .map(|_| {
                        format!(
                            "lead{}@example{}.org",
                            self.rng.below(1_000_000),
                            self.rng.below(50)
                        )
                    })
                    .collect()
            }
        };
        // Postfix's instance looks like `1a2b.67e1f0a1.3c4d.0`: any unique text does.
        let instance = format!(
            "{:x}.{:x}.{:x}.0",
            self.mix.run_id, self.connection, self.sequence
        );
        self.sequence += 1;
        let retried = self.rng.unit() < self.mix.retry_share;
        let kind = if self.rng.below(3) == 0 {
            "first"
        } else {
            "follow_up"
        };
        Some(Message {
            rcpt_checks: self.mix.state == State::Mix,
            account,
            recipients,
            instance,
            retried,
            kind,
        })
    }
}

/// When the run ends: after a number of decisions, or at a deadline. Shared by
/// every connection; each takes one unit before each request it sends.
#[derive(Debug)]
pub enum Budget {
    Requests(AtomicU64),
    Until(Instant),
}

impl Budget {
    /// True when no request may be sent any more (takes nothing).
    pub fn exhausted(&self) -> bool {
        match self {
            Budget::Requests(left) => left.load(Ordering::Relaxed) == 0,
            Budget::Until(deadline) => Instant::now() >= *deadline,
        }
    }

    /// True when one more request may be sent (and, for a count, takes it).
    pub fn take(&self) -> bool {
        match self {
            Budget::Requests(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
            Budget::Until(deadline) => Instant::now() < *deadline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> Mix {
        Mix {
            state: State::Mix,
            prefix: "load-".into(),
            accounts: 10,
            small: 2,
            retry_share: 0.5,
            seed: 7,
            run_id: 1,
        }
    }

    #[test]
    fn messages_are_deterministic_and_within_the_mix() {
        let mix = mix();
        let a: Vec<Message> = mix.messages(3).take(200).collect();
        let b: Vec<Message> = mix.messages(3).take(200).collect();
        assert_eq!(
            a.iter().map(|m| &m.instance).collect::<Vec<_>>(),
            b.iter().map(|m| &m.instance).collect::<Vec<_>>()
        );
        for m in &a {
            assert!((1..=3).contains(&m.recipients.len()));
            let index: usize = m.account["load-".len()..].parse().expect("a number");
            assert!(index < 10);
        }
        let retried = a.iter().filter(|m| m.retried).count();
        assert!((50..150).contains(&retried), "{retried}");
        // Instances differ across connections.
        let other = mix.messages(4).next().expect("a message");
        assert!(a.iter().all(|m| m.instance != other.instance));
        assert!(a.iter().all(|m| m.rcpt_checks));
    }

    #[test]
    fn end_of_message_traffic_is_one_random_recipient_per_charge() {
        let mix = Mix {
            state: State::EndOfMessage,
            ..mix()
        };
        let a: Vec<Message> = mix.messages(3).take(200).collect();
        assert!(a.iter().all(|m| !m.rcpt_checks && m.recipients.len() == 1));
        let distinct: std::collections::HashSet<&str> =
            a.iter().map(|m| m.recipients[0].as_str()).collect();
        assert!(distinct.len() > 190, "{}", distinct.len());
        let again: Vec<Message> = mix.messages(3).take(200).collect();
        assert_eq!(a[199].recipients, again[199].recipients);
    }

    #[test]
    fn a_request_budget_is_shared_exactly() {
        let budget = Budget::Requests(AtomicU64::new(3));
        assert_eq!((0..5).filter(|_| budget.take()).count(), 3);
    }

    #[test]
    fn plans_put_the_first_accounts_on_the_small_plan() {
        let plans: Vec<_> = mix().plans().collect();
        assert_eq!(plans[1], ("load-1".to_owned(), "small"));
        assert_eq!(plans[2], ("load-2".to_owned(), "load"));
        assert_eq!(plans.len(), 10);
    }
}
