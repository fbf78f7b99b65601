//! Parse throughput over the shared corpus: ours against `er7` and `hl7-parser`.
//!
//! Every benchmark runs over the same input set, the corpus files that all three parsers
//! accept, and reports throughput in bytes of that whole set per iteration:
//!
//! - `ours-index`: `Message::parse`, the segment and field index only.
//! - `ours-walk`: parse, then read every value down to subcomponents.
//! - `ours-ack`: parse, then build and encode an AA acknowledgement.
//! - `er7-parse`, `hl7parser-parse`: the peer's parse (both build their whole tree).
//! - `er7-walk`, `hl7parser-walk`: the peer's parse, then read every value.
//!
//! "Read every value" touches each subcomponent's length and first and last byte, so no
//! parser can skip materialising a value. `scripts/bench-message` runs this and writes the
//! table in `docs/BENCHMARKS.md`; it reads the `input-set:` line this prints.
//!
//! The input set: both peers take `&str`, so only valid UTF-8 files; the UTF-8 byte order
//! mark is removed from every input (for all three parsers alike: `hl7-parser` cannot read
//! one); and `hl7-parser` must consume the whole input (it returns `Ok` with a prefix when it
//! gives up part way). Files outside the set are listed on stderr with the reason.

use std::hint::black_box;

use causeway_message::Message;
use causeway_message::ack::{Ack, Outcome};
use causeway_testkit::corpus;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The corpus files all three parsers accept, BOM removed, as text.
fn input_set() -> Vec<String> {
    let mut inputs = Vec::new();
    for file in corpus::all() {
        let bytes = file.bytes.strip_prefix(BOM).unwrap_or(&file.bytes);
        let Ok(text) = std::str::from_utf8(bytes) else {
            eprintln!(
                "bench input set: skip {}: not UTF-8 (peers take &str)",
                file.name
            );
            continue;
        };
        let refused = [
            Message::parse(bytes).err().map(|e| format!("ours: {e}")),
            er7::parse(text).err().map(|e| format!("er7: {e}")),
            hl7_parser_refuses(text).map(|e| format!("hl7-parser: {e}")),
        ];
        if let Some(reason) = refused.into_iter().flatten().next() {
            eprintln!("bench input set: skip {}: {reason}", file.name);
            continue;
        }
        inputs.push(text.to_owned());
    }
    inputs
}

/// Why `hl7-parser` does not read all of `text`, if it does not.
fn hl7_parser_refuses(text: &str) -> Option<String> {
    match hl7_parser::Message::parse_with_lenient_newlines(text, true) {
        Err(e) => Some(e.to_string()),
        Ok(msg) => {
            let rest = &text[msg.raw_value().len()..];
            (!rest.bytes().all(|b| b <= b' ' || b == 0x7F))
                .then(|| format!("stopped at byte {}", msg.raw_value().len()))
        }
    }
}

/// Folds a value into the checksum: its length and first and last byte.
fn touch(acc: u64, value: &[u8]) -> u64 {
    let first = value.first().copied().unwrap_or(0);
    let last = value.last().copied().unwrap_or(0);
    acc.wrapping_mul(31)
        .wrapping_add(value.len() as u64)
        .wrapping_add(u64::from(first) << 8 | u64::from(last))
}

fn walk_ours(msg: &Message<'_>) -> u64 {
    let mut acc = 0;
    for seg in msg.segments() {
        acc = touch(acc, seg.id());
        for field in seg.fields() {
            for rep in field.children() {
                for comp in rep.children() {
                    for sub in comp.children() {
                        acc = touch(acc, sub.as_bytes().unwrap_or_default());
                    }
                }
            }
        }
    }
    acc
}

fn walk_er7(msg: &er7::Message) -> u64 {
    let mut acc = 0;
    for seg in &msg.segments {
        acc = touch(acc, seg.name.as_bytes());
        for field in &seg.fields {
            for rep in &field.repetitions {
                for comp in &rep.components {
                    for sub in &comp.subcomponents {
                        acc = touch(acc, sub.raw.as_bytes());
                    }
                }
            }
        }
    }
    acc
}

fn walk_hl7_parser(msg: &hl7_parser::Message<'_>) -> u64 {
    let mut acc = 0;
    for seg in msg.segments() {
        acc = touch(acc, seg.name.as_bytes());
        for field in seg.fields() {
            for rep in field.repeats() {
                for comp in rep.components() {
                    for sub in comp.subcomponents() {
                        acc = touch(acc, sub.raw_value().as_bytes());
                    }
                }
            }
        }
    }
    acc
}

fn corpus_benches(c: &mut Criterion) {
    let inputs = input_set();
    let bytes: usize = inputs.iter().map(String::len).sum();
    // The script reads this line; keep its shape.
    println!("input-set: files={} bytes={bytes}", inputs.len());
    assert!(
        !inputs.is_empty(),
        "no corpus file is accepted by all three parsers"
    );

    let mut group = c.benchmark_group("message-corpus");
    group.throughput(Throughput::Bytes(bytes as u64));

    group.bench_function("ours-index", |b| {
        b.iter(|| {
            for input in &inputs {
                let _ = black_box(Message::parse(black_box(input.as_bytes())));
            }
        });
    });
    group.bench_function("ours-walk", |b| {
        b.iter(|| {
            let mut acc = 0;
            for input in &inputs {
                if let Ok(msg) = Message::parse(black_box(input.as_bytes())) {
                    acc ^= walk_ours(&msg);
                }
            }
            black_box(acc)
        });
    });
    group.bench_function("ours-ack", |b| {
        b.iter(|| {
            for input in &inputs {
                if let Ok(msg) = Message::parse(black_box(input.as_bytes())) {
                    let ack = Ack::for_message(&msg, Outcome::Accept)
                        .control_id("X")
                        .timestamp("20261127120000")
                        .encode();
                    black_box(ack);
                }
            }
        });
    });
    group.bench_function("er7-parse", |b| {
        b.iter(|| {
            for input in &inputs {
                let _ = black_box(er7::parse(black_box(input)));
            }
        });
    });
    group.bench_function("er7-walk", |b| {
        b.iter(|| {
            let mut acc = 0;
            for input in &inputs {
                if let Ok(msg) = er7::parse(black_box(input)) {
                    acc ^= walk_er7(&msg);
                }
            }
            black_box(acc)
        });
    });
    group.bench_function("hl7parser-parse", |b| {
        b.iter(|| {
            for input in &inputs {
                let _ = black_box(hl7_parser::Message::parse_with_lenient_newlines(
                    black_box(input),
                    true,
                ));
            }
        });
    });
    group.bench_function("hl7parser-walk", |b| {
        b.iter(|| {
            let mut acc = 0;
            for input in &inputs {
                if let Ok(msg) =
                    hl7_parser::Message::parse_with_lenient_newlines(black_box(input), true)
                {
                    acc ^= walk_hl7_parser(&msg);
                }
            }
            black_box(acc)
        });
    });
    group.finish();
}

criterion_group!(benches, corpus_benches);
criterion_main!(benches);
