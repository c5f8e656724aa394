//! The twins of the matrix products: plain loops that sum in the kernels' order (the
//! reference), and a threaded gemm for the fast CPU path (equal to rounding); the twins of the
//! f16 kernels (products of f16 values held as f32, and the cast that rounds to f16).

use super::{BlockedMatmulParams, DenseParams, MatmulParams};
use crate::math::Math;
use crate::ops::activation::cpu::{activation_backward, bias_activation_forward};
use crate::ops::activation::ActivationParams;

/// Writes or adds one output, as the kernels' `accumulate` flag says.
pub(crate) fn store(out: &mut [f32], i: usize, value: f32, accumulate: u32) {
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

/// `out (m, n) f32 = a (m, k) · b (n, k)ᵀ` of f16 values held as f32 (already rounded to
/// f16, by [`cast_f16`] say): the twin of the f16 kernel. Each product of two f16 values is
/// exact in f32, so this is `matmul_nt`'s sum, in the same k order, of those values.
pub fn matmul_nt_f16(out: &mut [f32], a: &[f32], b: &[f32], p: &MatmulParams) {
    matmul_nt(out, a, b, p);
}

/// `out (m, n) f32 = a (m, k) · b (k, n)` of f16 values held as f32: `matmul_nn` over them.
pub fn matmul_nn_f16(out: &mut [f32], a: &[f32], b: &[f32], p: &MatmulParams) {
    matmul_nn(out, a, b, p);
}

/// `out (m, n) f32 = a (k, m)ᵀ · b (k, n)` of f16 values held as f32: `matmul_tn` over them.
pub fn matmul_tn_f16(out: &mut [f32], a: &[f32], b: &[f32], p: &MatmulParams) {
    matmul_tn(out, a, b, p);
}

/// `out[i] = x[i]` rounded to the nearest f16 (ties to even), held as f32: a magnitude of
/// 65520 or more becomes infinity, one of 2^-25 or less zero (both of x's sign), NaN stays
/// NaN. The twin of the `cast_f16` kernel; `out` and `x` have one length.
pub fn cast_f16(out: &mut [f32], x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = half::f16::from_f32(v).to_f32();
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
    bias_activation_forward(out, pre, bias, &ap, Math::Native);
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
    activation_backward(dpre, &product, pre, &ap, Math::Native);
}
