//! The store's error type.
//!
//! The gateway needs one distinction above all: a store failure ([`StoreError::Unavailable`],
//! [`StoreError::Closed`]) means the message was not made durable, so the sender gets an
//! AE/CE and sends again; the other variants are a caller's mistake or a state conflict and
//! are reported as such (admin API 404/400/409).

use std::error::Error as StdError;

/// A boxed backend error (rusqlite, tokio-postgres, I/O), kept as the source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Shorthand for results of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed to read or write (disk full, I/O error, lock timeout, lost connection); nothing of this operation was committed.
    #[error("store unavailable: {context}")]
    Unavailable {
        /// What the store was doing.
        context: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// The store was closed (or its writer stopped) before the operation could run.
    #[error("store closed")]
    Closed,
    /// The message, delivery or other record named by the caller does not exist (or was pruned).
    #[error("{what} {id} not found")]
    NotFound {
        /// The kind of record: `"message"`, `"delivery"`.
        what: &'static str,
        /// The id the caller gave.
        id: i64,
    },
    /// The request is malformed: an empty name, an unknown destination, a bad cursor.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The record's state does not allow the operation, e.g. an attempt on a delivered delivery.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data could not be read back as expected (an unknown state name, a bad value).
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// The stored schema is newer than this build understands; refusing to touch it.
    #[error("schema version {found} is newer than the supported version {supported}")]
    SchemaTooNew {
        /// The version found in the store.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
}

impl StoreError {
    /// True when the failure is the store's, not the request's: retrying the same request
    /// later may succeed, and an HL7 sender should get AE (not AR) and send again.
    pub fn is_store_failure(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Closed | StoreError::Corrupt(_)
        )
    }

    pub(crate) fn unavailable(context: &'static str, source: impl Into<BoxError>) -> Self {
        StoreError::Unavailable {
            context,
            source: source.into(),
        }
    }
}
