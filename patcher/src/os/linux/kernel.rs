//! One place that identifies a kernel: kallsyms, banner, build-id, BTF, ORC,
//! and for a live guest the KASLR slide found two independent ways (page
//! tables vs kallsyms) plus the physical load address.

use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, info, warn};

use super::btf::{Btf, BtfError};
use super::image::{ImageError, ImageMemory};
use super::kallsyms::{Kallsyms, KallsymsError};
use super::layout::{self, KernelImageMap, DEFAULT_TEXT_LINK};
use super::notes;
use super::orc::{self, OrcTables};
use crate::model::backend::{Backend, VcpuState};
use crate::model::mem::{KernelMemory, MemError};
use crate::arch::x86::vmem::VirtMem;

/// Why a kernel could not be identified.
#[derive(Debug, Error)]
pub enum KernelError {
    /// No vCPU is in 64-bit long mode with paging.
    #[error("no vCPU runs with 64-bit paging (guest not booted yet?)")]
    NotLongMode,
    /// Nothing is mapped in the kernel-image area.
    #[error("no kernel mapping under __START_KERNEL_map")]
    NoKernelMapping(#[source] MemError),
    /// The two ways of finding the slide disagree.
    #[error("KASLR slide disagrees: page tables put _text at {page_tables:#x}, kallsyms at {kallsyms:#x}")]
    SlideMismatch {
        /// `_text` from the page tables.
        page_tables: u64,
        /// `_text` from kallsyms.
        kallsyms: u64,
    },
    /// kallsyms could not be read.
    #[error(transparent)]
    Kallsyms(#[from] KallsymsError),
    /// BTF could not be parsed.
    #[error("embedded BTF is unusable")]
    Btf(#[from] #[source] BtfError),
    /// Guest memory could not be read.
    #[error("reading kernel memory failed")]
    Memory(#[from] #[source] MemError),
    /// The image file could not be opened.
    #[error("kernel image")]
    Image(#[from] #[source] ImageError),
}

impl KernelError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::NotLongMode => "not_long_mode",
            Self::NoKernelMapping(_) => "no_kernel_mapping",
            Self::SlideMismatch { .. } => "slide_mismatch",
            Self::Kallsyms(e) => e.cause(),
            Self::Btf(e) => e.cause(),
            Self::Memory(e) => e.cause(),
            Self::Image(e) => e.cause(),
        }
    }
}

/// The KASLR result for a live guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slide {
    /// Runtime `_text` (both methods agree on it).
    pub text: u64,
    /// Link-time `_text`.
    pub text_link: u64,
    /// Virtual slide: `text - text_link`.
    pub virt: u64,
    /// Physical address of `_text` (physical KASLR).
    pub phys_base: u64,
}

/// How long each step took.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Page-table walk of the kernel-image area.
    pub map: Duration,
    /// Reading the region that holds kallsyms.
    pub region_read: Duration,
    /// Bytes in that region.
    pub region_bytes: u64,
    /// Locating and decoding kallsyms.
    pub kallsyms_decode: Duration,
    /// Banner, notes, BTF, ORC.
    pub rest: Duration,
}

/// What identifies a kernel build and where its metadata is.
#[derive(Debug, Clone)]
pub struct KernelInfo {
    /// Symbols.
    pub kallsyms: Kallsyms,
    /// `linux_banner` (without the trailing newline).
    pub banner: Option<String>,
    /// GNU build-id.
    pub build_id: Option<Vec<u8>>,
    /// Parsed BTF and its address range.
    pub btf: Option<(Btf, u64, u64)>,
    /// ORC tables.
    pub orc: Option<OrcTables>,
    /// Live guests: the slide.
    pub slide: Option<Slide>,
    /// Timings of identification.
    pub timings: Timings,
}

fn read_range<M: KernelMemory + ?Sized>(mem: &mut M, k: &Kallsyms, start: &str, stop: &str) -> Option<(u64, Vec<u8>)> {
    let a = k.first_addr(start)?;
    let b = k.first_addr(stop)?;
    let len = b.checked_sub(a)?;
    if len == 0 || len > 256 << 20 {
        return None;
    }
    match mem.read_vec(a, len as usize) {
        Ok(v) => Some((a, v)),
        Err(e) => {
            warn!(error = %e, start, "cannot read range");
            None
        }
    }
}

/// Banner, build-id, BTF and ORC once kallsyms is known.
fn identify<M: KernelMemory + ?Sized>(mem: &mut M, kallsyms: Kallsyms, region: &[u8], timings: Timings) -> Result<KernelInfo, KernelError> {
    let t = Instant::now();
    let banner = match kallsyms.first_addr("linux_banner").map(|a| mem.read_cstr(a, 512)) {
        Some(Ok(b)) => Some(b.trim_end().to_string()),
        Some(Err(e)) => {
            warn!(error = %e, "linux_banner unreadable; scanning");
            notes::scan_banner(region).map(|(_, s)| s)
        }
        None => notes::scan_banner(region).map(|(_, s)| s),
    };
    let build_id = read_range(mem, &kallsyms, "__start_notes", "__stop_notes")
        .and_then(|(_, n)| notes::build_id_from_notes(&n))
        .or_else(|| notes::scan_build_id(region));
    let btf = match read_range(mem, &kallsyms, "__start_BTF", "__stop_BTF") {
        Some((a, blob)) => Some((Btf::parse(&blob)?, a, a + blob.len() as u64)),
        None => None,
    };
    let orc = orc::locate(&kallsyms);
    let mut timings = timings;
    timings.rest = t.elapsed();
    Ok(KernelInfo { kallsyms, banner, build_id, btf, orc, slide: None, timings })
}

/// Identify the kernel of an image file (bzImage or vmlinux).
pub fn open_image(img: &mut ImageMemory) -> Result<KernelInfo, KernelError> {
    let (base, len) = img.section(".rodata").ok_or_else(|| KallsymsError::NotFound("image has no .rodata section".into()))?;
    let region = img.slice(base, len as usize).ok_or_else(|| KallsymsError::NotFound(".rodata is not in the file".into()))?.to_vec();
    let t = Instant::now();
    let k = Kallsyms::locate_in(&region, base)?;
    let timings = Timings { kallsyms_decode: t.elapsed(), region_bytes: len, ..Timings::default() };
    identify(img, k, &region, timings)
}

/// A live guest's kernel: memory access plus identification.
#[derive(Debug)]
pub struct LiveKernel<B: Backend> {
    /// Kernel-virtual memory of the guest.
    pub vm: VirtMem<B>,
    /// vCPU states at the stop.
    pub vcpus: Vec<VcpuState>,
    /// The kernel image as mapped.
    pub map: KernelImageMap,
    /// Identification.
    pub info: KernelInfo,
}

/// The CR3 to read the kernel with: a vCPU in kernel mode if any (with PTI a
/// user-mode CR3 maps almost none of the kernel), else the first one with
/// the PTI user bit (bit 12) cleared when its tables do not map the kernel.
fn kernel_cr3(vcpus: &[VcpuState]) -> Option<&VcpuState> {
    vcpus.iter().filter(|v| v.long_mode()).min_by_key(|v| v.cpl())
}

impl<B: Backend> LiveKernel<B> {
    /// Identify the kernel of a stopped guest. `text_link` is `_text`'s link
    /// address (from the image when known; Debian's default otherwise).
    pub fn open(backend: B, vcpus: Vec<VcpuState>, text_link: Option<u64>) -> Result<Self, KernelError> {
        let v = kernel_cr3(&vcpus).ok_or(KernelError::NotLongMode)?.clone();
        let mut vm = VirtMem::new(backend, v.cr3, v.cr4);
        let t = Instant::now();
        let map = {
            let (w, b) = vm.walker_and_backend();
            match layout::map_kernel_image(w, b) {
                Ok(m) if v.cpl() == 0 || v.cr3 & 0x1000 == 0 || m.end() - m.text > 8 << 20 => m,
                first => {
                    // PTI user page tables: the kernel PGD is the even page.
                    debug!(?first, "retrying the kernel map with the PTI kernel PGD");
                    vm = VirtMem::new(vm.into_backend(), v.cr3 & !0x1000, v.cr4);
                    let (w, b) = vm.walker_and_backend();
                    layout::map_kernel_image(w, b).map_err(KernelError::NoKernelMapping)?
                }
            }
        };
        let mut timings = Timings { map: t.elapsed(), ..Timings::default() };
        debug!(text = format_args!("{:#x}", map.text), phys = format_args!("{:#x}", map.phys_base), runs = map.runs.len(), "kernel image mapping");
        // kallsyms lives in .rodata: read the read-only span, else the whole image.
        let spans = [map.rodata(), Some((map.text, map.end()))];
        let mut found = None;
        for (start, end) in spans.into_iter().flatten() {
            let t = Instant::now();
            let region = vm.read_vec(start, (end - start) as usize)?;
            timings.region_read += t.elapsed();
            timings.region_bytes += end - start;
            let t = Instant::now();
            let r = Kallsyms::locate_in(&region, start);
            timings.kallsyms_decode += t.elapsed();
            match r {
                Ok(k) => {
                    found = Some((k, region));
                    break;
                }
                Err(e) => warn!(error = %e, "kallsyms not in {start:#x}..{end:#x}"),
            }
        }
        let (k, region) = found.ok_or_else(|| KallsymsError::NotFound("not in the kernel image mapping".into()))?;
        // Slide: page tables vs kallsyms.
        let ks_text = k.first_addr("_text").or_else(|| k.first_addr("startup_64"));
        let ks_text = ks_text.ok_or_else(|| KallsymsError::Corrupt("no _text symbol".into()))?;
        if ks_text != map.text {
            return Err(KernelError::SlideMismatch { page_tables: map.text, kallsyms: ks_text });
        }
        let text_link = text_link.unwrap_or(DEFAULT_TEXT_LINK);
        let slide = Slide { text: map.text, text_link, virt: map.text.wrapping_sub(text_link), phys_base: map.phys_base };
        let mut info = identify(&mut vm, k, &region, timings)?;
        info!(slide = format_args!("{:#x}", slide.virt), phys = format_args!("{:#x}", slide.phys_base), "kernel identified");
        info.slide = Some(slide);
        Ok(Self { vm, vcpus, map, info })
    }
}
