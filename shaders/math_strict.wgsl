// soma's own f32 routines for strict mode: soma_div, soma_sqrt, soma_exp, soma_log.
//
// This file is prepended to the kernels that use it: it declares no bindings and no entry
// points, and every name in it starts with soma_ (the four functions) or soma_math_ (the
// helpers and constants, lowercase so that the prefix is exact).
//
// Each function mirrors src/math/strict.rs operation for operation: the same constants
// (given by their bits and bitcast here, f32::from_bits there), the same order of every float
// operation, the same guarded shifts (every variable shift amount is below 32 in both
// languages) and fixed loop counts. Nothing here uses a float division, fma, dot, or a
// builtin exponential, logarithm, power or square root, whose accuracy WGSL leaves to the
// driver. soma_div and soma_sqrt use integers only and are correctly rounded; soma_exp and
// soma_log use f32 add, subtract and multiply (and soma_div), and are within 2 ULP. So they
// give the CPU twin's bits on every adapter that rounds + - * to nearest-even, keeps
// subnormals and does not contract a multiply and an add into an fma. Change both files
// together; the Rust tests check this file's constants against the Rust ones.

const soma_math_qnan: u32 = 0x7fc00000u;
const soma_math_sign: u32 = 0x80000000u;
const soma_math_abs: u32 = 0x7fffffffu;
const soma_math_inf: u32 = 0x7f800000u;
const soma_math_frac: u32 = 0x007fffffu;
const soma_math_hidden: u32 = 0x00800000u;
const soma_math_ln2_hi: u32 = 0x3f317200u;
const soma_math_ln2_lo: u32 = 0x35bfbe8eu;
const soma_math_log2e: u32 = 0x3fb8aa3bu;
const soma_math_exp_max: u32 = 0x42b17217u;
const soma_math_exp_min: u32 = 0xc2cff1b4u;
const soma_math_exp_c2: u32 = 0x3f000000u;
const soma_math_exp_c3: u32 = 0x3e2aaaabu;
const soma_math_exp_c4: u32 = 0x3d2aaaabu;
const soma_math_exp_c5: u32 = 0x3c088889u;
const soma_math_exp_c6: u32 = 0x3ab60b61u;
const soma_math_exp_c7: u32 = 0x39500d01u;
const soma_math_log_l1: u32 = 0x3f2aaaabu;
const soma_math_log_l2: u32 = 0x3ecccccdu;
const soma_math_log_l3: u32 = 0x3e924925u;
const soma_math_log_l4: u32 = 0x3e638e39u;
const soma_math_log_l5: u32 = 0x3e3a2e8cu;
const soma_math_sqrt2_frac: u32 = 0x003504f3u;

// The float with these bits. A function, not a constant expression, so that NaN and inf
// (which WGSL constant expressions may not hold) are made at run time as in Rust's f().
fn soma_math_f(bits: u32) -> f32 {
    return bitcast<f32>(bits);
}

struct soma_math_unpacked {
    m: u32,
    e: i32,
}

// Rust: unpack. The significand (hidden bit at bit 23) and biased exponent of a nonzero
// finite magnitude, a subnormal normalized with its leading zeros.
fn soma_math_unpack(mag: u32) -> soma_math_unpacked {
    let field = mag >> 23u;
    if field == 0u {
        let lz = countLeadingZeros(mag) - 8u;
        return soma_math_unpacked(mag << lz, 1 - i32(lz));
    }
    return soma_math_unpacked((mag & soma_math_frac) | soma_math_hidden, i32(field));
}

// Rust: round_pack. Rounds q * 2^(e - 152) (q's leading 1 at bit 25) to nearest-even, with
// gradual underflow, and packs it with sign.
fn soma_math_round_pack(sign: u32, e: i32, q: u32, sticky: bool) -> f32 {
    var shift = 2u;
    var field = u32(e - 1);
    if e < 1 {
        shift = min(2u + u32(1 - e), 27u);
        field = 0u;
    }
    let kept = q >> shift;
    let rest = q & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    var up = 0u;
    if rest > half || (rest == half && (sticky || (kept & 1u) == 1u)) {
        up = 1u;
    }
    return soma_math_f(sign | ((field << 23u) + kept + up));
}

// Rust: div. Correctly rounded a / b by restoring long division of the significands.
fn soma_div(a: f32, b: f32) -> f32 {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    let sign = (ua ^ ub) & soma_math_sign;
    let xa = ua & soma_math_abs;
    let xb = ub & soma_math_abs;
    if xa > soma_math_inf || xb > soma_math_inf {
        return soma_math_f(soma_math_qnan);
    }
    if xa == soma_math_inf {
        if xb == soma_math_inf {
            return soma_math_f(soma_math_qnan);
        }
        return soma_math_f(sign | soma_math_inf);
    }
    if xb == soma_math_inf {
        return soma_math_f(sign);
    }
    if xb == 0u {
        if xa == 0u {
            return soma_math_f(soma_math_qnan);
        }
        return soma_math_f(sign | soma_math_inf);
    }
    if xa == 0u {
        return soma_math_f(sign);
    }
    let pa = soma_math_unpack(xa);
    let pb = soma_math_unpack(xb);
    let ma = pa.m;
    let mb = pb.m;
    var e = pa.e - pb.e + 127;
    var r = ma;
    if r < mb {
        r = r << 1u;
        e = e - 1;
    }
    var q = 0u;
    for (var i = 0u; i < 26u; i++) {
        q = q << 1u;
        if r >= mb {
            r = r - mb;
            q = q | 1u;
        }
        r = r << 1u;
    }
    if e > 254 {
        return soma_math_f(sign | soma_math_inf);
    }
    return soma_math_round_pack(sign, e, q, r != 0u);
}

// Rust: sqrt. Correctly rounded square root, digit by digit over the radicand's bit pairs.
fn soma_sqrt(x: f32) -> f32 {
    let u = bitcast<u32>(x);
    let mag = u & soma_math_abs;
    if mag > soma_math_inf {
        return soma_math_f(soma_math_qnan);
    }
    if mag == 0u {
        return x;
    }
    if (u & soma_math_sign) != 0u {
        return soma_math_f(soma_math_qnan);
    }
    if mag == soma_math_inf {
        return x;
    }
    let p = soma_math_unpack(mag);
    let m = p.m;
    let e = p.e - 127;
    let odd = u32(e & 1);
    let radicand = m << (1u + odd);
    let half_e = (e - (e & 1)) >> 1u;
    var rem = 0u;
    var root = 0u;
    for (var i = 0u; i < 25u; i++) {
        var pair = 0u;
        if i < 13u {
            pair = (radicand >> (24u - 2u * i)) & 3u;
        }
        rem = (rem << 2u) | pair;
        let trial = (root << 2u) | 1u;
        root = root << 1u;
        if rem >= trial {
            rem = rem - trial;
            root = root | 1u;
        }
    }
    let kept = root >> 1u;
    var up = 0u;
    if (root & 1u) == 1u && (rem != 0u || (kept & 1u) == 1u) {
        up = 1u;
    }
    return soma_math_f((u32(half_e + 126) << 23u) + kept + up);
}

// Rust: exp. Cody-Waite reduction by k ln 2, Taylor polynomial to r^7 (Horner), scaling by
// 2^k from bits (in two steps for a subnormal result).
fn soma_exp(x: f32) -> f32 {
    if (bitcast<u32>(x) & soma_math_abs) > soma_math_inf {
        return soma_math_f(soma_math_qnan);
    }
    if x > soma_math_f(soma_math_exp_max) {
        return soma_math_f(soma_math_inf);
    }
    if x < soma_math_f(soma_math_exp_min) {
        return 0.0;
    }
    let kf = floor(x * soma_math_f(soma_math_log2e) + 0.5);
    let k = i32(kf);
    let hi = x - kf * soma_math_f(soma_math_ln2_hi);
    let lo = kf * soma_math_f(soma_math_ln2_lo);
    let r = hi - lo;
    let r2 = r * r;
    let q = soma_math_f(soma_math_exp_c2)
        + r * (soma_math_f(soma_math_exp_c3)
        + r * (soma_math_f(soma_math_exp_c4)
        + r * (soma_math_f(soma_math_exp_c5)
        + r * (soma_math_f(soma_math_exp_c6)
        + r * soma_math_f(soma_math_exp_c7)))));
    let p = 1.0 + (r + r2 * q);
    if k > 127 {
        return (p * 2.0) * soma_math_f(u32(k - 1 + 127) << 23u);
    }
    if k < -126 {
        return (p * soma_math_f(u32(k + 64 + 127) << 23u)) * soma_math_f(u32(127 - 64) << 23u);
    }
    return p * soma_math_f(u32(k + 127) << 23u);
}

// Rust: log. x = 2^e m, m in [sqrt(1/2), sqrt(2)), f = m - 1, s = f / (2 + f) by soma_div,
// log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), plus e ln 2 in two parts.
fn soma_log(x: f32) -> f32 {
    let u = bitcast<u32>(x);
    let mag = u & soma_math_abs;
    if mag > soma_math_inf {
        return soma_math_f(soma_math_qnan);
    }
    if mag == 0u {
        return soma_math_f(soma_math_sign | soma_math_inf);
    }
    if (u & soma_math_sign) != 0u {
        return soma_math_f(soma_math_qnan);
    }
    if mag == soma_math_inf {
        return x;
    }
    let p = soma_math_unpack(mag);
    let frac = p.m & soma_math_frac;
    var e = p.e - 127;
    var mbits = frac | (127u << 23u);
    if frac > soma_math_sqrt2_frac {
        mbits = frac | (126u << 23u);
        e = e + 1;
    }
    let fm = soma_math_f(mbits) - 1.0;
    let s = soma_div(fm, 2.0 + fm);
    let z = s * s;
    let r = z * (soma_math_f(soma_math_log_l1)
        + z * (soma_math_f(soma_math_log_l2)
        + z * (soma_math_f(soma_math_log_l3)
        + z * (soma_math_f(soma_math_log_l4)
        + z * soma_math_f(soma_math_log_l5)))));
    let hfsq = 0.5 * (fm * fm);
    let dk = f32(e);
    return dk * soma_math_f(soma_math_ln2_hi)
        - ((hfsq - (s * (hfsq + r) + dk * soma_math_f(soma_math_ln2_lo))) - fm);
}
