//! The tuner's disk cache: a product measured once is not measured again by the next
//! `Kernels` (or process), a broken cache file is ignored rather than trusted, the tuned choice
//! computes what the CPU twin computes, and the fused small-MLP pass is chosen and cached
//! the same way. Runs in its own process: it points
//! `SOMA_CACHE_DIR` at a scratch directory.

mod common;

use common::{assert_close, gpu, TestRng};
use soma::kernels;
use soma::ops::matmul::{Epilogue, MatmulChoice, MatmulForm, MatmulParams, Tile};
use soma::ops::{self, Accumulate};
use soma::{autotune, cpu, GpuTensor};
use soma::{Kernels, Tuning};

#[test]
fn tuned_choice_is_cached_on_disk_and_reused() {
    let dir = std::env::temp_dir().join(format!("soma-autotune-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::env::set_var("SOMA_CACHE_DIR", &dir);
    std::env::remove_var("SOMA_MATMUL");
    std::env::remove_var("SOMA_AUTOTUNE");
    let Some(gpu) = gpu("tuned_choice_is_cached_on_disk_and_reused") else {
        return;
    };
    // Each new `Kernels` starts with an empty memory of choices, as a new process does.
    let fresh = || Kernels::new(gpu, Tuning::default());
    let first = fresh();
    // 128 x 256 x 128: 8.4 MFLOP, above the tuning threshold, whole blocks of every tile.
    let (m, k, n) = (128, 256, 128);
    let mut rng = TestRng::new(9);
    let a = rng.vec(m * k, -1.0, 1.0);
    let b = rng.vec(k * n, -1.0, 1.0);
    let product = |kn: &Kernels| {
        autotune::prepare(kn, MatmulForm::Nn, m, n, k, Accumulate::Overwrite).unwrap();
        let out = GpuTensor::zeros(gpu, "out", &[m, n]).unwrap();
        let d = ops::matmul_nn(
            kn,
            &out,
            &GpuTensor::upload(gpu, "a", &[m, k], &a).unwrap(),
            &GpuTensor::upload(gpu, "b", &[k, n], &b).unwrap(),
            Accumulate::Overwrite,
        )
        .unwrap();
        kernels::run(gpu, &[&d]).unwrap();
        (d.entry(), out.read(gpu).unwrap())
    };
    let (kernel, got) = product(&first);
    assert_eq!(
        first.tuner().measured,
        1,
        "the first Gpu measures the product"
    );
    let p = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        accumulate: 0,
    };
    let mut want = vec![0.0; m * n];
    cpu::matmul_nn(&mut want, &a, &b, &p);
    assert_close(
        "tuned matmul_nn",
        &got,
        &want,
        2.0 * k as f32 * f32::EPSILON,
        1e-6,
    );

    // The choice is in the file, under this adapter's key.
    let path = dir.join("autotune.json");
    let text = std::fs::read_to_string(&path).expect("autotune.json written");
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let key = soma::autotune::adapter_key(gpu);
    let name = file["adapters"][&key]["nn 128x128x256"]
        .as_str()
        .unwrap_or_else(|| panic!("no entry for the product in {text}"));
    let choice = MatmulChoice::parse(name).expect("a known kernel name");
    assert!(soma::autotune::candidates(
        MatmulForm::Nn,
        m,
        n,
        k,
        Accumulate::Overwrite,
        gpu.adapter().device_type,
        gpu.adapter().backend,
    )
    .contains(&choice));

    // Second kernels (as a second process would) read it instead of measuring.
    let second = fresh();
    let (kernel2, got2) = product(&second);
    assert_eq!(second.tuner().measured, 0, "the cached choice is reused");
    assert_eq!(kernel, kernel2);
    assert_eq!(got, got2);

    // A cache that is not ours is ignored (and measured over), not trusted or fatal.
    std::fs::write(&path, b"{ not json").unwrap();
    let third = fresh();
    let (_, got3) = product(&third);
    assert_eq!(third.tuner().measured, 1);
    assert_eq!(got, got3);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_ok(),
        "rewritten whole"
    );

    // A cached choice that is not a candidate for the product (64 x 32 tiles would leave 2
    // workgroups here) is measured again, not trusted and not replaced by the fallback.
    let stale = serde_json::json!({
        "format": 1,
        "adapters": { key.clone(): { "nn 128x128x256": "r64c32w8x1" } }
    });
    std::fs::write(&path, serde_json::to_vec(&stale).unwrap()).unwrap();
    let fourth = fresh();
    let (kernel4, got4) = product(&fourth);
    assert_eq!(
        fourth.tuner().measured,
        1,
        "the stale choice is measured again"
    );
    let big = soma::Kernel::MatmulTile(
        MatmulForm::Nn,
        Tile::parse("r64c32w8x1").unwrap(),
        Epilogue::Store,
    );
    assert_ne!(kernel4, big.entry_point());
    assert_eq!(got, got4);

    // The fused small-MLP pass against the op-by-op kernels: measured once for B3's network
    // at batch 1024, cached beside the matmul choices, and the next kernels train as cached.
    let data = soma::data::synthetic::b3_synthetic();
    let net = soma::Network::mlp(
        &[2, 64, 64, 1],
        soma::Activation::Relu,
        soma::Activation::Identity,
    )
    .unwrap();
    let model = soma::Model::new(net, soma::Init::Pytorch, 1).unwrap();
    let config = soma::TrainConfig {
        epochs: 1,
        batch_size: 1024,
        ..Default::default()
    };
    let step_kernels = |kn: &Kernels| {
        let mut t = soma::Trainer::new(
            soma::Device::Tuned(kn),
            &model,
            soma::Loss::Mse,
            soma::Optimizer::sgd(0.01),
            &data,
            None,
            &config,
        )
        .unwrap();
        let names: Vec<&str> = t.profile_step().unwrap().iter().map(|k| k.0).collect();
        names
    };
    let fifth = fresh();
    let kernels5 = step_kernels(&fifth);
    let text = std::fs::read_to_string(&path).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = file["adapters"][&key]["mlp 2-64a1-64a1-1a0 batch 1024"].as_str();
    let fused = kernels5.iter().any(|k| k.starts_with("fused_mlp"));
    let choice = if fifth.gpu().adapter().backend == wgpu::Backend::Gl {
        // Through GL the tuner does not try the pass under `FusedMlp::Auto` (compiling its
        // unrolled source takes minutes there, BENCHMARKS.md): nothing measured or cached,
        // and the step runs op by op.
        assert_eq!(entry, None, "{text}");
        "ops".to_string()
    } else {
        entry
            .unwrap_or_else(|| panic!("no entry for the fused pass in {text}"))
            .to_string()
    };
    // "ops", or the entry point of the fused form that won.
    if choice == "ops" {
        assert!(!fused, "{kernels5:?}");
    } else {
        assert!(choice.starts_with("fused_mlp_t"), "unknown choice {choice}");
        assert!(kernels5.contains(&choice.as_str()), "{kernels5:?}");
    }
    let sixth = fresh();
    let kernels6 = step_kernels(&sixth);
    assert_eq!(
        sixth.tuner().measured,
        0,
        "every choice came from the cache"
    );
    assert_eq!(kernels5, kernels6);
    println!("fused MLP pass for B3's network at batch 1024 on this adapter: {choice}");
    let _ = std::fs::remove_dir_all(&dir);
}
