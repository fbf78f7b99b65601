//! The configuration file, `causeway.toml`: what it may say, its defaults, and its checks.
//!
//! Every field's doc comment is the user manual for that key; README's configuration
//! reference and `causeway.example.toml` say the same in short (the example is checked by a
//! test, the README table by review). Unknown keys are errors, so a typo never
//! silently falls back to a default. Secrets (tokens) may be written as `${ENV_VAR}` and are
//! read from the environment at load time; they never appear in `Debug` output or logs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be used. The message names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names line, column and key).
    #[error("{0}")]
    Syntax(String),
    /// A value is well-formed but not acceptable.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted path of the key, e.g. `channel[0].destination[1].to`.
        key: String,
        /// What is wrong and what would be right.
        reason: String,
    },
}

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A duration written as `"500ms"`, `"30s"`, `"10m"`, `"24h"` or `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration such as \"30s\" or \"10m\": {e}"
            ))
        })
    }
}

/// A size written as a number of bytes or `"16MiB"`, `"512KiB"`, `"10GiB"`, `"1MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Size(n)),
            Raw::Text(text) => parse_size(&text).map(Size).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a size such as \"16MiB\" or \"512KiB\""
                ))
            }),
        }
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A secret: written literally or as `${ENV_VAR}`; never printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value, with `${VAR}` resolved from the environment.
    pub fn resolve(&self, key: &str) -> Result<String, ConfigError> {
        match self.0.strip_prefix("${").and_then(|s| s.strip_suffix('}')) {
            Some(var) => std::env::var(var)
                .map_err(|_| invalid(key, format!("environment variable {var} is not set"))),
            None => Ok(self.0.clone()),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where messages are stored.
    #[serde(default)]
    pub store: StoreConfig,
    /// The admin API (health, metrics, search, replay).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The channels: each one listener, optional filters, one or more destinations.
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelConfig>,
    /// The edge/hub link (see [`crate::link`]): an edge has `hub = "wss://..."`, a hub has
    /// `listen = "..."`. Absent: no link.
    pub link: Option<crate::link::config::LinkConfig>,
    /// How a stop (SIGTERM, Ctrl-C) goes.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// About the longest a stop takes, from the signal to the exit (1 s to 1 h). Listeners
    /// stop accepting at once and have four fifths of it to store and acknowledge the
    /// messages in hand; delivery workers then finish their attempt in hand within what is
    /// left (at least 1 s), and the store closes within what is left after that (at least
    /// 2 s). An attempt cut short is retried after the restart; a close cut short is
    /// recovered at the next start. Keep it below the orchestrator's
    /// own limit (Kubernetes: `terminationGracePeriodSeconds`). A second signal exits at
    /// once. Default `"25s"`.
    #[serde(default = "default_grace")]
    pub grace: Dur,
}

fn default_grace() -> Dur {
    Dur(Duration::from_secs(25))
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: default_grace(),
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the embedded SQLite store (created if missing). Default `./causeway-data`.
    #[serde(default = "default_data_dir")]
    pub path: PathBuf,
    /// A resent message (same channel, sender, control id and bytes) within this window is
    /// acknowledged again but not delivered twice. Default `"24h"`.
    #[serde(default = "default_dedup")]
    pub dedup_window: Dur,
    /// Delivered messages older than this are pruned. Default `"30d"`. Failed and
    /// dead-lettered messages are kept until handled, whatever their age.
    #[serde(default = "default_max_age")]
    pub max_age: Dur,
    /// Delivered messages are pruned oldest first beyond this total size. Default `"10GiB"`.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: Size,
    /// PostgreSQL instead of SQLite (`path` is then unused):
    /// `"postgres://user:password@host:5432/dbname"`, or `"${DATABASE_URL}"` to read it
    /// from the environment. Several gateways on one database share the work: any node
    /// takes messages on any channel, and each destination is delivered by one node at a
    /// time, under a lease. `?sslmode=require` refuses a server without TLS.
    pub postgres: Option<Secret>,
    /// PostgreSQL: keep the tables in this schema (created if missing) instead of the
    /// server's default; every node sharing the work must name the same one. Letters,
    /// digits and `_`.
    pub schema: Option<String>,
    /// PostgreSQL: CA bundle (PEM) to verify the server's certificate with; connections use
    /// TLS (rustls) when the server offers it (say `sslmode=require` in the URL to insist).
    pub tls_ca: Option<PathBuf>,
    /// PostgreSQL: connections for everything but ingest (which has one of its own); with
    /// SQLite, the number of read connections. Default 4.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// PostgreSQL: longest wait to open one connection. Default `"5s"`.
    #[serde(default = "default_pg_connect_timeout")]
    pub connect_timeout: Dur,
    /// PostgreSQL: longest any store call may take (waiting for a connection included);
    /// beyond it the sender gets AE. Default `"30s"`.
    #[serde(default = "default_pg_request_timeout")]
    pub request_timeout: Dur,
    /// This node's name in delivery leases (the admin API's `/api/leases` shows who holds
    /// what). Must differ between the nodes sharing a database. Default: the host name
    /// (with PostgreSQL, `<host name>-<pid>`, so that processes on one host differ).
    pub node_id: Option<String>,
    /// How long a node may be silent before another takes over its destinations. The
    /// holder renews its leases every `lease_timeout * 0.3`; standby nodes look every
    /// `lease_timeout / 10`. Default `"15s"`.
    #[serde(default = "default_lease_timeout")]
    pub lease_timeout: Dur,
    /// SQLite: size of the ingest journal (`causeway.db.ingest-journal`), where a message
    /// is made durable before its ACK; SQLite's indexes are then written in large
    /// batches behind it. `0` turns it off: every batch is committed and synced in SQLite
    /// before its ACKs, at a fraction of the throughput. Default `"64MiB"`.
    #[serde(default = "default_journal_size")]
    pub journal_size: Size,
    /// SQLite with the journal: longest the journal's ingests wait to be committed to
    /// SQLite (a read of them commits them at once). Bounds the work replayed after a
    /// crash. Default `"200ms"`.
    #[serde(default = "default_journal_commit_interval")]
    pub journal_commit_interval: Dur,
}

fn default_pool_size() -> usize {
    4
}
fn default_pg_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_pg_request_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_lease_timeout() -> Dur {
    Dur(Duration::from_secs(15))
}

impl StoreConfig {
    /// The checks of `[store]` the types cannot make.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.postgres {
            let url = url.resolve("store.postgres")?;
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.contains('='))
            {
                // Never echo the value: it may hold a password.
                return Err(invalid(
                    "store.postgres",
                    "not a postgres://user:password@host:port/dbname URL",
                ));
            }
        }
        if let Some(schema) = &self.schema {
            let ok = schema.len() <= 63
                && schema
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(invalid(
                    "store.schema",
                    format!("{schema:?}: letters, digits and _ only, at most 63"),
                ));
            }
        }
        if self.pool_size == 0 {
            return Err(invalid("store.pool_size", "must be at least 1"));
        }
        for (key, d) in [
            ("store.connect_timeout", self.connect_timeout),
            ("store.request_timeout", self.request_timeout),
        ] {
            if d.0.is_zero() {
                return Err(invalid(key, "must not be zero"));
            }
        }
        if self.lease_timeout.0 < Duration::from_secs(1) {
            return Err(invalid("store.lease_timeout", "must be at least 1s"));
        }
        if self.journal_size.0 != 0 && self.journal_size.0 < 1 << 20 {
            return Err(invalid(
                "store.journal_size",
                "must be 0 (no journal) or at least 1MiB",
            ));
        }
        if self.journal_commit_interval.0.is_zero() {
            return Err(invalid("store.journal_commit_interval", "must not be zero"));
        }
        if let Some(id) = &self.node_id
            && (id.is_empty() || id.len() > 128 || id.chars().any(char::is_control))
        {
            return Err(invalid(
                "store.node_id",
                "1 to 128 characters, no control characters",
            ));
        }
        Ok(())
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./causeway-data")
}
fn default_dedup() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}
fn default_max_age() -> Dur {
    Dur(Duration::from_secs(30 * 24 * 3600))
}
fn default_max_bytes() -> Size {
    Size(10 << 30)
}
fn default_journal_size() -> Size {
    Size(64 << 20)
}
fn default_journal_commit_interval() -> Dur {
    Dur(Duration::from_millis(200))
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_data_dir(),
            dedup_window: default_dedup(),
            max_age: default_max_age(),
            max_bytes: default_max_bytes(),
            postgres: None,
            schema: None,
            tls_ca: None,
            pool_size: default_pool_size(),
            connect_timeout: default_pg_connect_timeout(),
            request_timeout: default_pg_request_timeout(),
            node_id: None,
            lease_timeout: default_lease_timeout(),
            journal_size: default_journal_size(),
            journal_commit_interval: default_journal_commit_interval(),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin API. Default `127.0.0.1:8080`. Anything but loopback requires
    /// `token`.
    #[serde(default = "default_admin_bind")]
    pub bind: SocketAddr,
    /// Bearer token required on every request but `/healthz` and `/readyz`
    /// (`Authorization: Bearer <token>`). `${ENV_VAR}` reads it from the environment.
    pub token: Option<Secret>,
    /// Name recorded in the audit log for requests made with `token`. Default `"admin"`.
    #[serde(default = "default_token_name")]
    pub token_name: String,
    /// Turn the admin API off.
    #[serde(default)]
    pub disabled: bool,
    /// Most connections open at once; more wait to be accepted. Default 64.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (a client stuck halfway
    /// through its request headers included). Default `60s`.
    #[serde(default = "default_admin_idle_timeout")]
    pub idle_timeout: Dur,
}

fn default_admin_max_connections() -> usize {
    64
}
fn default_admin_idle_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

fn default_admin_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_token_name() -> String {
    "admin".to_owned()
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: default_admin_bind(),
            token: None,
            token_name: default_token_name(),
            disabled: false,
            max_connections: default_admin_max_connections(),
            idle_timeout: default_admin_idle_timeout(),
        }
    }
}

/// When the sender gets its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AckPolicy {
    /// AA (CA in enhanced mode) as soon as the message is durably stored.
    #[default]
    AfterStore,
    /// Wait for the first destination's outcome (up to `ack_timeout`) and relay it; AE on
    /// timeout. The message is stored first and still delivered later either way.
    AfterDelivery,
    /// On an edge whose first destination is the link: wait for the hub-side destination's
    /// acknowledgement (up to `ack_timeout`) and relay it; AE on timeout.
    EndToEnd,
}

/// `[[channel]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Unique name, used in metrics, the API and the store: letters, digits, `-` and `_`.
    pub name: String,
    /// When to acknowledge. Default `"after_store"`.
    #[serde(default)]
    pub ack: AckPolicy,
    /// With `ack = "after_delivery"`, how long to wait for the destination. Default `"10s"`.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: Dur,
    /// The MLLP listener messages arrive on. A channel without one takes messages from the
    /// link and the admin API only.
    pub source: Option<SourceConfig>,
    /// Where messages go; at least one.
    #[serde(rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
}

fn default_ack_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// `[channel.source]`: an MLLP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Address to listen on. Loopback unless configured: use `0.0.0.0:2575` to accept from
    /// other hosts.
    pub bind: SocketAddr,
    /// Most connections at once; the next one is closed with a log line. Default 256.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest message; a larger frame gets an AR and is not buffered. Default `"16MiB"`.
    #[serde(default = "default_max_message")]
    pub max_message_size: Size,
    /// Time allowed to receive one whole message once it started. Default `"30s"`.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Dur,
    /// Idle connections are closed after this. Default `"10m"`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Longest time to write one ACK; a sender that stops reading is disconnected.
    /// Default `"30s"`.
    #[serde(default = "default_send_timeout")]
    pub write_timeout: Dur,
    /// Longest time for a TLS handshake. Default `"10s"`.
    #[serde(default = "default_connect_timeout")]
    pub handshake_timeout: Dur,
    /// TCP keepalive idle time, so that peers gone behind a NAT or firewall are noticed;
    /// `"0s"` turns keepalive off. Default `"60s"`.
    #[serde(default = "default_keepalive")]
    pub tcp_keepalive: Dur,
    /// MLLP Release 2: send a commit ACK block once the message is stored, before its HL7
    /// ACK, and a commit NAK block for a refused frame. Default `false` (Release 1).
    #[serde(default)]
    pub commit_acks: bool,
    /// Refuse a frame whose end block lacks its CR (lenient by default).
    #[serde(default)]
    pub strict_framing: bool,
    /// MLLP block bytes, for vendors that use others than the standard ones.
    #[serde(default)]
    pub framing: FramingBytes,
    /// TLS for this listener (plain MLLP when absent).
    pub tls: Option<ServerTlsConfig>,
}

fn default_max_connections() -> usize {
    256
}
fn default_max_message() -> Size {
    Size(16 << 20)
}
fn default_read_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(600))
}

/// `[channel.source.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// Certificate chain (PEM), reloaded when the file changes.
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Password of an encrypted `key` (PKCS#8 `ENCRYPTED PRIVATE KEY`, as `openssl
    /// genpkey -aes256` writes it); `${ENV_VAR}` reads it from the environment.
    pub key_password: Option<Secret>,
    /// CA bundle (PEM) for client certificates: mutual TLS when set.
    pub client_ca: Option<PathBuf>,
    /// Client identities admitted: `cn:NAME`, `dns:NAME`, `uri:URI`. Empty admits any
    /// client the CA signed.
    #[serde(default)]
    pub allow_clients: Vec<String>,
    /// The oldest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// `min_version = "1.2" | "1.3"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

impl TlsVersion {
    /// The transport's setting.
    pub fn min(self) -> causeway_mllp::tls::MinTlsVersion {
        match self {
            TlsVersion::Tls12 => causeway_mllp::tls::MinTlsVersion::Tls12,
            TlsVersion::Tls13 => causeway_mllp::tls::MinTlsVersion::Tls13,
        }
    }
}

/// `[[channel.destination]]`
///
/// (No `deny_unknown_fields` here: serde cannot combine it with the flattened `kind`. The
/// keys left over go to the kind's struct, which does deny unknown fields, so typos are
/// still caught.)
#[derive(Debug, Clone, Deserialize)]
pub struct DestinationConfig {
    /// Unique name across all channels.
    pub name: String,
    /// What to do with messages for this destination.
    #[serde(flatten)]
    pub kind: DestinationKind,
    /// Which messages this destination takes (all when absent).
    #[serde(default)]
    pub filter: FilterConfig,
    /// `"block"`: the head message is retried until it goes through, keeping order
    /// (default). `"dead_letter"`: after `max_attempts` it is set aside and the queue moves
    /// on; dead letters can be replayed.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Attempts before a message is dead-lettered (with `on_failure = "dead_letter"`).
    /// Default 10.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles up to `retry_max`, with jitter. Default `"1s"`.
    #[serde(default = "default_retry_initial")]
    pub retry_initial: Dur,
    /// Longest retry delay. Default `"5m"`.
    #[serde(default = "default_retry_max")]
    pub retry_max: Dur,
}

fn default_max_attempts() -> u32 {
    10
}
fn default_retry_initial() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_retry_max() -> Dur {
    Dur(Duration::from_secs(300))
}

/// See [`DestinationConfig::on_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Keep order; retry the head forever.
    #[default]
    Block,
    /// Set aside after `max_attempts`.
    DeadLetter,
}

/// The destination types, chosen by `type = "mllp" | "http" | "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DestinationKind {
    /// Send over MLLP and check the ACK (MSA-2 must match).
    Mllp(MllpDestination),
    /// HTTP(S) POST.
    Http(HttpDestination),
    /// One file per message in a directory, written atomically.
    File(FileDestination),
    /// Over the edge/hub link to a channel of the peer.
    Link(crate::link::config::LinkDestination),
}

/// `type = "mllp"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpDestination {
    /// `host:port` of the receiver.
    pub to: String,
    /// Longest wait for the ACK. Default `"30s"`.
    #[serde(default = "default_send_timeout")]
    pub ack_timeout: Dur,
    /// Longest wait for a connection. Default `"10s"`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// AE/CE from the receiver: retry (default `true`), or treat as permanent like AR.
    #[serde(default = "default_true")]
    pub retry_on_ae: bool,
    /// Longest time to write one message. Default `"30s"`.
    #[serde(default = "default_send_timeout")]
    pub write_timeout: Dur,
    /// TCP keepalive idle time on the kept-open connection; `"0s"` turns it off.
    /// Default `"60s"`.
    #[serde(default = "default_keepalive")]
    pub tcp_keepalive: Dur,
    /// MLLP Release 2: count the receiver's commit ACK block as delivery, for receivers
    /// that send no HL7 ACK. Default `false`: wait for the HL7 ACK and check it.
    #[serde(default)]
    pub accept_commit_ack: bool,
    /// TLS to the receiver.
    pub tls: Option<ClientTlsConfig>,
    /// MLLP block bytes, for receivers that use others than the standard ones.
    #[serde(default)]
    pub framing: FramingBytes,
}

/// `framing = { start = 0x0B, end = 0x1C, trailer = 0x0D }`: the MLLP block bytes. TOML
/// takes hexadecimal integers as written here. The three must differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FramingBytes {
    /// Opens a frame. Default 0x0B (VT).
    #[serde(default = "default_start")]
    pub start: u8,
    /// Ends a frame's payload. Default 0x1C (FS).
    #[serde(default = "default_end")]
    pub end: u8,
    /// Follows the end byte. Default 0x0D (CR).
    #[serde(default = "default_trailer")]
    pub trailer: u8,
}

fn default_start() -> u8 {
    0x0B
}
fn default_end() -> u8 {
    0x1C
}
fn default_trailer() -> u8 {
    0x0D
}

impl Default for FramingBytes {
    fn default() -> Self {
        FramingBytes {
            start: default_start(),
            end: default_end(),
            trailer: default_trailer(),
        }
    }
}

impl FramingBytes {
    /// These bytes applied to `options`.
    pub fn apply(
        &self,
        options: causeway_mllp::frame::FramingOptions,
    ) -> causeway_mllp::frame::FramingOptions {
        options.with_bytes(self.start, self.end, self.trailer)
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.start == self.end || self.start == self.trailer || self.end == self.trailer {
            return Err(invalid(
                key,
                "start, end and trailer must be three different bytes",
            ));
        }
        Ok(())
    }
}

fn default_send_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_keepalive() -> Dur {
    Dur(Duration::from_secs(60))
}
/// `"0s"` means off.
pub(crate) fn keepalive(d: Dur) -> Option<Duration> {
    (!d.0.is_zero()).then_some(d.0)
}
fn default_true() -> bool {
    true
}

/// `[channel.destination.tls]` of an MLLP destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// CA bundle (PEM) that signs the receiver's certificate.
    pub ca: Option<PathBuf>,
    /// SHA-256 fingerprint (hex) of the receiver's certificate; alone, or with `ca`.
    pub pin: Option<String>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// Password of an encrypted `key` (PKCS#8); `${ENV_VAR}` reads it from the environment.
    pub key_password: Option<Secret>,
    /// Name to check in the certificate (default: the host of `to`).
    pub server_name: Option<String>,
    /// The oldest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// `type = "http"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDestination {
    /// URL to POST to.
    pub url: String,
    /// `"er7"`: the message as received, `Content-Type: application/hl7-v2; charset=...`
    /// (HL7 over HTTP). `"json"`: the parsed message as JSON. Default `"er7"`.
    #[serde(default)]
    pub format: HttpFormat,
    /// Extra request headers. A value written `${ENV_VAR}` is read from the environment
    /// (an API key, say); values are never logged.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// Sent as `Authorization: Bearer <token>`; `${ENV_VAR}` reads it from the environment.
    pub bearer_token: Option<Secret>,
    /// Header carrying a stable message id, so the receiver can drop retries it already
    /// has. Default `"Idempotency-Key"`.
    #[serde(default = "default_id_header")]
    pub message_id_header: String,
    /// Status codes that mean "never retry" (the message is dead-lettered at once).
    /// Default 400, 401, 403, 404, 405, 409, 410, 413, 415, 422. Any other non-2xx is retried.
    #[serde(default = "default_permanent")]
    pub permanent_failure_codes: Vec<u16>,
    /// Longest wait for the response. Default `"30s"`.
    #[serde(default = "default_send_timeout")]
    pub timeout: Dur,
    /// Extra CA bundle (PEM) to trust besides the public web roots.
    pub ca: Option<PathBuf>,
}

fn default_id_header() -> String {
    "Idempotency-Key".to_owned()
}
fn default_permanent() -> Vec<u16> {
    vec![400, 401, 403, 404, 405, 409, 410, 413, 415, 422]
}

/// See [`HttpDestination::format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    /// The raw message.
    #[default]
    Er7,
    /// A JSON document of the parsed message.
    Json,
}

/// `type = "file"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDestination {
    /// Directory to write into (created if missing).
    pub directory: PathBuf,
    /// File name pattern: `{id}` (store id), `{control_id}`, `{type}` (e.g. `ADT_A01`),
    /// `{channel}`, `{date}` (`YYYYMMDD`, UTC, of the day the file is written: a replay on another
    /// day gets another name). Default `"{date}-{id}-{control_id}.hl7"`.
    /// Characters outside letters, digits, `-`, `_`, `.` in values become `_`.
    #[serde(default = "default_file_pattern")]
    pub filename: String,
}

fn default_file_pattern() -> String {
    "{date}-{id}-{control_id}.hl7".to_owned()
}

/// Which messages a destination takes. Each list is a set of alternatives; all given lists
/// must match. Patterns use `*` (any run of characters) and `?` (one character).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// MSH-9 as `CODE^TRIGGER`, e.g. `["ADT^A0*", "ORU^R01"]`.
    #[serde(default)]
    pub message_type: Vec<String>,
    /// MSH-3 sending application.
    #[serde(default)]
    pub sending_application: Vec<String>,
    /// MSH-4 sending facility.
    #[serde(default)]
    pub sending_facility: Vec<String>,
    /// MSH-5 receiving application.
    #[serde(default)]
    pub receiving_application: Vec<String>,
    /// MSH-6 receiving facility.
    #[serde(default)]
    pub receiving_facility: Vec<String>,
}

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The embedded defaults: one channel on 127.0.0.1:2575 storing in `./causeway-data`
    /// and delivering to files under `./causeway-data/outbox`.
    pub fn embedded_default() -> Config {
        Config::parse(DEFAULT_CONFIG)
            .unwrap_or_else(|e| unreachable!("the embedded default config is valid: {e}"))
    }

    /// Checks what the types cannot: unique names, secrets resolvable, admin exposure.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.store.validate()?;
        if self.shutdown.grace.0 < Duration::from_secs(1)
            || self.shutdown.grace.0 > Duration::from_secs(3600)
        {
            return Err(invalid("shutdown.grace", "must be between 1s and 1h"));
        }
        if self.channels.is_empty() {
            return Err(invalid(
                "channel",
                "no channels: add at least one [[channel]]",
            ));
        }
        let mut channels = HashSet::new();
        let mut destinations = HashSet::new();
        let mut binds = HashSet::new();
        for (i, c) in self.channels.iter().enumerate() {
            let key = format!("channel[{i}]");
            check_name(&format!("{key}.name"), &c.name)?;
            if !channels.insert(c.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("duplicate channel name {:?}", c.name),
                ));
            }
            if let Some(source) = &c.source {
                source.validate(&key, &mut binds)?;
            }
            if c.destinations.is_empty() {
                return Err(invalid(
                    format!("{key}.destination"),
                    "a channel needs at least one [[channel.destination]]",
                ));
            }
            for (j, d) in c.destinations.iter().enumerate() {
                let dkey = format!("{key}.destination[{j}]");
                check_name(&format!("{dkey}.name"), &d.name)?;
                if !destinations.insert(d.name.as_str()) {
                    return Err(invalid(
                        format!("{dkey}.name"),
                        format!(
                            "duplicate destination name {:?} (names are unique across channels)",
                            d.name
                        ),
                    ));
                }
                if d.max_attempts == 0 {
                    return Err(invalid(
                        format!("{dkey}.max_attempts"),
                        "must be at least 1",
                    ));
                }
                d.kind.validate(&dkey)?;
            }
        }
        crate::link::config::validate(self)?;
        if !self.admin.disabled {
            match &self.admin.token {
                Some(token) if token.resolve("admin.token")?.len() < 16 => {
                    return Err(invalid("admin.token", "use at least 16 characters"));
                }
                Some(_) => {}
                None if !self.admin.bind.ip().is_loopback() => {
                    return Err(invalid(
                        "admin.token",
                        format!(
                            "the admin API binds {} (not loopback): set a token",
                            self.admin.bind
                        ),
                    ));
                }
                None => {}
            }
        }
        Ok(())
    }
}

impl SourceConfig {
    fn validate(&self, key: &str, binds: &mut HashSet<SocketAddr>) -> Result<(), ConfigError> {
        if !binds.insert(self.bind) {
            return Err(invalid(
                format!("{key}.source.bind"),
                format!("{} is used by another channel", self.bind),
            ));
        }
        self.framing.validate(&format!("{key}.source.framing"))?;
        if self.max_connections == 0 {
            return Err(invalid(
                format!("{key}.source.max_connections"),
                "must be at least 1",
            ));
        }
        for (name, d) in [
            ("read_timeout", self.read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("write_timeout", self.write_timeout),
            ("handshake_timeout", self.handshake_timeout),
        ] {
            if d.0.is_zero() {
                return Err(invalid(format!("{key}.source.{name}"), "must not be zero"));
            }
        }
        if let Some(tls) = &self.tls {
            if let Some(pw) = &tls.key_password {
                pw.resolve(&format!("{key}.source.tls.key_password"))?;
            }
            for (j, rule) in tls.allow_clients.iter().enumerate() {
                rule.parse::<causeway_mllp::tls::IdentityRule>()
                    .map_err(|e| {
                        invalid(
                            format!("{key}.source.tls.allow_clients[{j}]"),
                            e.to_string(),
                        )
                    })?;
            }
            if !tls.allow_clients.is_empty() && tls.client_ca.is_none() {
                return Err(invalid(
                    format!("{key}.source.tls.allow_clients"),
                    "needs client_ca",
                ));
            }
        }
        Ok(())
    }
}

impl DestinationKind {
    fn validate(&self, dkey: &str) -> Result<(), ConfigError> {
        match self {
            DestinationKind::Mllp(m) => {
                m.framing.validate(&format!("{dkey}.framing"))?;
                for (name, d) in [
                    ("ack_timeout", m.ack_timeout),
                    ("connect_timeout", m.connect_timeout),
                    ("write_timeout", m.write_timeout),
                ] {
                    if d.0.is_zero() {
                        return Err(invalid(format!("{dkey}.{name}"), "must not be zero"));
                    }
                }
                if !m.to.contains(':') {
                    return Err(invalid(
                        format!("{dkey}.to"),
                        format!("{:?} is not host:port", m.to),
                    ));
                }
                if let Some(tls) = &m.tls {
                    if tls.ca.is_none() && tls.pin.is_none() {
                        return Err(invalid(format!("{dkey}.tls"), "needs ca or pin"));
                    }
                    if let Some(pin) = &tls.pin {
                        pin.parse::<causeway_mllp::tls::Fingerprint>()
                            .map_err(|e| invalid(format!("{dkey}.tls.pin"), e.to_string()))?;
                    }
                    if let Some(pw) = &tls.key_password {
                        pw.resolve(&format!("{dkey}.tls.key_password"))?;
                    }
                }
            }
            DestinationKind::Http(h) => {
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                    return Err(invalid(
                        format!("{dkey}.url"),
                        format!("{:?} is not an http:// or https:// URL", h.url),
                    ));
                }
                if let Some(token) = &h.bearer_token {
                    let token = token.resolve(&format!("{dkey}.bearer_token"))?;
                    if reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
                        return Err(invalid(
                            format!("{dkey}.bearer_token"),
                            "not a valid header value (control characters?)",
                        ));
                    }
                }
                for (name, value) in &h.headers {
                    let key = format!("{dkey}.headers.{name}");
                    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err(invalid(key, "not a valid HTTP header name"));
                    }
                    // Never echo the value: it may be a secret.
                    let value = value.resolve(&key)?;
                    if reqwest::header::HeaderValue::from_str(&value).is_err() {
                        return Err(invalid(
                            key,
                            "not a valid header value (control characters or non-ASCII?)",
                        ));
                    }
                }
                if reqwest::header::HeaderName::from_bytes(h.message_id_header.as_bytes()).is_err()
                {
                    return Err(invalid(
                        format!("{dkey}.message_id_header"),
                        format!("{:?} is not a valid HTTP header name", h.message_id_header),
                    ));
                }
            }
            DestinationKind::File(f) => {
                if f.filename.contains('/') || f.filename.contains("..") {
                    return Err(invalid(
                        format!("{dkey}.filename"),
                        "must be a file name, not a path",
                    ));
                }
                if !f.filename.contains("{id}") {
                    return Err(invalid(
                        format!("{dkey}.filename"),
                        "must contain {id} so names never collide",
                    ));
                }
            }
            // Checked with the [link] section, which it depends on.
            DestinationKind::Link(_) => {}
        }
        Ok(())
    }
}

pub(crate) fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{name:?}: use 1 to 64 letters, digits, '-' or '_'"),
        ))
    }
}

/// What `causeway serve` runs with no `--config`.
pub const DEFAULT_CONFIG: &str = r#"
[store]
path = "./causeway-data"

[admin]
bind = "127.0.0.1:8080"

[[channel]]
name = "default"

[channel.source]
bind = "127.0.0.1:2575"

[[channel.destination]]
name = "outbox"
type = "file"
directory = "./causeway-data/outbox"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert_eq!(
            c.channels[0].source.as_ref().unwrap().bind,
            "127.0.0.1:2575".parse().unwrap()
        );
        assert_eq!(c.channels[0].ack, AckPolicy::AfterStore);
    }

    #[test]
    fn errors_name_the_key() {
        let base = DEFAULT_CONFIG;
        let typo = base.replace("bind = \"127.0.0.1:2575\"", "bnd = \"127.0.0.1:2575\"");
        let e = Config::parse(&typo).unwrap_err().to_string();
        assert!(e.contains("bnd") && e.contains("line"), "{e}");
        let bad = base.replace("type = \"file\"", "type = \"ftp\"");
        assert!(Config::parse(&bad).unwrap_err().to_string().contains("ftp"));
        let exposed = base.replace("bind = \"127.0.0.1:8080\"", "bind = \"0.0.0.0:8080\"");
        let e = Config::parse(&exposed).unwrap_err().to_string();
        assert!(e.starts_with("admin.token:"), "{e}");
        let dur = base.replace("[store]", "[store]\nmax_age = \"forever\"");
        assert!(
            Config::parse(&dur)
                .unwrap_err()
                .to_string()
                .contains("forever")
        );
        let small = base.replace("[store]", "[store]\njournal_size = \"64KiB\"");
        let e = Config::parse(&small).unwrap_err().to_string();
        assert!(e.starts_with("store.journal_size:"), "{e}");
        let off = base.replace("[store]", "[store]\njournal_size = 0");
        assert_eq!(Config::parse(&off).unwrap().store.journal_size.0, 0);
        let env = base.replace("[admin]", "[admin]\ntoken = \"${CAUSEWAY_TEST_UNSET_VAR}\"");
        let e = Config::parse(&env).unwrap_err().to_string();
        assert!(e.contains("CAUSEWAY_TEST_UNSET_VAR"), "{e}");
        let same = base.replace(
            "[channel.source]",
            "[channel.source]\nframing = { start = 0x1C }",
        );
        assert!(
            Config::parse(&same)
                .unwrap_err()
                .to_string()
                .contains("channel[0].source.framing")
        );
        let custom = base.replace(
            "[channel.source]",
            "[channel.source]\nframing = { start = 0x02, end = 0x03 }",
        );
        assert_eq!(
            Config::parse(&custom).unwrap().channels[0]
                .source
                .as_ref()
                .unwrap()
                .framing
                .start,
            0x02
        );
        let typo = base.replace("directory =", "directroy =");
        assert!(
            Config::parse(&typo)
                .unwrap_err()
                .to_string()
                .contains("directroy")
        );
        let dup = format!(
            "{base}\n[[channel.destination]]\nname = \"outbox\"\ntype = \"file\"\ndirectory = \"x\"\n"
        );
        assert!(
            Config::parse(&dup)
                .unwrap_err()
                .to_string()
                .contains("channel[0].destination[1].name")
        );
    }

    #[test]
    fn transport_settings_and_their_checks() {
        let base = DEFAULT_CONFIG;
        let c = Config::parse(base).unwrap();
        let src = c.channels[0].source.as_ref().unwrap();
        assert_eq!(keepalive(src.tcp_keepalive), Some(Duration::from_secs(60)));
        assert!(!src.commit_acks);
        let set = base.replace(
            "[channel.source]",
            "[channel.source]\nwrite_timeout = \"5s\"\nhandshake_timeout = \"3s\"\n\
             tcp_keepalive = \"0s\"\ncommit_acks = true",
        );
        let c = Config::parse(&set).unwrap();
        let src = c.channels[0].source.as_ref().unwrap();
        assert_eq!(src.write_timeout.0, Duration::from_secs(5));
        assert_eq!(src.handshake_timeout.0, Duration::from_secs(3));
        assert_eq!(keepalive(src.tcp_keepalive), None, "0s turns it off");
        assert!(src.commit_acks);
        let zero = base.replace(
            "[channel.source]",
            "[channel.source]\nwrite_timeout = \"0s\"",
        );
        let e = Config::parse(&zero).unwrap_err().to_string();
        assert!(e.starts_with("channel[0].source.write_timeout:"), "{e}");
        let tls = base.replace(
            "bind = \"127.0.0.1:2575\"\n",
            "bind = \"127.0.0.1:2575\"\n[channel.source.tls]\ncert = \"c\"\nkey = \"k\"\nmin_version = \"1.3\"\n",
        );
        let c = Config::parse(&tls).unwrap();
        let src = c.channels[0].source.as_ref().unwrap();
        assert_eq!(src.tls.as_ref().unwrap().min_version, TlsVersion::Tls13);
        let bad = tls.replace("min_version = \"1.3\"", "min_version = \"1.1\"");
        assert!(Config::parse(&bad).unwrap_err().to_string().contains("1.1"));
        let grace = format!("{base}\n[shutdown]\ngrace = \"500ms\"\n");
        let e = Config::parse(&grace).unwrap_err().to_string();
        assert!(e.starts_with("shutdown.grace:"), "{e}");
    }

    #[test]
    fn postgres_store_keys() {
        let base = DEFAULT_CONFIG;
        let pg = base.replace(
            "[store]",
            "[store]\npostgres = \"postgres://cw:pw@db:5432/causeway\"\nschema = \"cw\"\n\
             pool_size = 8\nnode_id = \"node-a\"\nlease_timeout = \"5s\"",
        );
        let c = Config::parse(&pg).unwrap();
        assert_eq!(
            c.store.postgres.as_ref().unwrap().resolve("k").unwrap(),
            "postgres://cw:pw@db:5432/causeway"
        );
        assert_eq!(c.store.pool_size, 8);
        assert_eq!(c.store.lease_timeout, Dur(Duration::from_secs(5)));
        // The inline-table form.
        let inline = base.replace(
            "[store]\npath = \"./causeway-data\"",
            "store = { postgres = \"postgres://db/causeway\" }",
        );
        assert!(Config::parse(&inline).unwrap().store.postgres.is_some());
        // Secrets from the environment; a missing one names the variable, never a value.
        let env = base.replace(
            "[store]",
            "[store]\npostgres = \"${CAUSEWAY_TEST_UNSET_DB}\"",
        );
        let e = Config::parse(&env).unwrap_err().to_string();
        assert!(
            e.starts_with("store.postgres:") && e.contains("CAUSEWAY_TEST_UNSET_DB"),
            "{e}"
        );
        let bad = base.replace("[store]", "[store]\npostgres = \"mysql://u:hunter2@h/db\"");
        let e = Config::parse(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("store.postgres:") && !e.contains("hunter2"),
            "{e}"
        );
        let bad = base.replace("[store]", "[store]\nschema = \"a;b\"");
        assert!(
            Config::parse(&bad)
                .unwrap_err()
                .to_string()
                .starts_with("store.schema:")
        );
        let bad = base.replace("[store]", "[store]\nlease_timeout = \"10ms\"");
        assert!(
            Config::parse(&bad)
                .unwrap_err()
                .to_string()
                .starts_with("store.lease_timeout:")
        );
        let bad = base.replace("[store]", "[store]\npool_size = 0");
        assert!(
            Config::parse(&bad)
                .unwrap_err()
                .to_string()
                .starts_with("store.pool_size:")
        );
    }

    #[test]
    fn sizes_and_secrets() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("1MB"), Some(1_000_000));
        assert_eq!(parse_size("x"), None);
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The example in the repository root is valid and shows the defaults it claims.
    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../causeway.example.toml");
        let c = Config::parse(text).unwrap();
        let d = Config::embedded_default();
        assert_eq!(c.store.max_age, d.store.max_age);
        assert_eq!(c.store.max_bytes, d.store.max_bytes);
        assert_eq!(c.admin.bind, d.admin.bind);
        let source = c.channels[0].source.as_ref().unwrap();
        let default_source = d.channels[0].source.as_ref().unwrap();
        assert_eq!(source.max_connections, default_source.max_connections);
        assert_eq!(source.max_message_size, default_source.max_message_size);
        assert_eq!(source.idle_timeout, default_source.idle_timeout);
        assert_eq!(c.channels[0].destinations.len(), 3);
    }
}
