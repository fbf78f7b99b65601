//! `causeway serve` end to end: the real binary with real peers on every side. python-hl7
//! and a raw socket send; `causeway listen --out` (MLLP), `python/http_sink.py` (HTTP) and
//! file destinations receive. Also `config check`, SIGTERM, `kill -9` under load (the crash
//! test) and a destination outage.
//!
//! The crash test's number of kills is `CAUSEWAY_CRASH_KILLS` (default 3; `scripts/crash-test`
//! runs 20 or more) and its random moments come from `CAUSEWAY_CRASH_SEED` (printed, so a
//! failure can be replayed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use causeway_message::Message;
use causeway_message::ack::{AckMode, Outcome};
use causeway_testkit::corpus;
use causeway_testkit::e2e::{
    self, DeliveryReport, Load, LoadSettings, MllpConn, check_delivery, control_ids,
    file_destination_received, http_received, listen_received, wait_until,
};
use causeway_testkit::process::{Child, python, python_peer};

const BIN: &str = env!("CARGO_BIN_EXE_causeway");
const WAIT: Duration = Duration::from_secs(20);

// === the peers ===

/// `causeway listen --out DIR` on `port` (0: any); returns it with its port.
fn listen(port: u16, out: &Path) -> (Child, u16) {
    let child = Child::spawn(
        BIN,
        &[
            "listen",
            "--quiet",
            "--port",
            &port.to_string(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let line = child.wait_for_line(true, WAIT, |l| l.starts_with("causeway listen: "));
    let port = line
        .split(" on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (child, port)
}

/// The HTTP sink storing into `dir`, answering 503 while `fail_flag` exists.
fn http_sink(dir: &Path, fail_flag: &Path) -> (Child, u16) {
    let script = python_peer("http_sink.py");
    let child = Child::spawn(
        python(),
        &[
            script.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
            "--fail-flag",
            fail_flag.to_str().unwrap(),
        ],
    );
    let ready = child.wait_for_line(false, WAIT, |l| l.starts_with("READY "));
    (child, ready["READY ".len()..].trim().parse().unwrap())
}

/// A running `causeway serve` and the address of each channel, read from its stderr.
struct Serve {
    child: Child,
    channels: BTreeMap<String, SocketAddr>,
}

impl Serve {
    fn start(config: &Path) -> Serve {
        let child = Child::spawn(BIN, &["serve", "--config", config.to_str().unwrap()]);
        child.wait_for_line(true, WAIT, |l| l.starts_with("causeway: ready"));
        let channels = child
            .stderr_lines()
            .iter()
            .filter_map(|l| {
                // causeway: channel NAME: MLLP on ADDR -> DESTINATIONS
                let rest = l.strip_prefix("causeway: channel ")?;
                let (name, rest) = rest.split_once(": MLLP on ")?;
                let addr = rest.split(' ').next()?.parse().ok()?;
                Some((name.to_owned(), addr))
            })
            .collect();
        Serve { child, channels }
    }

    fn addr(&self, channel: &str) -> SocketAddr {
        self.channels[channel]
    }
}

/// A gateway configuration: one channel `main` on `bind`, data in `data`, admin API off
/// (parallel tests must not fight over its port), then `destinations` (TOML).
fn config(data: &Path, bind: &str, destinations: &str) -> String {
    format!(
        "[store]\npath = {data:?}\n\n[admin]\ndisabled = true\n\n\
         [[channel]]\nname = \"main\"\n\n[channel.source]\nbind = \"{bind}\"\n\n{destinations}"
    )
}

fn mllp_destination(name: &str, port: u16) -> String {
    // Short retries: the outage and crash tests bring the receiver back within seconds.
    format!(
        "[[channel.destination]]\nname = \"{name}\"\ntype = \"mllp\"\nto = \"127.0.0.1:{port}\"\n\
         retry_initial = \"50ms\"\nretry_max = \"500ms\"\nack_timeout = \"5s\"\nconnect_timeout = \"2s\"\n\n"
    )
}

fn http_destination(name: &str, port: u16) -> String {
    format!(
        "[[channel.destination]]\nname = \"{name}\"\ntype = \"http\"\nurl = \"http://127.0.0.1:{port}/hl7\"\n\
         retry_initial = \"50ms\"\nretry_max = \"500ms\"\ntimeout = \"5s\"\n\n"
    )
}

fn file_destination(name: &str, dir: &Path, filter: &str) -> String {
    format!(
        "[[channel.destination]]\nname = \"{name}\"\ntype = \"file\"\ndirectory = {dir:?}\n\
         filename = \"{{id}}-{{control_id}}.hl7\"\n{filter}\n"
    )
}

/// Writes `text` to `path` and returns the path.
fn write(path: PathBuf, text: &str) -> PathBuf {
    std::fs::write(&path, text).unwrap();
    path
}

/// The reply `serve` owes a message it stored: AA in original mode; in enhanced mode CA when
/// MSH-15 asks for an accept ACK on success, else AA when MSH-16 asks for an application ACK
/// (storing is the gateway's application processing), else none.
fn expected_ack(bytes: &[u8]) -> Option<&'static str> {
    let msg = Message::parse(bytes).ok()?;
    match AckMode::of(&msg) {
        AckMode::Original => Some("AA"),
        mode if mode.commit_ack_due(Outcome::Accept) => Some("CA"),
        AckMode::Enhanced { application, .. } if application.applies(Outcome::Accept) => Some("AA"),
        AckMode::Enhanced { .. } => None,
    }
}

/// Messages sent as they are (CR or LF segment ends: the gateway takes both), with the ACK
/// code the sender must get: every corpus file that is one message and gets a reply, except
/// `skip`, those holding MLLP's frame bytes 0x0B or 0x1C (three rubyhl7 files end with a
/// stray 0x0B, which MLLP cannot carry), and the one without MSH-10 (hapi OML_O21, refused
/// with AR: see the test below).
fn raw_corpus(skip: &[&str]) -> Vec<(String, Vec<u8>, &'static str)> {
    corpus::all()
        .into_iter()
        .filter(|f| !skip.contains(&f.name.as_str()) && f.bytes.starts_with(b"MSH"))
        .filter(|f| !f.bytes.iter().any(|&b| b == 0x0b || b == 0x1c))
        .filter(|f| e2e::field(&f.bytes, "MSH", 10).is_some_and(|id| !id.is_empty()))
        .filter_map(|f| {
            let code = expected_ack(&f.bytes)?;
            Some((f.name, f.bytes, code))
        })
        .collect()
}

/// The files python-hl7 sends (it reads them as UTF-8 text).
const PYTHON_SAMPLE: [&str; 8] = [
    "hapi__ADT_A01__1.hl7",
    "fhirconv__ORU_R01__2.hl7",
    "ipf__ADT_A01__1.hl7",
    "medplum__QBP_Q11__1.hl7",
    "ipf__MDM_T02__1.hl7",
    "gcpmllp__ADT_A01__1.hl7",
    "pythonhl7__ADT_A01__1.hl7",
    "dotnethl7__ORM_O01__1.hl7",
];

/// What python-hl7 puts on the wire for a file: CR segment ends; compared without the
/// trailing segment end (python-hl7 decides that one).
fn as_python_sends(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes)
        .trim_start_matches('\u{feff}')
        .replace("\r\n", "\r")
        .replace('\n', "\r");
    text.trim_matches('\r').as_bytes().to_vec()
}

fn trim_end_cr(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&b| b != b'\r' && b != b'\n')
        .map_or(0, |p| p + 1);
    &bytes[..end]
}

fn assert_ok(name: &str, report: &DeliveryReport) {
    assert!(
        report.ok(),
        "{name}: {} missing (first {:?}), {} out of order (first {:?}), {} foreign",
        report.missing.len(),
        report.missing.iter().take(5).collect::<Vec<_>>(),
        report.out_of_order.len(),
        report.out_of_order.iter().take(5).collect::<Vec<_>>(),
        report.foreign
    );
}

// === the tests ===

#[test]
fn config_check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &file_destination("archive", &dir.path().join("archive"), ""),
    );
    let check = |path: &Path| {
        Command::new(BIN)
            .args(["config", "check", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = check(&write(dir.path().join("good.toml"), &good));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK (1 channel, 1 destination)"),
        "{out:?}"
    );
    // A misspelt key: named, with its line.
    let typo = good.replace("directory =", "directroy =");
    let out = check(&write(dir.path().join("typo.toml"), &typo));
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("directroy") && err.contains("line"), "{err}");
    // Well-formed but wrong: the dotted key.
    let dup = format!(
        "{good}{}",
        file_destination("archive", &dir.path().join("x"), "")
    );
    let out = check(&write(dir.path().join("dup.toml"), &dup));
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("channel[0].destination[1].name"), "{err}");
    // serve refuses it the same way, before binding anything.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--config",
            dir.path().join("dup.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");

    // What only loading shows: a TLS file that is not there fails the check as it would
    // fail `serve`, naming the channel, the destination and the file.
    let missing = dir.path().join("no-such-ca.pem");
    let tls = format!(
        "{good}[[channel.destination]]\nname = \"lab\"\ntype = \"mllp\"\nto = \"127.0.0.1:1\"\n\
         [channel.destination.tls]\nca = {missing:?}\n"
    );
    let out = check(&write(dir.path().join("tls.toml"), &tls));
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("destination lab") && err.contains("no-such-ca.pem"),
        "{err}"
    );
    // An HTTP header: its name checked, its value read from the environment (and never
    // echoed).
    let header = |name: &str, value: &str| {
        format!(
            "{good}{}[channel.destination.headers]\n\"{name}\" = \"{value}\"\n",
            http_destination("api", 1)
        )
    };
    let out = check(&write(
        dir.path().join("header-name.toml"),
        &header("X Api Key", "k"),
    ));
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("channel[0].destination[1].headers.X Api Key"),
        "{err}"
    );
    let from_env = write(
        dir.path().join("header-env.toml"),
        &header("X-Api-Key", "${CAUSEWAY_TEST_API_KEY}"),
    );
    let out = Command::new(BIN)
        .args(["config", "check", from_env.to_str().unwrap()])
        .env_remove("CAUSEWAY_TEST_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CAUSEWAY_TEST_API_KEY is not set"),
        "{out:?}"
    );
    let out = Command::new(BIN)
        .args(["config", "check", from_env.to_str().unwrap()])
        .env("CAUSEWAY_TEST_API_KEY", "secret-value-1234")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret-value-1234"));
}

/// python-hl7 and a raw socket send the corpus into `serve`; every destination receives
/// every message, byte for byte and in order; a filter routes ADT only to one destination;
/// garbage gets AR with an ERR segment; a resend is acknowledged but delivered once; SIGTERM
/// under load exits 0 and loses no acknowledged message.
#[test]
fn serve_delivers_everywhere_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_listen, listen_port) = listen(0, &d.join("listen"));
    let (_sink, http_port) = http_sink(&d.join("http"), &d.join("http-down"));
    let destinations = [
        mllp_destination("lab", listen_port),
        http_destination("api", http_port),
        file_destination("archive", &d.join("archive"), ""),
        file_destination(
            "adt",
            &d.join("adt"),
            "[channel.destination.filter]\nmessage_type = [\"ADT\", \"ADT^*\"]\n",
        ),
    ]
    .concat();
    let path = write(
        d.join("causeway.toml"),
        &config(&d.join("data"), "127.0.0.1:0", &destinations),
    );
    let serve = Serve::start(&path);
    let addr = serve.addr("main");
    // From now on, restarts use the same port.
    let path = write(
        d.join("causeway.toml"),
        &config(&d.join("data"), &addr.to_string(), &destinations),
    );

    // python-hl7 first: its ACK codes (files that get no reply would leave it waiting).
    let files: Vec<String> = PYTHON_SAMPLE
        .iter()
        .map(|n| corpus::dir().join(n))
        .filter(|p| expected_ack(&std::fs::read(p).unwrap()).is_some())
        .map(|p| p.display().to_string())
        .collect();
    assert!(files.len() >= 6);
    let script = python_peer("hl7_client.py");
    let mut args = vec![
        script.display().to_string(),
        "--port".into(),
        addr.port().to_string(),
    ];
    args.extend(files.iter().cloned());
    let out = Command::new(python()).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sent: Vec<(Vec<u8>, bool)> = Vec::new(); // (bytes, sent by python-hl7)
    let acks: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).unwrap();
            let msg = Message::parse(&bytes).unwrap();
            let code = expected_ack(&bytes).unwrap();
            sent.push((as_python_sends(&bytes), true));
            format!(
                "ACK {code} {}",
                String::from_utf8_lossy(msg.control_id().unwrap())
            )
        })
        .collect();
    assert_eq!(acks, want);

    // Then the rest of the corpus over a raw socket, bytes exactly as in the files.
    let mut conn = MllpConn::connect(addr, Duration::from_secs(10)).unwrap();
    let raw = raw_corpus(&PYTHON_SAMPLE);
    assert!(raw.len() >= 30, "only {} corpus messages", raw.len());
    for (name, bytes, code) in &raw {
        let reply = conn.send(bytes).unwrap();
        assert_eq!(
            e2e::ack_code(&reply).as_deref(),
            Some(*code),
            "{name}: {:?}",
            String::from_utf8_lossy(&reply)
        );
        sent.push((bytes.clone(), false));
    }

    // Garbage: AR with an ERR segment, and nothing delivered.
    let reply = conn.send(b"this is not HL7 at all\r").unwrap();
    assert_eq!(e2e::ack_code(&reply).as_deref(), Some("AR"));
    assert!(
        e2e::field(&reply, "ERR", 1).is_some() || e2e::field(&reply, "ERR", 3).is_some(),
        "no ERR segment in {:?}",
        String::from_utf8_lossy(&reply)
    );

    // A message without MSH-10 (a real one from the corpus): refused with AR and ERR 101,
    // quarantined, never acknowledged AA and then lost at a destination.
    let no_id = corpus::file("hapi__OML_O21__1.hl7");
    let reply = conn.send(&no_id).unwrap();
    assert_eq!(
        e2e::ack_code(&reply).as_deref(),
        Some("AR"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    assert!(
        String::from_utf8_lossy(&reply).contains("101^Required field missing"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    // A resend of the same message: acknowledged twice, delivered once.
    let dup = b"MSH|^~\\&|RESEND|TEST|CAUSEWAY|TEST|20261127120000||ORU^R01|DUP-1|P|2.5.1\rOBX|1|ST|X||1\r";
    for _ in 0..2 {
        let reply = conn.send(dup).unwrap();
        assert_eq!(e2e::ack_code(&reply).as_deref(), Some("AA"));
    }
    sent.push((dup.to_vec(), false));
    drop(conn);

    let n = sent.len();
    let listened = wait_until(WAIT, || {
        let got = listen_received(&d.join("listen"));
        (got.len() >= n).then_some(got)
    })
    .unwrap_or_else(|| {
        panic!(
            "listen got {} of {n}; serve said:\n{}",
            listen_received(&d.join("listen")).len(),
            serve.child.stderr_lines().join("\n")
        )
    });
    let archived = wait_until(WAIT, || {
        let got = file_destination_received(&d.join("archive"));
        (got.len() >= n).then_some(got)
    })
    .expect("archive destination incomplete");
    let posted = wait_until(WAIT, || {
        let got = http_received(&d.join("http"));
        (got.len() >= n).then_some(got)
    })
    .expect("HTTP destination incomplete");
    // Let a stray extra delivery (there must be none) show up before counting.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(listen_received(&d.join("listen")).len(), n);
    assert_eq!(file_destination_received(&d.join("archive")).len(), n);
    assert_eq!(http_received(&d.join("http")).len(), n);

    for (i, (bytes, by_python)) in sent.iter().enumerate() {
        let got = &listened[i];
        // python-hl7 decides the last segment's CR; the raw sender's bytes must match exactly.
        let same = if *by_python {
            trim_end_cr(got) == trim_end_cr(bytes)
        } else {
            got == bytes
        };
        assert!(same, "message {i} differs at lab");
        // Every destination has the very bytes the gateway received.
        assert!(archived[i] == *got, "message {i} differs at archive");
        assert!(posted[i].body == *got, "message {i} differs at api");
        let h = &posted[i].headers;
        let ct = h.get("content-type").map(String::as_str).unwrap_or("");
        // A charset when MSH-18 declares one or the bytes are UTF-8; never a guess (one
        // corpus message is ISO-8859-1 without MSH-18).
        let known = std::str::from_utf8(got).is_ok()
            || e2e::field(got, "MSH", 18).is_some_and(|c| !c.is_empty());
        if known {
            assert!(
                ct.starts_with("application/hl7-v2; charset="),
                "message {i}: Content-Type {ct:?}"
            );
        } else {
            assert_eq!(ct, "application/hl7-v2", "message {i}");
        }
        assert!(
            h.get("idempotency-key")
                .is_some_and(|k| k.starts_with("api-")),
            "message {i}: {h:?}"
        );
    }
    let keys: std::collections::HashSet<_> = posted
        .iter()
        .map(|r| r.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(keys.len(), n, "Idempotency-Key repeats");
    // The ISO-8859-1 corpus message says so in its Content-Type.
    assert!(
        posted
            .iter()
            .any(|r| r.headers["content-type"] == "application/hl7-v2; charset=ISO-8859-1"),
        "no ISO-8859-1 message posted"
    );

    // The filter: ADT messages only, in order.
    let adt_want: Vec<&Vec<u8>> = listened
        .iter()
        .filter(|m| Message::parse(m).unwrap().message_code() == Some(b"ADT".as_slice()))
        .collect();
    assert!(adt_want.len() >= 10 && adt_want.len() < n);
    let adt = wait_until(WAIT, || {
        let got = file_destination_received(&d.join("adt"));
        (got.len() >= adt_want.len()).then_some(got)
    })
    .expect("adt destination incomplete");
    assert!(
        adt.iter().eq(adt_want.iter().copied()),
        "adt destination got {:?}, want {:?}",
        control_ids(&adt),
        control_ids(&adt_want.into_iter().cloned().collect::<Vec<_>>())
    );

    // SIGTERM while two senders keep sending: exit 0, and every acknowledged message is
    // delivered (after a restart if the queue was not drained at the stop).
    let mut serve = serve;
    let load = Load::start(&LoadSettings {
        addr,
        senders: 2,
        timeout: Duration::from_secs(5),
        pause: Duration::from_millis(2),
    });
    wait_until(WAIT, || {
        (load
            .progress()
            .acked
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 50)
            .then_some(())
    })
    .expect("load did not start");
    let status = serve.child.terminate(Duration::from_secs(30));
    assert!(status.success(), "serve exited with {status}");
    serve
        .child
        .wait_for_line(true, WAIT, |l| l.contains("stopping"));
    let acked = load.stop();
    let serve = Serve::start(&path);
    let before = n;
    let report = wait_until(WAIT, || {
        let got = control_ids(&listen_received(&d.join("listen"))[before..]);
        let r = check_delivery(&acked, &got);
        r.missing.is_empty().then_some(r)
    })
    .unwrap_or_else(|| {
        let got = control_ids(&listen_received(&d.join("listen"))[before..]);
        check_delivery(&acked, &got)
    });
    assert_ok("lab after SIGTERM", &report);
    let mut serve = serve;
    assert!(serve.child.terminate(Duration::from_secs(30)).success());
}

/// `kill -9` under load, restart on the same data and port, again and again: every message
/// that got an AA reaches every destination, each sender's messages in order.
#[test]
fn crash_test_kill_9_under_load() {
    let kills: usize = std::env::var("CAUSEWAY_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(3);
    let senders: usize = std::env::var("CAUSEWAY_CRASH_SENDERS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("CAUSEWAY_CRASH_SEED")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test: {kills} kills, {senders} senders, CAUSEWAY_CRASH_SEED={seed}");
    let mut rng = seed;
    let mut random_ms = |lo: u64, hi: u64| {
        // xorshift64: deterministic from the seed.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        lo + rng % (hi - lo)
    };

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_listen, listen_port) = listen(0, &d.join("listen"));
    let destinations = [
        mllp_destination("lab", listen_port),
        file_destination("archive", &d.join("archive"), ""),
    ]
    .concat();
    let path = write(
        d.join("causeway.toml"),
        &config(&d.join("data"), "127.0.0.1:0", &destinations),
    );
    let mut serve = Serve::start(&path);
    let addr = serve.addr("main");
    write(
        d.join("causeway.toml"),
        &config(&d.join("data"), &addr.to_string(), &destinations),
    );

    let load = Load::start(&LoadSettings {
        addr,
        senders,
        timeout: Duration::from_secs(5),
        pause: Duration::from_millis(1),
    });
    let acked_now = || {
        load.progress()
            .acked
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let mut to_ready = Vec::new();
    let mut to_first_ack = Vec::new();
    // Restarts whose store applied acknowledged ingests again from its journal (the
    // writer's open transaction was lost with the process).
    let mut journal_replays = 0;
    for kill in 1..=kills {
        std::thread::sleep(Duration::from_millis(random_ms(200, 1200)));
        let killed_at = Instant::now();
        drop(serve); // SIGKILL, then reaped
        serve = Serve::start(&path);
        assert_eq!(serve.addr("main"), addr);
        to_ready.push(killed_at.elapsed());
        if serve
            .child
            .stderr_lines()
            .iter()
            .any(|l| l.contains("again from its journal"))
        {
            journal_replays += 1;
        }
        let acked = acked_now();
        wait_until(WAIT, || (acked_now() > acked).then_some(()))
            .unwrap_or_else(|| panic!("no AA within {WAIT:?} after restart {kill}"));
        to_first_ack.push(killed_at.elapsed());
    }
    std::thread::sleep(Duration::from_millis(300));
    let progress = (
        load.progress()
            .resent
            .load(std::sync::atomic::Ordering::SeqCst),
        load.progress()
            .not_accepted
            .load(std::sync::atomic::Ordering::SeqCst),
    );
    let acked = load.stop();
    let total: usize = acked.iter().map(Vec::len).sum();

    // Let the queues drain.
    let drain_started = Instant::now();
    let check = |dir: &Path, listen: bool| {
        let got = if listen {
            listen_received(dir)
        } else {
            file_destination_received(dir)
        };
        check_delivery(&acked, &control_ids(&got))
    };
    // Both destinations drain at once; a debug build delivers a few hundred files a second
    // (each file and its directory are synced), so the bound grows with the volume.
    let deadline =
        drain_started + Duration::from_secs(30) + Duration::from_millis(total as u64 * 10);
    let left = || deadline.saturating_duration_since(Instant::now());
    let lab = wait_until(left(), || {
        let r = check(&d.join("listen"), true);
        r.missing.is_empty().then_some(r)
    })
    .unwrap_or_else(|| check(&d.join("listen"), true));
    let archive = wait_until(left(), || {
        let r = check(&d.join("archive"), false);
        r.missing.is_empty().then_some(r)
    })
    .unwrap_or_else(|| check(&d.join("archive"), false));
    let drain = drain_started.elapsed();
    let status = serve.child.terminate(Duration::from_secs(30));

    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    // One line for scripts/crash-test to pick up.
    eprintln!(
        "CRASH-SUMMARY kills={kills} senders={senders} seed={seed} acked={total} resent={} \
         not_accepted={} lab_delivered={} lab_duplicates={} lab_unacked={} \
         archive_delivered={} archive_unacked={} max_restart_to_ready_ms={} \
         max_kill_to_first_ack_ms={} drain_ms={} lost={} reordered={} journal_replays={journal_replays}",
        progress.0,
        progress.1,
        lab.delivered,
        lab.duplicates,
        lab.delivered_unacked,
        archive.delivered,
        archive.delivered_unacked,
        max(&to_ready).as_millis(),
        max(&to_first_ack).as_millis(),
        drain.as_millis(),
        lab.missing.len() + archive.missing.len(),
        lab.out_of_order.len() + archive.out_of_order.len(),
    );
    assert!(total > 0, "no message was acknowledged");
    assert_ok("lab", &lab);
    assert_ok("archive", &archive);
    assert!(status.success(), "serve exited with {status}");
}

/// The MLLP receiver is down for a while (then the HTTP one answers 503 for a while): the
/// sender keeps getting ACKs, the other destinations keep receiving, and once it is back
/// the receiver gets everything, in order.
#[test]
fn destination_outage_loses_nothing_and_blocks_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (listen1, listen_port) = listen(0, &d.join("listen1"));
    let (_sink, http_port) = http_sink(&d.join("http"), &d.join("http-down"));
    let destinations = [
        mllp_destination("lab", listen_port),
        http_destination("api", http_port),
        file_destination("archive", &d.join("archive"), ""),
    ]
    .concat();
    let path = write(
        d.join("causeway.toml"),
        &config(&d.join("data"), "127.0.0.1:0", &destinations),
    );
    let mut serve = Serve::start(&path);
    let mut conn = MllpConn::connect(serve.addr("main"), Duration::from_secs(10)).unwrap();
    let mut seq = 0u64;
    let mut max_ack = Duration::ZERO;
    let mut send = |count: u64| {
        for _ in 0..count {
            let started = Instant::now();
            let reply = conn.send(&e2e::load_message(0, seq)).unwrap();
            assert_eq!(e2e::ack_code(&reply).as_deref(), Some("AA"));
            max_ack = max_ack.max(started.elapsed());
            seq += 1;
        }
        seq
    };
    let ids = |upto: u64| vec![(0..upto).collect::<Vec<u64>>()];
    let lab = || {
        let mut got = listen_received(&d.join("listen1"));
        got.extend(listen_received(&d.join("listen2")));
        control_ids(&got)
    };
    let api = || {
        control_ids(
            &http_received(&d.join("http"))
                .into_iter()
                .map(|r| r.body)
                .collect::<Vec<_>>(),
        )
    };
    let archive = || control_ids(&file_destination_received(&d.join("archive")));
    let complete = |got: Vec<String>, upto: u64| {
        let r = check_delivery(&ids(upto), &got);
        r.missing.is_empty().then_some(r)
    };

    let sent = send(20);
    for (name, get) in [
        ("lab", &lab as &dyn Fn() -> _),
        ("api", &api),
        ("archive", &archive),
    ] {
        wait_until(WAIT, || complete(get(), sent)).unwrap_or_else(|| panic!("{name} incomplete"));
    }

    // The MLLP receiver dies. ACKs keep flowing; HTTP and files keep up meanwhile. No time
    // limit is needed to show it: the MLLP receiver stays dead until they have everything,
    // so if it held them up they would never finish (and the wait would fail).
    drop(listen1);
    let sent = send(40);
    for (name, get) in [("api", &api as &dyn Fn() -> _), ("archive", &archive)] {
        let r = wait_until(WAIT, || complete(get(), sent))
            .unwrap_or_else(|| panic!("{name} held up by the dead MLLP destination"));
        assert_ok(name, &r);
    }
    let lab_during = check_delivery(&ids(sent), &lab());
    assert_eq!(lab_during.delivered, 20, "delivered to a dead receiver?");

    // It comes back on the same port: everything arrives, in order.
    let (_listen2, port) = listen(listen_port, &d.join("listen2"));
    assert_eq!(port, listen_port);
    let r = wait_until(WAIT, || complete(lab(), sent)).expect("lab did not catch up");
    assert_ok("lab", &r);

    // Now the HTTP receiver answers 503 for a while; MLLP and files keep up.
    std::fs::write(d.join("http-down"), b"").unwrap();
    let sent = send(20);
    for (name, get) in [("lab", &lab as &dyn Fn() -> _), ("archive", &archive)] {
        let r = wait_until(WAIT, || complete(get(), sent))
            .unwrap_or_else(|| panic!("{name} held up by the failing HTTP destination"));
        assert_ok(name, &r);
    }
    assert_eq!(check_delivery(&ids(sent), &api()).delivered, 60);
    std::fs::remove_file(d.join("http-down")).unwrap();
    let r = wait_until(WAIT, || complete(api(), sent)).expect("api did not catch up");
    assert_ok("api", &r);
    // A 503 is not a delivery: the sink stored each message once.
    assert_eq!(r.duplicates, 0);
    assert!(
        max_ack < Duration::from_secs(1),
        "an ACK took {max_ack:?} during the outage"
    );
    assert!(serve.child.terminate(Duration::from_secs(30)).success());
}

/// An MLLP receiver that answers every message AE, quoting the message's PID-5 in its MSA-3
/// and ERR segment, as some systems do; returns its port. Runs until the test ends.
fn quoting_receiver() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk) else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(2).position(|w| w == [0x1C, 0x0D]) {
                        let frame: Vec<u8> = buf.drain(..end + 2).collect();
                        let msg = &frame[1..frame.len() - 2];
                        let id = e2e::field(msg, "MSH", 10).unwrap_or_default();
                        let name = e2e::field(msg, "PID", 5).unwrap_or_default();
                        let ack = format!(
                            "MSH|^~\\&|RCV|R|CAUSEWAY|T|20261207120000||ACK|A-{id}|P|2.5\r\
                             MSA|AE|{id}|no such patient {name}\r\
                             ERR|||204^Unknown key identifier^HL70357|E||||patient {name} unknown\r"
                        );
                        if stream.write_all(&e2e::frame(ack.as_bytes())).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// With `--log-format json` every log line is a JSON object, and no line holds segment
/// contents: not the patient data of a stored message, not of a frame that is not HL7 (and
/// is quarantined), and not the receiver's own words when its ACK quotes the message
/// (those are kept with the attempt in the store, never logged). Run at debug level.
#[test]
fn logs_hold_no_segment_contents() {
    const SECRET: &str = "ZEBRASECRET";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = quoting_receiver();
    let destination = format!(
        "[[channel.destination]]\nname = \"lab\"\ntype = \"mllp\"\nto = \"127.0.0.1:{port}\"\n\
         retry_on_ae = true\nretry_initial = \"20ms\"\nretry_max = \"50ms\"\n"
    );
    let path = write(
        d.join("causeway.toml"),
        &config(&d.join("data"), "127.0.0.1:0", &destination),
    );
    let child = Child::spawn_env(
        BIN,
        &[
            "serve",
            "--log-format",
            "json",
            "--config",
            path.to_str().unwrap(),
        ],
        &[("RUST_LOG", "debug")],
    );
    let ready = child.wait_for_line(true, WAIT, |l| l.starts_with("causeway: ready"));
    assert!(!ready.is_empty());
    let addr: SocketAddr = child
        .stderr_lines()
        .iter()
        .find_map(|l| {
            let rest = l.strip_prefix("causeway: channel main: MLLP on ")?;
            rest.split(' ').next()?.parse().ok()
        })
        .unwrap();
    let mut conn = MllpConn::connect(addr, Duration::from_secs(10)).unwrap();
    let msg = format!(
        "MSH|^~\\&|EHR|H|LAB|H|20261207120000||ADT^A01|LOG-1|P|2.5\r\
         PID|1||{SECRET}-ID^^^MRN||{SECRET}^PATIENT||19700101|F\r"
    );
    let reply = conn.send(msg.as_bytes()).unwrap();
    assert_eq!(e2e::ack_code(&reply).as_deref(), Some("AA"));
    // Not HL7: AR, quarantined.
    let reply = conn
        .send(format!("{SECRET} is not a message\r").as_bytes())
        .unwrap();
    assert_eq!(e2e::ack_code(&reply).as_deref(), Some("AR"));
    // An MSH with a broken header: refused.
    let reply = conn
        .send(format!("MSH|^~\\&|{SECRET}\r").as_bytes())
        .unwrap();
    assert_eq!(e2e::ack_code(&reply).as_deref(), Some("AR"));
    drop(conn);
    // The receiver's AE, retried a few times.
    child.wait_for_line(true, WAIT, |l| {
        l.contains("delivery failed; will retry") && l.contains("\"attempts\":3")
    });
    let lines = child.stderr_lines();
    let logs: Vec<&String> = lines
        .iter()
        .filter(|l| !l.starts_with("causeway: "))
        .collect();
    assert!(logs.len() >= 5, "{lines:#?}");
    for line in &logs {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not a JSON log line: {line}");
    }
    let leaks: Vec<&&String> = logs.iter().filter(|l| l.contains(SECRET)).collect();
    assert!(leaks.is_empty(), "segment contents in the logs: {leaks:#?}");
    // The failure is logged, in the gateway's words.
    assert!(
        logs.iter()
            .any(|l| l.contains("AE from the receiver") && l.contains("LOG-1")),
        "{logs:#?}"
    );
}

/// An MLLP receiver that takes connections and bytes and never answers; returns its port
/// and a flag set once it has received something.
fn silent_receiver() -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(AtomicBool::new(false));
    let flag = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    flag.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    (port, got)
}

/// A stop takes at most `shutdown.grace`, even while a delivery waits for an ACK that is
/// not coming (its `ack_timeout` is a minute); a second signal exits at once, non-zero.
#[test]
fn a_stop_keeps_to_its_grace_and_a_second_signal_cuts_it_short() {
    let (port, got) = silent_receiver();
    let dir = tempfile::tempdir().unwrap();
    let destination = format!(
        "[[channel.destination]]\nname = \"lab\"\ntype = \"mllp\"\nto = \"127.0.0.1:{port}\"\n\
         ack_timeout = \"60s\"\n"
    );
    let start = |name: &str, grace: &str| -> Child {
        let text = format!(
            "{}\n[shutdown]\ngrace = \"{grace}\"\n",
            config(&dir.path().join(name), "127.0.0.1:0", &destination)
        );
        let path = write(dir.path().join(format!("{name}.toml")), &text);
        let serve = Serve::start(&path);
        got.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut conn = MllpConn::connect(serve.addr("main"), Duration::from_secs(10)).unwrap();
        let reply = conn.send(&e2e::load_message(0, 1)).unwrap();
        assert_eq!(e2e::ack_code(&reply).as_deref(), Some("AA"));
        wait_until(WAIT, || {
            got.load(std::sync::atomic::Ordering::SeqCst).then_some(())
        })
        .expect("the delivery never reached the receiver");
        serve.child
    };

    // A graceful stop, cut at its grace while the worker still waits for the ACK.
    let mut serve = start("graceful", "2s");
    let began = Instant::now();
    let status = serve.terminate(Duration::from_secs(30));
    let took = began.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(15),
        "the stop took {took:?} with a grace of 2 s"
    );

    // A second signal while a long grace runs: out at once.
    let mut serve = start("forced", "60s");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(serve.id().to_string())
        .status();
    serve.wait_for_line(true, WAIT, |l| l.starts_with("causeway: stopping within"));
    let status = serve.terminate(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{status:?}");
    serve.wait_for_line(true, WAIT, |l| l.contains("second signal: exiting now"));
}

/// README's first quickstart command: `causeway serve` with no arguments, in a network
/// namespace of its own so that its default ports (2575, 8080) are free. It says where it
/// listens and where data goes, takes a message on 2575, writes it under
/// ./causeway-data/outbox, answers /readyz on 8080, and stops cleanly on SIGTERM.
#[test]
fn serve_without_arguments_is_the_quickstart() {
    let ns = causeway_testkit::netns::Netns::new("qs");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_str().unwrap();
    let mut serve = ns.spawn("env", &["-C", cwd, BIN, "serve"]);
    serve.wait_for_line(true, WAIT, |l| l.starts_with("causeway: ready"));
    let said = serve.stderr_lines().join("\n");
    for expected in [
        "MLLP on 127.0.0.1:2575",
        "data in ./causeway-data",
        "admin API on http://127.0.0.1:8080",
    ] {
        assert!(said.contains(expected), "{expected:?} not in:\n{said}");
    }
    let msg = corpus::dir().join("hapi__ADT_A01__1.hl7");
    let sent = ns.output(
        BIN,
        &["send", "--to", "127.0.0.1:2575", msg.to_str().unwrap()],
    );
    assert!(sent.status.success(), "{sent:?}");
    let outbox = dir.path().join("causeway-data/outbox");
    // Files in the making have a temporary name starting with a dot.
    let written = wait_until(WAIT, || {
        let mut files = file_destination_received(&outbox);
        (files.len() == 1).then(|| files.remove(0))
    })
    .expect("no file in ./causeway-data/outbox");
    // `causeway send` ends the last segment with its CR, as MLLP senders do.
    assert_eq!(
        trim_end_cr(&written),
        trim_end_cr(&std::fs::read(&msg).unwrap()),
        "the message as sent"
    );
    let ready = ns.output(
        python().to_str().unwrap(),
        &[
            "-c",
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/readyz').status)",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&ready.stdout).trim(),
        "200",
        "{ready:?}"
    );
    assert!(serve.terminate(Duration::from_secs(30)).success());
}
