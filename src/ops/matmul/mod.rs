//! Matrix products (`shaders/matmul.wgsl`, the generated register tiles of [`tiled`] and the
//! generated workgroup tiles of [`workgroup`]): the three
//! forms a dense layer needs (`nt` forward, `nn` input delta, `tn` weight gradient), the
//! kernel each product runs on ([`MatmulVariant`], [`MatmulChoice`]), and the fused forms
//! that finish a layer in the product's epilogue (`dense_forward`, `relu_delta`,
//! `dense_backward`). Which kernel a product runs on is the tuner's choice, made by the
//! executor before it records (`crate::autotune`); a recorder only looks it up. The same
//! three products with f16 operands, and the cast that makes them, are in [`mod@f16`]
//! (`shaders/matmul_f16.wgsl`): one kernel per form, not tuned.

use crate::error::{Error, Result};
use crate::kernels::Dispatch;
use crate::params::params_struct;
use crate::tensor::GpuTensor;

use super::activation::Activation;
use super::{dispatch, expect_len, expect_shape, matrix, u32_of, Accumulate, Kernel, Kernels};

pub mod coop;
pub mod cpu;
pub mod f16;
pub mod tiled;
pub mod workgroup;

pub use f16::{cast_f16, matmul_nn_f16, matmul_nt_f16, matmul_tn_f16, CastParams};
pub use tiled::{Epilogue, MatmulForm, Tile, TILES};
pub use workgroup::{WgLoads, WgTile, WG_TILES};

params_struct! {
    /// Sizes of a matrix product `out (m, n) = op(a) · op(b)`; see the three matmul forms.
    MatmulParams {
        /// Rows of `out`.
        m: u32,
        /// Columns of `out`.
        n: u32,
        /// The contracted dimension.
        k: u32,
        /// 1: `out += product`; 0: `out = product`.
        accumulate: u32,
    }
}

params_struct! {
    /// A matrix product through strides, `out (m, n) = A · B` with
    /// `A(i, kk) = a[i * a_row + kk * a_col]` and `B(kk, j) = b[kk * b_row + j * b_col]`,
    /// which covers the three matmul forms (see `shaders/matmul.wgsl`).
    BlockedMatmulParams {
        m: u32,
        n: u32,
        k: u32,
        accumulate: u32,
        a_row: u32,
        a_col: u32,
        b_row: u32,
        b_col: u32,
    }
}

impl BlockedMatmulParams {
    /// The strides of `out = a · bᵀ` (a (m, k), b (n, k)).
    pub fn nt(p: &MatmulParams) -> Self {
        BlockedMatmulParams {
            m: p.m,
            n: p.n,
            k: p.k,
            accumulate: p.accumulate,
            a_row: p.k,
            a_col: 1,
            b_row: 1,
            b_col: p.k,
        }
    }
    /// The strides of `out = a · b` (a (m, k), b (k, n)).
    pub fn nn(p: &MatmulParams) -> Self {
        BlockedMatmulParams {
            m: p.m,
            n: p.n,
            k: p.k,
            accumulate: p.accumulate,
            a_row: p.k,
            a_col: 1,
            b_row: p.n,
            b_col: 1,
        }
    }
    /// The strides of `out = aᵀ · b` (a (k, m), b (k, n)).
    pub fn tn(p: &MatmulParams) -> Self {
        BlockedMatmulParams {
            m: p.m,
            n: p.n,
            k: p.k,
            accumulate: p.accumulate,
            a_row: 1,
            a_col: p.m,
            b_row: p.n,
            b_col: 1,
        }
    }
}

params_struct! {
    /// A layer's forward pass in one kernel: `pre = x (m, k) · w (n, k)ᵀ (+ bias)`,
    /// `out = act(pre)`.
    DenseParams {
        m: u32,
        n: u32,
        k: u32,
        /// [`crate::Activation::code`].
        kind: u32,
        /// Negative-side slope of leaky ReLU.
        slope: f32,
        /// 1 when `bias` is added.
        has_bias: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

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
    /// One generated workgroup tile ([`workgroup`]), for every shape.
    Workgroup(WgTile),
    /// Per product, the fastest of blocked and the tiles that fit, measured on this adapter
    /// at first use and cached on disk (`autotune/`).
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
            _ => Tile::parse(s)
                .map(MatmulVariant::Tile)
                .or_else(|| WgTile::parse(s).map(MatmulVariant::Workgroup))
                .ok_or_else(|| {
                    let tiles: Vec<String> = TILES.iter().map(|t| t.name()).collect();
                    let wg: Vec<String> = WG_TILES.iter().map(|t| t.name()).collect();
                    Error::Config(format!(
                        "unknown matmul variant '{s}': naive, blocked, tuned, one of the \
                         generated tiles {}, or one of the workgroup tiles {}",
                        tiles.join(", "),
                        wg.join(", ")
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
    Workgroup(WgTile),
}

impl MatmulChoice {
    pub fn name(self) -> String {
        match self {
            MatmulChoice::Naive => "naive".into(),
            MatmulChoice::Blocked => "blocked".into(),
            MatmulChoice::Tile(t) => t.name(),
            MatmulChoice::Workgroup(t) => t.name(),
        }
    }

    pub fn parse(s: &str) -> Option<MatmulChoice> {
        match s {
            "naive" => Some(MatmulChoice::Naive),
            "blocked" => Some(MatmulChoice::Blocked),
            _ => Tile::parse(s)
                .map(MatmulChoice::Tile)
                .or_else(|| WgTile::parse(s).map(MatmulChoice::Workgroup)),
        }
    }
}

/// `out (m, n) = a (m, k) · b (n, k)ᵀ` — the forward product `Y = X·Wᵀ`.
pub fn matmul_nt(
    kernels: &Kernels,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    matmul(kernels, MatmulForm::Nt, out, a, b, acc)
}

/// `out (m, n) = a (m, k) · b (k, n)` — the input delta `dX = dY·W`.
pub fn matmul_nn(
    kernels: &Kernels,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    matmul(kernels, MatmulForm::Nn, out, a, b, acc)
}

/// `out (m, n) = a (k, m)ᵀ · b (k, n)` — the weight gradient `dW = dYᵀ·X`.
pub fn matmul_tn(
    kernels: &Kernels,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    matmul(kernels, MatmulForm::Tn, out, a, b, acc)
}

/// The three forms: shapes checked, then the kernel the variant (or the tuner) picks.
fn matmul(
    kernels: &Kernels,
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
    let choice = matmul_choice(kernels, form, m, n, k, acc);
    matmul_dispatch(kernels, form, choice, out, a, b, &p)
}

/// The key a product's tuned choice is stored under (`nt 1024x1024x1024`).
pub fn shape_key(form: MatmulForm, m: usize, n: usize, k: usize) -> String {
    format!("{} {m}x{n}x{k}", form.name())
}

/// The key of a product's choice under `kernels`' tuning: [`shape_key`], and ` strict` after
/// it for strict kernels, whose blocked candidate is the scalar kernel (so the two modes'
/// measurements do not stand in for each other).
pub fn choice_key(kernels: &Kernels, form: MatmulForm, m: usize, n: usize, k: usize) -> String {
    let key = shape_key(form, m, n, k);
    if kernels.tuning().is_strict() {
        format!("{key} strict")
    } else {
        key
    }
}

/// Whether `MatmulChoice::Blocked` runs this product on the scalar `matmul_blocked`: always
/// for strict kernels (the vec4 forms sum each step of 4 in k through a dot product, whose
/// order WGSL leaves open), otherwise where the shapes do not allow vec4 loads.
fn blocked_is_scalar(kernels: &Kernels, form: MatmulForm, n: usize, k: usize) -> bool {
    kernels.tuning().is_strict()
        || match form {
            MatmulForm::Nt => !k.is_multiple_of(4),
            MatmulForm::Nn => !(k.is_multiple_of(4) && n.is_multiple_of(4)),
            MatmulForm::Tn => true,
        }
}

/// The kernel a product of this form and size runs on under `kernels`' tuning: the variant
/// asked for, or under `MatmulVariant::Tuned` the tuner's choice (`crate::autotune::choose`
/// makes it before the executor records; without one, the blocked kernel). A choice that
/// does not fit the shape falls back to the blocked kernel, which takes every shape.
pub fn matmul_choice(
    kernels: &Kernels,
    form: MatmulForm,
    m: usize,
    n: usize,
    k: usize,
    acc: Accumulate,
) -> MatmulChoice {
    let fits = |c: MatmulChoice| match c {
        MatmulChoice::Tile(t) => t.fits(form, m, n, k, acc),
        // Workgroup tiles take every shape and accumulate.
        MatmulChoice::Naive | MatmulChoice::Blocked | MatmulChoice::Workgroup(_) => true,
    };
    let choice = match kernels.tuning().matmul {
        MatmulVariant::Naive => MatmulChoice::Naive,
        MatmulVariant::Blocked => MatmulChoice::Blocked,
        MatmulVariant::Tile(t) => MatmulChoice::Tile(t),
        MatmulVariant::Workgroup(t) => MatmulChoice::Workgroup(t),
        MatmulVariant::Tuned => kernels
            .tuner()
            .choices
            .get(&choice_key(kernels, form, m, n, k))
            .and_then(|name| MatmulChoice::parse(name))
            .unwrap_or(MatmulChoice::Blocked),
    };
    if fits(choice) {
        choice
    } else {
        MatmulChoice::Blocked
    }
}

/// The forward pass of a dense layer in one kernel, `pre = x · wᵀ (+ bias)` and
/// `out = act(pre)`, in place of `matmul_nt` followed by `bias_activation_forward` (same
/// values, and on lavapipe the same bits). Where the product runs on a generated tile or
/// workgroup tile (as chosen for `matmul_nt` of this size), the bias and a ReLU or identity
/// activation are the tile's epilogue; where it would run on the scalar blocked kernel (k not a multiple of 4),
/// `dense_forward` does any activation. `None` elsewhere (naive kernels, the vec4 blocked
/// product, other activations on a tile, a device that binds fewer than five storage buffers
/// per stage), and the caller records the two kernels. `dummy` stands in for a missing bias.
#[allow(clippy::too_many_arguments)]
pub fn dense_forward(
    kernels: &Kernels,
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
    if kernels.gpu().limits().max_storage_buffers_per_shader_stage < 5 {
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
    match matmul_choice(kernels, MatmulForm::Nt, m, n, k, Accumulate::Overwrite) {
        MatmulChoice::Tile(t) => {
            let (Some(bias), Activation::Relu | Activation::Identity) = (bias, act) else {
                return Ok(None);
            };
            let relu = act == Activation::Relu;
            dispatch(
                kernels,
                Kernel::MatmulTile(MatmulForm::Nt, t, Epilogue::BiasAct { relu }),
                &[pre, x, w, out, bias],
                &[p],
                t.grid(m, n),
            )
            .map(Some)
        }
        MatmulChoice::Workgroup(t) => {
            let (Some(bias), Activation::Relu | Activation::Identity) = (bias, act) else {
                return Ok(None);
            };
            let relu = act == Activation::Relu;
            dispatch(
                kernels,
                Kernel::MatmulWorkgroup(
                    MatmulForm::Nt,
                    t,
                    wg_loads(MatmulForm::Nt, &p, x, w),
                    Epilogue::BiasAct { relu },
                ),
                &[pre, x, w, out, bias],
                &[p],
                t.grid(m, n),
            )
            .map(Some)
        }
        MatmulChoice::Blocked if blocked_is_scalar(kernels, MatmulForm::Nt, n, k) => {
            let dp = DenseParams {
                m: p.m,
                n: p.n,
                k: p.k,
                kind: act.code(),
                slope: act.slope(),
                has_bias: bias.is_some() as u32,
                ..Default::default()
            };
            dispatch(
                kernels,
                Kernel::DenseForward,
                &[pre, x, w, out, bias.unwrap_or(dummy)],
                &[dp],
                blocked_grid(m, n),
            )
            .map(Some)
        }
        // The naive kernels, and the vec4 blocked ones: the two kernels apart.
        MatmulChoice::Naive | MatmulChoice::Blocked => Ok(None),
    }
}

/// The input delta of a ReLU layer in one kernel, `dpre = (d · w) * relu'(pre)`, where the
/// product `d · w` runs on a workgroup tile or a generated tile (as chosen for `matmul_nn` of
/// this size) small enough for the epilogue ([`tiled::RELU_GRAD_MAX_OUTPUTS`]); `None` where
/// not, and the caller
/// records `matmul_nn` and `activation_backward` instead. Same values, and on lavapipe the
/// same bits, as those two; the product itself is not stored.
pub fn relu_delta(
    kernels: &Kernels,
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
    match matmul_choice(kernels, MatmulForm::Nn, m, n, k, Accumulate::Overwrite) {
        MatmulChoice::Tile(t) if tiled::relu_grad_allowed(t) => dispatch(
            kernels,
            Kernel::MatmulTile(MatmulForm::Nn, t, Epilogue::ReluGrad),
            &[dpre, d, w, pre],
            &[p],
            t.grid(m, n),
        )
        .map(Some),
        MatmulChoice::Workgroup(t) => dispatch(
            kernels,
            Kernel::MatmulWorkgroup(
                MatmulForm::Nn,
                t,
                wg_loads(MatmulForm::Nn, &p, d, w),
                Epilogue::ReluGrad,
            ),
            &[dpre, d, w, pre],
            &[p],
            t.grid(m, n),
        )
        .map(Some),
        // A bigger tile, or no tile: the two kernels apart.
        MatmulChoice::Tile(_) | MatmulChoice::Naive | MatmulChoice::Blocked => Ok(None),
    }
}

/// The input delta of a layer through any activation in one kernel, `dpre = (d · w) *
/// act'(pre)`, where the product `d · w` would run on the scalar blocked kernel (k or n not a
/// multiple of 4, as for the delta from a 10-class output layer); `None` elsewhere (a tile,
/// the vec4 blocked kernel or the naive one runs the product there), and the caller records
/// `matmul_nn` and `activation_backward` instead. Same values, and on lavapipe the same bits,
/// as those two; the product itself is not stored.
pub fn dense_backward(
    kernels: &Kernels,
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
    match matmul_choice(kernels, MatmulForm::Nn, m, n, k, Accumulate::Overwrite) {
        MatmulChoice::Blocked if blocked_is_scalar(kernels, MatmulForm::Nn, n, k) => {
            let dp = DenseParams {
                m: p.m,
                n: p.n,
                k: p.k,
                kind: act.code(),
                slope: act.slope(),
                ..Default::default()
            };
            dispatch(
                kernels,
                Kernel::DenseBackward,
                &[dpre, d, w, pre],
                &[dp],
                blocked_grid(m, n),
            )
            .map(Some)
        }
        // A tile, the naive kernel or the vec4 blocked one: the two kernels apart.
        MatmulChoice::Tile(_)
        | MatmulChoice::Workgroup(_)
        | MatmulChoice::Naive
        | MatmulChoice::Blocked => Ok(None),
    }
}

/// The dispatch of one product on the kernel `choice` names (shapes already checked; a tile
/// must fit them).
pub(crate) fn matmul_dispatch(
    kernels: &Kernels,
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
            dispatch(kernels, naive, &[out, a, b], &[*p], matmul_grid(m, n))
        }
        MatmulChoice::Tile(t) => dispatch(
            kernels,
            Kernel::MatmulTile(form, t, Epilogue::Store),
            &[out, a, b],
            &[*p],
            t.grid(m, n),
        ),
        MatmulChoice::Workgroup(t) => dispatch(
            kernels,
            Kernel::MatmulWorkgroup(form, t, wg_loads(form, p, a, b), Epilogue::Store),
            &[out, a, b],
            &[*p],
            t.grid(m, n),
        ),
        // vec4 loads where the shapes allow them (see shaders/matmul.wgsl). A vec4 form
        // of dW = dYᵀ·X was tried and was slower at training shapes on lavapipe.
        MatmulChoice::Blocked
            if form == MatmulForm::Nt && !blocked_is_scalar(kernels, form, n, k) =>
        {
            dispatch(
                kernels,
                Kernel::MatmulNtVec4,
                &[out, a, b],
                &[BlockedMatmulParams::nt(p)],
                blocked_grid(m, n),
            )
        }
        MatmulChoice::Blocked
            if form == MatmulForm::Nn && !blocked_is_scalar(kernels, form, n, k) =>
        {
            dispatch(
                kernels,
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
            dispatch(
                kernels,
                Kernel::MatmulBlocked,
                &[out, a, b],
                &[strides],
                blocked_grid(m, n),
            )
        }
    }
}

/// How a workgroup tile reads the operands `a` and `b` of a product of `form` sized `p`: as
/// vec4 where the shapes allow it and the binding starts on 16 bytes ([`WgLoads::for_shape`],
/// [`WgLoads::aligned`]), else one f32 per load.
fn wg_loads(form: MatmulForm, p: &MatmulParams, a: &GpuTensor, b: &GpuTensor) -> WgLoads {
    WgLoads::for_shape(form, p.m as usize, p.n as usize, p.k as usize)
        .aligned(a.offset(), b.offset())
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
        // A well-formed tile name that the generator does not produce is refused too.
        assert!("r12c12w8x8".parse::<MatmulVariant>().is_err());
        let err = "fast".parse::<MatmulVariant>().unwrap_err().to_string();
        assert!(
            err.contains("r64c32w8x1"),
            "the error lists the tiles: {err}"
        );
        for &t in WG_TILES {
            assert_eq!(
                t.name().parse::<MatmulVariant>().unwrap(),
                MatmulVariant::Workgroup(t)
            );
            assert!(
                err.contains(&t.name()),
                "the error lists {}: {err}",
                t.name()
            );
        }
        assert!("wg64x64k32t4x4".parse::<MatmulVariant>().is_err());
        assert_eq!(MatmulVariant::default(), MatmulVariant::Tuned);
        for c in [
            MatmulChoice::Naive,
            MatmulChoice::Blocked,
            MatmulChoice::Tile(TILES[0]),
            MatmulChoice::Workgroup(WG_TILES[0]),
        ] {
            assert_eq!(MatmulChoice::parse(&c.name()), Some(c));
        }
    }
}
