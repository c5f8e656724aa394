//! [`Fit`]: training a [`Model`] in one call, set up as a builder. It holds the model's
//! preprocessing (what it fits, it fits on the training rows only, after the validation rows
//! are held out), the loss, optimizer and [`TrainConfig`], the validation data and an epoch
//! callback, then builds a [`Trainer`] and runs it to the end. Its defaults are `soma
//! train`'s: Adam at 1e-3 and [`TrainConfig::default`].

use std::borrow::Cow;

use super::{EpochMetrics, Flow, History, Model, Trainer};
use crate::data::{Dataset, ImputeKind, Imputer, ScaleKind, Scaler, Targets};
use crate::error::{Error, Result};
use crate::exec::Device;
use crate::ops::Loss;
use crate::optim::{Optimizer, Schedule};
use crate::trainer::{EarlyStopping, TrainConfig};

/// What `Fit::on_epoch` calls.
type OnEpoch<'f> = Box<dyn FnMut(&EpochMetrics) -> Flow + 'f>;

/// Trains a model: `Fit::new(&mut model).loss(..).optimizer(..).epochs(..).run(device,
/// &train)`. `run` leaves the trained parameters, the fitted preprocessing, the loss and the
/// training data's names in the model (after a divergence too: then the parameters of the
/// last good step), so that [`Model::save`] keeps all of it.
///
/// ```
/// use soma::data::{self, ScaleKind};
/// use soma::{Activation, Device, Fit, Init, Loss, Model, Network, Optimizer};
///
/// let (train, test) = data::bundled("iris")?.split(0.2, 0)?;
/// let net = Network::mlp(&[4, 16, 3], Activation::Relu, Activation::Identity)?;
/// let mut model = Model::new(net, Init::Pytorch, 0)?;
/// let history = Fit::new(&mut model)
///     .loss(Loss::SoftmaxCrossEntropy)
///     .optimizer(Optimizer::adam(1e-2))
///     .epochs(100)
///     .scale(ScaleKind::Standard)
///     .on_epoch(|m| println!("epoch {}: loss {:.4}", m.epoch, m.train_loss))
///     .run(Device::Cpu, &train)?;
/// let score = model.evaluate(Device::Cpu, &test, 64)?;
/// assert_eq!(history.epochs.len(), 100);
/// assert!(score.accuracy.unwrap() > 0.8);
/// # Ok::<(), soma::Error>(())
/// ```
pub struct Fit<'m, 'f> {
    model: &'m mut Model,
    optimizer: Optimizer,
    config: TrainConfig,
    validation: Option<&'f Dataset>,
    impute: Option<ImputeKind>,
    scale: Option<ScaleKind>,
    scale_target: Option<ScaleKind>,
    on_epoch: Option<OnEpoch<'f>>,
}

impl<'m, 'f> Fit<'m, 'f> {
    /// Training of `model` with its own loss, Adam at 1e-3, [`TrainConfig::default`], and
    /// its preprocessing as it is (none fitted).
    pub fn new(model: &'m mut Model) -> Self {
        Fit {
            model,
            optimizer: Optimizer::default(),
            config: TrainConfig::default(),
            validation: None,
            impute: None,
            scale: None,
            scale_target: None,
            on_epoch: None,
        }
    }

    /// The loss to train with; the model keeps it (for `evaluate` and `save`).
    pub fn loss(self, loss: Loss) -> Self {
        self.model.loss = loss;
        self
    }

    pub fn optimizer(mut self, optimizer: Optimizer) -> Self {
        self.optimizer = optimizer;
        self
    }

    /// Every training setting at once (the others below set one field of it).
    pub fn config(mut self, config: TrainConfig) -> Self {
        self.config = config;
        self
    }

    pub fn epochs(mut self, epochs: usize) -> Self {
        self.config.epochs = epochs;
        self
    }

    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.config.batch_size = batch_size;
        self
    }

    /// The seed of the shuffles and of the validation split.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.config.schedule = schedule;
        self
    }

    pub fn early_stopping(mut self, early_stopping: EarlyStopping) -> Self {
        self.config.early_stopping = Some(early_stopping);
        self
    }

    /// Validate on this data (raw features: the model's preprocessing is applied) instead of
    /// a fraction of the training rows.
    pub fn validation(mut self, validation: &'f Dataset) -> Self {
        self.validation = Some(validation);
        self
    }

    /// Hold out this fraction of the training rows for validation (seeded, stratified by
    /// class); `None` validates on nothing. Ignored when `validation` gives a dataset.
    pub fn validation_fraction(mut self, fraction: Option<f32>) -> Self {
        self.config.validation_fraction = fraction;
        self
    }

    /// Fit an imputer of missing features (NaN) on the training rows, and keep it.
    pub fn impute(mut self, kind: ImputeKind) -> Self {
        self.impute = Some(kind);
        self
    }

    /// Fit a feature scaler on the training rows (after imputation), and keep it.
    pub fn scale(mut self, kind: ScaleKind) -> Self {
        self.scale = Some(kind);
        self
    }

    /// Fit a scaler of regression targets on the training rows, and keep it (predictions
    /// are mapped back).
    pub fn scale_target(mut self, kind: ScaleKind) -> Self {
        self.scale_target = Some(kind);
        self
    }

    /// Called with each epoch's metrics as it ends; returning [`Flow::Stop`] stops training
    /// there (a closure that returns nothing goes on).
    pub fn on_epoch<R: Into<Flow>>(mut self, mut f: impl FnMut(&EpochMetrics) -> R + 'f) -> Self {
        self.on_epoch = Some(Box::new(move |m| f(m).into()));
        self
    }

    /// Trains on `train` (raw features) on `device`; the epochs' history.
    pub fn run(self, device: Device<'_>, train: &Dataset) -> Result<History> {
        let Fit {
            model,
            optimizer,
            config,
            validation,
            impute,
            scale,
            scale_target,
            mut on_epoch,
        } = self;
        let split;
        let (train, validation) = match (validation, config.validation_fraction) {
            (Some(v), _) => (train, Some(v)),
            (None, Some(f)) => {
                split = train.split(f, config.seed)?;
                (&split.0, Some(&split.1))
            }
            (None, None) => (train, None),
        };
        if let Some(kind) = impute {
            model.imputer = Some(Imputer::fit(kind, train)?);
        }
        if let Some(kind) = scale {
            let mut filled = Cow::Borrowed(train);
            if let Some(i) = &model.imputer {
                i.apply(filled.to_mut())?;
            }
            model.scaler = Some(Scaler::fit(kind, &filled));
        }
        if let Some(kind) = scale_target {
            let Targets::Values { values, width } = &train.targets else {
                return Err(Error::Config(format!(
                    "scale_target: '{}' holds classes, not regression targets",
                    train.name
                )));
            };
            model.target_scaler = Some(Scaler::fit_values(kind, values, *width));
        }
        if model.names.is_empty() {
            model.names = train.names.clone();
        }
        let train = model.prepare(train)?;
        let validation = validation.map(|v| model.prepare(v)).transpose()?;
        let mut trainer = Trainer::new(
            device,
            model,
            model.loss,
            optimizer,
            &train,
            validation.as_deref(),
            &config,
        )?;
        let result = trainer.fit(
            |_, m| {
                Ok(match on_epoch.as_mut() {
                    Some(f) => f(m),
                    None => Flow::Continue,
                })
            },
            |_| {},
        );
        match result {
            Ok(h) => {
                model.params = trainer.parameters()?;
                Ok(h)
            }
            Err(e @ Error::Diverged { .. }) => {
                model.params = trainer.parameters()?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}
