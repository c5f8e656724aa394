// Activations: the bias add fused with the activation (forward), and the activation's
// derivative applied to an incoming delta (backward). `kind` codes match
// `Activation::code` in src/ops/activation.rs:
//   0 identity, 1 relu, 2 leaky relu (negative slope `slope`), 3 sigmoid, 4 tanh,
//   5 sign (-1 or 1, the perceptron's), 6 step (0 or 1), 7 gelu (tanh form).
// Sigmoid and tanh are written out in their overflow-free forms rather than with the
// builtins, whose precision the WGSL spec leaves to the driver; the CPU twins use the same
// formulas.

struct ActivationParams {
    rows: u32,
    cols: u32,
    kind: u32,
    has_bias: u32,
    slope: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

fn flat_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * 256u;
}

// BEGIN activation functions (the fused MLP pass copies what lies between the markers)
fn sigmoid(z: f32) -> f32 {
    if (z >= 0.0) {
        return soma_div(1.0, 1.0 + soma_exp(-z));
    }
    let e = soma_exp(z);
    return soma_div(e, 1.0 + e);
}

fn tanh_stable(z: f32) -> f32 {
    let t = soma_exp(-2.0 * abs(z));
    let r = soma_div(1.0 - t, 1.0 + t);
    return select(r, -r, z < 0.0);
}

// GELU's tanh argument sqrt(2/pi) (z + 0.044715 z^3).
fn gelu_inner(z: f32) -> f32 {
    return 0.7978846 * (z + 0.044715 * (z * z * z));
}

fn activate(kind: u32, slope: f32, z: f32) -> f32 {
    switch kind {
        case 1u: { return max(z, 0.0); }
        case 2u: { return select(z * slope, z, z > 0.0); }
        case 3u: { return sigmoid(z); }
        case 4u: { return tanh_stable(z); }
        case 5u: { return select(-1.0, 1.0, z >= 0.0); }
        case 6u: { return select(0.0, 1.0, z >= 0.0); }
        case 7u: { return 0.5 * z * (1.0 + tanh_stable(gelu_inner(z))); }
        default: { return z; }
    }
}

// d activate / dz at the pre-activation z. Sign and step have derivative 0 almost everywhere.
fn derivative(kind: u32, slope: f32, z: f32) -> f32 {
    switch kind {
        case 1u: { return select(0.0, 1.0, z > 0.0); }
        case 2u: { return select(slope, 1.0, z > 0.0); }
        case 3u: {
            let s = sigmoid(z);
            return s * (1.0 - s);
        }
        case 4u: {
            let t = tanh_stable(z);
            return 1.0 - t * t;
        }
        case 5u, 6u: { return 0.0; }
        case 7u: {
            let t = tanh_stable(gelu_inner(z));
            let inner_derivative = 0.7978846 * (1.0 + 3.0 * 0.044715 * (z * z));
            return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * inner_derivative;
        }
        default: { return 1.0; }
    }
}

// END activation functions

// out = act(pre + bias); pre += bias in place (it is kept for the backward pass).
// With has_bias = 0 the bias binding is ignored.
@group(0) @binding(0) var<storage, read_write> fwd_out: array<f32>;
@group(0) @binding(1) var<storage, read_write> fwd_pre: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_bias: array<f32>;
@group(0) @binding(3) var<uniform> fwd_p: ActivationParams;

@compute @workgroup_size(256, 1, 1)
fn bias_activation_forward(@builtin(global_invocation_id) gid: vec3<u32>,
                           @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= fwd_p.rows * fwd_p.cols) {
        return;
    }
    var z = fwd_pre[i];
    if (fwd_p.has_bias != 0u) {
        z = z + fwd_bias[i % fwd_p.cols];
        fwd_pre[i] = z;
    }
    fwd_out[i] = activate(fwd_p.kind, fwd_p.slope, z);
}

// dpre = dout * act'(pre)
@group(0) @binding(0) var<storage, read_write> bwd_dpre: array<f32>;
@group(0) @binding(1) var<storage, read> bwd_dout: array<f32>;
@group(0) @binding(2) var<storage, read> bwd_pre: array<f32>;
@group(0) @binding(3) var<uniform> bwd_p: ActivationParams;

@compute @workgroup_size(256, 1, 1)
fn activation_backward(@builtin(global_invocation_id) gid: vec3<u32>,
                       @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= bwd_p.rows * bwd_p.cols) {
        return;
    }
    bwd_dpre[i] = bwd_dout[i] * derivative(bwd_p.kind, bwd_p.slope, bwd_pre[i]);
}

// ---------------------------------------------------------------------------------------
// The same two with vec4 loads and stores, for `cols` a multiple of 4 (chosen in
// src/ops/activation.rs): each invocation handles four neighbours of one row with the scalar
// kernels' per-element formulas, so both give the same bits. On a software adapter such as
// llvmpipe a memory access costs per invocation, so four elements per access is about twice
// as fast there.

fn activate4(kind: u32, slope: f32, z: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(activate(kind, slope, z.x), activate(kind, slope, z.y),
                     activate(kind, slope, z.z), activate(kind, slope, z.w));
}

fn derivative4(kind: u32, slope: f32, z: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(derivative(kind, slope, z.x), derivative(kind, slope, z.y),
                     derivative(kind, slope, z.z), derivative(kind, slope, z.w));
}

@group(0) @binding(0) var<storage, read_write> fwd4_out: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> fwd4_pre: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> fwd4_bias: array<vec4<f32>>;

@compute @workgroup_size(256, 1, 1)
fn bias_activation_forward_vec4(@builtin(global_invocation_id) gid: vec3<u32>,
                                @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    let cv = fwd_p.cols / 4u;
    if (i >= fwd_p.rows * cv) {
        return;
    }
    var z = fwd4_pre[i];
    if (fwd_p.has_bias != 0u) {
        z = z + fwd4_bias[i % cv];
        fwd4_pre[i] = z;
    }
    fwd4_out[i] = activate4(fwd_p.kind, fwd_p.slope, z);
}

@group(0) @binding(0) var<storage, read_write> bwd4_dpre: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> bwd4_dout: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bwd4_pre: array<vec4<f32>>;

@compute @workgroup_size(256, 1, 1)
fn activation_backward_vec4(@builtin(global_invocation_id) gid: vec3<u32>,
                            @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= bwd_p.rows * bwd_p.cols / 4u) {
        return;
    }
    bwd4_dpre[i] = bwd4_dout[i] * derivative4(bwd_p.kind, bwd_p.slope, bwd4_pre[i]);
}

// ---------------------------------------------------------------------------------------
// dense_forward: a layer's whole forward pass, pre = x (m, k) · w (n, k)^T (+ bias) and
// out = act(pre), for the shapes the generated tiles do not take (k not a multiple of 4, say
// a first layer of 2 inputs). 4 x 4 outputs per invocation as in matmul_blocked, with the same
// clamped edge loads, the k-sum in the same order, then the bias and activation of
// bias_activation_forward, so the same bits as those two kernels in a row, with one pass over
// the activations instead of three.

struct DenseParams {
    m: u32,
    n: u32,
    k: u32,
    kind: u32,
    slope: f32,
    has_bias: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> dn_pre: array<f32>;
@group(0) @binding(1) var<storage, read> dn_x: array<f32>;
@group(0) @binding(2) var<storage, read> dn_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> dn_out: array<f32>;
@group(0) @binding(4) var<storage, read> dn_bias: array<f32>;
@group(0) @binding(5) var<uniform> dn_p: DenseParams;

@compute @workgroup_size(8, 8, 1)
fn dense_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= dn_p.m || col0 >= dn_p.n) {
        return;
    }
    let k = dn_p.k;
    let last_row = dn_p.m - 1u;
    let last_col = dn_p.n - 1u;
    let ra = vec4<u32>(row0, min(row0 + 1u, last_row), min(row0 + 2u, last_row), min(row0 + 3u, last_row)) * k;
    let cb = vec4<u32>(col0, min(col0 + 1u, last_col), min(col0 + 2u, last_col), min(col0 + 3u, last_col)) * k;
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var kk = 0u; kk < k; kk = kk + 1u) {
        let bv = vec4<f32>(dn_w[cb.x + kk], dn_w[cb.y + kk], dn_w[cb.z + kk], dn_w[cb.w + kk]);
        let p0 = dn_x[ra.x + kk] * bv;
        let p1 = dn_x[ra.y + kk] * bv;
        let p2 = dn_x[ra.z + kk] * bv;
        let p3 = dn_x[ra.w + kk] * bv;
        acc[0] = acc[0] + p0;
        acc[1] = acc[1] + p1;
        acc[2] = acc[2] + p2;
        acc[3] = acc[3] + p3;
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = row0 + i;
        if (row >= dn_p.m) {
            break;
        }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + j;
            if (col < dn_p.n) {
                let idx = row * dn_p.n + col;
                var z = acc[i][j];
                if (dn_p.has_bias != 0u) {
                    z = z + dn_bias[col];
                }
                dn_pre[idx] = z;
                dn_out[idx] = activate(dn_p.kind, dn_p.slope, z);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// dense_backward: a layer's input delta through the previous layer's activation,
// dpre = (d (m, k) · w (k, n)) * act'(pre (m, n)), for the shapes the generated tiles do not
// take (k not a multiple of 4, say the delta from a 10-class output layer). 4 x 4 outputs
// per invocation as in matmul_blocked, with the same clamped edge loads and the k-sum in the
// same order, then the derivative of activation_backward: the same bits as those two kernels
// in a row, without storing the product.

@group(0) @binding(0) var<storage, read_write> db_dpre: array<f32>;
@group(0) @binding(1) var<storage, read> db_d: array<f32>;
@group(0) @binding(2) var<storage, read> db_w: array<f32>;
@group(0) @binding(3) var<storage, read> db_pre: array<f32>;
@group(0) @binding(4) var<uniform> db_p: DenseParams;

@compute @workgroup_size(8, 8, 1)
fn dense_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= db_p.m || col0 >= db_p.n) {
        return;
    }
    let k = db_p.k;
    let n = db_p.n;
    let last_row = db_p.m - 1u;
    let last_col = n - 1u;
    let ra = vec4<u32>(row0, min(row0 + 1u, last_row), min(row0 + 2u, last_row), min(row0 + 3u, last_row)) * k;
    let cb = vec4<u32>(col0, min(col0 + 1u, last_col), min(col0 + 2u, last_col), min(col0 + 3u, last_col));
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var kk = 0u; kk < k; kk = kk + 1u) {
        let wr = kk * n;
        let bv = vec4<f32>(db_w[wr + cb.x], db_w[wr + cb.y], db_w[wr + cb.z], db_w[wr + cb.w]);
        let p0 = db_d[ra.x + kk] * bv;
        let p1 = db_d[ra.y + kk] * bv;
        let p2 = db_d[ra.z + kk] * bv;
        let p3 = db_d[ra.w + kk] * bv;
        acc[0] = acc[0] + p0;
        acc[1] = acc[1] + p1;
        acc[2] = acc[2] + p2;
        acc[3] = acc[3] + p3;
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = row0 + i;
        if (row >= db_p.m) {
            break;
        }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + j;
            if (col < n) {
                let idx = row * n + col;
                db_dpre[idx] = acc[i][j] * derivative(db_p.kind, db_p.slope, db_pre[idx]);
            }
        }
    }
}
