//! `causeway doctor`: check the path to an MLLP receiver and say what is wrong.
//!
//! The checks live in `causeway-doctor`; this module turns flags into its settings and its
//! report into lines or JSON and an exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use causeway_doctor::{DEFAULT_LADDER, DoctorSettings, Report, Verdict};
use causeway_mllp::tls::ClientTlsSettings;

use super::common::{ClientTlsArgs, parse_duration};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The receiver, HOST:PORT (IPv6 as [::1]:2575). Or use --destination with --config.
    #[arg(
        value_name = "HOST:PORT",
        required_unless_present = "destination",
        conflicts_with = "destination"
    )]
    target: Option<String>,

    /// Check this MLLP destination of the configuration, with its address and TLS settings.
    #[arg(long, value_name = "NAME", requires = "config")]
    destination: Option<String>,

    /// The configuration file holding --destination.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Send this message once for the round trip instead of the built-in test message (an
    /// NMD^N02 with processing id T and no patient data). It needs an MSH-10. The size ladder
    /// and latency always use the built-in message.
    #[arg(long, value_name = "FILE")]
    message: Option<PathBuf>,

    /// Longest wait for each step: DNS, connection, TLS handshake, each ACK (500ms, 5s).
    /// Larger ladder messages get extra time for the transfer at 2 Mbit/s.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,

    /// Largest message of the size ladder (1 KB, 4 KB, 16 KB, 64 KB, 256 KB, 1 MB, up to
    /// this); 0 skips the ladder.
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    max_size: usize,

    /// Round trips timed for the latency check; 0 skips it.
    #[arg(long, default_value_t = 5, value_name = "N")]
    samples: usize,

    /// Print the report as JSON.
    #[arg(long)]
    json: bool,

    /// Mark verdicts with ASCII (ok, !!, XX) instead of ✓ ! ✗.
    #[arg(long)]
    ascii: bool,

    #[command(flatten)]
    tls: ClientTlsArgs,
}

pub async fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let mut settings = DoctorSettings::default();
    settings.timeout = args.timeout;
    settings.ladder = DEFAULT_LADDER
        .iter()
        .copied()
        .filter(|size| *size <= args.max_size)
        .collect();
    settings.latency_samples = args.samples;
    settings.tls = tls_settings(&args.tls);
    if let Some(path) = &args.message {
        // Exit 2, not the generic 1: for doctor, 1 means "warnings only".
        match std::fs::read(path) {
            Ok(bytes) => settings.message = Some(normalize(&bytes)),
            Err(e) => {
                eprintln!("causeway: error: cannot read {}: {e}", path.display());
                return Ok(ExitCode::from(2));
            }
        }
    }
    let target = match (&args.target, &args.destination, &args.config) {
        (Some(t), _, _) => t.clone(),
        (None, Some(name), Some(path)) => {
            let config = match super::serve::load(Some(path)) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            match causeway_gateway::doctor::target(&config, name) {
                Ok((to, tls)) => {
                    if tls.is_some() {
                        settings.tls = tls;
                    }
                    to
                }
                Err(e) => {
                    eprintln!("causeway: {}: {e}", path.display());
                    return Ok(ExitCode::from(2));
                }
            }
        }
        // clap enforces a target or --destination with --config.
        _ => unreachable!("clap requires HOST:PORT or --destination with --config"),
    };
    let report = causeway_doctor::run(&target, settings).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, args.ascii || !utf8_terminal()));
    }
    Ok(exit_code(report.verdict))
}

/// 0 pass, 1 warnings only, 2 a check failed: the convention of monitoring plugins.
fn exit_code(verdict: Verdict) -> ExitCode {
    match verdict {
        Verdict::Pass | Verdict::Skip => ExitCode::SUCCESS,
        Verdict::Warn => ExitCode::from(1),
        Verdict::Fail => ExitCode::from(2),
    }
}

/// The TLS flags as doctor settings. Unlike `send`, `--tls` alone is allowed: the chain is
/// then shown but not verified.
fn tls_settings(args: &ClientTlsArgs) -> Option<ClientTlsSettings> {
    if !(args.tls || args.ca.is_some() || args.pin.is_some() || args.cert.is_some()) {
        return None;
    }
    let mut settings = ClientTlsSettings::default();
    settings.server_name = args.server_name.clone();
    settings.ca_path = args.ca.clone();
    settings.pin = args.pin;
    settings.client_cert_path = args.cert.clone();
    settings.client_key_path = args.key.clone();
    Some(settings)
}

fn utf8_terminal() -> bool {
    ["LC_ALL", "LC_CTYPE", "LANG"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .is_some_and(|s| {
            let s = s.to_ascii_lowercase();
            s.contains("utf-8") || s.contains("utf8")
        })
}

/// One line per check: mark, name, evidence, code; the hint below it.
fn render(report: &Report, ascii: bool) -> String {
    let mark = |v: Verdict| match (v, ascii) {
        (Verdict::Pass, false) => "✓",
        (Verdict::Warn, false) => "!",
        (Verdict::Fail, false) => "✗",
        (Verdict::Skip, false) => "-",
        (Verdict::Pass, true) => "ok",
        (Verdict::Warn, true) => "!!",
        (Verdict::Fail, true) => "XX",
        (Verdict::Skip, true) => "--",
    };
    let mut out = format!("causeway doctor {}\n", report.target);
    for check in &report.checks {
        let code = match check.verdict {
            Verdict::Warn | Verdict::Fail => format!("  [{}]", check.code),
            Verdict::Pass | Verdict::Skip => String::new(),
        };
        out.push_str(&format!(
            "{:>2} {:<8}{}{code}\n",
            mark(check.verdict),
            check.name,
            check.summary
        ));
        if let Some(hint) = &check.hint {
            out.push_str(&format!("{:11}-> {hint}\n", ""));
        }
    }
    out.push_str(&format!(
        "{} ({}) in {:.1}s\n",
        report.verdict.as_str().to_uppercase(),
        report.code,
        report.elapsed_ms / 1000.0
    ));
    out
}

/// Drops a leading BOM and blank lines, and ends every segment with CR, as `send` does.
fn normalize(msg: &[u8]) -> Vec<u8> {
    let msg = msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg);
    let mut out = Vec::with_capacity(msg.len() + 1);
    for line in msg.split(|&b| b == b'\r' || b == b'\n') {
        if line.iter().all(|&b| b <= b' ') {
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\r');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_monitoring_convention() {
        assert_eq!(exit_code(Verdict::Pass), ExitCode::SUCCESS);
        assert_eq!(exit_code(Verdict::Warn), ExitCode::from(1));
        assert_eq!(exit_code(Verdict::Fail), ExitCode::from(2));
    }

    #[test]
    fn normalizes_line_endings() {
        assert_eq!(normalize(b"MSH|a\r\nPID|1\n"), b"MSH|a\rPID|1\r");
    }
}
