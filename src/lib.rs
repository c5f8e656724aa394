//! soma trains feedforward neural networks on any GPU that wgpu reaches, with WGSL compute
//! shaders, and checks every GPU result against a plain-Rust CPU reference.

pub mod autotune;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod embed;
pub mod error;
pub mod exec;
pub mod fs;
pub mod gpu;
pub mod inspect;
pub mod kernels;
pub mod lecture;
pub mod loss;
pub mod network;
pub mod optim;
pub mod params;
pub mod perceptron;
pub mod plan;
pub mod plot;
pub mod rng;
pub mod tensor;
pub mod trainer;

pub use error::{Error, Result};
pub use exec::Device;
pub use gpu::{AdapterSummary, Gpu, GpuStats, Ownership};
pub use kernels::{Accumulate, Dispatch, Kernel};
pub use loss::Loss;
pub use network::Activation;
pub use network::{Init, Layer, LayerParams, Network, Parameters};
pub use optim::{Optimizer, OptimizerKind, Schedule};
pub use tensor::{DType, GpuTensor};
pub use trainer::{
    fit, EarlyStopping, EpochMetrics, Evaluation, History, Model, TrainConfig, Trainer,
};
