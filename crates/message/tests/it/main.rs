//! Integration tests of the message core.

// Test helpers outside #[test] functions may unwrap too: a panic is a test failure.
#![allow(clippy::unwrap_used)]

mod corpus;
mod differential;
mod fuzz_regressions;
