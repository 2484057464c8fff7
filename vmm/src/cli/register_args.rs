//! `--register STORE --label k=v … [--register-id ID] [--register-ttl S]`
//! of `vsplice run --api-sock` and `vsplice attach`: the VMM registers
//! itself as a fleet target (see [`crate::store::register`]).

use std::path::Path;
use std::sync::{Arc, Mutex};

use clap::Args;

use crate::api::state::KernelInfo;
use crate::store::record::{hostname, KernelFacts, Registration};
use crate::store::register::{Registrar, DEFAULT_TTL_S, TTL_RANGE};
use crate::store::{labels, Store, StoreError};

/// The registration flags.
#[derive(Debug, Clone, Default, Args)]
pub struct RegisterArgs {
    /// Register this VMM as a `vsplice fleet` target in a store, with its
    /// API socket, labels, kernel release and build-id (once known),
    /// version, pid and host name: `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`
    /// (key `/PREFIX/targets/ID`, default prefix `vsplice`, bound to a lease
    /// kept alive from a background thread: a VMM that dies disappears
    /// within --register-ttl) or `dir:/PATH` (one host: `PATH/ID.json`,
    /// written atomically). Removed when the VMM ends cleanly. An
    /// unreachable store does not stop the VM: a warning
    /// `[store_unreachable]`, and the registration is retried every third
    /// of the TTL. Needs --api-sock.
    #[arg(long, value_name = "STORE")]
    pub register: Option<String>,
    /// A label of this target, `KEY=VALUE` (repeatable): a plan's selector
    /// picks targets by them; the plan's `host_label` (default `host`)
    /// names the target's host. Key: 1-63 of `A-Z a-z 0-9 . _ -` starting
    /// with a letter or digit; value: at most 128 of `A-Z a-z 0-9 . _ - : @
    /// + /`; 32 labels at most; a key given twice is refused
    /// (`label_duplicate`).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// The target's id in the store and its name in rollouts (default
    /// `HOSTNAME-PID`): 1-128 of `A-Z a-z 0-9 . _ -`. A second live VMM
    /// with the same id is not registered (`target_id_taken`, retried).
    #[arg(long, value_name = "ID")]
    pub register_id: Option<String>,
    /// The etcd lease's time to live, in seconds (1-3600): how long a dead
    /// VMM stays listed.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TTL_S)]
    pub register_ttl: u64,
}

/// A registration ready to start: checked, nothing written yet.
#[derive(Debug)]
pub struct Prepared {
    store: Store,
    ttl_s: u64,
    record: Registration,
}

impl RegisterArgs {
    /// Checks the flags (store, labels, id, TTL) for a VMM serving
    /// `api_sock`; `None` without `--register`.
    pub fn prepare(&self, api_sock: Option<&Path>) -> Result<Option<Prepared>, StoreError> {
        let Some(url) = &self.register else {
            if !self.label.is_empty() || self.register_id.is_some() {
                return Err(StoreError::BadOption("--label and --register-id need --register STORE".into()));
            }
            return Ok(None);
        };
        let store = Store::parse(url)?;
        let labels = labels::parse(&self.label)?;
        let id = self.register_id.clone().unwrap_or_else(|| {
            let h: String = hostname().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(100).collect();
            format!("{}-{}", if h.is_empty() { "host" } else { &h }, std::process::id())
        });
        labels::check_id(&id)?;
        if !TTL_RANGE.contains(&self.register_ttl) {
            return Err(StoreError::BadOption(format!("--register-ttl {} is not within 1-3600 s", self.register_ttl)));
        }
        let sock = api_sock.ok_or_else(|| StoreError::BadOption("--register needs --api-sock (the registered target is the API socket)".into()))?;
        let sock = std::path::absolute(sock).unwrap_or_else(|_| sock.to_owned());
        Ok(Some(Prepared { store, ttl_s: self.register_ttl, record: Registration::of_this_process(&id, sock, labels) }))
    }
}

impl Prepared {
    /// Registers, and keeps the record up to date with what `kernel` says.
    pub fn start(self, kernel: impl Fn() -> Option<KernelInfo> + Send + 'static) -> Registrar {
        let facts = move || kernel().map(|k| KernelFacts { kind: k.kind, release: k.release, build_id: k.build_id });
        Registrar::start(self.store, self.ttl_s, self.record, facts)
    }

    /// [`Self::start`] for `vsplice run`, which has no SIGTERM/SIGINT
    /// handling of its own: on either signal the registration is removed
    /// first (a rollout then sees the target gone, not failing), then the
    /// VMM ends as the signal would have ended it (exit status 128 + N; a
    /// second signal meanwhile ends it at once, with the same status).
    pub fn start_removed_on_signal(self, kernel: impl Fn() -> Option<KernelInfo> + Send + 'static) -> Result<Registered, std::io::Error> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        // A second signal while the registration is being removed (a store out of reach) ends the VMM at once.
        let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, seen.clone())?;
            signal_hook::flag::register(sig, seen.clone())?;
        }
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
        let held = Arc::new(Mutex::new(Some(self.start(kernel))));
        let on_signal = held.clone();
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                if let Ok(mut r) = on_signal.lock() {
                    drop(r.take());
                }
                eprintln!("vsplice: signal {sig}: fleet registration removed; the VMM ends");
                std::process::exit(128 + sig);
            }
        });
        Ok(Registered(held))
    }
}

/// A registration `vsplice run` holds (see [`Prepared::start_removed_on_signal`]).
#[derive(Debug)]
pub struct Registered(Arc<Mutex<Option<Registrar>>>);

impl Registered {
    /// A clean end: the registration is removed now.
    pub fn end(self) {
        if let Ok(mut r) = self.0.lock() {
            drop(r.take());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn run_args(extra: &[&str]) -> Result<super::RegisterArgs, clap::Error> {
        let argv = [&["vsplice", "run", "--kernel", "k"][..], extra].concat();
        match Cli::try_parse_from(argv)?.command {
            Command::Run(r) => Ok(r.register),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_flags_are_checked_before_anything_is_written() {
        let sock = Some(std::path::Path::new("/run/vm0.sock"));
        let a = run_args(&["--register", "etcd://127.0.0.1:2379/dc1", "--label", "host=a", "--label", "zone=z1", "--register-id", "vm0", "--register-ttl", "2"]).unwrap();
        let p = a.prepare(sock).unwrap().unwrap();
        assert_eq!((p.store.key("vm0"), p.ttl_s, p.record.id.as_str()), ("/dc1/targets/vm0".to_owned(), 2, "vm0"));
        assert_eq!(p.record.labels.len(), 2);
        assert_eq!(p.record.api_sock, std::path::Path::new("/run/vm0.sock"));
        // The default id is the host name and the pid.
        let d = run_args(&["--register", "dir:/tmp/x"]).unwrap().prepare(sock).unwrap().unwrap();
        assert!(d.record.id.ends_with(&format!("-{}", std::process::id())), "{}", d.record.id);
        let cause = |extra: &[&str]| run_args(extra).unwrap().prepare(sock).unwrap_err().cause();
        assert_eq!(cause(&["--register", "etcd://h:1", "--label", "host=a", "--label", "host=b"]), "label_duplicate");
        assert_eq!(cause(&["--register", "etcd://h:1", "--label", "host a=b"]), "label_bad_key");
        assert_eq!(cause(&["--register", "etcd://h:1", "--label", "nolabel"]), "label_malformed");
        assert_eq!(cause(&["--register", "etcd://h:1", "--register-id", "a/b"]), "bad_target_id");
        assert_eq!(cause(&["--register", "http://h:1"]), "bad_store_url");
        assert_eq!(cause(&["--register", "etcd://h:1", "--register-ttl", "0"]), "bad_register_option");
        assert_eq!(run_args(&["--register", "etcd://h:1"]).unwrap().prepare(None).unwrap_err().cause(), "bad_register_option");
        // Without --register nothing is prepared; --label alone is refused.
        assert!(run_args(&[]).unwrap().prepare(sock).unwrap().is_none());
        assert_eq!(cause(&["--label", "host=a"]), "bad_register_option");
    }
}
