//! Integration tests of the message core.

mod corpus;
