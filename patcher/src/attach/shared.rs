//! Attaching in shared-memory mode: open QEMU's RAM file as QMP lays it
//! out, prove it is this guest's RAM, and only then route the backend's
//! memory through it.
//!
//! The proof: with the guest stopped, pages read through the file must be
//! byte for byte the pages the gdbstub reads — each vCPU's page-table root
//! (CR3: never zero in a running kernel, and different in every guest) and
//! pages spread evenly over every RAM range. A file of another guest, an
//! old copy, a file of zeros, or a QMP socket of another QEMU disagrees and
//! is refused ([`ShmError::NotThisGuest`]) before anything is written; if
//! every sampled page is zero through the stub the check could not fail,
//! so the file is refused too ([`ShmError::Unverifiable`]).

use tracing::info;

use crate::gdb::GdbBackend;
use crate::model::backend::VcpuState;
use crate::shm::{SharedPlane, ShmError, ShmSpec};

/// Pages sampled evenly over the RAM ranges (besides the CR3 pages).
const SPREAD_SAMPLES: u64 = 16;
const PAGE: u64 = 4096;
/// Physical-address bits of CR3's page-table root.
const CR3_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Opens the plane of `spec`, checks it against the stopped `be`, and
/// installs it. On error `be` is unchanged (memory stays with the stub).
pub fn use_shared(be: &mut GdbBackend, vcpus: &[VcpuState], spec: &ShmSpec) -> Result<(), ShmError> {
    let plane = SharedPlane::open(spec)?;
    verify(be, &plane, vcpus)?;
    be.set_shared(plane);
    Ok(())
}

/// The pages compared: every vCPU's CR3 page, then evenly spread ones.
pub fn sample_pages(plane: &SharedPlane, vcpus: &[VcpuState]) -> Vec<u64> {
    let mut pages: Vec<u64> = vcpus.iter().map(|v| v.cr3 & CR3_ADDR).filter(|&p| plane.layout().offset_of(p, PAGE).is_some()).collect();
    let total = plane.layout().mapped_bytes() / PAGE;
    let step = (total / SPREAD_SAMPLES).max(1);
    let mut k = step / 2;
    while k < total && pages.len() < vcpus.len() + SPREAD_SAMPLES as usize {
        if let Some(gpa) = nth_page(plane, k) {
            pages.push(gpa);
        }
        k += step;
    }
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// Guest-physical address of the `k`-th whole page of the layout.
fn nth_page(plane: &SharedPlane, mut k: u64) -> Option<u64> {
    for r in &plane.layout().ranges {
        let first = r.gpa.div_ceil(PAGE) * PAGE;
        let n = (r.gpa + r.len).saturating_sub(first) / PAGE;
        if k < n {
            return Some(first + k * PAGE);
        }
        k -= n;
    }
    None
}

/// Compares the sample pages through the file and through the stub.
pub fn verify(be: &mut GdbBackend, plane: &SharedPlane, vcpus: &[VcpuState]) -> Result<(), ShmError> {
    let pages = sample_pages(plane, vcpus);
    let (mut via_file, mut via_stub) = (vec![0u8; PAGE as usize], vec![0u8; PAGE as usize]);
    let mut nonzero = 0usize;
    for &gpa in &pages {
        plane.read(gpa, &mut via_file).map_err(|e| ShmError::NotThisGuest(format!("page {gpa:#x} is not in the file: {e}")))?;
        be.read_phys_stub(gpa, &mut via_stub)
            .map_err(|e| ShmError::Unverifiable(format!("the gdbstub cannot read page {gpa:#x}: {e} ({})", e.cause())))?;
        if via_file != via_stub {
            let at = via_file.iter().zip(&via_stub).position(|(a, b)| a != b).unwrap_or(0);
            return Err(ShmError::NotThisGuest(format!(
                "guest-physical {:#x} reads {:#04x} through {} but {:#04x} through the gdbstub",
                gpa + at as u64,
                via_file[at],
                plane.path().display(),
                via_stub[at]
            )));
        }
        nonzero += usize::from(via_stub.iter().any(|&b| b != 0));
    }
    if nonzero == 0 {
        return Err(ShmError::Unverifiable(format!("all {} sampled pages are zero through the gdbstub", pages.len())));
    }
    info!(pages = pages.len(), nonzero, "the RAM file agrees with the gdbstub");
    Ok(())
}
