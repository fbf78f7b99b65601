//! The floor under any durable MLLP receiver: what `causeway listen --quiet` does (parse,
//! acknowledge), plus one thing only: every message is appended to a file and the file is
//! synced before the message's ACK is sent. No database, no metadata, no indexes.
//!
//! Group commit: messages that arrive while a sync is running go out together in the next
//! write, made by a sync thread. Variants of the same floor, measured in
//! docs/BENCHMARKS.md:
//! - `--in-flight K`: up to K writes (each a `pwrite` + `fdatasync` of its own batch) at
//!   once on K threads; ACKs still go out in the order of the batches.
//! - `--direct`: `O_DIRECT | O_DSYNC` writes padded to 4 KiB instead of `fdatasync`.
//! - `--leader`: no sync thread; the connection task that finds no sync under way writes
//!   and syncs for everyone waiting, on its async worker thread.
//!
//! `scripts/bench-gateway` runs it (sync thread, one write in flight) beside `listen` and
//! `serve`: the gap between `listen` and this is what durability alone costs on the
//! machine, whatever the store's design.
//!
//! ```text
//! cargo run --release -p causeway-mllp --example durable_floor -- 127.0.0.1:2575 DIR [--in-flight K] [--direct] [--leader]
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use causeway_message::Message;
use causeway_message::ack::{Ack, Outcome};
use causeway_mllp::ack::{ControlIds, hl7_timestamp, nak_for_parse_error};
use causeway_mllp::server::{self, ConnectionInfo, Reply, ServerSettings};
use tokio::sync::oneshot;

/// The file is written in a ring of this size, preallocated with zeros so that a sync
/// never has to write the file's metadata.
const RING: u64 = 256 << 20;

/// Messages waiting for the next write.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    waiters: Vec<oneshot::Sender<()>>,
    /// The next batch's place in the ring and its sequence number.
    offset: u64,
    seq: u64,
    stop: bool,
}

/// Batches whose sync finished, waiting for every earlier batch.
#[derive(Default)]
struct Done {
    next: u64,
    finished: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
}

struct Journal {
    file: File,
    /// `--direct`: the file is open with `O_DIRECT | O_DSYNC`; each write is padded to
    /// whole 4 KiB blocks and is durable when it returns.
    direct: bool,
    pending: Mutex<Pending>,
    ready: Condvar,
    done: Mutex<Done>,
    /// `--leader`: set while a connection's task writes and syncs for everyone.
    syncing: std::sync::atomic::AtomicBool,
}

impl Journal {
    fn append(&self, message: &[u8]) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut p = self.pending.lock().expect("pending lock");
        p.bytes
            .extend_from_slice(&(message.len() as u32).to_le_bytes());
        p.bytes.extend_from_slice(message);
        p.waiters.push(tx);
        drop(p);
        self.ready.notify_one();
        rx
    }

    /// `--leader`: no sync thread. The connection task that finds no sync under way writes
    /// and syncs whatever is pending itself, on its async worker thread, and answers
    /// everyone in the batch; the others wait for it (leader-based group commit).
    fn lead(&self) {
        use std::sync::atomic::Ordering::AcqRel;
        while self
            .syncing
            .compare_exchange(false, true, AcqRel, std::sync::atomic::Ordering::Acquire)
            .is_ok()
        {
            loop {
                let mut p = self.pending.lock().expect("pending lock");
                if p.waiters.is_empty() {
                    break;
                }
                let bytes = std::mem::take(&mut p.bytes);
                let waiters = std::mem::take(&mut p.waiters);
                if p.offset + bytes.len() as u64 > RING {
                    p.offset = 0;
                }
                let offset = p.offset;
                p.offset += bytes.len() as u64;
                drop(p);
                self.file
                    .write_all_at(&bytes, offset)
                    .expect("write journal");
                self.file.sync_data().expect("sync journal");
                for w in waiters {
                    let _ = w.send(());
                }
            }
            self.syncing
                .store(false, std::sync::atomic::Ordering::Release);
            // A message appended after the last look and before the flag went down has
            // no leader yet: look again.
            if self
                .pending
                .lock()
                .expect("pending lock")
                .waiters
                .is_empty()
            {
                break;
            }
        }
    }

    /// One sync thread: takes whatever is pending, writes and syncs it, answers in order.
    fn sync_loop(&self) {
        loop {
            let mut p = self.pending.lock().expect("pending lock");
            while p.waiters.is_empty() && !p.stop {
                p = self.ready.wait(p).expect("pending lock");
            }
            if p.waiters.is_empty() {
                return;
            }
            let mut bytes = std::mem::take(&mut p.bytes);
            let waiters = std::mem::take(&mut p.waiters);
            if self.direct {
                bytes.resize(bytes.len().next_multiple_of(4096), 0);
            }
            let len = bytes.len() as u64;
            if p.offset + len > RING {
                p.offset = 0;
            }
            let (offset, seq) = (p.offset, p.seq);
            p.offset += len;
            p.seq += 1;
            drop(p);
            if self.direct {
                // O_DIRECT needs an aligned buffer: take the aligned part of a larger one.
                let mut buf = vec![0u8; bytes.len() + 4096];
                let start = buf.as_ptr().align_offset(4096);
                let aligned = &mut buf[start..start + bytes.len()];
                aligned.copy_from_slice(&bytes);
                self.file
                    .write_all_at(aligned, offset)
                    .expect("write journal");
            } else {
                self.file
                    .write_all_at(&bytes, offset)
                    .expect("write journal");
                self.file.sync_data().expect("sync journal");
            }
            let mut d = self.done.lock().expect("done lock");
            d.finished.insert(seq, waiters);
            loop {
                let next = d.next;
                let Some(ws) = d.finished.remove(&next) else {
                    break;
                };
                d.next += 1;
                for w in ws {
                    let _ = w.send(());
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: durable_floor ADDR DIR [--in-flight K] [--direct] [--leader]";
    let addr = args.next().ok_or(usage)?;
    let dir = std::path::PathBuf::from(args.next().ok_or(usage)?);
    let mut in_flight = 1usize;
    let mut direct = false;
    let mut leader = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--leader" => leader = true,
            "--in-flight" => in_flight = args.next().ok_or(usage)?.parse()?,
            "--direct" => direct = true,
            _ => return Err(usage.into()),
        }
    }
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("floor.journal");
    let file = File::options()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let zeros = vec![0u8; 4 << 20];
    for i in 0..RING / zeros.len() as u64 {
        file.write_all_at(&zeros, i * zeros.len() as u64)?;
    }
    file.sync_all()?;
    let file = if direct {
        use std::os::unix::fs::OpenOptionsExt;
        File::options()
            .write(true)
            .custom_flags(libc_flags::O_DIRECT | libc_flags::O_DSYNC)
            .open(&path)?
    } else {
        file
    };
    let journal = Arc::new(Journal {
        file,
        direct,
        pending: Mutex::default(),
        ready: Condvar::new(),
        done: Mutex::default(),
        syncing: Default::default(),
    });
    let threads: Vec<_> = (0..if leader { 0 } else { in_flight.max(1) })
        .map(|_| {
            let j = journal.clone();
            std::thread::spawn(move || j.sync_loop())
        })
        .collect();

    let ids = Arc::new(ControlIds::new());
    let mut settings = ServerSettings::default();
    settings.max_connections = 1024;
    settings.control_ids = ids.clone();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("durable_floor: MLLP on {addr}, {in_flight} sync(s) in flight, journal {path:?}");
    let handler = {
        let journal = journal.clone();
        move |message: Bytes, _conn: ConnectionInfo| {
            let leader = leader;
            let journal = journal.clone();
            let ids = ids.clone();
            async move {
                let now = SystemTime::now();
                let msg = match Message::parse(&message) {
                    Ok(m) => m,
                    Err(e) => return nak_for_parse_error(&message, &e, &ids, now).into(),
                };
                let ack = Ack::for_message(&msg, Outcome::Accept)
                    .control_id(ids.next_id())
                    .timestamp(hl7_timestamp(now))
                    .encode();
                let answer = journal.append(&message);
                if leader {
                    journal.lead();
                }
                match answer.await {
                    Ok(()) => Reply::from(ack),
                    Err(_) => Reply::Close,
                }
            }
        }
    };
    server::run(listener, handler, settings, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    journal.pending.lock().expect("pending lock").stop = true;
    journal.ready.notify_all();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Linux x86-64 / aarch64 open flags (the example avoids a libc dependency).
mod libc_flags {
    #[cfg(target_arch = "x86_64")]
    pub const O_DIRECT: i32 = 0o40000;
    #[cfg(not(target_arch = "x86_64"))]
    pub const O_DIRECT: i32 = 0o200000;
    pub const O_DSYNC: i32 = 0o10000;
}
