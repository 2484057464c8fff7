//! Errors of the QEMU guest harness ([`crate::qemu`]): each says what failed,
//! and for boots and commands carries the end of the guest's console.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// Why the harness could not do what a test asked.
#[derive(Debug, Error)]
pub enum HarnessError {
    /// Guest images are not there.
    #[error("guest images missing: {what}; {hint}")]
    ImagesMissing {
        /// What is missing.
        what: String,
        /// What to run.
        hint: String,
    },
    /// QEMU could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Host-side I/O (temp dir, sockets) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited.
    #[error("QEMU exited ({status}) {when}; stderr: {stderr}\nconsole tail:\n{console_tail}")]
    QemuExited {
        /// Exit status.
        status: String,
        /// During what.
        when: String,
        /// QEMU's stderr.
        stderr: String,
        /// Last console lines.
        console_tail: String,
    },
    /// The guest did not say VSPLREADY in time.
    #[error("guest not ready within {timeout:?}\nconsole tail:\n{console_tail}")]
    BootTimeout {
        /// The time allowed.
        timeout: Duration,
        /// Last console lines.
        console_tail: String,
    },
    /// A command got no complete reply in time.
    #[error("no reply to {cmd:?} within {timeout:?} (got {got} bytes)\nconsole tail:\n{console_tail}")]
    CommandTimeout {
        /// The command.
        cmd: String,
        /// The time allowed.
        timeout: Duration,
        /// Bytes of the reply seen so far.
        got: usize,
        /// Last console lines.
        console_tail: String,
    },
    /// A command ran but exited non-zero (from `run_ok`).
    #[error("{cmd:?} exited with {status}; output:\n{output}")]
    CommandFailed {
        /// The command.
        cmd: String,
        /// Its exit status.
        status: i32,
        /// Its output (truncated).
        output: String,
    },
    /// The channel said something the protocol does not allow.
    #[error("command protocol: {0}")]
    Protocol(String),
    /// The harness was asked for something this guest does not have.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The console shows kernel trouble.
    #[error("guest console shows trouble:\n{}", lines.join("\n"))]
    ConsoleProblems {
        /// The offending lines.
        lines: Vec<String>,
    },
    /// A kernel/initrd file named in the configuration is not there.
    #[error("{0} does not exist")]
    NoSuchFile(PathBuf),
}
