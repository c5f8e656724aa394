// Reductions: column sums (bias gradients), a deterministic sum of a vector (the loss of a
// batch), and argmax / correct-count (accuracy).

struct RowsParams {
    rows: u32,
    cols: u32,
    accumulate: u32,
    threshold: f32,
}

struct ReduceParams {
    len: u32,
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
}

// out (cols) = sum over rows of x (rows, cols), summed in row order; accumulate = 1 adds.
@group(0) @binding(0) var<storage, read_write> cs_out: array<f32>;
@group(0) @binding(1) var<storage, read> cs_x: array<f32>;
@group(0) @binding(2) var<uniform> cs_p: RowsParams;

@compute @workgroup_size(64, 1, 1)
fn column_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    if (col >= cs_p.cols) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < cs_p.rows; r = r + 1u) {
        acc = acc + cs_x[r * cs_p.cols + col];
    }
    if (cs_p.accumulate != 0u) {
        cs_out[col] = cs_out[col] + acc;
    } else {
        cs_out[col] = acc;
    }
}

// The same four columns per invocation, for `cols` a multiple of 4 (chosen in
// src/ops/reduce.rs): vec4 loads along the row, the same row order per column, so the same
// bits with a quarter of the memory accesses. Workgroups of 8, so that a narrow layer (64
// columns: 16 invocations) still spreads over more than one workgroup.
@group(0) @binding(0) var<storage, read_write> cs4_out: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> cs4_x: array<vec4<f32>>;

@compute @workgroup_size(8, 1, 1)
fn column_sum_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let cv = cs_p.cols / 4u;
    let col = gid.x;
    if (col >= cv) {
        return;
    }
    var acc = vec4<f32>(0.0);
    for (var r = 0u; r < cs_p.rows; r = r + 1u) {
        acc = acc + cs4_x[r * cv + col];
    }
    if (cs_p.accumulate != 0u) {
        cs4_out[col] = cs4_out[col] + acc;
    } else {
        cs4_out[col] = acc;
    }
}

// The same sums with the rows split over 32 lanes per column, for hardware GPUs, where one
// invocation per column leaves most of the device idle (a bias of 10 columns: 10
// invocations). Workgroups of 256 invocations, 8 columns each: position p sums column
// 8 * group + p / 32, rows p % 32, p % 32 + 32, ... in order; then a pairwise tree over the
// column's 32 partial sums with ascending offsets 1, 2, 4, 8, 16. Its twin is
// `cpu::column_sum_split`; `column_sum_split_subgroup` keeps the same order.
fn column_sum_split_lane(group: u32, position: u32) -> f32 {
    let col = group * 8u + position / 32u;
    var acc = 0.0;
    if (col < cs_p.cols) {
        for (var r = position % 32u; r < cs_p.rows; r = r + 32u) {
            acc = acc + cs_x[r * cs_p.cols + col];
        }
    }
    return acc;
}

// The column tree's levels from offset `first` up, and the store of each column's sum.
fn column_sum_split_tree(group: u32, index: u32, first: u32) {
    pairwise_levels(index, first, 32u);
    let col = group * 8u + index / 32u;
    if ((index & 31u) == 0u && col < cs_p.cols) {
        if (cs_p.accumulate != 0u) {
            cs_out[col] = cs_out[col] + partial[index];
        } else {
            cs_out[col] = partial[index];
        }
    }
}

@compute @workgroup_size(256, 1, 1)
fn column_sum_split(
    @builtin(local_invocation_index) index: u32,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    partial[index] = column_sum_split_lane(group.x, index);
    workgroupBarrier();
    column_sum_split_tree(group.x, index, 1u);
}

// out[0] = sum of x[0..len]: one workgroup of 256; lane i sums x[i], x[i+256], ... in order,
// then a pairwise tree over the 256 partial sums with ascending offsets: at offset 1, 2, 4,
// ..., 128, lane i (a multiple of 2*offset) adds partial[i + offset] to partial[i]; so
// ((p0 + p1) + (p2 + p3)) + ... The CPU twin follows the same order, and so does
// `reduce_sum_subgroup` (reduce_subgroup.wgsl), whose first levels run as subgroup shuffles.
@group(0) @binding(0) var<storage, read_write> rs_out: array<f32>;
@group(0) @binding(1) var<storage, read> rs_x: array<f32>;
@group(0) @binding(2) var<uniform> rs_p: ReduceParams;

var<workgroup> partial: array<f32, 256>;

// Lane `lane`'s partial sum: x[lane], x[lane + 256], ... in order.
fn reduce_sum_lane(lane: u32) -> f32 {
    var acc = 0.0;
    for (var i = lane; i < rs_p.len; i = i + 256u) {
        acc = acc + rs_x[i];
    }
    return acc;
}

// The pairwise tree's levels at offsets first, 2*first, ... below `end`, over
// partial[0..256) in blocks of `end` (a power of two): position i (a multiple of 2*offset)
// adds partial[i + offset] to partial[i]. Every invocation of the workgroup calls it, with
// the same arguments; `index` is the invocation's local index.
fn pairwise_levels(index: u32, first: u32, end: u32) {
    for (var offset = first; offset < end; offset = offset << 1u) {
        if ((index & (2u * offset - 1u)) == 0u) {
            partial[index] = partial[index] + partial[index + offset];
        }
        workgroupBarrier();
    }
}

// The tree's levels from offset `first` up, and the store of partial[0].
fn reduce_sum_tree(index: u32, first: u32) {
    pairwise_levels(index, first, 256u);
    if (index == 0u) {
        if (rs_p.accumulate != 0u) {
            rs_out[0] = rs_out[0] + partial[0];
        } else {
            rs_out[0] = partial[0];
        }
    }
}

@compute @workgroup_size(256, 1, 1)
fn reduce_sum(@builtin(local_invocation_index) lane: u32) {
    partial[lane] = reduce_sum_lane(lane);
    workgroupBarrier();
    reduce_sum_tree(lane, 1u);
}

// Index of the largest entry of each row (the first one on ties).
@group(0) @binding(0) var<storage, read_write> am_out: array<u32>;
@group(0) @binding(1) var<storage, read> am_x: array<f32>;
@group(0) @binding(2) var<uniform> am_p: RowsParams;

fn row_argmax(x_base: u32, cols: u32) -> u32 {
    var best = 0u;
    var best_value = am_x[x_base];
    for (var c = 1u; c < cols; c = c + 1u) {
        let v = am_x[x_base + c];
        if (v > best_value) {
            best = c;
            best_value = v;
        }
    }
    return best;
}

@compute @workgroup_size(64, 1, 1)
fn argmax(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= am_p.rows) {
        return;
    }
    am_out[row] = row_argmax(row * am_p.cols, am_p.cols);
}

// count[0] += number of rows whose prediction equals the label (rows past `rows` are
// ignored). The prediction is the argmax, or with a single column (a binary output), 1 when
// the value is at or above `threshold` and 0 otherwise.
@group(0) @binding(0) var<storage, read_write> cc_count: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read> cc_x: array<f32>;
@group(0) @binding(2) var<storage, read> cc_labels: array<u32>;
@group(0) @binding(3) var<uniform> cc_p: RowsParams;

// Row `row`'s prediction: the argmax, or with one column, 1 at or above the threshold.
fn cc_prediction(row: u32) -> u32 {
    let base = row * cc_p.cols;
    if (cc_p.cols == 1u) {
        return select(0u, 1u, cc_x[base] >= cc_p.threshold);
    }
    var best = 0u;
    var best_value = cc_x[base];
    for (var c = 1u; c < cc_p.cols; c = c + 1u) {
        let v = cc_x[base + c];
        if (v > best_value) {
            best = c;
            best_value = v;
        }
    }
    return best;
}

@compute @workgroup_size(64, 1, 1)
fn correct_count(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= cc_p.rows) {
        return;
    }
    if (cc_prediction(row) == cc_labels[row]) {
        atomicAdd(&cc_count[0], 1u);
    }
}
