// Optimizer updates, one invocation per parameter element, with PyTorch's semantics:
//   sgd_update:      g = grad + wd p;  p -= lr g
//   momentum_update: g = grad + wd p;  v = momentum v + g;  p -= lr v
//                    (PyTorch's buffer starts at g on the first step; starting v at 0 gives
//                    momentum*0 + g = g, the same value)
//   adam_update:     Adam:  g = grad + wd p          AdamW: p *= 1 - lr wd
//                    m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//                    (1 - beta1 and 1 - beta2 come from the host, rounded once from f64)
//                    p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)
//                    with bc1 = 1 - beta1^t and bc2 = 1 - beta2^t given by the host.
//   rmsprop_update:  g = grad + wd p;  s = alpha s + (1 - alpha) g^2
//                    centered: a += (1 - alpha) (g - a);  d = sqrt(s - a^2) + eps
//                    else d = sqrt(s) + eps
//                    momentum > 0: b = momentum b + g / d;  p -= lr b;  else p -= lr (g / d)
//                    (PyTorch's single-tensor form, 1 - alpha rounded once by the host)

struct OptimParams {
    len: u32,
    lr: f32,
    weight_decay: f32,
    momentum: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bias_correction1: f32,
    bias_correction2: f32,
    decoupled: u32,
    alpha: f32,
    one_minus_alpha: f32,
    centered: u32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    _pad0: u32,
}

fn flat_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * 256u;
}

@group(0) @binding(0) var<storage, read_write> sgd_param: array<f32>;
@group(0) @binding(1) var<storage, read> sgd_grad: array<f32>;
@group(0) @binding(2) var<uniform> sgd_p: OptimParams;

@compute @workgroup_size(256, 1, 1)
fn sgd_update(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= sgd_p.len) {
        return;
    }
    let p = sgd_param[i];
    let g = sgd_grad[i] + sgd_p.weight_decay * p;
    sgd_param[i] = p - sgd_p.lr * g;
}

@group(0) @binding(0) var<storage, read_write> mom_param: array<f32>;
@group(0) @binding(1) var<storage, read_write> mom_velocity: array<f32>;
@group(0) @binding(2) var<storage, read> mom_grad: array<f32>;
@group(0) @binding(3) var<uniform> mom_p: OptimParams;

@compute @workgroup_size(256, 1, 1)
fn momentum_update(@builtin(global_invocation_id) gid: vec3<u32>,
                   @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= mom_p.len) {
        return;
    }
    let p = mom_param[i];
    let g = mom_grad[i] + mom_p.weight_decay * p;
    let v = mom_p.momentum * mom_velocity[i] + g;
    mom_velocity[i] = v;
    mom_param[i] = p - mom_p.lr * v;
}

@group(0) @binding(0) var<storage, read_write> adam_param: array<f32>;
@group(0) @binding(1) var<storage, read_write> adam_m: array<f32>;
@group(0) @binding(2) var<storage, read_write> adam_v: array<f32>;
@group(0) @binding(3) var<storage, read> adam_grad: array<f32>;
@group(0) @binding(4) var<uniform> adam_p: OptimParams;

@compute @workgroup_size(256, 1, 1)
fn adam_update(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= adam_p.len) {
        return;
    }
    var p = adam_param[i];
    var g = adam_grad[i];
    if (adam_p.decoupled != 0u) {
        p = p * (1.0 - adam_p.lr * adam_p.weight_decay);
    } else {
        g = g + adam_p.weight_decay * p;
    }
    let m = adam_p.beta1 * adam_m[i] + adam_p.one_minus_beta1 * g;
    let v = adam_p.beta2 * adam_v[i] + adam_p.one_minus_beta2 * g * g;
    adam_m[i] = m;
    adam_v[i] = v;
    let step_size = soma_div(adam_p.lr, adam_p.bias_correction1);
    let denom = soma_div(soma_sqrt(v), soma_sqrt(adam_p.bias_correction2)) + adam_p.eps;
    adam_param[i] = p - step_size * soma_div(m, denom);
}

@group(0) @binding(0) var<storage, read_write> rms_param: array<f32>;
@group(0) @binding(1) var<storage, read_write> rms_square_avg: array<f32>;
@group(0) @binding(2) var<storage, read_write> rms_momentum_buffer: array<f32>;
@group(0) @binding(3) var<storage, read_write> rms_grad_avg: array<f32>;
@group(0) @binding(4) var<storage, read> rms_grad: array<f32>;
@group(0) @binding(5) var<uniform> rms_p: OptimParams;

@compute @workgroup_size(256, 1, 1)
fn rmsprop_update(@builtin(global_invocation_id) gid: vec3<u32>,
                  @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= rms_p.len) {
        return;
    }
    let p = rms_param[i];
    let g = rms_grad[i] + rms_p.weight_decay * p;
    let s = rms_p.alpha * rms_square_avg[i] + rms_p.one_minus_alpha * g * g;
    rms_square_avg[i] = s;
    var d: f32;
    if (rms_p.centered != 0u) {
        let a = rms_grad_avg[i] + rms_p.one_minus_alpha * (g - rms_grad_avg[i]);
        rms_grad_avg[i] = a;
        d = soma_sqrt(s - a * a) + rms_p.eps;
    } else {
        d = soma_sqrt(s) + rms_p.eps;
    }
    if (rms_p.momentum > 0.0) {
        let b = rms_p.momentum * rms_momentum_buffer[i] + soma_div(g, d);
        rms_momentum_buffer[i] = b;
        rms_param[i] = p - rms_p.lr * b;
    } else {
        rms_param[i] = p - rms_p.lr * soma_div(g, d);
    }
}

// ---------------------------------------------------------------------------------------
// The same four with vec4 loads and stores, for `len` a multiple of 4 (chosen in
// src/ops/optim.rs). Every operation is component-wise, so each element gets the scalar
// kernels' formula and the same bits; a software adapter such as llvmpipe pays per memory
// access per invocation, so four elements per access is about twice as fast there.

@group(0) @binding(0) var<storage, read_write> sgd4_param: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> sgd4_grad: array<vec4<f32>>;

@compute @workgroup_size(256, 1, 1)
fn sgd_update_vec4(@builtin(global_invocation_id) gid: vec3<u32>,
                   @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= sgd_p.len / 4u) {
        return;
    }
    let p = sgd4_param[i];
    let g = sgd4_grad[i] + sgd_p.weight_decay * p;
    sgd4_param[i] = p - sgd_p.lr * g;
}

@group(0) @binding(0) var<storage, read_write> mom4_param: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> mom4_velocity: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> mom4_grad: array<vec4<f32>>;

@compute @workgroup_size(256, 1, 1)
fn momentum_update_vec4(@builtin(global_invocation_id) gid: vec3<u32>,
                        @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= mom_p.len / 4u) {
        return;
    }
    let p = mom4_param[i];
    let g = mom4_grad[i] + mom_p.weight_decay * p;
    let v = mom_p.momentum * mom4_velocity[i] + g;
    mom4_velocity[i] = v;
    mom4_param[i] = p - mom_p.lr * v;
}

@group(0) @binding(0) var<storage, read_write> adam4_param: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> adam4_m: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> adam4_v: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> adam4_grad: array<vec4<f32>>;

@compute @workgroup_size(256, 1, 1)
fn adam_update_vec4(@builtin(global_invocation_id) gid: vec3<u32>,
                    @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= adam_p.len / 4u) {
        return;
    }
    var p = adam4_param[i];
    var g = adam4_grad[i];
    if (adam_p.decoupled != 0u) {
        p = p * (1.0 - adam_p.lr * adam_p.weight_decay);
    } else {
        g = g + adam_p.weight_decay * p;
    }
    let m = adam_p.beta1 * adam4_m[i] + adam_p.one_minus_beta1 * g;
    let v = adam_p.beta2 * adam4_v[i] + adam_p.one_minus_beta2 * g * g;
    adam4_m[i] = m;
    adam4_v[i] = v;
    let step_size = soma_div(adam_p.lr, adam_p.bias_correction1);
    let denom = soma_div4(soma_sqrt4(v), vec4<f32>(soma_sqrt(adam_p.bias_correction2))) + adam_p.eps;
    adam4_param[i] = p - step_size * soma_div4(m, denom);
}

@group(0) @binding(0) var<storage, read_write> rms4_param: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> rms4_square_avg: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> rms4_momentum_buffer: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> rms4_grad_avg: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> rms4_grad: array<vec4<f32>>;

@compute @workgroup_size(256, 1, 1)
fn rmsprop_update_vec4(@builtin(global_invocation_id) gid: vec3<u32>,
                       @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= rms_p.len / 4u) {
        return;
    }
    let p = rms4_param[i];
    let g = rms4_grad[i] + rms_p.weight_decay * p;
    let s = rms_p.alpha * rms4_square_avg[i] + rms_p.one_minus_alpha * g * g;
    rms4_square_avg[i] = s;
    var d: vec4<f32>;
    if (rms_p.centered != 0u) {
        let a = rms4_grad_avg[i] + rms_p.one_minus_alpha * (g - rms4_grad_avg[i]);
        rms4_grad_avg[i] = a;
        d = soma_sqrt4(s - a * a) + rms_p.eps;
    } else {
        d = soma_sqrt4(s) + rms_p.eps;
    }
    if (rms_p.momentum > 0.0) {
        let b = rms_p.momentum * rms4_momentum_buffer[i] + soma_div4(g, d);
        rms4_momentum_buffer[i] = b;
        rms4_param[i] = p - rms_p.lr * b;
    } else {
        rms4_param[i] = p - rms_p.lr * soma_div4(g, d);
    }
}
