//! The GPU executor: resident tensors and one prebuilt dispatch per op, a whole step
//! recorded into one compute pass. The fusions that replace several ops' dispatches by one
//! (the optimizer update over the parameter arena, the fully fused small-MLP pass) are in
//! `fuse.rs`.

use std::ops::Range;

use crate::autotune;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::{self, Dispatch};
use crate::ops::Kernels;
use crate::ops::{self, Activation};
use crate::plan::{entry, BufId, Op, Plan};
use crate::tensor::{copy_tensors, DType, GpuTensor};

use super::{acc, ops_of, Pass};

mod fuse;

use fuse::{update_buffers, Arenas};

/// The kernels an executor records with: its own, or a caller's shared across runs.
pub(super) enum KernelsRef<'a> {
    Owned(Kernels<'a>),
    Shared(&'a Kernels<'a>),
}

impl<'a> std::ops::Deref for KernelsRef<'a> {
    type Target = Kernels<'a>;
    fn deref(&self) -> &Kernels<'a> {
        match self {
            KernelsRef::Owned(k) => k,
            KernelsRef::Shared(k) => k,
        }
    }
}

/// The GPU executor: resident tensors and one prebuilt dispatch per op.
pub struct GpuExec<'a> {
    pub(super) gpu: &'a Gpu,
    pub(super) kernels: KernelsRef<'a>,
    pub(super) tensors: Vec<GpuTensor>,
    pub(super) train: Vec<Dispatch>,
    pub(super) eval: Vec<Dispatch>,
    pub(super) snapshot: Vec<(BufId, GpuTensor)>,
    /// A snapshot was asked for and is taken at the start of the next submitted step.
    pub(super) save_pending: bool,
    /// The parameter tensors, their gradients and each optimizer state in one buffer each.
    arenas: Option<Arenas>,
    /// The index of the training dispatch that updates every parameter tensor at once.
    fused_update: Option<usize>,
    /// The fused pass's entry point, where it runs.
    pub(super) mlp_form: Option<&'static str>,
}

impl<'a> GpuExec<'a> {
    pub(super) fn new(kernels: KernelsRef<'a>, plan: &Plan) -> Result<GpuExec<'a>> {
        let gpu = kernels.gpu();
        // Every buffer is checked against the adapter's limits before any is created.
        for b in &plan.buffers {
            gpu.check_buffer_size(&b.name, b.len() as u64 * 4)?;
        }
        let mut arenas = if kernels.tuning().fuse {
            Arenas::plan(gpu, plan, &plan.train_step)?
        } else {
            None
        };
        // The update's tensors are slots of the arenas; every other tensor has its own buffer.
        let mut slot_of: Vec<Option<GpuTensor>> = plan.buffers.iter().map(|_| None).collect();
        if let Some(a) = &mut arenas {
            for (id, view) in std::mem::take(&mut a.views) {
                slot_of[id] = Some(view);
            }
        }
        let tensors = plan
            .buffers
            .iter()
            .zip(slot_of)
            .map(|(b, slot)| match (slot, b.dtype) {
                (Some(t), _) => Ok(t),
                (None, DType::F32) => GpuTensor::zeros(gpu, &b.name, &b.shape),
                (None, DType::U32) => GpuTensor::zeros_u32(gpu, &b.name, &b.shape),
            })
            .collect::<Result<Vec<_>>>()?;
        // Every product's kernel is chosen (and, where nothing is cached, measured) now, so
        // that recording only looks the choices up.
        for op in plan.train_step.iter().chain(&plan.eval_step) {
            if let Some((form, p)) = op.matmul() {
                let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
                autotune::prepare(&kernels, form, m, n, k, acc(p.accumulate))?;
            }
        }
        let mut exec = GpuExec {
            gpu,
            kernels,
            tensors,
            train: vec![],
            eval: vec![],
            snapshot: vec![],
            save_pending: false,
            arenas,
            fused_update: None,
            mlp_form: None,
        };
        exec.train = exec.build_all(plan, &plan.train_step)?;
        exec.fused_update = exec.fuse_updates(plan)?;
        exec.fuse_mlp(plan)?;
        exec.eval = exec.build_all(plan, &plan.eval_step)?;
        Ok(exec)
    }

    /// One dispatch per op. A layer's product followed by its bias and activation becomes
    /// one fused dispatch (`kernels::dense_forward`) where a generated tile or the scalar
    /// blocked kernel runs the product, and so does an input delta followed by an activation
    /// derivative (`kernels::relu_delta` on a small tile, `kernels::dense_backward` on the
    /// scalar blocked kernel); the second op's dispatch is then kept but disabled, so op
    /// indices still match.
    pub(super) fn build_all(&self, plan: &Plan, ops: &[Op]) -> Result<Vec<Dispatch>> {
        let mut dispatches = Vec::with_capacity(ops.len());
        let mut i = 0;
        while i < ops.len() {
            if let Some(next) = ops.get(i + 1) {
                if let Some(fused) = self.fused(plan, &ops[i], next)? {
                    dispatches.push(fused);
                    let mut second = self.build(plan, next)?;
                    second.disable();
                    dispatches.push(second);
                    i += 2;
                    continue;
                }
            }
            dispatches.push(self.build(plan, &ops[i])?);
            i += 1;
        }
        Ok(dispatches)
    }

    /// The one dispatch doing `first` and then `next`, where the pair fuses on this device.
    pub(super) fn fused(&self, plan: &Plan, first: &Op, next: &Op) -> Result<Option<Dispatch>> {
        if !self.kernels.tuning().fuse {
            return Ok(None);
        }
        let k = &*self.kernels;
        let t = &self.tensors;
        match (first, next) {
            (
                Op::MatmulNt {
                    out: pre,
                    a,
                    b,
                    params: mp,
                },
                Op::BiasActivationForward {
                    out,
                    pre: pre2,
                    bias,
                    params: ap,
                },
            ) if pre == pre2 && mp.accumulate == 0 => ops::dense_forward(
                k,
                &t[*out],
                &t[*pre],
                &t[*a],
                &t[*b],
                bias.map(|b| &t[b]),
                &t[plan.dummy],
                Activation::decode(ap.kind, ap.slope)?,
            ),
            // The product (dx) is read by nothing but the activation backward, so the fused
            // kernel writes dpre alone.
            (
                Op::MatmulNn {
                    out: dx,
                    a,
                    b,
                    params: mp,
                },
                Op::ActivationBackward {
                    dpre,
                    dout,
                    pre,
                    params: ap,
                },
            ) if dx == dout && mp.accumulate == 0 => {
                let act = Activation::decode(ap.kind, ap.slope)?;
                if act == Activation::Relu {
                    if let Some(d) = ops::relu_delta(k, &t[*dpre], &t[*a], &t[*b], &t[*pre])? {
                        return Ok(Some(d));
                    }
                }
                ops::dense_backward(k, &t[*dpre], &t[*a], &t[*b], &t[*pre], act)
            }
            // Any other pair runs as two dispatches.
            _ => Ok(None),
        }
    }

    /// Builds an op's dispatch with the shape-checking recorder of its kernel, then gives it
    /// the op's own parameter entries.
    pub(super) fn build(&self, plan: &Plan, op: &Op) -> Result<Dispatch> {
        let g = self.gpu;
        let k = &*self.kernels;
        let t = &self.tensors;
        Ok(match op {
            Op::GatherRows {
                out,
                data,
                indices,
                params,
            } => {
                let p = params[0];
                let mut d = ops::gather_rows(
                    k,
                    &t[*out],
                    &t[*data],
                    &t[*indices],
                    p.start as usize,
                    p.rows as usize,
                )?;
                d.set_params(g, params)?;
                d
            }
            Op::GatherRowsU8 {
                out,
                data,
                indices,
                params,
            } => {
                let p = params[0];
                let mut d = ops::gather_rows_u8(
                    k,
                    &t[*out],
                    &t[*data],
                    &t[*indices],
                    p.start as usize,
                    p.rows as usize,
                    p.divisor,
                )?;
                d.set_params(g, params)?;
                d
            }
            Op::GatherLabels {
                out,
                labels,
                indices,
                params,
            } => {
                let p = params[0];
                let mut d = ops::gather_labels(
                    k,
                    &t[*out],
                    &t[*labels],
                    &t[*indices],
                    p.start as usize,
                    p.rows as usize,
                )?;
                d.set_params(g, params)?;
                d
            }
            Op::MatmulNt { out, a, b, params } => {
                ops::matmul_nt(k, &t[*out], &t[*a], &t[*b], acc(params.accumulate))?
            }
            Op::MatmulNn { out, a, b, params } => {
                ops::matmul_nn(k, &t[*out], &t[*a], &t[*b], acc(params.accumulate))?
            }
            Op::MatmulTn { out, a, b, params } => {
                ops::matmul_tn(k, &t[*out], &t[*a], &t[*b], acc(params.accumulate))?
            }
            Op::BiasActivationForward {
                out,
                pre,
                bias,
                params,
            } => {
                let act = Activation::decode(params.kind, params.slope)?;
                let bias = bias.map(|b| &t[b]);
                ops::bias_activation_forward(k, &t[*out], &t[*pre], bias, &t[plan.dummy], act)?
            }
            Op::ActivationBackward {
                dpre,
                dout,
                pre,
                params,
            } => {
                let act = Activation::decode(params.kind, params.slope)?;
                ops::activation_backward(k, &t[*dpre], &t[*dout], &t[*pre], act)?
            }
            Op::ColumnSum { out, x, params } => {
                ops::column_sum(k, &t[*out], &t[*x], acc(params.accumulate))?
            }
            Op::Loss {
                kind,
                grad,
                row_loss,
                pred,
                target,
                params,
            } => {
                let mut d = ops::loss(
                    k,
                    *kind,
                    &t[*grad],
                    &t[*row_loss],
                    &t[*pred],
                    &t[*target],
                    params[0].rows as usize,
                )?;
                d.set_params(g, params)?;
                d
            }
            Op::ReduceSum { out, x, params } => {
                ops::reduce_sum(k, &t[*out], &t[*x], acc(params.accumulate))?
            }
            Op::CorrectCount {
                count,
                x,
                labels,
                params,
            } => {
                let p = params[0];
                let mut d = ops::correct_count(
                    k,
                    &t[*count],
                    &t[*x],
                    &t[*labels],
                    p.rows as usize,
                    p.threshold,
                )?;
                d.set_params(g, params)?;
                d
            }
            Op::Update {
                rule,
                param,
                state,
                grad,
                params,
            } => {
                let state: Vec<&GpuTensor> = state.iter().map(|&s| &t[s]).collect();
                let mut d = ops::update(k, *rule, &t[*param], &state, &t[*grad], entry(params, 0))?;
                d.set_params(g, params)?;
                d
            }
        })
    }

    /// Re-sends the parameter entries of op `index` of `pass` (after `Plan::set_epoch`).
    pub(super) fn refresh(&mut self, plan: &Plan, pass: Pass, index: usize) -> Result<()> {
        let g = self.gpu;
        if pass == Pass::Train && self.fused_update.is_some() {
            if self.fused_update == Some(index) {
                return self.refresh_update(plan, index);
            }
            if update_buffers(&plan.train_step[index]).is_some() {
                return Ok(()); // disabled: the fused update does its work
            }
        }
        let d = match pass {
            Pass::Train => &mut self.train[index],
            Pass::Eval => &mut self.eval[index],
        };
        match &ops_of(plan, pass)[index] {
            Op::Update { params, .. } => d.set_params(g, params),
            Op::GatherRows { params, .. }
            | Op::GatherRowsU8 { params, .. }
            | Op::GatherLabels { params, .. } => d.set_params(g, params),
            Op::Loss { params, .. } => d.set_params(g, params),
            Op::CorrectCount { params, .. } => d.set_params(g, params),
            // One fixed entry, written when the dispatch was built.
            Op::MatmulNt { .. }
            | Op::MatmulNn { .. }
            | Op::MatmulTn { .. }
            | Op::BiasActivationForward { .. }
            | Op::ActivationBackward { .. }
            | Op::ColumnSum { .. }
            | Op::ReduceSum { .. } => Ok(()),
        }
    }

    /// Records steps `steps` of `pass` into one compute pass and submits it once, with a
    /// pending snapshot's copies ahead of the pass in the same submission.
    pub(super) fn run(&mut self, pass: Pass, steps: Range<usize>) -> Result<()> {
        let (label, dispatches) = match pass {
            Pass::Train => ("train step", &self.train),
            Pass::Eval => ("eval step", &self.eval),
        };
        if self.save_pending {
            let pairs = self.snapshot_pairs(true);
            kernels::run_steps_after_copies(self.gpu, label, dispatches, steps, &pairs)?;
            self.save_pending = false;
            Ok(())
        } else {
            kernels::run_steps(self.gpu, label, dispatches, steps)
        }
    }

    /// Takes a pending snapshot now, in a submission of its own.
    pub(super) fn flush_save(&mut self) -> Result<()> {
        if self.save_pending {
            self.copy_all(true)?;
            self.save_pending = false;
        }
        Ok(())
    }

    /// Marks `ids` for a snapshot (buffers created on first use); the copies ride along with
    /// the next submitted step, so taking a snapshot costs no submission of its own.
    pub(super) fn save(&mut self, ids: &[BufId]) -> Result<()> {
        if self.snapshot.is_empty() {
            for &id in ids {
                let t = &self.tensors[id];
                let copy =
                    GpuTensor::zeros(self.gpu, &format!("{} snapshot", t.label()), t.shape())?;
                self.snapshot.push((id, copy));
            }
        }
        self.save_pending = true;
        Ok(())
    }

    pub(super) fn restore(&mut self) -> Result<()> {
        self.flush_save()?;
        self.copy_all(false)
    }

    pub(super) fn snapshot_pairs(&self, save: bool) -> Vec<(&GpuTensor, &GpuTensor)> {
        self.snapshot
            .iter()
            .map(|(id, copy)| {
                let live = &self.tensors[*id];
                if save {
                    (live, copy)
                } else {
                    (copy, live)
                }
            })
            .collect()
    }

    pub(super) fn copy_all(&self, save: bool) -> Result<()> {
        copy_tensors(self.gpu, &self.snapshot_pairs(save))
    }
}
