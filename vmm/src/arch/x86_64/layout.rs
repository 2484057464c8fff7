//! Guest-physical memory layout of an x86-64 vsplice guest: every fixed
//! address the boot path writes to lives here, in one place.
//!
//! ```text
//! 0x0000_0000 ┬ real-mode IVT / BDA (left for the guest)
//! 0x0000_0500 │ GDT (boot segments), IDT (empty) right after it
//! 0x0000_7000 │ boot_params ("zero page")
//! 0x0000_8ff0 │ initial stack top (grows down)
//! 0x0000_9000 │ PML4, PDPT, 4 page directories (identity map of 4 GiB)
//! 0x0002_0000 │ kernel command line
//! 0x0009_fc00 │ EBDA: MP floating pointer + MP configuration table
//! 0x000e_0000 │ ACPI: RSDP, then XSDT, FADT, DSDT, MADT
//! 0x0010_0000 │ HIMEM: bzImage protected-mode payload is loaded here
//!             │ ... usable RAM (ELF kernels load at their own p_paddr) ...
//!             │ initrd (top of usable RAM, page-aligned)
//! top - arena │ patch arena: 2 MiB aligned, e820 reserved
//! 0xc000_0000 ┴ 32-bit MMIO hole (1 GiB, LAPIC / IOAPIC live at its end);
//!               RAM beyond 3 GiB continues at 4 GiB
//! ```

/// GDT with the Linux boot-protocol segments (`__BOOT_CS` = 0x10, `__BOOT_DS` = 0x18).
pub const BOOT_GDT_START: u64 = 0x500;
/// Number of GDT entries written at [`BOOT_GDT_START`].
pub const BOOT_GDT_ENTRIES: usize = 4;
/// An empty IDT; the guest installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;

/// The Linux `boot_params` structure ("zero page"), passed in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial RSP/RBP for the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Page-map level 4 of the identity-mapped boot page tables.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot page tables.
pub const PDPTE_START: u64 = 0xa000;
/// First of [`BOOT_PD_COUNT`] page directories (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Page directories in the boot page tables: 4 × 1 GiB identity mapped.
pub const BOOT_PD_COUNT: u64 = 4;

/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line we accept (Linux 6.x x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Start of the extended BIOS data area: the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// End (exclusive) of the room for the MP table: it starts in the EBDA and may
/// run on through the reserved legacy area up to the ACPI tables.
pub const MPTABLE_END: u64 = RSDP_START;
/// Start of the BIOS read-only area where Linux scans for the RSDP.
pub const RSDP_START: u64 = 0xe0000;
/// End (exclusive) of the legacy BIOS area below 1 MiB.
pub const BIOS_END: u64 = 0x10_0000;

/// Where a bzImage's protected-mode payload is loaded (Linux `HIMEM_START`).
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole; RAM above it is relocated to [`RAM_64BIT_START`].
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// Where RAM continues above the MMIO hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;

/// Local APIC default base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// IO-APIC default base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;

/// Alignment (and size granule) of the patch arena: one large page.
pub const ARENA_ALIGN: u64 = 2 << 20;
/// Default patch arena size.
pub const ARENA_DEFAULT_SIZE: u64 = 4 << 20;

/// Smallest guest memory we accept: room for the low area, a kernel, and the arena.
pub const MIN_MEMORY_SIZE: u64 = 32 << 20;
/// Least RAM that must stay usable by the guest once the arena is carved out.
pub const MIN_USABLE_MEMORY: u64 = 16 << 20;

/// I/O port of the first 8250 UART (COM1).
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// Number of I/O ports of a UART.
pub const SERIAL_PORT_SIZE: u16 = 8;
/// IRQ line of COM1.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 controller data/command ports (0x60, 0x64).
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// ACPI PM1a event block (status + enable), described in the FADT.
pub const ACPI_PM1A_EVT_PORT: u16 = 0x600;
/// ACPI PM1a control block, described in the FADT: sleep type 5 powers off.
pub const ACPI_PM1A_CNT_PORT: u16 = 0x604;
/// Doorbell ports (8 from here) of the in-guest agent (devices/agent_doorbell.rs).
pub const AGENT_DOORBELL_PORT: u16 = 0x5f0;
