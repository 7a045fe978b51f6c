//! What an instance knows of the accounts it has decided for: each account's
//! record as last read, its plan resolved against the loaded policy, and the
//! billing cycle last used. A decision on a known account then needs no state call
//! to find them, and an email decision crosses to the host once.
//!
//! Knowledge goes stale when another worker or gateway host changes an account (a
//! plan change). So every state call that acts on it carries the record as read,
//! as a guard: if the record has changed, the call does nothing and says so, and
//! the decision starts again from a fresh read. An upgrade therefore takes effect
//! at once everywhere, not when a cache expires.
//!
//! The record also says the newest billing cycle any gateway has charged, so
//! that a cycle, once over for one gateway, is over for all: a gateway whose
//! clock is a little behind (or stepped back a little) charges the newest
//! cycle, never the one before it, whose unused credits are gone. The first
//! charge of a new cycle moves the record on with a compare-and-swap
//! ([`Known::advance`]); every gateway's charges guarded by the old record then
//! find it changed. Only clocks within [`TURNOVER_SKEW`] of the boundary are
//! held to it, and only to the next cycle: a newest cycle further ahead was
//! charged by a clock fault (a gateway booted a year ahead), and must not hold
//! the account there; nor may it release, at every boundary before it, the
//! clocks a little behind that the boundary holds.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::bindings::{Error, Guard, Instant};
use crate::cycle::{self, Cycle};
use crate::engine::{ACCOUNT_RECORD, GuardedUpdate, HISTORY_CYCLES, Name, State};
use crate::policy::Plan;

/// Accounts an instance keeps; past this it forgets them all and starts again. An
/// entry is a few hundred bytes, so this bounds the cache to a few MiB of the
/// instance's memory while covering every busy account of a gateway.
const MAX_KNOWN: usize = 16_384;

/// An existing account as read from state, with its plan resolved.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub anchor: Instant,
    pub plan_name: String,
    /// The plan's index in the loaded policy's summary; none when stranded.
    pub plan_index: Option<u32>,
    pub plan: Plan,
    /// The newest billing cycle charged, as the record says (see
    /// [`Account::cycle_at`]).
    pub newest: u32,
}

/// How far before a cycle's end a clock may be and still be held to the next
/// cycle once another gateway (or this one, before a step back) has charged
/// in it: the clock disagreement tolerated at a boundary. Gateways' clocks
/// agree within milliseconds under NTP, and `serve` warns past a second
/// against Redis's; ten minutes also covers a clock left to drift.
pub(crate) const TURNOVER_SKEW: Instant = 10 * 60 * 1_000_000_000;

impl Account {
    /// The billing cycle that counts at `now`: the one `now` falls in, or the
    /// next one when a later one has been charged and `now` is within
    /// [`TURNOVER_SKEW`] of its start (the clock that asks is a little behind
    /// another gateway's, or stepped back a little). A newest cycle further
    /// ahead is a clock fault's: it holds no clock past the next boundary, and
    /// counts itself only once real time nears it.
    pub fn cycle_at(&self, now: Instant) -> Result<Cycle, Error> {
        let cycle = cycle_of(self.anchor, now)?;
        if !self.turned(&cycle, now) {
            return Ok(cycle);
        }
        let next = cycle.index.saturating_add(1);
        cycle::cycle_number(self.anchor, next).map_err(corrupt_cycle)
    }

    /// Whether `cycle`, which `now` falls in, is over: a later one has been
    /// charged, and `now` is within [`TURNOVER_SKEW`] of its end.
    ///
    /// Not "the next one is the newest": a single charge from a clock months
    /// ahead would then have let a clock a little behind charge the cycle just
    /// over, at every boundary until real time caught up (trust audit 4b.3).
    fn turned(&self, cycle: &Cycle, now: Instant) -> bool {
        cycle.index < self.newest && cycle.end.saturating_sub(now) <= TURNOVER_SKEW
    }
}

/// The account record: `<anchor> <plan>`, or `<anchor>/<newest cycle> <plan>`
/// once a cycle after the first has been charged. The anchor is an integer, so
/// a `/` before the first space starts the cycle; records written before the
/// newest cycle was kept read as cycle 0.
pub(crate) fn account_record(anchor: Instant, newest: u32, plan: &str) -> String {
    match newest {
        0 => format!("{anchor} {plan}"),
        n => format!("{anchor}/{n} {plan}"),
    }
}

/// The anchor, the newest cycle charged and the plan of an account record.
pub(crate) fn parse_account_record(record: &str) -> Option<(Instant, u32, &str)> {
    let (head, plan) = record.split_once(' ')?;
    let (anchor, newest) = match head.split_once('/') {
        Some((anchor, newest)) if newest.bytes().all(|b| b.is_ascii_digit()) => {
            (anchor, newest.parse().ok()?)
        }
        Some(_) => return None,
        None => (head, 0),
    };
    Some((anchor.parse().ok()?, newest, plan))
}

/// One known account.
#[derive(Debug)]
pub(crate) struct Known {
    /// The account's scope, interned.
    scope: Name,
    /// The record it was read from, interned, as the guard of every call that
    /// relies on it.
    guard: Guard,
    pub account: Account,
    cycle: Option<CycleNames>,
}

/// A billing cycle and the names a decision in it uses.
#[derive(Debug)]
pub(crate) struct CycleNames {
    pub cycle: Cycle,
    /// The cycle's email counter, interned.
    pub counter: Name,
    /// The prefix of message ids as `once` keys ([`ONCE_PREFIX`]), interned. The
    /// same in every cycle: a message id is one key for the account, whichever
    /// cycle a retry of its message falls in.
    pub once_prefix: Name,
    /// When a message id charged in this cycle may be forgotten
    /// ([`once_expires_at`]).
    pub once_expires_at: Instant,
    /// When that counter may be forgotten.
    pub kept_until: Instant,
}

impl Known {
    /// The scope, the guard, the account and the billing cycle that counts at
    /// `now`. The cycle is computed (and its names interned) again only when
    /// `now` has left the one used last: calendar arithmetic is most of a
    /// decision's own work. `charging`: the caller charges in that cycle, so it
    /// is first made the account's newest ([`Known::advance`]); None when the
    /// record had changed meanwhile (the caller reads the account again).
    pub fn at(
        &mut self,
        st: &mut impl State,
        now: Instant,
        charging: bool,
    ) -> Result<Option<(Name, Guard, &Account, &CycleNames)>, Error> {
        let anchor = self.account.anchor;
        let fresh = match self.cycle.take() {
            // Instants before the anchor belong to cycle 0 (see `cycle::cycle_at`).
            // An instant before the cycle kept, or near its end when the next one
            // is the newest charged, is placed again (see `Account::cycle_at`).
            Some(known)
                if now < known.cycle.end
                    && (now >= known.cycle.start || known.cycle.index == 0)
                    && !self.account.turned(&known.cycle, now) =>
            {
                known
            }
            _ => {
                let cycle = self.account.cycle_at(now)?;
                CycleNames {
                    counter: st.intern(&email_counter(&cycle))?,
                    once_prefix: st.intern(ONCE_PREFIX)?,
                    once_expires_at: once_expires_at(&cycle),
                    kept_until: kept_until(anchor, &cycle),
                    cycle,
                }
            }
        };
        let index = fresh.cycle.index;
        self.cycle = Some(fresh);
        if charging && index > self.account.newest && !self.advance(st, index)? {
            return Ok(None);
        }
        Ok(self
            .cycle
            .as_ref()
            .map(|cycle| (self.scope, self.guard, &self.account, cycle)))
    }

    /// Makes cycle `index` the account's newest, before a charge in it: a
    /// compare-and-swap of the record, after which this instance's guard is the
    /// new record. False when the record had changed (another worker or gateway
    /// moved it on, or changed the plan).
    fn advance(&mut self, st: &mut impl State, index: u32) -> Result<bool, Error> {
        let account = &self.account;
        let record = account_record(account.anchor, index, &account.plan_name);
        let update = GuardedUpdate {
            scope: self.scope,
            guard: self.guard,
            key: self.guard.key,
            value: &record,
        };
        if !st.record_update_guarded(update)? {
            return Ok(false);
        }
        self.guard.version = st.intern(&record)?;
        self.account.newest = index;
        Ok(true)
    }
}

/// The known accounts of one instance.
#[derive(Default)]
pub(crate) struct KnownAccounts {
    accounts: HashMap<String, Known, BuildHasherDefault<Fnv>>,
}

impl std::fmt::Debug for KnownAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownAccounts")
            .field("accounts", &self.accounts.len())
            .finish()
    }
}

impl KnownAccounts {
    pub fn get_mut(&mut self, account: &str) -> Option<&mut Known> {
        self.accounts.get_mut(account)
    }

    /// Remembers `account` as read from `record`, interning the names its
    /// decisions will use.
    pub fn insert(
        &mut self,
        st: &mut impl State,
        account: &str,
        record: &str,
        found: Account,
    ) -> Result<&mut Known, Error> {
        if self.accounts.len() >= MAX_KNOWN {
            self.accounts.clear();
        }
        let known = Known {
            scope: st.intern(account)?,
            guard: Guard {
                key: st.intern(ACCOUNT_RECORD)?,
                version: st.intern(record)?,
            },
            account: found,
            cycle: None,
        };
        Ok(self
            .accounts
            .entry(account.to_string())
            .insert_entry(known)
            .into_mut())
    }

    pub fn forget(&mut self, account: &str) {
        self.accounts.remove(account);
    }

    /// Forgets every account: plans are resolved against the policy, which changed.
    pub fn clear(&mut self) {
        self.accounts.clear();
    }
}

pub(crate) fn cycle_of(anchor: Instant, now: Instant) -> Result<Cycle, Error> {
    cycle::cycle_at(anchor, now).map_err(out_of_range)
}

/// A newest cycle no calendar holds: the record was not written by this engine.
fn corrupt_cycle(_: cycle::OutOfRange) -> Error {
    Error::State(crate::bindings::StateError::Corrupt(
        "an account record names a billing cycle past the last instant creditgate can count".into(),
    ))
}

pub(crate) fn out_of_range(_: cycle::OutOfRange) -> Error {
    Error::InvalidRequest(
        "the billing cycle of this instant ends after 2262-04-11, the last instant creditgate can count"
            .into(),
    )
}

/// When the email counter of `cycle` may be forgotten: once it has left the last
/// [`HISTORY_CYCLES`] cycles. Past the end of time, never.
pub(crate) fn kept_until(anchor: Instant, cycle: &Cycle) -> Instant {
    let index = cycle.index.saturating_add(HISTORY_CYCLES);
    cycle::cycle_number(anchor, index).map_or(Instant::MAX, |c| c.start)
}

pub(crate) fn email_counter(cycle: &Cycle) -> String {
    format!("email/{}", cycle.index)
}

/// The prefix of a message id as a `once` key: `msg/<id>`, one key per message
/// id and account, not per cycle. A retry is free whichever cycle it falls in
/// (its first attempt just before a cycle ends, the retry just after; a clock
/// stepped back; two gateways whose clocks disagree), while the email counter it
/// was charged to stays the cycle's.
///
/// Stores written before kept `msg/<cycle>/<id>`: those keys are never asked
/// again and expire with their cycle. They cannot be mistaken for new ones: the
/// host gives every message id a front end's prefix (`http/`, `postfix/`,
/// `replay/`), never digits.
pub(crate) const ONCE_PREFIX: &str = "msg/";

/// How long a message id is remembered past the end of the cycle that charged
/// it: 7 days. A message may be retried for as long as its sender keeps it
/// queued: Postfix gives up after `maximal_queue_lifetime`, 5 days by default,
/// so a message charged in the last instant of a cycle can come again up to 5
/// days into the next. Two days more cover a queue lifetime raised a little and
/// clocks that disagree. Within its cycle an id is remembered however old, as
/// before; past the grace, the id is free for a new message and charged again.
pub(crate) const ONCE_GRACE: Instant = 7 * 24 * 3600 * 1_000_000_000;

/// When a message id charged in `cycle` may be forgotten: the cycle's end plus
/// [`ONCE_GRACE`]. Past the end of time, never.
pub(crate) fn once_expires_at(cycle: &Cycle) -> Instant {
    cycle.end.saturating_add(ONCE_GRACE)
}

/// FNV-1a: account names are short, and std's default hasher would ask the host
/// for a random seed (`wasi:random`), which this component is not given.
#[derive(Debug)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
