//! What the doctor found: one [`Check`] per step, each with a [`Verdict`], a stable [`Code`],
//! the evidence and a hint, gathered in a [`Report`].
//!
//! The codes are a public interface: scripts and the gateway's admin API match on them, so a
//! code is never renamed or reused for another meaning. New codes may be added.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Not run: an earlier check failed.
    Skip,
    /// Everything as it should be.
    Pass,
    /// Messages get through, but something needs attention.
    Warn,
    /// Messages do not get through; the checks stopped here.
    Fail,
}

impl Verdict {
    /// `pass`, `warn`, `fail` or `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Skip => "skip",
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = $text:literal, )*) => {
        /// The stable, machine-readable name of a finding (`tcp.refused`, `ok`, ...).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Code {
            $( $(#[$doc])* $variant, )*
        }

        impl Code {
            /// Every code, in documentation order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as written in JSON and in the human output.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Code::$variant => $text, )*
                }
            }
        }
    };
}

codes! {
    /// The check passed.
    Ok = "ok",
    /// The check was not run because an earlier one failed.
    Skipped = "skipped",
    /// The doctor's own input is unusable: target, --message file, TLS files.
    ConfigInvalid = "config.invalid",
    /// The host name does not resolve (or resolves to no address).
    DnsFail = "dns.fail",
    /// The name resolved, but the lookup took more than a second.
    DnsSlow = "dns.slow",
    /// The kernel has no route to any of the addresses.
    RouteNone = "route.none",
    /// Some addresses have no route; others do.
    RoutePartial = "route.partial",
    /// Connection refused: nothing listens on the port, or a firewall rejects.
    TcpRefused = "tcp.refused",
    /// Connection timed out: packets are dropped on the way.
    TcpTimeout = "tcp.timeout",
    /// Host or network unreachable (ICMP from a router, or no neighbour answers).
    TcpUnreachable = "tcp.unreachable",
    /// Another connection error (see the evidence).
    TcpError = "tcp.error",
    /// One address connects, another does not.
    TcpPartial = "tcp.partial",
    /// The peer answered our plain MLLP with TLS: use --tls.
    ProtoTlsExpected = "proto.tls_expected",
    /// The peer answered our TLS ClientHello with something that is not TLS: drop --tls.
    ProtoPlainExpected = "proto.plain_expected",
    /// The peer speaks HTTP: wrong port, or a web server or proxy in the way.
    ProtoHttp = "proto.http",
    /// The peer sent bytes before we said anything (SSH, SMTP, FTP, ... banner).
    ProtoBanner = "proto.banner",
    /// The peer accepted the connection and closed it without a word.
    ProtoClosed = "proto.closed",
    /// The peer answered neither TLS nor plain MLLP.
    ProtoSilent = "proto.silent",
    /// The peer answered with bytes no known protocol starts with.
    ProtoUnknown = "proto.unknown",
    /// The server certificate has expired (or is not valid yet).
    TlsExpired = "tls.expired",
    /// The server certificate expires within 30 days.
    TlsExpiring = "tls.expiring",
    /// The server certificate is not signed by a CA we trust (--ca).
    TlsUntrusted = "tls.untrusted",
    /// The server certificate is not valid for the name we connect to.
    TlsHostname = "tls.hostname",
    /// The server certificate does not match --pin.
    TlsPinMismatch = "tls.pin_mismatch",
    /// The server certificate is malformed or unusable for a server.
    TlsBadCertificate = "tls.bad_certificate",
    /// No --ca or --pin: the chain was shown but not verified.
    TlsUnverified = "tls.unverified",
    /// The server requires a client certificate and we have none (--cert/--key).
    TlsClientCertRequired = "tls.client_cert_required",
    /// The server refused the client certificate we presented.
    TlsClientCertRejected = "tls.client_cert_rejected",
    /// The handshake failed for another reason (versions, ciphers, alert; see the evidence).
    TlsHandshake = "tls.handshake",
    /// The handshake did not finish in time.
    TlsTimeout = "tls.timeout",
    /// No ACK came back within the timeout.
    MllpNoAck = "mllp.no_ack",
    /// The reply is badly framed: missing end block, truncated, stray bytes, missing CR.
    MllpBadFrame = "mllp.bad_frame",
    /// The reply is not a usable HL7 ACK (no MSA, unknown MSA-1, unparsable).
    MllpBadAck = "mllp.bad_ack",
    /// The ACK acknowledges another message: MSA-2 is not our MSH-10.
    MllpControlIdMismatch = "mllp.control_id_mismatch",
    /// The receiver answered AE/AR (CE/CR): transport works, the message was not accepted.
    MllpNack = "mllp.nack",
    /// The ACK's MSH-5/MSH-6 are not our MSH-3/MSH-4 (sender and receiver not swapped).
    MllpAckHeader = "mllp.ack_header",
    /// The receiver closed the connection instead of answering.
    MllpClosed = "mllp.closed",
    /// Writing or reading failed mid-exchange (reset, TLS alert).
    MllpIo = "mllp.io",
    /// Small messages pass, larger ones stall: an MTU / fragmentation black hole.
    PathMtuBlackhole = "path.mtu_blackhole",
    /// The receiver refused messages above a size (AR/AE or closed), a size limit.
    SizeLimit = "size.limit",
    /// Round trips are slow (90th percentile above 2 s).
    LatencySlow = "latency.slow",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The outcome of one step.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Check {
    /// The step: `config`, `dns`, `route`, `tcp`, `proto`, `tls`, `mllp`, `size`, `latency`.
    pub name: &'static str,
    /// Pass, warn, fail or skip.
    pub verdict: Verdict,
    /// The stable finding code; `ok` when it passed.
    pub code: Code,
    /// One line of evidence for a person: addresses, timings, bytes seen.
    pub summary: String,
    /// What to do about it, in plain words; absent when there is nothing to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The same evidence, structured (field names are stable per check).
    pub evidence: Map<String, Value>,
}

impl Check {
    /// A check with no hint and no structured evidence yet.
    pub fn new(
        name: &'static str,
        verdict: Verdict,
        code: Code,
        summary: impl Into<String>,
    ) -> Self {
        Self {
            name,
            verdict,
            code,
            summary: summary.into(),
            hint: None,
            evidence: Map::new(),
        }
    }

    /// A passing check.
    pub fn pass(name: &'static str, summary: impl Into<String>) -> Self {
        Self::new(name, Verdict::Pass, Code::Ok, summary)
    }

    /// Adds the hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds one piece of structured evidence.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.evidence.insert(key.to_owned(), value.into());
        self
    }
}

/// Everything the doctor found about one target.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The target as given (`host:port`).
    pub target: String,
    /// The worst verdict of all checks.
    pub verdict: Verdict,
    /// The code of the failing check, else of the first warning, else `ok`.
    pub code: Code,
    /// Wall time of the whole run, in milliseconds.
    pub elapsed_ms: f64,
    /// The checks in the order they ran, skipped ones included.
    pub checks: Vec<Check>,
}

impl Report {
    /// Builds the report; after a failure, the `planned` steps that did not run are listed as
    /// skipped.
    pub(crate) fn new(
        target: &str,
        mut checks: Vec<Check>,
        planned: &[&'static str],
        elapsed_ms: f64,
    ) -> Self {
        if checks.iter().any(|c| c.verdict == Verdict::Fail) {
            let ran: Vec<&str> = checks.iter().map(|c| c.name).collect();
            for step in planned.iter().filter(|s| !ran.contains(s)) {
                checks.push(Check::new(
                    step,
                    Verdict::Skip,
                    Code::Skipped,
                    "not run: an earlier check failed",
                ));
            }
        }
        let verdict = checks
            .iter()
            .map(|c| c.verdict)
            .max()
            .unwrap_or(Verdict::Pass)
            .max(Verdict::Pass);
        let code = [Verdict::Fail, Verdict::Warn]
            .iter()
            .find_map(|v| checks.iter().find(|c| c.verdict == *v))
            .map_or(Code::Ok, |c| c.code);
        Self {
            target: target.to_owned(),
            verdict,
            code,
            elapsed_ms,
            checks,
        }
    }

    /// The check named `name`, if it ran (or was listed as skipped).
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_dotted() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            let s = code.as_str();
            assert!(
                s == "ok" || s == "skipped" || s.contains('.'),
                "{s} lacks a step prefix"
            );
        }
        assert_eq!(
            serde_json::to_string(&Code::TcpRefused).unwrap(),
            "\"tcp.refused\""
        );
    }

    #[test]
    fn report_takes_worst_verdict_and_lists_skipped_steps() {
        let checks = vec![
            Check::pass("dns", "1 address"),
            Check::new("route", Verdict::Warn, Code::RoutePartial, "x"),
            Check::new("tcp", Verdict::Fail, Code::TcpRefused, "refused"),
        ];
        let planned = [
            "dns", "route", "tcp", "proto", "tls", "mllp", "size", "latency",
        ];
        let report = Report::new("h:1", checks, &planned, 1.0);
        assert_eq!(report.verdict, Verdict::Fail);
        assert_eq!(report.code, Code::TcpRefused);
        let names: Vec<_> = report.checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "dns", "route", "tcp", "proto", "tls", "mllp", "size", "latency"
            ]
        );
        assert_eq!(report.check("size").unwrap().code, Code::Skipped);

        let report = Report::new("h:1", vec![Check::pass("dns", "ok")], &planned, 1.0);
        assert_eq!((report.verdict, report.code), (Verdict::Pass, Code::Ok));
    }
}
