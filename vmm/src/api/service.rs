//! The API as `vsplice run` drives it: the server on its socket, the
//! request handler, and each boot's loop — publish the VM's state, pump the
//! device events, identify the kernel and apply `--live-patch` once it is
//! up, serve the requests waiting (`503 not_up` while a Linux kernel is not
//! identified yet, `422 unsupported_target` for one vsplice cannot patch).

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use super::handler::RequestHandler;
use super::http::{ApiServer, SocketError};
use super::request::{ApiCause, ApiError};
use super::state::{AgentInfo, ApiShared, Hypervisor, KernelInfo, VmInfo, VmState};
use crate::config::VmConfig;
use crate::livepatch::{BootTarget, LivePatches, Unavailable, POLL};
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

fn kernel_info(config: &VmConfig, target: Option<&BootTarget>) -> KernelInfo {
    let image = Some(config.kernel.display().to_string());
    match target.map(BootTarget::kernel) {
        Some(Ok(k)) => KernelInfo::of(k, image),
        _ => {
            let kind = match detect_format(&config.kernel) {
                Ok(KernelFormat::BzImage | KernelFormat::Elf) => "linux",
                _ => "unknown",
            };
            KernelInfo::unidentified(kind, image)
        }
    }
}

/// The API's answer when there is no target (yet).
fn unavailable(u: Unavailable) -> ApiError {
    match u {
        Unavailable::NotYet(m) => ApiError::new(ApiCause::NotUp, m),
        u @ Unavailable::Unsupported { .. } => ApiError::new(ApiCause::UnsupportedTarget, u.message()),
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

    /// Which patches `PUT /patches` lets through (`--trusted-keys`, `--allow-unsigned`).
    pub fn set_trust(&mut self, trust: vsplice_patcher::patch::TrustPolicy) {
        self.handler.set_trust(trust);
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
            console: Some(vmm.console()),
            shared_memory: None,
        };
        self.shared.set_vm(info, started);
    }

    /// Runs one boot to its end: the guest's state published, the kernel
    /// identified, `--live-patch` applied once the kernel is up (each result
    /// to `report` and the events), API requests served. `why_not` says why
    /// `patches` is `None` (a kernel this VMM cannot patch).
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
        let mut target = patches.as_deref().map(|p| BootTarget::new(p.source()));
        let mut announced = false;
        // What GET /vm says of the kernel: worked out once, and once more
        // when it is identified (not every turn: the image is a file).
        let mut kernel = kernel_info(config, target.as_ref());
        let mut identified = target.as_ref().is_some_and(|t| t.kernel().is_ok());
        loop {
            self.publish(vmm, config, &kernel, boot, started);
            // Device events without waiting: the wait is on the API's requests.
            if let Some(exit) = vmm.poll_events()? {
                self.publish(vmm, config, &kernel, boot, started);
                self.shared.events.guest_state("exited", exit.to_string());
                return Ok(exit);
            }
            if let (Some(p), Some(t)) = (patches.as_deref(), target.as_mut()) {
                let was_applied = t.applied();
                let shared = self.shared.clone();
                p.turn(t, vmm, &mut |r| {
                    report(r);
                    RequestHandler::record(&shared, r);
                });
                if !was_applied && t.applied() {
                    if let Ok(k) = t.kernel() {
                        let arena = vmm.arena();
                        self.handler.refresh_status(vmm, arena, k);
                    }
                }
                if !identified && t.kernel().is_ok() {
                    kernel = kernel_info(config, Some(t));
                    identified = true;
                }
                if !announced {
                    announced = self.announce(t);
                }
            }
            let arena = vmm.arena();
            match (patches.as_deref_mut(), target.as_ref()) {
                (Some(lp), Some(t)) => {
                    let kernel = t.kernel().map_err(unavailable);
                    self.handler.serve_waiting(vmm, arena, kernel.as_ref().map(|k| *k), lp.desired_mut(), POLL);
                }
                _ => {
                    let why = ApiError::new(ApiCause::UnsupportedTarget, why_not);
                    self.handler.serve_waiting(vmm, arena, Err(&why), &mut Vec::new(), POLL);
                }
            }
        }
    }

    /// Puts the kernel's fate in the events once it is known (up and
    /// identified, or unsupported); true once it is.
    fn announce(&self, t: &BootTarget) -> bool {
        match t.kernel() {
            Ok(k) if t.is_up() => {
                let name = format!(
                    "{} {} (build-id {}, KASLR slide {})",
                    k.kind(),
                    k.release().unwrap_or("-"),
                    k.build_id().unwrap_or("-"),
                    k.kaslr_slide().map_or("-".to_owned(), |s| format!("{s:#x}"))
                );
                self.shared.events.kernel("identified", name);
                true
            }
            Err(u @ Unavailable::Unsupported { .. }) => {
                self.shared.events.kernel("unsupported", u.message());
                true
            }
            _ => false,
        }
    }

    /// Answers what is still waiting with `guest_gone` (the VMM is ending).
    pub fn finish(&mut self) {
        self.handler.refuse_all();
    }
}
