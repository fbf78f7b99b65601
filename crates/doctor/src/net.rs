//! The steps before any HL7 byte is sent: parse the target, resolve it, ask the kernel which
//! route each address takes, and open a TCP connection.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::report::{Check, Code, Verdict};
use crate::{fmt_duration, ms};

// === impl Target ===

/// A `host:port` to examine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl FromStr for Target {
    type Err = String;

    /// Parses `host:port`, `ip:port` or `[v6]:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} has no port: write HOST:PORT, e.g. lab.example:2575"))?;
        let host = match host.strip_prefix('[') {
            Some(rest) => rest
                .strip_suffix(']')
                .ok_or_else(|| format!("{s:?}: unbalanced [ ]"))?,
            None if host.contains(':') => {
                return Err(format!(
                    "{s:?}: write an IPv6 address in brackets, e.g. [::1]:2575"
                ));
            }
            None => host,
        };
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: {port:?} is not a TCP port (1-65535)"))?;
        Ok(Target {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

// === DNS ===

/// A lookup slower than this is reported as `dns.slow`.
const SLOW_DNS: Duration = Duration::from_secs(1);

/// Resolves the target. Returns the check and, unless it failed, the addresses.
pub(crate) async fn resolve(target: &Target, wait: Duration) -> (Check, Vec<SocketAddr>) {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        let addr = SocketAddr::new(ip, target.port);
        let check = Check::pass("dns", format!("{ip} is an address: no lookup needed"))
            .with("addresses", json!([ip.to_string()]))
            .with("literal", true);
        return (check, vec![addr]);
    }
    let started = Instant::now();
    let result = timeout(
        wait,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await;
    let elapsed = started.elapsed();
    let fail = |what: String| {
        Check::new("dns", Verdict::Fail, Code::DnsFail, what)
            .hint(format!(
                "Check the spelling of {host:?}. If the name exists only inside a VPN or in \
                 another machine's hosts file, connect the VPN or use the IP address. \
                 `getent hosts {host}` shows what this machine resolves.",
                host = target.host
            ))
            .with("host", target.host.clone())
            .with("elapsed_ms", ms(elapsed))
    };
    let addrs: Vec<SocketAddr> = match result {
        Err(_) => {
            let what = format!(
                "no answer for {} within {}",
                target.host,
                fmt_duration(wait)
            );
            return (fail(what), Vec::new());
        }
        Ok(Err(e)) => {
            let what = format!("{} does not resolve: {e}", target.host);
            return (fail(what).with("error", e.to_string()), Vec::new());
        }
        Ok(Ok(found)) => {
            let mut addrs = Vec::new();
            for addr in found {
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
            addrs
        }
    };
    if addrs.is_empty() {
        let what = format!("{} resolves to no address", target.host);
        return (fail(what), addrs);
    }
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    let summary = format!(
        "{} -> {} in {}",
        target.host,
        list.join(", "),
        fmt_duration(elapsed)
    );
    let check = if elapsed > SLOW_DNS {
        Check::new("dns", Verdict::Warn, Code::DnsSlow, summary).hint(
            "Name lookups are slow: every new connection waits for them. Check the DNS servers \
             in /etc/resolv.conf, or configure the receiver by IP address.",
        )
    } else {
        Check::pass("dns", summary)
    };
    let check = check
        .with("addresses", json!(list))
        .with("elapsed_ms", ms(elapsed));
    (check, addrs)
}

// === Routes ===

/// Which source address and interface the kernel picks for one destination.
#[derive(Debug)]
pub(crate) struct Route {
    pub addr: SocketAddr,
    pub source: Result<IpAddr, io::Error>,
    pub interface: Option<String>,
}

/// Names that tunnel and VPN interfaces usually carry.
const TUNNEL_PREFIXES: &[&str] = &[
    "tun",
    "tap",
    "wg",
    "ppp",
    "ipsec",
    "utun",
    "vti",
    "gre",
    "zt",
    "tailscale",
    "nordlynx",
];

fn is_tunnel(name: &str) -> bool {
    TUNNEL_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Asks the kernel for the route to `addr`: a connected UDP socket sends nothing, but its
/// local address is the source the kernel would use, policy routing and VPNs included.
fn route_to(addr: SocketAddr, interfaces: &[if_addrs::Interface]) -> Route {
    let any = match addr {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let source = UdpSocket::bind(any)
        .and_then(|s| s.connect(addr).map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|local| local.ip());
    let interface = source.as_ref().ok().and_then(|ip| {
        interfaces
            .iter()
            .find(|i| i.ip() == *ip)
            .map(|i| i.name.clone())
    });
    Route {
        addr,
        source,
        interface,
    }
}

/// The route check. Returns the addresses that have a route.
pub(crate) fn routes(addrs: &[SocketAddr]) -> (Check, Vec<SocketAddr>) {
    let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
    let routes: Vec<Route> = addrs.iter().map(|a| route_to(*a, &interfaces)).collect();
    let mut lines = Vec::new();
    let mut evidence = Vec::new();
    let mut usable = Vec::new();
    for route in &routes {
        let ip = route.addr.ip();
        match &route.source {
            Ok(source) => {
                let iface = route.interface.as_deref().unwrap_or("?");
                let tunnel = is_tunnel(iface);
                lines.push(format!(
                    "{ip} via {iface}{} from {source}",
                    if tunnel { " (tunnel)" } else { "" }
                ));
                evidence.push(json!({
                    "address": ip.to_string(),
                    "source": source.to_string(),
                    "interface": route.interface,
                    "tunnel": tunnel,
                }));
                usable.push(route.addr);
            }
            Err(e) => {
                lines.push(format!("{ip}: no route ({e})"));
                evidence.push(json!({ "address": ip.to_string(), "error": e.to_string() }));
            }
        }
    }
    let summary = lines.join("; ");
    let check = if usable.len() == routes.len() {
        Check::pass("route", summary)
    } else if usable.is_empty() {
        Check::new("route", Verdict::Fail, Code::RouteNone, summary).hint(
            "This machine has no route to the receiver: no default gateway, or the VPN or \
             tunnel that carries this network is down. `ip route get ADDRESS` shows the \
             kernel's choice; connect the VPN or add the route.",
        )
    } else {
        Check::new("route", Verdict::Warn, Code::RoutePartial, summary).hint(
            "Some addresses of this name have no route (often IPv6 without an IPv6 uplink). \
             Senders that try them first lose time; remove the record or fix the route.",
        )
    };
    (check.with("routes", Value::Array(evidence)), usable)
}

// === TCP ===

/// Why a connection attempt failed.
#[derive(Debug)]
enum ConnectFailure {
    Refused,
    TimedOut,
    Unreachable(io::Error),
    Other(io::Error),
}

impl ConnectFailure {
    fn of(e: io::Error) -> Self {
        // EHOSTUNREACH and ENETUNREACH; the ErrorKinds cover them on every platform std knows.
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                ConnectFailure::Unreachable(e)
            }
            io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
            _ => ConnectFailure::Other(e),
        }
    }

    fn code(&self) -> Code {
        match self {
            ConnectFailure::Refused => Code::TcpRefused,
            ConnectFailure::TimedOut => Code::TcpTimeout,
            ConnectFailure::Unreachable(_) => Code::TcpUnreachable,
            ConnectFailure::Other(_) => Code::TcpError,
        }
    }

    fn describe(&self, wait: Duration) -> String {
        match self {
            ConnectFailure::Refused => "connection refused".to_owned(),
            ConnectFailure::TimedOut => format!("no answer within {}", fmt_duration(wait)),
            ConnectFailure::Unreachable(e) | ConnectFailure::Other(e) => e.to_string(),
        }
    }

    fn hint(&self, target: &Target, wait: Duration) -> String {
        let port = target.port;
        match self {
            ConnectFailure::Refused => format!(
                "Nothing listens on port {port} there, or a firewall on the way rejects the \
                 connection. Check that the receiver is running and listens on this address \
                 and port (not only on 127.0.0.1): `ss -ltn` on the receiver's host."
            ),
            ConnectFailure::TimedOut => format!(
                "The connection attempt got no answer within {}: packets are dropped on the \
                 way, by a firewall or cloud security group, a missing route back, or a VPN \
                 that is down. Ask the receiver's network team to allow this source address \
                 to port {port}.",
                fmt_duration(wait)
            ),
            ConnectFailure::Unreachable(_) => "A router reports the receiver unreachable, or no \
                 machine answers on the local network. Check the route (`ip route get \
                 ADDRESS`), the VPN, and that the receiver's host is up."
                .to_owned(),
            ConnectFailure::Other(_) => {
                "The connection failed in an unusual way; see the error.".to_owned()
            }
        }
    }
}

/// Opens one TCP connection to `addr` within `wait`.
pub(crate) async fn connect(addr: SocketAddr, wait: Duration) -> io::Result<TcpStream> {
    match timeout(wait, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            // Each MLLP frame is one write; Nagle would only delay the last segment.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection timed out",
        )),
    }
}

/// Tries the addresses in order until one accepts, as a sender does. Returns the check and
/// the connected address with its stream.
pub(crate) async fn tcp(
    target: &Target,
    addrs: &[SocketAddr],
    wait: Duration,
) -> (Check, Option<(SocketAddr, TcpStream)>) {
    let mut attempts = Vec::new();
    let mut failures: Vec<(SocketAddr, ConnectFailure)> = Vec::new();
    for &addr in addrs {
        let started = Instant::now();
        let result = connect(addr, wait).await;
        let elapsed = started.elapsed();
        match result {
            Ok(stream) => {
                attempts.push(json!({
                    "address": addr.to_string(),
                    "result": "connected",
                    "elapsed_ms": ms(elapsed),
                }));
                let mut summary = format!("connected to {addr} in {}", fmt_duration(elapsed));
                let check = if failures.is_empty() {
                    Check::pass("tcp", summary)
                } else {
                    for (a, f) in &failures {
                        summary.push_str(&format!("; {a}: {}", f.describe(wait)));
                    }
                    Check::new("tcp", Verdict::Warn, Code::TcpPartial, summary).hint(
                        "Some addresses of the receiver do not accept connections; senders that \
                         try them first lose time or give up. Fix or remove them.",
                    )
                };
                let check = check
                    .with("attempts", Value::Array(attempts))
                    .with("connected", addr.to_string());
                return (check, Some((addr, stream)));
            }
            Err(e) => {
                let failure = ConnectFailure::of(e);
                attempts.push(json!({
                    "address": addr.to_string(),
                    "result": failure.code().as_str(),
                    "error": failure.describe(wait),
                    "elapsed_ms": ms(elapsed),
                }));
                failures.push((addr, failure));
            }
        }
    }
    let summary = failures
        .iter()
        .map(|(a, f)| format!("{a}: {}", f.describe(wait)))
        .collect::<Vec<_>>()
        .join("; ");
    let check = match failures.first() {
        Some((_, first)) => {
            Check::new("tcp", Verdict::Fail, first.code(), summary).hint(first.hint(target, wait))
        }
        None => Check::new(
            "tcp",
            Verdict::Fail,
            Code::TcpError,
            "no address to connect to",
        ),
    };
    (check.with("attempts", Value::Array(attempts)), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            "lab.example:2575".parse::<Target>(),
            Ok(Target {
                host: "lab.example".into(),
                port: 2575
            })
        );
        let v6: Target = "[::1]:6661".parse().unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 6661));
        assert_eq!(v6.to_string(), "[::1]:6661");
        assert!("lab.example".parse::<Target>().is_err());
        assert!("::1:2575".parse::<Target>().is_err());
        assert!("h:0".parse::<Target>().is_err());
        assert!("h:70000".parse::<Target>().is_err());
        assert!(":2575".parse::<Target>().is_err());
    }

    #[test]
    fn loopback_routes_via_loopback() {
        let (check, usable) = routes(&["127.0.0.1:9".parse().unwrap()]);
        assert_eq!(check.verdict, Verdict::Pass, "{check:?}");
        assert_eq!(usable.len(), 1);
        assert!(
            check.summary.contains("from 127.0.0.1"),
            "{}",
            check.summary
        );
    }

    #[test]
    fn tunnels_are_recognised() {
        assert!(is_tunnel("wg0"));
        assert!(is_tunnel("tun3"));
        assert!(!is_tunnel("eth0"));
    }

    #[tokio::test]
    async fn refused_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target: Target = format!("127.0.0.1:{port}").parse().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (check, conn) = tcp(&target, &[addr], Duration::from_secs(2)).await;
        assert!(conn.is_none());
        assert_eq!(check.code, Code::TcpRefused);
    }

    #[tokio::test]
    async fn literal_addresses_skip_the_lookup() {
        let target: Target = "127.0.0.1:2575".parse().unwrap();
        let (check, addrs) = resolve(&target, Duration::from_secs(1)).await;
        assert_eq!(check.verdict, Verdict::Pass);
        assert_eq!(addrs, vec!["127.0.0.1:2575".parse().unwrap()]);
        let bad: Target = "nonexistent.invalid:2575".parse().unwrap();
        let (check, addrs) = resolve(&bad, Duration::from_secs(5)).await;
        assert_eq!(check.code, Code::DnsFail, "{check:?}");
        assert!(addrs.is_empty());
    }
}
