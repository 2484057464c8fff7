//! Issue 13, item 3: the Debian 6.1.0-54 → -55 stable update (6.1.190-1 →
//! 6.1.192-1) as a corpus of live patches, benchmark-style (too long for
//! CI: one build of two objects per unit, one TCG boot).
//!
//! Input: `images/debian-fix-source.sh --from 54 --to 55 amd64` (the -54
//! source prepared with its .config, `fix.patch`, the -55 changelog and
//! the kernel's module list), and the units of
//! `tests/examples/cve_corpus_units.py` (one changed C file each, mapped to
//! CVE ids; run by this example when `units.tsv` is missing).
//!
//! For each chosen unit (mapped to a CVE,
//! built into this kernel by its Makefile and .config; `--max N` of them,
//! `--files a.c,b.c` to pick, `--budget SECONDS` to stop building after):
//! the file's part of the diff is built with `vsplice patch build --diff`
//! (first and cached time); then -54 boots once under QEMU TCG, each built
//! patch is applied live through the CLI, the guest must still answer
//! (a command through the channel, no oops on the console) and the patch is
//! reverted. Last, one cumulative patch of every unit that built
//! (`--cumulative --skip-refused`): applied, checked, reverted.
//!
//! `cargo build --release -p vsplice-vmm && cargo run --release -p
//! vsplice-tests --example cve_corpus -- [--max N] [--files LIST] [--budget S] [--no-boot]`
//! Writes `target/fixsrc/6.1.0-54-amd64/corpus/results.tsv` and prints
//! the table of docs/cve-corpus.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use vsplice_patcher::patch::diff::split;
use vsplice_tests::cli::{text, vsplice};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::{Guest, QemuConfig};
use vsplice_tests::testguest::workspace_root;

/// One unit of the corpus and what happened to it.
#[derive(Default, Clone)]
struct Unit {
    file: String,
    mapping: String,
    cves: Vec<String>,
    subjects: String,
    /// `built`, or the build's cause.
    build: String,
    why: String,
    functions: Vec<String>,
    first_s: f64,
    cached_s: f64,
    /// `applied`, `-` (not tried) or the apply's cause.
    apply: String,
    downtime_ms: f64,
    vsp: Option<PathBuf>,
    diff: PathBuf,
}

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1).cloned())
}

fn slug(file: &str) -> String {
    file.replace(['/', '.'], "_")
}

/// The units worth building: mapped to a CVE, built into this kernel by
/// its Makefile and .config.
fn units(dir: &Path) -> Vec<Unit> {
    let tsv = dir.join("corpus/units.tsv");
    if !tsv.is_file() {
        std::fs::create_dir_all(dir.join("corpus")).unwrap();
        let script = workspace_root().join("tests/examples/cve_corpus_units.py");
        let o = Command::new("python3").arg(script).arg(dir.join("fix.patch")).arg(dir.join("changes.txt")).arg(dir.join("config")).arg(dir.join("src")).output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        std::fs::write(&tsv, &o.stdout).unwrap();
    }
    let only: Option<Vec<String>> = arg("--files").map(|s| s.split(',').map(str::to_owned).collect());
    let mut out = Vec::new();
    for l in std::fs::read_to_string(&tsv).unwrap().lines().filter(|l| !l.starts_with('#')) {
        let c: Vec<&str> = l.split('\t').collect();
        if c.len() < 5 {
            continue;
        }
        let pick = match &only {
            Some(list) => list.iter().any(|f| f == c[0]),
            None => c[1] != "none" && c[2] == "y",
        };
        if pick {
            out.push(Unit { file: c[0].into(), mapping: c[1].into(), cves: c[3].split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(), subjects: c[4].into(), apply: "-".into(), ..Unit::default() });
        }
    }
    // Strong mappings first.
    out.sort_by_key(|u| (u.mapping != "name", u.file.clone()));
    out
}

struct Fix {
    dir: PathBuf,
    release: String,
}

impl Fix {
    fn build(&self, diff: &Path, out: &Path, extra: &[&str]) -> (std::process::Output, f64) {
        let p = |n: &str| self.dir.join(n).to_string_lossy().into_owned();
        let headers = p(&format!("headers/usr/src/linux-headers-{}", self.release));
        let (diff, out, src, kernel) = (diff.to_string_lossy().into_owned(), out.to_string_lossy().into_owned(), p("src"), p("vmlinuz"));
        let mut args = vec!["patch", "build", "--target", "linux", "--diff", &diff, "--source", &src, "--kernel", &kernel, "--headers", &headers, "-o", &out];
        args.extend_from_slice(extra);
        let t = Instant::now();
        let o = vsplice(&args);
        (o, t.elapsed().as_secs_f64())
    }
}

/// `vsplice: error [cause]: why` → (cause, why).
fn cause_of(stderr: &str) -> (String, String) {
    let last = stderr.lines().rev().find(|l| l.starts_with("vsplice: error [")).unwrap_or("vsplice: error [unknown]: no error line");
    let rest = last.trim_start_matches("vsplice: error [");
    let (c, w) = rest.split_once("]: ").unwrap_or((rest, ""));
    (c.to_owned(), w.chars().take(300).collect())
}

fn build_unit(fix: &Fix, u: &mut Unit, parts: &[split::FilePart], out: &Path) {
    let text_of = split::only(parts, std::slice::from_ref(&u.file));
    u.diff = out.join(format!("{}.patch", slug(&u.file)));
    std::fs::write(&u.diff, text_of).unwrap();
    let vsp = out.join(format!("{}.vsp", slug(&u.file)));
    let name = format!("cve-{}", slug(&u.file));
    let mut extra = vec!["--name", name.as_str()];
    for c in &u.cves {
        extra.extend(["--cve", c.as_str()]);
    }
    let (o, s) = fix.build(&u.diff, &vsp, &extra);
    u.first_s = s;
    if !o.status.success() {
        (u.build, u.why) = cause_of(&text(&o.stderr));
        eprintln!("  {}: refused [{}] {}", u.file, u.build, u.why);
        return;
    }
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    u.functions = m["replacements"].as_array().map(|r| r.iter().filter_map(|x| x["old"].as_str().map(str::to_owned)).collect()).unwrap_or_default();
    let (_, cached) = fix.build(&u.diff, &vsp, &extra);
    u.cached_s = cached;
    u.build = "built".into();
    u.vsp = Some(vsp);
    eprintln!("  {}: built in {:.1} s (cached {:.1} s): {}", u.file, u.first_s, u.cached_s, u.functions.join(" "));
}

/// Applies `vsp` through the CLI; (cause, downtime ms, name).
fn apply(g: &Guest, vsp: &Path) -> (String, f64, String) {
    let (gdb, arena) = (g.gdb_addr().unwrap().to_owned(), linuxpatch::arena_arg(g));
    let o = vsplice(&["patch", "apply", vsp.to_str().unwrap(), "--gdb", &gdb, "--target", "linux", "--arena", &arena, "--tasks", "agentless"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| serde_json::json!({"cause": cause_of(&text(&o.stderr)).0}));
    let cause = r["cause"].as_str().unwrap_or("unknown").to_owned();
    let dt = r["timings"]["downtime_us"].as_f64().unwrap_or(0.0) / 1e3;
    if cause != "ok" {
        eprintln!("    apply: {}{}", text(&o.stdout), text(&o.stderr));
    }
    let name = r["patch_name"].as_str().or(r["patch_id"].as_str()).unwrap_or_default().to_owned();
    (cause, dt, name)
}

fn revert(g: &Guest, name: &str) -> bool {
    let (gdb, arena) = (g.gdb_addr().unwrap().to_owned(), linuxpatch::arena_arg(g));
    let o = vsplice(&["patch", "revert", name, "--gdb", &gdb, "--target", "linux", "--arena", &arena, "--tasks", "agentless"]);
    if !o.status.success() {
        eprintln!("    revert {name}: {}{}", text(&o.stdout), text(&o.stderr));
    }
    o.status.success()
}

/// The guest answers a command and its console shows no oops or warning.
fn alive(g: &mut Guest) -> Result<(), String> {
    let o = g.run("echo alive; ls /proc/self/fd >/dev/null; cat /proc/loadavg").map_err(|e| e.to_string())?;
    if o.status != 0 || !o.text().contains("alive") {
        return Err(format!("no answer: {}", o.text()));
    }
    let p = g.console_problems();
    if p.is_empty() {
        Ok(())
    } else {
        Err(format!("console: {p:?}"))
    }
}

fn main() {
    let dir = workspace_root().join("target/fixsrc/6.1.0-54-amd64");
    assert!(dir.join(".done").is_file(), "no corpus: run images/debian-fix-source.sh --from 54 --to 55 amd64");
    let fix = Fix { release: std::fs::read_to_string(dir.join("release")).unwrap().trim().to_owned(), dir: dir.clone() };
    let out = dir.join("corpus");
    std::fs::create_dir_all(&out).unwrap();
    let parts = split::per_file(&std::fs::read_to_string(dir.join("fix.patch")).unwrap());
    let mut all = units(&dir);
    let max: usize = arg("--max").and_then(|s| s.parse().ok()).unwrap_or(all.len());
    all.truncate(max);
    eprintln!("cve_corpus: {} unit(s) to build", all.len());
    let budget: f64 = arg("--budget").and_then(|s| s.parse().ok()).unwrap_or(f64::INFINITY);
    let t0 = Instant::now();
    for u in all.iter_mut() {
        if t0.elapsed().as_secs_f64() > budget {
            u.build = "not_tried".into();
            u.why = "the run's build budget (--budget) was spent".into();
            continue;
        }
        build_unit(&fix, u, &parts, &out);
        write_results(&out, &all_snapshot(u), false);
    }
    let built: Vec<usize> = (0..all.len()).filter(|&i| all[i].vsp.is_some()).collect();
    let mut cumulative = String::from("cumulative: not tried");
    if !built.is_empty() && !std::env::args().any(|a| a == "--no-boot") {
        let mut cfg = QemuConfig::new("cve_corpus", dir.join("vmlinuz"), Some(dir.join("initramfs.cpio.gz")));
        cfg.extra_append.push("vsplice.agent=0".into());
        let mut g = Guest::boot(cfg).expect("boot -54");
        let t_boot = g.boot_time();
        eprintln!("cve_corpus: {} booted in {:.1} s", g.run_ok("uname -r").unwrap().trim(), t_boot.as_secs_f64());
        for &i in &built {
            let u = &mut all[i];
            let (cause, dt, name) = apply(&g, u.vsp.as_ref().unwrap());
            u.downtime_ms = dt;
            if cause != "ok" {
                u.apply = cause;
                continue;
            }
            u.apply = match alive(&mut g) {
                Ok(()) => "applied".into(),
                Err(e) => format!("guest_broken: {e}"),
            };
            if !revert(&g, &name) {
                u.apply = format!("{} (revert failed)", u.apply);
            }
            eprintln!("  {}: {} ({:.1} ms downtime)", u.file, u.apply, dt);
        }
        // The cumulative patch of every unit that built.
        let files: Vec<String> = built.iter().map(|&i| all[i].file.clone()).collect();
        let cdiff = out.join("cumulative.patch");
        std::fs::write(&cdiff, split::only(&parts, &files)).unwrap();
        let cvsp = out.join("cumulative.vsp");
        let (o, s) = fix.build(&cdiff, &cvsp, &["--cumulative", "--skip-refused", "--name", "cve-54-55-cumulative"]);
        cumulative = if o.status.success() {
            let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let n = m["replacements"].as_array().map_or(0, Vec::len);
            let left = m["build"]["left_out"].as_array().map_or(0, Vec::len);
            let (cause, dt, name) = apply(&g, &cvsp);
            let ok = cause == "ok" && alive(&mut g).is_ok();
            let rev = ok && revert(&g, &name);
            format!("cumulative: {} file(s), {n} function(s) replaced, {left} left out, built in {s:.1} s; apply {cause}, downtime {dt:.1} ms, guest answers {ok}, reverted {rev}", files.len())
        } else {
            format!("cumulative: build refused {:?}", cause_of(&text(&o.stderr)))
        };
        eprintln!("{cumulative}");
    }
    write_results(&out, &all, true);
    std::fs::write(out.join("cumulative.txt"), format!("{cumulative}\n")).unwrap();
    println!("{cumulative}");
}

fn all_snapshot(u: &Unit) -> Vec<Unit> {
    vec![u.clone()]
}

/// Appends (progress) or writes (final) the results and prints the table.
fn write_results(out: &Path, units: &[Unit], last: bool) {
    let row = |u: &Unit| format!("{}\t{}\t{}\t{}\t{}\t{}\t{:.1}\t{:.1}\t{}\t{:.1}\t{}\n", u.file, u.mapping, u.cves.join(","), u.functions.join(" "), u.build, u.why.replace('\t', " "), u.first_s, u.cached_s, u.apply, u.downtime_ms, u.subjects);
    if !last {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(out.join("progress.tsv")).unwrap();
        for u in units {
            f.write_all(row(u).as_bytes()).unwrap();
        }
        return;
    }
    let body: String = units.iter().map(row).collect();
    std::fs::write(out.join("results.tsv"), format!("file\tmapping\tcves\tfunctions\tbuild\twhy\tfirst_s\tcached_s\tapply\tdowntime_ms\tsubjects\n{body}")).unwrap();
    for u in units {
        println!("| `{}` | {} | {} | {} | {} | {:.0} / {:.1} | {} |", u.file, u.cves.join(" "), u.mapping, if u.functions.is_empty() { "-".into() } else { u.functions.join(", ") }, if u.build == "built" { "built".into() } else { format!("refused `{}`", u.build) }, u.first_s, u.cached_s, if u.apply == "applied" { format!("applied ({:.1} ms)", u.downtime_ms) } else { u.apply.clone() });
    }
}
