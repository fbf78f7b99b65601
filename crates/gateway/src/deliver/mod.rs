//! Delivery: one worker per destination takes the head of its queue from the store, sends
//! it, and records the outcome. Strict FIFO per destination: a failed head is retried (with
//! exponential backoff and jitter) before anything behind it, unless the destination
//! dead-letters after `max_attempts`.
//!
//! A worker delivers only while its node holds the destination's lease ([`lease`]), so
//! that of several gateways sharing one store exactly one sends each queue.
//!
//! # Layout
//! - [`mllp`], [`http`], [`file`]: the three kinds of destination.
//! - [`lease`]: the delivery lease of a destination.
//! - [`Worker`]: the loop around them.

pub mod file;
pub mod http;
pub mod lease;
pub mod mllp;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use causeway_store::{AttemptResult, DeliveryId, PendingDelivery, Store, Timestamp};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{DestinationConfig, DestinationKind, OnFailure};
use crate::metrics::Metrics;
use crate::waiters::Waiters;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The destination took it; the ACK code and text when there was one.
    Delivered {
        /// MSA-1 (or the HTTP status as text).
        code: Option<String>,
        /// MSA-3 or the ERR text, or a short response body.
        text: Option<String>,
        /// The whole ACK as received (MLLP), kept with the attempt.
        ack: Option<bytes::Bytes>,
    },
    /// A failure a retry may fix (connection, timeout, AE, HTTP 5xx).
    Retry(Failure),
    /// A failure no retry will fix (AR, HTTP 4xx in the permanent list).
    Permanent(Failure),
}

/// Why an attempt failed: what happened, and what the receiver said about it (the text of
/// its ACK's MSA-3 or ERR segment, or of the link's reply). Both are stored with the
/// attempt (`Display` gives both); logs get only `what`: a receiver's error text can quote
/// the message, patient identifiers included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What happened, in the gateway's words (`AE from the receiver`, `HTTP 503`).
    pub what: String,
    /// The receiver's own words, if it gave any.
    pub said: Option<String>,
}

impl Failure {
    /// `what`, with what the receiver `said` (empty text counts as nothing said).
    pub fn said(what: impl Into<String>, said: Option<String>) -> Failure {
        Failure {
            what: what.into(),
            said: said.filter(|s| !s.is_empty()),
        }
    }
}

impl From<String> for Failure {
    fn from(what: String) -> Failure {
        Failure { what, said: None }
    }
}

impl From<&str> for Failure {
    fn from(what: &str) -> Failure {
        Failure::from(what.to_owned())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.said {
            Some(said) => write!(f, "{}: {said}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// A message as a destination sees it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Store id.
    pub message_id: i64,
    /// The bytes as received.
    pub raw: bytes::Bytes,
    /// MSH-10.
    pub control_id: String,
}

/// One destination's sender.
#[derive(Debug)]
pub enum Sender {
    /// MLLP (boxed: its client holds buffers and TLS state, much larger than the others).
    Mllp(Box<mllp::MllpSender>),
    /// HTTP POST.
    Http(http::HttpSender),
    /// Files.
    File(file::FileSender),
}

impl Sender {
    /// Builds the sender a destination's configuration describes.
    pub fn new(channel: &str, config: &DestinationConfig) -> Result<Sender, String> {
        Ok(match &config.kind {
            DestinationKind::Mllp(m) => Sender::Mllp(Box::new(mllp::MllpSender::new(m)?)),
            DestinationKind::Http(h) => Sender::Http(http::HttpSender::new(h, &config.name)?),
            DestinationKind::File(f) => Sender::File(file::FileSender::new(f, channel)?),
            DestinationKind::Link(_) => {
                return Err("a link destination is run by the link, not a delivery worker".into());
            }
        })
    }

    /// How many messages one [`Sender::send_run`] takes: a file destination shares its
    /// syncs among a run of files; MLLP and HTTP send one message at a time.
    fn run_len(&self) -> usize {
        match self {
            Sender::File(_) => file::MAX_RUN,
            Sender::Mllp(_) | Sender::Http(_) => 1,
        }
    }

    /// Sends the first [`Sender::run_len`] of `messages`, in order, stopping at the first
    /// failure: one attempt per message sent, the failed one last.
    /// A file run asks `lease` again before it makes its files visible.
    async fn send_run(&mut self, messages: &[Outgoing], lease: lease::LeaseCheck) -> Vec<Attempt> {
        let Some(first) = messages.first() else {
            return Vec::new();
        };
        // An MLLP or HTTP send still waiting when the lease runs out is abandoned, so it
        // cannot overlap with the next holder's sends (see `LeaseCheck::lost`). A file run
        // is not: its blocking writes would go on without it; it checks the lease itself
        // before it makes its files visible.
        let abandoned = || {
            Attempt::Retry(
                "delivery lease lost while waiting for the destination; another node delivers from here"
                    .into(),
            )
        };
        match self {
            Sender::Mllp(s) => {
                let sent = tokio::select! {
                    biased;
                    attempt = s.send(first) => Some(attempt),
                    () = lease.lost() => None,
                };
                vec![sent.unwrap_or_else(|| {
                    s.abandon();
                    abandoned()
                })]
            }
            Sender::Http(s) => {
                let sent = tokio::select! {
                    biased;
                    attempt = s.send(first) => attempt,
                    () = lease.lost() => abandoned(),
                };
                vec![sent]
            }
            Sender::File(s) => s.send_run(messages, move || lease.may_deliver()).await,
        }
    }
}

/// Retry policy of one destination.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Block or dead-letter.
    pub on_failure: OnFailure,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl Policy {
    /// From the destination's configuration.
    pub fn new(c: &DestinationConfig) -> Policy {
        Policy {
            on_failure: c.on_failure,
            max_attempts: c.max_attempts,
            retry_initial: c.retry_initial.0,
            retry_max: c.retry_max.0,
        }
    }

    /// The delay after failed attempt number `attempts` (1-based), with up to 25% jitter.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let backoff = causeway_mllp::client::Backoff::default();
        let mut b = backoff;
        b.initial = self.retry_initial;
        b.max = self.retry_max;
        b.delay(attempts.saturating_sub(1))
    }
}

/// The worker of one destination.
#[derive(Debug)]
pub struct Worker {
    /// Destination name.
    pub name: String,
    /// Channel name (for metrics).
    pub channel: String,
    /// Sender.
    pub sender: Sender,
    /// Retry policy.
    pub policy: Policy,
    /// Where the queue lives.
    pub store: Arc<dyn Store>,
    /// Woken when a message is queued for this destination.
    pub wake: Arc<Notify>,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// `after_delivery` acknowledgements waiting for this destination's outcome.
    pub waiters: Arc<Waiters>,
    /// This node's id and the lease timing.
    pub lease: lease::LeaseSettings,
}

/// How often an idle worker looks at its queue even without a wake-up (replays and retries
/// made elsewhere, e.g. by the admin API, are picked up within this time).
const POLL: Duration = Duration::from_millis(500);
/// How many deliveries one store read fetches.
const BATCH: usize = 64;
// One read is at most one file run, and the worker waits for every record before the next
// read: so what a takeover may repeat is one run, or the records in flight and the message
// in hand ([`Suspects`]). A larger read would let a second run go out while the first
// one's records are on their way.
const _: () = assert!(BATCH <= file::MAX_RUN);
/// How many attempt records may be on their way to the store while the worker sends the
/// next messages (see [`Records`]).
const RECORDS_IN_FLIGHT: usize = 8;

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

impl Worker {
    /// Delivers until `stop` is cancelled; finishes the attempt in hand first.
    pub async fn run(mut self, stop: CancellationToken) {
        info!(destination = %self.name, node = %self.lease.node_id, "delivery worker started");
        let lease = lease::LeaseKeeper::start(
            self.store.clone(),
            self.name.clone(),
            self.lease.clone(),
            self.metrics.clone(),
        );
        let mut store_backoff = Duration::from_millis(100);
        let mut records = Records::default();
        let mut suspects = Suspects::default();
        loop {
            // The queue is read again only once every attempt so far is recorded: the
            // read must not hand out a delivery that was just made.
            records.flush().await;
            if stop.is_cancelled() {
                break;
            }
            if !lease.may_deliver() {
                // Another node delivers (or the store is out of reach): stand by.
                lease.wait(self.lease.standby_poll(), &stop).await;
                continue;
            }
            let batch = match self.store.next_pending(&self.name, now(), BATCH).await {
                Ok(batch) => {
                    store_backoff = Duration::from_millis(100);
                    batch
                }
                Err(error) => {
                    warn!(destination = %self.name, %error, "cannot read the delivery queue; retrying");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(store_backoff) => {}
                    }
                    store_backoff = (store_backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            if batch.is_empty() {
                lease.clear_suspect();
                suspects = Suspects::default();
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            let mut rest = &batch[..];
            while !rest.is_empty() {
                if stop.is_cancelled() || !lease.may_deliver() {
                    break;
                }
                let (run, after) = rest.split_at(self.sender.run_len().min(rest.len()));
                if let Some(previous) = lease.take_suspect() {
                    let window = (RECORDS_IN_FLIGHT + 1).max(self.sender.run_len());
                    suspects = Suspects::after_takeover(previous, window);
                }
                if !self
                    .attempt(run, lease.check(), &mut records, &mut suspects)
                    .await
                {
                    // A failure: nothing behind it goes before its retry time.
                    break;
                }
                rest = after;
            }
        }
        records.flush().await;
        // After the last attempt is recorded: another node may take over at once.
        lease.release().await;
        info!(destination = %self.name, "delivery worker stopped");
    }

    /// One attempt for each message of `run` up to the first that failed (none when a file
    /// run found its lease lost before it made its files visible), their records started;
    /// `true` when the queue may move on past the whole run. Each message sent
    /// that the previous holder of the lease may have sent too is flagged (`suspects`).
    async fn attempt(
        &mut self,
        run: &[PendingDelivery],
        lease: lease::LeaseCheck,
        records: &mut Records,
        suspects: &mut Suspects,
    ) -> bool {
        let outgoing: Vec<Outgoing> = run
            .iter()
            .map(|pending| Outgoing {
                message_id: pending.message_id.0,
                raw: pending.raw.clone(),
                control_id: pending.control_id.clone(),
            })
            .collect();
        let started = std::time::Instant::now();
        let attempts = self.sender.send_run(&outgoing, lease).await;
        // A file run's time is shared by its files: each gets its share.
        let elapsed = started.elapsed() / u32::try_from(attempts.len().max(1)).unwrap_or(1);
        let complete = attempts.len() == run.len();
        for (pending, attempt) in run.iter().zip(attempts) {
            if let Some(previous) = suspects.check(pending) {
                warn!(destination = %self.name, message_id = pending.message_id.0, control_id = %pending.control_id, %previous, "possible duplicate: sent one of the queue's first messages after a lease takeover; the previous holder may have sent it before it stopped");
                self.metrics.lease_possible_duplicate(&self.name);
            }
            let (result, moved_on) = settle(
                &self.policy,
                &self.metrics,
                &self.channel,
                &self.name,
                "",
                pending,
                &attempt,
                elapsed,
            );
            let tell = (&self.waiters, pending.message_id.0, attempt);
            records
                .record(&self.store, &self.name, pending.id, result, Some(tell))
                .await;
            if !moved_on {
                return false;
            }
        }
        complete
    }
}

/// After a lease takeover: the queue's first messages, which the previous holder may have
/// sent without recording it. That is the one it had in hand and those whose records were
/// still in flight ([`RECORDS_IN_FLIGHT`]), or, for a file destination, the whole run it
/// was writing or recording ([`file::MAX_RUN`]). So each of the first
/// `RECORDS_IN_FLIGHT + 1` (or run length) deliveries sent is logged and counted as a
/// possible duplicate, once.
#[derive(Debug, Default)]
struct Suspects {
    /// The node the lease was taken from.
    previous: Option<String>,
    /// Deliveries still to flag.
    left: usize,
    /// The last delivery flagged (a retry of it is not flagged again).
    last: Option<DeliveryId>,
}

impl Suspects {
    fn after_takeover(previous: String, window: usize) -> Suspects {
        Suspects {
            previous: Some(previous),
            left: window,
            last: None,
        }
    }

    /// The previous holder's name when `pending` is to be flagged.
    fn check(&mut self, pending: &PendingDelivery) -> Option<&str> {
        if self.left == 0 || self.last.is_some_and(|last| pending.id <= last) {
            return None;
        }
        self.left -= 1;
        self.last = Some(pending.id);
        self.previous.as_deref()
    }
}

/// Attempt records on their way to the store, oldest first.
///
/// Recording an attempt is a durable write (a synced commit), about as slow as sending
/// the message. A worker that waited for each record before the next send would pay
/// both, one after the other. Instead it sends the next message while the records of
/// the ones before are written, and the store's group commit makes the records that
/// queue up meanwhile durable together.
///
/// What this changes is only when a record lands, never the order of sends: a crash with
/// records in flight sends those messages again (at-least-once, as a crash between send
/// and record always did). An `after_delivery` sender still learns the outcome only once
/// it is recorded. The worker [`flush`](Records::flush)es before it reads the queue again
/// and before it lets the lease go.
#[derive(Debug, Default)]
pub(crate) struct Records {
    in_flight: std::collections::VecDeque<tokio::task::JoinHandle<()>>,
}

impl Records {
    /// Starts recording `result` for `delivery` (see [`record`]), then tells `waiter`'s
    /// `after_delivery` sender of message `id` the outcome, when given. First waits for the
    /// oldest record when [`RECORDS_IN_FLIGHT`] are already on their way.
    pub(crate) async fn record(
        &mut self,
        store: &Arc<dyn Store>,
        destination: &str,
        delivery: DeliveryId,
        result: AttemptResult,
        waiter: Option<(&Arc<Waiters>, i64, Attempt)>,
    ) {
        let store = Arc::clone(store);
        let destination = destination.to_owned();
        let waiter = waiter.map(|(w, id, attempt)| (Arc::clone(w), id, attempt));
        self.start(async move {
            record(store.as_ref(), &destination, delivery, result).await;
            if let Some((waiters, id, attempt)) = waiter {
                waiters.complete(id, &destination, &attempt);
            }
        })
        .await;
    }

    async fn start(&mut self, record: impl Future<Output = ()> + Send + 'static) {
        while self.in_flight.front().is_some_and(|r| r.is_finished()) {
            self.in_flight.pop_front();
        }
        if self.in_flight.len() >= RECORDS_IN_FLIGHT {
            self.wait_oldest().await;
        }
        self.in_flight.push_back(tokio::spawn(record));
    }

    /// Waits until every record started so far is written.
    pub(crate) async fn flush(&mut self) {
        while !self.in_flight.is_empty() {
            self.wait_oldest().await;
        }
    }

    async fn wait_oldest(&mut self) {
        if let Some(oldest) = self.in_flight.pop_front() {
            // A record retries until the store takes it; it ends early only if the
            // runtime shuts down, when nothing is left to wait for.
            if let Err(error) = oldest.await {
                warn!(%error, "a delivery attempt record did not finish");
            }
        }
    }
}

/// What an attempt means for the queue: the result to record, and whether the queue moves
/// on (`false`: the head waits for its retry). Logs and counts the outcome. `kind` prefixes
/// the log lines (`"link "` for the link's destinations).
#[allow(clippy::too_many_arguments)]
pub(crate) fn settle(
    policy: &Policy,
    metrics: &Metrics,
    channel: &str,
    destination: &str,
    kind: &str,
    pending: &PendingDelivery,
    attempt: &Attempt,
    elapsed: Duration,
) -> (AttemptResult, bool) {
    let attempts = pending.attempts + 1;
    let message_id = pending.message_id.0;
    let control_id = &pending.control_id;
    match attempt {
        Attempt::Delivered { code, text, ack } => {
            debug!(%destination, message_id, %control_id, ?code, "{kind}delivered");
            metrics.delivered(channel, destination, elapsed);
            (
                AttemptResult::Delivered {
                    ack_code: code.clone(),
                    ack_text: text.clone(),
                    ack_raw: ack.clone(),
                },
                true,
            )
        }
        Attempt::Permanent(error) => {
            warn!(%destination, message_id, %control_id, error = %error.what, "{kind}delivery refused for good; dead-lettered");
            metrics.dead_lettered(channel, destination);
            (
                AttemptResult::DeadLettered {
                    error: error.to_string(),
                },
                true,
            )
        }
        Attempt::Retry(error)
            if policy.on_failure == OnFailure::DeadLetter && attempts >= policy.max_attempts =>
        {
            warn!(%destination, message_id, %control_id, attempts, error = %error.what, "{kind}delivery failed; giving up; dead-lettered");
            metrics.dead_lettered(channel, destination);
            (
                AttemptResult::DeadLettered {
                    error: format!("{error} (after {attempts} attempts)"),
                },
                true,
            )
        }
        Attempt::Retry(error) => {
            let delay = policy.backoff(attempts);
            warn!(%destination, message_id, %control_id, attempts, retry_in_ms = delay.as_millis() as u64, error = %error.what, "{kind}delivery failed; will retry");
            metrics.failed(channel, destination);
            (
                AttemptResult::Failed {
                    error: error.to_string(),
                    retry_at: now().saturating_add(delay),
                },
                false,
            )
        }
    }
}

/// Records an attempt's result before anything else learns of it. While the store cannot
/// take it, retries with backoff: the delivery stays queued meanwhile, so a crash repeats
/// the attempt (at-least-once). A delivery replayed or settled meanwhile (by the admin
/// API) needs no record.
async fn record(store: &dyn Store, destination: &str, delivery: DeliveryId, result: AttemptResult) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.record_attempt(delivery, now(), result.clone()).await {
            Ok(())
            | Err(
                causeway_store::StoreError::Conflict { .. }
                | causeway_store::StoreError::NotFound { .. },
            ) => return,
            Err(error) => {
                warn!(%destination, %error, "cannot record the delivery attempt; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
