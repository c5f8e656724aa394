//! The CPU twins of the op families (`soma::cpu`) pinned to values derived by hand, and their derivatives checked
//! against central finite differences. No GPU: these tests say what the reference computes,
//! so that the GPU comparison in tests/kernels.rs compares against the right thing.
//!
//! Each golden carries the arithmetic that gives its expected numbers. Tolerances are abs + rel
//! (`assert_close`, which never lets NaN pass), and the reason for each is next to it. Inputs
//! that make the result exact in f32 (small integers, dyadic fractions) are compared with zero
//! tolerance.

mod common;

use common::{assert_close, TestRng};
use soma::cpu;
use soma::ops::uniforms::*;
use soma::Activation;
use soma::Math;

// ---------------------------------------------------------------------------------------
// Helpers

fn mm(m: u32, n: u32, k: u32, accumulate: u32) -> MatmulParams {
    MatmulParams {
        m,
        n,
        k,
        accumulate,
    }
}

fn act(rows: u32, cols: u32, a: Activation, has_bias: u32) -> ActivationParams {
    ActivationParams {
        rows,
        cols,
        kind: a.code(),
        has_bias,
        slope: a.slope(),
        ..Default::default()
    }
}

fn rows_p(rows: u32, cols: u32, accumulate: u32) -> RowsParams {
    RowsParams {
        rows,
        cols,
        accumulate,
        ..Default::default()
    }
}

/// `act(z)` element-wise through `bias_activation_forward` without a bias.
fn forward(a: Activation, z: &[f32]) -> Vec<f32> {
    let mut pre = z.to_vec();
    let mut out = vec![f32::NAN; z.len()];
    cpu::bias_activation_forward(
        &mut out,
        &mut pre,
        &[],
        &act(1, z.len() as u32, a, 0),
        Math::Native,
    );
    assert_eq!(pre, z, "has_bias = 0 must leave pre alone");
    out
}

/// `dout * act'(z)` element-wise through `activation_backward`.
fn backward(a: Activation, dout: &[f32], z: &[f32]) -> Vec<f32> {
    let mut dpre = vec![f32::NAN; z.len()];
    cpu::activation_backward(
        &mut dpre,
        dout,
        z,
        &act(1, z.len() as u32, a, 0),
        Math::Native,
    );
    dpre
}

/// Central differences of a scalar function `f` at `x`, one coordinate at a time, in f64: x[i]
/// moves to the f32 points x[i] + h and x[i] - h, and the quotient divides by the distance
/// between the points actually reached (so the rounding of x ± h costs nothing).
fn central_diff(x: &[f32], h: f32, mut f: impl FnMut(&[f32]) -> f64) -> Vec<f32> {
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            let (xp, xm) = (x0 + h, x0 - h);
            xs[i] = xp;
            let fp = f(&xs);
            xs[i] = xm;
            let fm = f(&xs);
            xs[i] = x0;
            ((fp - fm) / (xp as f64 - xm as f64)) as f32
        })
        .collect()
}

/// The batch loss as the trainer reports it: the mean of row_loss over the live rows, in f64.
fn mean_live(row_loss: &[f32], rows: usize) -> f64 {
    row_loss[..rows].iter().map(|&l| l as f64).sum::<f64>() / rows as f64
}

/// The step of every finite difference below.
const H: f32 = 1e-3;

// ---------------------------------------------------------------------------------------
// Matmul goldens. Small integers: every product and partial sum is an integer far below 2^24,
// so f32 is exact and the tolerance is zero.

// A (2x3) = [1 2 3; 4 5 6].
const A23: [f32; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];

#[test]
fn matmul_nt_golden() {
    // b (n=2, k=3) = [7 8 9; 10 11 12]; out = A · bᵀ:
    //   out[0][0] = 1*7 + 2*8 + 3*9    = 7 + 16 + 27  = 50
    //   out[0][1] = 1*10 + 2*11 + 3*12 = 10 + 22 + 36 = 68
    //   out[1][0] = 4*7 + 5*8 + 6*9    = 28 + 40 + 54 = 122
    //   out[1][1] = 4*10 + 5*11 + 6*12 = 40 + 55 + 72 = 167
    let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
    let mut out = [99.0f32; 4]; // overwritten with accumulate = 0
    cpu::matmul_nt(&mut out, &A23, &b, &mm(2, 2, 3, 0));
    assert_close("matmul_nt", &out, &[50.0, 68.0, 122.0, 167.0], 0.0, 0.0);
    // accumulate = 1 adds: [1 2 3 4] + [50 68 122 167] = [51 70 125 171].
    let mut out = [1.0f32, 2.0, 3.0, 4.0];
    cpu::matmul_nt(&mut out, &A23, &b, &mm(2, 2, 3, 1));
    assert_close("matmul_nt acc", &out, &[51.0, 70.0, 125.0, 171.0], 0.0, 0.0);

    // m = 1, n = 3, k = 2 (all three sizes different, so a swapped index shows):
    // a = [2 3], b (3x2) = [1 0; 0 1; 1 -1] -> [2*1 + 3*0, 2*0 + 3*1, 2*1 - 3*1] = [2 3 -1].
    let mut out = [99.0f32; 3];
    cpu::matmul_nt(
        &mut out,
        &[2.0, 3.0],
        &[1.0, 0.0, 0.0, 1.0, 1.0, -1.0],
        &mm(1, 3, 2, 0),
    );
    assert_close("matmul_nt 1x3", &out, &[2.0, 3.0, -1.0], 0.0, 0.0);
}

#[test]
fn matmul_nn_golden() {
    // b (k=3, n=2) = [7 8; 9 10; 11 12]; out = A · b (the textbook example):
    //   out[0][0] = 1*7 + 2*9 + 3*11  = 7 + 18 + 33  = 58
    //   out[0][1] = 1*8 + 2*10 + 3*12 = 8 + 20 + 36  = 64
    //   out[1][0] = 4*7 + 5*9 + 6*11  = 28 + 45 + 66 = 139
    //   out[1][1] = 4*8 + 5*10 + 6*12 = 32 + 50 + 72 = 154
    let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
    let mut out = [99.0f32; 4];
    cpu::matmul_nn(&mut out, &A23, &b, &mm(2, 2, 3, 0));
    assert_close("matmul_nn", &out, &[58.0, 64.0, 139.0, 154.0], 0.0, 0.0);
    // accumulate = 1: [1 2 3 4] + [58 64 139 154] = [59 66 142 158].
    let mut out = [1.0f32, 2.0, 3.0, 4.0];
    cpu::matmul_nn(&mut out, &A23, &b, &mm(2, 2, 3, 1));
    assert_close("matmul_nn acc", &out, &[59.0, 66.0, 142.0, 158.0], 0.0, 0.0);

    // m = 1, n = 3, k = 2: a = [2 3], b (2x3) = [1 0 1; 0 1 -1] -> [2, 3, 2 - 3] = [2 3 -1].
    let mut out = [99.0f32; 3];
    cpu::matmul_nn(
        &mut out,
        &[2.0, 3.0],
        &[1.0, 0.0, 1.0, 0.0, 1.0, -1.0],
        &mm(1, 3, 2, 0),
    );
    assert_close("matmul_nn 1x3", &out, &[2.0, 3.0, -1.0], 0.0, 0.0);
}

#[test]
fn matmul_tn_golden() {
    // a (k=3, m=2) = [1 4; 2 5; 3 6] is Aᵀ stored row-major, so aᵀ · b = A · b and with the b
    // of matmul_nn_golden the result is the same [58 64; 139 154].
    let a = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
    let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
    let mut out = [99.0f32; 4];
    cpu::matmul_tn(&mut out, &a, &b, &mm(2, 2, 3, 0));
    assert_close("matmul_tn", &out, &[58.0, 64.0, 139.0, 154.0], 0.0, 0.0);
    // accumulate = 1: [1 2 3 4] + [58 64 139 154] = [59 66 142 158].
    let mut out = [1.0f32, 2.0, 3.0, 4.0];
    cpu::matmul_tn(&mut out, &a, &b, &mm(2, 2, 3, 1));
    assert_close("matmul_tn acc", &out, &[59.0, 66.0, 142.0, 158.0], 0.0, 0.0);

    // m = 1, n = 3, k = 2: a (2x1) = [2; 3], b (2x3) = [1 0 1; 0 1 -1] -> [2 3 -1].
    let mut out = [99.0f32; 3];
    cpu::matmul_tn(
        &mut out,
        &[2.0, 3.0],
        &[1.0, 0.0, 1.0, 0.0, 1.0, -1.0],
        &mm(1, 3, 2, 0),
    );
    assert_close("matmul_tn 1x3", &out, &[2.0, 3.0, -1.0], 0.0, 0.0);
}

// ---------------------------------------------------------------------------------------
// Activation goldens

#[test]
fn bias_activation_forward_adds_bias_in_place() {
    // pre (2x3) = [1 2 3; 4 5 6] + bias [10 20 30] = [11 22 33; 14 25 36] (integers: exact);
    // identity returns it, and pre keeps it for the backward pass.
    let mut pre = A23;
    let mut out = [f32::NAN; 6];
    let p = act(2, 3, Activation::Identity, 1);
    cpu::bias_activation_forward(&mut out, &mut pre, &[10.0, 20.0, 30.0], &p, Math::Native);
    let want = [11.0, 22.0, 33.0, 14.0, 25.0, 36.0];
    assert_close("bias pre", &pre, &want, 0.0, 0.0);
    assert_close("bias out", &out, &want, 0.0, 0.0);
    // The same with relu and a bias that crosses zero: [1 2 3; 4 5 6] + [-2 -5 0] =
    // [-1 -3 3; 2 0 6] -> relu [0 0 3; 2 0 6].
    let mut pre = A23;
    let p = act(2, 3, Activation::Relu, 1);
    cpu::bias_activation_forward(&mut out, &mut pre, &[-2.0, -5.0, 0.0], &p, Math::Native);
    assert_close(
        "bias relu pre",
        &pre,
        &[-1.0, -3.0, 3.0, 2.0, 0.0, 6.0],
        0.0,
        0.0,
    );
    assert_close(
        "bias relu out",
        &out,
        &[0.0, 0.0, 3.0, 2.0, 0.0, 6.0],
        0.0,
        0.0,
    );
}

#[test]
fn activation_forward_goldens() {
    let z = [-2.0f32, -0.5, 0.0, 0.5, 2.0];
    // Piecewise-linear kinds on dyadic inputs are exact, except -0.5 * 0.1 and -2 * 0.1, where
    // the only error is the f32 product's rounding (half an ulp), hence rel 1e-7.
    assert_close("identity", &forward(Activation::Identity, &z), &z, 0.0, 0.0);
    // relu(z) = max(z, 0).
    assert_close(
        "relu",
        &forward(Activation::Relu, &z),
        &[0.0, 0.0, 0.0, 0.5, 2.0],
        0.0,
        0.0,
    );
    // leaky relu, slope 0.1: z for z > 0, 0.1 z otherwise: [-0.2 -0.05 0 0.5 2].
    assert_close(
        "leaky relu 0.1",
        &forward(Activation::LeakyRelu { slope: 0.1 }, &z),
        &[-0.2, -0.05, 0.0, 0.5, 2.0],
        0.0,
        1e-7,
    );

    // sigmoid(z) = 1 / (1 + e^-z):
    //   sigmoid(0)  = 1 / (1 + 1) = 0.5 (exact)
    //   sigmoid(2)  = 1 / (1 + e^-2) = 1 / (1 + 0.1353352832366127) = 0.8807970779778823
    //   sigmoid(-2) = 1 - sigmoid(2) = e^-2 / (1 + e^-2)          = 0.11920292202211755
    // A few f32 operations around an exp that is good to an ulp or two: rel 1e-6.
    assert_close(
        "sigmoid",
        &forward(Activation::Sigmoid, &[-2.0, 0.0, 2.0]),
        &[0.119_202_92, 0.5, 0.880_797_1],
        1e-7,
        1e-6,
    );
    // tanh(z) = (e^2z - 1) / (e^2z + 1):
    //   tanh(0) = 0 (exact), tanh(1) = (7.38905609893065 - 1) / (7.38905609893065 + 1)
    //   = 6.38905609893065 / 8.38905609893065 = 0.7615941559557649, tanh(-1) = -tanh(1).
    // Same tolerance as sigmoid.
    assert_close(
        "tanh",
        &forward(Activation::Tanh, &[-1.0, 0.0, 1.0]),
        &[-0.761_594_2, 0.0, 0.761_594_2],
        1e-7,
        1e-6,
    );
    // gelu, tanh form (PyTorch's approximate="tanh"): 0.5 z (1 + tanh(u)),
    // u = b (z + k z^3), b = sqrt(2/pi) = 0.7978845608028654, k = 0.044715:
    //   gelu(0)  = 0 (exact)
    //   gelu(1)  : u = 0.7978845608 * 1.044715 = 0.8335619689, tanh(u) = 0.6823839812,
    //              0.5 * 1.6823839812 = 0.8411919906082768
    //   gelu(-1) : u = -0.8335619689, 0.5 * -1 * (1 - 0.6823839812) = -0.15880800939172324
    //   gelu(2)  : u = 0.7978845608 * 2.35772 = 1.8811883867, tanh(u) = 0.9545976941,
    //              1.9545976941 = 1.954597694087775
    //   gelu(-3) : u = -3.3569437021, tanh(u) = -0.9975750719, -1.5 * 0.0024249281
    //              = -0.0036373920817729943 (the left tail, small but not 0)
    // Same tolerance as sigmoid.
    assert_close(
        "gelu",
        &forward(Activation::Gelu, &[-3.0, -1.0, 0.0, 1.0, 2.0]),
        &[-0.003_637_392, -0.158_808, 0.0, 0.841_192, 1.954_597_7],
        1e-7,
        1e-6,
    );
    // sign: 1 when z >= 0, else -1, so sign(0) = 1 by this definition (the perceptron's).
    assert_close(
        "sign",
        &forward(Activation::Sign, &[-1.0, 0.0, 1.0]),
        &[-1.0, 1.0, 1.0],
        0.0,
        0.0,
    );
    // step: 1 when z >= 0, else 0, so step(0) = 1.
    assert_close(
        "step",
        &forward(Activation::Step, &[-1.0, 0.0, 1.0]),
        &[0.0, 1.0, 1.0],
        0.0,
        0.0,
    );
    // Huge inputs stay finite (the overflow-free forms): sigmoid(±1000) = 1, 0 (e^-1000
    // underflows to 0 in f32), tanh(±1000) = ±1.
    assert_close(
        "sigmoid huge",
        &forward(Activation::Sigmoid, &[-1000.0, 1000.0]),
        &[0.0, 1.0],
        0.0,
        0.0,
    );
    assert_close(
        "tanh huge",
        &forward(Activation::Tanh, &[-1000.0, 1000.0]),
        &[-1.0, 1.0],
        0.0,
        0.0,
    );
}

#[test]
fn activation_backward_goldens() {
    // dpre = dout * act'(z) with dout = 3 everywhere, z = [-1 0 2].
    let z = [-1.0f32, 0.0, 2.0];
    let dout = [3.0f32; 3];
    // identity' = 1 -> [3 3 3].
    assert_close(
        "identity'",
        &backward(Activation::Identity, &dout, &z),
        &[3.0; 3],
        0.0,
        0.0,
    );
    // relu' = 1 for z > 0, else 0; relu'(0) = 0 by convention -> [0 0 3].
    assert_close(
        "relu'",
        &backward(Activation::Relu, &dout, &z),
        &[0.0, 0.0, 3.0],
        0.0,
        0.0,
    );
    // leaky relu' = 1 for z > 0, else slope (so slope at 0 too): 3 * [0.1 0.1 1] = [0.3 0.3 3].
    // 3 * 0.1 rounds once in f32 (to within an ulp of 0.3): rel 2e-7.
    assert_close(
        "leaky relu 0.1'",
        &backward(Activation::LeakyRelu { slope: 0.1 }, &dout, &z),
        &[0.3, 0.3, 3.0],
        0.0,
        2e-7,
    );
    // sigmoid' = s (1 - s): at 0, 0.5 * 0.5 = 0.25 (exact);
    // at 2, 0.8807970779778823 * 0.11920292202211755 = 0.10499358540350662.
    // With dout = 1 and dout = 3 -> 3 * 0.10499358540350662 = 0.31498075621051986.
    // tanh' = 1 - tanh^2: at 0, 1 (exact); at 1, 1 - 0.7615941559557649^2 = 0.41997434161402614.
    // s (1 - s) loses a little when s is near 1 (1 - s cancels): rel 1e-5 is still far below
    // any real error.
    let z2 = [0.0f32, 2.0, 2.0];
    let d2 = [1.0f32, 1.0, 3.0];
    assert_close(
        "sigmoid'",
        &backward(Activation::Sigmoid, &d2, &z2),
        &[0.25, 0.104_993_58, 0.314_980_76],
        1e-7,
        1e-5,
    );
    assert_close(
        "tanh'",
        &backward(Activation::Tanh, &[1.0, 1.0, 1.0], &[0.0, 1.0, -1.0]),
        &[1.0, 0.419_974_34, 0.419_974_34],
        1e-7,
        1e-5,
    );
    // gelu' (tanh form) = 0.5 (1 + t) + 0.5 z (1 - t^2) b (1 + 3k z^2), t = tanh(u) as above:
    //   at 0: 0.5 (exact);
    //   at 1: 0.5 * 1.6823839812165535 + 0.5 * (1 - 0.46565790) * 0.7978845608 * 1.134145
    //         = 0.8411919906 + 0.2417720932 = 1.0829640838457826;
    //   at -1: 0.5 * 0.3176160188 - 0.2417720932 = -0.08296408384578255;
    //   at 2: u = 1.8811883866961319, t = 0.9545976940877751:
    //         0.9772988470 + (1 - 0.9112566) * 0.7978845608 * 1.53658 = 1.0860992566236183.
    // tanh and a dozen f32 operations: rel 1e-5.
    assert_close(
        "gelu'",
        &backward(
            Activation::Gelu,
            &[1.0, 1.0, 1.0, 1.0],
            &[0.0, 1.0, -1.0, 2.0],
        ),
        &[0.5, 1.082_964_1, -0.082_964_08, 1.086_099_3],
        1e-6,
        1e-5,
    );
    // sign and step carry no gradient: 0 everywhere, 0 included.
    for a in [Activation::Sign, Activation::Step] {
        assert_close(
            &format!("{a}'"),
            &backward(a, &dout, &z),
            &[0.0; 3],
            0.0,
            0.0,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Reduction goldens

#[test]
fn column_sum_golden() {
    // x (3x2) = [1 2; 3 4; 5 6]: columns sum to [1+3+5, 2+4+6] = [9 12] (exact).
    let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut out = [f32::NAN; 2];
    cpu::column_sum(&mut out, &x, &rows_p(3, 2, 0));
    assert_close("column_sum", &out, &[9.0, 12.0], 0.0, 0.0);
    // accumulate = 1: [100 200] + [9 12] = [109 212].
    let mut out = [100.0f32, 200.0];
    cpu::column_sum(&mut out, &x, &rows_p(3, 2, 1));
    assert_close("column_sum acc", &out, &[109.0, 212.0], 0.0, 0.0);
}

#[test]
fn reduce_sum_golden() {
    // 1 + 2 + ... + 1000 = 1000 * 1001 / 2 = 500500. Every partial sum is an integer below
    // 2^24, so f32 is exact in any order; 1000 is not a multiple of 256, so some lanes get 4
    // terms and some 3.
    let x: Vec<f32> = (1..=1000).map(|i| i as f32).collect();
    let mut out = [f32::NAN];
    let p = |len: u32, accumulate: u32| ReduceParams {
        len,
        accumulate,
        ..Default::default()
    };
    cpu::reduce_sum(&mut out, &x, &p(1000, 0));
    assert_close("reduce_sum 1..=1000", &out, &[500500.0], 0.0, 0.0);
    // accumulate = 1: 0.5 + 500500 = 500500.5, exact (the ulp at 2^18..2^19 is 2^-5).
    let mut out = [0.5f32];
    cpu::reduce_sum(&mut out, &x, &p(1000, 1));
    assert_close("reduce_sum acc", &out, &[500500.5], 0.0, 0.0);
    // len = 3 looks at the first three only: 1 + 2 + 3 = 6; len = 0 gives 0.
    cpu::reduce_sum(&mut out, &x, &p(3, 0));
    assert_close("reduce_sum len 3", &out, &[6.0], 0.0, 0.0);
    cpu::reduce_sum(&mut out, &x, &p(0, 0));
    assert_close("reduce_sum len 0", &out, &[0.0], 0.0, 0.0);
}

#[test]
fn argmax_and_correct_count_golden() {
    // Rows (4x3), first maximum wins on ties:
    //   [1 3 3]        -> 1 (3 at 1 and 2: the first)
    //   [5 5 5]        -> 0
    //   [-1 -2 -0.5]   -> 2
    //   [0 7 -7]       -> 1
    let x = [
        1.0f32, 3.0, 3.0, 5.0, 5.0, 5.0, -1.0, -2.0, -0.5, 0.0, 7.0, -7.0,
    ];
    let mut out = [99u32; 4];
    cpu::argmax(&mut out, &x, &rows_p(4, 3, 0));
    assert_eq!(out, [1, 0, 2, 1], "argmax");

    // labels [1 0 2 0]: rows 0, 1, 2 match, row 3 (argmax 1) does not -> 3, added to the 10
    // already there -> 13.
    let labels = [1u32, 0, 2, 0];
    let mut count = [10u32];
    cpu::correct_count(&mut count, &x, &labels, &rows_p(4, 3, 0));
    assert_eq!(count, [13], "correct_count adds");
    // rows = 2 looks at rows 0 and 1 only -> 2.
    let mut count = [0u32];
    cpu::correct_count(&mut count, &x, &labels, &rows_p(2, 3, 0));
    assert_eq!(count, [2], "correct_count rows = 2");
}

// ---------------------------------------------------------------------------------------
// Softmax and loss goldens

#[test]
fn softmax_golden() {
    // [0, ln 2, ln 3]: e^z = [1 2 3], sum 6 -> [1/6 2/6 3/6]. Max-subtracted it is
    // [1/3 2/3 1] / 2, the same. The f32 logs and exps are each good to an ulp or so: rel 1e-6.
    let logits = [0.0f32, 2f32.ln(), 3f32.ln()];
    let mut out = [f32::NAN; 3];
    cpu::softmax(&mut out, &logits, &rows_p(1, 3, 0), Math::Native);
    assert_close(
        "softmax [0 ln2 ln3]",
        &out,
        &[1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0],
        1e-7,
        1e-6,
    );
    // Huge logits do not overflow: after subtracting the row max,
    //   [1000 1000]   -> [e^0 e^0] / 2 = [0.5 0.5]
    //   [-1000 -1000] -> the same
    //   [1000 0]      -> [1 e^-1000] / (1 + e^-1000) = [1 0] (e^-1000 is 0 in f32)
    // All exact.
    let logits = [1000.0f32, 1000.0, -1000.0, -1000.0, 1000.0, 0.0];
    let mut out = [f32::NAN; 6];
    cpu::softmax(&mut out, &logits, &rows_p(3, 2, 0), Math::Native);
    assert_close(
        "softmax huge",
        &out,
        &[0.5, 0.5, 0.5, 0.5, 1.0, 0.0],
        0.0,
        0.0,
    );
}

fn loss_p(rows: u32, cols: u32, batch_rows: u32, scale: f32) -> LossParams {
    LossParams {
        rows,
        cols,
        batch_rows,
        scale,
    }
}

#[test]
fn mse_loss_golden() {
    // 2 live rows of 2 columns in a batch of 3 (the third is padding, with junk in it):
    //   pred   = [1 2; 3 5; 9 9],  target = [0 2; 1 1; 7 7]
    //   d = pred - target = [1 0; 2 4]
    //   row_loss = mean over cols of d^2 = [(1 + 0)/2, (4 + 16)/2] = [0.5 10], padding 0
    //   scale = 1/(rows*cols) = 1/4, grad = 2 d / 4 = d / 2 = [0.5 0; 1 2], padding [0 0]
    //   batch loss = (0.5 + 10) / 2 = 5.25
    // Dyadic values throughout: exact.
    let pred = [1.0f32, 2.0, 3.0, 5.0, 9.0, 9.0];
    let target = [0.0f32, 2.0, 1.0, 1.0, 7.0, 7.0];
    let mut grad = [f32::NAN; 6];
    let mut row_loss = [f32::NAN; 3];
    cpu::mse_loss(
        &mut grad,
        &mut row_loss,
        &pred,
        &target,
        &loss_p(2, 2, 3, 0.25),
        Math::Native,
    );
    assert_close("mse row_loss", &row_loss, &[0.5, 10.0, 0.0], 0.0, 0.0);
    assert_close("mse grad", &grad, &[0.5, 0.0, 1.0, 2.0, 0.0, 0.0], 0.0, 0.0);
    assert_eq!(mean_live(&row_loss, 2), 5.25, "mse batch loss");
}

#[test]
fn softmax_cross_entropy_golden() {
    // Uniform logits over C = 4 classes (all 0.7): softmax = 1/4 each, so
    //   row_loss = logsumexp(z) - z[label] = (0.7 + ln 4) - 0.7 = ln 4 = 1.3862943611198906
    //   grad = (1/4 - onehot(label)) * scale, scale = 1/rows = 1/2:
    //     label 1 -> [0.125 -0.375 0.125 0.125], label 3 -> [0.125 0.125 0.125 -0.375]
    // 2 live rows in a batch of 3; the padding row gets zeros. ln 4 in f32 through
    // 0.7 + ln(4) - 0.7 loses up to an ulp of 0.7 + 1.39: atol 1e-6.
    let logits = [0.7f32; 12];
    let labels = [1u32, 3, 2];
    let mut grad = [f32::NAN; 12];
    let mut row_loss = [f32::NAN; 3];
    let p = loss_p(2, 4, 3, 0.5);
    cpu::softmax_cross_entropy(&mut grad, &mut row_loss, &logits, &labels, &p, Math::Native);
    let ln4 = 4f32.ln();
    assert_close(
        "ce uniform row_loss",
        &row_loss,
        &[ln4, ln4, 0.0],
        1e-6,
        1e-6,
    );
    #[rustfmt::skip]
    let want = [
        0.125, -0.375, 0.125, 0.125,
        0.125, 0.125, 0.125, -0.375,
        0.0, 0.0, 0.0, 0.0,
    ];
    // 1/4 from e^0 / 4 is exact, and so are the differences and the halving.
    assert_close("ce uniform grad", &grad, &want, 0.0, 0.0);

    // [0, ln 2, ln 3] with label 2, one row: softmax = [1/6 2/6 3/6],
    //   row_loss = -ln(3/6) = ln 2 = 0.6931471805599453
    //   grad = [1/6, 2/6, 3/6 - 1] = [1/6 1/3 -1/2]
    // Logs and exps to an ulp or so: atol 1e-6 + rel 1e-6.
    let logits = [0.0f32, 2f32.ln(), 3f32.ln()];
    let mut grad = [f32::NAN; 3];
    let mut row_loss = [f32::NAN; 1];
    let p = loss_p(1, 3, 1, 1.0);
    cpu::softmax_cross_entropy(&mut grad, &mut row_loss, &logits, &[2], &p, Math::Native);
    assert_close("ce ln row_loss", &row_loss, &[2f32.ln()], 1e-6, 1e-6);
    assert_close(
        "ce ln grad",
        &grad,
        &[1.0 / 6.0, 1.0 / 3.0, -0.5],
        1e-6,
        1e-6,
    );

    // Huge logits stay finite. Two rows z = [1000 0], m = 1000, s = 1 + e^-1000 = 1 in f32,
    // softmax = [1 0], scale = 1/rows = 1/2:
    //   label 0: row_loss = 1000 + ln 1 - 1000 = 0,    grad = [1 - 1, 0 - 0] / 2 = [0 0]
    //   label 1: row_loss = 1000 + ln 1 - 0    = 1000, grad = [1 - 0, 0 - 1] / 2 = [0.5 -0.5]
    // All exact.
    let logits = [1000.0f32, 0.0, 1000.0, 0.0];
    let mut grad = [f32::NAN; 4];
    let mut row_loss = [f32::NAN; 2];
    let p = loss_p(2, 2, 2, 0.5);
    cpu::softmax_cross_entropy(&mut grad, &mut row_loss, &logits, &[0, 1], &p, Math::Native);
    assert_close("ce huge row_loss", &row_loss, &[0.0, 1000.0], 0.0, 0.0);
    assert_close("ce huge grad", &grad, &[0.0, 0.0, 0.5, -0.5], 0.0, 0.0);
}

#[test]
fn binary_cross_entropy_golden() {
    // z = 0 everywhere: max(0,0) - 0 t + ln(1 + e^0) = ln 2 = 0.6931471805599453 per element,
    // whatever t is, so row_loss = ln 2. grad = (sigmoid(0) - t) * scale = (0.5 - t) / N with
    // N = rows*cols = 4: t = [1 0; 0 1] -> [-0.125 0.125; 0.125 -0.125]. 2 live rows in a
    // batch of 3; the padding row gets zeros. grad exact; ln 2 to an ulp: atol/rel 1e-6.
    let logits = [0.0f32; 6];
    let target = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
    let mut grad = [f32::NAN; 6];
    let mut row_loss = [f32::NAN; 3];
    let p = loss_p(2, 2, 3, 0.25);
    cpu::binary_cross_entropy(&mut grad, &mut row_loss, &logits, &target, &p, Math::Native);
    let ln2 = 2f32.ln();
    assert_close("bce z=0 row_loss", &row_loss, &[ln2, ln2, 0.0], 1e-6, 1e-6);
    assert_close(
        "bce z=0 grad",
        &grad,
        &[-0.125, 0.125, 0.125, -0.125, 0.0, 0.0],
        0.0,
        0.0,
    );

    // Large |z| stays finite. Row 0: z = [1000 -1000], t = [1 0] (right and sure):
    //   1000 - 1000 + ln(1 + e^-1000) = 0 and 0 - 0 + ln(1 + e^-1000) = 0 -> row_loss 0,
    //   grad = (sigmoid(z) - t) / 4 = [(1 - 1)/4, (0 - 0)/4] = [0 0]
    // Row 1: z = [1000 -1000], t = [0 1] (wrong and sure):
    //   1000 - 0 + 0 = 1000 and 0 + 1000 + 0 = 1000 -> row_loss 1000,
    //   grad = [(1 - 0)/4, (0 - 1)/4] = [0.25 -0.25]
    // e^-1000 is 0 in f32, so every term is exact.
    let logits = [1000.0f32, -1000.0, 1000.0, -1000.0];
    let target = [1.0f32, 0.0, 0.0, 1.0];
    let mut grad = [f32::NAN; 4];
    let mut row_loss = [f32::NAN; 2];
    let p = loss_p(2, 2, 2, 0.25);
    cpu::binary_cross_entropy(&mut grad, &mut row_loss, &logits, &target, &p, Math::Native);
    assert_close("bce huge row_loss", &row_loss, &[0.0, 1000.0], 0.0, 0.0);
    assert_close("bce huge grad", &grad, &[0.0, 0.0, 0.25, -0.25], 0.0, 0.0);
}

// ---------------------------------------------------------------------------------------
// Optimizer goldens. Dyadic hyperparameters and values make SGD and momentum exact.

#[test]
fn sgd_update_golden() {
    // lr = 0.5, wd = 0.25, len = 3 of a 4-element buffer (the 4th is left alone):
    //   g = grad + wd p = [1 + 0.25*2, 0.5 + 0.25*(-4), -2 + 0.25*1] = [1.5 -0.5 -1.75]
    //   p -= lr g       = [2 - 0.75, -4 + 0.25, 1 + 0.875]          = [1.25 -3.75 1.875]
    let mut param = [2.0f32, -4.0, 1.0, 7.0];
    let grad = [1.0f32, 0.5, -2.0, 100.0];
    let p = OptimParams {
        len: 3,
        lr: 0.5,
        weight_decay: 0.25,
        ..Default::default()
    };
    cpu::sgd_update(&mut param, &grad, &p);
    assert_close("sgd", &param, &[1.25, -3.75, 1.875, 7.0], 0.0, 0.0);
    // Without decay: p -= lr grad: [1.25 - 0.5, -3.75 - 0.25, 1.875 + 1] = [0.75 -4 2.875].
    let p = OptimParams {
        weight_decay: 0.0,
        ..p
    };
    cpu::sgd_update(&mut param, &grad, &p);
    assert_close("sgd no wd", &param, &[0.75, -4.0, 2.875, 7.0], 0.0, 0.0);
}

#[test]
fn momentum_update_two_steps() {
    // lr = 0.5, momentum = 0.5, wd = 0, v starts at 0 (PyTorch's first step: v = g).
    //   element a: p = 1, grads 1 then 1
    //     step 1: v = 0.5*0 + 1 = 1,       p = 1 - 0.5*1     = 0.5
    //     step 2: v = 0.5*1 + 1 = 1.5,     p = 0.5 - 0.5*1.5 = -0.25
    //   element b: p = 2, grads -2 then 4
    //     step 1: v = 0.5*0 - 2 = -2,      p = 2 + 0.5*2     = 3
    //     step 2: v = 0.5*(-2) + 4 = 3,    p = 3 - 0.5*3     = 1.5
    let mut param = [1.0f32, 2.0];
    let mut velocity = [0.0f32; 2];
    let p = OptimParams {
        len: 2,
        lr: 0.5,
        weight_decay: 0.0,
        momentum: 0.5,
        ..Default::default()
    };
    cpu::momentum_update(&mut param, &mut velocity, &[1.0, -2.0], &p);
    assert_close("momentum step 1 v", &velocity, &[1.0, -2.0], 0.0, 0.0);
    assert_close("momentum step 1 p", &param, &[0.5, 3.0], 0.0, 0.0);
    cpu::momentum_update(&mut param, &mut velocity, &[1.0, 4.0], &p);
    assert_close("momentum step 2 v", &velocity, &[1.5, 3.0], 0.0, 0.0);
    assert_close("momentum step 2 p", &param, &[-0.25, 1.5], 0.0, 0.0);

    // With wd = 0.25 the decay joins the gradient before the velocity (element a again):
    //   step 1: g = 1 + 0.25*1 = 1.25,        v = 1.25,                  p = 1 - 0.625 = 0.375
    //   step 2: g = 1 + 0.25*0.375 = 1.09375, v = 0.5*1.25 + 1.09375 = 1.71875,
    //           p = 0.375 - 0.5*1.71875 = -0.484375
    let mut param = [1.0f32];
    let mut velocity = [0.0f32];
    let p = OptimParams {
        len: 1,
        weight_decay: 0.25,
        ..p
    };
    cpu::momentum_update(&mut param, &mut velocity, &[1.0], &p);
    assert_close("momentum wd step 1", &param, &[0.375], 0.0, 0.0);
    cpu::momentum_update(&mut param, &mut velocity, &[1.0], &p);
    assert_close("momentum wd step 2 v", &velocity, &[1.71875], 0.0, 0.0);
    assert_close("momentum wd step 2 p", &param, &[-0.484375], 0.0, 0.0);
}

#[test]
fn rmsprop_steps_by_hand() {
    // PyTorch's RMSprop with alpha = 0.75 (1 - alpha = 0.25, both exact), eps = 1e-8,
    // lr = 0.125, from zero state, on p = [1 -1] with the gradient [2 -4] twice:
    //   step 1: s = 0.25 g^2 = [1 4], d = sqrt(s) + eps = [1 2] in f32 (eps < half an ulp
    //           of 1), g/d = [2 -2], p = [1 - 0.25, -1 + 0.25] = [0.75 -0.75]   (exact)
    //   step 2: s = 0.75 s + 0.25 g^2 = [1.75 7], g/d = [2/sqrt(1.75), -4/sqrt(7)]
    //           = [1.5118578920369088 -1.5118578920369088],
    //           p = 0.75 - 0.125 * 1.5118578920369088 = 0.5610177634953863 (and its negative)
    // One sqrt and one division, each correctly rounded: rel 1e-6.
    let base = OptimParams {
        len: 2,
        lr: 0.125,
        eps: 1e-8,
        alpha: 0.75,
        one_minus_alpha: 0.25,
        ..Default::default()
    };
    let run = |p: &OptimParams, steps: usize, init: [f32; 2]| {
        let mut param = init;
        let (mut s, mut b, mut a) = ([0.0f32; 2], [0.0f32; 2], [0.0f32; 2]);
        for _ in 0..steps {
            cpu::rmsprop_update(
                &mut param,
                &mut s,
                &mut b,
                &mut a,
                &[2.0, -4.0],
                p,
                Math::Native,
            );
        }
        (param, s, b, a)
    };
    let (p1, s1, b1, a1) = run(&base, 1, [1.0, -1.0]);
    assert_close("rmsprop step 1 p", &p1, &[0.75, -0.75], 0.0, 0.0);
    assert_close("rmsprop step 1 square_avg", &s1, &[1.0, 4.0], 0.0, 0.0);
    // Without momentum or centering those buffers stay zeros.
    assert_eq!((b1, a1), ([0.0; 2], [0.0; 2]));
    let (p2, s2, _, _) = run(&base, 2, [1.0, -1.0]);
    assert_close("rmsprop step 2 square_avg", &s2, &[1.75, 7.0], 0.0, 0.0);
    assert_close(
        "rmsprop step 2 p",
        &p2,
        &[0.561_017_76, -0.561_017_76],
        0.0,
        1e-6,
    );

    // Momentum 0.5: b = 0.5 b + g/d; p -= lr b.
    //   step 1: b = [2 -2], p = [0.75 -0.75];
    //   step 2: b = [1 + 1.5118578920369088, ...] = [2.511857892036909 ...],
    //           p = 0.75 - 0.125 * 2.511857892036909 = 0.4360177634953864
    let momentum = OptimParams {
        momentum: 0.5,
        ..base
    };
    let (p, _, b, _) = run(&momentum, 2, [1.0, -1.0]);
    assert_close(
        "rmsprop momentum b",
        &b,
        &[2.511_858, -2.511_858],
        0.0,
        1e-6,
    );
    assert_close(
        "rmsprop momentum p",
        &p,
        &[0.436_017_76, -0.436_017_76],
        0.0,
        1e-6,
    );

    // Centered, one step: a = 0.25 g = [0.5 -1], d = sqrt(s - a^2) = sqrt([0.75 3]),
    //   g/d = [2/sqrt(0.75), -4/sqrt(3)] = [2.309401076758503 -2.309401076758503],
    //   p = 1 - 0.125 * 2.309401076758503 = 0.7113248654051871 (and its negative)
    let centered = OptimParams {
        centered: 1,
        ..base
    };
    let (p, _, _, a) = run(&centered, 1, [1.0, -1.0]);
    assert_close("rmsprop centered grad_avg", &a, &[0.5, -1.0], 0.0, 0.0);
    assert_close(
        "rmsprop centered p",
        &p,
        &[0.711_324_9, -0.711_324_9],
        0.0,
        1e-6,
    );

    // Weight decay 0.5 joins the gradient first: g = 2 + 0.5 * 1 = 2.5, s = 0.25 * 6.25 =
    // 1.5625, d = 1.25, g/d = 2, p = 1 - 0.25 = 0.75 (exact).
    let decay = OptimParams {
        weight_decay: 0.5,
        len: 1,
        ..base
    };
    let (p, s, _, _) = run(&decay, 1, [1.0, 7.0]);
    assert_close("rmsprop wd p", &p, &[0.75, 7.0], 0.0, 0.0);
    assert_close("rmsprop wd square_avg", &s, &[1.5625, 0.0], 0.0, 0.0);
}

#[test]
fn rmsprop_takes_one_minus_alpha_as_pytorch_does() {
    // PyTorch computes 1 - alpha in double from the Python float 0.99 and rounds it to f32
    // once: f32(0.010000000000000009) = 0.01f32, where 1 - 0.99f32 would be 0.00999999.
    let p = soma::Optimizer::rmsprop(0.01).step_params(0.01, 1);
    assert_eq!(p.one_minus_alpha, 0.01f32);
    assert_eq!(p.alpha, 0.99f32);
    assert_eq!((p.momentum, p.centered), (0.0, 0));
}

fn adam_p(len: u32, weight_decay: f32, decoupled: u32) -> OptimParams {
    let (beta1, beta2) = (0.9f64, 0.999f64);
    OptimParams {
        len,
        lr: 0.01,
        beta1: beta1 as f32,
        beta2: beta2 as f32,
        // 1 - beta in f64, rounded once, as the host does.
        one_minus_beta1: (1.0 - beta1) as f32,
        one_minus_beta2: (1.0 - beta2) as f32,
        eps: 1e-8,
        weight_decay,
        // t = 1: 1 - beta^1.
        bias_correction1: (1.0 - beta1) as f32,
        bias_correction2: (1.0 - beta2) as f32,
        decoupled,
        ..Default::default()
    }
}

#[test]
fn adam_takes_one_minus_beta_as_pytorch_does() {
    // PyTorch holds the betas as Python floats and passes 1 - beta2 = 0.0010000000000000009
    // to its kernels, rounded to f32: 0.001f32. 1 - 0.999f32 in f32 is 0.00099998713, which
    // left the second moment 1.29e-5 (relative) off PyTorch's.
    let opt = soma::Optimizer::adam(0.01);
    assert_eq!((opt.beta1, opt.beta2), (0.9, 0.999));
    let p = opt.step_params(0.01, 1);
    assert_eq!(p.one_minus_beta1, 0.1f32);
    assert_eq!(p.one_minus_beta2, 0.001f32);
    assert_ne!(p.one_minus_beta2, 1.0 - 0.999f32);
    assert_eq!((p.beta1, p.beta2), (0.9f32, 0.999f32));
    assert_eq!(p.bias_correction1, 0.1f32);
    assert_eq!(p.bias_correction2, 0.001f32);
    // The second moment after one step with g = 1 is exactly what PyTorch stores.
    let (mut w, mut m, mut v) = ([0.0f32; 1], [0.0f32; 1], [0.0f32; 1]);
    let p = OptimParams { len: 1, ..p };
    cpu::adam_update(&mut w, &mut m, &mut v, &[1.0], &p, Math::Native);
    assert_eq!((m[0], v[0]), (0.1f32, 0.001f32));
}

#[test]
fn adam_first_step_moves_by_lr_sign_g() {
    // The first step (t = 1) from m = v = 0:
    //   m = (1 - b1) g,  v = (1 - b2) g^2,  bc1 = 1 - b1,  bc2 = 1 - b2
    //   m / bc1 = g,  sqrt(v) / sqrt(bc2) = sqrt((1 - b2) g^2 / (1 - b2)) = |g|
    //   p -= lr g / (|g| + eps) = lr sign(g) |g| / (|g| + eps) ≈ lr sign(g)
    // so every parameter with |g| >> eps moves by lr = 0.01 against its gradient, whatever
    // the size of g. With g = 0 nothing moves (0 / (0 + eps) = 0, not NaN).
    //   p = [1 1 1 1], g = [0.5 -2 0.03 0] -> [0.99 1.01 0.99 1]
    // The relative error of |g|/(|g| + eps) is eps/|g| <= 3.4e-7, and (1 - b1) and (1 - b2)
    // are the same f32 in m and bc1 and in v and bc2, so they cancel up to a few ulps of the
    // ratio: atol 1e-6 (1e-4 of the step) covers both.
    let g = [0.5f32, -2.0, 0.03, 0.0];
    let mut param = [1.0f32; 4];
    let (mut m, mut v) = ([0.0f32; 4], [0.0f32; 4]);
    cpu::adam_update(
        &mut param,
        &mut m,
        &mut v,
        &g,
        &adam_p(4, 0.0, 0),
        Math::Native,
    );
    assert_close("adam t=1 p", &param, &[0.99, 1.01, 0.99, 1.0], 1e-6, 0.0);
    // The moments: m = 0.1 g = [0.05 -0.2 0.003 0], v = 0.001 g^2 = [2.5e-4 4e-3 9e-7 0]
    // (0.1f32 and 0.001f32 times g, one f32 rounding each: rel 2e-7).
    assert_close("adam t=1 m", &m, &[0.05, -0.2, 0.003, 0.0], 0.0, 2e-7);
    assert_close("adam t=1 v", &v, &[2.5e-4, 4e-3, 9e-7, 0.0], 0.0, 2e-7);
}

#[test]
fn adamw_decay_is_decoupled() {
    // AdamW (decoupled = 1), lr = 0.01, wd = 0.1, t = 1, p = [2 2], g = [0.5 0]:
    //   p *= 1 - lr wd = 1 - 0.001 = 0.999 -> [1.998 1.998]
    //   then the Adam step on the raw gradient: -lr sign(g) = [-0.01 0]
    //   -> [1.988 1.998];  m = 0.1 g = [0.05 0] (the decay never enters the moments)
    // Adam with L2 (decoupled = 0) on the same input adds wd p to the gradient first:
    //   g' = g + 0.1*2 = [0.7 0.2], both positive, so the first step is -lr sign(g') = -0.01
    //   -> [1.99 1.99];  m = 0.1 g' = [0.07 0.02]
    // The difference is the point: with g = 0, AdamW shrinks p by lr wd p = 0.002 while
    // Adam + L2 moves it by a full lr = 0.01. Tolerances as in the Adam test.
    let g = [0.5f32, 0.0];
    let mut param = [2.0f32; 2];
    let (mut m, mut v) = ([0.0f32; 2], [0.0f32; 2]);
    cpu::adam_update(
        &mut param,
        &mut m,
        &mut v,
        &g,
        &adam_p(2, 0.1, 1),
        Math::Native,
    );
    assert_close("adamw p", &param, &[1.988, 1.998], 1e-6, 0.0);
    assert_close("adamw m", &m, &[0.05, 0.0], 0.0, 2e-5);

    let mut param = [2.0f32; 2];
    let (mut m, mut v) = ([0.0f32; 2], [0.0f32; 2]);
    cpu::adam_update(
        &mut param,
        &mut m,
        &mut v,
        &g,
        &adam_p(2, 0.1, 0),
        Math::Native,
    );
    assert_close("adam l2 p", &param, &[1.99, 1.99], 1e-6, 0.0);
    assert_close("adam l2 m", &m, &[0.07, 0.02], 0.0, 2e-5);
}

// ---------------------------------------------------------------------------------------
// Data and perceptron goldens

#[test]
fn gather_rows_and_labels_golden() {
    // data (4x2): row r = [10 r, 10 r + 1]; indices = [3 1 0 2]; start = 1, rows = 2,
    // batch_rows = 3: out row 0 = data[indices[1]] = data[1] = [10 11],
    //                 out row 1 = data[indices[2]] = data[0] = [0 1],
    //                 out row 2 = padding = [0 0] (over the junk already there).
    let data = [0.0f32, 1.0, 10.0, 11.0, 20.0, 21.0, 30.0, 31.0];
    let indices = [3u32, 1, 0, 2];
    let p = GatherParams {
        rows: 2,
        cols: 2,
        start: 1,
        batch_rows: 3,
        ..Default::default()
    };
    let mut out = [f32::NAN; 6];
    cpu::gather_rows(&mut out, &data, &indices, &p);
    assert_close(
        "gather_rows",
        &out,
        &[10.0, 11.0, 0.0, 1.0, 0.0, 0.0],
        0.0,
        0.0,
    );
    // labels [7 8 9 6] through the same indices: [labels[1], labels[0], 0] = [8 7 0].
    let mut out = [55u32; 3];
    cpu::gather_labels(&mut out, &[7, 8, 9, 6], &indices, &p);
    assert_eq!(out, [8, 7, 0], "gather_labels");
}

#[test]
fn perceptron_epoch_hand_trace() {
    // cols = 2, eta = 0.5, weights (w0, w1, theta) = (0, 0, 0).
    // Sample 0: x = [1 2], target -1.
    //   net = 0*1 + 0*2 - 0 = 0 -> y = sign(0) = 1 (net >= 0), e = -1 - 1 = -2: a mistake.
    //   w += eta x e = 0.5 * [1 2] * -2 = [-1 -2] -> w = [-1 -2]
    //   theta -= eta e = -(0.5 * -2) = +1        -> theta = 1
    // Sample 1: x = [-1 1], target 1.
    //   net = (-1)(-1) + (-2)(1) - 1 = 1 - 2 - 1 = -2 -> y = -1, e = 1 - (-1) = 2: a mistake.
    //   w += 0.5 * [-1 1] * 2 = [-1 1]              -> w = [-2 -1]
    //   theta -= 0.5 * 2 = 1                         -> theta = 0
    // Epoch 1: weights [-2 -1 0], 2 errors.
    // Epoch 2 from there: sample 0: net = -2 - 2 - 0 = -4 -> y = -1 = target;
    //   sample 1: net = 2 - 1 - 0 = 1 -> y = 1 = target: 0 errors, weights unchanged.
    // All values are small dyadics: exact.
    let x = [1.0f32, 2.0, -1.0, 1.0];
    let targets = [-1.0f32, 1.0];
    let p = PerceptronParams {
        rows: 2,
        cols: 2,
        lr: 0.5,
        ..Default::default()
    };
    let mut weights = [0.0f32; 3];
    let mut errors = [99u32]; // overwritten, not added to
    cpu::perceptron_epoch(&mut weights, &mut errors, &x, &targets, &p);
    assert_close("perceptron epoch 1", &weights, &[-2.0, -1.0, 0.0], 0.0, 0.0);
    assert_eq!(errors, [2], "perceptron epoch 1 errors");
    cpu::perceptron_epoch(&mut weights, &mut errors, &x, &targets, &p);
    assert_close("perceptron epoch 2", &weights, &[-2.0, -1.0, 0.0], 0.0, 0.0);
    assert_eq!(errors, [0], "perceptron epoch 2 errors");
}

// ---------------------------------------------------------------------------------------
// Finite differences

#[test]
fn activation_backward_matches_finite_differences() {
    // d out / d z by central differences of bias_activation_forward, against
    // activation_backward with a random dout (so the product is checked too).
    //
    // Tolerance: the forward values are f32 with an error of an ulp or two (<= 2.4e-7 for
    // sigmoid and tanh, whose values are at most 1 in size); the difference of two of them
    // divided by 2h = 2e-3 carries up to ~2.4e-4, times |dout| <= 2 -> atol 5e-4. The
    // truncation error h^2/6 |f'''| is below 4e-7 (|tanh'''| <= 2). The piecewise-linear
    // kinds are exact: z ± h straddles no kink, since |z| >= 1e-2 > h.
    let mut rng = TestRng::new(0x5eed_0001);
    let mut z = Vec::new();
    while z.len() < 200 {
        let v = rng.uniform(-4.0, 4.0);
        if v.abs() >= 1e-2 {
            z.push(v);
        }
    }
    let dout = rng.vec(z.len(), -2.0, 2.0);
    let zp: Vec<f32> = z.iter().map(|&v| v + H).collect();
    let zm: Vec<f32> = z.iter().map(|&v| v - H).collect();
    for a in [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu { slope: 0.1 },
        Activation::LeakyRelu { slope: 0.01 },
        Activation::Sigmoid,
        Activation::Tanh,
        // Flat away from 0: both sides give 0.
        Activation::Sign,
        Activation::Step,
        Activation::Gelu,
    ] {
        let (fp, fm) = (forward(a, &zp), forward(a, &zm));
        let want: Vec<f32> = (0..z.len())
            .map(|i| {
                let fd = (fp[i] as f64 - fm[i] as f64) / (zp[i] as f64 - zm[i] as f64);
                (dout[i] as f64 * fd) as f32
            })
            .collect();
        let got = backward(a, &dout, &z);
        assert_close(
            &format!("{a}' vs finite difference"),
            &got,
            &want,
            5e-4,
            1e-3,
        );
    }
}

/// The three losses behind one signature: (grad, row_loss) for `x` (predictions or logits).
#[derive(Clone, Copy, Debug)]
enum LossKind {
    Mse,
    SoftmaxCe,
    Bce,
}

struct LossCase {
    kind: LossKind,
    rows: usize,
    cols: usize,
    batch_rows: usize,
    targets: Vec<f32>,
    labels: Vec<u32>,
}

impl LossCase {
    fn new(kind: LossKind, rows: usize, cols: usize, batch_rows: usize, rng: &mut TestRng) -> Self {
        let n = batch_rows * cols;
        let targets = match kind {
            LossKind::Mse => rng.vec(n, -1.0, 1.0),
            // 0/1 targets.
            LossKind::Bce => (0..n).map(|_| rng.below(2) as f32).collect(),
            LossKind::SoftmaxCe => Vec::new(),
        };
        let labels = (0..batch_rows).map(|_| rng.below(cols as u32)).collect();
        LossCase {
            kind,
            rows,
            cols,
            batch_rows,
            targets,
            labels,
        }
    }

    fn run(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let scale = match self.kind {
            LossKind::SoftmaxCe => 1.0 / self.rows as f32,
            _ => 1.0 / (self.rows * self.cols) as f32,
        };
        let p = loss_p(
            self.rows as u32,
            self.cols as u32,
            self.batch_rows as u32,
            scale,
        );
        let mut grad = vec![f32::NAN; self.batch_rows * self.cols];
        let mut row_loss = vec![f32::NAN; self.batch_rows];
        match self.kind {
            LossKind::Mse => {
                cpu::mse_loss(&mut grad, &mut row_loss, x, &self.targets, &p, Math::Native)
            }
            LossKind::SoftmaxCe => cpu::softmax_cross_entropy(
                &mut grad,
                &mut row_loss,
                x,
                &self.labels,
                &p,
                Math::Native,
            ),
            LossKind::Bce => cpu::binary_cross_entropy(
                &mut grad,
                &mut row_loss,
                x,
                &self.targets,
                &p,
                Math::Native,
            ),
        }
        (grad, row_loss)
    }
}

#[test]
fn loss_gradients_match_finite_differences() {
    // Each loss's grad against the central difference of the batch loss (mean of row_loss
    // over the live rows), element by element, including the padding rows of a partial batch
    // (whose grad must be 0, and the loss does not see them: the difference is exactly 0).
    //
    // Tolerance: moving one input changes one row's f32 row_loss. With these inputs a row loss
    // is below 8 (MSE: (p - t)^2 <= 4 for p, t in [-1, 1]; CE: <= ln C + 6 for logits in
    // [-3, 3]; BCE: <= |z| + ln 2), and it is good to a handful of ulps of that size: <= 2e-6.
    // Two such errors over 2h = 2e-3, over rows (the mean), give at most 2e-3 / rows: that is
    // atol, with rel 1e-3. (Seen: about a tenth of it.) Truncation is negligible: none for
    // the quadratic MSE, and h^2/6 |f'''| <= 1e-6/6 * 0.1 for logsumexp and softplus.
    // A wrong factor (a missing 2, 1/rows for 1/(rows cols), a sign) moves the largest
    // entries by far more than that.
    let mut rng = TestRng::new(0x5eed_0002);
    for kind in [LossKind::Mse, LossKind::SoftmaxCe, LossKind::Bce] {
        // (rows, cols, batch_rows): a full batch, a partial one, one live row.
        for (rows, cols, batch_rows) in [(4, 3, 4), (3, 5, 6), (1, 4, 2)] {
            let case = LossCase::new(kind, rows, cols, batch_rows, &mut rng);
            let range = match kind {
                LossKind::Mse => 1.0,
                _ => 3.0,
            };
            let x = rng.vec(batch_rows * cols, -range, range);
            let (grad, row_loss) = case.run(&x);
            assert!(
                row_loss[rows..].iter().all(|&l| l == 0.0),
                "{kind:?} padding row_loss {row_loss:?}"
            );
            let fd = central_diff(&x, H, |xs| mean_live(&case.run(xs).1, rows));
            assert_close(
                &format!("{kind:?} grad vs finite difference ({rows}/{batch_rows}x{cols})"),
                &grad,
                &fd,
                2e-3 / rows as f32,
                1e-3,
            );
        }
    }
}

#[test]
fn linear_layer_gradients_match_finite_differences() {
    // Y (B, out) = X (B, in) · W (out, in)ᵀ (matmul_nt) and L = Σ Y ⊙ G for a fixed random G,
    // so dL/dY = G and
    //   dL/dW (out, in) = Gᵀ · X  (matmul_tn: a = G as (k=B, m=out), b = X as (k=B, n=in))
    //   dL/dX (B, in)   = G · W   (matmul_nn: a = G (m=B, k=out), b = W (k=out, n=in))
    // L is evaluated in f64 from the f32 Y.
    //
    // Tolerance: zero. L is linear in every entry of W and X, so the central difference has
    // no truncation error, and the inputs are chosen so that it has no rounding error either:
    // X, W, G are random multiples of 1/8 in [-1, 1] and the step is h = 2^-10 (about 1e-3).
    // Then x ± h needs 11 significant bits, each product x w at most 14 (bits 2^0 .. 2^-13),
    // each Y entry (5 of them, |Y| <= 5) at most 16, Y G at most 19 in f64, and each gradient
    // entry (sums of <= 6 products on the 1/64 grid) at most 10: all exact in f32, so the
    // difference quotient (L+ - L-) / 2h and the matmul gradients are the same numbers.
    // Any index or transpose mistake changes them by a multiple of 1/64.
    let (b, n_in, n_out) = (6usize, 5usize, 4usize);
    let h = 1.0 / 1024.0;
    let mut rng = TestRng::new(0x5eed_0003);
    let mut grid =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.below(17) as f32 / 8.0 - 1.0).collect() };
    let x = grid(b * n_in);
    let w = grid(n_out * n_in);
    let g = grid(b * n_out);
    let loss = |x: &[f32], w: &[f32]| -> f64 {
        let mut y = vec![f32::NAN; b * n_out];
        cpu::matmul_nt(&mut y, x, w, &mm(b as u32, n_out as u32, n_in as u32, 0));
        y.iter()
            .zip(&g)
            .map(|(&yi, &gi)| yi as f64 * gi as f64)
            .sum()
    };

    let mut dw = vec![f32::NAN; n_out * n_in];
    cpu::matmul_tn(&mut dw, &g, &x, &mm(n_out as u32, n_in as u32, b as u32, 0));
    let fd_w = central_diff(&w, h, |ws| loss(&x, ws));
    assert_close("dL/dW = Gᵀ·X vs finite difference", &dw, &fd_w, 0.0, 0.0);

    let mut dx = vec![f32::NAN; b * n_in];
    cpu::matmul_nn(&mut dx, &g, &w, &mm(b as u32, n_in as u32, n_out as u32, 0));
    let fd_x = central_diff(&x, h, |xs| loss(xs, &w));
    assert_close("dL/dX = G·W vs finite difference", &dx, &fd_x, 0.0, 0.0);
}

#[test]
fn correct_count_single_column_threshold_golden() {
    // One column: a row predicts class 1 when x >= threshold, else class 0.
    // threshold 0.5, x = [0.2, 0.5, 0.9, -1.0] -> predictions [0, 1, 1, 0] (0.5 itself is
    // class 1); labels [0, 1, 1, 1] -> rows 0, 1, 2 correct = 3, added to the 4 already there
    // -> 7.
    let x = [0.2f32, 0.5, 0.9, -1.0];
    let labels = [0u32, 1, 1, 1];
    let p = |rows: u32, threshold: f32| RowsParams {
        rows,
        cols: 1,
        threshold,
        ..Default::default()
    };
    let mut count = [4u32];
    cpu::correct_count(&mut count, &x, &labels, &p(4, 0.5));
    assert_eq!(count, [7], "correct_count, one column, threshold 0.5");
    // Threshold 0 (logits): predictions [1, 1, 1, 0] -> rows 1, 2 correct = 2.
    let mut count = [0u32];
    cpu::correct_count(&mut count, &x, &labels, &p(4, 0.0));
    assert_eq!(count, [2], "correct_count, one column, threshold 0");
    // rows = 2 looks at rows 0 and 1 only -> 2 at threshold 0.5.
    let mut count = [0u32];
    cpu::correct_count(&mut count, &x, &labels, &p(2, 0.5));
    assert_eq!(count, [2], "correct_count, one column, rows = 2");
}

/// The strided twin of the register-blocked kernel is the three forms again: with the
/// strides of each form it adds the same products in the same order, so the bits agree.
#[test]
fn matmul_blocked_strides_reproduce_the_three_forms() {
    let mut rng = TestRng::new(77);
    let (m, k, n) = (5usize, 7usize, 3usize);
    let p = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        accumulate: 0,
    };
    let a = rng.vec(m * k, -1.0, 1.0);
    let at = rng.vec(k * m, -1.0, 1.0);
    let b_nk = rng.vec(n * k, -1.0, 1.0);
    let b_kn = rng.vec(k * n, -1.0, 1.0);
    let (mut want, mut got) = (vec![0.0; m * n], vec![0.0; m * n]);
    cpu::matmul_nt(&mut want, &a, &b_nk, &p);
    cpu::matmul_blocked(&mut got, &a, &b_nk, &BlockedMatmulParams::nt(&p));
    assert_close("blocked as nt", &got, &want, 0.0, 0.0);
    cpu::matmul_nn(&mut want, &a, &b_kn, &p);
    cpu::matmul_blocked(&mut got, &a, &b_kn, &BlockedMatmulParams::nn(&p));
    assert_close("blocked as nn", &got, &want, 0.0, 0.0);
    cpu::matmul_tn(&mut want, &at, &b_kn, &p);
    cpu::matmul_blocked(&mut got, &at, &b_kn, &BlockedMatmulParams::tn(&p));
    assert_close("blocked as tn", &got, &want, 0.0, 0.0);
}

/// The CPU executor's fast product (matrixmultiply's sgemm) against the reference twins, for
/// the three forms and with accumulation: equal to rounding. Sums of k products of values in
/// [-1, 1] reordered: k * eps absolute is the bound on the difference.
#[test]
fn matmul_gemm_matches_the_reference_twins() {
    let mut rng = TestRng::new(78);
    for &(m, k, n) in &[
        (1usize, 1usize, 1usize),
        (7, 3, 5),
        (33, 17, 9),
        (129, 65, 33),
    ] {
        for accumulate in [0u32, 1] {
            let p = MatmulParams {
                m: m as u32,
                n: n as u32,
                k: k as u32,
                accumulate,
            };
            let a = rng.vec(m * k, -1.0, 1.0);
            let at = rng.vec(k * m, -1.0, 1.0);
            let b_nk = rng.vec(n * k, -1.0, 1.0);
            let b_kn = rng.vec(k * n, -1.0, 1.0);
            let prior = rng.vec(m * n, -1.0, 1.0);
            let tol = 2.0 * k as f32 * f32::EPSILON;
            let label = format!("{m}x{k}x{n} acc={accumulate}");
            let (mut want, mut got) = (prior.clone(), prior.clone());
            cpu::matmul_nt(&mut want, &a, &b_nk, &p);
            cpu::matmul_gemm(&mut got, &a, &b_nk, &BlockedMatmulParams::nt(&p));
            assert_close(&format!("gemm nt {label}"), &got, &want, tol, 1e-6);
            let (mut want, mut got) = (prior.clone(), prior.clone());
            cpu::matmul_nn(&mut want, &a, &b_kn, &p);
            cpu::matmul_gemm(&mut got, &a, &b_kn, &BlockedMatmulParams::nn(&p));
            assert_close(&format!("gemm nn {label}"), &got, &want, tol, 1e-6);
            let (mut want, mut got) = (prior.clone(), prior);
            cpu::matmul_tn(&mut want, &at, &b_kn, &p);
            cpu::matmul_gemm(&mut got, &at, &b_kn, &BlockedMatmulParams::tn(&p));
            assert_close(&format!("gemm tn {label}"), &got, &want, tol, 1e-6);
        }
    }
}

/// The twins of the vec4 kernels group each step of 4 in k differently from the plain
/// twins; on small integers every partial sum is exact, so they agree to the bit, and on
/// random values to rounding (k products of values in [-1, 1]: 2k eps absolute).
#[test]
fn matmul_vec4_twins_match_the_plain_ones() {
    let mut rng = TestRng::new(79);
    let (m, k, n) = (5usize, 12usize, 8usize);
    let p = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        accumulate: 0,
    };
    for exact in [true, false] {
        let draw = |rng: &mut TestRng, len: usize| -> Vec<f32> {
            if exact {
                (0..len).map(|_| rng.below(7) as f32 - 3.0).collect()
            } else {
                rng.vec(len, -1.0, 1.0)
            }
        };
        let a = draw(&mut rng, m * k);
        let b_nk = draw(&mut rng, n * k);
        let b_kn = draw(&mut rng, k * n);
        let tol = if exact {
            0.0
        } else {
            2.0 * k as f32 * f32::EPSILON
        };
        let (mut want, mut got) = (vec![0.0; m * n], vec![0.0; m * n]);
        cpu::matmul_nt(&mut want, &a, &b_nk, &p);
        cpu::matmul_nt_vec4(&mut got, &a, &b_nk, &BlockedMatmulParams::nt(&p));
        assert_close(&format!("nt_vec4 exact={exact}"), &got, &want, tol, 1e-6);
        cpu::matmul_nn(&mut want, &a, &b_kn, &p);
        cpu::matmul_nn_vec4(&mut got, &a, &b_kn, &BlockedMatmulParams::nn(&p));
        assert_close(&format!("nn_vec4 exact={exact}"), &got, &want, tol, 1e-6);
    }
}
