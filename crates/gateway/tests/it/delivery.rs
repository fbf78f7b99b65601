//! The delivery worker sends each queued message once, in order, while the records of the
//! attempts before it are still being written (see `deliver::Records`).

use std::time::Duration;

use causeway_message::ack::AckCode;
use causeway_mllp::client::{Client, ClientSettings};

use crate::support::{accept_all, adt, adt_channel, receiver, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_sent_once_and_in_order() {
    let lab = receiver(accept_all).await;
    let (lab, arrived) = (lab.addr, lab.arrived);
    let (gateway, running, _dir) = start(|_| {
        adt_channel(&format!(
            r#"
[[channel.destination]]
name = "lab"
type = "mllp"
to = "{lab}"
"#
        ))
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
                send_acked(&mut client, &format!("S{s}-{n:04}")).await;
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

/// A file destination writes its queue in runs that share their syncs; a file that cannot
/// be written still stops everything behind it, and the run goes on, in order, once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_run_stops_at_a_file_that_cannot_be_written() {
    let mut outbox = std::path::PathBuf::new();
    let (gateway, running, _dir) = start(|root| {
        outbox = std::path::Path::new(root).join("outbox");
        // A directory where C3's file should go (a new store numbers the messages from 1):
        // its rename fails until the directory is removed.
        std::fs::create_dir_all(outbox.join("3-C3.hl7")).unwrap();
        adt_channel(&format!(
            r#"
[[channel.destination]]
name = "files"
type = "file"
directory = '{}'
filename = "{{id}}-{{control_id}}.hl7"
retry_initial = "20ms"
retry_max = "100ms"
"#,
            outbox.display()
        ))
    })
    .await;
    let mut client = Client::new(
        gateway.listening["adt"].to_string(),
        ClientSettings::default(),
    );
    for n in 1..=6 {
        send_acked(&mut client, &format!("C{n}")).await;
    }
    let name = |n: usize| format!("{n}-C{n}.hl7");
    let is_file = |n: usize| outbox.join(name(n)).is_file();
    wait_for("C1 and C2 were not written", || is_file(1) && is_file(2)).await;
    // Several retries of C3 later, nothing behind it has been written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !(3..=6).any(is_file),
        "a message went before the failed head"
    );
    std::fs::remove_dir(outbox.join(name(3))).unwrap();
    wait_for("the queue did not catch up", || (1..=6).all(is_file)).await;
    for n in 1..=6 {
        let written = std::fs::read(outbox.join(name(n))).unwrap();
        assert_eq!(written, adt(&format!("C{n}")));
    }
    let mut names: Vec<String> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 6, "no temporary file is left: {names:?}");
    running.stop(&gateway).await;
}

/// Waits up to 20 s for `done`, else fails with `what`.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `adt(id)` and expects its AA.
async fn send_acked(client: &mut Client, id: &str) {
    let reply = client.send(&adt(id)).await.unwrap().reply.unwrap();
    assert_eq!(reply.code, AckCode::AA, "{id}");
}
