//! File destination: one file per message, written to a temporary name, synced, then
//! renamed, so a reader never sees half a message.

use std::io::Write;
use std::path::PathBuf;

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

    /// One attempt. The write is blocking I/O, so it runs off the async executor.
    pub async fn send(&mut self, message: &Outgoing) -> Attempt {
        let name = self.file_name(message);
        let dir = self.directory.clone();
        let raw = message.raw.clone();
        let result = tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &raw)).await;
        match result {
            Ok(Ok(())) => Attempt::Delivered {
                code: None,
                text: None,
            },
            Ok(Err(e)) => Attempt::Retry(e),
            Err(e) => Attempt::Retry(format!("write task failed: {e}")),
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

fn write_atomically(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        // The rename itself is durable once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_one_file_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileDestination {
            directory: dir.path().to_owned(),
            filename: "{channel}-{type}-{id}-{control_id}.hl7".into(),
        };
        let mut sender = FileSender::new(&config, "adt").unwrap();
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
                text: None
            }
        );
        let written = std::fs::read(dir.path().join("adt-ADT_A01-7-C_1.hl7")).unwrap();
        assert_eq!(written, raw);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
