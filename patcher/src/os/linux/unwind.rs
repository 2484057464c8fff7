//! The ORC unwinder, from outside the guest: a port of 6.1's
//! `unwind_next_frame` (`arch/x86/kernel/unwind_orc.c`) over stacks read
//! from guest memory, for a sleeping task (from the `inactive_task_frame`
//! that `__switch_to_asm` left at `thread.sp`) or a vCPU (from its
//! registers), across IRQ and exception stacks (`call_on_irqstack`'s
//! `SP_INDIRECT` frame, `pt_regs` frames) to the end of the task stack.
//!
//! Every return address it produces was proven to be one; when it cannot
//! prove that (no ORC entry, a frame outside the known stacks, an address
//! outside kernel text, modules and the extra tables (patch code), a return
//! address rewritten by a tracer, a loop) the unwind says why and the
//! caller falls back to the conservative scan for that stack.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use super::orc::{reg, OrcEntry, OrcTable, OrcType};
use crate::model::mem::KernelMemory;

/// `sizeof(struct inactive_task_frame)` (r15 r14 r13 r12 bx bp ret_addr).
pub const INACTIVE_FRAME_SIZE: u64 = 7 * 8;
/// `sizeof(struct pt_regs)`.
pub const PT_REGS_SIZE: u64 = 21 * 8;
/// `offsetof(struct pt_regs, ip)` (`IRET_FRAME_OFFSET`).
pub const IRET_FRAME_OFFSET: u64 = 16 * 8;
/// `IRET_FRAME_SIZE`: ip, cs, flags, sp, ss.
pub const IRET_FRAME_SIZE: u64 = 5 * 8;
const MAX_FRAMES: usize = 1024;

/// pt_regs offset of a register -> index in [`crate::model::backend::VcpuState::gprs`].
fn gpr_index(pt_off: u64) -> Option<usize> {
    Some(match pt_off {
        0 => 15,
        8 => 14,
        16 => 13,
        24 => 12,
        32 => 6,
        40 => 1,
        48 => 11,
        56 => 10,
        64 => 9,
        72 => 8,
        80 => 0,
        88 => 2,
        96 => 3,
        104 => 4,
        112 => 5,
        _ => return None,
    })
}

const PT_BP: u64 = 32;
const PT_R10: u64 = 56;
const PT_R13: u64 = 16;
const PT_DI: u64 = 112;
const PT_DX: u64 = 96;
const PT_IP: u64 = 128;
const PT_CS: u64 = 136;
const PT_SP: u64 = 152;

/// Where an unwind starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A task switched out: its `thread.sp`.
    Sleeping {
        /// `thread.sp`.
        saved_sp: u64,
    },
    /// A vCPU in kernel mode: its registers (RAX.. order of `VcpuState::gprs`).
    Regs {
        /// RIP.
        rip: u64,
        /// General registers.
        gprs: [u64; 16],
    },
}

/// One frame: an address the code will return to or resume at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The address.
    pub ip: u64,
    /// SP at that frame.
    pub sp: u64,
    /// True for an interrupted (or current) instruction, false for a return address.
    pub signal: bool,
}

impl Frame {
    /// The address to test against a code range: a return address belongs
    /// to the call just before it.
    pub fn code_addr(&self) -> u64 {
        if self.signal {
            self.ip
        } else {
            self.ip.wrapping_sub(1)
        }
    }
}

/// The outcome of one unwind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unwind {
    /// Frames, innermost first.
    pub frames: Vec<Frame>,
    /// Indexes (into the caller's stack list) of the stacks it went through, in order.
    pub visited: Vec<usize>,
    /// `Some(why)` when the result cannot be trusted.
    pub unreliable: Option<String>,
    /// Bytes of stack read.
    pub bytes: u64,
}

/// What the unwinder knows: ORC tables (vmlinux, modules, and the extra
/// tables of code that comes and goes, such as patch code in the arena) and
/// addresses that mean "the real return address is elsewhere".
///
/// The kernel's tables are shared by clones (cheap to copy). Code that comes
/// and goes is not registered into a shared unwinder: whoever knows it (the
/// transaction, from the guest's registry) makes a view with
/// [`OrcUnwinder::with_extra`] for as long as it needs one.
#[derive(Debug, Clone, Default)]
pub struct OrcUnwinder {
    tables: Arc<Vec<OrcTable>>,
    extra: Vec<OrcTable>,
    ret_from_fork: Option<u64>,
    rewritten: Vec<(u64, &'static str)>,
}

impl OrcUnwinder {
    /// An unwinder with vmlinux's table; `ret_from_fork` (kallsyms) marks a
    /// brand-new task's first frame.
    pub fn new(vmlinux: OrcTable, ret_from_fork: Option<u64>) -> Self {
        Self { tables: Arc::new(vec![vmlinux]), extra: Vec::new(), ret_from_fork, rewritten: Vec::new() }
    }

    /// This unwinder (its tables shared, not copied) plus `extra`: ORC for
    /// code that comes and goes (patches' new code in the arena, from their
    /// objects' `.orc_unwind*` sections, see [`super::orc_object::orc_rows`]),
    /// in place of this one's extra tables.
    pub fn with_extra(&self, extra: Vec<OrcTable>) -> Self {
        Self { tables: Arc::clone(&self.tables), extra, ret_from_fork: self.ret_from_fork, rewritten: self.rewritten.clone() }
    }

    /// The extra tables of this view.
    pub fn extra(&self) -> &[OrcTable] {
        &self.extra
    }

    /// Adds ORC for more kernel code (a module), shared by every view made
    /// after. A table with the same name is replaced.
    pub fn add_table(&mut self, t: OrcTable) {
        let tables = Arc::make_mut(&mut self.tables);
        tables.retain(|x| x.name != t.name);
        tables.push(t);
    }

    /// Drops the table named `name` (an unloaded module).
    pub fn remove_table(&mut self, name: &str) {
        Arc::make_mut(&mut self.tables).retain(|x| x.name != name);
    }

    /// The kernel's tables (vmlinux, modules).
    pub fn tables(&self) -> &[OrcTable] {
        &self.tables
    }

    /// Declares an address that stands in for a return address kept
    /// elsewhere (`return_to_handler`, `arch_rethook_trampoline`): stacks
    /// through it are not reliable.
    pub fn add_rewritten(&mut self, addr: u64, what: &'static str) {
        self.rewritten.push((addr, what));
    }

    /// Unwinds one stack. `stacks` are the stacks the walk may use (the
    /// task's, and for a vCPU its CPU's IRQ/exception/entry stacks).
    pub fn unwind(&self, mem: &mut dyn KernelMemory, start: Start, stacks: &[Range<u64>]) -> Unwind {
        let code = Code { tables: &self.tables, extra: &self.extra, ret_from_fork: self.ret_from_fork, rewritten: &self.rewritten };
        let mut w = Walk { u: code, reader: StackReader::new(mem, stacks), out: Unwind::default(), cur: None };
        let r = w.run(start);
        w.out.unreliable = r.err();
        w.out.bytes = w.reader.bytes;
        w.out
    }
}

/// Reads words of the known stacks, each stack read once (from the lowest
/// address needed to its end) and kept.
struct StackReader<'m> {
    mem: &'m mut dyn KernelMemory,
    stacks: &'m [Range<u64>],
    cache: HashMap<usize, (u64, Vec<u8>)>,
    bytes: u64,
}

impl<'m> StackReader<'m> {
    fn new(mem: &'m mut dyn KernelMemory, stacks: &'m [Range<u64>]) -> Self {
        Self { mem, stacks, cache: HashMap::new(), bytes: 0 }
    }

    fn stack_of(&self, addr: u64, len: u64) -> Option<usize> {
        self.stacks.iter().position(|s| addr >= s.start && addr.checked_add(len).is_some_and(|e| e <= s.end))
    }

    fn read(&mut self, idx: usize, addr: u64) -> Result<u64, String> {
        let s = self.stacks[idx].clone();
        let have = self.cache.get(&idx).is_some_and(|(lo, _)| *lo <= addr);
        if !have {
            let lo = (addr & !7).max(s.start);
            let buf = self.mem.read_vec(lo, (s.end - lo) as usize).map_err(|e| format!("reading stack {:#x}..{:#x}: {e}", s.start, s.end))?;
            self.bytes += buf.len() as u64;
            self.cache.insert(idx, (lo, buf));
        }
        let (lo, buf) = self.cache.get(&idx).ok_or("stack cache")?;
        let off = (addr - lo) as usize;
        let b = buf.get(off..off + 8).ok_or("stack read past its end")?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }
}

/// The code an unwind may meet, borrowed for its duration.
#[derive(Clone, Copy)]
struct Code<'a> {
    tables: &'a [OrcTable],
    extra: &'a [OrcTable],
    ret_from_fork: Option<u64>,
    rewritten: &'a [(u64, &'static str)],
}

impl Code<'_> {
    fn table_for(&self, ip: u64) -> Option<&OrcTable> {
        self.tables.iter().chain(self.extra).find(|t| t.covers(ip))
    }
}

#[derive(Debug, Clone, Copy)]
enum Regs {
    Vcpu([u64; 16]),
    Stack(u64),
}

struct State {
    ip: u64,
    sp: u64,
    bp: u64,
    signal: bool,
    regs: Option<Regs>,
    prev_regs: Option<Regs>,
    full_regs: bool,
}

struct Walk<'u, 'm> {
    u: Code<'u>,
    reader: StackReader<'m>,
    out: Unwind,
    cur: Option<usize>,
}

enum Step {
    Next,
    End,
}

impl Walk<'_, '_> {
    /// `stack_access_ok` + read: the access must lie on a known stack; moving
    /// to another stack is allowed once per stack (the kernel's visit mask).
    fn deref(&mut self, addr: u64, len: u64) -> Result<usize, String> {
        let idx = self.reader.stack_of(addr, len).ok_or_else(|| format!("frame access at {addr:#x} is on no known stack"))?;
        if self.cur != Some(idx) {
            if self.out.visited.contains(&idx) {
                return Err(format!("unwind went back to stack {:#x}..{:#x}", self.reader.stacks[idx].start, self.reader.stacks[idx].end));
            }
            self.out.visited.push(idx);
            self.cur = Some(idx);
        }
        Ok(idx)
    }

    fn word(&mut self, addr: u64) -> Result<u64, String> {
        let idx = self.deref(addr, 8)?;
        self.reader.read(idx, addr)
    }

    fn regs_word(&mut self, r: Regs, off: u64) -> Result<u64, String> {
        match r {
            Regs::Vcpu(g) => gpr_index(off).map(|i| g[i]).ok_or_else(|| format!("no register at pt_regs offset {off}")),
            Regs::Stack(a) => {
                let idx = self.reader.stack_of(a + off, 8).ok_or("registers are on no known stack")?;
                self.reader.read(idx, a + off)
            }
        }
    }

    /// `get_reg`: a register from full regs, or from the previous full
    /// regs when only an IRET frame is known.
    fn get_reg(&mut self, st: &State, off: u64) -> Result<Option<u64>, String> {
        let Some(r) = st.regs else { return Ok(None) };
        if st.full_regs {
            return self.regs_word(r, off).map(Some);
        }
        match st.prev_regs {
            Some(p) => self.regs_word(p, off).map(Some),
            None => Ok(None),
        }
    }

    fn user_mode(&mut self, st: &State) -> Result<bool, String> {
        match st.regs {
            Some(Regs::Stack(a)) => Ok(self.regs_word(Regs::Stack(a), PT_CS)? & 3 == 3),
            _ => Ok(false),
        }
    }

    fn check_ip(&self, ip: u64) -> Result<(), String> {
        if let Some((_, what)) = self.u.rewritten.iter().find(|(a, _)| *a == ip) {
            return Err(format!("return address rewritten by {what}"));
        }
        if self.u.table_for(ip).is_none() {
            return Err(format!("{ip:#x} is outside kernel text, modules and registered code"));
        }
        Ok(())
    }

    fn run(&mut self, start: Start) -> Result<(), String> {
        let mut st = match start {
            Start::Sleeping { saved_sp } => {
                let bp = self.word(saved_sp + 5 * 8)?;
                let ip = self.word(saved_sp + 6 * 8)?;
                State { ip, sp: saved_sp + INACTIVE_FRAME_SIZE, bp, signal: Some(ip) == self.u.ret_from_fork, regs: None, prev_regs: None, full_regs: false }
            }
            Start::Regs { rip, gprs } => {
                let sp = gprs[7];
                let idx = self.reader.stack_of(sp, 8).ok_or_else(|| format!("RSP {sp:#x} is on no known stack"))?;
                self.out.visited.push(idx);
                self.cur = Some(idx);
                State { ip: rip, sp, bp: gprs[6], signal: true, regs: Some(Regs::Vcpu(gprs)), prev_regs: None, full_regs: true }
            }
        };
        loop {
            if st.regs.is_some() && self.user_mode(&st)? {
                return Ok(());
            }
            self.check_ip(st.ip)?;
            self.out.frames.push(Frame { ip: st.ip, sp: st.sp, signal: st.signal });
            if self.out.frames.len() > MAX_FRAMES {
                return Err(format!("more than {MAX_FRAMES} frames"));
            }
            match self.step(&mut st)? {
                Step::Next => {}
                Step::End => return Ok(()),
            }
        }
    }

    fn entry(&self, st: &State) -> Result<OrcEntry, String> {
        let at = if st.signal { st.ip } else { st.ip.wrapping_sub(1) };
        let t = self.u.table_for(at).ok_or_else(|| format!("{at:#x} is outside kernel text, modules and registered code"))?;
        t.find(at).copied().ok_or_else(|| format!("no ORC entry for {at:#x} in {}", t.name))
    }

    /// One `unwind_next_frame`.
    fn step(&mut self, st: &mut State) -> Result<Step, String> {
        let orc = self.entry(st)?;
        let (prev_sp, prev_stack) = (st.sp, self.cur);
        if orc.sp_reg == reg::UNDEFINED {
            return if orc.end { Ok(Step::End) } else { Err(format!("undefined frame at {:#x}", st.ip)) };
        }
        let off = i64::from(orc.sp_offset) as u64;
        let mut indirect = false;
        let mut sp = match orc.sp_reg {
            reg::SP => st.sp.wrapping_add(off),
            reg::BP => st.bp.wrapping_add(off),
            reg::SP_INDIRECT => {
                indirect = true;
                st.sp
            }
            reg::BP_INDIRECT => {
                indirect = true;
                st.bp.wrapping_add(off)
            }
            r => {
                let pt = match r {
                    reg::R10 => PT_R10,
                    reg::R13 => PT_R13,
                    reg::DI => PT_DI,
                    reg::DX => PT_DX,
                    _ => return Err(format!("unknown SP base register {r} at {:#x}", st.ip)),
                };
                self.get_reg(st, pt)?.ok_or_else(|| format!("register for the SP base {r} unknown at {:#x}", st.ip))?
            }
        };
        if indirect {
            sp = self.word(sp)?;
            if orc.sp_reg == reg::SP_INDIRECT {
                sp = sp.wrapping_add(off);
            }
        }
        let bp_now = st.bp;
        match orc.kind {
            OrcType::Call => {
                st.ip = self.word(sp.wrapping_sub(8))?;
                st.sp = sp;
                st.regs = None;
                st.prev_regs = None;
                st.signal = false;
            }
            OrcType::Regs => {
                self.deref(sp, PT_REGS_SIZE)?;
                let r = Regs::Stack(sp);
                st.ip = self.regs_word(r, PT_IP)?;
                st.sp = self.regs_word(r, PT_SP)?;
                st.regs = Some(r);
                st.prev_regs = None;
                st.full_regs = true;
                st.signal = true;
            }
            OrcType::RegsPartial => {
                self.deref(sp, IRET_FRAME_SIZE)?;
                let r = Regs::Stack(sp.wrapping_sub(IRET_FRAME_OFFSET));
                st.ip = self.regs_word(r, PT_IP)?;
                st.sp = self.regs_word(r, PT_SP)?;
                if st.full_regs {
                    st.prev_regs = st.regs;
                }
                st.regs = Some(r);
                st.full_regs = false;
                st.signal = true;
            }
            OrcType::Invalid => return Err(format!("invalid ORC entry type at {:#x}", st.ip)),
        }
        let bp_off = i64::from(orc.bp_offset) as u64;
        match orc.bp_reg {
            reg::UNDEFINED => {
                if let Some(v) = self.get_reg(st, PT_BP)? {
                    st.bp = v;
                }
            }
            reg::PREV_SP => st.bp = self.word(sp.wrapping_add(bp_off))?,
            reg::BP => st.bp = self.word(bp_now.wrapping_add(bp_off))?,
            r => return Err(format!("unknown BP base register {r}")),
        }
        let same_stack = prev_stack.is_some() && self.reader.stack_of(st.sp, 8) == prev_stack;
        if same_stack && st.sp <= prev_sp {
            return Err(format!("stack going the wrong way at {:#x}", st.ip));
        }
        Ok(Step::Next)
    }
}
