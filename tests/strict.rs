//! Strict mode (`--deterministic strict`, docs/determinism.md) end to end: the same
//! checkpoint tensors on the GPU and on the CPU reference, bit-identical `soma check` runs
//! over every activation, loss and optimizer family, GL passing or refused with the
//! self-test's finding, and the self-test refusing a device that runs the strict WGSL
//! without the SPIR-V pass.

mod common;

use common::bin::{soma, soma_in_env, TempDir};
use serde_json::Value;

/// `soma train --json` on the bundled digits, 20 epochs, with `args`; its summary.
fn train(dir: &TempDir, out: &str, args: &[&str]) -> Value {
    let mut all: Vec<String> = ["train", "--epochs", "20", "--json", "--out"]
        .map(String::from)
        .to_vec();
    all.push(dir.arg(out));
    all.extend(args.iter().map(|a| a.to_string()));
    soma(dir, &all).ok().json()
}

fn hash(summary: &Value) -> &str {
    summary["tensors_sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("no tensors_sha256 in {summary}"))
}

/// Whether the test binary's adapter (the one `soma` picks too) passes strict mode's
/// self-test. Where it does not (llvmpipe through GL, under `WGPU_BACKEND=gl`), a strict
/// run must be refused with the finding before anything is written, which `refused` checks.
fn adapter_passes_the_self_test(gpu: &soma::Gpu) -> bool {
    let kernels = soma::ops::Kernels::new(gpu, soma::ops::Tuning::strict());
    soma::exec::strict::self_test(&kernels).is_ok()
}

/// `soma args` (with `--out dir/out` among them, if any) was refused by strict mode's
/// self-test, by name, leaving no run directory.
fn refused(dir: &TempDir, out: &str, args: &[&str]) {
    let ran = soma(dir, args);
    assert_eq!(
        ran.code,
        Some(1),
        "{args:?} ran on an adapter that fails the self-test"
    );
    let e = ran.stderr_lines().join("\n");
    assert!(
        e.contains("strict mode refuses") && e.contains("self-test found"),
        "{e}"
    );
    assert!(
        !dir.join(out).exists(),
        "a refused run leaves no run directory"
    );
}

#[test]
fn strict_digits_has_the_same_checkpoint_tensors_on_the_gpu_and_the_cpu() {
    let Some(g) =
        common::gpu("strict_digits_has_the_same_checkpoint_tensors_on_the_gpu_and_the_cpu")
    else {
        return;
    };
    let dir = TempDir::new("strict-digits");
    if !adapter_passes_the_self_test(g) {
        let out = dir.arg("gpu");
        refused(
            &dir,
            "gpu",
            &[
                "train",
                "--epochs",
                "20",
                "--json",
                "--out",
                &out,
                "--deterministic",
                "strict",
                "--device",
                "gpu",
            ],
        );
        return;
    }
    let gpu = train(
        &dir,
        "gpu",
        &["--deterministic", "strict", "--device", "gpu"],
    );
    let cpu = train(
        &dir,
        "cpu",
        &["--deterministic", "strict", "--device", "cpu"],
    );
    assert_eq!(gpu["deterministic"], "strict");
    assert_eq!(gpu["epochs_run"], 20);
    assert_ne!(gpu["adapter"], cpu["adapter"], "two different devices");
    assert_eq!(
        hash(&gpu),
        hash(&cpu),
        "strict digits: the checkpoint tensors differ between {} and the CPU",
        gpu["adapter"]
    );
    // The test split's evaluation runs in the same mode: the same loss and accuracy.
    assert_eq!(gpu["test_loss"], cpu["test_loss"], "{gpu}\n{cpu}");
    assert_eq!(gpu["test_accuracy"], cpu["test_accuracy"]);
    // The hash is the weights': the default mode's arithmetic (tuned products, the
    // driver's exp and division) ends 20 epochs elsewhere.
    let default = train(&dir, "default", &["--device", "gpu"]);
    assert_eq!(default["deterministic"], "default");
    assert_ne!(hash(&default), hash(&gpu));
    // And the model is a trained one.
    assert!(gpu["test_accuracy"].as_f64().unwrap() > 0.9, "{gpu}");
}

#[test]
fn strict_check_is_bit_identical_over_every_family() {
    let Some(g) = common::gpu("strict_check_is_bit_identical_over_every_family") else {
        return;
    };
    let dir = TempDir::new("strict-check");
    if !adapter_passes_the_self_test(g) {
        refused(
            &dir,
            "unused",
            &[
                "check",
                "--deterministic",
                "strict",
                "--json",
                "--steps",
                "12",
            ],
        );
        return;
    }
    // Each activation (sigmoid and tanh through soma_exp and soma_div, GELU's derivative),
    // each loss (softmax cross-entropy, MSE, binary cross-entropy through soma_log), each
    // optimizer (Adam's and RMSprop's square roots and divisions), odd widths and a
    // partial last batch.
    for args in [
        vec!["--activation", "sigmoid", "--optimizer", "sgd"],
        vec![
            "--activation",
            "tanh",
            "--optimizer",
            "momentum",
            "--layers",
            "64,33,17,10",
        ],
        vec![
            "--activation",
            "gelu",
            "--optimizer",
            "adamw",
            "--weight-decay",
            "0.01",
        ],
        vec![
            "--activation",
            "leaky_relu",
            "--optimizer",
            "rmsprop",
            "--centered",
        ],
        vec!["--data", "diabetes", "--batch-size", "7"],
        vec![
            "--data",
            "breast-cancer",
            "--loss",
            "bce",
            "--layers",
            "30,16,1",
        ],
    ] {
        let mut all = vec![
            "check",
            "--deterministic",
            "strict",
            "--json",
            "--steps",
            "12",
        ];
        all.extend(&args);
        let ran = soma(&dir, &all);
        let report = ran.json();
        assert_eq!(report["bitwise_equal"], true, "{args:?}: {report}");
        assert_eq!(report["pass"], true, "{args:?}: {report}");
        assert_eq!(ran.code, Some(0), "{args:?}");
        for t in report["tensors"].as_array().unwrap() {
            assert_eq!(t["max_abs"], 0.0, "{args:?}: {t}");
        }
    }
}

/// GL (llvmpipe through EGL) cannot load SPIR-V, so its kernels are the WGSL as the driver
/// compiles it: strict mode runs there only if the self-test passes, and then gives the
/// CPU's hash; otherwise the run is refused with the finding, and nothing is trained.
#[test]
fn strict_on_gl_gives_the_cpu_hash_or_is_refused_with_the_finding() {
    let gl = soma_in_env(
        &std::env::temp_dir(),
        &["devices", "--json"],
        &[("WGPU_BACKEND", "gl")],
    );
    let has_gl = gl.code == Some(0)
        && gl.json()["adapters"].as_array().is_some_and(|a| {
            a.iter().any(|a| {
                a["backend"]
                    .as_str()
                    .is_some_and(|b| b.eq_ignore_ascii_case("gl"))
            })
        });
    if !has_gl {
        eprintln!(
            "SKIPPED strict_on_gl_gives_the_cpu_hash_or_is_refused_with_the_finding: no GL adapter"
        );
        return;
    }
    let dir = TempDir::new("strict-gl");
    let out = dir.arg("gl");
    let ran = soma_in_env(
        &dir.join(""),
        &[
            "train",
            "--epochs",
            "20",
            "--json",
            "--deterministic",
            "strict",
            "--device",
            "gpu",
            "--out",
            &out,
        ],
        &[("WGPU_BACKEND", "gl")],
    );
    match ran.code {
        Some(0) => {
            let cpu = train(
                &dir,
                "cpu",
                &["--deterministic", "strict", "--device", "cpu"],
            );
            assert_eq!(
                hash(&ran.json()),
                hash(&cpu),
                "GL passed the self-test but differs"
            );
        }
        _ => {
            let e = ran.stderr_lines().join("\n");
            assert!(e.contains("strict mode refuses"), "{e}");
            assert!(e.contains("self-test found"), "{e}");
            // What failed, by name.
            assert!(
                [
                    "contraction",
                    "reassociation",
                    "ties-to-even",
                    "subnormals",
                    "soma_"
                ]
                .iter()
                .any(|f| e.contains(f)),
                "{e}"
            );
            assert!(
                !dir.join("gl").exists(),
                "a refused run leaves no run directory"
            );
        }
    }
}

/// A host's device without `PASSTHROUGH_SHADERS`: strict kernels are then WGSL compiled by
/// the driver, which on lavapipe reassociates `(2^24 + 1) - 2^24`; the self-test must see
/// it and refuse, so the SPIR-V pass is what makes lavapipe strict.
#[test]
fn a_device_without_the_spirv_pass_is_tested_not_trusted() {
    let Some(gpu) = common::gpu("a_device_without_the_spirv_pass_is_tested_not_trusted") else {
        return;
    };
    assert!(gpu.takes_spirv() || gpu.adapter().backend != wgpu::Backend::Vulkan);
    let instance = wgpu::Instance::default();
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        force_fallback_adapter: false,
        ..Default::default()
    }))
    .expect("the adapter that opened the first device");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host without passthrough"),
        required_features: wgpu::Features::empty(),
        ..Default::default()
    }))
    .unwrap();
    let host = soma::Gpu::from_wgpu(device, queue);
    assert!(!host.takes_spirv());
    let kernels = soma::Kernels::new(&host, soma::Tuning::strict());
    match soma::exec::strict::self_test(&kernels) {
        Ok(()) => {
            // A driver that neither fuses nor reassociates passes as it is; lavapipe does not.
            assert!(
                !common::is_llvmpipe(&host),
                "lavapipe passed the self-test without NoContraction"
            );
        }
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("strict mode refuses") && e.contains("WGSL as the driver compiles it"),
                "{e}"
            );
            if common::is_llvmpipe(&host) {
                assert!(e.contains("reassociation"), "{e}");
            }
        }
    }
}
