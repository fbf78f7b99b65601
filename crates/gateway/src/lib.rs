//! Causeway's gateway: `causeway serve` as a library.
//!
//! A channel is one MLLP listener, routing filters and one or more destinations. A message
//! is parsed, routed, stored durably ([`causeway_store::Store::ingest`] returns only after
//! the commit is synced), and only then acknowledged. One worker per destination delivers
//! its queue in arrival order, with retries, dead-lettering and replay.
//!
//! What it is not: a transformation engine. Messages are delivered exactly as received.
//!
//! # Layout
//! - [`config`]: `causeway.toml`, its defaults and checks (the configuration reference).
//! - [`ingest`]: parse, route, store, acknowledge.
//! - [`route`]: destination filters.
//! - [`deliver`]: the delivery workers and the MLLP, HTTP and file destinations.
//! - [`doctor`]: `causeway doctor` for a configured destination.
//! - [`metrics`]: Prometheus metrics.
//! - [`render`]: messages as JSON.
//! - [`waiters`]: `ack = "after_delivery"` bookkeeping.
//! - [`gateway`]: starting, running and stopping all of it.
//! - [`admin`]: the admin API (health, metrics, search, view, replay, inject, audit).
//! - [`link`]: the edge/hub link.

pub mod admin;
pub mod config;
pub mod deliver;
pub mod doctor;
pub mod gateway;
pub mod ingest;
pub mod link;
pub mod metrics;
pub mod render;
pub mod route;
pub mod waiters;

pub use config::Config;
pub use gateway::{Gateway, GatewayError};
