//! Which object of the kernel a C file is built into, from Kbuild itself:
//! the Makefile of the file's directory says which composite object lists
//! `stem.o` (`nfsd-$(CONFIG_NFSD_V4) += … nfs4state.o …`) and under which
//! option the composite, or the file alone, is built (`obj-$(CONFIG_NFSD)
//! += nfsd.o`); the kernel's `.config` says `=m` (a module of that name) or
//! `=y` (vmlinux). Also: the `.ko` of that module in the image package's
//! module tree (`/lib/modules/<release>/kernel/<dir>/<name>.ko`, or
//! `.ko.xz`/`.ko.zst`), and `Module.symvers`, which names the object
//! exporting each symbol a module imports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{DiffError, Refusal};


/// The Makefile's logical lines (continuations joined, comments dropped).
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or_default();
        if let Some(part) = line.strip_suffix('\\') {
            cur.push_str(part);
            cur.push(' ');
            continue;
        }
        cur.push_str(line);
        out.push(std::mem::take(&mut cur));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `y`, `m` or `n` for `$(CONFIG_X)`, `y`, `m` (and `objs`, a composite's own list).
fn option_value(sel: &str, config: &str) -> char {
    match sel {
        "y" | "objs" => 'y',
        "m" => 'm',
        _ => {
            let Some(opt) = sel.strip_prefix("$(").and_then(|s| s.strip_suffix(')')) else { return 'n' };
            let want = format!("{opt}=");
            config.lines().find_map(|l| l.strip_prefix(&want)).and_then(|v| v.chars().next()).filter(|c| matches!(c, 'y' | 'm')).unwrap_or('n')
        }
    }
}

/// `(lhs prefix, selector, objects)` of `prefix-SEL += a.o b.o` / `:=` /
/// `=` (kernel/Makefile starts with `obj-y     = fork.o …`).
fn assignment(line: &str) -> Option<(String, String, Vec<String>)> {
    let (lhs, rhs) = line.split_once("+=").or_else(|| line.split_once(":=")).or_else(|| line.split_once('=').filter(|(l, _)| !l.ends_with(['?', '!'])))?;
    let lhs = lhs.trim();
    let (prefix, sel) = lhs.rsplit_once('-')?;
    Some((prefix.to_owned(), sel.to_owned(), rhs.split_whitespace().map(str::to_owned).collect()))
}

/// The module a C file is built into, or `None` for vmlinux. `makefile`
/// is the text of the Makefile of the file's directory, `config` the
/// kernel's `.config`.
pub fn module_of_makefile(c_file: &str, makefile: &str, config: &str) -> Result<Option<String>, DiffError> {
    let stem = Path::new(c_file).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let obj = format!("{stem}.o");
    let lines: Vec<(String, String, Vec<String>)> = logical_lines(makefile).iter().filter_map(|l| assignment(l)).collect();
    // Built on its own: obj-$(CONFIG_X) += stem.o.
    let direct = lines.iter().find(|(p, _, objs)| p == "obj" && objs.contains(&obj));
    let (name, sel) = match direct {
        Some((_, sel, _)) => (stem.clone(), sel.clone()),
        None => {
            // Part of a composite: NAME-SEL += … stem.o …, enabled, then obj-$(CONFIG_Y) += NAME.o.
            let Some((composite, _, _)) = lines.iter().find(|(p, sel, objs)| p != "obj" && p != "ccflags" && objs.contains(&obj) && option_value(sel, config) != 'n') else {
                return Err(DiffError::refused(Refusal::NotBuilt, c_file, "its directory's Makefile does not build it with this configuration (no obj- or composite line names it)"));
            };
            // `obj-y := … $(mmu-y)` (mm/Makefile): a list variable, not a
            // composite object; the file is linked where the list is.
            let listed = |o: &String| o == &format!("{composite}.o") || o.starts_with(&format!("$({composite}-"));
            let Some((_, sel, _)) = lines.iter().find(|(p, _, objs)| p == "obj" && objs.iter().any(listed)) else {
                return Err(DiffError::refused(Refusal::NotBuilt, c_file, format!("`{composite}.o` is not on an obj- line of its Makefile")));
            };
            (composite.clone(), sel.clone())
        }
    };
    match option_value(&sel, config) {
        'y' => Ok(None),
        'm' => Ok(Some(name.replace('-', "_"))),
        _ => Err(DiffError::refused(Refusal::NotBuilt, c_file, format!("`{name}.o` is built under {sel}, which this configuration does not enable"))),
    }
}

/// The module `c_file` (relative to SRC) is built into, or `None` for vmlinux.
pub fn module_of(src: &Path, c_file: &str, config: &str) -> Result<Option<String>, DiffError> {
    let dir = Path::new(c_file).parent().unwrap_or(Path::new(""));
    let mk = src.join(dir).join("Makefile");
    let text = std::fs::read_to_string(&mk).map_err(|e| DiffError::Io { what: format!("reading {}", mk.display()), source: e })?;
    module_of_makefile(c_file, &text, config)
}

/// The `.ko` of `module` (built from `dir`) under the module tree `modules`
/// (`/lib/modules/<release>` of the image package), uncompressed.
pub fn read_ko(modules: &Path, dir: &Path, module: &str) -> Result<(PathBuf, Vec<u8>), DiffError> {
    let base = modules.join("kernel").join(dir);
    let missing = || DiffError::refused(Refusal::ModuleKoMissing, module, format!("no {module}.ko in {} (give --modules /lib/modules/<release> of the kernel's image package)", base.display()));
    let names = [module.to_owned(), module.replace('_', "-")];
    for n in &names {
        let plain = base.join(format!("{n}.ko"));
        if plain.is_file() {
            let bytes = std::fs::read(&plain).map_err(|e| DiffError::Io { what: format!("reading {}", plain.display()), source: e })?;
            return Ok((plain, bytes));
        }
        for (ext, tool) in [("xz", "xz"), ("zst", "zstd")] {
            let packed = base.join(format!("{n}.ko.{ext}"));
            if packed.is_file() {
                let out = std::process::Command::new(tool).arg("-dc").arg(&packed).output().map_err(|e| DiffError::Io { what: format!("running {tool} -dc {}", packed.display()), source: e })?;
                if !out.status.success() {
                    return Err(DiffError::refused(Refusal::ModuleKoUnreadable, module, format!("{tool} -dc {} failed: {}", packed.display(), String::from_utf8_lossy(&out.stderr).trim())));
                }
                return Ok((packed, out.stdout));
            }
        }
    }
    Err(missing())
}

/// `Module.symvers`: each exported symbol's object (`vmlinux` or a module name).
pub fn symvers(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (_crc, sym, obj) = (f.next()?, f.next()?, f.next()?);
            let name = obj.rsplit('/').next().unwrap_or(obj).replace('-', "_");
            Some((sym.to_owned(), name))
        })
        .collect()
}

/// The `.ko` a fix of `c_file` targets, or `None` when the file is built
/// into vmlinux: the module's `.ko` from `modules` (required then).
pub fn target_ko<'k>(src: &Path, c_file: &str, config: &str, modules: Option<&Path>, kernel: &'k dyn crate::patch::build::PatchImage) -> Result<Option<super::ko::KoImage<'k>>, DiffError> {
    let Some(name) = module_of(src, c_file, config)? else { return Ok(None) };
    let Some(modules) = modules else {
        return Err(DiffError::refused(Refusal::ModuleKoMissing, &name, format!("{c_file} is built into module {name}: give --modules /lib/modules/<release> of the kernel's image package (its {name}.ko is what the guest loads)")));
    };
    let dir = Path::new(c_file).parent().unwrap_or(Path::new(""));
    let (path, bytes) = read_ko(modules, dir, &name)?;
    let ko = super::ko::KoImage::parse(&name, &bytes, kernel).map_err(|e| DiffError::refused(Refusal::ModuleKoUnreadable, &name, e))?;
    tracing::info!(module = %name, ko = %path.display(), symbols = ko.own.len(), sites = ko.site_count(), "module target");
    eprintln!("vsplice: {c_file} is part of module {name}: run-pre and binding against {} ({} symbols, {} rewritten sites masked)", path.display(), ko.own.len(), ko.site_count());
    Ok(Some(ko))
}

/// The headers' `Module.symvers`.
pub fn read_symvers(headers: &Path) -> Result<HashMap<String, String>, DiffError> {
    let p = headers.join("Module.symvers");
    let text = std::fs::read_to_string(&p).map_err(|_| DiffError::NotSource(format!("{} has no Module.symvers: which object exports each symbol a module imports is not known", headers.display())))?;
    Ok(symvers(&text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NFSD: &str = "ccflags-y += -I$(src)\t\t# tracing\nobj-$(CONFIG_NFSD)\t+= nfsd.o\nnfsd-y\t\t\t+= trace.o\n\
        nfsd-y += nfssvc.o nfsctl.o \\\n\t\t\t   export.o auth.o\nnfsd-$(CONFIG_NFSD_V4)\t+= nfs4proc.o nfs4xdr.o nfs4state.o \\\n\t\t\t   nfs4acl.o\n\
        nfsd-$(CONFIG_NFSD_PNFS) += nfs4layouts.o\n";

    #[test]
    fn kbuild_says_which_module_a_file_is_in() {
        let m = "CONFIG_NFSD=m\nCONFIG_NFSD_V4=y\n";
        assert_eq!(module_of_makefile("fs/nfsd/nfs4state.c", NFSD, m).unwrap().as_deref(), Some("nfsd"));
        assert_eq!(module_of_makefile("fs/nfsd/export.c", NFSD, m).unwrap().as_deref(), Some("nfsd"));
        // Built in: vmlinux.
        assert_eq!(module_of_makefile("fs/nfsd/nfs4state.c", NFSD, "CONFIG_NFSD=y\nCONFIG_NFSD_V4=y\n").unwrap(), None);
        // Its option off: not built at all.
        let off = module_of_makefile("fs/nfsd/nfs4layouts.c", NFSD, m).unwrap_err();
        assert_eq!(off.cause(), "not_built");
        // A file that is its own module; a dash in the name becomes `_`.
        let mk = "obj-$(CONFIG_LOOP) += loop.o\nobj-$(CONFIG_X) += snd-foo.o\n";
        assert_eq!(module_of_makefile("drivers/block/loop.c", mk, "CONFIG_LOOP=m\n").unwrap().as_deref(), Some("loop"));
        assert_eq!(module_of_makefile("sound/snd-foo.c", mk, "CONFIG_X=m\n").unwrap().as_deref(), Some("snd_foo"));
        assert_eq!(module_of_makefile("drivers/block/nope.c", mk, "CONFIG_LOOP=m\n").unwrap_err().cause(), "not_built");
        // A plain `=` (kernel/Makefile: kernel/signal.c was refused not_built
        // in the -54 -> -55 corpus).
        let kernel = "obj-y     = fork.o exec_domain.o panic.o \\\n\t    cpu.o exit.o softirq.o resource.o \\\n\t    signal.o sys.o\nobj-$(CONFIG_FREEZER) += freezer.o\n";
        assert_eq!(module_of_makefile("kernel/signal.c", kernel, "").unwrap(), None);
        assert_eq!(module_of_makefile("kernel/freezer.c", kernel, "CONFIG_FREEZER=y\n").unwrap(), None);
        // A list variable on the obj- line (mm/Makefile's `$(mmu-y)`: mm/rmap.c
        // was refused not_built, and with it the corpus's cumulative build).
        let mm = "mmu-y\t\t\t:= nommu.o\nmmu-$(CONFIG_MMU)\t:= highmem.o memory.o \\\n\t\t\t   rmap.o vmalloc.o\nobj-y\t\t\t:= filemap.o mempool.o \\\n\t\t\t   debug.o $(mmu-y)\n";
        assert_eq!(module_of_makefile("mm/rmap.c", mm, "CONFIG_MMU=y\n").unwrap(), None);
    }

    #[test]
    fn symvers_names_each_exports_object() {
        let t = "0x2259d821\txdr_restrict_buflen\tnet/sunrpc/sunrpc\tEXPORT_SYMBOL\t\n0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\t\nbroken line\n";
        let s = symvers(t);
        assert_eq!(s["xdr_restrict_buflen"], "sunrpc");
        assert_eq!(s["printk"], "vmlinux");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_missing_ko_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("vsplice-ko-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kernel/fs/nfsd")).unwrap();
        assert_eq!(read_ko(&dir, Path::new("fs/nfsd"), "nfsd").unwrap_err().cause(), "module_ko_missing");
        std::fs::write(dir.join("kernel/fs/nfsd/nfsd.ko"), b"\x7fELF").unwrap();
        assert_eq!(read_ko(&dir, Path::new("fs/nfsd"), "nfsd").unwrap().1, b"\x7fELF");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
