//! Per-vCPU CPUID, derived from the host's `KVM_GET_SUPPORTED_CPUID`.
//!
//! The guest sees one socket with `vcpu_count` cores of one thread each.
//! vCPU *i* has initial (x2)APIC ID *i* in every leaf that reports one, the
//! topology leaves (1, 4, 0xB, 0x1F; AMD 0x8000_0008, 0x8000_001D,
//! 0x8000_001E) agree with that shape, the hypervisor bit is set, and feature
//! bits for hardware a VM does not have (debug store, thermal monitor,
//! MONITOR/MWAIT, ...) are cleared. Leaves are edited only where KVM reported
//! them; none are added. [`set_cpuid`] hands the result to a vCPU.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use kvm_ioctls::VcpuFd;

/// Leaf 1 EBX: initial APIC ID, bits 31:24.
const LEAF1_EBX_APIC_ID_SHIFT: u32 = 24;
/// Leaf 1 EBX: addressable logical processors per package, bits 23:16.
const LEAF1_EBX_CPU_COUNT_SHIFT: u32 = 16;
/// Leaf 1 ECX: TSC-deadline timer.
pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: HTT (leaf 1 EBX[23:16] is valid; more than one logical CPU).
pub const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX bits cleared: DTES64, MONITOR, DS-CPL, TM2, PDCM.
const LEAF1_ECX_CLEAR: u32 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 8) | (1 << 15);
/// Leaf 1 EDX bits cleared: DS, ACPI (thermal MSRs), TM, PBE.
const LEAF1_EDX_CLEAR: u32 = (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31);
/// Leaf 0xB/0x1F level types.
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// CPU vendor as leaf 0 reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuVendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD" or "HygonGenuine" (same topology leaves).
    Amd,
    /// Anything else, or no leaf 0.
    Other,
}

/// The vendor named by leaf 0 of `cpuid`.
pub fn vendor(cpuid: &CpuId) -> CpuVendor {
    let Some(leaf0) = cpuid.as_slice().iter().find(|e| e.function == 0) else {
        return CpuVendor::Other;
    };
    let mut id = [0u8; 12];
    id[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    id[8..12].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => CpuVendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => CpuVendor::Amd,
        _ => CpuVendor::Other,
    }
}

/// Bits needed to number `count` cores: ceil(log2(count)).
fn id_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

fn leaf1(e: &mut kvm_cpuid_entry2, apic_id: u32, count: u8) {
    e.ebx = (e.ebx & 0xffff)
        | (apic_id << LEAF1_EBX_APIC_ID_SHIFT)
        | (u32::from(count) << LEAF1_EBX_CPU_COUNT_SHIFT);
    e.ecx = (e.ecx & !LEAF1_ECX_CLEAR) | LEAF1_ECX_HYPERVISOR;
    e.edx &= !LEAF1_EDX_CLEAR;
    if count > 1 {
        e.edx |= LEAF1_EDX_HTT;
    } else {
        e.edx &= !LEAF1_EDX_HTT;
    }
}

/// Cache-sharing fields of leaf 4 (Intel) and 0x8000_001D (AMD): L1/L2 per
/// core, L3 and beyond shared by the whole package.
fn cache_leaf(e: &mut kvm_cpuid_entry2, count: u8, with_core_field: bool) {
    if e.eax & 0x1f == 0 {
        return; // no cache at this index
    }
    let ids = (1u32 << id_bits(count)) - 1;
    let level = (e.eax >> 5) & 0x7;
    let sharing = if level >= 3 { ids.min(0xfff) } else { 0 };
    e.eax = (e.eax & !(0xfff << 14)) | (sharing << 14);
    if with_core_field {
        e.eax = (e.eax & !(0x3f << 26)) | (ids.min(0x3f) << 26);
    }
}

fn extended_topology(e: &mut kvm_cpuid_entry2, apic_id: u32, count: u8) {
    let level = e.index;
    let (shift, processors, kind) = match level {
        0 => (0, 1, LEVEL_TYPE_SMT),
        1 => (id_bits(count), u32::from(count), LEVEL_TYPE_CORE),
        _ => (0, 0, LEVEL_TYPE_INVALID),
    };
    e.eax = shift;
    e.ebx = processors;
    e.ecx = (kind << 8) | (level & 0xff);
    e.edx = apic_id;
}

/// Adapts `cpuid` (as returned by `KVM_GET_SUPPORTED_CPUID`) for vCPU
/// `vcpu_index` of `vcpu_count`; the result goes to that vCPU's `set_cpuid2`.
/// The TSC-deadline bit is left as KVM reported it, see [`set_tsc_deadline`].
pub fn filter_cpuid(cpuid: &mut CpuId, vcpu_index: u8, vcpu_count: u8) {
    let vendor = vendor(cpuid);
    let apic_id = u32::from(vcpu_index);
    let count = vcpu_count.max(1);
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => leaf1(e, apic_id, count),
            0x4 => cache_leaf(e, count, true),
            0xb | 0x1f => extended_topology(e, apic_id, count),
            0x8000_0008 if vendor == CpuVendor::Amd => {
                // ECX[15:12] APIC ID size, ECX[7:0] cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(count) << 12) | (u32::from(count) - 1);
            }
            0x8000_001d if vendor == CpuVendor::Amd => cache_leaf(e, count, false),
            0x8000_001e if vendor == CpuVendor::Amd => {
                // Extended APIC ID; compute unit = core, 1 thread each; node 0 of 1.
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

/// Errors giving a vCPU its CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// `KVM_SET_CPUID2` failed.
    #[error("KVM_SET_CPUID2 failed")]
    SetCpuid(#[source] kvm_ioctls::Error),
}

impl CpuidError {
    /// Stable machine-readable name of the error.
    pub fn cause(&self) -> &'static str {
        match self {
            CpuidError::SetCpuid(_) => "set_cpuid",
        }
    }
}

/// Gives `vcpu` the CPUID leaves `cpuid` (see [`filter_cpuid`]).
pub fn set_cpuid(vcpu: &VcpuFd, cpuid: &CpuId) -> Result<(), CpuidError> {
    vcpu.set_cpuid2(cpuid).map_err(CpuidError::SetCpuid)
}

/// Sets or clears the TSC-deadline timer bit; pass whether KVM has
/// `KVM_CAP_TSC_DEADLINE_TIMER` (it needs the in-kernel LAPIC).
pub fn set_tsc_deadline(cpuid: &mut CpuId, supported: bool) {
    for e in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 1) {
        if supported {
            e.ecx |= LEAF1_ECX_TSC_DEADLINE;
        } else {
            e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn e(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn vendor_leaf(id: &[u8; 12]) -> kvm_cpuid_entry2 {
        let w = |i: usize| u32::from_le_bytes([id[i], id[i + 1], id[i + 2], id[i + 3]]);
        e(0, 0, 0x1f, w(0), w(8), w(4))
    }

    /// A host-like Intel table: 8 host threads, 2 per core.
    fn intel() -> CpuId {
        CpuId::from_entries(&[
            vendor_leaf(b"GenuineIntel"),
            // APIC ID 7, 16 logical, CLFLUSH 8; MONITOR+PDCM set; EDX with DS, HTT, PBE.
            e(1, 0, 0x906ea, 0x0710_0800, 0x7ffa_820b, 0xbfeb_fbff),
            // L1d (type 1, level 1), L2 (type 3, level 2), L3 (type 3, level 3), end.
            e(4, 0, 0x1c00_4121, 0, 0, 0),
            e(4, 1, 0x1c00_4143, 0, 0, 0),
            e(4, 2, 0x1c03_c163, 0, 0, 0),
            e(4, 3, 0, 0, 0, 0),
            e(0xb, 0, 1, 2, 0x100, 7),
            e(0xb, 1, 4, 8, 0x201, 7),
            e(0xb, 2, 0, 0, 2, 7),
            e(0x1f, 0, 1, 2, 0x100, 7),
            e(0x1f, 1, 4, 8, 0x201, 7),
            e(0x8000_0008, 0, 0x3027, 0, 0, 0),
        ])
        .unwrap()
    }

    fn leaf(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn vendor_is_read_from_leaf_0() {
        assert_eq!(vendor(&intel()), CpuVendor::Intel);
        let amd = CpuId::from_entries(&[vendor_leaf(b"AuthenticAMD")]).unwrap();
        assert_eq!(vendor(&amd), CpuVendor::Amd);
        assert_eq!(vendor(&CpuId::new(0).unwrap()), CpuVendor::Other);
    }

    #[test]
    fn leaf1_apic_id_count_htt_hypervisor() {
        for (index, count) in [(0u8, 1u8), (0, 4), (3, 4), (5, 6)] {
            let mut c = intel();
            filter_cpuid(&mut c, index, count);
            let l = leaf(&c, 1, 0);
            assert_eq!(l.ebx >> 24, u32::from(index));
            assert_eq!((l.ebx >> 16) & 0xff, u32::from(count));
            assert_eq!(l.ebx & 0xffff, 0x0800, "CLFLUSH size and brand kept");
            assert_eq!(l.edx & LEAF1_EDX_HTT != 0, count > 1);
            assert_ne!(l.ecx & LEAF1_ECX_HYPERVISOR, 0);
            assert_eq!(l.ecx & (1 << 3), 0, "MONITOR cleared");
            assert_eq!(l.ecx & (1 << 15), 0, "PDCM cleared");
            assert_eq!(l.edx & ((1 << 21) | (1 << 31)), 0, "DS, PBE cleared");
            assert_eq!(l.eax, 0x906ea, "signature kept");
        }
    }

    #[test]
    fn leaf4_cache_sharing() {
        let mut c = intel();
        filter_cpuid(&mut c, 1, 6);
        for index in 0..3 {
            let l = leaf(&c, 4, index);
            assert_eq!(l.eax >> 26, 7, "8 addressable core IDs for 6 cores");
            let sharing = (l.eax >> 14) & 0xfff;
            assert_eq!(sharing, if index == 2 { 7 } else { 0 });
            assert_eq!(l.eax & 0x3fff, leaf(&intel(), 4, index).eax & 0x3fff);
        }
        assert_eq!(leaf(&c, 4, 3).eax, 0, "terminating subleaf untouched");
    }

    #[test]
    fn extended_topology_leaves() {
        let mut c = intel();
        filter_cpuid(&mut c, 2, 3);
        for function in [0xb, 0x1f] {
            let smt = leaf(&c, function, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
            let core = leaf(&c, function, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        }
        let end = leaf(&c, 0xb, 2);
        assert_eq!((end.ebx, (end.ecx >> 8) & 0xff, end.edx), (0, 0, 2));
    }

    #[test]
    fn amd_leaves_only_on_amd() {
        let mut c = intel();
        filter_cpuid(&mut c, 0, 4);
        assert_eq!(leaf(&c, 0x8000_0008, 0).ecx, 0, "Intel keeps reserved ECX");

        let mut amd = CpuId::from_entries(&[
            vendor_leaf(b"AuthenticAMD"),
            e(1, 0, 0x800f12, 0x0010_0800, 0, 0x178b_fbff),
            e(0x8000_0008, 0, 0x3030, 0, 0x0001_700f, 0),
            e(0x8000_001d, 0, 0x121, 0, 0, 0),
            e(0x8000_001d, 1, 0x163, 0, 0, 0),
            e(0x8000_001e, 0, 0, 0, 0, 0),
        ])
        .unwrap();
        filter_cpuid(&mut amd, 3, 5);
        let l8 = leaf(&amd, 0x8000_0008, 0);
        assert_eq!(l8.ecx & 0xff, 4, "NC = cores - 1");
        assert_eq!((l8.ecx >> 12) & 0xf, 3, "APIC ID size for 5 cores");
        assert_eq!(l8.ecx & 0x0003_0000, 0x0001_0000, "other fields kept");
        assert_eq!((leaf(&amd, 0x8000_001d, 0).eax >> 14) & 0xfff, 0);
        assert_eq!((leaf(&amd, 0x8000_001d, 1).eax >> 14) & 0xfff, 7);
        let l1e = leaf(&amd, 0x8000_001e, 0);
        assert_eq!((l1e.eax, l1e.ebx & 0xff, (l1e.ebx >> 8) & 0xff), (3, 3, 0));
    }

    #[test]
    fn tsc_deadline_follows_kvm() {
        let mut c = intel();
        filter_cpuid(&mut c, 0, 1);
        let before = leaf(&intel(), 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE;
        assert_eq!(leaf(&c, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, before);
        set_tsc_deadline(&mut c, true);
        assert_ne!(leaf(&c, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        set_tsc_deadline(&mut c, false);
        assert_eq!(leaf(&c, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn host_cpuid_with_kvm_when_available() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            return;
        };
        let mut c = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        filter_cpuid(&mut c, 1, 2);
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(1).unwrap();
        vcpu.set_cpuid2(&c).unwrap();
        assert_eq!(leaf(&c, 1, 0).ebx >> 24, 1);
    }
}
