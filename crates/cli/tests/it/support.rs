//! Helpers shared by the binary's test modules.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use causeway_testkit::process::Child;

/// How long a test waits for a child process to say something.
pub const WAIT: Duration = Duration::from_secs(20);

/// Starts `causeway listen --port 0` with `extra` flags; returns it with the port it chose
/// (read from the line it prints on standard error).
pub fn causeway_listen(extra: &[&str]) -> (Child, String) {
    let mut args = vec!["listen", "--port", "0"];
    args.extend_from_slice(extra);
    let child = Child::spawn(env!("CARGO_BIN_EXE_causeway"), &args);
    let line = child.wait_for_line(true, WAIT, |l| l.starts_with("causeway listen: "));
    let port = line
        .split(" on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
        .to_owned();
    (child, port)
}

/// A GET over HTTP/1.1 (the admin API): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((status, body))
}
