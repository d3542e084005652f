//! Seeds and random streams, bit-identical with every other pipehost SDK
//! (docs/seeds.md; pinned by testdata/seeds.json).
//!
//! A stage gets its 64-bit seed from [`RunContext::seed`](crate::RunContext::seed);
//! `Stream::new(ctx.seed())` is its stream, and `fork(i)` / `child(label)`
//! give independent sub-streams that do not depend on how much the parent has
//! drawn, so results are the same with one worker or many.

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
#[inline]
pub fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Vigna's SplitMix64 generator; the seed is the initial state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Advances the state and returns the next output.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix64(self.0)
    }
}

/// The 64-bit FNV-1a hash of a name's bytes, taken as given.
pub fn fnv1a64(name: impl AsRef<[u8]>) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in name.as_ref() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The one way a sub-seed is made: `mix64((mix64(key + GAMMA) ^ word) + GAMMA)`.
#[inline]
pub fn derive(key: u64, word: u64) -> u64 {
    mix64((mix64(key.wrapping_add(GAMMA)) ^ word).wrapping_add(GAMMA))
}

/// The seed of stage instance `name` in a run with seed `run_seed` (the host
/// computes it; a stage only ever sees the result).
pub fn stage_seed(run_seed: u64, name: &str) -> u64 {
    derive(run_seed, fnv1a64(name))
}

/// A random stream: a key (for forks) and a SplitMix64 state (for draws).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream {
    key: u64,
    state: u64,
}

impl Stream {
    /// The stream of a seed: key and state both start at `seed`.
    pub fn new(seed: u64) -> Stream {
        Stream {
            key: seed,
            state: seed,
        }
    }

    /// `Stream::new(stage_seed(run_seed, name))`.
    pub fn for_stage(run_seed: u64, name: &str) -> Stream {
        Stream::new(stage_seed(run_seed, name))
    }

    /// The seed the stream was made from.
    pub fn seed(&self) -> u64 {
        self.key
    }

    /// The next SplitMix64 output.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// A float in [0, 1): the top 53 bits of a draw times 2^-53 (exact).
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in [0, n), by rejection of the draws below 2^64 mod n.
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n != 0, "seed: Stream::below called with n == 0");
        let floor = n.wrapping_neg() % n;
        loop {
            let x = self.next_u64();
            if x >= floor {
                return x % n;
            }
        }
    }

    /// Sub-stream `i` (a tile, a row, an iteration). Reads only the key.
    pub fn fork(&self, i: u64) -> Stream {
        Stream::new(derive(self.key, i))
    }

    /// The sub-stream named `label`: `fork(fnv1a64(label))`.
    pub fn child(&self, label: &str) -> Stream {
        self.fork(fnv1a64(label))
    }
}
