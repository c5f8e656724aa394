//! Matmul autotuning: which kernel runs each product on this adapter.
//!
//! The first time a `Gpu` builds a product of a given form and size, soma times the blocked
//! kernel and every generated tile that fits the shape (`kernels/tiled.rs`) on scratch
//! buffers of that size, keeps the fastest, and writes the choice to a cache file keyed by
//! adapter, driver, soma version and a hash of the kernel sources, so the next process starts
//! at once. Products under [`TUNE_MIN_FLOPS`] are not worth a measurement and take the
//! blocked kernel. Every candidate computes the same sums in the same order, so the choice
//! changes speed, not results.
//!
//! - Cache file: `$SOMA_CACHE_DIR/autotune.json`, else `$XDG_CACHE_HOME/soma/…`, else
//!   `$HOME/.cache/soma/…`; without any of those the choices live for the process only.
//! - `SOMA_AUTOTUNE=off` skips measuring (blocked everywhere unless a choice is cached);
//!   `SOMA_MATMUL=naive|blocked|<tile>` bypasses the tuner altogether.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::{self, Accumulate, MatmulChoice, MatmulForm, MATMUL, TILES};
use crate::params::MatmulParams;
use crate::tensor::GpuTensor;

/// Products below 2^22 floating-point operations (a 128 x 128 x 128 product) take the
/// blocked kernel without measuring: their time is mostly launch overhead.
pub const TUNE_MIN_FLOPS: f64 = (1u64 << 22) as f64;

/// Timed runs per candidate (after one untimed run that also compiles it); the minimum counts.
const TIMED_RUNS: usize = 3;

/// A candidate replaces the current best only when it is at least this much faster, so that
/// noise does not pick a bigger tile for nothing.
const MARGIN: f64 = 0.97;

/// A tile this much slower than the best smaller tile ends the search through bigger ones.
const PRUNE: f64 = 1.15;

#[derive(Default, Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    /// adapter key -> ("nn 1024x1024x1024" -> "r64c32w8x1")
    adapters: BTreeMap<String, BTreeMap<String, String>>,
}

const FORMAT: u32 = 1;

/// The tuner's state in a `Gpu`: choices made or loaded so far.
#[derive(Debug, Default)]
pub struct Autotuner {
    loaded: bool,
    choices: HashMap<String, MatmulChoice>,
    measured: u64,
}

impl Autotuner {
    /// How many products this process has measured (not loaded from the cache).
    pub fn measured(&self) -> u64 {
        self.measured
    }
}

/// The cache file, if any directory for it is known.
pub fn cache_path() -> Option<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("SOMA_CACHE_DIR") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(d).join("soma")
    } else {
        PathBuf::from(std::env::var_os("HOME")?)
            .join(".cache")
            .join("soma")
    };
    Some(dir.join("autotune.json"))
}

/// What the cache is keyed by: the adapter, its driver, soma's version and the kernels.
pub fn adapter_key(gpu: &Gpu) -> String {
    let a = gpu.adapter();
    // FNV-1a over the matmul sources: a changed kernel invalidates old measurements.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |s: &str| {
        for b in s.bytes() {
            hash ^= b as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(MATMUL.source);
    for form in MatmulForm::ALL {
        for &t in TILES {
            feed(kernels::tiled::generated(form, t, kernels::Epilogue::Store).0);
        }
    }
    format!(
        "{} | {} | {} {} | soma {} | kernels {hash:016x}",
        a.name,
        a.backend,
        a.driver,
        a.driver_info,
        env!("CARGO_PKG_VERSION")
    )
}

fn shape_key(form: MatmulForm, m: usize, n: usize, k: usize) -> String {
    format!("{} {m}x{n}x{k}", form.name())
}

fn read_cache() -> CacheFile {
    let Some(path) = cache_path() else {
        return CacheFile::default();
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return CacheFile::default();
    };
    match serde_json::from_str::<CacheFile>(&text) {
        Ok(c) if c.format == FORMAT => c,
        Ok(_) | Err(_) => {
            log::warn!(
                "ignoring the autotune cache {} (unreadable or another format)",
                path.display()
            );
            CacheFile::default()
        }
    }
}

/// Adds one choice to the cache file (merged with what other processes wrote meanwhile).
fn save_choice(key: &str, shape: &str, choice: MatmulChoice) {
    let Some(path) = cache_path() else {
        return;
    };
    let mut file = read_cache();
    file.format = FORMAT;
    file.adapters
        .entry(key.to_string())
        .or_default()
        .insert(shape.to_string(), choice.name());
    let saved = serde_json::to_vec_pretty(&file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            crate::checkpoint::write_atomic(&path, &bytes).map_err(|e| e.to_string())
        });
    if let Err(e) = saved {
        log::warn!("could not write the autotune cache {}: {e}", path.display());
    }
}

/// Tiles that would leave fewer workgroups than this are not tried: too little parallelism
/// for any adapter to win with, and (big tiles being the slow ones to compile) costly to try.
pub const MIN_WORKGROUPS: u32 = 4;

/// The candidates for one product: blocked, then every tile that fits and leaves at least
/// [`MIN_WORKGROUPS`] workgroups, smallest first.
pub fn candidates(
    form: MatmulForm,
    m: usize,
    n: usize,
    k: usize,
    acc: Accumulate,
) -> Vec<MatmulChoice> {
    let mut c = vec![MatmulChoice::Blocked];
    c.extend(
        TILES
            .iter()
            .filter(|t| t.fits(form, m, n, k, acc))
            .filter(|t| {
                let [x, y, _] = t.grid(m, n);
                x * y >= MIN_WORKGROUPS
            })
            .map(|&t| MatmulChoice::Tile(t)),
    );
    c
}

/// The kernel for one product under `MatmulVariant::Tuned`.
pub fn choose(
    gpu: &Gpu,
    form: MatmulForm,
    m: usize,
    n: usize,
    k: usize,
    acc: Accumulate,
) -> Result<MatmulChoice> {
    let cands = candidates(form, m, n, k, acc);
    let flops = 2.0 * m as f64 * n as f64 * k as f64;
    if cands.len() == 1 || flops < TUNE_MIN_FLOPS {
        return Ok(MatmulChoice::Blocked);
    }
    let shape = shape_key(form, m, n, k);
    let mut tuner = gpu.autotuner();
    if !tuner.loaded {
        tuner.loaded = true;
        let key = adapter_key(gpu);
        if let Some(entries) = read_cache().adapters.remove(&key) {
            for (s, name) in entries {
                if let Some(c) = MatmulChoice::parse(&name) {
                    tuner.choices.insert(s, c);
                }
            }
        }
    }
    if let Some(&c) = tuner.choices.get(&shape) {
        // A cached choice that is no longer a candidate (the candidate rules changed) is
        // measured again below rather than trusted.
        if cands.contains(&c) {
            return Ok(c);
        }
    }
    if std::env::var("SOMA_AUTOTUNE").is_ok_and(|v| v == "off" || v == "0") {
        return Ok(MatmulChoice::Blocked);
    }
    let (best, report) = measure(gpu, form, m, n, k, &cands)?;
    log::info!("autotune {shape}: {} ({report})", best.name());
    tuner.measured += 1;
    tuner.choices.insert(shape.clone(), best);
    save_choice(&adapter_key(gpu), &shape, best);
    Ok(best)
}

/// Times every candidate on zero-filled scratch buffers of the product's size.
fn measure(
    gpu: &Gpu,
    form: MatmulForm,
    m: usize,
    n: usize,
    k: usize,
    cands: &[MatmulChoice],
) -> Result<(MatmulChoice, String)> {
    let (a_shape, b_shape) = match form {
        MatmulForm::Nt => ([m, k], [n, k]),
        MatmulForm::Nn => ([m, k], [k, n]),
        MatmulForm::Tn => ([k, m], [k, n]),
    };
    let a = GpuTensor::zeros(gpu, "autotune a", &a_shape)?;
    let b = GpuTensor::zeros(gpu, "autotune b", &b_shape)?;
    let out = GpuTensor::zeros(gpu, "autotune out", &[m, n])?;
    let p = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        accumulate: 0,
    };
    let mut best: Option<(MatmulChoice, f64)> = None;
    // The fastest tile so far and the time of the last one tried.
    let mut best_tile = f64::INFINITY;
    let mut last_tile = 0.0;
    let mut report = Vec::new();
    for &c in cands {
        // Tiles come smallest first: once one is clearly slower than a smaller one, the
        // bigger ones (slower to compile, too) are not tried.
        if matches!(c, MatmulChoice::Tile(_)) && last_tile > PRUNE * best_tile {
            report.push(format!("{} and bigger not tried", c.name()));
            break;
        }
        let d = kernels::matmul_dispatch(gpu, form, c, &out, &a, &b, &p)?;
        // The first run compiles the pipeline on drivers that compile lazily.
        kernels::run(gpu, &[&d])?;
        gpu.wait()?;
        let mut t_min = f64::INFINITY;
        for _ in 0..TIMED_RUNS {
            let t = Instant::now();
            kernels::run(gpu, &[&d])?;
            gpu.wait()?;
            t_min = t_min.min(t.elapsed().as_secs_f64());
            // Far behind the best: no need for more samples.
            if best.is_some_and(|(_, b)| t_min > 2.0 * b) {
                break;
            }
        }
        report.push(format!("{} {:.3} ms", c.name(), t_min * 1e3));
        if matches!(c, MatmulChoice::Tile(_)) {
            last_tile = t_min;
            best_tile = best_tile.min(t_min);
        }
        if best.is_none_or(|(_, b)| t_min < MARGIN * b) {
            best = Some((c, t_min));
        }
    }
    let (choice, _) = best.unwrap_or((MatmulChoice::Blocked, 0.0));
    Ok((choice, report.join(", ")))
}
