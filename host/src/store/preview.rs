//! Dry runs: stores that read through to the real one and apply nothing.
//!
//! A dry run must report exactly what the real operation would and change
//! nothing. Rather than a second copy of the component's rules in the host, the
//! component decides as usual, on a [`DryRun`] of the real store: reads go to
//! the real store, the writes the operation makes are answered by a [`Predict`]
//! as if applied, and every other write is refused with nothing applied (a
//! component that tried one gets an error, never a silent effect). Two
//! predictions exist:
//!
//! - [`Preview`], for deletions: `member_remove` and `group_clear` are answered
//!   from the real store's kept counts ([`Store::membership`],
//!   [`Store::group_counts`]). Reads after a predicted removal see the store as it
//!   is, not as it would be: the component reports the member count the removal
//!   answered (it does not read it back), so a deletion's usage comes out as the
//!   real one's.
//! - the import's (`import::DryRunStore`): `member_add_many` answered from the
//!   members read once, with the member count it predicts.

use std::sync::Arc;

use super::{
    Alerts, CounterAdd, CounterTally, GroupCount, GuardedUpdate, Instant, MemberAdd,
    MemberAddGuarded, MemberAddMany, Members, Membership, Records, ScopeDump, Store, StoreError,
    Visit, VisitAlert, check_name,
};
use crate::bindings::{
    GroupCleared, GuardedAdd, GuardedMember, MemberAdded, MemberRemoveOutcome, MemberRemoved,
    MembersAdded, Tally,
};

/// What a [`DryRun`] answers in place of the real store: the writes it predicts,
/// and how it refuses the others. A write not predicted here is refused.
pub trait Predict: Send + Sync {
    /// The error for `what`, a primitive (by its WIT name: `record-insert`,
    /// `counter-add`, `visit-members`, `export-scope`, ...) this dry run neither
    /// applies nor answers.
    fn refused(&self, what: &str) -> StoreError;

    /// `member-add-many` as if applied; refused unless predicted.
    fn member_add_many(
        &self,
        _: &dyn Store,
        _: MemberAddMany<'_>,
    ) -> Result<MembersAdded, StoreError> {
        Err(self.refused("member-add-many"))
    }

    /// `member-remove` as if applied; refused unless predicted.
    fn member_remove(&self, _: &dyn Store, _: Membership<'_>) -> Result<MemberRemoved, StoreError> {
        Err(self.refused("member-remove"))
    }

    /// `group-clear` as if applied; refused unless predicted.
    fn group_clear(
        &self,
        _real: &dyn Store,
        _scope: &str,
        _group: &str,
    ) -> Result<GroupCleared, StoreError> {
        Err(self.refused("group-clear"))
    }

    /// The member count of `scope` after the predictions, where they changed it:
    /// `member_count` and tallies answer it.
    fn member_count(&self, _scope: &str) -> Option<u64> {
        None
    }

    /// Whether listings of a scope's content (members, records, exports, group
    /// counts) are answered from the real store, which does not show the
    /// predictions; else they are refused.
    fn lists(&self) -> bool {
        true
    }

    /// Where the alert log goes (a throwaway store); None: its writes are
    /// refused and it is read from the real store.
    fn alert_log(&self) -> Option<&dyn Store> {
        None
    }
}

/// Reads from the real store; writes predicted by `P`, or refused.
pub struct DryRun<P> {
    real: Arc<dyn Store>,
    predict: P,
}

impl<P: Predict> DryRun<P> {
    /// A dry run over `real`, answering writes with `predict`.
    pub fn with(real: Arc<dyn Store>, predict: P) -> Self {
        DryRun { real, predict }
    }

    /// The predictions.
    pub fn predict(&self) -> &P {
        &self.predict
    }

    fn listing(&self, what: &str) -> Result<&dyn Store, StoreError> {
        if self.predict.lists() {
            Ok(&*self.real)
        } else {
            Err(self.predict.refused(what))
        }
    }
}

impl<P: std::fmt::Debug> std::fmt::Debug for DryRun<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DryRun")
            .field("predict", &self.predict)
            .finish_non_exhaustive()
    }
}

/// A deletion's dry run: removals predicted from the real store's kept counts.
pub type Preview = DryRun<Removals>;

impl Preview {
    pub fn new(real: Arc<dyn Store>) -> Preview {
        DryRun::with(real, Removals)
    }
}

/// The predictions of a deletion's dry run ([`Preview`]).
#[derive(Debug, Clone, Copy)]
pub struct Removals;

impl Predict for Removals {
    fn refused(&self, what: &str) -> StoreError {
        let what = match what {
            "alert-sequence" => "taking an alert sequence number",
            "alert-insert" => "logging an alert",
            what => what,
        };
        StoreError::InvalidArgument(format!("a dry run changes nothing, and {what} would have"))
    }

    fn member_remove(
        &self,
        real: &dyn Store,
        at: Membership<'_>,
    ) -> Result<MemberRemoved, StoreError> {
        let found = real.membership(at)?;
        let members = real.member_count(at.scope)?;
        Ok(match found {
            None => MemberRemoved {
                outcome: MemberRemoveOutcome::NotInGroup,
                members,
            },
            Some(1) => MemberRemoved {
                outcome: MemberRemoveOutcome::Released,
                members: members.saturating_sub(1),
            },
            Some(_) => MemberRemoved {
                outcome: MemberRemoveOutcome::LeftGroup,
                members,
            },
        })
    }

    fn group_clear(
        &self,
        real: &dyn Store,
        scope: &str,
        group: &str,
    ) -> Result<GroupCleared, StoreError> {
        check_name("group", group)?;
        let counts = real.group_counts(scope)?;
        let members = real.member_count(scope)?;
        let found = counts.iter().find(|c| c.group == group);
        let (removed, released) = found.map_or((0, 0), |c| (c.members, c.exclusive));
        Ok(GroupCleared {
            removed,
            released,
            members: members.saturating_sub(released),
        })
    }
}

impl<P: Predict> Store for DryRun<P> {
    fn record_get(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.real.record_get(scope, key)
    }
    fn secret(&self) -> Result<[u8; super::SECRET_LEN], StoreError> {
        self.real.secret()
    }
    fn set_secret(&self, _: [u8; super::SECRET_LEN]) -> Result<(), StoreError> {
        Err(self.predict.refused("set-secret"))
    }
    fn host_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.real.host_record(key)
    }
    fn set_host_record(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Err(self.predict.refused("set-host-record"))
    }
    fn record_insert(&self, _: &str, _: &str, _: &str) -> Result<bool, StoreError> {
        Err(self.predict.refused("record-insert"))
    }
    fn record_update(&self, _: &str, _: &str, _: &str) -> Result<bool, StoreError> {
        Err(self.predict.refused("record-update"))
    }
    fn record_update_guarded(&self, _: GuardedUpdate<'_>) -> Result<bool, StoreError> {
        Err(self.predict.refused("record-update-guarded"))
    }
    fn counter_get(&self, scope: &str, name: &str, now: Instant) -> Result<u64, StoreError> {
        self.real.counter_get(scope, name, now)
    }
    fn counter_add_guarded(&self, _: CounterAdd<'_>) -> Result<GuardedAdd, StoreError> {
        Err(self.predict.refused("counter-add"))
    }
    fn counter_tally(&self, at: CounterTally<'_>) -> Result<Option<Tally>, StoreError> {
        let tally = self.real.counter_tally(at)?;
        Ok(match self.predict.member_count(at.scope) {
            Some(members) => tally.map(|t| Tally { members, ..t }),
            None => tally,
        })
    }
    fn member_add(&self, _: MemberAdd<'_>) -> Result<MemberAdded, StoreError> {
        Err(self.predict.refused("member-add"))
    }
    fn member_add_guarded(
        &self,
        _: MemberAddGuarded<'_>,
    ) -> Result<Option<GuardedMember>, StoreError> {
        Err(self.predict.refused("member-add"))
    }
    fn member_add_many(&self, add: MemberAddMany<'_>) -> Result<MembersAdded, StoreError> {
        self.predict.member_add_many(&*self.real, add)
    }
    fn member_remove(&self, at: Membership<'_>) -> Result<MemberRemoved, StoreError> {
        self.predict.member_remove(&*self.real, at)
    }
    fn group_clear(&self, scope: &str, group: &str) -> Result<GroupCleared, StoreError> {
        self.predict.group_clear(&*self.real, scope, group)
    }
    fn member_count(&self, scope: &str) -> Result<u64, StoreError> {
        match self.predict.member_count(scope) {
            Some(count) => Ok(count),
            None => self.real.member_count(scope),
        }
    }
    fn group_counts(&self, scope: &str) -> Result<Vec<GroupCount>, StoreError> {
        self.listing("export-scope")?.group_counts(scope)
    }
    fn membership(&self, at: Membership<'_>) -> Result<Option<u64>, StoreError> {
        self.listing("export-scope")?.membership(at)
    }
    fn persist(&self) -> Result<(), StoreError> {
        // Nothing of a dry run is kept.
        Ok(())
    }
    fn health(&self) -> Result<(), StoreError> {
        self.real.health()
    }
    fn scopes(&self) -> Result<Vec<String>, StoreError> {
        self.real.scopes()
    }
    fn scopes_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        self.real.scopes_after(after, limit)
    }
    fn visit_members_after(&self, list: Members<'_>, visit: Visit<'_>) -> Result<(), StoreError> {
        self.listing("visit-members")?
            .visit_members_after(list, visit)
    }
    fn visit_records(&self, list: Records<'_>, visit: Visit<'_>) -> Result<(), StoreError> {
        self.listing("export-scope")?.visit_records(list, visit)
    }
    fn export_scope(&self, scope: &str) -> Result<ScopeDump, StoreError> {
        self.listing("export-scope")?.export_scope(scope)
    }
    fn import_scope(&self, _: &str, _: &ScopeDump) -> Result<(), StoreError> {
        Err(self.predict.refused("import-scope"))
    }
    fn alert_sequence(&self, owner: &str) -> Result<u64, StoreError> {
        match self.predict.alert_log() {
            Some(log) => log.alert_sequence(owner),
            None => Err(self.predict.refused("alert-sequence")),
        }
    }
    fn alert_insert(&self, owner: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        match self.predict.alert_log() {
            Some(log) => log.alert_insert(owner, key, value),
            None => Err(self.predict.refused("alert-insert")),
        }
    }
    fn visit_alerts(&self, list: Alerts<'_>, visit: VisitAlert<'_>) -> Result<(), StoreError> {
        self.predict
            .alert_log()
            .unwrap_or(&*self.real)
            .visit_alerts(list, visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, add_members};

    /// Each prediction equals what the real call then does, and the prediction
    /// changes nothing.
    #[test]
    fn predicted_removals_are_the_real_ones() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        add_members(&*store, "s", "a", &["x", "y", "z"]);
        add_members(&*store, "s", "b", &["y", "w"]);
        let preview = Preview::new(store.clone());
        let before = store.export_scope("s").expect("reads");
        for (group, member) in [("a", "x"), ("a", "y"), ("b", "x"), ("c", "q")] {
            let at = Membership {
                scope: "s",
                group,
                member,
            };
            let predicted = preview.member_remove(at).expect("predicts");
            assert_eq!(store.export_scope("s").expect("reads"), before);
            let copy = MemoryStore::new();
            copy.import_scope("s", &before).expect("copies");
            let real = copy.member_remove(at).expect("removes");
            assert_eq!(
                (predicted.outcome, predicted.members),
                (real.outcome, real.members),
                "{at:?}"
            );
        }
        for g in ["a", "b", "c"] {
            let predicted = preview.group_clear("s", g).expect("predicts");
            let copy = MemoryStore::new();
            copy.import_scope("s", &before).expect("copies");
            let real = copy.group_clear("s", g).expect("clears");
            assert_eq!(
                (predicted.removed, predicted.released, predicted.members),
                (real.removed, real.released, real.members),
                "{g}"
            );
        }
        let add = MemberAdd {
            scope: "s",
            group: "a",
            member: "n",
            limit: None,
        };
        assert!(preview.member_add(add).is_err());
        assert_eq!(store.export_scope("s").expect("reads"), before);
    }
}
