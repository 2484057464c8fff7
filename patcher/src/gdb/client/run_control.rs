//! Run control of [`GdbClient`]: stop (interrupt), wait for the stub's
//! own stop replies, continue, single-step one vCPU, hardware breakpoints
//! (`Z1`/`z1`) and detach.

use std::time::Duration;

use super::super::error::GdbError;
use super::super::packet;
use super::{is_stop_reply, GdbClient};

impl GdbClient {
    /// Stop the running guest (all-stop: every vCPU) and wait for the stop reply.
    pub fn interrupt(&mut self) -> Result<Vec<u8>, GdbError> {
        self.link.write_raw(&[0x03], self.opts.timeout)?;
        let r = self.link.recv(self.opts.stop_timeout, b"interrupt (0x03)")?;
        match r.first() {
            Some(b'T') | Some(b'S') => Ok(r),
            _ => Err(GdbError::protocol(b"interrupt (0x03)", &r)),
        }
    }

    /// Waits for the stop reply the stub sends on its own when someone
    /// else stopped the VM (QMP `stop`: QEMU reports it to an attached
    /// debugger before QMP answers).
    pub fn wait_stop_reply(&mut self) -> Result<Vec<u8>, GdbError> {
        let r = self.link.recv(self.opts.stop_timeout, b"(stop notification)")?;
        if is_stop_reply(&r) {
            Ok(r)
        } else {
            Err(GdbError::protocol(b"(stop notification)", &r))
        }
    }

    /// The stub's current stop reason (`?`).
    pub fn stop_reason(&mut self) -> Result<Vec<u8>, GdbError> {
        self.request(b"?")
    }

    /// While the guest runs: what the stub sent on its own, without waiting
    /// for it — `None` when nothing came; a stop reply (`T05…`: the VM was
    /// stopped, e.g. from QEMU's monitor) or an exit (`W00`, `X09`: QEMU is
    /// quitting) otherwise. [`GdbError::Closed`] when the stub is gone.
    pub fn poll_notification(&mut self) -> Result<Option<Vec<u8>>, GdbError> {
        if !self.link.pending()? {
            return Ok(None);
        }
        // The rest of a packet that has begun to arrive follows at once.
        let rest = self.opts.timeout.min(Duration::from_secs(1));
        match self.link.recv(rest, b"(a notification)") {
            Ok(p) => Ok(Some(p)),
            // Only acks or noise were waiting.
            Err(GdbError::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Let every vCPU run (`vCont;c`, else `c`). No reply until the next stop.
    pub fn cont(&mut self) -> Result<(), GdbError> {
        let req: &[u8] = if self.features.vcont { b"vCont;c" } else { b"c" };
        self.link.send(req, self.opts.timeout)
    }

    /// Inserts a hardware breakpoint at guest-virtual `addr` (`Z1`: QEMU
    /// keeps it itself under TCG and in the debug registers under KVM; the
    /// guest's text is never written, unlike `Z0` under KVM). A stub without
    /// them: [`GdbError::Unsupported`].
    pub fn insert_hw_breakpoint(&mut self, addr: u64) -> Result<(), GdbError> {
        self.breakpoint_request(format!("Z1,{addr:x},1"))
    }

    /// Removes the hardware breakpoint at `addr` (`z1`).
    pub fn remove_hw_breakpoint(&mut self, addr: u64) -> Result<(), GdbError> {
        self.breakpoint_request(format!("z1,{addr:x},1"))
    }

    /// Removes a software breakpoint at `addr` (`z0`; vsplice never sets
    /// one, a person's gdb may have).
    pub fn remove_sw_breakpoint(&mut self, addr: u64) -> Result<(), GdbError> {
        self.breakpoint_request(format!("z0,{addr:x},1"))
    }

    fn breakpoint_request(&mut self, req: String) -> Result<(), GdbError> {
        let r = self.request(req.as_bytes())?;
        if r == b"OK" {
            Ok(())
        } else if r.is_empty() {
            Err(GdbError::Unsupported("hardware breakpoints (Z1)"))
        } else if packet::is_error_reply(&r) {
            Err(GdbError::remote(req.as_bytes(), &r))
        } else {
            Err(GdbError::protocol(req.as_bytes(), &r))
        }
    }

    /// Executes one instruction on the vCPU `tid` (`vCont;s:TID`, else
    /// `Hc` and `s`) and waits for the stop reply that ends the step.
    pub fn step_thread(&mut self, tid: &str) -> Result<Vec<u8>, GdbError> {
        if self.features.vcont {
            self.link.send(format!("vCont;s:{tid}").as_bytes(), self.opts.timeout)?;
        } else {
            self.request_ok(format!("Hc{tid}").as_bytes())?;
            self.link.send(b"s", self.opts.timeout)?;
        }
        self.wait_stop_reply()
    }

    /// Detach (`D`): the stub resumes the guest and forgets us.
    pub fn detach(&mut self) -> Result<(), GdbError> {
        if self.phys_mode {
            // Leave QEMU as a later debugger expects it.
            let _ = self.set_phys_mode(false);
        }
        self.request_ok(b"D")
    }
}
