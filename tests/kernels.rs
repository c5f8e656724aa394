//! Every kernel against its CPU twin on seeded random inputs, at odd shapes (1x1, 1xn, 7x3,
//! 33x17, 129x65 and one dimension >= 512) and at widths that are multiples of 4 (the vec4
//! forms). Tolerances are abs + rel and chosen per kernel
//! (the reason is next to each). GPU tests print SKIPPED without an adapter and fail when
//! SOMA_REQUIRE_GPU=1.

mod common;

use common::{assert_close, gpu, is_llvmpipe, tiles_for, wg_tiles_for, TestRng};
use soma::autotune;
use soma::kernels;
use soma::ops::matmul::{MatmulForm, MatmulVariant, TILES};
use soma::ops::uniforms::*;
use soma::ops::{self, Accumulate, UpdateRule};
use soma::Loss;
use soma::Math;
use soma::{cpu, Activation, Gpu, GpuTensor};
use soma::{Kernels, Tuning};

/// Kernels of the test's own with the matmul `variant` (the other settings at their
/// defaults), so that a test's choice of kernel does not reach the tests beside it.
fn with_variant(gpu: &'static Gpu, variant: MatmulVariant) -> Kernels<'static> {
    Kernels::new(
        gpu,
        Tuning {
            matmul: variant,
            ..Tuning::default()
        },
    )
}

/// (rows, cols) shapes of the element-wise and row-wise tests.
const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (1, 9),
    (7, 3),
    (33, 17),
    (129, 65),
    (600, 5),
    (3, 530),
    // cols a multiple of 4: the vec4 forms of the element-wise kernels, column sums and
    // gathers (the first also has a length that is not a multiple of 256).
    (5, 12),
    (129, 64),
];

fn up(gpu: &Gpu, label: &str, shape: &[usize], data: &[f32]) -> GpuTensor {
    GpuTensor::upload(gpu, label, shape, data).unwrap()
}

fn up_u32(gpu: &Gpu, label: &str, shape: &[usize], data: &[u32]) -> GpuTensor {
    GpuTensor::upload_u32(gpu, label, shape, data).unwrap()
}

fn run(gpu: &Gpu, d: &soma::Dispatch) {
    kernels::run(gpu, &[d]).unwrap();
}

// ---------------------------------------------------------------------------------------

#[test]
fn matmul_forms_match_cpu() {
    let Some(gpu) = gpu("matmul_forms_match_cpu") else {
        return;
    };
    // (m, k, n)
    let cases = [
        (1, 1, 1),
        (1, 7, 9),
        (7, 3, 5),
        (33, 17, 9),
        (129, 65, 33),
        (513, 31, 17),
        (5, 600, 3),
        // k (and n) multiples of 4: the vec4 kernels, with and without edge blocks.
        (12, 64, 20),
        (33, 16, 9),
        (33, 16, 12),
        (130, 784, 36),
        // Whole blocks of every generated tile (m a multiple of 64, n of 32), one with
        // several blocks across; other shapes send a forced tile to the blocked kernel.
        (64, 20, 32),
        (128, 8, 96),
    ];
    let mut variants = vec![MatmulVariant::Naive, MatmulVariant::Blocked];
    variants.extend(tiles_for(gpu).into_iter().map(MatmulVariant::Tile));
    variants.push(MatmulVariant::Tuned);
    for variant in variants {
        let kn = &with_variant(gpu, variant);
        matmul_cases(kn, &cases, variant);
    }
}

/// A layer's forward pass as one kernel (a tile with the bias and activation as its
/// epilogue) gives what the product and the separate bias/activation kernel give: the same
/// bits on lavapipe (where the tiles equal the naive sums), and the CPU twins' values within
/// the matmul tolerance anywhere.
#[test]
fn dense_forward_fuses_bias_and_activation_into_the_tile() {
    let Some(gpu) = gpu("dense_forward_fuses_bias_and_activation_into_the_tile") else {
        return;
    };
    let (m, k, n) = (64, 20, 32);
    let mut rng = TestRng::new(12);
    let x = rng.vec(m * k, -1.0, 1.0);
    let w = rng.vec(n * k, -1.0, 1.0);
    let bias = rng.vec(n, -1.0, 1.0);
    let (xt, wt, bt) = (
        up(gpu, "x", &[m, k], &x),
        up(gpu, "w", &[n, k], &w),
        up(gpu, "bias", &[n], &bias),
    );
    let dummy = GpuTensor::zeros(gpu, "no bias", &[4]).unwrap();
    for act in [Activation::Relu, Activation::Identity] {
        let ap = ActivationParams {
            rows: m as u32,
            cols: n as u32,
            kind: act.code(),
            has_bias: 1,
            slope: act.slope(),
            ..Default::default()
        };
        let mp = MatmulParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            accumulate: 0,
        };
        let mut want_pre = vec![0.0; m * n];
        cpu::matmul_nt(&mut want_pre, &x, &w, &mp);
        let mut want_out = vec![0.0; m * n];
        cpu::bias_activation_forward(&mut want_out, &mut want_pre, &bias, &ap, Math::Native);
        for t in tiles_for(gpu) {
            let kn = &with_variant(gpu, MatmulVariant::Tile(t));
            let (pre, out) = (
                GpuTensor::zeros(gpu, "pre", &[m, n]).unwrap(),
                GpuTensor::zeros(gpu, "out", &[m, n]).unwrap(),
            );
            let d = ops::dense_forward(kn, &out, &pre, &xt, &wt, Some(&bt), &dummy, act)
                .unwrap()
                .expect("a tile that fits runs the fused kernel");
            assert!(d.entry().contains("_bias"), "{:?}", d.entry());
            run(gpu, &d);
            let (got_pre, got_out) = (pre.read(gpu).unwrap(), out.read(gpu).unwrap());
            let label = format!("dense_forward {} {act:?}", t.name());
            let atol = 2.0 * k as f32 * f32::EPSILON + 1e-6;
            assert_close(&format!("{label} pre"), &got_pre, &want_pre, atol, 1e-6);
            assert_close(&format!("{label} out"), &got_out, &want_out, atol, 1e-6);

            // The unfused pair on the GPU, same tile.
            let (pre2, out2) = (
                GpuTensor::zeros(gpu, "pre", &[m, n]).unwrap(),
                GpuTensor::zeros(gpu, "out", &[m, n]).unwrap(),
            );
            let mm = ops::matmul_nt(kn, &pre2, &xt, &wt, Accumulate::Overwrite).unwrap();
            let ba =
                ops::bias_activation_forward(kn, &out2, &pre2, Some(&bt), &dummy, act).unwrap();
            kernels::run(gpu, &[&mm, &ba]).unwrap();
            let same =
                |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same(&got_pre, &pre2.read(gpu).unwrap()),
                "{label}: pre bits"
            );
            assert!(
                same(&got_out, &out2.read(gpu).unwrap()),
                "{label}: out bits"
            );
        }
    }
    // Not fused: other activations, shapes no tile fits, and the blocked variant.
    let kn = &with_variant(gpu, MatmulVariant::Tile(TILES[0]));
    let (pre, out) = (
        GpuTensor::zeros(gpu, "pre", &[m, n]).unwrap(),
        GpuTensor::zeros(gpu, "out", &[m, n]).unwrap(),
    );
    let fused = |kn: &Kernels, act| {
        ops::dense_forward(kn, &out, &pre, &xt, &wt, Some(&bt), &dummy, act).unwrap()
    };
    assert!(fused(kn, Activation::Sigmoid).is_none());
    assert!(fused(kn, Activation::LeakyRelu { slope: 0.1 }).is_none());
    assert!(fused(&with_variant(gpu, MatmulVariant::Blocked), Activation::Relu).is_none());
    let odd = GpuTensor::zeros(gpu, "w", &[30, k]).unwrap();
    let (pre_odd, out_odd) = (
        GpuTensor::zeros(gpu, "pre", &[m, 30]).unwrap(),
        GpuTensor::zeros(gpu, "out", &[m, 30]).unwrap(),
    );
    let kn = &with_variant(gpu, MatmulVariant::Tile(TILES[0]));
    let b30 = GpuTensor::zeros(gpu, "bias", &[30]).unwrap();
    assert!(ops::dense_forward(
        kn,
        &out_odd,
        &pre_odd,
        &xt,
        &odd,
        Some(&b30),
        &dummy,
        Activation::Relu
    )
    .unwrap()
    .is_none());
}

/// Where the product would run on the scalar blocked kernel (k not a multiple of 4, as in a
/// first layer of 2 inputs), `dense_forward` is one kernel for any activation, with or
/// without a bias: the CPU twin's values, and the bits of the blocked product and the
/// separate bias/activation kernel.
#[test]
fn dense_forward_blocked_matches_its_twin_and_the_two_kernels() {
    let Some(gpu) = gpu("dense_forward_blocked_matches_its_twin_and_the_two_kernels") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::Blocked);
    let mut rng = TestRng::new(14);
    let dummy = GpuTensor::zeros(gpu, "no bias", &[4]).unwrap();
    for (m, k, n) in [(1, 1, 1), (33, 2, 17), (130, 7, 64)] {
        let x = rng.vec(m * k, -2.0, 2.0);
        let w = rng.vec(n * k, -2.0, 2.0);
        let bias = rng.vec(n, -1.0, 1.0);
        let (xt, wt, bt) = (
            up(gpu, "x", &[m, k], &x),
            up(gpu, "w", &[n, k], &w),
            up(gpu, "bias", &[n], &bias),
        );
        for act in Activation::ALL {
            for has_bias in [true, false] {
                let dp = DenseParams {
                    m: m as u32,
                    n: n as u32,
                    k: k as u32,
                    kind: act.code(),
                    slope: act.slope(),
                    has_bias: has_bias as u32,
                    ..Default::default()
                };
                let (mut want_pre, mut want_out) = (vec![0.0; m * n], vec![0.0; m * n]);
                cpu::dense_forward(&mut want_pre, &mut want_out, &x, &w, &bias, &dp);
                let b = has_bias.then_some(&bt);
                let (pre, out) = (
                    GpuTensor::zeros(gpu, "pre", &[m, n]).unwrap(),
                    GpuTensor::zeros(gpu, "out", &[m, n]).unwrap(),
                );
                let d = ops::dense_forward(kn, &out, &pre, &xt, &wt, b, &dummy, act)
                    .unwrap()
                    .expect("k is not a multiple of 4: the blocked dense_forward");
                assert_eq!(d.entry(), "dense_forward");
                run(gpu, &d);
                let (got_pre, got_out) = (pre.read(gpu).unwrap(), out.read(gpu).unwrap());
                let label = format!("dense_forward {m}x{k}x{n} {act:?} bias {has_bias}");
                // The product's tolerance; the activations' exp may differ by a few ulps.
                let atol = 4.0 * k as f32 * f32::EPSILON + 1e-6;
                assert_close(&format!("{label} pre"), &got_pre, &want_pre, atol, 1e-6);
                assert_close(&format!("{label} out"), &got_out, &want_out, atol, 1e-5);

                let (pre2, out2) = (
                    GpuTensor::zeros(gpu, "pre", &[m, n]).unwrap(),
                    GpuTensor::zeros(gpu, "out", &[m, n]).unwrap(),
                );
                let mm = ops::matmul_nt(kn, &pre2, &xt, &wt, Accumulate::Overwrite).unwrap();
                let ba = ops::bias_activation_forward(kn, &out2, &pre2, b, &dummy, act).unwrap();
                kernels::run(gpu, &[&mm, &ba]).unwrap();
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same(&got_pre, &pre2.read(gpu).unwrap()),
                    "{label}: pre bits"
                );
                assert!(
                    same(&got_out, &out2.read(gpu).unwrap()),
                    "{label}: out bits"
                );
            }
        }
    }
}

/// The input delta through any activation as one kernel where the product runs on the
/// scalar blocked kernel (`dense_backward`) gives its twin's values, and the same bits as the
/// product and the separate activation backward.
#[test]
fn dense_backward_blocked_matches_its_twin_and_the_two_kernels() {
    let Some(gpu) = gpu("dense_backward_blocked_matches_its_twin_and_the_two_kernels") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::Blocked);
    let mut rng = TestRng::new(15);
    // (m, k, n): k or n not a multiple of 4, so the scalar blocked kernel runs the product.
    for (m, k, n) in [(1, 1, 1), (33, 10, 17), (130, 7, 64), (64, 12, 30)] {
        let d = rng.vec(m * k, -2.0, 2.0);
        let w = rng.vec(k * n, -2.0, 2.0);
        let pre = rng.vec(m * n, -2.0, 2.0);
        let (dt, wt, pt) = (
            up(gpu, "d", &[m, k], &d),
            up(gpu, "w", &[k, n], &w),
            up(gpu, "pre", &[m, n], &pre),
        );
        for act in Activation::ALL {
            let dp = DenseParams {
                m: m as u32,
                n: n as u32,
                k: k as u32,
                kind: act.code(),
                slope: act.slope(),
                ..Default::default()
            };
            let mut want = vec![0.0; m * n];
            cpu::dense_backward(&mut want, &d, &w, &pre, &dp);
            let dpre = GpuTensor::zeros(gpu, "dpre", &[m, n]).unwrap();
            let fused = ops::dense_backward(kn, &dpre, &dt, &wt, &pt, act)
                .unwrap()
                .expect("k or n is not a multiple of 4: the blocked dense_backward");
            assert_eq!(fused.entry(), "dense_backward");
            run(gpu, &fused);
            let got = dpre.read(gpu).unwrap();
            let label = format!("dense_backward {m}x{k}x{n} {act:?}");
            // The product's tolerance; the derivatives' exp may differ by a few ulps.
            let atol = 4.0 * k as f32 * f32::EPSILON * 4.0 + 1e-6;
            assert_close(&label, &got, &want, atol, 1e-5);

            let (dx, dpre2) = (
                GpuTensor::zeros(gpu, "dx", &[m, n]).unwrap(),
                GpuTensor::zeros(gpu, "dpre", &[m, n]).unwrap(),
            );
            let mm = ops::matmul_nn(kn, &dx, &dt, &wt, Accumulate::Overwrite).unwrap();
            let ab = ops::activation_backward(kn, &dpre2, &dx, &pt, act).unwrap();
            kernels::run(gpu, &[&mm, &ab]).unwrap();
            let two = dpre2.read(gpu).unwrap();
            assert!(
                got.iter()
                    .zip(&two)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{label}: not the bits of matmul_nn and activation_backward"
            );
        }
    }
    // Where the vec4 blocked kernel or a tile runs the product, it declines.
    let (m, k, n) = (32, 8, 16);
    let dpre = GpuTensor::zeros(gpu, "dpre", &[m, n]).unwrap();
    let (dt, wt, pt) = (
        GpuTensor::zeros(gpu, "d", &[m, k]).unwrap(),
        GpuTensor::zeros(gpu, "w", &[k, n]).unwrap(),
        GpuTensor::zeros(gpu, "pre", &[m, n]).unwrap(),
    );
    let declined = ops::dense_backward(kn, &dpre, &dt, &wt, &pt, Activation::Tanh).unwrap();
    assert!(declined.is_none());
}

/// The input delta of a ReLU layer as one kernel (a tile with relu' as its epilogue) gives
/// what the product and the separate activation backward give: the same bits on lavapipe,
/// the CPU twins' values within the matmul tolerance anywhere. Tiles over 256 outputs per
/// invocation do not take the epilogue.
#[test]
fn relu_delta_fuses_the_derivative_into_the_tile() {
    let Some(gpu) = gpu("relu_delta_fuses_the_derivative_into_the_tile") else {
        return;
    };
    let (m, k, n) = (64, 20, 32);
    let mut rng = TestRng::new(13);
    let d = rng.vec(m * k, -1.0, 1.0);
    let w = rng.vec(k * n, -1.0, 1.0);
    let pre = rng.vec(m * n, -1.0, 1.0);
    let (dt, wt, pt) = (
        up(gpu, "d", &[m, k], &d),
        up(gpu, "w", &[k, n], &w),
        up(gpu, "pre", &[m, n], &pre),
    );
    let mp = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        accumulate: 0,
    };
    let want = relu_delta_twin(&d, &w, &pre, &mp);
    let mut fused_tiles = 0;
    for t in tiles_for(gpu) {
        let kn = &with_variant(gpu, MatmulVariant::Tile(t));
        let dpre = GpuTensor::zeros(gpu, "dpre", &[m, n]).unwrap();
        let Some(fused) = ops::relu_delta(kn, &dpre, &dt, &wt, &pt).unwrap() else {
            assert!(
                !soma::ops::matmul::tiled::relu_grad_allowed(t),
                "{} fits and is small enough, so it fuses",
                t.name()
            );
            continue;
        };
        fused_tiles += 1;
        run(gpu, &fused);
        let got = dpre.read(gpu).unwrap();
        let label = format!("relu_delta {}", t.name());
        let atol = 2.0 * k as f32 * f32::EPSILON + 1e-6;
        assert_close(&label, &got, &want, atol, 1e-6);
        // The unfused pair on the GPU, same tile.
        let (dx2, dpre2) = (
            GpuTensor::zeros(gpu, "dx", &[m, n]).unwrap(),
            GpuTensor::zeros(gpu, "dpre", &[m, n]).unwrap(),
        );
        let mm = ops::matmul_nn(kn, &dx2, &dt, &wt, Accumulate::Overwrite).unwrap();
        let ab = ops::activation_backward(kn, &dpre2, &dx2, &pt, Activation::Relu).unwrap();
        kernels::run(gpu, &[&mm, &ab]).unwrap();
        let other = dpre2.read(gpu).unwrap();
        assert!(
            got.iter()
                .zip(&other)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{label}: not the unfused kernels' bits"
        );
    }
    assert!(fused_tiles >= 3, "the small tiles fuse");
    let kn = &with_variant(gpu, MatmulVariant::Blocked);
    let dpre = GpuTensor::zeros(gpu, "dpre", &[m, n]).unwrap();
    assert!(ops::relu_delta(kn, &dpre, &dt, &wt, &pt).unwrap().is_none());
}

/// Every generated tile sums each output in the order of the naive kernel (k = 0, 1, ...,
/// separate multiply and add). Where the naive kernel's bits equal the CPU twin's (a driver
/// that does not contract into fused multiply-adds), the tiles must give exactly those bits
/// too. On llvmpipe, the adapter CI has, that holds for all three forms, and the test
/// demands it; elsewhere a form whose naive sums differ from the twin's in the last bits has
/// every tile checked against the twin within the matmul tolerance instead.
/// The twins of `relu_delta`'s two kernels in a row: `dpre = (d · w) * relu'(pre)`, the
/// product summed like `matmul_nn`'s (`mp` its sizes).
fn relu_delta_twin(d: &[f32], w: &[f32], pre: &[f32], mp: &MatmulParams) -> Vec<f32> {
    let len = (mp.m * mp.n) as usize;
    let ap = ActivationParams {
        rows: mp.m,
        cols: mp.n,
        kind: Activation::Relu.code(),
        ..Default::default()
    };
    let mut dx = vec![0.0; len];
    cpu::matmul_nn(&mut dx, d, w, mp);
    let mut want = vec![0.0; len];
    cpu::activation_backward(&mut want, &dx, pre, &ap, Math::Native);
    want
}

/// A product's recorder (`ops::matmul_nt` ...).
type MatmulRecorder =
    fn(&Kernels, &GpuTensor, &GpuTensor, &GpuTensor, Accumulate) -> soma::Result<soma::Dispatch>;
/// A product's CPU twin (`cpu::matmul_nt` ...).
type MatmulTwin = fn(&mut [f32], &[f32], &[f32], &MatmulParams);

/// One product: its name, recorder, twin, and the shapes of a and b.
type MatmulCase = (
    &'static str,
    MatmulRecorder,
    MatmulTwin,
    [usize; 2],
    [usize; 2],
);

/// The three products of an `m x k` by `k x n` shape.
fn matmul_forms(m: usize, k: usize, n: usize) -> [MatmulCase; 3] {
    [
        ("nt", ops::matmul_nt, cpu::matmul_nt, [m, k], [n, k]),
        ("nn", ops::matmul_nn, cpu::matmul_nn, [m, k], [k, n]),
        ("tn", ops::matmul_tn, cpu::matmul_tn, [k, m], [k, n]),
    ]
}

#[test]
fn matmul_tiles_sum_in_naive_order() {
    let Some(gpu) = gpu("matmul_tiles_sum_in_naive_order") else {
        return;
    };
    let (m, k, n) = (128, 36, 64);
    let mut rng = TestRng::new(5);
    let p = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        accumulate: 0,
    };
    let forms = matmul_forms(m, k, n);
    let mut inexact = Vec::new();
    for (name, form, twin, a_shape, b_shape) in forms {
        let a = rng.vec(m * k, -1.0, 1.0);
        let b = rng.vec(k * n, -1.0, 1.0);
        let at = up(gpu, "a", &a_shape, &a);
        let bt = up(gpu, "b", &b_shape, &b);
        let product = |variant: MatmulVariant| {
            let kn = &with_variant(gpu, variant);
            let out = GpuTensor::zeros(gpu, "out", &[m, n]).unwrap();
            run(
                gpu,
                &form(kn, &out, &at, &bt, Accumulate::Overwrite).unwrap(),
            );
            out.read(gpu).unwrap()
        };
        let naive = product(MatmulVariant::Naive);
        let mut want = vec![0.0; m * n];
        twin(&mut want, &a, &b, &p);
        if naive
            .iter()
            .zip(&want)
            .any(|(x, y)| x.to_bits() != y.to_bits())
        {
            println!("matmul_{name}: the driver's naive sums differ from the CPU twin's in the last bits; tolerance only");
            inexact.push(name);
            // As in matmul_cases: ~k ulps of the partial sums where the driver fuses.
            let atol = 2.0 * k as f32 * f32::EPSILON + 1e-6;
            for t in tiles_for(gpu) {
                let got = product(MatmulVariant::Tile(t));
                assert_close(
                    &format!("matmul_{name} {}", t.name()),
                    &got,
                    &want,
                    atol,
                    1e-6,
                );
            }
            continue;
        }
        for t in tiles_for(gpu) {
            let got = product(MatmulVariant::Tile(t));
            let same = got
                .iter()
                .zip(&naive)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "matmul_{name} {}: not the naive kernel's bits",
                t.name()
            );
        }
    }
    println!(
        "matmul tiles: bitwise equal to naive in {} of 3 forms on {}",
        3 - inexact.len(),
        gpu.adapter().name
    );
    if is_llvmpipe(gpu) {
        assert!(
            inexact.is_empty(),
            "llvmpipe contracts no multiply-add, yet the naive kernel's sums differ from the CPU twin's bits in {inexact:?}"
        );
    }
}

/// (m, k, n) of the workgroup-tile tests: one output, sizes under one block and one slice,
/// edges in every dimension of every tile (k not a multiple of any slice), several blocks
/// with edges, and whole blocks and slices of every tile. The multiples of 4 among m, k and
/// n take each form through every pair of loads it has (`wg_loads`): both scalar, A or B
/// alone as vec4, both vec4, with k edges where a vec4 of k lies wholly past the end.
const WG_CASES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 3, 5),
    (33, 29, 17),
    // nt both vec4, nn A, tn A; k = 36 ends in the middle of a slice of every tile.
    (132, 36, 70),
    // nt and nn both vec4, tn B.
    (33, 20, 68),
    // nt scalar, nn B, tn both vec4.
    (36, 29, 44),
    (128, 32, 128),
];

/// The loads part of a workgroup tile's entry point for `form` ("nt", "nn", "tn") at
/// (m, k, n): vec4 for an operand whose contiguous dimension is a multiple of 4 (A along k
/// in nt and nn and along m in tn, B along k in nt and along n in nn and tn).
fn wg_loads(form: &str, m: usize, k: usize, n: usize) -> &'static str {
    let (a, b) = match form {
        "nt" => (k, k),
        "nn" => (k, n),
        "tn" => (m, n),
        _ => unreachable!("{form}"),
    };
    match (a % 4 == 0, b % 4 == 0) {
        (false, false) => "",
        (true, false) => "_v4a",
        (false, true) => "_v4b",
        (true, true) => "_v4",
    }
}

/// Asserts `got` equals `want` bit for bit on llvmpipe (which contracts no multiply-add, so
/// a kernel summing in the naive order gives the CPU twin's bits), and within the matmul
/// tolerance elsewhere: ~k ulps of the partial sums where a driver fuses multiply and add.
fn assert_twin_bits(gpu: &Gpu, label: &str, got: &[f32], want: &[f32], k: usize) {
    if is_llvmpipe(gpu) {
        assert_eq!(got.len(), want.len(), "{label}: length");
        if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
            let pairs: Vec<String> = (i..got.len().min(i + 4))
                .map(|j| format!("[{j}] {} vs {}", got[j], want[j]))
                .collect();
            panic!("{label}: not the CPU twin's bits: {}", pairs.join(", "));
        }
    } else {
        let atol = 2.0 * k as f32 * f32::EPSILON + 1e-6;
        assert_close(label, got, want, atol, 1e-6);
    }
}

/// Every workgroup tile runs all three forms at any m, n, k, overwriting or accumulating,
/// and sums in the naive order: the CPU twin's bits on llvmpipe.
#[test]
fn matmul_workgroup_tiles_match_cpu_bitwise() {
    let Some(gpu) = gpu("matmul_workgroup_tiles_match_cpu_bitwise") else {
        return;
    };
    let mut rng = TestRng::new(21);
    for t in wg_tiles_for(gpu) {
        let kn = &with_variant(gpu, MatmulVariant::Workgroup(t));
        for &(m, k, n) in WG_CASES {
            for acc in [Accumulate::Overwrite, Accumulate::Add] {
                let p = MatmulParams {
                    m: m as u32,
                    n: n as u32,
                    k: k as u32,
                    accumulate: (acc == Accumulate::Add) as u32,
                };
                let prior = rng.vec(m * n, -1.0, 1.0);
                let a = rng.vec(m * k, -1.0, 1.0);
                let b = rng.vec(k * n, -1.0, 1.0);
                for (name, form, twin, a_shape, b_shape) in matmul_forms(m, k, n) {
                    let mut want = prior.clone();
                    twin(&mut want, &a, &b, &p);
                    let out = up(gpu, "out", &[m, n], &prior);
                    let d = form(
                        kn,
                        &out,
                        &up(gpu, "a", &a_shape, &a),
                        &up(gpu, "b", &b_shape, &b),
                        acc,
                    )
                    .unwrap();
                    assert_eq!(
                        d.entry(),
                        format!("matmul_{name}_{}{}", t.name(), wg_loads(name, m, k, n))
                    );
                    run(gpu, &d);
                    let label = format!("matmul_{name} {} {m}x{k}x{n} {acc:?}", t.name());
                    assert_twin_bits(gpu, &label, &out.read(gpu).unwrap(), &want, k);
                }
            }
        }
    }
}

/// A layer's forward pass on a workgroup tile (bias and ReLU or identity in the epilogue)
/// and a ReLU layer's input delta (relu' in the epilogue) give the CPU twins' values: the
/// product's twin followed by the bias/activation twin, bit for bit on llvmpipe.
#[test]
fn workgroup_epilogues_match_cpu_bitwise() {
    let Some(gpu) = gpu("workgroup_epilogues_match_cpu_bitwise") else {
        return;
    };
    let mut rng = TestRng::new(22);
    let dummy = GpuTensor::zeros(gpu, "no bias", &[4]).unwrap();
    for t in wg_tiles_for(gpu) {
        let kn = &with_variant(gpu, MatmulVariant::Workgroup(t));
        for &(m, k, n) in WG_CASES {
            let mp = MatmulParams {
                m: m as u32,
                n: n as u32,
                k: k as u32,
                accumulate: 0,
            };
            // dense_forward: pre = x · wᵀ + bias, out = act(pre).
            let x = rng.vec(m * k, -1.0, 1.0);
            let w = rng.vec(n * k, -1.0, 1.0);
            let bias = rng.vec(n, -1.0, 1.0);
            let (xt, wt, bt) = (
                up(gpu, "x", &[m, k], &x),
                up(gpu, "w", &[n, k], &w),
                up(gpu, "bias", &[n], &bias),
            );
            for act in [Activation::Relu, Activation::Identity] {
                let ap = ActivationParams {
                    rows: m as u32,
                    cols: n as u32,
                    kind: act.code(),
                    has_bias: 1,
                    slope: act.slope(),
                    ..Default::default()
                };
                let mut want_pre = vec![0.0; m * n];
                cpu::matmul_nt(&mut want_pre, &x, &w, &mp);
                let mut want_out = vec![0.0; m * n];
                cpu::bias_activation_forward(
                    &mut want_out,
                    &mut want_pre,
                    &bias,
                    &ap,
                    Math::Native,
                );
                let (pre, out) = (
                    GpuTensor::zeros(gpu, "pre", &[m, n]).unwrap(),
                    GpuTensor::zeros(gpu, "out", &[m, n]).unwrap(),
                );
                let d = ops::dense_forward(kn, &out, &pre, &xt, &wt, Some(&bt), &dummy, act)
                    .unwrap()
                    .expect("a workgroup tile runs the fused kernel");
                let relu = if act == Activation::Relu { "_relu" } else { "" };
                assert_eq!(
                    d.entry(),
                    format!(
                        "matmul_nt_{}{}_bias{relu}",
                        t.name(),
                        wg_loads("nt", m, k, n)
                    )
                );
                run(gpu, &d);
                let label = format!("dense_forward {} {m}x{k}x{n} {act:?}", t.name());
                assert_twin_bits(
                    gpu,
                    &format!("{label} pre"),
                    &pre.read(gpu).unwrap(),
                    &want_pre,
                    k,
                );
                assert_twin_bits(
                    gpu,
                    &format!("{label} out"),
                    &out.read(gpu).unwrap(),
                    &want_out,
                    k,
                );
            }
            // Other activations are not fused.
            let (pre, out) = (
                GpuTensor::zeros(gpu, "pre", &[m, n]).unwrap(),
                GpuTensor::zeros(gpu, "out", &[m, n]).unwrap(),
            );
            let sigmoid = ops::dense_forward(
                kn,
                &out,
                &pre,
                &xt,
                &wt,
                Some(&bt),
                &dummy,
                Activation::Sigmoid,
            )
            .unwrap();
            assert!(sigmoid.is_none());

            // relu_delta: dpre = (d · w) * relu'(pre).
            let dd = rng.vec(m * k, -1.0, 1.0);
            let wn = rng.vec(k * n, -1.0, 1.0);
            let pre_v = rng.vec(m * n, -1.0, 1.0);
            let want = relu_delta_twin(&dd, &wn, &pre_v, &mp);
            let dpre = GpuTensor::zeros(gpu, "dpre", &[m, n]).unwrap();
            let d = ops::relu_delta(
                kn,
                &dpre,
                &up(gpu, "d", &[m, k], &dd),
                &up(gpu, "w", &[k, n], &wn),
                &up(gpu, "pre", &[m, n], &pre_v),
            )
            .unwrap()
            .expect("a workgroup tile runs the fused kernel");
            assert_eq!(
                d.entry(),
                format!(
                    "matmul_nn_{}{}_relu_grad",
                    t.name(),
                    wg_loads("nn", m, k, n)
                )
            );
            run(gpu, &d);
            let label = format!("relu_delta {} {m}x{k}x{n}", t.name());
            assert_twin_bits(gpu, &label, &dpre.read(gpu).unwrap(), &want, k);
        }
    }
}

fn matmul_cases(kn: &Kernels, cases: &[(usize, usize, usize)], variant: MatmulVariant) {
    let gpu = kn.gpu();
    let mut rng = TestRng::new(1);
    for &(m, k, n) in cases {
        for acc in [Accumulate::Overwrite, Accumulate::Add] {
            let a = rng.vec(m * k, -1.0, 1.0);
            let prior = rng.vec(m * n, -1.0, 1.0);
            let p = MatmulParams {
                m: m as u32,
                n: n as u32,
                k: k as u32,
                accumulate: (acc == Accumulate::Add) as u32,
            };
            // Each product is a k-term sum of terms bounded by 1: the GPU may fuse multiply and
            // add (one rounding instead of two) so sums can differ by ~k ulps of the partial
            // sums; 2k * eps absolute covers that with margin, and rel 1e-6 the large values.
            let atol = 2.0 * k as f32 * f32::EPSILON + 1e-6;
            let label = format!("{variant:?} {m}x{k}x{n} {acc:?}");

            // nt: a (m,k) · b (n,k)^T
            let b = rng.vec(n * k, -1.0, 1.0);
            let mut want = prior.clone();
            cpu::matmul_nt(&mut want, &a, &b, &p);
            let out = up(gpu, "out", &[m, n], &prior);
            autotune::prepare(kn, MatmulForm::Nt, m, n, k, acc).unwrap();
            let d = ops::matmul_nt(
                kn,
                &out,
                &up(gpu, "a", &[m, k], &a),
                &up(gpu, "b", &[n, k], &b),
                acc,
            )
            .unwrap();
            run(gpu, &d);
            assert_close(
                &format!("matmul_nt {label}"),
                &out.read(gpu).unwrap(),
                &want,
                atol,
                1e-6,
            );

            // nn: a (m,k) · b (k,n)
            let b = rng.vec(k * n, -1.0, 1.0);
            let mut want = prior.clone();
            cpu::matmul_nn(&mut want, &a, &b, &p);
            let out = up(gpu, "out", &[m, n], &prior);
            autotune::prepare(kn, MatmulForm::Nn, m, n, k, acc).unwrap();
            let d = ops::matmul_nn(
                kn,
                &out,
                &up(gpu, "a", &[m, k], &a),
                &up(gpu, "b", &[k, n], &b),
                acc,
            )
            .unwrap();
            run(gpu, &d);
            assert_close(
                &format!("matmul_nn {label}"),
                &out.read(gpu).unwrap(),
                &want,
                atol,
                1e-6,
            );

            // tn: a (k,m)^T · b (k,n)
            let at = rng.vec(k * m, -1.0, 1.0);
            let b = rng.vec(k * n, -1.0, 1.0);
            let mut want = prior.clone();
            cpu::matmul_tn(&mut want, &at, &b, &p);
            let out = up(gpu, "out", &[m, n], &prior);
            autotune::prepare(kn, MatmulForm::Tn, m, n, k, acc).unwrap();
            let d = ops::matmul_tn(
                kn,
                &out,
                &up(gpu, "a", &[k, m], &at),
                &up(gpu, "b", &[k, n], &b),
                acc,
            )
            .unwrap();
            run(gpu, &d);
            assert_close(
                &format!("matmul_tn {label}"),
                &out.read(gpu).unwrap(),
                &want,
                atol,
                1e-6,
            );
        }
    }
}

#[test]
fn matmul_rejects_mismatched_shapes() {
    let Some(gpu) = gpu("matmul_rejects_mismatched_shapes") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::default());
    let a = GpuTensor::zeros(gpu, "a", &[3, 4]).unwrap();
    let b = GpuTensor::zeros(gpu, "b", &[5, 3]).unwrap();
    let out = GpuTensor::zeros(gpu, "out", &[3, 5]).unwrap();
    let err = ops::matmul_nt(kn, &out, &a, &b, Accumulate::Overwrite).unwrap_err();
    assert!(matches!(err, soma::Error::Shape { .. }), "{err}");
    assert!(err.to_string().contains("'b' of 5 x 4"), "{err}");
}

#[test]
fn bias_activation_forward_matches_cpu() {
    let Some(gpu) = gpu("bias_activation_forward_matches_cpu") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::default());
    let mut rng = TestRng::new(2);
    let dummy = GpuTensor::zeros(gpu, "no bias", &[1]).unwrap();
    for &(rows, cols) in SHAPES {
        for act in Activation::ALL {
            for has_bias in [true, false] {
                let pre = rng.vec(rows * cols, -4.0, 4.0);
                let bias = rng.vec(cols, -1.0, 1.0);
                let p = ActivationParams {
                    rows: rows as u32,
                    cols: cols as u32,
                    kind: act.code(),
                    has_bias: has_bias as u32,
                    slope: act.slope(),
                    ..Default::default()
                };
                let mut want_out = vec![0.0; rows * cols];
                let mut want_pre = pre.clone();
                cpu::bias_activation_forward(&mut want_out, &mut want_pre, &bias, &p, Math::Native);
                let out = GpuTensor::zeros(gpu, "out", &[rows, cols]).unwrap();
                let pre_t = up(gpu, "pre", &[rows, cols], &pre);
                let bias_t = up(gpu, "bias", &[cols], &bias);
                let d = ops::bias_activation_forward(
                    kn,
                    &out,
                    &pre_t,
                    has_bias.then_some(&bias_t),
                    &dummy,
                    act,
                )
                .unwrap();
                run(gpu, &d);
                let label = format!("{act} {rows}x{cols} bias={has_bias}");
                // The bias add is one f32 addition on both sides: exact.
                assert_close(
                    &format!("pre {label}"),
                    &pre_t.read(gpu).unwrap(),
                    &want_pre,
                    0.0,
                    0.0,
                );
                // relu/leaky/sign/step/identity are exact; sigmoid/tanh go through exp, whose
                // GPU accuracy the spec leaves at a few ulps: 1e-6 abs on values in [-1, 1].
                assert_close(
                    &format!("out {label}"),
                    &out.read(gpu).unwrap(),
                    &want_out,
                    1e-6,
                    1e-6,
                );
            }
        }
    }
}

#[test]
fn activation_backward_matches_cpu() {
    let Some(gpu) = gpu("activation_backward_matches_cpu") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::default());
    let mut rng = TestRng::new(3);
    for &(rows, cols) in SHAPES {
        for act in Activation::ALL {
            let pre = rng.vec(rows * cols, -4.0, 4.0);
            let dout = rng.vec(rows * cols, -1.0, 1.0);
            let p = ActivationParams {
                rows: rows as u32,
                cols: cols as u32,
                kind: act.code(),
                slope: act.slope(),
                ..Default::default()
            };
            let mut want = vec![0.0; rows * cols];
            cpu::activation_backward(&mut want, &dout, &pre, &p, Math::Native);
            let dpre = GpuTensor::zeros(gpu, "dpre", &[rows, cols]).unwrap();
            let d = ops::activation_backward(
                kn,
                &dpre,
                &up(gpu, "dout", &[rows, cols], &dout),
                &up(gpu, "pre", &[rows, cols], &pre),
                act,
            )
            .unwrap();
            run(gpu, &d);
            // Derivatives of sigmoid/tanh carry exp's few-ulp error; the rest are exact.
            assert_close(
                &format!("activation_backward {act} {rows}x{cols}"),
                &dpre.read(gpu).unwrap(),
                &want,
                1e-6,
                1e-6,
            );
        }
    }
}

#[test]
fn column_sum_and_reduce_sum_match_cpu() {
    let Some(gpu) = gpu("column_sum_and_reduce_sum_match_cpu") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::default());
    let mut rng = TestRng::new(4);
    for &(rows, cols) in SHAPES {
        for acc in [Accumulate::Overwrite, Accumulate::Add] {
            let x = rng.vec(rows * cols, -1.0, 1.0);
            let prior = rng.vec(cols, -1.0, 1.0);
            let p = RowsParams {
                rows: rows as u32,
                cols: cols as u32,
                accumulate: (acc == Accumulate::Add) as u32,
                ..Default::default()
            };
            let mut want = prior.clone();
            cpu::column_sum(&mut want, &x, &p);
            let out = up(gpu, "out", &[cols], &prior);
            run(
                gpu,
                &ops::column_sum(kn, &out, &up(gpu, "x", &[rows, cols], &x), acc).unwrap(),
            );
            // Same order of additions on both sides: exact.
            assert_close(
                &format!("column_sum {rows}x{cols} {acc:?}"),
                &out.read(gpu).unwrap(),
                &want,
                0.0,
                0.0,
            );

            let prior = [0.5f32];
            let p = ReduceParams {
                len: (rows * cols) as u32,
                accumulate: (acc == Accumulate::Add) as u32,
                ..Default::default()
            };
            let mut want = prior.to_vec();
            cpu::reduce_sum(&mut want, &x, &p);
            let out = up(gpu, "sum", &[1], &prior);
            run(
                gpu,
                &ops::reduce_sum(kn, &out, &up(gpu, "x", &[rows * cols], &x), acc).unwrap(),
            );
            // The CPU twin follows the shader's strided-then-tree order: exact.
            assert_close(
                &format!("reduce_sum {} {acc:?}", rows * cols),
                &out.read(gpu).unwrap(),
                &want,
                0.0,
                0.0,
            );
        }
    }
}

#[test]
fn argmax_and_correct_count_match_cpu() {
    let Some(gpu) = gpu("argmax_and_correct_count_match_cpu") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::default());
    let mut rng = TestRng::new(5);
    for &(rows, cols) in SHAPES {
        let mut x = rng.vec(rows * cols, -1.0, 1.0);
        // Ties: the first maximum wins on both sides.
        if cols > 2 {
            x[1] = 2.0;
            x[2] = 2.0;
        }
        let labels: Vec<u32> = (0..rows).map(|_| rng.below(cols as u32)).collect();
        let p = RowsParams {
            rows: rows as u32,
            cols: cols as u32,
            ..Default::default()
        };
        let mut want = vec![0u32; rows];
        cpu::argmax(&mut want, &x, &p);
        let out = GpuTensor::zeros_u32(gpu, "argmax", &[rows]).unwrap();
        let xt = up(gpu, "x", &[rows, cols], &x);
        run(gpu, &ops::argmax(kn, &out, &xt).unwrap());
        assert_eq!(out.read_u32(gpu).unwrap(), want, "argmax {rows}x{cols}");

        // Count over the first `live` rows only, added to a prior count of 3.
        // With one column the prediction is `x >= threshold` against 0/1 labels.
        let live = rows.div_ceil(2);
        let labels: Vec<u32> = if cols == 1 {
            labels.iter().map(|l| l % 2).collect()
        } else {
            labels
        };
        let p = RowsParams {
            rows: live as u32,
            cols: cols as u32,
            threshold: 0.25,
            ..Default::default()
        };
        let mut want = vec![3u32];
        cpu::correct_count(&mut want, &x, &labels, &p);
        let count = up_u32(gpu, "count", &[1], &[3]);
        run(
            gpu,
            &ops::correct_count(
                kn,
                &count,
                &xt,
                &up_u32(gpu, "labels", &[rows], &labels),
                live,
                0.25,
            )
            .unwrap(),
        );
        assert_eq!(
            count.read_u32(gpu).unwrap(),
            want,
            "correct_count {rows}x{cols}"
        );
    }
}

/// Kernels with the reductions' subgroup forms on or off (`Tuning::subgroups`).
fn with_subgroups(gpu: &'static Gpu, on: bool) -> Kernels<'static> {
    Kernels::new(
        gpu,
        Tuning {
            subgroups: on,
            ..Tuning::default()
        },
    )
}

#[test]
fn subgroup_reductions_match_their_fallbacks_and_twins() {
    let Some(gpu) = gpu("subgroup_reductions_match_their_fallbacks_and_twins") else {
        return;
    };
    let (sg, wg) = (&with_subgroups(gpu, true), &with_subgroups(gpu, false));
    assert!(!wg.subgroups());
    // lavapipe through Vulkan has subgroups (of 8), so the subgroup forms run here; GL has
    // none, and both kernels run the fallback.
    let vulkan = gpu.adapter().backend == wgpu::Backend::Vulkan;
    if is_llvmpipe(gpu) && vulkan {
        assert!(
            gpu.subgroups().is_some() && sg.subgroups(),
            "lavapipe has subgroups"
        );
    }
    println!(
        "subgroups {:?}, subgroup forms {}",
        gpu.subgroups(),
        sg.subgroups()
    );
    let mut rng = TestRng::new(41);
    for len in [1usize, 2, 7, 8, 9, 255, 256, 257, 1000, 4099, 70_001] {
        // Magnitudes over six decades, both signs: a different order of additions gives
        // different bits (checked below for the longer vectors).
        let x: Vec<f32> = (0..len)
            .map(|_| rng.uniform(-1.0, 1.0) * 10f32.powf(rng.uniform(-3.0, 3.0)))
            .collect();
        let xt = up(gpu, "x", &[len], &x);
        for acc in [Accumulate::Overwrite, Accumulate::Add] {
            let p = ReduceParams {
                len: len as u32,
                accumulate: (acc == Accumulate::Add) as u32,
                ..Default::default()
            };
            let mut want = vec![0.25f32];
            cpu::reduce_sum(&mut want, &x, &p);
            for (form, kn) in [("subgroup", sg), ("workgroup", wg)] {
                let out = up(gpu, "sum", &[1], &[0.25]);
                run(gpu, &ops::reduce_sum(kn, &out, &xt, acc).unwrap());
                let got = out.read(gpu).unwrap();
                assert_eq!(
                    got[0].to_bits(),
                    want[0].to_bits(),
                    "reduce_sum {form} len {len} {acc:?}: {} vs twin {}",
                    got[0],
                    want[0]
                );
            }
        }
        if len >= 1000 {
            let serial = x.iter().fold(0.0f32, |a, &v| a + v);
            let mut tree = [0.0f32];
            cpu::reduce_sum(
                &mut tree,
                &x,
                &ReduceParams {
                    len: len as u32,
                    ..Default::default()
                },
            );
            assert_ne!(
                serial.to_bits(),
                tree[0].to_bits(),
                "len {len}: order-sensitive data"
            );
        }
    }

    // The split column sum (the bias gradient on hardware GPUs) in both forms, at row
    // counts around the 32 lanes per column and column counts around the 8 per workgroup.
    let mut differs = false;
    for rows in [1usize, 7, 31, 32, 33, 64, 100, 255, 257, 300] {
        for cols in [1usize, 7, 8, 9, 10, 64, 255, 257] {
            let x: Vec<f32> = (0..rows * cols)
                .map(|_| rng.uniform(-1.0, 1.0) * 10f32.powf(rng.uniform(-3.0, 3.0)))
                .collect();
            let xt = up(gpu, "x", &[rows, cols], &x);
            let prior = rng.vec(cols, -1.0, 1.0);
            for acc in [Accumulate::Overwrite, Accumulate::Add] {
                let p = RowsParams {
                    rows: rows as u32,
                    cols: cols as u32,
                    accumulate: (acc == Accumulate::Add) as u32,
                    ..Default::default()
                };
                let mut want = prior.clone();
                cpu::column_sum_split(&mut want, &x, &p);
                let mut serial = prior.clone();
                cpu::column_sum(&mut serial, &x, &p);
                differs |= want
                    .iter()
                    .zip(&serial)
                    .any(|(a, b)| a.to_bits() != b.to_bits());
                for (form, kn) in [("subgroup", sg), ("workgroup", wg)] {
                    let out = up(gpu, "out", &[cols], &prior);
                    let split = ops::SumForm::Split;
                    run(gpu, &ops::column_sum_as(kn, split, &out, &xt, acc).unwrap());
                    let got = out.read(gpu).unwrap();
                    for (c, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "column_sum_split {form} {rows}x{cols} {acc:?} col {c}: {g} vs twin {w}"
                        );
                    }
                }
            }
        }
    }
    assert!(
        differs,
        "the split order differs from the row order somewhere"
    );

    for rows in [1usize, 7, 63, 64, 65, 255, 257, 300, 1000] {
        for cols in [1usize, 3, 10] {
            let x = rng.vec(rows * cols, -1.0, 1.0);
            let labels: Vec<u32> = (0..rows).map(|_| rng.below(cols.max(2) as u32)).collect();
            let lt = up_u32(gpu, "labels", &[rows], &labels);
            let xt = up(gpu, "x", &[rows, cols], &x);
            for live in [rows, rows.div_ceil(3)] {
                let p = RowsParams {
                    rows: live as u32,
                    cols: cols as u32,
                    threshold: 0.0,
                    ..Default::default()
                };
                let mut want = vec![5u32];
                cpu::correct_count(&mut want, &x, &labels, &p);
                for (form, kn) in [("subgroup", sg), ("workgroup", wg)] {
                    let count = up_u32(gpu, "count", &[1], &[5]);
                    let d = ops::correct_count(kn, &count, &xt, &lt, live, 0.0).unwrap();
                    run(gpu, &d);
                    assert_eq!(
                        count.read_u32(gpu).unwrap(),
                        want,
                        "correct_count {form} {rows}x{cols}, {live} live"
                    );
                }
            }
        }
    }
}

#[test]
fn softmax_split_matches_cpu_in_both_forms() {
    let Some(gpu) = gpu("softmax_split_matches_cpu_in_both_forms") else {
        return;
    };
    let (sg, wg) = (&with_subgroups(gpu, true), &with_subgroups(gpu, false));
    // soma's own exp and division (the same bits in Rust and WGSL) where the kernels load as
    // SPIR-V that the driver may not reorder: there the split form equals its twin bit for
    // bit. (Those kernels run the workgroup form: strict SPIR-V has no subgroups.)
    let strict = Kernels::new(gpu, Tuning::strict());
    let mut rng = TestRng::new(61);
    let split = ops::SumForm::Split;
    for rows in [1usize, 7, 8, 9, 33, 300] {
        for cols in [1usize, 7, 31, 32, 33, 100, 530] {
            let x = rng.vec(rows * cols, -30.0, 30.0);
            let xt = up(gpu, "x", &[rows, cols], &x);
            let p = RowsParams {
                rows: rows as u32,
                cols: cols as u32,
                ..Default::default()
            };
            let label = format!("softmax_split {rows}x{cols}");
            let mut got = Vec::new();
            for kn in [sg, wg] {
                let out = GpuTensor::zeros(gpu, "softmax", &[rows, cols]).unwrap();
                run(gpu, &ops::softmax_as(kn, split, &out, &xt).unwrap());
                got.push(out.read(gpu).unwrap());
            }
            // The subgroup form and the fallback: the same order and the same exp, so the
            // same bits.
            for (i, (a, b)) in got[0].iter().zip(&got[1]).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{label} [{i}]: subgroup {a}, workgroup {b}"
                );
            }
            let mut want = vec![0.0; rows * cols];
            cpu::softmax_split(&mut want, &x, &p, Math::Native);
            // The driver's exp against Rust's (a few ulps), through a sum of up to 530 terms.
            assert_close(&label, &got[0], &want, 1e-6, 1e-5);
            if gpu.takes_spirv() {
                let out = GpuTensor::zeros(gpu, "softmax", &[rows, cols]).unwrap();
                run(gpu, &ops::softmax_as(&strict, split, &out, &xt).unwrap());
                let mut want = vec![0.0; rows * cols];
                cpu::softmax_split(&mut want, &x, &p, Math::Strict);
                for (i, (g, w)) in out.read(gpu).unwrap().iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "strict {label} [{i}]: {g} vs twin {w}"
                    );
                }
            }
        }
    }
}

/// The loss's row losses: NaN where the twin has NaN (a label past the outputs), else close.
fn assert_row_loss(label: &str, got: &[f32], want: &[f32]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.is_nan(), w.is_nan(), "{label} [{i}]: {g} vs twin {w}");
    }
    let finite = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|x| if x.is_nan() { 0.0 } else { *x })
            .collect()
    };
    assert_close(label, &finite(got), &finite(want), 1e-5, 1e-5);
}

#[test]
fn softmax_cross_entropy_split_matches_cpu_in_both_forms() {
    let Some(gpu) = gpu("softmax_cross_entropy_split_matches_cpu_in_both_forms") else {
        return;
    };
    let (sg, wg) = (&with_subgroups(gpu, true), &with_subgroups(gpu, false));
    // Strict SPIR-V kernels (workgroup form only) equal the twin bit for bit.
    let strict = Kernels::new(gpu, Tuning::strict());
    let mut rng = TestRng::new(62);
    let split = ops::SumForm::Split;
    let kind = Loss::SoftmaxCrossEntropy;
    for batch_rows in [1usize, 7, 8, 9, 33, 300] {
        for cols in [1usize, 2, 10, 33, 100] {
            // Every row live, and a partial last batch (the padding gets zeros).
            for rows in [batch_rows, batch_rows.div_ceil(3)] {
                let x = rng.vec(batch_rows * cols, -30.0, 30.0);
                let mut labels: Vec<u32> =
                    (0..batch_rows).map(|_| rng.below(cols as u32)).collect();
                // A label past the outputs: a NaN loss for its row, no out-of-bounds read.
                labels[0] = cols as u32;
                let xt = up(gpu, "x", &[batch_rows, cols], &x);
                let lt = up_u32(gpu, "labels", &[batch_rows], &labels);
                let p = kind.params(rows, cols, batch_rows);
                let label = format!("softmax_cross_entropy_split {rows}/{batch_rows}x{cols}");
                let launch = |kn: &Kernels| {
                    let grad = up(
                        gpu,
                        "grad",
                        &[batch_rows, cols],
                        &vec![9.0; batch_rows * cols],
                    );
                    let loss = up(gpu, "row_loss", &[batch_rows], &vec![9.0; batch_rows]);
                    let d = ops::loss_as(kn, kind, split, &grad, &loss, &xt, &lt, rows).unwrap();
                    run(gpu, &d);
                    (grad.read(gpu).unwrap(), loss.read(gpu).unwrap())
                };
                let (sg_grad, sg_loss) = launch(sg);
                let (wg_grad, wg_loss) = launch(wg);
                // The subgroup form and the fallback: the same order, the same bits.
                for (i, (a, b)) in sg_grad
                    .iter()
                    .chain(&sg_loss)
                    .zip(wg_grad.iter().chain(&wg_loss))
                    .enumerate()
                {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{label} [{i}]: subgroup {a}, workgroup {b}"
                    );
                }
                let mut want_grad = vec![9.0; batch_rows * cols];
                let mut want_loss = vec![9.0; batch_rows];
                cpu::softmax_cross_entropy_split(
                    &mut want_grad,
                    &mut want_loss,
                    &x,
                    &labels,
                    &p,
                    Math::Native,
                );
                // The driver's exp and log against Rust's (a few ulps).
                assert_close(&format!("grad {label}"), &sg_grad, &want_grad, 1e-7, 1e-5);
                assert_row_loss(&format!("row_loss {label}"), &sg_loss, &want_loss);
                if gpu.takes_spirv() {
                    let (grad, loss) = launch(&strict);
                    cpu::softmax_cross_entropy_split(
                        &mut want_grad,
                        &mut want_loss,
                        &x,
                        &labels,
                        &p,
                        Math::Strict,
                    );
                    for (i, (g, w)) in grad
                        .iter()
                        .chain(&loss)
                        .zip(want_grad.iter().chain(&want_loss))
                        .enumerate()
                    {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "strict {label} [{i}]: {g} vs twin {w}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn softmax_matches_cpu() {
    let Some(gpu) = gpu("softmax_matches_cpu") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::default());
    let mut rng = TestRng::new(6);
    for &(rows, cols) in SHAPES {
        // Large logits: the max subtraction must keep exp finite.
        let x = rng.vec(rows * cols, -80.0, 80.0);
        let p = RowsParams {
            rows: rows as u32,
            cols: cols as u32,
            ..Default::default()
        };
        let mut want = vec![0.0; rows * cols];
        cpu::softmax(&mut want, &x, &p, Math::Native);
        let out = GpuTensor::zeros(gpu, "softmax", &[rows, cols]).unwrap();
        run(
            gpu,
            &ops::softmax(kn, &out, &up(gpu, "x", &[rows, cols], &x)).unwrap(),
        );
        // Probabilities in [0, 1] built from exp (few ulps) and a sum of up to 530 terms.
        assert_close(
            &format!("softmax {rows}x{cols}"),
            &out.read(gpu).unwrap(),
            &want,
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn losses_match_cpu() {
    let Some(gpu) = gpu("losses_match_cpu") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::default());
    let mut rng = TestRng::new(7);
    for &(batch_rows, cols) in SHAPES {
        // The live rows: all of them, and a partial last batch (padding must get zeros).
        for rows in [batch_rows, batch_rows.div_ceil(3)] {
            for kind in [
                Loss::Mse,
                Loss::SoftmaxCrossEntropy,
                Loss::BinaryCrossEntropy,
            ] {
                let pred = rng.vec(batch_rows * cols, -6.0, 6.0);
                let p = kind.params(rows, cols, batch_rows);
                let mut grad = vec![9.0; batch_rows * cols];
                let mut row_loss = vec![9.0; batch_rows];
                let grad_t = up(gpu, "grad", &[batch_rows, cols], &grad);
                let loss_t = up(gpu, "row_loss", &[batch_rows], &row_loss);
                let pred_t = up(gpu, "pred", &[batch_rows, cols], &pred);
                let d = match kind {
                    Loss::SoftmaxCrossEntropy => {
                        let labels: Vec<u32> =
                            (0..batch_rows).map(|_| rng.below(cols as u32)).collect();
                        cpu::softmax_cross_entropy(
                            &mut grad,
                            &mut row_loss,
                            &pred,
                            &labels,
                            &p,
                            Math::Native,
                        );
                        let lt = up_u32(gpu, "labels", &[batch_rows], &labels);
                        ops::softmax_cross_entropy(kn, &grad_t, &loss_t, &pred_t, &lt, rows)
                            .unwrap()
                    }
                    Loss::Mse => {
                        let target = rng.vec(batch_rows * cols, -6.0, 6.0);
                        cpu::mse_loss(&mut grad, &mut row_loss, &pred, &target, &p, Math::Native);
                        let tt = up(gpu, "target", &[batch_rows, cols], &target);
                        ops::mse_loss(kn, &grad_t, &loss_t, &pred_t, &tt, rows).unwrap()
                    }
                    Loss::BinaryCrossEntropy => {
                        let target: Vec<f32> = (0..batch_rows * cols)
                            .map(|_| rng.below(2) as f32)
                            .collect();
                        cpu::binary_cross_entropy(
                            &mut grad,
                            &mut row_loss,
                            &pred,
                            &target,
                            &p,
                            Math::Native,
                        );
                        let tt = up(gpu, "target", &[batch_rows, cols], &target);
                        ops::binary_cross_entropy(kn, &grad_t, &loss_t, &pred_t, &tt, rows).unwrap()
                    }
                };
                run(gpu, &d);
                let label = format!("{kind:?} {rows}/{batch_rows}x{cols}");
                // Gradients are products of exp-based probabilities and the 1/N scale: a few
                // ulps relative, tiny absolute. Row losses are sums of up to 530 log/exp terms of
                // size <= ~12: 1e-5 relative.
                assert_close(
                    &format!("grad {label}"),
                    &grad_t.read(gpu).unwrap(),
                    &grad,
                    1e-7,
                    1e-5,
                );
                assert_close(
                    &format!("row_loss {label}"),
                    &loss_t.read(gpu).unwrap(),
                    &row_loss,
                    1e-5,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn optimizers_match_cpu() {
    let Some(gpu) = gpu("optimizers_match_cpu") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::default());
    let mut rng = TestRng::new(8);
    for len in [1usize, 7, 64, 561, 1757, 70_000] {
        let param = rng.vec(len, -1.0, 1.0);
        let grad = rng.vec(len, -1.0, 1.0);
        let state = rng.vec(len, -0.1, 0.1);
        let state2 = rng.vec(len, 0.0, 0.01);

        for wd in [0.0, 0.01] {
            let p = OptimParams {
                len: len as u32,
                lr: 0.05,
                weight_decay: wd,
                momentum: 0.9,
                ..Default::default()
            };
            let mut want = param.clone();
            cpu::sgd_update(&mut want, &grad, &p);
            let pt = up(gpu, "param", &[len], &param);
            run(
                gpu,
                &ops::update(
                    kn,
                    UpdateRule::Sgd,
                    &pt,
                    &[],
                    &up(gpu, "grad", &[len], &grad),
                    p,
                )
                .unwrap(),
            );
            // A handful of f32 operations per element, the same on both sides; a fused
            // multiply-add on the GPU is the only possible difference (1 ulp).
            assert_close(
                &format!("sgd_update {len} wd={wd}"),
                &pt.read(gpu).unwrap(),
                &want,
                1e-7,
                1e-6,
            );

            let mut want = param.clone();
            let mut want_v = state.clone();
            cpu::momentum_update(&mut want, &mut want_v, &grad, &p);
            let pt = up(gpu, "param", &[len], &param);
            let vt = up(gpu, "velocity", &[len], &state);
            run(
                gpu,
                &ops::update(
                    kn,
                    UpdateRule::Momentum,
                    &pt,
                    &[&vt],
                    &up(gpu, "grad", &[len], &grad),
                    p,
                )
                .unwrap(),
            );
            assert_close(
                &format!("momentum param {len} wd={wd}"),
                &pt.read(gpu).unwrap(),
                &want,
                1e-7,
                1e-6,
            );
            assert_close(
                &format!("momentum velocity {len} wd={wd}"),
                &vt.read(gpu).unwrap(),
                &want_v,
                1e-7,
                1e-6,
            );

            for decoupled in [0u32, 1] {
                let t = 3i32;
                let p = OptimParams {
                    len: len as u32,
                    lr: 1e-3,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: wd,
                    bias_correction1: 1.0 - 0.9f32.powi(t),
                    bias_correction2: 1.0 - 0.999f32.powi(t),
                    decoupled,
                    ..Default::default()
                };
                let (mut want, mut want_m, mut want_v) =
                    (param.clone(), state.clone(), state2.clone());
                cpu::adam_update(&mut want, &mut want_m, &mut want_v, &grad, &p, Math::Native);
                let pt = up(gpu, "param", &[len], &param);
                let mt = up(gpu, "m", &[len], &state);
                let vt = up(gpu, "v", &[len], &state2);
                run(
                    gpu,
                    &ops::update(
                        kn,
                        if decoupled == 1 {
                            UpdateRule::AdamW
                        } else {
                            UpdateRule::Adam
                        },
                        &pt,
                        &[&mt, &vt],
                        &up(gpu, "grad", &[len], &grad),
                        p,
                    )
                    .unwrap(),
                );
                let label = format!("adam {len} wd={wd} decoupled={decoupled}");
                // sqrt and division are correctly rounded in Vulkan's SPIR-V only to a few ulps;
                // the step is ~lr, so 1e-7 absolute on parameters of size ~1.
                assert_close(
                    &format!("{label} param"),
                    &pt.read(gpu).unwrap(),
                    &want,
                    1e-7,
                    1e-6,
                );
                assert_close(
                    &format!("{label} m"),
                    &mt.read(gpu).unwrap(),
                    &want_m,
                    1e-8,
                    1e-6,
                );
                assert_close(
                    &format!("{label} v"),
                    &vt.read(gpu).unwrap(),
                    &want_v,
                    1e-9,
                    1e-6,
                );
            }

            // RMSprop: plain, with momentum, centered, both.
            for (momentum, centered) in [(0.0, 0u32), (0.9, 0), (0.0, 1), (0.9, 1)] {
                let p = OptimParams {
                    len: len as u32,
                    lr: 1e-3,
                    eps: 1e-8,
                    weight_decay: wd,
                    momentum,
                    alpha: 0.99,
                    one_minus_alpha: 0.01,
                    centered,
                    ..Default::default()
                };
                // square_avg must stay above grad_avg^2 for the centered form: state2 is
                // in [0, 0.01), state in [-0.1, 0.1); square it to be safe.
                let square: Vec<f32> = state.iter().zip(&state2).map(|(a, b)| a * a + b).collect();
                let (mut want, mut want_s, mut want_b, mut want_a) =
                    (param.clone(), square.clone(), state2.clone(), state.clone());
                cpu::rmsprop_update(
                    &mut want,
                    &mut want_s,
                    &mut want_b,
                    &mut want_a,
                    &grad,
                    &p,
                    Math::Native,
                );
                let pt = up(gpu, "param", &[len], &param);
                let st = up(gpu, "square_avg", &[len], &square);
                let bt = up(gpu, "momentum_buffer", &[len], &state2);
                let at = up(gpu, "grad_avg", &[len], &state);
                run(
                    gpu,
                    &ops::update(
                        kn,
                        UpdateRule::RmsProp,
                        &pt,
                        &[&st, &bt, &at],
                        &up(gpu, "grad", &[len], &grad),
                        p,
                    )
                    .unwrap(),
                );
                let label =
                    format!("rmsprop {len} wd={wd} momentum={momentum} centered={centered}");
                // sqrt and a division per element, a few ulps each on Vulkan; steps of ~lr.
                for (name, got, want) in [
                    ("param", &pt, &want),
                    ("square_avg", &st, &want_s),
                    ("momentum_buffer", &bt, &want_b),
                    ("grad_avg", &at, &want_a),
                ] {
                    assert_close(
                        &format!("{label} {name}"),
                        &got.read(gpu).unwrap(),
                        want,
                        1e-7,
                        1e-5,
                    );
                }
            }
        }
    }
}

#[test]
fn gathers_match_cpu() {
    let Some(gpu) = gpu("gathers_match_cpu") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::default());
    let mut rng = TestRng::new(9);
    for &(n, cols) in SHAPES {
        let data = rng.vec(n * cols, -1.0, 1.0);
        let labels: Vec<u32> = (0..n).map(|_| rng.below(10)).collect();
        // A permutation of 0..n.
        let mut perm: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            perm.swap(i, rng.below(i as u32 + 1) as usize);
        }
        let batch_rows = n.div_ceil(2).max(1);
        let start = n / 2;
        let rows = (n - start).min(batch_rows);
        let p = GatherParams {
            rows: rows as u32,
            cols: cols as u32,
            start: start as u32,
            batch_rows: batch_rows as u32,
            ..Default::default()
        };
        let mut want = vec![7.0; batch_rows * cols];
        cpu::gather_rows(&mut want, &data, &perm, &p);
        let mut want_l = vec![7u32; batch_rows];
        cpu::gather_labels(&mut want_l, &labels, &perm, &p);

        let it = up_u32(gpu, "perm", &[n], &perm);
        let out = up(
            gpu,
            "batch",
            &[batch_rows, cols],
            &vec![7.0; batch_rows * cols],
        );
        run(
            gpu,
            &ops::gather_rows(
                kn,
                &out,
                &up(gpu, "data", &[n, cols], &data),
                &it,
                start,
                rows,
            )
            .unwrap(),
        );
        // A copy: exact.
        assert_close(
            &format!("gather_rows {n}x{cols}"),
            &out.read(gpu).unwrap(),
            &want,
            0.0,
            0.0,
        );
        let out_l = up_u32(gpu, "batch labels", &[batch_rows], &vec![7; batch_rows]);
        run(
            gpu,
            &ops::gather_labels(
                kn,
                &out_l,
                &up_u32(gpu, "labels", &[n], &labels),
                &it,
                start,
                rows,
            )
            .unwrap(),
        );
        assert_eq!(out_l.read_u32(gpu).unwrap(), want_l, "gather_labels {n}");

        // The byte table: values b/255, packed four to a word (n*cols need not divide by 4).
        let bytes: Vec<u8> = (0..n * cols).map(|_| rng.below(256) as u8).collect();
        let packed = cpu::pack_u8(&bytes);
        let p = GatherParams {
            divisor: 255.0,
            ..p
        };
        let mut want = vec![7.0; batch_rows * cols];
        cpu::gather_rows_u8(&mut want, &packed, &perm, &p, Math::Native);
        for (r, row) in want.chunks(cols).enumerate().take(rows) {
            let src = perm[start + r] as usize * cols;
            for (c, v) in row.iter().enumerate() {
                assert_eq!(
                    *v,
                    bytes[src + c] as f32 / 255.0,
                    "cpu::gather_rows_u8 unpacks row {r}"
                );
            }
        }
        let out = up(
            gpu,
            "batch",
            &[batch_rows, cols],
            &vec![7.0; batch_rows * cols],
        );
        let table = up_u32(gpu, "pixels", &[packed.len()], &packed);
        run(
            gpu,
            &ops::gather_rows_u8(kn, &out, &table, &it, start, rows, 255.0).unwrap(),
        );
        // One exactly rounded division by 255 on both sides (lavapipe's division is IEEE);
        // other drivers may round the division to within 2.5 ulp, hence 1 ulp of 1.0 absolute.
        assert_close(
            &format!("gather_rows_u8 {n}x{cols}"),
            &out.read(gpu).unwrap(),
            &want,
            1.2e-7,
            0.0,
        );
    }
}

#[test]
fn perceptron_epoch_matches_cpu_exactly() {
    let Some(gpu) = gpu("perceptron_epoch_matches_cpu_exactly") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::default());
    let mut rng = TestRng::new(10);
    for &(rows, cols) in SHAPES {
        let x = rng.vec(rows * cols, -1.0, 1.0);
        let targets: Vec<f32> = (0..rows)
            .map(|_| if rng.below(2) == 0 { -1.0 } else { 1.0 })
            .collect();
        let w0 = rng.vec(cols + 1, -0.5, 0.5);
        let p = PerceptronParams {
            rows: rows as u32,
            cols: cols as u32,
            lr: 0.1,
            ..Default::default()
        };
        let mut want = w0.clone();
        let mut want_err = vec![0u32];
        let wt = up(gpu, "weights", &[cols + 1], &w0);
        let et = GpuTensor::zeros_u32(gpu, "errors", &[1]).unwrap();
        let d = ops::perceptron_epoch(
            kn,
            &wt,
            &et,
            &up(gpu, "x", &[rows, cols], &x),
            &up(gpu, "targets", &[rows], &targets),
            0.1,
        )
        .unwrap();
        for epoch in 0..3 {
            cpu::perceptron_epoch(&mut want, &mut want_err, &x, &targets, &p);
            run(gpu, &d);
            // Sequential multiply-adds in the same order; a fused multiply-add on the GPU
            // could move the last bit, which here would flip no decision: 1e-6 abs.
            assert_close(
                &format!("perceptron {rows}x{cols} epoch {epoch}"),
                &wt.read(gpu).unwrap(),
                &want,
                1e-6,
                1e-6,
            );
            assert_eq!(
                et.read_u32(gpu).unwrap(),
                want_err,
                "perceptron errors {rows}x{cols} epoch {epoch}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The fully fused MLP pass

use soma::ops::fused_mlp::{MlpLayer, MlpShape, TILE_ROWS};

/// The fused pass's forms: (rows per workgroup, rows per invocation, staged weights,
/// gathers its batch itself).
const FUSED_FORMS: [(u32, u8, bool, bool); 7] = [
    (32, 1, false, false),
    (32, 1, true, false),
    (32, 1, true, true),
    (32, 4, false, true),
    (64, 8, false, false),
    (64, 8, false, true),
    (64, 2, true, false),
];

/// The forms tried for the 128-wide case (`fused_cases()[WIDEST_CASE]`): the unstaged
/// 32-row tiles of 1 or 2 rows per invocation fit 32 KiB of workgroup memory; the staged
/// one needs 96 KiB and the 64-row one 64 KiB (declined where the device has less), and 4
/// rows per invocation are not built for layers over 64 wide (declined everywhere).
const WIDEST_FORMS: [(u32, u8, bool, bool); 5] = [
    (32, 1, false, true),
    (32, 2, false, false),
    (32, 4, false, false),
    (32, 1, true, false),
    (64, 2, false, false),
];
const WIDEST_CASE: usize = 5;

/// The loss's parameters as the fused pass takes them.
fn fused_params(
    loss: Loss,
    live: usize,
    outputs: usize,
    rows: usize,
    start: usize,
) -> FusedMlpParams {
    let lp = loss.params(live, outputs, rows);
    FusedMlpParams {
        rows: lp.rows,
        cols: lp.cols,
        batch_rows: lp.batch_rows,
        scale: lp.scale,
        start: start as u32,
        ..Default::default()
    }
}

/// A network for the fused pass: layer widths, activations and bias flags, laid out in an
/// arena as the executor lays out its parameters (`plan::Update::arena_layout` gives the
/// offsets).
#[derive(Clone)]
struct FusedCase {
    widths: Vec<usize>,
    acts: Vec<Activation>,
    bias: Vec<bool>,
    rows: usize,
    live: usize,
    /// MSE (targets in [-1, 1)), binary cross-entropy on the logits (targets in [0, 1)) or
    /// softmax cross-entropy on the logits (class labels).
    loss: Loss,
}

/// The arena offsets (in floats) of each layer's weight and bias, and the arena's length,
/// for an alignment of `align` bytes (the rule of `plan::Update::arena_layout`).
fn arena_layout(c: &FusedCase, align: usize) -> (Vec<MlpLayer>, usize) {
    let slot = |floats: usize| (floats * 4).max(16).next_multiple_of(align) / 4;
    let mut at = 0;
    let mut layers = vec![];
    for l in 0..c.acts.len() {
        let (i, o) = (c.widths[l], c.widths[l + 1]);
        let weight_at = at;
        at += slot(i * o);
        let bias_at = c.bias[l].then(|| {
            let b = at;
            at += slot(o);
            b
        });
        layers.push(MlpLayer {
            inputs: i,
            outputs: o,
            kind: c.acts[l].code(),
            slope: c.acts[l].slope(),
            weight_at,
            bias_at,
        });
    }
    (layers, at)
}

/// The targets of a batch: values (rows x outputs) or class labels (rows).
#[derive(Clone)]
enum Targets {
    Values(Vec<f32>),
    Labels(Vec<u32>),
}

impl Targets {
    /// Random targets for `rows` rows of `outputs` outputs, of the kind `loss` takes.
    fn random(rng: &mut TestRng, loss: Loss, rows: usize, outputs: usize) -> Targets {
        match loss {
            Loss::Mse => Targets::Values(rng.vec(rows * outputs, -1.0, 1.0)),
            Loss::BinaryCrossEntropy => Targets::Values(rng.vec(rows * outputs, 0.0, 1.0)),
            Loss::SoftmaxCrossEntropy => {
                Targets::Labels((0..rows).map(|_| rng.below(outputs as u32)).collect())
            }
        }
    }

    fn twin(&self) -> cpu::MlpTargets<'_> {
        match self {
            Targets::Values(v) => cpu::MlpTargets::Values(v),
            Targets::Labels(l) => cpu::MlpTargets::Labels(l),
        }
    }

    fn upload(&self, gpu: &Gpu, rows: usize) -> GpuTensor {
        match self {
            Targets::Values(v) => up(gpu, "target", &[rows, v.len() / rows], v),
            Targets::Labels(l) => up_u32(gpu, "labels", &[rows], l),
        }
    }
}

/// Random parameters in an arena of `len` floats (padding left zero), input and target.
fn fused_data(
    rng: &mut TestRng,
    layers: &[MlpLayer],
    len: usize,
    rows: usize,
    loss: Loss,
) -> (Vec<f32>, Vec<f32>, Targets) {
    let mut w = vec![0.0f32; len];
    for l in layers {
        let scale = 1.0 / (l.inputs as f32).sqrt();
        for v in &mut w[l.weight_at..l.weight_at + l.inputs * l.outputs] {
            *v = rng.uniform(-scale, scale);
        }
        if let Some(b) = l.bias_at {
            for v in &mut w[b..b + l.outputs] {
                *v = rng.uniform(-scale, scale);
            }
        }
    }
    let (i, o) = (layers[0].inputs, layers.last().unwrap().outputs);
    let x = rng.vec(rows * i, -1.0, 1.0);
    (w, x, Targets::random(rng, loss, rows, o))
}

/// The op-by-op CPU twins over one batch: (gradient arena, prediction, row losses).
#[allow(clippy::too_many_arguments)]
fn op_by_op(
    layers: &[MlpLayer],
    len: usize,
    w: &[f32],
    x: &[f32],
    target: &Targets,
    rows: usize,
    live: usize,
    loss: Loss,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut acts = vec![x.to_vec()];
    let mut pres = vec![];
    for l in layers {
        let (i, o) = (l.inputs, l.outputs);
        let mut pre = vec![0.0; rows * o];
        let mp = MatmulParams {
            m: rows as u32,
            n: o as u32,
            k: i as u32,
            accumulate: 0,
        };
        cpu::matmul_nt(&mut pre, acts.last().unwrap(), &w[l.weight_at..], &mp);
        let mut out = vec![0.0; rows * o];
        let ap = ActivationParams {
            rows: rows as u32,
            cols: o as u32,
            kind: l.kind,
            has_bias: l.bias_at.is_some() as u32,
            slope: l.slope,
            ..Default::default()
        };
        let bias = l.bias_at.map_or(&[][..], |b| &w[b..b + o]);
        cpu::bias_activation_forward(&mut out, &mut pre, bias, &ap, Math::Native);
        pres.push(pre);
        acts.push(out);
    }
    let o = layers.last().unwrap().outputs;
    let (mut delta, mut row_loss) = (vec![0.0; rows * o], vec![0.0; rows]);
    let lp = loss.params(live, o, rows);
    let y = acts.last().unwrap();
    match (loss, target) {
        (Loss::BinaryCrossEntropy, Targets::Values(t)) => {
            cpu::binary_cross_entropy(&mut delta, &mut row_loss, y, t, &lp, Math::Native)
        }
        (Loss::Mse, Targets::Values(t)) => {
            cpu::mse_loss(&mut delta, &mut row_loss, y, t, &lp, Math::Native)
        }
        (Loss::SoftmaxCrossEntropy, Targets::Labels(l)) => {
            cpu::softmax_cross_entropy(&mut delta, &mut row_loss, y, l, &lp, Math::Native)
        }
        (loss, _) => panic!("targets of the wrong kind for {loss}"),
    }
    let mut grads = vec![0.0; len];
    for (li, l) in layers.iter().enumerate().rev() {
        let (i, o) = (l.inputs, l.outputs);
        if l.kind != 0 {
            let mut dpre = vec![0.0; rows * o];
            let ap = ActivationParams {
                rows: rows as u32,
                cols: o as u32,
                kind: l.kind,
                slope: l.slope,
                ..Default::default()
            };
            cpu::activation_backward(&mut dpre, &delta, &pres[li], &ap, Math::Native);
            delta = dpre;
        }
        let mp = MatmulParams {
            m: o as u32,
            n: i as u32,
            k: rows as u32,
            accumulate: 0,
        };
        cpu::matmul_tn(&mut grads[l.weight_at..], &delta, &acts[li], &mp);
        if let Some(b) = l.bias_at {
            let rp = RowsParams {
                rows: rows as u32,
                cols: o as u32,
                ..Default::default()
            };
            cpu::column_sum(&mut grads[b..b + o], &delta, &rp);
        }
        if li > 0 {
            let mut dx = vec![0.0; rows * i];
            let mp = MatmulParams {
                m: rows as u32,
                n: i as u32,
                k: o as u32,
                accumulate: 0,
            };
            cpu::matmul_nn(&mut dx, &delta, &w[l.weight_at..l.weight_at + o * i], &mp);
            delta = dx;
        }
    }
    (grads, acts.pop().unwrap(), row_loss)
}

/// The fused pass's twin followed by the column sum over tiles: (gradient arena,
/// prediction, row losses).
fn fused_twin(
    shape: &MlpShape,
    w: &[f32],
    x: &[f32],
    target: &Targets,
    rows: usize,
    live: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let len = shape.arena_len as usize;
    let tiles = shape.tiles(rows);
    let o = shape.outputs();
    let mut partial = vec![0.0; tiles * len];
    let (mut pred, mut row_loss) = (vec![0.0; rows * o], vec![0.0; rows]);
    let fp = fused_params(shape.loss, live, o, rows, 0);
    cpu::fused_mlp(
        &mut partial,
        &mut pred,
        &mut row_loss,
        x,
        target.twin(),
        w,
        shape,
        &fp,
    );
    let mut grads = vec![0.0; len];
    let rp = RowsParams {
        rows: tiles as u32,
        cols: len as u32,
        ..Default::default()
    };
    cpu::column_sum(&mut grads, &partial, &rp);
    (grads, pred, row_loss)
}

fn fused_cases() -> Vec<FusedCase> {
    use Activation::*;
    vec![
        // B3's network, a batch that is not a whole number of tiles, a partial batch.
        FusedCase {
            widths: vec![2, 64, 64, 1],
            acts: vec![Relu, Relu, Identity],
            bias: vec![true, true, true],
            rows: 100,
            live: 90,
            loss: Loss::Mse,
        },
        // One tile: the fused sums are the op-by-op ones.
        FusedCase {
            widths: vec![3, 5, 4],
            acts: vec![Tanh, Sigmoid],
            bias: vec![false, true],
            rows: 32,
            live: 32,
            loss: Loss::Mse,
        },
        // Narrow inputs into layers of 4k outputs (the vec4 forward form), ReLU only.
        FusedCase {
            widths: vec![2, 8, 4],
            acts: vec![Relu, Identity],
            bias: vec![true, true],
            rows: 40,
            live: 40,
            loss: Loss::Mse,
        },
        FusedCase {
            widths: vec![16, 8, 32, 4],
            acts: vec![Relu, Relu, Identity],
            bias: vec![true, false, true],
            rows: 40,
            live: 40,
            loss: Loss::Mse,
        },
        FusedCase {
            widths: vec![7, 9, 6, 2],
            acts: vec![LeakyRelu { slope: 0.1 }, Tanh, Identity],
            bias: vec![true, false, true],
            rows: 65,
            live: 65,
            loss: Loss::Mse,
        },
        // The widest layers (128), a partial batch over two tiles of 32.
        FusedCase {
            widths: vec![8, 128, 128, 4],
            acts: vec![Relu, Tanh, Identity],
            bias: vec![true, true, true],
            rows: 40,
            live: 37,
            loss: Loss::Mse,
        },
        // Binary cross-entropy, a partial batch over two tiles of 32, GELU hidden.
        FusedCase {
            widths: vec![5, 16, 3],
            acts: vec![Gelu, Identity],
            bias: vec![true, true],
            rows: 70,
            live: 66,
            loss: Loss::BinaryCrossEntropy,
        },
        // Softmax cross-entropy, the lecture's classifier in small (sigmoid hidden): one
        // tile, then a partial batch over two tiles of 32.
        FusedCase {
            widths: vec![12, 16, 10],
            acts: vec![Sigmoid, Identity],
            bias: vec![true, true],
            rows: 32,
            live: 32,
            loss: Loss::SoftmaxCrossEntropy,
        },
        FusedCase {
            widths: vec![6, 20, 9, 5],
            acts: vec![Sigmoid, Tanh, Identity],
            bias: vec![true, false, true],
            rows: 70,
            live: 61,
            loss: Loss::SoftmaxCrossEntropy,
        },
    ]
}

/// The fused pass's twin against the op-by-op twins: bitwise where the batch is one tile
/// (the same sums in the same order), within rounding elsewhere (the weight gradients are
/// summed per tile, then over tiles).
#[test]
fn fused_mlp_twin_matches_the_op_by_op_twins() {
    let mut rng = TestRng::new(31);
    for (c, tile) in fused_cases()
        .into_iter()
        .flat_map(|c| TILE_ROWS.map(|t| (c.clone(), t)))
    {
        let (layers, len) = arena_layout(&c, 256);
        let shape = MlpShape::new(&layers, len)
            .unwrap()
            .with_tile_rows(tile)
            .with_loss(c.loss);
        let (w, x, target) = fused_data(&mut rng, &layers, len, c.rows, c.loss);
        let want = op_by_op(&layers, len, &w, &x, &target, c.rows, c.live, c.loss);
        let got = fused_twin(&shape, &w, &x, &target, c.rows, c.live);
        let label = format!("{:?} {:?} tiles of {tile}", c.widths, c.acts);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        // Forward and loss are row by row: the same bits at any batch.
        assert_eq!(bits(&got.1), bits(&want.1), "{label}: prediction");
        assert_eq!(bits(&got.2), bits(&want.2), "{label}: row losses");
        if c.rows <= tile as usize {
            assert_eq!(bits(&got.0), bits(&want.0), "{label}: gradients");
        } else {
            assert_close(&format!("{label}: gradients"), &got.0, &want.0, 1e-6, 1e-4);
        }
    }
}

#[test]
fn fused_mlp_matches_its_twin() {
    let Some(gpu) = gpu("fused_mlp_matches_its_twin") else {
        return;
    };
    let kn = &with_variant(gpu, MatmulVariant::default());
    let mut rng = TestRng::new(32);
    let align = (gpu.limits().min_storage_buffer_offset_alignment as usize).max(16);
    let (mut ran, mut declined) = (0, 0);
    // Through the GL backend llvmpipe compiles the fused pass on its first dispatch, and its
    // time grows far faster than the unrolled source: cold, on 2 cores, in a one-row form,
    // about 5 s for 3-5-4, 16 s for 7-9-6-2, a minute for 5-16-3 and more than 5 for B3's
    // 2-64-64-1. The tuner never tries the pass there; the one-row forms of the networks no
    // wider than 9 stand in for the rest.
    let gl = gpu.adapter().backend == wgpu::Backend::Gl;
    if gl {
        println!("fused_mlp: GL backend, one-row forms of networks at most 9 wide only");
    }
    let narrow = |c: &FusedCase| c.widths.iter().all(|&w| w <= 9);
    // Every form for B3's network; the two the executor tries first for the others (each
    // form compiles for a second or more on llvmpipe).
    let forms = |i: usize| {
        let mut f = if i == 0 {
            FUSED_FORMS.to_vec()
        } else if i == WIDEST_CASE {
            WIDEST_FORMS.to_vec()
        } else {
            vec![(32, 1, true, true), (64, 8, false, false)]
        };
        f.retain(|form| !gl || form.1 == 1);
        f
    };
    for (c, (tile, rows, staged, gather)) in fused_cases()
        .into_iter()
        .enumerate()
        .filter(|(_, c)| !gl || narrow(c))
        .flat_map(|(i, c)| forms(i).into_iter().map(move |f| (c.clone(), f)))
    {
        let (layers, len) = arena_layout(&c, align);
        let shape = MlpShape::new(&layers, len)
            .unwrap()
            .with_tile_rows(tile)
            .with_rows_per_invocation(rows)
            .with_staged(staged)
            .with_gather(gather)
            .with_loss(c.loss);
        let (w, x, target) = fused_data(&mut rng, &layers, len, c.rows, c.loss);
        let (i, o) = (c.widths[0], *c.widths.last().unwrap());
        let tiles = shape.tiles(c.rows);
        let partial = GpuTensor::zeros(gpu, "partial", &[tiles, len]).unwrap();
        let pred = GpuTensor::zeros(gpu, "pred", &[c.rows, o]).unwrap();
        let row_loss = GpuTensor::zeros(gpu, "row_loss", &[c.rows]).unwrap();
        let wt = up(gpu, "w", &[len], &w);
        // The gathering forms read rows indices[start + r] of tables larger than the batch
        // (class labels, from the gathered batch); their twin gets the batch that
        // gather_rows makes of them.
        let (x, target, xt, tt, it, fp) = if gather {
            let data_rows = c.rows + 9;
            let x_data = rng.vec(data_rows * i, -1.0, 1.0);
            let t_data = Targets::random(&mut rng, c.loss, data_rows, o);
            let start = 5;
            let indices: Vec<u32> = (0..start + c.rows)
                .map(|_| rng.below(data_rows as u32))
                .collect();
            let gp = |cols: usize| GatherParams {
                rows: c.live as u32,
                cols: cols as u32,
                start: start as u32,
                batch_rows: c.rows as u32,
                ..Default::default()
            };
            let mut xb = vec![0.0; c.rows * i];
            cpu::gather_rows(&mut xb, &x_data, &indices, &gp(i));
            let (target, tt) = match &t_data {
                Targets::Values(t_data) => {
                    let mut tb = vec![0.0; c.rows * o];
                    cpu::gather_rows(&mut tb, t_data, &indices, &gp(o));
                    (
                        Targets::Values(tb),
                        up(gpu, "target table", &[data_rows, o], t_data),
                    )
                }
                Targets::Labels(_) => (target.clone(), target.upload(gpu, c.rows)),
            };
            (
                xb,
                target,
                up(gpu, "x table", &[data_rows, i], &x_data),
                tt,
                Some(up_u32(gpu, "row order", &[indices.len()], &indices)),
                fused_params(c.loss, c.live, o, c.rows, start),
            )
        } else {
            let (xt, tt) = (up(gpu, "x", &[c.rows, i], &x), target.upload(gpu, c.rows));
            (
                x,
                target,
                xt,
                tt,
                None,
                fused_params(c.loss, c.live, o, c.rows, 0),
            )
        };
        let d = ops::fused_mlp(
            kn,
            &partial,
            &pred,
            &row_loss,
            &xt,
            &tt,
            &wt,
            it.as_ref(),
            shape,
            fp,
        )
        .unwrap();
        let Some(d) = d else {
            // Declined: only for want of workgroup memory (64-row tiles with staged weights
            // need 48 KiB for 64-wide layers), or for more rows per invocation than layers
            // over 64 wide are built with.
            let limit = gpu.limits().max_compute_workgroup_storage_size as u64;
            assert!(
                shape.workgroup_bytes() > limit
                    || shape.rows_per_invocation > shape.most_rows_per_invocation(),
                "{} declined with {} of {limit} bytes",
                shape.entry_point(),
                shape.workgroup_bytes()
            );
            assert!(soma::ops::fused_mlp::fused_mlp_misfit(kn, shape).is_some());
            declined += 1;
            continue;
        };
        ran += 1;
        run(gpu, &d);
        let mut want_partial = vec![0.0; tiles * len];
        let (mut want_pred, mut want_loss) = (vec![0.0; c.rows * o], vec![0.0; c.rows]);
        cpu::fused_mlp(
            &mut want_partial,
            &mut want_pred,
            &mut want_loss,
            &x,
            target.twin(),
            &w,
            &shape,
            &fp,
        );
        let got = (
            partial.read(gpu).unwrap(),
            pred.read(gpu).unwrap(),
            row_loss.read(gpu).unwrap(),
        );
        let label = format!("{} {:?} {:?}", shape.entry_point(), c.widths, c.acts);
        assert_close(
            &format!("{label} partials"),
            &got.0,
            &want_partial,
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("{label} prediction"),
            &got.1,
            &want_pred,
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("{label} row losses"),
            &got.2,
            &want_loss,
            1e-5,
            1e-4,
        );
    }
    // Each decline above was for want of workgroup memory or for rows per invocation;
    // lavapipe (32 KiB) declines the staged 64-row form for the 64-wide network (48 KiB), and
    // the 4-row, staged and 64-row forms for the 128-wide one.
    assert!(ran > 0, "no form ran");
    // (Through GL the 128-wide network is not among the narrow ones that run.)
    assert!(
        gl || declined > 0,
        "the 4-row form of 128-wide layers is declined everywhere"
    );
    println!("fused_mlp: {ran} runs, {declined} declined");
}
