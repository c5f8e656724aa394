//! Optimizers (`shaders/optim.wgsl`): the hyper-parameters ([`Optimizer`], PyTorch's names
//! and defaults), the update rules ([`UpdateRule`]: state names, kernel, per-step uniform),
//! the one recorder that dispatches any rule over any parameter tensor (or over the whole
//! parameter arena at once), and the twins. Every rule is element-wise, so the same kernel
//! updates one tensor or every tensor of the arena with the same bits.
//!
//! The formulas (PyTorch's, per element; `wd` is the weight decay):
//! - `sgd_update`: `g = grad + wd p; p -= lr g`
//! - `momentum_update`: `g = grad + wd p; v = momentum v + g; p -= lr v` (PyTorch's buffer
//!   starts at `g` on the first step; starting `v` at 0 gives the same value)
//! - `adam_update`: Adam `g = grad + wd p` or AdamW `p *= 1 - lr wd`; then
//!   `m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;`
//!   `p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)`, with `bc1 = 1 - beta1^t` and
//!   `bc2 = 1 - beta2^t` from the host.
//! - `rmsprop_update`: `g = grad + wd p; s = alpha s + (1 - alpha) g^2;` centered:
//!   `a = a + (1 - alpha) (g - a); d = sqrt(s - a^2) + eps`, else `d = sqrt(s) + eps`; with
//!   momentum `b = momentum b + g / d; p -= lr b`, else `p -= lr (g / d)`.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::Dispatch;
use crate::params::params_struct;
use crate::tensor::GpuTensor;

use super::{dispatch, expect_len, grid_1d, u32_of, Kernel, Kernels};

params_struct! {
    /// One step of an update rule over `len` elements; each rule reads the fields it uses.
    OptimParams {
        len: u32,
        lr: f32,
        /// L2 penalty added to the gradient, or AdamW's decoupled decay.
        weight_decay: f32,
        /// Momentum factor (momentum).
        momentum: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        /// 1 - beta1^t for the step t being taken (Adam).
        bias_correction1: f32,
        /// 1 - beta2^t.
        bias_correction2: f32,
        /// 1: AdamW's decoupled decay; 0: the decay is an L2 term of the gradient.
        decoupled: u32,
        /// RMSprop's smoothing constant.
        alpha: f32,
        /// 1 - alpha, computed in f64 and rounded once, as PyTorch passes it.
        one_minus_alpha: f32,
        /// 1: RMSprop normalises by the centered second moment.
        centered: u32,
        /// 1 - beta1 and 1 - beta2, computed in f64 and rounded once, as PyTorch passes them
        /// (1 - 0.999f32 in f32 would be 0.00099998713, not 0.001).
        one_minus_beta1: f32,
        one_minus_beta2: f32,
        _pad0: u32,
    }
}

/// An update rule: what one optimizer step does to a parameter tensor, given its gradient.
/// It owns its state tensors' names, its kernel and its per-step parameters; PyTorch's
/// semantics throughout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateRule {
    Sgd,
    /// SGD with momentum, PyTorch's form.
    Momentum,
    Adam,
    /// Adam with decoupled weight decay.
    AdamW,
    /// RMSprop (alpha, eps, optional momentum, centered).
    RmsProp,
}

impl UpdateRule {
    /// Every rule.
    pub const ALL: [UpdateRule; 5] = [
        UpdateRule::Sgd,
        UpdateRule::Momentum,
        UpdateRule::Adam,
        UpdateRule::AdamW,
        UpdateRule::RmsProp,
    ];

    /// The state tensors the rule keeps per parameter tensor, by the names a checkpoint
    /// stores them under (`optimizer.layers.0.weight.m`).
    pub fn state_names(self) -> &'static [&'static str] {
        match self {
            UpdateRule::Sgd => &[],
            UpdateRule::Momentum => &["velocity"],
            UpdateRule::Adam | UpdateRule::AdamW => &["m", "v"],
            // PyTorch's names; the momentum buffer and the gradient average stay zeros
            // unless momentum or centering is on.
            UpdateRule::RmsProp => &["square_avg", "momentum_buffer", "grad_avg"],
        }
    }

    /// The entry point in `shaders/optim.wgsl` (the vec4 form for lengths that are a
    /// multiple of 4). Its bindings: the parameter, each state tensor in `state_names`
    /// order (all read-write), the gradient (read), then the `OptimParams` uniform.
    pub fn entry_point(self, vec4: bool) -> &'static str {
        match (self, vec4) {
            (UpdateRule::Sgd, false) => "sgd_update",
            (UpdateRule::Sgd, true) => "sgd_update_vec4",
            (UpdateRule::Momentum, false) => "momentum_update",
            (UpdateRule::Momentum, true) => "momentum_update_vec4",
            (UpdateRule::Adam | UpdateRule::AdamW, false) => "adam_update",
            (UpdateRule::Adam | UpdateRule::AdamW, true) => "adam_update_vec4",
            (UpdateRule::RmsProp, false) => "rmsprop_update",
            (UpdateRule::RmsProp, true) => "rmsprop_update_vec4",
        }
    }

    /// Whether the uniform changes from step to step within an epoch (Adam's bias
    /// corrections), so that an epoch needs one entry per step rather than one.
    pub fn varies_per_step(self) -> bool {
        match self {
            UpdateRule::Sgd | UpdateRule::Momentum | UpdateRule::RmsProp => false,
            UpdateRule::Adam | UpdateRule::AdamW => true,
        }
    }

    /// The uniform of step `t` (1-based, counted over the whole run) at learning rate `lr`,
    /// for `opt`'s hyper-parameters; `len` is filled in by the recorder. Adam's bias
    /// corrections are computed in f64 and rounded once, as PyTorch does in Python.
    pub fn step_params(self, opt: &Optimizer, lr: f32, t: u64) -> OptimParams {
        let base = OptimParams {
            lr,
            weight_decay: opt.weight_decay,
            ..Default::default()
        };
        match self {
            UpdateRule::Sgd => base,
            UpdateRule::Momentum => OptimParams {
                momentum: opt.momentum,
                ..base
            },
            UpdateRule::Adam | UpdateRule::AdamW => {
                let t = t.min(i32::MAX as u64) as i32;
                OptimParams {
                    beta1: opt.beta1 as f32,
                    beta2: opt.beta2 as f32,
                    one_minus_beta1: (1.0 - opt.beta1) as f32,
                    one_minus_beta2: (1.0 - opt.beta2) as f32,
                    eps: opt.eps,
                    bias_correction1: (1.0 - opt.beta1.powi(t)) as f32,
                    bias_correction2: (1.0 - opt.beta2.powi(t)) as f32,
                    decoupled: (self == UpdateRule::AdamW) as u32,
                    ..base
                }
            }
            UpdateRule::RmsProp => OptimParams {
                momentum: opt.momentum,
                eps: opt.eps,
                alpha: opt.alpha,
                one_minus_alpha: (1.0 - as_typed(opt.alpha)) as f32,
                centered: opt.centered as u32,
                ..base
            },
        }
    }
}

/// The f64 a user meant by `x`: the double nearest its shortest decimal form (0.99f32 ->
/// 0.99), which is what PyTorch computes `1 - alpha` from (a Python float).
fn as_typed(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

impl FromStr for UpdateRule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" => Ok(UpdateRule::Sgd),
            "momentum" => Ok(UpdateRule::Momentum),
            "adam" => Ok(UpdateRule::Adam),
            "adamw" => Ok(UpdateRule::AdamW),
            "rmsprop" => Ok(UpdateRule::RmsProp),
            _ => Err(Error::Config(format!(
                "unknown optimizer '{s}' (known: sgd, momentum, adam, adamw, rmsprop)"
            ))),
        }
    }
}

impl std::fmt::Display for UpdateRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpdateRule::Sgd => "sgd",
            UpdateRule::Momentum => "momentum",
            UpdateRule::Adam => "adam",
            UpdateRule::AdamW => "adamw",
            UpdateRule::RmsProp => "rmsprop",
        })
    }
}

/// An optimizer and its hyper-parameters (PyTorch's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Optimizer {
    pub kind: UpdateRule,
    pub lr: f32,
    /// Momentum factor (momentum, RMSprop).
    pub momentum: f32,
    /// Adam's decay rates, held in f64 as PyTorch holds them (Python floats): the kernels
    /// get them, and 1 - beta, each rounded to f32 once.
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f32,
    /// L2 penalty (SGD, momentum, Adam, RMSprop) or decoupled decay (AdamW).
    pub weight_decay: f32,
    /// RMSprop's smoothing constant.
    #[serde(default = "default_alpha")]
    pub alpha: f32,
    /// RMSprop normalises by the centered second moment (an estimate of the variance).
    #[serde(default)]
    pub centered: bool,
}

/// Adam with PyTorch's defaults (lr 1e-3), as `soma train` trains.
impl Default for Optimizer {
    fn default() -> Optimizer {
        Optimizer::new(UpdateRule::Adam)
    }
}

/// PyTorch's RMSprop alpha (and what optimizers saved before it existed read as).
fn default_alpha() -> f32 {
    0.99
}

impl Optimizer {
    /// The kind with PyTorch's defaults (SGD and momentum have no default lr in PyTorch;
    /// 0.01 here). AdamW's default weight decay is 0.01, the others' 0; RMSprop's momentum
    /// is 0, momentum's 0.9.
    pub fn new(kind: UpdateRule) -> Optimizer {
        let lr = match kind {
            UpdateRule::Sgd | UpdateRule::Momentum | UpdateRule::RmsProp => 0.01,
            UpdateRule::Adam | UpdateRule::AdamW => 1e-3,
        };
        Optimizer {
            kind,
            lr,
            momentum: if kind == UpdateRule::RmsProp {
                0.0
            } else {
                0.9
            },
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: if kind == UpdateRule::AdamW { 0.01 } else { 0.0 },
            alpha: default_alpha(),
            centered: false,
        }
    }

    /// RMSprop with PyTorch's defaults but the learning rate.
    pub fn rmsprop(lr: f32) -> Optimizer {
        Optimizer {
            lr,
            ..Optimizer::new(UpdateRule::RmsProp)
        }
    }

    pub fn sgd(lr: f32) -> Optimizer {
        Optimizer {
            lr,
            ..Optimizer::new(UpdateRule::Sgd)
        }
    }

    pub fn momentum(lr: f32, momentum: f32) -> Optimizer {
        Optimizer {
            lr,
            momentum,
            ..Optimizer::new(UpdateRule::Momentum)
        }
    }

    pub fn adam(lr: f32) -> Optimizer {
        Optimizer {
            lr,
            ..Optimizer::new(UpdateRule::Adam)
        }
    }

    pub fn adamw(lr: f32, weight_decay: f32) -> Optimizer {
        Optimizer {
            lr,
            weight_decay,
            ..Optimizer::new(UpdateRule::AdamW)
        }
    }

    pub fn with_weight_decay(self, weight_decay: f32) -> Optimizer {
        Optimizer {
            weight_decay,
            ..self
        }
    }

    /// Rejects values that cannot train (non-finite or negative rates, betas outside [0, 1)).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32| Err(Error::Config(format!("{what} = {v} is out of range")));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("learning rate", self.lr);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay", self.weight_decay);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", self.momentum);
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad(
                "beta1/beta2",
                if (0.0..1.0).contains(&self.beta1) {
                    self.beta2 as f32
                } else {
                    self.beta1 as f32
                },
            );
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", self.eps);
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return bad("alpha", self.alpha);
        }
        Ok(())
    }
}

impl Optimizer {
    /// The state tensors each parameter tensor carries (see [`UpdateRule::state_names`]).
    pub fn state_names(&self) -> &'static [&'static str] {
        self.kind.state_names()
    }

    /// The uniform of step `t` (1-based) at learning rate `lr`.
    pub fn step_params(&self, lr: f32, t: u64) -> OptimParams {
        self.kind.step_params(self, lr, t)
    }
}

/// The update `rule` of `param` with its gradient `grad` and its state tensors `state` (in
/// [`UpdateRule::state_names`] order, each as long as `param`); `params.len` is filled in
/// from `param`.
pub fn update(
    k: &Kernels,
    rule: UpdateRule,
    param: &GpuTensor,
    state: &[&GpuTensor],
    grad: &GpuTensor,
    params: OptimParams,
) -> Result<Dispatch> {
    let op = rule.entry_point(false);
    if state.len() != rule.state_names().len() {
        return Err(Error::shape(
            op,
            format!("{} state tensors", rule.state_names().len()),
            state.len(),
        ));
    }
    // The parameter, each state tensor and the gradient are one storage binding each.
    let bindings = state.len() as u32 + 2;
    let limit = k.gpu().limits().max_storage_buffers_per_shader_stage;
    if bindings > limit {
        return Err(Error::Config(format!(
            "{rule} binds {bindings} storage buffers per stage, but this device allows {limit} (max_storage_buffers_per_shader_stage)"
        )));
    }
    expect_len(op, grad, param.len())?;
    for s in state {
        expect_len(op, s, param.len())?;
    }
    let p = OptimParams {
        len: u32_of(op, "len", param.len())?,
        ..params
    };
    // vec4 loads and stores where the length allows: a quarter of the invocations.
    let vec4 = param.len().is_multiple_of(4);
    let lanes = if vec4 { param.len() / 4 } else { param.len() };
    let mut bound = vec![param];
    bound.extend_from_slice(state);
    bound.push(grad);
    dispatch(
        k,
        Kernel::Update(rule, vec4),
        &bound,
        &[p],
        grid_1d(k.gpu(), lanes),
    )
}

/// The twins: plain loops with the kernels' formulas, in their order of operations. The
/// vec4 kernels apply the same per-element formulas, so the scalar twins serve both.
pub mod cpu {
    use super::*;
    use crate::math::Math;

    /// The twin of whichever kernel [`update`](super::update) records for `rule`: `state`
    /// in [`UpdateRule::state_names`] order.
    pub fn update(
        rule: UpdateRule,
        param: &mut [f32],
        state: &mut [Vec<f32>],
        grad: &[f32],
        p: &OptimParams,
        math: Math,
    ) {
        match (rule, state) {
            (UpdateRule::Sgd, []) => sgd_update(param, grad, p),
            (UpdateRule::Momentum, [velocity]) => momentum_update(param, velocity, grad, p),
            (UpdateRule::Adam | UpdateRule::AdamW, [m, v]) => {
                adam_update(param, m, v, grad, p, math)
            }
            (UpdateRule::RmsProp, [square_avg, momentum_buffer, grad_avg]) => {
                rmsprop_update(param, square_avg, momentum_buffer, grad_avg, grad, p, math)
            }
            // A state list that does not match the rule's names: nothing to update with, so
            // the parameters become NaN rather than silently stay.
            (
                UpdateRule::Sgd
                | UpdateRule::Momentum
                | UpdateRule::Adam
                | UpdateRule::AdamW
                | UpdateRule::RmsProp,
                _,
            ) => param.fill(f32::NAN),
        }
    }

    /// `p -= lr (g + wd p)`.
    pub fn sgd_update(param: &mut [f32], grad: &[f32], p: &OptimParams) {
        for i in 0..p.len as usize {
            let w = param[i];
            let g = grad[i] + p.weight_decay * w;
            param[i] = w - p.lr * g;
        }
    }

    /// `v = momentum v + (g + wd p); p -= lr v`.
    pub fn momentum_update(param: &mut [f32], velocity: &mut [f32], grad: &[f32], p: &OptimParams) {
        for i in 0..p.len as usize {
            let w = param[i];
            let g = grad[i] + p.weight_decay * w;
            let v = p.momentum * velocity[i] + g;
            velocity[i] = v;
            param[i] = w - p.lr * v;
        }
    }

    /// Adam / AdamW with host-given bias corrections.
    pub fn adam_update(
        param: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grad: &[f32],
        p: &OptimParams,
        math: Math,
    ) {
        for i in 0..p.len as usize {
            let mut w = param[i];
            let mut g = grad[i];
            if p.decoupled != 0 {
                w *= 1.0 - p.lr * p.weight_decay;
            } else {
                g += p.weight_decay * w;
            }
            let mi = p.beta1 * m[i] + p.one_minus_beta1 * g;
            let vi = p.beta2 * v[i] + p.one_minus_beta2 * g * g;
            m[i] = mi;
            v[i] = vi;
            let step_size = math.div(p.lr, p.bias_correction1);
            let denom = math.div(math.sqrt(vi), math.sqrt(p.bias_correction2)) + p.eps;
            param[i] = w - step_size * math.div(mi, denom);
        }
    }

    /// RMSprop, PyTorch's single-tensor form: `g = grad + wd p`;
    /// `square_avg = alpha square_avg + (1 - alpha) g g`; centered:
    /// `grad_avg += (1 - alpha) (g - grad_avg)`, `avg = sqrt(square_avg - grad_avg^2) + eps`,
    /// else `avg = sqrt(square_avg) + eps`; momentum > 0: `buf = momentum buf + g / avg`,
    /// `p -= lr buf`, else `p -= lr (g / avg)`.
    pub fn rmsprop_update(
        param: &mut [f32],
        square_avg: &mut [f32],
        momentum_buffer: &mut [f32],
        grad_avg: &mut [f32],
        grad: &[f32],
        p: &OptimParams,
        math: Math,
    ) {
        for i in 0..p.len as usize {
            let w = param[i];
            let g = grad[i] + p.weight_decay * w;
            let sq = p.alpha * square_avg[i] + p.one_minus_alpha * g * g;
            square_avg[i] = sq;
            let avg = if p.centered != 0 {
                let a = grad_avg[i] + p.one_minus_alpha * (g - grad_avg[i]);
                grad_avg[i] = a;
                math.sqrt(sq - a * a) + p.eps
            } else {
                math.sqrt(sq) + p.eps
            };
            if p.momentum > 0.0 {
                let b = p.momentum * momentum_buffer[i] + math.div(g, avg);
                momentum_buffer[i] = b;
                param[i] = w - p.lr * b;
            } else {
                param[i] = w - p.lr * math.div(g, avg);
            }
        }
    }

    // The vec4 kernels apply the scalar kernels' per-element formulas to four neighbours at
    // a time, so their twins are the scalar twins.

    /// Twin of `sgd_update_vec4`: [`sgd_update`].
    pub fn sgd_update_vec4(param: &mut [f32], grad: &[f32], p: &OptimParams) {
        sgd_update(param, grad, p)
    }

    /// Twin of `momentum_update_vec4`: [`momentum_update`].
    pub fn momentum_update_vec4(
        param: &mut [f32],
        velocity: &mut [f32],
        grad: &[f32],
        p: &OptimParams,
    ) {
        momentum_update(param, velocity, grad, p)
    }

    /// Twin of `adam_update_vec4`: [`adam_update`].
    pub fn adam_update_vec4(
        param: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grad: &[f32],
        p: &OptimParams,
        math: Math,
    ) {
        adam_update(param, m, v, grad, p, math)
    }

    /// Twin of `rmsprop_update_vec4`: [`rmsprop_update`].
    pub fn rmsprop_update_vec4(
        param: &mut [f32],
        square_avg: &mut [f32],
        momentum_buffer: &mut [f32],
        grad_avg: &mut [f32],
        grad: &[f32],
        p: &OptimParams,
        math: Math,
    ) {
        rmsprop_update(param, square_avg, momentum_buffer, grad_avg, grad, p, math)
    }
}
