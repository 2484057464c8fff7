//! x86-64 boot structures for the Linux 64-bit boot protocol.
//!
//! Every file handles one concern and is a set of pure functions over
//! [`vm_memory::GuestMemoryMmap`] and `kvm-bindings` types (plus thin wrappers
//! that issue the vCPU ioctls), so that all of it is unit-tested without KVM:
//!
//! | file | what it builds |
//! | --- | --- |
//! | [`layout`] | the fixed guest-physical addresses |
//! | [`gdt`] | boot GDT (`__BOOT_CS` 0x10, `__BOOT_DS` 0x18) and an empty IDT |
//! | [`paging`] | identity page tables for the first 4 GiB |
//! | [`regs`] | general, segment/control and FPU registers at entry |
//! | [`msr`] | the boot MSR values; reading `LSTAR` back |
//! | [`cpuid`] | per-vCPU CPUID (APIC IDs, topology, hypervisor bit) |
//! | [`interrupts`] | LAPIC LINT0/LINT1 and the PC legacy GSI routing |
//! | [`mptable`] | Intel MP 1.4 floating pointer and configuration table |
//! | [`acpi`] | RSDP, XSDT, FADT, FACS, DSDT (`_S5_`) and MADT |
//! | [`boot_params`] | e820 map with the patch arena, the Linux zero page |
//!
//! A boot path calls, once: [`boot_params::e820_map`], [`mptable::setup_mptable`],
//! [`acpi::setup_acpi`], [`boot_params::configure_boot_params`]; and for each
//! vCPU: [`cpuid::filter_cpuid`] + `set_cpuid2`, [`msr::setup_msrs`],
//! [`regs::setup_regs`], [`regs::setup_sregs`], [`regs::setup_fpu`],
//! [`interrupts::set_lint`].
//!
//! Errors: each file has its own error enum with a `cause()` giving a stable
//! snake_case name; [`ArchError`] wraps them all, keeping the inner name. It
//! is the source of every boot-structure and vCPU set-up failure of the VMM
//! (`BuildError::Boot`, `VcpuError::Configure`), whose cause is that name.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;

/// Any error of the x86-64 boot-structure code.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// Writing the GDT or IDT failed.
    #[error("boot GDT/IDT")]
    Gdt(#[from] gdt::GdtError),
    /// Writing the page tables failed.
    #[error("boot page tables")]
    Paging(#[from] paging::PagingError),
    /// Setting up vCPU registers failed.
    #[error("vCPU registers")]
    Regs(#[from] regs::RegsError),
    /// Giving a vCPU its CPUID failed.
    #[error("vCPU CPUID")]
    Cpuid(#[from] cpuid::CpuidError),
    /// Setting or reading MSRs failed.
    #[error("vCPU MSRs")]
    Msr(#[from] msr::MsrError),
    /// Programming the local APIC or GSI routing failed.
    #[error("interrupt setup")]
    Interrupts(#[from] interrupts::InterruptsError),
    /// Building the MP table failed.
    #[error("MP table")]
    Mptable(#[from] mptable::MptableError),
    /// Building the ACPI tables failed.
    #[error("ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    /// Building the e820 map or the zero page failed.
    #[error("boot params")]
    BootParams(#[from] boot_params::BootParamsError),
}

impl ArchError {
    /// Stable machine-readable name of what went wrong (the inner error's name).
    pub fn cause(&self) -> &'static str {
        match self {
            ArchError::Gdt(e) => e.cause(),
            ArchError::Paging(e) => e.cause(),
            ArchError::Regs(e) => e.cause(),
            ArchError::Cpuid(e) => e.cause(),
            ArchError::Msr(e) => e.cause(),
            ArchError::Interrupts(e) => e.cause(),
            ArchError::Mptable(e) => e.cause(),
            ArchError::Acpi(e) => e.cause(),
            ArchError::BootParams(e) => e.cause(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cause_is_the_inner_cause() {
        let e = ArchError::from(mptable::MptableError::TooManyCpus {
            requested: 200,
            max: mptable::MAX_CPUS,
        });
        assert_eq!(e.cause(), "mptable_too_many_cpus");
        assert!(std::error::Error::source(&e).is_some());
    }
}
