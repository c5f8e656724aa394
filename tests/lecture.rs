//! The lecture's claims, checked on both paths with the same library functions the examples
//! call (`soma::lecture`, `soma::perceptron`, `Model::forward_layers`): the neuron's value,
//! the hand-set XOR network to the bit, the perceptron on separable and non-separable data,
//! XOR by back-propagation over 20 seeds, the Theano softmax classifier on iris, and
//! regression against the closed-form least-squares fit.
//!
//! GPU time is kept small for software drivers (lavapipe): large sweeps run on the CPU path
//! and a representative subset on the GPU.

mod common;

use common::gpu;
use soma::lecture::{
    self, diabetes_split, least_squares, least_squares_predict, neuron, neuron_forward,
    perceptron_gate, perceptron_iris, r_squared, regression, softmax_classifier, train_xor, values,
    xor_by_hand, xor_sweep, ClassifierSetup, Gate, RegressionSetup, XorFailure, XorSetup,
    DIABETES_SPLIT_SEED, NEURON_BIAS, NEURON_INPUTS, NEURON_WEIGHTS, TRUTH_INPUTS,
};
use soma::perceptron::{self, PerceptronRun};
use soma::{Activation, Device, Error};

/// Both paths, CPU first; the GPU only when there is one (else SKIPPED, or a panic under
/// SOMA_REQUIRE_GPU=1).
fn devices(test: &str) -> Vec<Device<'static>> {
    let mut d = vec![Device::Cpu];
    if let Some(g) = gpu(test) {
        d.push(Device::Gpu(g));
    }
    d
}

/// [`devices`] and the plain-loop CPU reference, for the cheap exact checks.
fn every_device(test: &str) -> Vec<Device<'static>> {
    let mut d = devices(test);
    d.insert(1, Device::CpuReference);
    d
}

// ---------------------------------------------------------------------------------------
// The neuron and the hand-set XOR network

#[test]
fn neuron_sums_adds_its_bias_and_fires_through_relu() {
    let model = neuron(&NEURON_WEIGHTS, NEURON_BIAS).unwrap();
    for device in every_device("neuron_sums_adds_its_bias_and_fires_through_relu") {
        let name = device.name();
        // 1·0.5 − 2·0.25 + 3·0.75 − 0.5 = 1.75 fires; −1·0.5 + 2·0.25 − 3·0.75 − 0.5 = −2.75
        // does not. Dyadic values: exact in f32 in any summation order.
        let layers = model.forward_layers(device, &NEURON_INPUTS, 2).unwrap();
        assert_eq!(layers[0].pre, [1.75, -2.75], "{name}: cell body sums");
        assert_eq!(layers[0].out, [1.75, 0.0], "{name}: firing rates");
        let firing = model.predict(device, &NEURON_INPUTS, 2).unwrap();
        assert_eq!(firing, [1.75, 0.0], "{name}: predict");
        let host: Vec<f32> = NEURON_INPUTS
            .chunks(3)
            .map(|x| neuron_forward(x, &NEURON_WEIGHTS, NEURON_BIAS))
            .collect();
        assert_eq!(firing, host, "{name}: the lecture's formula in plain Rust");
    }
}

#[test]
fn xor_by_hand_gives_the_lecture_numbers_exactly() {
    let model = xor_by_hand().unwrap();
    for device in every_device("xor_by_hand_gives_the_lecture_numbers_exactly") {
        let name = device.name();
        let layers = model.forward_layers(device, &TRUTH_INPUTS, 4).unwrap();
        assert_eq!(layers.len(), 2);
        // Small integers: exact in f32, so the GPU must match the slides to the bit.
        assert_eq!(
            layers[0].pre,
            [0.0, -1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 1.0],
            "{name}: net(1)"
        );
        assert_eq!(
            layers[0].out,
            [0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 2.0, 1.0],
            "{name}: phi(net(1))"
        );
        assert_eq!(layers[1].pre, [0.0, 1.0, 1.0, 0.0], "{name}: net(2)");
        assert_eq!(layers[1].out, [0.0, 1.0, 1.0, 0.0], "{name}: output");
        assert_eq!(
            model.predict(device, &TRUTH_INPUTS, 4).unwrap(),
            [0.0, 1.0, 1.0, 0.0],
            "{name}: predict"
        );
    }
}

#[test]
fn forward_layers_rejects_a_wrong_input_length() {
    let model = xor_by_hand().unwrap();
    assert!(matches!(
        model.forward_layers(Device::Cpu, &TRUTH_INPUTS[..7], 4),
        Err(Error::Shape { .. })
    ));
    assert_eq!(
        model.forward_layers(Device::Cpu, &[], 0).unwrap()[0].pre,
        Vec::<f32>::new()
    );
}

// ---------------------------------------------------------------------------------------
// The perceptron

fn check_separates(run: &PerceptronRun, x: &[f32], cols: usize, targets: &[f32], what: &str) {
    assert!(run.converged, "{what}: did not converge: {run:?}");
    assert_eq!(run.epochs, run.errors_per_epoch.len(), "{what}");
    assert_eq!(run.errors_per_epoch.last(), Some(&0), "{what}");
    assert!(
        run.errors_per_epoch[..run.epochs - 1]
            .iter()
            .all(|&e| e > 0),
        "{what}: stops at the first clean epoch: {:?}",
        run.errors_per_epoch
    );
    let y = perceptron::predict(&run.weights, x, cols).unwrap();
    assert_eq!(y, targets, "{what}: the final weights separate the classes");
}

#[test]
fn perceptron_learns_and_or_and_iris_but_not_xor() {
    let (iris_x, iris_t) = lecture::iris_setosa_versicolor().unwrap();
    let mut cpu_runs = vec![];
    for device in devices("perceptron_learns_and_or_and_iris_but_not_xor") {
        let name = device.name();
        let mut runs = vec![];
        for gate in [Gate::And, Gate::Or] {
            let run = perceptron_gate(device, gate, 100).unwrap();
            check_separates(&run, &TRUTH_INPUTS, 2, &gate.targets(), gate.name());
            runs.push(run);
        }
        let run = perceptron_iris(device, 100).unwrap();
        check_separates(&run, &iris_x, 4, &iris_t, "iris setosa/versicolor");
        runs.push(run);
        // XOR: no line separates it, so every one of the 100 epochs makes mistakes, and the
        // run reports that honestly instead of failing.
        let run = perceptron_gate(device, Gate::Xor, 100).unwrap();
        assert!(!run.converged, "{name}: XOR cannot converge: {run:?}");
        assert_eq!(run.epochs, 100, "{name}: XOR uses its whole budget");
        assert!(run.errors_per_epoch.iter().all(|&e| e > 0), "{name}");
        runs.push(run);
        // Small dyadic steps from zero: both paths take the same path, to the bit.
        if cpu_runs.is_empty() {
            cpu_runs = runs;
        } else {
            assert_eq!(runs, cpu_runs, "{name} against the CPU path");
        }
    }
}

#[test]
fn perceptron_rejects_bad_input() {
    let x = TRUTH_INPUTS;
    let t = Gate::And.targets();
    let train = |x: &[f32], cols: usize, t: &[f32], lr: f32, epochs: usize, w: &[f32]| {
        perceptron::train(Device::Cpu, x, cols, t, lr, epochs, w)
    };
    let data_err = |r: soma::Result<PerceptronRun>| matches!(r, Err(Error::Data(_)));
    let config_err = |r: soma::Result<PerceptronRun>| matches!(r, Err(Error::Config(_)));
    // 0/1 targets are the usual mistake: the rule needs -1/1.
    assert!(data_err(train(
        &x,
        2,
        &[0.0, 0.0, 0.0, 1.0],
        0.1,
        10,
        &[0.0; 3]
    )));
    assert!(data_err(train(&x[..7], 2, &t, 0.1, 10, &[0.0; 3])));
    assert!(data_err(train(&x, 0, &t, 0.1, 10, &[0.0; 1])));
    assert!(data_err(train(&[], 2, &[], 0.1, 10, &[0.0; 3])));
    let mut nan = x;
    nan[3] = f32::NAN;
    assert!(data_err(train(&nan, 2, &t, 0.1, 10, &[0.0; 3])));
    assert!(config_err(train(&x, 2, &t, 0.0, 10, &[0.0; 3])));
    assert!(config_err(train(&x, 2, &t, f32::NAN, 10, &[0.0; 3])));
    assert!(config_err(train(&x, 2, &t, 0.1, 0, &[0.0; 3])));
    assert!(config_err(train(&x, 2, &t, 0.1, 10, &[0.0; 2])));
    assert!(matches!(
        perceptron::predict(&[0.0; 2], &x, 2),
        Err(Error::Config(_))
    ));
}

// ---------------------------------------------------------------------------------------
// XOR by back-propagation

#[test]
fn xor_backprop_2_4_1_tanh_solves_all_20_seeds_on_cpu() {
    let setup = XorSetup::new(4, Activation::Tanh);
    let runs = xor_sweep(Device::Cpu, &setup, 0..20).unwrap();
    for r in &runs {
        assert!(r.solved, "seed {}: outputs {:?}", r.seed, r.outputs);
        assert!(r.loss < 0.01, "seed {}: loss {}", r.seed, r.loss);
        assert_eq!(r.failure, None);
    }
}

#[test]
fn xor_backprop_2_2_1_relu_can_die() {
    // The lecture's ReLU net with only two hidden units fails on some seeds, and when it
    // does, it is because a unit is dead: negative on all four inputs, zero gradient.
    let setup = XorSetup::new(2, Activation::Relu);
    let runs = xor_sweep(Device::Cpu, &setup, 0..20).unwrap();
    let dead: Vec<u64> = runs
        .iter()
        .filter(|r| matches!(r.failure, Some(XorFailure::DeadUnits { .. })))
        .map(|r| r.seed)
        .collect();
    assert!(!dead.is_empty(), "no 2-2-1 ReLU run died: {runs:?}");
    for r in runs.iter().filter(|r| !r.solved) {
        // A dead-unit failure gets nothing but the mean of the targets it can still reach.
        assert!(r.loss > 0.1, "seed {}: loss {}", r.seed, r.loss);
    }
    // A unit dead at the start stays dead: the count can only grow.
    for r in &runs {
        if let Some(XorFailure::DeadUnits { dead }) = r.failure {
            assert!(dead >= r.dead_at_start, "seed {}", r.seed);
        }
    }
}

#[test]
fn xor_backprop_on_the_gpu_solves_and_agrees_with_the_cpu() {
    let Some(g) = gpu("xor_backprop_on_the_gpu_solves_and_agrees_with_the_cpu") else {
        return;
    };
    let setup = XorSetup::new(4, Activation::Tanh);
    // A few seeds on the GPU (each is 2000 steps; the CPU test covers all 20).
    let runs = xor_sweep(Device::Gpu(g), &setup, 0..3).unwrap();
    for r in &runs {
        assert!(r.solved, "GPU seed {}: outputs {:?}", r.seed, r.outputs);
    }
    // Same seed, same start, same 2000 steps: the paths differ only by f32 rounding, which
    // a converged tanh net does not amplify.
    let cpu = train_xor(Device::Cpu, &setup, 0).unwrap();
    common::assert_close(
        "xor 2-4-1 tanh seed 0 outputs, GPU vs CPU",
        &runs[0].outputs,
        &cpu.outputs,
        1e-4,
        1e-4,
    );
    for (i, (a, b)) in runs[0]
        .params
        .layers
        .iter()
        .zip(&cpu.params.layers)
        .enumerate()
    {
        common::assert_close(
            &format!("layer {i} weight, GPU vs CPU"),
            &a.weight,
            &b.weight,
            1e-3,
            1e-3,
        );
    }
}

// ---------------------------------------------------------------------------------------
// The Theano softmax classifier

#[test]
fn softmax_classifier_reaches_95_percent_on_iris() {
    let setup = ClassifierSetup::default();
    assert_eq!(
        (setup.lr, setup.batch),
        (0.01, 1),
        "the lecture's lr, per sample"
    );
    for device in devices("softmax_classifier_reaches_95_percent_on_iris") {
        let report = softmax_classifier(device, &setup).unwrap();
        let name = device.name();
        // No biases anywhere, as in the lecture's forwardprop.
        assert!(report.model.network.layers.iter().all(|l| !l.bias));
        assert!(report.model.params.layers.iter().all(|l| l.bias.is_none()));
        assert_eq!(report.test_samples, 30);
        assert!(
            report.test_accuracy >= 0.95,
            "{name}: test accuracy {}",
            report.test_accuracy
        );
        eprintln!(
            "softmax classifier on {name}: test accuracy {:.4}, train {:.4}",
            report.test_accuracy, report.train_accuracy
        );
    }
}

// ---------------------------------------------------------------------------------------
// Regression

#[test]
fn least_squares_recovers_an_exact_plane() {
    // y = 1 + 2 x0 − 3 x1 on five points: the normal equations give it back exactly.
    let x = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 2.0, 1.0, -1.0, 3.0];
    let y: Vec<f32> = x.chunks(2).map(|r| 1.0 + 2.0 * r[0] - 3.0 * r[1]).collect();
    let beta = least_squares(&x, 2, &y).unwrap();
    for (got, want) in beta.iter().zip([1.0, 2.0, -3.0]) {
        assert!((got - want).abs() < 1e-9, "{beta:?}");
    }
    assert_eq!(
        r_squared(&least_squares_predict(&beta, &x, 2).unwrap(), &y),
        1.0
    );
    // A repeated column has no unique solution.
    assert!(matches!(
        least_squares(&[1.0, 1.0, 2.0, 2.0, 3.0, 3.0], 2, &[1.0, 2.0, 3.0]),
        Err(Error::Data(_))
    ));
}

#[test]
fn regression_matches_least_squares_and_the_mlp_does_better() {
    let (train, test) = diabetes_split(DIABETES_SPLIT_SEED).unwrap();
    let beta = least_squares(&train.features, train.width, values(&train).unwrap()).unwrap();
    let closed = r_squared(
        &least_squares_predict(&beta, &test.features, test.width).unwrap(),
        values(&test).unwrap(),
    );
    assert!(closed > 0.4, "closed-form test R² {closed}");
    for device in devices("regression_matches_least_squares_and_the_mlp_does_better") {
        let name = device.name();
        let linear = regression(device, &RegressionSetup::linear(), &train, &test).unwrap();
        assert!(
            ((linear.test_r2 - closed) / closed).abs() < 0.01,
            "{name}: linear test R² {} vs closed form {closed}",
            linear.test_r2
        );
        let mlp = regression(device, &RegressionSetup::mlp(), &train, &test).unwrap();
        assert!(
            mlp.test_r2 > linear.test_r2,
            "{name}: MLP test R² {} vs linear {}",
            mlp.test_r2,
            linear.test_r2
        );
        eprintln!(
            "regression on {name}: closed form {closed:.4}, linear {:.4}, MLP {:.4}",
            linear.test_r2, mlp.test_r2
        );
    }
}
