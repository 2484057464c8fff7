//! The byte stream to a gdbstub (TCP or Unix socket) and packet-level I/O
//! with a deadline on every receive: a silent peer is an error, never a hang.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tracing::trace;

use super::error::GdbError;
use super::packet;

/// A connected socket.
#[derive(Debug)]
pub enum Stream {
    /// `host:port`.
    Tcp(TcpStream),
    /// A Unix socket path (or one end of a socketpair in tests).
    Unix(UnixStream),
}

impl Stream {
    /// Connect to `host:port`, `unix:PATH` or a path containing `/`.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Self, GdbError> {
        let err = |source| GdbError::Connect { addr: addr.to_string(), source };
        if let Some(path) = addr.strip_prefix("unix:") {
            return UnixStream::connect(path).map(Stream::Unix).map_err(err);
        }
        if addr.contains('/') {
            return UnixStream::connect(addr).map(Stream::Unix).map_err(err);
        }
        use std::net::ToSocketAddrs;
        let mut last = std::io::Error::new(ErrorKind::NotFound, "address resolves to nothing");
        for sa in addr.to_socket_addrs().map_err(err)? {
            match TcpStream::connect_timeout(&sa, timeout) {
                Ok(s) => {
                    // Small request/reply packets: never wait for Nagle.
                    s.set_nodelay(true).map_err(GdbError::Io)?;
                    return Ok(Stream::Tcp(s));
                }
                Err(e) => last = e,
            }
        }
        Err(err(last))
    }

    fn set_read_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(t)),
            Stream::Unix(s) => s.set_read_timeout(Some(t)),
        }
    }

    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    fn set_write_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(t)),
            Stream::Unix(s) => s.set_write_timeout(Some(t)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// Packet-level link: framing, acks (until no-ack mode), deadlines.
#[derive(Debug)]
pub struct Link {
    stream: Stream,
    rbuf: Vec<u8>,
    rpos: usize,
    /// Whether `+`/`-` acknowledgements are still exchanged.
    pub acks: bool,
    /// Whether a bad packet may be NAKed for retransmission. Off while
    /// several requests are in flight: the stub would resend its *last*
    /// reply, which may belong to another request.
    pub nak: bool,
}

/// One received packet: the payload after RLE expansion (escapes kept).
pub type Payload = Vec<u8>;

/// Largest packet body accepted on the wire (between `$` and `#`). QEMU's
/// largest replies (a `g` with every register, a `qXfer` chunk of the target
/// description, an `m`/`x` read of its `PacketSize`) are far below this; a
/// peer that sends more is broken or hostile and the link refuses it
/// (`packet_too_large`) instead of growing the buffer without bound.
pub const MAX_PACKET_BODY: usize = 1 << 20;

/// Largest payload after run-length expansion (each `c*n` pair expands to at
/// most 227 bytes, so a bounded body can still claim ~113x its size).
pub const MAX_PACKET_PAYLOAD: usize = 4 << 20;

/// Bytes outside any packet (not `$`/`%`, not an ack) tolerated before the
/// link gives up on the peer (`garbage`): a stub sends at most a few acks
/// between packets, never megabytes of noise.
pub const MAX_NOISE_BYTES: usize = 64 * 1024;

impl Link {
    /// Wrap a connected stream.
    pub fn new(stream: Stream) -> Self {
        Self { stream, rbuf: vec![0; 64 * 1024], rpos: 0, acks: true, nak: true }
            .with_empty_buffer()
    }

    fn with_empty_buffer(mut self) -> Self {
        self.rbuf.clear();
        self
    }

    /// Write raw bytes (a framed packet or the 0x03 interrupt).
    pub fn write_raw(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), GdbError> {
        self.stream.set_write_timeout(timeout.max(Duration::from_millis(1))).map_err(GdbError::Io)?;
        self.stream.write_all(bytes).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => GdbError::Timeout {
                what: "a write".into(),
                timeout_ms: timeout.as_millis() as u64,
            },
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => GdbError::Closed,
            _ => GdbError::Io(e),
        })
    }

    /// Frame and send one packet; in ack mode wait for `+` (resending on `-`).
    pub fn send(&mut self, payload: &[u8], timeout: Duration) -> Result<(), GdbError> {
        let framed = packet::frame(payload);
        trace!(packet = %super::error::short(payload), "gdb send");
        let deadline = Instant::now() + timeout;
        for _attempt in 0..4 {
            self.write_raw(&framed, timeout)?;
            if !self.acks {
                return Ok(());
            }
            let mut noise = 0usize;
            loop {
                let b = self.next_byte(deadline, payload).map_err(|e| match e {
                    GdbError::Timeout { what, .. } => GdbError::Timeout { what, timeout_ms: timeout.as_millis() as u64 },
                    other => other,
                })?;
                match b {
                    b'+' => return Ok(()),
                    b'-' => break,
                    b'$' => {
                        // A reply without an ack: leave it for recv().
                        self.rpos -= 1;
                        return Ok(());
                    }
                    _ => {
                        noise += 1;
                        if noise > MAX_NOISE_BYTES {
                            return Err(GdbError::Garbage { limit: MAX_NOISE_BYTES });
                        }
                    }
                }
            }
        }
        Err(GdbError::protocol(payload, b"packet not acknowledged after 4 tries"))
    }

    /// Frame and send one packet without waiting for its ack (pipelined
    /// requests; acks are skipped by [`Link::recv`], a NAK shows up as a
    /// time-out of the reply).
    pub fn send_nowait(&mut self, payload: &[u8], timeout: Duration) -> Result<(), GdbError> {
        trace!(packet = %super::error::short(payload), "gdb send (pipelined)");
        self.write_raw(&packet::frame(payload), timeout)
    }

    fn fill(&mut self, deadline: Instant, what: &[u8]) -> Result<(), GdbError> {
        let now = Instant::now();
        if now >= deadline {
            return Err(timeout_err(what));
        }
        let remaining = deadline - now;
        self.stream.set_read_timeout(remaining.max(Duration::from_millis(1))).map_err(GdbError::Io)?;
        if self.rpos >= self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
        let start = self.rbuf.len();
        self.rbuf.resize(start + 64 * 1024, 0);
        let r = self.stream.read(&mut self.rbuf[start..]);
        match r {
            Ok(0) => {
                self.rbuf.truncate(start);
                Err(GdbError::Closed)
            }
            Ok(n) => {
                self.rbuf.truncate(start + n);
                Ok(())
            }
            Err(e) => {
                self.rbuf.truncate(start);
                match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => Err(timeout_err(what)),
                    ErrorKind::Interrupted => Ok(()),
                    ErrorKind::ConnectionReset => Err(GdbError::Closed),
                    _ => Err(GdbError::Io(e)),
                }
            }
        }
    }

    /// True when bytes from the stub wait to be read (already buffered, or
    /// on the socket right now), without blocking; [`GdbError::Closed`] when
    /// the stub closed the connection. What is read stays buffered for
    /// [`Link::recv`].
    pub fn pending(&mut self) -> Result<bool, GdbError> {
        if self.rpos < self.rbuf.len() {
            return Ok(true);
        }
        self.rbuf.clear();
        self.rpos = 0;
        self.stream.set_nonblocking(true).map_err(GdbError::Io)?;
        self.rbuf.resize(64 * 1024, 0);
        let r = self.stream.read(&mut self.rbuf);
        let restored = self.stream.set_nonblocking(false);
        self.rbuf.truncate(*r.as_ref().unwrap_or(&0));
        restored.map_err(GdbError::Io)?;
        match r {
            Ok(0) => Err(GdbError::Closed),
            Ok(_) => Ok(true),
            Err(e) => match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(false),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => Err(GdbError::Closed),
                _ => Err(GdbError::Io(e)),
            },
        }
    }

    fn next_byte(&mut self, deadline: Instant, what: &[u8]) -> Result<u8, GdbError> {
        while self.rpos >= self.rbuf.len() {
            self.fill(deadline, what)?;
        }
        let b = self.rbuf[self.rpos];
        self.rpos += 1;
        Ok(b)
    }

    /// Receive the next `$…#cs` packet (skipping acks and `%` notifications),
    /// verify its checksum and expand run-length encoding. `what` names the
    /// request for the time-out error.
    pub fn recv(&mut self, timeout: Duration, what: &[u8]) -> Result<Payload, GdbError> {
        let deadline = Instant::now() + timeout;
        let r = self.recv_until(deadline, what);
        if let Err(GdbError::Timeout { what, .. }) = r {
            return Err(GdbError::Timeout { what, timeout_ms: timeout.as_millis() as u64 });
        }
        r
    }

    fn recv_until(&mut self, deadline: Instant, what: &[u8]) -> Result<Payload, GdbError> {
        loop {
            // Find the start of a packet.
            let mut noise = 0usize;
            let start = loop {
                match self.next_byte(deadline, what)? {
                    b'$' => break b'$',
                    b'%' => break b'%',
                    b'+' | b'-' => continue, // acks
                    _ => {
                        noise += 1;
                        if noise > MAX_NOISE_BYTES {
                            return Err(GdbError::Garbage { limit: MAX_NOISE_BYTES });
                        }
                    }
                }
            };
            let mut body = Vec::new();
            loop {
                // Fast path: copy up to '#' from the buffer in one go.
                let avail = &self.rbuf[self.rpos..];
                let (take, end) = match avail.iter().position(|&b| b == b'#') {
                    Some(i) => (i, true),
                    None => (avail.len(), false),
                };
                if body.len().saturating_add(take) > MAX_PACKET_BODY {
                    // Drop what is buffered: the stream is no longer in sync.
                    self.rbuf.clear();
                    self.rpos = 0;
                    return Err(GdbError::PacketTooLarge { limit: MAX_PACKET_BODY });
                }
                body.extend_from_slice(&avail[..take]);
                if end {
                    self.rpos += take + 1;
                    break;
                }
                self.rpos = self.rbuf.len();
                self.fill(deadline, what)?;
            }
            let d = [self.next_byte(deadline, what)?, self.next_byte(deadline, what)?];
            let computed = packet::checksum(&body);
            let got = packet::parse_checksum(d);
            if start == b'%' {
                continue; // non-stop notification: not used in all-stop mode
            }
            if got != Some(computed) {
                if self.acks && self.nak {
                    self.write_raw(b"-", Duration::from_secs(1))?;
                    continue;
                }
                return Err(GdbError::Checksum { got: got.unwrap_or(0), computed });
            }
            if self.acks {
                self.write_raw(b"+", Duration::from_secs(1))?;
            }
            let payload = packet::rle_decode(&body, MAX_PACKET_PAYLOAD).ok_or_else(|| GdbError::protocol(what, &body))?;
            trace!(reply = %super::error::short(&payload), "gdb recv");
            return Ok(payload);
        }
    }
}

/// A time-out error; the caller that knows the budget fills in `timeout_ms`.
fn timeout_err(what: &[u8]) -> GdbError {
    GdbError::Timeout { what: super::error::short(what), timeout_ms: 0 }
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
