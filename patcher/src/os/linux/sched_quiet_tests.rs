//! Unit tests of the quiet path ([`super::reread`]) on a synthetic guest:
//! two CPUs (per-CPU `current_task`, `runqueues` with `nr_switches` and
//! `curr`), `total_forks`, `tasklist_lock`, six linked threads and CPU 1's
//! idle task. The pre-check's read is made as `LinuxTarget::tasks` makes it
//! with the guest running (no vCPUs); the whole read under the pause as
//! `task_list::build` does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::model::{TaskList, TaskInfo};
use crate::os::linux::testutil::{kallsyms_blob, sample_syms};
use crate::testing::RamGuest;

const P: [u64; 2] = [0xffff_8880_7000_0000, 0xffff_8880_7004_0000];
const RQ: u64 = 0x2_0000;
const CUR: u64 = 0x1fb80;
const T0: u64 = 0xffff_8880_0200_0000;
const HEAD: u64 = 0xffff_8880_0300_0010;
/// Positions 0..6: pids 1..=6 on the thread list; 6: CPU 1's idle task.
const N: u64 = 7;

fn off() -> TaskOffsets {
    crate::os::linux::testutil::sample_task_offsets()
}

fn task(i: u64) -> u64 {
    T0 + i * 0x2000
}

fn stack(i: u64) -> u64 {
    0xffff_c900_0100_0000 + i * 0x8000
}

struct Fake {
    g: RamGuest,
    k: Kallsyms,
    q: QuietOffsets,
}

impl Fake {
    /// `rq_readable`: CPU 1's `runqueues` page is mapped.
    fn new(rq_readable: bool) -> Self {
        let text = 0xffff_ffff_8100_0000;
        let mut syms = sample_syms(text);
        syms.insert(2, ('A', "runqueues".into(), RQ, true));
        let end = syms.last().unwrap().2;
        let d = end + 0x1000;
        for (i, n) in ["__per_cpu_offset", "nr_cpu_ids", "total_forks", "tasklist_lock"].iter().enumerate() {
            syms.push(('D', (*n).into(), d + 0x100 * i as u64, false));
        }
        let base = 0xffff_ffff_8300_0000;
        let (blob, _) = kallsyms_blob(&syms, base, 64, true);
        let k = Kallsyms::locate_in(&blob, base).unwrap();
        let a = |n: &str| k.first_addr(n).unwrap();
        let q = QuietOffsets { runqueues: RQ, nr_switches: 0x10, curr: 0x20, total_forks: a("total_forks"), current_task: CUR, tasklist_lock: a("tasklist_lock"), thread_node: off().thread_node };
        let mut g = RamGuest::sparse();
        g.map_range(d & !0xfff, 0x3000_0000, 0x3000);
        g.write_virt(a("__per_cpu_offset"), &P[0].to_le_bytes()).unwrap();
        g.write_virt(a("__per_cpu_offset") + 8, &P[1].to_le_bytes()).unwrap();
        g.write_virt(a("nr_cpu_ids"), &2u32.to_le_bytes()).unwrap();
        g.write_virt(a("total_forks"), &500u64.to_le_bytes()).unwrap();
        for (c, p) in P.iter().enumerate() {
            let len = if c == 1 && !rq_readable { 0x1000 } else { 0x2000 };
            g.map_range(p + 0x1f000, 0x3100_0000 + 0x10_0000 * c as u64, len);
        }
        g.map_range(HEAD & !0xfff, 0x3200_0000, 0x1000);
        let mut f = Self { g, k, q };
        for c in 0..2 {
            f.set_switches(c, 1000 * (c as u64 + 1));
        }
        // CPU 0 runs pid 1 (position 0), CPU 1 its idle task (position 6).
        f.set_current(0, task(0));
        f.set_current(1, task(6));
        let o = off();
        for i in 0..N {
            let t = task(i);
            f.g.map_range(t, 0x2000_0000 + i * 0x2000, 0x2000);
            let pid = if i == 6 { 0 } else { i as i32 + 1 };
            f.put(t + o.pid, &pid.to_le_bytes());
            f.put(t + o.comm, format!("t{i}\0").as_bytes());
            f.put(t + o.stack, &stack(i).to_le_bytes());
            f.put(t + o.thread_sp, &(stack(i) + 0x3e00).to_le_bytes());
            f.put(t + o.cpu, &((i % 2) as u32).to_le_bytes());
            f.put(t + 0x6a0, &(10 + i).to_le_bytes());
            f.put(t + 0x6b0, &(100 + i).to_le_bytes());
        }
        f.set_on_cpu(0, true);
        f.set_on_cpu(6, true);
        // The thread list: HEAD, pids 1..=6.
        let node = |i: u64| task(i) + o.thread_node;
        let ring: Vec<u64> = std::iter::once(HEAD).chain((0..6).map(node)).collect();
        for (j, &n) in ring.iter().enumerate() {
            let next = ring[(j + 1) % ring.len()];
            let prev = ring[(j + ring.len() - 1) % ring.len()];
            f.put(n, &next.to_le_bytes());
            f.put(n + 8, &prev.to_le_bytes());
        }
        f
    }

    fn put(&mut self, va: u64, b: &[u8]) {
        self.g.write_virt(va, b).unwrap();
    }

    /// (Nothing written where the runqueue is not mapped.)
    fn set_switches(&mut self, cpu: usize, n: u64) {
        let _ = self.g.write_virt(P[cpu] + RQ + 0x10, &n.to_le_bytes());
    }

    fn set_current(&mut self, cpu: usize, t: u64) {
        self.put(P[cpu] + CUR, &t.to_le_bytes());
        let _ = self.g.write_virt(P[cpu] + RQ + 0x20, &t.to_le_bytes());
    }

    fn set_on_cpu(&mut self, i: u64, on: bool) {
        self.put(task(i) + off().on_cpu, &u32::from(on).to_le_bytes());
    }

    fn raw(&mut self) -> Vec<Task> {
        (0..N).map(|i| read_task(&mut self.g, &off(), task(i)).unwrap()).collect()
    }

    /// The pre-check's read (guest running): counters first, then tasks.
    fn pre(&mut self) -> (GuestTasks, QuietIndex) {
        let c = Counters::read(&mut self.g, &self.k, &self.q).unwrap();
        let raw = self.raw();
        let list = task_infos(&raw, &[], &[]).unwrap();
        let sum = c.sum();
        let idx = QuietIndex::build(c, &raw, &list).unwrap();
        let g = GuestTasks { list: TaskList { tasks: list, cpu_stacks: Vec::new() }, source: "agentless", changes: Some(sum), ..GuestTasks::default() };
        (g, idx)
    }

    /// What a whole read under the pause gives (`task_list::build`).
    fn whole(&mut self, vcpus: &[VcpuState]) -> Vec<TaskInfo> {
        let per_cpu = per_cpu_offsets(&mut self.g, &self.k, 2).unwrap();
        let cpus = vcpu_cpus(vcpus, &per_cpu);
        let current: Vec<Option<u64>> = cpus.iter().map(|c| c.map(|c| self.g.read_u64(per_cpu[c as usize] + CUR).unwrap())).collect();
        let raw = self.raw();
        task_infos(&raw, vcpus, &current).unwrap()
    }

    fn reread(&mut self, prev: &mut GuestTasks, idx: &QuietIndex, vcpus: &[VcpuState]) -> Result<(), NotQuiet> {
        reread(&mut self.g, &self.k, None, &off(), &self.q, idx, prev, vcpus)
    }
}

fn vcpus() -> Vec<VcpuState> {
    // Both in the kernel, each on its current task's stack.
    (0..2)
        .map(|c| {
            let mut v = VcpuState { index: c, cs: 0x10, gs_base: P[c], ..VcpuState::default() };
            v.gprs[VcpuState::RSP] = stack(if c == 0 { 0 } else { 6 }) + 0x3000;
            v
        })
        .collect()
}

#[test]
fn counters_unchanged_only_the_tasks_on_a_cpu_are_read_again() {
    let mut f = Fake::new(true);
    // Position 2 was on a CPU at the pre-check (mid-switch, or running).
    f.set_on_cpu(2, true);
    let (mut prev, idx) = f.pre();
    assert_eq!(prev.list.tasks.len(), 7);
    // By the pause it switched out (a lie to the counters, as is the next
    // line: what is not re-read is kept as the pre-check read it).
    f.set_on_cpu(2, false);
    f.put(task(2) + off().thread_sp, &(stack(2) + 0x3c00).to_le_bytes());
    let v = vcpus();
    let expect = f.whole(&v);
    f.put(task(4) + off().thread_sp, &(stack(4) + 0x3a00).to_le_bytes());
    f.reread(&mut prev, &idx, &v).unwrap();
    assert_eq!(prev.changed.as_deref(), Some(&[0, 2, 6][..]), "on a CPU then (2) or now (0, 6), nothing else");
    assert_eq!(prev.reread, Some("quiet"));
    assert_eq!(prev.list.tasks, expect, "the list a whole read gives");
    assert_eq!(prev.list.tasks[2].saved_sp, Some(stack(2) + 0x3c00), "re-read");
    assert_eq!(prev.list.tasks[4].saved_sp, Some(stack(4) + 0x3e00), "not re-read");
    assert_eq!(prev.vcpu_cpus, vec![Some(0), Some(1)]);
}

#[test]
fn a_task_switched_in_is_read_again_through_rq_curr() {
    let mut f = Fake::new(true);
    let (mut prev, idx) = f.pre();
    // Mid-switch at the pause: rq->curr is position 3, current_task not yet.
    f.put(P[1] + RQ + 0x20, &task(3).to_le_bytes());
    f.reread(&mut prev, &idx, &vcpus()).unwrap();
    assert_eq!(prev.changed.as_deref(), Some(&[0, 3, 6][..]));
    // A vCPU's RSP on a sleeping task's stack: that task too.
    let (mut prev, idx) = f.pre();
    let mut v = vcpus();
    v[1].gprs[VcpuState::RSP] = stack(5) + 0x100;
    f.reread(&mut prev, &idx, &v).unwrap();
    assert_eq!(prev.changed.as_deref(), Some(&[0, 3, 5, 6][..]));
    assert_eq!((prev.list.tasks[5].on_cpu, prev.list.tasks[5].saved_sp), (true, None));
}

#[test]
fn a_switch_or_a_fork_since_the_pre_check_means_the_whole_walk() {
    for what in ["cpu1", "cpu0", "fork"] {
        let mut f = Fake::new(true);
        let (mut prev, idx) = f.pre();
        let before = prev.clone();
        match what {
            "cpu1" => f.set_switches(1, 2001),
            "cpu0" => f.set_switches(0, 1001),
            _ => f.put(f.q.total_forks, &501u64.to_le_bytes()),
        }
        let e = f.reread(&mut prev, &idx, &vcpus()).unwrap_err();
        assert_eq!(e.cause(), "switched", "{what}");
        assert_eq!(prev, before, "{what}: the list handed back is untouched");
    }
    // Counters that compensate each other (same sum) are no quiet either.
    let mut f = Fake::new(true);
    let (mut prev, idx) = f.pre();
    f.set_switches(0, 1001);
    f.set_switches(1, 1999);
    assert_eq!(f.reread(&mut prev, &idx, &vcpus()).unwrap_err().cause(), "switched");
}

#[test]
fn unreadable_runqueues_mean_the_whole_walk() {
    let mut ok = Fake::new(true);
    let (mut prev, idx) = ok.pre();
    let mut bad = Fake::new(false);
    assert!(Counters::read(&mut bad.g, &bad.k, &bad.q).is_err(), "no counters, no index at the pre-check");
    let e = bad.reread(&mut prev, &idx, &vcpus()).unwrap_err();
    assert_eq!(e.cause(), "unreadable", "{e}");
}

#[test]
fn anything_unexpected_under_the_pause_means_the_whole_walk() {
    // tasklist_lock write-held: a fork or an exit in flight.
    let mut f = Fake::new(true);
    let (mut prev, idx) = f.pre();
    f.put(f.q.tasklist_lock, &0xffu32.to_le_bytes());
    assert_eq!(f.reread(&mut prev, &idx, &vcpus()).unwrap_err().cause(), "tasklist_locked");
    // A CPU's current task unknown to the pre-check's list.
    let mut f = Fake::new(true);
    let (mut prev, idx) = f.pre();
    f.set_current(1, task(9));
    assert_eq!(f.reread(&mut prev, &idx, &vcpus()).unwrap_err().cause(), "task_unknown");
    // The task running now left its thread list (exiting).
    let mut f = Fake::new(true);
    let (mut prev, idx) = f.pre();
    f.put(task(0) + off().thread_node + 8, &0xdead_0000_0000_0122u64.to_le_bytes());
    assert!(matches!(f.reread(&mut prev, &idx, &vcpus()).unwrap_err().cause(), "unreadable" | "task_unlinked"));
    // Its stack freed, or another pid at that address.
    let mut f = Fake::new(true);
    let (mut prev, idx) = f.pre();
    f.put(task(0) + off().pid, &77i32.to_le_bytes());
    assert_eq!(f.reread(&mut prev, &idx, &vcpus()).unwrap_err().cause(), "task_changed");
    // A list that is not the indexed one.
    let mut f = Fake::new(true);
    let (mut prev, idx) = f.pre();
    prev.list.tasks.pop();
    assert_eq!(f.reread(&mut prev, &idx, &vcpus()).unwrap_err().cause(), "not_indexed");
    let (mut prev, idx) = f.pre();
    prev.source = "agent+agentless";
    assert_eq!(f.reread(&mut prev, &idx, &vcpus()).unwrap_err().cause(), "not_indexed");
}

#[test]
fn a_long_list_is_retried_when_the_guest_changed_and_walked_otherwise() {
    let big = RETRY_FROM_TASKS;
    for e in [NotQuiet::Switched, NotQuiet::ListLocked, NotQuiet::UnknownTask(1), NotQuiet::TaskChanged(1), NotQuiet::Unlinked(1)] {
        assert!(retry_rather_than_walk(&e, big), "{e}");
        assert!(!retry_rather_than_walk(&e, big - 1), "a short list is walked: {e}");
    }
    for e in [NotQuiet::NotIndexed, NotQuiet::CpusChanged] {
        assert!(!retry_rather_than_walk(&e, 10 * big), "{e}");
    }
}
