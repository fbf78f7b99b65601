//! Integration tests of the `causeway` binary: each runs the real executable.

// Test helpers outside #[test] functions may unwrap too: a panic is a test failure.
#![allow(clippy::unwrap_used)]

mod doctor;
mod interop;
mod parse;
