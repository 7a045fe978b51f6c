//! Support for the benchmarks: the guest's engine run natively over the host's own
//! stores, so that `native` and `wasm` benchmarks differ only in the boundary;
//! and the random lead lists of the import benchmarks ([`addresses`]).

pub mod addresses;

use std::sync::Arc;

use creditgate::bindings as host;
use creditgate::store::{
    CounterAdd, CounterTally, Guard, GuardedUpdate, MemberAddGuarded, MemberAddMany, Membership,
    Store, StoreError,
};
use creditgate_guest::bindings as guest;
use creditgate_guest::engine::{self, Name, State};

/// The guest's [`State`] answered by a host [`Store`], without WebAssembly: the
/// names the engine interns are kept in a table, as the host does for an instance.
pub struct NativeState {
    store: Arc<dyn Store>,
    names: Vec<String>,
}

impl NativeState {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            names: Vec::new(),
        }
    }

    fn name(&self, name: Name) -> Result<&str, guest::StateError> {
        self.names
            .get(name as usize)
            .map(String::as_str)
            .ok_or_else(|| guest::StateError::InvalidArgument(format!("no name {name}")))
    }

    fn guard(&self, guard: guest::Guard) -> Result<Guard<'_>, guest::StateError> {
        Ok(Guard {
            key: self.name(guard.key)?,
            value: self.name(guard.version)?,
        })
    }
}

/// What the guest's [`State`] primitives answer.
type Answer<T> = Result<T, guest::StateError>;

fn state_error(e: StoreError) -> guest::StateError {
    match host::StateError::from(e) {
        host::StateError::Unavailable(m) => guest::StateError::Unavailable(m),
        host::StateError::Corrupt(m) => guest::StateError::Corrupt(m),
        host::StateError::InvalidArgument(m) => guest::StateError::InvalidArgument(m),
    }
}

fn tally(t: host::Tally) -> guest::Tally {
    guest::Tally {
        counter: t.counter,
        members: t.members,
    }
}

fn member_add_outcome(o: host::MemberAddOutcome) -> guest::MemberAddOutcome {
    match o {
        host::MemberAddOutcome::AlreadyInGroup => guest::MemberAddOutcome::AlreadyInGroup,
        host::MemberAddOutcome::Joined => guest::MemberAddOutcome::Joined,
        host::MemberAddOutcome::Inserted => guest::MemberAddOutcome::Inserted,
        host::MemberAddOutcome::Refused => guest::MemberAddOutcome::Refused,
    }
}

impl State for NativeState {
    fn intern(&mut self, text: &str) -> Answer<Name> {
        self.names.push(text.to_string());
        Ok(Name::try_from(self.names.len() - 1).unwrap_or(Name::MAX))
    }
    fn record_get(&mut self, scope: &str, key: &str) -> Answer<Option<String>> {
        self.store.record_get(scope, key).map_err(state_error)
    }
    fn record_insert(&mut self, scope: &str, key: &str, value: &str) -> Answer<bool> {
        self.store
            .record_insert(scope, key, value)
            .map_err(state_error)
    }
    fn record_update(&mut self, scope: &str, key: &str, value: &str) -> Answer<bool> {
        self.store
            .record_update(scope, key, value)
            .map_err(state_error)
    }
    fn record_update_guarded(&mut self, u: engine::GuardedUpdate<'_>) -> Answer<bool> {
        let update = GuardedUpdate {
            scope: self.name(u.scope)?,
            guard: self.guard(u.guard)?,
            key: self.name(u.key)?,
            value: u.value,
        };
        self.store
            .record_update_guarded(update)
            .map_err(state_error)
    }
    fn counter_get(&mut self, scope: &str, name: &str, now: i64) -> Answer<u64> {
        self.store
            .counter_get(scope, name, now)
            .map_err(state_error)
    }
    fn member_add_many(&mut self, add: engine::MemberAddMany<'_>) -> Answer<guest::MembersAdded> {
        let add = MemberAddMany {
            scope: add.scope,
            group: add.group,
            members: add.members,
            limit: add.limit,
        };
        let added = self.store.member_add_many(add).map_err(state_error)?;
        let outcomes = added.outcomes.into_iter().map(member_add_outcome).collect();
        Ok(guest::MembersAdded {
            outcomes,
            members: added.members,
        })
    }
    fn member_remove(&mut self, at: engine::Membership<'_>) -> Answer<guest::MemberRemoved> {
        let at = Membership {
            scope: at.scope,
            group: at.group,
            member: at.member,
        };
        let removed = self.store.member_remove(at).map_err(state_error)?;
        let outcome = match removed.outcome {
            host::MemberRemoveOutcome::NotInGroup => guest::MemberRemoveOutcome::NotInGroup,
            host::MemberRemoveOutcome::LeftGroup => guest::MemberRemoveOutcome::LeftGroup,
            host::MemberRemoveOutcome::Released => guest::MemberRemoveOutcome::Released,
        };
        Ok(guest::MemberRemoved {
            outcome,
            members: removed.members,
        })
    }
    fn group_clear(&mut self, scope: &str, group: &str) -> Answer<guest::GroupCleared> {
        let c = self.store.group_clear(scope, group).map_err(state_error)?;
        Ok(guest::GroupCleared {
            removed: c.removed,
            released: c.released,
            members: c.members,
        })
    }
    fn member_count(&mut self, scope: &str) -> Answer<u64> {
        self.store.member_count(scope).map_err(state_error)
    }
    fn counter_add_guarded(&mut self, add: engine::CounterAdd<'_>) -> Answer<guest::GuardedAdd> {
        let once = match add.once {
            Some(o) => Some(host::Once::joined(
                self.name(o.prefix)?,
                o.key,
                o.fingerprint,
                o.expires_at,
            )),
            None => None,
        };
        let add = CounterAdd {
            scope: self.name(add.scope)?,
            guard: Some(self.guard(add.guard)?),
            name: self.name(add.counter)?,
            amount: add.amount,
            limit: add.limit,
            once: once.as_ref().map(creditgate::store::OnceKey::of),
            expires_at: add.expires_at,
            now: add.now,
        };
        Ok(
            match self.store.counter_add_guarded(add).map_err(state_error)? {
                host::GuardedAdd::Applied(t) => guest::GuardedAdd::Applied(tally(t)),
                host::GuardedAdd::Repeated(t) => guest::GuardedAdd::Repeated(tally(t)),
                host::GuardedAdd::Refused(t) => guest::GuardedAdd::Refused(tally(t)),
                host::GuardedAdd::Conflict(t) => guest::GuardedAdd::Conflict(tally(t)),
                host::GuardedAdd::Stale => guest::GuardedAdd::Stale,
            },
        )
    }
    fn member_add_guarded(
        &mut self,
        add: engine::MemberAddGuarded<'_>,
    ) -> Answer<Option<guest::GuardedMember>> {
        let add = MemberAddGuarded {
            scope: self.name(add.scope)?,
            guard: Some(self.guard(add.guard)?),
            group: self.name(add.group)?,
            member: add.member,
            limit: add.limit,
            name: self.name(add.counter)?,
            now: add.now,
        };
        Ok(self
            .store
            .member_add_guarded(add)
            .map_err(state_error)?
            .map(|added| guest::GuardedMember {
                outcome: member_add_outcome(added.outcome),
                tally: tally(added.tally),
            }))
    }
    fn counter_tally(&mut self, at: engine::CounterTally) -> Answer<Option<guest::Tally>> {
        let at = CounterTally {
            scope: self.name(at.scope)?,
            guard: Some(self.guard(at.guard)?),
            name: self.name(at.counter)?,
            now: at.now,
        };
        Ok(self
            .store
            .counter_tally(at)
            .map_err(state_error)?
            .map(tally))
    }
    fn secret(&mut self) -> Answer<engine::Secret> {
        self.store
            .secret()
            .map(engine::Secret::new)
            .map_err(state_error)
    }
}
