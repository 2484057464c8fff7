//! The API's client over the Unix socket (`vsplice remote`, the tests): one
//! request per connection (`Connection: close`), the response parsed by
//! httparse, a chunked body decoded by chunked_transfer. Responses are
//! bounded (headers 64 KiB, body [`MAX_RESPONSE`]). [`follow`] reads the
//! event stream line by line as it comes.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

/// Largest response body read.
pub const MAX_RESPONSE: u64 = 64 << 20;
const MAX_HEAD: usize = 64 << 10;

/// Why a request failed (not an HTTP error status: that is a response).
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing answers at the socket.
    #[error("cannot connect to the API socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("talking to the API")]
    Io(#[source] std::io::Error),
    /// The response is not HTTP/1.1 this client understands.
    #[error("bad response from the API: {0}")]
    BadResponse(String),
}

impl ClientError {
    /// Stable cause.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "api_unreachable",
            Self::Io(_) => "api_io",
            Self::BadResponse(_) => "api_bad_response",
        }
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
}

impl ClientResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn send(sock: &Path, method: &str, path: &str, content_type: Option<&str>, body: &[u8], timeout: Option<Duration>) -> Result<UnixStream, ClientError> {
    let mut s = UnixStream::connect(sock).map_err(|source| ClientError::Connect { path: sock.to_owned(), source })?;
    s.set_read_timeout(timeout).map_err(ClientError::Io)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(ClientError::Io)?;
    s.write_all(body).map_err(ClientError::Io)?;
    Ok(s)
}

/// Sends `method path` with `body` (typed `content_type`) and reads the response.
pub fn request(sock: &Path, method: &str, path: &str, content_type: Option<&str>, body: &[u8], timeout: Option<Duration>) -> Result<ClientResponse, ClientError> {
    let mut s = send(sock, method, path, content_type, body, timeout)?;
    read_response(&mut s)
}

/// An event stream being read (`GET /events?follow=true`).
pub struct EventLines {
    body: BufReader<chunked_transfer::Decoder<BufReader<UnixStream>>>,
}

impl std::fmt::Debug for EventLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventLines")
    }
}

impl EventLines {
    /// The next line (without its newline; empty for a keep-alive), `None`
    /// when the stream ended cleanly (its last chunk). An error when it was cut.
    pub fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        let mut line = String::new();
        match self.body.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) if !line.ends_with('\n') => Err(ClientError::BadResponse("the stream ended mid-line".into())),
            Ok(_) => Ok(Some(line.trim_end_matches('\n').to_owned())),
            Err(e) => Err(ClientError::Io(e)),
        }
    }
}

/// What `GET path` on the event stream answered: the stream, or (any other
/// status or type) the whole response.
#[derive(Debug)]
pub enum Followed {
    /// `200 application/x-ndjson`: the lines as they come.
    Stream(EventLines),
    /// Anything else (an error), read to its end.
    Refused(ClientResponse),
}

/// Opens the event stream at `path` (`/events?follow=true&since=N`).
/// `timeout` bounds each read (`None`: wait for ever).
pub fn follow(sock: &Path, path: &str, timeout: Option<Duration>) -> Result<Followed, ClientError> {
    let s = send(sock, "GET", path, None, b"", timeout)?;
    let mut r = BufReader::new(s);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let n = r.by_ref().take(MAX_HEAD as u64).read_until(b'\n', &mut head).map_err(ClientError::Io)?;
        if n == 0 || head.len() > MAX_HEAD {
            return Err(ClientError::BadResponse("truncated head".into()));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&head).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    let ct = resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case("Content-Type")).map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase());
    if resp.code == Some(200) && ct.is_some_and(|c| c.starts_with("application/x-ndjson")) {
        return Ok(Followed::Stream(EventLines { body: BufReader::new(chunked_transfer::Decoder::new(r)) }));
    }
    let mut raw = head;
    r.take(MAX_RESPONSE).read_to_end(&mut raw).map_err(ClientError::Io)?;
    read_response(&mut raw.as_slice()).map(Followed::Refused)
}

/// Reads one response from `r` (to its end: the server closes after it).
pub fn read_response(r: &mut impl Read) -> Result<ClientResponse, ClientError> {
    let mut raw = Vec::new();
    r.take(MAX_RESPONSE + MAX_HEAD as u64).read_to_end(&mut raw).map_err(ClientError::Io)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(ClientError::BadResponse("truncated head".into())),
        Err(e) => return Err(ClientError::BadResponse(e.to_string())),
    };
    let status = resp.code.ok_or_else(|| ClientError::BadResponse("no status".into()))?;
    let find = |name: &str| resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value).trim().to_owned());
    let content_type = find("Content-Type").unwrap_or_default();
    let rest = &raw[head_len..];
    let body = if find("Transfer-Encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        chunked_transfer::Decoder::new(rest).read_to_end(&mut out).map_err(|e| ClientError::BadResponse(format!("chunked body: {e}")))?;
        out
    } else if let Some(len) = find("Content-Length") {
        let len: usize = len.parse().map_err(|_| ClientError::BadResponse(format!("Content-Length `{len}`")))?;
        rest.get(..len).ok_or_else(|| ClientError::BadResponse("body shorter than its Content-Length".into()))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(ClientResponse { status, content_type, body })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r = read_response(&mut &b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}extra"[..]).unwrap();
        assert_eq!((r.status, r.content_type.as_str(), r.body.as_slice()), (409, "application/json", &b"{}"[..]));
        let r = read_response(&mut &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..]).unwrap();
        assert_eq!(r.body, b"abc");
        assert!(read_response(&mut &b"HTTP/1.1 200"[..]).is_err());
        assert!(read_response(&mut &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab"[..]).is_err());
    }
}
