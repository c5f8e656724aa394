//! What a run is made of before it trains: its data loaded, split and scaled, its class
//! count, its network (checked against free memory), its loss and its training settings.
//! `soma train`, `soma eval` and `soma check` build runs the same way.

use soma::data::{Dataset, Imputer, ScaleKind, Scaler};
use soma::trainer::{EarlyStopping, TrainConfig};
use soma::{Error, Loss, Network, Optimizer, Result};

use super::options::{Choices, Resolved};

/// The prepared data of a run: scaled training, validation and test sets.
pub struct Prepared {
    pub train: Dataset,
    pub val: Option<Dataset>,
    pub test: Dataset,
    pub scaler: Scaler,
    /// The scaling of regression targets (None for classification).
    pub target_scaler: Option<Scaler>,
    /// The fill values of missing features, fitted on the training rows (`--impute`).
    pub imputer: Option<Imputer>,
}

/// Scales the regression targets of `d` in place.
pub fn scale_targets(d: &mut Dataset, s: &Scaler) -> Result<()> {
    if let soma::data::Targets::Values { values, width } = &mut d.targets {
        for row in values.chunks_mut((*width).max(1)) {
            s.apply_row(row)?;
        }
    }
    Ok(())
}

/// Loads, splits and scales the data as the options say.
pub fn prepare_data(o: &Resolved, c: &Choices) -> Result<Prepared> {
    let (mut all, mut own_test) = c.data.load(o, c)?;
    set_classes(&mut all, o.classes, &o.data)?;
    if let Some(t) = own_test.as_mut() {
        set_classes(t, o.classes.or(all.targets.classes()), &o.data)?;
    }
    // Both splits are seeded and stratified by class (`Dataset::split`): a file sorted by
    // class still tests and validates on every class.
    let flag = |name: &str| {
        let name = name.to_string();
        move |e: Error| match e {
            Error::Config(m) => Error::Config(format!("{name}: {m}")),
            e => e,
        }
    };
    let (train_all, test) = match own_test {
        Some(t) => (all, t),
        None => all
            .split(o.test_fraction, o.seed)
            .map_err(flag("--test-fraction"))?,
    };
    // Missing values are filled before anything is fitted to the features, with means of
    // the training rows only (validation rows included: they are split off below).
    let (mut train_all, mut test) = (train_all, test);
    let imputer = match c.impute {
        Some(kind) => {
            let imputer = Imputer::fit(kind, &train_all).map_err(flag("--impute"))?;
            imputer.apply(&mut train_all)?;
            imputer.apply(&mut test)?;
            Some(imputer)
        }
        None => None,
    };
    let scale = c.scale.unwrap_or_else(|| c.data.default_scale());
    let scaler = Scaler::fit(scale, &train_all);
    let (mut train, mut val) = if o.val_fraction > 0.0 {
        let (t, v) = train_all
            .split(o.val_fraction, o.seed)
            .map_err(flag("--val-fraction"))?;
        (t, Some(v))
    } else {
        (train_all, None)
    };
    scaler.apply(&mut train)?;
    if let Some(v) = val.as_mut() {
        scaler.apply(v)?;
    }
    scaler.apply(&mut test)?;
    // Regression targets are standardised too (fitted on the training rows), so that the
    // default learning rate suits any target range; predictions are mapped back.
    let target_scaler = match &train.targets {
        soma::data::Targets::Values { values, width } => {
            let kind = c.scale_target.unwrap_or(ScaleKind::Standard);
            let s = Scaler::fit_values(kind, values, *width);
            scale_targets(&mut train, &s)?;
            if let Some(v) = val.as_mut() {
                scale_targets(v, &s)?;
            }
            scale_targets(&mut test, &s)?;
            Some(s)
        }
        soma::data::Targets::Classes { .. } => None,
    };
    Ok(Prepared {
        train,
        val,
        test,
        scaler,
        target_scaler,
        imputer,
    })
}

/// The class count of `data`: `classes` when given (at least the largest label + 1), else
/// the largest label + 1, refused when it is far above the number of distinct labels (one
/// stray label of 1000000 would otherwise make a million-class model).
fn set_classes(data: &mut Dataset, classes: Option<usize>, name: &str) -> Result<()> {
    let soma::data::Targets::Classes { labels, classes: n } = &mut data.targets else {
        return match classes {
            Some(_) => Err(Error::Config(format!(
                "--classes: {name} holds regression targets, not classes"
            ))),
            None => Ok(()),
        };
    };
    let top = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let named = data.names.classes.len();
    if let Some(c) = classes.filter(|&c| named > 0 && c != named) {
        return Err(Error::Config(format!(
            "--classes {c}: the labels of {name} are names, {named} of them ({}); the classes are those",
            data.names.classes.join(", ")
        )));
    }
    match classes {
        Some(c) if c < top => Err(Error::Data(format!(
            "--classes {c}: {name} has the label {}",
            top - 1
        ))),
        Some(c) => {
            *n = c;
            Ok(())
        }
        None => {
            let mut seen = labels.clone();
            seen.sort_unstable();
            seen.dedup();
            let distinct = seen.len();
            if top > (2 * distinct).max(distinct + 10) {
                return Err(Error::Data(format!(
                    "{name}: its labels run up to {} but only {distinct} distinct labels appear ({}); a model of {top} classes would be mostly unused. Pass --classes {top} if that is meant",
                    top - 1,
                    seen.iter()
                        .take(8)
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                        + if distinct > 8 { ", ..." } else { "" }
                )));
            }
            Ok(())
        }
    }
}

/// Refuses a run whose tensors would not fit in this machine's free memory, before any is
/// allocated (an allocation that fails aborts the process).
fn check_memory(net: &Network, o: &Resolved, optimizer: &Optimizer) -> Result<()> {
    let Some(available) = available_memory() else {
        return Ok(());
    };
    let params = net.parameter_bytes().unwrap_or(u64::MAX);
    // Parameters, gradients and optimizer slots (host copies and the CPU path), and one
    // batch's activations and deltas per layer.
    let slots = 2 + optimizer.kind.state_names().len() as u64;
    let widths: u64 = net.widths().iter().map(|&w| w as u64).sum();
    let needed = params.saturating_mul(slots).saturating_add(
        (o.batch_size as u64)
            .saturating_mul(widths)
            .saturating_mul(4 * 3),
    );
    if needed > available {
        return Err(Error::Config(format!(
            "--layers {}: the network needs about {:.1} GiB ({} parameters with their gradients and optimizer state), more than the {:.1} GiB of memory available",
            join(&net.widths()),
            needed as f64 / (1u64 << 30) as f64,
            params / 4,
            available as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}

/// MemAvailable of /proc/meminfo in bytes (Linux); `None` elsewhere.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The network the options describe for this data.
pub fn build_network(o: &Resolved, c: &Choices, data: &Dataset, loss: Loss) -> Result<Network> {
    let outputs = match (data.targets.classes(), loss) {
        (Some(2), Loss::BinaryCrossEntropy) => 1,
        (Some(c), _) => c,
        (None, _) => match &data.targets {
            soma::data::Targets::Values { width, .. } => *width,
            _ => 1,
        },
    };
    let widths = match &o.layers {
        Some(w) => w.clone(),
        None => vec![data.width, 64, outputs],
    };
    if widths.first() != Some(&data.width) {
        return Err(Error::Config(format!(
            "--layers {}: the first width must be the data's {} features",
            join(&widths),
            data.width
        )));
    }
    if widths.last() != Some(&outputs) {
        return Err(Error::Config(format!(
            "--layers {}: the last width must be {outputs} ({})",
            join(&widths),
            match data.targets.classes() {
                Some(c) => format!("{c} classes with {loss}"),
                None => "the target width".into(),
            }
        )));
    }
    let net = Network::mlp(&widths, c.hidden, c.output)?;
    check_memory(&net, o, &c.optimizer)?;
    Ok(net)
}

/// Layer widths as the `--layers` flag spells them.
pub(super) fn join(w: &[usize]) -> String {
    w.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The loss the options name, or the task's default.
pub fn choose_loss(c: &Choices, data: &Dataset) -> Result<Loss> {
    match c.loss {
        Some(l) => Ok(l),
        None => Ok(if data.targets.classes().is_some() {
            Loss::SoftmaxCrossEntropy
        } else {
            Loss::Mse
        }),
    }
}

pub fn train_config(o: &Resolved, c: &Choices) -> Result<TrainConfig> {
    Ok(TrainConfig {
        epochs: o.epochs,
        batch_size: o.batch_size,
        shuffle: o.shuffle,
        seed: o.seed,
        // Recorded for config.json; the split itself is made by `prepare_data`.
        validation_fraction: (o.val_fraction > 0.0).then_some(o.val_fraction),
        early_stopping: o.patience.map(|patience| EarlyStopping {
            patience,
            min_delta: o.min_delta,
            restore_best: true,
        }),
        schedule: c.schedule,
        log_every: 0,
        shadow_check: o.shadow_check,
        shadow_tolerance: o.shadow_tolerance,
        shadow_stop: o.shadow_action.as_deref() == Some("stop"),
        determinism: c.determinism,
    })
}

#[cfg(test)]
mod tests {
    use super::super::options::TrainOptions;
    use super::*;

    /// `TrainConfig::default()` and `Optimizer::default()` are what `soma train` uses when
    /// no flag is given, so that the library and the command train alike.
    #[test]
    fn the_librarys_defaults_are_the_commands() {
        let o = TrainOptions::default().resolve().expect("defaults resolve");
        let c = o.choices().expect("default choices");
        assert_eq!(
            train_config(&o, &c).expect("config"),
            TrainConfig::default()
        );
        assert_eq!(c.optimizer, Optimizer::default());
    }
}
