//! The oracle: the plans, what every client was told (its log of messages,
//! leads and counts), the accounts, and how the main thread starts and parks
//! the clients between kills.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::{CLIENTS, WAIT};

pub(super) struct Plan {
    pub(super) name: &'static str,
    pub(super) leads: u64,
    pub(super) emails: u64,
    /// In shadow mode: let through past its limits, and counted.
    pub(super) shadow: bool,
}

impl Plan {
    /// The most email credits an account on this plan may have used.
    pub(super) fn email_cap(&self) -> u64 {
        if self.shadow { u64::MAX } else { self.emails }
    }

    /// The most lead credits an account on this plan may have used.
    pub(super) fn lead_cap(&self) -> u64 {
        if self.shadow { u64::MAX } else { self.leads }
    }
}

/// Small limits, so that accounts run out while the load goes on.
pub(super) const PLANS: [Plan; 3] = [
    Plan {
        name: "small",
        leads: 8,
        emails: 25,
        shadow: false,
    },
    Plan {
        name: "roomy",
        leads: 40,
        emails: 150,
        shadow: false,
    },
    Plan {
        name: "trial",
        leads: 8,
        emails: 25,
        shadow: true,
    },
];

pub(super) fn policy_toml() -> String {
    PLANS
        .iter()
        .map(|p| {
            format!(
                "[plans.{}]\nlead_credits = {}\nemail_credits = {}\n{}",
                p.name,
                p.leads,
                p.emails,
                if p.shadow { "mode = \"shadow\"\n" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `account` is on the plan in shadow mode, as far as the oracle knows.
pub(super) fn in_shadow(shared: &Shared, account: &str) -> bool {
    lock(&shared.accounts)
        .entries
        .get(account)
        .is_some_and(|e| PLANS[e.plan].shadow)
}

/// SplitMix64: a seeded generator in a few lines, so that a failing run's seed
/// replays its choices.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(super) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(super) fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}

/// What the oracle knows of an effect: applied, not applied, or asked for by a
/// request that got no decision (in flight at a kill, or answered with an error),
/// which the next crash image settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Known {
    Yes,
    No,
    Maybe,
}

#[derive(Debug, Clone)]
pub(super) enum Via {
    Http { to: Vec<String> },
    Postfix { instance: String },
}

/// One message: its id as the policy keys its charge on, the account, the cost
/// (distinct recipients; every kind costs one), and whether it is charged.
#[derive(Debug)]
pub(super) struct Message {
    pub(super) account: String,
    pub(super) cost: u64,
    pub(super) via: Via,
    pub(super) charged: Known,
}

/// Counts of what the clients saw.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats {
    /// Requests answered with a decision that may change state.
    pub(super) decisions: u64,
    /// Of those, allowed (a lead batch counts as allowed).
    pub(super) allowed: u64,
    /// Emails refused for want of credits.
    pub(super) emails_exhausted: u64,
    /// Contacts refused for want of lead credits.
    pub(super) leads_exhausted: u64,
    /// Retries of a message already acknowledged, answered "nothing charged".
    pub(super) retries_free: u64,
    /// Read-only answers: RCPT checks and usage.
    pub(super) checks: u64,
    /// Requests answered without a decision (an error status or reply).
    pub(super) errors: u64,
    /// Requests that got no answer: in flight when the server was killed.
    pub(super) in_flight: u64,
}

impl Stats {
    pub(super) fn add(&mut self, o: &Stats) {
        self.decisions += o.decisions;
        self.allowed += o.allowed;
        self.emails_exhausted += o.emails_exhausted;
        self.leads_exhausted += o.leads_exhausted;
        self.retries_free += o.retries_free;
        self.checks += o.checks;
        self.errors += o.errors;
        self.in_flight += o.in_flight;
    }
}

/// One client's share of the oracle. A client alone sends its messages and
/// touches its campaigns (`c{id}a`, `c{id}b` in every account), one request at a
/// time, so the order of its answers is the order of their effects.
#[derive(Default)]
pub(super) struct ClientLog {
    pub(super) seq: u64,
    /// By the id the policy remembers: `http/{message_id}`, or `postfix/{instance}`.
    pub(super) messages: BTreeMap<String, Message>,
    pub(super) order: Vec<String>,
    /// `(account, campaign)` → contact → in the campaign?
    pub(super) leads: BTreeMap<(String, String), BTreeMap<String, Known>>,
    pub(super) stats: Stats,
}

impl ClientLog {
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// What this client knows of `account`'s `campaign`, and its counts.
    pub(super) fn campaign(
        &mut self,
        account: &str,
        campaign: &str,
    ) -> (&mut BTreeMap<String, Known>, &mut Stats) {
        let key = (account.to_owned(), campaign.to_owned());
        (self.leads.entry(key).or_default(), &mut self.stats)
    }
}

pub(super) struct AccountEntry {
    pub(super) plan: usize,
    pub(super) subscribed: Known,
}

#[derive(Default)]
pub(super) struct Accounts {
    pub(super) entries: BTreeMap<String, AccountEntry>,
    /// Subscribed accounts, oldest first: the ones the load uses.
    pub(super) live: Vec<String>,
}

/// What the main thread tells the clients.
#[derive(Default)]
pub(super) struct Control {
    pub(super) epoch: u64,
    pub(super) running: bool,
    pub(super) sweep: bool,
    pub(super) finished: bool,
    pub(super) parked: usize,
    pub(super) http: String,
    pub(super) postfix: Option<SocketAddr>,
}

pub(super) struct Shared {
    pub(super) accounts: Mutex<Accounts>,
    pub(super) logs: Vec<Mutex<ClientLog>>,
    pub(super) control: Mutex<Control>,
    pub(super) changed: Condvar,
    pub(super) violations: Mutex<Vec<String>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(super) fn new() -> Self {
        Shared {
            accounts: Mutex::default(),
            logs: (0..CLIENTS).map(|_| Mutex::default()).collect(),
            control: Mutex::default(),
            changed: Condvar::new(),
            violations: Mutex::default(),
        }
    }

    pub(super) fn violation(&self, text: String) {
        eprintln!("crash test: VIOLATION: {text}");
        lock(&self.violations).push(text);
    }

    pub(super) fn running(&self) -> bool {
        let control = lock(&self.control);
        control.running && !control.finished
    }

    /// Lets the clients go on the server at `http` and `postfix`.
    pub(super) fn release(&self, http: SocketAddr, postfix: SocketAddr, sweep: bool) {
        let mut control = lock(&self.control);
        control.epoch += 1;
        control.running = true;
        control.sweep = sweep;
        control.parked = 0;
        control.http = format!("http://{http}");
        control.postfix = Some(postfix);
        drop(control);
        self.changed.notify_all();
    }

    /// Stops the clients and waits until every one has parked.
    pub(super) fn park_all(&self) {
        let mut control = lock(&self.control);
        control.running = false;
        self.changed.notify_all();
        let deadline = Instant::now() + WAIT;
        while control.parked < CLIENTS {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the clients did not stop within {WAIT:?}");
            control = self
                .changed
                .wait_timeout(control, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits (bounded) until every client parked by itself (the sweep's end).
    pub(super) fn wait_parked(&self) {
        let mut control = lock(&self.control);
        let deadline = Instant::now() + 4 * WAIT;
        while control.parked < CLIENTS {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the clients' last phase did not end");
            control = self
                .changed
                .wait_timeout(control, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        control.running = false;
    }
}

/// Ends the clients however the main thread leaves the scope, a panic included,
/// so that the scope's join does not wait for them forever.
pub(super) struct EndClients<'a>(pub(super) &'a Shared);

impl Drop for EndClients<'_> {
    fn drop(&mut self) {
        lock(&self.0.control).finished = true;
        self.0.changed.notify_all();
    }
}
