//! The conformance suite on PostgreSQL, plus what only PostgreSQL has: migrations under a
//! lock, several nodes sharing one database, a database that goes away.
//!
//! The server is `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Each test works in its own schema `cw_<pid>_<n>`, dropped at the end, so tests run in
//! parallel and rerun cleanly. An unreachable server fails the tests (they are never
//! skipped): CI provides one.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use causeway_store::conformance::Backend;
use causeway_store::postgres::{PgSettings, PostgresStore};
use causeway_store::{Result, StoreSettings};

/// The server the tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A store in its own schema of the test database, dropped with it.
pub struct TempPg {
    pub url: String,
    pub schema: String,
}

impl TempPg {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        static REACHABLE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
        let url = database_url();
        if let Err(e) = REACHABLE.get_or_init(|| admin(&url, "SELECT 1").map(drop)) {
            panic!(
                "PostgreSQL is not reachable at DATABASE_URL={url}: {e}\n\
                 Start a server there or point DATABASE_URL at one; these tests are not skipped."
            );
        }
        let schema = format!(
            "cw_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Left over from an earlier run that had the same pid and died.
        admin(&url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
        TempPg { url, schema }
    }

    pub fn settings(&self) -> PgSettings {
        PgSettings::new(&self.url).unwrap().schema(&self.schema)
    }

    /// Runs `sql` in this test's schema; returns the first column of the first row.
    pub fn query_i64(&self, sql: &str) -> i64 {
        admin(
            &self.url,
            &format!("SET search_path TO {}; {sql}", self.schema),
        )
        .unwrap()
        .unwrap_or_else(|| panic!("{sql}: no value"))
    }
}

impl Backend for TempPg {
    type Store = PostgresStore;

    async fn open(&self, settings: StoreSettings) -> Result<PostgresStore> {
        PostgresStore::open(self.settings(), settings).await
    }
}

impl Drop for TempPg {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        if let Err(e) = admin(&self.url, &sql) {
            eprintln!("could not drop test schema {}: {e}", self.schema);
        }
    }
}

/// Runs `sql` (simple protocol, several statements allowed) on a connection of its own,
/// on a thread of its own so it works from sync and async code alike. Returns the
/// first column of the last row returned, parsed as an integer, if any.
pub fn admin(url: &str, sql: &str) -> std::result::Result<Option<i64>, String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let connect = tokio_postgres::connect(&url, tokio_postgres::NoTls);
            let (client, connection) =
                tokio::time::timeout(std::time::Duration::from_secs(10), connect)
                    .await
                    .map_err(|_| "connect timed out".to_owned())?
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let messages = client.simple_query(&sql).await.map_err(|e| e.to_string())?;
            let mut value = None;
            for m in messages {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                    value = row.get(0).and_then(|v| v.parse().ok());
                }
            }
            Ok(value)
        })
    })
    .join()
    .map_err(|_| "admin thread panicked".to_owned())?
}

causeway_store::conformance_tests!(TempPg::new());

// === PostgreSQL only ===

mod server {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use causeway_store::conformance::{Backend, at, message};
    use causeway_store::postgres::{PgSettings, PostgresStore, schema};
    use causeway_store::{AttemptResult, Store, StoreError, StoreSettings};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::TempPg;

    #[tokio::test]
    async fn schema_version_and_reopen() {
        let backend = TempPg::new();
        let store = backend.open(StoreSettings::default()).await.unwrap();
        store
            .ingest(message("ch", "V1", &["d"], at(0)))
            .await
            .unwrap();
        assert_eq!(
            backend.query_i64("SELECT MAX(version) FROM schema_version"),
            schema::CURRENT_VERSION
        );
        store.close().await.unwrap();
        let store = backend.open(StoreSettings::default()).await.unwrap();
        assert_eq!(backend.query_i64("SELECT COUNT(*) FROM schema_version"), 1);
        assert_eq!(store.next_pending("d", at(0), 5).await.unwrap().len(), 1);
        assert_eq!(
            backend.query_i64("SELECT message_bytes FROM totals"),
            message("ch", "V1", &["d"], at(0)).raw.len() as i64
        );
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let backend = TempPg::new();
        let store = backend.open(StoreSettings::default()).await.unwrap();
        store.close().await.unwrap();
        backend.query_i64("INSERT INTO schema_version VALUES (99, 0); SELECT 1");
        let err = backend.open(StoreSettings::default()).await.unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
            "{err:?}"
        );
    }

    /// Several nodes starting at once on an empty schema: one migrates, all open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_starting_at_once_migrate_once() {
        let backend = Arc::new(TempPg::new());
        let mut opens = Vec::new();
        for _ in 0..6 {
            let backend = Arc::clone(&backend);
            opens.push(tokio::spawn(async move {
                backend.open(StoreSettings::default()).await.unwrap()
            }));
        }
        let mut stores = Vec::new();
        for o in opens {
            stores.push(o.await.unwrap());
        }
        assert_eq!(backend.query_i64("SELECT COUNT(*) FROM schema_version"), 1);
        for (i, s) in stores.iter().enumerate() {
            s.ingest(message("ch", &format!("N{i}"), &["d"], at(0)))
                .await
                .unwrap();
        }
        assert_eq!(
            stores[0].next_pending("d", at(0), 100).await.unwrap().len(),
            6
        );
    }

    /// Concurrent ingests share commits: far fewer transactions than messages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_shares_commits() {
        let backend = TempPg::new();
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
        // Each batch's transaction is one timed durable write.
        assert_eq!(stats.syncs - before.syncs, commits);
        assert!(stats.sync_time > before.sync_time);
        assert_eq!(
            backend.query_i64("SELECT COUNT(*) FROM messages"),
            32 * 40,
            "every acknowledged ingest is committed"
        );
    }

    /// Two nodes (two stores on one schema) ingesting at once: one queue, in id order,
    /// the same seen from either node; an attempt recorded by one is seen by the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_share_one_fifo() {
        let backend = TempPg::new();
        let nodes = [
            Arc::new(backend.open(StoreSettings::default()).await.unwrap()),
            Arc::new(backend.open(StoreSettings::default()).await.unwrap()),
        ];
        let mut tasks = Vec::new();
        for t in 0..16 {
            let store = Arc::clone(&nodes[t % 2]);
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..20 {
                    let g = store
                        .ingest(message("ch", &format!("F{t}-{i}"), &["d"], at(0)))
                        .await
                        .unwrap();
                    ids.push(g.deliveries[0].0);
                }
                ids
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            let ids = t.await.unwrap();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "per-sender order kept");
            all.extend(ids);
        }
        all.sort_unstable();
        let ids = |p: Vec<causeway_store::PendingDelivery>| -> Vec<i64> {
            p.iter().map(|p| p.id.0).collect()
        };
        let a = ids(nodes[0].next_pending("d", at(1), 1000).await.unwrap());
        let b = ids(nodes[1].next_pending("d", at(1), 1000).await.unwrap());
        assert_eq!(a, all);
        assert_eq!(b, all);
        nodes[1]
            .record_attempt(
                causeway_store::DeliveryId(a[0]),
                at(2),
                AttemptResult::delivered(),
            )
            .await
            .unwrap();
        let a2 = ids(nodes[0].next_pending("d", at(2), 1000).await.unwrap());
        assert_eq!(a2, all[1..]);
        let again = nodes[0]
            .record_attempt(
                causeway_store::DeliveryId(a[0]),
                at(3),
                AttemptResult::delivered(),
            )
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    }

    /// The ordering gap between nodes: node A's batch has drawn its delivery id and is
    /// held up before its commit (a trigger sleeps), while node B ingests. B's delivery
    /// must never be visible without A's before it, or a worker would deliver B's and
    /// then find A's behind the head. With the queue lock B's commit waits for A's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivery_ids_become_visible_in_id_order_across_nodes() {
        let backend = TempPg::new();
        let a = Arc::new(backend.open(StoreSettings::default()).await.unwrap());
        let b = Arc::new(backend.open(StoreSettings::default()).await.unwrap());
        backend.query_i64(
            "CREATE FUNCTION slow_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF (SELECT control_id FROM messages WHERE id = NEW.message_id) LIKE 'SLOW%'
                 THEN PERFORM pg_sleep(1.5); END IF;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER slow AFTER INSERT ON deliveries
                 FOR EACH ROW EXECUTE FUNCTION slow_delivery();
             SELECT 1",
        );
        // The destination's name is already committed: a first insert of it would make B
        // wait for A on the unique index, hiding the gap.
        let warm = a
            .ingest(message("ch", "WARM", &["d"], at(0)))
            .await
            .unwrap();
        a.record_attempt(warm.deliveries[0], at(0), AttemptResult::delivered())
            .await
            .unwrap();
        b.ingest(message("ch", "WARM", &["d"], at(0)))
            .await
            .unwrap();
        let slow = tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.ingest(message("ch", "SLOW-1", &["d"], at(0))).await }
        });
        // Let A's batch draw its id and reach the trigger.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fast = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.ingest(message("ch", "FAST-1", &["d"], at(0))).await }
        });
        let mut reads = 0;
        let started = Instant::now();
        while !(slow.is_finished() && fast.is_finished()) {
            assert!(started.elapsed() < Duration::from_secs(10), "ingests hang");
            let queue: Vec<String> = a
                .next_pending("d", at(1), 10)
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.control_id)
                .collect();
            assert!(
                queue.is_empty() || queue == ["SLOW-1"] || queue == ["SLOW-1", "FAST-1"],
                "a reader saw {queue:?}: a later delivery became visible before an earlier one"
            );
            reads += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            reads > 10,
            "the reader looked while A was held up ({reads} reads)"
        );
        let slow = slow.await.unwrap().unwrap();
        let fast = fast.await.unwrap().unwrap();
        assert!(slow.deliveries[0] < fast.deliveries[0]);
        let queue: Vec<String> = b
            .next_pending("d", at(1), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.control_id)
            .collect();
        assert_eq!(queue, ["SLOW-1", "FAST-1"]);
    }

    /// Four nodes ingest at once while a worker takes the head of the queue as it
    /// appears and settles it: every delivery it sees has a higher id than the last one
    /// it settled, and in the end it has settled every delivery, in id order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_nodes_never_commit_behind_the_head() {
        let backend = TempPg::new();
        let mut nodes = Vec::new();
        for _ in 0..4 {
            nodes.push(Arc::new(
                backend.open(StoreSettings::default()).await.unwrap(),
            ));
        }
        let mut writers = Vec::new();
        for t in 0..16 {
            let store = Arc::clone(&nodes[t % 4]);
            writers.push(tokio::spawn(async move {
                for i in 0..25 {
                    store
                        .ingest(message("ch", &format!("C{t}-{i}"), &["d"], at(0)))
                        .await
                        .unwrap();
                }
            }));
        }
        let reader = Arc::clone(&nodes[0]);
        let mut last = 0i64;
        let mut settled = Vec::new();
        let started = Instant::now();
        while settled.len() < 16 * 25 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} settled",
                settled.len()
            );
            for p in reader.next_pending("d", at(1), 50).await.unwrap() {
                assert!(
                    p.id.0 > last,
                    "delivery {} became visible after {last} was settled",
                    p.id.0
                );
                reader
                    .record_attempt(p.id, at(1), AttemptResult::delivered())
                    .await
                    .unwrap();
                last = p.id.0;
                settled.push(p.id.0);
            }
        }
        for w in writers {
            w.await.unwrap();
        }
        assert!(
            reader
                .next_pending("d", at(2), 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// Nodes racing for one free lease: exactly one gets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lease_race_has_one_winner() {
        let backend = TempPg::new();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(Arc::new(
                backend.open(StoreSettings::default()).await.unwrap(),
            ));
        }
        let ttl = Duration::from_secs(30);
        for round in 0..5i64 {
            let mut races = Vec::new();
            for (i, node) in nodes.iter().enumerate() {
                let node = Arc::clone(node);
                races.push(tokio::spawn(async move {
                    // Every round starts after the previous lease expired.
                    node.acquire_lease("d", &format!("node-{i}"), ttl, at(round * 100))
                        .await
                        .unwrap()
                }));
            }
            let mut winners = 0;
            for r in races {
                winners += usize::from(r.await.unwrap());
            }
            assert_eq!(winners, 1, "round {round}");
        }
    }

    /// Text PostgreSQL cannot hold (NUL) is stored cleaned up, never failing the batch.
    #[tokio::test]
    async fn nul_in_text_fields_is_stored() {
        let backend = TempPg::new();
        let store = backend.open(StoreSettings::default()).await.unwrap();
        let mut m = message("ch", "NUL\0ID", &["d"], at(0));
        m.patient_id = Some("P\0".into());
        let got = store.ingest(m).await.unwrap();
        let rec = store.message(got.id).await.unwrap().unwrap();
        assert_eq!(rec.summary.meta.control_id, "NUL\u{FFFD}ID");
        assert_eq!(rec.summary.meta.patient_id.as_deref(), Some("P\u{FFFD}"));
        store
            .record_attempt(
                got.deliveries[0],
                at(1),
                AttemptResult::Failed {
                    error: "AE\0".into(),
                    retry_at: at(2),
                },
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn bad_settings_are_invalid_input() {
        let bad_url = PgSettings::new("postgres://[broken");
        assert!(
            matches!(bad_url, Err(StoreError::InvalidInput(_))),
            "{bad_url:?}"
        );
        let bad_schema = PostgresStore::open(
            PgSettings::new(&super::database_url())
                .unwrap()
                .schema("x; DROP TABLE y"),
            StoreSettings::default(),
        )
        .await;
        assert!(matches!(bad_schema, Err(StoreError::InvalidInput(_))));
        let zero = PostgresStore::open(
            PgSettings::new(&super::database_url())
                .unwrap()
                .statement_timeout(Duration::ZERO),
            StoreSettings::default(),
        )
        .await;
        assert!(matches!(zero, Err(StoreError::InvalidInput(_))));
    }

    /// Nothing listening: opening fails fast as unavailable (the sender would get AE).
    #[tokio::test]
    async fn unreachable_database_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let started = Instant::now();
        let err = PostgresStore::open(
            PgSettings::new(&format!("postgres://postgres@127.0.0.1:{port}/test"))
                .unwrap()
                .connect_timeout(Duration::from_secs(2)),
            StoreSettings::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert!(err.is_store_failure());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    // --- the database going away, through a proxy the test can cut ---

    /// A TCP proxy in front of the server; `cut` closes every connection and stops
    /// listening (connections are refused), `restore` listens again on the same port.
    struct Proxy {
        port: u16,
        upstream: String,
        tasks: Vec<JoinHandle<()>>,
    }

    impl Proxy {
        async fn start(upstream: String) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut p = Proxy {
                port,
                upstream,
                tasks: Vec::new(),
            };
            p.serve(listener);
            p
        }

        fn serve(&mut self, listener: TcpListener) {
            let upstream = self.upstream.clone();
            let conns = Arc::new(std::sync::Mutex::new(Vec::<JoinHandle<()>>::new()));
            let accept_conns = Arc::clone(&conns);
            let accept = tokio::spawn(async move {
                let _abort_on_drop = AbortAll(Arc::clone(&accept_conns));
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let conn = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    accept_conns.lock().unwrap().push(conn);
                }
            });
            self.tasks.push(accept);
        }

        fn cut(&mut self) {
            for t in self.tasks.drain(..) {
                t.abort();
            }
        }

        async fn restore(&mut self) {
            let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
            self.serve(listener);
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.cut();
        }
    }

    /// Aborts the proxied connections when the accept task ends (or is aborted).
    struct AbortAll(Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>);

    impl Drop for AbortAll {
        fn drop(&mut self) {
            if let Ok(conns) = self.0.lock() {
                for c in conns.iter() {
                    c.abort();
                }
            }
        }
    }

    /// `url` with its host and port replaced by 127.0.0.1:`port`.
    fn via_port(url: &str, port: u16) -> String {
        let (scheme, rest) = url.split_once("://").expect("DATABASE_URL must be a URL");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
        format!(
            "{scheme}://{}127.0.0.1:{port}{path}",
            user.unwrap_or_default()
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn database_down_is_unavailable_then_recovers() {
        let backend = TempPg::new();
        let config: tokio_postgres::Config = backend.url.parse().unwrap();
        let upstream = match (&config.get_hosts()[0], config.get_ports().first()) {
            (tokio_postgres::config::Host::Tcp(h), port) => {
                format!("{h}:{}", port.unwrap_or(&5432))
            }
            _ => panic!("DATABASE_URL must name a TCP host for this test"),
        };
        let mut proxy = Proxy::start(upstream).await;
        let settings = PgSettings::new(&via_port(&backend.url, proxy.port))
            .unwrap()
            .schema(&backend.schema)
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(5));
        let store = PostgresStore::open(settings, StoreSettings::default())
            .await
            .unwrap();
        let first = store
            .ingest(message("ch", "UP1", &["d"], at(0)))
            .await
            .unwrap();
        store.health().await.unwrap();

        proxy.cut();
        let started = Instant::now();
        let down = store.ingest(message("ch", "DOWN", &["d"], at(1))).await;
        assert!(
            matches!(down, Err(StoreError::Unavailable { .. })),
            "{down:?}"
        );
        let read = store.next_pending("d", at(1), 10).await;
        assert!(
            matches!(read, Err(StoreError::Unavailable { .. })),
            "{read:?}"
        );
        let health = store.health().await;
        assert!(
            matches!(health, Err(StoreError::Unavailable { .. })),
            "{health:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "failures are prompt"
        );
        assert!(store.writer_stats().failed_commits >= 1);

        proxy.restore().await;
        let mut recovered = None;
        for _ in 0..3 {
            match store.ingest(message("ch", "UP2", &["d"], at(2))).await {
                Ok(g) => {
                    recovered = Some(g);
                    break;
                }
                Err(e) => assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}"),
            }
        }
        let second = recovered.expect("the store reconnects once the database is back");
        store.health().await.unwrap();
        // The failed ingest left nothing behind; the others are queued in order.
        let queue: Vec<_> = store
            .next_pending("d", at(3), 10)
            .await
            .unwrap()
            .iter()
            .map(|p| p.message_id)
            .collect();
        assert_eq!(queue, [first.id, second.id]);
        let controls: HashSet<String> = store
            .search(causeway_store::SearchQuery::default())
            .await
            .unwrap()
            .messages
            .into_iter()
            .map(|m| m.meta.control_id)
            .collect();
        assert!(!controls.contains("DOWN"));
    }
}
