//! Every operation the store runs on a pooled connection: the writes other than ingest
//! (each in its own transaction, opened by the caller where it says so) and the reads.
//!
//! Locking rule, so concurrent nodes neither lose updates nor deadlock: a write that
//! changes a message's deliveries first locks the message row (`FOR UPDATE`, several in
//! id order). The derived `messages.status` is then computed by a statement that sees
//! every change committed by whoever held the lock before. Prune takes the same locks
//! with `SKIP LOCKED` and re-checks the status under them.

use std::time::Duration;

use bytes::Bytes;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::Replayed;
use crate::error::{Result, StoreError};
use crate::postgres::{PgConn, col, pg_err, pg_text};
use crate::types::{
    AttemptRecord, AttemptResult, AuditEntry, AuditId, AuditRecord, Cursor, DeliveryId,
    DeliveryRecord, DeliveryState, DestinationStats, Lease, MessageId, MessageRecord,
    MessageStatus, MessageSummary, NewMessage, NewQuarantine, PendingDelivery, QuarantineId,
    QuarantinePage, QuarantineRecord, SearchPage, SearchQuery, Timestamp,
};

// === the queue lock ===

/// `BEGIN` and the queue lock, for a transaction that inserts deliveries. Every such
/// transaction (ingest batches, replays) takes it before drawing its first delivery id
/// and holds it to its commit, so delivery ids become visible in id order across nodes.
/// The number is [`super::schema::QUEUE_LOCK`] (simple protocol: no parameters).
pub(super) const BEGIN_LOCK_QUEUE: &str =
    "BEGIN; SELECT pg_advisory_xact_lock(1129795925, hashtext(current_schema()))";

/// Takes the queue lock inside the caller's transaction.
async fn lock_queue(c: &mut PgConn) -> Result<()> {
    c.execute(
        "take queue lock",
        "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
        &[&super::schema::QUEUE_LOCK],
    )
    .await?;
    Ok(())
}

// === writes (in a transaction unless noted) ===

/// Autocommit: one insert.
pub(super) async fn quarantine(c: &mut PgConn, q: &NewQuarantine) -> Result<QuarantineId> {
    let row = c
        .query_one(
            "insert quarantine",
            "INSERT INTO quarantine (channel, received_at, peer, tls_identity, reason, raw)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[
                &pg_text(&q.channel),
                &q.received_at.as_millis(),
                &pg_text(&q.peer),
                &q.tls_identity.as_deref().map(pg_text),
                &pg_text(&q.reason),
                &&q.raw[..],
            ],
        )
        .await?;
    Ok(QuarantineId(col(&row, 0)?))
}

/// Locks the message rows, in id order; returns the ids that exist.
async fn lock_messages(c: &mut PgConn, ids: &[i64]) -> Result<Vec<i64>> {
    let rows = c
        .query(
            "lock messages",
            "SELECT id FROM messages WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .await?;
    rows.iter().map(|r| col(r, 0)).collect()
}

pub(super) async fn record_attempt(
    c: &mut PgConn,
    delivery: DeliveryId,
    at: Timestamp,
    result: &AttemptResult,
) -> Result<()> {
    let not_found = StoreError::NotFound {
        what: "delivery",
        id: delivery.0,
    };
    // A delivery's message never changes: read it, lock it, then read the state under
    // the lock.
    let Some(row) = c
        .query_opt(
            "read delivery",
            "SELECT message_id FROM deliveries WHERE id = $1",
            &[&delivery.0],
        )
        .await?
    else {
        return Err(not_found);
    };
    let message_id: i64 = col(&row, 0)?;
    if lock_messages(c, &[message_id]).await?.is_empty() {
        return Err(not_found);
    }
    let Some(row) = c
        .query_opt(
            "read delivery",
            "SELECT state FROM deliveries WHERE id = $1",
            &[&delivery.0],
        )
        .await?
    else {
        return Err(not_found);
    };
    let state: DeliveryState = parse_state(col::<&str>(&row, 0)?)?;
    if !state.is_queued() {
        return Err(StoreError::Conflict(format!(
            "delivery {delivery} is {} and no longer queued",
            state.as_str()
        )));
    }
    let (outcome, ack_code, ack_text, ack_raw, error, retry_at) = match result {
        AttemptResult::Delivered {
            ack_code,
            ack_text,
            ack_raw,
        } => (
            "delivered",
            ack_code.as_deref().map(pg_text),
            ack_text.as_deref().map(pg_text),
            ack_raw.as_deref(),
            None,
            None,
        ),
        AttemptResult::Failed { error, retry_at } => (
            "failed",
            None,
            None,
            None,
            Some(pg_text(error)),
            Some(retry_at.as_millis()),
        ),
        AttemptResult::DeadLettered { error } => {
            ("dead_letter", None, None, None, Some(pg_text(error)), None)
        }
    };
    c.execute(
        "insert attempt",
        "INSERT INTO attempts (delivery_id, at, outcome, ack_code, ack_text, ack_raw, error, retry_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &delivery.0,
            &at.as_millis(),
            &outcome,
            &ack_code,
            &ack_text,
            &ack_raw,
            &error,
            &retry_at,
        ],
    )
    .await?;
    c.execute(
        "update delivery",
        "UPDATE deliveries
         SET state = $2, attempts = attempts + 1, next_attempt_at = COALESCE($3, next_attempt_at)
         WHERE id = $1",
        &[&delivery.0, &result.next_state().as_str(), &retry_at],
    )
    .await?;
    refresh_status(c, message_id).await
}

/// Rewrites a message's derived status from its deliveries (see `MessageStatus`). The
/// caller holds the message's lock.
async fn refresh_status(c: &mut PgConn, message_id: i64) -> Result<()> {
    c.execute(
        "refresh message status",
        "UPDATE messages SET status = CASE
             WHEN EXISTS (SELECT 1 FROM deliveries WHERE message_id = $1
                          AND state = 'dead_letter' AND superseded_by IS NULL) THEN 'dead_letter'
             WHEN EXISTS (SELECT 1 FROM deliveries WHERE message_id = $1 AND state = 'failed')
                 THEN 'failed'
             WHEN EXISTS (SELECT 1 FROM deliveries WHERE message_id = $1 AND state = 'pending')
                 THEN 'pending'
             ELSE 'delivered' END
         WHERE id = $1 AND status NOT IN ('filtered', 'duplicate')",
        &[&message_id],
    )
    .await?;
    Ok(())
}

const INSERT_REPLAY: &str = "
INSERT INTO deliveries (message_id, destination, state, created_at, replay_of)
VALUES ($1, $2, 'pending', $3, $4) RETURNING id";

pub(super) async fn replay(
    c: &mut PgConn,
    message: MessageId,
    destination: Option<&str>,
    at: Timestamp,
) -> Result<Vec<DeliveryId>> {
    lock_queue(c).await?;
    if lock_messages(c, &[message.0]).await?.is_empty() {
        return Err(StoreError::NotFound {
            what: "message",
            id: message.0,
        });
    }
    // The destinations it was routed to at ingest: the deliveries that are not replays.
    let routed: Vec<String> = c
        .query(
            "read destinations",
            "SELECT destination FROM deliveries
             WHERE message_id = $1 AND replay_of IS NULL ORDER BY id",
            &[&message.0],
        )
        .await?
        .iter()
        .map(|r| col(r, 0))
        .collect::<Result<_>>()?;
    let targets: Vec<&str> = match destination {
        None => routed.iter().map(String::as_str).collect(),
        Some(d) if routed.iter().any(|r| *r == pg_text(d)) => vec![d],
        Some(d) => {
            return Err(StoreError::InvalidInput(format!(
                "message {message} was not routed to {d:?}"
            )));
        }
    };
    let mut created = Vec::with_capacity(targets.len());
    for dest in targets {
        let dest = pg_text(dest);
        let previous: i64 = col(
            &c.query_one(
                "read last delivery",
                "SELECT MAX(id) FROM deliveries WHERE message_id = $1 AND destination = $2",
                &[&message.0, &dest],
            )
            .await?,
            0,
        )?;
        let new: i64 = col(
            &c.query_one(
                "insert delivery",
                INSERT_REPLAY,
                &[&message.0, &dest, &at.as_millis(), &previous],
            )
            .await?,
            0,
        )?;
        c.execute(
            "supersede dead letters",
            "UPDATE deliveries SET superseded_by = $3
             WHERE message_id = $1 AND destination = $2 AND state = 'dead_letter'
               AND superseded_by IS NULL",
            &[&message.0, &dest, &new],
        )
        .await?;
        created.push(DeliveryId(new));
    }
    refresh_status(c, message.0).await?;
    Ok(created)
}

const DEAD_LETTERS: &str = "
SELECT id, message_id FROM deliveries
WHERE destination = $1 AND state = 'dead_letter' AND superseded_by IS NULL
ORDER BY id";

pub(super) async fn replay_dead_letters(
    c: &mut PgConn,
    destination: &str,
    at: Timestamp,
) -> Result<Vec<Replayed>> {
    let destination = pg_text(destination);
    let dead = dead_letters(c, &destination).await?;
    if dead.is_empty() {
        return Ok(Vec::new());
    }
    let mut messages: Vec<i64> = dead.iter().map(|&(_, m)| m).collect();
    messages.sort_unstable();
    messages.dedup();
    lock_queue(c).await?;
    lock_messages(c, &messages).await?;
    // Read again under the locks: another node may have replayed some meanwhile.
    let dead = dead_letters(c, &destination).await?;
    let mut created = Vec::with_capacity(dead.len());
    for (old, message_id) in dead {
        let new: i64 = col(
            &c.query_one(
                "insert delivery",
                INSERT_REPLAY,
                &[&message_id, &destination, &at.as_millis(), &old],
            )
            .await?,
            0,
        )?;
        c.execute(
            "supersede dead letter",
            "UPDATE deliveries SET superseded_by = $2 WHERE id = $1",
            &[&old, &new],
        )
        .await?;
        refresh_status(c, message_id).await?;
        created.push(Replayed {
            delivery: DeliveryId(new),
            message: MessageId(message_id),
        });
    }
    Ok(created)
}

async fn dead_letters(c: &mut PgConn, destination: &str) -> Result<Vec<(i64, i64)>> {
    c.query("read dead letters", DEAD_LETTERS, &[&destination])
        .await?
        .iter()
        .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
        .collect()
}

// === retention ===

/// Deletes up to `chunk` settled messages received before `cutoff`; returns (count,
/// bytes).
pub(super) async fn prune_by_age(
    c: &mut PgConn,
    cutoff: Timestamp,
    chunk: usize,
) -> Result<(u64, u64)> {
    let victims: Vec<i64> = c
        .query(
            "select messages to prune",
            "SELECT id FROM messages
             WHERE received_at < $1 AND status IN ('delivered', 'filtered', 'duplicate')
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&cutoff.as_millis(), &limit_param(chunk)],
        )
        .await?
        .iter()
        .map(|r| col(r, 0))
        .collect::<Result<_>>()?;
    delete_messages(c, &victims).await
}

/// Deletes settled messages oldest first, up to `chunk`, while the total exceeds `budget`.
/// Returns (count, bytes, done); done when under budget or nothing settled is left.
pub(super) async fn prune_by_size(
    c: &mut PgConn,
    budget: u64,
    chunk: usize,
) -> Result<(u64, u64, bool)> {
    let mut total: i64 = col(
        &c.query_one(
            "read totals",
            "SELECT message_bytes FROM totals WHERE id = 1",
            &[],
        )
        .await?,
        0,
    )?;
    let budget = i64::try_from(budget).unwrap_or(i64::MAX);
    if total <= budget {
        return Ok((0, 0, true));
    }
    let oldest: Vec<(i64, i64)> = c
        .query(
            "select messages to prune",
            "SELECT id, size FROM messages
             WHERE status IN ('delivered', 'filtered', 'duplicate')
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&limit_param(chunk)],
        )
        .await?
        .iter()
        .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
        .collect::<Result<_>>()?;
    let mut victims = Vec::new();
    for &(id, size) in &oldest {
        if total <= budget {
            break;
        }
        victims.push(id);
        total -= size;
    }
    let (n, bytes) = delete_messages(c, &victims).await?;
    let done = total <= budget || oldest.len() < chunk;
    Ok((n, bytes, done))
}

/// Deletes messages (locked by the caller) with everything that hangs off them, and
/// takes their bytes off the total.
async fn delete_messages(c: &mut PgConn, ids: &[i64]) -> Result<(u64, u64)> {
    if ids.is_empty() {
        return Ok((0, 0));
    }
    let row = c
        .query_one(
            "delete messages",
            "WITH a AS (
                 DELETE FROM attempts WHERE delivery_id IN
                     (SELECT id FROM deliveries WHERE message_id = ANY($1))
             ), d AS (
                 DELETE FROM deliveries WHERE message_id = ANY($1)
             ), b AS (
                 DELETE FROM message_bodies WHERE message_id = ANY($1)
             ), m AS (
                 DELETE FROM messages WHERE id = ANY($1) RETURNING size
             )
             SELECT count(*), COALESCE(sum(size), 0)::bigint FROM m",
            &[&ids],
        )
        .await?;
    let (n, bytes): (i64, i64) = (col(&row, 0)?, col(&row, 1)?);
    c.execute(
        "update totals",
        "UPDATE totals SET message_bytes = message_bytes - $1 WHERE id = 1",
        &[&bytes],
    )
    .await?;
    Ok((non_negative(n), non_negative(bytes)))
}

/// Autocommit: deletes up to `chunk` quarantined frames received before `cutoff`.
pub(super) async fn prune_quarantine(
    c: &mut PgConn,
    cutoff: Timestamp,
    chunk: usize,
) -> Result<u64> {
    c.execute(
        "prune quarantine",
        "DELETE FROM quarantine WHERE id IN
             (SELECT id FROM quarantine WHERE received_at < $1 ORDER BY id LIMIT $2
              FOR UPDATE SKIP LOCKED)",
        &[&cutoff.as_millis(), &limit_param(chunk)],
    )
    .await
}

// === audit, leases, health (autocommit) ===

pub(super) async fn audit(c: &mut PgConn, e: &AuditEntry) -> Result<AuditId> {
    let ids: Vec<i64> = e.message_ids.iter().map(|id| id.0).collect();
    let row = c
        .query_one(
            "insert audit entry",
            "INSERT INTO audit (at, actor, address, action, message_ids, detail)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[
                &e.at.as_millis(),
                &pg_text(&e.actor),
                &pg_text(&e.address),
                &pg_text(e.action.as_str()),
                &ids,
                &pg_text(&e.detail),
            ],
        )
        .await?;
    Ok(AuditId(col(&row, 0)?))
}

pub(super) fn check_lease_names(destination: &str, node_id: &str) -> Result<()> {
    if destination.is_empty() || node_id.is_empty() {
        return Err(StoreError::InvalidInput(
            "lease destination and node id must not be empty".into(),
        ));
    }
    Ok(())
}

/// One statement: atomic against every other node's.
pub(super) async fn acquire_lease(
    c: &mut PgConn,
    destination: &str,
    node_id: &str,
    ttl: Duration,
    now: Timestamp,
) -> Result<bool> {
    let n = c
        .execute(
            "acquire lease",
            "INSERT INTO leases (destination, node_id, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (destination) DO UPDATE
                 SET node_id = EXCLUDED.node_id, expires_at = EXCLUDED.expires_at
                 WHERE leases.node_id = EXCLUDED.node_id OR leases.expires_at <= $4",
            &[
                &pg_text(destination),
                &pg_text(node_id),
                &now.saturating_add(ttl).as_millis(),
                &now.as_millis(),
            ],
        )
        .await?;
    Ok(n > 0)
}

pub(super) async fn renew_lease(
    c: &mut PgConn,
    destination: &str,
    node_id: &str,
    ttl: Duration,
    now: Timestamp,
) -> Result<bool> {
    let n = c
        .execute(
            "renew lease",
            "UPDATE leases SET expires_at = $3
             WHERE destination = $1 AND node_id = $2 AND expires_at > $4",
            &[
                &pg_text(destination),
                &pg_text(node_id),
                &now.saturating_add(ttl).as_millis(),
                &now.as_millis(),
            ],
        )
        .await?;
    Ok(n > 0)
}

pub(super) async fn release_lease(
    c: &mut PgConn,
    destination: &str,
    node_id: &str,
) -> Result<bool> {
    let n = c
        .execute(
            "release lease",
            "DELETE FROM leases WHERE destination = $1 AND node_id = $2",
            &[&pg_text(destination), &pg_text(node_id)],
        )
        .await?;
    Ok(n > 0)
}

/// A real write, so a read-only or full database shows up as not ready.
pub(super) async fn health(c: &mut PgConn) -> Result<()> {
    c.execute(
        "health check write",
        "UPDATE health SET checks = checks + 1 WHERE id = 1",
        &[],
    )
    .await?;
    Ok(())
}

// === reads ===

pub(super) async fn next_pending(
    c: &mut PgConn,
    destination: &str,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<PendingDelivery>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = c
        .query(
            "read queue",
            "SELECT d.id, d.message_id, d.next_attempt_at, d.attempts, m.control_id, b.raw
             FROM deliveries d
             JOIN messages m ON m.id = d.message_id
             JOIN message_bodies b ON b.message_id = d.message_id
             WHERE d.destination = $1 AND d.state IN ('pending', 'failed')
             ORDER BY d.id LIMIT $2",
            &[&pg_text(destination), &limit_param(limit)],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let next_attempt_at: Option<i64> = col(row, 2)?;
        // Strict FIFO: the first delivery not yet due holds back everything behind it.
        if next_attempt_at.is_some_and(|t| t > now.as_millis()) {
            break;
        }
        out.push(PendingDelivery {
            id: DeliveryId(col(row, 0)?),
            message_id: MessageId(col(row, 1)?),
            destination: destination.to_owned(),
            attempts: count(col(row, 3)?)?,
            control_id: col(row, 4)?,
            raw: Bytes::copy_from_slice(col::<&[u8]>(row, 5)?),
        });
    }
    Ok(out)
}

const SUMMARY_COLUMNS: &str = "id, status, duplicate_of, size, channel, received_at, peer,
    tls_identity, control_id, message_type, trigger_event, sending_application,
    sending_facility, receiving_application, receiving_facility, patient_id, charset";

/// `SUMMARY_COLUMNS` spelled out: the statement cache keys on `&'static str`.
const READ_MESSAGE: &str = "SELECT id, status, duplicate_of, size, channel, received_at, peer,
    tls_identity, control_id, message_type, trigger_event, sending_application,
    sending_facility, receiving_application, receiving_facility, patient_id, charset
    FROM messages WHERE id = $1";

fn summary(row: &Row) -> Result<MessageSummary> {
    let status: &str = col(row, 1)?;
    Ok(MessageSummary {
        id: MessageId(col(row, 0)?),
        status: status
            .parse::<MessageStatus>()
            .map_err(|_| StoreError::Corrupt(format!("unknown message status {status:?}")))?,
        duplicate_of: col::<Option<i64>>(row, 2)?.map(MessageId),
        size: non_negative(col(row, 3)?),
        meta: NewMessage {
            channel: col(row, 4)?,
            raw: Bytes::new(),
            received_at: Timestamp(col(row, 5)?),
            peer: col(row, 6)?,
            tls_identity: col(row, 7)?,
            control_id: col(row, 8)?,
            message_type: col(row, 9)?,
            trigger_event: col(row, 10)?,
            sending_application: col(row, 11)?,
            sending_facility: col(row, 12)?,
            receiving_application: col(row, 13)?,
            receiving_facility: col(row, 14)?,
            patient_id: col(row, 15)?,
            charset: col(row, 16)?,
            destinations: Vec::new(),
        },
    })
}

/// A message with everything about it, read from one snapshot.
pub(super) async fn message(c: &mut PgConn, id: MessageId) -> Result<Option<MessageRecord>> {
    c.in_tx = true;
    c.client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(pg_err("begin read"))?;
    let record = message_in_snapshot(c, id).await?;
    c.commit().await?;
    Ok(record)
}

async fn message_in_snapshot(c: &mut PgConn, id: MessageId) -> Result<Option<MessageRecord>> {
    let Some(row) = c.query_opt("read message", READ_MESSAGE, &[&id.0]).await? else {
        return Ok(None);
    };
    let mut summary = summary(&row)?;
    let body = c
        .query_one(
            "read message body",
            "SELECT raw FROM message_bodies WHERE message_id = $1",
            &[&id.0],
        )
        .await?;
    summary.meta.raw = Bytes::copy_from_slice(col::<&[u8]>(&body, 0)?);

    let mut deliveries = c
        .query(
            "read deliveries",
            "SELECT id, destination, state, created_at, next_attempt_at, replay_of, superseded_by
             FROM deliveries WHERE message_id = $1 ORDER BY id",
            &[&id.0],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(DeliveryRecord {
                id: DeliveryId(col(r, 0)?),
                destination: col(r, 1)?,
                state: parse_state(col(r, 2)?)?,
                created_at: Timestamp(col(r, 3)?),
                next_attempt_at: col::<Option<i64>>(r, 4)?.map(Timestamp),
                replay_of: col::<Option<i64>>(r, 5)?.map(DeliveryId),
                superseded_by: col::<Option<i64>>(r, 6)?.map(DeliveryId),
                attempts: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    summary.meta.destinations = deliveries
        .iter()
        .filter(|d| d.replay_of.is_none())
        .map(|d| d.destination.clone())
        .collect();

    let attempts = c
        .query(
            "read attempts",
            "SELECT a.delivery_id, a.at, a.outcome, a.ack_code, a.ack_text, a.ack_raw, a.error,
                    a.retry_at
             FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
             WHERE d.message_id = $1 ORDER BY a.delivery_id, a.id",
            &[&id.0],
        )
        .await?;
    for r in &attempts {
        let delivery_id: i64 = col(r, 0)?;
        let outcome: &str = col(r, 2)?;
        let error: Option<String> = col(r, 6)?;
        let result = match (outcome, col::<Option<i64>>(r, 7)?) {
            ("delivered", _) => AttemptResult::Delivered {
                ack_code: col(r, 3)?,
                ack_text: col(r, 4)?,
                ack_raw: col::<Option<&[u8]>>(r, 5)?.map(Bytes::copy_from_slice),
            },
            ("failed", Some(retry_at)) => AttemptResult::Failed {
                error: error.unwrap_or_default(),
                retry_at: Timestamp(retry_at),
            },
            ("dead_letter", _) => AttemptResult::DeadLettered {
                error: error.unwrap_or_default(),
            },
            _ => return Err(StoreError::Corrupt(format!("attempt outcome {outcome:?}"))),
        };
        if let Some(d) = deliveries.iter_mut().find(|d| d.id.0 == delivery_id) {
            d.attempts.push(AttemptRecord {
                at: Timestamp(col(r, 1)?),
                result,
            });
        }
    }
    Ok(Some(MessageRecord {
        summary,
        deliveries,
    }))
}

/// Search runs unprepared: its text depends on the filters given.
pub(super) async fn search(c: &mut PgConn, q: &SearchQuery) -> Result<SearchPage> {
    let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM messages WHERE true");
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut filter = |column: &str, op: &str, value: Box<dyn ToSql + Sync + Send>| {
        args.push(value);
        sql.push_str(&format!(" AND {column} {op} ${}", args.len()));
    };
    let text = |s: &String| -> Box<dyn ToSql + Sync + Send> { Box::new(pg_text(s).into_owned()) };
    if let Some(c) = &q.channel {
        filter("channel", "=", text(c));
    }
    if let Some(s) = q.status {
        filter("status", "=", Box::new(s.as_str()));
    }
    if let Some(t) = &q.message_type {
        filter("message_type", "=", text(t));
    }
    if let Some(t) = &q.trigger_event {
        filter("trigger_event", "=", text(t));
    }
    if let Some(c) = &q.control_id {
        filter("control_id", "=", text(c));
    }
    if let Some(p) = &q.patient_id {
        filter("patient_id", "=", text(p));
    }
    if let Some(t) = q.received_from {
        filter("received_at", ">=", Box::new(t.as_millis()));
    }
    if let Some(t) = q.received_until {
        filter("received_at", "<", Box::new(t.as_millis()));
    }
    if let Some(cursor) = &q.cursor {
        filter("id", "<", Box::new(cursor.before_id()?));
    }
    // One more than asked tells whether there is a next page.
    args.push(Box::new(limit_param(q.limit.saturating_add(1))));
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", args.len()));
    let params: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = c
        .client
        .query(&sql, &params)
        .await
        .map_err(pg_err("search messages"))?;
    let mut messages = rows.iter().map(summary).collect::<Result<Vec<_>>>()?;
    let next = page_end(&mut messages, q.limit, |m| m.id.0);
    Ok(SearchPage { messages, next })
}

/// Cuts a newest-first listing fetched with one extra row to `limit`, and returns the
/// cursor for the next page if that extra row was there.
fn page_end<T>(items: &mut Vec<T>, limit: usize, id: impl Fn(&T) -> i64) -> Option<Cursor> {
    if items.len() > limit {
        items.truncate(limit);
        items.last().map(|last| Cursor::before(id(last)))
    } else {
        None
    }
}

pub(super) async fn list_quarantine(
    c: &mut PgConn,
    limit: usize,
    cursor: Option<&Cursor>,
) -> Result<QuarantinePage> {
    let before = match cursor {
        Some(c) => c.before_id()?,
        None => i64::MAX,
    };
    let mut entries = c
        .query(
            "list quarantine",
            "SELECT id, channel, received_at, peer, tls_identity, reason, raw
             FROM quarantine WHERE id < $1 ORDER BY id DESC LIMIT $2",
            &[&before, &limit_param(limit.saturating_add(1))],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(QuarantineRecord {
                id: QuarantineId(col(r, 0)?),
                entry: NewQuarantine {
                    channel: col(r, 1)?,
                    received_at: Timestamp(col(r, 2)?),
                    peer: col(r, 3)?,
                    tls_identity: col(r, 4)?,
                    reason: col(r, 5)?,
                    raw: Bytes::copy_from_slice(col::<&[u8]>(r, 6)?),
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next = page_end(&mut entries, limit, |e| e.id.0);
    Ok(QuarantinePage { entries, next })
}

pub(super) async fn list_audit(c: &mut PgConn, limit: usize) -> Result<Vec<AuditRecord>> {
    c.query(
        "list audit",
        "SELECT id, at, actor, address, action, message_ids, detail
         FROM audit ORDER BY id DESC LIMIT $1",
        &[&limit_param(limit)],
    )
    .await?
    .iter()
    .map(|r| {
        let ids: Vec<i64> = col(r, 5)?;
        Ok(AuditRecord {
            id: AuditId(col(r, 0)?),
            entry: AuditEntry {
                at: Timestamp(col(r, 1)?),
                actor: col(r, 2)?,
                address: col(r, 3)?,
                action: col::<&str>(r, 4)?.into(),
                message_ids: ids.into_iter().map(MessageId).collect(),
                detail: col(r, 6)?,
            },
        })
    })
    .collect()
}

/// Destinations in byte order (`COLLATE "C"`), as the SQLite backend lists them.
pub(super) async fn queue_stats(c: &mut PgConn) -> Result<Vec<DestinationStats>> {
    c.query(
        "queue stats",
        "SELECT n.name,
             (SELECT count(*) FROM deliveries
              WHERE destination = n.name AND state IN ('pending', 'failed')),
             (SELECT count(*) FROM deliveries
              WHERE destination = n.name AND state = 'dead_letter' AND superseded_by IS NULL),
             (SELECT min(m.received_at) FROM deliveries d JOIN messages m ON m.id = d.message_id
              WHERE d.destination = n.name AND d.state IN ('pending', 'failed'))
         FROM destinations n ORDER BY n.name COLLATE \"C\"",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(DestinationStats {
            destination: col(r, 0)?,
            pending: non_negative(col(r, 1)?),
            dead_lettered: non_negative(col(r, 2)?),
            oldest_pending_received_at: col::<Option<i64>>(r, 3)?.map(Timestamp),
        })
    })
    .collect()
}

pub(super) async fn leases(c: &mut PgConn) -> Result<Vec<Lease>> {
    c.query(
        "list leases",
        "SELECT destination, node_id, expires_at FROM leases ORDER BY destination COLLATE \"C\"",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(Lease {
            destination: col(r, 0)?,
            node_id: col(r, 1)?,
            expires_at: Timestamp(col(r, 2)?),
        })
    })
    .collect()
}

// === helpers ===

fn parse_state(s: &str) -> Result<DeliveryState> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("unknown state {s:?}")))
}

/// A `LIMIT` parameter (`bigint`).
fn limit_param(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Sizes and counts are `bigint` and never negative.
fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The `attempts` column (`integer`).
fn count(v: i32) -> Result<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("attempt count {v}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn begin_lock_queue_names_the_queue_lock() {
        let key = super::super::schema::QUEUE_LOCK.to_string();
        assert!(super::BEGIN_LOCK_QUEUE.contains(&format!("({key}, hashtext(current_schema()))")));
    }
}
