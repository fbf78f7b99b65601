//! The receiving side of a session: a `msg` from the peer is stored through its channel's
//! ingest path (same parsing, routing and duplicate detection as MLLP), with the sender's
//! receipt time, then answered `stored` or `failed`. Messages of one sending destination
//! are taken strictly in order: after a failure, later ones are refused until the sender
//! starts again from the failed one, so the receiving store never holds them out of order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use causeway_store::{AttemptResult, DeliveryState, MessageId, Store, Timestamp};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::proto::{Frame, Header, Verdict};
use super::session::Session;
use super::{Allowed, Link};
use crate::deliver::Attempt;
use crate::ingest::{ChannelIngest, Stored};
use crate::waiters::Waiters;

/// Most messages of one session waiting for their destination's outcome at once; beyond
/// it, no outcome is sent (an `end_to_end` sender then answers AE after its timeout; a hub
/// records a retry after `outcome_timeout`).
pub const MAX_OUTCOME_WAITS: usize = 4096;

/// Where the outcome of a message goes: the latest `msg` asking for it (a resend has a new
/// attempt number), by the receiver's message id.
type Addresses = Arc<Mutex<HashMap<i64, (String, i64, u64)>>>;

/// A session's receiving state.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Sending destinations whose message failed: later ones are refused until the resend.
    broken: HashMap<String, i64>,
    /// Tasks waiting for outcomes.
    outcomes: JoinSet<()>,
    /// Their reply addresses.
    addresses: Addresses,
}

impl Inbound {
    /// Stops the outcome tasks.
    pub fn abort(&mut self) {
        self.outcomes.abort_all();
    }
}

/// What a session needs to take messages in.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// The link (metrics, names).
    pub link: Arc<Link>,
    /// Channels by name.
    pub channels: Arc<BTreeMap<String, Arc<ChannelIngest>>>,
    /// The store (outcomes already settled).
    pub store: Arc<dyn Store>,
    /// Delivery outcomes as workers record them.
    pub waiters: Arc<Waiters>,
    /// Channels this peer may send into.
    pub allowed: Allowed,
    /// The peer's certificate identity, stored with each message.
    pub identity: String,
}

impl Receiver {
    /// Handles one `msg` frame.
    pub async fn handle(&self, session: &Arc<Session>, frame: Frame, inbound: &mut Inbound) {
        let broken = &mut inbound.broken;
        let Header::Msg {
            dest,
            seq,
            n,
            channel,
            id,
            received_at,
            control_id,
            want_outcome,
        } = frame.header
        else {
            return;
        };
        let peer = &session.peer;
        let failed = |reason: String| {
            Frame::new(Header::Failed {
                dest: dest.clone(),
                seq,
                n,
                reason,
            })
        };
        if let Some(&first) = broken.get(&dest) {
            if seq > first {
                session
                    .send(&failed(format!(
                        "message {first} before this one was not stored; send again from there"
                    )))
                    .await;
                return;
            }
            broken.remove(&dest);
        }
        if !self.allowed.0.contains(&channel) {
            let reason = match self.link.role {
                super::config::Role::Hub => format!(
                    "edge {peer} may not use channel {channel:?} (not in its [[link.edge]] channels)"
                ),
                super::config::Role::Edge => {
                    format!("the hub may not send into channel {channel:?} (not in [link] accept)")
                }
            };
            warn!(%peer, %channel, %control_id, "link message refused: {reason}");
            broken.insert(dest.clone(), seq);
            session.send(&failed(reason)).await;
            return;
        }
        let Some(ingest) = self.channels.get(&channel) else {
            let reason = format!("no channel {channel:?} here");
            warn!(%peer, %channel, "link message refused: {reason}");
            broken.insert(dest.clone(), seq);
            session.send(&failed(reason)).await;
            return;
        };
        let stored = ingest
            .store_received_at(
                frame.payload,
                format!("link:{peer}#{id}"),
                Some(self.identity.clone()),
                Timestamp::from_millis(received_at),
            )
            .await;
        match stored {
            Stored::Ok {
                id: stored_id,
                duplicate_of,
                destinations,
            } => {
                let original = duplicate_of.unwrap_or(stored_id);
                if duplicate_of.is_some() {
                    info!(%peer, %channel, %control_id, id = original, "resent message stored already; not delivered again");
                } else {
                    debug!(%peer, %channel, %control_id, id = original, "link message stored");
                }
                session
                    .send(&Frame::new(Header::Stored {
                        dest: dest.clone(),
                        seq,
                        n,
                        id: original,
                        duplicate: duplicate_of.is_some(),
                    }))
                    .await;
                while inbound.outcomes.try_join_next().is_some() {}
                let waiting = {
                    let mut addresses = inbound.addresses.lock().unwrap_or_else(|p| p.into_inner());
                    match addresses.get_mut(&original) {
                        // A resend while the outcome is awaited: answer the new attempt.
                        Some(addr) if want_outcome => {
                            *addr = (dest.clone(), seq, n);
                            true
                        }
                        None if want_outcome && inbound.outcomes.len() < MAX_OUTCOME_WAITS => {
                            addresses.insert(original, (dest.clone(), seq, n));
                            false
                        }
                        _ => {
                            if want_outcome {
                                warn!(%peer, %channel, %control_id, "too many outcomes awaited; this one will not be sent");
                            }
                            true
                        }
                    }
                };
                if want_outcome && !waiting {
                    let addresses = inbound.addresses.clone();
                    let session = session.clone();
                    let store = self.store.clone();
                    let waiters = self.waiters.clone();
                    let first = destinations.first().cloned();
                    inbound.outcomes.spawn(async move {
                        let send = |result: Verdict, code: Option<String>, text: Option<String>| {
                            let mut map = addresses.lock().unwrap_or_else(|p| p.into_inner());
                            let (dest, seq, n) = if result == Verdict::Retry {
                                map.get(&original).cloned()
                            } else {
                                map.remove(&original)
                            }
                            .unwrap_or_default();
                            Frame::new(Header::Outcome {
                                dest,
                                seq,
                                n,
                                result,
                                code,
                                text,
                            })
                        };
                        let Some(first) = first else {
                            let text = "no destination takes this message (filtered)".to_owned();
                            session
                                .send(&send(Verdict::Delivered, None, Some(text)))
                                .await;
                            return;
                        };
                        loop {
                            let (result, code, text) =
                                outcome(&store, &waiters, original, &first).await;
                            let frame = send(result, code, text);
                            if !session.send(&frame).await || result != Verdict::Retry {
                                return;
                            }
                        }
                    });
                }
            }
            Stored::Failed(reason) => {
                broken.insert(dest.clone(), seq);
                session.send(&failed(format!("not stored: {reason}"))).await;
            }
            Stored::Refused { reason, .. } => {
                warn!(%peer, %channel, %control_id, %reason, "link message refused");
                broken.insert(dest.clone(), seq);
                session.send(&failed(reason)).await;
            }
            Stored::NotHl7(e) => {
                warn!(%peer, %channel, error = %e, "link message is not HL7");
                broken.insert(dest.clone(), seq);
                session.send(&failed(format!("not HL7: {e}"))).await;
            }
        }
    }
}

/// Waits for `destination`'s next attempt at message `id` (or finds it settled already):
/// delivered (with its ACK), refused for good, or failed and to be retried.
async fn outcome(
    store: &Arc<dyn Store>,
    waiters: &Waiters,
    id: i64,
    destination: &str,
) -> (Verdict, Option<String>, Option<String>) {
    loop {
        let rx = waiters.register(id, destination);
        // The worker may have settled it before the waiter was registered.
        if let Some(done) = settled(store, id, destination).await {
            waiters.forget(id);
            return done;
        }
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(Attempt::Delivered { code, text, .. })) => {
                return (Verdict::Delivered, code, text);
            }
            Ok(Ok(Attempt::Permanent(e))) => return (Verdict::Refused, None, Some(e.to_string())),
            Ok(Ok(Attempt::Retry(e))) => {
                // The last attempt may have dead-lettered it: the store says.
                if let Some(done) = settled(store, id, destination).await {
                    return done;
                }
                return (Verdict::Retry, None, Some(e.to_string()));
            }
            // Another waiter took the slot: look again, without racing it.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_secs(1)).await,
            // Nothing happened yet: look again.
            Err(_) => {}
        }
    }
}

async fn settled(
    store: &Arc<dyn Store>,
    id: i64,
    destination: &str,
) -> Option<(Verdict, Option<String>, Option<String>)> {
    let record = store.message(MessageId(id)).await.ok()??;
    let d = record
        .deliveries
        .iter()
        .rev()
        .find(|d| d.destination == destination)?;
    match d.state {
        DeliveryState::Delivered => {
            let (code, text) = d
                .attempts
                .iter()
                .rev()
                .find_map(|a| match &a.result {
                    AttemptResult::Delivered {
                        ack_code, ack_text, ..
                    } => Some((ack_code.clone(), ack_text.clone())),
                    _ => None,
                })
                .unwrap_or((None, None));
            Some((Verdict::Delivered, code, text))
        }
        DeliveryState::DeadLetter => {
            let error = d.attempts.iter().rev().find_map(|a| match &a.result {
                AttemptResult::DeadLettered { error } => Some(error.clone()),
                _ => None,
            });
            Some((Verdict::Refused, None, error))
        }
        _ => None,
    }
}
