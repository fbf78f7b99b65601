//! `ack = "after_delivery"`: the sender gets the first destination's answer, or AE when it
//! does not come in time; either way the message is stored and delivered later.

use std::time::Duration;

use causeway_message::ack::{AckCode, Outcome};
use causeway_mllp::client::{Client, ClientSettings};

use crate::support::{adt, receiver, start};

#[tokio::test]
async fn after_delivery_relays_the_destination_answer_or_times_out() {
    // 1st message: AA at once; 2nd: AE; 3rd: AA after 3 s, longer than the 1 s ack_timeout.
    let lab = receiver(|n| match n {
        0 => (Outcome::Accept, Duration::ZERO),
        1 => (Outcome::Error, Duration::ZERO),
        _ => (Outcome::Accept, Duration::from_secs(3)),
    })
    .await
    .addr;
    let (gateway, running, _dir) = start(|_| {
        format!(
            r#"
[admin]
disabled = true
[[channel]]
name = "adt"
ack = "after_delivery"
ack_timeout = "1s"
[channel.source]
bind = "127.0.0.1:0"
[[channel.destination]]
name = "lab"
type = "mllp"
to = "{lab}"
retry_initial = "100ms"
retry_max = "200ms"
"#
        )
    })
    .await;
    let mut settings = ClientSettings::default();
    settings.ack_timeout = Duration::from_secs(10);
    let mut client = Client::new(gateway.listening["adt"].to_string(), settings);

    let first = client.send(&adt("A1")).await.unwrap().reply.unwrap();
    assert_eq!(first.code, AckCode::AA);
    assert_eq!(
        first.text.as_deref(),
        Some("downstream says 0"),
        "the destination's text is relayed"
    );

    let second = client.send(&adt("A2")).await.unwrap().reply.unwrap();
    assert_eq!(second.code, AckCode::AE, "the destination's AE is relayed");

    // The retry of A2 (AA after 3 s) blocks the queue; A3 waits behind it: AE on timeout,
    // saying the message is stored and will be delivered.
    let third = client.send(&adt("A3")).await.unwrap().reply.unwrap();
    assert_eq!(third.code, AckCode::AE);
    assert!(
        third.error.unwrap().text.contains("stored"),
        "the AE says the message is kept"
    );

    // Both are delivered later all the same.
    drained(&gateway, "queue did not drain").await;
    // The destination's whole ACK is kept with the attempt that it acknowledged.
    let page = gateway
        .store
        .search(causeway_store::SearchQuery {
            control_id: Some("A1".into()),
            limit: 1,
            ..causeway_store::SearchQuery::default()
        })
        .await
        .unwrap();
    let record = gateway
        .store
        .message(page.messages[0].id)
        .await
        .unwrap()
        .unwrap();
    match &record.deliveries[0].attempts[0].result {
        causeway_store::AttemptResult::Delivered { ack_raw, .. } => {
            let ack = String::from_utf8_lossy(ack_raw.as_deref().unwrap_or_default()).into_owned();
            assert!(
                ack.starts_with("MSH|") && ack.contains("MSA|AA|A1|downstream says 0"),
                "{ack:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    running.stop(&gateway).await;
}

#[tokio::test]
async fn custom_framing_bytes_on_both_sides() {
    // The gateway's own listener as the MLLP destination of a second channel would need two
    // gateways; instead one channel with STX/ETX framing, and a client using the same bytes.
    let (gateway, running, _dir) = start(|root| {
        format!(
            r#"
[admin]
disabled = true
[[channel]]
name = "stx"
[channel.source]
bind = "127.0.0.1:0"
framing = {{ start = 0x02, end = 0x03, trailer = 0x0D }}
[[channel.destination]]
name = "files"
type = "file"
directory = '{root}/out'
"#
        )
    })
    .await;
    let mut settings = ClientSettings::default();
    settings.framing = causeway_mllp::frame::FramingOptions::default().with_bytes(0x02, 0x03, 0x0D);
    let mut client = Client::new(gateway.listening["stx"].to_string(), settings);
    let reply = client.send(&adt("S1")).await.unwrap().reply.unwrap();
    assert_eq!(reply.code, AckCode::AA);
    running.stop(&gateway).await;
}

/// MLLP Release 2 from the configuration: a source with `commit_acks` sends a commit ACK
/// block once the message is stored, and an MLLP destination with `accept_commit_ack`
/// counts a receiver's commit ACK as delivery without waiting for an HL7 ACK (this
/// receiver never sends one; without the option, every attempt would time out).
#[tokio::test]
async fn release_2_commit_acks_on_both_sides() {
    // A receiver that answers with a commit ACK block only.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    let mut settings = causeway_mllp::server::ServerSettings::default();
    settings.commit_acks = true;
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = got.clone();
    let handler = move |_msg: bytes::Bytes, _conn: causeway_mllp::server::ConnectionInfo| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { causeway_mllp::server::Reply::Nothing }
    };
    tokio::spawn(causeway_mllp::server::run(
        listener,
        handler,
        settings,
        std::future::pending::<()>(),
    ));
    let (gateway, running, _dir) = start(|_| {
        format!(
            r#"
[admin]
disabled = true
[[channel]]
name = "r2"
[channel.source]
bind = "127.0.0.1:0"
commit_acks = true
[[channel.destination]]
name = "lab"
type = "mllp"
to = "{receiver}"
accept_commit_ack = true
ack_timeout = "2s"
retry_initial = "50ms"
retry_max = "100ms"
"#
        )
    })
    .await;
    let mut settings = ClientSettings::default();
    settings.accept_commit_ack = true;
    let mut client = Client::new(gateway.listening["r2"].to_string(), settings);
    for id in ["C1", "C2"] {
        let delivery = client.send(&adt(id)).await.unwrap();
        assert_eq!(
            delivery.status,
            causeway_mllp::client::AckStatus::Accepted,
            "{id}"
        );
        assert!(
            delivery.reply.is_none(),
            "{id}: a commit ACK block, not an HL7 ACK"
        );
    }
    drained(&gateway, "not delivered on the receiver's commit ACK").await;
    assert_eq!(
        got.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "each sent once"
    );
    running.stop(&gateway).await;
}

/// Waits up to 30 s for every queue of `gateway` to be empty, else fails with `what`.
async fn drained(gateway: &causeway_gateway::Gateway, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats = gateway.store.queue_stats().await.unwrap();
        if stats.iter().all(|s| s.pending == 0) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
