//! soma's own f32 routines for strict mode: division, square root, exponential and natural
//! logarithm written with nothing but f32 `+ - *`, `floor`, comparisons, u32/i32 integer
//! operations and bit casts, so that they give the same bits on every adapter that rounds
//! `+ - *` to nearest-even with subnormals and without contraction, and on the CPU.
//!
//! Every function here is mirrored operation for operation in `shaders/math_strict.wgsl`
//! (`soma_div`, `soma_sqrt`, `soma_exp`, `soma_log`, helpers prefixed `soma_math_`): the same
//! constants (given by their bits in both languages), the same order of every float
//! operation, the same guarded shifts and fixed loop counts. A change to one side is a change
//! to the other.
//!
//! `div` and `sqrt` are integer-only and correctly rounded (round to nearest, ties to even,
//! full subnormals), so they equal IEEE-754 `/` and `sqrt` bit for bit. `exp` and `log` are
//! within 1 ULP of the correctly rounded result wherever the tests' dense sweeps of their
//! whole range looked (about 40 and 27 million inputs); the tests hold them to 2 ULP.

/// The quiet NaN every routine returns for a NaN result.
const QNAN: u32 = 0x7fc0_0000;
const SIGN: u32 = 0x8000_0000;
const ABS: u32 = 0x7fff_ffff;
/// The exponent field, also the bits of +inf.
const INF: u32 = 0x7f80_0000;
const FRAC: u32 = 0x007f_ffff;
const HIDDEN: u32 = 0x0080_0000;

/// ln 2 split in two: `LN2_HI` (0.693145751953125) has 15 significant bits, so `k * LN2_HI`
/// is exact for every |k| < 512; `LN2_LO` is ln 2 - `LN2_HI` rounded to f32.
const LN2_HI: u32 = 0x3f31_7200;
const LN2_LO: u32 = 0x35bf_be8e;
/// log2(e) rounded to f32.
const LOG2E: u32 = 0x3fb8_aa3b;
/// The largest x whose e^x rounds to a finite f32 (88.72283172607422).
const EXP_MAX: u32 = 0x42b1_7217;
/// The most negative x whose e^x does not round to zero (-103.97207641601562).
const EXP_MIN: u32 = 0xc2cf_f1b4;
/// 1/2!, 1/3!, ..., 1/7! rounded to f32: Taylor coefficients of e^r on |r| <= ln2/2.
const EXP_C2: u32 = 0x3f00_0000;
const EXP_C3: u32 = 0x3e2a_aaab;
const EXP_C4: u32 = 0x3d2a_aaab;
const EXP_C5: u32 = 0x3c08_8889;
const EXP_C6: u32 = 0x3ab6_0b61;
const EXP_C7: u32 = 0x3950_0d01;
/// 2/3, 2/5, 2/7, 2/9, 2/11 rounded to f32: log(1+f) = 2 atanh(s) = 2s + s (L1 s^2 + L2 s^4
/// + ...), s = f / (2 + f).
const LOG_L1: u32 = 0x3f2a_aaab;
const LOG_L2: u32 = 0x3ecc_cccd;
const LOG_L3: u32 = 0x3e92_4925;
const LOG_L4: u32 = 0x3e63_8e39;
const LOG_L5: u32 = 0x3e3a_2e8c;
/// The fraction bits of sqrt(2) rounded to f32 (1.4142135): a significand above it is halved.
const SQRT2_FRAC: u32 = 0x0035_04f3;

fn f(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// The significand (hidden bit at bit 23) and biased exponent of a nonzero finite magnitude;
/// a subnormal is shifted up until its leading bit is the hidden bit, its exponent going
/// below 1 by as much (`soma_math_unpack`).
fn unpack(mag: u32) -> (u32, i32) {
    let field = mag >> 23;
    if field == 0 {
        let lz = mag.leading_zeros() - 8;
        return (mag << lz, 1 - lz as i32);
    }
    ((mag & FRAC) | HIDDEN, field as i32)
}

/// Correctly rounded IEEE-754 binary32 division (round to nearest, ties to even), with
/// integers only (u32, no 64-bit): the operands are unpacked (subnormals normalized by their
/// leading zeros), the quotient of the significands is formed by restoring long division one
/// bit at a time (26 bits: 24 of the result, a round bit, one more, and the nonzero remainder
/// as a sticky bit), then rounded and packed, overflowing to inf and underflowing gradually
/// through the subnormals to zero. NaN in gives the quiet NaN 0x7fc00000; 0/0 and inf/inf
/// are NaN, x/0 is inf and x/inf is 0, with the xor of the signs.
///
/// Exact: bit for bit IEEE-754 `a / b` (NaN payloads aside). Mirrored op for op by
/// `soma_div` in `shaders/math_strict.wgsl`.
pub fn div(a: f32, b: f32) -> f32 {
    let ua = a.to_bits();
    let ub = b.to_bits();
    let sign = (ua ^ ub) & SIGN;
    let xa = ua & ABS;
    let xb = ub & ABS;
    if xa > INF || xb > INF {
        return f(QNAN);
    }
    if xa == INF {
        if xb == INF {
            return f(QNAN);
        }
        return f(sign | INF);
    }
    if xb == INF {
        return f(sign);
    }
    if xb == 0 {
        if xa == 0 {
            return f(QNAN);
        }
        return f(sign | INF);
    }
    if xa == 0 {
        return f(sign);
    }
    let (ma, ea) = unpack(xa);
    let (mb, eb) = unpack(xb);
    // The quotient of the significands lies in (1/2, 2); make it [1, 2).
    let mut e = ea - eb + 127;
    let mut r = ma;
    if r < mb {
        r <<= 1;
        e -= 1;
    }
    // r < 2 mb < 2^25 throughout, so r << 1 fits.
    let mut q = 0u32;
    for _ in 0..26 {
        q <<= 1;
        if r >= mb {
            r -= mb;
            q |= 1;
        }
        r <<= 1;
    }
    // a / b = q * 2^(e - 127 - 25) (+ the remainder); q has its leading 1 at bit 25.
    if e > 254 {
        return f(sign | INF);
    }
    round_pack(sign, e, q, r != 0)
}

/// Rounds `q * 2^(e - 152)` (q's leading 1 at bit 25, `sticky` when something nonzero lies
/// below q) to nearest-even and packs it with `sign`; `e` <= 254. A result below the normal
/// range drops more bits (gradual underflow); a carry out of the significand moves into the
/// exponent, up to inf (`soma_math_round_pack`).
fn round_pack(sign: u32, e: i32, q: u32, sticky: bool) -> f32 {
    let mut shift = 2u32;
    let mut field = (e - 1) as u32;
    if e < 1 {
        // Beyond 27 every bit of q lies below half an ULP: it would round to zero as 27 does.
        shift = (2 + (1 - e) as u32).min(27);
        field = 0;
    }
    let kept = q >> shift;
    let rest = q & ((1u32 << shift) - 1);
    let half = 1u32 << (shift - 1);
    let mut up = 0u32;
    if rest > half || (rest == half && (sticky || (kept & 1) == 1)) {
        up = 1;
    }
    // A normal kept has its hidden bit at 23, which adds the 1 that `field` lacks.
    f(sign | ((field << 23) + kept + up))
}

/// Correctly rounded square root (round to nearest-even), with integers only: the
/// significand of x (subnormals normalized) is scaled to a radicand R in [2^24, 2^26) with an
/// even exponent left over, and the digit-by-digit (restoring) square root streams R's bit
/// pairs followed by 12 zero pairs, producing 25 root bits (24 of the result and a round bit)
/// and a remainder that is the sticky bit; every intermediate stays below 2^28. -0 gives -0,
/// +inf gives +inf, NaN and x < 0 give the quiet NaN 0x7fc00000.
///
/// Exact: bit for bit IEEE-754 `sqrt` (NaN payloads aside). Mirrored op for op by
/// `soma_sqrt` in `shaders/math_strict.wgsl`.
pub fn sqrt(x: f32) -> f32 {
    let u = x.to_bits();
    let mag = u & ABS;
    if mag > INF {
        return f(QNAN);
    }
    if mag == 0 {
        return x;
    }
    if (u & SIGN) != 0 {
        return f(QNAN);
    }
    if mag == INF {
        return x;
    }
    let (m, field) = unpack(mag);
    // x = m * 2^(e - 23); with an odd e one more bit goes into the radicand.
    let e = field - 127;
    let odd = (e & 1) as u32;
    let radicand = m << (1 + odd);
    let half_e = (e - (e & 1)) >> 1;
    let mut rem = 0u32;
    let mut root = 0u32;
    for i in 0..25u32 {
        let mut pair = 0u32;
        if i < 13 {
            pair = (radicand >> (24 - 2 * i)) & 3;
        }
        rem = (rem << 2) | pair;
        let trial = (root << 2) | 1;
        root <<= 1;
        if rem >= trial {
            rem -= trial;
            root |= 1;
        }
    }
    // sqrt(x) = root * 2^(half_e - 24); root in [2^24, 2^25), its last bit the round bit.
    let kept = root >> 1;
    let mut up = 0u32;
    if (root & 1) == 1 && (rem != 0 || (kept & 1) == 1) {
        up = 1;
    }
    f((((half_e + 126) as u32) << 23) + kept + up)
}

/// The exponential: k = floor(x log2(e) + 1/2), Cody-Waite reduction r = (x - k LN2_HI) -
/// k LN2_LO (the first product and difference exact, |r| <= ~0.347), e^r = 1 + (r + r^2 q(r))
/// with q the Taylor polynomial to r^7 evaluated by Horner (separate multiplies and adds),
/// then the scaling by 2^k built from bits: in one exact step for a normal result, in two
/// (an exact step by 2^(k+64), then one rounding by 2^-64) for a subnormal one, so that tiny
/// results underflow gradually. x > 88.72283 gives +inf, x < -103.97208 gives 0, NaN gives
/// the quiet NaN, +inf gives +inf and -inf gives 0.
///
/// Only f32 `+ - *`, `floor`, comparisons, integer ops and bit casts. Accuracy: at most
/// 1 ULP from e^x rounded to f32 over the tests' dense sweep of the whole range, subnormal
/// results included (asserted: 2 ULP). Mirrored op for op
/// by `soma_exp` in `shaders/math_strict.wgsl`.
pub fn exp(x: f32) -> f32 {
    if (x.to_bits() & ABS) > INF {
        return f(QNAN);
    }
    if x > f(EXP_MAX) {
        return f(INF);
    }
    if x < f(EXP_MIN) {
        return 0.0;
    }
    let kf = (x * f(LOG2E) + 0.5).floor();
    let k = kf as i32;
    let hi = x - kf * f(LN2_HI);
    let lo = kf * f(LN2_LO);
    let r = hi - lo;
    let r2 = r * r;
    let q = f(EXP_C2)
        + r * (f(EXP_C3) + r * (f(EXP_C4) + r * (f(EXP_C5) + r * (f(EXP_C6) + r * f(EXP_C7)))));
    let p = 1.0 + (r + r2 * q);
    if k > 127 {
        return (p * 2.0) * f(((k - 1 + 127) as u32) << 23);
    }
    if k < -126 {
        return (p * f(((k + 64 + 127) as u32) << 23)) * f(((127 - 64) as u32) << 23);
    }
    p * f(((k + 127) as u32) << 23)
}

/// The natural logarithm: x = 2^e m with m in [sqrt(1/2), sqrt(2)) (subnormals normalized
/// with their leading zeros), f = m - 1 (exact), s = f / (2 + f) with [`div`], and
/// log(m) = log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)) where R is the odd series of
/// 2 atanh(s) past its first term (to s^10, Horner); e ln 2 is added with ln 2 split in
/// LN2_HI (e LN2_HI exact) and LN2_LO. log(±0) = -inf, log(x < 0) = NaN, log(+inf) = +inf,
/// log(1) = +0 exactly, NaN gives the quiet NaN.
///
/// Only f32 `+ - *`, comparisons, integer ops, bit casts and [`div`]. Accuracy: at most
/// 1 ULP from ln x rounded to f32 over the tests' dense sweep of every positive float,
/// subnormals included (asserted: 2 ULP). Mirrored op for op by
/// `soma_log` in `shaders/math_strict.wgsl`.
pub fn log(x: f32) -> f32 {
    let u = x.to_bits();
    let mag = u & ABS;
    if mag > INF {
        return f(QNAN);
    }
    if mag == 0 {
        return f(SIGN | INF);
    }
    if (u & SIGN) != 0 {
        return f(QNAN);
    }
    if mag == INF {
        return x;
    }
    let (m, field) = unpack(mag);
    let frac = m & FRAC;
    let mut e = field - 127;
    let mut mbits = frac | (127u32 << 23);
    if frac > SQRT2_FRAC {
        mbits = frac | (126u32 << 23);
        e += 1;
    }
    let fm = f(mbits) - 1.0;
    let s = div(fm, 2.0 + fm);
    let z = s * s;
    let r = z * (f(LOG_L1) + z * (f(LOG_L2) + z * (f(LOG_L3) + z * (f(LOG_L4) + z * f(LOG_L5)))));
    let hfsq = 0.5 * (fm * fm);
    let dk = e as f32;
    dk * f(LN2_HI) - ((hfsq - (s * (hfsq + r) + dk * f(LN2_LO))) - fm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a seeded stream of pseudo-random bits.
    struct Mix(u64);

    impl Mix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn bits(&mut self) -> u32 {
            (self.next() >> 32) as u32
        }

        /// A float whose exponent field is drawn mostly from the ends of the range
        /// (subnormals, the smallest normals, the largest finite), with a random significand
        /// and sign.
        fn edgy(&mut self) -> f32 {
            let r = self.next();
            let field = match r % 8 {
                0 => 0,
                1 => 1 + (r >> 8) % 3,
                2 => 254 - (r >> 8) % 3,
                3 => 100 + (r >> 8) % 56,
                _ => (r >> 8) % 256,
            } as u32;
            let frac = match (r >> 20) % 4 {
                0 => (r >> 32) as u32 & 0xf,
                1 => FRAC - ((r >> 32) as u32 & 0xf),
                _ => (r >> 32) as u32 & FRAC,
            };
            let sign = ((r >> 63) as u32) << 31;
            f32::from_bits(sign | (field.min(255) << 23) | frac)
        }
    }

    fn same(a: f32, b: f32) -> bool {
        (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
    }

    /// The position of a float on the line of all floats, -0 and +0 together.
    fn ordinal(x: f32) -> i64 {
        let b = x.to_bits();
        if b & SIGN != 0 {
            -((b & ABS) as i64)
        } else {
            b as i64
        }
    }

    /// How many floats apart two results are (NaN only matches NaN).
    fn ulps(a: f32, b: f32) -> u64 {
        if a.is_nan() || b.is_nan() {
            return if a.is_nan() && b.is_nan() {
                0
            } else {
                u64::MAX
            };
        }
        (ordinal(a) - ordinal(b)).unsigned_abs()
    }

    fn check_div(a: f32, b: f32) {
        let (ours, ieee) = (div(a, b), a / b);
        assert!(same(ours, ieee), "{a:e} / {b:e}: {ours:e} != {ieee:e}");
    }

    fn check_sqrt(x: f32) {
        let (ours, ieee) = (sqrt(x), x.sqrt());
        assert!(same(ours, ieee), "sqrt({x:e}): {ours:e} != {ieee:e}");
    }

    fn edge_values() -> Vec<f32> {
        let mut v = Vec::new();
        for bits in [
            0u32,
            1,
            2,
            3,
            0x0000_0010,
            0x0040_0000,
            0x007f_fffe,
            0x007f_ffff,
            0x0080_0000,
            0x0080_0001,
            0x0100_0000,
            0x3400_0000,
            0x3f00_0000,
            0x3f80_0000,
            0x3f80_0001,
            0x3fff_ffff,
            0x4000_0000,
            0x4040_0000,
            0x3dcc_cccd,
            0x4049_0fdb,
            0x7eff_ffff,
            0x7f00_0000,
            0x7f7f_fffe,
            0x7f7f_ffff,
            INF,
            QNAN,
            0x7f80_0001,
            0x7fff_ffff,
        ] {
            v.push(f32::from_bits(bits));
            v.push(f32::from_bits(bits | SIGN));
        }
        v
    }

    #[test]
    fn div_is_ieee_division_on_edge_cases() {
        let values = edge_values();
        for &a in &values {
            for &b in &values {
                check_div(a, b);
            }
        }
        let sub = |n: u32| f32::from_bits(n);
        // Halfway cases in the subnormal range round to even; results that underflow to
        // the subnormals, to zero, and that overflow.
        let cases = [
            (sub(3), 2.0),
            (sub(1), 2.0),
            (sub(5), 2.0),
            (sub(7), 4.0),
            (sub(3), 4.0),
            (sub(1), 3.0),
            (sub(1), 1.5),
            (sub(0x007f_ffff), 2.0),
            (f32::MIN_POSITIVE, 2.0),
            (f32::MIN_POSITIVE, 3.0),
            (f32::MIN_POSITIVE, 8_388_608.0),
            (f32::MIN_POSITIVE, 16_777_216.0),
            (f32::MIN_POSITIVE, 16_777_215.0),
            (f32::MIN_POSITIVE, 33_554_432.0),
            (1.0, f32::MAX),
            (3.0, f32::MAX),
            (f32::MAX, 0.5),
            (f32::MAX, 0.999_999_94),
            (f32::MAX, 1.000_000_1),
            (f32::MAX, sub(1)),
            (sub(1), f32::MAX),
            (1.0, sub(1)),
            (1.0, 3.0),
            (2.0, 3.0),
            (1.0, 7.0),
            (10.0, 3.0),
            (-1.0, 3.0),
        ];
        for (a, b) in cases {
            check_div(a, b);
        }
    }

    #[test]
    fn div_is_ieee_division_on_random_bits() {
        let mut rng = Mix(0x5eed_d1f1);
        let mut n = 0u64;
        for _ in 0..3_000_000 {
            let (a, b) = (f32::from_bits(rng.bits()), f32::from_bits(rng.bits()));
            check_div(a, b);
            n += 1;
        }
        // Exponents near the ends of the range: subnormal and overflowing quotients.
        for _ in 0..2_000_000 {
            let (a, b) = (rng.edgy(), rng.edgy());
            check_div(a, b);
            n += 1;
        }
        // Quotients of nearby significands, where the rounding is closest to a tie.
        for _ in 0..1_000_000 {
            let a = rng.bits();
            let b = (a & !0xff) | (rng.bits() & 0xff);
            let (a, b) = (
                f32::from_bits(a),
                f32::from_bits(b ^ (rng.bits() & 0x3f80_0000)),
            );
            check_div(a, b);
            n += 1;
        }
        println!("div: {n} random pairs equal IEEE division");
    }

    #[test]
    fn sqrt_is_ieee_sqrt() {
        for x in edge_values() {
            check_sqrt(x);
        }
        // Every subnormal and the first normals, then random bits and a dense stride.
        for bits in (0..0x0100_0000u32).step_by(3) {
            let x = f32::from_bits(bits);
            check_sqrt(x);
        }
        let mut rng = Mix(0x5eed_5097);
        let mut n = 0u64;
        for _ in 0..3_000_000 {
            let x = f32::from_bits(rng.bits());
            check_sqrt(x);
            n += 1;
        }
        for bits in (0..=u32::MAX).step_by(997) {
            let x = f32::from_bits(bits);
            check_sqrt(x);
            n += 1;
        }
        println!("sqrt: {n} random and swept inputs equal IEEE sqrt");
    }

    /// The worst ULP distance of `ours` from `reference` over `inputs`, and where.
    fn worst(
        inputs: impl Iterator<Item = f32>,
        ours: fn(f32) -> f32,
        reference: fn(f64) -> f64,
    ) -> (u64, f32, u64) {
        let (mut max, mut at, mut n) = (0u64, 0.0f32, 0u64);
        for x in inputs {
            let want = reference(x as f64) as f32;
            let d = ulps(ours(x), want);
            if d > max {
                (max, at) = (d, x);
            }
            n += 1;
        }
        (max, at, n)
    }

    /// A dense sweep of every float (by bit pattern, stride `step`) plus random bits.
    fn sweep(step: usize, seed: u64) -> impl Iterator<Item = f32> {
        let mut rng = Mix(seed);
        (0..=u32::MAX)
            .step_by(step)
            .map(f32::from_bits)
            .chain((0..1_000_000).map(move |_| f32::from_bits(rng.bits())))
    }

    #[test]
    fn exp_is_within_2_ulp() {
        let specials = [
            (f32::NAN, f32::NAN),
            (f32::INFINITY, f32::INFINITY),
            (f32::NEG_INFINITY, 0.0),
            (0.0, 1.0),
            (-0.0, 1.0),
            (89.0, f32::INFINITY),
            (f32::MAX, f32::INFINITY),
            (-104.0, 0.0),
            (f32::MIN, 0.0),
            (f(EXP_MAX), (f(EXP_MAX) as f64).exp() as f32),
            (f(EXP_MIN), f32::from_bits(1)),
        ];
        for (x, want) in specials {
            assert!(
                same(exp(x), want),
                "exp({x:e}) = {:e}, not {want:e}",
                exp(x)
            );
        }
        assert_eq!(exp(f32::from_bits(EXP_MAX + 1)), f32::INFINITY);
        assert_eq!(exp(f32::from_bits(EXP_MIN + 1)).to_bits(), 0);
        // The whole range where exp is neither 1, 0 nor inf, densely, then every float.
        let lo = (-104.0f32).to_bits();
        let hi = 89.0f32.to_bits();
        let dense = (0..hi)
            .step_by(61)
            .chain((SIGN..lo).step_by(61))
            .map(f32::from_bits);
        let (max, at, n) = worst(dense.chain(sweep(997, 0xe4b)), exp, f64::exp);
        println!("exp: max {max} ULP (at x = {at:e}) over {n} inputs");
        assert!(max <= 2, "exp: {max} ULP at {at:e}");
    }

    #[test]
    fn log_is_within_2_ulp() {
        let specials = [
            (f32::NAN, f32::NAN),
            (f32::INFINITY, f32::INFINITY),
            (f32::NEG_INFINITY, f32::NAN),
            (0.0, f32::NEG_INFINITY),
            (-0.0, f32::NEG_INFINITY),
            (-1.0, f32::NAN),
            (-f32::from_bits(1), f32::NAN),
            (1.0, 0.0),
        ];
        for (x, want) in specials {
            assert!(
                same(log(x), want),
                "log({x:e}) = {:e}, not {want:e}",
                log(x)
            );
        }
        let dense = (1..INF).step_by(97).map(f32::from_bits);
        let (max, at, n) = worst(dense.chain(sweep(997, 0x106)), log, f64::ln);
        println!("log: max {max} ULP (at x = {at:e}) over {n} inputs");
        assert!(max <= 2, "log: {max} ULP at {at:e}");
    }

    const WGSL: &str = include_str!("../../shaders/math_strict.wgsl");

    /// The WGSL file with its comments removed.
    fn wgsl_code() -> String {
        WGSL.lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A compute entry point calling the four functions, for the file to be checked with and
    /// run on a device: each element in, `(a, b, x, y)` as bits; out, the bits of
    /// `(div(a, b), sqrt(a), exp(x), log(y))`.
    const HARNESS: &str = r"
@group(0) @binding(0) var<storage, read_write> io: array<vec4<u32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if i >= arrayLength(&io) {
        return;
    }
    let v = io[i];
    io[i] = vec4<u32>(
        bitcast<u32>(soma_div(bitcast<f32>(v.x), bitcast<f32>(v.y))),
        bitcast<u32>(soma_sqrt(bitcast<f32>(v.x))),
        bitcast<u32>(soma_exp(bitcast<f32>(v.z))),
        bitcast<u32>(soma_log(bitcast<f32>(v.w))),
    );
}
";

    fn validate(source: &str) -> naga::Module {
        use naga::valid::{Capabilities, ValidationFlags, Validator};
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("math_strict.wgsl: {}", e.emit_to_string(source)));
        Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("math_strict.wgsl: {}", e.emit_to_string(source)));
        module
    }

    #[test]
    fn wgsl_validates_with_naga_and_declares_only_prefixed_names() {
        validate(&format!("{WGSL}\n{HARNESS}"));
        // On its own: no bindings, no entry points, nothing unprefixed at module scope.
        let module = validate(WGSL);
        assert!(
            module.entry_points.is_empty(),
            "math_strict.wgsl has entry points"
        );
        assert!(
            module.global_variables.is_empty(),
            "math_strict.wgsl has globals"
        );
        let mut names: Vec<String> = module
            .functions
            .iter()
            .filter_map(|(_, f)| f.name.clone())
            .collect();
        names.extend(module.constants.iter().filter_map(|(_, c)| c.name.clone()));
        names.extend(module.types.iter().filter_map(|(_, t)| t.name.clone()));
        for public in ["soma_div", "soma_sqrt", "soma_exp", "soma_log"] {
            assert!(names.iter().any(|n| n == public), "{public} is missing");
        }
        for name in &names {
            assert!(
                name.starts_with("soma_math_")
                    || ["soma_div", "soma_sqrt", "soma_exp", "soma_log"].contains(&name.as_str()),
                "math_strict.wgsl declares `{name}`, without the soma_ or soma_math_ prefix"
            );
        }
    }

    #[test]
    fn wgsl_uses_no_driver_math() {
        let code = wgsl_code();
        for f in ["soma_div", "soma_sqrt", "soma_exp", "soma_log"] {
            assert_eq!(
                code.matches(&format!("fn {f}(")).count(),
                1,
                "fn {f} not found once"
            );
        }
        let forbidden = [
            "fma",
            "exp",
            "exp2",
            "log",
            "log2",
            "sqrt",
            "inverseSqrt",
            "pow",
            "dot",
            "tanh",
        ];
        for (at, _) in code.match_indices('(') {
            let before = &code[..at];
            let word_start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            let word = &before[word_start..];
            assert!(
                !forbidden.contains(&word),
                "math_strict.wgsl calls `{word}(`"
            );
        }
        // No division at all: the float kind is driver-accurate, and nothing needs the other.
        assert!(!code.contains('/'), "math_strict.wgsl divides");
        // The scan saw the calls it must see.
        assert!(code.contains("soma_div(fm, 2.0 + fm)"));
    }

    #[test]
    fn wgsl_constants_are_the_rust_constants() {
        let code = wgsl_code();
        let consts = [
            ("qnan", QNAN),
            ("sign", SIGN),
            ("abs", ABS),
            ("inf", INF),
            ("frac", FRAC),
            ("hidden", HIDDEN),
            ("ln2_hi", LN2_HI),
            ("ln2_lo", LN2_LO),
            ("log2e", LOG2E),
            ("exp_max", EXP_MAX),
            ("exp_min", EXP_MIN),
            ("exp_c2", EXP_C2),
            ("exp_c3", EXP_C3),
            ("exp_c4", EXP_C4),
            ("exp_c5", EXP_C5),
            ("exp_c6", EXP_C6),
            ("exp_c7", EXP_C7),
            ("log_l1", LOG_L1),
            ("log_l2", LOG_L2),
            ("log_l3", LOG_L3),
            ("log_l4", LOG_L4),
            ("log_l5", LOG_L5),
            ("sqrt2_frac", SQRT2_FRAC),
        ];
        assert_eq!(
            code.matches("const ").count(),
            consts.len(),
            "a constant not checked here"
        );
        for (name, bits) in consts {
            let line = format!("const soma_math_{name}: u32 = 0x{bits:08x}u;");
            assert!(code.contains(&line), "math_strict.wgsl lacks `{line}`");
        }
    }

    /// Runs the harness over `inputs` on `gpu`'s device.
    fn run_on_gpu(gpu: &crate::gpu::Gpu, inputs: &[[u32; 4]]) -> Vec<[u32; 4]> {
        use wgpu::util::DeviceExt;
        let _serial = gpu.serial().lock();
        let device = &gpu.device;
        let source = format!("{WGSL}\n{HARNESS}");
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("math_strict.wgsl + harness"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("math_strict harness"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let bytes: &[u8] = bytemuck::cast_slice(inputs);
        let io = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("io"),
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: bytes.len() as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("io"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: io.as_entire_binding(),
            }],
        });
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups((inputs.len() as u32).div_ceil(64), 1, 1);
        }
        encoder.copy_buffer_to_buffer(&io, 0, &staging, 0, bytes.len() as u64);
        gpu.queue.submit([encoder.finish()]);
        let (sender, receiver) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = sender.send(r);
        });
        gpu.wait().expect("device lost");
        receiver.recv().unwrap().expect("map failed");
        let view = staging.get_mapped_range(..).expect("mapped range");
        bytemuck::cast_slice(&view[..]).to_vec()
    }

    /// The WGSL functions on a device against the Rust ones: `div` and `sqrt` (integers only)
    /// bit for bit; `exp` and `log` within 1 ULP, with the mismatches reported (a driver that
    /// contracts a multiply and an add into an fma changes the polynomials' last bits).
    #[test]
    fn wgsl_on_a_device_gives_the_rust_bits() {
        let gpu = match crate::gpu::Gpu::new() {
            Ok(gpu) => gpu,
            Err(e) => {
                if std::env::var("SOMA_REQUIRE_GPU").as_deref() == Ok("1") {
                    panic!("SOMA_REQUIRE_GPU=1 but no GPU adapter: {e}");
                }
                println!("SKIPPED: no GPU adapter ({e})");
                return;
            }
        };
        let mut rng = Mix(0x6b0_5eed);
        let inputs: Vec<[u32; 4]> = (0..100_000u32)
            .map(|i| {
                let (a, b) = if i % 2 == 0 {
                    (rng.bits(), rng.bits())
                } else {
                    (rng.edgy().to_bits(), rng.edgy().to_bits())
                };
                let u = (rng.next() >> 40) as f32 * f32::from_bits(0x3380_0000); // 2^-24
                let x = if i % 4 == 0 {
                    rng.bits()
                } else {
                    (-105.0 + 195.0 * u).to_bits()
                };
                let y = if i % 8 == 0 {
                    rng.bits() & 0x00ff_ffff
                } else {
                    rng.bits() & ABS
                };
                [a, b, x, y]
            })
            .collect();
        let got = run_on_gpu(&gpu, &inputs);
        let (mut div_bad, mut sqrt_bad) = (0, 0);
        let (mut exp_bad, mut exp_max, mut log_bad, mut log_max) = (0, 0, 0, 0);
        let mut first = Vec::new();
        for (v, g) in inputs.iter().zip(&got) {
            let [a, b, x, y] = v.map(f32::from_bits);
            let [gd, gs, ge, gl] = g.map(f32::from_bits);
            if !same(gd, div(a, b)) {
                div_bad += 1;
                first.push(format!(
                    "div({a:e}, {b:e}): gpu {gd:e}, rust {:e}",
                    div(a, b)
                ));
            }
            if !same(gs, sqrt(a)) {
                sqrt_bad += 1;
                first.push(format!("sqrt({a:e}): gpu {gs:e}, rust {:e}", sqrt(a)));
            }
            let d = ulps(ge, exp(x));
            if d > 0 {
                exp_bad += 1;
                exp_max = exp_max.max(d);
                first.push(format!("exp({x:e}): gpu {ge:e}, rust {:e}", exp(x)));
            }
            let d = ulps(gl, log(y));
            if d > 0 {
                log_bad += 1;
                log_max = log_max.max(d);
                first.push(format!("log({y:e}): gpu {gl:e}, rust {:e}", log(y)));
            }
        }
        println!(
            "{} ({:?}): {} inputs; div {div_bad} and sqrt {sqrt_bad} differ; \
             exp {exp_bad} differ (max {exp_max} ULP), log {log_bad} (max {log_max} ULP)",
            gpu.adapter().name,
            gpu.adapter().backend,
            inputs.len()
        );
        for line in first.iter().take(10) {
            println!("  {line}");
        }
        assert_eq!(
            (div_bad, sqrt_bad),
            (0, 0),
            "div and sqrt must match bit for bit"
        );
        assert!(
            exp_max <= 1 && log_max <= 1,
            "exp or log more than 1 ULP off the Rust"
        );
    }
}
