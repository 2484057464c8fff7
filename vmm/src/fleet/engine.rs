//! The rollout engine: the canary (one target at a time), then the waves
//! (`parallelism` targets at once, at most `per_host` on one host), each
//! target applied, soaked and gated, reverted when a gate fails; a failed
//! canary or a failure budget exceeded halts the rollout and reverts the
//! current wave (or, `on_halt: revert_all`, every target). Every step goes
//! to the journal before and after it is taken.
//!
//! A target is applied at most once per rollout: before applying, the
//! engine reads the target's registry (the truth) and the journal; a patch
//! already there is not applied again, and a target the journal shows
//! applied is never applied again (if the patch has gone, it was reverted).
//! `resume` first closes every intent a killed controller left open with
//! what the target's registry says, then runs the engine again, which
//! skips every target with an outcome and finishes an interrupted halt or
//! rollback. `pause`, `abort` and `rollback` reach a running controller
//! through a control file beside the journal (`JOURNAL.control`), checked
//! before each target is taken.
//!
//! A target read from a registration store ([`crate::store`]) is looked up
//! there again before it is touched: one whose registration has gone (its
//! VMM ended, or died and its lease expired) is recorded `unreachable` and
//! not counted against the failure budget; one that is still registered but
//! does not answer has `failed`, as a target of an inventory file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::dispatch::{self, Ended, Limits};
use super::gates::{self, Baseline};
use super::history::{history, is_failure};
use super::inventory::{Inventory, Target};
use super::journal::{self, Journal, Op, Step};
use super::metrics;
use super::plan::{make_rollout, OnHalt, Plan, Planned, Rollout};
use super::target;
use super::FleetError;

/// How long a command waits for a journal another process holds: long
/// enough for a `status` to finish reading it, short of a running controller.
pub const HOLD_WAIT: Duration = Duration::from_millis(1500);

/// How a run of the engine ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Every wave done.
    Done,
    /// Halted (failed canary, budget exceeded); the halt's reverts done.
    Halted,
    /// Paused at an operator's request (`resume` goes on).
    Paused,
    /// Aborted at an operator's request (nothing reverted).
    Aborted,
    /// Every target reverted (`rollback`).
    RolledBack,
}

impl Finish {
    /// The state recorded in the journal.
    pub fn name(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Halted => "halted",
            Self::Paused => "paused",
            Self::Aborted => "aborted",
            Self::RolledBack => "rolled_back",
        }
    }
}

pub use super::journal::request;

/// A controller with its journal open.
#[derive(Debug)]
pub struct Controller {
    journal: Journal,
    rollout: Rollout,
    bytes: BTreeMap<String, Vec<u8>>,
}

fn loud_unsigned(rollout: &Rollout) {
    for p in rollout.patches.iter().filter(|p| p.unsigned) {
        eprintln!("vsplice: WARNING: the plan says allow_unsigned = true: patch {} ({}) is UNSIGNED, its author unknown (development only)", p.name, p.file.display());
    }
}

impl Controller {
    /// Dry run: the rollout `plan` would make over `inventory` (targets asked `GET /vm`).
    pub fn plan(inventory: &Inventory, plan: &Plan) -> Result<Rollout, FleetError> {
        let patches = plan.read_patches()?.into_iter().map(|(p, _)| p).collect();
        let rollout = make_rollout(plan, patches, inventory, |t| target::probe(&t.api_sock).map_err(|u| u.cause));
        loud_unsigned(&rollout);
        Ok(rollout)
    }

    /// `start`: a new rollout in a new journal.
    pub fn start(journal: &Path, inventory: &Inventory, plan: &Plan) -> Result<Self, FleetError> {
        let read = plan.read_patches()?;
        let j = Journal::open_waiting(journal, HOLD_WAIT)?;
        if j.rollout()?.is_some() {
            return Err(FleetError::JournalExists(journal.to_owned()));
        }
        j.clear_control();
        let patches = read.iter().map(|(p, _)| p.clone()).collect();
        let rollout = make_rollout(plan, patches, inventory, |t| target::probe(&t.api_sock).map_err(|u| u.cause));
        loud_unsigned(&rollout);
        j.set_rollout(&rollout)?;
        j.fact("", "", Op::State, "running", "start")?;
        let bytes = read.into_iter().map(|(p, b)| (p.name, b)).collect();
        Ok(Self { journal: j, rollout, bytes })
    }

    /// Opens the rollout of a journal (`resume`, `rollback`, `pause`, `abort`),
    /// the patches read again and checked; `Busy` when a controller holds it.
    pub fn open(journal: &Path) -> Result<Self, FleetError> {
        Self::open_waiting(journal, HOLD_WAIT)
    }

    /// [`Self::open`], waiting up to `wait` for the controller holding the
    /// journal to end (or, in etcd, for its lease to expire: a takeover).
    pub fn open_waiting(journal: &Path, wait: Duration) -> Result<Self, FleetError> {
        let j = Journal::open_existing(journal, wait)?;
        let rollout = j.rollout()?.ok_or_else(|| FleetError::NoRollout(journal.to_owned()))?;
        let read = rollout.plan.read_patches()?;
        for p in &rollout.patches {
            if !read.iter().any(|(r, _)| r.name == p.name && r.build_id == p.build_id) {
                return Err(FleetError::invalid(p.file.display().to_string(), "the patch file changed since the rollout started"));
            }
        }
        loud_unsigned(&rollout);
        let bytes = read.into_iter().map(|(p, b)| (p.name, b)).collect();
        Ok(Self { journal: j, rollout, bytes })
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The rollout.
    pub fn rollout(&self) -> &Rollout {
        &self.rollout
    }

    /// Writes the status snapshot and the metrics beside the journal.
    fn publish(&self) {
        if Journal::is_etcd(self.journal.path()) {
            return; // `status` reads etcd itself, while the controller runs.
        }
        if let Ok(steps) = self.journal.steps() {
            let st = metrics::status(&self.rollout, &steps);
            let base = self.journal.path().as_os_str().to_owned();
            let write = |ext: &str, text: String| {
                let mut p = base.clone();
                p.push(ext);
                let p = PathBuf::from(p);
                let mut tmp = p.clone().into_os_string();
                tmp.push(".tmp");
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, &p);
                }
            };
            write(".status.json", serde_json::to_string_pretty(&st).unwrap_or_default());
            write(".prom", metrics::prometheus(&st, Some(self.journal.write_stats())));
        }
    }

    /// Closes every intent a killed controller left open with what the
    /// target's registry says; returns how many.
    pub fn reconcile(&self) -> Result<usize, FleetError> {
        let steps = self.journal.steps()?;
        let open: Vec<Step> = journal::open_intents(&steps).into_iter().cloned().collect();
        for s in &open {
            let Some(p) = self.rollout.targets.iter().find(|p| p.target.name == s.target) else { continue };
            let present = target::applied(&p.target.api_sock).map(|names| names.contains(&s.patch));
            let result = match (s.op, present) {
                (_, Err(_)) => "unknown",
                (Op::Apply, Ok(true)) | (Op::Revert, Ok(false)) => "ok",
                (Op::Apply, Ok(false)) => "not_applied",
                (Op::Revert, Ok(true)) => "not_reverted",
                _ => "unknown",
            };
            self.journal.done(s.seq, &s.target, &s.patch, s.op, result, "reconciled with the target's registry after a restart")?;
        }
        Ok(open.len())
    }

    /// Runs (or goes on with) the rollout to its end, a halt, or an operator's request.
    pub fn run(&self) -> Result<Finish, FleetError> {
        let steps = self.journal.steps()?;
        match journal::state(&steps) {
            Some("done") => return Ok(Finish::Done),
            Some("halted") => return Ok(Finish::Halted),
            Some("aborted") => return Ok(Finish::Aborted),
            Some("rolled_back") => return Ok(Finish::RolledBack),
            Some("rolling_back") => return self.rollback(),
            Some(s) if s.starts_with("halting") => {
                let wave = s.strip_prefix("halting:").and_then(|w| w.parse().ok()).unwrap_or(0);
                return self.halt(wave);
            }
            Some("paused") => {
                self.journal.fact("", "", Op::State, "running", "resume")?;
            }
            _ => {}
        }
        self.journal.clear_control();
        let done = journal::outcomes(&steps).into_keys().map(str::to_owned).collect::<std::collections::BTreeSet<_>>();
        let outcomes = journal::outcomes(&steps);
        let failed: Vec<&Planned> = self.rollout.targets.iter().filter(|p| outcomes.get(p.target.name.as_str()).is_some_and(|o| is_failure(o))).collect();
        let mut failures = failed.len();
        let plan = &self.rollout.plan;
        // A controller killed between a failure and the halt it calls for: halt now, in the failed target's wave.
        let last_failed = steps.iter().rev().filter(|s| s.op == Op::Outcome && s.result.as_deref().is_some_and(is_failure)).find_map(|s| failed.iter().find(|p| p.target.name == s.target));
        if let Some(p) = last_failed {
            if failures > plan.failure_budget || failed.iter().any(|p| p.wave == Some(0)) {
                return self.halt(p.wave.unwrap_or(0));
            }
        }
        for wave in 0..self.rollout.waves {
            let todo: Vec<&Planned> = self.rollout.targets.iter().filter(|p| p.wave == Some(wave) && !done.contains(&p.target.name)).collect();
            if todo.is_empty() {
                continue;
            }
            self.journal.fact("", &wave.to_string(), Op::Wave, "begin", &format!("{} target(s)", todo.len()))?;
            let (stop, f) = self.run_wave(wave, todo, failures)?;
            failures = f;
            self.publish();
            match stop {
                Some("halt") => return self.halt(wave),
                Some("pause") => return self.finish(Finish::Paused),
                Some("abort") => return self.finish(Finish::Aborted),
                Some("rollback") => return self.rollback(),
                _ => {}
            }
            if wave + 1 < self.rollout.waves && plan.pause_ms > 0 {
                std::thread::sleep(Duration::from_millis(plan.pause_ms));
            }
        }
        self.finish(Finish::Done)
    }

    fn finish(&self, f: Finish) -> Result<Finish, FleetError> {
        self.journal.fact("", "", Op::State, f.name(), "")?;
        self.journal.clear_control();
        self.publish();
        Ok(f)
    }

    /// One wave: its targets handed to the workers ([`super::dispatch`]);
    /// returns why it stopped early and the failures so far.
    fn run_wave(&self, wave: usize, todo: Vec<&Planned>, failures: usize) -> Result<(Option<&'static str>, usize), FleetError> {
        let plan = &self.rollout.plan;
        let limits = Limits {
            workers: if wave == 0 { 1 } else { plan.parallelism },
            per_host: plan.per_host,
            host_label: &plan.host_label,
            // A failed canary halts; beyond the canary, failures past the budget do.
            halt_after: if wave == 0 { 0 } else { plan.failure_budget },
        };
        dispatch::run(todo, failures, &limits, || self.journal.control(), |p| self.process(p))
    }

    /// Records that `t` cannot be reached: `unreachable` when its
    /// registration has gone, else `failed` with the API's `u`.
    fn not_reached(&self, t: &Target, name: &str, u: &target::Unreachable) -> Result<Ended, FleetError> {
        if let Some(why) = t.deregistered() {
            self.journal.fact(&t.name, name, Op::Outcome, "unreachable", &format!("{why} ([{}] {})", u.cause, u.message))?;
            eprintln!("vsplice: fleet: target {} is unreachable: {why}", t.name);
            return Ok(Ended::Unreachable);
        }
        self.journal.fact(&t.name, name, Op::Outcome, "failed", &format!("[{}] {}", u.cause, u.message))?;
        Ok(Ended::Failed)
    }

    /// One target: apply (unless the registry or the journal says it was),
    /// soak, gates, revert on a gate's failure.
    fn process(&self, p: &Planned) -> Result<Ended, FleetError> {
        let (t, j) = (&p.target, &self.journal);
        let Some(name) = p.patch.as_deref() else { return Ok(Ended::Patched) };
        let history = history(&j.steps()?, &t.name);
        if !history.applied {
            if let Some(why) = t.deregistered() {
                j.fact(&t.name, name, Op::Outcome, "unreachable", &why)?;
                eprintln!("vsplice: fleet: target {} is unreachable: {why}", t.name);
                return Ok(Ended::Unreachable);
            }
        }
        let present = match target::applied(&t.api_sock) {
            Ok(names) => names.iter().any(|n| n == name),
            Err(u) if history.applied => {
                j.fact(&t.name, name, Op::Outcome, "failed", &format!("[{}] {}", u.cause, u.message))?;
                return Ok(Ended::Failed);
            }
            Err(u) => return self.not_reached(t, name, &u),
        };
        let baseline = if present {
            if history.gate_failed {
                // A gate failed before a restart: the target failed, whatever the revert does.
                return self.revert_target(p, "reverted").map(|_| Ended::Failed);
            }
            history.baseline.clone().unwrap_or_default()
        } else if history.applied {
            // Applied once by this rollout and gone since: reverted, never applied twice.
            j.fact(&t.name, name, Op::Outcome, if history.gate_failed { "reverted" } else { "failed" }, "the patch is no longer in the target's registry")?;
            return Ok(Ended::Failed);
        } else {
            let probe = match target::probe(&t.api_sock) {
                Ok(pr) => pr,
                Err(u) => return self.not_reached(t, name, &u),
            };
            let baseline = Baseline::of(&probe);
            let detail = serde_json::to_string(&baseline).unwrap_or_default();
            let seq = j.intent(&t.name, name, Op::Apply, &detail)?;
            let bytes = self.bytes.get(name).map_or(&[][..], Vec::as_slice);
            j.fence()?;
            let out = target::apply(&t.api_sock, bytes, self.rollout.plan.attempts);
            j.done(seq, &t.name, name, Op::Apply, &out.cause, &out.message)?;
            if !out.ok() {
                j.fact(&t.name, name, Op::Outcome, "failed", &format!("apply refused [{}]: {}", out.cause, out.message))?;
                self.publish();
                return Ok(Ended::Failed);
            }
            baseline
        };
        let soak = if p.wave == Some(0) { self.rollout.plan.canary.soak_ms } else { self.rollout.plan.soak_ms };
        std::thread::sleep(Duration::from_millis(soak));
        let seq = j.intent(&t.name, name, Op::Gate, "")?;
        let gate = gates::check(t, &self.rollout.plan.gates, &baseline);
        match gate {
            Ok(()) => {
                j.done(seq, &t.name, name, Op::Gate, "ok", "")?;
                j.fact(&t.name, name, Op::Outcome, "patched", "")?;
                self.publish();
                Ok(Ended::Patched)
            }
            Err(g) => {
                j.done(seq, &t.name, name, Op::Gate, g.gate, &g.detail)?;
                eprintln!("vsplice: fleet: target {} failed the {} gate: {}", t.name, g.gate, g.detail);
                self.revert_target(p, "reverted").map(|_| Ended::Failed)
            }
        }
    }

    /// Reverts `p` if its registry has the patch; records `outcome` (or
    /// `revert_failed`). True when the patch is gone.
    fn revert_target(&self, p: &Planned, outcome: &str) -> Result<bool, FleetError> {
        let (t, j) = (&p.target, &self.journal);
        let Some(name) = p.patch.as_deref() else { return Ok(true) };
        let present = match target::applied(&t.api_sock) {
            Ok(names) => names.iter().any(|n| n == name),
            Err(u) => {
                j.fact(&t.name, name, Op::Outcome, "revert_failed", &format!("[{}] {}", u.cause, u.message))?;
                return Ok(false);
            }
        };
        let gone = if present {
            let seq = j.intent(&t.name, name, Op::Revert, "")?;
            j.fence()?;
            let out = target::revert(&t.api_sock, name);
            j.done(seq, &t.name, name, Op::Revert, &out.cause, &out.message)?;
            out.ok()
        } else {
            true
        };
        j.fact(&t.name, name, Op::Outcome, if gone { outcome } else { "revert_failed" }, "")?;
        self.publish();
        Ok(gone)
    }

    /// Halts: reverts the targets of `wave` (or of every wave so far) whose registry has the patch.
    fn halt(&self, wave: usize) -> Result<Finish, FleetError> {
        self.journal.fact("", "", Op::State, &format!("halting:{wave}"), "")?;
        let all = self.rollout.plan.on_halt == OnHalt::RevertAll;
        for p in self.rollout.targets.iter().filter(|p| p.wave.is_some_and(|w| w == wave || (all && w < wave))) {
            self.revert_if_patched(p)?;
        }
        self.finish(Finish::Halted)
    }

    fn revert_if_patched(&self, p: &Planned) -> Result<(), FleetError> {
        let Some(name) = p.patch.as_deref() else { return Ok(()) };
        if target::applied(&p.target.api_sock).is_ok_and(|n| n.iter().any(|n| n == name)) {
            self.revert_target(p, "rolled_back")?;
        }
        Ok(())
    }

    /// `rollback`: reverts every target of the rollout whose registry has the patch.
    pub fn rollback(&self) -> Result<Finish, FleetError> {
        self.journal.fact("", "", Op::State, "rolling_back", "")?;
        for p in self.rollout.targets.iter().filter(|p| p.wave.is_some()) {
            self.revert_if_patched(p)?;
        }
        self.finish(Finish::RolledBack)
    }

    /// Records an operator's `pause` or `abort` on a journal no controller holds.
    pub fn set_state(&self, f: Finish) -> Result<(), FleetError> {
        self.finish(f).map(|_| ())
    }
}
