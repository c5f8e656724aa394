//! The network on the host: activations, dense layers, the architecture, and the parameter
//! values with their seeded, portable initialisation. No buffers live here; the trainer
//! copies parameters to wherever they train.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::ops::activation::Activation;
use crate::rng::Rng;

/// One dense layer: `y = act(x · Wᵀ + b)`, W of shape (outputs, inputs) as in PyTorch's
/// `nn.Linear`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    pub activation: Activation,
    /// Whether the layer has a bias (the lecture's softmax classifier has none).
    pub bias: bool,
}

/// A feedforward stack of dense layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub layers: Vec<Layer>,
}

impl Network {
    /// A multi-layer perceptron from its widths (`[inputs, hidden..., outputs]`), with
    /// `hidden` on every hidden layer and `output` on the last, all with biases.
    pub fn mlp(widths: &[usize], hidden: Activation, output: Activation) -> Result<Network> {
        let net = Network::mlp_unchecked(widths, hidden, output)?;
        net.validate()?;
        Ok(net)
    }

    fn mlp_unchecked(widths: &[usize], hidden: Activation, output: Activation) -> Result<Network> {
        if widths.len() < 2 {
            return Err(Error::Config(format!(
                "a network needs at least an input and an output width, got {widths:?}"
            )));
        }
        if let Some(i) = widths.iter().position(|&w| w == 0) {
            return Err(Error::Config(format!("layer width {i} of {widths:?} is 0")));
        }
        let last = widths.len() - 2;
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| Layer {
                inputs: w[0],
                outputs: w[1],
                activation: if i == last { output } else { hidden },
                bias: true,
            })
            .collect();
        Ok(Network { layers })
    }

    /// Checks that consecutive layers fit together.
    pub fn validate(&self) -> Result<()> {
        if self.layers.is_empty() {
            return Err(Error::Config("a network needs at least one layer".into()));
        }
        for (i, l) in self.layers.iter().enumerate() {
            if l.inputs == 0 || l.outputs == 0 {
                return Err(Error::Config(format!("layer {i} has a zero width")));
            }
            if i > 0 && self.layers[i - 1].outputs != l.inputs {
                return Err(Error::Config(format!(
                    "layer {i} takes {} inputs but layer {} gives {}",
                    l.inputs,
                    i - 1,
                    self.layers[i - 1].outputs
                )));
            }
            // Kernels index a tensor with 32-bit integers.
            let weights = (l.inputs as u64).checked_mul(l.outputs as u64);
            if weights.is_none_or(|w| w > MAX_TENSOR_ELEMENTS) {
                return Err(Error::Config(format!(
                    "layer {i}: a {} x {} weight is over the {MAX_TENSOR_ELEMENTS} values a tensor may hold",
                    l.outputs, l.inputs
                )));
            }
        }
        if self.parameter_bytes().is_none() {
            return Err(Error::Config(
                "the network's parameters do not fit in this machine's address space".into(),
            ));
        }
        Ok(())
    }

    /// The bytes of the network's parameters (f32), or `None` if they would overflow.
    pub fn parameter_bytes(&self) -> Option<u64> {
        self.layers.iter().try_fold(0u64, |sum, l| {
            let w = (l.inputs as u64).checked_mul(l.outputs as u64)?;
            let b = if l.bias { l.outputs as u64 } else { 0 };
            let bytes = w.checked_add(b)?.checked_mul(4)?;
            sum.checked_add(bytes).filter(|&t| t <= isize::MAX as u64)
        })
    }

    pub fn input_width(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    pub fn output_width(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// The widths, input first: `[inputs, hidden..., outputs]`.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.input_width()];
        w.extend(self.layers.iter().map(|l| l.outputs));
        w
    }

    /// The number of trainable values.
    pub fn parameter_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.inputs * l.outputs + if l.bias { l.outputs } else { 0 })
            .sum()
    }
}

/// The most values one tensor may hold: kernels index tensors with 32-bit integers.
pub const MAX_TENSOR_ELEMENTS: u64 = u32::MAX as u64;

/// How initial weights are drawn. All draws use the portable [`Rng`], so a seed gives the
/// same weights on every machine and both paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// PyTorch's `nn.Linear` default: W and b from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    #[default]
    Pytorch,
    /// Glorot/Xavier uniform: W from U(-a, a), a = sqrt(6 / (fan_in + fan_out)); b = 0.
    Xavier,
    /// He/Kaiming uniform for ReLU: W from U(-a, a), a = sqrt(6 / fan_in); b = 0.
    He,
}

impl FromStr for Init {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "pytorch" | "default" | "torch" => Ok(Init::Pytorch),
            "xavier" | "glorot" => Ok(Init::Xavier),
            "he" | "kaiming" => Ok(Init::He),
            _ => Err(Error::Config(format!(
                "unknown init '{s}' (known: pytorch, xavier, he)"
            ))),
        }
    }
}

/// The values of one layer's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerParams {
    pub weight: Vec<f32>,       // (outputs, inputs)
    pub bias: Option<Vec<f32>>, // (outputs)
}

/// The values of every parameter of a network, layer by layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Parameters {
    pub layers: Vec<LayerParams>,
}

impl Parameters {
    /// Seeded initial values: for each layer in order, the weight row by row, then the bias.
    pub fn init(net: &Network, init: Init, seed: u64) -> Parameters {
        let mut rng = Rng::new(seed);
        let layers = net
            .layers
            .iter()
            .map(|l| {
                let fan_in = l.inputs as f32;
                let fan_out = l.outputs as f32;
                let (w_bound, b_bound) = match init {
                    Init::Pytorch => (1.0 / fan_in.sqrt(), 1.0 / fan_in.sqrt()),
                    Init::Xavier => ((6.0 / (fan_in + fan_out)).sqrt(), 0.0),
                    Init::He => ((6.0 / fan_in).sqrt(), 0.0),
                };
                let weight = (0..l.inputs * l.outputs)
                    .map(|_| rng.uniform_range(-w_bound, w_bound))
                    .collect();
                let bias = l.bias.then(|| {
                    (0..l.outputs)
                        .map(|_| {
                            if b_bound == 0.0 {
                                0.0
                            } else {
                                rng.uniform_range(-b_bound, b_bound)
                            }
                        })
                        .collect()
                });
                LayerParams { weight, bias }
            })
            .collect();
        Parameters { layers }
    }

    /// Checks the values against the network's shapes; `source` names where they came from.
    pub fn check(&self, net: &Network, source: &str) -> Result<()> {
        if self.layers.len() != net.layers.len() {
            return Err(Error::Config(format!(
                "{source}: {} layers of parameters for a network of {} layers",
                self.layers.len(),
                net.layers.len()
            )));
        }
        for (i, (p, l)) in self.layers.iter().zip(&net.layers).enumerate() {
            if p.weight.len() != l.inputs * l.outputs {
                return Err(Error::shape(
                    format!("{source}: layers.{i}.weight"),
                    format!("[{}, {}]", l.outputs, l.inputs),
                    format!("{} values", p.weight.len()),
                ));
            }
            match (&p.bias, l.bias) {
                (Some(b), true) if b.len() == l.outputs => {}
                (None, false) => {}
                (b, _) => {
                    return Err(Error::shape(
                        format!("{source}: layers.{i}.bias"),
                        if l.bias {
                            format!("[{}]", l.outputs)
                        } else {
                            "no bias".into()
                        },
                        b.as_ref()
                            .map_or("none".to_string(), |b| format!("{} values", b.len())),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Every parameter tensor in order (weight, then bias, per layer), with its name in
    /// PyTorch's `nn.Linear` layout: `layers.{i}.weight` `[out, in]`, `layers.{i}.bias` `[out]`.
    pub fn named(&self, net: &Network) -> Vec<(String, Vec<usize>, &[f32])> {
        let mut out = Vec::new();
        for (i, (p, l)) in self.layers.iter().zip(&net.layers).enumerate() {
            out.push((
                format!("layers.{i}.weight"),
                vec![l.outputs, l.inputs],
                &p.weight[..],
            ));
            if let Some(b) = &p.bias {
                out.push((format!("layers.{i}.bias"), vec![l.outputs], &b[..]));
            }
        }
        out
    }
}
