//! The crate's one seeded random number generator: a portable ChaCha8 stream with exact
//! uniform floats, unbiased integer draws, shuffles, and save/restore of its position so a
//! resumed run continues the very same stream. It does not own any distribution that needs
//! transcendental functions (normal, etc.), because those are not bit-exact across machines.
//!
//! Every value drawn here depends only on the seed and the number of draws made before it:
//! ChaCha8 is specified bit for bit, floats are built from integer bits without rounding, and
//! bounded integers use rejection sampling, so two machines with the same seed agree exactly.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// 2^-24: turns a 24-bit integer into a float in [0, 1) exactly.
const TWO_POW_MINUS_24: f32 = 1.0 / 16_777_216.0;

/// A seeded, portable random number generator (ChaCha8, seeded with `seed_from_u64`).
#[derive(Clone, Debug)]
pub struct Rng {
    seed: u64,
    inner: ChaCha8Rng,
}

/// Where an [`Rng`] stands in its stream: enough to rebuild it exactly with
/// [`Rng::from_state`]. `word_pos` counts the 32-bit words drawn since the start; it is
/// serialized as a decimal string because many formats cannot hold a `u128`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RngState {
    /// The seed given to [`Rng::new`].
    pub seed: u64,
    /// Offset from the start of the stream, in 32-bit words.
    #[serde(with = "u128_as_string")]
    pub word_pos: u128,
}

impl Rng {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng {
            seed,
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The seed this generator was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        self.inner.next_u32()
    }

    /// A float in [0, 1): the top 24 bits of [`Rng::next_u32`] times 2^-24. Exact, so the
    /// same on every machine; every value is a multiple of 2^-24.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * TWO_POW_MINUS_24
    }

    /// `lo + (hi - lo) * uniform()`: a float in [lo, hi) (up to rounding at `hi`).
    pub fn uniform_range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// An integer uniform in `0..n`, without modulo bias (draws that fall in the
    /// incomplete top block of `2^32` are rejected and redrawn). Returns 0 when `n` is 0 or 1
    /// (and then draws nothing).
    pub fn below(&mut self, n: u32) -> u32 {
        if n <= 1 {
            return 0;
        }
        // 2^32 mod n: the draws below this are the incomplete block; rejecting them leaves
        // 2^32 - (2^32 mod n) values, an exact multiple of n.
        let threshold = n.wrapping_neg() % n;
        loop {
            let x = self.next_u32();
            if x >= threshold {
                return x % n;
            }
        }
    }

    /// Like [`Rng::below`] for a `usize` bound; bounds that fit in a `u32` draw exactly as
    /// `below` does, larger ones use two words per draw.
    fn below_usize(&mut self, n: usize) -> usize {
        if let Ok(small) = u32::try_from(n) {
            return self.below(small) as usize;
        }
        let n = n as u64;
        let threshold = n.wrapping_neg() % n;
        loop {
            let x = (u64::from(self.next_u32()) << 32) | u64::from(self.next_u32());
            if x >= threshold {
                return (x % n) as usize;
            }
        }
    }

    /// Shuffles `items` in place (Fisher-Yates, from the back, with [`Rng::below`]).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below_usize(i + 1);
            items.swap(i, j);
        }
    }

    /// A random permutation of `0..n` (the identity shuffled with [`Rng::shuffle`]).
    /// `n` above `u32::MAX` is clamped to `u32::MAX + 1` values.
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        let n = n.min(u32::MAX as usize + 1);
        let mut perm: Vec<u32> = (0..n).map(|i| i as u32).collect();
        self.shuffle(&mut perm);
        perm
    }

    /// The current position, for [`Rng::from_state`].
    pub fn state(&self) -> RngState {
        RngState {
            seed: self.seed,
            word_pos: self.inner.get_word_pos(),
        }
    }

    /// Rebuilds a generator at a saved position: it continues exactly where the saved one was.
    pub fn from_state(state: RngState) -> Self {
        let mut rng = Rng::new(state.seed);
        rng.inner.set_word_pos(state.word_pos);
        rng
    }
}

/// Serde adapter: a `u128` as a decimal string.
mod u128_as_string {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|e| D::Error::custom(format!("word_pos '{text}' is not a u128: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let mut c = Rng::new(43);
        let xa: Vec<u32> = (0..100).map(|_| a.next_u32()).collect();
        let xb: Vec<u32> = (0..100).map(|_| b.next_u32()).collect();
        let xc: Vec<u32> = (0..100).map(|_| c.next_u32()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
        assert_eq!(a.seed(), 42);
    }

    #[test]
    fn uniform_is_exact_top_24_bits() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            let u = a.uniform();
            let bits = b.next_u32() >> 8;
            assert!((0.0..1.0).contains(&u));
            assert_eq!(u, bits as f32 / 16_777_216.0);
        }
        let mut r = Rng::new(8);
        for _ in 0..1000 {
            let x = r.uniform_range(-2.0, 3.0);
            assert!((-2.0..3.0).contains(&x), "{x}");
        }
    }

    #[test]
    fn below_stays_in_range_and_hits_every_value() {
        let mut r = Rng::new(1);
        for n in [1u32, 2, 3, 7, 10, 1000, u32::MAX] {
            for _ in 0..500 {
                assert!(r.below(n) < n);
            }
        }
        assert_eq!(r.below(0), 0);
        let mut seen = [0usize; 6];
        for _ in 0..6000 {
            seen[r.below(6) as usize] += 1;
        }
        // Each bucket expects 1000; 800..1200 is more than 6 standard deviations wide.
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }

    #[test]
    fn shuffle_and_permutation_are_permutations() {
        let mut r = Rng::new(3);
        let mut items: Vec<usize> = (0..257).collect();
        r.shuffle(&mut items);
        assert_ne!(items, (0..257).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..257).collect::<Vec<_>>());

        let mut p = r.permutation(1000);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<u32>>());
        assert!(r.permutation(0).is_empty());
        assert_eq!(r.permutation(1), vec![0]);
        // Deterministic for a seed.
        assert_eq!(Rng::new(9).permutation(50), Rng::new(9).permutation(50));
    }

    #[test]
    fn state_round_trip_continues_the_same_stream() {
        for skip in [0usize, 1, 5, 16, 17, 63, 64, 65, 1000] {
            let mut a = Rng::new(11);
            for _ in 0..skip {
                a.next_u32();
            }
            let state = a.state();
            assert_eq!(state.word_pos, skip as u128);
            let json = serde_json::to_string(&state).expect("serialize");
            let back: RngState = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, state);
            let mut b = Rng::from_state(back);
            let xa: Vec<u32> = (0..100).map(|_| a.next_u32()).collect();
            let xb: Vec<u32> = (0..100).map(|_| b.next_u32()).collect();
            assert_eq!(xa, xb, "after {skip} draws");
            assert_eq!(a.state(), b.state());
        }
        assert!(serde_json::from_str::<RngState>(r#"{"seed":1,"word_pos":"x"}"#).is_err());
    }
}
