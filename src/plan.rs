//! The plan of a training run, independent of where it runs: every resident buffer (name,
//! shape, element type) and the exact sequence of ops of one training step and of one
//! evaluation batch, with their parameters. The GPU executor turns each op into a prebuilt
//! dispatch; the CPU executor calls the twin in `cpu.rs`. Both walk the same list, which is
//! what makes the two paths comparable op for op. No wgpu here.

use crate::data::{Dataset, Targets};
use crate::error::{Error, Result};
use crate::network::{Activation, Network, Parameters};
use crate::ops::activation::ActivationParams;
use crate::ops::data::GatherParams;
use crate::ops::loss::Loss;
use crate::ops::loss::LossParams;
use crate::ops::matmul::{MatmulForm, MatmulParams};
use crate::ops::optim::{OptimParams, Optimizer, UpdateRule};
use crate::ops::reduce::{ReduceParams, RowsParams};
use crate::tensor::DType;

/// Index of a buffer in [`Plan::buffers`].
pub type BufId = usize;

/// A resident buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct BufSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl BufSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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

/// The buffers of one dataset resident for the run.
#[derive(Clone, Debug, PartialEq)]
pub struct DataBufs {
    pub rows: usize,
    /// Features `(rows, width)`: f32, or bytes packed four to a u32 when `x_u8`.
    pub x: BufId,
    /// The features are 8-bit values over 255 (pixels), kept as bytes.
    pub x_u8: bool,
    /// The features stay on the host (too large for one binding): the gather of the input
    /// rows is not an op; before each step the caller gathers the batch on the host with
    /// these per-step parameters (`cpu::gather_rows`) and writes it into `Plan::input`.
    pub streamed: Option<Vec<GatherParams>>,
    /// Class labels `(rows)` u32, for classification data.
    pub labels: Option<BufId>,
    /// Targets as values `(rows, outputs)` f32, when the loss takes values.
    pub values: Option<BufId>,
    /// The row order: the epoch's permutation (training) or 0..rows (evaluation).
    pub indices: BufId,
    /// Sum of row losses, f32 (1).
    pub loss_sum: BufId,
    /// Correct predictions, u32 (1), for classification data.
    pub correct: Option<BufId>,
    /// Batches per pass over the data.
    pub steps: usize,
}

/// The trainable state of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerBufs {
    pub weight: BufId,         // (outputs, inputs)
    pub bias: Option<BufId>,   // (outputs)
    pub d_weight: BufId,       // (outputs, inputs)
    pub d_bias: Option<BufId>, // (outputs)
    /// Optimizer state per parameter tensor, weight first: `[velocity]` or `[m, v]`.
    pub weight_state: Vec<BufId>,
    pub bias_state: Vec<BufId>,
    pub pre: BufId, // (batch, outputs): x·Wᵀ + b
    pub out: BufId, // (batch, outputs): act(pre); reused for dL/dpre in the backward pass
    /// dL/d(out), the input delta coming back from the next layer (training, all but the
    /// last layer): (batch, outputs).
    pub delta: Option<BufId>,
}

/// Everything a run keeps resident, and the op lists that use it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub network: Network,
    pub loss: Loss,
    pub optimizer: Option<Optimizer>,
    pub batch: usize,
    pub buffers: Vec<BufSpec>,
    pub layers: Vec<LayerBufs>,
    /// The batch input `(batch, inputs)`.
    pub input: BufId,
    pub batch_labels: Option<BufId>,
    pub batch_values: Option<BufId>,
    pub row_loss: BufId,
    /// dL/d(prediction) `(batch, outputs)`.
    pub grad_out: BufId,
    /// A one-element placeholder bound where a layer has no bias.
    pub dummy: BufId,
    pub train: Option<DataBufs>,
    pub eval: Option<DataBufs>,
    /// One training step (empty without training data).
    pub train_step: Vec<Op>,
    /// One evaluation batch (empty without evaluation data).
    pub eval_step: Vec<Op>,
}

/// What the targets of a dataset become for a loss on a network with `outputs` outputs:
/// (labels for accuracy, values for the loss).
#[allow(clippy::type_complexity)]
pub fn targets_for(
    loss: Loss,
    outputs: usize,
    data: &Dataset,
) -> Result<(Option<Vec<u32>>, Option<Vec<f32>>)> {
    match (&data.targets, loss) {
        (Targets::Classes { labels, classes }, Loss::SoftmaxCrossEntropy) => {
            if *classes > outputs {
                return Err(Error::Data(format!(
                    "{}: labels go up to {} but the network has {outputs} outputs",
                    data.name,
                    classes - 1
                )));
            }
            Ok((Some(labels.clone()), None))
        }
        (Targets::Classes { labels, classes }, Loss::Mse | Loss::BinaryCrossEntropy) => {
            let values = if outputs == 1 && *classes <= 2 {
                labels.iter().map(|&l| l as f32).collect()
            } else if *classes <= outputs {
                let mut v = vec![0.0; labels.len() * outputs];
                for (r, &l) in labels.iter().enumerate() {
                    v[r * outputs + l as usize] = 1.0;
                }
                v
            } else {
                return Err(Error::Data(format!(
                    "{}: {classes} classes do not fit {outputs} outputs (one-hot for {loss}, or one output for two classes)",
                    data.name
                )));
            };
            Ok((Some(labels.clone()), Some(values)))
        }
        (Targets::Values { .. }, Loss::SoftmaxCrossEntropy) => Err(Error::Config(format!(
            "{}: cross_entropy needs class labels, but the targets are real values (use mse)",
            data.name
        ))),
        (Targets::Values { values, width }, _) => {
            if *width != outputs {
                return Err(Error::Data(format!(
                    "{}: targets are {width} wide but the network has {outputs} outputs",
                    data.name
                )));
            }
            Ok((None, Some(values.clone())))
        }
    }
}

struct Builder {
    buffers: Vec<BufSpec>,
}

impl Builder {
    fn buf(&mut self, name: impl Into<String>, shape: &[usize], dtype: DType) -> BufId {
        self.buffers.push(BufSpec {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
        });
        self.buffers.len() - 1
    }
    fn f32(&mut self, name: impl Into<String>, shape: &[usize]) -> BufId {
        self.buf(name, shape, DType::F32)
    }
    fn u32(&mut self, name: impl Into<String>, shape: &[usize]) -> BufId {
        self.buf(name, shape, DType::U32)
    }
}

/// Checks what a run can be asked to do before anything is allocated.
pub fn check_inputs(network: &Network, loss: Loss, data: &Dataset, batch: usize) -> Result<()> {
    network.validate()?;
    if batch == 0 {
        return Err(Error::Config("batch size must be at least 1".into()));
    }
    if data.is_empty() {
        return Err(Error::Data(format!("{}: the dataset is empty", data.name)));
    }
    if data.width != network.input_width() {
        return Err(Error::Data(format!(
            "{}: samples have {} features but the network takes {}",
            data.name,
            data.width,
            network.input_width()
        )));
    }
    data.validate()?;
    let last = network.layers.last().map(|l| l.activation);
    if matches!(loss, Loss::SoftmaxCrossEntropy | Loss::BinaryCrossEntropy)
        && last != Some(Activation::Identity)
    {
        return Err(Error::Config(format!(
            "{loss} takes logits: the output layer's activation must be identity, not {}",
            last.unwrap_or(Activation::Identity)
        )));
    }
    Ok(())
}

/// The per-step parameters of a pass over `rows` rows in batches of `batch`.
fn gather_entries(rows: usize, batch: usize, cols: usize) -> Vec<GatherParams> {
    (0..rows.div_ceil(batch))
        .map(|s| GatherParams {
            rows: (rows - s * batch).min(batch) as u32,
            cols: cols as u32,
            start: (s * batch) as u32,
            batch_rows: batch as u32,
            divisor: PIXEL_DIVISOR,
            ..Default::default()
        })
        .collect()
}

/// 8-bit features are stored as bytes and divided by this in the gather.
pub const PIXEL_DIVISOR: f32 = 255.0;

/// The features as bytes when every value is exactly `byte / 255` (as the IDX loader makes
/// them), so the byte gather reproduces them bit for bit; `None` otherwise.
pub fn pixel_bytes(features: &[f32]) -> Option<Vec<u8>> {
    features
        .iter()
        .map(|&v| {
            let q = (v * PIXEL_DIVISOR).round();
            (0.0..=255.0)
                .contains(&q)
                .then_some(q as u8)
                .filter(|&b| b as f32 / PIXEL_DIVISOR == v)
        })
        .collect()
}

impl Plan {
    /// Lays out a run of `network` with `loss`; `optimizer` and `train` for training,
    /// `eval` for evaluation (either may be absent). The batch size is clamped to the
    /// largest dataset, so tiny sets do not allocate unused rows.
    pub fn new(
        network: &Network,
        loss: Loss,
        optimizer: Option<&Optimizer>,
        train: Option<&Dataset>,
        eval: Option<&Dataset>,
        batch: usize,
    ) -> Result<Plan> {
        for d in train.iter().chain(eval.iter()) {
            check_inputs(network, loss, d, batch)?;
        }
        if let Some(d) = train {
            if d.targets.classes().is_some_and(|c| c < 2) {
                return Err(Error::Data(format!(
                    "{}: every label is 0; a classifier needs at least two classes",
                    d.name
                )));
            }
        }
        if train.is_some() {
            let opt =
                optimizer.ok_or_else(|| Error::Config("training needs an optimizer".into()))?;
            opt.validate()?;
            if let Some((i, l)) = network
                .layers
                .iter()
                .enumerate()
                .find(|(_, l)| !l.activation.is_differentiable())
            {
                return Err(Error::Config(format!(
                    "layer {i} uses {}, which has no gradient; backprop cannot train it (the perceptron rule can: see examples/perceptron.rs)",
                    l.activation
                )));
            }
        }
        let largest = train
            .iter()
            .chain(eval.iter())
            .map(|d| d.len())
            .max()
            .unwrap_or(1);
        let batch = batch.min(largest).max(1);
        let outputs = network.output_width();
        let mut b = Builder {
            buffers: Vec::new(),
        };

        // Per-layer state.
        let input = b.f32("batch input", &[batch, network.input_width()]);
        let names: &[&str] = optimizer.map_or(&[], |o| o.state_names());
        let mut layers = Vec::new();
        for (i, l) in network.layers.iter().enumerate() {
            let weight = b.f32(format!("layers.{i}.weight"), &[l.outputs, l.inputs]);
            let bias = l
                .bias
                .then(|| b.f32(format!("layers.{i}.bias"), &[l.outputs]));
            let d_weight = b.f32(format!("layers.{i}.weight.grad"), &[l.outputs, l.inputs]);
            let d_bias = l
                .bias
                .then(|| b.f32(format!("layers.{i}.bias.grad"), &[l.outputs]));
            let weight_state = names
                .iter()
                .map(|n| b.f32(format!("layers.{i}.weight.{n}"), &[l.outputs, l.inputs]))
                .collect();
            let bias_state = if l.bias {
                names
                    .iter()
                    .map(|n| b.f32(format!("layers.{i}.bias.{n}"), &[l.outputs]))
                    .collect()
            } else {
                vec![]
            };
            let pre = b.f32(format!("layers.{i}.pre"), &[batch, l.outputs]);
            let out = b.f32(format!("layers.{i}.out"), &[batch, l.outputs]);
            let delta = (train.is_some() && i + 1 < network.layers.len())
                .then(|| b.f32(format!("layers.{i}.delta"), &[batch, l.outputs]));
            layers.push(LayerBufs {
                weight,
                bias,
                d_weight,
                d_bias,
                weight_state,
                bias_state,
                pre,
                out,
                delta,
            });
        }

        // Targets of the batch.
        let probe = train.or(eval);
        let (has_labels, has_values) = match probe {
            Some(d) => {
                let (l, v) = targets_for(loss, outputs, d)?;
                (l.is_some(), v.is_some())
            }
            None => (false, false),
        };
        let batch_labels = has_labels.then(|| b.u32("batch labels", &[batch]));
        let batch_values = has_values.then(|| b.f32("batch targets", &[batch, outputs]));
        let row_loss = b.f32("row loss", &[batch]);
        let grad_out = b.f32("loss gradient", &[batch, outputs]);
        let dummy = b.f32("no bias", &[4]);

        let data_bufs = |b: &mut Builder, d: &Dataset, what: &str| -> Result<DataBufs> {
            let (labels, values) = targets_for(loss, outputs, d)?;
            // Bytes only pay where the table is large; small sets stay f32.
            let x_u8 = d.features.len() >= 1 << 20 && pixel_bytes(&d.features).is_some();
            Ok(DataBufs {
                rows: d.len(),
                x: if x_u8 {
                    b.u32(format!("{what} pixels"), &[d.features.len().div_ceil(4)])
                } else {
                    b.f32(format!("{what} features"), &[d.len(), d.width])
                },
                x_u8,
                streamed: None,
                labels: labels.map(|_| b.u32(format!("{what} labels"), &[d.len()])),
                values: values.map(|_| b.f32(format!("{what} targets"), &[d.len(), outputs])),
                indices: b.u32(format!("{what} order"), &[d.len()]),
                loss_sum: b.f32(format!("{what} loss sum"), &[1]),
                correct: d
                    .targets
                    .classes()
                    .map(|_| b.u32(format!("{what} correct"), &[1])),
                steps: d.len().div_ceil(batch),
            })
        };
        let train_bufs = train.map(|d| data_bufs(&mut b, d, "train")).transpose()?;
        let eval_bufs = eval.map(|d| data_bufs(&mut b, d, "eval")).transpose()?;

        let mut plan = Plan {
            network: network.clone(),
            loss,
            optimizer: optimizer.copied(),
            batch,
            buffers: b.buffers,
            layers,
            input,
            batch_labels,
            batch_values,
            row_loss,
            grad_out,
            dummy,
            train: train_bufs,
            eval: eval_bufs,
            train_step: vec![],
            eval_step: vec![],
        };
        if let Some(d) = plan.train.clone() {
            let mut ops = plan.forward_ops(&d);
            plan.backward_ops(&mut ops);
            plan.train_step = ops;
            plan.set_epoch(0, plan.optimizer.map_or(0.0, |o| o.lr), 0)?;
        }
        if let Some(d) = plan.eval.clone() {
            plan.eval_step = plan.forward_ops(&d);
        }
        Ok(plan)
    }

    /// Leaves the features of the training (`train`) or evaluation set on the host: the op
    /// that gathered the input rows on the device is dropped, its parameters kept in
    /// `DataBufs::streamed`, and the feature buffer shrinks to one row. For tables larger
    /// than a device binding allows.
    pub fn stream_features(&mut self, train: bool) {
        let (bufs, ops) = if train {
            (self.train.as_mut(), &mut self.train_step)
        } else {
            (self.eval.as_mut(), &mut self.eval_step)
        };
        let Some(d) = bufs else {
            return;
        };
        if d.streamed.is_some() {
            return;
        }
        let input = self.input;
        let mut params = None;
        ops.retain(|op| {
            if let Op::GatherRows {
                out,
                data,
                params: p,
                ..
            }
            | Op::GatherRowsU8 {
                out,
                data,
                params: p,
                ..
            } = op
            {
                if *out == input && *data == d.x {
                    params = Some(p.clone());
                    return false;
                }
            }
            true
        });
        d.streamed = params;
        d.x_u8 = false;
        let width = self.network.input_width();
        self.buffers[d.x] = BufSpec {
            name: format!("{} (streamed from the host)", self.buffers[d.x].name),
            shape: vec![1, width],
            dtype: DType::F32,
        };
    }

    /// Gather, forward, loss and metrics for batches drawn from `d`.
    fn forward_ops(&self, d: &DataBufs) -> Vec<Op> {
        let batch = self.batch;
        let outputs = self.network.output_width();
        let params = gather_entries(d.rows, batch, self.network.input_width());
        let mut ops = vec![if d.x_u8 {
            Op::GatherRowsU8 {
                out: self.input,
                data: d.x,
                indices: d.indices,
                params,
            }
        } else {
            Op::GatherRows {
                out: self.input,
                data: d.x,
                indices: d.indices,
                params,
            }
        }];
        if let (Some(out), Some(labels)) = (self.batch_labels, d.labels) {
            ops.push(Op::GatherLabels {
                out,
                labels,
                indices: d.indices,
                params: gather_entries(d.rows, batch, 1),
            });
        }
        if let (Some(out), Some(data)) = (self.batch_values, d.values) {
            ops.push(Op::GatherRows {
                out,
                data,
                indices: d.indices,
                params: gather_entries(d.rows, batch, outputs),
            });
        }
        let mut x = self.input;
        for (l, bufs) in self.network.layers.iter().zip(&self.layers) {
            ops.push(Op::MatmulNt {
                out: bufs.pre,
                a: x,
                b: bufs.weight,
                params: MatmulParams {
                    m: batch as u32,
                    n: l.outputs as u32,
                    k: l.inputs as u32,
                    accumulate: 0,
                },
            });
            ops.push(Op::BiasActivationForward {
                out: bufs.out,
                pre: bufs.pre,
                bias: bufs.bias,
                params: ActivationParams {
                    rows: batch as u32,
                    cols: l.outputs as u32,
                    kind: l.activation.code(),
                    has_bias: l.bias as u32,
                    slope: l.activation.slope(),
                    ..Default::default()
                },
            });
            x = bufs.out;
        }
        let live: Vec<usize> = gather_entries(d.rows, batch, 1)
            .iter()
            .map(|g| g.rows as usize)
            .collect();
        let target = if self.loss.takes_labels() {
            self.batch_labels
        } else {
            self.batch_values
        };
        if let Some(target) = target {
            ops.push(Op::Loss {
                kind: self.loss,
                grad: self.grad_out,
                row_loss: self.row_loss,
                pred: x,
                target,
                params: live
                    .iter()
                    .map(|&r| self.loss.params(r, outputs, batch))
                    .collect(),
            });
            ops.push(Op::ReduceSum {
                out: d.loss_sum,
                x: self.row_loss,
                params: ReduceParams {
                    len: batch as u32,
                    accumulate: 1,
                    ..Default::default()
                },
            });
        }
        if let (Some(count), Some(labels)) = (d.correct, self.batch_labels) {
            // A single output predicts class 1 at logit >= 0 (bce) or value >= 0.5 (mse).
            let threshold = if self.loss == Loss::Mse { 0.5 } else { 0.0 };
            ops.push(Op::CorrectCount {
                count,
                x,
                labels,
                params: live
                    .iter()
                    .map(|&r| RowsParams {
                        rows: r as u32,
                        cols: outputs as u32,
                        threshold,
                        ..Default::default()
                    })
                    .collect(),
            });
        }
        ops
    }

    /// Backward pass and optimizer updates, appended to `ops`.
    ///
    /// Per layer, last first: dL/dpre = dL/dout * act'(pre) (skipped for identity), written
    /// over `out`, which nothing reads any more once the loss and the next layer's weight
    /// gradient have; dW = dpreᵀ · x; db = column sums of dpre; dL/dx = dpre · W into the
    /// previous layer's `delta`.
    fn backward_ops(&self, ops: &mut Vec<Op>) {
        let batch = self.batch as u32;
        let n = self.network.layers.len();
        let mut delta = self.grad_out;
        for i in (0..n).rev() {
            let l = self.network.layers[i];
            let bufs = &self.layers[i];
            if l.activation != Activation::Identity {
                ops.push(Op::ActivationBackward {
                    dpre: bufs.out,
                    dout: delta,
                    pre: bufs.pre,
                    params: ActivationParams {
                        rows: batch,
                        cols: l.outputs as u32,
                        kind: l.activation.code(),
                        slope: l.activation.slope(),
                        ..Default::default()
                    },
                });
                delta = bufs.out;
            }
            let x = if i == 0 {
                self.input
            } else {
                self.layers[i - 1].out
            };
            ops.push(Op::MatmulTn {
                out: bufs.d_weight,
                a: delta,
                b: x,
                params: MatmulParams {
                    m: l.outputs as u32,
                    n: l.inputs as u32,
                    k: batch,
                    accumulate: 0,
                },
            });
            if let Some(db) = bufs.d_bias {
                ops.push(Op::ColumnSum {
                    out: db,
                    x: delta,
                    params: RowsParams {
                        rows: batch,
                        cols: l.outputs as u32,
                        ..Default::default()
                    },
                });
            }
            if let Some(dx) = self.layers.get(i.wrapping_sub(1)).and_then(|p| p.delta) {
                ops.push(Op::MatmulNn {
                    out: dx,
                    a: delta,
                    b: bufs.weight,
                    params: MatmulParams {
                        m: batch,
                        n: l.inputs as u32,
                        k: l.outputs as u32,
                        accumulate: 0,
                    },
                });
                delta = dx;
            }
        }
        // Updates (parameters are read by the backward pass above, so they come last).
        for bufs in &self.layers {
            ops.push(self.update_op(bufs.weight, bufs.d_weight, &bufs.weight_state));
            if let (Some(bias), Some(db)) = (bufs.bias, bufs.d_bias) {
                ops.push(self.update_op(bias, db, &bufs.bias_state));
            }
        }
    }

    fn update_op(&self, param: BufId, grad: BufId, state: &[BufId]) -> Op {
        let rule = self.optimizer.map_or(UpdateRule::Sgd, |o| o.kind);
        Op::Update {
            rule,
            param,
            state: state.to_vec(),
            grad,
            params: vec![],
        }
    }

    /// Rewrites the optimizer ops' per-step entries for an epoch at learning rate `lr` whose
    /// first step is global step `first_step` (0-based; Adam's t is `first_step + s + 1`).
    /// Returns the indices of the ops that changed.
    pub fn set_epoch(&mut self, _epoch: usize, lr: f32, first_step: u64) -> Result<Vec<usize>> {
        let Some(opt) = self.optimizer else {
            return Ok(vec![]);
        };
        let steps = self.train.as_ref().map_or(1, |d| d.steps);
        let lens: Vec<usize> = self.buffers.iter().map(|b| b.len()).collect();
        let mut changed = Vec::new();
        for (i, op) in self.train_step.iter_mut().enumerate() {
            if let Op::Update {
                rule,
                param,
                params,
                ..
            } = op
            {
                let len = lens[*param] as u32;
                // One entry per step where the uniform changes within the epoch, else one.
                let entries = if rule.varies_per_step() { steps } else { 1 };
                *params = (0..entries)
                    .map(|s| OptimParams {
                        len,
                        ..opt.step_params(lr, first_step + s as u64 + 1)
                    })
                    .collect();
                changed.push(i);
            }
        }
        Ok(changed)
    }

    /// The parameter buffers with their host values, in `Parameters` order.
    pub fn parameter_buffers(&self) -> Vec<BufId> {
        let mut ids = Vec::new();
        for l in &self.layers {
            ids.push(l.weight);
            ids.extend(l.bias);
        }
        ids
    }

    /// Every buffer that holds state carried from step to step (parameters and optimizer
    /// state), for snapshots.
    pub fn state_buffers(&self) -> Vec<BufId> {
        let mut ids = Vec::new();
        for l in &self.layers {
            ids.push(l.weight);
            ids.extend(l.bias);
            ids.extend(&l.weight_state);
            ids.extend(&l.bias_state);
        }
        ids
    }

    /// Host values for the parameter buffers, checked against the network.
    pub fn parameter_values<'p>(&self, params: &'p Parameters) -> Result<Vec<(BufId, &'p [f32])>> {
        params.check(&self.network, "parameters")?;
        let mut out = Vec::new();
        for (l, p) in self.layers.iter().zip(&params.layers) {
            out.push((l.weight, &p.weight[..]));
            if let (Some(id), Some(b)) = (l.bias, &p.bias) {
                out.push((id, &b[..]));
            }
        }
        Ok(out)
    }
}
