//! Local APIC LINT pins and legacy interrupt routing.
//!
//! A PC wires the 8259 PIC's output to LINT0 of the boot CPU (ExtINT, "virtual
//! wire" mode) and NMI to LINT1; [`set_lint`] programs the in-kernel LAPIC that
//! way, like firmware would. [`legacy_gsi_routing`] is the PC's GSI → pin
//! routing with the timer on IO-APIC pin 2, which is what the MADT's
//! `IRQ0 → GSI2` override and the MP table promise the guest.

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_lapic_state, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
};
use kvm_ioctls::VcpuFd;

/// LAPIC register offset of LVT LINT0.
pub const APIC_LVT0: usize = 0x350;
/// LAPIC register offset of LVT LINT1.
pub const APIC_LVT1: usize = 0x360;
/// LVT delivery mode: NMI.
pub const APIC_MODE_NMI: u32 = 0x4;
/// LVT delivery mode: ExtINT (vector from the PIC).
pub const APIC_MODE_EXTINT: u32 = 0x7;
/// Number of pins of the KVM IO-APIC.
pub const IOAPIC_NUM_PINS: u32 = 24;
/// IO-APIC pin of the ISA timer (IRQ0), as on every PC with an IO-APIC.
pub const TIMER_IOAPIC_PIN: u32 = 2;

/// Errors programming interrupts.
#[derive(Debug, thiserror::Error)]
pub enum InterruptsError {
    /// `KVM_GET_LAPIC` failed.
    #[error("KVM_GET_LAPIC failed")]
    GetLapic(#[source] kvm_ioctls::Error),
    /// `KVM_SET_LAPIC` failed.
    #[error("KVM_SET_LAPIC failed")]
    SetLapic(#[source] kvm_ioctls::Error),
    /// The routing table could not be built.
    #[error("cannot build the GSI routing table")]
    Routing(#[source] vmm_sys_util::fam::Error),
}

impl InterruptsError {
    /// Stable machine-readable name of the error.
    pub fn cause(&self) -> &'static str {
        match self {
            InterruptsError::GetLapic(_) => "get_lapic",
            InterruptsError::SetLapic(_) => "set_lapic",
            InterruptsError::Routing(_) => "gsi_routing",
        }
    }
}

/// Reads the 32-bit LAPIC register at `offset` from KVM's register page.
pub fn get_klapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    u32::from_le_bytes(bytes)
}

/// Writes the 32-bit LAPIC register at `offset` in KVM's register page.
pub fn set_klapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (r, b) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *r = b as _;
    }
}

/// `reg` with its delivery-mode field (bits 10:8) set to `mode`.
pub fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | ((mode & 0x7) << 8)
}

/// LINT0 = ExtINT, LINT1 = NMI; mask bits and everything else are kept (the
/// kernel unmasks what it wants when it sets up its APIC).
pub fn set_lint_regs(lapic: &mut kvm_lapic_state) {
    let lint0 = get_klapic_reg(lapic, APIC_LVT0);
    set_klapic_reg(lapic, APIC_LVT0, set_delivery_mode(lint0, APIC_MODE_EXTINT));
    let lint1 = get_klapic_reg(lapic, APIC_LVT1);
    set_klapic_reg(lapic, APIC_LVT1, set_delivery_mode(lint1, APIC_MODE_NMI));
}

/// Programs LINT0/LINT1 of `vcpu`'s in-kernel LAPIC (needs `KVM_CREATE_IRQCHIP`).
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), InterruptsError> {
    let mut lapic = vcpu.get_lapic().map_err(InterruptsError::GetLapic)?;
    set_lint_regs(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(InterruptsError::SetLapic)
}

fn irqchip_route(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip, pin },
        },
        ..Default::default()
    }
}

/// The PC routing entries: GSI 0-15 to the PICs (2 is the cascade), GSI
/// 0-23 to the IO-APIC pin of the same number except GSI 0, which goes to
/// [`TIMER_IOAPIC_PIN`] (nothing drives GSI 2).
pub fn legacy_gsi_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::with_capacity(16 + IOAPIC_NUM_PINS as usize);
    for gsi in 0..16 {
        match gsi {
            2 => {}
            0..=7 => routes.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_MASTER, gsi)),
            _ => routes.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8)),
        }
    }
    for gsi in 0..IOAPIC_NUM_PINS {
        match gsi {
            0 => routes.push(irqchip_route(0, KVM_IRQCHIP_IOAPIC, TIMER_IOAPIC_PIN)),
            TIMER_IOAPIC_PIN => {}
            _ => routes.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
        }
    }
    routes
}

/// [`legacy_gsi_routes`] ready for `VmFd::set_gsi_routing`, to be installed
/// after `KVM_CREATE_IRQCHIP` (KVM's own default routes GSI 0 to pin 0, which
/// would contradict the MADT).
pub fn legacy_gsi_routing() -> Result<KvmIrqRouting, InterruptsError> {
    KvmIrqRouting::from_entries(&legacy_gsi_routes()).map_err(InterruptsError::Routing)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn register_access_is_little_endian() {
        let mut lapic = kvm_lapic_state::default();
        set_klapic_reg(&mut lapic, 0x20, 0x1234_5678);
        assert_eq!(lapic.regs[0x20] as u8, 0x78);
        assert_eq!(lapic.regs[0x23] as u8, 0x12);
        assert_eq!(get_klapic_reg(&lapic, 0x20), 0x1234_5678);
    }

    #[test]
    fn lint0_extint_lint1_nmi_keeping_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        // KVM's reset value: masked, fixed delivery.
        set_klapic_reg(&mut lapic, APIC_LVT0, 0x0001_0000);
        set_klapic_reg(&mut lapic, APIC_LVT1, 0x0001_0400);
        set_lint_regs(&mut lapic);
        assert_eq!(get_klapic_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_klapic_reg(&lapic, APIC_LVT1), 0x0001_0400);
        assert_eq!(set_delivery_mode(0xffff_ffff, APIC_MODE_NMI), 0xffff_fcff);
    }

    fn ioapic_pin_of(routes: &[kvm_irq_routing_entry], gsi: u32) -> Option<u32> {
        routes
            .iter()
            .filter(|r| r.gsi == gsi)
            // SAFETY: every entry built here is of type IRQCHIP, so `irqchip` is the live field.
            .map(|r| unsafe { r.u.irqchip })
            .find(|c| c.irqchip == KVM_IRQCHIP_IOAPIC)
            .map(|c| c.pin)
    }

    #[test]
    fn timer_goes_to_ioapic_pin_2() {
        let routes = legacy_gsi_routes();
        assert_eq!(ioapic_pin_of(&routes, 0), Some(2));
        assert_eq!(ioapic_pin_of(&routes, 2), None);
        for gsi in [1, 4, 9, 15, 23] {
            assert_eq!(ioapic_pin_of(&routes, gsi), Some(gsi));
        }
        // 15 PIC routes (no cascade) + 23 IO-APIC routes.
        assert_eq!(routes.len(), 15 + 23);
        assert!(routes.iter().all(|r| r.type_ == KVM_IRQ_ROUTING_IRQCHIP));
        let slave: Vec<_> = routes
            .iter()
            // SAFETY: as above, all entries are IRQCHIP routes.
            .filter(|r| unsafe { r.u.irqchip.irqchip } == KVM_IRQCHIP_PIC_SLAVE)
            .collect();
        assert_eq!(slave.len(), 8);
        assert_eq!(legacy_gsi_routing().unwrap().as_slice().len(), routes.len());
    }

    #[test]
    fn with_kvm_when_available() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        vm.set_gsi_routing(&legacy_gsi_routing().unwrap()).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        set_lint(&vcpu).unwrap();
        let lapic = vcpu.get_lapic().unwrap();
        assert_eq!(
            (get_klapic_reg(&lapic, APIC_LVT0) >> 8) & 7,
            APIC_MODE_EXTINT
        );
        assert_eq!((get_klapic_reg(&lapic, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}
