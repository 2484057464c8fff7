//! Tests of the Linux layer on synthetic tables and, when present, on the
//! Debian kernel image built by images/debian-kernels.sh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::kallsyms::Kallsyms;
use super::testutil::{kallsyms_blob, sample_syms};

const TEXT: u64 = 0xffff_ffff_8320_0000;

#[test]
fn kallsyms_located_and_decoded_with_and_without_seqs() {
    for seqs in [false, true] {
        let syms = sample_syms(TEXT);
        let base = 0xffff_ffff_8400_0000u64;
        let (blob, rb) = kallsyms_blob(&syms, base, 4096 + 8, seqs);
        let k = Kallsyms::locate_in(&blob, base).unwrap();
        assert_eq!(k.len(), syms.len());
        assert_eq!(k.tables.relative_base, rb);
        assert_eq!(k.tables.seqs_of_names.is_some(), seqs);
        for (i, (kind, name, addr, _)) in syms.iter().enumerate() {
            let s = &k.symbols()[i];
            assert_eq!((s.kind, &s.name, s.addr), (*kind, name, *addr), "symbol {i}");
        }
        // Duplicates, with positions.
        let d = k.lookup_all("__dup_local");
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|(_, s)| s.kind == 't'));
        assert_eq!(k.addr_of("__dup_local"), None);
        assert_eq!(k.addr_of("_text"), Some(TEXT));
        // Two-byte length name.
        assert_eq!(k.lookup_all(&"x".repeat(200)).len(), 1);
        // By address: aliases resolve to the first, sizes to the next address.
        let h = k.lookup_addr(TEXT + 0x10).unwrap();
        assert_eq!((h.symbol.name.as_str(), h.offset, h.size), ("_text", 0x10, Some(0x100)));
        let f1 = k.lookup_all("func_1")[0].1.addr;
        let h = k.lookup_addr(f1 + 3).unwrap();
        assert_eq!((h.symbol.name.as_str(), h.offset, h.size), ("func_1", 3, Some(0x50)));
        // Per-CPU offsets resolve to absolute symbols, kernel addresses never do.
        assert_eq!(k.lookup_addr(0x1fb80).unwrap().symbol.name, "current_task");
        assert!(k.lookup_addr(TEXT - 0x1000).is_none());
    }
}

#[test]
fn kallsyms_rejects_corrupted_tables() {
    let syms = sample_syms(TEXT);
    let base = 0xffff_ffff_8400_0000u64;
    let (mut blob, _) = kallsyms_blob(&syms, base, 64, true);
    // Break one token-index entry: the tables no longer validate.
    let n = blob.len();
    blob[n - 64 - 2] ^= 0x40;
    let e = Kallsyms::locate_in(&blob, base).unwrap_err();
    assert_eq!(e.cause(), "kallsyms_not_found");
}

#[test]
fn debian_images_offline() {
    // amd64 is XZ-compressed, cloud-amd64 LZ4.
    for flavour in ["amd64", "cloud-amd64"] {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/images/debian-{flavour}/vmlinuz"));
        if !root.exists() {
            eprintln!("SKIPPED debian_images_offline ({flavour}): {} missing (run images/debian-kernels.sh)", root.display());
            continue;
        }
        debian_image_offline(&root);
    }
}

fn debian_image_offline(root: &std::path::Path) {
    let mut img = super::image::ImageMemory::open(root).unwrap();
    let info = super::kernel::open_image(&mut img).unwrap();
    let k = &info.kallsyms;
    assert!(k.len() > 50_000);
    assert_eq!(k.addr_of("_text"), Some(super::layout::DEFAULT_TEXT_LINK));
    assert!(info.banner.as_deref().unwrap().starts_with("Linux version 6.1"));
    assert_eq!(info.build_id.as_ref().unwrap().len(), 20);
    let (btf, _, _) = info.btf.as_ref().unwrap();
    let off = super::tasks::TaskOffsets::from_btf(btf).unwrap();
    assert!(off.task_size > 4096 && off.cpu < 64 && off.thread_sp > off.tasks);
    let orc = info.orc.as_ref().unwrap();
    assert!(orc.ip_entries > 10_000 && orc.ip_entries == orc.unwind_entries);
}

mod btf_and_tasks {
    use super::super::btf::Btf;
    use super::super::tasks::{self, TaskOffsets};
    use super::super::testutil::{task_btf, task_layout as t};
    use crate::model::mem::BufferMemory;

    #[test]
    fn btf_members_by_path() {
        let btf = Btf::parse(&task_btf()).unwrap();
        let ts = btf.find_struct("task_struct").unwrap();
        assert_eq!(btf.member(ts, "thread.sp").unwrap().offset, 152);
        assert_eq!(btf.member(ts, "thread_info.cpu").unwrap().offset, 8);
        // Inside an anonymous union.
        let st = btf.member(ts, "__state").unwrap();
        assert_eq!((st.offset, st.size), (24, Some(4)));
        assert_eq!(btf.member(ts, "comm").unwrap().size, Some(16));
        assert!(btf.member(ts, "nope").is_none());
        assert_eq!(btf.size_of(ts), Some(256));
        let td = btf.get(btf.len() as u32 - 1).unwrap();
        assert_eq!(btf.size_of(td.size_or_type), Some(256));
        let lay = btf.layout(ts);
        assert!(lay.iter().any(|(n, o, _, ty)| n == "state_alias" && *o == 24 && ty == "int"));
        assert!(lay.iter().any(|(n, _, _, ty)| n == "comm" && ty == "char[16]"));
        assert!(lay.iter().any(|(n, _, _, ty)| n == "signal" && ty == "struct signal_struct *"));
        let bits = btf.find_struct("bits").unwrap();
        let b = btf.member(bits, "b").unwrap();
        assert_eq!(b.bit_offset, 3);
        assert!(btf.layout(bits).iter().any(|(n, _, _, ty)| n == "b" && ty.ends_with(": 5")));
        assert_eq!(Btf::parse(b"\x9f\xeb\x02\x00").unwrap_err().cause(), "btf_header");
    }

    /// A memory image with tasks at `base + i * SIZE`, signal structs after them.
    struct World {
        mem: BufferMemory,
        base: u64,
        n: usize,
    }

    impl World {
        fn task(&self, i: usize) -> u64 {
            self.base + i as u64 * t::SIZE
        }
        fn signal(&self, i: usize) -> u64 {
            self.base + self.n as u64 * t::SIZE + i as u64 * 64
        }
        fn w64(&mut self, a: u64, v: u64) {
            let o = (a - self.mem.base) as usize;
            self.mem.data[o..o + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn w32(&mut self, a: u64, v: u32) {
            let o = (a - self.mem.base) as usize;
            self.mem.data[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        /// Link `nodes` (addresses of list_heads) into a circular list.
        fn link(&mut self, nodes: &[u64]) {
            for (i, &n) in nodes.iter().enumerate() {
                let next = nodes[(i + 1) % nodes.len()];
                let prev = nodes[(i + nodes.len() - 1) % nodes.len()];
                self.w64(n, next);
                self.w64(n + 8, prev);
            }
        }
    }

    /// Processes: 0 (init_task, one thread), 1 (threads 1, 2, 3), 4 (thread 4).
    fn world() -> World {
        let base = 0xffff_8880_0010_0000u64;
        let n = 5;
        let mut w = World { mem: BufferMemory { base, data: vec![0; 0x10000] }, base, n };
        let groups: [(usize, &[usize]); 3] = [(0, &[0]), (1, &[1, 2, 3]), (4, &[4])];
        let procs: Vec<u64> = groups.iter().map(|(l, _)| w.task(*l) + t::TASKS).collect();
        w.link(&procs);
        for (gi, (_, threads)) in groups.iter().enumerate() {
            let sig = w.signal(gi);
            let mut nodes = vec![sig + t::SIG_THREAD_HEAD];
            nodes.extend(threads.iter().map(|&i| w.task(i) + t::THREAD_NODE));
            w.link(&nodes);
            for &i in threads.iter() {
                let a = w.task(i);
                w.w64(a + t::SIGNAL, sig);
                w.w32(a + t::PID, i as u32 * 10);
                w.w32(a + t::TGID, groups[gi].0 as u32 * 10);
                w.w32(a + t::STATE, if i == 2 { 0 } else { 1 });
                w.w32(a + t::CPU, (i % 2) as u32);
                w.w64(a + t::STACK, 0xffff_c900_0000_0000 + i as u64 * 0x4000);
                w.w64(a + t::THREAD_SP, 0xffff_c900_0000_3f00 + i as u64 * 0x4000);
                let comm = format!("task{i}");
                let o = (a + t::COMM - base) as usize;
                w.mem.data[o..o + comm.len()].copy_from_slice(comm.as_bytes());
            }
        }
        w
    }

    #[test]
    fn task_walk_lists_every_thread() {
        let btf = Btf::parse(&task_btf()).unwrap();
        let off = TaskOffsets::from_btf(&btf).unwrap();
        assert_eq!((off.thread_sp, off.cpu, off.state, off.signal_thread_head), (t::THREAD_SP, t::CPU, t::STATE, 8));
        let mut w = world();
        let init = w.task(0);
        let list = tasks::walk_tasks(&mut w.mem, &off, init).unwrap();
        let pids: Vec<(i32, i32)> = list.iter().map(|x| (x.pid, x.tgid)).collect();
        assert_eq!(pids, vec![(0, 0), (10, 10), (20, 10), (30, 10), (40, 40)]);
        let t2 = &list[2];
        assert_eq!((t2.comm.as_str(), t2.state_char(), t2.cpu), ("task2", 'R', 0));
        assert_eq!(t2.stack_end() - t2.stack, 16384);
        assert_eq!(t2.sp, 0xffff_c900_0000_3f00 + 2 * 0x4000);
    }

    #[test]
    fn task_walk_refuses_lists_caught_mid_update() {
        let btf = Btf::parse(&task_btf()).unwrap();
        let off = TaskOffsets::from_btf(&btf).unwrap();
        // A prev pointer that disagrees with next.
        let mut w = world();
        let a = w.task(2) + t::THREAD_NODE + 8;
        w.w64(a, 0xdead_0000);
        let init = w.task(0);
        let e = tasks::walk_tasks(&mut w.mem, &off, init).unwrap_err();
        assert_eq!(e.cause(), "list_inconsistent");
        // A loop that never returns to the head.
        let mut w = world();
        let n1 = w.task(1) + t::TASKS;
        let n4 = w.task(4) + t::TASKS;
        w.link(&[n1, n4]);
        let e = tasks::walk_tasks(&mut w.mem, &off, init).unwrap_err();
        assert_eq!(e.cause(), "list_inconsistent");
    }

    /// Records the prefetches; reads through to the buffer.
    struct Prefetches(BufferMemory, Vec<u64>);
    impl crate::model::mem::KernelMemory for Prefetches {
        fn read(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), crate::model::mem::MemError> {
            self.0.read(vaddr, buf)
        }
        fn prefetch(&mut self, vaddr: u64, _len: usize) {
            self.1.push(vaddr);
        }
    }

    #[test]
    fn the_trail_prefetches_the_known_threads_and_never_changes_the_walk() {
        let btf = Btf::parse(&task_btf()).unwrap();
        let off = TaskOffsets::from_btf(&btf).unwrap();
        let walk = |w: &World, trail: &mut tasks::Trail| {
            let mut m = Prefetches(w.mem.clone(), Vec::new());
            let list = tasks::walk_tasks_trailed(&mut m, &off, w.task(0), &mut tasks::WalkBudget::standard(), trail).unwrap();
            let nodes: Vec<u64> = m.1.into_iter().filter(|a| (a - w.task(0)) % t::SIZE == t::THREAD_NODE).collect();
            (list, nodes)
        };
        let w = world();
        let mut trail = tasks::Trail::default();
        let (first, hinted) = walk(&w, &mut trail);
        assert!(hinted.is_empty(), "nothing to guess from yet: {hinted:x?}");
        assert_eq!(trail.len(), 5);
        // Nothing changed: the walk prefetches every thread node it then
        // follows (a short list's look-ahead runs into the next lists':
        // the same nodes again, later), and returns the same list.
        let (again, hinted) = walk(&w, &mut trail);
        assert_eq!(again, first);
        let mut want: Vec<u64> = (0..5).map(|i| w.task(i) + t::THREAD_NODE).collect();
        let mut got = hinted.clone();
        got.sort_unstable();
        got.dedup();
        want.sort_unstable();
        assert_eq!(got, want);
        // A thread gone (task 2 unlinked from its process): the stale trail
        // only guessed wrong; the walk finds exactly the lists as they are.
        let mut gone = world();
        let head = gone.signal(1) + 8;
        gone.link(&[head, gone.task(1) + t::THREAD_NODE, gone.task(3) + t::THREAD_NODE]);
        let fresh = tasks::walk_tasks(&mut gone.mem.clone(), &off, gone.task(0)).unwrap();
        let (stale, _) = walk(&gone, &mut trail);
        assert_eq!(stale, fresh);
        assert_eq!(stale.iter().map(|x| x.pid).collect::<Vec<_>>(), vec![0, 10, 30, 40]);
        assert_eq!(trail.len(), 4, "the trail follows the last walk");
        // And back (a thread added to the trail's list): found as well.
        let (back, _) = walk(&w, &mut trail);
        assert_eq!(back, first);
    }

    #[test]
    fn task_walk_is_bounded_in_nodes_and_time_over_all_its_lists() {
        use std::time::Duration;
        use tasks::WalkBudget;
        let btf = Btf::parse(&task_btf()).unwrap();
        let off = TaskOffsets::from_btf(&btf).unwrap();
        let mut w = world();
        let init = w.task(0);
        // 3 steps on the process list, 2 + 4 + 2 on the thread lists.
        let long = Duration::from_secs(3600);
        assert_eq!(tasks::walk_tasks_in(&mut w.mem, &off, init, &mut WalkBudget::new(11, long)).unwrap().len(), 5);
        let e = tasks::walk_tasks_in(&mut w.mem, &off, init, &mut WalkBudget::new(10, long)).unwrap_err();
        assert_eq!(e.cause(), "list_too_long", "{e}");
        // The budget is shared: the process list alone fits in 3.
        let e = tasks::walk_tasks_in(&mut w.mem, &off, init, &mut WalkBudget::new(4, long)).unwrap_err();
        assert!(matches!(e, tasks::TaskError::TooLong { list: "thread", .. }), "{e}");
        let e = tasks::walk_tasks_in(&mut w.mem, &off, init, &mut WalkBudget::new(11, Duration::ZERO)).unwrap_err();
        assert_eq!(e.cause(), "walk_time_bound", "{e}");
    }

    #[test]
    fn hostile_task_pointers_are_memory_errors_never_panics() {
        let btf = Btf::parse(&task_btf()).unwrap();
        let off = TaskOffsets::from_btf(&btf).unwrap();
        for bad in [0xdead_beef_0000u64, u64::MAX - 3, 0] {
            // A signal pointer into unmapped space (or where adding the
            // member offset wraps).
            let mut w = world();
            let a = w.task(1) + t::SIGNAL;
            w.w64(a, bad);
            let init = w.task(0);
            match tasks::walk_tasks(&mut w.mem, &off, init) {
                Err(e) => assert!(["memory", "list_inconsistent"].contains(&e.cause()), "{bad:#x}: {e}"),
                // NULL: a leader being reaped, counted alone.
                Ok(l) => assert!(bad == 0 && l.len() == 3, "{bad:#x}: {l:?}"),
            }
            // A next pointer that wraps the address space.
            let mut w = world();
            let a = w.task(4) + t::TASKS;
            w.w64(a, bad);
            let e = tasks::walk_tasks(&mut w.mem, &off, init).unwrap_err();
            assert!(["memory", "list_inconsistent"].contains(&e.cause()), "{bad:#x}: {e}");
        }
    }
}

mod live_synthetic {
    use super::super::kernel::LiveKernel;
    use super::super::layout::DEFAULT_TEXT_LINK;
    use super::super::testutil::{kallsyms_blob, sample_syms};
    use crate::model::backend::VcpuState;
    use crate::testing::RamGuest;

    const TEXT: u64 = 0xffff_ffff_8320_0000;
    const PHYS_TEXT: u64 = 0x20_0000;

    fn idx(va: u64, level: u32) -> u64 {
        (va >> (12 + 9 * (level - 1))) & 511
    }

    /// Text: one 2 MiB RX page; rodata after it in 4 KiB NX read-only pages
    /// holding kallsyms whose `_text` is `ks_text`.
    fn guest(ks_text: u64) -> (RamGuest, Vec<VcpuState>) {
        let mut g = RamGuest::new(0x100_0000);
        let (pml4, pdpt, pd, pt) = (0x1000, 0x2000, 0x3000, 0x4000);
        g.set_entry(pml4, idx(TEXT, 4), pdpt | 3);
        g.set_entry(pdpt, idx(TEXT, 3), pd | 3);
        g.set_entry(pd, idx(TEXT, 2), PHYS_TEXT | 0x83);
        let ro = TEXT + 0x20_0000;
        g.set_entry(pd, idx(ro, 2), pt | 3);
        let (blob, _) = kallsyms_blob(&sample_syms(ks_text), ro, 256, true);
        let pages = blob.len().div_ceil(4096);
        let ro_phys = 0x40_0000u64;
        for i in 0..pages as u64 {
            g.set_entry(pt, i, (ro_phys + i * 4096) | 1 | (1 << 63));
        }
        g.put(ro_phys, &blob);
        let v = VcpuState { cr3: pml4, cr0: 0x8005_0033, efer: 0xd01, cs: 0x10, ..VcpuState::default() };
        (g, vec![v])
    }

    #[test]
    fn slide_agrees_and_physical_base_is_reported() {
        let (mut g, vcpus) = guest(TEXT);
        let lk = LiveKernel::open(&mut g, vcpus, None).unwrap();
        let s = lk.info.slide.clone().unwrap();
        assert_eq!((s.text, s.virt, s.phys_base), (TEXT, TEXT - DEFAULT_TEXT_LINK, PHYS_TEXT));
        assert_eq!(lk.info.kallsyms.addr_of("func_3").map(|a| a > TEXT), Some(true));
        assert_eq!(lk.map.rodata().map(|r| r.0), Some(TEXT + 0x20_0000));
    }

    #[test]
    fn slide_disagreement_is_an_error() {
        let (mut g, vcpus) = guest(TEXT + 0x20_0000);
        let e = LiveKernel::open(&mut g, vcpus, None).unwrap_err();
        assert_eq!(e.cause(), "slide_mismatch");
    }

    #[test]
    fn real_mode_guest_is_refused() {
        let (mut g, mut vcpus) = guest(TEXT);
        vcpus[0].efer = 0;
        assert_eq!(LiveKernel::open(&mut g, vcpus, None).unwrap_err().cause(), "not_long_mode");
    }
}

mod notes {
    use super::super::notes;

    #[test]
    fn build_id_from_notes_and_by_scan() {
        let mut n = Vec::new();
        // A non-GNU note first, then the build-id.
        for w in [6u32, 4, 1] {
            n.extend_from_slice(&w.to_le_bytes());
        }
        n.extend_from_slice(b"Linux\0\0\0");
        n.extend_from_slice(&[1, 2, 3, 4]);
        for w in [4u32, 20, 3] {
            n.extend_from_slice(&w.to_le_bytes());
        }
        n.extend_from_slice(b"GNU\0");
        n.extend((0..20u8).map(|i| i * 3));
        let id = notes::build_id_from_notes(&n).unwrap();
        assert_eq!(notes::hex(&id), "00030609 0c0f1215181b1e2124272a2d303336 39".replace(' ', ""));
        let mut padded = vec![0xaau8; 12];
        padded.extend_from_slice(&n);
        assert_eq!(notes::scan_build_id(&padded), Some(id));
        let (at, b) = notes::scan_banner(b"xx\0Linux version 6.1.0 (x)\n\0").unwrap();
        assert_eq!((at, b.as_str()), (3, "Linux version 6.1.0 (x)"));
    }
}
