//! [`Model`]: a network and the values of its parameters, with what it does on its own:
//! evaluate a dataset and predict from rows of features, each through a [`Run`] (a
//! forward-only one for prediction). Training it is `trainer.rs`'s job.

use crate::data::{Dataset, Scaler, Targets};
use crate::error::Result;
use crate::exec::Device;
use crate::metrics::RegressionMetrics;
use crate::network::{Init, Network, Parameters};
use crate::ops::Loss;
use crate::run::Run;

pub use crate::run::Evaluation;

/// A network and the values of its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub network: Network,
    pub params: Parameters,
}

impl Model {
    /// A network with seeded initial parameters.
    pub fn new(network: Network, init: Init, seed: u64) -> Result<Model> {
        network.validate()?;
        let params = Parameters::init(&network, init, seed);
        Ok(Model { network, params })
    }

    /// A network with given parameters (checked against its shapes).
    pub fn with_params(network: Network, params: Parameters) -> Result<Model> {
        network.validate()?;
        params.check(&network, "parameters")?;
        Ok(Model { network, params })
    }

    /// Loss and accuracy over `data` (one submission for all batches on the GPU).
    pub fn evaluate(
        &self,
        device: Device<'_>,
        loss: Loss,
        data: &Dataset,
        batch: usize,
    ) -> Result<Evaluation> {
        let mut run = Run::new(
            device,
            &self.network,
            &self.params,
            loss,
            None,
            None,
            Some(data),
            batch,
        )?;
        run.evaluate()
    }

    /// RMSE, MAE and R² (see [`crate::metrics`]) of the model's predictions for `data` in
    /// the targets' own units: where the targets were scaled for training by
    /// `target_scaler`, both the predictions and `data`'s targets are mapped back with it
    /// first. `None` for classification data or no rows.
    pub fn regression_metrics(
        &self,
        device: Device<'_>,
        data: &Dataset,
        target_scaler: Option<&Scaler>,
    ) -> Result<Option<RegressionMetrics>> {
        let Targets::Values { values, width } = &data.targets else {
            return Ok(None);
        };
        let mut predicted = self.predict(device, &data.features, data.len())?;
        let mut targets = values.clone();
        if let Some(s) = target_scaler {
            for row in predicted.chunks_mut((*width).max(1)) {
                s.invert_row(row)?;
            }
            for row in targets.chunks_mut((*width).max(1)) {
                s.invert_row(row)?;
            }
        }
        Ok(crate::metrics::regression(&predicted, &targets, *width))
    }

    /// The network's outputs for `rows` samples of `x` (row-major, `rows x inputs`):
    /// `rows x outputs` values, computed on `device` in batches by a forward-only run.
    pub fn predict(&self, device: Device<'_>, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let outputs = self.network.output_width();
        let mut out = Vec::with_capacity(rows * outputs);
        let Some(mut run) = self.forward_run(device, x, rows)? else {
            return Ok(out);
        };
        let last = run
            .plan
            .layers
            .last()
            .map(|l| l.out)
            .unwrap_or(run.plan.input);
        for s in 0..run.bufs(crate::exec::Pass::Eval)?.steps {
            let live = run.eval_batch(s)?;
            out.extend_from_slice(&run.exec.read_f32(last)?[..live * outputs]);
        }
        Ok(out)
    }

    /// A forward-only run over `rows` samples of `x`; `None` for zero rows (after checking
    /// that `x` holds them).
    pub(crate) fn forward_run<'a>(
        &self,
        device: Device<'a>,
        x: &[f32],
        rows: usize,
    ) -> Result<Option<Run<'a>>> {
        if rows == 0 {
            let inputs = self.network.input_width();
            if !x.is_empty() {
                return Err(crate::error::Error::shape(
                    "forward pass",
                    format!("0 x {inputs} values"),
                    x.len(),
                ));
            }
            return Ok(None);
        }
        Run::forward(device, &self.network, &self.params, x, rows).map(Some)
    }
}
