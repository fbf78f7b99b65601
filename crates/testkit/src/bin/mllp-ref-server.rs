//! `mllp-ref-server`: the benchmark's reference, a minimal tokio MLLP server that answers
//! every frame with one fixed ACK. It checks nothing, parses nothing and stores nothing: it
//! is the ceiling any real server on this machine can be compared to.
//!
//! Usage: mllp-ref-server ADDR

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ACK: &[u8] = b"\x0bMSH|^~\\&|REF|REF|LOAD|BENCH|20261127120000||ACK^A01^ACK|REF1|P|2.5.1\rMSA|AA|X\r\x1c\x0d";

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2575".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut pending = 0usize;
            loop {
                let n = match stream.read(&mut buf[pending..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let end = pending + n;
                // Answer once per complete frame in the buffer; keep a partial tail.
                let mut start = 0;
                while let Some(i) = buf[start..end].windows(2).position(|w| w == [0x1c, 0x0d]) {
                    if stream.write_all(ACK).await.is_err() {
                        return;
                    }
                    start += i + 2;
                }
                buf.copy_within(start..end, 0);
                pending = end - start;
                if pending == buf.len() {
                    pending = 0;
                }
            }
        });
    }
}
