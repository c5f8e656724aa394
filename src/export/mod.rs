//! Exporting a trained model for other runtimes: ONNX ([`onnx`]), plain PyTorch safetensors
//! ([`safetensors`]) and JSON ([`json`]). Each starts from an [`Inference`]: the fill values
//! of missing features (the imputer, when the model was trained with one), the input scaling
//! still to apply (or none, once folded into the first layer), the network and its
//! parameters, the [`Head`] that turns the last layer's outputs into what `soma predict`
//! gives, and the names of the features, the target and the classes. A row goes through them
//! in that order: fill, scale, network, head.
//!
//! This module owns what an export computes; it does not read or write files (the command
//! does) and does not touch a device. [`Inference::forward`] is a plain-Rust forward pass of
//! exactly that computation, the yardstick the formats are tested against.

pub mod json;
pub mod onnx;
mod proto;
pub mod safetensors;

use crate::math::Math;

use crate::checkpoint::Checkpoint;
use crate::data::{Imputer, Names, Scaler};
use crate::error::{Error, Result};
use crate::network::{Network, Parameters};
use crate::ops::activation::cpu::{apply, sigmoid};
use crate::ops::loss::Loss;

/// The file formats an export writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Onnx,
    Safetensors,
    Json,
}

/// Where the input scaling goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scaling {
    /// Kept as its own step (the exported model or its metadata scales raw features first).
    #[default]
    Separate,
    /// Folded into the first layer, whose weights then take raw features.
    Folded,
}

/// What follows the last layer: the numbers `soma predict` prints for each row.
#[derive(Clone, Debug, PartialEq)]
pub enum Head {
    /// Softmax over the outputs (a softmax cross-entropy classifier): class probabilities.
    Softmax,
    /// The logistic function of the single output (binary cross-entropy): P(class 1).
    Sigmoid,
    /// The outputs themselves, mapped back to the targets' units by `x / scale + offset`
    /// when the targets were scaled for training (regression, and binary cross-entropy
    /// with more than one output).
    Values { target: Option<Scaler> },
}

impl Head {
    /// The head `soma predict` applies for this loss and output width.
    pub fn of(loss: Loss, outputs: usize, target: Option<&Scaler>) -> Head {
        match loss {
            Loss::SoftmaxCrossEntropy => Head::Softmax,
            Loss::BinaryCrossEntropy if outputs == 1 => Head::Sigmoid,
            Loss::BinaryCrossEntropy | Loss::Mse => Head::Values {
                target: target.cloned(),
            },
        }
    }

    /// Its name in the exports' metadata: `softmax`, `sigmoid` or `values`.
    pub fn name(&self) -> &'static str {
        match self {
            Head::Softmax => "softmax",
            Head::Sigmoid => "sigmoid",
            Head::Values { .. } => "values",
        }
    }

    /// Applies the head to one row of the last layer's outputs, in place.
    fn apply_row(&self, row: &mut [f32]) -> Result<()> {
        match self {
            Head::Softmax => {
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = row.iter().map(|v| (v - m).exp()).sum();
                for v in row.iter_mut() {
                    *v = (*v - m).exp() / s;
                }
            }
            Head::Sigmoid => {
                for v in row.iter_mut() {
                    *v = sigmoid(*v, Math::Native);
                }
            }
            Head::Values { target: None } => {}
            Head::Values { target: Some(t) } => t.invert_row(row)?,
        }
        Ok(())
    }
}

/// A model as an export writes it: what to compute from a row of raw features.
#[derive(Clone, Debug, PartialEq)]
pub struct Inference {
    /// The value each missing feature (NaN) of a raw row becomes, before any scaling; `None`
    /// when the model was trained without one (a NaN then goes through as NaN).
    pub imputer: Option<Imputer>,
    pub network: Network,
    pub params: Parameters,
    /// The input scaling to apply to raw features first; `None` when the checkpoint has none
    /// or it was folded into the first layer.
    pub scaler: Option<Scaler>,
    pub head: Head,
    /// The number of classes, when the checkpoint records it.
    pub classes: Option<usize>,
    /// The names of the features, the target column and the classes (empty where the
    /// training data had none).
    pub names: Names,
}

impl Inference {
    /// The checkpoint's model, with its input scaling kept apart or folded into the first
    /// layer (the imputer, if any, fills raw features either way). Errors when folding would
    /// give a non-finite weight or bias, or when the imputer is not one value per feature.
    pub fn from_checkpoint(ck: &Checkpoint, scaling: Scaling) -> Result<Inference> {
        ck.params.check(&ck.network, "checkpoint")?;
        if let Some(i) = &ck.imputer {
            if i.values.len() != ck.network.input_width() {
                return Err(Error::shape(
                    "the checkpoint's imputer",
                    format!("{} fill values", ck.network.input_width()),
                    i.values.len(),
                ));
            }
        }
        let head = Head::of(
            ck.loss,
            ck.network.output_width(),
            ck.target_scaler.as_ref(),
        );
        let (network, params, scaler) = match (scaling, &ck.scaler) {
            (Scaling::Folded, Some(s)) => {
                let (n, p) = fold_scaling(&ck.network, &ck.params, s)?;
                (n, p, None)
            }
            (Scaling::Folded, None) | (Scaling::Separate, None) => {
                (ck.network.clone(), ck.params.clone(), None)
            }
            (Scaling::Separate, Some(s)) => {
                (ck.network.clone(), ck.params.clone(), Some(s.clone()))
            }
        };
        Ok(Inference {
            imputer: ck.imputer.clone(),
            network,
            params,
            scaler,
            head,
            classes: ck.classes,
            names: ck.names.clone(),
        })
    }

    /// The exported computation in plain Rust: each NaN feature filled with the imputer's
    /// value (when there is one), scaling, every layer (`x · Wᵀ + b` summed in
    /// input order, then the activation), the head. `x` is `rows` rows of raw features.
    pub fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let width = self.network.input_width();
        if x.len() != rows * width {
            return Err(Error::shape(
                "Inference::forward",
                format!("{rows} rows of {width} features"),
                format!("{} values", x.len()),
            ));
        }
        let mut out = Vec::with_capacity(rows * self.network.output_width());
        for row in x.chunks_exact(width.max(1)).take(rows) {
            let mut a = row.to_vec();
            if let Some(i) = &self.imputer {
                i.fill_row(&mut a);
            }
            if let Some(s) = &self.scaler {
                s.apply_row(&mut a)?;
            }
            for (l, p) in self.network.layers.iter().zip(&self.params.layers) {
                a = p
                    .weight
                    .chunks_exact(l.inputs)
                    .enumerate()
                    .map(|(o, w)| {
                        let z = w.iter().zip(&a).fold(0.0f32, |s, (w, x)| s + w * x);
                        let z = p.bias.as_ref().map_or(z, |b| z + b[o]);
                        apply(l.activation, z, Math::Native)
                    })
                    .collect();
            }
            self.head.apply_row(&mut a)?;
            out.extend_from_slice(&a);
        }
        Ok(out)
    }
}

/// The first layer with the input scaling `x' = (x - offset) * scale` folded in, so that it
/// takes raw features: `W' = W · diag(scale)` and `b' = b - W' · offset` (a layer without a
/// bias gains one). The products are exact in f64 and the sums are rounded to f32 once.
pub fn fold_scaling(
    net: &Network,
    params: &Parameters,
    scaler: &Scaler,
) -> Result<(Network, Parameters)> {
    params.check(net, "fold_scaling")?;
    let first = net
        .layers
        .first()
        .ok_or_else(|| Error::Config("a network needs at least one layer".into()))?;
    if scaler.offset.len() != first.inputs || scaler.scale.len() != first.inputs {
        return Err(Error::shape(
            "fold_scaling",
            format!("a scaler of {} columns", first.inputs),
            format!(
                "offset {} and scale {}",
                scaler.offset.len(),
                scaler.scale.len()
            ),
        ));
    }
    let p = &params.layers[0];
    let mut weight = Vec::with_capacity(p.weight.len());
    let mut bias = Vec::with_capacity(first.outputs);
    for (o, w) in p.weight.chunks_exact(first.inputs).enumerate() {
        let mut b = p.bias.as_ref().map_or(0.0, |b| f64::from(b[o]));
        for ((&w, &s), &t) in w.iter().zip(&scaler.scale).zip(&scaler.offset) {
            let folded = f64::from(w) * f64::from(s);
            weight.push(folded as f32);
            b -= folded * f64::from(t);
        }
        bias.push(b as f32);
    }
    if let Some(i) = weight.iter().chain(&bias).position(|v| !v.is_finite()) {
        let what = if i < weight.len() {
            format!("weight [{}, {}]", i / first.inputs, i % first.inputs)
        } else {
            format!("bias [{}]", i - weight.len())
        };
        return Err(Error::Config(format!(
            "folding the input scaling into the first layer gives a non-finite {what}; export without folding"
        )));
    }
    let mut network = net.clone();
    network.layers[0].bias = true;
    let mut folded = params.clone();
    folded.layers[0].weight = weight;
    folded.layers[0].bias = Some(bias);
    Ok((network, folded))
}

/// The model of `ck` in `format`, as the bytes of the file.
pub fn export(ck: &Checkpoint, format: Format, scaling: Scaling) -> Result<Vec<u8>> {
    let inference = Inference::from_checkpoint(ck, scaling)?;
    match format {
        Format::Onnx => onnx::encode(&inference),
        Format::Safetensors => safetensors::encode(&inference),
        Format::Json => json::encode(&inference).map(String::into_bytes),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::ScaleKind;
    use crate::network::{Activation, Init, Layer};
    use crate::rng::Rng;

    /// A network with every activation an export maps, seeded parameters, a standard scaler
    /// with spreads from 1e-3 to 1e3, and `rows` rows of raw features around the offsets.
    pub(crate) fn sample(loss: Loss, outputs: usize, rows: usize) -> (Checkpoint, Vec<f32>) {
        let acts = [
            Activation::Relu,
            Activation::LeakyRelu { slope: 0.1 },
            Activation::Gelu,
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::Identity,
        ];
        let mut widths = vec![7usize];
        widths.extend(std::iter::repeat_n(9, acts.len()));
        widths.push(outputs);
        let mut layers: Vec<Layer> = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| Layer {
                inputs: w[0],
                outputs: w[1],
                activation: acts.get(i).copied().unwrap_or(Activation::Identity),
                bias: true,
            })
            .collect();
        layers[0].bias = false;
        let network = Network { layers };
        let params = Parameters::init(&network, Init::Pytorch, 5);
        let mut rng = Rng::new(9);
        let spread: Vec<f32> = (0..7).map(|c| 10f32.powi(c - 3)).collect();
        let offset: Vec<f32> = (0..7).map(|_| rng.uniform_range(-50.0, 50.0)).collect();
        let scaler = Scaler {
            kind: ScaleKind::Standard,
            offset: offset.clone(),
            scale: spread.iter().map(|s| 1.0 / s).collect(),
        };
        let x = (0..rows * 7)
            .map(|i| offset[i % 7] + spread[i % 7] * rng.uniform_range(-2.0, 2.0))
            .collect();
        let target_scaler = (loss == Loss::Mse).then(|| Scaler {
            kind: ScaleKind::Standard,
            offset: (0..outputs).map(|o| 100.0 + o as f32).collect(),
            scale: vec![0.02; outputs],
        });
        let ck = Checkpoint {
            network,
            params,
            loss,
            scaler: Some(scaler),
            classes: (loss == Loss::SoftmaxCrossEntropy).then_some(outputs),
            target_scaler,
            resume: None,
            imputer: Default::default(),
            names: Default::default(),
        };
        (ck, x)
    }

    /// [`sample`] with an imputer (fill values away from the offsets, so that a fill is not
    /// a no-op after scaling), names (with a comma, quotes and non-ASCII, to be escaped) and
    /// every fourth value of its rows missing: the checkpoint, the rows with NaN, and the
    /// same rows with the fill values written in.
    pub(crate) fn sample_with_gaps(
        loss: Loss,
        outputs: usize,
        rows: usize,
    ) -> (Checkpoint, Vec<f32>, Vec<f32>) {
        let (mut ck, filled) = sample(loss, outputs, rows);
        let scaler = ck.scaler.clone().unwrap();
        let values: Vec<f32> = scaler
            .offset
            .iter()
            .zip(&scaler.scale)
            .enumerate()
            .map(|(c, (o, s))| o + (c as f32 - 3.0) * 0.7 / s)
            .collect();
        let mut gaps = filled.clone();
        let mut filled = filled;
        for (i, (g, f)) in gaps.iter_mut().zip(filled.iter_mut()).enumerate() {
            if i % 4 == 1 {
                *g = f32::NAN;
                *f = values[i % 7];
            }
        }
        ck.imputer = Some(Imputer {
            kind: crate::data::ImputeKind::Mean,
            values,
        });
        ck.names = Names {
            features: (0..7).map(|c| format!("größe \"{c}\", cm")).collect(),
            target: Some("y".into()),
            classes: match ck.classes {
                Some(c) => (0..c).map(|k| format!("class {k}")).collect(),
                None => vec![],
            },
        };
        (ck, gaps, filled)
    }

    /// With an imputer, a NaN feature becomes its fill value before the scaling, folded or
    /// not: the rows with gaps give the outputs of the rows with the values written in, bit
    /// for bit. Without one, a NaN goes into the network.
    #[test]
    fn forward_fills_missing_features_first() {
        let (ck, gaps, filled) = sample_with_gaps(Loss::SoftmaxCrossEntropy, 4, 40);
        assert!(gaps.iter().filter(|v| v.is_nan()).count() >= 40);
        for scaling in [Scaling::Separate, Scaling::Folded] {
            let model = Inference::from_checkpoint(&ck, scaling).unwrap();
            assert_eq!(model.imputer, ck.imputer);
            assert_eq!(model.names, ck.names);
            let got = model.forward(&gaps, 40).unwrap();
            let want = model.forward(&filled, 40).unwrap();
            assert!(got.iter().all(|v| v.is_finite()), "{scaling:?}");
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{scaling:?}"
            );
            // Every row has a gap; without the imputer the NaN goes into the first layer and
            // every row comes out otherwise (NaN, or what ReLU makes of it).
            let mut unfilled = ck.clone();
            unfilled.imputer = None;
            let plain = Inference::from_checkpoint(&unfilled, scaling).unwrap();
            let other = plain.forward(&gaps, 40).unwrap();
            assert!(other.chunks(4).zip(want.chunks(4)).all(|(o, w)| o != w));
        }
        // An imputer of the wrong width is refused.
        let mut wrong = ck.clone();
        wrong.imputer.as_mut().unwrap().values.pop();
        let e = Inference::from_checkpoint(&wrong, Scaling::Separate)
            .unwrap_err()
            .to_string();
        assert!(e.contains("7 fill values"), "{e}");
    }

    /// The folded first layer on raw rows gives the pre-activations of the original layer on
    /// scaled rows, within f32 rounding of the sums: 8 ulps of the largest term summed, since
    /// the folded sum cancels large terms that the scaled one never forms. The full models
    /// then agree within 1e-5.
    #[test]
    fn folded_scaling_matches_scaling_first() {
        let (ck, x) = sample(Loss::SoftmaxCrossEntropy, 4, 50);
        let separate = Inference::from_checkpoint(&ck, Scaling::Separate).unwrap();
        let folded = Inference::from_checkpoint(&ck, Scaling::Folded).unwrap();
        assert_eq!(folded.scaler, None);
        assert!(
            folded.network.layers[0].bias,
            "the folded layer gains a bias"
        );
        assert_eq!(separate.network, ck.network);
        let scaler = ck.scaler.as_ref().unwrap();
        let (w, b) = (
            &folded.params.layers[0].weight,
            folded.params.layers[0].bias.as_ref().unwrap(),
        );
        let w0 = &ck.params.layers[0].weight;
        let mut worst = 0.0f32;
        for raw in x.chunks(7) {
            let mut scaled = raw.to_vec();
            scaler.apply_row(&mut scaled).unwrap();
            for o in 0..9 {
                let row = &w[o * 7..(o + 1) * 7];
                let want: f32 = w0[o * 7..(o + 1) * 7]
                    .iter()
                    .zip(&scaled)
                    .map(|(w, x)| w * x)
                    .sum();
                let got = row.iter().zip(raw).map(|(w, x)| w * x).sum::<f32>() + b[o];
                // Every term either sum forms: W'x, W't (in b') and W(x - t)s.
                let magnitude: f32 = row
                    .iter()
                    .zip(raw)
                    .zip(&scaler.offset)
                    .map(|((w, x), t)| (w * x).abs() + (w * t).abs())
                    .sum();
                let tol = 8.0 * f32::EPSILON * magnitude;
                assert!(
                    (got - want).abs() <= tol,
                    "unit {o}: folded {got}, scaled first {want}, tolerance {tol}"
                );
                worst = worst.max((got - want).abs() / magnitude);
            }
        }
        assert!(
            worst > 0.0,
            "the two forms never differed: is the test blind?"
        );

        let a = separate.forward(&x, 50).unwrap();
        let f = folded.forward(&x, 50).unwrap();
        for (i, (a, f)) in a.iter().zip(&f).enumerate() {
            assert!((a - f).abs() <= 1e-5, "output {i}: {a} vs folded {f}");
        }
        // Folding a model without a scaler changes nothing.
        let mut plain = ck.clone();
        plain.scaler = None;
        let p = Inference::from_checkpoint(&plain, Scaling::Folded).unwrap();
        assert_eq!(
            (p.network, p.params),
            (ck.network.clone(), ck.params.clone())
        );
    }

    /// `b' = b - W' · offset` by hand on one 2-input unit.
    #[test]
    fn fold_golden() {
        let net = Network::mlp(&[2, 1], Activation::Relu, Activation::Identity).unwrap();
        let params = Parameters {
            layers: vec![crate::network::LayerParams {
                weight: vec![2.0, -3.0],
                bias: Some(vec![0.5]),
            }],
        };
        let s = Scaler {
            kind: ScaleKind::Standard,
            offset: vec![1.0, 4.0],
            scale: vec![0.5, 0.25],
        };
        let (_, p) = fold_scaling(&net, &params, &s).unwrap();
        // W' = [2 * 0.5, -3 * 0.25] = [1, -0.75]; b' = 0.5 - (1 * 1 + -0.75 * 4) = 2.5.
        assert_eq!(p.layers[0].weight, vec![1.0, -0.75]);
        assert_eq!(p.layers[0].bias, Some(vec![2.5]));
        // A scale that overflows the weight is an error, not an infinite weight.
        let huge = Scaler {
            scale: vec![f32::MAX, 1.0],
            ..s
        };
        let e = fold_scaling(&net, &params, &huge).unwrap_err().to_string();
        assert!(e.contains("non-finite weight [0, 0]"), "{e}");
    }

    /// The heads are predict's: softmax for cross-entropy, the logistic function for one
    /// binary output, the raw outputs (mapped back by the target scaling) otherwise.
    #[test]
    fn heads_follow_predict() {
        let t = Scaler {
            kind: ScaleKind::Standard,
            offset: vec![10.0],
            scale: vec![0.5],
        };
        assert_eq!(Head::of(Loss::SoftmaxCrossEntropy, 3, None), Head::Softmax);
        assert_eq!(Head::of(Loss::BinaryCrossEntropy, 1, None), Head::Sigmoid);
        assert_eq!(
            Head::of(Loss::BinaryCrossEntropy, 2, None),
            Head::Values { target: None }
        );
        let head = Head::of(Loss::Mse, 1, Some(&t));
        let mut row = [1.0];
        head.apply_row(&mut row).unwrap();
        assert_eq!(row, [12.0]);
        let mut p = [0.0, 2.0f32.ln()];
        Head::Softmax.apply_row(&mut p).unwrap();
        assert!(
            (p[0] - 1.0 / 3.0).abs() < 1e-7 && (p[1] - 2.0 / 3.0).abs() < 1e-7,
            "{p:?}"
        );
    }
}
