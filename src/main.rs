//! The `soma` command: train, eval, predict, export, check, bench and devices (see `soma --help`).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::options::TrainOptions;
use cli::DeviceChoice;

#[derive(Parser)]
#[command(
    name = "soma",
    version,
    about = "Train feedforward neural networks on any GPU with WGSL compute shaders, checked against a CPU reference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network (with no arguments: a 64-64-10 MLP on the bundled digits set)
    Train {
        #[command(flatten)]
        options: TrainOptions,
        /// A TOML file with the same settings, or a run's config.json to repeat it (flags
        /// override it)
        #[arg(long)]
        config: Option<PathBuf>,
        /// [default: auto, or the TOML file's `device`]
        #[arg(long, value_enum)]
        device: Option<DeviceChoice>,
        /// Train data-parallel, one replica per adapter: all (each adapter of the first of
        /// Vulkan, Metal, DX12, GL that has any), or adapter numbers as `soma devices` lists
        /// them, such as 0,2 (0,0 opens adapter 0 twice). Each global batch of --batch-size
        /// rows is split into fixed shares [default: one adapter; a resumed run's own]
        #[arg(long)]
        devices: Option<String>,
        /// With --devices or --distributed: hand each layer's gradients over as soon as its
        /// backward pass is done, while the layers below it compute (the same bits either way)
        #[arg(long)]
        overlap: bool,
        /// This process is one replica of a run over several: mpi (under `mpirun -n R`, one
        /// replica per rank; rank 0 writes the run directory). Needs soma built with
        /// `--features mpi`. Each rank takes the adapter --devices (else every distinct
        /// adapter) lists at its node-local rank
        #[arg(long, value_enum)]
        distributed: Option<cli::options::Distributed>,
        /// The run directory [default: runs/<UTC timestamp>]
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue a run: an unfinished DIR.partial exactly where it stopped, or a finished
        /// DIR for more --epochs (in place)
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Print one JSON summary at the end instead of the text report
        #[arg(long)]
        json: bool,
        /// Stop after this many epochs, leaving a run that --resume continues
        #[arg(long)]
        stop_after: Option<usize>,
    },
    /// Loss, accuracy and confusion matrix of a trained model
    Eval {
        /// A run directory or a .safetensors checkpoint
        #[arg(long)]
        model: PathBuf,
        /// Data options (default: the run's own test split)
        #[command(flatten)]
        data: cli::options::DataOptions,
        #[arg(long, value_enum, default_value_t)]
        device: DeviceChoice,
        #[arg(long)]
        json: bool,
    },
    /// Predictions for the rows of a CSV file
    Predict {
        /// A run directory or a .safetensors checkpoint
        #[arg(long)]
        model: PathBuf,
        /// CSV of feature rows. A header row is detected; where the model knows its
        /// features' names, columns are matched by name (the label column is ignored, a
        /// missing or unknown column is an error)
        #[arg(long)]
        input: PathBuf,
        /// Where to write the predictions CSV: a file (replaced atomically; never the input,
        /// the model or a file in a run directory), a FIFO or device (written through), or -
        /// [default: standard output]
        #[arg(long)]
        output: Option<PathBuf>,
        /// A column of the input to ignore: name or 0-based index
        #[arg(long)]
        drop_column: Option<String>,
        /// Take the input's columns in order, as the model's features, whatever the header
        /// says
        #[arg(long)]
        by_position: bool,
        #[arg(long, value_enum, default_value_t)]
        device: DeviceChoice,
    },
    /// Write a trained model as ONNX, plain PyTorch safetensors or JSON (docs/export.md)
    Export {
        /// A run directory or a .safetensors checkpoint
        #[arg(long)]
        model: PathBuf,
        /// What to write
        #[arg(long, value_enum)]
        format: cli::export::FormatChoice,
        /// The file to write: replaced atomically; never the model or a file in a run
        /// directory; a FIFO or device is written through; - is standard output
        #[arg(long)]
        output: PathBuf,
        /// Fold the input scaling into the first layer (W' = W diag(scale),
        /// b' = b - W' offset), so that its weights take raw features
        #[arg(long)]
        fold_scaling: bool,
    },
    /// Run training steps on the GPU and on the CPU path and compare every tensor
    Check {
        #[command(flatten)]
        options: TrainOptions,
        /// Training steps to compare
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Largest accepted relative difference (per-step loss, per-tensor relative L2; with
        /// --locate, per element over the buffer's largest value)
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
        /// Run each step op by op on the GPU and on the CPU twins from the same buffers, and
        /// name the first op whose output differs past the tolerance: its kernel, buffer,
        /// worst element and both values
        #[arg(long)]
        locate: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run the shared benchmark workloads (B1 matmul, B2 MLP throughput, B3 tiny-MLP latency)
    Bench {
        #[arg(long, value_enum, default_value_t)]
        device: DeviceChoice,
        /// Only these workloads (B1, B2, B3); repeatable
        #[arg(long)]
        only: Vec<String>,
        /// B1 matrix sizes, comma-separated [default: 256,512,1024,2048 (+4096 on a GPU)]
        #[arg(long, value_delimiter = ',')]
        sizes: Option<Vec<usize>>,
        /// The adapter's fp32 peak in GFLOP/s, for B1's fraction of peak
        #[arg(long)]
        peak_gflops: Option<f64>,
        /// The directory of B2's MNIST training files (an error when they cannot be read)
        /// [default: ../shared/data/mnist if it holds them, else synthetic data]
        #[arg(long)]
        mnist: Option<PathBuf>,
        /// One JSON document instead of RESULT lines and a table
        #[arg(long)]
        json: bool,
        /// After B2 and B3, time each kernel of one training step on its own (GPU only)
        #[arg(long)]
        profile: bool,
        /// Also time B2's epoch with every Nth step replayed on the CPU path (train
        /// --shadow-check N) against the same epoch without, and report the overhead
        #[arg(long)]
        shadow_check: Option<usize>,
        /// Run the training workloads (B2, B3) in this determinism mode: default or strict
        /// (train --deterministic) [default: default]
        #[arg(long)]
        deterministic: Option<String>,
    },
    /// List the adapters wgpu can see
    Devices {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let process_start = std::time::Instant::now();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train {
            options,
            config,
            device,
            devices,
            overlap,
            distributed,
            out,
            resume,
            json,
            stop_after,
        } => cli::train::run(cli::train::TrainCommand {
            options,
            config,
            device,
            devices,
            overlap: if overlap {
                soma::parallel::Overlap::PerLayer
            } else {
                soma::parallel::Overlap::Off
            },
            distributed,
            out,
            resume,
            json,
            stop_after,
        }),
        Command::Eval {
            model,
            data,
            device,
            json,
        } => cli::eval::run(cli::eval::EvalCommand {
            model,
            data,
            device,
            json,
        }),
        Command::Predict {
            model,
            input,
            output,
            drop_column,
            by_position,
            device,
        } => cli::predict::run(cli::predict::PredictCommand {
            model,
            input,
            output,
            drop_column,
            by_position,
            device,
        }),
        Command::Export {
            model,
            format,
            output,
            fold_scaling,
        } => cli::export::run(cli::export::ExportCommand {
            model,
            format,
            output,
            fold_scaling,
        }),
        Command::Check {
            options,
            steps,
            tolerance,
            locate,
            json,
        } => cli::check::run(cli::check::CheckCommand {
            options,
            steps,
            tolerance,
            locate,
            json,
        }),
        Command::Bench {
            device,
            only,
            sizes,
            peak_gflops,
            mnist,
            json,
            profile,
            shadow_check,
            deterministic,
        } => cli::bench::run(cli::bench::BenchCommand {
            device,
            only,
            sizes,
            peak_gflops,
            mnist,
            json,
            profile,
            shadow_check,
            deterministic,
            process_start,
        }),
        Command::Devices { json } => cli::devices::run(json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
