//! Intel MultiProcessor Specification 1.4 tables in the EBDA.
//!
//! Kernels built without ACPI (or booted with `acpi=off`) find their CPUs and
//! IO-APIC here: an MP floating pointer at [`EBDA_START`] (Linux scans the
//! last KiB of base memory for `_MP_`) followed by the configuration table
//! (`PCMP`), which may run past the EBDA into the reserved area below the ACPI
//! tables ([`MPTABLE_END`]). Its content matches the MADT from [`super::acpi`]: CPUs with APIC
//! IDs 0..n, the IO-APIC with ID n, the ISA timer (IRQ0) on IO-APIC pin 2, the
//! SCI (IRQ9) level-triggered active-high, the other ISA IRQs 1:1, LINT0 =
//! ExtINT on the BSP and LINT1 = NMI on every CPU. KVM does not wire the PIC
//! to an IO-APIC pin, so there is no ExtINT IO-interrupt entry.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, IOAPIC_START, MPTABLE_END};

/// Size of the MP floating pointer structure.
const MPF_SIZE: usize = 16;
/// Size of the configuration table header.
const HEADER_SIZE: usize = 44;
/// Size of a processor entry.
const CPU_ENTRY_SIZE: usize = 20;
/// Size of every other entry type.
const SMALL_ENTRY_SIZE: usize = 8;
/// ISA IRQs with an IO-interrupt entry: 0-15 without the cascade (2).
const ISA_IRQ_ENTRIES: usize = 15;
/// Bytes of everything but the processor entries (bus, IO-APIC, 2 LINTs, IRQs).
const FIXED_SIZE: usize = MPF_SIZE + HEADER_SIZE + SMALL_ENTRY_SIZE * (4 + ISA_IRQ_ENTRIES);
/// Space for the tables.
const SPACE: usize = (MPTABLE_END - EBDA_START) as usize;
/// Most CPUs: APIC IDs are 8 bits, 0xff is broadcast and the IO-APIC takes ID n.
pub const MAX_CPUS: u8 = 254;

/// Entry types.
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
/// Interrupt types.
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
/// Interrupt flags: polarity/trigger conform to the bus.
const IRQ_FLAGS_CONFORM: u16 = 0;
/// Interrupt flags: active high (01) | level triggered (11 << 2).
const IRQ_FLAGS_LEVEL_HIGH: u16 = 0x000d;
/// Local APIC version (integrated APIC) and IO-APIC version.
pub const APIC_VERSION: u8 = 0x14;
/// IO-APIC version of KVM's IO-APIC (82093AA-compatible).
pub const IOAPIC_VERSION: u8 = 0x11;
/// Processor flags.
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 signature and FPU|APIC feature flags for processor entries.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 9) | 1;
/// ISA bus id.
const ISA_BUS_ID: u8 = 0;
/// The SCI's ISA IRQ (level-triggered, see the FADT).
const SCI_IRQ: u8 = 9;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Zero CPUs requested.
    #[error("an MP table needs at least one CPU")]
    NoCpus,
    /// More CPUs than APIC IDs, or than fit in the space.
    #[error("{requested} CPUs do not fit in the MP table (at most {max})")]
    TooManyCpus {
        /// CPUs asked for.
        requested: u8,
        /// Most that fit.
        max: u8,
    },
    /// The EBDA is not in guest memory.
    #[error("cannot write the MP table")]
    Write(#[source] vm_memory::GuestMemoryError),
}

impl MptableError {
    /// Stable machine-readable name of the error.
    pub fn cause(&self) -> &'static str {
        match self {
            MptableError::NoCpus => "mptable_no_cpus",
            MptableError::TooManyCpus { .. } => "mptable_too_many_cpus",
            MptableError::Write(_) => "mptable_write",
        }
    }
}

/// Two's-complement checksum: the byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

fn intsrc(kind: u8, flags: u16, irq: u8, ioapic_id: u8, pin: u8) -> [u8; 8] {
    let f = flags.to_le_bytes();
    [MP_INTSRC, kind, f[0], f[1], ISA_BUS_ID, irq, ioapic_id, pin]
}

fn lintsrc(kind: u8, dest_apic: u8, lint: u8) -> [u8; 8] {
    let f = IRQ_FLAGS_CONFORM.to_le_bytes();
    [MP_LINTSRC, kind, f[0], f[1], ISA_BUS_ID, 0, dest_apic, lint]
}

/// The configuration table (header and entries) for `num_cpus` CPUs.
fn config_table(num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    for id in 0..num_cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[MP_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for irq in 0..16u8 {
        let (pin, flags) = match irq {
            0 => (2, IRQ_FLAGS_CONFORM),
            2 => continue,
            SCI_IRQ => (irq, IRQ_FLAGS_LEVEL_HIGH),
            _ => (irq, IRQ_FLAGS_CONFORM),
        };
        entries.extend_from_slice(&intsrc(MP_INT, flags, irq, ioapic_id, pin));
    }
    entries.extend_from_slice(&lintsrc(MP_EXTINT, 0, 0));
    entries.extend_from_slice(&lintsrc(MP_NMI, 0xff, 1));
    let entry_count = usize::from(num_cpus) + 1 + 1 + ISA_IRQ_ENTRIES + 2;

    let length = (HEADER_SIZE + entries.len()) as u16;
    let mut table = Vec::with_capacity(usize::from(length));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"VSPLICE ");
    table.extend_from_slice(b"VSPLICE-VMM ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&(entry_count as u16).to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0); // reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The MP floating pointer for a configuration table at `table_addr`.
fn floating_pointer(table_addr: u32) -> [u8; MPF_SIZE] {
    let mut mpf = [0u8; MPF_SIZE];
    mpf[0..4].copy_from_slice(b"_MP_");
    mpf[4..8].copy_from_slice(&table_addr.to_le_bytes());
    mpf[8] = 1; // length in 16-byte paragraphs
    mpf[9] = 4; // spec revision 1.4
                // mpf[11] feature1 = 0: a configuration table is present.
                // mpf[12] feature2 = 0: virtual-wire mode, no IMCR.
    mpf[10] = checksum(&mpf);
    mpf
}

/// Writes the MP floating pointer and configuration table for `num_cpus`
/// CPUs at [`EBDA_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    let max_by_space = (SPACE - FIXED_SIZE) / CPU_ENTRY_SIZE;
    if num_cpus > MAX_CPUS || usize::from(num_cpus) > max_by_space {
        return Err(MptableError::TooManyCpus {
            requested: num_cpus,
            max: MAX_CPUS.min(u8::try_from(max_by_space).unwrap_or(u8::MAX)),
        });
    }
    let mut bytes = Vec::with_capacity(FIXED_SIZE + usize::from(num_cpus) * CPU_ENTRY_SIZE);
    bytes.extend_from_slice(&floating_pointer((EBDA_START as usize + MPF_SIZE) as u32));
    bytes.extend_from_slice(&config_table(num_cpus));
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// Parses the table the way Linux's mpparse does; returns the entries.
    fn parse(mem: &GuestMemoryMmap) -> Vec<Vec<u8>> {
        let mpf = read(mem, EBDA_START, MPF_SIZE);
        assert_eq!(&mpf[0..4], b"_MP_");
        assert_eq!((mpf[8], mpf[9], mpf[11]), (1, 4, 0));
        assert_eq!(sum(&mpf), 0, "floating pointer checksum");
        let table_addr = u64::from(u32::from_le_bytes(mpf[4..8].try_into().unwrap()));
        let header = read(mem, table_addr, HEADER_SIZE);
        assert_eq!(&header[0..4], b"PCMP");
        assert_eq!(header[6], 4);
        let length = usize::from(u16::from_le_bytes([header[4], header[5]]));
        assert!(table_addr + length as u64 <= MPTABLE_END);
        let table = read(mem, table_addr, length);
        assert_eq!(sum(&table), 0, "configuration table checksum");
        assert_eq!(
            u32::from_le_bytes(table[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        let count = usize::from(u16::from_le_bytes([table[34], table[35]]));

        let mut entries = Vec::new();
        let mut off = HEADER_SIZE;
        while off < length {
            let size = if table[off] == MP_PROCESSOR {
                CPU_ENTRY_SIZE
            } else {
                SMALL_ENTRY_SIZE
            };
            assert!(
                table[off] <= MP_LINTSRC,
                "unknown entry type {}",
                table[off]
            );
            entries.push(table[off..off + size].to_vec());
            off += size;
        }
        assert_eq!(off, length);
        assert_eq!(entries.len(), count);
        entries
    }

    #[test]
    fn cpus_bus_ioapic_and_interrupts() {
        let mem = memory();
        setup_mptable(&mem, 4).unwrap();
        let entries = parse(&mem);
        let of = |t: u8| entries.iter().filter(move |e| e[0] == t);

        let cpus: Vec<_> = of(MP_PROCESSOR).collect();
        assert_eq!(cpus.len(), 4);
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(usize::from(cpu[1]), i, "APIC ID");
            assert_eq!(cpu[2], 0x14);
            assert_eq!(cpu[3], if i == 0 { 3 } else { 1 }, "enabled, BSP on 0");
        }
        let bus: Vec<_> = of(MP_BUS).collect();
        assert_eq!(bus.len(), 1);
        assert_eq!(&bus[0][2..8], b"ISA   ");

        let ioapic: Vec<_> = of(MP_IOAPIC).collect();
        assert_eq!(ioapic.len(), 1);
        assert_eq!((ioapic[0][1], ioapic[0][2], ioapic[0][3]), (4, 0x11, 1));
        assert_eq!(
            u32::from_le_bytes(ioapic[0][4..8].try_into().unwrap()),
            0xfec0_0000
        );

        let irqs: Vec<_> = of(MP_INTSRC).collect();
        assert_eq!(irqs.len(), 15);
        for e in &irqs {
            assert_eq!((e[1], e[4], e[6]), (MP_INT, ISA_BUS_ID, 4));
            let (irq, pin, flags) = (e[5], e[7], u16::from_le_bytes([e[2], e[3]]));
            match irq {
                0 => assert_eq!((pin, flags), (2, 0)),
                9 => assert_eq!((pin, flags), (9, 0xd)),
                _ => assert_eq!((pin, flags), (irq, 0)),
            }
        }
        assert!(irqs.iter().all(|e| e[5] != 2), "no entry for the cascade");

        let lints: Vec<_> = of(MP_LINTSRC).collect();
        assert_eq!(lints.len(), 2);
        assert_eq!((lints[0][1], lints[0][6], lints[0][7]), (MP_EXTINT, 0, 0));
        assert_eq!((lints[1][1], lints[1][6], lints[1][7]), (MP_NMI, 0xff, 1));
    }

    #[test]
    fn every_cpu_count_up_to_the_limit() {
        let mem = memory();
        for n in 1..=MAX_CPUS {
            setup_mptable(&mem, n).unwrap();
            let cpus = parse(&mem).iter().filter(|e| e[0] == MP_PROCESSOR).count();
            assert_eq!(cpus, usize::from(n));
        }
    }

    #[test]
    fn errors() {
        let mem = memory();
        assert_eq!(MAX_CPUS, 254);
        let err = setup_mptable(&mem, 255).unwrap_err();
        assert_eq!(err.cause(), "mptable_too_many_cpus");
        assert_eq!(
            setup_mptable(&mem, 0).unwrap_err().cause(),
            "mptable_no_cpus"
        );
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9_0000)]).unwrap();
        assert_eq!(
            setup_mptable(&small, 1).unwrap_err().cause(),
            "mptable_write"
        );
    }
}
