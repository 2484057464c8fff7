//! Issue 13, item 3, the module half: the files of the Debian 6.1.0-54 →
//! -55 update that Kbuild places in **modules** (generic flavour), built
//! with `vsplice patch build --diff --modules` and applied live to the
//! module loaded in a running -54 under QEMU TCG. Benchmark-style, like
//! `cve_corpus` (too long for CI: ~20 s of Kbuild per file, one boot per
//! batch).
//!
//! Two phases, run one after the other or separately:
//!
//! - `--phase build`: each unit of `corpus/units.tsv` placed `m` (or the
//!   files of `--files`, wherever they are built) is built with the image
//!   package's module tree (`image-modules/`, unpacked from `dl/` by
//!   `modcorpus::corpus_or_skip`); first and cached build time, the
//!   module, the functions replaced or the refusal's cause. Rows go to
//!   `corpus/modules/built.tsv` as they finish (a re-run skips rows there).
//! - `--phase boot`: the built patches, `--batch N` per boot: an initramfs
//!   with every module they target and its dependencies (from each `.ko`'s
//!   `.modinfo` `depends=`), -54 booted, each module loaded with `insmod`
//!   (a module that does not load is named `module_not_loadable` with the
//!   guest's error, never dropped), each patch applied, the guest must
//!   answer and the console show no new Oops/WARN/BUG, reverted.
//!   Rows go to `corpus/modules/results.tsv`.
//!
//! `cargo run --release -p vsplice-tests --example cve_corpus_modules --
//! [--phase build|boot] [--mapping name] [--max N] [--files a.c,b.c]
//! [--budget S] [--batch N] [--redo]` (`--redo`: build or apply again what
//! already has a row; the last row of a file counts). `--phase cumulative
//! --files LIST`: one cumulative patch of built-in files, applied and
//! reverted on a fresh -54.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use vsplice_tests::cli::text;
use vsplice_tests::modcorpus::{corpus_or_skip, replaced_names, ModCorpus, PatchCli};

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1).cloned())
}

fn slug(file: &str) -> String {
    file.replace(['/', '.'], "_")
}

/// `vsplice: error [cause]: why` → (cause, why).
fn cause_of(stderr: &str) -> (String, String) {
    let last = stderr.lines().rev().find(|l| l.starts_with("vsplice: error [")).unwrap_or("vsplice: error [unknown]: no error line");
    let rest = last.trim_start_matches("vsplice: error [");
    let (c, w) = rest.split_once("]: ").unwrap_or((rest, ""));
    (c.to_owned(), w.chars().take(300).collect::<String>().replace('\t', " "))
}

/// One row of `units.tsv`: file, mapping, placement, CVE ids.
struct Unit {
    file: String,
    mapping: String,
    cves: Vec<String>,
}

fn units(c: &ModCorpus) -> Vec<Unit> {
    let tsv = std::fs::read_to_string(c.dir.join("corpus/units.tsv")).expect("corpus/units.tsv (run the cve_corpus example once)");
    let only: Option<Vec<String>> = arg("--files").map(|s| s.split(',').map(str::to_owned).collect());
    let mapping = arg("--mapping");
    let mut out: Vec<Unit> = tsv
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|c| c.len() >= 5)
        .filter(|c| match &only {
            Some(list) => list.iter().any(|f| f == c[0]),
            None => c[1] != "none" && c[2] == "m" && mapping.as_deref().is_none_or(|m| m == c[1]),
        })
        .map(|c| Unit { file: c[0].into(), mapping: c[1].into(), cves: c[3].split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect() })
        .collect();
    out.sort_by_key(|u| (u.mapping != "name", u.file.clone()));
    out
}

/// Columns of `built.tsv`.
const BUILT_HEAD: &str = "file\tmapping\tcves\tmodule\tfunctions\tbuild\twhy\tfirst_s\tcached_s\n";

fn build_phase(c: &ModCorpus, out: &Path) {
    let parts = vsplice_patcher::patch::diff::split::per_file(&std::fs::read_to_string(c.dir.join("fix.patch")).unwrap());
    let built = out.join("built.tsv");
    let done: BTreeSet<String> = std::fs::read_to_string(&built).unwrap_or_default().lines().skip(1).filter_map(|l| l.split('\t').next().map(str::to_owned)).collect();
    if !built.is_file() {
        std::fs::write(&built, BUILT_HEAD).unwrap();
    }
    let mut all = units(c);
    // `--redo`: build again what has a row (a later row wins in the table).
    if !std::env::args().any(|a| a == "--redo") {
        all.retain(|u| !done.contains(&u.file));
    }
    all.truncate(arg("--max").and_then(|s| s.parse().ok()).unwrap_or(usize::MAX));
    let budget: f64 = arg("--budget").and_then(|s| s.parse().ok()).unwrap_or(f64::INFINITY);
    eprintln!("cve_corpus_modules: {} unit(s) to build ({} done before)", all.len(), done.len());
    let modules = c.modules().to_string_lossy().into_owned();
    let t0 = Instant::now();
    for u in &all {
        if t0.elapsed().as_secs_f64() > budget {
            eprintln!("cve_corpus_modules: build budget spent, {} left for a later run", all.len());
            break;
        }
        let diff = out.join(format!("{}.patch", slug(&u.file)));
        std::fs::write(&diff, vsplice_patcher::patch::diff::split::only(&parts, std::slice::from_ref(&u.file))).unwrap();
        let vsp = out.join(format!("{}.vsp", slug(&u.file)));
        let name = format!("cve-{}", slug(&u.file));
        let mut extra = vec!["--modules", modules.as_str(), "--name", name.as_str()];
        for cve in &u.cves {
            extra.extend(["--cve", cve.as_str()]);
        }
        let t = Instant::now();
        let o = c.build_diff(&diff, &vsp, &extra);
        let first = t.elapsed().as_secs_f64();
        let err = text(&o.stderr);
        let module = err.lines().find_map(|l| l.split_once(" is part of module ").map(|(_, r)| r.split(':').next().unwrap_or_default().to_owned())).unwrap_or_else(|| "vmlinux".into());
        let (build, why, functions, cached) = if o.status.success() {
            let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let t = Instant::now();
            let again = c.build_diff(&diff, &vsp, &extra);
            let cached = t.elapsed().as_secs_f64();
            assert!(again.status.success(), "the cached build failed: {}", text(&again.stderr));
            ("built".to_owned(), String::new(), replaced_names(&m).join(" "), cached)
        } else {
            let (cause, why) = cause_of(&err);
            (cause, why, String::new(), 0.0)
        };
        eprintln!("  {} [{module}]: {build} in {first:.1} s (cached {cached:.1} s) {functions}{why}", u.file);
        let row = format!("{}\t{}\t{}\t{module}\t{functions}\t{build}\t{why}\t{first:.1}\t{cached:.1}\n", u.file, u.mapping, u.cves.join(","));
        use std::io::Write as _;
        std::fs::OpenOptions::new().append(true).open(&built).unwrap().write_all(row.as_bytes()).unwrap();
    }
}

/// Every `.ko` of the module tree by module name (`-` as `_`).
fn ko_index(root: &Path) -> HashMap<String, PathBuf> {
    let mut out = HashMap::new();
    let mut stack = vec![root.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                out.insert(n.replace('-', "_"), p);
            }
        }
    }
    out
}

/// The values of `key=` in a `.ko`'s `.modinfo`.
fn modinfo(ko: &Path, key: &str) -> Vec<String> {
    use object::{Object as _, ObjectSection as _};
    let Ok(bytes) = std::fs::read(ko) else { return Vec::new() };
    let Ok(f) = object::File::parse(&*bytes) else { return Vec::new() };
    let Some(data) = f.section_by_name(".modinfo").and_then(|s| s.data().ok()) else { return Vec::new() };
    let want = format!("{key}=");
    data.split(|&b| b == 0).filter_map(|kv| std::str::from_utf8(kv).ok()?.strip_prefix(want.as_str()).map(str::to_owned)).collect()
}

/// What `m` needs loaded first: `depends=` (symbols) and the `pre:` part
/// of `softdep=` (e.g. libcrc32c's `crc32c`: its init fails with ENOENT,
/// which busybox insmod prints as "unknown symbol", without a crc32c
/// algorithm), a softdep resolved by module name, then by `alias=`
/// (`crypto-crc32c`), the generic implementation preferred.
fn needs(ko: &Path, idx: &HashMap<String, PathBuf>) -> Vec<String> {
    let mut out: Vec<String> = modinfo(ko, "depends").iter().flat_map(|v| v.split(',').filter(|s| !s.is_empty()).map(|s| s.replace('-', "_")).collect::<Vec<_>>()).collect();
    for soft in modinfo(ko, "softdep") {
        let pre = soft.split("post:").next().unwrap_or_default().trim_start_matches("pre:").to_owned();
        for name in pre.split_whitespace().map(|n| n.replace('-', "_")) {
            let found = [name.clone(), format!("{name}_generic")].into_iter().find(|n| idx.contains_key(n)).or_else(|| {
                let dir = ko.parent()?.parent()?.to_owned();
                let mut hits: Vec<String> = idx.iter().filter(|(_, p)| p.starts_with(&dir)).filter(|(_, p)| modinfo(p, "alias").iter().any(|a| *a == name || *a == format!("crypto-{name}"))).map(|(n, _)| n.clone()).collect();
                hits.sort_by_key(|n| !n.contains("generic"));
                hits.into_iter().next()
            });
            out.extend(found);
        }
    }
    out
}

/// `m` and everything it needs, dependencies first, appended to `order`.
fn with_deps(m: &str, idx: &HashMap<String, PathBuf>, order: &mut Vec<String>, seen: &mut BTreeSet<String>) {
    if !seen.insert(m.to_owned()) {
        return;
    }
    if let Some(p) = idx.get(m) {
        for d in needs(p, idx) {
            with_deps(&d, idx, order, seen);
        }
    }
    order.push(m.to_owned());
}

/// Console trouble lines after the first `from`.
fn new_problems(g: &vsplice_tests::qemu::Guest, from: usize) -> Vec<String> {
    g.console_problems().into_iter().skip(from).collect()
}

fn boot_phase(c: &ModCorpus, out: &Path) {
    let built = std::fs::read_to_string(out.join("built.tsv")).expect("built.tsv: run --phase build first");
    let rows: Vec<Vec<String>> = built.lines().skip(1).map(|l| l.split('\t').map(str::to_owned).collect()).filter(|c: &Vec<String>| c.len() >= 9 && c[5] == "built").collect();
    let only: Option<Vec<String>> = arg("--files").map(|s| s.split(',').map(str::to_owned).collect());
    // The last row of a file wins (`--redo` appends); files with a result
    // are not applied again unless `--redo`.
    let mut last: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let all_rows: Vec<Vec<String>> = built.lines().skip(1).map(|l| l.split('\t').map(str::to_owned).collect()).collect();
    for r in all_rows.into_iter().filter(|r| r.len() >= 9) {
        last.insert(r[0].clone(), r);
    }
    // A file whose module did not load (`not_tried`) is tried again.
    let tried: BTreeSet<String> = std::fs::read_to_string(out.join("results.tsv")).unwrap_or_default().lines().skip(1).map(|l| l.split('\t').collect::<Vec<_>>()).filter(|c| c.len() >= 5 && c[3] != "not_tried").map(|c| c[0].to_owned()).collect();
    let redo = std::env::args().any(|a| a == "--redo");
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .filter(|r| last.get(&r[0]) == Some(r) && (redo || !tried.contains(&r[0])))
        .filter(|r| only.as_ref().is_none_or(|l| l.contains(&r[0])))
        .collect();
    let idx = ko_index(&c.modules());
    let results = out.join("results.tsv");
    if !results.is_file() {
        std::fs::write(&results, "file\tmodule\tload\tapply\tdowntime_ms\n").unwrap();
    }
    let batch: usize = arg("--batch").and_then(|s| s.parse().ok()).unwrap_or(30);
    for (bi, chunk) in rows.chunks(batch.max(1)).enumerate() {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for r in chunk.iter().filter(|r| r[3] != "vmlinux") {
            with_deps(&r[3], &idx, &mut order, &mut seen);
        }
        let dir = vsplice_tests::scratch::tmp_dir(&format!("cve-mod-batch{bi}"));
        let stage = dir.join("extra/modules/corpus");
        std::fs::create_dir_all(&stage).unwrap();
        let mut missing = BTreeSet::new();
        for m in &order {
            match idx.get(m) {
                Some(p) => drop(std::fs::copy(p, stage.join(format!("{m}.ko"))).unwrap()),
                None => drop(missing.insert(m.clone())), // built in, or not in the package
            }
        }
        let initrd = initramfs(c, &dir);
        eprintln!("cve_corpus_modules: batch {bi}: {} patch(es), {} module(s) to load", chunk.len(), order.len());
        let Some(mut g) = c.boot(&format!("cve_corpus_modules_{bi}"), initrd) else { return };
        eprintln!("  booted in {:.1} s", g.boot_time().as_secs_f64());
        let mut load: BTreeMap<String, String> = BTreeMap::new();
        for m in order.iter().filter(|m| !missing.contains(*m)) {
            let before = g.console_problems().len();
            let o = g.run(&format!("grep -q '^{m} ' /proc/modules || insmod /modules/corpus/{m}.ko 2>&1; grep -q '^{m} ' /proc/modules && echo LOADED"));
            let verdict = match o {
                Ok(o) if o.text().contains("LOADED") => match new_problems(&g, before).as_slice() {
                    [] => "loaded".to_owned(),
                    p => format!("loaded_with_console_trouble: {}", p.join(" / ").chars().take(200).collect::<String>()),
                },
                Ok(o) => format!("module_not_loadable: {}", o.text().trim().replace(['\t', '\n'], " ").chars().take(200).collect::<String>()),
                Err(e) => format!("guest_lost: {e}"),
            };
            eprintln!("  insmod {m}: {verdict}");
            load.insert(m.clone(), verdict);
        }
        let cli = PatchCli::new(&g).unwrap();
        for r in chunk {
            let (file, module) = (&r[0], &r[3]);
            let loaded = if module == "vmlinux" { "vmlinux".to_owned() } else { load.get(module).cloned().unwrap_or_else(|| "module_not_loadable: not in the image package".into()) };
            let (apply, dt) = if module != "vmlinux" && !loaded.starts_with("loaded") {
                ("not_tried".to_owned(), 0.0)
            } else {
                apply_check_revert(&mut g, &cli, &out.join(format!("{}.vsp", slug(file))))
            };
            eprintln!("  {file} [{module}]: {apply} ({dt:.1} ms)");
            let row = format!("{file}\t{module}\t{loaded}\t{apply}\t{dt:.1}\n");
            use std::io::Write as _;
            std::fs::OpenOptions::new().append(true).open(&results).unwrap().write_all(row.as_bytes()).unwrap();
        }
    }
}

/// The corpus initramfs plus `dir/extra` as a second gzip'd cpio.
fn initramfs(c: &ModCorpus, dir: &Path) -> PathBuf {
    let extra = dir.join("extra.cpio.gz");
    let st = std::process::Command::new("sh").arg("-c").arg(format!("cd '{}' && find modules | cpio -o -H newc --quiet | gzip -1 > '{}'", dir.join("extra").display(), extra.display())).status().unwrap();
    assert!(st.success(), "cpio of the batch's modules");
    let mut all = std::fs::read(c.dir.join("initramfs.cpio.gz")).unwrap();
    all.extend(std::fs::read(&extra).unwrap());
    let out = dir.join("initramfs.cpio.gz");
    std::fs::write(&out, all).unwrap();
    out
}

/// Applies `vsp`, checks the guest, reverts: (`applied` or the cause, downtime ms).
fn apply_check_revert(g: &mut vsplice_tests::qemu::Guest, cli: &PatchCli, vsp: &Path) -> (String, f64) {
    let before = g.console_problems().len();
    let o = cli.run(&["apply", vsp.to_str().unwrap()]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| serde_json::json!({"cause": cause_of(&text(&o.stderr)).0}));
    let cause = r["cause"].as_str().unwrap_or("unknown").to_owned();
    let dt = r["timings"]["downtime_us"].as_f64().unwrap_or(0.0) / 1e3;
    if cause != "ok" {
        // The report's stage, reason and message; else the CLI's error line.
        let why = match r["message"].as_str() {
            Some(m) => format!("{} {}: {m}", r["stage"].as_str().unwrap_or("?"), r["reason"].as_str().unwrap_or("-")),
            None => cause_of(&text(&o.stderr)).1,
        };
        return (format!("{cause}: {}", why.replace(['\t', '\n'], " ").chars().take(300).collect::<String>()), dt);
    }
    let name = r["patch_name"].as_str().or(r["patch_id"].as_str()).unwrap_or_default().to_owned();
    let alive = match g.run("echo alive; ls /proc/self/fd >/dev/null; cat /proc/loadavg") {
        Ok(o) if o.status == 0 && o.text().contains("alive") => match new_problems(g, before).as_slice() {
            [] => "applied".to_owned(),
            p => format!("guest_broken: console: {}", p.join(" / ").chars().take(200).collect::<String>()),
        },
        Ok(o) => format!("guest_broken: no answer: {}", o.text()),
        Err(e) => format!("guest_broken: {e}"),
    };
    let rev = cli.run(&["revert", &name]);
    if rev.status.success() {
        (alive, dt)
    } else {
        (format!("{alive} (revert failed: {})", cause_of(&text(&rev.stderr)).1), dt)
    }
}

fn main() {
    // The module tree is unpacked whole (once) by corpus_or_skip's first module.
    let Some(c) = corpus_or_skip("cve_corpus_modules", "6.1.0-54-amd64", "images/debian-fix-source.sh --from 54 --to 55 amd64", &[("fs/ext4", "ext4")]) else { return };
    let out = c.dir.join("corpus/modules");
    std::fs::create_dir_all(&out).unwrap();
    let phase = arg("--phase");
    if phase.as_deref() != Some("boot") {
        build_phase(&c, &out);
    }
    if phase.as_deref() == Some("cumulative") {
        return cumulative(&c, &out);
    }
    if phase.as_deref() != Some("build") {
        boot_phase(&c, &out);
    }
}

/// `--phase cumulative --files a.c,b.c`: one cumulative patch of the
/// given built-in files (`--cumulative --skip-refused`), applied to a
/// fresh -54, checked, reverted; prints one line.
fn cumulative(c: &ModCorpus, out: &Path) {
    let files: Vec<String> = arg("--files").expect("--files").split(',').map(str::to_owned).collect();
    let parts = vsplice_patcher::patch::diff::split::per_file(&std::fs::read_to_string(c.dir.join("fix.patch")).unwrap());
    let diff = out.join("cumulative-builtin.patch");
    std::fs::write(&diff, vsplice_patcher::patch::diff::split::only(&parts, &files)).unwrap();
    let vsp = out.join("cumulative-builtin.vsp");
    let t = Instant::now();
    let o = c.build_diff(&diff, &vsp, &["--cumulative", "--skip-refused", "--name", "cve-54-55-builtin-cumulative"]);
    let build_s = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "cumulative build: {}", text(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (n, left) = (m["replacements"].as_array().map_or(0, Vec::len), m["build"]["left_out"].as_array().map_or(0, Vec::len));
    let Some(mut g) = c.boot("cve_corpus_cumulative", c.dir.join("initramfs.cpio.gz")) else { return };
    let cli = PatchCli::new(&g).unwrap();
    let (apply, dt) = apply_check_revert(&mut g, &cli, &vsp);
    println!("cumulative: {} file(s), {n} function(s) replaced, {left} left out, built in {build_s:.1} s; {apply}, downtime {dt:.1} ms", files.len());
}
