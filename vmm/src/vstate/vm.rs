//! The KVM VM: `/dev/kvm`, the VM file descriptor, the in-kernel interrupt
//! controllers and PIT, and guest memory registration.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::memory::GuestMemory;

/// Guest-physical address of the TSS that Intel VMX needs KVM to place (3 pages, below 4 GiB, out of RAM).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Largest vCPU count the boot tables can describe (8-bit APIC IDs, one spare for the IO-APIC).
pub const MAX_SUPPORTED_VCPUS: usize = 254;

/// Why the VM could not be created or configured.
#[derive(Debug, Error)]
pub enum VmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The host KVM API version is not the stable one.
    #[error("unsupported KVM API version {0}")]
    ApiVersion(i32),
    /// KVM_CREATE_VM failed.
    #[error("cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// An ioctl that configures the VM failed.
    #[error("cannot configure the VM: {what}")]
    Configure {
        /// Which step failed.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

impl VmError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::OpenKvm(_) => "kvm_unavailable",
            Self::ApiVersion(_) => "kvm_api_version",
            Self::CreateVm(_) => "vm_create_failed",
            Self::Configure { .. } => "vm_configure_failed",
        }
    }
}

/// A KVM VM with its interrupt controllers.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens KVM and creates a VM with an in-kernel irqchip (PIC, IO-APIC, LAPICs) and PIT.
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::ApiVersion(version));
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let configure = |what| move |source| VmError::Configure { what, source };
        fd.set_tss_address(KVM_TSS_ADDRESS).map_err(configure("set TSS address"))?;
        fd.create_irq_chip().map_err(configure("create irqchip"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        fd.create_pit2(pit).map_err(configure("create PIT"))?;
        Ok(Self { kvm, fd })
    }

    /// The most vCPUs this host's KVM and our boot tables allow.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus().min(MAX_SUPPORTED_VCPUS)
    }

    /// The CPUID leaves KVM can virtualize on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| VmError::Configure { what: "get supported CPUID", source })
    }

    /// Registers every guest memory region with KVM.
    pub fn register_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = region.as_ptr() as u64;
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host,
                flags: 0,
            };
            // SAFETY: the region's host mapping lives as long as the GuestMemory, which
            // the VMM keeps alive until after the VM file descriptor is closed.
            unsafe { self.fd.set_user_memory_region(desc) }
                .map_err(|source| VmError::Configure { what: "register guest memory", source })?;
        }
        Ok(())
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
