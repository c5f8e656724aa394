//! What a training run is asked to do and what it reports: the configuration (epochs, batch,
//! shuffling, validation, early stopping, schedule), each epoch's metrics, the run's
//! history, the state a checkpoint needs to resume, and the progress an epoch callback sees.

use crate::exec::Determinism;
use serde::{Deserialize, Serialize};

use crate::optim::Schedule;
use crate::rng::RngState;

/// When to stop before the last epoch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Epochs without an improvement of at least `min_delta` before stopping.
    pub patience: usize,
    pub min_delta: f32,
    /// Put back the parameters of the best epoch when stopping (Keras' restore_best_weights).
    pub restore_best: bool,
}

/// How a [`Fit`](crate::trainer::Fit) or [`Trainer`](crate::trainer::Trainer) trains. The
/// default is `soma train`'s: 20 epochs of batches of 32, reshuffled each epoch with seed 0,
/// 10% of the rows held out for validation, no early stopping, and a cosine decay of the
/// learning rate to 0 over the epochs (the command raises the epochs on small data, see
/// `soma train --help`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Reshuffle the training order every epoch (seeded).
    pub shuffle: bool,
    pub seed: u64,
    /// This fraction of the rows is held out for validation (when no validation set is
    /// given): drawn by [`Dataset::split`](crate::data::Dataset::split) seeded with `seed`,
    /// stratified by class, so a file sorted by class still validates on every class.
    pub validation_fraction: Option<f32>,
    pub early_stopping: Option<EarlyStopping>,
    pub schedule: Schedule,
    /// Read the running loss back every this many steps (0: only at epoch ends).
    pub log_every: usize,
    /// Replay every this many steps on the CPU path and compare every parameter and
    /// optimizer-state tensor (see [`ShadowReport`](crate::trainer::ShadowReport)); `None`
    /// replays nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_check: Option<usize>,
    /// The relative L2 difference a shadow-checked tensor may have; `None`: derived from
    /// f32 rounding at the step's longest sum (`trainer::shadow::default_tolerance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_tolerance: Option<f64>,
    /// Stop training at a shadow step past the tolerance, with `Error::ShadowMismatch`
    /// (the device then holds that step's result); otherwise the report says so and
    /// training goes on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow_stop: bool,
    /// The promise the run makes about its bits (`--deterministic`): `Strict` gives the
    /// same weights on every adapter that passes the strict self-test and on the CPU
    /// reference (see `docs/determinism.md`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub determinism: Determinism,
}

fn is_default(d: &Determinism) -> bool {
    *d == Determinism::Default
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 20,
            batch_size: 32,
            shuffle: true,
            seed: 0,
            validation_fraction: Some(0.1),
            early_stopping: None,
            schedule: Schedule::Cosine { min_lr: 0.0 },
            log_every: 0,
            shadow_check: None,
            shadow_tolerance: None,
            shadow_stop: false,
            determinism: Determinism::Default,
        }
    }
}

/// What one epoch did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    pub lr: f32,
    pub train_loss: f32,
    pub train_accuracy: Option<f32>,
    pub val_loss: Option<f32>,
    pub val_accuracy: Option<f32>,
    pub seconds: f64,
    pub samples_per_s: f64,
}

/// Every epoch's metrics, and how training ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub epochs: Vec<EpochMetrics>,
    pub stopped_early: bool,
    /// An epoch callback asked to stop before the last epoch.
    pub paused: bool,
    /// 1-based epoch whose parameters the model ends with.
    pub best_epoch: usize,
}

/// Where a run stands between two epochs: what a checkpoint needs to resume exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Steps completed.
    pub step: u64,
    pub rng: RngState,
    /// The mean loss of the run's first batch at its starting weights: what an exploding
    /// loss is measured against (absent in checkpoints written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_loss: Option<f32>,
}

/// Progress inside an epoch, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    pub epoch: usize,
    pub step: usize,
    pub steps: usize,
    /// The mean loss so far this epoch, when it was read back at this step.
    pub loss: Option<f32>,
}

/// What an epoch callback wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop now, leaving the run where it is (it can be resumed later).
    Stop,
}

/// An epoch callback that returns nothing goes on.
impl From<()> for Flow {
    fn from(_: ()) -> Flow {
        Flow::Continue
    }
}
