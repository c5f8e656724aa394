//! Training data on the host: the [`Dataset`] type (row-major `f32` features plus class labels
//! or regression values), its checks, row selection and train/test splits, and the loaders
//! that fill it (CSV, IDX/MNIST, the small datasets bundled into the binary, and the seeded
//! synthetic benchmark sets), plus feature scaling. It does not own batching, one-hot
//! encoding or anything on the GPU; those belong to the training code that consumes a
//! `Dataset`.
//!
//! Submodules: [`csv`] (text tables), [`idx`] (MNIST's binary format), [`impute`] (missing
//! values), [`scale`] (min-max and standard scaling), [`split`] (seeded splits, stratified by class, and tail splits),
//! [`synthetic`] (hash-based benchmark data).

pub mod csv;
pub mod idx;
pub mod impute;
pub mod scale;
pub mod split;
pub mod synthetic;

pub use self::csv::{load_csv, parse_csv, read_table, CsvOptions, HeaderMode, LabelColumn, Table};
pub use self::idx::{load_idx, load_mnist_dir, parse_idx};
pub use self::impute::{ImputeKind, Imputer};
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

/// What a dataset's columns and classes are called, where its source names them (a CSV
/// header, class labels written as text). Checkpoints keep them, so that `predict` can map an
/// input's columns by name and print class names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// One name per feature column, in order; empty when the source has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// The name of the label or target column, when the source has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// One name per class, in class order; empty when the labels are numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
}

impl Names {
    /// Whether nothing is named.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty() && self.target.is_none() && self.classes.is_empty()
    }

    /// The name of class `c`: its name when the classes are named, else the number.
    pub fn class(&self, c: usize) -> String {
        match self.classes.get(c) {
            Some(name) => name.clone(),
            None => c.to_string(),
        }
    }

    /// Checks the names against `width` features and `classes` classes (`None` for
    /// regression): as many feature names as features and class names as classes (or none),
    /// no name empty, none twice.
    pub fn check(&self, width: usize, classes: Option<usize>) -> std::result::Result<(), String> {
        if !self.features.is_empty() && self.features.len() != width {
            return Err(format!(
                "{} feature names for {width} features",
                self.features.len()
            ));
        }
        if !self.classes.is_empty() {
            match classes {
                None => return Err("class names for regression targets".into()),
                Some(c) if c != self.classes.len() => {
                    return Err(format!(
                        "{} class names for {c} classes",
                        self.classes.len()
                    ))
                }
                Some(_) => {}
            }
        }
        for (what, list) in [("feature", &self.features), ("class", &self.classes)] {
            let mut seen = std::collections::HashSet::new();
            for name in list {
                if name.is_empty() {
                    return Err(format!("an empty {what} name"));
                }
                if !seen.insert(name) {
                    return Err(format!("the {what} name '{name}' appears twice"));
                }
            }
        }
        Ok(())
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
    /// Column and class names, where the source has them (all empty otherwise).
    pub names: Names,
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
            names: Names::default(),
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
            names: self.names.clone(),
        }
    }

    /// The rows of `parts` one after another, named after the first. The parts must agree in
    /// width, in task (and target width) and in their column and class names where both
    /// have them; the class count is the largest of theirs.
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
            for (what, mine, theirs) in [
                ("column", &out.names.features, &part.names.features),
                ("class", &out.names.classes, &part.names.classes),
            ] {
                if !mine.is_empty() && !theirs.is_empty() && mine != theirs {
                    return Err(Error::Data(format!(
                        "cannot join '{}' to '{}': their {what} names differ",
                        part.name, out.name
                    )));
                }
            }
            if out.names.features.is_empty() {
                out.names.features = part.names.features.clone();
            }
            if out.names.classes.is_empty() {
                out.names.classes = part.names.classes.clone();
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

    /// This data laid out as a model trained on data named `names` expects it: where both
    /// name their feature columns, the columns in the model's order (a missing column, or
    /// one the model does not know, is an error naming it; a column named as the model's
    /// label column is dropped); where both name their classes, the labels renumbered to the
    /// model's classes (a class the model does not know is an error). What either side
    /// leaves unnamed is taken by position.
    pub fn aligned_to(&self, names: &Names) -> Result<Dataset> {
        let mut out = self.clone();
        let (mine, theirs) = (&self.names.features, &names.features);
        if !mine.is_empty() && !theirs.is_empty() && mine != theirs {
            let position: std::collections::HashMap<&str, usize> = mine
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), i))
                .collect();
            let missing: Vec<&str> = theirs
                .iter()
                .filter(|n| !position.contains_key(n.as_str()))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(Error::Data(format!(
                    "dataset '{}' has no column {}, which the model takes",
                    self.name,
                    missing.join(", ")
                )));
            }
            let extra: Vec<&str> = mine
                .iter()
                .filter(|n| !theirs.contains(n) && names.target.as_ref() != Some(n))
                .map(String::as_str)
                .collect();
            if !extra.is_empty() {
                return Err(Error::Data(format!(
                    "dataset '{}' has the column {}, which the model does not take",
                    self.name,
                    extra.join(", ")
                )));
            }
            let order: Vec<usize> = theirs.iter().map(|n| position[n.as_str()]).collect();
            out.features = Vec::with_capacity(self.len() * order.len());
            for i in 0..self.len() {
                let row = self.row(i);
                out.features.extend(order.iter().map(|&c| row[c]));
            }
            out.width = order.len();
            out.names.features = theirs.clone();
        }
        let (mine, theirs) = (&self.names.classes, &names.classes);
        if let (Targets::Classes { labels, classes }, false, false) =
            (&mut out.targets, mine.is_empty(), theirs.is_empty())
        {
            let mut map = Vec::with_capacity(mine.len());
            for name in mine {
                match theirs.iter().position(|t| t == name) {
                    Some(i) => map.push(i as u32),
                    None => {
                        return Err(Error::Data(format!(
                            "dataset '{}' has the class '{name}', which the model does not know (its classes: {})",
                            self.name,
                            theirs.join(", ")
                        )))
                    }
                }
            }
            for l in labels.iter_mut() {
                *l = map[*l as usize];
            }
            *classes = theirs.len();
            out.names.classes = theirs.clone();
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
        self.names
            .check(self.width, self.targets.classes())
            .map_err(|why| Error::Data(format!("dataset '{name}': {why}")))?;
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
/// regression). Features are in the files' raw units; scale them with [`Scaler`]. Columns are
/// named by the files' headers; iris's classes are named `setosa`, `versicolor` and
/// `virginica`, breast-cancer's `malignant` and `benign`, as scikit-learn names them.
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
        allow_missing: false,
    };
    let source = Path::new("data").join(file);
    let mut ds = parse_csv(text, &source, &opts)?;
    ds.name = name.to_string();
    // The class names scikit-learn gives (`target_names`), where they say more than the number.
    let classes: &[&str] = match name {
        "iris" => &["setosa", "versicolor", "virginica"],
        "breast-cancer" => &["malignant", "benign"],
        _ => &[],
    };
    ds.names.classes = classes.iter().map(|c| c.to_string()).collect();
    ds.validate()?;
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
            names: Default::default(),
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
            names: Default::default(),
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
        // Names from the headers, and scikit-learn's class names.
        let iris = bundled("iris").expect("iris");
        assert_eq!(iris.names.features[0], "sepal_length_cm");
        assert_eq!(iris.names.target.as_deref(), Some("target"));
        assert_eq!(iris.names.classes, ["setosa", "versicolor", "virginica"]);
        assert_eq!(iris.labels().expect("labels")[0], 0);
        assert!(digits.names.classes.is_empty());
    }

    fn named(features: &[&str], labels: Vec<u32>, classes: &[&str]) -> Dataset {
        let width = features.len();
        let rows = labels.len();
        let ds = Dataset {
            name: "n".into(),
            features: (0..rows * width).map(|v| v as f32).collect(),
            width,
            targets: Targets::Classes {
                labels,
                classes: classes.len(),
            },
            names: Names {
                features: features.iter().map(|s| s.to_string()).collect(),
                target: Some("y".into()),
                classes: classes.iter().map(|s| s.to_string()).collect(),
            },
        };
        ds.validate().expect("valid");
        ds
    }

    #[test]
    fn aligned_to_reorders_columns_and_renumbers_classes_by_name() {
        // Columns b, a; classes named in another order than the model's.
        let ds = named(&["b", "a"], vec![0, 1], &["no", "yes"]);
        let model = Names {
            features: vec!["a".into(), "b".into()],
            target: Some("y".into()),
            classes: vec!["maybe".into(), "yes".into(), "no".into()],
        };
        let out = ds.aligned_to(&model).expect("aligned");
        assert_eq!(out.features, vec![1.0, 0.0, 3.0, 2.0]);
        assert_eq!(out.labels(), Some(&[2u32, 1][..]));
        assert_eq!(out.targets.classes(), Some(3));
        out.validate().expect("valid");

        let missing = Names {
            features: vec!["a".into(), "c".into()],
            ..model.clone()
        };
        let e = ds.aligned_to(&missing).unwrap_err().to_string();
        assert!(e.contains("no column c"), "{e}");
        let unknown = Names {
            classes: vec!["no".into(), "maybe".into()],
            ..model.clone()
        };
        let e = ds.aligned_to(&unknown).unwrap_err().to_string();
        assert!(e.contains("the class 'yes'"), "{e}");
        // Nothing named on one side: by position.
        let plain = named(&["b", "a"], vec![0, 1], &["no", "yes"]);
        assert_eq!(plain.aligned_to(&Names::default()).unwrap(), plain);
    }

    #[test]
    fn names_are_checked_against_the_data() {
        let mut ds = named(&["a", "b"], vec![0, 1], &["x", "y"]);
        ds.names.classes.push("z".into());
        assert!(data_message(ds.validate()).contains("3 class names for 2 classes"));
        let mut ds = named(&["a", "b"], vec![0, 1], &["x", "y"]);
        ds.names.features = vec!["a".into()];
        assert!(data_message(ds.validate()).contains("1 feature names for 2 features"));
        let mut ds = named(&["a", "b"], vec![0, 1], &["x", "y"]);
        ds.names.classes[1] = "x".into();
        assert!(data_message(ds.validate()).contains("'x' appears twice"));
    }
}
