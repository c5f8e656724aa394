//! XOR learned by back-propagation, as on the lecture's back-propagation slides: a small
//! network from random weights, MSE between output and target, and plain gradient descent
//! (SGD on the full batch of the four points) moving every weight against its gradient.
//!
//! ```text
//! cargo run --release --example xor_backprop            # on the GPU
//! cargo run --release --example xor_backprop -- --cpu   # on the CPU path
//! ```
//!
//! Six networks, 2-2-1 and 2-4-1 with ReLU, tanh and sigmoid hidden units (identity output),
//! each trained from 20 seeds (PyTorch's default initialisation: weights and biases from
//! U(±1/√fan_in)) with lr 0.2 for 2000 epochs. A run succeeds when all four outputs fall on
//! the right side of 0.5. `--lr`, `--epochs` and `--seeds` change the settings.
//!
//! Why do some fail? Gradient descent only follows the local slope:
//! - a ReLU unit whose pre-activation is negative on all four inputs outputs 0 and passes
//!   back a zero gradient, so nothing ever moves it again: it is *dead*. Some are dead from
//!   the first step (a negative bias and negative weights), others are pushed there by an
//!   early update. A 2-2-1 ReLU net with a dead unit has one ReLU left, which cannot draw
//!   XOR: it settles on the best it can do, such as 0.5 everywhere or 1/3 on three points;
//! - a sigmoid unit pushed far from 0 is *saturated*: its derivative s(1 − s) is nearly 0.
//!   Even unsaturated, sigmoid's derivative is at most 1/4 and its outputs are not centred
//!   on 0, so small sigmoid nets start on a *plateau* of the MSE surface (all outputs near
//!   0.5, loss near 0.25) and may not leave it within the epoch budget;
//! - with 4 hidden units there are many ways to draw XOR and it is unlikely that all of
//!   them are lost at once: the 2-4-1 tanh network (zero-centred, derivative 1 at 0)
//!   solves it from every seed here, already within 300 epochs; lr 0.2 and 2000 epochs are
//!   a middle ground where the sigmoid nets show their plateaus (more epochs or lr 0.3
//!   let most of them through) and lr 0.5 is already too much for 2-4-1 tanh on some seeds.

use soma::lecture::{xor_sweep, XorFailure, XorSetup};
use soma::{Activation, Device, Gpu};

fn main() -> soma::Result<()> {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cpu = args.iter().any(|a| a == "--cpu");
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let gpu = if cpu { None } else { Some(Gpu::new()?) };
    let device = match &gpu {
        Some(g) => Device::Gpu(g),
        None => Device::Cpu,
    };
    let seeds = value("--seeds").map_or(20, |s| s as u64);
    println!("device: {}", device.name());

    for hidden in [2, 4] {
        for activation in [Activation::Relu, Activation::Tanh, Activation::Sigmoid] {
            let mut setup = XorSetup::new(hidden, activation);
            if let Some(lr) = value("--lr") {
                setup.lr = lr as f32;
            }
            if let Some(e) = value("--epochs") {
                setup.epochs = e as usize;
            }
            let runs = xor_sweep(device, &setup, 0..seeds)?;
            let solved = runs.iter().filter(|r| r.solved).count();
            let count = |f: &dyn Fn(&XorFailure) -> bool| {
                runs.iter()
                    .filter(|r| r.failure.as_ref().is_some_and(f))
                    .count()
            };
            let dead = count(&|f| matches!(f, XorFailure::DeadUnits { .. }));
            let saturated = count(&|f| matches!(f, XorFailure::Saturated { .. }));
            let plateau = count(&|f| matches!(f, XorFailure::Plateau));
            println!(
                "2-{hidden}-1 {:<8} lr {} x {} epochs: {solved:2}/{seeds} solved; failures: {dead} dead ReLU, {saturated} saturated, {plateau} plateau",
                activation.to_string(),
                setup.lr,
                setup.epochs
            );
            for r in runs.iter().filter(|r| !r.solved) {
                let outputs: Vec<String> = r.outputs.iter().map(|y| format!("{y:.3}")).collect();
                let why = match r.failure {
                    Some(XorFailure::DeadUnits { dead }) => format!(
                        "{dead} of {hidden} hidden units dead ({} already at the start)",
                        r.dead_at_start
                    ),
                    Some(XorFailure::Saturated { units }) => {
                        format!("{units} of {hidden} hidden units saturated")
                    }
                    _ => "on a plateau".into(),
                };
                println!(
                    "    seed {:2}: outputs [{}], loss {:.4}: {why}",
                    r.seed,
                    outputs.join(", "),
                    r.loss
                );
            }
        }
    }
    Ok(())
}
