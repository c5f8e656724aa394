//! The CPU executor: host vectors and the CPU twins of the op families, op by op in plan order.

use crate::cpu;
use crate::error::Result;
use crate::math::Math;
use crate::ops::matmul::{BlockedMatmulParams, MatmulParams};
use crate::plan::{entry, BufId, Op, Plan};
use crate::tensor::DType;

#[derive(Clone, Debug)]
pub(super) enum HostBuf {
    F32(Vec<f32>),
    U32(Vec<u32>),
}

/// How the CPU executor multiplies matrices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuMatmul {
    /// The plain-loop twins of the GPU kernels (`cpu::matmul_nt` ...), bit-for-bit in the
    /// kernels' order of operations.
    Reference,
    /// `matrixmultiply`'s threaded sgemm (`cpu::matmul_gemm`): many times faster, equal to
    /// rounding.
    #[default]
    Gemm,
}

/// The CPU executor: host vectors and the CPU twins, op by op in plan order.
pub struct CpuExec {
    pub(super) bufs: Vec<HostBuf>,
    pub(super) snapshot: Vec<(BufId, HostBuf)>,
    pub(super) shadow: Vec<(BufId, HostBuf)>,
    pub(super) matmul: CpuMatmul,
    /// The arithmetic of the twins' divisions, roots, exponentials and logarithms.
    pub(super) math: Math,
}

impl CpuExec {
    /// The host buffers of `plan`; an error for an f16 buffer, which the CPU executor does
    /// not hold yet.
    pub(super) fn new(plan: &Plan, matmul: CpuMatmul, math: Math) -> Result<CpuExec> {
        let bufs = plan
            .buffers
            .iter()
            .enumerate()
            .map(|(id, b)| match b.dtype {
                DType::F32 => Ok(HostBuf::F32(vec![0.0; b.len()])),
                DType::U32 => Ok(HostBuf::U32(vec![0; b.len()])),
                DType::F16 => Err(super::f16_unsupported(
                    &plan.buffers[id].name,
                    "the CPU executor",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CpuExec {
            bufs,
            snapshot: vec![],
            shadow: vec![],
            matmul,
            math,
        })
    }

    pub(super) fn f(&self, id: BufId) -> &[f32] {
        match &self.bufs[id] {
            HostBuf::F32(v) => v,
            HostBuf::U32(_) => &[],
        }
    }

    pub(super) fn u(&self, id: BufId) -> &[u32] {
        match &self.bufs[id] {
            HostBuf::U32(v) => v,
            HostBuf::F32(_) => &[],
        }
    }

    pub(super) fn take_f(&mut self, id: BufId) -> Vec<f32> {
        match std::mem::replace(&mut self.bufs[id], HostBuf::F32(vec![])) {
            HostBuf::F32(v) => v,
            other => {
                self.bufs[id] = other;
                vec![]
            }
        }
    }

    pub(super) fn take_u(&mut self, id: BufId) -> Vec<u32> {
        match std::mem::replace(&mut self.bufs[id], HostBuf::U32(vec![])) {
            HostBuf::U32(v) => v,
            other => {
                self.bufs[id] = other;
                vec![]
            }
        }
    }

    /// One matrix product: the form's plain-loop twin, or the gemm with the form's strides.
    pub(super) fn matmul(
        &mut self,
        out: BufId,
        a: BufId,
        b: BufId,
        p: &MatmulParams,
        reference: fn(&mut [f32], &[f32], &[f32], &MatmulParams),
        strides: fn(&MatmulParams) -> BlockedMatmulParams,
    ) {
        let mut o = self.take_f(out);
        match self.matmul {
            CpuMatmul::Reference => reference(&mut o, self.f(a), self.f(b), p),
            CpuMatmul::Gemm => cpu::matmul_gemm(&mut o, self.f(a), self.f(b), &strides(p)),
        }
        self.bufs[out] = HostBuf::F32(o);
    }

    pub(super) fn exec(&mut self, op: &Op, step: usize) {
        match op {
            Op::GatherRows {
                out,
                data,
                indices,
                params,
            } => {
                let mut o = self.take_f(*out);
                cpu::gather_rows(
                    &mut o,
                    self.f(*data),
                    self.u(*indices),
                    &entry(params, step),
                );
                self.bufs[*out] = HostBuf::F32(o);
            }
            Op::GatherRowsU8 {
                out,
                data,
                indices,
                params,
            } => {
                let mut o = self.take_f(*out);
                cpu::gather_rows_u8(
                    &mut o,
                    self.u(*data),
                    self.u(*indices),
                    &entry(params, step),
                    self.math,
                );
                self.bufs[*out] = HostBuf::F32(o);
            }
            Op::GatherLabels {
                out,
                labels,
                indices,
                params,
            } => {
                let mut o = self.take_u(*out);
                cpu::gather_labels(
                    &mut o,
                    self.u(*labels),
                    self.u(*indices),
                    &entry(params, step),
                );
                self.bufs[*out] = HostBuf::U32(o);
            }
            Op::MatmulNt { out, a, b, params } => self.matmul(
                *out,
                *a,
                *b,
                params,
                cpu::matmul_nt,
                BlockedMatmulParams::nt,
            ),
            Op::MatmulNn { out, a, b, params } => self.matmul(
                *out,
                *a,
                *b,
                params,
                cpu::matmul_nn,
                BlockedMatmulParams::nn,
            ),
            Op::MatmulTn { out, a, b, params } => self.matmul(
                *out,
                *a,
                *b,
                params,
                cpu::matmul_tn,
                BlockedMatmulParams::tn,
            ),
            Op::BiasActivationForward {
                out,
                pre,
                bias,
                params,
            } => {
                let mut o = self.take_f(*out);
                let mut p = self.take_f(*pre);
                let b: &[f32] = match bias {
                    Some(b) => self.f(*b),
                    None => &[],
                };
                cpu::bias_activation_forward(&mut o, &mut p, b, params, self.math);
                self.bufs[*out] = HostBuf::F32(o);
                self.bufs[*pre] = HostBuf::F32(p);
            }
            Op::ActivationBackward {
                dpre,
                dout,
                pre,
                params,
            } => {
                let mut o = self.take_f(*dpre);
                cpu::activation_backward(&mut o, self.f(*dout), self.f(*pre), params, self.math);
                self.bufs[*dpre] = HostBuf::F32(o);
            }
            Op::ColumnSum { out, x, params } => {
                let mut o = self.take_f(*out);
                cpu::column_sum(&mut o, self.f(*x), params);
                self.bufs[*out] = HostBuf::F32(o);
            }
            Op::Loss {
                kind,
                grad,
                row_loss,
                pred,
                target,
                params,
            } => {
                let mut g = self.take_f(*grad);
                let mut l = self.take_f(*row_loss);
                let p = entry(params, step);
                match kind {
                    crate::ops::Loss::Mse => cpu::mse_loss(
                        &mut g,
                        &mut l,
                        self.f(*pred),
                        self.f(*target),
                        &p,
                        self.math,
                    ),
                    crate::ops::Loss::SoftmaxCrossEntropy => cpu::softmax_cross_entropy(
                        &mut g,
                        &mut l,
                        self.f(*pred),
                        self.u(*target),
                        &p,
                        self.math,
                    ),
                    crate::ops::Loss::BinaryCrossEntropy => cpu::binary_cross_entropy(
                        &mut g,
                        &mut l,
                        self.f(*pred),
                        self.f(*target),
                        &p,
                        self.math,
                    ),
                }
                self.bufs[*grad] = HostBuf::F32(g);
                self.bufs[*row_loss] = HostBuf::F32(l);
            }
            Op::ReduceSum { out, x, params } => {
                let mut o = self.take_f(*out);
                cpu::reduce_sum(&mut o, self.f(*x), params);
                self.bufs[*out] = HostBuf::F32(o);
            }
            Op::CorrectCount {
                count,
                x,
                labels,
                params,
            } => {
                let mut c = self.take_u(*count);
                cpu::correct_count(&mut c, self.f(*x), self.u(*labels), &entry(params, step));
                self.bufs[*count] = HostBuf::U32(c);
            }
            Op::Update {
                rule,
                param,
                state,
                grad,
                params,
            } => {
                let mut p = self.take_f(*param);
                let mut s: Vec<Vec<f32>> = state.iter().map(|&id| self.take_f(id)).collect();
                cpu::update(
                    *rule,
                    &mut p,
                    &mut s,
                    self.f(*grad),
                    &entry(params, step),
                    self.math,
                );
                self.bufs[*param] = HostBuf::F32(p);
                for (&id, values) in state.iter().zip(s) {
                    self.bufs[id] = HostBuf::F32(values);
                }
            }
        }
    }
}
