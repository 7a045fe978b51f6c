//! Group commit: many callers of `persist` share one disk sync.
//!
//! Each write primitive counts itself in while it runs ([`GroupCommit::begin`])
//! and, if it committed, as applied when it ends. A caller of
//! [`GroupCommit::persist`] needs every primitive applied before its call to be
//! durable. One caller leads: it first lets the primitives already under way
//! finish, so that its sync covers their callers too (most often they are
//! queued behind the previous sync, microseconds from done), then syncs; the
//! others wait for it, and are done if it covered them, or lead the next sync.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::StoreError;

/// Sequence numbers of commits.
#[derive(Default)]
struct Commits {
    /// Primitives that committed so far.
    applied: u64,
    /// Every commit up to this one is durable.
    durable: u64,
    /// A leader is gathering or syncing.
    in_flight: bool,
    /// Primitives that have begun, and of those, that have ended (in any way).
    started: u64,
    ended: u64,
    /// The leader waits until `ended` reaches this.
    draining: Option<u64>,
}

#[derive(Default)]
pub(super) struct GroupCommit {
    commits: Mutex<Commits>,
    /// Signalled whenever a sync ends, in success or failure.
    durable_done: Condvar,
    /// Signalled when the primitives a leader waits for have ended.
    drained: Condvar,
}

/// A primitive under way; counted as ended however it ends (dropped), so that a
/// leader waiting for it never waits forever.
pub(super) struct Primitive<'a> {
    group: &'a GroupCommit,
    /// Set once the primitive's transaction committed.
    pub committed: bool,
}

impl Drop for Primitive<'_> {
    fn drop(&mut self) {
        let mut commits = self.group.commits();
        if self.committed {
            commits.applied = commits.applied.saturating_add(1);
        }
        commits.ended = commits.ended.saturating_add(1);
        let wake = commits.draining.is_some_and(|until| commits.ended >= until);
        drop(commits);
        if wake {
            self.group.drained.notify_all();
        }
    }
}

/// Clears `in_flight` and wakes the followers when the leader's sync ends, even
/// by a panic, so that no follower waits forever.
struct Leader<'a> {
    group: &'a GroupCommit,
    covers: Option<u64>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut commits = self.group.commits();
        commits.in_flight = false;
        commits.draining = None;
        if let Some(covers) = self.covers {
            commits.durable = commits.durable.max(covers);
        }
        drop(commits);
        self.group.durable_done.notify_all();
    }
}

impl GroupCommit {
    // The lock only guards counters updated in single statements, so a poisoned one
    // still holds consistent numbers.
    fn commits(&self) -> MutexGuard<'_, Commits> {
        self.commits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a primitive in; it counts itself out when dropped.
    pub fn begin(&self) -> Primitive<'_> {
        let mut commits = self.commits();
        commits.started = commits.started.saturating_add(1);
        Primitive {
            group: self,
            committed: false,
        }
    }

    /// Every primitive applied so far is durable: nothing is pending any more.
    pub fn all_durable(&mut self) {
        let commits = self
            .commits
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        commits.durable = commits.applied;
    }

    /// Returns once every primitive applied before the call is durable, calling
    /// `sync` (which makes durable everything applied before it is called) as
    /// the leader of a group, or waiting for the leader whose sync covers it.
    pub fn persist(&self, sync: impl FnOnce() -> Result<(), StoreError>) -> Result<(), StoreError> {
        let mut commits = self.commits();
        // Everything this caller applied has returned, and so was counted, by now.
        let target = commits.applied;
        loop {
            if commits.durable >= target {
                return Ok(());
            }
            if !commits.in_flight {
                break;
            }
            // A sync is under way: if it covers `target` this waits for it; if it
            // started before our effects, this waits to lead the next one.
            commits = self
                .durable_done
                .wait(commits)
                .unwrap_or_else(PoisonError::into_inner);
        }
        commits.in_flight = true;
        let mut leader = Leader {
            group: self,
            covers: None,
        };
        // Primitives already under way will end within microseconds: waiting for
        // them lets this one sync cover their callers too, where each would
        // otherwise need a sync of its own. It waits for as many endings as had
        // begun by now, so a steady stream of new primitives cannot hold it back.
        let until = commits.started;
        if commits.ended < until {
            commits.draining = Some(until);
            while commits.ended < until {
                commits = self
                    .drained
                    .wait(commits)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            commits.draining = None;
        }
        // Every commit counted in `applied` ended before this point, so the sync
        // begun below comes after them and covers them all.
        let covers = commits.applied;
        drop(commits);
        // On failure the followers wake, find nothing durable, and retry as leaders.
        sync()?;
        leader.covers = Some(covers);
        Ok(())
    }
}
