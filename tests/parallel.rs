//! Data-parallel training in one process: replicas on two devices opened on one adapter
//! (lavapipe opens twice) follow one device with the same global batch to f32 rounding, are
//! bitwise reproducible, give the CPU reference replicas' bits under strict mode, resume
//! bit-identically, share checkpoints with single-device runs, and refuse what they cannot
//! run before anything trains.

mod common;

use common::gpu;
use soma::data::{self, Dataset};
use soma::parallel::{DataParallel, Overlap};
use soma::trainer::{Flow, Progress};
use soma::{
    Activation, Determinism, Device, Error, Gpu, Init, Loss, Model, Network, Optimizer, Parameters,
    Schedule, TrainConfig, Trainer,
};

/// Two devices of the test's own on the test binary's adapter (SKIPPED and
/// `SOMA_REQUIRE_GPU` as for `common::gpu`).
fn two_gpus(test: &str) -> Option<Vec<Gpu>> {
    gpu(test)?;
    Some(vec![Gpu::new().unwrap(), Gpu::new().unwrap()])
}

/// digits, standardised, its first `rows` rows.
fn digits(rows: usize) -> Dataset {
    let all = data::bundled("digits").unwrap();
    let mut d = all.select(&(0..rows).collect::<Vec<_>>());
    let scaler = data::Scaler::fit(data::ScaleKind::Standard, &d);
    scaler.apply(&mut d).unwrap();
    d
}

fn config(batch: usize, epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: batch,
        shuffle: true,
        seed: 3,
        log_every: 1,
        validation_fraction: None,
        schedule: Schedule::Step {
            every: 1,
            gamma: 0.5,
        },
        ..Default::default()
    }
}

/// The running mean loss after every step of `epochs` epochs, the final parameters and
/// optimizer state.
struct Ran {
    losses: Vec<f32>,
    params: Parameters,
    state: Vec<(String, Vec<f32>)>,
}

fn train(
    device: Device<'_>,
    model: &Model,
    loss: Loss,
    opt: Optimizer,
    data: &Dataset,
    config: &TrainConfig,
) -> Ran {
    let mut t = Trainer::new(device, model, loss, opt, data, None, config).unwrap();
    let mut losses = vec![];
    for _ in 0..config.epochs {
        t.run_epoch(|p: Progress| losses.push(p.loss.unwrap()))
            .unwrap();
    }
    Ran {
        losses,
        params: t.parameters().unwrap(),
        state: t.optimizer_state().unwrap(),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn flat(p: &Parameters) -> Vec<f32> {
    p.layers
        .iter()
        .flat_map(|l| l.weight.iter().chain(l.bias.iter().flatten()).copied())
        .collect()
}

/// Relative L2 distance; NaN never passes.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        assert!(x.is_finite() && y.is_finite(), "non-finite: {x} vs {y}");
        num += ((x - y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

fn assert_same_bits(label: &str, a: &Ran, b: &Ran) {
    assert_eq!(bits(&a.losses), bits(&b.losses), "{label}: losses");
    assert_eq!(
        bits(&flat(&a.params)),
        bits(&flat(&b.params)),
        "{label}: parameters"
    );
    for ((n, x), (_, y)) in a.state.iter().zip(&b.state) {
        assert_eq!(bits(x), bits(y), "{label}: {n}");
    }
}

/// Two replicas against one device at the same global batch, for a classifier (Adam,
/// softmax cross-entropy) and a regression (SGD with momentum, MSE), at an even batch whose
/// last batch leaves the second replica no rows and at an odd one that splits 8 + 7. The
/// replicas sum each weight gradient in two partial sums, so they differ from one device by
/// f32 rounding only: 1e-4 relative after two epochs (the rounding of a few hundred
/// steps of sums over 15 or 16 rows, about 1e-6 each, grown by training's sensitivity).
#[test]
fn two_replicas_follow_one_device_at_the_same_global_batch() {
    let Some(gpus) = two_gpus("two_replicas_follow_one_device_at_the_same_global_batch") else {
        return;
    };
    // 150 rows: in batches of 16 the last has 6 rows, all the first replica's.
    let data = digits(150);
    let classifier = Network::mlp(&[64, 24, 10], Activation::Relu, Activation::Identity).unwrap();
    let regression = Network::mlp(&[64, 12, 10], Activation::Tanh, Activation::Identity).unwrap();
    let cases = [
        (
            "adam/ce",
            classifier,
            Loss::SoftmaxCrossEntropy,
            Optimizer::adam(0.01),
        ),
        (
            "momentum/mse",
            regression,
            Loss::Mse,
            Optimizer::momentum(0.05, 0.9),
        ),
    ];
    for (name, net, loss, opt) in cases {
        let model = Model::new(net, Init::Pytorch, 5).unwrap();
        for batch in [16, 15] {
            let label = format!("{name}, batch {batch}");
            let c = config(batch, 2);
            let one = train(Device::Gpu(&gpus[0]), &model, loss, opt, &data, &c);
            let two = train(Device::Gpus(&gpus), &model, loss, opt, &data, &c);
            assert_eq!(one.losses.len(), two.losses.len(), "{label}");
            for (i, (a, b)) in two.losses.iter().zip(&one.losses).enumerate() {
                let d = (a - b).abs() / (1e-3 + b.abs());
                assert!(d < 1e-4, "{label}: step {i} loss {a} against {b}");
            }
            let rel = rel_l2(&flat(&two.params), &flat(&one.params));
            assert!(rel < 1e-4, "{label}: parameters differ by {rel:e}");
            for ((n, a), (_, b)) in two.state.iter().zip(&one.state) {
                let rel = rel_l2(a, b);
                assert!(rel < 1e-3, "{label}: {n} differs by {rel:e}");
            }
            // Not the same bits: the comparison above is one of rounding, not of equality.
            println!(
                "{label}: two replicas against one, parameters rel L2 {rel:e}, bitwise equal: {}",
                bits(&flat(&two.params)) == bits(&flat(&one.params))
            );
        }
    }
}

#[test]
fn two_replica_runs_are_bitwise_identical() {
    let Some(gpus) = two_gpus("two_replica_runs_are_bitwise_identical") else {
        return;
    };
    let data = digits(120);
    let net = Network::mlp(&[64, 16, 10], Activation::Relu, Activation::Identity).unwrap();
    let model = Model::new(net, Init::Pytorch, 9).unwrap();
    let c = config(15, 2);
    let opt = Optimizer::adam(0.01);
    let a = train(
        Device::Gpus(&gpus),
        &model,
        Loss::SoftmaxCrossEntropy,
        opt,
        &data,
        &c,
    );
    let b = train(
        Device::Gpus(&gpus),
        &model,
        Loss::SoftmaxCrossEntropy,
        opt,
        &data,
        &c,
    );
    assert_same_bits("two runs", &a, &b);
}

/// Handing each layer's gradients over as soon as its backward stage is done changes when
/// they cross, not what is summed: the same bits as one hand-over per step, on GPU replicas
/// and on CPU reference replicas, for three layers with and without biases' activations.
#[test]
fn per_layer_hand_over_gives_the_bits_of_one_per_step() {
    let Some(gpus) = two_gpus("per_layer_hand_over_gives_the_bits_of_one_per_step") else {
        return;
    };
    let data = digits(90);
    let net = Network::mlp(&[64, 20, 16, 10], Activation::Tanh, Activation::Identity).unwrap();
    let model = Model::new(net, Init::Pytorch, 6).unwrap();
    let c = config(14, 1);
    let opt = Optimizer::momentum(0.05, 0.9);
    let loss = Loss::SoftmaxCrossEntropy;
    let gpu_devices = vec![Device::Gpu(&gpus[0]), Device::Gpu(&gpus[1])];
    for devices in [
        gpu_devices,
        vec![Device::CpuReference, Device::CpuReference],
    ] {
        let run = |overlap| {
            let p = DataParallel {
                devices: devices.clone(),
                exchange: None,
                overlap,
            };
            train(Device::Parallel(&p), &model, loss, opt, &data, &c)
        };
        let label = format!("{:?}", devices[0]);
        assert_same_bits(&label, &run(Overlap::PerLayer), &run(Overlap::Off));
    }
}

/// `--shadow-check` during a data-parallel run: every Nth step is replayed on the CPU path
/// at the global batch and compared with the replicas' state. Within the default tolerance
/// every step passes; held to a tolerance no rounding meets, every step is reported past it
/// and training goes on (the op-by-op search, which runs one device's step, is not tried).
#[test]
fn shadow_check_replays_the_global_batch_against_the_replicas() {
    let Some(gpus) = two_gpus("shadow_check_replays_the_global_batch_against_the_replicas") else {
        return;
    };
    let data = digits(96);
    let net = Network::mlp(&[64, 16, 10], Activation::Relu, Activation::Identity).unwrap();
    let model = Model::new(net, Init::Pytorch, 8).unwrap();
    let opt = Optimizer::adam(0.01);
    for (tolerance, pass) in [(None, true), (Some(1e-30), false)] {
        let c = TrainConfig {
            shadow_check: Some(2),
            shadow_tolerance: tolerance,
            ..config(16, 1)
        };
        let mut t = Trainer::new(
            Device::Gpus(&gpus),
            &model,
            Loss::SoftmaxCrossEntropy,
            opt,
            &data,
            None,
            &c,
        )
        .unwrap();
        t.run_epoch(|_| {}).unwrap();
        let reports = t.shadow_reports();
        assert_eq!(reports.len(), 3, "steps 2, 4 and 6 of 6");
        for r in reports {
            assert_eq!(
                r.pass(),
                pass,
                "{tolerance:?}: step {}: {:?}",
                r.step,
                r.worst()
            );
            assert!(!r.searched);
        }
    }
}

/// Under strict mode every replica runs kernels in the CPU twins' order and the sum is the
/// host's, so two GPU replicas give the bits of two CPU reference replicas. (One device
/// sums each gradient over the whole batch in one chain: other bits, to rounding.)
#[test]
fn strict_gpu_replicas_give_the_cpu_reference_replicas_bits() {
    let Some(gpus) = two_gpus("strict_gpu_replicas_give_the_cpu_reference_replicas_bits") else {
        return;
    };
    let data = digits(100);
    let net = Network::mlp(&[64, 16, 10], Activation::Sigmoid, Activation::Identity).unwrap();
    let model = Model::new(net, Init::Pytorch, 2).unwrap();
    let c = TrainConfig {
        determinism: Determinism::Strict,
        ..config(15, 1)
    };
    let opt = Optimizer::adam(0.01);
    let loss = Loss::SoftmaxCrossEntropy;
    let refs = DataParallel {
        devices: vec![Device::CpuReference, Device::CpuReference],
        exchange: None,
        overlap: Overlap::Off,
    };
    let want = train(Device::Parallel(&refs), &model, loss, opt, &data, &c);
    match Trainer::new(Device::Gpus(&gpus), &model, loss, opt, &data, None, &c) {
        Err(Error::StrictRefused { adapter, findings }) => {
            println!("strict mode refuses {adapter} ({findings}): only the CPU replicas ran");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => {
            let got = train(Device::Gpus(&gpus), &model, loss, opt, &data, &c);
            assert_same_bits(
                "strict GPU replicas against CPU reference replicas",
                &got,
                &want,
            );
        }
    }
    let one = train(Device::CpuReference, &model, loss, opt, &data, &c);
    let rel = rel_l2(&flat(&want.params), &flat(&one.params));
    assert!(rel < 1e-4, "replicas against one reference: {rel:e}");
}

/// Validation through the replicas: loss within rounding, the correct count exact.
#[test]
fn replicas_evaluate_like_one_device() {
    let Some(gpus) = two_gpus("replicas_evaluate_like_one_device") else {
        return;
    };
    let data = digits(200);
    let net = Network::mlp(&[64, 20, 10], Activation::Relu, Activation::Identity).unwrap();
    let model = Model::new(net, Init::Pytorch, 4).unwrap();
    let one = model.evaluate(Device::Gpu(&gpus[0]), &data, 33).unwrap();
    let two = model.evaluate(Device::Gpus(&gpus), &data, 33).unwrap();
    assert_eq!(one.accuracy, two.accuracy);
    assert_eq!(one.samples, two.samples);
    assert!(
        (one.loss - two.loss).abs() <= 1e-5 * one.loss.abs(),
        "{} against {}",
        two.loss,
        one.loss
    );
}

/// A run on two replicas stopped after an epoch and resumed on two ends with the bits of
/// the run that never stopped; its checkpoint's state also resumes on one device.
#[test]
fn a_replica_run_resumes_bit_identically_and_on_one_device() {
    let Some(gpus) = two_gpus("a_replica_run_resumes_bit_identically_and_on_one_device") else {
        return;
    };
    let data = digits(120);
    let net = Network::mlp(&[64, 12, 10], Activation::Relu, Activation::Identity).unwrap();
    let model = Model::new(net, Init::Pytorch, 11).unwrap();
    let loss = Loss::SoftmaxCrossEntropy;
    let opt = Optimizer::adam(0.01);
    let c = config(16, 3);
    let go_on = |_: &Trainer<'_>, _: &soma::EpochMetrics| Ok(Flow::Continue);
    let mut whole = Trainer::new(Device::Gpus(&gpus), &model, loss, opt, &data, None, &c).unwrap();
    whole.fit(go_on, |_| {}).unwrap();
    let want = (
        whole.parameters().unwrap(),
        whole.optimizer_state().unwrap(),
    );

    let mut first = Trainer::new(Device::Gpus(&gpus), &model, loss, opt, &data, None, &c).unwrap();
    first
        .fit(
            |_, m| {
                Ok(if m.epoch == 1 {
                    Flow::Stop
                } else {
                    Flow::Continue
                })
            },
            |_| {},
        )
        .unwrap();
    let state = first.state();
    let opt_state: Vec<Vec<f32>> = first
        .optimizer_state()
        .unwrap()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let at = Model::with_params(model.network.clone(), first.parameters().unwrap()).unwrap();
    drop(first);

    let mut second = Trainer::new(Device::Gpus(&gpus), &at, loss, opt, &data, None, &c).unwrap();
    second.resume(&state, &opt_state).unwrap();
    second.fit(go_on, |_| {}).unwrap();
    assert_eq!(
        bits(&flat(&second.parameters().unwrap())),
        bits(&flat(&want.0)),
        "resumed on two replicas"
    );
    for ((n, a), (_, b)) in second.optimizer_state().unwrap().iter().zip(&want.1) {
        assert_eq!(bits(a), bits(b), "resumed on two replicas: {n}");
    }

    let mut single = Trainer::new(Device::Gpu(&gpus[0]), &at, loss, opt, &data, None, &c).unwrap();
    single.resume(&state, &opt_state).unwrap();
    single.fit(go_on, |_| {}).unwrap();
    let rel = rel_l2(&flat(&single.parameters().unwrap()), &flat(&want.0));
    assert!(
        rel < 1e-4,
        "resumed on one device: {rel:e} from the replicas' run"
    );
}

/// What the replicas cannot run is refused before anything trains: devices whose limits
/// differ (a device borrowed with the WebGPU defaults beside one opened with the adapter's
/// own), a replica that is itself data-parallel, and no device at all.
#[test]
fn replicas_refuse_what_they_cannot_run() {
    let Some(gpus) = two_gpus("replicas_refuse_what_they_cannot_run") else {
        return;
    };
    let data = digits(40);
    let net = Network::mlp(&[64, 8, 10], Activation::Relu, Activation::Identity).unwrap();
    let model = Model::new(net, Init::Pytorch, 1).unwrap();
    let loss = Loss::SoftmaxCrossEntropy;
    let opt = Optimizer::sgd(0.1);
    let c = config(8, 1);
    let refused = |device: Device<'_>| -> String {
        match Trainer::new(device, &model, loss, opt, &data, None, &c) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{device:?} was not refused"),
        }
    };

    // A host's device on the same adapter, with the WebGPU defaults instead of the
    // adapter's own larger limits.
    let borrowed = {
        let want = gpus[0].adapter();
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::all();
        let instance = wgpu::Instance::new(desc);
        let adapter = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
            .into_iter()
            .find(|a| a.get_info().name == want.name && a.get_info().backend == want.backend)
            .unwrap();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            required_limits: wgpu::Limits::default(),
            ..Default::default()
        }))
        .unwrap();
        Gpu::from_wgpu(device, queue)
    };
    assert_ne!(
        borrowed.limits(),
        gpus[0].limits(),
        "the adapter's own limits are larger"
    );
    {
        let two = DataParallel {
            devices: vec![Device::Gpu(&gpus[0]), Device::Gpu(&borrowed)],
            exchange: None,
            overlap: Overlap::Off,
        };
        let e = refused(Device::Parallel(&two));
        assert!(e.contains("different limits") && e.contains("max_"), "{e}");
        assert!(e.contains(&gpus[0].adapter().name), "{e}");
    }

    let inner = DataParallel {
        devices: vec![Device::Cpu, Device::Cpu],
        exchange: None,
        overlap: Overlap::Off,
    };
    let nested = DataParallel {
        devices: vec![Device::Parallel(&inner), Device::Cpu],
        exchange: None,
        overlap: Overlap::Off,
    };
    let e = refused(Device::Parallel(&nested));
    assert!(e.contains("cannot itself be data-parallel"), "{e}");

    let none = DataParallel {
        devices: vec![],
        exchange: None,
        overlap: Overlap::Off,
    };
    let e = refused(Device::Parallel(&none));
    assert!(e.contains("at least one device"), "{e}");
}

// ---------------------------------------------------------------------------------------
// The command: `soma train --devices`.

use common::bin::{self, TempDir};

/// `soma train --devices 0,0` names the replicas it opens, keeps `--devices` in the run's
/// config.json, and a run stopped after an epoch and resumed (on the same replicas, from the
/// config) ends with the tensors of the run that never stopped; the finished run's
/// checkpoint then trains further on one device.
#[test]
fn train_devices_names_its_replicas_and_resumes_bit_identically() {
    if gpu("train_devices_names_its_replicas_and_resumes_bit_identically").is_none() {
        return;
    }
    let dir = TempDir::new("devices");
    let common = ["train", "--devices", "0,0", "--seed", "2"];
    let run = |extra: &[&str]| {
        let mut args = common.to_vec();
        args.extend_from_slice(extra);
        bin::soma(&dir, &args).ok()
    };
    let whole = run(&["--out", &dir.arg("whole"), "--epochs", "3", "--json"]);
    let sha = |r: &bin::Ran| r.json()["tensors_sha256"].as_str().unwrap().to_string();
    let want = sha(&whole);
    assert!(
        whole.json()["adapter"].as_str().unwrap().contains(" + "),
        "{}",
        whole.stdout
    );
    let text = run(&["--out", &dir.arg("text"), "--epochs", "1"]);
    let named: Vec<&str> = text
        .stderr_lines()
        .into_iter()
        .filter(|l| l.starts_with("replica "))
        .collect();
    assert_eq!(named.len(), 2, "{}", text.stderr);
    assert!(named[1].starts_with("replica 1: adapter [0] "), "{named:?}");

    run(&[
        "--out",
        &dir.arg("b"),
        "--epochs",
        "3",
        "--stop-after",
        "1",
        "--json",
    ]);
    let config = bin::read(&dir.join("b.partial").join("config.json"));
    assert!(config.contains("\"devices\": \"0,0\""), "{config}");
    let b = dir.arg("b.partial");
    let resumed = bin::soma(&dir, &["train", "--resume", &b, "--json"]).ok();
    assert_eq!(sha(&resumed), want, "stopped and resumed on two replicas");
    assert!(resumed.json()["adapter"].as_str().unwrap().contains(" + "));

    let on_one = bin::soma(
        &dir,
        &[
            "train",
            "--resume",
            &dir.arg("b"),
            "--devices",
            "0",
            "--epochs",
            "4",
            "--json",
        ],
    )
    .ok();
    assert!(!on_one.json()["adapter"].as_str().unwrap().contains(" + "));
}

/// Bad `--devices` are refused with one clear line and no run directory: a word that is not
/// an adapter number, a number past the adapters, `--device cpu` beside it, and adapters
/// whose limits differ (lavapipe through Vulkan beside llvmpipe through GL, where both are
/// listed).
#[test]
fn train_devices_refuses_what_it_cannot_open() {
    if gpu("train_devices_refuses_what_it_cannot_open").is_none() {
        return;
    }
    let dir = TempDir::new("devices-bad");
    let out = dir.arg("never");
    let refused = |args: &[&str], want: &str| {
        let mut all = vec!["train", "--epochs", "1", "--out", &out];
        all.extend_from_slice(args);
        let r = bin::soma(&dir, &all);
        if r.code == Some(0) || !r.stderr.contains(want) {
            r.fail(&format!("not refused with '{want}'"));
        }
        assert!(!dir.join("never").exists() && !dir.join("never.partial").exists());
    };
    refused(&["--devices", "zero"], "'zero' is not an adapter number");
    refused(&["--devices", "0,99"], "index 99");
    refused(&["--devices", "0,0", "--device", "cpu"], "--device is cpu");
    let listed = bin::soma(&dir, &["devices", "--json"]).ok().json();
    let backends: Vec<String> = listed["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["backend"].as_str().unwrap().to_string())
        .collect();
    if let (Some(v), Some(g)) = (
        backends.iter().position(|b| b == "Vulkan"),
        backends.iter().position(|b| b == "Gl"),
    ) {
        refused(&["--devices", &format!("{v},{g}")], "different limits");
    } else {
        println!("no Vulkan and GL adapter side by side: the limits refusal is shown in refuse_what_they_cannot_run");
    }
}
