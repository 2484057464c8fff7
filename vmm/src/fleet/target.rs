//! The API calls the controller makes to one target, through the API's own
//! client ([`crate::api::client`]): what it runs (`GET /vm`), its registry
//! (`GET /patches`, the truth), apply (`PUT /patches` with the patch's
//! bytes) and revert (`DELETE /patches/{name}`).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::client;
use crate::devices::console_watch::ConsoleCounts;

/// How long one API call may take (an apply retries inside the VMM).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What a target says of itself (`GET /vm`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// `running`, `paused`, `exited`.
    pub state: String,
    /// `testguest`, `linux`, `unknown`.
    pub kind: String,
    /// The kernel's build-id, where known.
    pub build_id: Option<String>,
    /// The kernel's release, where known.
    pub release: Option<String>,
    /// Boots so far.
    pub boot: u64,
    /// The console's counts (`None` when attached: not watched).
    pub console: Option<ConsoleCounts>,
}

/// Why a call did not get an answer it could use (a refusal is an answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    /// Stable cause (`api_unreachable`, `api_io`, `api_bad_response`, or the API's own cause).
    pub cause: String,
    /// What happened.
    pub message: String,
}

fn unreachable(e: &client::ClientError) -> Unreachable {
    Unreachable { cause: e.cause().to_owned(), message: vsplice_patcher::model::chain(e) }
}

fn refused(r: &client::ClientResponse) -> Unreachable {
    let v = r.json();
    let cause = v.get("cause").and_then(Value::as_str).unwrap_or("api_bad_response").to_owned();
    let message = v.get("message").and_then(Value::as_str).map_or_else(|| format!("HTTP {}", r.status), str::to_owned);
    Unreachable { cause, message }
}

/// `GET /vm`.
pub fn probe(sock: &Path) -> Result<Probe, Unreachable> {
    let r = client::request(sock, "GET", "/vm", None, b"", Some(CALL_TIMEOUT)).map_err(|e| unreachable(&e))?;
    if r.status != 200 {
        return Err(refused(&r));
    }
    let v = r.json();
    let s = |v: &Value| v.as_str().map(str::to_owned);
    Ok(Probe {
        state: s(&v["state"]).unwrap_or_default(),
        kind: s(&v["kernel"]["kind"]).unwrap_or_default(),
        build_id: s(&v["kernel"]["build_id"]),
        release: s(&v["kernel"]["release"]),
        boot: v["boot"].as_u64().unwrap_or(0),
        console: serde_json::from_value(v["console"].clone()).ok(),
    })
}

/// The names of the patches in the target's registry (`GET /patches`).
pub fn applied(sock: &Path) -> Result<Vec<String>, Unreachable> {
    let r = client::request(sock, "GET", "/patches", None, b"", Some(CALL_TIMEOUT)).map_err(|e| unreachable(&e))?;
    if r.status != 200 {
        return Err(refused(&r));
    }
    let v = r.json();
    let patches = v["patches"].as_array().ok_or_else(|| Unreachable { cause: "api_bad_response".into(), message: "GET /patches has no patch list".into() })?;
    Ok(patches.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect())
}

/// The result of a transaction: `ok` or the refusal's cause, and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `ok`, or the stable cause (`code_busy`, `no_match`, …, `api_unreachable`).
    pub cause: String,
    /// The message.
    pub message: String,
}

impl Outcome {
    /// True when the transaction was done.
    pub fn ok(&self) -> bool {
        self.cause == "ok"
    }
}

fn outcome(r: Result<client::ClientResponse, client::ClientError>) -> Outcome {
    match r {
        Ok(r) if r.status == 200 => Outcome { cause: "ok".into(), message: String::new() },
        Ok(r) => {
            let u = refused(&r);
            Outcome { cause: u.cause, message: u.message }
        }
        Err(e) => {
            let u = unreachable(&e);
            Outcome { cause: u.cause, message: u.message }
        }
    }
}

/// `PUT /patches` with the patch's bytes (`attempts` pauses at most).
pub fn apply(sock: &Path, patch: &[u8], attempts: Option<u32>) -> Outcome {
    let path = attempts.map_or_else(|| "/patches".to_owned(), |n| format!("/patches?attempts={n}"));
    outcome(client::request(sock, "PUT", &path, Some("application/octet-stream"), patch, Some(CALL_TIMEOUT)))
}

/// `DELETE /patches/{name}`.
pub fn revert(sock: &Path, name: &str) -> Outcome {
    outcome(client::request(sock, "DELETE", &format!("/patches/{name}"), None, b"", Some(CALL_TIMEOUT)))
}
