// Matrix products, the three forms backprop needs, row-major f32 throughout.
//
//   matmul_nt: out (m, n) = a (m, k) · b (n, k)^T    forward:        Y  = X · W^T
//   matmul_nn: out (m, n) = a (m, k) · b (k, n)      input delta:    dX = dY · W
//   matmul_tn: out (m, n) = a (k, m)^T · b (k, n)    weight grad:    dW = dY^T · X
//
// These are the naive kernels: one invocation per output element, the k-sum in order
// 0..k-1 with a separate multiply and add (the CPU twin in src/ops/matmul/cpu.rs does the same), so they
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

// The output and the sizes are shared by every blocked kernel below (and `store_block`).
@group(0) @binding(0) var<storage, read_write> blk_out: array<f32>;
@group(0) @binding(1) var<storage, read> bl_a: array<f32>;
@group(0) @binding(2) var<storage, read> bl_b: array<f32>;
@group(0) @binding(3) var<uniform> blk_p: BlockedMatmulParams;

@compute @workgroup_size(8, 8, 1)
fn matmul_blocked(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= blk_p.m || col0 >= blk_p.n) {
        return;
    }
    let last_row = blk_p.m - 1u;
    let last_col = blk_p.n - 1u;
    let ra = vec4<u32>(row0, min(row0 + 1u, last_row), min(row0 + 2u, last_row), min(row0 + 3u, last_row)) * blk_p.a_row;
    let cb = vec4<u32>(col0, min(col0 + 1u, last_col), min(col0 + 2u, last_col), min(col0 + 3u, last_col)) * blk_p.b_col;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < blk_p.k; kk = kk + 1u) {
        let ka = kk * blk_p.a_col;
        let kb = kk * blk_p.b_row;
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
    store_block(row0, col0, array<vec4<f32>, 4>(acc0, acc1, acc2, acc3));
}

// ---------------------------------------------------------------------------------------
// The same 4 x 4 register blocks with vec4 loads, where the shapes allow them (chosen in
// src/ops/matmul/mod.rs; the scalar matmul_blocked covers every other shape):
//   matmul_nt_vec4 (k a multiple of 4): rows of A and of B are contiguous along k, so each
//     step of 4 in k loads 4 + 4 vec4 and does 64 multiply-adds through dot products;
//   matmul_nn_vec4 (k and n multiples of 4): rows of A along k, rows of B along n.
// Within a step of 4 in k the products are added in another grouping than the scalar
// kernels (a dot product, then the running sum), so these agree with them to rounding.

@group(0) @binding(1) var<storage, read> v4_a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> v4_b: array<vec4<f32>>;

@compute @workgroup_size(8, 8, 1)
fn matmul_nt_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= blk_p.m || col0 >= blk_p.n) {
        return;
    }
    let kv = blk_p.k / 4u;
    let last_row = blk_p.m - 1u;
    let last_col = blk_p.n - 1u;
    let r0 = row0 * kv;
    let r1 = min(row0 + 1u, last_row) * kv;
    let r2 = min(row0 + 2u, last_row) * kv;
    let r3 = min(row0 + 3u, last_row) * kv;
    let c0 = col0 * kv;
    let c1 = min(col0 + 1u, last_col) * kv;
    let c2 = min(col0 + 2u, last_col) * kv;
    let c3 = min(col0 + 3u, last_col) * kv;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < kv; kk = kk + 1u) {
        let a0 = v4_a[r0 + kk];
        let a1 = v4_a[r1 + kk];
        let a2 = v4_a[r2 + kk];
        let a3 = v4_a[r3 + kk];
        let b0 = v4_b[c0 + kk];
        let b1 = v4_b[c1 + kk];
        let b2 = v4_b[c2 + kk];
        let b3 = v4_b[c3 + kk];
        acc0 = acc0 + vec4<f32>(dot(a0, b0), dot(a0, b1), dot(a0, b2), dot(a0, b3));
        acc1 = acc1 + vec4<f32>(dot(a1, b0), dot(a1, b1), dot(a1, b2), dot(a1, b3));
        acc2 = acc2 + vec4<f32>(dot(a2, b0), dot(a2, b1), dot(a2, b2), dot(a2, b3));
        acc3 = acc3 + vec4<f32>(dot(a3, b0), dot(a3, b1), dot(a3, b2), dot(a3, b3));
    }
    store_block(row0, col0, array<vec4<f32>, 4>(acc0, acc1, acc2, acc3));
}

// matmul_nn_vec4: out = a (m, k) · b (k, n) with k and n multiples of 4. Per step of 4 in k,
// four vec4 loads of A (4 rows x 4 k) and four of B (4 k x 4 columns) feed 64 multiply-adds.
@compute @workgroup_size(8, 8, 1)
fn matmul_nn_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= blk_p.m || col0 >= blk_p.n) {
        return;
    }
    let kv = blk_p.k / 4u;
    let nv = blk_p.n / 4u;
    let last_row = blk_p.m - 1u;
    let r0 = row0 * kv;
    let r1 = min(row0 + 1u, last_row) * kv;
    let r2 = min(row0 + 2u, last_row) * kv;
    let r3 = min(row0 + 3u, last_row) * kv;
    let cv = col0 / 4u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < kv; kk = kk + 1u) {
        let kb = 4u * kk * nv + cv;
        let b0 = v4_b[kb];
        let b1 = v4_b[kb + nv];
        let b2 = v4_b[kb + 2u * nv];
        let b3 = v4_b[kb + 3u * nv];
        let a0 = v4_a[r0 + kk];
        let a1 = v4_a[r1 + kk];
        let a2 = v4_a[r2 + kk];
        let a3 = v4_a[r3 + kk];
        acc0 = acc0 + a0.x * b0 + a0.y * b1 + a0.z * b2 + a0.w * b3;
        acc1 = acc1 + a1.x * b0 + a1.y * b1 + a1.z * b2 + a1.w * b3;
        acc2 = acc2 + a2.x * b0 + a2.y * b1 + a2.z * b2 + a2.w * b3;
        acc3 = acc3 + a3.x * b0 + a3.y * b1 + a3.z * b2 + a3.w * b3;
    }
    store_block(row0, col0, array<vec4<f32>, 4>(acc0, acc1, acc2, acc3));
}

// Stores (or adds) a 4 x 4 block of out, skipping what is past the edges.
fn store_block(row0: u32, col0: u32, rows_in: array<vec4<f32>, 4>) {
    var rows = rows_in;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = row0 + i;
        if (row >= blk_p.m) {
            break;
        }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + j;
            if (col < blk_p.n) {
                let idx = row * blk_p.n + col;
                if (blk_p.accumulate != 0u) {
                    blk_out[idx] = blk_out[idx] + rows[i][j];
                } else {
                    blk_out[idx] = rows[i][j];
                }
            }
        }
    }
}
