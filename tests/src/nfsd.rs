//! The Debian nfsd fix's guest side, shared by the module e2e tests
//! (`debian_module_patch`, `debian_module_pending`): nfsd's module chain,
//! the entries the fix replaces, serving NFSv4 on loopback, and one NFSv4.1
//! SEQUENCE call whose status shows the patched `nfsd4_sequence` answering.

use crate::qemu::Guest;

/// The replaced functions whose entries are read back (`.cold` parts have
/// no entry of their own to look at).
pub const ENTRIES: [&str; 2] = ["client_info_show", "nfsd4_sequence"];

/// nfsd and what it needs, in load order, with their directories in the module tree.
pub const MODULES: [(&str, &str); 6] = [
    ("net/sunrpc", "sunrpc"),
    ("fs/nfs_common", "grace"),
    ("fs/nfs_common", "nfs_acl"),
    ("fs/lockd", "lockd"),
    ("net/sunrpc/auth_gss", "auth_rpcgss"),
    ("fs/nfsd", "nfsd"),
];

/// An NFSv4.1 COMPOUND (AUTH_NULL) whose only op is SEQUENCE with a session
/// the server never made, as one TCP record; hex.
const SEQUENCE_CALL: &str = "80000058\
    12345678 00000000 00000002 000186a3 00000004 00000001\
    00000000 00000000 00000000 00000000\
    00000000 00000001 00000001 00000035\
    0102030405060708090a0b0c0d0e0f10 00000001 00000000 00000000 00000000";

/// nfsd serving NFSv4 on 127.0.0.1:2049, without mountd or rpcbind.
pub const SERVE: &str = "set -e; ip link set lo up; mkdir -p /proc/fs/nfsd; mount -t nfsd nfsd /proc/fs/nfsd; \
    echo '-3 +4' > /proc/fs/nfsd/versions; \
    echo 'nfsd 127.0.0.1 2147483647 vsplice' > /proc/net/rpc/auth.unix.ip/channel; \
    echo 'tcp 2049' > /proc/fs/nfsd/portlist; echo 1 > /proc/fs/nfsd/threads; \
    cat /proc/fs/nfsd/threads; cat /proc/fs/nfsd/versions";

/// NFS4ERR_BADSESSION: the answer to [`sequence`] from nfsd, patched or not.
pub const BADSESSION: &str = "00002744";

/// Sends the SEQUENCE call; returns the reply's NFS status word (hex).
/// Panics (a test helper) when no accepted RPC reply comes back.
#[allow(clippy::unwrap_used)]
pub fn sequence(g: &mut Guest) -> String {
    let call: String = SEQUENCE_CALL.split_whitespace().collect();
    // stdin stays open a while: busybox nc stops reading the socket at its EOF.
    let script = format!("(printf '{call}' | xxd -r -p; sleep 3) | nc -w 5 127.0.0.1 2049 | xxd -p | tr -d '\\n'");
    let o = g.run(&script).unwrap();
    let reply = o.text();
    if reply.len() < 64 {
        let why = g.run("netstat -tln; dmesg | tail -n 20").map(|o| o.text()).unwrap_or_default();
        panic!("no RPC reply to the SEQUENCE call: {reply:?} (status {})\n{why}", o.status);
    }
    // marker xid REPLY(1) MSG_ACCEPTED(0) verf(0,0) SUCCESS(0) status
    let words: Vec<&str> = (0..reply.len() / 8).map(|i| &reply[i * 8..i * 8 + 8]).collect();
    assert!(words.len() >= 8 && words[1] == "12345678" && words[2] == "00000001", "no RPC reply to the SEQUENCE call: {reply:?} (status {})", o.status);
    assert_eq!(&words[3..7], ["00000000", "00000000", "00000000", "00000000"], "the call was not accepted: {reply}");
    words[7].to_owned()
}
