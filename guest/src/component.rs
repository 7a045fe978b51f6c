//! The component: WIT exports answered by the [`Engine`], WIT imports as its
//! [`State`].
//!
//! An instance is used by one host worker at a time, so the engine lives in a
//! thread-local `RefCell` (wasm32 has one thread; the cell only satisfies Rust).

use std::cell::RefCell;

use crate::bindings::creditgate::policy::state as imports;
use crate::bindings::exports::creditgate::policy::policy::Guest;
use crate::bindings::{
    CounterAdded, CycleUsage, Decision, Diagnostic, EmailKind, Error, GroupCleared, Guard,
    GuardedAdd, GuardedMember, Instant, LeadBatch, MemberAdded, MemberRemoved, MembersAdded, Once,
    PolicySummary, StateError, Tally,
};
use crate::engine::{Engine, State};

thread_local! {
    static ENGINE: RefCell<Engine> = RefCell::new(Engine::default());
}

/// The host's state, reached through the component's imports.
struct Host;

impl State for Host {
    fn record_get(&mut self, scope: &str, key: &str) -> Result<Option<String>, StateError> {
        imports::record_get(scope, key)
    }
    fn record_insert(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, StateError> {
        imports::record_insert(scope, key, value)
    }
    fn record_update(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, StateError> {
        imports::record_update(scope, key, value)
    }
    fn counter_get(&mut self, scope: &str, name: &str, now: Instant) -> Result<u64, StateError> {
        imports::counter_get(scope, name, now)
    }
    fn member_add_many(
        &mut self,
        scope: &str,
        group: &str,
        members: &[String],
        limit: Option<u64>,
    ) -> Result<MembersAdded, StateError> {
        imports::member_add_many(scope, group, members, limit)
    }
    fn member_remove(
        &mut self,
        scope: &str,
        group: &str,
        member: &str,
    ) -> Result<MemberRemoved, StateError> {
        imports::member_remove(scope, group, member)
    }
    fn group_clear(&mut self, scope: &str, group: &str) -> Result<GroupCleared, StateError> {
        imports::group_clear(scope, group)
    }
    fn member_count(&mut self, scope: &str) -> Result<u64, StateError> {
        imports::member_count(scope)
    }
    fn counter_add_guarded(
        &mut self,
        scope: &str,
        guard: &Guard,
        name: &str,
        amount: u64,
        limit: Option<u64>,
        once: Option<&Once>,
        expires_at: Option<Instant>,
        now: Instant,
    ) -> Result<GuardedAdd, StateError> {
        // See the WIT: the ABI's flat form has room for plain values only (an
        // empty key is no `once`; message ids are never empty).
        let limit = limit.unwrap_or(u64::MAX);
        let expires_at = expires_at.unwrap_or(Instant::MAX);
        let none = Once {
            key: String::new(),
            fingerprint: 0,
            expires_at: 0,
        };
        let once = once.unwrap_or(&none);
        imports::counter_add_guarded(scope, guard, name, amount, limit, once, expires_at, now)
    }
    fn counter_tally(
        &mut self,
        scope: &str,
        guard: &Guard,
        name: &str,
        now: Instant,
    ) -> Result<Option<Tally>, StateError> {
        imports::counter_tally(scope, guard, name, now)
    }
    fn member_add_guarded(
        &mut self,
        scope: &str,
        guard: &Guard,
        group: &str,
        member: &str,
        limit: Option<u64>,
        name: &str,
        now: Instant,
    ) -> Result<Option<GuardedMember>, StateError> {
        let limit = limit.unwrap_or(u64::MAX);
        imports::member_add_guarded(scope, guard, group, member, limit, name, now)
    }
}

pub(crate) struct Component;

crate::bindings::export!(Component with_types_in crate::bindings);

pub(crate) fn with_engine<T>(f: impl FnOnce(&Engine) -> T) -> T {
    ENGINE.with(|engine| f(&engine.borrow()))
}

impl Guest for Component {
    fn load_policy(toml: String) -> Result<PolicySummary, Vec<Diagnostic>> {
        ENGINE.with(|engine| engine.borrow_mut().load_policy(&toml))
    }

    fn subscribe(
        account: String,
        plan: String,
        anchor: Instant,
        now: Instant,
    ) -> Result<Decision, Error> {
        with_engine(|e| e.subscribe(&mut Host, &account, &plan, anchor, now))
    }

    fn change_plan(account: String, plan: String, now: Instant) -> Result<Decision, Error> {
        with_engine(|e| e.change_plan(&mut Host, &account, &plan, now))
    }

    fn add_lead(
        account: String,
        campaign: String,
        email: String,
        now: Instant,
    ) -> Result<Decision, Error> {
        with_engine(|e| e.add_lead(&mut Host, &account, &campaign, &email, now))
    }

    fn add_leads(
        account: String,
        campaign: String,
        emails: Vec<String>,
        now: Instant,
    ) -> Result<LeadBatch, Error> {
        with_engine(|e| e.add_leads(&mut Host, &account, &campaign, &emails, now))
    }

    fn delete_lead(
        account: String,
        campaign: String,
        email: String,
        now: Instant,
    ) -> Result<Decision, Error> {
        with_engine(|e| e.delete_lead(&mut Host, &account, &campaign, &email, now))
    }

    fn delete_campaign_leads(
        account: String,
        campaign: String,
        now: Instant,
    ) -> Result<Decision, Error> {
        with_engine(|e| e.delete_campaign_leads(&mut Host, &account, &campaign, now))
    }

    fn send_email(
        account: String,
        to: Vec<String>,
        kind: EmailKind,
        message_id: Option<String>,
        now: Instant,
    ) -> Result<Decision, Error> {
        with_engine(|e| e.send_email(&mut Host, &account, &to, kind, message_id.as_deref(), now))
    }

    fn charge_email(
        account: String,
        cost: u64,
        message_id: Option<String>,
        now: Instant,
    ) -> Result<Decision, Error> {
        with_engine(|e| e.charge_email(&mut Host, &account, cost, message_id.as_deref(), now))
    }

    fn check_email(account: String, cost: u64, now: Instant) -> Result<Decision, Error> {
        with_engine(|e| e.check_email(&mut Host, &account, cost, now))
    }

    fn usage(account: String, now: Instant) -> Result<Decision, Error> {
        with_engine(|e| e.usage(&mut Host, &account, now))
    }

    fn email_history(account: String, cycles: u32, now: Instant) -> Result<Vec<CycleUsage>, Error> {
        with_engine(|e| e.email_history(&mut Host, &account, cycles, now))
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
