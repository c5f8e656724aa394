//! The two executors of a [`Plan`]: the GPU one keeps every buffer resident and turns each op
//! into a prebuilt [`Dispatch`], recording a whole step into one compute pass and one
//! submission; the CPU one keeps host vectors and calls the twins in `cpu.rs` in the same
//! order. `Executor` is the closed enum the trainer talks to. Deciding what to run and when
//! is the trainer's job.

use std::ops::Range;

use crate::cpu;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{self, Accumulate, Dispatch};
use crate::network::Activation;
use crate::params::{AdamParams, BlockedMatmulParams, MatmulParams, SgdParams};
use crate::plan::{entry, BufId, Op, Plan};
use crate::tensor::{copy_tensors, start_read_many, DType, GpuTensor};

/// Where a run executes.
#[derive(Clone, Copy, Debug)]
pub enum Device<'a> {
    /// On this GPU, every buffer resident.
    Gpu(&'a Gpu),
    /// On the host: the CPU kernels, with matrix products by a threaded gemm (fast; equal
    /// to the GPU to rounding).
    Cpu,
    /// On the host with nothing but the plain-loop twins of the GPU kernels, in their order
    /// of operations: the yardstick for cross-checking (slow for large products).
    CpuReference,
}

impl Device<'_> {
    /// A short name for logs: the adapter's name, or "cpu".
    pub fn name(&self) -> String {
        match self {
            Device::Gpu(g) => g.adapter().name.clone(),
            Device::Cpu => "cpu".into(),
            Device::CpuReference => "cpu (reference)".into(),
        }
    }
}

/// Which op list of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Train,
    Eval,
}

fn ops_of(plan: &Plan, pass: Pass) -> &[Op] {
    match pass {
        Pass::Train => &plan.train_step,
        Pass::Eval => &plan.eval_step,
    }
}

fn activation_of(kind: u32, slope: f32) -> Activation {
    match kind {
        1 => Activation::Relu,
        2 => Activation::LeakyRelu { slope },
        3 => Activation::Sigmoid,
        4 => Activation::Tanh,
        5 => Activation::Sign,
        6 => Activation::Step,
        _ => Activation::Identity,
    }
}

fn acc(flag: u32) -> Accumulate {
    if flag != 0 {
        Accumulate::Add
    } else {
        Accumulate::Overwrite
    }
}

// ---------------------------------------------------------------------------------------

/// The GPU executor: resident tensors and one prebuilt dispatch per op.
pub struct GpuExec<'a> {
    gpu: &'a Gpu,
    tensors: Vec<GpuTensor>,
    train: Vec<Dispatch>,
    eval: Vec<Dispatch>,
    snapshot: Vec<(BufId, GpuTensor)>,
    /// A snapshot was asked for and is taken at the start of the next submitted step.
    save_pending: bool,
    /// The parameter tensors, their gradients and each optimizer state in one buffer each.
    arenas: Option<Arenas>,
    /// The index of the training dispatch that updates every parameter tensor at once.
    fused_update: Option<usize>,
    /// The partial gradient sums of the fully fused pass, where it runs.
    mlp_partial: Option<GpuTensor>,
    /// The fused pass's entry point, where it runs.
    mlp_form: Option<&'static str>,
}

/// Where a training step's ops are the forward pass, MSE loss and backward pass of a network
/// the fully fused pass takes: the ops it replaces and what it reads and writes.
struct MlpPass {
    shape: kernels::fused_mlp::MlpShape,
    /// Index of the first forward op: the fused pass runs there.
    first: usize,
    /// Index of the last backward op: the sum over tiles runs there.
    last: usize,
    /// Every op the two replace (forward, loss, backward).
    replaced: Vec<usize>,
    /// Per step: the loss's rows and scale, and where the step's rows start.
    params: Vec<crate::params::FusedMlpParams>,
    pred: BufId,
    /// What the pass reads its rows from: the gathered batch (`input`, `target`), or, when
    /// it gathers them itself, the data tables and the row order.
    x: BufId,
    target: BufId,
    indices: Option<BufId>,
}

/// The buffers the optimizer update reads and writes, one arena each, slots in the order of
/// the training step's update ops: slot `i` of every arena belongs to update op `i`.
struct Arenas {
    params: GpuTensor,
    grads: GpuTensor,
    /// `[velocity]` or `[m, v]`.
    states: Vec<GpuTensor>,
    /// The slots, to take the place of the buffers they stand for (taken at setup).
    views: Vec<(BufId, GpuTensor)>,
}

/// The buffers an update op reads and writes: `(param, grad, optimizer state)`.
type UpdateBufs = (BufId, BufId, Vec<BufId>);

fn update_buffers(op: &Op) -> Option<UpdateBufs> {
    match op {
        Op::SgdUpdate { param, grad, .. } => Some((*param, *grad, vec![])),
        Op::MomentumUpdate {
            param,
            velocity,
            grad,
            ..
        } => Some((*param, *grad, vec![*velocity])),
        Op::AdamUpdate {
            param, m, v, grad, ..
        } => Some((*param, *grad, vec![*m, *v])),
        _ => None,
    }
}

impl Arenas {
    /// Arenas for the update ops of `ops`, where there are at least two, they are
    /// consecutive, share one kind, touch distinct buffers and the arenas fit the device.
    /// `None` otherwise (every tensor then keeps a buffer of its own).
    fn plan(gpu: &Gpu, plan: &Plan, ops: &[Op]) -> Result<Option<Arenas>> {
        let at: Vec<usize> = (0..ops.len())
            .filter(|&i| update_buffers(&ops[i]).is_some())
            .collect();
        if at.len() < 2 || at.windows(2).any(|w| w[1] != w[0] + 1) {
            return Ok(None);
        }
        let kind = std::mem::discriminant(&ops[at[0]]);
        if at.iter().any(|&i| std::mem::discriminant(&ops[i]) != kind) {
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
        let align = (gpu.limits().min_storage_buffer_offset_alignment as u64).max(16);
        let bytes: u64 = slots
            .iter()
            .map(|s| {
                (plan.buffers[s.0].len() as u64 * 4)
                    .max(16)
                    .next_multiple_of(align)
            })
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

impl<'a> GpuExec<'a> {
    fn new(gpu: &'a Gpu, plan: &Plan) -> Result<GpuExec<'a>> {
        // Every buffer is checked against the adapter's limits before any is created.
        for b in &plan.buffers {
            gpu.check_buffer_size(&b.name, b.len() as u64 * 4)?;
        }
        let mut arenas = if gpu.fusion() {
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
        let mut exec = GpuExec {
            gpu,
            tensors,
            train: vec![],
            eval: vec![],
            snapshot: vec![],
            save_pending: false,
            arenas,
            fused_update: None,
            mlp_partial: None,
            mlp_form: None,
        };
        exec.train = exec.build_all(plan, &plan.train_step)?;
        exec.fused_update = exec.fuse_updates(plan)?;
        exec.fuse_mlp(plan)?;
        exec.eval = exec.build_all(plan, &plan.eval_step)?;
        Ok(exec)
    }

    /// Where the parameter tensors live in arenas, replaces the training step's update
    /// dispatches by one over the arenas: it sits at the last update op's index, and the
    /// others are disabled. The update formulas are element-wise and the arenas' padding is
    /// zeros that stay zeros, so every parameter gets the same bits as from its own update.
    fn fuse_updates(&mut self, plan: &Plan) -> Result<Option<usize>> {
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
    fn fuse_mlp(&mut self, plan: &Plan) -> Result<()> {
        use kernels::fused_mlp::FusedMlp;
        let policy = self.gpu.fused_mlp();
        if policy == FusedMlp::Off || !self.gpu.fusion() || self.fused_update.is_none() {
            return Ok(());
        }
        let Some(pass) = self.mlp_pass(plan) else {
            return Ok(());
        };
        let flops = 2.0 * plan.batch as f64 * pass.shape.macs_per_row() as f64;
        if policy == FusedMlp::Auto && flops < crate::autotune::TUNE_MIN_FLOPS {
            return Ok(());
        }
        let Some(a) = &self.arenas else {
            return Ok(());
        };
        let g = self.gpu;
        let t = &self.tensors;
        let len = a.params.len();
        // Two forms, the first that the device runs of each: one row per invocation in
        // tiles of 32 with the weights staged in workgroup memory (a hardware GPU's form),
        // and 8 or 4 rows per invocation, 8 invocations per workgroup (a CPU adapter's).
        let forms = match policy {
            FusedMlp::Form {
                tile_rows,
                rows_per_invocation,
                staged,
            } => vec![vec![(tile_rows as u32, rows_per_invocation, staged)]],
            _ => vec![
                vec![(32, 1, true), (32, 1, false)],
                vec![(64, 8, false), (32, 4, false)],
            ],
        };
        let mut passes = Vec::new();
        for options in forms {
            for (tile, rows, staged) in options {
                let shape = pass
                    .shape
                    .with_gather(pass.indices.is_some())
                    .with_tile_rows(tile)
                    .with_rows_per_invocation(rows)
                    .with_staged(staged);
                let tiles = shape.tiles(plan.batch);
                let bytes = (tiles * len * 4) as u64;
                if g.check_buffer_size("fused MLP partial sums", bytes)
                    .is_err()
                {
                    continue;
                }
                let partial = GpuTensor::zeros(g, "fused MLP partial sums", &[tiles, len])?;
                let built = kernels::fused_mlp(
                    g,
                    &partial,
                    &t[pass.pred],
                    &t[plan.row_loss],
                    &t[pass.x],
                    &t[pass.target],
                    &a.params,
                    pass.indices.map(|i| &t[i]),
                    shape,
                    pass.params[0],
                );
                // Left to the tuner, a form the driver fails to build is skipped (a big
                // private array, say); asked for, the failure is the caller's to see.
                let built = match built {
                    Err(e) if policy == FusedMlp::Auto => {
                        log::warn!("fused MLP pass {} skipped: {e}", shape.entry_point());
                        continue;
                    }
                    other => other?,
                };
                if let Some(mut d) = built {
                    d.set_params(g, &pass.params)?;
                    let sum = kernels::column_sum(g, &a.grads, &partial, Accumulate::Overwrite)?;
                    passes.push((shape.entry_point(), d, sum, partial));
                    break;
                }
            }
        }
        if passes.is_empty() {
            return Ok(());
        }
        let pick = if policy == FusedMlp::Auto {
            let ops: Vec<&Dispatch> = pass.replaced.iter().map(|&i| &self.train[i]).collect();
            let key = format!("mlp {} batch {}", pass.shape.name(), plan.batch);
            let names: Vec<&str> = passes.iter().map(|p| p.0).chain(["ops"]).collect();
            let choice = crate::autotune::choose_named(g, &key, &names, || {
                let mut lists: Vec<Vec<&Dispatch>> =
                    passes.iter().map(|(_, d, sum, _)| vec![d, sum]).collect();
                lists.push(ops);
                let times = crate::autotune::time_lists(g, &lists)?;
                // The op-by-op kernels stay unless a fused pass is clearly faster.
                let ops_time = times[passes.len()];
                let (best, _) = passes.iter().zip(&times).map(|(p, t)| (p.0, *t)).fold(
                    ("ops", ops_time * 0.97),
                    |b, c| if c.1 < b.1 { c } else { b },
                );
                let report = names
                    .iter()
                    .zip(&times)
                    .map(|(n, t)| format!("{n} {:.3} ms", t * 1e3))
                    .collect::<Vec<_>>()
                    .join(", ");
                Ok((best.to_string(), report))
            })?;
            choice.and_then(|c| passes.iter().position(|p| p.0 == c))
        } else {
            Some(0)
        };
        let Some(pick) = pick else {
            return Ok(());
        };
        let (form, fused, sum, partial) = passes.swap_remove(pick);
        for &i in &pass.replaced {
            self.train[i].disable();
        }
        self.train[pass.first] = fused;
        self.train[pass.last] = sum;
        self.mlp_partial = Some(partial);
        self.mlp_form = Some(form);
        Ok(())
    }

    /// The fused pass's view of the training step, where the step has exactly the shape
    /// the pass replaces: every layer's product and bias-activation, an MSE loss on the last
    /// layer's output against the batch values, and a backward pass that only writes the
    /// gradient slots and scratch deltas, none of it accumulating.
    fn mlp_pass(&self, plan: &Plan) -> Option<MlpPass> {
        use kernels::fused_mlp::{MlpLayer, MlpShape};
        let ops = &plan.train_step;
        let a = self.arenas.as_ref()?;
        let layers = &plan.network.layers;
        let n = layers.len();
        let first = ops
            .iter()
            .position(|op| matches!(op, Op::MatmulNt { .. }))?;
        let target = plan.batch_values?;
        let loss_at = first + 2 * n;
        let Op::Loss {
            kind: crate::loss::Loss::Mse,
            pred,
            target: t,
            params: loss,
            ..
        } = ops.get(loss_at)?
        else {
            return None;
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
                _ => return None,
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
        let shape = MlpShape::new(&mlp, a.params.len())?;
        // The gathers of the input rows and their target values (f32 tables, one row order)
        // become the pass's own reads where both are there.
        let gather_of = |out: BufId| {
            ops[..first]
                .iter()
                .enumerate()
                .find_map(|(i, op)| match op {
                    Op::GatherRows {
                        out: o,
                        data,
                        indices,
                        params,
                    } if *o == out => Some((i, *data, *indices, params)),
                    _ => None,
                })
        };
        let steps = |p: &[crate::params::GatherParams]| p.len();
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
                let l = crate::plan::entry(loss, s);
                crate::params::FusedMlpParams {
                    rows: l.rows,
                    cols: l.cols,
                    batch_rows: l.batch_rows,
                    scale: l.scale,
                    start: gathered
                        .as_ref()
                        .map_or(0, |g| crate::plan::entry(g.0 .3, s).start),
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
    fn update_dispatch(&self, plan: &Plan, index: usize, a: &Arenas) -> Result<Dispatch> {
        let g = self.gpu;
        let len = a.params.len() as u32;
        Ok(match &plan.train_step[index] {
            Op::SgdUpdate { params, .. } => {
                let params: Vec<_> = params.iter().map(|p| SgdParams { len, ..*p }).collect();
                let mut d = kernels::sgd_update(g, &a.params, &a.grads, entry(&params, 0))?;
                d.set_params(g, &params)?;
                d
            }
            Op::MomentumUpdate { params, .. } => {
                let params: Vec<_> = params.iter().map(|p| SgdParams { len, ..*p }).collect();
                let mut d = kernels::momentum_update(
                    g,
                    &a.params,
                    &a.states[0],
                    &a.grads,
                    entry(&params, 0),
                )?;
                d.set_params(g, &params)?;
                d
            }
            Op::AdamUpdate { params, .. } => {
                let params: Vec<_> = params.iter().map(|p| AdamParams { len, ..*p }).collect();
                let mut d = kernels::adam_update(
                    g,
                    &a.params,
                    &a.states[0],
                    &a.states[1],
                    &a.grads,
                    entry(&params, 0),
                )?;
                d.set_params(g, &params)?;
                d
            }
            _ => unreachable!("fuse_updates passes an update op"),
        })
    }

    /// One dispatch per op. A layer's product followed by its bias and activation becomes
    /// one fused dispatch (`kernels::dense_forward`) where a generated tile or the scalar
    /// blocked kernel runs the product, and so does an input delta followed by an activation
    /// derivative (`kernels::relu_delta` on a small tile, `kernels::dense_backward` on the
    /// scalar blocked kernel); the second op's dispatch is then kept but disabled, so op
    /// indices still match.
    fn build_all(&self, plan: &Plan, ops: &[Op]) -> Result<Vec<Dispatch>> {
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
    fn fused(&self, plan: &Plan, first: &Op, next: &Op) -> Result<Option<Dispatch>> {
        if !self.gpu.fusion() {
            return Ok(None);
        }
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
            ) if pre == pre2 && mp.accumulate == 0 => kernels::dense_forward(
                self.gpu,
                &t[*out],
                &t[*pre],
                &t[*a],
                &t[*b],
                bias.map(|b| &t[b]),
                &t[plan.dummy],
                activation_of(ap.kind, ap.slope),
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
                let act = activation_of(ap.kind, ap.slope);
                if act == Activation::Relu {
                    if let Some(d) =
                        kernels::relu_delta(self.gpu, &t[*dpre], &t[*a], &t[*b], &t[*pre])?
                    {
                        return Ok(Some(d));
                    }
                }
                kernels::dense_backward(self.gpu, &t[*dpre], &t[*a], &t[*b], &t[*pre], act)
            }
            _ => Ok(None),
        }
    }

    /// Builds an op's dispatch with the shape-checking recorder of its kernel, then gives it
    /// the op's own parameter entries.
    fn build(&self, plan: &Plan, op: &Op) -> Result<Dispatch> {
        let g = self.gpu;
        let t = &self.tensors;
        Ok(match op {
            Op::GatherRows {
                out,
                data,
                indices,
                params,
            } => {
                let p = params[0];
                let mut d = kernels::gather_rows(
                    g,
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
                let mut d = kernels::gather_rows_u8(
                    g,
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
                let mut d = kernels::gather_labels(
                    g,
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
                kernels::matmul_nt(g, &t[*out], &t[*a], &t[*b], acc(params.accumulate))?
            }
            Op::MatmulNn { out, a, b, params } => {
                kernels::matmul_nn(g, &t[*out], &t[*a], &t[*b], acc(params.accumulate))?
            }
            Op::MatmulTn { out, a, b, params } => {
                kernels::matmul_tn(g, &t[*out], &t[*a], &t[*b], acc(params.accumulate))?
            }
            Op::BiasActivationForward {
                out,
                pre,
                bias,
                params,
            } => {
                let act = activation_of(params.kind, params.slope);
                let bias = bias.map(|b| &t[b]);
                kernels::bias_activation_forward(g, &t[*out], &t[*pre], bias, &t[plan.dummy], act)?
            }
            Op::ActivationBackward {
                dpre,
                dout,
                pre,
                params,
            } => {
                let act = activation_of(params.kind, params.slope);
                kernels::activation_backward(g, &t[*dpre], &t[*dout], &t[*pre], act)?
            }
            Op::ColumnSum { out, x, params } => {
                kernels::column_sum(g, &t[*out], &t[*x], acc(params.accumulate))?
            }
            Op::Loss {
                kind,
                grad,
                row_loss,
                pred,
                target,
                params,
            } => {
                let mut d = kernels::loss(
                    g,
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
                kernels::reduce_sum(g, &t[*out], &t[*x], acc(params.accumulate))?
            }
            Op::CorrectCount {
                count,
                x,
                labels,
                params,
            } => {
                let p = params[0];
                let mut d = kernels::correct_count(
                    g,
                    &t[*count],
                    &t[*x],
                    &t[*labels],
                    p.rows as usize,
                    p.threshold,
                )?;
                d.set_params(g, params)?;
                d
            }
            Op::SgdUpdate {
                param,
                grad,
                params,
            } => {
                let mut d = kernels::sgd_update(g, &t[*param], &t[*grad], entry(params, 0))?;
                d.set_params(g, params)?;
                d
            }
            Op::MomentumUpdate {
                param,
                velocity,
                grad,
                params,
            } => {
                let mut d = kernels::momentum_update(
                    g,
                    &t[*param],
                    &t[*velocity],
                    &t[*grad],
                    entry(params, 0),
                )?;
                d.set_params(g, params)?;
                d
            }
            Op::AdamUpdate {
                param,
                m,
                v,
                grad,
                params,
            } => {
                let mut d = kernels::adam_update(
                    g,
                    &t[*param],
                    &t[*m],
                    &t[*v],
                    &t[*grad],
                    entry(params, 0),
                )?;
                d.set_params(g, params)?;
                d
            }
        })
    }

    /// Re-sends the parameter entries of op `index` of `pass` (after `Plan::set_epoch`).
    fn refresh(&mut self, plan: &Plan, pass: Pass, index: usize) -> Result<()> {
        let g = self.gpu;
        if pass == Pass::Train && self.fused_update.is_some() {
            if self.fused_update == Some(index) {
                if let Some(a) = &self.arenas {
                    let fused = self.update_dispatch(plan, index, a)?;
                    self.train[index] = fused;
                }
                return Ok(());
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
            Op::SgdUpdate { params, .. } | Op::MomentumUpdate { params, .. } => {
                d.set_params(g, params)
            }
            Op::AdamUpdate { params, .. } => d.set_params(g, params),
            Op::GatherRows { params, .. }
            | Op::GatherRowsU8 { params, .. }
            | Op::GatherLabels { params, .. } => d.set_params(g, params),
            Op::Loss { params, .. } => d.set_params(g, params),
            Op::CorrectCount { params, .. } => d.set_params(g, params),
            _ => Ok(()),
        }
    }

    /// Records steps `steps` of `pass` into one compute pass and submits it once, with a
    /// pending snapshot's copies ahead of the pass in the same submission.
    fn run(&mut self, pass: Pass, steps: Range<usize>) -> Result<()> {
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
    fn flush_save(&mut self) -> Result<()> {
        if self.save_pending {
            self.copy_all(true)?;
            self.save_pending = false;
        }
        Ok(())
    }

    /// Marks `ids` for a snapshot (buffers created on first use); the copies ride along with
    /// the next submitted step, so taking a snapshot costs no submission of its own.
    fn save(&mut self, ids: &[BufId]) -> Result<()> {
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

    fn restore(&mut self) -> Result<()> {
        self.flush_save()?;
        self.copy_all(false)
    }

    fn snapshot_pairs(&self, save: bool) -> Vec<(&GpuTensor, &GpuTensor)> {
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

    fn copy_all(&self, save: bool) -> Result<()> {
        copy_tensors(self.gpu, &self.snapshot_pairs(save))
    }
}

// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum HostBuf {
    F32(Vec<f32>),
    U32(Vec<u32>),
}

/// How the CPU executor multiplies matrices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuMatmul {
    /// The plain-loop twins of the GPU kernels (`cpu::matmul_nt` ...), bit-for-bit in the
    /// kernels' order of operations.
    Reference,
    /// `matrixmultiply`'s threaded sgemm (`cpu::matmul_gemm`): many times faster, equal to
    /// rounding.
    #[default]
    Gemm,
}

/// The CPU executor: host vectors and the CPU twins, op by op in plan order.
pub struct CpuExec {
    bufs: Vec<HostBuf>,
    snapshot: Vec<(BufId, HostBuf)>,
    matmul: CpuMatmul,
}

impl CpuExec {
    fn new(plan: &Plan, matmul: CpuMatmul) -> CpuExec {
        let bufs = plan
            .buffers
            .iter()
            .map(|b| match b.dtype {
                DType::F32 => HostBuf::F32(vec![0.0; b.len()]),
                DType::U32 => HostBuf::U32(vec![0; b.len()]),
            })
            .collect();
        CpuExec {
            bufs,
            snapshot: vec![],
            matmul,
        }
    }

    fn f(&self, id: BufId) -> &[f32] {
        match &self.bufs[id] {
            HostBuf::F32(v) => v,
            HostBuf::U32(_) => &[],
        }
    }

    fn u(&self, id: BufId) -> &[u32] {
        match &self.bufs[id] {
            HostBuf::U32(v) => v,
            HostBuf::F32(_) => &[],
        }
    }

    fn take_f(&mut self, id: BufId) -> Vec<f32> {
        match std::mem::replace(&mut self.bufs[id], HostBuf::F32(vec![])) {
            HostBuf::F32(v) => v,
            other => {
                self.bufs[id] = other;
                vec![]
            }
        }
    }

    fn take_u(&mut self, id: BufId) -> Vec<u32> {
        match std::mem::replace(&mut self.bufs[id], HostBuf::U32(vec![])) {
            HostBuf::U32(v) => v,
            other => {
                self.bufs[id] = other;
                vec![]
            }
        }
    }

    /// One matrix product: the form's plain-loop twin, or the gemm with the form's strides.
    fn matmul(
        &mut self,
        out: BufId,
        a: BufId,
        b: BufId,
        p: &MatmulParams,
        reference: fn(&mut [f32], &[f32], &[f32], &MatmulParams),
        strides: fn(&MatmulParams) -> BlockedMatmulParams,
    ) {
        let mut o = self.take_f(out);
        match self.matmul {
            CpuMatmul::Reference => reference(&mut o, self.f(a), self.f(b), p),
            CpuMatmul::Gemm => cpu::matmul_gemm(&mut o, self.f(a), self.f(b), &strides(p)),
        }
        self.bufs[out] = HostBuf::F32(o);
    }

    fn exec(&mut self, op: &Op, step: usize) {
        match op {
            Op::GatherRows {
                out,
                data,
                indices,
                params,
            } => {
                let mut o = self.take_f(*out);
                cpu::gather_rows(
                    &mut o,
                    self.f(*data),
                    self.u(*indices),
                    &entry(params, step),
                );
                self.bufs[*out] = HostBuf::F32(o);
            }
            Op::GatherRowsU8 {
                out,
                data,
                indices,
                params,
            } => {
                let mut o = self.take_f(*out);
                cpu::gather_rows_u8(
                    &mut o,
                    self.u(*data),
                    self.u(*indices),
                    &entry(params, step),
                );
                self.bufs[*out] = HostBuf::F32(o);
            }
            Op::GatherLabels {
                out,
                labels,
                indices,
                params,
            } => {
                let mut o = self.take_u(*out);
                cpu::gather_labels(
                    &mut o,
                    self.u(*labels),
                    self.u(*indices),
                    &entry(params, step),
                );
                self.bufs[*out] = HostBuf::U32(o);
            }
            Op::MatmulNt { out, a, b, params } => self.matmul(
                *out,
                *a,
                *b,
                params,
                cpu::matmul_nt,
                BlockedMatmulParams::nt,
            ),
            Op::MatmulNn { out, a, b, params } => self.matmul(
                *out,
                *a,
                *b,
                params,
                cpu::matmul_nn,
                BlockedMatmulParams::nn,
            ),
            Op::MatmulTn { out, a, b, params } => self.matmul(
                *out,
                *a,
                *b,
                params,
                cpu::matmul_tn,
                BlockedMatmulParams::tn,
            ),
            Op::BiasActivationForward {
                out,
                pre,
                bias,
                params,
            } => {
                let mut o = self.take_f(*out);
                let mut p = self.take_f(*pre);
                let b: &[f32] = match bias {
                    Some(b) => self.f(*b),
                    None => &[],
                };
                cpu::bias_activation_forward(&mut o, &mut p, b, params);
                self.bufs[*out] = HostBuf::F32(o);
                self.bufs[*pre] = HostBuf::F32(p);
            }
            Op::ActivationBackward {
                dpre,
                dout,
                pre,
                params,
            } => {
                let mut o = self.take_f(*dpre);
                cpu::activation_backward(&mut o, self.f(*dout), self.f(*pre), params);
                self.bufs[*dpre] = HostBuf::F32(o);
            }
            Op::ColumnSum { out, x, params } => {
                let mut o = self.take_f(*out);
                cpu::column_sum(&mut o, self.f(*x), params);
                self.bufs[*out] = HostBuf::F32(o);
            }
            Op::Loss {
                kind,
                grad,
                row_loss,
                pred,
                target,
                params,
            } => {
                let mut g = self.take_f(*grad);
                let mut l = self.take_f(*row_loss);
                let p = entry(params, step);
                match kind {
                    crate::Loss::Mse => {
                        cpu::mse_loss(&mut g, &mut l, self.f(*pred), self.f(*target), &p)
                    }
                    crate::Loss::SoftmaxCrossEntropy => cpu::softmax_cross_entropy(
                        &mut g,
                        &mut l,
                        self.f(*pred),
                        self.u(*target),
                        &p,
                    ),
                    crate::Loss::BinaryCrossEntropy => cpu::binary_cross_entropy(
                        &mut g,
                        &mut l,
                        self.f(*pred),
                        self.f(*target),
                        &p,
                    ),
                }
                self.bufs[*grad] = HostBuf::F32(g);
                self.bufs[*row_loss] = HostBuf::F32(l);
            }
            Op::ReduceSum { out, x, params } => {
                let mut o = self.take_f(*out);
                cpu::reduce_sum(&mut o, self.f(*x), params);
                self.bufs[*out] = HostBuf::F32(o);
            }
            Op::CorrectCount {
                count,
                x,
                labels,
                params,
            } => {
                let mut c = self.take_u(*count);
                cpu::correct_count(&mut c, self.f(*x), self.u(*labels), &entry(params, step));
                self.bufs[*count] = HostBuf::U32(c);
            }
            Op::SgdUpdate {
                param,
                grad,
                params,
            } => {
                let mut p = self.take_f(*param);
                cpu::sgd_update(&mut p, self.f(*grad), &entry(params, step));
                self.bufs[*param] = HostBuf::F32(p);
            }
            Op::MomentumUpdate {
                param,
                velocity,
                grad,
                params,
            } => {
                let mut p = self.take_f(*param);
                let mut v = self.take_f(*velocity);
                cpu::momentum_update(&mut p, &mut v, self.f(*grad), &entry(params, step));
                self.bufs[*param] = HostBuf::F32(p);
                self.bufs[*velocity] = HostBuf::F32(v);
            }
            Op::AdamUpdate {
                param,
                m,
                v,
                grad,
                params,
            } => {
                let mut p = self.take_f(*param);
                let mut mm = self.take_f(*m);
                let mut vv = self.take_f(*v);
                cpu::adam_update(
                    &mut p,
                    &mut mm,
                    &mut vv,
                    self.f(*grad),
                    &entry(params, step),
                );
                self.bufs[*param] = HostBuf::F32(p);
                self.bufs[*m] = HostBuf::F32(mm);
                self.bufs[*v] = HostBuf::F32(vv);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------

/// A plan's executor: on a GPU or on the CPU.
pub enum Executor<'a> {
    Gpu(Box<GpuExec<'a>>),
    Cpu(CpuExec),
}

fn type_error(plan: &Plan, id: BufId, want: DType) -> Error {
    Error::shape(
        format!("'{}'", plan.buffers[id].name),
        format!("{want:?} data"),
        format!("{:?} buffer", plan.buffers[id].dtype),
    )
}

impl<'a> Executor<'a> {
    /// Allocates every buffer of `plan` and prepares its op lists.
    pub fn new(device: Device<'a>, plan: &Plan) -> Result<Executor<'a>> {
        Ok(match device {
            Device::Gpu(gpu) => Executor::Gpu(Box::new(GpuExec::new(gpu, plan)?)),
            Device::Cpu => Executor::Cpu(CpuExec::new(plan, CpuMatmul::Gemm)),
            Device::CpuReference => Executor::Cpu(CpuExec::new(plan, CpuMatmul::Reference)),
        })
    }

    /// Overwrites an f32 buffer.
    pub fn write_f32(&mut self, plan: &Plan, id: BufId, data: &[f32]) -> Result<()> {
        if plan.buffers[id].dtype != DType::F32 {
            return Err(type_error(plan, id, DType::F32));
        }
        if data.len() != plan.buffers[id].len() {
            return Err(Error::shape(
                &plan.buffers[id].name,
                plan.buffers[id].len(),
                data.len(),
            ));
        }
        match self {
            Executor::Gpu(g) => g.tensors[id].write(g.gpu, data),
            Executor::Cpu(c) => {
                c.bufs[id] = HostBuf::F32(data.to_vec());
                Ok(())
            }
        }
    }

    /// Overwrites a u32 buffer.
    pub fn write_u32(&mut self, plan: &Plan, id: BufId, data: &[u32]) -> Result<()> {
        if plan.buffers[id].dtype != DType::U32 {
            return Err(type_error(plan, id, DType::U32));
        }
        if data.len() != plan.buffers[id].len() {
            return Err(Error::shape(
                &plan.buffers[id].name,
                plan.buffers[id].len(),
                data.len(),
            ));
        }
        match self {
            Executor::Gpu(g) => g.tensors[id].write_u32(g.gpu, data),
            Executor::Cpu(c) => {
                c.bufs[id] = HostBuf::U32(data.to_vec());
                Ok(())
            }
        }
    }

    /// Reads an f32 buffer (on the GPU: a readback, which waits).
    pub fn read_f32(&self, id: BufId) -> Result<Vec<f32>> {
        match self {
            Executor::Gpu(g) => g.tensors[id].read(g.gpu),
            Executor::Cpu(c) => Ok(c.f(id).to_vec()),
        }
    }

    /// Reads a u32 buffer.
    pub fn read_u32(&self, id: BufId) -> Result<Vec<u32>> {
        match self {
            Executor::Gpu(g) => g.tensors[id].read_u32(g.gpu),
            Executor::Cpu(c) => Ok(c.u(id).to_vec()),
        }
    }

    /// Reads the first 4-byte word of each buffer `ids` (scalars such as metric sums), in
    /// one readback on the GPU.
    pub fn read_words(&self, ids: &[BufId]) -> Result<Vec<[u8; 4]>> {
        match self {
            Executor::Gpu(g) => {
                let tensors: Vec<&GpuTensor> = ids.iter().map(|&id| &g.tensors[id]).collect();
                let bytes = start_read_many(g.gpu, &tensors)?.wait(g.gpu)?;
                let mut at = 0;
                Ok(tensors
                    .iter()
                    .map(|t| {
                        let w = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
                        at += t.byte_len() as usize;
                        w
                    })
                    .collect())
            }
            Executor::Cpu(c) => Ok(ids
                .iter()
                .map(|&id| match &c.bufs[id] {
                    HostBuf::F32(v) => v.first().map_or([0; 4], |x| x.to_le_bytes()),
                    HostBuf::U32(v) => v.first().map_or([0; 4], |x| x.to_le_bytes()),
                })
                .collect()),
        }
    }

    /// Runs steps `steps` of `pass` (on the GPU: one submission for all of them).
    pub fn run(&mut self, plan: &Plan, pass: Pass, steps: Range<usize>) -> Result<()> {
        match self {
            Executor::Gpu(g) => g.run(pass, steps),
            Executor::Cpu(c) => {
                for s in steps {
                    for op in ops_of(plan, pass) {
                        c.exec(op, s);
                    }
                }
                Ok(())
            }
        }
    }

    /// Runs training step `step` one kernel at a time, each in its own submission followed by
    /// a wait, and returns each kernel's entry point and wall time in seconds (GPU only). It
    /// is a real step (the weights move); for finding where a step's time goes, not for
    /// training, since it trades the one submission per step for one per kernel.
    pub fn profile_step(&mut self, step: usize) -> Result<Vec<(&'static str, f64)>> {
        match self {
            Executor::Gpu(g) => {
                g.flush_save()?;
                g.gpu.wait()?;
                let mut times = Vec::with_capacity(g.train.len());
                for d in g.train.iter().filter(|d| !d.is_empty()) {
                    let t = std::time::Instant::now();
                    kernels::submit_pass(g.gpu, "profile", |pass| d.record(pass, step as u32))?;
                    g.gpu.wait()?;
                    times.push((d.kernel().entry_point(), t.elapsed().as_secs_f64()));
                }
                Ok(times)
            }
            Executor::Cpu(_) => Err(Error::Config(
                "profiling kernels needs the GPU executor".into(),
            )),
        }
    }

    /// The entry point of the fully fused pass where a training step runs as one
    /// (`kernels::fused_mlp`), `None` where it runs op by op.
    pub fn fused_mlp_form(&self) -> Option<&'static str> {
        match self {
            Executor::Gpu(g) => g.mlp_form,
            Executor::Cpu(_) => None,
        }
    }

    /// Records steps `steps` of `pass` into a compute pass that a host application owns
    /// (GPU only; nothing is submitted).
    pub fn record_into(
        &mut self,
        pass: Pass,
        steps: Range<usize>,
        cpass: &mut wgpu::ComputePass<'_>,
    ) -> Result<()> {
        match self {
            Executor::Gpu(g) => {
                // Copies cannot go into a compute pass: a pending snapshot goes on its own.
                g.flush_save()?;
                let dispatches = match pass {
                    Pass::Train => &g.train,
                    Pass::Eval => &g.eval,
                };
                kernels::record_steps(cpass, dispatches, steps);
                Ok(())
            }
            Executor::Cpu(_) => Err(Error::Config(
                "recording into a compute pass needs the GPU executor".into(),
            )),
        }
    }

    /// Re-sends the parameters of the ops `indices` of `pass` after the plan changed them.
    pub fn refresh(&mut self, plan: &Plan, pass: Pass, indices: &[usize]) -> Result<()> {
        if let Executor::Gpu(g) = self {
            for &i in indices {
                g.refresh(plan, pass, i)?;
            }
        }
        // The CPU executor reads the plan's ops directly.
        Ok(())
    }

    /// Saves the buffers `ids` (on the GPU: device-side copies) for `restore`.
    pub fn save(&mut self, ids: &[BufId]) -> Result<()> {
        match self {
            Executor::Gpu(g) => g.save(ids),
            Executor::Cpu(c) => {
                c.snapshot = ids.iter().map(|&id| (id, c.bufs[id].clone())).collect();
                Ok(())
            }
        }
    }

    /// Puts back what `save` saved.
    pub fn restore(&mut self) -> Result<()> {
        match self {
            Executor::Gpu(g) => g.restore(),
            Executor::Cpu(c) => {
                for (id, b) in c.snapshot.clone() {
                    c.bufs[id] = b;
                }
                Ok(())
            }
        }
    }

    /// The resident tensor behind a buffer, on the GPU path.
    pub fn tensor(&self, id: BufId) -> Option<&GpuTensor> {
        match self {
            Executor::Gpu(g) => g.tensors.get(id),
            Executor::Cpu(_) => None,
        }
    }

    /// The GPU, on the GPU path.
    pub fn gpu(&self) -> Option<&'a Gpu> {
        match self {
            Executor::Gpu(g) => Some(g.gpu),
            Executor::Cpu(_) => None,
        }
    }
}
