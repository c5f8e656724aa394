//! Whole-network backprop on the CPU path against finite differences.
//!
//! For every differentiable hidden activation and every loss, a small two-hidden-layer net
//! (3-5-4-k) takes one SGD training step through the plan and the CPU executor, filled the way
//! the trainer fills them. The step's `d_weight` / `d_bias` buffers are compared with central
//! differences of the mean batch loss, computed by an independent forward pass in f64 written
//! here (plain loops, the loss formulas of shaders/loss.wgsl). A partial batch (5 of 7 rows,
//! then the 2-row tail) checks that only the rows of the order that the step draws count, with
//! the mean over those rows.
//!
//! The f64 reference is pinned to the library's own loss by comparing it with
//! `Model::evaluate` on the CPU, so the gradients are checked against the same function.

mod common;

use std::ops::Range;

use common::{assert_close, TestRng};
use soma::data::{Dataset, Targets};
use soma::exec::{Executor, Pass};
use soma::plan::{targets_for, Plan};
use soma::{Activation, Device, LayerParams, Loss, Model, Network, Optimizer, Parameters};

// ---------------------------------------------------------------------------------------
// Problem set-up

const ROWS: usize = 7;
const INPUTS: usize = 3;
const HIDDEN: [usize; 2] = [5, 4];

/// The central-difference step, applied to the f64 copy of each parameter.
const H: f64 = 1e-4;

/// Gradient tolerance, abs + rel. soma's gradients are f32: each is the end of a chain of f32
/// dot products of <= 7 terms, exp/tanh and sums over the batch, so it carries relative
/// rounding of a few 1e-7 of the largest gradient of its tensor (at most 1.1e-6 absolute was
/// seen here, on gradients up to 4). The reference is f64 on the same f32 inputs and
/// parameters; its central difference has truncation error O(h^2 f''') ~ 1e-8 and rounding
/// ~ 1e-16 / h ~ 1e-12. So the tolerance leaves ~10x room for honest rounding and is still
/// tight against a real mistake: a wrong factor (the 2 of mse, 1/rows against 1/(rows*cols)),
/// a wrong derivative, a transposed index or a stray row changes gradients by percents or
/// more. (A looser 2e-4 abs would let a 10% error through on the smallest layer gradients
/// here, ~2e-3; `assert_teeth` keeps every layer's largest gradient above 10 * ATOL.)
const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-3;

/// Pre-activations of ReLU-like layers stay at least this far from the kink at 0. One
/// parameter moved by h = 1e-4 moves any pre-activation by at most h * max(|input|, 1) times
/// the weights downstream (all |w| <= 1, inputs |x| <= 1, hidden values |a| <= 4): at most
/// 4e-4 for the kinked layers 0 and 1, so no finite difference crosses a kink. The sign
/// pattern of every perturbed pass is also compared with the unperturbed one.
const KINK_MARGIN: f64 = 1e-3;

/// The hidden activations with a gradient.
const HIDDEN_ACTS: [Activation; 6] = [
    Activation::Identity,
    Activation::Relu,
    Activation::LeakyRelu { slope: 0.1 },
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Gelu,
];

/// A loss, the output activation it is used with, and the kind of targets it gets.
#[derive(Clone, Copy, Debug)]
enum Case {
    /// mse, identity output, 2 real-valued targets in [-1, 1].
    MseIdentity,
    /// mse, sigmoid output, 3 classes one-hot.
    MseSigmoid,
    /// softmax cross-entropy, 3 classes.
    CrossEntropy,
    /// bce from one logit, 2 classes (label as the 0/1 target).
    Bce,
    /// bce from 2 logits, soft targets in [0, 1].
    BceSoft,
}

const CASES: [Case; 5] = [
    Case::MseIdentity,
    Case::MseSigmoid,
    Case::CrossEntropy,
    Case::Bce,
    Case::BceSoft,
];

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::MseIdentity => "mse (identity output)",
            Case::MseSigmoid => "mse (sigmoid output, one-hot)",
            Case::CrossEntropy => "cross_entropy",
            Case::Bce => "bce (1 logit, class labels)",
            Case::BceSoft => "bce (2 logits, soft targets)",
        }
    }
    fn loss(self) -> Loss {
        match self {
            Case::MseIdentity | Case::MseSigmoid => Loss::Mse,
            Case::CrossEntropy => Loss::SoftmaxCrossEntropy,
            Case::Bce | Case::BceSoft => Loss::BinaryCrossEntropy,
        }
    }
    fn output_activation(self) -> Activation {
        match self {
            Case::MseSigmoid => Activation::Sigmoid,
            _ => Activation::Identity,
        }
    }
    fn outputs(self) -> usize {
        match self {
            Case::MseIdentity | Case::BceSoft => 2,
            Case::MseSigmoid | Case::CrossEntropy => 3,
            Case::Bce => 1,
        }
    }
    fn targets(self, rng: &mut TestRng) -> Targets {
        match self {
            Case::MseIdentity => Targets::Values {
                values: rng.vec(ROWS * 2, -1.0, 1.0),
                width: 2,
            },
            Case::BceSoft => Targets::Values {
                values: rng.vec(ROWS * 2, 0.0, 1.0),
                width: 2,
            },
            Case::MseSigmoid | Case::CrossEntropy => Targets::Classes {
                labels: (0..ROWS).map(|_| rng.below(3)).collect(),
                classes: 3,
            },
            Case::Bce => Targets::Classes {
                labels: (0..ROWS).map(|_| rng.below(2)).collect(),
                classes: 2,
            },
        }
    }
}

/// The targets as the reference sees them, derived here from the dataset (not through
/// `plan::targets_for`).
enum RefTargets {
    /// `(rows, outputs)` values.
    Values(Vec<f64>),
    Labels(Vec<u32>),
}

fn ref_targets(case: Case, targets: &Targets) -> RefTargets {
    let k = case.outputs();
    match (targets, case.loss()) {
        (Targets::Classes { labels, .. }, Loss::SoftmaxCrossEntropy) => {
            RefTargets::Labels(labels.clone())
        }
        (Targets::Classes { labels, .. }, _) if k == 1 => {
            RefTargets::Values(labels.iter().map(|&l| l as f64).collect())
        }
        (Targets::Classes { labels, .. }, _) => {
            let mut v = vec![0.0; labels.len() * k];
            for (r, &l) in labels.iter().enumerate() {
                v[r * k + l as usize] = 1.0;
            }
            RefTargets::Values(v)
        }
        (Targets::Values { values, .. }, _) => {
            RefTargets::Values(values.iter().map(|&v| v as f64).collect())
        }
    }
}

struct Problem {
    case: Case,
    hidden: Activation,
    net: Network,
    data: Dataset,
    params: Parameters,
    target: RefTargets,
}

impl Problem {
    /// Random features, targets and parameters, all uniform in [-1, 1] (targets as the case
    /// says).
    fn draw(case: Case, hidden: Activation, seed: u64) -> Problem {
        let mut rng = TestRng::new(seed);
        let widths = [INPUTS, HIDDEN[0], HIDDEN[1], case.outputs()];
        let net = Network::mlp(&widths, hidden, case.output_activation()).unwrap();
        let features = rng.vec(ROWS * INPUTS, -1.0, 1.0);
        let targets = case.targets(&mut rng);
        let data = Dataset::new("fd", features, INPUTS, targets).unwrap();
        let layers = net
            .layers
            .iter()
            .map(|l| LayerParams {
                weight: rng.vec(l.inputs * l.outputs, -1.0, 1.0),
                bias: Some(rng.vec(l.outputs, -1.0, 1.0)),
            })
            .collect();
        let params = Parameters { layers };
        let target = ref_targets(case, &data.targets);
        Problem {
            case,
            hidden,
            net,
            data,
            params,
            target,
        }
    }

    /// Draws until every ReLU-like pre-activation over `rows` is KINK_MARGIN away from 0 (for
    /// smooth activations the first draw).
    fn draw_clear_of_kinks(case: Case, hidden: Activation, seed: u64, rows: &[usize]) -> Problem {
        for attempt in 0..100 {
            let p = Problem::draw(case, hidden, seed + attempt);
            if p.forward(&to_f64(&p.params), rows).min_kink >= KINK_MARGIN {
                return p;
            }
        }
        panic!(
            "{hidden}, {}: no draw keeps the pre-activations clear of 0",
            case.name()
        );
    }

    fn label(&self) -> String {
        format!("hidden {}, loss {}", self.hidden, self.case.name())
    }

    /// The reference forward pass over `rows` (indices into the dataset), in f64.
    fn forward(&self, tensors: &[Vec<f64>], rows: &[usize]) -> Forward {
        let k = self.case.outputs();
        let mut total = 0.0;
        let mut min_kink = f64::INFINITY;
        let mut signs = Vec::new();
        for &r in rows {
            let mut a: Vec<f64> = self.data.row(r).iter().map(|&v| v as f64).collect();
            for (i, l) in self.net.layers.iter().enumerate() {
                let (w, b) = (&tensors[2 * i], &tensors[2 * i + 1]);
                let kinked = matches!(
                    l.activation,
                    Activation::Relu | Activation::LeakyRelu { .. }
                );
                a = (0..l.outputs)
                    .map(|j| {
                        let mut z = b[j];
                        for (c, &av) in a.iter().enumerate() {
                            z += av * w[j * l.inputs + c];
                        }
                        if kinked {
                            min_kink = min_kink.min(z.abs());
                            signs.push(z > 0.0);
                        }
                        act(l.activation, z)
                    })
                    .collect();
            }
            total += match &self.target {
                RefTargets::Values(t) => {
                    let t = &t[r * k..r * k + k];
                    a.iter()
                        .zip(t)
                        .map(|(&p, &t)| match self.case.loss() {
                            Loss::Mse => (p - t) * (p - t),
                            Loss::BinaryCrossEntropy => {
                                p.max(0.0) - p * t + (-p.abs()).exp().ln_1p()
                            }
                            Loss::SoftmaxCrossEntropy => unreachable!(),
                        })
                        .sum::<f64>()
                }
                RefTargets::Labels(labels) => {
                    let m = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let lse = m + a.iter().map(|&z| (z - m).exp()).sum::<f64>().ln();
                    lse - a[labels[r] as usize]
                }
            };
        }
        let n = match self.case.loss() {
            Loss::SoftmaxCrossEntropy => rows.len(),
            Loss::Mse | Loss::BinaryCrossEntropy => rows.len() * k,
        };
        Forward {
            loss: total / n as f64,
            min_kink,
            signs,
        }
    }

    /// Central differences of the mean loss over `rows` for every parameter, tensor by tensor
    /// (weight, bias per layer). Asserts that no perturbed pass changes a ReLU's side.
    fn fd_gradients(&self, params: &Parameters, rows: &[usize]) -> Vec<Vec<f64>> {
        let mut t = to_f64(params);
        let base = self.forward(&t, rows);
        assert!(
            base.min_kink >= KINK_MARGIN,
            "{}: a pre-activation is {:e} from the kink",
            self.label(),
            base.min_kink
        );
        let mut grads = Vec::new();
        for ti in 0..t.len() {
            let mut g = Vec::with_capacity(t[ti].len());
            for j in 0..t[ti].len() {
                let x0 = t[ti][j];
                t[ti][j] = x0 + H;
                let fp = self.forward(&t, rows);
                t[ti][j] = x0 - H;
                let fm = self.forward(&t, rows);
                t[ti][j] = x0;
                assert!(
                    fp.signs == base.signs && fm.signs == base.signs,
                    "{}: perturbing tensor {ti}[{j}] crosses a kink",
                    self.label()
                );
                g.push((fp.loss - fm.loss) / (2.0 * H));
            }
            grads.push(g);
        }
        grads
    }
}

struct Forward {
    loss: f64,
    /// The smallest |pre-activation| of a ReLU-like layer (infinity without one).
    min_kink: f64,
    /// Which side of 0 each ReLU-like pre-activation is on.
    signs: Vec<bool>,
}

fn act(a: Activation, z: f64) -> f64 {
    match a {
        Activation::Identity => z,
        Activation::Relu => z.max(0.0),
        Activation::LeakyRelu { slope } => {
            if z > 0.0 {
                z
            } else {
                slope as f64 * z
            }
        }
        Activation::Sigmoid => 1.0 / (1.0 + (-z).exp()),
        Activation::Tanh => z.tanh(),
        // PyTorch's approximate="tanh" form, in f64.
        Activation::Gelu => {
            let b = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * z * (1.0 + (b * (z + 0.044715 * z * z * z)).tanh())
        }
        other => panic!("{other} has no gradient"),
    }
}

/// The parameters as f64 tensors, weight then bias per layer (`Parameters::named` order).
fn to_f64(p: &Parameters) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for l in &p.layers {
        out.push(l.weight.iter().map(|&v| v as f64).collect());
        out.push(l.bias.as_ref().unwrap().iter().map(|&v| v as f64).collect());
    }
    out
}

fn tensor_name(t: usize) -> String {
    let what = ["d_weight", "d_bias"][t % 2];
    format!("layer {} {what}", t / 2)
}

// ---------------------------------------------------------------------------------------
// The soma side: a training plan on the CPU executor

struct SomaRun {
    plan: Plan,
    exec: Executor<'static>,
}

impl SomaRun {
    /// Lays out one SGD run of `p` in batches of `batch` and fills its buffers the way the
    /// trainer does (parameters, features, labels / values, then the row order `order`).
    fn new(p: &Problem, batch: usize, order: &[u32]) -> SomaRun {
        let loss = p.case.loss();
        let plan = Plan::new(
            &p.net,
            loss,
            Some(&Optimizer::sgd(0.1)),
            Some(&p.data),
            None,
            batch,
        )
        .unwrap();
        assert_eq!(plan.batch, batch.min(ROWS));
        let mut exec = Executor::new(Device::Cpu, &plan).unwrap();
        for (id, values) in plan.parameter_values(&p.params).unwrap() {
            exec.write_f32(&plan, id, values).unwrap();
        }
        let d = plan.train.clone().unwrap();
        exec.write_f32(&plan, d.x, &p.data.features).unwrap();
        let (labels, values) = targets_for(loss, p.net.output_width(), &p.data).unwrap();
        if let (Some(id), Some(l)) = (d.labels, labels) {
            exec.write_u32(&plan, id, &l).unwrap();
        }
        if let (Some(id), Some(v)) = (d.values, values) {
            exec.write_f32(&plan, id, &v).unwrap();
        }
        exec.write_u32(&plan, d.indices, order).unwrap();
        SomaRun { plan, exec }
    }

    fn run(&mut self, steps: Range<usize>) {
        self.exec.run(&self.plan, Pass::Train, steps).unwrap();
    }

    /// The gradients of the last step, weight then bias per layer.
    fn gradients(&self) -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        for l in &self.plan.layers {
            out.push(self.exec.read_f32(l.d_weight).unwrap());
            out.push(self.exec.read_f32(l.d_bias.unwrap()).unwrap());
        }
        out
    }

    fn parameters(&self) -> Parameters {
        let layers = self
            .plan
            .layers
            .iter()
            .map(|l| LayerParams {
                weight: self.exec.read_f32(l.weight).unwrap(),
                bias: Some(self.exec.read_f32(l.bias.unwrap()).unwrap()),
            })
            .collect();
        Parameters { layers }
    }

    fn loss_sum(&self) -> f32 {
        self.exec
            .read_f32(self.plan.train.as_ref().unwrap().loss_sum)
            .unwrap()[0]
    }
}

/// Compares soma's gradients with the finite differences, tensor by tensor.
fn compare(label: &str, got: &[Vec<f32>], want: &[Vec<f64>]) {
    assert_eq!(got.len(), want.len(), "{label}: tensor count");
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        let w: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        assert_close(&format!("{label}, {}", tensor_name(t)), g, &w, ATOL, RTOL);
    }
}

/// The comparison only means something if the gradients are well above ATOL: asserts the
/// largest one of every layer is.
fn assert_teeth(label: &str, want: &[Vec<f64>]) {
    for (layer, pair) in want.chunks(2).enumerate() {
        let max = pair.iter().flatten().fold(0.0f64, |m, &v| m.max(v.abs()));
        assert!(
            max > 10.0 * ATOL as f64,
            "{label}: layer {layer}'s gradients are at most {max:e}, too small for the tolerance to bite"
        );
    }
}

/// The seed of a (case, activation) pair.
fn seed(case: usize, act: usize) -> u64 {
    0xbac0_0000 + 1000 * (case as u64 * HIDDEN_ACTS.len() as u64 + act as u64)
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn full_batch_gradients_match_finite_differences() {
    // batch = all 7 rows, order 0..7: one step sees every row, and its gradient is that of
    // the mean loss over the dataset.
    let all: Vec<usize> = (0..ROWS).collect();
    let order: Vec<u32> = (0..ROWS as u32).collect();
    for (ci, &case) in CASES.iter().enumerate() {
        for (ai, &hidden) in HIDDEN_ACTS.iter().enumerate() {
            let p = Problem::draw_clear_of_kinks(case, hidden, seed(ci, ai), &all);
            let label = p.label();
            let want = p.fd_gradients(&p.params, &all);
            assert_teeth(&label, &want);

            let mut run = SomaRun::new(&p, ROWS, &order);
            run.run(0..1);
            compare(&label, &run.gradients(), &want);

            // The step's loss sum (zeroed at allocation) is the sum of the row losses.
            let reference = p.forward(&to_f64(&p.params), &all).loss;
            let got = run.loss_sum() as f64 / ROWS as f64;
            assert!(
                (got - reference).abs() <= 1e-5 * reference.abs() + 1e-6,
                "{label}: training step loss {got} vs reference {reference}"
            );
            // The SGD update used those gradients: params' = params - 0.1 * grad.
            let grads = run.gradients();
            for (t, (after, before)) in to_f64(&run.parameters())
                .iter()
                .zip(to_f64(&p.params))
                .enumerate()
            {
                for (j, (&a, &b)) in after.iter().zip(&before).enumerate() {
                    let expect = b - 0.1 * grads[t][j] as f64;
                    assert!(
                        (a - expect).abs() <= 1e-6 * (1.0 + b.abs()),
                        "{label}, parameter {t}[{j}]: after the step {a}, expected {expect}"
                    );
                }
            }
        }
    }
}

#[test]
fn partial_batch_gradients_match_finite_differences() {
    // batch 5 of 7 rows in a shuffled order: step 0 sees the first 5 rows of the order, step 1
    // the last 2 (a partial batch, its 3 padded rows carrying no loss and no gradient). Each
    // step's gradient is that of the mean loss over its own rows, at the parameters the step
    // starts from.
    let order: [u32; ROWS] = [3, 6, 0, 5, 1, 4, 2];
    let rows: Vec<usize> = order.iter().map(|&i| i as usize).collect();
    let (first, tail) = rows.split_at(5);
    for (ci, &case) in CASES.iter().enumerate() {
        for (ai, &hidden) in HIDDEN_ACTS.iter().enumerate() {
            // The step-1 parameters are only known after step 0, so the kink check covers
            // both and a draw that fails either is replaced.
            let mut found = None;
            for attempt in 0..100 {
                let p = Problem::draw(case, hidden, seed(ci, ai) + 500 + attempt);
                if p.forward(&to_f64(&p.params), first).min_kink < KINK_MARGIN {
                    continue;
                }
                let mut run = SomaRun::new(&p, 5, &order);
                run.run(0..1);
                let after = run.parameters();
                if p.forward(&to_f64(&after), tail).min_kink < KINK_MARGIN {
                    continue;
                }
                found = Some((p, run, after));
                break;
            }
            let (p, mut run, after) = found.unwrap_or_else(|| {
                panic!(
                    "{hidden}, {}: no draw keeps the pre-activations clear of 0",
                    case.name()
                )
            });
            let label = p.label();

            let want0 = p.fd_gradients(&p.params, first);
            assert_teeth(&format!("{label}, step 0 (rows 0..5 of the order)"), &want0);
            compare(
                &format!("{label}, batch 5 of 7, step 0"),
                &run.gradients(),
                &want0,
            );
            let loss0 = p.forward(&to_f64(&p.params), first).loss;
            let got0 = run.loss_sum() as f64 / 5.0;
            assert!(
                (got0 - loss0).abs() <= 1e-5 * loss0.abs() + 1e-6,
                "{label}, step 0: loss {got0} vs reference {loss0}"
            );

            run.run(1..2);
            let want1 = p.fd_gradients(&after, tail);
            compare(
                &format!("{label}, batch 5 of 7, step 1 (2 live rows)"),
                &run.gradients(),
                &want1,
            );
            let loss1 = p.forward(&to_f64(&after), tail).loss;
            let got1 = run.loss_sum() as f64 - got0 * 5.0;
            assert!(
                (got1 - 2.0 * loss1).abs() <= 1e-5 * (5.0 * loss0.abs() + 2.0 * loss1.abs()) + 1e-6,
                "{label}, step 1: loss sum {got1} vs reference {}",
                2.0 * loss1
            );
        }
    }
}

#[test]
fn reference_loss_matches_model_evaluate() {
    // The f64 forward pass above and `Model::evaluate` on the CPU compute the same mean loss
    // (to f32 rounding), so the finite differences differentiate soma's own loss. Batch 3
    // (3 + 3 + 1 rows) also covers the evaluation's partial batch.
    let all: Vec<usize> = (0..ROWS).collect();
    for (ci, &case) in CASES.iter().enumerate() {
        for (ai, &hidden) in HIDDEN_ACTS.iter().enumerate() {
            let p = Problem::draw(case, hidden, seed(ci, ai) + 900);
            let model = Model::with_params(p.net.clone(), p.params.clone())
                .unwrap()
                .with_loss(case.loss());
            for batch in [ROWS, 3] {
                let e = model.evaluate(Device::Cpu, &p.data, batch).unwrap();
                assert_eq!(e.samples, ROWS);
                let reference = p.forward(&to_f64(&p.params), &all).loss;
                assert!(
                    (e.loss as f64 - reference).abs() <= 1e-5 * reference.abs(),
                    "{}, batch {batch}: evaluate gives {}, the reference {reference}",
                    p.label(),
                    e.loss
                );
            }
        }
    }
}
