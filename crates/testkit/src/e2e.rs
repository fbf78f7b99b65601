//! End-to-end helpers for the gateway's tests: a blocking MLLP sender, a load of
//! stop-and-wait senders that survive the gateway being killed, readers of what each kind
//! of destination received, and the delivery check that compares the two.
//!
//! Everything here is synchronous (threads, blocking sockets with timeouts) and every wait
//! has a deadline, so a test that goes wrong fails with a message instead of hanging.

// Threads and blocking sockets only: there is no async runtime here to block.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// === MLLP ===

/// `payload` in an MLLP frame.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(0x0b);
    out.extend_from_slice(payload);
    out.extend_from_slice(&[0x1c, 0x0d]);
    out
}

/// One blocking MLLP connection.
#[derive(Debug)]
pub struct MllpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl MllpConn {
    /// Connects within `timeout`; every later read and write is bounded by `timeout` too.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<MllpConn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(MllpConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends `payload` framed and returns the reply's payload (without the frame bytes).
    pub fn send(&mut self, payload: &[u8]) -> std::io::Result<Vec<u8>> {
        self.send_raw(&frame(payload))
    }

    /// Writes `bytes` as they are (framed or not) and returns the next reply's payload.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        self.stream.write_all(bytes)?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> std::io::Result<Vec<u8>> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
                let start = self
                    .buf
                    .iter()
                    .position(|&b| b == 0x0b)
                    .map_or(0, |s| s + 1);
                let reply = self.buf[start.min(end)..end].to_vec();
                self.buf.drain(..end + 2);
                return Ok(reply);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if self.buf.len() > 1 << 20 {
                return Err(std::io::Error::other("reply larger than 1 MiB"));
            }
        }
    }
}

/// Field `n` (1-based, MSH-style numbering for MSH) of the first segment named `segment`,
/// with the field separator the message's MSH declares.
pub fn field(message: &[u8], segment: &str, n: usize) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    let sep = match text.strip_prefix("MSH") {
        Some(rest) => rest.chars().next()?,
        None => '|',
    };
    let seg = text
        .split(['\r', '\n'])
        .find(|s| s.starts_with(segment) && s[segment.len()..].starts_with(sep))?;
    // For MSH the field separator itself is MSH-1, so MSH-n is at index n - 1.
    let index = if segment == "MSH" { n - 1 } else { n };
    seg.split(sep).nth(index).map(str::to_owned)
}

/// MSA-1 of a reply.
pub fn ack_code(reply: &[u8]) -> Option<String> {
    field(reply, "MSA", 1)
}

// === the load ===

/// The message a load sender sends: deterministic bytes for (`sender`, `seq`), so that a
/// resend after a lost ACK is recognised by the gateway as the same message.
pub fn load_message(sender: usize, seq: u64) -> Vec<u8> {
    format!(
        "MSH|^~\\&|CRASH|S{sender}|CAUSEWAY|TEST|20261127120000||ADT^A01^ADT_A01|{}|P|2.5.1\r\
         EVN|A01|20261127120000\rPID|1||{seq}^^^MRN||DOE^JANE||19700101|F\r",
        load_control_id(sender, seq)
    )
    .into_bytes()
}

/// The control id of [`load_message`].
pub fn load_control_id(sender: usize, seq: u64) -> String {
    format!("S{sender}-{seq}")
}

/// Parses a [`load_control_id`].
pub fn parse_load_control_id(id: &str) -> Option<(usize, u64)> {
    let (s, seq) = id.strip_prefix('S')?.split_once('-')?;
    Some((s.parse().ok()?, seq.parse().ok()?))
}

/// How the load runs.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The gateway's channel.
    pub addr: SocketAddr,
    /// Concurrent senders, one connection each.
    pub senders: usize,
    /// Bound on connecting and on waiting for each ACK.
    pub timeout: Duration,
    /// Pause after each acknowledged message (keeps the volume, and so the drain, bounded).
    pub pause: Duration,
}

/// What the senders have done so far, readable while they run.
#[derive(Debug, Default)]
pub struct LoadProgress {
    /// AA replies received, all senders.
    pub acked: AtomicU64,
    /// Messages sent again after an error or a lost connection.
    pub resent: AtomicU64,
    /// Replies other than AA (each one is resent).
    pub not_accepted: AtomicU64,
}

/// Senders running in threads until [`Load::stop`].
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    progress: Arc<LoadProgress>,
    threads: Vec<JoinHandle<Vec<u64>>>,
}

impl Load {
    /// Starts the senders. Each sends `S<n>-<seq>` with seq 0, 1, 2, ...; it moves on to the
    /// next seq only after an AA, and resends the same bytes after any failure (no reply, a
    /// closed connection, a reply other than AA), reconnecting as needed.
    pub fn start(settings: &LoadSettings) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(LoadProgress::default());
        let threads = (0..settings.senders)
            .map(|sender| {
                let stop = stop.clone();
                let progress = progress.clone();
                let settings = settings.clone();
                std::thread::spawn(move || run_sender(sender, &settings, &stop, &progress))
            })
            .collect();
        Load {
            stop,
            progress,
            threads,
        }
    }

    /// Counters so far.
    pub fn progress(&self) -> &LoadProgress {
        &self.progress
    }

    /// Stops the senders (each finishes the exchange in hand, bounded by the timeout) and
    /// returns, per sender, the sequence numbers that got an AA, in order.
    ///
    /// # Panics
    /// When a sender thread panicked.
    pub fn stop(self) -> Vec<Vec<u64>> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("sender thread"))
            .collect()
    }
}

fn run_sender(
    sender: usize,
    settings: &LoadSettings,
    stop: &AtomicBool,
    progress: &LoadProgress,
) -> Vec<u64> {
    let mut acked = Vec::new();
    let mut seq = 0u64;
    let mut conn: Option<MllpConn> = None;
    let mut failed = false;
    while !stop.load(Ordering::SeqCst) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match MllpConn::connect(settings.addr, settings.timeout) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        if failed {
            progress.resent.fetch_add(1, Ordering::Relaxed);
        }
        match c.send(&load_message(sender, seq)) {
            Ok(reply) if ack_code(&reply).as_deref() == Some("AA") => {
                acked.push(seq);
                progress.acked.fetch_add(1, Ordering::SeqCst);
                seq += 1;
                failed = false;
                if !settings.pause.is_zero() {
                    std::thread::sleep(settings.pause);
                }
            }
            Ok(_) => {
                progress.not_accepted.fetch_add(1, Ordering::Relaxed);
                failed = true;
            }
            Err(_) => {
                conn = None;
                failed = true;
            }
        }
    }
    acked
}

// === what destinations received ===

/// Files of `dir` (not the hidden temporary ones), sorted by `key` of their names, with
/// their bytes. A missing directory holds nothing yet.
pub fn received_files<K: Ord>(dir: &Path, key: impl Fn(&str) -> K) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .filter_map(|name| {
            let bytes = std::fs::read(dir.join(&name)).ok()?;
            Some((name, bytes))
        })
        .collect();
    files.sort_by_key(|(name, _)| key(name));
    files
}

/// What `causeway listen --out DIR` stored, in arrival order (`<seq>_<control id>.hl7`).
pub fn listen_received(dir: &Path) -> Vec<Vec<u8>> {
    received_files(dir, str::to_owned)
        .into_iter()
        .map(|(_, b)| b)
        .collect()
}

/// What a file destination with `filename = "{id}-..."` wrote, in store order.
pub fn file_destination_received(dir: &Path) -> Vec<Vec<u8>> {
    received_files(dir, leading_number)
        .into_iter()
        .map(|(_, b)| b)
        .collect()
}

/// The number a file name starts with (`u64::MAX` when none).
pub fn leading_number(name: &str) -> u64 {
    let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(u64::MAX)
}

/// One request the HTTP sink (`python/http_sink.py`) took.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The body, as received.
    pub body: Vec<u8>,
    /// Header names (lower case) to values.
    pub headers: BTreeMap<String, String>,
}

/// What the HTTP sink stored in `dir`, in arrival order.
pub fn http_received(dir: &Path) -> Vec<HttpRequest> {
    received_files(dir, str::to_owned)
        .into_iter()
        .filter_map(|(name, body)| {
            let stem = name.strip_suffix(".body")?;
            let headers = std::fs::read(dir.join(format!("{stem}.headers"))).ok()?;
            let headers: BTreeMap<String, String> = serde_json::from_slice(&headers).ok()?;
            Some(HttpRequest { body, headers })
        })
        .collect()
}

/// Control ids (MSH-10) of `messages`, in order.
pub fn control_ids(messages: &[Vec<u8>]) -> Vec<String> {
    messages
        .iter()
        .map(|m| field(m, "MSH", 10).unwrap_or_default())
        .collect()
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// === the check ===

/// How one destination did against what the senders were told (AA).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Acknowledged messages.
    pub acked: usize,
    /// Distinct load messages that arrived.
    pub delivered: usize,
    /// Arrivals beyond the first of the same message (at-least-once allows them).
    pub duplicates: usize,
    /// Arrived though never acknowledged (stored, but the ACK was lost to a kill).
    pub delivered_unacked: usize,
    /// Acknowledged but never arrived: must be empty.
    pub missing: Vec<String>,
    /// A sender's messages whose first arrivals are out of order: must be empty.
    pub out_of_order: Vec<String>,
    /// Arrivals that are not load messages.
    pub foreign: usize,
}

impl DeliveryReport {
    /// Nothing lost, nothing reordered.
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.out_of_order.is_empty() && self.foreign == 0
    }
}

/// Compares `arrivals` (control ids in arrival order at one destination) with `acked`
/// (per sender, the sequence numbers that got an AA). Each sender's first arrivals must be in
/// increasing sequence order: a sender sends its next message only after the AA of the
/// previous one, so the store holds them in that order and a FIFO destination must keep it.
/// Across senders no order is promised beyond the store's.
pub fn check_delivery(acked: &[Vec<u64>], arrivals: &[String]) -> DeliveryReport {
    let mut report = DeliveryReport {
        acked: acked.iter().map(Vec::len).sum(),
        ..DeliveryReport::default()
    };
    let mut seen: HashSet<(usize, u64)> = HashSet::new();
    let mut last: HashMap<usize, u64> = HashMap::new();
    for id in arrivals {
        let Some((sender, seq)) = parse_load_control_id(id) else {
            report.foreign += 1;
            continue;
        };
        if !seen.insert((sender, seq)) {
            report.duplicates += 1;
            continue;
        }
        if let Some(&prev) = last.get(&sender)
            && seq <= prev
        {
            report.out_of_order.push(format!(
                "{id} arrived after {}",
                load_control_id(sender, prev)
            ));
        }
        last.insert(sender, seq);
    }
    report.delivered = seen.len();
    let acked_set: HashSet<(usize, u64)> = acked
        .iter()
        .enumerate()
        .flat_map(|(s, seqs)| seqs.iter().map(move |&q| (s, q)))
        .collect();
    report.delivered_unacked = seen.difference(&acked_set).count();
    for (s, seqs) in acked.iter().enumerate() {
        for &q in seqs {
            if !seen.contains(&(s, q)) {
                report.missing.push(load_control_id(s, q));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_counts_duplicates_and_finds_gaps_and_reordering() {
        let acked = vec![vec![0, 1, 2], vec![0, 1]];
        let arrivals: Vec<String> = ["S0-0", "S1-0", "S0-1", "S0-1", "S1-1", "S0-2", "S0-3"]
            .map(String::from)
            .to_vec();
        let r = check_delivery(&acked, &arrivals);
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.acked, r.delivered, r.duplicates), (5, 6, 1));
        assert_eq!(r.delivered_unacked, 1);

        let arrivals: Vec<String> = ["S0-1", "S0-0", "S1-0", "X"].map(String::from).to_vec();
        let r = check_delivery(&acked, &arrivals);
        assert_eq!(r.out_of_order, vec!["S0-0 arrived after S0-1".to_owned()]);
        assert_eq!(r.missing, vec!["S0-2".to_owned(), "S1-1".to_owned()]);
        assert_eq!(r.foreign, 1);
        assert!(!r.ok());
    }

    #[test]
    fn fields_and_control_ids() {
        let m = load_message(3, 42);
        assert_eq!(field(&m, "MSH", 10).as_deref(), Some("S3-42"));
        assert_eq!(field(&m, "MSH", 9).as_deref(), Some("ADT^A01^ADT_A01"));
        assert_eq!(parse_load_control_id("S3-42"), Some((3, 42)));
        assert_eq!(ack_code(b"MSH|^~\\&|A\rMSA|AR|1\r").as_deref(), Some("AR"));
        assert_eq!(leading_number("17-S1-2.hl7"), 17);
    }
}
