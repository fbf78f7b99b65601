//! Integration tests of the `causeway` binary: each runs the real executable.

// Test helpers outside #[test] functions may unwrap too: a panic is a test failure.
#![allow(clippy::unwrap_used)]
// These tests drive processes synchronously: there is no async runtime to block.
#![allow(clippy::disallowed_methods)]

mod deploy;
mod doctor;
mod example;
mod interop;
mod link;
mod parse;
mod scale;
mod serve;
mod support;
