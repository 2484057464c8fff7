//! A guest under QEMU (TCG) for tests of real kernels: boot it with a patch
//! arena reserved (`memmap=`), KASLR on, a gdbstub on a Unix socket or a local
//! TCP port, the kernel console (ttyS0) captured in full, and the initramfs's
//! command channel (a virtio-serial port, or ttyS1) to run shell commands and
//! get their exact output and exit status back ([`crate::guestcmd`]).
//!
//! Everything has a time-out. Dropping a [`Guest`] kills QEMU and removes its
//! temp dir, also when the test panics (then the console tail goes to stderr),
//! and the console log is kept in `target/test-logs/qemu-<label>.log`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::debian::{debian_images, Flavour};
use crate::guestcmd::{decode_gz, encode_command, Event, Mode, Parser};
use crate::harness_error::HarnessError;
use crate::shared_ram::SharedRam;
use crate::testguest::workspace_root;

/// A guest-physical range kept out of the guest's RAM with `memmap=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arena {
    /// First byte.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The default arena: 4 MiB at 1008 MiB, inside RAM for `-m 1024`.
pub const DEFAULT_ARENA: Arena = Arena { base: 0x3f00_0000, size: 4 << 20 };

/// Where QEMU's gdbstub listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbListen {
    /// A Unix socket in the guest's temp dir.
    Unix,
    /// A free TCP port on 127.0.0.1.
    Tcp,
    /// No gdbstub.
    None,
}

/// The command channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// virtio-serial port `org.vsplice.cmd` (fast; needs the initramfs's virtio modules).
    Virtio,
    /// The second UART, ttyS1 (about 90 KB/s under TCG).
    Serial,
    /// No channel: the guest is not our initramfs; wait for console text instead.
    None,
}

/// How to start QEMU.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Name for logs and temp files (e.g. the test name).
    pub label: String,
    /// `-kernel`.
    pub kernel: PathBuf,
    /// `-initrd`.
    pub initrd: Option<PathBuf>,
    /// vCPUs.
    pub smp: u32,
    /// RAM in MiB.
    pub mem_mib: u32,
    /// `-cpu` model; QEMU's default when `None`.
    pub cpu: Option<String>,
    /// KASLR stays on unless this is false (then `nokaslr`).
    pub kaslr: bool,
    /// Reserved patch arena (`memmap=size$base`), if any.
    pub arena: Option<Arena>,
    /// Kernel command line parts after the harness's own.
    pub extra_append: Vec<String>,
    /// Extra QEMU arguments.
    pub extra_args: Vec<String>,
    /// gdbstub.
    pub gdb: GdbListen,
    /// Command channel.
    pub channel: Channel,
    /// Time allowed from spawn to VSPLREADY.
    pub boot_timeout: Duration,
    /// Time allowed per command unless a call says otherwise.
    pub command_timeout: Duration,
    /// RAM as a shared file plus a QMP socket (vsplice's shared-memory
    /// backend): [`crate::shared_ram`]. Default: `VSPLICE_TEST_SHM=1`.
    pub shared_ram: bool,
}

impl QemuConfig {
    /// [`QemuConfig::debian`], or `None` after a loud skip when the
    /// flavour's images are missing.
    pub fn debian_or_skip(flavour: Flavour, label: &str) -> Option<Self> {
        match Self::debian(flavour, label) {
            Ok(c) => Some(c),
            Err(e) => {
                crate::skip::skip(label, &e.to_string());
                None
            }
        }
    }

    /// The defaults for a Debian kernel with the test initramfs.
    pub fn debian(flavour: Flavour, label: &str) -> Result<Self, HarnessError> {
        let img = debian_images(flavour)?;
        Ok(Self::new(label, img.vmlinuz, Some(img.initramfs)))
    }

    /// Defaults around any kernel: 2 vCPUs, 1 GiB, KASLR on, the default
    /// arena, gdbstub on a Unix socket, virtio command channel.
    pub fn new(label: &str, kernel: PathBuf, initrd: Option<PathBuf>) -> Self {
        Self {
            label: label.to_string(),
            kernel,
            initrd,
            smp: 2,
            mem_mib: 1024,
            cpu: None,
            kaslr: true,
            arena: Some(DEFAULT_ARENA),
            extra_append: Vec::new(),
            extra_args: Vec::new(),
            gdb: GdbListen::Unix,
            channel: Channel::Virtio,
            boot_timeout: Duration::from_secs(240),
            command_timeout: Duration::from_secs(120),
            shared_ram: crate::shared_ram::default_from_env(),
        }
    }

    /// The kernel command line the guest gets.
    pub fn append(&self) -> String {
        let mut a = vec!["console=ttyS0".to_string(), "panic=-1".to_string()];
        if let Some(ar) = self.arena {
            a.push(format!("memmap={:#x}${:#x}", ar.size, ar.base));
        }
        if !self.kaslr {
            a.push("nokaslr".into());
        }
        if self.channel == Channel::Serial {
            a.push("vsplice.cmd=ttyS1".into());
        }
        a.extend(self.extra_append.iter().cloned());
        a.join(" ")
    }
}

/// A command's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// Output bytes (stdout and stderr together).
    pub bytes: Vec<u8>,
    /// Exit status.
    pub status: i32,
}

impl CmdOutput {
    /// The output as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Per-call options of [`Guest::run_with`].
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Host-side time-out: no complete reply by then is an error.
    pub timeout: Duration,
    /// Output encoding.
    pub mode: Mode,
    /// Guest-side limit: the guest SIGKILLs the script's shell after this
    /// (whole seconds, zero = none) and replies with status 137. `None`:
    /// two seconds less than `timeout`, so the guest stays usable.
    pub guest_timeout: Option<Duration>,
}

impl RunOptions {
    /// Raw output, the given host time-out, the derived guest limit.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, mode: Mode::Raw, guest_timeout: None }
    }

    /// The same with gzip+base64 output.
    pub fn gz(self) -> Self {
        Self { mode: Mode::Gz, ..self }
    }
}

/// Console substrings that mean kernel trouble.
pub const CONSOLE_TROUBLE: &[&str] =
    &["Oops", "BUG:", "BUG ", "WARNING:", "Kernel panic", "panic:", "general protection fault", "Call Trace:", "kernel BUG"];

type Shared = Arc<Mutex<Vec<u8>>>;

/// A running QEMU guest; QEMU dies with it.
#[derive(Debug)]
pub struct Guest {
    config: QemuConfig,
    child: Child,
    dir: PathBuf,
    console: Shared,
    stderr: Shared,
    readers: Vec<JoinHandle<()>>,
    gdb_addr: Option<String>,
    shared_ram: Option<SharedRam>,
    cmd: Option<UnixStream>,
    parser: Parser,
    next_id: u64,
    boot_time: Duration,
    frozen: bool,
    /// When QEMU was spawned.
    started: Instant,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn pump(mut from: impl Read + Send + 'static, into: Shared) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut v) = into.lock() {
                v.extend_from_slice(&buf[..n]);
            }
        }
    })
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

fn free_tcp_port() -> Result<u16, HarnessError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("binding a probe port"))?;
    Ok(l.local_addr().map_err(io_err("probe port address"))?.port())
}

impl Guest {
    /// [`Guest::boot`], or `None` after a loud skip when QEMU cannot be
    /// started on this machine. Any other failure panics: the guest must boot.
    pub fn boot_or_skip(config: QemuConfig) -> Option<Self> {
        Self::or_skip(config, true)
    }

    /// [`Guest::spawn`], or `None` after a loud skip when QEMU cannot be
    /// started on this machine. Any other failure panics.
    pub fn spawn_or_skip(config: QemuConfig) -> Option<Self> {
        Self::or_skip(config, false)
    }

    fn or_skip(config: QemuConfig, wait_ready: bool) -> Option<Self> {
        let label = config.label.clone();
        match Self::start(config, wait_ready) {
            Ok(g) => Some(g),
            Err(e @ HarnessError::Spawn { .. }) => {
                crate::skip::skip(&label, &e.to_string());
                None
            }
            Err(e) => panic!("{label}: the guest does not boot: {e}"),
        }
    }

    /// Boots a Debian flavour with the default configuration.
    pub fn boot_debian(flavour: Flavour, label: &str) -> Result<Self, HarnessError> {
        Self::boot(QemuConfig::debian(flavour, label)?)
    }

    /// Starts QEMU and, with a command channel, waits for VSPLREADY; without
    /// one, for the gdbstub's Unix socket (a TCP gdbstub is not waited for).
    pub fn boot(config: QemuConfig) -> Result<Self, HarnessError> {
        Self::start(config, true)
    }

    /// Starts QEMU and returns as soon as the guest starts booting (its
    /// command channel connected, which is what QEMU waits for), so a test
    /// can watch the boot through the gdbstub; [`Guest::wait_ready`] waits
    /// for VSPLREADY afterwards.
    pub fn spawn(config: QemuConfig) -> Result<Self, HarnessError> {
        Self::start(config, false)
    }

    /// After [`Guest::spawn`]: waits until the guest takes commands (within
    /// the boot time-out counted from the spawn).
    pub fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let started = self.started;
        self.wait_ready_since(started)?;
        self.boot_time = started.elapsed();
        Ok(())
    }

    fn start(config: QemuConfig, wait_ready: bool) -> Result<Self, HarnessError> {
        for p in std::iter::once(&config.kernel).chain(config.initrd.as_ref()) {
            if !p.is_file() {
                return Err(HarnessError::NoSuchFile(p.clone()));
            }
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = crate::scratch::tmp(&format!("qemu-{n}"));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let started = Instant::now();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-display", "none", "-nodefaults", "-no-reboot"])
            .args(["-smp", &config.smp.to_string(), "-m", &config.mem_mib.to_string()])
            .arg("-kernel")
            .arg(&config.kernel)
            .args(["-append", &config.append()])
            .args(["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"]);
        if let Some(cpu) = &config.cpu {
            cmd.args(["-cpu", cpu]);
        }
        if let Some(i) = &config.initrd {
            cmd.arg("-initrd").arg(i);
        }
        let gdb_addr = match config.gdb {
            GdbListen::Unix => {
                let p = dir.join("gdb.sock");
                cmd.args(["-chardev", &format!("socket,id=gdb,path={},server=on,wait=off", p.display())]);
                cmd.args(["-gdb", "chardev:gdb"]);
                Some(p.display().to_string())
            }
            GdbListen::Tcp => {
                let a = format!("127.0.0.1:{}", free_tcp_port()?);
                cmd.args(["-gdb", &format!("tcp:{a}")]);
                Some(a)
            }
            GdbListen::None => None,
        };
        let shared_ram = config.shared_ram.then(|| {
            let (ram, args) = SharedRam::new(&dir, &n.to_string(), config.mem_mib);
            cmd.args(args);
            ram
        });
        let cmd_sock = dir.join("cmd.sock");
        if config.channel != Channel::None {
            cmd.args(["-chardev", &format!("socket,id=cmd,path={},server=on,wait=on", cmd_sock.display())]);
            match config.channel {
                Channel::Virtio => {
                    cmd.args(["-device", "virtio-serial-pci", "-device", "virtserialport,chardev=cmd,name=org.vsplice.cmd"]);
                }
                _ => {
                    cmd.args(["-serial", "chardev:cmd"]);
                }
            }
        }
        cmd.args(&config.extra_args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // If the test process dies without dropping the Guest (SIGKILL, abort),
        // QEMU dies too. (The signal follows the spawning thread: keep the
        // Guest on the thread that booted it.)
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
        // memory of the parent; it runs in the child between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| HarnessError::Spawn { program: "qemu-system-x86_64".into(), source })?;
        let console: Shared = Arc::default();
        let stderr: Shared = Arc::default();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(pump(out, console.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(pump(err, stderr.clone()));
        }
        let mut g = Guest {
            config,
            child,
            dir,
            console,
            stderr,
            readers,
            gdb_addr,
            shared_ram,
            cmd: None,
            parser: Parser::new(),
            next_id: 0,
            boot_time: Duration::ZERO,
            frozen: false,
            started,
        };
        if g.config.channel != Channel::None {
            g.connect_channel(&cmd_sock, started)?;
            if wait_ready {
                g.wait_ready_since(started)?;
            }
        } else if g.config.gdb == GdbListen::Unix {
            // Nothing to wait for but the gdbstub: until its socket exists.
            let sock = g.dir.join("gdb.sock");
            while !sock.exists() {
                g.check_alive("while waiting for the gdbstub socket")?;
                if started.elapsed() > g.config.boot_timeout {
                    return Err(HarnessError::BootTimeout { timeout: g.config.boot_timeout, console_tail: g.console_tail(40) });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        g.boot_time = started.elapsed();
        Ok(g)
    }

    fn connect_channel(&mut self, sock: &std::path::Path, started: Instant) -> Result<(), HarnessError> {
        loop {
            self.check_alive("while waiting for the command socket")?;
            if let Ok(s) = UnixStream::connect(sock) {
                self.cmd = Some(s);
                return Ok(());
            }
            if started.elapsed() > self.config.boot_timeout {
                return Err(HarnessError::BootTimeout { timeout: self.config.boot_timeout, console_tail: self.console_tail(40) });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready_since(&mut self, started: Instant) -> Result<(), HarnessError> {
        let deadline = started + self.config.boot_timeout;
        loop {
            for ev in self.read_events(deadline, "while booting")? {
                if ev == Event::Ready {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::BootTimeout { timeout: self.config.boot_timeout, console_tail: self.console_tail(40) });
            }
        }
    }

    /// One read from the channel (bounded by `deadline` and 250 ms), parsed.
    fn read_events(&mut self, deadline: Instant, when: &str) -> Result<Vec<Event>, HarnessError> {
        let s = self.cmd.as_mut().ok_or(HarnessError::Unsupported("this guest has no command channel"))?;
        let wait = deadline.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(1), Duration::from_millis(250));
        s.set_read_timeout(Some(wait)).map_err(io_err("setting the channel time-out"))?;
        let mut buf = vec![0u8; 256 * 1024];
        match s.read(&mut buf) {
            Ok(0) => {
                self.check_alive(when)?;
                Err(HarnessError::Protocol(format!("command channel closed {when}")))
            }
            Ok(n) => Ok(self.parser.feed(&buf[..n])),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                self.check_alive(when)?;
                Ok(Vec::new())
            }
            Err(e) => Err(io_err(format!("reading the command channel {when}"))(e)),
        }
    }

    fn check_alive(&mut self, when: &str) -> Result<(), HarnessError> {
        match self.child.try_wait() {
            Ok(Some(st)) => {
                // Let the pumps drain what QEMU wrote last.
                std::thread::sleep(Duration::from_millis(100));
                Err(HarnessError::QemuExited {
                    status: st.to_string(),
                    when: when.to_string(),
                    stderr: String::from_utf8_lossy(&self.stderr.lock().map(|v| v.clone()).unwrap_or_default()).into_owned(),
                    console_tail: self.console_tail(40),
                })
            }
            _ => Ok(()),
        }
    }

    /// Runs a shell script in the guest with the default time-out.
    pub fn run(&mut self, script: &str) -> Result<CmdOutput, HarnessError> {
        self.run_with(script, RunOptions::new(self.config.command_timeout))
    }

    /// Runs a script and returns its output; a non-zero exit is an error.
    pub fn run_ok(&mut self, script: &str) -> Result<String, HarnessError> {
        let out = self.run(script)?;
        if out.status != 0 {
            let mut text = out.text();
            text.truncate(4000);
            return Err(HarnessError::CommandFailed { cmd: script.to_string(), status: out.status, output: text });
        }
        Ok(out.text())
    }

    /// Runs a script with explicit options.
    pub fn run_with(&mut self, script: &str, opts: RunOptions) -> Result<CmdOutput, HarnessError> {
        if self.frozen {
            return Err(HarnessError::Unsupported("QEMU is frozen (SIGSTOP); thaw it first"));
        }
        self.next_id += 1;
        let id = format!("c{}", self.next_id);
        // By default the guest gives up a little before the host does.
        let guest_s = match opts.guest_timeout {
            Some(d) => d.as_secs(),
            None => opts.timeout.as_secs().saturating_sub(2).max(1),
        };
        let line = encode_command(&id, opts.mode, guest_s, script);
        let s = self.cmd.as_mut().ok_or(HarnessError::Unsupported("this guest has no command channel"))?;
        s.set_write_timeout(Some(opts.timeout)).map_err(io_err("setting the channel write time-out"))?;
        s.write_all(line.as_bytes()).map_err(io_err("sending a command"))?;
        let deadline = Instant::now() + opts.timeout;
        loop {
            for ev in self.read_events(deadline, "while running a command")? {
                match ev {
                    Event::Reply { id: rid, output, status } if rid == id => {
                        let bytes = match opts.mode {
                            Mode::Raw => output,
                            Mode::Gz => decode_gz(&output).map_err(HarnessError::Protocol)?,
                        };
                        return Ok(CmdOutput { bytes, status });
                    }
                    Event::GuestError(e) => return Err(HarnessError::Protocol(format!("guest rejected {id}: {e}"))),
                    Event::Malformed(e) => return Err(HarnessError::Protocol(e)),
                    // Late replies of timed-out commands and stray lines.
                    Event::Reply { .. } | Event::Noise(_) | Event::Ready => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::CommandTimeout {
                    cmd: script.chars().take(200).collect(),
                    timeout: opts.timeout,
                    got: usize::from(self.parser.in_reply()),
                    console_tail: self.console_tail(20),
                });
            }
        }
    }

    /// Waits until the console contains `needle` (for guests without a channel).
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(needle) {
                return Ok(());
            }
            self.check_alive(&format!("while waiting for {needle:?} on the console"))?;
            if Instant::now() >= deadline {
                return Err(HarnessError::BootTimeout { timeout, console_tail: self.console_tail(40) });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gdbstub address for the patcher (`HOST:PORT` or a socket path).
    pub fn gdb_addr(&self) -> Option<&str> {
        self.gdb_addr.as_deref()
    }

    /// The RAM file and QMP socket, when started with shared RAM.
    pub fn shared_ram(&self) -> Option<&SharedRam> {
        self.shared_ram.as_ref()
    }

    /// The reserved arena.
    pub fn arena(&self) -> Option<Arena> {
        self.config.arena
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// Spawn to VSPLREADY.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the whole QEMU process (SIGSTOP): its gdbstub stops answering.
    pub fn freeze(&mut self) -> Result<(), HarnessError> {
        self.signal(libc::SIGSTOP)?;
        self.frozen = true;
        Ok(())
    }

    /// Lets a frozen QEMU go on (SIGCONT).
    pub fn thaw(&mut self) -> Result<(), HarnessError> {
        self.signal(libc::SIGCONT)?;
        self.frozen = false;
        Ok(())
    }

    fn signal(&self, sig: libc::c_int) -> Result<(), HarnessError> {
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|_| HarnessError::Unsupported("pid out of range"))?;
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        let r = unsafe { libc::kill(pid, sig) };
        if r != 0 {
            return Err(io_err("signalling QEMU")(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Everything the kernel console printed so far.
    pub fn console(&self) -> String {
        self.console.lock().map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default()
    }

    /// The last `n` console lines.
    pub fn console_tail(&self, n: usize) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Console lines that show kernel trouble ([`CONSOLE_TROUBLE`]).
    pub fn console_problems(&self) -> Vec<String> {
        console_problems(&self.console())
    }

    /// `Err` listing the trouble lines when the console has any.
    pub fn check_console(&self) -> Result<(), HarnessError> {
        let lines = self.console_problems();
        if lines.is_empty() {
            Ok(())
        } else {
            Err(HarnessError::ConsoleProblems { lines })
        }
    }

    fn save_log(&self) {
        let dir = workspace_root().join("target/test-logs");
        let name: String =
            self.config.label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join(format!("qemu-{name}.log")), self.console());
        }
    }
}

/// Lines of `console` that contain a [`CONSOLE_TROUBLE`] substring.
pub fn console_problems(console: &str) -> Vec<String> {
    console.lines().filter(|l| CONSOLE_TROUBLE.iter().any(|t| l.contains(t))).map(str::to_string).collect()
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.frozen {
            let _ = self.signal(libc::SIGCONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.save_log();
        if std::thread::panicking() {
            eprintln!("--- console of QEMU guest '{}' (last 60 lines) ---\n{}\n---", self.config.label, self.console_tail(60));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_arena_kaslr_and_channel() {
        let mut c = QemuConfig::new("t", PathBuf::from("/k"), None);
        assert_eq!(c.append(), "console=ttyS0 panic=-1 memmap=0x400000$0x3f000000");
        c.kaslr = false;
        c.channel = Channel::Serial;
        c.arena = None;
        c.extra_append.push("quiet".into());
        assert_eq!(c.append(), "console=ttyS0 panic=-1 nokaslr vsplice.cmd=ttyS1 quiet");
    }

    #[test]
    fn trouble_lines_are_found_and_the_command_line_is_not_one() {
        let log = "[0.0] Command line: console=ttyS0 panic=-1\n[1.0] ok\n[2.0] BUG: unable to handle page fault\n[3.0] WARNING: CPU: 0 PID: 1 at x\n";
        assert_eq!(console_problems(log).len(), 2);
        assert!(console_problems("[0.0] Kernel command line: panic=-1 memmap=0x400000$0x3f000000\n").is_empty());
    }
}
