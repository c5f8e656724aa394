//! soma trains feedforward neural networks on any GPU that wgpu reaches, with WGSL compute
//! shaders, and checks every GPU result against a plain-Rust CPU reference.

pub mod cpu;
pub mod data;
pub mod error;
pub mod gpu;
pub mod kernels;
pub mod network;
pub mod params;
pub mod rng;
pub mod tensor;

pub use error::{Error, Result};
pub use gpu::{AdapterSummary, Gpu, GpuStats, Ownership};
pub use kernels::{Accumulate, Dispatch, Kernel, Loss};
pub use network::Activation;
pub use tensor::{DType, GpuTensor};
