//! The component: WIT exports answered by the [`Engine`], WIT imports as its
//! [`State`].
//!
//! An instance is used by one host worker at a time, so the engine lives in a
//! thread-local `RefCell` (wasm32 has one thread; the cell only satisfies Rust).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::bindings::creditgate::policy::state::{self as imports, Name};
use crate::bindings::exports::creditgate::policy::policy::{Account, Campaign, Guest};
use crate::bindings::{
    CycleUsage, Decision, Diagnostic, EmailKind, Error, GroupCleared, GuardedAdd, GuardedMember,
    Instant, LeadBatch, MemberRemoved, MembersAdded, Mode, Once, PolicySummary, StateError, Tally,
};
use crate::engine::{
    CounterAdd, CounterTally, Engine, GuardedUpdate, MemberAddGuarded, MemberAddMany, Membership,
    Secret, State,
};
use crate::known::Fnv;

thread_local! {
    static ENGINE: RefCell<Engine> = RefCell::new(Engine::default());
    static NAMES: RefCell<Names> = RefCell::new(Names::default());
    /// Account names by handle (WIT `account-handle`).
    static ACCOUNTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// Campaign names by handle (WIT `campaign-handle`).
    static CAMPAIGNS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// The store's secret, asked of the host once (it never changes).
    static SECRET: Cell<Option<Secret>> = const { Cell::new(None) };
}

/// Names this instance has interned through the host, so that each is interned
/// once. Past [`MAX_NAMES`] or [`MAX_NAME_BYTES`] (checked between calls, never
/// during one, when the engine may hold handles) they are all forgotten, with
/// what the engine kept.
#[derive(Default)]
struct Names {
    handles: HashMap<String, Name, BuildHasherDefault<Fnv>>,
    /// Their total length, as the host counts it.
    bytes: usize,
}

/// Names the instance keeps interned before it forgets them all: far below the
/// host's limit (262,144), which a decision's few new names cannot then reach.
const MAX_NAMES: usize = 65_536;

/// Bytes of names the instance keeps interned before it forgets them all: half
/// the host's limit (16 MiB), which a decision's few new names (each at most a
/// few hundred bytes) cannot then reach. Counting names alone was not enough:
/// 16,384 unknown accounts of 254 four-byte characters fill the host's bytes
/// long before 65,536 names, and every decision needing a new name then failed.
const MAX_NAME_BYTES: usize = 8 << 20;

/// Forgets every interned name if there are too many; at the start of each export.
fn bound_names() {
    let full = NAMES.with(|n| {
        let n = n.borrow();
        n.handles.len() >= MAX_NAMES || n.bytes >= MAX_NAME_BYTES
    });
    if full {
        ENGINE.with(|e| e.borrow().forget_known());
        NAMES.with(|n| {
            let mut n = n.borrow_mut();
            n.handles.clear();
            n.bytes = 0;
        });
        imports::forget_names();
    }
}

/// The host's state, reached through the component's imports.
struct Host;

impl Host {
    fn name(&mut self, text: &str) -> Result<Name, StateError> {
        self.intern(text)
    }
}

impl State for Host {
    fn intern(&mut self, text: &str) -> Result<Name, StateError> {
        if let Some(name) = NAMES.with(|n| n.borrow().handles.get(text).copied()) {
            return Ok(name);
        }
        let name = imports::intern(text)?;
        NAMES.with(|n| {
            let mut n = n.borrow_mut();
            n.bytes += text.len();
            n.handles.insert(text.to_string(), name);
        });
        Ok(name)
    }
    fn record_get(&mut self, scope: &str, key: &str) -> Result<Option<String>, StateError> {
        imports::record_get(self.name(scope)?, self.name(key)?)
    }
    fn record_insert(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, StateError> {
        imports::record_insert(self.name(scope)?, self.name(key)?, value)
    }
    fn record_update(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, StateError> {
        imports::record_update(self.name(scope)?, self.name(key)?, value)
    }
    fn record_update_guarded(&mut self, u: GuardedUpdate<'_>) -> Result<bool, StateError> {
        imports::record_update_guarded(u.scope, u.guard, u.key, u.value)
    }
    fn counter_get(&mut self, scope: &str, name: &str, now: Instant) -> Result<u64, StateError> {
        imports::counter_get(self.name(scope)?, self.name(name)?, now)
    }
    fn member_add_many(&mut self, add: MemberAddMany<'_>) -> Result<MembersAdded, StateError> {
        let (scope, group) = (self.name(add.scope)?, self.name(add.group)?);
        imports::member_add_many(scope, group, add.members, add.limit)
    }
    fn member_remove(&mut self, at: Membership<'_>) -> Result<MemberRemoved, StateError> {
        imports::member_remove(self.name(at.scope)?, self.name(at.group)?, at.member)
    }
    fn group_clear(&mut self, scope: &str, group: &str) -> Result<GroupCleared, StateError> {
        imports::group_clear(self.name(scope)?, self.name(group)?)
    }
    fn member_count(&mut self, scope: &str) -> Result<u64, StateError> {
        imports::member_count(self.name(scope)?)
    }
    fn counter_add_guarded(&mut self, add: CounterAdd<'_>) -> Result<GuardedAdd, StateError> {
        let once = add.once.map(|o| Once {
            prefix: o.prefix,
            key: o.key.to_string(),
            fingerprint: o.fingerprint,
            expires_at: o.expires_at,
        });
        imports::counter_add_guarded(
            add.scope,
            add.guard,
            add.counter,
            add.amount,
            add.limit,
            once.as_ref(),
            add.expires_at,
            add.now,
        )
    }
    fn counter_tally(&mut self, at: CounterTally) -> Result<Option<Tally>, StateError> {
        imports::counter_tally(at.scope, at.guard, at.counter, at.now)
    }
    fn member_add_guarded(
        &mut self,
        add: MemberAddGuarded<'_>,
    ) -> Result<Option<GuardedMember>, StateError> {
        imports::member_add_guarded(
            add.scope,
            add.guard,
            add.group,
            add.member,
            add.limit,
            add.counter,
            add.now,
        )
    }
    fn secret(&mut self) -> Result<Secret, StateError> {
        if let Some(secret) = SECRET.get() {
            return Ok(secret);
        }
        let secret = Secret::from_slice(&imports::store_secret()?)?;
        SECRET.set(Some(secret));
        Ok(secret)
    }
}

pub(crate) struct Component;

crate::bindings::export!(Component with_types_in crate::bindings);

/// Reads the record `key` of `scope` with names interned as the engine's are
/// (for `inspect`, which walks scopes by their text); between exports' steps,
/// so the interned names are kept within [`MAX_NAMES`] first.
pub(crate) fn read_record(scope: &str, key: &str) -> Result<Option<String>, StateError> {
    bound_names();
    Host.record_get(scope, key)
}

pub(crate) fn with_engine<T>(f: impl FnOnce(&Engine) -> T) -> T {
    ENGINE.with(|engine| f(&engine.borrow()))
}

/// The name behind `handle` in `names`; a handle this instance did not give is
/// an invalid request.
fn named<'n>(names: &'n [String], handle: u32, what: &str) -> Result<&'n str, Error> {
    usize::try_from(handle)
        .ok()
        .and_then(|i| names.get(i))
        .map(String::as_str)
        .ok_or_else(|| {
            Error::InvalidRequest(format!(
                "{what} handle {handle} was not given by this instance (or was forgotten)"
            ))
        })
}

/// Runs `f` on the engine with the name of `account`.
fn with_account<T>(
    account: Account,
    f: impl FnOnce(&Engine, &str) -> Result<T, Error>,
) -> Result<T, Error> {
    bound_names();
    ACCOUNTS.with(|accounts| {
        let accounts = accounts.borrow();
        let name = named(&accounts, account, "account")?;
        ENGINE.with(|engine| f(&engine.borrow(), name))
    })
}

/// Runs `f` on the engine with the names of `account` and `campaign`.
fn with_campaign<T>(
    account: Account,
    campaign: Campaign,
    f: impl FnOnce(&Engine, &str, &str) -> Result<T, Error>,
) -> Result<T, Error> {
    bound_names();
    ACCOUNTS.with(|accounts| {
        CAMPAIGNS.with(|campaigns| {
            let accounts = accounts.borrow();
            let campaigns = campaigns.borrow();
            let account = named(&accounts, account, "account")?;
            let campaign = named(&campaigns, campaign, "campaign")?;
            ENGINE.with(|engine| f(&engine.borrow(), account, campaign))
        })
    })
}

/// Keeps `name` under a new handle in `names`.
fn push_handle(names: &RefCell<Vec<String>>, name: String) -> u32 {
    let mut names = names.borrow_mut();
    names.push(name);
    // The host forgets handles long before 2^32 of them (see the WIT).
    u32::try_from(names.len() - 1).unwrap_or(u32::MAX)
}

impl Guest for Component {
    fn account_handle(name: String) -> Account {
        ACCOUNTS.with(|accounts| push_handle(accounts, name))
    }

    fn campaign_handle(name: String) -> Campaign {
        CAMPAIGNS.with(|campaigns| push_handle(campaigns, name))
    }

    fn forget_handles() {
        ACCOUNTS.with(|accounts| *accounts.borrow_mut() = Vec::new());
        CAMPAIGNS.with(|campaigns| *campaigns.borrow_mut() = Vec::new());
        ENGINE.with(|e| e.borrow().forget_known());
    }

    fn load_policy(toml: String, gateway_mode: Mode) -> Result<PolicySummary, Vec<Diagnostic>> {
        ENGINE.with(|engine| engine.borrow_mut().load_policy_in(&toml, gateway_mode))
    }

    fn subscribe(
        account: Account,
        plan: String,
        anchor: Instant,
        now: Instant,
    ) -> Result<Decision, Error> {
        with_account(account, |e, account| {
            e.subscribe(&mut Host, account, &plan, anchor, now)
        })
    }

    fn change_plan(account: Account, plan: String, now: Instant) -> Result<Decision, Error> {
        with_account(account, |e, account| {
            e.change_plan(&mut Host, account, &plan, now)
        })
    }

    fn add_lead(
        account: Account,
        campaign: Campaign,
        email: String,
        now: Instant,
    ) -> Result<Decision, Error> {
        with_campaign(account, campaign, |e, account, campaign| {
            e.add_lead(&mut Host, account, campaign, &email, now)
        })
    }

    fn add_leads(
        account: Account,
        campaign: Campaign,
        emails: Vec<String>,
        now: Instant,
    ) -> Result<LeadBatch, Error> {
        with_campaign(account, campaign, |e, account, campaign| {
            e.add_leads(&mut Host, account, campaign, &emails, now)
        })
    }

    fn delete_lead(
        account: Account,
        campaign: Campaign,
        email: String,
        now: Instant,
    ) -> Result<Decision, Error> {
        with_campaign(account, campaign, |e, account, campaign| {
            e.delete_lead(&mut Host, account, campaign, &email, now)
        })
    }

    fn delete_campaign_leads(
        account: Account,
        campaign: Campaign,
        now: Instant,
    ) -> Result<Decision, Error> {
        with_campaign(account, campaign, |e, account, campaign| {
            e.delete_campaign_leads(&mut Host, account, campaign, now)
        })
    }

    fn send_email(
        account: Account,
        to: Option<String>,
        more_to: Option<Vec<String>>,
        kind: EmailKind,
        message_id: Option<String>,
        now: Instant,
    ) -> Result<Decision, Error> {
        // One recipient is decided from where the host put it, with no list built.
        let (first, all): (String, Vec<String>);
        let to: &[String] = match (to, more_to) {
            (Some(to), None) => {
                first = to;
                std::slice::from_ref(&first)
            }
            (to, more) => {
                all = to
                    .into_iter()
                    .chain(more.into_iter().flatten())
                    .collect::<Vec<_>>();
                &all
            }
        };
        with_account(account, |e, account| {
            e.send_email(&mut Host, account, to, kind, message_id.as_deref(), now)
        })
    }

    fn charge_email(
        account: Account,
        cost: u64,
        message_id: Option<String>,
        now: Instant,
    ) -> Result<Decision, Error> {
        with_account(account, |e, account| {
            e.charge_email(&mut Host, account, cost, message_id.as_deref(), now)
        })
    }

    fn check_email(account: Account, cost: u64, now: Instant) -> Result<Decision, Error> {
        with_account(account, |e, account| {
            e.check_email(&mut Host, account, cost, now)
        })
    }

    fn usage(account: Account, now: Instant) -> Result<Decision, Error> {
        with_account(account, |e, account| e.usage(&mut Host, account, now))
    }

    fn email_history(
        account: Account,
        cycles: u32,
        now: Instant,
    ) -> Result<Vec<CycleUsage>, Error> {
        with_account(account, |e, account| {
            e.email_history(&mut Host, account, cycles, now)
        })
    }

    fn find_invalid_email(
        emails: Vec<String>,
    ) -> Option<crate::bindings::exports::creditgate::policy::policy::AddressProblem> {
        emails.iter().enumerate().find_map(|(index, email)| {
            let problem = crate::address::check(email).err()?;
            Some(
                crate::bindings::exports::creditgate::policy::policy::AddressProblem {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    problem: problem.to_string(),
                },
            )
        })
    }
}
