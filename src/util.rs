//! Small helpers every part of the crate uses: the content hasher behind cache keys, journal
//! keys and memo keys, and the first line of a (libtorch) error message.

/// A fast 64-bit hash over words (not cryptographic: it names cache entries, it does not
/// defend against forgery).
pub struct Hasher(u64);

impl Hasher {
    pub fn new() -> Self {
        Hasher(0xcbf2_9ce4_8422_2325)
    }
    pub fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(0x1000_0000_01b3).rotate_left(29) ^ (w >> 17);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        for c in b.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
    }
    pub fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^ (z >> 33)
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

/// The first line of a message (libtorch appends a C++ backtrace to its errors).
pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
