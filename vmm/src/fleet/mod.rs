//! `vsplice fleet`: roll a live patch out across many guests through their
//! control-plane API sockets (`vsplice run --api-sock`, `vsplice attach
//! --api-sock`), with a canary, waves, health gates, automatic revert and a
//! durable journal. The controller talks to targets only through the API
//! ([`crate::api::client`]); each target's own registry (`GET /patches`) is
//! the truth the journal is reconciled with on `resume`.
//!
//! One concern per file:
//! - [`inventory`]: the targets (API sockets with labels, from a file or
//!   from the store the VMMs registered in, [`crate::store`]);
//! - [`plan`]: the plan file and the rollout it makes (which patch for
//!   which target, the canary, the waves);
//! - [`plan_format`]: JSON or TOML, chosen by the plan file's name;
//! - [`target`]: the API calls the controller makes to one target;
//! - [`gates`]: the health gates after a target is patched;
//! - `history`: what the journal says of one target so far;
//! - [`journal`]: the durable journal (one redb file, or etcd);
//! - [`etcd`]: etcd's v3 JSON gateway, the lock and its lease;
//! - [`engine`]: the rollout engine (start, resume, halt, rollback);
//! - [`dispatch`]: the worker pool of a wave (parallelism, per host);
//! - [`metrics`]: Prometheus text and the status table of a rollout.

pub mod dispatch;
pub mod engine;
pub mod etcd;
pub mod gates;
mod history;
pub mod inventory;
pub mod journal;
pub mod metrics;
pub mod plan;
pub mod plan_format;
pub mod target;

use std::path::PathBuf;

use thiserror::Error;

/// Why a fleet command could not do its work (a target's refusal is not an
/// error: it is a result in the journal).
#[derive(Debug, Error)]
pub enum FleetError {
    /// A file (inventory, plan, patch) cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The inventory or plan is not what it should be.
    #[error("{what}: {why}")]
    Invalid {
        /// Which file or field.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// A patch is unsigned (and the plan does not say `allow_unsigned = true`)
    /// or its signature does not verify against the plan's keys.
    #[error("patch {path} is refused: {why}")]
    Untrusted {
        /// The patch file.
        path: PathBuf,
        /// The signing check's cause: `unsigned`, `bad_signature`, `untrusted_key`.
        cause: &'static str,
        /// Why.
        why: String,
    },
    /// The journal cannot be opened, read or written.
    #[error("journal {path}: {why}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// `start` on a journal that already holds a rollout.
    #[error("journal {0} already holds a rollout: use `vsplice fleet resume` or another --journal")]
    JournalExists(PathBuf),
    /// A command that needs a rollout on a journal with none.
    #[error("journal {0} holds no rollout: `vsplice fleet start` first")]
    NoRollout(PathBuf),
    /// The registration store an inventory is read from did not answer.
    #[error("inventory store: {why}")]
    Store {
        /// The store's cause (`store_unreachable`, `store_io`, …).
        cause: &'static str,
        /// What failed.
        why: String,
    },
    /// Another controller holds the journal.
    #[error("journal {0} is held by a running controller")]
    Busy(PathBuf),
}

impl FleetError {
    /// Stable cause.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Read { .. } => "fleet_file_unreadable",
            Self::Invalid { .. } => "fleet_invalid",
            Self::Untrusted { cause, .. } => cause,
            Self::Journal { .. } => "journal_failed",
            Self::JournalExists(_) => "journal_exists",
            Self::NoRollout(_) => "no_rollout",
            Self::Store { cause, .. } => cause,
            Self::Busy(_) => "journal_busy",
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        Self::Invalid { what: what.into(), why: why.into() }
    }
}

/// Largest inventory or plan file read.
pub const MAX_CONFIG_FILE: u64 = 4 << 20;

/// Reads a small configuration file (bounded; regular files only).
pub(crate) fn read_config(path: &std::path::Path) -> Result<Vec<u8>, FleetError> {
    use std::io::Read;
    let rerr = |source| FleetError::Read { path: path.to_owned(), source };
    let f = std::fs::File::open(path).map_err(rerr)?;
    if !f.metadata().map_err(rerr)?.is_file() {
        return Err(FleetError::invalid(path.display().to_string(), "not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(MAX_CONFIG_FILE + 1).read_to_end(&mut buf).map_err(rerr)?;
    if buf.len() as u64 > MAX_CONFIG_FILE {
        return Err(FleetError::invalid(path.display().to_string(), format!("larger than {MAX_CONFIG_FILE} bytes")));
    }
    Ok(buf)
}

/// Milliseconds since the Unix epoch (journal times).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
