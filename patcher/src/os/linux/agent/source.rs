//! The agent's descriptor as a task source: the same [`Task`] list the
//! agentless walk produces (dynamic fields refreshed from each
//! `task_struct` with the offsets the agent was compiled with), the CPU
//! stacks, and the rules by which agent and agentless views must agree.
//!
//! Agreement, with every vCPU stopped:
//! - a task the walk sees and the agent does not must be brand new: never
//!   run (`TASK_NEW`, or being woken for the first time: the agent adds it
//!   in `sched_wakeup_new`, just after `__state` turned running; its saved
//!   frame still returns to `ret_from_fork`) — the caller says which
//!   tasks never ran ([`OneSided::never_ran`]);
//! - a task the agent has and the walk does not must be exiting
//!   (`PF_EXITING` or an exit state: unhashed, its stack still in use until
//!   its last switch) or an idle task the walk did not include;
//! - for tasks in both, pid, tgid, comm and stack base are equal.
//!
//! Anything else is a [`Disagreement`], of two kinds:
//! - *in flight* ([`Disagreement::in_flight`]): what a fork, exit, exec or
//!   rename caught half-way can explain — pid/tgid/comm differing (exec's
//!   `de_thread` swaps pids long before the agent hears `sched_process_exec`;
//!   a rename is traced before it is copied), a walk-only task that is
//!   exiting, an agent-only task that is brand new. The caller lets the
//!   guest run and looks again, a bounded number of pauses
//!   (`TargetError::Disputed`: the same task disputed over
//!   [`crate::model::DISPUTE_PAUSES`] pauses is refused `agent_mismatch`);
//! - *real*: a walk-only task that has run and is not exiting (the agent
//!   missed it), an agent-only task that is neither exiting, idle nor new
//!   (the walk missed it), a different stack base. Refused `agent_mismatch`
//!   at once: no fork or exit in flight explains it.
//!
//! A retry never accepts anything the rules above do not: the read that
//! ends the retries must agree fully.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::layout::{T_IDLE, F_IRQ_STACKS};
use super::read::Descriptor;
use super::AgentError;
use crate::os::linux::tasks::Task;
use crate::model::mem::KernelMemory;
use crate::model::CpuStack;

/// `TASK_NEW` in `__state`.
pub const TASK_NEW: u32 = 0x800;
/// `PF_EXITING` in `flags`.
pub const PF_EXITING: u32 = 0x4;

/// The agent's view of the guest's tasks and CPU stacks.
#[derive(Debug, Clone)]
pub struct AgentView {
    /// The descriptor as read.
    pub descriptor: Descriptor,
    /// Every task in the table, dynamic fields read from the task now.
    pub tasks: Vec<Task>,
    /// Tasks that are exiting (PF_EXITING or exit_state set).
    pub exiting: HashSet<u64>,
    /// The CPU stacks the agent recorded.
    pub cpu_stacks: Vec<CpuStack>,
}

impl AgentView {
    /// Refreshes each entry's state, on_cpu, cpu, stack and saved stack
    /// pointer from its `task_struct` (call with every vCPU stopped).
    pub fn new<M: KernelMemory + ?Sized>(mem: &mut M, descriptor: Descriptor) -> Result<Self, AgentError> {
        let off = descriptor.header.offsets;
        let mut tasks = Vec::with_capacity(descriptor.tasks.len());
        let mut exiting = HashSet::new();
        for e in &descriptor.tasks {
            let a = e.task;
            let flags = mem.read_u32(a + u64::from(off.flags))?;
            let exit_state = mem.read_u32(a + u64::from(off.exit_state))?;
            if flags & PF_EXITING != 0 || exit_state != 0 {
                exiting.insert(a);
            }
            tasks.push(Task {
                addr: a,
                pid: e.pid,
                tgid: e.tgid,
                comm: e.comm.clone(),
                state: mem.read_u32(a + u64::from(off.state))?,
                on_cpu: mem.read_u32(a + u64::from(off.on_cpu))? != 0,
                cpu: mem.read_u32(a + u64::from(off.cpu))?,
                // Live: a dead task's stack is freed (NULL) before the task is.
                stack: mem.read_u64(a + u64::from(off.stack))?,
                sp: mem.read_u64(a + u64::from(off.thread_sp))?,
                // The agent publishes no switch counters; `merged` takes
                // the walk's.
                sched: None,
            });
        }
        let cpu_stacks = descriptor
            .cpus
            .iter()
            .flat_map(|c| c.stacks.iter().map(move |s| CpuStack { cpu: c.cpu, kind: s.kind.to_string(), range: s.start..s.end }))
            .collect();
        Ok(Self { descriptor, tasks, exiting, cpu_stacks })
    }

    /// True when the CPU records include the IRQ stacks (else take them
    /// from kallsyms, [`crate::os::linux::cpustacks`]).
    pub fn has_irq_stacks(&self) -> bool {
        self.descriptor.header.flags & F_IRQ_STACKS != 0
    }

    /// Checks the agreement rules against the agentless walk; `facts`:
    /// what the caller read of the tasks only one side has.
    pub fn compare(&self, walk: &[Task], facts: &OneSided) -> Result<(), Disagreement> {
        let mut d = Disagreement::default();
        let agent: HashMap<u64, &Task> = self.tasks.iter().map(|t| (t.addr, t)).collect();
        let walked: HashMap<u64, &Task> = walk.iter().map(|t| (t.addr, t)).collect();
        let idle: HashSet<u64> = self.descriptor.tasks.iter().filter(|e| e.flags & T_IDLE != 0).map(|e| e.task).collect();
        for t in walk {
            match agent.get(&t.addr) {
                None if is_new(t, facts) => {}
                None if facts.exiting.contains(&t.addr) => d.in_flight.push(InFlight::new(t, "exiting, only in the walk")),
                None => d.only_walk.push(label(t)),
                Some(a) => {
                    if a.stack != t.stack {
                        d.different.push(format!("{}: stack {:#x} (agent) vs {:#x} (walk)", label(t), a.stack, t.stack));
                    }
                    if a.pid != t.pid || a.tgid != t.tgid || a.comm != t.comm {
                        d.in_flight.push(InFlight { task: t.addr, what: format!("{} (agent) vs {} (walk)", label(a), label(t)) });
                    }
                }
            }
        }
        for t in &self.tasks {
            if walked.contains_key(&t.addr) || self.exiting.contains(&t.addr) || idle.contains(&t.addr) {
                continue;
            }
            if is_new(t, facts) {
                d.in_flight.push(InFlight::new(t, "new, only in the agent"));
            } else {
                d.only_agent.push(label(t));
            }
        }
        if d.is_empty() {
            Ok(())
        } else {
            Err(d)
        }
    }

    /// Tasks only one side has: the walk's the agent lacks, and the
    /// agent's the walk lacks (to ask whether they ever ran or are exiting).
    pub fn one_sided<'a>(&'a self, walk: &'a [Task]) -> Vec<&'a Task> {
        let agent: HashSet<u64> = self.tasks.iter().map(|t| t.addr).collect();
        let walked: HashSet<u64> = walk.iter().map(|t| t.addr).collect();
        walk.iter().filter(|t| !agent.contains(&t.addr)).chain(self.tasks.iter().filter(|t| !walked.contains(&t.addr))).collect()
    }

    /// The tasks to check: the agent's, plus any the walk has that the
    /// agent does not (brand-new ones), each once.
    pub fn merged(&self, walk: &[Task]) -> Vec<Task> {
        let mut seen: HashSet<u64> = self.tasks.iter().map(|t| t.addr).collect();
        let sched: std::collections::HashMap<u64, _> = walk.iter().filter_map(|t| t.sched.map(|s| (t.addr, s))).collect();
        let mut out = self.tasks.clone();
        for t in &mut out {
            t.sched = t.sched.or_else(|| sched.get(&t.addr).copied());
        }
        out.extend(walk.iter().filter(|t| seen.insert(t.addr)).cloned());
        out
    }
}

fn label(t: &Task) -> String {
    format!("{}/{} {:?} @{:#x}", t.tgid, t.pid, t.comm, t.addr)
}

fn is_new(t: &Task, facts: &OneSided) -> bool {
    t.state & TASK_NEW != 0 || facts.never_ran.contains(&t.addr)
}

/// What the caller read of the tasks only one side has
/// ([`AgentView::one_sided`]), with every vCPU stopped.
#[derive(Debug, Clone, Default)]
pub struct OneSided {
    /// Tasks whose saved frame still returns to `ret_from_fork`.
    pub never_ran: HashSet<u64>,
    /// Tasks with `PF_EXITING` or an exit state (read with the agent's offsets).
    pub exiting: HashSet<u64>,
}

/// One difference a fork, exit, exec or rename caught half-way explains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// The `task_struct` it is about (the key for "the same disagreement").
    pub task: u64,
    /// What differs.
    pub what: String,
}

impl InFlight {
    fn new(t: &Task, why: &str) -> Self {
        Self { task: t.addr, what: format!("{} {why}", label(t)) }
    }
}

/// How the two views differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disagreement {
    /// Tasks only the walk has that have run and are not exiting.
    pub only_walk: Vec<String>,
    /// Tasks only the agent has that are neither exiting, idle nor new.
    pub only_agent: Vec<String>,
    /// Tasks whose stack differs.
    pub different: Vec<String>,
    /// Differences a fork, exit, exec or rename in flight explains.
    pub in_flight: Vec<InFlight>,
}

impl Disagreement {
    /// True when every difference may be a fork, exit, exec or rename
    /// caught half-way (let the guest run and look again, a bounded number
    /// of times).
    pub fn is_in_flight(&self) -> bool {
        self.only_walk.is_empty() && self.only_agent.is_empty() && self.different.is_empty()
    }

    /// The tasks of the in-flight differences (which must not persist).
    pub fn in_flight_tasks(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.in_flight.iter().map(|f| f.task).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn is_empty(&self) -> bool {
        self.is_in_flight() && self.in_flight.is_empty()
    }
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (what, list) in [
            ("only in the walk", &self.only_walk),
            ("only in the agent", &self.only_agent),
            ("different stacks", &self.different),
        ] {
            if !list.is_empty() {
                let shown: Vec<&str> = list.iter().take(5).map(String::as_str).collect();
                let more = if list.len() > 5 { format!(" and {} more", list.len() - 5) } else { String::new() };
                parts.push(format!("{what}: {}{more}", shown.join(", ")));
            }
        }
        if !self.in_flight.is_empty() {
            let shown: Vec<&str> = self.in_flight.iter().take(5).map(|f| f.what.as_str()).collect();
            let more = if self.in_flight.len() > 5 { format!(" and {} more", self.in_flight.len() - 5) } else { String::new() };
            parts.push(format!("in flight (fork, exit, exec or rename): {}{more}", shown.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}
