//! The [`Store`] trait every backend implements, and [`StoreSettings`].

use std::time::Duration;

use async_trait::async_trait;

use crate::Replayed;
use crate::error::Result;
use crate::types::{
    AttemptResult, AuditEntry, AuditId, AuditRecord, Cursor, DeliveryId, DestinationStats,
    Ingested, Lease, MessageId, MessageRecord, NewMessage, NewQuarantine, PendingDelivery,
    PruneReport, QuarantineId, QuarantinePage, Retention, SearchPage, SearchQuery, Timestamp,
};

/// The durable message journal: what the gateway stores and how it reads it back.
///
/// Every method that returns `Ok` after a write has made that write durable (committed
/// and synced): the gateway acknowledges a message only after [`Store::ingest`] returns.
/// Reads see every write that returned before they started. The trait is object safe
/// (`Arc<dyn Store>`), so the backend is chosen from configuration at run time.
///
/// Time is always passed in; a store never reads the clock.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    // --- writes ---

    /// Stores a received message and queues one pending delivery per destination, at the
    /// tail of each destination's queue. A message repeating an earlier one (same
    /// [`NewMessage::dedup_key`]) received within the dedup window is stored as a
    /// duplicate with no deliveries. Durable when it returns `Ok`.
    async fn ingest(&self, message: NewMessage) -> Result<Ingested>;

    /// Keeps a frame that is not HL7, for inspection. Durable when it returns `Ok`.
    async fn quarantine(&self, entry: NewQuarantine) -> Result<QuarantineId>;

    /// Records one attempt of a queued delivery made at `at`, and moves the delivery to the
    /// state the result implies. `NotFound` for an unknown delivery, `Conflict` when it is
    /// no longer queued (delivered or dead).
    async fn record_attempt(
        &self,
        delivery: DeliveryId,
        at: Timestamp,
        result: AttemptResult,
    ) -> Result<()>;

    /// Queues the message again, at the tail: to `destination`, or to every destination
    /// it was routed to at ingest. Dead letters of the message to those destinations are
    /// superseded by the new deliveries. `NotFound` for an unknown message, `InvalidInput`
    /// for a destination it was not routed to.
    async fn replay(
        &self,
        message: MessageId,
        destination: Option<&str>,
        at: Timestamp,
    ) -> Result<Vec<DeliveryId>>;

    /// Replays every dead letter of `destination`, in their queue order, each superseded
    /// by its new delivery at the tail.
    async fn replay_dead_letters(&self, destination: &str, at: Timestamp) -> Result<Vec<Replayed>>;

    /// Deletes settled messages (delivered, filtered, duplicate) past the retention
    /// limits, and quarantined frames past `max_age`. Never deletes a message with a
    /// queued or dead-lettered delivery. Runs in bounded chunks so ingest is not held up.
    async fn prune(&self, now: Timestamp, retention: Retention) -> Result<PruneReport>;

    /// Appends to the audit log (never pruned).
    async fn audit(&self, entry: AuditEntry) -> Result<AuditId>;

    /// Takes the lease on `destination` for `node_id` until `now + ttl` if it is free,
    /// expired, or already this node's (then it is extended). True when the node holds it.
    async fn acquire_lease(
        &self,
        destination: &str,
        node_id: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool>;

    /// Extends the node's unexpired lease to `now + ttl`. False when the node does not
    /// hold it (any more): it must stop delivering and acquire again.
    async fn renew_lease(
        &self,
        destination: &str,
        node_id: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool>;

    /// Gives up the node's lease. False when it did not hold it.
    async fn release_lease(&self, destination: &str, node_id: &str) -> Result<bool>;

    // --- reads ---

    /// Up to `limit` deliveries from the head of `destination`'s queue, in order, stopping
    /// at the first one not due at `now`: if the head waits for a retry, nothing is
    /// returned. Reading does not take them out of the queue; only `record_attempt` does,
    /// so after a crash the same deliveries come back.
    async fn next_pending(
        &self,
        destination: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>>;

    /// A message with its bytes, deliveries and attempts; `None` if unknown or pruned.
    async fn message(&self, id: MessageId) -> Result<Option<MessageRecord>>;

    /// Messages matching the query, newest first, one page at a time.
    async fn search(&self, query: SearchQuery) -> Result<SearchPage>;

    /// Quarantined frames, newest first; `limit` is clamped like a search's.
    async fn list_quarantine(&self, limit: usize, cursor: Option<Cursor>)
    -> Result<QuarantinePage>;

    /// The newest `limit` audit entries, newest first.
    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditRecord>>;

    /// Per-destination queue depth, for metrics; cheap enough to call every few seconds.
    /// Lists every destination that ever had a delivery, by name.
    async fn queue_stats(&self) -> Result<Vec<DestinationStats>>;

    /// All leases, expired ones included, by destination.
    async fn leases(&self) -> Result<Vec<Lease>>;

    /// What the writer has done since the store was opened: batches, durable writes and
    /// their time (group commit at work, and how long the disk makes callers wait).
    fn writer_stats(&self) -> crate::WriterStats;

    /// `Ok` when the store can commit a write now (for `/readyz`).
    async fn health(&self) -> Result<()>;

    /// Stops taking requests, finishes the ones already queued, and releases the backend.
    /// Later calls fail with `Closed`. Dropping a store without closing it is safe (what
    /// was acknowledged is durable); closing lets shutdown wait for the last commit.
    async fn close(&self) -> Result<()>;
}

/// Limits and tuning shared by the backends. Every queue and page is bounded by one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreSettings {
    /// Write requests (ingests and other writes) waiting for the writer. When full, callers
    /// wait for room: back pressure reaches the senders as slower ACKs rather than as
    /// unbounded memory. Default 4096.
    pub write_queue: usize,
    /// Most write requests committed in one transaction (one disk sync). Larger batches
    /// raise throughput under load and the latency of the batch's first caller. Default 512.
    pub max_batch: usize,
    /// Under concurrent load (the previous commit held more than one request), how long
    /// the writer may wait for more requests before committing, so that callers answered
    /// by the previous commit share the next sync instead of taking turns. It stops
    /// waiting once no request has arrived for a quarter of this. A lone sender never
    /// waits. Zero disables. Default 200 µs. Not used by SQLite with its ingest journal,
    /// whose thread syncs whatever queued up while the disk was busy.
    pub commit_linger: Duration,
    /// Largest page a search or listing returns, whatever the caller asks. Default 1000.
    pub max_search_limit: usize,
    /// How far back an ingest looks for the message it may repeat. Zero disables
    /// duplicate detection. Keep it below the retention age: a pruned original is not
    /// found. Default 24 hours.
    pub dedup_window: Duration,
    /// Messages deleted per write transaction by `prune`, so a large prune does not hold
    /// up ingest for long. Default 500.
    pub prune_chunk: usize,
    /// Read connections (SQLite) or pool size (PostgreSQL) for reads. Default 4.
    pub read_connections: usize,
    /// How long a read waits for a lock before failing as unavailable. Default 5 s.
    pub busy_timeout: Duration,
    /// SQLite only: the largest the database file may grow (`PRAGMA max_page_count`).
    /// Writes beyond it fail as `Unavailable`, like a full disk, while the disk itself
    /// keeps room for logs and the WAL. Unset (the default): limited by the disk.
    pub max_database_bytes: Option<u64>,
    /// SQLite only: the size of the ingest journal, the file an ingest is made durable in
    /// before its caller is answered (see `sqlite::journal`). Zero turns it off: every
    /// batch is then committed and its WAL synced before its callers are answered, which
    /// costs the writer several times the CPU per message. Default 64 MiB.
    pub journal_bytes: u64,
    /// SQLite with the journal: the most ingests the writer holds in one open transaction
    /// before it commits them. Default 8192.
    pub journal_commit_messages: usize,
    /// SQLite with the journal: the longest the writer keeps a transaction open. A read
    /// never waits for it (it asks for a commit), so this bounds how much the journal
    /// must replay after a crash. Default 200 ms.
    pub journal_commit_interval: Duration,
    /// SQLite with the journal: how long the writer waits for another request before it
    /// commits the open transaction, so that an idle store has everything committed.
    /// Default 2 ms.
    pub journal_idle_commit: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            write_queue: 4096,
            max_batch: 512,
            commit_linger: Duration::from_micros(200),
            max_search_limit: 1000,
            dedup_window: Duration::from_secs(24 * 3600),
            prune_chunk: 500,
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            max_database_bytes: None,
            journal_bytes: 64 << 20,
            journal_commit_messages: 8192,
            journal_commit_interval: Duration::from_millis(200),
            journal_idle_commit: Duration::from_millis(2),
        }
    }
}

impl StoreSettings {
    /// Sets [`StoreSettings::dedup_window`].
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }

    /// Sets [`StoreSettings::max_batch`].
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Sets [`StoreSettings::commit_linger`].
    pub fn commit_linger(mut self, linger: Duration) -> Self {
        self.commit_linger = linger;
        self
    }

    /// Sets [`StoreSettings::write_queue`].
    pub fn write_queue(mut self, n: usize) -> Self {
        self.write_queue = n;
        self
    }

    /// Sets [`StoreSettings::max_search_limit`].
    pub fn max_search_limit(mut self, n: usize) -> Self {
        self.max_search_limit = n;
        self
    }

    /// Sets [`StoreSettings::prune_chunk`].
    pub fn prune_chunk(mut self, n: usize) -> Self {
        self.prune_chunk = n;
        self
    }

    /// Sets [`StoreSettings::read_connections`].
    pub fn read_connections(mut self, n: usize) -> Self {
        self.read_connections = n;
        self
    }

    /// Sets [`StoreSettings::max_database_bytes`].
    pub fn max_database_bytes(mut self, bytes: u64) -> Self {
        self.max_database_bytes = Some(bytes);
        self
    }

    /// Sets [`StoreSettings::journal_bytes`] (zero: no journal).
    pub fn journal_bytes(mut self, bytes: u64) -> Self {
        self.journal_bytes = bytes;
        self
    }

    /// Sets [`StoreSettings::journal_commit_messages`].
    pub fn journal_commit_messages(mut self, n: usize) -> Self {
        self.journal_commit_messages = n;
        self
    }

    /// Sets [`StoreSettings::journal_commit_interval`].
    pub fn journal_commit_interval(mut self, interval: Duration) -> Self {
        self.journal_commit_interval = interval;
        self
    }

    /// Sets [`StoreSettings::journal_idle_commit`].
    pub fn journal_idle_commit(mut self, wait: Duration) -> Self {
        self.journal_idle_commit = wait;
        self
    }

    /// A limit as the store applies it: at most `max_search_limit`.
    pub fn clamp_limit(&self, limit: usize) -> usize {
        limit.min(self.max_search_limit)
    }
}
