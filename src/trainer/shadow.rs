//! Shadow replay: every `N` training steps, the step that just ran on the device is run again
//! on the host from the same state and batch, and every parameter and optimizer-state tensor
//! is compared ([`ShadowReport`]). The device keeps the pre-step state as copies recorded into
//! the step's own submission ([`Executor::save_shadow`](crate::exec::Executor::save_shadow));
//! the steps in between stay single submissions with nothing read back.
//!
//! The replay runs on the threaded CPU path (`Device::Cpu`): a one-batch [`Trainer`] over the
//! step's rows, started from the device's pre-step parameters and optimizer state, at the
//! same learning rate and optimizer step. Its sums run in another order than the device's,
//! so the two agree to f32 rounding, not bit for bit: a tensor passes when the relative L2
//! norm of its difference is within the tolerance. The default tolerance is derived from f32
//! rounding at the longest sum the step computes: `16 · k · 2⁻²⁴`, with `k` the larger of
//! the batch and the widest layer (the rounding bound of a length-`k` dot product is
//! `k · 2⁻²⁴` relative to its terms' magnitudes; the factor 16 covers a step's layers and
//! the optimizer's update on top of it).

use serde::{Deserialize, Serialize};

use super::{Model, TrainConfig, TrainState, Trainer};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::exec::Device;
use crate::network::{LayerParams, Parameters};
use crate::ops::Loss;
use crate::rng::Rng;

/// One tensor of a shadow step: how far the device's value is from the host replay's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowTensor {
    /// The buffer's name (`layers.0.weight`, `layers.0.weight.m`, ...).
    pub name: String,
    pub max_abs: f64,
    /// The largest `|device - host| / |host|` over elements whose host value is not 0.
    pub max_rel: f64,
    /// The largest distance in units in the last place between the two f32 values.
    pub max_ulp: u64,
    /// `‖device - host‖₂ / ‖host‖₂` (the absolute norm where the host tensor is all 0).
    pub rel_l2: f64,
}

/// One shadow-checked step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    /// The step's number in the run, from 1.
    pub step: u64,
    /// The epoch it belongs to, from 1.
    pub epoch: usize,
    /// The tolerance each tensor's `rel_l2` was held to.
    pub tolerance: f64,
    pub tensors: Vec<ShadowTensor>,
    /// For the run's first step past the tolerance, on the GPU: the step run again op by op
    /// from its pre-step state, and the first op past [`LOCATE_TOLERANCE`] (`None` when no
    /// single op is, or the step was not located).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub located: Option<crate::exec::OpDivergence>,
    /// Whether the step was run op by op (so that `located: None` means no op was past it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub searched: bool,
}

/// The per-element tolerance of the op-by-op search after a failed shadow step (relative to
/// each buffer's largest value), as `soma check --locate`'s default.
pub const LOCATE_TOLERANCE: f64 = 1e-4;

impl ShadowReport {
    /// The tensor furthest from the replay (by `rel_l2`).
    pub fn worst(&self) -> Option<&ShadowTensor> {
        self.tensors
            .iter()
            .max_by(|a, b| a.rel_l2.total_cmp(&b.rel_l2))
    }

    /// Whether every tensor is within the tolerance.
    pub fn pass(&self) -> bool {
        self.tensors.iter().all(|t| t.rel_l2 <= self.tolerance)
    }
}

/// What a trainer needs to shadow its steps.
pub(super) struct Shadow {
    pub every: usize,
    pub tolerance: f64,
    /// The training rows as the device holds them.
    pub train: Dataset,
    pub loss: Loss,
    /// The current epoch's order of the training rows.
    pub order: Vec<u32>,
    pub reports: Vec<ShadowReport>,
    /// A failed step was already searched op by op (only the first is).
    pub searched: bool,
}

impl Shadow {
    pub fn new(
        config: &TrainConfig,
        model: &Model,
        loss: Loss,
        train: &Dataset,
    ) -> Result<Option<Shadow>> {
        let Some(every) = config.shadow_check else {
            return Ok(None);
        };
        if every == 0 {
            return Err(Error::Config(
                "shadow check every 0 steps: it must be at least 1".into(),
            ));
        }
        let tolerance = match config.shadow_tolerance {
            Some(t) if t.is_finite() && t >= 0.0 => t,
            Some(t) => {
                return Err(Error::Config(format!(
                    "shadow tolerance {t}: it must be a finite number, 0 or more"
                )))
            }
            None => default_tolerance(config.batch_size, &model.network.widths()),
        };
        Ok(Some(Shadow {
            every,
            tolerance,
            train: train.clone(),
            loss,
            order: Vec::new(),
            reports: Vec::new(),
            searched: false,
        }))
    }
}

/// `16 · k · 2⁻²⁴`, `k` the larger of the batch and the widest layer (see the module docs).
pub fn default_tolerance(batch: usize, widths: &[usize]) -> f64 {
    let k = widths.iter().copied().max().unwrap_or(1).max(batch).max(1);
    16.0 * k as f64 * f64::from(f32::EPSILON) / 2.0
}

/// An f32's position on a line where adjacent floats are 1 apart (-0 and +0 both at 0).
fn ordered(x: f32) -> i64 {
    let i = i64::from(x.to_bits() as i32);
    if i < 0 {
        i64::from(i32::MIN) - i
    } else {
        i
    }
}

/// How far `device` is from `host`, element by element.
pub fn compare(name: &str, device: &[f32], host: &[f32]) -> ShadowTensor {
    let (mut max_abs, mut max_rel, mut max_ulp) = (0f64, 0f64, 0u64);
    let (mut num, mut den) = (0f64, 0f64);
    for (&d, &h) in device.iter().zip(host) {
        let diff = if d.is_finite() && h.is_finite() {
            (f64::from(d) - f64::from(h)).abs()
        } else if d.to_bits() == h.to_bits() {
            0.0
        } else {
            f64::INFINITY
        };
        max_abs = max_abs.max(diff);
        if h != 0.0 {
            max_rel = max_rel.max(diff / f64::from(h).abs());
        }
        max_ulp = max_ulp.max(ordered(d).abs_diff(ordered(h)));
        num += diff * diff;
        den += f64::from(h) * f64::from(h);
    }
    if device.len() != host.len() {
        max_abs = f64::INFINITY;
        num = f64::INFINITY;
    }
    let rel_l2 = if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    };
    ShadowTensor {
        name: name.to_string(),
        max_abs,
        max_rel,
        max_ulp,
        rel_l2,
    }
}

impl<'a> Trainer<'a> {
    /// The reports of the shadow-checked steps so far (see [`TrainConfig::shadow_check`]).
    pub fn shadow_reports(&self) -> &[ShadowReport] {
        self.shadow.as_ref().map_or(&[], |s| &s.reports)
    }

    /// Whether the step at `index` of the current epoch is shadow-checked: the run's
    /// `N`th, `2N`th, ... step.
    pub(super) fn shadow_due(&self, index: usize) -> bool {
        self.shadow
            .as_ref()
            .is_some_and(|s| (self.step + index as u64 + 1).is_multiple_of(s.every as u64))
    }

    /// Replays step `index` of the current epoch (just run on the device, with its pre-step
    /// state copied by `save_shadow`) on the CPU path, and records the comparison.
    pub(super) fn shadow_replay(&mut self, index: usize, lr_epoch: usize) -> Result<()> {
        let Some(shadow) = self.shadow.as_ref() else {
            return Ok(());
        };
        let plan = &self.run.plan;
        let state_ids = plan.state_buffers();
        let pre = self.run.exec.read_shadow()?;
        let value = |id: usize| -> Result<&Vec<f32>> {
            pre.iter()
                .find(|(i, _)| *i == id)
                .map(|(_, v)| v)
                .ok_or_else(|| Error::Config(format!("no shadow copy of buffer {id}")))
        };
        let mut layers = Vec::with_capacity(plan.layers.len());
        for l in &plan.layers {
            layers.push(LayerParams {
                weight: value(l.weight)?.clone(),
                bias: l.bias.map(value).transpose()?.cloned(),
            });
        }
        let model = Model::with_params(plan.network.clone(), Parameters { layers })?;
        let optimizer = plan
            .optimizer
            .ok_or_else(|| Error::Config("shadow replay needs an optimizer".into()))?;
        let params = plan.parameter_buffers();
        let opt_state: Vec<Vec<f32>> = state_ids
            .iter()
            .filter(|id| !params.contains(id))
            .map(|&id| value(id).cloned())
            .collect::<Result<_>>()?;
        // The step's rows, in the device's order.
        let batch = plan.batch;
        let start = (index * batch).min(shadow.order.len());
        let end = ((index + 1) * batch).min(shadow.order.len());
        let rows: Vec<usize> = shadow.order[start..end]
            .iter()
            .map(|&r| r as usize)
            .collect();
        let data = shadow.train.select(&rows);
        let config = TrainConfig {
            epochs: self.config.epochs,
            batch_size: batch,
            shuffle: false,
            seed: 0,
            validation_fraction: None,
            early_stopping: None,
            schedule: self.config.schedule,
            log_every: 0,
            shadow_check: None,
            shadow_tolerance: None,
            shadow_stop: false,
            // The replay does the run's arithmetic: under strict mode, soma's routines and
            // the plain-loop products, the same bits as the device.
            determinism: self.config.determinism,
        };
        let step = self.step + index as u64;
        let mut host = Trainer::new(
            Device::Cpu,
            &model,
            shadow.loss,
            optimizer,
            &data,
            None,
            &config,
        )?;
        host.set_explode_factor(None)?;
        host.resume(
            &TrainState {
                epoch: lr_epoch,
                step,
                rng: Rng::new(0).state(),
                first_loss: None,
            },
            &opt_state,
        )?;
        host.run_steps(1)?;
        let mut tensors = Vec::with_capacity(state_ids.len());
        let after = self.run.exec.read_many_f32(&state_ids)?;
        // The replay's state buffers by name (its plan numbers buffers its own way).
        let host_ids: std::collections::HashMap<&str, usize> = host
            .run
            .plan
            .state_buffers()
            .into_iter()
            .map(|h| (host.run.plan.buffers[h].name.as_str(), h))
            .collect();
        for (&id, device) in state_ids.iter().zip(after) {
            let name = &self.run.plan.buffers[id].name;
            let hid = *host_ids
                .get(name.as_str())
                .ok_or_else(|| Error::Config(format!("the replay has no buffer '{name}'")))?;
            let replayed = host.run.exec.read_f32(hid)?;
            tensors.push(compare(name, &device, &replayed));
        }
        let mut report = ShadowReport {
            step: step + 1,
            epoch: self.epoch + 1,
            tolerance: self.shadow.as_ref().map_or(0.0, |s| s.tolerance),
            tensors,
            located: None,
            searched: false,
        };
        let first_failure = self.shadow.as_ref().is_some_and(|s| !s.searched);
        // Op by op runs one device's step: not a data-parallel one, whose ops run on every
        // replica around a sum.
        let one_gpu = matches!(self.run.exec, crate::exec::Executor::Gpu(_));
        if !report.pass() && first_failure && one_gpu && !self.streamed() {
            report.located = self.locate_failed_step(&pre)?;
            report.searched = true;
            if let Some(s) = self.shadow.as_mut() {
                s.searched = true;
            }
        }
        let failed = (!report.pass() && self.config.shadow_stop).then(|| {
            let worst = report.worst();
            Error::ShadowMismatch {
                step: report.step,
                tensor: worst.map(|w| w.name.clone()).unwrap_or_default(),
                rel_l2: worst.map_or(f64::NAN, |w| w.rel_l2),
                tolerance: report.tolerance,
                kept: "the device holds that step's result".into(),
            }
        });
        if let Some(s) = self.shadow.as_mut() {
            s.reports.push(report);
        }
        failed.map_or(Ok(()), Err)
    }
}

impl<'a> Trainer<'a> {
    /// Runs the step just run again, op by op against the CPU twins (`locate_step`), from
    /// its pre-step state `pre`; then puts back every buffer as the step left it, so that
    /// training goes on exactly as it would have.
    fn locate_failed_step(
        &mut self,
        pre: &[(usize, Vec<f32>)],
    ) -> Result<Option<crate::exec::OpDivergence>> {
        let skip = self.data_buffers();
        let keep: Vec<usize> = (0..self.run.plan.buffers.len())
            .filter(|id| !skip.contains(id))
            .collect();
        let after = self.run.exec.read_many_f32(&keep)?;
        for (id, values) in pre {
            self.run.exec.write_f32(&self.run.plan, *id, values)?;
        }
        if let Some(c) = self.cursor.as_mut() {
            c.step -= 1;
        }
        let found = self.locate_step(LOCATE_TOLERANCE);
        for (&id, values) in keep.iter().zip(&after) {
            match self.run.plan.buffers[id].dtype {
                crate::tensor::DType::F32 => self.run.exec.write_f32(&self.run.plan, id, values)?,
                crate::tensor::DType::U32 => {
                    let words: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
                    self.run.exec.write_u32(&self.run.plan, id, &words)?
                }
                // `read_many_f32` above refuses f16 buffers, so none gets here.
                crate::tensor::DType::F16 => {
                    return Err(Error::Config(format!(
                        "buffer '{}' is F16: the shadow check does not handle f16 buffers yet",
                        self.run.plan.buffers[id].name
                    )))
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_measures_abs_rel_ulp_and_l2() {
        let t = compare("x", &[1.0, 2.0, 0.0], &[1.0, 2.0, 0.0]);
        assert_eq!(
            (t.max_abs, t.max_rel, t.max_ulp, t.rel_l2),
            (0.0, 0.0, 0, 0.0)
        );
        let up = f32::from_bits(1.0f32.to_bits() + 3);
        let t = compare("x", &[up, -2.0], &[1.0, -2.0]);
        assert_eq!(t.max_ulp, 3);
        assert!((t.max_rel - 3.0 * f64::from(f32::EPSILON)).abs() < 1e-12);
        // Across zero: -min_positive to +min_positive is 2 ulps.
        let tiny = f32::from_bits(1);
        assert_eq!(compare("x", &[-tiny], &[tiny]).max_ulp, 2);
        assert_eq!(compare("x", &[-0.0], &[0.0]).max_ulp, 0);
        // A NaN is infinitely far, unless both are the same NaN.
        assert_eq!(compare("x", &[f32::NAN], &[1.0]).rel_l2, f64::INFINITY);
        // rel L2: |(3,4) - (3,4.5)| / |(3,4.5)|.
        let t = compare("x", &[3.0, 4.0], &[3.0, 4.5]);
        assert!((t.rel_l2 - 0.5 / (9.0f64 + 20.25).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn the_default_tolerance_grows_with_the_longest_sum() {
        let u = f64::from(f32::EPSILON) / 2.0;
        assert_eq!(default_tolerance(32, &[784, 256, 10]), 16.0 * 784.0 * u);
        assert_eq!(default_tolerance(1000, &[4, 16, 3]), 16.0 * 1000.0 * u);
    }
}
