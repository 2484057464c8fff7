//! [`Backend`] over a gdbstub: all-stop interrupt, per-vCPU registers through
//! thread selection, guest-physical memory through QEMU's physical memory
//! mode, writes through the stub (which keeps translated code coherent).
//! With a [`SharedPlane`] (QEMU's RAM file), memory goes through the file
//! instead (writes under TCG still through the stub: see [`crate::shm::plane`]),
//! and stop/continue may go through QMP.

use std::collections::BTreeSet;

use tracing::{debug, warn};

use super::client::{GdbClient, GdbOptions};
use super::error::GdbError;
use super::stop::{stop_signal, OwnStop, SIGTRAP};
use super::registers::RegMap;
use crate::model::backend::{Backend, BackendError, VcpuState};
use crate::shm::{SharedPlane, StopVia, WriteRoute};

/// A guest reached through a gdbstub.
#[derive(Debug)]
pub struct GdbBackend {
    client: GdbClient,
    regs: RegMap,
    threads: Vec<String>,
    running: bool,
    /// When the stub has no physical mode: the virtual address at which the
    /// guest maps all physical memory linearly (set by the OS layer).
    direct_map: Option<u64>,
    /// The guest's RAM file, when attached in shared-memory mode.
    shared: Option<SharedPlane>,
    /// Times the running guest was stopped.
    stops: u64,
    /// Hardware breakpoints set (guest-virtual addresses).
    breakpoints: BTreeSet<u64>,
    /// The signal of the stop the stub reported on its own since the last look.
    unsolicited_stop: Option<u8>,
}

impl GdbBackend {
    /// Connect to `host:port` or a Unix socket path. QEMU stops the guest
    /// when a debugger connects, so the backend starts out stopped.
    pub fn connect(addr: &str, opts: GdbOptions) -> Result<Self, GdbError> {
        let client = GdbClient::connect(addr, opts)?;
        Self::with_client(client)
    }

    /// Build on a negotiated client (tests).
    pub fn with_client(mut client: GdbClient) -> Result<Self, GdbError> {
        // Ask why it is stopped: this also confirms the guest is stopped.
        let why = client.stop_reason()?;
        debug!(stop = %String::from_utf8_lossy(&why), "attached");
        let td = client.target_description()?;
        let regs = RegMap::new(&td)?;
        let threads = client.threads()?;
        if threads.is_empty() {
            return Err(GdbError::protocol(b"qfThreadInfo", b"no threads"));
        }
        if client.features.qemu_phys && client.options().phys_mode {
            client.set_phys_mode(true)?;
        } else {
            warn!("gdbstub has no physical memory mode; physical access needs set_direct_map()");
        }
        Ok(Self { client, regs, threads, running: false, direct_map: None, shared: None, stops: 0, breakpoints: BTreeSet::new(), unsolicited_stop: None })
    }

    /// For stubs without a physical mode: physical address P is read at
    /// virtual address `base + P` (the guest's direct map).
    pub fn set_direct_map(&mut self, base: u64) {
        self.direct_map = Some(base);
    }

    /// Memory through `plane` from now on (checked against the stub by the
    /// caller first: see [`crate::attach::shared`]).
    pub fn set_shared(&mut self, plane: SharedPlane) {
        self.shared = Some(plane);
    }

    /// The shared-memory plane, when in use.
    pub fn shared(&self) -> Option<&SharedPlane> {
        self.shared.as_ref()
    }

    /// The shared-memory plane, mutably (tests change its write route).
    pub fn shared_mut(&mut self) -> Option<&mut SharedPlane> {
        self.shared.as_mut()
    }

    /// Back to memory through the stub; the plane is handed back.
    pub fn take_shared(&mut self) -> Option<SharedPlane> {
        self.shared.take()
    }

    /// Reads guest-physical memory through the stub even when a shared
    /// plane is in use (the cross-check of the plane against the stub).
    pub fn read_phys_stub(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        if self.running {
            return Err(BackendError::WrongState("memory reads need the guest stopped"));
        }
        let a = self.phys_addr(gpa, buf.len())?;
        let len = buf.len();
        self.client.read_memory(a, buf).map_err(|e| Self::map_mem_err(e, gpa, len))
    }

    fn interrupt(&mut self) -> Result<(), GdbError> {
        match self.shared.as_mut() {
            Some(p) if p.stop_via() == StopVia::Qmp => {
                p.qmp_stop().map_err(|e| GdbError::Io(std::io::Error::other(format!("QMP stop: {e} ({})", e.cause()))))?;
                self.client.wait_stop_reply().map(drop)
            }
            _ => self.client.interrupt().map(drop),
        }
    }

    fn cont(&mut self) -> Result<(), GdbError> {
        match self.shared.as_mut() {
            Some(p) if p.stop_via() == StopVia::Qmp => {
                p.qmp_cont().map_err(|e| GdbError::Io(std::io::Error::other(format!("QMP cont: {e} ({})", e.cause()))))
            }
            _ => self.client.cont(),
        }
    }

    /// True when `read_phys`/`write_phys` can work: the stub's physical
    /// mode is on, or a direct map was set.
    pub fn has_phys_access(&self) -> bool {
        self.client.phys_mode() || self.direct_map.is_some()
    }

    /// Read guest-VIRTUAL memory as the stub translates it (through the
    /// page tables of the selected vCPU), e.g. before physical access works.
    pub fn read_virt(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), GdbError> {
        if self.running {
            return Err(GdbError::WrongState("memory reads need the guest stopped"));
        }
        let phys = self.client.phys_mode();
        if phys {
            self.client.set_phys_mode(false)?;
        }
        let r = self.client.read_memory(vaddr, buf);
        if phys {
            self.client.set_phys_mode(true)?;
        }
        r
    }

    /// The vCPU thread ids, in vCPU index order.
    pub fn threads(&self) -> &[String] {
        &self.threads
    }

    /// The underlying client.
    pub fn client(&mut self) -> &mut GdbClient {
        &mut self.client
    }

    /// How many times the running guest was stopped since the connection
    /// (every pause, and every short stop for a memory access).
    pub fn stops(&self) -> u64 {
        self.stops
    }

    /// True while the guest runs.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Checks, without blocking, that the stub is still there (a daemon
    /// calls it between requests while the guest runs). A stop the stub
    /// reports on its own (the VM stopped from QEMU's monitor) marks the
    /// guest stopped; an exit packet ([`GdbError::Exited`]: QEMU quits) or
    /// a closed connection ([`GdbError::Closed`]) is an error.
    pub fn check_alive(&mut self) -> Result<(), GdbError> {
        while let Some(p) = self.client.poll_notification()? {
            match (p.first(), stop_signal(&p)) {
                (Some(b'W') | Some(b'X'), _) => return Err(GdbError::Exited { reply: super::error::short(&p) }),
                (_, Some(signal)) => {
                    if self.running {
                        debug!(stop = %String::from_utf8_lossy(&p), "the guest stopped on its own (a breakpoint, or QEMU's monitor)");
                        self.unsolicited_stop = Some(signal);
                    }
                    self.running = false;
                }
                _ => debug!(packet = %String::from_utf8_lossy(&p), "ignoring an unsolicited gdbstub packet"),
            }
        }
        Ok(())
    }

    /// Detach: the stub lets the guest run and forgets this client (the
    /// hardware breakpoints set are removed first).
    pub fn detach(mut self) -> Result<(), GdbError> {
        if self.running {
            self.interrupt()?;
        }
        for a in std::mem::take(&mut self.breakpoints) {
            if let Err(e) = self.client.remove_hw_breakpoint(a) {
                warn!(addr = format_args!("{a:#x}"), "removing a breakpoint at detach: {e}");
            }
        }
        self.client.detach()
    }

    /// The hardware breakpoints set (guest-virtual addresses).
    pub fn breakpoints(&self) -> &BTreeSet<u64> {
        &self.breakpoints
    }

    /// Sets exactly the hardware breakpoints `want` (`Z1`/`z1`), stopping a
    /// running guest for the moment it takes. A stub without hardware
    /// breakpoints: [`GdbError::Unsupported`], nothing set.
    pub fn sync_breakpoints(&mut self, want: &BTreeSet<u64>) -> Result<(), GdbError> {
        if *want == self.breakpoints {
            return Ok(());
        }
        let was_running = self.running;
        if was_running {
            self.stops += 1;
            self.interrupt()?;
            self.running = false;
        }
        let mut r = Ok(());
        for a in self.breakpoints.difference(want).copied().collect::<Vec<_>>() {
            r = r.and_then(|()| self.client.remove_hw_breakpoint(a));
            if r.is_ok() {
                self.breakpoints.remove(&a);
            }
        }
        for a in want.difference(&self.breakpoints.clone()).copied().collect::<Vec<_>>() {
            r = r.and_then(|()| self.client.insert_hw_breakpoint(a));
            if r.is_ok() {
                self.breakpoints.insert(a);
            }
        }
        if was_running {
            self.cont()?;
            self.running = true;
        }
        r
    }

    /// After the stub reported a stop on its own, what it was
    /// ([`OwnStop`]); `None` when the guest runs or the stop was already
    /// looked at.
    pub fn own_stop(&mut self) -> Result<Option<OwnStop>, GdbError> {
        if self.running {
            return Ok(None);
        }
        let Some(signal) = self.unsolicited_stop.take() else { return Ok(None) };
        if signal != SIGTRAP {
            return Ok(Some(OwnStop::External(signal)));
        }
        let vcpus = self.read_vcpus()?;
        if let Some(hit) = vcpus.iter().find(|v| self.breakpoints.contains(&v.rip)) {
            return Ok(Some(OwnStop::Hook(Box::new(hit.clone()))));
        }
        Ok(Some(OwnStop::Stray(vcpus.iter().map(|v| v.rip).collect())))
    }

    /// After an [`OwnStop::Stray`]: removes the hardware and software
    /// breakpoints an earlier client may have left at `rips` (none of them
    /// this backend's), so that resuming does not stop there again. Returns
    /// the addresses where one was removed (the stub refuses the others).
    pub fn clear_stray(&mut self, rips: &[u64]) -> Vec<u64> {
        let mut removed = Vec::new();
        if self.running {
            return removed;
        }
        for &a in rips.iter().collect::<BTreeSet<_>>() {
            if self.breakpoints.contains(&a) {
                continue;
            }
            let hw = self.client.remove_hw_breakpoint(a).is_ok();
            let sw = self.client.remove_sw_breakpoint(a).is_ok();
            if hw || sw {
                warn!(addr = format_args!("{a:#x}"), "removed a breakpoint another gdbstub client left");
                removed.push(a);
            }
        }
        removed
    }

    /// Moves the stopped vCPU `index`, sitting on the breakpoint at `addr`,
    /// past it: the breakpoint is removed, the vCPU steps one instruction,
    /// the breakpoint is set again (the guest stays stopped).
    pub fn step_over(&mut self, index: usize, addr: u64) -> Result<(), GdbError> {
        if self.running {
            return Err(GdbError::WrongState("stepping needs the guest stopped"));
        }
        let tid = self.threads.get(index).cloned().ok_or(GdbError::WrongState("no such vCPU"))?;
        let set = self.breakpoints.contains(&addr);
        if set {
            self.client.remove_hw_breakpoint(addr)?;
        }
        let stepped = self.client.step_thread(&tid);
        if set {
            self.client.insert_hw_breakpoint(addr)?;
        }
        stepped.map(drop)
    }

    fn read_vcpus(&mut self) -> Result<Vec<VcpuState>, GdbError> {
        let mut out = Vec::with_capacity(self.threads.len());
        for (i, tid) in self.threads.clone().iter().enumerate() {
            self.client.select_thread(tid)?;
            let g = self.client.read_all_registers()?;
            let client = &mut self.client;
            out.push(self.regs.decode(i, &g, |n| client.read_register(n))?);
        }
        Ok(out)
    }

    fn phys_addr(&self, gpa: u64, len: usize) -> Result<u64, BackendError> {
        if self.client.phys_mode() {
            return Ok(gpa);
        }
        match self.direct_map {
            Some(base) => Ok(base.wrapping_add(gpa)),
            None => Err(BackendError::Transport(format!(
                "gdb unsupported: no physical memory mode and no direct map for {gpa:#x}+{len:#x}"
            ))),
        }
    }

    fn map_mem_err(e: GdbError, gpa: u64, len: usize) -> BackendError {
        match e {
            GdbError::Remote { .. } => BackendError::BadAddress { gpa, len: len as u64 },
            other => other.into(),
        }
    }
}

impl Backend for GdbBackend {
    fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
        if self.running {
            self.stops += 1;
            match self.interrupt() {
                Ok(()) => self.running = false,
                Err(GdbError::Timeout { .. }) => {
                    return Err(BackendError::PauseTimeout { timeout_ms: self.client.options().stop_timeout.as_millis() as u64 })
                }
                Err(e) => return Err(e.into()),
            }
        }
        match self.read_vcpus() {
            Ok(v) => Ok(v),
            Err(e) => {
                // All or nothing: do not leave the guest stopped on failure.
                if self.cont().is_ok() {
                    self.running = true;
                }
                Err(e.into())
            }
        }
    }

    fn resume(&mut self) -> Result<(), BackendError> {
        if self.running {
            return Ok(());
        }
        self.cont()?;
        self.running = true;
        Ok(())
    }

    /// Through the RAM file also while the guest runs (unless turned off):
    /// see [`SharedPlane::reads_while_running`].
    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        if let Some(p) = self.shared.as_ref().filter(|p| !self.running || p.reads_while_running()) {
            return p.read(gpa, buf);
        }
        if self.running {
            return Err(BackendError::WrongState("memory reads need the guest stopped"));
        }
        self.read_phys_stub(gpa, buf)
    }

    /// Through the RAM file, one aligned 8-byte load per word (never torn
    /// while the guest runs); through the stub, inside a stop.
    fn read_phys_words(&mut self, gpa: u64, out: &mut [u64]) -> Result<(), BackendError> {
        if let Some(p) = self.shared.as_ref().filter(|p| !self.running || p.reads_while_running()) {
            return p.read_words(gpa, out);
        }
        crate::model::backend::read_words_via_bytes(out, |b| self.read_phys(gpa, b))
    }

    fn direct_reads(&self) -> bool {
        self.shared.as_ref().is_some_and(|p| !self.running || p.reads_while_running())
    }

    fn prefetch_phys(&self, gpa: u64, len: usize) {
        if let Some(p) = &self.shared {
            p.prefetch(gpa, len);
        }
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        if self.running {
            return Err(BackendError::WrongState("memory writes need the guest stopped"));
        }
        if let Some(p) = self.shared.as_ref().filter(|p| p.write_route() == WriteRoute::File) {
            return p.write(gpa, data);
        }
        let a = self.phys_addr(gpa, data.len())?;
        self.client.write_memory(a, data).map_err(|e| Self::map_mem_err(e, gpa, data.len()))
    }
}
