//! The fleet's side of the registration store: the targets registered
//! (`vsplice fleet --inventory etcd://…|dir:…`), each with where it came
//! from, and whether a target is still registered (a VMM whose lease
//! expired, or whose pid is gone, is not). Every record is untrusted: one
//! that does not parse, or whose id is not its key's, is left out and
//! reported, never a panic.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::record::{alive_here, Registration, MAX_RECORD};
use super::{Store, StoreError};

/// Where a target of a rollout came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The store (`etcd://…/PREFIX`, `dir:/PATH`).
    pub store: String,
    /// The etcd key or the file.
    pub key: String,
    /// The host the VMM said it runs on.
    pub hostname: String,
    /// The VMM's pid.
    pub pid: u32,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.store.starts_with("etcd://") { "etcd" } else { "dir" };
        write!(f, "{kind} {} (pid {} on {})", self.key, self.pid, if self.hostname.is_empty() { "?" } else { &self.hostname })
    }
}

/// What a store holds.
#[derive(Debug, Default)]
pub struct Listing {
    /// The registered targets, in id order.
    pub targets: Vec<(Registration, Origin)>,
    /// Entries left out, and why (stale, unreadable, malformed, too many).
    pub notes: Vec<String>,
}

fn origin(store: &Store, key: String, r: &Registration) -> Origin {
    Origin { store: store.url(), key, hostname: r.hostname.clone(), pid: r.pid }
}

/// Reads the file of a directory store (bounded; regular files only).
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    if !f.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut buf = Vec::new();
    f.take(MAX_RECORD as u64 + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// The targets registered in `store`, `max` at most.
pub fn list(store: &Store, max: usize) -> Result<Listing, StoreError> {
    let mut out = Listing::default();
    let keep = |key: String, id: &str, bytes: &[u8], out: &mut Listing| match Registration::parse(bytes) {
        Ok(r) if r.id != id => out.notes.push(format!("{key}: left out: the record's id `{}` is not its key's", r.id.chars().take(40).collect::<String>())),
        Ok(r) => {
            let o = origin(store, key, &r);
            out.targets.push((r, o));
        }
        Err(why) => out.notes.push(format!("{key}: left out: {why}")),
    };
    match store {
        Store::Etcd(etcd) => {
            let prefix = etcd.key("targets/");
            let entries = etcd.entries(&prefix, max + 1).map_err(|e| store.unreachable(e))?;
            if entries.len() > max {
                out.notes.push(format!("more than {max} targets registered under {prefix}: the first {max} are read"));
            }
            for (key, value) in entries.into_iter().take(max) {
                let id = key.strip_prefix(&prefix).unwrap_or_default().to_owned();
                keep(key, &id, value.as_bytes(), &mut out);
            }
        }
        Store::Dir(dir) => {
            let rd = std::fs::read_dir(dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
            let mut files: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json") && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))).collect();
            files.sort();
            if files.len() > max {
                out.notes.push(format!("more than {max} files in {}: the first {max} are read", dir.display()));
                files.truncate(max);
            }
            for f in files {
                let key = f.display().to_string();
                let id = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                match read_bounded(&f) {
                    Ok(bytes) => keep(key, &id, &bytes, &mut out),
                    Err(why) => out.notes.push(format!("{key}: left out: {why}")),
                }
            }
            // A directory store is one host's: a record whose VMM is gone is stale.
            let (live, stale): (Vec<_>, Vec<_>) = std::mem::take(&mut out.targets).into_iter().partition(|(r, _)| alive_here(r));
            for (r, o) in stale {
                out.notes.push(format!("{}: stale, left out: pid {} is gone (the VMM died without removing it)", o.key, r.pid));
            }
            out.targets = live;
        }
    }
    Ok(out)
}

/// True while the target registered at `origin` is still there (its etcd
/// key, or its file with its VMM alive).
pub fn present(origin: &Origin) -> Result<bool, StoreError> {
    let store = Store::parse(&origin.store)?;
    match &store {
        Store::Etcd(etcd) => etcd.get(&origin.key).map(|v| v.is_some()).map_err(|e| store.unreachable(e)),
        Store::Dir(_) => Ok(read_bounded(Path::new(&origin.key)).ok().and_then(|b| Registration::parse(&b).ok()).is_some_and(|r| r.pid == origin.pid && alive_here(&r))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_directory_store_leaves_out_stale_and_bad_entries_and_says_so() {
        let dir = std::env::temp_dir().join(format!("vsplice-read-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::parse(&format!("dir:{}", dir.display())).unwrap();
        let live = Registration::of_this_process("live", "/s/live".into(), [("host".to_owned(), "a".to_owned())].into());
        std::fs::write(dir.join("live.json"), live.to_json()).unwrap();
        let dead = Registration { id: "dead".into(), pid: u32::MAX, ..live.clone() };
        std::fs::write(dir.join("dead.json"), dead.to_json()).unwrap();
        std::fs::write(dir.join("other.json"), live.to_json()).unwrap(); // id is not its file's
        std::fs::write(dir.join("junk.json"), "{not json").unwrap();
        std::fs::write(dir.join("big.json"), vec![b' '; MAX_RECORD + 10]).unwrap();
        std::fs::write(dir.join(".live.json.1.tmp"), "half").unwrap();
        std::fs::write(dir.join("README"), "not a record").unwrap();
        let l = list(&store, 100).unwrap();
        assert_eq!(l.targets.iter().map(|(r, _)| r.id.as_str()).collect::<Vec<_>>(), ["live"]);
        let notes = l.notes.join("\n");
        for (what, why) in [("dead.json", "stale"), ("other.json", "not its key"), ("junk.json", "not a registration"), ("big.json", "larger")] {
            assert!(notes.lines().any(|n| n.contains(what) && n.contains(why)), "{what}: {notes}");
        }
        let o = &l.targets[0].1;
        assert!(o.to_string().starts_with("dir ") && o.to_string().contains(&format!("pid {}", std::process::id())), "{o}");
        assert!(present(o).unwrap());
        std::fs::remove_file(dir.join("live.json")).unwrap();
        assert!(!present(o).unwrap());
        assert_eq!(list(&store, 1).unwrap().notes.iter().filter(|n| n.contains("more than 1")).count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
