//! What the user asks for: the VM configuration, its defaults, and the
//! validation that turns a bad request into a one-line error before any
//! resource is created.

use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use vsplice_patcher::model::{ArenaError, ArenaRange};

use crate::arch::x86_64::layout::{ARENA_DEFAULT_SIZE, CMDLINE_MAX_SIZE, MIN_MEMORY_SIZE};
use crate::vstate::pause::DEFAULT_PAUSE_TIMEOUT;

/// Default guest RAM in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Default number of vCPUs.
pub const DEFAULT_VCPUS: usize = 1;
/// Largest guest RAM we accept, in MiB (the host and the e820 can describe more,
/// but this catches typos such as a size given in KiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// Where the guest's COM1 output goes.
pub enum SerialConfig {
    /// This process's stdout; stdin feeds the guest.
    Stdio,
    /// A file (created or truncated).
    File(PathBuf),
    /// Any writer (tests, embedding).
    Writer(Box<dyn Write + Send>),
    /// Discarded.
    Null,
}

impl std::fmt::Debug for SerialConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdio => write!(f, "Stdio"),
            Self::File(p) => write!(f, "File({})", p.display()),
            Self::Writer(_) => write!(f, "Writer"),
            Self::Null => write!(f, "Null"),
        }
    }
}

/// Everything needed to build and boot one VM.
#[derive(Debug)]
pub struct VmConfig {
    /// Kernel image: ELF vmlinux (64-bit entry) or bzImage.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line as given; see [`VmConfig::effective_cmdline`].
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: usize,
    /// Guest RAM in MiB, the patch arena included.
    pub memory_mib: u64,
    /// Patch arena size in MiB: what [`ArenaRange`] accepts (a multiple of
    /// 2, at least 4). The VMM places it (see [`VmConfig::placed_arena`]).
    pub arena_mib: u64,
    /// Serial output.
    pub serial: SerialConfig,
    /// Bound on one whole-VM pause.
    pub pause_timeout: Duration,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            arena_mib: ARENA_DEFAULT_SIZE >> 20,
            serial: SerialConfig::Stdio,
            pause_timeout: DEFAULT_PAUSE_TIMEOUT,
        }
    }

    /// The command line the guest gets: the user's, plus `console=ttyS0` when
    /// no console is named, and `reboot=k panic=1` (reboot through the i8042,
    /// which ends the VM; reboot a second after a panic) unless overridden.
    pub fn effective_cmdline(&self) -> String {
        let has = |key: &str| self.cmdline.split_whitespace().any(|w| w == key || w.starts_with(&format!("{key}=")));
        let mut words: Vec<String> = Vec::new();
        if !has("console") {
            words.push("console=ttyS0".into());
        }
        if !has("reboot") {
            words.push("reboot=k".into());
        }
        if !has("panic") {
            words.push("panic=1".into());
        }
        words.extend(self.cmdline.split_whitespace().map(str::to_owned));
        words.join(" ")
    }

    /// Checks everything that can be checked before touching KVM.
    pub fn validate(&self, max_vcpus: usize) -> Result<(), ConfigError> {
        if !self.kernel.is_file() {
            return Err(ConfigError::KernelMissing(self.kernel.clone()));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(ConfigError::InitrdMissing(initrd.clone()));
            }
        }
        if self.vcpus == 0 || self.vcpus > max_vcpus {
            return Err(ConfigError::VcpuCount { requested: self.vcpus, max: max_vcpus });
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(ConfigError::MemoryTooLarge { mib: self.memory_mib, max_mib: MAX_MEMORY_MIB });
        }
        check_host_memory(self.memory_mib, host_ram_bytes())?;
        let arena = ArenaRange::size_from_mib(self.arena_mib).map_err(|source| ConfigError::ArenaSize { mib: self.arena_mib, source })?;
        let min = (MIN_MEMORY_SIZE + arena) >> 20;
        if self.memory_mib < min {
            return Err(ConfigError::MemoryTooSmall { mib: self.memory_mib, min_mib: min, arena_mib: self.arena_mib });
        }
        let cmdline = self.effective_cmdline();
        if cmdline.len() >= CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong { len: cmdline.len(), max: CMDLINE_MAX_SIZE - 1 });
        }
        Ok(())
    }

    /// The arena at the guest-physical range the VMM reserved for it.
    pub fn placed_arena(&self, reserved: Range<u64>) -> Result<ArenaRange, ConfigError> {
        ArenaRange::new(reserved.start, reserved.end.saturating_sub(reserved.start))
            .map_err(|source| ConfigError::ArenaSize { mib: self.arena_mib, source })
    }
}

/// A configuration that cannot work.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The kernel image does not exist or is not a file.
    #[error("kernel image {0} does not exist or is not a file")]
    KernelMissing(PathBuf),
    /// The initrd does not exist or is not a file.
    #[error("initrd {0} does not exist or is not a file")]
    InitrdMissing(PathBuf),
    /// vCPU count out of range.
    #[error("{requested} vCPUs requested; this host allows 1 to {max}")]
    VcpuCount {
        /// Requested count.
        requested: usize,
        /// Largest allowed.
        max: usize,
    },
    /// Guest memory too small for a kernel plus the arena.
    #[error("{mib} MiB of memory is too small: at least {min_mib} MiB are needed with a {arena_mib} MiB patch arena")]
    MemoryTooSmall {
        /// Requested MiB.
        mib: u64,
        /// Smallest allowed.
        min_mib: u64,
        /// Arena size in MiB.
        arena_mib: u64,
    },
    /// Guest memory larger than the host's RAM.
    #[error("{mib} MiB of guest memory is more than the host's {host_mib} MiB of RAM")]
    MemoryAboveHost {
        /// Requested MiB.
        mib: u64,
        /// The host's RAM in MiB.
        host_mib: u64,
    },
    /// Guest memory implausibly large.
    #[error("{mib} MiB of memory is more than the {max_mib} MiB vsplice accepts")]
    MemoryTooLarge {
        /// Requested MiB.
        mib: u64,
        /// Largest allowed.
        max_mib: u64,
    },
    /// An arena [`ArenaRange`] refuses (not whole 2 MiB slots, fewer than two).
    #[error("patch arena of {mib} MiB refused")]
    ArenaSize {
        /// Requested MiB.
        mib: u64,
        /// Why.
        #[source]
        source: ArenaError,
    },
    /// Command line too long for the boot protocol.
    #[error("kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// Largest allowed.
        max: usize,
    },
}

impl ConfigError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::KernelMissing(_) => "kernel_missing",
            Self::InitrdMissing(_) => "initrd_missing",
            Self::VcpuCount { .. } => "bad_vcpu_count",
            Self::MemoryTooSmall { .. } => "memory_too_small",
            Self::MemoryTooLarge { .. } => "memory_too_large",
            Self::MemoryAboveHost { .. } => "memory_above_host",
            Self::ArenaSize { .. } => "bad_arena_size",
            Self::CmdlineTooLong { .. } => "cmdline_too_long",
        }
    }
}

/// The host's RAM in bytes (`sysinfo`), when it can be read.
pub fn host_ram_bytes() -> Option<u64> {
    // SAFETY: sysinfo only writes the struct it is given.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `si` is a valid, writable sysinfo.
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return None;
    }
    (si.totalram as u64).checked_mul(u64::from(si.mem_unit.max(1)))
}

/// Guest memory above the host's RAM is refused (`memory_above_host`):
/// the guest would be killed by the host's OOM killer once it touched it.
/// Unknown host RAM passes.
pub fn check_host_memory(mib: u64, host_bytes: Option<u64>) -> Result<(), ConfigError> {
    match host_bytes {
        Some(h) if mib > h >> 20 => Err(ConfigError::MemoryAboveHost { mib, host_mib: h >> 20 }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config() -> VmConfig {
        // Any existing file will do as a "kernel" for validation.
        VmConfig::new(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
    }

    #[test]
    fn defaults_validate() {
        config().validate(4).unwrap();
    }

    #[test]
    fn console_reboot_panic_defaults_are_added_once() {
        let mut c = config();
        assert_eq!(c.effective_cmdline(), "console=ttyS0 reboot=k panic=1");
        c.cmdline = "console=hvc0 panic=0 quiet".into();
        assert_eq!(c.effective_cmdline(), "reboot=k console=hvc0 panic=0 quiet");
    }

    #[test]
    fn memory_above_the_hosts_ram_is_refused() {
        let gib = 1u64 << 30;
        assert!(check_host_memory(1024, Some(4 * gib)).is_ok());
        assert!(check_host_memory(4096, Some(4 * gib)).is_ok());
        let e = check_host_memory(4097, Some(4 * gib)).unwrap_err();
        assert_eq!((e.cause(), e.to_string().contains("4096 MiB")), ("memory_above_host", true), "{e}");
        assert!(check_host_memory(u64::MAX, None).is_ok(), "unknown host RAM passes");
        assert!(host_ram_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn bad_requests_have_their_own_cause() {
        type Mutation = Box<dyn Fn(&mut VmConfig)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.kernel = "/nonexistent/vmlinux".into()), "kernel_missing"),
            (Box::new(|c| c.initrd = Some("/nonexistent/initrd".into())), "initrd_missing"),
            (Box::new(|c| c.vcpus = 0), "bad_vcpu_count"),
            (Box::new(|c| c.vcpus = 5), "bad_vcpu_count"),
            (Box::new(|c| c.memory_mib = 16), "memory_too_small"),
            (Box::new(|c| c.memory_mib = MAX_MEMORY_MIB + 1), "memory_too_large"),
            (Box::new(|c| c.arena_mib = 3), "bad_arena_size"),
            (Box::new(|c| c.arena_mib = 0), "bad_arena_size"),
            (Box::new(|c| c.arena_mib = 2), "bad_arena_size"),
            (Box::new(|c| c.arena_mib = u64::MAX), "bad_arena_size"),
            (Box::new(|c| c.arena_mib = 510), "memory_too_small"),
            (Box::new(|c| c.cmdline = "x".repeat(4000)), "cmdline_too_long"),
        ];
        for (mutate, cause) in cases {
            let mut c = config();
            mutate(&mut c);
            let err = c.validate(4).unwrap_err();
            assert_eq!(err.cause(), cause, "{err}");
            assert!(!err.to_string().contains('\n'));
        }
    }

    /// The arena rule is the patcher's: a 2 MiB arena (one slot) is refused
    /// here, before boot, rather than by every live patch after it.
    #[test]
    fn a_one_slot_arena_is_refused_with_the_patchers_reason() {
        let mut c = config();
        c.arena_mib = 2;
        let err = c.validate(4).unwrap_err();
        assert_eq!(err.cause(), "bad_arena_size");
        let line = vsplice_patcher::model::chain(&err);
        assert!(line.contains("2 MiB") && line.contains("at least 4 MiB"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn the_reserved_range_becomes_the_arena() {
        let c = config();
        let a = c.placed_arena(0x1fc0_0000..0x2000_0000).unwrap();
        assert_eq!((a.phys(), a.size()), (0x1fc0_0000, 4 << 20));
        assert_eq!(c.placed_arena(0x1fe0_0000..0x2000_0000).unwrap_err().cause(), "bad_arena_size");
    }
}
