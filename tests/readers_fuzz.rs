//! The fuzz targets' readers (`fuzz/readers.rs`) in the ordinary test run: the seed files of
//! `fuzz/seeds/` are accepted and read as what they hold, known-bad inputs are refused with
//! an error naming the file, and seeded mutations of the seeds and of the fuzz corpus (bit
//! flips, truncations, inserted, deleted and repeated bytes, huge length fields) never make a
//! reader panic or break its contract. `cargo +nightly fuzz` runs the same readers on
//! millions of inputs (FUZZING.md); this is the short, deterministic form.

use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

#[path = "../fuzz/readers.rs"]
#[allow(dead_code)]
mod readers;

use readers::Outcome;

/// Mutated inputs per reader: well under a second of the test run each.
const ROUNDS: usize = 20_000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of a folder, by name; none when it does not exist.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| {
            let path = e.expect("read a directory entry").path();
            let bytes = std::fs::read(&path).expect("read a fuzz input");
            (path.display().to_string(), bytes)
        })
        .collect();
    out.sort();
    out
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = fuzz_dir().join("seeds").join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (rng.next_u64() % n as u64) as usize
    }
}

/// One random edit of `bytes`.
fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>) {
    const HUGE: [u64; 5] = [u32::MAX as u64, 0x8000_0000, 0x7fff_ffff, u64::MAX, 1 << 40];
    const SPECIAL: &[u8] = b"\",\n\r=[]{}0-.e\"\\\xef\x1f\x8b\x00\xff";
    let len = bytes.len();
    match rng.next_u32() % 8 {
        0 if len > 0 => {
            let i = below(rng, len);
            bytes[i] ^= 1 << (rng.next_u32() % 8);
        }
        1 => bytes.truncate(below(rng, len)),
        2 => {
            let at = below(rng, len + 1);
            let n = 1 + below(rng, 8);
            let new: Vec<u8> = (0..n).map(|_| rng.next_u32() as u8).collect();
            bytes.splice(at..at, new);
        }
        3 if len > 0 => {
            let at = below(rng, len);
            let end = (at + 1 + below(rng, 16)).min(len);
            bytes.drain(at..end);
        }
        // A huge number over a length field: anywhere, or in the first 32 bytes, where the
        // IDX dimensions and the safetensors header length are.
        4 | 5 if len > 0 => {
            let at = if rng.next_u32() & 1 == 0 {
                below(rng, len)
            } else {
                below(rng, len.min(32))
            };
            let v = HUGE[below(rng, HUGE.len())];
            let word: Vec<u8> = match rng.next_u32() % 3 {
                0 => (v as u32).to_be_bytes().to_vec(),
                1 => (v as u32).to_le_bytes().to_vec(),
                _ => v.to_le_bytes().to_vec(),
            };
            for (k, b) in word.into_iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + k) {
                    *slot = b;
                }
            }
        }
        6 if len > 0 => {
            let from = below(rng, len);
            let chunk = bytes[from..(from + 1 + below(rng, 32)).min(len)].to_vec();
            let at = below(rng, len + 1);
            bytes.splice(at..at, chunk);
        }
        _ if len > 0 => {
            let i = below(rng, len);
            bytes[i] = SPECIAL[below(rng, SPECIAL.len())];
        }
        _ => bytes.push(rng.next_u32() as u8),
    }
}

/// Every seed of `target` is accepted; `ROUNDS` seeded mutations of the seeds and the
/// corpus run through the reader (which panics on a broken contract), and both accepted and
/// refused inputs occur among them.
fn survives_mutations(target: &str, reader: fn(&[u8]) -> Outcome) {
    let seeds = files(&fuzz_dir().join("seeds").join(target));
    assert!(!seeds.is_empty(), "no seeds for {target}");
    for (name, bytes) in &seeds {
        assert_eq!(reader(bytes), Outcome::Accepted, "{name}");
    }
    let mut inputs = seeds;
    inputs.extend(files(&fuzz_dir().join("corpus").join(target)));
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed ^ target.len() as u64);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..ROUNDS {
        let (name, original) = &inputs[below(&mut rng, inputs.len())];
        let mut input = original.clone();
        for _ in 0..1 + below(&mut rng, 4) {
            mutate(&mut rng, &mut input);
        }
        let outcome = std::panic::catch_unwind(|| reader(&input)).unwrap_or_else(|panic| {
            eprintln!("{target}: a mutation of {name} failed: {input:02x?}");
            std::panic::resume_unwind(panic)
        });
        match outcome {
            Outcome::Accepted => accepted += 1,
            Outcome::Refused(_) => refused += 1,
        }
    }
    assert!(
        accepted > 0 && refused > 0,
        "{target}: {accepted} accepted, {refused} refused"
    );
}

fn refused(outcome: Outcome) -> String {
    match outcome {
        Outcome::Refused(m) => m,
        Outcome::Accepted => panic!("accepted a bad input"),
    }
}

#[test]
fn idx_reader() {
    survives_mutations("idx", readers::idx);
    // The seed holds the first two MNIST test images: labels 7 and 2.
    let data = seed("idx", "mnist-2-raw.idx");
    let len = u32::from_le_bytes(data[1..5].try_into().unwrap()) as usize;
    let (images, labels) = data[5..].split_at(len);
    let ds = soma::data::parse_idx(Path::new("i"), images, Path::new("l"), labels).unwrap();
    assert_eq!((ds.len(), ds.width), (2, 784));
    assert_eq!(ds.labels(), Some(&[7u32, 2][..]));
    // Four billion images claimed in a 3-image file, raw and gzipped.
    for flags in [0u8, 1] {
        let mut huge = seed("idx", "tiny-3x2x3.idx");
        huge[0] = flags;
        huge[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        let m = refused(readers::idx(&huge));
        assert!(m.starts_with("in-images: truncated body"), "{m}");
    }
}

#[test]
fn csv_reader() {
    survives_mutations("csv", readers::csv);
    let text = String::from_utf8(seed("csv", "wine-head.csv")[1..].to_vec()).unwrap();
    let ds = soma::data::parse_csv(&text, Path::new("w"), &Default::default()).unwrap();
    assert_eq!((ds.len(), ds.width), (5, 13));
    let m = refused(readers::csv(b"\x00a,b,y\n1,2,0\n3,,1\n"));
    assert_eq!(
        m,
        "in.csv:3: empty cell in column 1 ('b'): a missing value (--impute mean fills it)"
    );
    let m = refused(readers::csv(b"\x00a,b,y\n1,2\n"));
    assert!(m.starts_with("in.csv:2: expected 3 columns"), "{m}");
}

#[test]
fn checkpoint_reader() {
    survives_mutations("checkpoint", readers::checkpoint);
    let ckpt = soma::checkpoint::load_bytes(
        Path::new("c"),
        &seed("checkpoint", "iris-4-5-3-adam.safetensors"),
    )
    .unwrap();
    assert_eq!(ckpt.network.widths(), vec![4, 5, 3]);
    assert_eq!(ckpt.classes, Some(3));
    assert!(ckpt.resume.is_some());
    let good = seed("checkpoint", "iris-4-5-3-adam.safetensors");
    let m = refused(readers::checkpoint(&good[..good.len() - 1]));
    assert!(m.starts_with("checkpoint in.safetensors: truncated"), "{m}");
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let m = refused(readers::checkpoint(&huge));
    assert!(m.contains("in.safetensors") && m.contains("header"), "{m}");
}

#[test]
fn toml_reader() {
    survives_mutations("toml", readers::toml);
    let text = String::from_utf8(seed("toml", "full.toml")).unwrap();
    let o = readers::options::TrainOptions::from_toml_str(&text, Path::new("t")).unwrap();
    assert_eq!(o.layers.as_deref(), Some("13,32,16,3"));
    assert_eq!((o.epochs, o.centered), (Some(3), true));
    let m = refused(readers::toml(b"epochs = 2\nseed = \n"));
    assert!(m.starts_with("in.toml:2: "), "{m}");
}
