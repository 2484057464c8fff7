#!/usr/bin/env python3
"""Cuts a Debian stable update (fix.patch of images/debian-fix-source.sh) into
units, one changed C file each, and maps each unit to the CVE ids of the
update's Debian changelog. Writes units.tsv for tests/examples/cve_corpus.rs.

There is no git history in a source package, so the mapping is by text:

  * an entry of the changelog (`- subsystem: subject (CVE-…)`) names a file
    when an identifier of its subject (a lower-case word with `_`, or one
    followed by `()`) is a function whose body the file's diff changes (the
    function a hunk header names, or one defined on a changed line), and,
    when several files match, the subject's prefix names the file's path:
    `name` (strong);
  * otherwise when the subject's prefix (`ext4:`, `smb: client:`,
    `wifi: rtl8xxxu:`) names the file's directory or stem and at most 3 C
    files of the update match it: `prefix` (uncertain);
  * otherwise the CVE is unmapped.

Each file is placed in the kernel by its directory's Makefile and the
kernel's .config: `y` built in, `m` a module, `n` not configured, `?`
unknown (the line `obj-$(CONFIG_X) += name.o`, or `comp-$(CONFIG_Y) +=
name.o` with `obj-$(CONFIG_X) += comp.o`; one level of composite objects).
The build itself decides in the end (a function not in vmlinux is refused
`failed_to_find`).

Usage: cve_corpus_units.py FIX.patch CHANGES.txt CONFIG SRC > units.tsv
  CHANGES.txt: the -55 changelog entry (zcat changelog.Debian.gz, up to the
  previous version); CONFIG: the kernel's .config.
Output columns: file, mapping (name|prefix|none), in kernel (y|m|n|?), CVEs
(comma-separated), changelog subjects (` | `-separated, each followed by
its own CVE ids in brackets: `subject [CVE-a,CVE-b]`).
"""
import re
import sys
from collections import defaultdict

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


def entries(text):
    cur = None
    for line in text.splitlines():
        if line.startswith("    - "):
            if cur:
                yield cur
            cur = line[6:].strip()
        elif line.startswith("      ") and cur is not None:
            cur += " " + line.strip()
        else:
            if cur:
                yield cur
            cur = None
    if cur:
        yield cur


FUNC = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")


DEF = re.compile(r"^[A-Za-z_][A-Za-z0-9_\s\*]*?\b([A-Za-z_][A-Za-z0-9_]*)\s*\([^;]*$")


def enclosing(lines, at):
    """The function whose definition precedes line `at` (0-based) of a C file."""
    for i in range(min(at, len(lines) - 1), -1, -1):
        m = DEF.match(lines[i])
        if m and not lines[i].startswith(("static const", "struct ", "enum ", "typedef")):
            return m.group(1)
    return None


def files_of(patch, src):
    """file -> functions its diff changes: the function around each changed
    line of the unfixed file (SRC), and functions defined on changed lines
    (GNU diff -u names no function in its hunk headers)."""
    out = {}
    cur, lines, old = None, [], 0
    for line in patch.splitlines():
        if line.startswith("+++ "):
            p = line[4:].split("\t")[0].strip()
            cur = p.split("/", 1)[1] if "/" in p else None
            if cur is not None:
                out[cur] = set()
                try:
                    lines = open(f"{src}/{cur}", encoding="utf-8", errors="replace").read().splitlines()
                except OSError:
                    lines = []
        elif cur is None or line.startswith("--- "):
            continue
        elif line.startswith("@@"):
            m = re.match(r"@@ -(\d+)", line)
            old = int(m.group(1)) - 1 if m else 0
        elif line[:1] in "+-":
            f = enclosing(lines, old)
            if f:
                out[cur].add(f)
            if re.match(r"[A-Za-z_]", line[1:2]):
                out[cur].update(FUNC.findall(line[1:])[:1])
            if line[:1] == "-":
                old += 1
        else:
            old += 1
    return out


def path_named(f, prefixes):
    """Does a subject prefix (`ext4`, `smb: client`, `wifi: rtl8xxxu`) name f's path?"""
    comps = set(re.split(r"[/._-]", f.lower())) | set(f.lower().split("/"))
    for p in prefixes:
        for w in re.split(r"[\s/]", p):
            if len(w) > 2 and w not in ("net", "fix", "client", "server", "drivers") and (w in comps or w.replace("-", "_") in comps):
                return True
    return False


def config_of(path):
    cfg = {}
    for line in open(path):
        m = re.match(r"(CONFIG_\w+)=(\S+)", line)
        if m:
            cfg[m.group(1)] = m.group(2).strip('"')
    return cfg


def placement(src, f, cfg):
    """y / m / n / ? for file f by its directory's Makefile."""
    d, name = f.rsplit("/", 1)
    stem = name[:-2]
    try:
        mk = open(f"{src}/{d}/Makefile", encoding="utf-8", errors="replace").read().replace("\\\n", " ")
    except OSError:
        return "?"

    def value(var):
        if var == "y":
            return "y"
        return {"y": "y", "m": "m"}.get(cfg.get(var, "n"), "n")

    def where(obj, depth):
        best = None
        for line in mk.splitlines():
            m = re.match(r"\s*([\w-]+?)-(y|objs|\$\((CONFIG_\w+)\))\s*[:+]?=(.*)", line)
            if not m or not re.search(rf"(^|\s){re.escape(obj)}\.o(\s|$)", m.group(4)):
                continue
            var = m.group(3) or "y"
            v = value(var)
            if m.group(1) != "obj" and depth < 2:
                outer = where(m.group(1), depth + 1)
                v = min(v, outer, key="nmy".index) if outer else v
            if best is None or "nmy".index(v) > "nmy".index(best):
                best = v
        return best

    return where(stem, 0) or "?"


def main():
    patch = open(sys.argv[1], encoding="utf-8", errors="replace").read()
    changes = open(sys.argv[2], encoding="utf-8", errors="replace").read()
    cfg = config_of(sys.argv[3])
    files = files_of(patch, sys.argv[4])
    cfiles = sorted(f for f in files if f.endswith(".c"))
    by_file = defaultdict(lambda: {"cves": set(), "subjects": [], "how": set()})
    unmapped = []
    for e in entries(changes):
        cves = re.findall(r"CVE-\d{4}-\d+", e)
        if not cves:
            continue
        subject = re.sub(r"\s*\((CVE-[^)]*)\)\s*$", "", e)
        subject = re.sub(r"^\[[^\]]*\]\s*", "", subject)  # [arm*] etc.
        parts = [p.strip() for p in subject.split(":")]
        prefixes, desc = [p.lower() for p in parts[:-1]], parts[-1]
        names = {m.group(1) for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)\(\)", desc)}
        names |= {w for w in IDENT.findall(desc) if "_" in w.strip("_") and not w.isupper()}
        hit = [f for f in cfiles if names & files[f]]
        if len(hit) > 1:
            named = [f for f in hit if path_named(f, prefixes)]
            hit = named or hit
        how = "name"
        if not hit and prefixes:
            hit = [f for f in cfiles if path_named(f, prefixes[-1:])]
            how = "prefix"
            if len(hit) > 3:
                hit = []
        if not hit:
            unmapped.append((cves, subject))
            continue
        for f in hit:
            u = by_file[f]
            u["cves"].update(cves)
            u["subjects"].append(f"{subject} [{','.join(cves)}]".replace("\t", " "))
            u["how"].add(how)
    for f in cfiles:
        u = by_file.get(f)
        module = placement(sys.argv[4], f, cfg)
        if u is None:
            print(f"{f}\tnone\t{module}\t\t")
            continue
        how = "name" if "name" in u["how"] else "prefix"
        print(f"{f}\t{how}\t{module}\t{','.join(sorted(u['cves']))}\t{' | '.join(u['subjects'])}")
    for cves, s in unmapped:
        print(f"#unmapped\t{','.join(cves)}\t{s}")


if __name__ == "__main__":
    main()
