//! Loud skips: a test that needs something this machine lacks (hardware
//! virtualization, /dev/kvm) says so on stderr and records the reason in the
//! file named by `VSPLICE_SKIP_LOG`, which `tests/run-all.sh` prints and counts.

use std::io::Write;

/// Records that `test` was skipped because of `reason`.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED {test}: {reason}");
    eprintln!("\n*** {line} ***\n");
    if let Ok(path) = std::env::var("VSPLICE_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// True when the host CPU exposes hardware virtualization (VMX or SVM), so a
/// stock Linux kernel can run under KVM at native speed.
pub fn has_hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm")))
        .unwrap_or(false)
}

/// True when `/dev/kvm` can be opened read-write.
pub fn has_kvm() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}
