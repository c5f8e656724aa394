// Matrix products, the three forms backprop needs, row-major f32 throughout.
//
//   matmul_nt: out (m, n) = a (m, k) · b (n, k)^T    forward:        Y  = X · W^T
//   matmul_nn: out (m, n) = a (m, k) · b (k, n)      input delta:    dX = dY · W
//   matmul_tn: out (m, n) = a (k, m)^T · b (k, n)    weight grad:    dW = dY^T · X
//
// These are the naive kernels: one invocation per output element, the k-sum in order
// 0..k-1 with a separate multiply and add (the CPU twin in src/cpu.rs does the same), so they
// are the yardstick every faster variant is compared with. With accumulate = 1 the product is
// added to what `out` holds.

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<uniform> p: MatmulParams;

fn store(row: u32, col: u32, value: f32) {
    let i = row * p.n + col;
    if (p.accumulate != 0u) {
        out[i] = out[i] + value;
    } else {
        out[i] = value;
    }
}

@compute @workgroup_size(16, 16, 1)
fn matmul_nt(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let row = gid.y;
    if (row >= p.m || col >= p.n) {
        return;
    }
    var acc = 0.0;
    for (var kk = 0u; kk < p.k; kk = kk + 1u) {
        let prod = a[row * p.k + kk] * b[col * p.k + kk];
        acc = acc + prod;
    }
    store(row, col, acc);
}

@compute @workgroup_size(16, 16, 1)
fn matmul_nn(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let row = gid.y;
    if (row >= p.m || col >= p.n) {
        return;
    }
    var acc = 0.0;
    for (var kk = 0u; kk < p.k; kk = kk + 1u) {
        let prod = a[row * p.k + kk] * b[kk * p.n + col];
        acc = acc + prod;
    }
    store(row, col, acc);
}

@compute @workgroup_size(16, 16, 1)
fn matmul_tn(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let row = gid.y;
    if (row >= p.m || col >= p.n) {
        return;
    }
    var acc = 0.0;
    for (var kk = 0u; kk < p.k; kk = kk + 1u) {
        let prod = a[kk * p.m + row] * b[kk * p.n + col];
        acc = acc + prod;
    }
    store(row, col, acc);
}
