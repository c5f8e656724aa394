//! The size-and-setting structs that every kernel receives as its uniform, shared by the WGSL
//! side (`shaders/*.wgsl`, same struct name, same field names, same order) and the CPU twins in
//! `cpu.rs`. This module owns only the plain data; it knows nothing about wgpu.
//!
//! Every struct is `#[repr(C)]`, made of 4-byte fields only, and padded to a multiple of 16
//! bytes, so its bytes are exactly the WGSL uniform's bytes. A CPU-only test
//! (`tests/shaders.rs`) parses the shaders with naga and checks names, order and sizes.

/// What a uniform struct tells the shader validation test about itself.
pub trait Params: bytemuck::Pod {
    /// The struct's name, the same in Rust and WGSL.
    const WGSL_NAME: &'static str;
    /// Field names in order, the same in Rust and WGSL.
    const FIELDS: &'static [&'static str];
}

macro_rules! params_struct {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty),*
        }
        impl Params for $name {
            const WGSL_NAME: &'static str = stringify!($name);
            const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
        }
    };
}

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
    /// A loss over a batch buffer of `batch_rows` rows of which the first `rows` are live.
    /// Rows at or past `rows` get a zero gradient and a zero loss (the padded tail of a
    /// partial last batch).
    LossParams {
        /// Live rows.
        rows: u32,
        /// Columns of the prediction (classes or outputs).
        cols: u32,
        /// Rows in the buffers (>= rows).
        batch_rows: u32,
        /// The factor the gradient carries for a mean reduction: 1/rows for softmax
        /// cross-entropy, 1/(rows*cols) for MSE and binary cross-entropy.
        scale: f32,
    }
}

params_struct! {
    /// One step of the fully fused small-MLP pass (`kernels::fused_mlp`): the loss's rows and
    /// scale (as in `LossParams`), and where the step's rows start in the row order when the
    /// pass gathers its batch itself.
    FusedMlpParams {
        /// Live rows (the rest of the batch gets a zero gradient).
        rows: u32,
        /// Outputs of the network.
        cols: u32,
        /// Rows in the batch (>= rows).
        batch_rows: u32,
        /// The gradient's factor for the mean: 1/(rows*cols).
        scale: f32,
        /// The step's first position in the row order (gathering forms only).
        start: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

params_struct! {
    /// A plain or momentum SGD update of one parameter tensor.
    SgdParams {
        len: u32,
        lr: f32,
        /// L2 penalty added to the gradient (PyTorch's `weight_decay`).
        weight_decay: f32,
        /// Momentum factor (PyTorch's form: `v = momentum*v + g; p -= lr*v`).
        momentum: f32,
    }
}

params_struct! {
    /// An Adam or AdamW update of one parameter tensor (PyTorch's semantics).
    AdamParams {
        len: u32,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        /// 1 - beta1^t, computed on the host for the step t being taken.
        bias_correction1: f32,
        /// 1 - beta2^t.
        bias_correction2: f32,
        /// 1: AdamW's decoupled decay (`p *= 1 - lr*wd`); 0: Adam's L2 added to the gradient.
        decoupled: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

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

params_struct! {
    /// A sum of `len` values into `out[0]`, in a fixed order (deterministic).
    ReduceParams {
        len: u32,
        accumulate: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

params_struct! {
    /// One Rosenblatt perceptron step over a batch of `rows` samples of width `cols`.
    PerceptronParams {
        rows: u32,
        cols: u32,
        /// Learning rate eta.
        lr: f32,
        _pad0: u32,
    }
}
