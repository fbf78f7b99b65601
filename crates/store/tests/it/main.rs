//! Integration tests for causeway-store: the conformance suite and the model check,
//! against the SQLite backend on temporary files.

// Test helpers outside #[test] functions may unwrap too: a panic is a test failure.
#![allow(clippy::unwrap_used)]

mod model;
mod sqlite;
