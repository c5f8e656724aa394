//! Activations (`shaders/activation.wgsl`): the [`Activation`] enum with the code the
//! kernels switch on, the bias add fused with the activation (forward), and the derivative
//! applied to an incoming delta (backward). The same formulas serve the fused MLP pass, which
//! copies the functions between the file's BEGIN/END markers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::Dispatch;
use crate::params::params_struct;
use crate::tensor::GpuTensor;

use super::{dispatch, expect_len, expect_shape, grid_1d, matrix, u32_of, Kernel, Kernels};

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
    /// GELU in its tanh form (PyTorch's `GELU(approximate="tanh")`):
    /// `0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))`.
    Gelu,
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
            Activation::Gelu => 7,
        }
    }

    /// The activation a kernel's `kind` code and `slope` stand for; an error for a code no
    /// activation has.
    pub fn decode(code: u32, slope: f32) -> Result<Activation> {
        Ok(match Activation::try_from(code)? {
            Activation::LeakyRelu { .. } => Activation::LeakyRelu { slope },
            other @ (Activation::Identity
            | Activation::Relu
            | Activation::Sigmoid
            | Activation::Tanh
            | Activation::Sign
            | Activation::Step
            | Activation::Gelu) => other,
        })
    }

    /// The negative-side slope (leaky ReLU only; 0 otherwise).
    pub fn slope(self) -> f32 {
        match self {
            Activation::LeakyRelu { slope } => slope,
            Activation::Identity
            | Activation::Relu
            | Activation::Sigmoid
            | Activation::Tanh
            | Activation::Sign
            | Activation::Step
            | Activation::Gelu => 0.0,
        }
    }

    /// Every activation, leaky ReLU with PyTorch's default slope 0.01.
    pub const ALL: [Activation; 8] = [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu { slope: 0.01 },
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Sign,
        Activation::Step,
        Activation::Gelu,
    ];

    /// Whether backprop through it carries a gradient (sign and step have none).
    pub fn is_differentiable(self) -> bool {
        match self {
            Activation::Sign | Activation::Step => false,
            Activation::Identity
            | Activation::Relu
            | Activation::LeakyRelu { .. }
            | Activation::Sigmoid
            | Activation::Tanh
            | Activation::Gelu => true,
        }
    }

    /// Whether it flattens out on both sides, so that a unit driven far from 0 passes almost
    /// no gradient (sigmoid, tanh): what the lecture's XOR diagnosis looks for.
    pub fn saturates(self) -> bool {
        match self {
            Activation::Sigmoid | Activation::Tanh => true,
            Activation::Identity
            | Activation::Relu
            | Activation::LeakyRelu { .. }
            | Activation::Sign
            | Activation::Step
            | Activation::Gelu => false,
        }
    }
}

impl TryFrom<u32> for Activation {
    type Error = Error;
    /// The activation of a `kind` code (leaky ReLU with PyTorch's default slope; see
    /// [`Activation::decode`] for the slope a kernel was given).
    fn try_from(code: u32) -> Result<Activation> {
        Activation::ALL
            .into_iter()
            .find(|a| a.code() == code)
            .ok_or_else(|| Error::Config(format!("no activation has the kernel code {code}")))
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
            Activation::Gelu => write!(f, "gelu"),
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
            "gelu" | "gelu_tanh" => Activation::Gelu,
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
                        "unknown activation '{other}' (known: identity, relu, leaky_relu[:slope], sigmoid, tanh, sign, step, gelu)"
                    )));
                }
            }
        })
    }
}

impl Serialize for Activation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Activation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

params_struct! {
    /// An element-wise activation over a `(rows, cols)` matrix.
    ActivationParams {
        rows: u32,
        cols: u32,
        /// [`crate::Activation::code`].
        kind: u32,
        /// 1 when a bias row is added first (bias-add forward only).
        has_bias: u32,
        /// Negative-side slope of leaky ReLU.
        slope: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

fn activation_params(
    rows: usize,
    cols: usize,
    act: Activation,
    has_bias: bool,
) -> ActivationParams {
    ActivationParams {
        rows: rows as u32,
        cols: cols as u32,
        kind: act.code(),
        has_bias: has_bias as u32,
        slope: act.slope(),
        ..Default::default()
    }
}

/// `pre += bias` (when given) and `out = act(pre)`, over `(rows, cols)`; `bias` has `cols`
/// values. Without a bias, pass a placeholder of any size through `bias_or_dummy`.
pub fn bias_activation_forward(
    k: &Kernels,
    out: &GpuTensor,
    pre: &GpuTensor,
    bias: Option<&GpuTensor>,
    dummy: &GpuTensor,
    act: Activation,
) -> Result<Dispatch> {
    let op = "bias_activation_forward";
    let (rows, cols) = matrix(op, pre)?;
    expect_shape(op, out, (rows, cols))?;
    if let Some(b) = bias {
        expect_len(op, b, cols)?;
    }
    u32_of(op, "rows*cols", rows * cols)?;
    let p = activation_params(rows, cols, act, bias.is_some());
    let bias = bias.unwrap_or(dummy);
    // vec4 when rows are whole vec4s (and the bias binding holds at least one).
    let (kernel, lanes) = if cols.is_multiple_of(4) && bias.len() >= 4 {
        (Kernel::BiasActivationForwardVec4, rows * cols / 4)
    } else {
        (Kernel::BiasActivationForward, rows * cols)
    };
    dispatch(k, kernel, &[out, pre, bias], &[p], grid_1d(k.gpu(), lanes))
}

/// `dpre = dout * act'(pre)`, element-wise over `(rows, cols)`.
pub fn activation_backward(
    k: &Kernels,
    dpre: &GpuTensor,
    dout: &GpuTensor,
    pre: &GpuTensor,
    act: Activation,
) -> Result<Dispatch> {
    let op = "activation_backward";
    let (rows, cols) = matrix(op, pre)?;
    expect_shape(op, dpre, (rows, cols))?;
    expect_shape(op, dout, (rows, cols))?;
    u32_of(op, "rows*cols", rows * cols)?;
    let p = activation_params(rows, cols, act, false);
    let (kernel, lanes) = if (rows * cols).is_multiple_of(4) {
        (Kernel::ActivationBackwardVec4, rows * cols / 4)
    } else {
        (Kernel::ActivationBackward, rows * cols)
    };
    dispatch(k, kernel, &[dpre, dout, pre], &[p], grid_1d(k.gpu(), lanes))
}

/// The twins: plain loops with the kernels' formulas.
pub mod cpu {
    use super::*;
    use crate::math::Math;

    /// The logistic function in its overflow-free form.
    pub fn sigmoid(z: f32, math: Math) -> f32 {
        if z >= 0.0 {
            math.div(1.0, 1.0 + math.exp(-z))
        } else {
            let e = math.exp(z);
            math.div(e, 1.0 + e)
        }
    }

    /// tanh in the overflow-free form the shader uses.
    pub fn tanh_stable(z: f32, math: Math) -> f32 {
        let t = math.exp(-2.0 * z.abs());
        let r = math.div(1.0 - t, 1.0 + t);
        if z < 0.0 {
            -r
        } else {
            r
        }
    }

    /// The activation with code `kind` (see [`Activation::code`]); NaN for a code no
    /// activation has, so that a bad code cannot pass for a result.
    pub fn activate(kind: u32, slope: f32, z: f32, math: Math) -> f32 {
        Activation::decode(kind, slope).map_or(f32::NAN, |a| apply(a, z, math))
    }

    /// Its derivative at the pre-activation `z` (0 for sign and step); NaN for an unknown code.
    pub fn derivative(kind: u32, slope: f32, z: f32, math: Math) -> f32 {
        Activation::decode(kind, slope).map_or(f32::NAN, |a| derivative_of(a, z, math))
    }

    /// `act(z)`, with the kernel's formula.
    #[inline(always)]
    pub fn apply(act: Activation, z: f32, math: Math) -> f32 {
        match act {
            Activation::Identity => z,
            Activation::Relu => z.max(0.0),
            Activation::LeakyRelu { slope } => {
                if z > 0.0 {
                    z
                } else {
                    z * slope
                }
            }
            Activation::Sigmoid => sigmoid(z, math),
            Activation::Tanh => tanh_stable(z, math),
            Activation::Sign => {
                if z >= 0.0 {
                    1.0
                } else {
                    -1.0
                }
            }
            Activation::Step => {
                if z >= 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Gelu => 0.5 * z * (1.0 + tanh_stable(gelu_inner(z), math)),
        }
    }

    /// sqrt(2 / pi), as the kernel's literal rounds it.
    const GELU_BETA: f32 = 0.797_884_6;
    /// The cubic term's factor in GELU's tanh form.
    const GELU_KAPPA: f32 = 0.044715;
    /// `3 * 0.044715` as the kernel's `3.0 * 0.044715` folds it: in WGSL's abstract float,
    /// rounded to f32 once (`3.0 * GELU_KAPPA` in f32 is one ULP lower).
    const GELU_3_KAPPA: f32 = f32::from_bits(0x3e09_5d4f);

    /// GELU's tanh argument `sqrt(2/pi) (z + 0.044715 z^3)`, in the kernel's order.
    fn gelu_inner(z: f32) -> f32 {
        GELU_BETA * (z + GELU_KAPPA * (z * z * z))
    }

    /// `act'(z)`, with the kernel's formula.
    #[inline(always)]
    pub fn derivative_of(act: Activation, z: f32, math: Math) -> f32 {
        match act {
            Activation::Identity => 1.0,
            Activation::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::LeakyRelu { slope } => {
                if z > 0.0 {
                    1.0
                } else {
                    slope
                }
            }
            Activation::Sigmoid => {
                let s = sigmoid(z, math);
                s * (1.0 - s)
            }
            Activation::Tanh => {
                let t = tanh_stable(z, math);
                1.0 - t * t
            }
            Activation::Sign | Activation::Step => 0.0,
            // d/dz 0.5 z (1 + t) = 0.5 (1 + t) + 0.5 z (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 z^2)
            Activation::Gelu => {
                let t = tanh_stable(gelu_inner(z), math);
                let inner_derivative = GELU_BETA * (1.0 + GELU_3_KAPPA * (z * z));
                0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * inner_derivative
            }
        }
    }

    /// `pre += bias` (when `has_bias`), `out = act(pre)`.
    pub fn bias_activation_forward(
        out: &mut [f32],
        pre: &mut [f32],
        bias: &[f32],
        p: &ActivationParams,
        math: Math,
    ) {
        let (rows, cols) = (p.rows as usize, p.cols as usize);
        // Decoded once: an unknown code gives NaN outputs, never a silent identity.
        let Ok(act) = Activation::decode(p.kind, p.slope) else {
            out[..rows * cols].fill(f32::NAN);
            return;
        };
        for i in 0..rows * cols {
            let mut z = pre[i];
            if p.has_bias != 0 {
                z += bias[i % cols];
                pre[i] = z;
            }
            out[i] = apply(act, z, math);
        }
    }

    /// `dpre = dout * act'(pre)`.
    pub fn activation_backward(
        dpre: &mut [f32],
        dout: &[f32],
        pre: &[f32],
        p: &ActivationParams,
        math: Math,
    ) {
        let len = (p.rows * p.cols) as usize;
        let Ok(act) = Activation::decode(p.kind, p.slope) else {
            dpre[..len].fill(f32::NAN);
            return;
        };
        for i in 0..len {
            dpre[i] = dout[i] * derivative_of(act, pre[i], math);
        }
    }

    /// Twin of `bias_activation_forward_vec4`: [`bias_activation_forward`].
    pub fn bias_activation_forward_vec4(
        out: &mut [f32],
        pre: &mut [f32],
        bias: &[f32],
        p: &ActivationParams,
        math: Math,
    ) {
        bias_activation_forward(out, pre, bias, p, math)
    }

    /// Twin of `activation_backward_vec4`: [`activation_backward`].
    pub fn activation_backward_vec4(
        dpre: &mut [f32],
        dout: &[f32],
        pre: &[f32],
        p: &ActivationParams,
        math: Math,
    ) {
        activation_backward(dpre, dout, pre, p, math)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_errors() {
        for a in Activation::ALL {
            assert_eq!(Activation::decode(a.code(), a.slope()).unwrap(), a);
            assert_eq!(a.to_string().parse::<Activation>().unwrap(), a);
        }
        let codes: Vec<u32> = Activation::ALL.iter().map(|a| a.code()).collect();
        let unknown = codes.iter().max().unwrap() + 1;
        assert!(Activation::try_from(unknown).is_err());
        assert!(cpu::activate(unknown, 0.0, 1.0, crate::math::Math::Native).is_nan());
        assert!(cpu::derivative(unknown, 0.0, 1.0, crate::math::Math::Native).is_nan());
    }
}
