// The vec4 forms of the soma_* routines, component by component (the same bits as four
// scalar calls), after math_native.wgsl or math_strict.wgsl.

fn soma_div4(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(soma_div(a.x, b.x), soma_div(a.y, b.y), soma_div(a.z, b.z), soma_div(a.w, b.w));
}

fn soma_sqrt4(x: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(soma_sqrt(x.x), soma_sqrt(x.y), soma_sqrt(x.z), soma_sqrt(x.w));
}
