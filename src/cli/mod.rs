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

use std::str::FromStr;

use soma::checkpoint::{self, Checkpoint};
use soma::gpu::{distinct_adapters, AdapterRequest};
use soma::parallel::{DataParallel, Exchange, Overlap};
use soma::{Device, Error, Gpu, Kernels, Result, Tuning};

/// The opened device: the GPU's kernels, with the tuning the environment asks for
/// (`SOMA_MATMUL`, `SOMA_FUSE`, `SOMA_FUSED_MLP`, `SOMA_AUTOTUNE`, `SOMA_SUBGROUPS`), when
/// there is a GPU; or the replicas of a data-parallel run.
pub struct Opened {
    kernels: Option<Kernels<'static>>,
    parallel: Option<&'static DataParallel<'static>>,
}

impl Opened {
    pub fn device(&self) -> Device<'_> {
        match (&self.kernels, self.parallel) {
            (_, Some(p)) => Device::Parallel(p),
            (Some(k), None) => Device::Tuned(k),
            (None, None) => Device::Cpu,
        }
    }
}

/// The command opens one device for its whole life, so the `Gpu` is simply kept.
fn kept(gpu: Gpu, tuning: Tuning) -> Opened {
    let gpu: &'static Gpu = Box::leak(Box::new(gpu));
    Opened {
        kernels: Some(Kernels::new(gpu, tuning)),
        parallel: None,
    }
}

/// `--devices`: the adapters of a data-parallel run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevicesSpec {
    /// One replica on each distinct adapter (`soma::gpu::distinct_adapters`).
    All,
    /// One replica on each listed adapter, by its `soma devices` number; a number given
    /// twice opens that adapter twice.
    Indices(Vec<usize>),
}

impl FromStr for DevicesSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<DevicesSpec> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(DevicesSpec::All);
        }
        let indices = s
            .split(',')
            .map(|p| {
                p.trim().parse::<usize>().map_err(|_| {
                    Error::Config(format!(
                        "--devices {s}: '{}' is not an adapter number; give all, or numbers as `soma devices` lists them, such as 0,2 (0,0 opens adapter 0 twice)",
                        p.trim()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DevicesSpec::Indices(indices))
    }
}

impl std::fmt::Display for DevicesSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DevicesSpec::All => write!(f, "all"),
            DevicesSpec::Indices(i) => write!(
                f,
                "{}",
                i.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

impl DevicesSpec {
    /// The adapter numbers this names.
    fn indices(&self) -> Vec<usize> {
        match self {
            DevicesSpec::All => distinct_adapters(),
            DevicesSpec::Indices(i) => i.clone(),
        }
    }
}

/// Opens one device per adapter `spec` names, each with kernels of its own (tuned as the
/// environment says), for a data-parallel run; a spec that names one adapter opens it as
/// a single device, `overlap` saying when the replicas' gradients cross the host. Prints the
/// adapters it uses unless `quiet`.
pub fn open_devices(
    choice: DeviceChoice,
    spec: &DevicesSpec,
    overlap: Overlap,
    quiet: bool,
) -> Result<Opened> {
    if choice == DeviceChoice::Cpu {
        return Err(Error::Config(format!(
            "--devices {spec} names GPU adapters, but --device is cpu; drop one of them"
        )));
    }
    let tuning = Tuning::from_env()?;
    let indices = spec.indices();
    if indices.is_empty() {
        return Err(Error::NoAdapter {
            detail: format!(" for --devices {spec}"),
        });
    }
    let mut kernels = Vec::new();
    for &i in &indices {
        let gpu = Gpu::with_request(&AdapterRequest {
            index: Some(i),
            ..Default::default()
        })?;
        if !quiet {
            let a = gpu.adapter();
            eprintln!(
                "replica {}: adapter [{i}] {} ({:?}, {:?})",
                kernels.len(),
                a.name,
                a.backend,
                a.device_type
            );
        }
        let gpu: &'static Gpu = Box::leak(Box::new(gpu));
        kernels.push(Kernels::new(gpu, tuning));
    }
    if kernels.len() == 1 {
        return Ok(Opened {
            kernels: kernels.pop(),
            parallel: None,
        });
    }
    let kernels: &'static [Kernels<'static>] = Box::leak(kernels.into_boxed_slice());
    let parallel: &'static DataParallel<'static> = Box::leak(Box::new(DataParallel {
        devices: kernels.iter().map(Device::Tuned).collect(),
        exchange: None,
        overlap,
    }));
    Ok(Opened {
        kernels: None,
        parallel: Some(parallel),
    })
}

/// The MPI exchange of `--distributed mpi`: MPI starts here (the exchange finalizes it when
/// dropped), with the timeout of `SOMA_MPI_TIMEOUT`.
#[cfg(feature = "mpi")]
pub fn open_mpi() -> Result<Box<dyn Exchange>> {
    use soma::parallel::mpi::{timeout_from_env, MpiExchange};
    Ok(Box::new(MpiExchange::init(timeout_from_env()?)?))
}

/// `--distributed mpi` in a build without MPI: an error that says how to build it.
#[cfg(not(feature = "mpi"))]
pub fn open_mpi() -> Result<Box<dyn Exchange>> {
    Err(Error::Config(
        "--distributed mpi: this soma was built without MPI; build it with `cargo build --release --features mpi` (Open MPI's libopenmpi-dev, pkg-config and libclang-dev are needed to build it)".into(),
    ))
}

/// The node-local rank the MPI launcher gives this process (Open MPI's
/// `OMPI_COMM_WORLD_LOCAL_RANK`, MPICH's `MPI_LOCALRANKID`), if any.
fn local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The device of this process's replica in a run over `exchange`'s processes: the adapter
/// that `spec` (else every distinct adapter) lists at the node-local rank, cycling when
/// the node has more ranks than adapters. Printed unless `quiet`.
pub fn open_rank_device(
    choice: DeviceChoice,
    spec: Option<&DevicesSpec>,
    exchange: &dyn Exchange,
    quiet: bool,
) -> Result<&'static Kernels<'static>> {
    if choice == DeviceChoice::Cpu {
        return Err(Error::Config(
            "--distributed runs one replica per process on a GPU adapter, but --device is cpu"
                .into(),
        ));
    }
    let tuning = Tuning::from_env()?;
    let indices = spec.map_or_else(distinct_adapters, |s| s.indices());
    let local = local_rank().unwrap_or(exchange.rank());
    let Some(&index) = indices.get(local % indices.len().max(1)) else {
        return Err(Error::NoAdapter {
            detail: format!(" for rank {}", exchange.rank()),
        });
    };
    let gpu = Gpu::with_request(&AdapterRequest {
        index: Some(index),
        ..Default::default()
    })?;
    if !quiet {
        let a = gpu.adapter();
        eprintln!(
            "rank {} of {} (local rank {local}): adapter [{index}] {} ({:?}, {:?})",
            exchange.rank(),
            exchange.size(),
            a.name,
            a.backend,
            a.device_type
        );
    }
    let gpu: &'static Gpu = Box::leak(Box::new(gpu));
    Ok(Box::leak(Box::new(Kernels::new(gpu, tuning))))
}

pub fn open_device(choice: DeviceChoice) -> Result<Opened> {
    // A bad SOMA_* value fails before any device is opened.
    let tuning = Tuning::from_env()?;
    match choice {
        DeviceChoice::Cpu => Ok(Opened {
            kernels: None,
            parallel: None,
        }),
        DeviceChoice::Gpu => Ok(kept(Gpu::new()?, tuning)),
        DeviceChoice::Auto => match Gpu::new() {
            Ok(g) => Ok(kept(g, tuning)),
            Err(e @ Error::NoAdapter { .. }) => {
                eprintln!("warning: {e}\nwarning: running on the CPU path");
                Ok(Opened {
                    kernels: None,
                    parallel: None,
                })
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
