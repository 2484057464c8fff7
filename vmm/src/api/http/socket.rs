//! The API's Unix socket: created mode 0600, never on top of a live socket
//! (another VMM answering there), a stale socket file replaced.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why the API socket cannot be created.
#[derive(Debug, Error)]
pub enum SocketError {
    /// Something is listening there already.
    #[error("{path} is a live socket (something answers there); refusing to replace it")]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// The path holds something that is not a socket.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Creating or securing the socket failed.
    #[error("cannot create the API socket {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl SocketError {
    /// Stable cause.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::InUse { .. } => "api_socket_in_use",
            Self::NotASocket { .. } => "api_socket_not_socket",
            Self::Io { .. } => "api_socket_unusable",
        }
    }
}

/// Binds the listener at `path` (mode 0600).
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let io = |source| SocketError::Io { path: path.to_owned(), source };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse { path: path.to_owned() });
            }
            tracing::info!(path = %path.display(), "replacing a stale API socket");
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => return Err(SocketError::NotASocket { path: path.to_owned() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    // SAFETY: umask only swaps the process's file-mode mask; no memory is involved.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, putting the previous mask back.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vsplice-sock-{}-{name}", std::process::id()))
    }

    #[test]
    fn mode_0600_live_refused_stale_replaced_file_refused() {
        let path = tmp("a");
        let _ = std::fs::remove_file(&path);
        let live = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let e = bind(&path).unwrap_err();
        assert_eq!(e.cause(), "api_socket_in_use");
        drop(live); // the file stays: a stale socket
        assert!(path.exists());
        let _again = bind(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        assert_eq!(bind(&path).unwrap_err().cause(), "api_socket_not_socket");
        std::fs::remove_file(&path).unwrap();
    }
}
