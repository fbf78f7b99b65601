//! The PostgreSQL backend: one database shared by one or more gateway nodes, group
//! commit per node.
//!
//! # Tasks and connections
//! Ingests go to one writer task per store through a bounded queue. The writer takes
//! whatever is queued, up to [`StoreSettings::max_batch`], runs it in one transaction on
//! its own connection (the batch's statements pipelined, one round trip), commits once,
//! and only then answers each caller: under load one WAL flush covers many ingests; a
//! lone ingest is committed at once. Every other operation (attempts, replays, prune,
//! leases, audit, reads) runs on a small pool of connections
//! ([`StoreSettings::read_connections`]), each write in its own transaction. So a store
//! holds at most `read_connections + 1` connections, opened on demand and reopened after
//! a failure.
//!
//! # Several nodes
//! Nodes sharing the database coordinate only through it: queue order comes from the
//! `deliveries` id sequence, drawn and committed under one advisory lock per schema so
//! that ids become visible in order whichever node drew them (see [`schema`]); writes
//! that read-then-change lock the rows they change; and a destination's delivery is
//! driven by the node holding its lease (the gateway's delivery workers).
//!
//! # Failures and bounds
//! Every call is bounded by [`PgSettings::request_timeout`] (waiting for a connection,
//! the writer and the database included), every statement by
//! [`PgSettings::statement_timeout`] on the server, every connection attempt by
//! [`PgSettings::connect_timeout`]. A database that is down, refuses connections, times
//! out or drops a connection fails the call with [`StoreError::Unavailable`] (the sender
//! gets AE and sends again); the next call reconnects. A call that timed out may still
//! commit: a resent message is then recorded as a duplicate, not delivered twice.
//!
//! PostgreSQL `text` cannot hold NUL, so text fields are stored with NUL replaced by
//! U+FFFD; raw bytes (`bytea`) and the dedup key (computed from the original fields) are
//! exact.

mod ops;
pub mod schema;
mod writer;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::Replayed;
use crate::error::{Result, StoreError};
use crate::store::{Store, StoreSettings};
use crate::types::{
    AttemptResult, AuditEntry, AuditId, AuditRecord, Cursor, DeliveryId, DestinationStats,
    Ingested, Lease, MessageId, MessageRecord, NewMessage, NewQuarantine, PendingDelivery,
    PruneReport, QuarantineId, QuarantinePage, Retention, SearchPage, SearchQuery, Timestamp,
};
use writer::Command;

// === settings ===

/// Where the database is and how long to wait for it. Pool size, batch and queue sizes
/// come from [`StoreSettings`] (`read_connections` is the pool size, `busy_timeout` the
/// `lock_timeout`).
///
/// The URL's password is never printed by `Debug`.
#[derive(Clone)]
pub struct PgSettings {
    config: tokio_postgres::Config,
    schema: Option<String>,
    connect_timeout: Duration,
    statement_timeout: Duration,
    request_timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("user", &self.config.get_user())
            .field("dbname", &self.config.get_dbname())
            .field("schema", &self.schema)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Default [`PgSettings::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`PgSettings::statement_timeout`].
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`PgSettings::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl PgSettings {
    /// Settings for the database at `url` (`postgres://user:password@host:port/dbname`,
    /// or libpq's `key=value` form; `sslmode=require` refuses a server without TLS), with
    /// the default timeouts, no schema of its own, and no TLS. `InvalidInput` for a URL
    /// that does not parse.
    pub fn new(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::InvalidInput(format!("database URL: {e}")))?;
        Ok(PgSettings {
            config,
            schema: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            tls: None,
        })
    }

    /// Keeps the store's tables in this schema (created if missing) instead of the
    /// server's default `search_path`: several gateways, or tests, can share one
    /// database. Letters, digits and `_` only, not starting with a digit, at most 63.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// How long opening one connection (TCP, TLS, authentication) may take before it
    /// fails as unavailable. Default 5 s. Unbounded is not offered: a black-holed
    /// server would hold every caller.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The server's `statement_timeout` for every statement the store runs; a statement
    /// running longer is cancelled and its call fails as unavailable. Default 10 s.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// The longest any store call takes, waiting for a pooled connection or the writer
    /// included, before it fails as unavailable. Also bounds how long a lost network
    /// path can hold a connection (`tcp_user_timeout`). Default 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Connects with TLS through rustls with this configuration (build it with the
    /// `ring` provider). The URL's `sslmode` still applies: `prefer` (the default) falls
    /// back to plain TCP if the server has no TLS; say `sslmode=require` to refuse that.
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    fn validate(&self) -> Result<()> {
        if let Some(schema) = &self.schema {
            let mut chars = schema.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !first_ok
                || schema.len() > 63
                || !schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(StoreError::InvalidInput(format!(
                    "schema name {schema:?}: letters, digits and _ only, at most 63"
                )));
            }
        }
        for (name, t) in [
            ("connect_timeout", self.connect_timeout),
            ("statement_timeout", self.statement_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if t.is_zero() {
                return Err(StoreError::InvalidInput(format!("{name} must not be zero")));
            }
        }
        Ok(())
    }
}

// === the store ===

/// The PostgreSQL [`Store`]. Cheap to share behind an `Arc`; dropping the last handle
/// stops the writer after it has committed what was queued.
#[derive(Debug)]
pub struct PostgresStore {
    settings: StoreSettings,
    request_timeout: Duration,
    writer: mpsc::Sender<Command>,
    pool: Arc<Pool>,
    counters: Arc<WriterCounters>,
}

pub(crate) use crate::writer_stats::WriterCounters;
pub use crate::writer_stats::WriterStats;

impl PostgresStore {
    /// Connects, creates or migrates the schema (safe with several nodes starting at
    /// once), and starts the writer task; must be called inside a tokio runtime.
    /// `Unavailable` when the database cannot be reached, `SchemaTooNew` for a schema
    /// from a newer build, `InvalidInput` for bad settings.
    pub async fn open(pg: PgSettings, settings: StoreSettings) -> Result<Self> {
        pg.validate()?;
        if settings.max_batch == 0 || settings.write_queue == 0 || settings.read_connections == 0 {
            return Err(StoreError::InvalidInput(
                "max_batch, write_queue and read_connections must be at least 1".into(),
            ));
        }
        let connector = Arc::new(Connector::new(&pg, &settings));
        let mut conn = tokio::time::timeout(pg.request_timeout, connector.connect())
            .await
            .map_err(|e| StoreError::unavailable("connect", e))??;
        // The only clock read: when a migration was applied, for the record.
        let now = Timestamp::from(SystemTime::now()).as_millis();
        tokio::time::timeout(
            pg.request_timeout,
            schema::migrate(&mut conn.client, pg.schema.as_deref(), now),
        )
        .await
        .map_err(|e| StoreError::unavailable("migrate", e))??;

        let counters = Arc::new(WriterCounters::default());
        let (tx, rx) = mpsc::channel(settings.write_queue);
        tokio::spawn(writer::run(
            writer::Writer::new(
                Arc::clone(&connector),
                Some(conn),
                &settings,
                pg.request_timeout,
                Arc::clone(&counters),
            ),
            rx,
        ));
        Ok(PostgresStore {
            pool: Arc::new(Pool {
                connector,
                permits: Semaphore::new(settings.read_connections),
                idle: Mutex::new(Vec::new()),
            }),
            request_timeout: pg.request_timeout,
            settings,
            writer: tx,
            counters,
        })
    }

    /// The settings it was opened with.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// Runs `f` on a pooled connection, bounded by the request timeout. A transaction
    /// `f` left open (it failed part way) is rolled back before the connection is reused.
    async fn with_conn<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: for<'c> FnOnce(&'c mut PgConn) -> BoxFuture<'c, Result<T>> + Send,
    {
        if self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        let work = async {
            let mut pooled = self.pool.get().await?;
            let conn = pooled.conn()?;
            conn.busy = true;
            let out = f(conn).await;
            if conn.in_tx && conn.client.batch_execute("ROLLBACK").await.is_ok() {
                conn.in_tx = false;
            }
            conn.busy = false;
            out
        };
        tokio::time::timeout(self.request_timeout, work)
            .await
            .map_err(|e| StoreError::unavailable("request timed out", e))?
    }

    /// One pool operation in a transaction: `BEGIN`, `f`, `COMMIT`.
    async fn in_tx<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConn) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.with_conn(|c| {
            Box::pin(async move {
                c.begin().await?;
                let out = f(c).await?;
                c.commit().await?;
                Ok(out)
            })
        })
        .await
    }
}

// === impl Store ===

#[async_trait]
impl Store for PostgresStore {
    async fn ingest(&self, message: NewMessage) -> Result<Ingested> {
        // Refused here, before the batch: a bad request never fails the others.
        let destinations: Vec<String> = message
            .validated_destinations()?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let (reply, answer) = oneshot::channel();
        let job = writer::IngestJob {
            key: message.dedup_key(),
            message,
            destinations,
            reply,
        };
        let send_and_wait = async {
            self.writer
                .send(Command::Ingest(Box::new(job)))
                .await
                .map_err(|_| StoreError::Closed)?;
            // A dropped reply means the writer task is gone.
            answer.await.map_err(|_| StoreError::Closed)?
        };
        tokio::time::timeout(self.request_timeout, send_and_wait)
            .await
            .map_err(|e| StoreError::unavailable("ingest timed out", e))?
    }

    async fn quarantine(&self, entry: NewQuarantine) -> Result<QuarantineId> {
        self.with_conn(move |c| Box::pin(async move { ops::quarantine(c, &entry).await }))
            .await
    }

    async fn record_attempt(
        &self,
        delivery: DeliveryId,
        at: Timestamp,
        result: AttemptResult,
    ) -> Result<()> {
        self.in_tx(move |c| {
            Box::pin(async move { ops::record_attempt(c, delivery, at, &result).await })
        })
        .await
    }

    async fn replay(
        &self,
        message: MessageId,
        destination: Option<&str>,
        at: Timestamp,
    ) -> Result<Vec<DeliveryId>> {
        let destination = destination.map(str::to_owned);
        self.in_tx(move |c| {
            Box::pin(async move { ops::replay(c, message, destination.as_deref(), at).await })
        })
        .await
    }

    async fn replay_dead_letters(&self, destination: &str, at: Timestamp) -> Result<Vec<Replayed>> {
        let destination = destination.to_owned();
        self.in_tx(move |c| {
            Box::pin(async move { ops::replay_dead_letters(c, &destination, at).await })
        })
        .await
    }

    async fn prune(&self, now: Timestamp, retention: Retention) -> Result<PruneReport> {
        let chunk = self.settings.prune_chunk.max(1);
        let mut report = PruneReport::default();
        if let Some(age) = retention.max_age {
            let cutoff = now.saturating_sub(age);
            loop {
                let (n, bytes) = self
                    .in_tx(move |c| Box::pin(ops::prune_by_age(c, cutoff, chunk)))
                    .await?;
                report.messages += n;
                report.bytes += bytes;
                if n < chunk as u64 {
                    break;
                }
            }
            loop {
                let n = self
                    .with_conn(move |c| Box::pin(ops::prune_quarantine(c, cutoff, chunk)))
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
                    .in_tx(move |c| Box::pin(ops::prune_by_size(c, budget, chunk)))
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
        self.with_conn(move |c| Box::pin(async move { ops::audit(c, &entry).await }))
            .await
    }

    async fn acquire_lease(
        &self,
        destination: &str,
        node_id: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool> {
        ops::check_lease_names(destination, node_id)?;
        let (destination, node_id) = (destination.to_owned(), node_id.to_owned());
        self.with_conn(move |c| {
            Box::pin(async move { ops::acquire_lease(c, &destination, &node_id, ttl, now).await })
        })
        .await
    }

    async fn renew_lease(
        &self,
        destination: &str,
        node_id: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool> {
        ops::check_lease_names(destination, node_id)?;
        let (destination, node_id) = (destination.to_owned(), node_id.to_owned());
        self.with_conn(move |c| {
            Box::pin(async move { ops::renew_lease(c, &destination, &node_id, ttl, now).await })
        })
        .await
    }

    async fn release_lease(&self, destination: &str, node_id: &str) -> Result<bool> {
        let (destination, node_id) = (destination.to_owned(), node_id.to_owned());
        self.with_conn(move |c| {
            Box::pin(async move { ops::release_lease(c, &destination, &node_id).await })
        })
        .await
    }

    async fn next_pending(
        &self,
        destination: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>> {
        let destination = destination.to_owned();
        self.with_conn(move |c| {
            Box::pin(async move { ops::next_pending(c, &destination, now, limit).await })
        })
        .await
    }

    async fn message(&self, id: MessageId) -> Result<Option<MessageRecord>> {
        self.with_conn(move |c| Box::pin(ops::message(c, id))).await
    }

    async fn search(&self, mut query: SearchQuery) -> Result<SearchPage> {
        query.limit = self.settings.clamp_limit(query.limit);
        self.with_conn(move |c| Box::pin(async move { ops::search(c, &query).await }))
            .await
    }

    async fn list_quarantine(
        &self,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<QuarantinePage> {
        let limit = self.settings.clamp_limit(limit);
        self.with_conn(move |c| {
            Box::pin(async move { ops::list_quarantine(c, limit, cursor.as_ref()).await })
        })
        .await
    }

    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        let limit = self.settings.clamp_limit(limit);
        self.with_conn(move |c| Box::pin(ops::list_audit(c, limit)))
            .await
    }

    async fn queue_stats(&self) -> Result<Vec<DestinationStats>> {
        self.with_conn(|c| Box::pin(ops::queue_stats(c))).await
    }

    fn writer_stats(&self) -> WriterStats {
        self.counters.stats()
    }

    async fn leases(&self) -> Result<Vec<Lease>> {
        self.with_conn(|c| Box::pin(ops::leases(c))).await
    }

    async fn health(&self) -> Result<()> {
        self.with_conn(|c| Box::pin(ops::health(c))).await
    }

    async fn close(&self) -> Result<()> {
        let (done, closed) = oneshot::channel();
        self.writer
            .send(Command::Close(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        closed.await.map_err(|_| StoreError::Closed)?;
        self.pool.close();
        Ok(())
    }
}

// === connections ===

/// Opens configured connections: TLS or not, and the session settings.
#[derive(Debug)]
pub(crate) struct Connector {
    config: tokio_postgres::Config,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Run on every new connection (one round trip).
    session_sql: String,
}

impl Connector {
    fn new(pg: &PgSettings, settings: &StoreSettings) -> Self {
        let mut config = pg.config.clone();
        config
            .connect_timeout(pg.connect_timeout)
            .tcp_user_timeout(pg.request_timeout)
            .keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("causeway");
        }
        let mut session_sql = String::new();
        if let Some(schema) = &pg.schema {
            session_sql.push_str(&format!("SET search_path TO {};", quote_ident(schema)));
        }
        let lock_timeout = settings
            .busy_timeout
            .min(pg.statement_timeout)
            .max(MIN_TIMEOUT);
        session_sql.push_str(&format!(
            "SET statement_timeout = {}; SET lock_timeout = {}; \
             SET idle_in_transaction_session_timeout = {}; \
             SELECT set_config('synchronous_commit', 'on', false) \
                 WHERE current_setting('synchronous_commit') = 'off';",
            millis(pg.statement_timeout),
            millis(lock_timeout),
            millis(pg.request_timeout.max(pg.statement_timeout)),
        ));
        Connector {
            config,
            tls: pg.tls.clone(),
            session_sql,
        }
    }

    pub(crate) async fn connect(&self) -> Result<PgConn> {
        let client = match &self.tls {
            None => {
                let (client, connection) = self
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(pg_err("connect"))?;
                tokio::spawn(drive(connection));
                client
            }
            Some(tls) => {
                let (client, connection) = self
                    .config
                    .connect(MakeRustlsConnect::new((**tls).clone()))
                    .await
                    .map_err(pg_err("connect"))?;
                tokio::spawn(drive(connection));
                client
            }
        };
        client
            .batch_execute(&self.session_sql)
            .await
            .map_err(pg_err("configure session"))?;
        Ok(PgConn {
            client,
            statements: HashMap::new(),
            in_tx: false,
            busy: false,
        })
    }
}

/// PostgreSQL counts these timeouts in milliseconds, and 0 would mean "none".
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

fn millis(d: Duration) -> u128 {
    d.max(MIN_TIMEOUT).as_millis()
}

/// Runs a connection's I/O until its client is dropped or the server goes away.
async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = std::result::Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "store database connection lost");
    }
}

/// One connection with its prepared statements.
pub(crate) struct PgConn {
    pub(crate) client: Client,
    statements: HashMap<&'static str, Statement>,
    /// A transaction is open (`begin` without `commit`).
    in_tx: bool,
    /// An operation is running on it; still set if the operation was abandoned (timed
    /// out), in which case the connection is not reused.
    busy: bool,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("statements", &self.statements.len())
            .field("in_tx", &self.in_tx)
            .finish()
    }
}

impl PgConn {
    /// The prepared statement for `sql`, prepared on first use on this connection.
    pub(crate) async fn statement(&mut self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self
            .client
            .prepare(sql)
            .await
            .map_err(pg_err("prepare statement"))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    pub(crate) async fn query(
        &mut self,
        context: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let s = self.statement(sql).await?;
        self.client.query(&s, params).await.map_err(pg_err(context))
    }

    pub(crate) async fn query_opt(
        &mut self,
        context: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let s = self.statement(sql).await?;
        self.client
            .query_opt(&s, params)
            .await
            .map_err(pg_err(context))
    }

    pub(crate) async fn query_one(
        &mut self,
        context: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        let s = self.statement(sql).await?;
        self.client
            .query_one(&s, params)
            .await
            .map_err(pg_err(context))
    }

    pub(crate) async fn execute(
        &mut self,
        context: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        let s = self.statement(sql).await?;
        self.client
            .execute(&s, params)
            .await
            .map_err(pg_err(context))
    }

    pub(crate) async fn begin(&mut self) -> Result<()> {
        self.in_tx = true;
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(pg_err("begin"))
    }

    pub(crate) async fn commit(&mut self) -> Result<()> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(pg_err("commit"))?;
        self.in_tx = false;
        Ok(())
    }
}

// === Pool ===

/// The pooled connections. A `std` mutex: it is held only to push or pop a connection,
/// never across an await.
#[derive(Debug)]
struct Pool {
    connector: Arc<Connector>,
    /// One permit per connection: at most `read_connections` exist.
    permits: Semaphore,
    idle: Mutex<Vec<PgConn>>,
}

impl Pool {
    /// A connection: an idle one that is still open, or a new one.
    async fn get(&self) -> Result<Pooled<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        loop {
            let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            match idle {
                Some(conn) if conn.client.is_closed() => continue,
                Some(conn) => {
                    return Ok(Pooled {
                        pool: self,
                        conn: Some(conn),
                        _permit: permit,
                    });
                }
                None => break,
            }
        }
        let conn = self.connector.connect().await?;
        Ok(Pooled {
            pool: self,
            conn: Some(conn),
            _permit: permit,
        })
    }

    fn close(&self) {
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// A connection taken from the pool; goes back on drop if it is healthy and idle.
struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<PgConn>,
    _permit: SemaphorePermit<'a>,
}

impl Pooled<'_> {
    fn conn(&mut self) -> Result<&mut PgConn> {
        // Only `drop` takes it out.
        self.conn.as_mut().ok_or(StoreError::Closed)
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if conn.busy || conn.in_tx || conn.client.is_closed() || self.pool.permits.is_closed() {
            // Abandoned part way, or broken: the server rolls back when it goes.
            return;
        }
        if let Ok(mut idle) = self.pool.idle.lock() {
            idle.push(conn);
        }
    }
}

// === helpers ===

/// Maps a tokio-postgres error: whatever the database or the network did, nothing of
/// the operation is known to be committed, so the store is unavailable.
pub(crate) fn pg_err(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::unavailable(context, e)
}

/// A column of a row; a value of the wrong type or NULL where none may be means the
/// data is not what the store wrote.
pub(crate) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

/// Text as PostgreSQL can store it: NUL replaced by U+FFFD.
pub(crate) fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// An identifier quoted for SQL (schema names are validated too; this is the backstop).
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
