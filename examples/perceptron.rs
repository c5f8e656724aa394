//! Rosenblatt's perceptron (1958), the lecture's simplest neural network: one neuron,
//!
//! ```text
//! net = wᵀx − θ          y = sign(net) ∈ {−1, 1}       e = target − y
//! w ← w + η·x·e          θ ← θ − η·e    (θ is a weight on a constant −1 input)
//! ```
//!
//! visiting the samples in order, epoch after epoch, until an epoch makes no mistake. It
//! always converges when a line (a hyperplane) separates the two classes: AND, OR, and iris
//! setosa against versicolor (4 measurements, the first 100 flowers of the table). It cannot
//! do XOR — no line puts (0,1) and (1,0) on one side and (0,0) and (1,1) on the other — so
//! that run stops at its epoch budget and says it did not converge.
//!
//! Here η = 0.1 and every run starts from w = 0, θ = 0. One epoch is the `perceptron_epoch`
//! kernel on the GPU, or its CPU twin with `--cpu`.
//!
//! ```text
//! cargo run --release --example perceptron            # on the GPU
//! cargo run --release --example perceptron -- --cpu   # on the CPU path
//! ```

use soma::lecture::{
    iris_setosa_versicolor, perceptron_gate, perceptron_iris, Gate, PERCEPTRON_LR, TRUTH_INPUTS,
};
use soma::perceptron::{predict, PerceptronRun};
use soma::{Device, Gpu};

/// The epoch budget of every run (the separable ones need far fewer).
const MAX_EPOCHS: usize = 100;

fn report(what: &str, run: &PerceptronRun) {
    let (w, theta) = run.weights.split_at(run.weights.len() - 1);
    let w: Vec<String> = w.iter().map(|v| format!("{v:.2}")).collect();
    if run.converged {
        println!(
            "{what}: converged in {} epochs; w = [{}], θ = {:.2}",
            run.epochs,
            w.join(", "),
            theta[0]
        );
    } else {
        println!(
            "{what}: did NOT converge in {} epochs (still {} mistakes in the last epoch); w = [{}], θ = {:.2}",
            run.epochs,
            run.errors_per_epoch.last().copied().unwrap_or(0),
            w.join(", "),
            theta[0]
        );
    }
    println!("    mistakes per epoch: {}", shorten(&run.errors_per_epoch));
}

fn shorten(errors: &[u32]) -> String {
    if errors.len() <= 12 {
        format!("{errors:?}")
    } else {
        format!("{:?} ... {:?}", &errors[..6], &errors[errors.len() - 3..])
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
    println!(
        "device: {}; η = {PERCEPTRON_LR}, from zero weights, at most {MAX_EPOCHS} epochs\n",
        device.name()
    );

    for gate in [Gate::And, Gate::Or, Gate::Xor] {
        let run = perceptron_gate(device, gate, MAX_EPOCHS)?;
        report(gate.name(), &run);
        let y = predict(&run.weights, &TRUTH_INPUTS, 2)?;
        println!(
            "    x1 x2 -> y (target): {}",
            TRUTH_INPUTS
                .chunks(2)
                .zip(y.iter().zip(gate.targets()))
                .map(|(x, (y, t))| format!("{}{} -> {y:+} ({t:+})", x[0], x[1]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let run = perceptron_iris(device, MAX_EPOCHS)?;
    report("iris setosa (-1) vs versicolor (+1)", &run);
    let (x, t) = iris_setosa_versicolor()?;
    let y = predict(&run.weights, &x, 4)?;
    let right = y.iter().zip(&t).filter(|(a, b)| a == b).count();
    println!(
        "    {right} of {} flowers on the right side of the line",
        t.len()
    );
    Ok(())
}
