//! The PostgreSQL schema, its migrations and its invariants.
//!
//! The tables mirror the SQLite backend's ([`crate::sqlite::schema`]) so both answer the
//! same way; what differs is what several nodes sharing one database need.
//!
//! # Where it lives
//! In the schema named by [`PgSettings::schema`](super::PgSettings::schema) (created if
//! missing), or else the first schema of the server's `search_path` (usually `public`).
//! Every connection sets its `search_path` to that schema alone.
//!
//! # Session settings
//! Set on every connection: `statement_timeout` and `lock_timeout` (see
//! [`PgSettings`](super::PgSettings)), `idle_in_transaction_session_timeout`, and
//! `synchronous_commit` raised to `on` if the server default is `off` (`local`,
//! `remote_write`, `remote_apply` are kept): a commit returns only after its WAL record
//! is flushed, the ACK-after-commit promise.
//!
//! # Migrations
//! [`migrate`] runs in one transaction that first takes
//! `pg_advisory_xact_lock(MIGRATION_LOCK, hashtext(<schema>))`: nodes starting at once
//! queue on the lock, and the first applies what is missing while the others then find
//! nothing to do. The lock is per schema, so stores in other schemas of the same
//! database never wait for each other. A database whose highest version is newer than
//! [`CURRENT_VERSION`] is refused (`SchemaTooNew`) before anything is touched.
//!
//! # Tables (version 1)
//! All times are `bigint` milliseconds since the Unix epoch (UTC), as the caller passed
//! them: the store never reads a clock, the server's included, so nodes must keep their
//! clocks in step (NTP) for leases and retries to mean the same on each.
//!
//! - `schema_version(version, applied_at)`: one row per applied migration.
//! - `messages`: one row per ingested message, duplicates included. `id` is a `bigserial`:
//!   ids grow with insertion and are never reused. Metadata columns mirror `NewMessage`;
//!   `size` is the length of the raw bytes; `status` is the derived overall state (see
//!   `MessageStatus`), rewritten by every write that changes one of its deliveries;
//!   `duplicate_of` points at the original (which may since have been pruned);
//!   `dedup_key` is `NewMessage::dedup_key`, found through the `control_id` index.
//! - `message_bodies(message_id, raw)`: the bytes exactly as received (`bytea`), apart
//!   from the metadata so that searches and queue scans do not read them.
//! - `deliveries`: one row per (message, destination), plus one per replay. `id` is a
//!   `bigserial` taken from its sequence at insert, and **is the queue order**: a
//!   destination's queue is its rows with state `pending` or `failed`, by `id`, whichever
//!   node inserted them (partial index `deliveries_queue`). `next_attempt_at` is NULL
//!   (due at once) until a failed attempt sets the retry time; `attempts` counts
//!   `attempts` rows; `replay_of` names the delivery a replay repeats; `superseded_by`
//!   is set on a dead letter once it is replayed.
//! - `attempts`: every attempt of a delivery, append-only (deleted with its message).
//! - `destinations(name)`: every destination that ever had a delivery, for queue stats.
//! - `quarantine`: refused frames, with their bytes.
//! - `audit`: the operator audit log, append-only, never pruned; `message_ids bigint[]`.
//! - `leases(destination, node_id, expires_at)`: which node delivers to a destination.
//!   Taken by one conditional upsert (`... DO UPDATE ... WHERE node_id = me OR
//!   expires_at <= now`), so of several nodes racing for a free lease exactly one wins.
//! - `totals(id = 1, message_bytes)`: the sum of `messages.size`, so retention by size
//!   does not scan the table. Ingest adds a whole batch's bytes in one update just
//!   before its commit, so concurrent nodes hold this row's lock only for a commit.
//! - `health(id = 1, checks)`: written by the health check, so `/readyz` proves a commit.
//!
//! # Invariants
//! - Every `messages` row has exactly one `message_bodies` row (same transaction).
//! - A message with status `filtered` or `duplicate` has no deliveries; any other status
//!   equals the derivation from its deliveries' states.
//! - `totals.message_bytes = SUM(messages.size)`.
//! - A message's rows (body, deliveries, attempts) are deleted together, only while its
//!   status is settled; prune locks the rows it deletes (`FOR UPDATE SKIP LOCKED`, the
//!   status re-checked under the lock) and replay locks the message row, so a concurrent
//!   replay on another node cannot lose its delivery to a prune.
//!
//! # Queue order across nodes
//! A delivery's id is drawn from its sequence when the row is inserted, but becomes
//! visible only when its transaction commits. Without more, two nodes ingesting at once
//! could commit out of id order: node A draws 10, node B draws 11 and commits first, a
//! delivery worker delivers 11, and then 10 appears *behind* the head, delivered out of
//! order (or, by a worker that remembered its position, never).
//!
//! So every transaction that inserts deliveries (an ingest batch, a replay) first takes
//! `pg_advisory_xact_lock(QUEUE_LOCK, hashtext(<schema>))` and holds it to its commit.
//! PostgreSQL makes a committed transaction visible before it releases its locks, so
//! when the next holder draws its first id, every lower id is either visible or rolled
//! back for good: a reader that sees id `n` sees every committed id below `n`. The queue
//! is then the same sequence on every node, and a delivery worker reading the head in id
//! order never meets a delivery that should have gone before one it already sent.
//!
//! The price is that ingest commits of all nodes on one schema are serialized (each node
//! still batches many messages per commit, so the lock is taken once per batch, not once
//! per message); docs/BENCHMARKS.md measures it. The alternative, delivering only below a
//! visibility horizon computed from `pg_current_snapshot()`, keeps commits parallel but
//! needs the ids of transactions still in progress, which PostgreSQL does not expose.

use tokio_postgres::Client;

use crate::error::{Result, StoreError};
use crate::postgres::pg_err;

/// The newest schema version this build reads and writes.
pub const CURRENT_VERSION: i64 = 1;

/// First key of the migration advisory lock ("CWMG"); the second is the schema's hash.
pub const MIGRATION_LOCK: i32 = 0x4357_4d47;

/// First key of the queue advisory lock ("CWQU"), taken by every transaction that
/// inserts deliveries; the second is the schema's hash (see "Queue order across nodes").
pub const QUEUE_LOCK: i32 = 0x4357_5155;

/// Migrations in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[V1];

const V1: &str = "
CREATE TABLE messages (
    id                    bigserial PRIMARY KEY,
    channel               text     NOT NULL,
    received_at           bigint   NOT NULL,
    peer                  text     NOT NULL,
    tls_identity          text,
    control_id            text     NOT NULL,
    message_type          text     NOT NULL,
    trigger_event         text     NOT NULL,
    sending_application   text     NOT NULL,
    sending_facility      text     NOT NULL,
    receiving_application text     NOT NULL,
    receiving_facility    text     NOT NULL,
    patient_id            text,
    charset               text,
    size                  bigint   NOT NULL,
    status                text     NOT NULL CHECK (status IN
        ('pending', 'failed', 'delivered', 'dead_letter', 'filtered', 'duplicate')),
    duplicate_of          bigint,
    dedup_key             bytea    NOT NULL
);
CREATE INDEX messages_channel    ON messages (channel, id);
CREATE INDEX messages_status     ON messages (status, id);
CREATE INDEX messages_control_id ON messages (control_id);
CREATE INDEX messages_patient_id ON messages (patient_id) WHERE patient_id IS NOT NULL;
CREATE INDEX messages_type       ON messages (message_type, trigger_event);
CREATE INDEX messages_received   ON messages (received_at);

CREATE TABLE message_bodies (
    message_id bigint PRIMARY KEY,
    raw        bytea  NOT NULL
);

CREATE TABLE deliveries (
    id              bigserial PRIMARY KEY,
    message_id      bigint  NOT NULL,
    destination     text    NOT NULL,
    state           text    NOT NULL CHECK (state IN ('pending', 'failed', 'delivered', 'dead_letter')),
    created_at      bigint  NOT NULL,
    next_attempt_at bigint,
    attempts        integer NOT NULL DEFAULT 0,
    replay_of       bigint,
    superseded_by   bigint
);
CREATE INDEX deliveries_queue   ON deliveries (destination, id) WHERE state IN ('pending', 'failed');
CREATE INDEX deliveries_dead    ON deliveries (destination, id)
    WHERE state = 'dead_letter' AND superseded_by IS NULL;
CREATE INDEX deliveries_message ON deliveries (message_id);

CREATE TABLE attempts (
    id          bigserial PRIMARY KEY,
    delivery_id bigint NOT NULL,
    at          bigint NOT NULL,
    outcome     text   NOT NULL CHECK (outcome IN ('delivered', 'failed', 'dead_letter')),
    ack_code    text,
    ack_text    text,
    ack_raw     bytea,
    error       text,
    retry_at    bigint
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);

CREATE TABLE destinations (name text PRIMARY KEY);

CREATE TABLE quarantine (
    id           bigserial PRIMARY KEY,
    channel      text   NOT NULL,
    received_at  bigint NOT NULL,
    peer         text   NOT NULL,
    tls_identity text,
    reason       text   NOT NULL,
    raw          bytea  NOT NULL
);
CREATE INDEX quarantine_received ON quarantine (received_at);

CREATE TABLE audit (
    id          bigserial PRIMARY KEY,
    at          bigint   NOT NULL,
    actor       text     NOT NULL,
    address     text     NOT NULL,
    action      text     NOT NULL,
    message_ids bigint[] NOT NULL,
    detail      text     NOT NULL
);

CREATE TABLE leases (
    destination text   PRIMARY KEY,
    node_id     text   NOT NULL,
    expires_at  bigint NOT NULL
);

CREATE TABLE totals (
    id            integer PRIMARY KEY CHECK (id = 1),
    message_bytes bigint  NOT NULL
);
INSERT INTO totals (id, message_bytes) VALUES (1, 0);

CREATE TABLE health (id integer PRIMARY KEY CHECK (id = 1), checks bigint NOT NULL);
INSERT INTO health (id, checks) VALUES (1, 0);
";

/// Creates `schema` if it is named and missing, then brings it to [`CURRENT_VERSION`],
/// all in one transaction under the migration lock (see the module doc).
pub async fn migrate(client: &mut Client, schema: Option<&str>, now_ms: i64) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(pg_err("begin migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(COALESCE($2::text, current_schema())))",
        &[&MIGRATION_LOCK, &schema],
    )
    .await
    .map_err(pg_err("take migration lock"))?;
    if let Some(schema) = schema {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            super::quote_ident(schema)
        ))
        .await
        .map_err(pg_err("create schema"))?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    bigint PRIMARY KEY,
             applied_at bigint NOT NULL
         )",
    )
    .await
    .map_err(pg_err("create schema_version"))?;
    let found: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .await
        .map_err(pg_err("read schema version"))?
        .try_get(0)
        .map_err(pg_err("read schema version"))?;
    if found > CURRENT_VERSION {
        // Roll back before answering, so the connection holds no lock on the schema
        // after the caller gives up (it may not poll it again).
        let _ = tx.rollback().await;
        return Err(StoreError::SchemaTooNew {
            found,
            supported: CURRENT_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        tx.batch_execute(sql)
            .await
            .map_err(pg_err("apply migration"))?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
            &[&version, &now_ms],
        )
        .await
        .map_err(pg_err("record migration"))?;
        tracing::info!(version, "store schema migrated");
    }
    tx.commit().await.map_err(pg_err("commit migration"))?;
    Ok(())
}
