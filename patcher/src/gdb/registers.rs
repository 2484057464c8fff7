//! Map the stub's registers (found by name in the target description) to
//! [`VcpuState`]: no register number is hard-coded.

use super::error::GdbError;
use super::tdesc::{RegDesc, TargetDesc};
use crate::model::backend::VcpuState;

/// General-purpose registers in [`VcpuState::gprs`] order.
pub const GPR_NAMES: [&str; 16] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
];

/// Registers that must exist; the others default to zero / `None`.
const REQUIRED: [&str; 3] = ["rip", "cs", "eflags"];

/// Where each needed register sits: in the `g` packet or only through `p`.
#[derive(Debug, Clone)]
pub struct RegMap {
    entries: Vec<(String, RegDesc, Option<usize>)>,
}

impl RegMap {
    /// Resolve every register vsplice needs by name.
    pub fn new(td: &TargetDesc) -> Result<Self, GdbError> {
        let mut entries = Vec::new();
        let wanted = GPR_NAMES
            .iter()
            .chain(["rip", "eflags", "cs", "fs_base", "gs_base", "k_gs_base", "cr0", "cr3", "cr4", "efer"].iter());
        for &name in wanted {
            match td.find(name) {
                Some(r) => entries.push((name.to_string(), r.clone(), td.g_offset(r))),
                None if GPR_NAMES.contains(&name) || REQUIRED.contains(&name) => {
                    return Err(GdbError::MissingRegister(name.to_string()))
                }
                None => tracing::warn!(register = name, "register not in the target description; reading it as 0"),
            }
        }
        Ok(Self { entries })
    }

    /// Registers the `g` packet may not cover (need `p`).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &RegDesc, Option<usize>)> {
        self.entries.iter().map(|(n, r, o)| (n.as_str(), r, *o))
    }

    /// Build a vCPU state from a `g` packet plus a reader for the rest.
    pub fn decode(
        &self,
        index: usize,
        g: &[u8],
        mut read_p: impl FnMut(u32) -> Result<Vec<u8>, GdbError>,
    ) -> Result<VcpuState, GdbError> {
        let mut st = VcpuState { index, ..VcpuState::default() };
        let mut have_kgs = false;
        for (name, reg, off) in self.entries() {
            let size = (reg.bitsize as usize).div_ceil(8);
            let bytes = match off {
                Some(o) if o + size <= g.len() => g[o..o + size].to_vec(),
                _ => read_p(reg.regnum)?,
            };
            let mut le = [0u8; 8];
            let n = bytes.len().min(8);
            le[..n].copy_from_slice(&bytes[..n]);
            let v = u64::from_le_bytes(le);
            match name {
                "rip" => st.rip = v,
                "eflags" => st.rflags = v,
                "cs" => st.cs = v as u16,
                "fs_base" => st.fs_base = v,
                "gs_base" => st.gs_base = v,
                "k_gs_base" => {
                    st.kernel_gs_base = Some(v);
                    have_kgs = true;
                }
                "cr0" => st.cr0 = v,
                "cr3" => st.cr3 = v,
                "cr4" => st.cr4 = v,
                "efer" => st.efer = v,
                gpr => {
                    if let Some(i) = GPR_NAMES.iter().position(|g| *g == gpr) {
                        st.gprs[i] = v;
                    }
                }
            }
        }
        if !have_kgs {
            st.kernel_gs_base = None;
        }
        // QEMU does not expose MSRs over the gdbstub: LSTAR stays unknown.
        st.lstar = None;
        Ok(st)
    }
}
