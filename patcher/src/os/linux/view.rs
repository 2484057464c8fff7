//! A stopped Linux guest's tasks and stacks for the safety check, from the
//! guest agent or the agentless walk (or both, checked against each
//! other), and the ORC unwinder for its kernel and modules.
//!
//! [`TaskSource::Auto`] uses the agent when it is there and sound, else the
//! walk, and says why in [`LinuxView::note`]; [`TaskSource::Agent`] insists
//! on the agent (a refusal with the agent's cause otherwise). With BTF the
//! walk always runs too and must agree with the agent
//! ([`crate::os::linux::agent::source`]); the check then uses both lists merged
//! (the agent also knows exiting tasks the walk no longer sees).
//!
//! [`read_guest_tasks`] turns that into what the check gets, by the rules
//! of [`super::task_list`]: the transaction (`LinuxTarget::tasks`) and
//! [`read_view`] (tests, tools) both go through it.

use std::collections::HashSet;
use std::ops::Range;
use std::str::FromStr;

use thiserror::Error;
use tracing::info;

use super::agent::find::{self, ModuleAgent};
use super::agent::source::PF_EXITING;
use super::agent::{AgentError, AgentView, Descriptor, OneSided};
use super::btf::Btf;
use super::kallsyms::Kallsyms;
use super::kernel::KernelInfo;
use super::modules::{self, ModuleOffsets};
use super::orc::{OrcError, OrcTable};
use super::task_list;
use super::tasks::{self, Task, TaskError, TaskOffsets, Trail};
use super::unwind::OrcUnwinder;
use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::{GuestTasks, TaskList};

/// Where the task list comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum TaskSource {
    /// The agent if present and sound, else the walk.
    #[default]
    Auto,
    /// The agent or nothing.
    Agent,
    /// The BTF walk only.
    Agentless,
}

impl FromStr for TaskSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "agent" => Ok(Self::Agent),
            "agentless" => Ok(Self::Agentless),
            o => Err(format!("unknown task source `{o}` (auto, agent, agentless)")),
        }
    }
}

/// Where the agent's descriptor is, when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentHint {
    /// Announced through the doorbell (guest-physical; 0 never).
    Doorbell(u64),
    /// Kernel-virtual address of the header (found earlier).
    Virt(u64),
}

/// Why the view could not be read. Retries: [`ViewError::is_retry`].
#[derive(Debug, Error)]
pub enum ViewError {
    /// The agent's table was unusable (or disagreed with the walk).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The walk failed.
    #[error("agentless task walk: {0}")]
    Walk(#[from] TaskError),
    /// Neither source can work (no agent and no BTF).
    #[error("no task source: {0}")]
    NoSource(String),
    /// The tasks were read but their stacks or CPUs could not be.
    #[error("assembling the stacks to check")]
    List(#[source] TaskError),
}

impl ViewError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Agent(e) => e.cause(),
            Self::Walk(e) => e.cause(),
            Self::NoSource(_) => "no_task_source",
            Self::List(e) => e.cause(),
        }
    }

    /// True when letting the guest run and reading again may succeed.
    pub fn is_retry(&self) -> bool {
        match self {
            Self::Agent(AgentError::Mismatch(d)) => d.is_in_flight(),
            Self::Agent(e) => e.is_retry(),
            Self::Walk(TaskError::Inconsistent { .. }) | Self::List(TaskError::Inconsistent { .. }) => true,
            _ => false,
        }
    }
}

/// What the check needs of the stopped guest, and where it came from.
#[derive(Debug, Clone)]
pub struct LinuxView {
    /// Tasks as read (merged when both sources ran), dead ones included.
    pub tasks: Vec<Task>,
    /// What the check gets (by the rules of [`super::task_list`]).
    pub list: TaskList,
    /// Guest CPU number of each vCPU, in vCPU order.
    pub vcpu_cpus: Vec<Option<u32>>,
    /// The agent's view when it was used.
    pub agent: Option<AgentView>,
    /// The walk when it ran.
    pub walk: Option<Vec<Task>>,
    /// Where the agent's header was (kernel-virtual), to look there next time.
    pub agent_at: Option<u64>,
    /// Why the agent was not used (Auto mode), for the result.
    pub note: Option<String>,
}

impl LinuxView {
    /// `agent`, `agentless` or `agent+agentless`.
    pub fn source(&self) -> &'static str {
        source_of(&self.agent, &self.walk)
    }

    /// The list the check takes (the same a transaction checks).
    pub fn task_list(&self) -> TaskList {
        self.list.clone()
    }
}

fn source_of(agent: &Option<AgentView>, walk: &Option<Vec<Task>>) -> &'static str {
    match (agent, walk) {
        (Some(_), Some(_)) => "agent+agentless",
        (Some(_), None) => "agent",
        _ => "agentless",
    }
}

fn read_agent(mem: &mut dyn KernelMemory, k: &Kallsyms, btf: Option<&Btf>, hint: Option<AgentHint>) -> Result<AgentView, AgentError> {
    let (virt, phys) = match hint {
        Some(AgentHint::Doorbell(gpa)) => (find::direct_map_virt(mem, k, gpa)?, Some(gpa)),
        Some(AgentHint::Virt(v)) => (v, None),
        None => {
            let btf = btf.ok_or_else(|| AgentError::Absent("no doorbell address and no BTF to find the agent module".into()))?;
            match find::by_module(mem, k, btf)? {
                ModuleAgent::Header(v) => (v, None),
                ModuleAgent::NotLoaded => return Err(AgentError::Absent("module vsplice_agent is not loaded".into())),
                ModuleAgent::NoDescriptor => return Err(AgentError::Absent("module vsplice_agent publishes no descriptor (loading or unloading)".into())),
            }
        }
    };
    let d = Descriptor::read_virt(mem, virt, phys)?;
    AgentView::new(mem, d)
}

/// The task list from the agent and/or the walk, checked against each other.
#[derive(Debug, Clone)]
pub struct TaskRead {
    /// Tasks (merged when both sources ran).
    pub tasks: Vec<Task>,
    /// The agent's view when it was used.
    pub agent: Option<AgentView>,
    /// The walk when it ran.
    pub walk: Option<Vec<Task>>,
    /// Why the agent was not used (Auto mode).
    pub note: Option<String>,
}

impl TaskRead {
    /// `agent`, `agentless` or `agent+agentless`.
    pub fn source(&self) -> &'static str {
        source_of(&self.agent, &self.walk)
    }

    /// Where the agent's header was (kernel-virtual), to look there next time.
    pub fn agent_at(&self) -> Option<u64> {
        self.agent.as_ref().map(|a| a.descriptor.header.self_virt)
    }
}

/// Tasks that have never run: their saved frame (the `inactive_task_frame`
/// at `thread.sp`) still returns to `ret_from_fork`.
fn never_ran(mem: &mut dyn KernelMemory, k: &Kallsyms, tasks: &[&Task]) -> HashSet<u64> {
    let Some(rff) = k.first_addr("ret_from_fork") else { return HashSet::new() };
    tasks
        .iter()
        .filter(|t| !t.on_cpu && t.sp >= t.stack && t.sp < t.stack_end())
        .filter(|t| mem.read_u64(t.sp + 6 * 8).is_ok_and(|ret| ret == rff))
        .map(|t| t.addr)
        .collect()
}

/// What the agreement rules need of the tasks only one side has: which
/// never ran, and which are exiting (`flags`, `exit_state` read with the
/// agent's published offsets; an unreadable task counts as neither).
fn one_sided(mem: &mut dyn KernelMemory, k: &Kallsyms, a: &AgentView, walk: &[Task]) -> OneSided {
    let tasks = a.one_sided(walk);
    let off = a.descriptor.header.offsets;
    let exiting = tasks
        .iter()
        .filter(|t| {
            let flags = mem.read_u32(t.addr.wrapping_add(u64::from(off.flags)));
            let exit_state = mem.read_u32(t.addr.wrapping_add(u64::from(off.exit_state)));
            matches!((flags, exit_state), (Ok(f), Ok(x)) if f & PF_EXITING != 0 || x != 0)
        })
        .map(|t| t.addr)
        .collect();
    OneSided { never_ran: never_ran(mem, k, &tasks), exiting }
}

/// Reads the task list with every vCPU stopped: the agent's (found through
/// `hint`, else the module list) per `source`, the walk whenever there is
/// BTF (with `offsets` when already known), and their agreement.
pub fn read_tasks(
    mem: &mut dyn KernelMemory,
    k: &Kallsyms,
    btf: Option<&Btf>,
    offsets: Option<&TaskOffsets>,
    source: TaskSource,
    hint: Option<AgentHint>,
) -> Result<TaskRead, ViewError> {
    read_tasks_trailed(mem, k, btf, offsets, source, hint, &mut Trail::default())
}

/// [`read_tasks`] with the agentless walk guided by, and recorded into,
/// `trail` (a prefetch hint only: [`tasks::walk_tasks_trailed`]).
pub fn read_tasks_trailed(
    mem: &mut dyn KernelMemory,
    k: &Kallsyms,
    btf: Option<&Btf>,
    offsets: Option<&TaskOffsets>,
    source: TaskSource,
    hint: Option<AgentHint>,
    trail: &mut Trail,
) -> Result<TaskRead, ViewError> {
    let mut note = None;
    let agent = match source {
        TaskSource::Agentless => None,
        _ => match read_agent(mem, k, btf, hint) {
            Ok(a) => Some(a),
            Err(e) if e.is_retry() || source == TaskSource::Agent => return Err(e.into()),
            // A hint that went stale (agent reloaded elsewhere): look it up afresh.
            Err(e) if hint.is_some() && btf.is_some() => match read_agent(mem, k, btf, None) {
                Ok(a) => Some(a),
                Err(e2) if e2.is_retry() => return Err(e2.into()),
                Err(e2) => {
                    note = Some(format!("agent not used ({}): {e}; {e2}", e2.cause()));
                    None
                }
            },
            Err(e) => {
                note = Some(format!("agent not used ({}): {e}", e.cause()));
                None
            }
        },
    };
    let walked = match (btf, &agent) {
        (Some(b), _) => match offsets {
            Some(o) => Some(tasks::all_tasks_trailed(mem, k, o, trail)?),
            None => Some(tasks::all_tasks_trailed(mem, k, &TaskOffsets::from_btf(b)?, trail)?),
        },
        (None, Some(_)) => None,
        (None, None) => return Err(ViewError::NoSource("no agent and no BTF".into())),
    };
    if let (Some(a), Some(w)) = (&agent, &walked) {
        let facts = one_sided(mem, k, a, w);
        a.compare(w, &facts).map_err(|d| ViewError::Agent(AgentError::Mismatch(d)))?;
    }
    let tasks = match (&agent, &walked) {
        (Some(a), Some(w)) => a.merged(w),
        (Some(a), None) => a.tasks.clone(),
        (None, Some(w)) => w.clone(),
        (None, None) => Vec::new(),
    };
    Ok(TaskRead { tasks, agent, walk: walked, note })
}

/// Reads the tasks ([`read_tasks`]) and builds what the check gets from
/// them ([`task_list::build`]), with every vCPU stopped.
#[allow(clippy::too_many_arguments)]
pub fn read_guest_tasks(
    mem: &mut dyn KernelMemory,
    k: &Kallsyms,
    btf: Option<&Btf>,
    offsets: Option<&TaskOffsets>,
    source: TaskSource,
    hint: Option<AgentHint>,
    vcpus: &[VcpuState],
    trail: &mut Trail,
) -> Result<(TaskRead, GuestTasks), ViewError> {
    let read = read_tasks_trailed(mem, k, btf, offsets, source, hint, trail)?;
    if btf.is_none() && read.agent.as_ref().is_some_and(|a| !a.has_irq_stacks()) {
        // Nothing else could find them: refuse rather than check without them.
        return Err(ViewError::NoSource("the agent recorded no IRQ stacks and there is no BTF to find them".into()));
    }
    let agent_stacks = read.agent.as_ref().map(|a| a.cpu_stacks.as_slice());
    let (list, vcpu_cpus) = task_list::build(mem, k, btf, &read.tasks, agent_stacks, vcpus).map_err(ViewError::List)?;
    let out = GuestTasks { list, vcpu_cpus, source: read.source(), source_at: read.agent_at(), changes: None, changed: None, reread: None };
    Ok((read, out))
}

/// Reads the view with every vCPU stopped. `hint`: where the agent is, if
/// known (doorbell, or `agent_at` of an earlier view).
pub fn read_view(
    mem: &mut dyn KernelMemory,
    info: &KernelInfo,
    vcpus: &[VcpuState],
    source: TaskSource,
    hint: Option<AgentHint>,
) -> Result<LinuxView, ViewError> {
    let btf = info.btf.as_ref().map(|b| &b.0);
    let (read, g) = read_guest_tasks(mem, &info.kallsyms, btf, None, source, hint, vcpus, &mut Trail::default())?;
    let TaskRead { tasks, agent, walk, note } = read;
    Ok(LinuxView { tasks, list: g.list, vcpu_cpus: g.vcpu_cpus, agent, walk, agent_at: g.source_at, note })
}

/// The ORC unwinder for this kernel: vmlinux's tables, every loaded
/// module's (with BTF), and the addresses tracers put in place of return
/// addresses. Read once, with the guest running or stopped.
pub fn build_unwinder(mem: &mut dyn KernelMemory, info: &KernelInfo) -> Result<OrcUnwinder, OrcError> {
    build_unwinder_noted(mem, info, &mut Vec::new())
}

/// [`build_unwinder`], naming in `refused` each part it left out (the
/// module list, a module's tables) with the stable cause: `("modules",
/// "list_inconsistent")`, `("module ext4", "orc_unsorted")`, …
pub fn build_unwinder_noted(mem: &mut dyn KernelMemory, info: &KernelInfo, refused: &mut Vec<(String, &'static str)>) -> Result<OrcUnwinder, OrcError> {
    let k = &info.kallsyms;
    let t = info.orc.as_ref().ok_or(OrcError::Counts { ips: 0, entries: 0 })?;
    let vmlinux = OrcTable::read_vmlinux(mem, k, t)?;
    let mut u = OrcUnwinder::new(vmlinux, k.first_addr("ret_from_fork"));
    for (sym, what) in [
        ("return_to_handler", "the function-graph tracer"),
        ("arch_rethook_trampoline", "a kretprobe (rethook)"),
        ("__kretprobe_trampoline", "a kretprobe"),
    ] {
        if let Some(a) = k.first_addr(sym) {
            u.add_rewritten(a, what);
        }
    }
    if let Some((btf, _, _)) = &info.btf {
        match ModuleOffsets::from_btf(btf).and_then(|off| modules::list_modules(mem, k, &off)) {
            Ok(mods) => {
                for m in mods {
                    let Some(o) = m.orc else { continue };
                    let text: Range<u64> = m.base..m.base + m.text_size;
                    match OrcTable::read(mem, &format!("module {}", m.name), (text.start, text.end), o.ip_table, o.unwind_table, o.entries) {
                        Ok(t) => u.add_table(t),
                        Err(e) => {
                            info!(module = %m.name, error = %e, "module ORC unreadable: its frames will be unreliable");
                            refused.push((format!("module {}", m.name), e.cause()));
                        }
                    }
                }
            }
            Err(e) => {
                info!(error = %e, "module list unreadable: module frames will be unreliable");
                refused.push(("modules".to_owned(), e.cause()));
            }
        }
    }
    Ok(u)
}
