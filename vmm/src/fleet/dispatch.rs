//! The worker pool of one wave: `workers` threads take targets from a
//! queue in order, skipping a target whose host already has `per_host` in
//! flight; before taking one, each reads the operator's request (`pause`,
//! `abort`, `rollback`). A failure beyond `halt_after` stops the queue
//! (`halt`); targets in flight finish either way.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex};

use super::plan::Planned;
use super::FleetError;

/// How a wave's targets may be taken.
#[derive(Debug, Clone)]
pub struct Limits<'a> {
    /// Targets in flight at once.
    pub workers: usize,
    /// Targets in flight on one host (0: no limit).
    pub per_host: usize,
    /// The label naming a target's host.
    pub host_label: &'a str,
    /// Failures tolerated (counting those before the wave); one more halts.
    pub halt_after: usize,
}

#[derive(Debug, Default)]
struct Queue<'a> {
    pending: VecDeque<&'a Planned>,
    on_host: BTreeMap<String, usize>,
    failures: usize,
    stop: Option<&'static str>,
}

/// How one target ended, as the wave counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Patched (or nothing to do).
    Patched,
    /// Failed: counts against the failure budget.
    Failed,
    /// Its registration went before it was touched (the VMM ended, its
    /// lease expired): reported `unreachable`, not counted as a failure.
    Unreachable,
}

/// Runs `process` on every target of `todo` within
/// `limits`; returns why the wave stopped early (`halt`, `pause`, `abort`,
/// `rollback`), and the failures so far (`failures` before it, plus its own).
/// The first error of `process` stops the queue and is returned.
pub fn run<'a>(
    todo: Vec<&'a Planned>,
    failures: usize,
    limits: &Limits<'_>,
    control: impl Fn() -> Option<String> + Sync,
    process: impl Fn(&'a Planned) -> Result<Ended, FleetError> + Sync,
) -> Result<(Option<&'static str>, usize), FleetError> {
    let workers = limits.workers.min(todo.len()).max(1);
    let queue = Mutex::new(Queue { pending: todo.into(), failures, ..Queue::default() });
    let cv = Condvar::new();
    let error: Mutex<Option<FleetError>> = Mutex::new(None);
    let host_of = |p: &Planned| p.target.labels.get(limits.host_label).cloned().unwrap_or_default();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let next = {
                    let Ok(mut q) = queue.lock() else { return };
                    loop {
                        if q.stop.is_none() {
                            q.stop = match control().as_deref() {
                                Some("pause") => Some("pause"),
                                Some("abort") => Some("abort"),
                                Some("rollback") => Some("rollback"),
                                _ => None,
                            };
                        }
                        if q.stop.is_some() || q.pending.is_empty() {
                            return;
                        }
                        let free = q.pending.iter().position(|p| limits.per_host == 0 || q.on_host.get(&host_of(p)).copied().unwrap_or(0) < limits.per_host);
                        if let Some(i) = free {
                            let Some(p) = q.pending.remove(i) else { return };
                            *q.on_host.entry(host_of(p)).or_default() += 1;
                            break p;
                        }
                        q = match cv.wait(q) {
                            Ok(q) => q,
                            Err(_) => return,
                        };
                    }
                };
                let result = process(next);
                let Ok(mut q) = queue.lock() else { return };
                if let Some(n) = q.on_host.get_mut(&host_of(next)) {
                    *n = n.saturating_sub(1);
                }
                match result {
                    Ok(Ended::Patched | Ended::Unreachable) => {}
                    Ok(Ended::Failed) => {
                        q.failures += 1;
                        if q.failures > limits.halt_after {
                            q.stop = Some("halt");
                        }
                    }
                    Err(e) => {
                        q.stop = Some("error");
                        if let Ok(mut slot) = error.lock() {
                            slot.get_or_insert(e);
                        }
                    }
                }
                cv.notify_all();
            });
        }
    });
    if let Some(e) = error.into_inner().ok().flatten() {
        return Err(e);
    }
    let q = queue.into_inner().map_err(|_| FleetError::invalid("engine", "a worker panicked"))?;
    Ok((q.stop, q.failures))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::fleet::inventory::Target;

    fn planned(n: usize, host: &str) -> Planned {
        Planned { target: Target { name: format!("t{n}"), api_sock: "/s".into(), labels: [("host".to_owned(), host.to_owned())].into(), origin: None }, build_id: None, release: None, patch: Some("p".into()), wave: Some(1), skip: None }
    }

    #[test]
    fn per_host_limit_kept_and_a_failure_past_the_budget_halts() {
        let targets: Vec<Planned> = (0..12).map(|i| planned(i, if i % 3 == 0 { "a" } else { "b" })).collect();
        let limits = Limits { workers: 6, per_host: 2, host_label: "host", halt_after: 0 };
        let in_flight: Mutex<BTreeMap<String, usize>> = Mutex::default();
        let max = AtomicUsize::new(0);
        let (stop, failures) = run(targets.iter().collect(), 0, &limits, || None, |p| {
            let host = p.target.labels["host"].clone();
            let n = {
                let mut m = in_flight.lock().unwrap();
                *m.entry(host.clone()).or_default() += 1;
                m[&host]
            };
            max.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            *in_flight.lock().unwrap().get_mut(&host).unwrap() -= 1;
            Ok(Ended::Patched)
        })
        .unwrap();
        assert_eq!((stop, failures), (None, 0));
        assert_eq!(max.load(Ordering::SeqCst), 2, "two per host at most, and the pool used it");
        // One worker: the second target fails, the budget is 1: the third is the last taken.
        let taken = AtomicUsize::new(0);
        let one = Limits { workers: 1, halt_after: 1, ..limits };
        let (stop, failures) = run(targets.iter().collect(), 1, &one, || None, |_| Ok(if taken.fetch_add(1, Ordering::SeqCst) == 0 { Ended::Patched } else { Ended::Failed })).unwrap();
        assert_eq!((stop, failures, taken.load(Ordering::SeqCst)), (Some("halt"), 2, 2));
        // A target whose registration went is not a failure: the budget of 0 is not exceeded.
        let gone = Limits { workers: 1, halt_after: 0, ..limits };
        let (stop, failures) = run(targets.iter().collect(), 0, &gone, || None, |p| Ok(if p.target.name == "t1" { Ended::Unreachable } else { Ended::Patched })).unwrap();
        assert_eq!((stop, failures), (None, 0));
        // An operator's pause: nothing taken.
        let (stop, _) = run(targets.iter().collect(), 0, &limits, || Some("pause".into()), |_| Ok(Ended::Patched)).unwrap();
        assert_eq!(stop, Some("pause"));
    }
}
