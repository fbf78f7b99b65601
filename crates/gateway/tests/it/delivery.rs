//! The delivery worker sends each queued message once, in order, while the records of the
//! attempts before it are still being written (see `deliver::Records`).

use std::time::Duration;

use causeway_message::ack::AckCode;
use causeway_mllp::client::{Client, ClientSettings};

use crate::support::{accept_all, adt, receiver, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_sent_once_and_in_order() {
    let lab = receiver(accept_all).await;
    let (lab, arrived) = (lab.addr, lab.arrived);
    let (gateway, running, _dir) = start(|_| {
        format!(
            r#"
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
        )
    })
    .await;
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
