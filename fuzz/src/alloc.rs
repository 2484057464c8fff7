//! A counting global allocator with bounds: one allocation over
//! [`single_limit`] bytes, or live bytes over [`live_limit`], while an input
//! runs is a finding. The fuzz binary and the bounded test install it with
//! `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
//!
//! An allocator cannot unwind, so a violation writes the target's name, the
//! size and the current input (hex) to stderr and aborts the process: the
//! run fails and says which input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
static SINGLE_LIMIT: AtomicUsize = AtomicUsize::new(1 << 30);
static LIVE_LIMIT: AtomicUsize = AtomicUsize::new(2 << 30);

/// Default bound on one allocation: the largest legitimate one is a kernel
/// image decompressed in full (512 MiB) plus the decoder's slack.
pub const DEFAULT_SINGLE_LIMIT: usize = 640 << 20;
/// Default bound on live bytes while one input runs.
pub const DEFAULT_LIVE_LIMIT: usize = 1 << 30;

/// The allocator (System underneath).
#[derive(Debug)]
pub struct CountingAlloc;

/// Sets both bounds.
pub fn set_limits(single: usize, live: usize) {
    SINGLE_LIMIT.store(single, Ordering::Relaxed);
    LIVE_LIMIT.store(live, Ordering::Relaxed);
}

/// The bound on one allocation.
pub fn single_limit() -> usize {
    SINGLE_LIMIT.load(Ordering::Relaxed)
}

/// The bound on live bytes.
pub fn live_limit() -> usize {
    LIVE_LIMIT.load(Ordering::Relaxed)
}

/// Checks on (an input runs) or off; arming resets the peak.
pub fn arm(on: bool) {
    if on {
        PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    ARMED.store(on, Ordering::SeqCst);
}

/// Highest live byte count since the last [`arm`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

fn write_stderr(b: &[u8]) {
    // SAFETY: writing a valid buffer of `b.len()` bytes to fd 2; no
    // allocation (this runs inside the allocator).
    unsafe {
        libc::write(2, b.as_ptr().cast(), b.len());
    }
}

fn write_num(mut n: usize) {
    let mut buf = [0u8; 24];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    write_stderr(&buf[i..]);
}

fn violation(what: &[u8], size: usize) -> ! {
    ARMED.store(false, Ordering::SeqCst);
    write_stderr(b"\nvsplice-fuzz: ALLOCATION BOUND: ");
    write_stderr(what);
    write_stderr(b" ");
    write_num(size);
    write_stderr(b" bytes in target ");
    crate::runner::dump_current_input_raw();
    std::process::abort();
}

fn account(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    if live > PEAK.load(Ordering::Relaxed) {
        PEAK.store(live, Ordering::Relaxed);
    }
    if ARMED.load(Ordering::Relaxed) {
        if size > SINGLE_LIMIT.load(Ordering::Relaxed) {
            violation(b"one allocation of", size);
        }
        if live > LIVE_LIMIT.load(Ordering::Relaxed) {
            violation(b"live bytes reached", live);
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's layout and
// pointer unchanged; the bookkeeping only touches atomics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size());
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        account(layout.size());
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout` (via us).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        account(new_size);
        // SAFETY: `ptr`/`layout` from `System` via us; `new_size` per the caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
