enable f16;

// Matrix products of f16 operands summed in f32, and the f32 -> f16 cast that makes those
// operands: the kernels of mixed-precision training, where the products read f16 copies of
// the weights and activations and everything else (master weights, gradients, optimizer
// state) stays f32. Every kernel here needs the device's f16 support
// (`Features::SHADER_F16`).
//
//   matmul_nt_f16: out (m, n) f32 = a (m, k) f16 · b (n, k) f16^T
//   matmul_nn_f16: out (m, n) f32 = a (m, k) f16 · b (k, n) f16
//   matmul_tn_f16: out (m, n) f32 = a (k, m) f16^T · b (k, n) f16
//   cast_f16:      out (n) f16 = f16(x (n) f32)
//
// Each product term is f32(a) * f32(b), summed in f32 in order k = 0..k-1 with the same
// MatmulParams and accumulate flag as the f32 kernels in matmul.wgsl. The product of two f16
// values is exact in f32 (11 + 11 significand bits fit in 24, and its exponent, from 2^-48 up
// to below 2^32, is in f32's normal range), so a driver that fuses the multiply into the add
// gives the same bits as one that does not: each output is the f32 sum, in k order, of exact
// products, which is what the CPU twins in src/ops/matmul/cpu.rs compute.
//
// Each invocation computes a 4 x 4 block of `out`, reading 4 values of A and 4 of B per step of
// k for 16 products, through strides as matmul_blocked does:
//   A(i, kk) = a[i * a_row + kk * a_col], B(kk, j) = b[kk * b_row + j * b_col]
//   nt: a_row = k, a_col = 1, b_row = 1, b_col = k
//   nn: a_row = k, a_col = 1, b_row = n, b_col = 1
//   tn: a_row = 1, a_col = m, b_row = n, b_col = 1
// Blocks on the right and bottom edges clamp their loads to the last row/column (always in
// bounds) and store only what is inside, so the inner loop has no bounds checks.

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<f16>;
@group(0) @binding(2) var<storage, read> b: array<f16>;
@group(0) @binding(3) var<uniform> p: MatmulParams;

fn store(row: u32, col: u32, value: f32) {
    let i = row * p.n + col;
    if (p.accumulate != 0u) {
        out[i] = out[i] + value;
    } else {
        out[i] = value;
    }
}

// The 4 x 4 block of `out` at (row0, col0) of the product through the strides above.
fn product_block(row0: u32, col0: u32, a_row: u32, a_col: u32, b_row: u32, b_col: u32) {
    let last_row = p.m - 1u;
    let last_col = p.n - 1u;
    let ra = vec4<u32>(row0, min(row0 + 1u, last_row), min(row0 + 2u, last_row), min(row0 + 3u, last_row)) * a_row;
    let cb = vec4<u32>(col0, min(col0 + 1u, last_col), min(col0 + 2u, last_col), min(col0 + 3u, last_col)) * b_col;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk = kk + 1u) {
        let ka = kk * a_col;
        let kb = kk * b_row;
        let bv = vec4<f32>(vec4<f16>(b[kb + cb.x], b[kb + cb.y], b[kb + cb.z], b[kb + cb.w]));
        let av = vec4<f32>(vec4<f16>(a[ra.x + ka], a[ra.y + ka], a[ra.z + ka], a[ra.w + ka]));
        // Exact products, added one by one: out[i][j] += A(i, kk) * B(kk, j).
        acc0 = acc0 + av.x * bv;
        acc1 = acc1 + av.y * bv;
        acc2 = acc2 + av.z * bv;
        acc3 = acc3 + av.w * bv;
    }
    let rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var r = 0u; r < 4u; r = r + 1u) {
        let row = row0 + r;
        if (row >= p.m) {
            break;
        }
        for (var c = 0u; c < 4u; c = c + 1u) {
            let col = col0 + c;
            if (col >= p.n) {
                break;
            }
            store(row, col, rows[r][c]);
        }
    }
}

@compute @workgroup_size(8, 8, 1)
fn matmul_nt_f16(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    product_block(row0, col0, p.k, 1u, 1u, p.k);
}

@compute @workgroup_size(8, 8, 1)
fn matmul_nn_f16(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    product_block(row0, col0, p.k, 1u, p.n, 1u);
}

@compute @workgroup_size(8, 8, 1)
fn matmul_tn_f16(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    product_block(row0, col0, 1u, p.m, p.n, 1u);
}

// ---------------------------------------------------------------------------------------
// cast_f16: out[i] = f16(x[i]) for i < len, one invocation per element (a 1-D grid folded
// into y past the per-dimension limit, as in the other element-wise kernels). The conversion
// rounds to nearest, ties to even, on lavapipe, as the CPU twin does (the `half` crate); WGSL
// and Vulkan let a driver pick either f16 neighbour of an inexact value, and flush f16
// subnormals to zero unless it preserves them. Rounding to nearest even, a magnitude of 65520
// or more (halfway past the largest finite f16, 65504) becomes infinity of x's sign, one of
// 2^-25 or less (half the smallest subnormal, 2^-24) becomes zero of x's sign, and NaN stays
// NaN.

struct CastParams {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> cast_out: array<f16>;
@group(0) @binding(1) var<storage, read> cast_x: array<f32>;
@group(0) @binding(2) var<uniform> cast_p: CastParams;

@compute @workgroup_size(256, 1, 1)
fn cast_f16(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= cast_p.len) {
        return;
    }
    cast_out[i] = f16(cast_x[i]);
}
