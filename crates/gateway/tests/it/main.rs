//! Integration tests for causeway-gateway: a real gateway in process (MLLP listener,
//! SQLite store in a temporary directory, file destination), driven over MLLP and HTTP.

// Test helpers outside #[test] functions may unwrap too: a panic is a test failure.
#![allow(clippy::unwrap_used)]

mod ack_policy;
mod admin;
mod delivery;
mod doctor;
mod http;
mod ingest;
mod support;
