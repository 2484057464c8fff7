//! The kinds of guest kernel vsplice patches, by the names patch manifests
//! and the command line use (`testguest`, `linux`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which kind of kernel a patch is for, or a guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The purpose-built test guest (its ELF image has the symbols).
    #[default]
    #[cfg_attr(feature = "cli", value(name = "testguest"))]
    TestGuest,
    /// A stock x86-64 Linux kernel.
    Linux,
}

impl TargetKind {
    /// The name in manifests and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::TestGuest => "testguest",
            Self::Linux => "linux",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_are_the_manifest_names() {
        for (k, name) in [(TargetKind::TestGuest, "testguest"), (TargetKind::Linux, "linux")] {
            assert_eq!(k.to_string(), name);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<TargetKind>(&format!("\"{name}\"")).unwrap(), k);
        }
        assert!(serde_json::from_str::<TargetKind>("\"windows\"").is_err());
    }
}
