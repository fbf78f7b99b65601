//! Integration tests of the `causeway` binary: each runs the real executable.

mod parse;
