//! What the gateway does with what it receives, seen from outside: a message no destination
//! wants, a resend, a store that refuses writes, and retention by the housekeeping task.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use causeway_gateway::gateway::Running;
use causeway_gateway::metrics::{ChannelLabel, Metrics};
use causeway_gateway::{Config, Gateway};
use causeway_message::ack::AckCode;
use causeway_mllp::client::{Client, ClientSettings};
use causeway_store::{MessageStatus, SearchQuery};

use crate::support::adt;

/// An ORU^R01 with control id `id`.
fn oru(id: &str) -> Vec<u8> {
    format!("MSH|^~\\&|LIS|H|EHR|H|20261207120000||ORU^R01|{id}|P|2.5\rOBX|1|ST|X||1\r")
        .into_bytes()
}

/// Starts a gateway on `root` (its store in `root/data`): channel `adt` whose one file
/// destination `results` takes ORU^R01 only; `store` goes into `[store]`.
async fn start_in(root: &Path, store: &str) -> (Arc<Gateway>, Running) {
    let root = root.display();
    let toml = format!(
        r#"
[store]
path = '{root}/data'
{store}
[admin]
disabled = true
[[channel]]
name = "adt"
[channel.source]
bind = "127.0.0.1:0"
[[channel.destination]]
name = "results"
type = "file"
directory = '{root}/results'
[channel.destination.filter]
message_type = ["ORU^R01"]
"#
    );
    Gateway::start(Config::parse(&toml).unwrap()).await.unwrap()
}

/// Sends `message` and returns the reply's code, with its ERR text if any.
async fn send(gateway: &Gateway, message: &[u8]) -> (AckCode, Option<String>) {
    let mut client = Client::new(
        gateway.listening["adt"].to_string(),
        ClientSettings::default(),
    );
    let reply = client.send(message).await.unwrap().reply.unwrap();
    client.close().await;
    (reply.code, reply.error.map(|e| e.text))
}

/// The statuses of the stored messages with MSH-10 `control_id`, newest first.
async fn statuses(gateway: &Gateway, control_id: &str) -> Vec<MessageStatus> {
    let page = gateway
        .store
        .search(SearchQuery {
            control_id: Some(control_id.to_owned()),
            limit: 10,
            ..SearchQuery::default()
        })
        .await
        .unwrap();
    page.messages.iter().map(|m| m.status).collect()
}

fn count(metrics: &Metrics, family: &str) -> u64 {
    let label = ChannelLabel {
        channel: "adt".into(),
    };
    let family = match family {
        "received" => &metrics.received,
        "filtered" => &metrics.filtered,
        "duplicates" => &metrics.duplicates,
        "store_failures" => &metrics.store_failures,
        other => panic!("{other}"),
    };
    family.get_or_create(&label).get()
}

/// A message no destination wants is stored, acknowledged and marked filtered; its resend
/// is acknowledged again, recorded as a duplicate and counted; a routed message is
/// delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_and_resent_messages_are_stored_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, running) = start_in(dir.path(), "").await;
    assert_eq!(send(&gateway, &adt("F1")).await.0, AckCode::AA);
    assert_eq!(
        send(&gateway, &adt("F1")).await.0,
        AckCode::AA,
        "the resend"
    );
    assert_eq!(send(&gateway, &oru("R1")).await.0, AckCode::AA);
    assert_eq!(
        statuses(&gateway, "F1").await,
        [MessageStatus::Duplicate, MessageStatus::Filtered]
    );
    let m = &gateway.metrics;
    assert_eq!(
        (
            count(m, "received"),
            count(m, "filtered"),
            count(m, "duplicates")
        ),
        (3, 1, 1)
    );
    let results = dir.path().join("results");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while statuses(&gateway, "R1").await != [MessageStatus::Delivered] {
        assert!(tokio::time::Instant::now() < deadline, "R1 not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let files = std::fs::read_dir(&results).unwrap().count();
    assert_eq!(files, 1, "only the ORU is written");
    running.stop(&gateway).await;
}

/// A store that refuses a write (as a full disk would) gets the sender an AE saying the
/// message was not stored, and a count; the gateway goes on, and once the store takes
/// writes again the resend is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_is_answered_ae_and_the_gateway_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, running) = start_in(dir.path(), "").await;
    assert_eq!(send(&gateway, &oru("S1")).await.0, AckCode::AA);
    let db = rusqlite::Connection::open(dir.path().join("data/causeway.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse_messages BEFORE INSERT ON messages \
         BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;",
    )
    .unwrap();
    let (code, text) = send(&gateway, &oru("S2")).await;
    assert_eq!(code, AckCode::AE);
    let text = text.unwrap_or_default();
    assert!(
        text.contains("not stored") && text.contains("again"),
        "{text}"
    );
    assert_eq!(count(&gateway.metrics, "store_failures"), 1);

    db.execute_batch("DROP TRIGGER refuse_messages;").unwrap();
    assert_eq!(
        send(&gateway, &oru("S2")).await.0,
        AckCode::AA,
        "the resend"
    );
    assert_eq!(statuses(&gateway, "S2").await.len(), 1, "stored once");
    running.stop(&gateway).await;
}

/// The housekeeping task prunes delivered messages past `store.max_age` (it runs at start,
/// then every minute). That queued and dead-lettered messages are kept is the store's
/// conformance suite's to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_housekeeping_task_prunes_delivered_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = "max_age = \"1s\"";
    let (gateway, running) = start_in(dir.path(), store).await;
    assert_eq!(send(&gateway, &oru("P1")).await.0, AckCode::AA);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while statuses(&gateway, "P1").await != [MessageStatus::Delivered] {
        assert!(tokio::time::Instant::now() < deadline, "P1 not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop(&gateway).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let (gateway, running) = start_in(dir.path(), store).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !statuses(&gateway, "P1").await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "P1 was not pruned at start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop(&gateway).await;
}
