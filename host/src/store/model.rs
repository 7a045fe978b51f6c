//! The store contract's one model ([`creditgate_storemodel`]) beside a [`Store`]:
//! [`step`] runs one [`Op`] on a backend and on a [`Model`] and compares the
//! answers, in the model's terms. The conformance property test
//! (`tests/it/store/model.rs`) and the store fuzzer (`fuzz/fuzz_targets/
//! store_model.rs`) check every backend with it; a Rust gateway with a backend of
//! its own can check that one the same way.

pub use creditgate_storemodel::{
    AddCall, Added, Answer, Cleared, Dump, Invalid, Joined, Left, Limits, Model, Op, Tally,
};

use super::{
    CounterAdd, CounterTally, Guard, GuardedUpdate, MAX_BATCH, MAX_GROUPS_PER_MEMBER, MAX_NAME_LEN,
    MAX_VALUE_LEN, MemberAdd, MemberAddGuarded, MemberAddMany, Membership, OnceKey, Store,
    StoreError,
};
use crate::bindings::{self, CounterAdded, GuardedAdd, MemberAddOutcome, MemberRemoveOutcome};

/// The limits every backend holds arguments to.
pub const LIMITS: Limits = Limits {
    name: MAX_NAME_LEN,
    value: MAX_VALUE_LEN,
    batch: MAX_BATCH,
    groups: MAX_GROUPS_PER_MEMBER,
};

/// An empty model that refuses what the backends refuse.
pub fn model() -> Model {
    Model::with_limits(LIMITS)
}

/// Runs `op` on `store` and on `model`. An error says how the answers differ, or
/// that the store failed otherwise than by refusing an argument.
pub fn step(store: &dyn Store, model: &mut Model, op: &Op) -> Result<(), String> {
    let expected = model.apply(op);
    let got = refusal(apply(store, op))?;
    if got == expected {
        return Ok(());
    }
    Err(format!(
        "{op:?}:\n  the store answered {got:?}\n  the model   answered {expected:?}"
    ))
}

/// Compares what `store` holds with `model`: the scopes listed, and the content
/// and group counts of each of them and of `scopes`.
pub fn same_content(store: &dyn Store, model: &Model, scopes: &[&str]) -> Result<(), String> {
    let listed = model.scopes();
    let mut all: Vec<&str> = listed.iter().map(String::as_str).collect();
    all.extend(scopes);
    let mut ops = vec![Op::Scopes];
    for scope in all {
        let scope = scope.to_owned();
        ops.push(Op::Export {
            scope: scope.clone(),
        });
        ops.push(Op::GroupCounts { scope });
    }
    let mut model = model.clone();
    for op in &ops {
        step(store, &mut model, op).map_err(|e| format!("at the end: {e}"))?;
    }
    Ok(())
}

/// A refused argument as the model answers it; any other failure stays one.
fn refusal(r: Result<Answer, StoreError>) -> Result<Result<Answer, Invalid>, String> {
    match r {
        Ok(answer) => Ok(Ok(answer)),
        Err(StoreError::InvalidArgument(_)) => Ok(Err(Invalid)),
        Err(e) => Err(format!("the store failed: {e}")),
    }
}

/// Runs `op` on `store`, with its answer in the model's terms.
pub fn apply(store: &dyn Store, op: &Op) -> Result<Answer, StoreError> {
    /// A guard's `(key, value)`.
    fn held((key, value): &(String, String)) -> Guard<'_> {
        Guard { key, value }
    }
    fn guard(g: &Option<(String, String)>) -> Option<Guard<'_>> {
        g.as_ref().map(held)
    }
    Ok(match op {
        Op::RecordGet { scope, key } => Answer::Value(store.record_get(scope, key)?),
        Op::RecordInsert { scope, key, value } => {
            Answer::Bool(store.record_insert(scope, key, value)?)
        }
        Op::RecordUpdate { scope, key, value } => {
            Answer::Bool(store.record_update(scope, key, value)?)
        }
        Op::RecordUpdateGuarded {
            scope,
            guard: g,
            key,
            value,
        } => {
            let guard = held(g);
            let update = GuardedUpdate {
                scope,
                guard,
                key,
                value,
            };
            Answer::Bool(store.record_update_guarded(update)?)
        }
        Op::CounterGet { scope, name, now } => Answer::Count(store.counter_get(scope, name, *now)?),
        Op::CounterAdd {
            scope,
            guard: g,
            name,
            add,
        } => {
            let args = CounterAdd {
                scope,
                guard: guard(g),
                name,
                amount: add.amount,
                limit: add.limit,
                once: (add.once.as_ref()).map(|(key, fingerprint, expires_at)| OnceKey {
                    key,
                    fingerprint: *fingerprint,
                    expires_at: *expires_at,
                }),
                expires_at: add.expires_at,
                now: add.now,
            };
            match args.guard {
                None => match store.counter_add(args)? {
                    CounterAdded::Applied(v) => Answer::Counter(Added::Applied, v),
                    CounterAdded::Repeated(v) => Answer::Counter(Added::Repeated, v),
                    CounterAdded::Refused(v) => Answer::Counter(Added::Refused, v),
                    CounterAdded::Conflict(v) => Answer::Counter(Added::Conflict, v),
                },
                Some(_) => Answer::Guarded(guarded(store.counter_add_guarded(args)?)),
            }
        }
        Op::CounterTally {
            scope,
            guard: g,
            name,
            now,
        } => {
            let at = CounterTally {
                scope,
                guard: guard(g),
                name,
                now: *now,
            };
            Answer::Tally(store.counter_tally(at)?.map(tally))
        }
        Op::MemberAdd {
            scope,
            group,
            member,
            limit,
        } => {
            let add = MemberAdd {
                scope,
                group,
                member,
                limit: *limit,
            };
            let added = store.member_add(add)?;
            Answer::Member(joined(added.outcome), added.members)
        }
        Op::MemberAddGuarded {
            scope,
            guard: g,
            group,
            member,
            limit,
            name,
            now,
        } => {
            let add = MemberAddGuarded {
                scope,
                guard: guard(g),
                group,
                member,
                limit: *limit,
                name,
                now: *now,
            };
            let added = store.member_add_guarded(add)?;
            Answer::GuardedMember(added.map(|a| (joined(a.outcome), tally(a.tally))))
        }
        Op::MemberAddMany {
            scope,
            group,
            members,
            limit,
        } => {
            let add = MemberAddMany {
                scope,
                group,
                members,
                limit: *limit,
            };
            let added = store.member_add_many(add)?;
            Answer::Members(
                added.outcomes.into_iter().map(joined).collect(),
                added.members,
            )
        }
        Op::MemberRemove {
            scope,
            group,
            member,
        } => {
            let removed = store.member_remove(Membership {
                scope,
                group,
                member,
            })?;
            let left = match removed.outcome {
                MemberRemoveOutcome::NotInGroup => Left::NotInGroup,
                MemberRemoveOutcome::LeftGroup => Left::LeftGroup,
                MemberRemoveOutcome::Released => Left::Released,
            };
            Answer::Removed(left, removed.members)
        }
        Op::GroupClear { scope, group } => {
            let c = store.group_clear(scope, group)?;
            Answer::Cleared(Cleared {
                removed: c.removed,
                released: c.released,
                members: c.members,
            })
        }
        Op::MemberCount { scope } => Answer::Count(store.member_count(scope)?),
        Op::GroupCounts { scope } => Answer::Groups(
            (store.group_counts(scope)?.into_iter())
                .map(|c| (c.group, c.members, c.exclusive))
                .collect(),
        ),
        Op::Membership {
            scope,
            group,
            member,
        } => Answer::Membership(store.membership(Membership {
            scope,
            group,
            member,
        })?),
        Op::Scopes => Answer::Scopes(store.scopes()?),
        Op::Persist => {
            store.persist()?;
            Answer::Unit
        }
        Op::Visit { scope, group } => {
            let mut seen = Vec::new();
            store.visit_members(scope, group.as_deref(), &mut |g, m| {
                seen.push((g.to_owned(), m.to_owned()));
                true
            })?;
            Answer::Visited(seen)
        }
        Op::Export { scope } => Answer::Dump(store.export_scope(scope)?),
        Op::Copy { from, to } => {
            let dump = store.export_scope(from)?;
            store.import_scope(to, &dump)?;
            Answer::Unit
        }
        Op::AlertSequence { owner } => Answer::Count(store.alert_sequence(owner)?),
        Op::AlertInsert { owner, key, value } => {
            Answer::Bool(store.alert_insert(owner, key, value)?)
        }
        Op::VisitAlerts { owner, after } => {
            let mut seen = Vec::new();
            let list = super::Alerts {
                owner: owner.as_deref(),
                after: after.as_ref().map(|(o, k)| (o.as_str(), k.as_str())),
            };
            store.visit_alerts(list, &mut |o, k, v| {
                seen.push((o.to_owned(), k.to_owned(), v.to_owned()));
                true
            })?;
            Answer::Alerts(seen)
        }
    })
}

fn tally(t: bindings::Tally) -> Tally {
    Tally {
        counter: t.counter,
        members: t.members,
    }
}

fn guarded(a: GuardedAdd) -> Option<(Added, Tally)> {
    match a {
        GuardedAdd::Applied(t) => Some((Added::Applied, tally(t))),
        GuardedAdd::Repeated(t) => Some((Added::Repeated, tally(t))),
        GuardedAdd::Refused(t) => Some((Added::Refused, tally(t))),
        GuardedAdd::Conflict(t) => Some((Added::Conflict, tally(t))),
        GuardedAdd::Stale => None,
    }
}

fn joined(o: MemberAddOutcome) -> Joined {
    match o {
        MemberAddOutcome::AlreadyInGroup => Joined::AlreadyInGroup,
        MemberAddOutcome::Joined => Joined::Joined,
        MemberAddOutcome::Inserted => Joined::Inserted,
        MemberAddOutcome::Refused => Joined::Refused,
    }
}
