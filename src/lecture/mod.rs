//! The lecture's examples as library functions (the lecture soma grew from: neuron, perceptron,
//! XOR by hand and by back-propagation, the Theano softmax classifier, regression), so that
//! `examples/*.rs` and `tests/lecture.rs` run exactly the same code on the GPU and on the
//! CPU path. Each function takes a [`Device`], builds its network with soma's own types and
//! trains it with soma's own trainer; nothing here has its own kernels or training math
//! (the closed-form least-squares fit used as the regression yardstick excepted).
//!
//! This file holds the data of the first slides (truth tables, the iris pair), the
//! perceptron runs, the neuron and the hand-set XOR network; [`backprop`] trains XOR from
//! random weights, [`classifier`] is the Theano softmax classifier and [`diabetes`] the
//! diabetes regression. Everything is re-exported here.

pub mod backprop;
pub mod classifier;
pub mod diabetes;

pub use backprop::*;
pub use classifier::*;
pub use diabetes::*;

use crate::data;
use crate::error::{Error, Result};
use crate::exec::Device;
use crate::network::{Activation, Layer, LayerParams, Network, Parameters};
use crate::perceptron::{self, PerceptronRun};
use crate::trainer::Model;

// ---------------------------------------------------------------------------------------
// Truth tables and the iris pair

/// The four inputs of a two-input truth table, row-major (4 x 2): 00, 01, 10, 11.
pub const TRUTH_INPUTS: [f32; 8] = [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0];
/// XOR of [`TRUTH_INPUTS`] as 0/1.
pub const XOR_TARGETS: [f32; 4] = [0.0, 1.0, 1.0, 0.0];

/// A two-input logic function for the perceptron, targets in {−1, 1}.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    And,
    Or,
    Xor,
}

impl Gate {
    pub fn name(self) -> &'static str {
        match self {
            Gate::And => "AND",
            Gate::Or => "OR",
            Gate::Xor => "XOR",
        }
    }

    /// The targets for [`TRUTH_INPUTS`], −1 for false and 1 for true.
    pub fn targets(self) -> [f32; 4] {
        let f = |a: bool, b: bool| match self {
            Gate::And => a && b,
            Gate::Or => a || b,
            Gate::Xor => a != b,
        };
        let pm = |t: bool| if t { 1.0 } else { -1.0 };
        [
            pm(f(false, false)),
            pm(f(false, true)),
            pm(f(true, false)),
            pm(f(true, true)),
        ]
    }
}

/// The perceptron's settings in the examples: η = 0.1 from zero weights (θ = 0 too).
pub const PERCEPTRON_LR: f32 = 0.1;

/// Trains the perceptron on a logic gate (at most `max_epochs` epochs, from zero weights).
pub fn perceptron_gate(device: Device<'_>, gate: Gate, max_epochs: usize) -> Result<PerceptronRun> {
    perceptron::train(
        device,
        &TRUTH_INPUTS,
        2,
        &gate.targets(),
        PERCEPTRON_LR,
        max_epochs,
        &[0.0; 3],
    )
}

/// Iris setosa (class 0, target −1) against versicolor (class 1, target +1): the first 100
/// rows of the bundled iris table, raw centimetres, 4 features. Returns `(x, targets)`.
pub fn iris_setosa_versicolor() -> Result<(Vec<f32>, Vec<f32>)> {
    let iris = data::bundled("iris")?;
    let labels = iris
        .labels()
        .ok_or_else(|| Error::Data("iris: expected class labels".into()))?;
    if iris.len() < 100 || labels[..100].iter().any(|&l| l > 1) {
        return Err(Error::Data(
            "iris: expected setosa (0) and versicolor (1) in the first 100 rows".into(),
        ));
    }
    let x = iris.features[..100 * iris.width].to_vec();
    let t = labels[..100]
        .iter()
        .map(|&l| if l == 1 { 1.0 } else { -1.0 })
        .collect();
    Ok((x, t))
}

/// Trains the perceptron on iris setosa against versicolor, from zero weights.
pub fn perceptron_iris(device: Device<'_>, max_epochs: usize) -> Result<PerceptronRun> {
    let (x, t) = iris_setosa_versicolor()?;
    perceptron::train(device, &x, 4, &t, PERCEPTRON_LR, max_epochs, &[0.0; 5])
}

// ---------------------------------------------------------------------------------------
// The neuron and the hand-set XOR network

/// The example neuron's three synaptic weights (dyadic fractions, so every sum is exact in
/// f32 and both paths must agree to the bit).
pub const NEURON_WEIGHTS: [f32; 3] = [0.5, 0.25, 0.75];
/// The example neuron's bias.
pub const NEURON_BIAS: f32 = -0.5;
/// Two input vectors (2 x 3): one that makes the neuron fire and one that does not.
pub const NEURON_INPUTS: [f32; 6] = [1.0, -2.0, 3.0, -1.0, 2.0, -3.0];

/// The lecture's `Neuron.forward` in plain Rust, for one input vector:
/// `max(np.sum(inputs * weights) + bias, 0)`.
pub fn neuron_forward(inputs: &[f32], weights: &[f32], bias: f32) -> f32 {
    let cell_body_sum = inputs.iter().zip(weights).map(|(x, w)| x * w).sum::<f32>() + bias;
    cell_body_sum.max(0.0)
}

/// The lecture's `Neuron`: one unit, `max(Σ inputs·weights + bias, 0)`, as a soma model
/// with a single ReLU layer of one output.
pub fn neuron(weights: &[f32], bias: f32) -> Result<Model> {
    let net = Network {
        layers: vec![Layer {
            inputs: weights.len(),
            outputs: 1,
            activation: Activation::Relu,
            bias: true,
        }],
    };
    Model::with_params(
        net,
        Parameters {
            layers: vec![LayerParams {
                weight: weights.to_vec(),
                bias: Some(vec![bias]),
            }],
        },
    )
}

/// The lecture's hand-set XOR network: `y = W2ᵀ max(0, W1ᵀx + θ1) + θ2` with
/// W1 = [[1, 1], [1, 1]], θ1 = [0, −1], W2 = [1, −2], θ2 = 0; ReLU hidden, linear output.
///
/// soma stores a layer's weight as (outputs, inputs) and computes `x·Wᵀ + b` per row; the
/// lecture writes `W1ᵀx` (and, on its slide, `W1 X`). Both give the same numbers here
/// because W1 is symmetric, and W2 (2 x 1 in the lecture) is the single row [1, −2] in
/// soma's layout.
pub fn xor_by_hand() -> Result<Model> {
    let net = Network {
        layers: vec![
            Layer {
                inputs: 2,
                outputs: 2,
                activation: Activation::Relu,
                bias: true,
            },
            Layer {
                inputs: 2,
                outputs: 1,
                activation: Activation::Identity,
                bias: true,
            },
        ],
    };
    Model::with_params(
        net,
        Parameters {
            layers: vec![
                LayerParams {
                    weight: vec![1.0, 1.0, 1.0, 1.0],
                    bias: Some(vec![0.0, -1.0]),
                },
                LayerParams {
                    weight: vec![1.0, -2.0],
                    bias: Some(vec![0.0]),
                },
            ],
        },
    )
}
