//! Test fixtures: descriptors laid out byte for byte as the C agent writes
//! them, installed into a sparse [`RamGuest`] (physical pages, and its own
//! page tables for the kernel-virtual side) to read them from.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::layout::{vsa_sum, AgentCpu, AgentTask, CPU_SIZE, F_LIVE, HEADER_SIZE, MAGIC0, MAGIC1, TASK_SIZE, VERSION};
use crate::testing::RamGuest;

/// Where a fake agent lives.
#[derive(Debug, Clone)]
pub struct FakeAgent {
    /// Header physical address.
    pub phys: u64,
    /// Header virtual address.
    pub virt: u64,
    /// Table virtual address.
    pub table_virt: u64,
    /// Physical pages of the table.
    pub table_pages: Vec<u64>,
    /// Sequence value.
    pub seq: u64,
    /// Header flags.
    pub flags: u32,
    /// The CPUs.
    pub cpus: Vec<AgentCpu>,
    /// The tasks.
    pub tasks: Vec<AgentTask>,
}

/// Task entry bytes as the C agent writes them.
pub fn task_bytes(t: &AgentTask) -> [u8; TASK_SIZE] {
    let mut e = [0u8; TASK_SIZE];
    e[0..8].copy_from_slice(&t.task.to_le_bytes());
    e[8..16].copy_from_slice(&t.stack.to_le_bytes());
    e[0x10..0x18].copy_from_slice(&t.sp.to_le_bytes());
    e[0x18..0x1c].copy_from_slice(&t.pid.to_le_bytes());
    e[0x1c..0x20].copy_from_slice(&t.tgid.to_le_bytes());
    e[0x20..0x24].copy_from_slice(&t.state.to_le_bytes());
    e[0x24..0x28].copy_from_slice(&t.cpu.to_le_bytes());
    e[0x28..0x2c].copy_from_slice(&t.flags.to_le_bytes());
    e[0x2c..0x30].copy_from_slice(&t.stack_size.to_le_bytes());
    let c = t.comm.as_bytes();
    e[0x30..0x30 + c.len().min(15)].copy_from_slice(&c[..c.len().min(15)]);
    e
}

fn kind_code(k: &str) -> u32 {
    ["", "irq", "df", "nmi", "db", "mce", "vc", "vc2", "entry"].iter().position(|x| *x == k).unwrap() as u32
}

/// The task_struct offsets the fixtures use.
pub const OFF: [(usize, u32); 10] =
    [(0x88, 0x500), (0x8c, 0x504), (0x90, 0x700), (0x94, 0x18), (0x98, 0x34), (0x9c, 0x10), (0xa0, 0x20), (0xa4, 0x1a40), (0xa8, 0x2c), (0xac, 0x4e0)];

impl FakeAgent {
    /// An agent with `tasks`, two CPUs, the table on non-contiguous pages.
    pub fn new(tasks: Vec<AgentTask>) -> Self {
        let pages = (tasks.len() * TASK_SIZE).div_ceil(4096).max(1) as u64 + 1;
        let cpus = (0..2)
            .map(|c| AgentCpu {
                cpu: c,
                online: true,
                idle_task: Some(0xffff_8880_0100_0000 + u64::from(c) * 0x4000),
                stacks: vec![
                    super::layout::AgentStack { kind: "irq", start: 0xffff_c900_0000_0000 + u64::from(c) * 0x10000, end: 0xffff_c900_0000_4000 + u64::from(c) * 0x10000 },
                    super::layout::AgentStack { kind: "nmi", start: 0xffff_fe00_0000_c000 + u64::from(c) * 0x3b000, end: 0xffff_fe00_0000_e000 + u64::from(c) * 0x3b000 },
                ],
            })
            .collect();
        Self {
            phys: 0x0123_4000,
            virt: 0xffff_8880_0123_4000,
            table_virt: 0xffff_c900_0010_0000,
            // Backwards, with a gap: never one contiguous run.
            table_pages: (0..pages).map(|i| 0x0800_0000 - i * 0x2000).collect(),
            seq: 42,
            flags: F_LIVE,
            cpus,
            tasks,
        }
    }

    /// The block (header, CPU records, page list) and the table bytes.
    pub fn bytes(&self) -> (Vec<u8>, Vec<u8>) {
        let cpu_off = HEADER_SIZE;
        let list_off = cpu_off + CPU_SIZE * self.cpus.len();
        let block_size = (list_off + 8 * self.table_pages.len()).div_ceil(4096) * 4096;
        let mut b = vec![0u8; block_size];
        let w64 = |b: &mut Vec<u8>, o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_le_bytes());
        let w32 = |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        for (i, c) in self.cpus.iter().enumerate() {
            let o = cpu_off + i * CPU_SIZE;
            w32(&mut b, o, c.cpu);
            w32(&mut b, o + 4, u32::from(c.online));
            w64(&mut b, o + 8, c.idle_task.unwrap_or(0));
            for (j, s) in c.stacks.iter().enumerate() {
                w64(&mut b, o + 16 + 24 * j, s.start);
                w64(&mut b, o + 24 + 24 * j, s.end);
                w32(&mut b, o + 32 + 24 * j, kind_code(s.kind));
            }
        }
        for (i, p) in self.table_pages.iter().enumerate() {
            w64(&mut b, list_off + 8 * i, *p);
        }
        let static_sum = vsa_sum(&b[cpu_off..list_off + 8 * self.table_pages.len()]);
        let mut table = vec![0u8; self.table_pages.len() * 4096];
        let mut tasks_sum = 0u64;
        for (i, t) in self.tasks.iter().enumerate() {
            let e = task_bytes(t);
            tasks_sum = tasks_sum.wrapping_add(vsa_sum(&e));
            table[i * TASK_SIZE..(i + 1) * TASK_SIZE].copy_from_slice(&e);
        }
        w64(&mut b, 0, MAGIC0);
        w64(&mut b, 8, MAGIC1);
        w32(&mut b, 0x10, VERSION);
        w32(&mut b, 0x14, HEADER_SIZE as u32);
        w64(&mut b, 0x18, self.phys);
        w64(&mut b, 0x20, self.virt);
        w64(&mut b, 0x28, self.seq);
        w64(&mut b, 0x30, 0x1234_5678_9abc_def0);
        w32(&mut b, 0x38, block_size as u32);
        w32(&mut b, 0x3c, self.flags);
        w32(&mut b, 0x40, cpu_off as u32);
        w32(&mut b, 0x44, self.cpus.len() as u32);
        w32(&mut b, 0x48, CPU_SIZE as u32);
        w32(&mut b, 0x4c, list_off as u32);
        w32(&mut b, 0x50, self.table_pages.len() as u32);
        w32(&mut b, 0x54, TASK_SIZE as u32);
        w32(&mut b, 0x58, (self.table_pages.len() * 4096 / TASK_SIZE) as u32);
        w32(&mut b, 0x5c, self.tasks.len() as u32);
        w64(&mut b, 0x60, self.table_virt);
        w64(&mut b, 0x68, tasks_sum);
        w64(&mut b, 0x70, static_sum);
        w64(&mut b, 0x78, 7);
        w32(&mut b, 0x80, 16384);
        w32(&mut b, 0x84, 0x2500);
        for (o, v) in OFF {
            w32(&mut b, o, v);
        }
        w32(&mut b, 0xb0, 16384);
        let sum = vsa_sum(&b[..0xf8]);
        w64(&mut b, 0xf8, sum);
        (b, table)
    }

    /// Writes the agent into `g` (physically, and mapped virtually).
    pub fn install(&self, g: &mut RamGuest) {
        let (block, table) = self.bytes();
        g.map_range(self.virt, self.phys, block.len() as u64);
        g.put(self.phys, &block);
        for (i, p) in self.table_pages.iter().enumerate() {
            g.map_4k(self.table_virt + 4096 * i as u64, *p, 4096);
            g.put(*p, &table[i * 4096..(i + 1) * 4096]);
        }
    }
}

/// A task entry for the fixtures.
pub fn task(n: u32, comm: &str) -> AgentTask {
    AgentTask {
        task: 0xffff_8880_0200_0000 + u64::from(n) * 0x4000,
        stack: 0xffff_c900_0100_0000 + u64::from(n) * 0x8000,
        sp: 0xffff_c900_0100_3e00 + u64::from(n) * 0x8000,
        pid: n as i32,
        tgid: n as i32,
        state: 1,
        cpu: n % 2,
        flags: 0,
        stack_size: 16384,
        comm: comm.to_string(),
    }
}
