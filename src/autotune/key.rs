//! The autotune cache's key: the adapter, its driver, soma's version and a hash of every text
//! a cached choice measured (the shader files, the generated kernels and the generators that
//! write them), so that a change to any kernel measures again instead of trusting an old
//! choice.

use std::borrow::Cow;
use std::sync::OnceLock;

use crate::gpu::{AdapterSummary, Gpu};
use crate::kernels;
use crate::math;
use crate::ops::fused_mlp::{self, MlpLayer, MlpShape};
use crate::ops::Loss;
use crate::ops::{Activation, Kernel};

/// What the cache is keyed by: the adapter, its driver, soma's version and a hash of every
/// kernel text a cached choice measured ([`key_sources`]).
pub fn adapter_key(gpu: &Gpu) -> String {
    key_for(gpu.adapter())
}

fn key_for(a: &AdapterSummary) -> String {
    format!(
        "{} | {:?} | {} {} | soma {} | kernels {:016x}",
        a.name,
        a.backend,
        a.driver,
        a.driver_info,
        env!("CARGO_PKG_VERSION"),
        kernels_hash()
    )
}

/// The generators of WGSL, as Rust source: the fused pass is generated per network, so no
/// finite set of its outputs covers every change to it; hashing the generators' own text
/// does (a change to a comment there costs one round of measurements, nothing more).
const GENERATORS: &[(&str, &str)] = &[
    (
        "src/ops/matmul/tiled.rs",
        include_str!("../ops/matmul/tiled.rs"),
    ),
    (
        "src/ops/matmul/workgroup.rs",
        include_str!("../ops/matmul/workgroup.rs"),
    ),
    (
        "src/ops/matmul/coop.rs",
        include_str!("../ops/matmul/coop.rs"),
    ),
    (
        "src/ops/fused_mlp/source.rs",
        include_str!("../ops/fused_mlp/source.rs"),
    ),
    (
        "src/ops/fused_mlp/mod.rs",
        include_str!("../ops/fused_mlp/mod.rs"),
    ),
];

/// The network whose fused pass stands for every network in the key: two layers, a leaky
/// ReLU (a slope) with a bias, and an output layer without one.
fn representative_mlp() -> Option<MlpShape> {
    let layers = [
        MlpLayer {
            inputs: 3,
            outputs: 8,
            kind: Activation::LeakyRelu { slope: 0.1 }.code(),
            slope: 0.1,
            weight_at: 0,
            bias_at: Some(24),
        },
        MlpLayer {
            inputs: 8,
            outputs: 2,
            kind: Activation::Identity.code(),
            slope: 0.0,
            weight_at: 32,
            bias_at: None,
        },
    ];
    MlpShape::new(&layers, 48)
}

/// Every text a cached choice depends on, by name, which [`adapter_key`] hashes: a cached
/// choice is a measurement of kernels, and a change to any of them must measure again.
/// - every shader file (`kernels::SHADERS`): the naive and blocked products, and the
///   op-by-op kernels the fused pass is timed against; and the preludes before them;
/// - every generated kernel of [`Kernel::all`] under its entry point: every tile of every
///   form and epilogue (the product a tile runs and the fused layers that run on the tile
///   chosen for it);
/// - the generators' source texts (`src/ops/matmul/tiled.rs`, `src/ops/matmul/workgroup.rs`,
///   `src/ops/fused_mlp/*.rs`);
/// - the fused pass of a representative network in every form (tile rows, rows per
///   invocation, staged, gathering, loss).
///
/// How the executor records its steps is Rust code outside these texts; the soma version
/// in the key stands for it.
pub fn key_sources() -> Vec<(String, Cow<'static, str>)> {
    let mut sources: Vec<(String, Cow<'static, str>)> = kernels::SHADERS
        .iter()
        .map(|s| (s.file.to_string(), Cow::Borrowed(s.source)))
        .collect();
    // The preludes of the routines the kernels call (`Math::source`).
    for (file, text) in [
        ("math_native.wgsl", math::NATIVE_WGSL),
        ("math_vec4.wgsl", math::VEC4_WGSL),
        ("math_strict.wgsl", math::STRICT_WGSL),
    ] {
        sources.push((file.to_string(), Cow::Borrowed(text)));
    }
    for k in Kernel::all() {
        let spec = k.spec();
        let generated = !kernels::SHADERS.iter().any(|s| s.file == spec.shader.file);
        if generated {
            sources.push((spec.entry.to_string(), Cow::Borrowed(spec.shader.source)));
        }
    }
    sources.extend(
        GENERATORS
            .iter()
            .map(|&(file, text)| (file.to_string(), Cow::Borrowed(text))),
    );
    if let Some(mlp) = representative_mlp() {
        for tile_rows in fused_mlp::TILE_ROWS {
            for rows in [1, 2, 4, 8] {
                for staged in [false, true] {
                    for gather in [false, true] {
                        for loss in [
                            Loss::Mse,
                            Loss::BinaryCrossEntropy,
                            Loss::SoftmaxCrossEntropy,
                        ] {
                            let shape = mlp
                                .with_tile_rows(tile_rows)
                                .with_rows_per_invocation(rows)
                                .with_staged(staged)
                                .with_gather(gather)
                                .with_loss(loss);
                            sources.push((
                                format!(
                                    "fused pass of {}: t{tile_rows} r{rows} staged {staged} \
                                     gather {gather}",
                                    shape.name()
                                ),
                                Cow::Owned(fused_mlp::source(shape)),
                            ));
                        }
                    }
                }
            }
        }
    }
    sources
}

/// FNV-1a over each source's name, length and text (so that no two lists hash alike by
/// moving text from one entry to the next).
fn hash_sources(sources: &[(String, Cow<'_, str>)]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= b as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, text) in sources {
        feed(name.as_bytes());
        feed(&(text.len() as u64).to_le_bytes());
        feed(text.as_bytes());
    }
    hash
}

/// The hash of [`key_sources`], computed once per process.
fn kernels_hash() -> u64 {
    static HASH: OnceLock<u64> = OnceLock::new();
    *HASH.get_or_init(|| hash_sources(&key_sources()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::{tiled, TILES};

    fn text_of<'a>(sources: &'a [(String, Cow<'static, str>)], name: &str) -> Option<&'a str> {
        sources
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_ref())
    }

    #[test]
    fn the_key_covers_every_shader_file_generated_kernel_and_generator() {
        let sources = key_sources();
        let names: Vec<&str> = sources.iter().map(|(n, _)| n.as_str()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a name twice: {names:?}");

        for s in kernels::SHADERS {
            assert_eq!(text_of(&sources, s.file), Some(s.source), "{}", s.file);
        }
        // Every tile of every form and epilogue, as the generator writes it.
        let mut tiles = 0;
        for k in Kernel::all() {
            if let Kernel::MatmulTile(form, tile, epilogue) = k {
                let (source, entry) = tiled::generated(form, tile, epilogue);
                assert_eq!(text_of(&sources, entry), Some(source), "{entry}");
                tiles += 1;
            }
        }
        assert!(tiles >= 3 * TILES.len(), "{tiles} tiles");
        // Every file of src/ that writes a WGSL entry point is a generator the key holds,
        // with its text as built.
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut writers = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|x| x == "rs")
                    && path != src.join("autotune").join("key.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    // Kernels written by a file's tests are not dispatched by soma.
                    let built = text.split("#[cfg(test)]").next().unwrap_or_default();
                    if built.contains("@compute") {
                        let rel = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
                        writers.push((rel.to_string_lossy().into_owned(), text));
                    }
                }
            }
        }
        assert!(writers.len() >= 2, "{writers:?}");
        for (file, text) in &writers {
            assert_eq!(
                text_of(&sources, file),
                Some(text.as_str()),
                "{file} writes WGSL and is not hashed as it is"
            );
        }
        // The fused pass in every form: 2 tile heights x 4 rows per invocation x staged x
        // gathering x loss, each the generator's output for the representative network.
        let mlp = representative_mlp().expect("the representative network fits");
        let fused: Vec<&(String, Cow<'static, str>)> = sources
            .iter()
            .filter(|(n, _)| n.starts_with("fused pass"))
            .collect();
        assert_eq!(fused.len(), 2 * 4 * 2 * 2 * 3);
        let t64_r8_staged_gather_softmax = fused_mlp::source(
            mlp.with_tile_rows(64)
                .with_rows_per_invocation(8)
                .with_staged(true)
                .with_gather(true)
                .with_loss(Loss::SoftmaxCrossEntropy),
        );
        assert!(fused
            .iter()
            .any(|(_, t)| *t == t64_r8_staged_gather_softmax));
    }

    #[test]
    fn a_change_to_any_source_changes_the_key() {
        let sources = key_sources();
        let base = hash_sources(&sources);
        assert_eq!(base, kernels_hash());
        for i in 0..sources.len() {
            let mut changed = sources.clone();
            changed[i].1.to_mut().push(' ');
            assert_ne!(hash_sources(&changed), base, "{}", sources[i].0);
        }
        // Text moved from one source to the next is a change too.
        let mut moved = sources.clone();
        let c = moved[0].1.to_mut().pop().unwrap();
        moved[1].1.to_mut().insert(0, c);
        assert_ne!(hash_sources(&moved), base);

        let adapter = AdapterSummary {
            name: "llvmpipe (LLVM 15.0.7, 256 bits)".into(),
            backend: wgpu::Backend::Vulkan,
            device_type: wgpu::DeviceType::Cpu,
            driver: "llvmpipe".into(),
            driver_info: "Mesa".into(),
            max_storage_buffer_binding_size: 1 << 27,
            max_buffer_size: 1 << 30,
            max_compute_workgroup_storage_size: 1 << 15,
            max_compute_invocations_per_workgroup: 1024,
            timestamp_queries: false,
        };
        let key = key_for(&adapter);
        assert!(key.ends_with(&format!("kernels {base:016x}")), "{key}");
        assert!(
            key.starts_with("llvmpipe (LLVM 15.0.7, 256 bits) | Vulkan"),
            "{key}"
        );
    }
}
