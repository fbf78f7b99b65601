//! Test helpers shared by Causeway's crates. Not published.
//!
//! # Layout
//! - [`corpus`]: the real HL7 v2 sample messages in `../shared/corpus/hl7v2`.
//! - [`e2e`]: gateway end-to-end helpers: a blocking MLLP sender, a crash-proof load of
//!   senders, readers of what destinations received, and the delivery check.
//! - [`netns`]: network namespaces: separate sites, or a loopback of a test's own.
//! - [`pki`]: throwaway certificate authorities and certificates (rcgen, ring).
//! - [`process`]: run the `causeway` binary and the Python peers as child processes.
//! - [`relay`]: a TCP relay: a load balancer in front of gateways, or a cable to cut.
//! - `src/bin/`: `mllp-load` (load generator) and `mllp-ref-server` (benchmark reference).
//! - `python/`: the python-hl7 peers used by interop tests, and `http_sink.py`, the HTTP
//!   destination of the gateway's tests.

pub mod corpus;
pub mod e2e;
pub mod netns;
pub mod pki;
pub mod process;
pub mod relay;
