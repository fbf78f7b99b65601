//! `causeway parse`: messages as a tree, as JSON, or one value.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use causeway_gateway::render;
use causeway_message::{Charset, Message, ParseOptions, Presence, TextDecoding, Value, batch};
use serde_json::{Value as Json, json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files to read; none or "-" reads standard input.
    files: Vec<PathBuf>,

    /// Print only the value at this path, unescaped and decoded, one line per message.
    /// A path without a component prints the whole field. Examples: PID-3, PID-3[2].1,
    /// OBX[3]-5.1, MSH-9.2. Exit code 1 when a message has no value there.
    #[arg(long, value_name = "PATH")]
    path: Option<String>,

    /// Print JSON: one object per message with its segments, paths and values.
    #[arg(long, conflicts_with = "path")]
    json: bool,

    /// Decode text with this character set whatever MSH-18 says (8859/1, UNICODE UTF-8,
    /// ASCII, windows-1252, ...).
    #[arg(long, value_name = "NAME")]
    charset: Option<Charset>,

    /// When text does not decode in its declared character set, try windows-1252.
    #[arg(long)]
    fallback_1252: bool,

    /// Refuse LF/CRLF segment endings, stray bytes and repaired MSH-2 instead of warning.
    #[arg(long)]
    strict: bool,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let inputs: Vec<(String, Vec<u8>)> = if args.files.is_empty() {
        vec![("<stdin>".to_owned(), read_stdin()?)]
    } else {
        args.files
            .iter()
            .map(|p| {
                if p.as_os_str() == "-" {
                    return Ok(("<stdin>".to_owned(), read_stdin()?));
                }
                let bytes =
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                Ok((p.display().to_string(), bytes))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let decoding = TextDecoding {
        override_charset: args.charset,
        fallback: args.fallback_1252.then_some(Charset::Windows1252),
        ..TextDecoding::default()
    };
    let options = if args.strict {
        ParseOptions::STRICT
    } else {
        ParseOptions::LENIENT
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut ok = true;
    let mut json_out = Vec::new();
    for (name, bytes) in &inputs {
        let file = match batch::split(bytes, args.strict) {
            Ok(file) => file,
            Err(e) => {
                eprintln!("{name}: error at byte {}: {}", e.offset, e.kind);
                ok = false;
                continue;
            }
        };
        for w in &file.warnings {
            eprintln!("{name}: warning at byte {}: {}", w.offset, w.kind);
        }
        let base = bytes.as_ptr() as usize;
        for (index, raw) in file.messages().enumerate() {
            // Offsets are reported relative to the file, not to the message.
            let start = raw.as_ptr() as usize - base;
            let label = if file.message_count() > 1 {
                format!("{name} message {}", index + 1)
            } else {
                name.clone()
            };
            let msg = match Message::parse_with(raw, options) {
                Ok(msg) => msg,
                Err(e) => {
                    eprintln!("{label}: error at byte {}: {}", start + e.offset, e.kind);
                    ok = false;
                    continue;
                }
            };
            for w in msg.warnings() {
                eprintln!("{label}: warning at byte {}: {}", start + w.offset, w.kind);
            }
            let charset = match msg.declared_charset() {
                Ok(declared) => decoding.choose(declared),
                Err(e) if decoding.override_charset.is_none() => {
                    eprintln!(
                        "{label}: warning: {e}; showing undecodable bytes as \\xHH (use --charset)"
                    );
                    Charset::Ascii
                }
                Err(_) => decoding.choose(None),
            };
            let text = |v: &Value<'_>| decode(&decoding, charset, v, &label);
            if let Some(path) = &args.path {
                let value = msg
                    .get(path)
                    .with_context(|| format!("bad --path {path:?}"))?;
                if value.is_absent() {
                    eprintln!("{label}: no value at {path}");
                    ok = false;
                } else {
                    writeln!(out, "{}", text(&value))?;
                }
            } else if args.json {
                json_out.push(message_json(&msg, name, index, start, charset, &text));
            } else {
                write_tree(&mut out, &msg, &label, start, charset, &text)?;
            }
        }
    }
    if args.json {
        serde_json::to_writer_pretty(&mut out, &json!({ "messages": json_out }))?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("cannot read standard input")?;
    Ok(buf)
}

/// Unescaped, decoded text; bytes that do not decode are shown as `\xHH` with a warning.
fn decode(decoding: &TextDecoding, charset: Charset, value: &Value<'_>, label: &str) -> String {
    let (text, error) = render::text(decoding, charset, value);
    if let Some(e) = error {
        eprintln!(
            "{label}: warning: a value is not valid {charset} at byte {}; shown with \\xHH",
            e.offset
        );
    }
    text
}

fn shown(v: &Value<'_>, text: &dyn Fn(&Value<'_>) -> String) -> String {
    match v.presence() {
        Presence::Null => "\"\" (null)".to_owned(),
        _ => text(v),
    }
}

fn write_tree(
    out: &mut impl Write,
    msg: &Message<'_>,
    label: &str,
    start: usize,
    charset: Charset,
    text: &dyn Fn(&Value<'_>) -> String,
) -> anyhow::Result<()> {
    let d = msg.delimiters();
    let enc = String::from_utf8_lossy(&d.encoding_characters()).into_owned();
    writeln!(
        out,
        "# {label}: {} bytes at byte {start}, {} segments, delimiters {}{enc}, text as {charset}",
        msg.as_bytes().len(),
        msg.segment_count(),
        char::from(d.field),
    )?;
    let mut seen: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for seg in msg.segments() {
        let occurrence = {
            let n = seen.entry(seg.id().to_vec()).or_default();
            *n += 1;
            *n
        };
        let name = render::segment_label(seg.id(), occurrence);
        writeln!(out, "{name}  (byte {})", start + seg.offset())?;
        for (i, field) in seg.fields().enumerate() {
            let f = i + 1;
            if field.is_empty() {
                continue;
            }
            let path = format!("{name}-{f}");
            let reps = field.children().collect::<Vec<_>>();
            if !field.has_children() {
                writeln!(out, "  {path} = {}", shown(&field, text))?;
                continue;
            }
            for (r, rep) in reps.iter().enumerate() {
                if rep.is_empty() {
                    continue;
                }
                let rpath = if reps.len() > 1 {
                    format!("{path}[{}]", r + 1)
                } else {
                    path.clone()
                };
                let comps = rep.children().collect::<Vec<_>>();
                if !rep.has_children() {
                    writeln!(out, "  {rpath} = {}", shown(rep, text))?;
                    continue;
                }
                writeln!(out, "  {rpath}")?;
                for (c, comp) in comps.iter().enumerate() {
                    if comp.is_empty() {
                        continue;
                    }
                    let cpath = format!("{rpath}.{}", c + 1);
                    if !comp.has_children() {
                        writeln!(out, "    {cpath} = {}", shown(comp, text))?;
                        continue;
                    }
                    for (s, sub) in comp.children().enumerate() {
                        if !sub.is_empty() {
                            writeln!(out, "      {cpath}.{} = {}", s + 1, shown(&sub, text))?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn message_json(
    msg: &Message<'_>,
    source: &str,
    index: usize,
    start: usize,
    charset: Charset,
    text: &dyn Fn(&Value<'_>) -> String,
) -> Json {
    let d = msg.delimiters();
    let segments = render::segments_json(msg, start, text);
    let warnings: Vec<Json> = msg
        .warnings()
        .iter()
        .map(|w| json!({ "offset": start + w.offset, "message": w.kind.to_string() }))
        .collect();
    json!({
        "source": source,
        "index": index,
        "offset": start,
        "size": msg.as_bytes().len(),
        "delimiters": format!("{}{}", char::from(d.field), String::from_utf8_lossy(&d.encoding_characters())),
        "charset": charset.hl7_name(),
        "control_id": msg.control_id().map(|b| String::from_utf8_lossy(b).into_owned()),
        "warnings": warnings,
        "segments": segments,
    })
}
