#!/usr/bin/env python3
"""The tables of docs/cve-corpus.md from the corpus runs of the Debian
6.1.0-54 -> -55 update: per file (built-in and modules), per CVE id (strong
or weak), refusals by cause, build times and downtimes.

Inputs, all under CORPUS (target/fixsrc/6.1.0-54-amd64/corpus):
  units.tsv            cve_corpus_units.py: file, mapping, placement, CVEs,
                       subjects (`subject [CVE-a,CVE-b]`, ` | `-separated)
  results-run1.tsv, results.tsv
                       examples/cve_corpus (the built-in runs: the first,
                       then the second after two build fixes)
  modules/built.tsv    examples/cve_corpus_modules --phase build
  modules/results.tsv  examples/cve_corpus_modules --phase boot
A file's later rows win (modules/ rows over results.tsv: the built-in files
rebuilt after a fix of the build go through cve_corpus_modules too).

A CVE id is delivered live when every file mapped to it that this kernel
builds (placed y, m or unknown) was applied live and reverted with a clean
console. It is **strong** when, besides, a function the build's manifest
says changed (`.cold`/`.part.N`/`.isra.N`/`.constprop.N` stripped) is named
by the CVE's own changelog subject (`foo()`, or an identifier with `_`);
otherwise **weak** (the file was only matched by the subject's prefix, or
the subject names a function the manifest does not replace).

Usage: cve_corpus_table.py CORPUS > tables.md
"""
import re
import statistics
import sys
from collections import Counter, defaultdict

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


def rows(path, min_cols):
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError:
        return []
    return [l.split("\t") for l in lines[1:] if l and not l.startswith("#") and len(l.split("\t")) >= min_cols]


def base(fn):
    return re.split(r"\.(cold|part|isra|constprop|lto_priv)\b", fn)[0]


def names_of(subject):
    desc = subject.split(":")[-1]
    out = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\(\)", desc))
    out |= {w for w in IDENT.findall(desc) if "_" in w.strip("_") and not w.isupper()}
    return out


def main():
    d = sys.argv[1]
    units = {}
    subjects = defaultdict(list)  # cve -> subjects
    for c in open(f"{d}/units.tsv", encoding="utf-8").read().splitlines():
        c = c.split("\t")
        if c[0].startswith("#") or len(c) < 5 or c[1] == "none":
            continue
        units[c[0]] = {"mapping": c[1], "placed": c[2], "cves": [x for x in c[3].split(",") if x]}
        for s in c[4].split(" | "):
            m = re.match(r"(.*) \[([^\]]*)\]$", s)
            if m:
                for cve in m.group(2).split(","):
                    if s not in subjects[cve]:
                        subjects[cve].append(m.group(1))
    st = {}  # file -> status dict
    for r in rows(f"{d}/results-run1.tsv", 11) + rows(f"{d}/results.tsv", 11):
        if r[4] == "not_tried":
            continue
        first = st[r[0]]["first"] if r[0] in st else float(r[6])
        st[r[0]] = {"module": "vmlinux", "functions": r[3].split(), "build": r[4], "why": r[5], "first": first, "cached": float(r[7]), "apply": r[8], "dt": float(r[9]), "run": "built-in run"}
    for r in rows(f"{d}/modules/built.tsv", 9):
        # A rebuild after a fix (`--redo`) finds its objects cached: the
        # file's first build time is that of its earliest row.
        first = st[r[0]]["first"] if r[0] in st else float(r[7])
        st[r[0]] = {"module": r[3], "functions": r[4].split(), "build": r[5], "why": r[6], "first": first, "cached": float(r[8]), "apply": "not_applied_yet", "dt": 0.0, "run": "modules run"}
    for r in rows(f"{d}/modules/results.tsv", 5):
        if r[0] in st:
            st[r[0]]["apply"] = "applied" if r[3] == "applied" else (r[3] if r[3] != "not_tried" else r[2])
            st[r[0]]["load"] = r[2]
            st[r[0]]["dt"] = float(r[4])
    applied = {f for f, s in st.items() if s["build"] == "built" and s["apply"] == "applied"}

    # Per CVE.
    by_cve = defaultdict(list)
    for f, u in units.items():
        for c in u["cves"]:
            by_cve[c].append(f)
    strong, weak, partial = [], [], []
    for cve, files in sorted(by_cve.items()):
        inkernel = [f for f in files if units[f]["placed"] in ("y", "m", "?")]
        if not inkernel or not any(f in applied for f in inkernel):
            continue
        if not all(f in applied for f in inkernel):
            partial.append((cve, [f for f in inkernel if f not in applied]))
            continue
        names = set().union(*(names_of(s) for s in subjects.get(cve, [""])))
        hit = sorted({base(fn) for f in inkernel for fn in st[f]["functions"]} & names)
        (strong if hit else weak).append((cve, inkernel, hit))

    def where(f):
        return "vmlinux" if st[f]["module"] == "vmlinux" else f"`{st[f]['module']}`"

    tried = [f for f in st if f in units]
    mods = [f for f in tried if st[f]["module"] != "vmlinux" or units[f]["placed"] == "m"]
    print("| | built-in | modules | all |\n|---|---|---|---|")
    for label, pred in [("files tried", lambda f: True), ("built into a patch", lambda f: st[f]["build"] == "built"), ("applied live, console clean, reverted", lambda f: f in applied)]:
        a = sum(1 for f in tried if f not in mods and pred(f))
        b = sum(1 for f in mods if pred(f))
        print(f"| {label} | {a} | {b} | {a + b} |")
    nfun = sum(len(st[f]["functions"]) for f in applied)
    print(f"\nFunctions replaced by the applied files: {nfun}.\n")
    print(f"**CVE ids delivered live, strong: {len(strong)}**; weak: {len(weak)}; partly delivered: {len(partial)}.\n")
    print("Strong (a replaced function is named by the CVE's subject):\n")
    print("| CVE | files | named function(s) replaced | subject |\n|---|---|---|---|")
    for cve, files, hit in strong:
        print(f"| {cve} | {', '.join(f'`{f}` ({where(f)})' for f in files)} | {', '.join(f'`{h}`' for h in hit)} | {subjects.get(cve, ['?'])[0]} |")
    print("\nWeak (every mapped file applied, but no replaced function is named by the subject):\n")
    print("| CVE | files | functions replaced | subject |\n|---|---|---|---|")
    for cve, files, _ in weak:
        fns = sorted({base(fn) for f in files for fn in st[f]["functions"]})
        print(f"| {cve} | {', '.join(f'`{f}`' for f in files)} | {', '.join(fns[:6])}{' …' if len(fns) > 6 else ''} | {subjects.get(cve, ['?'])[0]} |")
    print("\nPartly delivered (files not applied): " + "; ".join(f"{c} ({', '.join(f'`{f}`' for f in fs)})" for c, fs in partial) + "\n")

    causes = Counter()
    for f in tried:
        s = st[f]
        if s["build"] != "built":
            causes[s["build"]] += 1
        elif s["apply"] != "applied":
            causes[re.split(r"[: ]", s["apply"])[0] or "?"] += 1
    print("Refusals by cause (files): " + ", ".join(f"`{c}` {n}" for c, n in causes.most_common()) + "\n")
    for label, pool in [("built-in", [f for f in tried if f not in mods]), ("modules", mods)]:
        firsts = [st[f]["first"] for f in pool if st[f]["build"] == "built"]
        cached = [st[f]["cached"] for f in pool if st[f]["build"] == "built"]
        dts = [st[f]["dt"] for f in pool if f in applied and st[f]["dt"] > 0]
        if firsts and dts:
            print(f"- {label}: build first median {statistics.median(firsts):.1f} s (max {max(firsts):.1f}), cached median {statistics.median(cached):.1f} s; apply downtime median {statistics.median(dts):.1f} ms (min {min(dts):.1f}, max {max(dts):.1f}), n = {len(dts)}")
    print("\n### Module files\n\n| file | module | CVE ids (mapping) | functions replaced | build | live | build s first / cached | downtime ms |\n|---|---|---|---|---|---|---|---|")
    for f in sorted(mods, key=lambda f: (st[f]["build"] != "built", st[f]["apply"] != "applied", st[f]["build"], f)):
        s, u = st[f], units[f]
        fns = ", ".join(f"`{x}`" for x in s["functions"][:5]) + (f" and {len(s['functions']) - 5} more" if len(s["functions"]) > 5 else "") or "-"
        build = "built" if s["build"] == "built" else f"refused `{s['build']}`: {s['why'][:140]}"
        live = "applied, reverted" if f in applied else ("-" if s["build"] != "built" else s["apply"][:140].replace("|", "/"))
        dt = f"{s['dt']:.1f}" if f in applied else "-"
        print(f"| `{f}` | `{s['module']}` | {' '.join(u['cves'])} ({u['mapping']}) | {fns} | {build.replace('|', '/')} | {live} | {s['first']:.1f} / {s['cached']:.1f} | {dt} |")
    redo = [f for f in tried if f not in mods and st[f]["run"] == "modules run"]
    if redo:
        print("\n### Built-in files tried again after this issue's build fixes\n\n| file | functions replaced | build | live | downtime ms |\n|---|---|---|---|---|")
        for f in sorted(redo):
            s = st[f]
            build = "built" if s["build"] == "built" else f"refused `{s['build']}`: {s['why'][:140]}"
            print(f"| `{f}` | {', '.join(f'`{x}`' for x in s['functions']) or '-'} | {build.replace('|', '/')} | {'applied, reverted' if f in applied else ('-' if s['build'] != 'built' else s['apply'][:140])} | {s['dt']:.1f} |")


if __name__ == "__main__":
    main()
