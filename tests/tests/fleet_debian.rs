//! A fleet of mixed kernels: two test-guest VMs under `vsplice run
//! --api-sock` and two stock Debian kernels under QEMU (TCG) behind
//! `vsplice attach --api-sock`, the generic flavour in host `a` and the
//! cloud flavour in host `b` (two builds, booted at once).
//! - A plan with only the test guest's patch: both Debian guests report
//!   their own build-id (`GET /vm` through the attach daemon), are
//!   `no_patch_for_kernel`, and are never touched (no journal step names
//!   them, their registries stay empty), while the test guests are patched
//!   exactly once.
//! - A plan (written in TOML) that also carries the real Debian patch
//!   `cmdline_marker.c` built for the cloud kernel: the fleet applies it to exactly that guest
//!   (its `/proc/cmdline` shows the marker, checked inside the guest), the
//!   generic guest is still `no_patch_for_kernel`; `fleet rollback` reverts
//!   it (`/proc/cmdline` as booted again).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_tests::api::build_example;
use vsplice_tests::attach::AttachDaemon;
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::fleet::{count, fleet, outcome, said, steps, Fleet, QUIET};
use vsplice_tests::qemu::Guest;
use vsplice_tests::{linuxpatch, testguest};
use vsplice_vmm::fleet::journal::Op;

/// Attaching and identifying a kernel under TCG on a loaded host takes a while.
const READY_WITHIN: Duration = Duration::from_secs(600);

/// One Debian guest of the fleet: its inventory name, host label and build-id.
struct Deb {
    name: &'static str,
    host: &'static str,
    flavour: Flavour,
    guest: Guest,
    build_id: String,
    release: String,
}

/// Spawns both flavours at once (without the agent), then waits for both.
fn boot_both() -> Option<Vec<Deb>> {
    let mut spawned = Vec::new();
    for (name, host, flavour) in [("deb-amd64", "a", Flavour::Amd64), ("deb-cloud", "b", Flavour::CloudAmd64)] {
        let mut cfg = linuxpatch::config_with_headers(flavour, &format!("fleet-{name}"))?;
        cfg.extra_append.push("vsplice.agent=0".into());
        // One vCPU each: two TCG guests at once on a shared 2-core host.
        cfg.smp = 1;
        spawned.push((name, host, flavour, Guest::spawn_or_skip(cfg)?));
    }
    let mut debs = Vec::new();
    for (name, host, flavour, mut guest) in spawned {
        guest.wait_ready().unwrap_or_else(|e| panic!("{name} does not boot: {e}"));
        let img = debian_images(flavour).unwrap();
        let build_id = LinuxImage::open(&img.vmlinuz).unwrap().build_id().unwrap().to_owned();
        eprintln!("fleet_debian: {name}: Debian {} booted under QEMU in {:.1} s (build-id {build_id})", img.release, guest.boot_time().as_secs_f64());
        debs.push(Deb { name, host, flavour, guest, build_id, release: img.release });
    }
    assert_ne!(debs[0].build_id, debs[1].build_id, "two builds");
    Some(debs)
}

fn status(journal: &Path) -> serde_json::Value {
    serde_json::from_slice(&fleet(journal, &["--json", "status"], None).stdout).unwrap()
}

fn debian_registry(d: &AttachDaemon) -> Vec<String> {
    let r = d.req("GET", "/patches", None, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["patches"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap_or_default().to_owned()).collect()
}

#[test]
fn two_debian_guests_in_two_hosts_no_patch_for_kernel_then_one_patched_through_the_fleet() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_debian") {
        return;
    }
    let Some(mut debs) = boot_both() else { return };
    let f = Fleet::boot("debian", 2, |_| QUIET.to_owned());
    // One daemon per guest, each in its own directory (its `api.sock`).
    let daemons: Vec<AttachDaemon> = debs
        .iter()
        .map(|d| {
            let dir = f.dir.join(d.name);
            std::fs::create_dir_all(&dir).unwrap();
            AttachDaemon::start(&dir, d.guest.gdb_addr().unwrap(), &linuxpatch::arena_arg(&d.guest), &[], READY_WITHIN).unwrap()
        })
        .collect();
    let patch = build_example(&f.dir, "step_b_v2.c");
    let extra: Vec<serde_json::Value> = debs.iter().zip(&daemons).map(|(d, a)| serde_json::json!({"name": d.name, "api_sock": a.sock, "labels": {"host": d.host}})).collect();
    let inv = f.inventory(&extra);
    let inv = inv.to_str().unwrap();

    // 1. Only the test guest's build: both Debian guests no_patch_for_kernel.
    let plan = f.plan("p", &serde_json::json!({"patches": [&patch], "allow_unsigned": true, "canary": {"count": 1}, "parallelism": 2}));
    let plan = plan.to_str().unwrap();
    let o = fleet(&f.dir.join("dry.redb"), &["--json", "plan", "--inventory", inv, "--plan", plan], None);
    assert!(o.status.success(), "{}", said(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for d in &debs {
        let t = r["targets"].as_array().unwrap().iter().find(|t| t["target"]["name"] == d.name).unwrap().clone();
        assert_eq!((t["skip"].as_str(), t["build_id"].as_str(), t["release"].as_str()), (Some("no_patch_for_kernel"), Some(d.build_id.as_str()), Some(d.release.as_str())), "{t}");
        assert_eq!(t["target"]["labels"]["host"].as_str(), Some(d.host), "{t}");
    }
    let journal = f.dir.join("j.redb");
    let o = fleet(&journal, &["start", "--inventory", inv, "--plan", plan], None);
    assert!(o.status.success(), "{}", said(&o));
    let s = steps(&journal);
    for d in &debs {
        assert!(s.iter().all(|x| x.target != d.name), "{} is never touched", d.name);
    }
    for i in 0..2 {
        let n = Fleet::name(i);
        assert_eq!((outcome(&s, &n), count(&s, &n, Op::Apply, "ok")), (Some("patched"), 1), "{n}");
        assert_eq!(f.registry(i), ["step_b_v2"]);
    }
    for (d, a) in debs.iter().zip(&daemons) {
        assert!(debian_registry(a).is_empty(), "{}", d.name);
        let vm = a.req("GET", "/vm", None, b"").json();
        assert_eq!((vm["hypervisor"].as_str(), vm["console"].clone()), (Some("gdbstub"), serde_json::Value::Null), "attached: the console is QEMU's, not watched");
        assert_eq!(vm["kernel"]["build_id"].as_str(), Some(d.build_id.as_str()), "{vm}");
    }
    let st = status(&journal);
    assert_eq!((st["counts"]["patched"].as_u64(), st["counts"]["no_patch_for_kernel"].as_u64()), (Some(2), Some(2)), "{st}");
    assert!(fleet(&journal, &["rollback"], None).status.success());
    assert!((0..2).all(|i| f.registry(i).is_empty()));

    // 2. The cloud kernel's patch too: exactly that guest patched, checked inside it; then rolled back.
    let cloud = debs.iter().position(|d| d.flavour == Flavour::CloudAmd64).unwrap();
    let vsp = linuxpatch::cli_build_example(&debian_images(Flavour::CloudAmd64).unwrap(), "cmdline_marker.c", &f.dir).unwrap_or_else(|e| panic!("{e}"));
    let before: Vec<String> = debs.iter_mut().map(|d| d.guest.run_ok("cat /proc/cmdline").unwrap()).collect();
    let marked = format!("{} vsplice.marker=cmdline\n", before[cloud].trim_end());
    // This plan is TOML (chosen by the name): the same keys as the JSON one.
    let plan = f.dir.join("p2.toml");
    std::fs::write(&plan, format!("patches = [\"{}\", \"{}\"]\nallow_unsigned = true\nparallelism = 2\n\n[canary]\ncount = 1\n", patch.display(), vsp.display())).unwrap();
    let journal = f.dir.join("j2.redb");
    let o = fleet(&journal, &["start", "--inventory", inv, "--plan", plan.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", said(&o));
    let s = steps(&journal);
    for (i, d) in debs.iter_mut().enumerate() {
        if i == cloud {
            assert_eq!((outcome(&s, d.name), count(&s, d.name, Op::Apply, "ok")), (Some("patched"), 1), "{}: {s:#?}", d.name);
            assert_eq!(debian_registry(&daemons[i]), ["cmdline_marker"], "{}", d.name);
            assert_eq!(d.guest.run_ok("cat /proc/cmdline").unwrap(), marked, "{}: the patch runs in the guest", d.name);
        } else {
            assert!(s.iter().all(|x| x.target != d.name), "{} is never touched", d.name);
            assert!(debian_registry(&daemons[i]).is_empty(), "{}", d.name);
            assert_eq!(d.guest.run_ok("cat /proc/cmdline").unwrap(), before[i], "{}", d.name);
        }
    }
    for i in 0..2 {
        assert_eq!(f.registry(i), ["step_b_v2"]);
    }
    let st = status(&journal);
    assert_eq!((st["counts"]["patched"].as_u64(), st["counts"]["no_patch_for_kernel"].as_u64()), (Some(3), Some(1)), "{st}");
    let o = fleet(&journal, &["rollback"], None);
    assert!(o.status.success(), "{}", said(&o));
    let s = steps(&journal);
    let name = debs[cloud].name;
    assert_eq!((outcome(&s, name), count(&s, name, Op::Revert, "ok")), (Some("rolled_back"), 1), "{s:#?}");
    assert!(debian_registry(&daemons[cloud]).is_empty());
    assert_eq!(debs[cloud].guest.run_ok("cat /proc/cmdline").unwrap(), before[cloud], "the rollback reverted the guest's code");
    assert!((0..2).all(|i| f.registry(i).is_empty()));
    for d in &debs {
        d.guest.check_console().unwrap_or_else(|e| panic!("{}: {e}", d.name));
    }
}
