// Strict mode's self-test (src/exec/strict.rs): what the adapter does with the operations
// strict mode relies on, written as bit patterns for the host to compare with the CPU.
// Every operand comes from the `x` buffer, so that no compiler can fold it.
//
//   out[0] = x0 * x1 + x2        x0 = x1 = 1 + 2^-12, x2 = -(1 + 2^-11): 0 when the product
//                                is rounded before the add, 2^-24 when the two are fused
//   out[1] = (x3 + x4) - x3      x3 = 2^24, x4 = 1: 0 in this order, 1 if reassociated
//   out[2] = x5 + x6             1 + 2^-24 (a tie): 1 under ties-to-even
//   out[3] = x5 + x7             1 + 3 * 2^-24 (a tie): 1 + 2^-22 under ties-to-even
//   out[4] = x8 * x9             2^-126 * 0.5: the subnormal 2^-127, not 0
//   out[5] = x10 + x10           2^-149 + 2^-149: 2^-148 (subnormal operands kept)
//   out[6] = x10 * x11           2^-149 * 2^23: 2^-126
//   out[16 + 4 i ..]             soma_div(a, b), soma_sqrt(|a|), soma_exp(c), soma_log(|a|)
//                                for a = x[16 + 3 i], b = x[17 + 3 i], c = x[18 + 3 i],
//                                i < len

struct ReduceParams {
    len: u32,
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> st_out: array<u32>;
@group(0) @binding(1) var<storage, read> st_x: array<f32>;
@group(0) @binding(2) var<uniform> st_p: ReduceParams;

@compute @workgroup_size(64, 1, 1)
fn strict_self_test(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i == 0u) {
        st_out[0] = bitcast<u32>(st_x[0] * st_x[1] + st_x[2]);
        st_out[1] = bitcast<u32>((st_x[3] + st_x[4]) - st_x[3]);
        st_out[2] = bitcast<u32>(st_x[5] + st_x[6]);
        st_out[3] = bitcast<u32>(st_x[5] + st_x[7]);
        st_out[4] = bitcast<u32>(st_x[8] * st_x[9]);
        st_out[5] = bitcast<u32>(st_x[10] + st_x[10]);
        st_out[6] = bitcast<u32>(st_x[10] * st_x[11]);
    }
    if (i >= st_p.len) {
        return;
    }
    let a = st_x[16u + 3u * i];
    let b = st_x[17u + 3u * i];
    let c = st_x[18u + 3u * i];
    let o = 16u + 4u * i;
    st_out[o] = bitcast<u32>(soma_div(a, b));
    st_out[o + 1u] = bitcast<u32>(soma_sqrt(abs(a)));
    st_out[o + 2u] = bitcast<u32>(soma_exp(c));
    st_out[o + 3u] = bitcast<u32>(soma_log(abs(a)));
}
