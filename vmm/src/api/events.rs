//! The event log `GET /events` long-polls and streams: transaction results
//! and guest state changes, numbered from 1, the newest [`KEEP`] kept. The
//! VMM thread only appends; readers wait on it. Closing it (the API server
//! ending) wakes every reader for good.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Events kept for late pollers.
pub const KEEP: usize = 1024;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Sequence number (1, 2, …).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `txn` or `guest_state`.
    pub kind: &'static str,
    /// For `txn`: the transaction's report (the same JSON as the CLI's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txn: Option<serde_json::Value>,
    /// For `guest_state`: the new state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    /// For `guest_state`: why (boot number, exit reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Default)]
struct Log {
    next: u64,
    events: VecDeque<Event>,
    closed: bool,
}

/// The log, shared by the VMM thread (writer) and the HTTP threads (readers).
#[derive(Debug, Default)]
pub struct EventLog {
    log: Mutex<Log>,
    added: Condvar,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl EventLog {
    fn push(&self, kind: &'static str, txn: Option<serde_json::Value>, state: Option<&'static str>, detail: Option<String>) {
        let Ok(mut log) = self.log.lock() else {
            return;
        };
        log.next += 1;
        let seq = log.next;
        log.events.push_back(Event { seq, time_ms: now_ms(), kind, txn, state, detail });
        while log.events.len() > KEEP {
            log.events.pop_front();
        }
        self.added.notify_all();
    }

    /// Records a transaction's result.
    pub fn txn(&self, report: &vsplice_patcher::txn::TxnReport) {
        let value = serde_json::to_value(report).unwrap_or(serde_json::Value::Null);
        self.push("txn", Some(value), None, None);
    }

    /// Records a guest state change.
    pub fn guest_state(&self, state: &'static str, detail: impl Into<String>) {
        self.push("guest_state", None, Some(state), Some(detail.into()));
    }

    /// Records what became of the booted kernel: `identified` (up and
    /// patchable; `detail` names it) or `unsupported` (`detail` says why).
    pub fn kernel(&self, state: &'static str, detail: impl Into<String>) {
        self.push("kernel", None, Some(state), Some(detail.into()));
    }

    /// Records what became of a module-bound patch: `pending`, `cancelled`,
    /// `applied_at_load`, `failed_at_load`, `module_unloaded`, and for the
    /// pending dir `restored`, `not_restored`, `not_kept` (`detail` names
    /// the patch, the module and its state).
    pub fn module(&self, state: &'static str, detail: impl Into<String>) {
        self.push("module", None, Some(state), Some(detail.into()));
    }

    /// The last sequence number given out.
    pub fn last_seq(&self) -> u64 {
        self.log.lock().map_or(0, |l| l.next)
    }

    /// Closes the log: readers waiting get what is left, then nothing more.
    pub fn close(&self) {
        if let Ok(mut log) = self.log.lock() {
            log.closed = true;
        }
        self.added.notify_all();
    }

    /// True once [`EventLog::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.log.lock().map_or(true, |l| l.closed)
    }

    /// Events with `seq > since`, waiting up to `wait` for the first one
    /// (not at all once the log is closed).
    pub fn since(&self, since: u64, wait: Duration) -> Vec<Event> {
        let deadline = Instant::now() + wait;
        let Ok(mut log) = self.log.lock() else {
            return Vec::new();
        };
        loop {
            if log.next > since {
                return log.events.iter().filter(|e| e.seq > since).cloned().collect();
            }
            if log.closed {
                return Vec::new();
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Vec::new();
            };
            log = match self.added.wait_timeout(log, left) {
                Ok((l, _)) => l,
                Err(_) => return Vec::new(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn since_returns_newer_events_and_times_out_empty() {
        let log = EventLog::default();
        log.guest_state("running", "boot 1");
        log.guest_state("exited", "power off");
        assert_eq!(log.since(0, Duration::ZERO).len(), 2);
        let newer = log.since(1, Duration::ZERO);
        assert_eq!(newer.len(), 1);
        assert_eq!(newer[0].seq, 2);
        assert!(log.since(2, Duration::from_millis(10)).is_empty());
        assert_eq!(log.last_seq(), 2);
    }

    #[test]
    fn closing_wakes_a_waiting_reader_and_keeps_what_is_left() {
        let log = std::sync::Arc::new(EventLog::default());
        log.guest_state("running", "boot 1");
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || log.since(1, Duration::from_secs(3600)))
        };
        log.close();
        assert!(reader.join().unwrap().is_empty());
        assert!(log.is_closed());
        assert_eq!(log.since(0, Duration::from_secs(3600)).len(), 1);
    }

    #[test]
    fn keeps_the_newest() {
        let log = EventLog::default();
        for _ in 0..KEEP + 5 {
            log.guest_state("running", "x");
        }
        let all = log.since(0, Duration::ZERO);
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].seq, 6);
    }
}
