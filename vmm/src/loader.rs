//! Loading the guest's kernel, command line and initrd into guest memory with
//! linux-loader: ELF vmlinux (entered at its 64-bit entry point) or bzImage
//! (entered at the 64-bit entry, 0x200 past the protected-mode start).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use linux_loader::bootparam::setup_header;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::elf_check::{check_elf, ElfCheckError};
use crate::vstate::memory::GuestMemory as Mem;

/// Offset of the 64-bit entry point from a bzImage's protected-mode start.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// "HdrS" at offset 0x202 marks a Linux boot-protocol image.
const HDRS_OFFSET: u64 = 0x202;
const HDRS_MAGIC: &[u8; 4] = b"HdrS";

/// The format a kernel image was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF executable (vmlinux or the test guest).
    Elf,
    /// A Linux bzImage.
    BzImage,
}

/// Where the kernel went and how to enter it.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// Recognised format.
    pub format: KernelFormat,
    /// 64-bit entry point (guest-physical).
    pub entry: GuestAddress,
    /// First guest-physical address after the loaded image.
    pub end: u64,
    /// The bzImage's setup header, passed on in boot_params.
    pub setup_header: Option<setup_header>,
}

/// Why a kernel or initrd could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("{0} is neither an ELF kernel nor a bzImage")]
    UnknownFormat(PathBuf),
    /// linux-loader rejected the image.
    #[error("cannot load kernel {path}")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// What linux-loader said.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// An ELF image refused before loading (no segments, a segment outside
    /// guest RAM or over the arena, a bad header); `cause` is the check's.
    #[error("kernel {path} refused")]
    Elf {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ElfCheckError,
    },
    /// The kernel command line is not one linux-loader accepts (non-ASCII, too long, …).
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The kernel command line could not be written to guest memory.
    #[error("cannot write the kernel command line to guest memory")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    /// The initrd does not fit in guest memory at the chosen address.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory at {addr:#x}")]
    InitrdFit {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Chosen load address.
        addr: u64,
    },
}

impl LoadError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Read { .. } => "image_unreadable",
            Self::UnknownFormat(_) => "not_a_kernel",
            Self::Kernel { .. } => "kernel_load_failed",
            Self::Elf { source, .. } => source.cause(),
            Self::Cmdline(_) => "bad_cmdline",
            Self::CmdlineWrite(_) => "cmdline_write_failed",
            Self::InitrdFit { .. } => "initrd_too_large",
        }
    }
}

fn open(path: &Path) -> Result<File, LoadError> {
    File::open(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })
}

/// Recognises an image by its magic numbers.
pub fn detect_format(path: &Path) -> Result<KernelFormat, LoadError> {
    let read_err = |source| LoadError::Read { path: path.to_owned(), source };
    let mut f = open(path)?;
    let mut magic = [0u8; 4];
    if f.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC {
        return Ok(KernelFormat::Elf);
    }
    let len = f.metadata().map_err(read_err)?.len();
    if len >= HDRS_OFFSET + 4 {
        f.seek(SeekFrom::Start(HDRS_OFFSET)).map_err(read_err)?;
        f.read_exact(&mut magic).map_err(read_err)?;
        if &magic == HDRS_MAGIC {
            return Ok(KernelFormat::BzImage);
        }
    }
    Err(LoadError::UnknownFormat(path.to_owned()))
}

/// Loads the kernel at `path` into `mem`; an ELF image's segments must lie
/// inside `ram` (the e820 RAM ranges: not the arena, not past the end).
pub fn load_kernel(mem: &Mem, path: &Path, ram: &[Range<u64>]) -> Result<LoadedKernel, LoadError> {
    let format = detect_format(path)?;
    let mut file = open(path)?;
    let kernel_err = |source| LoadError::Kernel { path: path.to_owned(), source };
    let himem = Some(GuestAddress(HIMEM_START));
    let (entry, result) = match format {
        KernelFormat::Elf => {
            check_elf(&mut file, ram).map_err(|source| LoadError::Elf { path: path.to_owned(), source })?;
            let r = Elf::load(mem, None, &mut file, himem).map_err(kernel_err)?;
            (r.kernel_load, r)
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, himem).map_err(kernel_err)?;
            (GuestAddress(r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET), r)
        }
    };
    Ok(LoadedKernel { format, entry, end: result.kernel_end, setup_header: result.setup_header })
}

/// Writes the kernel command line `cmdline` (NUL-terminated) at [`CMDLINE_START`].
pub fn load_cmdline(mem: &Mem, cmdline: &str) -> Result<(), LoadError> {
    let mut line = Cmdline::new(CMDLINE_MAX_SIZE).map_err(LoadError::Cmdline)?;
    line.insert_str(cmdline).map_err(LoadError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &line).map_err(LoadError::CmdlineWrite)
}

/// Size of the initrd at `path`.
pub fn initrd_size(path: &Path) -> Result<u64, LoadError> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|source| LoadError::Read { path: path.to_owned(), source })
}

/// Copies the initrd at `path` into guest memory at `addr`.
pub fn load_initrd(mem: &Mem, path: &Path, addr: u64) -> Result<u64, LoadError> {
    let size = initrd_size(path)?;
    let fits = usize::try_from(size).is_ok_and(|s| GuestMemoryBackend::check_range(mem, GuestAddress(addr), s));
    if !fits {
        return Err(LoadError::InitrdFit { path: path.to_owned(), size, addr });
    }
    let mut file = open(path)?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|_| LoadError::InitrdFit { path: path.to_owned(), size, addr })?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vsplice-loader-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    #[test]
    fn recognises_formats_and_refuses_others() {
        let elf = temp_file("elf", b"\x7fELF\x02\x01\x01");
        assert_eq!(detect_format(&elf).unwrap(), KernelFormat::Elf);
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bz = temp_file("bz", &bz);
        assert_eq!(detect_format(&bz).unwrap(), KernelFormat::BzImage);
        let junk = temp_file("junk", b"hello world, not a kernel");
        let e = detect_format(&junk).unwrap_err();
        assert_eq!(e.cause(), "not_a_kernel");
        let empty = temp_file("empty", b"");
        assert_eq!(detect_format(&empty).unwrap_err().cause(), "not_a_kernel");
        for p in [elf, bz, junk, empty] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn truncated_elf_is_a_load_error_not_a_panic() {
        let mem = crate::vstate::memory::create_guest_memory(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let elf = temp_file("trunc", b"\x7fELF\x02\x01\x01\x00garbage");
        let ram: Vec<Range<u64>> = std::iter::once(0..64 << 20).collect();
        assert_eq!(load_kernel(&mem, &elf, &ram).unwrap_err().cause(), "elf_bad_header");
        let _ = std::fs::remove_file(elf);
    }

    #[test]
    fn cmdline_is_written_nul_terminated_or_refused() {
        let mem = crate::vstate::memory::create_guest_memory(&[(GuestAddress(0), 1 << 20)]).unwrap();
        load_cmdline(&mem, "console=ttyS0 tg.tasks=2").unwrap();
        let mut back = [0xffu8; 25];
        vm_memory::Bytes::read_slice(&mem, &mut back, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&back, b"console=ttyS0 tg.tasks=2\0");
        let e = load_cmdline(&mem, "tg.name=caf\u{e9}").unwrap_err();
        assert_eq!(e.cause(), "bad_cmdline");
        assert!(std::error::Error::source(&e).is_some(), "{e}");
        let tiny = crate::vstate::memory::create_guest_memory(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert_eq!(load_cmdline(&tiny, "console=ttyS0").unwrap_err().cause(), "cmdline_write_failed");
    }

    #[test]
    fn initrd_is_copied_and_bounds_checked() {
        let mem = crate::vstate::memory::create_guest_memory(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rd = temp_file("rd", b"initrd-bytes");
        assert_eq!(load_initrd(&mem, &rd, 0x1000).unwrap(), 12);
        let mut back = [0u8; 12];
        vm_memory::Bytes::read_slice(&mem, &mut back, GuestAddress(0x1000)).unwrap();
        assert_eq!(&back, b"initrd-bytes");
        assert_eq!(load_initrd(&mem, &rd, (1 << 20) - 4).unwrap_err().cause(), "initrd_too_large");
        let _ = std::fs::remove_file(rd);
    }
}
