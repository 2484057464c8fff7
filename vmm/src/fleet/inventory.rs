//! The inventory: the targets of a fleet, each an API socket with labels
//! (`host`, `zone`, anything), read from a JSON file:
//!
//! ```json
//! {"targets": [{"name": "vm0", "api_sock": "/run/vm0.sock", "labels": {"host": "a"}}]}
//! ```
//!
//! or from the registration store the VMMs registered themselves in
//! (`etcd://HOST:PORT[,…][/PREFIX]`, `dir:/PATH`; see [`crate::store`]):
//! each target is then named by its id and remembers where it came from
//! ([`Origin`]), so a target whose registration goes mid-rollout is told
//! from one that merely does not answer.
//!
//! What each target runs (kernel kind, release, build-id) is asked of the
//! target itself (`GET /vm`) by [`super::target::probe`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{read_config, FleetError};
pub use crate::store::read::Origin;
use crate::store::{read, Store};

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
    /// Where it was registered (`None`: an inventory file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

impl Target {
    /// Why this target, read from a registration store, is registered no
    /// more; `None` while it is (or came from a file, or the store does not
    /// answer: then its API decides).
    pub fn deregistered(&self) -> Option<String> {
        let o = self.origin.as_ref()?;
        match read::present(o) {
            Ok(false) => Some(format!("its registration {o} is gone: the VMM ended, or died and its lease expired")),
            Ok(true) => None,
            Err(e) => {
                tracing::warn!(target = %self.name, error = %vsplice_patcher::model::chain(&e), "cannot look the target up in its store; asking its API");
                None
            }
        }
    }
}

/// The inventory file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// The targets, in the order canaries and waves are picked.
    pub targets: Vec<Target>,
}

impl Inventory {
    /// Reads the inventory `spec` names: a registration store
    /// (`etcd://…`, `dir:…`: the targets registered now, and notes on the
    /// entries left out) or a file.
    pub fn load_any(spec: &Path) -> Result<(Self, Vec<String>), FleetError> {
        match spec.to_str().filter(|s| Store::is_store(s)) {
            Some(url) => Self::from_store(url),
            None => Self::load(spec).map(|i| (i, Vec::new())),
        }
    }

    /// The targets registered in the store at `url`.
    pub fn from_store(url: &str) -> Result<(Self, Vec<String>), FleetError> {
        let store = Store::parse(url).map_err(|e| FleetError::invalid("--inventory", vsplice_patcher::model::chain(&e)))?;
        let listing = read::list(&store, MAX_TARGETS).map_err(|e| FleetError::Store { cause: e.cause(), why: vsplice_patcher::model::chain(&e) })?;
        let targets = listing.targets.into_iter().map(|(r, o)| Target { name: r.id, api_sock: r.api_sock, labels: r.labels, origin: Some(o) }).collect();
        Ok((Self { targets }, listing.notes))
    }

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
        Target { name: name.into(), api_sock: format!("/s/{name}").into(), labels: [("host".to_owned(), host.to_owned())].into(), origin: None }
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
