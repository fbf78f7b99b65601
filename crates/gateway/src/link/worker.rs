//! The link destination: sends its queue to the peer over the current session, up to
//! `window` messages ahead of the first unanswered one, and records each answer in queue
//! order. A message leaves the queue only on the answer it waits for (`stored` from a hub;
//! the on-premises ACK from an edge). A `failed` answer is recorded as a failed attempt
//! with the destination's backoff, and sending starts again from that message; a lost
//! session leaves everything unanswered in the queue, to be sent again on the next one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use causeway_store::{DeliveryId, MessageId, PendingDelivery, Store, Timestamp};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Link;
use super::proto::{Frame, Header, Verdict};
use super::session::{OutcomeHook, Reply, Session, Want};
use crate::deliver::settle;
use crate::deliver::{Attempt, Failure, Policy, Records};
use crate::metrics::Metrics;
use crate::waiters::Waiters;

/// One link destination.
#[derive(Debug)]
pub struct LinkWorker {
    /// Destination name.
    pub name: String,
    /// Local channel.
    pub channel: String,
    /// The peer's channel.
    pub remote_channel: String,
    /// The peer (`hub`, or the edge's name).
    pub peer: String,
    /// What ends a message's delivery.
    pub want: Want,
    /// Ask the peer for the outcome too, and relay it to a waiting `end_to_end` sender.
    pub end_to_end: bool,
    /// Complete an `after_delivery` waiter when the peer has stored it.
    pub after_delivery: bool,
    /// Retry policy.
    pub policy: Policy,
    /// The link.
    pub link: Arc<Link>,
    /// The queue.
    pub store: Arc<dyn Store>,
    /// Woken when a message is queued here.
    pub wake: Arc<Notify>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// `after_delivery` / `end_to_end` waiters.
    pub waiters: Arc<Waiters>,
}

struct InFlight {
    pending: PendingDelivery,
    rx: oneshot::Receiver<Reply>,
    sent: Instant,
}

const POLL: Duration = Duration::from_millis(500);

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

/// Why a round of sending ended.
enum Round {
    /// The session is gone.
    Lost,
    /// Stop.
    Stop,
    /// A failure was recorded: start again from the queue's head.
    Again,
}

impl LinkWorker {
    /// Delivers until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        info!(destination = %self.name, peer = %self.peer, channel = %self.remote_channel, "link destination started");
        loop {
            let session = tokio::select! {
                () = stop.cancelled() => break,
                s = self.link.session(&self.peer) => s,
            };
            let Some(session) = session else { break };
            let mut records = Records::default();
            loop {
                let round = self.round(&session, &stop, &mut records).await;
                // A new round starts again from the queue's head: every answer so far must
                // be recorded first, or the head would be sent again.
                records.flush().await;
                match round {
                    Round::Again => continue,
                    Round::Lost => break,
                    Round::Stop => {
                        info!(destination = %self.name, "link destination stopped");
                        return;
                    }
                }
            }
        }
        info!(destination = %self.name, "link destination stopped");
    }

    async fn round(
        &self,
        session: &Arc<Session>,
        stop: &CancellationToken,
        records: &mut Records,
    ) -> Round {
        let window = self.link.config.window;
        let timeout = self.link.config.outcome_timeout.0;
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut last_sent: Option<DeliveryId> = None;
        let mut store_backoff = Duration::from_millis(100);
        let mut refill = true;
        loop {
            if stop.is_cancelled() {
                return Round::Stop;
            }
            if session.closed.is_cancelled() {
                return Round::Lost;
            }
            // Refill when half the window is free (or on a wake-up with room): one queue
            // read per several answers under load, not one per answer.
            if inflight.len() <= window / 2 || (refill && inflight.len() < window) {
                refill = false;
                let batch = match self.store.next_pending(&self.name, now(), window).await {
                    Ok(b) => b,
                    Err(error) => {
                        warn!(destination = %self.name, %error, "cannot read the delivery queue; retrying");
                        tokio::time::sleep(store_backoff).await;
                        store_backoff = (store_backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                store_backoff = Duration::from_millis(100);
                for pending in batch {
                    if inflight.len() >= window {
                        break;
                    }
                    if last_sent.is_some_and(|l| pending.id <= l) {
                        continue;
                    }
                    let Some(rx) = self.send(session, &pending).await else {
                        return Round::Lost;
                    };
                    last_sent = Some(pending.id);
                    inflight.push_back(InFlight {
                        pending,
                        rx,
                        sent: Instant::now(),
                    });
                }
            }
            if inflight.is_empty() {
                tokio::select! {
                    () = stop.cancelled() => return Round::Stop,
                    () = session.closed.cancelled() => return Round::Lost,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            let deadline = tokio::time::Instant::from_std(inflight[0].sent + timeout);
            let room = inflight.len() < window;
            let front = &mut inflight[0].rx;
            let reply = tokio::select! {
                () = stop.cancelled() => return Round::Stop,
                () = session.closed.cancelled() => return Round::Lost,
                () = self.wake.notified(), if room => {
                    refill = true;
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => None,
                r = front => match r {
                    Ok(r) => Some(r),
                    // The session ended without an answer.
                    Err(_) => return Round::Lost,
                },
            };
            let Some(done) = inflight.pop_front() else {
                continue;
            };
            let elapsed = done.sent.elapsed();
            let attempt = match reply {
                Some(Reply::Stored { id, duplicate }) => Attempt::Delivered {
                    code: None,
                    text: Some(format!(
                        "stored by {} as message {id}{}",
                        self.peer,
                        if duplicate { " (resend)" } else { "" }
                    )),
                    ack: None,
                },
                Some(Reply::Outcome {
                    result: Verdict::Delivered,
                    code,
                    text,
                }) => Attempt::Delivered {
                    code,
                    text,
                    ack: None,
                },
                Some(Reply::Outcome {
                    result: Verdict::Retry,
                    text,
                    ..
                }) => Attempt::Retry(Failure::said(
                    format!("{}: its destination failed", self.peer),
                    text,
                )),
                Some(Reply::Outcome {
                    result: Verdict::Refused,
                    text,
                    ..
                }) => Attempt::Permanent(Failure::said(
                    format!("{} refused it for good", self.peer),
                    text,
                )),
                // The peer's own failure (its store, its queue): its words, not a receiver's.
                Some(Reply::Failed(reason)) => {
                    Attempt::Retry(format!("{}: {reason}", self.peer).into())
                }
                None => Attempt::Retry(Failure::from(match self.want {
                    Want::Stored => format!("{} did not answer within {timeout:?}", self.peer),
                    Want::Outcome => format!(
                        "{} has it stored, but its destination did not answer within {timeout:?}",
                        self.peer
                    ),
                })),
            };
            let moved_on = self.record(&done.pending, attempt, elapsed, records).await;
            if !moved_on {
                // Everything sent after it is answered `failed` by the peer (or is a resend
                // it will recognise): start again from the head, after its retry time.
                return Round::Again;
            }
        }
    }

    /// Sends one message; `None` when the session is gone.
    async fn send(
        &self,
        session: &Arc<Session>,
        pending: &PendingDelivery,
    ) -> Option<oneshot::Receiver<Reply>> {
        // The receipt time travels with the message: the peer stores it with the same time
        // so that a resend is recognised as a duplicate however late it comes.
        let received_at = loop {
            match self.store.message(pending.message_id).await {
                Ok(Some(r)) => break r.summary.meta.received_at,
                Ok(None) => break now(),
                Err(error) => {
                    warn!(destination = %self.name, %error, "cannot read a queued message; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let frame = Frame {
            header: Header::Msg {
                dest: self.name.clone(),
                seq: pending.id.0,
                n: self.link.next_id(),
                channel: self.remote_channel.clone(),
                id: pending.message_id.0,
                received_at: received_at.as_millis(),
                control_id: pending.control_id.clone(),
                want_outcome: self.want == Want::Outcome || self.end_to_end,
            },
            payload: pending.raw.clone(),
        };
        let hook: Option<OutcomeHook> = if self.end_to_end && self.want == Want::Stored {
            let waiters = self.waiters.clone();
            let id = pending.message_id;
            let name = self.name.clone();
            Some(Box::new(move |reply: Reply| {
                relay_outcome(&waiters, id, &name, reply);
            }))
        } else {
            None
        };
        let rx = session.send_msg(&frame, self.want, hook).await?;
        self.link.count_message(&self.peer, "sent");
        debug!(destination = %self.name, seq = pending.id.0, control_id = %pending.control_id, "sent over the link");
        Some(rx)
    }

    /// Starts the attempt's record (see `deliver::Records`: the worker handles the next
    /// answers while it is written); `true` when the queue moves on.
    async fn record(
        &self,
        pending: &PendingDelivery,
        attempt: Attempt,
        elapsed: Duration,
        records: &mut Records,
    ) -> bool {
        let (result, moved_on) = settle(
            &self.policy,
            &self.metrics,
            &self.channel,
            &self.name,
            "link ",
            pending,
            &attempt,
            elapsed,
        );
        let tell = (self.after_delivery || !matches!(attempt, Attempt::Delivered { .. }))
            .then_some((&self.waiters, pending.message_id.0, attempt));
        records
            .record(&self.store, &self.name, pending.id, result, tell)
            .await;
        moved_on
    }
}

/// `end_to_end`: the hub's destination answered; wake the EHR's connection waiting for it.
fn relay_outcome(waiters: &Waiters, id: MessageId, destination: &str, reply: Reply) {
    let attempt = match reply {
        Reply::Outcome {
            result: Verdict::Delivered,
            code,
            text,
        } => Attempt::Delivered {
            code,
            text,
            ack: None,
        },
        Reply::Outcome {
            result: Verdict::Retry,
            text,
            ..
        } => Attempt::Retry(Failure::said("its destination failed", text)),
        Reply::Outcome { text, .. } => Attempt::Permanent(Failure::said("refused for good", text)),
        Reply::Failed(e) => Attempt::Retry(e.into()),
        Reply::Stored { .. } => return,
    };
    waiters.complete(id.0, destination, &attempt);
}
