//! Errors of the shared-memory plane, each with a stable cause name.

use thiserror::Error;

/// Why the guest's RAM file could not be used (or a QMP request failed).
#[derive(Debug, Error)]
pub enum ShmError {
    /// Connecting to, or talking with, QEMU's QMP socket failed.
    #[error("QMP at {addr}: {what}")]
    Qmp {
        /// The socket path.
        addr: String,
        /// What went wrong.
        what: String,
        /// The socket error, when there was one.
        #[source]
        source: Option<std::io::Error>,
    },
    /// QEMU answered a command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    QmpCommand {
        /// The command.
        command: String,
        /// QMP's error class.
        class: String,
        /// QMP's description.
        desc: String,
    },
    /// QEMU's memory map could not be understood, or is one vsplice does
    /// not support (no RAM of the backend, several memory backends, …).
    #[error("guest RAM layout: {0}")]
    Layout(String),
    /// Opening or mapping the RAM file failed.
    #[error("cannot map the RAM file {path}")]
    File {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file's size is not the size of the guest's memory backend.
    #[error("the RAM file {path} has {file} bytes; QEMU's memory backend {id:?} has {backend}")]
    SizeMismatch {
        /// The file.
        path: String,
        /// Its size.
        file: u64,
        /// The backend's id.
        id: String,
        /// The backend's size, from QMP.
        backend: u64,
    },
    /// Bytes read through the file differ from the same bytes read through
    /// the gdbstub: the file is not this guest's RAM (another guest's file,
    /// a copy, zeros) or QMP belongs to another QEMU.
    #[error("the RAM file is not this guest's memory: {0}")]
    NotThisGuest(String),
    /// The gdbstub's view gave nothing to compare against (every sampled
    /// page is zero), so the file cannot be checked and is not used.
    #[error("the RAM file cannot be checked against the gdbstub: {0}")]
    Unverifiable(String),
}

impl ShmError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Qmp { .. } => "shm_qmp",
            Self::QmpCommand { .. } => "shm_qmp_command",
            Self::Layout(_) => "shm_layout",
            Self::File { .. } => "shm_file",
            Self::SizeMismatch { .. } => "shm_size_mismatch",
            Self::NotThisGuest(_) => "shm_not_this_guest",
            Self::Unverifiable(_) => "shm_unverifiable",
        }
    }
}
