//! Test fixtures: kallsyms tables laid out like scripts/kallsyms emits them,
//! a small BTF blob, and a `task_struct` layout for synthetic tasks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// One symbol for the fixture: (type char, name, address, absolute).
pub type FixSym = (char, String, u64, bool);

fn pad8(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
}

/// The token table: printable characters stand for themselves, byte 1 is
/// the two-character token "__", other bytes get unused multi-char tokens.
pub fn tokens() -> Vec<Vec<u8>> {
    (0..=255u8)
        .map(|b| match b {
            1 => b"__".to_vec(),
            0x21..=0x7e => vec![b],
            _ => format!("x{b:02x}").into_bytes(),
        })
        .collect()
}

fn encode(kind: char, name: &str) -> Vec<u8> {
    let full = format!("{kind}{name}");
    let mut out = Vec::new();
    let b = full.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"__") {
            out.push(1);
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Kallsyms tables for `syms` (sorted by address) at `base` (8-aligned),
/// with `junk` bytes before them. Returns the bytes and the relative base.
pub fn kallsyms_blob(syms: &[FixSym], base: u64, junk: usize, seqs: bool) -> (Vec<u8>, u64) {
    let rb = syms.iter().filter(|s| !s.3).map(|s| s.2).min().unwrap();
    let mut v = vec![0u8; junk];
    // A decoy anchor: kernel address, plausible count, zero pad, garbage after.
    v.extend_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
    v.extend_from_slice(&(syms.len() as u32).to_le_bytes());
    v.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff]);
    pad8(&mut v);
    let _ = base;
    for (_, _, addr, abs) in syms {
        let off: i32 = if *abs { *addr as i32 } else { (rb as i64).wrapping_sub(*addr as i64).wrapping_sub(1) as i32 };
        v.extend_from_slice(&off.to_le_bytes());
    }
    pad8(&mut v);
    v.extend_from_slice(&rb.to_le_bytes());
    v.extend_from_slice(&(syms.len() as u32).to_le_bytes());
    pad8(&mut v);
    let names_start = v.len();
    let mut markers = Vec::new();
    for (i, (k, n, _, _)) in syms.iter().enumerate() {
        if i % 256 == 0 {
            markers.push((v.len() - names_start) as u32);
        }
        let e = encode(*k, n);
        if e.len() > 127 {
            v.push((e.len() & 0x7f) as u8 | 0x80);
            v.push((e.len() >> 7) as u8);
        } else {
            v.push(e.len() as u8);
        }
        v.extend_from_slice(&e);
    }
    pad8(&mut v);
    for m in markers {
        v.extend_from_slice(&m.to_le_bytes());
    }
    pad8(&mut v);
    if seqs {
        for i in 0..syms.len() {
            v.extend_from_slice(&[(i >> 16) as u8, (i >> 8) as u8, i as u8]);
        }
        pad8(&mut v);
    }
    let mut idx = Vec::new();
    let tt = v.len();
    for t in tokens() {
        idx.push((v.len() - tt) as u16);
        v.extend_from_slice(&t);
        v.push(0);
    }
    pad8(&mut v);
    for i in idx {
        v.extend_from_slice(&i.to_le_bytes());
    }
    v.extend_from_slice(&[0xcc; 64]);
    (v, rb)
}

/// A symbol list: per-CPU absolute symbols, `_text`, 1500 functions, a
/// duplicated local name, a 200-character name.
pub fn sample_syms(text: u64) -> Vec<FixSym> {
    let mut s: Vec<FixSym> = vec![
        ('A', "fixed_percpu_data".into(), 0, true),
        ('A', "current_task".into(), 0x1fb80, true),
        ('A', "__per_cpu_end".into(), 0x35000, true),
        ('T', "_text".into(), text, false),
        ('T', "startup_64".into(), text, false),
    ];
    let mut a = text + 0x100;
    for i in 0..1500u64 {
        let name = if i % 500 == 7 { "__dup_local".to_string() } else { format!("func_{i}") };
        s.push((if i % 500 == 7 { 't' } else { 'T' }, name, a, false));
        a += 0x40 + (i % 7) * 0x10;
    }
    s.push(('T', "x".repeat(200), a, false));
    s.push(('D', "linux_banner".into(), a + 0x1000, false));
    s.push(('B', "_end".into(), a + 0x2000, false));
    s
}

/// Builds a raw BTF blob type by type.
#[derive(Debug, Default)]
pub struct BtfBuilder {
    types: Vec<u8>,
    strs: Vec<u8>,
    next: u32,
}

impl BtfBuilder {
    pub fn new() -> Self {
        Self { types: Vec::new(), strs: vec![0], next: 1 }
    }
    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let o = self.strs.len() as u32;
        self.strs.extend_from_slice(name.as_bytes());
        self.strs.push(0);
        o
    }
    fn head(&mut self, name: &str, info: u32, st: u32) -> u32 {
        let n = self.s(name);
        for w in [n, info, st] {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.next += 1;
        self.next - 1
    }
    pub fn int(&mut self, name: &str, size: u32) -> u32 {
        let id = self.head(name, 1 << 24, size);
        self.types.extend_from_slice(&(size * 8).to_le_bytes());
        id
    }
    pub fn ptr(&mut self, to: u32) -> u32 {
        self.head("", 2 << 24, to)
    }
    pub fn typedef(&mut self, name: &str, to: u32) -> u32 {
        self.head(name, 8 << 24, to)
    }
    pub fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
        let id = self.head("", 3 << 24, 0);
        for w in [elem, index, n] {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        id
    }
    /// Members: (name, type, bit offset, bitfield size).
    pub fn composite(&mut self, name: &str, union: bool, size: u32, members: &[(&str, u32, u32, u32)]) -> u32 {
        let kf = members.iter().any(|m| m.3 != 0);
        let info = ((if union { 5 } else { 4 }) << 24) | members.len() as u32 | if kf { 1 << 31 } else { 0 };
        let id = self.head(name, info, size);
        for &(n, t, off, bits) in members {
            let no = self.s(n);
            let o = if kf { (bits << 24) | off } else { off };
            for w in [no, t, o] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }
        id
    }
    /// Reserve the next id (for self-referencing pointers).
    pub fn next_id(&self) -> u32 {
        self.next
    }
    pub fn blob(&self) -> Vec<u8> {
        let mut v = vec![0x9f, 0xeb, 1, 0];
        for w in [24u32, 0, self.types.len() as u32, self.types.len() as u32, self.strs.len() as u32] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(&self.types);
        v.extend_from_slice(&self.strs);
        v
    }
}

/// Offsets of the fixture task_struct (bytes).
pub mod task_layout {
    pub const CPU: u64 = 8;
    pub const STATE: u64 = 24;
    pub const STACK: u64 = 32;
    pub const TASKS: u64 = 64;
    pub const PID: u64 = 80;
    pub const TGID: u64 = 84;
    pub const COMM: u64 = 88;
    pub const ON_CPU: u64 = 104;
    pub const SIGNAL: u64 = 112;
    pub const THREAD_NODE: u64 = 120;
    pub const THREAD_SP: u64 = 152;
    pub const SIZE: u64 = 256;
    pub const SIG_THREAD_HEAD: u64 = 8;
}

/// A BTF blob with the task_struct members the task walk needs (nested
/// `thread.sp`, `thread_info.cpu`, `__state` inside an anonymous union).
pub fn task_btf() -> Vec<u8> {
    let mut b = BtfBuilder::new();
    let int = b.int("int", 4);
    let uint = b.int("unsigned int", 4);
    let ch = b.int("char", 1);
    let ulong = b.int("long unsigned int", 8);
    let voidp = b.ptr(0);
    let lh_id = b.next_id() + 1;
    let lhp = b.ptr(lh_id);
    let lh = b.composite("list_head", false, 16, &[("next", lhp, 0, 0), ("prev", lhp, 64, 0)]);
    assert_eq!(lh, lh_id);
    let ts_thread = b.composite("thread_struct", false, 16, &[("sp0", ulong, 0, 0), ("sp", ulong, 64, 0)]);
    let ti = b.composite("thread_info", false, 16, &[("flags", ulong, 0, 0), ("cpu", uint, 64, 0)]);
    let anon = b.composite("", true, 4, &[("__state", uint, 0, 0), ("state_alias", int, 0, 0)]);
    let comm = b.array(ch, int, 16);
    let sig_id = b.next_id() + 1;
    let sigp = b.ptr(sig_id);
    let sig = b.composite("signal_struct", false, 24, &[("nr_threads", int, 0, 0), ("thread_head", lh, 64, 0)]);
    assert_eq!(sig, sig_id);
    use task_layout as t;
    let task = b.composite(
        "task_struct",
        false,
        t::SIZE as u32,
        &[
            ("thread_info", ti, 0, 0),
            ("", anon, (t::STATE * 8) as u32, 0),
            ("stack", voidp, (t::STACK * 8) as u32, 0),
            ("tasks", lh, (t::TASKS * 8) as u32, 0),
            ("pid", int, (t::PID * 8) as u32, 0),
            ("tgid", int, (t::TGID * 8) as u32, 0),
            ("comm", comm, (t::COMM * 8) as u32, 0),
            ("on_cpu", int, (t::ON_CPU * 8) as u32, 0),
            ("signal", sigp, (t::SIGNAL * 8) as u32, 0),
            ("thread_node", lh, (t::THREAD_NODE * 8) as u32, 0),
            ("thread", ts_thread, 144 * 8, 0),
        ],
    );
    b.typedef("task_t", task);
    b.composite("bits", false, 4, &[("a", uint, 0, 3), ("b", uint, 3, 5)]);
    b.blob()
}

/// A `task_struct` layout for synthetic tasks (0x1900 bytes; `on_cpu`
/// before `thread.sp`, as in 6.1).
pub fn sample_task_offsets() -> super::task_struct::TaskOffsets {
    super::task_struct::TaskOffsets {
        tasks: 0x400,
        pid: 0x500,
        tgid: 0x504,
        comm: 0x700,
        stack: 0x20,
        thread_sp: 0x1808,
        state: 0x18,
        on_cpu: 0x34,
        cpu: 0x10,
        signal: 0x800,
        thread_node: 0x820,
        signal_thread_head: 0x10,
        task_size: 0x1900,
        sched: Some(super::task_struct::SchedOffsets { nvcsw: 0x6a0, nivcsw: 0x6a8, start_time: 0x6b0 }),
    }
}
