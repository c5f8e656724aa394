//! The CPU reference: every WGSL kernel again as plain loops, with the same name, the same
//! argument order (outputs first, then inputs, then the params struct) and, where it decides
//! the last bit, the same order of floating-point operations. No wgpu here. The tests compare
//! the two paths; the CPU path of the trainer runs on these functions.

use crate::params::*;

// ---------------------------------------------------------------------------------------
// Matmul (shaders/matmul.wgsl)

fn store(out: &mut [f32], i: usize, value: f32, accumulate: u32) {
    if accumulate != 0 {
        out[i] += value;
    } else {
        out[i] = value;
    }
}

/// `out (m, n) = a (m, k) · b (n, k)ᵀ`.
pub fn matmul_nt(out: &mut [f32], a: &[f32], b: &[f32], p: &MatmulParams) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    for row in 0..m {
        let a_row = &a[row * k..row * k + k];
        for col in 0..n {
            let b_row = &b[col * k..col * k + k];
            let mut acc = 0.0f32;
            for kk in 0..k {
                acc += a_row[kk] * b_row[kk];
            }
            store(out, row * n + col, acc, p.accumulate);
        }
    }
}

/// `out (m, n) = a (m, k) · b (k, n)`.
pub fn matmul_nn(out: &mut [f32], a: &[f32], b: &[f32], p: &MatmulParams) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    for row in 0..m {
        for col in 0..n {
            let mut acc = 0.0f32;
            for kk in 0..k {
                acc += a[row * k + kk] * b[kk * n + col];
            }
            store(out, row * n + col, acc, p.accumulate);
        }
    }
}

/// `out (m, n) = a (k, m)ᵀ · b (k, n)`.
pub fn matmul_tn(out: &mut [f32], a: &[f32], b: &[f32], p: &MatmulParams) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    for row in 0..m {
        for col in 0..n {
            let mut acc = 0.0f32;
            for kk in 0..k {
                acc += a[kk * m + row] * b[kk * n + col];
            }
            store(out, row * n + col, acc, p.accumulate);
        }
    }
}

/// `out (m, n) = A · B` through strides (see `BlockedMatmulParams`), summed in k order like
/// the other forms: the twin of the register-blocked kernel.
pub fn matmul_blocked(out: &mut [f32], a: &[f32], b: &[f32], p: &BlockedMatmulParams) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let (ar, ac, br, bc) = (
        p.a_row as usize,
        p.a_col as usize,
        p.b_row as usize,
        p.b_col as usize,
    );
    for row in 0..m {
        for col in 0..n {
            let mut acc = 0.0f32;
            for kk in 0..k {
                acc += a[row * ar + kk * ac] * b[kk * br + col * bc];
            }
            store(out, row * n + col, acc, p.accumulate);
        }
    }
}

/// `out (m, n) = a (m, k) · b (n, k)ᵀ` with k a multiple of 4, grouped like the vec4 kernel:
/// each step of 4 in k adds one 4-term dot product to the running sum.
pub fn matmul_nt_vec4(out: &mut [f32], a: &[f32], b: &[f32], p: &BlockedMatmulParams) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    for row in 0..m {
        for col in 0..n {
            let mut acc = 0.0f32;
            for kk in (0..k).step_by(4) {
                let x = &a[row * k + kk..row * k + kk + 4];
                let y = &b[col * k + kk..col * k + kk + 4];
                acc += x[0] * y[0] + x[1] * y[1] + x[2] * y[2] + x[3] * y[3];
            }
            store(out, row * n + col, acc, p.accumulate);
        }
    }
}

/// `out (m, n) = a (m, k) · b (k, n)` with k and n multiples of 4, grouped like the vec4
/// kernel: each step of 4 in k adds its four products to the running sum one by one.
pub fn matmul_nn_vec4(out: &mut [f32], a: &[f32], b: &[f32], p: &BlockedMatmulParams) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    for row in 0..m {
        for col in 0..n {
            let mut acc = 0.0f32;
            for kk in (0..k).step_by(4) {
                let x = &a[row * k + kk..row * k + kk + 4];
                acc = acc
                    + x[0] * b[kk * n + col]
                    + x[1] * b[(kk + 1) * n + col]
                    + x[2] * b[(kk + 2) * n + col]
                    + x[3] * b[(kk + 3) * n + col];
            }
            store(out, row * n + col, acc, p.accumulate);
        }
    }
}

/// The same product as `matmul_blocked`, through `matrixmultiply`'s threaded, cache-blocked
/// sgemm: what the CPU executor uses for speed. It sums in a different order than the
/// twins above, so it agrees with them to rounding, not to the bit.
pub fn matmul_gemm(out: &mut [f32], a: &[f32], b: &[f32], p: &BlockedMatmulParams) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    if m == 0 || n == 0 {
        return;
    }
    // The extents each operand must have for the strides to stay in bounds.
    let reach = |rows: usize, cols: usize, rs: usize, cs: usize| -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    let ok = out.len() >= m * n
        && a.len() >= reach(m, k, p.a_row as usize, p.a_col as usize)
        && b.len() >= reach(k, n, p.b_row as usize, p.b_col as usize);
    if !ok {
        // Never read out of bounds: fall back to the indexed loops, which panic with a
        // clear index error on a caller's bug instead.
        matmul_blocked(out, a, b, p);
        return;
    }
    let beta = if p.accumulate != 0 { 1.0 } else { 0.0 };
    // SAFETY: the extents were checked above; `out` does not alias `a` or `b` (it is a
    // distinct `&mut`).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            p.a_row as isize,
            p.a_col as isize,
            b.as_ptr(),
            p.b_row as isize,
            p.b_col as isize,
            beta,
            out.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Activations (shaders/activation.wgsl)

/// The logistic function in its overflow-free form.
pub fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// tanh in the overflow-free form the shader uses.
pub fn tanh_stable(z: f32) -> f32 {
    let t = (-2.0 * z.abs()).exp();
    let r = (1.0 - t) / (1.0 + t);
    if z < 0.0 {
        -r
    } else {
        r
    }
}

/// The activation with code `kind` (see `Activation::code`).
pub fn activate(kind: u32, slope: f32, z: f32) -> f32 {
    match kind {
        1 => z.max(0.0),
        2 => {
            if z > 0.0 {
                z
            } else {
                z * slope
            }
        }
        3 => sigmoid(z),
        4 => tanh_stable(z),
        5 => {
            if z >= 0.0 {
                1.0
            } else {
                -1.0
            }
        }
        6 => {
            if z >= 0.0 {
                1.0
            } else {
                0.0
            }
        }
        _ => z,
    }
}

/// Its derivative at the pre-activation `z` (0 for sign and step).
pub fn derivative(kind: u32, slope: f32, z: f32) -> f32 {
    match kind {
        1 => {
            if z > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        2 => {
            if z > 0.0 {
                1.0
            } else {
                slope
            }
        }
        3 => {
            let s = sigmoid(z);
            s * (1.0 - s)
        }
        4 => {
            let t = tanh_stable(z);
            1.0 - t * t
        }
        5 | 6 => 0.0,
        _ => 1.0,
    }
}

/// `pre += bias` (when `has_bias`), `out = act(pre)`.
pub fn bias_activation_forward(
    out: &mut [f32],
    pre: &mut [f32],
    bias: &[f32],
    p: &ActivationParams,
) {
    let (rows, cols) = (p.rows as usize, p.cols as usize);
    for i in 0..rows * cols {
        let mut z = pre[i];
        if p.has_bias != 0 {
            z += bias[i % cols];
            pre[i] = z;
        }
        out[i] = activate(p.kind, p.slope, z);
    }
}

/// `pre = x · wᵀ (+ bias)`, `out = act(pre)`: the product's twin and then the bias and
/// activation's twin, as `dense_forward` computes them in one kernel.
pub fn dense_forward(
    pre: &mut [f32],
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    p: &DenseParams,
) {
    let mp = MatmulParams {
        m: p.m,
        n: p.n,
        k: p.k,
        accumulate: 0,
    };
    matmul_nt(pre, x, w, &mp);
    let ap = ActivationParams {
        rows: p.m,
        cols: p.n,
        kind: p.kind,
        has_bias: p.has_bias,
        slope: p.slope,
        ..Default::default()
    };
    bias_activation_forward(out, pre, bias, &ap);
}

/// The twin of `dense_backward`: `dpre = (d · w) * act'(pre)`, the product summed like
/// `matmul_nn`'s.
pub fn dense_backward(dpre: &mut [f32], d: &[f32], w: &[f32], pre: &[f32], p: &DenseParams) {
    let mp = MatmulParams {
        m: p.m,
        n: p.n,
        k: p.k,
        accumulate: 0,
    };
    let mut product = vec![0.0f32; (p.m * p.n) as usize];
    matmul_nn(&mut product, d, w, &mp);
    let ap = ActivationParams {
        rows: p.m,
        cols: p.n,
        kind: p.kind,
        slope: p.slope,
        ..Default::default()
    };
    activation_backward(dpre, &product, pre, &ap);
}

/// `dpre = dout * act'(pre)`.
pub fn activation_backward(dpre: &mut [f32], dout: &[f32], pre: &[f32], p: &ActivationParams) {
    let len = (p.rows * p.cols) as usize;
    for i in 0..len {
        dpre[i] = dout[i] * derivative(p.kind, p.slope, pre[i]);
    }
}

// ---------------------------------------------------------------------------------------
// Reductions (shaders/reduce.wgsl)

/// `out (cols) = Σ_rows x`, in row order.
pub fn column_sum(out: &mut [f32], x: &[f32], p: &RowsParams) {
    let (rows, cols) = (p.rows as usize, p.cols as usize);
    for col in 0..cols {
        let mut acc = 0.0f32;
        for r in 0..rows {
            acc += x[r * cols + col];
        }
        store(out, col, acc, p.accumulate);
    }
}

/// `out[0] = Σ x` in the shader's order: 256 strided partial sums, then a binary tree.
pub fn reduce_sum(out: &mut [f32], x: &[f32], p: &ReduceParams) {
    let len = p.len as usize;
    let mut partial = [0.0f32; 256];
    for (lane, slot) in partial.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        let mut i = lane;
        while i < len {
            acc += x[i];
            i += 256;
        }
        *slot = acc;
    }
    let mut stride = 128;
    while stride > 0 {
        for lane in 0..stride {
            partial[lane] += partial[lane + stride];
        }
        stride >>= 1;
    }
    store(out, 0, partial[0], p.accumulate);
}

fn row_argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = row[0];
    for (c, &v) in row.iter().enumerate().skip(1) {
        if v > best_value {
            best = c as u32;
            best_value = v;
        }
    }
    best
}

/// `out[r]` = index of the first maximum of row r.
pub fn argmax(out: &mut [u32], x: &[f32], p: &RowsParams) {
    let cols = p.cols as usize;
    for r in 0..p.rows as usize {
        out[r] = row_argmax(&x[r * cols..r * cols + cols]);
    }
}

/// `count[0] += #{r < rows : prediction(x[r]) == labels[r]}`: the argmax, or with one
/// column, `x >= threshold`.
pub fn correct_count(count: &mut [u32], x: &[f32], labels: &[u32], p: &RowsParams) {
    let cols = p.cols as usize;
    for r in 0..p.rows as usize {
        let predicted = if cols == 1 {
            (x[r] >= p.threshold) as u32
        } else {
            row_argmax(&x[r * cols..r * cols + cols])
        };
        if predicted == labels[r] {
            count[0] += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Softmax and losses (shaders/loss.wgsl)

/// Row-wise softmax, max-subtracted.
pub fn softmax(out: &mut [f32], logits: &[f32], p: &RowsParams) {
    let cols = p.cols as usize;
    for r in 0..p.rows as usize {
        let z = &logits[r * cols..r * cols + cols];
        let m = z.iter().skip(1).fold(z[0], |m, &v| m.max(v));
        let mut s = 0.0f32;
        for &v in z {
            s += (v - m).exp();
        }
        for c in 0..cols {
            out[r * cols + c] = (z[c] - m).exp() / s;
        }
    }
}

fn zero_tail(grad: &mut [f32], row_loss: &mut [f32], row: usize, cols: usize) {
    grad[row * cols..row * cols + cols].fill(0.0);
    row_loss[row] = 0.0;
}

/// Mean squared error and its gradient (see `LossParams`).
pub fn mse_loss(
    grad: &mut [f32],
    row_loss: &mut [f32],
    pred: &[f32],
    target: &[f32],
    p: &LossParams,
) {
    let cols = p.cols as usize;
    for row in 0..p.batch_rows as usize {
        if row >= p.rows as usize {
            zero_tail(grad, row_loss, row, cols);
            continue;
        }
        let mut sum = 0.0f32;
        for c in 0..cols {
            let i = row * cols + c;
            let d = pred[i] - target[i];
            grad[i] = 2.0 * d * p.scale;
            sum += d * d;
        }
        row_loss[row] = sum / cols as f32;
    }
}

/// Softmax cross-entropy from logits and class labels, and its gradient.
pub fn softmax_cross_entropy(
    grad: &mut [f32],
    row_loss: &mut [f32],
    logits: &[f32],
    labels: &[u32],
    p: &LossParams,
) {
    let cols = p.cols as usize;
    for row in 0..p.batch_rows as usize {
        if row >= p.rows as usize {
            zero_tail(grad, row_loss, row, cols);
            continue;
        }
        let z = &logits[row * cols..row * cols + cols];
        let label = labels[row] as usize;
        let m = z.iter().skip(1).fold(z[0], |m, &v| m.max(v));
        let mut s = 0.0f32;
        for &v in z {
            s += (v - m).exp();
        }
        for c in 0..cols {
            let prob = (z[c] - m).exp() / s;
            let target = if c == label { 1.0 } else { 0.0 };
            grad[row * cols + c] = (prob - target) * p.scale;
        }
        row_loss[row] = if label >= cols {
            f32::NAN
        } else {
            m + s.ln() - z[label]
        };
    }
}

/// Binary cross-entropy from logits and 0/1 targets, and its gradient.
pub fn binary_cross_entropy(
    grad: &mut [f32],
    row_loss: &mut [f32],
    logits: &[f32],
    target: &[f32],
    p: &LossParams,
) {
    let cols = p.cols as usize;
    for row in 0..p.batch_rows as usize {
        if row >= p.rows as usize {
            zero_tail(grad, row_loss, row, cols);
            continue;
        }
        let mut sum = 0.0f32;
        for c in 0..cols {
            let i = row * cols + c;
            let (z, t) = (logits[i], target[i]);
            grad[i] = (sigmoid(z) - t) * p.scale;
            sum += z.max(0.0) - z * t + (1.0 + (-z.abs()).exp()).ln();
        }
        row_loss[row] = sum / cols as f32;
    }
}

// ---------------------------------------------------------------------------------------
// Optimizers (shaders/optim.wgsl)

/// `p -= lr (g + wd p)`.
pub fn sgd_update(param: &mut [f32], grad: &[f32], p: &SgdParams) {
    for i in 0..p.len as usize {
        let w = param[i];
        let g = grad[i] + p.weight_decay * w;
        param[i] = w - p.lr * g;
    }
}

/// `v = momentum v + (g + wd p); p -= lr v`.
pub fn momentum_update(param: &mut [f32], velocity: &mut [f32], grad: &[f32], p: &SgdParams) {
    for i in 0..p.len as usize {
        let w = param[i];
        let g = grad[i] + p.weight_decay * w;
        let v = p.momentum * velocity[i] + g;
        velocity[i] = v;
        param[i] = w - p.lr * v;
    }
}

/// Adam / AdamW with host-given bias corrections.
pub fn adam_update(param: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], p: &AdamParams) {
    for i in 0..p.len as usize {
        let mut w = param[i];
        let mut g = grad[i];
        if p.decoupled != 0 {
            w *= 1.0 - p.lr * p.weight_decay;
        } else {
            g += p.weight_decay * w;
        }
        let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
        let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        let step_size = p.lr / p.bias_correction1;
        let denom = vi.sqrt() / p.bias_correction2.sqrt() + p.eps;
        param[i] = w - step_size * (mi / denom);
    }
}

// ---------------------------------------------------------------------------------------
// Data (shaders/data.wgsl)

/// `out[r] = data[indices[start + r]]` for r < rows, zero rows up to batch_rows.
pub fn gather_rows(out: &mut [f32], data: &[f32], indices: &[u32], p: &GatherParams) {
    let cols = p.cols as usize;
    for r in 0..p.batch_rows as usize {
        let dst = &mut out[r * cols..r * cols + cols];
        if r < p.rows as usize {
            let src = indices[p.start as usize + r] as usize * cols;
            dst.copy_from_slice(&data[src..src + cols]);
        } else {
            dst.fill(0.0);
        }
    }
}

/// `out[r] = bytes of data row indices[start + r] / divisor` for r < rows, zero rows up to
/// batch_rows; `data` holds the bytes packed four to a u32, little-endian.
pub fn gather_rows_u8(out: &mut [f32], data: &[u32], indices: &[u32], p: &GatherParams) {
    let cols = p.cols as usize;
    for r in 0..p.batch_rows as usize {
        for c in 0..cols {
            out[r * cols + c] = if r < p.rows as usize {
                let i = indices[p.start as usize + r] as usize * cols + c;
                let byte = (data[i / 4] >> (8 * (i % 4))) & 0xff;
                byte as f32 / p.divisor
            } else {
                0.0
            };
        }
    }
}

/// Packs bytes four to a u32, little-endian (the layout `gather_rows_u8` reads).
pub fn pack_u8(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}

/// `out[r] = labels[indices[start + r]]` for r < rows, 0 up to batch_rows.
pub fn gather_labels(out: &mut [u32], labels: &[u32], indices: &[u32], p: &GatherParams) {
    for r in 0..p.batch_rows as usize {
        out[r] = if r < p.rows as usize {
            labels[indices[p.start as usize + r] as usize]
        } else {
            0
        };
    }
}

// ---------------------------------------------------------------------------------------
// The perceptron (shaders/perceptron.wgsl)

/// One epoch of Rosenblatt's online rule; `weights` = (w, theta); `errors[0]` = mistakes.
pub fn perceptron_epoch(
    weights: &mut [f32],
    errors: &mut [u32],
    x: &[f32],
    targets: &[f32],
    p: &PerceptronParams,
) {
    let (rows, cols) = (p.rows as usize, p.cols as usize);
    let mut wrong = 0;
    for s in 0..rows {
        let mut net = 0.0f32;
        for c in 0..cols {
            net += weights[c] * x[s * cols + c];
        }
        net -= weights[cols];
        let y = if net >= 0.0 { 1.0 } else { -1.0 };
        let e = targets[s] - y;
        if e != 0.0 {
            wrong += 1;
            for c in 0..cols {
                weights[c] += p.lr * x[s * cols + c] * e;
            }
            weights[cols] -= p.lr * e;
        }
    }
    errors[0] = wrong;
}

// The vec4 forms of the element-wise kernels apply the scalar kernels' per-element formulas
// to four neighbours at a time, so their twins are the scalar twins: the same values, element
// by element, whichever form the GPU ran (the twin tests cover both forms).

/// Twin of `bias_activation_forward_vec4`: [`bias_activation_forward`].
pub fn bias_activation_forward_vec4(
    out: &mut [f32],
    pre: &mut [f32],
    bias: &[f32],
    p: &ActivationParams,
) {
    bias_activation_forward(out, pre, bias, p)
}

/// Twin of `activation_backward_vec4`: [`activation_backward`].
pub fn activation_backward_vec4(dpre: &mut [f32], dout: &[f32], pre: &[f32], p: &ActivationParams) {
    activation_backward(dpre, dout, pre, p)
}

/// Twin of `column_sum_vec4`: [`column_sum`].
pub fn column_sum_vec4(out: &mut [f32], x: &[f32], p: &RowsParams) {
    column_sum(out, x, p)
}

/// Twin of `sgd_update_vec4`: [`sgd_update`].
pub fn sgd_update_vec4(param: &mut [f32], grad: &[f32], p: &SgdParams) {
    sgd_update(param, grad, p)
}

/// Twin of `momentum_update_vec4`: [`momentum_update`].
pub fn momentum_update_vec4(param: &mut [f32], velocity: &mut [f32], grad: &[f32], p: &SgdParams) {
    momentum_update(param, velocity, grad, p)
}

/// Twin of `adam_update_vec4`: [`adam_update`].
pub fn adam_update_vec4(
    param: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grad: &[f32],
    p: &AdamParams,
) {
    adam_update(param, m, v, grad, p)
}

/// Twin of `gather_rows_vec4`: [`gather_rows`].
pub fn gather_rows_vec4(out: &mut [f32], data: &[f32], indices: &[u32], p: &GatherParams) {
    gather_rows(out, data, indices, p)
}

/// Twin of `gather_rows_u8_vec4`: [`gather_rows_u8`].
pub fn gather_rows_u8_vec4(out: &mut [f32], data: &[u32], indices: &[u32], p: &GatherParams) {
    gather_rows_u8(out, data, indices, p)
}

// ---------------------------------------------------------------------------------------
// The fully fused MLP pass (kernels/fused_mlp.rs)

/// The twin of the fused training pass: per tile of `shape.tile_rows()` rows, each row's forward
/// pass, loss gradient (MSE or binary cross-entropy) and backward pass (the op-by-op twins' arithmetic, in their order),
/// and the tile's weight and bias gradient sums into its row of `partial` (tiles, arena
/// length), laid out like the parameter arena `w`. Rows past `p.batch_rows` count as zeros;
/// rows past `p.rows` get a zero gradient and loss. `x` and `target` are the gathered batch
/// (for the kernel's gathering forms, what `gather_rows` makes of the tables).
#[allow(clippy::too_many_arguments)]
pub fn fused_mlp(
    partial: &mut [f32],
    pred: &mut [f32],
    row_loss: &mut [f32],
    x: &[f32],
    target: &[f32],
    w: &[f32],
    shape: &crate::kernels::fused_mlp::MlpShape,
    p: &FusedMlpParams,
) {
    let layers = shape.layers();
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
            for l in &layers {
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
                    out[o] = activate(l.kind, l.slope, z);
                }
                pre.push(z_l);
                act.push(out);
            }
            let y = act.last().unwrap();
            let live = row < live_rows;
            let mut sum = 0.0f32;
            let mut dl = vec![0.0f32; n_out];
            for c in 0..n_out {
                if row < batch {
                    pred[r * n_out + c] = y[c];
                }
                let (z, t) = (y[c], target[r * n_out + c]);
                // mse_loss's formulas, or binary_cross_entropy's on the logits.
                let (grad, term) = if shape.bce {
                    (
                        (sigmoid(z) - t) * p.scale,
                        z.max(0.0) - z * t + (1.0 + (-z.abs()).exp()).ln(),
                    )
                } else {
                    (2.0 * (z - t) * p.scale, (z - t) * (z - t))
                };
                dl[c] = if live { grad } else { 0.0 };
                sum += term;
            }
            if row < batch {
                row_loss[r] = if live { sum / n_out as f32 } else { 0.0 };
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
                            deltas[s][o] * derivative(l.kind, l.slope, pres[s][li][o])
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
