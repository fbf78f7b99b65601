//! The delivery worker sends each queued message once, in order, while the records of the
//! attempts before it are still being written (see `deliver::Records`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use causeway_gateway::{Config, Gateway};
use causeway_message::Message;
use causeway_message::ack::{Ack, AckCode, Outcome};
use causeway_mllp::client::{Client, ClientSettings};
use causeway_mllp::server::{self, ConnectionInfo, Reply, ServerSettings};
use tokio::net::TcpListener;

/// An MLLP receiver that accepts everything and keeps the control ids in arrival order.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrived = Arc::new(Mutex::new(Vec::new()));
    let seen = arrived.clone();
    let handler = move |msg: Bytes, _conn: ConnectionInfo| {
        let seen = seen.clone();
        async move {
            let Ok(m) = Message::parse(&msg) else {
                return Reply::Close;
            };
            let control_id =
                String::from_utf8_lossy(m.control_id().unwrap_or_default()).into_owned();
            seen.lock().unwrap().push(control_id);
            Reply::from(
                Ack::for_message(&m, Outcome::Accept)
                    .timestamp(causeway_mllp::ack::hl7_timestamp(SystemTime::now()))
                    .encode(),
            )
        }
    };
    tokio::spawn(server::run(
        listener,
        handler,
        ServerSettings::default(),
        std::future::pending::<()>(),
    ));
    (addr, arrived)
}

fn adt(id: &str) -> Vec<u8> {
    format!("MSH|^~\\&|EHR|H|LAB|H|20261127120000||ADT^A01|{id}|P|2.5\rPID|1||{id}^^^MRN\r")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_sent_once_and_in_order() {
    let (lab, arrived) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let toml = format!(
        r#"
[store]
path = '{root}/data'
[admin]
disabled = true
[[channel]]
name = "adt"
[channel.source]
bind = "127.0.0.1:0"
[[channel.destination]]
name = "lab"
type = "mllp"
to = "{lab}"
"#
    );
    let (gateway, running) = Gateway::start(Config::parse(&toml).unwrap()).await.unwrap();
    let addr = gateway.listening["adt"].to_string();
    // Four senders, so the queue builds up and the worker reads it in batches.
    const SENDERS: usize = 4;
    const EACH: usize = 150;
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let addr = addr.clone();
        senders.push(tokio::spawn(async move {
            let mut client = Client::new(addr, ClientSettings::default());
            for n in 0..EACH {
                let reply = client
                    .send(&adt(&format!("S{s}-{n:04}")))
                    .await
                    .unwrap()
                    .reply
                    .unwrap();
                assert_eq!(reply.code, AckCode::AA);
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while gateway
        .store
        .queue_stats()
        .await
        .unwrap()
        .iter()
        .any(|s| s.pending > 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop(&gateway).await;

    let arrived = arrived.lock().unwrap().clone();
    assert_eq!(
        arrived.len(),
        SENDERS * EACH,
        "each message arrives exactly once (no resend of a message whose record was still being written)"
    );
    for s in 0..SENDERS {
        let mine: Vec<&String> = arrived
            .iter()
            .filter(|id| id.starts_with(&format!("S{s}-")))
            .collect();
        assert_eq!(mine.len(), EACH);
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "sender {s}'s messages arrive in the order they were acknowledged"
        );
    }
}
