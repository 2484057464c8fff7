//! `vsplice attach`: a daemon that attaches once to a guest another VMM
//! runs (QEMU with `-gdb`), identifies its kernel once, lets it run, and
//! serves the same HTTP API as `vsplice run --api-sock` on a Unix socket
//! (`vsplice remote` talks to either).
//!
//! Exit codes: 0 after SIGTERM/SIGINT (detached, the guest running on,
//! or kept stopped while a transaction is half-written); 1 when it cannot
//! attach or create the socket; 2 when the gdbstub connection dies
//! (`gdbstub_gone`: QEMU exited). A second SIGTERM/SIGINT while it ends
//! kills it at once (exit 130), as SIGKILL would: a guest stopped for a
//! request at that moment stays stopped (QEMU keeps it so) until a vsplice
//! attaches again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM};
use vsplice_patcher::gdb::GdbError;
use vsplice_patcher::shm::{StopVia, WriteRoute};

use super::fault_injection::{gdb, gdb_mut, into_gdb, Attached};
use super::patch::AttachArgs;
use super::run::EXIT_BAD_INPUT;
use super::session::{self, Session};
use crate::api::attached::{AttachedService, AttachedVm, Attachment};
use crate::api::pending_store::PendingStore;
use crate::api::state::SharedMemoryInfo;

/// Exit code when the gdbstub connection died under the daemon (as `vsplice
/// run`'s code for a guest that ended badly).
pub const EXIT_GUEST_GONE: u8 = 2;

/// Exit code of a second signal while the daemon ends (128 + SIGINT).
const EXIT_FORCED: i32 = 130;

/// How a half-written transaction is finished through the daemon on `sock`.
fn recover_hint(sock: &std::path::Path) -> String {
    format!("`vsplice remote --api-sock {} patch recover` (or the next apply/revert), or `vsplice patch status --recover` once this daemon is gone,", sock.display())
}

/// `vsplice attach`.
#[derive(Debug, Args)]
pub struct AttachDaemonArgs {
    /// Where the guest is, what it runs, the arena, the check and the task
    /// source (the same flags as `vsplice patch apply`; `--check` and
    /// `--tasks` apply to every request; `--check` can be overridden per
    /// apply through the API).
    #[command(flatten)]
    pub guest: AttachArgs,
    /// The API socket to create (mode 0600; a live socket there is refused,
    /// a stale one replaced; removed when the daemon ends).
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    /// Who may patch through the API.
    #[command(flatten)]
    pub trust: super::sign::TrustArgs,
    /// Keep the patches that wait for their module (`when_loaded`) in DIR
    /// (created when missing), so that a daemon started again with the same
    /// DIR holds them again without their being sent anew: each goes
    /// through the trust policy again and is applied at once if its module
    /// loaded meanwhile. Without it they live in this daemon's memory only.
    #[arg(long, value_name = "DIR")]
    pub pending_dir: Option<PathBuf>,
    /// Registering as a fleet target (`--register`, `--label`).
    #[command(flatten)]
    pub register: super::register_args::RegisterArgs,
}

impl Attachment for Attached {
    fn running(&self) -> bool {
        gdb(self).is_running()
    }

    fn check_alive(&mut self) -> Result<(), GdbError> {
        gdb_mut(self).check_alive()
    }

    fn sync_breakpoints(&mut self, want: &std::collections::BTreeSet<u64>) -> Result<(), GdbError> {
        gdb_mut(self).sync_breakpoints(want)
    }

    fn own_stop(&mut self) -> Result<Option<vsplice_patcher::gdb::OwnStop>, GdbError> {
        gdb_mut(self).own_stop()
    }

    fn clear_stray(&mut self, rips: &[u64]) -> Vec<u64> {
        gdb_mut(self).clear_stray(rips)
    }

    fn step_over(&mut self, index: usize, addr: u64) -> Result<(), GdbError> {
        gdb_mut(self).step_over(index, addr)
    }
}

fn signals() -> Result<Arc<AtomicBool>, std::io::Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        // The second signal (the flag already set) exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, EXIT_FORCED, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

fn ready_line(args: &AttachDaemonArgs, vm: &AttachedVm, kept_stopped: bool) -> String {
    let k = &vm.kernel;
    format!(
        "vsplice: attached to {}: {} {} (build-id {}, KASLR slide {}), {} vCPU(s), arena {}; guest {}; API on {}",
        args.guest.gdb,
        k.kind,
        k.release.as_deref().unwrap_or("-"),
        k.build_id.as_deref().unwrap_or("-"),
        k.kaslr_slide.as_deref().unwrap_or("-"),
        vm.vcpus,
        vm.arena,
        if kept_stopped { "kept stopped (half-written transaction)" } else { "running" },
        args.api_sock.display()
    )
}

/// Runs `vsplice attach`.
pub fn run(args: AttachDaemonArgs) -> ExitCode {
    let stop = match signals() {
        Ok(s) => s,
        Err(e) => {
            super::report(&e, "signals");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    // Bad keys are refused before attaching.
    let trust = match args.trust.policy() {
        Ok(t) => t,
        Err(code) => return code,
    };
    // Bad labels or store are refused before attaching.
    let registration = match args.register.prepare(Some(&args.api_sock)) {
        Ok(r) => r,
        Err(e) => {
            super::report(&e, e.cause());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let store = match args.pending_dir.as_deref().map(PendingStore::open).transpose() {
        Ok(s) => s,
        Err(e) => {
            super::report(&e, e.cause());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let Session { target, mut backend, kept_stopped } = match session::open(&args.guest) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let arena = args.guest.arena;
    let hint = recover_hint(&args.api_sock);
    if let Err(why) = session::arena_free(&*target, &mut backend, arena) {
        eprintln!("vsplice: refusing to attach [arena_in_use]: {why}");
        session::end(&*target, backend, arena, &hint);
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let vcpus = gdb(&backend).threads().len();
    let mut vm = AttachedVm::new(&*target, vcpus, arena, args.guest.check);
    vm.incremental = args.guest.incremental;
    if let Some(p) = gdb(&backend).shared() {
        vm.shared = Some(SharedMemoryInfo {
            mem_path: p.path().display().to_string(),
            stop_via: match p.stop_via() {
                StopVia::Gdb => "gdb",
                StopVia::Qmp => "qmp",
            },
            writes: match p.write_route() {
                WriteRoute::Stub => "gdbstub",
                WriteRoute::File => "file",
            },
        });
        vm.memory_mib = Some(p.layout().size >> 20);
    }
    let mut service = match AttachedService::start(&args.api_sock, vm.clone()) {
        Ok(mut s) => {
            s.set_trust(trust);
            if let Some(store) = store {
                s.set_pending_store(store);
            }
            s
        }
        Err(e) => {
            super::report(&e, e.cause());
            session::end(&*target, backend, arena, &hint);
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    if kept_stopped {
        eprintln!("vsplice: the guest stays stopped: an interrupted transaction is half-written; {hint} completes or rolls it back");
    }
    eprintln!("{}", ready_line(&args, &vm, kept_stopped));
    let registrar = registration.map(|r| {
        let kernel = vm.kernel.clone();
        r.start(move || Some(kernel.clone()))
    });
    let ended = service.run(&mut backend, &*target, &stop);
    drop(registrar);
    if let Some(pending) = service.finish() {
        eprintln!("vsplice: {pending}");
    }
    match ended {
        Ok(()) => {
            let stopped = session::end(&*target, backend, arena, &hint);
            eprintln!("vsplice: detached; the guest {}", if stopped { "stays stopped" } else { "runs on" });
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Nothing to detach from: the connection is gone.
            drop(into_gdb(backend).keep_stopped());
            super::report(&e, e.cause());
            ExitCode::from(EXIT_GUEST_GONE)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;
    use vsplice_patcher::model::{CheckMode, TargetKind};
    use vsplice_patcher::os::linux::view::TaskSource;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<AttachDaemonArgs, clap::Error> {
        let argv = [&["vsplice", "attach", "--gdb", "127.0.0.1:1234", "--arena", "0x3f000000:4M"][..], args].concat();
        match Cli::try_parse_from(argv)?.command {
            Command::Attach(a) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_flags_of_vsplice_patch_plus_the_socket() {
        let a = parse(&["--target", "linux", "--api-sock", "/run/v.sock", "--check", "conservative", "--tasks", "agentless", "--timeout-ms", "500"]).unwrap();
        assert_eq!((a.guest.target, a.guest.check, a.guest.tasks, a.guest.timeout_ms), (TargetKind::Linux, CheckMode::Conservative, TaskSource::Agentless, 500));
        assert_eq!(a.api_sock, PathBuf::from("/run/v.sock"));
        assert_eq!(a.guest.arena.range(), 0x3f00_0000..0x3f40_0000);
        let no_sock = parse(&["--target", "linux"]).unwrap_err();
        assert_eq!(no_sock.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let no_image = parse(&["--target", "testguest", "--api-sock", "s"]).unwrap_err();
        assert_eq!(no_image.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn help_explains_every_flag() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let attach = cmd.find_subcommand_mut("attach").unwrap();
        for arg in attach.get_arguments() {
            let id = arg.get_id().as_str();
            assert!(arg.get_help().is_some() || arg.get_long_help().is_some(), "--{id} has no help");
        }
        let help = attach.render_long_help().to_string();
        for flag in ["--gdb", "--arena", "--api-sock", "--target", "--kernel", "--check", "--tasks", "--timeout-ms", "--trusted-keys", "--allow-unsigned", "--pending-dir"] {
            assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
        }
    }
}
