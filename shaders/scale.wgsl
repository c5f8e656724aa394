// Dynamic loss scaling for mixed-precision training, as PyTorch's GradScaler does it: the
// loss gradient is multiplied by the scale before the backward pass, the gradients are
// searched for inf and NaN by their bit patterns, divided by the scale where none was found,
// and the scale moves: halved after a step with a non-finite gradient (which the update
// skips), doubled after `growth_interval` clean steps in a row.
//
// The state is four u32 words, kept on the device for the whole run:
//   [0] the scale's f32 bits, [1] clean steps since the scale last changed,
//   [2] steps skipped so far,  [3] the current step's overflow flag (0 or 1).

struct ScaleParams {
    len: u32,
    growth_interval: u32,
    _pad0: u32,
    _pad1: u32,
}

// x (len) *= scale: the loss gradient, before the backward pass. The scale is a power of
// two, so the product is exact unless it overflows (then the flag finds it).
@group(0) @binding(0) var<storage, read_write> sv_x: array<f32>;
@group(0) @binding(1) var<storage, read> sv_state: array<u32>;
@group(0) @binding(2) var<uniform> sv_p: ScaleParams;

@compute @workgroup_size(256, 1, 1)
fn scale_values(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= sv_p.len) {
        return;
    }
    sv_x[i] = sv_x[i] * bitcast<f32>(sv_state[0]);
}

// state[3] = 1 when any of x (len, f32 read as its bits) is inf or NaN: all eight exponent
// bits set. Compared as bits, not as floats: WGSL lets a compiler assume that no inf or NaN
// exists, and fold a float test for them away.
@group(0) @binding(0) var<storage, read_write> go_state: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read> go_x: array<u32>;
@group(0) @binding(2) var<uniform> go_p: ScaleParams;

@compute @workgroup_size(256, 1, 1)
fn grad_overflow(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= go_p.len) {
        return;
    }
    if ((go_x[i] & 0x7f800000u) == 0x7f800000u) {
        atomicOr(&go_state[3], 1u);
    }
}

// x (len) *= 1 / scale where the step found no overflow; unchanged where it did (the update
// skips that step). 1 / scale is exact, the scale being a power of two.
@group(0) @binding(0) var<storage, read_write> uv_x: array<f32>;
@group(0) @binding(1) var<storage, read> uv_state: array<u32>;
@group(0) @binding(2) var<uniform> uv_p: ScaleParams;

@compute @workgroup_size(256, 1, 1)
fn unscale_values(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= uv_p.len || uv_state[3] != 0u) {
        return;
    }
    uv_x[i] = uv_x[i] * (1.0 / bitcast<f32>(uv_state[0]));
}

// The scale's step, once per training step after the update (one invocation): after an
// overflow the scale halves (not below the smallest normal f32), the step counts as
// skipped and the clean count restarts;
// otherwise the clean count grows, and at growth_interval the scale doubles (unless that
// would overflow f32) and the count restarts. The flag is cleared for the next step.
@group(0) @binding(0) var<storage, read_write> su_state: array<u32>;
@group(0) @binding(1) var<uniform> su_p: ScaleParams;

@compute @workgroup_size(1, 1, 1)
fn loss_scale_update() {
    let scale = bitcast<f32>(su_state[0]);
    if (su_state[3] != 0u) {
        let shrunk = bitcast<u32>(scale * 0.5);
        // Not below the smallest normal f32: 1 / scale must stay finite.
        if ((shrunk & 0x7f800000u) != 0u) {
            su_state[0] = shrunk;
        }
        su_state[1] = 0u;
        su_state[2] = su_state[2] + 1u;
    } else {
        let clean = su_state[1] + 1u;
        if (clean >= su_p.growth_interval) {
            let grown = bitcast<u32>(scale * 2.0);
            // An f32 whose exponent bits are all set is inf: keep the scale instead.
            if ((grown & 0x7f800000u) != 0x7f800000u) {
                su_state[0] = grown;
            }
            su_state[1] = 0u;
        } else {
            su_state[1] = clean;
        }
    }
    su_state[3] = 0u;
}
