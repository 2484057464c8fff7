//! What the loader needs to know about the running kernel beyond its
//! symbols, to do what the kernel's module loader would do: the boot CPU's
//! feature and bug bits (alternatives), the current state of static keys
//! (jump labels) and where return thunks go.
//!
//! [`UnknownEnv`] knows nothing (the test guest, and anything without
//! alternatives or jump labels): objects that need more are refused by
//! section name. [`CheckEnv`] is for build-time link checks: every feature
//! and key reads as off, so every site is exercised without a guest.

/// The running kernel as the loader needs it.
pub trait LinkEnv {
    /// Whether feature or bug bit `bit` (`X86_FEATURE_*` / `X86_BUG_*`
    /// numbering) is set on the boot CPU; `None` when unknown.
    fn cpu_has(&self, bit: u16) -> Option<bool>;
    /// Whether the `struct static_key` at `addr` in the kernel is enabled
    /// now; `None` when it cannot be known.
    fn key_enabled(&mut self, addr: u64) -> Option<bool>;
    /// Where `jmp __x86_return_thunk` in patch code goes (the guest's
    /// `x86_return_thunk`); `None` keeps the compiled target.
    fn return_thunk(&self) -> Option<u64>;
}

/// Knows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnknownEnv;

impl LinkEnv for UnknownEnv {
    fn cpu_has(&self, _bit: u16) -> Option<bool> {
        None
    }
    fn key_enabled(&mut self, _addr: u64) -> Option<bool> {
        None
    }
    fn return_thunk(&self) -> Option<u64> {
        None
    }
}

/// Build-time checks: every feature and key off.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckEnv;

impl LinkEnv for CheckEnv {
    fn cpu_has(&self, _bit: u16) -> Option<bool> {
        Some(false)
    }
    fn key_enabled(&mut self, _addr: u64) -> Option<bool> {
        Some(false)
    }
    fn return_thunk(&self) -> Option<u64> {
        None
    }
}

/// A guest's boot-CPU capability words (`boot_cpu_data.x86_capability`:
/// `NCAPINTS` feature words, then the bug words).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuCaps(pub Vec<u32>);

impl CpuCaps {
    /// Is `bit` set? `None` when the array is shorter.
    pub fn has(&self, bit: u16) -> Option<bool> {
        let w = self.0.get(usize::from(bit / 32))?;
        Some(w & (1 << (bit % 32)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_bits_are_numbered_like_the_kernel() {
        let caps = CpuCaps(vec![1 << 4, 0, 1 << 31]);
        assert_eq!(caps.has(4), Some(true));
        assert_eq!(caps.has(5), Some(false));
        assert_eq!(caps.has(2 * 32 + 31), Some(true));
        assert_eq!(caps.has(3 * 32), None);
    }
}
