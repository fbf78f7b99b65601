//! Delivery leases: each destination is delivered by one node at a time.
//!
//! Several gateways may share one store (PostgreSQL). Any of them takes messages in, but a
//! destination's queue must be sent by one node only, or order is lost. So each node's
//! worker for a destination delivers only while its node holds the destination's lease in
//! the store ([`Store::acquire_lease`]). A [`LeaseKeeper`] task per destination does the
//! bookkeeping, apart from the worker so that a long send never delays a renewal:
//!
//! - Not held: it tries to take the lease every `lease_timeout / 10`. The store gives it
//!   only when it is free, expired, or already this node's.
//! - Held: it renews every `lease_timeout * 0.3`, for `lease_timeout * 0.9` each time. A
//!   node that dies stops renewing, its lease expires, and a standby takes it within
//!   `lease_timeout` of the last renewal.
//! - The worker starts an attempt only while the lease has more than a renewal interval
//!   left by the node's own monotonic clock, counted from when the renewal was *asked*
//!   for. A node cut off from the database therefore stops delivering before its lease
//!   can expire in the database and be taken by another node (given clocks in step: the
//!   store compares wall-clock times written by different nodes).
//! - An MLLP or HTTP send still waiting when the lease is about to run out (an ACK wait
//!   can be longer than a lease) is abandoned ([`LeaseCheck::lost`]), so it never
//!   overlaps with the sends of the node that takes over.
//! - On a clean stop the worker finishes its attempt in hand and the lease is released,
//!   so another node takes over within `lease_timeout / 10`.
//!
//! After taking over a lease another node (or an earlier run of this one) did not
//! release, the first messages of the queue may have been sent there without being
//! recorded: the one in hand when it stopped, and those whose attempt records were still on
//! their way (at most `RECORDS_IN_FLIGHT`, see `deliver::Records`). The destination then
//! gets them twice. The worker logs and counts each of those first deliveries
//! (`causeway_lease_possible_duplicates`); they are the only repeats a takeover can cause.
//!
//! With SQLite (one node) the same logic runs and the node always holds every lease.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use causeway_store::{Store, Timestamp};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// This node's identity and the lease timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// This node's name in the `leases` table; unique among the nodes sharing a store.
    pub node_id: String,
    /// How long a silent node keeps its destinations before another takes over.
    pub timeout: Duration,
}

impl LeaseSettings {
    /// How long one acquisition or renewal holds: 0.9 × the timeout.
    pub fn ttl(&self) -> Duration {
        self.timeout.mul_f64(0.9)
    }

    /// How often the holder renews: 0.3 × the timeout (a third of the ttl).
    pub fn renew_every(&self) -> Duration {
        self.timeout.mul_f64(0.3)
    }

    /// How often a node without the lease tries to take it: 0.1 × the timeout.
    pub fn standby_poll(&self) -> Duration {
        self.timeout.mul_f64(0.1)
    }
}

/// The default node id: the host name, with `-<pid>` when `with_pid` (several processes on
/// one host sharing a database must differ).
pub fn default_node_id(with_pid: bool) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        })
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "causeway".to_owned());
    if with_pid {
        format!("{host}-{}", std::process::id())
    } else {
        host
    }
}

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

#[derive(Debug, Default)]
struct State {
    /// Held until then (monotonic clock); `None` when not held.
    held_until: Option<Instant>,
    /// Held at some point by this process.
    ever_held: bool,
    /// The node that held the lease before this one took it over without a release.
    suspect: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken when the lease is taken.
    acquired: Notify,
    /// Woken when the lease is given up or found taken by another node.
    released: Notify,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // Held for a few field accesses, never across an await.
        match self.state.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

/// Whether this node may still deliver for a destination, as [`LeaseKeeper::may_deliver`]
/// tells, from anywhere: a file destination asks again before it makes a run's files
/// visible, since writing and syncing them can take long.
#[derive(Debug, Clone)]
pub struct LeaseCheck {
    shared: Arc<Shared>,
    margin: Duration,
}

impl LeaseCheck {
    /// True when this node holds the lease with more than a renewal interval left.
    pub fn may_deliver(&self) -> bool {
        self.shared.with(|s| {
            s.held_until
                .is_some_and(|until| Instant::now() + self.margin < until)
        })
    }

    /// Resolves once the lease is given up, found taken, or about to run out by this
    /// node's monotonic clock without a renewal: a quarter of a renewal interval before,
    /// which leaves room for late timers and small clock steps. Renewals push it back; in
    /// steady state that point is more than two renewal intervals away.
    ///
    /// A send that is still waiting then (an MLLP destination's ACK can take longer than
    /// the lease has left) is abandoned, so that it never overlaps with the sends of the
    /// node that takes the lease over: that node can take it only once it has expired in
    /// the store, which is later still.
    pub async fn lost(&self) {
        loop {
            // Listening before looking, as in `LeaseKeeper::wait`.
            let released = self.shared.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let until = self
                .shared
                .with(|s| s.held_until)
                .map(|until| until.checked_sub(self.margin / 4).unwrap_or(until));
            match until {
                Some(until) if Instant::now() < until => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until.into()) => {}
                        () = released => {}
                    }
                }
                _ => return,
            }
        }
    }
}

/// Keeps one destination's lease for this node; see the module docs.
#[derive(Debug)]
pub struct LeaseKeeper {
    shared: Arc<Shared>,
    settings: LeaseSettings,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts the keeper task of `destination` (inside a tokio runtime).
    pub fn start(
        store: Arc<dyn Store>,
        destination: String,
        settings: LeaseSettings,
        metrics: Arc<Metrics>,
    ) -> LeaseKeeper {
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep(Keep {
            store,
            destination,
            settings: settings.clone(),
            metrics,
            shared: Arc::clone(&shared),
            stop: stop.clone(),
        }));
        LeaseKeeper {
            shared,
            settings,
            stop,
            task,
        }
    }

    /// True when this node holds the lease with more than a renewal interval left: an
    /// attempt may start.
    pub fn may_deliver(&self) -> bool {
        self.check().may_deliver()
    }

    /// [`LeaseKeeper::may_deliver`] for code that runs elsewhere (a blocking task).
    pub fn check(&self) -> LeaseCheck {
        LeaseCheck {
            shared: Arc::clone(&self.shared),
            margin: self.settings.renew_every(),
        }
    }

    /// Waits until the lease is taken, `max` passes or `stop` is cancelled.
    pub async fn wait(&self, max: Duration, stop: &CancellationToken) {
        // Listening before looking: a lease taken between the caller's `may_deliver` and
        // this wait would otherwise be missed (`notify_waiters` keeps no permit) and cost
        // a whole `max`.
        let acquired = self.shared.acquired.notified();
        tokio::pin!(acquired);
        acquired.as_mut().enable();
        if self.may_deliver() {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = acquired => {}
            () = tokio::time::sleep(max) => {}
        }
    }

    /// The node the lease was taken over from, once, if the queue head may have been in
    /// flight there.
    pub fn take_suspect(&self) -> Option<String> {
        self.shared.with(|s| s.suspect.take())
    }

    /// The queue was empty: nothing was in flight at the previous holder.
    pub fn clear_suspect(&self) {
        self.shared.with(|s| s.suspect = None);
    }

    /// Stops renewing and releases the lease (after the worker's last attempt), so another
    /// node takes over at once.
    pub async fn release(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

struct Keep {
    store: Arc<dyn Store>,
    destination: String,
    settings: LeaseSettings,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

async fn keep(k: Keep) {
    let mut held = false;
    loop {
        held = refresh(&k, held).await;
        let wait = if held {
            k.settings.renew_every()
        } else {
            k.settings.standby_poll()
        };
        tokio::select! {
            () = k.stop.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    k.shared.with(|s| s.held_until = None);
    k.shared.released.notify_waiters();
    k.metrics.lease_held(&k.destination, false);
    if held {
        let released = tokio::time::timeout(
            Duration::from_secs(5),
            k.store.release_lease(&k.destination, &k.settings.node_id),
        )
        .await;
        match released {
            Ok(Ok(_)) => {
                info!(destination = %k.destination, node = %k.settings.node_id, "delivery lease released")
            }
            Ok(Err(error)) => {
                warn!(destination = %k.destination, %error, "cannot release the delivery lease; it expires on its own")
            }
            Err(_) => {
                warn!(destination = %k.destination, "releasing the delivery lease timed out; it expires on its own")
            }
        }
    }
}

/// One acquisition or renewal; returns whether the lease is held now.
async fn refresh(k: &Keep, was_held: bool) -> bool {
    let node = &k.settings.node_id;
    // Who had it, to tell a takeover from a fresh start. Only asked while standing by.
    let previous = if was_held {
        None
    } else {
        match k.store.leases().await {
            Ok(leases) => leases.into_iter().find(|l| l.destination == k.destination),
            Err(error) => {
                warn!(destination = %k.destination, %error, "cannot read the delivery leases; will retry");
                return false;
            }
        }
    };
    let asked = Instant::now();
    let ttl = k.settings.ttl();
    match k
        .store
        .acquire_lease(&k.destination, node, ttl, now())
        .await
    {
        Ok(true) => {
            let ever_held = k.shared.with(|s| {
                s.held_until = Some(asked + ttl);
                std::mem::replace(&mut s.ever_held, true)
            });
            if !was_held {
                match previous {
                    Some(p) if p.node_id != *node || !ever_held => {
                        warn!(destination = %k.destination, node = %node, previous = %p.node_id, "took over the delivery lease from a node that did not release it; the queue head may be delivered twice");
                        k.metrics.lease_takeover(&k.destination);
                        k.shared.with(|s| s.suspect = Some(p.node_id));
                    }
                    _ => {
                        info!(destination = %k.destination, node = %node, "delivery lease acquired");
                    }
                }
                k.metrics.lease_held(&k.destination, true);
                k.shared.acquired.notify_waiters();
            }
            true
        }
        Ok(false) => {
            k.shared.with(|s| s.held_until = None);
            k.shared.released.notify_waiters();
            if was_held {
                warn!(destination = %k.destination, node = %node, "delivery lease lost (expired and taken by another node); delivery stops here");
                k.metrics.lease_held(&k.destination, false);
            }
            false
        }
        Err(error) => {
            // Keep what is left of it: `may_deliver` stops the worker in time.
            let still = k
                .shared
                .with(|s| s.held_until.is_some_and(|u| Instant::now() < u));
            warn!(destination = %k.destination, %error, held = still, "cannot renew the delivery lease; will retry");
            if !still && was_held {
                k.metrics.lease_held(&k.destination, false);
            }
            still
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_adds_up_to_the_timeout() {
        let s = LeaseSettings {
            node_id: "n".into(),
            timeout: Duration::from_secs(15),
        };
        // A dead holder renewed at most its ttl ago; a standby looks within a poll.
        assert_eq!(s.ttl() + s.standby_poll(), s.timeout);
        assert!(s.renew_every() * 3 <= s.ttl());
        assert!(default_node_id(true).ends_with(&format!("-{}", std::process::id())));
        assert!(!default_node_id(false).is_empty());
    }

    fn check_held_for(d: Duration) -> LeaseCheck {
        let shared = Arc::new(Shared::default());
        shared.with(|s| s.held_until = Some(Instant::now() + d));
        LeaseCheck {
            shared,
            margin: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn lost_resolves_when_the_lease_runs_out_and_waits_for_renewals() {
        // Not held: at once.
        let none = LeaseCheck {
            shared: Arc::new(Shared::default()),
            margin: Duration::ZERO,
        };
        tokio::time::timeout(Duration::from_secs(5), none.lost())
            .await
            .expect("a lease not held is lost at once");

        // Held for 1 s and renewed twice by 400 ms, each time with 700 ms still left (slack
        // for a slow machine): lost 1.8 s in (less a quarter of the 10 ms margin), not
        // before.
        let check = check_held_for(Duration::from_millis(1000));
        let started = Instant::now();
        let renewer = {
            let shared = Arc::clone(&check.shared);
            tokio::spawn(async move {
                for _ in 0..2 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    shared.with(|s| {
                        s.held_until = s.held_until.map(|u| u + Duration::from_millis(400))
                    });
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(10), check.lost())
            .await
            .expect("a lease that is not renewed is lost");
        let took = started.elapsed();
        renewer.await.unwrap();
        assert!(
            took >= Duration::from_millis(1790),
            "lost after {took:?}, before the renewed lease ran out"
        );

        // Given up (the keeper stopped): at once, though time was left.
        let check = check_held_for(Duration::from_secs(60));
        let shared = Arc::clone(&check.shared);
        let lost = tokio::spawn(async move { check.lost().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!lost.is_finished(), "lost while held");
        shared.with(|s| s.held_until = None);
        shared.released.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), lost)
            .await
            .expect("a lease given up is lost at once, though it had time left")
            .unwrap();
    }
}
