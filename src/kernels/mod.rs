//! The WGSL kernels: which file and entry point each one is, its bindings, its pipeline
//! (built once per `Gpu`), and one small function per op that checks shapes and returns a
//! ready-to-record [`Dispatch`] (named like the WGSL entry point and like its twin in
//! `cpu.rs`; outputs first, then inputs, then sizes). A `Dispatch` owns its bind group and
//! uniform, so a training step only records; nothing is created in the hot loop.
//! Scheduling whole training steps is `trainer.rs`'s job, not this module's.
//!
//! This file holds the kernel table, pipelines, `Dispatch` and submission; `ops.rs` the
//! per-op recorders with their shape checks.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::params::*;
use crate::tensor::GpuTensor;

pub mod fused_mlp;
mod ops;
pub mod tiled;
pub use ops::*;
pub use tiled::{Epilogue, MatmulForm, Tile, TILES};

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

/// Every kernel soma dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    MatmulNt,
    MatmulNn,
    MatmulTn,
    MatmulBlocked,
    MatmulNtVec4,
    MatmulNnVec4,
    BiasActivationForward,
    ActivationBackward,
    ColumnSum,
    ReduceSum,
    Argmax,
    CorrectCount,
    Softmax,
    MseLoss,
    SoftmaxCrossEntropy,
    BinaryCrossEntropy,
    SgdUpdate,
    MomentumUpdate,
    AdamUpdate,
    GatherRows,
    GatherRowsU8,
    GatherLabels,
    PerceptronEpoch,
    BiasActivationForwardVec4,
    ActivationBackwardVec4,
    ColumnSumVec4,
    SgdUpdateVec4,
    MomentumUpdateVec4,
    AdamUpdateVec4,
    GatherRowsVec4,
    GatherRowsU8Vec4,
    DenseForward,
    DenseBackward,
    /// A generated register-tiled matmul (`tiled.rs`), with what it does with its sums.
    MatmulTile(MatmulForm, Tile, Epilogue),
    /// The generated fully fused training pass of one small network (`fused_mlp.rs`).
    FusedMlp(fused_mlp::MlpShape),
}

impl Kernel {
    pub const ALL: &'static [Kernel] = &[
        Kernel::MatmulNt,
        Kernel::MatmulNn,
        Kernel::MatmulTn,
        Kernel::MatmulBlocked,
        Kernel::MatmulNtVec4,
        Kernel::MatmulNnVec4,
        Kernel::BiasActivationForward,
        Kernel::ActivationBackward,
        Kernel::ColumnSum,
        Kernel::ReduceSum,
        Kernel::Argmax,
        Kernel::CorrectCount,
        Kernel::Softmax,
        Kernel::MseLoss,
        Kernel::SoftmaxCrossEntropy,
        Kernel::BinaryCrossEntropy,
        Kernel::SgdUpdate,
        Kernel::MomentumUpdate,
        Kernel::AdamUpdate,
        Kernel::GatherRows,
        Kernel::GatherRowsU8,
        Kernel::GatherLabels,
        Kernel::PerceptronEpoch,
        Kernel::BiasActivationForwardVec4,
        Kernel::ActivationBackwardVec4,
        Kernel::ColumnSumVec4,
        Kernel::SgdUpdateVec4,
        Kernel::MomentumUpdateVec4,
        Kernel::AdamUpdateVec4,
        Kernel::GatherRowsVec4,
        Kernel::GatherRowsU8Vec4,
        Kernel::DenseForward,
        Kernel::DenseBackward,
    ];

    /// Every kernel, the generated tiles of every form included.
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
        all
    }

    /// (shader file, entry point, storage bindings in binding order, uniform struct name).
    /// The uniform is always the binding right after the storage ones.
    pub fn spec(self) -> (Shader, &'static str, &'static [Access], &'static str) {
        match self {
            Kernel::FusedMlp(shape) => {
                let (source, entry) = fused_mlp::generated(shape);
                let shader = Shader {
                    file: "fused MLP pass (generated by src/kernels/fused_mlp.rs)",
                    source,
                };
                // partials, prediction, row losses, input, target, parameter arena (and the
                // row order, for the gathering forms)
                let storage: &'static [Access] = if shape.gather {
                    &[W, W, W, R, R, R, R]
                } else {
                    &[W, W, W, R, R, R]
                };
                (shader, entry, storage, FusedMlpParams::WGSL_NAME)
            }
            Kernel::MatmulTile(form, tile, epilogue) => {
                let (source, entry) = tiled::generated(form, tile, epilogue);
                let shader = Shader {
                    file: "matmul tile (generated by src/kernels/tiled.rs)",
                    source,
                };
                let storage: &'static [Access] = match epilogue {
                    Epilogue::Store => &[W, R, R],
                    // out (pre-activation), x, w, act_out, bias
                    Epilogue::BiasAct { .. } => &[W, R, R, W, R],
                    // dpre, d, w, pre
                    Epilogue::ReluGrad => &[W, R, R, R],
                };
                (shader, entry, storage, MatmulParams::WGSL_NAME)
            }
            Kernel::MatmulNt => (MATMUL, "matmul_nt", &[W, R, R], MatmulParams::WGSL_NAME),
            Kernel::MatmulNn => (MATMUL, "matmul_nn", &[W, R, R], MatmulParams::WGSL_NAME),
            Kernel::MatmulTn => (MATMUL, "matmul_tn", &[W, R, R], MatmulParams::WGSL_NAME),
            Kernel::MatmulNtVec4 => (
                MATMUL,
                "matmul_nt_vec4",
                &[W, R, R],
                BlockedMatmulParams::WGSL_NAME,
            ),
            Kernel::MatmulNnVec4 => (
                MATMUL,
                "matmul_nn_vec4",
                &[W, R, R],
                BlockedMatmulParams::WGSL_NAME,
            ),
            Kernel::MatmulBlocked => (
                MATMUL,
                "matmul_blocked",
                &[W, R, R],
                BlockedMatmulParams::WGSL_NAME,
            ),
            Kernel::BiasActivationForward => (
                ACTIVATION,
                "bias_activation_forward",
                &[W, W, R],
                ActivationParams::WGSL_NAME,
            ),
            Kernel::ActivationBackward => (
                ACTIVATION,
                "activation_backward",
                &[W, R, R],
                ActivationParams::WGSL_NAME,
            ),
            Kernel::ColumnSum => (REDUCE, "column_sum", &[W, R], RowsParams::WGSL_NAME),
            Kernel::ReduceSum => (REDUCE, "reduce_sum", &[W, R], ReduceParams::WGSL_NAME),
            Kernel::Argmax => (REDUCE, "argmax", &[W, R], RowsParams::WGSL_NAME),
            Kernel::CorrectCount => (REDUCE, "correct_count", &[W, R, R], RowsParams::WGSL_NAME),
            Kernel::Softmax => (LOSS, "softmax", &[W, R], RowsParams::WGSL_NAME),
            Kernel::MseLoss => (LOSS, "mse_loss", &[W, W, R, R], LossParams::WGSL_NAME),
            Kernel::SoftmaxCrossEntropy => (
                LOSS,
                "softmax_cross_entropy",
                &[W, W, R, R],
                LossParams::WGSL_NAME,
            ),
            Kernel::BinaryCrossEntropy => (
                LOSS,
                "binary_cross_entropy",
                &[W, W, R, R],
                LossParams::WGSL_NAME,
            ),
            Kernel::SgdUpdate => (OPTIM, "sgd_update", &[W, R], SgdParams::WGSL_NAME),
            Kernel::MomentumUpdate => (OPTIM, "momentum_update", &[W, W, R], SgdParams::WGSL_NAME),
            Kernel::AdamUpdate => (OPTIM, "adam_update", &[W, W, W, R], AdamParams::WGSL_NAME),
            Kernel::GatherRows => (DATA, "gather_rows", &[W, R, R], GatherParams::WGSL_NAME),
            Kernel::GatherRowsU8 => (DATA, "gather_rows_u8", &[W, R, R], GatherParams::WGSL_NAME),
            Kernel::GatherLabels => (DATA, "gather_labels", &[W, R, R], GatherParams::WGSL_NAME),
            Kernel::BiasActivationForwardVec4 => (
                ACTIVATION,
                "bias_activation_forward_vec4",
                &[W, W, R],
                ActivationParams::WGSL_NAME,
            ),
            Kernel::ActivationBackwardVec4 => (
                ACTIVATION,
                "activation_backward_vec4",
                &[W, R, R],
                ActivationParams::WGSL_NAME,
            ),
            Kernel::ColumnSumVec4 => (REDUCE, "column_sum_vec4", &[W, R], RowsParams::WGSL_NAME),
            Kernel::SgdUpdateVec4 => (OPTIM, "sgd_update_vec4", &[W, R], SgdParams::WGSL_NAME),
            Kernel::MomentumUpdateVec4 => (
                OPTIM,
                "momentum_update_vec4",
                &[W, W, R],
                SgdParams::WGSL_NAME,
            ),
            Kernel::AdamUpdateVec4 => (
                OPTIM,
                "adam_update_vec4",
                &[W, W, W, R],
                AdamParams::WGSL_NAME,
            ),
            Kernel::GatherRowsVec4 => (
                DATA,
                "gather_rows_vec4",
                &[W, R, R],
                GatherParams::WGSL_NAME,
            ),
            Kernel::GatherRowsU8Vec4 => (
                DATA,
                "gather_rows_u8_vec4",
                &[W, R, R],
                GatherParams::WGSL_NAME,
            ),
            Kernel::DenseForward => (
                ACTIVATION,
                "dense_forward",
                &[W, R, R, W, R],
                DenseParams::WGSL_NAME,
            ),
            Kernel::DenseBackward => (
                ACTIVATION,
                "dense_backward",
                &[W, R, R, R],
                DenseParams::WGSL_NAME,
            ),
            Kernel::PerceptronEpoch => (
                PERCEPTRON,
                "perceptron_epoch",
                &[W, W, R, R],
                PerceptronParams::WGSL_NAME,
            ),
        }
    }

    pub fn entry_point(self) -> &'static str {
        self.spec().1
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
        let (shader, entry, storage, _) = kernel.spec();
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
        gpu: &Gpu,
        kernel: Kernel,
        tensors: &[&GpuTensor],
        params: &[P],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let (_, entry, storage, _) = kernel.spec();
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
        let pipeline = gpu.pipeline(kernel)?;
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
