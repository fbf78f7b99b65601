//! Search, view, replay and injection: the routes that touch messages. Each one writes
//! the audit log before it answers.

use std::time::SystemTime;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use causeway_store::{
    AttemptRecord, AttemptResult, AuditAction, Cursor, DeliveryId, DeliveryRecord, MessageId,
    MessageRecord, MessageStatus, MessageSummary, SearchQuery, Timestamp,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::error;

use super::auth::Actor;
use super::error::{ApiError, json_body};
use super::time::{self, TimeArg};
use super::{AppState, page_limit};
use crate::ingest::Stored;
use crate::render;

/// The exact bytes, base64 (standard alphabet, padded).
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// === search ===

/// `POST /api/messages/search`: every filter optional; all given must match.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Channel name.
    pub channel: Option<String>,
    /// `pending`, `failed`, `delivered`, `dead_letter`, `filtered` or `duplicate`.
    pub status: Option<String>,
    /// MSH-9: `ADT` or `ADT^A01`.
    #[serde(rename = "type")]
    pub message_type: Option<String>,
    /// MSH-10.
    pub control_id: Option<String>,
    /// The first PID-3.1.
    pub patient_id: Option<String>,
    /// Received at or after (RFC 3339 or Unix milliseconds).
    pub received_from: Option<TimeArg>,
    /// Received before (RFC 3339 or Unix milliseconds).
    pub received_until: Option<TimeArg>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// `next` of the previous page.
    pub cursor: Option<String>,
}

impl SearchRequest {
    /// The store query, and the names of the filters used (for the audit log).
    fn into_query(self) -> Result<(SearchQuery, Vec<&'static str>), ApiError> {
        // An empty string is "not set": forms send them for unused fields.
        let set = |v: Option<String>| v.filter(|s| !s.is_empty());
        let mut used = Vec::new();
        let mut note = |name: &'static str, present: bool| {
            if present {
                used.push(name);
            }
        };
        let channel = set(self.channel);
        note("channel", channel.is_some());
        let status = set(self.status)
            .map(|s| s.parse::<MessageStatus>())
            .transpose()?;
        note("status", status.is_some());
        let (message_type, trigger_event) = match set(self.message_type) {
            None => (None, None),
            Some(t) => {
                let mut parts = t.split('^');
                let code = parts.next().unwrap_or_default().to_owned();
                let trigger = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
                (Some(code).filter(|c| !c.is_empty()), trigger)
            }
        };
        note("type", message_type.is_some() || trigger_event.is_some());
        let control_id = set(self.control_id);
        note("control_id", control_id.is_some());
        let patient_id = set(self.patient_id);
        note("patient_id", patient_id.is_some());
        let stamp = |t: Option<TimeArg>, key: &str| {
            t.map(|t| t.to_timestamp())
                .transpose()
                .map_err(|e| ApiError::bad_request(format!("{key}: {e}")))
        };
        let received_from = stamp(self.received_from, "received_from")?;
        note("received_from", received_from.is_some());
        let received_until = stamp(self.received_until, "received_until")?;
        note("received_until", received_until.is_some());
        let cursor = set(self.cursor).map(|c| c.parse::<Cursor>()).transpose()?;
        let query = SearchQuery {
            channel,
            status,
            message_type,
            trigger_event,
            control_id,
            patient_id,
            received_from,
            received_until,
            limit: page_limit(self.limit),
            cursor,
        };
        Ok((query, used))
    }
}

/// `POST /api/messages/search`: summaries, newest first, one page at a time.
pub async fn search(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let request: SearchRequest = json_body(&body?)?;
    let (query, used) = request.into_query()?;
    let limit = query.limit;
    let next_page = query.cursor.is_some();
    let page = state.gateway.store.search(query).await?;
    let ids: Vec<MessageId> = page.messages.iter().map(|m| m.id).collect();
    // Filter names only: their values may identify a patient.
    let detail = format!(
        "filters [{}], limit {limit}, {} page, {} results",
        used.join(", "),
        if next_page { "next" } else { "first" },
        ids.len()
    );
    state
        .audit(&actor, AuditAction::Search, ids, detail)
        .await?;
    Ok(Json(json!({
        "messages": page.messages.iter().map(summary_json).collect::<Vec<_>>(),
        "next": page.next.map(|c| c.to_string()),
    })))
}

fn summary_json(s: &MessageSummary) -> Value {
    let m = &s.meta;
    let kind = if m.trigger_event.is_empty() {
        m.message_type.clone()
    } else {
        format!("{}^{}", m.message_type, m.trigger_event)
    };
    json!({
        "id": s.id.0,
        "channel": m.channel,
        "status": s.status.as_str(),
        "duplicate_of": s.duplicate_of.map(|d| d.0),
        "size": s.size,
        "received_at": time::format(m.received_at),
        "peer": m.peer,
        "tls_identity": m.tls_identity,
        "control_id": m.control_id,
        "type": kind,
        "sending_application": m.sending_application,
        "sending_facility": m.sending_facility,
        "receiving_application": m.receiving_application,
        "receiving_facility": m.receiving_facility,
        "patient_id": m.patient_id,
        "charset": m.charset,
    })
}

// === view ===

fn message_id(path: Result<Path<String>, PathRejection>) -> Result<MessageId, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(MessageId)
        .ok_or_else(|| ApiError::bad_request(format!("{text:?} is not a message id")))
}

fn name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(n)| n)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// `GET /api/messages/{id}`: metadata, the bytes, the parsed tree and every delivery.
pub async fn view(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = message_id(id)?;
    let record = state
        .gateway
        .store
        .message(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no message {id}")))?;
    state
        .audit(&actor, AuditAction::View, vec![id], String::new())
        .await?;
    Ok(Json(record_json(&record)))
}

fn record_json(record: &MessageRecord) -> Value {
    let raw = &record.summary.meta.raw;
    let mut out = summary_json(&record.summary);
    out["routed_to"] = json!(record.summary.meta.destinations);
    out["raw"] = String::from_utf8_lossy(raw).into();
    out["raw_base64"] = base64(raw).into();
    match render::message_json(raw) {
        Ok(tree) => out["parsed"] = tree,
        Err(e) => {
            out["parsed"] = Value::Null;
            out["parse_error"] = e.to_string().into();
        }
    }
    out["deliveries"] = record.deliveries.iter().map(delivery_json).collect();
    out
}

fn delivery_json(d: &DeliveryRecord) -> Value {
    json!({
        "id": d.id.0,
        "destination": d.destination,
        "state": d.state.as_str(),
        "created_at": time::format(d.created_at),
        "next_attempt_at": d.next_attempt_at.map(time::format),
        "replay_of": d.replay_of.map(|r| r.0),
        "superseded_by": d.superseded_by.map(|r| r.0),
        "attempts": d.attempts.iter().map(attempt_json).collect::<Vec<_>>(),
    })
}

fn attempt_json(a: &AttemptRecord) -> Value {
    let at = time::format(a.at);
    match &a.result {
        AttemptResult::Delivered {
            ack_code,
            ack_text,
            ack_raw,
        } => json!({
            "at": at,
            "result": "delivered",
            "ack_code": ack_code,
            "ack_text": ack_text,
            "ack": ack_raw.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
        }),
        AttemptResult::Failed { error, retry_at } => json!({
            "at": at,
            "result": "failed",
            "error": error,
            "retry_at": time::format(*retry_at),
        }),
        AttemptResult::DeadLettered { error } => json!({
            "at": at,
            "result": "dead_lettered",
            "error": error,
        }),
        other => json!({ "at": at, "result": "other", "detail": format!("{other:?}") }),
    }
}

// === replay ===

/// `POST /api/messages/{id}/replay` body (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Only this destination (default: every destination it was routed to).
    pub destination: Option<String>,
}

/// At most this many delivery ids are spelled out in an audit detail.
const AUDIT_IDS: usize = 50;

fn id_list(ids: &[DeliveryId]) -> String {
    let shown: Vec<String> = ids
        .iter()
        .take(AUDIT_IDS)
        .map(ToString::to_string)
        .collect();
    let more = ids.len().saturating_sub(AUDIT_IDS);
    if more > 0 {
        format!("[{}, and {more} more]", shown.join(","))
    } else {
        format!("[{}]", shown.join(","))
    }
}

/// The error for an action that was carried out but could not be audited: the client
/// must not repeat it.
fn done_but_unaudited(done: &str, e: &ApiError) -> ApiError {
    error!(done, "action carried out but not audited");
    ApiError::new(
        e.status(),
        format!("{done}, but the audit log cannot be written; do not repeat the request"),
    )
}

/// `POST /api/messages/{id}/replay`: queues the message again and wakes the workers.
pub async fn replay(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = message_id(id)?;
    let request: ReplayRequest = json_body(&body?)?;
    let destination = request.destination.filter(|d| !d.is_empty());
    if let Some(d) = &destination
        && !state.gateway.wakers.contains_key(d)
    {
        return Err(ApiError::bad_request(format!(
            "destination {d:?} is not configured"
        )));
    }
    let store = &state.gateway.store;
    let record = store
        .message(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no message {id}")))?;
    let now = Timestamp::from(SystemTime::now());
    let deliveries = store.replay(id, destination.as_deref(), now).await?;
    let woken: Vec<&String> = match &destination {
        Some(d) => vec![d],
        None => record.summary.meta.destinations.iter().collect(),
    };
    for d in &woken {
        if let Some(wake) = state.gateway.wakers.get(*d) {
            wake.notify_one();
        }
    }
    let detail = format!(
        "to {}: new deliveries {}",
        destination.as_deref().unwrap_or("every routed destination"),
        id_list(&deliveries)
    );
    state
        .audit(&actor, AuditAction::Replay, vec![id], detail)
        .await
        .map_err(|e| done_but_unaudited(&format!("message {id} was replayed"), &e))?;
    Ok(Json(json!({
        "message_id": id.0,
        "deliveries": deliveries.iter().map(|d| d.0).collect::<Vec<_>>(),
    })))
}

/// `POST /api/destinations/{name}/replay-dead-letters`: queues every dead letter of the
/// destination again, in order.
pub async fn replay_dead_letters(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let name = self::name(name)?;
    let Some(wake) = state.gateway.wakers.get(&name) else {
        return Err(ApiError::not_found(format!("no destination {name:?}")));
    };
    let now = Timestamp::from(SystemTime::now());
    let replayed = state.gateway.store.replay_dead_letters(&name, now).await?;
    if !replayed.is_empty() {
        wake.notify_one();
    }
    let deliveries: Vec<_> = replayed.iter().map(|r| r.delivery).collect();
    // Every replayed message is named in the audit record, however many there are.
    let messages: Vec<_> = replayed.iter().map(|r| r.message).collect();
    let detail = format!(
        "dead letters of {name}: {} new deliveries {}",
        deliveries.len(),
        id_list(&deliveries)
    );
    state
        .audit(&actor, AuditAction::Replay, messages.clone(), detail)
        .await
        .map_err(|e| {
            done_but_unaudited(&format!("the dead letters of {name} were replayed"), &e)
        })?;
    Ok(Json(json!({
        "destination": name,
        "deliveries": deliveries.iter().map(|d| d.0).collect::<Vec<_>>(),
        "messages": messages.iter().map(|m| m.0).collect::<Vec<_>>(),
    })))
}

// === inject ===

/// `POST /api/channels/{name}/messages` as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectJson {
    /// The message, segments separated by `\r`.
    message: String,
}

/// The message in an inject request: the body itself (`application/hl7-v2`,
/// `text/plain`, or no content type) or the `message` of a JSON body.
fn injected_message(headers: &HeaderMap, body: Bytes) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| {
            v.to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let raw = match content_type.as_str() {
        "application/json" => {
            let InjectJson { message } = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?;
            Bytes::from(message.into_bytes())
        }
        ""
        | "application/hl7-v2"
        | "x-application/hl7-v2+er7"
        | "text/plain"
        | "application/octet-stream" => body,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "content type {other:?}: send application/hl7-v2, text/plain or application/json"
                ),
            ));
        }
    };
    if raw.is_empty() {
        return Err(ApiError::bad_request("empty message"));
    }
    Ok(raw)
}

/// `POST /api/channels/{name}/messages`: stores a message as if the channel had received
/// it (routed, stored durably, delivered), with the peer `api:<actor>`.
pub async fn inject(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let name = self::name(name)?;
    let Some(channel) = state.gateway.channels.get(&name) else {
        return Err(ApiError::not_found(format!("no channel {name:?}")));
    };
    let raw = injected_message(&headers, body?)?;
    let max = state
        .gateway
        .config
        .channels
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.source.as_ref())
        .map_or(16 << 20, |s| s.max_message_size.0);
    if raw.len() as u64 > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} bytes: channel {name} takes messages up to {max} bytes",
                raw.len()
            ),
        ));
    }
    let size = raw.len();
    match channel
        .store(raw, format!("api:{}", actor.name), None)
        .await
    {
        Stored::Ok {
            id,
            duplicate_of,
            destinations,
        } => {
            let detail = format!(
                "channel {name}: stored, {size} bytes, {} destinations{}",
                destinations.len(),
                if duplicate_of.is_some() {
                    ", a duplicate"
                } else {
                    ""
                }
            );
            state
                .audit(&actor, AuditAction::Inject, vec![MessageId(id)], detail)
                .await
                .map_err(|e| done_but_unaudited(&format!("message {id} was stored"), &e))?;
            let location = format!("/api/messages/{id}");
            Ok((
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(json!({
                    "id": id,
                    "duplicate_of": duplicate_of,
                    "destinations": destinations,
                })),
            )
                .into_response())
        }
        Stored::NotHl7(e) => {
            let detail = format!("channel {name}: not HL7, {size} bytes quarantined");
            state
                .audit(&actor, AuditAction::Inject, Vec::new(), detail)
                .await?;
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("not an HL7 message (quarantined): {e}"),
            ))
        }
        Stored::Refused { reason, .. } => {
            let detail = format!("channel {name}: refused, {size} bytes quarantined");
            state
                .audit(&actor, AuditAction::Inject, Vec::new(), detail)
                .await?;
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("message refused (quarantined): {reason}"),
            ))
        }
        Stored::Failed(reason) => {
            // Nothing was stored; the audit write will likely fail the same way, which
            // changes nothing for the client.
            let detail = format!("channel {name}: not stored, the store failed");
            let _ = state
                .audit(&actor, AuditAction::Inject, Vec::new(), detail)
                .await;
            Err(ApiError::unavailable(format!(
                "not stored, send it again later: {reason}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_request_names_filters_not_values() {
        let req: SearchRequest = serde_json::from_str(
            r#"{"patient_id":"MRN123","type":"ADT^A01","channel":"","received_from":0}"#,
        )
        .unwrap();
        let (q, used) = req.into_query().unwrap();
        assert_eq!(used, ["type", "patient_id", "received_from"]);
        assert_eq!(q.message_type.as_deref(), Some("ADT"));
        assert_eq!(q.trigger_event.as_deref(), Some("A01"));
        assert_eq!(q.channel, None);
        assert_eq!(q.limit, 100);
        let bad: Result<SearchRequest, _> = serde_json::from_str(r#"{"patient":"x"}"#);
        assert!(bad.is_err());
        let req: SearchRequest = serde_json::from_str(r#"{"status":"lost"}"#).unwrap();
        assert_eq!(
            req.into_query().unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        let req: SearchRequest = serde_json::from_str(r#"{"cursor":"zz"}"#).unwrap();
        assert_eq!(
            req.into_query().unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn inject_bodies() {
        let mut h = HeaderMap::new();
        let raw = Bytes::from_static(b"MSH|^~\\&|A\r");
        assert_eq!(injected_message(&h, raw.clone()).unwrap(), raw);
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        let json = Bytes::from_static(br#"{"message":"MSH|^~\\&|A\r"}"#);
        assert_eq!(injected_message(&h, json).unwrap(), raw);
        assert!(injected_message(&h, Bytes::from_static(b"{")).is_err());
        h.insert(header::CONTENT_TYPE, "image/png".parse().unwrap());
        assert_eq!(
            injected_message(&h, raw).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
