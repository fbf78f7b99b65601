//! Probes, metrics, channels, quarantine and the audit log listing.

use std::time::{Duration, Instant, SystemTime};

use axum::Extension;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use causeway_store::{AuditAction, Cursor, DestinationStats, Timestamp};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::warn;

use super::auth::Actor;
use super::error::ApiError;
use super::{AppState, page_limit, time};
use crate::config::{AckPolicy, DestinationKind, OnFailure};
use crate::metrics::{AckLabel, ChannelLabel, DestinationLabel};

/// How long `/readyz` waits for the store before calling it unhealthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a store health result is reused by `/readyz`.
const HEALTH_CACHE: Duration = Duration::from_secs(1);

/// The OpenMetrics text format, which Prometheus asks for and accepts.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /healthz`: the process is alive and serving HTTP.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when every channel with a source listens and the store can commit;
/// otherwise 503 with the reasons. A channel without `[channel.source]` (fed by the link or
/// the admin API only) has no listener to wait for.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let gateway = &state.gateway;
    let mut reasons = Vec::new();
    if gateway.stopping.is_cancelled() {
        reasons.push("the gateway is stopping".to_owned());
    }
    for channel in gateway
        .config
        .channels
        .iter()
        .filter(|c| c.source.is_some())
    {
        if !gateway.listening.contains_key(&channel.name) {
            reasons.push(format!("channel {} is not listening", channel.name));
        }
    }
    {
        // std Mutex: held for a copy, never across an await.
        let failed = gateway
            .listener_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (channel, why) in failed.iter() {
            reasons.push(format!("channel {channel} stopped listening: {why}"));
        }
    }
    if let Err(e) = store_health(&state).await {
        reasons.push(format!("store: {e}"));
    }
    if reasons.is_empty() {
        Json(json!({ "ready": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "error": reasons.join("; "), "reasons": reasons })),
        )
            .into_response()
    }
}

/// The store's health, checked at most once per [`HEALTH_CACHE`]: a check commits a
/// write, and `/readyz` needs no token, so probes must not be able to flood the writer.
async fn store_health(state: &AppState) -> Result<(), String> {
    // std Mutex: held for a copy, never across an await.
    let cached = match state.last_health.lock() {
        Ok(last) => last.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    if let Some((at, result)) = cached
        && at.elapsed() < HEALTH_CACHE
    {
        return result;
    }
    let result = match tokio::time::timeout(HEALTH_TIMEOUT, state.gateway.store.health()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {HEALTH_TIMEOUT:?}")),
    };
    let entry = Some((Instant::now(), result.clone()));
    match state.last_health.lock() {
        Ok(mut last) => *last = entry,
        Err(poisoned) => *poisoned.into_inner() = entry,
    }
    result
}

/// `GET /metrics`: Prometheus exposition (OpenMetrics text).
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &state.registry).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response())
}

/// `GET /api/link`: the edge/hub link: role, each peer's state, round trip, bytes and
/// messages, and the backlog of each link destination.
pub async fn link(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let gateway = &state.gateway;
    let Some(link) = &gateway.link else {
        return Err(ApiError::not_found("no [link] is configured".to_owned()));
    };
    let mut body = link.status_json();
    let stats = gateway.store.queue_stats().await.unwrap_or_default();
    let backlog: Vec<Value> = gateway
        .config
        .channels
        .iter()
        .flat_map(|c| c.destinations.iter().map(move |d| (c, d)))
        .filter_map(|(c, d)| {
            let DestinationKind::Link(l) = &d.kind else {
                return None;
            };
            let s = stats.iter().find(|s| s.destination == d.name);
            Some(json!({
                "channel": c.name,
                "destination": d.name,
                "peer": l.edge.as_deref().unwrap_or(crate::link::HUB),
                "remote_channel": l.channel.as_deref().unwrap_or(&c.name),
                "pending": s.map_or(0, |s| s.pending),
                "dead_lettered": s.map_or(0, |s| s.dead_lettered),
            }))
        })
        .collect();
    body["backlog"] = Value::Array(backlog);
    Ok(Json(body))
}

/// `GET /api/channels`: each channel's configuration (no secrets) and live counters.
pub async fn channels(State(state): State<AppState>) -> Json<Value> {
    let gateway = &state.gateway;
    let metrics = &gateway.metrics;
    let (stats, store_error) = match gateway.store.queue_stats().await {
        Ok(stats) => (stats, None),
        Err(e) => {
            warn!(error = %e, "admin API: queue statistics unavailable");
            (Vec::new(), Some(e.to_string()))
        }
    };
    let now = Timestamp::from(SystemTime::now());
    let channels: Vec<Value> = gateway
        .config
        .channels
        .iter()
        .map(|c| {
            let ch = ChannelLabel {
                channel: c.name.clone(),
            };
            let mut acked = serde_json::Map::new();
            for code in ["AA", "AE", "AR", "CA", "CE", "CR", "none"] {
                let label = AckLabel {
                    channel: c.name.clone(),
                    code: code.to_owned(),
                };
                if let Some(n) = metrics.acked.get(&label) {
                    acked.insert(code.to_owned(), n.get().into());
                }
            }
            let destinations: Vec<Value> = c
                .destinations
                .iter()
                .map(|d| {
                    let (kind, target) = match &d.kind {
                        DestinationKind::Mllp(m) => ("mllp", m.to.clone()),
                        DestinationKind::Http(h) => ("http", redact_url(&h.url)),
                        DestinationKind::File(f) => ("file", f.directory.display().to_string()),
                        DestinationKind::Link(l) => (
                            "link",
                            format!(
                                "{}/{}",
                                l.edge.as_deref().unwrap_or(crate::link::HUB),
                                l.channel.as_deref().unwrap_or(&c.name)
                            ),
                        ),
                    };
                    let label = DestinationLabel {
                        channel: c.name.clone(),
                        destination: d.name.clone(),
                    };
                    let queue = stats
                        .iter()
                        .find(|s| s.destination == d.name)
                        .map_or_else(empty_queue, |s| queue_json(s, now));
                    json!({
                        "name": d.name,
                        "type": kind,
                        "target": target,
                        "on_failure": match d.on_failure {
                            OnFailure::Block => "block",
                            OnFailure::DeadLetter => "dead_letter",
                        },
                        "max_attempts": d.max_attempts,
                        "queue": queue,
                        "delivered": count(&metrics.delivered, &label),
                        "failed_attempts": count(&metrics.failed, &label),
                        "dead_lettered": count(&metrics.dead_lettered, &label),
                    })
                })
                .collect();
            json!({
                "name": c.name,
                "listen": gateway.listening.get(&c.name).map(ToString::to_string),
                "tls": c.source.as_ref().is_some_and(|s| s.tls.is_some()),
                "ack": match c.ack {
                    AckPolicy::AfterStore => "after_store",
                    AckPolicy::AfterDelivery => "after_delivery",
                    AckPolicy::EndToEnd => "end_to_end",
                },
                "received": count(&metrics.received, &ch),
                "received_bytes": count(&metrics.received_bytes, &ch),
                "acked": acked,
                "duplicates": count(&metrics.duplicates, &ch),
                "filtered": count(&metrics.filtered, &ch),
                "quarantined": count(&metrics.quarantined, &ch),
                "store_failures": count(&metrics.store_failures, &ch),
                "destinations": destinations,
            })
        })
        .collect();
    let mut body = json!({ "channels": channels });
    if let Some(e) = store_error {
        body["store_error"] = e.into();
    }
    Json(body)
}

/// A counter's value without creating the series.
fn count<L>(family: &Family<L, Counter>, label: &L) -> u64
where
    L: Clone + std::hash::Hash + Eq,
{
    family.get(label).map_or(0, |c| c.get())
}

fn empty_queue() -> Value {
    json!({ "pending": 0, "dead_letters": 0, "oldest_pending_received_at": null, "oldest_pending_seconds": 0 })
}

fn queue_json(s: &DestinationStats, now: Timestamp) -> Value {
    json!({
        "pending": s.pending,
        "dead_letters": s.dead_lettered,
        "oldest_pending_received_at": s.oldest_pending_received_at.map(time::format),
        "oldest_pending_seconds": s
            .oldest_pending_received_at
            .map_or(0, |t| (now.as_millis() - t.as_millis()).max(0) / 1000),
    })
}

/// An HTTP destination's URL without what may hold credentials: user info, query and
/// fragment.
fn redact_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

/// `?limit=&cursor=` of the paged listings.
#[derive(Debug, Default, Deserialize)]
pub struct PageParams {
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// From the previous page's `next`.
    pub cursor: Option<String>,
}

/// `GET /api/quarantine`: frames that were not HL7, newest first, with their bytes.
/// Audited as a view: the bytes may hold patient data.
pub async fn quarantine(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let cursor = params
        .cursor
        .as_deref()
        .map(str::parse::<Cursor>)
        .transpose()?;
    let limit = page_limit(params.limit);
    let page = state.gateway.store.list_quarantine(limit, cursor).await?;
    let ids: Vec<String> = page.entries.iter().map(|e| e.id.to_string()).collect();
    state
        .audit(
            &actor,
            AuditAction::View,
            Vec::new(),
            format!("quarantine: {} frames [{}]", ids.len(), ids.join(",")),
        )
        .await?;
    let entries: Vec<Value> = page
        .entries
        .iter()
        .map(|q| {
            let e = &q.entry;
            json!({
                "id": q.id.0,
                "channel": e.channel,
                "received_at": time::format(e.received_at),
                "peer": e.peer,
                "tls_identity": e.tls_identity,
                "reason": e.reason,
                "size": e.raw.len(),
                "raw": String::from_utf8_lossy(&e.raw),
                "raw_base64": super::messages::base64(&e.raw),
            })
        })
        .collect();
    Ok(Json(json!({
        "entries": entries,
        "next": page.next.map(|c| c.to_string()),
    })))
}

/// `?limit=` of the audit listing.
#[derive(Debug, Default, Deserialize)]
pub struct AuditParams {
    /// How many entries (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// `GET /api/audit`: the newest audit entries, newest first.
pub async fn audit(
    State(state): State<AppState>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let records = state
        .gateway
        .store
        .list_audit(page_limit(params.limit))
        .await?;
    let entries: Vec<Value> = records
        .iter()
        .map(|r| {
            let e = &r.entry;
            json!({
                "id": r.id.0,
                "at": time::format(e.at),
                "actor": e.actor,
                "address": e.address,
                "action": e.action.as_str(),
                "message_ids": e.message_ids.iter().map(|m| m.0).collect::<Vec<_>>(),
                "detail": e.detail,
            })
        })
        .collect();
    Ok(Json(json!({ "entries": entries })))
}

/// `GET /api/leases`: which node delivers which destination. Every lease in the store,
/// expired ones included (a node that stopped without releasing), with this node's id.
pub async fn leases(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let gateway = &state.gateway;
    let leases = gateway.store.leases().await?;
    let now = Timestamp::from(SystemTime::now());
    let leases: Vec<Value> = leases
        .iter()
        .map(|l| {
            json!({
                "destination": l.destination,
                "node_id": l.node_id,
                "expires_at": time::format(l.expires_at),
                "expired": l.expires_at <= now,
                "this_node": l.node_id == gateway.node_id,
            })
        })
        .collect();
    Ok(Json(json!({
        "node_id": gateway.node_id,
        "lease_timeout_ms": gateway.config.store.lease_timeout.0.as_millis() as u64,
        "leases": leases,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials() {
        assert_eq!(
            redact_url("https://user:pw@api.example.com:8443/hl7?key=s3cret#x"),
            "https://api.example.com:8443/hl7"
        );
        assert_eq!(redact_url("http://h/p"), "http://h/p");
        assert_eq!(redact_url("http://a@b"), "http://b");
        assert_eq!(redact_url("weird?token=1"), "weird");
    }
}
