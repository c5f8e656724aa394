//! What runs a kernel on a device, whichever kernel it is: the shader files ([`Shader`]), what
//! a kernel binds ([`KernelSpec`]), a compiled pipeline ([`Pipeline`]), a ready-to-record
//! launch ([`Dispatch`]) and submission. A `Dispatch` owns its bind group and uniform, so a
//! training step only records; nothing is created in the hot loop. Which kernels exist (the
//! table), the pipelines and tuning of a device (`Kernels`, `Tuning`) and the recorders that
//! check shapes and build dispatches are the op families' ([`crate::ops`]); scheduling whole
//! steps is the executors'.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Held};
use crate::math::Math;
use crate::params::{Params, ParamsInfo};
use crate::tensor::GpuTensor;

/// A WGSL file in `shaders/`, embedded at build time (the file on disk is the shader that runs).
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub file: &'static str,
    pub source: &'static str,
    /// Whether it uses subgroup operations: compiled only on a device with
    /// `Features::SUBGROUP` ([`Gpu::subgroups`]).
    pub subgroups: bool,
    /// Whether it uses f16 (`enable f16;`): compiled only on a device with
    /// `Features::SHADER_F16` ([`Gpu::shader_f16`]).
    pub f16: bool,
}

impl Shader {
    /// What naga must allow to validate the shader: subgroup operations and f16 where it
    /// uses them, nothing beyond WebGPU's core otherwise.
    pub fn capabilities(&self) -> naga::valid::Capabilities {
        let mut c = naga::valid::Capabilities::empty();
        if self.subgroups {
            c |= naga::valid::Capabilities::SUBGROUP;
        }
        if self.f16 {
            c |= naga::valid::Capabilities::SHADER_FLOAT16;
        }
        c
    }
}

macro_rules! shader {
    ($file:literal) => {
        Shader {
            file: $file,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file)),
            subgroups: false,
            f16: false,
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
pub const SCALE: Shader = shader!("scale.wgsl");
pub const STRICT_SELF_TEST: Shader = shader!("strict_self_test.wgsl");
/// The f16-operand products and the f32 -> f16 cast (`enable f16;`).
pub const MATMUL_F16: Shader = Shader {
    f16: true,
    ..shader!("matmul_f16.wgsl")
};
/// softmax's subgroup form: `loss_subgroup.wgsl` after `loss.wgsl`.
pub const LOSS_SUBGROUP: Shader = Shader {
    file: "loss_subgroup.wgsl",
    source: concat!(
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/loss.wgsl")),
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/loss_subgroup.wgsl"
        )),
    ),
    subgroups: true,
    f16: false,
};
/// The reductions' subgroup forms: `reduce_subgroup.wgsl` after `reduce.wgsl`, whose
/// bindings and routines it uses.
pub const REDUCE_SUBGROUP: Shader = Shader {
    file: "reduce_subgroup.wgsl",
    source: concat!(
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/reduce.wgsl")),
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/reduce_subgroup.wgsl"
        )),
    ),
    subgroups: true,
    f16: false,
};

/// Every kernel's shader file. (`math_native.wgsl`, `math_strict.wgsl` and `math_vec4.wgsl`
/// are preludes, put before these by [`Math::source`].)
pub const SHADERS: &[Shader] = &[
    MATMUL,
    ACTIVATION,
    REDUCE,
    LOSS,
    OPTIM,
    DATA,
    PERCEPTRON,
    SCALE,
    STRICT_SELF_TEST,
    REDUCE_SUBGROUP,
    LOSS_SUBGROUP,
    MATMUL_F16,
];

/// How a kernel uses one of its storage bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    Read,
}

/// What binding a kernel takes: its source, entry point, storage bindings in binding order
/// and its uniform struct, which is always the binding right after the storage ones.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    pub shader: Shader,
    pub entry: &'static str,
    pub storage: &'static [Access],
    pub uniform: ParamsInfo,
}

/// A compiled compute pipeline, its bind group layout and what it binds.
#[derive(Debug)]
pub struct Pipeline {
    pub spec: KernelSpec,
    pub pipeline: Held<wgpu::ComputePipeline>,
    pub layout: Held<wgpu::BindGroupLayout>,
}

impl Pipeline {
    /// Compiles `spec`'s entry point with `math`'s prelude before its shader
    /// ([`Math::source`]); a validation failure comes back as `Error::Shader`. Under
    /// [`Math::Strict`] on a Vulkan device that takes passthrough shaders, the module is
    /// naga's SPIR-V with every float operation marked `NoContraction`, so the driver may
    /// neither fuse nor reassociate, and with the float controls the device advertises
    /// (`DenormPreserve`, `RoundingModeRTE`; [`crate::spirv::strict_spirv`]).
    pub fn build(gpu: &Gpu, spec: KernelSpec, math: Math) -> Result<Pipeline> {
        let KernelSpec {
            shader,
            entry,
            storage,
            ..
        } = spec;
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
        if shader.subgroups && gpu.subgroups().is_none() {
            return Err(Error::Shader {
                label: entry.to_string(),
                message: format!(
                    "{} uses subgroup operations and the device was opened without \
                     Features::SUBGROUP",
                    shader.file
                ),
            });
        }
        if shader.f16 && !gpu.shader_f16() {
            return Err(Error::Shader {
                label: entry.to_string(),
                message: format!(
                    "{} uses f16 and the device was opened without Features::SHADER_F16",
                    shader.file
                ),
            });
        }
        let source = math.source(shader.source);
        let spirv = match math {
            Math::Strict if gpu.takes_spirv() => Some(crate::spirv::strict_spirv_with(
                &source,
                entry,
                gpu.float_controls(),
                shader.capabilities(),
            )?),
            Math::Strict | Math::Native => None,
        };
        let started = std::time::Instant::now();
        let built = gpu.scoped(entry, || {
            let module = match &spirv {
                // SAFETY: the words are naga's own SPIR-V for a module it has just parsed and
                // validated, with decorations added only where SPIR-V allows them (the
                // instruction stream is checked by `spirv::no_contraction`).
                Some(m) => unsafe {
                    let [x, y, z] = m.workgroup_size;
                    device.create_shader_module_passthrough(
                        wgpu::ShaderModuleDescriptorPassthrough {
                            label: Some(shader.file),
                            entry_points: std::borrow::Cow::Owned(vec![
                                wgpu::PassthroughShaderEntryPoint {
                                    name: entry.into(),
                                    workgroup_size: (x, y, z),
                                },
                            ]),
                            spirv: Some(std::borrow::Cow::Borrowed(&m.words)),
                            ..Default::default()
                        },
                    )
                },
                None => device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.file),
                    source: wgpu::ShaderSource::Wgsl(source.clone()),
                }),
            };
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
                spec,
                pipeline: gpu.hold(pipeline),
                layout: gpu.hold(layout),
            }
        });
        log::debug!(
            "compiled {entry} ({} bytes of source) in {:.2?}",
            source.len(),
            started.elapsed()
        );
        built
    }
}

/// One kernel launch, ready to record: pipeline, bind group, uniform and grid. The uniform
/// holds one or more parameter entries (one per training step of an epoch, say); recording
/// picks one by index through a dynamic offset.
#[derive(Debug)]
pub struct Dispatch {
    pipeline: Arc<Pipeline>,
    /// Each bound tensor's buffer, offset and size (`None`: to the end of the buffer).
    buffers: Held<Vec<(wgpu::Buffer, u64, Option<std::num::NonZeroU64>)>>,
    bind_group: Held<wgpu::BindGroup>,
    uniform: Held<wgpu::Buffer>,
    param_size: u64,
    stride: u64,
    entries: u32,
    workgroups: [u32; 3],
}

impl Dispatch {
    /// Binds `tensors` (in binding order) and `params` (one entry or more) to `pipeline`.
    pub fn new<P: Params>(
        gpu: &Gpu,
        pipeline: Arc<Pipeline>,
        tensors: &[&GpuTensor],
        params: &[P],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let KernelSpec { entry, storage, .. } = pipeline.spec;
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
        #[cfg(feature = "fault-injection")]
        let workgroups = match std::env::var("SOMA_INJECT_FAULT") {
            Ok(faulty) if faulty == entry => {
                log::warn!("fault injection: every dispatch of {entry} is dropped");
                [0, 0, 0]
            }
            _ => workgroups,
        };
        let buffers = gpu.hold(
            tensors
                .iter()
                .map(|t| {
                    let b = t.binding();
                    (b.buffer.clone(), b.offset, b.size)
                })
                .collect::<Vec<_>>(),
        );
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
    ) -> Result<(Held<wgpu::Buffer>, Held<wgpu::BindGroup>)> {
        let entry = pipeline.spec.entry;
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
            (gpu.hold(uniform), gpu.hold(bind_group))
        })
    }

    fn write_entries<P: Params>(&self, gpu: &Gpu, params: &[P]) {
        let mut bytes = vec![0u8; (self.stride * params.len() as u64) as usize];
        for (i, p) in params.iter().enumerate() {
            let at = i * self.stride as usize;
            bytes[at..at + self.param_size as usize].copy_from_slice(bytemuck::bytes_of(p));
        }
        gpu.write_buffer(&self.uniform, 0, &bytes);
    }

    /// Replaces the parameter entries. Growing the number of entries rebuilds the uniform
    /// and bind group (do that at setup, not per step); rewriting them does not.
    pub fn set_params<P: Params>(&mut self, gpu: &Gpu, params: &[P]) -> Result<()> {
        if std::mem::size_of::<P>() as u64 != self.param_size {
            return Err(Error::shape(
                self.pipeline.spec.entry,
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
        pass.set_bind_group(0, &*self.bind_group, &[offset]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// Whether recording dispatches nothing (an empty grid).
    pub fn is_empty(&self) -> bool {
        self.workgroups.contains(&0)
    }

    /// The entry point this dispatch runs.
    pub fn entry(&self) -> &'static str {
        self.pipeline.spec.entry
    }
}

/// Records `dispatches` (each with entry 0) into one compute pass and submits it, with
/// validation errors captured as `Error::Shader`. Convenient for one-off work and tests.
pub fn run(gpu: &Gpu, dispatches: &[&Dispatch]) -> Result<()> {
    let label = dispatches.first().map(|d| d.entry()).unwrap_or("empty run");
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
