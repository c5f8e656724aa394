//! Training data on the host: the [`Dataset`] type (row-major `f32` features plus class labels
//! or regression values), its checks, row selection and train/test splits, and the loaders
//! that fill it (CSV, IDX/MNIST, the small datasets bundled into the binary, and the seeded
//! synthetic benchmark sets), plus feature scaling. It does not own batching, one-hot
//! encoding or anything on the GPU; those belong to the training code that consumes a
//! `Dataset`.
//!
//! Submodules: [`csv`] (text tables), [`idx`] (MNIST's binary format), [`scale`] (min-max
//! and standard scaling), [`split`] (seeded splits, stratified by class, and tail splits),
//! [`synthetic`] (hash-based benchmark data).

pub mod csv;
pub mod idx;
pub mod scale;
pub mod split;
pub mod synthetic;

pub use self::csv::{load_csv, parse_csv, CsvOptions, HeaderMode, LabelColumn};
pub use self::idx::{load_idx, load_mnist_dir, parse_idx};
pub use self::scale::{ScaleKind, Scaler};
pub use self::synthetic::{b2_synthetic, b3_synthetic, hash32, unit};

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What the targets of a dataset are for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Integer class labels `0..classes`.
    Classification,
    /// Real-valued targets.
    Regression,
}

impl FromStr for Task {
    type Err = Error;

    /// `classification` or `regression` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "classification" => Ok(Task::Classification),
            "regression" => Ok(Task::Regression),
            _ => Err(Error::Config(format!(
                "unknown task '{s}': expected 'classification' or 'regression'"
            ))),
        }
    }
}

/// The targets of a dataset, one entry (or one row of `width` values) per sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Class labels, each in `0..classes`.
    Classes { labels: Vec<u32>, classes: usize },
    /// Regression targets, `(len, width)` row-major.
    Values { values: Vec<f32>, width: usize },
}

impl Targets {
    /// Number of samples (for `Values` with `width` 0, 0).
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes { labels, .. } => labels.len(),
            Targets::Values { values, width } => values.len().checked_div(*width).unwrap_or(0),
        }
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of classes, or `None` for regression targets.
    pub fn classes(&self) -> Option<usize> {
        match self {
            Targets::Classes { classes, .. } => Some(*classes),
            Targets::Values { .. } => None,
        }
    }

    /// The task these targets belong to.
    pub fn task(&self) -> Task {
        match self {
            Targets::Classes { .. } => Task::Classification,
            Targets::Values { .. } => Task::Regression,
        }
    }

    /// The targets of the given samples, in that order. Panics if an index is out of range.
    fn select(&self, indices: &[usize]) -> Targets {
        match self {
            Targets::Classes { labels, classes } => Targets::Classes {
                labels: indices.iter().map(|&i| labels[i]).collect(),
                classes: *classes,
            },
            Targets::Values { values, width } => {
                let mut out = Vec::with_capacity(indices.len() * width);
                for &i in indices {
                    out.extend_from_slice(&values[i * width..(i + 1) * width]);
                }
                Targets::Values {
                    values: out,
                    width: *width,
                }
            }
        }
    }
}

/// A table of samples: `features` is `(len, width)` row-major; `targets` holds one label or
/// one row of values per sample. The number of samples is the number of targets; call
/// [`Dataset::validate`] before training to check that everything agrees.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// A short name for messages and reports (`digits`, `mnist-train`, a file stem...).
    pub name: String,
    /// `(len, width)` row-major.
    pub features: Vec<f32>,
    /// Features per sample.
    pub width: usize,
    pub targets: Targets,
}

impl Dataset {
    /// Builds a dataset and [validates](Dataset::validate) it.
    pub fn new(
        name: impl Into<String>,
        features: Vec<f32>,
        width: usize,
        targets: Targets,
    ) -> Result<Self> {
        let ds = Dataset {
            name: name.into(),
            features,
            width,
            targets,
        };
        ds.validate()?;
        Ok(ds)
    }

    /// Number of samples (the number of targets).
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The task the targets are for.
    pub fn task(&self) -> Task {
        self.targets.task()
    }

    /// The features of sample `i`.
    ///
    /// # Panics
    /// If `i >= len()` (like slice indexing), or if `features` is shorter than `validate` wants.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.width..(i + 1) * self.width]
    }

    /// The class labels, or `None` for a regression dataset.
    pub fn labels(&self) -> Option<&[u32]> {
        match &self.targets {
            Targets::Classes { labels, .. } => Some(labels),
            Targets::Values { .. } => None,
        }
    }

    /// A new dataset holding the given rows, in that order (repeats allowed), with the same
    /// name, width and class count.
    ///
    /// # Panics
    /// If an index is `>= len()` (like slice indexing).
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut features = Vec::with_capacity(indices.len() * self.width);
        for &i in indices {
            features.extend_from_slice(self.row(i));
        }
        Dataset {
            name: self.name.clone(),
            features,
            width: self.width,
            targets: self.targets.select(indices),
        }
    }

    /// The rows of `parts` one after another, named after the first. The parts must agree in
    /// width and in task (and target width); the class count is the largest of theirs.
    pub fn concat(parts: &[&Dataset]) -> Result<Dataset> {
        let Some(first) = parts.first() else {
            return Err(Error::Data("no datasets to join".into()));
        };
        let mut out = (*first).clone();
        for part in &parts[1..] {
            if part.width != out.width {
                return Err(Error::Data(format!(
                    "cannot join '{}' ({} features per row) to '{}' ({})",
                    part.name, part.width, out.name, out.width
                )));
            }
            out.features.extend_from_slice(&part.features);
            match (&mut out.targets, &part.targets) {
                (
                    Targets::Classes { labels, classes },
                    Targets::Classes {
                        labels: more,
                        classes: theirs,
                    },
                ) => {
                    labels.extend_from_slice(more);
                    *classes = (*classes).max(*theirs);
                }
                (
                    Targets::Values { values, width },
                    Targets::Values {
                        values: more,
                        width: theirs,
                    },
                ) if width == theirs => values.extend_from_slice(more),
                (Targets::Classes { .. } | Targets::Values { .. }, _) => {
                    return Err(Error::Data(format!(
                        "cannot join '{}' to '{}': their targets differ in kind or width",
                        part.name, out.name
                    )))
                }
            }
        }
        Ok(out)
    }

    /// Checks that the dataset can be trained on: not empty, width above 0, `features` and
    /// the targets of matching lengths, every feature and regression target finite, every
    /// label below the class count. Rows and columns in messages are 0-based.
    pub fn validate(&self) -> Result<()> {
        let name = &self.name;
        let len = self.len();
        if len == 0 {
            return Err(Error::Data(format!(
                "dataset '{name}' is empty (no samples)"
            )));
        }
        if self.width == 0 {
            return Err(Error::Data(format!("dataset '{name}' has feature width 0")));
        }
        let expected = len.checked_mul(self.width);
        if expected != Some(self.features.len()) {
            return Err(Error::Data(format!(
                "dataset '{name}' has {} feature values, expected {len} samples x {} wide = {}",
                self.features.len(),
                self.width,
                expected.map_or_else(|| "an overflowing count".to_string(), |e| e.to_string()),
            )));
        }
        if let Some(pos) = self.features.iter().position(|v| !v.is_finite()) {
            return Err(Error::Data(format!(
                "dataset '{name}': feature at row {}, column {} is {} (rows and columns 0-based)",
                pos / self.width,
                pos % self.width,
                self.features[pos],
            )));
        }
        match &self.targets {
            Targets::Classes { labels, classes } => {
                if *classes == 0 {
                    return Err(Error::Data(format!(
                        "dataset '{name}' has {len} labels but 0 classes"
                    )));
                }
                if let Some(row) = labels.iter().position(|&l| l as usize >= *classes) {
                    return Err(Error::Data(format!(
                        "dataset '{name}': label {} at row {row} (0-based) is out of range for {classes} classes (labels must be 0..{})",
                        labels[row],
                        classes - 1,
                    )));
                }
            }
            Targets::Values { values, width } => {
                if *width == 0 {
                    return Err(Error::Data(format!(
                        "dataset '{name}' has regression target width 0"
                    )));
                }
                if values.len() != len * width {
                    return Err(Error::Data(format!(
                        "dataset '{name}' has {} target values, not a multiple of the target width {width}",
                        values.len()
                    )));
                }
                if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
                    return Err(Error::Data(format!(
                        "dataset '{name}': regression target at row {}, column {} is {} (rows and columns 0-based)",
                        pos / width,
                        pos % width,
                        values[pos],
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The task of a bundled dataset (`None` for a name that is not one).
pub fn bundled_task(name: &str) -> Option<Task> {
    match name {
        "digits" | "iris" | "wine" | "breast-cancer" => Some(Task::Classification),
        "diabetes" => Some(Task::Regression),
        _ => None,
    }
}

/// Names accepted by [`bundled`].
pub const BUNDLED: &[&str] = &["digits", "iris", "wine", "breast-cancer", "diabetes"];

/// One of the small datasets compiled into the binary (see `data/README.md` for sources and
/// licenses): `digits` (1797 x 64, 10 classes), `iris` (150 x 4, 3 classes), `wine`
/// (178 x 13, 3 classes), `breast-cancer` (569 x 30, 2 classes), `diabetes` (442 x 10,
/// regression). Features are in the files' raw units; scale them with [`Scaler`].
pub fn bundled(name: &str) -> Result<Dataset> {
    let task = bundled_task(name);
    let (file, text, task) = match (name, task) {
        ("digits", Some(task)) => ("digits.csv", DIGITS_CSV, task),
        ("iris", Some(task)) => ("iris.csv", IRIS_CSV, task),
        ("wine", Some(task)) => ("wine.csv", WINE_CSV, task),
        ("breast-cancer", Some(task)) => ("breast_cancer.csv", BREAST_CANCER_CSV, task),
        ("diabetes", Some(task)) => ("diabetes.csv", DIABETES_CSV, task),
        _ => {
            return Err(Error::Config(format!(
                "unknown bundled dataset '{name}': known are {}",
                BUNDLED.join(", ")
            )))
        }
    };
    let opts = CsvOptions {
        label_column: LabelColumn::Name("target".to_string()),
        header: HeaderMode::Present,
        task,
    };
    let source = Path::new("data").join(file);
    let mut ds = parse_csv(text, &source, &opts)?;
    ds.name = name.to_string();
    Ok(ds)
}

const DIGITS_CSV: &str = include_str!("../../data/digits.csv");
const IRIS_CSV: &str = include_str!("../../data/iris.csv");
const WINE_CSV: &str = include_str!("../../data/wine.csv");
const BREAST_CANCER_CSV: &str = include_str!("../../data/breast_cancer.csv");
const DIABETES_CSV: &str = include_str!("../../data/diabetes.csv");

/// A fresh, empty folder under the system temp dir, unique per process and call.
#[cfg(test)]
pub(crate) fn test_temp_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("soma-test-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A file or folder under `../shared/data` beside the crate (the datasets the tests that
/// need real data read). `None` after printing SKIPPED when it is missing; a panic instead
/// when `SOMA_REQUIRE_DATA=1` (CI sets it), so that missing data fails the run.
#[cfg(test)]
pub(crate) fn shared_data(relative: &str) -> Option<std::path::PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(relative);
    if path.exists() {
        return Some(path);
    }
    let why = format!("{} not found", path.display());
    if std::env::var("SOMA_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("{why} (SOMA_REQUIRE_DATA=1)");
    }
    println!("SKIPPED: {why}");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        Dataset {
            name: "tiny".into(),
            features: vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0],
            width: 2,
            targets: Targets::Classes {
                labels: vec![0, 1, 2],
                classes: 3,
            },
        }
    }

    #[test]
    fn concat_joins_rows_and_refuses_what_does_not_fit() {
        let ds = tiny();
        let (a, b) = (ds.select(&[2]), ds.select(&[0, 1]));
        let joined = Dataset::concat(&[&a, &b]).expect("join");
        assert_eq!(joined.features, vec![20.0, 21.0, 0.0, 1.0, 10.0, 11.0]);
        assert_eq!(joined.labels(), Some(&[2u32, 0, 1][..]));
        assert_eq!(
            (joined.name.as_str(), joined.targets.classes()),
            ("tiny", Some(3))
        );
        assert!(Dataset::concat(&[]).is_err());
        let narrow = Dataset::new(
            "n",
            vec![1.0],
            1,
            Targets::Classes {
                labels: vec![0],
                classes: 2,
            },
        )
        .expect("valid");
        assert!(matches!(
            Dataset::concat(&[&ds, &narrow]),
            Err(Error::Data(_))
        ));
        let mut values = ds.clone();
        values.targets = Targets::Values {
            values: vec![1.0, 2.0, 3.0],
            width: 1,
        };
        assert!(matches!(
            Dataset::concat(&[&ds, &values]),
            Err(Error::Data(_))
        ));
        let joined = Dataset::concat(&[&values, &values]).expect("values");
        assert_eq!(joined.targets.len(), 6);
    }

    #[test]
    fn rows_select_and_lengths() {
        let ds = tiny();
        assert_eq!(ds.len(), 3);
        assert!(!ds.is_empty());
        assert_eq!(ds.row(1), &[10.0, 11.0]);
        assert_eq!(ds.task(), Task::Classification);
        let sel = ds.select(&[2, 0, 2]);
        assert_eq!(sel.features, vec![20.0, 21.0, 0.0, 1.0, 20.0, 21.0]);
        assert_eq!(sel.labels(), Some(&[2u32, 0, 2][..]));
        assert_eq!(sel.targets.classes(), Some(3));

        let reg = Dataset::new(
            "r",
            vec![1.0, 2.0],
            1,
            Targets::Values {
                values: vec![5.0, 6.0, 7.0, 8.0],
                width: 2,
            },
        )
        .expect("valid");
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.targets.classes(), None);
        let sel = reg.select(&[1]);
        assert_eq!(
            sel.targets,
            Targets::Values {
                values: vec![7.0, 8.0],
                width: 2
            }
        );
        assert!(ds.select(&[]).is_empty());
    }

    fn data_message(r: Result<()>) -> String {
        match r {
            Err(Error::Data(m)) => m,
            other => panic!("expected Error::Data, got {other:?}"),
        }
    }

    #[test]
    fn validate_catches_bad_data() {
        assert!(tiny().validate().is_ok());

        let mut ds = tiny();
        ds.features[3] = f32::NAN;
        let m = data_message(ds.validate());
        assert!(m.contains("row 1, column 1") && m.contains("NaN"), "{m}");

        let mut ds = tiny();
        ds.features[4] = f32::INFINITY;
        let m = data_message(ds.validate());
        assert!(m.contains("row 2, column 0") && m.contains("inf"), "{m}");

        let mut ds = tiny();
        ds.targets = Targets::Classes {
            labels: vec![0, 3, 1],
            classes: 3,
        };
        let m = data_message(ds.validate());
        assert!(
            m.contains("label 3 at row 1") && m.contains("3 classes"),
            "{m}"
        );

        let mut ds = tiny();
        ds.features.pop();
        assert!(data_message(ds.validate()).contains("expected 3 samples x 2 wide = 6"));

        let mut ds = tiny();
        ds.width = 0;
        assert!(data_message(ds.validate()).contains("width 0"));

        let ds = tiny().select(&[]);
        assert!(data_message(ds.validate()).contains("empty"));

        let ds = Dataset {
            name: "r".into(),
            features: vec![1.0, 2.0],
            width: 1,
            targets: Targets::Values {
                values: vec![1.0, f32::NAN],
                width: 1,
            },
        };
        let m = data_message(ds.validate());
        assert!(
            m.contains("regression target at row 1, column 0 is NaN"),
            "{m}"
        );
    }

    #[test]
    fn task_parses() {
        assert_eq!("Regression".parse::<Task>().ok(), Some(Task::Regression));
        assert!(matches!("x".parse::<Task>(), Err(Error::Config(_))));
        assert_eq!(
            serde_json::to_string(&Task::Classification).ok().as_deref(),
            Some("\"classification\"")
        );
    }

    #[test]
    fn bundled_datasets_have_their_documented_shapes() {
        let cases = [
            ("digits", 1797, 64, Some(10)),
            ("iris", 150, 4, Some(3)),
            ("wine", 178, 13, Some(3)),
            ("breast-cancer", 569, 30, Some(2)),
            ("diabetes", 442, 10, None),
        ];
        assert_eq!(BUNDLED.len(), cases.len());
        for (name, len, width, classes) in cases {
            let ds = bundled(name).expect(name);
            assert_eq!(ds.name, name);
            assert_eq!(
                (ds.len(), ds.width, ds.targets.classes()),
                (len, width, classes),
                "{name}"
            );
            ds.validate().expect(name);
            assert!(BUNDLED.contains(&name));
        }
        let digits = bundled("digits").expect("digits");
        assert_eq!(&digits.row(0)[..6], &[0.0, 0.0, 5.0, 13.0, 9.0, 1.0]);
        assert_eq!(&digits.labels().expect("labels")[..4], &[0, 1, 2, 3]);
        let diabetes = bundled("diabetes").expect("diabetes");
        match &diabetes.targets {
            Targets::Values { values, width } => {
                assert_eq!(*width, 1);
                assert_eq!(&values[..2], &[151.0, 75.0]);
            }
            other => panic!("diabetes targets: {other:?}"),
        }
        match bundled("mnist") {
            Err(Error::Config(m)) => assert!(m.contains("digits") && m.contains("diabetes"), "{m}"),
            other => panic!("expected Config error, got {other:?}"),
        }
    }
}
