// The routines the kernels call for division, square root, exponential and logarithm, as the
// WGSL builtins (src/math: `Math::Native`). Strict mode puts math_strict.wgsl here
// instead. Prepended to a shader that calls them; no bindings, no entry points.

fn soma_div(a: f32, b: f32) -> f32 {
    return a / b;
}

fn soma_sqrt(x: f32) -> f32 {
    return sqrt(x);
}

fn soma_exp(x: f32) -> f32 {
    return exp(x);
}

fn soma_log(x: f32) -> f32 {
    return log(x);
}
