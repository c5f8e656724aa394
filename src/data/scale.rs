//! Per-feature scaling fitted on training data and applied to any data of the same width:
//! min-max to [0, 1] and standardisation to mean 0, standard deviation 1. A fitted [`Scaler`]
//! serializes, so a checkpoint can carry it and inference can scale inputs the same way. It
//! does not scale targets and does not decide when to fit (fit on the training split only).
//!
//! Every kind is stored as `x' = (x - offset) * scale`, per column:
//! - `none`: offset 0, scale 1;
//! - `minmax`: offset = min, scale = 1 / (max - min);
//! - `standard`: offset = mean, scale = 1 / std (population std, divided by n).
//!
//! Statistics are computed in `f64`. A constant column (or one whose spread is too small for a
//! finite `f32` reciprocal) gets scale 1, so it maps to 0, never NaN.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Dataset;
use crate::{Error, Result};

/// Which scaling a [`Scaler`] does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ScaleKind {
    None,
    MinMax,
    Standard,
}

impl FromStr for ScaleKind {
    type Err = Error;

    /// `none`, `minmax` (or `min-max`) or `standard` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(ScaleKind::None),
            "minmax" | "min-max" => Ok(ScaleKind::MinMax),
            "standard" => Ok(ScaleKind::Standard),
            _ => Err(Error::Config(format!(
                "unknown scaling '{s}': expected none, minmax or standard"
            ))),
        }
    }
}

/// A fitted per-column affine map `x' = (x - offset) * scale`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Scaler {
    pub kind: ScaleKind,
    /// Subtracted from each column.
    pub offset: Vec<f32>,
    /// Multiplies each column after the offset.
    pub scale: Vec<f32>,
}

impl Scaler {
    /// Fits on the features of `data` (meant to be a validated training set). An empty
    /// dataset gives the identity map for its width.
    pub fn fit(kind: ScaleKind, data: &Dataset) -> Scaler {
        let width = data.width;
        let rows = data.features.len().checked_div(width).unwrap_or(0);
        let mut offset = vec![0.0f32; width];
        let mut scale = vec![1.0f32; width];
        if rows > 0 {
            for c in 0..width {
                let column = || data.features.chunks_exact(width).map(|r| f64::from(r[c]));
                let (o, spread) = match kind {
                    ScaleKind::None => continue,
                    ScaleKind::MinMax => {
                        let (min, max) = column()
                            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                                (lo.min(v), hi.max(v))
                            });
                        (min, max - min)
                    }
                    ScaleKind::Standard => {
                        let n = rows as f64;
                        let mean = column().sum::<f64>() / n;
                        let var = column().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
                        (mean, var.sqrt())
                    }
                };
                offset[c] = o as f32;
                let s = (1.0 / spread) as f32;
                scale[c] = if spread > 0.0 && s.is_finite() {
                    s
                } else {
                    1.0
                };
            }
        }
        Scaler {
            kind,
            offset,
            scale,
        }
    }

    /// The number of columns this scaler was fitted on.
    pub fn width(&self) -> usize {
        self.offset.len()
    }

    /// Scales every row of `data` in place. Errors if its width differs from the fitted one.
    pub fn apply(&self, data: &mut Dataset) -> Result<()> {
        self.check_width(data.width)?;
        if data.width > 0 {
            for row in data.features.chunks_exact_mut(data.width) {
                self.scale_row(row);
            }
        }
        Ok(())
    }

    /// Scales one row in place. Errors if its length differs from the fitted width.
    pub fn apply_row(&self, row: &mut [f32]) -> Result<()> {
        self.check_width(row.len())?;
        self.scale_row(row);
        Ok(())
    }

    /// Undoes `apply_row`: `x = x' / scale + offset` (for outputs predicted in scaled units).
    pub fn invert_row(&self, row: &mut [f32]) -> Result<()> {
        self.check_width(row.len())?;
        for ((x, &o), &s) in row.iter_mut().zip(&self.offset).zip(&self.scale) {
            *x = *x / s + o;
        }
        Ok(())
    }

    /// Fits a scaler to regression targets `(rows, width)` row-major, as `fit` does to
    /// features.
    pub fn fit_values(kind: ScaleKind, values: &[f32], width: usize) -> Scaler {
        let d = Dataset {
            name: "targets".into(),
            features: values.to_vec(),
            width,
            targets: crate::data::Targets::Values {
                values: vec![],
                width,
            },
            names: Default::default(),
        };
        Scaler::fit(kind, &d)
    }

    fn scale_row(&self, row: &mut [f32]) {
        for ((x, &o), &s) in row.iter_mut().zip(&self.offset).zip(&self.scale) {
            *x = (*x - o) * s;
        }
    }

    fn check_width(&self, got: usize) -> Result<()> {
        if self.offset.len() != self.scale.len() {
            return Err(Error::Config(format!(
                "scaler has {} offsets but {} scales",
                self.offset.len(),
                self.scale.len()
            )));
        }
        if got != self.width() {
            return Err(Error::shape(
                "Scaler::apply",
                format!("{} features per row", self.width()),
                format!("{got}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Targets;

    /// Columns: a spread column, a constant column, a two-valued column.
    fn data() -> Dataset {
        Dataset {
            name: "s".into(),
            features: vec![1.0, 5.0, -1.0, 3.0, 5.0, 1.0, 2.0, 5.0, -1.0, 6.0, 5.0, 1.0],
            width: 3,
            targets: Targets::Classes {
                labels: vec![0; 4],
                classes: 1,
            },
            names: Default::default(),
        }
    }

    fn column(ds: &Dataset, c: usize) -> Vec<f32> {
        ds.features.chunks_exact(ds.width).map(|r| r[c]).collect()
    }

    #[test]
    fn min_max_maps_to_unit_interval() {
        let mut ds = data();
        let s = Scaler::fit(ScaleKind::MinMax, &ds);
        s.apply(&mut ds).expect("apply");
        assert_eq!(column(&ds, 0), vec![0.0, 0.4, 0.2, 1.0]);
        assert_eq!(column(&ds, 1), vec![0.0; 4]);
        assert_eq!(column(&ds, 2), vec![0.0, 1.0, 0.0, 1.0]);
        let digits = crate::data::bundled("digits").expect("digits");
        let mut scaled = digits.clone();
        Scaler::fit(ScaleKind::MinMax, &digits)
            .apply(&mut scaled)
            .expect("apply");
        assert!(scaled.features.iter().all(|v| (0.0..=1.0).contains(v)));
        scaled
            .validate()
            .expect("no NaN from constant pixel columns");
    }

    #[test]
    fn standard_gives_mean_zero_std_one() {
        let mut ds = data();
        let s = Scaler::fit(ScaleKind::Standard, &ds);
        s.apply(&mut ds).expect("apply");
        for c in [0, 2] {
            let col: Vec<f64> = column(&ds, c).iter().map(|&v| f64::from(v)).collect();
            let mean = col.iter().sum::<f64>() / 4.0;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
            assert!(
                mean.abs() < 1e-6 && (var.sqrt() - 1.0).abs() < 1e-6,
                "{c}: {mean} {var}"
            );
        }
        assert_eq!(column(&ds, 1), vec![0.0; 4]);
        assert_eq!(column(&ds, 2), vec![-1.0, 1.0, -1.0, 1.0]);
    }

    #[test]
    fn none_rows_widths_and_serde() {
        let mut ds = data();
        let s = Scaler::fit(ScaleKind::None, &ds);
        s.apply(&mut ds).expect("apply");
        assert_eq!(ds, data());

        let s = Scaler::fit(ScaleKind::MinMax, &data());
        let mut row = [6.0, 5.0, 0.0];
        s.apply_row(&mut row).expect("row");
        assert_eq!(row, [1.0, 0.0, 0.5]);
        assert!(matches!(s.apply_row(&mut [1.0]), Err(Error::Shape { .. })));
        let mut narrow = data();
        narrow.width = 2;
        assert!(s.apply(&mut narrow).is_err());

        let json = serde_json::to_string(&s).expect("json");
        assert!(json.contains("\"minmax\""), "{json}");
        assert_eq!(serde_json::from_str::<Scaler>(&json).expect("back"), s);
        assert_eq!(
            "Standard".parse::<ScaleKind>().ok(),
            Some(ScaleKind::Standard)
        );
        assert!("zscore".parse::<ScaleKind>().is_err());

        let empty = data().select(&[]);
        let id = Scaler::fit(ScaleKind::Standard, &empty);
        assert_eq!((id.offset, id.scale), (vec![0.0; 3], vec![1.0; 3]));
    }
}
