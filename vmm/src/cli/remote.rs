//! `vsplice remote --api-sock PATH …`: the client of the HTTP API of a
//! `vsplice run --api-sock` VMM or a `vsplice attach` daemon. Readable text by default, the API's JSON with
//! `--json`. Exit codes as `vsplice patch`: 0 ok, 3 refused (a transaction's
//! cause, or an API error such as `busy`), 1 bad input (unreadable file,
//! here or, with `patch apply --path`, on the VMM's host; nothing answering
//! at the socket). `events --follow` prints the events as
//! they happen until the VMM ends (exit code 0).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::api::client::{self, ClientResponse};
use super::patch::EXIT_REFUSED;
use super::run::EXIT_BAD_INPUT;

/// `vsplice remote`.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The API socket of a `vsplice run --api-sock PATH` VMM or a `vsplice attach --api-sock PATH` daemon.
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// What to ask.
    #[command(subcommand)]
    pub command: RemoteCommand,
}

/// `vsplice remote` subcommands.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// The VM: state, vCPUs, memory, arena, kernel, agent, uptime.
    Vm,
    /// Patches: apply, revert, list, recover.
    #[command(subcommand)]
    Patch(RemotePatch),
    /// The Prometheus metrics.
    Metrics,
    /// Events after `--since` (waits up to `--timeout` seconds for one), or
    /// with `--follow` every event as it happens until the VMM ends.
    Events {
        /// Only events with a larger sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Seconds to wait when there is none yet (at most 60).
        #[arg(long, default_value_t = 0, conflicts_with = "follow")]
        timeout: u64,
        /// Stream the events (one line each; with `--json` the API's JSON
        /// line) until the VMM ends or this command is interrupted.
        #[arg(long)]
        follow: bool,
    },
}

/// `vsplice remote patch …`.
#[derive(Debug, Subcommand)]
pub enum RemotePatch {
    /// Apply a `.vsp` file: its bytes are sent, or with `--path` its absolute
    /// path, for the VMM to read on its host.
    Apply {
        /// The patch file.
        file: PathBuf,
        /// Send the file's path (made absolute here) instead of its bytes.
        #[arg(long)]
        path: bool,
        /// The safety check: `orc` (unwind the stacks by ORC, falling back
        /// to a conservative scan) or `conservative` (scan every stack word).
        /// Default: the VMM's.
        #[arg(long, value_name = "MODE", value_parser = ["orc", "conservative"])]
        check: Option<String>,
        /// Pauses tried before giving up with `code_busy`. Default: the VMM's.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        attempts: Option<u32>,
        /// When a module the patch is for is not loaded: hold the patch and
        /// apply it as that module loads, before its init runs (`vsplice
        /// attach` only; answered `pending`; `patch revert ID` cancels it).
        /// Without it such a patch is refused `module_not_loaded`.
        #[arg(long)]
        when_loaded: bool,
    },
    /// Revert a patch by id or name.
    Revert {
        /// Id or name.
        id: String,
    },
    /// The guest's registry.
    List,
    /// Complete or roll back an interrupted transaction.
    Recover,
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn text_vm(v: &Value) -> String {
    let kernel = &v["kernel"];
    let shm = &v["shared_memory"];
    let shared = match shm.get("mem_path").and_then(Value::as_str) {
        Some(path) => format!("\nshared memory: {path} (stops via {}, writes through the {})", str_of(shm, "stop_via"), str_of(shm, "writes")),
        None => String::new(),
    };
    format!(
        "state: {} ({})\nvcpus: {}\nmemory: {}\narena: {}\nkernel: {} {} (build-id {}, KASLR slide {})\nagent: {}\nboot: {}\nuptime: {} ms\ntransaction in flight: {}\nconsole: {}",
        str_of(v, "state"),
        str_of(v, "hypervisor"),
        v["vcpus"],
        v["memory_mib"].as_u64().map_or("unknown".to_owned(), |m| format!("{m} MiB")),
        str_of(v, "arena"),
        str_of(kernel, "kind"),
        str_of(kernel, "release"),
        str_of(kernel, "build_id"),
        str_of(kernel, "kaslr_slide"),
        if v["agent"]["announced"].as_bool().unwrap_or(false) { "announced" } else { "none" },
        v["boot"],
        v["uptime_ms"],
        v["transaction_in_flight"],
        text_console(&v["console"]),
    ) + &shared
}

fn text_console(c: &Value) -> String {
    if c.is_null() {
        return "not watched (attached)".into();
    }
    format!("{} lines, {} oops, {} BUG, {} WARNING, {} panic", c["lines"], c["oops"], c["bug"], c["warning"], c["panic"])
}

fn text_list(v: &Value) -> String {
    let patches = v["patches"].as_array().cloned().unwrap_or_default();
    if patches.is_empty() {
        return "no patches applied".into();
    }
    patches
        .iter()
        .map(|p| {
            let funcs: Vec<&str> = p["funcs"].as_array().map(|f| f.iter().filter_map(|f| f["name"].as_str()).collect()).unwrap_or_default();
            format!("{}  {}  {}  {}", str_of(p, "id"), str_of(p, "name"), str_of(p, "state"), funcs.join(","))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn text_txn(v: &Value) -> String {
    // A patch held until its module loads, or cancelled while it was.
    if let Some(state) = v.get("state").and_then(Value::as_str) {
        let modules: Vec<&str> = v["modules"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        return format!("{} ({}): {state}, module(s) {}", str_of(v, "name"), str_of(v, "id"), modules.join(", "));
    }
    let cause = str_of(v, "cause");
    let what = format!("{} {}", str_of(v, "op"), v.get("patch_name").and_then(Value::as_str).or(v.get("patch_id").and_then(Value::as_str)).unwrap_or(""));
    if cause == "ok" {
        format!("{}: ok (downtime {} us, {} pause(s))", what.trim(), v["timings"]["downtime_us"], v["timings"]["attempts"])
    } else {
        format!("{}: refused [{cause}]: {}", what.trim(), str_of(v, "message"))
    }
}

fn text_event(e: &Value) -> String {
    match str_of(e, "kind") {
        "txn" => format!("{} txn {}", e["seq"], text_txn(&e["txn"])),
        "kernel" => format!("{} kernel {} ({})", e["seq"], str_of(e, "state"), str_of(e, "detail")),
        "module" => format!("{} module {} ({})", e["seq"], str_of(e, "state"), str_of(e, "detail")),
        _ => format!("{} guest {} ({})", e["seq"], str_of(e, "state"), str_of(e, "detail")),
    }
}

fn text_events(v: &Value) -> String {
    let events = v["events"].as_array().cloned().unwrap_or_default();
    let mut lines: Vec<String> = events.iter().map(text_event).collect();
    lines.push(format!("next: {}", v["next"]));
    lines.join("\n")
}

fn show(r: &ClientResponse, json: bool, text: fn(&Value) -> String) -> ExitCode {
    let v = r.json();
    let ok = r.status == 200;
    if json || (v.is_null() && ok) {
        println!("{}", r.text().trim_end());
    } else if ok {
        println!("{}", text(&v));
    } else if v.get("op").is_some() {
        println!("{}", text_txn(&v));
    } else {
        eprintln!("vsplice: refused [{}]: {}", str_of(&v, "cause"), str_of(&v, "message"));
    }
    if ok {
        ExitCode::SUCCESS
    } else if v.get("cause").and_then(Value::as_str) == Some("patch_file_unreadable") {
        ExitCode::from(EXIT_BAD_INPUT)
    } else {
        ExitCode::from(EXIT_REFUSED)
    }
}

/// `PUT /patches`: the bytes with the options as query parameters, or JSON
/// `{"path", "check", "attempts"}`; `None` (reported) when the file cannot be read.
fn apply_call(file: &std::path::Path, by_path: bool, check: Option<&str>, attempts: Option<u32>, when_loaded: bool) -> Option<Call> {
    if by_path {
        let path = match std::path::absolute(file) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("vsplice: error [patch_file_unreadable]: {}: {e}", file.display());
                return None;
            }
        };
        let mut body = serde_json::json!({ "path": path });
        if let Some(c) = check {
            body["check"] = c.into();
        }
        if let Some(n) = attempts {
            body["attempts"] = n.into();
        }
        if when_loaded {
            body["when_loaded"] = true.into();
        }
        return Some(("PUT", "/patches".into(), body.to_string().into_bytes(), Some("application/json"), text_txn));
    }
    // Regular files only, bounded (a FIFO or /dev/zero never hangs the client).
    let bytes = match vsplice_patcher::patch::format::read_bounded(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("vsplice: error [patch_file_unreadable]: {}: {}", file.display(), vsplice_patcher::model::chain(&e));
            return None;
        }
    };
    let query: Vec<String> = check.map(|c| format!("check={c}")).into_iter().chain(attempts.map(|n| format!("attempts={n}"))).chain(when_loaded.then(|| "when_loaded=true".to_owned())).collect();
    let path = if query.is_empty() { "/patches".to_owned() } else { format!("/patches?{}", query.join("&")) };
    Some(("PUT", path, bytes, Some("application/octet-stream"), text_txn))
}

/// One request: method, path, body, its type, and how its answer reads as text.
type Call = (&'static str, String, Vec<u8>, Option<&'static str>, fn(&Value) -> String);

/// `events --follow`: each event printed as it comes; 0 when the stream ends.
fn follow(sock: &std::path::Path, since: u64, json: bool) -> ExitCode {
    let mut lines = match client::follow(sock, &format!("/events?follow=true&since={since}"), None) {
        Ok(client::Followed::Stream(lines)) => lines,
        Ok(client::Followed::Refused(r)) => return show(&r, json, text_events),
        Err(e) => {
            super::report(&e, e.cause());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let mut out = std::io::stdout().lock();
    loop {
        let printed = match lines.next_line() {
            Ok(None) => return ExitCode::SUCCESS,
            Ok(Some(line)) if line.trim().is_empty() => Ok(()),
            Ok(Some(line)) if json => writeln!(out, "{line}").and_then(|_| out.flush()),
            Ok(Some(line)) => writeln!(out, "{}", text_event(&serde_json::from_str(&line).unwrap_or(Value::Null))).and_then(|_| out.flush()),
            Err(e) => {
                super::report(&e, e.cause());
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        };
        // Whoever read the output is gone: so is the reason to follow.
        if printed.is_err() {
            return ExitCode::SUCCESS;
        }
    }
}

/// Runs `vsplice remote`.
pub fn run(args: RemoteArgs) -> ExitCode {
    let sock = &args.api_sock;
    if let RemoteCommand::Events { since, follow: true, .. } = args.command {
        return follow(sock, since, args.json);
    }
    let (method, path, body, content_type, text): Call = match &args.command {
        RemoteCommand::Vm => ("GET", "/vm".into(), Vec::new(), None, text_vm),
        RemoteCommand::Metrics => ("GET", "/metrics".into(), Vec::new(), None, |_| String::new()),
        RemoteCommand::Events { since, timeout, .. } => ("GET", format!("/events?since={since}&timeout={timeout}"), Vec::new(), None, text_events),
        RemoteCommand::Patch(RemotePatch::List) => ("GET", "/patches".into(), Vec::new(), None, text_list),
        RemoteCommand::Patch(RemotePatch::Recover) => ("POST", "/patches/recover".into(), Vec::new(), None, text_txn),
        RemoteCommand::Patch(RemotePatch::Revert { id }) => ("DELETE", format!("/patches/{id}"), Vec::new(), None, text_txn),
        RemoteCommand::Patch(RemotePatch::Apply { file, path, check, attempts, when_loaded }) => match apply_call(file, *path, check.as_deref(), *attempts, *when_loaded) {
            Some(call) => call,
            None => return ExitCode::from(EXIT_BAD_INPUT),
        },
    };
    let timeout = Some(Duration::from_secs(120));
    match client::request(sock, method, &path, content_type, &body, timeout) {
        Ok(r) => show(&r, args.json, text),
        Err(e) => {
            super::report(&e, e.cause());
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn when_loaded_goes_in_the_query_or_the_json_body_and_pending_reads_as_text() {
        let dir = std::env::temp_dir().join(format!("vsplice-remote-when-loaded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.vsp");
        std::fs::write(&f, b"x").unwrap();
        let (m, path, _, ct, _) = apply_call(&f, false, None, None, true).unwrap();
        assert_eq!((m, path.as_str(), ct), ("PUT", "/patches?when_loaded=true", Some("application/octet-stream")));
        let (_, path, body, ct, _) = apply_call(&f, true, Some("orc"), None, true).unwrap();
        assert_eq!((path.as_str(), ct), ("/patches", Some("application/json")));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((v["when_loaded"].as_bool(), v["check"].as_str()), (Some(true), Some("orc")));
        let (_, path, body, _, _) = apply_call(&f, true, None, None, false).unwrap();
        assert!(serde_json::from_slice::<Value>(&body).unwrap().get("when_loaded").is_none() && path == "/patches");
        let held = serde_json::json!({"id": "c4bf", "name": "fix", "modules": ["nfsd", "sunrpc"], "state": "pending"});
        assert_eq!(text_txn(&held), "fix (c4bf): pending, module(s) nfsd, sunrpc");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
