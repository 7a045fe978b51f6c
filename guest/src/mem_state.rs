//! The engine's [`State`] in the guest's unit tests, on the store contract's one
//! model (`storemodel/`). The host's tests run every rule through the component
//! against the real stores.

use creditgate_storemodel::{self as model, Model};

use crate::bindings::{
    GroupCleared, Guard, GuardedAdd, GuardedMember, Instant, MemberAddOutcome, MemberRemoveOutcome,
    MemberRemoved, MembersAdded, StateError, Tally,
};
use crate::engine::{
    CounterAdd, CounterTally, GuardedUpdate, MemberAddGuarded, MemberAddMany, Membership, Name,
    SECRET_LEN, Secret, State,
};

/// The `state` primitives on the store contract's one model (`storemodel/`,
/// which the host's stores are checked against too), with the names the
/// engine interned.
#[derive(Default)]
pub(crate) struct MemState {
    pub(crate) store: Model,
    /// Interned names, by handle.
    names: Vec<String>,
    /// A write another gateway makes just before this state's next record
    /// write, `(scope, key, value)`: a race, for the tests of the engine's
    /// compare-and-swaps.
    pub(crate) racing_write: Option<(String, String, String)>,
    /// The store's secret: all zeros unless a test sets another.
    pub(crate) secret: [u8; SECRET_LEN],
}

impl MemState {
    fn race(&mut self) {
        if let Some((scope, key, value)) = self.racing_write.take() {
            self.store.record_update(&scope, &key, &value);
        }
    }
}

fn tally(t: model::Tally) -> Tally {
    Tally {
        counter: t.counter,
        members: t.members,
    }
}

fn joined(j: model::Joined) -> MemberAddOutcome {
    match j {
        model::Joined::AlreadyInGroup => MemberAddOutcome::AlreadyInGroup,
        model::Joined::Joined => MemberAddOutcome::Joined,
        model::Joined::Inserted => MemberAddOutcome::Inserted,
        model::Joined::Refused => MemberAddOutcome::Refused,
    }
}

/// The guard's record and version token, by their interned names.
fn guard_of(names: &[String], guard: Guard) -> Option<model::Guard<'_>> {
    Some(model::Guard {
        key: &names[guard.key as usize],
        value: &names[guard.version as usize],
    })
}

impl State for MemState {
    fn intern(&mut self, text: &str) -> Result<Name, StateError> {
        self.names.push(text.to_string());
        Ok(Name::try_from(self.names.len() - 1).expect("few names in a test"))
    }
    fn record_get(&mut self, scope: &str, key: &str) -> Result<Option<String>, StateError> {
        Ok(self.store.record_get(scope, key))
    }
    fn record_insert(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, StateError> {
        Ok(self.store.record_insert(scope, key, value))
    }
    fn record_update(&mut self, scope: &str, key: &str, value: &str) -> Result<bool, StateError> {
        self.race();
        Ok(self.store.record_update(scope, key, value))
    }
    fn record_update_guarded(&mut self, u: GuardedUpdate<'_>) -> Result<bool, StateError> {
        self.race();
        let names = &self.names;
        let (scope, key) = (&names[u.scope as usize], &names[u.key as usize]);
        Ok(guard_of(names, u.guard)
            .is_some_and(|guard| self.store.record_update_guarded(scope, guard, key, u.value)))
    }
    fn counter_get(&mut self, scope: &str, name: &str, now: Instant) -> Result<u64, StateError> {
        Ok(self.store.counter_get(scope, name, now))
    }
    fn member_add_many(&mut self, add: MemberAddMany<'_>) -> Result<MembersAdded, StateError> {
        let (outcomes, members) =
            (self.store).member_add_many(add.scope, add.group, add.members, add.limit);
        Ok(MembersAdded {
            outcomes: outcomes.into_iter().map(joined).collect(),
            members,
        })
    }
    fn member_remove(&mut self, at: Membership<'_>) -> Result<MemberRemoved, StateError> {
        let (outcome, members) = self.store.member_remove(at.scope, at.group, at.member);
        let outcome = match outcome {
            model::Left::NotInGroup => MemberRemoveOutcome::NotInGroup,
            model::Left::LeftGroup => MemberRemoveOutcome::LeftGroup,
            model::Left::Released => MemberRemoveOutcome::Released,
        };
        Ok(MemberRemoved { outcome, members })
    }
    fn group_clear(&mut self, scope: &str, group: &str) -> Result<GroupCleared, StateError> {
        let c = self.store.group_clear(scope, group);
        Ok(GroupCleared {
            removed: c.removed,
            released: c.released,
            members: c.members,
        })
    }
    fn member_count(&mut self, scope: &str) -> Result<u64, StateError> {
        Ok(self.store.member_count(scope))
    }
    fn counter_add_guarded(&mut self, add: CounterAdd<'_>) -> Result<GuardedAdd, StateError> {
        let names = &self.names;
        let key = (add.once).map(|o| format!("{}{}", names[o.prefix as usize], o.key));
        let once = add.once.zip(key.as_deref()).map(|(o, key)| model::Once {
            key,
            fingerprint: o.fingerprint,
            expires_at: o.expires_at,
        });
        let model_add = model::Add {
            amount: add.amount,
            limit: add.limit,
            once,
            expires_at: add.expires_at,
            now: add.now,
        };
        let (scope, counter) = (&names[add.scope as usize], &names[add.counter as usize]);
        let guard = guard_of(names, add.guard);
        let added = self.store.counter_add(scope, guard, counter, model_add);
        Ok(match added {
            None => GuardedAdd::Stale,
            Some((model::Added::Applied, t)) => GuardedAdd::Applied(tally(t)),
            Some((model::Added::Repeated, t)) => GuardedAdd::Repeated(tally(t)),
            Some((model::Added::Refused, t)) => GuardedAdd::Refused(tally(t)),
            Some((model::Added::Conflict, t)) => GuardedAdd::Conflict(tally(t)),
        })
    }
    fn counter_tally(&mut self, at: CounterTally) -> Result<Option<Tally>, StateError> {
        let names = &self.names;
        let (scope, counter) = (&names[at.scope as usize], &names[at.counter as usize]);
        let guard = guard_of(names, at.guard);
        Ok(self
            .store
            .counter_tally(scope, guard, counter, at.now)
            .map(tally))
    }
    fn member_add_guarded(
        &mut self,
        add: MemberAddGuarded<'_>,
    ) -> Result<Option<GuardedMember>, StateError> {
        let names = &self.names;
        let (scope, group) = (&names[add.scope as usize], &names[add.group as usize]);
        if !self.store.guard_holds(scope, guard_of(names, add.guard)) {
            return Ok(None);
        }
        let (outcome, members) = self.store.member_add(scope, group, add.member, add.limit);
        let counter = (self.store).counter_get(scope, &names[add.counter as usize], add.now);
        Ok(Some(GuardedMember {
            outcome: joined(outcome),
            tally: Tally { counter, members },
        }))
    }
    fn secret(&mut self) -> Result<Secret, StateError> {
        Ok(Secret::new(self.secret))
    }
}
