//! What the HTTP layer and the VMM thread share: the VM's description for
//! `GET /vm` (refreshed by the VMM thread every loop turn), the one
//! transaction-in-flight flag, the event log, the metrics, and the last
//! registry status (served while a transaction holds the VMM).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::txn::recover::Status;

use super::events::EventLog;
use crate::devices::console_watch::ConsoleCounts;
use super::metrics::Metrics;

/// The guest's state as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// vCPUs running.
    Running,
    /// Every vCPU parked. The VMM thread publishes the state between its
    /// turns, when transactions have resumed the guest, so this is rarely
    /// seen; `transaction_in_flight` says when one is running.
    Paused,
    /// The guest has ended.
    Exited,
}

impl VmState {
    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Exited => "exited",
        }
    }
}

/// The kernel being run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelInfo {
    /// `testguest`, `linux`, or `unknown`.
    pub kind: String,
    /// Build-id, where known.
    pub build_id: Option<String>,
    /// The release (`uname -r`), where known (Linux, once identified).
    pub release: Option<String>,
    /// The KASLR slide of the kernel text, hex, where known (Linux, once identified).
    pub kaslr_slide: Option<String>,
    /// The image booted (`None` for a guest vsplice attached to).
    pub image: Option<String>,
}

impl KernelInfo {
    /// What an identified kernel tells of itself; `image` as booted.
    pub fn of(target: &dyn TargetKernel, image: Option<String>) -> Self {
        Self {
            kind: target.kind().name().to_owned(),
            build_id: target.build_id().map(str::to_owned),
            release: target.release().map(str::to_owned),
            kaslr_slide: target.kaslr_slide().map(|s| format!("{s:#x}")),
            image,
        }
    }

    /// A kernel not (yet) identified.
    pub fn unidentified(kind: &str, image: Option<String>) -> Self {
        Self { kind: kind.to_owned(), build_id: None, release: None, kaslr_slide: None, image }
    }
}

/// What runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hypervisor {
    /// This VMM (`vsplice run`), over KVM.
    Kvm,
    /// Another VMM, reached through its gdbstub (`vsplice attach`).
    Gdbstub,
    /// Another VMM (QEMU), attached with its RAM file (`vsplice attach
    /// --mem-path --qmp`): memory through the file, registers (and stops,
    /// unless `--stop-via qmp`) through its gdbstub ([`SharedMemoryInfo`]).
    GdbstubShm,
}

/// How an attached guest's memory, stops and writes go when its RAM file is
/// used (`GET /vm`'s `shared_memory`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedMemoryInfo {
    /// The RAM file (`--mem-path`).
    pub mem_path: String,
    /// `gdb` (the gdbstub's interrupt and continue) or `qmp` (`stop`/`cont`).
    pub stop_via: &'static str,
    /// `gdbstub` (under TCG: QEMU drops its translations of what is written)
    /// or `file` (under KVM).
    pub writes: &'static str,
}

/// The guest agent's doorbell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentInfo {
    /// True while an agent has announced its descriptor.
    pub announced: bool,
    /// The descriptor's guest-physical address.
    pub descriptor_gpa: Option<u64>,
    /// Doorbell rings so far (announcements and goodbyes).
    pub rings: u64,
}

/// `GET /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInfo {
    /// State.
    pub state: VmState,
    /// What runs the guest.
    pub hypervisor: Hypervisor,
    /// vCPUs.
    pub vcpus: usize,
    /// Guest memory in MiB, arena included (`None` when attached through
    /// the gdbstub alone: not known; with the RAM file, its size).
    pub memory_mib: Option<u64>,
    /// The patch arena, `START:SIZE`.
    pub arena: String,
    /// The kernel.
    pub kernel: KernelInfo,
    /// The agent doorbell.
    pub agent: AgentInfo,
    /// Boots so far (more than one after `--on-reboot restart`).
    pub boot: u64,
    /// Milliseconds since this boot started.
    pub uptime_ms: u64,
    /// True while a transaction is in flight.
    pub transaction_in_flight: bool,
    /// What the guest's console said this boot (`vsplice run` watches its
    /// serial output); `None` when attached (the console is QEMU's).
    pub console: Option<ConsoleCounts>,
    /// The RAM file in use when attached with one; `None` otherwise.
    pub shared_memory: Option<SharedMemoryInfo>,
}

/// Shared between the HTTP threads and the VMM thread.
#[derive(Debug)]
pub struct ApiShared {
    vm: Mutex<Option<(VmInfo, Instant)>>,
    busy: AtomicBool,
    /// Transaction results and guest state changes.
    pub events: EventLog,
    /// The counters.
    pub metrics: Mutex<Metrics>,
    status: Mutex<Option<Status>>,
}

impl Default for ApiShared {
    fn default() -> Self {
        Self { vm: Mutex::new(None), busy: AtomicBool::new(false), events: EventLog::default(), metrics: Mutex::new(Metrics::default()), status: Mutex::new(None) }
    }
}

impl ApiShared {
    /// Claims the one transaction slot; false when another holds it.
    pub fn try_begin(&self) -> bool {
        self.busy.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Frees the transaction slot.
    pub fn end(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// True while a transaction is in flight.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Sets the VM's description (`uptime_ms` counts from `boot_started`).
    pub fn set_vm(&self, info: VmInfo, boot_started: Instant) {
        if let Ok(mut vm) = self.vm.lock() {
            *vm = Some((info, boot_started));
        }
        if let Ok(mut m) = self.metrics.lock() {
            m.set_guest_state(self.vm_state().map_or("exited", VmState::name));
        }
    }

    fn vm_state(&self) -> Option<VmState> {
        self.vm.lock().ok().and_then(|v| v.as_ref().map(|(i, _)| i.state))
    }

    /// The VM's description now.
    pub fn vm(&self) -> Option<VmInfo> {
        let vm = self.vm.lock().ok()?;
        let (info, started) = vm.as_ref()?;
        let mut info = info.clone();
        if info.state != VmState::Exited {
            info.uptime_ms = started.elapsed().as_millis() as u64;
        }
        info.transaction_in_flight = self.busy();
        Some(info)
    }

    /// Remembers the registry status last read.
    pub fn set_status(&self, status: Option<Status>) {
        let applied = status.as_ref().map_or(0, |s| s.patches.len() as u64);
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
        if let Ok(mut m) = self.metrics.lock() {
            m.set_patches_applied(applied);
        }
    }

    /// The registry status last read.
    pub fn status(&self) -> Option<Status> {
        self.status.lock().ok().and_then(|s| s.clone())
    }
}
