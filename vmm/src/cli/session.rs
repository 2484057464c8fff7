//! One attached gdbstub session, as `vsplice patch` (one command per
//! attach) and `vsplice attach` (a daemon that attaches once) both hold it:
//! connect, stop and identify the kernel, let the guest run (memory
//! accesses then take short stops) unless a dead vsplice left a
//! half-written transaction, and at the end detach — or close without
//! detaching, which leaves the guest stopped, while a transaction is
//! half-written.

use std::process::ExitCode;
use std::time::Duration;

use vsplice_patcher::arch::x86::guest::AutoStop;
use vsplice_patcher::attach::{self, AttachSpec, ResumeGuard};
use vsplice_patcher::gdb::backend::GdbBackend;
use vsplice_patcher::gdb::client::GdbOptions;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::backend::Backend;
use vsplice_patcher::model::ArenaRange;
use vsplice_patcher::txn::recover::TextState;
use vsplice_patcher::txn::{Patcher, Stage, TxnConfig};

use super::fault_injection::{attached, into_gdb, Attached};
use super::patch::AttachArgs;
use super::run::EXIT_BAD_INPUT;

/// An attached guest: its kernel, the backend, and whether it was left
/// stopped because a transaction is half-written.
#[derive(Debug)]
pub struct Session {
    /// The identified kernel.
    pub target: Box<dyn TargetKernel>,
    /// The gdbstub, guarded, with short stops around memory accesses.
    pub backend: Attached,
    /// True when the guest was kept stopped at attach (half-written transaction).
    pub kept_stopped: bool,
}

/// Connects, stops the guest and identifies its kernel (one way for every
/// kind). The backend comes in a [`ResumeGuard`]: every way out of a
/// command from here on (a refusal, an error, a panic) lets the guest run
/// on, except [`end`]'s explicit `keep_stopped` for a half-written
/// transaction.
fn connect(g: &AttachArgs) -> Result<(Box<dyn TargetKernel>, ResumeGuard<GdbBackend>), ExitCode> {
    let opts = GdbOptions { timeout: Duration::from_millis(g.timeout_ms), ..GdbOptions::default() };
    let spec = AttachSpec { gdb: &g.gdb, kind: g.target, image: g.kernel.as_deref(), tasks: g.tasks, opts, shm: g.shm() };
    let a = attach::attach(&spec).map_err(|e| {
        super::report(&e, e.cause());
        ExitCode::from(EXIT_BAD_INPUT)
    })?;
    Ok((a.kernel, a.backend))
}

/// Attaches (errors reported on stderr; the exit code to return).
///
/// QEMU stops the guest when a debugger connects. It runs again here:
/// preparation happens with the guest running, memory accesses take short
/// stops. Except when a dead vsplice left a half-written transaction: then
/// the guest stays stopped until a recovery completes or rolls it back.
pub fn open(g: &AttachArgs) -> Result<Session, ExitCode> {
    let (target, backend) = connect(g)?;
    let mut backend = AutoStop(backend);
    let kept_stopped = half_written(&*target, &mut backend, g.arena);
    if !kept_stopped {
        if let Err(e) = backend.resume() {
            super::report(&e, e.cause());
            return Err(ExitCode::from(EXIT_BAD_INPUT));
        }
    }
    Ok(Session { target, backend: attached(backend), kept_stopped })
}

/// The arena check every transaction makes before its first write, made
/// once more at `vsplice attach` start: `Err` with the refusal's
/// `reason: message` when the arena is not outside the guest's RAM.
pub fn arena_free<B: Backend>(target: &dyn TargetKernel, backend: &mut B, arena: ArenaRange) -> Result<(), String> {
    let mut p = Patcher::new(backend, target, TxnConfig::new(arena));
    p.check_arena(Stage::Prepare).map_err(|f| format!("{}: {}", f.reason.as_deref().unwrap_or("arena_in_use"), f.message))
}

/// True when the guest's registry holds an intent whose writes are partly done.
pub fn half_written<B: Backend>(target: &dyn TargetKernel, backend: &mut B, arena: ArenaRange) -> bool {
    let mut p = Patcher::new(backend, target, TxnConfig::new(arena));
    matches!(p.status(), Ok(s) if s.intent.as_ref().is_some_and(|i| i.text == TextState::Partial))
}

/// Ends the session: detaches (the guest runs on), or, when a transaction
/// is half-written, closes the connection without detaching, which leaves
/// the guest stopped (QEMU keeps it so), and says so with `how_to_recover`.
/// True when the guest was left stopped.
pub fn end(target: &dyn TargetKernel, mut backend: Attached, arena: ArenaRange, how_to_recover: &str) -> bool {
    if half_written(target, &mut backend, arena) {
        eprintln!("vsplice: the guest stays stopped: an interrupted transaction is half-written; {how_to_recover} completes or rolls it back");
        drop(into_gdb(backend).keep_stopped());
        return true;
    }
    if let Err(e) = into_gdb(backend).detach() {
        tracing::warn!(error = %e, "detaching from the gdbstub failed");
    }
    false
}
