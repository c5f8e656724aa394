//! The lecture's XOR network, with its weights set by hand rather than learned:
//!
//! ```text
//! y = W2ᵀ max(0, W1ᵀx + θ1) + θ2
//! W1 = [[1, 1], [1, 1]]   θ1 = [0, −1]   W2 = [1, −2]   θ2 = 0
//! ```
//!
//! Two ReLU hidden units and a linear output. The first hidden unit counts the ones in the
//! input, the second fires only when both inputs are 1; the output subtracts the second
//! twice from the first, which leaves 1 for exactly one 1 and 0 otherwise. A single
//! perceptron cannot do this (see `examples/perceptron.rs`); one hidden layer can.
//!
//! The example runs the four inputs through soma's kernels (matmul, bias + activation, per
//! layer) on the GPU, or on the CPU path with `--cpu`, and prints every step as the lecture
//! does: net⁽¹⁾, φ(net⁽¹⁾) and the output. (soma stores W as (outputs, inputs) and computes
//! x·Wᵀ + b per row; the lecture writes W1 X and W1ᵀx. With W1 symmetric all three agree.)
//!
//! ```text
//! cargo run --release --example xor            # on the GPU
//! cargo run --release --example xor -- --cpu   # on the CPU path
//! ```

use soma::lecture::{xor_by_hand, TRUTH_INPUTS};
use soma::{Device, Gpu};

fn print_matrix(name: &str, values: &[f32], cols: usize) {
    println!("{name} =");
    for row in values.chunks(cols) {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:3}")).collect();
        println!("    [{}]", cells.join(" "));
    }
}

fn main() -> soma::Result<()> {
    env_logger::init();
    let cpu = std::env::args().any(|a| a == "--cpu");
    let gpu = if cpu { None } else { Some(Gpu::new()?) };
    let device = match &gpu {
        Some(g) => Device::Gpu(g),
        None => Device::Cpu,
    };
    println!("device: {}\n", device.name());

    let model = xor_by_hand()?;
    let layers = model.forward_layers(device, &TRUTH_INPUTS, 4)?;
    print_matrix("X", &TRUTH_INPUTS, 2);
    print_matrix("net(1) = W1 X + θ1", &layers[0].pre, 2);
    print_matrix("φ(net(1)) = max(0, net(1))", &layers[0].out, 2);
    print_matrix("o(2) = net(2) = W2 o(1) + θ2", &layers[1].out, 1);
    let xor: Vec<f32> = TRUTH_INPUTS
        .chunks(2)
        .map(|x| ((x[0] != x[1]) as u8) as f32)
        .collect();
    println!(
        "\nXOR of each row: {xor:?}: {}",
        if layers[1].out == xor {
            "the network computes XOR exactly"
        } else {
            "MISMATCH"
        }
    );
    Ok(())
}
