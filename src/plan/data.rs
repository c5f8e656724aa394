//! What a plan needs of a dataset: whether it fits the network and the loss
//! ([`check_inputs`]), what its targets become for the loss ([`targets_for`]), whether its
//! features can travel as bytes ([`pixel_bytes`]), and the layout the plan allocates for it.

use crate::data::{Dataset, Targets};
use crate::error::{Error, Result};
use crate::network::{Activation, Network};
use crate::ops::loss::Loss;

/// What the plan needs to know of a dataset to lay out its buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Layout {
    pub(super) rows: usize,
    pub(super) width: usize,
    /// The features are kept as bytes (8-bit pixels of a large table).
    pub(super) bytes: bool,
    pub(super) labels: bool,
    pub(super) values: bool,
    /// Classification data: the pass counts correct predictions.
    pub(super) classes: bool,
}

impl Layout {
    pub(super) fn of(loss: Loss, outputs: usize, d: &Dataset) -> Result<Layout> {
        let (labels, values) = targets_for(loss, outputs, d)?;
        Ok(Layout {
            rows: d.len(),
            width: d.width,
            // Bytes only pay where the table is large; small sets stay f32.
            bytes: d.features.len() >= 1 << 20 && pixel_bytes(&d.features).is_some(),
            labels: labels.is_some(),
            values: values.is_some(),
            classes: d.targets.classes().is_some(),
        })
    }
}

/// What the targets of a dataset become for a loss on a network with `outputs` outputs:
/// (labels for accuracy, values for the loss).
#[allow(clippy::type_complexity)]
pub fn targets_for(
    loss: Loss,
    outputs: usize,
    data: &Dataset,
) -> Result<(Option<Vec<u32>>, Option<Vec<f32>>)> {
    match (&data.targets, loss) {
        (Targets::Classes { labels, classes }, Loss::SoftmaxCrossEntropy) => {
            if *classes > outputs {
                return Err(Error::Data(format!(
                    "{}: labels go up to {} but the network has {outputs} outputs",
                    data.name,
                    classes - 1
                )));
            }
            Ok((Some(labels.clone()), None))
        }
        (Targets::Classes { labels, classes }, Loss::Mse | Loss::BinaryCrossEntropy) => {
            let values = if outputs == 1 && *classes <= 2 {
                labels.iter().map(|&l| l as f32).collect()
            } else if *classes <= outputs {
                let mut v = vec![0.0; labels.len() * outputs];
                for (r, &l) in labels.iter().enumerate() {
                    v[r * outputs + l as usize] = 1.0;
                }
                v
            } else {
                return Err(Error::Data(format!(
                    "{}: {classes} classes do not fit {outputs} outputs (one-hot for {loss}, or one output for two classes)",
                    data.name
                )));
            };
            Ok((Some(labels.clone()), Some(values)))
        }
        (Targets::Values { .. }, Loss::SoftmaxCrossEntropy) => Err(Error::Config(format!(
            "{}: cross_entropy needs class labels, but the targets are real values (use mse)",
            data.name
        ))),
        (Targets::Values { values, width }, _) => {
            if *width != outputs {
                return Err(Error::Data(format!(
                    "{}: targets are {width} wide but the network has {outputs} outputs",
                    data.name
                )));
            }
            Ok((None, Some(values.clone())))
        }
    }
}

/// Checks what a run can be asked to do before anything is allocated.
pub fn check_inputs(network: &Network, loss: Loss, data: &Dataset, batch: usize) -> Result<()> {
    network.validate()?;
    if batch == 0 {
        return Err(Error::Config("batch size must be at least 1".into()));
    }
    if data.is_empty() {
        return Err(Error::Data(format!("{}: the dataset is empty", data.name)));
    }
    if data.width != network.input_width() {
        return Err(Error::Data(format!(
            "{}: samples have {} features but the network takes {}",
            data.name,
            data.width,
            network.input_width()
        )));
    }
    data.validate()?;
    let last = network.layers.last().map(|l| l.activation);
    if matches!(loss, Loss::SoftmaxCrossEntropy | Loss::BinaryCrossEntropy)
        && last != Some(Activation::Identity)
    {
        return Err(Error::Config(format!(
            "{loss} takes logits: the output layer's activation must be identity, not {}",
            last.unwrap_or(Activation::Identity)
        )));
    }
    Ok(())
}

/// 8-bit features are stored as bytes and divided by this in the gather.
pub const PIXEL_DIVISOR: f32 = 255.0;

/// The features as bytes when every value is exactly `byte / 255` (as the IDX loader makes
/// them), so the byte gather reproduces them bit for bit; `None` otherwise.
pub fn pixel_bytes(features: &[f32]) -> Option<Vec<u8>> {
    features
        .iter()
        .map(|&v| {
            let q = (v * PIXEL_DIVISOR).round();
            (0.0..=255.0)
                .contains(&q)
                .then_some(q as u8)
                .filter(|&b| b as f32 / PIXEL_DIVISOR == v)
        })
        .collect()
}
