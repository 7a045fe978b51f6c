//! A [`Store`] that answers removals without applying them: what a dry run of a
//! deletion runs the component on.
//!
//! A dry run must report exactly what the real deletion would (what it removes,
//! what it frees, the usage after it) and change nothing. Rather than a second
//! copy of the component's rules in the host, the component decides the deletion
//! as usual, on this wrapper: reads go to the real store, and `member_remove` and
//! `group_clear` are answered from the real store's kept counts
//! ([`Store::membership`], [`Store::group_counts`]) as if applied, without
//! changing it. Every other write is refused with nothing applied (a deletion
//! makes none; a component that tried one gets an error, never a silent effect).
//!
//! Reads after a predicted removal see the store as it is, not as it would be:
//! the component reports the member count the removal answered (it does not read
//! it back), so a deletion's usage comes out as the real one's.

use std::sync::Arc;

use super::{CounterAdd, GroupCount, Guard, Instant, ScopeDump, Store, StoreError, check_name};
use crate::bindings::{
    GroupCleared, GuardedAdd, MemberAddOutcome, MemberAdded, MemberRemoveOutcome, MemberRemoved,
    MembersAdded, Tally,
};

/// Reads from `inner`; removals predicted, other writes refused.
pub struct Preview {
    inner: Arc<dyn Store>,
}

impl Preview {
    pub fn new(inner: Arc<dyn Store>) -> Preview {
        Preview { inner }
    }
}

fn refused<T>(what: &str) -> Result<T, StoreError> {
    Err(StoreError::InvalidArgument(format!(
        "a dry run changes nothing, and {what} would have"
    )))
}

impl Store for Preview {
    fn record_get(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.record_get(scope, key)
    }
    fn record_insert(&self, _: &str, _: &str, _: &str) -> Result<bool, StoreError> {
        refused("record-insert")
    }
    fn record_update(&self, _: &str, _: &str, _: &str) -> Result<bool, StoreError> {
        refused("record-update")
    }
    fn counter_get(&self, scope: &str, name: &str, now: Instant) -> Result<u64, StoreError> {
        self.inner.counter_get(scope, name, now)
    }
    fn counter_add_guarded(
        &self,
        _: &str,
        _: Option<Guard<'_>>,
        _: &str,
        _: CounterAdd<'_>,
    ) -> Result<GuardedAdd, StoreError> {
        refused("counter-add")
    }
    fn counter_tally(
        &self,
        scope: &str,
        guard: Option<Guard<'_>>,
        name: &str,
        now: Instant,
    ) -> Result<Option<Tally>, StoreError> {
        self.inner.counter_tally(scope, guard, name, now)
    }
    fn member_add(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: Option<u64>,
    ) -> Result<MemberAdded, StoreError> {
        refused("member-add")
    }
    fn member_add_guarded(
        &self,
        _: &str,
        _: Option<Guard<'_>>,
        _: &str,
        _: &str,
        _: Option<u64>,
        _: &str,
        _: Instant,
    ) -> Result<Option<(MemberAddOutcome, Tally)>, StoreError> {
        refused("member-add")
    }
    fn member_add_many(
        &self,
        _: &str,
        _: &str,
        _: &[String],
        _: Option<u64>,
    ) -> Result<MembersAdded, StoreError> {
        refused("member-add-many")
    }

    fn member_remove(
        &self,
        scope: &str,
        group: &str,
        member: &str,
    ) -> Result<MemberRemoved, StoreError> {
        let found = self.inner.membership(scope, group, member)?;
        let members = self.inner.member_count(scope)?;
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

    fn group_clear(&self, scope: &str, group: &str) -> Result<GroupCleared, StoreError> {
        check_name("group", group)?;
        let counts = self.inner.group_counts(scope)?;
        let members = self.inner.member_count(scope)?;
        let found = counts.iter().find(|c| c.group == group);
        let (removed, released) = found.map_or((0, 0), |c| (c.members, c.exclusive));
        Ok(GroupCleared {
            removed,
            released,
            members: members.saturating_sub(released),
        })
    }

    fn member_count(&self, scope: &str) -> Result<u64, StoreError> {
        self.inner.member_count(scope)
    }
    fn group_counts(&self, scope: &str) -> Result<Vec<GroupCount>, StoreError> {
        self.inner.group_counts(scope)
    }
    fn membership(
        &self,
        scope: &str,
        group: &str,
        member: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.membership(scope, group, member)
    }
    fn persist(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn health(&self) -> Result<(), StoreError> {
        self.inner.health()
    }
    fn scopes(&self) -> Result<Vec<String>, StoreError> {
        self.inner.scopes()
    }
    fn visit_members(
        &self,
        scope: &str,
        group: Option<&str>,
        visit: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.visit_members(scope, group, visit)
    }
    fn scopes_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        self.inner.scopes_after(after, limit)
    }
    fn visit_members_after(
        &self,
        scope: &str,
        group: Option<&str>,
        after: Option<(&str, &str)>,
        visit: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.visit_members_after(scope, group, after, visit)
    }
    fn visit_records(
        &self,
        scope: &str,
        after: Option<&str>,
        visit: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.visit_records(scope, after, visit)
    }
    fn export_scope(&self, scope: &str) -> Result<ScopeDump, StoreError> {
        self.inner.export_scope(scope)
    }
    fn import_scope(&self, _: &str, _: &ScopeDump) -> Result<(), StoreError> {
        refused("import-scope")
    }
    fn alert_sequence(&self, _: &str) -> Result<u64, StoreError> {
        refused("taking an alert sequence number")
    }
    fn alert_insert(&self, _: &str, _: &str, _: &str) -> Result<bool, StoreError> {
        refused("logging an alert")
    }
    fn visit_alerts(
        &self,
        owner: Option<&str>,
        after: Option<(&str, &str)>,
        visit: &mut dyn FnMut(&str, &str, &str) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.visit_alerts(owner, after, visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// Each prediction equals what the real call then does, and the prediction
    /// changes nothing.
    #[test]
    fn predicted_removals_are_the_real_ones() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let add = |g: &str, ms: &[&str]| {
            let ms: Vec<String> = ms.iter().map(|m| (*m).to_owned()).collect();
            store.member_add_many("s", g, &ms, None).expect("adds");
        };
        add("a", &["x", "y", "z"]);
        add("b", &["y", "w"]);
        let preview = Preview::new(store.clone());
        let before = store.export_scope("s").expect("reads");
        for (g, m) in [("a", "x"), ("a", "y"), ("b", "x"), ("c", "q")] {
            let predicted = preview.member_remove("s", g, m).expect("predicts");
            assert_eq!(store.export_scope("s").expect("reads"), before);
            let copy = MemoryStore::new();
            copy.import_scope("s", &before).expect("copies");
            let real = copy.member_remove("s", g, m).expect("removes");
            assert_eq!(
                (predicted.outcome, predicted.members),
                (real.outcome, real.members),
                "{g}/{m}"
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
        assert!(preview.member_add("s", "a", "n", None).is_err());
        assert_eq!(store.export_scope("s").expect("reads"), before);
    }
}
