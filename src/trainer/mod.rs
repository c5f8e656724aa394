//! The scheduler: a [`Trainer`] owns a run's resident state (a [`Run`]) and runs epochs of
//! whole training steps: per epoch, the scheduled learning rate and the shuffled order go to
//! the device once; per step, one submission (gather, forward, loss, backward, update,
//! metrics); reads only at log points. A `Trainer` takes its data as the network sees it
//! (already scaled). [`Fit`] is the one-call training loop for a [`Model`]: its
//! preprocessing fitted and applied, validation, early stopping and a learning-rate
//! schedule. The model itself is `model.rs`'s.

use std::time::Instant;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::exec::{Device, Executor, Pass};
use crate::ops::Loss;
use crate::optim::Optimizer;
use crate::plan::Plan;
use crate::rng::Rng;
use crate::run::Run;
use crate::tensor::GpuTensor;

mod config;
mod fit;
pub mod shadow;

pub use crate::model::{Evaluation, Model};
use crate::network::Parameters;
pub use config::{EarlyStopping, EpochMetrics, Flow, History, Progress, TrainConfig, TrainState};
pub use fit::Fit;
pub use shadow::{ShadowReport, ShadowTensor};

/// A training run: the resident state of one model on one device, trained epoch by epoch.
pub struct Trainer<'a> {
    run: Run<'a>,
    config: TrainConfig,
    rng: Rng,
    epoch: usize,
    step: u64,
    /// The epoch under way, if any.
    cursor: Option<Cursor>,
    /// The identity order has been sent (no-shuffle runs send it once).
    order_written: bool,
    /// The mean loss of the first batch at the starting weights (see `TrainState`).
    first_loss: Option<f32>,
    /// An epoch loss above this many times `first_loss` (or 1, if larger) is a divergence.
    /// `run_epoch` (and so `fit`) reads `first_loss` after the run's first step; the
    /// non-blocking `run_steps` and `record_steps` never read back, so a trainer driven only
    /// through them stops on a non-finite loss alone.
    explode_factor: Option<f32>,
    /// Shadow replay of every Nth step (`TrainConfig::shadow_check`).
    shadow: Option<shadow::Shadow>,
}

/// By default, training stops as diverged when an epoch's loss is over this many times the
/// loss of its first batch (or 1, if larger): no run that is learning gets there, and one
/// whose loss exploded (Adam at a learning rate of 1000) does within an epoch or two.
pub const EXPLODE_FACTOR: f32 = 1000.0;

/// The most training steps `run_epoch` records into one submission (fewer up to a point where
/// the host reads back). One submission per step costs a submit and a queue round trip per
/// step, which on a hardware GPU is most of a small step's time; a whole epoch in one would
/// leave the progress report still for its length, and on some systems a long submission
/// trips the driver's watchdog. The steps and their results are the same either way.
pub const STEPS_PER_SUBMISSION: usize = 64;

/// Where a diverged `Trainer` leaves its weights.
const KEPT: &str = "the weights of the last good step were kept (try a smaller learning rate)";

/// Where an epoch stands.
struct Cursor {
    step: usize,
    /// The epoch's scheduled learning rate (the base rate is the optimizer's, in the plan).
    lr: f32,
    started: Instant,
}

impl<'a> Trainer<'a> {
    /// Lays out and allocates everything once: parameters, gradients, optimizer state,
    /// batch buffers, and the training (and validation) data, uploaded now. All input is
    /// checked first; nothing is allocated for a run that cannot start.
    pub fn new(
        device: Device<'a>,
        model: &Model,
        loss: Loss,
        optimizer: Optimizer,
        train: &Dataset,
        validation: Option<&Dataset>,
        config: &TrainConfig,
    ) -> Result<Trainer<'a>> {
        if config.epochs == 0 {
            return Err(Error::Config("epochs must be at least 1".into()));
        }
        let shadow = shadow::Shadow::new(config, model, loss, train)?;
        let run = Run::new(
            device,
            &model.network,
            &model.params,
            loss,
            Some(&optimizer),
            Some(train),
            validation,
            config.batch_size,
            config.determinism,
        )?;
        Ok(Trainer {
            run,
            config: config.clone(),
            rng: Rng::new(config.seed),
            epoch: 0,
            step: 0,
            cursor: None,
            order_written: false,
            first_loss: None,
            explode_factor: Some(EXPLODE_FACTOR),
            shadow,
        })
    }

    /// The plan this run executes.
    pub fn plan(&self) -> &Plan {
        &self.run.plan
    }

    /// The executor (GPU tensors are reachable through it).
    pub fn executor(&self) -> &Executor<'a> {
        &self.run.exec
    }

    /// Epochs completed so far.
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Where the run stands (for checkpoints).
    pub fn state(&self) -> TrainState {
        TrainState {
            epoch: self.epoch,
            step: self.step,
            rng: self.rng.state(),
            first_loss: self.first_loss,
        }
    }

    /// Sets the factor past which a finite loss counts as exploded ([`EXPLODE_FACTOR`] by
    /// default); `None` stops training only on a non-finite loss.
    pub fn set_explode_factor(&mut self, factor: Option<f32>) -> Result<()> {
        if let Some(f) = factor.filter(|f| !(f.is_finite() && *f > 1.0)) {
            return Err(Error::Config(format!(
                "explode factor {f}: it must be a finite number above 1"
            )));
        }
        self.explode_factor = factor;
        Ok(())
    }

    /// The largest epoch loss that is not a divergence, once the first batch's loss is known.
    fn loss_limit(&self) -> Option<f32> {
        Some(self.explode_factor? * self.first_loss?.max(1.0))
    }

    /// Continues from a saved state: epoch and step counters, the shuffle stream, and the
    /// optimizer state tensors (in `Plan::state_buffers` order after the parameters).
    pub fn resume(&mut self, state: &TrainState, optimizer_state: &[Vec<f32>]) -> Result<()> {
        let ids = self.optimizer_state_buffers();
        if ids.len() != optimizer_state.len() {
            return Err(Error::Config(format!(
                "optimizer state has {} tensors, this run needs {}",
                optimizer_state.len(),
                ids.len()
            )));
        }
        for (id, values) in ids.into_iter().zip(optimizer_state) {
            self.run.exec.write_f32(&self.run.plan, id, values)?;
        }
        self.epoch = state.epoch;
        self.step = state.step;
        self.first_loss = state.first_loss;
        self.rng = Rng::from_state(state.rng.clone());
        Ok(())
    }

    fn optimizer_state_buffers(&self) -> Vec<usize> {
        let params = self.run.plan.parameter_buffers();
        self.run
            .plan
            .state_buffers()
            .into_iter()
            .filter(|id| !params.contains(id))
            .collect()
    }

    /// The optimizer's state tensors as host values (velocity or m and v, per parameter).
    pub fn optimizer_state(&self) -> Result<Vec<(String, Vec<f32>)>> {
        self.optimizer_state_buffers()
            .into_iter()
            .map(|id| {
                let name = self.run.plan.buffers[id].name.clone();
                Ok((name, self.run.exec.read_f32(id)?))
            })
            .collect()
    }

    /// Reads the current parameters back to the host.
    pub fn parameters(&self) -> Result<Parameters> {
        self.run.parameters()
    }

    /// Overwrites the parameters on the device (restoring the best epoch, say).
    pub fn set_parameters(&mut self, params: &Parameters) -> Result<()> {
        self.run.set_parameters(params)
    }

    /// Runs training steps `steps` of the current epoch (streaming their batches when the
    /// training table stays on the host).
    fn run_train(&mut self, steps: std::ops::Range<usize>) -> Result<()> {
        self.run.run_pass(Pass::Train, steps)
    }

    /// Loss and accuracy on the validation set given at construction.
    pub fn validate(&mut self) -> Result<Option<Evaluation>> {
        if self.run.plan.eval.is_none() {
            return Ok(None);
        }
        self.run.evaluate().map(Some)
    }

    /// Starts an epoch (if none is under way): the scheduled learning rate, a fresh seeded
    /// order of the training rows sent to the device, zeroed metrics, and a device-side
    /// snapshot of the state for divergence recovery. `run_epoch` calls it; call it yourself
    /// to drive steps one by one with `run_steps`.
    pub fn begin_epoch(&mut self) -> Result<()> {
        if self.cursor.is_some() {
            return Ok(());
        }
        let rows = self.run.bufs(Pass::Train)?.rows;
        let base = self
            .run
            .plan
            .optimizer
            .ok_or_else(|| Error::Config("training needs an optimizer".into()))?
            .lr;
        let lr = self
            .config
            .schedule
            .lr(base, self.epoch, self.config.epochs);
        self.run.plan.set_epoch(lr, self.step);
        self.run.exec.set_epoch(&self.run.plan)?;
        if self.config.shuffle || !self.order_written {
            let order: Vec<u32> = if self.config.shuffle {
                self.rng.permutation(rows)
            } else {
                (0..rows as u32).collect()
            };
            if let Some(s) = self.shadow.as_mut() {
                s.order = order.clone();
            }
            self.run.set_order(Pass::Train, order)?;
            self.order_written = true;
        }
        self.run.zero_metrics(Pass::Train)?;
        let state = self.run.plan.state_buffers();
        self.run.exec.save(&state)?;
        self.cursor = Some(Cursor {
            step: 0,
            lr,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Training steps in one epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.run.plan.train.as_ref().map_or(0, |d| d.steps)
    }

    /// Steps left in the current epoch (all of them before `begin_epoch`).
    pub fn steps_left(&self) -> usize {
        self.steps_per_epoch() - self.cursor.as_ref().map_or(0, |c| c.step)
    }

    /// Whether the training table is streamed from the host (too large for one binding).
    fn streamed(&self) -> bool {
        self.run
            .plan
            .train
            .as_ref()
            .is_some_and(|d| d.streamed.is_some())
    }

    /// Runs up to `n` training steps of the current epoch (starting one if needed), all in
    /// one submission on the GPU; returns how many ran. Nothing is read back.
    pub fn run_steps(&mut self, n: usize) -> Result<usize> {
        self.begin_epoch()?;
        let n = n.min(self.steps_left());
        let first = self.cursor.as_ref().map_or(0, |c| c.step);
        if n > 0 {
            self.run_train(first..first + n)?;
        }
        if let Some(c) = self.cursor.as_mut() {
            c.step += n;
        }
        Ok(n)
    }

    /// Runs the next training step one kernel at a time and returns each kernel's entry point
    /// and wall time (see `Executor::profile_step`; GPU only, not for streamed tables).
    pub fn profile_step(&mut self) -> Result<Vec<(&'static str, f64)>> {
        if self.streamed() {
            return Err(Error::Config(
                "profiling a streamed table's steps is not supported".into(),
            ));
        }
        self.begin_epoch()?;
        if self.steps_left() == 0 {
            return Ok(Vec::new());
        }
        let step = self.cursor.as_ref().map_or(0, |c| c.step);
        let times = self.run.exec.profile_step(step)?;
        if let Some(c) = self.cursor.as_mut() {
            c.step += 1;
        }
        Ok(times)
    }

    /// Runs the next training step op by op on the GPU and on the CPU twins from the same
    /// buffers and returns the first op whose output differs past `tolerance` (see
    /// [`crate::exec::OpDivergence`]); `None` when every op agrees. GPU only, not for
    /// streamed tables. The step counts as run (its result stays on the device).
    pub fn locate_step(&mut self, tolerance: f64) -> Result<Option<crate::exec::OpDivergence>> {
        if self.streamed() {
            return Err(Error::Config(
                "locating a divergent op needs the training table on the device (it is streamed)"
                    .into(),
            ));
        }
        self.begin_epoch()?;
        if self.steps_left() == 0 {
            return Ok(None);
        }
        let step = self.cursor.as_ref().map_or(0, |c| c.step);
        let skip = self.data_buffers();
        let found = self
            .run
            .exec
            .locate(&self.run.plan, step, tolerance, &skip)?;
        if let Some(c) = self.cursor.as_mut() {
            c.step += 1;
        }
        Ok(found)
    }

    /// The data tables and row orders: buffers no op of a step writes.
    fn data_buffers(&self) -> Vec<usize> {
        [self.run.plan.train.as_ref(), self.run.plan.eval.as_ref()]
            .into_iter()
            .flatten()
            .flat_map(|d| [Some(d.x), d.labels, d.values, Some(d.indices)])
            .flatten()
            .collect()
    }

    /// Records up to `n` training steps of the current epoch into a compute pass the caller
    /// owns (a host application's frame), starting an epoch if needed; returns how many.
    /// Nothing is submitted for the steps and nothing waits; starting an epoch queues the
    /// epoch's order and submits one small copy (the divergence snapshot).
    pub fn record_steps(&mut self, cpass: &mut wgpu::ComputePass<'_>, n: usize) -> Result<usize> {
        if self.streamed() {
            return Err(Error::Config(
                "the training table is streamed from the host (too large for one binding); its steps need run_steps, not record_steps".into(),
            ));
        }
        self.begin_epoch()?;
        let n = n.min(self.steps_left());
        let first = self.cursor.as_ref().map_or(0, |c| c.step);
        self.run
            .exec
            .record_into(Pass::Train, first..first + n, cpass)?;
        if let Some(c) = self.cursor.as_mut() {
            c.step += n;
        }
        Ok(n)
    }

    /// Starts reading the running loss back without waiting: the returned handle resolves
    /// once whoever owns the device polls it past the copy (GPU only; on the CPU path the
    /// value is ready at once).
    pub fn start_loss_readback(&self) -> Result<LossReadback> {
        let bufs = self.run.bufs(Pass::Train)?;
        let done = self.cursor.as_ref().map_or(0, |c| c.step);
        let rows = (done * self.run.plan.batch).clamp(1, bufs.rows);
        Ok(match self.run.exec.tensor(bufs.loss_sum) {
            Some(t) => LossReadback {
                pending: Some(
                    t.start_read(
                        self.run
                            .exec
                            .gpu()
                            .ok_or_else(|| Error::Config("no GPU".into()))?,
                    )?,
                ),
                value: None,
                rows,
            },
            None => LossReadback {
                pending: None,
                value: Some(self.run.exec.read_f32(bufs.loss_sum)?[0]),
                rows,
            },
        })
    }

    /// The weight and bias tensors of layer `i` as they live on the GPU (weight
    /// `(outputs, inputs)` row-major f32, bias `(outputs)`), for a host's own shaders.
    /// `None` on the CPU path or past the last layer.
    pub fn layer_tensors(&self, i: usize) -> Option<(&GpuTensor, Option<&GpuTensor>)> {
        let l = self.run.plan.layers.get(i)?;
        let w = self.run.exec.tensor(l.weight)?;
        let b = l.bias.and_then(|b| self.run.exec.tensor(b));
        Some((w, b))
    }

    /// The mean training loss of the current epoch so far (a readback, which waits for the
    /// device).
    pub fn running_loss(&self) -> Result<f32> {
        let bufs = self.run.bufs(Pass::Train)?;
        let done = self.cursor.as_ref().map_or(0, |c| c.step);
        let sum = self.run.exec.read_f32(bufs.loss_sum)?[0];
        Ok(sum / (done * self.run.plan.batch).clamp(1, bufs.rows) as f32)
    }

    /// Finishes the current epoch (running any steps left): reads its metrics, checks the
    /// loss, evaluates the validation set. A non-finite loss stops the run with
    /// `Error::Diverged`, naming the epoch and step, with the parameters of the last good
    /// step left in place.
    pub fn end_epoch(&mut self) -> Result<EpochMetrics> {
        let left = self.steps_left();
        self.run_steps(left)?;
        // Owned: the divergence search below runs steps while it reads them.
        let bufs = self.run.bufs(Pass::Train)?.clone();
        let (train_loss, train_accuracy) = self.run.read_metrics(Pass::Train)?;
        let cursor = self
            .cursor
            .take()
            .ok_or_else(|| Error::Config("no epoch under way".into()))?;
        let limit = self.loss_limit();
        if !train_loss.is_finite() || limit.is_some_and(|l| train_loss > l) {
            return Err(self.find_divergence(&bufs, train_loss, limit));
        }
        self.step += bufs.steps as u64;
        self.epoch += 1;
        let seconds = cursor.started.elapsed().as_secs_f64();
        let val = self.validate()?;
        Ok(EpochMetrics {
            epoch: self.epoch,
            lr: cursor.lr,
            train_loss,
            train_accuracy,
            val_loss: val.map(|v| v.loss),
            val_accuracy: val.and_then(|v| v.accuracy),
            seconds,
            samples_per_s: bufs.rows as f64 / seconds.max(1e-9),
        })
    }

    /// One epoch: a fresh (seeded) order, then every batch, up to [`STEPS_PER_SUBMISSION`]
    /// steps per submission (a submission ends where the host reads back: a log point of
    /// `TrainConfig::log_every`, a shadow-checked step), then the epoch's metrics (see
    /// `end_epoch`). `on_step` is called once per step, after the submission that ran it. The run's very first step is read back once:
    /// its loss is what an exploding loss is measured against. With
    /// `TrainConfig::shadow_check`, every Nth step is replayed on the CPU path and compared
    /// ([`Trainer::shadow_reports`]); `run_steps` and `record_steps` replay nothing.
    pub fn run_epoch(&mut self, mut on_step: impl FnMut(Progress)) -> Result<EpochMetrics> {
        self.begin_epoch()?;
        let steps = self.steps_per_epoch();
        let log_every = self.config.log_every;
        while self.steps_left() > 0 {
            let index = steps - self.steps_left();
            let shadowed = self.shadow_due(index);
            if shadowed {
                let state = self.run.plan.state_buffers();
                self.run.exec.save_shadow(&state)?;
            }
            let n = self.steps_to_record(index, shadowed);
            self.run_steps(n)?;
            if shadowed {
                self.shadow_replay(index, self.epoch)?;
            }
            let s = steps - self.steps_left();
            for done in index + 1..s {
                on_step(Progress {
                    epoch: self.epoch + 1,
                    step: done,
                    steps,
                    loss: None,
                });
            }
            if s == 1 && self.first_loss.is_none() && self.explode_factor.is_some() {
                // The run's first step, read back once: the loss at the starting weights.
                let bufs = self.run.bufs(Pass::Train)?;
                let rows = self.run.plan.batch.min(bufs.rows).max(1);
                let sum = self.run.exec.read_f32(bufs.loss_sum)?[0];
                self.first_loss = Some(sum / rows as f32).filter(|l| l.is_finite());
            }
            let loss = if log_every > 0 && s.is_multiple_of(log_every) {
                Some(self.running_loss()?)
            } else {
                None
            };
            on_step(Progress {
                epoch: self.epoch + 1,
                step: s,
                steps,
                loss,
            });
        }
        self.end_epoch()
    }

    /// How many steps `run_epoch` records in its next submission, from step `index` of the
    /// epoch: up to [`STEPS_PER_SUBMISSION`], ending at the epoch's end or at the next point
    /// where the host reads something back (a log point, the run's first step, whose loss
    /// it reads once) or copies the state first (a shadow-checked step, which runs alone).
    fn steps_to_record(&self, index: usize, shadowed: bool) -> usize {
        let log_every = self.config.log_every;
        let first_loss_due = self.first_loss.is_none() && self.explode_factor.is_some();
        if shadowed || (index == 0 && first_loss_due) {
            return 1;
        }
        let mut n = 1;
        let left = self.steps_left();
        while n < STEPS_PER_SUBMISSION
            && n < left
            && !(log_every > 0 && (index + n).is_multiple_of(log_every))
            && !self.shadow_due(index + n)
        {
            n += 1;
        }
        n
    }

    /// Replays the epoch from its saved start, reading the loss after every step, to find
    /// the first bad step (a non-finite loss, or one over `limit`); then replays up to the
    /// step before it, so that the last good weights stay on the device.
    fn find_divergence(
        &mut self,
        bufs: &crate::plan::DataBufs,
        epoch_loss: f32,
        limit: Option<f32>,
    ) -> Error {
        let epoch = self.epoch + 1;
        let batch = self.run.plan.batch;
        let mut search = || -> Result<Error> {
            self.run.exec.restore()?;
            self.run.zero_metrics(Pass::Train)?;
            let mut bad = (bufs.steps, epoch_loss);
            let mut before = 0.0;
            for s in 0..bufs.steps {
                self.run_train(s..s + 1)?;
                let sum = self.run.exec.read_f32(bufs.loss_sum)?[0];
                let rows = batch.min(bufs.rows.saturating_sub(s * batch)).max(1);
                let loss = (sum - before) / rows as f32;
                before = sum;
                if !sum.is_finite() || limit.is_some_and(|l| loss > l) {
                    bad = (s, if sum.is_finite() { loss } else { sum });
                    break;
                }
            }
            self.run.exec.restore()?;
            if bad.0 > 0 {
                self.run_train(0..bad.0)?;
            }
            self.step += bad.0 as u64;
            let cause = match (bad.1.is_finite(), limit, self.first_loss) {
                (true, Some(_), Some(first)) => format!(
                    "the batch loss is {:.4e}, over {} times the first batch's {first:.4}",
                    bad.1,
                    self.explode_factor.unwrap_or(EXPLODE_FACTOR)
                ),
                _ => format!("the loss is {}", bad.1),
            };
            Ok(Error::Diverged {
                epoch,
                step: bad.0 + 1,
                loss: bad.1,
                cause,
                kept: KEPT.into(),
            })
        };
        match search() {
            Ok(e) => e,
            Err(e) => e,
        }
    }

    /// Trains for the configured epochs (from wherever the run stands), with early
    /// stopping and best-weight restoring as configured. `on_epoch` sees the trainer and each
    /// epoch's metrics as it ends (to save a checkpoint, say) and returns whether to go on;
    /// `on_step` sees each step.
    pub fn fit(
        &mut self,
        mut on_epoch: impl FnMut(&Trainer<'a>, &EpochMetrics) -> Result<Flow>,
        mut on_step: impl FnMut(Progress),
    ) -> Result<History> {
        let mut history = History::default();
        let mut best: Option<(f32, usize, Option<Parameters>)> = None;
        let mut since_best = 0;
        while self.epoch < self.config.epochs {
            let m = self.run_epoch(&mut on_step)?;
            history.epochs.push(m);
            history.best_epoch = m.epoch;
            if on_epoch(self, &m)? == Flow::Stop {
                history.paused = true;
                return Ok(history);
            }
            let Some(es) = self.config.early_stopping else {
                continue;
            };
            let monitored = m.val_loss.unwrap_or(m.train_loss);
            let improved = match &best {
                None => true,
                Some((b, _, _)) => monitored < b - es.min_delta,
            };
            if improved {
                let snapshot = if es.restore_best {
                    Some(self.parameters()?)
                } else {
                    None
                };
                best = Some((monitored, m.epoch, snapshot));
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= es.patience {
                    history.stopped_early = true;
                    break;
                }
            }
        }
        if history.stopped_early {
            if let Some((_, epoch, Some(params))) = best {
                self.set_parameters(&params)?;
                history.best_epoch = epoch;
            }
        }
        Ok(history)
    }
}

/// A running-loss readback in flight (see `Trainer::start_loss_readback`).
pub struct LossReadback {
    pending: Option<crate::tensor::Readback>,
    value: Option<f32>,
    rows: usize,
}

impl LossReadback {
    /// Whether the value has arrived (never blocks, never polls the device).
    pub fn is_ready(&self) -> bool {
        self.value.is_some() || self.pending.as_ref().is_some_and(|p| p.is_ready())
    }

    /// The mean loss, once ready; `Ok(None)` while the copy is still in flight.
    pub fn try_take(&mut self) -> Result<Option<f32>> {
        if let Some(v) = self.value {
            return Ok(Some(v / self.rows as f32));
        }
        match self.pending.take() {
            Some(p) if p.is_ready() => {
                // The map has completed, so this future is already resolved.
                let bytes = pollster::block_on(p.into_future())?;
                let sum = bytes
                    .get(..4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(f32::NAN);
                self.value = Some(sum);
                Ok(Some(sum / self.rows as f32))
            }
            other => {
                self.pending = other;
                Ok(None)
            }
        }
    }
}
