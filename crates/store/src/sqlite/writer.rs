//! The writer thread and every write the store makes.
//!
//! Each write function runs inside the batch transaction on the writer's connection; it
//! sees the effects of the requests before it in the batch. A checkpointer thread folds
//! the WAL back into the database file beside it, so commits do not pay for that.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{CachedStatement, Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};

use crate::Replayed;
use crate::error::{Result, StoreError};
use crate::sqlite::journal::{self, JournalFile, JournalShared, JournalWrite, Redo, RedoRef};
use crate::sqlite::{WriterCounters, sql_err};
use crate::store::StoreSettings;
use crate::types::{
    AttemptResult, AuditEntry, AuditId, DeliveryId, DeliveryState, Ingested, MessageId,
    MessageStatus, NewMessage, NewQuarantine, QuarantineId, Timestamp,
};

// === the thread ===

/// A request to the writer.
pub(super) enum Command {
    /// Run this inside the next batch.
    Job(Box<dyn Job>),
    /// A reader needs every ingest answered so far committed: commit the open
    /// transaction after this batch (see `Progress`).
    Barrier,
    /// Finish what is queued, then stop; answer when the database is closed.
    Close(oneshot::Sender<()>),
    /// Stop as a crash would: the open transaction is dropped, not committed.
    #[cfg(test)]
    Crash(oneshot::Sender<()>),
}

impl Command {
    pub(super) fn job<T, F>(f: F, reply: oneshot::Sender<Result<T>>) -> Self
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriterState) -> Result<T> + Send + 'static,
    {
        Command::Job(Box::new(TypedJob {
            f: Some(f),
            out: None,
            reply,
        }))
    }

    /// An ingest: the one write the journal can make durable (see `journal`).
    pub(super) fn ingest(
        message: NewMessage,
        key: [u8; 32],
        reply: oneshot::Sender<Result<Ingested>>,
    ) -> Self {
        Command::Job(Box::new(IngestJob {
            message,
            key,
            out: None,
            reply,
        }))
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Job(_) => f.write_str("Job"),
            Command::Barrier => f.write_str("Barrier"),
            Command::Close(_) => f.write_str("Close"),
            #[cfg(test)]
            Command::Crash(_) => f.write_str("Crash"),
        }
    }
}

/// A write, type-erased so one queue carries them all.
///
/// The rule every write function follows, which lets a batch run without a savepoint
/// per request (savepoints copy every page they touch): a write refuses a request
/// (`InvalidInput`, `NotFound`, `Conflict`) only before its first change. After that,
/// the only errors are store failures, and a store failure aborts the whole batch.
pub(crate) trait Job: Send {
    /// Runs the write (`hot.conn` is the connection).
    fn run(&mut self, hot: &mut Hot<'_>, state: &mut WriterState) -> Ran;
    /// Answers the caller once the batch's fate is known: `commit_error` is set when the
    /// commit (or the journal's sync) failed, which fails the writes that had succeeded too.
    fn finish(self: Box<Self>, commit_error: Option<&str>);
    /// True for a write the ingest journal can make durable (an ingest).
    fn journaled(&self) -> bool {
        false
    }
    /// About how many bytes `encode` appends.
    fn size_hint(&self) -> usize {
        0
    }
    /// Appends the journal record of what `run` wrote, if it wrote anything, numbered
    /// `seq`. True when it appended one.
    fn encode(&self, _out: &mut Vec<u8>, _generation: u64, _seq: u64) -> bool {
        false
    }
}

/// How a write went.
pub(super) enum Ran {
    /// Done; commit it.
    Ok,
    /// The request was refused before anything was written; the batch goes on.
    Refused,
    /// The store failed part way; the batch must be rolled back.
    StoreFailure(String),
}

impl Ran {
    fn of<T>(out: &Result<T>) -> Ran {
        match out {
            Ok(_) => Ran::Ok,
            Err(e) if e.is_store_failure() => Ran::StoreFailure(e.to_string()),
            Err(_) => Ran::Refused,
        }
    }
}

/// The answer to a job whose batch ended with `commit_error` (or `None`).
fn answer<T>(out: Option<Result<T>>, commit_error: Option<&str>) -> Result<T> {
    match (out, commit_error) {
        (Some(Ok(_)), Some(e)) | (None, Some(e)) => {
            Err(StoreError::unavailable("commit", e.to_owned()))
        }
        (Some(out), _) => out,
        (None, None) => Err(StoreError::Closed),
    }
}

struct TypedJob<T, F> {
    f: Option<F>,
    out: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &mut WriterState) -> Result<T> + Send + 'static,
{
    fn run(&mut self, hot: &mut Hot<'_>, state: &mut WriterState) -> Ran {
        let Some(f) = self.f.take() else {
            return Ran::Refused;
        };
        // Any write may read the totals (pruning by size does): the batch's ingests first.
        if let Err(e) = hot.flush_totals() {
            let out = Err(e);
            let ran = Ran::of(&out);
            self.out = Some(out);
            return ran;
        }
        let out = f(hot.conn, state);
        let ran = Ran::of(&out);
        self.out = Some(out);
        ran
    }

    fn finish(self: Box<Self>, commit_error: Option<&str>) {
        // The caller may have given up waiting (a timeout); the write stands regardless.
        let _ = self.reply.send(answer(self.out, commit_error));
    }
}

/// An ingest, kept whole so that its journal record can be written after it ran.
struct IngestJob {
    message: NewMessage,
    key: [u8; 32],
    out: Option<Result<Ingested>>,
    reply: oneshot::Sender<Result<Ingested>>,
}

impl Job for IngestJob {
    fn run(&mut self, hot: &mut Hot<'_>, state: &mut WriterState) -> Ran {
        let out = ingest(hot, state, &self.message, &self.key);
        let ran = Ran::of(&out);
        self.out = Some(out);
        ran
    }

    fn finish(self: Box<Self>, commit_error: Option<&str>) {
        let _ = self.reply.send(answer(self.out, commit_error));
    }

    fn journaled(&self) -> bool {
        true
    }

    fn size_hint(&self) -> usize {
        self.message.raw.len() + 512
    }

    fn encode(&self, out: &mut Vec<u8>, generation: u64, seq: u64) -> bool {
        let Some(Ok(done)) = &self.out else {
            return false;
        };
        let destinations = self.message.validated_destinations().unwrap_or_default();
        let redo = RedoRef {
            id: done.id.0,
            status: if done.duplicate_of.is_some() {
                MessageStatus::Duplicate
            } else if done.deliveries.is_empty() {
                MessageStatus::Filtered
            } else {
                MessageStatus::Pending
            },
            duplicate_of: done.duplicate_of.map(|d| d.0),
            key: &self.key,
            message: &self.message,
            deliveries: &done.deliveries,
            destinations: &destinations,
        };
        journal::encode(out, generation, seq, redo);
        true
    }
}

/// What the writer remembers between requests.
#[derive(Debug)]
pub(crate) struct WriterState {
    dedup_window: Duration,
    linger: Duration,
    /// Destinations known to be in the `destinations` table. Cleared whenever a batch
    /// is rolled back, since an insert may have been undone.
    known_destinations: HashSet<String>,
    counters: Arc<WriterCounters>,
}

impl WriterState {
    pub(super) fn new(settings: &StoreSettings, counters: Arc<WriterCounters>) -> Self {
        WriterState {
            dedup_window: settings.dedup_window,
            linger: settings.commit_linger,
            known_destinations: HashSet::new(),
            counters,
        }
    }
}

/// How far ingests have got, shared with readers so that a read sees every ingest that
/// was answered before it started (`SqliteStore::read`).
#[derive(Debug)]
pub(crate) struct Progress {
    /// The last journal sequence number applied to the writer's transaction. A caller is
    /// answered only after its ingest's number is here.
    pub applied: AtomicU64,
    /// The last sequence number whose transaction is committed (visible to readers).
    pub committed: watch::Sender<u64>,
}

impl Progress {
    pub(super) fn new(at: u64) -> Self {
        Progress {
            applied: AtomicU64::new(at),
            committed: watch::Sender::new(at),
        }
    }
}

/// The writer's side of the ingest journal.
pub(super) struct JournalSide {
    pub file: Arc<JournalFile>,
    pub shared: Arc<JournalShared>,
    pub progress: Arc<Progress>,
    /// The generation records are written in (see `journal`).
    pub generation: u64,
    /// The last sequence number given to a record.
    pub seq: u64,
    /// Where the next batch of records goes.
    pub offset: u64,
    /// Commit the open transaction once it holds this many ingests.
    pub commit_messages: usize,
    /// Commit the open transaction once it is this old.
    pub commit_interval: Duration,
    /// Commit the open transaction once no request has come for this long.
    pub idle_commit: Duration,
    to_thread: Option<std::sync::mpsc::SyncSender<JournalWrite>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JournalSide {
    pub(super) fn new(
        file: JournalFile,
        progress: Arc<Progress>,
        generation: u64,
        seq: u64,
        settings: &StoreSettings,
        counters: Arc<WriterCounters>,
    ) -> Self {
        let file = Arc::new(file);
        let shared = Arc::new(JournalShared {
            counters,
            ..JournalShared::default()
        });
        let (to_thread, thread) = match journal::spawn(Arc::clone(&file), Arc::clone(&shared)) {
            Ok((tx, handle)) => (Some(tx), Some(handle)),
            Err(e) => {
                // Not fatal: the writer then writes and syncs the journal itself.
                tracing::warn!(error = %e, "store journal thread did not start");
                (None, None)
            }
        };
        JournalSide {
            file,
            shared,
            progress,
            generation,
            seq,
            offset: 0,
            commit_messages: settings.journal_commit_messages.max(1),
            commit_interval: settings.journal_commit_interval,
            idle_commit: settings.journal_idle_commit,
            to_thread,
            thread,
        }
    }

    fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Hands a batch of records to the journal thread, which syncs whatever has queued up
    /// meanwhile at once, so batches group themselves while the disk is busy.
    ///
    /// When the writer has nothing else `queued` and the thread nothing in hand, the writer
    /// writes and syncs the batch itself: waking the thread and being answered by it are two
    /// hand-offs between threads, and at one sender those cost about as much as the sync.
    /// (Also when the thread is gone: it panicked, or never started.) Those are counted
    /// in `journal_syncs_on_writer`.
    fn submit(&self, write: JournalWrite, queued: bool) {
        let write = match &self.to_thread {
            Some(to)
                if queued
                    || self.shared.in_flight.load(Ordering::Acquire) > 0
                    || self.shared.forced_to_thread() =>
            {
                self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
                match to.send(write) {
                    Ok(()) => return,
                    Err(std::sync::mpsc::SendError(write)) => {
                        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                        write
                    }
                }
            }
            _ => write,
        };
        let error = journal::write_and_sync(&self.file, &self.shared, std::slice::from_ref(&write));
        // Counted before anyone is answered: a caller that reads the counters after its
        // answer sees its own batch.
        self.shared.counters.journal_sync_on_writer();
        for job in write.jobs {
            job.finish(error.as_deref());
        }
    }

    /// Stops the journal thread after it has answered everything sent to it.
    fn stop(&mut self) {
        drop(self.to_thread.take());
        if let Some(handle) = self.thread.take() {
            let _ = handle.join();
        }
    }
}

/// The writer's open transaction, when the journal keeps it open across batches.
#[derive(Default)]
struct OpenTx {
    open: bool,
    started: Option<Instant>,
    /// The journal records of the ingests applied in it, batch by batch: what must be
    /// applied again if it is rolled back.
    batches: Vec<Bytes>,
    /// Ingests applied in it.
    messages: usize,
    /// Set when a rollback undid journaled ingests and applying them again failed: no
    /// other write may run before they are back.
    needs_reapply: bool,
}

/// The writer thread's loop: take what is queued, run it as one batch, make it durable
/// (a journal sync, or a commit and a WAL sync), answer.
pub(super) fn run(
    conn: Connection,
    checkpoint_conn: Connection,
    wal: std::fs::File,
    rx: mpsc::Receiver<Command>,
    state: WriterState,
    max_batch: usize,
    journal: Option<JournalSide>,
) {
    let wal = Arc::new(wal);
    let (to_syncer, synced) = std::sync::mpsc::sync_channel::<Committed>(SYNC_QUEUE);
    let syncer_wal = Arc::clone(&wal);
    let syncer = std::thread::Builder::new()
        .name("cw-store-sync".into())
        .spawn(move || sync_loop(&syncer_wal, &synced));
    let (to_syncer, syncer) = match syncer {
        Ok(handle) => (Some(to_syncer), Some(handle)),
        Err(e) => {
            // Not fatal: every batch is then synced on the writer thread.
            tracing::warn!(error = %e, "store sync thread did not start");
            (None, None)
        }
    };
    let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
    let checkpointer = std::thread::Builder::new()
        .name("cw-store-ckpt".into())
        .spawn(move || checkpoint_loop(&checkpoint_conn, &stopped));
    if let Err(e) = &checkpointer {
        // Not fatal: the writer's own auto-checkpoint still bounds the WAL.
        tracing::warn!(error = %e, "store checkpoint thread did not start");
    }
    let mut writer = Writer {
        conn,
        state,
        wal,
        rx,
        to_syncer,
        journal,
        tx: OpenTx::default(),
        max_batch,
        retry_commit_at: None,
    };
    let closers = writer.serve();
    // Answers what is still being synced before the database is closed.
    drop(writer.to_syncer.take());
    if let Some(handle) = syncer {
        let _ = handle.join();
    }
    if let Some(journal) = &mut writer.journal {
        journal.stop();
    }
    drop(stop_checkpoints);
    if let Ok(handle) = checkpointer {
        let _ = handle.join();
    }
    // Fold the WAL back into the database so the file is complete on its own.
    if let Err(e) = writer.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "store checkpoint at close failed");
    }
    drop(writer);
    for done in closers {
        let _ = done.send(());
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    state: WriterState,
    wal: Arc<std::fs::File>,
    rx: mpsc::Receiver<Command>,
    to_syncer: Option<std::sync::mpsc::SyncSender<Committed>>,
    journal: Option<JournalSide>,
    tx: OpenTx,
    max_batch: usize,
    /// After a failed commit of the open transaction: when to try again unasked.
    retry_commit_at: Option<Instant>,
}

/// How long the writer waits before committing again on its own after a commit of
/// journaled ingests failed (a reader's request or another write still tries at once).
const COMMIT_RETRY: Duration = Duration::from_secs(1);

/// A commit that did not go through: rolled back, or committed but not synced.
struct CommitError {
    committed: bool,
    message: String,
}

/// What the writer waits for next.
enum Next {
    Command(Command),
    /// Nothing came while a transaction was open: commit it.
    Idle,
    /// Every sender is gone.
    Closed,
}

impl Writer {
    /// Runs batches until the queue closes; returns who asked to be told of the close.
    fn serve(&mut self) -> Vec<oneshot::Sender<()>> {
        let mut jobs: Vec<Box<dyn Job>> = Vec::with_capacity(self.max_batch);
        let mut closers = Vec::new();
        let mut last_batch = 0;
        loop {
            let first = match self.next() {
                Next::Command(c) => c,
                Next::Idle => {
                    self.commit_open(false);
                    continue;
                }
                Next::Closed => break,
            };
            let mut next = Some(first);
            let mut barrier = false;
            // With the journal, no lingering: its thread syncs whatever queued up while the
            // disk was busy, so batches form by themselves (measured: lingering cost a
            // quarter of the throughput with 8 and 32 senders).
            let linger_for = if self.journal.is_some() {
                Duration::ZERO
            } else {
                self.state.linger
            };
            let mut linger = Linger::new(linger_for, last_batch);
            loop {
                while let Some(cmd) = next.take() {
                    match cmd {
                        Command::Job(job) => jobs.push(job),
                        Command::Barrier => barrier = true,
                        Command::Close(done) => {
                            // Accept nothing new; what is already queued still runs.
                            self.rx.close();
                            closers.push(done);
                        }
                        #[cfg(test)]
                        Command::Crash(done) => {
                            self.rx.close();
                            let _ = self.conn.execute_batch("ROLLBACK");
                            self.tx = OpenTx::default();
                            for job in jobs.drain(..) {
                                job.finish(Some("crashed"));
                            }
                            if let Some(j) = &mut self.journal {
                                j.stop();
                            }
                            closers.push(done);
                            return closers;
                        }
                    }
                    if jobs.len() < self.max_batch {
                        next = self.rx.try_recv().ok();
                    }
                }
                if jobs.len() >= self.max_batch || !closers.is_empty() || !linger.wait() {
                    break;
                }
                next = self.rx.try_recv().ok();
                if next.is_some() {
                    linger.arrived();
                }
            }
            last_batch = jobs.len();
            if !jobs.is_empty() {
                let batch = std::mem::replace(&mut jobs, Vec::with_capacity(self.max_batch));
                self.batch(batch);
            }
            if self.tx.open && (barrier || !closers.is_empty() || self.tx_due()) {
                self.commit_open(false);
            }
        }
        if self.tx.open {
            self.commit_open(false);
        }
        closers
    }

    /// The next command; with a transaction open, `Idle` once none has come for the
    /// journal's idle time (or the transaction is due).
    fn next(&mut self) -> Next {
        let idle = match &self.journal {
            Some(j) if self.tx.open => j.idle_commit.min(j.commit_interval),
            _ => {
                return match self.rx.blocking_recv() {
                    Some(c) => Next::Command(c),
                    None => Next::Closed,
                };
            }
        };
        let mut deadline = Instant::now() + idle;
        if let Some(at) = self.retry_commit_at {
            deadline = deadline.max(at);
        }
        loop {
            match self.rx.try_recv() {
                Ok(c) => return Next::Command(c),
                Err(mpsc::error::TryRecvError::Disconnected) => return Next::Closed,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline || self.tx_due() {
                return Next::Idle;
            }
            // `SqliteStore::write` unparks this thread after each send.
            std::thread::park_timeout(deadline - now);
        }
    }

    /// True when the open transaction should be committed now.
    fn tx_due(&self) -> bool {
        let Some(j) = &self.journal else {
            return true;
        };
        if self.retry_commit_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        self.tx.messages >= j.commit_messages
            || self
                .tx
                .started
                .is_some_and(|s| s.elapsed() >= j.commit_interval)
    }

    /// Runs one batch and sees to it that every job in it is answered.
    fn batch(&mut self, mut jobs: Vec<Box<dyn Job>>) {
        // A journal that failed is given up: what it held is made durable by a synced
        // commit, and from now on every batch is.
        if self.journal.as_ref().is_some_and(JournalSide::failed) {
            if self.tx.open {
                self.commit_open(true);
            }
            // Only once its ingests are committed: until then commits must keep moving
            // the journal's mark, or a restart would apply them twice.
            if !self.tx.open
                && !self.tx.needs_reapply
                && let Some(mut journal) = self.journal.take()
            {
                journal.stop();
            }
        }
        if self.tx.needs_reapply
            && let Err(e) = self.reapply()
        {
            self.fail(jobs, &e);
            return;
        }
        if !self.tx.open {
            if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
                tracing::error!(error = %e, "store batch could not begin");
                self.fail(jobs, &e.to_string());
                return;
            }
            self.tx.open = true;
            self.tx.started = Some(Instant::now());
        }
        let mut failure = None;
        let mut hot = Hot::new(&self.conn);
        for job in jobs.iter_mut() {
            if let Ran::StoreFailure(e) = job.run(&mut hot, &mut self.state) {
                // The writes after it never run and answer with the same failure.
                failure = Some(e);
                break;
            }
        }
        if failure.is_none()
            && let Err(e) = hot.flush_totals()
        {
            failure = Some(e.to_string());
        }
        if failure.is_some() {
            hot.discard();
        }
        drop(hot);
        if let Some(e) = failure {
            tracing::error!(error = %e, batch = jobs.len(), "store batch failed, rolled back");
            self.rollback();
            self.fail(jobs, &e);
            return;
        }
        let journaled = self.journal.is_some() && jobs.iter().all(|j| j.journaled());
        if journaled {
            self.journal_batch(jobs);
        } else {
            self.commit_batch(jobs);
        }
    }

    /// Writes the batch's journal records and hands it over to be synced and answered;
    /// its rows stay in the open transaction.
    fn journal_batch(&mut self, jobs: Vec<Box<dyn Job>>) {
        let Some(j) = &mut self.journal else {
            return self.commit_batch(jobs);
        };
        // About what the records take: the bytes, the metadata, the header.
        let mut records = Vec::with_capacity(jobs.iter().map(|j| j.size_hint()).sum());
        let before = j.seq;
        let mut seq = j.seq;
        for job in &jobs {
            if job.encode(&mut records, j.generation, seq + 1) {
                seq += 1;
            }
        }
        if seq == before {
            // Every request was refused: nothing to make durable.
            for job in jobs {
                job.finish(None);
            }
            return;
        }
        self.state.counters.batch(jobs.len(), true);
        // Sequence numbers are taken only by records that are written (or committed
        // with the mark that covers them): a gap would end recovery's scan early.
        j.seq = seq;
        if j.offset + records.len() as u64 > j.file.capacity() {
            // The journal is full: make everything durable in SQLite, then start it over.
            let next_generation = j.generation + 1;
            let result = self.commit_tx(Some(next_generation), true);
            if let Some(j) = &mut self.journal {
                if result.as_ref().map_or_else(|e| e.committed, |()| true) {
                    // Committed (even if its sync failed): SQLite holds the new
                    // generation, so records must carry it from now on.
                    j.generation = next_generation;
                    j.offset = 0;
                    j.progress.applied.store(seq, Ordering::Release);
                } else {
                    // Rolled back: the batch's numbers are free again.
                    j.seq = before;
                }
            }
            let error = result.err().map(|e| e.message);
            for job in jobs {
                job.finish(error.as_deref());
            }
            return;
        }
        j.progress.applied.store(seq, Ordering::Release);
        let records = Bytes::from(records);
        let write = JournalWrite {
            offset: j.offset,
            bytes: records.clone(),
            jobs,
        };
        j.offset += records.len() as u64;
        self.tx.batches.push(records);
        self.tx.messages += seq.saturating_sub(before) as usize;
        j.submit(write, !self.rx.is_empty());
    }

    /// Commits the open transaction with this batch in it and answers the batch once the
    /// WAL is synced.
    fn commit_batch(&mut self, jobs: Vec<Box<dyn Job>>) {
        let commit_error = self.commit_tx(None, false).err().map(|e| e.message);
        self.state
            .counters
            .batch(jobs.len(), commit_error.is_none());
        let batch = Committed {
            jobs,
            commit_error,
            counters: Arc::clone(&self.state.counters),
        };
        // Under load (more requests queued), the sync thread syncs this batch while
        // the writer applies the next one. Otherwise syncing here saves a hand-off.
        match &self.to_syncer {
            Some(syncer) if !self.rx.is_empty() => {
                if let Err(std::sync::mpsc::SendError(batch)) = syncer.send(batch) {
                    batch.sync_and_answer(&self.wal);
                }
            }
            _ => batch.sync_and_answer(&self.wal),
        }
    }

    /// Commits the open transaction (journaled ingests only), synced or not. After a
    /// failure, the writer does not try again on its own for [`COMMIT_RETRY`].
    fn commit_open(&mut self, sync: bool) {
        match self.commit_tx(None, sync) {
            Ok(()) => self.retry_commit_at = None,
            Err(e) => {
                tracing::error!(error = %e.message, "store commit of journaled ingests failed; they stay in the journal");
                self.retry_commit_at = Some(Instant::now() + COMMIT_RETRY);
            }
        }
    }

    /// Commits the open transaction, recording how far the journal is applied (and a new
    /// generation, if given). With `sync`, returns only once the WAL is synced.
    fn commit_tx(
        &mut self,
        generation: Option<u64>,
        sync: bool,
    ) -> std::result::Result<(), CommitError> {
        if !self.tx.open {
            return Ok(());
        }
        let result = self
            .mark_applied(generation)
            .and_then(|()| self.conn.execute_batch("COMMIT").map_err(|e| e.to_string()));
        if let Err(message) = result {
            tracing::error!(error = %message, "store commit failed, rolled back");
            self.rollback();
            return Err(CommitError {
                committed: false,
                message,
            });
        }
        self.tx = OpenTx::default();
        if let Some(j) = &self.journal {
            j.progress.committed.send_replace(j.seq);
        }
        if sync && let Err(e) = self.state.counters.timed(|| self.wal.sync_data()) {
            tracing::error!(error = %e, "store WAL sync failed");
            return Err(CommitError {
                committed: true,
                message: format!("sync the write-ahead log: {e}"),
            });
        }
        Ok(())
    }

    /// Writes the journal's applied mark into the open transaction.
    fn mark_applied(&self, generation: Option<u64>) -> std::result::Result<(), String> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        let generation = generation.unwrap_or(j.generation) as i64;
        self.conn
            .prepare_cached(
                "UPDATE ingest_journal SET generation = ?1, applied_seq = ?2 WHERE id = 1",
            )
            .and_then(|mut s| s.execute(params![generation, j.seq as i64]))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Rolls the open transaction back and applies its journaled ingests again, which
    /// were answered already.
    fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        self.state.known_destinations.clear();
        let batches = std::mem::take(&mut self.tx.batches);
        let messages = self.tx.messages;
        self.tx = OpenTx {
            batches,
            messages,
            needs_reapply: true,
            ..OpenTx::default()
        };
        if self.tx.batches.is_empty() {
            self.tx.needs_reapply = false;
        } else if let Err(e) = self.reapply() {
            tracing::error!(error = %e, "store could not apply journaled ingests again; retrying with the next request");
        }
    }

    /// Applies the journaled ingests of a rolled-back transaction again, in a new open
    /// transaction.
    fn reapply(&mut self) -> std::result::Result<(), String> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| e.to_string())?;
        let mut result = Ok(());
        let mut hot = Hot::new(&self.conn);
        'batches: for batch in &self.tx.batches {
            let mut at = 0;
            while let Some(record) = journal::read_record(batch, at) {
                at = record.end;
                let applied = journal::decode(&batch[record.payload])
                    .and_then(|redo| apply_redo(&mut hot, &mut self.state, &redo));
                if let Err(e) = applied {
                    result = Err(e.to_string());
                    break 'batches;
                }
            }
        }
        if result.is_ok() {
            result = hot.flush_totals().map_err(|e| e.to_string());
        }
        hot.discard();
        drop(hot);
        match result {
            Ok(()) => {
                self.tx.open = true;
                self.tx.started = Some(Instant::now());
                self.tx.needs_reapply = false;
                Ok(())
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.state.known_destinations.clear();
                self.tx.open = false;
                self.tx.needs_reapply = true;
                Err(e)
            }
        }
    }

    /// Answers every job of a batch that could not run with `error`.
    fn fail(&self, jobs: Vec<Box<dyn Job>>, error: &str) {
        self.state.counters.batch(jobs.len(), false);
        for job in jobs {
            job.finish(Some(error));
        }
    }
}

/// Waiting for company before a commit, under concurrent load only.
///
/// Without it, concurrent callers split into cohorts that take turns: while one cohort's
/// batch commits, the next queues up, and the callers just answered come back a moment
/// after the writer has started the next batch without them. Waiting until the queue has
/// been quiet for a quarter of the linger (at most the whole linger) lets them join, so
/// one sync covers them all. After a batch of one (a lone sender) there is no wait.
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

    /// Waits for a caller to send (`SqliteStore::write` unparks this thread); false when
    /// the batch should go now.
    fn wait(&self) -> bool {
        if !self.enabled {
            return false;
        }
        let now = Instant::now();
        let until = self.deadline.min(self.last_arrival + self.quiet);
        if now >= until {
            return false;
        }
        std::thread::park_timeout(until - now);
        true
    }

    fn arrived(&mut self) {
        self.last_arrival = Instant::now();
    }
}

/// How often the checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Runs passive checkpoints (they never block the writer or readers) until the writer
/// drops its end of `stop`. If it falls behind, the writer's `wal_autocheckpoint`
/// backstop (see `schema::configure`) checkpoints on the commit path instead.
fn checkpoint_loop(conn: &Connection, stop: &std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY)
    {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "store checkpoint failed");
        }
    }
}

/// Batches waiting for the sync thread. Two keep the writer one batch ahead of the disk;
/// beyond that it waits, so the queue of committed but unsynced work stays short.
const SYNC_QUEUE: usize = 2;

/// A committed batch whose callers are answered once the WAL is synced.
///
/// The writer's connection runs with `synchronous=NORMAL`: `COMMIT` writes the batch's
/// frames to the WAL without syncing it. Syncing the WAL file afterwards, from any file
/// handle, makes those frames durable, exactly as `synchronous=FULL` would have at the
/// commit, and no caller hears `Ok` before that. Doing it on another thread lets the
/// writer apply the next batch while the disk syncs this one (group commit, pipelined).
pub(super) struct Committed {
    jobs: Vec<Box<dyn Job>>,
    commit_error: Option<String>,
    counters: Arc<WriterCounters>,
}

impl Committed {
    /// Syncs the WAL (if the batch committed) and answers every caller.
    fn sync_and_answer(self, wal: &std::fs::File) {
        let error = match self.commit_error {
            Some(e) => Some(e),
            None => self.counters.timed(|| wal.sync_data()).err().map(|e| {
                tracing::error!(error = %e, batch = self.jobs.len(), "store WAL sync failed");
                format!("sync the write-ahead log: {e}")
            }),
        };
        for job in self.jobs {
            job.finish(error.as_deref());
        }
    }
}

/// The sync thread: syncs and answers committed batches in order until the writer stops.
fn sync_loop(wal: &std::fs::File, batches: &std::sync::mpsc::Receiver<Committed>) {
    while let Ok(batch) = batches.recv() {
        batch.sync_and_answer(wal);
    }
}

// === messages ===

/// The statements every ingest runs, taken from the connection's statement cache once per
/// batch rather than once per message: a cache lookup hashes the SQL text, and putting a
/// statement back copies it, which cost a tenth of the writer thread's time.
pub(crate) struct Hot<'c> {
    /// The writer's connection, inside the batch's transaction.
    pub(crate) conn: &'c Connection,
    duplicate: Option<CachedStatement<'c>>,
    message: Option<CachedStatement<'c>>,
    body: Option<CachedStatement<'c>>,
    totals: Option<CachedStatement<'c>>,
    delivery: Option<CachedStatement<'c>>,
    /// Bytes of the messages inserted since the last [`Hot::flush_totals`]: the `totals`
    /// row is updated once per batch, not once per message (measured: 5% more ingest with
    /// 32 senders).
    pending_bytes: i64,
}

impl<'c> Hot<'c> {
    pub(crate) fn new(conn: &'c Connection) -> Self {
        Hot {
            conn,
            duplicate: None,
            message: None,
            body: None,
            totals: None,
            delivery: None,
            pending_bytes: 0,
        }
    }

    /// Adds the bytes inserted so far to the `totals` row. Runs before anything reads that
    /// row (any write other than an ingest) and before the transaction commits: the caller
    /// that drops a `Hot` after inserting messages flushes it first, or rolls back
    /// (`discard`).
    pub(crate) fn flush_totals(&mut self) -> Result<()> {
        // Taken first: when the update fails, so does the transaction that held the bytes.
        let delta = std::mem::take(&mut self.pending_bytes);
        if delta != 0 {
            statement(self.conn, &mut self.totals, ADD_TOTAL_BYTES)
                .and_then(|s| s.execute([delta]))
                .map_err(sql_err("update totals"))?;
        }
        Ok(())
    }

    /// Forgets the bytes not flushed: the transaction that held them is rolled back.
    pub(crate) fn discard(&mut self) {
        self.pending_bytes = 0;
    }
}

impl Drop for Hot<'_> {
    fn drop(&mut self) {
        debug_assert!(
            self.pending_bytes == 0 || std::thread::panicking(),
            "message bytes inserted but neither flushed to totals nor discarded"
        );
    }
}

/// The statement in `slot`, prepared (from the cache) on first use.
fn statement<'s, 'c>(
    conn: &'c Connection,
    slot: &'s mut Option<CachedStatement<'c>>,
    sql: &str,
) -> rusqlite::Result<&'s mut CachedStatement<'c>> {
    if slot.is_none() {
        *slot = Some(conn.prepare_cached(sql)?);
    }
    Ok(slot.as_mut().expect("just set"))
}

/// `key` is `m.dedup_key()`, computed by the caller off the writer thread.
pub(super) fn ingest(
    hot: &mut Hot<'_>,
    st: &mut WriterState,
    m: &NewMessage,
    key: &[u8; 32],
) -> Result<Ingested> {
    let destinations = m.validated_destinations()?;
    let received = m.received_at.as_millis();
    let duplicate_of = if st.dedup_window.is_zero() {
        None
    } else {
        let since = m.received_at.saturating_sub(st.dedup_window).as_millis();
        statement(
            hot.conn,
            &mut hot.duplicate,
            "SELECT id FROM messages INDEXED BY messages_control_id
             WHERE control_id = ?1 AND dedup_key = ?2 AND duplicate_of IS NULL
               AND received_at >= ?3
             ORDER BY id LIMIT 1",
        )
        .and_then(|s| {
            s.query_row(params![m.control_id, &key[..], since], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
        })
        .map_err(sql_err("look up duplicate"))?
    };
    let status = if duplicate_of.is_some() {
        MessageStatus::Duplicate
    } else if destinations.is_empty() {
        MessageStatus::Filtered
    } else {
        MessageStatus::Pending
    };
    let mut deliveries = Vec::new();
    let id = insert_message(hot, m, key, None, status, duplicate_of)?;
    if duplicate_of.is_none() {
        deliveries.reserve(destinations.len());
        for dest in destinations {
            deliveries.push(insert_delivery(hot, st, id, dest, received, None, None)?);
        }
    }
    Ok(Ingested {
        id: MessageId(id),
        duplicate_of: duplicate_of.map(MessageId),
        deliveries,
    })
}

/// Writes an ingest again from its journal record, with the ids it was given.
pub(super) fn apply_redo(hot: &mut Hot<'_>, st: &mut WriterState, r: &Redo) -> Result<()> {
    let m = &r.message;
    insert_message(hot, m, &r.key, Some(r.id), r.status, r.duplicate_of)?;
    let received = m.received_at.as_millis();
    for (id, dest) in &r.deliveries {
        insert_delivery(hot, st, r.id, dest, received, None, Some(*id))?;
    }
    Ok(())
}

/// Inserts a message's row and body (with `id`, or the next one) and counts its bytes.
fn insert_message(
    hot: &mut Hot<'_>,
    m: &NewMessage,
    key: &[u8; 32],
    id: Option<i64>,
    status: MessageStatus,
    duplicate_of: Option<i64>,
) -> Result<i64> {
    let size = m.raw.len() as i64;
    statement(
        hot.conn,
        &mut hot.message,
        "INSERT INTO messages (id, channel, received_at, peer, tls_identity, control_id,
             message_type, trigger_event, sending_application, sending_facility,
             receiving_application, receiving_facility, patient_id, charset, size, status,
             duplicate_of, dedup_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )
    .and_then(|s| {
        s.execute(params![
            id,
            m.channel,
            m.received_at.as_millis(),
            m.peer,
            m.tls_identity,
            m.control_id,
            m.message_type,
            m.trigger_event,
            m.sending_application,
            m.sending_facility,
            m.receiving_application,
            m.receiving_facility,
            m.patient_id,
            m.charset,
            size,
            status.as_str(),
            duplicate_of,
            &key[..],
        ])
    })
    .map_err(sql_err("insert message"))?;
    let id = hot.conn.last_insert_rowid();
    statement(
        hot.conn,
        &mut hot.body,
        "INSERT INTO message_bodies (message_id, raw) VALUES (?1, ?2)",
    )
    .and_then(|s| s.execute(params![id, &m.raw[..]]))
    .map_err(sql_err("insert message body"))?;
    hot.pending_bytes += size;
    Ok(id)
}

fn insert_delivery(
    hot: &mut Hot<'_>,
    st: &mut WriterState,
    message_id: i64,
    destination: &str,
    created_at: i64,
    replay_of: Option<i64>,
    id: Option<i64>,
) -> Result<DeliveryId> {
    if !st.known_destinations.contains(destination) {
        hot.conn
            .prepare_cached("INSERT OR IGNORE INTO destinations (name) VALUES (?1)")
            .and_then(|mut s| s.execute([destination]))
            .map_err(sql_err("insert destination"))?;
        st.known_destinations.insert(destination.to_owned());
    }
    statement(
        hot.conn,
        &mut hot.delivery,
        "INSERT INTO deliveries (id, message_id, destination, state, created_at, replay_of)
         VALUES (?5, ?1, ?2, 'pending', ?3, ?4)",
    )
    .and_then(|s| s.execute(params![message_id, destination, created_at, replay_of, id]))
    .map_err(sql_err("insert delivery"))?;
    Ok(DeliveryId(hot.conn.last_insert_rowid()))
}

const ADD_TOTAL_BYTES: &str = "UPDATE totals SET message_bytes = message_bytes + ?1 WHERE id = 1";

fn add_total_bytes(conn: &Connection, delta: i64) -> Result<()> {
    conn.prepare_cached(ADD_TOTAL_BYTES)
        .and_then(|mut s| s.execute([delta]))
        .map_err(sql_err("update totals"))?;
    Ok(())
}

/// Rewrites a message's derived status from its deliveries (see `MessageStatus`).
fn refresh_status(conn: &Connection, message_id: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE messages SET status = CASE
             WHEN EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?1
                          AND state = 'dead_letter' AND superseded_by IS NULL) THEN 'dead_letter'
             WHEN EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?1 AND state = 'failed')
                 THEN 'failed'
             WHEN EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?1 AND state = 'pending')
                 THEN 'pending'
             ELSE 'delivered' END
         WHERE id = ?1 AND status NOT IN ('filtered', 'duplicate')",
    )
    .and_then(|mut s| s.execute([message_id]))
    .map_err(sql_err("refresh message status"))?;
    Ok(())
}

pub(super) fn quarantine(conn: &Connection, q: &NewQuarantine) -> Result<QuarantineId> {
    conn.prepare_cached(
        "INSERT INTO quarantine (channel, received_at, peer, tls_identity, reason, raw)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            q.channel,
            q.received_at.as_millis(),
            q.peer,
            q.tls_identity,
            q.reason,
            &q.raw[..],
        ])
    })
    .map_err(sql_err("insert quarantine"))?;
    Ok(QuarantineId(conn.last_insert_rowid()))
}

// === deliveries ===

pub(super) fn record_attempt(
    conn: &Connection,
    delivery: DeliveryId,
    at: Timestamp,
    result: &AttemptResult,
) -> Result<()> {
    let row: Option<(String, i64)> = conn
        .prepare_cached("SELECT state, message_id FROM deliveries WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([delivery.0], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(sql_err("read delivery"))?;
    let Some((state, message_id)) = row else {
        return Err(StoreError::NotFound {
            what: "delivery",
            id: delivery.0,
        });
    };
    let state: DeliveryState = state.parse().map_err(|_| corrupt_state(&state))?;
    if !state.is_queued() {
        return Err(StoreError::Conflict(format!(
            "delivery {delivery} is {} and no longer queued",
            state.as_str()
        )));
    }
    let (outcome, ack_code, ack_text, ack_raw, error, retry_at) = match result {
        AttemptResult::Delivered {
            ack_code,
            ack_text,
            ack_raw,
        } => (
            "delivered",
            ack_code.as_deref(),
            ack_text.as_deref(),
            ack_raw.as_deref(),
            None,
            None,
        ),
        AttemptResult::Failed { error, retry_at } => (
            "failed",
            None,
            None,
            None,
            Some(error.as_str()),
            Some(retry_at.as_millis()),
        ),
        AttemptResult::DeadLettered { error } => {
            ("dead_letter", None, None, None, Some(error.as_str()), None)
        }
    };
    conn.prepare_cached(
        "INSERT INTO attempts (delivery_id, at, outcome, ack_code, ack_text, ack_raw, error, retry_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            delivery.0,
            at.as_millis(),
            outcome,
            ack_code,
            ack_text,
            ack_raw,
            error,
            retry_at
        ])
    })
    .map_err(sql_err("insert attempt"))?;
    conn.prepare_cached(
        "UPDATE deliveries
         SET state = ?2, attempts = attempts + 1, next_attempt_at = COALESCE(?3, next_attempt_at)
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![delivery.0, result.next_state().as_str(), retry_at]))
    .map_err(sql_err("update delivery"))?;
    refresh_status(conn, message_id)
}

pub(super) fn replay(
    conn: &Connection,
    st: &mut WriterState,
    message: MessageId,
    destination: Option<&str>,
    at: Timestamp,
) -> Result<Vec<DeliveryId>> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM messages WHERE id = ?1")
        .and_then(|mut s| s.exists([message.0]))
        .map_err(sql_err("read message"))?;
    if !exists {
        return Err(StoreError::NotFound {
            what: "message",
            id: message.0,
        });
    }
    // The destinations it was routed to at ingest: the deliveries that are not replays.
    let routed: Vec<String> = conn
        .prepare_cached(
            "SELECT destination FROM deliveries
             WHERE message_id = ?1 AND replay_of IS NULL ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([message.0], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(sql_err("read destinations"))?;
    let targets: Vec<&str> = match destination {
        None => routed.iter().map(String::as_str).collect(),
        Some(d) if routed.iter().any(|r| r == d) => vec![d],
        Some(d) => {
            return Err(StoreError::InvalidInput(format!(
                "message {message} was not routed to {d:?}"
            )));
        }
    };
    let mut created = Vec::with_capacity(targets.len());
    for dest in targets {
        let previous: i64 = conn
            .prepare_cached(
                "SELECT MAX(id) FROM deliveries WHERE message_id = ?1 AND destination = ?2",
            )
            .and_then(|mut s| s.query_row(params![message.0, dest], |r| r.get(0)))
            .map_err(sql_err("read last delivery"))?;
        let new = insert_delivery(
            &mut Hot::new(conn),
            st,
            message.0,
            dest,
            at.as_millis(),
            Some(previous),
            None,
        )?;
        conn.prepare_cached(
            "UPDATE deliveries SET superseded_by = ?3
             WHERE message_id = ?1 AND destination = ?2 AND state = 'dead_letter'
               AND superseded_by IS NULL",
        )
        .and_then(|mut s| s.execute(params![message.0, dest, new.0]))
        .map_err(sql_err("supersede dead letters"))?;
        created.push(new);
    }
    refresh_status(conn, message.0)?;
    Ok(created)
}

pub(super) fn replay_dead_letters(
    conn: &Connection,
    destination: &str,
    at: Timestamp,
) -> Result<Vec<Replayed>> {
    let dead: Vec<(i64, i64)> = conn
        .prepare_cached(
            "SELECT id, message_id FROM deliveries
             WHERE destination = ?1 AND state = 'dead_letter' AND superseded_by IS NULL
             ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([destination], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(sql_err("read dead letters"))?;
    let mut created = Vec::with_capacity(dead.len());
    for (old, message_id) in dead {
        conn.prepare_cached(
            "INSERT INTO deliveries (message_id, destination, state, created_at, replay_of)
             VALUES (?1, ?2, 'pending', ?3, ?4)",
        )
        .and_then(|mut s| s.execute(params![message_id, destination, at.as_millis(), old]))
        .map_err(sql_err("insert delivery"))?;
        let new = conn.last_insert_rowid();
        conn.prepare_cached("UPDATE deliveries SET superseded_by = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute([old, new]))
            .map_err(sql_err("supersede dead letter"))?;
        refresh_status(conn, message_id)?;
        created.push(Replayed {
            delivery: DeliveryId(new),
            message: MessageId(message_id),
        });
    }
    Ok(created)
}

// === retention ===

/// Deletes up to `chunk` settled messages received before `cutoff`; returns (count, bytes).
pub(super) fn prune_by_age(
    conn: &Connection,
    cutoff: Timestamp,
    chunk: usize,
) -> Result<(u64, u64)> {
    let victims: Vec<(i64, i64)> = conn
        .prepare_cached(
            "SELECT id, size FROM messages
             WHERE received_at < ?1 AND status IN ('delivered', 'filtered', 'duplicate')
             LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![cutoff.as_millis(), chunk as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()
        })
        .map_err(sql_err("select messages to prune"))?;
    let mut bytes = 0;
    for &(id, size) in &victims {
        delete_message(conn, id, size)?;
        bytes += size as u64;
    }
    Ok((victims.len() as u64, bytes))
}

/// Deletes settled messages oldest first, up to `chunk`, while the total exceeds `budget`.
/// Returns (count, bytes, done); done when under budget or nothing settled is left.
pub(super) fn prune_by_size(
    conn: &Connection,
    budget: u64,
    chunk: usize,
) -> Result<(u64, u64, bool)> {
    let mut total: i64 = conn
        .query_row("SELECT message_bytes FROM totals WHERE id = 1", [], |r| {
            r.get(0)
        })
        .map_err(sql_err("read totals"))?;
    let budget = i64::try_from(budget).unwrap_or(i64::MAX);
    if total <= budget {
        return Ok((0, 0, true));
    }
    let oldest: Vec<(i64, i64)> = conn
        .prepare_cached(
            "SELECT id, size FROM messages
             WHERE status IN ('delivered', 'filtered', 'duplicate') ORDER BY id LIMIT ?1",
        )
        .and_then(|mut s| {
            s.query_map([chunk as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(sql_err("select messages to prune"))?;
    let (mut n, mut bytes) = (0, 0);
    for &(id, size) in &oldest {
        if total <= budget {
            break;
        }
        delete_message(conn, id, size)?;
        total -= size;
        n += 1;
        bytes += size as u64;
    }
    let done = total <= budget || oldest.len() < chunk;
    Ok((n, bytes, done))
}

fn delete_message(conn: &Connection, id: i64, size: i64) -> Result<()> {
    for sql in [
        "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE message_id = ?1)",
        "DELETE FROM deliveries WHERE message_id = ?1",
        "DELETE FROM message_bodies WHERE message_id = ?1",
        "DELETE FROM messages WHERE id = ?1",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([id]))
            .map_err(sql_err("delete message"))?;
    }
    add_total_bytes(conn, -size)
}

/// Deletes up to `chunk` quarantined frames received before `cutoff`.
pub(super) fn prune_quarantine(conn: &Connection, cutoff: Timestamp, chunk: usize) -> Result<u64> {
    let n = conn
        .prepare_cached(
            "DELETE FROM quarantine WHERE id IN
                 (SELECT id FROM quarantine WHERE received_at < ?1 LIMIT ?2)",
        )
        .and_then(|mut s| s.execute(params![cutoff.as_millis(), chunk as i64]))
        .map_err(sql_err("prune quarantine"))?;
    Ok(n as u64)
}

// === audit, leases, health ===

pub(super) fn audit(conn: &Connection, e: &AuditEntry) -> Result<AuditId> {
    let ids = e
        .message_ids
        .iter()
        .map(|id| id.0.to_string())
        .collect::<Vec<_>>()
        .join(",");
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, address, action, message_ids, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            e.at.as_millis(),
            e.actor,
            e.address,
            e.action.as_str(),
            ids,
            e.detail
        ])
    })
    .map_err(sql_err("insert audit entry"))?;
    Ok(AuditId(conn.last_insert_rowid()))
}

pub(super) fn acquire_lease(
    conn: &Connection,
    destination: &str,
    node_id: &str,
    ttl: Duration,
    now: Timestamp,
) -> Result<bool> {
    check_lease_names(destination, node_id)?;
    let n = conn
        .prepare_cached(
            "INSERT INTO leases (destination, node_id, expires_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (destination) DO UPDATE
                 SET node_id = excluded.node_id, expires_at = excluded.expires_at
                 WHERE leases.node_id = excluded.node_id OR leases.expires_at <= ?4",
        )
        .and_then(|mut s| {
            s.execute(params![
                destination,
                node_id,
                now.saturating_add(ttl).as_millis(),
                now.as_millis()
            ])
        })
        .map_err(sql_err("acquire lease"))?;
    Ok(n > 0)
}

pub(super) fn renew_lease(
    conn: &Connection,
    destination: &str,
    node_id: &str,
    ttl: Duration,
    now: Timestamp,
) -> Result<bool> {
    check_lease_names(destination, node_id)?;
    let n = conn
        .prepare_cached(
            "UPDATE leases SET expires_at = ?3
             WHERE destination = ?1 AND node_id = ?2 AND expires_at > ?4",
        )
        .and_then(|mut s| {
            s.execute(params![
                destination,
                node_id,
                now.saturating_add(ttl).as_millis(),
                now.as_millis()
            ])
        })
        .map_err(sql_err("renew lease"))?;
    Ok(n > 0)
}

pub(super) fn release_lease(conn: &Connection, destination: &str, node_id: &str) -> Result<bool> {
    let n = conn
        .prepare_cached("DELETE FROM leases WHERE destination = ?1 AND node_id = ?2")
        .and_then(|mut s| s.execute([destination, node_id]))
        .map_err(sql_err("release lease"))?;
    Ok(n > 0)
}

fn check_lease_names(destination: &str, node_id: &str) -> Result<()> {
    if destination.is_empty() || node_id.is_empty() {
        return Err(StoreError::InvalidInput(
            "lease destination and node id must not be empty".into(),
        ));
    }
    Ok(())
}

/// A real write, so a full disk or a read-only file shows up as not ready.
pub(super) fn health(conn: &Connection) -> Result<()> {
    conn.prepare_cached("UPDATE health SET checks = checks + 1 WHERE id = 1")
        .and_then(|mut s| s.execute([]))
        .map_err(sql_err("health check write"))?;
    Ok(())
}

pub(super) fn corrupt_state(s: &str) -> StoreError {
    StoreError::Corrupt(format!("unknown state {s:?}"))
}
