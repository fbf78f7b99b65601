//! Flags and helpers shared by subcommands.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use causeway_mllp::tls::{
    ClientTls, ClientTlsSettings, Fingerprint, IdentityRule, ServerTls, ServerTlsSettings,
};

/// TLS flags of a sender (`send`, `doctor`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientTlsArgs {
    /// Connect with TLS (1.2 or 1.3). Implied by --ca, --pin, --cert.
    #[arg(long)]
    pub tls: bool,
    /// PEM bundle of the CAs that sign the server's certificate.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for servers that ask for one (mTLS).
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name to send as SNI and check in the certificate (default: the host of --to).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Accept only the server certificate with this SHA-256 fingerprint (hex, colons allowed).
    /// Without --ca only the pin is checked.
    #[arg(long, value_name = "SHA256")]
    pub pin: Option<Fingerprint>,
}

impl ClientTlsArgs {
    /// The TLS client configuration these flags ask for, `None` for plain TCP.
    pub fn load(&self) -> anyhow::Result<Option<ClientTls>> {
        if !(self.tls || self.ca.is_some() || self.pin.is_some() || self.cert.is_some()) {
            return Ok(None);
        }
        if self.ca.is_none() && self.pin.is_none() {
            anyhow::bail!("TLS needs --ca (the CA that signs the server certificate) or --pin");
        }
        let mut settings = ClientTlsSettings::default();
        settings.server_name = self.server_name.clone();
        settings.ca_path = self.ca.clone();
        settings.pin = self.pin;
        settings.client_cert_path = self.cert.clone();
        settings.client_key_path = self.key.clone();
        Ok(Some(
            ClientTls::load(&settings).context("cannot set up TLS")?,
        ))
    }
}

/// TLS flags of a receiver (`listen`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerTlsArgs {
    /// Serve TLS with this certificate chain (PEM). Reloaded when the file changes.
    #[arg(long = "tls-cert", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long = "tls-key", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CAs (PEM): mutual TLS.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Admit only clients with this identity: cn:NAME, dns:NAME or uri:URI. Repeatable.
    #[arg(long = "allow-client", value_name = "RULE", requires = "client_ca")]
    pub allow_client: Vec<IdentityRule>,
}

impl ServerTlsArgs {
    /// The TLS server configuration these flags ask for, `None` for plain TCP.
    pub fn load(&self) -> anyhow::Result<Option<ServerTls>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let mut settings = ServerTlsSettings::new(cert, key);
        if let Some(ca) = &self.client_ca {
            settings = settings.with_client_ca(ca);
        }
        if !self.allow_client.is_empty() {
            settings = settings.with_allowed_clients(self.allow_client.clone());
        }
        Ok(Some(
            ServerTls::load(settings).context("cannot set up TLS")?,
        ))
    }
}

/// Parses `1500`, `1500ms`, `2s` or `1m` into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 30s or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// Where tracing logs go and in what form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the tracing subscriber: stderr, `RUST_LOG` or `default` as filter.
pub fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
