//! Starting, running and stopping the gateway.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use causeway_mllp::ack::ControlIds;
use causeway_mllp::frame::FramingOptions;
use causeway_mllp::server::{self, ServerSettings};
use causeway_mllp::tls::{IdentityRule, ServerTls, ServerTlsSettings};
use causeway_store::postgres::{PgSettings, PostgresStore};
use causeway_store::sqlite::SqliteStore;
use causeway_store::{Retention, Store, StoreSettings, Timestamp};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, StoreConfig};
use crate::deliver::lease::{LeaseSettings, default_node_id};
use crate::deliver::{Policy, Sender, Worker};
use crate::ingest::{ChannelHandler, ChannelIngest, Route};
use crate::metrics::{Metrics, QueueLabel};
use crate::route::Filter;
use crate::waiters::Waiters;

/// Why the gateway could not start (or stopped on its own).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The store could not be opened.
    #[error("cannot open the store at {path}: {source}")]
    Store {
        /// Its path.
        path: String,
        /// Why.
        source: causeway_store::StoreError,
    },
    /// A listener could not bind its address.
    #[error("channel {channel}: cannot listen on {addr}: {source}")]
    Bind {
        /// Channel name.
        channel: String,
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A destination or TLS setting could not be set up (files, certificates).
    #[error("{what}: {reason}")]
    Setup {
        /// Which part (`channel adt destination lab`).
        what: String,
        /// Why.
        reason: String,
    },
}

/// A gateway's shared parts, as the admin API sees them.
#[derive(Debug)]
pub struct Gateway {
    /// The configuration it runs.
    pub config: Config,
    /// The journal.
    pub store: Arc<dyn Store>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Each channel's ingest path (for message injection), by name.
    pub channels: BTreeMap<String, Arc<ChannelIngest>>,
    /// Each destination's wake-up (after a replay), by name.
    pub wakers: BTreeMap<String, Arc<Notify>>,
    /// The listeners' actual addresses, by channel.
    pub listening: BTreeMap<String, SocketAddr>,
    /// Cancelled when the gateway is stopping.
    pub stopping: CancellationToken,
    /// Where the admin API listens (`None` when disabled).
    pub admin: Option<SocketAddr>,
    /// The edge/hub link, when configured.
    pub link: Option<Arc<crate::link::Link>>,
    /// Where a hub's link listener listens.
    pub link_listening: Option<SocketAddr>,
    /// Channels whose listener stopped on its own, with why (`/readyz` reports them).
    pub listener_failures: Arc<std::sync::Mutex<BTreeMap<String, String>>>,
    /// This node's id in the delivery leases.
    pub node_id: String,
}

/// The part of `shutdown.grace` listeners may take to finish the messages in hand: four
/// fifths, so that delivery workers have the rest to finish their attempt in hand.
fn listener_grace(grace: Duration) -> Duration {
    grace * 4 / 5
}

impl Gateway {
    /// Where the admin API listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Opens the store, binds every listener and starts every worker; returns once the
    /// gateway is serving. `run` then waits for the stop signal.
    pub async fn start(config: Config) -> Result<(Arc<Gateway>, Running), GatewayError> {
        let store = open_store(&config.store).await?;
        let lease = LeaseSettings {
            node_id: config
                .store
                .node_id
                .clone()
                .unwrap_or_else(|| default_node_id(config.store.postgres.is_some())),
            timeout: config.store.lease_timeout.0,
        };
        info!(node = %lease.node_id, lease_timeout_ms = lease.timeout.as_millis() as u64, "node");
        let metrics = Arc::new(Metrics::new());
        metrics
            .node_info
            .get_or_create(&crate::metrics::NodeLabel {
                node_id: lease.node_id.clone(),
            })
            .set(1);
        let waiters = Arc::new(Waiters::default());
        let control_ids = Arc::new(ControlIds::new());
        let stopping = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut channels = BTreeMap::new();
        let mut wakers = BTreeMap::new();
        let mut listening = BTreeMap::new();
        let workers_stop = CancellationToken::new();
        let listener_failures = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let mut workers = JoinSet::new();

        for channel in &config.channels {
            let mut routes = Vec::new();
            for dest in &channel.destinations {
                if matches!(dest.kind, crate::config::DestinationKind::Link(_)) {
                    // Its worker is the link's (started below, with the link).
                    let wake = Arc::new(Notify::new());
                    wakers.insert(dest.name.clone(), wake.clone());
                    routes.push(Route {
                        destination: dest.name.clone(),
                        filter: Filter::new(&dest.filter),
                        wake,
                    });
                    continue;
                }
                let sender =
                    Sender::new(&channel.name, dest).map_err(|reason| GatewayError::Setup {
                        what: format!("channel {} destination {}", channel.name, dest.name),
                        reason,
                    })?;
                let wake = Arc::new(Notify::new());
                wakers.insert(dest.name.clone(), wake.clone());
                routes.push(Route {
                    destination: dest.name.clone(),
                    filter: Filter::new(&dest.filter),
                    wake: wake.clone(),
                });
                let worker = Worker {
                    name: dest.name.clone(),
                    channel: channel.name.clone(),
                    sender,
                    policy: Policy::new(dest),
                    store: store.clone(),
                    wake,
                    metrics: metrics.clone(),
                    waiters: waiters.clone(),
                    lease: lease.clone(),
                };
                workers.spawn(worker.run(workers_stop.clone()));
            }
            let ingest = Arc::new(ChannelIngest {
                name: channel.name.clone(),
                store: store.clone(),
                routes,
                ack_policy: channel.ack,
                ack_timeout: channel.ack_timeout.0,
                metrics: metrics.clone(),
                waiters: waiters.clone(),
                control_ids: control_ids.clone(),
            });
            channels.insert(channel.name.clone(), ingest.clone());

            let Some(src) = &channel.source else {
                info!(channel = %channel.name, destinations = channel.destinations.len(), "channel without listener (link and admin API only)");
                continue;
            };
            let listener =
                TcpListener::bind(src.bind)
                    .await
                    .map_err(|source| GatewayError::Bind {
                        channel: channel.name.clone(),
                        addr: src.bind,
                        source,
                    })?;
            let local = listener.local_addr().unwrap_or(src.bind);
            listening.insert(channel.name.clone(), local);
            let mut settings = ServerSettings::default();
            settings.max_connections = src.max_connections;
            settings.read_timeout = src.read_timeout.0;
            settings.idle_timeout = Some(src.idle_timeout.0);
            settings.write_timeout = src.write_timeout.0;
            settings.handshake_timeout = src.handshake_timeout.0;
            settings.tcp_keepalive = crate::config::keepalive(src.tcp_keepalive);
            settings.commit_acks = src.commit_acks;
            settings.grace_period = listener_grace(config.shutdown.grace.0);
            let mut framing = FramingOptions::default()
                .with_max_frame_len(usize::try_from(src.max_message_size.0).unwrap_or(usize::MAX));
            framing.strict = src.strict_framing;
            let framing = src.framing.apply(framing);
            settings.framing = framing;
            settings.control_ids = control_ids.clone();
            settings.observer = Some(Arc::new(crate::metrics::ChannelObserver {
                channel: channel.name.clone(),
                metrics: metrics.clone(),
            }));
            if let Some(tls) = &src.tls {
                let tls = Arc::new(source_tls(&channel.name, tls)?);
                let stop = stopping.clone();
                tasks.spawn(tls.clone().watch(Duration::from_secs(5), async move {
                    stop.cancelled().await
                }));
                settings.tls = Some(tls);
            }
            info!(channel = %channel.name, addr = %local, tls = src.tls.is_some(), destinations = channel.destinations.len(), "channel listening");
            let stop = stopping.clone();
            let name = channel.name.clone();
            let failures = Arc::clone(&listener_failures);
            tasks.spawn(async move {
                let stop_signal = stop.clone();
                let served = server::run(listener, ChannelHandler(ingest), settings, async move {
                    stop_signal.cancelled().await
                })
                .await;
                let why = match served {
                    Err(e) => e.to_string(),
                    Ok(()) if !stop.is_cancelled() => "the listener stopped".to_owned(),
                    Ok(()) => return,
                };
                error!(channel = %name, error = %why, "listener failed");
                // std Mutex: held for an insert, never across an await.
                let mut failed = failures.lock().unwrap_or_else(|p| p.into_inner());
                failed.insert(name, why);
            });
        }

        let started = crate::link::start(
            crate::link::Parts {
                config: &config,
                channels: Arc::new(channels.clone()),
                store: store.clone(),
                metrics: metrics.clone(),
                waiters: waiters.clone(),
                wakers: &wakers,
            },
            &mut tasks,
            &mut workers,
            &stopping,
            &workers_stop,
        )
        .await
        .map_err(|reason| GatewayError::Setup {
            what: "link".to_owned(),
            reason,
        })?;
        let (link, link_listening) = match started {
            Some(s) => (Some(s.link), s.listening),
            None => (None, None),
        };

        let admin_listener = if config.admin.disabled {
            None
        } else {
            let bind = config.admin.bind;
            let listener = TcpListener::bind(bind)
                .await
                .map_err(|source| GatewayError::Bind {
                    channel: "admin".to_owned(),
                    addr: bind,
                    source,
                })?;
            Some(listener)
        };
        let admin = admin_listener
            .as_ref()
            .map(|l| l.local_addr().unwrap_or(config.admin.bind));
        let gateway = Arc::new(Gateway {
            config,
            store,
            metrics,
            channels,
            wakers,
            listening,
            stopping: stopping.clone(),
            admin,
            link,
            link_listening,
            listener_failures,
            node_id: lease.node_id.clone(),
        });
        if let Some(listener) = admin_listener {
            tasks.spawn(crate::admin::serve(listener, gateway.clone())?);
        }
        tasks.spawn(housekeeping(gateway.clone()));
        let grace = gateway.config.shutdown.grace.0;
        Ok((
            gateway,
            Running {
                tasks,
                workers,
                workers_stop,
                grace,
            },
        ))
    }
}

/// How long `start` keeps trying to reach PostgreSQL before giving up.
const STORE_OPEN_PATIENCE: Duration = Duration::from_secs(60);

/// Opens the configured store: PostgreSQL when `store.postgres` is set, else SQLite in
/// `store.path`. PostgreSQL out of reach at start is retried with backoff for
/// [`STORE_OPEN_PATIENCE`] (a node started with its database is the common case in a
/// cluster); once running, the store reconnects on its own.
async fn open_store(c: &StoreConfig) -> Result<Arc<dyn Store>, GatewayError> {
    let settings = StoreSettings::default()
        .dedup_window(c.dedup_window.0)
        .read_connections(c.pool_size)
        .journal_bytes(c.journal_size.0)
        .journal_commit_interval(c.journal_commit_interval.0);
    let Some(url) = &c.postgres else {
        let data = &c.path;
        std::fs::create_dir_all(data).map_err(|e| GatewayError::Setup {
            what: format!("store.path {}", data.display()),
            reason: e.to_string(),
        })?;
        let db = data.join("causeway.db");
        let store =
            SqliteStore::open(&db, settings)
                .await
                .map_err(|source| GatewayError::Store {
                    path: db.display().to_string(),
                    source,
                })?;
        return Ok(Arc::new(store));
    };
    let setup = |reason: String| GatewayError::Setup {
        what: "store.postgres".to_owned(),
        reason,
    };
    let url = url
        .resolve("store.postgres")
        .map_err(|e| setup(e.to_string()))?;
    let mut pg = PgSettings::new(&url)
        .map_err(|e| setup(e.to_string()))?
        .connect_timeout(c.connect_timeout.0)
        .request_timeout(c.request_timeout.0);
    if let Some(schema) = &c.schema {
        pg = pg.schema(schema.clone());
    }
    if let Some(ca) = &c.tls_ca {
        pg = pg.tls(pg_tls(ca).map_err(|reason| GatewayError::Setup {
            what: format!("store.tls_ca {}", ca.display()),
            reason,
        })?);
    }
    let target = format!("{pg:?}");
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(500);
    loop {
        match PostgresStore::open(pg.clone(), settings.clone()).await {
            Ok(store) => {
                info!(database = %target, "store: PostgreSQL");
                return Ok(Arc::new(store));
            }
            Err(e) if e.is_store_failure() && started.elapsed() < STORE_OPEN_PATIENCE => {
                warn!(error = %error_chain(&e), retry_in_ms = backoff.as_millis() as u64, "cannot reach PostgreSQL; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                return Err(GatewayError::Setup {
                    what: format!("cannot open the store at {target}"),
                    reason: error_chain(&e),
                });
            }
        }
    }
}

/// An error with its sources, `outer: inner: innermost` (a refused TLS certificate or
/// password is in the sources, not in the store's own message).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// A rustls client configuration (ring) trusting the CA bundle at `ca`.
fn pg_tls(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in the file".to_owned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The gateway's tasks, to wait for at shutdown.
/// Loads a source's TLS material: its certificate and key, the client CA, the allow-list.
fn source_tls(
    channel: &str,
    tls: &crate::config::ServerTlsConfig,
) -> Result<ServerTls, GatewayError> {
    let setup = |reason: String| GatewayError::Setup {
        what: format!("channel {channel} source.tls"),
        reason,
    };
    let mut t = ServerTlsSettings::new(&tls.cert, &tls.key).with_min_version(tls.min_version.min());
    if let Some(pw) = &tls.key_password {
        let pw = pw
            .resolve(&format!("channel {channel} source.tls.key_password"))
            .map_err(|e| setup(e.to_string()))?;
        t = t.with_key_password(causeway_mllp::tls::KeyPassword::new(pw));
    }
    if let Some(ca) = &tls.client_ca {
        t = t.with_client_ca(ca);
    }
    if !tls.allow_clients.is_empty() {
        let rules = tls
            .allow_clients
            .iter()
            .map(|r| r.parse::<IdentityRule>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| setup(e.to_string()))?;
        t = t.with_allowed_clients(rules);
    }
    ServerTls::load(t).map_err(|e| setup(e.to_string()))
}

/// Loads what [`Gateway::start`] reads besides the configuration itself, without binding
/// or connecting anything: every source's and destination's TLS files (certificates, keys,
/// CA bundles), the link's, and secrets and headers taken from the environment. `causeway
/// config check` runs it, so a file that `serve` would refuse fails the check too.
pub fn preflight(config: &Config) -> Result<(), GatewayError> {
    for channel in &config.channels {
        if let Some(tls) = channel.source.as_ref().and_then(|s| s.tls.as_ref()) {
            source_tls(&channel.name, tls)?;
        }
        for dest in &channel.destinations {
            // A file destination creates its directory when it starts; a link destination
            // is checked with the link.
            if matches!(
                dest.kind,
                crate::config::DestinationKind::Mllp(_) | crate::config::DestinationKind::Http(_)
            ) {
                Sender::new(&channel.name, dest).map_err(|reason| GatewayError::Setup {
                    what: format!("channel {} destination {}", channel.name, dest.name),
                    reason,
                })?;
            }
        }
    }
    if let Some(link) = &config.link {
        crate::link::preflight(link).map_err(|reason| GatewayError::Setup {
            what: "link".to_owned(),
            reason,
        })?;
    }
    Ok(())
}

#[derive(Debug)]
pub struct Running {
    tasks: JoinSet<()>,
    workers: JoinSet<()>,
    workers_stop: CancellationToken,
    /// `shutdown.grace`: the longest [`Running::stop`] takes.
    grace: Duration,
}

impl Running {
    /// Stops in order, within `shutdown.grace`: listeners stop accepting and finish the
    /// messages in hand, then workers finish their attempt in hand (at least 1 s is left
    /// for them), then the store closes.
    pub async fn stop(mut self, gateway: &Gateway) {
        let started = tokio::time::Instant::now();
        let deadline = started + self.grace;
        gateway.stopping.cancel();
        // Listeners finish their messages in hand within `listener_grace` (their own grace
        // period); they, the admin API and the link's sessions get a tenth more to wind up.
        let tasks_until = started + listener_grace(self.grace) + self.grace / 10;
        let drained = tokio::time::timeout_at(tasks_until, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("listeners did not drain within the grace period");
            self.tasks.abort_all();
        }
        self.workers_stop.cancel();
        let workers_until = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        if tokio::time::timeout_at(workers_until, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            warn!(
                "delivery workers did not stop in time; the attempts in hand will be retried after restart"
            );
            self.workers.abort_all();
        }
        // What is left of the grace, and at least 2 s: a close commits what the SQLite
        // journal holds and checkpoints; cut short, the next start recovers it all.
        let close_until = deadline.max(tokio::time::Instant::now() + Duration::from_secs(2));
        match tokio::time::timeout_at(close_until, gateway.store.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "store did not close cleanly"),
            Err(_) => warn!(
                "store did not close within the grace period; the next start recovers what it held"
            ),
        }
        info!("gateway stopped");
    }
}

/// Every few seconds: queue gauges. Every minute: retention.
async fn housekeeping(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = gateway.stopping.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let now = Timestamp::from(SystemTime::now());
        if let Ok(stats) = gateway.store.queue_stats().await {
            for s in stats {
                let label = QueueLabel {
                    destination: s.destination.clone(),
                };
                gateway
                    .metrics
                    .queue_depth
                    .get_or_create(&label)
                    .set(i64::try_from(s.pending).unwrap_or(i64::MAX));
                gateway
                    .metrics
                    .dead_letters
                    .get_or_create(&label)
                    .set(i64::try_from(s.dead_lettered).unwrap_or(i64::MAX));
                let age = s
                    .oldest_pending_received_at
                    .map_or(0, |t| (now.as_millis() - t.as_millis()).max(0) / 1000);
                gateway
                    .metrics
                    .oldest_pending_seconds
                    .get_or_create(&label)
                    .set(age);
            }
        }
        if n % 12 == 1 {
            let retention = Retention {
                max_age: Some(gateway.config.store.max_age.0),
                max_total_bytes: Some(gateway.config.store.max_bytes.0),
            };
            match gateway.store.prune(now, retention).await {
                Ok(report) if report.messages > 0 => info!(
                    messages = report.messages,
                    bytes = report.bytes,
                    "pruned delivered messages"
                ),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "pruning failed"),
            }
        }
    }
}
