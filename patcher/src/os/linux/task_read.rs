//! One `task_struct`'s fields as the walk needs them, read in a few spans
//! of aligned 8-byte words instead of one read per field.
//!
//! A pause with 10,000 tasks reads 10,000 `task_struct`s: per task the
//! fields the check needs lie in a handful of cache lines (`stack` and
//! `on_cpu` near the start, `pid`/`tgid`, the switch counters and
//! `start_time` together, `comm`, `thread.sp` at the end). [`TaskSpans`]
//! groups the fields by BTF offset into spans of words once per walk, and
//! [`TaskSpans::read`] reads each span with one
//! [`KernelMemory::read_words`] (each word one aligned 8-byte load where the
//! backend can make one: the RAM file).
//!
//! That is also what makes the scheduler's evidence trustworthy when read
//! with the guest running (the incremental pre-check): `nvcsw`, `nivcsw`,
//! `start_time`, `thread.sp` and `stack` are each one load, a value the
//! guest held, never two halves of different values. A kernel whose BTF
//! puts any of them at an offset that is not 8-aligned gets no evidence
//! (every task checked at every pause), never a possibly torn one.

use super::task_struct::{Sched, Task, TaskError, TaskOffsets};
use crate::model::mem::KernelMemory;

/// Fields closer than this (bytes) share one span: reading a few words
/// more costs less than another read.
const MERGE_GAP: u64 = 64;

/// The fields read per task, in order: (offset in `task_struct`, size).
#[derive(Debug, Clone, Copy)]
enum Field {
    Pid,
    Tgid,
    Comm,
    State,
    OnCpu,
    Cpu,
    Stack,
    Sp,
    Nvcsw,
    Nivcsw,
    StartTime,
}

/// Where each field sits in the words [`TaskSpans::read`] fills.
#[derive(Debug, Clone)]
pub struct TaskSpans {
    /// (word-aligned offset in `task_struct`, words), ascending.
    spans: Vec<(u64, usize)>,
    /// Byte position of each field (in [`Field`] order) in the read words.
    at: [usize; 11],
    /// Words over all spans.
    words: usize,
    /// The evidence fields are all 8-aligned (else no evidence is read).
    evidence: bool,
}

impl TaskSpans {
    /// The spans for `off`, computed once per walk.
    pub fn new(off: &TaskOffsets) -> Self {
        let s = off.sched;
        let evidence = s.is_some_and(|s| [s.nvcsw, s.nivcsw, s.start_time, off.thread_sp, off.stack].iter().all(|o| o.is_multiple_of(8)));
        let mut fields: Vec<(Field, u64, u64)> = vec![
            (Field::Pid, off.pid, 4),
            (Field::Tgid, off.tgid, 4),
            (Field::Comm, off.comm, 16),
            (Field::State, off.state, 4),
            (Field::OnCpu, off.on_cpu, 4),
            (Field::Cpu, off.cpu, 4),
            (Field::Stack, off.stack, 8),
            (Field::Sp, off.thread_sp, 8),
        ];
        if let (Some(s), true) = (s, evidence) {
            fields.extend([(Field::Nvcsw, s.nvcsw, 8), (Field::Nivcsw, s.nivcsw, 8), (Field::StartTime, s.start_time, 8)]);
        }
        let mut order: Vec<usize> = (0..fields.len()).collect();
        order.sort_by_key(|&i| fields[i].1);
        let mut spans: Vec<(u64, usize)> = Vec::new();
        let mut at = [0usize; 11];
        let mut words = 0usize;
        for i in order {
            let (f, o, size) = fields[i];
            let start = o & !7;
            let end = o.saturating_add(size).saturating_add(7) & !7;
            match spans.last_mut() {
                Some((s0, n)) if start <= (*s0 + 8 * *n as u64).saturating_add(MERGE_GAP) => {
                    let old_end = *s0 + 8 * *n as u64;
                    if end > old_end {
                        let more = ((end - old_end) / 8) as usize;
                        *n += more;
                        words += more;
                    }
                    at[f as usize] = (words - *n) * 8 + (o - *s0) as usize;
                }
                _ => {
                    let n = ((end - start) / 8) as usize;
                    spans.push((start, n));
                    at[f as usize] = words * 8 + (o - start) as usize;
                    words += n;
                }
            }
        }
        Self { spans, at, words, evidence }
    }

    /// Asks for the task at `addr`'s spans to be loaded into the cache (a
    /// hint: the walk calls it a few tasks ahead of the one it reads, so
    /// that the loads of several tasks overlap).
    pub fn prefetch<M: KernelMemory + ?Sized>(&self, mem: &mut M, addr: u64) {
        for &(o, n) in &self.spans {
            mem.prefetch(addr.wrapping_add(o), 8 * n);
        }
    }

    /// Reads the task at `addr` (with `scratch` reused between tasks).
    pub fn read<M: KernelMemory + ?Sized>(&self, mem: &mut M, addr: u64, scratch: &mut Vec<u64>) -> Result<Task, TaskError> {
        scratch.resize(self.words, 0);
        let mut w = 0;
        for &(o, n) in &self.spans {
            mem.read_words(addr.wrapping_add(o), &mut scratch[w..w + n])?;
            w += n;
        }
        let mut bytes = [0u8; 1024];
        for (c, x) in bytes.chunks_exact_mut(8).zip(scratch.iter()) {
            c.copy_from_slice(&x.to_le_bytes());
        }
        let get = |f: Field, n: usize| -> &[u8] {
            let a = self.at[f as usize];
            bytes.get(a..a + n).unwrap_or(&[])
        };
        let u32_of = |f: Field| get(f, 4).try_into().map(u32::from_le_bytes).unwrap_or(0);
        let u64_of = |f: Field| get(f, 8).try_into().map(u64::from_le_bytes).unwrap_or(0);
        let comm = get(Field::Comm, 16);
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        Ok(Task {
            addr,
            pid: u32_of(Field::Pid) as i32,
            tgid: u32_of(Field::Tgid) as i32,
            comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
            state: u32_of(Field::State),
            on_cpu: u32_of(Field::OnCpu) != 0,
            cpu: u32_of(Field::Cpu),
            stack: u64_of(Field::Stack),
            sp: u64_of(Field::Sp),
            sched: self.evidence.then(|| Sched {
                nvcsw: u64_of(Field::Nvcsw),
                nivcsw: u64_of(Field::Nivcsw),
                start_time: u64_of(Field::StartTime),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::mem::BufferMemory;
    use crate::os::linux::task_struct::SchedOffsets;

    fn offsets() -> TaskOffsets {
        crate::os::linux::testutil::sample_task_offsets()
    }

    fn task_bytes(off: &TaskOffsets) -> Vec<u8> {
        let mut b = vec![0xeeu8; 0x1900];
        let mut put = |o: u64, v: &[u8]| b[o as usize..o as usize + v.len()].copy_from_slice(v);
        put(off.pid, &42i32.to_le_bytes());
        put(off.tgid, &40i32.to_le_bytes());
        put(off.comm, b"worker\0\0\0\0\0\0\0\0\0\0");
        put(off.state, &1u32.to_le_bytes());
        put(off.on_cpu, &0u32.to_le_bytes());
        put(off.cpu, &1u32.to_le_bytes());
        put(off.stack, &0xffff_c900_0001_0000u64.to_le_bytes());
        put(off.thread_sp, &0xffff_c900_0001_3e00u64.to_le_bytes());
        let s = off.sched.unwrap();
        put(s.nvcsw, &7u64.to_le_bytes());
        put(s.nivcsw, &3u64.to_le_bytes());
        put(s.start_time, &123_456u64.to_le_bytes());
        b
    }

    #[test]
    fn the_spans_read_what_one_read_per_field_reads() {
        let off = offsets();
        let base = 0xffff_8880_0100_0000;
        let mut mem = BufferMemory { base, data: task_bytes(&off) };
        let spans = TaskSpans::new(&off);
        // stack/state/cpu/on_cpu share one span, pid/tgid another, the
        // counters and comm theirs, thread.sp its own: 5 reads, not 11.
        assert_eq!(spans.spans.len(), 5, "{:?}", spans.spans);
        let t = spans.read(&mut mem, base, &mut Vec::new()).unwrap();
        let t2 = super::super::tasks::read_task_fields(&mut mem, &off, base).unwrap();
        assert_eq!(t, t2);
        assert_eq!((t.pid, t.tgid, t.comm.as_str(), t.state, t.on_cpu, t.cpu), (42, 40, "worker", 1, false, 1));
        assert_eq!(t.sched, Some(Sched { nvcsw: 7, nivcsw: 3, start_time: 123_456 }));
    }

    #[test]
    fn evidence_at_an_unaligned_offset_is_not_read() {
        let mut off = offsets();
        off.sched = Some(SchedOffsets { nvcsw: 0x6a4, nivcsw: 0x6ac, start_time: 0x6b4 });
        let base = 0xffff_8880_0100_0000;
        let mut mem = BufferMemory { base, data: task_bytes(&offsets()) };
        let t = TaskSpans::new(&off).read(&mut mem, base, &mut Vec::new()).unwrap();
        assert_eq!(t.sched, None, "a possibly torn counter is no evidence");
        assert_eq!(t.pid, 42);
    }

    #[test]
    fn a_task_past_readable_memory_is_an_error_not_a_panic() {
        let off = offsets();
        let base = 0xffff_8880_0100_0000;
        let mut mem = BufferMemory { base, data: task_bytes(&off)[..0x1000].to_vec() };
        assert!(TaskSpans::new(&off).read(&mut mem, base, &mut Vec::new()).is_err());
        let mut mem = BufferMemory { base, data: task_bytes(&off) };
        assert!(TaskSpans::new(&off).read(&mut mem, base + 4, &mut Vec::new()).is_err(), "an unaligned task_struct");
    }
}
