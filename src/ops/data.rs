//! Gathers (`shaders/data.wgsl`): a batch's rows, pixel rows stored as bytes, and labels,
//! through the epoch's row order, from tables resident on the device.

use crate::error::{Error, Result};
use crate::kernels::Dispatch;
use crate::params::params_struct;
use crate::tensor::{DType, GpuTensor};

use super::{dispatch, expect_dtype, grid_1d, matrix, u32_of, Kernel, Kernels};

params_struct! {
    /// Gather `rows` rows of width `cols` through an index buffer, starting at `start` in it;
    /// the rows from `rows` up to `batch_rows` are zero-filled.
    GatherParams {
        rows: u32,
        cols: u32,
        start: u32,
        batch_rows: u32,
        /// gather_rows_u8 only: each byte b becomes `b / divisor` (255 for pixels).
        divisor: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

fn gather_params(
    op: &str,
    batch_rows: usize,
    cols: usize,
    indices: &GpuTensor,
    start: usize,
    rows: usize,
) -> Result<GatherParams> {
    expect_dtype(op, indices, DType::U32)?;
    if rows > batch_rows || start + rows > indices.len() {
        return Err(Error::shape(
            op,
            format!(
                "rows {start}..{} within {} indices and at most {batch_rows} rows",
                start + rows,
                indices.len()
            ),
            format!("{rows} rows from {start}"),
        ));
    }
    Ok(GatherParams {
        rows: rows as u32,
        cols: cols as u32,
        start: start as u32,
        batch_rows: batch_rows as u32,
        ..Default::default()
    })
}

/// `out[r] = data[indices[start + r]]` for `r < rows`, zero rows after that.
/// `data (n, cols)`, `out (batch_rows, cols)`, `indices` u32.
pub fn gather_rows(
    k: &Kernels,
    out: &GpuTensor,
    data: &GpuTensor,
    indices: &GpuTensor,
    start: usize,
    rows: usize,
) -> Result<Dispatch> {
    let (batch_rows, cols) = matrix("gather_rows", out)?;
    let (_, data_cols) = matrix("gather_rows", data)?;
    if data_cols != cols {
        return Err(Error::shape(
            "gather_rows",
            format!("data of width {cols}"),
            data_cols,
        ));
    }
    u32_of("gather_rows", "data size", data.len())?;
    let p = gather_params("gather_rows", batch_rows, cols, indices, start, rows)?;
    let (kernel, lanes) = if cols.is_multiple_of(4) {
        (Kernel::GatherRowsVec4, batch_rows * cols / 4)
    } else {
        (Kernel::GatherRows, batch_rows * cols)
    };
    dispatch(
        k,
        kernel,
        &[out, data, indices],
        &[p],
        grid_1d(k.gpu(), lanes),
    )
}

/// `out[r] = bytes of row indices[start + r] / divisor` for `r < rows`, zero rows after that.
/// `data` is a u32 tensor holding `n * cols` bytes packed four to a word (`cpu::pack_u8`).
#[allow(clippy::too_many_arguments)]
pub fn gather_rows_u8(
    k: &Kernels,
    out: &GpuTensor,
    data: &GpuTensor,
    indices: &GpuTensor,
    start: usize,
    rows: usize,
    divisor: f32,
) -> Result<Dispatch> {
    let (batch_rows, cols) = matrix("gather_rows_u8", out)?;
    expect_dtype("gather_rows_u8", data, DType::U32)?;
    u32_of("gather_rows_u8", "data bytes", data.len() * 4)?;
    let mut p = gather_params("gather_rows_u8", batch_rows, cols, indices, start, rows)?;
    p.divisor = divisor;
    let (kernel, lanes) = if cols.is_multiple_of(4) {
        (Kernel::GatherRowsU8Vec4, batch_rows * cols / 4)
    } else {
        (Kernel::GatherRowsU8, batch_rows * cols)
    };
    dispatch(
        k,
        kernel,
        &[out, data, indices],
        &[p],
        grid_1d(k.gpu(), lanes),
    )
}

/// `out[r] = labels[indices[start + r]]` for `r < rows`, 0 after that (all u32).
pub fn gather_labels(
    k: &Kernels,
    out: &GpuTensor,
    labels: &GpuTensor,
    indices: &GpuTensor,
    start: usize,
    rows: usize,
) -> Result<Dispatch> {
    expect_dtype("gather_labels", out, DType::U32)?;
    expect_dtype("gather_labels", labels, DType::U32)?;
    let p = gather_params("gather_labels", out.len(), 1, indices, start, rows)?;
    dispatch(
        k,
        Kernel::GatherLabels,
        &[out, labels, indices],
        &[p],
        grid_1d(k.gpu(), out.len()),
    )
}

/// The twins: plain loops in the kernels' order of operations.
pub mod cpu {
    use super::*;
    use crate::math::Math;

    /// `out[r] = data[indices[start + r]]` for r < rows, zero rows up to batch_rows.
    pub fn gather_rows(out: &mut [f32], data: &[f32], indices: &[u32], p: &GatherParams) {
        let cols = p.cols as usize;
        for r in 0..p.batch_rows as usize {
            let dst = &mut out[r * cols..r * cols + cols];
            if r < p.rows as usize {
                let src = indices[p.start as usize + r] as usize * cols;
                dst.copy_from_slice(&data[src..src + cols]);
            } else {
                dst.fill(0.0);
            }
        }
    }

    /// `out[r] = bytes of data row indices[start + r] / divisor` for r < rows, zero rows up to
    /// batch_rows; `data` holds the bytes packed four to a u32, little-endian.
    pub fn gather_rows_u8(
        out: &mut [f32],
        data: &[u32],
        indices: &[u32],
        p: &GatherParams,
        math: Math,
    ) {
        let cols = p.cols as usize;
        for r in 0..p.batch_rows as usize {
            for c in 0..cols {
                out[r * cols + c] = if r < p.rows as usize {
                    let i = indices[p.start as usize + r] as usize * cols + c;
                    let byte = (data[i / 4] >> (8 * (i % 4))) & 0xff;
                    math.div(byte as f32, p.divisor)
                } else {
                    0.0
                };
            }
        }
    }

    /// Packs bytes four to a u32, little-endian (the layout `gather_rows_u8` reads).
    pub fn pack_u8(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(w)
            })
            .collect()
    }

    /// `out[r] = labels[indices[start + r]]` for r < rows, 0 up to batch_rows.
    pub fn gather_labels(out: &mut [u32], labels: &[u32], indices: &[u32], p: &GatherParams) {
        for r in 0..p.batch_rows as usize {
            out[r] = if r < p.rows as usize {
                labels[indices[p.start as usize + r] as usize]
            } else {
                0
            };
        }
    }

    /// Twin of `gather_rows_vec4`: [`gather_rows`].
    pub fn gather_rows_vec4(out: &mut [f32], data: &[f32], indices: &[u32], p: &GatherParams) {
        gather_rows(out, data, indices, p)
    }

    /// Twin of `gather_rows_u8_vec4`: [`gather_rows_u8`].
    pub fn gather_rows_u8_vec4(
        out: &mut [f32],
        data: &[u32],
        indices: &[u32],
        p: &GatherParams,
        math: Math,
    ) {
        gather_rows_u8(out, data, indices, p, math)
    }
}
