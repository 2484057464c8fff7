//! The test guest's task table (`tg_task_table`, layout in
//! `images/testguest/task_table.h`) read into [`TaskInfo`]s, bounded and
//! without a panic on any bytes: version 1 (no switch counter) and 2 (a
//! `switches` counter per task, the incremental check's evidence).
//!
//! Made to be cheap under the pause with thousands of tasks: the entries
//! are read a fixed-size chunk at a time into a buffer on the stack (no
//! allocation sized by the guest, no syscall), and a list read before
//! (the incremental pre-check's) can be handed in to be recycled: its
//! vector and the names that did not change are kept, every other field is
//! overwritten, so the result is the same as a fresh read.

use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::{TargetError, TaskEvidence, TaskInfo};

/// "VSPLTASK".
pub const TASK_MAGIC: u64 = 0x4b53_4154_4c50_5356;
/// Versions read: 1 (on_cpu a u64, no counter) and 2 (on_cpu and switches, u32 each).
const TASK_VERSIONS: [u32; 2] = [1, 2];
/// Tasks a table may list (64 scheduled + 16,384 sleepers in the guest).
const MAX_TASKS: u32 = 32768;
/// Entry sizes believed (the guest writes 64).
const MAX_ENTRY_SIZE: u32 = 4096;
/// Bytes of entries read at once.
const CHUNK: usize = 8192;
/// Largest stack believed.
const MAX_STACK: u64 = 1 << 20;

fn rd_u32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

fn rd_u64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

/// The table's header, checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    pub version: u32,
    pub entry_size: u32,
    pub count: u32,
    /// Where entry 0 is.
    pub entries: u64,
    /// Even.
    pub seq: u64,
    /// Entry indices appended to the change ring since boot.
    pub changes: u64,
    /// The change ring's address and entries (0: no ring).
    pub ring: u64,
    pub ring_size: u32,
}

impl Header {
    /// Reads and checks the header at `table`.
    pub(super) fn read(mem: &mut dyn KernelMemory, table: u64) -> Result<Self, TargetError> {
        let mut hdr = [0u8; 64];
        mem.read(table, &mut hdr)?;
        if rd_u64(&hdr, 0) != TASK_MAGIC {
            return Err(TargetError::NotUp("task table magic missing".into()));
        }
        let (version, entry_size, count, header_size) = (rd_u32(&hdr, 8), rd_u32(&hdr, 12), rd_u32(&hdr, 16), rd_u32(&hdr, 20));
        let seq = rd_u64(&hdr, 0x18);
        if seq & 1 == 1 {
            return Err(TargetError::Inconsistent(format!("tg_task_table seq {seq} is odd")));
        }
        if !TASK_VERSIONS.contains(&version) || !(64..=MAX_ENTRY_SIZE).contains(&entry_size) || !(64..=4096).contains(&header_size) || count > MAX_TASKS {
            return Err(TargetError::Malformed(format!("version {version}, entry_size {entry_size}, header_size {header_size}, count {count}")));
        }
        // Version 1 had reserved zeroes there: no ring.
        let (changes, ring, ring_size) = if version >= 2 { (rd_u64(&hdr, 0x28), rd_u64(&hdr, 0x30), rd_u32(&hdr, 0x38)) } else { (0, 0, 0) };
        let entries = table.checked_add(u64::from(header_size)).ok_or_else(|| TargetError::Malformed(format!("table at {table:#x}")))?;
        Ok(Self { version, entry_size, count, entries, seq, changes, ring, ring_size })
    }

    /// The address of entry `i`.
    pub(super) fn entry_at(&self, i: usize) -> u64 {
        self.entries.wrapping_add((i * self.entry_size as usize) as u64)
    }

    /// Reads the seq again: a change means the table moved under us (cannot
    /// happen with every vCPU stopped, but a backend may not stop all, and
    /// the pre-check reads it with the guest running).
    pub(super) fn still(&self, mem: &mut dyn KernelMemory, table: u64) -> Result<(), TargetError> {
        let seq2 = mem.read_u64(table + 0x18)?;
        if seq2 != self.seq {
            return Err(TargetError::Inconsistent(format!("tg_task_table seq moved {} -> {seq2}", self.seq)));
        }
        Ok(())
    }
}

/// Reads the table at `table`; `recycle` is a list read before (any
/// length, any content), whose storage is reused. Also returns the header.
pub(super) fn read(mem: &mut dyn KernelMemory, table: u64, recycle: Vec<TaskInfo>) -> Result<(Vec<TaskInfo>, Header), TargetError> {
    let h = Header::read(mem, table)?;
    let (version, count, entries) = (h.version, h.count, h.entries);
    let esize = h.entry_size as usize;
    let per_chunk = (CHUNK / esize).max(1);
    let mut buf = [0u8; CHUNK];
    let mut tasks = recycle;
    tasks.truncate(count as usize);
    let mut i = 0usize;
    while i < count as usize {
        let n = per_chunk.min(count as usize - i);
        let chunk = &mut buf[..n * esize];
        mem.read(entries + (i * esize) as u64, chunk)?;
        for e in chunk.chunks_exact(esize) {
            let t = entry(e, version, entries + (i * esize) as u64)?;
            match tasks.get_mut(i) {
                Some(old) => overwrite(old, t, e),
                None => tasks.push(t.into_task(e)),
            }
            i += 1;
        }
    }
    h.still(mem, table)?;
    Ok((tasks, h))
}

/// One entry's fields but the name (kept as bytes until needed).
pub(super) struct Entry {
    id: u64,
    cpu: u32,
    stack: std::ops::Range<u64>,
    saved_sp: Option<u64>,
    on_cpu: bool,
    evidence: Option<TaskEvidence>,
}

impl Entry {
    pub(super) fn into_task(self, e: &[u8]) -> TaskInfo {
        TaskInfo {
            id: self.id,
            name: String::from_utf8_lossy(name_bytes(e)).into_owned(),
            cpu: Some(self.cpu),
            stack: self.stack,
            saved_sp: self.saved_sp,
            on_cpu: self.on_cpu,
            evidence: self.evidence,
        }
    }
}

fn name_bytes(e: &[u8]) -> &[u8] {
    let raw = &e[8..24];
    &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())]
}

pub(super) fn entry(e: &[u8], version: u32, addr: u64) -> Result<Entry, TargetError> {
    let id = rd_u64(e, 0);
    let (base, size) = (rd_u64(e, 0x20), rd_u64(e, 0x28));
    if size == 0 || size > MAX_STACK || base.checked_add(size).is_none() {
        return Err(TargetError::Malformed(format!("task {id} stack {base:#x}+{size:#x}")));
    }
    let (on_cpu, switches) = match version {
        1 => (rd_u64(e, 0x38) != 0, None),
        _ => (rd_u32(e, 0x38) != 0, Some(rd_u32(e, 0x3c))),
    };
    let saved_sp = if on_cpu { None } else { Some(rd_u64(e, 0x30)) };
    // The evidence of a switched-out task: its entry (the task record), its
    // id (tasks never exit, so the id is its identity), its switch counter
    // and saved SP, all read in one seq window.
    let evidence = switches.zip(saved_sp).map(|(n, sp)| TaskEvidence { addr, start_time: id, nvcsw: u64::from(n), nivcsw: 0, sp });
    Ok(Entry { id, cpu: rd_u32(e, 0x1c), stack: base..base + size, saved_sp, on_cpu, evidence })
}

/// `old` becomes the task of `t` (name from `e`), keeping its name's
/// allocation when the name is the same.
pub(super) fn overwrite(old: &mut TaskInfo, t: Entry, e: &[u8]) {
    let name = String::from_utf8_lossy(name_bytes(e));
    if old.name != name {
        old.name = name.into_owned();
    }
    old.id = t.id;
    old.cpu = Some(t.cpu);
    old.stack = t.stack;
    old.saved_sp = t.saved_sp;
    old.on_cpu = t.on_cpu;
    old.evidence = t.evidence;
}

/// Which CPU a vCPU is, the test guest does not say.
pub(super) fn vcpu_cpus(vcpus: &[VcpuState]) -> Vec<Option<u32>> {
    vec![None; vcpus.len()]
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::mem::MemError;

    pub(crate) const TABLE: u64 = 0xffff_ffff_8110_0000;

    /// Flat memory at TABLE.
    pub(crate) struct Flat(pub(crate) Vec<u8>);

    impl KernelMemory for Flat {
        fn read(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
            let off = vaddr.checked_sub(TABLE).ok_or(MemError::NotMapped { vaddr })? as usize;
            let src = self.0.get(off..off + buf.len()).ok_or(MemError::NotMapped { vaddr })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    pub(crate) fn table(version: u32, names: &[&str], switches: u32) -> Flat {
        let mut b = vec![0u8; 64 + 64 * names.len()];
        b[0..8].copy_from_slice(&TASK_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[12..16].copy_from_slice(&64u32.to_le_bytes());
        b[16..20].copy_from_slice(&(names.len() as u32).to_le_bytes());
        b[20..24].copy_from_slice(&64u32.to_le_bytes());
        for (i, n) in names.iter().enumerate() {
            let e = &mut b[64 + 64 * i..128 + 64 * i];
            e[0..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            e[8..8 + n.len()].copy_from_slice(n.as_bytes());
            let base = 0x10_0000 * (i as u64 + 1);
            e[0x20..0x28].copy_from_slice(&base.to_le_bytes());
            e[0x28..0x30].copy_from_slice(&0x1000u64.to_le_bytes());
            e[0x30..0x38].copy_from_slice(&(base + 0xf00).to_le_bytes());
            e[0x3c..0x40].copy_from_slice(&switches.to_le_bytes());
        }
        Flat(b)
    }

    #[test]
    fn version_2_gives_evidence_and_version_1_none() {
        let t = read(&mut table(2, &["a", "b"], 7), TABLE, Vec::new()).unwrap().0;
        let e = t[1].evidence.unwrap();
        assert_eq!((t[1].name.as_str(), e.nvcsw, e.sp, e.addr, e.start_time), ("b", 7, 0x20_0f00, TABLE + 128, 2));
        let t = read(&mut table(1, &["a"], 0), TABLE, Vec::new()).unwrap().0;
        assert_eq!((t[0].evidence, t[0].saved_sp), (None, Some(0x10_0f00)));
    }

    #[test]
    fn a_recycled_list_reads_the_same_as_a_fresh_one() {
        // More tasks than a chunk holds, so the chunk loop runs several times.
        let names: Vec<String> = (0..300).map(|i| format!("sleeper/{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut m = table(2, &refs, 1);
        let fresh = read(&mut m, TABLE, Vec::new()).unwrap().0;
        assert_eq!(fresh.len(), 300);
        // Recycle a list that differs everywhere: longer, other names, other fields.
        let mut stale = read(&mut table(2, &["x"; 400], 9), TABLE, Vec::new()).unwrap().0;
        stale[3].on_cpu = true;
        assert_eq!(read(&mut m, TABLE, stale).unwrap().0, fresh);
        // And one that is shorter.
        let short = fresh[..10].to_vec();
        assert_eq!(read(&mut m, TABLE, short).unwrap().0, fresh);
        assert!(fresh.iter().zip(read(&mut m, TABLE, fresh.clone()).unwrap().0).all(|(a, b)| a.evidence == b.evidence));
    }

    #[test]
    fn hostile_headers_are_refused_without_a_panic() {
        for (off, v) in [(12usize, 0u32), (12, 1 << 20), (16, MAX_TASKS + 1), (20, 8), (8, 3)] {
            let mut m = table(2, &["a"], 0);
            m.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
            assert!(matches!(read(&mut m, TABLE, Vec::new()), Err(TargetError::Malformed(_))), "{off}={v}");
        }
        // A count past the bytes there: a memory error, not a panic.
        let mut m = table(2, &["a"], 0);
        m.0[16..20].copy_from_slice(&5u32.to_le_bytes());
        assert!(read(&mut m, TABLE, Vec::new()).is_err());
        // seq odd, and a stack too large.
        let mut m = table(2, &["a"], 0);
        m.0[0x18] = 1;
        assert!(matches!(read(&mut m, TABLE, Vec::new()), Err(TargetError::Inconsistent(_))));
        let mut m = table(2, &["a"], 0);
        m.0[64 + 0x28..64 + 0x30].copy_from_slice(&(MAX_STACK + 1).to_le_bytes());
        assert!(matches!(read(&mut m, TABLE, Vec::new()), Err(TargetError::Malformed(_))));
    }
}
