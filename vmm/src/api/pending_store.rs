//! The pending patches of a `vsplice attach` daemon kept on the host
//! (`--pending-dir DIR`), so that a daemon that restarts (an upgrade, a
//! crash) holds them again without the control plane sending them anew.
//!
//! The directory mirrors the daemon's pending list: for each patch, its
//! `.vsp` exactly as received (`<id>.vsp`) and what its request said
//! (`<id>.json`: the safety check), each written to a temporary name,
//! synced and renamed into place, the `.json` last (a patch without one is
//! a torn save and is ignored). A new daemon sends each back through the
//! same path as `PUT /patches` with `when_loaded`: the trust policy checks
//! it again, it is applied at once if its module loaded meanwhile, and held
//! otherwise. Files are untrusted input: bounded reads, ids checked before
//! they name a file, anything unreadable reported and left in place.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vsplice_patcher::model::CheckMode;
use vsplice_patcher::patch::format::read_bounded;

/// Largest `<id>.json` read back.
const MAX_META: u64 = 4096;

/// Why the pending directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PendingStoreError {
    /// Creating, writing, renaming or removing a file failed.
    #[error("pending dir {}: {what}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A patch id that cannot name a file (only ASCII letters, digits, `-`, `_`).
    #[error("patch id {0:?} cannot name a file in the pending dir")]
    BadId(String),
}

impl PendingStoreError {
    /// Stable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Io { .. } => "pending_dir_io",
            Self::BadId(_) => "bad_patch_id",
        }
    }
}

/// What `<id>.json` says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Meta {
    id: String,
    check: Option<CheckMode>,
}

/// A pending patch as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPending {
    /// The patch id.
    pub id: String,
    /// The `.vsp` bytes as received.
    pub bytes: Vec<u8>,
    /// The safety check its request named.
    pub check: Option<CheckMode>,
}

/// The pending directory.
#[derive(Debug, Clone)]
pub struct PendingStore {
    dir: PathBuf,
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> PendingStoreError + 'a {
    move |source| PendingStoreError::Io { path: path.to_path_buf(), what, source }
}

fn checked(id: &str) -> Result<&str, PendingStoreError> {
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(id)
    } else {
        Err(PendingStoreError::BadId(id.to_owned()))
    }
}

impl PendingStore {
    /// Uses `dir`, creating it when missing.
    pub fn open(dir: &Path) -> Result<Self, PendingStoreError> {
        fs::create_dir_all(dir).map_err(io(dir, "creating"))?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write_atomic(&self, name: &str, data: &[u8]) -> Result<(), PendingStoreError> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let dst = self.dir.join(name);
        let mut f = fs::File::create(&tmp).map_err(io(&tmp, "creating"))?;
        f.write_all(data).map_err(io(&tmp, "writing"))?;
        f.sync_all().map_err(io(&tmp, "syncing"))?;
        fs::rename(&tmp, &dst).map_err(io(&dst, "renaming into place"))
    }

    /// Stores `p` (replacing a patch with its id).
    pub fn save(&self, p: &StoredPending) -> Result<(), PendingStoreError> {
        let id = checked(&p.id)?;
        self.write_atomic(&format!("{id}.vsp"), &p.bytes)?;
        let meta = serde_json::to_vec(&Meta { id: id.to_owned(), check: p.check }).unwrap_or_default();
        self.write_atomic(&format!("{id}.json"), &meta)?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Removes the patch `id` (nothing to do when absent).
    pub fn remove(&self, id: &str) -> Result<(), PendingStoreError> {
        let id = checked(id)?;
        // The `.json` first: a patch without one is no longer stored.
        for name in [format!("{id}.json"), format!("{id}.vsp")] {
            let path = self.dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, "removing")(e)),
            }
        }
        Ok(())
    }

    /// The ids stored now (each with its `.json`).
    pub fn ids(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_owned))
            .filter(|id| checked(id).is_ok())
            .collect();
        ids.sort();
        ids
    }

    /// Every stored patch, and why each unreadable one was skipped (left
    /// in place for a person to look at).
    pub fn load(&self) -> (Vec<StoredPending>, Vec<String>) {
        let (mut out, mut problems) = (Vec::new(), Vec::new());
        for id in self.ids() {
            match self.load_one(&id) {
                Ok(p) => out.push(p),
                Err(why) => problems.push(format!("{id}: {why}")),
            }
        }
        (out, problems)
    }

    fn load_one(&self, id: &str) -> Result<StoredPending, String> {
        let meta_path = self.dir.join(format!("{id}.json"));
        let len = fs::metadata(&meta_path).map_err(|e| e.to_string())?.len();
        if len > MAX_META {
            return Err(format!("{id}.json is {len} bytes (at most {MAX_META})"));
        }
        let meta: Meta = serde_json::from_slice(&fs::read(&meta_path).map_err(|e| e.to_string())?).map_err(|e| format!("{id}.json: {e}"))?;
        if meta.id != id {
            return Err(format!("{id}.json names patch {:?}", meta.id));
        }
        let bytes = read_bounded(&self.dir.join(format!("{id}.vsp"))).map_err(|e| format!("{id}.vsp: {e}"))?;
        Ok(StoredPending { id: meta.id, bytes, check: meta.check })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn store(name: &str) -> PendingStore {
        let d = std::env::temp_dir().join(format!("vsplice-pending-store-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        PendingStore::open(&d).unwrap()
    }

    #[test]
    fn saved_patches_load_back_and_removed_ones_do_not() {
        let s = store("round");
        let a = StoredPending { id: "c4bf27a4da4f00a7".into(), bytes: b"VSP a".to_vec(), check: Some(CheckMode::Conservative) };
        let b = StoredPending { id: "b1".into(), bytes: b"VSP b".to_vec(), check: None };
        s.save(&a).unwrap();
        s.save(&b).unwrap();
        let (got, problems) = s.load();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(got, vec![b.clone(), a.clone()], "sorted by id");
        s.remove(&a.id).unwrap();
        s.remove("never-stored").unwrap();
        assert_eq!(s.load().0, vec![b]);
        assert!(!s.dir().join("c4bf27a4da4f00a7.vsp").exists());
        let _ = fs::remove_dir_all(s.dir());
    }

    #[test]
    fn torn_hostile_or_mismatched_files_are_skipped_and_said() {
        let s = store("hostile");
        // A torn save: the .vsp without its .json is not a stored patch.
        fs::write(s.dir().join("torn.vsp"), b"x").unwrap();
        // Garbage, an oversized .json, a .json naming another patch, a missing .vsp.
        fs::write(s.dir().join("garbage.json"), b"{not json").unwrap();
        fs::write(s.dir().join("big.json"), vec![b' '; 5000]).unwrap();
        fs::write(s.dir().join("other.json"), br#"{"id":"someone","check":null}"#).unwrap();
        fs::write(s.dir().join("novsp.json"), br#"{"id":"novsp","check":null}"#).unwrap();
        // A name that is no id is never read.
        fs::write(s.dir().join("..json"), b"{}").unwrap();
        let (got, problems) = s.load();
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(problems.len(), 4, "{problems:?}");
        for (id, says) in [("garbage", "garbage.json"), ("big", "5000 bytes"), ("other", "names patch"), ("novsp", "novsp.vsp")] {
            assert!(problems.iter().any(|p| p.starts_with(id) && p.contains(says)), "{id}: {problems:?}");
        }
        let _ = fs::remove_dir_all(s.dir());
    }

    #[test]
    fn an_id_that_is_no_file_name_is_refused() {
        let s = store("ids");
        let bad = StoredPending { id: "../etc/passwd".into(), bytes: vec![], check: None };
        assert_eq!(s.save(&bad).unwrap_err().cause(), "bad_patch_id");
        assert_eq!(s.remove("a/b").unwrap_err().cause(), "bad_patch_id");
        let _ = fs::remove_dir_all(s.dir());
    }
}
