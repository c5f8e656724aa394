//! The op families, and what ties them to a device. Each module holds everything about one
//! family of kernels: its uniform structs (the same names and fields as in its `.wgsl` file),
//! its recorders (one small function per op that checks shapes and element types, fills the
//! uniform and the grid, and returns a ready-to-record [`Dispatch`]), and its CPU twins in a
//! `cpu` submodule, named like the WGSL entry point and taking their arguments in the same
//! order: outputs first, then inputs, then the uniform.
//!
//! This file holds the kernel table ([`Kernel`]: every entry point with its file, bindings and
//! uniform, generated from one list), the compiled pipelines and tuner's choices of a device
//! ([`Kernels`]), the tuning a caller asks for ([`Tuning`]), and the shape checks the
//! recorders share. Scheduling whole steps is the plan's and the executors' job.
//!
//! | family | shader | ops |
//! | --- | --- | --- |
//! | [`matmul`] | `matmul.wgsl`, generated tiles | the three products, fused dense layers |
//! | [`matmul::f16`] | `matmul_f16.wgsl` | the three products of f16 operands, the f32 -> f16 cast |
//! | [`activation`] | `activation.wgsl` | bias + activation, activation derivatives |
//! | [`reduce`] | `reduce.wgsl` | column sums, sums, argmax, correct counts |
//! | [`loss`](mod@loss) | `loss.wgsl` | softmax, MSE, softmax cross-entropy, binary cross-entropy |
//! | [`optim`] | `optim.wgsl` | one update kernel per [`optim::UpdateRule`] |
//! | [`data`] | `data.wgsl` | row and label gathers |
//! | [`perceptron`] | `perceptron.wgsl` | Rosenblatt's rule |
//! | [`scale`] | `scale.wgsl` | dynamic loss scaling for mixed precision |
//! | [`fused_mlp`](mod@fused_mlp) | generated | the fully fused small-MLP training pass |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{
    Access, Dispatch, KernelSpec, Pipeline, Shader, ACTIVATION, DATA, LOSS, LOSS_SUBGROUP, MATMUL,
    MATMUL_F16, OPTIM, PERCEPTRON, REDUCE, REDUCE_SUBGROUP, SCALE, STRICT_SELF_TEST,
};
use crate::params::{Params, ParamsInfo};
use crate::tensor::{DType, GpuTensor};

use crate::math::Math;
use activation::ActivationParams;
use data::GatherParams;
use fused_mlp::{FusedMlp, FusedMlpParams, MlpShape};
use loss::LossParams;
use matmul::{
    tiled, workgroup, BlockedMatmulParams, CastParams, DenseParams, Epilogue, MatmulForm,
    MatmulParams, Tile, WgLoads, WgTile, TILES, WG_TILES,
};
use optim::OptimParams;
use perceptron::PerceptronParams;
use reduce::{ReduceParams, RowsParams};
use scale::ScaleParams;
use Access::{Read as R, ReadWrite as W};

pub mod activation;
pub mod data;
pub mod fused_mlp;
pub mod loss;
pub mod matmul;
pub mod optim;
pub mod perceptron;
pub mod reduce;
pub mod scale;

pub use activation::{activation_backward, bias_activation_forward, Activation};
pub use data::{gather_labels, gather_rows, gather_rows_u8};
pub use fused_mlp::{fused_mlp, fused_mlp_fits};
pub use loss::{
    binary_cross_entropy, loss, loss_as, mse_loss, softmax, softmax_as, softmax_cross_entropy, Loss,
};
pub use matmul::{
    cast_f16, dense_backward, dense_forward, matmul_nn, matmul_nn_f16, matmul_nt, matmul_nt_f16,
    matmul_tn, matmul_tn_f16, relu_delta, MatmulChoice, MatmulVariant,
};
pub use optim::{update, UpdateRule};
pub use perceptron::perceptron_epoch;
pub use reduce::{argmax, column_sum, column_sum_as, correct_count, reduce_sum, SumForm};

/// Every family's uniform struct, for code that fills them by hand (tests, tools).
pub mod uniforms {
    pub use super::activation::ActivationParams;
    pub use super::data::GatherParams;
    pub use super::fused_mlp::FusedMlpParams;
    pub use super::loss::LossParams;
    pub use super::matmul::{BlockedMatmulParams, CastParams, DenseParams, MatmulParams};
    pub use super::optim::OptimParams;
    pub use super::perceptron::PerceptronParams;
    pub use super::reduce::{ReduceParams, RowsParams};
    pub use super::scale::ScaleParams;
}

/// The kernel table: one line per kernel of a `.wgsl` file (variant, shader, entry point,
/// storage bindings, uniform struct). It generates the [`Kernel`] enum, [`Kernel::ALL`] and
/// the spec of each, so that a kernel cannot be dispatched without being in the list the
/// naga contract test walks.
macro_rules! kernel_table {
    ($($(#[$meta:meta])* $name:ident => $shader:ident, $entry:literal, [$($acc:ident),*], $params:ty;)*) => {
        /// Every kernel soma dispatches.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Kernel {
            $($(#[$meta])* $name,)*
            /// A generated register-tiled matmul (`ops/matmul/tiled.rs`), with what it does with
            /// its sums.
            MatmulTile(MatmulForm, Tile, Epilogue),
            /// A generated workgroup-tiled matmul (`ops/matmul/workgroup.rs`), with how it reads
            /// its operands and what it does with its sums.
            MatmulWorkgroup(MatmulForm, WgTile, WgLoads, Epilogue),
            /// The generated fully fused training pass of one small network
            /// (`ops/fused_mlp`).
            FusedMlp(MlpShape),
            /// An optimizer update (`shaders/optim.wgsl`), in its vec4 form when `true`.
            Update(UpdateRule, bool),
        }

        impl Kernel {
            /// Every kernel of the table (the generated and per-rule kernels are in
            /// [`Kernel::all`]).
            pub const ALL: &'static [Kernel] = &[$(Kernel::$name),*];

            /// The kernel's source, entry point, bindings and uniform.
            pub fn spec(self) -> KernelSpec {
                match self {
                    $(Kernel::$name => KernelSpec {
                        shader: $shader,
                        entry: $entry,
                        storage: &[$($acc),*],
                        uniform: ParamsInfo::of::<$params>(),
                    },)*
                    Kernel::MatmulTile(form, tile, epilogue) => tile_spec(form, tile, epilogue),
                    Kernel::MatmulWorkgroup(form, tile, loads, epilogue) => {
                        workgroup_spec(form, tile, loads, epilogue)
                    }
                    Kernel::FusedMlp(shape) => fused_mlp_spec(shape),
                    Kernel::Update(rule, vec4) => update_spec(rule, vec4),
                }
            }
        }
    };
}

kernel_table! {
    MatmulNt => MATMUL, "matmul_nt", [W, R, R], MatmulParams;
    MatmulNn => MATMUL, "matmul_nn", [W, R, R], MatmulParams;
    MatmulTn => MATMUL, "matmul_tn", [W, R, R], MatmulParams;
    MatmulBlocked => MATMUL, "matmul_blocked", [W, R, R], BlockedMatmulParams;
    MatmulNtVec4 => MATMUL, "matmul_nt_vec4", [W, R, R], BlockedMatmulParams;
    MatmulNnVec4 => MATMUL, "matmul_nn_vec4", [W, R, R], BlockedMatmulParams;
    /// out (f32), a (f16), b (f16)
    MatmulNtF16 => MATMUL_F16, "matmul_nt_f16", [W, R, R], MatmulParams;
    /// out (f32), a (f16), b (f16)
    MatmulNnF16 => MATMUL_F16, "matmul_nn_f16", [W, R, R], MatmulParams;
    /// out (f32), a (f16), b (f16)
    MatmulTnF16 => MATMUL_F16, "matmul_tn_f16", [W, R, R], MatmulParams;
    /// out (f16), x (f32)
    CastF16 => MATMUL_F16, "cast_f16", [W, R], CastParams;
    BiasActivationForward => ACTIVATION, "bias_activation_forward", [W, W, R], ActivationParams;
    BiasActivationForwardVec4 => ACTIVATION, "bias_activation_forward_vec4", [W, W, R], ActivationParams;
    ActivationBackward => ACTIVATION, "activation_backward", [W, R, R], ActivationParams;
    ActivationBackwardVec4 => ACTIVATION, "activation_backward_vec4", [W, R, R], ActivationParams;
    /// pre, x, w, out, bias
    DenseForward => ACTIVATION, "dense_forward", [W, R, R, W, R], DenseParams;
    /// dpre, d, w, pre
    DenseBackward => ACTIVATION, "dense_backward", [W, R, R, R], DenseParams;
    ColumnSum => REDUCE, "column_sum", [W, R], RowsParams;
    ColumnSumVec4 => REDUCE, "column_sum_vec4", [W, R], RowsParams;
    /// column_sum with the rows split over 32 lanes per column (its own order)
    ColumnSumSplit => REDUCE, "column_sum_split", [W, R], RowsParams;
    ReduceSum => REDUCE, "reduce_sum", [W, R], ReduceParams;
    Argmax => REDUCE, "argmax", [W, R], RowsParams;
    CorrectCount => REDUCE, "correct_count", [W, R, R], RowsParams;
    /// reduce_sum with its first levels as subgroup shuffles (same order, same bits)
    ReduceSumSubgroup => REDUCE_SUBGROUP, "reduce_sum_subgroup", [W, R], ReduceParams;
    /// column_sum_split with its first levels as subgroup shuffles (same order, same bits)
    ColumnSumSplitSubgroup => REDUCE_SUBGROUP, "column_sum_split_subgroup", [W, R], RowsParams;
    /// correct_count with one atomicAdd per subgroup
    CorrectCountSubgroup => REDUCE_SUBGROUP, "correct_count_subgroup", [W, R, R], RowsParams;
    Softmax => LOSS, "softmax", [W, R], RowsParams;
    /// softmax with each row split over 32 lanes (its own order)
    SoftmaxSplit => LOSS, "softmax_split", [W, R], RowsParams;
    /// softmax_split with its first levels as subgroup shuffles (same order, same bits)
    SoftmaxSplitSubgroup => LOSS_SUBGROUP, "softmax_split_subgroup", [W, R], RowsParams;
    MseLoss => LOSS, "mse_loss", [W, W, R, R], LossParams;
    SoftmaxCrossEntropy => LOSS, "softmax_cross_entropy", [W, W, R, R], LossParams;
    /// softmax_cross_entropy with each row split over 32 lanes (softmax_split's order)
    SoftmaxCrossEntropySplit => LOSS, "softmax_cross_entropy_split", [W, W, R, R], LossParams;
    /// softmax_cross_entropy_split with its first levels as subgroup shuffles (same bits)
    SoftmaxCrossEntropySplitSubgroup => LOSS_SUBGROUP, "softmax_cross_entropy_split_subgroup", [W, W, R, R], LossParams;
    BinaryCrossEntropy => LOSS, "binary_cross_entropy", [W, W, R, R], LossParams;
    GatherRows => DATA, "gather_rows", [W, R, R], GatherParams;
    GatherRowsVec4 => DATA, "gather_rows_vec4", [W, R, R], GatherParams;
    GatherRowsU8 => DATA, "gather_rows_u8", [W, R, R], GatherParams;
    GatherRowsU8Vec4 => DATA, "gather_rows_u8_vec4", [W, R, R], GatherParams;
    GatherLabels => DATA, "gather_labels", [W, R, R], GatherParams;
    PerceptronEpoch => PERCEPTRON, "perceptron_epoch", [W, W, R, R], PerceptronParams;
    /// x, state
    ScaleValues => SCALE, "scale_values", [W, R], ScaleParams;
    /// state, x (f32 read as bits)
    GradOverflow => SCALE, "grad_overflow", [W, R], ScaleParams;
    /// x, state
    UnscaleValues => SCALE, "unscale_values", [W, R], ScaleParams;
    LossScaleUpdate => SCALE, "loss_scale_update", [W], ScaleParams;
    /// Strict mode's self-test (`exec::strict`): out (bit patterns), x
    StrictSelfTest => STRICT_SELF_TEST, "strict_self_test", [W, R], ReduceParams;
}

/// An update's bindings: the parameter, up to four state tensors, the gradient.
const UPDATE_ACCESS: [Access; 6] = [W, W, W, W, W, R];

impl Kernel {
    /// Every kernel: the table's, every generated tile and workgroup tile of every form and
    /// epilogue (the workgroup tiles with each of their loads), and the
    /// update of every rule in both widths. (Fused MLP passes are generated per network and
    /// validated by their own tests.)
    pub fn all() -> Vec<Kernel> {
        let mut all = Kernel::ALL.to_vec();
        for form in MatmulForm::ALL {
            all.extend(
                TILES
                    .iter()
                    .map(|&t| Kernel::MatmulTile(form, t, Epilogue::Store)),
            );
        }
        for relu in [true, false] {
            all.extend(
                TILES
                    .iter()
                    .map(|&t| Kernel::MatmulTile(MatmulForm::Nt, t, Epilogue::BiasAct { relu })),
            );
        }
        all.extend(
            TILES
                .iter()
                .filter(|t| tiled::relu_grad_allowed(**t))
                .map(|&t| Kernel::MatmulTile(MatmulForm::Nn, t, Epilogue::ReluGrad)),
        );
        for &t in WG_TILES {
            for loads in WgLoads::ALL {
                all.extend(
                    MatmulForm::ALL
                        .iter()
                        .map(|&form| Kernel::MatmulWorkgroup(form, t, loads, Epilogue::Store)),
                );
                all.extend([
                    Kernel::MatmulWorkgroup(
                        MatmulForm::Nt,
                        t,
                        loads,
                        Epilogue::BiasAct { relu: true },
                    ),
                    Kernel::MatmulWorkgroup(
                        MatmulForm::Nt,
                        t,
                        loads,
                        Epilogue::BiasAct { relu: false },
                    ),
                    Kernel::MatmulWorkgroup(MatmulForm::Nn, t, loads, Epilogue::ReluGrad),
                ]);
            }
        }
        for rule in UpdateRule::ALL {
            all.extend([Kernel::Update(rule, false), Kernel::Update(rule, true)]);
        }
        all
    }

    pub fn entry_point(self) -> &'static str {
        self.spec().entry
    }
}

fn fused_mlp_spec(shape: MlpShape) -> KernelSpec {
    let (source, entry) = fused_mlp::generated(shape);
    // partials, prediction, row losses, input, target, parameter arena (and the row order,
    // for the gathering forms)
    let storage: &'static [Access] = if shape.gather {
        &[W, W, W, R, R, R, R]
    } else {
        &[W, W, W, R, R, R]
    };
    KernelSpec {
        shader: Shader {
            file: "fused MLP pass (generated by src/ops/fused_mlp)",
            source,
            subgroups: false,
            f16: false,
        },
        entry,
        storage,
        uniform: ParamsInfo::of::<FusedMlpParams>(),
    }
}

/// The storage bindings of a generated matmul with `epilogue`.
fn epilogue_storage(epilogue: Epilogue) -> &'static [Access] {
    match epilogue {
        Epilogue::Store => &[W, R, R],
        // out (pre-activation), x, w, act_out, bias
        Epilogue::BiasAct { .. } => &[W, R, R, W, R],
        // dpre, d, w, pre
        Epilogue::ReluGrad => &[W, R, R, R],
    }
}

fn tile_spec(form: MatmulForm, tile: Tile, epilogue: Epilogue) -> KernelSpec {
    let (source, entry) = tiled::generated(form, tile, epilogue);
    KernelSpec {
        shader: Shader {
            file: "matmul tile (generated by src/ops/matmul/tiled.rs)",
            source,
            subgroups: false,
            f16: false,
        },
        entry,
        storage: epilogue_storage(epilogue),
        uniform: ParamsInfo::of::<MatmulParams>(),
    }
}

fn workgroup_spec(
    form: MatmulForm,
    tile: WgTile,
    loads: WgLoads,
    epilogue: Epilogue,
) -> KernelSpec {
    let (source, entry) = workgroup::generated(form, tile, loads, epilogue);
    KernelSpec {
        shader: Shader {
            file: "matmul workgroup tile (generated by src/ops/matmul/workgroup.rs)",
            source,
            subgroups: false,
            f16: false,
        },
        entry,
        // The bindings of the epilogue the form has (tn's kernels are all `Store`).
        storage: epilogue_storage(tiled::epilogue_for(form, epilogue)),
        uniform: ParamsInfo::of::<MatmulParams>(),
    }
}

fn update_spec(rule: UpdateRule, vec4: bool) -> KernelSpec {
    let states = rule.state_names().len();
    KernelSpec {
        shader: OPTIM,
        entry: rule.entry_point(vec4),
        storage: &UPDATE_ACCESS[UPDATE_ACCESS.len() - states - 2..],
        uniform: ParamsInfo::of::<OptimParams>(),
    }
}

/// Which kernels run and which fusions apply, as the caller asks: the library's default is
/// `Tuning::default()` (tuned matmuls, fusion on, the fused MLP pass where it measures
/// faster); the `soma` command reads it from the environment ([`Tuning::from_env`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// The matmul kernel (`SOMA_MATMUL=naive|blocked|tuned|<tile>|<workgroup tile>`).
    pub matmul: MatmulVariant,
    /// Fuse kernels: a layer's product with its bias and activation, a delta with its
    /// activation derivative, every parameter tensor's update into one dispatch
    /// (`SOMA_FUSE=on|off`).
    pub fuse: bool,
    /// When a training step runs as the fully fused small-MLP pass
    /// (`SOMA_FUSED_MLP=auto|on|off|<form>`).
    pub fused_mlp: FusedMlp,
    /// Measure the candidates of a product (or a fused pass) that has no cached choice
    /// (`SOMA_AUTOTUNE=on|off`); off takes a cached choice or the blocked kernel.
    pub autotune: bool,
    /// The arithmetic of the kernels' divisions, roots, exponentials and logarithms
    /// ([`Tuning::strict`] sets [`Math::Strict`]).
    pub math: Math,
    /// Run the reductions' subgroup forms where the device has subgroups
    /// (`SOMA_SUBGROUPS=on|off`; see [`Kernels::subgroups`]). They sum in their fallbacks'
    /// order, so the switch changes speed, never bits.
    pub subgroups: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            matmul: MatmulVariant::Tuned,
            fuse: true,
            fused_mlp: FusedMlp::Auto,
            autotune: true,
            math: Math::Native,
            subgroups: true,
        }
    }
}

impl Tuning {
    /// Strict mode's kernels (`--deterministic strict`): soma's own division, square root,
    /// exponential and logarithm ([`Math::Strict`]), and only products whose k-sum runs in
    /// order 0..k-1 with a separate multiply and add, as the CPU twins' does: the naive
    /// kernels, the scalar `matmul_blocked` (never its vec4 forms, which add each step of 4
    /// through a dot product) and the generated register and workgroup tiles, tuned among
    /// themselves, with their fused epilogues; not the fused MLP pass, whose sums run in
    /// another order. Whichever the tuner picks, every kernel does the operations of its CPU
    /// twin in the same order.
    pub fn strict() -> Tuning {
        Tuning {
            matmul: MatmulVariant::Tuned,
            fuse: true,
            fused_mlp: FusedMlp::Off,
            autotune: true,
            math: Math::Strict,
            subgroups: true,
        }
    }

    /// Whether these kernels keep strict mode's order (their arithmetic is
    /// [`Math::Strict`]; the matmul choice then leaves out every form that does not).
    pub fn is_strict(&self) -> bool {
        self.math == Math::Strict && self.fused_mlp == FusedMlp::Off
    }

    /// The tuning the environment asks for: `SOMA_MATMUL`, `SOMA_FUSE`, `SOMA_FUSED_MLP`,
    /// `SOMA_AUTOTUNE`, `SOMA_SUBGROUPS`, each defaulting as [`Tuning::default`]. A value soma cannot honour
    /// is an error that names the variable.
    pub fn from_env() -> Result<Tuning> {
        Tuning::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Tuning::from_env`] over any source of variables (`lookup` gives a variable's value,
    /// `None` when it is not set); an empty value counts as not set.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Tuning> {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let switch = |name: &str, default: bool| -> Result<bool> {
            match var(name).as_deref() {
                None => Ok(default),
                Some("on" | "1" | "true") => Ok(true),
                Some("off" | "0" | "false") => Ok(false),
                Some(v) => Err(Error::Config(format!("{name}='{v}': use on or off"))),
            }
        };
        let named = |name: &str, e: Error| {
            let message = if let Error::Config(m) = e {
                m
            } else {
                e.to_string()
            };
            Error::Config(format!(
                "{name}='{}': {message}",
                var(name).unwrap_or_default()
            ))
        };
        let d = Tuning::default();
        Ok(Tuning {
            matmul: match var("SOMA_MATMUL") {
                Some(v) => v.parse().map_err(|e| named("SOMA_MATMUL", e))?,
                None => d.matmul,
            },
            fuse: switch("SOMA_FUSE", d.fuse)?,
            fused_mlp: match var("SOMA_FUSED_MLP") {
                Some(v) => v.parse().map_err(|e| named("SOMA_FUSED_MLP", e))?,
                None => d.fused_mlp,
            },
            autotune: switch("SOMA_AUTOTUNE", d.autotune)?,
            math: d.math,
            subgroups: switch("SOMA_SUBGROUPS", d.subgroups)?,
        })
    }
}

/// The tuner's memory: the choices made or loaded so far, by shape key (`nt 1024x1024x1024`
/// -> `r64c32w8x1`, `mlp ...` -> a form of the fused pass). `crate::autotune` fills it and
/// keeps its disk cache; recorders only read it.
#[derive(Debug, Default)]
pub struct TunerState {
    /// This adapter's cache key, set when the cache file was read (once per `Kernels`).
    pub key: Option<String>,
    pub choices: HashMap<String, String>,
    /// How many choices this process measured (not loaded from the cache).
    pub measured: u64,
}

/// The compiled pipelines of one device (each built once, on first use), the tuner's
/// choices for it and the [`Tuning`] asked for. Share one across runs on the same device
/// (`Device::Tuned`) so that pipelines are compiled and products tuned once.
pub struct Kernels<'g> {
    gpu: &'g Gpu,
    tuning: Tuning,
    pipelines: Mutex<HashMap<Kernel, Arc<Pipeline>>>,
    tuner: Mutex<TunerState>,
}

impl<'g> Kernels<'g> {
    pub fn new(gpu: &'g Gpu, tuning: Tuning) -> Kernels<'g> {
        Kernels {
            gpu,
            tuning,
            pipelines: Mutex::new(HashMap::new()),
            tuner: Mutex::new(TunerState::default()),
        }
    }

    /// The device these kernels run on.
    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// Whether the reductions record their subgroup forms here: the tuning asks for them
    /// and the device has `Features::SUBGROUP` ([`Gpu::subgroups`]), and the kernels are not
    /// strict mode's SPIR-V (written at SPIR-V 1.0, which has no subgroup operations;
    /// [`Gpu::takes_spirv`]). Either way the bits are the same: each subgroup form sums in
    /// its fallback's order.
    pub fn subgroups(&self) -> bool {
        self.tuning.subgroups
            && self.gpu.subgroups().is_some()
            && !(self.tuning.math == Math::Strict && self.gpu.takes_spirv())
    }

    /// The tuner's choices so far.
    pub fn tuner(&self) -> MutexGuard<'_, TunerState> {
        self.tuner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The compiled pipeline of a kernel, built (once) on first use.
    pub fn pipeline(&self, kernel: Kernel) -> Result<Arc<Pipeline>> {
        let mut cache = self
            .pipelines
            .lock()
            .map_err(|_| Error::DeviceLost("pipeline cache poisoned by a panic".into()))?;
        if let Some(p) = cache.get(&kernel) {
            return Ok(p.clone());
        }
        let p = Arc::new(Pipeline::build(self.gpu, kernel.spec(), self.tuning.math)?);
        cache.insert(kernel, p.clone());
        Ok(p)
    }
}

impl std::fmt::Debug for Kernels<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("adapter", &self.gpu.adapter().name)
            .field("tuning", &self.tuning)
            .finish()
    }
}

/// A dispatch of `kernel` on `kernels`' device: its pipeline (built once), `tensors` in
/// binding order and `params` (one entry or more).
pub(crate) fn dispatch<P: Params>(
    kernels: &Kernels<'_>,
    kernel: Kernel,
    tensors: &[&GpuTensor],
    params: &[P],
    workgroups: [u32; 3],
) -> Result<Dispatch> {
    Dispatch::new(
        kernels.gpu(),
        kernels.pipeline(kernel)?,
        tensors,
        params,
        workgroups,
    )
}

// ---------------------------------------------------------------------------------------
// Grids

const WG_1D: u32 = 256;

/// A 1-D grid of 256-wide workgroups covering `len` invocations, folded into y when it
/// exceeds the per-dimension limit (the shaders index with `gid.x + gid.y * groups.x * 256`).
pub(crate) fn grid_1d(gpu: &Gpu, len: usize) -> [u32; 3] {
    let groups = (len as u64).div_ceil(WG_1D as u64);
    let max = gpu.limits().max_compute_workgroups_per_dimension as u64;
    if groups <= max {
        [groups as u32, 1, 1]
    } else {
        [max as u32, groups.div_ceil(max) as u32, 1]
    }
}

/// A grid of 64-wide workgroups, one invocation per row (or column).
pub(crate) fn grid_rows(rows: usize) -> [u32; 3] {
    [(rows as u32).div_ceil(64), 1, 1]
}

// ---------------------------------------------------------------------------------------
// Shape checks

pub(crate) fn matrix(op: &str, t: &GpuTensor) -> Result<(usize, usize)> {
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

pub(crate) fn expect_shape(op: &str, t: &GpuTensor, want: (usize, usize)) -> Result<()> {
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

pub(crate) fn expect_len(op: &str, t: &GpuTensor, len: usize) -> Result<()> {
    if t.len() != len {
        return Err(Error::shape(
            op,
            format!("'{}' of {len} elements", t.label()),
            format!("{} elements (shape {:?})", t.len(), t.shape()),
        ));
    }
    Ok(())
}

pub(crate) fn expect_dtype(op: &str, t: &GpuTensor, dtype: DType) -> Result<()> {
    if t.dtype() != dtype {
        return Err(Error::shape(
            op,
            format!("'{}' of {dtype:?}", t.label()),
            format!("{:?}", t.dtype()),
        ));
    }
    Ok(())
}

pub(crate) fn u32_of(op: &str, what: &str, v: usize) -> Result<u32> {
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
    pub(crate) fn flag(self) -> u32 {
        (self == Accumulate::Add) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tuning of these variables (unset when absent).
    fn tuning(vars: &[(&str, &str)]) -> Result<Tuning> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Tuning::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn soma_matmul_takes_only_what_soma_generates() {
        assert_eq!(tuning(&[]).unwrap(), Tuning::default());
        assert_eq!(
            tuning(&[("SOMA_MATMUL", "")]).unwrap(),
            Tuning::default(),
            "empty is unset"
        );
        for &t in TILES {
            let got = tuning(&[("SOMA_MATMUL", &t.name())]).unwrap();
            assert_eq!(got.matmul, MatmulVariant::Tile(t));
        }
        for &t in WG_TILES {
            let got = tuning(&[("SOMA_MATMUL", &t.name())]).unwrap();
            assert_eq!(got.matmul, MatmulVariant::Workgroup(t));
        }
        for (v, want) in [
            ("naive", MatmulVariant::Naive),
            ("blocked", MatmulVariant::Blocked),
            ("tuned", MatmulVariant::Tuned),
        ] {
            assert_eq!(tuning(&[("SOMA_MATMUL", v)]).unwrap().matmul, want);
        }
        // Shapes the generator does not produce (a well-formed name, a workgroup too big for
        // any adapter, another spelling of a generated tile) and plain junk: each an error
        // that names the variable and the value and lists every accepted setting.
        for bad in [
            "r12c12w8x8",
            "r4c4w64x64",
            "r064c32w8x1",
            "fast",
            "R4C4W8X8",
            "wg64x64k32t4x4",
        ] {
            let e = tuning(&[("SOMA_MATMUL", bad)]).unwrap_err().to_string();
            assert!(e.contains(&format!("SOMA_MATMUL='{bad}'")), "{e}");
            for accepted in ["naive", "blocked", "tuned"] {
                assert!(e.contains(accepted), "{e}");
            }
            for t in TILES {
                assert!(e.contains(&t.name()), "{e}");
            }
            for t in WG_TILES {
                assert!(e.contains(&t.name()), "{e}");
            }
        }
    }

    #[test]
    fn the_other_tuning_variables_name_themselves_when_refused() {
        for (name, bad) in [
            ("SOMA_FUSE", "maybe"),
            ("SOMA_AUTOTUNE", "2"),
            ("SOMA_SUBGROUPS", "auto"),
            ("SOMA_FUSED_MLP", "t48_r3"),
        ] {
            let e = tuning(&[(name, bad)]).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(bad), "{e}");
        }
        let t = tuning(&[
            ("SOMA_FUSE", "off"),
            ("SOMA_AUTOTUNE", "0"),
            ("SOMA_SUBGROUPS", "off"),
        ])
        .unwrap();
        assert!(!t.fuse && !t.autotune && !t.subgroups);
    }
}
