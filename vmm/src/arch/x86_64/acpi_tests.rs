//! Unit tests of [`super`]: the tables are read back from guest memory and
//! parsed the way an OS does.

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

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Reads the table with a standard header at `addr`; checks its length fits
/// the BIOS area and its checksum.
fn table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
    assert!((RSDP_START..BIOS_END).contains(&addr), "{addr:#x}");
    let header = read(mem, addr, 36);
    assert_eq!(&header[0..4], signature);
    let len = u32_at(&header, 4) as usize;
    assert!(addr + len as u64 <= BIOS_END);
    let t = read(mem, addr, len);
    assert_eq!(
        sum(&t),
        0,
        "{} checksum",
        String::from_utf8_lossy(signature)
    );
    assert_eq!(&t[10..16], &OEM_ID);
    t
}

/// Follows RSDP → XSDT and returns (FADT, MADT) addresses.
fn walk(mem: &GuestMemoryMmap, rsdp_addr: u64) -> (u64, u64) {
    assert_eq!(rsdp_addr, RSDP_START);
    let rsdp = read(mem, rsdp_addr, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[0..20]), 0, "RSDP v1 checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(u32_at(&rsdp, 20), 36, "length");
    let xsdt = table(mem, u64_at(&rsdp, 24), b"XSDT");
    assert_eq!(xsdt.len(), 36 + 2 * 8);
    (u64_at(&xsdt, 36), u64_at(&xsdt, 44))
}

#[test]
fn rsdp_xsdt_and_checksums() {
    let mem = memory();
    let rsdp = setup_acpi(&mem, 2).unwrap();
    let (fadt, madt) = walk(&mem, rsdp);
    table(&mem, fadt, b"FACP");
    table(&mem, madt, b"APIC");
}

#[test]
fn tables_do_not_overlap() {
    let mut tables = acpi_tables(MAX_CPUS).unwrap();
    tables.sort_by_key(|t| t.0);
    assert_eq!(tables[0].0, RSDP_START);
    for pair in tables.windows(2) {
        assert!(pair[0].0 + pair[0].1.len() as u64 <= pair[1].0);
    }
    let last = tables.last().unwrap();
    assert!(last.0 + last.1.len() as u64 <= BIOS_END);
}

#[test]
fn fadt_points_at_dsdt_facs_and_pm1_ports() {
    let mem = memory();
    let (fadt_addr, _) = walk(&mem, setup_acpi(&mem, 1).unwrap());
    let fadt = table(&mem, fadt_addr, b"FACP");
    assert_eq!(fadt.len(), 276);
    assert_eq!(fadt[8], 6, "FADT major revision");
    assert_eq!(u16_at(&fadt, 46), 9, "SCI_INT");
    assert_eq!(u32_at(&fadt, 48), 0, "SMI_CMD: always in ACPI mode");
    assert_eq!(u32_at(&fadt, 56), u32::from(ACPI_PM1A_EVT_PORT));
    assert_eq!(u32_at(&fadt, 64), u32::from(ACPI_PM1A_CNT_PORT));
    assert_eq!((fadt[88], fadt[89]), (4, 2), "PM1_EVT_LEN, PM1_CNT_LEN");
    let flags = u32_at(&fadt, 112);
    assert_eq!(flags & (1 << 20), 0, "not HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_eq!(
        u16_at(&fadt, 109),
        0x25,
        "IAPC_BOOT_ARCH: legacy, no VGA, no RTC"
    );
    // RESET_REG: SystemIO, 8 bits at the i8042 command port; value 0xfe.
    assert_eq!((fadt[116], fadt[117]), (1, 8));
    assert_eq!(u64_at(&fadt, 120), 0x64);
    assert_eq!(fadt[128], 0xfe);
    // X_PM1a_EVT_BLK / X_PM1a_CNT_BLK: SystemIO GAS with matching widths.
    assert_eq!((fadt[148], fadt[149]), (1, 32));
    assert_eq!(u64_at(&fadt, 152), u64::from(ACPI_PM1A_EVT_PORT));
    assert_eq!((fadt[172], fadt[173]), (1, 16));
    assert_eq!(u64_at(&fadt, 176), u64::from(ACPI_PM1A_CNT_PORT));

    let facs_addr = u64_at(&fadt, 132);
    assert_eq!(facs_addr % 64, 0, "FACS is 64-byte aligned");
    let facs = read(&mem, facs_addr, 8);
    assert_eq!(&facs[0..4], b"FACS");
    assert_eq!(u32_at(&facs, 4), 64);

    let dsdt_addr = u64_at(&fadt, 140);
    assert_ne!(dsdt_addr, 0, "X_DSDT");
    let dsdt = table(&mem, dsdt_addr, b"DSDT");
    // Name(_S5_, Package(4) { 5, 5, 0, 0 })
    let s5 = [
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00,
    ];
    assert_eq!(&dsdt[36..], &s5);
}

#[test]
fn madt_describes_cpus_ioapic_overrides_and_nmi() {
    for n in [1u8, 3, 64, MAX_CPUS] {
        let mem = memory();
        let (_, madt_addr) = walk(&mem, setup_acpi(&mem, n).unwrap());
        let madt = table(&mem, madt_addr, b"APIC");
        assert_eq!(u32_at(&madt, 36), 0xfee0_0000, "local APIC address");
        assert_eq!(u32_at(&madt, 40), 1, "PCAT_COMPAT");

        let (mut cpus, mut ioapics, mut overrides, mut nmis) = (vec![], vec![], vec![], vec![]);
        let mut off = 44;
        while off < madt.len() {
            let (kind, len) = (madt[off], usize::from(madt[off + 1]));
            let e = &madt[off..off + len];
            match kind {
                0 => cpus.push(e.to_vec()),
                1 => ioapics.push(e.to_vec()),
                2 => overrides.push(e.to_vec()),
                4 => nmis.push(e.to_vec()),
                _ => panic!("unexpected MADT entry type {kind}"),
            }
            off += len;
        }
        assert_eq!(off, madt.len());

        assert_eq!(cpus.len(), usize::from(n));
        for (i, c) in cpus.iter().enumerate() {
            assert_eq!(c.len(), 8);
            assert_eq!(
                (usize::from(c[2]), usize::from(c[3])),
                (i, i),
                "UID, APIC ID"
            );
            assert_eq!(u32_at(c, 4), 1, "enabled");
        }
        assert_eq!(ioapics.len(), 1);
        let io = &ioapics[0];
        assert_eq!((io[1], io[2]), (12, n));
        assert_eq!(u32_at(io, 4), 0xfec0_0000);
        assert_eq!(u32_at(io, 8), 0, "GSI base");

        assert_eq!(overrides.len(), 2);
        let o: Vec<_> = overrides
            .iter()
            .map(|e| (e[1], e[2], e[3], u32_at(e, 4), u16_at(e, 8)))
            .collect();
        assert!(o.contains(&(10, 0, 0, 2, 0)), "IRQ0 -> GSI2");
        assert!(o.contains(&(10, 0, 9, 9, 0xd)), "SCI: level, active high");

        assert_eq!(nmis.len(), 1);
        assert_eq!((nmis[0][1], nmis[0][2], nmis[0][5]), (6, 0xff, 1));
    }
}

#[test]
fn cpu_count_limits() {
    let mem = memory();
    assert_eq!(setup_acpi(&mem, 0).unwrap_err().cause(), "acpi_no_cpus");
    assert_eq!(
        setup_acpi(&mem, 255).unwrap_err().cause(),
        "acpi_too_many_cpus"
    );
    let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
    assert_eq!(setup_acpi(&small, 1).unwrap_err().cause(), "acpi_write");
}
