//! The `soma` command's subcommands. Each file is one subcommand; this one holds what they
//! share: choosing the device, and loading a model from a run directory or checkpoint.

pub mod bench;
pub mod check;
pub mod devices;
pub mod eval;
pub mod export;
pub mod init;
pub mod interrupt;
pub mod options;
pub mod predict;
pub mod prepare;
pub mod report;
pub mod run_dir;
pub mod train;

pub use options::DeviceChoice;

use std::path::{Path, PathBuf};

use soma::checkpoint::{self, Checkpoint};
use soma::{Device, Error, Gpu, Kernels, Result, Tuning};

/// The opened device: the GPU's kernels, with the tuning the environment asks for
/// (`SOMA_MATMUL`, `SOMA_FUSE`, `SOMA_FUSED_MLP`, `SOMA_AUTOTUNE`, `SOMA_SUBGROUPS`), when
/// there is a GPU.
pub struct Opened {
    kernels: Option<Kernels<'static>>,
}

impl Opened {
    pub fn device(&self) -> Device<'_> {
        match &self.kernels {
            Some(k) => Device::Tuned(k),
            None => Device::Cpu,
        }
    }
}

/// The command opens one device for its whole life, so the `Gpu` is simply kept.
fn kept(gpu: Gpu, tuning: Tuning) -> Opened {
    let gpu: &'static Gpu = Box::leak(Box::new(gpu));
    Opened {
        kernels: Some(Kernels::new(gpu, tuning)),
    }
}

pub fn open_device(choice: DeviceChoice) -> Result<Opened> {
    // A bad SOMA_* value fails before any device is opened.
    let tuning = Tuning::from_env()?;
    match choice {
        DeviceChoice::Cpu => Ok(Opened { kernels: None }),
        DeviceChoice::Gpu => Ok(kept(Gpu::new()?, tuning)),
        DeviceChoice::Auto => match Gpu::new() {
            Ok(g) => Ok(kept(g, tuning)),
            Err(e @ Error::NoAdapter { .. }) => {
                eprintln!("warning: {e}\nwarning: running on the CPU path");
                Ok(Opened { kernels: None })
            }
            Err(e) => Err(e),
        },
    }
}

/// A checkpoint from a file, or from `checkpoint.safetensors` in a run directory.
pub fn load_model(path: &Path) -> Result<(PathBuf, Checkpoint)> {
    let file = if path.is_dir() {
        path.join("checkpoint.safetensors")
    } else {
        path.to_path_buf()
    };
    let ck = checkpoint::load(&file)?;
    Ok((file, ck))
}
