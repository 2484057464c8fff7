//! A seeded PRNG and havoc-style mutations of byte strings.

/// xorshift64*: small, fast, and the same sequence for the same seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is remapped: xorshift would stay at 0).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`n` > 0; 0 gives 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Values that hit boundaries: lengths, counts, signs, alignment.
const INTERESTING: [u64; 16] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0xffff_ffff_8000_0000,
    u64::MAX,
];

fn put_int(data: &mut [u8], at: usize, v: u64, width: usize, big_endian: bool) {
    let bytes = if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
    let src = if big_endian { &bytes[8 - width..] } else { &bytes[..width] };
    if let Some(dst) = data.get_mut(at..at + width) {
        dst.copy_from_slice(src);
    }
}

/// One mutation of `data` in place; `other` is another corpus input for
/// splicing; the result is cut to `max_len`.
pub fn mutate_once(data: &mut Vec<u8>, other: &[u8], rng: &mut Rng, max_len: usize) {
    let len = data.len();
    match rng.below(12) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next_u64() as u8;
        }
        2 | 3 if len > 0 => {
            let width = [1, 2, 4, 8][rng.below(4)];
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let v = if rng.one_in(4) { v.wrapping_neg() } else { v };
            let at = rng.below(len);
            put_int(data, at, v, width, rng.one_in(4));
        }
        4 if len > 0 => {
            // Small arithmetic on a little-endian u32 (lengths, counts).
            let at = rng.below(len);
            if let Some(b) = data.get(at..at + 4) {
                let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let d = (rng.below(64) as u32).wrapping_sub(32);
                put_int(data, at, u64::from(v.wrapping_add(d)), 4, false);
            }
        }
        5 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, bytes);
        }
        6 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(256);
            let b = rng.next_u64() as u8;
            data.splice(at..at, std::iter::repeat_n(b, n));
        }
        7 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(512));
            data.drain(at..at + n);
        }
        8 if len > 1 => {
            // Copy a chunk over another place.
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(256));
            let chunk = data[from..from + n].to_vec();
            let to = rng.below(len);
            let end = (to + n).min(len);
            data[to..end].copy_from_slice(&chunk[..end - to]);
        }
        9 if !other.is_empty() => {
            // Splice: our prefix, the other's suffix.
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        10 if len > 0 => data.truncate(rng.below(len)),
        _ => {
            if len > 0 {
                let i = rng.below(len);
                data[i] = data[i].wrapping_add(1);
            } else {
                data.push(rng.next_u64() as u8);
            }
        }
    }
    data.truncate(max_len);
}

/// A havoc round: 1 to 8 stacked mutations.
pub fn havoc(data: &mut Vec<u8>, other: &[u8], rng: &mut Rng, max_len: usize) {
    let n = 1 + rng.below(8);
    for _ in 0..n {
        mutate_once(data, other, rng, max_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_mutations() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut d = b"vsplice patch file".to_vec();
            for _ in 0..200 {
                havoc(&mut d, b"other input", &mut rng, 4096);
            }
            d
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn mutations_respect_the_length_bound() {
        let mut rng = Rng::new(1);
        let mut d = vec![0u8; 100];
        for _ in 0..10_000 {
            havoc(&mut d, &[1u8; 300], &mut rng, 128);
            assert!(d.len() <= 128);
        }
    }
}
