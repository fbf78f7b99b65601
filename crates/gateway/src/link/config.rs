//! `[link]` and `type = "link"` destinations: what they may say, their defaults and checks.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{
    AckPolicy, Config, ConfigError, DestinationKind, Dur, Secret, Size, check_name, invalid,
};

/// `[link]`: an edge (`hub = "wss://..."`) or a hub (`listen = "..."`), never both.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// This gateway's name on the link. An edge's name must be a `[[link.edge]]` of the
    /// hub; a hub's name is only logged. Default `"hub"` on a hub; required on an edge.
    pub name: Option<String>,

    // --- edge ---
    /// Edge: the hub, `wss://HOST[:PORT]/PATH` (port 443 when not given). Makes this
    /// gateway an edge: it opens the link and keeps it open.
    pub hub: Option<String>,
    /// Edge: CA bundle (PEM) the hub's certificate must chain to.
    pub hub_ca: Option<PathBuf>,
    /// Edge: SHA-256 fingerprint (hex) of the hub's certificate; alone, or with `hub_ca`.
    pub hub_pin: Option<String>,
    /// Edge: name checked in the hub's certificate (default: the host of `hub`).
    pub server_name: Option<String>,
    /// Edge: `http://HOST:PORT` of an HTTP proxy to reach the hub through (CONNECT).
    pub proxy: Option<String>,
    /// Edge: proxy user for basic authentication.
    pub proxy_user: Option<String>,
    /// Edge: proxy password (`${ENV_VAR}` reads it from the environment).
    pub proxy_password: Option<Secret>,
    /// Edge: local channels the hub may send messages into (outbound). Default none.
    #[serde(default)]
    pub accept: Vec<String>,

    // --- hub ---
    /// Hub: address to listen on for edges, e.g. `"0.0.0.0:443"`. Makes this gateway a hub.
    pub listen: Option<SocketAddr>,
    /// Hub: URL path of the link. Default `"/causeway/link"`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Hub: CA bundle (PEM) that signs the edges' certificates (required).
    pub client_ca: Option<PathBuf>,
    /// Hub: the edges allowed in, and the channels each may use.
    #[serde(default, rename = "edge")]
    pub edges: Vec<EdgeConfig>,
    /// Hub: most links open at once. Default 256.
    #[serde(default = "default_max_links")]
    pub max_links: usize,

    // --- both ---
    /// This gateway's certificate (PEM): the hub's server certificate, or the edge's
    /// client certificate.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Password of an encrypted `key` (PKCS#8); `${ENV_VAR}` reads it from the environment.
    pub key_password: Option<crate::config::Secret>,
    /// Also allow TLS 1.2 (TLS 1.3 only by default).
    #[serde(default)]
    pub tls12: bool,
    /// Interval of the heartbeat (WebSocket ping). Default `"10s"`.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: Dur,
    /// The link is dead, closed and reopened when nothing arrived for this long (default
    /// `"30s"`): heartbeats are answered, so a silent link is a broken one.
    #[serde(default = "default_dead_after")]
    pub dead_after: Dur,
    /// Longest wait for TCP, the proxy, TLS and the link handshake. Default `"10s"`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Edge: first reconnect delay, doubling up to `reconnect_max`, with jitter. Default `"500ms"`.
    #[serde(default = "default_reconnect_initial")]
    pub reconnect_initial: Dur,
    /// Edge: longest reconnect delay. Default `"30s"`.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: Dur,
    /// Largest link frame (one message and its header); larger ones close the link.
    /// Default `"17MiB"` (a 16 MiB message with room for the header).
    #[serde(default = "default_max_frame")]
    pub max_frame_size: Size,
    /// Messages a link destination sends before the first is confirmed. Default 32.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Frames queued for the connection's writer; senders wait when it is full. Default 256.
    #[serde(default = "default_send_queue")]
    pub send_queue: usize,
    /// Hub to edge: how long a sent message may wait for the on-premises system's ACK
    /// before the attempt is recorded as failed and retried (the edge keeps it stored and
    /// drops the resend). Default `"60s"`.
    #[serde(default = "default_outcome_timeout")]
    pub outcome_timeout: Dur,
}

/// `[[link.edge]]` on a hub.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The edge's name (its `[link] name`).
    pub name: String,
    /// The certificate identity it must present: `cn:NAME`, `dns:NAME` or `uri:URI`.
    /// Default `cn:<name>` (what `causeway certs issue --edge NAME` writes).
    pub identity: Option<String>,
    /// Hub channels it may send messages into. Anything else is refused, with a log line.
    #[serde(default)]
    pub channels: Vec<String>,
}

impl EdgeConfig {
    /// The identity rule, default `cn:<name>`.
    pub fn identity_rule(&self) -> Result<causeway_mllp::tls::IdentityRule, String> {
        self.identity
            .clone()
            .unwrap_or_else(|| format!("cn:{}", self.name))
            .parse()
            .map_err(|e: causeway_mllp::tls::TlsError| e.to_string())
    }
}

/// `type = "link"`: over the link to a channel of the peer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkDestination {
    /// The peer's channel. Default: this channel's name.
    pub channel: Option<String>,
    /// On a hub: the edge to send to (a `[[link.edge]]` name). Not on an edge.
    pub edge: Option<String>,
}

fn default_path() -> String {
    "/causeway/link".to_owned()
}
fn default_max_links() -> usize {
    256
}
fn default_heartbeat() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_dead_after() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_reconnect_initial() -> Dur {
    Dur(Duration::from_millis(500))
}
fn default_reconnect_max() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_max_frame() -> Size {
    Size(17 << 20)
}
fn default_window() -> usize {
    32
}
fn default_send_queue() -> usize {
    256
}
fn default_outcome_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

/// The role a `[link]` section gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens the link to a hub.
    Edge,
    /// Accepts links from edges.
    Hub,
}

impl LinkConfig {
    /// Edge or hub (checked by [`validate`]: exactly one of `hub` and `listen`).
    pub fn role(&self) -> Role {
        if self.hub.is_some() {
            Role::Edge
        } else {
            Role::Hub
        }
    }

    /// This gateway's name on the link.
    pub fn own_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| "hub".to_owned())
    }
}

/// The parts of a `wss://` URL the edge needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubUrl {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port (443 by default).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HubUrl {
    /// Parses `wss://HOST[:PORT][/PATH]`. Plain `ws://` is refused: the link is always TLS.
    pub fn parse(url: &str) -> Result<HubUrl, String> {
        let rest = url
            .strip_prefix("wss://")
            .ok_or_else(|| format!("{url:?} is not a wss:// URL (the link is always TLS)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = parse_authority(authority, 443)
            .ok_or_else(|| format!("{url:?}: cannot read host and port"))?;
        Ok(HubUrl {
            host,
            port,
            path: path.to_owned(),
        })
    }
}

/// `host[:port]` or `[v6][:port]`.
pub fn parse_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority.to_owned(), default_port)),
    }
}

/// Checks `[link]` against the channels and the link destinations against `[link]`.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let channel_names: HashSet<&str> = config.channels.iter().map(|c| c.name.as_str()).collect();
    let link = config.link.as_ref();
    for (i, c) in config.channels.iter().enumerate() {
        let first_is_link = c
            .destinations
            .first()
            .is_some_and(|d| matches!(d.kind, DestinationKind::Link(_)));
        if c.ack == AckPolicy::EndToEnd
            && !(first_is_link && link.is_some_and(|l| l.role() == Role::Edge))
        {
            return Err(invalid(
                format!("channel[{i}].ack"),
                "end_to_end needs an edge ([link] hub = ...) and a link as the channel's first destination",
            ));
        }
        for (j, d) in c.destinations.iter().enumerate() {
            let DestinationKind::Link(l) = &d.kind else {
                continue;
            };
            let dkey = format!("channel[{i}].destination[{j}]");
            let Some(link) = link else {
                return Err(invalid(
                    format!("{dkey}.type"),
                    "a link destination needs a [link] section",
                ));
            };
            if let Some(ch) = &l.channel {
                check_name(&format!("{dkey}.channel"), ch)?;
            }
            match (link.role(), &l.edge) {
                (Role::Edge, Some(_)) => {
                    return Err(invalid(
                        format!("{dkey}.edge"),
                        "only a hub names the edge; an edge's link goes to its hub",
                    ));
                }
                (Role::Hub, None) => {
                    return Err(invalid(
                        format!("{dkey}.edge"),
                        "a hub's link destination names the edge ([[link.edge]] name)",
                    ));
                }
                (Role::Hub, Some(edge)) if !link.edges.iter().any(|e| &e.name == edge) => {
                    return Err(invalid(
                        format!("{dkey}.edge"),
                        format!("{edge:?} is not a [[link.edge]]"),
                    ));
                }
                _ => {}
            }
        }
    }
    let Some(link) = link else {
        return Ok(());
    };
    if config.store.dedup_window.0.is_zero() {
        return Err(invalid(
            "store.dedup_window",
            "the link drops resent messages through the store's duplicate detection: it must not be 0",
        ));
    }
    match (&link.hub, &link.listen) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "link",
                "set hub (this is an edge) or listen (this is a hub), not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "link",
                "set hub = \"wss://...\" (an edge) or listen = \"ADDR:PORT\" (a hub)",
            ));
        }
        _ => {}
    }
    if let Some(name) = &link.name {
        check_name("link.name", name)?;
    }
    for (key, v) in [
        ("link.window", link.window),
        ("link.send_queue", link.send_queue),
        ("link.max_links", link.max_links),
    ] {
        if v == 0 {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    if link.max_frame_size.0 < 1024 {
        return Err(invalid("link.max_frame_size", "must be at least 1KiB"));
    }
    if link.dead_after.0 <= link.heartbeat.0 {
        return Err(invalid(
            "link.dead_after",
            "must be longer than link.heartbeat",
        ));
    }
    match link.role() {
        Role::Edge => {
            let url = link.hub.as_deref().unwrap_or_default();
            HubUrl::parse(url).map_err(|e| invalid("link.hub", e))?;
            if link.name.is_none() {
                return Err(invalid(
                    "link.name",
                    "an edge needs a name (its [[link.edge]] name on the hub)",
                ));
            }
            if link.hub_ca.is_none() && link.hub_pin.is_none() {
                return Err(invalid("link", "an edge needs hub_ca or hub_pin"));
            }
            if let Some(pin) = &link.hub_pin {
                pin.parse::<causeway_mllp::tls::Fingerprint>()
                    .map_err(|e| invalid("link.hub_pin", e.to_string()))?;
            }
            if let Some(proxy) = &link.proxy {
                let authority = proxy
                    .strip_prefix("http://")
                    .map(|r| r.trim_end_matches('/'))
                    .ok_or_else(|| {
                        invalid("link.proxy", format!("{proxy:?} is not http://HOST:PORT"))
                    })?;
                parse_authority(authority, 3128).ok_or_else(|| {
                    invalid(
                        "link.proxy",
                        format!("{proxy:?}: cannot read host and port"),
                    )
                })?;
            }
            if link.proxy_password.is_some() && link.proxy_user.is_none() {
                return Err(invalid("link.proxy_password", "needs proxy_user"));
            }
            if let Some(p) = &link.proxy_password {
                p.resolve("link.proxy_password")?;
            }
            for (k, ch) in link.accept.iter().enumerate() {
                if !channel_names.contains(ch.as_str()) {
                    return Err(invalid(
                        format!("link.accept[{k}]"),
                        format!("no channel {ch:?}"),
                    ));
                }
            }
            if !link.edges.is_empty() {
                return Err(invalid("link.edge", "only a hub lists edges"));
            }
        }
        Role::Hub => {
            if link.client_ca.is_none() {
                return Err(invalid(
                    "link.client_ca",
                    "a hub needs the CA that signs the edges' certificates",
                ));
            }
            if !link.path.starts_with('/') {
                return Err(invalid("link.path", "must start with /"));
            }
            let mut names = HashSet::new();
            for (k, e) in link.edges.iter().enumerate() {
                let key = format!("link.edge[{k}]");
                check_name(&format!("{key}.name"), &e.name)?;
                if !names.insert(e.name.as_str()) {
                    return Err(invalid(
                        format!("{key}.name"),
                        format!("duplicate edge {:?}", e.name),
                    ));
                }
                e.identity_rule()
                    .map_err(|r| invalid(format!("{key}.identity"), r))?;
                for (n, ch) in e.channels.iter().enumerate() {
                    if !channel_names.contains(ch.as_str()) {
                        return Err(invalid(
                            format!("{key}.channels[{n}]"),
                            format!("no channel {ch:?}"),
                        ));
                    }
                }
            }
            if !link.accept.is_empty() {
                return Err(invalid(
                    "link.accept",
                    "on a hub, list each edge's channels in [[link.edge]] channels",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commented `[link]` blocks of causeway.example.toml are valid and show the defaults.
    #[test]
    fn example_link_blocks() {
        let example = include_str!("../../../../causeway.example.toml");
        for role in ["edge", "hub"] {
            let prefix = format!("#{role}: ");
            let block: String = example
                .lines()
                .filter_map(|l| l.strip_prefix(&prefix))
                .map(|l| format!("{l}\n"))
                .collect();
            let mut text = example.to_owned();
            text.push_str(&block);
            let c = Config::parse(&text).unwrap_or_else(|e| panic!("{role}: {e}"));
            let link = c.link.unwrap();
            let defaults = Config::parse(&format!(
                "[[channel]]\nname = \"x\"\n[[channel.destination]]\nname = \"d\"\ntype = \"file\"\ndirectory = \"d\"\n[link]\n{}\ncert = \"c\"\nkey = \"k\"\n",
                if role == "edge" {
                    "name = \"e\"\nhub = \"wss://h/\"\nhub_pin = \"00000000000000000000000000000000000000000000000000000000000000aa\""
                } else {
                    "listen = \"127.0.0.1:1\"\nclient_ca = \"ca\""
                }
            ))
            .unwrap()
            .link
            .unwrap();
            assert_eq!(link.heartbeat, defaults.heartbeat);
            assert_eq!(link.dead_after, defaults.dead_after);
            assert_eq!(link.window, defaults.window);
            assert_eq!(link.max_frame_size, defaults.max_frame_size);
            assert_eq!(link.reconnect_max, defaults.reconnect_max);
            assert_eq!(link.outcome_timeout, defaults.outcome_timeout);
            assert_eq!(link.max_links, defaults.max_links);
            assert_eq!(link.path, defaults.path);
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            HubUrl::parse("wss://hub.example.org/causeway/link").unwrap(),
            HubUrl {
                host: "hub.example.org".into(),
                port: 443,
                path: "/causeway/link".into()
            }
        );
        let u = HubUrl::parse("wss://[::1]:8443").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8443, "/")
        );
        assert!(HubUrl::parse("ws://hub/x").unwrap_err().contains("wss://"));
        assert!(HubUrl::parse("wss://hub:x/").is_err());
        assert!(HubUrl::parse("wss://user@hub/").is_err());
    }

    const EDGE: &str = r#"
[store]
path = "/tmp/x"
[admin]
disabled = true
[link]
name = "stmarys"
hub = "wss://hub.example.org/causeway/link"
hub_ca = "ca.pem"
cert = "edge.pem"
key = "edge.key"
[[channel]]
name = "adt"
ack = "end_to_end"
[channel.source]
bind = "127.0.0.1:2575"
[[channel.destination]]
name = "to-hub"
type = "link"
"#;

    #[test]
    fn edge_config() {
        let c = Config::parse(EDGE).unwrap();
        let link = c.link.as_ref().unwrap();
        assert_eq!(link.role(), Role::Edge);
        assert_eq!(link.dead_after.0, Duration::from_secs(30));
        let e = Config::parse(&EDGE.replace("hub_ca = \"ca.pem\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hub_ca or hub_pin"), "{e}");
        let e = Config::parse(&EDGE.replace("type = \"link\"", "type = \"link\"\nedge = \"x\""))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("channel[0].destination[0].edge"), "{e}");
        let e = Config::parse(&EDGE.replace("[link]", "[link]\nlisten = \"127.0.0.1:1\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
        let e = Config::parse(&EDGE.replace("[store]", "[store]\ndedup_window = \"0s\""))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("store.dedup_window"), "{e}");
        let e = Config::parse(&EDGE.replace("wss://", "ws://"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("link.hub"), "{e}");
    }

    #[test]
    fn hub_config() {
        let hub = r#"
[admin]
disabled = true
[link]
listen = "127.0.0.1:8443"
cert = "hub.pem"
key = "hub.key"
client_ca = "ca.pem"
[[link.edge]]
name = "stmarys"
channels = ["adt"]
[[channel]]
name = "adt"
[[channel.destination]]
name = "out"
type = "file"
directory = "/tmp/out"
[[channel]]
name = "orders"
[[channel.destination]]
name = "to-stmarys"
type = "link"
edge = "stmarys"
"#;
        let c = Config::parse(hub).unwrap();
        assert_eq!(c.link.as_ref().unwrap().role(), Role::Hub);
        assert!(c.channels[0].source.is_none());
        let e = Config::parse(&hub.replace("edge = \"stmarys\"", "edge = \"nobody\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nobody"), "{e}");
        let e = Config::parse(&hub.replace("channels = [\"adt\"]", "channels = [\"lab\"]"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("link.edge[0].channels[0]"), "{e}");
        let e = Config::parse(&hub.replace("ack = ", "x = ").replace(
            "name = \"adt\"\n[[channel.destination]]",
            "name = \"adt\"\nack = \"end_to_end\"\n[[channel.destination]]",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("end_to_end"), "{e}");
    }
}
