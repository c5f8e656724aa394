//! `soma eval`: loss, accuracy and the confusion matrix of a trained model on a dataset (for
//! regression, the loss and RMSE, MAE and R² in the targets' own units): by
//! default the test split of the run that made it, also when `--data` names the data the run
//! trained on (`--all-rows` scores every row); other data is scored whole.

use std::path::{Path, PathBuf};

use serde::Serialize;

use soma::data::{Dataset, Task};
use soma::{Error, Model, Result};

use super::options::{DataOptions, DataSpec, Resolved};
use super::prepare::prepare_data;
use super::train::RunConfig;
use super::{load_model, open_device, DeviceChoice};

pub struct EvalCommand {
    pub model: PathBuf,
    pub data: DataOptions,
    pub device: DeviceChoice,
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    data: String,
    samples: usize,
    loss: f32,
    accuracy: Option<f32>,
    /// The classes' names, in class order (their numbers where the data names none);
    /// null for regression.
    classes: Option<Vec<String>>,
    /// rows: true class, columns: predicted class.
    confusion: Option<Vec<Vec<u32>>>,
    /// Regression only: RMSE, MAE and R² in the targets' own units (see `soma::metrics`);
    /// null for classification.
    rmse: Option<f64>,
    mae: Option<f64>,
    r2: Option<f64>,
}

/// What `soma eval` scores.
enum Source<'a> {
    /// The data of the run that made the model, read and split as the run did.
    Run(&'a RunConfig),
    /// Other data (the `--data` text), scaled with the checkpoint's scaler.
    Other(&'a str),
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    let (file, ck) = load_model(&cmd.model)?;
    let config_path = cmd.model.join("config.json");
    let run_config: Option<RunConfig> = if cmd.model.is_dir() && config_path.exists() {
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        Some(serde_json::from_str(&text).map_err(|e| Error::Format {
            path: config_path.clone(),
            line: Some(e.line()),
            message: e.to_string(),
        })?)
    } else {
        None
    };
    // The data: the run's own (its test split, or every row), or other data as given (every
    // row, scaled with the checkpoint's scaler).
    let rows = if cmd.data.all_rows {
        "all rows"
    } else {
        "test split"
    };
    let only_all_rows = DataOptions {
        all_rows: cmd.data.all_rows,
        ..DataOptions::default()
    };
    let source =
        match (&cmd.data.data, &run_config) {
            (None, _) if cmd.data != only_all_rows => return Err(Error::Config(
                "--label-column, --header and --task describe the data of --data; pass --data too"
                    .into(),
            )),
            (None, Some(rc)) => Source::Run(rc),
            (None, None) => {
                return Err(Error::Config(format!(
                    "{}: no run directory config to take the test split from; pass --data",
                    file.display()
                )))
            }
            (Some(_), Some(rc)) if same_data(&cmd.data, &rc.options)? => Source::Run(rc),
            (Some(spec_text), _) => Source::Other(spec_text),
        };
    let (name, test): (String, Dataset) = match source {
        Source::Run(rc) => {
            let choices = rc.options.choices()?;
            let p = prepare_data(&rc.options, &choices)?;
            let scored = match cmd.data.all_rows {
                true => {
                    let mut parts = vec![&p.train];
                    parts.extend(p.val.as_ref());
                    parts.push(&p.test);
                    Dataset::concat(&parts)?
                }
                false => p.test,
            };
            (format!("{} ({rows})", rc.options.data), scored)
        }
        Source::Other(spec_text) => {
            let mut options = cmd.data.as_train_options();
            // Empty cells of a CSV are read, to be filled by the model's own imputer.
            if ck.imputer.is_some() && matches!(DataSpec::parse(spec_text)?, DataSpec::Csv(_)) {
                options.impute = Some("mean".into());
            }
            let o = options.resolve()?;
            let choices = o.choices()?;
            let (all, own_test) = choices.data.load(&o, &choices)?;
            let (d, rows) = match (own_test, cmd.data.all_rows) {
                (Some(t), true) => (Dataset::concat(&[&all, &t])?, "all rows"),
                (Some(t), false) => (t, "test set"),
                (None, _) => (all, "all rows"),
            };
            // Columns and classes matched by name where both sides name them.
            let mut d = d.aligned_to(&ck.names)?;
            if let Some(imputer) = &ck.imputer {
                imputer.apply(&mut d)?;
            }
            if d.width != ck.network.input_width() {
                return Err(Error::Data(format!(
                    "{spec_text} has {} features per row but the model {} takes {}",
                    d.width,
                    file.display(),
                    ck.network.input_width()
                )));
            }
            if let Some(s) = &ck.scaler {
                s.apply(&mut d)?;
            }
            if let Some(s) = &ck.target_scaler {
                super::prepare::scale_targets(&mut d, s)?;
            }
            (format!("{spec_text} ({rows})"), d)
        }
    };
    // The data is scaled above: the model takes it as it is.
    let model = Model::with_params(ck.network.clone(), ck.params.clone())?.with_loss(ck.loss);
    let opened = open_device(cmd.device)?;
    let device = opened.device();
    let e = model.evaluate(device, &test, 1024)?;
    let confusion = match test.targets.classes() {
        Some(classes) => {
            let outputs = model.predict(device, &test.features, test.len())?;
            let predicted = model.classes_of(&outputs);
            let mut m = vec![vec![0u32; classes.max(2)]; classes.max(2)];
            for (t, p) in test.labels().unwrap_or(&[]).iter().zip(&predicted) {
                if let Some(cell) = m.get_mut(*t as usize).and_then(|r| r.get_mut(*p as usize)) {
                    *cell += 1;
                }
            }
            Some(m)
        }
        None => None,
    };
    let regression =
        super::report::regression_in_units(&model, device, &test, ck.target_scaler.as_ref())?;
    let report = Report {
        data: name,
        samples: e.samples,
        loss: e.loss,
        accuracy: e.accuracy,
        classes: confusion
            .as_ref()
            .map(|m| (0..m.len()).map(|c| ck.names.class(c)).collect()),
        confusion,
        rmse: regression.map(|m| m.rmse),
        mae: regression.map(|m| m.mae),
        r2: regression.map(|m| m.r2),
    };
    // Built whole, then written once: a closed pipe (`eval | head`) ends quietly.
    let mut out = String::new();
    if cmd.json {
        out = serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        out.push('\n');
        return soma::fs::write_output(Path::new("-"), out.as_bytes(), &[]);
    }
    out += &format!(
        "{}: {} samples on {}\n",
        report.data,
        report.samples,
        device.name()
    );
    out += &format!("loss {:.5}\n", report.loss);
    if let Some(a) = report.accuracy {
        out += &format!("accuracy {:.2}%\n", 100.0 * a);
    }
    if let Some(m) = &regression {
        out += &super::report::regression_line(m);
        out.push('\n');
    }
    if let (Some(m), Some(names)) = (&report.confusion, &report.classes) {
        out += &confusion_table(m, names);
    }
    soma::fs::write_output(Path::new("-"), out.as_bytes(), &[])
}

/// The confusion matrix `m` (rows: true class, columns: predicted) as a table labelled with
/// the classes' `names`, each column as wide as its name or count needs.
fn confusion_table(m: &[Vec<u32>], names: &[String]) -> String {
    let mut out = String::from("confusion matrix (rows: true class, columns: predicted):\n");
    let chars = |s: &str| s.chars().count();
    let label_w = names.iter().map(|n| chars(n)).max().unwrap_or(0);
    let widths: Vec<usize> = names
        .iter()
        .enumerate()
        .map(|(c, n)| {
            let count = m.iter().map(|r| r[c].to_string().len()).max().unwrap_or(1);
            chars(n).max(count).max(4)
        })
        .collect();
    out += &" ".repeat(label_w);
    for (n, w) in names.iter().zip(&widths) {
        out += &format!("  {n:>w$}");
    }
    out.push('\n');
    for (name, row) in names.iter().zip(m) {
        out += &format!("{name:>label_w$}");
        for (v, w) in row.iter().zip(&widths) {
            out += &format!("  {v:>w$}");
        }
        out.push('\n');
    }
    out
}

/// Whether eval's data flags name the data `run` trained on, read the same way: the same
/// bundled set or files (paths compared once resolved), and no `--label-column`, `--header`
/// or `--task` that differs from the run's.
fn same_data(given: &DataOptions, run: &Resolved) -> Result<bool> {
    let Some(data) = &given.data else {
        return Ok(true);
    };
    let (mine, theirs) = (DataSpec::parse(data)?, DataSpec::parse(&run.data)?);
    let task = |spec: &DataSpec, task: Option<&str>| -> Result<Task> {
        let own = match spec {
            DataSpec::Bundled(name) => soma::data::bundled_task(name),
            DataSpec::Mnist(_) | DataSpec::Idx(..) | DataSpec::Csv(_) => None,
        };
        Ok(match task {
            Some(t) => t.parse()?,
            None => own.unwrap_or(Task::Classification),
        })
    };
    let agrees = |flag: &Option<String>, stored: &str| flag.as_deref().is_none_or(|f| f == stored);
    Ok(resolved(mine) == resolved(theirs.clone())
        && agrees(&given.label_column, &run.label_column)
        && agrees(&given.header, &run.header)
        && (given.task.is_none()
            || task(&theirs, given.task.as_deref())? == task(&theirs, run.task.as_deref())?))
}

/// `spec` with its paths made absolute where they exist, so that two spellings of one file
/// compare equal.
fn resolved(spec: DataSpec) -> DataSpec {
    let real = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    match spec {
        DataSpec::Bundled(name) => DataSpec::Bundled(name),
        DataSpec::Mnist(dir) => DataSpec::Mnist(real(dir)),
        DataSpec::Idx(images, labels) => DataSpec::Idx(real(images), real(labels)),
        DataSpec::Csv(file) => DataSpec::Csv(real(file)),
    }
}
