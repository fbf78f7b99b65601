//! The behaviour every backend must have, as tests generic over the backend.
//!
//! A backend's test file implements [`Backend`] (open a store at one fresh location; open
//! it again at the same location for the restart tests) and invokes
//! [`conformance_tests!`](crate::conformance_tests), which expands to one `#[tokio::test]`
//! per check, so failures are reported one by one:
//!
//! ```ignore
//! struct Pg { schema: String }
//! impl causeway_store::conformance::Backend for Pg { /* ... */ }
//! causeway_store::conformance_tests!(Pg::fresh());
//! ```
//!
//! The calling crate needs `tokio` with the `macros` and `rt-multi-thread` features.
//! [`run_all`] runs the whole suite in one test instead.
//!
//! Every check panics on failure (this is test code; a panic is a failing test).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Result, StoreError};
use crate::store::{Store, StoreSettings};
use crate::types::{
    AttemptResult, AuditAction, AuditEntry, DeliveryState, Ingested, MessageId, MessageStatus,
    NewMessage, NewQuarantine, Retention, SearchQuery, Timestamp,
};

/// A backend under test: one storage location (a file, a database schema).
pub trait Backend: Send + Sync + 'static {
    /// The store it opens.
    type Store: Store + 'static;

    /// Opens the store at this location: empty the first time, with everything committed
    /// before on later calls (after the previous store was closed or dropped).
    fn open(&self, settings: StoreSettings) -> impl Future<Output = Result<Self::Store>> + Send;
}

/// An arbitrary "now" for the tests: 2023-11-14T22:13:20Z.
pub const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

/// `T0` plus `secs` seconds.
pub fn at(secs: i64) -> Timestamp {
    Timestamp::from_millis(T0.as_millis() + secs * 1000)
}

/// A message on `channel` with control id `control_id`, routed to `destinations`,
/// received at `received_at`, with 1 KB-ish realistic bytes unique to the control id.
pub fn message(
    channel: &str,
    control_id: &str,
    destinations: &[&str],
    received_at: Timestamp,
) -> NewMessage {
    let raw = format!(
        "MSH|^~\\&|HIS|HOSP|RIS|RAD|20240101120000||ADT^A01|{control_id}|P|2.5\r\
         PID|1||MRN-{control_id}^^^HOSP||DOE^JOHN||19700101|M\r"
    );
    NewMessage {
        channel: channel.into(),
        raw: raw.into_bytes().into(),
        received_at,
        peer: "127.0.0.1:40000".into(),
        tls_identity: None,
        control_id: control_id.into(),
        message_type: "ADT".into(),
        trigger_event: "A01".into(),
        sending_application: "HIS".into(),
        sending_facility: "HOSP".into(),
        receiving_application: "RIS".into(),
        receiving_facility: "RAD".into(),
        patient_id: Some(format!("MRN-{control_id}")),
        charset: None,
        destinations: destinations.iter().map(|d| (*d).to_owned()).collect(),
    }
}

async fn fresh<B: Backend>(backend: &B) -> B::Store {
    backend.open(StoreSettings::default()).await.unwrap()
}

async fn ingest<S: Store + ?Sized>(store: &S, m: NewMessage) -> Ingested {
    store.ingest(m).await.unwrap()
}

async fn head_ids<S: Store + ?Sized>(store: &S, dest: &str, now: Timestamp) -> Vec<i64> {
    store
        .next_pending(dest, now, 1000)
        .await
        .unwrap()
        .iter()
        .map(|p| p.message_id.0)
        .collect()
}

async fn status<S: Store + ?Sized>(store: &S, id: MessageId) -> MessageStatus {
    store.message(id).await.unwrap().unwrap().summary.status
}

fn failed(secs: i64) -> AttemptResult {
    AttemptResult::Failed {
        error: "connection refused".into(),
        retry_at: at(secs),
    }
}

fn dead() -> AttemptResult {
    AttemptResult::DeadLettered {
        error: "AR: unknown patient".into(),
    }
}

/// Generates one `#[tokio::test]` per conformance check, each with a fresh backend from
/// `$make` (an expression evaluated once per test).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            ingest_and_read_back, filtered_message, fifo_order_per_destination,
            head_of_line_retry_blocks, delivered_leaves_queue, dead_letter_and_replay,
            replay_message, duplicates_within_window, duplicate_detection_disabled,
            quarantine_kept, search_filters_and_paging, prune_by_age_keeps_unsettled,
            prune_by_size_oldest_first, restart_keeps_queues, concurrent_ingest, leases,
            audit_log, queue_stats, invalid_input, health_and_close);
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::$name($make).await;
            }
        )*
    };
}

/// Runs every check, each on a fresh backend from `make`.
pub async fn run_all<B: Backend>(make: impl Fn() -> B) {
    ingest_and_read_back(make()).await;
    filtered_message(make()).await;
    fifo_order_per_destination(make()).await;
    head_of_line_retry_blocks(make()).await;
    delivered_leaves_queue(make()).await;
    dead_letter_and_replay(make()).await;
    replay_message(make()).await;
    duplicates_within_window(make()).await;
    duplicate_detection_disabled(make()).await;
    quarantine_kept(make()).await;
    search_filters_and_paging(make()).await;
    prune_by_age_keeps_unsettled(make()).await;
    prune_by_size_oldest_first(make()).await;
    restart_keeps_queues(make()).await;
    concurrent_ingest(make()).await;
    leases(make()).await;
    audit_log(make()).await;
    queue_stats(make()).await;
    invalid_input(make()).await;
    health_and_close(make()).await;
}

// === ingest and read ===

/// Every field and every byte comes back as ingested; deliveries start pending.
pub async fn ingest_and_read_back<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let mut m = message("adt-in", "C1", &["ris", "lab"], at(0));
    // Bytes that are not UTF-8, a NUL and a stray CR LF: stored exactly.
    let mut raw = m.raw.to_vec();
    raw.extend_from_slice(b"NTE|1||caf\xe9\x00\r\n");
    m.raw = raw.into();
    m.tls_identity = Some("CN=his.example".into());
    m.charset = Some("8859/1".into());
    let got = ingest(&store, m.clone()).await;
    assert_eq!(got.duplicate_of, None);
    assert_eq!(got.deliveries.len(), 2);
    assert!(got.deliveries[0] < got.deliveries[1]);

    let rec = store.message(got.id).await.unwrap().unwrap();
    assert_eq!(rec.summary.id, got.id);
    assert_eq!(rec.summary.status, MessageStatus::Pending);
    assert_eq!(rec.summary.size, m.raw.len() as u64);
    assert_eq!(rec.summary.meta, m, "metadata and bytes round trip");
    assert_eq!(rec.deliveries.len(), 2);
    for (d, (id, dest)) in rec
        .deliveries
        .iter()
        .zip(got.deliveries.iter().zip(["ris", "lab"]))
    {
        assert_eq!(d.id, *id);
        assert_eq!(d.destination, dest);
        assert_eq!(d.state, DeliveryState::Pending);
        assert_eq!(d.next_attempt_at, None);
        assert!(d.attempts.is_empty());
    }
    let head = store.next_pending("ris", at(0), 10).await.unwrap();
    assert_eq!(head.len(), 1);
    assert_eq!(head[0].raw, m.raw);
    assert_eq!(head[0].control_id, "C1");
    assert_eq!(head[0].attempts, 0);
    assert!(
        store
            .message(MessageId(got.id.0 + 1000))
            .await
            .unwrap()
            .is_none()
    );

    // A destination named twice gets one delivery.
    let twice = ingest(&store, message("adt-in", "C2", &["ris", "ris"], at(1))).await;
    assert_eq!(twice.deliveries.len(), 1);
    assert!(twice.id > got.id);
}

/// No destinations: stored, filtered, queued nowhere.
pub async fn filtered_message<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let got = ingest(&store, message("adt-in", "F1", &[], at(0))).await;
    assert!(got.deliveries.is_empty());
    let rec = store.message(got.id).await.unwrap().unwrap();
    assert_eq!(rec.summary.status, MessageStatus::Filtered);
    assert!(rec.deliveries.is_empty());
    assert!(store.queue_stats().await.unwrap().is_empty());
    let page = store
        .search(SearchQuery {
            status: Some(MessageStatus::Filtered),
            ..SearchQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 1);
    assert!(store.replay(got.id, None, at(1)).await.unwrap().is_empty());
}

// === queues ===

/// Each destination's queue is its deliveries in arrival order; `limit` takes the head.
pub async fn fifo_order_per_destination<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..12 {
        let dests: &[&str] = match i % 3 {
            0 => &["a"],
            1 => &["b"],
            _ => &["a", "b"],
        };
        let got = ingest(&store, message("ch", &format!("M{i}"), dests, at(i))).await;
        if dests.contains(&"a") {
            a.push(got.id.0);
        }
        if dests.contains(&"b") {
            b.push(got.id.0);
        }
    }
    assert_eq!(head_ids(&store, "a", at(100)).await, a);
    assert_eq!(head_ids(&store, "b", at(100)).await, b);
    let first3 = store.next_pending("a", at(100), 3).await.unwrap();
    assert_eq!(
        first3.iter().map(|p| p.message_id.0).collect::<Vec<_>>(),
        a[..3]
    );
    assert!(first3.windows(2).all(|w| w[0].id < w[1].id));
    assert!(
        store
            .next_pending("a", at(100), 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .next_pending("nowhere", at(100), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Delivering the head moves the queue up by one, in order.
    store
        .record_attempt(first3[0].id, at(101), AttemptResult::delivered())
        .await
        .unwrap();
    assert_eq!(head_ids(&store, "a", at(102)).await, a[1..]);
    assert_eq!(
        head_ids(&store, "b", at(102)).await,
        b,
        "other queues untouched"
    );
}

/// A head waiting for its retry holds back the whole queue until it is due.
pub async fn head_of_line_retry_blocks<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let m1 = ingest(&store, message("ch", "H1", &["d"], at(0))).await;
    let m2 = ingest(&store, message("ch", "H2", &["d"], at(1))).await;
    store
        .record_attempt(m1.deliveries[0], at(2), failed(60))
        .await
        .unwrap();
    assert!(
        store
            .next_pending("d", at(30), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(status(&store, m1.id).await, MessageStatus::Failed);
    assert_eq!(status(&store, m2.id).await, MessageStatus::Pending);
    let due = store.next_pending("d", at(60), 10).await.unwrap();
    assert_eq!(
        due.iter().map(|p| p.id).collect::<Vec<_>>(),
        [m1.deliveries[0], m2.deliveries[0]]
    );
    assert_eq!(due[0].attempts, 1);
    // A second failure moves the retry time; the attempt history keeps both.
    store
        .record_attempt(m1.deliveries[0], at(61), failed(120))
        .await
        .unwrap();
    assert!(
        store
            .next_pending("d", at(119), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let rec = store.message(m1.id).await.unwrap().unwrap();
    let d = &rec.deliveries[0];
    assert_eq!(d.state, DeliveryState::Failed);
    assert_eq!(d.next_attempt_at, Some(at(120)));
    assert_eq!(d.attempts.len(), 2);
    assert_eq!(d.attempts[0].at, at(2));
    assert_eq!(d.attempts[0].result, failed(60));
    assert_eq!(d.attempts[1].result, failed(120));
    // Only the head blocks: a later delivery in the batch that is due is not skipped to.
    store
        .record_attempt(m1.deliveries[0], at(121), AttemptResult::delivered())
        .await
        .unwrap();
    assert_eq!(head_ids(&store, "d", at(121)).await, [m2.id.0]);
    assert_eq!(status(&store, m1.id).await, MessageStatus::Delivered);
}

/// Delivered deliveries leave the queue, keep their ACK, and take no more attempts.
pub async fn delivered_leaves_queue<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let m = ingest(&store, message("ch", "D1", &["x", "y"], at(0))).await;
    let ack = AttemptResult::Delivered {
        ack_code: Some("AA".into()),
        ack_text: Some("ok".into()),
        ack_raw: Some(bytes::Bytes::from_static(b"MSH|^~\\&|RIS\rMSA|AA|D1\r")),
    };
    store
        .record_attempt(m.deliveries[0], at(1), ack.clone())
        .await
        .unwrap();
    assert!(head_ids(&store, "x", at(2)).await.is_empty());
    assert_eq!(
        status(&store, m.id).await,
        MessageStatus::Pending,
        "y still queued"
    );
    store
        .record_attempt(m.deliveries[1], at(2), AttemptResult::delivered())
        .await
        .unwrap();
    let rec = store.message(m.id).await.unwrap().unwrap();
    assert_eq!(rec.summary.status, MessageStatus::Delivered);
    assert_eq!(rec.deliveries[0].state, DeliveryState::Delivered);
    assert_eq!(rec.deliveries[0].attempts[0].result, ack);
    assert_eq!(rec.deliveries[0].attempts[0].at, at(1));

    let again = store
        .record_attempt(m.deliveries[0], at(3), AttemptResult::delivered())
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let unknown = store
        .record_attempt(
            crate::types::DeliveryId(m.deliveries[1].0 + 100),
            at(3),
            AttemptResult::delivered(),
        )
        .await;
    assert!(
        matches!(
            unknown,
            Err(StoreError::NotFound {
                what: "delivery",
                ..
            })
        ),
        "{unknown:?}"
    );
    // The failed request changed nothing.
    assert_eq!(
        store.message(m.id).await.unwrap().unwrap().deliveries[0]
            .attempts
            .len(),
        1
    );
}

/// A dead letter leaves the queue and counts as dead; replaying dead letters queues new
/// deliveries at the tail and supersedes the dead ones.
pub async fn dead_letter_and_replay<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let m1 = ingest(&store, message("ch", "X1", &["d"], at(0))).await;
    let m2 = ingest(&store, message("ch", "X2", &["d"], at(1))).await;
    let m3 = ingest(&store, message("ch", "X3", &["d"], at(2))).await;
    store
        .record_attempt(m1.deliveries[0], at(3), dead())
        .await
        .unwrap();
    store
        .record_attempt(m2.deliveries[0], at(4), dead())
        .await
        .unwrap();
    assert_eq!(head_ids(&store, "d", at(5)).await, [m3.id.0]);
    assert_eq!(status(&store, m1.id).await, MessageStatus::DeadLetter);
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].pending, stats[0].dead_lettered), (1, 2));
    let dead_again = store
        .record_attempt(m1.deliveries[0], at(5), AttemptResult::delivered())
        .await;
    assert!(matches!(dead_again, Err(StoreError::Conflict(_))));

    let replayed = store.replay_dead_letters("d", at(10)).await.unwrap();
    assert_eq!(replayed.len(), 2);
    assert_eq!(
        replayed.iter().map(|r| r.message).collect::<Vec<_>>(),
        [m1.id, m2.id],
        "each with its message, in queue order"
    );
    let replayed: Vec<crate::types::DeliveryId> = replayed.iter().map(|r| r.delivery).collect();
    assert!(replayed[0] > m3.deliveries[0] && replayed[0] < replayed[1]);
    assert_eq!(
        head_ids(&store, "d", at(10)).await,
        [m3.id.0, m1.id.0, m2.id.0]
    );
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats[0].pending, stats[0].dead_lettered), (3, 0));
    assert_eq!(status(&store, m1.id).await, MessageStatus::Pending);
    let rec = store.message(m1.id).await.unwrap().unwrap();
    assert_eq!(rec.deliveries.len(), 2);
    assert_eq!(rec.deliveries[0].state, DeliveryState::DeadLetter);
    assert_eq!(rec.deliveries[0].superseded_by, Some(replayed[0]));
    assert_eq!(rec.deliveries[1].replay_of, Some(m1.deliveries[0]));
    assert_eq!(rec.deliveries[1].created_at, at(10));
    assert_eq!(
        rec.summary.meta.destinations,
        ["d"],
        "routing unchanged by replay"
    );
    // Nothing left to replay.
    assert!(
        store
            .replay_dead_letters("d", at(11))
            .await
            .unwrap()
            .is_empty()
    );
    // Delivering the replay settles the message; the superseded dead letter no longer counts.
    store
        .record_attempt(m3.deliveries[0], at(12), AttemptResult::delivered())
        .await
        .unwrap();
    store
        .record_attempt(replayed[0], at(12), AttemptResult::delivered())
        .await
        .unwrap();
    assert_eq!(status(&store, m1.id).await, MessageStatus::Delivered);
}

/// Replaying one message to one or all of its destinations appends at each tail.
pub async fn replay_message<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let m1 = ingest(&store, message("ch", "R1", &["a", "b"], at(0))).await;
    let m2 = ingest(&store, message("ch", "R2", &["a", "b"], at(1))).await;
    for d in m1.deliveries.iter().chain(&m2.deliveries) {
        store
            .record_attempt(*d, at(2), AttemptResult::delivered())
            .await
            .unwrap();
    }
    let m3 = ingest(&store, message("ch", "R3", &["a"], at(3))).await;
    let one = store.replay(m1.id, Some("b"), at(4)).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(head_ids(&store, "b", at(4)).await, [m1.id.0]);
    assert_eq!(status(&store, m1.id).await, MessageStatus::Pending);
    let all = store.replay(m2.id, None, at(5)).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(head_ids(&store, "a", at(5)).await, [m3.id.0, m2.id.0]);
    assert_eq!(head_ids(&store, "b", at(5)).await, [m1.id.0, m2.id.0]);
    let rec = store.message(m2.id).await.unwrap().unwrap();
    assert_eq!(rec.deliveries.len(), 4);
    assert_eq!(rec.deliveries[2].replay_of, Some(m2.deliveries[0]));

    let wrong = store.replay(m3.id, Some("b"), at(6)).await;
    assert!(
        matches!(wrong, Err(StoreError::InvalidInput(_))),
        "{wrong:?}"
    );
    let gone = store.replay(MessageId(m3.id.0 + 100), None, at(6)).await;
    assert!(
        matches!(
            gone,
            Err(StoreError::NotFound {
                what: "message",
                ..
            })
        ),
        "{gone:?}"
    );
}

// === duplicates ===

/// A resend within the window is a recorded duplicate with no deliveries; outside the
/// window, or with other bytes, sender or channel, it is a new message.
pub async fn duplicates_within_window<B: Backend>(backend: B) {
    let window = Duration::from_secs(3600);
    let store = backend
        .open(StoreSettings::default().dedup_window(window))
        .await
        .unwrap();
    let original = ingest(&store, message("ch", "DUP", &["d"], at(0))).await;
    let resend = ingest(&store, message("ch", "DUP", &["d"], at(3599))).await;
    assert_eq!(resend.duplicate_of, Some(original.id));
    assert!(resend.deliveries.is_empty());
    assert_ne!(resend.id, original.id);
    assert_eq!(status(&store, resend.id).await, MessageStatus::Duplicate);
    let rec = store.message(resend.id).await.unwrap().unwrap();
    assert_eq!(rec.summary.duplicate_of, Some(original.id));
    assert!(rec.deliveries.is_empty());
    assert_eq!(head_ids(&store, "d", at(4000)).await, [original.id.0]);

    // Other bytes, same control id: a new message.
    let mut changed = message("ch", "DUP", &["d"], at(10));
    changed.raw = bytes::Bytes::from_static(b"MSH|^~\\&|HIS|HOSP|||x||ADT^A01|DUP|P|2.5\r");
    assert_eq!(ingest(&store, changed).await.duplicate_of, None);
    // Another channel or another sender: new messages.
    assert_eq!(
        ingest(&store, message("other", "DUP", &["d"], at(11)))
            .await
            .duplicate_of,
        None
    );
    let mut other_sender = message("ch", "DUP", &["d"], at(12));
    other_sender.sending_facility = "ELSEWHERE".into();
    assert_eq!(ingest(&store, other_sender).await.duplicate_of, None);
    // Outside the window: a new message, which later resends repeat.
    let late = ingest(&store, message("ch", "DUP", &["d"], at(3601))).await;
    assert_eq!(late.duplicate_of, None);
    assert_eq!(late.deliveries.len(), 1);
    let later = ingest(&store, message("ch", "DUP", &["d"], at(7000))).await;
    assert_eq!(later.duplicate_of, Some(late.id));
    let dups = store
        .search(SearchQuery {
            status: Some(MessageStatus::Duplicate),
            ..SearchQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        dups.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        [later.id, resend.id]
    );
}

/// A zero window turns duplicate detection off.
pub async fn duplicate_detection_disabled<B: Backend>(backend: B) {
    let store = backend
        .open(StoreSettings::default().dedup_window(Duration::ZERO))
        .await
        .unwrap();
    let a = ingest(&store, message("ch", "Z", &["d"], at(0))).await;
    let b = ingest(&store, message("ch", "Z", &["d"], at(0))).await;
    assert_eq!(b.duplicate_of, None);
    assert_eq!(head_ids(&store, "d", at(1)).await, [a.id.0, b.id.0]);
}

// === quarantine ===

/// Frames that are not HL7 are kept with their bytes and listed newest first, paged.
pub async fn quarantine_kept<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let mut ids = Vec::new();
    for i in 0..5u8 {
        let id = store
            .quarantine(NewQuarantine {
                channel: "adt-in".into(),
                received_at: at(i.into()),
                peer: "10.0.0.9:5000".into(),
                tls_identity: (i == 0).then(|| "CN=x".to_owned()),
                reason: format!("expected MSH, found {i}"),
                raw: vec![0xff, i, 0x00].into(),
            })
            .await
            .unwrap();
        ids.push(id);
    }
    let page = store.list_quarantine(2, None).await.unwrap();
    assert_eq!(
        page.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        [ids[4], ids[3]]
    );
    assert_eq!(&page.entries[0].entry.raw[..], [0xff, 4, 0]);
    let page2 = store.list_quarantine(2, page.next).await.unwrap();
    assert_eq!(
        page2.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        [ids[2], ids[1]]
    );
    let page3 = store.list_quarantine(2, page2.next).await.unwrap();
    assert_eq!(page3.entries.len(), 1);
    assert_eq!(page3.entries[0].entry.tls_identity.as_deref(), Some("CN=x"));
    assert_eq!(page3.entries[0].entry.received_at, at(0));
    assert!(page3.next.is_none());
    assert!(store.queue_stats().await.unwrap().is_empty());
}

// === search ===

/// Every filter narrows; pages are newest first and cover everything exactly once.
pub async fn search_filters_and_paging<B: Backend>(backend: B) {
    let store = backend
        .open(StoreSettings::default().max_search_limit(7))
        .await
        .unwrap();
    let mut all = Vec::new();
    for i in 0..20i64 {
        let mut m = message(
            if i % 2 == 0 { "even" } else { "odd" },
            &format!("S{i}"),
            &["d"],
            at(i * 10),
        );
        if i % 5 == 0 {
            m.message_type = "ORU".into();
            m.trigger_event = "R01".into();
        }
        all.push(ingest(&store, m).await);
    }
    // Settle some: deliver 0..5, dead-letter 5, fail 6.
    for got in &all[..5] {
        store
            .record_attempt(got.deliveries[0], at(300), AttemptResult::delivered())
            .await
            .unwrap();
    }
    store
        .record_attempt(all[5].deliveries[0], at(300), dead())
        .await
        .unwrap();
    store
        .record_attempt(all[6].deliveries[0], at(300), failed(400))
        .await
        .unwrap();
    let filtered = ingest(&store, message("even", "S-filtered", &[], at(500))).await;

    let ids = |page: &crate::types::SearchPage| -> Vec<i64> {
        page.messages.iter().map(|m| m.id.0).collect()
    };
    let q = |f: fn(&mut SearchQuery)| {
        let mut q = SearchQuery::default();
        f(&mut q);
        q
    };
    let odd = store
        .search(q(|q| q.channel = Some("odd".into())))
        .await
        .unwrap();
    assert_eq!(
        ids(&odd),
        all.iter()
            .enumerate()
            .rev()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, g)| g.id.0)
            .take(7)
            .collect::<Vec<_>>(),
        "newest first, clamped to max_search_limit"
    );
    let st = &store;
    let by_status = |s| async move {
        let page = st
            .search(SearchQuery {
                status: Some(s),
                ..SearchQuery::default()
            })
            .await
            .unwrap();
        ids(&page)
    };
    assert_eq!(
        by_status(MessageStatus::Delivered).await,
        all[..5].iter().rev().map(|g| g.id.0).collect::<Vec<_>>()
    );
    assert_eq!(by_status(MessageStatus::DeadLetter).await, [all[5].id.0]);
    assert_eq!(by_status(MessageStatus::Failed).await, [all[6].id.0]);
    assert_eq!(by_status(MessageStatus::Filtered).await, [filtered.id.0]);
    assert_eq!(by_status(MessageStatus::Pending).await.len(), 7);
    let oru = store
        .search(q(|q| {
            q.message_type = Some("ORU".into());
            q.trigger_event = Some("R01".into());
        }))
        .await
        .unwrap();
    assert_eq!(
        ids(&oru),
        [all[15].id.0, all[10].id.0, all[5].id.0, all[0].id.0]
    );
    let by_control = store
        .search(q(|q| q.control_id = Some("S7".into())))
        .await
        .unwrap();
    assert_eq!(ids(&by_control), [all[7].id.0]);
    let by_patient = store
        .search(q(|q| q.patient_id = Some("MRN-S8".into())))
        .await
        .unwrap();
    assert_eq!(ids(&by_patient), [all[8].id.0]);
    // Received in [30 s, 60 s): messages 3, 4, 5.
    let range = store
        .search(SearchQuery {
            received_from: Some(at(30)),
            received_until: Some(at(60)),
            ..SearchQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&range), [all[5].id.0, all[4].id.0, all[3].id.0]);
    let combined = store
        .search(SearchQuery {
            channel: Some("odd".into()),
            status: Some(MessageStatus::Delivered),
            ..SearchQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&combined), [all[3].id.0, all[1].id.0]);
    assert!(
        store
            .search(q(|q| q.control_id = Some("nope".into())))
            .await
            .unwrap()
            .messages
            .is_empty()
    );

    // Paging through everything: each message exactly once, newest first.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .search(SearchQuery {
                limit: 3,
                cursor: cursor.take(),
                ..SearchQuery::default()
            })
            .await
            .unwrap();
        assert!(page.messages.len() <= 3);
        seen.extend(ids(&page));
        match page.next {
            Some(next) => {
                // Cursors survive a round trip through text (URLs).
                cursor = Some(next.to_string().parse().unwrap());
            }
            None => break,
        }
    }
    let mut expected: Vec<i64> = all.iter().map(|g| g.id.0).collect();
    expected.push(filtered.id.0);
    expected.reverse();
    assert_eq!(seen, expected);
    // An exact multiple of the page size ends without an empty page.
    let exact = store
        .search(SearchQuery {
            channel: Some("odd".into()),
            limit: 5,
            ..SearchQuery::default()
        })
        .await
        .unwrap();
    let rest = store
        .search(SearchQuery {
            channel: Some("odd".into()),
            limit: 5,
            cursor: exact.next.clone(),
            ..SearchQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.messages.len(), 5);
    assert!(rest.next.is_none());
    assert!("garbage".parse::<crate::types::Cursor>().is_err());
}

// === retention ===

/// Age-based prune deletes settled messages only; pending, failed and dead letters stay.
pub async fn prune_by_age_keeps_unsettled<B: Backend>(backend: B) {
    let store = backend
        .open(StoreSettings::default().prune_chunk(2))
        .await
        .unwrap();
    let delivered: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..5 {
            let g = ingest(&store, message("ch", &format!("P{i}"), &["d"], at(i))).await;
            store
                .record_attempt(g.deliveries[0], at(10), AttemptResult::delivered())
                .await
                .unwrap();
            v.push(g);
        }
        v
    };
    let filtered = ingest(&store, message("ch", "PF", &[], at(5))).await;
    let duplicate = ingest(&store, message("ch", "P0", &["d"], at(6))).await;
    assert!(duplicate.duplicate_of.is_some());
    let pending = ingest(&store, message("ch", "PP", &["d"], at(7))).await;
    let failing = ingest(&store, message("ch", "PR", &["e"], at(8))).await;
    store
        .record_attempt(failing.deliveries[0], at(9), failed(1000))
        .await
        .unwrap();
    let dead_one = ingest(&store, message("ch", "PD", &["f"], at(9))).await;
    store
        .record_attempt(dead_one.deliveries[0], at(9), dead())
        .await
        .unwrap();
    // Half-delivered: one destination done, one not.
    let half = ingest(&store, message("ch", "PH", &["d", "g"], at(9))).await;
    store
        .record_attempt(half.deliveries[1], at(9), AttemptResult::delivered())
        .await
        .unwrap();
    let young = ingest(&store, message("ch", "PY", &["d"], at(500))).await;
    store
        .record_attempt(young.deliveries[0], at(501), AttemptResult::delivered())
        .await
        .unwrap();
    store
        .quarantine(NewQuarantine {
            channel: "ch".into(),
            received_at: at(1),
            peer: "p".into(),
            reason: "junk".into(),
            raw: vec![1, 2, 3].into(),
            ..NewQuarantine::default()
        })
        .await
        .unwrap();
    let audit_id = store
        .audit(AuditEntry {
            at: at(1),
            actor: "ops".into(),
            address: "10.0.0.1".into(),
            action: AuditAction::View,
            message_ids: vec![delivered[0].id],
            detail: String::new(),
        })
        .await
        .unwrap();

    // Everything received before 100 s that is settled goes.
    let report = store
        .prune(
            at(600),
            Retention {
                max_age: Some(Duration::from_secs(500)),
                max_total_bytes: None,
            },
        )
        .await
        .unwrap();
    let removed: Vec<MessageId> = delivered
        .iter()
        .map(|g| g.id)
        .chain([filtered.id, duplicate.id])
        .collect();
    assert_eq!(report.messages, removed.len() as u64);
    assert_eq!(report.quarantined, 1);
    let mut removed_bytes = 0;
    for i in 0..5 {
        removed_bytes += message("ch", &format!("P{i}"), &[], at(0)).raw.len() as u64;
    }
    removed_bytes += message("ch", "PF", &[], at(0)).raw.len() as u64;
    removed_bytes += message("ch", "P0", &[], at(0)).raw.len() as u64;
    assert_eq!(report.bytes, removed_bytes);
    for id in removed {
        assert!(store.message(id).await.unwrap().is_none(), "{id} pruned");
    }
    for (id, want) in [
        (pending.id, MessageStatus::Pending),
        (failing.id, MessageStatus::Failed),
        (dead_one.id, MessageStatus::DeadLetter),
        (half.id, MessageStatus::Pending),
        (young.id, MessageStatus::Delivered),
    ] {
        assert_eq!(status(&store, id).await, want, "{id} kept");
    }
    assert_eq!(
        head_ids(&store, "d", at(600)).await,
        [pending.id.0, half.id.0]
    );
    assert!(
        store
            .list_quarantine(10, None)
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    let audit = store.list_audit(10).await.unwrap();
    assert_eq!(audit.len(), 1, "audit log is not pruned");
    assert_eq!(audit[0].id, audit_id);
    // Nothing more to do: a second prune removes nothing.
    let again = store
        .prune(
            at(600),
            Retention {
                max_age: Some(Duration::from_secs(500)),
                max_total_bytes: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(again, crate::types::PruneReport::default());
    // Ids are never reused after a prune.
    let next = ingest(&store, message("ch", "NEW", &["d"], at(700))).await;
    assert!(next.id > young.id);
}

/// Size-based prune deletes settled messages oldest first until under budget, and stops
/// short of it rather than touch unsettled ones.
pub async fn prune_by_size_oldest_first<B: Backend>(backend: B) {
    let store = backend
        .open(StoreSettings::default().prune_chunk(3))
        .await
        .unwrap();
    let mut settled = Vec::new();
    let mut size = 0;
    for i in 0..10 {
        let m = message("ch", &format!("Q{i:02}"), &["d"], at(i));
        size = m.raw.len() as u64;
        let g = ingest(&store, m).await;
        store
            .record_attempt(g.deliveries[0], at(20), AttemptResult::delivered())
            .await
            .unwrap();
        settled.push(g.id);
    }
    let unsettled = ingest(&store, message("ch", "Q99", &["d"], at(0))).await;
    // 11 messages of equal size; keep 6 of them.
    let report = store
        .prune(
            at(30),
            Retention {
                max_age: None,
                max_total_bytes: Some(6 * size),
            },
        )
        .await
        .unwrap();
    assert_eq!(report.messages, 5);
    assert_eq!(report.bytes, 5 * size);
    for id in &settled[..5] {
        assert!(store.message(*id).await.unwrap().is_none());
    }
    for id in &settled[5..] {
        assert!(store.message(*id).await.unwrap().is_some());
    }
    // A budget below what unsettled messages need: every settled one goes, they stay.
    let report = store
        .prune(
            at(30),
            Retention {
                max_age: None,
                max_total_bytes: Some(0),
            },
        )
        .await
        .unwrap();
    assert_eq!(report.messages, 5);
    assert_eq!(status(&store, unsettled.id).await, MessageStatus::Pending);
    assert_eq!(head_ids(&store, "d", at(30)).await, [unsettled.id.0]);
}

// === durability ===

/// After close (or a drop without close) and reopen, queues come back in order,
/// including deliveries that were handed out but not recorded (in flight at a crash).
pub async fn restart_keeps_queues<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let mut expected = Vec::new();
    for i in 0..6 {
        expected.push(ingest(&store, message("ch", &format!("K{i}"), &["d"], at(i))).await);
    }
    store
        .record_attempt(
            expected[0].deliveries[0],
            at(10),
            AttemptResult::delivered(),
        )
        .await
        .unwrap();
    store
        .record_attempt(expected[1].deliveries[0], at(10), failed(20))
        .await
        .unwrap();
    // Handed out, never recorded: in flight when the "crash" comes.
    let in_flight = store.next_pending("d", at(20), 3).await.unwrap();
    assert_eq!(in_flight.len(), 3);
    store.close().await.unwrap();
    drop(store);

    let store = fresh(&backend).await;
    let ids: Vec<i64> = expected[1..].iter().map(|g| g.id.0).collect();
    assert_eq!(head_ids(&store, "d", at(20)).await, ids);
    assert!(
        head_ids(&store, "d", at(19)).await.is_empty(),
        "retry time kept"
    );
    let got = store.next_pending("d", at(20), 3).await.unwrap();
    assert_eq!(got, in_flight);
    // Drop without close: what returned Ok is there after reopening.
    let late = ingest(&store, message("ch", "K-late", &["d"], at(30))).await;
    drop(store);
    let store = fresh(&backend).await;
    let mut with_late = ids.clone();
    with_late.push(late.id.0);
    assert_eq!(head_ids(&store, "d", at(30)).await, with_late);
    // Ids keep growing across restarts.
    let after = ingest(&store, message("ch", "K-after", &["d"], at(31))).await;
    assert!(after.id > late.id && after.deliveries[0] > late.deliveries[0]);
}

/// Many tasks ingesting at once: every ingest gets its own id and is stored, and each
/// task's messages are queued in the order that task sent them.
pub async fn concurrent_ingest<B: Backend>(backend: B) {
    let store = Arc::new(
        backend
            .open(StoreSettings::default().max_batch(16).write_queue(8))
            .await
            .unwrap(),
    );
    const TASKS: usize = 32;
    const EACH: usize = 25;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                let g = store
                    .ingest(message("ch", &format!("T{t}-{i}"), &["d"], at(i as i64)))
                    .await
                    .unwrap();
                ids.push(g.id.0);
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        let ids = h.await.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "per-sender order kept");
        all.extend(ids);
    }
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), TASKS * EACH);
    let queue = head_ids(&*store, "d", at(100)).await;
    assert_eq!(queue.len(), TASKS * EACH);
    let mut sorted = all.clone();
    sorted.sort_unstable();
    assert_eq!(queue, sorted, "queue order is arrival (id) order");
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats[0].pending, (TASKS * EACH) as u64);
}

// === leases ===

/// Acquire, conflict, expiry, renew and release.
pub async fn leases<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let ttl = Duration::from_secs(30);
    assert!(
        store
            .acquire_lease("d", "node-a", ttl, at(0))
            .await
            .unwrap()
    );
    assert!(
        !store
            .acquire_lease("d", "node-b", ttl, at(10))
            .await
            .unwrap()
    );
    assert!(
        store
            .acquire_lease("d", "node-a", ttl, at(10))
            .await
            .unwrap(),
        "re-acquire by the holder extends"
    );
    assert!(
        store
            .acquire_lease("e", "node-b", ttl, at(10))
            .await
            .unwrap()
    );
    let leases = store.leases().await.unwrap();
    assert_eq!(leases.len(), 2);
    assert_eq!(
        (leases[0].destination.as_str(), leases[0].node_id.as_str()),
        ("d", "node-a")
    );
    assert_eq!(leases[0].expires_at, at(40));
    // Renew: only the holder, only before expiry.
    assert!(store.renew_lease("d", "node-a", ttl, at(35)).await.unwrap());
    assert_eq!(store.leases().await.unwrap()[0].expires_at, at(65));
    assert!(!store.renew_lease("d", "node-b", ttl, at(36)).await.unwrap());
    assert!(
        !store
            .acquire_lease("d", "node-b", ttl, at(64))
            .await
            .unwrap()
    );
    // Expired: anyone may take it, and the old holder can no longer renew.
    assert!(
        store
            .acquire_lease("d", "node-b", ttl, at(65))
            .await
            .unwrap()
    );
    assert!(!store.renew_lease("d", "node-a", ttl, at(66)).await.unwrap());
    assert_eq!(store.leases().await.unwrap()[0].node_id, "node-b");
    // Release: only by the holder.
    assert!(!store.release_lease("d", "node-a").await.unwrap());
    assert!(store.release_lease("d", "node-b").await.unwrap());
    assert!(
        store
            .acquire_lease("d", "node-a", ttl, at(67))
            .await
            .unwrap()
    );
    assert!(!store.renew_lease("x", "node-a", ttl, at(67)).await.unwrap());
    let bad = store.acquire_lease("", "node-a", ttl, at(0)).await;
    assert!(matches!(bad, Err(StoreError::InvalidInput(_))));
}

// === audit ===

/// The audit log keeps every entry, newest first.
pub async fn audit_log<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let actions = [
        AuditAction::Search,
        AuditAction::View,
        AuditAction::Replay,
        AuditAction::Inject,
        AuditAction::Other("export".into()),
    ];
    let mut ids = Vec::new();
    for (i, action) in actions.iter().enumerate() {
        let entry = AuditEntry {
            at: at(i as i64),
            actor: "token-ops".into(),
            address: "192.0.2.1:5555".into(),
            action: action.clone(),
            message_ids: (0..i as i64).map(MessageId).collect(),
            detail: format!("step {i}"),
        };
        ids.push((store.audit(entry.clone()).await.unwrap(), entry));
    }
    let listed = store.list_audit(3).await.unwrap();
    assert_eq!(listed.len(), 3);
    for (rec, (id, entry)) in listed.iter().zip(ids.iter().rev()) {
        assert_eq!(rec.id, *id);
        assert_eq!(&rec.entry, entry);
    }
    assert_eq!(store.list_audit(100).await.unwrap().len(), 5);
}

// === metrics ===

/// Queue depth, dead letters and the oldest queued arrival per destination.
pub async fn queue_stats<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let m1 = ingest(&store, message("ch", "Q1", &["a", "b"], at(5))).await;
    ingest(&store, message("ch", "Q2", &["a"], at(7))).await;
    let m3 = ingest(&store, message("ch", "Q3", &["b"], at(3))).await;
    store
        .record_attempt(m1.deliveries[1], at(8), AttemptResult::delivered())
        .await
        .unwrap();
    store
        .record_attempt(m3.deliveries[0], at(8), dead())
        .await
        .unwrap();
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[0].destination, "a");
    assert_eq!((stats[0].pending, stats[0].dead_lettered), (2, 0));
    assert_eq!(stats[0].oldest_pending_received_at, Some(at(5)));
    assert_eq!(stats[1].destination, "b");
    assert_eq!((stats[1].pending, stats[1].dead_lettered), (0, 1));
    assert_eq!(stats[1].oldest_pending_received_at, None);
    store
        .record_attempt(m1.deliveries[0], at(9), failed(100))
        .await
        .unwrap();
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(
        stats[0].pending, 2,
        "a failed delivery waiting for retry is still queued"
    );
}

// === errors and lifecycle ===

/// Malformed requests fail with `InvalidInput` and store nothing.
pub async fn invalid_input<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    let no_channel = store.ingest(message("", "I1", &["d"], at(0))).await;
    assert!(
        matches!(no_channel, Err(StoreError::InvalidInput(_))),
        "{no_channel:?}"
    );
    let empty_dest = store.ingest(message("ch", "I2", &["d", ""], at(0))).await;
    assert!(matches!(empty_dest, Err(StoreError::InvalidInput(_))));
    assert!(
        store
            .search(SearchQuery::default())
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert!(store.queue_stats().await.unwrap().is_empty());
    assert!(matches!(
        "x12".parse::<crate::types::Cursor>(),
        Err(StoreError::InvalidInput(_))
    ));
    // The failed requests did not poison the batch they were in: others still commit.
    let ok = ingest(&store, message("ch", "I3", &["d"], at(0))).await;
    assert_eq!(head_ids(&store, "d", at(0)).await, [ok.id.0]);
}

/// Health succeeds on an open store; after close, everything fails with `Closed`.
pub async fn health_and_close<B: Backend>(backend: B) {
    let store = fresh(&backend).await;
    store.health().await.unwrap();
    ingest(&store, message("ch", "Z1", &["d"], at(0))).await;
    store.close().await.unwrap();
    assert!(matches!(store.health().await, Err(StoreError::Closed)));
    assert!(matches!(
        store.ingest(message("ch", "Z2", &["d"], at(0))).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.next_pending("d", at(0), 1).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.close().await, Err(StoreError::Closed)));
    let err = StoreError::Closed;
    assert!(err.is_store_failure());
    assert!(!StoreError::InvalidInput(String::new()).is_store_failure());
}
