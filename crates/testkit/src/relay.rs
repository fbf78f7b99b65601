//! A TCP relay for tests: a round-robin load balancer in front of several gateways (as a
//! Kubernetes Service would be), or a cable between a gateway and its database that a
//! test can cut and mend.
//!
//! Threads and blocking sockets, like the rest of the test kit. Each accepted connection
//! goes to the next upstream that accepts a connection (upstreams that refuse are
//! skipped, so a killed gateway drops out of the rotation by itself). [`Relay::cut`]
//! shuts every relayed connection down and, until [`Relay::restore`], closes new ones as
//! soon as they are accepted.

// Threads and blocking sockets only: there is no async runtime here to block.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug)]
struct Inner {
    upstreams: Vec<SocketAddr>,
    next: AtomicUsize,
    cut: AtomicBool,
    stop: AtomicBool,
    /// Both ends of every live relayed connection, to shut down on a cut.
    conns: Mutex<Vec<TcpStream>>,
    accepted: AtomicU64,
}

/// A running relay; stopped (and every connection closed) on drop.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on 127.0.0.1 (any port) and relays to `upstreams` in turn.
    ///
    /// # Panics
    /// When it cannot listen.
    pub fn start(upstreams: Vec<SocketAddr>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay: bind");
        let addr = listener.local_addr().expect("relay: local addr");
        let inner = Arc::new(Inner {
            upstreams,
            next: AtomicUsize::new(0),
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let accept = {
            let inner = inner.clone();
            std::thread::spawn(move || accept_loop(&listener, &inner))
        };
        Relay {
            addr,
            inner,
            accept: Some(accept),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Shuts every relayed connection down; new ones are closed at once until
    /// [`Relay::restore`].
    pub fn cut(&self) {
        self.inner.cut.store(true, Ordering::SeqCst);
        let conns = std::mem::take(&mut *self.inner.conns.lock().expect("relay lock"));
        for c in conns {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.inner.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, inner: &Arc<Inner>) {
    for inbound in listener.incoming() {
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(inbound) = inbound else { continue };
        inner.accepted.fetch_add(1, Ordering::SeqCst);
        if inner.cut.load(Ordering::SeqCst) {
            let _ = inbound.shutdown(Shutdown::Both);
            continue;
        }
        let inner = inner.clone();
        std::thread::spawn(move || relay_one(inbound, &inner));
    }
}

fn relay_one(inbound: TcpStream, inner: &Inner) {
    let n = inner.upstreams.len();
    let start = inner.next.fetch_add(1, Ordering::SeqCst);
    let outbound = (0..n).find_map(|i| {
        let addr = inner.upstreams[(start + i) % n];
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()
    });
    let Some(outbound) = outbound else {
        let _ = inbound.shutdown(Shutdown::Both);
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (Ok(in2), Ok(out2), Ok(in3), Ok(out3)) = (
        inbound.try_clone(),
        outbound.try_clone(),
        inbound.try_clone(),
        outbound.try_clone(),
    ) else {
        return;
    };
    {
        let mut conns = inner.conns.lock().expect("relay lock");
        if inner.cut.load(Ordering::SeqCst) {
            let _ = inbound.shutdown(Shutdown::Both);
            let _ = outbound.shutdown(Shutdown::Both);
            return;
        }
        conns.push(in3);
        conns.push(out3);
    }
    let back = std::thread::spawn(move || pipe(out2, in2));
    pipe(inbound, outbound);
    let _ = back.join();
}

/// Copies `from` to `to` until either end closes, then closes both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        Ok(buf.to_vec())
    }

    #[test]
    fn relays_skips_dead_upstreams_and_cuts() {
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let relay = Relay::start(vec![dead, echo_server()]);
        for _ in 0..3 {
            assert_eq!(round_trip(relay.addr()).unwrap(), b"ping");
        }
        let mut open = TcpStream::connect(relay.addr()).unwrap();
        open.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        open.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).unwrap();
        relay.cut();
        // The open connection is closed, and new ones get nothing.
        assert!(matches!(open.read(&mut buf), Ok(0) | Err(_)));
        assert!(round_trip(relay.addr()).is_err());
        relay.restore();
        assert_eq!(round_trip(relay.addr()).unwrap(), b"ping");
    }
}
