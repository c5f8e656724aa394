// Softmax and the losses with their gradients. A loss kernel runs one invocation per row of
// the batch buffer; it writes the gradient of the mean loss with respect to its input
// (`scale` carries the 1/N of the mean) and each row's loss into `row_loss`
// (see LossParams in src/ops/loss.rs):
//   mse_loss:               row_loss = mean over cols of (pred - target)^2,
//                           grad = 2 (pred - target) * scale, scale = 1/(rows*cols)
//   softmax_cross_entropy:  row_loss = logsumexp(z) - z[label],
//                           grad = (softmax(z) - onehot(label)) * scale, scale = 1/rows
//   binary_cross_entropy:   row_loss = mean over cols of max(z,0) - z t + log(1 + exp(-|z|)),
//                           grad = (sigmoid(z) - t) * scale, scale = 1/(rows*cols)
// In every case the batch loss is the mean of row_loss over the live rows. Rows from `rows`
// up to `batch_rows` (the padding of a partial last batch) get zero gradient and zero loss.

struct LossParams {
    rows: u32,
    cols: u32,
    batch_rows: u32,
    scale: f32,
}

struct RowsParams {
    rows: u32,
    cols: u32,
    accumulate: u32,
    threshold: f32,
}

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

fn sigmoid(z: f32) -> f32 {
    if (z >= 0.0) {
        return soma_div(1.0, 1.0 + soma_exp(-z));
    }
    let e = soma_exp(z);
    return soma_div(e, 1.0 + e);
}

// out (rows, cols) = softmax of each row of logits, max-subtracted.
@group(0) @binding(0) var<storage, read_write> sm_out: array<f32>;
@group(0) @binding(1) var<storage, read> sm_logits: array<f32>;
@group(0) @binding(2) var<uniform> sm_p: RowsParams;

@compute @workgroup_size(64, 1, 1)
fn softmax(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= sm_p.rows) {
        return;
    }
    let base = row * sm_p.cols;
    var m = sm_logits[base];
    for (var c = 1u; c < sm_p.cols; c = c + 1u) {
        m = max(m, sm_logits[base + c]);
    }
    var s = 0.0;
    for (var c = 0u; c < sm_p.cols; c = c + 1u) {
        s = s + soma_exp(sm_logits[base + c] - m);
    }
    for (var c = 0u; c < sm_p.cols; c = c + 1u) {
        sm_out[base + c] = soma_div(soma_exp(sm_logits[base + c] - m), s);
    }
}

// The same softmax with each row split over 32 lanes, 8 rows per workgroup of 256, for
// hardware GPUs, where one invocation per row leaves most of the device idle. Position p
// works on row 8 * group + p / 32 and its columns p % 32, p % 32 + 32, ...: the row's max
// (exact in any order), then the sum of exp(z - max): each lane adds its columns in order,
// then a pairwise tree over the 32 lane sums with ascending offsets 1, 2, 4, 8, 16; then
// each lane writes its columns. Its twin is `cpu::softmax_split`; `softmax_split_subgroup`
// (loss_subgroup.wgsl) keeps the same order.
var<workgroup> sm_partial: array<f32, 256>;

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

fn softmax_split_row(group: u32, position: u32) -> u32 {
    return group * 8u + position / 32u;
}

// Position p's largest logit (-inf past the last row or column).
fn softmax_split_lane_max(group: u32, position: u32) -> f32 {
    let row = softmax_split_row(group, position);
    var m = neg_inf();
    if (row < sm_p.rows) {
        for (var c = position % 32u; c < sm_p.cols; c = c + 32u) {
            m = max(m, sm_logits[row * sm_p.cols + c]);
        }
    }
    return m;
}

// Position p's sum of exp(z - m) over its columns, in order.
fn softmax_split_lane_sum(group: u32, position: u32, m: f32) -> f32 {
    let row = softmax_split_row(group, position);
    var s = 0.0;
    if (row < sm_p.rows) {
        for (var c = position % 32u; c < sm_p.cols; c = c + 32u) {
            s = s + soma_exp(sm_logits[row * sm_p.cols + c] - m);
        }
    }
    return s;
}

// The tree levels at offsets first, 2*first, ... below 32 over sm_partial, taking the max
// (`is_max`) or the sum of each pair; every invocation calls it with the same arguments.
fn softmax_split_levels(index: u32, first: u32, is_max: bool) {
    for (var offset = first; offset < 32u; offset = offset << 1u) {
        if ((index & (2u * offset - 1u)) == 0u) {
            let a = sm_partial[index];
            let b = sm_partial[index + offset];
            if (is_max) {
                sm_partial[index] = max(a, b);
            } else {
                sm_partial[index] = a + b;
            }
        }
        workgroupBarrier();
    }
}

fn softmax_split_store(group: u32, position: u32, m: f32, s: f32) {
    let row = softmax_split_row(group, position);
    if (row < sm_p.rows) {
        for (var c = position % 32u; c < sm_p.cols; c = c + 32u) {
            let i = row * sm_p.cols + c;
            sm_out[i] = soma_div(soma_exp(sm_logits[i] - m), s);
        }
    }
}

@compute @workgroup_size(256, 1, 1)
fn softmax_split(
    @builtin(local_invocation_index) index: u32,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    sm_partial[index] = softmax_split_lane_max(group.x, index);
    workgroupBarrier();
    softmax_split_levels(index, 1u, true);
    let m = sm_partial[index & ~31u];
    workgroupBarrier();
    sm_partial[index] = softmax_split_lane_sum(group.x, index, m);
    workgroupBarrier();
    softmax_split_levels(index, 1u, false);
    softmax_split_store(group.x, index, m, sm_partial[index & ~31u]);
}

@group(0) @binding(0) var<storage, read_write> mse_grad: array<f32>;
@group(0) @binding(1) var<storage, read_write> mse_row_loss: array<f32>;
@group(0) @binding(2) var<storage, read> mse_pred: array<f32>;
@group(0) @binding(3) var<storage, read> mse_target: array<f32>;
@group(0) @binding(4) var<uniform> mse_p: LossParams;

@compute @workgroup_size(64, 1, 1)
fn mse_loss(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= mse_p.batch_rows) {
        return;
    }
    let base = row * mse_p.cols;
    if (row >= mse_p.rows) {
        for (var c = 0u; c < mse_p.cols; c = c + 1u) {
            mse_grad[base + c] = 0.0;
        }
        mse_row_loss[row] = 0.0;
        return;
    }
    var sum = 0.0;
    for (var c = 0u; c < mse_p.cols; c = c + 1u) {
        let d = mse_pred[base + c] - mse_target[base + c];
        mse_grad[base + c] = 2.0 * d * mse_p.scale;
        sum = sum + d * d;
    }
    mse_row_loss[row] = soma_div(sum, f32(mse_p.cols));
}

@group(0) @binding(0) var<storage, read_write> ce_grad: array<f32>;
@group(0) @binding(1) var<storage, read_write> ce_row_loss: array<f32>;
@group(0) @binding(2) var<storage, read> ce_logits: array<f32>;
@group(0) @binding(3) var<storage, read> ce_labels: array<u32>;
@group(0) @binding(4) var<uniform> ce_p: LossParams;

@compute @workgroup_size(64, 1, 1)
fn softmax_cross_entropy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= ce_p.batch_rows) {
        return;
    }
    let base = row * ce_p.cols;
    if (row >= ce_p.rows) {
        for (var c = 0u; c < ce_p.cols; c = c + 1u) {
            ce_grad[base + c] = 0.0;
        }
        ce_row_loss[row] = 0.0;
        return;
    }
    let label = ce_labels[row];
    var m = ce_logits[base];
    for (var c = 1u; c < ce_p.cols; c = c + 1u) {
        m = max(m, ce_logits[base + c]);
    }
    var s = 0.0;
    for (var c = 0u; c < ce_p.cols; c = c + 1u) {
        s = s + soma_exp(ce_logits[base + c] - m);
    }
    for (var c = 0u; c < ce_p.cols; c = c + 1u) {
        let prob = soma_div(soma_exp(ce_logits[base + c] - m), s);
        let onehot = select(0.0, 1.0, c == label);
        ce_grad[base + c] = (prob - onehot) * ce_p.scale;
    }
    if (label >= ce_p.cols) {
        // Out-of-range labels are rejected on the host; if one slips through, the loss
        // says so instead of reading out of bounds.
        ce_row_loss[row] = nan();
    } else {
        ce_row_loss[row] = m + soma_log(s) - ce_logits[base + label];
    }
}

// The same loss with each row split over 32 lanes, 8 rows per workgroup of 256, for hardware
// GPUs, in softmax_split's order: position p works on row 8 * group + p / 32 and its columns
// p % 32, p % 32 + 32, ...; the row's max (exact in any order), then the sum of exp(z - max):
// each lane adds its columns in order, then a pairwise tree over the 32 lane sums (in
// sm_partial) with ascending offsets 1, 2, 4, 8, 16; then each lane writes the gradient of
// its columns and the row's first lane the row's loss, by the serial kernel's formulas.
// Its twin is `cpu::softmax_cross_entropy_split`; `softmax_cross_entropy_split_subgroup`
// (loss_subgroup.wgsl) keeps the same order.

// Position p's largest logit (-inf past the last live row or column).
fn ce_split_lane_max(group: u32, position: u32) -> f32 {
    let row = softmax_split_row(group, position);
    var m = neg_inf();
    if (row < ce_p.rows) {
        for (var c = position % 32u; c < ce_p.cols; c = c + 32u) {
            m = max(m, ce_logits[row * ce_p.cols + c]);
        }
    }
    return m;
}

// Position p's sum of exp(z - m) over its columns, in order.
fn ce_split_lane_sum(group: u32, position: u32, m: f32) -> f32 {
    let row = softmax_split_row(group, position);
    var s = 0.0;
    if (row < ce_p.rows) {
        for (var c = position % 32u; c < ce_p.cols; c = c + 32u) {
            s = s + soma_exp(ce_logits[row * ce_p.cols + c] - m);
        }
    }
    return s;
}

// Position p's gradient columns and, for the row's first lane, the row's loss; zeros on the
// padding rows from `rows` up to `batch_rows`.
fn ce_split_store(group: u32, position: u32, m: f32, s: f32) {
    let row = softmax_split_row(group, position);
    if (row >= ce_p.batch_rows) {
        return;
    }
    let lane = position % 32u;
    let base = row * ce_p.cols;
    if (row >= ce_p.rows) {
        for (var c = lane; c < ce_p.cols; c = c + 32u) {
            ce_grad[base + c] = 0.0;
        }
        if (lane == 0u) {
            ce_row_loss[row] = 0.0;
        }
        return;
    }
    let label = ce_labels[row];
    for (var c = lane; c < ce_p.cols; c = c + 32u) {
        let prob = soma_div(soma_exp(ce_logits[base + c] - m), s);
        let onehot = select(0.0, 1.0, c == label);
        ce_grad[base + c] = (prob - onehot) * ce_p.scale;
    }
    if (lane == 0u) {
        if (label >= ce_p.cols) {
            ce_row_loss[row] = nan();
        } else {
            ce_row_loss[row] = m + soma_log(s) - ce_logits[base + label];
        }
    }
}

@compute @workgroup_size(256, 1, 1)
fn softmax_cross_entropy_split(
    @builtin(local_invocation_index) index: u32,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    sm_partial[index] = ce_split_lane_max(group.x, index);
    workgroupBarrier();
    softmax_split_levels(index, 1u, true);
    let m = sm_partial[index & ~31u];
    workgroupBarrier();
    sm_partial[index] = ce_split_lane_sum(group.x, index, m);
    workgroupBarrier();
    softmax_split_levels(index, 1u, false);
    ce_split_store(group.x, index, m, sm_partial[index & ~31u]);
}

@group(0) @binding(0) var<storage, read_write> bce_grad: array<f32>;
@group(0) @binding(1) var<storage, read_write> bce_row_loss: array<f32>;
@group(0) @binding(2) var<storage, read> bce_logits: array<f32>;
@group(0) @binding(3) var<storage, read> bce_target: array<f32>;
@group(0) @binding(4) var<uniform> bce_p: LossParams;

@compute @workgroup_size(64, 1, 1)
fn binary_cross_entropy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= bce_p.batch_rows) {
        return;
    }
    let base = row * bce_p.cols;
    if (row >= bce_p.rows) {
        for (var c = 0u; c < bce_p.cols; c = c + 1u) {
            bce_grad[base + c] = 0.0;
        }
        bce_row_loss[row] = 0.0;
        return;
    }
    var sum = 0.0;
    for (var c = 0u; c < bce_p.cols; c = c + 1u) {
        let z = bce_logits[base + c];
        let t = bce_target[base + c];
        bce_grad[base + c] = (sigmoid(z) - t) * bce_p.scale;
        sum = sum + (max(z, 0.0) - z * t + soma_log(1.0 + soma_exp(-abs(z))));
    }
    bce_row_loss[row] = soma_div(sum, f32(bce_p.cols));
}
