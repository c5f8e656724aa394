//! How a training run reports: losses printed for people, the regression metrics line, and
//! `metrics.jsonl`, appended one line per epoch.

use std::io::Write;
use std::path::{Path, PathBuf};

use soma::metrics::RegressionMetrics;
use soma::trainer::EpochMetrics;
use soma::{Error, Result};

/// The regression metrics as printed by `soma train` and `soma eval`.
/// RMSE, MAE and R² in the targets' own units of `model` (taking features as they are) on
/// `data`, whose regression targets were scaled by `target_scaler` for training (as
/// `prepare_data` leaves them); `None` for classification data.
pub fn regression_in_units(
    model: &soma::Model,
    device: soma::Device<'_>,
    data: &soma::data::Dataset,
    target_scaler: Option<&soma::data::Scaler>,
) -> Result<Option<RegressionMetrics>> {
    let mut data = std::borrow::Cow::Borrowed(data);
    let mut model = std::borrow::Cow::Borrowed(model);
    if let Some(s) = target_scaler {
        if let soma::data::Targets::Values { values, width } = &mut data.to_mut().targets {
            for row in values.chunks_mut((*width).max(1)) {
                s.invert_row(row)?;
            }
        }
        model.to_mut().target_scaler = Some(s.clone());
    }
    model.regression_metrics(device, &data)
}

pub fn regression_line(m: &RegressionMetrics) -> String {
    let n = |x: f64| number(x as f32);
    format!(
        "RMSE {}, MAE {}, R² {} (in the targets' own units)",
        n(m.rmse),
        n(m.mae),
        n(m.r2)
    )
}

/// A loss for people: four decimals, or scientific notation where that would print a long
/// row of digits or zeros (an exploding loss, a tiny one).
pub fn number(x: f32) -> String {
    if x.is_finite() && x != 0.0 && !(1e-4..1e5).contains(&x.abs()) {
        format!("{x:.4e}")
    } else {
        format!("{x:.4}")
    }
}

/// How often `curves.svg` is redrawn during a run: redrawing it every epoch would make a
/// long run's writes grow with the square of its epochs.
pub const CURVES_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// `metrics.jsonl`, one line appended per epoch and synced before the epoch's checkpoint.
pub struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Starts the log with the lines of `kept` (atomically), then appends.
    pub fn start(path: &Path, kept: &[EpochMetrics]) -> Result<MetricsLog> {
        let mut text = Vec::new();
        for m in kept {
            text.extend(line_of(m)?);
        }
        soma::fs::write_atomic(path, &text)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn append(&mut self, m: &EpochMetrics) -> Result<()> {
        let line = line_of(m)?;
        self.file
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }
}

fn line_of(m: &EpochMetrics) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(m).map_err(|e| Error::Config(e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

/// A run's `shadow.jsonl`: one JSON object per shadow-checked step (a `ShadowReport`: the
/// step, its epoch, the tolerance, and each tensor's max abs, max rel, max ulp and relative
/// L2 difference from the CPU replay), appended and synced before the epoch's checkpoint.
pub struct ShadowLog {
    file: std::fs::File,
    path: PathBuf,
}

impl ShadowLog {
    /// Starts the log keeping the lines of steps up to `through` (those a resumed
    /// checkpoint holds; none for a new run), then appends.
    pub fn start(path: &Path, through: u64) -> Result<ShadowLog> {
        let mut kept = Vec::new();
        match std::fs::read(path) {
            Ok(text) => {
                for line in text.split(|&b| b == b'\n') {
                    let step = serde_json::from_slice::<soma::trainer::ShadowReport>(line)
                        .ok()
                        .map(|r| r.step);
                    if step.is_some_and(|s| s <= through) {
                        kept.extend_from_slice(line);
                        kept.push(b'\n');
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path, e)),
        }
        soma::fs::write_atomic(path, &kept)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(ShadowLog {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn append(&mut self, reports: &[soma::trainer::ShadowReport]) -> Result<()> {
        let mut text = Vec::new();
        for r in reports {
            text.extend(serde_json::to_vec(r).map_err(|e| Error::Config(e.to_string()))?);
            text.push(b'\n');
        }
        self.file
            .write_all(&text)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// One line on an epoch's shadow steps: how many, the worst tensor, and whether all were
/// within the tolerance.
pub fn shadow_line(reports: &[soma::trainer::ShadowReport]) -> String {
    let worst = reports
        .iter()
        .filter_map(|r| r.worst().map(|t| (r, t)))
        .max_by(|a, b| a.1.rel_l2.total_cmp(&b.1.rel_l2));
    let failed = reports.iter().filter(|r| !r.pass()).count();
    let tolerance = reports.first().map_or(0.0, |r| r.tolerance);
    let mut line = format!(
        "shadow: {} step{} replayed on the CPU path",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" }
    );
    if let Some((r, t)) = worst {
        line += &format!(
            ", worst {} at step {}: rel L2 {:.2e}, max {} ulp",
            t.name, r.step, t.rel_l2, t.max_ulp
        );
    }
    line += &match failed {
        0 => format!(" (tolerance {tolerance:.2e}: all within)"),
        n => format!(" (tolerance {tolerance:.2e}: {n} over it)"),
    };
    for r in reports.iter().filter(|r| r.searched) {
        line += &match &r.located {
            Some(d) => format!(
                "\n  step {} again op by op against the CPU twins: first past {:.0e} is {} (kernel {}) on {} {:?}, index {}: GPU {:e}, CPU {:e}",
                r.step,
                soma::trainer::shadow::LOCATE_TOLERANCE,
                d.op,
                d.kernel,
                d.buffer,
                d.shape,
                d.index,
                d.gpu,
                d.cpu
            ),
            None => format!(
                "\n  step {} again op by op against the CPU twins: no single op past {:.0e}; the difference built up within the step",
                r.step,
                soma::trainer::shadow::LOCATE_TOLERANCE
            ),
        };
    }
    line
}

/// The first `epochs` lines of a run's `metrics.jsonl` (what follows them, possibly a line
/// torn by a kill, belongs to epochs the checkpoint does not hold).
pub fn read_metrics(path: &Path, epochs: usize) -> Result<Vec<EpochMetrics>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .take(epochs)
        .map(|(i, l)| {
            serde_json::from_slice(l).map_err(|e| Error::Format {
                path: path.to_path_buf(),
                line: Some(i + 1),
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn losses_print_short() {
        assert_eq!(number(0.12345), "0.1235");
        assert_eq!(number(0.0), "0.0000");
        assert_eq!(number(6.9e8), "6.9000e8");
        assert_eq!(number(1.5e37), "1.5000e37");
        assert_eq!(number(2.5e-6), "2.5000e-6");
        assert_eq!(number(f32::NAN), "NaN");
        assert_eq!(number(-123.0), "-123.0000");
    }
}
