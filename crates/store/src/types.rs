//! The values that go in and out of a [`Store`](crate::Store): ids, time, messages,
//! deliveries, attempts, search, quarantine, audit and leases. Backend independent.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::{Result, StoreError};

// === ids ===

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A stored message. Ids grow with arrival order and are never reused, even after a
    /// prune, so an audit entry's ids never point at a different message later.
    MessageId
);
id_type!(
    /// One delivery of one message to one destination. Ids grow with queue order: a
    /// destination's FIFO is its pending deliveries in id order.
    DeliveryId
);
id_type!(
    /// A quarantined frame.
    QuarantineId
);
id_type!(
    /// An audit log entry.
    AuditId
);

// === Timestamp ===

/// A point in time as whole milliseconds since the Unix epoch (UTC), the precision the
/// store keeps. The store never reads the clock: every time is passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The timestamp `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus `d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_millis(d)))
    }

    /// This time minus `d`, saturating at the far past.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_millis(d)))
    }

    /// The same time as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        let magnitude = Duration::from_millis(self.0.unsigned_abs());
        if self.0 >= 0 {
            UNIX_EPOCH + magnitude
        } else {
            UNIX_EPOCH - magnitude
        }
    }
}

impl From<SystemTime> for Timestamp {
    /// Truncates to whole milliseconds; saturates beyond ±292 million years.
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(after) => Timestamp(duration_millis(after)),
            Err(before) => Timestamp(duration_millis(before.duration()).saturating_neg()),
        }
    }
}

fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// === ingest ===

/// A received HL7 message to store, with the metadata the gateway extracted from it.
///
/// Text fields the message does not have are empty strings; only the patient id, the TLS
/// identity and the charset are optional because "absent" means something there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMessage {
    /// The channel (listener) it came in on.
    pub channel: String,
    /// The bytes exactly as received, MLLP framing removed. Stored unchanged.
    pub raw: Bytes,
    /// When it was received.
    pub received_at: Timestamp,
    /// The peer's address as text (`ip:port`), or who injected it.
    pub peer: String,
    /// The verified client certificate identity (mTLS), if any.
    pub tls_identity: Option<String>,
    /// MSH-10.
    pub control_id: String,
    /// MSH-9.1, e.g. `ADT`.
    pub message_type: String,
    /// MSH-9.2, e.g. `A01`.
    pub trigger_event: String,
    /// MSH-3.
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5.
    pub receiving_application: String,
    /// MSH-6.
    pub receiving_facility: String,
    /// The first PID-3.1, if the message has one.
    pub patient_id: Option<String>,
    /// The charset name it was decoded with (MSH-18 or a channel override).
    pub charset: Option<String>,
    /// Where it must be delivered, in routing order. Empty means filtered: stored and
    /// acknowledged but sent nowhere. A name given twice gets one delivery.
    pub destinations: Vec<String>,
}

impl NewMessage {
    /// The key that identifies a resend of the same message: SHA-256 over the channel, the
    /// sender (MSH-3 and MSH-4), the control id and the raw bytes, each length-prefixed so
    /// no two different tuples hash the same input. Every backend stores this same key.
    pub fn dedup_key(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            self.channel.as_bytes(),
            self.sending_application.as_bytes(),
            self.sending_facility.as_bytes(),
            self.control_id.as_bytes(),
            &self.raw[..],
        ] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut key = [0; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    /// Checks what every backend refuses, and returns the destinations without repeats.
    pub fn validated_destinations(&self) -> Result<Vec<&str>> {
        if self.channel.is_empty() {
            return Err(StoreError::InvalidInput("empty channel name".into()));
        }
        let mut out: Vec<&str> = Vec::with_capacity(self.destinations.len());
        for d in &self.destinations {
            if d.is_empty() {
                return Err(StoreError::InvalidInput("empty destination name".into()));
            }
            if !out.contains(&d.as_str()) {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// What [`Store::ingest`](crate::Store::ingest) stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The new message's id (a duplicate gets its own id too: it is recorded).
    pub id: MessageId,
    /// The earlier message this one repeats, within the dedup window. A duplicate gets
    /// no deliveries.
    pub duplicate_of: Option<MessageId>,
    /// The deliveries created, in the order of [`NewMessage::destinations`].
    pub deliveries: Vec<DeliveryId>,
}

/// One dead letter [`Store::replay_dead_letters`](crate::Store::replay_dead_letters)
/// queued again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// The new delivery, at the tail of the queue.
    pub delivery: DeliveryId,
    /// Its message (for the audit log: who replayed which messages).
    pub message: MessageId,
}

/// A frame that is not an HL7 message, kept for inspection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewQuarantine {
    /// The channel it came in on.
    pub channel: String,
    /// When it was received.
    pub received_at: Timestamp,
    /// The peer's address as text.
    pub peer: String,
    /// The verified client certificate identity, if any.
    pub tls_identity: Option<String>,
    /// Why it was refused (the parse error).
    pub reason: String,
    /// The bytes as received.
    pub raw: Bytes,
}

/// A quarantined frame as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRecord {
    /// Its id.
    pub id: QuarantineId,
    /// What was stored.
    pub entry: NewQuarantine,
}

/// One page of [`Store::list_quarantine`](crate::Store::list_quarantine), newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinePage {
    /// The entries.
    pub entries: Vec<QuarantineRecord>,
    /// Pass this to get the next (older) page; `None` on the last page.
    pub next: Option<Cursor>,
}

// === deliveries ===

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryState {
    /// In the queue, not attempted yet.
    Pending,
    /// In the queue: attempted, failed, to be retried at `next_attempt_at`.
    Failed,
    /// Acknowledged by the destination. Final.
    Delivered,
    /// Given up on. Final, but can be replayed.
    DeadLetter,
}

impl DeliveryState {
    /// The name used in storage and APIs.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Failed => "failed",
            DeliveryState::Delivered => "delivered",
            DeliveryState::DeadLetter => "dead_letter",
        }
    }

    /// True while the delivery is in its destination's queue.
    pub const fn is_queued(self) -> bool {
        matches!(self, DeliveryState::Pending | DeliveryState::Failed)
    }
}

impl FromStr for DeliveryState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => DeliveryState::Pending,
            "failed" => DeliveryState::Failed,
            "delivered" => DeliveryState::Delivered,
            "dead_letter" => DeliveryState::DeadLetter,
            other => {
                return Err(StoreError::InvalidInput(format!(
                    "delivery state {other:?}"
                )));
            }
        })
    }
}

/// The head of a destination's queue, as [`Store::next_pending`](crate::Store::next_pending)
/// returns it: enough to send the message and record the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    /// The delivery to pass to `record_attempt`.
    pub id: DeliveryId,
    /// The message.
    pub message_id: MessageId,
    /// The destination (the one asked for).
    pub destination: String,
    /// The message's bytes as received.
    pub raw: Bytes,
    /// MSH-10 of the message, to match the ACK.
    pub control_id: String,
    /// Attempts made so far.
    pub attempts: u32,
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptResult {
    /// The destination accepted the message. The delivery leaves the queue.
    Delivered {
        /// MSA-1 of its ACK (`AA`, `CA`), if it sent one.
        ack_code: Option<String>,
        /// MSA-3 of its ACK, if any.
        ack_text: Option<String>,
        /// The whole ACK as received, if kept.
        ack_raw: Option<Bytes>,
    },
    /// The attempt failed; try again at `retry_at`. The delivery stays at the head of the
    /// queue and blocks the ones behind it until then (strict FIFO).
    Failed {
        /// What went wrong (connect error, timeout, AE/AR text).
        error: String,
        /// When to try again.
        retry_at: Timestamp,
    },
    /// Give up: the delivery leaves the queue as a dead letter.
    DeadLettered {
        /// Why.
        error: String,
    },
}

impl AttemptResult {
    /// A delivery acknowledged with nothing recorded about the ACK.
    pub fn delivered() -> Self {
        AttemptResult::Delivered {
            ack_code: None,
            ack_text: None,
            ack_raw: None,
        }
    }

    /// The state the delivery moves to.
    pub fn next_state(&self) -> DeliveryState {
        match self {
            AttemptResult::Delivered { .. } => DeliveryState::Delivered,
            AttemptResult::Failed { .. } => DeliveryState::Failed,
            AttemptResult::DeadLettered { .. } => DeliveryState::DeadLetter,
        }
    }
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// When it was made.
    pub at: Timestamp,
    /// What came of it.
    pub result: AttemptResult,
}

/// A delivery with its history, as [`MessageRecord`] holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// Its id (queue position).
    pub id: DeliveryId,
    /// The destination.
    pub destination: String,
    /// Its state.
    pub state: DeliveryState,
    /// When it was created: the message's arrival, or the replay.
    pub created_at: Timestamp,
    /// When it may be attempted next (`None`: at once). Meaningful while queued.
    pub next_attempt_at: Option<Timestamp>,
    /// For a replay: the delivery it repeats, if it repeats one to the same destination.
    pub replay_of: Option<DeliveryId>,
    /// For a dead letter that was replayed: the new delivery. A superseded dead letter
    /// no longer counts as dead-lettered.
    pub superseded_by: Option<DeliveryId>,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptRecord>,
}

// === messages ===

/// A message's overall state, derived from its deliveries. Search filters on it.
///
/// The first that applies: `Duplicate`, `Filtered` (no destinations), `DeadLetter` (a
/// dead letter that was not replayed), `Failed` (a delivery waiting for a retry),
/// `Pending`, and `Delivered` when every delivery is delivered (replayed dead letters
/// ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageStatus {
    /// Some delivery is queued and none has failed or died.
    Pending,
    /// Some delivery failed and waits for a retry.
    Failed,
    /// Every delivery is delivered.
    Delivered,
    /// Some delivery is a dead letter (not replayed).
    DeadLetter,
    /// Routed nowhere: stored and acknowledged only.
    Filtered,
    /// A resend of an earlier message within the dedup window.
    Duplicate,
}

impl MessageStatus {
    /// The name used in storage and APIs.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::Failed => "failed",
            MessageStatus::Delivered => "delivered",
            MessageStatus::DeadLetter => "dead_letter",
            MessageStatus::Filtered => "filtered",
            MessageStatus::Duplicate => "duplicate",
        }
    }

    /// True for the states retention may delete: nothing left to deliver.
    pub const fn is_settled(self) -> bool {
        matches!(
            self,
            MessageStatus::Delivered | MessageStatus::Filtered | MessageStatus::Duplicate
        )
    }
}

impl FromStr for MessageStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => MessageStatus::Pending,
            "failed" => MessageStatus::Failed,
            "delivered" => MessageStatus::Delivered,
            "dead_letter" => MessageStatus::DeadLetter,
            "filtered" => MessageStatus::Filtered,
            "duplicate" => MessageStatus::Duplicate,
            other => {
                return Err(StoreError::InvalidInput(format!(
                    "message status {other:?}"
                )));
            }
        })
    }
}

/// A message's metadata, as search returns it (no bytes, no deliveries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSummary {
    /// Its id.
    pub id: MessageId,
    /// Its overall state.
    pub status: MessageStatus,
    /// The message it repeats, for a duplicate.
    pub duplicate_of: Option<MessageId>,
    /// Size of the raw bytes.
    pub size: u64,
    /// Everything given at ingest except the bytes and destinations (`raw` is empty and
    /// `destinations` lists the original routing in a [`MessageRecord`] only).
    pub meta: NewMessage,
}

/// A stored message with everything known about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Metadata and status; `summary.meta.raw` holds the bytes and
    /// `summary.meta.destinations` the destinations it was routed to at ingest.
    pub summary: MessageSummary,
    /// Every delivery (ingest and replays), oldest first, with its attempts.
    pub deliveries: Vec<DeliveryRecord>,
}

/// Filters for [`Store::search`](crate::Store::search). All set filters must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// Only this channel.
    pub channel: Option<String>,
    /// Only messages in this overall state.
    pub status: Option<MessageStatus>,
    /// Only this MSH-9.1.
    pub message_type: Option<String>,
    /// Only this MSH-9.2.
    pub trigger_event: Option<String>,
    /// Only this MSH-10.
    pub control_id: Option<String>,
    /// Only this patient id (first PID-3.1).
    pub patient_id: Option<String>,
    /// Received at or after this time.
    pub received_from: Option<Timestamp>,
    /// Received before this time.
    pub received_until: Option<Timestamp>,
    /// Page size; clamped to [`StoreSettings::max_search_limit`](crate::StoreSettings::max_search_limit). Default 100.
    pub limit: usize,
    /// Continue after this page (from [`SearchPage::next`]).
    pub cursor: Option<Cursor>,
}

impl Default for SearchQuery {
    fn default() -> Self {
        SearchQuery {
            channel: None,
            status: None,
            message_type: None,
            trigger_event: None,
            control_id: None,
            patient_id: None,
            received_from: None,
            received_until: None,
            limit: 100,
            cursor: None,
        }
    }
}

/// One page of search results, newest (highest id) first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    /// The messages.
    pub messages: Vec<MessageSummary>,
    /// Pass this as [`SearchQuery::cursor`] for the next (older) page; `None` on the last.
    pub next: Option<Cursor>,
}

/// An opaque position in a newest-first listing. Its text form is stable across restarts
/// and backends, so an admin UI can put it in a URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(String);

impl Cursor {
    /// The cursor continuing below `id`. For backends.
    pub fn before(id: i64) -> Self {
        Cursor(format!("b{id}"))
    }

    /// The id the next page must stay below. For backends.
    pub fn before_id(&self) -> Result<i64> {
        self.0
            .strip_prefix('b')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| StoreError::InvalidInput(format!("bad cursor {:?}", self.0)))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Cursor {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        let c = Cursor(s.to_owned());
        c.before_id()?;
        Ok(c)
    }
}

// === metrics and retention ===

/// The state of one destination's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationStats {
    /// The destination.
    pub destination: String,
    /// Deliveries in the queue (pending or failed awaiting retry).
    pub pending: u64,
    /// Dead letters not replayed.
    pub dead_lettered: u64,
    /// The earliest arrival time among queued deliveries' messages.
    pub oldest_pending_received_at: Option<Timestamp>,
}

/// What [`Store::prune`](crate::Store::prune) may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete settled messages (and quarantined frames) received longer ago than this.
    pub max_age: Option<Duration>,
    /// Then delete settled messages, oldest first, while the stored raw bytes of all
    /// messages exceed this. Messages not settled count toward the total but stay.
    pub max_total_bytes: Option<u64>,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PruneReport {
    /// Messages deleted.
    pub messages: u64,
    /// Their raw bytes.
    pub bytes: u64,
    /// Quarantined frames deleted.
    pub quarantined: u64,
}

// === audit ===

/// What an operator did.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditAction {
    /// Searched messages.
    Search,
    /// Viewed a message.
    View,
    /// Replayed messages or dead letters.
    Replay,
    /// Injected a message.
    Inject,
    /// Anything else, by name.
    Other(String),
}

impl AuditAction {
    /// The name used in storage and APIs.
    pub fn as_str(&self) -> &str {
        match self {
            AuditAction::Search => "search",
            AuditAction::View => "view",
            AuditAction::Replay => "replay",
            AuditAction::Inject => "inject",
            AuditAction::Other(s) => s,
        }
    }
}

impl From<&str> for AuditAction {
    fn from(s: &str) -> Self {
        match s {
            "search" => AuditAction::Search,
            "view" => AuditAction::View,
            "replay" => AuditAction::Replay,
            "inject" => AuditAction::Inject,
            other => AuditAction::Other(other.to_owned()),
        }
    }
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When.
    pub at: Timestamp,
    /// Who: the API token's name.
    pub actor: String,
    /// From where: the client address.
    pub address: String,
    /// What.
    pub action: AuditAction,
    /// The messages concerned.
    pub message_ids: Vec<MessageId>,
    /// Free text: the search filters, the replay target.
    pub detail: String,
}

/// An audit entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its id.
    pub id: AuditId,
    /// The entry.
    pub entry: AuditEntry,
}

// === leases ===

/// A node's claim to deliver to a destination, until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The destination.
    pub destination: String,
    /// The node holding it.
    pub node_id: String,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_system_time_in_millis() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(Timestamp::from(t).as_millis(), 1_700_000_000_123);
        assert_eq!(
            Timestamp::from(t).to_system_time(),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        let before = UNIX_EPOCH - Duration::from_millis(5);
        assert_eq!(Timestamp::from(before).as_millis(), -5);
        assert_eq!(Timestamp(-5).to_system_time(), before);
        assert_eq!(
            Timestamp(i64::MAX - 1).saturating_add(Duration::from_secs(1)),
            Timestamp(i64::MAX)
        );
    }

    #[test]
    fn cursor_text_form() {
        let c = Cursor::before(42);
        assert_eq!(c.to_string(), "b42");
        assert_eq!("b42".parse::<Cursor>().unwrap(), c);
        assert!("42".parse::<Cursor>().is_err());
        assert!("b".parse::<Cursor>().is_err());
    }

    #[test]
    fn dedup_key_separates_fields() {
        let base = NewMessage {
            channel: "ab".into(),
            sending_application: "c".into(),
            ..NewMessage::default()
        };
        // The same bytes split differently between fields must not collide.
        let shifted = NewMessage {
            channel: "a".into(),
            sending_application: "bc".into(),
            ..NewMessage::default()
        };
        assert_ne!(base.dedup_key(), shifted.dedup_key());
        // Routing and arrival time are not part of the identity.
        let later = NewMessage {
            received_at: Timestamp(99),
            destinations: vec!["x".into()],
            ..base.clone()
        };
        assert_eq!(base.dedup_key(), later.dedup_key());
    }

    #[test]
    fn destinations_are_deduplicated_in_order() {
        let m = NewMessage {
            channel: "c".into(),
            destinations: vec!["b".into(), "a".into(), "b".into()],
            ..NewMessage::default()
        };
        assert_eq!(m.validated_destinations().unwrap(), ["b", "a"]);
    }
}
