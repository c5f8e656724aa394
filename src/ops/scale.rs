//! Dynamic loss scaling for mixed-precision training (`shaders/scale.wgsl`), as PyTorch's
//! `GradScaler` does it: `scale_values` multiplies the loss gradient by the scale,
//! `grad_overflow` flags a step whose gradients hold inf or NaN (found by their bit
//! patterns), `unscale_values` divides the gradients by the scale where none was found, and
//! `loss_scale_update` moves the scale: halved after an overflow (a step the update skips),
//! doubled after `growth_interval` clean steps. The scale lives on the device in a
//! [`LossScale`] state of four words, so that no step reads it back.

use crate::error::{Error, Result};
use crate::kernels::Dispatch;
use crate::params::params_struct;
use crate::tensor::{DType, GpuTensor};

use super::{dispatch, expect_dtype, grid_1d, Kernel, Kernels};

params_struct! {
    /// A loss-scaling kernel over `len` values; `growth_interval` clean steps double the
    /// scale.
    ScaleParams {
        len: u32,
        growth_interval: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

/// PyTorch's `GradScaler` defaults: the first scale 2¹⁶, doubled after 2000 clean steps.
pub const INITIAL_SCALE: f32 = 65536.0;
pub const GROWTH_INTERVAL: u32 = 2000;

/// The loss scale's state, as the device keeps it in four u32 words: the scale's f32 bits,
/// the clean steps since it last changed, the steps skipped so far, and the current step's
/// overflow flag.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScale {
    pub scale: f32,
    pub clean: u32,
    pub skipped: u32,
    pub overflow: bool,
}

impl LossScale {
    /// A run's first state: `scale`, nothing counted.
    pub fn new(scale: f32) -> LossScale {
        LossScale {
            scale,
            clean: 0,
            skipped: 0,
            overflow: false,
        }
    }

    /// The four words the kernels read and write.
    pub fn words(&self) -> [u32; 4] {
        [
            self.scale.to_bits(),
            self.clean,
            self.skipped,
            self.overflow as u32,
        ]
    }

    /// The state from its four words.
    pub fn from_words(w: &[u32]) -> Result<LossScale> {
        match *w {
            [scale, clean, skipped, overflow] => Ok(LossScale {
                scale: f32::from_bits(scale),
                clean,
                skipped,
                overflow: overflow != 0,
            }),
            _ => Err(Error::shape(
                "loss scale state",
                "4 words",
                format!("{} words", w.len()),
            )),
        }
    }
}

fn state_of(op: &str, state: &GpuTensor) -> Result<()> {
    expect_dtype(op, state, DType::U32)?;
    if state.len() != 4 {
        return Err(Error::shape(
            op,
            "a loss scale state of 4 words",
            state.len(),
        ));
    }
    Ok(())
}

fn values_of(op: &str, k: &Kernels, x: &GpuTensor) -> Result<(ScaleParams, [u32; 3])> {
    expect_dtype(op, x, DType::F32)?;
    let p = ScaleParams {
        len: x.len() as u32,
        ..Default::default()
    };
    Ok((p, grid_1d(k.gpu(), x.len())))
}

/// `x *= scale` (the loss gradient, before the backward pass).
pub fn scale_values(k: &Kernels, x: &GpuTensor, state: &GpuTensor) -> Result<Dispatch> {
    let op = "scale_values";
    state_of(op, state)?;
    let (p, grid) = values_of(op, k, x)?;
    dispatch(k, Kernel::ScaleValues, &[x, state], &[p], grid)
}

/// `state.overflow |= any x is inf or NaN`, by the values' bit patterns.
pub fn grad_overflow(k: &Kernels, state: &GpuTensor, x: &GpuTensor) -> Result<Dispatch> {
    let op = "grad_overflow";
    state_of(op, state)?;
    let (p, grid) = values_of(op, k, x)?;
    dispatch(k, Kernel::GradOverflow, &[state, x], &[p], grid)
}

/// `x *= 1 / scale` unless the step overflowed.
pub fn unscale_values(k: &Kernels, x: &GpuTensor, state: &GpuTensor) -> Result<Dispatch> {
    let op = "unscale_values";
    state_of(op, state)?;
    let (p, grid) = values_of(op, k, x)?;
    dispatch(k, Kernel::UnscaleValues, &[x, state], &[p], grid)
}

/// The scale's step after the update (see the module's doc); clears the overflow flag.
pub fn loss_scale_update(k: &Kernels, state: &GpuTensor, growth_interval: u32) -> Result<Dispatch> {
    let op = "loss_scale_update";
    state_of(op, state)?;
    if growth_interval == 0 {
        return Err(Error::Config(
            "loss scaling: the growth interval must be at least 1 step".into(),
        ));
    }
    let p = ScaleParams {
        growth_interval,
        ..Default::default()
    };
    dispatch(k, Kernel::LossScaleUpdate, &[state], &[p], [1, 1, 1])
}

/// The twins: plain loops, with the state as its four words.
pub mod cpu {
    use super::*;

    /// Whether an f32's bits are inf or NaN: all eight exponent bits set.
    fn non_finite(x: f32) -> bool {
        x.to_bits() & 0x7f80_0000 == 0x7f80_0000
    }

    /// `x *= scale`.
    pub fn scale_values(x: &mut [f32], state: &[u32]) {
        let scale = f32::from_bits(state[0]);
        for v in x {
            *v *= scale;
        }
    }

    /// `state[3] = 1` when any of x is inf or NaN.
    pub fn grad_overflow(state: &mut [u32], x: &[f32]) {
        if x.iter().any(|&v| non_finite(v)) {
            state[3] = 1;
        }
    }

    /// `x *= 1 / scale` unless `state[3]` is set.
    pub fn unscale_values(x: &mut [f32], state: &[u32]) {
        if state[3] != 0 {
            return;
        }
        let inv = 1.0 / f32::from_bits(state[0]);
        for v in x {
            *v *= inv;
        }
    }

    /// The scale's step (see the module's doc).
    pub fn loss_scale_update(state: &mut [u32], p: &ScaleParams) {
        let scale = f32::from_bits(state[0]);
        if state[3] != 0 {
            let shrunk = (scale * 0.5).to_bits();
            if shrunk & 0x7f80_0000 != 0 {
                state[0] = shrunk;
            }
            state[1] = 0;
            state[2] += 1;
        } else {
            let clean = state[1] + 1;
            if clean >= p.growth_interval {
                let grown = (scale * 2.0).to_bits();
                if grown & 0x7f80_0000 != 0x7f80_0000 {
                    state[0] = grown;
                }
                state[1] = 0;
            } else {
                state[1] = clean;
            }
        }
        state[3] = 0;
    }
}
