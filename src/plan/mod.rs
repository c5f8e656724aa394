//! The plan of a run, independent of where it runs: every resident buffer (name, shape,
//! element type), the parameter tensors and their optimizer state, and one training step and
//! one evaluation batch in stages that keep the network's shape ([`Step`]). The GPU executor
//! builds its dispatches (and decides its fusions) from the stages; the CPU executor runs
//! the stages' ops with the op families' twins. Both run the same ops, which is what makes
//! the two paths comparable op for op. No wgpu here.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::math::Determinism;
use crate::network::{Network, Parameters};
use crate::ops::data::GatherParams;
use crate::ops::loss::Loss;
use crate::ops::optim::Optimizer;
use crate::tensor::DType;

mod build;
mod data;
mod step;

use data::Layout;
pub use data::{check_inputs, pixel_bytes, targets_for, PIXEL_DIVISOR};

use step::gather_entries;
pub use step::{
    entry, ArenaLayout, BackwardStage, DenseStage, Gather, LossStage, Op, Shard, Step, Update,
    UpdateTensor,
};

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
    /// Size of the data in bytes.
    pub fn byte_len(&self) -> u64 {
        self.len() as u64 * self.dtype.size()
    }
}

/// The buffers of one dataset resident for the run.
#[derive(Clone, Debug, PartialEq)]
pub struct DataBufs {
    pub rows: usize,
    /// Features `(rows, width)`: f32, or bytes packed four to a u32 when `x_u8`.
    pub x: BufId,
    /// The features are 8-bit values over 255 (pixels), kept as bytes.
    pub x_u8: bool,
    /// The features stay on the host (too large for one binding): the step gathers no
    /// input rows; before each step the caller gathers the batch on the host with these
    /// per-step parameters (`cpu::gather_rows`) and writes it into `Plan::input`.
    pub streamed: Option<Vec<GatherParams>>,
    /// Class labels `(rows)` u32, for classification data.
    pub labels: Option<BufId>,
    /// Targets as values `(rows, outputs)` f32, when the loss takes values.
    pub values: Option<BufId>,
    /// The row order: the epoch's permutation (training) or 0..rows (evaluation).
    pub indices: BufId,
    /// Sum of row losses, f32 (1); stays 0 in a pass without targets.
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
    /// `None` for a forward-only plan (no targets).
    pub loss: Option<Loss>,
    pub optimizer: Option<Optimizer>,
    /// Rows of the batch buffers: the global batch, or one replica's share of it.
    pub batch: usize,
    /// Which rows of every global batch the steps take (all of them, but in a replica of a
    /// data-parallel run).
    pub shard: Shard,
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
    pub train_step: Step,
    /// One evaluation batch (empty without evaluation data).
    pub eval_step: Step,
    /// The promise the executors keep about the run's bits: under `Strict` both run strict
    /// kernels and soma's own arithmetic (see `exec::strict`).
    pub determinism: Determinism,
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
        let outputs = network.output_width();
        let train = train.map(|d| Layout::of(loss, outputs, d)).transpose()?;
        let eval = eval.map(|d| Layout::of(loss, outputs, d)).transpose()?;
        Ok(Plan::lay_out(
            network,
            Some(loss),
            optimizer,
            train,
            eval,
            batch,
            (0, 1),
        ))
    }

    /// A forward-only plan over `rows` rows of features in batches of `batch`: the input's
    /// gather and every layer's forward pass, no targets, no loss (`Model::predict`,
    /// `Model::forward_layers`).
    pub fn forward(network: &Network, rows: usize, batch: usize) -> Result<Plan> {
        network.validate()?;
        if batch == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        let eval = Layout {
            rows,
            width: network.input_width(),
            bytes: false,
            labels: false,
            values: false,
            classes: false,
        };
        Ok(Plan::lay_out(
            network,
            None,
            None,
            None,
            Some(eval),
            batch,
            (0, 1),
        ))
    }

    /// Every buffer and both steps of a run, or of replica `index` of `count` (`shard`) of a
    /// data-parallel one; the inputs were checked by the caller.
    fn lay_out(
        network: &Network,
        loss: Option<Loss>,
        optimizer: Option<&Optimizer>,
        train: Option<Layout>,
        eval: Option<Layout>,
        batch: usize,
        (index, count): (usize, usize),
    ) -> Plan {
        let largest = train
            .iter()
            .chain(eval.iter())
            .map(|d| d.rows)
            .max()
            .unwrap_or(1);
        let global_batch = batch.min(largest).max(1);
        let shard = Shard {
            index,
            count,
            global_batch,
        };
        let batch = global_batch.div_ceil(count);
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
        let batch_labels = probe
            .is_some_and(|d| d.labels)
            .then(|| b.u32("batch labels", &[batch]));
        let batch_values = probe
            .is_some_and(|d| d.values)
            .then(|| b.f32("batch targets", &[batch, outputs]));
        let row_loss = b.f32("row loss", &[batch]);
        let grad_out = b.f32("loss gradient", &[batch, outputs]);
        let dummy = b.f32("no bias", &[4]);

        let data_bufs = |b: &mut Builder, d: Layout, what: &str| DataBufs {
            rows: d.rows,
            x: if d.bytes {
                b.u32(format!("{what} pixels"), &[(d.rows * d.width).div_ceil(4)])
            } else {
                b.f32(format!("{what} features"), &[d.rows, d.width])
            },
            x_u8: d.bytes,
            streamed: None,
            labels: d.labels.then(|| b.u32(format!("{what} labels"), &[d.rows])),
            values: d
                .values
                .then(|| b.f32(format!("{what} targets"), &[d.rows, outputs])),
            indices: b.u32(format!("{what} order"), &[d.rows]),
            loss_sum: b.f32(format!("{what} loss sum"), &[1]),
            correct: d.classes.then(|| b.u32(format!("{what} correct"), &[1])),
            steps: d.rows.div_ceil(global_batch),
        };
        let train_bufs = train.map(|d| data_bufs(&mut b, d, "train"));
        let eval_bufs = eval.map(|d| data_bufs(&mut b, d, "eval"));

        let mut plan = Plan {
            network: network.clone(),
            loss,
            optimizer: optimizer.copied(),
            batch,
            shard,
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
            train_step: Step::default(),
            eval_step: Step::default(),
            determinism: Determinism::Default,
        };
        if let Some(d) = &plan.train {
            let mut step = plan.forward_step(d);
            step.backward = plan.backward_stages();
            step.update = plan.update();
            plan.train_step = step;
            let lr = plan.optimizer.map_or(0.0, |o| o.lr);
            plan.set_epoch(lr, 0);
        }
        if let Some(d) = &plan.eval {
            plan.eval_step = plan.forward_step(d);
            plan.eval_step.refresh();
        }
        plan
    }

    /// Replica `index` of `count` of this plan in a data-parallel run: the same buffers
    /// (batch-sized ones for its share of each global batch), and steps that take its
    /// share of every global batch of this plan (see [`Shard`]), with this plan's update
    /// entries. A plan whose features are streamed from the host cannot be split.
    pub fn shard(&self, index: usize, count: usize) -> Result<Plan> {
        if count == 0 || index >= count {
            return Err(Error::Config(format!(
                "replica {index} of {count}: no such replica"
            )));
        }
        let width = self.network.input_width();
        let layout = |d: &DataBufs| -> Result<Layout> {
            if d.streamed.is_some() {
                return Err(Error::Config(format!(
                    "{}: a table too large for one binding is streamed from the host, and a streamed table cannot be split across replicas yet; train it on one device",
                    self.buffers[d.x].name
                )));
            }
            Ok(Layout {
                rows: d.rows,
                width,
                bytes: d.x_u8,
                labels: d.labels.is_some(),
                values: d.values.is_some(),
                classes: d.correct.is_some(),
            })
        };
        let train = self.train.as_ref().map(layout).transpose()?;
        let eval = self.eval.as_ref().map(layout).transpose()?;
        let mut plan = Plan::lay_out(
            &self.network,
            self.loss,
            self.optimizer.as_ref(),
            train,
            eval,
            self.shard.global_batch,
            (index, count),
        );
        plan.determinism = self.determinism;
        plan.train_step.update.clone_from(&self.train_step.update);
        plan.train_step.refresh();
        Ok(plan)
    }

    /// Leaves the features of the training (`train`) or evaluation set on the host: the
    /// step's gather of the input rows goes, its parameters kept in `DataBufs::streamed`,
    /// and the feature buffer shrinks to one row. For tables larger than a device binding
    /// allows.
    pub fn stream_features(&mut self, train: bool) {
        let (bufs, step) = if train {
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
        let gathered = step.gather.as_mut().and_then(|g| g.input.take());
        d.streamed = Some(match gathered {
            Some(Op::GatherRows { params, .. } | Op::GatherRowsU8 { params, .. }) => params,
            // Every plan gathers its input rows with one of the two.
            Some(_) | None => {
                gather_entries(d.rows, &self.shard, self.batch, self.network.input_width())
            }
        });
        step.refresh();
        d.x_u8 = false;
        let width = self.network.input_width();
        self.buffers[d.x] = BufSpec {
            name: format!("{} (streamed from the host)", self.buffers[d.x].name),
            shape: vec![1, width],
            dtype: DType::F32,
        };
    }

    /// Sets the update's per-step entries for an epoch at learning rate `lr` whose first
    /// step is global step `first_step` (0-based; Adam's t is `first_step + s + 1`): one
    /// entry per step where the rule's uniform changes within the epoch, else one.
    pub fn set_epoch(&mut self, lr: f32, first_step: u64) {
        let steps = self.train.as_ref().map_or(1, |d| d.steps);
        if let (Some(opt), Some(update)) = (self.optimizer, self.train_step.update.as_mut()) {
            let entries = if update.rule.varies_per_step() {
                steps
            } else {
                1
            };
            update.params = (0..entries)
                .map(|s| opt.step_params(lr, first_step + s as u64 + 1))
                .collect();
        }
        self.train_step.refresh();
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
