//! The edge: dials the hub, says hello, runs the session, and dials again after any end,
//! with exponential backoff and jitter (reset once a session was open).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::proto::{Frame, Header, VERSION};
use super::receive::Receiver;
use super::session::{self, Session};
use super::transport::{self, Dial, Ws};
use super::{HUB, Link};

/// Keeps the link to the hub open until `stop`.
pub async fn run(link: Arc<Link>, dial: Dial, receiver: Receiver, stop: CancellationToken) {
    let mut backoff = causeway_mllp::client::Backoff::default();
    backoff.initial = link.config.reconnect_initial.0;
    backoff.max = link.config.reconnect_max.0;
    let mut failures: u32 = 0;
    loop {
        if stop.is_cancelled() {
            break;
        }
        let dialed = tokio::select! {
            () = stop.cancelled() => break,
            r = transport::dial(&dial) => r,
        };
        match dialed {
            Ok((ws, identity)) => {
                let identity = identity.map(|i| i.to_string()).unwrap_or_default();
                match hello(&link, ws, dial.timeout).await {
                    Ok((ws, hub_name)) => {
                        failures = 0;
                        let (session, queue) =
                            Session::new(link.next_id(), HUB.to_owned(), link.config.send_queue);
                        info!(hub = %hub_name, url = %format!("wss://{}:{}{}", dial.url.host, dial.url.port, dial.url.path), identity = %identity, "link to the hub open");
                        link.attach(session.clone(), identity.clone());
                        let receiver = Receiver {
                            identity,
                            ..receiver.clone()
                        };
                        let closer = {
                            let session = session.clone();
                            let stop = stop.clone();
                            tokio::spawn(async move {
                                tokio::select! {
                                    () = stop.cancelled() => session.close(),
                                    () = session.closed.cancelled() => {}
                                }
                            })
                        };
                        session::run(link.clone(), session, ws, queue, receiver).await;
                        closer.abort();
                        if stop.is_cancelled() {
                            break;
                        }
                    }
                    Err(reason) => {
                        error!(%reason, "the hub refused the link");
                        link.failed(HUB, &reason);
                        link.metrics.refused.inc();
                        failures = failures.saturating_add(1);
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, attempt = failures + 1, "cannot open the link to the hub");
                link.failed(HUB, &e.to_string());
                link.metrics.refused.inc();
                failures = failures.saturating_add(1);
            }
        }
        let delay = if failures == 0 {
            // A session ended: reconnect at once, with a little jitter.
            backoff.delay(0)
        } else {
            backoff.delay(failures - 1)
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    info!("link to the hub stopped");
}

/// Hello, then the hub's welcome (its name) or refusal (the reason).
async fn hello(link: &Link, mut ws: Ws, timeout: Duration) -> Result<(Ws, String), String> {
    let hello = Frame::new(Header::Hello {
        version: VERSION,
        name: link.name.clone(),
    });
    ws.send(WsMessage::Binary(hello.encode().into()))
        .await
        .map_err(|e| format!("cannot send hello: {e}"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("no answer to hello within {timeout:?}"))?;
        let bytes: Bytes = match next {
            Some(Ok(WsMessage::Binary(b))) => b,
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Close(f))) => {
                return Err(format!(
                    "closed after hello{}",
                    f.map(|f| format!(": {}", f.reason)).unwrap_or_default()
                ));
            }
            Some(Ok(_)) => return Err("unexpected answer to hello".to_owned()),
            Some(Err(e)) => return Err(format!("link closed after hello: {e}")),
            None => return Err("link closed after hello".to_owned()),
        };
        return match Frame::decode(bytes)?.header {
            Header::Welcome { name } => Ok((ws, name)),
            Header::Refused { reason } => Err(reason),
            other => Err(format!("unexpected answer to hello: {other:?}")),
        };
    }
}
