//! A kernel module as a transaction sees it: a module loaded in the guest
//! ([`LoadedModule`]: where its `struct module` and its core text are, its
//! state, its own symbols at runtime addresses) and the identity a patch's
//! registry record keeps of it ([`ModuleIdentity`]), so that a revert after
//! the module was unloaded, or unloaded and loaded again, is refused rather
//! than writing into whatever the memory holds now.

use serde::{Deserialize, Serialize};

use super::symbols::SymbolTable;

/// The kernel image's object name (a manifest's `object` absent means it).
pub const VMLINUX: &str = "vmlinux";

/// A module name as the kernel keeps it (`struct module.name`: up to 55
/// bytes of letters, digits, `_` and `-`), never `vmlinux`.
pub fn valid_module_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 55 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') && s != VMLINUX
}

/// `MODULE_STATE_LIVE`.
pub const MODULE_STATE_LIVE: u32 = 0;

/// `MODULE_STATE_COMING`: formed, text final, init not run yet.
pub const MODULE_STATE_COMING: u32 = 1;

/// `MODULE_STATE_GOING`: being unloaded (or its load failed).
pub const MODULE_STATE_GOING: u32 = 2;

/// A module in the guest's module list.
#[derive(Debug, Clone)]
pub struct LoadedModule {
    /// Its name.
    pub name: String,
    /// Address of its `struct module`.
    pub addr: u64,
    /// `MODULE_STATE_*` (0 live, 1 coming, 2 going).
    pub state: u32,
    /// Core layout base (text first).
    pub base: u64,
    /// Bytes of core text at `base`.
    pub text_size: u64,
    /// Its own symbols (`mod->kallsyms`), runtime addresses.
    pub symbols: SymbolTable,
}

impl LoadedModule {
    /// What a registry record keeps of it.
    pub fn identity(&self) -> ModuleIdentity {
        ModuleIdentity { name: self.name.clone(), addr: self.addr, base: self.base, text_size: self.text_size }
    }

    /// True when `[addr, addr + size)` lies in its core text.
    pub fn holds_text(&self, addr: u64, size: u64) -> bool {
        addr >= self.base && addr.checked_add(size).is_some_and(|end| end <= self.base.saturating_add(self.text_size))
    }
}

/// Which load of a module a patch was applied to: its name, the address of
/// its `struct module` and its core text's base and size. A module loaded
/// again gets a new `struct module` and new text (the same addresses by
/// chance are possible; the sites' bytes are checked before any write too).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModuleIdentity {
    /// Module name.
    pub name: String,
    /// `struct module` address.
    pub addr: u64,
    /// Core text base.
    pub base: u64,
    /// Core text size.
    pub text_size: u64,
}
