//! A running VM: its memory, its vCPU threads, its devices and the event
//! loop that waits for the guest to finish. It is also the in-process
//! [`Backend`] the patcher uses: pause, read and write guest memory, resume.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vsplice_patcher::model::backend::{Backend, BackendError, VcpuState};
use vsplice_patcher::model::ArenaRange;
use vsplice_patcher::model::chain;

use crate::devices::agent_doorbell::AgentAnnouncement;
use crate::devices::console_watch::{ConsoleCounters, ConsoleCounts};
use crate::devices::serial::{SerialDevice, SerialInput};
use crate::vstate::memory::GuestMemory;
use crate::vstate::pause::{PauseError, VcpuThreads};
use crate::vstate::vcpu::GuestExit;
use crate::vstate::vm::Vm;

/// Wakes the event loop when a vCPU reports the guest's end.
#[derive(Debug)]
struct ExitWatcher {
    evt: Arc<EventFd>,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.evt.as_ref(), EventSet::IN)) {
            tracing::error!(error = %e, "cannot watch the exit eventfd");
        }
    }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A built, running VM.
pub struct Vmm {
    // Field order is drop order: vCPU threads stop before memory and the VM go.
    vcpus: VcpuThreads,
    exits: Receiver<GuestExit>,
    exit: Option<GuestExit>,
    events: Option<EventManager<Subscriber>>,
    exit_evt: Arc<EventFd>,
    serial: Arc<Mutex<SerialDevice>>,
    stdin_input: bool,
    arena: ArenaRange,
    agent: AgentAnnouncement,
    console: Arc<ConsoleCounters>,
    mem: GuestMemory,
    _vm: Vm,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm").field("vcpus", &self.vcpus).field("arena", &self.arena).finish_non_exhaustive()
    }
}

/// Everything a [`Vmm`] is made of, as [`crate::builder::build`] creates it.
pub(crate) struct VmmParts {
    /// The KVM VM (kept open until the vCPU threads and memory are gone).
    pub vm: Vm,
    /// Guest RAM.
    pub mem: GuestMemory,
    /// The running vCPU threads.
    pub vcpus: VcpuThreads,
    /// Where the vCPU threads report the guest's end.
    pub exits: Receiver<GuestExit>,
    /// Signalled with each report on `exits`.
    pub exit_evt: Arc<EventFd>,
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// True when stdin feeds the serial input.
    pub stdin_input: bool,
    /// Guest-physical range of the patch arena.
    pub arena: ArenaRange,
    /// What the guest agent announces through the doorbell.
    pub agent: AgentAnnouncement,
    /// The counts of the serial output's watcher.
    pub console: Arc<ConsoleCounters>,
}

impl Vmm {
    pub(crate) fn new(parts: VmmParts) -> Self {
        let VmmParts { vm, mem, vcpus, exits, exit_evt, serial, stdin_input, arena, agent, console } = parts;
        Self { vcpus, exits, exit: None, events: None, exit_evt, serial, stdin_input, arena, agent, console, mem, _vm: vm }
    }

    /// What the guest's console said so far this boot: lines, and those with
    /// `Oops`, `BUG:`, `WARNING:`, `Kernel panic` (the VMM watches its serial output).
    pub fn console(&self) -> ConsoleCounts {
        self.console.snapshot()
    }

    /// What the guest agent announced through the doorbell: the guest-physical
    /// address of its descriptor (`gpa()` is `None` without an agent).
    pub fn agent(&self) -> &AgentAnnouncement {
        &self.agent
    }

    /// Guest memory (shared host mapping).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Guest-physical range of the patch arena (reserved in the e820 map).
    pub fn arena(&self) -> ArenaRange {
        self.arena
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.count()
    }

    /// True while the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.vcpus.is_paused()
    }

    /// The guest's end, if it has ended (non-blocking).
    pub fn exit_status(&mut self) -> Option<GuestExit> {
        if self.exit.is_none() {
            match self.exits.try_recv() {
                Ok(exit) => self.exit = Some(exit),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
            }
        }
        self.exit.clone()
    }

    fn event_manager(&mut self) -> Result<&mut EventManager<Subscriber>, std::io::Error> {
        if self.events.is_none() {
            let mut em: EventManager<Subscriber> =
                EventManager::new().map_err(|e| std::io::Error::other(format!("event manager: {e:?}")))?;
            em.add_subscriber(Arc::new(Mutex::new(ExitWatcher { evt: self.exit_evt.clone() })));
            if self.stdin_input {
                em.add_subscriber(Arc::new(Mutex::new(SerialInput::new(self.serial.clone()))));
            }
            self.events = Some(em);
        }
        self.events.as_mut().ok_or_else(|| std::io::Error::other("event manager missing"))
    }

    /// Runs the device event loop until the guest ends or `timeout` passes.
    /// Returns the guest's end, or `None` on time-out.
    pub fn wait_for_exit(&mut self, timeout: Option<Duration>) -> Result<Option<GuestExit>, std::io::Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(exit) = self.exit_status() {
                return Ok(Some(exit));
            }
            let wait_ms = match deadline {
                None => 100,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    None => return Ok(None),
                    Some(left) => left.as_millis().min(100) as i32,
                },
            };
            self.event_manager()?
                .run_with_timeout(wait_ms)
                .map_err(|e| std::io::Error::other(format!("event loop: {e:?}")))?;
        }
    }

    /// Handles the device events pending now (stdin to the serial port, the
    /// exit eventfd) without waiting. Returns the guest's end, if it has ended.
    pub fn poll_events(&mut self) -> Result<Option<GuestExit>, std::io::Error> {
        if let Some(exit) = self.exit_status() {
            return Ok(Some(exit));
        }
        self.event_manager()?
            .run_with_timeout(0)
            .map_err(|e| std::io::Error::other(format!("event loop: {e:?}")))?;
        Ok(self.exit_status())
    }

    /// Stops every vCPU thread (the guest is not resumable afterwards).
    pub fn shutdown(&mut self) {
        self.vcpus.finish();
    }

    fn check_range(&self, gpa: u64, len: usize) -> Result<(), BackendError> {
        use vm_memory::GuestMemoryBackend;
        if len == 0 || self.mem.check_range(GuestAddress(gpa), len) {
            Ok(())
        } else {
            Err(BackendError::BadAddress { gpa, len: len as u64 })
        }
    }
}

impl Vmm {
    /// Parks every vCPU and returns their states (see [`VcpuThreads::pause`]).
    pub fn pause(&mut self) -> Result<Vec<VcpuState>, PauseError> {
        if self.exit_status().is_some() {
            return Err(PauseError::GuestGone);
        }
        self.vcpus.pause()
    }

    /// Releases every parked vCPU; a no-op while running.
    pub fn resume(&mut self) -> Result<(), PauseError> {
        self.vcpus.resume()
    }
}

impl From<PauseError> for BackendError {
    fn from(e: PauseError) -> Self {
        match e {
            PauseError::Timeout { timeout, .. } => BackendError::PauseTimeout { timeout_ms: timeout.as_millis() as u64 },
            PauseError::GuestGone => BackendError::GuestGone,
            other => BackendError::Transport(chain(&other)),
        }
    }
}

impl Backend for Vmm {
    fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
        Ok(Vmm::pause(self)?)
    }

    fn resume(&mut self) -> Result<(), BackendError> {
        Ok(Vmm::resume(self)?)
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.check_range(gpa, buf.len())?;
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| BackendError::BadAddress { gpa, len: buf.len() as u64 })
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        self.check_range(gpa, data.len())?;
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| BackendError::BadAddress { gpa, len: data.len() as u64 })
    }

    /// Guest RAM is mapped in this process: a read is a copy.
    fn direct_reads(&self) -> bool {
        true
    }
}
