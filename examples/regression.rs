//! Regression, the task the lecture lists next to classification: predict a number. On the
//! diabetes table (442 patients, 10 measurements, disease progression one year later):
//!
//! 1. linear regression as a network with no hidden layer: one identity output unit and
//!    MSE, trained by gradient descent — and checked against the closed-form least-squares
//!    solution (the normal equations, solved in f64). Descent on this convex loss should
//!    land on the same fit: its test R² must be within 1% of the closed form's;
//! 2. an MLP (10-64-1, ReLU) trained on the same rows, to see whether a non-linear model
//!    explains more of the test variance than the best straight-line fit. On diabetes the
//!    gain is small and needs regularisation (an L2 penalty and a short run): an
//!    unregularised MLP fits the 354 training rows better and the test rows worse.
//!
//! Features and the target are standardised on the training rows (a fixed seeded 80/20
//! split), so the weights compare directly and the MSE reads in units of the target's
//! variance; R² = 1 − SS_res/SS_tot on the test rows does not depend on that rescaling.
//!
//! ```text
//! cargo run --release --example regression            # on the GPU
//! cargo run --release --example regression -- --cpu   # on the CPU path
//! ```

use soma::lecture::{
    diabetes_split, least_squares, least_squares_predict, r_squared, regression, values,
    RegressionSetup, DIABETES_SPLIT_SEED,
};
use soma::{Device, Gpu};

const FEATURES: [&str; 10] = [
    "age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6",
];

fn main() -> soma::Result<()> {
    env_logger::init();
    let cpu = std::env::args().any(|a| a == "--cpu");
    let gpu = if cpu { None } else { Some(Gpu::new()?) };
    let device = match &gpu {
        Some(g) => Device::Gpu(g),
        None => Device::Cpu,
    };
    println!("device: {}", device.name());
    let (train, test) = diabetes_split(DIABETES_SPLIT_SEED)?;
    println!(
        "diabetes: {} training and {} test rows, {} features (standardised, target too)",
        train.len(),
        test.len(),
        train.width
    );

    // The yardstick: least squares in closed form.
    let beta = least_squares(&train.features, train.width, values(&train)?)?;
    let closed = r_squared(
        &least_squares_predict(&beta, &test.features, test.width)?,
        values(&test)?,
    );

    // The same model as a one-layer network, trained by gradient descent.
    let setup = RegressionSetup::linear();
    let linear = regression(device, &setup, &train, &test)?;
    let layer = &linear.model.params.layers[0];
    println!(
        "\nweights: closed form vs gradient descent ({} full-batch steps, lr {})",
        setup.epochs, setup.optimizer.lr
    );
    let bias = layer.bias.as_ref().map_or(0.0, |b| b[0]);
    println!("  {:<9} {:8.4} {bias:8.4}", "intercept", beta[0]);
    for (i, name) in FEATURES.iter().enumerate() {
        println!("  {name:<9} {:8.4} {:8.4}", beta[i + 1], layer.weight[i]);
    }
    println!(
        "  (s1, s2, s3 and s4 are correlated: descent is slow along the directions that trade"
    );
    println!("   one for another, and the predictions hardly depend on those directions)");
    println!("\ntest R²:");
    println!("  closed-form least squares      {closed:.4}");
    println!(
        "  linear, gradient descent       {:.4}  ({:+.2}% of the closed form)",
        linear.test_r2,
        100.0 * (linear.test_r2 - closed) / closed
    );

    let setup = RegressionSetup::mlp();
    let mlp = regression(device, &setup, &train, &test)?;
    println!(
        "  MLP 10-64-1 relu, adam + L2    {:.4}  ({:+.4} over the linear fit; train R² {:.4} vs {:.4})",
        mlp.test_r2,
        mlp.test_r2 - linear.test_r2,
        mlp.train_r2,
        linear.train_r2
    );
    Ok(())
}
