//! Reductions (`shaders/reduce.wgsl`): column sums (the bias gradient), a sum in a fixed
//! order (the loss), the row-wise argmax and the count of correct predictions. Where the
//! device has subgroups ([`Kernels::subgroups`]), the sum and the count record their
//! subgroup forms (`shaders/reduce_subgroup.wgsl`), which give the same bits as the
//! workgroup forms on every adapter: one twin serves both.

use crate::error::{Error, Result};
use crate::kernels::Dispatch;
use crate::params::params_struct;
use crate::tensor::{DType, GpuTensor};

use super::{
    dispatch, expect_dtype, expect_len, grid_rows, matrix, u32_of, Accumulate, Kernel, Kernels,
};

params_struct! {
    /// A column reduction or a row-wise op over a `(rows, cols)` matrix.
    RowsParams {
        rows: u32,
        cols: u32,
        /// 1: add into the output instead of overwriting it.
        accumulate: u32,
        /// correct_count with a single column: the row predicts class 1 when its value is
        /// at or above this threshold (0 for logits, 0.5 for probabilities).
        threshold: f32,
    }
}

params_struct! {
    /// A sum of `len` values into `out[0]`, in a fixed order (deterministic).
    ReduceParams {
        len: u32,
        accumulate: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

/// How a column sum ([`column_sum_as`]), a softmax (`ops::softmax_as`) or a softmax
/// cross-entropy (`ops::loss_as`) orders its sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SumForm {
    /// One invocation per column (four with vec4 loads where `cols` is a multiple of 4) or
    /// per row, summing in order: the twins are [`cpu::column_sum`] and `cpu::softmax`.
    Serial,
    /// Each column (or row) split over 32 lanes, 8 per workgroup: lane j sums elements j,
    /// j+32, ... in order, then a pairwise tree over the 32 partial sums with ascending
    /// offsets 1, 2, 4, 8, 16. Its subgroup form (where [`Kernels::subgroups`]) runs the
    /// tree's levels below the subgroup size as shuffle butterflies in the same pairs, so the
    /// two give the same bits whatever the size. The twins are [`cpu::column_sum_split`],
    /// `cpu::softmax_split` and `cpu::softmax_cross_entropy_split`.
    Split,
}

impl SumForm {
    /// The form a bias gradient (or a softmax) runs in on `k`'s device: split on a hardware
    /// GPU, where one invocation per column leaves it idle; serial on a CPU adapter
    /// (lavapipe), where it measures faster, and under strict mode, whose CPU reference sums
    /// in order.
    pub fn for_kernels(k: &Kernels) -> SumForm {
        let hardware = match k.gpu().adapter().device_type {
            wgpu::DeviceType::Cpu => false,
            wgpu::DeviceType::DiscreteGpu
            | wgpu::DeviceType::IntegratedGpu
            | wgpu::DeviceType::VirtualGpu
            | wgpu::DeviceType::Other => true,
        };
        if hardware && !k.tuning().is_strict() {
            SumForm::Split
        } else {
            SumForm::Serial
        }
    }
}

/// `out (cols) = Σ_rows x (rows, cols)`, rows in order ([`SumForm::Serial`]).
pub fn column_sum(
    k: &Kernels,
    out: &GpuTensor,
    x: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    column_sum_as(k, SumForm::Serial, out, x, acc)
}

/// `out (cols) = Σ_rows x (rows, cols)` in `form`'s order — the bias gradient.
pub fn column_sum_as(
    k: &Kernels,
    form: SumForm,
    out: &GpuTensor,
    x: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    let (rows, cols) = matrix("column_sum", x)?;
    expect_len("column_sum", out, cols)?;
    let p = RowsParams {
        rows: rows as u32,
        cols: cols as u32,
        accumulate: acc.flag(),
        ..Default::default()
    };
    let split_groups = (cols as u32).div_ceil(8);
    let fits = split_groups <= k.gpu().limits().max_compute_workgroups_per_dimension;
    if form == SumForm::Split && fits {
        let kernel = if k.subgroups() {
            Kernel::ColumnSumSplitSubgroup
        } else {
            Kernel::ColumnSumSplit
        };
        dispatch(k, kernel, &[out, x], &[p], [split_groups, 1, 1])
    } else if cols.is_multiple_of(4) {
        let groups = (cols as u32 / 4).div_ceil(8);
        dispatch(k, Kernel::ColumnSumVec4, &[out, x], &[p], [groups, 1, 1])
    } else {
        dispatch(k, Kernel::ColumnSum, &[out, x], &[p], grid_rows(cols))
    }
}

/// `out[0] = Σ x` (or `+=` with `Accumulate::Add`), in a fixed order that does not depend
/// on the adapter: lane i of 256 sums `x[i], x[i+256], ...` in order, then a pairwise tree
/// over the 256 partial sums with ascending offsets 1, 2, ..., 128
/// (`((p0 + p1) + (p2 + p3)) + ...`). The subgroup form runs the tree's levels below the
/// subgroup size as shuffle butterflies, in the same pairs.
pub fn reduce_sum(
    k: &Kernels,
    out: &GpuTensor,
    x: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    if out.is_empty() {
        return Err(Error::shape("reduce_sum", "an output of 1 element", "0"));
    }
    let p = ReduceParams {
        len: u32_of("reduce_sum", "len", x.len())?,
        accumulate: acc.flag(),
        ..Default::default()
    };
    let kernel = if k.subgroups() {
        Kernel::ReduceSumSubgroup
    } else {
        Kernel::ReduceSum
    };
    dispatch(k, kernel, &[out, x], &[p], [1, 1, 1])
}

/// `out[r] = argmax_c x[r][c]` (u32, the first maximum on ties).
pub fn argmax(k: &Kernels, out: &GpuTensor, x: &GpuTensor) -> Result<Dispatch> {
    let (rows, cols) = matrix("argmax", x)?;
    expect_dtype("argmax", out, DType::U32)?;
    expect_len("argmax", out, rows)?;
    let p = RowsParams {
        rows: rows as u32,
        cols: cols as u32,
        ..Default::default()
    };
    dispatch(k, Kernel::Argmax, &[out, x], &[p], grid_rows(rows))
}

/// `count[0] += #{r < rows : prediction(x[r]) == labels[r]}` (u32 count, u32 labels); the
/// prediction is the argmax, or `x >= threshold` for a single column. Integer sums, exact in
/// any order: the subgroup form adds each subgroup's hits with `subgroupAdd` and makes one
/// atomic add per subgroup.
pub fn correct_count(
    k: &Kernels,
    count: &GpuTensor,
    logits: &GpuTensor,
    labels: &GpuTensor,
    rows: usize,
    threshold: f32,
) -> Result<Dispatch> {
    let op = "correct_count";
    let (batch_rows, cols) = matrix(op, logits)?;
    expect_dtype(op, count, DType::U32)?;
    expect_dtype(op, labels, DType::U32)?;
    expect_len(op, labels, batch_rows)?;
    if rows > batch_rows {
        return Err(Error::shape(op, format!("at most {batch_rows} rows"), rows));
    }
    let p = RowsParams {
        rows: rows as u32,
        cols: cols as u32,
        threshold,
        ..Default::default()
    };
    let kernel = if k.subgroups() {
        Kernel::CorrectCountSubgroup
    } else {
        Kernel::CorrectCount
    };
    dispatch(
        k,
        kernel,
        &[count, logits, labels],
        &[p],
        grid_rows(batch_rows),
    )
}

/// The twins: plain loops in the kernels' order of operations.
pub mod cpu {
    use super::*;
    use crate::ops::matmul::cpu::store;

    /// `out (cols) = Σ_rows x`, in row order.
    pub fn column_sum(out: &mut [f32], x: &[f32], p: &RowsParams) {
        let (rows, cols) = (p.rows as usize, p.cols as usize);
        for col in 0..cols {
            let mut acc = 0.0f32;
            for r in 0..rows {
                acc += x[r * cols + col];
            }
            store(out, col, acc, p.accumulate);
        }
    }

    /// Twin of `column_sum_split` (and its subgroup form): per column, 32 lanes sum rows
    /// r, r+32, ... in order, then a pairwise tree over the 32 with ascending offsets.
    pub fn column_sum_split(out: &mut [f32], x: &[f32], p: &RowsParams) {
        let (rows, cols) = (p.rows as usize, p.cols as usize);
        for col in 0..cols {
            let mut partial = [0.0f32; 32];
            for (lane, slot) in partial.iter_mut().enumerate() {
                let mut r = lane;
                while r < rows {
                    *slot += x[r * cols + col];
                    r += 32;
                }
            }
            let mut offset = 1;
            while offset < 32 {
                for lane in (0..32).step_by(2 * offset) {
                    partial[lane] += partial[lane + offset];
                }
                offset <<= 1;
            }
            store(out, col, partial[0], p.accumulate);
        }
    }

    /// `out[0] = Σ x` in the shaders' order (both forms): 256 strided partial sums, then a
    /// pairwise tree with ascending offsets.
    pub fn reduce_sum(out: &mut [f32], x: &[f32], p: &ReduceParams) {
        let len = p.len as usize;
        let mut partial = [0.0f32; 256];
        for (lane, slot) in partial.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            let mut i = lane;
            while i < len {
                acc += x[i];
                i += 256;
            }
            *slot = acc;
        }
        let mut offset = 1;
        while offset < 256 {
            for lane in (0..256).step_by(2 * offset) {
                partial[lane] += partial[lane + offset];
            }
            offset <<= 1;
        }
        store(out, 0, partial[0], p.accumulate);
    }

    fn row_argmax(row: &[f32]) -> u32 {
        let mut best = 0;
        let mut best_value = row[0];
        for (c, &v) in row.iter().enumerate().skip(1) {
            if v > best_value {
                best = c as u32;
                best_value = v;
            }
        }
        best
    }

    /// `out[r]` = index of the first maximum of row r.
    pub fn argmax(out: &mut [u32], x: &[f32], p: &RowsParams) {
        let cols = p.cols as usize;
        for r in 0..p.rows as usize {
            out[r] = row_argmax(&x[r * cols..r * cols + cols]);
        }
    }

    /// `count[0] += #{r < rows : prediction(x[r]) == labels[r]}`: the argmax, or with one
    /// column, `x >= threshold`.
    pub fn correct_count(count: &mut [u32], x: &[f32], labels: &[u32], p: &RowsParams) {
        let cols = p.cols as usize;
        for r in 0..p.rows as usize {
            let predicted = if cols == 1 {
                (x[r] >= p.threshold) as u32
            } else {
                row_argmax(&x[r * cols..r * cols + cols])
            };
            if predicted == labels[r] {
                count[0] += 1;
            }
        }
    }

    /// Twin of `column_sum_vec4`: [`column_sum`].
    pub fn column_sum_vec4(out: &mut [f32], x: &[f32], p: &RowsParams) {
        column_sum(out, x, p)
    }
}
