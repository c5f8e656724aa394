//! The safetensors export: the weights alone, keyed for PyTorch's `nn.Sequential`, so that
//! `net.load_state_dict(load_file(path))` works on a Sequential that follows each
//! `nn.Linear` with one activation module.
//!
//! Layer `i` is module `2 i`: `{2i}.weight` F32 `[outputs, inputs]` and `{2i}.bias` F32
//! `[outputs]` (absent for a layer without a bias); its activation is module `2 i + 1`
//! (`nn.Identity()` for a hidden identity layer, none needed after the last layer). No
//! optimizer state. The metadata (strings, none of it needed to load the weights): `format`
//! = `pt`; `soma.input`: `raw` (the scaling is folded in, or there was none) or `scaled`;
//! `soma.scaler` (JSON, when `scaled`): the scaling `x' = (x - offset) * scale` to apply
//! first; `soma.output`: the head (`softmax`, `sigmoid` or `values`) that `soma predict`
//! applies to the outputs; `soma.target_scaler` (JSON, when present); `soma.pytorch`: the
//! `nn.Sequential(...)` these keys fit, when every activation has a PyTorch module;
//! `soma.imputer` (JSON `{"kind", "values"}`, as in the checkpoint, when the model has one):
//! the value each missing (NaN) raw feature becomes, before the scaling, folded or not;
//! `soma.names` (JSON, as in the checkpoint, when the data named anything).

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};

use super::{Head, Inference};
use crate::error::{Error, Result};
use crate::network::{Activation, Network};

/// The PyTorch module of an activation, if it has one.
pub fn torch_module(act: Activation) -> Option<String> {
    match act {
        Activation::Identity => Some("nn.Identity()".into()),
        Activation::Relu => Some("nn.ReLU()".into()),
        Activation::LeakyRelu { slope } => Some(format!("nn.LeakyReLU({slope:?})")),
        Activation::Sigmoid => Some("nn.Sigmoid()".into()),
        Activation::Tanh => Some("nn.Tanh()".into()),
        Activation::Gelu => Some("nn.GELU(approximate=\"tanh\")".into()),
        Activation::Sign | Activation::Step => None,
    }
}

/// The `nn.Sequential(...)` that the exported keys fit, or `None` when an activation has no
/// PyTorch module.
pub fn torch_sequential(net: &Network) -> Option<String> {
    let mut modules = Vec::new();
    let last = net.layers.len().checked_sub(1)?;
    for (i, l) in net.layers.iter().enumerate() {
        modules.push(if l.bias {
            format!("nn.Linear({}, {})", l.inputs, l.outputs)
        } else {
            format!("nn.Linear({}, {}, bias=False)", l.inputs, l.outputs)
        });
        if !(i == last && l.activation == Activation::Identity) {
            modules.push(torch_module(l.activation)?);
        }
    }
    Some(format!("nn.Sequential({})", modules.join(", ")))
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Config(format!("cannot encode JSON: {e}")))
}

/// The file's bytes.
pub fn encode(model: &Inference) -> Result<Vec<u8>> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    match &model.scaler {
        Some(s) => {
            meta.insert("soma.input".into(), "scaled".into());
            meta.insert("soma.scaler".into(), json(s)?);
        }
        None => {
            meta.insert("soma.input".into(), "raw".into());
        }
    }
    meta.insert("soma.output".into(), model.head.name().into());
    match &model.head {
        Head::Values { target: Some(t) } => {
            meta.insert("soma.target_scaler".into(), json(t)?);
        }
        Head::Values { target: None } | Head::Softmax | Head::Sigmoid => {}
    }
    if let Some(seq) = torch_sequential(&model.network) {
        meta.insert("soma.pytorch".into(), seq);
    }
    if let Some(i) = &model.imputer {
        meta.insert("soma.imputer".into(), json(i)?);
    }
    if !model.names.is_empty() {
        meta.insert("soma.names".into(), json(&model.names)?);
    }

    let le = |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, (l, p)) in model
        .network
        .layers
        .iter()
        .zip(&model.params.layers)
        .enumerate()
    {
        tensors.push((
            format!("{}.weight", 2 * i),
            vec![l.outputs, l.inputs],
            le(&p.weight),
        ));
        if let Some(b) = &p.bias {
            tensors.push((format!("{}.bias", 2 * i), vec![l.outputs], le(b)));
        }
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| Error::Config(format!("tensor '{name}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, &Some(meta))
        .map_err(|e| Error::Config(format!("cannot serialize safetensors: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::sample;
    use crate::export::Scaling;
    use crate::ops::loss::Loss;
    use safetensors::SafeTensors;

    #[test]
    fn keys_shapes_and_metadata() {
        let (ck, _) = sample(Loss::SoftmaxCrossEntropy, 3, 1);
        for scaling in [Scaling::Separate, Scaling::Folded] {
            let model = Inference::from_checkpoint(&ck, scaling).unwrap();
            let bytes = encode(&model).unwrap();
            let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
            let file = SafeTensors::deserialize(&bytes).unwrap();
            let mut names: Vec<String> = file.names().into_iter().cloned().collect();
            names.sort();
            let mut want = Vec::new();
            for (i, (l, p)) in model
                .network
                .layers
                .iter()
                .zip(&model.params.layers)
                .enumerate()
            {
                let w = file.tensor(&format!("{}.weight", 2 * i)).unwrap();
                assert_eq!(w.shape(), [l.outputs, l.inputs]);
                let back: Vec<f32> = w
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                assert_eq!(back, p.weight, "layer {i}");
                want.push(format!("{}.weight", 2 * i));
                if l.bias {
                    want.push(format!("{}.bias", 2 * i));
                }
            }
            want.sort();
            assert_eq!(names, want);
            let meta = header.metadata().as_ref().unwrap();
            assert_eq!(meta["format"], "pt");
            assert_eq!(meta["soma.output"], "softmax");
            assert!(!meta.contains_key("soma.imputer") && !meta.contains_key("soma.names"));
            match scaling {
                Scaling::Separate => {
                    assert_eq!(meta["soma.input"], "scaled");
                    let s: crate::data::Scaler =
                        serde_json::from_str(&meta["soma.scaler"]).unwrap();
                    assert_eq!(Some(s), ck.scaler);
                    assert!(!names.contains(&"0.bias".to_string()));
                }
                Scaling::Folded => {
                    assert_eq!(meta["soma.input"], "raw");
                    assert!(!meta.contains_key("soma.scaler"));
                    assert!(names.contains(&"0.bias".to_string()));
                }
            }
        }
    }

    /// The imputer and the names, as the checkpoint's JSON, folded or not: filling a row's
    /// NaN from the metadata's `soma.imputer`, then (unfolded) scaling by its `soma.scaler`,
    /// then the network (whose tensors `keys_shapes_and_metadata` checks) gives the model's
    /// outputs.
    #[test]
    fn imputer_and_names_in_the_metadata() {
        use crate::data::{Imputer, Names, Scaler};
        let (ck, gaps, _) = crate::export::tests::sample_with_gaps(Loss::Mse, 2, 10);
        for scaling in [Scaling::Separate, Scaling::Folded] {
            let model = Inference::from_checkpoint(&ck, scaling).unwrap();
            let bytes = encode(&model).unwrap();
            let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
            let meta = header.metadata().as_ref().unwrap();
            let imputer: Imputer = serde_json::from_str(&meta["soma.imputer"]).unwrap();
            assert_eq!(Some(&imputer), ck.imputer.as_ref());
            assert!(meta["soma.imputer"].starts_with(r#"{"kind":"mean","values":["#));
            let names: Names = serde_json::from_str(&meta["soma.names"]).unwrap();
            assert_eq!(names, ck.names);

            // The metadata's recipe, in plain Rust on the file's own numbers.
            let mut x = gaps.clone();
            for row in x.chunks_mut(7) {
                imputer.fill_row(row);
                if let Some(s) = meta.get("soma.scaler") {
                    let s: Scaler = serde_json::from_str(s).unwrap();
                    s.apply_row(row).unwrap();
                }
            }
            let mut stripped = model.clone();
            stripped.imputer = None;
            stripped.scaler = None;
            let want = model.forward(&gaps, 10).unwrap();
            let got = stripped.forward(&x, 10).unwrap();
            assert!(want.iter().all(|v| v.is_finite()));
            assert_eq!(got, want, "{scaling:?}");
        }
    }

    #[test]
    fn sequential_expression() {
        let (ck, _) = sample(Loss::Mse, 2, 1);
        assert_eq!(
            torch_sequential(&ck.network).unwrap(),
            "nn.Sequential(nn.Linear(7, 9, bias=False), nn.ReLU(), nn.Linear(9, 9), \
             nn.LeakyReLU(0.1), nn.Linear(9, 9), nn.GELU(approximate=\"tanh\"), \
             nn.Linear(9, 9), nn.Tanh(), nn.Linear(9, 9), nn.Sigmoid(), nn.Linear(9, 9), \
             nn.Identity(), nn.Linear(9, 2))"
        );
        let mut net = ck.network.clone();
        net.layers[1].activation = Activation::Sign;
        assert_eq!(torch_sequential(&net), None);
    }
}
