//! A hostile guest on demand, around any real backend: [`Corrupting`]
//! writes chosen bytes into the guest's memory right after every stop and
//! puts the guest's own bytes back before every resume. vsplice's ordinary
//! code (identification, the task walk, a transaction) then reads the
//! corrupted memory of a real guest, while the guest itself never runs
//! with it: it sees its memory as it left it.
//!
//! The original bytes are read afresh at each stop (the guest may have
//! changed them while it ran) and written back in reverse order, so
//! overlapping corruptions restore correctly. [`Corrupting::disarm`] (or
//! [`Corrupting::into_inner`]) restores them when the wrapper ends with the
//! guest stopped.

use std::ops::Range;

use crate::model::backend::{Backend, BackendError, VcpuState};

/// One corruption: `bytes` written at guest-physical `gpa`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// Where.
    pub gpa: u64,
    /// What the guest's memory holds there while vsplice looks.
    pub bytes: Vec<u8>,
}

/// Computes the corruptions at a stop from the guest's memory as it is
/// then (e.g. a header whose checksum must match its other fields).
pub type PlanFn<B> = Box<dyn FnMut(&mut B) -> Result<Vec<Corruption>, BackendError> + Send>;

/// A backend whose guest memory holds [`Corruption`]s while it is stopped.
pub struct Corrupting<B: Backend> {
    inner: B,
    plan: Vec<Corruption>,
    dynamic: Option<PlanFn<B>>,
    /// The guest's own bytes at each place, while the plan is in memory.
    saved: Vec<(u64, Vec<u8>)>,
    stopped: bool,
    /// Stops at which the plan was written (for the test's report).
    pub armed_stops: u32,
    /// Guest-physical ranges no read or write may touch (device memory, a
    /// hole), and the accesses that did: `(gpa, len)`.
    watch: Vec<Range<u64>>,
    /// Accesses that touched a watched range.
    pub watched_accesses: Vec<(u64, u64)>,
}

impl<B: Backend> Corrupting<B> {
    /// Wraps `inner`; `stopped` tells whether the guest is stopped now (a
    /// gdbstub stops it at connect). Nothing is written yet.
    pub fn new(inner: B, stopped: bool) -> Self {
        Self { inner, plan: Vec::new(), dynamic: None, saved: Vec::new(), stopped, armed_stops: 0, watch: Vec::new(), watched_accesses: Vec::new() }
    }

    /// The corruptions to write at every stop from now on (written at once
    /// when the guest is stopped).
    pub fn arm(&mut self, plan: Vec<Corruption>) -> Result<(), BackendError> {
        self.restore()?;
        self.plan = plan;
        if self.stopped {
            self.corrupt()?;
        }
        Ok(())
    }

    /// Records every access of vsplice's that touches `range` (in
    /// [`Corrupting::watched_accesses`]; the access itself still happens).
    pub fn watch(&mut self, range: Range<u64>) {
        self.watch.push(range);
    }

    fn note(&mut self, gpa: u64, len: usize) {
        let end = gpa.saturating_add(len as u64);
        if self.watch.iter().any(|r| gpa < r.end && end > r.start) {
            self.watched_accesses.push((gpa, len as u64));
        }
    }

    /// Like [`Corrupting::arm`], the corruptions worked out by `plan` at
    /// every stop from the guest's memory as it is then.
    pub fn arm_with(&mut self, plan: PlanFn<B>) -> Result<(), BackendError> {
        self.restore()?;
        self.plan.clear();
        self.dynamic = Some(plan);
        if self.stopped {
            self.corrupt()?;
        }
        Ok(())
    }

    /// Puts the guest's bytes back and forgets the plan.
    pub fn disarm(&mut self) -> Result<(), BackendError> {
        self.plan.clear();
        self.dynamic = None;
        self.restore()
    }

    /// The wrapped backend (its memory as it is now: corrupted while armed
    /// and stopped).
    pub fn inner(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Gives the backend back, the guest's bytes restored.
    pub fn into_inner(mut self) -> Result<B, BackendError> {
        self.disarm()?;
        Ok(self.inner)
    }

    fn corrupt(&mut self) -> Result<(), BackendError> {
        if !self.saved.is_empty() {
            return Ok(());
        }
        if let Some(f) = self.dynamic.as_mut() {
            self.plan = f(&mut self.inner)?;
        }
        if self.plan.is_empty() {
            return Ok(());
        }
        for c in &self.plan {
            let mut orig = vec![0u8; c.bytes.len()];
            self.inner.read_phys(c.gpa, &mut orig)?;
            self.saved.push((c.gpa, orig));
            self.inner.write_phys(c.gpa, &c.bytes)?;
        }
        self.armed_stops += 1;
        Ok(())
    }

    fn restore(&mut self) -> Result<(), BackendError> {
        while let Some((gpa, orig)) = self.saved.pop() {
            if let Err(e) = self.inner.write_phys(gpa, &orig) {
                self.saved.push((gpa, orig));
                return Err(e);
            }
        }
        Ok(())
    }
}

impl<B: Backend + std::fmt::Debug> std::fmt::Debug for Corrupting<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Corrupting")
            .field("inner", &self.inner)
            .field("plan", &self.plan)
            .field("dynamic", &self.dynamic.is_some())
            .field("saved", &self.saved.len())
            .field("stopped", &self.stopped)
            .field("armed_stops", &self.armed_stops)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> crate::model::backend_wrap::Wrapper for Corrupting<B> {
    type Inner = B;
    fn inner_ref(&self) -> &B {
        &self.inner
    }
    fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    fn read_phys_words(&mut self, gpa: u64, out: &mut [u64]) -> Result<(), BackendError> {
        self.note(gpa, out.len() * 8);
        self.inner.read_phys_words(gpa, out)
    }

    fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
        let v = self.inner.stop()?;
        self.stopped = true;
        if let Err(e) = self.corrupt() {
            // Never leave a half-corrupted guest: restore what was written.
            let _ = self.restore();
            return Err(e);
        }
        Ok(v)
    }

    fn resume(&mut self) -> Result<(), BackendError> {
        // The guest never runs corrupted: a failed restore keeps it stopped.
        self.restore()?;
        self.inner.resume()?;
        self.stopped = false;
        Ok(())
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.note(gpa, buf.len());
        self.inner.read_phys(gpa, buf)
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        self.note(gpa, data.len());
        self.inner.write_phys(gpa, data)
    }
}
crate::forward_backend!([B: Backend] Corrupting<B>);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::RamGuest;

    fn read(g: &mut impl Backend, gpa: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        g.read_phys(gpa, &mut b).unwrap();
        b
    }

    #[test]
    fn corrupted_only_while_stopped_and_restored_before_every_resume() {
        let mut ram = RamGuest::new(1 << 20);
        ram.write_phys(0x1000, b"original").unwrap();
        let mut c = Corrupting::new(ram, false);
        c.arm(vec![Corruption { gpa: 0x1000, bytes: b"EVIL".to_vec() }, Corruption { gpa: 0x1002, bytes: b"xx".to_vec() }]).unwrap();
        assert_eq!(read(&mut c, 0x1000, 8), b"original", "running: nothing written yet");
        for _ in 0..3 {
            c.stop().unwrap();
            assert_eq!(read(&mut c, 0x1000, 8), b"EVxxinal");
            c.resume().unwrap();
            assert_eq!(read(&mut c, 0x1000, 8), b"original", "overlapping places restored in reverse");
        }
        assert_eq!(c.armed_stops, 3);
        // Watched ranges: vsplice's accesses there are recorded, the plan's own writes are not.
        c.watch(0x2000..0x3000);
        c.stop().unwrap();
        let _ = read(&mut c, 0x1ff8, 16);
        let _ = read(&mut c, 0x3000, 8);
        c.resume().unwrap();
        assert_eq!(c.watched_accesses, vec![(0x1ff8, 16)]);
        // Armed while stopped: written at once; disarm restores.
        c.stop().unwrap();
        c.arm(vec![Corruption { gpa: 0x1004, bytes: b"!!".to_vec() }]).unwrap();
        assert_eq!(read(&mut c, 0x1000, 8), b"orig!!al");
        // A plan worked out at each stop from the memory then.
        c.arm_with(Box::new(|b: &mut RamGuest| {
            let mut cur = [0u8; 1];
            b.read_phys(0x1000, &mut cur)?;
            Ok(vec![Corruption { gpa: 0x1001, bytes: vec![cur[0] ^ 0x20] }])
        }))
        .unwrap();
        assert_eq!(read(&mut c, 0x1000, 8), b"oOiginal");
        c.resume().unwrap();
        c.stop().unwrap();
        assert_eq!(read(&mut c, 0x1000, 8), b"oOiginal");
        let mut ram = c.into_inner().unwrap();
        assert_eq!(read(&mut ram, 0x1000, 8), b"original");
    }
}
