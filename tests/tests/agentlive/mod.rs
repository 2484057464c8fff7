//! Helpers of the guest-agent and stack-check e2e tests: a stopped Debian
//! guest opened once over QEMU's gdbstub ([`Live`]), let run and stopped
//! again between reads; waiting for the guest.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vsplice_patcher::model::backend::{Backend, VcpuState};
use vsplice_patcher::gdb::{GdbBackend, GdbOptions};
use vsplice_patcher::os::linux::kernel::LiveKernel;
use vsplice_patcher::os::linux::view::{self, AgentHint, LinuxView, TaskSource, ViewError};

/// A guest opened through its gdbstub: identified once, stopped or running.
pub struct Live {
    /// Memory, vCPUs and identification (owns the backend).
    pub lk: LiveKernel<GdbBackend>,
    /// True while the guest is stopped.
    pub stopped: bool,
}

impl Live {
    /// Attaches (the guest stops) and identifies the kernel.
    pub fn open(addr: &str) -> Result<Self, String> {
        let opts = GdbOptions { timeout: Duration::from_secs(30), ..GdbOptions::default() };
        let (be, vcpus) = vsplice_patcher::attach::attach_gdb(addr, opts).map_err(|e| format!("attach: {e} ({})", e.cause()))?;
        let lk = LiveKernel::open(be, vcpus, None).map_err(|e| format!("identify: {e} ({})", e.cause()))?;
        Ok(Self { lk, stopped: true })
    }

    /// Lets the guest run.
    pub fn resume(&mut self) -> Result<(), String> {
        if self.stopped {
            self.lk.vm.backend().resume().map_err(|e| format!("resume: {e}"))?;
            self.stopped = false;
        }
        Ok(())
    }

    /// Stops the guest again (fresh vCPU states, caches dropped).
    pub fn stop(&mut self) -> Result<(), String> {
        if !self.stopped {
            self.lk.vcpus = self.lk.vm.backend().stop().map_err(|e| format!("stop: {e}"))?;
            self.lk.vm.flush();
            self.stopped = true;
        }
        Ok(())
    }

    /// The view, with the guest stopped.
    pub fn view(&mut self, source: TaskSource, hint: Option<AgentHint>) -> Result<LinuxView, ViewError> {
        let vcpus: Vec<VcpuState> = self.lk.vcpus.clone();
        view::read_view(&mut self.lk.vm, &self.lk.info, &vcpus, source, hint)
    }

    /// The view, letting the guest run between attempts while it is
    /// caught mid-update (at most `tries`); the retries are counted.
    pub fn view_settled(&mut self, source: TaskSource, hint: Option<AgentHint>, tries: u32) -> (Result<LinuxView, ViewError>, u32) {
        let mut retries = 0;
        loop {
            let r = self.view(source, hint);
            match r {
                Err(e) if e.is_retry() && retries + 1 < tries => {
                    retries += 1;
                    let _ = self.resume();
                    std::thread::sleep(Duration::from_millis(20));
                    let _ = self.stop();
                }
                r => return (r, retries),
            }
        }
    }

    /// Detaches (the guest runs on).
    pub fn close(self) {
        let _ = self.lk.vm.into_backend().detach();
    }
}

/// Boots a Debian flavour (the agent loaded by /init); `None` after a loud
/// skip when the images or QEMU are missing.
pub fn boot(flavour: vsplice_tests::debian::Flavour, label: &str) -> Option<vsplice_tests::qemu::Guest> {
    let cfg = vsplice_tests::qemu::QemuConfig::debian_or_skip(flavour, label)?;
    vsplice_tests::qemu::Guest::boot_or_skip(cfg)
}

/// Waits until `f` is true or `limit` passes.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}
