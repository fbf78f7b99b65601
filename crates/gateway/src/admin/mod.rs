//! The admin API of `causeway serve`: health, readiness, metrics, and the operator's view
//! of the journal (search, view, replay, inject), over HTTP/1.1 on `[admin] bind`.
//!
//! What it is not: a user interface, or a way to change the configuration. It reads the
//! store and the live counters, queues replays, and injects messages through the same
//! ingest path an MLLP connection uses.
//!
//! Access: `/healthz` and `/readyz` are open (probes carry no token). Everything else
//! requires `Authorization: Bearer <token>` when `[admin] token` is set; without a token
//! the API only binds loopback (the configuration refuses anything else) and requests are
//! recorded as the actor `local`. Every search, view, replay and inject is written to the
//! store's audit log *before* the response goes out, and the request fails with 503 when
//! that write fails: nobody reads a message without a trace. Audit details name the
//! filters used, never their values, so patient identifiers stay out of the audit log;
//! searching is a POST for the same reason (no identifiers in URLs or access logs).
//!
//! Bounds: request bodies (64 KiB, 16 MiB for an injected message), requests in flight
//! ([`MAX_IN_FLIGHT`]), time per request ([`REQUEST_TIMEOUT`]), page sizes
//! ([`MAX_PAGE`]). Errors are JSON `{"error": "..."}`; bad input never panics.
//!
//! The routes are documented for clients in `docs/openapi.yaml` (a test keeps the two in
//! step).
//!
//! # Layout
//! - this file: [`serve`], the router, request logging and limits.
//! - [`auth`]: the bearer token and the actor it names.
//! - [`error`]: [`ApiError`](error::ApiError) and its JSON body.
//! - [`status`]: probes, metrics, channels, quarantine and the audit log listing.
//! - [`messages`]: search, view, replay and injection.
//! - [`time`]: RFC 3339 timestamps in and out.

pub mod auth;
pub mod doctor;
pub mod error;
pub mod listener;
pub mod messages;
pub mod status;
pub mod time;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use causeway_store::{AuditAction, AuditEntry, MessageId, Timestamp};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

use self::auth::{Actor, Token};
use self::error::ApiError;
use crate::gateway::{Gateway, GatewayError};

/// Largest JSON request body (search filters, replay options).
pub const MAX_JSON_BODY: usize = 64 << 10;
/// Largest injected message. A channel's own `max_message_size` applies too.
pub const MAX_INJECT_BODY: usize = 16 << 20;
/// Time allowed for one request, body included; then 503. An injected message that was
/// already stored when the time ran out stays stored (and is delivered).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests handled at once; more wait (within [`REQUEST_TIMEOUT`]) for a turn.
pub const MAX_IN_FLIGHT: usize = 64;
/// Largest page of a search or listing, whatever the request asks.
pub const MAX_PAGE: usize = 1000;
/// Page size when the request names none.
pub const DEFAULT_PAGE: usize = 100;

/// A requested page size: [`DEFAULT_PAGE`] when absent, within `1..=MAX_PAGE`.
pub fn page_limit(requested: Option<usize>) -> usize {
    requested.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

/// See [`AppState`].
#[derive(Debug)]
pub struct Inner {
    /// The running gateway.
    pub gateway: Arc<Gateway>,
    /// The resolved token (`None`: loopback without a token).
    pub token: Option<Token>,
    /// The gateway's metrics, registered once.
    pub registry: Registry,
    /// Bounds requests in flight.
    pub in_flight: Semaphore,
    /// The last store health check and when it was made (see [`status::readyz`]).
    pub last_health: std::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// The state for `gateway`; resolves the admin token (`${ENV}`) once.
    pub fn new(gateway: Arc<Gateway>) -> Result<AppState, GatewayError> {
        let admin = &gateway.config.admin;
        let token = match &admin.token {
            Some(secret) => {
                let value = secret
                    .resolve("admin.token")
                    .map_err(|e| GatewayError::Setup {
                        what: "admin.token".to_owned(),
                        reason: e.to_string(),
                    })?;
                Some(Token::new(&value, &admin.token_name))
            }
            None => None,
        };
        let mut registry = Registry::default();
        gateway.metrics.register(&mut registry);
        registry
            .sub_registry_with_prefix("causeway")
            .register_collector(Box::new(crate::metrics::StoreCollector::new(
                gateway.store.clone(),
            )));
        if let Some(link) = &gateway.link {
            link.metrics.register(&mut registry);
        }
        Ok(AppState(Arc::new(Inner {
            gateway,
            token,
            registry,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            last_health: std::sync::Mutex::new(None),
        })))
    }

    /// Appends to the audit log. The caller answers 503 when this fails: no unaudited
    /// access. `detail` must not hold patient identifiers.
    pub async fn audit(
        &self,
        actor: &Actor,
        action: AuditAction,
        message_ids: Vec<MessageId>,
        detail: String,
    ) -> Result<(), ApiError> {
        let entry = AuditEntry {
            at: Timestamp::from(SystemTime::now()),
            actor: actor.name.clone(),
            address: actor.address.to_string(),
            action,
            message_ids,
            detail,
        };
        self.gateway.store.audit(entry).await.map_err(|e| {
            error!(actor = %actor.name, error = %e, "audit log write failed; refusing the request");
            ApiError::unavailable(format!("the audit log cannot be written: {e}"))
        })?;
        Ok(())
    }
}

/// Every route of the API, as `(method, path)`; `docs/openapi.yaml` must describe each.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/channels"),
    ("post", "/api/channels/{name}/messages"),
    ("post", "/api/messages/search"),
    ("get", "/api/messages/{id}"),
    ("post", "/api/messages/{id}/replay"),
    ("post", "/api/destinations/{name}/replay-dead-letters"),
    ("get", "/api/quarantine"),
    ("get", "/api/audit"),
    ("post", "/api/doctor"),
    ("get", "/api/leases"),
    ("get", "/api/link"),
];

/// The whole API.
pub fn router(state: AppState) -> Router {
    let open = Router::new()
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz));
    let guarded = Router::new()
        .route("/metrics", get(status::metrics))
        .route("/api/channels", get(status::channels))
        .route(
            "/api/channels/{name}/messages",
            post(messages::inject).layer(DefaultBodyLimit::max(MAX_INJECT_BODY)),
        )
        .route("/api/messages/search", post(messages::search))
        .route("/api/messages/{id}", get(messages::view))
        .route("/api/messages/{id}/replay", post(messages::replay))
        .route(
            "/api/destinations/{name}/replay-dead-letters",
            post(messages::replay_dead_letters),
        )
        .route("/api/quarantine", get(status::quarantine))
        .route("/api/audit", get(status::audit))
        .route("/api/doctor", post(doctor::doctor))
        .route("/api/leases", get(status::leases))
        .route("/api/link", get(status::link))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    open.merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Checks the token and builds the API for `gateway`; the returned future serves
/// `listener` until `gateway.stopping` is cancelled, then finishes the requests in hand.
pub fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
) -> Result<impl Future<Output = ()> + Send + 'static, GatewayError> {
    let state = AppState::new(gateway.clone())?;
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let limits = &gateway.config.admin;
    // `tap_io` only so that handlers get `ConnectInfo<SocketAddr>`, which axum provides
    // for a tapped listener of any kind.
    let listener = axum::serve::ListenerExt::tap_io(
        listener::BoundedListener::new(listener, limits.max_connections, limits.idle_timeout.0),
        |_| {},
    );
    let addr = axum::serve::Listener::local_addr(&listener)
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    Ok(async move {
        info!(%addr, token = gateway.config.admin.token.is_some(), "admin API listening");
        let stopping = gateway.stopping.clone();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopping.cancelled().await })
            .await;
        if let Err(e) = served {
            error!(error = %e, "admin API failed");
        }
    })
}

/// Outermost layer: one log line per request (never bodies or query strings), the
/// in-flight bound and the time limit.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "-".to_owned(), |m| m.as_str().to_owned());
    let response = tokio::time::timeout(REQUEST_TIMEOUT, async {
        // The semaphore is never closed, so `acquire` only fails if it were.
        let Ok(_permit) = state.in_flight.acquire().await else {
            return ApiError::unavailable("the admin API is shutting down").into_response();
        };
        next.run(req).await
    })
    .await
    .unwrap_or_else(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request took longer than {REQUEST_TIMEOUT:?}"),
        )
        .into_response()
    });
    let status = response.status().as_u16();
    let actor = response
        .extensions()
        .get::<Actor>()
        .map_or("-", |a| a.name.as_str());
    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if response.status().is_server_error() {
        warn!(%method, %route, %path, status, latency_us, actor, %client, "admin request");
    } else {
        info!(%method, %route, %path, status, latency_us, actor, %client, "admin request");
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}
