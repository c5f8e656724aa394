//! One kernel end to end: upload two matrices, dispatch soma's `matmul_nt` WGSL kernel, read
//! the result back, and check it against the CPU twin.
//!
//! The wgpu objects involved, one sentence each:
//! - `Instance`: the entry point to the graphics APIs present on the machine (Vulkan, Metal,
//!   DX12, GL); soma creates one per backend it looks at.
//! - `Adapter`: one physical (or software) GPU an instance found; it reports its name, type,
//!   driver and limits (`soma devices` lists them).
//! - `Device`: the logical connection to an adapter, created with the features and limits we
//!   ask for; every buffer, shader and pipeline is created from it.
//! - `Queue`: where recorded work is submitted to the device; `write_buffer` also goes through it.
//! - `Buffer`: GPU memory; a `GpuTensor` is one storage buffer plus a shape and a label.
//! - `ShaderModule`: compiled WGSL source (here `shaders/matmul.wgsl`, embedded at build time).
//! - `BindGroupLayout` / `PipelineLayout`: the shape of what a shader binds (which slots are
//!   storage buffers, read-only or not, and which is the uniform of sizes).
//! - `ComputePipeline`: a shader entry point compiled against that layout; built once per
//!   kernel and cached in a `Kernels` value.
//! - `BindGroup`: the actual buffers plugged into those slots for one launch; a `Dispatch` owns
//!   it together with its uniform buffer.
//! - `CommandEncoder` / `ComputePass`: a recording of work (set pipeline, set bind group,
//!   dispatch workgroups), turned into a `CommandBuffer` and submitted on the queue.
//! - `map_async` + `Device::poll`: how results come back: the output is copied into a
//!   mappable staging buffer, which is mapped once the GPU is done (`GpuTensor::read`).
//!
//! ```text
//! cargo run --release --example hello_kernel
//! ```

use soma::kernels;
use soma::ops::{self, matmul::MatmulParams, Accumulate};
use soma::{cpu, Gpu, GpuTensor};
use soma::{Kernels, Tuning};

fn main() -> soma::Result<()> {
    env_logger::init();
    // Instance -> Adapter -> Device + Queue, with the limits soma needs.
    let gpu = Gpu::new()?;
    println!(
        "adapter: {} ({})",
        gpu.adapter().name,
        gpu.adapter().backend
    );

    // X (2 x 3) and W (4 x 3): Y = X · Wᵀ is 2 x 4, the forward product of a dense layer.
    let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let w = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
    let x_t = GpuTensor::upload(&gpu, "x", &[2, 3], &x)?; // Buffer + queue.write_buffer
    let w_t = GpuTensor::upload(&gpu, "w", &[4, 3], &w)?;
    let y_t = GpuTensor::zeros(&gpu, "y", &[2, 4])?;

    // ShaderModule, layouts and ComputePipeline (built once, cached in `Kernels`), then a
    // BindGroup with the three buffers and a uniform holding m, n, k.
    let k = Kernels::new(&gpu, Tuning::default());
    let dispatch = ops::matmul_nt(&k, &y_t, &x_t, &w_t, Accumulate::Overwrite)?;
    // CommandEncoder -> ComputePass -> dispatch_workgroups -> queue.submit.
    kernels::run(&gpu, &[&dispatch])?;
    // Copy to a staging buffer, map_async, poll until mapped, copy out.
    let y = y_t.read(&gpu)?;

    let mut want = vec![0.0; 8];
    let p = MatmulParams {
        m: 2,
        n: 4,
        k: 3,
        accumulate: 0,
    };
    cpu::matmul_nt(&mut want, &x, &w, &p);
    println!("GPU: {y:?}");
    println!("CPU: {want:?}");
    assert_eq!(y, want, "small integers: both paths are exact");
    println!("equal: each row of Y is that row of X followed by the sum of its entries");
    Ok(())
}
