//! TLS of the link: rustls with the ring provider, TLS 1.3 only unless `tls12 = true`,
//! mutual authentication always. The hub requires a client certificate chaining to
//! `client_ca`; which edge it is (and what it may do) is decided after the handshake from
//! the certificate's identity. The edge verifies the hub by CA, by pinned fingerprint, or
//! both.

use std::path::Path;
use std::sync::{Arc, Mutex};

use causeway_mllp::tls::{self, Fingerprint, KeyPassword};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
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
    tls::read_certs(path).map_err(|e| e.to_string())
}

fn read_key(path: &Path, password: Option<&KeyPassword>) -> Result<PrivateKeyDer<'static>, String> {
    tls::read_key_with_password(path, password).map_err(|e| e.to_string())
}

fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    tls::read_roots(path).map_err(|e| e.to_string())
}

/// The hub's server configuration: its certificate, and client certificates required and
/// verified against `client_ca`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    password: Option<&KeyPassword>,
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
        .with_single_cert(read_certs(cert)?, read_key(key, password)?)
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
    password: Option<&KeyPassword>,
    tls12: bool,
) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let verifier = match (ca, pin) {
        (None, None) => return Err("an edge needs hub_ca or hub_pin".to_owned()),
        (ca, pin) => {
            tls::server_verifier(&provider, ca, pin, "hub certificate does not match hub_pin")
                .map_err(|e| match ca {
                    Some(ca) => format!("hub_ca {}: {e}", ca.display()),
                    None => e.to_string(),
                })?
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(tls12))
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = builder
        .with_client_auth_cert(read_certs(cert)?, read_key(key, password)?)
        .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(Arc::new(config))
}
