//! The inventory: the targets of a fleet, each an API socket with labels
//! (`host`, `zone`, anything), read from a JSON file:
//!
//! ```json
//! {"targets": [{"name": "vm0", "api_sock": "/run/vm0.sock", "labels": {"host": "a"}}]}
//! ```
//!
//! What each target runs (kernel kind, release, build-id) is asked of the
//! target itself (`GET /vm`) by [`super::target::probe`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{read_config, FleetError};

/// Most targets one inventory lists.
pub const MAX_TARGETS: usize = 100_000;

/// One target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Unique name.
    pub name: String,
    /// Its API socket.
    pub api_sock: PathBuf,
    /// Labels (`host`, `zone`, …).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The inventory file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// The targets, in the order canaries and waves are picked.
    pub targets: Vec<Target>,
}

impl Inventory {
    /// Reads and checks an inventory file (names unique and non-empty).
    pub fn load(path: &Path) -> Result<Self, FleetError> {
        let bytes = read_config(path)?;
        let inv: Self = serde_json::from_slice(&bytes).map_err(|e| FleetError::invalid(path.display().to_string(), e.to_string()))?;
        inv.check().map_err(|why| FleetError::invalid(path.display().to_string(), why))?;
        Ok(inv)
    }

    fn check(&self) -> Result<(), String> {
        if self.targets.len() > MAX_TARGETS {
            return Err(format!("more than {MAX_TARGETS} targets"));
        }
        let mut seen = BTreeSet::new();
        for t in &self.targets {
            if t.name.is_empty() || t.name.len() > 256 || t.name.chars().any(char::is_control) {
                return Err(format!("bad target name `{}`", t.name.chars().take(40).collect::<String>()));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(format!("target `{}` listed twice", t.name));
            }
        }
        Ok(())
    }

    /// The targets whose labels match `selector` (every key equal; an empty
    /// selector matches all), in inventory order.
    pub fn select(&self, selector: &BTreeMap<String, String>) -> Vec<Target> {
        self.targets.iter().filter(|t| selector.iter().all(|(k, v)| t.labels.get(k) == Some(v))).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(name: &str, host: &str) -> Target {
        Target { name: name.into(), api_sock: format!("/s/{name}").into(), labels: [("host".to_owned(), host.to_owned())].into() }
    }

    #[test]
    fn selects_by_labels_in_order_and_refuses_duplicates() {
        let inv = Inventory { targets: vec![t("a", "h1"), t("b", "h2"), t("c", "h1")] };
        assert!(inv.check().is_ok());
        let names: Vec<String> = inv.select(&[("host".to_owned(), "h1".to_owned())].into()).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(inv.select(&BTreeMap::new()).len(), 3);
        assert!(inv.select(&[("zone".to_owned(), "z".to_owned())].into()).is_empty());
        let dup = Inventory { targets: vec![t("a", "h1"), t("a", "h2")] };
        assert!(dup.check().unwrap_err().contains("twice"));
        let parsed: Result<Inventory, _> = serde_json::from_str(r#"{"targets":[{"name":"x","api_sock":"/s","bogus":1}]}"#);
        assert!(parsed.is_err(), "unknown fields are refused");
    }
}
