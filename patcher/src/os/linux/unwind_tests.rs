//! Unit tests of the ORC tables and the unwinder on synthetic kernels:
//! entry bit layout, lookup blocks, sleeping user tasks and kernel threads,
//! a vCPU interrupted onto its IRQ stack, every reason for an unreliable
//! unwind, extra ORC ranges (patch code), and ORC rows of an ELF object.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::single_range_in_vec_init)]

pub(crate) use crate::testing::RamGuest;
pub(crate) use super::orc::{reg, OrcEntry, OrcTable, OrcType, LOOKUP_BLOCK_SIZE};
pub(crate) use super::unwind::{Frame, OrcUnwinder, Start, PT_REGS_SIZE};

pub(crate) const T: u64 = 0xffff_ffff_8100_0000;
pub(crate) const S: u64 = 0xffff_c900_0001_0000;
pub(crate) const IRQ: u64 = 0xffff_c900_0008_0000;
pub(crate) const SIZE: u64 = 0x4000;

pub(crate) fn e(sp_reg: u8, sp_offset: i16, kind: OrcType, end: bool) -> OrcEntry {
    OrcEntry { sp_offset, bp_offset: 0, sp_reg, bp_reg: reg::UNDEFINED, kind, end }
}
pub(crate) fn call(off: i16) -> OrcEntry {
    e(reg::SP, off, OrcType::Call, false)
}

// Functions of the fake kernel (their frame sizes at the call sites).
pub(crate) const E: u64 = T; // syscall entry: pt_regs at SP
pub(crate) const RET_E: u64 = T + 0x20;
pub(crate) const D: u64 = T + 0x100;
pub(crate) const FD: i16 = 0x30;
pub(crate) const RET_D: u64 = T + 0x150;
pub(crate) const SCHED: u64 = T + 0x200;
pub(crate) const FS: i16 = 0x48;
pub(crate) const RET_S: u64 = T + 0x280;
pub(crate) const TARGET: u64 = T + 0x300;
pub(crate) const GAP: u64 = T + 0x340;
pub(crate) const H: u64 = T + 0x400;
pub(crate) const FH: i16 = 0x20;
pub(crate) const X: u64 = T + 0x480;
pub(crate) const FX: i16 = 0x18;
pub(crate) const RET_X: u64 = T + 0x4a0;
pub(crate) const E2: u64 = T + 0x500;
pub(crate) const RET_E2: u64 = T + 0x520;
pub(crate) const KT: u64 = T + 0x580;
pub(crate) const RET_KT: u64 = T + 0x590;
pub(crate) const KF: u64 = T + 0x600;
pub(crate) const FK: i16 = 0x28;
pub(crate) const RET_KF: u64 = T + 0x640;

pub(crate) fn kernel_table() -> OrcTable {
    let rows = vec![
        (E, e(reg::SP, 0, OrcType::Regs, false)),
        (D, call(8)),
        (D + 4, call(FD + 8)),
        (SCHED, call(FS + 8)),
        (TARGET, call(8)),
        (GAP, e(reg::UNDEFINED, 0, OrcType::Call, false)),
        (H, call(FH + 8)),
        (X, call(8)),
        (X + 8, e(reg::SP_INDIRECT, FX + 8, OrcType::Call, false)),
        (E2, e(reg::SP, 0, OrcType::Regs, false)),
        (KT, e(reg::UNDEFINED, 0, OrcType::Call, true)),
        (KF, call(FK + 8)),
        (T + 0x700, e(reg::UNDEFINED, 0, OrcType::Call, false)),
    ];
    OrcTable::new("vmlinux", T, T + 0x1000, rows)
}

/// A stack being built downwards from `top`.
pub(crate) struct Stack {
    pub(crate) base: u64,
    pub(crate) data: Vec<u8>,
    pub(crate) sp: u64,
}

impl Stack {
    pub(crate) fn new(base: u64) -> Self {
        Self { base, data: vec![0; SIZE as usize], sp: base + SIZE }
    }
    pub(crate) fn put(&mut self, at: u64, v: u64) {
        let o = (at - self.base) as usize;
        self.data[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn push(&mut self, v: u64) {
        self.sp -= 8;
        self.put(self.sp, v);
    }
    pub(crate) fn reserve(&mut self, n: i16) {
        self.sp -= n as u64;
    }
    /// pt_regs with ip, cs, sp at the current sp.
    pub(crate) fn regs(&mut self, ip: u64, cs: u64, sp: u64) -> u64 {
        self.sp -= PT_REGS_SIZE;
        let r = self.sp;
        self.put(r + 128, ip);
        self.put(r + 136, cs);
        self.put(r + 152, sp);
        r
    }
    /// `__switch_to_asm`'s frame after `ret` was pushed by the call.
    pub(crate) fn switch_frame(&mut self, ret: u64) -> u64 {
        self.push(ret);
        for v in [0xb0b0, 0xb1, 0x12, 0x13, 0x14, 0x15] {
            self.push(v);
        }
        self.sp
    }
    pub(crate) fn install(&self, g: &mut RamGuest, phys: u64) {
        g.map_range(self.base, phys, SIZE);
        g.write_virt(self.base, &self.data).unwrap();
    }
}

/// A user task asleep in SCHED, called from D (which holds a stale word
/// pointing into TARGET), called from the syscall entry E.
pub(crate) fn sleeping_user_task(stale: bool) -> (Stack, u64) {
    let mut s = Stack::new(S);
    s.regs(0x40_1000, 0x33, 0x7ffe_0000);
    s.push(RET_E);
    s.reserve(FD);
    if stale {
        s.put(s.sp + 0x10, TARGET + 4);
    }
    s.push(RET_D);
    s.reserve(FS);
    let sp = s.switch_frame(RET_S);
    (s, sp)
}

pub(crate) fn ips(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(|f| f.ip).collect()
}

#[test]
pub(crate) fn entry_bits_match_orc_types_h() {
    // sp_reg:4 bp_reg:4 type:2 end:1, little-endian bitfields.
    let x = OrcEntry::parse(&[0x10, 0x00, 0xf0, 0xff, 0x15, 0x06]);
    assert_eq!((x.sp_offset, x.bp_offset, x.sp_reg, x.bp_reg, x.kind, x.end), (16, -16, reg::SP, reg::PREV_SP, OrcType::RegsPartial, true));
    for k in [OrcType::Call, OrcType::Regs, OrcType::RegsPartial] {
        let y = OrcEntry { sp_offset: -8, bp_offset: 24, sp_reg: reg::SP_INDIRECT, bp_reg: reg::BP, kind: k, end: false };
        assert_eq!(OrcEntry::parse(&y.to_bytes()), y);
    }
}

#[test]
pub(crate) fn lookup_blocks_give_the_same_answers_as_a_full_search() {
    // Entries every 3..40 bytes over 64 KiB, lookup blocks built like unwind_init().
    let mut rows = Vec::new();
    let mut ip = T;
    let mut i = 0i16;
    while ip < T + 0x10000 {
        rows.push((ip, call(8 + i % 64)));
        ip += 3 + (i as u64 * 7) % 37;
        i += 1;
    }
    let full = OrcTable::new("vmlinux", T, T + 0x10000, rows);
    let blocks = (0x10000 / LOOKUP_BLOCK_SIZE + 1) as usize;
    let lookup: Vec<u32> = (0..blocks)
        .map(|b| {
            let at = T + b as u64 * LOOKUP_BLOCK_SIZE;
            (full.ips.partition_point(|&a| a <= at) - 1) as u32
        })
        .collect();
    let mut fast = full.clone();
    fast.lookup = Some(lookup);
    for probe in (T..T + 0x10000).step_by(5) {
        assert_eq!(fast.find(probe), full.find(probe), "{probe:#x}");
    }
    assert_eq!(full.find(T - 1), None);
    // Text outside [start, end) (head and init text) is covered by a full search.
    let mut with_init = fast.clone();
    with_init.ips.insert(0, T - 0x1000);
    with_init.entries.insert(0, call(99));
    if let Some(l) = with_init.lookup.as_mut() {
        l.iter_mut().for_each(|i| *i += 1);
    }
    assert!(!with_init.covers(T - 0x800));
    with_init.also.push(T - 0x1000..T);
    assert!(with_init.covers(T - 0x800));
    assert_eq!(with_init.find(T - 0x800), Some(&call(99)));
    assert_eq!(with_init.find(T + 0x777), fast.find(T + 0x777));
}

#[test]
pub(crate) fn raw_tables_are_relative_and_must_be_sorted() {
    let base = T + 0x10_0000;
    let mut ipb = Vec::new();
    for (i, target) in [T + 0x10, T + 0x20, T + 0x30].iter().enumerate() {
        ipb.extend_from_slice(&((*target as i64 - (base + 4 * i as u64) as i64) as i32).to_le_bytes());
    }
    let ent: Vec<u8> = (0..3).flat_map(|_| call(8).to_bytes()).collect();
    let t = OrcTable::from_raw("m", T, T + 0x100, base, &ipb, &ent).unwrap();
    assert_eq!(t.ips, vec![T + 0x10, T + 0x20, T + 0x30]);
    ipb.swap(0, 4);
    assert_eq!(OrcTable::from_raw("m", T, T + 0x100, base, &ipb, &ent).unwrap_err().cause(), "orc_unsorted");
    assert_eq!(OrcTable::from_raw("m", T, T + 0x100, base, &ipb, &ent[..12]).unwrap_err().cause(), "orc_counts");
}

#[test]
pub(crate) fn a_sleeping_user_task_unwinds_to_its_user_registers_and_skips_stale_words() {
    let (s, sp) = sleeping_user_task(true);
    let mut g = RamGuest::sparse();
    s.install(&mut g, 0x10_0000);
    let u = OrcUnwinder::new(kernel_table(), None);
    let w = u.unwind(&mut g, Start::Sleeping { saved_sp: sp }, &[S..S + SIZE]);
    assert_eq!(w.unreliable, None);
    assert_eq!(ips(&w.frames), vec![RET_S, RET_D, RET_E]);
    assert!(w.frames.iter().all(|f| !f.signal));
    assert!(!ips(&w.frames).contains(&(TARGET + 4)), "the stale word is no frame");
    assert_eq!(w.visited, vec![0]);
    assert!(w.bytes > 0 && w.bytes <= SIZE);
}

#[test]
pub(crate) fn a_kernel_thread_ends_at_the_end_hint() {
    let mut s = Stack::new(S);
    s.push(RET_KT);
    s.reserve(FK);
    s.push(RET_KF);
    s.reserve(FS);
    let sp = s.switch_frame(RET_S);
    let mut g = RamGuest::sparse();
    s.install(&mut g, 0x10_0000);
    let w = OrcUnwinder::new(kernel_table(), None).unwind(&mut g, Start::Sleeping { saved_sp: sp }, &[S..S + SIZE]);
    assert_eq!(w.unreliable, None);
    assert_eq!(ips(&w.frames), vec![RET_S, RET_KF, RET_KT]);
}

#[test]
pub(crate) fn a_vcpu_on_its_irq_stack_unwinds_back_to_the_interrupted_task() {
    // Task stack: user regs, E -> D, D interrupted at D+0x40, kernel regs, E2 -> X.
    let mut t = Stack::new(S);
    t.regs(0x40_1000, 0x33, 0x7ffe_0000);
    t.push(RET_E);
    t.reserve(FD);
    let interrupted_sp = t.sp;
    t.regs(D + 0x40, 0x10, interrupted_sp);
    t.push(RET_E2);
    t.reserve(FX);
    let task_sp = t.sp;
    // IRQ stack: the task's SP at the top word, then X -> H.
    let mut i = Stack::new(IRQ);
    let tos = IRQ + SIZE - 8;
    i.put(tos, task_sp);
    i.sp = tos;
    i.push(RET_X);
    i.reserve(FH);
    let mut gprs = [0u64; 16];
    gprs[7] = i.sp;
    let mut g = RamGuest::sparse();
    t.install(&mut g, 0x10_0000);
    i.install(&mut g, 0x20_0000);
    let u = OrcUnwinder::new(kernel_table(), None);
    let stacks = [S..S + SIZE, IRQ..IRQ + SIZE];
    let w = u.unwind(&mut g, Start::Regs { rip: H + 0x10, gprs }, &stacks);
    assert_eq!(w.unreliable, None);
    assert_eq!(ips(&w.frames), vec![H + 0x10, RET_X, RET_E2, D + 0x40, RET_E]);
    assert_eq!(w.frames.iter().map(|f| f.signal).collect::<Vec<_>>(), vec![true, false, false, true, false]);
    assert_eq!(w.visited, vec![1, 0], "IRQ stack, then the task stack");
    // Without the IRQ stack among the known stacks there is nothing to trust.
    let w = u.unwind(&mut g, Start::Regs { rip: H + 0x10, gprs }, &stacks[..1]);
    assert!(w.unreliable.unwrap().contains("no known stack"));
}

#[test]
pub(crate) fn every_doubtful_frame_makes_the_unwind_unreliable() {
    let u = OrcUnwinder::new(kernel_table(), None);
    let run = |u: &OrcUnwinder, edit: &dyn Fn(&mut Stack, u64)| {
        let (mut s, sp) = sleeping_user_task(false);
        edit(&mut s, sp);
        let mut g = RamGuest::sparse();
        s.install(&mut g, 0x10_0000);
        u.unwind(&mut g, Start::Sleeping { saved_sp: sp }, &[S..S + SIZE]).unreliable.unwrap_or_default()
    };
    // D's return address replaced: outside text, in a gap, rewritten by a tracer.
    let ret_d_at = |sp: u64| sp + 56 + FS as u64;
    assert!(run(&u, &|s, sp| s.put(ret_d_at(sp), 0xdead_beef)).contains("outside kernel text"));
    assert!(run(&u, &|s, sp| s.put(ret_d_at(sp), GAP + 9)).contains("undefined frame"));
    let mut traced = u.clone();
    traced.add_rewritten(RET_D, "the function-graph tracer");
    assert!(run(&traced, &|_, _| {}).contains("function-graph tracer"));
    // A frame whose previous SP is not above it: a loop.
    let mut backwards = kernel_table();
    backwards.entries[3] = call(0);
    let msg = run(&OrcUnwinder::new(backwards, None), &|_, _| {});
    assert!(msg.contains("wrong way"), "{msg}");
    // The first frame itself off the stack.
    let w = u.unwind(&mut RamGuest::sparse(), Start::Sleeping { saved_sp: S + SIZE }, &[S..S + SIZE]);
    assert!(w.unreliable.unwrap().contains("no known stack"));
    // The whole thing fine when untouched.
    assert_eq!(run(&u, &|_, _| {}), "");
}

#[test]
pub(crate) fn patch_code_unwinds_with_its_orc_in_a_view() {
    // D's caller is new code in the arena, which the kernel's table does not cover.
    const ARENA: u64 = 0xffff_ffff_c000_0000;
    let (mut s, sp) = sleeping_user_task(false);
    let ret_d_at = sp + 56 + FS as u64;
    s.put(ret_d_at, ARENA + 0x40);
    // The arena function's frame is D's (FD) and it was called from E.
    let mut g = RamGuest::sparse();
    s.install(&mut g, 0x10_0000);
    let mut u = OrcUnwinder::new(kernel_table(), None);
    let w = u.unwind(&mut g, Start::Sleeping { saved_sp: sp }, &[S..S + SIZE]);
    assert!(w.unreliable.unwrap().contains("outside kernel text"));
    // A view with the patch's table (as a transaction makes from the registry);
    // the unwinder it was made from is unchanged.
    let view = u.with_extra(vec![OrcTable::new("patch p1", ARENA, ARENA + 0x1000, vec![(ARENA, call(8)), (ARENA + 4, call(FD + 8))])]);
    assert_eq!(view.extra().iter().map(|t| t.name.clone()).collect::<Vec<_>>(), vec!["patch p1".to_string()]);
    let w = view.unwind(&mut g, Start::Sleeping { saved_sp: sp }, &[S..S + SIZE]);
    assert_eq!(w.unreliable, None);
    assert_eq!(ips(&w.frames), vec![RET_S, ARENA + 0x40, RET_E]);
    assert!(u.unwind(&mut g, Start::Sleeping { saved_sp: sp }, &[S..S + SIZE]).unreliable.is_some());
    // Fixed tables (modules) the same way, owned.
    u.add_table(OrcTable::new("module m", ARENA, ARENA + 0x1000, vec![(ARENA, call(8)), (ARENA + 4, call(FD + 8))]));
    assert_eq!(u.unwind(&mut g, Start::Sleeping { saved_sp: sp }, &[S..S + SIZE]).unreliable, None);
    u.remove_table("module m");
    assert!(u.unwind(&mut g, Start::Sleeping { saved_sp: sp }, &[S..S + SIZE]).unreliable.is_some());
}

#[test]
pub(crate) fn orc_rows_of_an_object_follow_its_relocations() {
    use object::write::{Object, Relocation, StandardSection, Symbol, SymbolSection};
    use object::{Architecture, BinaryFormat, Endianness, RelocationFlags, SymbolFlags, SymbolKind, SymbolScope};
    let mut o = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = o.section_id(StandardSection::Text);
    o.append_section_data(text, &[0x90; 0x40], 16);
    let f = o.add_symbol(Symbol {
        name: b"new_fn".to_vec(),
        value: 0x10,
        size: 0x30,
        kind: SymbolKind::Text,
        scope: SymbolScope::Linkage,
        weak: false,
        section: SymbolSection::Section(text),
        flags: SymbolFlags::None,
    });
    let ip = o.add_section(Vec::new(), b".orc_unwind_ip".to_vec(), object::SectionKind::ReadOnlyData);
    let un = o.add_section(Vec::new(), b".orc_unwind".to_vec(), object::SectionKind::ReadOnlyData);
    o.append_section_data(ip, &[0; 8], 4);
    let entries: Vec<u8> = [call(8), call(24)].iter().flat_map(|e| e.to_bytes()).collect();
    o.append_section_data(un, &entries, 1);
    for (slot, addend) in [(0u64, 0i64), (4, 5)] {
        o.add_relocation(ip, Relocation { offset: slot, symbol: f, addend, flags: RelocationFlags::Elf { r_type: object::elf::R_X86_64_PC32 } }).unwrap();
    }
    let bytes = o.write().unwrap();
    let file = object::read::elf::ElfFile64::<Endianness>::parse(&bytes[..]).unwrap();
    let text_index = object::Object::section_by_name(&file, ".text").map(|s| object::ObjectSection::index(&s)).unwrap();
    let rows = super::orc_object::orc_rows(&bytes, |i| (i == text_index).then_some(0xffff_ffff_c000_1000)).unwrap();
    assert_eq!(rows, vec![(0xffff_ffff_c000_1010, call(8)), (0xffff_ffff_c000_1015, call(24))]);
    // Not placed: nothing; no ORC sections at all: nothing.
    assert!(super::orc_object::orc_rows(&bytes, |_| None).unwrap().is_empty());
}

