//! Weights from a plain PyTorch state dict in a safetensors file
//! (`safetensors.torch.save_file(model.state_dict(), path)`), for `--init`: the keys of a
//! stack of `nn.Linear` layers, `layers.{i}.weight` [out, in] and `layers.{i}.bias` [out], or
//! an `nn.Sequential`'s `{i}.weight` and `{i}.bias`, whose indices leave gaps where the
//! activations sit (`0.`, `2.`, `4.`). Layers are taken in the order of their indices; the
//! architecture comes from the shapes, the activations from the run.
//!
//! A soma checkpoint is a state dict too, with soma's metadata beside it:
//! [`has_soma_metadata`] tells which kind a file is.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::network::{LayerParams, Parameters};

/// The weights of a state dict: the layer widths (input first) and the parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct StateDict {
    pub widths: Vec<usize>,
    pub params: Parameters,
}

fn bad(path: &Path, message: String) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message,
    }
}

/// Whether the safetensors file `bytes` (read from `path`) carries soma's metadata
/// (`soma.network`).
pub fn has_soma_metadata(path: &Path, bytes: &[u8]) -> Result<bool> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(path, format!("not a readable safetensors file: {e}")))?;
    Ok(header
        .metadata()
        .as_ref()
        .is_some_and(|m| m.contains_key("soma.network")))
}

/// Reads the linear layers of a plain state dict. Keys other than a layer's `weight` and
/// `bias`, a layer without a weight, shapes that do not chain, and non-finite values are
/// errors naming the key; soma's own optimizer tensors (`optimizer.*`) are skipped.
pub fn read(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(path, &bytes)
}

/// [`read`] of a file's bytes already in memory (`path` names it in errors).
// Dtype is foreign: the dtypes other than F32 and F64 share one message (the last arm).
#[allow(clippy::wildcard_enum_match_arm)]
pub fn parse(path: &Path, bytes: &[u8]) -> Result<StateDict> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| bad(path, format!("not a readable safetensors file: {e}")))?;
    // index -> (weight (shape, values), bias values)
    type Tensor = (Vec<usize>, Vec<f32>);
    let mut layers: BTreeMap<usize, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    let mut names: Vec<String> = file.names().into_iter().cloned().collect();
    names.sort();
    for name in names {
        if name.starts_with("optimizer.") {
            continue;
        }
        let rest = name.strip_prefix("layers.").unwrap_or(&name);
        let parsed = rest
            .split_once('.')
            .and_then(|(i, kind)| Some((i.parse::<usize>().ok()?, kind)));
        let Some((index, kind @ ("weight" | "bias"))) = parsed else {
            return Err(bad(
                path,
                format!(
                    "tensor '{name}' is not a linear layer's weight or bias (expected layers.N.weight/bias or N.weight/bias)"
                ),
            ));
        };
        let view = file
            .tensor(&name)
            .map_err(|e| bad(path, format!("tensor '{name}': {e}")))?;
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F64 => view
                .data()
                .chunks_exact(8)
                .map(|b| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    f64::from_le_bytes(a) as f32
                })
                .collect(),
            other => {
                return Err(bad(
                    path,
                    format!("tensor '{name}' has dtype {other:?}; --init reads F32 or F64"),
                ))
            }
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(
                path,
                format!("tensor '{name}' has a non-finite value at index {i}"),
            ));
        }
        let entry = layers.entry(index).or_default();
        let slot = if kind == "weight" {
            &mut entry.0
        } else {
            &mut entry.1
        };
        if slot.is_some() {
            return Err(bad(
                path,
                format!("layer {index} has two {kind} tensors (layers.{index}. and {index}.)"),
            ));
        }
        *slot = Some((view.shape().to_vec(), values));
    }
    if layers.is_empty() {
        return Err(bad(path, "no linear layer weights in it".into()));
    }
    let mut widths = Vec::new();
    let mut params = Vec::new();
    for (index, (weight, bias)) in layers {
        let Some((shape, weight)) = weight else {
            return Err(bad(path, format!("layer {index} has a bias but no weight")));
        };
        let [outputs, inputs] = shape[..] else {
            return Err(bad(
                path,
                format!("the weight of layer {index} has shape {shape:?}, not [out, in]"),
            ));
        };
        match widths.last() {
            None => widths.push(inputs),
            Some(&w) if w == inputs => {}
            Some(&w) => {
                return Err(bad(
                    path,
                    format!(
                        "the weight of layer {index} takes {inputs} inputs but the layer before gives {w}"
                    ),
                ))
            }
        }
        widths.push(outputs);
        if let Some((shape, _)) = &bias {
            if shape[..] != [outputs] {
                return Err(bad(
                    path,
                    format!("the bias of layer {index} has shape {shape:?}, not [{outputs}]"),
                ));
            }
        }
        params.push(LayerParams {
            weight,
            bias: bias.map(|(_, v)| v),
        });
    }
    Ok(StateDict {
        widths,
        params: Parameters { layers: params },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::testdir::TempDir;
    use std::collections::HashMap;

    /// A tensor to write: name, shape, values.
    type Named<'a> = (&'a str, Vec<usize>, Vec<f32>);

    fn write(path: &Path, tensors: &[Named<'_>]) {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let out = safetensors::serialize(views, &None::<HashMap<String, String>>).unwrap();
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn a_sequential_with_gaps_reads_in_index_order() {
        let dir = TempDir::new();
        let p = dir.join("seq.safetensors");
        write(
            &p,
            &[
                ("4.weight", vec![2, 3], vec![5.0; 6]),
                ("4.bias", vec![2], vec![6.0; 2]),
                ("0.weight", vec![3, 4], vec![1.0; 12]),
                ("0.bias", vec![3], vec![2.0; 3]),
            ],
        );
        let sd = read(&p).unwrap();
        assert_eq!(sd.widths, vec![4, 3, 2]);
        assert_eq!(sd.params.layers[0].weight, vec![1.0; 12]);
        assert_eq!(sd.params.layers[1].bias, Some(vec![6.0; 2]));
        assert!(!has_soma_metadata(&p, &std::fs::read(&p).unwrap()).unwrap());
    }

    #[test]
    fn what_is_not_a_linear_stack_is_named() {
        let dir = TempDir::new();
        let cases: Vec<(&str, Vec<Named<'_>>, &str)> = vec![
            (
                "bn",
                vec![("1.running_mean", vec![3], vec![0.0; 3])],
                "1.running_mean",
            ),
            (
                "chain",
                vec![
                    ("layers.0.weight", vec![3, 4], vec![0.0; 12]),
                    ("layers.1.weight", vec![2, 5], vec![0.0; 10]),
                ],
                "takes 5 inputs",
            ),
            (
                "bias",
                vec![
                    ("0.weight", vec![3, 4], vec![0.0; 12]),
                    ("0.bias", vec![4], vec![0.0; 4]),
                ],
                "bias of layer 0",
            ),
            (
                "nan",
                vec![("0.weight", vec![1, 2], vec![0.0, f32::NAN])],
                "non-finite",
            ),
            (
                "orphan",
                vec![("2.bias", vec![3], vec![0.0; 3])],
                "no weight",
            ),
        ];
        for (name, tensors, needle) in cases {
            let p = dir.join(&format!("{name}.safetensors"));
            write(&p, &tensors);
            let e = read(&p).unwrap_err().to_string();
            assert!(e.contains(needle), "{name}: {e}");
        }
    }
}
