//! The SQLite backend: one file, WAL mode, group commit.
//!
//! # Threads
//! SQLite allows one writer at a time. So every write goes to a single writer thread (a
//! plain OS thread, never a tokio worker) through a bounded queue; it takes whatever is
//! queued, up to [`StoreSettings::max_batch`] requests, and runs them as one batch.
//!
//! Ingests are made durable by the ingest journal (see `journal.rs`): the writer applies
//! them to a transaction it keeps open across batches, and a journal thread
//! (`cw-store-journal`) appends their records to the journal file, syncs it, and answers
//! them. The open transaction is committed without a sync when it is large, old or idle,
//! before any other write, and when a read needs it: a read first waits until every
//! ingest answered so far is committed (`SqliteStore::barrier`), so reads see every write
//! that returned before they started.
//!
//! Every other write (and every write when the journal is off) commits its batch: the
//! callers are answered once the WAL is synced. Under load the WAL sync runs on a second
//! thread (`cw-store-sync`), so the writer applies the next batch while the disk syncs
//! the last one; idle, a lone request is committed at once. A third thread
//! (`cw-store-ckpt`) checkpoints the WAL into the database file every 100 ms, off the
//! commit path.
//!
//! Reads run on tokio's blocking pool over a small pool of read connections; in WAL mode
//! they see the last commit and never wait for the writer.
//!
//! A refused request (invalid input, not found, conflict) is refused before it writes
//! anything and leaves the rest of the batch alone. A store failure part way (disk full)
//! or a failed commit rolls the batch back and fails every request in it with
//! [`crate::StoreError::Unavailable`], and the next batch tries again.
//!
//! The schema and its invariants are documented in [`schema`].

mod journal;
mod read;
pub mod schema;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::Replayed;
use crate::error::{Result, StoreError};
use crate::store::{Store, StoreSettings};
use crate::types::{
    AttemptResult, AuditEntry, AuditId, AuditRecord, Cursor, DeliveryId, DestinationStats,
    Ingested, Lease, MessageId, MessageRecord, NewMessage, NewQuarantine, PendingDelivery,
    PruneReport, QuarantineId, QuarantinePage, Retention, SearchPage, SearchQuery, Timestamp,
};
use journal::JournalFile;
use writer::{Command, JournalSide, Progress, WriterState};

/// The SQLite [`Store`]. Cheap to share behind an `Arc`; dropping the last handle stops
/// the writer after it has committed what was queued.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    settings: StoreSettings,
    writer: mpsc::Sender<Command>,
    /// Unparked after each request, for the writer's linger (see `writer::Linger`).
    writer_thread: std::thread::Thread,
    readers: Arc<Readers>,
    counters: Arc<WriterCounters>,
    /// How far journaled ingests are applied and committed; `None` without a journal.
    progress: Option<Arc<Progress>>,
    /// The journal's failure flag, for tests that make it fail.
    #[cfg(test)]
    journal_shared: Option<Arc<journal::JournalShared>>,
}

pub(crate) use crate::writer_stats::WriterCounters;
pub use crate::writer_stats::WriterStats;

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, migrates its schema and starts the
    /// writer thread. Fails with `SchemaTooNew` on a file from a newer build.
    pub async fn open(path: impl AsRef<Path>, settings: StoreSettings) -> Result<Self> {
        let path = path.as_ref().to_owned();
        if settings.max_batch == 0 || settings.write_queue == 0 || settings.read_connections == 0 {
            return Err(StoreError::InvalidInput(
                "max_batch, write_queue and read_connections must be at least 1".into(),
            ));
        }
        let open_path = path.clone();
        let busy = settings.busy_timeout;
        let max_bytes = settings.max_database_bytes;
        let journal_settings = settings.clone();
        let (conn, checkpoint_conn, wal, recovered) =
            tokio::task::spawn_blocking(move || -> Result<_> {
                let mut conn = open_connection(&open_path, busy, false)?;
                // The only clock read: when a migration was applied, for the record.
                let now = Timestamp::from(SystemTime::now()).as_millis();
                schema::migrate(&mut conn, now)?;
                if let Some(bytes) = max_bytes {
                    let page_size: i64 = conn
                        .query_row("PRAGMA page_size", [], |r| r.get(0))
                        .map_err(sql_err("read page size"))?;
                    let pages = i64::try_from(bytes).unwrap_or(i64::MAX) / page_size.max(1);
                    conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                        .map_err(sql_err("set max page count"))?;
                }
                // Before anything else writes: ingests answered from the journal and not yet
                // committed here (a crash, a power cut) are applied again.
                let recovered = recover(&mut conn, &open_path, &journal_settings)?;
                let checkpoint_conn = open_connection(&open_path, busy, false)?;
                // The writer commits without syncing and the WAL is synced through this
                // handle before any caller is answered (see `writer::Committed`).
                conn.execute_batch("PRAGMA synchronous = NORMAL")
                    .map_err(sql_err("set writer synchronous mode"))?;
                let mut wal_path = open_path.clone().into_os_string();
                wal_path.push("-wal");
                let wal = std::fs::File::open(&wal_path)
                    .map_err(|e| StoreError::unavailable("open the write-ahead log", e))?;
                Ok((conn, checkpoint_conn, wal, recovered))
            })
            .await
            .map_err(|e| StoreError::unavailable("open store", e))??;

        let (tx, rx) = mpsc::channel(settings.write_queue);
        let counters = Arc::new(WriterCounters::default());
        let state = WriterState::new(&settings, Arc::clone(&counters));
        let max_batch = settings.max_batch;
        let mut progress = None;
        let journal = recovered.map(|(file, generation, seq)| {
            let p = Arc::new(Progress::new(seq));
            progress = Some(Arc::clone(&p));
            JournalSide::new(file, p, generation, seq, &settings, Arc::clone(&counters))
        });
        #[cfg(test)]
        let journal_shared = journal.as_ref().map(|j| Arc::clone(&j.shared));
        let writer_thread = std::thread::Builder::new()
            .name("cw-store-writer".into())
            .spawn(move || writer::run(conn, checkpoint_conn, wal, rx, state, max_batch, journal))
            .map_err(|e| StoreError::unavailable("start writer thread", e))?
            .thread()
            .clone();

        Ok(SqliteStore {
            readers: Arc::new(Readers {
                path: path.clone(),
                busy_timeout: busy,
                permits: Arc::new(Semaphore::new(settings.read_connections)),
                idle: Mutex::new(Vec::new()),
            }),
            path,
            settings,
            writer: tx,
            writer_thread,
            counters,
            progress,
            #[cfg(test)]
            journal_shared,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The settings it was opened with.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// Runs `f` on the writer thread inside the next batch's transaction and returns its
    /// result once the batch is committed. `f` must refuse a request only before its
    /// first change (see `writer::Job`).
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriterState) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.send(Command::job(f, reply)).await?;
        // A dropped reply means the writer thread is gone (it panicked).
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops the writer as a crash would (the open transaction is lost, what the
    /// journal holds is not), for recovery tests.
    #[cfg(test)]
    async fn crash(&self) {
        let (done, crashed) = oneshot::channel();
        if self.send(Command::Crash(done)).await.is_ok() {
            let _ = crashed.await;
        }
        self.readers.close();
    }

    /// Queues a command for the writer and wakes it (it may be lingering).
    async fn send(&self, command: Command) -> Result<()> {
        self.writer
            .send(command)
            .await
            .map_err(|_| StoreError::Closed)?;
        self.writer_thread.unpark();
        Ok(())
    }

    /// Waits until every ingest answered before now is committed, so that a read sees
    /// it: journaled ingests are answered from an open transaction (see `journal`).
    async fn barrier(&self) -> Result<()> {
        let Some(progress) = &self.progress else {
            return Ok(());
        };
        let want = progress.applied.load(Ordering::Acquire);
        let mut committed = progress.committed.subscribe();
        if *committed.borrow() >= want {
            return Ok(());
        }
        self.send(Command::Barrier).await?;
        match tokio::time::timeout(
            self.settings.busy_timeout,
            committed.wait_for(|&c| c >= want),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::unavailable(
                "read",
                "journaled ingests were not committed in time",
            )),
        }
    }

    /// Runs `f` with a read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        if self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        self.barrier().await?;
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let out = f(&conn);
            readers.give_back(conn);
            drop(permit);
            out
        })
        .await
        .map_err(|e| StoreError::unavailable("read task", e))?
    }
}

// === impl Store ===

#[async_trait]
impl Store for SqliteStore {
    async fn ingest(&self, message: NewMessage) -> Result<Ingested> {
        // Hashed here, on the caller's thread: the writer thread is the bottleneck.
        let key = message.dedup_key();
        let (reply, answer) = oneshot::channel();
        self.send(Command::ingest(message, key, reply)).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn quarantine(&self, entry: NewQuarantine) -> Result<QuarantineId> {
        self.write(move |c, _| writer::quarantine(c, &entry)).await
    }

    async fn record_attempt(
        &self,
        delivery: DeliveryId,
        at: Timestamp,
        result: AttemptResult,
    ) -> Result<()> {
        self.write(move |c, _| writer::record_attempt(c, delivery, at, &result))
            .await
    }

    async fn replay(
        &self,
        message: MessageId,
        destination: Option<&str>,
        at: Timestamp,
    ) -> Result<Vec<DeliveryId>> {
        let destination = destination.map(str::to_owned);
        self.write(move |c, st| writer::replay(c, st, message, destination.as_deref(), at))
            .await
    }

    async fn replay_dead_letters(&self, destination: &str, at: Timestamp) -> Result<Vec<Replayed>> {
        let destination = destination.to_owned();
        self.write(move |c, _| writer::replay_dead_letters(c, &destination, at))
            .await
    }

    async fn prune(&self, now: Timestamp, retention: Retention) -> Result<PruneReport> {
        let chunk = self.settings.prune_chunk.max(1);
        let mut report = PruneReport::default();
        if let Some(age) = retention.max_age {
            let cutoff = now.saturating_sub(age);
            loop {
                let (n, bytes) = self
                    .write(move |c, _| writer::prune_by_age(c, cutoff, chunk))
                    .await?;
                report.messages += n;
                report.bytes += bytes;
                if n < chunk as u64 {
                    break;
                }
            }
            loop {
                let n = self
                    .write(move |c, _| writer::prune_quarantine(c, cutoff, chunk))
                    .await?;
                report.quarantined += n;
                if n < chunk as u64 {
                    break;
                }
            }
        }
        if let Some(budget) = retention.max_total_bytes {
            loop {
                let (n, bytes, done) = self
                    .write(move |c, _| writer::prune_by_size(c, budget, chunk))
                    .await?;
                report.messages += n;
                report.bytes += bytes;
                if done {
                    break;
                }
            }
        }
        if report.messages > 0 || report.quarantined > 0 {
            tracing::info!(
                messages = report.messages,
                bytes = report.bytes,
                quarantined = report.quarantined,
                "store pruned"
            );
        }
        Ok(report)
    }

    async fn audit(&self, entry: AuditEntry) -> Result<AuditId> {
        self.write(move |c, _| writer::audit(c, &entry)).await
    }

    async fn acquire_lease(
        &self,
        destination: &str,
        node_id: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool> {
        let (destination, node_id) = (destination.to_owned(), node_id.to_owned());
        self.write(move |c, _| writer::acquire_lease(c, &destination, &node_id, ttl, now))
            .await
    }

    async fn renew_lease(
        &self,
        destination: &str,
        node_id: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool> {
        let (destination, node_id) = (destination.to_owned(), node_id.to_owned());
        self.write(move |c, _| writer::renew_lease(c, &destination, &node_id, ttl, now))
            .await
    }

    async fn release_lease(&self, destination: &str, node_id: &str) -> Result<bool> {
        let (destination, node_id) = (destination.to_owned(), node_id.to_owned());
        self.write(move |c, _| writer::release_lease(c, &destination, &node_id))
            .await
    }

    async fn next_pending(
        &self,
        destination: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>> {
        let destination = destination.to_owned();
        self.read(move |c| read::next_pending(c, &destination, now, limit))
            .await
    }

    async fn message(&self, id: MessageId) -> Result<Option<MessageRecord>> {
        self.read(move |c| read::message(c, id)).await
    }

    async fn search(&self, mut query: SearchQuery) -> Result<SearchPage> {
        query.limit = self.settings.clamp_limit(query.limit);
        self.read(move |c| read::search(c, &query)).await
    }

    async fn list_quarantine(
        &self,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<QuarantinePage> {
        let limit = self.settings.clamp_limit(limit);
        self.read(move |c| read::list_quarantine(c, limit, cursor.as_ref()))
            .await
    }

    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        let limit = self.settings.clamp_limit(limit);
        self.read(move |c| read::list_audit(c, limit)).await
    }

    async fn queue_stats(&self) -> Result<Vec<DestinationStats>> {
        self.read(read::queue_stats).await
    }

    fn writer_stats(&self) -> WriterStats {
        self.counters.stats()
    }

    async fn leases(&self) -> Result<Vec<Lease>> {
        self.read(read::leases).await
    }

    async fn health(&self) -> Result<()> {
        self.write(|c, _| writer::health(c)).await
    }

    async fn close(&self) -> Result<()> {
        let (done, closed) = oneshot::channel();
        self.writer
            .send(Command::Close(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        closed.await.map_err(|_| StoreError::Closed)?;
        self.readers.close();
        Ok(())
    }
}

// === recovery ===

/// Applies the journal's ingests that the database does not hold, then starts a new
/// generation (see `journal`). Returns the journal, its new generation and the last
/// sequence number used; `None` when the journal is off (after recovering what an
/// earlier run with it left).
fn recover(
    conn: &mut Connection,
    database: &Path,
    settings: &StoreSettings,
) -> Result<Option<(JournalFile, u64, u64)>> {
    let path = journal::path_for(database);
    if settings.journal_bytes == 0 && !path.exists() {
        return Ok(None);
    }
    let (file, contents) = JournalFile::open(&path, settings.journal_bytes, settings.busy_timeout)?;
    // The write lock first, so the mark read is the one the ingests are applied against.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql_err("begin journal recovery"))?;
    let (generation, applied): (i64, i64) = tx
        .query_row(
            "SELECT generation, applied_seq FROM ingest_journal WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql_err("read the journal mark"))?;
    let (generation, applied) = (generation as u64, applied as u64);
    let (records, last) = journal::scan(&contents, generation, applied)?;
    drop(contents);
    let seq = last.max(applied);
    let mut state = WriterState::new(settings, Arc::new(WriterCounters::default()));
    let mut hot = writer::Hot::new(&tx);
    for (_, redo) in &records {
        if let Err(e) = writer::apply_redo(&mut hot, &mut state, redo) {
            hot.discard();
            return Err(e);
        }
    }
    hot.flush_totals()?;
    drop(hot);
    tx.execute(
        "UPDATE ingest_journal SET generation = ?1, applied_seq = ?2 WHERE id = 1",
        (generation as i64 + 1, seq as i64),
    )
    .map_err(sql_err("write the journal mark"))?;
    // This connection still has synchronous=FULL: the commit is synced.
    tx.commit().map_err(sql_err("commit journal recovery"))?;
    if !records.is_empty() {
        tracing::warn!(
            ingests = records.len(),
            journal = %path.display(),
            "store applied acknowledged ingests again from its journal (the last run did not close the store)"
        );
    }
    if settings.journal_bytes == 0 {
        drop(file);
        std::fs::remove_file(&path)
            .map_err(|e| StoreError::unavailable("remove the ingest journal", e))?;
        return Ok(None);
    }
    Ok(Some((file, generation + 1, seq)))
}

// === Readers ===

/// The read connections. A `std` mutex: it is held only to push or pop a connection,
/// never across an await or a query.
#[derive(Debug)]
struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    /// One permit per connection: at most `read_connections` exist.
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn take(&self) -> Result<Connection> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => open_connection(&self.path, self.busy_timeout, true),
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    fn close(&self) {
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// Prepared statements kept per connection (see `open_connection`).
const STATEMENT_CACHE: usize = 64;

fn open_connection(path: &Path, busy_timeout: Duration, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(sql_err("open database"))?;
    // Every statement the store runs stays prepared: the writer alone has more than
    // rusqlite's default of 16, and re-preparing one costs more than running it.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // The bundled SQLite is built with STAT4, which makes a statement whose plan could
    // depend on a bound value (the dedup lookup's `received_at >= ?`) re-prepare itself
    // whenever that value changes: on every ingest. The query planner stability
    // guarantee turns that off; our plans are fixed by their indexes anyway.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(sql_err("fix query plans"))?;
    if read_only {
        conn.busy_timeout(busy_timeout)
            .map_err(sql_err("set busy timeout"))?;
    } else {
        schema::configure(&conn, busy_timeout)?;
    }
    Ok(conn)
}

/// Maps a rusqlite error: conversion failures mean the data is not what we wrote,
/// everything else is the database failing us.
pub(crate) fn sql_err(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt(format!("{context}: {e}")),
        e => StoreError::unavailable(context, e),
    }
}
