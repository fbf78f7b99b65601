//! Whole runs against in-process TLS receivers with certificates made by rcgen: the
//! certificate findings (expired, untrusted, wrong name, client certificate required, expiring,
//! unverified). The transport findings are tested through the binary in
//! `crates/cli/tests/it/doctor.rs`, partly inside network namespaces.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use causeway_message::Message;
use causeway_message::ack::{Ack, Outcome};
use causeway_mllp::frame::{Decoded, Frame, FrameDecoder, FramingOptions, encode_message};
use causeway_mllp::tls::ClientTlsSettings;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Code, DoctorSettings, Report, Verdict, run};

/// A CA, its PEM file, and a directory for what it issues.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    dir: tempfile::TempDir,
    pem: PathBuf,
    der: CertificateDer<'static>,
}

/// An issued certificate: DER for the server, PEM files for the doctor.
struct Leaf {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    cert_pem: PathBuf,
    key_pem: PathBuf,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            dir,
            pem,
            der: cert.der().clone(),
        }
    }

    fn issue(
        &self,
        file: &str,
        names: &[&str],
        validity: Option<(SystemTime, SystemTime)>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        if let Some((from, to)) = validity {
            params.not_before = from.into();
            params.not_after = to.into();
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_pem = self.dir.path().join(format!("{file}.crt"));
        let key_pem = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_pem, cert.pem()).unwrap();
        std::fs::write(&key_pem, key.serialize_pem()).unwrap();
        Leaf {
            der: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            cert_pem,
            key_pem,
        }
    }

    fn server(&self, file: &str, validity: Option<(SystemTime, SystemTime)>) -> Leaf {
        self.issue(
            file,
            &["localhost", "127.0.0.1"],
            validity,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }
}

const DAY: Duration = Duration::from_secs(86_400);

/// A TLS MLLP receiver that answers every message with AA; with `client_ca`, it requires
/// client certificates signed by that CA.
async fn tls_receiver(leaf: &Leaf, client_ca: Option<&Ca>) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(vec![leaf.der.clone()], leaf.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut decoder = FrameDecoder::new(FramingOptions::default());
                let mut buf = BytesMut::new();
                loop {
                    while let Some(item) = decoder.decode(&mut buf) {
                        if let Decoded::Frame(Frame::Message(m)) = item {
                            let msg = Message::parse(&m).unwrap();
                            let ack = Ack::for_message(&msg, Outcome::Accept)
                                .control_id("SRV1")
                                .timestamp("20260101000000")
                                .encode();
                            let mut out = BytesMut::new();
                            encode_message(&ack, &FramingOptions::default(), &mut out).unwrap();
                            if stream.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

fn settings(tls: ClientTlsSettings) -> DoctorSettings {
    DoctorSettings {
        timeout: Duration::from_secs(3),
        ladder: vec![1024],
        latency_samples: 2,
        tls: Some(tls),
        ..DoctorSettings::default()
    }
}

fn assert_code(report: &Report, check: &str, code: Code) {
    let found = report.check(check).map(|c| c.code);
    assert_eq!(
        found,
        Some(code),
        "{}",
        serde_json::to_string_pretty(report).unwrap()
    );
}

#[tokio::test]
async fn healthy_tls_receiver_passes() {
    let ca = Ca::new("Test CA");
    let addr = tls_receiver(&ca.server("srv", None), None).await;
    let report = run(
        &addr.to_string(),
        settings(ClientTlsSettings::with_ca(&ca.pem)),
    )
    .await;
    assert_eq!(report.verdict, Verdict::Pass, "{report:#?}");
    let tls = report.check("tls").unwrap();
    assert!(tls.summary.contains("TLS 1.3"), "{}", tls.summary);
    assert_eq!(tls.evidence["client_cert_requested"], false);
    for step in [
        "dns", "route", "tcp", "proto", "tls", "mllp", "size", "latency",
    ] {
        assert_code(&report, step, Code::Ok);
    }
}

#[tokio::test]
async fn expired_certificate_is_named() {
    let ca = Ca::new("Test CA");
    let past = SystemTime::now() - 400 * DAY;
    let leaf = ca.server("old", Some((past, past + 365 * DAY)));
    let addr = tls_receiver(&leaf, None).await;
    let report = run(
        &addr.to_string(),
        settings(ClientTlsSettings::with_ca(&ca.pem)),
    )
    .await;
    assert_code(&report, "tls", Code::TlsExpired);
    assert_eq!(report.code, Code::TlsExpired);
    assert_code(&report, "mllp", Code::Skipped);
    // The chain is shown even though the handshake would have failed.
    let chain = &report.check("tls").unwrap().evidence["chain"];
    assert!(chain[0]["days_left"].as_i64().unwrap() < 0, "{chain}");
}

#[tokio::test]
async fn expiring_certificate_is_a_warning() {
    let ca = Ca::new("Test CA");
    let now = SystemTime::now();
    let leaf = ca.server("soon", Some((now - DAY, now + 10 * DAY)));
    let addr = tls_receiver(&leaf, None).await;
    let report = run(
        &addr.to_string(),
        settings(ClientTlsSettings::with_ca(&ca.pem)),
    )
    .await;
    assert_code(&report, "tls", Code::TlsExpiring);
    assert_eq!(report.verdict, Verdict::Warn);
    // A warning does not stop the run.
    assert_code(&report, "mllp", Code::Ok);
}

#[tokio::test]
async fn untrusted_issuer_is_named() {
    let ca = Ca::new("Real CA");
    let other = Ca::new("Other CA");
    let addr = tls_receiver(&other.server("srv", None), None).await;
    let report = run(
        &addr.to_string(),
        settings(ClientTlsSettings::with_ca(&ca.pem)),
    )
    .await;
    assert_code(&report, "tls", Code::TlsUntrusted);
    assert!(report.check("tls").unwrap().summary.contains("Other CA"));
}

#[tokio::test]
async fn wrong_hostname_is_named() {
    let ca = Ca::new("Test CA");
    let addr = tls_receiver(&ca.server("srv", None), None).await;
    let tls = ClientTlsSettings::with_ca(&ca.pem).server_name("hl7.wrong.example");
    let report = run(&addr.to_string(), settings(tls)).await;
    assert_code(&report, "tls", Code::TlsHostname);
    assert!(report.check("tls").unwrap().summary.contains("localhost"));
}

#[tokio::test]
async fn missing_client_certificate_is_named() {
    let ca = Ca::new("Test CA");
    let clients = Ca::new("Client CA");
    let addr = tls_receiver(&ca.server("srv", None), Some(&clients)).await;
    let report = run(
        &addr.to_string(),
        settings(ClientTlsSettings::with_ca(&ca.pem)),
    )
    .await;
    assert_code(&report, "tls", Code::TlsClientCertRequired);
    assert!(
        report
            .check("tls")
            .unwrap()
            .hint
            .as_deref()
            .unwrap()
            .contains("Client CA"),
        "the hint names the CAs the server accepts"
    );

    let me = clients.issue("me", &["ehr-1"], None, ExtendedKeyUsagePurpose::ClientAuth);
    let tls = ClientTlsSettings::with_ca(&ca.pem).client_cert(&me.cert_pem, &me.key_pem);
    let report = run(&addr.to_string(), settings(tls)).await;
    assert_eq!(report.verdict, Verdict::Pass, "{report:#?}");
    assert_eq!(
        report.check("tls").unwrap().evidence["client_cert_requested"],
        true
    );

    let stranger = ca.issue("x", &["x"], None, ExtendedKeyUsagePurpose::ClientAuth);
    let tls =
        ClientTlsSettings::with_ca(&ca.pem).client_cert(&stranger.cert_pem, &stranger.key_pem);
    let report = run(&addr.to_string(), settings(tls)).await;
    assert_code(&report, "tls", Code::TlsClientCertRejected);
}

#[tokio::test]
async fn tls_without_trust_anchor_is_unverified() {
    let ca = Ca::new("Test CA");
    let addr = tls_receiver(&ca.server("srv", None), None).await;
    let report = run(&addr.to_string(), settings(ClientTlsSettings::default())).await;
    assert_code(&report, "tls", Code::TlsUnverified);
    assert_eq!(report.verdict, Verdict::Warn);
    assert_code(&report, "latency", Code::Ok);
}

#[tokio::test]
async fn tls_server_probed_in_plain_shows_its_certificate() {
    let ca = Ca::new("Test CA");
    let addr = tls_receiver(&ca.server("srv", None), None).await;
    let mut plain = settings(ClientTlsSettings::default());
    plain.tls = None;
    let report = run(&addr.to_string(), plain).await;
    assert_code(&report, "proto", Code::ProtoTlsExpected);
    let proto = report.check("proto").unwrap();
    assert!(proto.summary.contains("Test CA"), "{}", proto.summary);
}

#[tokio::test]
async fn bad_settings_are_config_failures() {
    let mut s = settings(ClientTlsSettings::with_ca("/nonexistent/ca.pem"));
    let report = run("127.0.0.1:9", s.clone()).await;
    assert_code(&report, "config", Code::ConfigInvalid);
    s.tls = None;
    s.message = Some(b"not hl7".to_vec());
    let report = run("127.0.0.1:9", s.clone()).await;
    assert_code(&report, "config", Code::ConfigInvalid);
    s.message = None;
    let report = run("no-port", s).await;
    assert_code(&report, "config", Code::ConfigInvalid);
}
