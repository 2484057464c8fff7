//! A scripted gdbstub for unit tests: a thread serving one connection over a
//! socketpair, with switches for no-ack mode, run-length encoded replies,
//! binary writes, a corrupted checksum and going silent mid-transfer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::packet;

/// Behaviour switches.
#[derive(Debug, Clone, Default)]
pub struct MockConfig {
    pub no_ack: bool,
    pub rle: bool,
    pub binary_write: bool,
    pub phys: bool,
    /// Corrupt the checksum of the first reply to this packet prefix once.
    pub corrupt_once: Option<String>,
    /// Never answer the interrupt (a guest that does not stop).
    pub ignore_interrupt: bool,
    /// Stop answering after this many memory reads.
    pub silent_after_reads: Option<usize>,
    pub packet_size: usize,
    /// Offer and serve the binary `x` read packet.
    pub binary_read: bool,
    /// Answer reads with at most this many bytes (short replies).
    pub short_reads: Option<usize>,
    /// On continue: send this packet (empty: nothing) and close the
    /// connection, as QEMU does when it quits under a running guest.
    pub exit_on_cont: Option<Vec<u8>>,
    /// Serve `Z1`/`z1` (hardware breakpoints); off: empty replies.
    pub hw_breakpoints: bool,
}

/// Shared guest state of the mock.
#[derive(Debug, Default)]
pub struct MockState {
    pub mem: Vec<u8>,
    pub mem_base: u64,
    pub log: Vec<String>,
    pub running: bool,
    /// Hardware breakpoints inserted.
    pub breakpoints: Vec<u64>,
    /// On the next continue: vCPU (thread) `.0` runs to `.1`, and when a
    /// breakpoint is set there, stops on it (`T05`, RIP = `.1`).
    pub hit_on_cont: Option<(u64, u64)>,
    /// RIP of a thread, when moved by a hit (`g`, `p10`).
    pub rip: Option<(u64, u64)>,
    /// Single steps served.
    pub steps: usize,
}

pub const TARGET_XML: &str = r#"<?xml version="1.0"?><target><architecture>i386:x86-64</architecture><xi:include href="core.xml"/><xi:include href="sys.xml"/></target>"#;

fn core_xml() -> String {
    let mut s = String::from(r#"<feature name="org.gnu.gdb.i386.core">"#);
    for n in super::registers::GPR_NAMES {
        s.push_str(&format!(r#"<reg name="{n}" bitsize="64"/>"#));
    }
    s.push_str(r#"<reg name="rip" bitsize="64"/><reg name="eflags" bitsize="32"/><reg name="cs" bitsize="32"/></feature>"#);
    s
}

fn sys_xml() -> String {
    let mut s = String::from(r#"<feature name="org.qemu.gdb.i386.sys">"#);
    for n in ["fs_base", "gs_base", "k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"] {
        s.push_str(&format!(r#"<reg name="{n}" bitsize="64"/>"#));
    }
    s.push_str("</feature>");
    s
}

/// Register value of thread `t` (1-based), register number `n`.
pub fn reg_value(t: u64, n: u32) -> u64 {
    (t << 32) | (u64::from(n) * 0x111)
}

fn rle_encode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let mut run = 1;
        while i + run < s.len() && s[i + run] == c && run < 97 {
            run += 1;
        }
        // Repeat counts 3..: '*' + (count + 29); avoid '#', '$' ('#'=35 -> 6, '$'=36 -> 7).
        if run > 3 && run - 1 != 6 && run - 1 != 7 && c != b'}' {
            out.push(c);
            out.push(b'*');
            out.push((run - 1 + 29) as u8);
        } else {
            out.extend(std::iter::repeat_n(c, run));
        }
        i += run;
    }
    out
}

struct Server {
    s: UnixStream,
    cfg: MockConfig,
    st: Arc<Mutex<MockState>>,
    acks: bool,
    thread: u64,
    step_thread: u64,
    reads: usize,
    corrupted: bool,
    last: Vec<u8>,
}

impl Server {
    fn send(&mut self, payload: &[u8], tag: &str) {
        let body = if self.cfg.rle { rle_encode(&packet::escape(payload)) } else { packet::escape(payload) };
        let mut cs = packet::checksum(&body);
        if let Some(p) = &self.cfg.corrupt_once {
            if !self.corrupted && tag.starts_with(p.as_str()) {
                self.corrupted = true;
                cs = cs.wrapping_add(1);
            }
        }
        let mut f = vec![b'$'];
        f.extend_from_slice(&body);
        f.extend_from_slice(format!("#{cs:02x}").as_bytes());
        let _ = self.s.write_all(&f);
        // Like QEMU in system mode: do not block for the ack; a '-' seen
        // later by read_packet() resends the last reply (uncorrupted).
        let body2 = packet::escape(payload);
        let cs2 = packet::checksum(&body2);
        let mut f2 = vec![b'$'];
        f2.extend_from_slice(&body2);
        f2.extend_from_slice(format!("#{cs2:02x}").as_bytes());
        self.last = f2;
    }

    fn read_packet(&mut self) -> Option<Vec<u8>> {
        let mut b = [0u8; 1];
        loop {
            if self.s.read(&mut b).ok()? == 0 {
                return None;
            }
            match b[0] {
                b'$' => break,
                0x03 => return Some(vec![0x03]),
                b'-' if self.acks => {
                    let f = self.last.clone();
                    self.s.write_all(&f).ok()?;
                }
                _ => {}
            }
        }
        let mut body = Vec::new();
        loop {
            if self.s.read(&mut b).ok()? == 0 {
                return None;
            }
            if b[0] == b'#' {
                break;
            }
            body.push(b[0]);
        }
        let mut cs = [0u8; 2];
        self.s.read_exact(&mut cs).ok()?;
        assert_eq!(packet::parse_checksum(cs), Some(packet::checksum(&body)), "client sent a bad checksum");
        if self.acks {
            self.s.write_all(b"+").ok()?;
        }
        packet::unescape(&body)
    }

    fn mem_range(&self, addr: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let st = self.st.lock().unwrap();
        let start = addr.checked_sub(st.mem_base)? as usize;
        let end = start.checked_add(len)?;
        (end <= st.mem.len()).then_some(start..end)
    }

    fn reg(&self, n: u32) -> u64 {
        match self.st.lock().unwrap().rip {
            Some((t, a)) if n == 16 && t == self.thread => a,
            _ => reg_value(self.thread, n),
        }
    }

    fn handle(&mut self, p: &[u8]) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(p).into_owned();
        self.st.lock().unwrap().log.push(text.clone());
        if p == [0x03] {
            if self.cfg.ignore_interrupt {
                return None;
            }
            self.st.lock().unwrap().running = false;
            return Some(b"T02thread:01;".to_vec());
        }
        let reply: Vec<u8> = if text.starts_with("qSupported") {
            let mut r = format!("PacketSize={:x};qXfer:features:read+", self.cfg.packet_size);
            if self.cfg.no_ack {
                r.push_str(";QStartNoAckMode+");
            }
            if self.cfg.binary_read {
                r.push_str(";binary-upload+");
            }
            r.into_bytes()
        } else if text == "QStartNoAckMode" {
            self.send(b"OK", "QStartNoAckMode");
            self.acks = false;
            return None;
        } else if text == "qqemu.Supported" {
            if self.cfg.phys { b"sstepbits;sstep;PhyMemMode".to_vec() } else { Vec::new() }
        } else if text.starts_with("Qqemu.PhyMemMode") {
            b"OK".to_vec()
        } else if text == "?" {
            b"T05thread:01;".to_vec()
        } else if text == "qfThreadInfo" {
            b"m1,2".to_vec()
        } else if text == "qsThreadInfo" {
            b"l".to_vec()
        } else if let Some(t) = text.strip_prefix("Hg") {
            self.thread = packet::parse_hex_u64(t.as_bytes())?;
            b"OK".to_vec()
        } else if let Some(rest) = text.strip_prefix("qXfer:features:read:") {
            let mut it = rest.split(':');
            let annex = it.next()?;
            let doc = match annex {
                "target.xml" => TARGET_XML.to_string(),
                "core.xml" => core_xml(),
                "sys.xml" => sys_xml(),
                _ => return Some(b"E00".to_vec()),
            };
            let mut ol = it.next()?.split(',');
            let off = packet::parse_hex_u64(ol.next()?.as_bytes())? as usize;
            let len = packet::parse_hex_u64(ol.next()?.as_bytes())? as usize;
            let d = doc.as_bytes();
            let end = (off + len).min(d.len());
            let mut r = vec![if end >= d.len() { b'l' } else { b'm' }];
            r.extend_from_slice(&d[off.min(end)..end]);
            r
        } else if let Some(rest) = text.strip_prefix("Z1,").or_else(|| text.strip_prefix("z1,")) {
            if !self.cfg.hw_breakpoints {
                Vec::new()
            } else {
                let addr = packet::parse_hex_u64(rest.split(',').next()?.as_bytes())?;
                let mut st = self.st.lock().unwrap();
                if p[0] == b'Z' {
                    st.breakpoints.push(addr);
                } else if st.breakpoints.contains(&addr) {
                    st.breakpoints.retain(|&a| a != addr);
                } else {
                    // QEMU: no such breakpoint (-ENOENT → E22).
                    return Some(b"E22".to_vec());
                }
                b"OK".to_vec()
            }
        } else if let Some(t) = text.strip_prefix("Hc") {
            self.step_thread = packet::parse_hex_u64(t.as_bytes())?;
            b"OK".to_vec()
        } else if text == "s" || text.starts_with("vCont;s:") {
            let t = match text.strip_prefix("vCont;s:") {
                Some(t) => packet::parse_hex_u64(t.as_bytes())?,
                None => self.step_thread,
            };
            let mut st = self.st.lock().unwrap();
            st.steps += 1;
            if st.rip.is_some_and(|(rt, _)| rt == t) {
                st.rip = st.rip.map(|(rt, a)| (rt, a + 1));
            }
            format!("T05thread:{t:02x};").into_bytes()
        } else if text == "g" {
            // Only the 16 GPRs + rip + eflags + cs: the rest needs 'p'.
            let mut hex = String::new();
            for n in 0..19u32 {
                let v = self.reg(n);
                let size = if n >= 17 { 4 } else { 8 };
                hex.push_str(&packet::to_hex(&v.to_le_bytes()[..size]));
            }
            hex.into_bytes()
        } else if let Some(n) = text.strip_prefix('p') {
            let n = packet::parse_hex_u64(n.as_bytes())? as u32;
            packet::to_hex(&self.reg(n).to_le_bytes()).into_bytes()
        } else if let Some(args) = text.strip_prefix('m').or_else(|| text.strip_prefix('x')) {
            self.reads += 1;
            if let Some(limit) = self.cfg.silent_after_reads {
                if self.reads > limit {
                    // Go silent: never answer again.
                    loop {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        let mut b = [0u8; 4096];
                        if self.s.read(&mut b).unwrap_or(0) == 0 {
                            return None;
                        }
                    }
                }
            }
            let mut a = args.split(',');
            let addr = packet::parse_hex_u64(a.next()?.as_bytes())?;
            let len = packet::parse_hex_u64(a.next()?.as_bytes())? as usize;
            if len > self.cfg.packet_size / 2 {
                b"E22".to_vec()
            } else {
                let len = self.cfg.short_reads.map_or(len, |s| s.min(len));
                match self.mem_range(addr, len) {
                    Some(r) if p[0] == b'x' => {
                        let mut v = b"b".to_vec();
                        v.extend_from_slice(&self.st.lock().unwrap().mem[r]);
                        v
                    }
                    Some(r) => packet::to_hex(&self.st.lock().unwrap().mem[r]).into_bytes(),
                    None => b"E14".to_vec(),
                }
            }
        } else if p.first() == Some(&b'X') || p.first() == Some(&b'M') {
            let colon = p.iter().position(|&c| c == b':')?;
            let hdr = String::from_utf8_lossy(&p[1..colon]).into_owned();
            let mut a = hdr.split(',');
            let addr = packet::parse_hex_u64(a.next()?.as_bytes())?;
            let len = packet::parse_hex_u64(a.next()?.as_bytes())? as usize;
            if p[0] == b'X' && !self.cfg.binary_write {
                Vec::new()
            } else {
                let data = if p[0] == b'X' { p[colon + 1..].to_vec() } else { packet::from_hex(&p[colon + 1..])? };
                assert_eq!(data.len(), len);
                match self.mem_range(addr, len) {
                    Some(r) => {
                        self.st.lock().unwrap().mem[r].copy_from_slice(&data);
                        b"OK".to_vec()
                    }
                    None => b"E14".to_vec(),
                }
            }
        } else if text == "vCont;c" || text == "c" {
            let hit = {
                let mut st = self.st.lock().unwrap();
                st.running = true;
                match st.hit_on_cont.take() {
                    Some((t, a)) if st.breakpoints.contains(&a) => {
                        st.rip = Some((t, a));
                        st.running = false;
                        Some(format!("T05thread:{t:02x};"))
                    }
                    // No breakpoint there: someone else (QEMU's monitor) stops it.
                    Some((t, _)) => {
                        st.running = false;
                        Some(format!("T02thread:{t:02x};"))
                    }
                    None => None,
                }
            };
            if let Some(stop) = hit {
                self.send(stop.as_bytes(), "stop");
                return None;
            }
            if let Some(last) = self.cfg.exit_on_cont.clone() {
                if !last.is_empty() {
                    self.send(&last, "exit");
                }
                let _ = self.s.shutdown(std::net::Shutdown::Both);
            }
            return None;
        } else if text == "D" {
            b"OK".to_vec()
        } else {
            Vec::new()
        };
        Some(reply)
    }

    fn run(mut self) {
        while let Some(p) = self.read_packet() {
            let tag = String::from_utf8_lossy(&p).into_owned();
            if let Some(r) = self.handle(&p) {
                self.send(&r, &tag);
            }
        }
    }
}

/// Start a mock stub; returns the client end, shared state and the thread.
pub fn start(cfg: MockConfig, mem_base: u64, mem: Vec<u8>) -> (UnixStream, Arc<Mutex<MockState>>, JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    let st = Arc::new(Mutex::new(MockState { mem, mem_base, ..MockState::default() }));
    let cfg = MockConfig { packet_size: if cfg.packet_size == 0 { 4096 } else { cfg.packet_size }, ..cfg };
    let server = Server { s: b, cfg, st: st.clone(), acks: true, thread: 1, step_thread: 1, reads: 0, corrupted: false, last: Vec::new() };
    let h = std::thread::spawn(move || server.run());
    (a, st, h)
}

/// Start a mock stub listening on the Unix socket `path` (one connection),
/// for code that connects by address (`attach`).
pub fn listen(cfg: MockConfig, mem_base: u64, mem: Vec<u8>, path: &std::path::Path) -> (Arc<Mutex<MockState>>, JoinHandle<()>) {
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    let st = Arc::new(Mutex::new(MockState { mem, mem_base, ..MockState::default() }));
    let cfg = MockConfig { packet_size: if cfg.packet_size == 0 { 4096 } else { cfg.packet_size }, ..cfg };
    let state = st.clone();
    let h = std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            let server = Server { s, cfg, st: state, acks: true, thread: 1, step_thread: 1, reads: 0, corrupted: false, last: Vec::new() };
            server.run();
        }
    });
    (st, h)
}
