//! `ack = "after_delivery"`: senders waiting for the first destination's outcome.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::deliver::Attempt;

/// How many outcomes nobody waited for are kept, for a sender that registers late.
const EARLY_OUTCOMES: usize = 1024;

/// Message id to the waiting acknowledgement. Bounded by the number of connections (each
/// waits for at most one message at a time), plus [`EARLY_OUTCOMES`].
///
/// A destination can settle a message before its sender registers: the store makes an
/// ingest visible to the delivery worker as soon as it is in a committed transaction,
/// which may be a moment before the ingest is durable and answered. So an outcome that
/// finds no waiter is kept (the most recent ones, bounded), and a registration finds it.
#[derive(Debug, Default)]
pub struct Waiters {
    // std Mutex: held for a map operation only, never across an await.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    waiting: HashMap<i64, (String, oneshot::Sender<Attempt>)>,
    /// Outcomes that came before their waiter: by message id, oldest first in `order`.
    early: HashMap<i64, (String, Attempt)>,
    order: VecDeque<i64>,
}

impl Waiters {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        match self.inner.lock() {
            Ok(mut inner) => f(&mut inner),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Waits for `destination`'s next outcome for `message_id` (or takes the one that
    /// came already).
    pub fn register(&self, message_id: i64, destination: &str) -> oneshot::Receiver<Attempt> {
        let (tx, rx) = oneshot::channel();
        self.with(|inner| match inner.early.remove(&message_id) {
            Some((d, attempt)) if d == destination => {
                let _ = tx.send(attempt);
            }
            other => {
                if let Some(other) = other {
                    inner.early.insert(message_id, other);
                }
                inner
                    .waiting
                    .insert(message_id, (destination.to_owned(), tx));
            }
        });
        rx
    }

    /// Gives up waiting (on timeout).
    pub fn forget(&self, message_id: i64) {
        self.with(|inner| inner.waiting.remove(&message_id));
    }

    /// Called by a worker after each attempt: wakes the sender waiting on this message, if
    /// it waits for this destination, or keeps the outcome for a sender still to come.
    pub fn complete(&self, message_id: i64, destination: &str, attempt: &Attempt) {
        self.with(|inner| {
            if inner
                .waiting
                .get(&message_id)
                .is_some_and(|(d, _)| d == destination)
            {
                if let Some((_, tx)) = inner.waiting.remove(&message_id) {
                    let _ = tx.send(attempt.clone());
                }
                return;
            }
            if inner
                .early
                .insert(message_id, (destination.to_owned(), attempt.clone()))
                .is_none()
            {
                inner.order.push_back(message_id);
            }
            while inner.order.len() > EARLY_OUTCOMES {
                if let Some(old) = inner.order.pop_front() {
                    inner.early.remove(&old);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(text: &str) -> Attempt {
        Attempt::Delivered {
            code: Some("AA".into()),
            text: Some(text.into()),
            ack: None,
        }
    }

    #[tokio::test]
    async fn an_outcome_before_the_registration_is_not_lost() {
        let w = Waiters::default();
        w.complete(7, "lab", &delivered("early"));
        let rx = w.register(7, "lab");
        assert_eq!(rx.await.unwrap(), delivered("early"));
        // Taken once: a second registration waits for a new outcome.
        let mut rx = w.register(7, "lab");
        assert!(rx.try_recv().is_err());
        w.complete(7, "lab", &delivered("late"));
        assert_eq!(rx.await.unwrap(), delivered("late"));
    }

    #[tokio::test]
    async fn another_destination_s_outcome_is_not_taken() {
        let w = Waiters::default();
        w.complete(1, "archive", &delivered("x"));
        let mut rx = w.register(1, "lab");
        assert!(rx.try_recv().is_err());
        w.complete(1, "lab", &delivered("lab"));
        assert_eq!(rx.await.unwrap(), delivered("lab"));
    }

    #[test]
    fn early_outcomes_are_bounded() {
        let w = Waiters::default();
        for id in 0..(EARLY_OUTCOMES as i64 * 3) {
            w.complete(id, "lab", &delivered("x"));
        }
        w.with(|inner| {
            assert_eq!(inner.early.len(), EARLY_OUTCOMES);
            assert_eq!(inner.order.len(), EARLY_OUTCOMES);
        });
        // The oldest were dropped, the newest kept.
        let mut old = w.register(0, "lab");
        assert!(old.try_recv().is_err());
    }
}
