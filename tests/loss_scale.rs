//! The loss-scaling kernels (`ops::scale`) against their twins: scaling and unscaling bit
//! for bit at odd sizes, overflow found by bit patterns wherever it is (and nothing else
//! found), and the scale's state machine through a forced overflow, growth, and its bounds.

mod common;

use common::{kernels, TestRng};
use soma::cpu;
use soma::kernels::run;
use soma::ops::scale::{self, LossScale};
use soma::ops::uniforms::ScaleParams;
use soma::GpuTensor;

fn state_tensor(gpu: &soma::Gpu, s: LossScale) -> GpuTensor {
    GpuTensor::upload_u32(gpu, "loss scale", &[4], &s.words()).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `scale_values` and `unscale_values` against their twins at odd sizes: bit for bit (one
/// multiplication each, by a power of two or its exact reciprocal), and unscaling leaves
/// the values alone after an overflow.
#[test]
fn scaling_and_unscaling_match_their_twins_bit_for_bit() {
    let Some(k) = kernels("scaling_and_unscaling_match_their_twins_bit_for_bit") else {
        return;
    };
    let g = k.gpu();
    let mut rng = TestRng::new(5);
    for len in [1, 7, 257, 1757] {
        for (scale, overflow) in [(65536.0, false), (0.125, false), (1024.0, true)] {
            let state = LossScale {
                overflow,
                ..LossScale::new(scale)
            };
            let words = state.words();
            let x0 = rng.vec(len, -3.0, 3.0);
            let st = state_tensor(g, state);

            let x = GpuTensor::upload(g, "x", &[len], &x0).unwrap();
            run(g, &[&scale::scale_values(k, &x, &st).unwrap()]).unwrap();
            let mut want = x0.clone();
            cpu::scale_values(&mut want, &words);
            assert_eq!(bits(&x.read(g).unwrap()), bits(&want), "scale_values {len}");

            let x = GpuTensor::upload(g, "x", &[len], &x0).unwrap();
            run(g, &[&scale::unscale_values(k, &x, &st).unwrap()]).unwrap();
            let mut want = x0.clone();
            cpu::unscale_values(&mut want, &words);
            assert_eq!(
                bits(&x.read(g).unwrap()),
                bits(&want),
                "unscale_values {len}"
            );
            if overflow {
                assert_eq!(bits(&want), bits(&x0), "an overflowed step is not unscaled");
            } else {
                assert_ne!(bits(&want), bits(&x0));
            }
        }
    }
}

/// `grad_overflow` sets the flag for +inf, -inf and every NaN pattern wherever it lies, and
/// for nothing finite: not f32::MAX, subnormals, or -0. (Found by bits: a float comparison
/// could be folded away by a compiler that assumes no inf or NaN.)
#[test]
fn grad_overflow_finds_inf_and_nan_by_their_bits() {
    let Some(k) = kernels("grad_overflow_finds_inf_and_nan_by_their_bits") else {
        return;
    };
    let g = k.gpu();
    let len = 1757;
    let mut rng = TestRng::new(9);
    let finite = {
        let mut v = rng.vec(len, -1e3, 1e3);
        v[3] = f32::MAX;
        v[4] = -f32::MAX;
        v[5] = f32::from_bits(1);
        v[6] = -0.0;
        v[7] = f32::MIN_POSITIVE;
        v
    };
    let bad = [
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0x7f80_0001), // a signalling NaN pattern
        f32::from_bits(0xffc0_0000), // a negative quiet NaN
    ];
    let mut cases: Vec<(String, Vec<f32>)> = vec![("all finite".into(), finite.clone())];
    for (b, at) in bad.iter().zip([0, len - 1, 901, 256, 255]) {
        let mut v = finite.clone();
        v[at] = *b;
        cases.push((format!("{:#x} at {at}", b.to_bits()), v));
    }
    for (label, v) in cases {
        let st = state_tensor(g, LossScale::new(1024.0));
        let x = GpuTensor::upload(g, "grads", &[len], &v).unwrap();
        run(g, &[&scale::grad_overflow(k, &st, &x).unwrap()]).unwrap();
        let mut want = LossScale::new(1024.0).words();
        cpu::grad_overflow(&mut want, &v);
        let got = st.read_u32(g).unwrap();
        assert_eq!(got, want, "{label}");
        assert_eq!(got[3] == 1, label != "all finite", "{label}");
    }
}

/// The scale's state machine, kernel against twin step by step: a forced overflow halves
/// the scale and counts a skipped step; `growth_interval` clean steps double it; the scale
/// stays finite at the top and normal at the bottom.
#[test]
fn the_loss_scale_halves_on_overflow_and_grows_after_clean_steps() {
    let Some(k) = kernels("the_loss_scale_halves_on_overflow_and_grows_after_clean_steps") else {
        return;
    };
    let g = k.gpu();
    let interval = 3;
    let p = ScaleParams {
        growth_interval: interval,
        ..Default::default()
    };
    let update = |st: &GpuTensor| run(g, &[&scale::loss_scale_update(k, st, interval).unwrap()]);
    // Overflow on steps 1 and 6; clean otherwise.
    let overflows = [true, false, false, false, false, true, false, false, false];
    let st = state_tensor(g, LossScale::new(65536.0));
    let grads_ok = GpuTensor::upload(g, "grads", &[5], &[1.0, -2.0, 0.5, 3.0, 0.0]).unwrap();
    let grads_bad =
        GpuTensor::upload(g, "grads", &[5], &[1.0, f32::INFINITY, 0.5, 3.0, 0.0]).unwrap();
    let mut twin = LossScale::new(65536.0).words();
    let mut scales = Vec::new();
    for (step, &overflow) in overflows.iter().enumerate() {
        let grads = if overflow { &grads_bad } else { &grads_ok };
        run(g, &[&scale::grad_overflow(k, &st, grads).unwrap()]).unwrap();
        update(&st).unwrap();
        let host: Vec<f32> = grads.read(g).unwrap();
        cpu::grad_overflow(&mut twin, &host);
        cpu::loss_scale_update(&mut twin, &p);
        let got = st.read_u32(g).unwrap();
        assert_eq!(got, twin, "step {step}");
        scales.push(LossScale::from_words(&got).unwrap());
    }
    let s: Vec<f32> = scales.iter().map(|s| s.scale).collect();
    assert_eq!(
        s,
        [32768.0, 32768.0, 32768.0, 65536.0, 65536.0, 32768.0, 32768.0, 32768.0, 65536.0],
        "scale after each step"
    );
    assert_eq!(scales.last().unwrap().skipped, 2);
    assert!(
        scales.iter().all(|s| !s.overflow),
        "the flag is cleared every step"
    );

    // At the top a doubling would be inf: the scale stays. At the bottom a halving would be
    // subnormal: it stays.
    for (start, overflow) in [(2f32.powi(127), false), (f32::MIN_POSITIVE, true)] {
        let st = state_tensor(
            g,
            LossScale {
                clean: interval - 1,
                overflow,
                ..LossScale::new(start)
            },
        );
        update(&st).unwrap();
        let got = LossScale::from_words(&st.read_u32(g).unwrap()).unwrap();
        assert_eq!(got.scale, start, "{start:e}");
    }
}
