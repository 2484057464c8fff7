//! The plan file (JSON, or TOML when its name ends in `.toml`) and the rollout it makes: which patch each target
//! gets (one patch per kernel build; a target with none is
//! `no_patch_for_kernel` and never touched), the canary, the waves.
//!
//! ```json
//! {"patches": ["fix-6.1.0-21.vsp", "fix-6.1.0-22.vsp"],
//!  "selector": {"zone": "eu"},
//!  "canary": {"count": 1, "soak_ms": 5000},
//!  "waves": ["10%", "50%", "100%"], "soak_ms": 1000,
//!  "parallelism": 4, "per_host": 2, "host_label": "host", "pause_ms": 0,
//!  "gates": {"console": true, "probe": ["/usr/local/bin/check"], "probe_timeout_ms": 10000},
//!  "failure_budget": 0, "on_halt": "revert_wave", "attempts": 5,
//!  "trusted_keys": "/etc/vsplice/keys", "allow_unsigned": false}
//! ```
//!
//! The same in TOML (`plan.toml`; the keys and their meaning are the same):
//!
//! ```toml
//! patches = ["fix-6.1.0-21.vsp", "fix-6.1.0-22.vsp"]
//! waves = ["10%", "50%", "100%"]
//! parallelism = 4
//! [selector]
//! zone = "eu"
//! [canary]
//! count = 1
//! soak_ms = 5000
//! [gates]
//! probe = ["/usr/local/bin/check"]
//! ```
//!
//! Waves are cumulative sizes of the targets after the canary: a count
//! (`4`) or a percentage (`"25%"`, rounded up); what the last wave leaves
//! goes in one more wave.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vsplice_patcher::patch::{PatchFile, TrustPolicy};

use super::inventory::{Inventory, Target};
pub use super::plan_format::PlanFormat;
use super::target::Probe;
use super::{read_config, FleetError};

/// The canary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Targets patched first, one at a time.
    pub count: usize,
    /// How long each canary runs patched before its gates.
    #[serde(default)]
    pub soak_ms: u64,
}

/// A wave's cumulative size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WaveSize {
    /// This many targets.
    Count(usize),
    /// `"N%"` of the targets after the canary.
    Percent(String),
}

/// The health gates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// No new `Oops`/`BUG:`/`WARNING:`/`Kernel panic` on the guest's console.
    #[serde(default = "yes")]
    pub console: bool,
    /// A command run per target (`VSPLICE_TARGET`, `VSPLICE_API_SOCK` and
    /// `VSPLICE_LABEL_<NAME>` in its environment): exit 0 passes.
    #[serde(default)]
    pub probe: Vec<String>,
    /// How long the probe may take.
    #[serde(default = "probe_timeout")]
    pub probe_timeout_ms: u64,
}

fn yes() -> bool {
    true
}

fn probe_timeout() -> u64 {
    10_000
}

impl Default for Gates {
    fn default() -> Self {
        Self { console: true, probe: Vec::new(), probe_timeout_ms: probe_timeout() }
    }
}

/// What a halt reverts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnHalt {
    /// The targets of the wave being rolled out.
    #[default]
    RevertWave,
    /// Every target of the rollout.
    RevertAll,
}

fn one() -> usize {
    1
}

/// The plan file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The patch files, one per kernel build (relative to the plan file).
    pub patches: Vec<PathBuf>,
    /// Only targets whose labels all match.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// The canary.
    #[serde(default)]
    pub canary: Canary,
    /// The waves' cumulative sizes.
    #[serde(default)]
    pub waves: Vec<WaveSize>,
    /// How long each wave's target runs patched before its gates.
    #[serde(default)]
    pub soak_ms: u64,
    /// Targets patched at once in a wave.
    #[serde(default = "one")]
    pub parallelism: usize,
    /// Targets patched at once on one host (0: no limit).
    #[serde(default)]
    pub per_host: usize,
    /// The label that names a target's host.
    #[serde(default = "host_label")]
    pub host_label: String,
    /// Pause between waves.
    #[serde(default)]
    pub pause_ms: u64,
    /// The health gates.
    #[serde(default)]
    pub gates: Gates,
    /// Failed targets tolerated; one more halts the rollout. A failed canary always halts.
    #[serde(default)]
    pub failure_budget: usize,
    /// What a halt reverts.
    #[serde(default)]
    pub on_halt: OnHalt,
    /// Pauses each apply may try before `code_busy` (default: the VMM's).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// A directory of `*.pub` keys every patch must be signed by.
    #[serde(default)]
    pub trusted_keys: Option<PathBuf>,
    /// Let unsigned patches through (loudly): development only.
    #[serde(default)]
    pub allow_unsigned: bool,
}

fn host_label() -> String {
    "host".into()
}

/// A patch of the rollout, as the controller read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedPatch {
    /// The file (absolute).
    pub file: PathBuf,
    /// The patch's name (its id in the targets' registries).
    pub name: String,
    /// The kernel build it is for.
    pub build_id: String,
    /// True when no key signed it (let through by `allow_unsigned`).
    pub unsigned: bool,
}

/// One target of the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planned {
    /// The target.
    pub target: Target,
    /// Its kernel's build-id (`GET /vm`).
    pub build_id: Option<String>,
    /// Its kernel's release.
    pub release: Option<String>,
    /// The patch's name, or `None` (then `skip` says why).
    pub patch: Option<String>,
    /// The wave (0 is the canary) it is in; `None` when skipped.
    pub wave: Option<usize>,
    /// Why it is not touched: `no_patch_for_kernel`, `unreachable`.
    pub skip: Option<String>,
}

/// The rollout: the plan, its patches, and every selected target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The plan as read.
    pub plan: Plan,
    /// The patches.
    pub patches: Vec<PlannedPatch>,
    /// The selected targets, in inventory order.
    pub targets: Vec<Planned>,
    /// Waves (0 = the canary; may be empty).
    pub waves: usize,
}

impl Plan {
    /// Reads a plan file; patch paths are made relative to its directory.
    pub fn load(path: &Path) -> Result<Self, FleetError> {
        let bytes = read_config(path)?;
        let mut plan = Self::parse(&bytes, PlanFormat::of(path)).map_err(|why| FleetError::invalid(path.display().to_string(), why))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in &mut plan.patches {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        plan.check().map_err(|why| FleetError::invalid(path.display().to_string(), why))?;
        Ok(plan)
    }

    /// Parses a plan's text in `format` (not checked, paths as written).
    pub fn parse(bytes: &[u8], format: PlanFormat) -> Result<Self, String> {
        format.parse(bytes)
    }

    fn check(&self) -> Result<(), String> {
        if self.patches.is_empty() {
            return Err("no patches".into());
        }
        if self.parallelism == 0 {
            return Err("parallelism must be at least 1".into());
        }
        for w in &self.waves {
            if let WaveSize::Percent(p) = w {
                parse_percent(p).ok_or_else(|| format!("wave `{p}` is neither a count nor N% (1..100)"))?;
            }
        }
        Ok(())
    }

    /// Reads every patch: its name and build-id, and whether it may be used
    /// (signed by a trusted key, or `allow_unsigned`; one build per patch).
    pub fn read_patches(&self) -> Result<Vec<(PlannedPatch, Vec<u8>)>, FleetError> {
        let trust = TrustPolicy::from_args(self.trusted_keys.as_deref(), self.allow_unsigned)
            .map_err(|e| FleetError::invalid("trusted_keys", vsplice_patcher::model::chain(&e)))?;
        let mut out: Vec<(PlannedPatch, Vec<u8>)> = Vec::new();
        for file in &self.patches {
            let file = std::path::absolute(file).map_err(|source| FleetError::Read { path: file.clone(), source })?;
            let bytes = vsplice_patcher::patch::format::read_bounded(&file).map_err(|e| FleetError::invalid(file.display().to_string(), vsplice_patcher::model::chain(&e)))?;
            let parsed = PatchFile::parse(&bytes).map_err(|e| FleetError::invalid(file.display().to_string(), vsplice_patcher::model::chain(&e)))?;
            let unsigned = matches!(vsplice_patcher::patch::sign::split(&bytes), Ok((_, None)));
            if unsigned && !self.allow_unsigned {
                return Err(FleetError::Untrusted { path: file, cause: "unsigned", why: "unsigned (the plan does not say `allow_unsigned: true`)".into() });
            }
            if !unsigned && !trust.enforcing() {
                return Err(FleetError::Untrusted { path: file, cause: "untrusted_key", why: "signed, but the plan names no `trusted_keys` to verify it with".into() });
            }
            trust.admit(&bytes).map_err(|e| FleetError::Untrusted { path: file.clone(), cause: e.cause(), why: vsplice_patcher::model::chain(&e) })?;
            let m = parsed.manifest;
            let build_id = m.target.build_id.clone().ok_or_else(|| FleetError::invalid(file.display().to_string(), "the patch names no kernel build-id"))?;
            if let Some((other, _)) = out.iter().find(|(p, _)| p.build_id == build_id) {
                return Err(FleetError::invalid(file.display().to_string(), format!("a second patch for build {build_id} (also {})", other.file.display())));
            }
            out.push((PlannedPatch { file, name: m.name, build_id, unsigned }, bytes));
        }
        Ok(out)
    }
}

fn parse_percent(s: &str) -> Option<usize> {
    let n: usize = s.strip_suffix('%')?.trim().parse().ok()?;
    (1..=100).contains(&n).then_some(n)
}

/// Cumulative wave ends over `n` targets after the canary.
fn wave_ends(waves: &[WaveSize], n: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    for w in waves {
        let end = match w {
            WaveSize::Count(c) => *c,
            WaveSize::Percent(p) => parse_percent(p).map_or(n, |p| (n * p).div_ceil(100)),
        }
        .min(n);
        if end > ends.last().copied().unwrap_or(0) {
            ends.push(end);
        }
    }
    if ends.last().copied().unwrap_or(0) < n {
        ends.push(n);
    }
    ends
}

/// Makes the rollout: for each selected target (with what it said, or why
/// it did not answer) its patch and its wave.
pub fn make_rollout(plan: &Plan, patches: Vec<PlannedPatch>, inventory: &Inventory, probe: impl Fn(&Target) -> Result<Probe, String>) -> Rollout {
    let mut targets = Vec::new();
    for t in inventory.select(&plan.selector) {
        let (build_id, release, skip) = match probe(&t) {
            Ok(p) => (p.build_id, p.release, None),
            Err(_) => (None, None, Some("unreachable".to_owned())),
        };
        let patch = build_id.as_ref().and_then(|b| patches.iter().find(|p| &p.build_id == b)).map(|p| p.name.clone());
        let skip = skip.or_else(|| patch.is_none().then(|| "no_patch_for_kernel".to_owned()));
        targets.push(Planned { target: t, build_id, release, patch, wave: None, skip });
    }
    let eligible: Vec<usize> = targets.iter().enumerate().filter(|(_, t)| t.skip.is_none()).map(|(i, _)| i).collect();
    let canary = plan.canary.count.min(eligible.len());
    let ends = wave_ends(&plan.waves, eligible.len() - canary);
    let mut waves = 0;
    for (k, &i) in eligible.iter().enumerate() {
        let wave = if k < canary { 0 } else { 1 + ends.iter().position(|&e| k - canary < e).unwrap_or(0) };
        targets[i].wave = Some(wave);
        waves = waves.max(wave + 1);
    }
    Rollout { plan: plan.clone(), patches, targets, waves }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan(json: &str) -> Plan {
        let p: Plan = serde_json::from_str(json).unwrap();
        p.check().unwrap();
        p
    }

    #[test]
    fn waves_are_cumulative_counts_or_percentages_and_the_rest() {
        let w = |v: &str, n| wave_ends(&serde_json::from_str::<Vec<WaveSize>>(v).unwrap(), n);
        assert_eq!(w(r#"["25%", "50%", "100%"]"#, 10), [3, 5, 10]);
        assert_eq!(w(r#"[2, 4]"#, 10), [2, 4, 10]);
        assert_eq!(w(r#"[]"#, 5), [5]);
        assert_eq!(w(r#"[8, 4, "100%"]"#, 6), [6]);
        assert!(w(r#"[]"#, 0).is_empty());
        assert!(serde_json::from_str::<Plan>(r#"{"patches":["a"],"waves":["150%"]}"#).unwrap().check().is_err());
        assert!(serde_json::from_str::<Plan>(r#"{"patches":["a"],"parallelism":0}"#).unwrap().check().is_err());
    }

    #[test]
    fn one_patch_per_build_the_rest_no_patch_for_kernel_canary_first() {
        let p = plan(r#"{"patches":["x.vsp"],"canary":{"count":1},"waves":["50%"],"selector":{"zone":"z"}}"#);
        let mk = |n: &str, zone: &str| Target { name: n.into(), api_sock: n.into(), labels: [("zone".to_owned(), zone.to_owned())].into(), origin: None };
        let inv = Inventory { targets: vec![mk("a", "z"), mk("other", "y"), mk("b", "z"), mk("deb", "z"), mk("c", "z"), mk("down", "z"), mk("d", "z")] };
        let patch = PlannedPatch { file: "x.vsp".into(), name: "fix".into(), build_id: "b1".into(), unsigned: true };
        let r = make_rollout(&p, vec![patch], &inv, |t| match t.name.as_str() {
            "down" => Err("unreachable".into()),
            "deb" => Ok(Probe { build_id: Some("b2".into()), ..Probe::default() }),
            _ => Ok(Probe { build_id: Some("b1".into()), ..Probe::default() }),
        });
        let got: Vec<(&str, Option<usize>, Option<&str>)> = r.targets.iter().map(|t| (t.target.name.as_str(), t.wave, t.skip.as_deref())).collect();
        assert_eq!(
            got,
            [
                ("a", Some(0), None),
                ("b", Some(1), None),
                ("deb", None, Some("no_patch_for_kernel")),
                ("c", Some(1), None),
                ("down", None, Some("unreachable")),
                ("d", Some(2), None)
            ]
        );
        assert_eq!(r.waves, 3);
    }
}
