//! Test fixtures: kallsyms tables laid out like scripts/kallsyms emits them,
//! and a small BTF blob.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// One symbol for the fixture: (type char, name, address, absolute).
pub type FixSym = (char, String, u64, bool);

fn pad8(v: &mut Vec<u8>) {
    while v.len() % 8 != 0 {
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
