//! The one seam between vsplice's patcher and a hypervisor.
//!
//! A backend can stop every vCPU of a guest and hand back their registers,
//! read and write guest-physical memory while it is stopped, and let the
//! guest go again. The in-process VMM (`vsplice-vmm`) and the GDB-remote
//! client both implement it; nothing else in the patcher knows which one it
//! talks to.

use thiserror::Error;

/// Architectural state of one stopped vCPU, as much as the patcher needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuState {
    /// vCPU index as the backend numbers them (0-based).
    pub index: usize,
    /// RAX, RBX, RCX, RDX, RSI, RDI, RBP, RSP, R8..R15, in that order.
    pub gprs: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags register.
    pub rflags: u64,
    /// CS selector (its low two bits are the current privilege level).
    pub cs: u16,
    /// CR0 (paging and protection bits).
    pub cr0: u64,
    /// CR3: the page-table root in use.
    pub cr3: u64,
    /// CR4 (LA57 tells 5-level paging).
    pub cr4: u64,
    /// EFER (LMA tells long mode).
    pub efer: u64,
    /// FS base.
    pub fs_base: u64,
    /// GS base (the per-CPU base while in the kernel).
    pub gs_base: u64,
    /// MSR_KERNEL_GS_BASE (the per-CPU base while in user mode), when known.
    pub kernel_gs_base: Option<u64>,
    /// MSR_LSTAR (the syscall entry point), when the backend can read it.
    pub lstar: Option<u64>,
}

impl VcpuState {
    /// Index of RSP in [`VcpuState::gprs`].
    pub const RSP: usize = 7;
    /// Index of RBP in [`VcpuState::gprs`].
    pub const RBP: usize = 6;

    /// The stack pointer.
    pub fn rsp(&self) -> u64 {
        self.gprs[Self::RSP]
    }

    /// Current privilege level, from the low bits of CS.
    pub fn cpl(&self) -> u8 {
        (self.cs & 3) as u8
    }

    /// True when the vCPU runs with 64-bit paging (EFER.LMA and CR0.PG).
    pub fn long_mode(&self) -> bool {
        const EFER_LMA: u64 = 1 << 10;
        const CR0_PG: u64 = 1 << 31;
        self.efer & EFER_LMA != 0 && self.cr0 & CR0_PG != 0
    }
}

/// Why a backend request failed. `cause()` gives a stable machine name.
#[derive(Debug, Error)]
pub enum BackendError {
    /// Not every vCPU stopped within the allowed time.
    #[error("vCPUs did not stop within {timeout_ms} ms")]
    PauseTimeout {
        /// The time allowed.
        timeout_ms: u64,
    },
    /// The operation needs the guest stopped (or running) and it is not.
    #[error("guest is in the wrong state: {0}")]
    WrongState(&'static str),
    /// A guest-physical access fell outside guest memory.
    #[error("guest-physical range {gpa:#x}+{len:#x} is not guest memory")]
    BadAddress {
        /// Start of the access.
        gpa: u64,
        /// Length of the access.
        len: u64,
    },
    /// The transport to the hypervisor failed (socket, protocol, time-out).
    #[error("hypervisor link failed: {0}")]
    Transport(String),
    /// The guest has shut down or the VMM is exiting.
    #[error("the guest is gone")]
    GuestGone,
}

impl BackendError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::PauseTimeout { .. } => "pause_timeout",
            Self::WrongState(_) => "wrong_state",
            Self::BadAddress { .. } => "bad_address",
            Self::Transport(_) => "transport",
            Self::GuestGone => "guest_gone",
        }
    }
}

/// A hypervisor that can stop a guest, let the patcher touch its memory, and resume it.
pub trait Backend {
    /// Stop every vCPU and return the state of each, ordered by index.
    /// Either all vCPUs stop or none stays stopped and an error is returned.
    fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError>;
    /// Let every vCPU run again.
    fn resume(&mut self) -> Result<(), BackendError>;
    /// Read guest-physical memory.
    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError>;
    /// Write guest-physical memory. Backends keep the guest's view of code
    /// coherent (e.g. an emulator's translation cache).
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError>;
    /// Fills `out` from `gpa` (8-aligned), each word with one aligned
    /// 8-byte load where the backend can make one: a value the guest held,
    /// never two halves of different ones, even while it runs (the RAM
    /// file). Backends that only read a stopped guest (gdbstub packets) or
    /// cannot do better read the bytes ([`Backend::read_phys`]).
    fn read_phys_words(&mut self, gpa: u64, out: &mut [u64]) -> Result<(), BackendError> {
        read_words_via_bytes(out, |b| self.read_phys(gpa, b))
    }
    /// True when a read costs a memory copy (guest RAM mapped into this
    /// process): readers then read exactly what they need instead of
    /// caching whole pages. Default: false (each read is a round trip).
    fn direct_reads(&self) -> bool {
        false
    }
    /// A hint that `len` bytes at `gpa` will be read soon (a backend whose
    /// reads are a memory copy starts loading them into the cache: reads of
    /// many objects then overlap their misses). Default: nothing.
    fn prefetch_phys(&self, gpa: u64, len: usize) {
        let _ = (gpa, len);
    }
}

/// Fills `out` with the little-endian words of the bytes `read` fills (the
/// fallback of [`Backend::read_phys_words`] and of kernel-virtual word reads).
pub fn read_words_via_bytes<E>(out: &mut [u64], read: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Result<(), E> {
    let mut bytes = [0u8; 512];
    let mut big = Vec::new();
    let buf: &mut [u8] = match bytes.get_mut(..out.len() * 8) {
        Some(b) => b,
        None => {
            big.resize(out.len() * 8, 0);
            &mut big
        }
    };
    read(buf)?;
    for (w, c) in out.iter_mut().zip(buf.chunks_exact(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        *w = u64::from_le_bytes(a);
    }
    Ok(())
}

// `&mut B` is a backend too: `backend_wrap.rs`, with the other wrappers.
