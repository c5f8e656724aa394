//! The twin of the fused pass: the op-by-op twins' arithmetic per row, with the weight
//! gradients summed per tile and then over tiles, as the kernel groups them.

use crate::math::Math;

use super::{FusedMlpParams, MlpShape};
use crate::ops::activation::cpu::{apply, derivative_of, sigmoid};
use crate::ops::activation::Activation;
use crate::ops::Loss;

/// What the fused pass's twin trains towards: value targets (batch x outputs, for MSE and
/// binary cross-entropy) or class labels (one per row, for softmax cross-entropy).
#[derive(Clone, Copy, Debug)]
pub enum MlpTargets<'a> {
    Values(&'a [f32]),
    Labels(&'a [u32]),
}

/// The twin of the fused training pass: per tile of `shape.tile_rows()` rows, each row's forward
/// pass, loss gradient (MSE, binary cross-entropy or softmax cross-entropy) and backward
/// pass (the op-by-op twins' arithmetic, in their order),
/// and the tile's weight and bias gradient sums into its row of `partial` (tiles, arena
/// length), laid out like the parameter arena `w`. Rows past `p.batch_rows` count as zeros;
/// rows past `p.rows` get a zero gradient and loss. `x` and `target` are the gathered batch
/// (for the kernel's gathering forms, what `gather_rows` makes of the tables); the target's
/// kind must be the one `shape.loss` takes (the other gives NaN gradients and losses).
#[allow(clippy::too_many_arguments)]
pub fn fused_mlp(
    partial: &mut [f32],
    pred: &mut [f32],
    row_loss: &mut [f32],
    x: &[f32],
    target: MlpTargets<'_>,
    w: &[f32],
    shape: &MlpShape,
    p: &FusedMlpParams,
) {
    let layers = shape.layers();
    // Each layer's activation, decoded once (an unknown code gives NaN, as in the op twins).
    let kinds: Vec<Option<Activation>> = layers
        .iter()
        .map(|l| Activation::decode(l.kind, l.slope).ok())
        .collect();
    let t = shape.tile_rows() as usize;
    let (n_in, n_out, alen) = (shape.inputs(), shape.outputs(), shape.arena_len as usize);
    let batch = p.batch_rows as usize;
    let live_rows = p.rows as usize;
    let tiles = batch.div_ceil(t);
    for tile in 0..tiles {
        // Per row of the tile: every layer's input (then the output) and pre-activation.
        let mut acts: Vec<Vec<Vec<f32>>> = vec![];
        let mut pres: Vec<Vec<Vec<f32>>> = vec![];
        let mut deltas: Vec<Vec<f32>> = vec![];
        for s in 0..t {
            let row = tile * t + s;
            let r = if row < batch { row } else { 0 };
            let mut act = vec![x[r * n_in..r * n_in + n_in].to_vec()];
            let mut pre = vec![];
            for (l, kind) in layers.iter().zip(&kinds) {
                let a = act.last().unwrap();
                let mut z_l = vec![0.0f32; l.outputs];
                let mut out = vec![0.0f32; l.outputs];
                for o in 0..l.outputs {
                    let mut acc = 0.0f32;
                    for k in 0..l.inputs {
                        acc += a[k] * w[l.weight_at + o * l.inputs + k];
                    }
                    let z = match l.bias_at {
                        Some(b) => acc + w[b + o],
                        None => acc,
                    };
                    z_l[o] = z;
                    out[o] = kind.map_or(f32::NAN, |a| apply(a, z, Math::Native));
                }
                pre.push(z_l);
                act.push(out);
            }
            let y = act.last().unwrap();
            let live = row < live_rows;
            if row < batch {
                pred[r * n_out..r * n_out + n_out].copy_from_slice(y);
            }
            let (dl, loss) = row_loss_and_grad(y, target, r, shape.loss, p.scale);
            let dl = if live { dl } else { vec![0.0; n_out] };
            if row < batch {
                row_loss[r] = if live { loss } else { 0.0 };
            }
            acts.push(act);
            pres.push(pre);
            deltas.push(dl);
        }
        let part = &mut partial[tile * alen..tile * alen + alen];
        for (li, l) in layers.iter().enumerate().rev() {
            let mut dps = vec![];
            let mut tile_delta = vec![0.0f32; t * l.outputs];
            let mut tile_input = vec![0.0f32; t * l.inputs];
            for s in 0..t {
                let in_batch = tile * t + s < batch;
                let dp: Vec<f32> = (0..l.outputs)
                    .map(|o| {
                        if l.kind == 0 {
                            deltas[s][o]
                        } else {
                            deltas[s][o]
                                * kinds[li].map_or(f32::NAN, |a| {
                                    derivative_of(a, pres[s][li][o], Math::Native)
                                })
                        }
                    })
                    .collect();
                if in_batch {
                    tile_delta[s * l.outputs..(s + 1) * l.outputs].copy_from_slice(&dp);
                    tile_input[s * l.inputs..(s + 1) * l.inputs].copy_from_slice(&acts[s][li]);
                }
                dps.push(dp);
            }
            for i in 0..l.outputs * l.inputs {
                let (o, k) = (i / l.inputs, i % l.inputs);
                let mut acc = 0.0f32;
                for q in 0..t {
                    acc += tile_delta[q * l.outputs + o] * tile_input[q * l.inputs + k];
                }
                part[l.weight_at + i] = acc;
            }
            if let Some(b) = l.bias_at {
                for o in 0..l.outputs {
                    let mut acc = 0.0f32;
                    for q in 0..t {
                        acc += tile_delta[q * l.outputs + o];
                    }
                    part[b + o] = acc;
                }
            }
            if li > 0 {
                for (s, dp) in dps.iter().enumerate() {
                    let mut next = vec![0.0f32; l.inputs];
                    for (k, slot) in next.iter_mut().enumerate() {
                        let mut acc = 0.0f32;
                        for o in 0..l.outputs {
                            acc += dp[o] * w[l.weight_at + o * l.inputs + k];
                        }
                        *slot = acc;
                    }
                    deltas[s] = next;
                }
            }
        }
    }
}

/// One row's loss gradient and loss from its output `y`, against row `r` of `target`: the
/// formulas of the loss twins (`mse_loss`, `binary_cross_entropy`, `softmax_cross_entropy`)
/// in their order, with `Math::Native`.
fn row_loss_and_grad(
    y: &[f32],
    target: MlpTargets<'_>,
    r: usize,
    loss: Loss,
    scale: f32,
) -> (Vec<f32>, f32) {
    let n_out = y.len();
    let math = Math::Native;
    match (loss, target) {
        (Loss::Mse | Loss::BinaryCrossEntropy, MlpTargets::Values(t)) => {
            let t = &t[r * n_out..r * n_out + n_out];
            let mut sum = 0.0f32;
            let mut dl = vec![0.0f32; n_out];
            for c in 0..n_out {
                let (z, t) = (y[c], t[c]);
                let (grad, term) = if loss == Loss::BinaryCrossEntropy {
                    (
                        (sigmoid(z, math) - t) * scale,
                        z.max(0.0) - z * t + math.log(1.0 + math.exp(-z.abs())),
                    )
                } else {
                    (2.0 * (z - t) * scale, (z - t) * (z - t))
                };
                dl[c] = grad;
                sum += term;
            }
            (dl, math.div(sum, n_out as f32))
        }
        (Loss::SoftmaxCrossEntropy, MlpTargets::Labels(labels)) => {
            let label = labels[r] as usize;
            let m = y.iter().skip(1).fold(y[0], |m, &v| m.max(v));
            let mut s = 0.0f32;
            for &v in y {
                s += math.exp(v - m);
            }
            let dl = (0..n_out)
                .map(|c| {
                    let prob = math.div(math.exp(y[c] - m), s);
                    let target = if c == label { 1.0 } else { 0.0 };
                    (prob - target) * scale
                })
                .collect();
            let loss = if label >= n_out {
                f32::NAN
            } else {
                m + math.log(s) - y[label]
            };
            (dl, loss)
        }
        (Loss::Mse | Loss::BinaryCrossEntropy, MlpTargets::Labels(_))
        | (Loss::SoftmaxCrossEntropy, MlpTargets::Values(_)) => (vec![f32::NAN; n_out], f32::NAN),
    }
}
