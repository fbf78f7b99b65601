//! The receiving side of a channel: parse, route, store durably, then acknowledge.
//!
//! The order is the point: the sender's AA/CA is written only after [`Store::ingest`]
//! returned, which means the transaction holding the message is synced to disk. Garbage gets
//! an AR and is quarantined; a store failure gets AE/CE and an error log, never an AA.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use causeway_message::Message;
use causeway_message::ack::{Ack, AckCode, AckMode, ErrorCode, Outcome};
use causeway_mllp::ack::{ControlIds, hl7_timestamp, nak_for_parse_error};
use causeway_mllp::server::{ConnectionInfo, Handler, Reply};
use causeway_store::{NewMessage, NewQuarantine, Store, Timestamp};
use tokio::sync::{Notify, oneshot};
use tracing::{debug, error, info, warn};

use crate::config::AckPolicy;
use crate::deliver::Attempt;
use crate::metrics::Metrics;
use crate::route::{Filter, Header};
use crate::waiters::Waiters;

/// One destination as the router sees it.
#[derive(Debug, Clone)]
pub struct Route {
    /// Destination name.
    pub destination: String,
    /// Its filter.
    pub filter: Filter,
    /// Wakes its worker.
    pub wake: Arc<Notify>,
}

/// A channel's ingest path, shared by its connections (and by message injection).
#[derive(Debug)]
pub struct ChannelIngest {
    /// Channel name.
    pub name: String,
    /// The journal.
    pub store: Arc<dyn Store>,
    /// Destinations in configuration order (the first is the one `after_delivery` waits for).
    pub routes: Vec<Route>,
    /// When to acknowledge.
    pub ack_policy: AckPolicy,
    /// With `after_delivery`, how long to wait.
    pub ack_timeout: Duration,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// `after_delivery` waiters.
    pub waiters: Arc<Waiters>,
    /// MSH-10 of our ACKs.
    pub control_ids: Arc<ControlIds>,
}

/// The outcome of storing one message, for the MLLP reply or the admin API.
#[derive(Debug)]
pub enum Stored {
    /// Stored (or recognised as a duplicate); `id` is the store id.
    Ok {
        /// Store id.
        id: i64,
        /// The earlier message this repeats.
        duplicate_of: Option<i64>,
        /// Destinations it was routed to.
        destinations: Vec<String>,
    },
    /// Not HL7: quarantined.
    NotHl7(causeway_message::ParseError),
    /// HL7, but not acceptable (no MSH-10, so no ACK could name it): quarantined, AR.
    Refused {
        /// The HL70357 code for the ERR segment.
        code: ErrorCode,
        /// Why, for the ERR segment and the log.
        reason: String,
    },
    /// The store failed: not stored.
    Failed(String),
}

impl ChannelIngest {
    /// Parses, routes and stores `raw`, received from `peer`.
    pub async fn store(&self, raw: Bytes, peer: String, tls_identity: Option<String>) -> Stored {
        let now = Timestamp::from(SystemTime::now());
        self.store_received_at(raw, peer, tls_identity, now).await
    }

    /// [`ChannelIngest::store`] with the time of receipt given: the link stores a message
    /// with the time its sender received it, so that a resend is found as a duplicate.
    pub async fn store_received_at(
        &self,
        raw: Bytes,
        peer: String,
        tls_identity: Option<String>,
        received_at: Timestamp,
    ) -> Stored {
        match Message::parse(&raw) {
            Ok(msg) => {
                self.store_parsed(&raw, &msg, peer, tls_identity, received_at, false)
                    .await
                    .0
            }
            Err(e) => {
                self.quarantine(&raw, e.to_string(), peer, tls_identity)
                    .await;
                Stored::NotHl7(e)
            }
        }
    }

    /// Keeps bytes that were refused, for inspection.
    async fn quarantine(
        &self,
        raw: &Bytes,
        reason: String,
        peer: String,
        tls_identity: Option<String>,
    ) {
        Metrics::count(&self.metrics.quarantined, &self.name);
        let entry = NewQuarantine {
            channel: self.name.clone(),
            received_at: Timestamp::from(SystemTime::now()),
            peer,
            tls_identity,
            reason,
            raw: raw.clone(),
        };
        if let Err(store_error) = self.store.quarantine(entry).await {
            error!(channel = %self.name, %store_error, "cannot quarantine a refused frame");
        }
    }

    /// [`ChannelIngest::store`] for a message already parsed (the MLLP path parses once).
    ///
    /// With `wait`, and an ACK policy that waits for the first destination, the waiter is
    /// registered before the destination's worker is woken (returned with the outcome).
    /// The worker may still have delivered the message already (it can see an ingest a
    /// moment before the store answers it); [`Waiters`] keeps such early outcomes.
    async fn store_parsed(
        &self,
        raw: &Bytes,
        msg: &Message<'_>,
        peer: String,
        tls_identity: Option<String>,
        received_at: Timestamp,
        wait: bool,
    ) -> (Stored, Option<oneshot::Receiver<Attempt>>) {
        if msg.control_id().is_none() {
            // An ACK names its message by MSA-2 = MSH-10: without one the sender could not
            // match our AA, and an MLLP destination could not match its receiver's. Refuse it
            // now rather than accept something that cannot be delivered.
            let reason =
                "MSH-10 (message control ID) is empty: no acknowledgement could name this message"
                    .to_owned();
            self.quarantine(raw, reason.clone(), peer, tls_identity)
                .await;
            return (
                Stored::Refused {
                    code: ErrorCode::RequiredFieldMissing,
                    reason,
                },
                None,
            );
        }
        self.metrics.received(&self.name, raw.len());
        let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
        let h = msg.header();
        let field = |n| text(h.field(n).as_bytes());
        let message_type = text(msg.message_code());
        let trigger_event = text(msg.trigger_event());
        let header = Header {
            message_type: if trigger_event.is_empty() {
                message_type.clone()
            } else {
                format!("{message_type}^{trigger_event}")
            },
            sending_application: field(3),
            sending_facility: field(4),
            receiving_application: field(5),
            receiving_facility: field(6),
        };
        let destinations: Vec<String> = self
            .routes
            .iter()
            .filter(|r| r.filter.accepts(&header))
            .map(|r| r.destination.clone())
            .collect();
        let patient_id = msg
            .get("PID-3[1].1")
            .ok()
            .and_then(|v| v.as_bytes())
            .filter(|b| !b.is_empty())
            .map(|b| text(Some(b)));
        let new = NewMessage {
            channel: self.name.clone(),
            raw: raw.clone(),
            received_at,
            peer,
            tls_identity,
            control_id: text(msg.control_id()),
            message_type,
            trigger_event,
            sending_application: header.sending_application,
            sending_facility: header.sending_facility,
            receiving_application: header.receiving_application,
            receiving_facility: header.receiving_facility,
            patient_id,
            charset: msg
                .declared_charset()
                .ok()
                .flatten()
                .map(|c| c.hl7_name().to_owned()),
            destinations: destinations.clone(),
        };
        match self.store.ingest(new).await {
            Ok(ingested) => {
                let waiter = match (self.ack_policy, self.routes.first()) {
                    (AckPolicy::AfterDelivery | AckPolicy::EndToEnd, Some(first))
                        if wait
                            && ingested.duplicate_of.is_none()
                            && destinations.contains(&first.destination) =>
                    {
                        Some(self.waiters.register(ingested.id.0, &first.destination))
                    }
                    _ => None,
                };
                if ingested.duplicate_of.is_some() {
                    Metrics::count(&self.metrics.duplicates, &self.name);
                } else if destinations.is_empty() {
                    Metrics::count(&self.metrics.filtered, &self.name);
                } else {
                    for route in self
                        .routes
                        .iter()
                        .filter(|r| destinations.contains(&r.destination))
                    {
                        route.wake.notify_one();
                    }
                }
                (
                    Stored::Ok {
                        id: ingested.id.0,
                        duplicate_of: ingested.duplicate_of.map(|d| d.0),
                        destinations,
                    },
                    waiter,
                )
            }
            Err(e) => {
                Metrics::count(&self.metrics.store_failures, &self.name);
                error!(channel = %self.name, control_id = %text(msg.control_id()), error = %e, "message NOT stored; answering with an error ACK");
                (Stored::Failed(e.to_string()), None)
            }
        }
    }

    fn ack(&self, msg: &Message<'_>, code: AckCode) -> Ack {
        Ack::for_message(msg, code.outcome())
            .code(code)
            .control_id(self.control_ids.next_id())
            .timestamp(hl7_timestamp(SystemTime::now()))
    }

    /// Handles one message from an MLLP connection and returns the reply.
    pub async fn handle(&self, raw: Bytes, conn: &ConnectionInfo) -> Reply {
        let peer = conn.peer_addr.to_string();
        let identity = conn.peer_identity.as_ref().and_then(|i| {
            i.common_name
                .clone()
                .or_else(|| i.dns_names.first().cloned())
        });
        let msg = match Message::parse(&raw) {
            Ok(msg) => msg,
            Err(e) => {
                self.quarantine(&raw, e.to_string(), peer, identity).await;
                warn!(channel = %self.name, len = raw.len(), error = %e, "frame is not HL7: quarantined, answering AR");
                self.metrics.acked(&self.name, "AR");
                return nak_for_parse_error(&raw, &e, &self.control_ids, SystemTime::now()).into();
            }
        };
        let now = Timestamp::from(SystemTime::now());
        let (stored, waiter) = self
            .store_parsed(&raw, &msg, peer, identity, now, true)
            .await;
        let mode = AckMode::of(&msg);
        let (code, text, error) = match stored {
            Stored::Failed(reason) => (
                mode.commit_code(Outcome::Error),
                None,
                Some((
                    ErrorCode::ApplicationInternal,
                    format!("message not stored, send it again: {reason}"),
                )),
            ),
            Stored::Ok {
                id,
                duplicate_of,
                destinations,
            } => {
                debug!(channel = %self.name, id, duplicate = duplicate_of.is_some(), destinations = destinations.len(), "stored");
                match (waiter, self.routes.first()) {
                    (Some(waiter), Some(first)) => {
                        self.relay(&msg, id, &first.destination, mode, waiter).await
                    }
                    _ => (mode.commit_code(Outcome::Accept), None, None),
                }
            }
            Stored::Refused { code, reason } => {
                warn!(channel = %self.name, len = raw.len(), %reason, "message refused: quarantined, answering AR");
                (
                    mode.commit_code(Outcome::Reject),
                    None,
                    Some((code, reason)),
                )
            }
            Stored::NotHl7(_) => unreachable!("handled above"),
        };
        let mut code = code;
        if !mode.commit_ack_due(code.outcome()) {
            // Enhanced mode, and MSH-15 wants no accept ACK for this outcome. Storing the
            // message is this gateway's application processing, so when MSH-16 asks for an
            // application ACK, that is the reply (AA/AE/AR); otherwise there is none.
            match mode {
                AckMode::Enhanced { application, .. } if application.applies(code.outcome()) => {
                    code = AckMode::Original.commit_code(code.outcome());
                }
                _ => {
                    self.metrics.acked(&self.name, "none");
                    return Reply::Nothing;
                }
            }
        }
        let mut ack = self.ack(&msg, code);
        if let Some(text) = text {
            ack = ack.text(text);
        }
        if let Some((code, text)) = error {
            ack = ack.error(code, text);
        }
        self.metrics.acked(&self.name, code.as_str());
        ack.encode().into()
    }

    /// `after_delivery`: waits for the first destination's outcome and turns it into the
    /// reply's code and text.
    async fn relay(
        &self,
        msg: &Message<'_>,
        id: i64,
        destination: &str,
        mode: AckMode,
        rx: oneshot::Receiver<Attempt>,
    ) -> (AckCode, Option<String>, Option<(ErrorCode, String)>) {
        let outcome = tokio::time::timeout(self.ack_timeout, rx).await;
        let original = matches!(mode, AckMode::Original);
        let relay_code = |code: Option<&str>, fallback: Outcome| {
            code.and_then(|c| AckCode::from_bytes(c.as_bytes()))
                .unwrap_or(if original {
                    AckMode::Original.commit_code(fallback)
                } else {
                    mode.commit_code(fallback)
                })
        };
        match outcome {
            Ok(Ok(Attempt::Delivered { code, text, .. })) => {
                (relay_code(code.as_deref(), Outcome::Accept), text, None)
            }
            Ok(Ok(Attempt::Retry(error))) => (
                mode.commit_code(Outcome::Error),
                None,
                Some((
                    ErrorCode::ApplicationInternal,
                    format!("{destination}: {error}; stored, delivery will be retried"),
                )),
            ),
            Ok(Ok(Attempt::Permanent(error))) => (
                mode.commit_code(Outcome::Reject),
                None,
                Some((
                    ErrorCode::ApplicationInternal,
                    format!("{destination}: {error}"),
                )),
            ),
            Ok(Err(_)) | Err(_) => {
                self.waiters.forget(id);
                // The worker may have finished before the waiter was registered: the store
                // has the answer then. (Not end to end: a link delivery recorded in the
                // store means "stored at the hub", not the hub destination's answer.)
                if self.ack_policy != AckPolicy::EndToEnd
                    && let Ok(Some(record)) =
                        self.store.message(causeway_store::MessageId(id)).await
                    && let Some(d) = record
                        .deliveries
                        .iter()
                        .find(|d| d.destination == destination)
                    && d.state == causeway_store::DeliveryState::Delivered
                {
                    let (code, text) = d
                        .attempts
                        .iter()
                        .rev()
                        .find_map(|a| match &a.result {
                            causeway_store::AttemptResult::Delivered {
                                ack_code, ack_text, ..
                            } => Some((ack_code.clone(), ack_text.clone())),
                            _ => None,
                        })
                        .unwrap_or_default();
                    return (relay_code(code.as_deref(), Outcome::Accept), text, None);
                }
                info!(channel = %self.name, id, %destination, "no delivery outcome within the ACK timeout; answering AE");
                let _ = msg;
                (
                    mode.commit_code(Outcome::Error),
                    None,
                    Some((
                        ErrorCode::ApplicationInternal,
                        format!(
                            "{destination} did not answer within {:?}; the message is stored and will be delivered",
                            self.ack_timeout
                        ),
                    )),
                )
            }
        }
    }
}

/// The MLLP handler of a channel.
#[derive(Debug, Clone)]
pub struct ChannelHandler(pub Arc<ChannelIngest>);

impl Handler for ChannelHandler {
    fn call(
        &self,
        message: Bytes,
        conn: ConnectionInfo,
    ) -> impl std::future::Future<Output = Reply> + Send {
        let ingest = self.0.clone();
        async move { ingest.handle(message, &conn).await }
    }
}
