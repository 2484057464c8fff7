//! The guest agent's descriptor (see `guest-agent/`): its layout
//! ([`layout`]), reading and validating it from guest memory ([`read`]),
//! finding it ([`find`]: doorbell address, the agent module's own symbol,
//! or a scan of physical memory for its magic), and turning it into the
//! same task list the agentless walk produces, checked against that walk
//! when BTF is there too ([`source`]).
//!
//! Every read is meant for a stopped guest: an odd sequence counter
//! ([`AgentError::Busy`]) or a table still being filled
//! ([`AgentError::Loading`]) means "let the guest run and try again",
//! never a partial list.

pub mod find;
pub mod layout;
pub mod read;
pub mod source;
#[cfg(test)]
mod tests;
/// Fixtures (descriptors as the C agent writes them) for tests and the fuzz seeds.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testutil;

use thiserror::Error;

use crate::model::backend::BackendError;
use crate::model::mem::MemError;

pub use read::Descriptor;
pub use source::{AgentView, Disagreement, InFlight, OneSided};

/// Why the agent's descriptor cannot be used.
#[derive(Debug, Error)]
pub enum AgentError {
    /// No descriptor where one was looked for (no agent, or it unloaded).
    #[error("no agent descriptor: {0}")]
    Absent(String),
    /// A descriptor of a version this vsplice does not read.
    #[error("agent descriptor version {found} is not supported (this vsplice reads version {supported})")]
    Version {
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// The agent was caught updating its table: retry after the guest ran.
    #[error("agent table is being updated (sequence {seq} is odd); retry after the guest ran")]
    Busy {
        /// The odd sequence value.
        seq: u64,
    },
    /// The agent is still filling its table after loading: retry.
    #[error("agent is still filling its table; retry after the guest ran")]
    Loading,
    /// The descriptor fails its checks (checksum, sizes, addresses).
    #[error("agent descriptor is corrupt: {0}")]
    Corrupt(String),
    /// The agent could not record every task.
    #[error("agent table overflowed ({dropped} tasks not recorded); it cannot be trusted")]
    Overflow {
        /// Tasks not recorded.
        dropped: u32,
    },
    /// The agent's view and the agentless walk disagree.
    #[error("agent and agentless views disagree: {0}")]
    Mismatch(Disagreement),
    /// Reading kernel-virtual memory failed.
    #[error("reading the agent descriptor failed")]
    Memory(#[from] #[source] MemError),
    /// Reading guest-physical memory failed.
    #[error("reading the agent descriptor failed")]
    Backend(#[from] #[source] BackendError),
}

impl AgentError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Absent(_) => "agent_absent",
            Self::Version { .. } => "agent_version",
            Self::Busy { .. } => "agent_busy",
            Self::Loading => "agent_loading",
            Self::Corrupt(_) => "agent_corrupt",
            Self::Overflow { .. } => "agent_overflow",
            Self::Mismatch(_) => "agent_mismatch",
            Self::Memory(e) => e.cause(),
            Self::Backend(e) => e.cause(),
        }
    }

    /// True when letting the guest run and reading again may succeed.
    pub fn is_retry(&self) -> bool {
        matches!(self, Self::Busy { .. } | Self::Loading)
    }
}
