//! `causeway listen`: a test receiver that prints, stores and acknowledges messages.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use causeway_message::Message;
use causeway_message::ack::{Ack, Outcome};
use causeway_mllp::ack::{ControlIds, hl7_timestamp, nak_for_parse_error};
use causeway_mllp::frame::FramingOptions;
use causeway_mllp::server::{self, ConnectionInfo, Reply, ServerSettings};
use tokio::net::TcpListener;

use super::common::{ServerTlsArgs, parse_duration};

/// The ACK code `listen` answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AckArg {
    /// Accept (CA in enhanced mode).
    #[value(name = "AA")]
    Aa,
    /// Application error (CE in enhanced mode).
    #[value(name = "AE")]
    Ae,
    /// Reject (CR in enhanced mode).
    #[value(name = "AR")]
    Ar,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port to listen on.
    #[arg(long, short, default_value_t = 2575)]
    port: u16,

    /// Address to bind. Loopback by default; use 0.0.0.0 or :: to accept from other hosts.
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    bind: std::net::IpAddr,

    /// Store each message in this directory, one file per message, written atomically.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Answer with this code (mapped to CA/CE/CR for messages in enhanced mode).
    #[arg(long, value_enum, default_value = "AA")]
    ack: AckArg,

    /// Wait this long before answering each message (500ms, 2s), to test sender timeouts.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    delay: Option<Duration>,

    /// Print each whole message (segments on their own lines), not just a summary line.
    #[arg(long, short, conflicts_with = "quiet")]
    verbose: bool,

    /// Print nothing per message (for benchmarks).
    #[arg(long, short)]
    quiet: bool,

    /// Most connections at once; the connection over the limit is closed with a log line.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,

    /// Largest message accepted, in bytes; larger frames get an AR.
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_name = "BYTES")]
    max_size: usize,

    /// Close connections idle for this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    idle_timeout: Duration,

    #[command(flatten)]
    tls: ServerTlsArgs,
}

struct State {
    outcome: Outcome,
    delay: Option<Duration>,
    out: Option<PathBuf>,
    verbose: bool,
    quiet: bool,
    ids: Arc<ControlIds>,
    seq: AtomicU64,
}

pub async fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tls = args.tls.load()?.map(Arc::new);
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let ids = Arc::new(ControlIds::new());
    let state = Arc::new(State {
        outcome: match args.ack {
            AckArg::Aa => Outcome::Accept,
            AckArg::Ae => Outcome::Error,
            AckArg::Ar => Outcome::Reject,
        },
        delay: args.delay,
        out: args.out.clone(),
        verbose: args.verbose,
        quiet: args.quiet,
        ids: ids.clone(),
        seq: AtomicU64::new(0),
    });
    let mut settings = ServerSettings::default();
    settings.max_connections = args.max_connections;
    settings.idle_timeout = Some(args.idle_timeout);
    settings.framing = FramingOptions::default().with_max_frame_len(args.max_size);
    settings.tls = tls.clone();
    settings.control_ids = ids;
    // Before the line that tells a caller we listen: a signal right after it is not missed.
    let stop = shutdown_signal();
    eprintln!(
        "causeway listen: {} on {local}{}, answering {}{}",
        if tls.is_some() {
            "MLLP over TLS"
        } else {
            "MLLP"
        },
        if args.bind.is_loopback() {
            " (loopback only: use --bind 0.0.0.0 for other hosts)"
        } else {
            ""
        },
        match args.ack {
            AckArg::Aa => "AA",
            AckArg::Ae => "AE",
            AckArg::Ar => "AR",
        },
        args.out
            .as_ref()
            .map(|d| format!(", storing in {}", d.display()))
            .unwrap_or_default(),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(tls) = tls.clone() {
        let mut rx = stop_rx.clone();
        tokio::spawn(tls.clone().watch(Duration::from_secs(5), async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }));
        tokio::spawn(reload_on_sighup(tls));
    }
    let handler = move |message: Bytes, conn: ConnectionInfo| {
        let state = state.clone();
        async move { handle(&state, &message, &conn).await }
    };
    let mut rx = stop_rx;
    let server = server::run(listener, handler, settings, async move {
        let _ = rx.wait_for(|stop| *stop).await;
    });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        () = stop => {
            eprintln!("causeway listen: stopping (finishing messages in hand)");
            let _ = stop_tx.send(true);
            server.await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn handle(state: &State, message: &[u8], conn: &ConnectionInfo) -> Reply {
    let seq = state.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let now = SystemTime::now();
    let msg = match Message::parse(message) {
        Ok(msg) => msg,
        Err(e) => {
            if !state.quiet {
                println!(
                    "#{seq} from {}: {} bytes, not HL7 ({e}): AR",
                    conn.peer_addr,
                    message.len()
                );
            }
            return nak_for_parse_error(message, &e, &state.ids, now).into();
        }
    };
    if let Some(delay) = state.delay {
        tokio::time::sleep(delay).await;
    }
    let control_id = String::from_utf8_lossy(msg.control_id().unwrap_or_default()).into_owned();
    if let Some(dir) = &state.out
        && let Err(e) = store(dir, seq, &control_id, message)
    {
        eprintln!("#{seq}: cannot store: {e:#}; answering AE");
        let nak = Ack::for_message(&msg, Outcome::Error)
            .error(
                causeway_message::ack::ErrorCode::ApplicationInternal,
                "receiver could not store the message",
            )
            .control_id(state.ids.next_id())
            .timestamp(hl7_timestamp(now))
            .encode();
        return nak.into();
    }
    let ack = Ack::for_message(&msg, state.outcome)
        .control_id(state.ids.next_id())
        .timestamp(hl7_timestamp(now));
    if !state.quiet {
        let kind = String::from_utf8_lossy(msg.header().field(9).as_bytes().unwrap_or_default())
            .into_owned();
        let who = conn
            .peer_identity
            .as_ref()
            .and_then(|id| id.common_name.clone())
            .map(|cn| format!(" ({cn})"))
            .unwrap_or_default();
        println!(
            "#{seq} from {}{who}: {kind} control id {control_id}, {} segments, {} bytes: {}",
            conn.peer_addr,
            msg.segment_count(),
            message.len(),
            ack.ack_code()
        );
        if state.verbose {
            for seg in msg.segments() {
                println!("  {}", String::from_utf8_lossy(seg.as_bytes()));
            }
        }
    }
    ack.encode().into()
}

/// Writes `<seq>_<control id>.hl7` through a temporary file and a rename, so a reader never
/// sees half a message.
fn store(dir: &std::path::Path, seq: u64, control_id: &str, message: &[u8]) -> anyhow::Result<()> {
    let safe: String = control_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let name = format!("{seq:08}_{safe}.hl7");
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, message).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(&name)).with_context(|| format!("rename to {name}"))?;
    Ok(())
}

async fn reload_on_sighup(tls: Arc<causeway_mllp::tls::ServerTls>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => eprintln!("causeway listen: TLS certificate reloaded"),
            Err(e) => {
                eprintln!("causeway listen: TLS reload failed, keeping the old certificate: {e}")
            }
        }
    }
}

/// SIGINT and SIGTERM, listened for from the moment this is made (not from the first
/// poll: a signal sent right after a line that says the process is ready must not be
/// missed) and for as long as it lives, so that a second signal is seen however soon it
/// follows the first.
#[derive(Debug)]
pub struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Starts listening. A kind whose handler cannot be installed is left out.
    pub fn new() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Completes on the next SIGINT or SIGTERM since the last one.
    pub async fn next(&mut self) {
        async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = recv(self.term.as_mut()) => {}
            () = recv(self.int.as_mut()) => {}
        }
    }
}

/// Completes on the next SIGINT or SIGTERM after this call.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    let mut signals = StopSignals::new();
    async move { signals.next().await }
}
