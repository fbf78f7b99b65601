//! `POST /api/doctor`: `causeway doctor` against a configured MLLP destination, run from
//! inside the gateway (a pod in a cloud subnet is where the network problem is).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use causeway_doctor::{DEFAULT_LADDER, DoctorSettings};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use super::error::ApiError;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoctorRequest {
    /// The MLLP destination to check.
    pub destination: String,
    /// Largest message of the size ladder in bytes (default 1 MiB; 0 skips the ladder).
    pub max_size: Option<usize>,
    /// Round trips for the latency check (default 5, at most 50).
    pub samples: Option<usize>,
    /// Longest wait per step in milliseconds (default 5000, at most 60000).
    pub timeout_ms: Option<u64>,
}

/// Runs the checks and returns the report (200 whatever the verdict: the verdict is in it).
pub async fn doctor(
    State(state): State<AppState>,
    Json(req): Json<DoctorRequest>,
) -> Result<Json<Value>, ApiError> {
    let (target, tls) = crate::doctor::target(&state.gateway.config, &req.destination)
        .map_err(ApiError::bad_request)?;
    let mut settings = DoctorSettings::default();
    settings.timeout = Duration::from_millis(req.timeout_ms.unwrap_or(5000).clamp(100, 60_000));
    let max = req.max_size.unwrap_or(1024 * 1024);
    settings.ladder = DEFAULT_LADDER
        .iter()
        .copied()
        .filter(|s| *s <= max)
        .collect();
    settings.latency_samples = req.samples.unwrap_or(5).min(50);
    settings.tls = tls;
    let report = causeway_doctor::run(&target, settings).await;
    serde_json::to_value(&report)
        .map(Json)
        .map_err(|e| ApiError::unavailable(format!("cannot encode the report: {e}")))
}
