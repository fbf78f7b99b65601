//! Model check: random sequences of operations applied to a real store and to a plain
//! in-memory model of the journal; after every step both must show the same queue heads,
//! message states, queue statistics and prune results.
//!
//! The model is written against the documented semantics, not the SQL, so it is
//! independent of the backend: `check` is generic over `conformance::Backend`, and runs
//! against SQLite and PostgreSQL alike.

use std::collections::BTreeMap;
use std::time::Duration;

use causeway_store::conformance::{Backend, at, message};
use causeway_store::{
    AttemptResult, DestinationStats, MessageId, MessageStatus, Retention, SearchQuery, Store,
    StoreSettings, Timestamp,
};
use proptest::prelude::*;

use crate::postgres::TempPg;
use crate::sqlite::TempSqlite;

const DESTS: [&str; 3] = ["a", "b", "c"];
const CHANNELS: [&str; 2] = ["x", "y"];
const DEDUP_WINDOW_SECS: i64 = 10;

#[derive(Debug, Clone)]
enum Op {
    /// Ingest on a channel with a control id (few, so resends happen) to a destination set.
    Ingest {
        channel: usize,
        control: u8,
        dests: u8,
    },
    /// Take the head of a destination's queue, if due, and record this outcome.
    Attempt { dest: usize, outcome: Outcome },
    /// Replay the n-th known message (modulo), to one destination or all.
    Replay { pick: usize, dest: Option<usize> },
    /// Replay a destination's dead letters.
    ReplayDead { dest: usize },
    /// Prune by age (seconds) and/or total size (in messages' worth of bytes).
    Prune {
        max_age: Option<u8>,
        max_msgs: Option<u8>,
    },
    /// Let time pass.
    Advance { secs: u8 },
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Delivered,
    Failed { retry_in: u8 },
    Dead,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CHANNELS.len(), 0u8..5, 0u8..8)
            .prop_map(|(channel, control, dests)| Op::Ingest { channel, control, dests }),
        4 => (0..DESTS.len(), prop_oneof![
                2 => Just(Outcome::Delivered),
                2 => (0u8..6).prop_map(|retry_in| Outcome::Failed { retry_in }),
                1 => Just(Outcome::Dead),
            ])
            .prop_map(|(dest, outcome)| Op::Attempt { dest, outcome }),
        1 => (any::<usize>(), proptest::option::of(0..DESTS.len()))
            .prop_map(|(pick, dest)| Op::Replay { pick, dest }),
        1 => (0..DESTS.len()).prop_map(|dest| Op::ReplayDead { dest }),
        1 => (proptest::option::of(0u8..30), proptest::option::of(0u8..10))
            .prop_map(|(max_age, max_msgs)| Op::Prune { max_age, max_msgs }),
        2 => (0u8..5).prop_map(|secs| Op::Advance { secs }),
    ]
}

// === the model ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Failed,
    Delivered,
    Dead,
}

#[derive(Debug)]
struct Msg {
    key: (usize, u8),
    received: i64,
    size: u64,
    duplicate: bool,
    routed: Vec<&'static str>,
}

#[derive(Debug)]
struct Del {
    message: i64,
    dest: &'static str,
    state: State,
    next_at: Option<i64>,
    superseded: bool,
}

#[derive(Debug, Default)]
struct Model {
    now: i64,
    messages: BTreeMap<i64, Msg>,
    deliveries: BTreeMap<i64, Del>,
}

impl Model {
    fn queued(&self, dest: &str) -> impl Iterator<Item = (&i64, &Del)> {
        self.deliveries.iter().filter(move |(_, d)| {
            d.dest == dest && matches!(d.state, State::Pending | State::Failed)
        })
    }

    /// Queue head: in id order, up to the first one not due.
    fn heads(&self, dest: &str) -> Vec<i64> {
        self.queued(dest)
            .take_while(|(_, d)| d.next_at.is_none_or(|t| t <= self.now))
            .map(|(id, _)| *id)
            .collect()
    }

    fn status(&self, id: i64) -> MessageStatus {
        let m = &self.messages[&id];
        if m.duplicate {
            return MessageStatus::Duplicate;
        }
        if m.routed.is_empty() {
            return MessageStatus::Filtered;
        }
        let ds: Vec<&Del> = self
            .deliveries
            .values()
            .filter(|d| d.message == id)
            .collect();
        if ds.iter().any(|d| d.state == State::Dead && !d.superseded) {
            MessageStatus::DeadLetter
        } else if ds.iter().any(|d| d.state == State::Failed) {
            MessageStatus::Failed
        } else if ds.iter().any(|d| d.state == State::Pending) {
            MessageStatus::Pending
        } else {
            MessageStatus::Delivered
        }
    }

    /// Stats for every destination that ever had a delivery (pruned ones included), by name.
    fn stats(&self, known: &[&'static str]) -> Vec<DestinationStats> {
        let mut known = known.to_vec();
        known.sort_unstable();
        known
            .into_iter()
            .map(|dest| DestinationStats {
                destination: dest.to_owned(),
                pending: self.queued(dest).count() as u64,
                dead_lettered: self
                    .deliveries
                    .values()
                    .filter(|d| d.dest == dest && d.state == State::Dead && !d.superseded)
                    .count() as u64,
                oldest_pending_received_at: self
                    .queued(dest)
                    .map(|(_, d)| self.messages[&d.message].received)
                    .min()
                    .map(Timestamp::from_millis),
            })
            .collect()
    }

    fn add_delivery(&mut self, id: i64, message: i64, dest: &'static str) {
        if let Some((last, _)) = self.deliveries.last_key_value() {
            assert!(id > *last, "delivery ids grow");
        }
        self.deliveries.insert(
            id,
            Del {
                message,
                dest,
                state: State::Pending,
                next_at: None,
                superseded: false,
            },
        );
    }

    fn settled(&self, id: i64) -> bool {
        matches!(
            self.status(id),
            MessageStatus::Delivered | MessageStatus::Filtered | MessageStatus::Duplicate
        )
    }

    fn delete(&mut self, id: i64) -> u64 {
        self.deliveries.retain(|_, d| d.message != id);
        self.messages.remove(&id).map_or(0, |m| m.size)
    }
}

fn dest_set(mask: u8) -> Vec<&'static str> {
    DESTS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, d)| *d)
        .collect()
}

fn millis(secs: i64) -> i64 {
    at(secs).as_millis()
}

// === the check ===

async fn check<B: Backend>(backend: B, ops: Vec<Op>) {
    let settings = StoreSettings::default()
        .dedup_window(Duration::from_secs(DEDUP_WINDOW_SECS as u64))
        .prune_chunk(3);
    let store = backend.open(settings).await.unwrap();
    let mut model = Model {
        now: millis(0),
        ..Model::default()
    };
    let mut known_dests: Vec<&'static str> = Vec::new();

    for (step, op) in ops.into_iter().enumerate() {
        let now = Timestamp::from_millis(model.now);
        match op {
            Op::Ingest {
                channel,
                control,
                dests,
            } => {
                let routed = dest_set(dests);
                let m = message(CHANNELS[channel], &format!("c{control}"), &routed, now);
                let size = m.raw.len() as u64;
                let got = store.ingest(m).await.unwrap();
                let key = (channel, control);
                let window_start = model.now - DEDUP_WINDOW_SECS * 1000;
                let original = model
                    .messages
                    .iter()
                    .find(|(_, m)| m.key == key && !m.duplicate && m.received >= window_start)
                    .map(|(id, _)| MessageId(*id));
                assert_eq!(
                    got.duplicate_of, original,
                    "step {step}: duplicate detection"
                );
                if let Some((last, _)) = model.messages.last_key_value() {
                    assert!(got.id.0 > *last, "message ids grow");
                }
                let duplicate = original.is_some();
                model.messages.insert(
                    got.id.0,
                    Msg {
                        key,
                        received: model.now,
                        size,
                        duplicate,
                        routed: if duplicate {
                            Vec::new()
                        } else {
                            routed.clone()
                        },
                    },
                );
                if duplicate {
                    assert!(got.deliveries.is_empty());
                } else {
                    assert_eq!(got.deliveries.len(), routed.len());
                    for (d, dest) in got.deliveries.iter().zip(&routed) {
                        model.add_delivery(d.0, got.id.0, dest);
                        if !known_dests.contains(dest) {
                            known_dests.push(dest);
                        }
                    }
                }
            }
            Op::Attempt { dest, outcome } => {
                let dest = DESTS[dest];
                let head = store.next_pending(dest, now, 1).await.unwrap();
                assert_eq!(
                    head.iter().map(|p| p.id.0).collect::<Vec<_>>(),
                    model.heads(dest).into_iter().take(1).collect::<Vec<_>>(),
                    "step {step}: head of {dest}"
                );
                if let Some(p) = head.first() {
                    let (result, state, next_at) = match outcome {
                        Outcome::Delivered => (AttemptResult::delivered(), State::Delivered, None),
                        Outcome::Failed { retry_in } => {
                            let retry = model.now + i64::from(retry_in) * 1000;
                            (
                                AttemptResult::Failed {
                                    error: "down".into(),
                                    retry_at: Timestamp::from_millis(retry),
                                },
                                State::Failed,
                                Some(retry),
                            )
                        }
                        Outcome::Dead => (
                            AttemptResult::DeadLettered {
                                error: "refused".into(),
                            },
                            State::Dead,
                            None,
                        ),
                    };
                    store.record_attempt(p.id, now, result).await.unwrap();
                    let d = model.deliveries.get_mut(&p.id.0).unwrap();
                    d.state = state;
                    if next_at.is_some() {
                        d.next_at = next_at;
                    }
                }
            }
            Op::Replay { pick, dest } => {
                if model.messages.is_empty() {
                    continue;
                }
                let (&id, m) = model
                    .messages
                    .iter()
                    .nth(pick % model.messages.len())
                    .unwrap();
                let targets: Vec<&'static str> = match dest {
                    None => m.routed.clone(),
                    Some(d) if m.routed.contains(&DESTS[d]) => vec![DESTS[d]],
                    Some(d) => {
                        let r = store.replay(MessageId(id), Some(DESTS[d]), now).await;
                        assert!(r.is_err(), "step {step}: replay to an unrouted destination");
                        continue;
                    }
                };
                let got = store
                    .replay(MessageId(id), dest.map(|d| DESTS[d]), now)
                    .await
                    .unwrap();
                assert_eq!(got.len(), targets.len());
                for (new, dest) in got.iter().zip(targets) {
                    for d in model.deliveries.values_mut() {
                        if d.message == id && d.dest == dest && d.state == State::Dead {
                            d.superseded = true;
                        }
                    }
                    model.add_delivery(new.0, id, dest);
                }
            }
            Op::ReplayDead { dest } => {
                let dest = DESTS[dest];
                let dead: Vec<(i64, i64)> = model
                    .deliveries
                    .iter()
                    .filter(|(_, d)| d.dest == dest && d.state == State::Dead && !d.superseded)
                    .map(|(id, d)| (*id, d.message))
                    .collect();
                let got = store.replay_dead_letters(dest, now).await.unwrap();
                assert_eq!(got.len(), dead.len(), "step {step}: dead letters of {dest}");
                for (new, (old, message)) in got.iter().zip(dead) {
                    assert_eq!(new.message.0, message, "step {step}: replayed message");
                    model.deliveries.get_mut(&old).unwrap().superseded = true;
                    model.add_delivery(new.delivery.0, message, dest);
                }
            }
            Op::Prune { max_age, max_msgs } => {
                let unit = message("x", "c0", &[], now).raw.len() as u64;
                let retention = Retention {
                    max_age: max_age.map(|s| Duration::from_secs(s.into())),
                    max_total_bytes: max_msgs.map(|n| u64::from(n) * unit),
                };
                let report = store.prune(now, retention).await.unwrap();
                let (mut n, mut bytes) = (0, 0);
                if let Some(age) = max_age {
                    let cutoff = model.now - i64::from(age) * 1000;
                    let old: Vec<i64> = model
                        .messages
                        .iter()
                        .filter(|(id, m)| m.received < cutoff && model.settled(**id))
                        .map(|(id, _)| *id)
                        .collect();
                    for id in old {
                        bytes += model.delete(id);
                        n += 1;
                    }
                }
                if let Some(budget) = retention.max_total_bytes {
                    let mut total: u64 = model.messages.values().map(|m| m.size).sum();
                    let settled: Vec<i64> = model
                        .messages
                        .keys()
                        .copied()
                        .filter(|id| model.settled(*id))
                        .collect();
                    for id in settled {
                        if total <= budget {
                            break;
                        }
                        let size = model.delete(id);
                        total -= size;
                        bytes += size;
                        n += 1;
                    }
                }
                assert_eq!(
                    (report.messages, report.bytes),
                    (n, bytes),
                    "step {step}: prune"
                );
            }
            Op::Advance { secs } => model.now += i64::from(secs) * 1000,
        }

        // Observable state after every step.
        let now = Timestamp::from_millis(model.now);
        for dest in DESTS {
            let got: Vec<i64> = store
                .next_pending(dest, now, 1000)
                .await
                .unwrap()
                .iter()
                .map(|p| p.id.0)
                .collect();
            assert_eq!(got, model.heads(dest), "step {step}: queue {dest}");
        }
        let page = store
            .search(SearchQuery {
                limit: 1000,
                ..SearchQuery::default()
            })
            .await
            .unwrap();
        let got: Vec<(i64, MessageStatus)> =
            page.messages.iter().map(|m| (m.id.0, m.status)).collect();
        let want: Vec<(i64, MessageStatus)> = model
            .messages
            .keys()
            .rev()
            .map(|id| (*id, model.status(*id)))
            .collect();
        assert_eq!(got, want, "step {step}: messages and states");
        assert_eq!(
            store.queue_stats().await.unwrap(),
            model.stats(&known_dests),
            "step {step}: stats"
        );
    }
    store.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn sqlite_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(check(TempSqlite::new(), ops));
    }

    #[test]
    fn postgres_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(check(TempPg::new(), ops));
    }
}
