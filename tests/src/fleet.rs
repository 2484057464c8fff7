//! A fleet of test-guest VMs under `vsplice run --api-sock` for the
//! `vsplice fleet` tests: booted in parallel, labelled with a host
//! (`a`/`b` alternately), an inventory and a plan written beside them, the
//! controller run as a user runs it, and the journal and every target's
//! registry read back to check what happened.

use std::path::{Path, PathBuf};
use std::process::Output;

use vsplice_vmm::fleet::journal::{Journal, Op, Step};
use vsplice_vmm::store::record::Registration;
use vsplice_vmm::store::{read, Store};

use crate::api::ApiVm;
use crate::scratch::tmp_dir;

/// The guests' command line: one task, quiet, the timer slow (modest load for 2 cores).
pub const QUIET: &str = "tg.tasks=1 tg.quiet tg.hz=50 tg.wait=5";

/// The VMs of one test.
#[derive(Debug)]
pub struct Fleet {
    /// The VMs, `vm0`, `vm1`, … (host `a` for even, `b` for odd).
    pub vms: Vec<ApiVm>,
    /// Scratch directory: inventory, plan, journals.
    pub dir: PathBuf,
}

impl Fleet {
    /// Boots `n` VMs (1 vCPU each) named `{test}-vmI`; `cmdline(i)` is VM i's command line.
    pub fn boot(test: &str, n: usize, cmdline: impl Fn(usize) -> String + Sync) -> Self {
        Self::boot_with(test, n, cmdline, |_| Vec::new())
    }

    /// [`Fleet::boot`] with `extra(i)` more `vsplice run` arguments for VM i
    /// (e.g. `--register STORE --label host=a`).
    pub fn boot_with(test: &str, n: usize, cmdline: impl Fn(usize) -> String + Sync, extra: impl Fn(usize) -> Vec<String> + Sync) -> Self {
        let dir = tmp_dir(&format!("fleet-{test}"));
        let vms = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n).map(|i| {
                let (cmdline, extra) = (&cmdline, &extra);
                s.spawn(move || {
                    let extra = extra(i);
                    ApiVm::start_with(&format!("{test}-vm{i}"), 1, &cmdline(i), &extra.iter().map(String::as_str).collect::<Vec<_>>())
                })
            }).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| panic!("a VM did not boot"))).collect()
        });
        Self { vms, dir }
    }

    /// The name of VM `i` in the inventory.
    pub fn name(i: usize) -> String {
        format!("vm{i}")
    }

    /// Writes the inventory (every VM, plus `extra` JSON targets) and returns its path.
    pub fn inventory(&self, extra: &[serde_json::Value]) -> PathBuf {
        let mut targets: Vec<serde_json::Value> = self
            .vms
            .iter()
            .enumerate()
            .map(|(i, vm)| serde_json::json!({"name": Self::name(i), "api_sock": vm.sock, "labels": {"host": if i % 2 == 0 { "a" } else { "b" }, "zone": "z1"}}))
            .collect();
        targets.extend(extra.iter().cloned());
        let p = self.dir.join("inventory.json");
        std::fs::write(&p, serde_json::json!({ "targets": targets }).to_string()).unwrap_or_else(|e| panic!("{e}"));
        p
    }

    /// Writes a plan and returns its path.
    pub fn plan(&self, name: &str, plan: &serde_json::Value) -> PathBuf {
        let p = self.dir.join(format!("{name}.json"));
        std::fs::write(&p, plan.to_string()).unwrap_or_else(|e| panic!("{e}"));
        p
    }

    /// The kill-and-resume tests' inventory and plan (paths as text): three
    /// targets, a canary of one, parallelism 2, and a probe gate that fails
    /// on vm2 within a failure budget of 1.
    pub fn resume_plan(&self, patch: &Path) -> (String, String) {
        let inv = self.inventory(&[]);
        let probe = ["sh", "-c", r#"test "$VSPLICE_TARGET" != vm2"#];
        let plan = self.plan("p", &serde_json::json!({"patches": [patch], "allow_unsigned": true, "canary": {"count": 1}, "parallelism": 2, "failure_budget": 1, "gates": {"probe": probe}}));
        let text = |p: PathBuf| p.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", p.display())).to_owned();
        (text(inv), text(plan))
    }

    /// After kill point `k` and its resume, [`Fleet::resume_plan`]'s rollout
    /// ended as planned: vm0 and vm1 patched, vm2 applied once and reverted
    /// once, each applied exactly once, the registries agreeing, the rollout done.
    pub fn check_resumed(&self, steps: &[Step], k: u64) {
        for (i, end) in [(0, "patched"), (1, "patched"), (2, "reverted")] {
            let n = Fleet::name(i);
            assert_eq!(outcome(steps, &n), Some(end), "k={k}: {n}");
            assert_eq!(count(steps, &n, Op::Apply, "ok"), 1, "k={k}: {n} applied exactly once: {steps:#?}");
            // An apply intent cut before its request is closed `not_applied` by resume; nothing was refused (already_applied).
            let other: Vec<_> = steps.iter().filter(|s| s.target == n && s.op == Op::Apply && s.phase == "done" && !matches!(s.result.as_deref(), Some("ok" | "not_applied"))).collect();
            assert!(other.is_empty(), "k={k}: {n}: {other:?}");
            let registry = self.registry(i);
            if end == "patched" {
                assert_eq!(registry, ["step_b_v2"], "k={k}: {n}");
            } else {
                assert!(registry.is_empty(), "k={k}: {n} reverted");
                assert_eq!(count(steps, &n, Op::Revert, "ok"), 1, "k={k}: {n} reverted once");
            }
        }
        assert_eq!(steps.iter().rev().find(|s| s.op == Op::State).and_then(|s| s.result.as_deref()), Some("done"), "k={k}");
    }

    /// The names in VM `i`'s registry (`GET /patches`, checked against the OpenAPI document).
    pub fn registry(&self, i: usize) -> Vec<String> {
        let v = self.vms[i].get_json("/patches");
        v["patches"].as_array().unwrap_or_else(|| panic!("no patch list: {v}")).iter().map(|p| p["name"].as_str().unwrap_or_default().to_owned()).collect()
    }
}

/// A probe gate that holds target `vm0` (the canary) until the file
/// `release` exists, and passes every other target at once.
pub fn holding_probe(release: &Path) -> serde_json::Value {
    let script = format!(r#"test "$VSPLICE_TARGET" != vm0 || while [ ! -e {} ]; do sleep 0.1; done"#, release.display());
    serde_json::json!({"probe": ["sh", "-c", script], "probe_timeout_ms": 600_000})
}

/// `--register STORE --register-id vmI --register-ttl TTL --label host=a|b
/// --label zone=z1` for VM `i` of a fleet (host `a` for even `i`, `b` for
/// odd, as [`Fleet::inventory`] labels them).
pub fn register_args(store: &str, i: usize, ttl_s: u64) -> Vec<String> {
    let host = if i.is_multiple_of(2) { "a" } else { "b" };
    ["--register", store, "--register-id", &Fleet::name(i), "--register-ttl", &ttl_s.to_string(), "--label", &format!("host={host}"), "--label", "zone=z1"].map(str::to_owned).to_vec()
}

/// The targets registered in `store` now (`etcd://…`, `dir:…`), by id, and
/// the reader's notes on the entries it left out.
pub fn registered(store: &str) -> (std::collections::BTreeMap<String, Registration>, Vec<String>) {
    let s = Store::parse(store).unwrap_or_else(|e| panic!("{store}: {e}"));
    let l = read::list(&s, 1000).unwrap_or_else(|e| panic!("{store}: {e}"));
    (l.targets.into_iter().map(|(r, _)| (r.id.clone(), r)).collect(), l.notes)
}

/// Waits up to `timeout` for `pred` over the targets registered in `store`;
/// the time it took, or `None`.
pub fn wait_registered(store: &str, timeout: std::time::Duration, pred: impl Fn(&std::collections::BTreeMap<String, Registration>) -> bool) -> Option<std::time::Duration> {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < timeout {
        if pred(&registered(store).0) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

/// Runs `vsplice fleet --journal J args…`; with `kill_at`, the controller
/// SIGKILLs itself after that many journal records.
pub fn fleet(journal: &Path, args: &[&str], kill_at: Option<u64>) -> Output {
    let bin = if kill_at.is_some() { crate::cli::vsplice_bin_with_fault_injection() } else { crate::cli::vsplice_bin() };
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("fleet").arg("--journal").arg(journal).args(args).stdin(std::process::Stdio::null());
    if let Some(k) = kill_at {
        cmd.env("VSPLICE_FLEET_KILL_AT_STEP", k.to_string());
    }
    cmd.output().unwrap_or_else(|e| panic!("vsplice fleet: {e}"))
}

/// Every record of a journal no controller holds.
pub fn steps(journal: &Path) -> Vec<Step> {
    Journal::open(journal).and_then(|j| j.steps()).unwrap_or_else(|e| panic!("{}: {e}", journal.display()))
}

/// Every record of a journal kept in etcd (`etcd://…`), read without its
/// lock (a controller may hold it).
pub fn etcd_steps(url: &str) -> Vec<Step> {
    Journal::open_reader(Path::new(url), std::time::Duration::ZERO).and_then(|j| j.steps()).unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Done records of `target` for `op` with `result`.
pub fn count(steps: &[Step], target: &str, op: Op, result: &str) -> usize {
    steps.iter().filter(|s| s.target == target && s.op == op && s.phase == "done" && s.result.as_deref() == Some(result)).count()
}

/// The last outcome recorded for `target`.
pub fn outcome<'a>(steps: &'a [Step], target: &str) -> Option<&'a str> {
    steps.iter().rev().find(|s| s.target == target && s.op == Op::Outcome).and_then(|s| s.result.as_deref())
}

/// Output as text for assertion messages.
pub fn said(o: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", o.status.code(), crate::cli::text(&o.stdout), crate::cli::text(&o.stderr))
}
