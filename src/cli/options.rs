//! The settings of `soma train` (and what `eval`, `predict` and `check` share with it): one
//! struct that a TOML file, the command line and a run directory's `config.json` all fill,
//! with the defaults applied in one place, and the data specification they name.

use soma::exec::Determinism;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use soma::data::{self, CsvOptions, Dataset, HeaderMode, ImputeKind, LabelColumn, ScaleKind, Task};
use soma::{Activation, Error, Init, Loss, Optimizer, OptimizerKind, Result, Schedule};

/// `--device` (and `device` in a TOML config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The best GPU adapter; the CPU path (with a warning) when there is none.
    #[default]
    Auto,
    /// A GPU adapter, or an error.
    Gpu,
    /// The CPU path: every op on the host, threaded (the plain-loop reference that `soma
    /// check` compares against is separate).
    Cpu,
}

/// `--distributed`: how the processes of a data-parallel run reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Distributed {
    /// Over MPI, one replica per rank (`mpirun -n R soma train --distributed mpi ...`); needs
    /// soma built with `--features mpi`.
    Mpi,
}

/// Every setting of a training run. `None` means "the default" (see `resolve`).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainOptions {
    /// Data: a bundled set (digits, iris, wine, breast-cancer, diabetes), mnist:DIR,
    /// idx:IMAGES,LABELS or csv:FILE [default: digits]
    #[arg(long)]
    pub data: Option<String>,
    /// CSV label column: a name, a 0-based index, or "last" [default: last]
    #[arg(long)]
    pub label_column: Option<String>,
    /// CSV header: auto, yes or no [default: auto]
    #[arg(long)]
    pub header: Option<String>,
    /// classification or regression [default: classification, diabetes regression]
    #[arg(long)]
    pub task: Option<String>,
    /// CSV: fill empty feature cells with "mean", the column's mean over the training rows
    /// (kept in the checkpoint, so that predict fills its inputs the same way) [default: an
    /// empty cell is an error]
    #[arg(long)]
    pub impute: Option<String>,
    /// Classes of a classification task, when the labels do not show them all [default:
    /// the largest label + 1, refused when far above the distinct labels seen]
    #[arg(long)]
    pub classes: Option<usize>,
    /// Layer widths, input first: e.g. 784,256,256,10 [default: inputs,64,outputs]
    #[arg(long)]
    pub layers: Option<String>,
    /// Hidden activation: relu, leaky_relu[:slope], sigmoid, tanh, gelu, identity
    /// [default: relu]
    #[arg(long)]
    pub activation: Option<String>,
    /// Output activation [default: identity]
    #[arg(long)]
    pub output_activation: Option<String>,
    /// Loss: cross_entropy, mse, bce [default: cross_entropy, mse for regression]
    #[arg(long)]
    pub loss: Option<String>,
    /// Optimizer: sgd, momentum, adam, adamw, rmsprop [default: adam]
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Learning rate [default: 1e-3 for adam/adamw, 0.01 for sgd/momentum/rmsprop]
    #[arg(long)]
    pub lr: Option<f32>,
    /// Momentum factor (momentum, rmsprop) [default: 0.9 for momentum, 0 for rmsprop]
    #[arg(long)]
    pub momentum: Option<f32>,
    /// RMSprop's smoothing constant [default: 0.99]
    #[arg(long)]
    pub alpha: Option<f32>,
    /// RMSprop: normalise by the centered second moment
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub centered: bool,
    /// Weight decay: L2 (sgd, momentum, adam) or decoupled (adamw) [default: 0, adamw 0.01]
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Learning-rate schedule: constant, step:EVERY:GAMMA, cosine[:MIN_LR] (per epoch, down to
    /// MIN_LR at the last) [default: cosine]
    #[arg(long)]
    pub schedule: Option<String>,
    /// Batch size [default: 32]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Epochs [default: 20, or on small data as many as make 800 steps (batches over the
    /// training rows), at most 200: iris trains 200]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Seed for the initial weights, the splits and the shuffles [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fraction of the training rows held out for validation, drawn with --seed and
    /// stratified by class [default: 0.1]
    #[arg(long)]
    pub val_fraction: Option<f32>,
    /// Fraction held out for the test set when the data has none of its own, drawn with
    /// --seed and stratified by class [default: 0.2]
    #[arg(long)]
    pub test_fraction: Option<f32>,
    /// Early stopping: epochs without improvement of the validation loss [default: off]
    #[arg(long)]
    pub patience: Option<usize>,
    /// Early stopping: the smallest decrease that counts as an improvement [default: 0]
    #[arg(long)]
    pub min_delta: Option<f32>,
    /// Input scaling fitted on the training split: standard, minmax, none
    /// [default: standard, none for mnist/idx]
    #[arg(long)]
    pub scale: Option<String>,
    /// Scaling of regression targets, fitted on the training split: standard, minmax, none
    /// (predictions are mapped back) [default: standard]
    #[arg(long)]
    pub scale_target: Option<String>,
    /// Weight initialisation: pytorch, xavier, he [default: pytorch]
    #[arg(long)]
    pub init_scheme: Option<String>,
    /// Start from these weights: a run directory or soma checkpoint (its activations and
    /// loss must match the run's), or a plain PyTorch state dict in safetensors
    /// (layers.N.weight/bias or an nn.Sequential's N.weight/bias); without --layers, the
    /// architecture is the file's
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Do not reshuffle the training rows each epoch
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_shuffle: bool,
    /// Replay every Nth training step on the CPU path from the device's pre-step state and
    /// compare every parameter and optimizer-state tensor (shadow.jsonl in the run
    /// directory) [default: off]
    #[arg(long)]
    pub shadow_check: Option<usize>,
    /// The relative L2 difference a shadow-checked tensor may have [default: 16·k·2⁻²⁴, k the
    /// larger of the batch and the widest layer]
    #[arg(long)]
    pub shadow_tolerance: Option<f64>,
    /// What a shadow step past the tolerance does: warn (a line, and training goes on) or
    /// stop (the run keeps its last good checkpoint and exits non-zero) [default: warn]
    #[arg(long)]
    pub shadow_action: Option<String>,
    /// default: the fastest kernels, the same bits from run to run on one adapter; strict:
    /// the same bits on every adapter that passes strict mode's self-test and on the CPU
    /// reference (docs/determinism.md) [default: default]
    #[arg(long)]
    pub deterministic: Option<String>,
    /// The device, from a TOML file only (the command line's is `--device`, which wins).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceChoice>,
}

/// The data flags of `soma eval` (the rest of a run's settings are the model's own).
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct DataOptions {
    /// Data to score: a bundled set, mnist:DIR, idx:IMAGES,LABELS or csv:FILE. The data the
    /// run trained on scores the run's test split; other data every row (mnist: its test
    /// set) [default: the run's data]
    #[arg(long)]
    pub data: Option<String>,
    /// CSV label column: a name, a 0-based index, or "last" [default: last]
    #[arg(long)]
    pub label_column: Option<String>,
    /// CSV header: auto, yes or no [default: auto]
    #[arg(long)]
    pub header: Option<String>,
    /// classification or regression [default: classification]
    #[arg(long)]
    pub task: Option<String>,
    /// Score every row of the data, the run's training rows included (and mnist's training
    /// set), instead of its test split
    #[arg(long)]
    pub all_rows: bool,
}

impl DataOptions {
    /// As training options (everything else at its default).
    pub fn as_train_options(&self) -> TrainOptions {
        TrainOptions {
            data: self.data.clone(),
            label_column: self.label_column.clone(),
            header: self.header.clone(),
            task: self.task.clone(),
            ..TrainOptions::default()
        }
    }
}

/// `TrainOptions` with every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    pub data: String,
    pub label_column: String,
    pub header: String,
    pub task: Option<String>,
    #[serde(default)]
    pub impute: Option<String>,
    #[serde(default)]
    pub classes: Option<usize>,
    pub layers: Option<Vec<usize>>,
    pub activation: String,
    pub output_activation: String,
    pub loss: Option<String>,
    pub optimizer: String,
    pub lr: Option<f32>,
    /// `None`: the optimizer's default.
    pub momentum: Option<f32>,
    #[serde(default)]
    pub alpha: Option<f32>,
    #[serde(default)]
    pub centered: bool,
    pub weight_decay: Option<f32>,
    pub schedule: String,
    pub batch_size: usize,
    pub epochs: usize,
    pub seed: u64,
    pub val_fraction: f32,
    pub test_fraction: f32,
    pub patience: Option<usize>,
    pub min_delta: f32,
    pub scale: Option<String>,
    #[serde(default)]
    pub scale_target: Option<String>,
    pub init_scheme: String,
    pub init: Option<PathBuf>,
    pub shuffle: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_check: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_tolerance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deterministic: Option<String>,
}

/// The settings of a run that name a choice, parsed into their types: made from `Resolved`
/// before any data is read, so that a typo fails at once.
#[derive(Clone, Debug, PartialEq)]
pub struct Choices {
    pub data: DataSpec,
    pub task: Option<Task>,
    pub impute: Option<ImputeKind>,
    pub hidden: Activation,
    pub output: Activation,
    /// `None`: the task's default (cross-entropy for classes, MSE for values).
    pub loss: Option<Loss>,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    /// `None`: the data's default (`DataSpec::default_scale`).
    pub scale: Option<ScaleKind>,
    /// `None`: standardised.
    pub scale_target: Option<ScaleKind>,
    pub init: Init,
    pub determinism: Determinism,
}

impl Resolved {
    /// Every named choice parsed; the first that does not parse is the error.
    pub fn choices(&self) -> Result<Choices> {
        let kind: OptimizerKind = self.optimizer.parse()?;
        let mut optimizer = Optimizer::new(kind);
        if let Some(lr) = self.lr {
            optimizer.lr = lr;
        }
        if let Some(m) = self.momentum {
            optimizer.momentum = m;
        }
        if let Some(a) = self.alpha {
            optimizer.alpha = a;
        }
        optimizer.centered = self.centered;
        if let Some(wd) = self.weight_decay {
            optimizer.weight_decay = wd;
        }
        optimizer.validate()?;
        self.check_numbers()?;
        let data = DataSpec::parse(&self.data)?;
        let task: Option<Task> = self.task.as_deref().map(str::parse).transpose()?;
        // What only a CSV file's reading uses, or a task the data already fixes, would be
        // ignored: an error instead.
        if !matches!(data, DataSpec::Csv(_)) {
            let own = match &data {
                DataSpec::Bundled(name) => data::bundled_task(name),
                DataSpec::Mnist(_) | DataSpec::Idx(..) => Some(Task::Classification),
                DataSpec::Csv(_) => None,
            };
            if let (Some(t), Some(own)) = (task, own) {
                if t != own {
                    return Err(Error::Config(format!(
                        "--task {}: --data {} is a {} task; --task applies to csv: data",
                        self.task.as_deref().unwrap_or_default(),
                        self.data,
                        match own {
                            Task::Classification => "classification",
                            Task::Regression => "regression",
                        }
                    )));
                }
            }
            if let Some(i) = &self.impute {
                return Err(Error::Config(format!(
                    "--impute {i}: it applies to csv: data (the other data has no missing values), not to --data {}",
                    self.data
                )));
            }
            for (flag, value, default) in [
                ("--label-column", &self.label_column, "last"),
                ("--header", &self.header, "auto"),
            ] {
                if value != default {
                    return Err(Error::Config(format!(
                        "{flag} {value}: it applies to csv: data, not to --data {}",
                        self.data
                    )));
                }
            }
        }
        let schedule: Schedule = self.schedule.parse()?;
        if let Schedule::Cosine { min_lr } = schedule {
            if min_lr > optimizer.lr {
                return Err(Error::Config(format!(
                    "--schedule {}: the final rate {min_lr} is above the learning rate {}",
                    self.schedule, optimizer.lr
                )));
            }
        }
        Ok(Choices {
            data,
            task,
            impute: self.impute.as_deref().map(str::parse).transpose()?,
            hidden: self.activation.parse()?,
            output: self.output_activation.parse()?,
            loss: self.loss.as_deref().map(str::parse).transpose()?,
            optimizer,
            schedule,
            scale: self.scale.as_deref().map(str::parse).transpose()?,
            scale_target: self.scale_target.as_deref().map(str::parse).transpose()?,
            init: self.init_scheme.parse()?,
            determinism: Determinism::from_flag(self.deterministic.as_deref())?,
        })
    }
}

impl Resolved {
    /// The numeric settings that the types do not bound: each in its range, or an error
    /// naming its flag.
    fn check_numbers(&self) -> Result<()> {
        let out = |flag: &str, v: String, what: &str| {
            Err(Error::Config(format!("{flag} {v}: must be {what}")))
        };
        let f = &self;
        if !(f.val_fraction.is_finite() && (0.0..1.0).contains(&f.val_fraction)) {
            let v = f.val_fraction.to_string();
            return out("--val-fraction", v, "a validation fraction in [0, 1)");
        }
        if !(f.test_fraction.is_finite() && f.test_fraction > 0.0 && f.test_fraction < 1.0) {
            let v = f.test_fraction.to_string();
            return out("--test-fraction", v, "a test fraction in (0, 1)");
        }
        if !(f.min_delta.is_finite() && f.min_delta >= 0.0) {
            let v = f.min_delta.to_string();
            return out("--min-delta", v, "an improvement of 0 or more");
        }
        if f.batch_size == 0 {
            return out("--batch-size", "0".into(), "a batch of at least 1 row");
        }
        if f.epochs == 0 {
            return out("--epochs", "0".into(), "at least 1 epoch");
        }
        if let Some(c) = f.classes.filter(|&c| c < 2) {
            return out("--classes", c.to_string(), "at least 2 classes");
        }
        if f.patience == Some(0) {
            return out("--patience", "0".into(), "at least 1 epoch");
        }
        if f.shadow_check == Some(0) {
            return out("--shadow-check", "0".into(), "at least 1 step");
        }
        if let Some(t) = f.shadow_tolerance.filter(|t| !(t.is_finite() && *t >= 0.0)) {
            return out(
                "--shadow-tolerance",
                t.to_string(),
                "a finite number, 0 or more",
            );
        }
        match f.shadow_action.as_deref() {
            None | Some("warn") | Some("stop") => {}
            Some(a) => return out("--shadow-action", a.into(), "warn or stop"),
        }
        if f.shadow_check.is_none() && (f.shadow_tolerance.is_some() || f.shadow_action.is_some()) {
            return Err(Error::Config(
                "--shadow-tolerance and --shadow-action apply to --shadow-check N; pass it too"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl Resolved {
    /// The options that resolve to these settings again.
    pub fn as_options(&self) -> TrainOptions {
        TrainOptions {
            data: Some(self.data.clone()),
            label_column: Some(self.label_column.clone()),
            header: Some(self.header.clone()),
            task: self.task.clone(),
            impute: self.impute.clone(),
            classes: self.classes,
            layers: self.layers.as_ref().map(|w| {
                w.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            activation: Some(self.activation.clone()),
            output_activation: Some(self.output_activation.clone()),
            loss: self.loss.clone(),
            optimizer: Some(self.optimizer.clone()),
            lr: self.lr,
            momentum: self.momentum,
            alpha: self.alpha,
            centered: self.centered,
            weight_decay: self.weight_decay,
            schedule: Some(self.schedule.clone()),
            batch_size: Some(self.batch_size),
            epochs: Some(self.epochs),
            seed: Some(self.seed),
            val_fraction: Some(self.val_fraction),
            test_fraction: Some(self.test_fraction),
            patience: self.patience,
            min_delta: Some(self.min_delta),
            scale: self.scale.clone(),
            scale_target: self.scale_target.clone(),
            init_scheme: Some(self.init_scheme.clone()),
            init: self.init.clone(),
            no_shuffle: !self.shuffle,
            shadow_check: self.shadow_check,
            shadow_tolerance: self.shadow_tolerance,
            shadow_action: self.shadow_action.clone(),
            deterministic: self.deterministic.clone(),
            device: None,
        }
    }
}

/// The flags (`--name`) whose settings differ between `a` and `b`. `--layers` counts as
/// equal when it names `widths`, the network that `a`'s default built.
pub fn differing_flags(a: &Resolved, b: &Resolved, widths: &[usize]) -> Vec<String> {
    let (Ok(serde_json::Value::Object(x)), Ok(serde_json::Value::Object(y))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["the settings".into()];
    };
    x.iter()
        .filter(|(k, v)| y.get(*k) != Some(*v))
        .filter(|(k, _)| !(k.as_str() == "layers" && b.layers.as_deref() == Some(widths)))
        .map(|(k, _)| match k.as_str() {
            "shuffle" => "--no-shuffle".to_string(),
            k => format!("--{}", k.replace('_', "-")),
        })
        .collect()
}

impl TrainOptions {
    /// Reads the settings of `--config`: a TOML file (keys as the flags, with `_` for `-`,
    /// and `device`), or a run directory's `config.json` (its `options`), so that a run can
    /// be repeated.
    pub fn from_config_file(path: &Path) -> Result<TrainOptions> {
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let format = |line: Option<usize>, message: String| Error::Format {
                path: path.to_path_buf(),
                line,
                message,
            };
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format(Some(e.line()), e.to_string()))?;
            let options = value.get("options").cloned().ok_or_else(|| {
                format(
                    None,
                    "no \"options\" object: --config takes a TOML file or a run's config.json"
                        .into(),
                )
            })?;
            let resolved: Resolved = serde_json::from_value(options)
                .map_err(|e| format(None, format!("options: {e}")))?;
            return Ok(resolved.as_options());
        }
        Self::from_toml(path)
    }

    /// Reads a TOML file of the same settings (keys as the flags, with `_` for `-`).
    pub fn from_toml(path: &Path) -> Result<TrainOptions> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        TrainOptions::from_toml_str(&text, path)
    }

    /// Parses the text of a TOML file of settings; `path` only names it in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<TrainOptions> {
        toml::from_str(text).map_err(|e| {
            // One line: the line number and text of the error's span, and the message (the
            // crate's own rendering is a multi-line snippet).
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let source = line
                .and_then(|l| text.lines().nth(l - 1))
                .map(|t| format!(" (in `{}`)", t.trim()))
                .unwrap_or_default();
            Error::Format {
                path: path.to_path_buf(),
                line,
                message: format!("{}{source}", e.message().trim().replace('\n', " ")),
            }
        })
    }

    /// These options with `over`'s set values taking precedence.
    pub fn overridden_by(&self, over: &TrainOptions) -> TrainOptions {
        macro_rules! pick {
            ($($f:ident),*) => {
                TrainOptions { $($f: over.$f.clone().or_else(|| self.$f.clone()),)* no_shuffle: over.no_shuffle || self.no_shuffle, centered: over.centered || self.centered, device: over.device.or(self.device) }
            };
        }
        pick!(
            data,
            label_column,
            header,
            task,
            impute,
            classes,
            layers,
            activation,
            output_activation,
            loss,
            optimizer,
            lr,
            momentum,
            alpha,
            weight_decay,
            schedule,
            batch_size,
            epochs,
            seed,
            val_fraction,
            test_fraction,
            patience,
            min_delta,
            scale,
            scale_target,
            init_scheme,
            init,
            shadow_check,
            shadow_tolerance,
            shadow_action,
            deterministic
        )
    }

    pub fn resolve(&self) -> Result<Resolved> {
        let layers = self
            .layers
            .as_deref()
            .map(|s| {
                s.split(',')
                    .map(|w| {
                        w.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|&w| w > 0)
                            .ok_or_else(|| {
                                Error::Config(format!(
                                    "--layers '{s}': '{w}' is not a positive integer"
                                ))
                            })
                    })
                    .collect::<Result<Vec<usize>>>()
            })
            .transpose()?;
        Ok(Resolved {
            data: self.data.clone().unwrap_or_else(|| "digits".into()),
            label_column: self.label_column.clone().unwrap_or_else(|| "last".into()),
            header: self.header.clone().unwrap_or_else(|| "auto".into()),
            task: self.task.clone(),
            impute: self.impute.clone(),
            classes: self.classes,
            layers,
            activation: self.activation.clone().unwrap_or_else(|| "relu".into()),
            output_activation: self
                .output_activation
                .clone()
                .unwrap_or_else(|| "identity".into()),
            loss: self.loss.clone(),
            optimizer: self.optimizer.clone().unwrap_or_else(|| "adam".into()),
            lr: self.lr,
            momentum: self.momentum,
            alpha: self.alpha,
            centered: self.centered,
            weight_decay: self.weight_decay,
            // A rate that decays over the epoch budget: on MNIST (784-256-256-10, Adam, 10
            // epochs) it is the difference between 97.7% and 98.4% test accuracy.
            schedule: self.schedule.clone().unwrap_or_else(|| "cosine".into()),
            batch_size: self.batch_size.unwrap_or(32),
            // Raised for small data by `soma train` once the data is read (`default_epochs`).
            epochs: self.epochs.unwrap_or(20),
            seed: self.seed.unwrap_or(0),
            val_fraction: self.val_fraction.unwrap_or(0.1),
            test_fraction: self.test_fraction.unwrap_or(0.2),
            patience: self.patience,
            min_delta: self.min_delta.unwrap_or(0.0),
            scale: self.scale.clone(),
            scale_target: self.scale_target.clone(),
            init_scheme: self.init_scheme.clone().unwrap_or_else(|| "pytorch".into()),
            init: self.init.clone(),
            shuffle: !self.no_shuffle,
            shadow_check: self.shadow_check,
            shadow_tolerance: self.shadow_tolerance,
            shadow_action: self.shadow_action.clone(),
            deterministic: self.deterministic.clone(),
        })
    }
}

/// The epochs of a run that does not set them: 20, or as many as make 800 optimizer steps
/// when 20 epochs of `rows` training rows in batches of `batch_size` make fewer, at most 200.
/// Digits (1294 training rows, 41 steps an epoch) trains 20 epochs; iris (108 rows, 4 steps)
/// 200, where 20 would leave it at about 80% test accuracy.
pub fn default_epochs(rows: usize, batch_size: usize) -> usize {
    let steps = rows.div_ceil(batch_size.max(1)).max(1);
    800usize.div_ceil(steps).clamp(20, 200)
}

/// Where the data comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    Bundled(String),
    Mnist(PathBuf),
    Idx(PathBuf, PathBuf),
    Csv(PathBuf),
}

impl DataSpec {
    pub fn parse(s: &str) -> Result<DataSpec> {
        if let Some(dir) = s.strip_prefix("mnist:") {
            return Ok(DataSpec::Mnist(dir.into()));
        }
        if let Some(rest) = s.strip_prefix("idx:") {
            // IMAGES,LABELS; where the paths hold commas themselves, the one split that
            // names two existing files.
            let splits: Vec<(&str, &str)> = rest
                .match_indices(',')
                .map(|(i, _)| (&rest[..i], &rest[i + 1..]))
                .collect();
            let both = |(a, b): &&(&str, &str)| Path::new(a).is_file() && Path::new(b).is_file();
            let (images, labels) = match splits[..] {
                [] => {
                    return Err(Error::Config(format!(
                        "--data '{s}': idx: takes IMAGES,LABELS"
                    )))
                }
                [one] => one,
                _ => match splits.iter().filter(both).collect::<Vec<_>>()[..] {
                    [one] => *one,
                    [] => {
                        return Err(Error::Config(format!(
                            "--data '{s}': the paths hold commas, and no split of them at a comma names two existing files (IMAGES,LABELS)"
                        )))
                    }
                    _ => {
                        return Err(Error::Config(format!(
                            "--data '{s}': more than one split at a comma names two existing files; rename them"
                        )))
                    }
                },
            };
            return Ok(DataSpec::Idx(images.into(), labels.into()));
        }
        if let Some(file) = s.strip_prefix("csv:") {
            return Ok(DataSpec::Csv(file.into()));
        }
        if data::BUNDLED.contains(&s) {
            return Ok(DataSpec::Bundled(s.into()));
        }
        Err(Error::Config(format!(
            "--data '{s}': not a bundled dataset ({}) nor mnist:DIR, idx:IMAGES,LABELS or csv:FILE",
            data::BUNDLED.join(", ")
        )))
    }

    /// Pixel data is already in [0, 1]; everything else is standardised by default.
    pub fn default_scale(&self) -> ScaleKind {
        match self {
            DataSpec::Mnist(_) | DataSpec::Idx(..) => ScaleKind::None,
            _ => ScaleKind::Standard,
        }
    }

    /// Loads the data: (training rows, the data's own test set if it has one).
    pub fn load(&self, o: &Resolved, c: &Choices) -> Result<(Dataset, Option<Dataset>)> {
        match self {
            DataSpec::Bundled(name) => Ok((data::bundled(name)?, None)),
            DataSpec::Mnist(dir) => {
                let (train, test) = data::load_mnist_dir(dir)?;
                Ok((train, Some(test)))
            }
            DataSpec::Idx(images, labels) => Ok((data::load_idx(images, labels)?, None)),
            DataSpec::Csv(path) => Ok((data::load_csv(path, &csv_options(o, c)?)?, None)),
        }
    }
}

/// The CSV reading options of a run.
pub fn csv_options(o: &Resolved, c: &Choices) -> Result<CsvOptions> {
    let label_column = match o.label_column.as_str() {
        "last" => LabelColumn::Last,
        s => match s.parse::<usize>() {
            Ok(i) => LabelColumn::Index(i),
            Err(_) => LabelColumn::Name(s.to_string()),
        },
    };
    let header = match o.header.as_str() {
        "auto" => HeaderMode::Auto,
        "yes" | "true" | "present" => HeaderMode::Present,
        "no" | "false" | "absent" => HeaderMode::Absent,
        h => {
            return Err(Error::Config(format!(
                "--header '{h}': use auto, yes or no"
            )))
        }
    };
    let task = c.task.unwrap_or(Task::Classification);
    Ok(CsvOptions {
        label_column,
        header,
        task,
        allow_missing: c.impute.is_some(),
    })
}
