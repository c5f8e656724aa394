//! MNIST, the full 60,000 training images, with a 784-256-256-10 ReLU network and Adam:
//! the usual first real benchmark. Reads the four IDX files (gzip or raw) from a directory.
//!
//! ```text
//! cargo run --release --example mnist -- ../shared/data/mnist [epochs] [--cpu]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use soma::data::load_mnist_dir;
use soma::{Activation, Device, Gpu, Init, Loss, Model, Network, Optimizer, TrainConfig, Trainer};

fn main() -> soma::Result<()> {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cpu = args.iter().any(|a| a == "--cpu");
    let mut positional = args.iter().filter(|a| !a.starts_with("--"));
    let dir = PathBuf::from(
        positional
            .next()
            .map(String::as_str)
            .unwrap_or("../shared/data/mnist"),
    );
    let epochs: usize = positional.next().and_then(|e| e.parse().ok()).unwrap_or(10);

    let (train, test) = load_mnist_dir(&dir)?;
    println!(
        "MNIST: {} training and {} test images",
        train.len(),
        test.len()
    );
    let gpu = if cpu { None } else { Some(Gpu::new()?) };
    let device = match &gpu {
        Some(g) => Device::Gpu(g),
        None => Device::Cpu,
    };
    println!("device: {}", device.name());

    let net = Network::mlp(&[784, 256, 256, 10], Activation::Relu, Activation::Identity)?;
    let model = Model::new(net, Init::Pytorch, 0)?;
    // Cosine decay over the epoch budget, as `soma train` does by default.
    let config = TrainConfig {
        epochs,
        batch_size: 128,
        seed: 0,
        schedule: soma::Schedule::Cosine { min_lr: 0.0 },
        ..Default::default()
    };
    let mut trainer = Trainer::new(
        device,
        &model,
        Loss::SoftmaxCrossEntropy,
        Optimizer::adam(1e-3),
        &train,
        Some(&test),
        &config,
    )?;
    let started = Instant::now();
    trainer.fit(
        |_, m| {
            println!(
                "epoch {:2}: train loss {:.4}, test loss {:.4}, test accuracy {:.2}%, {:.1} s ({:.0} samples/s)",
                m.epoch,
                m.train_loss,
                m.val_loss.unwrap_or(f32::NAN),
                100.0 * m.val_accuracy.unwrap_or(f32::NAN),
                m.seconds,
                m.samples_per_s
            );
            Ok(soma::trainer::Flow::Continue)
        },
        |_| {},
    )?;
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
