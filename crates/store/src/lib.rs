//! The durable message journal of Causeway: every message received, where it must go,
//! every attempt to get it there, and what operators did with it.
//!
//! One trait, [`Store`], with the operations the gateway needs: ingest (durable before the
//! ACK goes out, with duplicate detection), quarantine for frames that are not HL7, one
//! FIFO delivery queue per destination with retries and dead letters, replay, search,
//! queue statistics, retention, an audit log, and destination leases for nodes sharing a
//! database. Backends: [`sqlite::SqliteStore`] now (WAL, group commit on a writer
//! thread) and PostgreSQL ([`postgres`]), held to the same behaviour by the [`conformance`] suite.
//!
//! What it is not: it does not parse HL7 (the gateway hands it the metadata it extracted
//! with `causeway-message`), send anything, or read the clock: every time is passed in.
//!
//! The types that matter:
//! - [`Store`]: the trait; [`StoreSettings`]: its bounds (queue, batch, page sizes).
//! - [`NewMessage`] in, [`Ingested`] out; [`PendingDelivery`] and [`AttemptResult`] for
//!   the delivery loop; [`MessageRecord`], [`SearchQuery`] and [`SearchPage`] for reading.
//! - [`StoreError`]: `Unavailable`/`Closed` (answer AE, the message was not stored) apart
//!   from `NotFound`, `InvalidInput` and `Conflict`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), causeway_store::StoreError> {
//! use causeway_store::{NewMessage, Store, StoreSettings, Timestamp, sqlite::SqliteStore};
//!
//! let store = SqliteStore::open("journal.db", StoreSettings::default()).await?;
//! let stored = store
//!     .ingest(NewMessage {
//!         channel: "adt-in".into(),
//!         raw: "MSH|^~\\&|HIS|H|RIS|R|20240101||ADT^A01|1|P|2.5\r".into(),
//!         received_at: Timestamp::from(std::time::SystemTime::now()),
//!         control_id: "1".into(),
//!         destinations: vec!["ris".into()],
//!         ..NewMessage::default()
//!     })
//!     .await?;
//! // Durable now: send the AA.
//! # let _ = stored; Ok(()) }
//! ```
//!
//! # Layout
//! - [`store`]: the [`Store`] trait and [`StoreSettings`].
//! - [`types`]: ids, [`Timestamp`], and every value passed in or out.
//! - [`error`]: the error type, [`StoreError`].
//! - [`sqlite`]: the SQLite backend; [`sqlite::schema`] documents the schema.
//! - [`postgres`]: the PostgreSQL backend, for one or several nodes sharing a database;
//!   [`postgres::schema`] documents the schema.
//! - [`conformance`]: the backend-generic test suite and [`conformance_tests!`].
#![warn(missing_docs)]

pub mod conformance;
pub mod error;
pub mod postgres;
pub mod sqlite;
pub mod store;
pub mod types;
mod writer_stats;

pub use writer_stats::WriterStats;

pub use error::{Result, StoreError};
pub use store::{Store, StoreSettings};
pub use types::{
    AttemptRecord, AttemptResult, AuditAction, AuditEntry, AuditId, AuditRecord, Cursor,
    DeliveryId, DeliveryRecord, DeliveryState, DestinationStats, Ingested, Lease, MessageId,
    MessageRecord, MessageStatus, MessageSummary, NewMessage, NewQuarantine, PendingDelivery,
    PruneReport, QuarantineId, QuarantinePage, QuarantineRecord, Replayed, Retention, SearchPage,
    SearchQuery, Timestamp,
};
