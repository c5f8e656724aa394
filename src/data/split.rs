//! Dividing a [`Dataset`] into two: a seeded random split ([`Dataset::split`]) and Keras'
//! `validation_split` ([`Dataset::split_tail`], the last rows, before any shuffling). It does
//! not own shuffling for batches or k-fold cross-validation.
//!
//! Side sizes are `round(len * fraction)` (computed in `f64`, halves rounded away from zero);
//! a fraction outside [0, 1), or one that leaves either side empty, is a configuration error.

use super::Dataset;
use crate::rng::Rng;
use crate::{Error, Result};

impl Dataset {
    /// A seeded random split into `(train, test)`: the rows are permuted with
    /// [`Rng::permutation`] seeded by `seed`, the first `round(len * test_fraction)` of them
    /// form the test set and the rest the training set, each kept in original row order. So
    /// the result depends only on the data, the fraction and the seed.
    pub fn split(&self, test_fraction: f32, seed: u64) -> Result<(Dataset, Dataset)> {
        let n_test = self.side_size(test_fraction, "test_fraction")?;
        if u32::try_from(self.len()).is_err() {
            return Err(Error::Config(format!(
                "dataset '{}' has {} rows, too many to split (at most {})",
                self.name,
                self.len(),
                u32::MAX
            )));
        }
        let perm = Rng::new(seed).permutation(self.len());
        let sorted = |part: &[u32]| {
            let mut idx: Vec<usize> = part.iter().map(|&i| i as usize).collect();
            idx.sort_unstable();
            idx
        };
        let test = self.select(&sorted(&perm[..n_test]));
        let train = self.select(&sorted(&perm[n_test..]));
        Ok((train, test))
    }

    /// Keras' `validation_split`: `(train, validation)` where validation is the last
    /// `round(len * fraction)` rows, in order, and train the rows before them.
    pub fn split_tail(&self, fraction: f32) -> Result<(Dataset, Dataset)> {
        let n_tail = self.side_size(fraction, "validation fraction")?;
        let cut = self.len() - n_tail;
        let train: Vec<usize> = (0..cut).collect();
        let tail: Vec<usize> = (cut..self.len()).collect();
        Ok((self.select(&train), self.select(&tail)))
    }

    /// `round(len * fraction)`, checked to leave both sides non-empty.
    fn side_size(&self, fraction: f32, what: &str) -> Result<usize> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(Error::Config(format!(
                "{what} must be in [0, 1), got {fraction}"
            )));
        }
        let len = self.len();
        let n = (len as f64 * f64::from(fraction)).round() as usize;
        if n == 0 || n >= len {
            return Err(Error::Config(format!(
                "{what} {fraction} of {len} rows of '{}' leaves {} rows on one side and {} on the other; both sides need at least one",
                self.name,
                n.min(len),
                len - n.min(len)
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use crate::data::{Dataset, Targets};
    use crate::Error;

    /// Row i has feature i and label i % 4.
    fn counting(len: usize) -> Dataset {
        Dataset {
            name: "count".into(),
            features: (0..len).map(|i| i as f32).collect(),
            width: 1,
            targets: Targets::Classes {
                labels: (0..len).map(|i| (i % 4) as u32).collect(),
                classes: 4,
            },
        }
    }

    #[test]
    fn split_sizes_order_and_determinism() {
        let ds = counting(100);
        let (train, test) = ds.split(0.2, 5).expect("split");
        assert_eq!((train.len(), test.len()), (80, 20));
        // Each side is in original order, and together they are every row once.
        for side in [&train, &test] {
            assert!(side.features.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(side.targets.classes(), Some(4));
            for (i, &f) in side.features.iter().enumerate() {
                assert_eq!(side.labels().expect("labels")[i], f as u32 % 4);
            }
        }
        let mut all: Vec<f32> = train
            .features
            .iter()
            .chain(&test.features)
            .copied()
            .collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, ds.features);
        // Same seed, same split; another seed, another split.
        assert_eq!(ds.split(0.2, 5).expect("again"), (train, test.clone()));
        assert_ne!(ds.split(0.2, 6).expect("other").1, test);
        // Rounding: 1797 * 0.2 = 359.4 -> 359; 10 * 0.25 = 2.5 -> 3.
        let digits = crate::data::bundled("digits").expect("digits");
        assert_eq!(digits.split(0.2, 0).expect("digits").1.len(), 359);
        assert_eq!(counting(10).split(0.25, 0).expect("half").1.len(), 3);
    }

    #[test]
    fn split_tail_takes_the_last_rows() {
        let ds = counting(10);
        let (train, val) = ds.split_tail(0.3).expect("tail");
        assert_eq!(train.features, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(val.features, vec![7.0, 8.0, 9.0]);
        assert_eq!(val.labels(), Some(&[3u32, 0, 1][..]));
    }

    #[test]
    fn bad_fractions_are_config_errors() {
        let ds = counting(10);
        for f in [-0.1, 1.0, 1.5, f32::NAN, 0.0, 0.01, 0.97] {
            assert!(matches!(ds.split(f, 1), Err(Error::Config(_))), "{f}");
            assert!(matches!(ds.split_tail(f), Err(Error::Config(_))), "{f}");
        }
        assert!(matches!(counting(1).split(0.5, 1), Err(Error::Config(_))));
        assert!(matches!(counting(0).split_tail(0.5), Err(Error::Config(_))));
    }
}
