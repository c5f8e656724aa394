//! Strict mode (`--deterministic strict`): which promise a run makes ([`Determinism`]), and
//! the self-test an adapter must pass before it runs strict kernels ([`self_test`]).
//!
//! Strict kernels ([`Tuning::strict`](crate::ops::Tuning::strict)) do the operations of their CPU twins in the twins'
//! order, with soma's own division, square root, exponential and logarithm
//! ([`Math::Strict`](crate::math::Math::Strict)). That gives the twins' bits only where the adapter rounds `+ - *` to
//! nearest-even, keeps subnormals, and neither fuses a multiply into an add nor
//! reassociates. On Vulkan the kernels are SPIR-V marked `NoContraction`
//! ([`crate::spirv`]); elsewhere (GL, a borrowed device without passthrough shaders) only
//! the driver's habits stand between the WGSL and its order. The self-test runs each of
//! those properties on the adapter, and soma's routines over a few thousand inputs against
//! the CPU, and refuses the adapter with what failed.

use crate::error::{Error, Result};
use crate::kernels::Dispatch;
use crate::math::strict;
pub use crate::math::Determinism;
use crate::ops::reduce::ReduceParams;
use crate::ops::{Kernel, Kernels};
use crate::tensor::GpuTensor;

/// How many inputs the self-test runs soma's routines on.
const MATH_PROBES: usize = 4096;

/// The self-test's inputs: the fixed probes (see `shaders/strict_self_test.wgsl`), then
/// `MATH_PROBES` triples (a, b, c): a and b finite values of every magnitude, subnormals
/// included, c an exponent argument over the whole range of `exp`.
fn inputs() -> Vec<f32> {
    let b = f32::from_bits;
    let mut x = vec![0.0f32; 16];
    x[0] = 1.0 + b(0x3980_0000); // 1 + 2^-12
    x[1] = x[0];
    x[2] = -(1.0 + b(0x3a00_0000)); // -(1 + 2^-11)
    x[3] = 16_777_216.0; // 2^24
    x[4] = 1.0;
    x[5] = 1.0;
    x[6] = b(0x3380_0000); // 2^-24
    x[7] = 3.0 * b(0x3380_0000);
    x[8] = b(0x0080_0000); // 2^-126
    x[9] = 0.5;
    x[10] = b(1); // 2^-149
    x[11] = 8_388_608.0; // 2^23
                         // A splitmix64 stream: any finite bit pattern for a and b, c uniform over [-110, 95].
    let mut state = 0x5eed_u64;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let finite = |n: &mut dyn FnMut() -> u64| loop {
        let v = b(n() as u32);
        if v.is_finite() {
            return v;
        }
    };
    for _ in 0..MATH_PROBES {
        let a = finite(&mut next);
        let d = finite(&mut next);
        let c = -110.0 + 205.0 * ((next() >> 40) as f32 / (1u64 << 24) as f32);
        x.extend([a, d, c]);
    }
    x
}

/// What the CPU computes for the self-test's outputs (see `shaders/strict_self_test.wgsl`).
fn expected(x: &[f32]) -> Vec<u32> {
    let mut out = vec![0u32; 16 + 4 * MATH_PROBES];
    out[0] = (x[0] * x[1] + x[2]).to_bits();
    out[1] = ((x[3] + x[4]) - x[3]).to_bits();
    out[2] = (x[5] + x[6]).to_bits();
    out[3] = (x[5] + x[7]).to_bits();
    out[4] = (x[8] * x[9]).to_bits();
    out[5] = (x[10] + x[10]).to_bits();
    out[6] = (x[10] * x[11]).to_bits();
    for i in 0..MATH_PROBES {
        let (a, b, c) = (x[16 + 3 * i], x[17 + 3 * i], x[18 + 3 * i]);
        let o = 16 + 4 * i;
        out[o] = strict::div(a, b).to_bits();
        out[o + 1] = strict::sqrt(a.abs()).to_bits();
        out[o + 2] = strict::exp(c).to_bits();
        out[o + 3] = strict::log(a.abs()).to_bits();
    }
    out
}

/// What failed, from the adapter's outputs and the CPU's; empty when nothing did.
fn findings(x: &[f32], got: &[u32], want: &[u32]) -> Vec<String> {
    let f = |bits: u32| format!("{:e} ({bits:#010x})", f32::from_bits(bits));
    let mut out = Vec::new();
    let probes = [
        (0, "contraction", "x*y+z fused into one rounding"),
        (1, "reassociation", "(2^24 + 1) - 2^24 reassociated"),
        (2, "ties-to-even", "1 + 2^-24 not rounded to even"),
        (3, "ties-to-even", "1 + 3*2^-24 not rounded to even"),
        (4, "subnormals", "2^-126 * 0.5 flushed"),
        (
            5,
            "subnormals",
            "2^-149 + 2^-149 with subnormal operands flushed",
        ),
        (
            6,
            "subnormals",
            "2^-149 * 2^23 with a subnormal operand flushed",
        ),
    ];
    for (i, what, how) in probes {
        if got[i] != want[i] {
            out.push(format!(
                "{what}: {how} (gave {}, the CPU {})",
                f(got[i]),
                f(want[i])
            ));
        }
    }
    let routines = [
        "soma_div(a, b)",
        "soma_sqrt(|a|)",
        "soma_exp(c)",
        "soma_log(|a|)",
    ];
    for (r, name) in routines.iter().enumerate() {
        let mut first = None;
        let mut count = 0;
        for i in 0..MATH_PROBES {
            let o = 16 + 4 * i + r;
            if got[o] != want[o] {
                count += 1;
                first.get_or_insert(i);
            }
        }
        if let Some(i) = first {
            let (a, b, c) = (x[16 + 3 * i], x[17 + 3 * i], x[18 + 3 * i]);
            let o = 16 + 4 * i + r;
            out.push(format!(
                "{name}: {count} of {MATH_PROBES} inputs differ from the CPU; first at a = {a:e}, \
                 b = {b:e}, c = {c:e}: {} against {}",
                f(got[o]),
                f(want[o])
            ));
        }
    }
    out
}

/// Runs the self-test on the device of `kernels` (strict kernels), once per device: `Ok`
/// when the adapter gives the CPU's bits on every probe, otherwise
/// `Error::StrictRefused` naming each finding.
pub fn self_test(kernels: &Kernels<'_>) -> Result<()> {
    let gpu = kernels.gpu();
    if !kernels.tuning().is_strict() {
        return Err(Error::Config(
            "the strict self-test runs on strict kernels (Tuning::strict())".into(),
        ));
    }
    let outcome = gpu
        .strict_check
        .get_or_init(|| match run_self_test(kernels) {
            Ok(found) if found.is_empty() => Ok(()),
            Ok(found) => Err(found.join("; ")),
            Err(e) => Err(format!("an error running it: {e}")),
        });
    outcome.clone().map_err(|findings| Error::StrictRefused {
        adapter: format!("{} ({})", gpu.adapter().name, describe(gpu)),
        findings,
    })
}

/// How strict kernels reach this device: its backend, and SPIR-V with `NoContraction` and
/// the float controls it advertises, or WGSL compiled by the driver.
fn describe(gpu: &crate::gpu::Gpu) -> String {
    let backend = gpu.adapter().backend;
    if gpu.takes_spirv() {
        let mut what = vec!["NoContraction"];
        what.extend(gpu.float_controls().names());
        format!("{backend:?}, SPIR-V with {}", what.join(", "))
    } else {
        format!("{backend:?}, WGSL as the driver compiles it")
    }
}

fn run_self_test(kernels: &Kernels<'_>) -> Result<Vec<String>> {
    let gpu = kernels.gpu();
    let x = inputs();
    let want = expected(&x);
    let xs = GpuTensor::upload(gpu, "strict self-test inputs", &[x.len()], &x)?;
    let out = GpuTensor::zeros_u32(gpu, "strict self-test outputs", &[want.len()])?;
    let params = ReduceParams {
        len: MATH_PROBES as u32,
        ..Default::default()
    };
    let d = Dispatch::new(
        gpu,
        kernels.pipeline(Kernel::StrictSelfTest)?,
        &[&out, &xs],
        &[params],
        [(MATH_PROBES as u32).div_ceil(64), 1, 1],
    )?;
    crate::kernels::run(gpu, &[&d])?;
    let got = out.read_u32(gpu)?;
    let found = findings(&x, &got, &want);
    if found.is_empty() {
        log::info!(
            "strict self-test passed on {} ({}): contraction, reassociation, ties-to-even, \
             subnormals and soma's routines on {MATH_PROBES} inputs",
            gpu.adapter().name,
            describe(gpu)
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probes_expect_what_ieee_arithmetic_gives() {
        let x = inputs();
        let want = expected(&x);
        let b = f32::from_bits;
        assert_eq!(want[0], 0, "unfused x*y+z");
        assert_eq!(want[1], 0, "(2^24 + 1) - 2^24");
        assert_eq!(b(want[2]), 1.0);
        assert_eq!(b(want[3]), 1.0 + b(0x3480_0000), "1 + 2^-22");
        assert_eq!(want[4], 0x0040_0000);
        assert_eq!(want[5], 2);
        assert_eq!(want[6], 0x0080_0000);
        // The fused result differs, so the contraction probe can fail.
        assert_ne!(x[0].mul_add(x[1], x[2]).to_bits(), want[0]);
        assert!(findings(&x, &want, &want).is_empty());
        // Each kind of difference is named.
        let mut got = want.clone();
        got[0] = x[0].mul_add(x[1], x[2]).to_bits();
        got[4] = 0;
        got[16 + 2] ^= 1;
        let f = findings(&x, &got, &want).join("; ");
        for what in ["contraction", "subnormals", "soma_exp(c): 1 of 4096"] {
            assert!(f.contains(what), "{f}");
        }
    }

    #[test]
    fn determinism_parses_and_names_itself() {
        for d in [Determinism::Default, Determinism::Strict] {
            assert_eq!(d.name().parse::<Determinism>().unwrap(), d);
        }
        let e = "exact".parse::<Determinism>().unwrap_err().to_string();
        assert!(e.contains("exact") && e.contains("strict"), "{e}");
    }
}
