//! TLS of the link: rustls with the ring provider, TLS 1.3 only unless `tls12 = true`,
//! mutual authentication always. The hub requires a client certificate chaining to
//! `client_ca`; which edge it is (and what it may do) is decided after the handshake from
//! the certificate's identity. The edge verifies the hub by CA, by pinned fingerprint, or
//! both.

use std::path::Path;
use std::sync::{Arc, Mutex};

use causeway_mllp::tls::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tracing::warn;

/// A TLS configuration rebuilt from its files for each connection, so that renewed
/// certificates take effect without a restart (links are opened rarely, so reading a few
/// files each time costs nothing). When the files cannot be used, the last good
/// configuration stays, with a warning.
pub struct Reloading<T> {
    build: Box<dyn Fn() -> Result<Arc<T>, String> + Send + Sync>,
    last: Mutex<Arc<T>>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloading(..)")
    }
}

impl<T> Reloading<T> {
    /// Builds once now: a configuration that cannot be built at start is an error.
    pub fn new(
        build: impl Fn() -> Result<Arc<T>, String> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, String> {
        let first = build()?;
        Ok(Reloading {
            build: Box::new(build),
            last: Mutex::new(first),
        })
    }

    /// The configuration for the next connection.
    pub fn current(&self) -> Arc<T> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match (self.build)() {
            Ok(config) => {
                *last = config.clone();
                config
            }
            Err(error) => {
                warn!(%error, "link TLS files cannot be used; keeping the previous configuration");
                last.clone()
            }
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn versions(tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static ONLY13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    static BOTH: &[&rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    if tls12 { BOTH } else { ONLY13 }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The hub's server configuration: its certificate, and client certificates required and
/// verified against `client_ca`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    tls12: bool,
) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(read_roots(client_ca)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client_ca: {e}"))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(tls12))
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(Arc::new(config))
}

/// The edge's client configuration: its certificate, and the hub verified by `ca`, `pin`
/// or both.
pub fn client_config(
    ca: Option<&Path>,
    pin: Option<Fingerprint>,
    cert: &Path,
    key: &Path,
    tls12: bool,
) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(tls12))
        .map_err(|e| e.to_string())?;
    let webpki = match ca {
        Some(ca) => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(read_roots(ca)?),
                provider,
            )
            .build()
            .map_err(|e| format!("hub_ca: {e}"))?,
        ),
        None => None,
    };
    let builder = match (webpki, pin) {
        (None, None) => return Err("an edge needs hub_ca or hub_pin".to_owned()),
        (Some(webpki), None) => builder.with_webpki_verifier(webpki),
        (inner, Some(pin)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin,
                inner: inner.map(|v| v as Arc<dyn ServerCertVerifier>),
                algorithms,
            })),
    };
    let config = builder
        .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
        .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(Arc::new(config))
}

/// Accepts the hub only if its leaf certificate has the pinned fingerprint (and, with a
/// CA, also chains to it and names the server).
#[derive(Debug)]
struct PinnedVerifier {
    pin: Fingerprint,
    inner: Option<Arc<dyn ServerCertVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(inner) = &self.inner {
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        let seen = Fingerprint::of(end_entity);
        if seen != self.pin {
            warn!(expected = %self.pin, %seen, "hub certificate does not match hub_pin");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
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
