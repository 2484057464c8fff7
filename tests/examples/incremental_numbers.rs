//! Numbers for issue 12, item 3: the safety check under the pause, full
//! against incremental, with N sleeping threads in a Debian guest under
//! QEMU TCG (2 vCPUs, shared-memory backend, agentless task walk). Each
//! round applies and reverts example 1 (`cmdline_marker`); the apply's
//! check time (task list + stacks + target bytes, under the pause), its
//! downtime and, incremental, the pre-check with the guest running, and
//! how many pauses took the quiet-scheduler path (`quiet`: no switch or
//! fork since the pre-check, only the tasks on a CPU read again).
//! `downtime` is the p50 of the pause that wrote, `down-max` its largest,
//! `all-pauses` the p50 of every pause of an apply summed (with `on`, a
//! guest not quiet is resumed and tried again: those short pauses count).
//!
//! `cargo run --release -p vsplice-tests --example incremental_numbers -- [ROUNDS] [N ...]`
//! (default: 10 rounds, 100 and 10000 threads).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vsplice_patcher::model::Incremental;
use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::Guest;

fn p50(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    let mut counts: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    if counts.is_empty() {
        counts = vec![100, 10_000];
    }
    let flavour = Flavour::Amd64;
    let Some(mut cfg) = linuxpatch::config_with_headers(flavour, "incremental-numbers") else { return };
    cfg.shared_ram = true;
    // 10,000 threads' stacks do not fit in the default 1 GiB.
    cfg.mem_mib = 2048;
    cfg.extra_append.push("vsplice.agent=0".into());
    let Some(mut g) = Guest::boot_or_skip(cfg) else { return };
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
    println!("{flavour}, QEMU TCG, 2 vCPUs, shared-memory backend, agentless walk; p50 over {rounds} applies, microseconds");
    println!(
        "{:>7} {:>6} {:>11} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>7} {:>9} {:>6} | {:>7} {:>7} {:>7}",
        "threads", "tasks", "mode", "check", "downtime", "down-max", "all-pauses", "pre-check", "reused", "rechecked", "busy", "attempts", "quiet", "pause", "write", "resume"
    );
    let mut last: Option<String> = None;
    for n in counts {
        if let Some(pid) = last.take() {
            // Gone before the next count starts: its threads must not be
            // counted in the next row.
            g.run_ok(&format!("kill -9 {pid}; while [ -d /proc/{pid} ]; do sleep 0.5; done")).unwrap();
        }
        // A log of its own per count (a stale "ready" line from the last
        // count's log named the wrong process), the pid from the shell.
        let log = format!("/tmp/mt{n}.log");
        let out = g.run_ok(&format!("rm -f {log}; mthreads {n} vsplbench >{log} 2>&1 & echo $!; while ! grep -q ready {log}; do sleep 0.5; done; cat {log}")).unwrap();
        let pid = out.split_whitespace().next().unwrap_or_default().to_string();
        assert!(out.contains(&format!("mthreads {pid} ready")), "{out:?}");
        last = Some(pid.clone());
        let threads = g.run_ok(&format!("ls /proc/{pid}/task | wc -l; ls -d /proc/[0-9]*/task/* | wc -l")).unwrap_or_default();
        eprintln!("{n} threads asked: {out:?}; the guest counts (process, all tasks): {:?}", threads.split_whitespace().collect::<Vec<_>>());
        let (mut be, target) = linuxpatch::attach(&g).unwrap();
        for mode in [Incremental::Off, Incremental::On, Incremental::Compare] {
            let mut p = linuxpatch::patcher(&g, &mut be, &target);
            p.config_mut().incremental = mode;
            let (mut check, mut down, mut pre, mut reused, mut rechecked, mut tasks, mut busy, mut attempts) = (vec![], vec![], vec![], vec![], vec![], 0, 0, vec![]);
            let (mut pause, mut write, mut resume) = (vec![], vec![], vec![]);
            // Every pause of the apply, the failed attempts' too.
            let mut total = vec![];
            // Applies whose pause took the quiet-scheduler path (`reread: quiet`).
            let mut quiet = 0;
            for _ in 0..rounds {
                let r = p.apply(&patch);
                if !r.is_ok() {
                    busy += 1;
                    eprintln!("{}", r.to_json());
                    continue;
                }
                check.push(r.timings.check_us);
                down.push(r.timings.downtime_us);
                total.push(r.timings.total_downtime_us);
                eprintln!("  {n} {mode}: attempts {} downtime {} us, all pauses {} us", r.timings.attempts, r.timings.downtime_us, r.timings.total_downtime_us);
                pause.push(r.timings.pause_us);
                write.push(r.timings.write_us);
                resume.push(r.timings.resume_us);
                attempts.push(u64::from(r.timings.attempts));
                if let Some(inc) = r.check.as_ref().and_then(|c| c.incremental.clone()) {
                    pre.push(inc.pre_check_us);
                    reused.push(inc.reused as u64);
                    rechecked.push(inc.rechecked as u64);
                    tasks = inc.reused + inc.rechecked;
                    quiet += usize::from(inc.reread == Some("quiet"));
                }
                let v = p.revert(&patch.manifest.id);
                assert!(v.is_ok(), "{}", v.to_json());
            }
            println!(
                "{n:>7} {tasks:>6} {mode:>11} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {busy:>7} {:>9} {quiet:>6} | {:>7} {:>7} {:>7}",
                p50(check),
                p50(down.clone()),
                down.iter().max().copied().unwrap_or(0),
                p50(total),
                p50(pre),
                p50(reused),
                p50(rechecked),
                p50(attempts),
                p50(pause),
                p50(write),
                p50(resume)
            );
        }
        linuxpatch::detach(be).unwrap();
    }
}
