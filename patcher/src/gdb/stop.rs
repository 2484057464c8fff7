//! What a stop the gdbstub reports on its own means to a client that set
//! hardware breakpoints. QEMU reports a debug stop (a breakpoint, a
//! watchpoint, a finished step: `RUN_STATE_DEBUG`) with `SIGTRAP` (`T05`)
//! and a stop from its monitor (`RUN_STATE_PAUSED`) with `SIGINT` (`T02`).
//! A debug stop at none of this client's breakpoints is nobody's: the stub
//! serves one client, so it was left by an earlier one (a breakpoint or a
//! step of a daemon that died) and nothing waits on it.

use crate::model::backend::VcpuState;

/// `SIGTRAP` as the remote protocol numbers it.
pub const SIGTRAP: u8 = 5;

/// A stop the stub reported on its own, looked at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnStop {
    /// A vCPU sits on one of this client's breakpoints.
    Hook(Box<VcpuState>),
    /// A debug stop (`SIGTRAP`) with no vCPU on this client's breakpoints:
    /// every vCPU's RIP, in vCPU order.
    Stray(Vec<u64>),
    /// Any other signal (`SIGINT`: someone stopped the VM on purpose).
    External(u8),
}

/// The signal of a stop reply (`T05…`, `S02`); `None` for anything else.
pub fn stop_signal(reply: &[u8]) -> Option<u8> {
    match reply {
        [b'T' | b'S', hi, lo, ..] => super::packet::parse_hex_u64(&[*hi, *lo]).map(|s| s as u8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_is_read_from_t_and_s_replies_only() {
        assert_eq!(stop_signal(b"T05thread:p01.02;"), Some(SIGTRAP));
        assert_eq!(stop_signal(b"S02"), Some(2));
        assert_eq!(stop_signal(b"T0g"), None);
        assert_eq!(stop_signal(b"W00"), None);
        assert_eq!(stop_signal(b"T"), None);
        assert_eq!(stop_signal(b""), None);
    }
}
