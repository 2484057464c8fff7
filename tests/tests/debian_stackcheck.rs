//! Issue 5, precise stack checking, end to end on both Debian flavours
//! under QEMU (the guest stopped through its gdbstub):
//!
//! - the ORC unwinder, run from outside on every sleeping task, gives the
//!   same frames as the guest's own unwinder (`/proc/<pid>/stack`), module
//!   code included (ORC tables of loaded modules): per task, every one
//!   whose frames differ must have moved (its `/proc` stack changed between
//!   the dumps taken before and after the stop);
//! - `vsplice_stale.ko` leaves a stale address of `vsplice_stale_target` in
//!   a live local of a sleeping kernel thread: the conservative scan reports
//!   a conflict naming that thread, the ORC check does not (and unwound that
//!   stack rather than falling back); a thread really sleeping inside
//!   `vsplice_stale_inside` is a conflict for both;
//! - the same with the agentless task list, and the share of stacks the ORC
//!   check had to scan instead (with the reasons) stays small.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agentlive;

use std::collections::BTreeMap;
use std::time::Duration;

use agentlive::Live;
use vsplice_patcher::arena::registry::CheckRange;
use vsplice_patcher::os::linux::modules::{self, ModuleOffsets};
use vsplice_patcher::model::{CheckMode, CheckSummary};
use vsplice_patcher::safety::{self, CheckInput};
use vsplice_patcher::os::linux::unwind::{OrcUnwinder, Start, PT_REGS_SIZE};
use vsplice_patcher::os::linux::view::{self, LinuxView, TaskSource};
use vsplice_patcher::model::{SymbolTable, TaskList};
use vsplice_patcher::txn::Conflict;
use vsplice_tests::checks::{check, ensure};
use vsplice_tests::debian::Flavour;
use vsplice_tests::qemu::Guest;
use vsplice_tests::testguest::vm_lock;

/// `[<0>] name+0xoff/0xsize [module]` lines per tid, reduced to `name+0xoff`.
fn parse_proc_stacks(text: &str) -> BTreeMap<i32, Vec<String>> {
    let mut out: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut cur = None;
    for l in text.lines() {
        if let Some(t) = l.strip_prefix("== ") {
            cur = t.trim().parse().ok();
            if let Some(c) = cur {
                out.entry(c).or_default();
            }
        } else if let (Some(c), Some(f)) = (cur, l.split_whitespace().nth(1)) {
            out.entry(c).or_default().push(f.split('/').next().unwrap_or(f).to_string());
        }
    }
    out
}

/// Every task's `/proc/<pid>/stack`, after the pids of the dumping shell
/// and its ancestors (`observer N`: the harness's command path, pid 1
/// included, whose stacks always show them running this very dump).
const DUMP_STACKS: &str = "o=$$; while [ \"$o\" -gt 0 ]; do echo \"observer $o\"; n=0; while read k v; do [ \"$k\" = PPid: ] && n=$v; done </proc/$o/status; o=$n; done; \
     for p in /proc/[0-9]*/task/[0-9]*; do echo \"== ${p##*/}\"; cat $p/stack 2>/dev/null; done";

/// The `observer N` pids of a [`DUMP_STACKS`] output.
fn parse_observers(text: &str) -> std::collections::BTreeSet<i32> {
    text.lines().filter_map(|l| l.strip_prefix("observer ")?.trim().parse().ok()).collect()
}

/// A module's name, text range and sorted text symbols.
type ModuleText = (String, u64, u64, Vec<(String, u64)>);

/// `name+0xoff` the way %pB prints a return address (looked up at ip-1).
struct Symbolizer {
    modules: Vec<ModuleText>,
}

impl Symbolizer {
    fn new(live: &mut Live) -> Self {
        let btf = &live.lk.info.btf.as_ref().unwrap().0;
        let off = ModuleOffsets::from_btf(btf).unwrap();
        let mods = modules::list_modules(&mut live.lk.vm, &live.lk.info.kallsyms, &off).unwrap();
        let mut out = Vec::new();
        for m in mods {
            let mut syms: Vec<(String, u64)> =
                modules::module_symbols(&mut live.lk.vm, &m, 1 << 16).unwrap().into_iter().filter(|s| matches!(s.2, 't' | 'T')).map(|s| (s.0, s.1)).collect();
            syms.sort_by_key(|s| s.1);
            out.push((m.name.clone(), m.base, m.base + m.text_size, syms));
        }
        Self { modules: out }
    }

    fn name(&self, live: &Live, ip: u64, signal: bool) -> String {
        let at = if signal { ip } else { ip - 1 };
        if let Some((_, _, _, syms)) = self.modules.iter().find(|(_, lo, hi, _)| at >= *lo && at < *hi) {
            let i = syms.partition_point(|s| s.1 <= at);
            if i > 0 {
                return format!("{}+{:#x}", syms[i - 1].0, ip - syms[i - 1].1);
            }
        }
        match live.lk.info.kallsyms.lookup_addr(at) {
            Some(h) => format!("{}+{:#x}", h.symbol.name, ip - h.symbol.addr),
            None => format!("{ip:#x}"),
        }
    }
}

fn ranges_of(kallsyms: &str, name: &str) -> Vec<CheckRange> {
    let mut mine: Vec<(u64, String)> = kallsyms
        .lines()
        .filter(|l| l.ends_with("[vsplice_stale]"))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((u64::from_str_radix(it.next()?, 16).ok()?, it.nth(1)?.to_string()))
        })
        .collect();
    mine.sort();
    let i = mine.iter().position(|(_, n)| n == name).unwrap_or_else(|| panic!("{name} not in /proc/kallsyms"));
    let end = mine.get(i + 1).map(|m| m.0).unwrap_or(mine[i].0 + 0x40);
    vec![CheckRange { start: mine[i].0, end, label: name.to_string() }]
}

fn run_check(live: &mut Live, mode: CheckMode, u: &OrcUnwinder, v: &LinuxView, tl: &TaskList, ranges: &[CheckRange]) -> (Vec<Conflict>, CheckSummary) {
    let vcpus = live.lk.vcpus.clone();
    let input = CheckInput { vcpus: &vcpus, vcpu_cpus: &v.vcpu_cpus, tasks: tl };
    safety::check(mode, Some(u), &mut live.lk.vm, &SymbolTable::new(Vec::new()), input, ranges).unwrap()
}

/// The ORC check unwinds nearly every stack. A stop that catches a vCPU
/// somewhere the unwind cannot follow (on the stack of a task already off
/// the list, in entry code) scans that vCPU's stacks instead — safe, and
/// rare: such a stop is tried again elsewhere (up to 5 times) before the
/// precision claim fails. The guest is left stopped.
fn few_fallbacks(live: &mut Live, source: TaskSource, u: &OrcUnwinder, target: &[CheckRange], first: CheckSummary) -> Result<(), String> {
    let few = |s: &CheckSummary| s.unwound > 50 && s.scanned * 20 <= s.unwound;
    let vcpu_caused = |s: &CheckSummary| s.fallbacks.iter().all(|f| f.stack.starts_with("vcpu ") || f.reason.contains("on a CPU"));
    let mut sum = first;
    for _ in 0..5 {
        if few(&sum) || !vcpu_caused(&sum) {
            break;
        }
        eprintln!("  stopped at an unusual place ({:?}); stopping elsewhere", sum.fallbacks);
        live.resume()?;
        std::thread::sleep(Duration::from_millis(300));
        live.stop()?;
        let v = live.view_settled(source, None, 20).0.map_err(|e| e.to_string())?;
        let tl = v.task_list();
        sum = run_check(live, CheckMode::Orc, u, &v, &tl, target).1;
    }
    ensure(few(&sum), || format!("{sum:?}"))
}

fn stack_e2e(flavour: Flavour) {
    let _l = vm_lock();
    let Some(mut g) = agentlive::boot(flavour, &format!("stackcheck-{flavour}")) else { return };
    let addr = g.gdb_addr().unwrap().to_string();
    g.run_ok("insmod /modules/extra/vsplice_stale.ko && mthreads 16 vsplmt >/tmp/mt.log 2>&1 & while ! grep -q ready /tmp/mt.log; do sleep 0.1; done; sleep 1").unwrap();
    let pid = |g: &mut Guest, p: &str| -> u64 { g.run_ok(&format!("cat /sys/module/vsplice_stale/parameters/{p}")).unwrap().trim().parse().unwrap() };
    let (stale_pid, inside_pid) = (pid(&mut g, "stale_pid"), pid(&mut g, "inside_pid"));
    let kallsyms = g.run_ok("cat /proc/kallsyms").unwrap();
    let target = ranges_of(&kallsyms, "vsplice_stale_target");
    let inside = ranges_of(&kallsyms, "vsplice_stale_inside");
    let dump = g.run_ok(DUMP_STACKS).unwrap();
    let (before, mut observers) = (parse_proc_stacks(&dump), parse_observers(&dump));

    let mut f = Vec::new();
    let mut live = Live::open(&addr).unwrap();
    let t = std::time::Instant::now();
    let u = view::build_unwinder(&mut live.lk.vm, &live.lk.info).unwrap();
    let entries: usize = u.tables().iter().map(|t| t.ips.len()).sum();
    eprintln!("  ORC: {} tables, {entries} entries, read in {:.2} s", u.tables().len(), t.elapsed().as_secs_f64());
    check(&mut f, "vmlinux ORC with its lookup blocks, and module ORC (vsplice_stale among them)", ensure(
        u.tables()[0].lookup.is_some() && u.tables()[0].ips.len() > 100_000 && u.tables().iter().any(|t| t.name == "module vsplice_stale"),
        || format!("{:?}", u.tables().iter().map(|t| (&t.name, t.ips.len(), t.lookup.is_some())).collect::<Vec<_>>()),
    ));
    let (v, _) = live.view_settled(TaskSource::Auto, None, 20);
    let v = v.unwrap();
    let tl = v.task_list();
    let sym = Symbolizer::new(&mut live);

    // Our unwind of every sleeping task against the guest's own.
    let k = &live.lk.info.kallsyms;
    let skipped: Vec<std::ops::Range<u64>> = [("__sched_text_start", "__sched_text_end"), ("__lock_text_start", "__lock_text_end")]
        .iter()
        .filter_map(|(a, b)| Some(k.first_addr(a)?..k.first_addr(b)?))
        .collect();
    // Per task: pid -> (ours, theirs, why unreliable) for every task whose frames differ.
    let (mut same, mut compared, mut diffs) = (0usize, 0usize, std::collections::BTreeMap::new());
    for t in tl.tasks.iter().filter(|t| !t.on_cpu) {
        let Some(theirs) = before.get(&(t.id as i32)) else { continue };
        // Sleeping: a saved frame below the top pt_regs (not a task current in user mode).
        let Some(saved_sp) = t.saved_sp.filter(|&sp| sp < t.stack.end - PT_REGS_SIZE) else { continue };
        let w = u.unwind(&mut live.lk.vm, Start::Sleeping { saved_sp }, std::slice::from_ref(&t.stack));
        // Like the guest's stack_trace_save_tsk: scheduler and lock functions left out.
        let ours: Vec<String> = w.frames.iter().filter(|fr| !skipped.iter().any(|r| r.contains(&fr.ip))).map(|fr| sym.name(&live, fr.ip, fr.signal)).collect();
        compared += 1;
        if &ours == theirs && w.unreliable.is_none() {
            same += 1;
        } else {
            diffs.insert(t.id as i32, format!("pid {} {}: ours {ours:?} ({:?}) vs guest {theirs:?}", t.id, t.name, w.unreliable));
        }
    }
    eprintln!("  {same}/{compared} sleeping tasks unwound exactly as /proc/<pid>/stack shows");
    live.resume().unwrap();
    let dump = g.run_ok(DUMP_STACKS).unwrap();
    let after = parse_proc_stacks(&dump);
    observers.extend(parse_observers(&dump));
    // A task moved when its /proc stack changed (or it went away) between
    // the dumps taken before and after the stop: only those may differ, and
    // the dumps' observers (the shells running them, pid 1 among them: at
    // the stop they wait for the next command, in both dumps they wait for
    // the dump), whose /proc stacks cannot show where they were at the stop.
    let moved = |pid: &i32| after.get(pid) != before.get(pid);
    let unexplained: Vec<&String> = diffs.iter().filter(|(pid, _)| !moved(pid) && !observers.contains(pid)).map(|(_, d)| d).collect();
    let n_moved = diffs.keys().filter(|p| moved(p)).count();
    eprintln!("  {} differ: {n_moved} moved, {} observers ({observers:?}), {} unexplained", diffs.len(), diffs.len() - n_moved - unexplained.len(), unexplained.len());
    check(&mut f, "ORC frames equal the guest's /proc/<pid>/stack for every task that did not move", ensure(
        compared > 50 && same * 2 >= compared && unexplained.is_empty(),
        || format!("{same} of {compared} equal; {} differ, {} of them in tasks whose /proc stack did not change around the stop: {unexplained:#?}", diffs.len(), unexplained.len()),
    ));
    live.stop().unwrap();

    for source in [TaskSource::Auto, TaskSource::Agentless] {
        let (v, _) = live.view_settled(source, None, 20);
        let v = v.unwrap();
        let tl = v.task_list();
        let tag = v.source();
        let (c, sum) = run_check(&mut live, CheckMode::Conservative, &u, &v, &tl, &target);
        check(&mut f, &format!("{tag}: the conservative scan reports the stale word"), ensure(c.iter().any(|c| c.task_id == Some(stale_pid)), || format!("{c:?}")));
        eprintln!("  {tag}: conservative: {} stacks, {} KiB", sum.scanned, sum.bytes >> 10);
        let (c, sum) = run_check(&mut live, CheckMode::Orc, &u, &v, &tl, &target);
        eprintln!("  {tag}: orc: {} unwound, {} scanned, {} idle CPU stacks, {} KiB; fallbacks {:?}", sum.unwound, sum.scanned, sum.idle_cpu_stacks, sum.bytes >> 10, sum.fallbacks);
        check(&mut f, &format!("{tag}: the ORC check does not"), ensure(c.is_empty(), || format!("{c:?}")));
        check(&mut f, &format!("{tag}: it unwound the stale thread's stack"), ensure(!sum.fallbacks.iter().any(|x| x.stack.starts_with(&format!("pid {stale_pid} "))), || format!("{:?}", sum.fallbacks)));
        check(&mut f, &format!("{tag}: few stacks fall back to the scan"), few_fallbacks(&mut live, source, &u, &target, sum));
        for mode in [CheckMode::Conservative, CheckMode::Orc] {
            let (c, _) = run_check(&mut live, mode, &u, &v, &tl, &inside);
            check(&mut f, &format!("{tag}: {mode}: a thread inside the function is a conflict"), ensure(c.iter().any(|c| c.task_id == Some(inside_pid)), || format!("{c:?}")));
        }
    }
    live.resume().unwrap();
    live.close();
    g.run_ok("rmmod vsplice_stale").unwrap();
    check(&mut f, "console clean (no Oops, BUG, WARNING)", g.check_console().map_err(|e| e.to_string()));
    assert!(f.is_empty(), "{flavour}: {} check(s) failed:\n{}", f.len(), f.join("\n"));
}

#[test]
fn stack_check_on_the_generic_kernel() {
    stack_e2e(Flavour::Amd64);
}

#[test]
fn stack_check_on_the_cloud_kernel() {
    stack_e2e(Flavour::CloudAmd64);
}
