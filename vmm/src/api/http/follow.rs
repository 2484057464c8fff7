//! `GET /events?follow=true` (or `Accept: application/x-ndjson`): the event
//! log as a stream, chunked `application/x-ndjson`, one `Event` per line as
//! it happens, until the client goes away or the API server ends (then the
//! stream ends with its last chunk). An empty line is sent after
//! [`KEEPALIVE`] without events: it finds out a client that went away.
//!
//! Bounded: at most [`MAX_STREAMS`] at once (more get `503
//! too_many_requests`), not counted with the ordinary requests, so
//! followers never starve them; each holds at most one batch of the log (at
//! most [`KEEP`](crate::api::events::KEEP) events). The VMM thread only
//! appends to the log; a follower's own thread reads it and writes to its
//! client, so a slow or gone client blocks nobody but itself.
//!
//! tiny_http's chunked responses buffer 8 KiB before sending a chunk, so
//! the stream writes its own head and chunks, flushing each one.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::api::events::EventLog;

/// Followers served at once.
pub const MAX_STREAMS: usize = 8;
/// How often a waiting follower wakes to see whether the log is closed.
pub const WAKE: Duration = Duration::from_millis(250);
/// Quiet time after which a follower sends an empty line.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// The media type of the stream.
pub const NDJSON: &str = "application/x-ndjson";

/// The event log as NDJSON bytes: blocks until there is something to read,
/// ends (`Ok(0)`) once the log is closed and read to its end.
#[derive(Debug)]
pub struct EventReader<'a> {
    log: &'a EventLog,
    next: u64,
    pending: Vec<u8>,
    pos: usize,
    keepalive: Duration,
    last_sent: Instant,
}

impl<'a> EventReader<'a> {
    /// Events with `seq > since`, an empty line after `keepalive` of quiet.
    pub fn new(log: &'a EventLog, since: u64, keepalive: Duration) -> Self {
        Self { log, next: since, pending: Vec::new(), pos: 0, keepalive, last_sent: Instant::now() }
    }

    /// Fills `pending` with the next batch (or a keep-alive line); false at the end.
    fn refill(&mut self) -> io::Result<bool> {
        self.pending.clear();
        self.pos = 0;
        loop {
            let events = self.log.since(self.next, WAKE);
            if let Some(last) = events.last() {
                self.next = last.seq;
                for e in &events {
                    serde_json::to_writer(&mut self.pending, e).map_err(io::Error::other)?;
                    self.pending.push(b'\n');
                }
                self.last_sent = Instant::now();
                return Ok(true);
            }
            if self.log.is_closed() {
                return Ok(false);
            }
            if self.last_sent.elapsed() >= self.keepalive {
                self.pending.push(b'\n');
                self.last_sent = Instant::now();
                return Ok(true);
            }
        }
    }
}

impl Read for EventReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.pending.len() && !self.refill()? {
            return Ok(0);
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// One of the [`MAX_STREAMS`] stream slots, freed on drop.
#[derive(Debug)]
pub struct StreamSlot<'a>(&'a AtomicUsize);

impl<'a> StreamSlot<'a> {
    /// Claims a slot of `count`; `None` when all are taken.
    pub fn claim(count: &'a AtomicUsize) -> Option<Self> {
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_STREAMS).then_some(n + 1)).ok().map(|_| Self(count))
    }
}

impl Drop for StreamSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Writes the response head, then whatever `reader` gives as one flushed
/// chunk per read, then the last chunk. Fails when the client is gone.
pub fn pump(reader: &mut impl Read, w: &mut dyn Write) -> io::Result<()> {
    w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: {NDJSON}\r\nTransfer-Encoding: chunked\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n").as_bytes())?;
    w.flush()?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            w.write_all(b"0\r\n\r\n")?;
            return w.flush();
        }
        w.write_all(format!("{n:x}\r\n").as_bytes())?;
        w.write_all(&buf[..n])?;
        w.write_all(b"\r\n")?;
        w.flush()?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    fn read_some(r: &mut EventReader<'_>) -> String {
        let mut buf = [0u8; 4096];
        let n = r.read(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn lines_are_the_events_after_since_then_the_end_once_closed() {
        let log = EventLog::default();
        log.guest_state("running", "boot 1");
        log.guest_state("exited", "power off");
        let mut r = EventReader::new(&log, 1, Duration::from_secs(3600));
        let text = read_some(&mut r);
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!((lines[0]["seq"].as_u64(), lines[0]["state"].as_str()), (Some(2), Some("exited")));
        log.guest_state("running", "boot 2");
        log.close();
        // What was added before the close is still read; then the end.
        assert!(read_some(&mut r).contains("\"seq\":3"));
        assert_eq!(r.read(&mut [0u8; 16]).unwrap(), 0);
    }

    #[test]
    fn a_waiting_reader_sees_later_events_and_a_small_buffer_gets_it_in_pieces() {
        let log = Arc::new(EventLog::default());
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || log.guest_state("running", "boot 1"))
        };
        let mut r = EventReader::new(&log, 0, Duration::from_secs(3600));
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            assert_eq!(r.read(&mut byte).unwrap(), 1);
            line.push(byte[0]);
        }
        writer.join().unwrap();
        let e: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(e["seq"], 1);
    }

    #[test]
    fn quiet_means_an_empty_line() {
        let log = EventLog::default();
        let mut r = EventReader::new(&log, 0, Duration::ZERO);
        assert_eq!(read_some(&mut r), "\n");
    }

    #[test]
    fn slots_are_bounded_and_freed() {
        let count = AtomicUsize::new(0);
        let held: Vec<_> = (0..MAX_STREAMS).map(|_| StreamSlot::claim(&count).unwrap()).collect();
        assert!(StreamSlot::claim(&count).is_none());
        drop(held);
        assert_eq!(count.load(Ordering::Acquire), 0);
        assert!(StreamSlot::claim(&count).is_some());
    }

    #[test]
    fn pump_frames_chunks_and_ends_with_the_last_one() {
        let log = EventLog::default();
        log.guest_state("running", "boot 1");
        log.close();
        let mut out = Vec::new();
        pump(&mut EventReader::new(&log, 0, Duration::from_secs(3600)), &mut out).unwrap();
        let r = crate::api::client::read_response(&mut out.as_slice()).unwrap();
        assert_eq!((r.status, r.content_type.as_str()), (200, NDJSON));
        assert_eq!(r.text().lines().count(), 1);
        assert!(out.ends_with(b"0\r\n\r\n"));
    }

    #[test]
    fn pump_fails_when_the_client_is_gone() {
        struct Gone;
        impl Write for Gone {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let log = EventLog::default();
        assert!(pump(&mut EventReader::new(&log, 0, Duration::ZERO), &mut Gone).is_err());
    }
}
