//! The f16 kernels of the matmul family (`shaders/matmul_f16.wgsl`): the three products with
//! f16 operands summed in f32 (`matmul_nt_f16`, `matmul_nn_f16`, `matmul_tn_f16`, the same
//! forms and [`MatmulParams`](super::MatmulParams) as the f32 products) and the f32 -> f16 cast that makes their
//! operands (`cast_f16`). Each recorder checks shapes, element types and that the device has
//! `Features::SHADER_F16`. Their twins are in [`super::cpu`]. Which tensors are kept in f16 and
//! when they are cast is the caller's choice; nothing here schedules training.

use crate::error::{Error, Result};
use crate::kernels::Dispatch;
use crate::params::params_struct;
use crate::tensor::{DType, GpuTensor};

use super::super::{
    dispatch, expect_dtype, expect_len, expect_shape, grid_1d, matrix, u32_of, Accumulate, Kernel,
    Kernels,
};
use super::MatmulForm;

params_struct! {
    /// An element-wise pass over `len` values (`cast_f16`).
    CastParams {
        len: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// `out (m, n) f32 = a (m, k) f16 · b (n, k) f16ᵀ`: the forward product `Y = X·Wᵀ` from f16
/// copies of the activations and weights.
pub fn matmul_nt_f16(
    k: &Kernels,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    matmul_f16(k, MatmulForm::Nt, out, a, b, acc)
}

/// `out (m, n) f32 = a (m, k) f16 · b (k, n) f16`: the input delta `dX = dY·W`.
pub fn matmul_nn_f16(
    k: &Kernels,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    matmul_f16(k, MatmulForm::Nn, out, a, b, acc)
}

/// `out (m, n) f32 = a (k, m) f16ᵀ · b (k, n) f16`: the weight gradient `dW = dYᵀ·X`.
pub fn matmul_tn_f16(
    k: &Kernels,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    matmul_f16(k, MatmulForm::Tn, out, a, b, acc)
}

/// `out (n) f16 = f16(x (n) f32)`, each value rounded to the nearest f16 (ties to even on
/// lavapipe; see `shaders/matmul_f16.wgsl`): a magnitude of 65520 or more becomes infinity,
/// one of 2^-25 or less zero.
pub fn cast_f16(k: &Kernels, out: &GpuTensor, x: &GpuTensor) -> Result<Dispatch> {
    let op = "cast_f16";
    require_f16(k, op)?;
    expect_dtype(op, out, DType::F16)?;
    expect_dtype(op, x, DType::F32)?;
    expect_len(op, out, x.len())?;
    let p = CastParams {
        len: u32_of(op, "len", x.len())?,
        ..Default::default()
    };
    dispatch(
        k,
        Kernel::CastF16,
        &[out, x],
        &[p],
        grid_1d(k.gpu(), x.len()),
    )
}

/// The three forms: device, element types and shapes checked, then the one kernel of the form.
fn matmul_f16(
    kernels: &Kernels,
    form: MatmulForm,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    let (op, kernel) = match form {
        MatmulForm::Nt => ("matmul_nt_f16", Kernel::MatmulNtF16),
        MatmulForm::Nn => ("matmul_nn_f16", Kernel::MatmulNnF16),
        MatmulForm::Tn => ("matmul_tn_f16", Kernel::MatmulTnF16),
    };
    require_f16(kernels, op)?;
    expect_dtype(op, out, DType::F32)?;
    expect_dtype(op, a, DType::F16)?;
    expect_dtype(op, b, DType::F16)?;
    let (a_rows, a_cols) = matrix(op, a)?;
    let (b_rows, b_cols) = matrix(op, b)?;
    // (m, k) from a, n from b, then b and out must agree.
    let (m, k, n, b_shape) = match form {
        MatmulForm::Nt => (a_rows, a_cols, b_rows, (b_rows, a_cols)),
        MatmulForm::Nn => (a_rows, a_cols, b_cols, (a_cols, b_cols)),
        MatmulForm::Tn => (a_cols, a_rows, b_cols, (a_rows, b_cols)),
    };
    expect_shape(op, b, b_shape)?;
    expect_shape(op, out, (m, n))?;
    let p = super::matmul_params(op, m, n, k, acc)?;
    dispatch(
        kernels,
        kernel,
        &[out, a, b],
        &[p],
        super::blocked_grid(m, n),
    )
}

/// An error naming the missing feature where the device cannot run f16 kernels.
fn require_f16(kernels: &Kernels, op: &str) -> Result<()> {
    if kernels.gpu().shader_f16() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{op} needs f16 in shaders (wgpu::Features::SHADER_F16), which the device '{}' was \
         opened without: use an adapter that has it (Gpu::new requests it wherever the \
         adapter offers it; a host that lends its device to Gpu::from_wgpu must request it \
         in its DeviceDescriptor), or keep the product in f32 (matmul_nt, matmul_nn, \
         matmul_tn)",
        kernels.gpu().adapter().name
    )))
}
