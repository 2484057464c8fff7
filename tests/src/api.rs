//! The test guest under `vsplice run --api-sock`, for the API tests: the
//! VMM as a child process (killed on drop), its serial output in a file, and
//! requests whose every reply is checked against `docs/openapi.yaml`,
//! event streams whose every line is.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vsplice_vmm::api::client::{self, ClientResponse, EventLines, Followed};

use crate::cli::{remote_command, vsplice_bin};
use crate::openapi::OpenApi;
use crate::scratch::tmp_dir;
use crate::testguest;

/// A `vsplice run --api-sock` of the test guest.
#[derive(Debug)]
pub struct ApiVm {
    child: Option<Child>,
    /// The API socket.
    pub sock: PathBuf,
    /// The guest's serial output.
    pub serial: PathBuf,
    /// The VMM's stderr.
    pub stderr: PathBuf,
    /// Scratch directory of this VM.
    pub dir: PathBuf,
    openapi: OpenApi,
}

impl ApiVm {
    /// Boots the test guest (2 vCPUs, 64 MiB) with `cmdline`; returns once
    /// the socket answers and the guest printed `TG ready`.
    pub fn start(name: &str, cmdline: &str, extra: &[&str]) -> Self {
        Self::start_with(name, 2, cmdline, extra)
    }

    /// [`Self::start`] with `vcpus` vCPUs.
    pub fn start_with(name: &str, vcpus: u32, cmdline: &str, extra: &[&str]) -> Self {
        let dir = tmp_dir(&format!("api-{name}"));
        let (sock, serial, stderr) = (dir.join("api.sock"), dir.join("serial.txt"), dir.join("stderr.txt"));
        let _ = std::fs::remove_file(&sock);
        let err = std::fs::File::create(&stderr).unwrap_or_else(|e| panic!("{}: {e}", stderr.display()));
        let child = Command::new(vsplice_bin())
            .args(["run", "--vcpus", &vcpus.to_string(), "--memory", "64", "--kernel"])
            .arg(testguest::image())
            .args(["--cmdline", cmdline])
            .arg("--serial")
            .arg(format!("file:{}", serial.display()))
            .arg("--api-sock")
            .arg(&sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("vsplice run does not start: {e}"));
        let vm = Self { child: Some(child), sock, serial, stderr, dir, openapi: OpenApi::load() };
        let up = vm.wait_serial(Duration::from_secs(60), |s| s.contains("TG ready")) && vm.wait_sock(Duration::from_secs(10));
        assert!(up, "the VM did not come up: {}\n{}", vm.stderr_text(), vm.serial_text());
        vm
    }

    fn wait_sock(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if UnixStream::connect(&self.sock).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The serial output so far.
    pub fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// The VMM's stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the serial output satisfies `pred`.
    pub fn wait_serial(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if pred(&self.serial_text()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The OpenAPI validator.
    pub fn openapi(&self) -> &OpenApi {
        &self.openapi
    }

    /// One request; its reply is checked against the OpenAPI document
    /// (panics when it does not conform).
    pub fn req(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> ClientResponse {
        let r = client::request(&self.sock, method, path, content_type, body, Some(Duration::from_secs(120)))
            .unwrap_or_else(|e| panic!("{method} {path}: {e} [{}]\n{}", e.cause(), self.stderr_text()));
        self.conforms(method, path, &r);
        r
    }

    /// Checks a reply against the document: a documented route's reply by
    /// its operation, any other reply (unknown route, wrong method) as an `Error`.
    pub fn conforms(&self, method: &str, path: &str, r: &ClientResponse) {
        if let Err(e) = self.openapi.conforms(method, path, r) {
            panic!("reply does not conform to docs/openapi.yaml: {e}");
        }
    }

    /// GET returning JSON (status 200 asserted).
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.req("GET", path, None, b"");
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    /// Writes a raw request and drops the connection at once (a client that
    /// goes away mid-request).
    pub fn send_and_disconnect(&self, raw_head: &str, body: &[u8]) {
        let mut s = UnixStream::connect(&self.sock).unwrap_or_else(|e| panic!("connect: {e}"));
        let _ = s.write_all(raw_head.as_bytes());
        let _ = s.write_all(body);
        drop(s);
    }

    /// Opens the event stream after `since` (`GET /events?follow=true`);
    /// a refusal is returned, checked against the document.
    pub fn follow(&self, since: u64) -> Result<Follower, ClientResponse> {
        let path = format!("/events?follow=true&since={since}");
        match client::follow(&self.sock, &path, Some(Duration::from_secs(120))) {
            Ok(Followed::Stream(lines)) => Ok(Follower { lines, schema: self.event_line_schema(), openapi: self.openapi.clone() }),
            Ok(Followed::Refused(r)) => {
                self.conforms("GET", &path, &r);
                Err(r)
            }
            Err(e) => panic!("GET {path}: {e} [{}]\n{}", e.cause(), self.stderr_text()),
        }
    }

    /// The schema of one line of the event stream, as the document gives it.
    pub fn event_line_schema(&self) -> serde_json::Value {
        let schema = self.openapi.reply_schema("GET", "/events", 200, "application/x-ndjson");
        assert!(!schema.is_null(), "docs/openapi.yaml has no application/x-ndjson reply for GET /events");
        schema
    }

    /// Starts `vsplice remote --api-sock SOCK args…` with its stdout piped.
    pub fn remote_spawn(&self, args: &[&str]) -> Child {
        remote_command(&self.sock, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("vsplice remote: {e}"))
    }

    /// Runs `vsplice remote --api-sock SOCK args…`.
    pub fn remote(&self, args: &[&str]) -> std::process::Output {
        remote_command(&self.sock, args).output().unwrap_or_else(|e| panic!("vsplice remote: {e}"))
    }

    /// Waits for the VMM to end (the guest powers off) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < end {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// An event stream being read: every line is checked against the document.
#[derive(Debug)]
pub struct Follower {
    lines: EventLines,
    schema: serde_json::Value,
    openapi: OpenApi,
}

impl Follower {
    /// The next event (keep-alive lines skipped), checked against the
    /// document; `None` when the stream ended cleanly. Panics on a stream
    /// cut short or a line that does not conform.
    pub fn next_event(&mut self) -> Option<serde_json::Value> {
        loop {
            let line = match self.lines.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => return None,
                Err(e) => panic!("the event stream broke: {e} [{}]", e.cause()),
            };
            if line.trim().is_empty() {
                continue;
            }
            if let Err(e) = self.openapi.validate_lines(&self.schema, line.as_bytes()) {
                panic!("a streamed event does not conform to docs/openapi.yaml: {e}");
            }
            return Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
    }

    /// Reads events until one satisfies `pred`; panics if the stream ends first.
    pub fn until(&mut self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            match self.next_event() {
                Some(e) if pred(&e) => return e,
                Some(_) => {}
                None => panic!("the event stream ended before the event looked for"),
            }
        }
    }
}

impl Drop for ApiVm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Builds a test-guest patch from C text with `vsplice patch build`.
pub fn build_patch(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(format!("{name}.vsp"));
    std::fs::write(&src, source).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let o = crate::cli::vsplice(&["patch", "build", "--kernel", &testguest::image().to_string_lossy(), "--name", name, "-o", &out.to_string_lossy(), &src.to_string_lossy()]);
    assert!(o.status.success(), "build {name}: {}", crate::cli::text(&o.stderr));
    out
}

/// Builds `examples/patches/testguest/FILE` into `dir`.
pub fn build_example(dir: &Path, file: &str) -> PathBuf {
    build_example_with(dir, file, &[])
}

/// [`build_example`] with more `vsplice patch build` arguments (e.g.
/// `--description`, `--cve`, `--version`).
pub fn build_example_with(dir: &Path, file: &str, extra: &[&str]) -> PathBuf {
    let src = crate::livepatch::example(file);
    let name = file.trim_end_matches(".c");
    let out = dir.join(format!("{name}.vsp"));
    let (image, out_s, src_s) = (testguest::image().to_string_lossy().into_owned(), out.to_string_lossy().into_owned(), src.to_string_lossy().into_owned());
    let mut args = vec!["patch", "build", "--kernel", &image, "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-o", &out_s, &src_s]);
    let o = crate::cli::vsplice(&args);
    assert!(o.status.success(), "build {name}: {}", crate::cli::text(&o.stderr));
    out
}
