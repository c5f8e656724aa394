//! [`Model`]: a network, the values of its parameters, and what using it needs besides: the
//! loss it is trained with, the preprocessing of its inputs (missing values filled, features
//! scaled), the scaling of regression targets, and the names of its columns and classes. A
//! model evaluates a dataset and predicts from rows of raw features, each through a [`Run`]
//! (a forward-only one for prediction), and saves to and loads from a checkpoint file.
//! Training it is `trainer`'s job ([`Fit`](crate::trainer::Fit)).
//!
//! Preprocessing belongs to the model: where it has an imputer or a scaler, every method that
//! takes features (`evaluate`, `predict`, `predict_proba`, `predict_classes`, and training
//! through `Fit`) takes them raw and applies both first, as the checkpoint's users
//! (`soma predict`, the exports) do. A model without them takes the features as they are.

use crate::math::Math;

use std::path::Path;

use crate::checkpoint::{self, Checkpoint};
use crate::data::{Dataset, Imputer, Names, Scaler, Targets};
use crate::error::{Error, Result};
use crate::exec::Device;
use crate::metrics::RegressionMetrics;
use crate::network::{Init, Network, Parameters};
use crate::ops::Loss;
use crate::run::Run;

pub use crate::run::Evaluation;

/// A network, the values of its parameters, and what using it needs (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub network: Network,
    pub params: Parameters,
    /// The loss it is trained and evaluated with.
    pub loss: Loss,
    /// Fills missing features (NaN) before the scaling.
    pub imputer: Option<Imputer>,
    /// Scales the features before the network sees them.
    pub scaler: Option<Scaler>,
    /// The scaling of regression targets the network was trained on: its outputs are in
    /// those units, and `predict` maps them back.
    pub target_scaler: Option<Scaler>,
    /// The names of its feature columns, label column and classes (empty where unnamed).
    pub names: Names,
}

impl Model {
    /// A network with seeded initial parameters, no preprocessing, and the loss its output
    /// suggests: softmax cross-entropy for two or more outputs, MSE for one (set `loss`, or
    /// `Fit::loss`, for another).
    pub fn new(network: Network, init: Init, seed: u64) -> Result<Model> {
        network.validate()?;
        let params = Parameters::init(&network, init, seed);
        Ok(Model::plain(network, params))
    }

    /// A network with given parameters (checked against its shapes), as [`Model::new`]
    /// makes it otherwise.
    pub fn with_params(network: Network, params: Parameters) -> Result<Model> {
        network.validate()?;
        params.check(&network, "parameters")?;
        Ok(Model::plain(network, params))
    }

    fn plain(network: Network, params: Parameters) -> Model {
        let loss = match network.output_width() {
            1 => Loss::Mse,
            _ => Loss::SoftmaxCrossEntropy,
        };
        Model {
            network,
            params,
            loss,
            imputer: None,
            scaler: None,
            target_scaler: None,
            names: Names::default(),
        }
    }

    /// This model with `loss`.
    pub fn with_loss(mut self, loss: Loss) -> Model {
        self.loss = loss;
        self
    }

    /// The model a checkpoint holds (its resume state, if any, left out).
    pub fn from_checkpoint(ck: Checkpoint) -> Result<Model> {
        let mut model = Model::with_params(ck.network, ck.params)?;
        model.loss = ck.loss;
        model.imputer = ck.imputer;
        model.scaler = ck.scaler;
        model.target_scaler = ck.target_scaler;
        model.names = ck.names;
        Ok(model)
    }

    /// The checkpoint that holds this model (no resume state).
    pub fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            network: self.network.clone(),
            params: self.params.clone(),
            loss: self.loss,
            scaler: self.scaler.clone(),
            classes: self.classes(),
            target_scaler: self.target_scaler.clone(),
            names: self.names.clone(),
            imputer: self.imputer.clone(),
            resume: None,
        }
    }

    /// Reads a model from a checkpoint file written by [`Model::save`] or `soma train`
    /// (a run directory's `checkpoint.safetensors`), with every check of
    /// [`checkpoint::load`].
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Model::from_checkpoint(checkpoint::load(path.as_ref())?)
    }

    /// Writes the model to a checkpoint file (safetensors, PyTorch's `nn.Linear` keys, the
    /// loss, preprocessing and names in its metadata), atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        checkpoint::save(path.as_ref(), &self.to_checkpoint())
    }

    /// The number of classes it tells apart: its outputs with cross-entropy (2 for a single
    /// output with binary cross-entropy), or its named classes; `None` for a regressor.
    pub fn classes(&self) -> Option<usize> {
        let out = self.network.output_width();
        match self.loss {
            Loss::SoftmaxCrossEntropy => Some(out),
            Loss::BinaryCrossEntropy => Some(if out == 1 { 2 } else { out }),
            Loss::Mse => (!self.names.classes.is_empty()).then_some(self.names.classes.len()),
        }
    }

    /// `data` with the model's imputer and scaler applied to its features and its target
    /// scaling to regression targets; borrowed unchanged when there are none.
    pub fn prepare<'d>(&self, data: &'d Dataset) -> Result<std::borrow::Cow<'d, Dataset>> {
        if self.imputer.is_none() && self.scaler.is_none() && self.target_scaler.is_none() {
            return Ok(std::borrow::Cow::Borrowed(data));
        }
        let mut d = data.clone();
        if let Some(i) = &self.imputer {
            i.apply(&mut d)?;
        }
        if let Some(s) = &self.scaler {
            s.apply(&mut d)?;
        }
        if let (Some(s), Targets::Values { values, width }) = (&self.target_scaler, &mut d.targets)
        {
            for row in values.chunks_mut((*width).max(1)) {
                s.apply_row(row)?;
            }
        }
        Ok(std::borrow::Cow::Owned(d))
    }

    /// Raw feature rows `x` (`rows x inputs`) with the model's imputer and scaler applied.
    fn prepare_rows<'x>(&self, x: &'x [f32]) -> Result<std::borrow::Cow<'x, [f32]>> {
        if self.imputer.is_none() && self.scaler.is_none() {
            return Ok(std::borrow::Cow::Borrowed(x));
        }
        let width = self.network.input_width();
        let mut x = x.to_vec();
        for row in x.chunks_mut(width.max(1)) {
            if let Some(i) = &self.imputer {
                i.fill_row(row);
            }
            if let Some(s) = &self.scaler {
                s.apply_row(row)?;
            }
        }
        Ok(std::borrow::Cow::Owned(x))
    }

    /// Loss (the model's own) and accuracy over `data`, its features raw (the model's
    /// preprocessing is applied), in batches of `batch` rows: one submission for all batches
    /// on the GPU.
    pub fn evaluate(&self, device: Device<'_>, data: &Dataset, batch: usize) -> Result<Evaluation> {
        self.evaluate_in(device, data, batch, crate::exec::Determinism::Default)
    }

    /// [`Model::evaluate`] keeping `determinism`'s promise: under `Determinism::Strict`,
    /// strict kernels and soma's own arithmetic, so the loss and accuracy have the same bits
    /// on every adapter that passes the strict self-test and on the CPU (docs/determinism.md).
    pub fn evaluate_in(
        &self,
        device: Device<'_>,
        data: &Dataset,
        batch: usize,
        determinism: crate::exec::Determinism,
    ) -> Result<Evaluation> {
        let data = self.prepare(data)?;
        let mut run = Run::new(
            device,
            &self.network,
            &self.params,
            self.loss,
            None,
            None,
            Some(&data),
            batch,
            determinism,
        )?;
        run.evaluate()
    }

    /// RMSE, MAE and R² (see [`crate::metrics`]) of the model's predictions for `data` (raw
    /// features and targets, in the targets' own units: [`Model::predict`] maps the outputs
    /// back through the target scaling). `None` for classification data or no rows.
    pub fn regression_metrics(
        &self,
        device: Device<'_>,
        data: &Dataset,
    ) -> Result<Option<RegressionMetrics>> {
        let Targets::Values { values, width } = &data.targets else {
            return Ok(None);
        };
        let predicted = self.predict(device, &data.features, data.len())?;
        Ok(crate::metrics::regression(&predicted, values, *width))
    }

    /// The network's outputs for `rows` samples of raw features `x` (row-major,
    /// `rows x inputs`; the model's preprocessing is applied): `rows x outputs` values,
    /// computed on `device` in batches by a forward-only run. A regressor's outputs are
    /// mapped back to the targets' units by its target scaling; a classifier's are its
    /// logits (see [`Model::predict_proba`]).
    pub fn predict(&self, device: Device<'_>, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let mut out = self.outputs(device, x, rows)?;
        if let Some(s) = &self.target_scaler {
            for row in out.chunks_mut(self.network.output_width().max(1)) {
                s.invert_row(row)?;
            }
        }
        Ok(out)
    }

    /// Class probabilities for `rows` samples of raw features `x`: `rows x classes` values,
    /// each row summing to 1 (see [`Model::probabilities`]). An error for a model trained
    /// with MSE, which predicts values, not classes.
    pub fn predict_proba(&self, device: Device<'_>, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.check_classifier("predict_proba")?;
        let out = self.outputs(device, x, rows)?;
        self.probabilities(&out)
    }

    /// The class of each of `rows` samples of raw features `x` (see [`Model::classes_of`]).
    /// An error for a model trained with MSE. [`Names::class`] names a class.
    pub fn predict_classes(&self, device: Device<'_>, x: &[f32], rows: usize) -> Result<Vec<u32>> {
        self.check_classifier("predict_classes")?;
        let out = self.outputs(device, x, rows)?;
        Ok(self.classes_of(&out))
    }

    fn check_classifier(&self, what: &str) -> Result<()> {
        match self.loss {
            Loss::SoftmaxCrossEntropy | Loss::BinaryCrossEntropy => Ok(()),
            Loss::Mse => Err(Error::Config(format!(
                "{what}: the model is trained with mse and predicts values, not classes"
            ))),
        }
    }

    /// Class probabilities from the network's outputs (logits, `rows x outputs`): the
    /// softmax of each row with cross-entropy (the kernel's twin, `cpu::softmax`: from the
    /// row's maximum, so that no exponential overflows); with binary cross-entropy the sigmoid `p` of each output, as
    /// `[1 - p, p]` for a single one. A model trained with MSE has outputs, not
    /// probabilities: they come back unchanged.
    pub fn probabilities(&self, outputs: &[f32]) -> Result<Vec<f32>> {
        let width = self.network.output_width().max(1);
        Ok(match self.loss {
            Loss::SoftmaxCrossEntropy => {
                let mut p = vec![0.0; outputs.len()];
                crate::cpu::softmax(&mut p, outputs, &self.rows_of(outputs), Math::Native);
                p
            }
            Loss::BinaryCrossEntropy if width == 1 => outputs
                .iter()
                .flat_map(|&v| {
                    let p = crate::cpu::sigmoid(v, Math::Native);
                    [1.0 - p, p]
                })
                .collect(),
            Loss::BinaryCrossEntropy => outputs
                .iter()
                .map(|&v| crate::cpu::sigmoid(v, Math::Native))
                .collect(),
            Loss::Mse => outputs.to_vec(),
        })
    }

    /// The class each row of the network's outputs (`rows x outputs`) predicts: the largest
    /// output (the first of equals); for a single output, 1 where it is ≥ the threshold (0
    /// for a logit, 0.5 for a model trained with MSE on 0/1 targets).
    pub fn classes_of(&self, outputs: &[f32]) -> Vec<u32> {
        let p = self.rows_of(outputs);
        if p.cols == 1 {
            let threshold = if self.loss == Loss::Mse { 0.5 } else { 0.0 };
            return outputs.iter().map(|&v| (v >= threshold) as u32).collect();
        }
        let mut classes = vec![0; p.rows as usize];
        crate::cpu::argmax(&mut classes, outputs, &p);
        classes
    }

    /// `outputs` as rows of the network's output width, for the row-wise twins.
    fn rows_of(&self, outputs: &[f32]) -> crate::ops::uniforms::RowsParams {
        let cols = self.network.output_width().max(1);
        crate::ops::uniforms::RowsParams {
            rows: (outputs.len() / cols) as u32,
            cols: cols as u32,
            ..Default::default()
        }
    }

    /// The network's raw outputs for raw features `x` (preprocessing applied).
    fn outputs(&self, device: Device<'_>, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let x = self.prepare_rows(x)?;
        let outputs = self.network.output_width();
        let mut out = Vec::with_capacity(rows * outputs);
        let Some(mut run) = self.forward_run(device, &x, rows)? else {
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
