//! The API as `vsplice attach` drives it (the analogue of [`super::service`]
//! for `vsplice run`): a guest that another VMM runs, reached through its
//! gdbstub, attached and identified once. Between requests the guest runs
//! freely; each turn of the loop checks, without stopping it, that the
//! gdbstub is still there, publishes the VM's state and serves the requests
//! waiting (memory accesses take short stops; a transaction pauses as
//! always). A stop the guest makes on its own is served when it is on a
//! module hook, resumed when it is a debug stop at none of the daemon's
//! breakpoints (one an earlier client left: `vsplice_patcher::gdb::stop`),
//! and left alone otherwise (QEMU's monitor stopped the VM). The loop ends
//! when asked to (a signal) or when the gdbstub
//! goes (QEMU exited): a stable cause, `gdbstub_gone`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use vsplice_patcher::gdb::{GdbError, OwnStop};
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::backend::Backend;
use vsplice_patcher::model::{ArenaRange, CheckMode, Incremental};

use super::handler::RequestHandler;
use super::pending::ModuleHooks;
use super::http::{ApiServer, SocketError};
use super::state::{AgentInfo, ApiShared, Hypervisor, KernelInfo, SharedMemoryInfo, VmInfo, VmState};
use crate::livepatch::DesiredPatches;

/// Longest wait for a request before the next turn (the signal flag and the
/// gdbstub are looked at every turn).
pub const TURN: Duration = Duration::from_millis(50);

/// How long the requests being answered at shutdown get to write their answers.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What the loop needs of an attached guest besides memory and the pause.
pub trait Attachment: Backend {
    /// True while the guest runs (false: stopped, e.g. kept so at attach).
    fn running(&self) -> bool;
    /// Checks without blocking that the connection to the guest still
    /// stands (an error: the gdbstub is gone).
    fn check_alive(&mut self) -> Result<(), GdbError>;
    /// Sets exactly the hardware breakpoints `want` (guest-virtual
    /// addresses). Default: a guest without them (none can be set).
    fn sync_breakpoints(&mut self, want: &BTreeSet<u64>) -> Result<(), GdbError> {
        if want.is_empty() {
            Ok(())
        } else {
            Err(GdbError::Unsupported("hardware breakpoints"))
        }
    }
    /// After a stop the guest reported on its own, what it was: on one of
    /// the breakpoints, a debug stop nobody waits on, or someone else's.
    fn own_stop(&mut self) -> Result<Option<OwnStop>, GdbError> {
        Ok(None)
    }
    /// Removes the breakpoints an earlier client left at `rips` (after an
    /// [`OwnStop::Stray`]); the addresses where one was.
    fn clear_stray(&mut self, rips: &[u64]) -> Vec<u64> {
        let _ = rips;
        Vec::new()
    }
    /// Moves vCPU `index` past the breakpoint at `addr` (the guest stays stopped).
    fn step_over(&mut self, index: usize, addr: u64) -> Result<(), GdbError> {
        let _ = (index, addr);
        Ok(())
    }
}

/// Why the daemon's loop ended badly.
#[derive(Debug, thiserror::Error)]
pub enum AttachedError {
    /// The gdbstub connection closed or reported the guest's exit.
    #[error("the gdbstub connection is gone (QEMU exited?)")]
    GdbstubGone(#[source] GdbError),
}

impl AttachedError {
    /// Stable cause.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::GdbstubGone(_) => "gdbstub_gone",
        }
    }
}

/// What `GET /vm` says of an attached guest that never changes.
#[derive(Debug, Clone)]
pub struct AttachedVm {
    /// vCPUs (the gdbstub's threads at attach).
    pub vcpus: usize,
    /// The arena the guest was booted with reserved.
    pub arena: ArenaRange,
    /// The safety check of every transaction unless its request names one.
    pub check: CheckMode,
    /// The incremental check of every transaction (`--incremental`).
    pub incremental: Incremental,
    /// The identified kernel.
    pub kernel: KernelInfo,
    /// The RAM file, when attached with one (memory through it).
    pub shared: Option<SharedMemoryInfo>,
    /// Guest memory in MiB, when known (the RAM file's size).
    pub memory_mib: Option<u64>,
}

impl AttachedVm {
    /// The description of an attached guest running `target`.
    pub fn new(target: &dyn TargetKernel, vcpus: usize, arena: ArenaRange, check: CheckMode) -> Self {
        Self { vcpus, arena, check, incremental: Incremental::Off, kernel: KernelInfo::of(target, None), shared: None, memory_mib: None }
    }

    fn info(&self, state: VmState) -> VmInfo {
        VmInfo {
            state,
            hypervisor: if self.shared.is_some() { Hypervisor::GdbstubShm } else { Hypervisor::Gdbstub },
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            arena: self.arena.to_string(),
            kernel: self.kernel.clone(),
            // The doorbell is this VMM's device; through a gdbstub there is none.
            agent: AgentInfo { announced: false, descriptor_gpa: None, rings: 0 },
            boot: 1,
            uptime_ms: 0,
            transaction_in_flight: false,
            console: None,
            shared_memory: self.shared.clone(),
        }
    }
}

/// `0x…, 0x…`: addresses as the events print them.
fn hex_list(addrs: &[u64]) -> String {
    addrs.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>().join(", ")
}

/// Code no task runs after boot: where the probe of hardware breakpoints
/// is set (never on a hook itself: a module loading while the daemon
/// starts would stop there with the breakpoint no longer wanted, and the
/// guest would be left stopped).
const PROBE_AT: [&str; 2] = ["startup_64", "_text"];

/// The module hooks of `target`, checked to be settable on `guest` (a
/// breakpoint set and removed once at boot-only code); why not otherwise
/// (then `when_loaded` is refused).
fn probe_hooks<G: Attachment>(guest: &mut G, target: &dyn TargetKernel) -> Result<ModuleHooks, String> {
    let hooks = ModuleHooks::resolve(target)?;
    let probe = PROBE_AT.iter().find_map(|n| target.symbols().all(n).first().map(|s| s.addr)).unwrap_or(hooks.coming);
    let tried = guest.sync_breakpoints(&BTreeSet::from([probe]));
    let cleared = guest.sync_breakpoints(&BTreeSet::new());
    match tried.and(cleared) {
        Ok(()) => Ok(hooks),
        Err(e) => Err(format!("the gdbstub cannot set hardware breakpoints ({}): {e}; patches cannot wait for their module", e.cause())),
    }
}

/// The running API of one `vsplice attach`.
#[derive(Debug)]
pub struct AttachedService {
    server: ApiServer,
    handler: RequestHandler,
    shared: Arc<ApiShared>,
    vm: AttachedVm,
    started: Instant,
}

impl AttachedService {
    /// Creates the socket at `path` (mode 0600; a live socket refused) and
    /// starts serving it for the guest `vm`.
    pub fn start(path: &Path, vm: AttachedVm) -> Result<Self, SocketError> {
        let shared = Arc::new(ApiShared::default());
        let (tx, rx) = mpsc::channel();
        let server = ApiServer::start(path, shared.clone(), tx)?;
        let me = Self { server, handler: RequestHandler::new(shared.clone(), rx).with_check(vm.check).with_incremental(vm.incremental), shared, vm, started: Instant::now() };
        me.publish(VmState::Running);
        Ok(me)
    }

    /// The shared state (events, metrics).
    pub fn shared(&self) -> &Arc<ApiShared> {
        &self.shared
    }

    /// Which patches `PUT /patches` lets through (`--trusted-keys`, `--allow-unsigned`).
    pub fn set_trust(&mut self, trust: vsplice_patcher::patch::TrustPolicy) {
        self.handler.set_trust(trust);
    }

    /// Keeps the pending patches in `store` (`--pending-dir`); the ones it
    /// holds are sent back through the API at the loop's first turn with
    /// the guest running.
    pub fn set_pending_store(&mut self, store: super::pending_store::PendingStore) {
        self.handler.set_pending_store(store);
    }

    fn publish(&self, state: VmState) {
        self.shared.set_vm(self.vm.info(state), self.started);
    }

    /// Serves the guest until `stop` is set (`Ok`) or the gdbstub goes.
    pub fn run<G: Attachment>(&mut self, guest: &mut G, target: &dyn TargetKernel, stop: &AtomicBool) -> Result<(), AttachedError> {
        let arena = self.vm.arena;
        let state = |g: &G| if g.running() { VmState::Running } else { VmState::Paused };
        let mut last = state(guest);
        let how = if self.vm.shared.is_some() { "attached through the gdbstub and the RAM file" } else { "attached through the gdbstub" };
        self.shared.events.guest_state(last.name(), how);
        self.handler.refresh_status(guest, arena, target);
        self.handler.set_hooks(probe_hooks(guest, target));
        // Nothing re-applies patches here (no reboot under this VMM's control).
        let mut desired = DesiredPatches::new();
        while !stop.load(Ordering::Acquire) {
            if let Err(e) = guest.check_alive() {
                self.publish(VmState::Exited);
                self.shared.events.guest_state("exited", format!("the gdbstub is gone: {e}"));
                return Err(AttachedError::GdbstubGone(e));
            }
            // Stopped on a module hook: serve it, step over it, run on.
            match guest.own_stop() {
                Ok(Some(OwnStop::Hook(hit))) => {
                    self.handler.module_hook(guest, arena, target, &hit, &mut desired);
                    self.sync_hooks(guest);
                    if let Err(e) = guest.step_over(hit.index, hit.rip) {
                        tracing::warn!(cause = e.cause(), "stepping over a module hook: {e}");
                    }
                    if let Err(e) = guest.resume() {
                        tracing::warn!("resuming after a module hook: {e}");
                    }
                    last = state(guest);
                    continue;
                }
                // A debug stop nobody waits on (a breakpoint or step of a
                // client that died): never leave the guest stopped for it.
                Ok(Some(OwnStop::Stray(rips))) => {
                    let removed = guest.clear_stray(&rips);
                    let left = if removed.is_empty() { String::new() } else { format!("; removed the breakpoint(s) left at {}", hex_list(&removed)) };
                    tracing::warn!(rips = %hex_list(&rips), "a debug stop at none of vsplice's breakpoints: resuming the guest");
                    match guest.resume() {
                        Ok(()) => self.shared.events.guest_state("running", format!("resumed a debug stop at none of vsplice's breakpoints (vCPU RIPs {}){left}", hex_list(&rips))),
                        Err(e) => tracing::warn!("resuming after a stray debug stop: {e}"),
                    }
                    last = state(guest);
                    continue;
                }
                Ok(Some(OwnStop::External(_)) | None) => {}
                Err(e) => tracing::warn!(cause = e.cause(), "reading the vCPUs after a stop: {e}"),
            }
            // Seen between requests: a recovery let a kept guest run, or
            // someone stopped it (QEMU's monitor).
            let now = state(guest);
            if now != last {
                let why = if now == VmState::Running { "the guest runs again" } else { "the guest was stopped outside vsplice" };
                self.shared.events.guest_state(now.name(), why);
                last = now;
            }
            self.publish(now);
            // The pending dir's patches, once the guest runs (not while it
            // is kept stopped for a half-written transaction).
            if now == VmState::Running {
                self.handler.restore_pending(guest, arena, target, &mut desired);
            }
            self.handler.serve_waiting(guest, arena, Ok(target), &mut desired, TURN);
            self.sync_hooks(guest);
        }
        Ok(())
    }

    /// Sets the module hooks the handler needs now (none: none set).
    fn sync_hooks<G: Attachment>(&mut self, guest: &mut G) {
        let want = self.handler.wanted_breakpoints();
        if let Err(e) = guest.sync_breakpoints(&want) {
            self.handler.hooks_failed(format!("the gdbstub could not set the module hooks ({}): {e}", e.cause()));
        }
    }

    /// Answers what is still waiting with `guest_gone`, gives the answers
    /// being written a moment, and removes the socket. Returns what became
    /// of the patches still pending (kept in the pending dir, or dropped).
    pub fn finish(self) -> Option<String> {
        let Self { server, mut handler, .. } = self;
        handler.refuse_all();
        let pending = handler.pending_at_exit();
        // From here a request finds nobody to answer it: `guest_gone` at once.
        drop(handler);
        server.shutdown(SHUTDOWN_GRACE);
        pending
    }
}
