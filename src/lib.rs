//! soma trains feedforward neural networks on any GPU that wgpu reaches, with WGSL compute
//! shaders, and checks every GPU result against a plain-Rust CPU reference.
//!
//! One training step: the plan ([`plan`]) lays out every buffer and the step in stages
//! (gather the batch through the epoch's row order, each layer's product and activation,
//! the loss and its gradient, each layer's backward pass, the update of every parameter);
//! the executor ([`exec`]) records the stages' dispatches ([`ops`], launched through
//! [`kernels`]) into one compute pass and one submission, or runs their CPU twins
//! ([`cpu`]); the trainer ([`trainer`]) schedules epochs over a [`run::Run`].
//!
//! Modules, bottom up: [`gpu`] the device; [`tensor`] buffers; [`math`] the arithmetic of
//! the kernels' divisions, roots, exponentials and logarithms (native, or strict mode's own)
//! and [`spirv`] strict mode's `NoContraction` pass; [`kernels`] pipelines and
//! dispatches; [`ops`] the op families with their twins, the kernel table, `Kernels` and
//! `Tuning`; [`autotune`] the tuner; [`network`], [`optim`] and [`plan`] the run's
//! description; [`exec`] the executors ([`parallel`]: data-parallel replicas and the
//! exchange between processes); [`run`], [`model`] and [`trainer`] runs and their
//! scheduling; [`metrics`] regression metrics; [`embed`] the host-application API; [`data`],
//! [`checkpoint`], [`export`], [`plot`] and [`fs`] files; [`lecture`], [`perceptron`] and [`inspect`] the lecture's pieces.

// Every match over soma's own enums names each variant, so that the compiler lists every
// place a new variant needs; a foreign enum's wildcard carries an `allow` and a reason.
#![deny(clippy::wildcard_enum_match_arm)]
// Unit tests match an expected variant and fail on any other.
#![cfg_attr(test, allow(clippy::wildcard_enum_match_arm))]

pub mod autotune;
pub mod checkpoint;
pub mod data;
pub mod embed;
pub mod error;
pub mod exec;
pub mod export;
pub mod fs;
pub mod gpu;
pub mod inspect;
pub mod kernels;
pub mod lecture;
pub mod math;
pub mod metrics;
pub mod model;
pub mod network;
pub mod ops;
pub mod optim;
pub mod parallel;
pub mod params;
pub mod perceptron;
pub mod plan;
pub mod plot;
pub mod rng;
pub mod run;
pub mod spirv;
pub mod state_dict;
pub mod tensor;
pub mod trainer;

pub use error::{Error, Result};
pub use exec::{Determinism, Device};
pub use gpu::{AdapterSummary, Gpu, GpuStats, Ownership};
pub use kernels::Dispatch;
pub use math::Math;
pub use network::Activation;
pub use network::{Init, Layer, LayerParams, Network, Parameters};
pub use ops::{Accumulate, Loss};
pub use ops::{Kernel, Kernels, Tuning};
pub use optim::{Optimizer, OptimizerKind, Schedule, UpdateRule};
pub use tensor::{DType, GpuTensor};
pub use trainer::{
    EarlyStopping, EpochMetrics, Evaluation, Fit, Flow, History, Model, TrainConfig, Trainer,
};

/// Every CPU twin of a kernel, re-exported from its op family (`ops::<family>::cpu`): plain
/// loops with the kernel's name, argument order and, where it decides the last bit, its order
/// of floating-point operations. No wgpu.
pub mod cpu {
    pub use crate::ops::activation::cpu::*;
    pub use crate::ops::data::cpu::*;
    pub use crate::ops::fused_mlp::cpu::*;
    pub use crate::ops::loss::cpu::*;
    pub use crate::ops::matmul::cpu::*;
    pub use crate::ops::optim::cpu::*;
    pub use crate::ops::perceptron::cpu::*;
    pub use crate::ops::reduce::cpu::*;
    pub use crate::ops::scale::cpu::*;
}

/// The Rust snippets of the README and `docs/`, compiled as doc tests so that they keep
/// up with the API (`cargo test --doc`).
#[cfg(doctest)]
mod doc_snippets {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/adding-an-op.md")]
    struct AddingAnOp;
    #[doc = include_str!("../docs/architecture.md")]
    struct Architecture;
    #[doc = include_str!("../docs/determinism.md")]
    struct Determinism;
    #[doc = include_str!("../docs/embedding.md")]
    struct Embedding;
    #[doc = include_str!("../docs/export.md")]
    struct Export;
    #[doc = include_str!("../docs/gpu.md")]
    struct GpuReport;
    #[doc = include_str!("../docs/lecture.md")]
    struct Lecture;
    #[doc = include_str!("../docs/reliability.md")]
    struct Reliability;
}
