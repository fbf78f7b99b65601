//! Group-commit statistics shared by the backends' writers.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a backend's writer has done since the store was opened, for metrics: the mean
/// batch size (`requests / commits`) shows how much group commit is saving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Transactions committed (one disk sync each).
    pub commits: u64,
    /// Ingests run in batches, whether their batch committed or not.
    pub requests: u64,
    /// Batches whose commit failed (every request in them failed as unavailable).
    pub failed_commits: u64,
    /// Of the commits, the SQLite ingest journal's batches that the writer synced itself
    /// because nothing else was waiting (the others went to the journal thread).
    pub journal_syncs_on_writer: u64,
    /// Durable writes made: a journal write and sync, a WAL sync, or (PostgreSQL) a
    /// batch's transaction. One may cover several batches.
    pub syncs: u64,
    /// The time those took in all: `sync_time / syncs` is what a caller waits for the disk
    /// (or the database server) on average.
    pub sync_time: std::time::Duration,
}

/// The writer's counters. Relaxed atomics: they are statistics, read independently.
#[derive(Debug, Default)]
pub(crate) struct WriterCounters {
    commits: AtomicU64,
    requests: AtomicU64,
    failed_commits: AtomicU64,
    journal_syncs_on_writer: AtomicU64,
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
}

impl WriterCounters {
    /// Runs `sync`, a durable write, and counts it and its time.
    pub(crate) fn timed<T>(&self, sync: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let out = sync();
        self.synced(started.elapsed());
        out
    }

    /// Counts one durable write that took `took`.
    pub(crate) fn synced(&self, took: std::time::Duration) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sync_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Counts one batch of `requests` that committed (`ok`) or failed.
    pub(crate) fn batch(&self, requests: usize, ok: bool) {
        let counter = if ok {
            &self.commits
        } else {
            &self.failed_commits
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
    }

    /// Counts a journal batch the writer synced itself.
    pub(crate) fn journal_sync_on_writer(&self) {
        self.journal_syncs_on_writer.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.commits.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            journal_syncs_on_writer: self.journal_syncs_on_writer.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            sync_time: std::time::Duration::from_nanos(self.sync_nanos.load(Ordering::Relaxed)),
        }
    }
}
