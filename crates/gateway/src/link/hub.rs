//! The hub: accepts links, decides from the client certificate which edge it is and which
//! channels it may use, and runs its session. A refusal is logged with the reason and sent
//! to the edge, which logs it too.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use causeway_mllp::tls::{IdentityRule, PeerIdentity};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::EdgeConfig;
use super::proto::{Frame, Header, VERSION};
use super::receive::Receiver;
use super::session::{self, Session};
use super::transport::{self, Ws};
use super::{Allowed, Link};

/// One edge the hub knows.
#[derive(Debug, Clone)]
pub struct KnownEdge {
    /// Its configuration.
    pub config: EdgeConfig,
    /// The identity its certificate must have.
    pub rule: IdentityRule,
    /// The rule as written, for log lines.
    pub rule_text: String,
}

/// Accepts links until `stop`.
pub async fn run(
    link: Arc<Link>,
    listener: TcpListener,
    tls: Arc<super::tls::Reloading<rustls::ServerConfig>>,
    edges: Arc<Vec<KnownEdge>>,
    receiver: Receiver,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(link.config.max_links));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, addr) = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "link listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(peer = %addr, max_links = link.config.max_links, "link connection refused: too many links open");
            link.metrics.refused.inc();
            continue;
        };
        let link = link.clone();
        let tls = tls.current();
        let edges = edges.clone();
        let receiver = receiver.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            connection(link, tcp, addr, tls, edges, receiver, stop).await;
        });
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
    info!("link listener stopped");
}

async fn connection(
    link: Arc<Link>,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    edges: Arc<Vec<KnownEdge>>,
    receiver: Receiver,
    stop: CancellationToken,
) {
    let timeout = link.config.connect_timeout.0;
    let max_frame = usize::try_from(link.config.max_frame_size.0).unwrap_or(usize::MAX);
    let accepted =
        match transport::accept(tcp, addr, tls, &link.config.path, timeout, max_frame).await {
            Ok(a) => a,
            Err(e) => {
                warn!(peer = %addr, error = %e, "link connection refused");
                link.metrics.refused.inc();
                return;
            }
        };
    let mut ws = accepted.ws;
    let identity = accepted.identity;
    let (edge, name) = match hello(&mut ws, &identity, &edges, timeout).await {
        Ok(found) => found,
        Err((name, reason)) => {
            warn!(peer = %addr, edge = %name, %identity, %reason, "link refused");
            link.metrics.refused.inc();
            if let Some(name) = link_peer(&edges, &name) {
                link.failed(&name, &reason);
            }
            let refused = Frame::new(Header::Refused { reason });
            let _ = ws.send(WsMessage::Binary(refused.encode().into())).await;
            let _ = ws.close(None).await;
            return;
        }
    };
    let welcome = Frame::new(Header::Welcome {
        name: link.name.clone(),
    });
    if let Err(e) = ws.send(WsMessage::Binary(welcome.encode().into())).await {
        warn!(peer = %addr, edge = %name, error = %e, "link closed during the handshake");
        return;
    }
    let (session, queue) = Session::new(link.next_id(), name.clone(), link.config.send_queue);
    info!(peer = %addr, edge = %name, %identity, channels = ?edge.config.channels, "edge linked");
    link.attach(session.clone(), identity.to_string());
    let receiver = Receiver {
        allowed: Allowed(edge.config.channels.iter().cloned().collect::<HashSet<_>>()),
        identity: identity.to_string(),
        ..receiver
    };
    let closer = {
        let session = session.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => session.close(),
                () = session.closed.cancelled() => {}
            }
        })
    };
    session::run(link, session, ws, queue, receiver).await;
    closer.abort();
}

fn link_peer(edges: &[KnownEdge], name: &str) -> Option<String> {
    edges
        .iter()
        .find(|e| e.config.name == name)
        .map(|e| e.config.name.clone())
}

/// Reads the hello and finds the edge; on refusal, the name it gave and why.
async fn hello(
    ws: &mut Ws,
    identity: &PeerIdentity,
    edges: &[KnownEdge],
    timeout: Duration,
) -> Result<(KnownEdge, String), (String, String)> {
    let unknown = String::from("?");
    let bytes: Bytes = loop {
        match tokio::time::timeout(timeout, ws.next()).await {
            Err(_) => return Err((unknown, format!("no hello within {timeout:?}"))),
            Ok(Some(Ok(WsMessage::Binary(b)))) => break b,
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            Ok(_) => return Err((unknown, "closed or spoke something else than hello".into())),
        }
    };
    let frame = Frame::decode(bytes).map_err(|e| (unknown.clone(), e))?;
    let Header::Hello { version, name } = frame.header else {
        return Err((unknown, "the first frame is not a hello".into()));
    };
    if version != VERSION {
        return Err((
            name,
            format!(
                "link protocol version {version} is not spoken here (this hub speaks {VERSION})"
            ),
        ));
    }
    let Some(edge) = edges.iter().find(|e| e.config.name == name) else {
        return Err((
            name.clone(),
            format!("edge {name:?} is not configured here (no [[link.edge]] name = {name:?})"),
        ));
    };
    if !edge.rule.matches(identity) {
        return Err((
            name.clone(),
            format!(
                "edge {name:?} presented certificate {identity}, which does not match its identity {}",
                edge.rule_text
            ),
        ));
    }
    Ok((edge.clone(), name))
}
