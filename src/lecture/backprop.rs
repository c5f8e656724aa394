//! XOR learned by back-propagation from random weights, as on the lecture's slides: MSE,
//! plain SGD on the full batch of the four points, a sweep over seeds, and a diagnosis of
//! the runs that fail (dead ReLU units, saturated sigmoid/tanh units, plateaus).

use crate::math::Math;

use std::ops::Range;

use super::{TRUTH_INPUTS, XOR_TARGETS};
use crate::data::{Dataset, Targets};
use crate::error::{Error, Result};
use crate::exec::Device;
use crate::network::{Activation, Init, Network, Parameters};
use crate::ops::activation::cpu::derivative_of;
use crate::ops::loss::Loss;
use crate::optim::{Optimizer, Schedule};
use crate::trainer::{Fit, Model, TrainConfig};

/// How one XOR network is trained: a 2-`hidden`-1 network with `activation` on the hidden
/// layer and an identity output, MSE loss, plain SGD at `lr` on the full batch of the four
/// points for `epochs` epochs, PyTorch's default initialisation from the run's seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct XorSetup {
    pub hidden: usize,
    pub activation: Activation,
    pub lr: f32,
    pub epochs: usize,
}

impl XorSetup {
    /// The settings of the lecture examples.
    pub fn new(hidden: usize, activation: Activation) -> XorSetup {
        XorSetup {
            hidden,
            activation,
            lr: XOR_LR,
            epochs: XOR_EPOCHS,
        }
    }
}

/// The learning rate of the XOR sweep. With it the 2-4-1 tanh network solves XOR from all
/// 20 seeds (so it does at 0.1 and 0.3; at 0.5 training diverges on some seed), while the
/// small sigmoid networks still show their plateaus.
pub const XOR_LR: f32 = 0.2;
/// The epochs (= SGD steps, one full batch each) of the XOR sweep: the 2-4-1 tanh network
/// needs at most 300 of them on seeds 0-19, so 2000 leaves a wide margin.
pub const XOR_EPOCHS: usize = 2000;

/// Why a run did not solve XOR, as far as its hidden layer tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XorFailure {
    /// `dead` hidden ReLU units have a negative pre-activation on all four inputs: their
    /// gradient is zero everywhere, so they can never come back.
    DeadUnits { dead: usize },
    /// Some hidden sigmoid/tanh units sit on the flat part of the curve on every input
    /// (derivative below 0.01), so the gradient through them has all but vanished.
    Saturated { units: usize },
    /// No dead or saturated unit: the loss sits on a plateau (a saddle or local minimum of
    /// the MSE surface, typically with one input wrong) that SGD leaves very slowly.
    Plateau,
}

/// One trained XOR network.
#[derive(Clone, Debug, PartialEq)]
pub struct XorRun {
    pub seed: u64,
    /// All four outputs on the right side of 0.5.
    pub solved: bool,
    /// The network's four outputs.
    pub outputs: Vec<f32>,
    /// The final MSE over the four points.
    pub loss: f32,
    /// Why it failed (when it did).
    pub failure: Option<XorFailure>,
    /// Hidden ReLU units already dead at initialisation (negative pre-activation on all four
    /// inputs before the first step); 0 for other activations.
    pub dead_at_start: usize,
    pub params: Parameters,
}

/// The XOR table as a dataset: 0/1 class labels, which MSE trains as 0/1 targets.
pub fn xor_dataset() -> Result<Dataset> {
    Dataset::new(
        "xor",
        TRUTH_INPUTS.to_vec(),
        2,
        Targets::Classes {
            labels: vec![0, 1, 1, 0],
            classes: 2,
        },
    )
}

/// Trains one XOR network from seed `seed` and diagnoses it.
pub fn train_xor(device: Device<'_>, setup: &XorSetup, seed: u64) -> Result<XorRun> {
    let net = Network::mlp(
        &[2, setup.hidden, 1],
        setup.activation,
        Activation::Identity,
    )?;
    let mut model = Model::new(net, Init::Pytorch, seed)?;
    let dead_at_start = if setup.activation == Activation::Relu {
        let start = model.forward_layers(device, &TRUTH_INPUTS, 4)?;
        let pre = start.first().map_or(&[][..], |l| &l.pre[..]);
        dead_units(pre, setup.hidden)
    } else {
        0
    };
    let data = xor_dataset()?;
    let config = TrainConfig {
        epochs: setup.epochs,
        batch_size: 4,
        shuffle: false,
        seed,
        // The lecture's plain loop: a constant rate and no validation split.
        validation_fraction: None,
        schedule: Schedule::Constant,
        ..Default::default()
    };
    Fit::new(&mut model)
        .loss(Loss::Mse)
        .optimizer(Optimizer::sgd(setup.lr))
        .config(config)
        .run(device, &data)?;
    let layers = model.forward_layers(device, &TRUTH_INPUTS, 4)?;
    let (hidden, output) = match layers.as_slice() {
        [h, o] => (h, o),
        _ => return Err(Error::Config("xor: expected two layers".into())),
    };
    let outputs = output.out.clone();
    let solved = outputs
        .iter()
        .zip(XOR_TARGETS)
        .all(|(&y, t)| (y >= 0.5) == (t >= 0.5));
    let loss = outputs
        .iter()
        .zip(XOR_TARGETS)
        .map(|(y, t)| (y - t) * (y - t))
        .sum::<f32>()
        / 4.0;
    let failure = (!solved).then(|| diagnose(setup, &hidden.pre));
    Ok(XorRun {
        seed,
        solved,
        outputs,
        loss,
        failure,
        dead_at_start,
        params: model.params,
    })
}

/// Hidden units whose pre-activation `(4, hidden)` is at or below 0 on all four inputs.
fn dead_units(pre: &[f32], hidden: usize) -> usize {
    (0..hidden)
        .filter(|&u| (0..4).all(|r| pre.get(r * hidden + u).is_some_and(|&z| z <= 0.0)))
        .count()
}

/// Looks at the hidden pre-activations `(4, hidden)` of a failed run.
fn diagnose(setup: &XorSetup, pre: &[f32]) -> XorFailure {
    let h = setup.hidden;
    let all_inputs = |unit: usize, test: &dyn Fn(f32) -> bool| {
        (0..4).all(|r| pre.get(r * h + unit).is_some_and(|&z| test(z)))
    };
    let act = setup.activation;
    if act == Activation::Relu {
        let dead = dead_units(pre, h);
        if dead > 0 {
            return XorFailure::DeadUnits { dead };
        }
    } else if act.saturates() {
        // A unit whose slope is under 0.01 on all four inputs passes almost no gradient.
        let flat = |z: f32| derivative_of(act, z, Math::Native) < 0.01;
        let units = (0..h).filter(|&u| all_inputs(u, &flat)).count();
        if units > 0 {
            return XorFailure::Saturated { units };
        }
    }
    XorFailure::Plateau
}

/// Trains one XOR network per seed in `seeds`.
pub fn xor_sweep(device: Device<'_>, setup: &XorSetup, seeds: Range<u64>) -> Result<Vec<XorRun>> {
    seeds.map(|s| train_xor(device, setup, s)).collect()
}
