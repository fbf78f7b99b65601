//! The edge/hub link: HL7 between a hospital network and the cloud over one outbound,
//! mutually authenticated TLS connection.
//!
//! An edge (`[link] hub = "wss://..."`) opens the link and keeps it open; a hub
//! (`[link] listen = "..."`) accepts links from the edges it knows. The link is a
//! WebSocket over TLS (see docs/ARCHITECTURE.md for why) carrying [`proto`] frames both
//! ways. A `type = "link"` destination sends its queue over it: the message stays queued
//! in the sender's store until the receiver answers that it stored it durably (or, from a
//! hub to an edge, until the edge returns the on-premises system's ACK). The receiver
//! stores a message with the sender's receipt time, so a resend after a lost answer has the
//! same duplicate key and time as the first copy and the store records it as a duplicate,
//! with no deliveries: destinations see each message once.
//!
//! # Layout
//! - [`config`]: `[link]` and the link destination.
//! - [`proto`]: the frames.
//! - [`tls`], [`transport`]: TLS configurations; dialing (with the proxy) and accepting.
//! - [`session`]: one open link: heartbeats, frames in and out, replies to senders.
//! - [`receive`]: storing what the peer sends, and answering.
//! - [`worker`]: the link destination.
//! - [`edge`], [`hub`]: the two roles.

pub mod config;
pub mod edge;
pub mod hub;
pub mod proto;
pub mod receive;
pub mod session;
pub mod tls;
pub mod transport;
pub mod worker;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::watch;

use self::config::{LinkConfig, Role};
use self::session::Session;

/// `{peer}`
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The hub (`hub`) on an edge; the edge's name on a hub.
    pub peer: String,
}

/// `{peer, direction}`
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabel {
    /// See [`PeerLabel`].
    pub peer: String,
    /// `sent` or `received`.
    pub direction: String,
}

/// The link's metrics.
#[derive(Debug, Default)]
pub struct LinkMetrics {
    /// 1 while the link to the peer is open.
    pub up: Family<PeerLabel, Gauge>,
    /// Last heartbeat round trip, in microseconds.
    pub rtt_micros: Family<PeerLabel, Gauge>,
    /// Bytes of frames (WebSocket payloads; TLS adds its own).
    pub bytes: Family<FlowLabel, Counter>,
    /// Messages carried.
    pub messages: Family<FlowLabel, Counter>,
    /// Sessions opened.
    pub connects: Family<PeerLabel, Counter>,
    /// Connections refused or failed before a session opened (hub: by anyone).
    pub refused: Counter,
}

impl LinkMetrics {
    /// Registers under the `causeway_link` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("causeway_link");
        r.register(
            "up",
            "1 while the link to the peer is open",
            self.up.clone(),
        );
        r.register(
            "rtt_microseconds",
            "Round trip of the last heartbeat, in microseconds",
            self.rtt_micros.clone(),
        );
        r.register(
            "bytes",
            "Bytes of link frames, by peer and direction",
            self.bytes.clone(),
        );
        r.register(
            "messages",
            "HL7 messages carried, by peer and direction",
            self.messages.clone(),
        );
        r.register(
            "connects",
            "Link sessions opened, by peer",
            self.connects.clone(),
        );
        r.register(
            "refused",
            "Link connections refused or failed before a session opened",
            self.refused.clone(),
        );
    }

    fn flow(&self, peer: &str, direction: &str) -> FlowLabel {
        let _ = self;
        FlowLabel {
            peer: peer.to_owned(),
            direction: direction.to_owned(),
        }
    }
}

/// What is known of one peer, for the admin API.
#[derive(Debug, Clone, Default)]
pub struct PeerStatus {
    /// A session is open.
    pub connected: bool,
    /// Since when (open) or until when (closed).
    pub since: Option<SystemTime>,
    /// Last heartbeat round trip.
    pub rtt: Option<Duration>,
    /// The peer's certificate identity in the last session.
    pub identity: Option<String>,
    /// Why the last session ended or the last attempt failed.
    pub last_error: Option<String>,
    /// Sessions opened.
    pub sessions: u64,
}

#[derive(Debug)]
struct Peer {
    session: Option<Arc<Session>>,
    changed: watch::Sender<u64>,
    status: PeerStatus,
}

/// The link as the rest of the gateway sees it: sessions by peer, and their state.
#[derive(Debug)]
pub struct Link {
    /// Edge or hub.
    pub role: Role,
    /// This gateway's name on the link.
    pub name: String,
    /// `[link]`.
    pub config: LinkConfig,
    /// Metrics.
    pub metrics: LinkMetrics,
    peers: Mutex<BTreeMap<String, Peer>>,
    next_id: AtomicU64,
}

/// The peer name an edge uses for its hub.
pub const HUB: &str = "hub";

impl Link {
    /// A link with no session yet; `peers` are the names it will talk to.
    pub fn new(config: LinkConfig, peers: impl IntoIterator<Item = String>) -> Link {
        let map = peers
            .into_iter()
            .map(|p| {
                (
                    p,
                    Peer {
                        session: None,
                        changed: watch::channel(0).0,
                        status: PeerStatus::default(),
                    },
                )
            })
            .collect();
        Link {
            role: config.role(),
            name: config.own_name(),
            config,
            metrics: LinkMetrics::default(),
            peers: Mutex::new(map),
            next_id: AtomicU64::new(1),
        }
    }

    /// A process-unique number (session ids, attempt numbers).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn with_peers<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Peer>) -> T) -> T {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut peers)
    }

    /// Makes `session` the peer's current one; an older one is closed.
    pub fn attach(&self, session: Arc<Session>, identity: String) {
        let old = self.with_peers(|peers| {
            let peer = peers.get_mut(&session.peer)?;
            let old = peer.session.replace(session.clone());
            peer.status.connected = true;
            peer.status.since = Some(SystemTime::now());
            peer.status.identity = Some(identity);
            peer.status.sessions += 1;
            peer.changed.send_modify(|v| *v += 1);
            old
        });
        if let Some(old) = old {
            old.close();
        }
        let label = PeerLabel {
            peer: session.peer.clone(),
        };
        self.metrics.up.get_or_create(&label).set(1);
        self.metrics.connects.get_or_create(&label).inc();
    }

    /// Forgets `session` (if still current) with the reason it ended.
    pub fn detach(&self, session: &Session, reason: &str) {
        let was_current = self.with_peers(|peers| {
            let Some(peer) = peers.get_mut(&session.peer) else {
                return false;
            };
            if peer.session.as_ref().is_some_and(|s| s.id == session.id) {
                peer.session = None;
                peer.status.connected = false;
                peer.status.since = Some(SystemTime::now());
                peer.status.last_error = Some(reason.to_owned());
                peer.changed.send_modify(|v| *v += 1);
                true
            } else {
                false
            }
        });
        if was_current {
            self.metrics
                .up
                .get_or_create(&PeerLabel {
                    peer: session.peer.clone(),
                })
                .set(0);
        }
    }

    /// Records why a connection attempt to (or from) `peer` failed.
    pub fn failed(&self, peer: &str, reason: &str) {
        self.with_peers(|peers| {
            if let Some(p) = peers.get_mut(peer) {
                p.status.last_error = Some(reason.to_owned());
            }
        });
    }

    /// Records a heartbeat round trip.
    pub fn rtt(&self, peer: &str, rtt: Duration) {
        self.with_peers(|peers| {
            if let Some(p) = peers.get_mut(peer) {
                p.status.rtt = Some(rtt);
            }
        });
        self.metrics
            .rtt_micros
            .get_or_create(&PeerLabel {
                peer: peer.to_owned(),
            })
            .set(i64::try_from(rtt.as_micros()).unwrap_or(i64::MAX));
    }

    /// Counts bytes of a frame.
    pub fn count_bytes(&self, peer: &str, direction: &str, n: usize) {
        self.metrics
            .bytes
            .get_or_create(&self.metrics.flow(peer, direction))
            .inc_by(n as u64);
    }

    /// Counts a message carried.
    pub fn count_message(&self, peer: &str, direction: &str) {
        self.metrics
            .messages
            .get_or_create(&self.metrics.flow(peer, direction))
            .inc();
    }

    /// Logs the peer's round trip, bytes and messages so far.
    pub fn log_status(&self, peer: &str) {
        let rtt = self.with_peers(|peers| peers.get(peer).and_then(|p| p.status.rtt));
        let count = |family: &Family<FlowLabel, Counter>, dir: &str| {
            family.get_or_create(&self.metrics.flow(peer, dir)).get()
        };
        tracing::info!(
            %peer,
            rtt_ms = rtt.map_or(-1.0, |r| r.as_secs_f64() * 1000.0),
            bytes_sent = count(&self.metrics.bytes, "sent"),
            bytes_received = count(&self.metrics.bytes, "received"),
            messages_sent = count(&self.metrics.messages, "sent"),
            messages_received = count(&self.metrics.messages, "received"),
            "link status"
        );
    }

    /// The current session with `peer`, waiting until there is one.
    pub async fn session(&self, peer: &str) -> Option<Arc<Session>> {
        let mut rx = self.with_peers(|peers| peers.get(peer).map(|p| p.changed.subscribe()))?;
        loop {
            let current = self.with_peers(|peers| peers.get(peer).and_then(|p| p.session.clone()));
            if let Some(s) = current
                && !s.closed.is_cancelled()
            {
                return Some(s);
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Peer names and their status.
    pub fn status(&self) -> Vec<(String, PeerStatus)> {
        self.with_peers(|peers| {
            peers
                .iter()
                .map(|(n, p)| (n.clone(), p.status.clone()))
                .collect()
        })
    }

    /// The admin API's view: role, peers, sessions, round trips, bytes.
    pub fn status_json(&self) -> serde_json::Value {
        let since = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
        };
        let peers: Vec<serde_json::Value> = self
            .status()
            .into_iter()
            .map(|(name, s)| {
                let get = |dir: &str| {
                    self.metrics
                        .bytes
                        .get_or_create(&self.metrics.flow(&name, dir))
                        .get()
                };
                let msgs = |dir: &str| {
                    self.metrics
                        .messages
                        .get_or_create(&self.metrics.flow(&name, dir))
                        .get()
                };
                json!({
                    "peer": name,
                    "connected": s.connected,
                    "since_ms": since(s.since),
                    "rtt_ms": s.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    "identity": s.identity,
                    "last_error": s.last_error,
                    "sessions": s.sessions,
                    "bytes_sent": get("sent"),
                    "bytes_received": get("received"),
                    "messages_sent": msgs("sent"),
                    "messages_received": msgs("received"),
                })
            })
            .collect();
        json!({
            "role": match self.role { Role::Edge => "edge", Role::Hub => "hub" },
            "name": self.name,
            "peers": peers,
        })
    }
}

/// What a receiving session may do: the channels the peer may send into.
#[derive(Debug, Clone, Default)]
pub struct Allowed(pub HashSet<String>);

/// What the gateway hands the link at start.
#[derive(Debug)]
pub struct Parts<'a> {
    /// The whole configuration.
    pub config: &'a crate::config::Config,
    /// Channels' ingest paths by name.
    pub channels: Arc<BTreeMap<String, Arc<crate::ingest::ChannelIngest>>>,
    /// The store.
    pub store: Arc<dyn causeway_store::Store>,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Waiters.
    pub waiters: Arc<crate::waiters::Waiters>,
    /// Wake-ups by destination name.
    pub wakers: &'a BTreeMap<String, Arc<tokio::sync::Notify>>,
}

/// A started link: the handle, the hub's listening address, and its tasks.
#[derive(Debug)]
pub struct Started {
    /// The link.
    pub link: Arc<Link>,
    /// Where a hub listens.
    pub listening: Option<std::net::SocketAddr>,
}

/// Starts the link of `parts.config` (none without `[link]`): the dialer or the listener
/// in `tasks` (stopped by `stopping`), the link destinations in `workers` (stopped by
/// `workers_stop`).
/// Loads the link's TLS files and secrets as [`start`] would, binding and dialling
/// nothing (see [`crate::gateway::preflight`]).
pub fn preflight(lc: &config::LinkConfig) -> Result<(), String> {
    let password = key_password(lc)?;
    let password = password.as_ref();
    match lc.role() {
        Role::Edge => {
            config::HubUrl::parse(lc.hub.as_deref().unwrap_or_default())?;
            let pin = hub_pin(lc)?;
            tls::client_config(
                lc.hub_ca.as_deref(),
                pin,
                &lc.cert,
                &lc.key,
                password,
                lc.tls12,
            )
            .map_err(|e| format!("link TLS: {e}"))?;
            if let Some(pw) = &lc.proxy_password {
                pw.resolve("link.proxy_password")
                    .map_err(|e| e.to_string())?;
            }
        }
        Role::Hub => {
            let client_ca = lc
                .client_ca
                .as_deref()
                .ok_or("link.client_ca is required")?;
            tls::server_config(&lc.cert, &lc.key, password, client_ca, lc.tls12)
                .map_err(|e| format!("link TLS: {e}"))?;
            for e in &lc.edges {
                e.identity_rule()?;
            }
        }
    }
    Ok(())
}

/// `link.hub_pin`, parsed.
fn hub_pin(lc: &config::LinkConfig) -> Result<Option<causeway_mllp::tls::Fingerprint>, String> {
    lc.hub_pin
        .as_deref()
        .map(str::parse::<causeway_mllp::tls::Fingerprint>)
        .transpose()
        .map_err(|e| format!("link.hub_pin: {e}"))
}

/// `link.key_password`, read from the environment when written `${VAR}`.
fn key_password(
    lc: &config::LinkConfig,
) -> Result<Option<causeway_mllp::tls::KeyPassword>, String> {
    lc.key_password
        .as_ref()
        .map(|pw| pw.resolve("link.key_password"))
        .transpose()
        .map(|pw| pw.map(causeway_mllp::tls::KeyPassword::new))
        .map_err(|e| e.to_string())
}

pub async fn start(
    parts: Parts<'_>,
    tasks: &mut tokio::task::JoinSet<()>,
    workers: &mut tokio::task::JoinSet<()>,
    stopping: &tokio_util::sync::CancellationToken,
    workers_stop: &tokio_util::sync::CancellationToken,
) -> Result<Option<Started>, String> {
    let Some(lc) = parts.config.link.clone() else {
        return Ok(None);
    };
    let role = lc.role();
    let peer_names: Vec<String> = match role {
        Role::Edge => vec![HUB.to_owned()],
        Role::Hub => lc.edges.iter().map(|e| e.name.clone()).collect(),
    };
    let link = Arc::new(Link::new(lc.clone(), peer_names));
    let receiver = receive::Receiver {
        link: link.clone(),
        channels: parts.channels.clone(),
        store: parts.store.clone(),
        waiters: parts.waiters.clone(),
        allowed: Allowed(lc.accept.iter().cloned().collect()),
        identity: String::new(),
    };
    let max_frame = usize::try_from(lc.max_frame_size.0).unwrap_or(usize::MAX);
    let listening = match role {
        Role::Edge => {
            let url = config::HubUrl::parse(lc.hub.as_deref().unwrap_or_default())?;
            let pin = hub_pin(&lc)?;
            let tls = {
                let (ca, cert, key, tls12) =
                    (lc.hub_ca.clone(), lc.cert.clone(), lc.key.clone(), lc.tls12);
                let password = key_password(&lc)?;
                tls::Reloading::new(move || {
                    tls::client_config(ca.as_deref(), pin, &cert, &key, password.as_ref(), tls12)
                })
                .map_err(|e| format!("link TLS: {e}"))?
            };
            let proxy = match &lc.proxy {
                Some(p) => {
                    let (host, port) = transport::proxy_address(p)
                        .ok_or_else(|| format!("link.proxy: cannot read {p:?}"))?;
                    let auth = match (&lc.proxy_user, &lc.proxy_password) {
                        (Some(u), Some(pw)) => Some((
                            u.clone(),
                            pw.resolve("link.proxy_password")
                                .map_err(|e| e.to_string())?,
                        )),
                        (Some(u), None) => Some((u.clone(), String::new())),
                        _ => None,
                    };
                    Some(transport::Proxy { host, port, auth })
                }
                None => None,
            };
            let dial = transport::Dial {
                server_name: lc.server_name.clone().unwrap_or_else(|| url.host.clone()),
                url,
                tls: Arc::new(tls),
                proxy,
                timeout: lc.connect_timeout.0,
                max_frame,
            };
            tasks.spawn(edge::run(link.clone(), dial, receiver, stopping.clone()));
            None
        }
        Role::Hub => {
            let client_ca = lc
                .client_ca
                .as_deref()
                .ok_or("link.client_ca is required")?;
            let tls = {
                let (cert, key, ca, tls12) = (
                    lc.cert.clone(),
                    lc.key.clone(),
                    client_ca.to_owned(),
                    lc.tls12,
                );
                let password = key_password(&lc)?;
                Arc::new(
                    tls::Reloading::new(move || {
                        tls::server_config(&cert, &key, password.as_ref(), &ca, tls12)
                    })
                    .map_err(|e| format!("link TLS: {e}"))?,
                )
            };
            let edges = lc
                .edges
                .iter()
                .map(|e| {
                    let rule = e.identity_rule()?;
                    Ok(hub::KnownEdge {
                        config: e.clone(),
                        rule,
                        rule_text: e
                            .identity
                            .clone()
                            .unwrap_or_else(|| format!("cn:{}", e.name)),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let bind = lc.listen.ok_or("link.listen is required")?;
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .map_err(|e| format!("link: cannot listen on {bind}: {e}"))?;
            let addr = listener.local_addr().unwrap_or(bind);
            tracing::info!(%addr, path = %lc.path, edges = edges.len(), "link listening");
            tasks.spawn(hub::run(
                link.clone(),
                listener,
                tls,
                Arc::new(edges),
                receiver,
                stopping.clone(),
            ));
            Some(addr)
        }
    };
    for channel in &parts.config.channels {
        for (i, dest) in channel.destinations.iter().enumerate() {
            let crate::config::DestinationKind::Link(ld) = &dest.kind else {
                continue;
            };
            let Some(wake) = parts.wakers.get(&dest.name) else {
                continue;
            };
            let first = i == 0;
            let worker = worker::LinkWorker {
                name: dest.name.clone(),
                channel: channel.name.clone(),
                remote_channel: ld.channel.clone().unwrap_or_else(|| channel.name.clone()),
                peer: match role {
                    Role::Edge => HUB.to_owned(),
                    Role::Hub => ld.edge.clone().unwrap_or_default(),
                },
                want: match role {
                    Role::Edge => session::Want::Stored,
                    Role::Hub => session::Want::Outcome,
                },
                end_to_end: first && channel.ack == crate::config::AckPolicy::EndToEnd,
                after_delivery: first && channel.ack == crate::config::AckPolicy::AfterDelivery,
                policy: crate::deliver::Policy::new(dest),
                link: link.clone(),
                store: parts.store.clone(),
                wake: wake.clone(),
                metrics: parts.metrics.clone(),
                waiters: parts.waiters.clone(),
            };
            workers.spawn(worker.run(workers_stop.clone()));
        }
    }
    Ok(Some(Started { link, listening }))
}
