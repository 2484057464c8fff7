//! Where `images/debian-kernels.sh` put the stock Debian kernels and their
//! initramfs (`target/images/debian-<flavour>/`), checked before a test boots.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::harness_error::HarnessError;
use crate::testguest::workspace_root;

/// A Debian kernel flavour the images script fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// `linux-image-<abi>-amd64`, the generic kernel.
    Amd64,
    /// `linux-image-<abi>-cloud-amd64`, the cloud kernel.
    CloudAmd64,
}

impl Flavour {
    /// Both flavours.
    pub const ALL: [Flavour; 2] = [Flavour::Amd64, Flavour::CloudAmd64];

    /// Debian's name of the flavour (`amd64`, `cloud-amd64`).
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Amd64 => "amd64",
            Flavour::CloudAmd64 => "cloud-amd64",
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The files of one flavour.
#[derive(Debug, Clone)]
pub struct DebianImages {
    /// The flavour.
    pub flavour: Flavour,
    /// `target/images/debian-<flavour>/`.
    pub dir: PathBuf,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// The test initramfs.
    pub initramfs: PathBuf,
    /// The kernel's `.config`.
    pub config: PathBuf,
    /// Kbuild-usable headers (a symlink into /usr/src).
    pub headers: PathBuf,
    /// `lib/modules/<release>` of the image package.
    pub modules: PathBuf,
    /// ABI, e.g. `6.1.0-56`.
    pub abi: String,
    /// `uname -r` of the guest, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// Debian package version, e.g. `6.1.192-2`.
    pub version: String,
}

/// The script that makes the images (relative to the workspace root).
pub const IMAGES_SCRIPT: &str = "images/debian-kernels.sh";

/// Locates the images of `flavour`; a clear error naming the script to run
/// when anything is missing.
pub fn debian_images(flavour: Flavour) -> Result<DebianImages, HarnessError> {
    let hint = format!("run {IMAGES_SCRIPT} (as root, on Debian 12) first");
    let img = images_in(flavour, "", &hint)?;
    for (p, what) in [(&img.vmlinuz, "vmlinuz"), (&img.initramfs, "initramfs.cpio.gz"), (&img.config, "config")] {
        if !p.is_file() {
            return Err(missing(&img.dir, what, &hint));
        }
    }
    Ok(img)
}

/// The previous Debian ABI of a flavour (`target/images/debian-<flavour>-prev/`,
/// made by `images/debian-prev-kernel.sh`): only its bzImage and names.
pub fn debian_prev_images(flavour: Flavour) -> Result<DebianImages, HarnessError> {
    let hint = "run images/debian-prev-kernel.sh (an older ABI must still be in the archive)";
    let img = images_in(flavour, "-prev", hint)?;
    if !img.vmlinuz.is_file() {
        return Err(missing(&img.dir, "vmlinuz", hint));
    }
    Ok(img)
}

/// The files of `flavour` in `target/images/debian-<flavour><suffix>/`, with
/// the names of its kernel read (the files themselves are not checked);
/// `hint` says what makes them.
fn images_in(flavour: Flavour, suffix: &str, hint: &str) -> Result<DebianImages, HarnessError> {
    let dir = workspace_root().join("target/images").join(format!("debian-{}{suffix}", flavour.name()));
    let read = |name: &str| -> Result<String, HarnessError> {
        std::fs::read_to_string(dir.join(name)).map(|s| s.trim().to_string()).map_err(|_| missing(&dir, name, hint))
    };
    let (abi, release, version) = (read("abi")?, read("release")?, read("version")?);
    Ok(DebianImages {
        flavour,
        vmlinuz: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio.gz"),
        config: dir.join("config"),
        headers: dir.join("headers"),
        modules: dir.join("modules"),
        dir,
        abi,
        release,
        version,
    })
}

fn missing(dir: &Path, what: &str, hint: &str) -> HarnessError {
    HarnessError::ImagesMissing { what: format!("{} ({what})", dir.display()), hint: hint.to_owned() }
}
