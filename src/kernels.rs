//! The kernel table and what runs a kernel: every entry point soma dispatches with its
//! shader file, storage bindings and uniform struct ([`Kernel`], one list); the compiled
//! pipelines and the tuner's choices of one device ([`Kernels`]); the tuning a caller asks for
//! ([`Tuning`]); a ready-to-record launch ([`Dispatch`]) and submission. A `Dispatch` owns its
//! bind group and uniform, so a training step only records; nothing is created in the hot
//! loop. The recorders that check shapes and build dispatches live with their op family in
//! [`crate::ops`]; scheduling whole steps is the executors' job.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::fused_mlp::{FusedMlp, FusedMlpParams, MlpShape};
use crate::ops::matmul::{tiled, Epilogue, MatmulForm, MatmulParams, MatmulVariant, TILES};
use crate::ops::optim::{OptimParams, UpdateRule};
use crate::params::{Params, ParamsInfo};
use crate::tensor::GpuTensor;

/// A WGSL file in `shaders/`, embedded at build time (the file on disk is the shader that runs).
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub file: &'static str,
    pub source: &'static str,
}

macro_rules! shader {
    ($file:literal) => {
        Shader {
            file: $file,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file)),
        }
    };
}

pub const MATMUL: Shader = shader!("matmul.wgsl");
pub const ACTIVATION: Shader = shader!("activation.wgsl");
pub const REDUCE: Shader = shader!("reduce.wgsl");
pub const LOSS: Shader = shader!("loss.wgsl");
pub const OPTIM: Shader = shader!("optim.wgsl");
pub const DATA: Shader = shader!("data.wgsl");
pub const PERCEPTRON: Shader = shader!("perceptron.wgsl");

/// Every shader file.
pub const SHADERS: &[Shader] = &[MATMUL, ACTIVATION, REDUCE, LOSS, OPTIM, DATA, PERCEPTRON];

/// How a kernel uses one of its storage bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    Read,
}

use Access::{Read as R, ReadWrite as W};

/// What binding a kernel takes: its source, entry point, storage bindings in binding order
/// and its uniform struct, which is always the binding right after the storage ones.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    pub shader: Shader,
    pub entry: &'static str,
    pub storage: &'static [Access],
    pub uniform: ParamsInfo,
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
                    Kernel::FusedMlp(shape) => fused_mlp_spec(shape),
                    Kernel::Update(rule, vec4) => update_spec(rule, vec4),
                }
            }
        }
    };
}

use crate::ops::activation::ActivationParams;
use crate::ops::data::GatherParams;
use crate::ops::loss::LossParams;
use crate::ops::matmul::{BlockedMatmulParams, DenseParams, Tile};
use crate::ops::perceptron::PerceptronParams;
use crate::ops::reduce::{ReduceParams, RowsParams};

kernel_table! {
    MatmulNt => MATMUL, "matmul_nt", [W, R, R], MatmulParams;
    MatmulNn => MATMUL, "matmul_nn", [W, R, R], MatmulParams;
    MatmulTn => MATMUL, "matmul_tn", [W, R, R], MatmulParams;
    MatmulBlocked => MATMUL, "matmul_blocked", [W, R, R], BlockedMatmulParams;
    MatmulNtVec4 => MATMUL, "matmul_nt_vec4", [W, R, R], BlockedMatmulParams;
    MatmulNnVec4 => MATMUL, "matmul_nn_vec4", [W, R, R], BlockedMatmulParams;
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
    ReduceSum => REDUCE, "reduce_sum", [W, R], ReduceParams;
    Argmax => REDUCE, "argmax", [W, R], RowsParams;
    CorrectCount => REDUCE, "correct_count", [W, R, R], RowsParams;
    Softmax => LOSS, "softmax", [W, R], RowsParams;
    MseLoss => LOSS, "mse_loss", [W, W, R, R], LossParams;
    SoftmaxCrossEntropy => LOSS, "softmax_cross_entropy", [W, W, R, R], LossParams;
    BinaryCrossEntropy => LOSS, "binary_cross_entropy", [W, W, R, R], LossParams;
    GatherRows => DATA, "gather_rows", [W, R, R], GatherParams;
    GatherRowsVec4 => DATA, "gather_rows_vec4", [W, R, R], GatherParams;
    GatherRowsU8 => DATA, "gather_rows_u8", [W, R, R], GatherParams;
    GatherRowsU8Vec4 => DATA, "gather_rows_u8_vec4", [W, R, R], GatherParams;
    GatherLabels => DATA, "gather_labels", [W, R, R], GatherParams;
    PerceptronEpoch => PERCEPTRON, "perceptron_epoch", [W, W, R, R], PerceptronParams;
}

/// An update's bindings: the parameter, up to four state tensors, the gradient.
const UPDATE_ACCESS: [Access; 6] = [W, W, W, W, W, R];

impl Kernel {
    /// Every kernel: the table's, every generated tile of every form and epilogue, and the
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
    let (source, entry) = crate::ops::fused_mlp::generated(shape);
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
        },
        entry,
        storage,
        uniform: ParamsInfo::of::<FusedMlpParams>(),
    }
}

fn tile_spec(form: MatmulForm, tile: Tile, epilogue: Epilogue) -> KernelSpec {
    let (source, entry) = tiled::generated(form, tile, epilogue);
    let storage: &'static [Access] = match epilogue {
        Epilogue::Store => &[W, R, R],
        // out (pre-activation), x, w, act_out, bias
        Epilogue::BiasAct { .. } => &[W, R, R, W, R],
        // dpre, d, w, pre
        Epilogue::ReluGrad => &[W, R, R, R],
    };
    KernelSpec {
        shader: Shader {
            file: "matmul tile (generated by src/ops/matmul/tiled.rs)",
            source,
        },
        entry,
        storage,
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
    /// The matmul kernel (`SOMA_MATMUL=naive|blocked|tuned|<tile>`).
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
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            matmul: MatmulVariant::Tuned,
            fuse: true,
            fused_mlp: FusedMlp::Auto,
            autotune: true,
        }
    }
}

impl Tuning {
    /// The tuning the environment asks for: `SOMA_MATMUL`, `SOMA_FUSE`, `SOMA_FUSED_MLP`,
    /// `SOMA_AUTOTUNE`, each defaulting as [`Tuning::default`]. A value soma cannot honour
    /// is an error that names the variable.
    pub fn from_env() -> Result<Tuning> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let switch = |name: &str, default: bool| -> Result<bool> {
            match var(name).as_deref() {
                None => Ok(default),
                Some("on" | "1" | "true") => Ok(true),
                Some("off" | "0" | "false") => Ok(false),
                Some(v) => Err(Error::Config(format!("{name}='{v}': use on or off"))),
            }
        };
        let named = |name: &str, e: Error| Error::Config(format!("{name}: {e}"));
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
        let p = Arc::new(Pipeline::build(self.gpu, kernel)?);
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

/// A compiled compute pipeline and its bind group layout.
#[derive(Debug)]
pub struct Pipeline {
    pub kernel: Kernel,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl Pipeline {
    /// Compiles `kernel`'s entry point; a validation failure comes back as `Error::Shader`.
    pub fn build(gpu: &Gpu, kernel: Kernel) -> Result<Pipeline> {
        let KernelSpec {
            shader,
            entry,
            storage,
            ..
        } = kernel.spec();
        let device = &gpu.device;
        let mut entries: Vec<wgpu::BindGroupLayoutEntry> = storage
            .iter()
            .enumerate()
            .map(|(i, access)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: *access == Access::Read,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: storage.len() as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: None,
            },
            count: None,
        });
        gpu.scoped(entry, || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.file),
                source: wgpu::ShaderSource::Wgsl(shader.source.into()),
            });
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(entry),
                entries: &entries,
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
            Pipeline {
                kernel,
                pipeline,
                layout,
            }
        })
    }
}

/// One kernel launch, ready to record: pipeline, bind group, uniform and grid. The uniform
/// holds one or more parameter entries (one per training step of an epoch, say); recording
/// picks one by index through a dynamic offset.
#[derive(Debug)]
pub struct Dispatch {
    pipeline: Arc<Pipeline>,
    /// Each bound tensor's buffer, offset and size (`None`: to the end of the buffer).
    buffers: Vec<(wgpu::Buffer, u64, Option<std::num::NonZeroU64>)>,
    bind_group: wgpu::BindGroup,
    uniform: wgpu::Buffer,
    param_size: u64,
    stride: u64,
    entries: u32,
    workgroups: [u32; 3],
}

impl Dispatch {
    /// Binds `tensors` (in binding order) and `params` (one entry or more) to `kernel`.
    pub fn new<P: Params>(
        kernels: &Kernels<'_>,
        kernel: Kernel,
        tensors: &[&GpuTensor],
        params: &[P],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let gpu = kernels.gpu();
        let KernelSpec { entry, storage, .. } = kernel.spec();
        if tensors.len() != storage.len() {
            return Err(Error::shape(
                entry,
                format!("{} buffers", storage.len()),
                format!("{} buffers", tensors.len()),
            ));
        }
        let max = gpu.limits().max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max) {
            return Err(Error::TooLarge {
                what: format!("{entry} grid {workgroups:?}"),
                bytes: *workgroups.iter().max().unwrap_or(&0) as u64,
                limit: max as u64,
                limit_name: "max_compute_workgroups_per_dimension",
            });
        }
        let pipeline = kernels.pipeline(kernel)?;
        let buffers = tensors
            .iter()
            .map(|t| {
                let b = t.binding();
                (b.buffer.clone(), b.offset, b.size)
            })
            .collect::<Vec<_>>();
        let param_size = std::mem::size_of::<P>() as u64;
        let align = gpu.limits().min_uniform_buffer_offset_alignment as u64;
        let stride = param_size.next_multiple_of(align);
        let (uniform, bind_group) =
            Self::bind(gpu, &pipeline, &buffers, param_size, stride, params.len())?;
        let d = Dispatch {
            pipeline,
            buffers,
            bind_group,
            uniform,
            param_size,
            stride,
            entries: params.len() as u32,
            workgroups,
        };
        d.write_entries(gpu, params);
        Ok(d)
    }

    fn bind(
        gpu: &Gpu,
        pipeline: &Pipeline,
        buffers: &[(wgpu::Buffer, u64, Option<std::num::NonZeroU64>)],
        param_size: u64,
        stride: u64,
        entries: usize,
    ) -> Result<(wgpu::Buffer, wgpu::BindGroup)> {
        let entry = pipeline.kernel.entry_point();
        gpu.scoped(entry, || {
            let uniform = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(entry),
                size: stride * entries.max(1) as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut bind: Vec<wgpu::BindGroupEntry> = buffers
                .iter()
                .enumerate()
                .map(|(i, (buffer, offset, size))| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: *offset,
                        size: *size,
                    }),
                })
                .collect();
            bind.push(wgpu::BindGroupEntry {
                binding: buffers.len() as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &uniform,
                    offset: 0,
                    size: std::num::NonZeroU64::new(param_size),
                }),
            });
            let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(entry),
                layout: &pipeline.layout,
                entries: &bind,
            });
            (uniform, bind_group)
        })
    }

    fn write_entries<P: Params>(&self, gpu: &Gpu, params: &[P]) {
        let mut bytes = vec![0u8; (self.stride * params.len() as u64) as usize];
        for (i, p) in params.iter().enumerate() {
            let at = i * self.stride as usize;
            bytes[at..at + self.param_size as usize].copy_from_slice(bytemuck::bytes_of(p));
        }
        gpu.queue.write_buffer(&self.uniform, 0, &bytes);
    }

    /// Replaces the parameter entries. Growing the number of entries rebuilds the uniform
    /// and bind group (do that at setup, not per step); rewriting them does not.
    pub fn set_params<P: Params>(&mut self, gpu: &Gpu, params: &[P]) -> Result<()> {
        if std::mem::size_of::<P>() as u64 != self.param_size {
            return Err(Error::shape(
                self.pipeline.kernel.entry_point(),
                format!("{}-byte parameters", self.param_size),
                format!("{}-byte {}", std::mem::size_of::<P>(), P::WGSL_NAME),
            ));
        }
        if params.len() as u32 > self.entries {
            let (uniform, bind_group) = Self::bind(
                gpu,
                &self.pipeline,
                &self.buffers,
                self.param_size,
                self.stride,
                params.len(),
            )?;
            self.uniform = uniform;
            self.bind_group = bind_group;
            self.entries = params.len() as u32;
        }
        self.write_entries(gpu, params);
        Ok(())
    }

    /// Records the launch into a compute pass with parameter entry `entry` (nothing for an
    /// empty grid).
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, entry: u32) {
        if self.is_empty() {
            return;
        }
        let offset = (entry.min(self.entries.saturating_sub(1)) as u64 * self.stride) as u32;
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[offset]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// Makes recording this dispatch a no-op (its work was fused into another one).
    pub fn disable(&mut self) {
        self.workgroups = [0, 0, 0];
    }

    /// Whether recording dispatches nothing (an empty grid, or disabled).
    pub fn is_empty(&self) -> bool {
        self.workgroups.contains(&0)
    }

    pub fn kernel(&self) -> Kernel {
        self.pipeline.kernel
    }
}

/// Records `dispatches` (each with entry 0) into one compute pass and submits it, with
/// validation errors captured as `Error::Shader`. Convenient for one-off work and tests.
pub fn run(gpu: &Gpu, dispatches: &[&Dispatch]) -> Result<()> {
    let label = dispatches
        .first()
        .map(|d| d.kernel().entry_point())
        .unwrap_or("empty run");
    submit_pass(gpu, label, |pass| {
        for d in dispatches {
            d.record(pass, 0);
        }
    })
}

/// Records steps `steps` of a list of dispatches (each step records every dispatch with
/// that step's parameter entry) into one compute pass, and submits it once.
pub fn run_steps(
    gpu: &Gpu,
    label: &str,
    dispatches: &[Dispatch],
    steps: Range<usize>,
) -> Result<()> {
    submit_pass(gpu, label, |pass| record_steps(pass, dispatches, steps))
}

/// `run_steps` with whole-tensor copies recorded ahead of the pass in the same submission
/// (the trainer's epoch snapshot rides along with the epoch's first step).
pub fn run_steps_after_copies(
    gpu: &Gpu,
    label: &str,
    dispatches: &[Dispatch],
    steps: Range<usize>,
    copies: &[(&GpuTensor, &GpuTensor)],
) -> Result<()> {
    crate::tensor::check_copies(copies)?;
    submit_pass_with(
        gpu,
        label,
        |encoder| crate::tensor::record_copies(encoder, copies),
        |pass| record_steps(pass, dispatches, steps),
    )
}

/// Records steps `steps` of a list of dispatches into a compute pass someone else owns.
pub fn record_steps(
    pass: &mut wgpu::ComputePass<'_>,
    dispatches: &[Dispatch],
    steps: Range<usize>,
) {
    for s in steps {
        for d in dispatches {
            d.record(pass, s as u32);
        }
    }
}

/// One encoder, one compute pass filled by `record`, one submission, validation errors
/// captured as `Error::Shader { label, .. }`.
pub fn submit_pass(
    gpu: &Gpu,
    label: &str,
    record: impl FnOnce(&mut wgpu::ComputePass<'_>),
) -> Result<()> {
    submit_pass_with(gpu, label, |_| {}, record)
}

/// `submit_pass` with commands recorded into the encoder ahead of the pass.
pub fn submit_pass_with(
    gpu: &Gpu,
    label: &str,
    before: impl FnOnce(&mut wgpu::CommandEncoder),
    record: impl FnOnce(&mut wgpu::ComputePass<'_>),
) -> Result<()> {
    gpu.scoped(label, || {
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        before(&mut encoder);
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            record(&mut pass);
        }
        gpu.submit(vec![encoder.finish()]);
    })
}
