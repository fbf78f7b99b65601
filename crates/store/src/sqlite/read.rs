//! Every read the store makes, on a read connection.

use bytes::Bytes;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use crate::error::{Result, StoreError};
use crate::sqlite::sql_err;
use crate::sqlite::writer::corrupt_state;
use crate::types::{
    AttemptRecord, AttemptResult, AuditEntry, AuditId, AuditRecord, Cursor, DeliveryId,
    DeliveryRecord, DeliveryState, DestinationStats, Lease, MessageId, MessageRecord,
    MessageStatus, MessageSummary, NewMessage, NewQuarantine, PendingDelivery, QuarantineId,
    QuarantinePage, QuarantineRecord, SearchPage, SearchQuery, Timestamp,
};

pub(super) fn next_pending(
    conn: &Connection,
    destination: &str,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<PendingDelivery>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT d.id, d.message_id, d.next_attempt_at, d.attempts, m.control_id, b.raw
             FROM deliveries d
             JOIN messages m ON m.id = d.message_id
             JOIN message_bodies b ON b.message_id = d.message_id
             WHERE d.destination = ?1 AND d.state IN ('pending', 'failed')
             ORDER BY d.id LIMIT ?2",
        )
        .map_err(sql_err("read queue"))?;
    let mut rows = stmt
        .query(params![destination, limit as i64])
        .map_err(sql_err("read queue"))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err("read queue"))? {
        let next_attempt_at: Option<i64> = row.get(2).map_err(sql_err("read queue"))?;
        // Strict FIFO: the first delivery not yet due holds back everything behind it.
        if next_attempt_at.is_some_and(|t| t > now.as_millis()) {
            break;
        }
        out.push(PendingDelivery {
            id: DeliveryId(row.get(0).map_err(sql_err("read queue"))?),
            message_id: MessageId(row.get(1).map_err(sql_err("read queue"))?),
            destination: destination.to_owned(),
            attempts: row.get(3).map_err(sql_err("read queue"))?,
            control_id: row.get(4).map_err(sql_err("read queue"))?,
            raw: Bytes::from(row.get::<_, Vec<u8>>(5).map_err(sql_err("read queue"))?),
        });
    }
    Ok(out)
}

const SUMMARY_COLUMNS: &str = "id, status, duplicate_of, size, channel, received_at, peer,
    tls_identity, control_id, message_type, trigger_event, sending_application,
    sending_facility, receiving_application, receiving_facility, patient_id, charset";

fn summary(row: &Row<'_>) -> rusqlite::Result<(MessageSummary, String)> {
    let status: String = row.get(1)?;
    Ok((
        MessageSummary {
            id: MessageId(row.get(0)?),
            // Parsed by the caller, which can return a typed error.
            status: MessageStatus::Pending,
            duplicate_of: row.get::<_, Option<i64>>(2)?.map(MessageId),
            size: non_negative(row.get(3)?),
            meta: NewMessage {
                channel: row.get(4)?,
                raw: Bytes::new(),
                received_at: Timestamp(row.get(5)?),
                peer: row.get(6)?,
                tls_identity: row.get(7)?,
                control_id: row.get(8)?,
                message_type: row.get(9)?,
                trigger_event: row.get(10)?,
                sending_application: row.get(11)?,
                sending_facility: row.get(12)?,
                receiving_application: row.get(13)?,
                receiving_facility: row.get(14)?,
                patient_id: row.get(15)?,
                charset: row.get(16)?,
                destinations: Vec::new(),
            },
        },
        status,
    ))
}

fn with_status((mut s, status): (MessageSummary, String)) -> Result<MessageSummary> {
    s.status = status
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("unknown message status {status:?}")))?;
    Ok(s)
}

pub(super) fn message(conn: &Connection, id: MessageId) -> Result<Option<MessageRecord>> {
    // One read transaction: message, deliveries and attempts from the same snapshot.
    let tx = conn
        .unchecked_transaction()
        .map_err(sql_err("begin read"))?;
    let found = tx
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM messages WHERE id = ?1"
        ))
        .and_then(|mut s| s.query_row([id.0], summary).optional())
        .map_err(sql_err("read message"))?;
    let Some(found) = found else {
        return Ok(None);
    };
    let mut summary = with_status(found)?;
    let raw: Vec<u8> = tx
        .prepare_cached("SELECT raw FROM message_bodies WHERE message_id = ?1")
        .and_then(|mut s| s.query_row([id.0], |r| r.get(0)))
        .map_err(sql_err("read message body"))?;
    summary.meta.raw = Bytes::from(raw);

    let mut deliveries = tx
        .prepare_cached(
            "SELECT id, destination, state, created_at, next_attempt_at, replay_of, superseded_by
             FROM deliveries WHERE message_id = ?1 ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([id.0], |r| {
                Ok((
                    DeliveryRecord {
                        id: DeliveryId(r.get(0)?),
                        destination: r.get(1)?,
                        state: DeliveryState::Pending,
                        created_at: Timestamp(r.get(3)?),
                        next_attempt_at: r.get::<_, Option<i64>>(4)?.map(Timestamp),
                        replay_of: r.get::<_, Option<i64>>(5)?.map(DeliveryId),
                        superseded_by: r.get::<_, Option<i64>>(6)?.map(DeliveryId),
                        attempts: Vec::new(),
                    },
                    r.get::<_, String>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_err("read deliveries"))?
        .into_iter()
        .map(|(mut d, state)| {
            d.state = state.parse().map_err(|_| corrupt_state(&state))?;
            Ok(d)
        })
        .collect::<Result<Vec<_>>>()?;
    summary.meta.destinations = deliveries
        .iter()
        .filter(|d| d.replay_of.is_none())
        .map(|d| d.destination.clone())
        .collect();

    let attempts = tx
        .prepare_cached(
            "SELECT a.delivery_id, a.at, a.outcome, a.ack_code, a.ack_text, a.ack_raw, a.error,
                    a.retry_at
             FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
             WHERE d.message_id = ?1 ORDER BY a.delivery_id, a.id",
        )
        .and_then(|mut s| {
            s.query_map([id.0], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<Vec<u8>>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_err("read attempts"))?;
    for (delivery_id, at, outcome, ack_code, ack_text, ack_raw, error, retry_at) in attempts {
        let result = match (outcome.as_str(), retry_at) {
            ("delivered", _) => AttemptResult::Delivered {
                ack_code,
                ack_text,
                ack_raw: ack_raw.map(Bytes::from),
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
                at: Timestamp(at),
                result,
            });
        }
    }
    Ok(Some(MessageRecord {
        summary,
        deliveries,
    }))
}

pub(super) fn search(conn: &Connection, q: &SearchQuery) -> Result<SearchPage> {
    let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM messages WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    let mut filter = |column: &str, op: &str, value: Value| {
        args.push(value);
        sql.push_str(&format!(" AND {column} {op} ?{}", args.len()));
    };
    if let Some(c) = &q.channel {
        filter("channel", "=", Value::Text(c.clone()));
    }
    if let Some(s) = q.status {
        filter("status", "=", Value::Text(s.as_str().to_owned()));
    }
    if let Some(t) = &q.message_type {
        filter("message_type", "=", Value::Text(t.clone()));
    }
    if let Some(t) = &q.trigger_event {
        filter("trigger_event", "=", Value::Text(t.clone()));
    }
    if let Some(c) = &q.control_id {
        filter("control_id", "=", Value::Text(c.clone()));
    }
    if let Some(p) = &q.patient_id {
        filter("patient_id", "=", Value::Text(p.clone()));
    }
    if let Some(t) = q.received_from {
        filter("received_at", ">=", Value::Integer(t.as_millis()));
    }
    if let Some(t) = q.received_until {
        filter("received_at", "<", Value::Integer(t.as_millis()));
    }
    if let Some(c) = &q.cursor {
        filter("id", "<", Value::Integer(c.before_id()?));
    }
    // One more than asked tells whether there is a next page.
    args.push(Value::Integer(q.limit as i64 + 1));
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));

    let rows = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(params_from_iter(args), summary)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_err("search messages"))?;
    let mut messages = rows
        .into_iter()
        .map(with_status)
        .collect::<Result<Vec<_>>>()?;
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

pub(super) fn list_quarantine(
    conn: &Connection,
    limit: usize,
    cursor: Option<&Cursor>,
) -> Result<QuarantinePage> {
    let before = match cursor {
        Some(c) => c.before_id()?,
        None => i64::MAX,
    };
    let mut entries = conn
        .prepare_cached(
            "SELECT id, channel, received_at, peer, tls_identity, reason, raw
             FROM quarantine WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![before, limit as i64 + 1], |r| {
                Ok(QuarantineRecord {
                    id: QuarantineId(r.get(0)?),
                    entry: NewQuarantine {
                        channel: r.get(1)?,
                        received_at: Timestamp(r.get(2)?),
                        peer: r.get(3)?,
                        tls_identity: r.get(4)?,
                        reason: r.get(5)?,
                        raw: Bytes::from(r.get::<_, Vec<u8>>(6)?),
                    },
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_err("list quarantine"))?;
    let next = page_end(&mut entries, limit, |e| e.id.0);
    Ok(QuarantinePage { entries, next })
}

pub(super) fn list_audit(conn: &Connection, limit: usize) -> Result<Vec<AuditRecord>> {
    let rows = conn
        .prepare_cached(
            "SELECT id, at, actor, address, action, message_ids, detail
             FROM audit ORDER BY id DESC LIMIT ?1",
        )
        .and_then(|mut s| {
            s.query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_err("list audit"))?;
    rows.into_iter()
        .map(|(id, at, actor, address, action, ids, detail)| {
            let message_ids = ids
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse()
                        .map(MessageId)
                        .map_err(|_| StoreError::Corrupt(format!("audit message ids {ids:?}")))
                })
                .collect::<Result<_>>()?;
            Ok(AuditRecord {
                id: AuditId(id),
                entry: AuditEntry {
                    at: Timestamp(at),
                    actor,
                    address,
                    action: action.as_str().into(),
                    message_ids,
                    detail,
                },
            })
        })
        .collect()
}

pub(super) fn queue_stats(conn: &Connection) -> Result<Vec<DestinationStats>> {
    conn.prepare_cached(
        "SELECT name,
             (SELECT COUNT(*) FROM deliveries
              WHERE destination = name AND state IN ('pending', 'failed')),
             (SELECT COUNT(*) FROM deliveries
              WHERE destination = name AND state = 'dead_letter' AND superseded_by IS NULL),
             (SELECT MIN(m.received_at) FROM deliveries d JOIN messages m ON m.id = d.message_id
              WHERE d.destination = name AND d.state IN ('pending', 'failed'))
         FROM destinations ORDER BY name",
    )
    .and_then(|mut s| {
        s.query_map([], |r| {
            Ok(DestinationStats {
                destination: r.get(0)?,
                pending: non_negative(r.get(1)?),
                dead_lettered: non_negative(r.get(2)?),
                oldest_pending_received_at: r.get::<_, Option<i64>>(3)?.map(Timestamp),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })
    .map_err(sql_err("queue stats"))
}

pub(super) fn leases(conn: &Connection) -> Result<Vec<Lease>> {
    conn.prepare_cached("SELECT destination, node_id, expires_at FROM leases ORDER BY destination")
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok(Lease {
                    destination: r.get(0)?,
                    node_id: r.get(1)?,
                    expires_at: Timestamp(r.get(2)?),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_err("list leases"))
}

/// Sizes and counts are stored as SQLite integers (i64) and are never negative.
fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
