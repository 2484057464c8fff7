//! Where `images/debian-kernels.sh` put the stock Debian kernels and their
//! initramfs (`target/images/debian-<flavour>/`), checked before a test boots.

use std::fmt;
use std::path::PathBuf;

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
    let dir = workspace_root().join("target/images").join(format!("debian-{}", flavour.name()));
    let missing = |what: &str| HarnessError::ImagesMissing {
        what: format!("{} ({what})", dir.display()),
        hint: format!("run {IMAGES_SCRIPT} (as root, on Debian 12) first"),
    };
    let read = |name: &str| -> Result<String, HarnessError> {
        std::fs::read_to_string(dir.join(name)).map(|s| s.trim().to_string()).map_err(|_| missing(name))
    };
    let abi = read("abi")?;
    let release = read("release")?;
    let version = read("version")?;
    let img = DebianImages {
        flavour,
        vmlinuz: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio.gz"),
        config: dir.join("config"),
        headers: dir.join("headers"),
        modules: dir.join("modules"),
        dir: dir.clone(),
        abi,
        release,
        version,
    };
    for (p, what) in [(&img.vmlinuz, "vmlinuz"), (&img.initramfs, "initramfs.cpio.gz"), (&img.config, "config")] {
        if !p.is_file() {
            return Err(missing(what));
        }
    }
    Ok(img)
}

/// The previous Debian ABI of a flavour (`target/images/debian-<flavour>-prev/`,
/// made by `images/debian-prev-kernel.sh`): only its bzImage and names.
pub fn debian_prev_images(flavour: Flavour) -> Result<DebianImages, HarnessError> {
    let dir = workspace_root().join("target/images").join(format!("debian-{}-prev", flavour.name()));
    let missing = |what: &str| HarnessError::ImagesMissing {
        what: format!("{} ({what})", dir.display()),
        hint: "run images/debian-prev-kernel.sh (an older ABI must still be in the archive)".into(),
    };
    let read = |name: &str| -> Result<String, HarnessError> {
        std::fs::read_to_string(dir.join(name)).map(|s| s.trim().to_string()).map_err(|_| missing(name))
    };
    let (abi, release, version) = (read("abi")?, read("release")?, read("version")?);
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        return Err(missing("vmlinuz"));
    }
    Ok(DebianImages {
        flavour,
        vmlinuz,
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
