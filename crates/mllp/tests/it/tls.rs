//! TLS: round trip, mTLS allowlist, pinning, reload. Certificates are made
//! at test time with rcgen (ring backend).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use causeway_mllp::client::{AckStatus, Client, ClientError, ClientSettings};
use causeway_mllp::server::ServerSettings;
use causeway_mllp::tls::{
    ClientTls, ClientTlsSettings, Fingerprint, IdentityRule, ServerTls, ServerTlsSettings,
};
use causeway_testkit::pki::{Issued, Pki};
use rcgen::SanType;

use crate::support::{Recorder, TestServer, adt};

fn client_settings(tls: ClientTlsSettings) -> ClientSettings {
    let mut settings = ClientSettings::default();
    settings.connect_timeout = Duration::from_secs(5);
    settings.ack_timeout = Duration::from_secs(5);
    settings.connect_attempts = 1;
    settings.tls = Some(ClientTls::load(&tls).expect("client TLS config"));
    settings
}

async fn tls_server(recorder: &Recorder, tls: ServerTlsSettings) -> (TestServer, Arc<ServerTls>) {
    let tls = Arc::new(ServerTls::load(tls).expect("server TLS config"));
    let mut settings = ServerSettings::default();
    settings.tls = Some(tls.clone());
    (TestServer::start(recorder.handler(), settings).await, tls)
}

async fn send_with(
    server: &TestServer,
    tls: ClientTlsSettings,
    id: &str,
) -> Result<AckStatus, ClientError> {
    let mut client = Client::new(server.target(), client_settings(tls));
    client.send(&adt(id)).await.map(|d| d.status)
}

#[tokio::test]
async fn tls_round_trip() {
    let pki = Pki::new("ca");
    let cert = pki.server("server");
    let recorder = Recorder::default();
    let (server, _) = tls_server(&recorder, ServerTlsSettings::new(&cert.cert, &cert.key)).await;
    let trust = ClientTlsSettings::with_ca(&pki.ca).server_name("localhost");
    let mut client = Client::new(server.target(), client_settings(trust));
    assert_eq!(
        client.send(&adt("T1")).await.expect("ack").status,
        AckStatus::Accepted
    );
    assert_eq!(
        client.send(&adt("T2")).await.expect("ack").status,
        AckStatus::Accepted
    );
    assert_eq!(recorder.distinct_connections(), 1);
    let other = Pki::new("other-ca");
    let untrusted = ClientTlsSettings::with_ca(&other.ca).server_name("localhost");
    assert!(matches!(
        send_with(&server, untrusted, "T3").await,
        Err(ClientError::Handshake { .. })
    ));
    let wrong_name = ClientTlsSettings::with_ca(&pki.ca).server_name("elsewhere.example");
    assert!(matches!(
        send_with(&server, wrong_name, "T4").await,
        Err(ClientError::Handshake { .. })
    ));
    server.stop().await;
}

#[tokio::test]
async fn mtls_admits_allowed_identities_and_refuses_others() {
    let pki = Pki::new("ca");
    let cert = pki.server("server");
    let lab = pki.client_with_sans("lab", "lab-a", vec![]);
    let by_dns = pki.client_with_sans(
        "ris",
        "ris",
        vec![SanType::DnsName(
            "ris.hospital.example".try_into().expect("dns"),
        )],
    );
    let intruder = pki.client_with_sans("intruder", "intruder", vec![]);
    let stranger_ca = Pki::new("stranger-ca");
    let stranger = stranger_ca.client("stranger", "lab-a");

    let recorder = Recorder::default();
    let settings = ServerTlsSettings::new(&cert.cert, &cert.key)
        .with_client_ca(&pki.ca)
        .with_allowed_clients(vec![
            "cn:lab-a".parse::<IdentityRule>().expect("rule"),
            "dns:ris.hospital.example".parse().expect("rule"),
        ]);
    let (server, _) = tls_server(&recorder, settings).await;
    let trust = || ClientTlsSettings::with_ca(&pki.ca).server_name("localhost");

    assert_eq!(
        send_with(&server, trust().client_cert(&lab.cert, &lab.key), "M1")
            .await
            .expect("lab-a admitted"),
        AckStatus::Accepted
    );
    send_with(
        &server,
        trust().client_cert(&by_dns.cert, &by_dns.key),
        "M2",
    )
    .await
    .expect("SAN DNS admitted");
    let seen: Vec<_> = recorder
        .connections
        .lock()
        .expect("lock")
        .iter()
        .map(|c| c.peer_identity.as_ref().map(|i| i.common_name.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![Some(Some("lab-a".to_owned())), Some(Some("ris".to_owned()))]
    );

    // Refused in the handshake: with TLS 1.3 the client may only learn it on
    // its first read, so any error will do, as long as nothing was handled.
    assert!(
        send_with(
            &server,
            trust().client_cert(&intruder.cert, &intruder.key),
            "M3"
        )
        .await
        .is_err()
    );
    assert!(
        send_with(
            &server,
            trust().client_cert(&stranger.cert, &stranger.key),
            "M4"
        )
        .await
        .is_err()
    );
    assert!(
        send_with(&server, trust(), "M5").await.is_err(),
        "no client certificate"
    );
    assert_eq!(recorder.count(), 2);
    server.stop().await;
}

#[tokio::test]
async fn pinning_accepts_the_pinned_certificate_only() {
    let pki = Pki::new("ca");
    let cert = pki.server("server");
    let other = pki.server("other");
    let recorder = Recorder::default();
    let (server, _) = tls_server(&recorder, ServerTlsSettings::new(&cert.cert, &cert.key)).await;

    // Pin alone: no CA, and the name is not checked.
    let pin_only =
        ClientTlsSettings::with_pin(Fingerprint::of(&cert.der)).server_name("anything.example");
    assert_eq!(
        send_with(&server, pin_only, "P1").await.expect("pinned"),
        AckStatus::Accepted
    );
    // Pin plus CA.
    let pin_and_ca = ClientTlsSettings::with_ca(&pki.ca)
        .server_name("localhost")
        .pin(Fingerprint::of(&cert.der));
    send_with(&server, pin_and_ca, "P2")
        .await
        .expect("pinned and chained");
    // Wrong pin, with or without CA.
    let wrong = ClientTlsSettings::with_pin(Fingerprint::of(&other.der));
    assert!(matches!(
        send_with(&server, wrong, "P3").await,
        Err(ClientError::Handshake { .. })
    ));
    let wrong_with_ca = ClientTlsSettings::with_ca(&pki.ca)
        .server_name("localhost")
        .pin(Fingerprint::of(&other.der));
    assert!(matches!(
        send_with(&server, wrong_with_ca, "P4").await,
        Err(ClientError::Handshake { .. })
    ));
    // Right pin, but the chain does not verify against this CA.
    let stranger = Pki::new("stranger");
    let pin_bad_ca = ClientTlsSettings::with_ca(&stranger.ca)
        .server_name("localhost")
        .pin(Fingerprint::of(&cert.der));
    assert!(matches!(
        send_with(&server, pin_bad_ca, "P5").await,
        Err(ClientError::Handshake { .. })
    ));
    assert_eq!(recorder.count(), 2);
    server.stop().await;
}

fn replace(from: &Issued, to_cert: &Path, to_key: &Path) {
    // Write to a temp name and rename, as cert tooling does, so a poll never
    // sees half a file.
    for (src, dst) in [(&from.cert, to_cert), (&from.key, to_key)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).expect("copy");
        std::fs::rename(&tmp, dst).expect("rename");
    }
}

#[tokio::test]
async fn certificate_reload_on_demand_and_by_polling() {
    let pki = Pki::new("ca");
    let first = pki.server("first");
    let second = pki.server("second");
    let third = pki.server("third");
    let live_cert = pki.dir().join("live.crt");
    let live_key = pki.dir().join("live.key");
    replace(&first, &live_cert, &live_key);

    let recorder = Recorder::default();
    let (server, tls) = tls_server(&recorder, ServerTlsSettings::new(&live_cert, &live_key)).await;
    send_with(
        &server,
        ClientTlsSettings::with_pin(Fingerprint::of(&first.der)),
        "R1",
    )
    .await
    .expect("first cert served");

    // Explicit reload (what SIGHUP does).
    replace(&second, &live_cert, &live_key);
    tls.reload().expect("reload");
    send_with(
        &server,
        ClientTlsSettings::with_pin(Fingerprint::of(&second.der)),
        "R2",
    )
    .await
    .expect("second cert served");
    assert!(
        send_with(
            &server,
            ClientTlsSettings::with_pin(Fingerprint::of(&first.der)),
            "R3"
        )
        .await
        .is_err()
    );

    // A broken file: the reload fails and the old configuration stays.
    std::fs::write(&live_key, "not a key").expect("write");
    assert!(tls.reload().is_err());
    send_with(
        &server,
        ClientTlsSettings::with_pin(Fingerprint::of(&second.der)),
        "R4",
    )
    .await
    .expect("old cert still served");

    // Polling picks up a change on its own.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(tls.clone().watch(Duration::from_millis(20), async {
        let _ = stop_rx.await;
    }));
    replace(&third, &live_cert, &live_key);
    // Make sure the modification time moves even on coarse-grained filesystems.
    let later = SystemTime::now() + Duration::from_secs(5);
    for path in [&live_cert, &live_key] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open")
            .set_modified(later)
            .expect("mtime");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if send_with(
            &server,
            ClientTlsSettings::with_pin(Fingerprint::of(&third.der)),
            "R5",
        )
        .await
        .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "polling never reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    watcher.await.expect("watcher");
    server.stop().await;
}

#[tokio::test]
async fn allowlist_without_client_ca_is_a_configuration_error() {
    let pki = Pki::new("ca");
    let cert = pki.server("server");
    let settings = ServerTlsSettings::new(&cert.cert, &cert.key)
        .with_allowed_clients(vec!["cn:lab-a".parse().expect("rule")]);
    assert!(ServerTls::load(settings).is_err());
    let missing = ServerTlsSettings::new(pki.dir().join("nope.crt"), &cert.key);
    assert!(ServerTls::load(missing).is_err());
}

/// Encrypts `key` (PEM) as PKCS#8 with `openssl pkcs8 -topk8`, the way an operator would;
/// `extra` picks the scheme. Returns the new file.
fn openssl_encrypt(key: &Path, password: &str, extra: &[&str]) -> std::path::PathBuf {
    let out = key.with_extension(format!("enc{}.key", extra.len()));
    let status = std::process::Command::new("openssl")
        .args(["pkcs8", "-topk8", "-in"])
        .arg(key)
        .arg("-out")
        .arg(&out)
        .args(["-passout", &format!("pass:{password}")])
        .args(extra)
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl pkcs8 failed");
    out
}

/// A password-protected key (PKCS#8, as `openssl` writes it: PBKDF2 + AES-256-CBC, or
/// scrypt) serves and presents certificates once its password is given; without the
/// password, or with a wrong one, loading fails with a message that says so.
#[tokio::test]
async fn encrypted_private_keys_with_their_password() {
    use causeway_mllp::tls::{KeyPassword, TlsError, read_key, read_key_with_password};
    let pki = Pki::new("ca");
    let cert = pki.server("server");
    let client = pki.client("client", "ehr-1");
    let pbkdf2 = openssl_encrypt(&cert.key, "s3cret pass", &["-v2", "aes-256-cbc"]);
    let scrypt = openssl_encrypt(&client.key, "other", &["-scrypt"]);
    let pem = std::fs::read_to_string(&pbkdf2).unwrap();
    assert!(pem.contains("BEGIN ENCRYPTED PRIVATE KEY"), "{pem}");

    let plain = read_key(&cert.key).unwrap();
    let right = KeyPassword::new("s3cret pass");
    let decrypted = read_key_with_password(&pbkdf2, Some(&right)).unwrap();
    assert_eq!(decrypted.secret_der(), plain.secret_der());
    assert!(matches!(
        read_key(&pbkdf2),
        Err(TlsError::KeyEncrypted { .. })
    ));
    let wrong = read_key_with_password(&pbkdf2, Some(&KeyPassword::new("nope")));
    match wrong {
        Err(e @ TlsError::KeyDecrypt { .. }) => {
            assert!(e.to_string().contains("password"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(format!("{right:?}"), "KeyPassword(***)", "never printed");

    // A TLS round trip with both keys encrypted: the server's, and the client's for mTLS.
    let recorder = Recorder::default();
    let server_tls = ServerTlsSettings::new(&cert.cert, &pbkdf2)
        .with_client_ca(&pki.ca)
        .with_key_password(right);
    let (server, _) = tls_server(&recorder, server_tls).await;
    let mut trust = ClientTlsSettings::with_ca(&pki.ca)
        .server_name("localhost")
        .client_cert(&client.cert, &scrypt);
    trust.client_key_password = Some(KeyPassword::new("other"));
    assert_eq!(
        send_with(&server, trust, "E1").await.unwrap(),
        AckStatus::Accepted
    );
    server.stop().await;
}

/// A peer that speaks TLS 1.2 only, built straight on rustls: a client config, or a server
/// that completes one handshake and then says nothing.
mod tls12_peer {
    use std::sync::Arc;

    use causeway_testkit::pki::{Issued, Pki};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Completes the handshake of `tls` over a connection to `addr`.
    pub async fn handshake(addr: std::net::SocketAddr, pki: &Pki) -> std::io::Result<()> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.map(|_| ())
    }

    /// A TLS 1.2-only server on a free port; each connection is handshaken and held.
    pub async fn server(cert: &Issued) -> std::net::SocketAddr {
        let certs: Vec<_> = CertificateDer::pem_file_iter(&cert.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&cert.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                        drop(stream);
                    }
                });
            }
        });
        addr
    }
}

/// `min_version = 1.3` on either side: a TLS 1.2-only peer is refused at the handshake,
/// where the default (1.2 and 1.3) accepts it.
#[tokio::test]
async fn a_minimum_tls_version_refuses_older_peers() {
    use causeway_mllp::tls::MinTlsVersion;
    let pki = Pki::new("ca");
    let cert = pki.server("server");

    // Our listener, against a TLS 1.2-only client.
    let recorder = Recorder::default();
    let (default_server, _) =
        tls_server(&recorder, ServerTlsSettings::new(&cert.cert, &cert.key)).await;
    tls12_peer::handshake(default_server.addr, &pki)
        .await
        .expect("1.2 is accepted by default");
    let strict =
        ServerTlsSettings::new(&cert.cert, &cert.key).with_min_version(MinTlsVersion::Tls13);
    let (strict_server, _) = tls_server(&recorder, strict).await;
    assert!(
        tls12_peer::handshake(strict_server.addr, &pki)
            .await
            .is_err(),
        "a 1.3-only listener refuses a 1.2 client"
    );
    // Our own client still gets through to it (1.3).
    let trust = ClientTlsSettings::with_ca(&pki.ca).server_name("localhost");
    assert_eq!(
        send_with(&strict_server, trust, "V1").await.unwrap(),
        AckStatus::Accepted
    );

    // Our client, against a TLS 1.2-only server (which never answers an MLLP message).
    let old = tls12_peer::server(&cert).await;
    let connect = |min: MinTlsVersion| {
        let mut tls = ClientTlsSettings::with_ca(&pki.ca).server_name("localhost");
        tls.min_version = min;
        let mut settings = client_settings(tls);
        settings.ack_timeout = Duration::from_millis(300);
        Client::new(old.to_string(), settings)
    };
    let default = connect(MinTlsVersion::Tls12).send(&adt("V2")).await;
    assert!(
        matches!(default, Err(ClientError::AckTimeout(_))),
        "the handshake succeeds, then no ACK comes: {default:?}"
    );
    let strict = connect(MinTlsVersion::Tls13).send(&adt("V3")).await;
    assert!(
        matches!(strict, Err(ClientError::Handshake { .. })),
        "{strict:?}"
    );
    default_server.stop().await;
    strict_server.stop().await;
}
