//! TLS for MLLP with rustls (ring provider, TLS 1.2 and 1.3 only).
//!
//! Server side: [`ServerTls`] loads a certificate chain and key from PEM
//! files, optionally requires client certificates signed by a CA bundle
//! (mTLS) and restricts them to an allowlist of identities, and reloads the
//! files without a restart ([`ServerTls::reload`] for SIGHUP,
//! [`ServerTls::watch`] to poll file modification times). A failed reload
//! keeps serving with the previous configuration.
//!
//! Client side: [`ClientTls`] trusts a CA bundle, a pinned leaf certificate
//! fingerprint, or both, and can present a client certificate.
//!
//! A client outside the allowlist is refused inside the handshake (by
//! [`AllowlistVerifier`]), so it never gets to send a message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use tracing::{info, warn};

/// The TLS versions Causeway speaks by default: 1.3 preferred, 1.2 for older engines.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// TLS 1.3 only, for sites whose policy refuses 1.2.
static ONLY_TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The oldest TLS version a listener or a client accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MinTlsVersion {
    /// TLS 1.2 and 1.3 (the default: many HL7 engines still speak only 1.2).
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl MinTlsVersion {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        match self {
            MinTlsVersion::Tls12 => VERSIONS,
            MinTlsVersion::Tls13 => ONLY_TLS13,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid PEM or holds no item of the expected kind.
    #[error("bad PEM in {path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate, key or settings.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA bundle could not be turned into a certificate verifier.
    #[error("cannot build certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A client identity allowlist was given without a CA to verify clients.
    #[error("an allowed-clients list needs a client CA bundle")]
    AllowlistWithoutCa,
    /// A client has neither a CA bundle nor a pinned fingerprint to trust a server.
    #[error("client TLS needs a CA bundle, a pinned fingerprint, or both")]
    NoTrustAnchor,
    /// A client certificate was given without its key, or the reverse.
    #[error("client certificate and key must be given together")]
    IncompleteClientCert,
    /// The server name for SNI and verification is not a valid DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    InvalidServerName(String),
    /// A fingerprint is not 64 hex digits (colons allowed).
    #[error("invalid SHA-256 fingerprint {0:?}: want 64 hex digits")]
    InvalidFingerprint(String),
    /// The private key is encrypted and no password was given.
    #[error("{path}: the private key is encrypted; give its password (key_password)")]
    KeyEncrypted {
        /// The file.
        path: PathBuf,
    },
    /// An encrypted private key could not be decrypted or read.
    #[error("{path}: cannot decrypt the private key: {reason}")]
    KeyDecrypt {
        /// The file.
        path: PathBuf,
        /// Why (a wrong password looks like a bad padding or a bad key structure).
        reason: String,
    },
    /// An identity rule is not `cn:NAME`, `dns:NAME` or `uri:URI`.
    #[error("invalid client identity rule {0:?}: want cn:NAME, dns:NAME or uri:URI")]
    InvalidIdentityRule(String),
}

// === impl Fingerprint ===

/// SHA-256 of a certificate's DER encoding, as used for pinning.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        // SHA-256 digests are always 32 bytes, so the lengths match.
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;

    /// Parses 64 hex digits; colons and a `sha256:` prefix are ignored.
    fn from_str(s: &str) -> Result<Self, TlsError> {
        let bad = || TlsError::InvalidFingerprint(s.to_owned());
        let hex: Vec<u8> = s
            .trim()
            .trim_start_matches("sha256:")
            .bytes()
            .filter(|b| *b != b':')
            .collect();
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        // 64 digits: exactly 32 full pairs, so `pair[1]` and `out[i]` are in bounds.
        for (i, pair) in hex.chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or_else(bad);
            out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

// === impl PeerIdentity ===

/// Who a certificate says its holder is: what the allowlist matches and what
/// gets logged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// The subject's first common name, if any.
    pub common_name: Option<String>,
    /// DNS names from the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// URIs from the subject alternative name extension (e.g. SPIFFE ids).
    pub uris: Vec<String>,
    /// SHA-256 of the certificate.
    pub fingerprint: Fingerprint,
}

impl PeerIdentity {
    /// Reads the identity out of a DER certificate. A certificate x509-parser
    /// cannot read yields an identity with only the fingerprint.
    pub fn from_der(der: &[u8]) -> Self {
        let mut id = PeerIdentity {
            common_name: None,
            dns_names: Vec::new(),
            uris: Vec::new(),
            fingerprint: Fingerprint::of(der),
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return id;
        };
        id.common_name = cert
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())
            .map(str::to_owned);
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        id.dns_names.push((*d).to_owned());
                    }
                    x509_parser::extensions::GeneralName::URI(u) => id.uris.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        id
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CN={}", self.common_name.as_deref().unwrap_or("-"))?;
        for d in &self.dns_names {
            write!(f, " DNS={d}")?;
        }
        for u in &self.uris {
            write!(f, " URI={u}")?;
        }
        write!(f, " sha256={}", self.fingerprint)
    }
}

// === impl IdentityRule ===

/// One entry of a listener's client allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityRule {
    /// The subject common name equals this (exact, case-sensitive).
    CommonName(String),
    /// A SAN DNS name equals this (ASCII case-insensitive).
    Dns(String),
    /// A SAN URI equals this (exact).
    Uri(String),
}

impl IdentityRule {
    /// Whether `id` satisfies this rule.
    pub fn matches(&self, id: &PeerIdentity) -> bool {
        match self {
            IdentityRule::CommonName(cn) => id.common_name.as_deref() == Some(cn.as_str()),
            IdentityRule::Dns(d) => id.dns_names.iter().any(|n| n.eq_ignore_ascii_case(d)),
            IdentityRule::Uri(u) => id.uris.iter().any(|n| n == u),
        }
    }
}

impl FromStr for IdentityRule {
    type Err = TlsError;

    /// Parses `cn:NAME`, `dns:NAME` or `uri:URI`.
    fn from_str(s: &str) -> Result<Self, TlsError> {
        let (kind, value) = s
            .split_once(':')
            .filter(|(_, v)| !v.is_empty())
            .ok_or_else(|| TlsError::InvalidIdentityRule(s.to_owned()))?;
        match kind.to_ascii_lowercase().as_str() {
            "cn" => Ok(IdentityRule::CommonName(value.to_owned())),
            "dns" => Ok(IdentityRule::Dns(value.to_owned())),
            "uri" => Ok(IdentityRule::Uri(value.to_owned())),
            _ => Err(TlsError::InvalidIdentityRule(s.to_owned())),
        }
    }
}

// === impl AllowlistVerifier ===

/// A client certificate verifier that runs webpki's chain verification and
/// then refuses clients whose identity matches no [`IdentityRule`].
///
/// Refusing here, inside the handshake, means a refused client never gets an
/// application-data channel at all.
#[derive(Debug)]
pub struct AllowlistVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<IdentityRule>,
}

impl AllowlistVerifier {
    /// Wraps `inner`; an empty `allowed` list admits every client `inner` accepts.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, allowed: Vec<IdentityRule>) -> Self {
        Self { inner, allowed }
    }
}

impl ClientCertVerifier for AllowlistVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed.is_empty() {
            return Ok(verified);
        }
        let identity = PeerIdentity::from_der(end_entity);
        if self.allowed.iter().any(|rule| rule.matches(&identity)) {
            return Ok(verified);
        }
        warn!(%identity, "client certificate not in allowlist; refusing handshake");
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

// === impl ServerTls ===

/// Where a server's TLS material lives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerTlsSettings {
    /// PEM file with the server certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
    /// PEM bundle of CAs that sign client certificates. When set, every
    /// client must present a certificate signed by one of them (mTLS). When
    /// unset, any client may connect.
    pub client_ca_path: Option<PathBuf>,
    /// Client identities admitted on this listener. Empty admits every client
    /// the CA bundle verifies; non-empty needs `client_ca_path`.
    pub allowed_clients: Vec<IdentityRule>,
    /// Password of an encrypted `key_path` (PKCS#8 `ENCRYPTED PRIVATE KEY`).
    pub key_password: Option<KeyPassword>,
    /// The oldest TLS version accepted. Default 1.2.
    pub min_version: MinTlsVersion,
}

impl ServerTlsSettings {
    /// Server certificate and key, no client authentication.
    pub fn new(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Self {
        Self {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            client_ca_path: None,
            allowed_clients: Vec::new(),
            key_password: None,
            min_version: MinTlsVersion::default(),
        }
    }

    /// Accepts no TLS version older than `min`.
    pub fn with_min_version(mut self, min: MinTlsVersion) -> Self {
        self.min_version = min;
        self
    }

    /// Decrypts the key with this password.
    pub fn with_key_password(mut self, password: KeyPassword) -> Self {
        self.key_password = Some(password);
        self
    }

    /// Requires client certificates signed by the CAs in `ca_path`.
    pub fn with_client_ca(mut self, ca_path: impl Into<PathBuf>) -> Self {
        self.client_ca_path = Some(ca_path.into());
        self
    }

    /// Restricts clients to these identities.
    pub fn with_allowed_clients(mut self, rules: Vec<IdentityRule>) -> Self {
        self.allowed_clients = rules;
        self
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [
            Some(&self.cert_path),
            Some(&self.key_path),
            self.client_ca_path.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
    }
}

/// A server TLS configuration that can be swapped while the server runs.
///
/// Each accepted connection takes the configuration current at that moment;
/// connections already established keep theirs.
#[derive(Debug)]
pub struct ServerTls {
    settings: ServerTlsSettings,
    // std's RwLock, not tokio's: the lock is held only to clone an Arc, never
    // across an await.
    current: RwLock<Arc<ServerConfig>>,
    stamps: Mutex<Vec<FileStamp>>,
}

/// What a file looked like when last loaded: a change means reload.
type FileStamp = Option<(SystemTime, u64)>;

impl ServerTls {
    /// Loads the configuration; fails if any file is missing or invalid.
    pub fn load(settings: ServerTlsSettings) -> Result<Self, TlsError> {
        let stamps = stamps(&settings);
        let config = build_server_config(&settings)?;
        info!(
            cert = %settings.cert_path.display(),
            mtls = settings.client_ca_path.is_some(),
            allowed_clients = settings.allowed_clients.len(),
            "TLS configuration loaded"
        );
        Ok(Self {
            settings,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        })
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        // A poisoned lock still holds a valid Arc: a panic cannot leave it half-written.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// An acceptor using the current configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config())
    }

    /// The settings this was loaded from.
    pub fn settings(&self) -> &ServerTlsSettings {
        &self.settings
    }

    /// Re-reads the files now (call it on SIGHUP). On failure the previous
    /// configuration stays in use, the reason is logged and returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let new_stamps = stamps(&self.settings);
        let result = build_server_config(&self.settings);
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = new_stamps;
        match result {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                info!(cert = %self.settings.cert_path.display(), "TLS configuration reloaded");
                Ok(())
            }
            Err(error) => {
                warn!(%error, "TLS reload failed; keeping the previous configuration");
                Err(error)
            }
        }
    }

    /// Reloads if any file's modification time or size changed since the
    /// last load. Returns whether a reload was attempted.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.settings);
        let changed = *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) != now;
        if changed {
            // The outcome is logged by `reload`.
            let _ = self.reload();
        }
        changed
    }

    /// Polls the files every `interval` and reloads when they change, until
    /// `shutdown` completes.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once; the files were just loaded.
        ticker.tick().await;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {
                    // A few small files: reading them inline is cheaper than a
                    // blocking-pool hop.
                    self.reload_if_changed();
                }
            }
        }
    }
}

fn stamps(settings: &ServerTlsSettings) -> Vec<FileStamp> {
    settings
        .paths()
        .map(|p| {
            let meta = std::fs::metadata(p).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

fn build_server_config(settings: &ServerTlsSettings) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let certs = read_certs(&settings.cert_path)?;
    let key = read_key_with_password(&settings.key_path, settings.key_password.as_ref())?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(settings.min_version.versions())?;
    let builder = match &settings.client_ca_path {
        None if !settings.allowed_clients.is_empty() => return Err(TlsError::AllowlistWithoutCa),
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = read_roots(ca)?;
            let webpki =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(Arc::new(AllowlistVerifier::new(
                webpki,
                settings.allowed_clients.clone(),
            )))
        }
    };
    Ok(builder.with_single_cert(certs, key)?)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads every certificate of a PEM file; an error if it holds none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            source: rustls::pki_types::pem::Error::NoItemsFound,
        });
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    read_key_with_password(path, None)
}

/// The password of an encrypted private key. Never printed; wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPassword(pkcs8::der::zeroize::Zeroizing<String>);

impl KeyPassword {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        KeyPassword(pkcs8::der::zeroize::Zeroizing::new(password.into()))
    }
}

impl std::fmt::Debug for KeyPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPassword(***)")
    }
}

/// The PEM label of a PKCS#8 `EncryptedPrivateKeyInfo`.
const ENCRYPTED_KEY_LABEL: &str = "ENCRYPTED PRIVATE KEY";

/// Reads the private key of a PEM file: plain (PKCS#8, PKCS#1 or SEC1), or a PKCS#8
/// `ENCRYPTED PRIVATE KEY` (PBES2: PBKDF2 or scrypt with AES-CBC, what `openssl genpkey
/// -aes256` and `openssl pkcs8 -topk8` write) decrypted with `password`. OpenSSL's legacy
/// encrypted PEM (`Proc-Type: 4,ENCRYPTED`) is refused with the command that converts it.
pub fn read_key_with_password(
    path: &Path,
    password: Option<&KeyPassword>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    let text = String::from_utf8_lossy(&pem);
    let decrypt_error = |reason: String| TlsError::KeyDecrypt {
        path: path.to_owned(),
        reason,
    };
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(decrypt_error(
            "legacy OpenSSL encryption (Proc-Type); convert it with \
             `openssl pkcs8 -topk8 -v2 aes-256-cbc -in OLD -out NEW`"
                .to_owned(),
        ));
    }
    let begin = format!("-----BEGIN {ENCRYPTED_KEY_LABEL}-----");
    let Some(start) = text.find(&begin) else {
        if password.is_some() {
            warn!(key = %path.display(), "a key password is set, but the key is not encrypted: the password is not used");
        }
        return PrivateKeyDer::from_pem_slice(&pem).map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        });
    };
    let Some(password) = password else {
        return Err(TlsError::KeyEncrypted {
            path: path.to_owned(),
        });
    };
    let end_marker = format!("-----END {ENCRYPTED_KEY_LABEL}-----");
    let end = text[start..]
        .find(&end_marker)
        .map(|i| start + i + end_marker.len())
        .ok_or_else(|| decrypt_error(format!("no {end_marker} line")))?;
    let (label, der) = pkcs8::der::pem::decode_vec(text[start..end].as_bytes())
        .map_err(|e| decrypt_error(format!("bad PEM: {e}")))?;
    if label != ENCRYPTED_KEY_LABEL {
        return Err(decrypt_error(format!("unexpected PEM label {label:?}")));
    }
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
        .map_err(|e| decrypt_error(e.to_string()))?;
    let plain = info
        .decrypt(password.0.as_bytes())
        .map_err(|e| decrypt_error(format!("{e} (is the password right?)")))?;
    // A wrong password that happens to unpad cleanly leaves garbage: check the structure.
    pkcs8::PrivateKeyInfo::try_from(plain.as_bytes())
        .map_err(|e| decrypt_error(format!("{e} (is the password right?)")))?;
    Ok(PrivateKeyDer::Pkcs8(plain.as_bytes().to_vec().into()))
}

/// Reads a PEM bundle of CA certificates into a root store.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

// === impl ClientTls ===

/// How a client trusts its server and proves itself.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ClientTlsSettings {
    /// Name sent as SNI and checked against the server certificate. Default:
    /// the host part of the address the client connects to.
    pub server_name: Option<String>,
    /// PEM bundle of CAs trusted to sign the server certificate.
    pub ca_path: Option<PathBuf>,
    /// SHA-256 of the server's leaf certificate. With a CA bundle the chain
    /// and name are verified too; alone, only the pin is checked (the name is
    /// not, since the pin already identifies one certificate).
    pub pin: Option<Fingerprint>,
    /// PEM certificate chain to present to servers that ask (mTLS).
    pub client_cert_path: Option<PathBuf>,
    /// PEM private key for `client_cert_path`.
    pub client_key_path: Option<PathBuf>,
    /// Password of an encrypted `client_key_path` (PKCS#8 `ENCRYPTED PRIVATE KEY`).
    pub client_key_password: Option<KeyPassword>,
    /// The oldest TLS version accepted. Default 1.2.
    pub min_version: MinTlsVersion,
}

impl ClientTlsSettings {
    /// Trust servers whose chain leads to a CA in `ca_path`.
    pub fn with_ca(ca_path: impl Into<PathBuf>) -> Self {
        Self {
            ca_path: Some(ca_path.into()),
            ..Self::default()
        }
    }

    /// Trust only the server whose leaf certificate has this fingerprint.
    pub fn with_pin(pin: Fingerprint) -> Self {
        Self {
            pin: Some(pin),
            ..Self::default()
        }
    }

    /// Sets the SNI / verification name.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Adds a pin to a CA-based configuration.
    pub fn pin(mut self, pin: Fingerprint) -> Self {
        self.pin = Some(pin);
        self
    }

    /// Presents this certificate and key to the server.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert_path = Some(cert.into());
        self.client_key_path = Some(key.into());
        self
    }
}

/// A loaded client TLS configuration.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl ClientTls {
    /// Loads the files named in `settings`.
    pub fn load(settings: &ClientTlsSettings) -> Result<Self, TlsError> {
        let provider = provider();
        let verifier = server_verifier(
            &provider,
            settings.ca_path.as_deref(),
            settings.pin,
            "server certificate does not match the pin",
        )?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(settings.min_version.versions())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&settings.client_cert_path, &settings.client_key_path) {
            (Some(cert), Some(key)) => builder.with_client_auth_cert(
                read_certs(cert)?,
                read_key_with_password(key, settings.client_key_password.as_ref())?,
            )?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError::IncompleteClientCert),
        };
        let server_name = settings
            .server_name
            .as_deref()
            .map(parse_server_name)
            .transpose()?;
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The configured server name, if one was set.
    pub fn server_name(&self) -> Option<&ServerName<'static>> {
        self.server_name.as_ref()
    }
}

/// Parses a DNS name or IP address for SNI and verification.
pub fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::InvalidServerName(name.to_owned()))
}

/// How a client verifies its server: by the CA bundle at `ca` (webpki: chain and name), by
/// the leaf certificate's pinned fingerprint, or both. `pin_mismatch` is the log line when
/// the pin does not match, in the caller's words (it names the setting to check).
pub fn server_verifier(
    provider: &Arc<CryptoProvider>,
    ca: Option<&Path>,
    pin: Option<Fingerprint>,
    pin_mismatch: &'static str,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let webpki = match ca {
        Some(ca) => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(read_roots(ca)?),
                Arc::clone(provider),
            )
            .build()?,
        ),
        None => None,
    };
    match (webpki, pin) {
        (None, None) => Err(TlsError::NoTrustAnchor),
        (Some(webpki), None) => Ok(webpki),
        (inner, Some(pin)) => Ok(Arc::new(PinnedVerifier {
            pin,
            inner: inner.map(|v| v as Arc<dyn ServerCertVerifier>),
            algorithms: provider.signature_verification_algorithms,
            mismatch: pin_mismatch,
        })),
    }
}

/// Accepts a server only if its leaf certificate has the pinned fingerprint
/// (and, with a CA bundle, also passes webpki verification).
#[derive(Debug)]
struct PinnedVerifier {
    pin: Fingerprint,
    inner: Option<Arc<dyn ServerCertVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
    mismatch: &'static str,
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
            warn!(expected = %self.pin, %seen, "{}", self.mismatch);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parses_and_prints() {
        let fp = Fingerprint::of(b"hello");
        let hex = fp.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex.parse::<Fingerprint>().expect("valid"), fp);
        let colons: String = hex
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(
            format!("sha256:{colons}")
                .parse::<Fingerprint>()
                .expect("valid"),
            fp
        );
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn identity_rules_parse_and_match() {
        let cert =
            rcgen::generate_simple_self_signed(vec!["lab.example".to_owned()]).expect("rcgen");
        let id = PeerIdentity::from_der(cert.cert.der());
        assert_eq!(id.dns_names, vec!["lab.example".to_owned()]);
        assert_eq!(id.common_name.as_deref(), Some("rcgen self signed cert"));
        let dns: IdentityRule = "dns:LAB.example".parse().expect("valid");
        assert!(dns.matches(&id));
        let cn: IdentityRule = "cn:rcgen self signed cert".parse().expect("valid");
        assert!(cn.matches(&id));
        let other: IdentityRule = "uri:spiffe://x/y".parse().expect("valid");
        assert!(!other.matches(&id));
        assert!("dns:".parse::<IdentityRule>().is_err());
        assert!("ip:1.2.3.4".parse::<IdentityRule>().is_err());
        assert!(id.to_string().contains("DNS=lab.example"));
    }

    #[test]
    fn client_needs_a_trust_anchor() {
        assert!(matches!(
            ClientTls::load(&ClientTlsSettings::default()),
            Err(TlsError::NoTrustAnchor)
        ));
    }
}
