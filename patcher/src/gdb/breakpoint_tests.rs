//! Hardware breakpoints against the mock gdbstub: a stop on one of ours is
//! told apart by the vCPU's RIP from a stop someone else caused (`SIGINT`)
//! and from a debug stop nobody waits on (a breakpoint an earlier client
//! left: removed), stepping over ours keeps it set, and a stub without
//! `Z1` is a clear `unsupported`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::link::Stream;
use super::mock::{self, MockConfig};
use super::*;
use crate::model::backend::Backend;

const HOOK: u64 = 0xffff_ffff_8110_2030;

fn backend(hw: bool) -> (GdbBackend, std::sync::Arc<std::sync::Mutex<mock::MockState>>) {
    let opts = GdbOptions { timeout: Duration::from_millis(500), stop_timeout: Duration::from_millis(500), ..GdbOptions::default() };
    let (s, st, _h) = mock::start(MockConfig { no_ack: true, phys: true, hw_breakpoints: hw, ..Default::default() }, 0, vec![0; 64]);
    (GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts).unwrap()).unwrap(), st)
}

/// Arms a stop on the mock's next continue, once it has served the last one.
fn on_next_cont(st: &std::sync::Arc<std::sync::Mutex<mock::MockState>>, hit: (u64, u64)) {
    let t0 = Instant::now();
    while !st.lock().unwrap().running {
        assert!(t0.elapsed() < Duration::from_secs(10), "the mock never continued");
        std::thread::sleep(Duration::from_millis(1));
    }
    st.lock().unwrap().hit_on_cont = Some(hit);
}

/// Polls like the daemon's loop until the stub reports a stop.
fn wait_stopped(be: &mut GdbBackend) {
    let t0 = Instant::now();
    while be.is_running() {
        be.check_alive().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10), "no stop reported");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_stop_on_our_breakpoint_is_told_apart_by_rip_and_stepped_over() {
    let (mut be, st) = backend(true);
    be.resume().unwrap();
    be.sync_breakpoints(&BTreeSet::from([HOOK])).unwrap();
    assert!(be.is_running(), "set while running: the guest runs on");
    assert_eq!(st.lock().unwrap().breakpoints, vec![HOOK]);
    assert!(st.lock().unwrap().log.iter().any(|l| l == &format!("Z1,{HOOK:x},1")), "a hardware breakpoint, never Z0");

    // vCPU 1 (thread 2) reaches the hook.
    on_next_cont(&st, (2, HOOK));
    be.stop().unwrap();
    be.resume().unwrap();
    wait_stopped(&mut be);
    let Some(OwnStop::Hook(hit)) = be.own_stop().unwrap() else { panic!("our breakpoint") };
    assert_eq!((hit.index, hit.rip), (1, HOOK));
    assert_eq!(hit.gprs[5], mock::reg_value(2, 5), "the registers at the hook (rdi: the hook's argument)");
    assert!(be.own_stop().unwrap().is_none(), "one stop is looked at once");
    be.step_over(hit.index, HOOK).unwrap();
    let s = st.lock().unwrap();
    assert_eq!(s.steps, 1);
    assert_eq!(s.breakpoints, vec![HOOK], "set again after the step");
    assert!(s.log.iter().any(|l| l == &format!("z1,{HOOK:x},1")), "removed for the step");
    drop(s);
    be.resume().unwrap();
    assert!(be.is_running());

    // Someone else stops the guest (no breakpoint where it is): not ours.
    on_next_cont(&st, (1, 0x1234));
    be.stop().unwrap();
    be.resume().unwrap();
    wait_stopped(&mut be);
    assert_eq!(be.own_stop().unwrap(), Some(OwnStop::External(2)), "a SIGINT stop is someone else's");

    // A breakpoint a dead client left (still in the stub) stops vCPU 0: stray.
    const LEFT: u64 = 0xffff_ffff_8110_4000;
    st.lock().unwrap().breakpoints.push(LEFT);
    be.resume().unwrap();
    on_next_cont(&st, (1, LEFT));
    be.stop().unwrap();
    be.resume().unwrap();
    wait_stopped(&mut be);
    let Some(OwnStop::Stray(rips)) = be.own_stop().unwrap() else { panic!("a debug stop at none of ours is stray") };
    assert!(rips.contains(&LEFT), "{rips:x?}");
    assert_eq!(be.clear_stray(&rips), vec![LEFT], "only the left breakpoint is removed");
    assert_eq!(st.lock().unwrap().breakpoints, vec![HOOK], "ours stays set");
    assert!(be.clear_stray(&rips).is_empty(), "nothing left to remove");

    // Nothing wanted: removed.
    be.sync_breakpoints(&BTreeSet::new()).unwrap();
    assert!(st.lock().unwrap().breakpoints.is_empty() && be.breakpoints().is_empty());
}

#[test]
fn a_stub_without_hardware_breakpoints_is_unsupported_and_the_guest_runs_on() {
    let (mut be, st) = backend(false);
    be.resume().unwrap();
    let e = be.sync_breakpoints(&BTreeSet::from([HOOK])).unwrap_err();
    assert_eq!(e.cause(), "unsupported", "{e}");
    assert!(e.to_string().contains("Z1"), "{e}");
    assert!(be.breakpoints().is_empty(), "nothing recorded as set");
    assert!(be.is_running(), "resumed after the attempt");
    assert!(!st.lock().unwrap().log.iter().any(|l| l.starts_with("Z0")), "never a software breakpoint");
}

