//! Living inside a host application's GPU program (a renderer learning a neural field, a game
//! training a small policy): what soma needs from the host's device ([`required_limits`]), a
//! per-frame training budget that adapts the number of steps to a time budget without ever
//! waiting on the GPU ([`FrameBudget`]), and an inference pass that the host records into its
//! own compute pass, reading the trainer's resident weights ([`Inference`]).
//!
//! This module owns none of the device (`Gpu::from_wgpu` borrows it), none of the training
//! steps (the trainer records them) and no kernel (it builds dispatches from `kernels`).
//!
//! # What soma needs from a host device
//! - **Features: none.** `Features::TIMESTAMP_QUERY` is optional: when the device has it,
//!   [`FrameBudget`] measures its steps with GPU timestamps, otherwise with the host's clock.
//! - **Limits: the WebGPU defaults** (`wgpu::Limits::default()`). A dispatch binds at most
//!   four storage buffers (five for a layer's product fused with its bias and activation,
//!   only where the device allows five per stage, and for the RMSprop update, an error
//!   naming the limit where it does not) and one uniform buffer with a dynamic
//!   offset, workgroups are at most 256 invocations (256 x 1, 16 x 16, 8 x 8, 64 x 1 and
//!   smaller) and use at most 1 KiB of workgroup memory, uniform entries sit at 256-byte
//!   offsets.
//! - **Sizes: `max_storage_buffer_binding_size` and `max_buffer_size`** bound the network and
//!   the batch: every resident buffer (the training set, `rows x features` f32; the batch
//!   activations, `batch x width` per layer; each weight matrix, `out x in`; an inference
//!   pass's `rows x width` buffers) must fit both. [`required_limits`] computes them for a
//!   workload, to put in the host's `DeviceDescriptor`. `Trainer::new` and [`Inference::new`]
//!   check every buffer against the device's limits before creating any, and a run that does
//!   not fit gets `Error::TooLarge` naming the buffer and the limit, not a validation panic.
//!
//! # Weight layout
//! `Trainer::layer_tensors(i)` gives layer `i`'s resident buffers: `layers.{i}.weight`,
//! `(out, in)` row-major f32 (PyTorch's `nn.Linear` layout, `y = x Wᵀ + b`), and
//! `layers.{i}.bias`, `(out)` f32. They are slots of one buffer shared by every parameter
//! tensor (so that one dispatch updates them all): a host's shader binds one read-only with
//! `GpuTensor::binding`, and a copy starts at `GpuTensor::offset`. The training steps
//! overwrite them in place, so a read sees the weights of the last step submitted before it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Held};
use crate::kernels::{self, Dispatch};
use crate::network::Network;
use crate::ops::loss::Loss;
use crate::ops::{self, Accumulate};
use crate::optim::Optimizer;
use crate::plan::Plan;
use crate::tensor::GpuTensor;
use crate::trainer::Trainer;

// ---------------------------------------------------------------------------------------
// Limits

/// A training run (and, optionally, an inference pass) to size a host's device for.
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    pub network: &'a Network,
    pub loss: Loss,
    pub optimizer: Optimizer,
    pub train: &'a Dataset,
    pub validation: Option<&'a Dataset>,
    pub batch_size: usize,
    /// Rows of an [`Inference`] pass built on the trainer (0 for none).
    pub inference_rows: usize,
}

/// The largest buffer `workload` allocates when everything is resident, in bytes: the
/// largest tensor of the run, the per-step uniform entries of an epoch (256 bytes a step), or
/// an inference buffer. A device with smaller limits still trains when only the feature
/// tables are over them (those stay on the host and stream batch by batch, one submission
/// a step); any other buffer over the limits is `Error::TooLarge`.
pub fn largest_buffer(workload: &Workload<'_>) -> Result<u64> {
    let plan = Plan::new(
        workload.network,
        workload.loss,
        Some(&workload.optimizer),
        Some(workload.train),
        workload.validation,
        workload.batch_size,
    )?;
    let tensors = plan.buffers.iter().map(|b| b.byte_len());
    let align = wgpu::Limits::default().min_uniform_buffer_offset_alignment as u64;
    let uniforms = [&plan.train, &plan.eval]
        .into_iter()
        .flatten()
        .map(|d| d.steps as u64 * align);
    let widest = workload
        .network
        .layers
        .iter()
        .map(|l| l.inputs.max(l.outputs))
        .max()
        .unwrap_or(0);
    let inference = workload.inference_rows as u64 * widest as u64 * 4;
    Ok(tensors
        .chain(uniforms)
        .chain([inference])
        .max()
        .unwrap_or(0))
}

/// The limits to request for `workload` on a host's device: the WebGPU defaults, with
/// `max_storage_buffer_binding_size` and `max_buffer_size` raised to the largest buffer
/// when it is over them. Check the result against `adapter.limits()` (`check_limits`)
/// before asking for the device: an adapter below it cannot hold the run. (A downlevel
/// adapter that misses the defaults elsewhere can still run soma from
/// `Limits::downlevel_defaults()` with the two sizes raised: soma's dispatches bind at most
/// four storage buffers there, keeping fused layers for devices that bind five; RMSprop's
/// update binds five and needs such a device.)
pub fn required_limits(workload: &Workload<'_>) -> Result<wgpu::Limits> {
    let need = largest_buffer(workload)?;
    let base = wgpu::Limits::default();
    Ok(wgpu::Limits {
        max_storage_buffer_binding_size: base.max_storage_buffer_binding_size.max(need),
        max_buffer_size: base.max_buffer_size.max(need),
        ..base
    })
}

// ---------------------------------------------------------------------------------------
// The frame budget

/// How a [`FrameBudget`] measures the time its steps took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Timestamps the GPU writes at the start and the end of the training pass
    /// (`Features::TIMESTAMP_QUERY`): the pass's own execution time.
    GpuTimestamps,
    /// The host's clock, from the submission to the moment its completion callback ran
    /// (`Queue::on_submitted_work_done`). wgpu runs that callback only inside a later
    /// `queue.submit` or `device.poll`, so this is an upper bound: it includes waiting behind
    /// earlier work and the time until someone next submitted or polled, and it is as fine
    /// as the host's frame loop.
    Host,
}

/// How a [`FrameBudget`] starts and how far it may go.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Steps a frame before the first measurement comes back.
    pub initial_steps: usize,
    /// Never more steps than this in one frame.
    pub max_steps: usize,
    /// When this many of the budget's submissions are not yet seen complete, a frame runs no
    /// steps: the GPU is behind, and more work would only queue up. At most
    /// [`MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// `None`: GPU timestamps where the device has `TIMESTAMP_QUERY`, the host clock
    /// otherwise.
    pub clock: Option<Clock>,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            initial_steps: 1,
            max_steps: 256,
            max_in_flight: 3,
            clock: None,
        }
    }
}

/// One measured frame of training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    pub steps: usize,
    pub elapsed: Duration,
    pub clock: Clock,
}

/// Trains as many steps a frame as fit a time budget, and adapts the count from frame to
/// frame. It never waits on the GPU: it never calls a blocking `device.poll` (nor any poll
/// at all) and never blocks on a map. Each call submits the frame's steps in one submission
/// and reads whatever measurements the host's own polling (or the next submit) has delivered.
///
/// **The rule.** From each measurement of `s` steps taking `t`, the time per step is
/// `p = t / s`, smoothed as `p ← (p_old + p) / 2`. A frame then runs
/// `clamp(floor(budget / p), 1, min(2 · s_last, max_steps))` steps, where `s_last` is the step
/// count of the latest measured frame: at least one step (training always progresses), and at
/// most twice what was last measured (one fast measurement cannot make a frame overshoot by
/// more than 2x). Measurements come back a frame or two late, so the count follows the newest
/// one available. Before any, a frame runs `initial_steps`.
///
/// A frame runs no steps when `max_in_flight` of its submissions are not yet seen complete,
/// and when the epoch's steps are used up: then the host calls `Trainer::end_epoch` where it
/// can afford it (it reads the epoch's metrics, which waits for the device; [`Self::idle`]
/// says when nothing of the budget's is in flight, so that the wait covers only that read).
#[derive(Debug)]
pub struct FrameBudget {
    config: BudgetConfig,
    clock: Clock,
    timer: Option<TimestampTimer>,
    in_flight: VecDeque<InFlight>,
    per_step: Option<f64>,
    last: Option<Measurement>,
}

/// A submission of the budget's not yet seen complete.
#[derive(Debug)]
struct InFlight {
    steps: usize,
    submitted: Instant,
    /// Set by the `on_submitted_work_done` callback.
    done: Arc<Mutex<Option<Instant>>>,
    /// The timestamp slot this submission writes, with its map state.
    slot: Option<(usize, Arc<AtomicU8>)>,
}

/// The most submissions a budget lets run ahead (two timestamp queries each).
pub const MAX_IN_FLIGHT: usize = 64;

const MAP_PENDING: u8 = 0;
const MAP_OK: u8 = 1;
const MAP_FAILED: u8 = 2;

/// Timestamp queries in a small ring of slots: two timestamps, a 256-byte resolve region and a
/// 16-byte staging buffer per slot.
#[derive(Debug)]
struct TimestampTimer {
    queries: Held<wgpu::QuerySet>,
    resolve: Held<wgpu::Buffer>,
    staging: Held<Vec<wgpu::Buffer>>,
    busy: Vec<bool>,
    period_ns: f64,
}

impl TimestampTimer {
    fn new(gpu: &Gpu, slots: usize) -> Result<TimestampTimer> {
        let label = "frame budget timestamps";
        gpu.scoped(label, || {
            let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some(label),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * slots as u32,
            });
            let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: slots as u64 * wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let staging = (0..slots)
                .map(|_| {
                    gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(label),
                        size: 2 * wgpu::QUERY_SIZE as u64,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                })
                .collect();
            TimestampTimer {
                queries: gpu.hold(queries),
                resolve: gpu.hold(resolve),
                staging: gpu.hold(staging),
                busy: vec![false; slots],
                period_ns: gpu.queue.get_timestamp_period() as f64,
            }
        })
    }

    /// The pass's duration from a mapped slot, which is then unmapped and freed. `None` when
    /// the timestamps make no sense (end before start).
    fn take(&mut self, slot: usize) -> Option<Duration> {
        let ticks = {
            let view = self.staging[slot].get_mapped_range(..).ok()?;
            let begin = u64::from_le_bytes(view[0..8].try_into().ok()?);
            let end = u64::from_le_bytes(view[8..16].try_into().ok()?);
            end.checked_sub(begin)
        };
        {
            let _serial = self.staging.serial().lock();
            self.staging[slot].unmap();
        }
        self.busy[slot] = false;
        ticks.map(|t| Duration::from_nanos((t as f64 * self.period_ns) as u64))
    }
}

impl FrameBudget {
    /// A budget for trainers on `gpu`'s device.
    pub fn new(gpu: &Gpu, config: BudgetConfig) -> Result<FrameBudget> {
        if config.initial_steps == 0
            || config.max_steps == 0
            || !(1..=MAX_IN_FLIGHT).contains(&config.max_in_flight)
        {
            return Err(Error::Config(format!(
                "a frame budget needs initial_steps and max_steps of at least 1 and max_in_flight in 1..={MAX_IN_FLIGHT}, got {config:?}"
            )));
        }
        let has_timestamps = gpu
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY);
        let clock = match config.clock {
            Some(Clock::GpuTimestamps) if !has_timestamps => {
                return Err(Error::Config(
                    "Clock::GpuTimestamps needs a device opened with Features::TIMESTAMP_QUERY; use Clock::Host or leave the clock to the budget".into(),
                ))
            }
            Some(c) => c,
            None if has_timestamps => Clock::GpuTimestamps,
            None => Clock::Host,
        };
        let timer = match clock {
            Clock::GpuTimestamps => Some(TimestampTimer::new(gpu, config.max_in_flight)?),
            Clock::Host => None,
        };
        Ok(FrameBudget {
            config,
            clock,
            timer,
            in_flight: VecDeque::new(),
            per_step: None,
            last: None,
        })
    }

    /// How this budget measures.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The latest measured frame, if any came back yet.
    pub fn last(&self) -> Option<Measurement> {
        self.last
    }

    /// The smoothed time per step, once a measurement came back.
    pub fn per_step(&self) -> Option<Duration> {
        self.per_step.map(Duration::from_secs_f64)
    }

    /// Submissions of this budget not yet seen complete, as of the last `train_for`.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether every submission of this budget has been seen complete, as of the last
    /// `train_for` (which collects what the host's polls delivered).
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// The steps a frame with `budget` would run now (before the epoch's end is applied).
    pub fn planned_steps(&self, budget: Duration) -> usize {
        let cap = self
            .last
            .map_or(self.config.max_steps, |m| 2 * m.steps)
            .min(self.config.max_steps);
        match self.per_step {
            None => self.config.initial_steps.min(cap),
            Some(p) => {
                // A clock that reads 0 (coarse timestamps) counts as 1 ns a step.
                let fit = (budget.as_secs_f64() / p.max(1e-9)).floor();
                (fit.min(cap as f64) as usize).clamp(1, cap.max(1))
            }
        }
    }

    /// Collects the measurements that have come back, without polling or waiting.
    fn harvest(&mut self) {
        while let Some(front) = self.in_flight.front() {
            let Some(done_at) = front.done.lock().ok().and_then(|d| *d) else {
                break;
            };
            let state = front.slot.as_ref().map(|(_, s)| s.load(Ordering::Acquire));
            if state == Some(MAP_PENDING) {
                // Map callbacks of a submission run before its work-done callback; wait for
                // the next frame if this one is somehow late.
                break;
            }
            let Some(f) = self.in_flight.pop_front() else {
                break;
            };
            let host = done_at.saturating_duration_since(f.submitted);
            let gpu = match (&mut self.timer, f.slot) {
                (Some(timer), Some((slot, state))) => {
                    if state.load(Ordering::Acquire) == MAP_OK {
                        timer.take(slot)
                    } else {
                        timer.busy[slot] = false;
                        None
                    }
                }
                _ => None,
            };
            let (elapsed, clock) = match gpu {
                Some(d) => (d, Clock::GpuTimestamps),
                None => (host, Clock::Host),
            };
            self.learn(f.steps, elapsed, clock);
        }
    }

    fn learn(&mut self, steps: usize, elapsed: Duration, clock: Clock) {
        let p = elapsed.as_secs_f64() / steps.max(1) as f64;
        self.per_step = Some(match self.per_step {
            None => p,
            Some(old) => 0.5 * (old + p),
        });
        self.last = Some(Measurement {
            steps,
            elapsed,
            clock,
        });
    }

    /// Runs this frame's training steps: as many as fit `budget` by the rule above, recorded
    /// into one compute pass and submitted once (with the pass's timestamps when the clock is
    /// the GPU's). Returns how many ran: 0 when the epoch's steps are used up or the GPU is
    /// behind. Nothing here waits for the GPU.
    pub fn train_for(&mut self, trainer: &mut Trainer<'_>, budget: Duration) -> Result<usize> {
        let gpu = trainer.executor().gpu().ok_or_else(|| {
            Error::Config("a frame budget trains on the GPU; this trainer runs on the CPU".into())
        })?;
        self.harvest();
        if self.in_flight.len() >= self.config.max_in_flight || trainer.steps_left() == 0 {
            return Ok(0);
        }
        let n = self.planned_steps(budget);
        let slot = self.timer.as_mut().and_then(|t| {
            let free = t.busy.iter().position(|b| !b)?;
            t.busy[free] = true;
            Some(free)
        });
        let label = "frame budget";
        let timer = self.timer.as_ref();
        let (ran, submitted) = gpu
            .scoped(label, || -> Result<(usize, Instant)> {
                let mut encoder = gpu
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
                let ran = {
                    let timestamp_writes = match (timer, slot) {
                        (Some(t), Some(i)) => Some(wgpu::ComputePassTimestampWrites {
                            query_set: &t.queries,
                            beginning_of_pass_write_index: Some(2 * i as u32),
                            end_of_pass_write_index: Some(2 * i as u32 + 1),
                        }),
                        _ => None,
                    };
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(label),
                        timestamp_writes,
                    });
                    trainer.record_steps(&mut pass, n)?
                };
                if let (Some(t), Some(i)) = (timer, slot) {
                    let offset = i as u64 * wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT;
                    let first = 2 * i as u32;
                    encoder.resolve_query_set(&t.queries, first..first + 2, &t.resolve, offset);
                    encoder.copy_buffer_to_buffer(
                        &t.resolve,
                        offset,
                        &t.staging[i],
                        0,
                        2 * wgpu::QUERY_SIZE as u64,
                    );
                }
                let submitted = Instant::now();
                gpu.submit(vec![encoder.finish()]);
                Ok((ran, submitted))
            })
            .and_then(|r| r)
            .inspect_err(|_| {
                if let (Some(t), Some(i)) = (self.timer.as_mut(), slot) {
                    t.busy[i] = false;
                }
            })?;
        let done = Arc::new(Mutex::new(None));
        let flag = done.clone();
        gpu.queue.on_submitted_work_done(move || {
            if let Ok(mut d) = flag.lock() {
                *d = Some(Instant::now());
            }
        });
        let slot = match (&self.timer, slot) {
            (Some(t), Some(i)) => {
                let state = Arc::new(AtomicU8::new(MAP_PENDING));
                let s = state.clone();
                gpu.count_map();
                let _serial = gpu.serial().lock();
                t.staging[i].map_async(wgpu::MapMode::Read, .., move |r| {
                    s.store(
                        if r.is_ok() { MAP_OK } else { MAP_FAILED },
                        Ordering::Release,
                    );
                });
                Some((i, state))
            }
            _ => None,
        };
        self.in_flight.push_back(InFlight {
            steps: ran,
            submitted,
            done,
            slot,
        });
        Ok(ran)
    }
}

// ---------------------------------------------------------------------------------------
// Inference

/// A forward pass of a trainer's network over `rows` rows, reading the trainer's resident
/// weight and bias buffers directly (no copy through the host), ready to record into a
/// host's compute pass. The host writes `input()` and reads `output()` in its own commands
/// (both are storage buffers that also allow copies); per layer it runs the same kernels as
/// training's forward pass: `matmul_nt` then `bias_activation_forward`.
#[derive(Debug)]
pub struct Inference {
    input: GpuTensor, // (rows, inputs)
    /// Per layer: pre-activation and activation, each (rows, outputs).
    layers: Vec<(GpuTensor, GpuTensor)>,
    _dummy: GpuTensor, // (1): bound where a layer has no bias
    dispatches: Vec<Dispatch>,
    rows: usize,
}

impl Inference {
    /// Builds the pass for `rows` rows on `trainer`'s device. Every buffer is checked against
    /// the device's limits before any is created (`Error::TooLarge`).
    pub fn new(trainer: &Trainer<'_>, rows: usize) -> Result<Inference> {
        let k = trainer.executor().kernels().ok_or_else(|| {
            Error::Config("an inference pass runs on the GPU; this trainer runs on the CPU".into())
        })?;
        let gpu = k.gpu();
        if rows == 0 {
            return Err(Error::Config(
                "an inference pass needs at least one row".into(),
            ));
        }
        let network = &trainer.plan().network;
        let inputs = network.input_width();
        gpu.check_buffer_size("inference.input", (rows * inputs) as u64 * 4)?;
        for (i, l) in network.layers.iter().enumerate() {
            gpu.check_buffer_size(
                &format!("inference.layers.{i}.out"),
                (rows * l.outputs) as u64 * 4,
            )?;
        }
        let input = GpuTensor::zeros(gpu, "inference.input", &[rows, inputs])?;
        let dummy = GpuTensor::zeros(gpu, "inference.dummy", &[1])?;
        let mut layers: Vec<(GpuTensor, GpuTensor)> = Vec::new();
        let mut dispatches = Vec::new();
        for (i, l) in network.layers.iter().enumerate() {
            let (weight, bias) = trainer.layer_tensors(i).ok_or_else(|| {
                Error::Config(format!("the trainer has no GPU tensors for layer {i}"))
            })?;
            let pre = GpuTensor::zeros(
                gpu,
                &format!("inference.layers.{i}.pre"),
                &[rows, l.outputs],
            )?;
            let out = GpuTensor::zeros(
                gpu,
                &format!("inference.layers.{i}.out"),
                &[rows, l.outputs],
            )?;
            let x = layers.last().map_or(&input, |(_, out)| out);
            dispatches.push(ops::matmul_nt(k, &pre, x, weight, Accumulate::Overwrite)?);
            dispatches.push(ops::bias_activation_forward(
                k,
                &out,
                &pre,
                bias,
                &dummy,
                l.activation,
            )?);
            layers.push((pre, out));
        }
        Ok(Inference {
            input,
            layers,
            _dummy: dummy,
            dispatches,
            rows,
        })
    }

    /// The input the host fills: `(rows, inputs)` row-major f32.
    pub fn input(&self) -> &GpuTensor {
        &self.input
    }

    /// The network's output: `(rows, outputs)` row-major f32, valid after the pass ran.
    pub fn output(&self) -> &GpuTensor {
        self.layers.last().map_or(&self.input, |(_, out)| out)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Records the forward pass into the host's compute pass (nothing is submitted). wgpu
    /// orders the dispatches of one pass, so a host dispatch recorded after this one reads
    /// the finished `output()`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            d.record(pass, 0);
        }
    }

    /// Runs the pass in a submission of its own (for tools and tests; a host records it).
    pub fn run(&self, gpu: &Gpu) -> Result<()> {
        kernels::submit_pass(gpu, "inference", |pass| self.record(pass))
    }
}
