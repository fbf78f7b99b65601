//! `causeway send`: send message files to an MLLP receiver and check each ACK.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use causeway_message::batch;
use causeway_mllp::client::{AckStatus, Client, ClientError, ClientSettings};
use causeway_mllp::frame::FramingOptions;
use serde_json::json;

use super::common::{ClientTlsArgs, parse_duration};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The receiver, HOST:PORT (IPv6 as [::1]:2575). Every resolved address is tried.
    #[arg(long, value_name = "HOST:PORT")]
    to: String,

    /// Files or directories of messages (a directory is read recursively, in name order);
    /// "-" or nothing reads standard input. A file may hold one message, several back to
    /// back, or an FHS/BHS batch.
    inputs: Vec<PathBuf>,

    /// How long to wait for each ACK (500ms, 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,

    /// How long to wait for a connection (and TLS handshake).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    connect_timeout: Duration,

    /// Send bytes exactly as read. By default a leading byte order mark is dropped and LF
    /// or CRLF segment endings are turned into CR, as receivers expect.
    #[arg(long)]
    raw: bool,

    /// Largest message or ACK, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_name = "BYTES")]
    max_size: usize,

    /// Print a JSON report instead of lines.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    tls: ClientTlsArgs,
}

/// One message to send and where it came from.
struct Item {
    source: String,
    index: usize,
    /// The bytes to send, or why the file could not be split into messages.
    bytes: Result<Vec<u8>, String>,
}

/// What happened to one message.
struct Outcome {
    control_id: String,
    code: Option<String>,
    latency: Duration,
    error: Option<String>,
    accepted: bool,
}

pub async fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let items = collect(args)?;
    if items.is_empty() {
        anyhow::bail!("no messages found in the inputs");
    }
    let mut settings = ClientSettings::default();
    settings.connect_timeout = args.connect_timeout;
    settings.ack_timeout = args.timeout;
    settings.framing = FramingOptions::default().with_max_frame_len(args.max_size);
    settings.tls = args.tls.load()?;
    let mut client = Client::new(args.to.clone(), settings);
    let progress = (!args.json && items.len() > 20 && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(items.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} messages, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let started = Instant::now();
    let mut report = Vec::with_capacity(items.len());
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut all_accepted = true;
    let mut connect_failures = 0;
    for (n, item) in items.iter().enumerate() {
        let outcome = if let Err(e) = &item.bytes {
            Outcome {
                control_id: String::new(),
                code: None,
                latency: Duration::ZERO,
                error: Some(format!("not sent: {e}")),
                accepted: false,
            }
        } else if connect_failures >= 3 {
            Outcome {
                control_id: String::new(),
                code: None,
                latency: Duration::ZERO,
                error: Some("not sent: the receiver could not be reached".into()),
                accepted: false,
            }
        } else {
            send_one(
                &mut client,
                item.bytes.as_deref().unwrap_or_default(),
                &mut connect_failures,
            )
            .await
        };
        all_accepted &= outcome.accepted;
        *counts
            .entry(outcome.code.clone().unwrap_or_else(|| "failed".into()))
            .or_default() += 1;
        let line = format!(
            "{}{} {} {} {:.1}ms{}",
            item.source,
            if items.iter().filter(|i| i.source == item.source).count() > 1 {
                format!("#{}", item.index + 1)
            } else {
                String::new()
            },
            if outcome.control_id.is_empty() {
                "-"
            } else {
                &outcome.control_id
            },
            outcome.code.as_deref().unwrap_or("--"),
            outcome.latency.as_secs_f64() * 1000.0,
            outcome
                .error
                .as_deref()
                .map(|e| format!(" {e}"))
                .unwrap_or_default(),
        );
        if args.json {
            report.push(json!({
                "source": item.source,
                "index": item.index,
                "control_id": outcome.control_id,
                "ack": outcome.code,
                "latency_ms": outcome.latency.as_secs_f64() * 1000.0,
                "error": outcome.error,
            }));
        } else if let Some(bar) = &progress {
            bar.println(line);
            bar.set_position(n as u64 + 1);
        } else {
            println!("{line}");
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    client.close().await;
    let elapsed = started.elapsed();
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    if args.json {
        let out = json!({
            "to": args.to,
            "messages": report,
            "summary": { "sent": items.len(), "counts": counts, "seconds": elapsed.as_secs_f64(), "all_accepted": all_accepted },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} messages to {} in {:.2}s: {}",
            items.len(),
            args.to,
            elapsed.as_secs_f64(),
            summary.join(", ")
        );
    }
    Ok(if all_accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn send_one(client: &mut Client, bytes: &[u8], connect_failures: &mut u32) -> Outcome {
    let control_id = causeway_message::Message::parse(bytes)
        .ok()
        .and_then(|m| {
            m.control_id()
                .map(|c| String::from_utf8_lossy(c).into_owned())
        })
        .unwrap_or_default();
    let started = Instant::now();
    let result = client.send(bytes).await;
    let latency = started.elapsed();
    match result {
        Ok(delivery) => {
            *connect_failures = 0;
            let reply = delivery.reply.as_ref();
            let code = match (reply, delivery.status) {
                (Some(r), _) => r.code.to_string(),
                (None, AckStatus::NotRequested) => "no-ack-requested".to_owned(),
                (None, _) => "commit-ack".to_owned(),
            };
            let text = reply.and_then(|r| {
                r.error
                    .as_ref()
                    .map(|e| format!("{} {}", e.code, e.text))
                    .or_else(|| r.text.clone())
            });
            Outcome {
                control_id: delivery.control_id,
                code: Some(code),
                latency,
                error: if delivery.status == AckStatus::Accepted {
                    None
                } else {
                    text
                },
                // A message that asks for no ACK on success (MSH-15/16 NE or ER) counts as sent.
                accepted: matches!(
                    delivery.status,
                    AckStatus::Accepted | AckStatus::NotRequested
                ),
            }
        }
        Err(e) => {
            if matches!(
                e,
                ClientError::Connect { .. }
                    | ClientError::ConnectTimeout { .. }
                    | ClientError::Resolve { .. }
                    | ClientError::NoAddresses { .. }
            ) {
                *connect_failures += 1;
            }
            Outcome {
                control_id,
                code: None,
                latency,
                error: Some(e.to_string()),
                accepted: false,
            }
        }
    }
}

/// Every message in the inputs, in order.
fn collect(args: &Args) -> anyhow::Result<Vec<Item>> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if args.inputs.is_empty() {
        files.push(("<stdin>".into(), read_stdin()?));
    }
    for input in &args.inputs {
        if input.as_os_str() == "-" {
            files.push(("<stdin>".into(), read_stdin()?));
        } else if input.is_dir() {
            let mut found = Vec::new();
            walk(input, &mut found)?;
            found.sort();
            for path in found {
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                files.push((path.display().to_string(), bytes));
            }
        } else {
            let bytes =
                std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
            files.push((input.display().to_string(), bytes));
        }
    }
    let mut items = Vec::new();
    for (source, bytes) in files {
        match batch::split(&bytes, false) {
            Ok(file) => {
                for (index, msg) in file.messages().enumerate() {
                    let bytes = if args.raw {
                        msg.to_vec()
                    } else {
                        normalize(msg)
                    };
                    items.push(Item {
                        source: source.clone(),
                        index,
                        bytes: Ok(bytes),
                    });
                }
            }
            Err(e) => items.push(Item {
                source,
                index: 0,
                bytes: Err(format!("error at byte {}: {}", e.offset, e.kind)),
            }),
        }
    }
    Ok(items)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
    {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("cannot read standard input")?;
    Ok(buf)
}

/// Drops a leading BOM and trailing blank lines, and ends every segment with CR.
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
    use super::normalize;

    #[test]
    fn normalizes_line_endings() {
        assert_eq!(
            normalize(b"\xEF\xBB\xBFMSH|a\r\nPID|1\n\n"),
            b"MSH|a\rPID|1\r"
        );
        assert_eq!(normalize(b"MSH|a\rPID|1"), b"MSH|a\rPID|1\r");
    }
}
