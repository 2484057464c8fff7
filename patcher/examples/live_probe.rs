//! Attach to a gdbstub, identify the kernel and walk its tasks, with timings
//! (development aid; `vsplice inspect` is the real tool).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::Instant;
use vsplice_patcher::model::backend::Backend;
use vsplice_patcher::gdb::{GdbBackend, GdbOptions};
use vsplice_patcher::os::linux::kernel::LiveKernel;
use vsplice_patcher::os::linux::tasks;
use vsplice_patcher::model::mem::KernelMemory;

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:1234".into());
    let t = Instant::now();
    let c = vsplice_patcher::gdb::GdbClient::connect(&addr, GdbOptions::default()).unwrap();
    println!("features {:?}", c.features);
    let mut be = GdbBackend::with_client(c).unwrap();
    let vcpus = be.stop().unwrap();
    println!("attach+stop {:?}; vcpus: {:#x?}", t.elapsed(), vcpus.iter().map(|v| (v.rip, v.cs, v.cr3, v.cr4, v.gs_base, v.kernel_gs_base)).collect::<Vec<_>>());
    // Raw physical throughput.
    let mut buf = vec![0u8; 8 << 20];
    let t = Instant::now();
    be.read_phys(0x100_0000, &mut buf).unwrap();
    let dt = t.elapsed();
    println!("phys read 8 MiB in {:?} = {:.1} MiB/s", dt, 8.0 / dt.as_secs_f64());
    let t = Instant::now();
    let mut lk = LiveKernel::open(&mut be, vcpus.clone(), None).unwrap();
    println!("identify {:?}: timings {:?}", t.elapsed(), lk.info.timings);
    println!("slide {:#x?} banner {:?} syms {} btf {:?} orc {:#x?}", lk.info.slide, lk.info.banner, lk.info.kallsyms.len(), lk.info.btf.as_ref().map(|b| (b.0.len(), b.1, b.2)), lk.info.orc);
    let btf = &lk.info.btf.as_ref().unwrap().0;
    let off = tasks::TaskOffsets::from_btf(btf).unwrap();
    println!("offsets {off:?}");
    let init = lk.info.kallsyms.first_addr("init_task").unwrap();
    let t = Instant::now();
    let ts = tasks::walk_tasks(&mut lk.vm, &off, init).unwrap();
    println!("task walk {:?}: {} tasks", t.elapsed(), ts.len());
    for x in ts.iter().take(100) {
        println!("{:6} {:6} {:16} {} cpu{} oncpu={} stack={:#x} sp={:#x}", x.pid, x.tgid, x.comm, x.state_char(), x.cpu, x.on_cpu, x.stack, x.sp);
    }
    let cur = tasks::current_tasks(&mut lk.vm, &lk.info.kallsyms, &vcpus).unwrap();
    for (v, c, task) in cur {
        let pid = lk.vm.read_i32(task + off.pid).unwrap();
        println!("vcpu{v} cpu{c} current {task:#x} pid {pid}");
    }
    // Page-walk throughput.
    let cr3 = vcpus[0].cr3;
    let cr4 = vcpus[0].cr4;
    let mut w = vsplice_patcher::arch::x86::paging::PageWalker::new(cr3, cr4);
    drop(lk);
    let t = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    w.walk_range(&mut be, 0xffff_8000_0000_0000, u64::MAX, &mut |m| {
        n += 1;
        bytes += m.size;
        true
    })
    .unwrap();
    let dt = t.elapsed();
    println!("walk_range kernel half (cold): {n} mappings, {} MiB mapped, {} tables read, {:?}", bytes >> 20, w.table_reads, dt);
    // Translate every 4 KiB page of the vmemmap/vmalloc stacks: cold then warm.
    let stacks: Vec<u64> = ts.iter().map(|t| t.stack).collect();
    let mut w2 = vsplice_patcher::arch::x86::paging::PageWalker::new(cr3, cr4);
    for pass in ["cold", "warm"] {
        let t = Instant::now();
        let mut k = 0u64;
        for &s in &stacks {
            for p in 0..4u64 {
                let _ = w2.translate(&mut be, s + p * 4096);
                k += 1;
            }
        }
        let dt = t.elapsed();
        println!("translate {k} stack pages ({pass}): {:?} = {:.0} translations/s, tables read so far {}", dt, k as f64 / dt.as_secs_f64(), w2.table_reads);
    }
    be.detach().unwrap();
}
