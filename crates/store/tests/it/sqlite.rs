//! The conformance suite on SQLite, plus what only SQLite has (the file, WAL, migrations).

use causeway_store::conformance::Backend;
use causeway_store::sqlite::SqliteStore;
use causeway_store::{Result, StoreSettings};
use tempfile::TempDir;

/// A store file in its own temporary directory, removed when dropped.
pub struct TempSqlite {
    dir: TempDir,
    journal: bool,
}

impl TempSqlite {
    pub fn new() -> Self {
        TempSqlite {
            dir: tempfile::tempdir().unwrap(),
            journal: true,
        }
    }

    /// A store that commits and syncs every batch in SQLite (`journal_bytes = 0`).
    pub fn without_journal() -> Self {
        TempSqlite {
            journal: false,
            ..TempSqlite::new()
        }
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("journal.db")
    }
}

impl Backend for TempSqlite {
    type Store = SqliteStore;

    async fn open(&self, settings: StoreSettings) -> Result<SqliteStore> {
        let settings = if self.journal {
            settings
        } else {
            settings.journal_bytes(0)
        };
        SqliteStore::open(self.path(), settings).await
    }
}

causeway_store::conformance_tests!(TempSqlite::new());

/// The same suite with the ingest journal off: every batch committed and synced.
mod without_journal {
    use super::TempSqlite;

    causeway_store::conformance_tests!(TempSqlite::without_journal());
}

// === SQLite only ===

mod file {
    use std::sync::Arc;
    use std::time::Duration;

    use causeway_store::conformance::{Backend, at, message};
    use causeway_store::{AttemptResult, Retention, SearchQuery, Store, StoreError, StoreSettings};

    use super::TempSqlite;

    #[tokio::test]
    async fn wal_mode_and_schema_version() {
        let backend = TempSqlite::new();
        let store = backend.open(StoreSettings::default()).await.unwrap();
        store
            .ingest(message("ch", "W1", &["d"], at(0)))
            .await
            .unwrap();
        let conn = rusqlite::Connection::open(backend.path()).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let version: i64 = conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, causeway_store::sqlite::schema::CURRENT_VERSION);
        // Reopening does not migrate again: one row per migration.
        store.close().await.unwrap();
        let store = backend.open(StoreSettings::default()).await.unwrap();
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, causeway_store::sqlite::schema::CURRENT_VERSION);
        assert_eq!(store.next_pending("d", at(0), 5).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let backend = TempSqlite::new();
        let store = backend.open(StoreSettings::default()).await.unwrap();
        store.close().await.unwrap();
        let conn = rusqlite::Connection::open(backend.path()).unwrap();
        conn.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (99, 0)",
            [],
        )
        .unwrap();
        let err = backend.open(StoreSettings::default()).await.unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
            "{err:?}"
        );
    }

    /// Concurrent ingests share commits: far fewer syncs than messages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_shares_syncs() {
        let backend = TempSqlite::new();
        let store = Arc::new(backend.open(StoreSettings::default()).await.unwrap());
        let before = store.writer_stats();
        let mut tasks = Vec::new();
        for t in 0..32 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                for i in 0..40 {
                    store
                        .ingest(message("ch", &format!("G{t}-{i}"), &["d"], at(0)))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let stats = store.writer_stats();
        let requests = stats.requests - before.requests;
        let commits = stats.commits - before.commits;
        assert_eq!(requests, 32 * 40);
        assert!(
            commits * 2 < requests,
            "{commits} commits for {requests} requests: no batching"
        );
        // Every batch was made durable by a timed journal sync, which may cover several.
        let syncs = stats.syncs - before.syncs;
        assert!(
            (1..=commits).contains(&syncs),
            "{syncs} syncs for {commits} batches"
        );
        assert!(stats.sync_time > before.sync_time);
    }

    /// A full database fails ingest as Unavailable (the sender gets AE), stores nothing of
    /// the failed message, and recovers once retention frees space.
    #[tokio::test]
    async fn full_database_is_unavailable_then_recovers() {
        full_database(StoreSettings::default()).await;
    }

    /// The same with every acknowledged ingest still in the writer's open transaction
    /// when the database fills up: the failure rolls it back, and the writer applies the
    /// acknowledged ingests again from their journal records.
    #[tokio::test]
    async fn full_database_with_an_open_transaction_keeps_what_was_acknowledged() {
        full_database(
            StoreSettings::default()
                .journal_commit_messages(usize::MAX)
                .journal_commit_interval(Duration::from_secs(3600))
                .journal_idle_commit(Duration::from_secs(3600)),
        )
        .await;
    }

    async fn full_database(settings: StoreSettings) {
        let backend = TempSqlite::new();
        let store = backend
            .open(settings.max_database_bytes(512 * 1024))
            .await
            .unwrap();
        let mut stored = Vec::new();
        let err = loop {
            let mut m = message("ch", &format!("BIG{}", stored.len()), &["d"], at(0));
            m.raw = vec![b'x'; 32 * 1024].into();
            match store.ingest(m).await {
                Ok(got) => stored.push(got),
                Err(e) => break e,
            }
            assert!(stored.len() < 100, "the size limit never hit");
        };
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert!(err.is_store_failure());
        assert!(store.writer_stats().failed_commits >= 1);
        // What was acknowledged is intact; the failed message left nothing behind.
        let page = store.search(SearchQuery::default()).await.unwrap();
        assert_eq!(page.messages.len(), stored.len());
        assert_eq!(
            store.next_pending("d", at(0), 1000).await.unwrap().len(),
            stored.len()
        );
        // Deliver and prune everything: the space is reused.
        for got in &stored {
            store
                .record_attempt(got.deliveries[0], at(1), AttemptResult::delivered())
                .await
                .unwrap();
        }
        let report = store
            .prune(
                at(2),
                Retention {
                    max_age: None,
                    max_total_bytes: Some(0),
                },
            )
            .await
            .unwrap();
        assert_eq!(report.messages, stored.len() as u64);
        let mut m = message("ch", "AFTER", &["d"], at(3));
        m.raw = vec![b'y'; 32 * 1024].into();
        store.ingest(m).await.unwrap();
        store.health().await.unwrap();
    }
}
