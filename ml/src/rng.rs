//! A small, stable, seedable generator (SplitMix64).
//!
//! Manta promises that a seed fixes the data split, every epoch's shuffle and
//! the initial parameters. Owning the generator keeps that promise across
//! dependency upgrades (a `rand` release may change its streams).

/// SplitMix64 (Steele, Lea and Flood, 2014): 64 bits of state, passes
/// BigCrush, and any seed (including 0) is fine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for one purpose (`stream`) under `seed`, independent of
    /// the generators of other streams.
    pub fn derive(seed: u64, stream: &[u64]) -> Self {
        let mut g = Self(seed ^ 0x6a09_e667_f3bc_c908);
        for s in stream {
            let x = g.next_u64() ^ s.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            g = Self(x);
        }
        g
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        // Lemire's multiply-shift with rejection.
        loop {
            let x = self.next_u64();
            let m = (x as u128) * (n as u128);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_streams_differ() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut g = SplitMix64::derive(7, &[1, 2]);
                move |_| g.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut g = SplitMix64::derive(7, &[1, 2]);
                move |_| g.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..4)
            .map({
                let mut g = SplitMix64::derive(7, &[1, 3]);
                move |_| g.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn shuffle_is_a_permutation_and_below_is_in_range() {
        let mut g = SplitMix64::new(0);
        let mut v: Vec<u32> = (0..100).collect();
        g.shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        for n in 1..50 {
            assert!(g.below(n) < n);
        }
        let u = g.unit_f32();
        assert!((0.0..1.0).contains(&u));
    }
}
