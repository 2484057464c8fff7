//! The kernel source tree and its Kbuild: checking it is configured like the
//! running kernel, preparing it once (`olddefconfig` + `modules_prepare`
//! with the headers' `.config`), and building objects before and after the
//! fix with per-function and per-data sections.
//!
//! The fixed build happens in a sibling tree `SRC.vsplice-post`, a copy of
//! SRC made once (`cp -a`; not hard links: Kbuild rewrites some generated
//! files in place, which would have written SRC's). Before each fix, the
//! files an earlier fix touched are copied back from SRC and their objects
//! removed; each
//! object built is copied out before it is read, and kept in
//! `SRC.vsplice-objs/` by what it was built from.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::DiffError;

/// Flags added to the kernel's own for the objects compared (`CFLAGS_<stem>.o`).
pub const KCFLAGS: &str = "-ffunction-sections -fdata-sections";

/// Where the fixed build happens.
pub fn post_tree(src: &Path) -> PathBuf {
    sibling(src, ".vsplice-post")
}

/// `SRC<suffix>`, next to SRC.
fn sibling(src: &Path, suffix: &str) -> PathBuf {
    let mut s = src.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// An exclusive hold on SRC and its sibling trees for one diff build: two
/// builds at once would run Kbuild in the same tree and copy the fixed tree
/// over each other. Released when dropped (closing the file drops the lock).
#[derive(Debug)]
pub struct TreeLock {
    _file: std::fs::File,
}

/// Takes [`TreeLock`] on SRC (`SRC.vsplice-lock`), waiting, with a word on
/// stderr, while another build holds it.
pub fn lock(src: &Path) -> Result<TreeLock, DiffError> {
    use std::os::fd::AsRawFd;
    let path = sibling(src, ".vsplice-lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(format!("opening {}", path.display())))?;
    let flock = |op| {
        // SAFETY: the descriptor belongs to `f`, open for the whole call;
        // flock touches no memory of ours.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    if let Err(e) = flock(libc::LOCK_EX | libc::LOCK_NB) {
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(DiffError::Io { what: format!("locking {}", path.display()), source: e });
        }
        eprintln!("vsplice: waiting for another build in {}", src.display());
        flock(libc::LOCK_EX).map_err(io(format!("locking {}", path.display())))?;
    }
    Ok(TreeLock { _file: f })
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> DiffError {
    move |source| DiffError::Io { what, source }
}

/// The C compiler the kernel was built with (`CONFIG_CC_VERSION_TEXT`'s
/// first word, `gcc-12` for Debian 12), checked to be here and the same.
pub fn compiler(config: &str) -> Result<String, DiffError> {
    let text = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT="))
        .map(|v| v.trim_matches('"').to_owned())
        .ok_or_else(|| DiffError::NoCompiler("the kernel's .config has no CONFIG_CC_VERSION_TEXT".into()))?;
    let cc = text.split_whitespace().next().unwrap_or("gcc").to_owned();
    let out = Command::new(&cc).arg("--version").output().map_err(|e| DiffError::NoCompiler(format!("{cc} (the kernel's compiler: {text}) cannot be run: {e}")))?;
    let have = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_owned();
    if have != text {
        return Err(DiffError::NoCompiler(format!("the kernel was built by `{text}`, {cc} here is `{have}`")));
    }
    Ok(cc)
}

/// `VERSION.PATCHLEVEL.SUBLEVEL` of the tree's Makefile.
pub fn tree_version(src: &Path) -> Result<String, DiffError> {
    let mk = std::fs::read_to_string(src.join("Makefile")).map_err(|_| DiffError::NotSource(format!("{} has no Makefile: not a kernel source tree", src.display())))?;
    let get = |k: &str| mk.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim_start_matches([' ', '=']).trim().to_owned()));
    match (get("VERSION"), get("PATCHLEVEL"), get("SUBLEVEL")) {
        (Some(v), Some(p), Some(s)) => Ok(format!("{v}.{p}.{s}")),
        _ => Err(DiffError::NotSource(format!("{}/Makefile names no kernel version", src.display()))),
    }
}

/// Runs make in `dir`; stderr (and stdout) on failure.
fn make(dir: &Path, cc: &str, args: &[&str]) -> Result<(), DiffError> {
    make_with(dir, cc, "", args)
}

/// Runs make in `dir` with `extra` appended to [`KCFLAGS`].
fn make_with(dir: &Path, cc: &str, extra: &str, args: &[&str]) -> Result<(), DiffError> {
    let flags = if extra.is_empty() { KCFLAGS.to_owned() } else { format!("{KCFLAGS} {extra}") };
    // Per object (`CFLAGS_<stem>.o`), not KCFLAGS: the tree's prepared
    // files (scripts/mod, …) must not be rebuilt with other flags.
    let per_object: Vec<String> = args
        .iter()
        .filter(|a| a.ends_with(".o"))
        .map(|a| format!("CFLAGS_{}={flags}", Path::new(a).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()))
        .collect();
    let out = Command::new("make")
        .arg("-C")
        .arg(dir)
        .arg("-s")
        .arg("-j2")
        .arg(format!("CC={cc}"))
        .args(&per_object)
        .args(args)
        .output()
        .map_err(|e| DiffError::NoCompiler(format!("make cannot be run: {e}")))?;
    if !out.status.success() {
        let mut s = String::from_utf8_lossy(&out.stderr).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stdout));
        let tail: Vec<&str> = s.lines().rev().take(12).collect();
        return Err(DiffError::Kbuild(format!("make {} in {}: {}", args.join(" "), dir.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"))));
    }
    Ok(())
}

/// Configures SRC with `config` (the headers' `.config`) and prepares it
/// for building single objects, unless it already is; an existing
/// different `.config` is refused (`source_mismatch`).
pub fn prepare(src: &Path, config: &str, cc: &str) -> Result<(), DiffError> {
    let dot = src.join(".config");
    match std::fs::read_to_string(&dot) {
        Ok(have) if same_config(&have, config) => {}
        Ok(_) => return Err(DiffError::NotSource(format!("{} is configured differently from the running kernel (its .config differs from the headers')", src.display()))),
        Err(_) => {
            eprintln!("vsplice: configuring {} with the kernel's .config", src.display());
            let tmp = src.join(format!(".config.vsplice-{}", std::process::id()));
            std::fs::write(&tmp, config).and_then(|()| std::fs::rename(&tmp, &dot)).map_err(io(format!("writing {}", dot.display())))?;
        }
    }
    if !src.join("include/generated/autoconf.h").is_file() || !src.join("tools/objtool/objtool").is_file() {
        let t = std::time::Instant::now();
        eprintln!("vsplice: preparing {} (make olddefconfig modules_prepare, -j2; once)", src.display());
        make(src, cc, &["olddefconfig"])?;
        make(src, cc, &["modules_prepare"])?;
        eprintln!("vsplice: prepared in {:.0} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Options that differ between the kernel's build host and this one
/// without changing any object's code: the build-id salt, the module
/// signing key's path, what pahole can do (BTF is made after compiling).
const HOST_ONLY: &[&str] = &["CONFIG_BUILD_SALT=", "CONFIG_MODULE_SIG_KEY=", "CONFIG_PAHOLE_", "CONFIG_DEBUG_INFO_BTF_MODULES", "CONFIG_MODULE_ALLOW_BTF_MISMATCH"];

/// Two configs are the same when their `CONFIG_` lines are (but [`HOST_ONLY`]).
fn same_config(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> Vec<&str> {
        let mut v: Vec<&str> = s
            .lines()
            .filter(|l| l.starts_with("CONFIG_") || l.starts_with("# CONFIG_"))
            .filter(|l| !HOST_ONLY.iter().any(|h| l.trim_start_matches("# ").starts_with(h)))
            .collect();
        v.sort_unstable();
        v
    }
    norm(a) == norm(b)
}

/// Builds `objects` (paths relative to the tree) in `tree`; returns their bytes.
pub fn build(tree: &Path, cc: &str, objects: &[String], what: &str) -> Result<Vec<Vec<u8>>, DiffError> {
    build_with(tree, cc, "", objects, what)
}

/// [`build`] with `extra` compiler flags.
pub fn build_with(tree: &Path, cc: &str, extra: &str, objects: &[String], what: &str) -> Result<Vec<Vec<u8>>, DiffError> {
    let t = std::time::Instant::now();
    eprintln!("vsplice: building {} {what} the fix ({})", objects.join(" "), tree.display());
    let args: Vec<&str> = objects.iter().map(String::as_str).collect();
    make_with(tree, cc, extra, &args)?;
    eprintln!("vsplice: built {what} the fix in {:.1} s", t.elapsed().as_secs_f64());
    objects.iter().map(|o| std::fs::read(tree.join(o)).map_err(io(format!("reading {}", tree.join(o).display())))).collect()
}

/// Built objects kept by what they were built from (`SRC.vsplice-objs/<key>.o`):
/// a fix built again reads them instead of running Kbuild. The key covers
/// the C file (before: its text in SRC; after: the diff), the config, the
/// compiler and the flags; SRC's headers are taken to stay as unpacked.
pub fn cache_key(what: &str, object: &str, input: &[u8], config: &str, cc: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [what.as_bytes(), object.as_bytes(), input, config.as_bytes(), cc.as_bytes(), KCFLAGS.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` as `name` next to the object cache (temp file, rename); its path.
pub fn write_side_file(src: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, DiffError> {
    let dir = sibling(src, ".vsplice-objs");
    let (path, tmp) = (dir.join(name), dir.join(format!("{name}.tmp-{}", std::process::id())));
    std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&tmp, bytes)).and_then(|()| std::fs::rename(&tmp, &path)).map_err(io(format!("writing {}", path.display())))?;
    Ok(path)
}

/// The cached object of `key`, if any.
pub fn cached(src: &Path, key: &str) -> Option<Vec<u8>> {
    std::fs::read(sibling(src, ".vsplice-objs").join(format!("{key}.o"))).ok()
}

/// Keeps `bytes` as the object of `key` (written whole: temp file, rename).
pub fn keep(src: &Path, key: &str, bytes: &[u8]) {
    let dir = sibling(src, ".vsplice-objs");
    let tmp = dir.join(format!("{key}.o.tmp-{}", std::process::id()));
    let ok = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&tmp, bytes)).and_then(|()| std::fs::rename(&tmp, dir.join(format!("{key}.o"))));
    if let Err(e) = ok {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!("object cache {}: {e}", dir.display());
    }
}

/// A copy of SRC's `arch/x86/include/asm/bug.h` whose `__WARN_FLAGS`
/// calls the kernel's `__warn()` instead of trapping on a `ud2` listed in
/// the bug table (which the guest would not find), in `SRC.vsplice-objs/`;
/// force-included, it stands for the real one (same include guard). It does
/// what `report_bug()` does for a WARN entry: the cut-here line unless
/// `BUGFLAG_NO_CUT_HERE`, once only with `BUGFLAG_ONCE` (a flag of its own
/// in `.data.once`), `__warn(file, line, site, taint)`. `None` when the
/// header has no such definition to replace.
pub fn warn_as_call_header(src: &Path) -> Result<Option<PathBuf>, DiffError> {
    let bug = src.join("arch/x86/include/asm/bug.h");
    let text = std::fs::read_to_string(&bug).map_err(io(format!("reading {}", bug.display())))?;
    let mut out = String::new();
    let (mut skipping, mut found) = (false, false);
    for line in text.lines() {
        if line.starts_with("#define __WARN_FLAGS(") {
            skipping = true;
            found = true;
            out.push_str(WARN_AS_CALL);
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        } else if !line.trim_end().ends_with('\\') {
            skipping = false;
        }
    }
    if !found {
        return Ok(None);
    }
    let dir = sibling(src, ".vsplice-objs");
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let path = dir.join("vsplice_warn_call.h");
    let tmp = dir.join(format!("vsplice_warn_call.h.tmp-{}", std::process::id()));
    std::fs::write(&tmp, out).and_then(|()| std::fs::rename(&tmp, &path)).map_err(io(format!("writing {}", path.display())))?;
    Ok(Some(path))
}

/// The `__WARN_FLAGS` of [`warn_as_call_header`].
const WARN_AS_CALL: &str = r#"/* vsplice patch build --diff: WARN as a call to __warn(), as report_bug() would */
#define __WARN_FLAGS(flags)						\
do {									\
	static bool __section(".data.once") __vsplice_warned;		\
	unsigned int __vsplice_flags = BUGFLAG_WARNING | (flags);	\
	instrumentation_begin();					\
	if (!(__vsplice_flags & BUGFLAG_ONCE) || !__vsplice_warned) {	\
		__vsplice_warned = true;				\
		if (!(__vsplice_flags & BUGFLAG_NO_CUT_HERE))		\
			printk(KERN_DEFAULT CUT_HERE);			\
		__warn(__FILE__, __LINE__, (void *)_THIS_IP_,		\
		       __vsplice_flags >> 8, NULL, NULL);			\
	}								\
	instrumentation_end();						\
} while (0)
"#;

/// Makes (once) and resets the fixed tree, then applies `diff` to it.
pub fn post_apply(src: &Path, diff: &Path, files: &[String], objects: &[String]) -> Result<PathBuf, DiffError> {
    let post = post_tree(src);
    if !post.is_dir() {
        eprintln!("vsplice: copying {} to {} (once)", src.display(), post.display());
        let tmp = post.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let st = Command::new("cp").arg("-a").arg(src).arg(&tmp).status().map_err(io("running cp -a".into()))?;
        if !st.success() {
            return Err(DiffError::Io { what: format!("cp -a {} {}", src.display(), tmp.display()), source: std::io::Error::other("cp failed") });
        }
        std::fs::rename(&tmp, &post).map_err(io(format!("renaming {}", tmp.display())))?;
    }
    let touched = post.join(".vsplice-touched");
    let mut reset: Vec<String> = std::fs::read_to_string(&touched).unwrap_or_default().lines().map(str::to_owned).collect();
    reset.extend(files.iter().cloned());
    reset.extend(objects.iter().cloned());
    for f in &reset {
        let (s, p) = (src.join(f), post.join(f));
        let _ = std::fs::remove_file(&p);
        if s.is_file() && !f.ends_with(".o") {
            std::fs::copy(&s, &p).map_err(io(format!("copying {} back", p.display())))?;
        }
    }
    std::fs::write(&touched, reset.join("\n")).map_err(io(format!("writing {}", touched.display())))?;
    apply(&post, diff, false)?;
    Ok(post)
}

/// `patch -p1` of `diff` in `dir` (only checked with `dry_run`).
pub fn apply(dir: &Path, diff: &Path, dry_run: bool) -> Result<(), DiffError> {
    let input = std::fs::File::open(diff).map_err(io(format!("opening {}", diff.display())))?;
    let mut cmd = Command::new("patch");
    cmd.arg("-p1").arg("-s").arg("-f").arg("--no-backup-if-mismatch").arg("-d").arg(dir).stdin(input);
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().map_err(|e| DiffError::NoCompiler(format!("patch cannot be run: {e}")))?;
    if !out.status.success() {
        let s = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let first = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("patch failed").to_owned();
        return Err(DiffError::DoesNotApply(format!("{} does not apply to {}: {first}", diff.display(), dir.display())));
    }
    Ok(())
}

/// The files a unified diff changes (`+++ b/path`, `-p1`).
pub fn touched_files(diff: &str) -> Vec<String> {
    let mut v: Vec<String> = diff
        .lines()
        .filter_map(|l| l.strip_prefix("+++ "))
        .filter_map(|p| {
            let p = p.split('\t').next().unwrap_or(p).trim();
            p.split_once('/').map(|(_, rest)| rest.to_owned())
        })
        .filter(|p| !p.is_empty() && p != "dev/null")
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_second_lock_on_one_tree_waits_for_the_first() {
        let dir = std::env::temp_dir().join(format!("vsplice-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let held = lock(&src).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let src2 = src.clone();
        let t = std::thread::spawn(move || {
            let l = lock(&src2);
            tx.send(()).unwrap();
            l.map(|_| ())
        });
        assert!(rx.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "the second lock was taken while the first was held");
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap();
        t.join().unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn touched_files_come_from_the_new_side_without_prefix() {
        let d = "diff -urN a/x.c b/x.c\n--- a/fs/ext4/mballoc.c\t2026\n+++ b/fs/ext4/mballoc.c\t2026\n@@ -1 +1 @@\n--- a/include/x.h\n+++ b/include/x.h\n";
        assert_eq!(touched_files(d), ["fs/ext4/mballoc.c", "include/x.h"]);
    }

    #[test]
    fn configs_compare_by_their_options() {
        assert!(same_config("# c\nCONFIG_A=y\nCONFIG_B=m\n", "CONFIG_B=m\nCONFIG_A=y\n# other comment\n"));
        assert!(!same_config("CONFIG_A=y\n", "CONFIG_A=m\n"));
        assert!(same_config("CONFIG_A=y\nCONFIG_BUILD_SALT=\"\"\nCONFIG_PAHOLE_VERSION=0\n", "CONFIG_A=y\nCONFIG_BUILD_SALT=\"6.1.0-55\"\nCONFIG_PAHOLE_VERSION=124\nCONFIG_PAHOLE_HAS_SPLIT_BTF=y\n"));
    }

    #[test]
    fn the_warn_header_replaces_only_warn_flags() {
        let src = std::env::temp_dir().join(format!("vsplice-warnh-{}-{}", std::process::id(), crate::patch::build::unique()));
        let asm = src.join("arch/x86/include/asm");
        std::fs::create_dir_all(&asm).unwrap_or_default();
        let bug = "#ifndef _ASM_X86_BUG_H\n#define BUG() do { x(); } while (0)\n#define __WARN_FLAGS(flags)\t\\\ndo {\t\\\n\tud2(flags);\t\\\n} while (0)\n\n#include <asm-generic/bug.h>\n#endif\n";
        std::fs::write(asm.join("bug.h"), bug).unwrap_or_default();
        let h = warn_as_call_header(&src).ok().flatten().map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default();
        assert!(h.contains("#define BUG() do { x(); } while (0)"), "{h}");
        assert!(h.contains("__warn(__FILE__, __LINE__"), "{h}");
        assert!(!h.contains("ud2(flags)"), "{h}");
        assert!(h.contains("#include <asm-generic/bug.h>"), "{h}");
        std::fs::write(asm.join("bug.h"), "#define BUG() x\n").unwrap_or_default();
        assert!(matches!(warn_as_call_header(&src), Ok(None)));
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(sibling(&src, ".vsplice-objs"));
    }

    #[test]
    fn the_compiler_comes_from_the_config() {
        assert!(matches!(compiler("CONFIG_X=y\n"), Err(DiffError::NoCompiler(_))));
        assert!(matches!(compiler("CONFIG_CC_VERSION_TEXT=\"no-such-cc-vsplice 1.0\"\n"), Err(DiffError::NoCompiler(_))));
    }
}
