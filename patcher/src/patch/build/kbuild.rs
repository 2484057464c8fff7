//! Compiling a Linux patch through Kbuild: an external-module build of the
//! one C file against the kernel's headers (`make -C HEADERS M=TMPDIR
//! patch.o`), so the object gets exactly the flags the kernel's own modules
//! get (code model, retpolines and return thunks, fentry and
//! `__mcount_loc`, objtool's site tables, ORC). Only the object is built:
//! no modpost, so the patch may use symbols the kernel does not export.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, VSPLICE_H};
use crate::patch::manifest::BuildInfo;

/// What to compile.
#[derive(Debug, Clone)]
pub struct KbuildJob<'a> {
    /// The kernel's Kbuild-usable headers (`/usr/src/linux-headers-<release>`).
    pub headers: &'a Path,
    /// The patch source.
    pub source: &'a Path,
    /// Extra include directories.
    pub include_dirs: &'a [PathBuf],
    /// `make` to run.
    pub make: &'a str,
}

/// A module name Kbuild accepts, from the source's stem.
fn object_stem(source: &Path) -> String {
    let stem: String = source
        .file_stem()
        .map(|s| s.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect())
        .unwrap_or_default();
    if stem.is_empty() || stem.starts_with(|c: char| c.is_ascii_digit()) {
        format!("vsplice_{stem}")
    } else {
        stem
    }
}

/// The compiler command Kbuild recorded in `.<stem>.o.cmd`.
fn recorded_command(dir: &Path, stem: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(dir.join(format!(".{stem}.o.cmd"))).ok()?;
    let line = text.lines().find(|l| l.starts_with("cmd_") || l.starts_with("savedcmd_"))?;
    let (_, cmd) = line.split_once(":=")?;
    // The compile step comes first; objtool and friends follow after `;`.
    let compile = cmd.split(" ; ").next()?;
    Some(compile.split_whitespace().map(str::to_owned).collect())
}

/// Compiles the patch; returns the object's bytes and how it was built.
pub fn compile(job: &KbuildJob<'_>) -> Result<(Vec<u8>, BuildInfo), BuildError> {
    let io = |what: String| move |source| BuildError::Io { what, source };
    if !job.headers.join("Makefile").is_file() {
        return Err(BuildError::Io {
            what: format!("{} is not a kernel headers tree (no Makefile)", job.headers.display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let src = std::fs::read(job.source).map_err(io(format!("reading {}", job.source.display())))?;
    let dir = std::env::temp_dir().join(format!("vsplice-kbuild-{}-{}", std::process::id(), super::unique()));
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let stem = object_stem(job.source);
    let result = (|| {
        std::fs::write(dir.join(format!("{stem}.c")), &src).map_err(io("writing the source".into()))?;
        std::fs::write(dir.join("vsplice.h"), VSPLICE_H).map_err(io("writing vsplice.h".into()))?;
        let mut incs = vec!["-I$(src)".to_owned()];
        if let Some(d) = job.source.parent().filter(|d| !d.as_os_str().is_empty()) {
            let d = d.canonicalize().unwrap_or_else(|_| d.to_path_buf());
            incs.push(format!("-I{}", d.display()));
        }
        incs.extend(job.include_dirs.iter().map(|d| format!("-I{}", d.display())));
        // The temp dir's name must not reach the object (debug info,
        // __FILE__): the same source builds to the same patch id.
        incs.push(format!("-ffile-prefix-map={}/=", dir.display()));
        let kbuild = format!("obj-m := {stem}.o\nccflags-y := {}\n", incs.join(" "));
        std::fs::write(dir.join("Kbuild"), kbuild).map_err(io("writing Kbuild".into()))?;
        let output = Command::new(job.make)
            .arg("-s")
            .arg("-C")
            .arg(job.headers)
            .arg(format!("M={}", dir.display()))
            .arg(format!("{stem}.o"))
            .output()
            .map_err(io(format!("running {}", job.make)))?;
        let obj = dir.join(format!("{stem}.o"));
        if !output.status.success() || !obj.is_file() {
            let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            stderr.push_str(&String::from_utf8_lossy(&output.stdout));
            return Err(BuildError::Compile { source_file: job.source.display().to_string(), stderr });
        }
        let bytes = std::fs::read(&obj).map_err(io(format!("reading {}", obj.display())))?;
        let flags = recorded_command(&dir, &stem).unwrap_or_default();
        let compiler = format!("kbuild: {} -C {} M=<tmp> {stem}.o", job.make, job.headers.display());
        Ok((bytes, BuildInfo { source: job.source.display().to_string(), compiler, flags, left_out: Vec::new() }))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_become_module_names() {
        assert_eq!(object_stem(Path::new("examples/cmdline-marker.c")), "cmdline_marker");
        assert_eq!(object_stem(Path::new("1fix.c")), "vsplice_1fix");
        assert_eq!(object_stem(Path::new("fix.c")), "fix");
    }
}
