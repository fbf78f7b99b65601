//! Durable ingest throughput of the stores: 1, 8 and 32 concurrent tasks, each
//! ingesting 1 KB messages to one destination and waiting for each to be durable before
//! sending the next, as a connection waits for its ACK.
//!
//! The store lives in a temporary directory on the machine's disk (`TMPDIR`), so the
//! numbers include real syncs; group commit is what lets them grow with concurrency.
//! Throughput is reported in messages per second (criterion's "elem/s").
//!
//! SQLite is measured with its ingest journal (the default) and without it (every batch
//! committed and its WAL synced before the callers are answered).
//!
//! The PostgreSQL backend is measured too, on the server at `DATABASE_URL` (default the
//! local one), in schema `cw_bench` (kept between runs; drop it to start empty).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use causeway_store::conformance::{at, message};
use causeway_store::postgres::{PgSettings, PostgresStore};
use causeway_store::sqlite::SqliteStore;
use causeway_store::{NewMessage, Store, StoreSettings, WriterStats};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const MESSAGE_SIZE: usize = 1024;

/// A 1 KB message with a unique control id (no duplicates).
fn one_kb(seq: u64) -> NewMessage {
    let mut m = message("bench", &format!("B{seq}"), &["out"], at(0));
    let mut raw = m.raw.to_vec();
    raw.extend_from_slice(b"NTE|1||");
    raw.resize(MESSAGE_SIZE - 1, b'x');
    raw.push(b'\r');
    m.raw = raw.into();
    m
}

fn ingest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = Arc::new(
        rt.block_on(SqliteStore::open(
            dir.path().join("bench.db"),
            StoreSettings::default(),
        ))
        .expect("open store"),
    );
    measure(c, &rt, "ingest-1k-durable/sqlite", sqlite.clone());
    report("sqlite", sqlite.writer_stats());
    // The same without the ingest journal: every batch committed and its WAL synced.
    let no_journal = Arc::new(
        rt.block_on(SqliteStore::open(
            dir.path().join("bench-no-journal.db"),
            StoreSettings::default().journal_bytes(0),
        ))
        .expect("open store"),
    );
    measure(
        c,
        &rt,
        "ingest-1k-durable/sqlite-no-journal",
        no_journal.clone(),
    );
    report("sqlite-no-journal", no_journal.writer_stats());

    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pg = PgSettings::new(&url)
        .expect("DATABASE_URL")
        .schema("cw_bench");
    let postgres = Arc::new(
        rt.block_on(PostgresStore::open(pg, StoreSettings::default()))
            .unwrap_or_else(|e| panic!("PostgreSQL at DATABASE_URL={url}: {e}")),
    );
    measure(c, &rt, "ingest-1k-durable/postgres", postgres.clone());
    report("postgres", postgres.writer_stats());
}

fn report(name: &str, stats: WriterStats) {
    eprintln!(
        "{name} writer: {} commits, {} requests, {:.1} requests per commit",
        stats.commits,
        stats.requests,
        stats.requests as f64 / stats.commits.max(1) as f64
    );
}

fn measure(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, store: Arc<dyn Store>) {
    let seq = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for tasks in [1u64, 8, 32] {
        group.bench_with_input(BenchmarkId::from_parameter(tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(tasks);
                let (store, seq) = (Arc::clone(&store), Arc::clone(&seq));
                rt.block_on(async move {
                    let start = Instant::now();
                    let mut handles = Vec::new();
                    for _ in 0..tasks {
                        let (store, seq) = (Arc::clone(&store), Arc::clone(&seq));
                        handles.push(tokio::spawn(async move {
                            for _ in 0..per_task {
                                let m = one_kb(seq.fetch_add(1, Ordering::Relaxed));
                                store.ingest(m).await.expect("ingest");
                            }
                        }));
                    }
                    for h in handles {
                        h.await.expect("task");
                    }
                    // Time per message actually sent (per_task * tasks may exceed iters).
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per_task * tasks) as f64)
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
