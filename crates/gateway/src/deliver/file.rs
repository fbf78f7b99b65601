//! File destination: one file per message, written to a temporary name, synced, then
//! renamed, so a reader never sees half a message. Messages are written in runs that share
//! their syncs ([`FileSender::send_run`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use causeway_message::Message;

use super::{Attempt, Outgoing};
use crate::config::FileDestination;

/// Writes into one directory.
#[derive(Debug)]
pub struct FileSender {
    directory: PathBuf,
    pattern: String,
    channel: String,
}

impl FileSender {
    /// From the destination's configuration; the directory is created here.
    pub fn new(config: &FileDestination, channel: &str) -> Result<FileSender, String> {
        std::fs::create_dir_all(&config.directory)
            .map_err(|e| format!("cannot create {}: {e}", config.directory.display()))?;
        Ok(FileSender {
            directory: config.directory.clone(),
            pattern: config.filename.clone(),
            channel: channel.to_owned(),
        })
    }

    /// One attempt: [`FileSender::send_run`] of one message.
    pub async fn send(&mut self, message: &Outgoing) -> Attempt {
        self.send_run(std::slice::from_ref(message), || true)
            .await
            .pop()
            .unwrap_or_else(|| Attempt::Retry("nothing was written".into()))
    }

    /// Writes `messages` in order, at most [`MAX_RUN`] (the rest are left alone), and
    /// returns one attempt per message written and, when one failed, its attempt last:
    /// the messages after a failure are not attempted.
    ///
    /// Every file is written to a temporary name first. Their data is then made durable
    /// together (on Linux 5.8 and later one `syncfs`, one flush of the disk's cache for the
    /// whole run; elsewhere one `fsync` per file), only then are they renamed, in order, and the
    /// directory is synced once. So a reader never sees half a message, and a file the
    /// worker records as delivered survives a crash. One message per run cost two
    /// flushes per message; a run costs two in all.
    ///
    /// `still_ours` is asked once the data is durable, before the first rename: when it
    /// says no (the delivery lease was lost meanwhile), the temporary files are removed
    /// and nothing is attempted, so a node that lost its lease during a slow sync does not
    /// write over the new holder's files.
    pub async fn send_run(
        &mut self,
        messages: &[Outgoing],
        still_ours: impl Fn() -> bool + Send + 'static,
    ) -> Vec<Attempt> {
        let files: Vec<(String, bytes::Bytes)> = messages
            .iter()
            .take(MAX_RUN)
            .map(|m| (self.file_name(m), m.raw.clone()))
            .collect();
        let dir = self.directory.clone();
        match tokio::task::spawn_blocking(move || write_run(&dir, &files, &still_ours)).await {
            Ok((written, failure)) => {
                let mut attempts = vec![
                    Attempt::Delivered {
                        code: None,
                        text: None,
                        ack: None,
                    };
                    written
                ];
                attempts.extend(failure.map(|f| Attempt::Retry(f.into())));
                attempts
            }
            Err(e) => vec![Attempt::Retry(format!("write task failed: {e}").into())],
        }
    }

    fn file_name(&self, message: &Outgoing) -> String {
        let msg = Message::parse(&message.raw).ok();
        let field = |f: Option<&[u8]>| sanitize(&String::from_utf8_lossy(f.unwrap_or_default()));
        let kind = msg.as_ref().map_or_else(String::new, |m| {
            let mut t = field(m.message_code());
            if let Some(trigger) = m.trigger_event() {
                t.push('_');
                t.push_str(&field(Some(trigger)));
            }
            t
        });
        let stamp = causeway_mllp::ack::hl7_timestamp(std::time::SystemTime::now());
        let date = &stamp[..8.min(stamp.len())];
        self.pattern
            .replace("{id}", &message.message_id.to_string())
            .replace("{control_id}", &sanitize(&message.control_id))
            .replace("{type}", &kind)
            .replace("{channel}", &sanitize(&self.channel))
            .replace("{date}", date)
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// Most messages [`FileSender::send_run`] writes at once.
pub const MAX_RUN: usize = 64;

/// Writes `files` (name, bytes) into `dir` as [`FileSender::send_run`] describes. Returns
/// how many are durable under their names, and why the next one failed.
fn write_run(
    dir: &Path,
    files: &[(String, bytes::Bytes)],
    still_ours: &dyn Fn() -> bool,
) -> (usize, Option<String>) {
    // A file's temporary name is its name's, as it was one message at a time, so a retry
    // after a crash writes over what the crash left. Only a name already taken in this
    // run (the same message queued twice, by a replay) gets its place added: the later
    // must win, as it would have one at a time.
    let tmps: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            if files[..i].iter().any(|(earlier, _)| earlier == name) {
                dir.join(format!(".{name}.{i}.tmp"))
            } else {
                dir.join(format!(".{name}.tmp"))
            }
        })
        .collect();
    let remove = |range: std::ops::Range<usize>| {
        for tmp in &tmps[range] {
            let _ = std::fs::remove_file(tmp);
        }
    };
    let mut failure = None;
    let mut written = Vec::with_capacity(files.len());
    for (i, (name, bytes)) in files.iter().enumerate() {
        let result = std::fs::File::create(&tmps[i]).and_then(|mut f| {
            f.write_all(bytes)?;
            Ok(f)
        });
        match result {
            Ok(f) => written.push(f),
            Err(e) => {
                let _ = std::fs::remove_file(&tmps[i]);
                failure = Some(format!("cannot write {}: {e}", dir.join(name).display()));
                break;
            }
        }
    }
    let n = written.len();
    if let Err(e) = sync_data(&written) {
        remove(0..n);
        return (0, Some(format!("cannot sync {}: {e}", dir.display())));
    }
    drop(written);
    if !still_ours() {
        remove(0..n);
        return (0, None);
    }
    let mut renamed = n;
    for (i, (name, _)) in files[..n].iter().enumerate() {
        if let Err(e) = std::fs::rename(&tmps[i], dir.join(name)) {
            remove(i..n);
            failure = Some(format!("cannot write {}: {e}", dir.join(name).display()));
            renamed = i;
            break;
        }
    }
    if renamed > 0 {
        // The renames are durable once the directory is synced. If that fails, none of
        // them is known to be: the head is retried, and the files are written again.
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            return (0, Some(format!("cannot sync {}: {e}", dir.display())));
        }
    }
    (renamed, failure)
}

/// Makes the data of `files` durable: one `syncfs` of their file system (a flush of the
/// disk's cache for them all) on Linux 5.8 and later, one `fsync` per file elsewhere.
/// Before 5.8, `syncfs` did not report a failed writeback, and a file could be recorded as
/// delivered that never reached the disk.
fn sync_data(files: &[std::fs::File]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if let Some(first) = files.first()
        && syncfs_reports_errors()
    {
        return rustix::fs::syncfs(first).map_err(std::io::Error::from);
    }
    files.iter().try_for_each(std::fs::File::sync_all)
}

/// Whether this kernel's `syncfs` reports writeback errors (Linux 5.8 and later); `false`
/// when its release cannot be read.
#[cfg(target_os = "linux")]
fn syncfs_reports_errors() -> bool {
    static REPORTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REPORTS.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .is_ok_and(|release| release_at_least(&release, (5, 8)))
    })
}

/// Whether a kernel release such as `6.8.0-45-generic` is `min` (major, minor) or later.
#[cfg(any(target_os = "linux", test))]
fn release_at_least(release: &str, min: (u32, u32)) -> bool {
    let mut parts = release.trim().split(['.', '-']);
    let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (number(), number()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender of channel `adt` into a new temporary directory, with names by `pattern`.
    fn sender(pattern: &str) -> (FileSender, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = FileDestination {
            directory: dir.path().to_owned(),
            filename: pattern.into(),
        };
        (FileSender::new(&config, "adt").unwrap(), dir)
    }

    #[tokio::test]
    async fn writes_one_file_per_message() {
        let (mut sender, dir) = sender("{channel}-{type}-{id}-{control_id}.hl7");
        let raw = bytes::Bytes::from_static(b"MSH|^~\\&|A||||||ADT^A01|C/1|P|2.5\r");
        let out = Outgoing {
            message_id: 7,
            raw: raw.clone(),
            control_id: "C/1".into(),
        };
        assert_eq!(
            sender.send(&out).await,
            Attempt::Delivered {
                code: None,
                text: None,
                ack: None,
            }
        );
        let written = std::fs::read(dir.path().join("adt-ADT_A01-7-C_1.hl7")).unwrap();
        assert_eq!(written, raw);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn files(names: &[&str]) -> Vec<(String, bytes::Bytes)> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), bytes::Bytes::from(format!("body of {n}"))))
            .collect()
    }

    /// Every name in `dir`, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_run_writes_every_file_and_leaves_no_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let run = files(&["a.hl7", "b.hl7", "c.hl7"]);
        assert_eq!(write_run(dir.path(), &run, &|| true), (3, None));
        assert_eq!(listing(dir.path()), ["a.hl7", "b.hl7", "c.hl7"]);
        for (name, body) in &run {
            assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), body.as_ref());
        }
    }

    #[test]
    fn the_later_of_two_messages_with_one_name_wins_as_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let run = vec![
            ("same.hl7".to_owned(), bytes::Bytes::from_static(b"first")),
            ("same.hl7".to_owned(), bytes::Bytes::from_static(b"second")),
        ];
        assert_eq!(write_run(dir.path(), &run, &|| true), (2, None));
        assert_eq!(listing(dir.path()), ["same.hl7"]);
        assert_eq!(
            std::fs::read(dir.path().join("same.hl7")).unwrap(),
            b"second"
        );
    }

    #[test]
    fn a_file_that_cannot_be_written_ends_the_run_after_those_before_it() {
        let dir = tempfile::tempdir().unwrap();
        // No file system takes a 300-byte name.
        let long = format!("{}.hl7", "x".repeat(300));
        let run = files(&["a.hl7", "b.hl7", &long, "d.hl7"]);
        let (written, failure) = write_run(dir.path(), &run, &|| true);
        assert_eq!(written, 2);
        assert!(failure.unwrap().starts_with("cannot write"));
        assert_eq!(
            listing(dir.path()),
            ["a.hl7", "b.hl7"],
            "d.hl7 is not attempted"
        );
    }

    #[test]
    fn a_file_that_cannot_be_renamed_ends_the_run_after_those_before_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where b.hl7 should go: the rename fails.
        std::fs::create_dir(dir.path().join("b.hl7")).unwrap();
        let run = files(&["a.hl7", "b.hl7", "c.hl7"]);
        let (written, failure) = write_run(dir.path(), &run, &|| true);
        assert_eq!(written, 1);
        assert!(failure.unwrap().contains("b.hl7"));
        assert_eq!(
            listing(dir.path()),
            ["a.hl7", "b.hl7"],
            "no temporary file is left"
        );
        assert!(dir.path().join("b.hl7").is_dir());
    }

    #[tokio::test]
    async fn send_run_takes_at_most_a_run() {
        let (mut sender, dir) = sender("{id}.hl7");
        let messages: Vec<Outgoing> = (0..MAX_RUN as i64 + 3)
            .map(|id| Outgoing {
                message_id: id,
                raw: bytes::Bytes::from_static(b"MSH|^~\\&|A||||||ADT^A01|C1|P|2.5\r"),
                control_id: "C1".into(),
            })
            .collect();
        let attempts = sender.send_run(&messages, || true).await;
        assert_eq!(attempts.len(), MAX_RUN);
        assert!(
            attempts
                .iter()
                .all(|a| matches!(a, Attempt::Delivered { .. }))
        );
        assert_eq!(listing(dir.path()).len(), MAX_RUN);
    }

    #[test]
    fn kernel_releases() {
        assert!(release_at_least("6.8.0-45-generic", (5, 8)));
        assert!(release_at_least("5.8.0", (5, 8)));
        assert!(release_at_least("5.10.226-214.880.amzn2.x86_64", (5, 8)));
        assert!(!release_at_least("5.4.0-196-generic", (5, 8)));
        assert!(!release_at_least("4.18.0-553.el8_10.x86_64", (5, 8)));
        assert!(!release_at_least("garbage", (5, 8)));
    }

    #[test]
    fn a_retry_writes_over_the_temporary_file_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".a.hl7.tmp"), b"half of a").unwrap();
        assert_eq!(
            write_run(dir.path(), &files(&["a.hl7"]), &|| true),
            (1, None)
        );
        assert_eq!(listing(dir.path()), ["a.hl7"]);
    }

    #[test]
    fn a_run_whose_lease_was_lost_meanwhile_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let run = files(&["a.hl7", "b.hl7"]);
        assert_eq!(write_run(dir.path(), &run, &|| false), (0, None));
        assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
    }
}
