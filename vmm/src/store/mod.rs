//! The registration store: where each host's VMMs (`vsplice run
//! --api-sock`, `vsplice attach`) register themselves as fleet targets with
//! their labels, and where `vsplice fleet --inventory etcd://…|dir:…` reads
//! them. Below [`crate::fleet`] and [`crate::cli`], above [`crate::api`]'s
//! client (the etcd gateway reuses its HTTP response reader): no cycle.
//!
//! - [`etcd`]: the etcd v3 JSON-gateway client (shared with the fleet's
//!   journal and lock);
//! - [`labels`]: label and id syntax;
//! - [`record`]: the record a VMM writes of itself;
//! - [`register`]: the VMM's side (write, keep alive, remove on exit);
//! - [`read`]: the fleet's side (list, and is a target still there).
//!
//! Two stores: etcd (`etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`, default
//! prefix `vsplice`; one key `/PREFIX/targets/<id>` bound to a lease the
//! VMM keeps alive) and a directory on one host (`dir:/path`; one file
//! `<id>.json`, written atomically; a file whose VMM is gone is stale).

pub mod etcd;
pub mod labels;
pub mod read;
pub mod record;
pub mod register;

use std::path::PathBuf;

use thiserror::Error;

pub use self::etcd::Etcd;
pub use self::labels::LabelError;

/// The etcd prefix when `--register etcd://HOST:PORT` names none.
pub const DEFAULT_PREFIX: &str = "vsplice";

/// Why registering, or reading the registered targets, failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Not `etcd://…` or `dir:/path`.
    #[error("store `{0}` is neither etcd://HOST:PORT[,HOST:PORT…][/PREFIX] nor dir:/PATH")]
    BadUrl(String),
    /// A label or the id is refused.
    #[error(transparent)]
    Label(#[from] LabelError),
    /// etcd did not answer (every endpoint tried).
    #[error("store {store} is unreachable: {why}")]
    Unreachable {
        /// The store.
        store: String,
        /// Each endpoint's failure.
        why: String,
    },
    /// The directory store cannot be read or written.
    #[error("store directory {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A registration option out of its range, or one missing.
    #[error("{0}")]
    BadOption(String),
    /// Another live VMM is registered with this id.
    #[error("target id `{id}` is registered in {store} by another VMM ({by})")]
    IdTaken {
        /// The id.
        id: String,
        /// The store.
        store: String,
        /// Who holds it.
        by: String,
    },
}

impl StoreError {
    /// Stable cause.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::BadUrl(_) => "bad_store_url",
            Self::Label(e) => e.cause(),
            Self::Unreachable { .. } => "store_unreachable",
            Self::Io { .. } => "store_io",
            Self::BadOption(_) => "bad_register_option",
            Self::IdTaken { .. } => "target_id_taken",
        }
    }
}

/// A registration store.
#[derive(Debug, Clone)]
pub enum Store {
    /// etcd, with the prefix.
    Etcd(Etcd),
    /// A directory on this host.
    Dir(PathBuf),
}

impl Store {
    /// Parses `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]` or `dir:/PATH`.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("etcd://") {
            return Etcd::parse_or_default(url, DEFAULT_PREFIX).map(Self::Etcd).ok_or_else(|| StoreError::BadUrl(url.to_owned()));
        }
        match url.strip_prefix("dir:") {
            Some(p) if !p.is_empty() => Ok(Self::Dir(std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p)))),
            _ => Err(StoreError::BadUrl(url.chars().take(200).collect())),
        }
    }

    /// True when `s` names a store rather than an inventory file.
    pub fn is_store(s: &str) -> bool {
        s.starts_with("etcd://") || s.starts_with("dir:")
    }

    /// The store as a URL (`etcd://…/PREFIX`, `dir:/PATH`).
    pub fn url(&self) -> String {
        match self {
            Self::Etcd(e) => e.url(),
            Self::Dir(d) => format!("dir:{}", d.display()),
        }
    }

    /// Where target `id` is registered: the etcd key or the file.
    pub fn key(&self, id: &str) -> String {
        match self {
            Self::Etcd(e) => e.key(&format!("targets/{id}")),
            Self::Dir(d) => d.join(format!("{id}.json")).display().to_string(),
        }
    }

    pub(crate) fn unreachable(&self, why: String) -> StoreError {
        StoreError::Unreachable { store: self.url(), why }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn store_urls() {
        let e = Store::parse("etcd://127.0.0.1:2379,127.0.0.1:2380").unwrap();
        assert_eq!((e.url(), e.key("vm0")), ("etcd://127.0.0.1:2379,127.0.0.1:2380/vsplice".to_owned(), "/vsplice/targets/vm0".to_owned()));
        assert_eq!(Store::parse("etcd://h:1/dc1").unwrap().key("vm0"), "/dc1/targets/vm0");
        let d = Store::parse("dir:/run/vsplice").unwrap();
        assert_eq!((d.url(), d.key("vm0")), ("dir:/run/vsplice".to_owned(), "/run/vsplice/vm0.json".to_owned()));
        for bad in ["dir:", "etcd://", "http://h:1", "/tmp/inv.json"] {
            assert_eq!(Store::parse(bad).unwrap_err().cause(), "bad_store_url", "{bad}");
        }
        assert!(Store::is_store("dir:/x") && Store::is_store("etcd://h:1") && !Store::is_store("inv.json"));
    }
}
