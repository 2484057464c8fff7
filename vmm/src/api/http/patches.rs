//! `/patches`: list (`GET`), one patch (`GET /patches/{id}`), apply (`PUT`,
//! the `.vsp` bytes as `application/octet-stream` or JSON
//! `{"path", "check", "attempts", "when_loaded"}`; `check`, `attempts` and
//! `when_loaded` may also be query parameters, with either body; with
//! `when_loaded` a patch whose module is not loaded is held, `202 pending`,
//! and `DELETE` cancels it), revert (`DELETE /patches/{id}`),
//! recover (`POST /patches/recover`). Transactions are one at a time per VM:
//! another one in flight is `409 busy`. While one is in flight the list is
//! the registry as last read.

use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;
use vsplice_patcher::model::CheckMode;

use super::{Ctx, Reply};
use crate::api::request::{ApiCause, ApiError, ApiRequest, ApplyRequest, PatchSource};
use crate::api::MAX_BODY;

/// The JSON form of `PUT /patches`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyJson {
    path: PathBuf,
    #[serde(default)]
    check: Option<String>,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    when_loaded: bool,
}

/// `GET /patches`.
pub fn list(ctx: &Ctx) -> Reply {
    if ctx.shared.busy() {
        if let Some(s) = ctx.shared.status() {
            return Reply::json(200, &s);
        }
    }
    ctx.ask(ApiRequest::ListPatches)
}

/// `GET /patches/{id}`.
pub fn get(ctx: &Ctx, id: &str) -> Reply {
    if ctx.shared.busy() {
        if let Some(s) = ctx.shared.status() {
            return match s.patches.iter().find(|p| p.id == id || p.name == id) {
                Some(p) => Reply::json(200, p),
                None => Reply::error(&ApiError::new(ApiCause::UnknownPatch, format!("no patch `{id}` in the guest registry"))),
            };
        }
    }
    ctx.ask(ApiRequest::GetPatch(id.to_owned()))
}

/// Reads a body of at most [`MAX_BODY`] bytes.
pub fn read_body(declared: Option<usize>, body: &mut dyn Read) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::new(ApiCause::BodyTooLarge, format!("the body is over {MAX_BODY} bytes"));
    if declared.is_some_and(|n| n as u64 > MAX_BODY) {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    body.take(MAX_BODY + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ApiError::new(ApiCause::MalformedJson, format!("reading the body: {e}")))?;
    if buf.len() as u64 > MAX_BODY {
        return Err(too_large());
    }
    Ok(buf)
}

/// The options of `PUT /patches?check=orc|conservative&attempts=N`.
fn parse_options(query: &str) -> Result<(Option<CheckMode>, Option<u32>, bool), ApiError> {
    let (mut check, mut attempts, mut when_loaded) = (None, None, false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "check" => check = Some(v.parse::<CheckMode>().map_err(|e| ApiError::new(ApiCause::BadQuery, e))?),
            "attempts" => match v.parse::<u32>() {
                Ok(n) if n >= 1 => attempts = Some(n),
                _ => return Err(ApiError::new(ApiCause::BadQuery, format!("`attempts` wants a number from 1, got `{v}`"))),
            },
            "when_loaded" => match v {
                "true" | "" => when_loaded = true,
                "false" => when_loaded = false,
                _ => return Err(ApiError::new(ApiCause::BadQuery, format!("`when_loaded` wants true or false, got `{v}`"))),
            },
            _ => return Err(ApiError::new(ApiCause::BadQuery, format!("unknown parameter `{k}` (check, attempts, when_loaded)"))),
        }
    }
    Ok((check, attempts, when_loaded))
}

/// The apply request a body and the query's options describe; an option
/// given both in the query and in a JSON body is `bad_query`.
pub fn parse_apply(content_type: &str, query: &str, body: Vec<u8>) -> Result<ApplyRequest, ApiError> {
    let (q_check, q_attempts, q_when_loaded) = parse_options(query)?;
    match content_type {
        "application/octet-stream" => Ok(ApplyRequest { source: PatchSource::Bytes(body), check: q_check, attempts: q_attempts, when_loaded: q_when_loaded }),
        "application/json" => {
            let j: ApplyJson = serde_json::from_slice(&body).map_err(|e| ApiError::new(ApiCause::MalformedJson, e.to_string()))?;
            let check = match j.check {
                Some(c) => Some(c.parse::<CheckMode>().map_err(|e| ApiError::new(ApiCause::MalformedJson, e))?),
                None => None,
            };
            if j.attempts == Some(0) {
                return Err(ApiError::new(ApiCause::MalformedJson, "`attempts` wants a number from 1, got 0"));
            }
            if (check.is_some() && q_check.is_some()) || (j.attempts.is_some() && q_attempts.is_some()) {
                return Err(ApiError::new(ApiCause::BadQuery, "an option is both in the query and in the JSON body"));
            }
            Ok(ApplyRequest { source: PatchSource::Path(j.path), check: check.or(q_check), attempts: j.attempts.or(q_attempts), when_loaded: j.when_loaded || q_when_loaded })
        }
        other => Err(ApiError::new(
            ApiCause::UnsupportedMediaType,
            format!("Content-Type `{other}`: send the .vsp as application/octet-stream, or application/json {{\"path\": …}}"),
        )),
    }
}

/// `PUT /patches`.
pub fn apply(ctx: &Ctx, content_type: &str, query: &str, declared: Option<usize>, body: &mut dyn Read) -> Reply {
    let req = parse_options(query).and_then(|_| read_body(declared, body)).and_then(|b| parse_apply(content_type, query, b));
    match req {
        Ok(req) => ctx.transaction(ApiRequest::Apply(req)),
        Err(e) => Reply::error(&e),
    }
}

/// `DELETE /patches/{id}`.
pub fn revert(ctx: &Ctx, id: &str) -> Reply {
    ctx.transaction(ApiRequest::Revert(id.to_owned()))
}

/// `POST /patches/recover`.
pub fn recover(ctx: &Ctx) -> Reply {
    ctx.transaction(ApiRequest::Recover)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bodies() {
        let r = parse_apply("application/json", "", br#"{"path":"/x.vsp","check":"conservative","attempts":3}"#.to_vec()).unwrap();
        assert!(matches!(r.source, PatchSource::Path(ref p) if p == std::path::Path::new("/x.vsp")));
        assert_eq!(r.check, Some(CheckMode::Conservative));
        assert_eq!(r.attempts, Some(3));
        for bad in [&b"{"[..], br#"{"path":1}"#, br#"{"path":"/x","extra":1}"#, br#"{"path":"/x","check":"fast"}"#] {
            assert_eq!(parse_apply("application/json", "", bad.to_vec()).unwrap_err().cause, ApiCause::MalformedJson);
        }
        assert_eq!(parse_apply("text/plain", "", Vec::new()).unwrap_err().cause, ApiCause::UnsupportedMediaType);
        assert!(matches!(parse_apply("application/octet-stream", "", vec![1]).unwrap().source, PatchSource::Bytes(_)));
    }

    #[test]
    fn options_in_the_query() {
        let r = parse_apply("application/octet-stream", "check=orc&attempts=7", vec![1]).unwrap();
        assert_eq!((r.check, r.attempts), (Some(CheckMode::Orc), Some(7)));
        let r = parse_apply("application/json", "attempts=2", br#"{"path":"/x.vsp","check":"conservative"}"#.to_vec()).unwrap();
        assert_eq!((r.check, r.attempts), (Some(CheckMode::Conservative), Some(2)));
        for bad in ["check=fast", "attempts=0", "attempts=x", "retries=1"] {
            assert_eq!(parse_apply("application/octet-stream", bad, vec![1]).unwrap_err().cause, ApiCause::BadQuery, "{bad}");
        }
        // The same bound in the JSON body as in the query (the document says minimum 1).
        let zero = parse_apply("application/json", "", br#"{"path":"/x.vsp","attempts":0}"#.to_vec());
        assert_eq!(zero.unwrap_err().cause, ApiCause::MalformedJson);
        let both = parse_apply("application/json", "check=orc", br#"{"path":"/x.vsp","check":"orc"}"#.to_vec());
        assert_eq!(both.unwrap_err().cause, ApiCause::BadQuery);
    }

    #[test]
    fn body_bounds() {
        assert_eq!(read_body(Some(MAX_BODY as usize + 1), &mut &b""[..]).unwrap_err().cause, ApiCause::BodyTooLarge);
        let mut big = std::io::repeat(0).take(MAX_BODY + 10);
        assert_eq!(read_body(None, &mut big).unwrap_err().cause, ApiCause::BodyTooLarge);
        assert_eq!(read_body(Some(3), &mut &b"abc"[..]).unwrap(), b"abc");
    }
}
