//! Shared helpers: a server handle, sample messages, ACK handlers, raw peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use causeway_message::Message;
use causeway_message::ack::{Ack, AckReply, Outcome};
use causeway_mllp::frame::{Decoded, Frame, FrameDecoder, FramingOptions, encode_message};
use causeway_mllp::server::{self, ConnectionInfo, Handler, Reply, ServerError, ServerSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server and the means to stop it.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    pub async fn start(handler: impl Handler, settings: ServerSettings) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, handler, settings, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(tx),
            task,
        }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Sends the stop signal without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the server and waits for `run` to return.
    pub async fn stop(mut self) {
        self.signal_stop();
        self.task.await.expect("server task").expect("server ok");
    }

    pub async fn join(self) {
        self.task.await.expect("server task").expect("server ok");
    }
}

/// An ADT^A01 with the given control id.
pub fn adt(control_id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|SEND|FAC|RECV|FAC|20261127120000||ADT^A01|{control_id}|P|2.5\rPID|1||12345^^^H^MR||DOE^JANE\r"
    )
    .into_bytes()
}

/// The ACK a handler would send for `message` with this outcome.
pub fn ack_for(message: &[u8], outcome: Outcome) -> Reply {
    match Message::parse(message) {
        Ok(msg) => Ack::for_message(&msg, outcome)
            .control_id("ACK1")
            .timestamp("20261127120000")
            .encode()
            .into(),
        Err(_) => Reply::Close,
    }
}

/// Accepts everything; counts messages and remembers connection ids.
#[derive(Clone, Default)]
pub struct Recorder {
    pub messages: Arc<AtomicUsize>,
    pub connections: Arc<std::sync::Mutex<Vec<ConnectionInfo>>>,
}

impl Recorder {
    pub fn handler(&self) -> impl Handler {
        let me = self.clone();
        move |msg: Bytes, conn: ConnectionInfo| {
            let me = me.clone();
            async move {
                me.messages.fetch_add(1, Ordering::SeqCst);
                me.connections.lock().expect("lock").push(conn);
                ack_for(&msg, Outcome::Accept)
            }
        }
    }

    pub fn count(&self) -> usize {
        self.messages.load(Ordering::SeqCst)
    }

    pub fn distinct_connections(&self) -> usize {
        let mut ids: Vec<u64> = self
            .connections
            .lock()
            .expect("lock")
            .iter()
            .map(|c| c.id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }
}

/// A peer speaking raw bytes, for framing tests.
pub struct RawPeer {
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(FramingOptions::default()),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads the next frame, or `None` at EOF.
    pub async fn frame(&mut self) -> Option<Frame> {
        loop {
            while let Some(item) = self.decoder.decode(&mut self.buf) {
                if let Decoded::Frame(f) = item {
                    return Some(f);
                }
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads the next frame as an ACK.
    pub async fn ack(&mut self) -> AckReply {
        match self.frame().await {
            Some(Frame::Message(bytes)) => AckReply::parse(&bytes).expect("an ACK"),
            other => panic!("expected an ACK frame, got {other:?}"),
        }
    }

    /// Whether the server closed the connection (EOF or reset).
    pub async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte).await, Ok(0) | Err(_))
    }
}

pub fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_message(payload, &FramingOptions::default(), &mut out).expect("encodable");
    out.to_vec()
}
