//! Helpers the integration tests share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use causeway_message::Message;
use causeway_message::ack::{Ack, Outcome};
use causeway_mllp::server::{self, ConnectionInfo, Reply, ServerSettings};
use tokio::net::TcpListener;

/// A running MLLP receiver (a destination for the gateway under test).
pub struct Receiver {
    pub addr: std::net::SocketAddr,
    /// The control id of every message it got, in arrival order.
    pub arrived: Arc<Mutex<Vec<String>>>,
}

/// Answers every message with AA at once.
pub fn accept_all(_n: usize) -> (Outcome, Duration) {
    (Outcome::Accept, Duration::ZERO)
}

/// Starts an MLLP receiver that answers the n-th message (0-based) with `script(n)`: an
/// outcome, after a delay. Its ACK has control id `R{n}` and the text `downstream says {n}`.
pub async fn receiver(script: fn(usize) -> (Outcome, Duration)) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(Mutex::new(Vec::new()));
    let seen = arrived.clone();
    let handler = move |msg: Bytes, _conn: ConnectionInfo| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        let seen = seen.clone();
        async move {
            let Ok(m) = Message::parse(&msg) else {
                return Reply::Close;
            };
            let control_id = String::from_utf8_lossy(m.control_id().unwrap_or_default());
            seen.lock().unwrap().push(control_id.into_owned());
            let (outcome, delay) = script(n);
            tokio::time::sleep(delay).await;
            let ack = Ack::for_message(&m, outcome)
                .text(format!("downstream says {n}"))
                .control_id(format!("R{n}"))
                .timestamp(causeway_mllp::ack::hl7_timestamp(SystemTime::now()))
                .encode();
            Reply::from(ack)
        }
    };
    tokio::spawn(server::run(
        listener,
        handler,
        ServerSettings::default(),
        std::future::pending::<()>(),
    ));
    Receiver { addr, arrived }
}

/// A small ADT^A01 with control id (and patient id) `id`.
pub fn adt(id: &str) -> Vec<u8> {
    format!("MSH|^~\\&|EHR|H|LAB|H|20261127120000||ADT^A01|{id}|P|2.5\rPID|1||{id}^^^MRN\r")
        .into_bytes()
}

/// Starts a gateway with its store in a new temporary directory (kept alive by the
/// returned `TempDir`). `config` gets that directory and returns the TOML after the
/// `[store]` table, which this adds.
pub async fn start(
    config: impl FnOnce(&str) -> String,
) -> (
    Arc<causeway_gateway::Gateway>,
    causeway_gateway::gateway::Running,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let toml = format!("[store]\npath = '{root}/data'\n{}", config(&root));
    let config = causeway_gateway::Config::parse(&toml).unwrap();
    let (gateway, running) = causeway_gateway::Gateway::start(config).await.unwrap();
    (gateway, running, dir)
}

/// A gateway's TOML after `[store]`: admin API off, one channel `adt` listening on a free
/// loopback port, then `destinations` (its `[[channel.destination]]` tables).
pub fn adt_channel(destinations: &str) -> String {
    format!(
        "[admin]\ndisabled = true\n[[channel]]\nname = \"adt\"\n[channel.source]\nbind = \"127.0.0.1:0\"\n{destinations}"
    )
}
