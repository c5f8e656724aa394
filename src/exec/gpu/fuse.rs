//! Fusions across ops of a training step on the GPU: every parameter tensor, gradient and
//! optimizer state as a slot of one arena buffer per role, so that one dispatch updates them
//! all; and the fully fused small-MLP pass (`kernels::fused_mlp`), which replaces the step's
//! gathers, forward pass, loss and backward pass where it measures faster.

use crate::autotune;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::Dispatch;
use crate::ops::fused_mlp::{FusedMlp, FusedMlpParams, MlpLayer, MlpShape};
use crate::ops::optim::OptimParams;
use crate::ops::{self, Accumulate, Loss};
use crate::plan::{entry, BufId, Op, Plan};
use crate::tensor::{DType, GpuTensor};

use super::GpuExec;

/// Where a training step's ops are the forward pass, loss and backward pass of a network
/// the fully fused pass takes: the ops it replaces and what it reads and writes.
struct MlpPass {
    shape: MlpShape,
    /// Index of the first forward op: the fused pass runs there.
    first: usize,
    /// Index of the last backward op: the sum over tiles runs there.
    last: usize,
    /// Every op the two replace (forward, loss, backward).
    replaced: Vec<usize>,
    /// Per step: the loss's rows and scale, and where the step's rows start.
    params: Vec<FusedMlpParams>,
    pred: BufId,
    /// What the pass reads its rows from: the gathered batch (`input`, `target`), or, when
    /// it gathers them itself, the data tables and the row order.
    x: BufId,
    target: BufId,
    indices: Option<BufId>,
}

/// The buffers the optimizer update reads and writes, one arena each, slots in the order of
/// the training step's update ops: slot `i` of every arena belongs to update op `i`.
pub(super) struct Arenas {
    pub(super) params: GpuTensor,
    pub(super) grads: GpuTensor,
    /// `[velocity]` or `[m, v]`.
    pub(super) states: Vec<GpuTensor>,
    /// The slots, to take the place of the buffers they stand for (taken at setup).
    pub(super) views: Vec<(BufId, GpuTensor)>,
}

/// The buffers an update op reads and writes: `(param, grad, optimizer state)`.
pub(super) type UpdateBufs = (BufId, BufId, Vec<BufId>);

pub(super) fn update_buffers(op: &Op) -> Option<UpdateBufs> {
    if let Op::Update {
        param, state, grad, ..
    } = op
    {
        Some((*param, *grad, state.clone()))
    } else {
        None
    }
}

impl Arenas {
    /// Arenas for the update ops of `ops`, where there are at least two, they are
    /// consecutive, share one kind, touch distinct buffers and the arenas fit the device.
    /// `None` otherwise (every tensor then keeps a buffer of its own).
    pub(super) fn plan(gpu: &Gpu, plan: &Plan, ops: &[Op]) -> Result<Option<Arenas>> {
        let at: Vec<usize> = (0..ops.len())
            .filter(|&i| update_buffers(&ops[i]).is_some())
            .collect();
        if at.len() < 2 || at.windows(2).any(|w| w[1] != w[0] + 1) {
            return Ok(None);
        }
        let rule = |op: &Op| {
            if let Op::Update { rule, .. } = op {
                Some(*rule)
            } else {
                None
            }
        };
        if at.iter().any(|&i| rule(&ops[i]) != rule(&ops[at[0]])) {
            return Ok(None);
        }
        let slots: Vec<_> = at.iter().filter_map(|&i| update_buffers(&ops[i])).collect();
        let mut ids: Vec<BufId> = slots
            .iter()
            .flat_map(|(p, g, s)| [*p, *g].into_iter().chain(s.iter().copied()))
            .collect();
        let all = ids.len();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != all || ids.iter().any(|&id| plan.buffers[id].dtype != DType::F32) {
            return Ok(None);
        }
        let arena = |label: &str, pick: &dyn Fn(&UpdateBufs) -> BufId| {
            let specs: Vec<(&str, &[usize])> = slots
                .iter()
                .map(|s| {
                    let b = &plan.buffers[pick(s)];
                    (b.name.as_str(), &b.shape[..])
                })
                .collect();
            GpuTensor::arena(gpu, label, &specs)
        };
        let bytes: u64 = slots
            .iter()
            .map(|s| GpuTensor::slot_bytes(gpu, &plan.buffers[s.0].shape))
            .sum();
        if gpu.check_buffer_size("optimizer arena", bytes).is_err() {
            return Ok(None);
        }
        let mut views = Vec::new();
        let mut take = |(whole, slot_views): (GpuTensor, Vec<GpuTensor>),
                        pick: &dyn Fn(&UpdateBufs) -> BufId| {
            views.extend(slots.iter().map(pick).zip(slot_views));
            whole
        };
        let params = take(arena("parameters", &|s| s.0)?, &|s| s.0);
        let grads = take(arena("gradients", &|s| s.1)?, &|s| s.1);
        let mut states = Vec::new();
        for k in 0..slots[0].2.len() {
            let pick = |s: &UpdateBufs| s.2[k];
            states.push(take(arena("optimizer state", &pick)?, &pick));
        }
        Ok(Some(Arenas {
            params,
            grads,
            states,
            views,
        }))
    }
}

impl GpuExec<'_> {
    /// Where the parameter tensors live in arenas, replaces the training step's update
    /// dispatches by one over the arenas: it sits at the last update op's index, and the
    /// others are disabled. The update formulas are element-wise and the arenas' padding is
    /// zeros that stay zeros, so every parameter gets the same bits as from its own update.
    pub(super) fn fuse_updates(&mut self, plan: &Plan) -> Result<Option<usize>> {
        let Some(a) = &self.arenas else {
            return Ok(None);
        };
        let at: Vec<usize> = (0..plan.train_step.len())
            .filter(|&i| update_buffers(&plan.train_step[i]).is_some())
            .collect();
        let Some(&last) = at.last() else {
            return Ok(None);
        };
        let fused = self.update_dispatch(plan, last, a)?;
        for &i in &at {
            self.train[i].disable();
        }
        self.train[last] = fused;
        Ok(Some(last))
    }

    /// The training step's forward, loss and backward ops as one fully fused pass plus a
    /// sum over its tiles (`kernels::fused_mlp`), where the network fits it, the parameters
    /// live in the arena and `Gpu::fused_mlp` allows: `On`, or `Auto` where one step is big
    /// enough to measure and the fused pass measures faster (the choice is cached with the
    /// matmul choices). The replaced ops' dispatches are disabled.
    pub(super) fn fuse_mlp(&mut self, plan: &Plan) -> Result<()> {
        let policy = self.kernels.tuning().fused_mlp;
        if policy == FusedMlp::Off || !self.kernels.tuning().fuse || self.fused_update.is_none() {
            return Ok(());
        }
        // Through the GL backend llvmpipe compiles the pass's unrolled source for minutes and
        // runs it slower than op by op (BENCHMARKS.md), so the tuner does not try it there;
        // `FusedMlp::On` or a form still forces it.
        if policy == FusedMlp::Auto && self.gpu.adapter().backend == wgpu::Backend::Gl {
            return Ok(());
        }
        let Some(pass) = self.mlp_pass(plan) else {
            return Ok(());
        };
        let flops = 2.0 * plan.batch as f64 * pass.shape.macs_per_row() as f64;
        if policy == FusedMlp::Auto && flops < autotune::TUNE_MIN_FLOPS {
            return Ok(());
        }
        let Some(a) = &self.arenas else {
            return Ok(());
        };
        let g = self.gpu;
        let k = &*self.kernels;
        let t = &self.tensors;
        let len = a.params.len();
        // Two forms, the first that the device runs of each: one row per invocation in
        // tiles of 32 with the weights staged in workgroup memory (a hardware GPU's form),
        // and 8 or 4 rows per invocation, 8 invocations per workgroup (a CPU adapter's).
        let groups = match policy {
            FusedMlp::Form {
                tile_rows,
                rows_per_invocation,
                staged,
            } => vec![vec![(tile_rows as u32, rows_per_invocation, staged)]],
            FusedMlp::Auto | FusedMlp::On | FusedMlp::Off => vec![
                vec![(32, 1, true), (32, 1, false)],
                vec![(64, 8, false), (32, 4, false)],
            ],
        };
        let forms: Vec<MlpShape> = groups
            .into_iter()
            .filter_map(|options| {
                options.into_iter().find_map(|(tile, rows, staged)| {
                    let shape = pass
                        .shape
                        .with_gather(pass.indices.is_some())
                        .with_tile_rows(tile)
                        .with_rows_per_invocation(rows)
                        .with_staged(staged);
                    let bytes = (shape.tiles(plan.batch) * len * 4) as u64;
                    let fits = ops::fused_mlp_fits(k, shape)
                        && g.check_buffer_size("fused MLP partial sums", bytes).is_ok();
                    fits.then_some(shape)
                })
            })
            .collect();
        // The pass in one form and the sum over its tiles (pipelines built here, so only
        // for the forms that are timed or chosen).
        let build = |shape: MlpShape| -> Result<(Dispatch, Dispatch)> {
            let partial =
                GpuTensor::zeros(g, "fused MLP partial sums", &[shape.tiles(plan.batch), len])?;
            let mut d = ops::fused_mlp(
                k,
                &partial,
                &t[pass.pred],
                &t[plan.row_loss],
                &t[pass.x],
                &t[pass.target],
                &a.params,
                pass.indices.map(|i| &t[i]),
                shape,
                pass.params[0],
            )?
            .ok_or_else(|| crate::error::Error::Config("the fused pass does not fit".into()))?;
            d.set_params(g, &pass.params)?;
            // The partial sums' buffer lives on in the two dispatches that bind it.
            let sum = ops::column_sum(k, &a.grads, &partial, Accumulate::Overwrite)?;
            Ok((d, sum))
        };
        let chosen = if policy == FusedMlp::Auto {
            let key = format!("mlp {} batch {}", pass.shape.name(), plan.batch);
            let names: Vec<&str> = forms
                .iter()
                .map(|f| f.entry_point())
                .chain(["ops"])
                .collect();
            let choice = autotune::choose_named(k, &key, &names, || {
                // Left to the tuner, a form the driver fails to build is skipped (a big
                // private array, say).
                let mut built = Vec::new();
                for &shape in &forms {
                    match build(shape) {
                        Ok(b) => built.push((shape.entry_point(), b)),
                        Err(e) => log::warn!("fused MLP pass {} skipped: {e}", shape.entry_point()),
                    }
                }
                let mut lists: Vec<Vec<&Dispatch>> =
                    built.iter().map(|(_, (d, sum))| vec![d, sum]).collect();
                lists.push(pass.replaced.iter().map(|&i| &self.train[i]).collect());
                let times = autotune::time_lists(g, &lists)?;
                // The op-by-op kernels stay unless a fused pass is clearly faster.
                let ops_time = times[built.len()];
                let (best, _) = built.iter().zip(&times).map(|(b, t)| (b.0, *t)).fold(
                    ("ops", ops_time * 0.97),
                    |b, c| if c.1 < b.1 { c } else { b },
                );
                let report = built
                    .iter()
                    .map(|b| b.0)
                    .chain(["ops"])
                    .zip(&times)
                    .map(|(n, t)| format!("{n} {:.3} ms", t * 1e3))
                    .collect::<Vec<_>>()
                    .join(", ");
                Ok((best.to_string(), report))
            })?;
            choice.and_then(|c| forms.iter().copied().find(|f| f.entry_point() == c))
        } else {
            forms.first().copied()
        };
        let Some(shape) = chosen else {
            if policy != FusedMlp::Auto {
                log::warn!("the fused MLP pass was asked for, but no form of it fits this device; op by op");
            }
            return Ok(());
        };
        let (fused, sum) = match build(shape) {
            Ok(b) => b,
            Err(e) if policy == FusedMlp::Auto => {
                log::warn!("fused MLP pass {} skipped: {e}", shape.entry_point());
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let form = shape.entry_point();
        for &i in &pass.replaced {
            self.train[i].disable();
        }
        self.train[pass.first] = fused;
        self.train[pass.last] = sum;
        self.mlp_form = Some(form);
        Ok(())
    }

    /// The fused pass's view of the training step, where the step has exactly the shape
    /// the pass replaces: every layer's product and bias-activation, an MSE or binary
    /// cross-entropy loss on the last
    /// layer's output against the batch values, and a backward pass that only writes the
    /// gradient slots and scratch deltas, none of it accumulating.
    fn mlp_pass(&self, plan: &Plan) -> Option<MlpPass> {
        let ops = &plan.train_step;
        let a = self.arenas.as_ref()?;
        let layers = &plan.network.layers;
        let n = layers.len();
        let first = ops
            .iter()
            .position(|op| matches!(op, Op::MatmulNt { .. }))?;
        let target = plan.batch_values?;
        let loss_at = first + 2 * n;
        // MSE or binary cross-entropy: losses over value targets.
        let Op::Loss {
            kind,
            pred,
            target: t,
            params: loss,
            ..
        } = ops.get(loss_at)?
        else {
            return None;
        };
        let bce = match kind {
            Loss::Mse => false,
            Loss::BinaryCrossEntropy => true,
            Loss::SoftmaxCrossEntropy => return None,
        };
        if *t != target || *pred != plan.layers[n - 1].out {
            return None;
        }
        // Forward: layer by layer, product then bias and activation.
        let mut x = plan.input;
        for (l, bufs) in plan.layers.iter().enumerate() {
            match (&ops[first + 2 * l], &ops[first + 2 * l + 1]) {
                (
                    Op::MatmulNt {
                        out,
                        a: xa,
                        b,
                        params,
                    },
                    Op::BiasActivationForward {
                        out: o2,
                        pre,
                        bias,
                        params: ap,
                    },
                ) if *out == bufs.pre
                    && *xa == x
                    && *b == bufs.weight
                    && params.accumulate == 0
                    && *o2 == bufs.out
                    && *pre == bufs.pre
                    && *bias == bufs.bias
                    && ap.kind == layers[l].activation.code() => {}
                _ => return None,
            }
            x = bufs.out;
        }
        // Then the loss sum and metrics (kept), then the backward ops up to the updates.
        let mut i = loss_at + 1;
        while matches!(ops.get(i)?, Op::ReduceSum { .. } | Op::CorrectCount { .. }) {
            i += 1;
        }
        let mut replaced: Vec<usize> = (first..=loss_at).collect();
        let grads: Vec<BufId> = plan
            .layers
            .iter()
            .flat_map(|b| [Some(b.d_weight), b.d_bias])
            .flatten()
            .collect();
        let mut written = Vec::new();
        while update_buffers(ops.get(i)?).is_none() {
            match &ops[i] {
                Op::ActivationBackward { .. } => {}
                Op::MatmulNn { params, .. } if params.accumulate == 0 => {}
                Op::MatmulTn { out, params, .. } if params.accumulate == 0 => written.push(*out),
                Op::ColumnSum { out, params, .. } if params.accumulate == 0 => written.push(*out),
                // Anything else (an accumulating product, a gather, a loss, ...) is not a
                // backward pass the fused kernel replaces.
                Op::MatmulNn { .. }
                | Op::MatmulTn { .. }
                | Op::ColumnSum { .. }
                | Op::GatherRows { .. }
                | Op::GatherRowsU8 { .. }
                | Op::GatherLabels { .. }
                | Op::MatmulNt { .. }
                | Op::BiasActivationForward { .. }
                | Op::Loss { .. }
                | Op::ReduceSum { .. }
                | Op::CorrectCount { .. }
                | Op::Update { .. } => return None,
            }
            replaced.push(i);
            i += 1;
        }
        written.sort_unstable();
        let mut want = grads.clone();
        want.sort_unstable();
        if written != want {
            return None;
        }
        // Every parameter is a slot of the arena (the grads arena has the same layout).
        let in_arena = |id: BufId| self.tensors[id].buffer() == a.params.buffer();
        if !plan
            .layers
            .iter()
            .all(|b| in_arena(b.weight) && b.bias.is_none_or(in_arena))
        {
            return None;
        }
        let slot = |id: BufId| (self.tensors[id].offset() / 4) as usize;
        let mut mlp = Vec::new();
        for (l, bufs) in layers.iter().zip(&plan.layers) {
            mlp.push(MlpLayer {
                inputs: l.inputs,
                outputs: l.outputs,
                kind: l.activation.code(),
                slope: l.activation.slope(),
                weight_at: slot(bufs.weight),
                bias_at: bufs.bias.map(slot),
            });
        }
        let shape = MlpShape::new(&mlp, a.params.len())?.with_bce(bce);
        // The gathers of the input rows and their target values (f32 tables, one row order)
        // become the pass's own reads where both are there.
        let gather_of = |out: BufId| {
            ops[..first].iter().enumerate().find_map(|(i, op)| {
                if let Op::GatherRows {
                    out: o,
                    data,
                    indices,
                    params,
                } = op
                {
                    (*o == out).then_some((i, *data, *indices, params))
                } else {
                    None
                }
            })
        };
        let steps = |p: &[ops::data::GatherParams]| p.len();
        let gathered = match (gather_of(plan.input), gather_of(target)) {
            (Some(gx), Some(gt))
                if gx.2 == gt.2
                    && steps(gx.3) == steps(gt.3)
                    && gx
                        .3
                        .iter()
                        .zip(gt.3)
                        .all(|(a, b)| a.start == b.start && a.rows == b.rows) =>
            {
                Some((gx, gt))
            }
            _ => None,
        };
        let n = loss
            .len()
            .max(gathered.as_ref().map_or(1, |g| steps(g.0 .3)));
        let params = (0..n)
            .map(|s| {
                let l = entry(loss, s);
                FusedMlpParams {
                    rows: l.rows,
                    cols: l.cols,
                    batch_rows: l.batch_rows,
                    scale: l.scale,
                    start: gathered.as_ref().map_or(0, |g| entry(g.0 .3, s).start),
                    ..Default::default()
                }
            })
            .collect();
        let (x, target, indices) = match &gathered {
            Some((gx, gt)) => {
                replaced.push(gx.0);
                replaced.push(gt.0);
                replaced.sort_unstable();
                (gx.1, gt.1, Some(gx.2))
            }
            None => (plan.input, target, None),
        };
        Some(MlpPass {
            shape,
            first,
            last: *replaced.last()?,
            replaced,
            params,
            pred: *pred,
            x,
            target,
            indices,
        })
    }

    /// The update of every arena slot at once, with the parameter entries of update op
    /// `index` stretched over the whole arena.
    pub(super) fn update_dispatch(
        &self,
        plan: &Plan,
        index: usize,
        a: &Arenas,
    ) -> Result<Dispatch> {
        let Some((rule, params)) = update_entries(&plan.train_step[index]) else {
            return Err(crate::error::Error::Config(format!(
                "op {index} of the training step is not an update"
            )));
        };
        let states: Vec<&GpuTensor> = a.states.iter().collect();
        let mut d = ops::update(
            &self.kernels,
            rule,
            &a.params,
            &states,
            &a.grads,
            entry(params, 0),
        )?;
        set_update_params(self.gpu, &mut d, params, a.params.len() as u32)?;
        Ok(d)
    }

    /// Re-sends the fused update's entries (after `Plan::set_epoch`), stretched over the
    /// arena.
    pub(super) fn refresh_update(&mut self, plan: &Plan, index: usize) -> Result<()> {
        let (Some(a), Some((_, params))) = (
            self.arenas.as_ref(),
            update_entries(&plan.train_step[index]),
        ) else {
            return Ok(());
        };
        let len = a.params.len() as u32;
        set_update_params(self.gpu, &mut self.train[index], params, len)
    }
}

/// An update op's rule and per-step entries.
fn update_entries(op: &Op) -> Option<(ops::UpdateRule, &[OptimParams])> {
    if let Op::Update { rule, params, .. } = op {
        Some((*rule, params))
    } else {
        None
    }
}

/// Gives the fused update the entries of an update op with `len` set to the whole arena's
/// (the per-tensor ops carry their own tensor's length).
fn set_update_params(gpu: &Gpu, d: &mut Dispatch, params: &[OptimParams], len: u32) -> Result<()> {
    let params: Vec<_> = params.iter().map(|p| OptimParams { len, ..*p }).collect();
    d.set_params(gpu, &params)
}
