//! Shared test helpers: the one GPU of a test binary (or SKIPPED), seeded inputs, and the
//! abs + rel comparison that names the worst index and never lets NaN pass.
#![allow(dead_code)]

pub mod bin;

use std::sync::OnceLock;

use soma::Gpu;

/// The test binary's GPU, opened once. `None` (after printing SKIPPED) when no adapter
/// exists; a panic instead when `SOMA_REQUIRE_GPU=1`, so CI cannot pass on skips.
pub fn gpu(test: &str) -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    let _ = env_logger::builder().is_test(true).try_init();
    match GPU.get_or_init(|| Gpu::new().map_err(|e| e.to_string())) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("SOMA_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("{test}: SOMA_REQUIRE_GPU=1 but no GPU: {e}");
            }
            // Written past the test harness's capture, so a skip is seen even when it passes.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {e}");
            None
        }
    }
}

/// The register tiles that `gpu` runs: every one, except through GL, where the tuner offers
/// none of more than `GL_TILE_OUTPUTS` outputs (llvmpipe's GL compiler takes from 10 s to
/// minutes over each bigger one; `soma::autotune::GL_TILE_OUTPUTS` says more).
pub fn tiles_for(gpu: &Gpu) -> Vec<soma::ops::matmul::Tile> {
    let gl = gpu.adapter().backend == wgpu::Backend::Gl;
    soma::ops::matmul::TILES
        .iter()
        .copied()
        .filter(|t| !gl || t.outputs() <= soma::autotune::GL_TILE_OUTPUTS)
        .collect()
}

/// The workgroup tiles to test on `gpu`: every one, except through GL, where only the
/// smallest. The tuner offers them on hardware adapters only, and llvmpipe's GL compiler
/// takes 2 s over each form of the smallest, 7 to 11 s of the 64 x 64 ones with K slices of 8,
/// 34 to 54 s with slices of 16 and more than 90 s of the 128 x 128 ones (cold, 2 cores).
pub fn wg_tiles_for(gpu: &Gpu) -> Vec<soma::ops::matmul::WgTile> {
    let gl = gpu.adapter().backend == wgpu::Backend::Gl;
    let all = soma::ops::matmul::WG_TILES;
    all[..if gl { 1 } else { all.len() }].to_vec()
}

/// Whether `gpu` is Mesa's llvmpipe (lavapipe through Vulkan, or through GL): the CPU
/// adapter CI runs on. Its shader compiler keeps a multiply and an add apart (no fused
/// multiply-add), so a kernel that sums in its CPU twin's order gives the twin's bits.
pub fn is_llvmpipe(gpu: &Gpu) -> bool {
    let a = gpu.adapter();
    a.device_type == wgpu::DeviceType::Cpu && a.name.contains("llvmpipe")
}

/// A small seeded generator for test inputs (splitmix64), independent of the library's RNG so
/// that a change there cannot hide a change here.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
        lo + (hi - lo) * u
    }
    pub fn vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// Asserts `|got - want| <= atol + rtol * |want|` element-wise. On failure it names the
/// label, the worst index, and the first few pairs. NaN or inf on either side never passes
/// unless both sides are the same infinity.
pub fn assert_close(label: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{label}: length {} vs {}",
        got.len(),
        want.len()
    );
    let mut worst: Option<(usize, f32)> = None;
    let mut bad = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if g.is_finite() && w.is_finite() {
            (g - w).abs() <= atol + rtol * w.abs()
        } else {
            g.is_infinite() && g == w
        };
        if !ok {
            bad += 1;
            let excess = if g.is_finite() && w.is_finite() {
                (g - w).abs() - (atol + rtol * w.abs())
            } else {
                f32::INFINITY
            };
            if worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((i, excess));
            }
        }
    }
    if let Some((i, _)) = worst {
        let pairs: Vec<String> = got
            .iter()
            .zip(want)
            .take(6)
            .map(|(g, w)| format!("({g:e} vs {w:e})"))
            .collect();
        panic!(
            "{label}: {bad} of {} values outside atol {atol:e} + rtol {rtol:e}; worst at index {i}: got {:e}, want {:e}; first pairs (got vs want): {}",
            got.len(),
            got[i],
            want[i],
            pairs.join(" ")
        );
    }
}

/// A `Gpu` of the test's own, for tests that change per-`Gpu` settings such as the matmul
/// variant (on the shared one they would race with the tests running beside them). SKIPPED
/// and `SOMA_REQUIRE_GPU` as for [`gpu`].
pub fn own_gpu(test: &str) -> Option<Gpu> {
    gpu(test)?;
    Some(Gpu::new().expect("a second device on the adapter that opened the first"))
}

/// Kernels with the default tuning on the test binary's GPU, shared by its tests (SKIPPED
/// and `SOMA_REQUIRE_GPU` as for [`gpu`]).
pub fn kernels(test: &str) -> Option<&'static soma::Kernels<'static>> {
    static KERNELS: OnceLock<soma::Kernels<'static>> = OnceLock::new();
    let gpu = gpu(test)?;
    Some(KERNELS.get_or_init(|| soma::Kernels::new(gpu, soma::Tuning::default())))
}

/// Kernels of the test's own on the shared GPU, with `tuning` (a matmul variant, fusion off):
/// their choices and pipelines are theirs, so tests running beside them are not affected.
pub fn tuned(test: &str, tuning: soma::Tuning) -> Option<soma::Kernels<'static>> {
    Some(soma::Kernels::new(gpu(test)?, tuning))
}
