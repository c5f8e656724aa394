// Batch gathering: rows of a dataset that stays resident on the GPU, drawn through an index
// buffer (the epoch's permutation). Rows from `rows` up to `batch_rows` are zero-filled, so a
// partial last batch runs through the same fixed-size buffers.

struct GatherParams {
    rows: u32,
    cols: u32,
    start: u32,
    batch_rows: u32,
    divisor: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

fn flat_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * 256u;
}

// out (batch_rows, cols)[r] = data[indices[start + r]] for r < rows.
@group(0) @binding(0) var<storage, read_write> gr_out: array<f32>;
@group(0) @binding(1) var<storage, read> gr_data: array<f32>;
@group(0) @binding(2) var<storage, read> gr_indices: array<u32>;
@group(0) @binding(3) var<uniform> gr_p: GatherParams;

@compute @workgroup_size(256, 1, 1)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= gr_p.batch_rows * gr_p.cols) {
        return;
    }
    let r = i / gr_p.cols;
    let c = i % gr_p.cols;
    if (r < gr_p.rows) {
        gr_out[i] = gr_data[gr_indices[gr_p.start + r] * gr_p.cols + c];
    } else {
        gr_out[i] = 0.0;
    }
}

// The same from a table of bytes (8-bit pixels stay 8-bit on the GPU: MNIST is 47 MB this
// way instead of 188 MB), packed four to a u32, little-endian: byte i is bits
// 8*(i%4) .. 8*(i%4)+7 of word i/4. out = byte / divisor.
@group(0) @binding(0) var<storage, read_write> gb_out: array<f32>;
@group(0) @binding(1) var<storage, read> gb_data: array<u32>;
@group(0) @binding(2) var<storage, read> gb_indices: array<u32>;
@group(0) @binding(3) var<uniform> gb_p: GatherParams;

@compute @workgroup_size(256, 1, 1)
fn gather_rows_u8(@builtin(global_invocation_id) gid: vec3<u32>,
                  @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= gb_p.batch_rows * gb_p.cols) {
        return;
    }
    let r = i / gb_p.cols;
    let c = i % gb_p.cols;
    if (r < gb_p.rows) {
        let byte_index = gb_indices[gb_p.start + r] * gb_p.cols + c;
        let byte = (gb_data[byte_index / 4u] >> (8u * (byte_index % 4u))) & 0xffu;
        gb_out[i] = soma_div(f32(byte), gb_p.divisor);
    } else {
        gb_out[i] = 0.0;
    }
}

// out (batch_rows)[r] = labels[indices[start + r]] for r < rows (cols is ignored).
@group(0) @binding(0) var<storage, read_write> gl_out: array<u32>;
@group(0) @binding(1) var<storage, read> gl_labels: array<u32>;
@group(0) @binding(2) var<storage, read> gl_indices: array<u32>;
@group(0) @binding(3) var<uniform> gl_p: GatherParams;

@compute @workgroup_size(256, 1, 1)
fn gather_labels(@builtin(global_invocation_id) gid: vec3<u32>,
                 @builtin(num_workgroups) groups: vec3<u32>) {
    let r = flat_index(gid, groups);
    if (r >= gl_p.batch_rows) {
        return;
    }
    if (r < gl_p.rows) {
        gl_out[r] = gl_labels[gl_indices[gl_p.start + r]];
    } else {
        gl_out[r] = 0u;
    }
}

// ---------------------------------------------------------------------------------------
// The two row gathers four columns at a time, for `cols` a multiple of 4 (chosen in
// src/ops/data.rs): the same values with a quarter of the memory accesses, which is what
// a software adapter such as llvmpipe pays for. For bytes, four neighbours of a row are one
// whole word (rows start on a word boundary when cols is a multiple of 4).

@group(0) @binding(0) var<storage, read_write> gr4_out: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> gr4_data: array<vec4<f32>>;

@compute @workgroup_size(256, 1, 1)
fn gather_rows_vec4(@builtin(global_invocation_id) gid: vec3<u32>,
                    @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    let cv = gr_p.cols / 4u;
    if (i >= gr_p.batch_rows * cv) {
        return;
    }
    let r = i / cv;
    let c = i % cv;
    if (r < gr_p.rows) {
        gr4_out[i] = gr4_data[gr_indices[gr_p.start + r] * cv + c];
    } else {
        gr4_out[i] = vec4<f32>(0.0);
    }
}

@group(0) @binding(0) var<storage, read_write> gb4_out: array<vec4<f32>>;

@compute @workgroup_size(256, 1, 1)
fn gather_rows_u8_vec4(@builtin(global_invocation_id) gid: vec3<u32>,
                       @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    let cv = gb_p.cols / 4u;
    if (i >= gb_p.batch_rows * cv) {
        return;
    }
    let r = i / cv;
    let c = i % cv;
    if (r < gb_p.rows) {
        let word = gb_data[gb_indices[gb_p.start + r] * cv + c];
        let bytes = vec4<u32>(word & 0xffu, (word >> 8u) & 0xffu, (word >> 16u) & 0xffu, word >> 24u);
        gb4_out[i] = soma_div4(vec4<f32>(bytes), vec4<f32>(gb_p.divisor));
    } else {
        gb4_out[i] = vec4<f32>(0.0);
    }
}
