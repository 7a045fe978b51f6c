//! Connection slots, shared by the listeners ([`crate::serve`] and [`crate::http`]):
//! how many connections each listener keeps, how many one client address may
//! hold, and whom to close when a new connection finds no room.
//!
//! A cap alone lets slow clients take every slot: a client that sends one byte a
//! second is never idle and never finishes a request, and past the cap the next
//! peer (Postfix, a health check) waits in the kernel's backlog behind them. So a
//! listener at its cap makes room instead of making the newcomer wait: it closes
//! the open connection that has gone longest without completing a request, by
//! these rules:
//!
//! - a connection being answered (a whole request read, its reply not yet given)
//!   is never closed to make room: that would cost a decision already made;
//! - a connection that has sent no whole request for a second since it was
//!   accepted or began its current request (it is silent, or trickling) goes
//!   first: that is what a slow client looks like;
//! - then an idle one that has been answered: Postfix's pooled connections
//!   (answered, then idle until smtpd's next request) look like that. Postfix
//!   notices a policy connection closed while idle, but sleeps
//!   `smtpd_policy_service_retry_delay` (1 s) before reconnecting, so they are
//!   worth keeping;
//! - last, one accepted (or whose request began) less than a second ago: a new
//!   smtpd process sends its request as it connects;
//! - within each kind, the oldest goes first (time since it was accepted, began
//!   its current request, or was last answered), so a connection just accepted
//!   is the last to go: it has until nearly as many newer ones arrive as there
//!   are slots, while a request from Postfix takes a millisecond;
//! - in a flood (more than an eighth of the cap reading), a sixteenth of the cap
//!   goes at once, those that began reading the longest ago, so that the burst
//!   in which a flood's closed clients come back is let in with one pass over
//!   the registry rather than one per newcomer.
//!
//! Slots reserved for trusted addresses would not do: on one machine Postfix and
//! a local attacker share 127.0.0.1. Requiring a completed request before a
//! connection counts would not do either: each new smtpd process connects afresh.
//!
//! The per-client cap keeps one address from closing everyone else's
//! connections: past it, a newcomer closes its own address's oldest (by the same
//! rules), or is refused if every one of them is being answered. Unix-socket
//! peers have no address and only count against the listener's cap. When every
//! connection is being answered, a newcomer waits until one is done, as before.
//! Each listener says at most once every ten seconds how many it closed.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::warn;

/// How many connections a listener keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    pub max_per_client: usize,
}

/// How many reading connections a flooded listener closes at once: a sixteenth
/// of the cap.
fn batch(cap: usize) -> usize {
    (cap / 16).max(1)
}

/// How often a listener under pressure says so.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What a connection is doing.
const READING: u8 = 0;
const IDLE: u8 = 1;
const ANSWERING: u8 = 2;

/// The order in which connections are closed to make room: reading (or silent)
/// for longer than [`GRACE`], idle after an answer, reading for less.
const STALLED: u8 = 0;
const YOUNG: u8 = 2;

/// How long a new connection, or one that has just begun a request, has before
/// it counts as stalled: Postfix sends its request as it connects, and a client
/// a continent away takes a round trip.
const GRACE: Duration = Duration::from_secs(1);

/// One listener's slots.
pub struct Slots {
    limits: SlotLimits,
    /// For the log: `postfix` or `http`.
    name: &'static str,
    epoch: Instant,
    registry: Mutex<Registry>,
    /// Signalled when a connection closes or finishes an answer, which may make
    /// room for a newcomer waiting in [`Slots::admit`].
    room: Arc<Notify>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
    per_client: HashMap<IpAddr, usize>,
    /// Connections closed and newcomers refused since the last report.
    closed: u64,
    refused: u64,
    last_report: Option<Instant>,
}

/// What a connection shares with its listener's registry.
#[derive(Debug)]
pub struct Conn {
    client: Option<IpAddr>,
    phase: AtomicU8,
    /// Milliseconds from the listener's epoch to when the connection was accepted,
    /// began its current request, or was last answered.
    since: AtomicU64,
    epoch: Instant,
    evict: Notify,
    room: Arc<Notify>,
}

impl Conn {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The first bytes of a request have arrived, and not the rest.
    pub fn begin(&self) {
        self.since.store(self.now(), Ordering::Relaxed);
        self.phase.store(READING, Ordering::Release);
    }

    /// A whole request has been read; it is being answered.
    pub fn answering(&self) {
        self.phase.store(ANSWERING, Ordering::Release);
    }

    /// The answer is given; the connection waits for its next request.
    pub fn answered(&self) {
        self.since.store(self.now(), Ordering::Relaxed);
        self.phase.store(IDLE, Ordering::Release);
        self.room.notify_one();
    }

    /// Whether a request is being answered.
    pub fn is_answering(&self) -> bool {
        self.phase.load(Ordering::Acquire) == ANSWERING
    }

    /// Whether a request has begun and is not yet whole.
    pub fn is_reading(&self) -> bool {
        self.phase.load(Ordering::Acquire) == READING
    }

    /// Completes when the listener has closed this connection to make room.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

/// A connection's hold on a slot; dropping it frees the slot.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    conn: Arc<Conn>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("id", &self.id).finish()
    }
}

impl Slot {
    /// What the connection shares with the registry.
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut registry = self.slots.lock();
        if registry.open.remove(&self.id).is_some() {
            registry.forget_client(self.conn.client);
        }
        drop(registry);
        self.slots.room.notify_one();
    }
}

impl Registry {
    /// Closes connections among those `eligible` to make room, as the module
    /// says. False if every one is being answered.
    ///
    /// When more than twice `batch` connections are reading (a flood), the
    /// `batch` that began reading the longest ago go at once: the burst in which a
    /// flood's closed clients come back is let in with one pass over the registry
    /// rather than one per newcomer, and taking at most half of those reading
    /// never takes the newest. Otherwise one goes, by tier.
    fn make_room(&mut self, eligible: impl Fn(&Conn) -> bool, batch: usize, now: u64) -> bool {
        let grace = u64::try_from(GRACE.as_millis()).unwrap_or(u64::MAX);
        let mut candidates: Vec<((u8, u64), u64)> = self
            .open
            .iter()
            .filter(|(_, conn)| eligible(conn))
            .filter_map(|(id, conn)| {
                let since = conn.since.load(Ordering::Relaxed);
                let tier = match conn.phase.load(Ordering::Acquire) {
                    ANSWERING => return None,
                    READING if now.saturating_sub(since) >= grace => STALLED,
                    READING => YOUNG,
                    _ => IDLE,
                };
                Some(((tier, since), *id))
            })
            .collect();
        let reading = candidates
            .iter()
            .filter(|((tier, _), _)| *tier != IDLE)
            .count();
        if reading > 2 * batch {
            // Among those reading, by age alone.
            candidates.retain(|((tier, _), _)| *tier != IDLE);
            candidates.select_nth_unstable_by_key(batch - 1, |&((_, since), id)| (since, id));
            for &(_, id) in &candidates[..batch] {
                self.evict(id);
            }
            return true;
        }
        match candidates.iter().min() {
            Some(&(_, id)) => {
                self.evict(id);
                true
            }
            None => false,
        }
    }

    fn evict(&mut self, id: u64) {
        if let Some(conn) = self.open.remove(&id) {
            self.forget_client(conn.client);
            self.closed += 1;
            conn.evict.notify_one();
        }
    }

    fn forget_client(&mut self, client: Option<IpAddr>) {
        if let Some(ip) = client
            && let Some(count) = self.per_client.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&ip);
            }
        }
    }

    fn report(&mut self, name: &str, limits: SlotLimits) {
        let now = Instant::now();
        if self
            .last_report
            .is_some_and(|last| now.duration_since(last) < REPORT_EVERY)
        {
            return;
        }
        self.last_report = Some(now);
        warn!(
            listener = name,
            closed = self.closed,
            refused = self.refused,
            max_connections = limits.max_connections,
            max_connections_per_client = limits.max_per_client,
            "connection limit reached: closed the connections longest without an answer \
             to make room (counts since the last report)"
        );
        self.closed = 0;
        self.refused = 0;
    }
}

impl Slots {
    /// Slots for one listener; `name` is for the log.
    pub fn new(limits: SlotLimits, name: &'static str) -> Arc<Slots> {
        Slots::since(limits, name, Instant::now())
    }

    fn since(limits: SlotLimits, name: &'static str, epoch: Instant) -> Arc<Slots> {
        Arc::new(Slots {
            limits: SlotLimits {
                max_connections: limits.max_connections.max(1),
                max_per_client: limits.max_per_client.max(1),
            },
            name,
            epoch,
            registry: Mutex::new(Registry::default()),
            room: Arc::new(Notify::new()),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry is a few counters and a map updated in single steps; a
        // panic elsewhere leaves nothing half-done in it.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection just accepted from `client` (`None`: a unix
    /// socket), making room as the module says. `None` when the client is at its
    /// cap and every one of its connections is being answered: close the newcomer.
    pub async fn admit(self: &Arc<Self>, client: Option<IpAddr>) -> Option<Slot> {
        loop {
            let room = self.room.notified();
            {
                let mut registry = self.lock();
                if let Some(ip) = client
                    && registry.per_client.get(&ip).copied().unwrap_or(0)
                        >= self.limits.max_per_client
                {
                    let batch = batch(self.limits.max_per_client);
                    if !registry.make_room(|conn| conn.client == Some(ip), batch, self.now()) {
                        registry.refused += 1;
                        registry.report(self.name, self.limits);
                        return None;
                    }
                    registry.report(self.name, self.limits);
                }
                if registry.open.len() >= self.limits.max_connections
                    && registry.make_room(|_| true, batch(self.limits.max_connections), self.now())
                {
                    registry.report(self.name, self.limits);
                }
                if registry.open.len() < self.limits.max_connections {
                    let id = registry.next_id;
                    registry.next_id += 1;
                    let conn = Arc::new(Conn {
                        client,
                        phase: AtomicU8::new(READING),
                        since: AtomicU64::new(0),
                        epoch: self.epoch,
                        evict: Notify::new(),
                        room: self.room.clone(),
                    });
                    conn.since.store(conn.now(), Ordering::Relaxed);
                    registry.open.insert(id, conn.clone());
                    if let Some(ip) = client {
                        *registry.per_client.entry(ip).or_insert(0) += 1;
                    }
                    return Some(Slot {
                        slots: self.clone(),
                        id,
                        conn,
                    });
                }
            }
            // Every connection is being answered: wait until one is done.
            room.await;
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }
}

/// The next connection `accept` gives. An error (typically out of descriptors)
/// is logged as `cannot accept {what}` and retried after a pause: retrying at
/// once would spin. Cancel-safe when `accept` is (a listener's accept is).
pub async fn accept_retrying<T, F: Future<Output = std::io::Result<T>>>(
    mut accept: impl FnMut() -> F,
    what: &str,
) -> T {
    loop {
        match accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                warn!(error = %e, "cannot accept {what}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    /// Slots whose clock started a minute ago, so that a connection can be made
    /// to look stalled by [`stall`].
    fn slots(max_connections: usize, max_per_client: usize) -> Arc<Slots> {
        let epoch = Instant::now()
            .checked_sub(Duration::from_secs(60))
            .expect("a minute after boot");
        Slots::since(
            SlotLimits {
                max_connections,
                max_per_client,
            },
            "test",
            epoch,
        )
    }

    /// As if `slot` had sent no whole request since the clock started.
    fn stall(slot: &Slot) {
        slot.conn().since.store(0, Ordering::Relaxed);
    }

    async fn closed(slot: &Slot) -> bool {
        tokio::time::timeout(Duration::from_millis(1), slot.conn().evicted())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_full_listener_closes_a_stalled_connection_before_an_answered_one() {
        let slots = slots(3, 3);
        let stalled = slots.admit(ip(1)).await.expect("room");
        stall(&stalled);
        let answered = slots.admit(ip(2)).await.expect("room");
        answered.conn().answering();
        answered.conn().answered();
        let busy = slots.admit(ip(3)).await.expect("room");
        busy.conn().answering();
        let newcomer = slots.admit(ip(4)).await.expect("room made");
        assert!(closed(&stalled).await);
        assert!(!closed(&answered).await);
        assert!(!closed(&busy).await);
        // Next the idle answered one before the newcomer, which has yet to send
        // its request; never the one being answered.
        let _second = slots.admit(ip(5)).await.expect("room made");
        assert!(closed(&answered).await);
        assert!(!closed(&busy).await);
        assert!(!closed(&newcomer).await);
        assert_eq!(slots.open(), 3);
    }

    #[tokio::test]
    async fn a_client_at_its_cap_closes_its_own_oldest() {
        let slots = slots(10, 2);
        let a1 = slots.admit(ip(1)).await.expect("room");
        let b = slots.admit(ip(2)).await.expect("room");
        let a2 = slots.admit(ip(1)).await.expect("room");
        let _a3 = slots.admit(ip(1)).await.expect("room made");
        assert!(closed(&a1).await);
        assert!(!closed(&b).await && !closed(&a2).await);
        // Every one of its connections being answered: the newcomer is refused.
        a2.conn().answering();
        _a3.conn().answering();
        assert!(slots.admit(ip(1)).await.is_none());
        assert!(slots.admit(ip(3)).await.is_some());
    }

    #[tokio::test]
    async fn a_newcomer_waits_while_every_connection_is_answered() {
        let slots = slots(1, 1);
        let busy = slots.admit(ip(1)).await.expect("room");
        busy.conn().answering();
        let waiting = tokio::time::timeout(Duration::from_millis(50), slots.admit(ip(2))).await;
        assert!(waiting.is_err(), "admitted past the cap");
        let admit = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.admit(ip(2)).await.is_some() })
        };
        busy.conn().answered();
        assert!(admit.await.expect("joins"));
        assert!(closed(&busy).await);
    }
}
