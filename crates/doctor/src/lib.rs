//! Causeway doctor: why HL7 messages do not get through to an MLLP receiver, in plain words.
//!
//! [`run`] walks the path to a receiver one step at a time and stops at the first step that
//! fails: DNS, the route the kernel picks, the TCP connection, what protocol the port speaks,
//! TLS (when asked for), one MLLP round trip with a harmless test message, a ladder of message
//! sizes from 1 KB to 1 MB (to find MTU black holes), and round-trip latency. Each step
//! becomes a [`Check`] with a [`Verdict`], a stable [`Code`] (`tcp.refused`,
//! `path.mtu_blackhole`, `ok`, ...), the evidence (addresses, timings, bytes seen) and a hint
//! of what to do. The [`Report`] serializes to JSON for scripts and the gateway's admin API.
//!
//! What it is not: a load test or a conformance test. It sends few messages (one per ladder
//! size, a handful for latency), all but `--message` the built-in test message described in
//! the `mllp` module (an NMD^N02 in test mode, without patient data). It reads the
//! clock and does I/O; the judging of what it saw is in plain functions tested without
//! a network.
//!
//! ```no_run
//! # async fn example() {
//! let report = causeway_doctor::run("lab.example:2575", causeway_doctor::DoctorSettings::default()).await;
//! println!("{}: {}", report.verdict.as_str(), report.code);
//! # }
//! ```
//!
//! # Layout
//! - [`report`]: [`Verdict`], [`Code`], [`Check`], [`Report`].
//! - `net`: target parsing, DNS, routes (source address and interface per address), TCP.
//! - `sniff`: telling TLS, HTTP, MLLP and banners apart from the first bytes.
//! - `tls`: a handshake that records the chain and the verdict instead of failing.
//! - `mllp`: the test message, one exchange, the ACK checks, the size ladder, latency.
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use causeway_mllp::ack::{ControlIds, hl7_timestamp};
use causeway_mllp::frame::FramingOptions;
use causeway_mllp::tls::ClientTlsSettings;
use tokio::net::TcpStream;

mod mllp;
mod net;
pub mod report;
mod sniff;
mod tls;

pub use mllp::DEFAULT_LADDER;
pub use net::Target;
pub use report::{Check, Code, Report, Verdict};

use mllp::{Session, TestMessage};
use sniff::Heard;

/// What to check and how long to wait.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DoctorSettings {
    /// Longest wait for each step: the DNS answer, each connection, the TLS handshake, each
    /// ACK (larger ladder messages get extra time, see `size`). Default 5 s.
    pub timeout: Duration,
    /// TLS, `None` for plain MLLP. Without a CA bundle or pin the chain is shown but not
    /// verified (reported as `tls.unverified`).
    pub tls: Option<ClientTlsSettings>,
    /// A message to send for the round trip instead of the built-in test message. Sent once,
    /// as is; it needs an MSH-10.
    pub message: Option<Vec<u8>>,
    /// Message sizes of the ladder, in bytes; empty skips the step. Default
    /// [`DEFAULT_LADDER`] (1 KB to 1 MB).
    pub ladder: Vec<usize>,
    /// Round trips timed for the latency step; 0 skips it. Default 5.
    pub latency_samples: usize,
    /// How long to listen for a peer that speaks first, before sending. Default 250 ms.
    pub banner_wait: Duration,
    /// A certificate expiring within this is a warning (`tls.expiring`). Default 30 days.
    pub expiry_warning: Duration,
    /// Framing bytes and the largest reply accepted.
    pub framing: FramingOptions,
}

impl Default for DoctorSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            tls: None,
            message: None,
            ladder: DEFAULT_LADDER.to_vec(),
            latency_samples: 5,
            banner_wait: Duration::from_millis(250),
            expiry_warning: Duration::from_secs(30 * 86_400),
            framing: FramingOptions::default(),
        }
    }
}

/// Examines `target` (`host:port`) and reports every step up to the first failure.
///
/// Never fails: a problem with the settings themselves (an unreadable CA file, a `--message`
/// that is not HL7) is reported as a `config.invalid` check.
pub async fn run(target: &str, settings: DoctorSettings) -> Report {
    let started = Instant::now();
    let mut planned = vec!["dns", "route", "tcp", "proto"];
    if settings.tls.is_some() {
        planned.push("tls");
    }
    planned.push("mllp");
    if !settings.ladder.is_empty() {
        planned.push("size");
    }
    if settings.latency_samples > 0 {
        planned.push("latency");
    }
    let mut doctor = Doctor {
        settings,
        checks: Vec::new(),
        ids: ControlIds::new(),
    };
    let _ = doctor.examine(target).await;
    Report::new(target, doctor.checks, &planned, ms(started.elapsed()))
}

/// One run's state: the settings and the checks so far.
struct Doctor {
    settings: DoctorSettings,
    checks: Vec<Check>,
    ids: ControlIds,
}

/// How to open another connection like the first (the receiver may close after each message).
enum Connector<'a> {
    Plain,
    Tls(&'a tls::Prepared),
}

impl Connector<'_> {
    async fn open(&self, addr: SocketAddr, settings: &DoctorSettings) -> Option<Session> {
        let tcp = net::connect(addr, settings.timeout).await.ok()?;
        let stream: Box<dyn mllp::Io> = match self {
            Connector::Plain => Box::new(tcp),
            Connector::Tls(prepared) => Box::new(
                prepared
                    .handshake(tcp, settings.timeout)
                    .await
                    .result
                    .ok()?,
            ),
        };
        Some(Session::new(stream, addr, &settings.framing))
    }
}

/// `None`: stop, a check failed.
type Step<T = ()> = Option<T>;

/// The HTTP probe: a request any web server answers at once.
const HTTP_PROBE: &[u8] = b"HEAD / HTTP/1.0\r\n\r\n";

impl Doctor {
    /// Records a check; `None` when it failed, so `?` stops the run.
    fn push(&mut self, check: Check) -> Step {
        let failed = check.verdict == Verdict::Fail;
        self.checks.push(check);
        (!failed).then_some(())
    }

    fn config(&mut self, what: String) -> Step<std::convert::Infallible> {
        self.push(
            Check::new("config", Verdict::Fail, Code::ConfigInvalid, what)
                .hint("Fix the command line or the files it names, then run again."),
        );
        None
    }

    fn builtin(&self, size: usize) -> TestMessage {
        TestMessage::builtin(&self.ids.next_id(), &hl7_timestamp(SystemTime::now()), size)
    }

    fn start_byte(&self) -> u8 {
        self.settings.framing.start_byte
    }

    /// Waits for probes on fresh connections: short, they only need a first answer.
    fn probe_wait(&self) -> Duration {
        self.settings.timeout.min(Duration::from_secs(2))
    }

    async fn examine(&mut self, target_text: &str) -> Step {
        let target = match target_text.parse::<Target>() {
            Ok(t) => t,
            Err(e) => match self.config(e)? {},
        };
        let first = match self.settings.message.clone().map(TestMessage::user) {
            None => self.builtin(0),
            Some(Ok(m)) => m,
            Some(Err(e)) => match self.config(e)? {},
        };
        let prepared = match self
            .settings
            .tls
            .as_ref()
            .map(|t| tls::Prepared::load(t, &target.host))
        {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => match self.config(e)? {},
        };
        let timeout = self.settings.timeout;

        let (check, addrs) = net::resolve(&target, timeout).await;
        self.push(check)?;
        let (check, addrs) = net::routes(&addrs);
        self.push(check)?;
        let (check, connected) = net::tcp(&target, &addrs, timeout).await;
        self.push(check)?;
        let (addr, mut tcp) = connected?;

        let banner = sniff::banner(&mut tcp, self.settings.banner_wait).await;
        if let Some(check) =
            sniff::banner_check(&banner, self.start_byte(), self.settings.banner_wait)
        {
            self.push(check)?;
        }

        let (mut session, connector) = match &prepared {
            None => (
                self.plain_first(&target, addr, tcp, &first).await?,
                Connector::Plain,
            ),
            Some(p) => (
                self.tls_first(addr, tcp, p, &first).await?,
                Connector::Tls(p),
            ),
        };
        if !self.settings.ladder.is_empty() {
            self.ladder(&mut session, &connector, first.bytes.len())
                .await?;
        }
        if self.settings.latency_samples > 0 {
            self.latency(&mut session, &connector).await?;
        }
        session.close().await;
        Some(())
    }

    /// Plain mode: the first message is both the protocol sniff and the MLLP round trip.
    async fn plain_first(
        &mut self,
        target: &Target,
        addr: SocketAddr,
        tcp: TcpStream,
        first: &TestMessage,
    ) -> Step<Session> {
        let timeout = self.settings.timeout;
        let mut session = Session::new(Box::new(tcp), addr, &self.settings.framing);
        let ex = session.exchange(&first.bytes, timeout).await;
        if let Some(mut check) = sniff::plain_answer_check(&ex.head, self.start_byte(), ex.elapsed)
        {
            if check.code == Code::ProtoTlsExpected {
                check = self.describe_tls(check, target, addr).await;
            }
            self.push(check)?;
        }
        let heard = sniff::classify(&ex.head, self.start_byte());
        if heard.is_none() {
            // Silence or a hang-up tells nothing about the protocol: ask in TLS and HTTP.
            let wait = self.probe_wait();
            if let Some(hello) = tls::inspector(&target.host).map(|p| p.client_hello()) {
                let probe = sniff::probe(addr, &hello, wait).await;
                if sniff::classify(&probe.head, self.start_byte()) == Some(Heard::Tls) {
                    let check = Check::new(
                        "proto",
                        Verdict::Fail,
                        Code::ProtoTlsExpected,
                        format!(
                            "our plain MLLP got no answer, but a TLS ClientHello got a TLS answer in {}",
                            fmt_duration(probe.elapsed)
                        ),
                    )
                    .hint(
                        "This port expects TLS: run again with --tls (and --ca with the CA that \
                         signs the receiver's certificate), and configure the sender for TLS.",
                    )
                    .with("bytes", sniff::show(&probe.head));
                    let check = self.describe_tls(check, target, addr).await;
                    self.push(check)?;
                }
            }
            let probe = sniff::probe(addr, HTTP_PROBE, wait).await;
            if sniff::classify(&probe.head, self.start_byte()) == Some(Heard::Http) {
                self.push(
                    Check::new(
                        "proto",
                        Verdict::Fail,
                        Code::ProtoHttp,
                        format!(
                            "our MLLP message got no answer, but an HTTP request got {}",
                            sniff::show(&probe.head)
                        ),
                    )
                    .hint(
                        "A web server or HTTP proxy listens here, not an MLLP receiver: a wrong \
                         port, or a load balancer configured for HTTP instead of TCP.",
                    )
                    .with("bytes", sniff::show(&probe.head)),
                )?;
            }
            self.push(Check::pass(
                "proto",
                "no answer to our MLLP message; not TLS and not HTTP either",
            ))?;
        } else {
            self.push(
                Check::pass(
                    "proto",
                    format!(
                        "MLLP: the reply started with 0x0b after {}",
                        fmt_duration(ex.elapsed)
                    ),
                )
                .with("heard", "MLLP"),
            )?;
        }
        let judged = mllp::judge("mllp", &ex, first, timeout);
        self.push(judged.check)?;
        Some(session)
    }

    /// Adds what a TLS server presents to a `proto.tls_expected` check.
    async fn describe_tls(&self, check: Check, target: &Target, addr: SocketAddr) -> Check {
        let Some(inspector) = tls::inspector(&target.host) else {
            return check;
        };
        let Ok(tcp) = net::connect(addr, self.settings.timeout).await else {
            return check;
        };
        let hs = inspector.handshake(tcp, self.settings.timeout).await;
        let Ok(stream) = &hs.result else {
            return check;
        };
        let seen = hs.judge(
            stream,
            &inspector,
            SystemTime::now(),
            self.settings.expiry_warning,
        );
        let mut check = check.with("tls", serde_json::Value::Object(seen.evidence.clone()));
        if let Some(leaf) = seen.evidence.get("chain").and_then(|c| c.get(0)) {
            let field = |k: &str| {
                leaf.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_owned()
            };
            check.summary.push_str(&format!(
                " (certificate {}, issued by {}, expires {})",
                field("subject"),
                field("issuer"),
                field("not_after")
            ));
        }
        check
    }

    /// TLS mode: handshake (the sniff), the certificate checks, then the first round trip.
    async fn tls_first(
        &mut self,
        addr: SocketAddr,
        tcp: TcpStream,
        prepared: &tls::Prepared,
        first: &TestMessage,
    ) -> Step<Session> {
        let timeout = self.settings.timeout;
        let start = self.start_byte();
        let mut hs = prepared.handshake(tcp, timeout).await;
        let result = std::mem::replace(&mut hs.result, Err(tls::HandshakeError::Timeout));
        let heard = sniff::classify(&hs.head, start);
        let error = match &result {
            Ok(_) => None,
            Err(tls::HandshakeError::Timeout) => Some(None),
            Err(tls::HandshakeError::Io(e)) => Some(Some(e)),
        };
        if let Some(error) = error {
            if heard.is_some_and(|h| h != Heard::Tls) {
                let what = "the peer answered our TLS ClientHello with something that is not TLS";
                self.push(sniff::tls_answer_check(&hs.head, start, what))?;
            }
            if heard.is_none() {
                // Nothing heard: does the port answer plain MLLP?
                let plain = self.builtin(0);
                let mut framed = bytes::BytesMut::new();
                let _ = causeway_mllp::frame::encode_message(
                    &plain.bytes,
                    &self.settings.framing,
                    &mut framed,
                );
                let probe = sniff::probe(addr, &framed, self.probe_wait()).await;
                let what = match error {
                    None => format!(
                        "our TLS ClientHello got no answer within {}",
                        fmt_duration(timeout)
                    ),
                    Some(_) => "the peer closed the connection on our TLS ClientHello".to_owned(),
                };
                match sniff::classify(&probe.head, start) {
                    Some(Heard::Mllp | Heard::Http) => {
                        let what = format!("{what}; plain MLLP on a new connection got an answer");
                        self.push(sniff::tls_answer_check(&probe.head, start, &what))?;
                    }
                    _ if error.is_none() => {
                        self.push(
                            Check::new(
                                "proto",
                                Verdict::Fail,
                                Code::ProtoSilent,
                                format!("{what}, and plain MLLP got none either"),
                            )
                            .hint(
                                "The port accepts connections but answers neither TLS nor MLLP: \
                                 the receiver is stuck, or a middlebox (proxy, IPS) holds the \
                                 traffic. Look at the receiver's log, try a longer --timeout.",
                            ),
                        )?;
                    }
                    _ => {
                        self.push(
                            Check::new("proto", Verdict::Fail, Code::ProtoClosed, what).hint(
                                "The server hangs up on our TLS handshake without a TLS alert: \
                                 it refuses this source address, or does not know the server \
                                 name we send (--server-name). Look at the receiver's log.",
                            ),
                        )?;
                    }
                }
            }
            // The server speaks TLS and refused the handshake.
            self.push(Check::pass(
                "proto",
                "TLS: the server answered with a TLS record",
            ))?;
            let check = match error {
                None => tls::timed_out(timeout),
                Some(e) => hs.failure_check(e).unwrap_or_else(|| {
                    Check::new(
                        "tls",
                        Verdict::Fail,
                        Code::TlsHandshake,
                        format!("TLS handshake failed: {e}"),
                    )
                }),
            };
            self.push(check)?;
            return None;
        }
        let Ok(stream) = result else { return None };
        self.push(Check::pass(
            "proto",
            "TLS: the server answered with a TLS handshake",
        ))?;
        let check = hs.judge(
            &stream,
            prepared,
            SystemTime::now(),
            self.settings.expiry_warning,
        );
        if check.verdict == Verdict::Fail {
            self.push(check);
            return None;
        }
        let mut session = Session::new(Box::new(stream), addr, &self.settings.framing);
        if hs.client_cert_asked() {
            // TLS 1.3 servers judge the client certificate after our side of the handshake
            // is done: their verdict arrives as an alert on the first read.
            let wait = timeout.min((hs.elapsed * 4).max(Duration::from_millis(500)));
            if let Err(e) = session.settle(wait).await
                && let Some(failure) = hs.failure_check(&e)
            {
                self.push(failure)?;
            }
        }
        self.push(check)?;
        let ex = session.exchange(&first.bytes, timeout).await;
        if let mllp::Outcome::ReadFailed(e) | mllp::Outcome::WriteFailed(e) = &ex.outcome
            && let Some(failure) = hs.failure_check(e)
        {
            self.push(failure)?;
        }
        let judged = mllp::judge("mllp", &ex, first, timeout);
        self.push(judged.check)?;
        Some(session)
    }

    /// Makes sure the session is open, reconnecting when the receiver closed it.
    async fn reopen(&self, session: &mut Session, connector: &Connector<'_>) -> bool {
        if session.is_open() {
            return true;
        }
        match connector.open(session.addr, &self.settings).await {
            Some(fresh) => {
                *session = fresh;
                true
            }
            None => false,
        }
    }

    async fn ladder(
        &mut self,
        session: &mut Session,
        connector: &Connector<'_>,
        first_size: usize,
    ) -> Step {
        let timeout = self.settings.timeout;
        let mut rungs = Vec::new();
        for size in self.settings.ladder.clone() {
            if !self.reopen(session, connector).await {
                break;
            }
            let msg = self.builtin(size);
            let wait = mllp::wait_for(size, timeout);
            let ex = session.exchange(&msg.bytes, wait).await;
            let judged = mllp::judge("size", &ex, &msg, wait);
            let rung = mllp::Rung::of(size, &ex, judged);
            let stop = !rung.judged.acknowledged;
            rungs.push(rung);
            if stop {
                break;
            }
        }
        self.push(mllp::ladder_check(&rungs, first_size, timeout))
    }

    async fn latency(&mut self, session: &mut Session, connector: &Connector<'_>) -> Step {
        let timeout = self.settings.timeout;
        let mut samples = Vec::new();
        for _ in 0..self.settings.latency_samples {
            if !self.reopen(session, connector).await {
                return self.push(Check::new(
                    "latency",
                    Verdict::Fail,
                    Code::MllpClosed,
                    "cannot reconnect to the receiver",
                ));
            }
            let msg = self.builtin(0);
            let ex = session.exchange(&msg.bytes, timeout).await;
            let judged = mllp::judge("latency", &ex, &msg, timeout);
            if !judged.acknowledged {
                return self.push(judged.check);
            }
            samples.push(ex.elapsed);
        }
        self.push(mllp::latency_check(&samples))
    }
}

// === Formatting helpers ===

/// Milliseconds with microsecond precision, for JSON evidence.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `0.4ms`, `12.3ms`, `1.50s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// `187 B`, `4 KB`, `1 MB` (binary multiples, as the ladder's sizes are).
pub(crate) fn fmt_size(n: usize) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MB", n / (1024 * 1024))
    } else if n >= 1024 {
        format!("{} KB", n / 1024)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_duration(Duration::from_micros(420)), "0.4ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.50s");
        assert_eq!(fmt_size(187), "187 B");
        assert_eq!(fmt_size(4096), "4 KB");
        assert_eq!(fmt_size(1024 * 1024), "1 MB");
        assert_eq!(ms(Duration::from_micros(1234)), 1.234);
    }
}

#[cfg(test)]
mod tests_tls;
