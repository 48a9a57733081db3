//! A Zipf sampler over `0..n`: rank `k` (0-based) is drawn with probability ∝ 1 / (k + 1)^s.
//! The `mixed` scenario uses it so a few practitioners get most requests, as at a real peak.

/// Precomputed cumulative weights; sampling is one uniform draw and a binary search.
#[derive(Clone, Debug)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    /// A sampler over `n` ranks (at least 1) with exponent `s`.
    pub fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (0..n.max(1))
            .map(|k| {
                total += 1.0 / ((k + 1) as f64).powf(s);
                total
            })
            .collect();
        Self { cumulative }
    }

    /// A rank for the uniform number `u` in `[0, 1)`.
    pub fn rank(&self, u: f64) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let target = u.clamp(0.0, 1.0) * total;
        self.cumulative
            .partition_point(|c| *c <= target)
            .min(self.cumulative.len() - 1)
    }

    /// A rank drawn from `rng`.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        self.rank(rng.f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_rank_is_the_most_popular_and_ranks_stay_in_range() {
        let z = Zipf::new(100, 1.0);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = vec![0u32; 100];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        // H(100) ≈ 5.19, so rank 0 gets ≈ 19 % and rank 9 ≈ 1.9 %.
        assert!((17_000..21_000).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[0] > counts[9] * 5);
        assert_eq!(z.rank(0.0), 0);
        assert_eq!(z.rank(0.999_999_9), 99);
        assert_eq!(Zipf::new(0, 1.0).rank(0.5), 0);
    }
}
