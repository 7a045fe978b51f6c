//! Support for the benchmarks: the guest's engine run natively over the host's own
//! stores, so that `native` and `wasm` benchmarks differ only in the boundary;
//! and the random lead lists of the import benchmarks ([`addresses`]).

pub mod addresses;

use std::sync::Arc;

use creditgate::bindings as host;
use creditgate::store::{CounterAdd, Guard, Store, StoreError};
use creditgate_guest::bindings as guest;
use creditgate_guest::engine::State;

/// The guest's [`State`] answered by a host [`Store`], without WebAssembly.
pub struct NativeState(pub Arc<dyn Store>);

fn state_error(e: StoreError) -> guest::StateError {
    match host::StateError::from(e) {
        host::StateError::Unavailable(m) => guest::StateError::Unavailable(m),
        host::StateError::Corrupt(m) => guest::StateError::Corrupt(m),
        host::StateError::InvalidArgument(m) => guest::StateError::InvalidArgument(m),
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
    fn record_get(&mut self, scope: &str, key: &str) -> Result<Option<String>, guest::StateError> {
        self.0.record_get(scope, key).map_err(state_error)
    }
    fn record_insert(
        &mut self,
        scope: &str,
        key: &str,
        value: &str,
    ) -> Result<bool, guest::StateError> {
        self.0.record_insert(scope, key, value).map_err(state_error)
    }
    fn record_update(
        &mut self,
        scope: &str,
        key: &str,
        value: &str,
    ) -> Result<bool, guest::StateError> {
        self.0.record_update(scope, key, value).map_err(state_error)
    }
    fn counter_get(&mut self, scope: &str, name: &str, now: i64) -> Result<u64, guest::StateError> {
        self.0.counter_get(scope, name, now).map_err(state_error)
    }
    fn member_add_many(
        &mut self,
        scope: &str,
        group: &str,
        members: &[String],
        limit: Option<u64>,
    ) -> Result<guest::MembersAdded, guest::StateError> {
        let added = self
            .0
            .member_add_many(scope, group, members, limit)
            .map_err(state_error)?;
        let outcomes = added.outcomes.into_iter().map(member_add_outcome).collect();
        Ok(guest::MembersAdded {
            outcomes,
            members: added.members,
        })
    }
    fn member_remove(
        &mut self,
        scope: &str,
        group: &str,
        member: &str,
    ) -> Result<guest::MemberRemoved, guest::StateError> {
        let removed = self
            .0
            .member_remove(scope, group, member)
            .map_err(state_error)?;
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
    fn group_clear(
        &mut self,
        scope: &str,
        group: &str,
    ) -> Result<guest::GroupCleared, guest::StateError> {
        let c = self.0.group_clear(scope, group).map_err(state_error)?;
        Ok(guest::GroupCleared {
            removed: c.removed,
            released: c.released,
            members: c.members,
        })
    }
    fn member_count(&mut self, scope: &str) -> Result<u64, guest::StateError> {
        self.0.member_count(scope).map_err(state_error)
    }
    fn counter_add_guarded(
        &mut self,
        scope: &str,
        guard: &guest::Guard,
        name: &str,
        amount: u64,
        limit: Option<u64>,
        once: Option<&guest::Once>,
        expires_at: Option<i64>,
        now: i64,
    ) -> Result<guest::GuardedAdd, guest::StateError> {
        let once = once.map(|o| host::Once {
            key: o.key.clone(),
            fingerprint: o.fingerprint,
            expires_at: o.expires_at,
        });
        let add = CounterAdd {
            amount,
            limit,
            once: once.as_ref(),
            expires_at,
            now,
        };
        let guard = Some(Guard {
            key: &guard.key,
            value: &guard.value,
        });
        let tally = |t: host::Tally| guest::Tally {
            counter: t.counter,
            members: t.members,
        };
        Ok(
            match self
                .0
                .counter_add_guarded(scope, guard, name, add)
                .map_err(state_error)?
            {
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
        scope: &str,
        guard: &guest::Guard,
        group: &str,
        member: &str,
        limit: Option<u64>,
        name: &str,
        now: i64,
    ) -> Result<Option<guest::GuardedMember>, guest::StateError> {
        let guard = Some(Guard {
            key: &guard.key,
            value: &guard.value,
        });
        Ok(self
            .0
            .member_add_guarded(scope, guard, group, member, limit, name, now)
            .map_err(state_error)?
            .map(|(outcome, t)| guest::GuardedMember {
                outcome: member_add_outcome(outcome),
                tally: guest::Tally {
                    counter: t.counter,
                    members: t.members,
                },
            }))
    }
    fn counter_tally(
        &mut self,
        scope: &str,
        guard: &guest::Guard,
        name: &str,
        now: i64,
    ) -> Result<Option<guest::Tally>, guest::StateError> {
        let guard = Some(Guard {
            key: &guard.key,
            value: &guard.value,
        });
        Ok(self
            .0
            .counter_tally(scope, guard, name, now)
            .map_err(state_error)?
            .map(|t| guest::Tally {
                counter: t.counter,
                members: t.members,
            }))
    }
}
