//! The guest agent's descriptor, byte for byte: the mirror of
//! `guest-agent/vsplice_agent.h` (change both and bump [`VERSION`]).
//!
//! Pure parsing and validation of bytes already read: the header (magic,
//! version, self address, header checksum, sequence counter), the block
//! (per-CPU stack records and the task table's page list, static
//! checksum) and the table (entries, position-independent checksum).

use super::AgentError;

/// `"VSPLAGNT"` as a little-endian u64.
pub const MAGIC0: u64 = 0x544e_4741_4c50_5356;
/// Second magic word.
pub const MAGIC1: u64 = 0x9c1d_6f2b_37e4_a580;
/// Descriptor version this parser understands.
pub const VERSION: u32 = 1;
/// Bytes of the fixed header.
pub const HEADER_SIZE: usize = 256;
/// Bytes of one task entry.
pub const TASK_SIZE: usize = 64;
/// Stack slots per CPU record.
pub const CPU_STACKS: usize = 8;
/// Bytes of one CPU record.
pub const CPU_SIZE: usize = 16 + 24 * CPU_STACKS;
/// Offset of `header_sum`.
const HEADER_SUM_OFF: usize = 0xf8;
/// Most live entries a descriptor may claim (the task walk's bound): the
/// table is read into host memory, `task_count * 64` bytes (64 MiB here),
/// whatever the guest-written header says about its capacity.
pub const MAX_AGENT_TASKS: usize = crate::os::linux::tasks::MAX_TASKS;

/// `flags`: a task could not be recorded; the table is unusable.
pub const F_OVERFLOW: u32 = 1 << 0;
/// `flags`: the CPU records include the IRQ stacks.
pub const F_IRQ_STACKS: u32 = 1 << 1;
/// `flags`: every CPU's idle task is in the table.
pub const F_IDLE_TASKS: u32 = 1 << 2;
/// `flags`: tracking is active.
pub const F_LIVE: u32 = 1 << 3;

/// Task flag: on a CPU (snapshot).
pub const T_ON_CPU: u32 = 1 << 0;
/// Task flag: a CPU's idle task.
pub const T_IDLE: u32 = 1 << 1;
/// Task flag: a kernel thread.
pub const T_KTHREAD: u32 = 1 << 2;

/// One step of the descriptor checksum.
pub fn mix(h: u64, w: u64) -> u64 {
    let h = h ^ w.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h.rotate_left(31).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// The descriptor checksum of `bytes` (whole little-endian u64 words; a
/// trailing partial word is ignored, the agent never sums one).
pub fn vsa_sum(bytes: &[u8]) -> u64 {
    let h = bytes.chunks_exact(8).fold(0x243f_6a88_85a3_08d3, |h, w| mix(h, le64(w, 0)));
    h ^ (h >> 29)
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

fn le32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

/// `task_struct` offsets the agent was compiled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentOffsets {
    /// `pid`.
    pub pid: u32,
    /// `tgid`.
    pub tgid: u32,
    /// `comm`.
    pub comm: u32,
    /// `__state`.
    pub state: u32,
    /// `on_cpu`.
    pub on_cpu: u32,
    /// `thread_info.cpu`.
    pub cpu: u32,
    /// `stack`.
    pub stack: u32,
    /// `thread.sp`.
    pub thread_sp: u32,
    /// `flags` (PF_*).
    pub flags: u32,
    /// `exit_state`.
    pub exit_state: u32,
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Guest-physical address of the header.
    pub self_phys: u64,
    /// Kernel virtual address of the header.
    pub self_virt: u64,
    /// Sequence counter (even: stable).
    pub seq: u64,
    /// Random per load of the agent.
    pub boot_id: u64,
    /// Bytes of the contiguous block.
    pub block_size: u32,
    /// `F_*` flags.
    pub flags: u32,
    /// Offset of the CPU records.
    pub cpu_off: u32,
    /// Number of CPU records.
    pub cpu_count: u32,
    /// Offset of the table's page list.
    pub page_list_off: u32,
    /// Pages of the table.
    pub table_pages: u32,
    /// Table capacity.
    pub task_cap: u32,
    /// Live entries.
    pub task_count: u32,
    /// Kernel virtual address of the table.
    pub table_virt: u64,
    /// Sum over the live entries.
    pub tasks_sum: u64,
    /// Sum over the CPU records and the page list.
    pub static_sum: u64,
    /// Updates since load.
    pub updates: u64,
    /// THREAD_SIZE.
    pub thread_size: u32,
    /// `sizeof(struct task_struct)`.
    pub task_struct_size: u32,
    /// Field offsets.
    pub offsets: AgentOffsets,
    /// IRQ_STACK_SIZE.
    pub irq_stack_size: u32,
    /// Tasks that did not fit.
    pub dropped: u32,
}

/// True when `b` starts with the two magic words (cheap pre-filter of a scan).
pub fn has_magic(b: &[u8]) -> bool {
    b.len() >= 16 && le64(b, 0) == MAGIC0 && le64(b, 8) == MAGIC1
}

fn corrupt(why: impl Into<String>) -> AgentError {
    AgentError::Corrupt(why.into())
}

/// Parses and validates a header. `at_phys`: where it was read, when known
/// physically (a copy of a header elsewhere in memory is not the descriptor).
/// An odd sequence counter is [`AgentError::Busy`]: retry after the guest ran.
pub fn parse_header(b: &[u8], at_phys: Option<u64>) -> Result<Header, AgentError> {
    if b.len() < HEADER_SIZE || !has_magic(b) {
        return Err(AgentError::Absent("no agent magic at the announced address".into()));
    }
    let version = le32(b, 0x10);
    if version != VERSION {
        return Err(AgentError::Version { found: version, supported: VERSION });
    }
    let o = |off| le32(b, off);
    let h = Header {
        self_phys: le64(b, 0x18),
        self_virt: le64(b, 0x20),
        seq: le64(b, 0x28),
        boot_id: le64(b, 0x30),
        block_size: o(0x38),
        flags: o(0x3c),
        cpu_off: o(0x40),
        cpu_count: o(0x44),
        page_list_off: o(0x4c),
        table_pages: o(0x50),
        task_cap: o(0x58),
        task_count: o(0x5c),
        table_virt: le64(b, 0x60),
        tasks_sum: le64(b, 0x68),
        static_sum: le64(b, 0x70),
        updates: le64(b, 0x78),
        thread_size: o(0x80),
        task_struct_size: o(0x84),
        offsets: AgentOffsets {
            pid: o(0x88),
            tgid: o(0x8c),
            comm: o(0x90),
            state: o(0x94),
            on_cpu: o(0x98),
            cpu: o(0x9c),
            stack: o(0xa0),
            thread_sp: o(0xa4),
            flags: o(0xa8),
            exit_state: o(0xac),
        },
        irq_stack_size: o(0xb0),
        dropped: o(0xb4),
    };
    if let Some(p) = at_phys {
        if h.self_phys != p {
            return Err(corrupt(format!("header at {p:#x} says it is at {:#x} (a stale copy?)", h.self_phys)));
        }
    }
    // The checksum is written for the even value that ends an update.
    if h.seq & 1 == 1 {
        return Err(AgentError::Busy { seq: h.seq });
    }
    let mut copy = b[..HEADER_SIZE].to_vec();
    copy[HEADER_SUM_OFF..HEADER_SUM_OFF + 8].fill(0);
    let sum = vsa_sum(&copy[..HEADER_SUM_OFF]);
    if sum != le64(b, HEADER_SUM_OFF) {
        return Err(corrupt(format!("header checksum {:#x} != {sum:#x}", le64(b, HEADER_SUM_OFF))));
    }
    if o(0x14) as usize != HEADER_SIZE || o(0x48) as usize != CPU_SIZE || o(0x54) as usize != TASK_SIZE {
        return Err(corrupt("record sizes differ from version 1"));
    }
    let list_end = u64::from(h.page_list_off) + 8 * u64::from(h.table_pages);
    let cpus_end = u64::from(h.cpu_off) + CPU_SIZE as u64 * u64::from(h.cpu_count);
    let table_bytes = u64::from(h.table_pages) * 4096;
    let sane = h.self_phys & 0xfff == 0
        && h.cpu_off as usize >= HEADER_SIZE
        && cpus_end <= u64::from(h.page_list_off)
        && list_end <= u64::from(h.block_size)
        && h.block_size <= 16 << 20
        && h.cpu_count <= 8192
        && h.task_count <= h.task_cap
        && h.task_count as usize <= MAX_AGENT_TASKS
        && u64::from(h.task_cap) * TASK_SIZE as u64 <= table_bytes
        && h.thread_size.is_power_of_two()
        && h.thread_size >= 4096;
    if !sane {
        return Err(corrupt("header fields are inconsistent"));
    }
    Ok(h)
}

/// One stack of a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentStack {
    /// `irq`, `df`, `nmi`, `db`, `mce`, `vc`, `vc2`, `entry`.
    pub kind: &'static str,
    /// Lowest address.
    pub start: u64,
    /// One past the highest.
    pub end: u64,
}

/// One CPU record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCpu {
    /// CPU number.
    pub cpu: u32,
    /// Online when the agent loaded.
    pub online: bool,
    /// Its idle task, when known.
    pub idle_task: Option<u64>,
    /// Its stacks.
    pub stacks: Vec<AgentStack>,
}

fn kind_name(k: u32) -> Option<&'static str> {
    Some(match k {
        1 => "irq",
        2 => "df",
        3 => "nmi",
        4 => "db",
        5 => "mce",
        6 => "vc",
        7 => "vc2",
        8 => "entry",
        _ => return None,
    })
}

/// The CPU records and the table's page list from the whole block,
/// checked against `static_sum`.
pub fn parse_block(h: &Header, block: &[u8]) -> Result<(Vec<AgentCpu>, Vec<u64>), AgentError> {
    let start = h.cpu_off as usize;
    let end = h.page_list_off as usize + 8 * h.table_pages as usize;
    let region = block.get(start..end).ok_or_else(|| corrupt("block shorter than its header says"))?;
    let sum = vsa_sum(region);
    if sum != h.static_sum {
        return Err(corrupt(format!("CPU records / page list checksum {sum:#x} != {:#x}", h.static_sum)));
    }
    let mut cpus = Vec::new();
    for c in 0..h.cpu_count as usize {
        let r = &block[start + c * CPU_SIZE..start + (c + 1) * CPU_SIZE];
        let mut stacks = Vec::new();
        for s in 0..CPU_STACKS {
            let o = 16 + 24 * s;
            let (lo, hi, k) = (le64(r, o), le64(r, o + 8), le32(r, o + 16));
            match kind_name(k) {
                Some(kind) if hi > lo => stacks.push(AgentStack { kind, start: lo, end: hi }),
                Some(_) => return Err(corrupt(format!("cpu {c}: empty stack range {lo:#x}..{hi:#x}"))),
                None if k == 0 => {}
                None => return Err(corrupt(format!("cpu {c}: unknown stack kind {k}"))),
            }
        }
        let idle = le64(r, 8);
        cpus.push(AgentCpu { cpu: le32(r, 0), online: le32(r, 4) != 0, idle_task: (idle != 0).then_some(idle), stacks });
    }
    let list = (0..h.table_pages as usize).map(|i| le64(block, h.page_list_off as usize + 8 * i)).collect::<Vec<_>>();
    if list.iter().any(|p| p & 0xfff != 0) {
        return Err(corrupt("a table page address is not page aligned"));
    }
    Ok((cpus, list))
}

/// One entry of the table, as the agent recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTask {
    /// `task_struct` address.
    pub task: u64,
    /// Kernel stack base.
    pub stack: u64,
    /// Saved stack pointer at the last event.
    pub sp: u64,
    /// Thread id.
    pub pid: i32,
    /// Process id.
    pub tgid: i32,
    /// `__state` at the last event.
    pub state: u32,
    /// CPU at the last event.
    pub cpu: u32,
    /// `T_*` flags.
    pub flags: u32,
    /// Stack size.
    pub stack_size: u32,
    /// Command name.
    pub comm: String,
}

/// The live entries from the table's first `task_count * 64` bytes,
/// checked against `tasks_sum`.
pub fn parse_table(h: &Header, table: &[u8]) -> Result<Vec<AgentTask>, AgentError> {
    let n = h.task_count as usize;
    let bytes = table.get(..n * TASK_SIZE).ok_or_else(|| corrupt("table shorter than its task count"))?;
    let sum = bytes.chunks_exact(TASK_SIZE).fold(0u64, |s, e| s.wrapping_add(vsa_sum(e)));
    if sum != h.tasks_sum {
        return Err(corrupt(format!("task table checksum {sum:#x} != {:#x}", h.tasks_sum)));
    }
    let mut out = Vec::with_capacity(n);
    for e in bytes.chunks_exact(TASK_SIZE) {
        let comm = &e[0x30..0x40];
        let len = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
        let t = AgentTask {
            task: le64(e, 0),
            stack: le64(e, 8),
            sp: le64(e, 0x10),
            pid: le32(e, 0x18) as i32,
            tgid: le32(e, 0x1c) as i32,
            state: le32(e, 0x20),
            cpu: le32(e, 0x24),
            flags: le32(e, 0x28),
            stack_size: le32(e, 0x2c),
            comm: String::from_utf8_lossy(&comm[..len]).into_owned(),
        };
        if t.task == 0 || t.stack_size != h.thread_size {
            return Err(corrupt(format!("entry for pid {} is malformed", t.pid)));
        }
        out.push(t);
    }
    Ok(out)
}
