//! Finding the first op of a training step whose GPU result is wrong: the step runs op by op
//! on the GPU and on the plain-loop CPU twins (`CpuMatmul::Reference`, the kernels' own
//! order of operations), both from the same buffers. After each op every buffer it may have
//! written is compared; the first that differs past the tolerance names the op. Before the
//! next op the CPU side takes the GPU's values, so that each op is judged on identical
//! inputs and a difference cannot grow from one op into the next and be blamed on it.
//!
//! The ops are the step's unfused list (`Step::ops`), each built as its own dispatch (the
//! kernels the tuner chose, not the fused forms), so a report names one kernel.

use serde::{Deserialize, Serialize};

use super::cpu::{CpuExec, CpuMatmul, HostBuf};
use super::gpu::GpuExec;
use super::split_f32;
use crate::error::Result;
use crate::kernels;
use crate::plan::{BufId, Plan};
use crate::tensor::{start_read_many, DType, GpuTensor};

/// The first op whose GPU output differs from its CPU twin's past the tolerance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpDivergence {
    /// Its position in the step's op list (from 0) and the list's length.
    pub op_index: usize,
    pub ops: usize,
    /// The op (`MatmulNt`, `BiasActivationForward`, ...).
    pub op: String,
    /// The GPU kernel's entry point that ran it.
    pub kernel: String,
    /// The buffer that differs (its name says the layer) and its shape.
    pub buffer: String,
    pub shape: Vec<usize>,
    /// The worst element: its index (row-major), both values, and `|gpu - cpu|` over the
    /// buffer's largest CPU magnitude.
    pub index: usize,
    pub gpu: f32,
    pub cpu: f32,
    pub difference: f64,
}

/// The op variant's name, from its debug form.
fn op_name(op: &crate::plan::Op) -> String {
    let text = format!("{op:?}");
    text.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Runs training step `step` of `plan` op by op on `gpu` and on the CPU twins; the first op
/// past `tolerance` (see the module docs), or `None`. `skip` lists buffers that no op writes
/// (the data tables), which are neither compared nor copied.
pub(super) fn locate(
    gpu: &mut GpuExec<'_>,
    plan: &Plan,
    step: usize,
    tolerance: f64,
    skip: &[BufId],
) -> Result<Option<OpDivergence>> {
    gpu.flush_save()?;
    let mut cpu = CpuExec::new(plan, CpuMatmul::Reference, plan.determinism.math())?;
    let live: Vec<BufId> = (0..plan.buffers.len())
        .filter(|id| !skip.contains(id))
        .collect();
    // Everything the step reads, the data tables included, starts equal.
    let everything: Vec<BufId> = (0..plan.buffers.len()).collect();
    copy_to_host(gpu, plan, &everything, &mut cpu)?;
    let ops = plan.train_step.ops();
    for (i, op) in ops.iter().enumerate() {
        let dispatch = gpu.build(plan, op)?;
        kernels::run_steps(
            gpu.gpu,
            "locate",
            std::slice::from_ref(&dispatch),
            step..step + 1,
        )?;
        cpu.exec(op, step);
        let tensors: Vec<&GpuTensor> = live.iter().map(|&id| &gpu.tensors[id]).collect();
        let bytes = start_read_many(gpu.gpu, &tensors)?.wait(gpu.gpu)?;
        let values = split_f32(&bytes, &tensors);
        let mut worst: Option<OpDivergence> = None;
        for (&id, device) in live.iter().zip(&values) {
            let host: Vec<f32> = match &cpu.bufs[id] {
                HostBuf::F32(v) => v.clone(),
                HostBuf::U32(v) => v.iter().map(|&u| f32::from_bits(u)).collect(),
            };
            let exact = plan.buffers[id].dtype == DType::U32;
            let scale = host
                .iter()
                .map(|v| f64::from(v.abs()))
                .fold(0.0, f64::max)
                .max(f64::MIN_POSITIVE);
            for (j, (&g, &c)) in device.iter().zip(&host).enumerate() {
                let d = if exact {
                    if g.to_bits() == c.to_bits() {
                        0.0
                    } else {
                        f64::INFINITY
                    }
                } else if g.is_finite() && c.is_finite() {
                    f64::from((g - c).abs()) / scale
                } else if g.to_bits() == c.to_bits() {
                    0.0
                } else {
                    f64::INFINITY
                };
                if d > tolerance && worst.as_ref().is_none_or(|w| d > w.difference) {
                    worst = Some(OpDivergence {
                        op_index: i,
                        ops: ops.len(),
                        op: op_name(op),
                        kernel: dispatch.entry().to_string(),
                        buffer: plan.buffers[id].name.clone(),
                        shape: plan.buffers[id].shape.clone(),
                        index: j,
                        gpu: g,
                        cpu: c,
                        difference: d,
                    });
                }
            }
            // The next op starts from the GPU's values.
            cpu.bufs[id] = match plan.buffers[id].dtype {
                DType::F32 => HostBuf::F32(device.clone()),
                DType::U32 => HostBuf::U32(device.iter().map(|v| v.to_bits()).collect()),
                DType::F16 => {
                    return Err(super::f16_unsupported(
                        &plan.buffers[id].name,
                        "`soma check --locate`",
                    ))
                }
            };
        }
        if worst.is_some() {
            return Ok(worst);
        }
    }
    Ok(None)
}

/// Copies buffers `ids` from the GPU into the CPU executor (one readback).
fn copy_to_host(gpu: &GpuExec<'_>, plan: &Plan, ids: &[BufId], cpu: &mut CpuExec) -> Result<()> {
    let tensors: Vec<&GpuTensor> = ids.iter().map(|&id| &gpu.tensors[id]).collect();
    let bytes = start_read_many(gpu.gpu, &tensors)?.wait(gpu.gpu)?;
    for (&id, values) in ids.iter().zip(split_f32(&bytes, &tensors)) {
        cpu.bufs[id] = match plan.buffers[id].dtype {
            DType::F32 => HostBuf::F32(values),
            DType::U32 => HostBuf::U32(values.iter().map(|v| v.to_bits()).collect()),
            DType::F16 => {
                return Err(super::f16_unsupported(
                    &plan.buffers[id].name,
                    "`soma check --locate`",
                ))
            }
        };
    }
    Ok(())
}
