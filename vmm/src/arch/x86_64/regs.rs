//! vCPU register state at kernel entry (Linux 64-bit boot protocol).
//!
//! Long mode with paging on and the identity map from [`super::paging`], flat
//! `__BOOT_CS`/`__BOOT_DS` segments from [`super::gdt`], interrupts off,
//! RSI = zero page, a small stack below the page tables, RIP = the kernel's
//! 64-bit entry point. The `boot_*` functions build the values without KVM;
//! the `setup_*` functions issue the ioctls.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use super::gdt::{self, BOOT_GDT_LIMIT, BOOT_IDT_LIMIT};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER};
use super::paging;

/// CR0: protected mode enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0: not write-through.
pub const X86_CR0_NW: u64 = 1 << 29;
/// CR0: cache disable.
pub const X86_CR0_CD: u64 = 1 << 30;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension (required by long mode).
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS at entry: only the always-one bit 1 (IF clear).
pub const BOOT_RFLAGS: u64 = 0x2;
/// x87 control word after `FNINIT`.
pub const BOOT_FCW: u16 = 0x37f;
/// MXCSR after reset: all SSE exceptions masked.
pub const BOOT_MXCSR: u32 = 0x1f80;

/// Errors setting up vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// `KVM_SET_REGS` failed.
    #[error("KVM_SET_REGS failed")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// `KVM_GET_SREGS` failed.
    #[error("KVM_GET_SREGS failed")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// `KVM_SET_SREGS` failed.
    #[error("KVM_SET_SREGS failed")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// `KVM_SET_FPU` failed.
    #[error("KVM_SET_FPU failed")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// Writing the GDT/IDT failed.
    #[error("boot descriptor tables")]
    Gdt(#[source] gdt::GdtError),
    /// Writing the page tables failed.
    #[error("boot page tables")]
    Paging(#[source] paging::PagingError),
}

impl RegsError {
    /// Stable machine-readable name of the error.
    pub fn cause(&self) -> &'static str {
        match self {
            RegsError::SetRegs(_) => "set_regs",
            RegsError::GetSregs(_) => "get_sregs",
            RegsError::SetSregs(_) => "set_sregs",
            RegsError::SetFpu(_) => "set_fpu",
            RegsError::Gdt(e) => e.cause(),
            RegsError::Paging(e) => e.cause(),
        }
    }
}

/// General-purpose registers at entry: RIP = `entry`, RSI = `boot_params`
/// (the zero page), RSP = RBP = [`BOOT_STACK_POINTER`], RFLAGS = 2.
pub fn boot_regs(entry: u64, boot_params: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsi: boot_params,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rflags: BOOT_RFLAGS,
        ..Default::default()
    }
}

/// A 64-bit busy TSS for TR: VMX refuses to enter long mode with anything
/// else, and the kernel loads its own TSS before it could ever use this one.
fn boot_task_register() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff,
        selector: 0,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    }
}

/// Special registers at entry, derived from what KVM reports for a fresh vCPU
/// (`base`): long mode (CR0.PE|PG|ET, CR4.PAE, EFER.LME|LMA), CR3 = `cr3`,
/// CS = `__BOOT_CS`, the data segments = `__BOOT_DS`, GDTR/IDTR on the boot
/// tables. Caching is enabled (CR0.CD/NW cleared) as firmware leaves it; every
/// other bit, APIC base and the interrupt bitmap stay as KVM gave them.
pub fn boot_sregs(base: &kvm_sregs, cr3: u64) -> kvm_sregs {
    let mut sregs = *base;
    let code = gdt::boot_code_segment();
    let data = gdt::boot_data_segment();
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = boot_task_register();

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = BOOT_GDT_LIMIT;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = BOOT_IDT_LIMIT;

    sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_PG | X86_CR0_ET) & !(X86_CR0_CD | X86_CR0_NW);
    sregs.cr3 = cr3;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// FPU state at entry: `FNINIT` control word and reset MXCSR.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: BOOT_FCW,
        mxcsr: BOOT_MXCSR,
        ..Default::default()
    }
}

/// Sets the general-purpose registers of `vcpu` for entry at `entry` with the
/// zero page at `boot_params`.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64, boot_params: u64) -> Result<(), RegsError> {
    vcpu.set_regs(&boot_regs(entry, boot_params))
        .map_err(RegsError::SetRegs)
}

/// Writes the boot GDT/IDT and page tables into `mem` and puts `vcpu` in long
/// mode on them. Idempotent: every vCPU may call it.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd) -> Result<(), RegsError> {
    gdt::write_gdt_idt(mem).map_err(RegsError::Gdt)?;
    let cr3 = paging::setup_identity_page_tables(mem).map_err(RegsError::Paging)?;
    let base = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    vcpu.set_sregs(&boot_sregs(&base, cr3))
        .map_err(RegsError::SetSregs)
}

/// Sets the FPU state of `vcpu` (FCW 0x37f, MXCSR 0x1f80).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    vcpu.set_fpu(&boot_fpu()).map_err(RegsError::SetFpu)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{PML4_START, ZERO_PAGE_START};

    /// What KVM reports for a fresh vCPU (real mode, CD|NW|ET set).
    fn reset_sregs() -> kvm_sregs {
        let mut s = kvm_sregs {
            cr0: 0x6000_0010,
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        s.cs.selector = 0xf000;
        s.cs.base = 0xffff_0000;
        s
    }

    #[test]
    fn general_registers() {
        let r = boot_regs(0x100_0000, ZERO_PAGE_START);
        assert_eq!(r.rip, 0x100_0000);
        assert_eq!(r.rsi, ZERO_PAGE_START);
        assert_eq!((r.rsp, r.rbp), (BOOT_STACK_POINTER, BOOT_STACK_POINTER));
        assert_eq!(r.rflags, 2);
        assert_eq!((r.rax, r.rdi, r.rbx), (0, 0, 0));
    }

    #[test]
    fn long_mode_special_registers() {
        let s = boot_sregs(&reset_sregs(), PML4_START);
        assert_eq!(
            s.cr0 & (X86_CR0_PE | X86_CR0_PG | X86_CR0_ET),
            X86_CR0_PE | X86_CR0_PG | X86_CR0_ET
        );
        assert_eq!(s.cr0 & (X86_CR0_CD | X86_CR0_NW), 0);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.apic_base, 0xfee0_0900, "KVM's APIC base is kept");
    }

    #[test]
    fn segments_and_descriptor_tables() {
        let s = boot_sregs(&reset_sregs(), PML4_START);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!((s.cs.l, s.cs.db, s.cs.base), (1, 0, 0));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(seg.selector, 0x18);
            assert_eq!((seg.base, seg.limit, seg.present), (0, 0xffff_ffff, 1));
        }
        assert_eq!(
            (s.tr.type_, s.tr.present, s.tr.s, s.tr.unusable),
            (0xb, 1, 0, 0)
        );
        assert_eq!((s.gdt.base, s.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!((s.idt.base, s.idt.limit), (BOOT_IDT_START, 7));
    }

    #[test]
    fn fpu() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }

    #[test]
    fn with_kvm_when_available() {
        // Runs the real ioctls where /dev/kvm exists; skipped elsewhere.
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        // As in the boot path: CPUID first (KVM sizes the FPU state from it).
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        vcpu.set_cpuid2(&cpuid).unwrap();
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 0x10_0000)]).unwrap();
        setup_regs(&vcpu, 0x10_0000, ZERO_PAGE_START).unwrap();
        setup_sregs(&mem, &vcpu).unwrap();
        setup_fpu(&vcpu).unwrap();
        assert_eq!(vcpu.get_regs().unwrap().rip, 0x10_0000);
        let s = vcpu.get_sregs().unwrap();
        assert_eq!((s.cr3, s.cs.selector), (PML4_START, 0x10));
        assert_ne!(s.efer & EFER_LMA, 0);
        // FCW only: this machine's (emulated) KVM does not report MXCSR back.
        assert_eq!(vcpu.get_fpu().unwrap().fcw, 0x37f);
    }
}
