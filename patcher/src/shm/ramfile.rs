//! The guest's RAM file mapped shared, read/write, into vsplice: stores
//! land in the same pages QEMU's vCPUs use.
//!
//! Reads and writes copy through raw pointers, never through a Rust slice
//! of the mapping: the guest (or QEMU) may change the bytes at any time,
//! so no reference to them is ever formed.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::error::ShmError;

/// A shared, writable mapping of a whole RAM file.
#[derive(Debug)]
pub struct RamFile {
    path: String,
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; it is only
// accessed through `read`/`write`, which copy with raw pointers inside
// bounds, so moving the owner to another thread is sound.
unsafe impl Send for RamFile {}

impl RamFile {
    /// Opens `path` read/write and maps all of it shared.
    pub fn open(path: &Path) -> Result<Self, ShmError> {
        let shown = path.display().to_string();
        let err = |source| ShmError::File { path: shown.clone(), source };
        let f = OpenOptions::new().read(true).write(true).open(path).map_err(err)?;
        let size = f.metadata().map_err(err)?.len();
        let len = usize::try_from(size).map_err(|_| err(std::io::Error::other("larger than the address space")))?;
        if len == 0 {
            return Err(err(std::io::Error::other("the file is empty")));
        }
        // SAFETY: a fresh mapping (null hint) of `len` bytes of an open file
        // descriptor; the kernel checks the descriptor and the length, and
        // the result is checked for MAP_FAILED before use. The descriptor
        // may be closed afterwards: the mapping keeps the file.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(Self { path: shown, base: p.cast(), len })
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Always false (an empty file is refused at open).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn span(&self, offset: u64, len: usize) -> Option<usize> {
        let off = usize::try_from(offset).ok()?;
        (off.checked_add(len)? <= self.len).then_some(off)
    }

    /// Copies `buf.len()` bytes at file offset `offset` into `buf`; `false`
    /// (nothing copied) when the span leaves the file.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(off) = self.span(offset, buf.len()) else { return false };
        // SAFETY: `off + buf.len() <= self.len` (checked by `span`), so the
        // source lies inside the live mapping; `buf` is a distinct, valid
        // destination of that length; a byte copy has no alignment needs.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off), buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// Fills `out` from file offset `offset` (a multiple of 8), one aligned
    /// 8-byte load per word: each word is a value the guest held at some
    /// moment, never torn, even while it runs (x86-64 makes aligned 8-byte
    /// loads atomic). `false` (nothing read) when the span leaves the file
    /// or `offset` is not aligned.
    pub fn read_words(&self, offset: u64, out: &mut [u64]) -> bool {
        if !offset.is_multiple_of(8) {
            return false;
        }
        let Some(off) = out.len().checked_mul(8).and_then(|n| self.span(offset, n)) else { return false };
        // The mapping is page-aligned and `off` a multiple of 8, so every
        // word below is 8-aligned.
        let words = self.base.wrapping_add(off).cast::<u64>();
        for (i, w) in out.iter_mut().enumerate() {
            // SAFETY: `off + 8 * out.len() <= self.len` (checked by `span`),
            // so word `i` lies inside the live mapping; it is 8-aligned (see
            // above); a volatile read is one load the compiler may neither
            // split nor merge, and no reference to the shared bytes is formed.
            *w = u64::from_le(unsafe { std::ptr::read_volatile(words.add(i)) });
        }
        true
    }

    /// Asks the CPU to start loading the cache lines of `len` bytes (at most
    /// 512) at file offset `offset`: nothing is read, nothing can fault.
    pub fn prefetch(&self, offset: u64, len: usize) {
        let len = len.min(512);
        let Some(off) = self.span(offset, len) else { return };
        let mut line = off & !63;
        while line < off + len {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch is a hint that never faults and reads
            // nothing into the program; the address is inside the mapping.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(self.base.wrapping_add(line).cast::<i8>())
            };
            line += 64;
        }
    }

    /// Copies `data` to file offset `offset`; `false` (nothing written)
    /// when the span leaves the file.
    pub fn write(&self, offset: u64, data: &[u8]) -> bool {
        let Some(off) = self.span(offset, data.len()) else { return false };
        // SAFETY: as in `read`: the destination is inside the writable shared
        // mapping, the source is a distinct valid slice.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(off), data.len()) };
        true
    }
}

impl Drop for RamFile {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `open`, unmapped
        // once, here; no pointer into it outlives `self`.
        let r = unsafe { libc::munmap(self.base.cast(), self.len) };
        if r != 0 {
            tracing::warn!(path = %self.path, error = %std::io::Error::last_os_error(), "munmap of the RAM file failed");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tmp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("vsplice-ramfile-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn writes_land_in_the_file_and_reads_see_the_file() {
        let p = tmp("rw", &[0u8; 8192]);
        let m = RamFile::open(&p).unwrap();
        assert!(m.write(4096, b"vsplice"));
        let mut b = [0u8; 7];
        assert!(m.read(4096, &mut b));
        assert_eq!(&b, b"vsplice");
        drop(m);
        assert_eq!(&std::fs::read(&p).unwrap()[4096..4103], b"vsplice", "a shared mapping writes the file");
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn words_are_read_aligned_and_in_bounds() {
        let mut bytes = vec![0u8; 4096];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        let p = tmp("words", &bytes);
        let m = RamFile::open(&p).unwrap();
        let mut w = [0u64; 2];
        assert!(m.read_words(8, &mut w));
        assert_eq!(w, [u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]), u64::from_le_bytes([16, 17, 18, 19, 20, 21, 22, 23])]);
        assert!(!m.read_words(4, &mut w), "unaligned");
        assert!(!m.read_words(4088, &mut w), "past the end");
        assert!(m.read_words(4080, &mut w));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn spans_outside_the_file_are_refused() {
        let p = tmp("bounds", &[1u8; 4096]);
        let m = RamFile::open(&p).unwrap();
        let mut b = [0u8; 16];
        assert!(!m.read(4090, &mut b));
        assert!(!m.read(u64::MAX - 4, &mut b));
        assert!(!m.write(4096, &[0]));
        assert_eq!(b, [0u8; 16]);
        assert!(m.read(4080, &mut b));
        assert_eq!(b, [1u8; 16]);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn missing_and_empty_files_are_file_errors() {
        assert_eq!(RamFile::open(Path::new("/nonexistent/vsplice-ram")).unwrap_err().cause(), "shm_file");
        let p = tmp("empty", &[]);
        assert_eq!(RamFile::open(&p).unwrap_err().cause(), "shm_file");
        let _ = std::fs::remove_file(p);
    }
}
