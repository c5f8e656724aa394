//! `soma train`: load and split the data, fit the scaling, build the network, train with a
//! progress bar, and leave a run directory (checkpoint, metrics.jsonl, curves.svg,
//! config.json). The directory is written as `DIR.partial` and renamed to `DIR` only when
//! the run has finished, so a failed run never leaves a directory that looks complete; a
//! `.partial` directory holds the last finished epoch and `--resume` continues it exactly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use soma::checkpoint::{self, Checkpoint, Resume};
use soma::data::{Dataset, ScaleKind, Scaler};
use soma::metrics::RegressionMetrics;
use soma::trainer::{EarlyStopping, EpochMetrics, Flow, TrainConfig, Trainer};
use soma::{Error, Loss, Model, Network, Optimizer, Result};

use super::options::{self, Choices, Resolved, TrainOptions};
use super::run_dir::{RunDir, Start};
use super::{open_device, DeviceChoice};

/// What `config.json` of a run directory holds: every setting, resolved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub options: Resolved,
    pub network: Network,
    pub loss: Loss,
    pub optimizer: Optimizer,
    pub train: TrainConfig,
    pub scale: ScaleKind,
    /// Classes of a classification task.
    pub classes: Option<usize>,
    pub device: String,
    pub soma_version: String,
}

/// The prepared data of a run: scaled training, validation and test sets.
pub struct Prepared {
    pub train: Dataset,
    pub val: Option<Dataset>,
    pub test: Dataset,
    pub scaler: Scaler,
    /// The scaling of regression targets (None for classification).
    pub target_scaler: Option<Scaler>,
}

/// Scales the regression targets of `d` in place.
pub fn scale_targets(d: &mut Dataset, s: &Scaler) -> Result<()> {
    if let soma::data::Targets::Values { values, width } = &mut d.targets {
        for row in values.chunks_mut((*width).max(1)) {
            s.apply_row(row)?;
        }
    }
    Ok(())
}

/// Loads, splits and scales the data as the options say.
pub fn prepare_data(o: &Resolved, c: &Choices) -> Result<Prepared> {
    let (mut all, mut own_test) = c.data.load(o, c)?;
    set_classes(&mut all, o.classes, &o.data)?;
    if let Some(t) = own_test.as_mut() {
        set_classes(t, o.classes.or(all.targets.classes()), &o.data)?;
    }
    // Both splits are seeded and stratified by class (`Dataset::split`): a file sorted by
    // class still tests and validates on every class.
    let flag = |name: &str| {
        let name = name.to_string();
        move |e: Error| match e {
            Error::Config(m) => Error::Config(format!("{name}: {m}")),
            e => e,
        }
    };
    let (train_all, test) = match own_test {
        Some(t) => (all, t),
        None => all
            .split(o.test_fraction, o.seed)
            .map_err(flag("--test-fraction"))?,
    };
    let scale = c.scale.unwrap_or_else(|| c.data.default_scale());
    let scaler = Scaler::fit(scale, &train_all);
    let (mut train, mut val) = if o.val_fraction > 0.0 {
        let (t, v) = train_all
            .split(o.val_fraction, o.seed)
            .map_err(flag("--val-fraction"))?;
        (t, Some(v))
    } else {
        (train_all, None)
    };
    let mut test = test;
    scaler.apply(&mut train)?;
    if let Some(v) = val.as_mut() {
        scaler.apply(v)?;
    }
    scaler.apply(&mut test)?;
    // Regression targets are standardised too (fitted on the training rows), so that the
    // default learning rate suits any target range; predictions are mapped back.
    let target_scaler = match &train.targets {
        soma::data::Targets::Values { values, width } => {
            let kind = c.scale_target.unwrap_or(ScaleKind::Standard);
            let s = Scaler::fit_values(kind, values, *width);
            scale_targets(&mut train, &s)?;
            if let Some(v) = val.as_mut() {
                scale_targets(v, &s)?;
            }
            scale_targets(&mut test, &s)?;
            Some(s)
        }
        soma::data::Targets::Classes { .. } => None,
    };
    Ok(Prepared {
        train,
        val,
        test,
        scaler,
        target_scaler,
    })
}

/// The class count of `data`: `classes` when given (at least the largest label + 1), else
/// the largest label + 1, refused when it is far above the number of distinct labels (one
/// stray label of 1000000 would otherwise make a million-class model).
fn set_classes(data: &mut Dataset, classes: Option<usize>, name: &str) -> Result<()> {
    let soma::data::Targets::Classes { labels, classes: n } = &mut data.targets else {
        return match classes {
            Some(_) => Err(Error::Config(format!(
                "--classes: {name} holds regression targets, not classes"
            ))),
            None => Ok(()),
        };
    };
    let top = labels.iter().max().map_or(0, |&m| m as usize + 1);
    match classes {
        Some(c) if c < top => Err(Error::Data(format!(
            "--classes {c}: {name} has the label {}",
            top - 1
        ))),
        Some(c) => {
            *n = c;
            Ok(())
        }
        None => {
            let mut seen = labels.clone();
            seen.sort_unstable();
            seen.dedup();
            let distinct = seen.len();
            if top > (2 * distinct).max(distinct + 10) {
                return Err(Error::Data(format!(
                    "{name}: its labels run up to {} but only {distinct} distinct labels appear ({}); a model of {top} classes would be mostly unused. Pass --classes {top} if that is meant",
                    top - 1,
                    seen.iter()
                        .take(8)
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                        + if distinct > 8 { ", ..." } else { "" }
                )));
            }
            Ok(())
        }
    }
}

/// Refuses a run whose tensors would not fit in this machine's free memory, before any is
/// allocated (an allocation that fails aborts the process).
fn check_memory(net: &Network, o: &Resolved, optimizer: &Optimizer) -> Result<()> {
    let Some(available) = available_memory() else {
        return Ok(());
    };
    let params = net.parameter_bytes().unwrap_or(u64::MAX);
    // Parameters, gradients and optimizer slots (host copies and the CPU path), and one
    // batch's activations and deltas per layer.
    let slots = 2 + optimizer.kind.state_names().len() as u64;
    let widths: u64 = net.widths().iter().map(|&w| w as u64).sum();
    let needed = params.saturating_mul(slots).saturating_add(
        (o.batch_size as u64)
            .saturating_mul(widths)
            .saturating_mul(4 * 3),
    );
    if needed > available {
        return Err(Error::Config(format!(
            "--layers {}: the network needs about {:.1} GiB ({} parameters with their gradients and optimizer state), more than the {:.1} GiB of memory available",
            join(&net.widths()),
            needed as f64 / (1u64 << 30) as f64,
            params / 4,
            available as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}

/// MemAvailable of /proc/meminfo in bytes (Linux); `None` elsewhere.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The network the options describe for this data.
pub fn build_network(o: &Resolved, c: &Choices, data: &Dataset, loss: Loss) -> Result<Network> {
    let outputs = match (data.targets.classes(), loss) {
        (Some(2), Loss::BinaryCrossEntropy) => 1,
        (Some(c), _) => c,
        (None, _) => match &data.targets {
            soma::data::Targets::Values { width, .. } => *width,
            _ => 1,
        },
    };
    let widths = match &o.layers {
        Some(w) => w.clone(),
        None => vec![data.width, 64, outputs],
    };
    if widths.first() != Some(&data.width) {
        return Err(Error::Config(format!(
            "--layers {}: the first width must be the data's {} features",
            join(&widths),
            data.width
        )));
    }
    if widths.last() != Some(&outputs) {
        return Err(Error::Config(format!(
            "--layers {}: the last width must be {outputs} ({})",
            join(&widths),
            match data.targets.classes() {
                Some(c) => format!("{c} classes with {loss}"),
                None => "the target width".into(),
            }
        )));
    }
    let net = Network::mlp(&widths, c.hidden, c.output)?;
    check_memory(&net, o, &c.optimizer)?;
    Ok(net)
}

fn join(w: &[usize]) -> String {
    w.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The loss the options name, or the task's default.
pub fn choose_loss(c: &Choices, data: &Dataset) -> Result<Loss> {
    match c.loss {
        Some(l) => Ok(l),
        None => Ok(if data.targets.classes().is_some() {
            Loss::SoftmaxCrossEntropy
        } else {
            Loss::Mse
        }),
    }
}

pub fn train_config(o: &Resolved, c: &Choices) -> Result<TrainConfig> {
    Ok(TrainConfig {
        epochs: o.epochs,
        batch_size: o.batch_size,
        shuffle: o.shuffle,
        seed: o.seed,
        // Recorded for config.json; the split itself is made by `prepare_data`.
        validation_fraction: (o.val_fraction > 0.0).then_some(o.val_fraction),
        early_stopping: o.patience.map(|patience| EarlyStopping {
            patience,
            min_delta: o.min_delta,
            restore_best: true,
        }),
        schedule: c.schedule,
        log_every: 0,
    })
}

/// The arguments of `soma train` beyond the shared options.
pub struct TrainCommand {
    pub options: TrainOptions,
    pub config: Option<PathBuf>,
    /// `None`: the TOML config's `device`, else auto.
    pub device: Option<DeviceChoice>,
    pub out: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    pub json: bool,
    pub stop_after: Option<usize>,
}

/// The summary `--json` prints.
#[derive(Serialize)]
struct Summary {
    test_loss: f32,
    test_accuracy: Option<f32>,
    /// Regression only: RMSE, MAE and R² of the test split in the targets' own units
    /// (see `soma::metrics`); null for classification.
    rmse: Option<f64>,
    mae: Option<f64>,
    r2: Option<f64>,
    epochs_run: usize,
    stopped_early: bool,
    wall_seconds: f64,
    samples_per_second: f64,
    adapter: String,
    run_dir: PathBuf,
}

/// The default run directory names, `runs/<UTC timestamp>` then `-2`, `-3`, ...: a second
/// run started within the same second takes the next free one.
fn default_run_dirs() -> impl Iterator<Item = PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // UTC timestamp YYYYMMDD-HHMMSS from the Unix time (no date crate needed).
    let (days, rem) = (secs / 86400, secs % 86400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (y, mo, d) = civil_from_days(days as i64);
    let base = format!("runs/{y:04}{mo:02}{d:02}-{h:02}{m:02}{s:02}");
    std::iter::once(PathBuf::from(&base))
        .chain((2..).map(move |n| PathBuf::from(format!("{base}-{n}"))))
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn run(cmd: TrainCommand) -> Result<()> {
    let started = Instant::now();
    // Settings: a resumed run's own config, else TOML file then flags.
    // "run/" and "run" are the same directory (a trailing slash would break the renames).
    let normal = |p: &PathBuf| -> PathBuf { p.components().collect() };
    let resume_dir = cmd.resume.as_ref().map(normal);
    let mut device_choice = cmd.device.unwrap_or_default();
    let stored = match &resume_dir {
        Some(dir) => {
            super::run_dir::check_resumable(dir)?;
            Some(read_run_config(dir)?)
        }
        None => None,
    };
    // The resumed checkpoint, read once (absent from a run killed before its first one).
    let resumed_path = resume_dir
        .as_ref()
        .map(|d| d.join("checkpoint.safetensors"));
    let resumed = match &resumed_path {
        Some(path) if path.is_file() => Some(checkpoint::load(path)?),
        Some(_) | None => None,
    };
    // Whether the epochs are the default, which depends on the data (`default_epochs`).
    let mut epochs_unset = false;
    let options = match (&stored, &resume_dir) {
        (Some(cfg), Some(dir)) => {
            check_resume_flags(&cmd, cfg)?;
            let mut o = cfg.options.clone();
            if let Some(e) = cmd.options.epochs {
                let done = resumed
                    .as_ref()
                    .and_then(|c| c.resume.as_ref())
                    .map_or(0, |r| r.state.epoch);
                if e < done {
                    return Err(Error::Config(format!(
                        "--epochs {e} with --resume {}: the run has trained {done} epochs already",
                        dir.display()
                    )));
                }
                o.epochs = e;
            }
            o
        }
        _ => {
            let base = match &cmd.config {
                Some(p) => TrainOptions::from_config_file(p)?,
                None => TrainOptions::default(),
            };
            device_choice = cmd.device.or(base.device).unwrap_or_default();
            let merged = base.overridden_by(&cmd.options);
            epochs_unset = merged.epochs.is_none();
            merged.resolve()?
        }
    };
    if cmd.stop_after == Some(0) {
        return Err(Error::Config(
            "--stop-after 0: stop after at least one epoch (1 or more)".into(),
        ));
    }
    let mut options = options;
    let choices = options.choices()?;
    // --init without --layers: the architecture is the init file's.
    let init_weights = match (&options.init, &resume_dir) {
        (Some(path), None) => Some(InitWeights::read(path)?),
        _ => None,
    };
    if let (None, Some(w)) = (&options.layers, &init_weights) {
        options.layers = Some(w.widths.clone());
    }
    let prepared = prepare_data(&options, &choices)?;
    if epochs_unset {
        options.epochs = options::default_epochs(prepared.train.len(), options.batch_size);
    }
    let loss = choose_loss(&choices, &prepared.train)?;
    let network = build_network(&options, &choices, &prepared.train, loss)?;
    let optimizer: Optimizer = choices.optimizer;
    let config = train_config(&options, &choices)?;
    let init = choices.init;
    let gpu = open_device(device_choice)?;
    let device = gpu.device();
    let adapter = device.name();

    // The run directory, written as DIR.partial (locked) until the run completes.
    let run_dir = match &resume_dir {
        Some(dir) => RunDir::resume(dir)?,
        None => match cmd.out.as_ref().map(normal) {
            Some(out) => RunDir::create(out)?,
            None => RunDir::create_first_free(default_run_dirs())?,
        },
    };
    let work_dir = run_dir.work.clone();
    interrupt::install(&work_dir);

    // Starting point: fresh, from --init weights, or from the resumed checkpoint.
    let start = || -> Result<(Model, Option<Resume>)> {
        let mut model = Model::new(network.clone(), init, options.seed)?;
        let mut resume_state = None;
        if let (Some(ck), Some(path)) = (&resumed, &resumed_path) {
            // Continue and Extend start from it (an extension's copy holds the same bytes).
            if ck.network != network {
                return Err(Error::Checkpoint {
                    path: path.clone(),
                    message: "its network differs from the run's config.json".into(),
                });
            }
            model.params = ck.params.clone();
            resume_state = ck.resume.clone();
        } else if let Some(w) = &init_weights {
            model.params = w.fit(&network, loss)?;
        }
        Ok((model, resume_state))
    };
    let run_config = RunConfig {
        options: options.clone(),
        network: network.clone(),
        loss,
        optimizer,
        train: config.clone(),
        scale: prepared.scaler.kind,
        classes: prepared.train.targets.classes(),
        device: adapter.clone(),
        soma_version: env!("CARGO_PKG_VERSION").into(),
    };
    let result = start().and_then(|(mut model, resume_state)| {
        train_in(
            &cmd,
            &prepared,
            &run_config,
            &mut model,
            resume_state,
            device,
            &work_dir,
            started,
        )
    });
    match result {
        Ok(Outcome::Paused) => Ok(()),
        Ok(Outcome::Interrupted) => {
            drop(run_dir);
            // 128 + SIGINT, as a shell reports a command stopped by Ctrl-C.
            std::process::exit(130)
        }
        Ok(Outcome::Finished {
            eval,
            regression,
            epochs_run,
            stopped_early,
            samples_per_second,
        }) => {
            let final_dir = run_dir.finish()?;
            let wall = started.elapsed().as_secs_f64();
            if cmd.json {
                let s = Summary {
                    test_loss: eval.loss,
                    test_accuracy: eval.accuracy,
                    rmse: regression.map(|m| m.rmse),
                    mae: regression.map(|m| m.mae),
                    r2: regression.map(|m| m.r2),
                    epochs_run,
                    stopped_early,
                    wall_seconds: wall,
                    samples_per_second,
                    adapter,
                    run_dir: final_dir,
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).map_err(|e| Error::Config(e.to_string()))?
                );
            } else {
                match eval.accuracy {
                    Some(a) => println!(
                        "test accuracy {:.2}% (loss {}) on {} samples",
                        100.0 * a,
                        number(eval.loss),
                        eval.samples
                    ),
                    None => println!(
                        "test loss {} on {} samples (mean squared error{})",
                        number(eval.loss),
                        eval.samples,
                        if run_config.options.scale_target.as_deref() == Some("none") {
                            ""
                        } else {
                            " of the scaled targets"
                        }
                    ),
                }
                if let Some(m) = &regression {
                    println!("{}", regression_line(m));
                }
                println!(
                    "run directory: {} ({wall:.1} s on {adapter})",
                    final_dir.display()
                );
            }
            Ok(())
        }
        Err(e) => {
            let extended = run_dir.start == Start::Extend;
            let final_dir = run_dir.final_dir.clone();
            let kept = run_dir.abandon();
            Err(match e {
                Error::Diverged {
                    epoch,
                    step,
                    loss,
                    cause,
                    ..
                } => Error::Diverged {
                    epoch,
                    step,
                    loss,
                    cause,
                    kept: last_good(kept.as_deref(), extended.then_some(final_dir.as_path())),
                },
                e => e,
            })
        }
    }
}

/// The weights `--init` names: a soma checkpoint (a run directory or its file), whose
/// metadata must agree with the run, or a plain PyTorch state dict (see `soma::state_dict`).
struct InitWeights {
    file: PathBuf,
    widths: Vec<usize>,
    params: soma::Parameters,
    /// A soma checkpoint's network and loss.
    soma: Option<(Network, Loss)>,
}

impl InitWeights {
    fn read(path: &Path) -> Result<InitWeights> {
        let file = if path.is_dir() {
            path.join("checkpoint.safetensors")
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        if soma::state_dict::has_soma_metadata(&file, &bytes)? {
            let ck = checkpoint::load_bytes(&file, &bytes)?;
            Ok(InitWeights {
                widths: ck.network.widths(),
                params: ck.params,
                soma: Some((ck.network, ck.loss)),
                file,
            })
        } else {
            let sd = soma::state_dict::parse(&file, &bytes)?;
            Ok(InitWeights {
                widths: sd.widths,
                params: sd.params,
                soma: None,
                file,
            })
        }
    }

    /// The parameters for `network`, checked: the shapes, and whatever soma metadata the
    /// file has (activations, biases, loss) against the run.
    fn fit(&self, network: &Network, loss: Loss) -> Result<soma::Parameters> {
        let mismatch = |message: String| Error::Checkpoint {
            path: self.file.clone(),
            message,
        };
        let mut params = self.params.clone();
        // A layer saved without a bias starts from a zero one where the run has biases.
        for (p, layer) in params.layers.iter_mut().zip(&network.layers) {
            if p.bias.is_none() && layer.bias && self.soma.is_none() {
                p.bias = Some(vec![0.0; layer.outputs]);
            }
        }
        params
            .check(network, &self.file.display().to_string())
            .map_err(|e| {
                mismatch(format!(
                    "does not fit --layers {}: {e}",
                    join(&network.widths())
                ))
            })?;
        if let Some((net, l)) = &self.soma {
            if *l != loss {
                return Err(mismatch(format!(
                    "it was trained with {l} but this run uses {loss} (set --loss)"
                )));
            }
            for (i, (a, b)) in net.layers.iter().zip(&network.layers).enumerate() {
                if a.activation != b.activation {
                    return Err(mismatch(format!(
                        "its layer {i} has the activation {} but this run's has {} (set --activation / --output-activation)",
                        a.activation, b.activation
                    )));
                }
            }
        }
        Ok(params)
    }
}

/// Where the weights of a diverged run are: its last checkpoint, if it wrote one.
fn last_good(kept: Option<&Path>, extended: Option<&Path>) -> String {
    let ckpt = kept
        .map(|d| d.join("checkpoint.safetensors"))
        .filter(|p| p.is_file());
    let epoch = ckpt
        .as_ref()
        .and_then(|p| checkpoint::load(p).ok())
        .and_then(|c| c.resume)
        .map(|r| r.state.epoch);
    let mut s = match (kept, epoch) {
        (Some(d), Some(e)) => format!(
            "the last good weights are in {} (epoch {e}; --init {} starts a new run from them)",
            d.join("checkpoint.safetensors").display(),
            d.display()
        ),
        _ => "this was before the first checkpoint, so no weights were kept".to_string(),
    };
    if let Some(f) = extended {
        s.push_str(&format!(
            "; the finished run in {} is unchanged",
            f.display()
        ));
    }
    s.push_str("; try a smaller learning rate");
    s
}

/// `train --resume` continues a run as it was configured: a flag that would change a stored
/// setting is refused by name (only `--epochs` may change; `--device`, `--json` and
/// `--stop-after` are not settings of the run).
fn check_resume_flags(cmd: &TrainCommand, stored: &RunConfig) -> Result<()> {
    let dir = cmd.resume.as_deref().unwrap_or(Path::new("")).display();
    if let Some(out) = &cmd.out {
        return Err(Error::Config(format!(
            "--out {} with --resume {dir}: a resumed run stays in its own directory",
            out.display()
        )));
    }
    if let Some(c) = &cmd.config {
        return Err(Error::Config(format!(
            "--config {} with --resume {dir}: a resumed run keeps its own config.json",
            c.display()
        )));
    }
    let given = TrainOptions {
        epochs: None,
        ..cmd.options.clone()
    };
    let merged = stored
        .options
        .as_options()
        .overridden_by(&given)
        .resolve()?;
    let flags = options::differing_flags(&stored.options, &merged, &stored.network.widths());
    if !flags.is_empty() {
        return Err(Error::Config(format!(
            "--resume {dir} continues the run as it was configured, but {} differs from its config.json; only --epochs may change (start a new run with --init {dir} to train its weights differently)",
            flags.join(", ")
        )));
    }
    Ok(())
}

fn read_run_config(dir: &Path) -> Result<RunConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Format {
        path,
        line: None,
        message: e.to_string(),
    })
}

#[allow(clippy::too_many_arguments)]
fn train_in(
    cmd: &TrainCommand,
    data: &Prepared,
    rc: &RunConfig,
    model: &mut Model,
    resume: Option<Resume>,
    device: soma::Device<'_>,
    dir: &Path,
    started: Instant,
) -> Result<Outcome> {
    soma::fs::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(rc)
            .map_err(|e| Error::Config(e.to_string()))?
            .as_bytes(),
    )?;
    let bar = if cmd.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    let rows = data.train.len();
    let batch = rc.train.batch_size;
    // The bar's running loss: read back five times an epoch, and only when a bar is drawn
    // (a readback waits for the device).
    let mut config = rc.train.clone();
    if !bar.is_hidden() {
        config.log_every = rows.div_ceil(batch.max(1)).div_ceil(5).max(1);
    }
    let mut trainer = Trainer::new(
        device,
        model,
        rc.loss,
        rc.optimizer,
        &data.train,
        data.val.as_ref(),
        &config,
    )?;
    let metrics_path = dir.join("metrics.jsonl");
    let mut history: Vec<EpochMetrics> = Vec::new();
    if let Some(r) = &resume {
        let state: Vec<Vec<f32>> = r.optimizer_state.iter().map(|(_, v)| v.clone()).collect();
        trainer.resume(&r.state, &state)?;
        // Lines past the checkpoint's epoch (a kill between the two writes) are dropped.
        history = read_metrics(&metrics_path, r.state.epoch)?;
    }
    let mut metrics = MetricsLog::start(&metrics_path, &history)?;
    let curves_path = dir.join("curves.svg");
    let mut curves_drawn: Option<Instant> = None;
    log::info!(
        "training {} on {} ({} train / {} val / {} test rows), setup {:.2} s",
        soma_arch(&rc.network),
        rc.device,
        data.train.len(),
        data.val.as_ref().map_or(0, |v| v.len()),
        data.test.len(),
        started.elapsed().as_secs_f64()
    );

    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix:>3} [{bar:30}] {pos}/{len} steps {msg}  ETA {eta}",
        )
        .map_err(|e| Error::Config(e.to_string()))?
        .progress_chars("=> "),
    );
    let mut running: Option<f32> = None;
    let epoch_start = std::cell::Cell::new(Instant::now());
    let mut last_rate = 0.0;
    // The validation targets' variance in the scaled units the loss is computed in, from
    // which curves.svg plots the validation R² of a regression (see soma::plot::curves_svg).
    let val_variance = data.val.as_ref().and_then(|v| match &v.targets {
        soma::data::Targets::Values { values, width } => {
            soma::metrics::mean_variance(values, *width)
        }
        soma::data::Targets::Classes { .. } => None,
    });
    let fit = trainer.fit(
        |t, m| {
            last_rate = m.samples_per_s;
            let line = format!(
                "epoch {:>3}: loss {}{}{}{}  {:.0} samples/s",
                m.epoch,
                number(m.train_loss),
                m.train_accuracy
                    .map(|a| format!("  acc {:.2}%", 100.0 * a))
                    .unwrap_or_default(),
                m.val_loss
                    .map(|v| format!("  val loss {}", number(v)))
                    .unwrap_or_default(),
                m.val_accuracy
                    .map(|a| format!("  val acc {:.2}%", 100.0 * a))
                    .unwrap_or_default(),
                m.samples_per_s
            );
            // The bar is hidden when stderr is not a terminal; the epoch lines still print.
            if cmd.json {
            } else if bar.is_hidden() {
                println!("{line}");
            } else {
                bar.println(line);
            }
            history.push(*m);
            // The metrics line is durable before the checkpoint that counts it.
            metrics.append(m)?;
            save_checkpoint(dir, rc, &t.parameters()?, data, t)?;
            // Redrawn at most every CURVES_EVERY (and once at the end).
            if curves_drawn.is_none_or(|t| t.elapsed() >= CURVES_EVERY) {
                soma::plot::write_curves(&curves_path, &history, &title(rc), val_variance)?;
                curves_drawn = Some(Instant::now());
            }
            epoch_start.set(Instant::now());
            let last = t.epoch() >= rc.train.epochs;
            if !last && (interrupt::requested() || cmd.stop_after.is_some_and(|k| t.epoch() >= k)) {
                return Ok(Flow::Stop);
            }
            Ok(Flow::Continue)
        },
        |p| {
            if p.step <= 1 {
                running = None;
                bar.reset_eta();
            }
            running = p.loss.or(running);
            bar.set_prefix(format!("{}", p.epoch));
            bar.set_length(p.steps as u64);
            bar.set_position(p.step as u64);
            let done = (p.step * batch).min(rows);
            bar.set_message(format!(
                "{}{:.0} samples/s",
                running
                    .map(|l| format!("loss {}  ", number(l)))
                    .unwrap_or_default(),
                done as f64 / epoch_start.get().elapsed().as_secs_f64().max(1e-9)
            ));
        },
    );
    bar.finish_and_clear();
    // The last epochs' curves, also when the run stopped on an error.
    let drawn = soma::plot::write_curves(&curves_path, &history, &title(rc), val_variance);
    let fit = fit?;
    drawn?;
    if fit.paused {
        let interrupted = interrupt::requested();
        eprintln!(
            "{} after epoch {}; continue with: soma train --resume {}",
            if interrupted {
                "interrupted"
            } else {
                "stopped as asked"
            },
            trainer.epoch(),
            dir.display()
        );
        return Ok(if interrupted {
            Outcome::Interrupted
        } else {
            Outcome::Paused
        });
    }
    if fit.stopped_early {
        println!(
            "early stop: restored the parameters of epoch {}",
            fit.best_epoch
        );
    }
    model.params = trainer.parameters()?;
    save_checkpoint(dir, rc, &model.params, data, &trainer)?;
    let eval = model.evaluate(device, rc.loss, &data.test, 1024)?;
    let regression = model.regression_metrics(device, &data.test, data.target_scaler.as_ref())?;
    Ok(Outcome::Finished {
        eval,
        regression,
        epochs_run: history.len(),
        stopped_early: fit.stopped_early,
        samples_per_second: last_rate,
    })
}

/// How `train_in` ended.
enum Outcome {
    Finished {
        eval: soma::Evaluation,
        /// RMSE, MAE and R² on the test split in the targets' units (regression only).
        regression: Option<RegressionMetrics>,
        epochs_run: usize,
        stopped_early: bool,
        samples_per_second: f64,
    },
    /// Stopped by --stop-after; the run directory stays `.partial`.
    Paused,
    /// Stopped by Ctrl-C (or SIGTERM) at the end of an epoch; it stays `.partial` too.
    Interrupted,
}

fn soma_arch(net: &Network) -> String {
    join(&net.widths())
}

fn title(rc: &RunConfig) -> String {
    format!(
        "{} {} {} on {}",
        rc.options.data,
        soma_arch(&rc.network),
        rc.optimizer.kind,
        rc.device
    )
}

fn save_checkpoint(
    dir: &Path,
    rc: &RunConfig,
    params: &soma::Parameters,
    data: &Prepared,
    t: &Trainer<'_>,
) -> Result<()> {
    let optimizer_state = t.optimizer_state()?;
    // A state that went non-finite while the loss stayed finite is a divergence too.
    let tensors = params
        .layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            std::iter::once((format!("layers.{i}.weight"), &l.weight))
                .chain(l.bias.as_ref().map(|b| (format!("layers.{i}.bias"), b)))
        })
        .chain(optimizer_state.iter().map(|(n, v)| (n.clone(), v)));
    for (name, values) in tensors {
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            let state = t.state();
            return Err(Error::Diverged {
                epoch: state.epoch,
                step: t.steps_per_epoch(),
                loss: f32::NAN,
                cause: format!("'{name}' holds {v} at index {i}"),
                kept: String::new(),
            });
        }
    }
    let resume = Some(Resume {
        state: t.state(),
        optimizer: rc.optimizer,
        config: rc.train.clone(),
        optimizer_state,
    });
    let ck = Checkpoint {
        network: rc.network.clone(),
        params: params.clone(),
        loss: rc.loss,
        scaler: Some(data.scaler.clone()),
        classes: rc.classes,
        target_scaler: data.target_scaler.clone(),
        resume,
    };
    checkpoint::save(&dir.join("checkpoint.safetensors"), &ck)
}

/// A loss for people: four decimals, or scientific notation where that would print a long
/// row of digits or zeros (an exploding loss, a tiny one).
/// The regression metrics as printed by `soma train` and `soma eval`.
pub fn regression_line(m: &RegressionMetrics) -> String {
    let n = |x: f64| number(x as f32);
    format!(
        "RMSE {}, MAE {}, R² {} (in the targets' own units)",
        n(m.rmse),
        n(m.mae),
        n(m.r2)
    )
}

fn number(x: f32) -> String {
    if x.is_finite() && x != 0.0 && !(1e-4..1e5).contains(&x.abs()) {
        format!("{x:.4e}")
    } else {
        format!("{x:.4}")
    }
}

/// How often `curves.svg` is redrawn during a run: redrawing it every epoch would make a
/// long run's writes grow with the square of its epochs.
const CURVES_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// `metrics.jsonl`, one line appended per epoch and synced before the epoch's checkpoint.
struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Starts the log with the lines of `kept` (atomically), then appends.
    fn start(path: &Path, kept: &[EpochMetrics]) -> Result<MetricsLog> {
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

    fn append(&mut self, m: &EpochMetrics) -> Result<()> {
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

/// The first `epochs` lines of a run's `metrics.jsonl` (what follows them, possibly a line
/// torn by a kill, belongs to epochs the checkpoint does not hold).
fn read_metrics(path: &Path, epochs: usize) -> Result<Vec<EpochMetrics>> {
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

/// Ctrl-C (SIGINT) and SIGTERM during training: the first finishes the epoch under way,
/// saves its checkpoint and stops with the `--resume` command; a second stops at once,
/// leaving the last epoch's checkpoint (every file is replaced atomically, so none is
/// torn).
mod interrupt {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    static REQUESTED: AtomicBool = AtomicBool::new(false);

    pub fn requested() -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }

    pub fn install(dir: &Path) {
        let resume = format!("soma train --resume {}", dir.display());
        let installed = ctrlc::set_handler(move || {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nstopped; the last finished epoch is kept: continue with: {resume}");
                std::process::exit(130);
            }
            eprintln!(
                "\nstopping at the end of this epoch (press Ctrl-C again to stop now and keep the last finished one)"
            );
        });
        if let Err(e) = installed {
            log::warn!("Ctrl-C will stop training at once, not at an epoch's end: {e}");
        }
    }
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
