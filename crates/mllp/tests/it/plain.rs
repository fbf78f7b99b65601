//! Plain TCP: round trips, framing over the wire, limits, timeouts, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use causeway_message::ack::{AckCode, Outcome};
use causeway_mllp::client::{AckStatus, Backoff, Client, ClientError, ClientSettings};
use causeway_mllp::frame::{Frame, FramingOptions};
use causeway_mllp::server::{ConnectionInfo, Reply, ServerSettings};
use tokio::time::Instant;

use crate::support::{RawPeer, Recorder, TestServer, ack_for, adt, framed};

fn quick_client() -> ClientSettings {
    let mut settings = ClientSettings::default();
    settings.connect_timeout = Duration::from_secs(5);
    settings.ack_timeout = Duration::from_secs(5);
    settings.backoff.initial = Duration::from_millis(10);
    settings
}

#[tokio::test]
async fn round_trip_keeps_the_connection_open() {
    let recorder = Recorder::default();
    let server = TestServer::start(recorder.handler(), ServerSettings::default()).await;
    let mut client = Client::new(server.target(), quick_client());

    let first = client.send(&adt("MSG1")).await.expect("first ACK");
    assert_eq!(first.status, AckStatus::Accepted);
    assert_eq!(first.control_id, "MSG1");
    let reply = first.reply.expect("HL7 ACK");
    assert_eq!(reply.code, AckCode::AA);
    assert_eq!(reply.acked_control_id, b"MSG1");

    let second = client.send(&adt("MSG2")).await.expect("second ACK");
    assert_eq!(second.control_id, "MSG2");
    assert_eq!(recorder.count(), 2);
    assert_eq!(
        recorder.distinct_connections(),
        1,
        "one connection for both messages"
    );
    server.stop().await;
}

#[tokio::test]
async fn many_frames_in_one_read_are_answered_in_order() {
    let recorder = Recorder::default();
    let server = TestServer::start(recorder.handler(), ServerSettings::default()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    let mut burst = b"\r\n".to_vec();
    for i in 1..=5 {
        burst.extend(framed(&adt(&format!("B{i}"))));
    }
    peer.write(&burst).await;
    for i in 1..=5 {
        let ack = peer.ack().await;
        assert_eq!(ack.code, AckCode::AA);
        assert_eq!(ack.acked_control_id, format!("B{i}").as_bytes());
    }
    server.stop().await;
}

#[tokio::test]
async fn frame_split_byte_by_byte_over_the_wire() {
    let recorder = Recorder::default();
    let server = TestServer::start(recorder.handler(), ServerSettings::default()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.stream.set_nodelay(true).expect("nodelay");
    for byte in framed(&adt("SLOW")) {
        peer.write(&[byte]).await;
    }
    assert_eq!(peer.ack().await.acked_control_id, b"SLOW");
    server.stop().await;
}

#[tokio::test]
async fn oversized_frame_gets_an_ar_and_the_connection_stays_usable() {
    let recorder = Recorder::default();
    let mut settings = ServerSettings::default();
    settings.framing = FramingOptions::default().with_max_frame_len(1024);
    let server = TestServer::start(recorder.handler(), settings).await;
    let mut peer = RawPeer::connect(server.addr).await;

    let mut big = adt("BIG1");
    big.extend(std::iter::repeat_n(b'X', 100_000));
    peer.write(&framed(&big)).await;
    let nak = peer.ack().await;
    assert_eq!(nak.code, AckCode::AR);
    assert_eq!(
        nak.acked_control_id, b"BIG1",
        "NAK echoes the control id from the frame head"
    );
    assert!(nak.error.is_some(), "NAK carries an ERR segment");

    peer.write(&framed(&adt("AFTER"))).await;
    let ack = peer.ack().await;
    assert_eq!(ack.code, AckCode::AA);
    assert_eq!(ack.acked_control_id, b"AFTER");
    assert_eq!(
        recorder.count(),
        1,
        "the oversized frame never reached the handler"
    );
    server.stop().await;
}

#[tokio::test]
async fn unparseable_payload_gets_an_ar() {
    let recorder = Recorder::default();
    let server = TestServer::start(recorder.handler(), ServerSettings::default()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.write(&framed(b"this is not HL7")).await;
    let nak = peer.ack().await;
    assert_eq!(nak.code, AckCode::AR);
    peer.write(&framed(&adt("OK1"))).await;
    assert_eq!(peer.ack().await.code, AckCode::AA);
    assert_eq!(recorder.count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn strict_framing_refuses_a_missing_trailer() {
    let recorder = Recorder::default();
    let mut settings = ServerSettings::default();
    settings.framing = FramingOptions::strict();
    let server = TestServer::start(recorder.handler(), settings).await;
    let mut peer = RawPeer::connect(server.addr).await;
    let mut wire = vec![0x0b];
    wire.extend(adt("NOCR"));
    wire.extend([0x1c, b'\n']);
    wire.extend(framed(&adt("GOOD")));
    peer.write(&wire).await;
    let nak = peer.ack().await;
    assert_eq!(nak.code, AckCode::AR);
    assert_eq!(nak.acked_control_id, b"NOCR");
    assert_eq!(peer.ack().await.acked_control_id, b"GOOD");
    server.stop().await;
}

#[tokio::test]
async fn connection_over_the_limit_is_closed() {
    let recorder = Recorder::default();
    let mut settings = ServerSettings::default();
    settings.max_connections = 1;
    let server = TestServer::start(recorder.handler(), settings).await;
    let mut first = Client::new(server.target(), quick_client());
    first.send(&adt("C1")).await.expect("first client served");

    let mut second = RawPeer::connect(server.addr).await;
    assert!(second.closed().await, "second connection refused");

    first
        .send(&adt("C2"))
        .await
        .expect("first client still served");
    first.close().await;
    // The slot frees once the server notices the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut third = Client::new(server.target(), quick_client());
        if third.send(&adt("C3")).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let recorder = Recorder::default();
    let mut settings = ServerSettings::default();
    settings.idle_timeout = Some(Duration::from_secs(60));
    let server = TestServer::start(recorder.handler(), settings).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.write(&framed(&adt("I1"))).await;
    peer.ack().await;
    let start = Instant::now();
    assert!(peer.closed().await);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(60), "closed after {waited:?}");
    assert!(waited < Duration::from_secs(61), "closed after {waited:?}");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn slow_frame_is_cut_after_the_read_timeout() {
    let recorder = Recorder::default();
    let mut settings = ServerSettings::default();
    settings.read_timeout = Duration::from_secs(10);
    settings.idle_timeout = None;
    let server = TestServer::start(recorder.handler(), settings).await;
    let mut peer = RawPeer::connect(server.addr).await;
    let start = Instant::now();
    peer.write(b"\x0bMSH|^~\\&|started but never").await;
    assert!(peer.closed().await);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "{waited:?}"
    );
    assert_eq!(recorder.count(), 0);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_the_message_in_hand_finish() {
    let started = Arc::new(tokio::sync::Notify::new());
    let notify = started.clone();
    let handler = move |msg: Bytes, _conn: ConnectionInfo| {
        let notify = notify.clone();
        async move {
            notify.notify_one();
            tokio::time::sleep(Duration::from_secs(5)).await;
            ack_for(&msg, Outcome::Accept)
        }
    };
    let mut settings = ServerSettings::default();
    settings.grace_period = Duration::from_secs(30);
    let mut server = TestServer::start(handler, settings).await;
    let mut busy = RawPeer::connect(server.addr).await;
    let mut idle = RawPeer::connect(server.addr).await;
    busy.write(&framed(&adt("SLOW1"))).await;
    started.notified().await;

    server.signal_stop();
    assert!(idle.closed().await, "idle connection closed at shutdown");
    let ack = busy.ack().await;
    assert_eq!(
        ack.acked_control_id, b"SLOW1",
        "in-flight message still acknowledged"
    );
    assert!(busy.closed().await, "then the connection closes");
    server.join().await;
    assert!(
        tokio::net::TcpStream::connect(busy.stream.peer_addr().expect("addr"))
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_aborts_connections_after_the_grace_period() {
    let handler = |msg: Bytes, _conn: ConnectionInfo| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        ack_for(&msg, Outcome::Accept)
    };
    let mut settings = ServerSettings::default();
    settings.grace_period = Duration::from_secs(2);
    let mut server = TestServer::start(handler, settings).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.write(&framed(&adt("STUCK"))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    server.signal_stop();
    assert!(peer.closed().await, "aborted connection closes");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    server.join().await;
}

#[tokio::test]
async fn client_reconnects_when_the_server_closed_an_idle_connection() {
    let recorder = Recorder::default();
    let mut settings = ServerSettings::default();
    settings.idle_timeout = Some(Duration::from_millis(100));
    let server = TestServer::start(recorder.handler(), settings).await;
    let mut client = Client::new(server.target(), quick_client());
    client.send(&adt("R1")).await.expect("first");
    tokio::time::sleep(Duration::from_millis(400)).await;
    client
        .send(&adt("R2"))
        .await
        .expect("second, after reconnect");
    assert_eq!(recorder.distinct_connections(), 2);
    server.stop().await;
}

#[tokio::test]
async fn ack_for_another_message_is_an_error() {
    let handler =
        |_msg: Bytes, _conn: ConnectionInfo| async move { ack_for(&adt("OTHER"), Outcome::Accept) };
    let server = TestServer::start(handler, ServerSettings::default()).await;
    let mut client = Client::new(server.target(), quick_client());
    let err = client.send(&adt("MINE")).await.expect_err("mismatch");
    match err {
        ClientError::ControlIdMismatch { sent, received } => {
            assert_eq!(sent, "MINE");
            assert_eq!(received, "OTHER");
        }
        other => panic!("expected mismatch, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn error_and_reject_acks_are_classified() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let handler = move |msg: Bytes, _conn: ConnectionInfo| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let outcome = if n == 0 {
                Outcome::Error
            } else {
                Outcome::Reject
            };
            ack_for(&msg, outcome)
        }
    };
    let server = TestServer::start(handler, ServerSettings::default()).await;
    let mut client = Client::new(server.target(), quick_client());
    assert_eq!(
        client.send(&adt("E1")).await.expect("ack").status,
        AckStatus::Error
    );
    assert_eq!(
        client.send(&adt("E2")).await.expect("ack").status,
        AckStatus::Rejected
    );
    server.stop().await;
}

#[tokio::test]
async fn no_reply_within_the_ack_timeout() {
    let handler = |_msg: Bytes, _conn: ConnectionInfo| async move { Reply::Nothing };
    let server = TestServer::start(handler, ServerSettings::default()).await;
    let mut settings = quick_client();
    settings.ack_timeout = Duration::from_millis(200);
    let mut client = Client::new(server.target(), settings);
    let err = client.send(&adt("T1")).await.expect_err("timeout");
    assert!(matches!(err, ClientError::AckTimeout(_)), "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn commit_ack_blocks_precede_the_hl7_ack() {
    let recorder = Recorder::default();
    let mut settings = ServerSettings::default();
    settings.commit_acks = true;
    let server = TestServer::start(recorder.handler(), settings).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.write(&framed(&adt("R2A"))).await;
    assert_eq!(peer.frame().await, Some(Frame::CommitAck));
    assert_eq!(peer.ack().await.acked_control_id, b"R2A");

    let mut client = Client::new(server.target(), quick_client());
    let delivery = client
        .send(&adt("R2B"))
        .await
        .expect("ack after commit block");
    assert!(delivery.reply.is_some(), "waited for the HL7 ACK");

    // Taking the commit block as delivery: the HL7 ACK that follows it is late, and must
    // not be read as the answer to the next message.
    let mut settings = quick_client();
    settings.accept_commit_ack = true;
    let mut client = Client::new(server.target(), settings);
    for id in ["R2C", "R2D", "R2E"] {
        let delivery = client.send(&adt(id)).await.expect(id);
        assert_eq!(delivery.status, AckStatus::Accepted, "{id}");
        assert!(delivery.reply.is_none(), "{id}: the commit block");
    }
    server.stop().await;
}

#[tokio::test]
async fn client_gives_up_after_its_connect_attempts() {
    // Bind then drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut settings = quick_client();
    settings.connect_attempts = 3;
    settings.backoff = Backoff::default();
    settings.backoff.initial = Duration::from_millis(20);
    let mut client = Client::new(format!("127.0.0.1:{port}"), settings);
    let start = std::time::Instant::now();
    let err = client.send(&adt("X")).await.expect_err("nobody listens");
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    // Two waits: at least 20ms*(1-0.25) + 40ms*(1-0.25).
    assert!(start.elapsed() >= Duration::from_millis(45));
}

#[tokio::test]
async fn client_resolves_host_names() {
    let recorder = Recorder::default();
    let server = TestServer::start(recorder.handler(), ServerSettings::default()).await;
    // Where `localhost` resolves to ::1 first, nothing listens there and the
    // client must move on to 127.0.0.1.
    let mut client = Client::new(format!("localhost:{}", server.addr.port()), quick_client());
    client.send(&adt("L1")).await.expect("reached over IPv4");
    server.stop().await;
}

#[tokio::test]
async fn message_without_control_id_is_refused_before_sending() {
    let mut client = Client::new("127.0.0.1:9", quick_client());
    let msg = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01||P|2.5\r";
    let err = client.send(msg).await.expect_err("no MSH-10");
    assert!(matches!(err, ClientError::MissingControlId), "{err:?}");
}

/// Counts what the server reports to its observer.
#[derive(Debug, Default)]
struct Counting {
    opened: AtomicUsize,
    closed: AtomicUsize,
    events: std::sync::Mutex<Vec<&'static str>>,
}

impl causeway_mllp::server::Observer for Counting {
    fn connection_opened(&self, _conn: &ConnectionInfo) {
        self.opened.fetch_add(1, Ordering::SeqCst);
    }
    fn connection_closed(&self, _conn: &ConnectionInfo) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
    fn framing_event(&self, _conn: &ConnectionInfo, event: &causeway_mllp::frame::FramingEvent) {
        self.events.lock().unwrap().push(event.kind());
    }
}

#[tokio::test]
async fn observer_sees_connections_and_framing_anomalies() {
    let recorder = Recorder::default();
    let observer = Arc::new(Counting::default());
    let mut settings = ServerSettings::default();
    settings.framing = FramingOptions::default().with_max_frame_len(1024);
    settings.observer = Some(observer.clone());
    let server = TestServer::start(recorder.handler(), settings).await;
    let mut peer = RawPeer::connect(server.addr).await;
    let mut big = adt("BIG2");
    big.extend(std::iter::repeat_n(b'X', 5000));
    peer.write(b"\0\0").await;
    peer.write(&framed(&big)).await;
    assert_eq!(peer.ack().await.code, AckCode::AR);
    drop(peer);
    server.stop().await;
    assert_eq!(observer.opened.load(Ordering::SeqCst), 1);
    assert_eq!(observer.closed.load(Ordering::SeqCst), 1);
    let events = observer.events.lock().unwrap().clone();
    assert!(events.len() >= 2, "{events:?}");
}
