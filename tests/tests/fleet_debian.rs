//! A fleet of mixed kernels: two test-guest VMs under `vsplice run
//! --api-sock` and a stock Debian kernel under QEMU (TCG) behind `vsplice
//! attach --api-sock`, in two hosts. The plan carries only the test
//! guest's patch: the Debian guest reports its own build-id (`GET /vm`
//! through the attach daemon), is `no_patch_for_kernel`, and is never
//! touched (no journal step names it, its registry stays empty), while the
//! test guests are patched exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_tests::api::build_example;
use vsplice_tests::attach::AttachDaemon;
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::fleet::{count, fleet, outcome, said, steps, Fleet, QUIET};
use vsplice_tests::{linuxpatch, testguest};
use vsplice_vmm::fleet::journal::Op;

#[test]
fn a_debian_guest_is_no_patch_for_kernel_and_never_touched() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_debian") {
        return;
    }
    let Some(g) = linuxpatch::boot_agentless(Flavour::CloudAmd64, "fleet-debian") else { return };
    let img = debian_images(Flavour::CloudAmd64).unwrap();
    let build_id = LinuxImage::open(&img.vmlinuz).unwrap().build_id().unwrap().to_owned();
    eprintln!("fleet_debian: Debian {} booted under QEMU (build-id {build_id})", img.release);
    let f = Fleet::boot("debian", 2, |_| QUIET.to_owned());
    let d = AttachDaemon::start(&f.dir, g.gdb_addr().unwrap(), &linuxpatch::arena_arg(&g), &[], Duration::from_secs(600)).unwrap();
    let patch = build_example(&f.dir, "step_b_v2.c");
    let inv = f.inventory(&[serde_json::json!({"name": "debian", "api_sock": d.sock, "labels": {"host": "b"}})]);
    let plan = f.plan("p", &serde_json::json!({"patches": [&patch], "allow_unsigned": true, "canary": {"count": 1}, "parallelism": 2}));

    let o = fleet(&f.dir.join("dry.redb"), &["--json", "plan", "--inventory", inv.to_str().unwrap(), "--plan", plan.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", said(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let deb = r["targets"].as_array().unwrap().iter().find(|t| t["target"]["name"] == "debian").unwrap().clone();
    assert_eq!((deb["skip"].as_str(), deb["build_id"].as_str(), deb["release"].as_str()), (Some("no_patch_for_kernel"), Some(build_id.as_str()), Some(img.release.as_str())), "{deb}");

    let journal = f.dir.join("j.redb");
    let o = fleet(&journal, &["start", "--inventory", inv.to_str().unwrap(), "--plan", plan.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", said(&o));
    let s = steps(&journal);
    assert!(s.iter().all(|x| x.target != "debian"), "the Debian guest is never touched");
    for i in 0..2 {
        let n = Fleet::name(i);
        assert_eq!((outcome(&s, &n), count(&s, &n, Op::Apply, "ok")), (Some("patched"), 1), "{n}");
        assert_eq!(f.registry(i), ["step_b_v2"]);
    }
    let deb_patches = d.req("GET", "/patches", None, b"");
    assert_eq!(deb_patches.status, 200);
    assert!(deb_patches.json()["patches"].as_array().unwrap().is_empty(), "{}", deb_patches.text());
    let vm = d.req("GET", "/vm", None, b"").json();
    assert_eq!((vm["hypervisor"].as_str(), vm["console"].clone()), (Some("gdbstub"), serde_json::Value::Null), "attached: the console is QEMU's, not watched");
    eprintln!("fleet_debian: the daemon says {} {}", vm["kernel"]["release"], vm["kernel"]["build_id"]);
    let st: serde_json::Value = serde_json::from_slice(&fleet(&journal, &["--json", "status"], None).stdout).unwrap();
    assert_eq!((st["counts"]["patched"].as_u64(), st["counts"]["no_patch_for_kernel"].as_u64()), (Some(2), Some(1)), "{st}");
}
