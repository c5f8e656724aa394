//! Looking inside a forward pass: [`Model::forward_layers`] runs the model's forward-only
//! run (the same plan and kernels as `Model::predict`, on the GPU or the CPU) and reads back
//! every layer's pre-activation `net = x·Wᵀ + b` and output `act(net)`, which is what the
//! lecture writes out by hand for its XOR network. It is for teaching and debugging small
//! batches; training never reads these buffers.

use crate::error::Result;
use crate::exec::Device;
use crate::model::Model;

/// One layer's values for every input row, row-major `(rows, outputs)`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerOutput {
    /// net = x·Wᵀ + b, before the activation.
    pub pre: Vec<f32>,
    /// act(net): what the next layer receives (the network's output for the last layer).
    pub out: Vec<f32>,
}

impl Model {
    /// Every layer's pre-activation and output for `rows` samples of `x` (row-major,
    /// `rows x inputs`), first layer first, computed on `device` by the evaluation step.
    pub fn forward_layers(
        &self,
        device: Device<'_>,
        x: &[f32],
        rows: usize,
    ) -> Result<Vec<LayerOutput>> {
        let mut layers: Vec<LayerOutput> = self
            .network
            .layers
            .iter()
            .map(|l| LayerOutput {
                pre: Vec::with_capacity(rows * l.outputs),
                out: Vec::with_capacity(rows * l.outputs),
            })
            .collect();
        let Some(mut run) = self.forward_run(device, x, rows)? else {
            return Ok(layers);
        };
        for s in 0..run.bufs(crate::exec::Pass::Eval)?.steps {
            let live = run.eval_batch(s)?;
            for ((bufs, l), dst) in run
                .plan
                .layers
                .iter()
                .zip(&self.network.layers)
                .zip(&mut layers)
            {
                let n = live * l.outputs;
                dst.pre
                    .extend_from_slice(&run.exec.read_f32(bufs.pre)?[..n]);
                dst.out
                    .extend_from_slice(&run.exec.read_f32(bufs.out)?[..n]);
            }
        }
        Ok(layers)
    }
}
