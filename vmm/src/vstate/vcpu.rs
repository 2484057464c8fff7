//! One vCPU: its KVM file descriptor, its boot configuration, its register
//! snapshot, and the handling of each KVM exit. The thread that runs it and
//! the pause protocol live in [`super::pause`].

use kvm_bindings::{kvm_msr_entry, Msrs, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES};
use kvm_ioctls::{VcpuExit, VcpuFd};
use thiserror::Error;
use vsplice_patcher::model::backend::VcpuState;

use super::memory::{read_virt, GuestMemory};
use crate::arch::ArchError;
use crate::devices::bus::PioBus;
use crate::devices::DeviceAction;

/// Longest x86 instruction.
const MAX_INSN_LEN: usize = 15;

/// MSR_LSTAR: the 64-bit SYSCALL entry point.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// MSR_KERNEL_GS_BASE: the GS base swapped in by SWAPGS.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Why a vCPU could not be created, configured or inspected.
#[derive(Debug, Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {index}")]
    Create {
        /// vCPU index.
        index: usize,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A boot-time register or CPUID/MSR/LAPIC set-up step failed.
    #[error("cannot configure vCPU {index}")]
    Configure {
        /// vCPU index.
        index: usize,
        /// The set-up step's error (its cause is this error's cause).
        #[source]
        source: ArchError,
    },
    /// Reading registers for a snapshot failed.
    #[error("cannot read the registers of vCPU {index}")]
    Snapshot {
        /// vCPU index.
        index: usize,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

impl VcpuError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Create { .. } => "vcpu_create_failed",
            Self::Configure { source, .. } => source.cause(),
            Self::Snapshot { .. } => "vcpu_snapshot_failed",
        }
    }
}

/// Why the guest stopped running for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered itself off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (i8042 pulse, or KVM system-event reset).
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// vCPU index.
        vcpu: usize,
        /// RIP at the time of the fault, when it could be read.
        rip: Option<u64>,
        /// Code bytes at RIP read through the guest's page tables (KVM reports none).
        insn: Vec<u8>,
    },
    /// KVM could not run or emulate guest code.
    InternalError {
        /// vCPU index.
        vcpu: usize,
        /// KVM's sub-error code (1 = emulation failure).
        suberror: u32,
        /// RIP when it could be read.
        rip: Option<u64>,
        /// Instruction bytes KVM reported, if any.
        insn: Vec<u8>,
    },
    /// The hardware refused to enter the guest.
    FailEntry {
        /// vCPU index.
        vcpu: usize,
        /// Hardware entry-failure reason.
        reason: u64,
    },
    /// KVM_RUN failed or returned something the VMM cannot handle.
    Fatal {
        /// vCPU index.
        vcpu: usize,
        /// What happened.
        message: String,
    },
}

impl GuestExit {
    /// True for an orderly end (power-off or reboot request).
    pub fn is_clean(&self) -> bool {
        matches!(self, Self::PowerOff | Self::Reset)
    }

    /// Stable machine-readable name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::PowerOff => "poweroff",
            Self::Reset => "reset",
            Self::TripleFault { .. } => "triple_fault",
            Self::InternalError { .. } => "kvm_internal_error",
            Self::FailEntry { .. } => "kvm_fail_entry",
            Self::Fatal { .. } => "vcpu_fatal",
        }
    }
}

fn write_insn(f: &mut std::fmt::Formatter<'_>, insn: &[u8], what: &str) -> std::fmt::Result {
    if insn.is_empty() {
        write!(f, ", no {what} available")
    } else {
        let bytes: Vec<String> = insn.iter().map(|b| format!("{b:02x}")).collect();
        write!(f, ", {what} {}", bytes.join(" "))
    }
}

fn hex_or_unknown(v: Option<u64>) -> String {
    v.map_or_else(|| "unknown".to_owned(), |v| format!("{v:#x}"))
}

impl std::fmt::Display for GuestExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PowerOff => write!(f, "guest powered off"),
            Self::Reset => write!(f, "guest requested a reset"),
            Self::TripleFault { vcpu, rip, insn } => {
                write!(f, "vCPU {vcpu} triple fault (KVM_EXIT_SHUTDOWN) at RIP {}", hex_or_unknown(*rip))?;
                write_insn(f, insn, "code at RIP")
            }
            Self::InternalError { vcpu, suberror, rip, insn } => {
                write!(f, "vCPU {vcpu} KVM internal error (suberror {suberror}) at RIP {}", hex_or_unknown(*rip))?;
                write_insn(f, insn, "instruction bytes")
            }
            Self::FailEntry { vcpu, reason } => {
                write!(f, "vCPU {vcpu} could not enter the guest (hardware reason {reason:#x})")
            }
            Self::Fatal { vcpu, message } => write!(f, "vCPU {vcpu}: {message}"),
        }
    }
}

/// What the run loop does after one KVM exit.
#[derive(Debug)]
pub enum ExitAction {
    /// Enter the guest again.
    Continue,
    /// The guest is finished.
    Stop(GuestExit),
}

/// A vCPU file descriptor with its index.
#[derive(Debug)]
pub struct Vcpu {
    /// 0-based index (also the APIC ID).
    pub index: usize,
    /// The KVM vCPU.
    pub fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `index` in `vm`.
    pub fn new(vm: &kvm_ioctls::VmFd, index: usize) -> Result<Self, VcpuError> {
        let fd = vm.create_vcpu(index as u64).map_err(|source| VcpuError::Create { index, source })?;
        Ok(Self { index, fd })
    }

    /// Wraps a set-up step's error with this vCPU's index.
    pub fn configure_err<E: Into<ArchError>>(&self) -> impl FnOnce(E) -> VcpuError {
        let index = self.index;
        move |e| VcpuError::Configure { index, source: e.into() }
    }

    /// Reads the architectural state the patcher needs.
    pub fn snapshot(&self) -> Result<VcpuState, VcpuError> {
        let index = self.index;
        let err = |source| VcpuError::Snapshot { index, source };
        let r = self.fd.get_regs().map_err(err)?;
        let s = self.fd.get_sregs().map_err(err)?;
        let mut msrs = Msrs::from_entries(&[
            kvm_msr_entry { index: MSR_LSTAR, ..Default::default() },
            kvm_msr_entry { index: MSR_KERNEL_GS_BASE, ..Default::default() },
        ])
        .map_err(|_| err(kvm_ioctls::Error::new(libc::ENOMEM)))?;
        let read = self.fd.get_msrs(&mut msrs).map_err(err)?;
        let msr = |i: usize| (i < read).then(|| msrs.as_slice()[i].data);
        Ok(VcpuState {
            index,
            gprs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
                r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
            cs: s.cs.selector,
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            fs_base: s.fs.base,
            gs_base: s.gs.base,
            lstar: msr(0),
            kernel_gs_base: msr(1),
        })
    }

    fn rip(&self) -> Option<u64> {
        self.fd.get_regs().ok().map(|r| r.rip)
    }

    fn triple_fault(&self, mem: &GuestMemory) -> GuestExit {
        let rip = self.rip();
        let insn = match (rip, self.fd.get_sregs()) {
            (Some(rip), Ok(s)) => read_virt(mem, s.cr0, s.cr3, s.cr4, rip, MAX_INSN_LEN),
            _ => Vec::new(),
        };
        GuestExit::TripleFault { vcpu: self.index, rip, insn }
    }

    fn internal_error(&mut self) -> GuestExit {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the exit union: exit_reason
        // was KVM_EXIT_INTERNAL_ERROR, and `emulation_failure` shares its prefix.
        let (suberror, insn) = unsafe {
            let failure = run.__bindgen_anon_1.emulation_failure;
            let has_bytes = failure.ndata >= 3
                && failure.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0;
            let bytes = failure.__bindgen_anon_1.__bindgen_anon_1;
            let n = usize::from(bytes.insn_size).min(bytes.insn_bytes.len());
            (failure.suberror, if has_bytes { bytes.insn_bytes[..n].to_vec() } else { Vec::new() })
        };
        GuestExit::InternalError { vcpu: self.index, suberror, rip: self.rip(), insn }
    }

    /// Runs the guest until the next exit and handles it.
    /// `Err` carries the KVM_RUN error (EINTR when kicked).
    pub fn run_once(&mut self, bus: &PioBus, mem: &GuestMemory) -> Result<ExitAction, kvm_ioctls::Error> {
        let index = self.index;
        let action = match self.fd.run()? {
            VcpuExit::IoIn(port, data) => {
                bus.read(port, data);
                DeviceAction::None
            }
            VcpuExit::IoOut(port, data) => bus.write(port, data),
            VcpuExit::MmioRead(addr, data) => {
                tracing::debug!(vcpu = index, addr = format_args!("{addr:#x}"), "MMIO read of unmapped address");
                data.fill(0xff);
                DeviceAction::None
            }
            VcpuExit::MmioWrite(addr, _) => {
                tracing::debug!(vcpu = index, addr = format_args!("{addr:#x}"), "MMIO write to unmapped address");
                DeviceAction::None
            }
            VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => DeviceAction::None,
            VcpuExit::Shutdown => return Ok(ExitAction::Stop(self.triple_fault(mem))),
            VcpuExit::SystemEvent(kind, _) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => DeviceAction::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => DeviceAction::Reset,
                other => {
                    return Ok(ExitAction::Stop(GuestExit::Fatal {
                        vcpu: index,
                        message: format!("unhandled KVM system event {other}"),
                    }))
                }
            },
            VcpuExit::InternalError => return Ok(ExitAction::Stop(self.internal_error())),
            VcpuExit::FailEntry(reason, _) => {
                return Ok(ExitAction::Stop(GuestExit::FailEntry { vcpu: index, reason }));
            }
            other => {
                return Ok(ExitAction::Stop(GuestExit::Fatal {
                    vcpu: index,
                    message: format!("unexpected KVM exit {other:?}"),
                }))
            }
        };
        Ok(match action {
            DeviceAction::None => ExitAction::Continue,
            DeviceAction::Reset => ExitAction::Stop(GuestExit::Reset),
            DeviceAction::PowerOff => ExitAction::Stop(GuestExit::PowerOff),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_messages_name_the_problem() {
        let e = GuestExit::InternalError { vcpu: 1, suberror: 1, rip: Some(0x1000), insn: vec![0x0f, 0xae] };
        let s = e.to_string();
        assert!(s.contains("vCPU 1") && s.contains("0x1000") && s.contains("0f ae"), "{s}");
        assert!(!e.is_clean());
        assert_eq!(e.cause(), "kvm_internal_error");
        let t = GuestExit::TripleFault { vcpu: 0, rip: None, insn: vec![] }.to_string();
        assert!(t.contains("triple fault") && t.contains("unknown"), "{t}");
        let t = GuestExit::TripleFault { vcpu: 0, rip: Some(0x10), insn: vec![0x0f, 0x0b] }.to_string();
        assert!(t.contains("code at RIP 0f 0b"), "{t}");
        assert!(GuestExit::PowerOff.is_clean() && GuestExit::Reset.is_clean());
    }
}
