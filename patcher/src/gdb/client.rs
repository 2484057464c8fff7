//! The GDB remote client: handshake (qSupported, PacketSize, no-ack mode),
//! requests with time-outs, threads, target description, chunked and
//! pipelined memory transfers; stopping, running, breakpoints and detaching
//! are in `client/run_control.rs`.

use std::time::Duration;

use tracing::{debug, warn};

use super::error::GdbError;
use super::link::{Link, Stream};
use super::packet;
use super::tdesc::{self, TargetDesc};

mod run_control;

/// Tunables of a connection.
#[derive(Debug, Clone)]
pub struct GdbOptions {
    /// Time allowed for each request's reply (and for connecting).
    pub timeout: Duration,
    /// Time allowed for the guest to stop after an interrupt.
    pub stop_timeout: Duration,
    /// Memory read requests kept in flight at once (1 = strictly
    /// request/reply, for stubs that cannot take back-to-back packets).
    pub pipeline: usize,
    /// Upper bound on bytes per memory request (the stub's packet size also bounds it).
    pub max_chunk: usize,
    /// Use QEMU's physical memory mode when the stub offers it (turn off to
    /// exercise the direct-map fallback).
    pub phys_mode: bool,
}

impl Default for GdbOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(5),
            pipeline: 16,
            max_chunk: 64 * 1024,
            phys_mode: true,
        }
    }
}

/// What the stub said it supports.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// Largest packet the stub accepts (`PacketSize`).
    pub packet_size: usize,
    /// `QStartNoAckMode+`.
    pub no_ack: bool,
    /// `qXfer:features:read+`.
    pub xfer_features: bool,
    /// `binary-upload+`: the `x` binary read packet.
    pub binary_read: bool,
    /// `vContSupported+`.
    pub vcont: bool,
    /// `X` binary write works (probed).
    pub binary_write: Option<bool>,
    /// QEMU's physical memory mode (`qqemu.Supported` has `PhyMemMode`).
    pub qemu_phys: bool,
}

/// A connection to a gdbstub in all-stop mode.
#[derive(Debug)]
pub struct GdbClient {
    link: Link,
    opts: GdbOptions,
    /// What the stub supports.
    pub features: Features,
    /// Set once a memory request came back `E22`-style for being too big.
    read_chunk: usize,
    phys_mode: bool,
    /// A pipelined transfer failed half-way: later replies cannot be matched.
    desync: bool,
}

/// `T`/`S` + two hex digits: a stop reply.
pub(crate) fn is_stop_reply(r: &[u8]) -> bool {
    super::stop::stop_signal(r).is_some()
}

impl GdbClient {
    /// Connect and negotiate. The stub is expected to have stopped the guest
    /// (QEMU stops the VM when a debugger connects).
    pub fn connect(addr: &str, opts: GdbOptions) -> Result<Self, GdbError> {
        let stream = Stream::connect(addr, opts.timeout)?;
        Self::handshake(Link::new(stream), opts)
    }

    /// Negotiate over an already connected stream (tests use socketpairs).
    pub fn over(stream: Stream, opts: GdbOptions) -> Result<Self, GdbError> {
        Self::handshake(Link::new(stream), opts)
    }

    fn handshake(link: Link, opts: GdbOptions) -> Result<Self, GdbError> {
        let mut c = Self { link, opts, features: Features::default(), read_chunk: 0, phys_mode: false, desync: false };
        // Acknowledge anything the stub may have sent before we spoke.
        c.link.write_raw(b"+", c.opts.timeout)?;
        let reply = c.request(b"qSupported:multiprocess-;swbreak+;hwbreak+;xmlRegisters=i386;binary-upload+;vContSupported+")?;
        let mut f = Features { packet_size: 4096, ..Features::default() };
        for item in reply.split(|&b| b == b';') {
            if let Some(v) = item.strip_prefix(b"PacketSize=") {
                f.packet_size = packet::parse_hex_u64(v).map(|v| v as usize).unwrap_or(4096).max(64);
            }
            match item {
                b"QStartNoAckMode+" => f.no_ack = true,
                b"qXfer:features:read+" => f.xfer_features = true,
                b"binary-upload+" => f.binary_read = true,
                b"vContSupported+" => f.vcont = true,
                _ => {}
            }
        }
        c.features = f;
        if c.features.no_ack {
            let r = c.request(b"QStartNoAckMode")?;
            if r == b"OK" {
                c.link.acks = false;
            }
        }
        let q = c.request(b"qqemu.Supported")?;
        c.features.qemu_phys = q.split(|&b| b == b';').any(|i| i == b"PhyMemMode");
        c.read_chunk = c.max_read_chunk();
        debug!(features = ?c.features, no_ack = !c.link.acks, "gdbstub handshake done");
        Ok(c)
    }

    /// The connection's options.
    pub fn options(&self) -> &GdbOptions {
        &self.opts
    }

    fn max_read_chunk(&self) -> usize {
        // Hex replies double the size; keep room for framing.
        let by_packet = if self.features.binary_read {
            self.features.packet_size.saturating_sub(16)
        } else {
            self.features.packet_size.saturating_sub(16) / 2
        };
        by_packet.clamp(16, self.opts.max_chunk)
    }

    fn max_write_chunk(&self, binary: bool) -> usize {
        // Request = "M" + addr + "," + len + ":" + data; ~40 bytes of header.
        let room = self.features.packet_size.saturating_sub(48);
        // Hex doubles the data; binary may double it too when every byte
        // needs escaping, so both take half the room.
        let _ = binary;
        (room / 2).clamp(8, self.opts.max_chunk)
    }

    /// Send a request and wait for its reply.
    pub fn request(&mut self, req: &[u8]) -> Result<Vec<u8>, GdbError> {
        self.check_sync(req)?;
        self.link.send(req, self.opts.timeout)?;
        if req == b"?" {
            return self.link.recv(self.opts.timeout, req);
        }
        self.recv_reply(req)
    }

    /// Receive the reply to `req`, skipping stop notifications (`T05…`,
    /// `S05`) that a stub sends on its own, e.g. QEMU when a debugger
    /// attaches to a running VM. No other reply starts that way.
    fn recv_reply(&mut self, req: &[u8]) -> Result<Vec<u8>, GdbError> {
        for _ in 0..8 {
            let r = self.link.recv(self.opts.timeout, req)?;
            if is_stop_reply(&r) {
                debug!(reply = %String::from_utf8_lossy(&r), "skipping unsolicited stop reply");
                continue;
            }
            return Ok(r);
        }
        Err(GdbError::protocol(req, b"only stop replies"))
    }

    /// Send a request whose reply must be `OK`.
    pub fn request_ok(&mut self, req: &[u8]) -> Result<(), GdbError> {
        let r = self.request(req)?;
        if r == b"OK" {
            Ok(())
        } else if packet::is_error_reply(&r) {
            Err(GdbError::remote(req, &r))
        } else if r.is_empty() {
            Err(GdbError::Unsupported("a request (empty reply)"))
        } else {
            Err(GdbError::protocol(req, &r))
        }
    }

    /// Thread ids (`qfThreadInfo`/`qsThreadInfo`), in the stub's order.
    pub fn threads(&mut self) -> Result<Vec<String>, GdbError> {
        let mut out = Vec::new();
        let mut req: &[u8] = b"qfThreadInfo";
        for _ in 0..4096 {
            let r = self.request(req)?;
            match r.first() {
                Some(b'm') => {
                    for t in r[1..].split(|&b| b == b',') {
                        if !t.is_empty() {
                            out.push(String::from_utf8_lossy(t).into_owned());
                        }
                    }
                }
                Some(b'l') => return Ok(out),
                _ => return Err(GdbError::protocol(req, &r)),
            }
            req = b"qsThreadInfo";
        }
        Err(GdbError::protocol(b"qsThreadInfo", b"thread list does not end"))
    }

    /// Select the thread for register and memory requests (`Hg`).
    pub fn select_thread(&mut self, tid: &str) -> Result<(), GdbError> {
        self.request_ok(format!("Hg{tid}").as_bytes())
    }

    /// Read one `qXfer:features:read` annex completely.
    pub fn xfer_features(&mut self, annex: &str) -> Result<String, GdbError> {
        let mut data = Vec::new();
        let chunk = self.features.packet_size.saturating_sub(16).max(64);
        loop {
            let req = format!("qXfer:features:read:{annex}:{:x},{chunk:x}", data.len());
            let r = self.request(req.as_bytes())?;
            let (kind, body) = match r.split_first() {
                Some((k, b)) => (*k, b),
                None => return Err(GdbError::Unsupported("qXfer:features:read")),
            };
            let body = packet::unescape(body).ok_or_else(|| GdbError::protocol(req.as_bytes(), &r))?;
            match kind {
                b'm' if !body.is_empty() => data.extend_from_slice(&body),
                b'l' | b'm' => {
                    data.extend_from_slice(&body);
                    return Ok(String::from_utf8_lossy(&data).into_owned());
                }
                _ => return Err(GdbError::remote(req.as_bytes(), &r)),
            }
        }
    }

    /// Fetch `target.xml` and everything it includes; number the registers.
    pub fn target_description(&mut self) -> Result<TargetDesc, GdbError> {
        if !self.features.xfer_features {
            return Err(GdbError::Unsupported("qXfer:features:read (target description)"));
        }
        let mut items = Vec::new();
        let mut stack = vec!["target.xml".to_string()];
        let mut seen = 0usize;
        while let Some(annex) = stack.pop() {
            seen += 1;
            if seen > 64 {
                return Err(GdbError::protocol(b"qXfer:features:read", b"too many included files"));
            }
            let xml = self.xfer_features(&annex)?;
            let mut local = tdesc::scan(&xml);
            // Expand includes in place, depth-first, preserving order.
            let mut expanded = Vec::new();
            for it in local.drain(..) {
                match it {
                    tdesc::Item::Include(h) => {
                        let sub = self.xfer_features(&h)?;
                        for s in tdesc::scan(&sub) {
                            match s {
                                tdesc::Item::Include(h2) => stack.push(h2),
                                r => expanded.push(r),
                            }
                        }
                    }
                    r => expanded.push(r),
                }
            }
            items.extend(expanded);
        }
        Ok(tdesc::number(items))
    }

    /// Read all registers of the selected thread (`g`), raw bytes.
    pub fn read_all_registers(&mut self) -> Result<Vec<u8>, GdbError> {
        let r = self.request(b"g")?;
        if packet::is_error_reply(&r) {
            return Err(GdbError::remote(b"g", &r));
        }
        // 'x' digits mean "unavailable"; read them as zero.
        let cleaned: Vec<u8> = r.iter().map(|&c| if c == b'x' { b'0' } else { c }).collect();
        packet::from_hex(&cleaned).ok_or_else(|| GdbError::protocol(b"g", &r))
    }

    /// Read one register of the selected thread (`p`), raw bytes.
    pub fn read_register(&mut self, regnum: u32) -> Result<Vec<u8>, GdbError> {
        let req = format!("p{regnum:x}");
        let r = self.request(req.as_bytes())?;
        if r.is_empty() || packet::is_error_reply(&r) {
            return Err(GdbError::remote(req.as_bytes(), &r));
        }
        packet::from_hex(&r).ok_or_else(|| GdbError::protocol(req.as_bytes(), &r))
    }

    /// Switch QEMU's memory requests to guest-physical addresses (or back).
    pub fn set_phys_mode(&mut self, on: bool) -> Result<(), GdbError> {
        if !self.features.qemu_phys {
            return Err(GdbError::Unsupported("qemu.PhyMemMode"));
        }
        if self.phys_mode == on {
            return Ok(());
        }
        self.request_ok(if on { b"Qqemu.PhyMemMode:1" } else { b"Qqemu.PhyMemMode:0" })?;
        self.phys_mode = on;
        Ok(())
    }

    /// True while memory requests address guest-physical memory.
    pub fn phys_mode(&self) -> bool {
        self.phys_mode
    }

    fn read_request(&self, addr: u64, len: usize) -> String {
        if self.features.binary_read {
            format!("x{addr:x},{len:x}")
        } else {
            format!("m{addr:x},{len:x}")
        }
    }

    /// Decode one read reply into `out`; returns the bytes it carried (a
    /// stub may answer with fewer than asked, never with none or more).
    fn decode_read(&self, req: &[u8], reply: &[u8], out: &mut [u8]) -> Result<usize, GdbError> {
        if packet::is_error_reply(reply) {
            return Err(GdbError::remote(req, reply));
        }
        let data = if self.features.binary_read {
            let body = reply.strip_prefix(b"b").ok_or_else(|| GdbError::protocol(req, reply))?;
            packet::unescape(body).ok_or_else(|| GdbError::protocol(req, reply))?
        } else {
            if !reply.len().is_multiple_of(2) {
                return Err(GdbError::protocol(req, reply));
            }
            packet::from_hex(reply).ok_or_else(|| GdbError::protocol(req, reply))?
        };
        if data.is_empty() || data.len() > out.len() {
            return Err(GdbError::protocol(req, b"empty or oversized memory reply"));
        }
        out[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }

    /// Read memory (virtual or physical per the current mode) in chunks of the
    /// largest size the stub takes, with several requests in flight.
    pub fn read_memory(&mut self, addr: u64, out: &mut [u8]) -> Result<(), GdbError> {
        let mut done = 0usize;
        while done < out.len() {
            match self.read_window(addr, out, done) {
                Ok(n) => done = n,
                Err(GdbError::Remote { request, reply }) if self.read_chunk > 256 => {
                    // Maybe too large for this stub: halve and retry this span.
                    warn!(%request, %reply, chunk = self.read_chunk, "memory read refused; halving chunk size");
                    self.read_chunk /= 2;
                    if self.read_chunk <= 256 {
                        return Err(GdbError::Remote { request, reply });
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn check_sync(&self, req: &[u8]) -> Result<(), GdbError> {
        if self.desync {
            return Err(GdbError::protocol(req, b"link out of step after an interrupted transfer; reconnect"));
        }
        Ok(())
    }

    /// Issue up to `pipeline` requests starting at `done`; return the new `done`.
    fn read_window(&mut self, addr: u64, out: &mut [u8], done: usize) -> Result<usize, GdbError> {
        self.check_sync(b"m")?;
        let depth = self.opts.pipeline.max(1);
        let chunk = self.read_chunk;
        let mut reqs = Vec::with_capacity(depth);
        let mut pos = done;
        while reqs.len() < depth && pos < out.len() {
            let len = chunk.min(out.len() - pos);
            let req = self.read_request(addr.wrapping_add(pos as u64), len);
            if depth == 1 {
                self.link.send(req.as_bytes(), self.opts.timeout)?;
            } else {
                self.link.send_nowait(req.as_bytes(), self.opts.timeout)?;
            }
            reqs.push((req, pos, len));
            pos += len;
        }
        let mut first_err = None;
        // After a short reply, later replies are drained and the window
        // restarts where the data stopped.
        let mut short_at: Option<usize> = None;
        self.link.nak = reqs.len() <= 1;
        for (req, p, len) in reqs {
            let reply = match self.recv_reply(req.as_bytes()) {
                Ok(r) => r,
                Err(e) => {
                    // Replies may still be in flight: the stream is out of step.
                    self.desync = true;
                    self.link.nak = true;
                    return Err(e);
                }
            };
            if first_err.is_none() && short_at.is_none() {
                match self.decode_read(req.as_bytes(), &reply, &mut out[p..p + len]) {
                    Ok(n) if n < len => short_at = Some(p + n),
                    Ok(_) => {}
                    Err(e) => first_err = Some(e),
                }
            }
        }
        self.link.nak = true;
        match (first_err, short_at) {
            (Some(e), _) => Err(e),
            (None, Some(at)) => Ok(at),
            (None, None) => Ok(pos),
        }
    }

    /// Write memory with `X` (binary) when the stub takes it, else `M`, chunked.
    pub fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), GdbError> {
        if self.features.binary_write.is_none() {
            let probe = format!("X{addr:x},0:");
            let r = self.request(probe.as_bytes())?;
            self.features.binary_write = Some(r == b"OK");
            debug!(binary_write = r == b"OK", "probed X packet");
        }
        let binary = self.features.binary_write == Some(true);
        let chunk = self.max_write_chunk(binary);
        for (i, part) in data.chunks(chunk).enumerate() {
            let a = addr.wrapping_add((i * chunk) as u64);
            let mut req = if binary { format!("X{a:x},{:x}:", part.len()).into_bytes() } else { format!("M{a:x},{:x}:", part.len()).into_bytes() };
            if binary {
                req.extend_from_slice(part); // escaped by the framer
            } else {
                req.extend_from_slice(packet::to_hex(part).as_bytes());
            }
            self.request_ok(&req)?;
        }
        Ok(())
    }
}
