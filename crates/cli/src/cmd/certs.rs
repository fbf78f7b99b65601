//! `causeway certs init` and `causeway certs issue`: a private CA for the edge/hub link and
//! the certificates it signs (rcgen with ring), so that a first link works in minutes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use causeway_mllp::tls::Fingerprint;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a private CA (ca.pem and ca.key in --dir) for the link.
    ///
    /// The hub trusts edges signed by it (`[link] client_ca = "ca.pem"`) and edges trust the
    /// hub signed by it (`[link] hub_ca = "ca.pem"`). Keep ca.key offline once the
    /// certificates are issued. Refuses to overwrite an existing CA.
    ///
    /// Example:
    ///   causeway certs init --dir pki
    #[command(verbatim_doc_comment)]
    Init(InitArgs),

    /// Issue an edge's client certificate or the hub's server certificate with the CA.
    ///
    /// Writes NAME.pem and NAME.key (mode 0600) into --out and prints the certificate's
    /// SHA-256 fingerprint (usable as `hub_pin`) and the [link] lines that use them.
    ///
    /// Examples:
    ///   causeway certs issue --dir pki --edge stmarys
    ///   causeway certs issue --dir pki --hub hub.example.org
    #[command(verbatim_doc_comment)]
    Issue(IssueArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory for ca.pem and ca.key (created if missing).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The CA's common name.
    #[arg(long, default_value = "Causeway link CA")]
    name: String,
    /// Validity in days.
    #[arg(long, default_value_t = 3650)]
    days: u32,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["edge", "hub"])))]
pub struct IssueArgs {
    /// Directory of the CA (ca.pem, ca.key).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// An edge's client certificate, common name NAME (the hub's `[[link.edge]] name`).
    #[arg(long, value_name = "NAME")]
    edge: Option<String>,
    /// The hub's server certificate for HOSTNAME (a DNS name or an IP address).
    #[arg(long, value_name = "HOSTNAME")]
    hub: Option<String>,
    /// More names for the hub's certificate (DNS names or IP addresses).
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<String>,
    /// Where to write the certificate and key. Default: the CA's directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Validity in days.
    #[arg(long, default_value_t = 825)]
    days: u32,
}

pub fn run(command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init(args) => init(args),
        Command::Issue(args) => issue(args),
    }
}

fn init(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let cert_path = args.dir.join("ca.pem");
    let key_path = args.dir.join("ca.key");
    for p in [&cert_path, &key_path] {
        if p.exists() {
            bail!(
                "{} exists: not overwriting a CA (its certificates would stop working)",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let key = KeyPair::generate().context("cannot generate a key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, &args.name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, args.days);
    let cert = params.self_signed(&key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    println!(
        "wrote {} (the CA certificate: hub_ca on edges, client_ca on the hub)",
        cert_path.display()
    );
    println!(
        "wrote {} (the CA key, mode 0600: keep it offline)",
        key_path.display()
    );
    println!("fingerprint sha256:{}", Fingerprint::of(cert.der()));
    Ok(ExitCode::SUCCESS)
}

fn issue(args: &IssueArgs) -> anyhow::Result<ExitCode> {
    let ca_cert = std::fs::read_to_string(args.dir.join("ca.pem")).with_context(|| {
        format!(
            "cannot read {}/ca.pem (run causeway certs init first)",
            args.dir.display()
        )
    })?;
    let ca_key = std::fs::read_to_string(args.dir.join("ca.key"))
        .with_context(|| format!("cannot read {}/ca.key", args.dir.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key).context("ca.key is not a private key")?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_cert, ca_key).context("ca.pem is not a CA certificate")?;
    let (name, file, purpose, mut sans) = match (&args.edge, &args.hub) {
        (Some(edge), None) => {
            check_edge_name(edge)?;
            (
                edge.clone(),
                format!("edge-{edge}"),
                ExtendedKeyUsagePurpose::ClientAuth,
                Vec::new(),
            )
        }
        (None, Some(hub)) => (
            hub.clone(),
            format!("hub-{}", hub.replace(':', "_")),
            ExtendedKeyUsagePurpose::ServerAuth,
            vec![san(hub)?],
        ),
        _ => bail!("give exactly one of --edge NAME and --hub HOSTNAME"),
    };
    for s in &args.sans {
        sans.push(san(s)?);
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, &name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![purpose.clone()];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, args.days);
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = params.signed_by(&key, &issuer)?;
    let out = args.out.clone().unwrap_or_else(|| args.dir.clone());
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert_path = out.join(format!("{file}.pem"));
    let key_path = out.join(format!("{file}.key"));
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    let fp = Fingerprint::of(cert.der());
    println!("wrote {} and {}", cert_path.display(), key_path.display());
    println!("fingerprint sha256:{fp}");
    let ca = args.dir.join("ca.pem");
    if purpose == ExtendedKeyUsagePurpose::ClientAuth {
        println!(
            "\n# on the edge:\n[link]\nname = \"{name}\"\nhub = \"wss://HUB:443/causeway/link\"\nhub_ca = {:?}\ncert = {:?}\nkey = {:?}",
            ca.display().to_string(),
            cert_path.display().to_string(),
            key_path.display().to_string()
        );
        println!("\n# on the hub:\n[[link.edge]]\nname = \"{name}\"\nchannels = [\"...\"]");
    } else {
        println!(
            "\n# on the hub:\n[link]\nlisten = \"0.0.0.0:443\"\nclient_ca = {:?}\ncert = {:?}\nkey = {:?}",
            ca.display().to_string(),
            cert_path.display().to_string(),
            key_path.display().to_string()
        );
        println!(
            "\n# on an edge that pins the hub instead of trusting the CA:\nhub_pin = \"{fp}\""
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check_edge_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("edge name {name:?}: use 1 to 64 letters, digits, '-' or '_' (as in [link] name)");
    }
    Ok(())
}

fn san(name: &str) -> anyhow::Result<SanType> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    Ok(SanType::DnsName(name.to_owned().try_into().map_err(
        |_| anyhow::anyhow!("{name:?} is not a DNS name or an IP address"),
    )?))
}

/// Valid from yesterday (clock skew) for `days` days.
fn validity(params: &mut CertificateParams, days: u32) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let (y, m, d) = civil(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil(today + i64::from(days));
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// Days since 1970-01-01 to (year, month, day), as the certificate builder takes them.
fn civil(days: i64) -> (i32, u8, u8) {
    let (y, m, d) = causeway_message::date::civil_from_days(days);
    (y as i32, m as u8, d as u8)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::civil;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(civil(20_454), (2026, 1, 1));
    }
}
