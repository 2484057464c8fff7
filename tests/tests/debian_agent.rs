//! Issue 5, the guest agent, end to end on both Debian flavours under QEMU
//! (read from outside over the gdbstub; /init loads the agent):
//!
//! - its table equals the guest's /proc (every thread's tid, tgid and comm,
//!   a 65-thread process included) and the agentless walk; its CPU stacks
//!   equal the agentless ones; the status file names the same address; a
//!   scan of physical memory finds the same descriptor;
//! - a fork storm (thousands of short-lived processes) while the host stops
//!   the guest and reads the table again and again: every read either
//!   agrees with the walk (no task missed) or is a retry, never a partial
//!   list; no Oops/BUG/WARNING;
//! - garbage written into the descriptor from the host: agentless mode (a
//!   clear `agent_corrupt` when the agent is insisted on), the guest fine,
//!   a reloaded agent used again;
//! - the agent unloaded mid-session (a stale address kept): agentless mode,
//!   `agent_absent` when insisted on; loaded again: used again; loaded with a
//!   table too small for the guest: `agent_overflow`, agentless mode.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::single_range_in_vec_init)]

mod agentlive;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use agentlive::Live;
use common::{comm_matches, guest_tasks, TaskKey};
use vsplice_patcher::model::backend::Backend;
use vsplice_patcher::os::linux::agent::find::scan_phys;
use vsplice_patcher::os::linux::agent::Descriptor;
use vsplice_patcher::os::linux::cpustacks;
use vsplice_patcher::os::linux::view::{AgentHint, LinuxView, TaskSource};
use vsplice_tests::checks::{check, ensure};
use vsplice_tests::debian::Flavour;
use vsplice_tests::qemu::Guest;
use vsplice_tests::testguest::vm_lock;

const THREADS: usize = 64;
const THREAD_COMM: &str = "vsplmt";

/// Every /proc thread (seen before and after) is in the agent's table with
/// its comm; the table has nothing /proc never showed but idle tasks.
fn table_matches_proc(v: &LinuxView, before: &BTreeSet<TaskKey>, after: &BTreeSet<TaskKey>) -> Result<(), String> {
    let a = v.agent.as_ref().ok_or("no agent view")?;
    let table: BTreeMap<(i32, i32), String> = a.descriptor.tasks.iter().filter(|t| t.pid != 0).map(|t| ((t.tgid, t.pid), t.comm.clone())).collect();
    let ids = |s: &BTreeSet<TaskKey>| -> BTreeMap<(i32, i32), String> { s.iter().map(|k| ((k.tgid, k.pid), k.comm.clone())).collect() };
    let (b, af) = (ids(before), ids(after));
    let missing: Vec<_> = b.iter().filter(|(id, _)| af.contains_key(id) && !table.contains_key(id)).collect();
    let extra: Vec<_> = table.iter().filter(|(id, _)| !b.contains_key(id) && !af.contains_key(id)).collect();
    let renamed: Vec<_> = table
        .iter()
        .filter(|(id, c)| {
            let seen: Vec<&String> = [b.get(id), af.get(id)].into_iter().flatten().collect();
            !seen.is_empty() && !seen.iter().any(|p| comm_matches(c, p))
        })
        .collect();
    ensure(missing.is_empty() && extra.is_empty() && renamed.is_empty(), || {
        format!("table {} tasks, /proc {}/{}; missing {missing:?}; extra {extra:?}; comm differs {renamed:?}", table.len(), b.len(), af.len())
    })?;
    let group: Vec<_> = a.descriptor.tasks.iter().filter(|t| t.comm == THREAD_COMM).collect();
    let tgid = group.first().map(|t| t.tgid).ok_or("no mthreads process in the table")?;
    ensure(group.len() == THREADS + 1 && group.iter().all(|t| t.tgid == tgid), || format!("mthreads group has {} tasks", group.len()))
}

fn first_look(g: &mut Guest, live: &mut Live, f: &mut Vec<String>) -> LinuxView {
    let (v, retries) = live.view_settled(TaskSource::Auto, None, 20);
    let v = v.unwrap_or_else(|e| panic!("first view: {e} ({})", e.cause()));
    eprintln!("  view from {} ({} tasks, {retries} retries)", v.source(), v.tasks.len());
    check(f, "the agent's table is used and agrees with the walk", ensure(v.source() == "agent+agentless", || format!("{:?}", v.note)));
    let a = v.agent.as_ref().unwrap();
    let h = &a.descriptor.header;
    let nproc = live.lk.vcpus.len();
    check(f, "one idle task per CPU in the table", ensure(a.descriptor.tasks.iter().filter(|t| t.pid == 0).count() == nproc, || "idle tasks".into()));
    // The agent's CPU stacks equal the ones found without it.
    let btf = &live.lk.info.btf.as_ref().unwrap().0;
    let mine = cpustacks::cpu_stacks(&mut live.lk.vm, &live.lk.info.kallsyms, btf, true).unwrap();
    let set = |s: &[vsplice_patcher::model::CpuStack]| s.iter().map(|c| (c.cpu, c.kind.clone(), c.range.start, c.range.end)).collect::<BTreeSet<_>>();
    check(f, "the agent's CPU stacks equal the agentless ones", ensure(set(&a.cpu_stacks) == set(&mine), || {
        format!("agent {:?}\nagentless {:?}", set(&a.cpu_stacks), set(&mine))
    }));
    check(f, "IRQ, NMI, #DF, #DB, #MC and entry stacks for each CPU", ensure(a.cpu_stacks.len() == 6 * nproc, || format!("{} stacks", a.cpu_stacks.len())));
    // A scan of physical memory finds the same descriptor (same stop).
    let t = Instant::now();
    let (found, st) = scan_phys(live.lk.vm.backend(), &[0..1 << 30], 1 << 20);
    eprintln!("  scan found {found:x?} after {} MiB in {:.1} s", st.bytes >> 20, t.elapsed().as_secs_f64());
    check(f, "a scan of physical memory finds the descriptor", ensure(found == Some(h.self_phys), || format!("{found:x?} vs {:#x}", h.self_phys)));
    let phys = Descriptor::read_phys(live.lk.vm.backend(), h.self_phys);
    check(f, "read physically (page list) it equals the virtual read", match phys {
        Ok(d) => ensure(d == a.descriptor, || "descriptors differ".into()),
        Err(e) => Err(e.to_string()),
    });
    live.resume().unwrap();
    let status = g.run_ok("cat /sys/kernel/debug/vsplice_agent/status").unwrap();
    check(f, "the status file names the same address", ensure(status.contains(&format!("phys {:#x}\n", h.self_phys)) && status.contains("flags live"), || status.clone()));
    v
}

fn fork_storm(g: &mut Guest, live: &mut Live, hint: Option<u64>, f: &mut Vec<String>) {
    const ROUNDS: usize = 500;
    g.run_ok(&format!(
        "cat >/tmp/storm.sh <<'EOF'\ni=0\nwhile [ $i -lt {ROUNDS} ]; do /bin/true & /bin/true & /bin/true & /bin/true & wait; i=$((i+1)); done\necho done >/tmp/storm.done\nEOF\nrm -f /tmp/storm.done; sh /tmp/storm.sh >/dev/null 2>&1 &"
    ))
    .unwrap();
    let start_updates = live_updates(live, hint);
    let (mut ok, mut retries, mut reads, mut errors) = (0u32, 0u32, 0u32, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut max_tasks = 0;
    loop {
        std::thread::sleep(Duration::from_millis(150));
        live.stop().unwrap();
        reads += 1;
        match live.view(TaskSource::Auto, hint.map(AgentHint::Virt)) {
            Ok(v) if v.source() == "agent+agentless" => {
                ok += 1;
                max_tasks = max_tasks.max(v.tasks.len());
            }
            Ok(v) => errors.push(format!("agent not used: {:?}", v.note)),
            Err(e) if e.is_retry() => retries += 1,
            Err(e) => errors.push(format!("{e} ({})", e.cause())),
        }
        live.resume().unwrap();
        if g.run("test -e /tmp/storm.done").map(|o| o.status == 0).unwrap_or(false) || Instant::now() > deadline {
            break;
        }
    }
    let end_updates = live_updates(live, hint);
    let spawned = 4 * ROUNDS as u64;
    eprintln!("  fork storm: {spawned} processes, {reads} stops: {ok} agreed, {retries} retries, {} errors; up to {max_tasks} tasks; {} table updates", errors.len(), end_updates - start_updates);
    check(f, "the storm ran to its end", g.run_ok("cat /tmp/storm.done").map(|_| ()).map_err(|e| e.to_string()));
    check(f, "every read during the storm agreed with the walk or was a retry", ensure(errors.is_empty() && ok >= 5, || format!("{ok} agreed; {errors:?}")));
    check(f, "the agent saw every process come and go", ensure(end_updates - start_updates >= 2 * spawned, || {
        format!("{} updates for {spawned} processes", end_updates - start_updates)
    }));
}

fn live_updates(live: &mut Live, hint: Option<u64>) -> u64 {
    live.stop().unwrap();
    let (v, _) = live.view_settled(TaskSource::Agent, hint.map(AgentHint::Virt), 50);
    live.resume().unwrap();
    v.map(|v| v.agent.map_or(0, |a| a.descriptor.header.updates)).unwrap_or(0)
}

fn corruption(g: &mut Guest, live: &mut Live, f: &mut Vec<String>) {
    live.stop().unwrap();
    let (v, _) = live.view_settled(TaskSource::Auto, None, 20);
    let d = v.unwrap().agent.unwrap().descriptor;
    // Garbage into a comm of the table (the agent only ever sums those bytes)...
    live.lk.vm.backend().write_phys(d.pages[0] + 64 + 0x30, b"\xde\xad\xbe\xef GARBAGE").unwrap();
    live.lk.vm.flush();
    let auto = live.view(TaskSource::Auto, None);
    check(f, "a garbled table: agentless mode, saying why", match &auto {
        Ok(v) => ensure(v.source() == "agentless" && v.note.as_deref().is_some_and(|n| n.contains("agent_corrupt")), || format!("{} {:?}", v.source(), v.note)),
        Err(e) => Err(format!("{e} ({})", e.cause())),
    });
    let strict = live.view(TaskSource::Agent, None);
    check(f, "a garbled table: refused with agent_corrupt when the agent is required", ensure(strict.as_ref().err().map(|e| e.cause()) == Some("agent_corrupt"), || {
        format!("{:?}", strict.as_ref().map(|v| v.source()))
    }));
    // ... and into fields of the header the agent never reads back.
    live.lk.vm.backend().write_phys(d.header.self_phys + 0x60, &[0x5a; 24]).unwrap();
    live.lk.vm.flush();
    let strict = live.view(TaskSource::Agent, None);
    check(f, "a garbled header: agent_corrupt", ensure(strict.as_ref().err().map(|e| e.cause()) == Some("agent_corrupt"), || format!("{:?}", strict.map(|v| v.source()))));
    // ... and into the counts the agent once trusted: it must not index with them.
    live.lk.vm.backend().write_phys(d.header.self_phys + 0x58, &[0xff; 8]).unwrap();
    live.resume().unwrap();
    check(f, "the guest is fine after the garbage", g.run_ok("echo alive && for d in /proc/[0-9]*; do :; done && cat /proc/self/status >/dev/null && /bin/true").map(|_| ()).map_err(|e| e.to_string()));
    live.stop().unwrap();
    let mut hb = vec![0u8; 256];
    live.lk.vm.backend().read_phys(d.header.self_phys, &mut hb).unwrap();
    let healed = vsplice_patcher::os::linux::agent::layout::parse_header(&hb, Some(d.header.self_phys));
    check(f, "the agent republished a sound header at its next event", match healed {
        Ok(h) => ensure(h.task_cap == d.header.task_cap && h.task_count < 10_000, || format!("cap {} count {}", h.task_cap, h.task_count)),
        Err(e) => Err(e.to_string()),
    });
    live.resume().unwrap();
    g.run_ok("rmmod vsplice_agent && insmod /modules/vsplice_agent.ko").unwrap();
    live.stop().unwrap();
    let (v, _) = live.view_settled(TaskSource::Auto, None, 20);
    check(f, "a reloaded agent is used again", match v {
        Ok(v) => ensure(v.source() == "agent+agentless", || format!("{:?}", v.note)),
        Err(e) => Err(e.to_string()),
    });
    live.resume().unwrap();
}

fn unload(g: &mut Guest, live: &mut Live, f: &mut Vec<String>) {
    live.stop().unwrap();
    let (v, _) = live.view_settled(TaskSource::Auto, None, 20);
    let old = v.unwrap().agent_at.unwrap();
    live.resume().unwrap();
    g.run_ok("rmmod vsplice_agent").unwrap();
    live.stop().unwrap();
    let auto = live.view(TaskSource::Auto, Some(AgentHint::Virt(old)));
    check(f, "unloaded (stale address kept): agentless mode, saying why", match &auto {
        Ok(v) => ensure(v.source() == "agentless" && v.note.as_deref().is_some_and(|n| n.contains("agent_absent")), || format!("{} {:?}", v.source(), v.note)),
        Err(e) => Err(format!("{e} ({})", e.cause())),
    });
    let strict = live.view(TaskSource::Agent, None);
    check(f, "unloaded: agent_absent when the agent is required", ensure(strict.as_ref().err().map(|e| e.cause()) == Some("agent_absent"), || format!("{:?}", strict.map(|v| v.source()))));
    let at_old = Descriptor::read_virt(&mut live.lk.vm, old, None);
    check(f, "the old header no longer reads as a descriptor", ensure(at_old.is_err(), || "still a descriptor".into()));
    live.resume().unwrap();
    check(f, "the guest is fine without its agent", g.run_ok("echo alive").map(|_| ()).map_err(|e| e.to_string()));
    g.run_ok("insmod /modules/vsplice_agent.ko").unwrap();
    live.stop().unwrap();
    let (v, _) = live.view_settled(TaskSource::Auto, Some(AgentHint::Virt(old)), 20);
    check(f, "loaded again: used again (found afresh)", match v {
        Ok(v) => ensure(v.source() == "agent+agentless", || format!("{:?}", v.note)),
        Err(e) => Err(e.to_string()),
    });
    live.resume().unwrap();
    // A table too small for the guest's tasks: never trusted.
    g.run_ok("rmmod vsplice_agent && insmod /modules/vsplice_agent.ko max_tasks=32 && grep -q overflow /sys/kernel/debug/vsplice_agent/status").unwrap();
    live.stop().unwrap();
    let strict = live.view(TaskSource::Agent, None);
    check(f, "an overflowed table: agent_overflow when the agent is required", ensure(strict.as_ref().err().map(|e| e.cause()) == Some("agent_overflow"), || format!("{:?}", strict.map(|v| v.source()))));
    let auto = live.view(TaskSource::Auto, None);
    check(f, "an overflowed table: agentless mode, saying why", match &auto {
        Ok(v) => ensure(v.source() == "agentless" && v.note.as_deref().is_some_and(|n| n.contains("agent_overflow")), || format!("{} {:?}", v.source(), v.note)),
        Err(e) => Err(format!("{e} ({})", e.cause())),
    });
    live.resume().unwrap();
    g.run_ok("rmmod vsplice_agent && insmod /modules/vsplice_agent.ko").unwrap();
}

fn agent_e2e(flavour: Flavour) {
    let _l = vm_lock();
    let Some(mut g) = agentlive::boot(flavour, &format!("agent-{flavour}")) else { return };
    let addr = g.gdb_addr().unwrap().to_string();
    g.run_ok("grep -q '^vsplice_agent ' /proc/modules").expect("/init did not load the agent");
    g.run_ok(&format!("mthreads {THREADS} {THREAD_COMM} >/tmp/mt.log 2>&1 & while ! grep -q ready /tmp/mt.log; do sleep 0.1; done")).unwrap();
    let mut f = Vec::new();
    let mut attempt = 0;
    let (mut live, v) = loop {
        attempt += 1;
        let before = guest_tasks(&mut g).unwrap();
        let mut live = Live::open(&addr).unwrap();
        let mut local = Vec::new();
        let v = first_look(&mut g, &mut live, &mut local);
        let after = guest_tasks(&mut g).unwrap();
        let m = table_matches_proc(&v, &before, &after);
        if m.is_ok() || attempt == 3 {
            f.extend(local);
            check(&mut f, "the agent's table equals the guest's /proc", m);
            break (live, v);
        }
        eprintln!("  (tasks changed around the read; attempt {attempt} again)");
        live.close();
    };
    let hint = v.agent_at;
    fork_storm(&mut g, &mut live, hint, &mut f);
    corruption(&mut g, &mut live, &mut f);
    unload(&mut g, &mut live, &mut f);
    live.close();
    check(&mut f, "console clean (no Oops, BUG, WARNING)", g.check_console().map_err(|e| e.to_string()));
    assert!(f.is_empty(), "{flavour}: {} check(s) failed:\n{}", f.len(), f.join("\n"));
}

#[test]
fn agent_on_the_generic_kernel() {
    agent_e2e(Flavour::Amd64);
}

#[test]
fn agent_on_the_cloud_kernel() {
    agent_e2e(Flavour::CloudAmd64);
}
