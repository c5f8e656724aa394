//! Matmul autotuning: which kernel runs each product on this adapter.
//!
//! The first time an executor on a [`Kernels`] meets a product of a given form and size, soma
//! times the blocked kernel and the generated tiles that suit the adapter ([`candidates`]:
//! register tiles, `ops/matmul/tiled.rs`, on a CPU adapter; workgroup tiles,
//! `ops/matmul/workgroup.rs`, and the small register tiles on a hardware GPU) on scratch
//! buffers of that size, keeps the fastest, and writes the choice to a cache file keyed by
//! adapter, driver, soma version and a hash of every kernel text a choice measured (the
//! shader files, the generated kernels and their generators: [`key_sources`]), so the next
//! process starts at once. Products under [`TUNE_MIN_FLOPS`] are not worth a measurement
//! and take the blocked kernel. Every candidate computes the same sums in the same order,
//! so the choice changes speed, not results.
//!
//! - Cache file: `$SOMA_CACHE_DIR/autotune.json`, else `$XDG_CACHE_HOME/soma/…`, else
//!   `$HOME/.cache/soma/…`; without any of those the choices live for the process only.
//! - `Tuning::autotune` off (`SOMA_AUTOTUNE=off` for the `soma` command) skips measuring
//!   (blocked everywhere unless a choice is cached); `Tuning::matmul` other than `Tuned`
//!   (`SOMA_MATMUL=naive|blocked|<tile>|<workgroup tile>`) bypasses the tuner altogether.
//!
//! The choices live in the `Kernels`' [`TunerState`]; the executor calls [`choose`] for
//! every product of its plan before it records, and the recorders only look them up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::{self, Dispatch};
use crate::ops::matmul::{
    self, choice_key, MatmulChoice, MatmulForm, MatmulParams, MatmulVariant, TILES, WG_TILES,
};
use crate::ops::Accumulate;
use crate::ops::{Kernels, TunerState};
use crate::tensor::GpuTensor;

mod key;

pub use key::{adapter_key, key_sources};

/// Products below 2^22 floating-point operations (a 128 x 128 x 128 product) take the
/// blocked kernel without measuring: their time is mostly launch overhead.
pub const TUNE_MIN_FLOPS: f64 = (1u64 << 22) as f64;

/// Timed runs per candidate, in interleaved passes (after one untimed run that also compiles
/// it); the minimum counts.
const TIMED_RUNS: usize = 3;

/// The first candidate (blocked, then tiles from small to big) within this factor of the
/// fastest is chosen, so that noise does not pick a bigger tile for nothing.
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
fn save_entry(key: &str, shape: &str, choice: &str) {
    let Some(path) = cache_path() else {
        return;
    };
    let mut file = read_cache();
    file.format = FORMAT;
    file.adapters
        .entry(key.to_string())
        .or_default()
        .insert(shape.to_string(), choice.to_string());
    let saved = serde_json::to_vec_pretty(&file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            crate::fs::write_atomic(&path, &bytes).map_err(|e| e.to_string())
        });
    if let Err(e) = saved {
        log::warn!("could not write the autotune cache {}: {e}", path.display());
    }
}

/// Tiles that would leave fewer workgroups than this are not tried: too little parallelism
/// for any adapter to win with.
pub const MIN_WORKGROUPS: u32 = 2;

/// Big tiles (at least [`BIG_TILE_OUTPUTS`] outputs per invocation) need this many: they are
/// the ones llvmpipe takes seconds to compile, not worth trying where they cannot spread.
pub const MIN_WORKGROUPS_BIG: u32 = 4;

/// Outputs per invocation from which a tile counts as big.
pub const BIG_TILE_OUTPUTS: u32 = 1024;

/// Register tiles of at most this many outputs per invocation are tried on hardware
/// adapters too (the bigger ones suit only a software rasteriser's wide vectors).
pub const HARDWARE_TILE_OUTPUTS: u32 = 64;

/// Register tiles of at most this many outputs per invocation are tried through the GL
/// backend. llvmpipe compiles a kernel on its first dispatch, and through GL (naga's GLSL,
/// Mesa's GLSL compiler) the bigger tiles take far longer than through Vulkan: on a 2-core
/// host with Mesa 22.3, cold, 256 outputs took about 2 s, 1024 took 10 to 17 s and 2048
/// took 34 to 90 s, where lavapipe compiles each in a few seconds.
pub const GL_TILE_OUTPUTS: u32 = 256;

/// The candidates for one product on an adapter of type `device` through `backend`. On a
/// CPU adapter (lavapipe): blocked, then every register tile that fits and leaves enough
/// workgroups ([`MIN_WORKGROUPS`], [`MIN_WORKGROUPS_BIG`]), smallest first. On any other (a
/// hardware GPU): blocked, then the workgroup tiles of [`WG_TILES`] that leave
/// [`MIN_WORKGROUPS`], then the register tiles of at most [`HARDWARE_TILE_OUTPUTS`] outputs
/// that fit. Through GL, no register tile of more than [`GL_TILE_OUTPUTS`] outputs.
pub fn candidates(
    form: MatmulForm,
    m: usize,
    n: usize,
    k: usize,
    acc: Accumulate,
    device: wgpu::DeviceType,
    backend: wgpu::Backend,
) -> Vec<MatmulChoice> {
    let hardware = match device {
        wgpu::DeviceType::Cpu => false,
        wgpu::DeviceType::DiscreteGpu
        | wgpu::DeviceType::IntegratedGpu
        | wgpu::DeviceType::VirtualGpu
        | wgpu::DeviceType::Other => true,
    };
    let mut c = vec![MatmulChoice::Blocked];
    if hardware {
        c.extend(
            WG_TILES
                .iter()
                .filter(|t| {
                    let [x, y, _] = t.grid(m, n);
                    x * y >= MIN_WORKGROUPS
                })
                .map(|&t| MatmulChoice::Workgroup(t)),
        );
    }
    c.extend(
        TILES
            .iter()
            .filter(|t| t.fits(form, m, n, k, acc))
            .filter(|t| !hardware || t.outputs() <= HARDWARE_TILE_OUTPUTS)
            .filter(|t| backend != wgpu::Backend::Gl || t.outputs() <= GL_TILE_OUTPUTS)
            .filter(|t| {
                let [x, y, _] = t.grid(m, n);
                let big = t.outputs() >= BIG_TILE_OUTPUTS;
                x * y
                    >= if big {
                        MIN_WORKGROUPS_BIG
                    } else {
                        MIN_WORKGROUPS
                    }
            })
            .map(|&t| MatmulChoice::Tile(t)),
    );
    c
}

/// This adapter's cache key, reading its cached choices into `tuner` the first time.
fn loaded_key(gpu: &Gpu, tuner: &mut TunerState) -> String {
    if let Some(key) = &tuner.key {
        return key.clone();
    }
    let key = adapter_key(gpu);
    if let Some(entries) = read_cache().adapters.remove(&key) {
        tuner.choices.extend(entries);
    }
    tuner.key = Some(key.clone());
    key
}

/// A choice between named alternatives other than matmul kernels (the fused MLP pass
/// against the op-by-op kernels), cached like the matmul choices under `shape`. Where no
/// choice among `valid` is cached, `measure` times the alternatives and returns the winner
/// and a report for the log. `None` with `Tuning::autotune` off and nothing cached.
pub fn choose_named(
    kernels: &Kernels,
    shape: &str,
    valid: &[&str],
    measure: impl FnOnce() -> Result<(String, String)>,
) -> Result<Option<String>> {
    let gpu = kernels.gpu();
    let key = {
        let mut tuner = kernels.tuner();
        let key = loaded_key(gpu, &mut tuner);
        if let Some(c) = tuner.choices.get(shape) {
            if valid.contains(&c.as_str()) {
                return Ok(Some(c.clone()));
            }
        }
        key
    };
    if !kernels.tuning().autotune {
        return Ok(None);
    }
    // Measured without holding the tuner: building the alternatives may tune products.
    let (best, report) = measure()?;
    log::info!("autotune {shape}: {best} ({report})");
    let mut tuner = kernels.tuner();
    tuner.measured += 1;
    tuner.choices.insert(shape.to_string(), best.clone());
    save_entry(&key, shape, &best);
    Ok(Some(best))
}

/// Timed passes over whole training passes (`time_lists`): more than for one product, since
/// the candidates are few and each run is short, and a noisy host must not decide.
const LIST_RUNS: usize = 5;

/// Wall time of `dispatches` in one submission, fastest of `LIST_RUNS` after an untimed
/// run that also compiles them, for each list, in interleaved passes.
pub fn time_lists(gpu: &Gpu, lists: &[Vec<&Dispatch>]) -> Result<Vec<f64>> {
    let mut best = vec![f64::INFINITY; lists.len()];
    for list in lists {
        kernels::run(gpu, list)?;
    }
    gpu.wait()?;
    for _ in 0..LIST_RUNS {
        for (list, b) in lists.iter().zip(best.iter_mut()) {
            let t = Instant::now();
            kernels::run(gpu, list)?;
            gpu.wait()?;
            *b = b.min(t.elapsed().as_secs_f64());
        }
    }
    Ok(best)
}

/// The kernel for one product under `MatmulVariant::Tuned`: the cached choice, or the
/// fastest candidate measured now (and cached); kept in `kernels`' tuner state, where the
/// recorders look it up.
pub fn choose(
    kernels: &Kernels,
    form: MatmulForm,
    m: usize,
    n: usize,
    k: usize,
    acc: Accumulate,
) -> Result<MatmulChoice> {
    let adapter = kernels.gpu().adapter();
    let cands = candidates(form, m, n, k, acc, adapter.device_type, adapter.backend);
    let flops = 2.0 * m as f64 * n as f64 * k as f64;
    if cands.len() == 1 || flops < TUNE_MIN_FLOPS {
        return Ok(MatmulChoice::Blocked);
    }
    let shape = choice_key(kernels, form, m, n, k);
    let mut tuner = kernels.tuner();
    let key = loaded_key(kernels.gpu(), &mut tuner);
    if let Some(c) = tuner
        .choices
        .get(&shape)
        .and_then(|c| MatmulChoice::parse(c))
    {
        // A cached choice that is no longer a candidate (the candidate rules changed) is
        // measured again below rather than trusted.
        if cands.contains(&c) {
            return Ok(c);
        }
    }
    if !kernels.tuning().autotune {
        tuner.choices.remove(&shape);
        return Ok(MatmulChoice::Blocked);
    }
    let (best, report) = measure(kernels, form, m, n, k, &cands)?;
    log::info!("autotune {shape}: {} ({report})", best.name());
    tuner.measured += 1;
    tuner.choices.insert(shape.clone(), best.name());
    save_entry(&key, &shape, &best.name());
    Ok(best)
}

/// Makes the choice for one product where `kernels` tune (`MatmulVariant::Tuned`), so that
/// its recorder finds it; nothing under a fixed variant. Executors call this for every
/// product of their plan before they record.
pub fn prepare(
    kernels: &Kernels,
    form: MatmulForm,
    m: usize,
    n: usize,
    k: usize,
    acc: Accumulate,
) -> Result<()> {
    match kernels.tuning().matmul {
        MatmulVariant::Tuned => choose(kernels, form, m, n, k, acc).map(|_| ()),
        MatmulVariant::Naive
        | MatmulVariant::Blocked
        | MatmulVariant::Tile(_)
        | MatmulVariant::Workgroup(_) => Ok(()),
    }
}

/// Times every candidate on zero-filled scratch buffers of the product's size.
fn measure(
    kernels: &Kernels,
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
    let gpu = kernels.gpu();
    let a = GpuTensor::zeros(gpu, "autotune a", &a_shape)?;
    let b = GpuTensor::zeros(gpu, "autotune b", &b_shape)?;
    let out = GpuTensor::zeros(gpu, "autotune out", &[m, n])?;
    let p = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        accumulate: 0,
    };
    // First pass: each candidate compiled, run once untimed, then timed once. Tiles come
    // smallest first: once one is clearly slower than a smaller one, the bigger ones (slower
    // to compile, too) are not tried.
    let mut tried: Vec<(MatmulChoice, Dispatch, f64)> = Vec::new();
    let mut best_tile = f64::INFINITY;
    let mut last_tile = 0.0;
    let mut skipped = None;
    for &c in cands {
        if matches!(c, MatmulChoice::Tile(_)) && last_tile > PRUNE * best_tile {
            skipped = Some(c);
            break;
        }
        let d = matmul::matmul_dispatch(kernels, form, c, &out, &a, &b, &p)?;
        // The first run compiles the pipeline on drivers that compile lazily.
        kernels::run(gpu, &[&d])?;
        gpu.wait()?;
        let t = time_once(gpu, &d)?;
        if matches!(c, MatmulChoice::Tile(_)) {
            last_tile = t;
            best_tile = best_tile.min(t);
        }
        tried.push((c, d, t));
    }
    // More passes over the survivors, interleaved, so that a host that slows down for a
    // moment slows every candidate alike; each keeps its fastest run.
    for _ in 1..TIMED_RUNS {
        let best = tried.iter().map(|x| x.2).fold(f64::INFINITY, f64::min);
        for (_, d, t) in tried.iter_mut() {
            if *t <= 2.0 * best {
                *t = t.min(time_once(gpu, d)?);
            }
        }
    }
    // The first candidate within MARGIN of the fastest, so that noise does not pick a
    // bigger tile for nothing.
    let fastest = tried.iter().map(|x| x.2).fold(f64::INFINITY, f64::min);
    let choice = tried
        .iter()
        .find(|x| x.2 * MARGIN <= fastest)
        .map_or(MatmulChoice::Blocked, |x| x.0);
    let mut report: Vec<String> = tried
        .iter()
        .map(|(c, _, t)| format!("{} {:.3} ms", c.name(), t * 1e3))
        .collect();
    if let Some(c) = skipped {
        report.push(format!("{} and bigger not tried", c.name()));
    }
    Ok((choice, report.join(", ")))
}

/// Wall time of one run of `d`, submission to completion.
fn time_once(gpu: &Gpu, d: &Dispatch) -> Result<f64> {
    let t = Instant::now();
    kernels::run(gpu, &[d])?;
    gpu.wait()?;
    Ok(t.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workgroup_tiles_are_candidates_on_hardware_only() {
        let (m, n, k) = (1024, 1024, 1024);
        let form = MatmulForm::Nn;
        let acc = Accumulate::Overwrite;
        let vk = wgpu::Backend::Vulkan;
        let cpu = candidates(form, m, n, k, acc, wgpu::DeviceType::Cpu, vk);
        assert!(
            !cpu.iter().any(|c| matches!(c, MatmulChoice::Workgroup(_))),
            "{cpu:?}"
        );
        // A CPU adapter keeps blocked and every register tile that fits.
        assert_eq!(cpu[0], MatmulChoice::Blocked);
        assert_eq!(cpu.len(), 1 + TILES.len());
        for device in [
            wgpu::DeviceType::DiscreteGpu,
            wgpu::DeviceType::IntegratedGpu,
            wgpu::DeviceType::VirtualGpu,
            wgpu::DeviceType::Other,
        ] {
            let hw = candidates(form, m, n, k, acc, device, vk);
            assert_eq!(hw[0], MatmulChoice::Blocked);
            for &t in WG_TILES {
                assert!(
                    hw.contains(&MatmulChoice::Workgroup(t)),
                    "{device:?}: {hw:?}"
                );
            }
            // Only the small register tiles: the big ones suit a software rasteriser.
            assert!(hw.iter().all(|c| match c {
                MatmulChoice::Tile(t) => t.outputs() <= HARDWARE_TILE_OUTPUTS,
                MatmulChoice::Naive | MatmulChoice::Blocked | MatmulChoice::Workgroup(_) => true,
            }));
        }
        // Workgroup tiles take any shape and accumulate (no register tile fits this one),
        // as long as they leave enough workgroups (128 x 128 blocks leave one here).
        let odd = candidates(
            MatmulForm::Tn,
            120,
            70,
            41,
            Accumulate::Add,
            wgpu::DeviceType::DiscreteGpu,
            vk,
        );
        assert_eq!(
            odd,
            [
                MatmulChoice::Blocked,
                MatmulChoice::Workgroup(WG_TILES[0]),
                MatmulChoice::Workgroup(WG_TILES[1]),
                MatmulChoice::Workgroup(WG_TILES[2]),
            ]
        );
    }

    #[test]
    fn gl_keeps_the_tiles_it_compiles_quickly() {
        let (form, acc) = (MatmulForm::Nt, Accumulate::Overwrite);
        let (m, n, k) = (1024, 1024, 1024);
        let vk = candidates(
            form,
            m,
            n,
            k,
            acc,
            wgpu::DeviceType::Cpu,
            wgpu::Backend::Vulkan,
        );
        let gl = candidates(form, m, n, k, acc, wgpu::DeviceType::Cpu, wgpu::Backend::Gl);
        let big =
            |c: &MatmulChoice| matches!(c, MatmulChoice::Tile(t) if t.outputs() > GL_TILE_OUTPUTS);
        assert!(vk.iter().any(big), "{vk:?}");
        assert!(!gl.iter().any(big), "{gl:?}");
        // Everything else is the same list.
        let kept: Vec<_> = vk.iter().filter(|c| !big(c)).copied().collect();
        assert_eq!(gl, kept);
        assert!(gl.len() > 1, "{gl:?}");
    }
}
