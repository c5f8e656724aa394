//! Dividing a [`Dataset`] into two: a seeded split, stratified by class for classification
//! ([`Dataset::split`], used for test and validation sets), and Keras' `validation_split`
//! ([`Dataset::split_tail`], the last rows, for data whose row order matters). It does not
//! own shuffling for batches or k-fold cross-validation.
//!
//! The held-out side has `round(len * fraction)` rows (computed in `f64`, halves rounded away
//! from zero); a fraction outside [0, 1), or one that leaves either side empty, is a
//! configuration error.
//!
//! # The stratified split
//! As scikit-learn's `train_test_split(stratify=labels)`, so that the result does not depend
//! on the order of the file (bundled iris and wine are sorted by class):
//! 1. Each class `c` with `m_c` rows has the exact share `q_c = m_c * n / len` of the `n`
//!    held-out rows. It gets `floor(q_c)` rows, and the `n - sum(floor(q_c))` rows left over
//!    go one each to classes with a fractional part, so that every class holds `floor(q_c)` or
//!    `ceil(q_c)`: within one row of its exact share. The shares are computed in integers
//!    (`m_c * n` divided by `len`), so the rounding is exact.
//! 2. The leftover rows go first to classes of two or more rows that would otherwise have no
//!    held-out row, then to the others, and last to classes of two or more rows that would
//!    otherwise keep no row on the other side; within each group to the larger fractional
//!    part, then to the smaller label. So every class of two or more rows appears on both
//!    sides whenever rounding each share up or down allows it (always when each share is at
//!    least one row on each side).
//! 3. The rows are permuted with [`Rng::permutation`] seeded by `seed`, and each class holds
//!    out its first rows in that order, as many as its share.
//!
//! Regression data is split without strata: the first `n` rows of the same permutation are
//! held out. Both sides keep the original row order, so a split depends only on the data,
//! the fraction and the seed.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::{Dataset, Targets};
use crate::rng::Rng;
use crate::{Error, Result};

impl Dataset {
    /// A seeded split into `(train, test)` (or `(train, validation)`): stratified by class
    /// for classification, a seeded random split for regression (see the [module
    /// docs](self) for the algorithm). The held-out side has `round(len * test_fraction)`
    /// rows; each side keeps the original row order.
    pub fn split(&self, test_fraction: f32, seed: u64) -> Result<(Dataset, Dataset)> {
        let (train, test) = self.split_indices(test_fraction, seed)?;
        Ok((self.select(&train), self.select(&test)))
    }

    /// The row indices of [`Dataset::split`]: `(train, test)`, each ascending, together every
    /// row once.
    pub fn split_indices(&self, test_fraction: f32, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
        let n_test = self.side_size(test_fraction, "split fraction")?;
        if u32::try_from(self.len()).is_err() {
            return Err(Error::Config(format!(
                "dataset '{}' has {} rows, too many to split (at most {})",
                self.name,
                self.len(),
                u32::MAX
            )));
        }
        // One permutation for every task: regression holds out its first `n_test` rows,
        // classification each class's first rows in its order, as many as the class's quota.
        let perm = Rng::new(seed).permutation(self.len());
        let (mut train, mut test) = (Vec::new(), Vec::new());
        match &self.targets {
            Targets::Values { .. } => {
                for (k, &row) in perm.iter().enumerate() {
                    let side = if k < n_test { &mut test } else { &mut train };
                    side.push(row as usize);
                }
            }
            Targets::Classes { labels, .. } => {
                // Classes in label order, with their row counts.
                let mut strata: BTreeMap<u32, usize> = BTreeMap::new();
                for &label in labels {
                    *strata.entry(label).or_default() += 1;
                }
                let counts: Vec<usize> = strata.values().copied().collect();
                let quotas = stratified_quotas(&counts, n_test);
                let mut left: BTreeMap<u32, usize> = strata.keys().copied().zip(quotas).collect();
                for &row in &perm {
                    let row = row as usize;
                    match left.get_mut(&labels[row]) {
                        Some(n) if *n > 0 => {
                            *n -= 1;
                            test.push(row);
                        }
                        Some(_) | None => train.push(row),
                    }
                }
            }
        }
        train.sort_unstable();
        test.sort_unstable();
        Ok((train, test))
    }

    /// Keras' `validation_split`: `(train, validation)` where validation is the last
    /// `round(len * fraction)` rows, in order, and train the rows before them. For data whose
    /// order matters (a time series); a file sorted by class gives a validation set of the
    /// last classes, so training and `TrainConfig::validation_fraction` use
    /// [`Dataset::split`].
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

/// How many rows of each class go to the held-out side of a stratified split of
/// `sum(counts)` rows with `n_test` held out (steps 1 and 2 of the [module docs](self)).
fn stratified_quotas(counts: &[usize], n_test: usize) -> Vec<usize> {
    let len: usize = counts.iter().sum();
    if len == 0 {
        return vec![0; counts.len()];
    }
    // q_c = m_c * n_test / len as a whole part and a remainder (numerator over len).
    let exact = |m: usize| (m as u128 * n_test as u128, len as u128);
    let mut quotas: Vec<usize> = counts
        .iter()
        .map(|&m| {
            let (num, den) = exact(m);
            (num / den) as usize
        })
        .collect();
    let remainder = |c: usize| {
        let (num, den) = exact(counts[c]);
        num % den
    };
    // The fractional parts sum to the rows left over, so there are at least as many classes
    // with one as rows to give.
    let left = n_test - quotas.iter().sum::<usize>();
    let group = |c: usize, quota: usize| match (counts[c] >= 2, quota) {
        (true, 0) => 0,
        (true, q) if q + 1 == counts[c] => 2,
        _ => 1,
    };
    let mut order: Vec<usize> = (0..counts.len()).filter(|&c| remainder(c) > 0).collect();
    order.sort_by_key(|&c| (group(c, quotas[c]), Reverse(remainder(c)), c));
    for &c in order.iter().take(left) {
        quotas[c] += 1;
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::stratified_quotas;
    use crate::data::{bundled, Dataset, Targets};
    use crate::rng::Rng;
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
            names: Default::default(),
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
        // Stratified: 5 rows of each of the 4 classes.
        for c in 0..4 {
            assert_eq!(
                test.labels()
                    .expect("labels")
                    .iter()
                    .filter(|&&l| l == c)
                    .count(),
                5
            );
        }
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

    /// The rows of each class on each side of a split of `ds`: (train, test) counts.
    fn class_counts(ds: &Dataset, (train, test): &(Vec<usize>, Vec<usize>)) -> Vec<(usize, usize)> {
        let labels = ds.labels().expect("labels");
        let classes = ds.targets.classes().expect("classes");
        let count =
            |rows: &[usize], c: usize| rows.iter().filter(|&&r| labels[r] as usize == c).count();
        (0..classes)
            .map(|c| (count(train, c), count(test, c)))
            .collect()
    }

    /// Together the two sides are every row once, each side ascending.
    fn assert_partition(len: usize, (train, test): &(Vec<usize>, Vec<usize>)) {
        assert!(train.windows(2).all(|w| w[0] < w[1]), "train not ascending");
        assert!(test.windows(2).all(|w| w[0] < w[1]), "test not ascending");
        let mut all: Vec<usize> = train.iter().chain(test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..len).collect::<Vec<_>>(), "rows lost or repeated");
    }

    #[test]
    fn sorted_iris_puts_every_class_in_test_and_validation() {
        // iris.csv holds 50 rows of class 0, then 50 of 1, then 50 of 2.
        let iris = bundled("iris").expect("iris");
        assert!(iris
            .labels()
            .expect("labels")
            .windows(2)
            .all(|w| w[0] <= w[1]));
        for seed in 0..5 {
            let parts = iris.split_indices(0.2, seed).expect("test split");
            assert_partition(150, &parts);
            // 50 * 30 / 150 = 10 exactly, for each class.
            assert_eq!(
                class_counts(&iris, &parts),
                vec![(40, 10); 3],
                "seed {seed}"
            );
            // The validation split of the 120 training rows: 12, 4 of each class.
            let train = iris.select(&parts.0);
            let val_parts = train.split_indices(0.1, seed).expect("validation split");
            assert_partition(120, &val_parts);
            assert_eq!(
                class_counts(&train, &val_parts),
                vec![(36, 4); 3],
                "seed {seed}"
            );
        }
    }

    #[test]
    fn a_split_is_reproducible_by_seed_and_differs_across_seeds() {
        for name in ["iris", "digits", "diabetes"] {
            let ds = bundled(name).expect(name);
            let a = ds.split_indices(0.2, 0).expect("seed 0");
            assert_partition(ds.len(), &a);
            assert_eq!(ds.split_indices(0.2, 0).expect("again"), a, "{name}");
            for seed in [1, 2, 12345] {
                let b = ds.split_indices(0.2, seed).expect("other seed");
                assert_partition(ds.len(), &b);
                assert_eq!(b.1.len(), a.1.len(), "{name}");
                assert_ne!(
                    b.1, a.1,
                    "{name}: seeds 0 and {seed} hold out the same rows"
                );
            }
        }
    }

    #[test]
    fn digits_classes_get_their_share_within_one_row() {
        let digits = bundled("digits").expect("digits");
        let parts = digits.split_indices(0.2, 3).expect("split");
        assert_partition(1797, &parts);
        for (c, (train, test)) in class_counts(&digits, &parts).into_iter().enumerate() {
            let exact = (train + test) as f64 * 359.0 / 1797.0;
            assert!(
                (test as f64 - exact).abs() < 1.0,
                "class {c}: {test} rows for a share of {exact}"
            );
        }
    }

    /// Whether some choice of floor or ceiling for each share, summing to `n_test`, leaves
    /// every class of two or more rows on both sides (tried exhaustively).
    fn presence_possible(counts: &[usize], n_test: usize) -> bool {
        let len: usize = counts.iter().sum();
        let floors: Vec<usize> = counts.iter().map(|&m| m * n_test / len).collect();
        let fractional: Vec<bool> = counts
            .iter()
            .map(|&m| !(m * n_test).is_multiple_of(len))
            .collect();
        (0u32..1 << counts.len()).any(|up| {
            let quotas: Vec<usize> = (0..counts.len())
                .map(|c| floors[c] + usize::from(up >> c & 1 == 1))
                .collect();
            (0..counts.len()).all(|c| up >> c & 1 == 0 || fractional[c])
                && quotas.iter().sum::<usize>() == n_test
                && (0..counts.len()).all(|c| counts[c] < 2 || (1..counts[c]).contains(&quotas[c]))
        })
    }

    #[test]
    fn quotas_are_within_one_row_and_keep_classes_on_both_sides_when_rounding_allows() {
        // Rounding up class 0 (2 rows, share 0.196 of 10) puts it in the test set; by the
        // larger fractional part alone, class 1 (share 9.80) would take the spare row.
        assert_eq!(stratified_quotas(&[2, 100], 10), vec![1, 9]);
        // Class 0's share of 80 is 1.57: rounded up it would keep no training row.
        assert_eq!(stratified_quotas(&[2, 100], 80), vec![1, 79]);
        // Three rows for four classes of two or three: the last class goes without.
        assert_eq!(stratified_quotas(&[3, 3, 2, 2], 3), vec![1, 1, 1, 0]);
        let mut rng = Rng::new(11);
        let mut checked = 0;
        for _ in 0..3000 {
            let classes = 1 + rng.below(8) as usize;
            let counts: Vec<usize> = (0..classes).map(|_| rng.below(40) as usize).collect();
            let len: usize = counts.iter().sum();
            if len < 2 {
                continue;
            }
            let n_test = 1 + rng.below(len as u32 - 1) as usize;
            let quotas = stratified_quotas(&counts, n_test);
            assert_eq!(quotas.iter().sum::<usize>(), n_test, "{counts:?} {n_test}");
            for (c, (&m, &q)) in counts.iter().zip(&quotas).enumerate() {
                // |q - m * n_test / len| < 1, in integers.
                let (q, exact) = ((q * len) as i64, (m * n_test) as i64);
                assert!(
                    (q - exact).abs() < len as i64,
                    "{counts:?} {n_test}: class {c}"
                );
                assert!(q <= (m * len) as i64, "{counts:?} {n_test}: class {c}");
            }
            let present = counts
                .iter()
                .zip(&quotas)
                .all(|(&m, &q)| m < 2 || (1..m).contains(&q));
            assert_eq!(
                present,
                presence_possible(&counts, n_test),
                "{counts:?} {n_test}: {quotas:?}"
            );
            checked += 1;
        }
        assert!(checked > 2000, "{checked} cases");
    }
}
