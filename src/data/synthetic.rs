//! Synthetic benchmark datasets built from an integer hash, so every implementation (this
//! crate, a Python reference, a GPU shader) can regenerate the same numbers bit for bit with
//! no RNG library: `b2_synthetic` (MNIST-shaped, 784 features, 10 classes) and `b3_synthetic`
//! (a 2-input product regression). It does not own the benchmarks themselves.
//!
//! The spec: `hash32` is "lowbias32" on wrapping `u32`s,
//! `x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16`, and
//! `unit(h) = (h >> 8) as f32 * 2^-24`, an exact float in [0, 1).

use super::{Dataset, Targets};

/// Width of a B2 sample (28 x 28).
const B2_WIDTH: usize = 784;
/// Rows of B3.
const B3_ROWS: usize = 4096;

/// The lowbias32 integer hash (wrapping arithmetic on `u32`).
pub fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The top 24 bits of `h` as an exact float in [0, 1): `(h >> 8) as f32 * 2^-24`.
pub fn unit(h: u32) -> f32 {
    (h >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// B2: `rows` samples of 784 features, `x[j][k] = unit(hash32(j * 784 + k))` (flat index,
/// wrapping to `u32`), labels `hash32(0x8000_0000 + j) % 10`, 10 classes. Named `b2-synthetic`.
pub fn b2_synthetic(rows: usize) -> Dataset {
    let mut features = Vec::with_capacity(rows * B2_WIDTH);
    for j in 0..rows {
        let base = (j as u32).wrapping_mul(B2_WIDTH as u32);
        features.extend((0..B2_WIDTH as u32).map(|k| unit(hash32(base.wrapping_add(k)))));
    }
    let labels = (0..rows)
        .map(|j| hash32(0x8000_0000u32.wrapping_add(j as u32)) % 10)
        .collect();
    Dataset {
        name: "b2-synthetic".to_string(),
        features,
        width: B2_WIDTH,
        targets: Targets::Classes {
            labels,
            classes: 10,
        },
        names: Default::default(),
    }
}

/// B3: 4096 samples of 2 features, `x[j][c] = unit(hash32(0x4000_0000 + 2j + c))`, with the
/// regression target `y[j] = x[j][0] * x[j][1]` (width 1). Named `b3-synthetic`.
pub fn b3_synthetic() -> Dataset {
    let mut features = Vec::with_capacity(B3_ROWS * 2);
    let mut values = Vec::with_capacity(B3_ROWS);
    for j in 0..B3_ROWS as u32 {
        let x0 = unit(hash32(0x4000_0000 + 2 * j));
        let x1 = unit(hash32(0x4000_0000 + 2 * j + 1));
        features.extend([x0, x1]);
        values.push(x0 * x1);
    }
    Dataset {
        name: "b3-synthetic".to_string(),
        features,
        width: 2,
        targets: Targets::Values { values, width: 1 },
        names: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash32_matches_hand_computation() {
        // hash32(1), step by step (all mod 2^32):
        //   x = 1;            x ^= x >> 16  -> 0x00000001
        //   x *= 0x7feb352d                 -> 0x7feb352d
        //   x ^= x >> 15 (0x0000ffd6)       -> 0x7febcafb
        //   x *= 0x846ca68b                 -> 0x6889f849
        //   x ^= x >> 16 (0x00006889)       -> 0x688990c0 = 1753845952
        assert_eq!(hash32(1), 0x6889_90c0);
        // 0 is a fixed point (every step maps 0 to 0).
        assert_eq!(hash32(0), 0);
        // hash32(0x80000000): 0x80008000 -> 0x1a968000 -> 0x1a96b52d -> 0xcc4b8d6f -> 0xcc4b4124.
        assert_eq!(hash32(0x8000_0000), 0xcc4b_4124);
        // unit keeps the top 24 bits: 0x688990 / 2^24.
        assert_eq!(unit(0x6889_90c0), 0x0068_8990 as f32 / 16_777_216.0);
        assert_eq!(unit(u32::MAX), 1.0 - 1.0 / 16_777_216.0);
    }

    #[test]
    fn b2_follows_the_spec() {
        let ds = b2_synthetic(3);
        assert_eq!(
            (ds.len(), ds.width, ds.targets.classes()),
            (3, 784, Some(10))
        );
        assert_eq!(ds.row(0)[0], 0.0); // unit(hash32(0))
        assert_eq!(ds.row(0)[1], unit(hash32(1)));
        assert_eq!(ds.row(1)[0], unit(hash32(784)));
        assert_eq!(ds.row(2)[783], unit(hash32(2 * 784 + 783)));
        // hash32(0x80000000) % 10 = 3427483940 % 10 = 0.
        assert_eq!(ds.labels().expect("labels")[0], 0);
        assert_eq!(ds.labels().expect("labels"), &[0, 9, 6]);
        ds.validate().expect("valid");
        assert_eq!(b2_synthetic(3), ds);
        assert!(b2_synthetic(0).is_empty());
    }

    #[test]
    fn b3_follows_the_spec() {
        let ds = b3_synthetic();
        assert_eq!((ds.len(), ds.width, ds.targets.classes()), (4096, 2, None));
        let x0 = unit(hash32(0x4000_0000));
        assert_eq!(ds.row(0), &[x0, unit(hash32(0x4000_0001))]);
        assert_eq!(ds.row(4095)[1], unit(hash32(0x4000_0000 + 2 * 4095 + 1)));
        match &ds.targets {
            Targets::Values { values, width } => {
                assert_eq!(*width, 1);
                assert_eq!(values.len(), ds.len());
                for (j, &y) in values.iter().enumerate() {
                    assert_eq!(y, ds.row(j)[0] * ds.row(j)[1]);
                }
            }
            other => panic!("b3 targets: {other:?}"),
        }
        ds.validate().expect("valid");
    }
}
