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
}

/// The writer's counters. Relaxed atomics: they are statistics, read independently.
#[derive(Debug, Default)]
pub(crate) struct WriterCounters {
    commits: AtomicU64,
    requests: AtomicU64,
    failed_commits: AtomicU64,
    journal_syncs_on_writer: AtomicU64,
}

impl WriterCounters {
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
        }
    }
}
