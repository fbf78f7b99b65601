//! Test helpers shared by Causeway's crates. Not published.
//!
//! # Layout
//! - [`corpus`]: the real HL7 v2 sample messages in `../shared/corpus/hl7v2`.

pub mod corpus;
