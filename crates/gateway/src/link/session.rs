//! One open link, the same on both sides once the hello is done: a writer task sends the
//! queued frames and a heartbeat ping every `heartbeat`; the reader takes frames, stores
//! what the peer sends (in order, one at a time) and hands replies to the link destination
//! that waits for them. Nothing received for `dead_after` means the link is dead: it is
//! closed, every waiting sender learns it, and the edge dials again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Link;
use super::proto::{Frame, Header, Verdict};
use super::receive::{Inbound, Receiver};
use super::transport::Ws;

/// What a link destination waits for before it may forget a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The peer stored it.
    Stored,
    /// The peer's destination answered.
    Outcome,
}

/// The peer's answer to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Durably stored (`id` at the peer; `duplicate`: it had it already).
    Stored {
        /// The peer's message id.
        id: i64,
        /// A resend.
        duplicate: bool,
    },
    /// Not stored; retry later.
    Failed(String),
    /// The peer's destination answered.
    Outcome {
        /// Delivered, retried, or refused for good.
        result: Verdict,
        /// MSA-1 or HTTP status.
        code: Option<String>,
        /// Text.
        text: Option<String>,
    },
}

/// Sent messages tracked per session before old entries waiting only for an outcome are
/// dropped.
const MAX_PENDING: usize = 4096;
/// How long an `end_to_end` outcome is waited for once the message is stored.
const OUTCOME_KEPT: Duration = Duration::from_secs(600);

/// Called with the outcome of a message sent with `want_outcome` whose sender completes
/// on `stored` (an edge channel with `ack = "end_to_end"`).
pub type OutcomeHook = Box<dyn FnOnce(Reply) + Send>;

struct Pending {
    since: Instant,
    n: u64,
    want: Want,
    tx: Option<oneshot::Sender<Reply>>,
    hook: Option<OutcomeHook>,
}

/// An open link to one peer.
pub struct Session {
    /// Process-unique id.
    pub id: u64,
    /// The peer's name.
    pub peer: String,
    tx: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<(String, i64), Pending>>,
    /// Cancelled when the session ends.
    pub closed: CancellationToken,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session and the receiving end of its writer queue (`queue` frames deep).
    pub fn new(id: u64, peer: String, queue: usize) -> (Arc<Session>, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(queue);
        (
            Arc::new(Session {
                id,
                peer,
                tx,
                pending: Mutex::new(HashMap::new()),
                closed: CancellationToken::new(),
            }),
            rx,
        )
    }

    /// Ends the session (the reader and writer stop, waiting senders learn it).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Queues a frame; `false` when the session is over.
    pub async fn send(&self, frame: &Frame) -> bool {
        tokio::select! {
            r = self.tx.send(frame.encode()) => r.is_ok(),
            () = self.closed.cancelled() => false,
        }
    }

    /// Sends a message frame and returns where its answer will come: the reply that
    /// `want` names, or `Failed`. `hook` gets the outcome when the answer awaited is
    /// `Stored` but the frame also asks for the outcome.
    pub async fn send_msg(
        &self,
        frame: &Frame,
        want: Want,
        hook: Option<OutcomeHook>,
    ) -> Option<oneshot::Receiver<Reply>> {
        let Header::Msg { dest, seq, n, .. } = &frame.header else {
            return None;
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut map = self.lock();
            if map.len() >= MAX_PENDING {
                // Keep what someone still waits for: an open answer channel, or an outcome
                // hook not too old. Answers to abandoned attempts go.
                map.retain(|_, p| {
                    p.tx.as_ref().is_some_and(|t| !t.is_closed())
                        || (p.hook.is_some() && p.since.elapsed() < OUTCOME_KEPT)
                });
            }
            map.insert(
                (dest.clone(), *seq),
                Pending {
                    since: Instant::now(),
                    n: *n,
                    want,
                    tx: Some(tx),
                    hook,
                },
            );
        }
        if self.send(frame).await {
            Some(rx)
        } else {
            None
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a reply to whoever waits for it; stale replies (another attempt) are dropped.
    fn resolve(&self, dest: String, seq: i64, n: u64, reply: Reply) {
        let key = (dest, seq);
        let mut hook_call = None;
        {
            let mut map = self.lock();
            let Some(p) = map.get_mut(&key) else {
                return;
            };
            if p.n != n {
                return;
            }
            let finished = match (&reply, p.want) {
                (Reply::Failed(_), _) => {
                    if let Some(tx) = p.tx.take() {
                        let _ = tx.send(reply.clone());
                    }
                    true
                }
                (Reply::Stored { .. }, Want::Stored) => {
                    if let Some(tx) = p.tx.take() {
                        let _ = tx.send(reply.clone());
                    }
                    p.hook.is_none()
                }
                (Reply::Stored { .. }, Want::Outcome) => false,
                // A failed attempt at the peer: it keeps trying; wait for the final one.
                (
                    Reply::Outcome {
                        result: Verdict::Retry,
                        ..
                    },
                    Want::Outcome,
                ) => false,
                (Reply::Outcome { .. }, Want::Outcome) => {
                    if let Some(tx) = p.tx.take() {
                        let _ = tx.send(reply.clone());
                    }
                    true
                }
                (Reply::Outcome { .. }, Want::Stored) => {
                    hook_call = p.hook.take();
                    true
                }
            };
            if finished {
                map.remove(&key);
            }
        }
        if let Some(hook) = hook_call {
            hook(reply);
        }
    }
}

/// Runs an open session until it ends; returns why it ended.
pub async fn run(
    link: Arc<Link>,
    session: Arc<Session>,
    ws: Ws,
    mut queue: mpsc::Receiver<Vec<u8>>,
    receiver: Receiver,
) -> String {
    let peer = session.peer.clone();
    let (mut sink, mut stream) = ws.split();
    let heartbeat = link.config.heartbeat.0;
    let dead_after = link.config.dead_after.0;
    let last_ping: Arc<Mutex<Option<(u64, Instant)>>> = Arc::new(Mutex::new(None));

    // Writer: frames and heartbeats.
    let writer = {
        let session = session.clone();
        let link = link.clone();
        let last_ping = last_ping.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut counter: u64 = 0;
            // A status line (RTT, bytes, messages) about every five minutes.
            let status_every =
                (Duration::from_secs(300).as_millis() / heartbeat.as_millis().max(1)).max(1) as u64;
            let result: Result<(), String> = loop {
                let msg = tokio::select! {
                    () = session.closed.cancelled() => break Ok(()),
                    frame = queue.recv() => match frame {
                        Some(f) => {
                            link.count_bytes(&peer, "sent", f.len());
                            WsMessage::Binary(f.into())
                        }
                        None => break Ok(()),
                    },
                    _ = tick.tick() => {
                        counter += 1;
                        if counter.is_multiple_of(status_every) {
                            link.log_status(&peer);
                        }
                        *last_ping.lock().unwrap_or_else(|p| p.into_inner()) = Some((counter, Instant::now()));
                        WsMessage::Ping(Bytes::copy_from_slice(&counter.to_be_bytes()))
                    }
                };
                if let Err(e) = sink.send(msg).await {
                    break Err(format!("cannot write to the link: {e}"));
                }
            };
            let _ = sink.close().await;
            if let Err(e) = &result {
                session.close();
                debug!(peer = %session.peer, error = %e, "link writer stopped");
            }
            result
        })
    };

    let mut inbound = Inbound::default();
    let reason = loop {
        let next = tokio::select! {
            () = session.closed.cancelled() => break "closed".to_owned(),
            next = tokio::time::timeout(dead_after, stream.next()) => next,
        };
        let msg = match next {
            Err(_) => {
                break format!(
                    "link dead: nothing received from {peer} for {dead_after:?} (heartbeat every {heartbeat:?})"
                );
            }
            Ok(None) => break format!("{peer} closed the link"),
            Ok(Some(Err(e))) => break format!("link read failed: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            WsMessage::Binary(bytes) => {
                link.count_bytes(&peer, "received", bytes.len());
                let frame = match Frame::decode(bytes) {
                    Ok(f) => f,
                    Err(e) => break format!("protocol error from {peer}: {e}"),
                };
                match frame.header {
                    Header::Msg { .. } => {
                        link.count_message(&peer, "received");
                        receiver.handle(&session, frame, &mut inbound).await;
                    }
                    Header::Stored {
                        dest,
                        seq,
                        n,
                        id,
                        duplicate,
                    } => session.resolve(dest, seq, n, Reply::Stored { id, duplicate }),
                    Header::Failed {
                        dest,
                        seq,
                        n,
                        reason,
                    } => session.resolve(dest, seq, n, Reply::Failed(reason)),
                    Header::Outcome {
                        dest,
                        seq,
                        n,
                        result,
                        code,
                        text,
                    } => session.resolve(dest, seq, n, Reply::Outcome { result, code, text }),
                    Header::Hello { .. } | Header::Welcome { .. } | Header::Refused { .. } => {
                        break format!("protocol error from {peer}: handshake frame in a session");
                    }
                }
            }
            WsMessage::Pong(payload) => {
                let sent = *last_ping.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((n, at)) = sent
                    && payload.as_ref() == n.to_be_bytes()
                {
                    link.rtt(&peer, at.elapsed());
                }
            }
            WsMessage::Close(frame) => {
                break format!(
                    "{peer} closed the link{}",
                    frame.map(|f| format!(": {}", f.reason)).unwrap_or_default()
                );
            }
            // Pings are answered by the WebSocket layer; text frames are not ours.
            WsMessage::Ping(_) | WsMessage::Frame(_) => {}
            WsMessage::Text(_) => break format!("protocol error from {peer}: text frame"),
        }
    };
    session.close();
    inbound.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    // Whoever waits for an answer in this session learns that none will come.
    session.lock().clear();
    link.detach(&session, &reason);
    if reason == "closed" {
        info!(%peer, session = session.id, "link session closed");
    } else {
        warn!(%peer, session = session.id, %reason, "link session ended");
    }
    reason
}
