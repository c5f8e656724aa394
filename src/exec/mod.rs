//! The two executors of a [`Plan`]: the GPU one keeps every buffer resident and turns each op
//! into a prebuilt [`Dispatch`](crate::kernels::Dispatch), recording a whole step into one
//! compute pass and one submission; the CPU one keeps host vectors and calls the op families'
//! twins in the same order. `Executor` is the closed enum the trainer talks to. Deciding what to run and when
//! is the trainer's job.
//!
//! `gpu.rs` is the GPU executor (with `gpu/fuse.rs`, the fusions across ops: the optimizer
//! update over the parameter arena and the fully fused small-MLP pass), `cpu.rs` the CPU one.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels;
use crate::ops::Accumulate;
use crate::ops::{Kernels, Tuning};
use crate::parallel::{DataParallel, Overlap};
use crate::plan::{BufId, Op, Plan};
use crate::tensor::{start_read_many, DType, GpuTensor};

mod cpu;
mod gpu;
mod locate;
mod replicas;
pub mod strict;

use cpu::HostBuf;
pub use cpu::{CpuExec, CpuMatmul};
pub use gpu::GpuExec;
use gpu::KernelsRef;
pub use locate::OpDivergence;
pub use replicas::Replicas;
pub use strict::Determinism;

/// Where a run executes.
#[derive(Clone, Copy, Debug)]
pub enum Device<'a> {
    /// On this GPU, every buffer resident, with the default `Tuning` and pipelines compiled
    /// for this run.
    Gpu(&'a Gpu),
    /// On the GPU of these kernels, with their `Tuning`, sharing their compiled pipelines
    /// and tuned choices with every other run on them.
    Tuned(&'a Kernels<'a>),
    /// On the host: the CPU kernels, with matrix products by a threaded gemm (fast; equal
    /// to the GPU to rounding).
    Cpu,
    /// On the host with nothing but the plain-loop twins of the GPU kernels, in their order
    /// of operations: the yardstick for cross-checking (slow for large products).
    CpuReference,
    /// Data-parallel on these GPUs: one replica each (default tuning), each on its fixed
    /// share of every global batch, the gradients summed in GPU order every step (see
    /// [`crate::parallel`]).
    Gpus(&'a [Gpu]),
    /// Data-parallel over these replicas' devices (tuned kernels, CPU ones for
    /// cross-checking), or over processes through an exchange.
    Parallel(&'a DataParallel<'a>),
}

impl<'a> Device<'a> {
    /// Runs `f` with this device's kernels: the shared ones of `Device::Tuned`, or ones made
    /// for the call (default tuning) on `Device::Gpu`; `None` on the CPU devices.
    /// `None` also on the data-parallel devices, which have no one device's kernels.
    pub fn with_kernels<R>(self, f: impl FnOnce(&Kernels<'a>) -> R) -> Option<R> {
        match self {
            Device::Gpu(g) => Some(f(&Kernels::new(g, Default::default()))),
            Device::Tuned(k) => Some(f(k)),
            Device::Cpu | Device::CpuReference | Device::Gpus(_) | Device::Parallel(_) => None,
        }
    }

    /// The GPU, for the GPU devices (the first replica's, for the data-parallel ones).
    pub fn gpu(&self) -> Option<&'a Gpu> {
        match self {
            Device::Gpu(g) => Some(g),
            Device::Tuned(k) => Some(k.gpu()),
            Device::Cpu | Device::CpuReference => None,
            Device::Gpus(g) => g.first(),
            Device::Parallel(p) => p.devices.first().and_then(|d| d.gpu()),
        }
    }

    /// The devices of the replicas, for the data-parallel devices (one, for a single one).
    pub fn replicas(&self) -> Vec<Device<'a>> {
        match *self {
            Device::Gpus(g) => g.iter().map(Device::Gpu).collect(),
            Device::Parallel(p) => p.devices.clone(),
            Device::Gpu(_) | Device::Tuned(_) | Device::Cpu | Device::CpuReference => vec![*self],
        }
    }

    /// A short name for logs: the adapter's name, or "cpu"; the replicas' names, joined
    /// with " + ", for the data-parallel devices.
    pub fn name(&self) -> String {
        match self {
            Device::Gpu(g) => g.adapter().name.clone(),
            Device::Tuned(k) => k.gpu().adapter().name.clone(),
            Device::Cpu => "cpu".into(),
            Device::CpuReference => "cpu (reference)".into(),
            Device::Gpus(_) | Device::Parallel(_) => self
                .replicas()
                .iter()
                .map(|d| d.name())
                .collect::<Vec<_>>()
                .join(" + "),
        }
    }
}

/// Where a training step's parts end, in its executor's units (dispatches or ops): after
/// each backward stage's parameter gradients (last layer first), before the update. A
/// data-parallel replica runs its step in parts around the exchange of its gradients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StepBounds {
    pub grad_ends: Vec<usize>,
    pub first_update: usize,
    pub len: usize,
}

/// Which op list of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Train,
    Eval,
}

fn ops_of(plan: &Plan, pass: Pass) -> &[Op] {
    match pass {
        Pass::Train => plan.train_step.ops(),
        Pass::Eval => plan.eval_step.ops(),
    }
}

fn acc(flag: u32) -> Accumulate {
    if flag != 0 {
        Accumulate::Add
    } else {
        Accumulate::Overwrite
    }
}

// ---------------------------------------------------------------------------------------

/// A plan's executor: on a GPU, on the CPU, or data-parallel over replicas of either.
pub enum Executor<'a> {
    Gpu(Box<GpuExec<'a>>),
    Cpu(CpuExec),
    Replicas(Box<Replicas<'a>>),
}

/// The error for an f16 buffer `name` in a plan, which the CPU executor and the host-side
/// copies between executors do not handle yet (`what` says which part refused it).
fn f16_unsupported(name: &str, what: &str) -> Error {
    Error::Config(format!(
        "buffer '{name}' is F16, and {what} does not handle f16 buffers yet: give the plan \
         F32 or U32 buffers only"
    ))
}

fn type_error(plan: &Plan, id: BufId, want: DType) -> Error {
    Error::shape(
        format!("'{}'", plan.buffers[id].name),
        format!("{want:?} data"),
        format!("{:?} buffer", plan.buffers[id].dtype),
    )
}

impl<'a> Executor<'a> {
    /// Allocates every buffer of `plan` and prepares its op lists. A strict plan
    /// (`plan.determinism`) runs strict kernels on a GPU that passes the self-test (the
    /// shared kernels of `Device::Tuned` when they are strict, kernels of its own
    /// otherwise), and the plain-loop twins with soma's arithmetic on the CPU.
    pub fn new(device: Device<'a>, plan: &Plan) -> Result<Executor<'a>> {
        match device {
            Device::Gpus(_) => {
                return Replicas::executor(&device.replicas(), None, Overlap::default(), plan)
            }
            Device::Parallel(p) => {
                return Replicas::executor(&p.devices, p.exchange, p.overlap, plan)
            }
            Device::Gpu(_) | Device::Tuned(_) | Device::Cpu | Device::CpuReference => {}
        }
        let strict = plan.determinism == Determinism::Strict;
        let math = plan.determinism.math();
        let kernels = match device {
            Device::Gpu(gpu) if strict => {
                Some(KernelsRef::Owned(Kernels::new(gpu, Tuning::strict())))
            }
            Device::Gpu(gpu) => Some(KernelsRef::Owned(Kernels::new(gpu, Default::default()))),
            Device::Tuned(k) if strict && !k.tuning().is_strict() => {
                Some(KernelsRef::Owned(Kernels::new(k.gpu(), Tuning::strict())))
            }
            Device::Tuned(k) => Some(KernelsRef::Shared(k)),
            Device::Cpu | Device::CpuReference | Device::Gpus(_) | Device::Parallel(_) => None,
        };
        Ok(match kernels {
            Some(k) => {
                if strict {
                    strict::self_test(&k)?;
                }
                Executor::Gpu(Box::new(GpuExec::new(k, plan)?))
            }
            None => {
                let matmul = match device {
                    Device::Cpu if !strict => CpuMatmul::Gemm,
                    Device::Cpu
                    | Device::CpuReference
                    | Device::Gpu(_)
                    | Device::Tuned(_)
                    | Device::Gpus(_)
                    | Device::Parallel(_) => CpuMatmul::Reference,
                };
                Executor::Cpu(CpuExec::new(plan, matmul, math)?)
            }
        })
    }

    /// Overwrites an f32 buffer.
    pub fn write_f32(&mut self, plan: &Plan, id: BufId, data: &[f32]) -> Result<()> {
        if plan.buffers[id].dtype != DType::F32 {
            return Err(type_error(plan, id, DType::F32));
        }
        if data.len() != plan.buffers[id].len() {
            return Err(Error::shape(
                &plan.buffers[id].name,
                plan.buffers[id].len(),
                data.len(),
            ));
        }
        match self {
            Executor::Gpu(g) => g.tensors[id].write(g.gpu, data),
            Executor::Cpu(c) => {
                c.bufs[id] = HostBuf::F32(data.to_vec());
                Ok(())
            }
            Executor::Replicas(r) => r.write_f32(id, data),
        }
    }

    /// Overwrites a u32 buffer.
    pub fn write_u32(&mut self, plan: &Plan, id: BufId, data: &[u32]) -> Result<()> {
        if plan.buffers[id].dtype != DType::U32 {
            return Err(type_error(plan, id, DType::U32));
        }
        if data.len() != plan.buffers[id].len() {
            return Err(Error::shape(
                &plan.buffers[id].name,
                plan.buffers[id].len(),
                data.len(),
            ));
        }
        match self {
            Executor::Gpu(g) => g.tensors[id].write_u32(g.gpu, data),
            Executor::Cpu(c) => {
                c.bufs[id] = HostBuf::U32(data.to_vec());
                Ok(())
            }
            Executor::Replicas(r) => r.write_u32(id, data),
        }
    }

    /// Reads an f32 buffer (on the GPU: a readback, which waits).
    pub fn read_f32(&self, id: BufId) -> Result<Vec<f32>> {
        match self {
            Executor::Gpu(g) => g.tensors[id].read(g.gpu),
            Executor::Cpu(c) => Ok(c.f(id).to_vec()),
            Executor::Replicas(r) => r.read_f32(id),
        }
    }

    /// Reads a u32 buffer.
    pub fn read_u32(&self, id: BufId) -> Result<Vec<u32>> {
        match self {
            Executor::Gpu(g) => g.tensors[id].read_u32(g.gpu),
            Executor::Cpu(c) => Ok(c.u(id).to_vec()),
            Executor::Replicas(r) => r.read_u32(id),
        }
    }

    /// Reads the f32 buffers `ids` whole, in one readback on the GPU (one wait); u32
    /// buffers come back as the f32s of their bits.
    pub fn read_many_f32(&self, ids: &[BufId]) -> Result<Vec<Vec<f32>>> {
        match self {
            Executor::Gpu(g) => {
                if let Some(&id) = ids.iter().find(|&&id| g.tensors[id].dtype() == DType::F16) {
                    return Err(f16_unsupported(g.tensors[id].label(), "read_many_f32"));
                }
                let tensors: Vec<&GpuTensor> = ids.iter().map(|&id| &g.tensors[id]).collect();
                Ok(split_f32(
                    &start_read_many(g.gpu, &tensors)?.wait(g.gpu)?,
                    &tensors,
                ))
            }
            Executor::Cpu(c) => Ok(ids.iter().map(|&id| c.f(id).to_vec()).collect()),
            Executor::Replicas(r) => r.read_many_f32(ids),
        }
    }

    /// Reads the first 4-byte word of each buffer `ids` (scalars such as metric sums), in
    /// one readback on the GPU.
    pub fn read_words(&self, ids: &[BufId]) -> Result<Vec<[u8; 4]>> {
        match self {
            Executor::Gpu(g) => {
                let tensors: Vec<&GpuTensor> = ids.iter().map(|&id| &g.tensors[id]).collect();
                let bytes = start_read_many(g.gpu, &tensors)?.wait(g.gpu)?;
                let mut at = 0;
                Ok(tensors
                    .iter()
                    .map(|t| {
                        let w = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
                        at += t.padded_byte_len() as usize;
                        w
                    })
                    .collect())
            }
            Executor::Cpu(c) => Ok(ids
                .iter()
                .map(|&id| match &c.bufs[id] {
                    HostBuf::F32(v) => v.first().map_or([0; 4], |x| x.to_le_bytes()),
                    HostBuf::U32(v) => v.first().map_or([0; 4], |x| x.to_le_bytes()),
                })
                .collect()),
            Executor::Replicas(r) => r.read_words(ids),
        }
    }

    /// Runs steps `steps` of `pass` (on the GPU: one submission for all of them).
    pub fn run(&mut self, plan: &Plan, pass: Pass, steps: Range<usize>) -> Result<()> {
        match self {
            Executor::Gpu(g) => g.run(pass, steps),
            Executor::Cpu(c) => {
                for s in steps {
                    for op in ops_of(plan, pass) {
                        c.exec(op, s);
                    }
                }
                Ok(())
            }
            Executor::Replicas(r) => r.run(pass, steps),
        }
    }

    /// Where training step's parts end (see [`StepBounds`]).
    pub(crate) fn step_bounds(&self, plan: &Plan) -> StepBounds {
        match self {
            Executor::Gpu(g) => g.step_bounds(),
            Executor::Cpu(_) | Executor::Replicas(_) => {
                let (grad_ends, first_update) = plan.train_step.grad_ends();
                StepBounds {
                    grad_ends,
                    first_update,
                    len: ops_of(plan, Pass::Train).len(),
                }
            }
        }
    }

    /// Runs part `range` of training step `step` (in [`StepBounds`] units): one part of a
    /// data-parallel replica's step, split around the exchange of its gradients.
    pub(crate) fn run_range(
        &mut self,
        plan: &Plan,
        step: usize,
        range: Range<usize>,
    ) -> Result<()> {
        match self {
            Executor::Gpu(g) => g.run_range(step, range),
            Executor::Cpu(c) => {
                for op in &ops_of(plan, Pass::Train)[range] {
                    c.exec(op, step);
                }
                Ok(())
            }
            Executor::Replicas(_) => Err(Error::Config(
                "a replica cannot itself be data-parallel".into(),
            )),
        }
    }

    /// Runs training step `step` one kernel at a time, each in its own submission followed by
    /// a wait, and returns each kernel's entry point and wall time in seconds (GPU only). It
    /// is a real step (the weights move); for finding where a step's time goes, not for
    /// training, since it trades the one submission per step for one per kernel.
    pub fn profile_step(&mut self, step: usize) -> Result<Vec<(&'static str, f64)>> {
        match self {
            Executor::Gpu(g) => {
                g.flush_save()?;
                g.gpu.wait()?;
                let mut times = Vec::with_capacity(g.train.len());
                for d in g.train.iter().filter(|d| !d.is_empty()) {
                    let t = std::time::Instant::now();
                    kernels::submit_pass(g.gpu, "profile", |pass| d.record(pass, step as u32))?;
                    g.gpu.wait()?;
                    times.push((d.entry(), t.elapsed().as_secs_f64()));
                }
                Ok(times)
            }
            Executor::Cpu(_) => Err(Error::Config(
                "profiling kernels needs the GPU executor".into(),
            )),
            Executor::Replicas(_) => Err(Error::Config(
                "profiling kernels runs on one GPU, not on several replicas".into(),
            )),
        }
    }

    /// The entry point of the fully fused pass where a training step runs as one
    /// (`ops::fused_mlp`), `None` where it runs op by op.
    pub fn fused_mlp_form(&self) -> Option<&'static str> {
        match self {
            Executor::Gpu(g) => g.mlp_form,
            Executor::Cpu(_) | Executor::Replicas(_) => None,
        }
    }

    /// Records steps `steps` of `pass` into a compute pass that a host application owns
    /// (GPU only; nothing is submitted).
    pub fn record_into(
        &mut self,
        pass: Pass,
        steps: Range<usize>,
        cpass: &mut wgpu::ComputePass<'_>,
    ) -> Result<()> {
        match self {
            Executor::Gpu(g) => {
                // Copies cannot go into a compute pass: a pending snapshot goes on its own.
                g.flush_save()?;
                let dispatches = match pass {
                    Pass::Train => &g.train,
                    Pass::Eval => &g.eval,
                };
                kernels::record_steps(cpass, dispatches, steps);
                Ok(())
            }
            Executor::Cpu(_) => Err(Error::Config(
                "recording into a compute pass needs the GPU executor".into(),
            )),
            Executor::Replicas(_) => Err(Error::Config(
                "recording into a host's compute pass needs one GPU, not several replicas (their steps exchange gradients through the host)".into(),
            )),
        }
    }

    /// Takes the update's entries for a new epoch after `Plan::set_epoch` changed them.
    pub fn set_epoch(&mut self, plan: &Plan) -> Result<()> {
        match self {
            Executor::Gpu(g) => g.set_epoch(plan),
            // The CPU executor reads the plan's ops directly.
            Executor::Cpu(_) => Ok(()),
            Executor::Replicas(r) => r.set_epoch(plan),
        }
    }

    /// Saves the buffers `ids` (on the GPU: device-side copies) for `restore`.
    pub fn save(&mut self, ids: &[BufId]) -> Result<()> {
        match self {
            Executor::Gpu(g) => g.save(ids),
            Executor::Cpu(c) => {
                c.snapshot = ids.iter().map(|&id| (id, c.bufs[id].clone())).collect();
                Ok(())
            }
            Executor::Replicas(r) => r.save(ids),
        }
    }

    /// Copies the buffers `ids` as they stand before the next training step (on the GPU:
    /// device-side copies recorded into that step's submission, ahead of its pass), for
    /// `read_shadow`. Separate from `save`'s snapshot.
    pub fn save_shadow(&mut self, ids: &[BufId]) -> Result<()> {
        match self {
            Executor::Gpu(g) => g.save_shadow(ids),
            Executor::Cpu(c) => {
                c.shadow = ids.iter().map(|&id| (id, c.bufs[id].clone())).collect();
                Ok(())
            }
            Executor::Replicas(r) => r.save_shadow(ids),
        }
    }

    /// What `save_shadow` copied, f32 buffers as host values (a readback on the GPU).
    pub fn read_shadow(&mut self) -> Result<Vec<(BufId, Vec<f32>)>> {
        match self {
            Executor::Gpu(g) => g.read_shadow(),
            Executor::Cpu(c) => c
                .shadow
                .iter()
                .map(|(id, b)| match b {
                    cpu::HostBuf::F32(v) => Ok((*id, v.clone())),
                    cpu::HostBuf::U32(_) => Err(Error::Config(format!(
                        "shadow copy of buffer {id}: not an f32 buffer"
                    ))),
                })
                .collect(),
            Executor::Replicas(r) => r.read_shadow(),
        }
    }

    /// Runs training step `step` op by op on the GPU and on the CPU twins and returns the
    /// first op whose output differs past `tolerance` (see [`OpDivergence`]); `skip`: buffers
    /// no op writes. GPU only; the step's result is left on the GPU.
    pub fn locate(
        &mut self,
        plan: &Plan,
        step: usize,
        tolerance: f64,
        skip: &[BufId],
    ) -> Result<Option<OpDivergence>> {
        match self {
            Executor::Gpu(g) => locate::locate(g, plan, step, tolerance, skip),
            Executor::Cpu(_) => Err(Error::Config(
                "locating a divergent op compares the GPU against the CPU: it needs the GPU executor".into(),
            )),
            Executor::Replicas(_) => Err(Error::Config(
                "locating a divergent op replays one GPU's step: run it on one device, not several replicas".into(),
            )),
        }
    }

    /// Puts back what `save` saved.
    pub fn restore(&mut self) -> Result<()> {
        match self {
            Executor::Gpu(g) => g.restore(),
            Executor::Cpu(c) => {
                for (id, b) in c.snapshot.clone() {
                    c.bufs[id] = b;
                }
                Ok(())
            }
            Executor::Replicas(r) => r.restore(),
        }
    }

    /// The resident tensor behind a buffer, on the GPU path. Parameters, gradients and
    /// optimizer state are slots of a shared buffer where it fits (bind them with
    /// `GpuTensor::binding`, copy from `GpuTensor::offset`).
    pub fn tensor(&self, id: BufId) -> Option<&GpuTensor> {
        match self {
            Executor::Gpu(g) => g.tensors.get(id),
            Executor::Cpu(_) => None,
            Executor::Replicas(r) => r.tensor(id),
        }
    }

    /// The kernels, on the GPU path.
    pub fn kernels(&self) -> Option<&Kernels<'a>> {
        match self {
            Executor::Gpu(g) => Some(&g.kernels),
            Executor::Cpu(_) => None,
            Executor::Replicas(r) => r.first_exec().kernels(),
        }
    }

    /// The GPU, on the GPU path.
    pub fn gpu(&self) -> Option<&'a Gpu> {
        match self {
            Executor::Gpu(g) => Some(g.gpu),
            Executor::Cpu(_) => None,
            Executor::Replicas(r) => r.first_exec().gpu(),
        }
    }
}

/// The bytes of one readback of `tensors` (concatenated, in order) as each tensor's f32s.
fn split_f32(bytes: &[u8], tensors: &[&GpuTensor]) -> Vec<Vec<f32>> {
    let mut at = 0;
    tensors
        .iter()
        .map(|t| {
            let len = t.byte_len() as usize;
            let values = bytes[at..at + len]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            at += t.padded_byte_len() as usize;
            values
        })
        .collect()
}
