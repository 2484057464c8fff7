//! The boot GDT and IDT of the Linux 64-bit boot protocol.
//!
//! The protocol requires a GDT with flat 4 GiB descriptors at the selectors
//! `__BOOT_CS` (0x10, execute/read) and `__BOOT_DS` (0x18, read/write); CS
//! must be `__BOOT_CS` and DS/ES/SS `__BOOT_DS`. Entries 0 and 1 are null,
//! exactly as Linux's own boot GDT. The IDT is a single empty gate: the guest
//! runs with interrupts off until it loads its own.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BOOT_GDT_ENTRIES, BOOT_GDT_START, BOOT_IDT_START};

/// Selector of the boot code segment (`__BOOT_CS`).
pub const BOOT_CS_SELECTOR: u16 = 0x10;
/// Selector of the boot data segment (`__BOOT_DS`).
pub const BOOT_DS_SELECTOR: u16 = 0x18;

/// Access byte of the code segment: present, DPL 0, code, execute/read, accessed.
const CODE_ACCESS: u8 = 0x9b;
/// Access byte of the data segment: present, DPL 0, data, read/write, accessed.
const DATA_ACCESS: u8 = 0x93;
/// Flags nibble of the code segment: 4 KiB granularity, 64-bit (L).
const CODE_FLAGS: u8 = 0xa;
/// Flags nibble of the data segment: 4 KiB granularity, 32-bit default size.
const DATA_FLAGS: u8 = 0xc;
/// Largest 20-bit limit: with 4 KiB granularity, a flat 4 GiB segment.
const FLAT_LIMIT: u32 = 0xf_ffff;

/// `GDTR.limit` of the boot GDT.
pub const BOOT_GDT_LIMIT: u16 = (BOOT_GDT_ENTRIES * 8 - 1) as u16;
/// `IDTR.limit` of the boot IDT (one empty 8-byte slot).
pub const BOOT_IDT_LIMIT: u16 = 7;

/// Errors writing the descriptor tables.
#[derive(Debug, thiserror::Error)]
pub enum GdtError {
    /// The GDT does not fit in guest memory.
    #[error("cannot write the GDT")]
    WriteGdt(#[source] vm_memory::GuestMemoryError),
    /// The IDT does not fit in guest memory.
    #[error("cannot write the IDT")]
    WriteIdt(#[source] vm_memory::GuestMemoryError),
}

impl GdtError {
    /// Stable machine-readable name of the error.
    pub fn cause(&self) -> &'static str {
        match self {
            GdtError::WriteGdt(_) => "gdt_write",
            GdtError::WriteIdt(_) => "idt_write",
        }
    }
}

/// One 8-byte segment descriptor, in the format the CPU reads from the GDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentDescriptor(pub u64);

impl SegmentDescriptor {
    /// Encodes a descriptor from its access byte (P, DPL, S, type), its flags
    /// nibble (G, D/B, L, AVL), base and 20-bit limit.
    pub const fn new(access: u8, flags: u8, base: u32, limit: u32) -> Self {
        let base = base as u64;
        let limit = (limit & 0xf_ffff) as u64;
        SegmentDescriptor(
            (limit & 0xffff)
                | ((base & 0xff_ffff) << 16)
                | ((access as u64) << 40)
                | ((limit >> 16) << 48)
                | (((flags & 0xf) as u64) << 52)
                | ((base >> 24) << 56),
        )
    }

    /// The null descriptor.
    pub const fn null() -> Self {
        SegmentDescriptor(0)
    }

    /// Segment base.
    pub fn base(self) -> u64 {
        ((self.0 >> 16) & 0xff_ffff) | (((self.0 >> 56) & 0xff) << 24)
    }

    /// Raw 20-bit limit field (in units of the granularity).
    pub fn raw_limit(self) -> u32 {
        ((self.0 & 0xffff) | (((self.0 >> 48) & 0xf) << 16)) as u32
    }

    fn access(self) -> u8 {
        (self.0 >> 40) as u8
    }

    fn flags(self) -> u8 {
        ((self.0 >> 52) & 0xf) as u8
    }

    /// Segment type (low 4 bits of the access byte).
    pub fn type_(self) -> u8 {
        self.access() & 0xf
    }

    /// Descriptor-type bit: 1 for code/data, 0 for system segments.
    pub fn s(self) -> u8 {
        (self.access() >> 4) & 1
    }

    /// Descriptor privilege level.
    pub fn dpl(self) -> u8 {
        (self.access() >> 5) & 3
    }

    /// Present bit.
    pub fn present(self) -> u8 {
        self.access() >> 7
    }

    /// Available-for-software bit.
    pub fn avl(self) -> u8 {
        self.flags() & 1
    }

    /// 64-bit code segment bit.
    pub fn l(self) -> u8 {
        (self.flags() >> 1) & 1
    }

    /// Default operation size bit (D/B).
    pub fn db(self) -> u8 {
        (self.flags() >> 2) & 1
    }

    /// Granularity bit (limit in 4 KiB units).
    pub fn g(self) -> u8 {
        self.flags() >> 3
    }

    /// Effective limit in bytes, as the CPU's hidden segment register holds it.
    pub fn limit(self) -> u32 {
        if self.g() == 1 {
            (self.raw_limit() << 12) | 0xfff
        } else {
            self.raw_limit()
        }
    }

    /// The hidden segment-register state KVM takes for this descriptor when it
    /// is loaded through `selector`.
    pub fn to_kvm_segment(self, selector: u16) -> kvm_segment {
        kvm_segment {
            base: self.base(),
            limit: self.limit(),
            selector,
            type_: self.type_(),
            present: self.present(),
            dpl: self.dpl(),
            db: self.db(),
            s: self.s(),
            l: self.l(),
            g: self.g(),
            avl: self.avl(),
            unusable: u8::from(self.present() == 0),
            padding: 0,
        }
    }
}

/// The boot GDT: null, null, `__BOOT_CS`, `__BOOT_DS`.
pub const fn boot_gdt() -> [SegmentDescriptor; BOOT_GDT_ENTRIES] {
    [
        SegmentDescriptor::null(),
        SegmentDescriptor::null(),
        SegmentDescriptor::new(CODE_ACCESS, CODE_FLAGS, 0, FLAT_LIMIT),
        SegmentDescriptor::new(DATA_ACCESS, DATA_FLAGS, 0, FLAT_LIMIT),
    ]
}

/// `kvm_segment` for CS at entry (`__BOOT_CS`).
pub fn boot_code_segment() -> kvm_segment {
    boot_gdt()[usize::from(BOOT_CS_SELECTOR >> 3)].to_kvm_segment(BOOT_CS_SELECTOR)
}

/// `kvm_segment` for DS/ES/FS/GS/SS at entry (`__BOOT_DS`).
pub fn boot_data_segment() -> kvm_segment {
    boot_gdt()[usize::from(BOOT_DS_SELECTOR >> 3)].to_kvm_segment(BOOT_DS_SELECTOR)
}

/// Writes the boot GDT at [`BOOT_GDT_START`] and an empty IDT at [`BOOT_IDT_START`].
pub fn write_gdt_idt(mem: &GuestMemoryMmap) -> Result<(), GdtError> {
    let mut bytes = Vec::with_capacity(BOOT_GDT_ENTRIES * 8);
    for d in boot_gdt() {
        bytes.extend_from_slice(&d.0.to_le_bytes());
    }
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_START))
        .map_err(GdtError::WriteGdt)?;
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(GdtError::WriteIdt)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_architectural_values() {
        let gdt = boot_gdt();
        assert_eq!(gdt[0].0, 0);
        assert_eq!(gdt[1].0, 0);
        // Flat 64-bit code and flat data, as every x86 boot loader writes them.
        assert_eq!(gdt[2].0, 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[3].0, 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn descriptor_round_trips_fields() {
        let d = SegmentDescriptor::new(0x8b, 0x1, 0x1234_5678, 0xa_bcde);
        assert_eq!(d.base(), 0x1234_5678);
        assert_eq!(d.raw_limit(), 0xa_bcde);
        assert_eq!(d.limit(), 0xa_bcde);
        assert_eq!(d.type_(), 0xb);
        assert_eq!(d.s(), 0);
        assert_eq!(d.present(), 1);
        assert_eq!(d.avl(), 1);
        assert_eq!(d.g(), 0);
    }

    #[test]
    fn kvm_segments_for_boot_selectors() {
        let cs = boot_code_segment();
        assert_eq!(cs.selector, 0x10);
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        assert_eq!((cs.type_, cs.s, cs.present, cs.dpl), (0xb, 1, 1, 0));
        assert_eq!((cs.l, cs.db, cs.g, cs.unusable), (1, 0, 1, 0));

        let ds = boot_data_segment();
        assert_eq!(ds.selector, 0x18);
        assert_eq!((ds.base, ds.limit), (0, 0xffff_ffff));
        assert_eq!((ds.type_, ds.s, ds.present), (0x3, 1, 1));
        assert_eq!((ds.l, ds.db, ds.g, ds.unusable), (0, 1, 1, 0));

        assert_eq!(SegmentDescriptor::null().to_kvm_segment(0).unusable, 1);
    }

    #[test]
    fn tables_are_written_at_the_layout_addresses() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        mem.write_obj(0xdead_beef_u64, GuestAddress(BOOT_IDT_START))
            .unwrap();
        write_gdt_idt(&mem).unwrap();
        for (i, d) in boot_gdt().iter().enumerate() {
            let v: u64 = mem
                .read_obj(GuestAddress(BOOT_GDT_START + 8 * i as u64))
                .unwrap();
            assert_eq!(v, d.0);
        }
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(BOOT_IDT_START)).unwrap(),
            0
        );
        assert_eq!(BOOT_GDT_LIMIT, 31);
        assert!(BOOT_GDT_START + u64::from(BOOT_GDT_LIMIT) < BOOT_IDT_START);
    }

    #[test]
    fn missing_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x1000), 0x1000)]).unwrap();
        assert_eq!(write_gdt_idt(&mem).unwrap_err().cause(), "gdt_write");
    }
}
