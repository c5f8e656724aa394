//! Regression metrics in the targets' own units: RMSE, MAE and R², from predictions and
//! targets laid out row-major `(rows, width)`. Plain arithmetic in f64; no device.
//!
//! A target of several columns is aggregated over every cell: RMSE and MAE average over all
//! `rows x width` values, and R² is `1 - SS_res / SS_tot` with both sums taken over every
//! column, each column's deviations measured from that column's own mean (the pooled R², not
//! the mean of per-column R²s).

use serde::{Deserialize, Serialize};

/// RMSE, MAE and R² of predictions against targets, in the targets' units.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub rmse: f64,
    pub mae: f64,
    /// `1 - SS_res / SS_tot`; NaN when the targets do not vary (`SS_tot` is 0).
    pub r2: f64,
}

/// The metrics of `predicted` against `targets`, both `(rows, width)` row-major; `None` when
/// there is no row, or when the lengths differ or are not a multiple of `width`.
pub fn regression(predicted: &[f32], targets: &[f32], width: usize) -> Option<RegressionMetrics> {
    if width == 0
        || targets.is_empty()
        || predicted.len() != targets.len()
        || !targets.len().is_multiple_of(width)
    {
        return None;
    }
    let rows = targets.len() / width;
    let mut mean = vec![0f64; width];
    for row in targets.chunks(width) {
        for (m, &t) in mean.iter_mut().zip(row) {
            *m += f64::from(t);
        }
    }
    for m in &mut mean {
        *m /= rows as f64;
    }
    let (mut ss_res, mut ss_tot, mut abs) = (0f64, 0f64, 0f64);
    for (p_row, t_row) in predicted.chunks(width).zip(targets.chunks(width)) {
        for ((&p, &t), &m) in p_row.iter().zip(t_row).zip(&mean) {
            let (p, t) = (f64::from(p), f64::from(t));
            ss_res += (p - t) * (p - t);
            abs += (p - t).abs();
            ss_tot += (t - m) * (t - m);
        }
    }
    let cells = targets.len() as f64;
    Some(RegressionMetrics {
        rmse: (ss_res / cells).sqrt(),
        mae: abs / cells,
        r2: if ss_tot > 0.0 {
            1.0 - ss_res / ss_tot
        } else {
            f64::NAN
        },
    })
}

/// `SS_tot / cells` of `targets (rows, width)`: each column's squared deviations from its own
/// mean, summed over every column and divided by the number of values (the mean of the
/// columns' population variances). `None` when there is no row or the shape is wrong.
///
/// With the MSE loss (the mean squared error over every value), `1 - loss / mean_variance`
/// is the pooled R² of [`regression`] in whatever units the loss was computed.
pub fn mean_variance(targets: &[f32], width: usize) -> Option<f64> {
    if width == 0 || targets.is_empty() || !targets.len().is_multiple_of(width) {
        return None;
    }
    let rows = (targets.len() / width) as f64;
    let mut mean = vec![0f64; width];
    for row in targets.chunks(width) {
        for (m, &t) in mean.iter_mut().zip(row) {
            *m += f64::from(t) / rows;
        }
    }
    let ss: f64 = targets
        .chunks(width)
        .flat_map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&t, &m)| (f64::from(t) - m).powi(2))
        })
        .sum();
    Some(ss / targets.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn one_column_by_hand() {
        // targets 1, 2, 3, 4 (mean 2.5, SS_tot 5); errors 0.5, -0.5, 0, 1 (SS_res 1.5).
        let m = regression(&[1.5, 1.5, 3.0, 5.0], &[1.0, 2.0, 3.0, 4.0], 1).unwrap();
        assert!(close(m.rmse, (1.5f64 / 4.0).sqrt()), "{m:?}");
        assert!(close(m.mae, 2.0 / 4.0), "{m:?}");
        assert!(close(m.r2, 1.0 - 1.5 / 5.0), "{m:?}");
    }

    #[test]
    fn two_columns_are_pooled() {
        // Column 0: targets 0, 2 (mean 1, SS_tot 2), errors 1, 1.
        // Column 1: targets 10, 30 (mean 20, SS_tot 200), errors -2, 0.
        // SS_res 1 + 1 + 4 + 0 = 6 over 4 cells; |errors| 1 + 1 + 2 + 0 = 4.
        let m = regression(&[1.0, 8.0, 3.0, 30.0], &[0.0, 10.0, 2.0, 30.0], 2).unwrap();
        assert!(close(m.rmse, (6f64 / 4.0).sqrt()), "{m:?}");
        assert!(close(m.mae, 1.0), "{m:?}");
        assert!(close(m.r2, 1.0 - 6.0 / 202.0), "{m:?}");
    }

    #[test]
    fn perfect_and_mean_predictions() {
        let t = [3.0, -1.0, 7.0];
        assert!(close(regression(&t, &t, 1).unwrap().r2, 1.0));
        assert_eq!(regression(&t, &t, 1).unwrap().rmse, 0.0);
        // Predicting the mean (3) everywhere gives R² 0.
        assert!(close(regression(&[3.0; 3], &t, 1).unwrap().r2, 0.0));
    }

    #[test]
    fn mean_variance_by_hand() {
        // Column 0: 0, 2 (squared deviations 1 + 1); column 1: 10, 30 (100 + 100); 4 values.
        let v = mean_variance(&[0.0, 10.0, 2.0, 30.0], 2).unwrap();
        assert!(close(v, 202.0 / 4.0), "{v}");
        // 1 - MSE / mean_variance is the pooled R².
        let (p, t) = ([1.0, 8.0, 3.0, 30.0], [0.0, 10.0, 2.0, 30.0]);
        let mse = 6.0 / 4.0;
        assert!(close(1.0 - mse / v, regression(&p, &t, 2).unwrap().r2));
        assert_eq!(mean_variance(&[], 1), None);
    }

    #[test]
    fn constant_targets_and_bad_shapes() {
        assert!(regression(&[1.0, 2.0], &[5.0, 5.0], 1).unwrap().r2.is_nan());
        assert_eq!(regression(&[], &[], 1), None);
        assert_eq!(regression(&[1.0], &[1.0, 2.0], 1), None);
        assert_eq!(regression(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 2), None);
        assert_eq!(regression(&[1.0], &[1.0], 0), None);
    }
}
