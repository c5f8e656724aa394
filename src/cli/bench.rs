//! `soma bench`: the shared workloads of `shared/bench/SPEC.md` (B1 matmul, B2 MLP training
//! throughput, B3 tiny-MLP step latency), timed exactly as the spec says, on the selected
//! adapter or the CPU path. Prints `RESULT {json}` lines, a table, or one JSON document.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use soma::autotune;
use soma::data::{self, Dataset};
use soma::exec::Determinism;
use soma::kernels;
use soma::ops::matmul::{BlockedMatmulParams, MatmulForm, MatmulParams};
use soma::ops::{self, Accumulate};
use soma::rng::Rng;
use soma::trainer::{TrainConfig, Trainer};
use soma::{
    cpu, Activation, Device, Error, GpuTensor, Init, Loss, Model, Network, Optimizer, Result,
    Schedule,
};

use super::{open_device, DeviceChoice};

pub struct BenchCommand {
    pub device: DeviceChoice,
    pub only: Vec<String>,
    pub sizes: Option<Vec<usize>>,
    pub peak_gflops: Option<f64>,
    /// The directory of B2's MNIST training files; `None`: [`DEFAULT_MNIST`] when it holds
    /// them, else the synthetic set.
    pub mnist: Option<PathBuf>,
    pub json: bool,
    pub profile: bool,
    /// Also time B2's epoch with every Nth step shadow-checked.
    pub shadow_check: Option<usize>,
    /// `--deterministic`: the training workloads' mode (`None`: default).
    pub deterministic: Option<String>,
    pub process_start: Instant,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// Peak resident memory of this process so far, from /proc (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The CPU's fp32 peak as SPEC.md defines it: cores x 2 FMA units x lanes x 2 x clock,
/// with the lanes of the vector width the adapter reports (llvmpipe says "256 bits") or, on
/// the CPU path, of the widest vector FMA the processor has (AVX-512: 16, AVX2: 8).
fn cpu_peak_gflops(adapter: &str) -> Option<(f64, String)> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let cores = info.lines().filter(|l| l.starts_with("processor")).count() as f64;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    // llvmpipe names its vector width ("256 bits"); on the CPU path, the widest FMA vectors
    // the processor has.
    let bits = adapter
        .split_whitespace()
        .zip(adapter.split_whitespace().skip(1))
        .find(|(_, unit)| unit.starts_with("bits"))
        .and_then(|(n, _)| n.parse::<f64>().ok());
    let lanes = match bits {
        Some(b) => b / 32.0,
        None if info.contains(" avx512f") => 16.0,
        None if info.contains(" avx2") => 8.0,
        None => 4.0,
    };
    let peak = cores * 2.0 * lanes * 2.0 * mhz / 1000.0;
    Some((
        peak,
        format!("{cores} cores x 2 FMA x {lanes} lanes x 2 x {mhz:.0} MHz"),
    ))
}

struct Ctx<'a> {
    device: Device<'a>,
    peer: &'static str,
    adapter: String,
    results: Vec<Value>,
    json: bool,
    profile: bool,
    shadow_check: Option<usize>,
    /// The training workloads' mode (`--deterministic`).
    determinism: Determinism,
}

impl Ctx<'_> {
    fn result(&mut self, bench: &str, metric: &str, value: f64, unit: &str, extra: Value) {
        let mut r = json!({
            "bench": bench, "peer": self.peer, "metric": metric, "value": value, "unit": unit,
            "adapter": self.adapter,
        });
        if let (Some(obj), Some(more)) = (r.as_object_mut(), extra.as_object()) {
            for (k, v) in more {
                obj.insert(k.clone(), v.clone());
            }
        }
        if !self.json {
            println!("RESULT {r}");
        }
        self.results.push(r);
    }
}

/// B1: C = A·B for square n x n, A and B uniform in [-1, 1).
fn b1(ctx: &mut Ctx<'_>, sizes: &[usize], peak: Option<(f64, String)>) -> Result<()> {
    let mut rng = Rng::new(1);
    for &n in sizes {
        let a: Vec<f32> = (0..n * n).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
        let b: Vec<f32> = (0..n * n).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
        let p = MatmulParams {
            m: n as u32,
            n: n as u32,
            k: n as u32,
            accumulate: 0,
        };
        let mut times = Vec::new();
        let first: Vec<f32>;
        match ctx.device {
            Device::Gpu(_) | Device::Tuned(_) | Device::Gpus(_) | Device::Parallel(_) => {
                let Some(result) = ctx
                    .device
                    .with_kernels(|k| -> Result<(Vec<f32>, Vec<f64>)> {
                        let gpu = k.gpu();
                        autotune::prepare(k, MatmulForm::Nn, n, n, n, Accumulate::Overwrite)?;
                        let at = GpuTensor::upload(gpu, "A", &[n, n], &a)?;
                        let bt = GpuTensor::upload(gpu, "B", &[n, n], &b)?;
                        let ct = GpuTensor::zeros(gpu, "C", &[n, n])?;
                        let d = ops::matmul_nn(k, &ct, &at, &bt, Accumulate::Overwrite)?;
                        gpu.wait()?;
                        kernels::run(gpu, &[&d])?;
                        let first = ct.read(gpu)?;
                        kernels::run(gpu, &[&d])?;
                        gpu.wait()?;
                        let mut times = Vec::new();
                        for _ in 0..7 {
                            let t = Instant::now();
                            kernels::run(gpu, &[&d])?;
                            gpu.wait()?;
                            times.push(t.elapsed().as_secs_f64());
                        }
                        Ok((first, times))
                    })
                else {
                    return Err(Error::Config("B1 on a GPU runs on one GPU device".into()));
                };
                (first, times) = result?;
            }
            Device::Cpu | Device::CpuReference => {
                // The CPU path's product: matrixmultiply's threaded sgemm.
                let p = BlockedMatmulParams::nn(&p);
                let mut c = vec![0.0f32; n * n];
                cpu::matmul_gemm(&mut c, &a, &b, &p);
                first = c.clone();
                cpu::matmul_gemm(&mut c, &a, &b, &p);
                for _ in 0..7 {
                    let t = Instant::now();
                    cpu::matmul_gemm(&mut c, &a, &b, &p);
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        // 16 entries of the first result against f64 dot products.
        let mut worst = 0.0f64;
        for i in 0..16 {
            let (r, c) = ((i * 7919) % n, (i * 104729) % n);
            let exact: f64 = (0..n)
                .map(|k| a[r * n + k] as f64 * b[k * n + c] as f64)
                .sum();
            worst = worst.max((first[r * n + c] as f64 - exact).abs());
        }
        let tol = 1e-5 * n as f64;
        if worst > tol {
            return Err(Error::Config(format!(
                "B1 n={n}: result differs from f64 by {worst:e} (over {tol:e})"
            )));
        }
        let secs = median(times);
        let gflops = 2.0 * (n as f64).powi(3) / secs / 1e9;
        let mut extra = json!({ "n": n, "median_s": secs, "check_max_abs_err": worst });
        if let Some((pk, how)) = &peak {
            extra["peak_gflops"] = json!(pk);
            extra["peak_basis"] = json!(how);
            extra["fraction_of_peak"] = json!(gflops / pk);
        }
        ctx.result("B1", "gflops", gflops, "GFLOP/s", extra);
    }
    Ok(())
}

/// Prints where one training step's time goes: each kernel run and waited for on its own,
/// the median of 5 steps (so the sum exceeds a real step by the per-submission overhead).
fn profile(t: &mut Trainer<'_>, bench: &str) -> Result<()> {
    if t.executor().gpu().is_none() {
        return Ok(());
    }
    let mut runs: Vec<Vec<(&'static str, f64)>> = Vec::new();
    for _ in 0..5 {
        if t.steps_left() == 0 {
            t.end_epoch()?;
        }
        runs.push(t.profile_step()?);
    }
    let Some(first) = runs.first() else {
        return Ok(());
    };
    eprintln!(
        "{bench} profile, one kernel per submission (median of {} steps):",
        runs.len()
    );
    let mut total = 0.0;
    for (i, (name, _)) in first.iter().enumerate() {
        let ms = median(
            runs.iter()
                .filter_map(|r| r.get(i).map(|x| x.1 * 1e3))
                .collect(),
        );
        total += ms;
        eprintln!("  {i:>2} {name:<28} {ms:>8.3} ms");
    }
    eprintln!("     {:<28} {total:>8.3} ms", "sum");
    Ok(())
}

/// Runs `steps` training steps, then reads the running loss back (the sync).
fn steps_then_loss(t: &mut Trainer<'_>, steps: usize) -> Result<f32> {
    steps_per_submission_then_loss(t, steps, 1)
}

/// `steps` training steps, `per` to a submission (fewer at an epoch's end), then the running
/// loss (one readback).
fn steps_per_submission_then_loss(t: &mut Trainer<'_>, steps: usize, per: usize) -> Result<f32> {
    let mut left = steps;
    while left > 0 {
        if t.steps_left() == 0 {
            t.end_epoch()?;
        }
        left -= t.run_steps(per.min(left))?;
    }
    t.running_loss()
}

/// Where B2 looks for MNIST when `--mnist` is not given (SPEC.md's `../shared/data/mnist/`).
pub const DEFAULT_MNIST: &str = "../shared/data/mnist";

/// B2's rows: 468 batches of 128.
const B2_ROWS: usize = 468 * 128;

/// The first existing file of `stem-kind` or `stem.kind`, raw or gzipped, in `dir`, and every
/// name tried.
fn find_idx(dir: &Path, stem: &str, kind: &str) -> (Option<PathBuf>, Vec<String>) {
    let mut tried = Vec::new();
    for sep in ['-', '.'] {
        for ext in ["", ".gz"] {
            let name = format!("{stem}{sep}{kind}{ext}");
            let path = dir.join(&name);
            if path.is_file() {
                return (Some(path), tried);
            }
            tried.push(name);
        }
    }
    (None, tried)
}

/// B2's training table and the name of its source: MNIST's training images and labels
/// from `mnist` (any failure an error that names the directory or file), else from
/// [`DEFAULT_MNIST`] when either file is there (likewise), else SPEC.md's synthetic set.
fn b2_data(mnist: Option<&Path>) -> Result<(Dataset, &'static str)> {
    let dir = mnist.unwrap_or(Path::new(DEFAULT_MNIST));
    let (images, tried_images) = find_idx(dir, "train-images", "idx3-ubyte");
    let (labels, tried_labels) = find_idx(dir, "train-labels", "idx1-ubyte");
    let (images, labels) = match (images, labels) {
        (Some(i), Some(l)) => (i, l),
        (None, None) if mnist.is_none() => {
            return Ok((data::b2_synthetic(60_000), "synthetic-lowbias32"));
        }
        (i, l) => {
            let mut missing = Vec::new();
            if i.is_none() {
                missing.push(format!("images ({})", tried_images.join(", ")));
            }
            if l.is_none() {
                missing.push(format!("labels ({})", tried_labels.join(", ")));
            }
            let what = if dir.is_dir() {
                "holds no MNIST training"
            } else {
                "is not a directory; looked there for MNIST training"
            };
            return Err(Error::Config(format!(
                "--mnist {}: {what} {}",
                dir.display(),
                missing.join(" or ")
            )));
        }
    };
    let train = data::load_idx(&images, &labels)?;
    let classes = train.targets.classes().unwrap_or(0);
    if train.width != 784 || train.len() < B2_ROWS || classes > 10 {
        return Err(Error::Config(format!(
            "{}: {} images of {} pixels in {classes} classes; B2 needs at least {B2_ROWS} \
             images of 28 x 28 pixels in 10 classes",
            images.display(),
            train.len(),
            train.width
        )));
    }
    Ok((train, "mnist-idx"))
}

/// B2: 784-256-256-10 on MNIST (or the synthetic set), SGD lr 0.05, batch 128.
fn b2(
    ctx: &mut Ctx<'_>,
    (train, source): (Dataset, &'static str),
    process_start: Instant,
) -> Result<()> {
    // Step s uses rows [(s mod 468) * 128, +128): 468 full batches, no shuffling.
    let train = train.select(&(0..B2_ROWS).collect::<Vec<_>>());
    let net = Network::mlp(&[784, 256, 256, 10], Activation::Relu, Activation::Identity)?;
    let model = Model::new(net, Init::Pytorch, 0)?;
    let config = TrainConfig {
        epochs: usize::MAX,
        batch_size: 128,
        shuffle: false,
        // The workload's fixed rate (SPEC.md), not the command's cosine default.
        schedule: Schedule::Constant,
        determinism: ctx.determinism,
        ..Default::default()
    };
    let mut t = Trainer::new(
        ctx.device,
        &model,
        Loss::SoftmaxCrossEntropy,
        Optimizer::sgd(0.05),
        &train,
        None,
        &config,
    )?;
    // SPEC.md places the whole table on the device; a table larger than one binding of this
    // adapter is streamed from the host batch by batch instead, and the result says so.
    let resident = t
        .plan()
        .train
        .as_ref()
        .is_some_and(|d| d.streamed.is_none());
    let setup_s = process_start.elapsed().as_secs_f64();
    let step0 = Instant::now();
    let first_loss = steps_then_loss(&mut t, 1)?;
    let first_step_s = step0.elapsed().as_secs_f64();
    let to_first = process_start.elapsed().as_secs_f64();
    steps_then_loss(&mut t, 4)?;
    let mut rates = Vec::new();
    let mut last_loss = first_loss;
    for _ in 0..3 {
        let s = Instant::now();
        last_loss = steps_then_loss(&mut t, 50)?;
        rates.push(50.0 * 128.0 / s.elapsed().as_secs_f64());
    }
    if ctx.profile {
        if t.steps_left() == 0 {
            t.end_epoch()?;
        }
        profile(&mut t, "B2")?;
    }
    // The first loss is the mean over step 0's batch; the last over the epoch so far.
    ctx.result(
        "B2",
        "samples_per_s",
        median(rates),
        "samples/s",
        json!({ "data": source, "deterministic": ctx.determinism, "resident": resident, "time_to_first_step_s": to_first, "setup_s": setup_s,
                "first_step_s": first_step_s, "first_loss": first_loss, "last_loss": last_loss,
                "peak_rss_mib": peak_rss_mib() }),
    );
    // The same steps recorded 64 to a submission (what `run_epoch` does): the SPEC's figure
    // above submits every step on its own.
    let mut batched = Vec::new();
    for _ in 0..3 {
        let s = Instant::now();
        steps_per_submission_then_loss(&mut t, 128, SUBMITTED)?;
        batched.push(128.0 * 128.0 / s.elapsed().as_secs_f64());
    }
    ctx.result(
        "B2-64",
        "samples_per_s",
        median(batched),
        "samples/s",
        json!({ "data": source, "deterministic": ctx.determinism, "steps_per_submission": SUBMITTED }),
    );
    if let Some(every) = ctx.shadow_check {
        b2_shadow(ctx, &model, &train, &config, every)?;
    }
    Ok(())
}

/// B2's epoch (468 steps) with every `every`th step replayed on the CPU path against the
/// same epoch without, in turn (plain, shadowed, plain, shadowed), each on a fresh trainer:
/// the overhead is the median of the two pairs' time ratios, less 1.
fn b2_shadow(
    ctx: &mut Ctx<'_>,
    model: &Model,
    train: &Dataset,
    config: &TrainConfig,
    every: usize,
) -> Result<()> {
    let epoch = |shadow: Option<usize>| -> Result<(f64, usize)> {
        let config = TrainConfig {
            epochs: 1,
            shadow_check: shadow,
            ..config.clone()
        };
        let mut t = Trainer::new(
            ctx.device,
            model,
            Loss::SoftmaxCrossEntropy,
            Optimizer::sgd(0.05),
            train,
            None,
            &config,
        )?;
        // One step first, so that neither side pays for compiling the kernels.
        t.run_steps(1)?;
        t.running_loss()?;
        let start = Instant::now();
        t.run_epoch(|_| {})?;
        Ok((start.elapsed().as_secs_f64(), t.shadow_reports().len()))
    };
    let mut ratios = Vec::new();
    let mut times = Vec::new();
    let mut checked = 0;
    for _ in 0..2 {
        let (plain, _) = epoch(None)?;
        let (shadowed, n) = epoch(Some(every))?;
        ratios.push(shadowed / plain);
        times.push((plain, shadowed));
        checked = n;
    }
    ctx.result(
        "B2-shadow",
        "overhead",
        median(ratios) - 1.0,
        "fraction",
        json!({ "shadow_check": every, "steps": B2_ROWS / 128, "shadow_steps": checked,
                "epoch_s_plain_then_shadowed": times }),
    );
    Ok(())
}

/// B3: 2-64-64-1, MSE, SGD lr 0.01, the same batch of 4096 every step.
fn b3(ctx: &mut Ctx<'_>) -> Result<()> {
    let batch = data::b3_synthetic();
    // The same 4096 rows every step: the batch, repeated, walked in order.
    let reps = 61;
    let idx: Vec<usize> = (0..reps * batch.len()).map(|i| i % batch.len()).collect();
    let train: Dataset = batch.select(&idx);
    let net = Network::mlp(&[2, 64, 64, 1], Activation::Relu, Activation::Identity)?;
    let model = Model::new(net, Init::Pytorch, 0)?;
    let config = TrainConfig {
        epochs: usize::MAX,
        batch_size: 4096,
        shuffle: false,
        // The workload's fixed rate (SPEC.md), not the command's cosine default.
        schedule: Schedule::Constant,
        determinism: ctx.determinism,
        ..Default::default()
    };
    let mut t = Trainer::new(
        ctx.device,
        &model,
        Loss::Mse,
        Optimizer::sgd(0.01),
        &train,
        None,
        &config,
    )?;
    let sync = |t: &Trainer<'_>| -> Result<()> {
        match t.executor().gpu() {
            Some(g) => g.wait(),
            None => Ok(()),
        }
    };
    for _ in 0..10 {
        t.run_steps(1)?;
        sync(&t)?;
    }
    let mut times = Vec::new();
    for _ in 0..50 {
        let s = Instant::now();
        t.run_steps(1)?;
        sync(&t)?;
        times.push(s.elapsed().as_secs_f64() * 1e3);
    }
    let loss = t.running_loss()?;
    if ctx.profile {
        profile(&mut t, "B3")?;
    }
    ctx.result(
        "B3",
        "ms_per_step",
        median(times.clone()),
        "ms",
        json!({ "p10_ms": percentile(times.clone(), 0.1), "p90_ms": percentile(times, 0.9),
                "loss": loss, "deterministic": ctx.determinism,
                "step": t.executor().fused_mlp_form().unwrap_or("op by op") }),
    );
    // 64 steps to a submission, one wait at the end: the per-step cost without a submit
    // and a wait per step (B3's epoch is 61 steps, so a submission never spans two).
    let mut batched = Vec::new();
    for _ in 0..5 {
        t.end_epoch()?;
        let s = Instant::now();
        let n = t.run_steps(SUBMITTED)?;
        sync(&t)?;
        batched.push(s.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64);
    }
    ctx.result(
        "B3-64",
        "ms_per_step",
        median(batched),
        "ms",
        json!({ "deterministic": ctx.determinism, "steps_per_submission": SUBMITTED,
                "step": t.executor().fused_mlp_form().unwrap_or("op by op") }),
    );
    Ok(())
}

/// Steps per submission of the B2-64 and B3-64 rows (`Trainer::run_epoch` records as many).
const SUBMITTED: usize = soma::trainer::STEPS_PER_SUBMISSION;

pub fn run(cmd: BenchCommand) -> Result<()> {
    // Options checked before any device is opened: an option that cannot be honoured is an
    // error, not an empty table.
    if let Some(bad) = cmd
        .only
        .iter()
        .find(|o| !["B1", "B2", "B3"].iter().any(|b| o.eq_ignore_ascii_case(b)))
    {
        return Err(Error::Config(format!(
            "--only {bad}: the workloads are B1, B2 and B3"
        )));
    }
    if let Some(n) = cmd.sizes.iter().flatten().find(|&&n| n == 0) {
        return Err(Error::Config(format!(
            "--sizes: {n} is not a matrix size (at least 1)"
        )));
    }
    if let Some(p) = cmd.peak_gflops.filter(|p| !(p.is_finite() && *p > 0.0)) {
        return Err(Error::Config(format!(
            "--peak-gflops {p}: a peak must be a positive number"
        )));
    }
    let determinism = Determinism::from_flag(cmd.deterministic.as_deref())?;
    let want = |b: &str| cmd.only.is_empty() || cmd.only.iter().any(|o| o.eq_ignore_ascii_case(b));
    // B2's data is read before the device opens: a bad --mnist fails before any work.
    let b2_train = if want("B2") {
        Some(b2_data(cmd.mnist.as_deref())?)
    } else {
        None
    };
    let opened = open_device(cmd.device)?;
    let device = opened.device();
    let (peer, adapter) = match device {
        Device::Gpu(_) | Device::Tuned(_) | Device::Gpus(_) | Device::Parallel(_) => {
            ("soma-gpu", device.name())
        }
        Device::Cpu | Device::CpuReference => ("soma-cpu", "cpu".to_string()),
    };
    let cpu_like = device
        .gpu()
        .is_none_or(|g| g.adapter().device_type == wgpu::DeviceType::Cpu);
    let mut ctx = Ctx {
        device,
        peer,
        adapter: adapter.clone(),
        results: vec![],
        json: cmd.json,
        profile: cmd.profile,
        shadow_check: cmd.shadow_check,
        determinism,
    };
    if cmd.shadow_check == Some(0) {
        return Err(Error::Config(
            "--shadow-check 0: it must be at least 1 step".into(),
        ));
    }
    let peak = match cmd.peak_gflops {
        Some(p) => Some((p, "given with --peak-gflops".to_string())),
        None if cpu_like => cpu_peak_gflops(&adapter),
        None => None,
    };
    if want("B1") {
        let sizes = cmd.sizes.clone().unwrap_or_else(|| {
            if cpu_like {
                vec![256, 512, 1024, 2048]
            } else {
                vec![256, 512, 1024, 2048, 4096]
            }
        });
        b1(&mut ctx, &sizes, peak)?;
    }
    if let Some(train) = b2_train {
        b2(&mut ctx, train, cmd.process_start)?;
    }
    if want("B3") {
        b3(&mut ctx)?;
    }
    if cmd.json {
        let doc = json!({ "adapter": adapter, "peer": peer, "results": ctx.results });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| Error::Config(e.to_string()))?
        );
    } else {
        println!("\n{:<4} {:>14} {:>12}  details", "", "value", "unit");
        for r in &ctx.results {
            let detail = match r["bench"].as_str() {
                Some("B1") => format!("n = {}", r["n"]),
                Some("B2") => format!(
                    "{}{}, first step after {:.2} s, peak RSS {:.0} MiB",
                    r["data"].as_str().unwrap_or(""),
                    if r["resident"] == json!(false) {
                        " streamed from the host"
                    } else {
                        ""
                    },
                    r["time_to_first_step_s"].as_f64().unwrap_or(f64::NAN),
                    r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
                ),
                Some("B3") => format!(
                    "p10 {:.2} ms, p90 {:.2} ms, {}",
                    r["p10_ms"].as_f64().unwrap_or(f64::NAN),
                    r["p90_ms"].as_f64().unwrap_or(f64::NAN),
                    r["step"].as_str().unwrap_or("")
                ),
                _ => String::new(),
            };
            println!(
                "{:<4} {:>14.2} {:>12}  {detail}",
                r["bench"].as_str().unwrap_or(""),
                r["value"].as_f64().unwrap_or(f64::NAN),
                r["unit"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}
