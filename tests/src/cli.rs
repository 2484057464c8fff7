//! The `vsplice` binary as a user runs it: where the build put it, one run
//! with its output collected (optionally killed by its fault hook part-way
//! through), and that output as text.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::testguest::workspace_root;

/// Path of the built `vsplice` binary of the same profile and target
/// directory as the tests (`CARGO_TARGET_DIR` included): the test executable
/// is `<target>/<profile>/deps/<test>-<hash>`, the binary `<target>/<profile>/vsplice`.
pub fn vsplice_bin() -> PathBuf {
    let profile_dir = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()));
    profile_dir
        .unwrap_or_else(|| {
            let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
            workspace_root().join("target").join(profile)
        })
        .join("vsplice")
}

/// `vsplice remote --api-sock SOCK args…` with an empty stdin, to run or spawn.
pub fn remote_command(sock: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(vsplice_bin());
    cmd.arg("remote").arg("--api-sock").arg(sock).args(args).stdin(Stdio::null());
    cmd
}

/// The `vsplice` binary, checked to be built with the `fault-injection`
/// feature (its `--version` says so), which the tests that kill it midway
/// through `VSPLICE_FAULT_KILL_AFTER_WRITES` need; panics otherwise, since
/// such a test would otherwise never see a kill.
pub fn vsplice_bin_with_fault_injection() -> PathBuf {
    let bin = vsplice_bin();
    let version = Command::new(&bin).arg("--version").output();
    let version = match &version {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => panic!("{} does not run ({e}): run `cargo build --release -p vsplice-vmm --features fault-injection` first", bin.display()),
    };
    assert!(
        version.contains("(fault-injection)"),
        "{} was built without the fault-injection feature (`--version`: {}): run `cargo build --release -p vsplice-vmm --features fault-injection`",
        bin.display(),
        version.trim()
    );
    bin
}

/// Runs `vsplice args` (empty stdin) to its end.
pub fn vsplice(args: &[&str]) -> Output {
    vsplice_killed_after(args, None)
}

/// Runs `vsplice args` (empty stdin) to its end; with `Some(n)` it SIGKILLs
/// itself instead of its `n+1`-th guest-memory write
/// (`VSPLICE_FAULT_KILL_AFTER_WRITES`).
pub fn vsplice_killed_after(args: &[&str], writes: Option<usize>) -> Output {
    let bin = if writes.is_some() { vsplice_bin_with_fault_injection() } else { vsplice_bin() };
    assert!(bin.is_file(), "{} missing: run `cargo build --release -p vsplice-vmm` first", bin.display());
    let mut cmd = Command::new(&bin);
    cmd.args(args).stdin(Stdio::null());
    if let Some(n) = writes {
        cmd.env("VSPLICE_FAULT_KILL_AFTER_WRITES", n.to_string());
    }
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("{} does not run: {e}", bin.display()),
    }
}

/// Output bytes as text (invalid UTF-8 replaced).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
