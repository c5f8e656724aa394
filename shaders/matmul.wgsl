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

// ---------------------------------------------------------------------------------------
// matmul_blocked: the same three products through one register-blocked kernel. Each
// invocation computes a 4 x 4 block of `out`, loading 4 values of A and 4 of B per step of k
// for 16 multiply-adds (the naive kernels load 2 values per multiply-add). The form is given
// by strides: A(i, kk) = a[i * a_row + kk * a_col], B(kk, j) = b[kk * b_row + j * b_col]:
//   nt: a_row = k, a_col = 1, b_row = 1, b_col = k
//   nn: a_row = k, a_col = 1, b_row = n, b_col = 1
//   tn: a_row = 1, a_col = m, b_row = n, b_col = 1
// Blocks on the right and bottom edges clamp their loads to the last row/column (always in
// bounds) and store only what is inside, so the inner loop has no bounds checks. The k-sum runs
// in the same order with the same separate multiply and add as the naive kernels, so both give
// the same bits on a driver that does not contract them into fused multiply-adds.

struct BlockedMatmulParams {
    m: u32,
    n: u32,
    k: u32,
    accumulate: u32,
    a_row: u32,
    a_col: u32,
    b_row: u32,
    b_col: u32,
}

@group(0) @binding(0) var<storage, read_write> bl_out: array<f32>;
@group(0) @binding(1) var<storage, read> bl_a: array<f32>;
@group(0) @binding(2) var<storage, read> bl_b: array<f32>;
@group(0) @binding(3) var<uniform> bl_p: BlockedMatmulParams;

@compute @workgroup_size(8, 8, 1)
fn matmul_blocked(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= bl_p.m || col0 >= bl_p.n) {
        return;
    }
    let last_row = bl_p.m - 1u;
    let last_col = bl_p.n - 1u;
    let ra = vec4<u32>(row0, min(row0 + 1u, last_row), min(row0 + 2u, last_row), min(row0 + 3u, last_row)) * bl_p.a_row;
    let cb = vec4<u32>(col0, min(col0 + 1u, last_col), min(col0 + 2u, last_col), min(col0 + 3u, last_col)) * bl_p.b_col;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < bl_p.k; kk = kk + 1u) {
        let ka = kk * bl_p.a_col;
        let kb = kk * bl_p.b_row;
        let bv = vec4<f32>(bl_b[kb + cb.x], bl_b[kb + cb.y], bl_b[kb + cb.z], bl_b[kb + cb.w]);
        let p0 = bl_a[ra.x + ka] * bv;
        let p1 = bl_a[ra.y + ka] * bv;
        let p2 = bl_a[ra.z + ka] * bv;
        let p3 = bl_a[ra.w + ka] * bv;
        acc0 = acc0 + p0;
        acc1 = acc1 + p1;
        acc2 = acc2 + p2;
        acc3 = acc3 + p3;
    }
    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = row0 + i;
        if (row >= bl_p.m) {
            break;
        }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + j;
            if (col < bl_p.n) {
                let idx = row * bl_p.n + col;
                if (bl_p.accumulate != 0u) {
                    bl_out[idx] = bl_out[idx] + rows[i][j];
                } else {
                    bl_out[idx] = rows[i][j];
                }
            }
        }
    }
}
