//! Link-level tests against fake peers on a socketpair: a peer that never
//! ends its packet, one that sends only garbage, and one within the bounds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::*;

/// A peer thread that writes `first` and then `chunk` over and over until
/// the link end is closed (its writes then fail).
fn endless_peer(first: &'static [u8], chunk: Vec<u8>) -> (Link, std::thread::JoinHandle<u64>) {
    let (a, mut b) = UnixStream::pair().unwrap();
    let h = std::thread::spawn(move || {
        let mut sent = 0u64;
        if b.write_all(first).is_err() {
            return sent;
        }
        while b.write_all(&chunk).is_ok() {
            sent += chunk.len() as u64;
        }
        sent
    });
    let mut link = Link::new(Stream::Unix(a));
    link.acks = false;
    (link, h)
}

#[test]
fn a_packet_that_never_ends_is_refused_at_the_bound() {
    let (mut link, h) = endless_peer(b"$", vec![b'a'; 64 * 1024]);
    // A long time-out: the refusal must come from the bound, not the clock.
    let e = link.recv(Duration::from_secs(120), b"m0,10").unwrap_err();
    assert_eq!(e.cause(), "packet_too_large", "{e}");
    assert!(matches!(e, GdbError::PacketTooLarge { limit: MAX_PACKET_BODY }));
    drop(link);
    let sent = h.join().unwrap();
    // The peer got through at least the bound before the link gave up, and
    // the link did not keep reading for long after it (socket buffers only).
    assert!(sent >= MAX_PACKET_BODY as u64, "sent {sent}");
    assert!(sent < 64 * MAX_PACKET_BODY as u64, "sent {sent}");
}

#[test]
fn endless_garbage_between_packets_is_refused() {
    let (mut link, h) = endless_peer(b"", vec![b'x'; 4096]);
    let e = link.recv(Duration::from_secs(120), b"g").unwrap_err();
    assert_eq!(e.cause(), "garbage", "{e}");
    drop(link);
    h.join().unwrap();
}

#[test]
fn garbage_instead_of_an_ack_is_refused() {
    let (mut link, h) = endless_peer(b"", vec![b'x'; 4096]);
    link.acks = true;
    let e = link.send(b"g", Duration::from_secs(120)).unwrap_err();
    assert_eq!(e.cause(), "garbage", "{e}");
    drop(link);
    h.join().unwrap();
}

#[test]
fn a_large_packet_within_the_bound_is_accepted() {
    let body = vec![b'5'; MAX_PACKET_BODY];
    let framed = packet::frame(&body);
    let (a, mut b) = UnixStream::pair().unwrap();
    let h = std::thread::spawn(move || b.write_all(&framed).is_ok());
    let mut link = Link::new(Stream::Unix(a));
    link.acks = false;
    let p = link.recv(Duration::from_secs(60), b"m").unwrap();
    assert_eq!(p.len(), MAX_PACKET_BODY);
    assert!(h.join().unwrap());
}

#[test]
fn a_run_length_bomb_is_a_protocol_error() {
    // Each "0*~" pair expands to 98 bytes: a body under the wire bound that
    // claims more than the payload bound after expansion.
    let pairs = MAX_PACKET_PAYLOAD / 97 + 16;
    let mut body = Vec::with_capacity(pairs * 3);
    for _ in 0..pairs {
        body.extend_from_slice(b"0*~");
    }
    assert!(body.len() <= MAX_PACKET_BODY);
    let mut framed = vec![b'$'];
    framed.extend_from_slice(&body);
    framed.extend_from_slice(format!("#{:02x}", packet::checksum(&body)).as_bytes());
    let (a, mut b) = UnixStream::pair().unwrap();
    let h = std::thread::spawn(move || b.write_all(&framed).is_ok());
    let mut link = Link::new(Stream::Unix(a));
    link.acks = false;
    let e = link.recv(Duration::from_secs(60), b"m").unwrap_err();
    assert_eq!(e.cause(), "protocol", "{e}");
    assert!(h.join().unwrap());
}
