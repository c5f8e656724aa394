//! One pass of a plan (a training step, or an evaluation batch) in stages that keep the
//! network's shape: the gathers of the batch, one dense stage per layer, the loss, one
//! backward stage per layer (last first) and the optimizer update of every parameter tensor.
//! The executors read the stages: the CPU executor runs their ops in order
//! ([`Step::ops`]); the GPU executor decides its fusions from the stages' properties (a
//! layer's product and activation, a delta and the activation derivative below it, the
//! update of every tensor, the whole step as one fused pass) rather than from positions in
//! an op list. No wgpu here.

use crate::ops::activation::{Activation, ActivationParams};
use crate::ops::data::GatherParams;
use crate::ops::matmul::{MatmulForm, MatmulParams};
use crate::ops::optim::{OptimParams, UpdateRule};
use crate::ops::reduce::{ReduceParams, RowsParams};
use crate::ops::Loss;

use super::BufId;
use crate::ops::loss::LossParams;

/// One kernel launch. Ops whose parameters change from step to step (the gather's start,
/// the live rows of a partial last batch, Adam's bias corrections, the scheduled learning
/// rate) hold one entry per step of the epoch; step `s` uses entry `min(s, len - 1)`.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    GatherRows {
        out: BufId,
        data: BufId,
        indices: BufId,
        params: Vec<GatherParams>,
    },
    GatherRowsU8 {
        out: BufId,
        data: BufId,
        indices: BufId,
        params: Vec<GatherParams>,
    },
    GatherLabels {
        out: BufId,
        labels: BufId,
        indices: BufId,
        params: Vec<GatherParams>,
    },
    MatmulNt {
        out: BufId,
        a: BufId,
        b: BufId,
        params: MatmulParams,
    },
    MatmulNn {
        out: BufId,
        a: BufId,
        b: BufId,
        params: MatmulParams,
    },
    MatmulTn {
        out: BufId,
        a: BufId,
        b: BufId,
        params: MatmulParams,
    },
    BiasActivationForward {
        out: BufId,
        pre: BufId,
        bias: Option<BufId>,
        params: ActivationParams,
    },
    ActivationBackward {
        dpre: BufId,
        dout: BufId,
        pre: BufId,
        params: ActivationParams,
    },
    ColumnSum {
        out: BufId,
        x: BufId,
        params: RowsParams,
    },
    Loss {
        kind: Loss,
        grad: BufId,
        row_loss: BufId,
        pred: BufId,
        target: BufId,
        params: Vec<LossParams>,
    },
    ReduceSum {
        out: BufId,
        x: BufId,
        params: ReduceParams,
    },
    CorrectCount {
        count: BufId,
        x: BufId,
        labels: BufId,
        params: Vec<RowsParams>,
    },
    /// One optimizer step of one parameter tensor: `state` in the rule's
    /// `state_names` order.
    Update {
        rule: UpdateRule,
        param: BufId,
        state: Vec<BufId>,
        grad: BufId,
        params: Vec<OptimParams>,
    },
}

impl Op {
    /// The form and sizes of a matrix product op; `None` for every other op.
    pub fn matmul(&self) -> Option<(MatmulForm, &MatmulParams)> {
        match self {
            Op::MatmulNt { params, .. } => Some((MatmulForm::Nt, params)),
            Op::MatmulNn { params, .. } => Some((MatmulForm::Nn, params)),
            Op::MatmulTn { params, .. } => Some((MatmulForm::Tn, params)),
            Op::GatherRows { .. }
            | Op::GatherRowsU8 { .. }
            | Op::GatherLabels { .. }
            | Op::BiasActivationForward { .. }
            | Op::ActivationBackward { .. }
            | Op::ColumnSum { .. }
            | Op::Loss { .. }
            | Op::ReduceSum { .. }
            | Op::CorrectCount { .. }
            | Op::Update { .. } => None,
        }
    }
}

/// Picks the entry of step `step` from a per-step list.
pub fn entry<P: Copy>(params: &[P], step: usize) -> P {
    params[step.min(params.len() - 1)]
}

/// The gathers of a batch through the pass's row order.
#[derive(Clone, Debug, PartialEq)]
pub struct Gather {
    /// The input rows (`GatherRows`, or `GatherRowsU8` for pixel bytes); `None` where the
    /// features stay on the host and each batch is written by the caller.
    pub input: Option<Op>,
    /// The batch's class labels, for the loss or the accuracy.
    pub labels: Option<Op>,
    /// The batch's target values (`GatherRows`), for a loss over values.
    pub values: Option<Op>,
}

/// One dense layer's forward pass: `pre = x · weightᵀ`, then `pre += bias` and
/// `out = act(pre)`.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseStage {
    pub layer: usize,
    pub x: BufId,            // (batch, inputs)
    pub weight: BufId,       // (outputs, inputs)
    pub bias: Option<BufId>, // (outputs)
    pub pre: BufId,          // (batch, outputs)
    pub out: BufId,          // (batch, outputs)
    pub activation: Activation,
    pub batch: usize,
    pub inputs: usize,
    pub outputs: usize,
}

impl DenseStage {
    /// `pre = x · weightᵀ`.
    pub fn product(&self) -> Op {
        Op::MatmulNt {
            out: self.pre,
            a: self.x,
            b: self.weight,
            params: MatmulParams {
                m: self.batch as u32,
                n: self.outputs as u32,
                k: self.inputs as u32,
                accumulate: 0,
            },
        }
    }

    /// `pre += bias`, `out = act(pre)`.
    pub fn bias_activation(&self) -> Op {
        Op::BiasActivationForward {
            out: self.out,
            pre: self.pre,
            bias: self.bias,
            params: ActivationParams {
                rows: self.batch as u32,
                cols: self.outputs as u32,
                kind: self.activation.code(),
                has_bias: self.bias.is_some() as u32,
                slope: self.activation.slope(),
                ..Default::default()
            },
        }
    }
}

/// The loss of the batch with its gradient, and its sum into the pass's loss total.
#[derive(Clone, Debug, PartialEq)]
pub struct LossStage {
    /// `Op::Loss`: the gradient dL/d(prediction) and each row's loss.
    pub loss: Op,
    /// `Op::ReduceSum` of the row losses into the pass's total.
    pub sum: Op,
}

/// One layer's backward pass: dL/dpre = dL/dout * act'(pre) (none for identity, where
/// dpre is dout itself), written over the layer's `out`, which nothing reads any more once
/// the loss and the next layer's weight gradient have; dW = dpreᵀ · x; db = column sums of
/// dpre; and the input delta dL/dx = dpre · W into the previous layer's `delta`.
#[derive(Clone, Debug, PartialEq)]
pub struct BackwardStage {
    pub layer: usize,
    /// dL/d(out): the loss gradient, or the input delta the next layer wrote.
    pub dout: BufId, // (batch, outputs)
    /// Where dL/dpre is: `dout` for identity, else the layer's `out` buffer.
    pub dpre: BufId, // (batch, outputs)
    pub pre: BufId, // (batch, outputs)
    pub activation: Activation,
    pub x: BufId,                   // (batch, inputs): the layer's input
    pub weight: BufId,              // (outputs, inputs)
    pub d_weight: BufId,            // (outputs, inputs)
    pub d_bias: Option<BufId>,      // (outputs)
    pub input_delta: Option<BufId>, // (batch, inputs): absent for the first layer
    pub batch: usize,
    pub inputs: usize,
    pub outputs: usize,
}

impl BackwardStage {
    /// `dpre = dout * act'(pre)`; `None` for identity.
    pub fn activation_backward(&self) -> Option<Op> {
        (self.activation != Activation::Identity).then(|| Op::ActivationBackward {
            dpre: self.dpre,
            dout: self.dout,
            pre: self.pre,
            params: ActivationParams {
                rows: self.batch as u32,
                cols: self.outputs as u32,
                kind: self.activation.code(),
                slope: self.activation.slope(),
                ..Default::default()
            },
        })
    }

    /// `d_weight = dpreᵀ · x`.
    pub fn weight_grad(&self) -> Op {
        Op::MatmulTn {
            out: self.d_weight,
            a: self.dpre,
            b: self.x,
            params: MatmulParams {
                m: self.outputs as u32,
                n: self.inputs as u32,
                k: self.batch as u32,
                accumulate: 0,
            },
        }
    }

    /// `d_bias = column sums of dpre`.
    pub fn bias_grad(&self) -> Option<Op> {
        self.d_bias.map(|out| Op::ColumnSum {
            out,
            x: self.dpre,
            params: RowsParams {
                rows: self.batch as u32,
                cols: self.outputs as u32,
                ..Default::default()
            },
        })
    }

    /// `input_delta = dpre · weight`.
    pub fn input_delta(&self) -> Option<Op> {
        self.input_delta.map(|out| Op::MatmulNn {
            out,
            a: self.dpre,
            b: self.weight,
            params: MatmulParams {
                m: self.batch as u32,
                n: self.inputs as u32,
                k: self.outputs as u32,
                accumulate: 0,
            },
        })
    }
}

/// One parameter tensor an update changes.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateTensor {
    pub param: BufId,
    pub grad: BufId,
    /// The rule's state tensors, in its `state_names` order.
    pub state: Vec<BufId>,
    /// Elements of the tensor.
    pub len: u32,
}

/// The optimizer step of every parameter tensor, weights and biases in layer order; it
/// comes last, since the backward pass reads the parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub rule: UpdateRule,
    pub tensors: Vec<UpdateTensor>,
    /// The uniform per step of the epoch (one entry where the rule's does not vary), with
    /// `len` 0: each dispatch sets it to the elements it updates.
    pub params: Vec<OptimParams>,
}

/// Where the update's tensors sit when every parameter, every gradient and each state
/// tensor shares one buffer (an arena per role, one layout for all): slot `i` belongs to
/// tensor `i`, starts at `offsets[i]` bytes and holds `sizes[i]` bytes (the tensor padded
/// with zeros to the device's storage offset alignment, at least 16 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaLayout {
    pub offsets: Vec<u64>,
    pub sizes: Vec<u64>,
    /// The arena's size in bytes.
    pub bytes: u64,
}

impl Update {
    /// The arena layout for a device whose storage bindings start at multiples of
    /// `align` bytes (`min_storage_buffer_offset_alignment`).
    pub fn arena_layout(&self, align: u64) -> ArenaLayout {
        let align = align.max(16);
        let sizes: Vec<u64> = self
            .tensors
            .iter()
            .map(|t| (t.len as u64 * 4).max(16).next_multiple_of(align))
            .collect();
        let mut offsets = Vec::with_capacity(sizes.len());
        let mut at = 0;
        for s in &sizes {
            offsets.push(at);
            at += s;
        }
        ArenaLayout {
            offsets,
            sizes,
            bytes: at,
        }
    }

    /// The entries for `len` elements.
    pub fn params_for(&self, len: u32) -> Vec<OptimParams> {
        self.params
            .iter()
            .map(|p| OptimParams { len, ..*p })
            .collect()
    }

    /// One `Op::Update` per tensor.
    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.tensors.iter().map(|t| Op::Update {
            rule: self.rule,
            param: t.param,
            state: t.state.clone(),
            grad: t.grad,
            params: self.params_for(t.len),
        })
    }
}

/// One pass in stages (see the module's doc).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    pub gather: Option<Gather>,
    pub layers: Vec<DenseStage>,
    /// Absent where the pass has no targets (a forward-only plan).
    pub loss: Option<LossStage>,
    /// `Op::CorrectCount`, for classification data.
    pub correct: Option<Op>,
    /// Last layer first (training only).
    pub backward: Vec<BackwardStage>,
    /// Training only.
    pub update: Option<Update>,
    /// The stages' ops in order, kept in step with the stages by `Step::refresh`.
    pub(super) ops: Vec<Op>,
}

impl Step {
    /// The step's ops, one kernel each, in the order they run: gathers; each layer's
    /// product and activation; loss, loss sum and correct count; each backward stage's
    /// activation derivative, weight gradient, bias gradient and input delta; the updates.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Where each backward stage's parameter gradients are complete in the op list (the
    /// index after its bias gradient, last layer first), and where the update starts: the
    /// points a data-parallel step can hand gradients over while the rest of its backward
    /// pass runs.
    pub fn grad_ends(&self) -> (Vec<usize>, usize) {
        let mut at = self.ops.len() - self.update.as_ref().map_or(0, |u| u.tensors.len());
        let first_update = at;
        let mut ends = Vec::with_capacity(self.backward.len());
        for b in self.backward.iter().rev() {
            at -= b.input_delta().is_some() as usize;
            ends.push(at);
            at -= 1 + b.bias_grad().is_some() as usize + b.activation_backward().is_some() as usize;
        }
        ends.reverse();
        (ends, first_update)
    }

    /// Rebuilds the op list from the stages (after a stage changed).
    pub fn refresh(&mut self) {
        let mut ops = Vec::new();
        if let Some(g) = &self.gather {
            ops.extend(g.input.iter().chain(&g.labels).chain(&g.values).cloned());
        }
        for l in &self.layers {
            ops.push(l.product());
            ops.push(l.bias_activation());
        }
        if let Some(l) = &self.loss {
            ops.push(l.loss.clone());
            ops.push(l.sum.clone());
        }
        ops.extend(self.correct.clone());
        for b in &self.backward {
            ops.extend(b.activation_backward());
            ops.push(b.weight_grad());
            ops.extend(b.bias_grad());
            ops.extend(b.input_delta());
        }
        if let Some(u) = &self.update {
            ops.extend(u.ops());
        }
        self.ops = ops;
    }
}

/// The per-step parameters of a pass over `rows` rows in global batches of
/// `shard.global_batch`, taking `shard`'s part of each into a buffer of `batch` rows.
pub(super) fn gather_entries(
    rows: usize,
    shard: &Shard,
    batch: usize,
    cols: usize,
) -> Vec<GatherParams> {
    (0..rows.div_ceil(shard.global_batch))
        .map(|s| {
            let (start, live) = shard.rows_of(rows, s, batch);
            GatherParams {
                rows: live as u32,
                cols: cols as u32,
                start: start as u32,
                batch_rows: batch as u32,
                divisor: super::PIXEL_DIVISOR,
                ..Default::default()
            }
        })
        .collect()
}

/// The loss's per-step parameters for `live` rows per step of a shard whose global
/// batches have `global` live rows.
pub(super) fn loss_params(
    loss: Loss,
    live: &[usize],
    global: &[usize],
    outputs: usize,
    batch: usize,
) -> Vec<LossParams> {
    live.iter()
        .zip(global)
        .map(|(&r, &g)| loss.params_of_share(r, outputs, batch, g))
        .collect()
}

/// Which rows of every global batch a plan's steps take: all of them, or one replica's
/// fixed share in a data-parallel run. Replica `index` of `count` takes rows
/// `index * b .. (index + 1) * b` of each global batch (clipped to its live rows), where
/// `b` is the plan's batch, `global_batch.div_ceil(count)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
    /// Rows in a global batch.
    pub global_batch: usize,
}

impl Shard {
    /// The whole of every batch of `batch` rows.
    pub fn whole(batch: usize) -> Shard {
        Shard {
            index: 0,
            count: 1,
            global_batch: batch,
        }
    }

    /// Where this shard's rows of global step `step` start in the pass's row order, and
    /// how many are live, for shards of `batch` rows over `rows` rows.
    pub fn rows_of(&self, rows: usize, step: usize, batch: usize) -> (usize, usize) {
        let first = step * self.global_batch;
        let live = rows.saturating_sub(first).min(self.global_batch);
        let lo = (self.index * batch).min(live);
        let hi = (lo + batch).min(live);
        (first + lo, hi - lo)
    }

    /// Live rows of every global step over `rows` rows.
    pub fn global_rows(&self, rows: usize) -> Vec<usize> {
        (0..rows.div_ceil(self.global_batch))
            .map(|s| (rows - s * self.global_batch).min(self.global_batch))
            .collect()
    }
}

/// The correct count's per-step parameters.
pub(super) fn correct_params(live: &[usize], outputs: usize, threshold: f32) -> Vec<RowsParams> {
    live.iter()
        .map(|&r| RowsParams {
            rows: r as u32,
            cols: outputs as u32,
            threshold,
            ..Default::default()
        })
        .collect()
}

/// The loss sum's parameters: every row of the batch (the dead rows' losses are zeros).
pub(super) fn sum_params(batch: usize) -> ReduceParams {
    ReduceParams {
        len: batch as u32,
        accumulate: 1,
        ..Default::default()
    }
}
