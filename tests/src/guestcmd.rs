//! The host side of the command protocol that the test initramfs's `/init`
//! serves on its command channel (see `images/initramfs/init`):
//!
//! ```text
//! host -> guest  VSPLCMD <id> <mode> <timeout_s> <base64 of the script>\n
//! guest -> host  VSPLBEGIN <id>\n<output bytes>\nVSPLEND <id> <status>\n
//! ```
//!
//! `mode` is `raw` (the output as it is) or `gz` (`gzip | base64` in the
//! guest). The guest says `VSPLREADY` once it takes commands and `VSPLERR
//! <why>` for a line it cannot parse. The reply parser here is incremental
//! (feed it whatever the socket returned) and byte-exact: the newline before
//! `VSPLEND` is the guest's, not the command's.

use std::io::Read;

/// How the guest sends a command's output back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Output bytes as they are.
    Raw,
    /// `gzip | base64` in the guest, decoded here (smaller on a slow UART).
    Gz,
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Gz => "gz",
        }
    }
}

/// The request line for one command (with its trailing newline).
pub fn encode_command(id: &str, mode: Mode, guest_timeout_s: u64, script: &str) -> String {
    format!("VSPLCMD {id} {} {guest_timeout_s} {}\n", mode.word(), base64_encode(script.as_bytes()))
}

/// Something the guest said on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `VSPLREADY`: the guest takes commands.
    Ready,
    /// A complete reply.
    Reply {
        /// The command id it answers.
        id: String,
        /// Output bytes (still gzip+base64 text for [`Mode::Gz`]).
        output: Vec<u8>,
        /// Exit status of the script.
        status: i32,
    },
    /// `VSPLERR ...`: the guest rejected a request line.
    GuestError(String),
    /// A line outside any reply that is none of the above.
    Noise(String),
    /// A reply whose end line is damaged.
    Malformed(String),
}

/// Incremental parser of the guest's side of the channel.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes not consumed yet.
    pending: Vec<u8>,
    /// Inside a reply: its id.
    current: Option<String>,
    /// Inside a reply: how far the end marker has been searched for.
    scanned: usize,
}

impl Parser {
    /// A parser outside any reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes more bytes and returns every event they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        loop {
            let progressed = match self.current.clone() {
                None => self.take_line(&mut events),
                Some(id) => self.take_reply(&id, &mut events),
            };
            if !progressed {
                return events;
            }
        }
    }

    /// True while a reply has started but not ended.
    pub fn in_reply(&self) -> bool {
        self.current.is_some()
    }

    fn take_line(&mut self, events: &mut Vec<Event>) -> bool {
        let Some(nl) = self.pending.iter().position(|&b| b == b'\n') else { return false };
        let line: Vec<u8> = self.pending.drain(..=nl).collect();
        let text = String::from_utf8_lossy(&line[..nl]).trim_end_matches('\r').to_string();
        if text == "VSPLREADY" {
            events.push(Event::Ready);
        } else if let Some(id) = text.strip_prefix("VSPLBEGIN ") {
            self.current = Some(id.to_string());
            self.scanned = 0;
        } else if let Some(why) = text.strip_prefix("VSPLERR ") {
            events.push(Event::GuestError(why.to_string()));
        } else if !text.is_empty() {
            events.push(Event::Noise(text));
        }
        true
    }

    fn take_reply(&mut self, id: &str, events: &mut Vec<Event>) -> bool {
        let marker = format!("\nVSPLEND {id} ");
        let m = marker.as_bytes();
        let from = self.scanned;
        let Some(rel) = find(&self.pending[from..], m) else {
            self.scanned = self.pending.len().saturating_sub(m.len() - 1);
            return false;
        };
        let at = from + rel;
        let tail = &self.pending[at + m.len()..];
        let Some(nl) = tail.iter().position(|&b| b == b'\n') else {
            self.scanned = at;
            return false;
        };
        let status_text = String::from_utf8_lossy(&tail[..nl]).trim_end_matches('\r').to_string();
        let consumed = at + m.len() + nl + 1;
        let output = self.pending[..at].to_vec();
        self.pending.drain(..consumed);
        self.current = None;
        self.scanned = 0;
        match status_text.parse::<i32>() {
            Ok(status) => events.push(Event::Reply { id: id.to_string(), output, status }),
            Err(_) => events.push(Event::Malformed(format!("VSPLEND {id} {status_text}"))),
        }
        true
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64, skipping whitespace; `None` on any other bad byte.
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits, mut pad) = (0u32, 0u32, 0usize);
    for &c in text {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                pad += 1;
                continue;
            }
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        if pad > 0 {
            return None;
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    (pad <= 2).then_some(out)
}

/// Output of a [`Mode::Gz`] reply back to the script's bytes.
pub fn decode_gz(text: &[u8]) -> Result<Vec<u8>, String> {
    let gz = base64_decode(text).ok_or("reply is not base64")?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut out).map_err(|e| format!("reply is not gzip: {e}"))?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn reply(id: &str, out: &[u8], st: i32) -> Event {
        Event::Reply { id: id.into(), output: out.to_vec(), status: st }
    }

    #[test]
    fn command_line_is_one_line_with_base64_script() {
        let l = encode_command("c7", Mode::Raw, 30, "echo 'a b'\nexit 3");
        assert_eq!(l, format!("VSPLCMD c7 raw 30 {}\n", base64_encode(b"echo 'a b'\nexit 3")));
        assert_eq!(l.matches('\n').count(), 1);
        assert!(encode_command("x", Mode::Gz, 0, "true").starts_with("VSPLCMD x gz 0 "));
    }

    #[test]
    fn ready_reply_and_noise() {
        let mut p = Parser::new();
        let ev = p.feed(b"\r\nboot junk\nVSPLREADY\nVSPLBEGIN c1\nhello\nworld\n\nVSPLEND c1 0\n");
        assert_eq!(ev, vec![Event::Noise("boot junk".into()), Event::Ready, reply("c1", b"hello\nworld\n", 0)]);
        assert!(!p.in_reply());
    }

    #[test]
    fn empty_output_and_unterminated_last_line() {
        let mut p = Parser::new();
        assert_eq!(p.feed(b"VSPLBEGIN a\n\nVSPLEND a 1\n"), vec![reply("a", b"", 1)]);
        assert_eq!(p.feed(b"VSPLBEGIN b\nno newline\nVSPLEND b 0\n"), vec![reply("b", b"no newline", 0)]);
    }

    #[test]
    fn byte_at_a_time_is_the_same_as_all_at_once() {
        let stream = b"VSPLREADY\nVSPLBEGIN c2\nline VSPLEND c1 0\n\nVSPLEND c2 17\nVSPLBEGIN c3\n\x00\xff\n\nVSPLEND c3 255\n";
        let whole = Parser::new().feed(stream);
        let mut p = Parser::new();
        let mut pieces = Vec::new();
        for b in stream {
            pieces.extend(p.feed(&[*b]));
        }
        assert_eq!(whole, pieces);
        assert_eq!(
            whole,
            vec![Event::Ready, reply("c2", b"line VSPLEND c1 0\n", 17), reply("c3", b"\x00\xff\n", 255)]
        );
    }

    #[test]
    fn markers_of_other_ids_and_lookalikes_stay_in_the_output() {
        let mut p = Parser::new();
        let ev = p.feed(b"VSPLBEGIN c10\nVSPLEND c1 0\n\nVSPLEND c100 0\nVSPLREADY\n\nVSPLEND c10 0\n");
        assert_eq!(ev, vec![reply("c10", b"VSPLEND c1 0\n\nVSPLEND c100 0\nVSPLREADY\n", 0)]);
    }

    #[test]
    fn errors_and_malformed_end() {
        let mut p = Parser::new();
        assert_eq!(p.feed(b"VSPLERR bad-base64 c4\n"), vec![Event::GuestError("bad-base64 c4".into())]);
        assert_eq!(p.feed(b"VSPLBEGIN c5\nx\nVSPLEND c5 \n"), vec![Event::Malformed("VSPLEND c5 ".into())]);
        assert!(!p.in_reply());
    }

    #[test]
    fn partial_reply_waits_for_the_end_line() {
        let mut p = Parser::new();
        assert!(p.feed(b"VSPLBEGIN c6\nabc\nVSPLEND c6 4").is_empty());
        assert!(p.in_reply());
        assert_eq!(p.feed(b"2\r\n"), vec![reply("c6", b"abc", 42)]);
    }

    #[test]
    fn big_reply_in_chunks() {
        let body: Vec<u8> = (0..200_000u32).flat_map(|i| format!("{i:016x} T sym_{i}\n").into_bytes()).collect();
        let mut stream = b"VSPLBEGIN big\n".to_vec();
        stream.extend_from_slice(&body);
        stream.extend_from_slice(b"\nVSPLEND big 0\n");
        let mut p = Parser::new();
        let mut ev = Vec::new();
        for c in stream.chunks(4093) {
            ev.extend(p.feed(c));
        }
        assert_eq!(ev, vec![Event::Reply { id: "big".into(), output: body, status: 0 }]);
    }

    #[test]
    fn base64_round_trips_and_matches_known_vectors() {
        for (plain, enc) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc.as_bytes()).unwrap(), plain.as_bytes());
        }
        let all: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut wrapped = base64_encode(&all).into_bytes();
        wrapped.insert(76, b'\n');
        assert_eq!(base64_decode(&wrapped).unwrap(), all);
        assert!(base64_decode(b"Zm9v!").is_none());
        assert!(base64_decode(b"Zg==Zg").is_none());
    }

    #[test]
    fn gz_replies_decode() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"hello gz\n").unwrap();
        let text = base64_encode(&enc.finish().unwrap());
        assert_eq!(decode_gz(text.as_bytes()).unwrap(), b"hello gz\n");
        assert!(decode_gz(b"aGVsbG8=").is_err());
    }
}
