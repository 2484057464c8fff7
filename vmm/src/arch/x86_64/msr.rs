//! Model-specific registers at boot, and reading them back.
//!
//! At entry the syscall/sysenter MSRs are zero (the kernel programs them in
//! `syscall_init()`), the TSC starts at zero, fast strings are enabled in
//! `IA32_MISC_ENABLE` (as firmware does; the kernel's `rep movs` relies on it
//! for speed) and the MTRRs default to write-back, so a guest that trusts its
//! MTRRs does not map all of RAM uncached. [`read_lstar`] gives the patcher
//! the kernel's `entry_SYSCALL_64` address, from which it derives the KASLR
//! slide.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// `IA32_TIME_STAMP_COUNTER`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_SYSENTER_CS`.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// `IA32_MISC_ENABLE`.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_MISC_ENABLE` bit 0: fast-string operations enabled.
pub const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// `IA32_MTRR_DEF_TYPE`.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// `IA32_MTRR_DEF_TYPE`: MTRRs enabled (bit 11), default type write-back (6).
pub const MTRR_DEF_TYPE_ENABLED_WB: u64 = (1 << 11) | 6;
/// `IA32_STAR` (syscall segment selectors).
pub const MSR_STAR: u32 = 0xc000_0081;
/// `IA32_LSTAR` (64-bit syscall entry point).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// `IA32_CSTAR` (compat-mode syscall entry point).
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// `IA32_FMASK` (RFLAGS mask on syscall).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// `IA32_KERNEL_GS_BASE` (swapgs shadow).
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Errors setting or reading MSRs.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// The MSR list could not be built (more entries than KVM accepts).
    #[error("cannot build the MSR list")]
    Build(#[source] vmm_sys_util::fam::Error),
    /// `KVM_SET_MSRS` failed.
    #[error("KVM_SET_MSRS failed")]
    SetMsrs(#[source] kvm_ioctls::Error),
    /// KVM refused one of the MSRs: it stops at the first it cannot set.
    #[error("KVM did not take MSR {index:#x} ({written} of {expected} set)")]
    NotAllSet {
        /// The MSR that KVM refused.
        index: u32,
        /// How many MSRs were set.
        written: usize,
        /// How many were asked for.
        expected: usize,
    },
    /// `KVM_GET_MSRS` failed.
    #[error("KVM_GET_MSRS failed")]
    GetMsrs(#[source] kvm_ioctls::Error),
    /// KVM could not read the MSR.
    #[error("KVM cannot read MSR {index:#x}")]
    NotRead {
        /// The MSR asked for.
        index: u32,
    },
}

impl MsrError {
    /// Stable machine-readable name of the error.
    pub fn cause(&self) -> &'static str {
        match self {
            MsrError::Build(_) => "msr_list",
            MsrError::SetMsrs(_) => "set_msrs",
            MsrError::NotAllSet { .. } => "msrs_not_all_set",
            MsrError::GetMsrs(_) => "get_msrs",
            MsrError::NotRead { .. } => "msr_not_read",
        }
    }
}

fn entry(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// The MSR values every vCPU gets at boot, in the order they are set.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLED_WB),
    ]
}

/// Sets [`boot_msr_entries`] on `vcpu`; an MSR that KVM does not take is an error.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MsrError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(MsrError::Build)?;
    let written = vcpu.set_msrs(&msrs).map_err(MsrError::SetMsrs)?;
    if written != entries.len() {
        let index = entries.get(written).map_or(0, |e| e.index);
        return Err(MsrError::NotAllSet {
            index,
            written,
            expected: entries.len(),
        });
    }
    Ok(())
}

/// Reads one MSR of `vcpu` (the vCPU must not be running, i.e. call it from
/// the vCPU's thread or while it is parked).
pub fn read_msr(vcpu: &VcpuFd, index: u32) -> Result<u64, MsrError> {
    let mut msrs = Msrs::from_entries(&[entry(index, 0)]).map_err(MsrError::Build)?;
    let read = vcpu.get_msrs(&mut msrs).map_err(MsrError::GetMsrs)?;
    match msrs.as_slice().first() {
        Some(e) if read == 1 => Ok(e.data),
        _ => Err(MsrError::NotRead { index }),
    }
}

/// Reads `IA32_LSTAR`: the guest kernel's 64-bit syscall entry
/// (`entry_SYSCALL_64`), once the kernel has set it up.
pub fn read_lstar(vcpu: &VcpuFd) -> Result<u64, MsrError> {
    read_msr(vcpu, MSR_LSTAR)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn boot_list_has_every_msr_once() {
        let entries = boot_msr_entries();
        let mut indices: Vec<u32> = entries.iter().map(|e| e.index).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices.len(), entries.len());
        for index in [
            MSR_IA32_SYSENTER_CS,
            MSR_IA32_SYSENTER_ESP,
            MSR_IA32_SYSENTER_EIP,
            MSR_STAR,
            MSR_CSTAR,
            MSR_KERNEL_GS_BASE,
            MSR_SYSCALL_MASK,
            MSR_LSTAR,
            MSR_IA32_TSC,
            MSR_IA32_MISC_ENABLE,
        ] {
            assert!(indices.contains(&index), "missing {index:#x}");
        }
    }

    #[test]
    fn boot_values() {
        let value = |index| {
            boot_msr_entries()
                .into_iter()
                .find(|e| e.index == index)
                .unwrap()
                .data
        };
        assert_eq!(value(MSR_IA32_MISC_ENABLE) & 1, 1, "fast strings on");
        assert_eq!(value(MSR_MTRR_DEF_TYPE), 0x806);
        assert_eq!(value(MSR_LSTAR), 0);
        assert_eq!(value(MSR_IA32_TSC), 0);
    }

    #[test]
    fn set_and_read_back_with_kvm_when_available() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        // KVM only accepts some MSRs once CPUID is set.
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        vcpu.set_cpuid2(&cpuid).unwrap();
        setup_msrs(&vcpu).unwrap();
        assert_eq!(read_lstar(&vcpu).unwrap(), 0);
        let misc = read_msr(&vcpu, MSR_IA32_MISC_ENABLE).unwrap();
        assert_eq!(misc & MSR_IA32_MISC_ENABLE_FAST_STRING, 1);
    }
}
