//! Identity of a kernel build: the GNU build-id ELF note (in `.notes`,
//! between `__start_notes` and `__stop_notes`) and `linux_banner`.

/// ELF note type of the GNU build-id.
const NT_GNU_BUILD_ID: u32 = 3;

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// Walk the notes in `notes` (4-byte aligned ELF notes) for the GNU build-id.
pub fn build_id_from_notes(notes: &[u8]) -> Option<Vec<u8>> {
    let mut o = 0usize;
    while o + 12 <= notes.len() {
        let namesz = u32_at(notes, o)? as usize;
        let descsz = u32_at(notes, o + 4)? as usize;
        let ty = u32_at(notes, o + 8)?;
        let name = notes.get(o + 12..o + 12 + namesz)?;
        let desc_off = o + 12 + namesz.next_multiple_of(4);
        let desc = notes.get(desc_off..desc_off + descsz)?;
        if ty == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc.to_vec());
        }
        o = desc_off + descsz.next_multiple_of(4);
    }
    None
}

/// Scan arbitrary bytes for a GNU build-id note header (fallback when the
/// notes symbols are unknown).
pub fn scan_build_id(bytes: &[u8]) -> Option<Vec<u8>> {
    const HDR: [u8; 16] = [4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];
    let mut o = 0;
    while o + 36 <= bytes.len() {
        if bytes[o..o + 16] == HDR {
            return Some(bytes[o + 16..o + 36].to_vec());
        }
        o += 4;
    }
    None
}

/// Lower-case hex of a build-id.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Find `Linux version …` in bytes (fallback when `linux_banner` is unknown).
pub fn scan_banner(bytes: &[u8]) -> Option<(usize, String)> {
    let pat = b"Linux version ";
    let i = bytes.windows(pat.len()).position(|w| w == pat)?;
    let end = bytes[i..].iter().position(|&b| b == 0 || b == b'\n').map(|e| i + e)?;
    Some((i, String::from_utf8_lossy(&bytes[i..end]).into_owned()))
}
