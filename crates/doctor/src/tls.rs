//! The TLS step: a handshake that records what it sees instead of failing on it.
//!
//! A sender's handshake stops at the first problem and says little ("invalid peer
//! certificate: UnknownIssuer"). The doctor's verifier runs the same webpki verification,
//! writes the verdict and the presented chain down, and lets the handshake finish, so the
//! report can show the chain (subject, issuer, expiry) next to the verdict. No application
//! data is sent over a connection whose verdict is a failure: the run stops at the report.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use causeway_mllp::tls::{ClientTlsSettings, Fingerprint};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::report::{Check, Code, Verdict};
use crate::{fmt_duration, ms};

/// How many bytes of the server's first answer are kept to tell what it speaks.
pub(crate) const HEAD_LEN: usize = 64;

static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

// === impl Prepared ===

/// The TLS material of a run, loaded once.
#[derive(Debug)]
pub(crate) struct Prepared {
    provider: Arc<CryptoProvider>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pin: Option<Fingerprint>,
    client_key: Option<Arc<CertifiedKey>>,
    /// `--server-name`, else the target host.
    pub server_name: ServerName<'static>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

impl Prepared {
    /// Loads the files of `settings`; `host` is the server name when none is configured.
    pub(crate) fn load(settings: &ClientTlsSettings, host: &str) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = match &settings.ca_path {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certs(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("unusable CA in {}: {e}", ca.display()))?;
                }
                Some(
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| format!("cannot use {}: {e}", ca.display()))?,
                )
            }
            None => None,
        };
        let client_key = match (&settings.client_cert_path, &settings.client_key_path) {
            (Some(cert), Some(key)) => {
                let chain = certs(cert)?;
                let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
                    .map_err(|e| format!("bad private key in {}: {e}", key.display()))?;
                Some(Arc::new(
                    CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| {
                        format!(
                            "{} and {} do not make a client identity: {e}",
                            cert.display(),
                            key.display()
                        )
                    })?,
                ))
            }
            (None, None) => None,
            _ => return Err("--cert and --key go together".to_owned()),
        };
        let name = settings.server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|_| format!("{name:?} is not a valid TLS server name"))?;
        Ok(Self {
            provider,
            webpki,
            pin: settings.pin,
            client_key,
            server_name,
        })
    }

    /// Whether a chain verdict can be had (a CA bundle or a pin was given).
    fn verifies(&self) -> bool {
        self.webpki.is_some() || self.pin.is_some()
    }

    fn config(&self, observed: &Arc<Mutex<Observed>>) -> Result<Arc<ClientConfig>, rustls::Error> {
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(VERSIONS)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Recorder {
                webpki: self.webpki.clone(),
                pin: self.pin,
                algorithms: self.provider.signature_verification_algorithms,
                observed: observed.clone(),
            }))
            .with_client_cert_resolver(Arc::new(AskRecorder {
                key: self.client_key.clone(),
                observed: observed.clone(),
            }));
        Ok(Arc::new(config))
    }

    /// Runs a handshake over `tcp`, recording the chain, the verdict and the raw answer.
    pub(crate) async fn handshake(&self, tcp: TcpStream, wait: Duration) -> Handshake {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let head = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let stream = Recording {
            inner: tcp,
            head: head.clone(),
        };
        let result = match self.config(&observed) {
            Err(e) => Err(HandshakeError::Io(io::Error::other(e))),
            Ok(config) => {
                let connector = tokio_rustls::TlsConnector::from(config);
                match timeout(wait, connector.connect(self.server_name.clone(), stream)).await {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(HandshakeError::Io(e)),
                    Err(_) => Err(HandshakeError::Timeout),
                }
            }
        };
        let elapsed = started.elapsed();
        let observed = std::mem::take(&mut *lock(&observed));
        let head = std::mem::take(&mut *lock(&head));
        Handshake {
            result,
            head,
            observed,
            elapsed,
            had_client_cert: self.client_key.is_some(),
        }
    }

    /// The bytes of a ClientHello for this server name, to probe a port that was asked for
    /// plain MLLP.
    pub(crate) fn client_hello(&self) -> Vec<u8> {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let mut out = Vec::new();
        let Ok(config) = self.config(&observed) else {
            return out;
        };
        if let Ok(mut conn) = rustls::ClientConnection::new(config, self.server_name.clone()) {
            while conn.wants_write() {
                if conn.write_tls(&mut out).is_err() {
                    break;
                }
            }
        }
        out
    }
}

/// A TLS setup that trusts nothing and verifies nothing: for probing and for inspecting a
/// server found to speak TLS when plain MLLP was asked for.
pub(crate) fn inspector(host: &str) -> Option<Prepared> {
    Prepared::load(&ClientTlsSettings::default(), host)
        .or_else(|_| Prepared::load(&ClientTlsSettings::default(), "localhost"))
        .ok()
}

fn lock<T: Default>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind the lock: a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// === Recording verifier and client certificate resolver ===

/// What the handshake saw.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// The presented chain, leaf first.
    chain: Vec<CertificateDer<'static>>,
    /// webpki's verdict, when a CA bundle was given.
    verdict: Option<Result<(), rustls::Error>>,
    /// Whether the leaf matched `--pin`, when one was given.
    pin_ok: Option<bool>,
    /// The CA names the server accepts client certificates from, when it asked for one.
    client_cert_asked: Option<Vec<String>>,
}

#[derive(Debug)]
struct Recorder {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pin: Option<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
    observed: Arc<Mutex<Observed>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.webpki.as_ref().map(|v| {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ())
        });
        let mut observed = lock(&self.observed);
        observed.verdict = verdict;
        observed.pin_ok = self.pin.map(|p| Fingerprint::of(end_entity) == p);
        observed.chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        // Recorded, not enforced: the report judges, and nothing is sent on a failed verdict.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct AskRecorder {
    key: Option<Arc<CertifiedKey>>,
    observed: Arc<Mutex<Observed>>,
}

impl ResolvesClientCert for AskRecorder {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let names = root_hint_subjects
            .iter()
            .filter_map(|der| {
                <x509_parser::x509::X509Name as x509_parser::prelude::FromDer<_>>::from_der(der)
                    .ok()
                    .map(|(_, n)| n.to_string())
            })
            .collect();
        lock(&self.observed).client_cert_asked = Some(names);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// Keeps the first bytes the server sends, to tell TLS from anything else afterwards.
#[derive(Debug)]
pub(crate) struct Recording<S> {
    inner: S,
    head: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            let mut head = lock(&this.head);
            let room = HEAD_LEN.saturating_sub(head.len());
            let new = &buf.filled()[before..];
            head.extend_from_slice(&new[..new.len().min(room)]);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recording<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// === Handshake results ===

/// A TLS stream over a recording TCP stream.
pub(crate) type Stream = tokio_rustls::client::TlsStream<Recording<TcpStream>>;

#[derive(Debug)]
pub(crate) enum HandshakeError {
    Timeout,
    Io(io::Error),
}

/// One handshake and what it saw.
#[derive(Debug)]
pub(crate) struct Handshake {
    pub result: Result<Stream, HandshakeError>,
    /// The first bytes the server sent.
    pub head: Vec<u8>,
    observed: Observed,
    pub elapsed: Duration,
    had_client_cert: bool,
}

/// The rustls error inside an I/O error from tokio-rustls, if that is what it is.
pub(crate) fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Alerts a server sends when it does not accept the client's certificate (or its absence).
fn is_client_cert_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure
    )
}

impl Handshake {
    /// Whether the server asked for a client certificate.
    pub(crate) fn client_cert_asked(&self) -> bool {
        self.observed.client_cert_asked.is_some()
    }

    /// The check for an error that ended the handshake or the first read after it (a TLS 1.3
    /// server refuses a client certificate only after the client's side of the handshake
    /// finished). `None` when the error is not a TLS finding.
    pub(crate) fn failure_check(&self, error: &io::Error) -> Option<Check> {
        let tls = rustls_error(error)?;
        let asked = self.observed.client_cert_asked.as_ref();
        let accepted_cas = asked.map(|names| names.join("; ")).unwrap_or_default();
        let check = match tls {
            rustls::Error::AlertReceived(alert)
                if is_client_cert_alert(*alert)
                    && (asked.is_some() || *alert == AlertDescription::CertificateRequired) =>
            {
                if self.had_client_cert {
                    Check::new(
                        "tls",
                        Verdict::Fail,
                        Code::TlsClientCertRejected,
                        format!("the server refused our client certificate (alert {alert:?})"),
                    )
                    .hint(
                        "The receiver does not accept this client certificate: it is not signed \
                         by a CA the receiver trusts, has expired, or its identity is not on the \
                         receiver's allowlist. Ask the receiver's team which CA and identity \
                         they expect.",
                    )
                } else {
                    let named = if accepted_cas.is_empty() {
                        String::new()
                    } else {
                        format!(" (it accepts certificates from: {accepted_cas})")
                    };
                    Check::new(
                        "tls",
                        Verdict::Fail,
                        Code::TlsClientCertRequired,
                        format!("the server requires a client certificate (alert {alert:?}) and we sent none"),
                    )
                    .hint(format!(
                        "This receiver uses mutual TLS: pass --cert and --key with a client \
                         certificate signed by a CA it trusts{named}."
                    ))
                }
            }
            rustls::Error::AlertReceived(AlertDescription::ProtocolVersion) => Check::new(
                "tls",
                Verdict::Fail,
                Code::TlsHandshake,
                "the server refused our TLS versions (alert ProtocolVersion)",
            )
            .hint(
                "We speak TLS 1.2 and 1.3; the server wants another version (often TLS 1.0 or \
                 1.1, which are insecure). The receiver should enable TLS 1.2 or later.",
            ),
            other => Check::new(
                "tls",
                Verdict::Fail,
                Code::TlsHandshake,
                format!("TLS handshake failed: {other}"),
            )
            .hint(
                "No common TLS version or cipher suite, a server name (SNI) the server does not \
                 know, or a TLS inspection device in the way. Compare with `openssl s_client \
                 -connect HOST:PORT`.",
            ),
        };
        Some(
            check
                .with("error", tls.to_string())
                .with("client_cert_requested", asked.is_some())
                .with("client_cert_sent", self.had_client_cert && asked.is_some()),
        )
    }

    /// The check for a completed handshake: version, cipher, chain and the verdict on it.
    pub(crate) fn judge(
        &self,
        stream: &Stream,
        prepared: &Prepared,
        now: SystemTime,
        expiry_warning: Duration,
    ) -> Check {
        let conn = stream.get_ref().1;
        let version = conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default()
            .replace("TLSv1_", "TLS 1.");
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let chain: Vec<CertInfo> = self
            .observed
            .chain
            .iter()
            .map(|der| CertInfo::of(der, now_secs))
            .collect();
        let leaf = chain.first();
        let leaf_desc = leaf.map_or_else(String::new, |l| {
            format!(
                "{} (issuer {}, expires {}{})",
                l.subject,
                l.issuer,
                l.not_after,
                if l.days_left >= 0 {
                    format!(", in {} days", l.days_left)
                } else {
                    String::new()
                }
            )
        });
        let name = server_name_text(&prepared.server_name);
        let summary_ok = format!("{version}, {cipher}; certificate {leaf_desc}");
        let fingerprint = self
            .observed
            .chain
            .first()
            .map(|c| Fingerprint::of(c).to_string())
            .unwrap_or_default();

        let mut check = match (&self.observed.verdict, self.observed.pin_ok) {
            (Some(Err(e)), _) => verdict_check(e, leaf, &name, &fingerprint),
            (_, Some(false)) => Check::new(
                "tls",
                Verdict::Fail,
                Code::TlsPinMismatch,
                format!("the server presents sha256 {fingerprint}, not the pinned certificate"),
            )
            .hint(
                "The certificate was renewed (update --pin to the new fingerprint once you have \
                 confirmed it with the receiver's team) or this is not the expected server.",
            ),
            _ => self.own_checks(leaf, &name, prepared, &fingerprint),
        };
        if check.verdict == Verdict::Pass {
            let expiring = chain
                .iter()
                .filter(|c| c.days_left >= 0)
                .find(|c| (c.days_left as u64) * 86_400 < expiry_warning.as_secs());
            if let Some(c) = expiring {
                check = Check::new(
                    "tls",
                    Verdict::Warn,
                    Code::TlsExpiring,
                    format!(
                        "{summary_ok}; {} expires in {} days",
                        c.subject, c.days_left
                    ),
                )
                .hint(format!(
                    "The certificate of {} expires on {}: remind the receiver's team to renew \
                     it before then, or messages stop on that day.",
                    c.subject, c.not_after
                ));
            }
        }
        if check.verdict == Verdict::Pass {
            check.summary = summary_ok;
        }
        check
            .with("version", version)
            .with("cipher", cipher)
            .with("server_name", name)
            .with("handshake_ms", ms(self.elapsed))
            .with(
                "chain",
                Value::Array(chain.iter().map(CertInfo::to_json).collect()),
            )
            .with("leaf_sha256", fingerprint)
            .with("verified", prepared.verifies())
            .with("client_cert_requested", self.client_cert_asked())
            .with(
                "client_cert_cas",
                json!(self.observed.client_cert_asked.clone().unwrap_or_default()),
            )
    }

    /// Checks made without a CA bundle: expiry and name from the certificate itself.
    fn own_checks(
        &self,
        leaf: Option<&CertInfo>,
        name: &str,
        prepared: &Prepared,
        fingerprint: &str,
    ) -> Check {
        if prepared.verifies() {
            return Check::pass("tls", "");
        }
        let Some(leaf) = leaf else {
            return Check::new(
                "tls",
                Verdict::Fail,
                Code::TlsBadCertificate,
                "the server presented no certificate",
            );
        };
        if leaf.days_left < 0 {
            return expired(leaf);
        }
        if !leaf.valid_for(name) {
            return hostname(leaf, name);
        }
        Check::new(
            "tls",
            Verdict::Warn,
            Code::TlsUnverified,
            format!(
                "certificate {} issued by {}, not verified",
                leaf.subject, leaf.issuer
            ),
        )
        .hint(format!(
            "No --ca or --pin was given, so the chain was shown but not verified. Pass --ca with \
             the CA that signs the receiver's certificate, or --pin {fingerprint}."
        ))
    }
}

fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

fn expired(leaf: &CertInfo) -> Check {
    Check::new(
        "tls",
        Verdict::Fail,
        Code::TlsExpired,
        format!(
            "the server certificate {} expired on {}",
            leaf.subject, leaf.not_after
        ),
    )
    .hint(
        "The receiver must renew its certificate. Senders that verify certificates, as they \
         should, refuse this one until then; do not turn verification off.",
    )
}

fn hostname(leaf: &CertInfo, name: &str) -> Check {
    Check::new(
        "tls",
        Verdict::Fail,
        Code::TlsHostname,
        format!(
            "the certificate is for {}, not {name}",
            if leaf.names.is_empty() {
                "no name at all (no subject alternative names)".to_owned()
            } else {
                leaf.names.join(", ")
            }
        ),
    )
    .hint(
        "Connect with a name the certificate carries (or set --server-name to one), or have \
         the receiver reissue the certificate with the name senders use.",
    )
}

/// The check for a webpki verdict that is not a success.
fn verdict_check(error: &rustls::Error, leaf: Option<&CertInfo>, name: &str, fp: &str) -> Check {
    let fallback = CertInfo::default();
    let leaf = leaf.unwrap_or(&fallback);
    let rustls::Error::InvalidCertificate(cert_error) = error else {
        return Check::new(
            "tls",
            Verdict::Fail,
            Code::TlsBadCertificate,
            format!("certificate refused: {error}"),
        );
    };
    match cert_error {
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => {
            if leaf.days_left < 0 {
                expired(leaf)
            } else {
                Check::new(
                    "tls",
                    Verdict::Fail,
                    Code::TlsExpired,
                    format!("a certificate of the chain is outside its validity: {error}"),
                )
                .hint(
                    "A certificate is expired or not valid yet (check this machine's clock too). \
                     The receiver must renew it.",
                )
            }
        }
        CertificateError::UnknownIssuer => Check::new(
            "tls",
            Verdict::Fail,
            Code::TlsUntrusted,
            format!(
                "certificate {} is issued by {}, which --ca does not trust",
                leaf.subject, leaf.issuer
            ),
        )
        .hint(format!(
            "Get the CA certificate that signed the receiver's certificate ({}) from the \
             receiver's team and pass it with --ca. For a self-signed server certificate, pin \
             it with --pin {fp} once its fingerprint is confirmed.",
            leaf.issuer
        )),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            hostname(leaf, name)
        }
        other if format!("{other:?}").contains("CaUsedAsEndEntity") => Check::new(
            "tls",
            Verdict::Fail,
            Code::TlsBadCertificate,
            format!(
                "the server presents a CA certificate ({}, CA:TRUE) as its own, which TLS \
                 clients refuse",
                leaf.subject
            ),
        )
        .hint(format!(
            "A self-signed certificate made as a CA cannot identify a server. Have the receiver \
             issue a server certificate (CA:FALSE), or, for a self-signed one, pin it with \
             --pin {fp} instead of --ca."
        )),
        other => Check::new(
            "tls",
            Verdict::Fail,
            Code::TlsBadCertificate,
            format!("certificate refused: {other:?}"),
        )
        .hint(
            "The certificate is malformed, revoked, or not meant for a TLS server. The \
             receiver must replace it.",
        ),
    }
}

// === impl CertInfo ===

/// What a person needs to know about one certificate.
#[derive(Debug, Clone, Default)]
struct CertInfo {
    subject: String,
    issuer: String,
    not_after: String,
    days_left: i64,
    /// DNS names and IP addresses of the subject alternative names.
    names: Vec<String>,
}

impl CertInfo {
    fn of(der: &[u8], now_secs: i64) -> Self {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return CertInfo {
                subject: "(unreadable certificate)".into(),
                ..CertInfo::default()
            };
        };
        let not_after = cert.validity().not_after.timestamp();
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).into()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            names.push(std::net::IpAddr::from(a).to_string());
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            names.push(std::net::IpAddr::from(a).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_after: rfc3339(not_after),
            days_left: (not_after - now_secs).div_euclid(86_400),
            names,
        }
    }

    /// Whether a subject alternative name covers `name` (one `*.` label wildcard allowed).
    fn valid_for(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|n| {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(suffix) => name
                    .split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
                None => n == name,
            }
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "subject": self.subject,
            "issuer": self.issuer,
            "not_after": self.not_after,
            "days_left": self.days_left,
            "names": self.names,
        })
    }
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = causeway_message::date::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The check for a handshake that timed out with nothing heard.
pub(crate) fn timed_out(wait: Duration) -> Check {
    Check::new(
        "tls",
        Verdict::Fail,
        Code::TlsTimeout,
        format!(
            "the server did not finish the TLS handshake within {}",
            fmt_duration(wait)
        ),
    )
    .hint(
        "The server accepted the connection but stalled in the handshake: an overloaded \
         receiver, or a middlebox holding the ClientHello. Try a longer --timeout.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(rfc3339(-86_400), "1969-12-31T00:00:00Z");
    }

    #[test]
    fn names_match_with_one_wildcard_label() {
        let info = CertInfo {
            names: vec!["*.lab.example".into(), "10.0.0.1".into()],
            ..CertInfo::default()
        };
        assert!(info.valid_for("hl7.lab.example"));
        assert!(info.valid_for("HL7.Lab.Example."));
        assert!(!info.valid_for("lab.example"));
        assert!(!info.valid_for("a.b.lab.example"));
        assert!(info.valid_for("10.0.0.1"));
        assert!(!info.valid_for("10.0.0.2"));
    }

    #[test]
    fn client_hello_is_a_tls_handshake_record() {
        let hello = inspector("localhost").unwrap().client_hello();
        assert_eq!(&hello[..2], &[0x16, 0x03]);
    }
}
