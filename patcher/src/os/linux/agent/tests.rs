//! Unit tests of the agent descriptor: the checksum against the C agent's
//! known answers, reading physically and virtually, every refusal, the
//! scan, and the agreement rules against an agentless walk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::find::scan_phys;
use super::layout::{self, vsa_sum, F_LIVE, F_OVERFLOW};
use super::read::Descriptor;
use super::testutil::{task, FakeAgent, OFF};
use crate::testing::RamGuest;
use super::{AgentError, AgentView, OneSided};
use crate::os::linux::tasks::Task;

fn guest_with(agent: &FakeAgent) -> RamGuest {
    let mut g = RamGuest::sparse();
    agent.install(&mut g);
    g
}

fn agent3() -> FakeAgent {
    FakeAgent::new(vec![task(1, "init"), task(2, "kthreadd"), task(300, "mthreads")])
}

#[test]
fn checksum_matches_the_c_agent() {
    // Known answers printed by vsa_sum() of guest-agent/vsplice_agent.h.
    let b: Vec<u8> = (0..64u32).map(|i| (i * 7 + 1) as u8).collect();
    assert_eq!(vsa_sum(&b), 0x4343_5343_b721_a785);
    assert_eq!(vsa_sum(&b[..8]), 0x9b85_d4bc_9a8f_9503);
    assert_eq!(vsa_sum(&[]), 0x243f_6a89_a458_5c97);
}

#[test]
fn reads_physically_through_the_page_list_and_virtually() {
    let a = FakeAgent::new((1..200).map(|n| task(n, &format!("t{n}"))).collect());
    let mut g = guest_with(&a);
    let d = Descriptor::read_phys(&mut g, a.phys).unwrap();
    assert_eq!(d.tasks, a.tasks);
    assert_eq!(d.cpus, a.cpus);
    assert_eq!(d.pages, a.table_pages);
    assert_eq!(d.header.offsets.thread_sp, 0x1a40);
    assert_eq!(d.header.task_count, 199);
    let v = Descriptor::read_virt(&mut g, a.virt, Some(a.phys)).unwrap();
    assert_eq!(v, d);
}

#[test]
fn odd_sequence_and_loading_are_retries_never_partial_lists() {
    let mut a = agent3();
    a.seq = 43;
    let e = Descriptor::read_phys(&mut guest_with(&a), a.phys).unwrap_err();
    assert!(matches!(e, AgentError::Busy { seq: 43 }) && e.is_retry(), "{e:?}");
    assert_eq!(e.cause(), "agent_busy");
    let mut a = agent3();
    a.flags &= !F_LIVE;
    let e = Descriptor::read_phys(&mut guest_with(&a), a.phys).unwrap_err();
    assert_eq!((e.cause(), e.is_retry()), ("agent_loading", true));
}

#[test]
fn refusals_each_have_their_cause() {
    let a = agent3();
    // Nothing there (unloaded: magic cleared).
    let mut g = guest_with(&a);
    g.put(a.phys, &[0u8; 16]);
    assert_eq!(Descriptor::read_phys(&mut g, a.phys).unwrap_err().cause(), "agent_absent");
    // Another version.
    let mut g = guest_with(&a);
    g.put(a.phys + 0x10, &2u32.to_le_bytes());
    let e = Descriptor::read_phys(&mut g, a.phys).unwrap_err();
    assert!(matches!(e, AgentError::Version { found: 2, supported: 1 }), "{e:?}");
    // Garbage in the header, in a CPU record, in the page list, in the table.
    for (off, what) in [(0x5c_u64, "header"), (0x100 + 20, "cpu record"), (0x100 + 2 * 208 + 8, "page list")] {
        let mut g = guest_with(&a);
        g.put(a.phys + off, &[0xa5, 0x5a]);
        let e = Descriptor::read_phys(&mut g, a.phys).unwrap_err();
        assert_eq!(e.cause(), "agent_corrupt", "{what}: {e:?}");
    }
    let mut g = guest_with(&a);
    g.put(a.table_pages[0] + 64 + 0x31, b"X");
    let e = Descriptor::read_phys(&mut g, a.phys).unwrap_err();
    assert!(e.to_string().contains("task table checksum"), "{e}");
    // Overflowed: unusable.
    let mut o = agent3();
    o.flags |= F_OVERFLOW;
    assert_eq!(Descriptor::read_phys(&mut guest_with(&o), o.phys).unwrap_err().cause(), "agent_overflow");
}

#[test]
fn a_copy_of_the_header_elsewhere_is_not_the_descriptor() {
    let a = agent3();
    let mut g = guest_with(&a);
    let (block, _) = a.bytes();
    g.put(0x10_0000, &block);
    let e = Descriptor::read_phys(&mut g, 0x10_0000).unwrap_err();
    assert!(e.to_string().contains("stale copy"), "{e}");
    // The scan skips the copy (and a page of bare magic) and finds the real one.
    g.put(0x8_0000, &block[..16]);
    let (found, st) = scan_phys(&mut g, &[0..0x0100_0000, 0x0100_0000..0x0200_0000], 64 << 10);
    assert_eq!(found, Some(a.phys));
    assert_eq!(st.magic_hits, 3);
    assert!(st.holes > 0, "sparse memory has holes: {st:?}");
    // Nothing past the end of the ranges.
    assert_eq!(scan_phys(&mut g, &[0..0x80_0000, 0x80_0000..0x0100_0000], 1 << 20).0, None);
}

fn walk_from(view: &AgentView) -> Vec<Task> {
    view.tasks.clone()
}

fn view_of(a: &FakeAgent, g: &mut RamGuest) -> AgentView {
    // The task_structs the refresh reads: state 1, on_cpu 0, cpu 1, sp.
    for t in &a.tasks {
        g.map_range(t.task, 0x2000_0000 + (t.task & 0xff_ffff), 0x2000);
        g.write_virt(t.task + u64::from(OFF[3].1), &1u32.to_le_bytes()).unwrap();
        g.write_virt(t.task + u64::from(OFF[5].1), &1u32.to_le_bytes()).unwrap();
        g.write_virt(t.task + u64::from(OFF[7].1), &(t.sp - 0x40).to_le_bytes()).unwrap();
        g.write_virt(t.task + u64::from(OFF[6].1), &t.stack.to_le_bytes()).unwrap();
    }
    let d = Descriptor::read_phys(g, a.phys).unwrap();
    AgentView::new(g, d).unwrap()
}

#[test]
fn refresh_reads_the_dynamic_fields_from_each_task() {
    let a = agent3();
    let mut g = guest_with(&a);
    let v = view_of(&a, &mut g);
    assert_eq!(v.tasks.len(), 3);
    for (t, e) in v.tasks.iter().zip(&a.tasks) {
        assert_eq!((t.addr, t.pid, t.comm.as_str(), t.stack), (e.task, e.pid, e.comm.as_str(), e.stack));
        assert_eq!((t.sp, t.cpu, t.state, t.on_cpu), (e.sp - 0x40, 1, 1, false));
    }
    assert_eq!(v.cpu_stacks.len(), 4);
    assert!(v.exiting.is_empty());
    // A zombie's stack is freed before the task: the live value (NULL) counts.
    let z = &a.tasks[1];
    g.write_virt(z.task + u64::from(OFF[6].1), &0u64.to_le_bytes()).unwrap();
    g.write_virt(z.task + u64::from(OFF[9].1), &0x10u32.to_le_bytes()).unwrap();
    let d = Descriptor::read_phys(&mut g, a.phys).unwrap();
    let v = AgentView::new(&mut g, d).unwrap();
    assert_eq!(v.tasks[1].stack, 0);
    assert!(v.exiting.contains(&z.task), "exit_state set");
}

fn facts(never_ran: &[u64], exiting: &[u64]) -> OneSided {
    OneSided { never_ran: never_ran.iter().copied().collect(), exiting: exiting.iter().copied().collect() }
}

#[test]
fn agreement_rules() {
    let a = agent3();
    let mut g = guest_with(&a);
    let v = view_of(&a, &mut g);
    let walk = walk_from(&v);
    let none = OneSided::default();
    assert_eq!(v.compare(&walk, &none), Ok(()));
    // The walk has a brand-new task (never woken): fine; a running one: not.
    let mut w = walk.clone();
    let mut fresh = w[0].clone();
    fresh.addr += 0x100_0000;
    fresh.state = super::source::TASK_NEW;
    w.push(fresh.clone());
    assert_eq!(v.compare(&w, &none), Ok(()));
    fresh.state = 0;
    let woken = Task { addr: fresh.addr + 8, ..fresh };
    w.push(woken.clone());
    let d = v.compare(&w, &none).unwrap_err();
    assert_eq!(d.only_walk.len(), 1, "{d}");
    assert!(!d.is_in_flight(), "a walk-only task that ran and is not exiting: the agent missed it");
    // ... unless it is being woken for the first time (its frame returns to ret_from_fork).
    assert_eq!(v.compare(&w, &facts(&[woken.addr], &[])), Ok(()));
    assert_eq!(v.one_sided(&w).len(), 2);
    // The agent has a task the walk lost: only fine while it is exiting.
    let short: Vec<Task> = walk[..2].to_vec();
    let d = v.compare(&short, &none).unwrap_err();
    assert_eq!(d.only_agent.len(), 1, "{d}");
    assert!(!d.is_in_flight());
    let mut exiting = v.clone();
    exiting.exiting.insert(walk[2].addr);
    assert_eq!(exiting.compare(&short, &none), Ok(()));
    assert_eq!(exiting.merged(&short).len(), 3, "the exiting task is still checked");
    // The agent publishes no switch counters: its tasks take the walk's
    // (for the incremental check); a task the walk lacks has none.
    let mut w = walk.clone();
    w[0].sched = Some(crate::os::linux::tasks::Sched { nvcsw: 5, nivcsw: 6, start_time: 7 });
    let m = exiting.merged(&w[..2]);
    assert_eq!(m.iter().find(|t| t.addr == w[0].addr).unwrap().sched, w[0].sched);
    assert_eq!(m.iter().find(|t| t.addr == walk[2].addr).unwrap().sched, None);
    // A different stack is a real disagreement; a comm caught mid-rename is in flight.
    let mut w = walk.clone();
    w[1].stack += 0x4000;
    assert!(!v.compare(&w, &none).unwrap_err().is_in_flight());
    let mut w = walk.clone();
    w[2].comm = "sh".into();
    let d = v.compare(&w, &none).unwrap_err();
    assert!(d.is_in_flight(), "{d}");
    assert_eq!(d.in_flight_tasks(), vec![walk[2].addr]);
    assert!(d.to_string().contains("in flight"), "{d}");
    assert_eq!(AgentError::Mismatch(d).cause(), "agent_mismatch");
}

/// Which one-sided tasks a fork or exit in flight explains (retry), which
/// it cannot (refuse at once), on the agent fixture.
#[test]
fn in_flight_differences_are_told_from_real_ones() {
    let a = agent3();
    let mut g = guest_with(&a);
    let v = view_of(&a, &mut g);
    let walk = walk_from(&v);
    let mut ghost = walk[0].clone();
    ghost.addr += 0x200_0000;
    ghost.state = 0;
    // Walk-only and exiting (PF_EXITING or an exit state): in flight, retried.
    let mut w = walk.clone();
    w.push(ghost.clone());
    let d = v.compare(&w, &facts(&[], &[ghost.addr])).unwrap_err();
    assert!(d.is_in_flight() && d.only_walk.is_empty(), "{d}");
    assert_eq!(d.in_flight_tasks(), vec![ghost.addr]);
    assert!(d.to_string().contains("exiting, only in the walk"), "{d}");
    // Walk-only, ran, not exiting: real, however it is disputed alongside.
    let mut other = ghost.clone();
    other.addr += 0x1000;
    w.push(other.clone());
    let d = v.compare(&w, &facts(&[], &[ghost.addr])).unwrap_err();
    assert!(!d.is_in_flight(), "{d}");
    assert_eq!(d.only_walk.len(), 1, "{d}");
    // Agent-only and brand new (never ran): in flight; with TASK_NEW too.
    let short: Vec<Task> = walk[..2].to_vec();
    let d = v.compare(&short, &facts(&[walk[2].addr], &[])).unwrap_err();
    assert!(d.is_in_flight(), "{d}");
    assert_eq!(d.in_flight_tasks(), vec![walk[2].addr]);
    let mut new = v.clone();
    new.tasks[2].state = super::source::TASK_NEW;
    assert!(new.compare(&short, &none_facts()).unwrap_err().is_in_flight());
    // Agent-only, ran, not exiting, not idle: the walk missed it: real.
    let d = v.compare(&short, &none_facts()).unwrap_err();
    assert!(!d.is_in_flight(), "{d}");
    assert_eq!(d.only_agent.len(), 1, "{d}");
    // A stack differing next to an in-flight difference: real.
    let mut w = walk.clone();
    w[1].stack += 0x4000;
    w[2].comm = "sh".into();
    let d = v.compare(&w, &none_facts()).unwrap_err();
    assert!(!d.is_in_flight(), "{d}");
    assert_eq!((d.different.len(), d.in_flight.len()), (1, 1));
}

fn none_facts() -> OneSided {
    OneSided::default()
}

#[test]
fn header_parser_rejects_short_and_inconsistent_headers() {
    let a = agent3();
    let (mut block, _) = a.bytes();
    assert_eq!(layout::parse_header(&block[..100], None).unwrap_err().cause(), "agent_absent");
    // task_count > task_cap with a correct checksum: still refused.
    block[0x5c..0x60].copy_from_slice(&u32::MAX.to_le_bytes());
    let sum = vsa_sum(&block[..0xf8]);
    block[0xf8..0x100].copy_from_slice(&sum.to_le_bytes());
    assert!(layout::parse_header(&block, Some(a.phys)).unwrap_err().to_string().contains("inconsistent"));
}

#[test]
fn a_header_claiming_a_huge_table_is_refused_before_reading_it() {
    // Self-consistent and checksummed, as a hostile guest can write it: a
    // 16 MiB block listing 1M table pages (4 GiB) and 64M live entries.
    let a = agent3();
    let (mut block, _) = a.bytes();
    let w32 = |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    w32(&mut block, 0x38, 16 << 20);
    w32(&mut block, 0x50, 1 << 20);
    w32(&mut block, 0x58, 64 << 20);
    w32(&mut block, 0x5c, 64 << 20);
    let sum = vsa_sum(&block[..0xf8]);
    block[0xf8..0x100].copy_from_slice(&sum.to_le_bytes());
    let e = layout::parse_header(&block, Some(a.phys)).unwrap_err();
    assert_eq!(e.cause(), "agent_corrupt", "{e}");
    let huge = block.clone();
    // At the bound it parses (the rest is checked against the block).
    w32(&mut block, 0x5c, layout::MAX_AGENT_TASKS as u32);
    let sum = vsa_sum(&block[..0xf8]);
    block[0xf8..0x100].copy_from_slice(&sum.to_le_bytes());
    assert!(layout::parse_header(&block, Some(a.phys)).is_ok());
    // Through the reader, nothing is allocated for the table: the guest
    // holds the header only.
    let mut g = guest_with(&a);
    g.put(a.phys, &huge[..256]);
    let writes = g.writes;
    let e = Descriptor::read_phys(&mut g, a.phys).unwrap_err();
    assert_eq!(e.cause(), "agent_corrupt", "{e}");
    assert_eq!(g.writes, writes, "reading never writes");
}

/// Issue 11: a page list (guest-written physical addresses, under a valid
/// checksum) naming a page in the device window is refused `not_ram`
/// before that page is read.
#[test]
fn a_table_page_in_device_memory_is_refused_unread() {
    let mut a = FakeAgent::new((1..200).map(|n| task(n, &format!("t{n}"))).collect());
    a.table_pages[1] = 0xfee0_0000;
    let mut g = guest_with(&a);
    let reads = g.reads;
    let e = Descriptor::read_phys(&mut g, a.phys).unwrap_err();
    assert_eq!(e.cause(), "not_ram", "{e}");
    // The header, the block and the first table page: nothing at the LAPIC.
    assert_eq!(g.reads - reads, 3);
}
