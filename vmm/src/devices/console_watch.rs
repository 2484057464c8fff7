//! The VMM watches its own serial output: every complete line the guest
//! writes to COM1 is scanned for the kernel's trouble markers (`Oops`,
//! `BUG:`, `WARNING:`, `Kernel panic`) and counted, whatever the output is
//! (stdout, a file, nothing). `GET /vm` publishes the counts (`console`),
//! and `vsplice fleet`'s console health gate compares them before and after
//! a patch. Lines are bounded ([`MAX_LINE`] bytes scanned; the rest of a
//! longer line is skipped), the output itself is passed on unchanged.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

/// Bytes of one line kept for scanning (Linux's console lines are shorter).
pub const MAX_LINE: usize = 1024;

/// What the guest's console said so far (this boot).
#[derive(Debug, Default)]
pub struct ConsoleCounters {
    lines: AtomicU64,
    oops: AtomicU64,
    bug: AtomicU64,
    warning: AtomicU64,
    panic: AtomicU64,
}

/// A snapshot of [`ConsoleCounters`] (`GET /vm`'s `console`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConsoleCounts {
    /// Complete lines seen.
    pub lines: u64,
    /// Lines with `Oops`.
    pub oops: u64,
    /// Lines with `BUG:`.
    pub bug: u64,
    /// Lines with `WARNING:`.
    pub warning: u64,
    /// Lines with `Kernel panic`.
    pub panic: u64,
}

impl ConsoleCounts {
    /// Oopses, BUGs, WARNINGs and panics together (not the lines).
    pub fn trouble(&self) -> u64 {
        self.oops + self.bug + self.warning + self.panic
    }
}

impl ConsoleCounters {
    /// The counts now.
    pub fn snapshot(&self) -> ConsoleCounts {
        ConsoleCounts {
            lines: self.lines.load(Ordering::Relaxed),
            oops: self.oops.load(Ordering::Relaxed),
            bug: self.bug.load(Ordering::Relaxed),
            warning: self.warning.load(Ordering::Relaxed),
            panic: self.panic.load(Ordering::Relaxed),
        }
    }

    fn count(&self, line: &[u8]) {
        self.lines.fetch_add(1, Ordering::Relaxed);
        for (marker, counter) in [(&b"Oops"[..], &self.oops), (b"BUG:", &self.bug), (b"WARNING:", &self.warning), (b"Kernel panic", &self.panic)] {
            if line.windows(marker.len()).any(|w| w == marker) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A writer that passes the guest's output on to `inner` and counts its lines.
pub struct ConsoleWatch<W> {
    inner: W,
    line: Vec<u8>,
    counters: Arc<ConsoleCounters>,
}

impl<W> std::fmt::Debug for ConsoleWatch<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleWatch").field("counters", &self.counters).finish_non_exhaustive()
    }
}

impl<W: Write> ConsoleWatch<W> {
    /// Watches what is written to `inner`, counting into `counters`.
    pub fn new(inner: W, counters: Arc<ConsoleCounters>) -> Self {
        Self { inner, line: Vec::with_capacity(128), counters }
    }

    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.counters.count(&self.line);
                self.line.clear();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }
}

impl<W: Write> Write for ConsoleWatch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Counted as written, whether or not the output takes it: the guest said it.
        let n = match self.inner.write(buf) {
            Ok(n) => n,
            Err(e) => {
                self.scan(buf);
                return Err(e);
            }
        };
        self.scan(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counts_markers_per_complete_line_and_passes_output_on() {
        let counters = Arc::new(ConsoleCounters::default());
        let mut w = ConsoleWatch::new(Vec::new(), counters.clone());
        w.write_all(b"TG ready\n[ 1.0] BUG: kernel NULL pointer\n[ 2.0] WARNING: CPU: 0 at x\nOops: 0000 [#1] SMP\nKernel panic - not syncing\n").unwrap();
        // Split across writes, and a line not ended yet: not counted until its newline.
        w.write_all(b"BU").unwrap();
        w.write_all(b"G: again").unwrap();
        assert_eq!(counters.snapshot(), ConsoleCounts { lines: 5, oops: 1, bug: 1, warning: 1, panic: 1 });
        w.write_all(b"\nbug: lower case is not a BUG\n").unwrap();
        let c = counters.snapshot();
        assert_eq!((c.lines, c.bug, c.trouble()), (7, 2, 5));
        assert!(w.inner.starts_with(b"TG ready\n"));
    }

    #[test]
    fn a_long_line_is_bounded_and_still_counted_once() {
        let counters = Arc::new(ConsoleCounters::default());
        let mut w = ConsoleWatch::new(io::sink(), counters.clone());
        let mut long = b"BUG: ".to_vec();
        long.extend(std::iter::repeat_n(b'x', 100_000));
        long.extend_from_slice(b" WARNING: past the bound\n");
        w.write_all(&long).unwrap();
        assert_eq!(counters.snapshot(), ConsoleCounts { lines: 1, bug: 1, ..Default::default() });
        assert!(w.line.capacity() <= MAX_LINE * 2);
    }
}
