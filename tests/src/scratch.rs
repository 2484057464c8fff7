//! Scratch resources private to one test process: paths in the temporary
//! directory, named with the process id, and a free TCP port.

use std::path::PathBuf;

/// `<temporary directory>/vsplice-<pid>-<name>` (not created).
pub fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vsplice-{}-{name}", std::process::id()))
}

/// [`tmp`], created as a directory.
pub fn tmp_dir(name: &str) -> PathBuf {
    let dir = tmp(name);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    dir
}

/// A TCP port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => panic!("no free TCP port: {e}"),
    }
}
