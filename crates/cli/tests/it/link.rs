//! The edge/hub link end to end: two real `causeway serve` processes (an edge and a hub)
//! with certificates from `causeway certs`, python-hl7 as the EHR sender and as the
//! on-premises MLLP receiver, a file destination at the hub. Also: refusals (each with the
//! log line that says why), cuts of the connection under load through a recording TCP
//! relay (exactly once, in order, no HL7 in clear on the wire), the HTTP CONNECT proxy, and
//! `ack = "end_to_end"`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use causeway_testkit::e2e::{
    Load, LoadSettings, MllpConn, ack_code, check_delivery, control_ids, file_destination_received,
    load_message, wait_until,
};
use causeway_testkit::netns::{Netns, ip};
use causeway_testkit::process::{Child, python, python_peer};

const BIN: &str = env!("CARGO_BIN_EXE_causeway");
const WAIT: Duration = Duration::from_secs(20);

// === certificates, with the real `causeway certs` ===

fn certs(args: &[&str]) -> String {
    let out = Command::new(BIN).arg("certs").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "causeway certs {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA in `dir` with a hub certificate for 127.0.0.1 and edge certificates for `edges`.
fn pki(dir: &Path, edges: &[&str]) {
    pki_named(dir, "Causeway link CA", edges);
}

fn pki_named(dir: &Path, ca: &str, edges: &[&str]) {
    let d = dir.to_str().unwrap();
    certs(&["init", "--dir", d, "--name", ca]);
    certs(&[
        "issue",
        "--dir",
        d,
        "--hub",
        "127.0.0.1",
        "--san",
        "localhost",
    ]);
    for e in edges {
        certs(&["issue", "--dir", d, "--edge", e]);
    }
}

fn p(path: PathBuf) -> String {
    path.to_str().unwrap().to_owned()
}

// === processes ===

/// A running `causeway serve` and what it printed about its addresses.
struct Serve {
    child: Child,
    channels: BTreeMap<String, SocketAddr>,
    link: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

impl Serve {
    fn start(dir: &Path, name: &str, config: &str) -> Serve {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let child = Child::spawn(BIN, &["serve", "--config", path.to_str().unwrap()]);
        child.wait_for_line(true, WAIT, |l| l.starts_with("causeway: ready"));
        let lines = child.stderr_lines();
        let channels = lines
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("causeway: channel ")?;
                let (name, rest) = rest.split_once(": MLLP on ")?;
                Some((name.to_owned(), rest.split(' ').next()?.parse().ok()?))
            })
            .collect();
        let find = |prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix)?.split(' ').next()?.parse().ok())
        };
        Serve {
            channels,
            link: find("causeway: link hub on "),
            admin: find("causeway: admin API on http://"),
            child,
        }
    }

    fn addr(&self, channel: &str) -> SocketAddr {
        self.channels[channel]
    }

    /// Waits for a log line containing all of `parts`.
    fn log(&self, parts: &[&str]) -> String {
        self.child
            .wait_for_line(true, WAIT, |l| parts.iter().all(|p| l.contains(p)))
    }
}

/// The python-hl7 MLLP receiver (the on-premises system); its port.
fn python_server(ack: &str) -> (Child, u16) {
    let script = python_peer("hl7_server.py");
    let child = Child::spawn(python(), &[script.to_str().unwrap(), "--ack", ack]);
    let ready = child.wait_for_line(false, WAIT, |l| l.starts_with("READY "));
    let port = ready.trim_start_matches("READY ").trim().parse().unwrap();
    (child, port)
}

/// Control ids the python receiver printed, in arrival order.
fn python_received(server: &Child) -> Vec<String> {
    server
        .stdout_lines()
        .iter()
        .filter_map(|l| {
            l.strip_prefix("RECEIVED ")?
                .split(' ')
                .next()
                .map(str::to_owned)
        })
        .collect()
}

/// Sends `messages` with python-hl7 (the EHR) to `port`; returns the ACK codes.
fn python_send(dir: &Path, port: u16, messages: &[Vec<u8>]) -> Vec<String> {
    let files: Vec<String> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let f = dir.join(format!("msg-{i:04}.hl7"));
            std::fs::write(&f, m).unwrap();
            p(f)
        })
        .collect();
    let script = python_peer("hl7_client.py");
    let mut args = vec![p(script), "--port".into(), port.to_string()];
    args.extend(files);
    let out = Command::new(python()).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("ACK ")?.split(' ').next().map(str::to_owned))
        .collect()
}

/// One HTTP/1.1 request to the admin API; returns status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    // Chunked bodies: good enough to search for values in.
    (status, body.to_owned())
}

fn json(text: &str) -> serde_json::Value {
    // A chunked body has size lines around the JSON: take the outermost object.
    let start = text.find('{').unwrap_or(0);
    let end = text.rfind('}').map_or(text.len(), |e| e + 1);
    serde_json::from_str(&text[start..end]).unwrap_or_else(|e| panic!("{e}: {text}"))
}

// === configurations ===

/// Short liveness settings so that the tests see reconnects within seconds.
const FAST: &str = "heartbeat = \"500ms\"\ndead_after = \"2s\"\nreconnect_initial = \"50ms\"\nreconnect_max = \"500ms\"\nconnect_timeout = \"3s\"\n";

struct Hub<'a> {
    pki: &'a Path,
    data: &'a Path,
    /// `[[link.edge]]` sections.
    edges: &'a str,
    /// Extra channels (TOML).
    channels: &'a str,
    admin: bool,
}

/// The ACK code recorded with each delivered message of `channel` at the gateway whose
/// admin API is `admin` (the first delivery of each; undelivered messages are left out).
fn delivered_ack_codes(admin: SocketAddr, channel: &str) -> Vec<String> {
    let (status, body) = http(
        admin,
        "POST",
        "/api/messages/search",
        &format!(r#"{{"channel":"{channel}"}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let ids: Vec<i64> = json(&body)["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    let codes: Vec<String> = ids
        .iter()
        .filter_map(|id| {
            let (_, body) = http(admin, "GET", &format!("/api/messages/{id}"), "");
            let v = json(&body);
            let d = &v["deliveries"][0];
            (d["state"] == "delivered").then(|| {
                d["attempts"].as_array().unwrap().last().unwrap()["ack_code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
        })
        .collect();
    codes
}

fn hub_config(h: &Hub<'_>) -> String {
    let admin = if h.admin {
        "bind = \"127.0.0.1:0\""
    } else {
        "disabled = true"
    };
    format!(
        "[store]\npath = {:?}\n\n[admin]\n{admin}\n\n[link]\nlisten = \"127.0.0.1:0\"\n\
         cert = {:?}\nkey = {:?}\nclient_ca = {:?}\n{FAST}\n{}\n\n\
         [[channel]]\nname = \"adt\"\n\n[[channel.destination]]\nname = \"ehr-feed\"\ntype = \"file\"\n\
         directory = {:?}\nfilename = \"{{id}}-{{control_id}}.hl7\"\n\n{}",
        h.data.join("store"),
        h.pki.join("hub-127.0.0.1.pem"),
        h.pki.join("hub-127.0.0.1.key"),
        h.pki.join("ca.pem"),
        h.edges,
        h.data.join("out"),
        h.channels,
    )
}

struct Edge<'a> {
    name: &'a str,
    data: &'a Path,
    hub: SocketAddr,
    /// `hub_ca = ...` / `hub_pin = ...`
    trust: String,
    cert: PathBuf,
    key: PathBuf,
    /// Extra `[link]` lines.
    link_extra: &'a str,
    /// The `adt` channel's extra lines (e.g. `ack = ...`).
    adt_extra: &'a str,
    /// Extra channels.
    channels: &'a str,
}

fn edge_config(e: &Edge<'_>) -> String {
    format!(
        "[store]\npath = {:?}\n\n[admin]\ndisabled = true\n\n[link]\nname = \"{}\"\n\
         hub = \"wss://{}/causeway/link\"\n{}\ncert = {:?}\nkey = {:?}\n{FAST}{}\n\n\
         [[channel]]\nname = \"adt\"\n{}\n[channel.source]\nbind = \"127.0.0.1:0\"\n\n\
         [[channel.destination]]\nname = \"to-hub\"\ntype = \"link\"\nretry_initial = \"100ms\"\nretry_max = \"500ms\"\n\n{}",
        e.data.join("store"),
        e.name,
        e.hub,
        e.trust,
        e.cert,
        e.key,
        e.link_extra,
        e.adt_extra,
        e.channels,
    )
}

/// The edge `stmarys` with the default configuration (CA trust, nothing extra), its data
/// under `dir/edge`, dialling `hub`.
fn start_plain_edge(dir: &Path, pki_dir: &Path, hub: SocketAddr) -> Serve {
    let (cert, key) = edge_files(pki_dir, "stmarys");
    Serve::start(
        dir,
        "edge",
        &edge_config(&Edge {
            name: "stmarys",
            data: &dir.join("edge"),
            hub,
            trust: ca_trust(pki_dir),
            cert,
            key,
            link_extra: "",
            adt_extra: "",
            channels: "",
        }),
    )
}

/// A hub whose channel `results` sends to an MLLP app (`app`: the rest of its
/// `[[channel.destination]]` table), and the edge `stmarys` whose channel `results`
/// (`ack = "end_to_end"` with `ack_timeout`) sends over the link; returns once the link is
/// open.
fn start_end_to_end(dir: &Path, pki_dir: &Path, app: &str, ack_timeout: &str) -> (Serve, Serve) {
    let hub = Serve::start(
        dir,
        "hub",
        &hub_config(&Hub {
            pki: pki_dir,
            data: &dir.join("hub"),
            edges: "[[link.edge]]\nname = \"stmarys\"\nchannels = [\"adt\", \"results\"]\n",
            channels: &format!(
                "[[channel]]\nname = \"results\"\n\n[[channel.destination]]\nname = \"app\"\ntype = \"mllp\"\n{app}"
            ),
            admin: false,
        }),
    );
    let (cert, key) = edge_files(pki_dir, "stmarys");
    let channels = format!(
        "[[channel]]\nname = \"results\"\nack = \"end_to_end\"\nack_timeout = \"{ack_timeout}\"\n\n\
         [channel.source]\nbind = \"127.0.0.2:0\"\n\n[[channel.destination]]\nname = \"results-hub\"\ntype = \"link\"\n"
    );
    let edge = Serve::start(
        dir,
        "edge",
        &edge_config(&Edge {
            name: "stmarys",
            data: &dir.join("edge"),
            hub: hub.link.unwrap(),
            trust: ca_trust(pki_dir),
            cert,
            key,
            link_extra: "",
            adt_extra: "",
            channels: &channels,
        }),
    );
    edge.log(&["link to the hub open"]);
    (hub, edge)
}

fn edge_files(pki: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        pki.join(format!("edge-{name}.pem")),
        pki.join(format!("edge-{name}.key")),
    )
}

fn ca_trust(pki: &Path) -> String {
    format!("hub_ca = {:?}", pki.join("ca.pem"))
}

fn messages(sender: usize, n: u64) -> Vec<Vec<u8>> {
    (0..n).map(|i| load_message(sender, i)).collect()
}

fn wait_files(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    wait_until(WAIT, || {
        let got = file_destination_received(dir);
        (got.len() >= n).then_some(got)
    })
    .unwrap_or_else(|| {
        panic!(
            "expected {n} messages at the hub's destination, got {}",
            file_destination_received(dir).len()
        )
    })
}

// === the tests ===

/// EHR (python-hl7) -> edge -> link -> hub -> file; then hub (MLLP source) -> link -> edge
/// -> on-premises receiver (python-hl7), whose ACK is recorded with the message at the hub.
#[test]
fn link_carries_messages_both_ways_once_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys"]);
    let (onprem, onprem_port) = python_server("AA");

    let hub_data = tmp.path().join("hub");
    let hub = Serve::start(
        tmp.path(),
        "hub",
        &hub_config(&Hub {
            pki: &pki_dir,
            data: &hub_data,
            edges: "[[link.edge]]\nname = \"stmarys\"\nchannels = [\"adt\"]\n",
            channels: "[[channel]]\nname = \"orders\"\n\n[channel.source]\nbind = \"127.0.0.1:0\"\n\n\
                       [[channel.destination]]\nname = \"to-stmarys\"\ntype = \"link\"\nedge = \"stmarys\"\n",
            admin: true,
        }),
    );
    let (cert, key) = edge_files(&pki_dir, "stmarys");
    let edge = Serve::start(
        tmp.path(),
        "edge",
        &edge_config(&Edge {
            name: "stmarys",
            data: &tmp.path().join("edge"),
            hub: hub.link.unwrap(),
            trust: ca_trust(&pki_dir),
            cert,
            key,
            link_extra: "accept = [\"orders\"]",
            adt_extra: "",
            channels: &format!(
                "[[channel]]\nname = \"orders\"\n\n[[channel.destination]]\nname = \"lab\"\n\
                 type = \"mllp\"\nto = \"127.0.0.1:{onprem_port}\"\nretry_initial = \"100ms\"\n"
            ),
        }),
    );
    edge.log(&["link to the hub open"]);
    hub.log(&["edge linked", "stmarys"]);

    // Inbound.
    let sent = messages(0, 25);
    let acks = python_send(tmp.path(), edge.addr("adt").port(), &sent);
    assert_eq!(acks, vec!["AA"; 25]);
    let got = wait_files(&hub_data.join("out"), 25);
    assert_eq!(
        control_ids(&got),
        control_ids(&sent),
        "exactly once, in order"
    );
    assert_eq!(got, sent, "bytes unchanged across the link");

    // Outbound.
    // Outbound: four by MLLP at the hub, then one injected by a cloud application through
    // the admin API.
    let mut conn = MllpConn::connect(hub.addr("orders"), WAIT).unwrap();
    let outbound = messages(7, 5);
    for m in &outbound[..4] {
        assert_eq!(ack_code(&conn.send(m).unwrap()).as_deref(), Some("AA"));
    }
    let admin = hub.admin.unwrap();
    let body = serde_json::json!({ "message": String::from_utf8(outbound[4].clone()).unwrap() });
    let (status, reply) = http(
        admin,
        "POST",
        "/api/channels/orders/messages",
        &body.to_string(),
    );
    assert!((200..300).contains(&status), "{status} {reply}");
    let arrived = wait_until(WAIT, || {
        let r = python_received(&onprem);
        (r.len() >= 5).then_some(r)
    })
    .expect("outbound messages at the on-premises receiver");
    assert_eq!(arrived, control_ids(&outbound));

    // The on-premises ACK is recorded with each message at the hub.
    let delivered = wait_until(WAIT, || {
        let codes = delivered_ack_codes(admin, "orders");
        (codes.len() == 5).then_some(codes)
    })
    .expect("the hub records every outbound delivery");
    assert_eq!(delivered, vec!["AA"; 5]);

    // State in the admin API and metrics.
    let (status, body) = http(admin, "GET", "/api/link", "");
    assert_eq!(status, 200, "{body}");
    let link = json(&body);
    assert_eq!(link["role"], "hub");
    assert_eq!(link["peers"][0]["peer"], "stmarys");
    assert_eq!(link["peers"][0]["connected"], true);
    assert!(
        link["peers"][0]["messages_received"].as_u64().unwrap() >= 25,
        "{link}"
    );
    let (_, metrics) = http(admin, "GET", "/metrics", "");
    assert!(
        metrics.contains("causeway_link_up{peer=\"stmarys\"} 1"),
        "{metrics}"
    );

    // SIGTERM stops both cleanly with the link open.
    let (mut edge, mut hub) = (edge, hub);
    assert!(edge.child.terminate(WAIT).success());
    assert!(hub.child.terminate(WAIT).success());
}

/// A TCP relay that records every byte and can cut its connections: the observer between
/// edge and hub.
struct Relay {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    /// Per connection: (client to server, server to client) black-hole switches.
    frozen: Arc<Mutex<Vec<[Arc<AtomicBool>; 2]>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(to: SocketAddr) -> Relay {
        Relay::start_on("127.0.0.1:0", to)
    }

    fn start_on(bind: &str, to: SocketAddr) -> Relay {
        let listener = TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let frozen: Arc<Mutex<Vec<[Arc<AtomicBool>; 2]>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (seen, conns, stop) = (seen.clone(), conns.clone(), stop.clone());
            let frozen = frozen.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(to) else {
                        continue;
                    };
                    conns.lock().unwrap().push(client.try_clone().unwrap());
                    conns.lock().unwrap().push(server.try_clone().unwrap());
                    let switches = [
                        Arc::new(AtomicBool::new(false)),
                        Arc::new(AtomicBool::new(false)),
                    ];
                    frozen.lock().unwrap().push(switches.clone());
                    for ((mut from, mut into), freeze) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ]
                    .into_iter()
                    .zip(switches)
                    {
                        let seen = seen.clone();
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 16 * 1024];
                            loop {
                                match from.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    // A black hole: bytes are taken and never passed on.
                                    Ok(_) if freeze.load(Ordering::SeqCst) => {}
                                    Ok(n) => {
                                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                                        if into.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                            // A black hole does not pass a close on either.
                            if !freeze.load(Ordering::SeqCst) {
                                let _ = into.shutdown(std::net::Shutdown::Both);
                                let _ = from.shutdown(std::net::Shutdown::Both);
                            }
                        });
                    }
                }
            });
        }
        Relay {
            addr,
            seen,
            conns,
            frozen,
            stop,
        }
    }

    /// Turns every open connection into a black hole (nothing passes, nothing closes).
    fn freeze(&self) {
        for [up, down] in self.frozen.lock().unwrap().drain(..) {
            up.store(true, Ordering::SeqCst);
            down.store(true, Ordering::SeqCst);
        }
        self.conns.lock().unwrap().clear();
    }

    /// Swallows what the server sends on every open connection; the client's bytes still
    /// reach it (answers are lost after the server acted on the requests).
    fn freeze_replies(&self) {
        for [_, down] in self.frozen.lock().unwrap().drain(..) {
            down.store(true, Ordering::SeqCst);
        }
        self.conns.lock().unwrap().clear();
    }

    /// Cuts every open connection (both sides see a reset or EOF).
    fn cut(&self) -> usize {
        let mut conns = self.conns.lock().unwrap();
        let n = conns.len() / 2;
        for c in conns.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        n
    }

    fn bytes(&self) -> Vec<u8> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(self.addr);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Under load, the connection between edge and hub is cut again and again: every message
/// the EHR got an AA for arrives exactly once, in order, and no HL7 crosses in clear.
#[test]
fn link_survives_cuts_under_load_exactly_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys"]);
    let hub_data = tmp.path().join("hub");
    let hub = Serve::start(
        tmp.path(),
        "hub",
        &hub_config(&Hub {
            pki: &pki_dir,
            data: &hub_data,
            edges: "[[link.edge]]\nname = \"stmarys\"\nchannels = [\"adt\"]\n",
            channels: "",
            admin: false,
        }),
    );
    let relay = Relay::start(hub.link.unwrap());
    let edge = start_plain_edge(tmp.path(), &pki_dir, relay.addr);
    edge.log(&["link to the hub open"]);
    let load = Load::start(&LoadSettings {
        addr: edge.addr("adt"),
        senders: 4,
        timeout: Duration::from_secs(5),
        pause: Duration::from_millis(2),
    });
    let mut cuts = 0;
    let started = Instant::now();
    while cuts < 6 {
        std::thread::sleep(Duration::from_millis(400));
        cuts += relay.cut().min(1);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no link to cut"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let acked = load.stop();
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total > 50, "the load made progress ({total} acknowledged)");
    // Everything acknowledged reaches the hub once the link is back.
    let out = hub_data.join("out");
    let arrivals = wait_until(Duration::from_secs(40), || {
        let ids = control_ids(&file_destination_received(&out));
        let report = check_delivery(&acked, &ids);
        report.missing.is_empty().then_some(ids)
    })
    .unwrap_or_else(|| {
        let ids = control_ids(&file_destination_received(&out));
        panic!("missing: {:?}", check_delivery(&acked, &ids).missing)
    });
    let report = check_delivery(&acked, &arrivals);
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.duplicates, 0, "exactly once: {report:?}");
    assert!(
        edge.child
            .stderr_lines()
            .iter()
            .filter(|l| l.contains("link to the hub open"))
            .count()
            >= 3
    );
    let wire = relay.bytes();
    assert!(wire.len() > 10_000, "the relay saw the traffic");
    assert!(!contains(&wire, b"MSH|"), "HL7 crossed the wire in clear");
    assert!(
        !contains(&wire, b"DOE^JANE"),
        "patient data crossed the wire in clear"
    );
}

/// Each refusal is refused, with a log line that says why, on the side that refuses (and
/// the edge says what it was told).
#[test]
fn link_refusals_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys", "clinic"]);
    let other_dir = tmp.path().join("other");
    pki_named(&other_dir, "Another CA", &["stmarys"]);
    let hub_data = tmp.path().join("hub");
    let hub = Serve::start(
        tmp.path(),
        "hub",
        &hub_config(&Hub {
            pki: &pki_dir,
            data: &hub_data,
            edges: "[[link.edge]]\nname = \"stmarys\"\nchannels = [\"adt\"]\n\n\
                    [[link.edge]]\nname = \"clinic\"\nchannels = [\"lab\"]\n",
            channels: "[[channel]]\nname = \"lab\"\n\n[[channel.destination]]\nname = \"lab-out\"\n\
                       type = \"file\"\ndirectory = \"lab-out\"\nfilename = \"{id}.hl7\"\n",
            admin: false,
        }),
    );
    let hub_addr = hub.link.unwrap();
    let edge = |tag: &str, name: &str, trust: String, cert: (PathBuf, PathBuf)| {
        Serve::start(
            tmp.path(),
            tag,
            &edge_config(&Edge {
                name,
                data: &tmp.path().join(tag),
                hub: hub_addr,
                trust,
                cert: cert.0,
                key: cert.1,
                link_extra: "",
                adt_extra: "",
                channels: "",
            }),
        )
    };

    // 1. An edge whose certificate comes from another CA.
    let e = edge(
        "foreign",
        "stmarys",
        ca_trust(&pki_dir),
        edge_files(&other_dir, "stmarys"),
    );
    hub.log(&[
        "link connection refused",
        "TLS handshake failed",
        "UnknownIssuer",
    ]);
    e.log(&["cannot open the link to the hub"]);
    drop(e);

    // 2. A hub with the wrong certificate: by CA, then by pin.
    let e = edge(
        "wrong-hub",
        "stmarys",
        ca_trust(&other_dir),
        edge_files(&pki_dir, "stmarys"),
    );
    e.log(&["TLS handshake with the hub failed", "UnknownIssuer"]);
    drop(e);
    let other_hub_pin = certs(&[
        "issue",
        "--dir",
        other_dir.to_str().unwrap(),
        "--hub",
        "other.example",
    ])
    .lines()
    .find_map(|l| l.strip_prefix("fingerprint sha256:").map(str::to_owned))
    .unwrap();
    let e = edge(
        "pinned",
        "stmarys",
        format!("hub_pin = \"{other_hub_pin}\""),
        edge_files(&pki_dir, "stmarys"),
    );
    e.log(&["hub certificate does not match hub_pin"]);
    e.log(&["TLS handshake with the hub failed"]);
    drop(e);

    // 3. An edge presenting another edge's certificate.
    let e = edge(
        "impostor",
        "stmarys",
        ca_trust(&pki_dir),
        edge_files(&pki_dir, "clinic"),
    );
    hub.log(&[
        "link refused",
        "presented certificate CN=clinic",
        "does not match its identity cn:stmarys",
    ]);
    e.log(&["the hub refused the link", "does not match its identity"]);
    drop(e);

    // 4. An edge on a channel it may not use: linked, but its messages are refused.
    let e = edge(
        "clinic",
        "clinic",
        ca_trust(&pki_dir),
        edge_files(&pki_dir, "clinic"),
    );
    e.log(&["link to the hub open"]);
    let mut conn = MllpConn::connect(e.addr("adt"), WAIT).unwrap();
    assert_eq!(
        ack_code(&conn.send(&load_message(0, 0)).unwrap()).as_deref(),
        Some("AA"),
        "after_store: the EHR is answered by the edge"
    );
    hub.log(&[
        "link message refused",
        "edge clinic may not use channel \"adt\"",
    ]);
    e.log(&["link delivery failed", "may not use channel"]);
    assert!(file_destination_received(&hub_data.join("out")).is_empty());
}

/// A minimal HTTP CONNECT proxy with basic authentication; records what it was asked.
fn connect_proxy(user_pass: &'static str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                seen.lock().unwrap().push(head.clone());
                let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
                let want = format!(
                    "Proxy-Authorization: Basic {}",
                    base64_encode(user_pass.as_bytes())
                );
                if !head.contains(&want) {
                    let _ = client.write_all(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
                    );
                    return;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
            });
        }
    });
    (addr, log)
}

fn base64_encode(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The edge reaches the hub through an HTTP CONNECT proxy with basic authentication; a
/// wrong password is refused with a line that says so.
#[test]
fn link_through_a_connect_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys"]);
    let hub_data = tmp.path().join("hub");
    let hub = Serve::start(
        tmp.path(),
        "hub",
        &hub_config(&Hub {
            pki: &pki_dir,
            data: &hub_data,
            edges: "[[link.edge]]\nname = \"stmarys\"\nchannels = [\"adt\"]\n",
            channels: "",
            admin: false,
        }),
    );
    let (proxy, asked) = connect_proxy("edge:s3cret");
    let (cert, key) = edge_files(&pki_dir, "stmarys");
    let edge = |tag: &str, password: &str| {
        Serve::start(
            tmp.path(),
            tag,
            &edge_config(&Edge {
                name: "stmarys",
                data: &tmp.path().join(tag),
                hub: hub.link.unwrap(),
                trust: ca_trust(&pki_dir),
                cert: cert.clone(),
                key: key.clone(),
                link_extra: &format!(
                    "proxy = \"http://{proxy}\"\nproxy_user = \"edge\"\nproxy_password = \"{password}\""
                ),
                adt_extra: "",
                channels: "",
            }),
        )
    };
    let bad = edge("bad", "wrong");
    bad.log(&["cannot open the link to the hub", "407", "proxy_password"]);
    drop(bad);
    let good = edge("good", "s3cret");
    good.log(&["link to the hub open"]);
    let sent = messages(0, 3);
    let acks = python_send(tmp.path(), good.addr("adt").port(), &sent);
    assert_eq!(acks, vec!["AA"; 3]);
    let got = wait_files(&hub_data.join("out"), 3);
    assert_eq!(control_ids(&got), control_ids(&sent));
    let asked = asked.lock().unwrap().clone();
    let target = format!("CONNECT {} HTTP/1.1", hub.link.unwrap());
    assert!(asked.iter().any(|h| h.starts_with(&target)), "{asked:?}");
}

/// `ack = "end_to_end"`: the EHR gets the hub-side destination's ACK (here an AE from the
/// receiver behind the hub), not the edge's own AA.
#[test]
fn link_end_to_end_ack_relays_the_hub_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys"]);
    let (_receiver, port) = python_server("AE");
    let (_hub, edge) = start_end_to_end(
        tmp.path(),
        &pki_dir,
        &format!("to = \"127.0.0.1:{port}\"\nretry_initial = \"200ms\"\n"),
        "10s",
    );
    let mut conn = MllpConn::connect(edge.addr("results"), WAIT).unwrap();
    let reply = conn.send(&load_message(3, 1)).unwrap();
    assert_eq!(
        ack_code(&reply).as_deref(),
        Some("AE"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // after_store on the other channel answers at once.
    let acks = python_send(tmp.path(), edge.addr("adt").port(), &messages(0, 1));
    assert_eq!(acks, vec!["AA"]);
}

// === the network-namespace test ===

/// A veth pair: `a_dev` with `a_addr` in namespace `a` (root when `None`), `b_dev` with
/// `b_addr` in `b`.
fn veth(a: Option<&Netns>, a_dev: &str, a_addr: &str, b: &Netns, b_dev: &str, b_addr: &str) {
    let mut add = vec!["link", "add", a_dev];
    if let Some(a) = a {
        add.extend_from_slice(&["netns", a.name()]);
    }
    add.extend_from_slice(&["type", "veth", "peer", "name", b_dev, "netns", b.name()]);
    ip(&add);
    match a {
        Some(a) => {
            ip(&["-n", a.name(), "addr", "add", a_addr, "dev", a_dev]);
            ip(&["-n", a.name(), "link", "set", a_dev, "up"]);
        }
        None => {
            ip(&["addr", "add", a_addr, "dev", a_dev]);
            ip(&["link", "set", a_dev, "up"]);
        }
    }
    ip(&["-n", b.name(), "addr", "add", b_addr, "dev", b_dev]);
    ip(&["-n", b.name(), "link", "set", b_dev, "up"]);
}

/// Deletes a root-namespace veth end on drop (its peer goes with it).
struct RootLink(String);

impl Drop for RootLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Three hosts in their own network namespaces: `ehr` reaches only the edge; the edge
/// reaches the hub only through the observer (a recording relay in the test process, on
/// the root namespace between them); the hub cannot open connections at all (iptables).
/// EHR -> edge -> hub -> file under load with the link cut several times, then hub ->
/// edge -> an MLLP listener on the `ehr` host. Every message the EHR got an AA for arrives
/// exactly once, in order; no HL7 crosses the observer in clear.
#[test]
fn link_between_network_namespaces() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys"]);
    let tag = std::process::id() % 100_000;
    let ehr = Netns::new("ehr");
    let edge_ns = Netns::new("edge");
    let hub_ns = Netns::new("hub");
    // ehr 10.232.0.2 -- 10.232.0.1 edge 10.232.1.2 -- 10.232.1.1 (root: observer)
    // 10.232.2.1 -- 10.232.2.2 hub
    veth(
        Some(&edge_ns),
        "ehr0",
        "10.232.0.1/24",
        &ehr,
        "eth0",
        "10.232.0.2/24",
    );
    let to_edge = format!("cwe{tag}");
    let to_hub = format!("cwh{tag}");
    veth(
        None,
        &to_edge,
        "10.232.1.1/24",
        &edge_ns,
        "up0",
        "10.232.1.2/24",
    );
    let _l1 = RootLink(to_edge);
    veth(
        None,
        &to_hub,
        "10.232.2.1/24",
        &hub_ns,
        "eth0",
        "10.232.2.2/24",
    );
    let _l2 = RootLink(to_hub);
    // The hub could send towards the edge's network, but opens no connection anywhere.
    hub_ns.ip(&["route", "add", "default", "via", "10.232.2.1"]);
    let rule = hub_ns.output(
        "iptables",
        &[
            "-A", "OUTPUT", "!", "-o", "lo", "-p", "tcp", "--syn", "-j", "DROP",
        ],
    );
    assert!(
        rule.status.success(),
        "iptables: {}",
        String::from_utf8_lossy(&rule.stderr)
    );

    // The on-premises system on the ehr host.
    let script = python_peer("hl7_server.py");
    let onprem = ehr.spawn(
        python().to_str().unwrap(),
        &[
            script.to_str().unwrap(),
            "--host",
            "10.232.0.2",
            "--port",
            "2577",
        ],
    );
    onprem.wait_for_line(false, WAIT, |l| l.starts_with("READY "));

    let hub_data = tmp.path().join("hub");
    let hub_cfg = hub_config(&Hub {
        pki: &pki_dir,
        data: &hub_data,
        edges: "[[link.edge]]\nname = \"stmarys\"\nchannels = [\"adt\"]\n",
        channels: "[[channel]]\nname = \"orders\"\n\n[channel.source]\nbind = \"10.232.2.2:2576\"\n\n\
                   [[channel.destination]]\nname = \"to-stmarys\"\ntype = \"link\"\nedge = \"stmarys\"\n",
        admin: false,
    })
    .replace("listen = \"127.0.0.1:0\"", "listen = \"10.232.2.2:8443\"");
    std::fs::write(tmp.path().join("hub.toml"), &hub_cfg).unwrap();
    let hub = hub_ns.spawn(
        BIN,
        &[
            "serve",
            "--config",
            tmp.path().join("hub.toml").to_str().unwrap(),
        ],
    );
    hub.wait_for_line(true, WAIT, |l| l.starts_with("causeway: ready"));

    let relay = Relay::start_on("10.232.1.1:0", "10.232.2.2:8443".parse().unwrap());
    let (cert, key) = edge_files(&pki_dir, "stmarys");
    let edge_cfg = edge_config(&Edge {
        name: "stmarys",
        data: &tmp.path().join("edge"),
        hub: relay.addr,
        trust: ca_trust(&pki_dir),
        cert,
        key,
        link_extra: "server_name = \"127.0.0.1\"\naccept = [\"orders\"]",
        adt_extra: "",
        channels: "[[channel]]\nname = \"orders\"\n\n[[channel.destination]]\nname = \"lab\"\n\
                   type = \"mllp\"\nto = \"10.232.0.2:2577\"\nretry_initial = \"100ms\"\n",
    })
    .replace("bind = \"127.0.0.1:0\"", "bind = \"10.232.0.1:2575\"");
    std::fs::write(tmp.path().join("edge.toml"), &edge_cfg).unwrap();
    let edge = edge_ns.spawn(
        BIN,
        &[
            "serve",
            "--config",
            tmp.path().join("edge.toml").to_str().unwrap(),
        ],
    );
    edge.wait_for_line(true, WAIT, |l| l.contains("link to the hub open"));

    // The hub cannot open a connection to the edge.
    let probe = hub_ns.output(
        "timeout",
        &["2", "bash", "-c", "exec 3<>/dev/tcp/10.232.1.2/2575"],
    );
    assert!(
        !probe.status.success(),
        "the hub opened a connection towards the edge"
    );

    // Load from the EHR host while the observer cuts the link.
    let n = 300u64;
    let sent = messages(0, n);
    let files: Vec<String> = sent
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let f = tmp.path().join(format!("ns-{i:04}.hl7"));
            std::fs::write(&f, m).unwrap();
            p(f)
        })
        .collect();
    let client = python_peer("hl7_client.py");
    let mut args = vec![
        client.to_str().unwrap(),
        "--host",
        "10.232.0.1",
        "--port",
        "2575",
    ];
    args.extend(files.iter().map(String::as_str));
    let sender = ehr.spawn(python().to_str().unwrap(), &args);
    let mut cuts = 0;
    let started = Instant::now();
    while cuts < 4 && started.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(300));
        cuts += relay.cut().min(1);
    }
    assert!(cuts >= 3, "the link was cut {cuts} times");
    let acks = wait_until(Duration::from_secs(40), || {
        let acks: Vec<String> = sender
            .stdout_lines()
            .iter()
            .filter_map(|l| {
                l.strip_prefix("ACK ")
                    .map(|r| r.split(' ').next().unwrap_or("").to_owned())
            })
            .collect();
        (acks.len() as u64 == n).then_some(acks)
    })
    .expect("every message answered");
    assert!(acks.iter().all(|a| a == "AA"), "{acks:?}");
    let acked: Vec<Vec<u64>> = vec![(0..n).collect()];
    let out = hub_data.join("out");
    let ids = wait_until(Duration::from_secs(40), || {
        let ids = control_ids(&file_destination_received(&out));
        (ids.len() as u64 >= n).then_some(ids)
    })
    .unwrap_or_else(|| {
        panic!(
            "{} of {n} at the hub",
            file_destination_received(&out).len()
        )
    });
    let report = check_delivery(&acked, &ids);
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.duplicates, 0, "exactly once: {report:?}");

    // And back: a cloud application sends at the hub; the ehr host's listener gets it.
    let mut conn = MllpConn::connect("10.232.2.2:2576".parse().unwrap(), WAIT).unwrap();
    let outbound = messages(9, 3);
    for m in &outbound {
        assert_eq!(ack_code(&conn.send(m).unwrap()).as_deref(), Some("AA"));
    }
    let arrived = wait_until(WAIT, || {
        let r = python_received(&onprem);
        (r.len() >= 3).then_some(r)
    })
    .expect("outbound messages at the ehr host");
    assert_eq!(arrived, control_ids(&outbound));

    let wire = relay.bytes();
    assert!(
        wire.len() > 50_000,
        "the observer saw the traffic ({} bytes)",
        wire.len()
    );
    assert!(
        !contains(&wire, b"MSH|"),
        "HL7 crossed the observer in clear"
    );
    drop(edge);
    drop(hub);
}

/// Hub to edge while the on-premises system is down: the hub's attempts time out and are
/// sent again (the edge drops the resends), the edge keeps retrying its receiver; once the
/// receiver is up it gets each message once, in order, and the hub records its ACK.
#[test]
fn link_outbound_waits_for_the_on_premises_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys"]);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hub = Serve::start(
        tmp.path(),
        "hub",
        &hub_config(&Hub {
            pki: &pki_dir,
            data: &tmp.path().join("hub"),
            edges: "[[link.edge]]\nname = \"stmarys\"\n",
            channels: "[[channel]]\nname = \"orders\"\n\n[channel.source]\nbind = \"127.0.0.1:0\"\n\n\
                       [[channel.destination]]\nname = \"to-stmarys\"\ntype = \"link\"\nedge = \"stmarys\"\n\
                       retry_initial = \"100ms\"\nretry_max = \"300ms\"\n",
            admin: true,
        })
        .replace("[link]\n", "[link]\noutcome_timeout = \"1s\"\n"),
    );
    let (cert, key) = edge_files(&pki_dir, "stmarys");
    let edge = Serve::start(
        tmp.path(),
        "edge",
        &edge_config(&Edge {
            name: "stmarys",
            data: &tmp.path().join("edge"),
            hub: hub.link.unwrap(),
            trust: ca_trust(&pki_dir),
            cert,
            key,
            link_extra: "accept = [\"orders\"]",
            adt_extra: "",
            channels: &format!(
                "[[channel]]\nname = \"orders\"\n\n[[channel.destination]]\nname = \"lab\"\n\
                 type = \"mllp\"\nto = \"127.0.0.1:{port}\"\nretry_initial = \"100ms\"\nretry_max = \"300ms\"\n\
                 connect_timeout = \"1s\"\n"
            ),
        }),
    );
    edge.log(&["link to the hub open"]);
    let mut conn = MllpConn::connect(hub.addr("orders"), WAIT).unwrap();
    let outbound = messages(5, 3);
    for m in &outbound {
        assert_eq!(ack_code(&conn.send(m).unwrap()).as_deref(), Some("AA"));
    }
    hub.log(&["has it stored, but its destination did not answer"]);
    std::thread::sleep(Duration::from_millis(1500));
    let script = python_peer("hl7_server.py");
    let onprem = Child::spawn(
        python(),
        &[script.to_str().unwrap(), "--port", &port.to_string()],
    );
    onprem.wait_for_line(false, WAIT, |l| l.starts_with("READY "));
    let admin = hub.admin.unwrap();
    let codes = wait_until(WAIT, || {
        let codes = delivered_ack_codes(admin, "orders");
        (codes.len() == 3).then_some(codes)
    })
    .expect("the hub records the on-premises ACK of every message");
    assert_eq!(codes, vec!["AA"; 3]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        python_received(&onprem),
        control_ids(&outbound),
        "once each, in order"
    );
}

/// A link that goes silent (the observer swallows every byte and closes nothing) is found
/// dead within `dead_after` by both sides, and the edge dials again.
#[test]
fn link_silent_connection_is_found_dead_and_redialled() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys"]);
    let hub_data = tmp.path().join("hub");
    let hub = Serve::start(
        tmp.path(),
        "hub",
        &hub_config(&Hub {
            pki: &pki_dir,
            data: &hub_data,
            edges: "[[link.edge]]\nname = \"stmarys\"\nchannels = [\"adt\"]\n",
            channels: "",
            admin: false,
        }),
    );
    let relay = Relay::start(hub.link.unwrap());
    let edge = start_plain_edge(tmp.path(), &pki_dir, relay.addr);
    edge.log(&["link to the hub open"]);
    relay.freeze();
    let mut conn = MllpConn::connect(edge.addr("adt"), WAIT).unwrap();
    let sent = messages(0, 3);
    for m in &sent {
        assert_eq!(ack_code(&conn.send(m).unwrap()).as_deref(), Some("AA"));
    }
    edge.log(&["link dead: nothing received from hub for 2s"]);
    hub.log(&["link dead: nothing received from stmarys for 2s"]);
    wait_until(WAIT, || {
        let opens = edge
            .child
            .stderr_lines()
            .iter()
            .filter(|l| l.contains("link to the hub open"))
            .count();
        (opens >= 2).then_some(())
    })
    .expect("the edge dials again");
    let got = wait_files(&hub_data.join("out"), 3);
    assert_eq!(control_ids(&got), control_ids(&sent));
}

/// TLS 1.3 only unless `tls12 = true`: a TLS 1.2 client (Python's ssl, with a valid edge
/// certificate) is refused by default, with the reason in the hub's log, and admitted when
/// the hub allows 1.2.
#[test]
fn link_speaks_tls13_only_unless_told() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys"]);
    let (cert, key) = edge_files(&pki_dir, "stmarys");
    let try_tls12 = |addr: SocketAddr| {
        let script = "import socket, ssl, sys\n\
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n\
            ctx.load_verify_locations(sys.argv[3])\n\
            ctx.load_cert_chain(sys.argv[4], sys.argv[5])\n\
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2\n\
            s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10), server_hostname=sys.argv[1])\n\
            print('VERSION', s.version())\n";
        Command::new(python())
            .args([
                "-c",
                script,
                &addr.ip().to_string(),
                &addr.port().to_string(),
                pki_dir.join("ca.pem").to_str().unwrap(),
                cert.to_str().unwrap(),
                key.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let hub_cfg = |data: &str| {
        hub_config(&Hub {
            pki: &pki_dir,
            data: &tmp.path().join(data),
            edges: "[[link.edge]]\nname = \"stmarys\"\nchannels = [\"adt\"]\n",
            channels: "",
            admin: false,
        })
    };
    let strict = Serve::start(tmp.path(), "strict", &hub_cfg("strict"));
    let out = try_tls12(strict.link.unwrap());
    assert!(
        !out.status.success(),
        "TLS 1.2 was admitted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    strict.log(&["link connection refused", "TLS handshake failed"]);
    let lenient = Serve::start(
        tmp.path(),
        "lenient",
        &hub_cfg("lenient").replace("[link]\n", "[link]\ntls12 = true\n"),
    );
    let out = try_tls12(lenient.link.unwrap());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("VERSION TLSv1.2"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hub is killed (`kill -9`) under load and restarted on the same data, twice: what it
/// stored but had not confirmed is sent again by the edge and recognised as a resend, so
/// every message the EHR got an AA for arrives exactly once, in order.
#[test]
fn link_hub_killed_under_load_loses_and_repeats_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys"]);
    let hub_data = tmp.path().join("hub");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hub_cfg = hub_config(&Hub {
        pki: &pki_dir,
        data: &hub_data,
        edges: "[[link.edge]]\nname = \"stmarys\"\nchannels = [\"adt\"]\n",
        channels: "",
        admin: false,
    })
    .replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let mut hub = Serve::start(tmp.path(), "hub", &hub_cfg);
    let edge = start_plain_edge(tmp.path(), &pki_dir, hub.link.unwrap());
    edge.log(&["link to the hub open"]);
    let load = Load::start(&LoadSettings {
        addr: edge.addr("adt"),
        senders: 4,
        timeout: Duration::from_secs(5),
        pause: Duration::from_millis(1),
    });
    let out = hub_data.join("out");
    for _ in 0..2 {
        // Let the hub take some of the stream, then kill it in the middle of it.
        let before = file_destination_received(&out).len();
        wait_until(WAIT, || {
            (file_destination_received(&out).len() > before + 50).then_some(())
        })
        .expect("the hub takes messages");
        drop(hub); // SIGKILL, then reaped
        std::thread::sleep(Duration::from_millis(300));
        hub = Serve::start(tmp.path(), "hub", &hub_cfg);
    }
    std::thread::sleep(Duration::from_millis(500));
    let acked = load.stop();
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total > 100, "the load made progress ({total} acknowledged)");
    let arrivals = wait_until(Duration::from_secs(40), || {
        let ids = control_ids(&file_destination_received(&out));
        check_delivery(&acked, &ids)
            .missing
            .is_empty()
            .then_some(ids)
    })
    .unwrap_or_else(|| {
        let ids = control_ids(&file_destination_received(&out));
        panic!("missing: {:?}", check_delivery(&acked, &ids).missing)
    });
    let report = check_delivery(&acked, &arrivals);
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.duplicates, 0, "exactly once: {report:?}");
}

/// The hub stores messages but its answers are lost (the observer swallows everything the
/// hub sends): the edge finds the link dead, dials again and sends them again; the hub
/// recognises each as a resend (logged) and its destination gets each message once.
#[test]
fn link_lost_answers_resend_and_the_hub_drops_the_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys"]);
    let hub_data = tmp.path().join("hub");
    let hub = Serve::start(
        tmp.path(),
        "hub",
        &hub_config(&Hub {
            pki: &pki_dir,
            data: &hub_data,
            edges: "[[link.edge]]\nname = \"stmarys\"\nchannels = [\"adt\"]\n",
            channels: "",
            admin: false,
        })
        // Only the edge finds the link dead: the hub keeps hearing its pings.
        .replace("dead_after = \"2s\"", "dead_after = \"60s\""),
    );
    let relay = Relay::start(hub.link.unwrap());
    let edge = start_plain_edge(tmp.path(), &pki_dir, relay.addr);
    edge.log(&["link to the hub open"]);
    relay.freeze_replies();
    let sent = messages(0, 5);
    let mut conn = MllpConn::connect(edge.addr("adt"), WAIT).unwrap();
    for m in &sent {
        assert_eq!(ack_code(&conn.send(m).unwrap()).as_deref(), Some("AA"));
    }
    // The hub stored them all before the edge gave up on the link.
    let out = hub_data.join("out");
    wait_files(&out, 5);
    edge.log(&["link dead: nothing received from hub"]);
    hub.log(&["resent message stored already", "S0-4"]);
    std::thread::sleep(Duration::from_millis(500));
    let got = file_destination_received(&out);
    assert_eq!(control_ids(&got), control_ids(&sent), "each once, in order");
}

/// A renewed hub certificate takes effect at the next connection, without a restart: an
/// edge pinned to the new certificate is refused until the hub's files are replaced.
#[test]
fn link_renewed_certificate_needs_no_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys"]);
    let live = tmp.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::copy(pki_dir.join("hub-127.0.0.1.pem"), live.join("hub.pem")).unwrap();
    std::fs::copy(pki_dir.join("hub-127.0.0.1.key"), live.join("hub.key")).unwrap();
    let renewed = tmp.path().join("renewed");
    let pin = certs(&[
        "issue",
        "--dir",
        pki_dir.to_str().unwrap(),
        "--hub",
        "127.0.0.1",
        "--out",
        renewed.to_str().unwrap(),
    ])
    .lines()
    .find_map(|l| l.strip_prefix("fingerprint sha256:").map(str::to_owned))
    .unwrap();
    let hub = Serve::start(
        tmp.path(),
        "hub",
        &hub_config(&Hub {
            pki: &pki_dir,
            data: &tmp.path().join("hub"),
            edges: "[[link.edge]]\nname = \"stmarys\"\nchannels = [\"adt\"]\n",
            channels: "",
            admin: false,
        })
        .replace(
            &format!("{:?}", pki_dir.join("hub-127.0.0.1.pem")),
            &format!("{:?}", live.join("hub.pem")),
        )
        .replace(
            &format!("{:?}", pki_dir.join("hub-127.0.0.1.key")),
            &format!("{:?}", live.join("hub.key")),
        ),
    );
    let (cert, key) = edge_files(&pki_dir, "stmarys");
    let edge = Serve::start(
        tmp.path(),
        "edge",
        &edge_config(&Edge {
            name: "stmarys",
            data: &tmp.path().join("edge"),
            hub: hub.link.unwrap(),
            trust: format!("hub_pin = \"{pin}\""),
            cert,
            key,
            link_extra: "",
            adt_extra: "",
            channels: "",
        }),
    );
    edge.log(&["hub certificate does not match hub_pin"]);
    // Replace key first, then certificate, each atomically (a rename), as a renewal would.
    for (from, to) in [
        ("hub-127.0.0.1.key", "hub.key"),
        ("hub-127.0.0.1.pem", "hub.pem"),
    ] {
        let staged = live.join(format!(".{to}"));
        std::fs::copy(renewed.join(from), &staged).unwrap();
        std::fs::rename(&staged, live.join(to)).unwrap();
    }
    edge.log(&["link to the hub open"]);
}

/// `end_to_end` with a hub-side destination slower than the edge's `ack_timeout`: the EHR
/// gets an AE saying so, and the message, stored all along, is still delivered once.
#[test]
fn link_end_to_end_times_out_with_ae_and_still_delivers() {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki(&pki_dir, &["stmarys"]);
    let inbox = tmp.path().join("inbox");
    let (_slow, port) = crate::support::causeway_listen(&[
        "--delay",
        "3s",
        "--quiet",
        "--out",
        inbox.to_str().unwrap(),
    ]);
    let (_hub, edge) = start_end_to_end(
        tmp.path(),
        &pki_dir,
        &format!("to = \"127.0.0.1:{port}\"\nack_timeout = \"10s\"\n"),
        "1s",
    );
    let mut conn = MllpConn::connect(edge.addr("results"), WAIT).unwrap();
    let message = load_message(4, 1);
    let reply = conn.send(&message).unwrap();
    let text = String::from_utf8_lossy(&reply).into_owned();
    assert_eq!(ack_code(&reply).as_deref(), Some("AE"), "{text}");
    assert!(text.contains("did not answer within"), "{text}");
    let got = wait_until(WAIT, || {
        let got = causeway_testkit::e2e::listen_received(&inbox);
        (!got.is_empty()).then_some(got)
    })
    .expect("delivered after the timeout");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(causeway_testkit::e2e::listen_received(&inbox).len(), 1);
    assert_eq!(got[0], message);
}
