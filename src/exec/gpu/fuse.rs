//! Fusions across a whole training step on the GPU: every parameter tensor, gradient and
//! optimizer state as a slot of one arena buffer per role, so that one dispatch updates them
//! all; and the fully fused small-MLP pass (`ops::fused_mlp`), which replaces the step's
//! gathers, forward pass, loss and backward pass where it measures faster.

use crate::autotune;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::Dispatch;
use crate::ops::data::GatherParams;
use crate::ops::fused_mlp::{FusedMlp, FusedMlpParams, MlpLayer, MlpShape};
use crate::ops::{self, Accumulate};
use crate::plan::{entry, BufId, Op, Plan, Update, UpdateTensor};
use crate::tensor::{DType, GpuTensor};

use super::{GpuExec, Part};

/// Where the training step is the forward pass, loss and backward pass of a network the
/// fully fused pass takes: what it reads and writes, and which parts of the step it replaces.
struct MlpPass {
    shape: MlpShape,
    /// Per step: the loss's rows and scale, and where the step's rows start.
    params: Vec<FusedMlpParams>,
    pred: BufId,
    /// What the pass reads its rows from: the gathered batch (`input`, `target`), or, when
    /// it gathers them itself, the data tables and the row order.
    x: BufId,
    target: BufId,
    indices: Option<BufId>,
}

impl MlpPass {
    /// Whether the pass does the work of a dispatch of this part.
    fn replaces(&self, part: Part) -> bool {
        match part {
            Part::Forward | Part::Loss | Part::Backward => true,
            Part::GatherInput | Part::GatherValues => self.indices.is_some(),
            Part::GatherLabels | Part::LossSum | Part::Correct | Part::Update => false,
        }
    }
}

/// The buffers the optimizer update reads and writes, one arena each, slots in the order of
/// the update's tensors.
pub(super) struct Arenas {
    pub(super) params: GpuTensor,
    pub(super) grads: GpuTensor,
    /// The rule's state tensors, in its `state_names` order.
    pub(super) states: Vec<GpuTensor>,
    /// The slots, to take the place of the buffers they stand for (taken at setup).
    pub(super) views: Vec<(BufId, GpuTensor)>,
}

impl Arenas {
    /// Arenas for the update's tensors, where there are at least two, they touch distinct
    /// f32 buffers and the arenas fit the device; `None` otherwise (every tensor then keeps a
    /// buffer of its own).
    pub(super) fn plan(gpu: &Gpu, plan: &Plan, update: &Update) -> Result<Option<Arenas>> {
        let slots = &update.tensors;
        if slots.len() < 2 {
            return Ok(None);
        }
        let mut ids: Vec<BufId> = slots
            .iter()
            .flat_map(|t| [t.param, t.grad].into_iter().chain(t.state.iter().copied()))
            .collect();
        let all = ids.len();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != all || ids.iter().any(|&id| plan.buffers[id].dtype != DType::F32) {
            return Ok(None);
        }
        // The plan lays the slots out for this device's offset alignment.
        let layout = update.arena_layout(gpu.limits().min_storage_buffer_offset_alignment as u64);
        if gpu
            .check_buffer_size("optimizer arena", layout.bytes)
            .is_err()
        {
            return Ok(None);
        }
        let arena = |label: &str, pick: &dyn Fn(&UpdateTensor) -> BufId| {
            let specs: Vec<(&str, &[usize])> = slots
                .iter()
                .map(|s| {
                    let b = &plan.buffers[pick(s)];
                    (b.name.as_str(), &b.shape[..])
                })
                .collect();
            GpuTensor::arena(
                gpu,
                label,
                &specs,
                &layout.offsets,
                &layout.sizes,
                layout.bytes,
            )
        };
        let mut views = Vec::new();
        let mut take = |(whole, slot_views): (GpuTensor, Vec<GpuTensor>),
                        pick: &dyn Fn(&UpdateTensor) -> BufId| {
            views.extend(slots.iter().map(pick).zip(slot_views));
            whole
        };
        let params = take(arena("parameters", &|s| s.param)?, &|s| s.param);
        let grads = take(arena("gradients", &|s| s.grad)?, &|s| s.grad);
        let mut states = Vec::new();
        for k in 0..update.rule.state_names().len() {
            let pick = |s: &UpdateTensor| s.state[k];
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
    /// The update of every arena slot at once, with the update's entries stretched over the
    /// whole arena. The update formulas are element-wise and the arenas' padding is zeros
    /// that stay zeros, so every parameter gets the same bits as from its own update.
    pub(super) fn update_dispatch(&self, update: &Update, a: &Arenas) -> Result<Dispatch> {
        let len = a.params.len() as u32;
        let params = update.params_for(len);
        let states: Vec<&GpuTensor> = a.states.iter().collect();
        let mut d = ops::update(
            &self.kernels,
            update.rule,
            &a.params,
            &states,
            &a.grads,
            entry(&params, 0),
        )?;
        d.set_params(self.gpu, &params)?;
        Ok(d)
    }

    /// The training step's forward pass, loss and backward pass as one fully fused pass
    /// plus a sum over its tiles (`ops::fused_mlp`), where the network fits it, the
    /// parameters live in the arena and the tuning allows: `FusedMlp::On`, or `Auto` where
    /// one step is big enough to measure and the fused pass measures faster (the choice is
    /// cached with the matmul choices). `step` is the op-by-op dispatches of the step; the
    /// ones the pass replaces make way for it.
    pub(super) fn fuse_mlp(&mut self, plan: &Plan, step: &mut Vec<(Part, Dispatch)>) -> Result<()> {
        let policy = self.kernels.tuning().fused_mlp;
        if policy == FusedMlp::Off || !self.kernels.tuning().fuse || self.arenas.is_none() {
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
        // Two forms, the first that fits of each: one row per invocation in tiles of 32
        // with the weights staged in workgroup memory (a hardware GPU's form; unstaged where
        // the weights do not fit, as a 128 x 128 layer's 64 KiB), and 8, 4 or 2 rows per
        // invocation, 8 to 16 invocations per workgroup (a CPU adapter's; 128-wide layers
        // take at most 2, `MlpShape::most_rows_per_invocation`).
        let groups = match policy {
            FusedMlp::Form {
                tile_rows,
                rows_per_invocation,
                staged,
            } => vec![vec![(tile_rows as u32, rows_per_invocation, staged)]],
            FusedMlp::Auto | FusedMlp::On | FusedMlp::Off => vec![
                vec![(32, 1, true), (32, 1, false)],
                vec![(64, 8, false), (32, 4, false), (32, 2, false)],
            ],
        };
        let shape_of = |(tile, rows, staged): (u32, u8, bool)| {
            pass.shape
                .with_gather(pass.indices.is_some())
                .with_tile_rows(tile)
                .with_rows_per_invocation(rows)
                .with_staged(staged)
        };
        // What keeps the device from running a form: its limits, or the partial sums'
        // buffer (one row of the arena per tile).
        let misfit = |shape: MlpShape| {
            let bytes = (shape.tiles(plan.batch) * len * 4) as u64;
            ops::fused_mlp::fused_mlp_misfit(k, shape).or_else(|| {
                g.check_buffer_size("fused MLP partial sums", bytes)
                    .err()
                    .map(|e| e.to_string())
            })
        };
        // A form named by the tuning must fit: a clear error rather than a silent fallback
        // (or a validation error from the driver).
        if let FusedMlp::Form {
            tile_rows,
            rows_per_invocation,
            staged,
        } = policy
        {
            let shape = shape_of((tile_rows as u32, rows_per_invocation, staged));
            if let Some(why) = misfit(shape) {
                return Err(crate::error::Error::Config(format!(
                    "the fused MLP form {} does not fit this device: {why}; name a smaller \
                     form (fewer rows per workgroup, weights not staged), `on` for the first \
                     form that fits, or `auto`",
                    shape.entry_point()
                )));
            }
        }
        let forms: Vec<MlpShape> = groups
            .into_iter()
            .filter_map(|options| {
                options
                    .into_iter()
                    .map(shape_of)
                    .find(|&shape| misfit(shape).is_none())
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
                lists.push(
                    step.iter()
                        .filter(|(part, _)| pass.replaces(*part))
                        .map(|(_, d)| d)
                        .collect(),
                );
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
        // The pass where the forward pass began, the sum over tiles where the backward pass
        // ended; what they replace goes.
        let first = step.iter().position(|(p, _)| *p == Part::Forward);
        let last = step.iter().rposition(|(p, _)| *p == Part::Backward);
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(());
        };
        let mut out = Vec::with_capacity(step.len());
        let (mut fused, mut sum) = (Some(fused), Some(sum));
        for (i, (part, d)) in std::mem::take(step).into_iter().enumerate() {
            if i == first {
                out.extend(fused.take().map(|f| (Part::Forward, f)));
            }
            if !pass.replaces(part) {
                out.push((part, d));
            }
            if i == last {
                out.extend(sum.take().map(|s| (Part::Backward, s)));
            }
        }
        *step = out;
        self.mlp_form = Some(shape.entry_point());
        Ok(())
    }

    /// The fused pass's view of the training step, where the step is one the pass takes:
    /// any of the losses (MSE or binary cross-entropy over value targets, softmax
    /// cross-entropy over class labels), every parameter a slot of the arena, and a network
    /// the pass's shapes hold. Where the input rows and their target values are gathered
    /// from f32 tables by one row order, the pass gathers them itself; class labels it reads
    /// from the gathered batch.
    fn mlp_pass(&self, plan: &Plan) -> Option<MlpPass> {
        let step = &plan.train_step;
        let a = self.arenas.as_ref()?;
        let Op::Loss {
            kind,
            pred,
            target,
            params: loss,
            ..
        } = &step.loss.as_ref()?.loss
        else {
            return None;
        };
        // Every parameter is a slot of the arena (the grads arena has the same layout).
        let in_arena = |id: BufId| self.tensors[id].buffer() == a.params.buffer();
        let slot = |id: BufId| (self.tensors[id].offset() / 4) as usize;
        let mut mlp = Vec::new();
        for l in &step.layers {
            if !in_arena(l.weight) || !l.bias.is_none_or(in_arena) {
                return None;
            }
            mlp.push(MlpLayer {
                inputs: l.inputs,
                outputs: l.outputs,
                kind: l.activation.code(),
                slope: l.activation.slope(),
                weight_at: slot(l.weight),
                bias_at: l.bias.map(slot),
            });
        }
        let shape = MlpShape::new(&mlp, a.params.len())?.with_loss(*kind);
        // The gathers of the input rows and their target values become the pass's own reads
        // where both gather f32 rows by one row order, step for step.
        let gather = step.gather.as_ref();
        // (table, row order, per-step entries) of a gather of f32 rows; `None` for pixel
        // bytes, or where nothing is gathered on the device (streamed): the pass then reads
        // the gathered batch.
        fn rows_of(op: Option<&Op>) -> Option<(BufId, BufId, &[GatherParams])> {
            if let Some(Op::GatherRows {
                data,
                indices,
                params,
                ..
            }) = op
            {
                Some((*data, *indices, params))
            } else {
                None
            }
        }
        let gx = rows_of(gather.and_then(|g| g.input.as_ref()));
        // Class labels are read from the gathered batch: their gather stays in the step, for
        // the correct count.
        let gathered = if kind.takes_labels() {
            gx.map(|gx| (gx, None))
        } else {
            match (gx, rows_of(gather.and_then(|g| g.values.as_ref()))) {
                (Some(gx), Some(gt))
                    if gx.1 == gt.1
                        && gx.2.len() == gt.2.len()
                        && gx
                            .2
                            .iter()
                            .zip(gt.2)
                            .all(|(a, b)| a.start == b.start && a.rows == b.rows) =>
                {
                    Some((gx, Some(gt)))
                }
                _ => None,
            }
        };
        let n = loss
            .len()
            .max(gathered.as_ref().map_or(1, |g| g.0 .2.len()));
        let params = (0..n)
            .map(|s| {
                let l = entry(loss, s);
                FusedMlpParams {
                    rows: l.rows,
                    cols: l.cols,
                    batch_rows: l.batch_rows,
                    scale: l.scale,
                    start: gathered.as_ref().map_or(0, |g| entry(g.0 .2, s).start),
                    ..Default::default()
                }
            })
            .collect();
        let (x, target, indices) = match &gathered {
            Some((gx, gt)) => (gx.0, gt.map_or(*target, |gt| gt.0), Some(gx.1)),
            None => (plan.input, *target, None),
        };
        Some(MlpPass {
            shape,
            params,
            pred: *pred,
            x,
            target,
            indices,
        })
    }
}
