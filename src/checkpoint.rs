//! Checkpoints: a network, its parameter values and what is needed to use or resume it, in
//! one safetensors file with PyTorch's `nn.Linear` layout, written atomically.
//!
//! This module owns the file format; writes go through [`crate::fs::write_atomic`]. It does not decide when to save,
//! does not read parameters off a device (the trainer does) and does not restore a run (the
//! caller hands [`Resume`] to `Trainer::resume`).
//!
//! Layout:
//! - `layers.{i}.weight`: F32 `[outputs, inputs]`; `layers.{i}.bias`: F32 `[outputs]` (only
//!   for layers with a bias), exactly [`Parameters::named`];
//! - `optimizer.{name}`: F32 optimizer state (only with [`Resume`]), shaped like the parameter
//!   it belongs to (`layers.{i}.weight.*` is `[outputs, inputs]`, `layers.{i}.bias.*` is
//!   `[outputs]`, anything else 1-D);
//! - `__metadata__` (string to string): `format` = `pt`, `soma.version`, `soma.architecture`
//!   (for people, e.g. `64-64-10 relu/identity`; never read back), and JSON values for
//!   `soma.network`, `soma.loss`, `soma.scaler` (when present), `soma.classes` (when
//!   present), `soma.names` (the feature columns', label column's and classes' names, when
//!   the data had them), `soma.imputer` (the fill values of missing features, with
//!   `--impute`) and, with [`Resume`], `soma.train_state`, `soma.optimizer`, `soma.config`
//!   and `soma.optimizer_state` (the state tensors' names in order, since safetensors
//!   sorts tensors by name).
//!
//! [`load`] checks everything and reports any problem as [`Error::Checkpoint`] naming the
//! tensor or key; [`save`] refuses to write what [`load`] would reject (non-finite values,
//! shapes that do not fit the network).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensorError, TensorView};
use safetensors::SafeTensors;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::data::{Imputer, Names, Scaler};
use crate::error::{Error, Result};
use crate::fs::write_atomic;
use crate::network::{LayerParams, Network, Parameters};
use crate::ops::loss::Loss;
use crate::optim::Optimizer;
use crate::trainer::{TrainConfig, TrainState};

/// What a run needs to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct Resume {
    /// Epoch, step and the shuffle stream's position.
    pub state: TrainState,
    pub optimizer: Optimizer,
    pub config: TrainConfig,
    /// The optimizer's state tensors in the trainer's order: (buffer name such as
    /// `layers.0.weight.m`, values).
    pub optimizer_state: Vec<(String, Vec<f32>)>,
}

/// Everything a checkpoint file holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub network: Network,
    pub params: Parameters,
    pub loss: Loss,
    /// The input scaling fitted on the training data, applied before inference.
    pub scaler: Option<Scaler>,
    /// The number of classes of a classification task.
    pub classes: Option<usize>,
    /// The scaling of regression targets the network was trained on; its outputs are in
    /// those units, so predictions are mapped back with `Scaler::invert_row`.
    pub target_scaler: Option<Scaler>,
    /// The names of the feature columns, the label column and the classes (empty where the
    /// data had none).
    pub names: Names,
    /// The fill values of missing features, applied before the scaling.
    pub imputer: Option<Imputer>,
    /// Present when the run can be resumed from this file.
    pub resume: Option<Resume>,
}

const KEY_FORMAT: &str = "format";
const KEY_VERSION: &str = "soma.version";
const KEY_ARCH: &str = "soma.architecture";
const KEY_NETWORK: &str = "soma.network";
const KEY_LOSS: &str = "soma.loss";
const KEY_SCALER: &str = "soma.scaler";
const KEY_CLASSES: &str = "soma.classes";
const KEY_TARGET_SCALER: &str = "soma.target_scaler";
const KEY_NAMES: &str = "soma.names";
const KEY_IMPUTER: &str = "soma.imputer";
const KEY_TRAIN_STATE: &str = "soma.train_state";
const KEY_OPTIMIZER: &str = "soma.optimizer";
const KEY_CONFIG: &str = "soma.config";
const KEY_OPT_STATE: &str = "soma.optimizer_state";
const OPT_PREFIX: &str = "optimizer.";

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A human-readable summary such as `64-64-10 relu/identity`.
fn architecture(net: &Network) -> String {
    let widths: Vec<String> = net.widths().iter().map(|w| w.to_string()).collect();
    let acts: Vec<String> = net
        .layers
        .iter()
        .map(|l| l.activation.to_string())
        .collect();
    format!("{} {}", widths.join("-"), acts.join("/"))
}

/// The shape an optimizer state tensor takes: that of the parameter its name starts with,
/// or 1-D of `len` values when the name names no parameter of `net`.
fn state_shape(net: &Network, name: &str, len: usize) -> Vec<usize> {
    let component = |tail: &str, part: &str| {
        tail.strip_prefix(part)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    };
    if let Some(rest) = name.strip_prefix("layers.") {
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if let Some(layer) = rest[..end]
            .parse::<usize>()
            .ok()
            .and_then(|i| net.layers.get(i))
        {
            let tail = &rest[end..];
            if component(tail, ".weight") {
                return vec![layer.outputs, layer.inputs];
            }
            if component(tail, ".bias") {
                return vec![layer.outputs];
            }
        }
    }
    vec![len]
}

fn shape_str(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

fn check_finite(path: &Path, tensor: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(bad(
            path,
            format!(
                "tensor '{tensor}' has a non-finite value ({}) at index {i}",
                values[i]
            ),
        )),
    }
}

/// JSON of `value`, checked to read back as the same value (a non-finite float would not:
/// JSON has no NaN, and serde_json writes it as `null`).
fn to_json<T: Serialize + DeserializeOwned + PartialEq>(
    path: &Path,
    key: &str,
    value: &T,
) -> Result<String> {
    let text = serde_json::to_string(value)
        .map_err(|e| bad(path, format!("cannot encode '{key}' as JSON: {e}")))?;
    match serde_json::from_str::<T>(&text) {
        Ok(back) if back == *value => Ok(text),
        Ok(_) => Err(bad(
            path,
            format!("'{key}' does not survive JSON unchanged; does it hold a non-finite number?"),
        )),
        Err(e) => Err(bad(
            path,
            format!("'{key}' would not read back ({e}); does it hold a non-finite number?"),
        )),
    }
}

fn check_target_scaler(path: &Path, scaler: &Scaler, net: &Network) -> Result<()> {
    let width = net.output_width();
    if scaler.offset.len() != width || scaler.scale.len() != width {
        return Err(bad(
            path,
            format!(
                "'{KEY_TARGET_SCALER}': expected {width} columns (the network's outputs), got offset {} and scale {}",
                scaler.offset.len(),
                scaler.scale.len()
            ),
        ));
    }
    Ok(())
}

fn check_names(path: &Path, names: &Names, net: &Network, classes: Option<usize>) -> Result<()> {
    names
        .check(net.input_width(), classes)
        .map_err(|why| bad(path, format!("'{KEY_NAMES}': {why}")))
}

fn check_imputer(path: &Path, imputer: &Imputer, net: &Network) -> Result<()> {
    let width = net.input_width();
    if imputer.values.len() != width {
        return Err(bad(
            path,
            format!(
                "'{KEY_IMPUTER}': expected {width} values (the network's inputs), got {}",
                imputer.values.len()
            ),
        ));
    }
    check_finite(path, KEY_IMPUTER, &imputer.values)
}

fn check_scaler(path: &Path, scaler: &Scaler, net: &Network) -> Result<()> {
    let width = net.input_width();
    if scaler.offset.len() != width || scaler.scale.len() != width {
        return Err(bad(
            path,
            format!(
                "'{KEY_SCALER}': expected {width} columns (the network's inputs), got offset {} and scale {}",
                scaler.offset.len(),
                scaler.scale.len()
            ),
        ));
    }
    Ok(())
}

/// The SHA-256 (lowercase hex) of the tensors of a safetensors file's bytes, its metadata
/// excluded: for each tensor in name order, its name, a 0 byte, its shape as u64
/// little-endian values, and its data. Two runs with the same weights and optimizer state
/// have the same hash whatever their metadata (timings, adapter) says; strict mode's
/// promise is that two adapters give the same one.
pub fn tensors_sha256(path: &Path, bytes: &[u8]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let file = SafeTensors::deserialize(bytes).map_err(|e| bad(path, header_error(&e)))?;
    let mut tensors = file.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hash = Sha256::new();
    for (name, view) in &tensors {
        hash.update(name.as_bytes());
        hash.update([0u8]);
        for &d in view.shape() {
            hash.update((d as u64).to_le_bytes());
        }
        hash.update(view.data());
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `ckpt` to `path` atomically (see [`write_atomic`]).
pub fn save(path: &Path, ckpt: &Checkpoint) -> Result<()> {
    let bytes = save_bytes(path, ckpt)?;
    write_atomic(path, &bytes)
}

/// The bytes [`save`] writes, with its checks; `path` only names the file in errors.
pub fn save_bytes(path: &Path, ckpt: &Checkpoint) -> Result<Vec<u8>> {
    let net = &ckpt.network;
    net.validate().map_err(|e| bad(path, e.to_string()))?;
    ckpt.params
        .check(net, "parameters")
        .map_err(|e| bad(path, e.to_string()))?;

    let mut meta = HashMap::new();
    meta.insert(KEY_FORMAT.to_string(), "pt".to_string());
    meta.insert(
        KEY_VERSION.to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    meta.insert(KEY_ARCH.to_string(), architecture(net));
    meta.insert(KEY_NETWORK.to_string(), to_json(path, KEY_NETWORK, net)?);
    meta.insert(KEY_LOSS.to_string(), to_json(path, KEY_LOSS, &ckpt.loss)?);
    if let Some(scaler) = &ckpt.scaler {
        check_scaler(path, scaler, net)?;
        meta.insert(KEY_SCALER.to_string(), to_json(path, KEY_SCALER, scaler)?);
    }
    if let Some(classes) = ckpt.classes {
        meta.insert(KEY_CLASSES.to_string(), classes.to_string());
    }
    if let Some(t) = &ckpt.target_scaler {
        check_target_scaler(path, t, net)?;
        meta.insert(
            KEY_TARGET_SCALER.to_string(),
            to_json(path, KEY_TARGET_SCALER, t)?,
        );
    }
    if !ckpt.names.is_empty() {
        check_names(path, &ckpt.names, net, ckpt.classes)?;
        meta.insert(
            KEY_NAMES.to_string(),
            to_json(path, KEY_NAMES, &ckpt.names)?,
        );
    }
    if let Some(imputer) = &ckpt.imputer {
        check_imputer(path, imputer, net)?;
        meta.insert(
            KEY_IMPUTER.to_string(),
            to_json(path, KEY_IMPUTER, imputer)?,
        );
    }

    // (name, shape, little-endian bytes)
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let le = |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
    for (name, shape, values) in ckpt.params.named(net) {
        check_finite(path, &name, values)?;
        tensors.push((name, shape, le(values)));
    }
    if let Some(resume) = &ckpt.resume {
        meta.insert(
            KEY_TRAIN_STATE.to_string(),
            to_json(path, KEY_TRAIN_STATE, &resume.state)?,
        );
        meta.insert(
            KEY_OPTIMIZER.to_string(),
            to_json(path, KEY_OPTIMIZER, &resume.optimizer)?,
        );
        meta.insert(
            KEY_CONFIG.to_string(),
            to_json(path, KEY_CONFIG, &resume.config)?,
        );
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        for (name, values) in &resume.optimizer_state {
            if name.is_empty() {
                return Err(bad(path, "an optimizer state tensor has an empty name"));
            }
            if !seen.insert(name.as_str()) {
                return Err(bad(path, format!("optimizer state '{name}' appears twice")));
            }
            let tensor = format!("{OPT_PREFIX}{name}");
            let shape = state_shape(net, name, values.len());
            let expected: usize = shape.iter().product();
            if values.len() != expected {
                return Err(bad(
                    path,
                    format!(
                        "tensor '{tensor}': expected shape {} ({expected} values), got {} values",
                        shape_str(&shape),
                        values.len()
                    ),
                ));
            }
            check_finite(path, &tensor, values)?;
            tensors.push((tensor, shape, le(values)));
            order.push(name.clone());
        }
        meta.insert(
            KEY_OPT_STATE.to_string(),
            to_json(path, KEY_OPT_STATE, &order)?,
        );
    }

    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| bad(path, format!("tensor '{name}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, &Some(meta))
        .map_err(|e| bad(path, format!("cannot serialize: {e}")))
}

// SafeTensorError is foreign: its other variants share one message (see the last arm).
#[allow(clippy::wildcard_enum_match_arm)]
fn header_error(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => {
            "not a safetensors file: shorter than its 8-byte header length".into()
        }
        SafeTensorError::HeaderTooLarge => {
            "not a safetensors file: the header length field is implausibly large".into()
        }
        SafeTensorError::InvalidHeaderLength => {
            "not a safetensors file, or truncated: the header runs past the end of the file".into()
        }
        SafeTensorError::InvalidHeader
        | SafeTensorError::InvalidHeaderStart
        | SafeTensorError::InvalidHeaderDeserialization => {
            "not a safetensors file: the header is not valid safetensors JSON".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "truncated or padded: the tensor data does not end where the file does".into()
        }
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor '{name}' has invalid data offsets (truncated or corrupt file)")
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's byte length does not match its shape and dtype".into()
        }
        SafeTensorError::ValidationOverflow => "a tensor's shape overflows".into(),
        // A foreign enum: the variants with no message of their own above (and any that a
        // later safetensors adds) say what the crate says.
        other => format!("not a readable safetensors file: {other}"),
    }
}

/// Reads a checkpoint written by [`save`], checking every tensor and metadata key.
/// A missing or unreadable file is [`Error::Io`]; anything wrong inside it is
/// [`Error::Checkpoint`].
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    load_bytes(path, &bytes)
}

/// The value of metadata `key`, checked to be one that [`save`] could have written: a number
/// beyond the range of an `f32` parses as infinity, which JSON cannot hold, so such a value
/// does not survive being written again (and an infinite scale or rate would turn every
/// prediction or step into NaN).
fn json<T: Serialize + DeserializeOwned + PartialEq>(
    path: &Path,
    key: &str,
    text: &str,
) -> Result<T> {
    let value: T = serde_json::from_str(text)
        .map_err(|e| bad(path, format!("metadata '{key}' is not valid: {e}")))?;
    let again = serde_json::to_string(&value)
        .ok()
        .and_then(|t| serde_json::from_str::<T>(&t).ok());
    if again.as_ref() != Some(&value) {
        return Err(bad(
            path,
            format!("metadata '{key}' holds a number beyond the range of a 32-bit float"),
        ));
    }
    Ok(value)
}

/// Removes tensor `name` from `present`, checked to be F32 of `shape` with finite values.
fn take(
    path: &Path,
    present: &mut HashMap<String, TensorView<'_>>,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    let view = present
        .remove(name)
        .ok_or_else(|| bad(path, format!("missing tensor '{name}'")))?;
    if view.dtype() != Dtype::F32 {
        return Err(bad(
            path,
            format!("tensor '{name}' has dtype {:?}, expected F32", view.dtype()),
        ));
    }
    if view.shape() != shape {
        return Err(bad(
            path,
            format!(
                "tensor '{name}' has shape {}, expected {}",
                shape_str(view.shape()),
                shape_str(shape)
            ),
        ));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    check_finite(path, name, &values)?;
    Ok(values)
}

/// Reads a checkpoint from the bytes of a file written by [`save`], with the checks of
/// [`load`]; `path` only names it in errors.
pub fn load_bytes(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(path, header_error(&e)))?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| bad(path, header_error(&e)))?;
    let empty = HashMap::new();
    let meta = header.metadata().as_ref().unwrap_or(&empty);

    let text = |key: &str| -> Option<&str> { meta.get(key).map(String::as_str) };
    let required = |key: &str| -> Result<&str> {
        meta.get(key).map(String::as_str).ok_or_else(|| {
            bad(
                path,
                format!("missing metadata key '{key}' (not a soma checkpoint?)"),
            )
        })
    };

    let network: Network = json(path, KEY_NETWORK, required(KEY_NETWORK)?)?;
    network
        .validate()
        .map_err(|e| bad(path, format!("metadata '{KEY_NETWORK}': {e}")))?;
    let loss: Loss = json(path, KEY_LOSS, required(KEY_LOSS)?)?;
    let scaler: Option<Scaler> = text(KEY_SCALER)
        .map(|t| json(path, KEY_SCALER, t))
        .transpose()?;
    if let Some(s) = &scaler {
        check_scaler(path, s, &network)?;
    }
    let target_scaler: Option<Scaler> = text(KEY_TARGET_SCALER)
        .map(|t| json(path, KEY_TARGET_SCALER, t))
        .transpose()?;
    if let Some(s) = &target_scaler {
        check_target_scaler(path, s, &network)?;
    }
    let classes = text(KEY_CLASSES)
        .map(|t| {
            t.trim().parse::<usize>().map_err(|_| {
                bad(
                    path,
                    format!("metadata '{KEY_CLASSES}' = '{t}' is not a count"),
                )
            })
        })
        .transpose()?;
    let names: Names = text(KEY_NAMES)
        .map(|t| json(path, KEY_NAMES, t))
        .transpose()?
        .unwrap_or_default();
    check_names(path, &names, &network, classes)?;
    let imputer: Option<Imputer> = text(KEY_IMPUTER)
        .map(|t| json(path, KEY_IMPUTER, t))
        .transpose()?;
    if let Some(i) = &imputer {
        check_imputer(path, i, &network)?;
    }

    let resume_keys = [KEY_TRAIN_STATE, KEY_OPTIMIZER, KEY_CONFIG, KEY_OPT_STATE];
    let has_resume = resume_keys.iter().any(|k| meta.contains_key(*k));
    let resume_parts = if has_resume {
        let state: TrainState = json(path, KEY_TRAIN_STATE, required(KEY_TRAIN_STATE)?)?;
        let optimizer: Optimizer = json(path, KEY_OPTIMIZER, required(KEY_OPTIMIZER)?)?;
        let config: TrainConfig = json(path, KEY_CONFIG, required(KEY_CONFIG)?)?;
        let order: Vec<String> = json(path, KEY_OPT_STATE, required(KEY_OPT_STATE)?)?;
        Some((state, optimizer, config, order))
    } else {
        None
    };

    // Every tensor in the file, by name.
    let mut present: HashMap<String, TensorView<'_>> = file.tensors().into_iter().collect();
    let mut layers = Vec::with_capacity(network.layers.len());
    for (i, l) in network.layers.iter().enumerate() {
        let weight = take(
            path,
            &mut present,
            &format!("layers.{i}.weight"),
            &[l.outputs, l.inputs],
        )?;
        let bias = if l.bias {
            Some(take(
                path,
                &mut present,
                &format!("layers.{i}.bias"),
                &[l.outputs],
            )?)
        } else {
            None
        };
        layers.push(LayerParams { weight, bias });
    }
    let params = Parameters { layers };

    let resume = match resume_parts {
        None => None,
        Some((state, optimizer, config, order)) => {
            let mut seen = HashSet::new();
            let mut optimizer_state = Vec::with_capacity(order.len());
            for name in order {
                if !seen.insert(name.clone()) {
                    return Err(bad(
                        path,
                        format!("metadata '{KEY_OPT_STATE}' names '{name}' twice"),
                    ));
                }
                let tensor = format!("{OPT_PREFIX}{name}");
                // Unknown names are 1-D: their length is whatever the file holds.
                let len = present
                    .get(&tensor)
                    .map_or(0, |v| v.shape().iter().product());
                let shape = state_shape(&network, &name, len);
                let values = take(path, &mut present, &tensor, &shape)?;
                optimizer_state.push((name, values));
            }
            Some(Resume {
                state,
                optimizer,
                config,
                optimizer_state,
            })
        }
    };

    if !present.is_empty() {
        let mut extra: Vec<&String> = present.keys().collect();
        extra.sort();
        let why = |name: &str| {
            if name.starts_with(OPT_PREFIX) {
                if has_resume {
                    format!(" (not listed in '{KEY_OPT_STATE}')")
                } else {
                    " (optimizer state without resume metadata)".to_string()
                }
            } else {
                " (the network has no such parameter)".to_string()
            }
        };
        return Err(bad(
            path,
            format!("unexpected tensor '{}'{}", extra[0], why(extra[0])),
        ));
    }

    Ok(Checkpoint {
        network,
        params,
        loss,
        scaler,
        classes,
        target_scaler,
        names,
        imputer,
        resume,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ScaleKind;
    use crate::fs::testdir::TempDir;
    use crate::network::{Activation, Init, Layer};
    use crate::optim::{OptimizerKind, Schedule};
    use crate::rng::Rng;
    use crate::trainer::EarlyStopping;

    fn network() -> Network {
        Network::mlp(
            &[3, 5, 4],
            Activation::LeakyRelu { slope: 0.02 },
            Activation::Identity,
        )
        .unwrap()
    }

    fn checkpoint(resume: bool) -> Checkpoint {
        let network = network();
        let mut params = Parameters::init(&network, Init::Pytorch, 7);
        // Values that a decimal round trip could lose.
        params.layers[0].weight[0] = -0.0;
        params.layers[0].weight[1] = f32::MIN_POSITIVE / 2.0; // subnormal
        params.layers[1].weight[2] = 1.0e-38;
        let scaler = Scaler {
            kind: ScaleKind::Standard,
            offset: vec![0.1, -2.5, 1.0e7],
            scale: vec![3.0, 0.333_333_34, 1.0e-7],
        };
        let resume = resume.then(|| {
            let mut rng = Rng::new(99);
            for _ in 0..13 {
                rng.next_u32();
            }
            let named = params.named(&network);
            let mut optimizer_state = Vec::new();
            for (name, _, values) in &named {
                for slot in ["m", "v"] {
                    let vals: Vec<f32> = values.iter().map(|v| v * 0.5 + 0.25).collect();
                    optimizer_state.push((format!("{name}.{slot}"), vals));
                }
            }
            Resume {
                state: TrainState {
                    epoch: 3,
                    step: 12_345,
                    rng: rng.state(),
                    first_loss: None,
                },
                optimizer: Optimizer::adamw(3e-4, 0.05),
                config: TrainConfig {
                    epochs: 20,
                    batch_size: 17,
                    shuffle: true,
                    seed: 99,
                    validation_fraction: Some(0.2),
                    early_stopping: Some(EarlyStopping {
                        patience: 4,
                        min_delta: 1e-4,
                        restore_best: true,
                    }),
                    schedule: Schedule::Step {
                        every: 5,
                        gamma: 0.5,
                    },
                    log_every: 10,
                    shadow_check: Default::default(),
                    shadow_stop: Default::default(),
                    shadow_tolerance: Default::default(),
                    determinism: crate::exec::Determinism::Strict,
                },
                optimizer_state,
            }
        });
        Checkpoint {
            network,
            params,
            loss: Loss::SoftmaxCrossEntropy,
            scaler: Some(scaler),
            classes: Some(4),
            target_scaler: None,
            resume,
            imputer: Some(Imputer {
                kind: crate::data::ImputeKind::Mean,
                values: vec![0.5, 1.0, -2.0],
            }),
            names: Names {
                features: vec!["a".into(), "b, c".into(), "\"d\"".into()],
                target: Some("species".into()),
                classes: vec!["w".into(), "x".into(), "y".into(), "z".into()],
            },
        }
    }

    #[test]
    fn names_and_imputer_round_trip_and_are_checked() {
        let dir = TempDir::new();
        let path = dir.join("c.safetensors");
        let ck = checkpoint(false);
        save(&path, &ck).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.names, ck.names);
        assert_eq!(back.imputer, ck.imputer);
        // Names that do not fit the network are refused on save, and on load.
        let mut wrong = ck.clone();
        wrong.names.classes.pop();
        let e = message(save(&path, &wrong).unwrap_err());
        assert!(e.contains("3 class names for 4 classes"), "{e}");
        let mut wrong = ck.clone();
        wrong.imputer.as_mut().unwrap().values.push(0.0);
        let e = message(save(&path, &wrong).unwrap_err());
        assert!(e.contains("expected 3 values"), "{e}");
        // Without names, no key is written.
        let mut plain = ck.clone();
        plain.names = Names::default();
        plain.imputer = None;
        let bytes = save_bytes(&path, &plain).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert!(!meta.contains_key(KEY_NAMES) && !meta.contains_key(KEY_IMPUTER));
        assert_eq!(load_bytes(&path, &bytes).unwrap(), plain);
    }

    fn bits(p: &Parameters) -> Vec<u32> {
        p.layers
            .iter()
            .flat_map(|l| {
                l.weight
                    .iter()
                    .chain(l.bias.iter().flatten())
                    .map(|v| v.to_bits())
            })
            .collect()
    }

    fn message(e: Error) -> String {
        match e {
            Error::Checkpoint { message, .. } => message,
            other => panic!("expected a checkpoint error, got {other:?}"),
        }
    }

    /// A safetensors file from (name, dtype, shape, bytes) and metadata.
    fn raw_file(
        tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
        meta: Option<HashMap<String, String>>,
    ) -> Vec<u8> {
        let views: Vec<(&str, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, &meta).unwrap()
    }

    fn f32_bytes(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| (i as f32 * 0.1).to_le_bytes())
            .collect()
    }

    /// The metadata of a checkpoint of `net` without resume.
    fn meta_for(net: &Network) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert(KEY_NETWORK.into(), serde_json::to_string(net).unwrap());
        m.insert(KEY_LOSS.into(), serde_json::to_string(&Loss::Mse).unwrap());
        m
    }

    #[test]
    fn round_trip_is_bit_identical() {
        let dir = TempDir::new();
        let path = dir.join("model.safetensors");
        for resume in [false, true] {
            let ckpt = checkpoint(resume);
            save(&path, &ckpt).unwrap();
            let back = load(&path).unwrap();
            assert_eq!(bits(&back.params), bits(&ckpt.params));
            assert_eq!(back.network, ckpt.network);
            assert_eq!(back.loss, ckpt.loss);
            assert_eq!(back.scaler, ckpt.scaler);
            assert_eq!(back.classes, ckpt.classes);
            assert_eq!(back.resume, ckpt.resume);
            if let (Some(a), Some(b)) = (&back.resume, &ckpt.resume) {
                // Order kept (safetensors sorts names; layers.0.weight.m before .v etc.).
                let an: Vec<&String> = a.optimizer_state.iter().map(|(n, _)| n).collect();
                let bn: Vec<&String> = b.optimizer_state.iter().map(|(n, _)| n).collect();
                assert_eq!(an, bn);
                // The rng continues where it stood.
                let mut x = Rng::from_state(a.state.rng.clone());
                let mut y = Rng::from_state(b.state.rng.clone());
                assert_eq!(x.next_u32(), y.next_u32());
            }
            assert_eq!(back, ckpt);
        }
        assert_eq!(dir.entries(), vec!["model.safetensors".to_string()]);
    }

    #[test]
    fn optimizer_state_order_survives_many_layers() {
        // layers.10 sorts before layers.2 by name; the stored order must win.
        let widths: Vec<usize> = vec![2; 13];
        let network = Network::mlp(&widths, Activation::Tanh, Activation::Sigmoid).unwrap();
        let params = Parameters::init(&network, Init::Xavier, 1);
        let optimizer_state: Vec<(String, Vec<f32>)> = params
            .named(&network)
            .iter()
            .map(|(n, _, v)| (format!("{n}.velocity"), v.to_vec()))
            .collect();
        let ckpt = Checkpoint {
            network,
            params,
            loss: Loss::BinaryCrossEntropy,
            scaler: None,
            classes: None,
            target_scaler: None,
            resume: Some(Resume {
                state: TrainState {
                    epoch: 0,
                    step: 0,
                    rng: Rng::new(0).state(),
                    first_loss: None,
                },
                optimizer: Optimizer::new(OptimizerKind::Momentum),
                config: TrainConfig::default(),
                optimizer_state,
            }),
            imputer: Default::default(),
            names: Default::default(),
        };
        let dir = TempDir::new();
        let path = dir.join("deep.safetensors");
        save(&path, &ckpt).unwrap();
        assert_eq!(load(&path).unwrap(), ckpt);
    }

    #[test]
    fn layer_without_bias() {
        let network = Network {
            layers: vec![
                Layer {
                    inputs: 4,
                    outputs: 3,
                    activation: Activation::Relu,
                    bias: true,
                },
                Layer {
                    inputs: 3,
                    outputs: 2,
                    activation: Activation::Identity,
                    bias: false,
                },
            ],
        };
        let params = Parameters::init(&network, Init::He, 3);
        let ckpt = Checkpoint {
            network: network.clone(),
            params,
            loss: Loss::SoftmaxCrossEntropy,
            scaler: None,
            classes: Some(2),
            target_scaler: None,
            resume: None,
            imputer: Default::default(),
            names: Default::default(),
        };
        let dir = TempDir::new();
        let path = dir.join("nobias.safetensors");
        save(&path, &ckpt).unwrap();
        let bytes = fs::read(&path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<&String> = file.names();
        names.sort();
        assert_eq!(
            names,
            vec!["layers.0.bias", "layers.0.weight", "layers.1.weight"]
        );
        let back = load(&path).unwrap();
        assert_eq!(back, ckpt);
        assert!(back.params.layers[1].bias.is_none());

        // A bias tensor for the bias-free layer is an error naming it.
        let mut tensors = vec![
            ("layers.0.weight", Dtype::F32, vec![3, 4], f32_bytes(12)),
            ("layers.0.bias", Dtype::F32, vec![3], f32_bytes(3)),
            ("layers.1.weight", Dtype::F32, vec![2, 3], f32_bytes(6)),
        ];
        tensors.push(("layers.1.bias", Dtype::F32, vec![2], f32_bytes(2)));
        fs::write(&path, raw_file(&tensors, Some(meta_for(&network)))).unwrap();
        let m = message(load(&path).unwrap_err());
        assert!(m.contains("unexpected tensor 'layers.1.bias'"), "{m}");
    }

    #[test]
    fn header_is_what_pytorch_expects() {
        let dir = TempDir::new();
        let path = dir.join("pt.safetensors");
        let ckpt = checkpoint(true);
        save(&path, &ckpt).unwrap();
        let bytes = fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let w = &header["layers.0.weight"];
        assert_eq!(w["dtype"], "F32");
        assert_eq!(w["shape"], serde_json::json!([5, 3]));
        let (start, end) = (
            w["data_offsets"][0].as_u64().unwrap() as usize,
            w["data_offsets"][1].as_u64().unwrap() as usize,
        );
        assert_eq!(end - start, 5 * 3 * 4);
        let first = &bytes[8 + n + start..8 + n + start + 4];
        assert_eq!(
            f32::from_le_bytes(first.try_into().unwrap()).to_bits(),
            ckpt.params.layers[0].weight[0].to_bits()
        );
        assert_eq!(header["layers.0.bias"]["shape"], serde_json::json!([5]));
        assert_eq!(
            header["optimizer.layers.1.weight.m"]["shape"],
            serde_json::json!([4, 5])
        );
        let meta = &header["__metadata__"];
        assert_eq!(meta["format"], "pt");
        assert_eq!(meta["soma.version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(meta["soma.architecture"], "3-5-4 leaky_relu:0.02/identity");
        assert_eq!(meta["soma.classes"], "4");
        for key in [
            KEY_NETWORK,
            KEY_LOSS,
            KEY_SCALER,
            KEY_TRAIN_STATE,
            KEY_OPTIMIZER,
            KEY_CONFIG,
            KEY_OPT_STATE,
        ] {
            let text = meta[key].as_str().unwrap();
            serde_json::from_str::<serde_json::Value>(text).unwrap();
        }
    }

    #[test]
    fn missing_file_is_io() {
        let dir = TempDir::new();
        match load(&dir.join("nope.safetensors")) {
            Err(Error::Io { .. }) => {}
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn truncated_and_garbage_files() {
        let dir = TempDir::new();
        let path = dir.join("t.safetensors");
        save(&path, &checkpoint(true)).unwrap();
        let good = fs::read(&path).unwrap();
        for cut in [0, 4, 8, 20, good.len() / 2, good.len() - 1] {
            fs::write(&path, &good[..cut]).unwrap();
            let m = message(load(&path).unwrap_err());
            assert!(!m.is_empty());
        }
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 4]);
        fs::write(&path, &padded).unwrap();
        message(load(&path).unwrap_err());

        fs::write(&path, b"this is not a safetensors file, just some text\n").unwrap();
        let m = message(load(&path).unwrap_err());
        assert!(m.contains("not a safetensors file"), "{m}");
        // A plausible length followed by junk.
        let mut junk = 16u64.to_le_bytes().to_vec();
        junk.extend_from_slice(&[0xff; 16]);
        fs::write(&path, &junk).unwrap();
        let m = message(load(&path).unwrap_err());
        assert!(m.contains("not a safetensors file"), "{m}");
    }

    #[test]
    fn wrong_shape_names_tensor_and_both_shapes() {
        let net = network();
        let dir = TempDir::new();
        let path = dir.join("shape.safetensors");
        // layers.0.weight transposed: [3, 5] instead of [5, 3].
        let tensors = vec![
            ("layers.0.weight", Dtype::F32, vec![3, 5], f32_bytes(15)),
            ("layers.0.bias", Dtype::F32, vec![5], f32_bytes(5)),
            ("layers.1.weight", Dtype::F32, vec![4, 5], f32_bytes(20)),
            ("layers.1.bias", Dtype::F32, vec![4], f32_bytes(4)),
        ];
        fs::write(&path, raw_file(&tensors, Some(meta_for(&net)))).unwrap();
        let m = message(load(&path).unwrap_err());
        assert!(m.contains("layers.0.weight"), "{m}");
        assert!(m.contains("[3, 5]") && m.contains("expected [5, 3]"), "{m}");

        // The same file with the right shape loads.
        let mut ok = tensors.clone();
        ok[0].2 = vec![5, 3];
        fs::write(&path, raw_file(&ok, Some(meta_for(&net)))).unwrap();
        load(&path).unwrap();

        // Wrong dtype.
        let mut f64s = ok.clone();
        f64s[3] = ("layers.1.bias", Dtype::F64, vec![4], vec![0; 32]);
        fs::write(&path, raw_file(&f64s, Some(meta_for(&net)))).unwrap();
        let m = message(load(&path).unwrap_err());
        assert!(m.contains("layers.1.bias") && m.contains("F64"), "{m}");

        // Missing tensor.
        fs::write(&path, raw_file(&ok[..3], Some(meta_for(&net)))).unwrap();
        let m = message(load(&path).unwrap_err());
        assert!(m.contains("missing tensor 'layers.1.bias'"), "{m}");

        // Extra tensor.
        let mut extra = ok.clone();
        extra.push(("layers.2.weight", Dtype::F32, vec![1], f32_bytes(1)));
        fs::write(&path, raw_file(&extra, Some(meta_for(&net)))).unwrap();
        let m = message(load(&path).unwrap_err());
        assert!(m.contains("unexpected tensor 'layers.2.weight'"), "{m}");

        // Non-finite value.
        let mut nan = ok.clone();
        let mut b = f32_bytes(4);
        b[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
        nan[3].3 = b;
        fs::write(&path, raw_file(&nan, Some(meta_for(&net)))).unwrap();
        let m = message(load(&path).unwrap_err());
        assert!(
            m.contains("layers.1.bias") && m.contains("non-finite"),
            "{m}"
        );
    }

    #[test]
    fn missing_and_bad_metadata() {
        let net = network();
        let dir = TempDir::new();
        let path = dir.join("meta.safetensors");
        let tensors = vec![
            ("layers.0.weight", Dtype::F32, vec![5, 3], f32_bytes(15)),
            ("layers.0.bias", Dtype::F32, vec![5], f32_bytes(5)),
            ("layers.1.weight", Dtype::F32, vec![4, 5], f32_bytes(20)),
            ("layers.1.bias", Dtype::F32, vec![4], f32_bytes(4)),
        ];
        // No metadata at all (a plain PyTorch save_file).
        fs::write(&path, raw_file(&tensors, None)).unwrap();
        let m = message(load(&path).unwrap_err());
        assert!(m.contains("soma.network"), "{m}");

        // Metadata without the network.
        let mut meta = meta_for(&net);
        meta.remove(KEY_NETWORK);
        fs::write(&path, raw_file(&tensors, Some(meta))).unwrap();
        let m = message(load(&path).unwrap_err());
        assert!(m.contains("soma.network"), "{m}");

        // Bad JSON in a key.
        for key in [KEY_NETWORK, KEY_LOSS, KEY_SCALER] {
            let mut meta = meta_for(&net);
            meta.insert(key.into(), "{not json".into());
            fs::write(&path, raw_file(&tensors, Some(meta))).unwrap();
            let m = message(load(&path).unwrap_err());
            assert!(m.contains(key), "{key}: {m}");
        }
        let mut meta = meta_for(&net);
        meta.insert(KEY_CLASSES.into(), "many".into());
        fs::write(&path, raw_file(&tensors, Some(meta))).unwrap();
        assert!(message(load(&path).unwrap_err()).contains(KEY_CLASSES));

        // Half the resume metadata.
        let mut meta = meta_for(&net);
        meta.insert(
            KEY_TRAIN_STATE.into(),
            serde_json::to_string(&TrainState {
                epoch: 1,
                step: 1,
                rng: Rng::new(1).state(),
                first_loss: None,
            })
            .unwrap(),
        );
        fs::write(&path, raw_file(&tensors, Some(meta))).unwrap();
        let m = message(load(&path).unwrap_err());
        assert!(m.contains(KEY_OPTIMIZER), "{m}");

        // A scaler of the wrong width.
        let mut meta = meta_for(&net);
        let s = Scaler {
            kind: ScaleKind::MinMax,
            offset: vec![0.0; 2],
            scale: vec![1.0; 2],
        };
        meta.insert(KEY_SCALER.into(), serde_json::to_string(&s).unwrap());
        fs::write(&path, raw_file(&tensors, Some(meta))).unwrap();
        assert!(message(load(&path).unwrap_err()).contains(KEY_SCALER));

        // A network that does not hold together.
        let mut broken = net.clone();
        broken.layers[1].inputs = 7;
        fs::write(&path, raw_file(&tensors, Some(meta_for(&broken)))).unwrap();
        assert!(message(load(&path).unwrap_err()).contains(KEY_NETWORK));
    }

    #[test]
    fn metadata_numbers_beyond_f32_are_refused() {
        // serde_json reads 1e39 into an f32 as infinity; such a checkpoint once loaded, and
        // predicted NaN for every row.
        let net = network();
        let dir = TempDir::new();
        let path = dir.join("inf.safetensors");
        let tensors = vec![
            ("layers.0.weight", Dtype::F32, vec![5, 3], f32_bytes(15)),
            ("layers.0.bias", Dtype::F32, vec![5], f32_bytes(5)),
            ("layers.1.weight", Dtype::F32, vec![4, 5], f32_bytes(20)),
            ("layers.1.bias", Dtype::F32, vec![4], f32_bytes(4)),
        ];
        for (key, value) in [
            (
                KEY_SCALER,
                r#"{"kind":"standard","offset":[1e39,0,0],"scale":[1,1,1]}"#,
            ),
            (
                KEY_TARGET_SCALER,
                r#"{"kind":"minmax","offset":[0,0,0,0],"scale":[1,1,-1e39,1]}"#,
            ),
        ] {
            let mut meta = meta_for(&net);
            meta.insert(key.into(), value.into());
            let bytes = raw_file(&tensors, Some(meta));
            let m = message(load_bytes(&path, &bytes).unwrap_err());
            assert!(
                m.contains(key) && m.contains("beyond the range of a 32-bit float"),
                "{key}: {m}"
            );
        }
        // A learning rate of 1e39 in the resume metadata.
        let mut meta = meta_for(&net);
        let state = TrainState {
            epoch: 1,
            step: 1,
            rng: Rng::new(1).state(),
            first_loss: None,
        };
        meta.insert(
            KEY_TRAIN_STATE.into(),
            serde_json::to_string(&state).unwrap(),
        );
        let adam = serde_json::to_string(&Optimizer::new(OptimizerKind::Adam)).unwrap();
        assert!(adam.contains("\"lr\":0.001"), "{adam}");
        meta.insert(
            KEY_OPTIMIZER.into(),
            adam.replace("\"lr\":0.001", "\"lr\":1e39"),
        );
        let m = message(load_bytes(&path, &raw_file(&tensors, Some(meta))).unwrap_err());
        assert!(
            m.contains(KEY_OPTIMIZER) && m.contains("beyond the range of a 32-bit float"),
            "{m}"
        );
        // The largest f32 itself is fine.
        let mut meta = meta_for(&net);
        meta.insert(
            KEY_SCALER.into(),
            r#"{"kind":"standard","offset":[3.4028235e38,0,0],"scale":[1,1,1]}"#.into(),
        );
        let ck = load_bytes(&path, &raw_file(&tensors, Some(meta))).unwrap();
        assert_eq!(ck.scaler.unwrap().offset[0], f32::MAX);
    }

    #[test]
    fn save_refuses_what_load_would_reject() {
        let dir = TempDir::new();
        let path = dir.join("refuse.safetensors");
        let mut ckpt = checkpoint(true);
        ckpt.params.layers[1].bias.as_mut().unwrap()[0] = f32::INFINITY;
        let m = message(save(&path, &ckpt).unwrap_err());
        assert!(m.contains("layers.1.bias"), "{m}");

        let mut ckpt = checkpoint(true);
        ckpt.params.layers[0].weight.pop();
        save(&path, &ckpt).unwrap_err();

        let mut ckpt = checkpoint(true);
        ckpt.resume.as_mut().unwrap().optimizer_state[0].1.push(0.0);
        let m = message(save(&path, &ckpt).unwrap_err());
        assert!(m.contains("optimizer.layers.0.weight.m"), "{m}");

        let mut ckpt = checkpoint(true);
        ckpt.resume.as_mut().unwrap().config.validation_fraction = Some(f32::NAN);
        let m = message(save(&path, &ckpt).unwrap_err());
        assert!(m.contains(KEY_CONFIG), "{m}");

        assert!(dir.entries().is_empty(), "{:?}", dir.entries());
    }

    #[test]
    fn unknown_state_names_are_one_dimensional() {
        let net = network();
        assert_eq!(state_shape(&net, "layers.1.weight.m", 20), vec![4, 5]);
        assert_eq!(state_shape(&net, "layers.0.bias", 5), vec![5]);
        assert_eq!(state_shape(&net, "layers.0.weightx", 7), vec![7]);
        assert_eq!(state_shape(&net, "layers.9.weight.m", 7), vec![7]);
        assert_eq!(state_shape(&net, "step_count", 1), vec![1]);

        let mut ckpt = checkpoint(true);
        ckpt.resume
            .as_mut()
            .unwrap()
            .optimizer_state
            .push(("extra".into(), vec![1.0, 2.0, 3.0]));
        let dir = TempDir::new();
        let path = dir.join("extra.safetensors");
        save(&path, &ckpt).unwrap();
        assert_eq!(load(&path).unwrap(), ckpt);
    }

    #[test]
    fn architecture_string() {
        let net = Network::mlp(&[64, 64, 10], Activation::Relu, Activation::Identity).unwrap();
        assert_eq!(architecture(&net), "64-64-10 relu/identity");
    }
}
