//! Activations (and, with the training engine, layers and parameter shapes). Host-side
//! descriptions only: no buffers live here.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A layer's non-linearity. `code()` is the value the WGSL kernels switch on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    /// max(z, 0) + slope * min(z, 0).
    LeakyRelu {
        slope: f32,
    },
    Sigmoid,
    Tanh,
    /// The perceptron's: 1 when z >= 0, else -1.
    Sign,
    /// 1 when z >= 0, else 0.
    Step,
}

impl Activation {
    /// The `kind` code in `shaders/activation.wgsl`.
    pub fn code(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::LeakyRelu { .. } => 2,
            Activation::Sigmoid => 3,
            Activation::Tanh => 4,
            Activation::Sign => 5,
            Activation::Step => 6,
        }
    }

    /// The negative-side slope (leaky ReLU only; 0 otherwise).
    pub fn slope(self) -> f32 {
        match self {
            Activation::LeakyRelu { slope } => slope,
            _ => 0.0,
        }
    }

    /// Every activation, leaky ReLU with PyTorch's default slope 0.01.
    pub const ALL: [Activation; 7] = [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu { slope: 0.01 },
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Sign,
        Activation::Step,
    ];

    /// Whether backprop through it carries a gradient (sign and step have none).
    pub fn is_differentiable(self) -> bool {
        !matches!(self, Activation::Sign | Activation::Step)
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activation::Identity => write!(f, "identity"),
            Activation::Relu => write!(f, "relu"),
            Activation::LeakyRelu { slope } => write!(f, "leaky_relu:{slope}"),
            Activation::Sigmoid => write!(f, "sigmoid"),
            Activation::Tanh => write!(f, "tanh"),
            Activation::Sign => write!(f, "sign"),
            Activation::Step => write!(f, "step"),
        }
    }
}

impl FromStr for Activation {
    type Err = Error;
    /// `identity`/`linear`, `relu`, `leaky_relu` (slope 0.01) or `leaky_relu:SLOPE`,
    /// `sigmoid`, `tanh`, `sign`, `step`.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Ok(match s.as_str() {
            "identity" | "linear" | "none" => Activation::Identity,
            "relu" => Activation::Relu,
            "leaky_relu" | "leakyrelu" => Activation::LeakyRelu { slope: 0.01 },
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "sign" => Activation::Sign,
            "step" => Activation::Step,
            other => {
                if let Some(v) = other.strip_prefix("leaky_relu:") {
                    let slope: f32 = v.parse().map_err(|_| {
                        Error::Config(format!("leaky_relu slope '{v}' is not a number"))
                    })?;
                    if !slope.is_finite() {
                        return Err(Error::Config(format!(
                            "leaky_relu slope {slope} is not finite"
                        )));
                    }
                    Activation::LeakyRelu { slope }
                } else {
                    return Err(Error::Config(format!(
                        "unknown activation '{other}' (known: identity, relu, leaky_relu[:slope], sigmoid, tanh, sign, step)"
                    )));
                }
            }
        })
    }
}
