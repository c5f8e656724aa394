//! The WGSL kernels: which file and entry point each one is, its bindings, its pipeline
//! (built once per `Gpu`), and one small function per op that checks shapes and returns a
//! ready-to-record [`Dispatch`] (named like the WGSL entry point and like its twin in
//! `cpu.rs`; outputs first, then inputs, then sizes). A `Dispatch` owns its bind group and
//! uniform, so a training step only records; nothing is created in the hot loop.
//! Scheduling whole training steps is `trainer.rs`'s job, not this module's.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::loss::Loss;
use crate::network::Activation;
use crate::params::*;
use crate::tensor::{DType, GpuTensor};

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
            source: include_str!(concat!("../shaders/", $file)),
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
    ];

    /// (shader file, entry point, storage bindings in binding order, uniform struct name).
    /// The uniform is always the binding right after the storage ones.
    pub fn spec(self) -> (Shader, &'static str, &'static [Access], &'static str) {
        match self {
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
    buffers: Vec<wgpu::Buffer>,
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
        let buffers: Vec<wgpu::Buffer> = tensors.iter().map(|t| t.buffer().clone()).collect();
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
        buffers: &[wgpu::Buffer],
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
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: b.as_entire_binding(),
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

    /// Records the launch into a compute pass with parameter entry `entry`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, entry: u32) {
        let offset = (entry.min(self.entries.saturating_sub(1)) as u64 * self.stride) as u32;
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[offset]);
        let [x, y, z] = self.workgroups;
        if x > 0 && y > 0 && z > 0 {
            pass.dispatch_workgroups(x, y, z);
        }
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
    gpu.scoped(label, || {
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
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
/// yardstick; both pass the same twin tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// One invocation per output (`matmul_nt`, `matmul_nn`, `matmul_tn`).
    Naive,
    /// 4 x 4 register blocks (`matmul_blocked`), with vec4 loads where the shapes allow
    /// (`matmul_nt_vec4` when k is a multiple of 4, `matmul_nn_vec4` when k and n are).
    #[default]
    Blocked,
}

impl std::str::FromStr for MatmulVariant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "naive" => Ok(MatmulVariant::Naive),
            "blocked" => Ok(MatmulVariant::Blocked),
            _ => Err(Error::Config(format!(
                "unknown matmul variant '{s}' (naive, blocked)"
            ))),
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
    matmul(gpu, Form::Nt, out, a, b, acc)
}

/// `out (m, n) = a (m, k) · b (k, n)` — the input delta `dX = dY·W`.
pub fn matmul_nn(
    gpu: &Gpu,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    matmul(gpu, Form::Nn, out, a, b, acc)
}

/// `out (m, n) = a (k, m)ᵀ · b (k, n)` — the weight gradient `dW = dYᵀ·X`.
pub fn matmul_tn(
    gpu: &Gpu,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    matmul(gpu, Form::Tn, out, a, b, acc)
}

/// Which operand of a product is read transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Nt,
    Nn,
    Tn,
}

/// The three forms: shapes checked, then the naive kernel of the form or the blocked one.
fn matmul(
    gpu: &Gpu,
    form: Form,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    acc: Accumulate,
) -> Result<Dispatch> {
    let (op, naive) = match form {
        Form::Nt => ("matmul_nt", Kernel::MatmulNt),
        Form::Nn => ("matmul_nn", Kernel::MatmulNn),
        Form::Tn => ("matmul_tn", Kernel::MatmulTn),
    };
    let (a_rows, a_cols) = matrix(op, a)?;
    let (b_rows, b_cols) = matrix(op, b)?;
    // (m, k) from a, n from b, then b and out must agree.
    let (m, k, n, b_shape) = match form {
        Form::Nt => (a_rows, a_cols, b_rows, (b_rows, a_cols)),
        Form::Nn => (a_rows, a_cols, b_cols, (a_cols, b_cols)),
        Form::Tn => (a_cols, a_rows, b_cols, (a_rows, b_cols)),
    };
    expect_shape(op, b, b_shape)?;
    expect_shape(op, out, (m, n))?;
    let p = matmul_params(op, m, n, k, acc)?;
    match gpu.matmul_variant() {
        MatmulVariant::Naive => Dispatch::new(gpu, naive, &[out, a, b], &[p], matmul_grid(m, n)),
        // vec4 loads where the shapes allow them (see shaders/matmul.wgsl). A vec4 form
        // of dW = dYᵀ·X was tried and was slower at training shapes on lavapipe.
        MatmulVariant::Blocked if form == Form::Nt && k % 4 == 0 => Dispatch::new(
            gpu,
            Kernel::MatmulNtVec4,
            &[out, a, b],
            &[BlockedMatmulParams::nt(&p)],
            blocked_grid(m, n),
        ),
        MatmulVariant::Blocked if form == Form::Nn && k % 4 == 0 && n % 4 == 0 => Dispatch::new(
            gpu,
            Kernel::MatmulNnVec4,
            &[out, a, b],
            &[BlockedMatmulParams::nn(&p)],
            blocked_grid(m, n),
        ),
        MatmulVariant::Blocked => {
            let strides = match form {
                Form::Nt => BlockedMatmulParams::nt(&p),
                Form::Nn => BlockedMatmulParams::nn(&p),
                Form::Tn => BlockedMatmulParams::tn(&p),
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
    Dispatch::new(
        gpu,
        Kernel::BiasActivationForward,
        &[out, pre, bias.unwrap_or(dummy)],
        &[p],
        grid_1d(gpu, rows * cols),
    )
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
    Dispatch::new(
        gpu,
        Kernel::ActivationBackward,
        &[dpre, dout, pre],
        &[p],
        grid_1d(gpu, rows * cols),
    )
}

// ---------------------------------------------------------------------------------------
// Reductions

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
    Dispatch::new(gpu, Kernel::ColumnSum, &[out, x], &[p], grid_rows(cols))
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
    Dispatch::new(
        gpu,
        Kernel::SgdUpdate,
        &[param, grad],
        &[p],
        grid_1d(gpu, param.len()),
    )
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
    Dispatch::new(
        gpu,
        Kernel::MomentumUpdate,
        &[param, velocity, grad],
        &[p],
        grid_1d(gpu, param.len()),
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
    Dispatch::new(
        gpu,
        Kernel::AdamUpdate,
        &[param, m, v, grad],
        &[p],
        grid_1d(gpu, param.len()),
    )
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
    Dispatch::new(
        gpu,
        Kernel::GatherRows,
        &[out, data, indices],
        &[p],
        grid_1d(gpu, batch_rows * cols),
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
    Dispatch::new(
        gpu,
        Kernel::GatherRowsU8,
        &[out, data, indices],
        &[p],
        grid_1d(gpu, batch_rows * cols),
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
