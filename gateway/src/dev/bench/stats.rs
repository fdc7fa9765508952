//! Percentiles over a step's samples, where a sample may be missing (a barge-in that never got
//! its `clear`, a turn that was never answered) and then counts as worse than any value.

use serde::Serialize;

/// Samples of one quantity (ms), some of them missing ("infinitely late").
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: Vec<f64>,
    missing: usize,
}

impl Samples {
    /// Adds a value.
    pub fn push(&mut self, v: f64) {
        self.values.push(v);
    }

    /// Adds a missing sample (worse than any value).
    pub fn push_missing(&mut self) {
        self.missing += 1;
    }

    /// Number of samples, missing ones included.
    pub fn len(&self) -> usize {
        self.values.len() + self.missing
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Summary: nearest-rank percentiles, where a rank that falls among the missing samples
    /// gives `None`.
    pub fn summary(&mut self) -> Summary {
        self.values.sort_by(f64::total_cmp);
        let n = self.len();
        let pct = |p: f64| -> Option<f64> {
            if n == 0 {
                return None;
            }
            let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
            self.values.get(rank - 1).copied()
        };
        Summary {
            n,
            missing: self.missing,
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: if self.missing > 0 {
                None
            } else {
                self.values.last().copied()
            },
            mean: (!self.values.is_empty())
                .then(|| self.values.iter().sum::<f64>() / self.values.len() as f64),
        }
    }

    /// The empirical CDF of the values at 101 points (the 0th, 1st, …, 100th percentile of the
    /// present values; empty when there are none), for plots.
    pub fn cdf_points(&mut self) -> Vec<f64> {
        self.values.sort_by(f64::total_cmp);
        if self.values.is_empty() {
            return Vec::new();
        }
        let n = self.values.len();
        (0..=100)
            .map(|p| {
                let rank = ((p as f64 / 100.0) * n as f64).ceil().max(1.0) as usize;
                self.values[rank.min(n) - 1]
            })
            .collect()
    }
}

/// Percentiles of one quantity over a step, ms. `None` where the percentile falls among
/// missing samples (or there are none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Samples, missing ones included.
    pub n: usize,
    /// Missing samples (counted as worse than any value).
    pub missing: usize,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest (None if any is missing).
    pub max: Option<f64>,
    /// Mean of the values present.
    pub mean: Option<f64>,
}

impl Summary {
    /// `p50/p99` for a table cell: `-` when there are no samples, `∞` for a missing rank.
    pub fn cell(&self) -> String {
        if self.n == 0 {
            return "-".into();
        }
        let f = |v: Option<f64>| v.map_or_else(|| "∞".to_string(), |v| format!("{v:.0}"));
        format!("{}/{}", f(self.p50), f(self.p99))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_with_missing_samples() {
        let mut s = Samples::default();
        for v in 1..=99 {
            s.push(v as f64);
        }
        let a = s.summary();
        assert_eq!((a.p50, a.p99, a.max), (Some(50.0), Some(99.0), Some(99.0)));
        s.push_missing();
        let b = s.summary();
        assert_eq!(
            (b.n, b.p50, b.p99, b.max),
            (100, Some(50.0), Some(99.0), None)
        );
        s.push_missing();
        assert_eq!(s.summary().p99, None);
        assert_eq!(s.summary().cell(), "51/∞");
        assert_eq!(Samples::default().summary().cell(), "-");
        let cdf = s.cdf_points();
        assert_eq!((cdf.len(), cdf[0], cdf[100]), (101, 1.0, 99.0));
    }
}
