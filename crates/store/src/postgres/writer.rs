//! The writer task: group commit of ingests.
//!
//! Each batch is one transaction on the writer's own connection, all of it sent before
//! the first answer is read (pipelined: one round trip per batch): `BEGIN` and the queue
//! lock (`pg_advisory_xact_lock`, one per schema, so that delivery ids become visible in
//! id order across nodes: see [`super::schema`]); one statement per ingest, executed in
//! queue order, each seeing the ones before it (a resend in the same batch finds its
//! original); the batch's bytes added to `totals`; `COMMIT`. Any failure aborts the
//! transaction, so the statements after it and the `COMMIT` fail too; the whole batch
//! fails with `Unavailable` and the connection is dropped; the next batch reconnects.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use crate::error::{Result, StoreError};
use crate::postgres::{Connector, PgConn, WriterCounters, col, pg_err, pg_text};
use crate::store::StoreSettings;
use crate::types::{DeliveryId, Ingested, MessageId, NewMessage};

/// A request to the writer.
#[derive(Debug)]
pub(super) enum Command {
    /// Store this message in the next batch.
    Ingest(Box<IngestJob>),
    /// Finish what is queued, then stop; answer when the connection is closed.
    Close(oneshot::Sender<()>),
}

/// An ingest already validated by the caller: nothing in it can be refused.
#[derive(Debug)]
pub(super) struct IngestJob {
    pub(super) message: NewMessage,
    /// `message.validated_destinations()`.
    pub(super) destinations: Vec<String>,
    /// `message.dedup_key()`.
    pub(super) key: [u8; 32],
    pub(super) reply: oneshot::Sender<Result<Ingested>>,
}

/// The writer's connection and what it remembers between batches.
#[derive(Debug)]
pub(super) struct Writer {
    connector: Arc<Connector>,
    conn: Option<PgConn>,
    dedup_window: Duration,
    linger: Duration,
    max_batch: usize,
    timeout: Duration,
    /// Destinations known to be in the `destinations` table. Cleared when a batch fails,
    /// since its insert may have been undone.
    known_destinations: HashSet<String>,
    counters: Arc<WriterCounters>,
}

impl Writer {
    pub(super) fn new(
        connector: Arc<Connector>,
        conn: Option<PgConn>,
        settings: &StoreSettings,
        timeout: Duration,
        counters: Arc<WriterCounters>,
    ) -> Self {
        Writer {
            connector,
            conn,
            dedup_window: settings.dedup_window,
            linger: settings.commit_linger,
            max_batch: settings.max_batch,
            timeout,
            known_destinations: HashSet::new(),
            counters,
        }
    }
}

/// The writer task's loop: take what is queued, commit it as one batch, answer.
pub(super) async fn run(mut w: Writer, mut rx: mpsc::Receiver<Command>) {
    let mut jobs: Vec<IngestJob> = Vec::with_capacity(w.max_batch);
    let mut closers = Vec::new();
    let mut last_batch = 0;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut linger = Linger::new(w.linger, last_batch);
        loop {
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Ingest(job) => jobs.push(*job),
                    Command::Close(done) => {
                        // Accept nothing new; what is already queued still runs.
                        rx.close();
                        closers.push(done);
                    }
                }
                if jobs.len() < w.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if jobs.len() >= w.max_batch || !closers.is_empty() || !linger.wait().await {
                break;
            }
            next = rx.try_recv().ok();
            if next.is_some() {
                linger.arrived();
            }
        }
        last_batch = jobs.len();
        if !jobs.is_empty() {
            commit_batch(&mut w, &mut jobs).await;
        }
    }
    drop(w.conn.take());
    for done in closers {
        let _ = done.send(());
    }
}

/// Waiting for company before a commit, under concurrent load only (see the SQLite
/// writer's `Linger` for why). Tokio timers tick in milliseconds, too coarse for a
/// linger of some hundred microseconds, so this yields to the scheduler instead: the
/// callers just answered get to run and send their next request.
struct Linger {
    enabled: bool,
    quiet: Duration,
    deadline: Instant,
    last_arrival: Instant,
}

impl Linger {
    fn new(linger: Duration, last_batch: usize) -> Self {
        let now = Instant::now();
        Linger {
            enabled: last_batch > 1 && !linger.is_zero(),
            quiet: linger / 4,
            deadline: now + linger,
            last_arrival: now,
        }
    }

    /// Lets other tasks run once; false when the batch should go now.
    async fn wait(&self) -> bool {
        if !self.enabled {
            return false;
        }
        let now = Instant::now();
        if now >= self.deadline.min(self.last_arrival + self.quiet) {
            return false;
        }
        tokio::task::yield_now().await;
        true
    }

    fn arrived(&mut self) {
        self.last_arrival = Instant::now();
    }
}

async fn commit_batch(w: &mut Writer, jobs: &mut Vec<IngestJob>) {
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(w.timeout, run_batch(w, jobs))
        .await
        .unwrap_or_else(|e| Err(StoreError::unavailable("batch timed out", e)));
    // The whole transaction is the durable write here: its statements and COMMIT go out in
    // one round trip.
    w.counters.synced(started.elapsed());
    w.counters.batch(jobs.len(), outcome.is_ok());
    match outcome {
        Ok(results) => {
            for (job, result) in jobs.drain(..).zip(results) {
                // The caller may have given up waiting (a timeout); the write stands.
                let _ = job.reply.send(Ok(result));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch = jobs.len(), "store batch failed, rolled back");
            // The connection's state is unknown: drop it (the server rolls back).
            w.conn = None;
            w.known_destinations.clear();
            let msg = e.to_string();
            for job in jobs.drain(..) {
                let _ = job
                    .reply
                    .send(Err(StoreError::unavailable("commit", msg.clone())));
            }
        }
    }
}

/// One statement per ingest: the duplicate lookup, the message, its body, its
/// destinations if any may be new (sorted, so that two nodes adding the same new names
/// take their locks in one order), and its deliveries (in routing order: ids are drawn
/// as the rows are inserted in `ord` order).
const INGEST: &str = "
WITH dup AS (
    SELECT id FROM messages
    WHERE $16::boolean AND control_id = $5::text AND dedup_key = $17::bytea
      AND duplicate_of IS NULL AND received_at >= $18::bigint
    ORDER BY id LIMIT 1
), m AS (
    INSERT INTO messages (channel, received_at, peer, tls_identity, control_id,
        message_type, trigger_event, sending_application, sending_facility,
        receiving_application, receiving_facility, patient_id, charset, size, status,
        duplicate_of, dedup_key)
    SELECT $1::text, $2::bigint, $3::text, $4::text, $5::text, $6::text, $7::text,
        $8::text, $9::text, $10::text, $11::text, $12::text, $13::text, $14::bigint,
        CASE WHEN dup.id IS NOT NULL THEN 'duplicate'
             WHEN cardinality($15::text[]) = 0 THEN 'filtered'
             ELSE 'pending' END,
        dup.id, $17::bytea
    FROM (SELECT 1) AS one LEFT JOIN dup ON true
    RETURNING id, duplicate_of
), body AS (
    INSERT INTO message_bodies (message_id, raw) SELECT id, $19::bytea FROM m
), names AS (
    INSERT INTO destinations (name)
    SELECT dest.name FROM m, unnest($15::text[]) AS dest(name)
    WHERE $20::boolean AND m.duplicate_of IS NULL
    ORDER BY dest.name
    ON CONFLICT (name) DO NOTHING
), d AS (
    INSERT INTO deliveries (message_id, destination, state, created_at)
    SELECT m.id, dest.name, 'pending', $2::bigint
    FROM m, unnest($15::text[]) WITH ORDINALITY AS dest(name, ord)
    WHERE m.duplicate_of IS NULL
    ORDER BY dest.ord
    RETURNING id
)
SELECT m.id, m.duplicate_of, COALESCE((SELECT array_agg(id ORDER BY id) FROM d), '{}')
FROM m";

async fn run_batch(w: &mut Writer, jobs: &[IngestJob]) -> Result<Vec<Ingested>> {
    let conn = match &mut w.conn {
        Some(c) if !c.client.is_closed() => c,
        slot => slot.insert(w.connector.connect().await?),
    };
    let stmt = conn.statement(INGEST).await?;
    let rows: Vec<IngestParams<'_>> = jobs
        .iter()
        .map(|j| IngestParams::new(j, w.dedup_window, &w.known_destinations))
        .collect();
    let params: Vec<[&(dyn ToSql + Sync); 20]> = rows.iter().map(IngestParams::params).collect();
    let bytes: i64 = rows.iter().map(|r| r.size).sum();
    let commit_sql =
        format!("UPDATE totals SET message_bytes = message_bytes + {bytes} WHERE id = 1; COMMIT");
    // The whole batch in one round trip: BEGIN and the queue lock (taken before any
    // delivery id is drawn; see `schema`, "Queue order across nodes"), the inserts, the
    // totals and COMMIT, all sent before the first answer is read. So the lock is held for
    // the server's work and the WAL flush only, never for a network round trip. If any
    // statement fails, the transaction is aborted and what follows, COMMIT included, fails
    // too: nothing of the batch is committed.
    conn.in_tx = true;
    let client = &conn.client;
    let (begun, answers, committed) = tokio::join!(
        client.batch_execute(super::ops::BEGIN_LOCK_QUEUE),
        join_all(params.iter().map(|p| client.query_one(&stmt, p))),
        client.batch_execute(&commit_sql),
    );
    begun.map_err(pg_err("begin"))?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut new_destinations = Vec::new();
    for (answer, job) in answers.into_iter().zip(jobs) {
        let row = answer.map_err(pg_err("insert message"))?;
        let duplicate_of = col::<Option<i64>>(&row, 1)?;
        if duplicate_of.is_none() {
            new_destinations.extend(
                job.destinations
                    .iter()
                    .filter(|d| !w.known_destinations.contains(*d)),
            );
        }
        let deliveries: Vec<i64> = col(&row, 2)?;
        out.push(Ingested {
            id: MessageId(col(&row, 0)?),
            duplicate_of: duplicate_of.map(MessageId),
            deliveries: deliveries.into_iter().map(DeliveryId).collect(),
        });
    }
    committed.map_err(pg_err("commit"))?;
    conn.in_tx = false;
    let new_destinations: Vec<String> = new_destinations.into_iter().cloned().collect();
    w.known_destinations.extend(new_destinations);
    Ok(out)
}

/// One ingest's statement parameters, owned where the text needed cleaning.
struct IngestParams<'a> {
    received: i64,
    raw: &'a [u8],
    text: [Cow<'a, str>; 9],
    optional: [Option<Cow<'a, str>>; 3],
    size: i64,
    destinations: Vec<Cow<'a, str>>,
    dedup: bool,
    key: &'a [u8],
    since: i64,
    /// Some destination may be missing from the `destinations` table.
    new_destinations: bool,
}

impl<'a> IngestParams<'a> {
    fn new(j: &'a IngestJob, window: Duration, known: &HashSet<String>) -> Self {
        let m = &j.message;
        IngestParams {
            received: m.received_at.as_millis(),
            raw: &m.raw,
            text: [
                pg_text(&m.channel),
                pg_text(&m.peer),
                pg_text(&m.control_id),
                pg_text(&m.message_type),
                pg_text(&m.trigger_event),
                pg_text(&m.sending_application),
                pg_text(&m.sending_facility),
                pg_text(&m.receiving_application),
                pg_text(&m.receiving_facility),
            ],
            optional: [
                m.tls_identity.as_deref().map(pg_text),
                m.patient_id.as_deref().map(pg_text),
                m.charset.as_deref().map(pg_text),
            ],
            size: i64::try_from(m.raw.len()).unwrap_or(i64::MAX),
            destinations: j.destinations.iter().map(|d| pg_text(d)).collect(),
            dedup: !window.is_zero(),
            key: &j.key,
            since: m.received_at.saturating_sub(window).as_millis(),
            new_destinations: j.destinations.iter().any(|d| !known.contains(d)),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 20] {
        let t = &self.text;
        [
            &t[0],
            &self.received,
            &t[1],
            &self.optional[0],
            &t[2],
            &t[3],
            &t[4],
            &t[5],
            &t[6],
            &t[7],
            &t[8],
            &self.optional[1],
            &self.optional[2],
            &self.size,
            &self.destinations,
            &self.dedup,
            &self.key,
            &self.since,
            &self.raw,
            &self.new_destinations,
        ]
    }
}
