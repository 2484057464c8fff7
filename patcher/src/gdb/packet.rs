//! GDB remote serial protocol framing: `$payload#cs`, checksums, binary
//! escaping (`}` + byte ^ 0x20) and run-length decoding (`X*n`).
//!
//! Pure functions over byte slices; the socket side lives in `link.rs`.

/// Characters that must be escaped inside a packet body.
const MUST_ESCAPE: [u8; 4] = [b'#', b'$', b'}', b'*'];

/// Modulo-256 sum of the bytes as they travel on the wire.
pub fn checksum(wire_body: &[u8]) -> u8 {
    wire_body.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// Escape a payload for the wire (binary-safe).
pub fn escape(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 16 + 4);
    for &b in payload {
        if MUST_ESCAPE.contains(&b) {
            out.push(b'}');
            out.push(b ^ 0x20);
        } else {
            out.push(b);
        }
    }
    out
}

/// Undo [`escape`]. A trailing lone `}` is an error.
pub fn unescape(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let mut it = body.iter();
    while let Some(&b) = it.next() {
        if b == b'}' {
            out.push(it.next()? ^ 0x20);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// Expand run-length encoding: `c*n` means `c` followed by `n - 29` more
/// copies of `c`. Escapes (`}x`) are left in place for [`unescape`].
/// `None` when the encoding is malformed or the expansion exceeds `max` bytes.
pub fn rle_decode(body: &[u8], max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len().min(max));
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == b'*' {
            let n = *body.get(i + 1)?;
            let count = (n as usize).checked_sub(29)?;
            let prev = *out.last()?;
            if out.len().saturating_add(count) > max {
                return None;
            }
            out.extend(std::iter::repeat_n(prev, count));
            i += 2;
        } else {
            if out.len() >= max {
                return None;
            }
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

/// Frame a payload: `$` + escaped payload + `#` + two hex checksum digits.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let body = escape(payload);
    let cs = checksum(&body);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(b'$');
    out.extend_from_slice(&body);
    out.push(b'#');
    out.extend_from_slice(format!("{cs:02x}").as_bytes());
    out
}

/// Lower-case hex of bytes.
pub fn to_hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(data.len() * 2);
    for &b in data {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decode hex digits into `out`; `None` on odd length or a bad digit.
pub fn from_hex_into(hex: &[u8], out: &mut [u8]) -> Option<()> {
    if hex.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(())
}

/// Decode hex digits into a new vector.
pub fn from_hex(hex: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; hex.len() / 2];
    from_hex_into(hex, &mut out)?;
    Some(out)
}

/// Parse a hex number (as in `PacketSize=1000` or thread ids).
pub fn parse_hex_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &c| Some((acc << 4) | u64::from(hex_val(c)?)))
}

/// Parse the two checksum digits after `#`.
pub fn parse_checksum(d: [u8; 2]) -> Option<u8> {
    Some((hex_val(d[0])? << 4) | hex_val(d[1])?)
}

/// True for an error reply `Exx` (or `E.message`).
pub fn is_error_reply(reply: &[u8]) -> bool {
    reply.len() >= 3 && reply[0] == b'E' && (reply[1..3].iter().all(|c| c.is_ascii_hexdigit()) || reply[1] == b'.')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_checksum() {
        assert_eq!(frame(b"OK"), b"$OK#9a".to_vec());
        assert_eq!(frame(b""), b"$#00".to_vec());
        assert_eq!(frame(b"qSupported"), b"$qSupported#37".to_vec());
    }

    #[test]
    fn escaping_roundtrip() {
        let data: Vec<u8> = (0..=255u8).collect();
        let esc = escape(&data);
        assert!(!esc.contains(&b'#') && !esc.contains(&b'$') && !esc.contains(&b'*'));
        assert_eq!(unescape(&esc).unwrap(), data);
        assert_eq!(escape(b"a#b"), b"a}\x03b".to_vec());
        assert!(unescape(b"ab}").is_none());
    }

    #[test]
    fn rle() {
        // "0* " is '0' plus (32 - 29) = 3 more copies.
        assert_eq!(rle_decode(b"0* ", 64).unwrap(), b"0000".to_vec());
        // '"' is 34: five more copies of 'b'.
        assert_eq!(rle_decode(b"ab*\"c", 64).unwrap(), b"abbbbbbc".to_vec());
        assert!(rle_decode(b"*a", 64).is_none());
        assert!(rle_decode(b"a*", 64).is_none());
        // An expansion over the bound is refused, one at the bound is not.
        assert_eq!(rle_decode(b"0* ", 4).unwrap(), b"0000".to_vec());
        assert!(rle_decode(b"0* ", 3).is_none());
        assert!(rle_decode(b"abcd", 3).is_none());
    }

    #[test]
    fn hex() {
        assert_eq!(to_hex(&[0x01, 0xab]), "01ab");
        assert_eq!(from_hex(b"01AB").unwrap(), vec![1, 0xab]);
        assert!(from_hex(b"0g").is_none());
        assert_eq!(parse_hex_u64(b"1000"), Some(0x1000));
        assert!(is_error_reply(b"E14"));
        assert!(!is_error_reply(b"E"));
    }
}
