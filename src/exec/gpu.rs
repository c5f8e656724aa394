//! The GPU executor: resident tensors and prebuilt dispatches, a whole step recorded into
//! one compute pass. It builds its dispatches from the plan's stages and fuses where a
//! stage's properties allow it: a layer's product with its bias and activation, an input
//! delta with the activation derivative of the layer below. The fusions across a whole step
//! (the optimizer update over the parameter arena, the fully fused small-MLP pass) are in
//! `fuse.rs`.

use std::ops::Range;

use crate::autotune;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::{self, Dispatch};
use crate::ops::Kernels;
use crate::ops::{self, Activation};
use crate::plan::{entry, BackwardStage, BufId, DenseStage, Op, Plan, Step};
use crate::tensor::{copy_tensors, DType, GpuTensor};

use super::{acc, Pass, StepBounds};

mod fuse;

use fuse::Arenas;

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

/// Which part of a step a dispatch does (what the fused MLP pass may replace, and which
/// dispatches take the update's per-epoch entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Part {
    GatherInput,
    GatherLabels,
    GatherValues,
    Forward,
    Loss,
    LossSum,
    Correct,
    Backward,
    Update,
}

/// The GPU executor: resident tensors and the prebuilt dispatches of both passes.
pub struct GpuExec<'a> {
    pub(super) gpu: &'a Gpu,
    pub(super) kernels: KernelsRef<'a>,
    pub(super) tensors: Vec<GpuTensor>,
    pub(super) train: Vec<Dispatch>,
    pub(super) eval: Vec<Dispatch>,
    pub(super) snapshot: Vec<(BufId, GpuTensor)>,
    /// A snapshot was asked for and is taken at the start of the next submitted step.
    pub(super) save_pending: bool,
    /// Copies of the state before a shadow-checked step (see `Executor::save_shadow`),
    /// apart from the divergence snapshot above.
    pub(super) shadow: Vec<(BufId, GpuTensor)>,
    pub(super) shadow_pending: bool,
    /// The parameter tensors, their gradients and each optimizer state in one buffer each.
    arenas: Option<Arenas>,
    /// The training dispatches that update parameters: one over the arenas, or one per
    /// tensor in the update's order.
    updates: Vec<usize>,
    /// The fused pass's entry point, where it runs.
    pub(super) mlp_form: Option<&'static str>,
    /// The training dispatch after which each backward stage's parameter gradients are
    /// complete, last layer first (see `Step::grad_ends`).
    grad_ends: Vec<usize>,
}

impl<'a> GpuExec<'a> {
    pub(super) fn new(kernels: KernelsRef<'a>, plan: &Plan) -> Result<GpuExec<'a>> {
        let gpu = kernels.gpu();
        // Every buffer is checked against the adapter's limits before any is created.
        for b in &plan.buffers {
            gpu.check_buffer_size(&b.name, b.byte_len())?;
        }
        let mut arenas = match (&plan.train_step.update, kernels.tuning().fuse) {
            (Some(update), true) => Arenas::plan(gpu, plan, update)?,
            (Some(_) | None, _) => None,
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
                (None, DType::F16) => GpuTensor::zeros_f16(gpu, &b.name, &b.shape),
            })
            .collect::<Result<Vec<_>>>()?;
        // Every product's kernel is chosen (and, where nothing is cached, measured) now, so
        // that recording only looks the choices up.
        for op in plan.train_step.ops().iter().chain(plan.eval_step.ops()) {
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
            shadow: vec![],
            shadow_pending: false,
            arenas,
            updates: vec![],
            mlp_form: None,
            grad_ends: vec![],
        };
        let (mut train, grad_ends) = exec.build_step(plan, &plan.train_step)?;
        exec.grad_ends = grad_ends;
        // A replica's step runs in halves around the gradient exchange; the fused pass
        // updates inside its one dispatch.
        if plan.shard.count == 1 {
            exec.fuse_mlp(plan, &mut train)?;
        }
        exec.updates = (0..train.len())
            .filter(|&i| train[i].0 == Part::Update)
            .collect();
        exec.train = train.into_iter().map(|(_, d)| d).collect();
        exec.eval = exec
            .build_step(plan, &plan.eval_step)?
            .0
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        Ok(exec)
    }

    /// The dispatches of a step, stage by stage, each with the part of the step it does;
    /// and where each backward stage's parameter gradients are complete.
    #[allow(clippy::type_complexity)]
    fn build_step(&self, plan: &Plan, step: &Step) -> Result<(Vec<(Part, Dispatch)>, Vec<usize>)> {
        let mut grad_ends = Vec::with_capacity(step.backward.len());
        let mut out = Vec::with_capacity(step.ops().len());
        if let Some(g) = &step.gather {
            for (part, op) in [
                (Part::GatherInput, &g.input),
                (Part::GatherLabels, &g.labels),
                (Part::GatherValues, &g.values),
            ] {
                if let Some(op) = op {
                    out.push((part, self.build(plan, op)?));
                }
            }
        }
        for layer in &step.layers {
            match self.fused_dense(plan, layer)? {
                Some(d) => out.push((Part::Forward, d)),
                None => {
                    out.push((Part::Forward, self.build(plan, &layer.product())?));
                    out.push((Part::Forward, self.build(plan, &layer.bias_activation())?));
                }
            }
        }
        if let Some(l) = &step.loss {
            out.push((Part::Loss, self.build(plan, &l.loss)?));
            out.push((Part::LossSum, self.build(plan, &l.sum)?));
        }
        if let Some(c) = &step.correct {
            out.push((Part::Correct, self.build(plan, c)?));
        }
        // Whether the stage's activation derivative was done by the fused input delta of
        // the stage above it.
        let mut done = false;
        for (j, stage) in step.backward.iter().enumerate() {
            if let (false, Some(op)) = (done, stage.activation_backward()) {
                out.push((Part::Backward, self.build(plan, &op)?));
            }
            out.push((Part::Backward, self.build(plan, &stage.weight_grad())?));
            if let Some(op) = stage.bias_grad() {
                out.push((Part::Backward, self.build(plan, &op)?));
            }
            grad_ends.push(out.len());
            done = false;
            if let Some(op) = stage.input_delta() {
                let fused = match step.backward.get(j + 1) {
                    Some(below) => self.fused_delta(stage, below)?,
                    None => None,
                };
                done = fused.is_some();
                let d = match fused {
                    Some(d) => d,
                    None => self.build(plan, &op)?,
                };
                out.push((Part::Backward, d));
            }
        }
        if let Some(update) = &step.update {
            match &self.arenas {
                Some(a) => out.push((Part::Update, self.update_dispatch(update, a)?)),
                None => {
                    for op in update.ops() {
                        out.push((Part::Update, self.build(plan, &op)?));
                    }
                }
            }
        }
        Ok((out, grad_ends))
    }

    /// A layer's forward pass as one dispatch (`ops::dense_forward`: the product's tile or
    /// the scalar blocked kernel with the bias and activation as its epilogue), where
    /// fusion is on and the product runs on such a kernel.
    fn fused_dense(&self, plan: &Plan, l: &DenseStage) -> Result<Option<Dispatch>> {
        if !self.kernels.tuning().fuse {
            return Ok(None);
        }
        let t = &self.tensors;
        ops::dense_forward(
            &self.kernels,
            &t[l.out],
            &t[l.pre],
            &t[l.x],
            &t[l.weight],
            l.bias.map(|b| &t[b]),
            &t[plan.dummy],
            l.activation,
        )
    }

    /// A layer's input delta and the activation derivative of the layer below it as one
    /// dispatch, writing the lower layer's dL/dpre directly (the delta itself is read by
    /// nothing else): `ops::relu_delta` on a small tile for ReLU, `ops::dense_backward` on
    /// the scalar blocked kernel for any activation. `None` where fusion is off, the layer
    /// below is identity (no derivative), or the product runs on another kernel.
    fn fused_delta(
        &self,
        stage: &BackwardStage,
        below: &BackwardStage,
    ) -> Result<Option<Dispatch>> {
        if !self.kernels.tuning().fuse || below.activation == Activation::Identity {
            return Ok(None);
        }
        let t = &self.tensors;
        let k = &*self.kernels;
        let (dpre, d, w, pre) = (
            &t[below.dpre],
            &t[stage.dpre],
            &t[stage.weight],
            &t[below.pre],
        );
        if below.activation == Activation::Relu {
            if let Some(fused) = ops::relu_delta(k, dpre, d, w, pre)? {
                return Ok(Some(fused));
            }
        }
        ops::dense_backward(k, dpre, d, w, pre, below.activation)
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
                let form = ops::SumForm::for_kernels(k);
                ops::column_sum_as(k, form, &t[*out], &t[*x], acc(params.accumulate))?
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

    /// Re-sends the update's entries after `Plan::set_epoch`: stretched over the arena, or
    /// one tensor's length each.
    pub(super) fn set_epoch(&mut self, plan: &Plan) -> Result<()> {
        let Some(update) = &plan.train_step.update else {
            return Ok(());
        };
        match &self.arenas {
            Some(a) => {
                let params = update.params_for(a.params.len() as u32);
                for &i in &self.updates {
                    self.train[i].set_params(self.gpu, &params)?;
                }
            }
            None => {
                for (&i, t) in self.updates.iter().zip(&update.tensors) {
                    self.train[i].set_params(self.gpu, &update.params_for(t.len))?;
                }
            }
        }
        Ok(())
    }

    /// Records steps `steps` of `pass` into one compute pass and submits it once, with a
    /// pending snapshot's copies ahead of the pass in the same submission.
    pub(super) fn run(&mut self, pass: Pass, steps: Range<usize>) -> Result<()> {
        let (label, len) = match pass {
            Pass::Train => ("train step", self.train.len()),
            Pass::Eval => ("eval step", self.eval.len()),
        };
        self.submit(label, pass, 0..len, steps)
    }

    /// Where each backward stage's gradients are complete (last layer first), where the
    /// update starts, and the training dispatches in all.
    pub(super) fn step_bounds(&self) -> StepBounds {
        let len = self.train.len();
        StepBounds {
            grad_ends: self.grad_ends.clone(),
            first_update: self.updates.first().copied().unwrap_or(len),
            len,
        }
    }

    /// Submits training dispatches `range` of step `step` (a part of a data-parallel
    /// replica's step), with a pending snapshot's copies ahead of them.
    pub(super) fn run_range(&mut self, step: usize, range: Range<usize>) -> Result<()> {
        self.submit("train step part", Pass::Train, range, step..step + 1)
    }

    /// Records dispatches `range` of `pass` for steps `steps` into one compute pass and
    /// submits it once, with a pending snapshot's copies ahead of the pass.
    fn submit(
        &mut self,
        label: &str,
        pass: Pass,
        range: Range<usize>,
        steps: Range<usize>,
    ) -> Result<()> {
        let dispatches = match pass {
            Pass::Train => &self.train[range],
            Pass::Eval => &self.eval[range],
        };
        if self.save_pending || self.shadow_pending {
            let mut pairs = Vec::new();
            if self.save_pending {
                pairs = self.snapshot_pairs(true);
            }
            if self.shadow_pending {
                pairs.extend(self.shadow_pairs());
            }
            kernels::run_steps_after_copies(self.gpu, label, dispatches, steps, &pairs)?;
            self.save_pending = false;
            self.shadow_pending = false;
            Ok(())
        } else {
            kernels::run_steps(self.gpu, label, dispatches, steps)
        }
    }

    fn shadow_pairs(&self) -> Vec<(&GpuTensor, &GpuTensor)> {
        self.shadow
            .iter()
            .map(|(id, copy)| (&self.tensors[*id], copy))
            .collect()
    }

    /// Asks for copies of `ids` at the start of the next submitted step (the same ids on
    /// every call; the copies are allocated once).
    pub(super) fn save_shadow(&mut self, ids: &[BufId]) -> Result<()> {
        if self.shadow.is_empty() {
            for &id in ids {
                let t = &self.tensors[id];
                let copy = GpuTensor::zeros(self.gpu, &format!("{} shadow", t.label()), t.shape())?;
                self.shadow.push((id, copy));
            }
        }
        self.shadow_pending = true;
        Ok(())
    }

    /// The shadow copies, read back (one wait).
    pub(super) fn read_shadow(&mut self) -> Result<Vec<(BufId, Vec<f32>)>> {
        if self.shadow_pending {
            copy_tensors(self.gpu, &self.shadow_pairs())?;
            self.shadow_pending = false;
        }
        let copies: Vec<&GpuTensor> = self.shadow.iter().map(|(_, c)| c).collect();
        let bytes = crate::tensor::start_read_many(self.gpu, &copies)?.wait(self.gpu)?;
        let values = super::split_f32(&bytes, &copies);
        Ok(self.shadow.iter().map(|(id, _)| *id).zip(values).collect())
    }

    /// Takes a pending snapshot now, in a submission of its own.
    pub(super) fn flush_save(&mut self) -> Result<()> {
        if self.save_pending {
            self.copy_all(true)?;
            self.save_pending = false;
        }
        if self.shadow_pending {
            copy_tensors(self.gpu, &self.shadow_pairs())?;
            self.shadow_pending = false;
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
