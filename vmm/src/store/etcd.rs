//! etcd's v3 JSON gateway over plain HTTP/1.1 (no gRPC stack in the VMM's
//! build), one request per connection, each endpoint of the cluster tried
//! in turn so a member that died is passed over. Shared by the fleet
//! controller (its journal and lock, [`crate::fleet::etcd`]) and the VMMs
//! that register themselves as targets ([`super::register`]).

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster's client endpoints (`host:port`) and the rollout's key prefix.
#[derive(Debug, Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    prefix: String,
    /// The endpoint that answered last (tried first).
    good: Arc<Mutex<usize>>,
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

fn unb64(v: &Value) -> String {
    v.as_str().and_then(|s| B64.decode(s).ok()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// The key just past every key starting with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0xff {
            b.push(last + 1);
            return B64.encode(&b);
        }
    }
    B64.encode([0u8])
}

impl Etcd {
    /// Parses `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`.
    pub fn parse(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("etcd://")?;
        let (hosts, prefix) = rest.split_once('/')?;
        let endpoints: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect();
        if endpoints.is_empty() || prefix.is_empty() {
            return None;
        }
        Some(Self { endpoints, prefix: format!("/{}/", prefix.trim_matches('/')), good: Arc::new(Mutex::new(0)) })
    }

    /// Parses `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`, the prefix
    /// `default_prefix` when none is given (the registration store's form).
    pub fn parse_or_default(url: &str, default_prefix: &str) -> Option<Self> {
        let rest = url.strip_prefix("etcd://")?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = if prefix.trim_matches('/').is_empty() { default_prefix } else { prefix };
        Self::parse(&format!("etcd://{hosts}/{prefix}"))
    }

    /// The endpoints and the prefix, as an `etcd://` URL again.
    pub fn url(&self) -> String {
        format!("etcd://{}{}", self.endpoints.join(","), self.prefix.trim_end_matches('/'))
    }

    /// A key under the rollout's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn post(endpoint: &str, path: &str, body: &str) -> Result<Value, String> {
        let addr = endpoint.to_socket_addrs().map_err(|e| format!("{endpoint}: {e}"))?.next().ok_or_else(|| format!("{endpoint}: no address"))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| format!("{endpoint}: {e}"))?;
        s.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        let head = format!("POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).and_then(|_| s.write_all(body.as_bytes())).map_err(|e| format!("{endpoint}: {e}"))?;
        let r = crate::api::client::read_response(&mut s).map_err(|e| format!("{endpoint}: {e}"))?;
        // The streaming calls (lease keep-alive) answer {"result": …}.
        let v = r.json();
        let v = if v.is_null() { serde_json::from_str(r.text().lines().next().unwrap_or_default()).unwrap_or(Value::Null) } else { v };
        if r.status != 200 {
            return Err(format!("{endpoint}{path}: HTTP {}: {}", r.status, r.text().trim()));
        }
        Ok(v.get("result").cloned().unwrap_or(v))
    }

    /// `POST path` to the first endpoint that answers (the last good one first).
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, String> {
        let body = body.to_string();
        let first = self.good.lock().map(|g| *g).unwrap_or(0);
        let mut errors = Vec::new();
        for k in 0..self.endpoints.len() {
            let i = (first + k) % self.endpoints.len();
            match Self::post(&self.endpoints[i], path, &body) {
                Ok(v) => {
                    if let Ok(mut g) = self.good.lock() {
                        *g = i;
                    }
                    return Ok(v);
                }
                Err(e) => errors.push(e),
            }
        }
        Err(errors.join("; "))
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<String>, String> {
        let v = self.call("/v3/kv/range", &json!({"key": b64(key)}))?;
        Ok(v["kvs"].as_array().and_then(|k| k.first()).map(|kv| unb64(&kv["value"])))
    }

    /// The lease `key` is bound to (0: none), `None` when there is no `key`.
    pub fn lease_of(&self, key: &str) -> Result<Option<i64>, String> {
        let v = self.call("/v3/kv/range", &json!({"key": b64(key)}))?;
        Ok(v["kvs"].as_array().and_then(|k| k.first()).map(|kv| kv["lease"].as_str().and_then(|s| s.parse().ok()).or_else(|| kv["lease"].as_i64()).unwrap_or(0)))
    }

    /// Every value under `prefix`, in key order.
    pub fn values(&self, prefix: &str) -> Result<Vec<String>, String> {
        let v = self.call("/v3/kv/range", &json!({"key": b64(prefix), "range_end": prefix_end(prefix)}))?;
        Ok(v["kvs"].as_array().map(|k| k.iter().map(|kv| unb64(&kv["value"])).collect()).unwrap_or_default())
    }

    /// Every `(key, value)` under `prefix`, in key order, `limit` at most
    /// (etcd's own `limit`: a store holding more is not read whole).
    pub fn entries(&self, prefix: &str, limit: usize) -> Result<Vec<(String, String)>, String> {
        let v = self.call("/v3/kv/range", &json!({"key": b64(prefix), "range_end": prefix_end(prefix), "limit": limit.to_string()}))?;
        Ok(v["kvs"].as_array().map(|k| k.iter().map(|kv| (unb64(&kv["key"]), unb64(&kv["value"]))).collect()).unwrap_or_default())
    }

    /// Puts `key` bound to `lease` only while it is bound to it already
    /// (a record updated under its own lease); false when it is not.
    pub fn update_leased(&self, key: &str, value: &str, lease: i64) -> Result<bool, String> {
        let put = json!([{"request_put": {"key": b64(key), "value": b64(value), "lease": lease.to_string()}}]);
        let v = self.call("/v3/kv/txn", &json!({"compare": [{"key": b64(key), "target": "LEASE", "result": "EQUAL", "lease": lease.to_string()}], "success": put}))?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// Puts `key` only while `lock` is held with `lease` (0: unfenced); false when it is not.
    pub fn put_fenced(&self, key: &str, value: &str, lock: &str, lease: i64) -> Result<bool, String> {
        let put = json!([{"request_put": {"key": b64(key), "value": b64(value)}}]);
        if lease == 0 {
            self.call("/v3/kv/put", &json!({"key": b64(key), "value": b64(value)}))?;
            return Ok(true);
        }
        let v = self.call("/v3/kv/txn", &json!({"compare": [{"key": b64(lock), "target": "LEASE", "result": "EQUAL", "lease": lease.to_string()}], "success": put}))?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) -> Result<(), String> {
        self.call("/v3/kv/deleterange", &json!({"key": b64(key)})).map(|_| ())
    }

    /// Grants a lease of `ttl` seconds; its id.
    pub fn grant(&self, ttl: u64) -> Result<i64, String> {
        let v = self.call("/v3/lease/grant", &json!({"TTL": ttl.to_string()}))?;
        v["ID"].as_str().and_then(|s| s.parse().ok()).or_else(|| v["ID"].as_i64()).ok_or_else(|| format!("lease grant: {v}"))
    }

    /// Keeps `lease` alive once; false when it has expired.
    pub fn keepalive(&self, lease: i64) -> Result<bool, String> {
        let v = self.call("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))?;
        let ttl = v["TTL"].as_str().and_then(|s| s.parse::<i64>().ok()).or_else(|| v["TTL"].as_i64()).unwrap_or(0);
        Ok(ttl > 0)
    }

    /// The TTL `lease` was granted with, in seconds (`None`: no such lease).
    pub fn granted_ttl(&self, lease: i64) -> Result<Option<i64>, String> {
        let v = self.call("/v3/lease/timetolive", &json!({"ID": lease.to_string()}))?;
        let n = |k: &str| v[k].as_str().and_then(|s| s.parse::<i64>().ok()).or_else(|| v[k].as_i64());
        Ok(n("grantedTTL").filter(|_| n("TTL").unwrap_or(-1) > 0))
    }

    /// Revokes `lease` (its lock goes at once).
    pub fn revoke(&self, lease: i64) -> Result<(), String> {
        self.call("/v3/lease/revoke", &json!({"ID": lease.to_string()})).map(|_| ())
    }

    /// Creates `lock` bound to `lease` if no one holds it; false when someone
    /// does (also a registration: created only where no other VMM's is).
    pub fn try_lock(&self, lock: &str, owner: &str, lease: i64) -> Result<bool, String> {
        let v = self.call(
            "/v3/kv/txn",
            &json!({"compare": [{"key": b64(lock), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                    "success": [{"request_put": {"key": b64(lock), "value": b64(owner), "lease": lease.to_string()}}]}),
        )?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_and_prefix_ends() {
        let e = Etcd::parse("etcd://127.0.0.1:2379,127.0.0.1:22379/fleet/fix1").unwrap();
        assert_eq!(e.endpoints, ["127.0.0.1:2379", "127.0.0.1:22379"]);
        assert_eq!(e.key("lock"), "/fleet/fix1/lock");
        assert!(Etcd::parse("etcd:///x").is_none() && Etcd::parse("etcd://h:1/").is_none() && Etcd::parse("/tmp/j.redb").is_none());
        assert_eq!(B64.decode(prefix_end("/a/")).unwrap(), b"/a0");
        assert_eq!(unb64(&json!(b64("v"))), "v");
        let r = Etcd::parse_or_default("etcd://127.0.0.1:2379", "vsplice").unwrap();
        assert_eq!((r.key("targets/a"), r.url()), ("/vsplice/targets/a".to_owned(), "etcd://127.0.0.1:2379/vsplice".to_owned()));
        assert_eq!(Etcd::parse_or_default("etcd://h:1,h:2/", "vsplice").unwrap().key("x"), "/vsplice/x");
        assert_eq!(Etcd::parse_or_default("etcd://h:1/dc1/fleet", "vsplice").unwrap().key("x"), "/dc1/fleet/x");
        assert!(Etcd::parse_or_default("etcd://", "vsplice").is_none() && Etcd::parse_or_default("dir:/x", "v").is_none());
    }
}
