//! Integration tests for causeway-mllp: a real server and client over
//! loopback sockets (port 0), plain TCP and TLS.

// Test helpers outside #[test] functions may unwrap too: a panic is a test failure.
#![allow(clippy::unwrap_used)]

mod plain;
mod support;
mod tls;
