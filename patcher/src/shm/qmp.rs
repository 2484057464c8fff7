//! A minimal QMP client (QEMU Machine Protocol, JSON lines over a Unix
//! socket): the greeting, `qmp_capabilities`, then one command at a time.
//! Asynchronous events in between are skipped. Every reply is bounded in
//! size and every receive has a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::debug;

use super::error::ShmError;

/// Largest reply line accepted (`info mtree -f` of a big machine is a few
/// hundred KiB).
const MAX_LINE: u64 = 8 << 20;
/// Events skipped while waiting for one reply before giving up.
const MAX_EVENTS: usize = 10_000;

/// One QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    addr: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to `path`, reads the greeting and enters command mode.
    pub fn connect(path: &str, timeout: Duration) -> Result<Self, ShmError> {
        let io = |what: &str| {
            let what = what.to_string();
            let addr = path.to_string();
            move |source| ShmError::Qmp { addr, what, source: Some(source) }
        };
        let s = UnixStream::connect(path).map_err(io("connect"))?;
        s.set_read_timeout(Some(timeout)).map_err(io("set a time-out"))?;
        s.set_write_timeout(Some(timeout)).map_err(io("set a time-out"))?;
        let writer = s.try_clone().map_err(io("clone the socket"))?;
        let mut q = Self { addr: path.to_string(), reader: BufReader::new(s), writer };
        let greeting = q.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(q.protocol(format!("no QMP greeting: {}", short(&greeting))));
        }
        debug!(version = %greeting["QMP"]["version"]["qemu"], "QMP greeting");
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Runs `command` (with `arguments`) and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, ShmError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).map_err(|e| self.io("send", e))?;
        for _ in 0..MAX_EVENTS {
            let m = self.read_message()?;
            if m.get("event").is_some() {
                debug!(event = %m["event"], "QMP event skipped");
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(ShmError::QmpCommand {
                    command: command.to_string(),
                    class: e["class"].as_str().unwrap_or("?").to_string(),
                    desc: e["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
            return Err(self.protocol(format!("unexpected reply to {command}: {}", short(&m))));
        }
        Err(self.protocol(format!("more than {MAX_EVENTS} events before the reply to {command}")))
    }

    /// An HMP command through `human-monitor-command`; its text output.
    pub fn hmp(&mut self, command_line: &str) -> Result<String, ShmError> {
        let r = self.execute("human-monitor-command", Some(json!({ "command-line": command_line })))?;
        r.as_str().map(str::to_string).ok_or_else(|| self.protocol(format!("{command_line}: reply is not text")))
    }

    fn read_message(&mut self) -> Result<Value, ShmError> {
        let mut buf = Vec::new();
        let n = (&mut self.reader).take(MAX_LINE).read_until(b'\n', &mut buf).map_err(|e| self.io("receive", e))?;
        if n == 0 {
            return Err(self.protocol("QEMU closed the QMP connection".into()));
        }
        if buf.last() != Some(&b'\n') {
            return Err(self.protocol(format!("a reply longer than {MAX_LINE} bytes")));
        }
        serde_json::from_slice(&buf).map_err(|e| self.protocol(format!("a reply is not JSON: {e}")))
    }

    fn io(&self, what: &str, source: std::io::Error) -> ShmError {
        ShmError::Qmp { addr: self.addr.clone(), what: what.to_string(), source: Some(source) }
    }

    fn protocol(&self, what: String) -> ShmError {
        ShmError::Qmp { addr: self.addr.clone(), what, source: None }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greeting, then replies from `script` per command, with
    /// an event before each.
    fn fake(script: Vec<&'static str>) -> (std::path::PathBuf, std::thread::JoinHandle<Vec<String>>) {
        let dir = std::env::temp_dir().join(format!("vsplice-qmp-{}-{}", std::process::id(), script.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": []}}\r\n").unwrap();
            let mut seen = Vec::new();
            for reply in std::iter::once("{\"return\": {}}").chain(script) {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                seen.push(line.trim().to_string());
                w.write_all(b"{\"event\": \"RESUME\", \"timestamp\": {}}\r\n").unwrap();
                w.write_all(reply.as_bytes()).unwrap();
                w.write_all(b"\r\n").unwrap();
            }
            seen
        });
        (path, h)
    }

    #[test]
    fn commands_get_their_return_and_events_are_skipped() {
        let (p, h) = fake(vec!["{\"return\": {\"enabled\": false, \"present\": true}}", "{\"return\": \"text\\r\\n\"}"]);
        let mut q = Qmp::connect(p.to_str().unwrap(), Duration::from_secs(5)).unwrap();
        assert_eq!(q.execute("query-kvm", None).unwrap()["enabled"], false);
        assert_eq!(q.hmp("info mtree -f").unwrap(), "text\r\n");
        drop(q);
        let seen = h.join().unwrap();
        assert!(seen[0].contains("qmp_capabilities"), "{seen:?}");
        assert!(seen[2].contains("\"command-line\":\"info mtree -f\""), "{seen:?}");
    }

    #[test]
    fn an_error_reply_is_a_command_error_with_its_class() {
        let (p, _h) = fake(vec!["{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"nope\"}}"]);
        let mut q = Qmp::connect(p.to_str().unwrap(), Duration::from_secs(5)).unwrap();
        let e = q.execute("query-nothing", None).unwrap_err();
        assert_eq!(e.cause(), "shm_qmp_command");
        assert!(e.to_string().contains("CommandNotFound"), "{e}");
    }

    #[test]
    fn a_missing_socket_is_a_qmp_error() {
        let e = Qmp::connect("/nonexistent/vsplice/qmp.sock", Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.cause(), "shm_qmp");
    }
}
