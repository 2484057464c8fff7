//! Shared code of the benchmarks: booting the test guest quietly and
//! summarising latency samples as percentiles.

use std::path::PathBuf;
use std::time::Duration;

use vsplice_vmm::builder::{self, BuildError};
use vsplice_vmm::config::{SerialConfig, VmConfig};
use vsplice_vmm::vmm::Vmm;

/// The test guest image built by `images/build-testguest.sh`.
pub fn testguest_image() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/images/testguest/testguest.elf")
}

/// Boots the test guest with `vcpus` vCPUs and discards its console.
pub fn boot_testguest(vcpus: usize) -> Result<Vmm, BuildError> {
    let mut config = VmConfig::new(testguest_image());
    config.vcpus = vcpus;
    config.memory_mib = 128;
    config.cmdline = "tg.tasks=2".to_owned();
    config.serial = SerialConfig::Null;
    builder::build(config)
}

/// The `p`-th percentile (0..=100) of `samples` (sorted in place).
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        assert_eq!(percentile(&mut s, 50.0), Duration::from_micros(51));
        assert_eq!(percentile(&mut s, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }
}
