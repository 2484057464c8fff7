//! Entries of the Debian fix corpus (`images/debian-fix-source.sh`): where
//! each lives, `patch build --diff` against one, its kernel booted; for the
//! module targets (generic flavour, the fixed file in a module) also the
//! image package's module tree (the `.ko` files the guest loads, unpacked
//! from `dl/linux-image-*.deb` once), an initramfs carrying some of them
//! under `/modules/<sub>/`, a module's functions' entry bytes read live, and
//! the check that each entry now jumps out of the function.

use std::path::{Path, PathBuf};
use std::process::Command;

use vsplice_patcher::arch::x86::guest::Guest as GuestMem;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::mem::KernelMemory;

use crate::linuxpatch;
use crate::qemu::Guest;
use crate::skip::skip;
use crate::testguest::workspace_root;

/// One corpus entry with the module tree of its image.
#[derive(Debug)]
pub struct ModCorpus {
    /// `target/fixsrc/<release>`.
    pub dir: PathBuf,
    /// `uname -r` of its kernel.
    pub release: String,
}

impl ModCorpus {
    /// A file of the entry, as a string.
    pub fn p(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
    /// Its Kbuild headers.
    pub fn headers(&self) -> String {
        self.p(&format!("headers/usr/src/linux-headers-{}", self.release))
    }
    /// `/lib/modules/<release>` of its image package (what `--modules` takes).
    pub fn modules(&self) -> PathBuf {
        self.dir.join("image-modules/lib/modules").join(&self.release)
    }
}

/// The corpus entry `target/fixsrc/<entry>` with `mods` ((directory under
/// `kernel/`, module) pairs) unpacked from its image package; skips (loudly)
/// when the entry or the tools are missing. `recipe` is the command that
/// makes the entry.
pub fn corpus_or_skip(label: &str, entry: &str, recipe: &str, mods: &[(&str, &str)]) -> Option<ModCorpus> {
    let dir = workspace_root().join("target/fixsrc").join(entry);
    if !dir.join(".done").is_file() {
        skip(label, &format!("no Debian fix corpus {entry} (run {recipe})"));
        return None;
    }
    let release = std::fs::read_to_string(dir.join("release")).ok()?.trim().to_owned();
    let c = ModCorpus { dir, release };
    let missing = mods.iter().any(|(d, m)| !c.modules().join("kernel").join(d).join(format!("{m}.ko")).is_file());
    if missing {
        let deb = std::fs::read_dir(c.dir.join("dl")).ok()?.filter_map(Result::ok).map(|e| e.path()).find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("linux-image-")));
        let Some(deb) = deb else {
            skip(label, "no linux-image package in the corpus's dl/");
            return None;
        };
        let out = c.dir.join("image-modules");
        std::fs::create_dir_all(&out).ok()?;
        let members: Vec<String> = mods.iter().map(|(d, m)| format!("./lib/modules/{}/kernel/{d}/{m}.ko", c.release)).collect();
        let script = format!("dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' {}", deb.display(), out.display(), members.join(" "));
        if !Command::new("sh").arg("-c").arg(&script).status().is_ok_and(|s| s.success()) {
            skip(label, "cannot unpack the image package's modules (dpkg-deb and tar needed)");
            return None;
        }
    }
    Some(c)
}

/// The entry's initramfs plus `/modules/<sub>/*.ko` for `mods` (a second
/// gzip'd cpio appended: the kernel unpacks both), written into `dir`.
pub fn initramfs_with(c: &ModCorpus, mods: &[(&str, &str)], sub: &str, dir: &Path) -> Result<PathBuf, String> {
    initramfs_with_files(c, mods, sub, dir, &[])
}

/// [`initramfs_with`] plus `files`: each a path under `modules/` (e.g.
/// `modules/tampered/nfsd.ko`) and its bytes.
pub fn initramfs_with_files(c: &ModCorpus, mods: &[(&str, &str)], sub: &str, dir: &Path, files: &[(&str, &[u8])]) -> Result<PathBuf, String> {
    fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
        move |e| format!("{what}: {e}")
    }
    let stage = dir.join("extra");
    std::fs::create_dir_all(stage.join("modules").join(sub)).map_err(io("staging dir"))?;
    for (d, m) in mods {
        std::fs::copy(c.modules().join("kernel").join(d).join(format!("{m}.ko")), stage.join(format!("modules/{sub}/{m}.ko"))).map_err(io(m))?;
    }
    for (path, bytes) in files {
        if !path.starts_with("modules/") {
            return Err(format!("{path}: extra files go under modules/"));
        }
        let at = stage.join(path);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(io("staging dir"))?;
        }
        std::fs::write(&at, bytes).map_err(io(path))?;
    }
    let extra = dir.join("extra.cpio.gz");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("cd '{}' && find modules | cpio -o -H newc --quiet | gzip -1 > '{}'", stage.display(), extra.display()))
        .status()
        .map_err(io("cpio"))?;
    if !st.success() {
        return Err("cpio of the extra modules failed".into());
    }
    let out = dir.join("initramfs.cpio.gz");
    let mut all = std::fs::read(c.dir.join("initramfs.cpio.gz")).map_err(io("the corpus initramfs"))?;
    all.extend(std::fs::read(&extra).map_err(io("the extra cpio"))?);
    std::fs::write(&out, all).map_err(io("the initramfs"))?;
    Ok(out)
}

/// The guest command that loads `mods` from `/modules/<sub>/` in order.
pub fn insmod_all(mods: &[(&str, &str)], sub: &str) -> String {
    let load: Vec<String> = mods.iter().map(|(_, m)| format!("insmod /modules/{sub}/{m}.ko")).collect();
    format!("set -e; {}", load.join("; "))
}

/// Entry bytes of a function: name, address, first 10 bytes.
pub type Entry = (String, u64, [u8; 10]);

/// The first bytes of `names` in the loaded `module` (its own kallsyms,
/// through the gdbstub); empty when the module is not loaded.
pub fn module_entries(g: &Guest, module: &str, names: &[&str]) -> Result<Vec<Entry>, String> {
    let (mut be, target) = linuxpatch::attach(g)?;
    let mut out = Vec::new();
    let read = {
        let mut mem = GuestMem::new(&mut be, target.page_table_root(), target.paging_mode().cr4_bits());
        let mut read = || -> Result<(), String> {
            let Some(m) = target.module(&mut mem, module).map_err(|e| e.to_string())? else { return Ok(()) };
            for n in names {
                let a = m.symbols.resolve(n, None).map_err(|e| format!("{n}: {e}"))?.addr;
                if !m.holds_text(a, 10) {
                    return Err(format!("{n} at {a:#x} is not in {module}'s text"));
                }
                let mut b = [0u8; 10];
                mem.read(a, &mut b).map_err(|e| format!("{n}: {e}"))?;
                out.push(((*n).to_owned(), a, b));
            }
            Ok(())
        };
        read()
    };
    linuxpatch::detach(be)?;
    read.map(|()| out)
}

/// Asserts each entry now jumps out of its function (after the ftrace NOP
/// when there is one); prints where to.
pub fn assert_jumps(old: &[Entry], new: &[Entry]) {
    for ((n, a, was), (_, _, now)) in old.iter().zip(new) {
        let at = if now[..5] == [0x0f, 0x1f, 0x44, 0x00, 0x00] { 5 } else { 0 };
        assert_eq!(now[at], 0xe9, "{n} has no jump at its entry after apply: {now:02x?}");
        let site = a + at as u64;
        let to = site.wrapping_add(5).wrapping_add(i32::from_le_bytes([now[at + 1], now[at + 2], now[at + 3], now[at + 4]]) as i64 as u64);
        assert!(to < *a || to >= a + 0x1000, "{n} jumps inside itself ({to:#x})");
        eprintln!("  {n} @ {a:#x}: {was:02x?} -> jmp {to:#x}");
    }
}

/// Asserts each entry is back to its bytes before the patch.
pub fn assert_restored(old: &[Entry], back: &[Entry]) {
    for ((n, _, was), (_, _, now)) in old.iter().zip(back) {
        assert_eq!(was, now, "{n} not restored by revert");
    }
}

impl ModCorpus {
    /// `vsplice patch build --diff fix.patch` of this entry into `out`,
    /// with `extra` arguments (e.g. `--modules DIR`) before `-o`.
    pub fn build_fix(&self, out: &Path, extra: &[&str]) -> std::process::Output {
        self.build_diff(&self.dir.join("fix.patch"), out, extra)
    }

    /// `vsplice patch build --diff DIFF` against this entry's source, kernel
    /// and headers into `out`, with `extra` arguments before `-o`.
    pub fn build_diff(&self, diff: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
        self.build_against(diff, &self.dir.join("vmlinuz"), out, extra)
    }

    /// `vsplice patch build --diff DIFF` against this entry's source and
    /// headers but the kernel image `kernel` (e.g. another release's).
    pub fn build_against(&self, diff: &Path, kernel: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
        let (diff, src, kernel, headers) = (diff.to_string_lossy().into_owned(), self.p("src"), kernel.to_string_lossy().into_owned(), self.headers());
        let out = out.to_string_lossy().into_owned();
        let mut args = vec!["patch", "build", "--target", "linux", "--diff", &diff, "--source", &src, "--kernel", &kernel, "--headers", &headers];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", &out]);
        crate::cli::vsplice(&args)
    }

    /// This entry's kernel booted under QEMU with `initrd`, the agent not
    /// loaded; `None` (skipped loudly) when QEMU cannot run. Panics when the
    /// guest runs another kernel than the entry's.
    pub fn boot(&self, label: &str, initrd: PathBuf) -> Option<Guest> {
        let mut cfg = crate::qemu::QemuConfig::new(label, self.dir.join("vmlinuz"), Some(initrd));
        cfg.extra_append.push("vsplice.agent=0".into());
        let mut g = Guest::boot_or_skip(cfg)?;
        match g.run_ok("uname -r") {
            Ok(r) if r.trim() == self.release => Some(g),
            other => panic!("the guest is not {}: {other:?}", self.release),
        }
    }
}

/// Asserts that `patch build` was refused with a one-line error of
/// `cause` naming `names`, and that neither `out` nor a half-written
/// temporary file beside it exists.
pub fn assert_refused(o: &std::process::Output, cause: &str, names: &str, out: &Path) {
    let err = crate::cli::text(&o.stderr);
    assert!(!o.status.success(), "built anyway: {}", crate::cli::text(&o.stdout));
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("vsplice: error [{cause}]")) && last.contains(names), "want {cause} naming {names}: {err}");
    assert!(!out.exists(), "{} written despite the error", out.display());
    let dir = out.parent().unwrap_or(Path::new("."));
    let leftovers: Vec<_> = std::fs::read_dir(dir).map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "half-written files: {leftovers:?}");
    eprintln!("  refused as expected: {last}");
}

/// The sorted names a built patch's manifest (`patch build`'s stdout) replaces.
pub fn replaced_names(manifest: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = manifest["replacements"].as_array().map(|a| a.iter().filter_map(|r| r["old"].as_str().map(str::to_owned)).collect()).unwrap_or_default();
    v.sort_unstable();
    v
}

/// `vsplice patch CMD… --gdb … --target linux --arena … --tasks agentless`
/// against a booted guest.
#[derive(Debug)]
pub struct PatchCli {
    gdb: String,
    arena: String,
}

impl PatchCli {
    /// The CLI pointed at `g`'s gdbstub and arena.
    pub fn new(g: &Guest) -> Result<Self, String> {
        let gdb = g.gdb_addr().ok_or("the guest has no gdbstub")?.to_owned();
        Ok(Self { gdb, arena: linuxpatch::arena_arg(g) })
    }

    /// Runs `vsplice patch` with `cmd`.
    pub fn run(&self, cmd: &[&str]) -> std::process::Output {
        let mut args = vec!["patch"];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&["--gdb", self.gdb.as_str(), "--target", "linux", "--arena", self.arena.as_str(), "--tasks", "agentless"]);
        crate::cli::vsplice(&args)
    }
}
