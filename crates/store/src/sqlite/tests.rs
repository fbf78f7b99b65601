//! Crash recovery through the ingest journal. A crash is simulated by stopping the
//! writer with its transaction open (`SqliteStore::crash`): SQLite loses that
//! transaction exactly as it would on `kill -9`, and the journal keeps what it wrote.
//! (`scripts/crash-test` and the gateway's crash test kill the real process.)

use std::time::Duration;

use super::*;
use crate::conformance::{at, message};
use crate::types::{DeliveryState, Ingested, MessageStatus};

/// Settings under which the writer never commits on its own: whatever was acknowledged
/// is in the journal only, until a read asks for a commit.
fn never_commits() -> StoreSettings {
    StoreSettings::default()
        .journal_commit_messages(usize::MAX)
        .journal_commit_interval(Duration::from_secs(3600))
        .journal_idle_commit(Duration::from_secs(3600))
}

/// Messages committed in the file, read past the store.
fn committed_messages(path: &Path) -> i64 {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .unwrap()
}

/// Checks, past the store, that the `totals` row counts exactly the bytes of the messages
/// committed (it is updated once per batch, and again when a journal is replayed).
fn assert_totals_match(path: &Path) {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let (total, sum): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT message_bytes FROM totals WHERE id = 1),
                    (SELECT COALESCE(SUM(size), 0) FROM messages)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        total, sum,
        "totals.message_bytes against SUM(messages.size)"
    );
}

/// Opens a store at `path` that never commits on its own, ingests `n` messages (control
/// ids `prefix0`, `prefix1`, ...) to destination `a`, and crashes it.
async fn ingest_then_crash(path: &Path, prefix: &str, n: i64) -> Vec<Ingested> {
    let store = SqliteStore::open(path, never_commits()).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..n {
        acked.push(
            store
                .ingest(message("ch", &format!("{prefix}{i}"), &["a"], at(i)))
                .await
                .unwrap(),
        );
    }
    store.crash().await;
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_ingests_survive_a_crash_in_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let store = Arc::new(SqliteStore::open(&path, never_commits()).await.unwrap());
    // Under load the journal thread syncs batches; but eight senders in step can find the
    // writer idle each time (on a fast machine, every time), so the first five batches go
    // to the thread whatever the timing.
    let shared = store.journal_shared.as_ref().expect("the journal is on");
    shared
        .force_thread
        .store(5, std::sync::atomic::Ordering::Release);
    // Eight concurrent senders: two destinations, a filtered message and resends.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..25 {
                let destinations: &[&str] = match i % 5 {
                    0 => &[],
                    1 => &["b"],
                    _ => &["a", "b"],
                };
                let m = message("ch", &format!("T{t}-{}", i % 20), destinations, at(i));
                got.push((m.control_id.clone(), store.ingest(m).await.unwrap()));
            }
            got
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 200);
    assert!(acked.iter().any(|(_, i)| i.duplicate_of.is_some()));
    // (Batches that went to the thread anyway may have left some of the five unused.)
    let shared = store.journal_shared.as_ref().expect("the journal is on");
    shared
        .force_thread
        .store(0, std::sync::atomic::Ordering::Release);
    // Then one sender alone: its batches are synced on the writer thread, after (and in
    // sequence with) those the journal thread synced.
    for i in 0..20 {
        let m = message("ch", &format!("ALONE-{i}"), &["a"], at(i));
        acked.push((m.control_id.clone(), store.ingest(m).await.unwrap()));
    }
    let stats = store.writer_stats();
    assert!(
        stats.journal_syncs_on_writer >= 20 && stats.journal_syncs_on_writer < stats.commits,
        "both the writer and the journal thread synced batches: {stats:?}"
    );
    // Acknowledged, yet nothing is committed in SQLite: it is all in the journal.
    assert_eq!(committed_messages(&path), 0);
    store.crash().await;
    drop(store);

    let store = SqliteStore::open(&path, StoreSettings::default())
        .await
        .unwrap();
    assert_eq!(committed_messages(&path), 220);
    assert_totals_match(&path);
    for (control_id, ingested) in &acked {
        let record = store.message(ingested.id).await.unwrap().unwrap();
        assert_eq!(&record.summary.meta.control_id, control_id);
        let ids: Vec<_> = record.deliveries.iter().map(|d| d.id).collect();
        assert_eq!(ids, ingested.deliveries, "{control_id}");
        let want = if ingested.duplicate_of.is_some() {
            MessageStatus::Duplicate
        } else if ingested.deliveries.is_empty() {
            MessageStatus::Filtered
        } else {
            MessageStatus::Pending
        };
        assert_eq!(record.summary.status, want);
        assert_eq!(record.summary.duplicate_of, ingested.duplicate_of);
        assert!(
            record
                .deliveries
                .iter()
                .all(|d| d.state == DeliveryState::Pending)
        );
    }
    // The queues come back in delivery id order, as they were handed out.
    for destination in ["a", "b"] {
        let mut want: Vec<_> = acked
            .iter()
            .flat_map(|(_, i)| i.deliveries.iter().copied())
            .collect();
        want.sort();
        let queued: Vec<_> = store
            .next_pending(destination, at(100), 1000)
            .await
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect();
        assert!(queued.windows(2).all(|w| w[0] < w[1]));
        assert!(queued.iter().all(|d| want.contains(d)));
    }
    // New ids continue above the recovered ones, and a resend of a recovered message is
    // still caught as a duplicate.
    let max = acked.iter().map(|(_, i)| i.id).max().unwrap();
    let again = store
        .ingest(message("ch", "T0-3", &["a", "b"], at(3)))
        .await
        .unwrap();
    assert!(again.id > max);
    assert!(again.duplicate_of.is_some());
    store.close().await.unwrap();
}

#[tokio::test]
async fn the_journal_wraps_around_and_still_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    // Room for about a dozen records: the journal starts over many times.
    let settings = never_commits().journal_bytes(16 * 1024);
    let store = SqliteStore::open(&path, settings.clone()).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..157 {
        let mut m = message("ch", &format!("W{i}"), &["a"], at(i));
        m.raw = format!(
            "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|W{i}|P|2.5\r{}\r",
            "Z".repeat(900)
        )
        .into_bytes()
        .into();
        acked.push(store.ingest(m).await.unwrap());
    }
    // Each start-over committed what came before it; the rest is in the journal only.
    let committed = committed_messages(&path);
    assert!(committed > 100 && committed < 157, "{committed}");
    assert_totals_match(&path);
    store.crash().await;
    drop(store);

    let store = SqliteStore::open(&path, settings).await.unwrap();
    assert_eq!(committed_messages(&path), 157);
    assert_totals_match(&path);
    let queued = store.next_pending("a", at(1000), 1000).await.unwrap();
    let want: Vec<_> = acked.iter().map(|i| i.deliveries[0]).collect();
    assert_eq!(queued.iter().map(|p| p.id).collect::<Vec<_>>(), want);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_torn_record_at_the_end_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    ingest_then_crash(&path, "R", 10).await;
    // A record half written when the power went: its header is there, its payload not.
    let journal_path = journal::path_for(&path);
    let contents = std::fs::read(&journal_path).unwrap();
    let mut end = 0;
    while let Some(r) = journal::read_record(&contents, end) {
        end = r.end;
    }
    let mut torn = contents[..end].to_vec();
    torn.extend_from_slice(&contents[..journal::HEADER + 10]);
    torn.resize(contents.len(), 0);
    std::fs::write(&journal_path, torn).unwrap();

    let store = SqliteStore::open(&path, StoreSettings::default())
        .await
        .unwrap();
    assert_eq!(committed_messages(&path), 10);
    assert_eq!(
        store.next_pending("a", at(100), 100).await.unwrap().len(),
        10
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn reads_see_an_acknowledged_ingest_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let store = SqliteStore::open(&path, never_commits()).await.unwrap();
    for i in 0..5 {
        let got = store
            .ingest(message("ch", &format!("S{i}"), &["a"], at(i)))
            .await
            .unwrap();
        // Held in the writer's open transaction until the read asks for it.
        assert!(committed_messages(&path) <= i);
        assert!(store.message(got.id).await.unwrap().is_some());
        let page = store.search(SearchQuery::default()).await.unwrap();
        assert_eq!(page.messages.len() as i64, i + 1);
        assert_eq!(
            store.next_pending("a", at(100), 100).await.unwrap().len() as i64,
            i + 1
        );
    }
    store.close().await.unwrap();
}

#[tokio::test]
async fn turning_the_journal_off_recovers_it_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    ingest_then_crash(&path, "O", 7).await;
    let store = SqliteStore::open(&path, StoreSettings::default().journal_bytes(0))
        .await
        .unwrap();
    assert_eq!(
        store.next_pending("a", at(100), 100).await.unwrap().len(),
        7
    );
    assert!(!journal::path_for(&path).exists());
    store
        .ingest(message("ch", "O7", &["a"], at(7)))
        .await
        .unwrap();
    store.close().await.unwrap();
    assert_eq!(committed_messages(&path), 8);
}

#[tokio::test]
async fn a_failed_journal_is_given_up_for_synced_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let store = SqliteStore::open(&path, never_commits()).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(
            store
                .ingest(message("ch", &format!("F{i}"), &["a"], at(i)))
                .await
                .unwrap(),
        );
    }
    assert_eq!(committed_messages(&path), 0);
    // The disk refuses the journal (as after an I/O error): the writer commits and syncs
    // what the journal held, and goes on without it.
    store
        .journal_shared
        .as_ref()
        .unwrap()
        .failed
        .store(true, Ordering::Release);
    for i in 5..10 {
        acked.push(
            store
                .ingest(message("ch", &format!("F{i}"), &["a"], at(i)))
                .await
                .unwrap(),
        );
        // Each is committed before it is answered now.
        assert_eq!(committed_messages(&path), i + 1);
    }
    store.crash().await;
    drop(store);
    // Nothing is applied twice at the next start, and nothing is missing.
    let store = SqliteStore::open(&path, StoreSettings::default())
        .await
        .unwrap();
    let queued: Vec<_> = store
        .next_pending("a", at(100), 100)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    let want: Vec<_> = acked.iter().map(|i| i.deliveries[0]).collect();
    assert_eq!(queued, want);
    store.close().await.unwrap();
}
