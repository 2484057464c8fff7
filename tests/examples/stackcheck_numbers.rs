//! Numbers for issue 5: safety-check time against the number of sleeping
//! threads in a Debian guest under QEMU (TCG, read over its gdbstub), with
//! the task list from the agent or the agentless walk, and the check
//! conservative or ORC. Every measurement starts with cold caches, the
//! guest stopped; bytes are what was read from the guest.
//!
//! `cargo run --release -p vsplice-tests --example stackcheck_numbers -- [amd64|cloud-amd64] [N ...]`
//! (default: amd64 100 1000 10000; needs images/debian-kernels.sh first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use vsplice_patcher::arena::registry::CheckRange;
use vsplice_patcher::model::backend::Backend;
use vsplice_patcher::gdb::GdbOptions;
use vsplice_patcher::os::linux::kernel::LiveKernel;
use vsplice_patcher::model::CheckMode;
use vsplice_patcher::safety::{self, CheckInput};
use vsplice_patcher::os::linux::view::{self, AgentHint, TaskSource};
use vsplice_patcher::model::mem::{KernelMemory, MemError};
use vsplice_patcher::model::SymbolTable;
use vsplice_tests::debian::Flavour;
use vsplice_tests::qemu::{Guest, QemuConfig};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Every page read once from the guest, kept: a second run over it costs
/// what the work costs at memory speed (as in the in-process VMM, which
/// reads guest memory through its own mapping).
struct Snapshot<'a> {
    inner: &'a mut dyn KernelMemory,
    pages: HashMap<u64, Vec<u8>>,
}

impl KernelMemory for Snapshot<'_> {
    fn read(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let mut done = 0;
        while done < buf.len() {
            let va = vaddr.wrapping_add(done as u64);
            let page = va & !0xfff;
            if !self.pages.contains_key(&page) {
                let p = self.inner.read_vec(page, 4096)?;
                self.pages.insert(page, p);
            }
            let off = (va & 0xfff) as usize;
            let n = (4096 - off).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.pages[&page][off..off + n]);
            done += n;
        }
        Ok(())
    }
}

/// Runs `f` with cold caches; returns its time, the bytes it read, and its result.
fn measure<T>(lk: &mut LiveKernel<vsplice_patcher::gdb::GdbBackend>, f: impl FnOnce(&mut LiveKernel<vsplice_patcher::gdb::GdbBackend>) -> T) -> (Duration, u64, T) {
    lk.vm.flush();
    let b0 = lk.vm.bytes_read;
    let t = Instant::now();
    let r = f(lk);
    (t.elapsed(), lk.vm.bytes_read - b0, r)
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let flavour = match args.peek().map(String::as_str) {
        Some("cloud-amd64") => {
            args.next();
            Flavour::CloudAmd64
        }
        Some("amd64") => {
            args.next();
            Flavour::Amd64
        }
        _ => Flavour::Amd64,
    };
    let counts: Vec<usize> = {
        let v: Vec<usize> = args.filter_map(|a| a.parse().ok()).collect();
        if v.is_empty() { vec![100, 1000, 10_000] } else { v }
    };
    let mut cfg = QemuConfig::debian(flavour, "stackcheck-numbers").unwrap();
    cfg.mem_mib = 2048;
    cfg.command_timeout = Duration::from_secs(600);
    let mut g = Guest::boot(cfg).unwrap_or_else(|e| panic!("{e}"));
    let addr = g.gdb_addr().unwrap().to_string();
    let sym = g.run_ok("grep ' cmdline_proc_show$' /proc/kallsyms").unwrap();
    let start = u64::from_str_radix(sym.split_whitespace().next().unwrap(), 16).unwrap();
    let ranges = [CheckRange { start, end: start + 0x40, label: "cmdline_proc_show".into() }];
    let opts = GdbOptions { timeout: Duration::from_secs(60), ..GdbOptions::default() };
    let (be, vcpus) = vsplice_patcher::attach::attach_gdb(&addr, opts).unwrap();
    let mut lk = LiveKernel::open(be, vcpus, None).unwrap();
    let t = Instant::now();
    let u = view::build_unwinder(&mut lk.vm, &lk.info).unwrap();
    eprintln!("ORC tables read in {:.0} ms ({} tables)", ms(t.elapsed()), u.tables().len());
    lk.vm.backend().resume().unwrap();
    println!("{flavour}, QEMU TCG, 2 vCPUs, over the gdbstub; times in ms (MiB read)");
    println!("{:>7} {:>6} | {:>16} {:>16} {:>16} | {:>16} {:>16} {:>9}", "threads", "tasks", "list agent", "list agentless", "list both", "check conserv.", "check orc", "fallbacks");
    let mut last = None;
    for n in counts {
        if let Some(pid) = last.take() {
            g.run_ok(&format!("kill {pid}; sleep 2")).unwrap();
        }
        let t = Instant::now();
        let out = g.run_ok(&format!("mthreads {n} vsplbench >/tmp/mt.log 2>&1 & while ! grep -q ready /tmp/mt.log; do sleep 0.5; done; cat /tmp/mt.log")).unwrap();
        last = out.split_whitespace().nth(1).map(str::to_string);
        eprintln!("{n} threads started in {:.1} s", t.elapsed().as_secs_f64());
        lk.vcpus = lk.vm.backend().stop().unwrap();
        lk.vm.flush();
        let k = lk.info.kallsyms.clone();
        let btf = lk.info.btf.as_ref().map(|b| b.0.clone());
        // Where the agent is (found once; each pause would use the cached address).
        let both = view::read_tasks(&mut lk.vm, &k, btf.as_ref(), None, TaskSource::Agent, None).unwrap();
        let hint = both.agent_at().map(AgentHint::Virt);
        let (t_agent, b_agent, agent) = measure(&mut lk, |lk| view::read_tasks(&mut lk.vm, &k, None, None, TaskSource::Agent, hint).unwrap());
        let (t_walk, b_walk, _) = measure(&mut lk, |lk| view::read_tasks(&mut lk.vm, &k, btf.as_ref(), None, TaskSource::Agentless, None).unwrap());
        let (t_both, b_both, _) = measure(&mut lk, |lk| view::read_tasks(&mut lk.vm, &k, btf.as_ref(), None, TaskSource::Agent, hint).unwrap());
        let vcpus = lk.vcpus.clone();
        let v = view::read_view(&mut lk.vm, &lk.info, &vcpus, TaskSource::Auto, hint).unwrap();
        let tl = v.task_list();
        let syms = SymbolTable::new(Vec::new());
        let input = CheckInput { vcpus: &vcpus, vcpu_cpus: &v.vcpu_cpus, tasks: &tl };
        let (t_cons, b_cons, cons) = measure(&mut lk, |lk| safety::check(CheckMode::Conservative, Some(&u), &mut lk.vm, &syms, input, &ranges).unwrap());
        let (t_orc, b_orc, orc) = measure(&mut lk, |lk| safety::check(CheckMode::Orc, Some(&u), &mut lk.vm, &syms, input, &ranges).unwrap());
        // The same work again from a snapshot of the pages it read: CPU cost only.
        let mut snap = Snapshot { inner: &mut lk.vm, pages: HashMap::new() };
        let mut cpu = [Duration::MAX; 4];
        for round in 0..3 {
            let t = Instant::now();
            view::read_tasks(&mut snap, &k, None, None, TaskSource::Agent, hint).unwrap();
            let a = t.elapsed();
            let t = Instant::now();
            view::read_tasks(&mut snap, &k, btf.as_ref(), None, TaskSource::Agentless, None).unwrap();
            let w = t.elapsed();
            let t = Instant::now();
            safety::check(CheckMode::Conservative, Some(&u), &mut snap, &syms, input, &ranges).unwrap();
            let c = t.elapsed();
            let t = Instant::now();
            safety::check(CheckMode::Orc, Some(&u), &mut snap, &syms, input, &ranges).unwrap();
            let o = t.elapsed();
            if round > 0 {
                for (m, d) in cpu.iter_mut().zip([a, w, c, o]) {
                    *m = (*m).min(d);
                }
            }
        }
        lk.vm.backend().resume().unwrap();
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        println!(
            "{n:>7} {:>6} | {:>8.0} ({:>5.1}) {:>8.0} ({:>5.1}) {:>8.0} ({:>5.1}) | {:>8.0} ({:>5.1}) {:>8.0} ({:>5.1}) {:>9}",
            agent.tasks.len(),
            ms(t_agent),
            mib(b_agent),
            ms(t_walk),
            mib(b_walk),
            ms(t_both),
            mib(b_both),
            ms(t_cons),
            mib(b_cons),
            ms(t_orc),
            mib(b_orc),
            orc.1.fallbacks.len()
        );
        println!(
            "{:>7} {:>6} | {:>8.1} {:>7} {:>8.1} {:>7} {:>16} | {:>8.1} {:>7} {:>8.1} {:>7}   (from memory)",
            "", "", ms(cpu[0]), "", ms(cpu[1]), "", "", ms(cpu[2]), "", ms(cpu[3]), ""
        );
        eprintln!("  conservative: {} stacks, {} conflicts; orc: {} unwound, {} scanned, {} conflicts", cons.1.scanned, cons.0.len(), orc.1.unwound, orc.1.scanned, orc.0.len());
    }
    lk.vm.into_backend().detach().unwrap();
}
