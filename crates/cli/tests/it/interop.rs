//! Interop with peers nobody here wrote: python-hl7's asyncio MLLP server and client, its
//! `mllp_send` tool, Python's `ssl` module for TLS and mTLS, and `openssl s_client`.

use std::path::Path;
use std::process::{Command, Output};

use causeway_testkit::corpus;
use causeway_testkit::pki::Pki;
use causeway_testkit::process::{Child, python, python_peer};

use crate::support::{WAIT, causeway_listen};

fn causeway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(args)
        .output()
        .expect("run causeway")
}

/// Corpus files python-hl7 reads as UTF-8 text (not the ISO-8859-1 one, not the batches).
fn corpus_sample() -> Vec<String> {
    [
        "hapi__ADT_A01__1.hl7",
        "fhirconv__ORU_R01__2.hl7",
        "ipf__ADT_A01__1.hl7",
        "medplum__QBP_Q11__1.hl7",
        "ipf__MDM_T02__1.hl7",
        "gcpmllp__ADT_A01__1.hl7",
        "pythonhl7__ADT_A01__1.hl7",
        "dotnethl7__ORM_O01__1.hl7",
    ]
    .iter()
    .map(|n| corpus::dir().join(n).display().to_string())
    .collect()
}

fn control_id(path: &str) -> String {
    let bytes = std::fs::read(path).unwrap();
    let msg = causeway_message::Message::parse(&bytes).unwrap();
    String::from_utf8_lossy(msg.control_id().unwrap()).into_owned()
}

/// Starts the python-hl7 server with `extra` flags and returns it with its port.
fn python_server(extra: &[&str]) -> (Child, String) {
    let script = python_peer("hl7_server.py");
    let mut args = vec![script.to_str().unwrap()];
    args.extend_from_slice(extra);
    let child = Child::spawn(python(), &args);
    let ready = child.wait_for_line(false, WAIT, |l| l.starts_with("READY "));
    let port = ready.trim_start_matches("READY ").to_owned();
    (child, port)
}

#[test]
fn python_hl7_server_receives_from_causeway_send() {
    let (server, port) = python_server(&[]);
    let files = corpus_sample();
    let mut args = vec![
        "send".to_owned(),
        "--to".to_owned(),
        format!("127.0.0.1:{port}"),
    ];
    args.extend(files.iter().cloned());
    let out = causeway(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "send failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{} messages", files.len())),
        "{stdout}"
    );
    // python-hl7 saw every message, in order.
    let ids: Vec<String> = files.iter().map(|f| control_id(f)).collect();
    server.wait_for_line(false, WAIT, |l| {
        l.starts_with(&format!("RECEIVED {}", ids.last().unwrap()))
    });
    let received: Vec<String> = server
        .stdout_lines()
        .iter()
        .filter_map(|l| l.strip_prefix("RECEIVED "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(received, ids);
}

#[test]
fn causeway_send_reports_python_hl7_nak_and_exits_non_zero() {
    let (_server, port) = python_server(&["--ack", "AE"]);
    let file = &corpus_sample()[0];
    let out = causeway(&["send", "--json", "--to", &format!("127.0.0.1:{port}"), file]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["messages"][0]["ack"], "AE");
    assert_eq!(report["summary"]["all_accepted"], false);
}

#[test]
fn python_hl7_client_sends_to_causeway_listen() {
    let inbox = tempfile::tempdir().unwrap();
    let (listener, port) = causeway_listen(&["--out", inbox.path().to_str().unwrap()]);
    // python-hl7 wants CR-separated text; the client script converts LF files.
    let files = corpus_sample();
    let script = python_peer("hl7_client.py");
    let mut args = vec![script.to_str().unwrap().to_owned(), "--port".into(), port];
    args.extend(files.iter().cloned());
    let out = Command::new(python()).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acks: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).unwrap();
            let msg = causeway_message::Message::parse(&bytes).unwrap();
            let code = match causeway_message::ack::AckMode::of(&msg) {
                causeway_message::ack::AckMode::Original => "AA",
                causeway_message::ack::AckMode::Enhanced { .. } => "CA",
            };
            format!("ACK {code} {}", control_id(f))
        })
        .collect();
    assert_eq!(acks, want);
    listener.wait_for_line(false, WAIT, |l| {
        l.starts_with(&format!("#{} ", files.len()))
    });
    let stored = std::fs::read_dir(inbox.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "hl7")
        })
        .count();
    assert_eq!(stored, files.len());
}

#[test]
fn python_hl7_mllp_send_to_causeway_listen() {
    let (listener, port) = causeway_listen(&[]);
    let mllp_send = python().with_file_name("mllp_send");
    // --loose: the file holds a plain (unframed) message with LF endings.
    let file = corpus::dir().join("hapi__ADT_A03__1.hl7");
    let out = Command::new(&mllp_send)
        .args([
            "--port",
            &port,
            "--loose",
            "--file",
            file.to_str().unwrap(),
            "127.0.0.1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.contains("MSA|AA|"), "mllp_send printed: {reply}");
    listener.wait_for_line(false, WAIT, |l| l.starts_with("#1 ") && l.ends_with(": AA"));
}

#[test]
fn causeway_send_over_mtls_to_python_ssl_server() {
    let pki = Pki::new("interop");
    let server_cert = pki.server("server");
    let client = pki.client("client", "ehr-1");
    let (_server, port) = python_server(&[
        "--tls-cert",
        server_cert.cert.to_str().unwrap(),
        "--tls-key",
        server_cert.key.to_str().unwrap(),
        "--client-ca",
        pki.ca.to_str().unwrap(),
    ]);
    let file = &corpus_sample()[0];
    let to = format!("localhost:{port}");
    let tls = |cert: &Path, key: &Path, ca: &Path| -> Output {
        causeway(&[
            "send",
            "--to",
            &to,
            "--connect-timeout",
            "5s",
            "--timeout",
            "5s",
            "--ca",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            file,
        ])
    };
    let out = tls(&client.cert, &client.key, &pki.ca);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A client certificate from another CA is refused by Python's ssl.
    let other = Pki::new("other");
    let stranger = other.client("stranger", "ehr-1");
    let out = tls(&stranger.cert, &stranger.key, &pki.ca);
    assert!(!out.status.success());
    // A server we do not trust is refused by us.
    let out = tls(&client.cert, &client.key, &other.ca);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("TLS handshake"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn python_ssl_client_to_causeway_listen_with_mtls_allowlist() {
    let pki = Pki::new("listen");
    let server_cert = pki.server("server");
    let good = pki.client("good", "ehr-1");
    let bad = pki.client("bad", "intruder");
    let (listener, port) = causeway_listen(&[
        "--tls-cert",
        server_cert.cert.to_str().unwrap(),
        "--tls-key",
        server_cert.key.to_str().unwrap(),
        "--client-ca",
        pki.ca.to_str().unwrap(),
        "--allow-client",
        "cn:ehr-1",
    ]);
    let file = &corpus_sample()[0];
    let script = python_peer("hl7_client.py");
    let run = |cert: &Path, key: &Path| {
        Command::new(python())
            .args([
                script.to_str().unwrap(),
                "--port",
                &port,
                "--tls-ca",
                pki.ca.to_str().unwrap(),
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
                file,
            ])
            .output()
            .unwrap()
    };
    let out = run(&good.cert, &good.key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ACK AA "));
    listener.wait_for_line(false, WAIT, |l| l.contains("(ehr-1)"));
    // Same CA, but not on the allowlist: refused, and the log names who was refused.
    let out = run(&bad.cert, &bad.key);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    listener.wait_for_line(true, WAIT, |l| l.contains("intruder"));
}

#[test]
fn openssl_s_client_sees_tls12_or_13_only() {
    let pki = Pki::new("versions");
    let server_cert = pki.server("server");
    let (_listener, port) = causeway_listen(&[
        "--tls-cert",
        server_cert.cert.to_str().unwrap(),
        "--tls-key",
        server_cert.key.to_str().unwrap(),
    ]);
    let connect = format!("127.0.0.1:{port}");
    let s_client = |version: &str| {
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &connect,
                version,
                "-CAfile",
                pki.ca.to_str().unwrap(),
                "-verify_return_error",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl")
    };
    for (flag, name) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let out = s_client(flag);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{flag}: {text}");
        assert!(
            text.contains(&format!("New, {name}, Cipher is ")),
            "{flag}: {text}"
        );
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "{flag}: {text}"
        );
    }
    let out = s_client("-tls1_1");
    assert!(!out.status.success(), "TLS 1.1 must be refused");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Cipher is (NONE)"));
}

/// `serve` over TLS at both ends, with peers nobody here wrote, its own keys encrypted
/// (passwords from the environment and inline): python-hl7's client sends
/// through Python's `ssl` with a client certificate to a source that requires one and
/// allows only `cn:ehr-1`; the message is stored with that identity and delivered over
/// mutual TLS to python-hl7's server (Python's `ssl`, client certificates required). A
/// client the allow-list does not name, and one without a certificate, get nothing stored.
#[test]
fn serve_over_mtls_from_python_hl7_to_python_hl7() {
    let pki = Pki::new("gw");
    let source = pki.server("source");
    let receiver = pki.server("receiver");
    let ehr = pki.client("ehr", "ehr-1");
    let stranger = pki.client("stranger", "ehr-2");
    let outbound = pki.client("outbound", "causeway-out");
    let (server, port) = python_server(&[
        "--tls-cert",
        receiver.cert.to_str().unwrap(),
        "--tls-key",
        receiver.key.to_str().unwrap(),
        "--client-ca",
        pki.ca.to_str().unwrap(),
    ]);
    let dir = tempfile::tempdir().unwrap();
    // Both of the gateway's keys are password-protected, as `openssl` writes them: the
    // source's password comes from the environment, the destination's is written inline.
    let encrypt = |key: &Path, password: &str| -> std::path::PathBuf {
        let out = dir.path().join(format!(
            "{}.enc.key",
            key.file_stem().unwrap().to_string_lossy()
        ));
        let status = Command::new("openssl")
            .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in"])
            .arg(key)
            .arg("-out")
            .arg(&out)
            .args(["-passout", &format!("pass:{password}")])
            .status()
            .unwrap();
        assert!(status.success());
        out
    };
    let source_key = encrypt(&source.key, "source-pass");
    let outbound_key = encrypt(&outbound.key, "outbound-pass");
    let config = format!(
        r#"[store]
path = {data:?}

[admin]
bind = "127.0.0.1:0"

[[channel]]
name = "secure"

[channel.source]
bind = "127.0.0.1:0"

[channel.source.tls]
cert = {scert:?}
key = {skey:?}
key_password = "${{CAUSEWAY_TEST_SOURCE_KEY_PASSWORD}}"
client_ca = {ca:?}
allow_clients = ["cn:ehr-1"]

[[channel.destination]]
name = "lab"
type = "mllp"
to = "localhost:{port}"
retry_initial = "50ms"
retry_max = "500ms"

[channel.destination.tls]
ca = {ca:?}
cert = {ocert:?}
key = {okey:?}
key_password = "outbound-pass"
"#,
        data = dir.path().join("data"),
        scert = source.cert,
        skey = source_key,
        ca = pki.ca,
        ocert = outbound.cert,
        okey = outbound_key,
    );
    let path = dir.path().join("causeway.toml");
    std::fs::write(&path, config).unwrap();
    const PASSWORD_ENV: (&str, &str) = ("CAUSEWAY_TEST_SOURCE_KEY_PASSWORD", "source-pass");
    // Without the password in the environment, the check names the variable.
    let check = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(["config", "check", path.to_str().unwrap()])
        .env_remove(PASSWORD_ENV.0)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(78), "{check:?}");
    assert!(String::from_utf8_lossy(&check.stderr).contains(PASSWORD_ENV.0));
    // With a wrong one, the check fails on the key, before anything listens.
    let check = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(["config", "check", path.to_str().unwrap()])
        .env(PASSWORD_ENV.0, "wrong")
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(78), "{check:?}");
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("cannot decrypt the private key"),
        "{check:?}"
    );
    let check = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(["config", "check", path.to_str().unwrap()])
        .env(PASSWORD_ENV.0, PASSWORD_ENV.1)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let serve = Child::spawn_env(
        env!("CARGO_BIN_EXE_causeway"),
        &["serve", "--config", path.to_str().unwrap()],
        &[PASSWORD_ENV],
    );
    serve.wait_for_line(true, WAIT, |l| l.starts_with("causeway: ready"));
    let lines = serve.stderr_lines();
    let after = |prefix: &str| -> String {
        lines
            .iter()
            .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest.to_owned()))
            .unwrap_or_else(|| panic!("no {prefix:?} in {lines:#?}"))
    };
    let mllp_port = after("MLLP on 127.0.0.1:")
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let admin: std::net::SocketAddr = after("admin API on http://")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let file = corpus_sample()[0].clone();
    let send = |cert: Option<&causeway_testkit::pki::Issued>| -> Output {
        let script = python_peer("hl7_client.py");
        let mut args = vec![
            script.display().to_string(),
            "--port".into(),
            mllp_port.clone(),
            "--tls-ca".into(),
            pki.ca.display().to_string(),
        ];
        if let Some(c) = cert {
            args.extend([
                "--tls-cert".into(),
                c.cert.display().to_string(),
                "--tls-key".into(),
                c.key.display().to_string(),
            ]);
        }
        args.push(file.clone());
        Command::new(python()).args(&args).output().unwrap()
    };
    let out = send(Some(&ehr));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = control_id(&file);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ACK AA {id}")
    );
    server.wait_for_line(false, WAIT, |l| l.starts_with(&format!("RECEIVED {id} ")));
    // Refused: a certificate the allow-list does not name, and none at all.
    assert!(!send(Some(&stranger)).status.success());
    assert!(!send(None).status.success());

    let (status, body) = crate::support::http_get(admin, "/api/messages/1").unwrap();
    assert_eq!(status, 200, "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["tls_identity"], "ehr-1", "{m}");
    let (status, body) = crate::support::http_get(admin, "/api/messages/2").unwrap();
    assert_eq!(status, 404, "only one message is stored: {body}");
    let deliveries = m["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1);
}
