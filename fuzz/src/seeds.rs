//! Seeds generated from the project's own fixtures, one set per target;
//! the saved corpus files (`fuzz/corpus/<target>/`) add real inputs (built
//! patches, the test guest's objects and kernel, regression inputs).

use std::io::Write;

use vsplice_patcher::gdb::packet;
use vsplice_patcher::os::linux::agent::testutil::{task, FakeAgent};
use vsplice_patcher::os::linux::testutil::{kallsyms_blob, sample_syms, task_btf};
use vsplice_patcher::os::linux::orc::OrcEntry;
use vsplice_patcher::testing::{FakeKernel, FakePatch};

use crate::targets::{AGENT_PHYS, KALLSYMS_BASE};

/// A patch file built for the fake kernel.
pub fn patch_file() -> Vec<Vec<u8>> {
    let built = FakePatch::new("fuzz").replace("fake_a").build(&FakeKernel::new());
    built.ok().and_then(|p| p.to_bytes().ok()).into_iter().collect()
}

/// The fake patch's object.
pub fn patch_object() -> Vec<Vec<u8>> {
    FakePatch::new("fuzz").replace("fake_b").object().ok().into_iter().collect()
}

/// Kallsyms tables laid out as scripts/kallsyms does (with and without
/// `kallsyms_seqs_of_names`).
pub fn kallsyms() -> Vec<Vec<u8>> {
    let syms = sample_syms(0xffff_ffff_8320_0000);
    [true, false].iter().map(|&seqs| kallsyms_blob(&syms, KALLSYMS_BASE, 64, seqs).0).collect()
}

/// The task_struct BTF fixture.
pub fn btf() -> Vec<Vec<u8>> {
    vec![task_btf()]
}

/// A sorted table of 16 entries: the split (u32), the IPs, the entries.
pub fn orc() -> Vec<Vec<u8>> {
    let n = 16usize;
    let mut v = ((n * 4) as u32).to_le_bytes().to_vec();
    for i in 0..n {
        // Entry i at CODE + 0x100 * i, stored relative to its own slot.
        let rel = (0x100 * i as i64 - 4 * i as i64) as i32;
        v.extend_from_slice(&rel.to_le_bytes());
    }
    for i in 0..n {
        let mut e = [0u8; 6];
        e[0] = i as u8;
        e[4] = 0x15;
        e[5] = if i % 3 == 0 { 0x01 } else { 0x12 };
        v.extend_from_slice(&OrcEntry::parse(&e).to_bytes());
    }
    vec![v]
}

/// The agent's descriptor with its table right after the block.
pub fn agent() -> Vec<Vec<u8>> {
    let mut a = FakeAgent::new(vec![task(1, "init"), task(2, "kthreadd"), task(77, "worker")]);
    a.phys = AGENT_PHYS;
    let (block, _) = a.bytes();
    let n = a.table_pages.len() as u64;
    a.table_pages = (0..n).map(|i| AGENT_PHYS + block.len() as u64 + 4096 * i).collect();
    let (mut block, table) = a.bytes();
    block.extend_from_slice(&table);
    vec![block]
}

/// Replies a gdbstub sends.
pub fn gdb_packet() -> Vec<Vec<u8>> {
    let mut rle = b"$0* ".to_vec();
    rle.extend_from_slice(format!("#{:02x}", packet::checksum(b"0* ")).as_bytes());
    let xml = br#"<?xml version="1.0"?><target><architecture>i386:x86-64</architecture><feature name="org.gnu.gdb.i386.core"><reg name="rax" bitsize="64" type="int64"/><reg name="rip" bitsize="64" type="code_ptr" regnum="16"/><xi:include href="64bit-sse.xml"/></feature></target>"#;
    let mut all = Vec::new();
    for p in [&b"OK"[..], b"T05thread:01;", b"E14", b"QCp1.1", b"m0,10", b"0123456789abcdef", b"l<target/>", &xml[..]] {
        all.extend_from_slice(&packet::frame(p));
    }
    vec![packet::frame(b"OK"), b"+$E14#aa".to_vec(), rle, packet::frame(xml), all]
}

/// A minimal vmlinux-like ELF: one PT_LOAD of 16 bytes at the kernel map.
pub fn tiny_elf() -> Vec<u8> {
    let mut e = vec![0u8; 64 + 56 + 16];
    e[..16].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let w16 = |e: &mut Vec<u8>, o: usize, v: u16| e[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let w32 = |e: &mut Vec<u8>, o: usize, v: u32| e[o..o + 4].copy_from_slice(&v.to_le_bytes());
    let w64 = |e: &mut Vec<u8>, o: usize, v: u64| e[o..o + 8].copy_from_slice(&v.to_le_bytes());
    w16(&mut e, 16, 2); // ET_EXEC
    w16(&mut e, 18, 62); // EM_X86_64
    w32(&mut e, 20, 1);
    w64(&mut e, 24, 0x100_0000); // entry
    w64(&mut e, 32, 64); // phoff
    w16(&mut e, 52, 64);
    w16(&mut e, 54, 56);
    w16(&mut e, 56, 1);
    w16(&mut e, 58, 64);
    // PT_LOAD, R+X, offset 120, vaddr, paddr, filesz, memsz, align.
    w32(&mut e, 64, 1);
    w32(&mut e, 68, 5);
    w64(&mut e, 72, 120);
    w64(&mut e, 80, 0xffff_ffff_8100_0000);
    w64(&mut e, 88, 0x100_0000);
    w64(&mut e, 96, 16);
    w64(&mut e, 104, 16);
    w64(&mut e, 112, 0x20_0000);
    e[120..136].copy_from_slice(&[0xf4; 16]);
    e
}

/// A bzImage around a gzip-compressed `elf` (one setup sector).
pub fn tiny_bzimage(elf: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let payload = match gz.write_all(elf).and_then(|_| gz.finish()) {
        Ok(p) => p,
        Err(_) => return Vec::new(),
    };
    let mut bz = vec![0u8; 1024];
    bz[0x1f1] = 1;
    bz[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    bz[0x211] = 1; // LOADED_HIGH
    bz[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
    bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    bz.extend_from_slice(&payload);
    bz.extend_from_slice(&(elf.len() as u32).to_le_bytes());
    bz
}

/// A tiny ELF and a bzImage of it.
pub fn kernel_image() -> Vec<Vec<u8>> {
    let elf = tiny_elf();
    vec![tiny_bzimage(&elf), elf]
}

/// Request bodies and queries: selector byte (content type, ndjson,
/// declared length), the query, a newline, the body.
pub fn api() -> Vec<Vec<u8>> {
    [
        &b"\x09check=orc&attempts=2\n\x7fVSPLICE"[..],
        b"\x01since=3&timeout=10\n{\"path\":\"/tmp/p.vsp\",\"check\":\"conservative\",\"attempts\":3}",
        b"\x05follow=true\n{\"path\":\"/tmp/p.vsp\"}",
        b"\x02\nhello",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}
