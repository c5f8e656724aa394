//! `soma train`: prepare the run (data, network, settings: `prepare.rs`), train with a
//! progress bar (`report.rs`), and leave a run directory (checkpoint, metrics.jsonl, curves.svg,
//! config.json). The directory is written as `DIR.partial` and renamed to `DIR` only when
//! the run has finished, so a failed run never leaves a directory that looks complete; a
//! `.partial` directory holds the last finished epoch and `--resume` continues it exactly.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use soma::checkpoint::{self, Checkpoint, Resume};
use soma::data::ScaleKind;
use soma::exec::Determinism;
use soma::metrics::RegressionMetrics;
use soma::parallel::{any_agrees, DataParallel, Exchange};
use soma::trainer::{EpochMetrics, Flow, TrainConfig, Trainer};
use soma::{Error, Loss, Model, Network, Optimizer, Result};

use super::init::InitWeights;
use super::interrupt;
use super::options::{self, Distributed, Resolved, TrainOptions};
use super::prepare::{build_network, choose_loss, join, prepare_data, train_config, Prepared};
use super::report::{number, read_metrics, regression_line, MetricsLog, CURVES_EVERY};
use super::run_dir::{RunDir, Start};
use super::{open_device, open_devices, DeviceChoice, DevicesSpec};

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
    /// `--devices`, for a data-parallel run: a resume opens the same replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<String>,
    pub soma_version: String,
}

/// The arguments of `soma train` beyond the shared options.
pub struct TrainCommand {
    pub options: TrainOptions,
    pub config: Option<PathBuf>,
    /// `None`: the TOML config's `device`, else auto.
    pub device: Option<DeviceChoice>,
    /// `--devices` (a data-parallel run); `None`: one device, or the resumed run's.
    pub devices: Option<String>,
    /// `--overlap`: when the replicas' gradients cross the host.
    pub overlap: soma::parallel::Overlap,
    /// `--distributed`: this process is one replica of a run over several processes.
    pub distributed: Option<Distributed>,
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
    /// The epoch whose parameters early stopping restored (null when it did not stop).
    restored_epoch: Option<usize>,
    wall_seconds: f64,
    samples_per_second: f64,
    adapter: String,
    /// `default` or `strict` (`--deterministic`).
    deterministic: Determinism,
    /// The SHA-256 of the checkpoint's tensors, metadata excluded
    /// (`checkpoint::tensors_sha256`): under strict mode, the same on every adapter that
    /// passes the self-test and on the CPU.
    tensors_sha256: String,
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
    let devices = match cmd.devices.as_deref() {
        Some(spec) => Some(spec.parse::<DevicesSpec>()?),
        None => stored
            .as_ref()
            .and_then(|c| c.devices.as_deref())
            .map(str::parse::<DevicesSpec>)
            .transpose()?,
    };
    if cmd.overlap == soma::parallel::Overlap::PerLayer
        && devices.is_none()
        && cmd.distributed.is_none()
    {
        return Err(Error::Config(
            "--overlap hands gradients between the replicas of --devices or --distributed; a run on one device has none".into(),
        ));
    }
    // Over MPI: MPI starts here; from now on a rank that fails takes the others down.
    let mpi = match cmd.distributed {
        Some(Distributed::Mpi) => Some(super::open_mpi()?),
        None => None,
    };
    let peers: Option<&dyn Exchange> = mpi.as_deref();
    let outcome = (|| {
        let opened;
        let replica;
        let device = match peers {
            Some(e) => {
                let kernels =
                    super::open_rank_device(device_choice, devices.as_ref(), e, cmd.json)?;
                replica = DataParallel {
                    devices: vec![soma::Device::Tuned(kernels)],
                    exchange: Some(e),
                    overlap: cmd.overlap,
                };
                soma::Device::Parallel(&replica)
            }
            None => {
                opened = match &devices {
                    Some(spec) => open_devices(device_choice, spec, cmd.overlap, cmd.json)?,
                    None => open_device(device_choice)?,
                };
                opened.device()
            }
        };
        let adapter = match peers {
            Some(e) => format!("{} x {} ranks", device.name(), e.size()),
            None => device.name(),
        };
        // Every rank has read the run's settings and checkpoint before rank 0 touches its
        // directory.
        any_agrees(peers, false)?;
        train_run(
            &cmd,
            Setup {
                network,
                loss,
                optimizer,
                config,
                init,
                init_weights,
                resumed,
                resumed_path,
                resume_dir,
                options,
                prepared,
                devices,
                started,
            },
            device,
            adapter,
            peers,
        )
    })();
    match (outcome, peers) {
        (Err(e), Some(p)) if p.size() > 1 => {
            eprintln!("error: rank {} of {}: {e}", p.rank(), p.size());
            p.abort(1)
        }
        (outcome, _) => outcome,
    }
}

/// What `run` prepared for the training itself.
struct Setup {
    network: Network,
    loss: Loss,
    optimizer: Optimizer,
    config: TrainConfig,
    init: soma::Init,
    init_weights: Option<InitWeights>,
    resumed: Option<Checkpoint>,
    resumed_path: Option<PathBuf>,
    resume_dir: Option<PathBuf>,
    options: Resolved,
    prepared: Prepared,
    devices: Option<DevicesSpec>,
    started: Instant,
}

/// Trains on `device` into the run directory (rank 0's alone, over several processes:
/// the other ranks train the same steps and write nothing).
fn train_run(
    cmd: &TrainCommand,
    setup: Setup,
    device: soma::Device<'_>,
    adapter: String,
    peers: Option<&dyn Exchange>,
) -> Result<()> {
    let Setup {
        network,
        loss,
        optimizer,
        config,
        init,
        init_weights,
        resumed,
        resumed_path,
        resume_dir,
        options,
        prepared,
        devices,
        started,
    } = setup;
    let writer = peers.is_none_or(|e| e.rank() == 0);
    // The run directory, written as DIR.partial (locked) until the run completes; rank 0's
    // only.
    let normal = |p: &PathBuf| -> PathBuf { p.components().collect() };
    let run_dir = match (&resume_dir, writer) {
        (_, false) => None,
        (Some(dir), true) => Some(RunDir::resume(dir)?),
        (None, true) => Some(match cmd.out.as_ref().map(normal) {
            Some(out) => RunDir::create(out)?,
            None => RunDir::create_first_free(default_run_dirs())?,
        }),
    };
    let work_dir = run_dir.as_ref().map_or_else(
        || resume_dir.clone().unwrap_or_default(),
        |d| d.work.clone(),
    );
    interrupt::install(&work_dir);

    // Starting point: fresh, from --init weights, or from the resumed checkpoint.
    let start = || -> Result<(Model, Option<Resume>)> {
        let mut model = Model::new(network.clone(), init, options.seed)?.with_loss(loss);
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
        devices: match peers {
            Some(_) => None,
            None => devices.as_ref().map(|d| d.to_string()),
        },
        soma_version: env!("CARGO_PKG_VERSION").into(),
    };
    let result = start().and_then(|(mut model, resume_state)| {
        train_in(
            cmd,
            &prepared,
            &run_config,
            &mut model,
            resume_state,
            device,
            &work_dir,
            started,
            peers,
        )
    });
    let Some(run_dir) = run_dir else {
        // Another rank's: rank 0 reports.
        return match result {
            Ok(Outcome::Interrupted) => std::process::exit(130),
            Ok(Outcome::Paused | Outcome::Finished { .. }) => Ok(()),
            Err(e) => Err(e),
        };
    };
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
            restored_epoch,
            samples_per_second,
        }) => {
            let final_dir = run_dir.finish()?;
            let wall = started.elapsed().as_secs_f64();
            let checkpoint = final_dir.join("checkpoint.safetensors");
            let tensors_sha256 = soma::checkpoint::tensors_sha256(
                &checkpoint,
                &std::fs::read(&checkpoint).map_err(|e| Error::io(&checkpoint, e))?,
            )?;
            let determinism = run_config.train.determinism;
            if cmd.json {
                let s = Summary {
                    test_loss: eval.loss,
                    test_accuracy: eval.accuracy,
                    rmse: regression.map(|m| m.rmse),
                    mae: regression.map(|m| m.mae),
                    r2: regression.map(|m| m.r2),
                    epochs_run,
                    stopped_early,
                    restored_epoch,
                    wall_seconds: wall,
                    samples_per_second,
                    adapter,
                    deterministic: determinism,
                    tensors_sha256,
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
                if determinism == Determinism::Strict {
                    println!("strict: the checkpoint's tensors have SHA-256 {tensors_sha256}");
                }
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
                    kept: last_good(kept.as_deref(), extended.then_some(final_dir.as_path()))
                        + "; try a smaller learning rate",
                },
                Error::ShadowMismatch {
                    step,
                    tensor,
                    rel_l2,
                    tolerance,
                    ..
                } => Error::ShadowMismatch {
                    step,
                    tensor,
                    rel_l2,
                    tolerance,
                    kept: last_good(kept.as_deref(), extended.then_some(final_dir.as_path()))
                        + &kept
                            .as_deref()
                            .map(|d| {
                                format!(
                                    "; every replayed step is in {}",
                                    d.join("shadow.jsonl").display()
                                )
                            })
                            .unwrap_or_default(),
                },
                e => e,
            })
        }
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
    peers: Option<&dyn Exchange>,
) -> Result<Outcome> {
    // Over several processes, rank 0 alone writes the run's files.
    let writer = peers.is_none_or(|e| e.rank() == 0);
    if writer {
        soma::fs::write_atomic(
            &dir.join("config.json"),
            serde_json::to_string_pretty(rc)
                .map_err(|e| Error::Config(e.to_string()))?
                .as_bytes(),
        )?;
    }
    let bar = if cmd.json || !writer {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    let rows = data.train.len();
    let batch = rc.train.batch_size;
    // The bar's running loss: read back five times an epoch, and only when a bar is drawn
    // (a readback waits for the device).
    // Over several processes every read of the loss is a sum over the ranks, which each must
    // make at the same steps, and only rank 0 has a bar: no such reads within an epoch.
    let mut config = rc.train.clone();
    if !bar.is_hidden() && peers.is_none() {
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
    let mut metrics = match writer {
        true => Some(MetricsLog::start(&metrics_path, &history)?),
        false => None,
    };
    let mut shadow_log = match rc.train.shadow_check {
        Some(_) if writer => Some(super::report::ShadowLog::start(
            &dir.join("shadow.jsonl"),
            resume.as_ref().map_or(0, |r| r.state.step),
        )?),
        Some(_) | None => None,
    };
    let mut shadow_seen = 0;
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
            if cmd.json || !writer {
            } else if bar.is_hidden() {
                println!("{line}");
            } else {
                bar.println(line);
            }
            // The epoch's shadow steps: logged and summed up in a line (with
            // --shadow-action stop, the trainer stops at a step past the tolerance instead,
            // before this epoch's checkpoint: see below).
            let fresh = &t.shadow_reports()[shadow_seen..];
            shadow_seen = t.shadow_reports().len();
            if let (Some(log), false) = (shadow_log.as_mut(), fresh.is_empty()) {
                log.append(fresh)?;
                let line = super::report::shadow_line(fresh);
                if cmd.json || !writer {
                } else if bar.is_hidden() {
                    println!("{line}");
                } else {
                    bar.println(line);
                }
            }
            history.push(*m);
            // The metrics line is durable before the checkpoint that counts it.
            if let Some(metrics) = metrics.as_mut() {
                metrics.append(m)?;
                save_checkpoint(dir, rc, &t.parameters()?, data, t)?;
            }
            // Redrawn at most every CURVES_EVERY (and once at the end).
            if writer && curves_drawn.is_none_or(|t| t.elapsed() >= CURVES_EVERY) {
                soma::plot::write_curves(&curves_path, &history, &title(rc), val_variance)?;
                curves_drawn = Some(Instant::now());
            }
            epoch_start.set(Instant::now());
            let last = t.epoch() >= rc.train.epochs;
            // Every rank stops where any was interrupted.
            let interrupted = any_agrees(peers, interrupt::requested())?;
            if !last && (interrupted || cmd.stop_after.is_some_and(|k| t.epoch() >= k)) {
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
    // A stopped shadow check's steps of the unfinished epoch go to the log and the output
    // too.
    if let (Some(log), Err(Error::ShadowMismatch { .. })) = (shadow_log.as_mut(), &fit) {
        let fresh = &trainer.shadow_reports()[shadow_seen..];
        log.append(fresh)?;
        if !cmd.json && !fresh.is_empty() {
            println!("{}", super::report::shadow_line(fresh));
        }
    }
    // The last epochs' curves, also when the run stopped on an error.
    let drawn = match writer {
        true => soma::plot::write_curves(&curves_path, &history, &title(rc), val_variance),
        false => Ok(()),
    };
    let fit = fit?;
    drawn?;
    if fit.paused {
        let interrupted = interrupt::requested();
        if writer {
            eprintln!(
                "{} after epoch {}; continue with: {}soma train {}--resume {}",
                if interrupted {
                    "interrupted"
                } else {
                    "stopped as asked"
                },
                trainer.epoch(),
                peers.map_or(String::new(), |e| format!("mpirun -n {} ", e.size())),
                if peers.is_some() {
                    "--distributed mpi "
                } else {
                    ""
                },
                dir.display()
            );
        }
        return Ok(if interrupted {
            Outcome::Interrupted
        } else {
            Outcome::Paused
        });
    }
    // With --json, stdout holds the summary alone (which names the epoch).
    if fit.stopped_early && !cmd.json {
        println!(
            "early stop: restored the parameters of epoch {}",
            fit.best_epoch
        );
    }
    model.params = trainer.parameters()?;
    if writer {
        save_checkpoint(dir, rc, &model.params, data, &trainer)?;
    }
    // In the run's mode: under strict mode the printed test loss and accuracy are the same
    // on every adapter that passes the self-test, like the weights.
    let eval = model.evaluate_in(device, &data.test, 1024, rc.train.determinism)?;
    let regression =
        super::report::regression_in_units(model, device, &data.test, data.target_scaler.as_ref())?;
    Ok(Outcome::Finished {
        eval,
        regression,
        epochs_run: history.len(),
        stopped_early: fit.stopped_early,
        restored_epoch: fit.stopped_early.then_some(fit.best_epoch),
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
        restored_epoch: Option<usize>,
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
        names: data.train.names.clone(),
        imputer: data.imputer.clone(),
        resume,
    };
    checkpoint::save(&dir.join("checkpoint.safetensors"), &ck)
}
