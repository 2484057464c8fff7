//! The ORC a transaction unwinds with. The target's unwinder knows the
//! kernel (vmlinux, modules); a patch's new code is known only to the
//! guest's registry, which keeps each patch's ORC rows
//! ([`crate::arena::patch_orc`]). Each transaction makes its own view, the
//! target's unwinder plus the rows of every patch in the registry it works
//! on, so every process unwinds through patch code the same way and nothing
//! lives only in one process's memory.

use super::Patcher;
use crate::arena::codec::{self, CodecError};
use crate::arena::patch_orc::{PatchOrc, PatchOrcError};
use crate::arena::registry::{PatchRecord, Registry};
use crate::model::backend::Backend;
use crate::os::linux::orc::{OrcEntry, OrcTable};
use crate::os::linux::unwind::OrcUnwinder;

/// Name of a patch's ORC table in an unwinder view.
fn table_name(patch_id: &str) -> String {
    format!("patch {patch_id}")
}

/// Rows of a patch's code for its registry record.
pub(crate) fn record_rows(p: &PatchRecord, rows: &[(u64, OrcEntry)]) -> Result<PatchOrc, PatchOrcError> {
    let raw: Vec<(u64, [u8; 6])> = rows.iter().map(|(ip, e)| (*ip, e.to_bytes())).collect();
    PatchOrc::encode(p.code.range(), &raw)
}

/// The ORC table of a patch's code, from its registry record.
pub(crate) fn patch_table(p: &PatchRecord) -> Option<OrcTable> {
    let rows = match p.orc.as_ref()?.rows(p.code.range()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(patch = %p.name, cause = e.cause(), error = %e, "the registry's ORC rows of the patch are unusable: stacks through its code will be scanned conservatively");
            return None;
        }
    };
    let rows = rows.into_iter().map(|(ip, e)| (ip, OrcEntry::parse(&e))).collect();
    Some(OrcTable::new(&table_name(&p.id), p.code.start, p.code.start + p.code.len, rows))
}

/// Drops ORC rows, newest patch first (the one being applied), while the
/// registry does not fit its copy with them; one note per patch that lost
/// its rows (stacks through its code are then scanned, which is safe).
pub(crate) fn fit_rows(reg: &mut Registry) -> Vec<String> {
    let mut notes = Vec::new();
    for i in (0..reg.patches.len()).rev() {
        if !matches!(codec::encode(reg, 0), Err(CodecError::TooLarge { .. })) {
            break;
        }
        let p = &mut reg.patches[i];
        if let Some(orc) = p.orc.take() {
            notes.push(format!("the registry has no room for the {} ORC rows of {}: stacks through its code will be scanned conservatively", orc.len(), p.name));
        }
    }
    // Then the operator fields (description, CVE ids, version), newest first.
    for i in (0..reg.patches.len()).rev() {
        if !matches!(codec::encode(reg, 0), Err(CodecError::TooLarge { .. })) {
            break;
        }
        let p = &mut reg.patches[i];
        if p.info.take().is_some() {
            notes.push(format!("the registry has no room for the description, CVE ids and version of {}: the status omits them", p.name));
        }
    }
    notes
}

impl<B: Backend> Patcher<'_, B> {
    /// The target's unwinder plus the ORC of every patch in `reg` (applied,
    /// or loading: a recovery may find its code half-reachable).
    pub(crate) fn unwinder_view(&self, reg: &Registry) -> Option<OrcUnwinder> {
        let base = self.target.unwinder()?;
        Some(base.with_extra(reg.patches.iter().filter_map(patch_table).collect()))
    }
}
