//! `mllp-load`: a stop-and-wait MLLP load generator for benchmarks.
//!
//! Opens N connections; each sends a message of about SIZE bytes with a unique MSH-10, waits
//! for the reply frame, and repeats, for a warm-up period and then a measured period. Prints
//! one JSON object: messages, seconds, messages/s, p50/p99/max latency in microseconds,
//! errors. It frames bytes by hand and does not parse replies beyond finding `0x1C 0x0D`, so
//! the load side costs the same whatever server it measures.
//!
//! Usage: mllp-load ADDR [--connections N] [--seconds S] [--warmup S] [--size BYTES]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Settings {
    addr: String,
    connections: usize,
    seconds: f64,
    warmup: f64,
    size: usize,
}

fn settings() -> Result<Settings, String> {
    let mut args = std::env::args().skip(1);
    let mut s = Settings {
        addr: String::new(),
        connections: 16,
        seconds: 10.0,
        warmup: 2.0,
        size: 1024,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--connections" => {
                s.connections = value("--connections")?
                    .parse()
                    .map_err(|e| format!("{e}"))?
            }
            "--seconds" => s.seconds = value("--seconds")?.parse().map_err(|e| format!("{e}"))?,
            "--warmup" => s.warmup = value("--warmup")?.parse().map_err(|e| format!("{e}"))?,
            "--size" => s.size = value("--size")?.parse().map_err(|e| format!("{e}"))?,
            a if !a.starts_with('-') && s.addr.is_empty() => s.addr = a.to_owned(),
            a => return Err(format!("unknown argument {a}")),
        }
    }
    if s.addr.is_empty() {
        return Err(
            "usage: mllp-load ADDR [--connections N] [--seconds S] [--warmup S] [--size BYTES]"
                .into(),
        );
    }
    Ok(s)
}

/// An ADT^A01 padded with an NTE to `size` bytes, framed, with control id `id`.
fn message(conn: usize, seq: u64, size: usize) -> Vec<u8> {
    let mut m = format!(
        "\x0bMSH|^~\\&|LOAD|BENCH|CAUSEWAY|BENCH|20261127120000||ADT^A01^ADT_A01|L{conn}-{seq}|P|2.5.1\r\
         EVN|A01|20261127120000\rPID|1||{seq}^^^MRN||DOE^JANE||19700101|F\rNTE|1||"
    )
    .into_bytes();
    while m.len() + 3 < size {
        m.push(b'x');
    }
    m.extend_from_slice(b"\r\x1c\x0d");
    m
}

async fn connection(conn: usize, s: &Settings, start: Instant) -> Result<(Vec<u32>, u64), String> {
    let mut stream = TcpStream::connect(&s.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", s.addr))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let measure_from = start + Duration::from_secs_f64(s.warmup);
    let end = measure_from + Duration::from_secs_f64(s.seconds);
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut errors = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let msg = message(conn, seq, s.size);
        seq += 1;
        let sent = Instant::now();
        stream
            .write_all(&msg)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut have = 0;
        loop {
            let n = stream
                .read(&mut buf[have..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("server closed the connection".into());
            }
            have += n;
            if buf[..have].windows(2).any(|w| w == [0x1c, 0x0d]) {
                break;
            }
            if have == buf.len() {
                return Err("reply larger than 64 KiB".into());
            }
        }
        // MSA|AA or MSA|CA: anything else counts as an error.
        if !buf[..have]
            .windows(7)
            .any(|w| w == b"MSA|AA|" || w == b"MSA|CA|")
        {
            errors += 1;
        }
        if sent >= measure_from {
            latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        }
    }
    Ok((latencies, errors))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let s = match settings() {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            eprintln!("mllp-load: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let start = Instant::now();
    let tasks: Vec<_> = (0..s.connections)
        .map(|c| {
            let s = s.clone();
            tokio::spawn(async move { connection(c, &s, start).await })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok((lat, err))) => {
                all.extend(lat);
                errors += err;
            }
            Ok(Err(e)) => {
                eprintln!("mllp-load: {e}");
                return std::process::ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("mllp-load: task failed: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let report = serde_json::json!({
        "addr": s.addr,
        "connections": s.connections,
        "size": s.size,
        "seconds": s.seconds,
        "messages": all.len(),
        "rate": all.len() as f64 / s.seconds,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "max_us": all.last().copied().unwrap_or(0),
        "errors": errors,
    });
    println!("{report}");
    std::process::ExitCode::SUCCESS
}
