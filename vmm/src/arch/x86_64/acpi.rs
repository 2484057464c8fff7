//! ACPI tables in the BIOS area: RSDP, XSDT, FADT, FACS, DSDT and MADT.
//!
//! Kernels without an MP-table parser (Debian's `cloud-amd64`) learn about
//! CPUs and interrupt routing only from here, so the MADT stands on its own:
//! one enabled local APIC per vCPU (IDs 0..n), the IO-APIC (ID n, GSI base 0),
//! the overrides every PC has (ISA IRQ0 → GSI 2; the SCI, IRQ9, level/high)
//! and LINT1 = NMI. The platform is *not* hardware-reduced: the FADT points at
//! the PM1a event/control ports of the VMM's ACPI PM device, and the DSDT's
//! `\_S5_` package makes `poweroff` write SLP_TYP=5|SLP_EN to PM1a control.
//! Reset is the FADT reset register: 0xfe to the i8042 command port.
//!
//! Tables are built with the `acpi_tables` crate; the MADT entry types it
//! lacks (interrupt source override, local APIC NMI) are encoded here.

use acpi_tables::aml::{Name, Package};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_PM1A_CNT_PORT, ACPI_PM1A_EVT_PORT, APIC_START, BIOS_END, I8042_COMMAND_PORT, IOAPIC_START,
    RSDP_START,
};

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"VSPLCE";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"VSPLICE ";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;
/// The SCI's ISA IRQ and GSI.
pub const SCI_INTERRUPT: u16 = 9;
/// PM1 event block length (2 status + 2 enable bytes).
pub const PM1_EVT_LEN: u8 = 4;
/// PM1 control block length.
pub const PM1_CNT_LEN: u8 = 2;
/// SLP_TYP that `\_S5_` names: write `(5 << 10) | (1 << 13)` to PM1a control to power off.
pub const SLP_TYP_S5: u8 = 5;
/// Value written to the reset register (i8042 "pulse reset line").
pub const RESET_VALUE: u8 = 0xfe;
/// Most vCPUs: xAPIC IDs are 8 bits, 0xff is broadcast and the IO-APIC takes ID n.
pub const MAX_CPUS: u8 = 254;

/// FADT IAPC_BOOT_ARCH: legacy (ISA) devices present.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
/// FADT IAPC_BOOT_ARCH: no VGA; don't probe for one.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// FADT IAPC_BOOT_ARCH: no CMOS RTC.
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// FADT P_LVL2_LAT/P_LVL3_LAT above 100/1000: C2/C3 not supported.
const C_STATE_NOT_SUPPORTED: u16 = 0x0fff;
/// MADT flags: the PC has dual 8259s (KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT revision (ACPI 6.x).
const MADT_REVISION: u8 = 5;
/// DSDT revision 2: 64-bit AML integers.
const DSDT_REVISION: u8 = 2;
/// MPS INTI flags: active high, level triggered.
const INTI_LEVEL_HIGH: u16 = 0x000d;
/// MPS INTI flags: conforms to the bus.
const INTI_CONFORM: u16 = 0;
/// Table alignment in the BIOS area (FACS needs 64).
const TABLE_ALIGN: u64 = 16;
const FACS_ALIGN: u64 = 64;

/// Errors building the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// Zero vCPUs requested.
    #[error("ACPI tables need at least one CPU")]
    NoCpus,
    /// More vCPUs than xAPIC IDs.
    #[error("{requested} CPUs exceed the {max} the MADT can describe")]
    TooManyCpus {
        /// vCPUs asked for.
        requested: u8,
        /// Most supported.
        max: u8,
    },
    /// The tables run past the end of the BIOS area.
    #[error("ACPI tables end at {end:#x}, past {limit:#x}")]
    TooLarge {
        /// Where they would end.
        end: u64,
        /// The limit.
        limit: u64,
    },
    /// The BIOS area is not in guest memory.
    #[error("cannot write ACPI table at {addr:#x}")]
    Write {
        /// Where the table goes.
        addr: u64,
        /// What the memory layer reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

impl AcpiError {
    /// Stable machine-readable name of the error.
    pub fn cause(&self) -> &'static str {
        match self {
            AcpiError::NoCpus => "acpi_no_cpus",
            AcpiError::TooManyCpus { .. } => "acpi_too_many_cpus",
            AcpiError::TooLarge { .. } => "acpi_tables_too_large",
            AcpiError::Write { .. } => "acpi_write",
        }
    }
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// MADT type 2: ISA `source` IRQ delivered on `gsi` with MPS INTI `flags`.
fn interrupt_source_override(source: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut v = vec![2, 10, 0 /* ISA bus */, source];
    v.extend_from_slice(&gsi.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v
}

/// MADT type 4: NMI on local APIC pin `lint` of processor `uid` (0xff = all).
fn local_apic_nmi(uid: u8, lint: u8) -> Vec<u8> {
    let mut v = vec![4, 6, uid];
    v.extend_from_slice(&INTI_CONFORM.to_le_bytes());
    v.push(lint);
    v
}

fn madt(num_cpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(36, APIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    let mut body = Vec::new();
    for id in 0..num_cpus {
        body.extend(bytes_of(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    body.extend(bytes_of(&IoApic::new(num_cpus, IOAPIC_START as u32, 0)));
    body.extend(interrupt_source_override(0, 2, INTI_CONFORM));
    body.extend(interrupt_source_override(
        SCI_INTERRUPT as u8,
        u32::from(SCI_INTERRUPT),
        INTI_LEVEL_HIGH,
    ));
    body.extend(local_apic_nmi(0xff, 1));
    madt.append_slice(&body);
    madt.as_slice().to_vec()
}

fn dsdt() -> Vec<u8> {
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    let s5 = Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5, &0u8, &0u8]);
    Name::new("_S5_".into(), &s5).to_aml_bytes(&mut dsdt);
    dsdt.as_slice().to_vec()
}

fn io_gas(bytes: u8, port: u16, access: AccessSize) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        bytes * 8,
        0,
        access,
        u64::from(port),
    )
}

fn fadt(dsdt_addr: u64, facs_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .firmware_ctrl_64(facs_addr)
        .preferred_pm_profile(PmProfile::Unspecified)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton) // no fixed-feature power button
        .flag(Flags::SlpButton) // no fixed-feature sleep button
        .flag(Flags::FixRtc) // no RTC wake status
        .flag(Flags::ResetRegSup);
    // SMI_CMD = 0: always in ACPI mode, nothing to enable.
    f.sci_int = SCI_INTERRUPT.into();
    f.pm1a_evt_blk = u32::from(ACPI_PM1A_EVT_PORT).into();
    f.pm1a_cnt_blk = u32::from(ACPI_PM1A_CNT_PORT).into();
    f.pm1_evt_len = PM1_EVT_LEN;
    f.pm1_cnt_len = PM1_CNT_LEN;
    f.x_pm1a_evt_blk = io_gas(PM1_EVT_LEN, ACPI_PM1A_EVT_PORT, AccessSize::WordAccess);
    f.x_pm1a_cnt_blk = io_gas(PM1_CNT_LEN, ACPI_PM1A_CNT_PORT, AccessSize::WordAccess);
    f.p_lvl2_lat = C_STATE_NOT_SUPPORTED.into();
    f.p_lvl3_lat = C_STATE_NOT_SUPPORTED.into();
    f.iapc_boot_arch =
        (IAPC_LEGACY_DEVICES | IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    f.reset_reg = io_gas(1, I8042_COMMAND_PORT, AccessSize::ByteAccess);
    f.reset_value = RESET_VALUE;
    bytes_of(&f.finalize())
}

fn align_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

/// All tables for `num_cpus` vCPUs with their guest addresses, RSDP first at
/// [`RSDP_START`], the others after it, all below [`BIOS_END`].
pub fn acpi_tables(num_cpus: u8) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    if num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(AcpiError::TooManyCpus {
            requested: num_cpus,
            max: MAX_CPUS,
        });
    }
    let mut placed = Vec::new();
    let mut next = RSDP_START + Rsdp::len() as u64;
    let mut place = |bytes: Vec<u8>, align: u64| {
        let addr = align_up(next, align);
        next = addr + bytes.len() as u64;
        placed.push((addr, bytes));
        addr
    };
    let facs_addr = place(bytes_of(&FACS::new()), FACS_ALIGN);
    let dsdt_addr = place(dsdt(), TABLE_ALIGN);
    let fadt_addr = place(fadt(dsdt_addr, facs_addr), TABLE_ALIGN);
    let madt_addr = place(madt(num_cpus), TABLE_ALIGN);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(bytes_of(&xsdt), TABLE_ALIGN);
    if next > BIOS_END {
        return Err(AcpiError::TooLarge {
            end: next,
            limit: BIOS_END,
        });
    }
    placed.insert(0, (RSDP_START, bytes_of(&Rsdp::new(OEM_ID, xsdt_addr))));
    Ok(placed)
}

/// Writes the ACPI tables for `num_cpus` vCPUs and returns the RSDP's
/// address (for `boot_params.acpi_rsdp_addr`).
pub fn setup_acpi(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<u64, AcpiError> {
    for (addr, bytes) in acpi_tables(num_cpus)? {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::Write { addr, source })?;
    }
    Ok(RSDP_START)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "acpi_tests.rs"]
mod tests;
