//! The durable journal: one redb file on the controller's host. Every step
//! is recorded before it is taken (`intent`) and after it completes
//! (`done`, with its result), each record its own committed (fsync'd) write
//! transaction, so a controller killed at any moment leaves a journal that
//! says what it was doing. `meta` holds the rollout (the plan, the patches,
//! every target's patch and wave) and the rollout's state.
//!
//! redb rather than SQLite: pure Rust (no C library to build), one file,
//! ACID with a copy-on-write B-tree and a file lock that keeps a second
//! process out while a controller holds the journal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::etcd::{Etcd, Held};
use super::plan::Rollout;
use super::{now_ms, FleetError};

const STEPS: TableDefinition<u64, &str> = TableDefinition::new("steps");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `PUT /patches` on a target.
    Apply,
    /// `DELETE /patches/{name}` on a target.
    Revert,
    /// The health gates of a target.
    Gate,
    /// A target's end: `patched`, `reverted`, `failed`, `rolled_back`.
    Outcome,
    /// The rollout's state changed (`running`, `paused`, `halting`, `halted`, …).
    State,
    /// A wave began (`target` is empty, `patch` the wave number).
    Wave,
    /// `resume` read a target's registry for a step left without its end.
    Reconcile,
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Sequence number (the key).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The target's name (empty for the rollout's own steps).
    pub target: String,
    /// The patch's name (or the wave, the state).
    pub patch: String,
    /// What.
    pub op: Op,
    /// `intent` (about to be taken) or `done`.
    pub phase: String,
    /// The intent this completes (done records).
    pub intent: Option<u64>,
    /// `ok`, or the cause (done records), or the outcome / state.
    pub result: Option<String>,
    /// More: a refusal's message, a gate's baseline.
    pub detail: String,
}

/// Test-only: `VSPLICE_FLEET_KILL_AT_STEP=N` SIGKILLs the controller right
/// after its N-th journal record is committed (the crash tests).
#[cfg(feature = "fault-injection")]
fn fault_point(written: u64) {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("VSPLICE_FLEET_KILL_AT_STEP").ok().and_then(|v| v.parse().ok()));
    if *at == Some(written) {
        // SAFETY: kill(2) on our own pid with SIGKILL; no memory is involved.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
fn fault_point(_written: u64) {}

/// Where the journal is kept.
#[derive(Debug)]
enum Store {
    /// One redb file (the default).
    Redb(Database),
    /// etcd (`etcd://HOST:PORT,…/PREFIX`): the lock when this process holds it
    /// (`None`: a reader, which never writes), and the next sequence number.
    Etcd { etcd: Etcd, held: Option<Held>, next: AtomicU64 },
}

/// The journal, open.
#[derive(Debug)]
pub struct Journal {
    store: Store,
    path: PathBuf,
    written: AtomicU64,
    write_ns: AtomicU64,
}

fn step_key(seq: u64) -> String {
    format!("steps/{seq:020}")
}

fn jerr(path: &Path) -> impl Fn(String) -> FleetError + '_ {
    move |why| FleetError::Journal { path: path.to_owned(), why }
}

impl Journal {
    /// Opens an existing journal (`NoRollout` when there is none), waiting
    /// up to `wait` while another process holds it (a `status` reads it
    /// briefly); `Busy` when it is still held then (a running controller).
    pub fn open_existing(path: &Path, wait: std::time::Duration) -> Result<Self, FleetError> {
        if Self::etcd_url(path).is_none() && !path.is_file() {
            return Err(FleetError::NoRollout(path.to_owned()));
        }
        Self::open_waiting(path, wait)
    }

    /// [`Self::open`], waiting up to `wait` while another process holds the journal.
    pub fn open_waiting(path: &Path, wait: std::time::Duration) -> Result<Self, FleetError> {
        let end = Instant::now() + wait;
        loop {
            match Self::open(path) {
                // etcd: each try grants a lease; no need to try more often than a few times a second.
                Err(FleetError::Busy(_)) if Instant::now() < end => std::thread::sleep(std::time::Duration::from_millis(if Self::is_etcd(path) { 200 } else { 20 })),
                r => return r,
            }
        }
    }

    fn etcd_url(path: &Path) -> Option<Etcd> {
        path.to_str().and_then(Etcd::parse)
    }

    /// True when the journal is kept in etcd.
    pub fn is_etcd(path: &Path) -> bool {
        Self::etcd_url(path).is_some()
    }

    fn with_store(store: Store, path: &Path) -> Self {
        Self { store, path: path.to_owned(), written: AtomicU64::new(0), write_ns: AtomicU64::new(0) }
    }

    fn open_etcd(etcd: Etcd, path: &Path, lock: bool) -> Result<Self, FleetError> {
        let e = jerr(path);
        let held = if lock {
            match Held::take(&etcd).map_err(&e)? {
                Some(h) => Some(h),
                None => return Err(FleetError::Busy(path.to_owned())),
            }
        } else {
            None
        };
        let last = etcd.values(&etcd.key("steps/")).map_err(&e)?.last().and_then(|v| serde_json::from_str::<Step>(v).ok()).map_or(0, |s| s.seq);
        Ok(Self::with_store(Store::Etcd { etcd, held, next: AtomicU64::new(last + 1) }, path))
    }

    /// Opens the journal to read it only: an etcd journal without taking its
    /// lock (a controller may be running); a file as [`Self::open_existing`].
    pub fn open_reader(path: &Path, wait: std::time::Duration) -> Result<Self, FleetError> {
        match Self::etcd_url(path) {
            Some(etcd) => Self::open_etcd(etcd, path, false),
            None => Self::open_existing(path, wait),
        }
    }

    /// Opens (or creates) the journal; `Busy` when another process holds it
    /// (the file's lock, or etcd's lock under another controller's lease).
    pub fn open(path: &Path) -> Result<Self, FleetError> {
        if let Some(etcd) = Self::etcd_url(path) {
            return Self::open_etcd(etcd, path, true);
        }
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(FleetError::Busy(path.to_owned())),
            Err(e) => return Err(jerr(path)(e.to_string())),
        };
        // The tables exist from the first open on.
        let tx = db.begin_write().map_err(|e| jerr(path)(e.to_string()))?;
        tx.open_table(STEPS).map_err(|e| jerr(path)(e.to_string()))?;
        tx.open_table(META).map_err(|e| jerr(path)(e.to_string()))?;
        tx.commit().map_err(|e| jerr(path)(e.to_string()))?;
        Ok(Self::with_store(Store::Redb(db), path))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An etcd write, fenced by this controller's lease.
    fn etcd_put(&self, etcd: &Etcd, held: Option<&Held>, key: &str, value: &str) -> Result<(), FleetError> {
        let e = jerr(&self.path);
        let held = held.ok_or_else(|| e("opened to read only".into()))?;
        if !held.alive.load(Ordering::Acquire) || !etcd.put_fenced(&etcd.key(key), value, &etcd.key("lock"), held.lease).map_err(&e)? {
            return Err(e("this controller's etcd lease is lost: another controller may act; stopping".into()));
        }
        Ok(())
    }

    /// Before a request to a target (apply, revert): in etcd, the lock must
    /// still be bound to this controller's lease, read now from the store
    /// (a controller that lost its lease sends nothing more; the keep-alive
    /// thread's flag alone could be a third of the TTL late).
    pub fn fence(&self) -> Result<(), FleetError> {
        if let Store::Etcd { etcd, held: Some(h), .. } = &self.store {
            let e = jerr(&self.path);
            if !h.alive.load(Ordering::Acquire) || etcd.lease_of(&etcd.key("lock")).map_err(&e)? != Some(h.lease) {
                return Err(e("this controller's etcd lease is lost: no request is sent to the target; stopping".into()));
            }
        }
        Ok(())
    }

    /// The operator's request waiting for the controller (`pause`, `abort`, `rollback`).
    pub fn control(&self) -> Option<String> {
        match &self.store {
            Store::Etcd { etcd, .. } => etcd.get(&etcd.key("control")).ok().flatten(),
            Store::Redb(_) => std::fs::read_to_string(control_file(&self.path)).ok(),
        }
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
    }

    /// Forgets the operator's request (it was acted on, or a new run begins).
    pub fn clear_control(&self) {
        match &self.store {
            Store::Etcd { etcd, .. } => {
                let _ = etcd.delete(&etcd.key("control"));
            }
            Store::Redb(_) => {
                let _ = std::fs::remove_file(control_file(&self.path));
            }
        }
    }

    fn put_meta(&self, key: &str, value: &str) -> Result<(), FleetError> {
        let e = jerr(&self.path);
        let db = match &self.store {
            Store::Redb(db) => db,
            Store::Etcd { etcd, held, .. } => return self.etcd_put(etcd, held.as_ref(), &format!("meta/{key}"), value),
        };
        let tx = db.begin_write().map_err(|x| e(x.to_string()))?;
        tx.open_table(META).map_err(|x| e(x.to_string()))?.insert(key, value).map_err(|x| e(x.to_string()))?;
        tx.commit().map_err(|x| e(x.to_string()))
    }

    fn get_meta(&self, key: &str) -> Result<Option<String>, FleetError> {
        let e = jerr(&self.path);
        let db = match &self.store {
            Store::Redb(db) => db,
            Store::Etcd { etcd, .. } => return etcd.get(&etcd.key(&format!("meta/{key}"))).map_err(e),
        };
        let tx = db.begin_read().map_err(|x| e(x.to_string()))?;
        let t = tx.open_table(META).map_err(|x| e(x.to_string()))?;
        Ok(t.get(key).map_err(|x| e(x.to_string()))?.map(|v| v.value().to_owned()))
    }

    /// Stores the rollout (once, at `start`).
    pub fn set_rollout(&self, rollout: &Rollout) -> Result<(), FleetError> {
        let json = serde_json::to_string(rollout).map_err(|x| jerr(&self.path)(x.to_string()))?;
        self.put_meta("rollout", &json)
    }

    /// The rollout, if `start` stored one.
    pub fn rollout(&self) -> Result<Option<Rollout>, FleetError> {
        match self.get_meta("rollout")? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s).map(Some).map_err(|x| jerr(&self.path)(format!("the stored rollout: {x}"))),
        }
    }

    /// Appends one record (its own committed transaction): an intent
    /// (`done: None`) or a done record completing `done: Some(intent)`
    /// (`Some(None)` for a fact); returns its sequence number.
    fn record(&self, target: &str, patch: &str, op: Op, done: Option<Option<u64>>, result: Option<&str>, detail: &str) -> Result<u64, FleetError> {
        let (phase, intent) = match done {
            None => ("intent", None),
            Some(i) => ("done", i),
        };
        let e = jerr(&self.path);
        let started = Instant::now();
        let make = |seq| Step {
            seq,
            time_ms: now_ms(),
            target: target.to_owned(),
            patch: patch.to_owned(),
            op,
            phase: phase.to_owned(),
            intent,
            result: result.map(str::to_owned),
            detail: detail.to_owned(),
        };
        let seq = match &self.store {
            Store::Etcd { etcd, held, next } => {
                // One controller writes (the lock); its records are numbered here.
                let seq = next.fetch_add(1, Ordering::AcqRel);
                let json = serde_json::to_string(&make(seq)).map_err(|x| e(x.to_string()))?;
                self.etcd_put(etcd, held.as_ref(), &step_key(seq), &json)?;
                seq
            }
            Store::Redb(db) => self.record_redb(db, make)?,
        };
        self.write_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let n = self.written.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(seq, target, ?op, phase, ?result, "journal");
        fault_point(n);
        Ok(seq)
    }

    fn record_redb(&self, db: &Database, make: impl Fn(u64) -> Step) -> Result<u64, FleetError> {
        let e = jerr(&self.path);
        let tx = db.begin_write().map_err(|x| e(x.to_string()))?;
        let seq = {
            let mut t = tx.open_table(STEPS).map_err(|x| e(x.to_string()))?;
            let seq = t.last().map_err(|x| e(x.to_string()))?.map_or(1, |(k, _)| k.value() + 1);
            let json = serde_json::to_string(&make(seq)).map_err(|x| e(x.to_string()))?;
            t.insert(seq, json.as_str()).map_err(|x| e(x.to_string()))?;
            seq
        };
        tx.commit().map_err(|x| e(x.to_string()))?;
        Ok(seq)
    }

    /// Records an intent; returns its sequence number for [`Self::done`].
    pub fn intent(&self, target: &str, patch: &str, op: Op, detail: &str) -> Result<u64, FleetError> {
        self.record(target, patch, op, None, None, detail)
    }

    /// Records the end of intent `seq`.
    pub fn done(&self, seq: u64, target: &str, patch: &str, op: Op, result: &str, detail: &str) -> Result<u64, FleetError> {
        self.record(target, patch, op, Some(Some(seq)), Some(result), detail)
    }

    /// Records a fact with no intent (an outcome, a state, a wave).
    pub fn fact(&self, target: &str, patch: &str, op: Op, result: &str, detail: &str) -> Result<u64, FleetError> {
        self.record(target, patch, op, Some(None), Some(result), detail)
    }

    /// Every record, in order.
    pub fn steps(&self) -> Result<Vec<Step>, FleetError> {
        let e = jerr(&self.path);
        let db = match &self.store {
            Store::Redb(db) => db,
            Store::Etcd { etcd, .. } => {
                let values = etcd.values(&etcd.key("steps/")).map_err(&e)?;
                return values.iter().map(|v| serde_json::from_str(v).map_err(|x| e(format!("a record: {x}")))).collect();
            }
        };
        let tx = db.begin_read().map_err(|x| e(x.to_string()))?;
        let t = tx.open_table(STEPS).map_err(|x| e(x.to_string()))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|x| e(x.to_string()))? {
            let (_, v) = row.map_err(|x| e(x.to_string()))?;
            out.push(serde_json::from_str(v.value()).map_err(|x| e(format!("a record: {x}")))?);
        }
        Ok(out)
    }

    /// Records written by this process and the time they took (ns).
    pub fn write_stats(&self) -> (u64, u64) {
        (self.written.load(Ordering::Relaxed), self.write_ns.load(Ordering::Relaxed))
    }
}

/// The control file beside a journal file (`JOURNAL.control`).
pub fn control_file(journal: &Path) -> PathBuf {
    let mut p = journal.as_os_str().to_owned();
    p.push(".control");
    PathBuf::from(p)
}

/// Leaves an operator's request (`pause`, `abort`, `rollback`) for the
/// controller holding the journal: in etcd, or in the control file.
pub fn request(journal: &Path, what: &str) -> Result<(), FleetError> {
    match Journal::etcd_url(journal) {
        Some(etcd) => etcd.put_fenced(&etcd.key("control"), what, "", 0).map(|_| ()).map_err(jerr(journal)),
        None => {
            let p = control_file(journal);
            std::fs::write(&p, what).map_err(|source| FleetError::Read { path: p, source })
        }
    }
}

/// Intents with no `done` yet (what a killed controller was doing).
pub fn open_intents(steps: &[Step]) -> Vec<&Step> {
    let done: std::collections::BTreeSet<u64> = steps.iter().filter_map(|s| s.intent).collect();
    steps.iter().filter(|s| s.phase == "intent" && !done.contains(&s.seq)).collect()
}

/// The rollout's last recorded state (`None` before any).
pub fn state(steps: &[Step]) -> Option<&str> {
    steps.iter().rev().find(|s| s.op == Op::State).and_then(|s| s.result.as_deref())
}

/// Each target's recorded outcome (the last one).
pub fn outcomes(steps: &[Step]) -> std::collections::BTreeMap<&str, &str> {
    steps.iter().filter(|s| s.op == Op::Outcome).filter_map(|s| Some((s.target.as_str(), s.result.as_deref()?))).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_survive_reopening_and_open_intents_are_found() {
        let dir = std::env::temp_dir().join(format!("vsplice-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j.redb");
        let _ = std::fs::remove_file(&path);
        {
            let j = Journal::open(&path).unwrap();
            assert!(matches!(Journal::open(&path), Err(FleetError::Busy(_))), "a second opener is kept out");
            j.fact("", "", Op::State, "running", "").unwrap();
            let a = j.intent("vm0", "fix", Op::Apply, "").unwrap();
            j.done(a, "vm0", "fix", Op::Apply, "ok", "").unwrap();
            j.intent("vm1", "fix", Op::Apply, "").unwrap();
            j.fact("vm0", "fix", Op::Outcome, "patched", "").unwrap();
            assert_eq!(j.write_stats().0, 5);
        }
        let j = Journal::open(&path).unwrap();
        let steps = j.steps().unwrap();
        assert_eq!(steps.iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        let open = open_intents(&steps);
        assert_eq!((open.len(), open[0].target.as_str()), (1, "vm1"));
        assert_eq!(state(&steps), Some("running"));
        assert_eq!(outcomes(&steps).get("vm0"), Some(&"patched"));
        assert!(j.rollout().unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
