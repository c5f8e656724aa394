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
use soma::trainer::{EarlyStopping, EpochMetrics, Flow, TrainConfig, Trainer};
use soma::{Error, Loss, Model, Network, Optimizer, Result};

use super::options::{Choices, Resolved, TrainOptions};
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
    let (all, own_test) = c.data.load(o, c)?;
    let (train_all, test) = match own_test {
        Some(t) => (all, t),
        None => all.split(o.test_fraction, o.seed)?,
    };
    let scale = c.scale.unwrap_or_else(|| c.data.default_scale());
    let scaler = Scaler::fit(scale, &train_all);
    let (mut train, mut val) = if o.val_fraction > 0.0 {
        let (t, v) = train_all.split_tail(o.val_fraction)?;
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
    Network::mlp(&widths, c.hidden, c.output)
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
        validation_fraction: None,
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
    pub device: DeviceChoice,
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
    epochs_run: usize,
    stopped_early: bool,
    wall_seconds: f64,
    samples_per_second: f64,
    adapter: String,
    run_dir: PathBuf,
}

fn partial(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // UTC timestamp YYYYMMDD-HHMMSS from the Unix time (no date crate needed).
    let (days, rem) = (secs / 86400, secs % 86400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (y, mo, d) = civil_from_days(days as i64);
    let base = format!("runs/{y:04}{mo:02}{d:02}-{h:02}{m:02}{s:02}");
    // A second run started within the same second takes the next free suffix.
    let free = |p: &PathBuf| !p.exists() && !partial(p).exists();
    std::iter::once(PathBuf::from(&base))
        .chain((2..).map(|n| PathBuf::from(format!("{base}-{n}"))))
        .find(free)
        .unwrap_or_else(|| PathBuf::from(base))
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
    let (options, resume_from) = match cmd.resume.as_ref().map(normal) {
        Some(dir) => {
            let cfg = read_run_config(&dir)?;
            let mut o = cfg.options.clone();
            if let Some(e) = cmd.options.epochs {
                o.epochs = e;
            }
            (o, Some(dir))
        }
        None => {
            let base = match &cmd.config {
                Some(p) => TrainOptions::from_toml(p)?,
                None => TrainOptions::default(),
            };
            (base.overridden_by(&cmd.options).resolve()?, None)
        }
    };
    let choices = options.choices()?;
    let prepared = prepare_data(&options, &choices)?;
    let loss = choose_loss(&choices, &prepared.train)?;
    let network = build_network(&options, &choices, &prepared.train, loss)?;
    let optimizer: Optimizer = choices.optimizer;
    let config = train_config(&options, &choices)?;
    let init = choices.init;

    // Starting point: fresh, from --init weights, or from the resumed checkpoint.
    let mut model = Model::new(network.clone(), init, options.seed)?;
    let mut resume_state = None;
    if let Some(dir) = &resume_from {
        let ck = checkpoint::load(&dir.join("checkpoint.safetensors"))?;
        if ck.network != network {
            return Err(Error::Checkpoint {
                path: dir.join("checkpoint.safetensors"),
                message: "its network differs from the run's config.json".into(),
            });
        }
        model.params = ck.params;
        resume_state = ck.resume;
    } else if let Some(path) = &options.init {
        let file = if path.is_dir() {
            path.join("checkpoint.safetensors")
        } else {
            path.clone()
        };
        let ck = checkpoint::load(&file)?;
        ck.params
            .check(&network, &file.display().to_string())
            .map_err(|e| Error::Checkpoint {
                path: file.clone(),
                message: format!("does not fit --layers {}: {e}", join(&network.widths())),
            })?;
        model.params = ck.params;
    }

    let gpu = open_device(cmd.device)?;
    let device = gpu.device();
    let adapter = device.name();

    // The run directory, written as DIR.partial until the run completes.
    let (final_dir, work_dir) = match &resume_from {
        Some(dir) => {
            let s = dir.to_string_lossy();
            let fin = PathBuf::from(s.strip_suffix(".partial").unwrap_or(&s).to_string());
            (fin, dir.clone())
        }
        None => {
            let fin = cmd.out.as_ref().map(normal).unwrap_or_else(default_run_dir);
            if fin.exists() {
                return Err(Error::Config(format!(
                    "run directory {} already exists; choose another --out",
                    fin.display()
                )));
            }
            let work = partial(&fin);
            if work.exists() {
                return Err(Error::Config(format!(
                    "{} exists (an unfinished run): continue it with --resume {} or remove it",
                    work.display(),
                    work.display()
                )));
            }
            (fin, work)
        }
    };
    std::fs::create_dir_all(&work_dir).map_err(|e| Error::io(&work_dir, e))?;
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
    let result = train_in(
        &cmd,
        &prepared,
        &run_config,
        &mut model,
        resume_state,
        device,
        &work_dir,
        started,
    );
    match result {
        Ok(Outcome::Paused) => Ok(()),
        Ok(Outcome::Finished {
            eval,
            epochs_run,
            stopped_early,
            samples_per_second,
        }) => {
            if work_dir != final_dir {
                std::fs::rename(&work_dir, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
            }
            let wall = started.elapsed().as_secs_f64();
            if cmd.json {
                let s = Summary {
                    test_loss: eval.loss,
                    test_accuracy: eval.accuracy,
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
                        "test accuracy {:.2}% (loss {:.4}) on {} samples",
                        100.0 * a,
                        eval.loss,
                        eval.samples
                    ),
                    None => println!(
                        "test loss {:.4} on {} samples (mean squared error{})",
                        eval.loss,
                        eval.samples,
                        if run_config.options.scale_target.as_deref() == Some("none") {
                            ""
                        } else {
                            " of the scaled targets"
                        }
                    ),
                }
                println!(
                    "run directory: {} ({wall:.1} s on {adapter})",
                    final_dir.display()
                );
            }
            Ok(())
        }
        Err(e) => {
            // A run that never finished an epoch leaves nothing behind.
            if resume_from.is_none() && !work_dir.join("checkpoint.safetensors").exists() {
                let _ = std::fs::remove_dir_all(&work_dir);
            }
            Err(e)
        }
    }
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
    let mut trainer = Trainer::new(
        device,
        model,
        rc.loss,
        rc.optimizer,
        &data.train,
        data.val.as_ref(),
        &rc.train,
    )?;
    let mut history: Vec<EpochMetrics> = Vec::new();
    if let Some(r) = &resume {
        let state: Vec<Vec<f32>> = r.optimizer_state.iter().map(|(_, v)| v.clone()).collect();
        trainer.resume(&r.state, &state)?;
        history = read_metrics(&dir.join("metrics.jsonl"))?;
        history.truncate(r.state.epoch);
    }
    log::info!(
        "training {} on {} ({} train / {} val / {} test rows), setup {:.2} s",
        soma_arch(&rc.network),
        rc.device,
        data.train.len(),
        data.val.as_ref().map_or(0, |v| v.len()),
        data.test.len(),
        started.elapsed().as_secs_f64()
    );

    let bar = if cmd.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix:>3} [{bar:30}] {pos}/{len} steps {msg}")
            .map_err(|e| Error::Config(e.to_string()))?
            .progress_chars("=> "),
    );
    let rows = data.train.len();
    let batch = rc.train.batch_size;
    let epoch_start = std::cell::Cell::new(Instant::now());
    let mut last_rate = 0.0;
    let fit = trainer.fit(
        |t, m| {
            last_rate = m.samples_per_s;
            let line = format!(
                "epoch {:>3}: loss {:.4}{}{}  {:.0} samples/s",
                m.epoch,
                m.train_loss,
                m.val_loss
                    .map(|v| format!("  val loss {v:.4}"))
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
            write_metrics(&dir.join("metrics.jsonl"), &history)?;
            save_checkpoint(dir, rc, &t.parameters()?, data, t)?;
            soma::plot::write_curves(&dir.join("curves.svg"), &history, &title(rc))?;
            epoch_start.set(Instant::now());
            if cmd
                .stop_after
                .is_some_and(|k| t.epoch() >= k && t.epoch() < rc.train.epochs)
            {
                return Ok(Flow::Stop);
            }
            Ok(Flow::Continue)
        },
        |p| {
            bar.set_prefix(format!("{}", p.epoch));
            bar.set_length(p.steps as u64);
            bar.set_position(p.step as u64);
            let done = (p.step * batch).min(rows);
            bar.set_message(format!(
                "{:.0} samples/s",
                done as f64 / epoch_start.get().elapsed().as_secs_f64().max(1e-9)
            ));
        },
    )?;
    bar.finish_and_clear();
    if fit.paused {
        eprintln!(
            "stopped after epoch {} as asked; continue with: soma train --resume {}",
            trainer.epoch(),
            dir.display()
        );
        return Ok(Outcome::Paused);
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
    Ok(Outcome::Finished {
        eval,
        epochs_run: history.len(),
        stopped_early: fit.stopped_early,
        samples_per_second: last_rate,
    })
}

/// How `train_in` ended.
enum Outcome {
    Finished {
        eval: soma::Evaluation,
        epochs_run: usize,
        stopped_early: bool,
        samples_per_second: f64,
    },
    /// Stopped by --stop-after; the run directory stays `.partial`.
    Paused,
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
    let resume = Some(Resume {
        state: t.state(),
        optimizer: rc.optimizer,
        config: rc.train.clone(),
        optimizer_state: t.optimizer_state()?,
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

fn write_metrics(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    // Rewritten whole (atomically) each epoch: a crash never leaves a torn line.
    let mut text = Vec::new();
    for m in history {
        serde_json::to_writer(&mut text, m).map_err(|e| Error::Config(e.to_string()))?;
        text.write_all(b"\n").map_err(|e| Error::io(path, e))?;
    }
    soma::fs::write_atomic(path, &text)
}

fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Format {
                path: path.to_path_buf(),
                line: Some(i + 1),
                message: e.to_string(),
            })
        })
        .collect()
}
