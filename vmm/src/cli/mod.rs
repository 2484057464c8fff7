//! The `vsplice` command line: one subcommand per file.

pub mod attach;
mod attach_args;
mod fault_injection;
pub mod fleet;
pub mod inspect;
pub mod patch;
mod patch_build;
pub mod register_args;
pub mod remote;
pub mod run;
pub mod run_config;
mod session;
pub mod sign;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use vsplice_patcher::model::chain;

/// `vsplice --version`: a build with the test-only `fault-injection` feature says so.
const VERSION: &str = if cfg!(feature = "fault-injection") {
    concat!(env!("CARGO_PKG_VERSION"), " (fault-injection)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// vsplice: a KVM VMM that live-patches the Linux kernel of its guest from the hypervisor side.
#[derive(Debug, Parser)]
#[command(name = "vsplice", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// Log filter for diagnostics on stderr (e.g. `info`, `vsplice_vmm=debug`); also VSPLICE_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// vsplice subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest under the vsplice VMM and run it until it powers off.
    Run(run::RunArgs),
    /// Build live patches; apply, revert, list them on a guest behind a gdbstub.
    #[command(subcommand)]
    Patch(patch::PatchCommand),
    /// Look at a live guest kernel over a gdbstub, or at a kernel image file:
    /// version, build-id, KASLR slide, symbols, tasks, BTF structures.
    Inspect(vsplice_patcher::inspect::InspectArgs),
    /// Talk to a `vsplice run --api-sock` VMM or a `vsplice attach` daemon: the VM, its patches, metrics, events.
    Remote(remote::RemoteArgs),
    /// Attach once to a guest behind a gdbstub (QEMU `-gdb`), identify its
    /// kernel once, let it run, and serve the HTTP API of `vsplice run
    /// --api-sock` on a Unix socket until SIGTERM/SIGINT or until the
    /// gdbstub goes.
    Attach(attach::AttachDaemonArgs),
    /// Roll a live patch out across many guests through their API sockets:
    /// canary, waves, health gates, automatic revert, a durable journal.
    Fleet(fleet::FleetArgs),
}

fn init_logging(filter: Option<&str>) {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("VSPLICE_LOG").ok())
        .unwrap_or_else(|| "warn".to_owned());
    let env_filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(env_filter).with_writer(std::io::stderr).try_init();
}

/// Prints an error and its `#[source]` chain on one line:
/// `vsplice: error [cause]: error: source: …`.
pub fn report(err: &dyn std::error::Error, cause: &str) {
    eprintln!("vsplice: error [{cause}]: {}", chain(err));
}

/// What a command-line error exits with: `--help` and `--version` 0, a
/// usage error (unknown flag, bad value, missing argument) 1 like every
/// other bad input — never clap's own 2, which `vsplice run` keeps for a
/// guest that crashed and `vsplice attach` for a guest that went away.
pub fn usage_exit_code(e: &clap::Error) -> u8 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
        _ => run::EXIT_BAD_INPUT,
    }
}

fn usage_error(e: &clap::Error) -> ExitCode {
    // clap prints help and version on stdout, errors on stderr.
    if let Err(io) = e.print() {
        eprintln!("vsplice: error [usage]: {e} ({io})");
    }
    ExitCode::from(usage_exit_code(e))
}

/// Entry point of the `vsplice` binary.
pub fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(&e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return usage_error(&e.format(&mut Cli::command())),
    };
    init_logging(cli.log.as_deref());
    match cli.command {
        Command::Run(args) => match matches.subcommand_matches("run").map(|m| run_config::resolve(args, m)) {
            Some(Ok(args)) => run::run(args),
            Some(Err(e)) => {
                report(&e, e.cause());
                ExitCode::from(run::EXIT_BAD_INPUT)
            }
            None => {
                eprintln!("vsplice: error [unexpected]: the run arguments are missing");
                ExitCode::from(run::EXIT_BAD_INPUT)
            }
        },
        Command::Patch(cmd) => patch::run(cmd),
        Command::Inspect(args) => inspect::run(args),
        Command::Remote(args) => remote::run(args),
        Command::Attach(args) => attach::run(args),
        Command::Fleet(args) => fleet::run(args),
    }
}

#[cfg(test)]
mod exit_code_tests {
    #![allow(clippy::unwrap_used)]
    use clap::CommandFactory;

    use super::{usage_exit_code, Cli};

    fn code(args: &[&str]) -> u8 {
        usage_exit_code(&Cli::command().try_get_matches_from(args).unwrap_err())
    }

    /// Usage errors exit 1 (2 is a crashed guest); help and version 0.
    #[test]
    fn usage_errors_exit_1_help_and_version_0() {
        assert_eq!(code(&["vsplice", "run", "--bogus"]), 1);
        assert_eq!(code(&["vsplice", "patch", "status", "--gdb", "x:1", "--arena", "2"]), 1);
        assert_eq!(code(&["vsplice"]), 1);
        assert_eq!(code(&["vsplice", "--help"]), 0);
        assert_eq!(code(&["vsplice", "run", "--help"]), 0);
        assert_eq!(code(&["vsplice", "--version"]), 0);
    }
}
