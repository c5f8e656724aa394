//! `soma check`: the same training steps on the GPU and on the CPU reference path (the
//! plain-loop twins of the kernels) from one seed, then
//! the largest absolute and relative difference of every parameter tensor and of the
//! per-step loss. Exits non-zero when a tensor's relative L2 difference is over the
//! tolerance. With `--locate`, each step op by op on both paths from the same buffers,
//! stopping at the first op whose output differs (`Trainer::locate_step`).

use serde::Serialize;

use soma::exec::Determinism;
use soma::trainer::{Progress, TrainConfig, Trainer};
use soma::{Device, Error, Model, Result};

use super::options::TrainOptions;
use super::prepare::{build_network, choose_loss, prepare_data};

pub struct CheckCommand {
    pub options: TrainOptions,
    pub steps: usize,
    pub tolerance: f64,
    /// Op by op: name the first op whose output differs.
    pub locate: bool,
    pub json: bool,
}

#[derive(Serialize)]
struct TensorDiff {
    name: String,
    max_abs: f64,
    max_rel: f64,
    rel_l2: f64,
    /// Every value has the same bits on both sides (the report's `bitwise_equal`).
    #[serde(skip)]
    bits_equal: bool,
}

#[derive(Serialize)]
struct Report {
    adapter: String,
    steps: usize,
    loss_max_rel: f64,
    tensors: Vec<TensorDiff>,
    tolerance: f64,
    /// `strict`: the run passes only when every bit is the CPU reference's.
    deterministic: Determinism,
    /// Every loss and every parameter has the CPU reference's bits.
    bitwise_equal: bool,
    pass: bool,
    /// On a failure: the step (from 1) and the first op whose output differs past the
    /// tolerance when the steps run op by op from the same buffers; null when none does (the
    /// difference then built up over the steps, every op within the tolerance).
    located: Option<(usize, soma::exec::OpDivergence)>,
}

fn diff(name: String, g: &[f32], c: &[f32]) -> TensorDiff {
    let (mut max_abs, mut max_rel, mut num, mut den) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in g.iter().zip(c) {
        let (x, y) = (x as f64, y as f64);
        let d = if x.is_finite() && y.is_finite() {
            (x - y).abs()
        } else {
            f64::INFINITY
        };
        max_abs = max_abs.max(d);
        max_rel = max_rel.max(d / y.abs().max(1e-6));
        num += d * d;
        den += y * y;
    }
    TensorDiff {
        name,
        max_abs,
        max_rel,
        rel_l2: (num / den.max(1e-30)).sqrt(),
        bits_equal: g.len() == c.len() && g.iter().zip(c).all(|(x, y)| x.to_bits() == y.to_bits()),
    }
}

pub fn run(cmd: CheckCommand) -> Result<()> {
    // Before any work: no difference is within NaN or a negative tolerance, and every one
    // is within infinity.
    if !(cmd.tolerance.is_finite() && cmd.tolerance >= 0.0) {
        return Err(Error::Config(format!(
            "--tolerance {}: a tolerance must be a finite number, 0 or more",
            cmd.tolerance
        )));
    }
    let o = cmd.options.resolve()?;
    if cmd.steps == 0 {
        return Err(Error::Config("--steps must be at least 1".into()));
    }
    let choices = o.choices()?;
    let data = prepare_data(&o, &choices)?;
    let rows = (cmd.steps * o.batch_size).min(data.train.len());
    let train = data.train.select(&(0..rows).collect::<Vec<_>>());
    let loss = choose_loss(&choices, &train)?;
    let network = build_network(&o, &choices, &train, loss)?;
    let optimizer = choices.optimizer;
    let model = Model::new(network, choices.init, o.seed)?;
    let strict = choices.determinism == Determinism::Strict;
    let config = TrainConfig {
        epochs: 1,
        batch_size: o.batch_size,
        shuffle: o.shuffle,
        seed: o.seed,
        log_every: 1,
        determinism: choices.determinism,
        ..Default::default()
    };
    // Strict mode promises the CPU reference's bits: nothing less passes.
    let cmd = CheckCommand {
        tolerance: if strict { 0.0 } else { cmd.tolerance },
        ..cmd
    };
    // The GPU with the tuning the environment asks for, as `soma train` runs.
    let opened = super::open_device(super::DeviceChoice::Gpu)?;
    if cmd.locate {
        return locate(
            &cmd,
            opened.device(),
            &model,
            loss,
            optimizer,
            &train,
            &config,
        );
    }
    let run = |device: Device<'_>| -> Result<(Vec<f32>, soma::Parameters)> {
        let mut t = Trainer::new(device, &model, loss, optimizer, &train, None, &config)?;
        let mut losses = vec![];
        t.run_epoch(|p: Progress| losses.extend(p.loss))?;
        Ok((losses, t.parameters()?))
    };
    let (gl, gp) = run(opened.device())?;
    let (cl, cp) = run(Device::CpuReference)?;
    let loss_diff = diff("loss".into(), &gl, &cl);
    let mut tensors = vec![];
    for (i, (g, c)) in gp.layers.iter().zip(&cp.layers).enumerate() {
        tensors.push(diff(format!("layers.{i}.weight"), &g.weight, &c.weight));
        if let (Some(gb), Some(cb)) = (&g.bias, &c.bias) {
            tensors.push(diff(format!("layers.{i}.bias"), gb, cb));
        }
    }
    let bitwise_equal = loss_diff.bits_equal && tensors.iter().all(|t| t.bits_equal);
    let pass = if strict {
        bitwise_equal
    } else {
        loss_diff.max_rel <= cmd.tolerance && tensors.iter().all(|t| t.rel_l2 <= cmd.tolerance)
    };
    // A failure is followed by the same steps op by op, to name the op where it starts.
    let located = match pass {
        true => None,
        false => first_divergence(
            &cmd,
            opened.device(),
            &model,
            loss,
            optimizer,
            &train,
            &config,
        )?,
    };
    let report = Report {
        adapter: opened.device().name(),
        steps: gl.len(),
        loss_max_rel: loss_diff.max_rel,
        tensors,
        tolerance: cmd.tolerance,
        deterministic: choices.determinism,
        bitwise_equal,
        pass,
        located,
    };
    if cmd.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?
        );
    } else {
        println!(
            "{} steps on '{}' against the CPU path",
            report.steps, report.adapter
        );
        println!(
            "per-step loss: max relative difference {:.3e}",
            report.loss_max_rel
        );
        println!(
            "{:<20} {:>12} {:>12} {:>12}",
            "tensor", "max abs", "max rel", "rel L2"
        );
        for t in &report.tensors {
            println!(
                "{:<20} {:>12.3e} {:>12.3e} {:>12.3e}",
                t.name, t.max_abs, t.max_rel, t.rel_l2
            );
        }
        if strict {
            println!(
                "{} (strict: every loss and parameter {} the CPU reference's bits)",
                if pass { "PASS" } else { "FAIL" },
                if bitwise_equal { "has" } else { "must have" }
            );
        } else {
            println!(
                "{} (tolerance {:.1e} on the loss and on each tensor's relative L2 difference{})",
                if pass { "PASS" } else { "FAIL" },
                cmd.tolerance,
                if bitwise_equal {
                    "; every bit equal"
                } else {
                    ""
                }
            );
        }
        match &report.located {
            Some((s, d)) => print_divergence(*s, d, &report.adapter, cmd.tolerance),
            None if !pass => println!(
                "op by op from the same buffers, no op differs past {:.1e}: the difference built up over the steps",
                cmd.tolerance
            ),
            None => {}
        }
    }
    if pass {
        Ok(())
    } else {
        Err(Error::Mismatch(if strict {
            "strict mode promises the CPU reference's bits, and they differ".into()
        } else {
            format!(
                "they differ by more than the tolerance {:.1e}",
                cmd.tolerance
            )
        }))
    }
}

/// The steps op by op on both paths from the same buffers, until an op differs past the
/// tolerance: its step (from 1) and the report; `None` when none does.
fn first_divergence(
    cmd: &CheckCommand,
    device: Device<'_>,
    model: &Model,
    loss: soma::Loss,
    optimizer: soma::Optimizer,
    train: &soma::data::Dataset,
    config: &TrainConfig,
) -> Result<Option<(usize, soma::exec::OpDivergence)>> {
    let mut t = Trainer::new(device, model, loss, optimizer, train, None, config)?;
    for s in 0..t.steps_per_epoch() {
        if let Some(d) = t.locate_step(cmd.tolerance)? {
            return Ok(Some((s + 1, d)));
        }
    }
    Ok(None)
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Config(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn print_divergence(step: usize, d: &soma::exec::OpDivergence, adapter: &str, tolerance: f64) {
    println!(
        "step {step}, op {} of {}: {} (kernel {}) on '{adapter}' differs from its CPU twin",
        d.op_index + 1,
        d.ops,
        d.op,
        d.kernel,
    );
    println!(
        "  {} {:?}: worst at index {}: GPU {:e}, CPU {:e} ({:.3e} of the buffer's largest value; tolerance {tolerance:.1e})",
        d.buffer, d.shape, d.index, d.gpu, d.cpu, d.difference
    );
}

/// `check --locate`: each step op by op on both paths until an op differs.
fn locate(
    cmd: &CheckCommand,
    device: Device<'_>,
    model: &Model,
    loss: soma::Loss,
    optimizer: soma::Optimizer,
    train: &soma::data::Dataset,
    config: &TrainConfig,
) -> Result<()> {
    let steps = (cmd.steps * config.batch_size)
        .min(train.len())
        .div_ceil(config.batch_size);
    match first_divergence(cmd, device, model, loss, optimizer, train, config)? {
        Some((s, d)) => {
            if cmd.json {
                print_json(&serde_json::json!({
                    "adapter": device.name(), "step": s, "tolerance": cmd.tolerance,
                    "divergence": d,
                }))?;
            } else {
                print_divergence(s, &d, &device.name(), cmd.tolerance);
            }
            Err(Error::Mismatch(format!(
                "kernel {} ({}) differs from its CPU twin at step {s}",
                d.kernel, d.op
            )))
        }
        None => {
            if cmd.json {
                print_json(&serde_json::json!({
                    "adapter": device.name(), "steps": steps, "tolerance": cmd.tolerance,
                    "divergence": null,
                }))?;
            } else {
                println!(
                    "{steps} step{} op by op on '{}' against the CPU twins: no op differs past {:.1e}",
                    if steps == 1 { "" } else { "s" },
                    device.name(),
                    cmd.tolerance
                );
            }
            Ok(())
        }
    }
}
