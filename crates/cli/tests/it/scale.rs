//! Several `causeway serve` nodes on one PostgreSQL database: load spread across them
//! through a round-robin relay (a Kubernetes Service), one node killed with `kill -9` and
//! another restarted under load, and the database connection cut under load.
//!
//! The server is `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`); each
//! test keeps its tables in a schema of its own (`cw_scale_<pid>_<n>`, dropped at the
//! end), so tests run in parallel beside other users of the server. Never skipped: a
//! server that cannot be reached fails them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use causeway_testkit::e2e::MllpConn;
use causeway_testkit::e2e::{
    DeliveryReport, Load, LoadSettings, check_delivery, control_ids, listen_received, wait_until,
};
use causeway_testkit::pki::Pki;
use causeway_testkit::process::Child;
use causeway_testkit::relay::Relay;

use crate::support::{WAIT, causeway_listen, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_causeway");

// === the database ===

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs `sql` with psql; returns its unaligned output.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A schema of the test database for one test, dropped at the end.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new() -> Schema {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let url = database_url();
        let name = format!(
            "cw_scale_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        psql(&url, &format!("DROP SCHEMA IF EXISTS {name} CASCADE")).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at DATABASE_URL={url}: {e}\n\
                 Start a server there or point DATABASE_URL at one; these tests are not skipped."
            )
        });
        Schema { url, name }
    }

    fn count(&self, sql: &str) -> i64 {
        psql(
            &self.url,
            &format!("SET search_path TO {}; {sql}", self.name),
        )
        .unwrap()
        .parse()
        .unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = psql(
            &self.url,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        );
    }
}

/// `url` with its host and port replaced by `addr` (to go through a relay).
fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("DATABASE_URL must be a URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{addr}{path}")
}

/// The host:port of `url`, resolved.
fn server_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&host)
        .unwrap()
        .next()
        .unwrap()
}

// === the nodes ===

/// A node's configuration: channel `main` and the admin API on `mllp`/`admin` (port 0 at
/// first), the store in `schema`, MLLP destinations `lab` and `billing`.
struct NodeConfig {
    node_id: String,
    url: String,
    schema: String,
    lease_timeout: &'static str,
    destinations: Vec<(&'static str, u16)>,
    /// The MLLP destinations' `ack_timeout`.
    ack_timeout: &'static str,
}

impl NodeConfig {
    /// A node of the partition tests: one MLLP destination `lab`, a 3 s lease.
    fn lab_only(id: &str, url: String, db: &Schema, lab: u16, ack_timeout: &'static str) -> Self {
        NodeConfig {
            node_id: id.to_owned(),
            url,
            schema: db.name.clone(),
            lease_timeout: "3s",
            destinations: vec![("lab", lab)],
            ack_timeout,
        }
    }

    fn toml(&self, mllp: &str, admin: &str) -> String {
        let mut text = format!(
            "[store]\npostgres = \"{}\"\nschema = \"{}\"\nnode_id = \"{}\"\n\
             lease_timeout = \"{}\"\nconnect_timeout = \"1s\"\nrequest_timeout = \"3s\"\n\n\
             [admin]\nbind = \"{admin}\"\n\n\
             [[channel]]\nname = \"main\"\n\n[channel.source]\nbind = \"{mllp}\"\n\n",
            self.url, self.schema, self.node_id, self.lease_timeout
        );
        for (name, port) in &self.destinations {
            text.push_str(&format!(
                "[[channel.destination]]\nname = \"{name}\"\ntype = \"mllp\"\n\
                 to = \"127.0.0.1:{port}\"\nretry_initial = \"50ms\"\nretry_max = \"500ms\"\n\
                 ack_timeout = \"{}\"\nconnect_timeout = \"2s\"\n\n",
                self.ack_timeout
            ));
        }
        text
    }
}

/// A running node.
struct Node {
    id: String,
    child: Child,
    mllp: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
}

impl Node {
    /// Starts a node on ports chosen by the system, then pins them in its configuration
    /// so that a restart comes back on the same addresses.
    fn first_start(dir: &Path, config: &NodeConfig) -> Node {
        let path = dir.join(format!("{}.toml", config.node_id));
        std::fs::write(&path, config.toml("127.0.0.1:0", "127.0.0.1:0")).unwrap();
        let node = Node::start(&config.node_id, &path);
        std::fs::write(
            &path,
            config.toml(&node.mllp.to_string(), &node.admin.to_string()),
        )
        .unwrap();
        node
    }

    fn start(id: &str, config: &Path) -> Node {
        let child = Child::spawn(BIN, &["serve", "--config", config.to_str().unwrap()]);
        child.wait_for_line(true, WAIT, |l| l.starts_with("causeway: ready"));
        let lines = child.stderr_lines();
        let find = |prefix: &str, sep: &str| -> SocketAddr {
            lines
                .iter()
                .find_map(|l| {
                    let rest = l.strip_prefix(prefix)?;
                    let rest = rest.split_once(sep)?.1;
                    rest.split([' ', ')', '/'])
                        .next()?
                        .trim_start_matches("http:")
                        .parse()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{}", lines.join("\n")))
        };
        let mllp = find("causeway: channel main", "MLLP on ");
        let admin = find("causeway: admin API", "http://");
        Node {
            id: id.to_owned(),
            child,
            mllp,
            admin,
            config: config.to_owned(),
        }
    }

    fn restart(self) -> Node {
        let (id, config) = (self.id.clone(), self.config.clone());
        drop(self);
        Node::start(&id, &config)
    }

    /// A GET on the admin API: (status, body).
    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.admin, path)
    }

    fn leases(&self) -> BTreeMap<String, (String, bool)> {
        let (status, body) = self.get("/api/leases").unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["node_id"], self.id.as_str());
        v["leases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["destination"].as_str().unwrap().to_owned(),
                    (
                        l["node_id"].as_str().unwrap().to_owned(),
                        l["expired"].as_bool().unwrap(),
                    ),
                )
            })
            .collect()
    }

    /// Waits until this node holds `destination`'s lease.
    fn wait_for_lease(&self, destination: &str) {
        wait_until(WAIT, || {
            (self.leases().get(destination).map(|(n, _)| n.as_str()) == Some(self.id.as_str()))
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{} did not take the {destination} lease", self.id));
    }

    /// A counter or gauge of `/metrics`, summed over the series whose labels contain `labels`.
    fn metric(&self, name: &str, labels: &str) -> f64 {
        let (status, body) = self.get("/metrics").unwrap();
        assert_eq!(status, 200);
        body.lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Sends one message to `addr` and expects an AA.
fn send_one_acked(addr: SocketAddr) {
    let mut conn = MllpConn::connect(addr, Duration::from_secs(10)).unwrap();
    let reply = conn
        .send(&causeway_testkit::e2e::load_message(0, 0))
        .unwrap();
    assert_eq!(
        causeway_testkit::e2e::ack_code(&reply).as_deref(),
        Some("AA")
    );
}

fn assert_ok(name: &str, r: &DeliveryReport) {
    assert!(
        r.ok(),
        "{name}: {} missing (first {:?}), {} out of order (first {:?}), {} foreign",
        r.missing.len(),
        r.missing.iter().take(5).collect::<Vec<_>>(),
        r.out_of_order.len(),
        r.out_of_order.iter().take(5).collect::<Vec<_>>(),
        r.foreign
    );
}

fn acked(load: &Load) -> u64 {
    load.progress().acked.load(Ordering::SeqCst)
}

/// Waits until every acknowledged message reached `dir`'s listener; the report either way.
fn drained(dir: &Path, acked: &[Vec<u64>], timeout: Duration) -> DeliveryReport {
    let check = || check_delivery(acked, &control_ids(&listen_received(dir)));
    wait_until(timeout, || {
        let r = check();
        r.missing.is_empty().then_some(r)
    })
    .unwrap_or_else(check)
}

// === the tests ===

/// Three nodes share one database and the load; the node delivering `lab` is killed with
/// `kill -9` (another takes its lease over within `lease_timeout`), it comes back, and
/// another node is restarted with SIGTERM. Every message acknowledged AA reaches both
/// destinations, each sender's messages in order; repeats are counted, and are at most the
/// possible duplicates the nodes logged.
#[test]
fn three_nodes_one_database_kill_and_restart() {
    let db = Schema::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_lab, lab_port) = causeway_listen(&["--quiet", "--out", d.join("lab").to_str().unwrap()]);
    let (_billing, billing_port) =
        causeway_listen(&["--quiet", "--out", d.join("billing").to_str().unwrap()]);
    let lease_timeout = Duration::from_secs(3);
    let config = |n: usize| NodeConfig {
        node_id: format!("node-{n}"),
        url: db.url.clone(),
        schema: db.name.clone(),
        lease_timeout: "3s",
        destinations: vec![
            ("lab", lab_port.parse().unwrap()),
            ("billing", billing_port.parse().unwrap()),
        ],
        ack_timeout: "5s",
    };
    let mut nodes: Vec<Option<Node>> = (1..=3)
        .map(|n| Some(Node::first_start(d, &config(n))))
        .collect();
    let node = |nodes: &[Option<Node>], id: &str| -> usize {
        nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.id == id))
            .unwrap_or_else(|| panic!("no node {id}"))
    };
    let balancer = Relay::start(nodes.iter().map(|n| n.as_ref().unwrap().mllp).collect());
    let load = Load::start(&LoadSettings {
        addr: balancer.addr(),
        // One connection per node to begin with (the relay deals them out in turn).
        senders: 3,
        timeout: Duration::from_secs(5),
        pause: Duration::from_millis(5),
    });
    wait_until(WAIT, || (acked(&load) >= 100).then_some(())).expect("load did not start");

    // The load is spread: every node took messages in.
    for n in nodes.iter().flatten() {
        let received = n.metric("causeway_messages_received_total", "channel=\"main\"");
        assert!(received > 0.0, "{} received nothing", n.id);
    }
    // Both destinations are delivered, each by one node.
    let leases = wait_until(WAIT, || {
        let l = nodes[0].as_ref().unwrap().leases();
        (l.len() == 2 && l.values().all(|(_, expired)| !expired)).then_some(l)
    })
    .expect("both leases held");
    let victim = leases["lab"].0.clone();
    eprintln!("leases before the kill: {leases:?}");

    // kill -9 the node delivering lab.
    let v = node(&nodes, &victim);
    let killed_at = Instant::now();
    drop(nodes[v].take());
    let survivor = nodes.iter().flatten().next().unwrap();
    let (new_holder, takeover) = wait_until(lease_timeout * 4, || {
        let l = survivor.leases();
        let (holder, expired) = &l["lab"];
        (holder != &victim && !expired).then(|| (holder.clone(), killed_at.elapsed()))
    })
    .expect("nobody took the lab lease over");
    eprintln!(
        "lab lease: {victim} killed, {new_holder} took over after {} ms",
        takeover.as_millis()
    );
    assert!(
        takeover <= lease_timeout + Duration::from_secs(3),
        "takeover took {takeover:?} with lease_timeout {lease_timeout:?}"
    );
    let before = acked(&load);
    wait_until(WAIT, || (acked(&load) > before + 30).then_some(()))
        .expect("ingest goes on while a node is down");

    // The killed node comes back; another is restarted cleanly (SIGTERM releases its
    // leases, so a standby takes them over at once).
    nodes[v] = Some(Node::start(&victim, &d.join(format!("{victim}.toml"))));
    let other = (0..3)
        .find(|&i| i != v && i != node(&nodes, &new_holder))
        .unwrap();
    {
        let n = nodes[other].as_mut().unwrap();
        let status = n.child.terminate(Duration::from_secs(40));
        assert!(status.success(), "{} exited with {status}", n.id);
    }
    let restarted = nodes[other].take().unwrap().restart();
    nodes[other] = Some(restarted);
    let before = acked(&load);
    wait_until(WAIT, || (acked(&load) > before + 60).then_some(()))
        .expect("ingest goes on after the restarts");

    let possible_duplicates: f64 = nodes
        .iter()
        .flatten()
        .map(|n| n.metric("causeway_lease_possible_duplicates_total", "lab"))
        .sum();
    let takeovers: f64 = nodes
        .iter()
        .flatten()
        .map(|n| n.metric("causeway_lease_takeovers_total", "lab"))
        .sum();
    let acked = load.stop();
    let total: usize = acked.iter().map(Vec::len).sum();
    let drain_started = Instant::now();
    let timeout = Duration::from_secs(40);
    let lab = drained(&d.join("lab"), &acked, timeout);
    let billing = drained(&d.join("billing"), &acked, timeout);
    let drain = drain_started.elapsed();
    eprintln!(
        "SCALE-SUMMARY nodes=3 acked={total} lab_delivered={} lab_duplicates={} \
         billing_delivered={} billing_duplicates={} lab_takeover_ms={} lab_takeovers={takeovers} \
         lab_possible_duplicates={possible_duplicates} drain_ms={} stored={}",
        lab.delivered,
        lab.duplicates,
        billing.delivered,
        billing.duplicates,
        takeover.as_millis(),
        drain.as_millis(),
        db.count("SELECT count(*) FROM messages WHERE duplicate_of IS NULL"),
    );
    assert!(total > 200, "only {total} messages acknowledged");
    assert_ok("lab", &lab);
    assert_ok("billing", &billing);
    assert!(takeovers >= 1.0, "the takeover was not counted");
    // A takeover repeats at most the head that was in flight on the dead node.
    assert!(
        lab.duplicates as f64 <= possible_duplicates,
        "{} repeats at lab, {possible_duplicates} possible duplicates logged",
        lab.duplicates
    );
    for n in nodes.iter_mut().flatten() {
        assert!(n.child.terminate(Duration::from_secs(40)).success());
    }
}

/// The connection between a node and PostgreSQL is cut under load, then mended: while it
/// is cut senders get AE (never AA) and `/readyz` says 503; afterwards the node recovers on
/// its own, and every message that got an AA is delivered, in order.
#[test]
fn database_outage_gets_ae_and_recovers() {
    let db = Schema::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_lab, lab_port) = causeway_listen(&["--quiet", "--out", d.join("lab").to_str().unwrap()]);
    let cable = Relay::start(vec![server_addr(&db.url)]);
    let config = NodeConfig {
        node_id: "outage".to_owned(),
        url: via(&db.url, cable.addr()),
        schema: db.name.clone(),
        lease_timeout: "3s",
        destinations: vec![("lab", lab_port.parse().unwrap())],
        ack_timeout: "5s",
    };
    let mut node = Node::first_start(d, &config);
    assert_eq!(node.get("/readyz").unwrap().0, 200);
    let load = Load::start(&LoadSettings {
        addr: node.mllp,
        senders: 4,
        timeout: Duration::from_secs(5),
        pause: Duration::from_millis(2),
    });
    wait_until(WAIT, || (acked(&load) >= 100).then_some(())).expect("load did not start");

    cable.cut();
    let cut_at = Instant::now();
    let not_accepted = || load.progress().not_accepted.load(Ordering::SeqCst);
    let refused_before = not_accepted();
    let not_ready = wait_until(WAIT, || {
        let (status, body) = node.get("/readyz").ok()?;
        (status == 503).then_some(body)
    })
    .expect("/readyz stays 200 with the database cut off");
    assert!(not_ready.contains("store"), "{not_ready}");
    wait_until(WAIT, || (not_accepted() > refused_before).then_some(()))
        .expect("no AE while the database is cut off");
    // Stay down a while: AA must not come back until the database does.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(cut_at.elapsed()));
    let acked_down = acked(&load);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(acked(&load), acked_down, "AA while the database is cut off");

    cable.restore();
    let mended_at = Instant::now();
    wait_until(WAIT, || (acked(&load) > acked_down + 50).then_some(()))
        .expect("ingest did not recover");
    let recovered = mended_at.elapsed();
    wait_until(WAIT, || (node.get("/readyz").ok()?.0 == 200).then_some(()))
        .expect("/readyz did not recover");
    let refused = not_accepted() - refused_before;
    let acked = load.stop();
    let total: usize = acked.iter().map(Vec::len).sum();
    let lab = drained(&d.join("lab"), &acked, Duration::from_secs(40));
    eprintln!(
        "OUTAGE-SUMMARY acked={total} refused_during_outage={refused} \
         ingest_recovered_ms={} lab_delivered={} lab_duplicates={} lab_unacked={}",
        recovered.as_millis(),
        lab.delivered,
        lab.duplicates,
        lab.delivered_unacked
    );
    assert!(refused > 0);
    assert_ok("lab", &lab);
    // Stored but never acknowledged (the commit's answer was cut off) is delivered too.
    let stored = || db.count("SELECT count(*) FROM messages WHERE duplicate_of IS NULL");
    let arrived = || check_delivery(&acked, &control_ids(&listen_received(&d.join("lab"))));
    wait_until(Duration::from_secs(20), || {
        (arrived().delivered as i64 == stored()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{} stored, {} delivered: every stored message is delivered once recovered",
            stored(),
            arrived().delivered
        )
    });
    assert!(node.child.terminate(Duration::from_secs(40)).success());
}

/// TLS to the database, verified against `store.tls_ca`: a private PostgreSQL server (its
/// own data directory and port, run as the `postgres` user; the shared server is left
/// alone) with a certificate from a throwaway CA and `sslmode=require` in the URL. The
/// node gets ready and stores a message, over a connection PostgreSQL reports as SSL.
#[test]
fn tls_to_the_database_is_verified() {
    // The newest server installed (Debian's layout: /usr/lib/postgresql/<major>/bin).
    let pg_bin = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .map(|v| format!("/usr/lib/postgresql/{v}/bin"))
        .expect("a PostgreSQL version in /usr/lib/postgresql");
    let pki = Pki::new("db");
    let cert = pki.server("pg");
    let dir = tempfile::tempdir().unwrap();
    let pg = dir.path().join("pg");
    std::fs::create_dir(&pg).unwrap();
    std::fs::copy(&cert.cert, pg.join("server.crt")).unwrap();
    std::fs::copy(&cert.key, pg.join("server.key")).unwrap();
    let as_postgres = |program: &str, args: &[&str]| {
        let mut all = vec![
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            program,
        ];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let run = |cmd: &str, args: &[&str]| {
        let out = Command::new(cmd).args(args).output().unwrap();
        assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
    };
    run("chown", &["-R", "postgres:postgres", pg.to_str().unwrap()]);
    run("chmod", &["0700", pg.to_str().unwrap()]);
    run("chmod", &["0600", pg.join("server.key").to_str().unwrap()]);
    // The temporary directory itself must let the postgres user through.
    run("chmod", &["0755", dir.path().to_str().unwrap()]);
    let data = pg.join("data");
    let initdb = format!("{pg_bin}/initdb");
    let args = as_postgres(
        &initdb,
        &[
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
    );
    run(
        "setpriv",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let postgres = format!("{pg_bin}/postgres");
    let opt = |k: &str, v: &str| format!("{k}={v}");
    let settings = [
        opt("listen_addresses", "127.0.0.1"),
        opt("unix_socket_directories", pg.to_str().unwrap()),
        opt("ssl", "on"),
        opt("ssl_cert_file", pg.join("server.crt").to_str().unwrap()),
        opt("ssl_key_file", pg.join("server.key").to_str().unwrap()),
        opt("fsync", "off"),
    ];
    let mut pg_args = vec![
        "-D".to_owned(),
        data.display().to_string(),
        "-p".to_owned(),
        port.to_string(),
    ];
    for s in &settings {
        pg_args.push("-c".to_owned());
        pg_args.push(s.clone());
    }
    let args = as_postgres(
        &postgres,
        &pg_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // setpriv execs: the child's pid is the postmaster's, so dropping it stops the server.
    let mut server = Child::spawn(
        "setpriv",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    server.wait_for_line(true, WAIT, |l| l.contains("ready to accept connections"));

    let d = dir.path();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require");
    let config = format!(
        "[store]\npostgres = \"{url}\"\ntls_ca = {:?}\nnode_id = \"tls\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\n[[channel]]\nname = \"main\"\n\n\
         [channel.source]\nbind = \"127.0.0.1:0\"\n\n[[channel.destination]]\n\
         name = \"out\"\ntype = \"file\"\ndirectory = {:?}\nfilename = \"{{id}}.hl7\"\n",
        pki.ca,
        d.join("out"),
    );
    std::fs::write(d.join("tls.toml"), config).unwrap();
    let mut node = Node::start("tls", &d.join("tls.toml"));
    let ready = wait_until(WAIT, || (node.get("/readyz").ok()?.0 == 200).then_some(()));
    assert!(ready.is_some(), "{}", node.child.stderr_lines().join("\n"));
    send_one_acked(node.mllp);
    let local = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
    let ssl = psql(
        &local,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'causeway' AND s.ssl",
    )
    .unwrap();
    assert!(
        ssl.parse::<i64>().unwrap() >= 1,
        "no TLS connection from the node: {ssl}"
    );
    let plain = psql(
        &local,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'causeway' AND NOT s.ssl",
    )
    .unwrap();
    assert_eq!(plain, "0", "a connection from the node without TLS");
    assert!(node.child.terminate(Duration::from_secs(40)).success());
    // SIGTERM: PostgreSQL's smart shutdown (no clients are left).
    assert!(server.terminate(Duration::from_secs(30)).success());
}

/// A partition: the node delivering `lab` loses its database connection while another node
/// keeps its own. The cut-off node stops delivering before its lease can expire in the
/// database (its senders get AE), the other node takes `lab` over and delivers in order;
/// once the connection is back the first node rejoins as a standby. Every message that got
/// an AA anywhere is delivered, in order per sender.
#[test]
fn node_cut_off_from_the_database_hands_its_destination_over() {
    let db = Schema::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_lab, lab_port) = causeway_listen(&["--quiet", "--out", d.join("lab").to_str().unwrap()]);
    let cable = Relay::start(vec![server_addr(&db.url)]);
    let config =
        |id: &str, url: String| NodeConfig::lab_only(id, url, &db, lab_port.parse().unwrap(), "5s");
    // The cut-off node starts first, so it takes the lease.
    let mut a = Node::first_start(d, &config("cut", via(&db.url, cable.addr())));
    a.wait_for_lease("lab");
    let mut b = Node::first_start(d, &config("kept", db.url.clone()));
    let balancer = Relay::start(vec![a.mllp, b.mllp]);
    let load = Load::start(&LoadSettings {
        addr: balancer.addr(),
        senders: 2,
        timeout: Duration::from_secs(5),
        pause: Duration::from_millis(5),
    });
    wait_until(WAIT, || (acked(&load) >= 60).then_some(())).expect("load did not start");

    cable.cut();
    let cut_at = Instant::now();
    let handed_over = wait_until(WAIT, || {
        let (holder, expired) = b.leases().get("lab").cloned()?;
        (holder == "kept" && !expired).then(|| cut_at.elapsed())
    })
    .expect("the connected node did not take lab over");
    let before = acked(&load);
    wait_until(WAIT, || (acked(&load) > before + 30).then_some(()))
        .expect("ingest goes on through the connected node");
    cable.restore();
    wait_until(WAIT, || (a.get("/readyz").ok()?.0 == 200).then_some(()))
        .expect("the cut-off node did not recover");
    let before = acked(&load);
    wait_until(WAIT, || (acked(&load) > before + 30).then_some(()))
        .expect("ingest after the connection is back");
    let possible: f64 = [&a, &b]
        .iter()
        .map(|n| n.metric("causeway_lease_possible_duplicates_total", "lab"))
        .sum();
    let acked = load.stop();
    let total: usize = acked.iter().map(Vec::len).sum();
    let lab = drained(&d.join("lab"), &acked, Duration::from_secs(40));
    eprintln!(
        "PARTITION-SUMMARY acked={total} handover_ms={} lab_delivered={} lab_duplicates={} \
         possible_duplicates={possible}",
        handed_over.as_millis(),
        lab.delivered,
        lab.duplicates
    );
    assert_ok("lab", &lab);
    assert!(
        lab.duplicates as f64 <= possible,
        "{} repeats, {possible} possible",
        lab.duplicates
    );
    assert_eq!(
        b.leases().get("lab").map(|(n, _)| n.clone()).as_deref(),
        Some("kept"),
        "the lease stays where it went"
    );
    assert!(a.child.terminate(Duration::from_secs(40)).success());
    assert!(b.child.terminate(Duration::from_secs(40)).success());
}

/// One connection to [`Silent`]: when its first frame arrived and when it closed.
type SilentConn = (Option<Instant>, Option<Instant>);

/// A destination that takes messages and never answers. Records when each connection's
/// first frame arrived and when the connection closed, in order of connection.
struct Silent {
    addr: SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<SilentConn>>>,
}

impl Silent {
    fn start() -> Silent {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let all = conns.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let i = {
                    let mut c = all.lock().unwrap();
                    c.push((None, None));
                    c.len() - 1
                };
                let all = all.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match std::io::Read::read(&mut stream, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if buf[..n].contains(&0x1c) {
                                    let mut c = all.lock().unwrap();
                                    c[i].0.get_or_insert_with(Instant::now);
                                }
                            }
                        }
                    }
                    all.lock().unwrap()[i].1 = Some(Instant::now());
                });
            }
        });
        Silent { addr, conns }
    }

    fn conns(&self) -> Vec<SilentConn> {
        self.conns.lock().unwrap().clone()
    }
}

/// A node cut off from the database while it waits for a destination's ACK (the ACK wait
/// is longer than the lease): it abandons that send when its lease runs out, so its
/// connection is closed before the node that takes the lease over sends anything. The
/// two nodes never have the destination's queue in flight at the same time.
#[test]
fn a_send_waiting_for_its_ack_ends_with_the_lease() {
    let db = Schema::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lab = Silent::start();
    let cable = Relay::start(vec![server_addr(&db.url)]);
    let config = |id: &str, url: String| NodeConfig::lab_only(id, url, &db, lab.addr.port(), "60s");
    let a = Node::first_start(d, &config("cut", via(&db.url, cable.addr())));
    a.wait_for_lease("lab");
    let b = Node::first_start(d, &config("kept", db.url.clone()));

    send_one_acked(a.mllp);
    wait_until(WAIT, || lab.conns().first()?.0).expect("the message did not reach lab");

    cable.cut();
    let cut_at = Instant::now();
    let conns = wait_until(Duration::from_secs(30), || {
        let c = lab.conns();
        c.iter()
            .skip(1)
            .any(|(first, _)| first.is_some())
            .then_some(c)
    })
    .expect("the connected node did not send lab's queue");
    let (_, closed) = conns[0];
    let resent = conns[1..].iter().find_map(|(first, _)| *first).unwrap();
    eprintln!(
        "cut node's connection closed {:?} after the cut; the other node sent after {:?}",
        closed.map(|c| c - cut_at),
        resent - cut_at
    );
    let closed = closed.expect("the cut-off node still waits for its ACK while another node sends");
    assert!(
        closed < resent,
        "the cut-off node's connection closed {:?} after the other node sent",
        closed - resent
    );
    assert!(
        a.child
            .stderr_lines()
            .iter()
            .any(|l| l.contains("delivery lease lost while waiting for the destination")),
        "the cut-off node did not say why it gave up the send"
    );
    drop(a);
    drop(b);
}
