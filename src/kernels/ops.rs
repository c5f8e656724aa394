//! The per-op recorders: one small function per kernel that checks shapes and element types,
//! fills the kernel's params struct and grid, and returns a ready-to-record [`Dispatch`]
//! (named like the WGSL entry point and its twin in `cpu.rs`; outputs first, then inputs,
//! then sizes).

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::loss::Loss;
use crate::network::Activation;
use crate::params::*;
use crate::tensor::{DType, GpuTensor};

use super::fused_mlp::MlpShape;
use super::{Dispatch, Epilogue, Kernel, MatmulForm, Tile, TILES};

// ---------------------------------------------------------------------------------------
// Grids

const WG_1D: u32 = 256;

/// A 1-D grid of 256-wide workgroups covering `len` invocations, folded into y when it
/// exceeds the per-dimension limit (the shaders index with `gid.x + gid.y * groups.x * 256`).
fn grid_1d(gpu: &Gpu, len: usize) -> [u32; 3] {
    let groups = (len as u64).div_ceil(WG_1D as u64);
    let max = gpu.limits().max_compute_workgroups_per_dimension as u64;
    if groups <= max {
        [groups as u32, 1, 1]
    } else {
        [max as u32, groups.div_ceil(max) as u32, 1]
    }
}

/// A grid of 64-wide workgroups, one invocation per row (or column).
fn grid_rows(rows: usize) -> [u32; 3] {
    [(rows as u32).div_ceil(64), 1, 1]
}

// ---------------------------------------------------------------------------------------
// Shape checks

fn matrix(op: &str, t: &GpuTensor) -> Result<(usize, usize)> {
    match *t.shape() {
        [r, c] => Ok((r, c)),
        [n] => Ok((1, n)),
        _ => Err(Error::shape(
            op,
            format!("'{}' as a matrix", t.label()),
            format!("shape {:?}", t.shape()),
        )),
    }
}

fn expect_shape(op: &str, t: &GpuTensor, want: (usize, usize)) -> Result<()> {
    let got = matrix(op, t)?;
    if got != want {
        return Err(Error::shape(
            op,
            format!("'{}' of {} x {}", t.label(), want.0, want.1),
            format!("{} x {}", got.0, got.1),
        ));
    }
    Ok(())
}

fn expect_len(op: &str, t: &GpuTensor, len: usize) -> Result<()> {
    if t.len() != len {
        return Err(Error::shape(
            op,
            format!("'{}' of {len} elements", t.label()),
            format!("{} elements (shape {:?})", t.len(), t.shape()),
        ));
    }
    Ok(())
}

fn expect_dtype(op: &str, t: &GpuTensor, dtype: DType) -> Result<()> {
    if t.dtype() != dtype {
        return Err(Error::shape(
            op,
            format!("'{}' of {dtype:?}", t.label()),
            format!("{:?}", t.dtype()),
        ));
    }
    Ok(())
}

fn u32_of(op: &str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::TooLarge {
        what: format!("{op}: {what}"),
        bytes: v as u64,
        limit: u32::MAX as u64,
        limit_name: "u32 index range",
    })
}

/// Whether a matmul or reduction overwrites its output or adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulate {
    Overwrite,
    Add,
}

impl Accumulate {
    fn flag(self) -> u32 {
        (self == Accumulate::Add) as u32
    }
}

// ---------------------------------------------------------------------------------------
// Matmul

fn matmul_grid(m: usize, n: usize) -> [u32; 3] {
    [(n as u32).div_ceil(16), (m as u32).div_ceil(16), 1]
}

/// 8 x 8 invocations of 4 x 4 outputs: a 32 x 32 tile per workgroup.
fn blocked_grid(m: usize, n: usize) -> [u32; 3] {
    [(n as u32).div_ceil(32), (m as u32).div_ceil(32), 1]
}

/// Which matmul kernel the three forms dispatch to. The naive kernels stay as the
/// yardstick; every variant passes the same twin tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// One invocation per output (`matmul_nt`, `matmul_nn`, `matmul_tn`).
    Naive,
    /// 4 x 4 register blocks (`matmul_blocked`), with vec4 loads where the shapes allow
    /// (`matmul_nt_vec4` when k is a multiple of 4, `matmul_nn_vec4` when k and n are).
    Blocked,
    /// One generated tile wherever it fits the shape (see [`Tile::fits`]), blocked elsewhere.
    Tile(Tile),
    /// Per product, the fastest of blocked and the tiles that fit, measured on this adapter
    /// at first use and cached on disk (`autotune.rs`).
    #[default]
    Tuned,
}

impl std::str::FromStr for MatmulVariant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "naive" => Ok(MatmulVariant::Naive),
            "blocked" => Ok(MatmulVariant::Blocked),
            "tuned" => Ok(MatmulVariant::Tuned),
            _ => Tile::parse(s).map(MatmulVariant::Tile).ok_or_else(|| {
                let tiles: Vec<String> = TILES.iter().map(|t| t.name()).collect();
                Error::Config(format!(
                    "unknown matmul variant '{s}' (naive, blocked, tuned, or a tile: {})",
                    tiles.join(", ")
                ))
            }),
        }
    }
}

/// The kernel one product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulChoice {
    Naive,
    Blocked,
    Tile(Tile),
}

impl MatmulChoice {
    pub fn name(self) -> String {
        match self {
            MatmulChoice::Naive => "naive".into(),
            MatmulChoice::Blocked => "blocked".into(),
            MatmulChoice::Tile(t) => t.name(),
        }
    }

    pub fn parse(s: &str) -> Option<MatmulChoice> {
        match s {
            "naive" => Some(MatmulChoice::Naive),
            "blocked" => Some(MatmulChoice::Blocked),
            _ => Tile::parse(s).map(MatmulChoice::Tile),
        }
    }
}

/// `out (m, n) = a (m, k) · b (n, k)ᵀ` — the forward product `Y = X·Wᵀ`.
pub fn matmul_nt(
    gpu: &Gpu,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    matmul(gpu, MatmulForm::Nt, out, a, b, acc)
}

/// `out (m, n) = a (m, k) · b (k, n)` — the input delta `dX = dY·W`.
pub fn matmul_nn(
    gpu: &Gpu,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    matmul(gpu, MatmulForm::Nn, out, a, b, acc)
}

/// `out (m, n) = a (k, m)ᵀ · b (k, n)` — the weight gradient `dW = dYᵀ·X`.
pub fn matmul_tn(
    gpu: &Gpu,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    matmul(gpu, MatmulForm::Tn, out, a, b, acc)
}

/// The three forms: shapes checked, then the kernel the variant (or the tuner) picks.
fn matmul(
    gpu: &Gpu,
    form: MatmulForm,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    let op = match form {
        MatmulForm::Nt => "matmul_nt",
        MatmulForm::Nn => "matmul_nn",
        MatmulForm::Tn => "matmul_tn",
    };
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
    let p = matmul_params(op, m, n, k, acc)?;
    let choice = matmul_choice(gpu, form, m, n, k, acc)?;
    matmul_dispatch(gpu, form, choice, out, a, b, &p)
}

/// The kernel the variant of `gpu` (or its tuner) runs a product of this form and size on.
fn matmul_choice(
    gpu: &Gpu,
    form: MatmulForm,
    m: usize,
    n: usize,
    k: usize,
    acc: Accumulate,
) -> Result<MatmulChoice> {
    Ok(match gpu.matmul_variant() {
        MatmulVariant::Naive => MatmulChoice::Naive,
        MatmulVariant::Blocked => MatmulChoice::Blocked,
        MatmulVariant::Tile(t) if t.fits(form, m, n, k, acc) => MatmulChoice::Tile(t),
        MatmulVariant::Tile(_) => MatmulChoice::Blocked,
        MatmulVariant::Tuned => crate::autotune::choose(gpu, form, m, n, k, acc)?,
    })
}

/// The forward pass of a dense layer in one kernel, `pre = x · wᵀ (+ bias)` and
/// `out = act(pre)`, in place of `matmul_nt` followed by `bias_activation_forward` (same
/// values, and on lavapipe the same bits). Where the product runs on a generated tile (as
/// chosen for `matmul_nt` of this size), the bias and a ReLU or identity activation are the
/// tile's epilogue; where it would run on the scalar blocked kernel (k not a multiple of 4),
/// `dense_forward` does any activation. `None` elsewhere (naive kernels, the vec4 blocked
/// product, other activations on a tile, a device that binds fewer than five storage buffers
/// per stage), and the caller records the two kernels. `dummy` stands in for a missing bias.
#[allow(clippy::too_many_arguments)]
pub fn dense_forward(
    gpu: &Gpu,
    out: &GpuTensor,
    pre: &GpuTensor,
    x: &GpuTensor,
    w: &GpuTensor,
    bias: Option<&GpuTensor>,
    dummy: &GpuTensor,
    act: Activation,
) -> Result<Option<Dispatch>> {
    let op = "dense_forward";
    // Five storage buffers: more than a downlevel device (4 per stage) binds.
    if gpu.limits().max_storage_buffers_per_shader_stage < 5 {
        return Ok(None);
    }
    let (m, k) = matrix(op, x)?;
    let (n, _) = matrix(op, w)?;
    expect_shape(op, w, (n, k))?;
    expect_shape(op, pre, (m, n))?;
    expect_shape(op, out, (m, n))?;
    if let Some(b) = bias {
        expect_len(op, b, n)?;
    }
    let p = matmul_params(op, m, n, k, Accumulate::Overwrite)?;
    match matmul_choice(gpu, MatmulForm::Nt, m, n, k, Accumulate::Overwrite)? {
        MatmulChoice::Tile(t) => {
            let (Some(bias), Activation::Relu | Activation::Identity) = (bias, act) else {
                return Ok(None);
            };
            let relu = act == Activation::Relu;
            Dispatch::new(
                gpu,
                Kernel::MatmulTile(MatmulForm::Nt, t, Epilogue::BiasAct { relu }),
                &[pre, x, w, out, bias],
                &[p],
                t.grid(m, n),
            )
            .map(Some)
        }
        MatmulChoice::Blocked if !k.is_multiple_of(4) => {
            let dp = DenseParams {
                m: p.m,
                n: p.n,
                k: p.k,
                kind: act.code(),
                slope: act.slope(),
                has_bias: bias.is_some() as u32,
                ..Default::default()
            };
            Dispatch::new(
                gpu,
                Kernel::DenseForward,
                &[pre, x, w, out, bias.unwrap_or(dummy)],
                &[dp],
                blocked_grid(m, n),
            )
            .map(Some)
        }
        _ => Ok(None),
    }
}

/// The input delta of a ReLU layer in one kernel, `dpre = (d · w) * relu'(pre)`, where the
/// product `d · w` runs on a generated tile (as chosen for `matmul_nn` of this size) small
/// enough for the epilogue ([`super::tiled::RELU_GRAD_MAX_OUTPUTS`]); `None` where not, and the caller
/// records `matmul_nn` and `activation_backward` instead. Same values, and on lavapipe the
/// same bits, as those two; the product itself is not stored.
pub fn relu_delta(
    gpu: &Gpu,
    dpre: &GpuTensor,
    d: &GpuTensor,
    w: &GpuTensor,
    pre: &GpuTensor,
) -> Result<Option<Dispatch>> {
    let op = "relu_delta";
    let (m, k) = matrix(op, d)?;
    let (_, n) = matrix(op, w)?;
    expect_shape(op, w, (k, n))?;
    expect_shape(op, dpre, (m, n))?;
    expect_shape(op, pre, (m, n))?;
    let p = matmul_params(op, m, n, k, Accumulate::Overwrite)?;
    match matmul_choice(gpu, MatmulForm::Nn, m, n, k, Accumulate::Overwrite)? {
        MatmulChoice::Tile(t) if super::tiled::relu_grad_allowed(t) => Dispatch::new(
            gpu,
            Kernel::MatmulTile(MatmulForm::Nn, t, Epilogue::ReluGrad),
            &[dpre, d, w, pre],
            &[p],
            t.grid(m, n),
        )
        .map(Some),
        _ => Ok(None),
    }
}

/// The input delta of a layer through any activation in one kernel, `dpre = (d · w) *
/// act'(pre)`, where the product `d · w` would run on the scalar blocked kernel (k or n not a
/// multiple of 4, as for the delta from a 10-class output layer); `None` elsewhere (a tile,
/// the vec4 blocked kernel or the naive one runs the product there), and the caller records
/// `matmul_nn` and `activation_backward` instead. Same values, and on lavapipe the same bits,
/// as those two; the product itself is not stored.
pub fn dense_backward(
    gpu: &Gpu,
    dpre: &GpuTensor,
    d: &GpuTensor,
    w: &GpuTensor,
    pre: &GpuTensor,
    act: Activation,
) -> Result<Option<Dispatch>> {
    let op = "dense_backward";
    let (m, k) = matrix(op, d)?;
    let (_, n) = matrix(op, w)?;
    expect_shape(op, w, (k, n))?;
    expect_shape(op, dpre, (m, n))?;
    expect_shape(op, pre, (m, n))?;
    let p = matmul_params(op, m, n, k, Accumulate::Overwrite)?;
    match matmul_choice(gpu, MatmulForm::Nn, m, n, k, Accumulate::Overwrite)? {
        MatmulChoice::Blocked if !(k.is_multiple_of(4) && n.is_multiple_of(4)) => {
            let dp = DenseParams {
                m: p.m,
                n: p.n,
                k: p.k,
                kind: act.code(),
                slope: act.slope(),
                ..Default::default()
            };
            Dispatch::new(
                gpu,
                Kernel::DenseBackward,
                &[dpre, d, w, pre],
                &[dp],
                blocked_grid(m, n),
            )
            .map(Some)
        }
        _ => Ok(None),
    }
}

/// The dispatch of one product on the kernel `choice` names (shapes already checked; a tile
/// must fit them).
pub(crate) fn matmul_dispatch(
    gpu: &Gpu,
    form: MatmulForm,
    choice: MatmulChoice,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    p: &MatmulParams,
) -> Result<Dispatch> {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    match choice {
        MatmulChoice::Naive => {
            let naive = match form {
                MatmulForm::Nt => Kernel::MatmulNt,
                MatmulForm::Nn => Kernel::MatmulNn,
                MatmulForm::Tn => Kernel::MatmulTn,
            };
            Dispatch::new(gpu, naive, &[out, a, b], &[*p], matmul_grid(m, n))
        }
        MatmulChoice::Tile(t) => Dispatch::new(
            gpu,
            Kernel::MatmulTile(form, t, Epilogue::Store),
            &[out, a, b],
            &[*p],
            t.grid(m, n),
        ),
        // vec4 loads where the shapes allow them (see shaders/matmul.wgsl). A vec4 form
        // of dW = dYᵀ·X was tried and was slower at training shapes on lavapipe.
        MatmulChoice::Blocked if form == MatmulForm::Nt && k.is_multiple_of(4) => Dispatch::new(
            gpu,
            Kernel::MatmulNtVec4,
            &[out, a, b],
            &[BlockedMatmulParams::nt(p)],
            blocked_grid(m, n),
        ),
        MatmulChoice::Blocked
            if form == MatmulForm::Nn && k.is_multiple_of(4) && n.is_multiple_of(4) =>
        {
            Dispatch::new(
                gpu,
                Kernel::MatmulNnVec4,
                &[out, a, b],
                &[BlockedMatmulParams::nn(p)],
                blocked_grid(m, n),
            )
        }
        MatmulChoice::Blocked => {
            let strides = match form {
                MatmulForm::Nt => BlockedMatmulParams::nt(p),
                MatmulForm::Nn => BlockedMatmulParams::nn(p),
                MatmulForm::Tn => BlockedMatmulParams::tn(p),
            };
            Dispatch::new(
                gpu,
                Kernel::MatmulBlocked,
                &[out, a, b],
                &[strides],
                blocked_grid(m, n),
            )
        }
    }
}

fn matmul_params(op: &str, m: usize, n: usize, k: usize, acc: Accumulate) -> Result<MatmulParams> {
    u32_of(op, "m*k", m * k)?;
    u32_of(op, "n*k", n * k)?;
    u32_of(op, "m*n", m * n)?;
    Ok(MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        accumulate: acc.flag(),
    })
}

// ---------------------------------------------------------------------------------------
// Activations

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
    gpu: &Gpu,
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
    Dispatch::new(gpu, kernel, &[out, pre, bias], &[p], grid_1d(gpu, lanes))
}

/// `dpre = dout * act'(pre)`, element-wise over `(rows, cols)`.
pub fn activation_backward(
    gpu: &Gpu,
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
    Dispatch::new(gpu, kernel, &[dpre, dout, pre], &[p], grid_1d(gpu, lanes))
}

// ---------------------------------------------------------------------------------------
// Reductions

/// Whether the device's limits let it run the fused pass in the form `shape`: enough storage
/// buffers per stage (six, seven to gather), workgroup memory and invocations.
pub fn fused_mlp_fits(gpu: &Gpu, shape: MlpShape) -> bool {
    let limits = gpu.limits();
    let buffers = if shape.gather { 7 } else { 6 };
    limits.max_storage_buffers_per_shader_stage >= buffers
        && (limits.max_compute_workgroup_storage_size as u64) >= shape.workgroup_bytes()
        && limits.max_compute_invocations_per_workgroup >= shape.invocations()
        && limits.max_compute_workgroup_size_x >= shape.invocations()
}

/// The fully fused training pass of a small network with MSE or binary cross-entropy (see
/// `fused_mlp.rs`):
/// `partial` (tiles, arena length) gets each tile's gradient sums laid out like the parameter
/// arena `weights`, `pred` (batch, outputs) the network's output and `row_loss` each row's
/// loss. It reads the batch `x` (batch, inputs) and `target` (batch, outputs), or, for a
/// gathering shape, rows `indices[start + r]` of the tables `x` and `target` (any number of
/// rows). `params` holds the loss's live rows and scale and the step's `start`. `None` where
/// the device cannot run it: fewer storage buffers per stage than it binds (six, seven to
/// gather), or less workgroup memory or fewer invocations than the form needs.
#[allow(clippy::too_many_arguments)]
pub fn fused_mlp(
    gpu: &Gpu,
    partial: &GpuTensor,
    pred: &GpuTensor,
    row_loss: &GpuTensor,
    x: &GpuTensor,
    target: &GpuTensor,
    weights: &GpuTensor,
    indices: Option<&GpuTensor>,
    shape: MlpShape,
    params: FusedMlpParams,
) -> Result<Option<Dispatch>> {
    let op = "fused_mlp";
    if !fused_mlp_fits(gpu, shape) {
        return Ok(None);
    }
    let rows = params.batch_rows as usize;
    expect_shape(op, pred, (rows, shape.outputs()))?;
    expect_len(op, row_loss, rows)?;
    expect_len(op, weights, shape.arena_len as usize)?;
    let tiles = shape.tiles(rows);
    expect_shape(op, partial, (tiles, shape.arena_len as usize))?;
    if params.cols as usize != shape.outputs() || params.rows > params.batch_rows {
        return Err(Error::shape(
            op,
            format!("parameters for {rows} rows of {} outputs", shape.outputs()),
            format!(
                "{} of {} rows, {} outputs",
                params.rows, params.batch_rows, params.cols
            ),
        ));
    }
    let mut bound = vec![partial, pred, row_loss, x, target, weights];
    if shape.gather {
        let Some(indices) = indices else {
            return Err(Error::shape(op, "a row order to gather by", "none"));
        };
        let (data_rows, _) = matrix(op, x)?;
        expect_shape(op, x, (data_rows, shape.inputs()))?;
        expect_shape(op, target, (data_rows, shape.outputs()))?;
        if indices.dtype() != DType::U32 {
            return Err(Error::shape(
                op,
                "u32 row indices",
                format!("{:?}", indices.dtype()),
            ));
        }
        bound.push(indices);
    } else {
        expect_shape(op, x, (rows, shape.inputs()))?;
        expect_shape(op, target, (rows, shape.outputs()))?;
    }
    Dispatch::new(
        gpu,
        Kernel::FusedMlp(shape),
        &bound,
        &[params],
        [tiles as u32, 1, 1],
    )
    .map(Some)
}

/// `out (cols) = Σ_rows x (rows, cols)` — the bias gradient.
pub fn column_sum(gpu: &Gpu, out: &GpuTensor, x: &GpuTensor, acc: Accumulate) -> Result<Dispatch> {
    let (rows, cols) = matrix("column_sum", x)?;
    expect_len("column_sum", out, cols)?;
    let p = RowsParams {
        rows: rows as u32,
        cols: cols as u32,
        accumulate: acc.flag(),
        ..Default::default()
    };
    if cols.is_multiple_of(4) {
        let groups = (cols as u32 / 4).div_ceil(8);
        Dispatch::new(gpu, Kernel::ColumnSumVec4, &[out, x], &[p], [groups, 1, 1])
    } else {
        Dispatch::new(gpu, Kernel::ColumnSum, &[out, x], &[p], grid_rows(cols))
    }
}

/// `out[0] = Σ x` (or `+=` with `Accumulate::Add`), in a fixed order.
pub fn reduce_sum(gpu: &Gpu, out: &GpuTensor, x: &GpuTensor, acc: Accumulate) -> Result<Dispatch> {
    if out.is_empty() {
        return Err(Error::shape("reduce_sum", "an output of 1 element", "0"));
    }
    let p = ReduceParams {
        len: u32_of("reduce_sum", "len", x.len())?,
        accumulate: acc.flag(),
        ..Default::default()
    };
    Dispatch::new(gpu, Kernel::ReduceSum, &[out, x], &[p], [1, 1, 1])
}

/// `out[r] = argmax_c x[r][c]` (u32, the first maximum on ties).
pub fn argmax(gpu: &Gpu, out: &GpuTensor, x: &GpuTensor) -> Result<Dispatch> {
    let (rows, cols) = matrix("argmax", x)?;
    expect_dtype("argmax", out, DType::U32)?;
    expect_len("argmax", out, rows)?;
    let p = RowsParams {
        rows: rows as u32,
        cols: cols as u32,
        ..Default::default()
    };
    Dispatch::new(gpu, Kernel::Argmax, &[out, x], &[p], grid_rows(rows))
}

/// `count[0] += #{r < rows : prediction(x[r]) == labels[r]}` (u32 count, u32 labels); the
/// prediction is the argmax, or `x >= threshold` for a single column.
pub fn correct_count(
    gpu: &Gpu,
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
    Dispatch::new(
        gpu,
        Kernel::CorrectCount,
        &[count, logits, labels],
        &[p],
        grid_rows(batch_rows),
    )
}

// ---------------------------------------------------------------------------------------
// Softmax and losses

/// `out = softmax(logits)` row by row.
pub fn softmax(gpu: &Gpu, out: &GpuTensor, logits: &GpuTensor) -> Result<Dispatch> {
    let (rows, cols) = matrix("softmax", logits)?;
    expect_shape("softmax", out, (rows, cols))?;
    let p = RowsParams {
        rows: rows as u32,
        cols: cols as u32,
        ..Default::default()
    };
    Dispatch::new(gpu, Kernel::Softmax, &[out, logits], &[p], grid_rows(rows))
}

fn loss_kernel(kind: Loss) -> Kernel {
    match kind {
        Loss::Mse => Kernel::MseLoss,
        Loss::SoftmaxCrossEntropy => Kernel::SoftmaxCrossEntropy,
        Loss::BinaryCrossEntropy => Kernel::BinaryCrossEntropy,
    }
}

/// A loss and its gradient over `pred (batch_rows, cols)`, the first `rows` live:
/// `grad` (same shape), `row_loss (batch_rows)`. `target` is u32 labels `(batch_rows)` for
/// softmax cross-entropy and f32 `(batch_rows, cols)` otherwise. The batch loss is
/// `Σ row_loss / rows`.
pub fn loss(
    gpu: &Gpu,
    kind: Loss,
    grad: &GpuTensor,
    row_loss: &GpuTensor,
    pred: &GpuTensor,
    target: &GpuTensor,
    rows: usize,
) -> Result<Dispatch> {
    let op = loss_kernel(kind).entry_point();
    let (batch_rows, cols) = matrix(op, pred)?;
    expect_shape(op, grad, (batch_rows, cols))?;
    expect_len(op, row_loss, batch_rows)?;
    if kind.takes_labels() {
        expect_dtype(op, target, DType::U32)?;
        expect_len(op, target, batch_rows)?;
    } else {
        expect_dtype(op, target, DType::F32)?;
        expect_shape(op, target, (batch_rows, cols))?;
    }
    if rows > batch_rows {
        return Err(Error::shape(
            op,
            format!("at most {batch_rows} live rows"),
            rows,
        ));
    }
    let p = kind.params(rows, cols, batch_rows);
    Dispatch::new(
        gpu,
        loss_kernel(kind),
        &[grad, row_loss, pred, target],
        &[p],
        grid_rows(batch_rows),
    )
}

/// MSE: see [`loss`].
pub fn mse_loss(
    gpu: &Gpu,
    grad: &GpuTensor,
    row_loss: &GpuTensor,
    pred: &GpuTensor,
    target: &GpuTensor,
    rows: usize,
) -> Result<Dispatch> {
    loss(gpu, Loss::Mse, grad, row_loss, pred, target, rows)
}

/// Softmax cross-entropy from logits: see [`loss`].
pub fn softmax_cross_entropy(
    gpu: &Gpu,
    grad: &GpuTensor,
    row_loss: &GpuTensor,
    logits: &GpuTensor,
    labels: &GpuTensor,
    rows: usize,
) -> Result<Dispatch> {
    loss(
        gpu,
        Loss::SoftmaxCrossEntropy,
        grad,
        row_loss,
        logits,
        labels,
        rows,
    )
}

/// Binary cross-entropy from logits: see [`loss`].
pub fn binary_cross_entropy(
    gpu: &Gpu,
    grad: &GpuTensor,
    row_loss: &GpuTensor,
    logits: &GpuTensor,
    targets: &GpuTensor,
    rows: usize,
) -> Result<Dispatch> {
    loss(
        gpu,
        Loss::BinaryCrossEntropy,
        grad,
        row_loss,
        logits,
        targets,
        rows,
    )
}

// ---------------------------------------------------------------------------------------
// Optimizer updates

/// The vec4 form of an element-wise kernel (a quarter of the invocations) when `len` is a
/// multiple of 4, else the scalar one.
fn vec4_or(len: usize, scalar: Kernel, vec4: Kernel) -> (Kernel, usize) {
    if len.is_multiple_of(4) {
        (vec4, len / 4)
    } else {
        (scalar, len)
    }
}

fn check_param_pair(op: &str, param: &GpuTensor, other: &GpuTensor) -> Result<u32> {
    expect_len(op, other, param.len())?;
    u32_of(op, "len", param.len())
}

/// `p -= lr (g + wd p)`; `params.len` is filled in from the tensor.
pub fn sgd_update(
    gpu: &Gpu,
    param: &GpuTensor,
    grad: &GpuTensor,
    params: SgdParams,
) -> Result<Dispatch> {
    let len = check_param_pair("sgd_update", param, grad)?;
    let p = SgdParams { len, ..params };
    let (kernel, lanes) = vec4_or(param.len(), Kernel::SgdUpdate, Kernel::SgdUpdateVec4);
    Dispatch::new(gpu, kernel, &[param, grad], &[p], grid_1d(gpu, lanes))
}

/// `v = momentum v + (g + wd p); p -= lr v`.
pub fn momentum_update(
    gpu: &Gpu,
    param: &GpuTensor,
    velocity: &GpuTensor,
    grad: &GpuTensor,
    params: SgdParams,
) -> Result<Dispatch> {
    let len = check_param_pair("momentum_update", param, grad)?;
    check_param_pair("momentum_update", param, velocity)?;
    let p = SgdParams { len, ..params };
    let (kernel, lanes) = vec4_or(
        param.len(),
        Kernel::MomentumUpdate,
        Kernel::MomentumUpdateVec4,
    );
    Dispatch::new(
        gpu,
        kernel,
        &[param, velocity, grad],
        &[p],
        grid_1d(gpu, lanes),
    )
}

/// Adam / AdamW (PyTorch's semantics; see shaders/optim.wgsl).
pub fn adam_update(
    gpu: &Gpu,
    param: &GpuTensor,
    m: &GpuTensor,
    v: &GpuTensor,
    grad: &GpuTensor,
    params: AdamParams,
) -> Result<Dispatch> {
    let len = check_param_pair("adam_update", param, grad)?;
    check_param_pair("adam_update", param, m)?;
    check_param_pair("adam_update", param, v)?;
    let p = AdamParams { len, ..params };
    let (kernel, lanes) = vec4_or(param.len(), Kernel::AdamUpdate, Kernel::AdamUpdateVec4);
    Dispatch::new(gpu, kernel, &[param, m, v, grad], &[p], grid_1d(gpu, lanes))
}

// ---------------------------------------------------------------------------------------
// Data

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
    gpu: &Gpu,
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
    Dispatch::new(
        gpu,
        kernel,
        &[out, data, indices],
        &[p],
        grid_1d(gpu, lanes),
    )
}

/// `out[r] = bytes of row indices[start + r] / divisor` for `r < rows`, zero rows after that.
/// `data` is a u32 tensor holding `n * cols` bytes packed four to a word (`cpu::pack_u8`).
#[allow(clippy::too_many_arguments)]
pub fn gather_rows_u8(
    gpu: &Gpu,
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
    Dispatch::new(
        gpu,
        kernel,
        &[out, data, indices],
        &[p],
        grid_1d(gpu, lanes),
    )
}

/// `out[r] = labels[indices[start + r]]` for `r < rows`, 0 after that (all u32).
pub fn gather_labels(
    gpu: &Gpu,
    out: &GpuTensor,
    labels: &GpuTensor,
    indices: &GpuTensor,
    start: usize,
    rows: usize,
) -> Result<Dispatch> {
    expect_dtype("gather_labels", out, DType::U32)?;
    expect_dtype("gather_labels", labels, DType::U32)?;
    let p = gather_params("gather_labels", out.len(), 1, indices, start, rows)?;
    Dispatch::new(
        gpu,
        Kernel::GatherLabels,
        &[out, labels, indices],
        &[p],
        grid_1d(gpu, out.len()),
    )
}

// ---------------------------------------------------------------------------------------
// The perceptron

/// One epoch of Rosenblatt's rule: `weights (cols + 1)` = (w, theta), `errors` u32 (1),
/// `x (rows, cols)`, `targets (rows)` in {-1, 1}.
pub fn perceptron_epoch(
    gpu: &Gpu,
    weights: &GpuTensor,
    errors: &GpuTensor,
    x: &GpuTensor,
    targets: &GpuTensor,
    lr: f32,
) -> Result<Dispatch> {
    let op = "perceptron_epoch";
    let (rows, cols) = matrix(op, x)?;
    expect_len(op, weights, cols + 1)?;
    expect_len(op, targets, rows)?;
    expect_dtype(op, errors, DType::U32)?;
    let p = PerceptronParams {
        rows: rows as u32,
        cols: cols as u32,
        lr,
        ..Default::default()
    };
    Dispatch::new(
        gpu,
        Kernel::PerceptronEpoch,
        &[weights, errors, x, targets],
        &[p],
        [1, 1, 1],
    )
}

#[cfg(test)]
mod variant_tests {
    use super::*;

    #[test]
    fn matmul_variants_parse() {
        assert_eq!(
            "naive".parse::<MatmulVariant>().unwrap(),
            MatmulVariant::Naive
        );
        assert_eq!(
            "blocked".parse::<MatmulVariant>().unwrap(),
            MatmulVariant::Blocked
        );
        assert_eq!(
            "tuned".parse::<MatmulVariant>().unwrap(),
            MatmulVariant::Tuned
        );
        assert_eq!(
            "r32c32w8x1".parse::<MatmulVariant>().unwrap(),
            MatmulVariant::Tile(Tile::new(32, 32, 8, 1))
        );
        let err = "fast".parse::<MatmulVariant>().unwrap_err().to_string();
        assert!(
            err.contains("r64c32w8x1"),
            "the error lists the tiles: {err}"
        );
        assert_eq!(MatmulVariant::default(), MatmulVariant::Tuned);
        for c in [
            MatmulChoice::Naive,
            MatmulChoice::Blocked,
            MatmulChoice::Tile(TILES[0]),
        ] {
            assert_eq!(MatmulChoice::parse(&c.name()), Some(c));
        }
    }
}
