//! [`Faulty`]: fault injection around any [`Backend`] (the RAM guest, or a
//! real VMM in end-to-end tests). After a budget of guest-memory writes it
//! fails the next write only (a transient error: the transaction can put
//! back what it wrote), fails every further write, or "dies": that write and
//! every call after it fail, as if the vsplice process was killed there.

use crate::model::backend::{Backend, BackendError, VcpuState};

/// What happens once the write budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next write fails, later ones go through.
    FailOnce,
    /// Every further write fails; everything else keeps working.
    FailWrites,
    /// The write that finds the budget spent, and every call after it, fails.
    Die,
}

/// A backend with a write budget.
#[derive(Debug)]
pub struct Faulty<B: Backend> {
    inner: B,
    /// Writes still allowed (`None`: no limit).
    budget: Option<usize>,
    fault: Fault,
    dead: bool,
    /// Writes that went through.
    pub writes: usize,
    /// Writes refused.
    pub refused: usize,
}

impl<B: Backend> Faulty<B> {
    /// No fault until one is armed.
    pub fn new(inner: B) -> Self {
        Self { inner, budget: None, fault: Fault::FailWrites, dead: false, writes: 0, refused: 0 }
    }

    /// After `n` more writes, one write fails.
    pub fn fail_once_after(mut self, n: usize) -> Self {
        self.arm(Fault::FailOnce, n);
        self
    }

    /// After `n` more writes, every write fails.
    pub fn fail_writes_after(mut self, n: usize) -> Self {
        self.arm(Fault::FailWrites, n);
        self
    }

    /// After `n` more writes, the backend dies.
    pub fn die_after_writes(mut self, n: usize) -> Self {
        self.arm(Fault::Die, n);
        self
    }

    /// Arms `fault` after `n` more writes.
    pub fn arm(&mut self, fault: Fault, n: usize) {
        self.fault = fault;
        self.budget = Some(n);
    }

    /// Lifts the limit and brings a dead backend back.
    pub fn heal(&mut self) {
        self.budget = None;
        self.dead = false;
    }

    /// True once the backend died.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// The wrapped backend.
    pub fn inner(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Gives the wrapped backend back.
    pub fn into_inner(self) -> B {
        self.inner
    }

    fn alive(&self) -> Result<(), BackendError> {
        if self.dead {
            return Err(BackendError::Transport("injected: the process is dead".into()));
        }
        Ok(())
    }
}

impl<B: Backend> crate::model::backend_wrap::Wrapper for Faulty<B> {
    type Inner = B;
    fn inner_ref(&self) -> &B {
        &self.inner
    }
    fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }
    fn read_phys_words(&mut self, gpa: u64, out: &mut [u64]) -> Result<(), BackendError> {
        self.alive()?;
        self.inner.read_phys_words(gpa, out)
    }
    fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
        self.alive()?;
        self.inner.stop()
    }
    fn resume(&mut self) -> Result<(), BackendError> {
        self.alive()?;
        self.inner.resume()
    }
    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.alive()?;
        self.inner.read_phys(gpa, buf)
    }
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        self.alive()?;
        match &mut self.budget {
            Some(0) => {
                self.refused += 1;
                match self.fault {
                    Fault::Die => {
                        self.dead = true;
                        return Err(BackendError::Transport("injected: killed".into()));
                    }
                    Fault::FailOnce => self.budget = None,
                    Fault::FailWrites => {}
                }
                return Err(BackendError::Transport("injected: write failed".into()));
            }
            Some(n) => *n -= 1,
            None => {}
        }
        self.inner.write_phys(gpa, data)?;
        self.writes += 1;
        Ok(())
    }
}
crate::forward_backend!([B: Backend] Faulty<B>);
