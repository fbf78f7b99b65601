//! Opening the link: TCP (through an HTTP CONNECT proxy when configured), TLS, then the
//! WebSocket upgrade. Every step is bounded by the connect timeout and every read by a size.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use causeway_mllp::tls::PeerIdentity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::config::{HubUrl, parse_authority};

/// The link's WebSocket, over TLS over TCP, on either side.
pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Largest HTTP response head accepted from a proxy.
const MAX_PROXY_RESPONSE: usize = 8 * 1024;

/// WebSocket limits from the link's frame size.
pub fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
        .max_write_buffer_size(max_frame.saturating_mul(2))
}

/// An HTTP proxy: host, port, and `user`, `password` for basic authentication.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Basic authentication.
    pub auth: Option<(String, String)>,
}

/// Where and how an edge connects.
#[derive(Debug, Clone)]
pub struct Dial {
    /// The hub.
    pub url: HubUrl,
    /// The name checked in the hub's certificate.
    pub server_name: String,
    /// TLS.
    pub tls: Arc<super::tls::Reloading<rustls::ClientConfig>>,
    /// An HTTP CONNECT proxy on the way.
    pub proxy: Option<Proxy>,
    /// Bound on each step.
    pub timeout: Duration,
    /// Largest frame.
    pub max_frame: usize,
}

/// Why a connection attempt failed, worded for the log.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP.
    #[error("cannot connect to {0}: {1}")]
    Tcp(String, std::io::Error),
    /// The proxy refused or answered something else.
    #[error("proxy {0}: {1}")]
    Proxy(String, String),
    /// TLS: certificate refused on either side, version mismatch.
    #[error("TLS handshake with the hub failed: {0}")]
    Tls(std::io::Error),
    /// The WebSocket upgrade.
    #[error("link upgrade refused by the hub: {0}")]
    Upgrade(String),
    /// A step took longer than the connect timeout.
    #[error("{0} took longer than {1:?}")]
    Timeout(&'static str, Duration),
}

async fn step<T, E>(
    what: &'static str,
    limit: Duration,
    f: impl Future<Output = Result<T, E>>,
    map: impl FnOnce(E) -> DialError,
) -> Result<T, DialError> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map(e)),
        Err(_) => Err(DialError::Timeout(what, limit)),
    }
}

/// Opens the link to the hub: returns the WebSocket and the hub's certificate identity.
pub async fn dial(d: &Dial) -> Result<(Ws, Option<PeerIdentity>), DialError> {
    let target = format!("{}:{}", bracket(&d.url.host), d.url.port);
    let (connect_to, via) = match &d.proxy {
        Some(p) => (format!("{}:{}", bracket(&p.host), p.port), "proxy"),
        None => (target.clone(), "hub"),
    };
    let mut tcp = step(
        "TCP connect",
        d.timeout,
        TcpStream::connect(connect_to.clone()),
        |e| DialError::Tcp(format!("{via} {connect_to}"), e),
    )
    .await?;
    let _ = tcp.set_nodelay(true);
    if let Some(Proxy { auth, .. }) = &d.proxy {
        step(
            "proxy CONNECT",
            d.timeout,
            connect_via_proxy(&mut tcp, &target, auth.as_ref()),
            |e| DialError::Proxy(connect_to.clone(), e),
        )
        .await?;
    }
    let name = rustls::pki_types::ServerName::try_from(d.server_name.clone())
        .map_err(|_| DialError::Upgrade(format!("invalid server name {:?}", d.server_name)))?;
    let connector = tokio_rustls::TlsConnector::from(d.tls.current());
    let tls = step(
        "TLS handshake",
        d.timeout,
        connector.connect(name, tcp),
        DialError::Tls,
    )
    .await?;
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| PeerIdentity::from_der(c));
    let url = format!("wss://{target}{}", d.url.path);
    let (ws, _response) = step(
        "link upgrade",
        d.timeout,
        tokio_tungstenite::client_async_with_config(
            url,
            TlsStream::from(tls),
            Some(ws_config(d.max_frame)),
        ),
        |e| DialError::Upgrade(e.to_string()),
    )
    .await?;
    Ok((ws, identity))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `CONNECT target` on an open connection to a proxy; returns once the tunnel is open.
async fn connect_via_proxy(
    tcp: &mut TcpStream,
    target: &str,
    auth: Option<&(String, String)>,
) -> Result<(), String> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, password)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // Read the response head byte by byte: nothing after the blank line may be consumed,
    // it belongs to TLS.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_PROXY_RESPONSE {
            return Err(format!(
                "response head longer than {MAX_PROXY_RESPONSE} bytes"
            ));
        }
        let n = tcp.read(&mut byte).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed the connection before answering CONNECT".to_owned());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.lines().next().unwrap_or_default().to_owned();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if code == "200" {
        Ok(())
    } else if code == "407" {
        Err(format!(
            "refused CONNECT {target}: {status} (proxy authentication: check proxy_user and proxy_password)"
        ))
    } else {
        Err(format!("refused CONNECT {target}: {status}"))
    }
}

/// Reads `http://HOST:PORT` of the configuration.
pub fn proxy_address(url: &str) -> Option<(String, u16)> {
    parse_authority(url.strip_prefix("http://")?.trim_end_matches('/'), 3128)
}

/// What the hub learned while accepting: who it is, by certificate.
#[derive(Debug)]
pub struct Accepted {
    /// The WebSocket.
    pub ws: Ws,
    /// The verified client certificate's identity.
    pub identity: PeerIdentity,
}

/// Why the hub refused a connection before the link protocol started.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// TLS failed: most often a certificate from another CA, or none.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// Not a WebSocket upgrade on the link's path.
    #[error("not a link upgrade: {0}")]
    Upgrade(String),
    /// Too slow.
    #[error("{0} took longer than {1:?}")]
    Timeout(&'static str, Duration),
    /// No client certificate (cannot happen with a verifier that requires one).
    #[error("no client certificate")]
    NoCertificate,
}

/// Runs TLS and the upgrade on an accepted connection.
pub async fn accept(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    path: &str,
    timeout: Duration,
    max_frame: usize,
) -> Result<Accepted, AcceptError> {
    let _ = tcp.set_nodelay(true);
    let _ = peer;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(AcceptError::Tls(e)),
        Err(_) => return Err(AcceptError::Timeout("TLS handshake", timeout)),
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| PeerIdentity::from_der(c))
        .ok_or(AcceptError::NoCertificate)?;
    let want = path.to_owned();
    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == want {
            Ok(resp)
        } else {
            let mut refusal = ErrorResponse::new(Some(format!("no link at {}", req.uri().path())));
            *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            Err(refusal)
        }
    };
    let ws = match tokio::time::timeout(
        timeout,
        tokio_tungstenite::accept_hdr_async_with_config(
            TlsStream::from(stream),
            check,
            Some(ws_config(max_frame)),
        ),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return Err(AcceptError::Upgrade(e.to_string())),
        Err(_) => return Err(AcceptError::Timeout("link upgrade", timeout)),
    };
    Ok(Accepted { ws, identity })
}
