//! The guest-physical layout of QEMU's RAM: which guest-physical ranges
//! are which bytes of the memory backend (the RAM file).
//!
//! The source is QEMU's own rendered memory map, the flat view of the
//! `memory` address space (`info mtree -f` through QMP's
//! `human-monitor-command`): it is what the vCPUs and the gdbstub see, with
//! the PCI hole, the ROMs that shadow low RAM, and the part above 4 GiB
//! already resolved. Each `ram` range owned by the backend's memory region
//! (named after the backend's id) carries its offset in that region
//! (`@offset`, 0 when absent), which is its offset in the file. Nothing is
//! guessed: a map without such a range, with overlaps, or with a range
//! beyond the backend's size is refused.

use super::error::ShmError;

/// One guest-physical range backed by the RAM file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// First guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset of `gpa` in the RAM file.
    pub offset: u64,
}

impl RamRange {
    /// True when `gpa..gpa+len` lies inside this range.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa && gpa.checked_add(len).is_some_and(|end| end <= self.gpa + self.len)
    }
}

/// The ranges of one memory backend, sorted by address, disjoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamLayout {
    /// The backend's id (`-object memory-backend-file,id=…`).
    pub backend: String,
    /// The backend's size in bytes (from `query-memdev`).
    pub size: u64,
    /// The ranges.
    pub ranges: Vec<RamRange>,
}

impl RamLayout {
    /// Parses the flat view of the `memory` address space in `mtree` (the
    /// text of `info mtree -f`) for the RAM of backend `id` of `size` bytes.
    pub fn from_mtree(mtree: &str, id: &str, size: u64) -> Result<Self, ShmError> {
        let view = memory_flat_view(mtree).ok_or_else(|| ShmError::Layout("no flat view of the \"memory\" address space in `info mtree -f`".into()))?;
        let mut ranges = Vec::new();
        for line in view {
            let Some(r) = parse_line(line, id)? else { continue };
            ranges.push(r);
        }
        Self::new(id, size, ranges)
    }

    /// Checks and sorts `ranges`.
    pub fn new(id: &str, size: u64, mut ranges: Vec<RamRange>) -> Result<Self, ShmError> {
        if ranges.is_empty() {
            return Err(ShmError::Layout(format!("the memory map has no RAM of backend {id:?}")));
        }
        ranges.sort_by_key(|r| r.gpa);
        for w in ranges.windows(2) {
            if w[0].gpa + w[0].len > w[1].gpa {
                return Err(ShmError::Layout(format!("RAM ranges overlap at {:#x}", w[1].gpa)));
            }
        }
        if let Some(r) = ranges.iter().find(|r| r.offset.checked_add(r.len).is_none_or(|end| end > size)) {
            return Err(ShmError::Layout(format!("range {:#x}+{:#x} at offset {:#x} is beyond the backend's {size:#x} bytes", r.gpa, r.len, r.offset)));
        }
        Ok(Self { backend: id.to_string(), size, ranges })
    }

    /// The file offset of `gpa..gpa+len`, when it lies in one range.
    pub fn offset_of(&self, gpa: u64, len: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|r| r.gpa <= gpa).checked_sub(1)?;
        let r = &self.ranges[i];
        r.contains(gpa, len).then(|| r.offset + (gpa - r.gpa))
    }

    /// Total guest-visible bytes of the backend.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }
}

/// The entry lines of the flat view that renders address space "memory".
fn memory_flat_view(mtree: &str) -> Option<Vec<&str>> {
    let lines: Vec<&str> = mtree.lines().collect();
    let at = lines.iter().position(|l| l.trim() == "AS \"memory\", root: system" || l.trim().starts_with("AS \"memory\""))?;
    let entries = lines[at..]
        .iter()
        .skip_while(|l| !l.trim_start().starts_with("Root memory region"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("FlatView"))
        .copied()
        .collect();
    Some(entries)
}

/// `START-END (prio P, KIND): NAME[ @OFFSET][ …]`: a range of backend `id`
/// when KIND is `ram` and NAME is `id`.
fn parse_line(line: &str, id: &str) -> Result<Option<RamRange>, ShmError> {
    let bad = || ShmError::Layout(format!("cannot read memory map line {:?}", line.chars().take(120).collect::<String>()));
    let t = line.trim();
    let (span, rest) = t.split_once(' ').ok_or_else(bad)?;
    let (attrs, tail) = rest.split_once("):").ok_or_else(bad)?;
    let kind = attrs.rsplit(", ").next().unwrap_or("");
    let mut words = tail.split_whitespace();
    let name = words.next().ok_or_else(bad)?;
    if kind != "ram" || name != id {
        return Ok(None);
    }
    let (s, e) = span.split_once('-').ok_or_else(bad)?;
    let hex = |h: &str| u64::from_str_radix(h, 16).map_err(|_| bad());
    let (start, end) = (hex(s)?, hex(e)?);
    if end < start || end == u64::MAX {
        return Err(bad());
    }
    let offset = match words.next() {
        Some(w) if w.starts_with('@') => hex(&w[1..])?,
        _ => 0,
    };
    Ok(Some(RamRange { gpa: start, len: end - start + 1, offset }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// QEMU 7.2's `info mtree -f` for `-m 5G -machine memory-backend=mem`
    /// (pc-i440fx), shortened: the I/O view first, then "memory".
    const MTREE: &str = "FlatView #1\n AS \"I/O\", root: io\n Root memory region: io\n  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan\n\n\
FlatView #2\n AS \"memory\", root: system\n AS \"cpu-memory-0\", root: system\n Root memory region: system\n\
  0000000000000000-00000000000bffff (prio 0, ram): mem\n\
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom\n\
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000\n\
  0000000000100000-00000000bfffffff (prio 0, ram): mem @0000000000100000\n\
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic\n\
  0000000100000000-000000017fffffff (prio 0, ram): mem @00000000c0000000 KVM\n\n\
FlatView #3\n AS \"KVM-SMRAM\", root: mem-container-smram\n Root memory region: mem-container-smram\n\
  0000000000000000-00000000ffffffff (prio 0, ram): mem\n";

    #[test]
    fn below_and_above_the_pci_hole() {
        let l = RamLayout::from_mtree(MTREE, "mem", 5 << 30).unwrap();
        assert_eq!(
            l.ranges,
            vec![
                RamRange { gpa: 0, len: 0xc0000, offset: 0 },
                RamRange { gpa: 0x10_0000, len: 0xbff0_0000, offset: 0x10_0000 },
                RamRange { gpa: 1 << 32, len: 0x8000_0000, offset: 0xc000_0000 },
            ]
        );
        assert_eq!(l.offset_of(0x1234, 8), Some(0x1234));
        assert_eq!(l.offset_of(0x1_0000_1000, 16), Some(0xc000_1000));
        assert_eq!(l.offset_of(0xc0000, 1), None, "the ROM shadows RAM there");
        assert_eq!(l.offset_of(0xbfff_fff0, 0x20), None, "crosses into the PCI hole");
        assert_eq!(l.offset_of(0x1_8000_0000, 1), None, "above the top");
        assert_eq!(l.mapped_bytes(), 0xc0000 + 0xbff0_0000 + 0x8000_0000);
    }

    #[test]
    fn another_backend_name_or_a_smaller_backend_is_refused() {
        assert_eq!(RamLayout::from_mtree(MTREE, "pc.ram", 5 << 30).unwrap_err().cause(), "shm_layout");
        let e = RamLayout::from_mtree(MTREE, "mem", 4 << 30).unwrap_err();
        assert!(e.to_string().contains("beyond"), "{e}");
        assert_eq!(RamLayout::from_mtree("FlatView #0\n", "mem", 1 << 30).unwrap_err().cause(), "shm_layout");
    }

    #[test]
    fn garbage_lines_are_errors_not_panics() {
        let m = "FlatView #2\n AS \"memory\", root: system\n Root memory region: system\n  zz-00 (prio 0, ram): mem\n";
        assert_eq!(RamLayout::from_mtree(m, "mem", 1 << 30).unwrap_err().cause(), "shm_layout");
        let m = "FlatView #2\n AS \"memory\", root: system\n Root memory region: system\n  0000000000001000-0000000000000fff (prio 0, ram): mem\n";
        assert!(RamLayout::from_mtree(m, "mem", 1 << 30).is_err());
        let m = "FlatView #2\n AS \"memory\", root: system\n Root memory region: system\n  0-fff (prio 0, ram): mem @ffffffffffffffff\n";
        assert!(RamLayout::from_mtree(m, "mem", 1 << 30).is_err());
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let r = |gpa, len, offset| RamRange { gpa, len, offset };
        assert!(RamLayout::new("mem", 1 << 20, vec![r(0, 0x2000, 0), r(0x1000, 0x1000, 0x1000)]).is_err());
    }
}
