//! The JSON export: the whole model in one document (names, fill values of missing features,
//! architecture, activations, weights, scaling, head), for small models and for the web. The
//! schema is in `docs/export.md`; numbers are f32 values written so that they read back as
//! the same f32.

use serde::Serialize;

use super::{Head, Inference};
use crate::data::{Imputer, Scaler};
use crate::error::{Error, Result};
use crate::network::Activation;

/// The `format` field, and the schema version.
pub const FORMAT: &str = "soma-mlp";
pub const VERSION: u32 = 1;

#[derive(Serialize)]
struct Document<'a> {
    format: &'static str,
    version: u32,
    inputs: usize,
    outputs: usize,
    classes: Option<usize>,
    /// Added within version 1 (a reader of an older document takes them as null).
    features: Option<&'a [String]>,
    target: Option<&'a str>,
    class_names: Option<&'a [String]>,
    impute: Option<&'a Imputer>,
    input_scaling: Option<&'a Scaler>,
    output: &'static str,
    target_scaling: Option<&'a Scaler>,
    layers: Vec<LayerDoc<'a>>,
}

#[derive(Serialize)]
struct LayerDoc<'a> {
    inputs: usize,
    outputs: usize,
    activation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    slope: Option<f32>,
    /// `outputs` rows of `inputs` values.
    weight: Vec<&'a [f32]>,
    bias: Option<&'a [f32]>,
}

/// An activation's name in the document, and leaky ReLU's slope.
pub fn activation_name(act: Activation) -> (&'static str, Option<f32>) {
    match act {
        Activation::Identity => ("identity", None),
        Activation::Relu => ("relu", None),
        Activation::LeakyRelu { slope } => ("leaky_relu", Some(slope)),
        Activation::Sigmoid => ("sigmoid", None),
        Activation::Tanh => ("tanh", None),
        Activation::Sign => ("sign", None),
        Activation::Step => ("step", None),
        Activation::Gelu => ("gelu_tanh", None),
    }
}

fn nonempty(list: &[String]) -> Option<&[String]> {
    (!list.is_empty()).then_some(list)
}

/// The document, pretty-printed.
pub fn encode(model: &Inference) -> Result<String> {
    let layers = model
        .network
        .layers
        .iter()
        .zip(&model.params.layers)
        .map(|(l, p)| {
            let (activation, slope) = activation_name(l.activation);
            LayerDoc {
                inputs: l.inputs,
                outputs: l.outputs,
                activation,
                slope,
                weight: p.weight.chunks_exact(l.inputs).collect(),
                bias: p.bias.as_deref(),
            }
        })
        .collect();
    let target_scaling = match &model.head {
        Head::Values { target } => target.as_ref(),
        Head::Softmax | Head::Sigmoid => None,
    };
    let doc = Document {
        format: FORMAT,
        version: VERSION,
        inputs: model.network.input_width(),
        outputs: model.network.output_width(),
        classes: model.classes,
        features: nonempty(&model.names.features),
        target: model.names.target.as_deref(),
        class_names: nonempty(&model.names.classes),
        impute: model.imputer.as_ref(),
        input_scaling: model.scaler.as_ref(),
        output: model.head.name(),
        target_scaling,
        layers,
    };
    let mut text = serde_json::to_string_pretty(&doc)
        .map_err(|e| Error::Config(format!("cannot encode JSON: {e}")))?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::sample;
    use crate::export::Scaling;
    use crate::ops::activation::cpu::{apply, sigmoid};
    use crate::ops::loss::Loss;
    use serde_json::Value;

    fn floats(v: &Value) -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }

    /// A forward pass that reads nothing but the document, as a web page would.
    fn forward_from_document(doc: &Value, raw: &[f32]) -> Vec<f32> {
        let mut a = raw.to_vec();
        if let Some(i) = doc["impute"].as_object() {
            assert_eq!(i["kind"], "mean");
            for (x, v) in a.iter_mut().zip(floats(&i["values"])) {
                if x.is_nan() {
                    *x = v;
                }
            }
        }
        if let Some(s) = doc["input_scaling"].as_object() {
            let (o, k) = (floats(&s["offset"]), floats(&s["scale"]));
            for ((x, o), k) in a.iter_mut().zip(o).zip(k) {
                *x = (*x - o) * k;
            }
        }
        for layer in doc["layers"].as_array().unwrap() {
            let act: Activation = match (layer["activation"].as_str().unwrap(), &layer["slope"]) {
                ("leaky_relu", s) => Activation::LeakyRelu {
                    slope: s.as_f64().unwrap() as f32,
                },
                ("gelu_tanh", _) => Activation::Gelu,
                (name, _) => name.parse().unwrap(),
            };
            let bias = layer["bias"].as_array().map(|_| floats(&layer["bias"]));
            a = layer["weight"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(o, row)| {
                    let z = floats(row)
                        .iter()
                        .zip(&a)
                        .fold(0.0f32, |s, (w, x)| s + w * x);
                    apply(
                        act,
                        bias.as_ref().map_or(z, |b| z + b[o]),
                        crate::math::Math::Native,
                    )
                })
                .collect();
        }
        match doc["output"].as_str().unwrap() {
            "softmax" => {
                let m = a.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = a.iter().map(|v| (v - m).exp()).sum();
                a.iter().map(|v| (v - m).exp() / s).collect()
            }
            "sigmoid" => a
                .iter()
                .map(|&v| sigmoid(v, crate::math::Math::Native))
                .collect(),
            "values" => match doc["target_scaling"].as_object() {
                None => a,
                Some(t) => {
                    let (o, k) = (floats(&t["offset"]), floats(&t["scale"]));
                    a.iter()
                        .zip(o)
                        .zip(k)
                        .map(|((y, o), k)| y / k + o)
                        .collect()
                }
            },
            other => panic!("unknown output {other}"),
        }
    }

    /// The document alone reproduces the model's outputs bit for bit (every f32 reads back
    /// exactly), for each head, folded or not.
    #[test]
    fn document_reproduces_the_model() {
        for (loss, outputs) in [
            (Loss::SoftmaxCrossEntropy, 4),
            (Loss::BinaryCrossEntropy, 1),
            (Loss::Mse, 2),
        ] {
            let (ck, x) = sample(loss, outputs, 20);
            for scaling in [Scaling::Separate, Scaling::Folded] {
                let model = Inference::from_checkpoint(&ck, scaling).unwrap();
                let doc: Value = serde_json::from_str(&encode(&model).unwrap()).unwrap();
                assert_eq!(doc["format"], FORMAT);
                assert_eq!(doc["inputs"], 7);
                assert_eq!(doc["outputs"], outputs);
                assert_eq!(doc["layers"][1]["activation"], "leaky_relu");
                assert_eq!(doc["layers"][1]["slope"].as_f64().unwrap() as f32, 0.1);
                assert_eq!(doc["layers"][2]["activation"], "gelu_tanh");
                assert_eq!(
                    doc["layers"][0]["bias"].is_null(),
                    scaling == Scaling::Separate
                );
                for key in ["features", "target", "class_names", "impute"] {
                    assert!(doc[key].is_null(), "{key}: {}", doc[key]);
                }
                let want = model.forward(&x, 20).unwrap();
                let got: Vec<f32> = x
                    .chunks(7)
                    .flat_map(|r| forward_from_document(&doc, r))
                    .collect();
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{loss:?} {scaling:?}"
                );
            }
        }
    }

    /// A model with an imputer and names: the document names the features, the target and
    /// the classes, holds the fill values exactly, and alone reproduces the model bit for
    /// bit on rows with NaN (fill, scale, layers, head), folded or not.
    #[test]
    fn document_carries_names_and_fill_values() {
        for (loss, outputs) in [(Loss::SoftmaxCrossEntropy, 3), (Loss::Mse, 1)] {
            let (ck, gaps, _) = crate::export::tests::sample_with_gaps(loss, outputs, 20);
            for scaling in [Scaling::Separate, Scaling::Folded] {
                let model = Inference::from_checkpoint(&ck, scaling).unwrap();
                let text = encode(&model).unwrap();
                let doc: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(doc["version"], 1);
                let strings = |v: &Value| -> Vec<String> {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_string())
                        .collect()
                };
                assert_eq!(strings(&doc["features"]), ck.names.features);
                assert_eq!(doc["target"], "y");
                match loss {
                    Loss::SoftmaxCrossEntropy => {
                        assert_eq!(strings(&doc["class_names"]), ck.names.classes)
                    }
                    _ => assert!(doc["class_names"].is_null()),
                }
                let imputer: Imputer = serde_json::from_value(doc["impute"].clone()).unwrap();
                assert_eq!(Some(&imputer), ck.imputer.as_ref(), "fill values exact");
                let want = model.forward(&gaps, 20).unwrap();
                assert!(want.iter().all(|v| v.is_finite()));
                let got: Vec<f32> = gaps
                    .chunks(7)
                    .flat_map(|r| forward_from_document(&doc, r))
                    .collect();
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{loss:?} {scaling:?}"
                );
            }
        }
    }
}
