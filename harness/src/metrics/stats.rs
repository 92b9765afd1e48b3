//! The harness's one statistics helper: mean and sample standard deviation
//! of repeated measurements (every report's "mean ± sd (n = …)"), and their
//! median (what the regression gate reads: one disturbed repeat of three
//! does not move it).

/// Mean, sample standard deviation and median of `n` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Spread {
    pub(crate) mean: f64,
    pub(crate) sd: f64,
    pub(crate) n: usize,
    /// The middle value (the mean of the two middle ones for even `n`).
    #[serde(default)]
    pub(crate) median: f64,
}

impl Spread {
    /// Of `xs`: mean, and standard deviation with Bessel's correction (0
    /// for fewer than two values; all zero for none).
    pub(crate) fn of(xs: &[f64]) -> Spread {
        let n = xs.len();
        if n == 0 {
            return Spread::default();
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let mut sorted = xs.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Spread {
            mean,
            sd,
            n,
            median,
        }
    }
}

/// The mean of `xs` (0 for none).
pub(crate) fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    Spread::of(&v).mean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_mean_and_sample_sd() {
        let s = Spread::of(&[1.0, 2.0, 3.0]);
        assert!((s.mean - 2.0).abs() < 1e-12 && (s.sd - 1.0).abs() < 1e-12 && s.n == 3);
        assert_eq!(Spread::of(&[]), Spread::default());
        assert_eq!(Spread::of(&[4.0]).sd, 0.0);
        assert!((mean([1.0, 2.0].into_iter()) - 1.5).abs() < 1e-12);
        // One outlier of three moves the mean, not the median.
        assert_eq!(Spread::of(&[1.1, 2.9, 1.0]).median, 1.1);
        assert_eq!(Spread::of(&[1.0, 3.0]).median, 2.0);
    }
}
