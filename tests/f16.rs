//! The f16 kernels (`shaders/matmul_f16.wgsl`) against their CPU twins, and F16 tensors'
//! storage: the three f16-operand products bit for bit against their twins and within a
//! derived bound of the f32 product of the unrounded operands, at odd shapes, overwriting and
//! accumulating, with the default and the strict kernels; `cast_f16` bit for bit, overflow,
//! subnormals and ties included; upload, write, copy and readback of odd-length f16 tensors
//! (their padding); the recorders' shape and type checks; and the error that names
//! `Features::SHADER_F16` on a device without it. GPU tests print SKIPPED without an adapter
//! and fail when SOMA_REQUIRE_GPU=1.

mod common;

use common::{gpu, TestRng};
use soma::kernels;
use soma::ops::matmul::{cast_f16, matmul_nn_f16, matmul_nt_f16, matmul_tn_f16};
use soma::ops::uniforms::MatmulParams;
use soma::ops::Accumulate;
use soma::tensor::DType;
use soma::{cpu, Dispatch, Error, Gpu, GpuTensor, Kernels, Tuning};

/// f16's unit roundoff: half the spacing of f16 values in [1, 2), 2^-11.
const U16: f64 = 1.0 / 2048.0;
/// Half the smallest f16 subnormal (2^-24): the largest error of rounding a value in the
/// subnormal range, where the relative bound `U16` does not hold.
const ETA16: f64 = 1.0 / (1u64 << 25) as f64;
/// f32's unit roundoff, 2^-24.
const U32: f64 = 1.0 / (1u64 << 24) as f64;

/// (m, n, k) of the products: odd sizes, one with k past 128, and one larger.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 5, 3),
    (33, 17, 9),
    (65, 31, 129),
    (257, 131, 1031),
];

#[derive(Clone, Copy, Debug)]
enum Form {
    Nt,
    Nn,
    Tn,
}

impl Form {
    const ALL: [Form; 3] = [Form::Nt, Form::Nn, Form::Tn];

    fn name(self) -> &'static str {
        match self {
            Form::Nt => "matmul_nt_f16",
            Form::Nn => "matmul_nn_f16",
            Form::Tn => "matmul_tn_f16",
        }
    }

    /// The shapes of a and b for out (m, n) with contracted dimension k.
    fn operand_shapes(self, m: usize, n: usize, k: usize) -> ([usize; 2], [usize; 2]) {
        match self {
            Form::Nt => ([m, k], [n, k]),
            Form::Nn => ([m, k], [k, n]),
            Form::Tn => ([k, m], [k, n]),
        }
    }

    /// A(i, kk) and B(kk, j) of the product, from the operands as stored.
    fn at(
        self,
        a: &[f32],
        b: &[f32],
        (m, n, k): (usize, usize, usize),
        i: usize,
        j: usize,
        kk: usize,
    ) -> (f32, f32) {
        match self {
            Form::Nt => (a[i * k + kk], b[j * k + kk]),
            Form::Nn => (a[i * k + kk], b[kk * n + j]),
            Form::Tn => (a[kk * m + i], b[kk * n + j]),
        }
    }

    fn record(
        self,
        k: &Kernels,
        out: &GpuTensor,
        a: &GpuTensor,
        b: &GpuTensor,
        acc: Accumulate,
    ) -> soma::Result<Dispatch> {
        match self {
            Form::Nt => matmul_nt_f16(k, out, a, b, acc),
            Form::Nn => matmul_nn_f16(k, out, a, b, acc),
            Form::Tn => matmul_tn_f16(k, out, a, b, acc),
        }
    }

    fn twin(self, out: &mut [f32], a: &[f32], b: &[f32], p: &MatmulParams) {
        match self {
            Form::Nt => cpu::matmul_nt_f16(out, a, b, p),
            Form::Nn => cpu::matmul_nn_f16(out, a, b, p),
            Form::Tn => cpu::matmul_tn_f16(out, a, b, p),
        }
    }
}

/// The values of `x` rounded to f16 by the twin.
fn rounded(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    cpu::cast_f16(&mut out, x);
    out
}

fn run(gpu: &Gpu, d: &Dispatch) {
    kernels::run(gpu, &[d]).unwrap();
}

/// Asserts that `got` is `want` bit for bit, naming the first index that is not and a few
/// pairs from there.
fn assert_bits(label: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        let pairs: Vec<String> = (i..got.len().min(i + 4))
            .map(|j| {
                format!(
                    "[{j}] {:e} ({:#010x}) vs {:e} ({:#010x})",
                    got[j],
                    got[j].to_bits(),
                    want[j],
                    want[j].to_bits()
                )
            })
            .collect();
        panic!("{label}: not the twin's bits: {}", pairs.join(", "));
    }
}

/// Kernels of the f16 tests: the default ones, and strict mode's (which on a Vulkan device
/// with passthrough shaders load as naga's SPIR-V marked `NoContraction`).
fn tunings(gpu: &'static Gpu) -> Vec<(&'static str, Kernels<'static>)> {
    vec![
        ("default", Kernels::new(gpu, Tuning::default())),
        ("strict", Kernels::new(gpu, Tuning::strict())),
    ]
}

// ---------------------------------------------------------------------------------------
// The products

/// Each f16 product equals its twin bit for bit, and the f32 product of the unrounded
/// operands within the bound that f16 rounding and f32 summation allow.
///
/// Why bit equality is the right bound against the twin, on every adapter: the twin sums
/// the same terms in the same order (k = 0..k-1, one running f32 sum per output), and every
/// term is exact. An f16 value has an 11-bit significand, so the product of two has at most
/// 22 bits and fits f32's 24; its magnitude lies between 2^-48 (the smallest f16 subnormal,
/// 2^-24, squared) and 65504^2 < 2^32, inside f32's normal range. So each term is the same
/// f32 on the GPU and the CPU whether or not a driver fuses the multiply into the add (a
/// fused multiply-add of an exact product rounds the same sum once, as the separate add
/// does), and the sums, taken in one order, round identically. (A driver that flushed f16
/// subnormal operands to zero would break this; the kernels promise the twin's bits, so
/// that would fail here by name.)
///
/// The bound against the f32 product of the unrounded operands, per output element, with
/// u = 2^-11 (f16's unit roundoff), η = 2^-25 (the largest rounding error in f16's subnormal
/// range, where the relative bound fails) and v = 2^-24 (f32's unit roundoff):
///   fl(a) = a(1 + δa) + εa with |δa| <= u, |εa| <= η (one of the two is 0), the same for b, so
///   |fl(a) fl(b) - a b| <= |a b| (2u + u²) + η (|a| + |b|)(1 + u) + η²        (1)
/// summed over k: |Σ fl(a) fl(b) - Σ a b| <= Σ|a b| (2u + u²) + Σ [η (|a| + |b|)(1 + u) + η²].
/// The kernel then sums the k exact terms p = fl(a) fl(b) in f32, one after another, which
/// errs by at most γ_(k-1) Σ|p| with γ_j = j v / (1 - j v) (Higham, Accuracy and Stability of
/// Numerical Algorithms, 4.2). With Accumulate::Add one more f32 rounding of out + sum adds
/// v (|out| + Σ|p|) (1 + γ_(k-1)). The reference is computed in f64 from the unrounded f32
/// operands (exact products, an f64 sum whose error, below 2^-53 k Σ|a b|, is far inside
/// the bound), and the bound from the same data, element by element. NaN never passes.
#[test]
fn f16_products_match_their_twins_bit_for_bit_and_f32_within_the_rounding_bound() {
    let test = "f16_products_match_their_twins_bit_for_bit_and_f32_within_the_rounding_bound";
    let Some(gpu) = gpu(test) else {
        return;
    };
    if !gpu.shader_f16() {
        eprintln!("{test}: the adapter has no SHADER_F16; f16_recorders_name_the_missing_feature checks the error");
        return;
    }
    let mut rng = TestRng::new(0xf16);
    for &(m, n, k) in SHAPES {
        for form in Form::ALL {
            let (a_shape, b_shape) = form.operand_shapes(m, n, k);
            // Operands of different scales, so that the bound's terms are not all alike.
            let a = rng.vec(m * k, -3.0, 3.0);
            let b = rng.vec(n * k, -0.5, 0.5);
            let (a16, b16) = (rounded(&a), rounded(&b));
            let init = rng.vec(m * n, -1.0, 1.0);
            let ga = GpuTensor::upload_f16(gpu, "a", &a_shape, &a).unwrap();
            let gb = GpuTensor::upload_f16(gpu, "b", &b_shape, &b).unwrap();
            // What the device holds is the twin's rounding of the operands.
            assert_bits("a as uploaded", &ga.read_f16(gpu).unwrap(), &a16);
            assert_bits("b as uploaded", &gb.read_f16(gpu).unwrap(), &b16);
            for acc in [Accumulate::Overwrite, Accumulate::Add] {
                let label = format!("{} {m}x{n}x{k} {acc:?}", form.name());
                let p = MatmulParams {
                    m: m as u32,
                    n: n as u32,
                    k: k as u32,
                    accumulate: (acc == Accumulate::Add) as u32,
                };
                let mut want = init.clone();
                form.twin(&mut want, &a16, &b16, &p);
                // The twin, and so every kernel with its bits, against the unrounded product.
                let operands = Operands {
                    a: &a,
                    b: &b,
                    a16: &a16,
                    b16: &b16,
                };
                check_rounding_bound(&label, form, &want, operands, &init, acc, (m, n, k));
                for (tuning, kn) in &tunings(gpu) {
                    let out = GpuTensor::upload(gpu, "out", &[m, n], &init).unwrap();
                    let d = form.record(kn, &out, &ga, &gb, acc).unwrap();
                    assert_eq!(d.entry(), form.name());
                    run(gpu, &d);
                    let got = out.read(gpu).unwrap();
                    assert_bits(&format!("{label} ({tuning} kernels)"), &got, &want);
                }
            }
        }
    }
}

/// A product's operands as drawn (f32) and as rounded to f16 (held as f32).
#[derive(Clone, Copy)]
struct Operands<'a> {
    a: &'a [f32],
    b: &'a [f32],
    a16: &'a [f32],
    b16: &'a [f32],
}

/// `got` against the f64 product of the unrounded operands (plus `init` when accumulating),
/// within the bound derived above, element by element.
fn check_rounding_bound(
    label: &str,
    form: Form,
    got: &[f32],
    x: Operands<'_>,
    init: &[f32],
    acc: Accumulate,
    (m, n, k): (usize, usize, usize),
) {
    let gamma = |j: usize| j as f64 * U32 / (1.0 - j as f64 * U32);
    let gamma_k = gamma(k.saturating_sub(1));
    // The worst element: (index, error, bound, reference), by how far past its bound.
    let mut worst: Option<(usize, f64, f64, f64)> = None;
    for i in 0..m {
        for j in 0..n {
            let mut exact = 0.0f64; // Σ a b
            let mut abs = 0.0f64; // Σ|a b|
            let mut abs16 = 0.0f64; // Σ|fl(a) fl(b)|
            let mut subnormal = 0.0f64; // Σ η (|a| + |b|)(1 + u) + η²
            for kk in 0..k {
                let (a, b) = form.at(x.a, x.b, (m, n, k), i, j, kk);
                let (a16, b16) = form.at(x.a16, x.b16, (m, n, k), i, j, kk);
                let (a, b) = (f64::from(a), f64::from(b));
                exact += a * b;
                abs += (a * b).abs();
                abs16 += (f64::from(a16) * f64::from(b16)).abs();
                subnormal += ETA16 * (a.abs() + b.abs()) * (1.0 + U16) + ETA16 * ETA16;
            }
            let o = i * n + j;
            let mut bound = abs * (2.0 * U16 + U16 * U16) + subnormal + gamma_k * abs16;
            let mut reference = exact;
            if acc == Accumulate::Add {
                let before = f64::from(init[o]);
                reference += before;
                bound += U32 * (before.abs() + abs16) * (1.0 + gamma_k);
            }
            let g = f64::from(got[o]);
            let err = (g - reference).abs();
            // NaN never passes: a NaN error counts as infinitely far past the bound.
            if !(g.is_finite() && err <= bound) {
                let excess = if err.is_nan() {
                    f64::INFINITY
                } else {
                    err - bound
                };
                if worst.is_none_or(|(_, e, b, _)| excess > e - b) {
                    worst = Some((o, err, bound, reference));
                }
            }
        }
    }
    if let Some((o, err, bound, reference)) = worst {
        panic!(
            "{label}: out[{o}] = {} is {err:e} from the f32 product of the unrounded operands \
             ({reference}), over its bound {bound:e}",
            got[o]
        );
    }
}

/// The products give the twin's bits for operands made on the device by `cast_f16` too,
/// the way a training step makes them (f32 master values cast, then multiplied).
#[test]
fn f16_products_of_cast_operands_match_the_twins() {
    let Some(gpu) = gpu("f16_products_of_cast_operands_match_the_twins") else {
        return;
    };
    if !gpu.shader_f16() {
        return;
    }
    let kn = Kernels::new(gpu, Tuning::default());
    let mut rng = TestRng::new(7);
    let (m, n, k) = (19, 23, 37);
    let x = rng.vec(m * k, -2.0, 2.0);
    let w = rng.vec(n * k, -1.0, 1.0);
    let gx = GpuTensor::upload(gpu, "x", &[m, k], &x).unwrap();
    let gw = GpuTensor::upload(gpu, "w", &[n, k], &w).unwrap();
    let x16 = GpuTensor::zeros_f16(gpu, "x16", &[m, k]).unwrap();
    let w16 = GpuTensor::zeros_f16(gpu, "w16", &[n, k]).unwrap();
    let y = GpuTensor::zeros(gpu, "y", &[m, n]).unwrap();
    let cx = cast_f16(&kn, &x16, &gx).unwrap();
    let cw = cast_f16(&kn, &w16, &gw).unwrap();
    let mm = matmul_nt_f16(&kn, &y, &x16, &w16, Accumulate::Overwrite).unwrap();
    kernels::run(gpu, &[&cx, &cw, &mm]).unwrap();
    let p = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        accumulate: 0,
    };
    let mut want = vec![0.0; m * n];
    cpu::matmul_nt_f16(&mut want, &rounded(&x), &rounded(&w), &p);
    assert_bits("y = f16(x) · f16(w)ᵀ", &y.read(gpu).unwrap(), &want);
}

// ---------------------------------------------------------------------------------------
// The cast

/// Values that test the rounding: overflow to infinity and the largest finite values,
/// subnormals and their ties, ties between normal values, signed zeros, infinities, NaN.
fn cast_specials() -> Vec<f32> {
    let p = |e: i32| 2f32.powi(e);
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,       // the largest finite f16
        65519.996,     // just below the tie: 65504
        65520.0,       // the tie between 65504 and 65536 (odd and even): infinity
        -65520.0,      // -infinity
        65536.0,       // infinity
        1e10,          // infinity
        f32::MAX,      // infinity
        f32::INFINITY, // stays
        f32::NEG_INFINITY,
        p(-14),                // the smallest normal f16
        p(-14) - p(-25),       // just below it: rounds up to it
        p(-24),                // the smallest subnormal
        -p(-24),               // and its negative
        p(-25),                // the tie between 0 and 2^-24: 0 (even)
        -p(-25),               // -0
        p(-25) * 1.000_001,    // past the tie: 2^-24
        3.0 * p(-25),          // the tie between 2^-24 (odd) and 2^-23 (even): 2^-23
        5.0 * p(-25),          // the tie between 2 and 3 x 2^-24: 2 x 2^-24 (even)
        p(-26),                // below the tie: 0
        1e-40,                 // an f32 subnormal: 0
        -1e-45,                // the smallest f32 subnormal, negative: -0
        1.0 + p(-11),          // the tie between 1 (even) and 1 + 2^-10: 1
        1.0 + 3.0 * p(-11),    // the tie between 1 + 2^-10 (odd) and 1 + 2^-9: 1 + 2^-9
        -(1.0 + 3.0 * p(-11)), // the same, negative
        1.0 + p(-11) + p(-23), // past the tie: 1 + 2^-10
        2048.0 + 1.0,          // the tie between 2048 (even) and 2050: 2048
        2048.0 + 3.0,          // the tie between 2050 (odd) and 2052: 2052
        0.1,
        1.0 / 3.0,
        std::f32::consts::PI,
        f32::NAN,
        -f32::NAN,
    ];
    // Both neighbours of every f16 exponent's ties, through the normal range.
    for e in -14..=15 {
        let base = p(e);
        let half_ulp = p(e - 11);
        v.extend([base + half_ulp, base + 3.0 * half_ulp, -(base + half_ulp)]);
    }
    v
}

/// `cast_f16` gives its twin's bits (the `half` crate's rounding to nearest even) on every
/// value of `cast_specials`, and on random values across f16's range and beyond it, at an
/// odd length (the last f16 shares its 4-byte word with padding).
///
/// WGSL leaves the rounding of an inexact conversion to the implementation (either
/// neighbour), and a driver may flush f16 subnormals; the twin promises round to nearest
/// even with subnormals kept, as lavapipe does, so a driver that does otherwise fails here
/// by name. Two NaNs count as equal whatever their payloads (a conversion need not keep them).
#[test]
fn cast_f16_matches_its_twin_bit_for_bit() {
    let Some(gpu) = gpu("cast_f16_matches_its_twin_bit_for_bit") else {
        return;
    };
    if !gpu.shader_f16() {
        return;
    }
    let mut rng = TestRng::new(0xca57);
    let mut x = cast_specials();
    // Random magnitudes from 2^-30 to 2^20, both signs: subnormals, normals, overflow.
    while x.len() < 1757 {
        let e = rng.below(51) as i32 - 30;
        let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
        x.push(sign * rng.uniform(1.0, 2.0) * 2f32.powi(e));
    }
    for (tuning, kn) in &tunings(gpu) {
        for len in [1, 2, 7, x.len()] {
            let x = &x[..len];
            let gx = GpuTensor::upload(gpu, "x", &[len], x).unwrap();
            let out = GpuTensor::zeros_f16(gpu, "x16", &[len]).unwrap();
            run(gpu, &cast_f16(kn, &out, &gx).unwrap());
            let got = out.read_f16(gpu).unwrap();
            let mut want = vec![0.0; len];
            cpu::cast_f16(&mut want, x);
            // NaN for NaN, then every other value bit for bit.
            for i in 0..len {
                assert_eq!(
                    got[i].is_nan(),
                    want[i].is_nan(),
                    "cast_f16({:e}) = {} ({tuning} kernels)",
                    x[i],
                    got[i]
                );
            }
            let finite = |v: &[f32]| -> Vec<f32> {
                v.iter()
                    .map(|&f| if f.is_nan() { 0.0 } else { f })
                    .collect()
            };
            assert_bits(
                &format!("cast_f16 of {len} values ({tuning} kernels)"),
                &finite(&got),
                &finite(&want),
            );
        }
    }
}

#[test]
fn the_cast_twin_rounds_as_documented() {
    // Goldens of the twin: the tie rules and the ends of the range, by hand.
    let p = |e: i32| 2f32.powi(e);
    let cases = [
        (65504.0, 65504.0),
        (65519.996, 65504.0),
        (65520.0, f32::INFINITY),
        (-65520.0, f32::NEG_INFINITY),
        (p(-25), 0.0),
        (3.0 * p(-25), p(-23)),
        (p(-25) * 1.000_001, p(-24)),
        (1.0 + p(-11), 1.0),
        (1.0 + 3.0 * p(-11), 1.0 + p(-9)),
        (2051.0, 2052.0),
        (0.1, 0.099975586), // 0x2e66
    ];
    for (x, want) in cases {
        let got = rounded(&[x])[0];
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "cast_f16({x:e}) = {got:e}, not {want:e}"
        );
    }
    assert_eq!(
        rounded(&[-p(-25)])[0].to_bits(),
        (-0.0f32).to_bits(),
        "-2^-25 rounds to -0"
    );
    assert!(rounded(&[f32::NAN])[0].is_nan());
}

// ---------------------------------------------------------------------------------------
// Storage

/// f16 tensors of odd lengths round-trip through upload, write, copy and readback: what
/// comes back is each value rounded to f16 by the twin, the padding never shows, and a
/// readback of several tensors keeps each one's bytes apart.
#[test]
fn f16_tensors_round_trip_at_odd_lengths() {
    let Some(gpu) = gpu("f16_tensors_round_trip_at_odd_lengths") else {
        return;
    };
    let mut rng = TestRng::new(16);
    for len in [1usize, 2, 3, 7, 33, 1757] {
        let mut x = rng.vec(len, -70000.0, 70000.0);
        x[0] = 1.0 + 2f32.powi(-11); // a tie: rounds to 1
        let t = GpuTensor::upload_f16(gpu, "t", &[len], &x).unwrap();
        assert_eq!(t.dtype(), DType::F16);
        assert_eq!(t.byte_len(), 2 * len as u64);
        assert_eq!(t.padded_byte_len(), (2 * len as u64).next_multiple_of(4));
        assert_bits(
            &format!("upload_f16 of {len}"),
            &t.read_f16(gpu).unwrap(),
            &rounded(&x),
        );

        let z = GpuTensor::zeros_f16(gpu, "z", &[len]).unwrap();
        assert_bits(
            &format!("zeros_f16 of {len}"),
            &z.read_f16(gpu).unwrap(),
            &vec![0.0; len],
        );
        let y = rng.vec(len, -2.0, 2.0);
        z.write_f16(gpu, &y).unwrap();
        assert_bits(
            &format!("write_f16 of {len}"),
            &z.read_f16(gpu).unwrap(),
            &rounded(&y),
        );

        // A copy between f16 tensors, and one readback of an f16 tensor between two f32 ones.
        soma::tensor::copy_tensors(gpu, &[(&t, &z)]).unwrap();
        assert_bits(
            &format!("copy of {len}"),
            &z.read_f16(gpu).unwrap(),
            &rounded(&x),
        );
        let before = GpuTensor::upload(gpu, "before", &[3], &[1.0, 2.0, 3.0]).unwrap();
        let after = GpuTensor::upload(gpu, "after", &[2], &[4.0, 5.0]).unwrap();
        let bytes = soma::tensor::start_read_many(gpu, &[&before, &t, &after])
            .unwrap()
            .wait(gpu)
            .unwrap();
        let at = 12 + t.padded_byte_len() as usize;
        assert_eq!(bytes.len(), at + 8);
        let halves: Vec<f32> = bytes[12..12 + 2 * len]
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        assert_bits(
            &format!("f16 bytes of {len} in a shared readback"),
            &halves,
            &rounded(&x),
        );
        let tail: Vec<f32> = bytes[at..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(tail, [4.0, 5.0], "the f32 tensor after {len} f16s");
    }
    // Empty and two-dimensional shapes.
    let e = GpuTensor::upload_f16(gpu, "empty", &[0], &[]).unwrap();
    assert!(e.read_f16(gpu).unwrap().is_empty());
    let m = GpuTensor::upload_f16(gpu, "m", &[3, 5], &[0.5; 15]).unwrap();
    assert_eq!(m.read_f16(gpu).unwrap(), vec![0.5; 15]);
}

#[test]
fn f16_tensors_refuse_the_wrong_type_or_length() {
    let Some(gpu) = gpu("f16_tensors_refuse_the_wrong_type_or_length") else {
        return;
    };
    let h = GpuTensor::upload_f16(gpu, "h", &[3], &[1.0, 2.0, 3.0]).unwrap();
    let f = GpuTensor::upload(gpu, "f", &[3], &[1.0, 2.0, 3.0]).unwrap();
    assert!(
        matches!(h.read(gpu), Err(Error::Shape { .. })),
        "read of an f16 tensor as f32"
    );
    assert!(matches!(h.read_u32(gpu), Err(Error::Shape { .. })));
    assert!(
        matches!(f.read_f16(gpu), Err(Error::Shape { .. })),
        "read_f16 of an f32 tensor"
    );
    assert!(matches!(h.write(gpu, &[0.0; 3]), Err(Error::Shape { .. })));
    assert!(matches!(
        f.write_f16(gpu, &[0.0; 3]),
        Err(Error::Shape { .. })
    ));
    assert!(
        matches!(h.write_f16(gpu, &[0.0; 4]), Err(Error::Shape { .. })),
        "wrong length"
    );
    assert!(matches!(
        GpuTensor::upload_f16(gpu, "x", &[2, 2], &[0.0; 3]),
        Err(Error::Shape { .. })
    ));
    assert!(
        soma::tensor::copy_tensors(gpu, &[(&h, &f)]).is_err(),
        "a copy across types"
    );
    // Nothing above changed the tensor.
    assert_eq!(h.read_f16(gpu).unwrap(), [1.0, 2.0, 3.0]);
}

// ---------------------------------------------------------------------------------------
// The recorders' checks

#[test]
fn f16_recorders_check_shapes_and_types() {
    let Some(gpu) = gpu("f16_recorders_check_shapes_and_types") else {
        return;
    };
    if !gpu.shader_f16() {
        return;
    }
    let kn = Kernels::new(gpu, Tuning::default());
    let h = |shape: &[usize]| GpuTensor::zeros_f16(gpu, "h", shape).unwrap();
    let f = |shape: &[usize]| GpuTensor::zeros(gpu, "f", shape).unwrap();
    let shape_err = |r: soma::Result<Dispatch>, what: &str| {
        assert!(
            matches!(r, Err(Error::Shape { .. })),
            "{what}: {:?}",
            r.map(|d| d.entry())
        );
    };
    // (m, k) = (4, 3), n = 5.
    shape_err(
        matmul_nt_f16(
            &kn,
            &f(&[4, 5]),
            &f(&[4, 3]),
            &h(&[5, 3]),
            Accumulate::Overwrite,
        ),
        "nt: a f32",
    );
    shape_err(
        matmul_nt_f16(
            &kn,
            &f(&[4, 5]),
            &h(&[4, 3]),
            &f(&[5, 3]),
            Accumulate::Overwrite,
        ),
        "nt: b f32",
    );
    shape_err(
        matmul_nt_f16(
            &kn,
            &h(&[4, 5]),
            &h(&[4, 3]),
            &h(&[5, 3]),
            Accumulate::Overwrite,
        ),
        "nt: out f16",
    );
    shape_err(
        matmul_nt_f16(
            &kn,
            &f(&[4, 5]),
            &h(&[4, 3]),
            &h(&[5, 2]),
            Accumulate::Overwrite,
        ),
        "nt: k differs",
    );
    shape_err(
        matmul_nt_f16(
            &kn,
            &f(&[4, 4]),
            &h(&[4, 3]),
            &h(&[5, 3]),
            Accumulate::Overwrite,
        ),
        "nt: out n",
    );
    shape_err(
        matmul_nn_f16(&kn, &f(&[4, 5]), &h(&[4, 3]), &h(&[5, 3]), Accumulate::Add),
        "nn: b (n, k)",
    );
    shape_err(
        matmul_tn_f16(&kn, &f(&[4, 5]), &h(&[4, 3]), &h(&[3, 5]), Accumulate::Add),
        "tn: a (m, k)",
    );
    shape_err(
        matmul_tn_f16(
            &kn,
            &f(&[4, 5]),
            &h(&[3, 4]),
            &h(&[3, 5, 1]),
            Accumulate::Add,
        ),
        "tn: b 3-D",
    );
    assert!(matmul_nn_f16(&kn, &f(&[4, 5]), &h(&[4, 3]), &h(&[3, 5]), Accumulate::Add).is_ok());
    assert!(matmul_tn_f16(&kn, &f(&[4, 5]), &h(&[3, 4]), &h(&[3, 5]), Accumulate::Add).is_ok());
    shape_err(cast_f16(&kn, &f(&[7]), &f(&[7])), "cast: out f32");
    shape_err(cast_f16(&kn, &h(&[7]), &h(&[7])), "cast: x f16");
    shape_err(cast_f16(&kn, &h(&[6]), &f(&[7])), "cast: lengths");
    assert!(
        cast_f16(&kn, &h(&[7, 1]), &f(&[7])).is_ok(),
        "the cast is over lengths, not shapes"
    );
}

/// On a device opened without `Features::SHADER_F16` (here: the test's adapter, opened by a
/// host that did not ask for it), every f16 recorder returns `Error::Config` naming the
/// feature and what to do, and F16 tensors are still plain storage.
#[test]
fn f16_recorders_name_the_missing_feature() {
    let test = "f16_recorders_name_the_missing_feature";
    let Some(soma_gpu) = gpu(test) else {
        return;
    };
    let want = soma_gpu.adapter();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::all();
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .find(|a| {
            let info = a.get_info();
            info.name == want.name && info.backend == want.backend
        })
        .unwrap_or_else(|| panic!("{test}: the host cannot see soma's adapter {want:?}"));
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host without f16"),
        required_features: wgpu::Features::empty(),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap_or_else(|e| panic!("{test}: host device: {e}"));
    let gpu = Gpu::from_wgpu(device, queue);
    assert!(!gpu.shader_f16());
    let kn = Kernels::new(&gpu, Tuning::default());
    let h = |shape: &[usize]| GpuTensor::zeros_f16(&gpu, "h", shape).unwrap();
    let f = |shape: &[usize]| GpuTensor::zeros(&gpu, "f", shape).unwrap();
    let (out, a, b) = (f(&[2, 2]), h(&[2, 2]), h(&[2, 2]));
    let results = [
        (
            "matmul_nt_f16",
            matmul_nt_f16(&kn, &out, &a, &b, Accumulate::Overwrite),
        ),
        (
            "matmul_nn_f16",
            matmul_nn_f16(&kn, &out, &a, &b, Accumulate::Overwrite),
        ),
        (
            "matmul_tn_f16",
            matmul_tn_f16(&kn, &out, &a, &b, Accumulate::Add),
        ),
        ("cast_f16", cast_f16(&kn, &h(&[3]), &f(&[3]))),
    ];
    for (op, r) in results {
        match r {
            Err(Error::Config(m)) => {
                assert!(
                    m.contains(op) && m.contains("wgpu::Features::SHADER_F16"),
                    "{m}"
                );
                assert!(
                    m.contains("from_wgpu") && m.contains("DeviceDescriptor"),
                    "says what to do: {m}"
                );
            }
            other => panic!("{op} without SHADER_F16: {:?}", other.map(|d| d.entry())),
        }
    }
    // The pipeline itself is refused too, should anything build it directly.
    let e = kn.pipeline(soma::Kernel::CastF16).unwrap_err().to_string();
    assert!(e.contains("SHADER_F16"), "{e}");
    // Storage needs no feature: f16 tensors upload and read back.
    let t = GpuTensor::upload_f16(&gpu, "t", &[3], &[1.0, 0.1, 70000.0]).unwrap();
    assert_eq!(t.read_f16(&gpu).unwrap(), rounded(&[1.0, 0.1, 70000.0]));
}
