//! Missing feature values filled from training data: [`Imputer`] holds one value per column
//! (the column's mean over the rows that have it), fitted on the training split and applied
//! to any data of the same width, as scikit-learn's `SimpleImputer(strategy="mean")`. A
//! missing value is NaN in a [`Dataset`]'s features (the CSV reader writes NaN for an empty
//! cell when asked to, see [`CsvOptions::allow_missing`](super::CsvOptions)). A fitted imputer
//! serializes, so that a checkpoint carries it and `predict` fills its inputs the same way.
//! It does not fill targets: a row without its label or target is the caller's to drop.
//!
//! Means are computed in `f64` over the present values, in row order, and stored as `f32`.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Dataset;
use crate::{Error, Result};

/// How an [`Imputer`] chooses a column's fill value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ImputeKind {
    /// The column's mean over the training rows that have a value.
    Mean,
}

impl FromStr for ImputeKind {
    type Err = Error;

    /// `mean` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "mean" => Ok(ImputeKind::Mean),
            _ => Err(Error::Config(format!(
                "unknown imputation '{s}': expected mean"
            ))),
        }
    }
}

/// One fill value per feature column.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Imputer {
    pub kind: ImputeKind,
    /// What a missing value of each column becomes.
    pub values: Vec<f32>,
}

impl Imputer {
    /// Fits on the features of `data` (NaN for a missing value). A column with no value in
    /// any row is an error naming it: there is nothing to fill it with.
    pub fn fit(kind: ImputeKind, data: &Dataset) -> Result<Imputer> {
        let width = data.width;
        let mut sums = vec![0f64; width];
        let mut counts = vec![0usize; width];
        for row in data.features.chunks(width.max(1)) {
            for (c, v) in row.iter().enumerate() {
                if !v.is_nan() {
                    sums[c] += f64::from(*v);
                    counts[c] += 1;
                }
            }
        }
        let mut values = Vec::with_capacity(width);
        for c in 0..width {
            if counts[c] == 0 {
                let name = match data.names.features.get(c) {
                    Some(n) => format!("column {c} ('{n}')"),
                    None => format!("column {c}"),
                };
                return Err(Error::Data(format!(
                    "dataset '{}': feature {name} has no value in any training row; there is no mean to impute",
                    data.name
                )));
            }
            values.push((sums[c] / counts[c] as f64) as f32);
        }
        Ok(Imputer { kind, values })
    }

    /// Replaces every NaN feature of `data` with its column's value; the number replaced.
    pub fn apply(&self, data: &mut Dataset) -> Result<usize> {
        if data.width != self.values.len() {
            return Err(Error::shape(
                "imputation",
                format!("{} features per row", self.values.len()),
                data.width,
            ));
        }
        let mut filled = 0;
        for row in data.features.chunks_mut(self.values.len().max(1)) {
            filled += self.fill_row(row);
        }
        Ok(filled)
    }

    /// Replaces every NaN of one row (as wide as the imputer) with its column's value; the
    /// number replaced.
    pub fn fill_row(&self, row: &mut [f32]) -> usize {
        let mut filled = 0;
        for (v, fill) in row.iter_mut().zip(&self.values) {
            if v.is_nan() {
                *v = *fill;
                filled += 1;
            }
        }
        filled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Names, Targets};

    fn data(features: Vec<f32>) -> Dataset {
        let rows = features.len() / 2;
        Dataset {
            name: "t".into(),
            features,
            width: 2,
            targets: Targets::Classes {
                labels: vec![0; rows],
                classes: 1,
            },
            names: Names {
                features: vec!["a".into(), "b".into()],
                ..Names::default()
            },
        }
    }

    #[test]
    fn fills_with_the_means_of_the_present_values() {
        let mut d = data(vec![1.0, f32::NAN, f32::NAN, 4.0, 3.0, 8.0]);
        let imp = Imputer::fit(ImputeKind::Mean, &d).unwrap();
        // Column 0: (1 + 3) / 2; column 1: (4 + 8) / 2.
        assert_eq!(imp.values, vec![2.0, 6.0]);
        assert_eq!(imp.apply(&mut d).unwrap(), 2);
        assert_eq!(d.features, vec![1.0, 6.0, 2.0, 4.0, 3.0, 8.0]);
    }

    #[test]
    fn a_column_with_no_value_is_an_error_naming_it() {
        let d = data(vec![1.0, f32::NAN, 2.0, f32::NAN]);
        let e = Imputer::fit(ImputeKind::Mean, &d).unwrap_err().to_string();
        assert!(e.contains("column 1 ('b')"), "{e}");
    }

    #[test]
    fn parses_and_round_trips_through_json() {
        assert_eq!("Mean".parse::<ImputeKind>().unwrap(), ImputeKind::Mean);
        assert!("median".parse::<ImputeKind>().is_err());
        let imp = Imputer {
            kind: ImputeKind::Mean,
            values: vec![0.5, -2.0],
        };
        let text = serde_json::to_string(&imp).unwrap();
        assert_eq!(text, r#"{"kind":"mean","values":[0.5,-2.0]}"#);
        assert_eq!(serde_json::from_str::<Imputer>(&text).unwrap(), imp);
    }
}
