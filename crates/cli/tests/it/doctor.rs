//! `causeway doctor` against broken receivers built for real: on loopback for what a peer
//! does (refuses, answers TLS or HTTP, never ACKs, ACKs the wrong message), and inside network
//! namespaces this file creates for what the network does (drops packets, has no route,
//! swallows large packets). The certificate findings (expired, untrusted, client certificate)
//! are tested in `causeway-doctor` itself, which can make certificates with rcgen.
//!
//! The namespace tests need root and `ip`/`iptables` (`scripts/test` installs them). Each
//! namespace is named `cwd-<pid>-<tag>` and deleted on drop, with its veth links, even when
//! the test fails; servers inside are killed first (declared after the namespaces).
//! Addresses are 10.231.x.y inside the namespaces only: nothing leaves this machine.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use causeway_testkit::netns::{Netns, ip};
use causeway_testkit::pki::Pki;
use causeway_testkit::process::Child;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_causeway");
const WAIT: Duration = Duration::from_secs(20);

/// Runs `causeway doctor ARGS --json` (inside `netns` when given) and returns the report and
/// the exit code.
fn doctor_in(netns: Option<&Netns>, args: &[&str]) -> (Value, i32) {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.name(), BIN]);
            c
        }
        None => Command::new(BIN),
    };
    let out = cmd
        .arg("doctor")
        .args(args)
        .arg("--json")
        .output()
        .expect("run causeway doctor");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}).\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.code().unwrap_or(-1))
}

fn doctor(args: &[&str]) -> (Value, i32) {
    doctor_in(None, args)
}

/// The code of check `name` in a report, with the whole report on mismatch.
#[track_caller]
fn assert_check(report: &Value, name: &str, code: &str) {
    let found = report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .map(|c| c["code"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        found.as_deref(),
        Some(code),
        "check {name}:\n{}",
        serde_json::to_string_pretty(report).unwrap()
    );
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback server running `handle` on each connection in its own thread.
fn serve(handle: fn(std::net::TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || handle(stream));
        }
    });
    port
}

/// Reads until `byte` arrives (true) or the peer closes (false).
fn read_until(stream: &mut std::net::TcpStream, byte: u8) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) if buf[..n].contains(&byte) => return true,
            Ok(_) => {}
        }
    }
}

/// Starts `causeway listen --quiet` with `extra` flags and returns it with its port.
fn listen(extra: &[&str]) -> (Child, String) {
    let mut args = vec!["--quiet"];
    args.extend_from_slice(extra);
    crate::support::causeway_listen(&args)
}

// === Loopback scenarios ===

#[test]
fn healthy_listener_is_ok_everywhere() {
    let (_server, port) = listen(&[]);
    let target = format!("127.0.0.1:{port}");
    let (report, code) = doctor(&[&target, "--timeout", "2s"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["code"], "ok");
    for step in ["dns", "route", "tcp", "proto", "mllp", "size", "latency"] {
        assert_check(&report, step, "ok");
    }
    let rungs = report["checks"][5]["evidence"]["rungs"].as_array().unwrap();
    assert_eq!(rungs.len(), 6, "1 KB to 1 MB");
    assert_eq!(rungs[5]["bytes"], 1024 * 1024);

    // The human form: one line per check, and the verdict.
    let out = Command::new(BIN)
        .args([
            "doctor",
            &target,
            "--ascii",
            "--samples",
            "2",
            "--max-size",
            "4096",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok mllp    ACK AA for "), "{text}");
    assert!(
        text.contains("1 KB AA") && !text.contains("16 KB"),
        "{text}"
    );
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("PASS (ok)"),
        "{text}"
    );
}

#[test]
fn configured_destination_is_checked_with_its_own_settings() {
    let (_server, port) = listen(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("causeway.toml");
    let toml = format!(
        "[admin]\ndisabled = true\n[[channel]]\nname = \"c\"\n[channel.source]\nbind = \"127.0.0.1:0\"\n\
         [[channel.destination]]\nname = \"lab\"\ntype = \"mllp\"\nto = \"127.0.0.1:{port}\"\n\
         [[channel.destination]]\nname = \"files\"\ntype = \"file\"\ndirectory = \"out\"\n"
    );
    std::fs::write(&config, toml).unwrap();
    let config = config.to_str().unwrap();
    let (report, code) = doctor(&[
        "--destination",
        "lab",
        "--config",
        config,
        "--max-size",
        "4096",
        "--samples",
        "1",
    ]);
    assert_eq!(code, 0, "{report:#}");
    assert_check(&report, "mllp", "ok");
    // Not an MLLP destination, and an unknown one: a clear refusal, exit 2.
    for name in ["files", "nope"] {
        let out = Command::new(BIN)
            .args(["doctor", "--destination", name, "--config", config])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(name));
    }
}

#[test]
fn nothing_listening_is_refused() {
    let target = format!("127.0.0.1:{}", free_port());
    let (report, code) = doctor(&[&target, "--timeout", "1s"]);
    assert_eq!(code, 2);
    assert_check(&report, "tcp", "tcp.refused");
    assert_check(&report, "proto", "skipped");
    assert!(
        report["checks"][2]["hint"]
            .as_str()
            .unwrap()
            .contains("Nothing listens")
    );
}

#[test]
fn tls_listener_probed_in_plain_expects_tls() {
    let pki = Pki::new("doctor");
    let srv = pki.server("srv");
    let (_server, port) = listen(&[
        "--tls-cert",
        srv.cert.to_str().unwrap(),
        "--tls-key",
        srv.key.to_str().unwrap(),
    ]);
    let (report, code) = doctor(&[&format!("127.0.0.1:{port}"), "--timeout", "1s"]);
    assert_eq!(code, 2);
    assert_check(&report, "proto", "proto.tls_expected");
}

#[test]
fn plain_listener_probed_with_tls_expects_plain() {
    let pki = Pki::new("doctor");
    let (_server, port) = listen(&[]);
    let target = format!("127.0.0.1:{port}");
    let ca = pki.ca.to_str().unwrap();
    let (report, code) = doctor(&[&target, "--tls", "--ca", ca, "--timeout", "1s"]);
    assert_eq!(code, 2);
    assert_check(&report, "proto", "proto.plain_expected");
}

#[test]
fn certificate_for_another_name_is_named() {
    let pki = Pki::new("doctor");
    let srv = pki.server("srv");
    let (_server, port) = listen(&[
        "--tls-cert",
        srv.cert.to_str().unwrap(),
        "--tls-key",
        srv.key.to_str().unwrap(),
    ]);
    let target = format!("127.0.0.1:{port}");
    let ca = pki.ca.to_str().unwrap();
    let (report, _) = doctor(&[&target, "--ca", ca, "--server-name", "hl7.wrong.example"]);
    assert_check(&report, "tls", "tls.hostname");
    // And with the right name everything passes.
    let (report, code) = doctor(&[
        &target,
        "--ca",
        ca,
        "--server-name",
        "localhost",
        "--samples",
        "1",
    ]);
    assert_eq!(code, 0, "{report:#}");
    assert_check(&report, "tls", "ok");
}

#[test]
fn http_server_is_named() {
    // Like nginx: answers 400 once it has a line, so our LF-less MLLP frame gets nothing.
    let port = serve(|mut s| {
        if read_until(&mut s, b'\n') {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let (report, code) = doctor(&[&format!("127.0.0.1:{port}"), "--timeout", "1s"]);
    assert_eq!(code, 2);
    assert_check(&report, "proto", "proto.http");
}

#[test]
fn receiver_that_never_acks_is_named() {
    let port = serve(|mut s| {
        let _ = read_until(&mut s, 0xff);
    });
    let (report, code) = doctor(&[&format!("127.0.0.1:{port}"), "--timeout", "1s"]);
    assert_eq!(code, 2);
    assert_check(&report, "proto", "ok");
    assert_check(&report, "mllp", "mllp.no_ack");
}

#[test]
fn ack_for_another_message_is_named() {
    let port = serve(|mut s| {
        while read_until(&mut s, 0x1c) {
            let ack = b"\x0bMSH|^~\\&|RCV|FAC|CAUSEWAY|DOCTOR|20260101||ACK|R1|P|2.5\rMSA|AA|STALE-ID\r\x1c\r";
            if s.write_all(ack).is_err() {
                return;
            }
        }
    });
    let (report, code) = doctor(&[&format!("127.0.0.1:{port}"), "--timeout", "1s"]);
    assert_eq!(code, 2);
    assert_check(&report, "mllp", "mllp.control_id_mismatch");
    assert_eq!(
        report["checks"][4]["evidence"]["acked_control_id"],
        "STALE-ID"
    );
}

#[test]
fn negative_ack_to_the_test_message_is_a_warning() {
    let (_server, port) = listen(&["--ack", "AR"]);
    let (report, code) = doctor(&[
        &format!("127.0.0.1:{port}"),
        "--samples",
        "1",
        "--max-size",
        "1024",
    ]);
    assert_eq!(code, 1, "{report:#}");
    assert_check(&report, "mllp", "mllp.nack");
    assert_eq!(report["verdict"], "warn");
}

// === Network namespaces ===

/// One end of a veth link: namespace, interface name, address/prefix, MTU.
struct End<'a>(&'a Netns, &'a str, &'a str, u32);

fn link(a: End<'_>, b: End<'_>) {
    ip(&[
        "link",
        "add",
        a.1,
        "netns",
        a.0.name(),
        "type",
        "veth",
        "peer",
        "name",
        b.1,
        "netns",
        b.0.name(),
    ]);
    for End(ns, dev, addr, mtu) in [a, b] {
        ns.ip(&["addr", "add", addr, "dev", dev]);
        ns.ip(&["link", "set", dev, "mtu", &mtu.to_string(), "up"]);
    }
}

/// client 10.231.1.1 -- 10.231.1.254 router 10.231.2.254 -- 10.231.2.2 server. The router's
/// server-side interface has `router_mtu`; the hosts have 1500.
struct Routed {
    client: Netns,
    router: Netns,
    server: Netns,
}

fn routed(tag: &str, router_mtu: u32) -> Routed {
    let net = Routed {
        client: Netns::new(&format!("{tag}c")),
        router: Netns::new(&format!("{tag}r")),
        server: Netns::new(&format!("{tag}s")),
    };
    link(
        End(&net.client, "c0", "10.231.1.1/24", 1500),
        End(&net.router, "r0", "10.231.1.254/24", 1500),
    );
    link(
        End(&net.router, "r1", "10.231.2.254/24", router_mtu),
        End(&net.server, "s0", "10.231.2.2/24", 1500),
    );
    net.client
        .ip(&["route", "add", "default", "via", "10.231.1.254"]);
    net.server
        .ip(&["route", "add", "default", "via", "10.231.2.254"]);
    net.router
        .run("sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
    net
}

/// `causeway listen` inside `ns` on 10.231.2.2:2575 (or `addr`), ready.
fn listen_in(ns: &Netns, addr: &str) -> Child {
    let child = ns.spawn(
        BIN,
        &["listen", "--bind", addr, "--port", "2575", "--quiet"],
    );
    child.wait_for_line(true, WAIT, |l| l.starts_with("causeway listen: "));
    child
}

#[test]
fn dropped_packets_time_out() {
    let client = Netns::new("dc");
    let server = Netns::new("ds");
    link(
        End(&client, "c0", "10.231.1.1/24", 1500),
        End(&server, "s0", "10.231.1.2/24", 1500),
    );
    server.run(
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", "2575", "-j", "DROP"],
    );
    let _listener = listen_in(&server, "10.231.1.2");
    let (report, code) = doctor_in(Some(&client), &["10.231.1.2:2575", "--timeout", "1s"]);
    assert_eq!(code, 2);
    assert_check(&report, "route", "ok");
    assert_eq!(
        report["checks"][1]["evidence"]["routes"][0]["interface"],
        "c0"
    );
    assert_check(&report, "tcp", "tcp.timeout");
}

#[test]
fn missing_routes_are_named() {
    let net = routed("nr", 1500);
    // The router knows no 10.231.9.0/24 and says so (ICMP network unreachable).
    let (report, _) = doctor_in(Some(&net.client), &["10.231.9.9:2575", "--timeout", "2s"]);
    assert_check(&report, "route", "ok");
    assert_check(&report, "tcp", "tcp.unreachable");
    // Without a default route the kernel has no route at all.
    net.client.ip(&["route", "del", "default"]);
    let (report, code) = doctor_in(Some(&net.client), &["10.231.9.9:2575", "--timeout", "2s"]);
    assert_eq!(code, 2);
    assert_check(&report, "route", "route.none");
}

#[test]
fn mtu_black_hole_is_found_where_it_starts() {
    let net = routed("mtu", 1280);
    // The router cannot forward 1500-byte packets with DF set, and the ICMP "fragmentation
    // needed" that would tell the sender is dropped: the classic black hole.
    for chain in ["OUTPUT", "FORWARD"] {
        net.router.run(
            "iptables",
            &[
                "-A",
                chain,
                "-p",
                "icmp",
                "--icmp-type",
                "fragmentation-needed",
                "-j",
                "DROP",
            ],
        );
    }
    let _listener = listen_in(&net.server, "10.231.2.2");
    let (report, code) = doctor_in(Some(&net.client), &["10.231.2.2:2575", "--timeout", "1s"]);
    assert_eq!(code, 2);
    assert_check(&report, "mllp", "ok");
    assert_check(&report, "size", "path.mtu_blackhole");
    let size = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "size")
        .unwrap();
    assert_eq!(size["evidence"]["largest_ok_bytes"], 1024, "{size:#}");
    assert_eq!(size["evidence"]["stalled_bytes"], 4096, "{size:#}");
    assert!(size["hint"].as_str().unwrap().contains("MSS"));

    // Let the ICMP through and path MTU discovery repairs the path.
    for chain in ["OUTPUT", "FORWARD"] {
        net.router.run("iptables", &["-F", chain]);
    }
    let (report, code) = doctor_in(
        Some(&net.client),
        &["10.231.2.2:2575", "--timeout", "2s", "--samples", "1"],
    );
    assert_eq!(code, 0, "{report:#}");
    assert_check(&report, "size", "ok");
}
