//! The protocol sniff: what the peer speaks, told from the first bytes it sends.
//!
//! An MLLP receiver stays silent until it gets a frame and answers with `0x0B`. A TLS server
//! answers anything with a record starting `0x15 0x03` (alert) or `0x16 0x03` (handshake); a
//! web server or proxy with `HTTP/1.`; SSH, SMTP and FTP servers speak first. Those few bytes
//! tell a wrong port or a wrong `--tls` apart from a receiver that does not acknowledge.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::net;
use crate::report::{Check, Code, Verdict};
use crate::{fmt_duration, ms};

/// What the first bytes of an answer look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    /// A TLS record (handshake or alert).
    Tls,
    /// An HTTP response.
    Http,
    /// An MLLP frame (after optional padding).
    Mllp,
    /// An SSH identification string.
    Ssh,
    /// A line-oriented greeting (SMTP, FTP, POP, ...) or other printable text.
    Text,
    /// Something else.
    Other,
}

impl Heard {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Heard::Tls => "TLS",
            Heard::Http => "HTTP",
            Heard::Mllp => "MLLP",
            Heard::Ssh => "SSH",
            Heard::Text => "text",
            Heard::Other => "unknown bytes",
        }
    }
}

/// Classifies the first bytes of what a peer sent. `start` is the MLLP start byte.
pub(crate) fn classify(bytes: &[u8], start: u8) -> Option<Heard> {
    let first = *bytes.first()?;
    // TLS record: content type 20-23 (alert 21, handshake 22), then major version 3.
    if (20..=23).contains(&first) && bytes.get(1).is_none_or(|b| *b == 3) {
        return Some(Heard::Tls);
    }
    if bytes.starts_with(b"HTTP/") {
        return Some(Heard::Http);
    }
    if bytes.starts_with(b"SSH-") {
        return Some(Heard::Ssh);
    }
    // MLLP receivers may send padding (NUL, CR, LF, space, tab) before a frame.
    let after_padding = bytes
        .iter()
        .find(|b| !matches!(b, 0 | b'\r' | b'\n' | b' ' | b'\t'));
    if after_padding == Some(&start) {
        return Some(Heard::Mllp);
    }
    if bytes
        .iter()
        .take(16)
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return Some(Heard::Text);
    }
    Some(Heard::Other)
}

/// Up to 32 bytes as hex, and as text when they are printable: evidence for a person.
pub(crate) fn show(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(32)];
    let hex: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = shown
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    format!(
        "{}{} {:?}",
        hex.join(" "),
        if bytes.len() > shown.len() { " .." } else { "" },
        text
    )
}

/// What one probe connection heard.
#[derive(Debug)]
pub(crate) struct Probe {
    /// The first bytes of the answer; empty for silence, a hang-up or an error.
    pub head: Vec<u8>,
    pub elapsed: Duration,
}

/// Opens a fresh connection, writes `payload` and returns the first bytes of the answer.
pub(crate) async fn probe(addr: SocketAddr, payload: &[u8], wait: Duration) -> Probe {
    let started = Instant::now();
    let done = |head: Vec<u8>| Probe {
        head,
        elapsed: started.elapsed(),
    };
    let Ok(mut stream) = net::connect(addr, wait).await else {
        return done(Vec::new());
    };
    if stream.write_all(payload).await.is_err() {
        return done(Vec::new());
    }
    let mut buf = vec![0u8; 256];
    match timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(n)) => {
            buf.truncate(n);
            done(buf)
        }
        _ => done(Vec::new()),
    }
}

/// What the peer said before we said anything.
#[derive(Debug)]
pub(crate) enum Banner {
    /// Nothing: as an MLLP receiver should.
    Quiet,
    /// Bytes (the peer speaks first).
    Spoke(Vec<u8>),
    /// The peer closed (or reset) the connection at once.
    Closed(Option<io::Error>),
}

/// Waits `wait` for the peer to speak first.
pub(crate) async fn banner(stream: &mut tokio::net::TcpStream, wait: Duration) -> Banner {
    let mut buf = vec![0u8; 256];
    match timeout(wait, stream.read(&mut buf)).await {
        Err(_) => Banner::Quiet,
        Ok(Ok(0)) => Banner::Closed(None),
        Ok(Ok(n)) => {
            buf.truncate(n);
            Banner::Spoke(buf)
        }
        Ok(Err(e)) => Banner::Closed(Some(e)),
    }
}

/// The check for a peer that spoke first or closed at once; `None` for a quiet one.
pub(crate) fn banner_check(banner: &Banner, start: u8, wait: Duration) -> Option<Check> {
    match banner {
        Banner::Quiet => None,
        Banner::Spoke(bytes) => {
            let heard = classify(bytes, start).unwrap_or(Heard::Other);
            let what = match heard {
                Heard::Ssh => "an SSH server",
                Heard::Http => "an HTTP server",
                Heard::Text => "a text protocol (SMTP, FTP, POP, a telnet menu, ...)",
                _ => "a protocol that speaks first",
            };
            Some(
                Check::new(
                    "proto",
                    Verdict::Fail,
                    if heard == Heard::Http {
                        Code::ProtoHttp
                    } else {
                        Code::ProtoBanner
                    },
                    format!("the peer spoke first, like {what}: {}", show(bytes)),
                )
                .hint(
                    "An MLLP receiver waits for the sender's message and never speaks first: \
                     this port belongs to another service. Check the port number with the \
                     receiver's team.",
                )
                .with("heard", heard.name())
                .with("bytes", show(bytes)),
            )
        }
        Banner::Closed(error) => Some(
            Check::new(
                "proto",
                Verdict::Fail,
                Code::ProtoClosed,
                format!(
                    "the peer accepted the connection and closed it within {}{}",
                    fmt_duration(wait),
                    error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
            )
            .hint(
                "Receivers close at once when the sender's address is not on their allowlist, \
                 when they are at their connection limit, or when a load balancer has no \
                 healthy backend. Ask the receiver's team to check their log for this source \
                 address.",
            ),
        ),
    }
}

/// The check for a port that answered our plain MLLP with something else; `None` for MLLP.
pub(crate) fn plain_answer_check(head: &[u8], start: u8, elapsed: Duration) -> Option<Check> {
    let heard = classify(head, start)?;
    let (code, summary, hint) = match heard {
        Heard::Mllp => return None,
        Heard::Tls => (
            Code::ProtoTlsExpected,
            "the peer answered our plain MLLP with TLS",
            "This port expects TLS: run again with --tls (and --ca with the CA that signs the \
             receiver's certificate), and configure the sender for TLS.",
        ),
        Heard::Http => (
            Code::ProtoHttp,
            "the peer answered with HTTP",
            "A web server or HTTP proxy listens here, not an MLLP receiver: a wrong port, or a \
             load balancer configured for HTTP instead of TCP. Check the port and the balancer's \
             listener type.",
        ),
        Heard::Ssh | Heard::Text | Heard::Other => (
            Code::ProtoUnknown,
            "the peer answered with bytes that are not MLLP",
            "The receiver does not frame its answers with MLLP (0x0B ... 0x1C 0x0D), or another \
             service listens on this port. Check the port and the receiver's framing settings.",
        ),
    };
    Some(
        Check::new(
            "proto",
            Verdict::Fail,
            code,
            format!("{summary} after {}: {}", fmt_duration(elapsed), show(head)),
        )
        .hint(hint)
        .with("heard", heard.name())
        .with("bytes", show(head))
        .with("elapsed_ms", ms(elapsed)),
    )
}

/// The check for a port that answered our TLS ClientHello with something that is not TLS.
pub(crate) fn tls_answer_check(head: &[u8], start: u8, what: &str) -> Check {
    let heard = classify(head, start).unwrap_or(Heard::Other);
    let (code, hint) = match heard {
        Heard::Http => (
            Code::ProtoHttp,
            "A web server or HTTP proxy listens here, not an MLLP receiver.",
        ),
        _ => (
            Code::ProtoPlainExpected,
            "This port speaks plain MLLP, not TLS: run again without --tls, or ask the \
             receiver's team for their TLS port. Do not send patient data in clear text over \
             networks you do not control: use a VPN or TLS.",
        ),
    };
    Check::new(
        "proto",
        Verdict::Fail,
        code,
        format!("{what}: {}", show(head)),
    )
    .hint(hint)
    .with("heard", heard.name())
    .with("bytes", show(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b"", 0x0b), None);
        assert_eq!(
            classify(&[0x15, 0x03, 0x03, 0, 2, 2, 50], 0x0b),
            Some(Heard::Tls)
        );
        assert_eq!(classify(&[0x16, 0x03, 0x01], 0x0b), Some(Heard::Tls));
        assert_eq!(
            classify(b"HTTP/1.1 400 Bad Request\r\n", 0x0b),
            Some(Heard::Http)
        );
        assert_eq!(classify(b"\x0bMSH|^~\\&|", 0x0b), Some(Heard::Mllp));
        assert_eq!(classify(b"\r\n\x0bMSH|", 0x0b), Some(Heard::Mllp));
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n", 0x0b), Some(Heard::Ssh));
        assert_eq!(classify(b"220 mail ESMTP\r\n", 0x0b), Some(Heard::Text));
        assert_eq!(classify(&[0xff, 0xfe, 0x01], 0x0b), Some(Heard::Other));
    }

    #[test]
    fn shows_hex_and_text() {
        assert_eq!(show(b"HT\x01"), "48 54 01 \"HT.\"");
    }
}
