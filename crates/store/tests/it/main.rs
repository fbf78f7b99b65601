//! Integration tests for causeway-store: the conformance suite and the model check,
//! against the SQLite backend on temporary files and the PostgreSQL backend in a
//! schema of its own per test (`DATABASE_URL`).

// Test helpers outside #[test] functions may unwrap too: a panic is a test failure.
#![allow(clippy::unwrap_used)]

mod model;
mod postgres;
mod sqlite;
