//! Helpers for live-patch tests on the test guest: build the example patches,
//! boot a guest, open its target, and read the values its tasks print.

use std::path::PathBuf;
use std::time::Duration;

use vsplice_patcher::patch::build::{build_patch, BuildOptions};
use vsplice_patcher::patch::PatchFile;
use vsplice_patcher::kernels::testguest::TestGuest;
use vsplice_patcher::txn::{Patcher, TxnConfig};
use vsplice_vmm::builder;
use vsplice_vmm::config::{SerialConfig, VmConfig};
use vsplice_vmm::vmm::Vmm;

use crate::testguest::{self, Capture};

/// A replacement of `tg_hold` that spins until `tg_hold_release` is set: a
/// task parked in it keeps the function busy (code_busy tests).
pub const HOLD_PATCH: &str = r#"
#include <vsplice.h>
typedef unsigned long u64;
extern volatile u64 tg_hold_release;
void tg_hold_v2(void)
{
	while (!tg_hold_release)
		__asm__ __volatile__("hlt" ::: "memory");
}
VSPLICE_REPLACE(tg_hold, tg_hold_v2);
"#;

/// `examples/patches/testguest/<name>`.
pub fn example(name: &str) -> PathBuf {
    testguest::workspace_root().join("examples/patches/testguest").join(name)
}

/// Builds an example patch against the test guest image.
pub fn build_example(name: &str) -> PatchFile {
    build_source(&example(name), None)
}

/// Builds a patch from any source against `kernel` (default: the test guest image).
pub fn build_source(src: &std::path::Path, kernel: Option<PathBuf>) -> PatchFile {
    let opts = BuildOptions::testguest(kernel.unwrap_or_else(testguest::image), src);
    match build_patch(&opts) {
        Ok(p) => p,
        Err(e) => panic!("building {} failed: {e} [{}]", src.display(), e.cause()),
    }
}

/// Builds a patch from C text (written to a temporary file), without the build-time link check.
pub fn build_text(name: &str, c: &str, link_check: bool) -> Result<PatchFile, vsplice_patcher::patch::build::BuildError> {
    let dir = crate::scratch::tmp("patch-src");
    std::fs::create_dir_all(&dir).map_err(|source| vsplice_patcher::patch::build::BuildError::Io { what: "tmp".into(), source })?;
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, c).map_err(|source| vsplice_patcher::patch::build::BuildError::Io { what: "write".into(), source })?;
    let mut opts = BuildOptions::testguest(testguest::image(), &src);
    opts.link_check = link_check;
    build_patch(&opts)
}

/// The test guest as a patch target.
pub fn target() -> TestGuest {
    match TestGuest::open(&testguest::image()) {
        Ok(t) => t,
        Err(e) => panic!("test guest image: {e}"),
    }
}

/// Boots the test guest with a serial capture.
pub fn boot(vcpus: usize, cmdline: &str) -> (Vmm, Capture) {
    let out = Capture::default();
    let mut config = VmConfig::new(testguest::image());
    config.vcpus = vcpus;
    config.memory_mib = 128;
    config.cmdline = cmdline.to_owned();
    config.serial = SerialConfig::Writer(Box::new(out.clone()));
    match builder::build(config) {
        Ok(vmm) => (vmm, out),
        Err(e) => panic!("test guest VM does not build: {e}"),
    }
}

/// A patcher on a booted VMM.
pub fn patcher<'t, 'v>(vmm: &'v mut Vmm, target: &'t TestGuest) -> Patcher<'t, &'v mut Vmm> {
    let arena = vmm.arena();
    Patcher::new(vmm, target, TxnConfig::new(arena))
}

/// Waits until the guest printed `TG ready` and every task of every vCPU printed `iters` lines.
pub fn wait_tasks(out: &Capture, vcpus: u64, tasks: u64, iters: u64) {
    let ok = out.wait_for(Duration::from_secs(120), |text| {
        let p = testguest::progress(&testguest::parse_all(text).unwrap_or_default());
        (0..vcpus).all(|c| p.iter().filter(|((cpu, _), it)| *cpu == c && **it >= iters).count() as u64 >= tasks)
    });
    assert!(ok, "tasks did not reach iteration {iters}:\n{}", out.text());
}

/// The unpatched value for an iteration.
pub fn value_orig(iter: u64) -> u64 {
    ((iter * 0x10001 + 0x2a) ^ 0xa5a5) + 0x1000
}

/// The value with `step_b_v2` applied.
pub fn value_step_b_v2(iter: u64) -> u64 {
    ((iter * 0x10001 + 0x2b) ^ 0xa5a5) + 0x1000
}

/// A patch of two functions (`tg_step_b` and `tg_step_a`), so that a death
/// between its two jump writes leaves a half-written text.
pub const TWO_SITES: &str = "#include <vsplice.h>\ntypedef unsigned long u64;\nu64 tg_step_b(u64);\nu64 b2(u64 x) { return x * 0x10001 + 0x2b; }\nu64 a2(u64 x) { return tg_step_b(x) ^ 0xa5a4; }\nVSPLICE_REPLACE(tg_step_b, b2);\nVSPLICE_REPLACE(tg_step_a, a2);\n";

/// The value with [`TWO_SITES`] applied.
pub fn value_two_sites(iter: u64) -> u64 {
    ((iter * 0x10001 + 0x2b) ^ 0xa5a4) + 0x1000
}
