//! `ack = "after_delivery"`: senders waiting for the first destination's outcome.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::deliver::Attempt;

/// Message id to the waiting acknowledgement. Bounded by the number of connections (each
/// waits for at most one message at a time).
#[derive(Debug, Default)]
pub struct Waiters {
    // std Mutex: held for a map operation only, never across an await.
    waiting: Mutex<HashMap<i64, (String, oneshot::Sender<Attempt>)>>,
}

impl Waiters {
    /// Waits for `destination`'s next outcome for `message_id`.
    pub fn register(&self, message_id: i64, destination: &str) -> oneshot::Receiver<Attempt> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut map) = self.waiting.lock() {
            map.insert(message_id, (destination.to_owned(), tx));
        }
        rx
    }

    /// Gives up waiting (on timeout).
    pub fn forget(&self, message_id: i64) {
        if let Ok(mut map) = self.waiting.lock() {
            map.remove(&message_id);
        }
    }

    /// Called by a worker after each attempt: wakes the sender waiting on this message, if
    /// it waits for this destination.
    pub fn complete(&self, message_id: i64, destination: &str, attempt: &Attempt) {
        let Ok(mut map) = self.waiting.lock() else {
            return;
        };
        if map.get(&message_id).is_some_and(|(d, _)| d == destination)
            && let Some((_, tx)) = map.remove(&message_id)
        {
            let _ = tx.send(attempt.clone());
        }
    }
}
