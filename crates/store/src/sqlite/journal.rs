//! The ingest journal: the durable record of an ingest on the acknowledgement path.
//!
//! # Why
//! A SQLite commit costs the writer thread far more CPU than the rows it holds: every
//! index page a batch touches is written to the WAL again at each commit. With one commit
//! per acknowledged batch, batches are as small as the number of senders waiting, so that
//! cost is paid over and over (docs/ARCHITECTURE.md, "The SQLite ingest journal").
//!
//! With the journal, the writer applies an ingest to an open SQLite transaction (which
//! gives it its ids and its duplicate check), appends one record of what it applied to
//! this file, and the caller is answered once the file is synced: one `pwrite` and one
//! `fdatasync` per batch. The SQLite transaction stays open across many batches and is
//! committed, without a sync of its own, when it is large or old enough, when the writer
//! is idle, before any other write, or when a reader needs to see it (see
//! `SqliteStore::read`).
//!
//! # Format
//! One file, `<database>.ingest-journal`, grown in zero-filled steps up to its capacity
//! and then reused from the start. Each record is
//!
//! ```text
//! magic u32 | payload length u32 | generation u64 | sequence u64 | crc32 u32 | payload
//! ```
//!
//! (little-endian; the CRC covers generation, sequence, length and payload). Sequence
//! numbers grow by one per record and never repeat. The table `ingest_journal` holds the
//! current generation and `applied_seq`, the last sequence number whose ingest is in a
//! committed transaction; it is updated in the same transaction as the rows.
//!
//! # Recovery
//! At open, the records of the current generation are read from the start of the file
//! while they are intact and their sequence numbers consecutive; those after
//! `applied_seq` are applied again with the ids they were given (a crash lost the open
//! transaction, or a power cut lost commits the disk had not synced yet). A torn record or
//! one from an older generation ends the scan: records are synced in order and a caller
//! is answered only after the sync covering its record, so every answered record lies
//! before the end. Then the generation is bumped in a synced commit, and writing starts
//! again at offset 0; old records left behind carry an older generation and are ignored.
//!
//! The writer moves to a new generation the same way whenever the next batch would not
//! fit: it commits, syncs the WAL (so nothing in the file is needed any more), and only
//! then writes at offset 0 again.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{Result, StoreError};
use crate::sqlite::writer::Job;
use crate::types::{MessageStatus, NewMessage, Timestamp};
use crate::writer_stats::WriterCounters;

/// Marks the start of a record ("CWJ1").
const MAGIC: u32 = 0x314A_5743;
/// Bytes before a record's payload.
pub(super) const HEADER: usize = 4 + 4 + 8 + 8 + 4;
/// The file grows in steps of this many zeroed bytes, ahead of the records: writing into
/// blocks that already exist lets `fdatasync` skip the file's metadata.
const GROW_STEP: u64 = 4 << 20;

/// The path of the journal that belongs to a database file.
pub(super) fn path_for(database: &Path) -> PathBuf {
    let mut p = database.as_os_str().to_owned();
    p.push(".ingest-journal");
    PathBuf::from(p)
}

/// Everything an ingest wrote, enough to write it again with the same ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Redo {
    pub id: i64,
    pub status: MessageStatus,
    pub duplicate_of: Option<i64>,
    pub key: [u8; 32],
    /// The message; its `destinations` are those of `deliveries`, in order.
    pub message: NewMessage,
    /// (delivery id, destination) for each delivery created.
    pub deliveries: Vec<(i64, String)>,
}

// === encoding ===

/// What an ingest wrote, borrowed: what [`encode`] writes (a [`Redo`] without copies).
#[derive(Debug, Clone, Copy)]
pub(super) struct RedoRef<'a> {
    pub id: i64,
    pub status: MessageStatus,
    pub duplicate_of: Option<i64>,
    pub key: &'a [u8; 32],
    pub message: &'a NewMessage,
    /// Delivery ids, one per destination of `message.validated_destinations()`.
    pub deliveries: &'a [crate::types::DeliveryId],
    pub destinations: &'a [&'a str],
}

impl Redo {
    /// Borrows it for [`encode`].
    #[cfg(test)]
    fn encode_into(&self, out: &mut Vec<u8>, generation: u64, seq: u64) {
        let ids: Vec<_> = self
            .deliveries
            .iter()
            .map(|(id, _)| crate::types::DeliveryId(*id))
            .collect();
        let names: Vec<&str> = self.deliveries.iter().map(|(_, d)| d.as_str()).collect();
        encode(
            out,
            generation,
            seq,
            RedoRef {
                id: self.id,
                status: self.status,
                duplicate_of: self.duplicate_of,
                key: &self.key,
                message: &self.message,
                deliveries: &ids,
                destinations: &names,
            },
        );
    }
}

/// Appends one record holding `redo` to `out`.
pub(super) fn encode(out: &mut Vec<u8>, generation: u64, seq: u64, redo: RedoRef<'_>) {
    let start = out.len();
    out.resize(start + HEADER, 0);
    let m = redo.message;
    put_i64(out, redo.id);
    put_str(out, redo.status.as_str());
    put_i64(out, redo.duplicate_of.unwrap_or(0));
    out.extend_from_slice(redo.key);
    put_str(out, &m.channel);
    put_i64(out, m.received_at.as_millis());
    put_str(out, &m.peer);
    put_opt(out, m.tls_identity.as_deref());
    put_str(out, &m.control_id);
    put_str(out, &m.message_type);
    put_str(out, &m.trigger_event);
    put_str(out, &m.sending_application);
    put_str(out, &m.sending_facility);
    put_str(out, &m.receiving_application);
    put_str(out, &m.receiving_facility);
    put_opt(out, m.patient_id.as_deref());
    put_opt(out, m.charset.as_deref());
    put_bytes(out, &m.raw);
    put_u32(out, redo.deliveries.len() as u32);
    for (id, destination) in redo.deliveries.iter().zip(redo.destinations) {
        put_i64(out, id.0);
        put_str(out, destination);
    }
    let len = (out.len() - start - HEADER) as u32;
    let header = &mut out[start..start + HEADER];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..16].copy_from_slice(&generation.to_le_bytes());
    header[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = checksum(&out[start + 4..start + 24], &out[start + HEADER..]);
    out[start + 24..start + 28].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(fields: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(fields);
    h.update(payload);
    h.finalize()
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// A record read back: where it ends, and what it holds.
#[derive(Debug)]
pub(super) struct Record {
    pub generation: u64,
    pub seq: u64,
    pub end: usize,
    pub payload: std::ops::Range<usize>,
}

/// Reads the record at the start of `buf`, if an intact one is there.
pub(super) fn read_record(buf: &[u8], at: usize) -> Option<Record> {
    let head = buf.get(at..at.checked_add(HEADER)?)?;
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let long = |i: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&head[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if word(0) != MAGIC {
        return None;
    }
    let len = word(4) as usize;
    let payload = at + HEADER..(at + HEADER).checked_add(len)?;
    let body = buf.get(payload.clone())?;
    if checksum(&head[4..24], body) != word(24) {
        return None;
    }
    Some(Record {
        generation: long(8),
        seq: long(16),
        end: payload.end,
        payload,
    })
}

/// Decodes a record's payload.
pub(super) fn decode(payload: &[u8]) -> Result<Redo> {
    let mut r = Reader { buf: payload };
    let id = r.i64()?;
    let status: MessageStatus = r.string()?.parse()?;
    let duplicate_of = Some(r.i64()?).filter(|&d| d != 0);
    let key: [u8; 32] = r
        .take(32)?
        .try_into()
        .map_err(|_| corrupt("short dedup key"))?;
    let channel = r.string()?;
    let received_at = Timestamp::from_millis(r.i64()?);
    let peer = r.string()?;
    let tls_identity = r.opt()?;
    let control_id = r.string()?;
    let message_type = r.string()?;
    let trigger_event = r.string()?;
    let sending_application = r.string()?;
    let sending_facility = r.string()?;
    let receiving_application = r.string()?;
    let receiving_facility = r.string()?;
    let patient_id = r.opt()?;
    let charset = r.opt()?;
    let raw = Bytes::copy_from_slice(r.bytes()?);
    let n = r.u32()? as usize;
    let mut deliveries = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        deliveries.push((r.i64()?, r.string()?));
    }
    if !r.buf.is_empty() {
        return Err(corrupt("trailing bytes in a record"));
    }
    Ok(Redo {
        id,
        status,
        duplicate_of,
        key,
        message: NewMessage {
            channel,
            raw,
            received_at,
            peer,
            tls_identity,
            control_id,
            message_type,
            trigger_event,
            sending_application,
            sending_facility,
            receiving_application,
            receiving_facility,
            patient_id,
            charset,
            destinations: deliveries.iter().map(|(_, d)| d.clone()).collect(),
        },
        deliveries,
    })
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("ingest journal: {what}"))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(corrupt("record ends early"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(b))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| corrupt("text is not UTF-8"))
    }

    fn opt(&mut self) -> Result<Option<String>> {
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(corrupt("bad option tag")),
        }
    }
}

/// The records of `generation` from the start of `buf` that come after `applied_seq`,
/// with their sequence numbers, and the last sequence number seen in that generation.
pub(super) fn scan(
    buf: &[u8],
    generation: u64,
    applied_seq: u64,
) -> Result<(Vec<(u64, Redo)>, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut last: Option<u64> = None;
    while let Some(rec) = read_record(buf, at) {
        if rec.generation != generation || last.is_some_and(|l| rec.seq != l + 1) {
            break;
        }
        if rec.seq > applied_seq {
            if out.is_empty() && rec.seq != applied_seq + 1 {
                return Err(corrupt(&format!(
                    "the store has records up to {applied_seq} but the journal resumes at {}",
                    rec.seq
                )));
            }
            out.push((rec.seq, decode(&buf[rec.payload.clone()])?));
        }
        last = Some(rec.seq);
        at = rec.end;
    }
    Ok((out, last.unwrap_or(0)))
}

// === the file ===

/// The journal file, shared by the writer and the journal thread.
#[derive(Debug)]
pub(super) struct JournalFile {
    file: File,
    path: PathBuf,
    /// Bytes that exist in the file (zero-filled ahead of the records).
    allocated: Mutex<u64>,
    capacity: u64,
}

impl JournalFile {
    /// Opens (creating it if needed) the journal and reads it whole, for recovery.
    ///
    /// The file is locked for as long as the store has it open: one store per database.
    /// A store still closing (its writer thread finishing) is waited for up to `wait`.
    pub(super) fn open(
        path: &Path,
        capacity: u64,
        wait: Duration,
    ) -> Result<(JournalFile, Vec<u8>)> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::unavailable("open the ingest journal", e))?;
        lock(&file, path, wait)?;
        let mut contents = Vec::new();
        file.read_to_end(&mut contents)
            .map_err(|e| StoreError::unavailable("read the ingest journal", e))?;
        if contents.is_empty() {
            // A new file: its directory entry must be durable before any record in it is
            // acknowledged, or a power cut could take the whole file.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| StoreError::unavailable("sync the store directory", e))?;
            }
        }
        let allocated = contents.len() as u64;
        Ok((
            JournalFile {
                file,
                path: path.to_owned(),
                allocated: Mutex::new(allocated),
                capacity,
            },
            contents,
        ))
    }

    /// Most bytes the journal holds before it starts again from the beginning.
    pub(super) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Writes `bytes` at `offset`, growing the file first if needed. Not synced.
    pub(super) fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset + bytes.len() as u64;
        {
            let mut allocated = self
                .allocated
                .lock()
                .map_err(|_| io::Error::other("journal size lock poisoned"))?;
            if end > *allocated {
                let target = end.max(*allocated + GROW_STEP).min(self.capacity.max(end));
                let zeros = vec![0u8; (target - *allocated) as usize];
                self.file.write_all_at(&zeros, *allocated)?;
                *allocated = target;
            }
        }
        self.file.write_all_at(bytes, offset)
    }

    /// Makes every write so far durable.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The file's path, for logs.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the journal's exclusive lock, waiting up to `wait` for another holder.
fn lock(file: &File, path: &Path, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                // Blocking code (the store opens on tokio's blocking pool); the holder is
                // a store whose writer thread is finishing, or another process.
                #[expect(
                    clippy::disallowed_methods,
                    reason = "a short poll on a blocking thread"
                )]
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::unavailable(
                    "lock the ingest journal",
                    format!(
                        "{} is in use by another store (another causeway on the same store.path?)",
                        path.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::unavailable("lock the ingest journal", e));
            }
        }
    }
}

// === the journal thread ===

/// Records to write at `offset`, and the callers to answer once they are synced.
pub(super) struct JournalWrite {
    pub offset: u64,
    pub bytes: Bytes,
    pub jobs: Vec<Box<dyn Job>>,
}

/// What the writer and the journal thread share.
#[derive(Debug, Default)]
pub(super) struct JournalShared {
    /// The store's writer counters (each write and sync is timed).
    pub counters: Arc<WriterCounters>,
    /// Set when a write or sync failed; the writer then stops using the journal.
    pub failed: AtomicBool,
    /// Batches handed to the journal thread and not yet synced. The writer writes a
    /// batch itself only when this is zero, so records still reach the file in order.
    pub in_flight: AtomicUsize,
    /// Tests: how many more batches go to the journal thread even when the writer would
    /// sync them itself (which path a batch takes otherwise depends on timing).
    #[cfg(test)]
    pub force_thread: AtomicUsize,
}

impl JournalShared {
    /// Whether the next batch must go to the journal thread (tests only).
    pub(super) fn forced_to_thread(&self) -> bool {
        #[cfg(test)]
        return self
            .force_thread
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        #[cfg(not(test))]
        false
    }
}

/// Writes and syncs what the writer sends, in order, answering each batch's callers
/// after the sync that covers it. Everything queued at once shares one sync.
pub(super) fn run(
    file: &JournalFile,
    shared: &JournalShared,
    writes: &mpsc::Receiver<JournalWrite>,
) {
    let mut pending: Vec<JournalWrite> = Vec::new();
    while let Ok(first) = writes.recv() {
        pending.push(first);
        while let Ok(more) = writes.try_recv() {
            pending.push(more);
        }
        let error = write_and_sync(file, shared, &pending);
        shared.in_flight.fetch_sub(pending.len(), Ordering::AcqRel);
        for write in pending.drain(..) {
            for job in write.jobs {
                job.finish(error.as_deref());
            }
        }
    }
}

/// Writes `batches` and syncs once; the error text if that failed (or failed before).
pub(super) fn write_and_sync(
    file: &JournalFile,
    shared: &JournalShared,
    batches: &[JournalWrite],
) -> Option<String> {
    if shared.failed.load(Ordering::Acquire) {
        return Some("the ingest journal failed earlier".into());
    }
    let result = shared.counters.timed(|| {
        batches
            .iter()
            .try_for_each(|w| file.write_at(w.offset, &w.bytes))
            .and_then(|()| file.sync())
    });
    match result {
        Ok(()) => None,
        Err(e) => {
            shared.failed.store(true, Ordering::Release);
            tracing::error!(
                error = %e,
                path = %file.path().display(),
                "ingest journal write failed; the store goes on without it"
            );
            Some(format!("write the ingest journal: {e}"))
        }
    }
}

/// Starts the journal thread.
pub(super) fn spawn(
    file: Arc<JournalFile>,
    shared: Arc<JournalShared>,
) -> io::Result<(mpsc::SyncSender<JournalWrite>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::sync_channel(JOURNAL_QUEUE);
    let handle = std::thread::Builder::new()
        .name("cw-store-journal".into())
        .spawn(move || run(&file, &shared, &rx))?;
    Ok((tx, handle))
}

/// Batches waiting for the journal thread; beyond that the writer waits for the disk.
const JOURNAL_QUEUE: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{at, message};

    fn redo(id: i64) -> Redo {
        let mut m = message("ch", &format!("C{id}"), &["a", "b"], at(id));
        m.patient_id = None;
        m.tls_identity = Some("CN=lab".into());
        Redo {
            id,
            status: MessageStatus::Pending,
            duplicate_of: None,
            key: m.dedup_key(),
            deliveries: vec![(id * 2, "a".into()), (id * 2 + 1, "b".into())],
            message: m,
        }
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        for i in 1..=3 {
            redo(i).encode_into(&mut buf, 7, i as u64);
        }
        let (found, last) = scan(&buf, 7, 0).unwrap();
        assert_eq!(last, 3);
        assert_eq!(
            found,
            (1..=3).map(|i| (i as u64, redo(i))).collect::<Vec<_>>()
        );
        // Only what comes after the applied mark.
        let (found, _) = scan(&buf, 7, 2).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 3);
    }

    #[test]
    fn scan_stops_at_a_torn_record() {
        let mut buf = Vec::new();
        redo(1).encode_into(&mut buf, 1, 1);
        let first = buf.len();
        redo(2).encode_into(&mut buf, 1, 2);
        redo(3).encode_into(&mut buf, 1, 3);
        // Tear the second record: its payload is damaged, the third is intact.
        buf[first + HEADER + 5] ^= 0xff;
        let (found, last) = scan(&buf, 1, 0).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(last, 1);
    }

    #[test]
    fn scan_stops_at_records_of_an_older_generation_or_out_of_sequence() {
        // Generation 2 wrote two records over the start of generation 1's.
        let mut old = Vec::new();
        for i in 1..=5 {
            redo(i as i64).encode_into(&mut old, 1, i);
        }
        let mut new = Vec::new();
        redo(6).encode_into(&mut new, 2, 6);
        redo(7).encode_into(&mut new, 2, 7);
        let mut buf = old.clone();
        buf[..new.len()].copy_from_slice(&new);
        let (found, last) = scan(&buf, 2, 5).unwrap();
        assert_eq!(found.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [6, 7]);
        assert_eq!(last, 7);
        // Zeros after the records end the scan too.
        let mut zeros = new.clone();
        zeros.resize(new.len() + 4096, 0);
        assert_eq!(scan(&zeros, 2, 5).unwrap().0.len(), 2);
        // Nothing of another generation is taken.
        assert!(scan(&buf, 3, 0).unwrap().0.is_empty());
    }

    proptest::proptest! {
        /// Damaged or cut journals end the scan or fail it as corrupt; they never panic.
        #[test]
        fn damaged_journals_never_panic(
            cut in 0usize..6000,
            flips in proptest::collection::vec((0usize..6000, 1u8..=255), 0..6),
            generation in 0u64..3,
            applied in 0u64..5,
        ) {
            let mut buf = Vec::new();
            for i in 1..=4 {
                redo(i).encode_into(&mut buf, 1, i as u64);
            }
            let n = buf.len();
            for (at, bits) in flips {
                buf[at % n] ^= bits;
            }
            buf.truncate(cut.min(n));
            let _ = scan(&buf, generation, applied);
        }

        /// A payload that passed its CRC but is not what `encode` writes is an error.
        #[test]
        fn decoding_garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn a_gap_between_store_and_journal_is_corruption() {
        let mut buf = Vec::new();
        redo(10).encode_into(&mut buf, 1, 10);
        assert!(matches!(scan(&buf, 1, 5), Err(StoreError::Corrupt(_))));
    }
}
