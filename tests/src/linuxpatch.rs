//! Helpers for live-patch tests on stock Debian kernels under QEMU: the
//! example patches (`examples/patches/linux/`) built with Kbuild against the
//! flavour's headers, and an attached patcher (QEMU's gdbstub, the guest
//! running between short stops, the harness's `memmap=` arena).

use std::path::PathBuf;
use std::time::Duration;

use vsplice_patcher::attach::attach_gdb_shm;
use vsplice_patcher::shm::StopVia;
use vsplice_patcher::model::backend::Backend;
use vsplice_patcher::gdb::{GdbBackend, GdbOptions};
use vsplice_patcher::patch::build::{build_patch_with, BuildError, BuildOptions};
use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_patcher::patch::PatchFile;
use vsplice_patcher::arch::x86::guest::AutoStop;
use vsplice_patcher::kernels::stock_linux::LinuxTarget;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::ArenaRange;
use vsplice_patcher::txn::{Patcher, TxnConfig};

use crate::debian::{debian_images, DebianImages, Flavour};
use crate::qemu::{Guest, QemuConfig};
use crate::skip::skip;
use crate::testguest::workspace_root;

/// The flavour's QEMU configuration for a test that builds Linux patches:
/// `None` after a loud skip when the images, the Kbuild headers or QEMU are
/// missing.
pub fn config_with_headers(flavour: Flavour, label: &str) -> Option<QemuConfig> {
    let cfg = QemuConfig::debian_or_skip(flavour, label)?;
    match debian_images(flavour) {
        Ok(img) if img.headers.join("Makefile").is_file() => Some(cfg),
        _ => {
            skip(label, "no Kbuild headers for the Debian kernel (run images/debian-kernels.sh)");
            None
        }
    }
}

/// Boots a Debian guest without the vsplice agent: for tests of the
/// agentless path (nothing of vsplice inside the guest). `None` after a loud
/// skip when the images, the Kbuild headers or QEMU are missing.
pub fn boot_agentless(flavour: Flavour, label: &str) -> Option<Guest> {
    let mut cfg = config_with_headers(flavour, label)?;
    cfg.extra_append.push("vsplice.agent=0".into());
    Guest::boot_or_skip(cfg)
}

/// Boots a Debian guest with the vsplice agent loaded (the initramfs loads
/// it) and checks that it is: `None` after a loud skip when the images, the
/// Kbuild headers or QEMU are missing; an error when the agent is not there.
pub fn boot_with_agent(flavour: Flavour, label: &str) -> Option<Result<Guest, String>> {
    let cfg = config_with_headers(flavour, label)?;
    let mut g = Guest::boot_or_skip(cfg)?;
    Some(match g.run_ok("grep -q '^vsplice_agent ' /proc/modules && echo loaded") {
        Ok(out) if out.trim_end() == "loaded" => Ok(g),
        Ok(out) => Err(format!("the vsplice agent is not loaded: {out:?}")),
        Err(e) => Err(format!("asking for the vsplice agent: {e}")),
    })
}

/// `examples/patches/linux/<name>`.
pub fn example(name: &str) -> PathBuf {
    workspace_root().join("examples/patches/linux").join(name)
}

/// Builds a patch from `src` against the flavour's image and headers.
pub fn build(img: &DebianImages, image: &LinuxImage, src: &std::path::Path) -> Result<PatchFile, BuildError> {
    build_patch_with(&BuildOptions::linux(&img.vmlinuz, &img.headers, src), image)
}

/// A patch of two functions (`cmdline_proc_show`: ` two` after the command
/// line; `execdomains_proc_show`: `two`), so that a death between its two
/// jump writes leaves a half-written text.
pub const TWO_SITES: &str = r#"
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/printk.h>
#include <linux/seq_file.h>
#include <linux/utsname.h>
#include "vsplice.h"

static int cmdline_two(struct seq_file *m, void *v)
{
	seq_puts(m, saved_command_line);
	seq_puts(m, " two\n");
	return 0;
}
VSPLICE_REPLACE(cmdline_proc_show, cmdline_two);

static int execdomains_two(struct seq_file *m, void *v)
{
	seq_puts(m, "two\n");
	return 0;
}
VSPLICE_REPLACE(execdomains_proc_show, execdomains_two);
"#;

/// Builds the example `name` with `vsplice patch build --target linux`, as
/// a user would, into `dir/<stem>.vsp`; `Err` with its stderr when it fails.
pub fn cli_build_example(img: &DebianImages, name: &str, dir: &std::path::Path) -> Result<PathBuf, String> {
    let src = example(name);
    let stem = src.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| name.to_owned());
    let vsp = dir.join(format!("{stem}.vsp"));
    let (kernel, headers) = (img.vmlinuz.to_string_lossy(), img.headers.to_string_lossy());
    let (out, source) = (vsp.to_string_lossy(), src.to_string_lossy());
    let o = crate::cli::vsplice(&["patch", "build", "--target", "linux", "--kernel", &kernel, "--headers", &headers, "-o", &out, &source]);
    if o.status.success() {
        Ok(vsp)
    } else {
        Err(crate::cli::text(&o.stderr))
    }
}

/// Builds a patch from C text (written to a temporary file).
pub fn build_text(img: &DebianImages, image: &LinuxImage, name: &str, c: &str, link_check: bool) -> Result<PatchFile, BuildError> {
    let dir = crate::scratch::tmp("linux-patch-src");
    std::fs::create_dir_all(&dir).map_err(|source| BuildError::Io { what: "tmp".into(), source })?;
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, c).map_err(|source| BuildError::Io { what: "write".into(), source })?;
    let mut opts = BuildOptions::linux(&img.vmlinuz, &img.headers, &src);
    opts.link_check = link_check;
    build_patch_with(&opts, image)
}

/// The backend the patcher uses in attached mode.
pub type Attached = AutoStop<GdbBackend>;

/// Attaches to the guest's gdbstub (and its RAM file when it was started
/// with shared RAM: the shared-memory backend), identifies its kernel, and
/// lets it run.
pub fn attach(g: &Guest) -> Result<(Attached, LinuxTarget), String> {
    attach_via(g, StopVia::Gdb)
}

/// [`attach`] with stops made as `stop_via` says (shared RAM only).
pub fn attach_via(g: &Guest, stop_via: StopVia) -> Result<(Attached, LinuxTarget), String> {
    attach_with(g, g.shared_ram().map(|r| r.spec(stop_via)))
}

/// [`attach`] through the gdbstub alone, even when the guest has shared RAM
/// (the two backends measured on the same guest).
pub fn attach_stub_only(g: &Guest) -> Result<(Attached, LinuxTarget), String> {
    attach_with(g, None)
}

fn attach_with(g: &Guest, shm: Option<vsplice_patcher::shm::ShmSpec>) -> Result<(Attached, LinuxTarget), String> {
    let addr = g.gdb_addr().ok_or("the guest has no gdbstub")?;
    let opts = GdbOptions { timeout: Duration::from_secs(20), ..GdbOptions::default() };
    let (mut be, vcpus) = attach_gdb_shm(addr, opts, shm.as_ref()).map_err(|e| format!("attach: {e} ({})", e.cause()))?;
    let target = LinuxTarget::open(&mut be, vcpus).map_err(|e| format!("identify: {e} ({})", e.cause()))?;
    let mut be = AutoStop(be);
    be.resume().map_err(|e| format!("resume: {e}"))?;
    Ok((be, target))
}

/// Detaches from the gdbstub (the guest runs on; another client may attach).
pub fn detach(be: Attached) -> Result<(), String> {
    be.0.detach().map_err(|e| format!("detach: {e}"))
}

/// `--gdb ADDR`, plus `--mem-path FILE --qmp SOCK` when the guest has
/// shared RAM: how the CLI attaches to it.
pub fn gdb_args(g: &Guest) -> Vec<String> {
    let mut a = vec!["--gdb".to_string(), g.gdb_addr().unwrap_or_default().to_string()];
    if let Some(r) = g.shared_ram() {
        a.extend(r.cli_args());
    }
    a
}

/// The harness's arena as the CLI's `--arena START:SIZE`.
pub fn arena_arg(g: &Guest) -> String {
    let a = g.arena().map(|a| (a.base, a.size)).unwrap_or((0, 0));
    format!("{:#x}:{}", a.0, a.1)
}

/// A patcher on the attached guest with the harness's arena (the guest must
/// have been booted with one).
pub fn patcher<'t, 'b>(g: &Guest, be: &'b mut Attached, target: &'t LinuxTarget) -> Patcher<'t, &'b mut Attached> {
    let arena = match g.arena().map(|a| ArenaRange::new(a.base, a.size)) {
        Some(Ok(a)) => a,
        Some(Err(e)) => panic!("the guest's reserved arena cannot be used: {e}"),
        None => panic!("the guest was booted without an arena (QemuConfig::arena)"),
    };
    Patcher::new(be, target as &dyn TargetKernel, TxnConfig::new(arena))
}
