//! Errors of the GDB remote client, each with a stable cause name.

use thiserror::Error;

use crate::model::backend::BackendError;

/// Why a GDB remote request failed.
#[derive(Debug, Error)]
pub enum GdbError {
    /// Connecting to the stub failed.
    #[error("cannot connect to gdbstub at {addr}")]
    Connect {
        /// The address given.
        addr: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("gdbstub socket error")]
    Io(#[source] std::io::Error),
    /// The stub did not answer in time.
    #[error("gdbstub did not answer {what} within {timeout_ms} ms")]
    Timeout {
        /// The request (or phase) that timed out.
        what: String,
        /// The time allowed.
        timeout_ms: u64,
    },
    /// The stub closed the connection.
    #[error("gdbstub closed the connection")]
    Closed,
    /// The stub said the guest is gone (`W`/`X`: QEMU quits).
    #[error("the gdbstub reported that the guest exited ({reply})")]
    Exited {
        /// The exit packet.
        reply: String,
    },
    /// A packet arrived with a wrong checksum (and could not be retransmitted).
    #[error("bad packet checksum (got {got:#04x}, computed {computed:#04x})")]
    Checksum {
        /// Checksum carried by the packet.
        got: u8,
        /// Checksum computed over the body.
        computed: u8,
    },
    /// A packet from the stub is larger than the link accepts (a broken or
    /// hostile peer: `$` then endless bytes without `#`).
    #[error("gdbstub sent a packet larger than {limit} bytes")]
    PacketTooLarge {
        /// The bound.
        limit: usize,
    },
    /// The stub sent more bytes outside any packet than the link tolerates.
    #[error("gdbstub sent more than {limit} bytes of garbage between packets")]
    Garbage {
        /// The bound.
        limit: usize,
    },
    /// The stub answered with something this client does not understand.
    #[error("unexpected gdbstub reply to {request}: {reply}")]
    Protocol {
        /// The request sent.
        request: String,
        /// The reply (truncated).
        reply: String,
    },
    /// The stub answered with an error code (`Exx`).
    #[error("gdbstub refused {request}: {reply}")]
    Remote {
        /// The request sent.
        request: String,
        /// The error reply.
        reply: String,
    },
    /// The stub does not support something this client needs.
    #[error("gdbstub does not support {0}")]
    Unsupported(&'static str),
    /// A register the patcher needs is not in the target description.
    #[error("target description has no register {0}")]
    MissingRegister(String),
    /// The request needs the guest stopped (or running) and it is not.
    #[error("guest is in the wrong state: {0}")]
    WrongState(&'static str),
}

impl GdbError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Io(_) => "io",
            Self::Timeout { .. } => "timeout",
            Self::Closed => "closed",
            Self::Exited { .. } => "exited",
            Self::Checksum { .. } => "checksum",
            Self::PacketTooLarge { .. } => "packet_too_large",
            Self::Garbage { .. } => "garbage",
            Self::Protocol { .. } => "protocol",
            Self::Remote { .. } => "remote_error",
            Self::Unsupported(_) => "unsupported",
            Self::MissingRegister(_) => "missing_register",
            Self::WrongState(_) => "wrong_state",
        }
    }

    pub(crate) fn protocol(request: &[u8], reply: &[u8]) -> Self {
        Self::Protocol { request: short(request), reply: short(reply) }
    }

    pub(crate) fn remote(request: &[u8], reply: &[u8]) -> Self {
        Self::Remote { request: short(request), reply: short(reply) }
    }
}

/// First bytes of a packet, printable, for error messages.
pub(crate) fn short(p: &[u8]) -> String {
    let cut = &p[..p.len().min(64)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if p.len() > cut.len() {
        s.push('…');
    }
    s
}

impl From<GdbError> for BackendError {
    fn from(e: GdbError) -> Self {
        match e {
            GdbError::WrongState(w) => BackendError::WrongState(w),
            other => BackendError::Transport(format!("gdb {}: {}", other.cause(), crate::model::chain(&other))),
        }
    }
}
