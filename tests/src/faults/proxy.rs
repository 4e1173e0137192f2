//! A loopback TCP proxy between agents and the aggregator that injects link faults on command:
//! a delay on every chunk, a stall (nothing flows either way, the connections stay open),
//! resets (every connection, and every new one, closed with RST), truncation (each direction
//! of a connection cut with RST after a number of bytes), and a black hole (connections are
//! accepted, what they send is read and dropped, nothing ever answers).
//!
//! Threads, not tasks: the proxy serves synchronous and async tests alike, and a stalled
//! connection costs a parked thread, not a busy one.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What the link does to the bytes that cross it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// Passed through as they come.
    None,
    /// Each chunk held this long before it is passed on (order is kept).
    Delay(Duration),
    /// Nothing passes either way until the fault changes; connections stay open.
    Stall,
    /// Every open connection is reset now, and every new one as soon as it is accepted.
    Reset,
    /// Each direction of a connection passes this many more bytes, then the connection is
    /// reset (a request or an answer cut in the middle).
    Truncate(u64),
    /// Connections are accepted and what they send is dropped; nothing answers, ever.
    BlackHole,
}

impl std::fmt::Display for LinkFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkFault::None => write!(f, "none"),
            LinkFault::Delay(d) => write!(f, "delay {} ms per chunk", d.as_millis()),
            LinkFault::Stall => write!(f, "stall"),
            LinkFault::Reset => write!(f, "reset every connection"),
            LinkFault::Truncate(n) => write!(f, "truncate each direction after {n} bytes"),
            LinkFault::BlackHole => write!(f, "black hole"),
        }
    }
}

/// What the proxy saw, for the scenario's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyCounts {
    pub connections: u64,
    pub resets: u64,
    pub bytes_passed: u64,
    pub bytes_dropped: u64,
}

struct Shared {
    fault: Mutex<LinkFault>,
    changed: Condvar,
    /// Raised by each [`LinkFault::Reset`]: a connection from an earlier epoch is reset.
    epoch: AtomicU64,
    upstream: Mutex<SocketAddr>,
    connections: AtomicU64,
    resets: AtomicU64,
    passed: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn fault(&self) -> LinkFault {
        *self.fault.lock().unwrap()
    }

    /// Waits while the link is stalled; returns the fault that ended the stall.
    fn wait_unstalled(&self) -> LinkFault {
        let mut fault = self.fault.lock().unwrap();
        while *fault == LinkFault::Stall {
            fault = self.changed.wait(fault).unwrap();
        }
        *fault
    }
}

/// The proxy; clients connect to [`FaultProxy::addr`]. It stops accepting when dropped (open
/// connections end with their peers).
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// A proxy on a port the OS picks, in front of `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            fault: Mutex::new(LinkFault::None),
            changed: Condvar::new(),
            epoch: AtomicU64::new(0),
            upstream: Mutex::new(upstream),
            connections: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            passed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let accepting = Arc::downgrade(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Some(shared) = accepting.upgrade() else {
                    return;
                };
                let Ok(client) = client else { continue };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                serve(client, shared);
            }
        });
        FaultProxy { addr, shared }
    }

    /// Changes what the link does, at once, for open connections and new ones.
    pub fn set(&self, fault: LinkFault) {
        if fault == LinkFault::Reset {
            self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        }
        *self.shared.fault.lock().unwrap() = fault;
        self.shared.changed.notify_all();
    }

    /// Sends new connections to `upstream` (an aggregator restarted on another port); the
    /// address clients use stays the same.
    pub fn retarget(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    pub fn counts(&self) -> ProxyCounts {
        ProxyCounts {
            connections: self.shared.connections.load(Ordering::Relaxed),
            resets: self.shared.resets.load(Ordering::Relaxed),
            bytes_passed: self.shared.passed.load(Ordering::Relaxed),
            bytes_dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Wakes the accept loop so that it sees the proxy gone.
        let _ = TcpStream::connect(self.addr);
        self.set(LinkFault::Reset);
    }
}

/// Closes both ends with RST (linger 0), as a middlebox that drops the connection does.
fn reset(streams: &[&TcpStream], shared: &Shared) {
    shared.resets.fetch_add(1, Ordering::Relaxed);
    for stream in streams {
        let _ = socket2::SockRef::from(*stream).set_linger(Some(Duration::ZERO));
        let _ = stream.shutdown(Shutdown::Both);
    }
}

fn serve(client: TcpStream, shared: Arc<Shared>) {
    let epoch = shared.epoch.load(Ordering::SeqCst);
    match shared.fault() {
        LinkFault::Reset => return reset(&[&client], &shared),
        LinkFault::BlackHole => {
            std::thread::spawn(move || swallow(client, shared));
            return;
        }
        _ => {}
    }
    let upstream = *shared.upstream.lock().unwrap();
    let Ok(server) = TcpStream::connect(upstream) else {
        return reset(&[&client], &shared);
    };
    for (from, to) in [
        (client.try_clone(), server.try_clone()),
        (Ok(server), Ok(client)),
    ] {
        let (Ok(from), Ok(to)) = (from, to) else {
            return;
        };
        let shared = shared.clone();
        std::thread::spawn(move || pump(from, to, shared, epoch));
    }
}

/// Reads and drops what a black-holed connection sends, until it closes.
fn swallow(mut client: TcpStream, shared: Arc<Shared>) {
    let mut buffer = [0u8; 16 * 1024];
    while let Ok(n) = client.read(&mut buffer) {
        if n == 0 {
            break;
        }
        shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// One direction of a connection.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>, epoch: u64) {
    let mut buffer = [0u8; 16 * 1024];
    let mut truncated_after: Option<u64> = None;
    // A short read timeout, so that a reset reaches an idle connection promptly.
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    loop {
        if shared.epoch.load(Ordering::SeqCst) != epoch {
            return reset(&[&from, &to], &shared);
        }
        let n = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        let mut chunk = &buffer[..n];
        match shared.wait_unstalled() {
            LinkFault::None | LinkFault::Stall => {}
            LinkFault::Delay(d) => std::thread::sleep(d),
            LinkFault::Reset => return reset(&[&from, &to], &shared),
            LinkFault::BlackHole => {
                shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            LinkFault::Truncate(limit) => {
                let left = truncated_after.get_or_insert(limit);
                if (chunk.len() as u64) > *left {
                    chunk = &chunk[..*left as usize];
                    let _ = to.write_all(chunk);
                    shared
                        .passed
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    return reset(&[&from, &to], &shared);
                }
                *left -= chunk.len() as u64;
            }
        }
        if shared.epoch.load(Ordering::SeqCst) != epoch {
            return reset(&[&from, &to], &shared);
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        shared
            .passed
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes what it reads.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        addr
    }

    fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(bytes)?;
        let mut back = vec![0u8; bytes.len()];
        stream.read_exact(&mut back)?;
        Ok(back)
    }

    #[test]
    fn each_fault_does_to_the_link_what_it_says() {
        let proxy = FaultProxy::start(echo());
        let mut stream = TcpStream::connect(proxy.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(exchange(&mut stream, b"hello").unwrap(), b"hello");

        // A stall holds the bytes; they arrive once it ends.
        proxy.set(LinkFault::Stall);
        stream.write_all(b"held").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert!(stream.read(&mut byte).is_err(), "nothing passes a stall");
        proxy.set(LinkFault::None);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"held");

        // A reset ends the open connection and refuses new ones.
        proxy.set(LinkFault::Reset);
        assert!(exchange(&mut stream, b"after").is_err());
        let mut fresh = TcpStream::connect(proxy.addr).unwrap();
        fresh
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert!(exchange(&mut fresh, b"x").is_err());

        // Truncation passes that many bytes each way, then cuts: the echo server gets "abc",
        // and its echo may or may not beat the reset back.
        proxy.set(LinkFault::Truncate(3));
        let passed = proxy.counts().bytes_passed;
        let mut cut = TcpStream::connect(proxy.addr).unwrap();
        cut.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        cut.write_all(b"abcdef").unwrap();
        let mut got = Vec::new();
        let _ = cut.read_to_end(&mut got);
        assert!(b"abc".starts_with(&got), "{got:?}");
        let passed = proxy.counts().bytes_passed - passed;
        assert!((3..=6).contains(&passed), "{passed} bytes passed");

        // A black hole accepts and never answers.
        proxy.set(LinkFault::BlackHole);
        let mut hole = TcpStream::connect(proxy.addr).unwrap();
        hole.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        hole.write_all(b"anyone?").unwrap();
        assert!(hole.read(&mut byte).is_err(), "no answer from a black hole");

        proxy.set(LinkFault::None);
        let mut again = TcpStream::connect(proxy.addr).unwrap();
        again
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(exchange(&mut again, b"back").unwrap(), b"back");
        let counts = proxy.counts();
        assert!(counts.resets >= 3, "{counts:?}");
        assert!(counts.bytes_dropped >= 7, "{counts:?}");
    }
}
