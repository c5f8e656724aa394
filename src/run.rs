//! [`Run`]: one run's resident state, built once: its plan, the executor that holds the
//! plan's buffers on a device, and what the host keeps (feature tables too large for one
//! binding, the current row orders). Training ([`crate::trainer::Trainer`]), evaluation and
//! prediction ([`crate::model::Model`]) and `inspect` all work through one; the build
//! sequence (lay out, stream what does not fit, allocate, upload) is written here only.
//! Deciding when to run what is the trainer's job.

use std::ops::Range;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::exec::{Determinism, Device, Executor, Pass};
use crate::network::{Network, Parameters};
use crate::ops::optim::Optimizer;
use crate::ops::{self, Loss};
use crate::plan::{entry, pixel_bytes, targets_for, DataBufs, Plan};

/// Loss and (for classification data) accuracy over a dataset.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    pub loss: f32,
    pub accuracy: Option<f32>,
    pub samples: usize,
}

/// What the host keeps of a pass's data: the features when they are streamed (empty when
/// resident) and the row order the device holds.
#[derive(Default)]
struct HostData {
    x: Vec<f32>,
    order: Vec<u32>,
}

/// A run's plan, its executor, and the host's part of its data.
pub struct Run<'a> {
    pub plan: Plan,
    pub exec: Executor<'a>,
    train: HostData,
    eval: HostData,
}

impl<'a> Run<'a> {
    /// Lays out a run of `network` with `loss` (training on `train` with `optimizer`,
    /// evaluating `eval`, either may be absent), allocates it on `device`, and uploads
    /// `params` and the data, keeping `determinism`'s promise. Everything is checked before
    /// anything is allocated.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        device: Device<'a>,
        network: &Network,
        params: &Parameters,
        loss: Loss,
        optimizer: Option<&Optimizer>,
        train: Option<&Dataset>,
        eval: Option<&Dataset>,
        batch: usize,
        determinism: Determinism,
    ) -> Result<Run<'a>> {
        params.check(network, "model")?;
        let mut plan = Plan::new(network, loss, optimizer, train, eval, batch)?;
        plan.determinism = determinism;
        let mut run = Run::allocate(device, plan, params)?;
        for (pass, data) in [(Pass::Train, train), (Pass::Eval, eval)] {
            if let Some(d) = data {
                run.upload_data(pass, &d.features, Some((d, loss)))?;
            }
        }
        Ok(run)
    }

    /// A forward-only run over `rows` rows of `x` (row-major, `rows x inputs`) in batches
    /// of up to 1024: no targets and no loss, parameters and inputs uploaded.
    pub fn forward(
        device: Device<'a>,
        network: &Network,
        params: &Parameters,
        x: &[f32],
        rows: usize,
    ) -> Result<Run<'a>> {
        params.check(network, "model")?;
        let inputs = network.input_width();
        if rows.checked_mul(inputs) != Some(x.len()) {
            return Err(Error::shape(
                "forward pass",
                format!("{rows} x {inputs} values"),
                x.len(),
            ));
        }
        let plan = Plan::forward(network, rows, 1024)?;
        // Predictions are the batch buffers themselves, which replicas would each hold a
        // share of: the first replica's device runs them all (every replica's weights are
        // the same).
        let device = device.replicas().first().copied().unwrap_or(device);
        let mut run = Run::allocate(device, plan, params)?;
        run.upload_data(Pass::Eval, x, None)?;
        Ok(run)
    }

    /// The executor for `plan` on `device`, with every feature table too large for one
    /// binding left on the host, and `params` uploaded.
    fn allocate(device: Device<'a>, mut plan: Plan, params: &Parameters) -> Result<Run<'a>> {
        stream_large_tables(&mut plan, device);
        log::info!(
            "plan: {} buffers ({:.1} MiB), {} ops per training step, batch {}",
            plan.buffers.len(),
            plan.buffers.iter().map(|b| b.byte_len()).sum::<u64>() as f64 / (1 << 20) as f64,
            plan.train_step.ops().len(),
            plan.batch
        );
        let exec = Executor::new(device, &plan)?;
        let mut run = Run {
            plan,
            exec,
            train: HostData::default(),
            eval: HostData::default(),
        };
        run.set_parameters(params)?;
        Ok(run)
    }

    /// The data buffers of a pass.
    pub fn bufs(&self, pass: Pass) -> Result<&DataBufs> {
        match pass {
            Pass::Train => self.plan.train.as_ref(),
            Pass::Eval => self.plan.eval.as_ref(),
        }
        .ok_or_else(|| Error::Config(format!("the run has no {pass:?} data")))
    }

    fn host(&mut self, pass: Pass) -> &mut HostData {
        match pass {
            Pass::Train => &mut self.train,
            Pass::Eval => &mut self.eval,
        }
    }

    /// Uploads a pass's features (or keeps them on the host, when streamed), its targets
    /// (`data` and the loss, where the pass has them) and the identity row order.
    fn upload_data(
        &mut self,
        pass: Pass,
        features: &[f32],
        targets: Option<(&Dataset, Loss)>,
    ) -> Result<()> {
        let bufs = self.bufs(pass)?.clone();
        if bufs.streamed.is_some() {
            // `run_pass` gathers and writes each batch.
            self.host(pass).x = features.to_vec();
        } else if bufs.x_u8 {
            let name = targets.map_or("features", |(d, _)| d.name.as_str());
            let bytes = pixel_bytes(features)
                .ok_or_else(|| Error::Data(format!("{name}: features are not 8-bit values")))?;
            self.exec
                .write_u32(&self.plan, bufs.x, &ops::data::cpu::pack_u8(&bytes))?;
        } else {
            self.exec.write_f32(&self.plan, bufs.x, features)?;
        }
        if let Some((data, loss)) = targets {
            let (labels, values) = targets_for(loss, self.plan.network.output_width(), data)?;
            if let (Some(id), Some(l)) = (bufs.labels, labels) {
                self.exec.write_u32(&self.plan, id, &l)?;
            }
            if let (Some(id), Some(v)) = (bufs.values, values) {
                self.exec.write_f32(&self.plan, id, &v)?;
            }
        }
        self.set_order(pass, (0..bufs.rows as u32).collect())
    }

    /// Sends a pass's row order to the device (and keeps it, for streamed batches).
    pub fn set_order(&mut self, pass: Pass, order: Vec<u32>) -> Result<()> {
        let id = self.bufs(pass)?.indices;
        self.exec.write_u32(&self.plan, id, &order)?;
        self.host(pass).order = order;
        Ok(())
    }

    /// Overwrites the parameters on the device.
    pub fn set_parameters(&mut self, params: &Parameters) -> Result<()> {
        for (id, values) in self.plan.parameter_values(params)? {
            self.exec.write_f32(&self.plan, id, values)?;
        }
        Ok(())
    }

    /// Reads the current parameters back to the host.
    pub fn parameters(&self) -> Result<Parameters> {
        let layers = self
            .plan
            .layers
            .iter()
            .map(|l| {
                Ok(crate::network::LayerParams {
                    weight: self.exec.read_f32(l.weight)?,
                    bias: l.bias.map(|b| self.exec.read_f32(b)).transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Parameters { layers })
    }

    /// Runs steps `steps` of `pass` in one submission; or, when the pass's features are
    /// streamed, gathers each step's batch on the host, writes it into the plan's input,
    /// and submits that step alone.
    pub fn run_pass(&mut self, pass: Pass, steps: Range<usize>) -> Result<()> {
        // Borrowed field by field: a step reads the plan and the host data while the executor
        // runs, and nothing is copied per step.
        let Run {
            plan,
            exec,
            train,
            eval,
        } = self;
        let (bufs, host) = match pass {
            Pass::Train => (plan.train.as_ref(), &*train),
            Pass::Eval => (plan.eval.as_ref(), &*eval),
        };
        let bufs = bufs.ok_or_else(|| Error::Config(format!("the run has no {pass:?} data")))?;
        let Some(params) = &bufs.streamed else {
            return exec.run(plan, pass, steps);
        };
        let mut batch = vec![0.0; plan.batch * plan.network.input_width()];
        for s in steps {
            ops::data::cpu::gather_rows(&mut batch, &host.x, &host.order, &entry(params, s));
            exec.write_f32(plan, plan.input, &batch)?;
            exec.run(plan, pass, s..s + 1)?;
        }
        Ok(())
    }

    /// Zeroes a pass's loss sum and correct count.
    pub fn zero_metrics(&mut self, pass: Pass) -> Result<()> {
        let (loss_sum, correct) = {
            let bufs = self.bufs(pass)?;
            (bufs.loss_sum, bufs.correct)
        };
        self.exec.write_f32(&self.plan, loss_sum, &[0.0])?;
        if let Some(c) = correct {
            self.exec.write_u32(&self.plan, c, &[0])?;
        }
        Ok(())
    }

    /// The mean loss and the accuracy of a pass so far, in one readback.
    pub fn read_metrics(&self, pass: Pass) -> Result<(f32, Option<f32>)> {
        let bufs = self.bufs(pass)?;
        let mut ids = vec![bufs.loss_sum];
        ids.extend(bufs.correct);
        let words = self.exec.read_words(&ids)?;
        let loss = f32::from_le_bytes(words[0]) / bufs.rows as f32;
        let acc = words
            .get(1)
            .map(|w| u32::from_le_bytes(*w) as f32 / bufs.rows as f32);
        Ok((loss, acc))
    }

    /// Loss and accuracy over the evaluation data (one submission for all batches on the
    /// GPU, where the table is resident).
    pub fn evaluate(&mut self) -> Result<Evaluation> {
        self.zero_metrics(Pass::Eval)?;
        let steps = self.bufs(Pass::Eval)?.steps;
        self.run_pass(Pass::Eval, 0..steps)?;
        let (loss, accuracy) = self.read_metrics(Pass::Eval)?;
        Ok(Evaluation {
            loss,
            accuracy,
            samples: self.bufs(Pass::Eval)?.rows,
        })
    }

    /// Runs evaluation batch `s` alone; returns how many of its rows are live.
    pub fn eval_batch(&mut self, s: usize) -> Result<usize> {
        self.run_pass(Pass::Eval, s..s + 1)?;
        let rows = self.bufs(Pass::Eval)?.rows;
        Ok((rows - s * self.plan.batch).min(self.plan.batch))
    }
}

/// On a GPU, leaves on the host every feature table too large for one binding (batches are
/// then gathered on the host and written per step); says so in the log.
fn stream_large_tables(plan: &mut Plan, device: Device<'_>) {
    let Some(gpu) = device.gpu() else {
        return;
    };
    let limit = gpu
        .limits()
        .max_storage_buffer_binding_size
        .min(gpu.limits().max_buffer_size);
    for train in [true, false] {
        let bufs = if train { &plan.train } else { &plan.eval };
        if let Some(d) = bufs {
            let bytes = plan.buffers[d.x].byte_len();
            if bytes > limit {
                log::info!(
                    "{}: {bytes} bytes exceed the adapter's {limit}-byte binding limit; streaming its batches from the host",
                    plan.buffers[d.x].name
                );
                plan.stream_features(train);
            }
        }
    }
}
