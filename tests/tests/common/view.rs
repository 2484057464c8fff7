//! vsplice's view of a live Debian kernel (symbols, slide, banner, tasks)
//! read through either backend — the gdbstub alone, or QEMU's RAM file
//! with the gdbstub — and the comparisons with the guest's own view.

use std::collections::{BTreeMap, BTreeSet};

use vsplice_patcher::gdb::GdbOptions;
use vsplice_patcher::os::linux::kallsyms::Symbol;
use vsplice_patcher::os::linux::kernel::{self, Slide};
use vsplice_patcher::os::linux::tasks::{self, Task, TaskOffsets};
use vsplice_patcher::shm::ShmSpec;
use vsplice_tests::checks::ensure;

use super::{comm_matches, ProcSym, TaskKey};

/// What vsplice read from the stopped guest.
pub struct LiveView {
    /// kallsyms, decoded from guest memory.
    pub symbols: Vec<Symbol>,
    /// The banner.
    pub banner: Option<String>,
    /// The KASLR slide.
    pub slide: Slide,
    /// `init_task`.
    pub init_task: Task,
    /// The task walk.
    pub tasks: Vec<Task>,
}

/// Attaches (through the RAM file too when `shm` is given), reads the view, detaches.
pub fn live_view(addr: String, shm: Option<ShmSpec>, text_link: Option<u64>) -> Result<LiveView, String> {
    let opts = GdbOptions { timeout: std::time::Duration::from_secs(20), ..GdbOptions::default() };
    let (mut be, vcpus) = vsplice_patcher::attach::attach_gdb_shm(&addr, opts, shm.as_ref()).map_err(|e| format!("attach: {e} ({})", e.cause()))?;
    let r = (|| {
        let mut lk = kernel::LiveKernel::open(&mut be, vcpus, text_link).map_err(|e| format!("identify: {e} ({})", e.cause()))?;
        let (btf, _, _) = lk.info.btf.as_ref().ok_or("no BTF")?;
        let off = TaskOffsets::from_btf(btf).map_err(|e| format!("task offsets: {e}"))?;
        let init = lk.info.kallsyms.first_addr("init_task").ok_or("no init_task symbol")?;
        let init_task = tasks::read_task(&mut lk.vm, &off, init).map_err(|e| format!("init_task: {e}"))?;
        let tasks = tasks::all_tasks(&mut lk.vm, &lk.info.kallsyms, &off).map_err(|e| format!("task walk: {e}"))?;
        Ok(LiveView {
            symbols: lk.info.kallsyms.symbols().to_vec(),
            banner: lk.info.banner.clone(),
            slide: lk.info.slide.clone().ok_or("no slide")?,
            init_task,
            tasks,
        })
    })();
    be.detach().map_err(|e| format!("detach: {e}"))?;
    r
}

/// Every live symbol equals /proc/kallsyms, in order.
pub fn symbols_equal(live: &[Symbol], proc_syms: &[ProcSym]) -> Result<(), String> {
    ensure(live.len() == proc_syms.len(), || format!("count: vsplice {} vs /proc/kallsyms {}", live.len(), proc_syms.len()))?;
    let bad: Vec<String> = live
        .iter()
        .zip(proc_syms)
        .enumerate()
        .filter(|(_, (l, p))| l.name != p.name || l.addr != p.addr || l.kind != p.kind)
        .take(5)
        .map(|(i, (l, p))| format!("#{i}: vsplice {:#x} {} {} vs guest {:#x} {} {}", l.addr, l.kind, l.name, p.addr, p.kind, p.name))
        .collect();
    ensure(bad.is_empty(), || format!("symbols differ, first ones: {bad:?}"))
}

/// The walk equals the guest's /proc: every thread seen before and after is
/// in the walk, the walk has nothing seen neither before nor after, and
/// every comm agrees.
pub fn tasks_match(walk: &[TaskKey], before: &BTreeSet<TaskKey>, after: &BTreeSet<TaskKey>) -> Result<(), String> {
    let ids = |s: &BTreeSet<TaskKey>| -> BTreeMap<(i32, i32), String> { s.iter().map(|k| ((k.tgid, k.pid), k.comm.clone())).collect() };
    let (b, a) = (ids(before), ids(after));
    let walked: BTreeMap<(i32, i32), String> = walk.iter().filter(|t| t.pid != 0).map(|k| ((k.tgid, k.pid), k.comm.clone())).collect();
    ensure(walk.iter().filter(|t| t.pid != 0).count() == walked.len(), || "a task appears twice in the walk".into())?;
    let missing: Vec<_> = b.iter().filter(|(id, _)| a.contains_key(id) && !walked.contains_key(id)).collect();
    let extra: Vec<_> = walked.iter().filter(|(id, _)| !b.contains_key(id) && !a.contains_key(id)).collect();
    let renamed: Vec<_> = walked
        .iter()
        .filter(|(id, comm)| {
            let seen: Vec<&String> = [b.get(id), a.get(id)].into_iter().flatten().collect();
            !seen.is_empty() && !seen.iter().any(|p| comm_matches(comm, p))
        })
        .map(|(id, comm)| (id, comm, b.get(id), a.get(id)))
        .collect();
    ensure(missing.is_empty() && extra.is_empty() && renamed.is_empty(), || {
        format!(
            "walk has {} tasks, guest {}/{}; missing from the walk: {missing:?}; not in the guest: {extra:?}; comm differs: {renamed:?}",
            walked.len(),
            b.len(),
            a.len()
        )
    })
}

/// The walk as keys.
pub fn keys(walk: &[Task]) -> Vec<TaskKey> {
    walk.iter().map(|t| TaskKey { tgid: t.tgid, pid: t.pid, comm: t.comm.clone() }).collect()
}

