//! Test helpers shared by Causeway's crates. Not published.
//!
//! # Layout
//! - [`corpus`]: the real HL7 v2 sample messages in `../shared/corpus/hl7v2`.
//! - [`pki`]: throwaway certificate authorities and certificates (rcgen, ring).
//! - [`process`]: run the `causeway` binary and the Python peers as child processes.
//! - `src/bin/`: `mllp-load` (load generator) and `mllp-ref-server` (benchmark reference).
//! - `python/`: the python-hl7 peers used by interop tests.

pub mod corpus;
pub mod pki;
pub mod process;
