//! The data-parallel executor: one replica of a plan per device, each taking its fixed share
//! of every global batch (`Plan::shard`). A training step runs on every replica up to its
//! gradients; the gradients cross the host once, are summed in replica order (and over the
//! processes, through an [`Exchange`]), and the sum goes back to every replica, which then
//! applies the same update. An evaluation pass runs each replica on its share, with no
//! exchange. Metric sums (loss, correct count) are read as their sums over the replicas.
//! What to run when is still the trainer's: it drives this executor as it drives one.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::parallel::Exchange;
use crate::plan::{BufId, Plan};
use crate::tensor::{start_read_many, start_read_many_into, DType, GpuTensor, Readback, Staging};

use super::{Device, Executor, Pass, StepBounds};
use crate::parallel::Overlap;

/// One replica: its share of the plan, the executor that holds it, and where its training
/// step's parts end.
struct Replica<'a> {
    plan: Plan,
    exec: Executor<'a>,
    bounds: StepBounds,
    /// On a GPU replica of a training run, the staging buffers its gradients are read back
    /// through every step, made once: all of them ([`ALL_GRADS`]), then each backward
    /// stage's, last layer first (`--overlap`).
    staging: Vec<Staging>,
}

impl Replica<'_> {
    /// Starts the readback of f32 buffers `ids` on a GPU replica, through its kept staging
    /// buffer `staging` where it has one; `None` on a CPU replica (read it directly).
    fn start_read(&self, ids: &[BufId], staging: Option<usize>) -> Result<Option<Readback>> {
        let Executor::Gpu(g) = &self.exec else {
            return Ok(None);
        };
        let tensors: Vec<&GpuTensor> = ids.iter().map(|&id| &g.tensors[id]).collect();
        let readback = match staging.and_then(|i| self.staging.get(i)) {
            Some(kept) => start_read_many_into(g.gpu, &tensors, kept)?,
            None => start_read_many(g.gpu, &tensors)?,
        };
        Ok(Some(readback))
    }

    /// The values of `ids`, concatenated: from a readback `start_read` began, else read
    /// directly.
    fn finish_read(&self, ids: &[BufId], pending: Option<Readback>) -> Result<Vec<f32>> {
        match (pending, self.exec.gpu()) {
            // f32 tensors, one after another: the bytes are their values in order.
            (Some(readback), Some(gpu)) => Ok(readback
                .wait(gpu)?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            _ => Ok(ids
                .iter()
                .map(|&id| self.exec.read_f32(id))
                .collect::<Result<Vec<_>>>()?
                .concat()),
        }
    }
}

/// Adds `values` into `sum` elementwise (the next replica's, in replica order); the first
/// replica's become the sum.
fn add_in_order(sum: &mut Vec<f32>, values: Vec<f32>) {
    if sum.is_empty() {
        *sum = values;
    } else {
        for (s, v) in sum.iter_mut().zip(values) {
            *s += v;
        }
    }
}

/// The index in `Replica::staging` of the staging buffer for every gradient at once.
const ALL_GRADS: usize = 0;

/// Each backward stage's gradient buffers, last layer first.
fn buckets(plan: &Plan) -> Vec<Vec<BufId>> {
    plan.train_step
        .backward
        .iter()
        .map(|b| std::iter::once(b.d_weight).chain(b.d_bias).collect())
        .collect()
}

/// The replicas this process drives, and the exchange with other processes' replicas.
pub struct Replicas<'a> {
    replicas: Vec<Replica<'a>>,
    exchange: Option<&'a dyn Exchange>,
    overlap: Overlap,
    /// Every gradient buffer, in the order of the summed vector.
    grads: Vec<BufId>,
    /// The metric accumulators (loss sums, correct counts): read as their sums.
    summed: Vec<BufId>,
    /// The batch buffers, which hold each replica's own share of a batch: no one replica's
    /// is the run's, so they are not read.
    shares: Vec<BufId>,
}

impl<'a> Replicas<'a> {
    /// The executor of `plan` over `devices` (one replica each) or, with an `exchange`,
    /// over one device per process: a plain one where there is a single replica in all.
    pub(super) fn executor(
        devices: &[Device<'a>],
        exchange: Option<&'a dyn Exchange>,
        overlap: Overlap,
        plan: &Plan,
    ) -> Result<Executor<'a>> {
        let (first, count) = match exchange {
            Some(e) if devices.len() == 1 => (e.rank(), e.size()),
            Some(e) => {
                return Err(Error::Config(format!(
                    "a run over {} processes drives one device in each, not {}",
                    e.size(),
                    devices.len()
                )))
            }
            None => (0, devices.len()),
        };
        match devices {
            [] => Err(Error::Config(
                "a data-parallel run needs at least one device".into(),
            )),
            [one] if count == 1 => Executor::new(*one, plan),
            _ => {
                if devices
                    .iter()
                    .any(|d| matches!(d, Device::Gpus(_) | Device::Parallel(_)))
                {
                    return Err(Error::Config(
                        "a replica's device cannot itself be data-parallel".into(),
                    ));
                }
                check_limits(devices)?;
                let replicas = devices
                    .iter()
                    .enumerate()
                    .map(|(i, &device)| {
                        let plan = plan.shard(first + i, count)?;
                        let exec = Executor::new(device, &plan)?;
                        let bounds = exec.step_bounds(&plan);
                        let staging = match (&exec, &plan.train) {
                            (Executor::Gpu(g), Some(_)) => {
                                let tensors = |ids: &[BufId]| -> Vec<&GpuTensor> {
                                    ids.iter().map(|&id| &g.tensors[id]).collect()
                                };
                                let all: Vec<BufId> = buckets(&plan).concat();
                                std::iter::once(all)
                                    .chain(buckets(&plan))
                                    .map(|ids| Staging::for_tensors(g.gpu, &tensors(&ids)))
                                    .collect()
                            }
                            _ => Vec::new(),
                        };
                        Ok(Replica {
                            plan,
                            exec,
                            bounds,
                            staging,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let grads = plan
                    .layers
                    .iter()
                    .flat_map(|l| std::iter::once(l.d_weight).chain(l.d_bias))
                    .collect();
                let summed = [plan.train.as_ref(), plan.eval.as_ref()]
                    .into_iter()
                    .flatten()
                    .flat_map(|d| std::iter::once(d.loss_sum).chain(d.correct))
                    .collect();
                let mut shares = vec![plan.input, plan.row_loss, plan.grad_out];
                shares.extend(plan.batch_labels.iter().chain(&plan.batch_values));
                for l in &plan.layers {
                    shares.extend([l.pre, l.out].iter().chain(&l.delta));
                }
                Ok(Executor::Replicas(Box::new(Replicas {
                    replicas,
                    exchange,
                    overlap,
                    grads,
                    summed,
                    shares,
                })))
            }
        }
    }

    /// Replicas in this process.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Never: a `Replicas` has two replicas or more over every process.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    fn first(&self) -> &Executor<'a> {
        &self.replicas[0].exec
    }

    pub(super) fn write_f32(&mut self, id: BufId, data: &[f32]) -> Result<()> {
        for r in &mut self.replicas {
            r.exec.write_f32(&r.plan, id, data)?;
        }
        Ok(())
    }

    pub(super) fn write_u32(&mut self, id: BufId, data: &[u32]) -> Result<()> {
        for r in &mut self.replicas {
            r.exec.write_u32(&r.plan, id, data)?;
        }
        Ok(())
    }

    /// The elementwise sum of f32 buffers `ids` over every replica, in replica order (this
    /// process's, then through the exchange over the processes'), concatenated: one readback
    /// per replica, all started before any is waited for, through each replica's kept
    /// staging buffer `staging` where it has one.
    fn sum_f32(&self, ids: &[BufId], staging: Option<usize>) -> Result<Vec<f32>> {
        let started = self
            .replicas
            .iter()
            .map(|r| r.start_read(ids, staging))
            .collect::<Result<Vec<_>>>()?;
        let mut sum = Vec::new();
        for (r, pending) in self.replicas.iter().zip(started) {
            add_in_order(&mut sum, r.finish_read(ids, pending)?);
        }
        if let Some(e) = self.exchange {
            e.sum_f32(&mut sum)?;
        }
        Ok(sum)
    }

    /// The sum of u32 buffer `id` over every replica (wrapping), in replica order.
    fn sum_u32(&self, id: BufId) -> Result<Vec<u32>> {
        let mut sum: Vec<u32> = Vec::new();
        for r in &self.replicas {
            let values = r.exec.read_u32(id)?;
            if sum.is_empty() {
                sum = values;
            } else {
                for (s, v) in sum.iter_mut().zip(values) {
                    *s = s.wrapping_add(v);
                }
            }
        }
        if let Some(e) = self.exchange {
            e.sum_u32(&mut sum)?;
        }
        Ok(sum)
    }

    /// Refuses a batch buffer: each replica holds its own share.
    fn shared(&self, id: BufId) -> Result<()> {
        if self.shares.contains(&id) {
            return Err(Error::Config(format!(
                "'{}' holds each replica's own share of the batch; read it from a run on one device",
                self.replicas[0].plan.buffers[id].name
            )));
        }
        Ok(())
    }

    pub(super) fn read_f32(&self, id: BufId) -> Result<Vec<f32>> {
        self.shared(id)?;
        if self.summed.contains(&id) {
            self.sum_f32(&[id], None)
        } else {
            self.first().read_f32(id)
        }
    }

    pub(super) fn read_u32(&self, id: BufId) -> Result<Vec<u32>> {
        self.shared(id)?;
        if self.summed.contains(&id) {
            self.sum_u32(id)
        } else {
            self.first().read_u32(id)
        }
    }

    pub(super) fn read_many_f32(&self, ids: &[BufId]) -> Result<Vec<Vec<f32>>> {
        ids.iter().map(|&id| self.read_f32(id)).collect()
    }

    pub(super) fn read_words(&self, ids: &[BufId]) -> Result<Vec<[u8; 4]>> {
        ids.iter()
            .map(|&id| {
                let dtype = self.replicas[0].plan.buffers[id].dtype;
                Ok(match dtype {
                    DType::F32 => self
                        .read_f32(id)?
                        .first()
                        .map_or([0; 4], |x| x.to_le_bytes()),
                    DType::U32 => self
                        .read_u32(id)?
                        .first()
                        .map_or([0; 4], |x| x.to_le_bytes()),
                    DType::F16 => {
                        return Err(super::f16_unsupported(
                            &self.replicas[0].plan.buffers[id].name,
                            "a data-parallel run",
                        ))
                    }
                })
            })
            .collect()
    }

    /// Steps `steps` of `pass`: training steps one at a time, each in parts around the
    /// gradients' sum; evaluation batches all at once on every replica.
    pub(super) fn run(&mut self, pass: Pass, steps: Range<usize>) -> Result<()> {
        if pass == Pass::Eval {
            for r in &mut self.replicas {
                r.exec.run(&r.plan, pass, steps.clone())?;
            }
            return Ok(());
        }
        for s in steps {
            match self.overlap {
                Overlap::Off => {
                    for r in &mut self.replicas {
                        r.exec.run_range(&r.plan, s, 0..r.bounds.first_update)?;
                    }
                    let grads = self.grads.clone();
                    let sum = self.sum_f32(&grads, Some(ALL_GRADS))?;
                    self.write_sum(&grads, &sum)?;
                }
                Overlap::PerLayer => self.gradients_by_layer(s)?,
            }
            for r in &mut self.replicas {
                let b = &r.bounds;
                r.exec.run_range(&r.plan, s, b.first_update..b.len)?;
            }
        }
        Ok(())
    }

    /// Writes `sum`, the concatenated values of `ids`, into every replica.
    fn write_sum(&mut self, ids: &[BufId], sum: &[f32]) -> Result<()> {
        let mut at = 0;
        for &id in ids {
            let len = self.replicas[0].plan.buffers[id].len();
            self.write_f32(id, &sum[at..at + len])?;
            at += len;
        }
        Ok(())
    }

    /// Step `s` up to its update with each layer's gradients handed over as soon as its
    /// backward stage is done: every replica's step is submitted in parts, one per stage,
    /// each followed by the readback of that stage's gradients; then stage by stage (last
    /// layer first), each is summed, exchanged and written back while the devices compute
    /// the stages below it.
    fn gradients_by_layer(&mut self, s: usize) -> Result<()> {
        let buckets = buckets(&self.replicas[0].plan);
        let mut pending = Vec::with_capacity(self.replicas.len());
        for r in &mut self.replicas {
            let mut started = Vec::with_capacity(buckets.len());
            let mut at = 0;
            for (&end, ids) in r.bounds.grad_ends.iter().zip(&buckets) {
                if end > at {
                    r.exec.run_range(&r.plan, s, at..end)?;
                }
                at = end;
                started.push(r.start_read(ids, Some(1 + started.len()))?);
            }
            if r.bounds.first_update > at {
                r.exec.run_range(&r.plan, s, at..r.bounds.first_update)?;
            }
            pending.push(started);
        }
        for (j, ids) in buckets.iter().enumerate() {
            let mut sum: Vec<f32> = Vec::new();
            for (r, started) in self.replicas.iter().zip(&mut pending) {
                add_in_order(&mut sum, r.finish_read(ids, started[j].take())?);
            }
            if let Some(e) = self.exchange {
                e.sum_f32(&mut sum)?;
            }
            self.write_sum(ids, &sum)?;
        }
        Ok(())
    }

    /// Takes the update's entries of `plan` (after `Plan::set_epoch`) into every replica.
    pub(super) fn set_epoch(&mut self, plan: &Plan) -> Result<()> {
        for r in &mut self.replicas {
            r.plan.train_step.update.clone_from(&plan.train_step.update);
            r.plan.train_step.refresh();
            r.exec.set_epoch(&r.plan)?;
        }
        Ok(())
    }

    pub(super) fn save(&mut self, ids: &[BufId]) -> Result<()> {
        self.replicas.iter_mut().try_for_each(|r| r.exec.save(ids))
    }

    pub(super) fn restore(&mut self) -> Result<()> {
        self.replicas.iter_mut().try_for_each(|r| r.exec.restore())
    }

    /// The shadow check compares the state every replica shares: the first replica's.
    pub(super) fn save_shadow(&mut self, ids: &[BufId]) -> Result<()> {
        self.replicas[0].exec.save_shadow(ids)
    }

    pub(super) fn read_shadow(&mut self) -> Result<Vec<(BufId, Vec<f32>)>> {
        self.replicas[0].exec.read_shadow()
    }

    /// The first replica's tensor, but for the metric sums and the batch buffers, which no
    /// one replica's tensor holds.
    pub(super) fn tensor(&self, id: BufId) -> Option<&GpuTensor> {
        if self.summed.contains(&id) || self.shares.contains(&id) {
            None
        } else {
            self.first().tensor(id)
        }
    }

    pub(super) fn first_exec(&self) -> &Executor<'a> {
        self.first()
    }
}

/// Refuses GPUs whose limits differ (naming them and the limits), before anything is
/// allocated: the replicas must be able to run the same kernels on the same shapes.
fn check_limits(devices: &[Device<'_>]) -> Result<()> {
    let gpus: Vec<_> = devices.iter().filter_map(|d| d.gpu()).collect();
    let Some(first) = gpus.first() else {
        return Ok(());
    };
    for g in &gpus[1..] {
        let mut differ = Vec::new();
        first
            .limits()
            .check_limits_with_fail_fn(g.limits(), false, |name, a, b| {
                differ.push(format!("{name} {a} against {b}"))
            });
        g.limits()
            .check_limits_with_fail_fn(first.limits(), false, |name, a, b| {
                differ.push(format!("{name} {b} against {a}"))
            });
        if !differ.is_empty() {
            differ.sort();
            differ.dedup();
            return Err(Error::Config(format!(
                "the replicas' adapters have different limits: {} ({:?}) and {} ({:?}) differ in {}; train on adapters of one kind",
                first.adapter().name,
                first.adapter().backend,
                g.adapter().name,
                g.adapter().backend,
                differ.join(", ")
            )));
        }
    }
    Ok(())
}
