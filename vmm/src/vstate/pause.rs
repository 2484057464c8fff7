//! vCPU threads and the whole-VM pause.
//!
//! Each vCPU runs on its own thread. The controller parks all of them as one
//! operation: it asks each thread to pause, kicks it out of `KVM_RUN` with a
//! signal whose handler sets `immediate_exit`, and waits until every thread
//! has done one completion run (so pending port I/O finishes and registers are
//! consistent), taken its register snapshot and parked. Either every vCPU
//! parks within the time-out or every one is released again: never a
//! half-paused VM.

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};
use vsplice_patcher::model::backend::VcpuState;
use vsplice_patcher::model::chain;

use super::memory::GuestMemory;
use super::vcpu::{ExitAction, GuestExit, Vcpu};
use crate::devices::bus::PioBus;

/// Default bound on how long a pause may take before it is abandoned.
pub const DEFAULT_PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a vCPU that has not parked yet is kicked again.
const KICK_INTERVAL: Duration = Duration::from_millis(1);

/// Why a pause or resume did not happen.
#[derive(Debug, Error)]
pub enum PauseError {
    /// Not every vCPU parked in time; all were released again.
    #[error("vCPUs {stuck:?} did not park within {timeout:?}; the VM was left running")]
    Timeout {
        /// vCPUs that did not park.
        stuck: Vec<usize>,
        /// The bound that was exceeded.
        timeout: Duration,
    },
    /// The guest has stopped (or is stopping); there is nothing to pause.
    #[error("the guest is shutting down")]
    GuestGone,
    /// A parked vCPU's registers could not be read; all were released again.
    #[error("vCPU {vcpu} parked but its registers could not be read: {message}")]
    Snapshot {
        /// vCPU index.
        vcpu: usize,
        /// The error.
        message: String,
    },
    /// A vCPU thread or its lock is broken.
    #[error("vCPU {0} thread is broken")]
    Broken(usize),
}

impl PauseError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "pause_timeout",
            Self::GuestGone => "guest_gone",
            Self::Snapshot { .. } => "snapshot_failed",
            Self::Broken(_) => "vcpu_broken",
        }
    }
}

/// Why vCPU threads could not be started.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// A thread could not be spawned.
    #[error("cannot spawn the thread of vCPU {index}")]
    Thread {
        /// vCPU index.
        index: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl SpawnError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Signal(_) => "signal_handler_failed",
            Self::Thread { .. } => "thread_spawn_failed",
        }
    }
}

/// What the controller asks of a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Run,
    Pause,
    Finish,
}

#[derive(Debug)]
struct Control {
    request: Request,
    parked: bool,
    /// When the vCPU last parked: a park after the pause's deadline is a
    /// time-out even when the waiting thread only looks after both happened.
    parked_at: Option<Instant>,
    exited: bool,
    snapshot: Option<Result<VcpuState, String>>,
}

#[derive(Debug)]
struct Shared {
    control: Mutex<Control>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Control> {
        // A poisoned lock only means another thread panicked while holding it;
        // the state it guards is plain data and still meaningful.
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where vCPU threads report that the guest is finished: the first report wins.
#[derive(Debug, Clone)]
pub struct ExitNotifier {
    tx: mpsc::Sender<GuestExit>,
    evt: Arc<EventFd>,
}

impl ExitNotifier {
    /// A notifier and the receiver of its reports; `evt` is signalled on each report.
    pub fn new(evt: Arc<EventFd>) -> (Self, mpsc::Receiver<GuestExit>) {
        let (tx, rx) = mpsc::channel();
        (Self { tx, evt }, rx)
    }

    fn notify(&self, exit: GuestExit) {
        let _ = self.tx.send(exit);
        if let Err(e) = self.evt.write(1) {
            tracing::error!(error = %e, "cannot signal the exit eventfd");
        }
    }
}

thread_local! {
    /// This thread's `kvm_run` page, so the kick handler can set `immediate_exit`.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own mapped kvm_run page, set before
        // the thread first enters KVM_RUN and cleared before the page is unmapped.
        // A volatile byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

struct VcpuThread {
    vcpu: Vcpu,
    shared: Arc<Shared>,
    bus: PioBus,
    mem: GuestMemory,
    exits: ExitNotifier,
}

impl VcpuThread {
    fn run(mut self) {
        KVM_RUN.with(|c| c.set(self.vcpu.fd.get_kvm_run() as *mut kvm_run));
        loop {
            let request = self.shared.lock().request;
            match request {
                Request::Finish => break,
                Request::Pause => {
                    self.park();
                    continue;
                }
                Request::Run => {}
            }
            match self.vcpu.run_once(&self.bus, &self.mem) {
                Ok(ExitAction::Continue) => {}
                Ok(ExitAction::Stop(exit)) => {
                    self.stop(exit);
                    break;
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.vcpu.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => {
                    let message = format!("KVM_RUN failed: {e}");
                    self.stop(GuestExit::Fatal { vcpu: self.vcpu.index, message });
                    break;
                }
            }
        }
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }

    /// Completes pending I/O without entering the guest, snapshots, parks until released.
    fn park(&mut self) {
        self.vcpu.fd.set_kvm_immediate_exit(1);
        loop {
            match self.vcpu.run_once(&self.bus, &self.mem) {
                // An exit that was already pending is handled like any other; go again.
                Ok(ExitAction::Continue) => continue,
                Ok(ExitAction::Stop(exit)) => {
                    self.vcpu.fd.set_kvm_immediate_exit(0);
                    self.stop(exit);
                    return;
                }
                Err(_) => break,
            }
        }
        self.vcpu.fd.set_kvm_immediate_exit(0);
        let snapshot = self.vcpu.snapshot().map_err(|e| chain(&e));
        let mut ctl = self.shared.lock();
        ctl.snapshot = Some(snapshot);
        ctl.parked = true;
        ctl.parked_at = Some(Instant::now());
        self.shared.changed.notify_all();
        while ctl.request == Request::Pause {
            ctl = self.shared.changed.wait(ctl).unwrap_or_else(|p| p.into_inner());
        }
        ctl.parked = false;
        ctl.snapshot = None;
        self.shared.changed.notify_all();
    }

    fn stop(&self, exit: GuestExit) {
        tracing::info!(vcpu = self.vcpu.index, %exit, "guest stopped");
        {
            let mut ctl = self.shared.lock();
            ctl.exited = true;
            self.shared.changed.notify_all();
        }
        self.exits.notify(exit);
    }
}

struct Handle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    fn kick(&self) {
        if let Some(t) = &self.thread {
            // SAFETY: the pthread id comes from a JoinHandle we still own, so the
            // thread has not been joined; the signal's handler is installed first.
            unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
        }
    }

    fn set_request(&self, request: Request) {
        let mut ctl = self.shared.lock();
        ctl.request = request;
        self.shared.changed.notify_all();
    }
}

/// The running vCPU threads of one VM.
pub struct VcpuThreads {
    handles: Vec<Handle>,
    paused: Option<Vec<VcpuState>>,
    timeout: Duration,
}

impl std::fmt::Debug for VcpuThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuThreads")
            .field("vcpus", &self.handles.len())
            .field("paused", &self.paused.is_some())
            .finish()
    }
}

impl VcpuThreads {
    /// Starts one thread per vCPU; they enter the guest at once.
    pub fn spawn(vcpus: Vec<Vcpu>, bus: &PioBus, mem: &GuestMemory, exits: &ExitNotifier) -> Result<Self, SpawnError> {
        register_signal_handler(kick_signal(), kick_handler).map_err(SpawnError::Signal)?;
        let mut threads = Self { handles: Vec::new(), paused: None, timeout: DEFAULT_PAUSE_TIMEOUT };
        for vcpu in vcpus {
            let index = vcpu.index;
            let shared = Arc::new(Shared {
                control: Mutex::new(Control { request: Request::Run, parked: false, parked_at: None, exited: false, snapshot: None }),
                changed: Condvar::new(),
            });
            let worker =
                VcpuThread { vcpu, shared: shared.clone(), bus: bus.clone(), mem: mem.clone(), exits: exits.clone() };
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || worker.run())
                .map_err(|source| SpawnError::Thread { index, source })?;
            threads.handles.push(Handle { shared, thread: Some(thread) });
        }
        Ok(threads)
    }

    /// Sets the bound on how long [`VcpuThreads::pause`] may take.
    pub fn set_pause_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Number of vCPUs.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// True while the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    fn release_all(&self) {
        for h in &self.handles {
            h.set_request(Request::Run);
        }
    }

    /// Stops every vCPU thread for good and waits for them.
    pub fn finish(&mut self) {
        for h in &self.handles {
            h.set_request(Request::Finish);
        }
        for h in &mut self.handles {
            h.kick();
            if let Some(t) = h.thread.take() {
                if t.join().is_err() {
                    tracing::error!("a vCPU thread panicked");
                }
            }
        }
        self.paused = None;
    }

    /// Waits until every vCPU thread has left its park, so that a resume
    /// returns only once every vCPU is back on its way into the guest.
    fn wait_released(&self, deadline: Instant) -> Result<(), PauseError> {
        for (index, h) in self.handles.iter().enumerate() {
            let mut ctl = h.shared.lock();
            while ctl.parked && !ctl.exited {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    return Err(PauseError::Broken(index));
                };
                ctl = h.shared.changed.wait_timeout(ctl, left).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
        Ok(())
    }

    fn wait_parked(&self, deadline: Instant) -> Result<Vec<VcpuState>, PauseError> {
        let mut states = Vec::with_capacity(self.handles.len());
        for (index, h) in self.handles.iter().enumerate() {
            let mut ctl = h.shared.lock();
            loop {
                if ctl.exited {
                    return Err(PauseError::GuestGone);
                }
                let now = Instant::now();
                if ctl.parked && ctl.parked_at.is_none_or(|at| at <= deadline) {
                    break;
                }
                if now >= deadline {
                    drop(ctl);
                    let stuck = self
                        .handles
                        .iter()
                        .enumerate()
                        .filter(|(_, h)| {
                            let c = h.shared.lock();
                            !c.parked || c.parked_at.is_some_and(|at| at > deadline)
                        })
                        .map(|(i, _)| i)
                        .collect();
                    return Err(PauseError::Timeout { stuck, timeout: self.timeout });
                }
                drop(ctl);
                h.kick();
                ctl = h.shared.lock();
                if !ctl.parked && !ctl.exited {
                    let wait = KICK_INTERVAL.min(deadline - now);
                    ctl = h.shared.changed.wait_timeout(ctl, wait).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
            match ctl.snapshot.clone() {
                Some(Ok(state)) => states.push(state),
                Some(Err(message)) => return Err(PauseError::Snapshot { vcpu: index, message }),
                None => return Err(PauseError::Broken(index)),
            }
        }
        Ok(states)
    }

    /// Parks every vCPU and returns each one's state, ordered by index:
    /// all of them park within the time-out, or all are released again.
    /// While already paused, returns the states taken then.
    pub fn pause(&mut self) -> Result<Vec<VcpuState>, PauseError> {
        if let Some(states) = &self.paused {
            tracing::debug!("pause requested while already paused");
            return Ok(states.clone());
        }
        if self.handles.iter().any(|h| h.thread.is_none() || h.shared.lock().exited) {
            return Err(PauseError::GuestGone);
        }
        let deadline = Instant::now() + self.timeout;
        for h in &self.handles {
            h.set_request(Request::Pause);
            h.kick();
        }
        match self.wait_parked(deadline) {
            Ok(states) => {
                self.paused = Some(states.clone());
                Ok(states)
            }
            Err(e) => {
                self.release_all();
                Err(e)
            }
        }
    }

    /// Releases every vCPU parked by [`VcpuThreads::pause`] and waits until
    /// each has left its park; a no-op while running.
    pub fn resume(&mut self) -> Result<(), PauseError> {
        if self.paused.take().is_none() {
            tracing::debug!("resume requested while running");
            return Ok(());
        }
        self.release_all();
        self.wait_released(Instant::now() + self.timeout)
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        self.finish();
    }
}
