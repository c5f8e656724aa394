//! The lecture's neuron: it sums its weighted inputs in the cell body, adds a bias, and
//! fires at a rate given by the activation function (here ReLU):
//!
//! ```text
//! class Neuron(object):
//!     def forward(inputs):
//!         cell_body_sum = np.sum(inputs * self.weights) + self.bias
//!         firing_rate = np.maximum(cell_body_sum, 0, cell_body_sum)   # ReLU
//!         return firing_rate
//! ```
//!
//! In soma a neuron is a layer with one output: `y = relu(x·wᵀ + b)`. This example builds
//! that one-unit layer with fixed weights, runs it with soma's kernels (matmul, then bias
//! and activation) on the GPU, or on the CPU path with `--cpu`, and prints the cell-body
//! sum and the firing rate for two inputs — one excitatory enough to fire, one not —
//! next to the same formula in plain Rust.
//!
//! ```text
//! cargo run --release --example neuron            # on the GPU
//! cargo run --release --example neuron -- --cpu   # on the CPU path
//! ```

use soma::lecture::{neuron, neuron_forward, NEURON_BIAS, NEURON_INPUTS, NEURON_WEIGHTS};
use soma::{Device, Gpu};

fn main() -> soma::Result<()> {
    env_logger::init();
    let cpu = std::env::args().any(|a| a == "--cpu");
    let gpu = if cpu { None } else { Some(Gpu::new()?) };
    let device = match &gpu {
        Some(g) => Device::Gpu(g),
        None => Device::Cpu,
    };
    println!("device: {}", device.name());
    println!("weights {NEURON_WEIGHTS:?}, bias {NEURON_BIAS}");

    let model = neuron(&NEURON_WEIGHTS, NEURON_BIAS)?;
    let layers = model.forward_layers(device, &NEURON_INPUTS, 2)?;
    let firing = model.predict(device, &NEURON_INPUTS, 2)?;
    for (i, inputs) in NEURON_INPUTS.chunks(3).enumerate() {
        let sum = layers[0].pre[i];
        println!(
            "inputs {inputs:?}: cell body sum {sum:+}, firing rate {} ({}); plain Rust: {}",
            firing[i],
            if firing[i] > 0.0 { "fires" } else { "silent" },
            neuron_forward(inputs, &NEURON_WEIGHTS, NEURON_BIAS)
        );
    }
    Ok(())
}
