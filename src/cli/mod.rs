//! The `soma` command's subcommands. Each file is one subcommand; this one holds what they
//! share: choosing the device, and loading a model from a run directory or checkpoint.

pub mod bench;
pub mod check;
pub mod devices;
pub mod eval;
pub mod options;
pub mod predict;
pub mod train;

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use soma::checkpoint::{self, Checkpoint};
use soma::{Device, Error, Gpu, Result};

/// `--device`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// The best GPU adapter; the CPU path (with a warning) when there is none.
    #[default]
    Auto,
    /// A GPU adapter, or an error.
    Gpu,
    /// The CPU reference path.
    Cpu,
}

/// The opened device (owning the `Gpu` when there is one).
pub struct Opened {
    gpu: Option<Gpu>,
}

impl Opened {
    pub fn device(&self) -> Device<'_> {
        match &self.gpu {
            Some(g) => Device::Gpu(g),
            None => Device::Cpu,
        }
    }
}

pub fn open_device(choice: DeviceChoice) -> Result<Opened> {
    match choice {
        DeviceChoice::Cpu => Ok(Opened { gpu: None }),
        DeviceChoice::Gpu => Ok(Opened {
            gpu: Some(Gpu::new()?),
        }),
        DeviceChoice::Auto => match Gpu::new() {
            Ok(g) => Ok(Opened { gpu: Some(g) }),
            Err(e @ Error::NoAdapter { .. }) => {
                eprintln!("warning: {e}\nwarning: running on the CPU path");
                Ok(Opened { gpu: None })
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
