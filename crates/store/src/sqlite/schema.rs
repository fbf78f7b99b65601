//! The SQLite schema, its migrations and its invariants.
//!
//! # Connection settings
//! `journal_mode=WAL` (readers never block the writer), `synchronous=FULL` (a commit
//! returns only after the WAL is synced: the ACK-after-commit promise; the writer's own
//! connection switches to `NORMAL` and syncs the WAL itself, on a second thread, before
//! it answers: see `writer::Committed`), `foreign_keys=OFF`
//! (the writer deletes children itself; checks would cost on every insert), a 64 MiB
//! page cache, and `wal_autocheckpoint=16384` as a backstop behind the checkpointer
//! thread.
//!
//! # Tables (version 1)
//! All times are integer milliseconds since the Unix epoch (UTC).
//!
//! - `schema_version(version, applied_at)`: one row per applied migration. The store
//!   refuses to open a file whose highest version is newer than [`CURRENT_VERSION`].
//! - `messages`: one row per ingested message, duplicates included. `id` is
//!   `AUTOINCREMENT`, so ids grow with arrival order and are never reused after a prune.
//!   Metadata columns mirror `NewMessage`. `size` is the length of the raw bytes.
//!   `status` is the derived overall state (see `MessageStatus`), rewritten by every
//!   write that changes one of the message's deliveries. `duplicate_of` points at the
//!   original (which may since have been pruned). `dedup_key` is `NewMessage::dedup_key`;
//!   it is found through the `control_id` index (a resend has the same control id), not
//!   an index of its own: a hash index would put every insert on a random page.
//! - `message_bodies(message_id, raw)`: the bytes exactly as received, apart from the
//!   metadata so that searches and queue scans do not page blobs in.
//! - `deliveries`: one row per (message, destination) delivery, plus one per replay.
//!   `id` is `AUTOINCREMENT` and is the queue order: a destination's queue is its rows
//!   with state `pending` or `failed`, by id. `next_attempt_at` is NULL (due at once)
//!   until a failed attempt sets the retry time. `attempts` counts `attempts` rows.
//!   `replay_of` names the delivery a replay repeats; `superseded_by` is set on a dead
//!   letter once it is replayed.
//! - `attempts`: every attempt of a delivery, append-only (deleted only with its message).
//! - `destinations(name)`: every destination that ever had a delivery, for queue stats.
//! - `quarantine`: refused frames, with their bytes.
//! - `audit`: the operator audit log, append-only, never pruned. `message_ids` is a
//!   comma-separated list of ids.
//! - `leases(destination, node_id, expires_at)`: who delivers to a destination.
//! - `totals(id = 1, message_bytes)`: the sum of `messages.size`, kept by ingest and
//!   prune in the same transaction, so retention by size does not scan the table.
//! - `ingest_journal(id = 1, generation, applied_seq)` (version 2): the ingest journal's
//!   current generation and the last journal record whose ingest is committed here,
//!   written in the same transaction as the ingest's rows (see `journal`).
//!
//! # Invariants
//! - Every `messages` row has exactly one `message_bodies` row.
//! - A message with status `filtered` or `duplicate` has no deliveries; any other status
//!   equals the derivation from its deliveries' states.
//! - `totals.message_bytes = SUM(messages.size)`.
//! - Rows of a message (body, deliveries, attempts) are deleted together, only when the
//!   message's status is settled (`delivered`, `filtered`, `duplicate`).

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Result, StoreError};
use crate::sqlite::sql_err;

/// The newest schema version this build reads and writes.
pub const CURRENT_VERSION: i64 = 2;

/// Migrations in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2];

const V1: &str = "
CREATE TABLE messages (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    channel               TEXT    NOT NULL,
    received_at           INTEGER NOT NULL,
    peer                  TEXT    NOT NULL,
    tls_identity          TEXT,
    control_id            TEXT    NOT NULL,
    message_type          TEXT    NOT NULL,
    trigger_event         TEXT    NOT NULL,
    sending_application   TEXT    NOT NULL,
    sending_facility      TEXT    NOT NULL,
    receiving_application TEXT    NOT NULL,
    receiving_facility    TEXT    NOT NULL,
    patient_id            TEXT,
    charset               TEXT,
    size                  INTEGER NOT NULL,
    status                TEXT    NOT NULL,
    duplicate_of          INTEGER,
    dedup_key             BLOB    NOT NULL
);
CREATE INDEX messages_channel    ON messages(channel, id);
CREATE INDEX messages_status     ON messages(status, id);
CREATE INDEX messages_control_id ON messages(control_id);
CREATE INDEX messages_patient_id ON messages(patient_id) WHERE patient_id IS NOT NULL;
CREATE INDEX messages_type       ON messages(message_type, trigger_event);
CREATE INDEX messages_received   ON messages(received_at);

CREATE TABLE message_bodies (
    message_id INTEGER PRIMARY KEY,
    raw        BLOB NOT NULL
);

CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      INTEGER NOT NULL,
    destination     TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0,
    replay_of       INTEGER,
    superseded_by   INTEGER
);
CREATE INDEX deliveries_queue   ON deliveries(destination, id) WHERE state IN ('pending', 'failed');
CREATE INDEX deliveries_dead    ON deliveries(destination, id) WHERE state = 'dead_letter' AND superseded_by IS NULL;
CREATE INDEX deliveries_message ON deliveries(message_id);

CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,
    ack_code    TEXT,
    ack_text    TEXT,
    ack_raw     BLOB,
    error       TEXT,
    retry_at    INTEGER
);
CREATE INDEX attempts_delivery ON attempts(delivery_id, id);

CREATE TABLE destinations (name TEXT PRIMARY KEY) WITHOUT ROWID;

CREATE TABLE quarantine (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    channel      TEXT    NOT NULL,
    received_at  INTEGER NOT NULL,
    peer         TEXT    NOT NULL,
    tls_identity TEXT,
    reason       TEXT    NOT NULL,
    raw          BLOB    NOT NULL
);
CREATE INDEX quarantine_received ON quarantine(received_at);

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    address     TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    message_ids TEXT    NOT NULL,
    detail      TEXT    NOT NULL
);

CREATE TABLE leases (
    destination TEXT PRIMARY KEY,
    node_id     TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE totals (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    message_bytes INTEGER NOT NULL
);
INSERT INTO totals (id, message_bytes) VALUES (1, 0);

CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), checks INTEGER NOT NULL);
INSERT INTO health (id, checks) VALUES (1, 0);
";

/// Version 2: the ingest journal's place (see `journal`).
const V2: &str = "
CREATE TABLE ingest_journal (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  INTEGER NOT NULL,
    applied_seq INTEGER NOT NULL
);
INSERT INTO ingest_journal (id, generation, applied_seq) VALUES (1, 0, 0);
";

/// Sets the connection pragmas every connection needs.
pub fn configure(conn: &Connection, busy_timeout: std::time::Duration) -> Result<()> {
    conn.busy_timeout(busy_timeout)
        .map_err(sql_err("set busy timeout"))?;
    // journal_mode returns a row; the others do not.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(sql_err("enable WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::unavailable(
            "enable WAL",
            format!("journal mode stayed {mode:?}"),
        ));
    }
    // A 64 MiB page cache keeps the indexes' hot pages in memory as the file grows.
    // The checkpointer thread keeps the WAL short; auto-checkpoint on commit is only the
    // backstop for when it falls behind (at 64 MiB of WAL).
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF; PRAGMA cache_size = -65536; \
         PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 16384;",
    )
    .map_err(sql_err("set pragmas"))?;
    Ok(())
}

/// Brings the schema to [`CURRENT_VERSION`], one transaction per migration.
pub fn migrate(conn: &mut Connection, now_ms: i64) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )
    .map_err(sql_err("create schema_version"))?;
    let found: i64 = conn
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()
        .map_err(sql_err("read schema version"))?
        .flatten()
        .unwrap_or(0);
    if found > CURRENT_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: CURRENT_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        let tx = conn.transaction().map_err(sql_err("begin migration"))?;
        tx.execute_batch(sql).map_err(sql_err("apply migration"))?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            (version, now_ms),
        )
        .map_err(sql_err("record migration"))?;
        tx.commit().map_err(sql_err("commit migration"))?;
        tracing::info!(version, "store schema migrated");
    }
    Ok(())
}
