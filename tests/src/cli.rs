//! The `vsplice` binary as a user runs it: where the build put it, one run
//! with its output collected (optionally killed by its fault hook part-way
//! through), and that output as text.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::testguest::workspace_root;

/// Path of the built `vsplice` binary of the same profile as the tests: in
/// `$CARGO_TARGET_DIR` when that is set (a relative one taken from the
/// workspace root), else in the workspace's `target/`.
pub fn vsplice_bin() -> PathBuf {
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), |d| workspace_root().join(d));
    target.join(profile).join("vsplice")
}

/// Runs `vsplice args` (empty stdin) to its end.
pub fn vsplice(args: &[&str]) -> Output {
    vsplice_killed_after(args, None)
}

/// Runs `vsplice args` (empty stdin) to its end; with `Some(n)` it SIGKILLs
/// itself instead of its `n+1`-th guest-memory write
/// (`VSPLICE_FAULT_KILL_AFTER_WRITES`).
pub fn vsplice_killed_after(args: &[&str], writes: Option<usize>) -> Output {
    let bin = vsplice_bin();
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
