//! How a plan builds its steps from its buffers: the gathers, dense stages, loss and
//! metrics of a pass, the backward stages and the update of a training step.

use crate::network::Activation;
use crate::ops::loss::Loss;

use super::step::{correct_params, gather_entries, loss_params, sum_params};
use super::{
    BackwardStage, BufId, DataBufs, DenseStage, Gather, LossStage, Op, Plan, Step, Update,
    UpdateTensor,
};

impl Plan {
    /// Gathers, the forward pass, loss and metrics for batches drawn from `d` (the op
    /// list is built by the caller once the step is complete).
    pub(super) fn forward_step(&self, d: &DataBufs) -> Step {
        let batch = self.batch;
        let outputs = self.network.output_width();
        let shard = &self.shard;
        let params = gather_entries(d.rows, shard, batch, self.network.input_width());
        let input = if d.x_u8 {
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
        };
        let gather = Gather {
            input: Some(input),
            labels: self
                .batch_labels
                .zip(d.labels)
                .map(|(out, labels)| Op::GatherLabels {
                    out,
                    labels,
                    indices: d.indices,
                    params: gather_entries(d.rows, shard, batch, 1),
                }),
            values: self
                .batch_values
                .zip(d.values)
                .map(|(out, data)| Op::GatherRows {
                    out,
                    data,
                    indices: d.indices,
                    params: gather_entries(d.rows, shard, batch, outputs),
                }),
        };
        let mut x = self.input;
        let mut layers = Vec::new();
        for (i, (l, bufs)) in self.network.layers.iter().zip(&self.layers).enumerate() {
            layers.push(DenseStage {
                layer: i,
                x,
                weight: bufs.weight,
                bias: bufs.bias,
                pre: bufs.pre,
                out: bufs.out,
                activation: l.activation,
                batch,
                inputs: l.inputs,
                outputs: l.outputs,
            });
            x = bufs.out;
        }
        let live: Vec<usize> = gather_entries(d.rows, shard, batch, 1)
            .iter()
            .map(|g| g.rows as usize)
            .collect();
        let global = shard.global_rows(d.rows);
        let loss = self.loss.and_then(|kind| {
            let target = if kind.takes_labels() {
                self.batch_labels
            } else {
                self.batch_values
            }?;
            Some(LossStage {
                loss: Op::Loss {
                    kind,
                    grad: self.grad_out,
                    row_loss: self.row_loss,
                    pred: x,
                    target,
                    params: loss_params(kind, &live, &global, outputs, batch),
                },
                sum: Op::ReduceSum {
                    out: d.loss_sum,
                    x: self.row_loss,
                    params: sum_params(batch),
                },
            })
        });
        // A single output predicts class 1 at logit >= 0 (bce) or value >= 0.5 (mse).
        let threshold = if self.loss == Some(Loss::Mse) {
            0.5
        } else {
            0.0
        };
        let correct = d
            .correct
            .zip(self.batch_labels)
            .map(|(count, labels)| Op::CorrectCount {
                count,
                x,
                labels,
                params: correct_params(&live, outputs, threshold),
            });
        Step {
            gather: Some(gather),
            layers,
            loss,
            correct,
            ..Step::default()
        }
    }

    /// The backward pass, last layer first (see [`BackwardStage`]).
    pub(super) fn backward_stages(&self) -> Vec<BackwardStage> {
        let n = self.network.layers.len();
        let mut dout = self.grad_out;
        let mut stages = Vec::with_capacity(n);
        for i in (0..n).rev() {
            let l = self.network.layers[i];
            let bufs = &self.layers[i];
            let dpre = if l.activation == Activation::Identity {
                dout
            } else {
                bufs.out
            };
            let input_delta = self.layers.get(i.wrapping_sub(1)).and_then(|p| p.delta);
            stages.push(BackwardStage {
                layer: i,
                dout,
                dpre,
                pre: bufs.pre,
                activation: l.activation,
                x: if i == 0 {
                    self.input
                } else {
                    self.layers[i - 1].out
                },
                weight: bufs.weight,
                d_weight: bufs.d_weight,
                d_bias: bufs.d_bias,
                input_delta,
                batch: self.batch,
                inputs: l.inputs,
                outputs: l.outputs,
            });
            if let Some(dx) = input_delta {
                dout = dx;
            }
        }
        stages
    }

    /// The update of every parameter tensor, weight then bias per layer (its per-step
    /// entries come from `set_epoch`).
    pub(super) fn update(&self) -> Option<Update> {
        let opt = self.optimizer?;
        let len = |id: BufId| self.buffers[id].len() as u32;
        let mut tensors = Vec::new();
        for l in &self.layers {
            tensors.push(UpdateTensor {
                param: l.weight,
                grad: l.d_weight,
                state: l.weight_state.clone(),
                len: len(l.weight),
            });
            if let (Some(param), Some(grad)) = (l.bias, l.d_bias) {
                tensors.push(UpdateTensor {
                    param,
                    grad,
                    state: l.bias_state.clone(),
                    len: len(param),
                });
            }
        }
        Some(Update {
            rule: opt.kind,
            tensors,
            params: vec![],
        })
    }
}
