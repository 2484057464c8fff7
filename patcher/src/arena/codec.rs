//! The registry's encoding in guest memory: two copies (A at the arena's
//! start, B right after), each a 64-byte header and a JSON body.
//!
//! ```text
//! off  size  field
//! 0x00  8    magic "VSPLREG\0"
//! 0x08  4    version (1)
//! 0x0c  4    header size (64)
//! 0x10  8    generation (higher wins)
//! 0x18  4    body length
//! 0x1c  4    reserved (0)
//! 0x20  32   SHA-256 of the body
//! 0x40       body: the registry as JSON
//! ```
//!
//! A save writes generation n+1 into the copy that does not hold the
//! current one, body first and header last. A process killed half-way
//! leaves that copy failing its checksum, so the other, complete copy wins:
//! every load sees either the old registry or the new one, never a mix.

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::registry::Registry;
use super::REGISTRY_COPY;
use crate::model::backend::{Backend, BackendError};

/// Registry magic.
pub const MAGIC: &[u8; 8] = b"VSPLREG\0";
/// Registry encoding version.
pub const VERSION: u32 = 1;
const HEADER: usize = 64;

/// Why the registry cannot be read or written.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The registry does not fit its copy.
    #[error("registry of {len} bytes does not fit its {max}-byte slot")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// Capacity.
        max: usize,
    },
    /// JSON (de)serialization failed.
    #[error("registry JSON")]
    Json(#[from] #[source] serde_json::Error),
    /// Guest memory access failed.
    #[error("registry access")]
    Backend(#[from] #[source] BackendError),
    /// A registry is there but no copy is intact (overwritten by the guest?):
    /// starting afresh could place new code over live code, so nothing is done.
    #[error("the arena's registry is corrupt (no intact copy); refusing to touch the arena")]
    Corrupt,
}

/// A decoded copy: generation and registry.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its generation.
    pub generation: u64,
    /// Which copy (0 = A, 1 = B).
    pub copy: u64,
    /// The registry.
    pub registry: Registry,
}

/// Encodes one copy.
pub fn encode(reg: &Registry, generation: u64) -> Result<Vec<u8>, CodecError> {
    let body = serde_json::to_vec(reg)?;
    let max = REGISTRY_COPY as usize - HEADER;
    if body.len() > max {
        return Err(CodecError::TooLarge { len: body.len(), max });
    }
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(HEADER as u32).to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes one copy; `None` when it is empty, torn or foreign.
pub fn decode(b: &[u8]) -> Option<(u64, Registry)> {
    if b.len() < HEADER || &b[..8] != MAGIC {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if u32_at(8) != VERSION || u32_at(12) as usize != HEADER {
        return None;
    }
    let mut g = [0u8; 8];
    g.copy_from_slice(&b[16..24]);
    let len = u32_at(24) as usize;
    let body = b.get(HEADER..HEADER + len)?;
    if Sha256::digest(body).as_slice() != &b[32..64] {
        return None;
    }
    let reg = serde_json::from_slice(body).ok()?;
    Some((u64::from_le_bytes(g), reg))
}

/// Reads both copies at `phys` and returns the newest valid one; `None`
/// when the arena has never held a registry, [`CodecError::Corrupt`] when it
/// has one but neither copy is intact.
pub fn load<B: Backend + ?Sized>(b: &mut B, phys: u64) -> Result<Option<Loaded>, CodecError> {
    let mut best: Option<Loaded> = None;
    let mut saw_magic = false;
    for copy in 0..2u64 {
        let at = phys + copy * REGISTRY_COPY;
        let mut hdr = [0u8; HEADER];
        b.read_phys(at, &mut hdr)?;
        if &hdr[..8] != MAGIC {
            continue;
        }
        saw_magic = true;
        let len = u32::from_le_bytes([hdr[24], hdr[25], hdr[26], hdr[27]]) as usize;
        if len > REGISTRY_COPY as usize - HEADER {
            continue;
        }
        let mut all = vec![0u8; HEADER + len];
        b.read_phys(at, &mut all)?;
        if let Some((generation, registry)) = decode(&all) {
            if best.as_ref().is_none_or(|l| generation > l.generation) {
                best = Some(Loaded { generation, copy, registry });
            }
        }
    }
    if best.is_none() && saw_magic {
        return Err(CodecError::Corrupt);
    }
    Ok(best)
}

/// Writes `reg` as generation `generation` into the copy `generation % 2`:
/// body first, header last. Returns the number of bytes written.
pub fn save<B: Backend + ?Sized>(b: &mut B, phys: u64, reg: &Registry, generation: u64) -> Result<usize, CodecError> {
    let bytes = encode(reg, generation)?;
    let at = phys + (generation % 2) * REGISTRY_COPY;
    b.write_phys(at + HEADER as u64, &bytes[HEADER..])?;
    b.write_phys(at, &bytes[..HEADER])?;
    Ok(bytes.len())
}

/// Erases both copies (a fresh arena).
pub fn wipe<B: Backend + ?Sized>(b: &mut B, phys: u64) -> Result<(), CodecError> {
    for copy in 0..2u64 {
        b.write_phys(phys + copy * REGISTRY_COPY, &[0u8; HEADER])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::arena::registry::{IntentOp, Intent};
    use crate::arena::ArenaInfo;
    use crate::model::ArenaRange;
    use crate::testing::{Fault, Faulty, RamGuest};

    fn reg(n: u64) -> Registry {
        let mut r = Registry::new(ArenaInfo::new(ArenaRange::new(0, 4 << 20).unwrap(), 0xffff_ffff_8140_0000), Some("ab".into()));
        r.next_seq = n;
        r
    }

    #[test]
    fn newest_valid_copy_wins_and_a_torn_save_leaves_the_old_one() {
        // Guest memory whose writes can be made to fail, as if the process died.
        let mut ram = Faulty::new(RamGuest::new(2 * REGISTRY_COPY));
        assert!(load(&mut ram, 0).unwrap().is_none());
        save(&mut ram, 0, &reg(1), 1).unwrap();
        save(&mut ram, 0, &reg(2), 2).unwrap();
        let l = load(&mut ram, 0).unwrap().unwrap();
        assert_eq!((l.generation, l.registry.next_seq), (2, 2));
        // Killed after the body, before the header of generation 3: 2 stays.
        let mut with_intent = reg(3);
        with_intent.intent = Some(Intent { txn: 3, op: IntentOp::Apply, patch: "p".into(), superseded: vec![], writes: vec![], ranges: vec![] });
        ram.arm(Fault::FailWrites, 1);
        assert!(save(&mut ram, 0, &with_intent, 3).is_err());
        let l = load(&mut ram, 0).unwrap().unwrap();
        assert_eq!((l.generation, l.registry.next_seq), (2, 2));
        // Killed before anything: 2 stays; a full save then wins.
        ram.arm(Fault::FailWrites, 0);
        assert!(save(&mut ram, 0, &with_intent, 3).is_err());
        ram.heal();
        save(&mut ram, 0, &with_intent, 3).unwrap();
        let l = load(&mut ram, 0).unwrap().unwrap();
        assert_eq!(l.generation, 3);
        assert_eq!(l.registry, with_intent);
        // A flipped body byte invalidates that copy only.
        let at = REGISTRY_COPY + 70;
        ram.inner().flip(at, 0xff);
        assert_eq!(load(&mut ram, 0).unwrap().unwrap().generation, 2);
        // Both copies damaged: corrupt, never "no registry".
        ram.inner().flip(70, 0xff);
        assert!(matches!(load(&mut ram, 0), Err(CodecError::Corrupt)));
        wipe(&mut ram, 0).unwrap();
        assert!(load(&mut ram, 0).unwrap().is_none());
    }
}
