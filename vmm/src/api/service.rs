//! The API as `vsplice run` drives it: the server on its socket, the
//! request handler, and each boot's loop — publish the VM's state, pump the
//! device events, apply `--live-patch` once the kernel is up, serve the
//! requests waiting.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use vsplice_patcher::kernels::TargetKernel;

use super::handler::RequestHandler;
use super::http::{ApiServer, SocketError};
use super::request::{ApiCause, ApiError};
use super::state::{AgentInfo, ApiShared, Hypervisor, KernelInfo, VmInfo, VmState};
use crate::config::VmConfig;
use crate::livepatch::{LivePatches, POLL};
use crate::loader::{detect_format, KernelFormat};
use crate::vmm::Vmm;
use crate::vstate::vcpu::GuestExit;

/// The running API of one `vsplice run`; dropping it removes the socket.
#[derive(Debug)]
pub struct ApiService {
    _server: ApiServer,
    handler: RequestHandler,
    shared: Arc<ApiShared>,
}

fn kernel_info(config: &VmConfig, patches: Option<&LivePatches>) -> KernelInfo {
    let image = Some(config.kernel.display().to_string());
    match patches {
        Some(p) => KernelInfo::of(p.target(), image),
        None => {
            let kind = match detect_format(&config.kernel) {
                Ok(KernelFormat::BzImage) => "linux",
                _ => "unknown",
            };
            KernelInfo::unidentified(kind, image)
        }
    }
}

impl ApiService {
    /// Creates the socket at `path` and starts serving it.
    pub fn start(path: &Path) -> Result<Self, SocketError> {
        let shared = Arc::new(ApiShared::default());
        let (tx, rx) = mpsc::channel();
        let server = ApiServer::start(path, shared.clone(), tx)?;
        Ok(Self { _server: server, handler: RequestHandler::new(shared.clone(), rx), shared })
    }

    /// The shared state (events, metrics).
    pub fn shared(&self) -> &Arc<ApiShared> {
        &self.shared
    }

    fn publish(&self, vmm: &mut Vmm, config: &VmConfig, kernel: &KernelInfo, boot: u64, started: Instant) {
        let state = if vmm.exit_status().is_some() {
            VmState::Exited
        } else if vmm.is_paused() {
            VmState::Paused
        } else {
            VmState::Running
        };
        let agent = vmm.agent();
        let info = VmInfo {
            state,
            hypervisor: Hypervisor::Kvm,
            vcpus: vmm.vcpu_count(),
            memory_mib: Some(config.memory_mib),
            arena: vmm.arena().to_string(),
            kernel: kernel.clone(),
            agent: AgentInfo { announced: agent.gpa().is_some(), descriptor_gpa: agent.gpa(), rings: agent.rings() },
            boot,
            uptime_ms: started.elapsed().as_millis() as u64,
            transaction_in_flight: false,
        };
        self.shared.set_vm(info, started);
    }

    /// Runs one boot to its end: the guest's state published, `--live-patch`
    /// applied once the kernel is up (each result to `report` and the
    /// events), API requests served. `why_not` says why `patches` is `None`.
    pub fn run_boot(
        &mut self,
        vmm: &mut Vmm,
        config: &VmConfig,
        mut patches: Option<&mut LivePatches>,
        boot: u64,
        why_not: &str,
        mut report: impl FnMut(&vsplice_patcher::txn::TxnReport),
    ) -> Result<GuestExit, std::io::Error> {
        let started = Instant::now();
        self.shared.events.guest_state("running", format!("boot {boot}"));
        let mut applied = patches.is_none();
        let kernel = kernel_info(config, patches.as_deref());
        loop {
            self.publish(vmm, config, &kernel, boot, started);
            // Device events without waiting: the wait is on the API's requests.
            if let Some(exit) = vmm.poll_events()? {
                self.publish(vmm, config, &kernel, boot, started);
                self.shared.events.guest_state("exited", exit.to_string());
                return Ok(exit);
            }
            if let Some(p) = patches.as_deref() {
                if !applied {
                    let shared = self.shared.clone();
                    p.apply_when_up(vmm, &mut applied, |r| {
                        report(r);
                        RequestHandler::record(&shared, r);
                    });
                    if applied {
                        let arena = vmm.arena();
                        self.handler.refresh_status(vmm, arena, p.target());
                    }
                }
            }
            let arena = vmm.arena();
            match patches.as_deref_mut() {
                Some(lp) => {
                    let (target, desired) = lp.parts_mut();
                    self.handler.serve_waiting(vmm, arena, Ok(target as &dyn TargetKernel), desired, POLL);
                }
                None => {
                    let why = ApiError::new(ApiCause::UnsupportedTarget, why_not);
                    self.handler.serve_waiting(vmm, arena, Err(&why), &mut Vec::new(), POLL);
                }
            }
        }
    }

    /// Answers what is still waiting with `guest_gone` (the VMM is ending).
    pub fn finish(&mut self) {
        self.handler.refuse_all();
    }
}
