//! IDX files (the binary format of MNIST and its relatives) to [`Dataset`]s: an image file
//! (magic 2051, unsigned bytes, `count x rows x cols`) plus a label file (magic 2049,
//! unsigned bytes, `count`), each raw or gzip-compressed. It owns the header and size checks
//! and finding the four MNIST files in a folder. It does not own other IDX element types
//! (int, float) or other dimension counts, nor downloading anything.
//!
//! Pixels become `f32` in [0, 1] (`byte / 255`); the class count is the largest label + 1.

use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{Dataset, Targets};
use crate::{Error, Result};

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images).
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Loads an image file and its label file (each raw or gzipped) into one dataset of
/// `rows * cols` features per sample, named after the image file.
pub fn load_idx(images: &Path, labels: &Path) -> Result<Dataset> {
    let image_bytes = std::fs::read(images).map_err(|e| Error::io(images, e))?;
    let label_bytes = std::fs::read(labels).map_err(|e| Error::io(labels, e))?;
    parse_idx(images, &image_bytes, labels, &label_bytes)
}

/// Parses the bytes of an image file and of its label file (each raw or gzipped, see
/// [`load_idx`]); the paths name the files in errors and give the dataset's name. Every size
/// in a header is checked against the bytes that follow it before anything is allocated for
/// it, and a gzipped file is decompressed no further than its header says it reaches.
pub fn parse_idx(
    images: &Path,
    image_bytes: &[u8],
    labels: &Path,
    label_bytes: &[u8],
) -> Result<Dataset> {
    let (dims, pixels) = read_idx(images, image_bytes, IMAGES_MAGIC, "image")?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    let (label_dims, label_body) = read_idx(labels, label_bytes, LABELS_MAGIC, "label")?;
    let label_count = label_dims[0];
    if count != label_count {
        return Err(Error::Format {
            path: labels.to_path_buf(),
            line: None,
            message: format!(
                "holds {label_count} labels, but the image file {} holds {count} images",
                images.display()
            ),
        });
    }
    if count == 0 {
        return Err(Error::Format {
            path: images.to_path_buf(),
            line: None,
            message: "holds 0 images".to_string(),
        });
    }
    let labels_vec: Vec<u32> = label_body.iter().map(|&b| u32::from(b)).collect();
    let classes = labels_vec.iter().max().map_or(0, |&m| m as usize + 1);
    let features: Vec<f32> = pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
    Ok(Dataset {
        name: idx_name(images),
        features,
        width: rows * cols,
        targets: Targets::Classes {
            labels: labels_vec,
            classes,
        },
        names: Default::default(),
    })
}

/// Loads MNIST from a folder: `(train, test)`, named `mnist-train` and `mnist-test`. Each of
/// the four files may be named `train-images-idx3-ubyte` or `train-images.idx3-ubyte`
/// (likewise `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`),
/// with or without `.gz`. Both sets get the same class count (the larger of the two).
pub fn load_mnist_dir(dir: &Path) -> Result<(Dataset, Dataset)> {
    let find = |stem: &str, kind: &str| -> Result<PathBuf> {
        let mut tried = Vec::new();
        for sep in ['-', '.'] {
            for ext in ["", ".gz"] {
                let path = dir.join(format!("{stem}{sep}{kind}{ext}"));
                if path.is_file() {
                    return Ok(path);
                }
                tried.push(path.display().to_string());
            }
        }
        Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no MNIST file {stem}-{kind}; tried {}", tried.join(", ")),
            ),
        ))
    };
    let mut train = load_idx(
        &find("train-images", "idx3-ubyte")?,
        &find("train-labels", "idx1-ubyte")?,
    )?;
    let mut test = load_idx(
        &find("t10k-images", "idx3-ubyte")?,
        &find("t10k-labels", "idx1-ubyte")?,
    )?;
    train.name = "mnist-train".to_string();
    test.name = "mnist-test".to_string();
    let classes = train
        .targets
        .classes()
        .max(test.targets.classes())
        .unwrap_or(0);
    for ds in [&mut train, &mut test] {
        if let Targets::Classes { classes: c, .. } = &mut ds.targets {
            *c = classes;
        }
    }
    Ok((train, test))
}

/// The dimensions and body of an IDX file's bytes, gunzipped first when they start with the
/// gzip magic `1f 8b`.
fn read_idx<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
    what: &str,
) -> Result<(Vec<usize>, Cow<'a, [u8]>)> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        let (dims, body) = header(path, bytes, magic, what)?;
        check_body(path, &dims, body.len(), false)?;
        return Ok((dims, Cow::Borrowed(body)));
    }
    let gz_error = |e: std::io::Error| Error::Format {
        path: path.to_path_buf(),
        line: None,
        message: format!("starts like gzip but does not decompress: {e}"),
    };
    let mut decoder = MultiGzDecoder::new(bytes);
    // The header first; it says how many bytes the body may have.
    let header_len = 4 + 4 * (magic & 0xff) as u64;
    let mut head = Vec::new();
    (&mut decoder)
        .take(header_len)
        .read_to_end(&mut head)
        .map_err(gz_error)?;
    let (dims, _) = header(path, &head, magic, what)?;
    let expected = body_len(path, &dims)?;
    // One byte more than that tells a body with trailing bytes from one that fits.
    let limit = (expected as u64).saturating_add(1);
    let mut body = Vec::new();
    decoder
        .take(limit)
        .read_to_end(&mut body)
        .map_err(gz_error)?;
    check_body(path, &dims, body.len(), body.len() as u64 == limit)?;
    Ok((dims, Cow::Owned(body)))
}

/// Checks an IDX header against `magic`; returns the dimensions and the bytes after the
/// header (not yet checked against them).
fn header<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
    what: &str,
) -> Result<(Vec<usize>, &'a [u8])> {
    let format_error = |message: String| Error::Format {
        path: path.to_path_buf(),
        line: None,
        message,
    };
    let word = |i: usize| -> Option<u32> {
        let b = bytes.get(4 * i..4 * i + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let Some(found) = word(0) else {
        return Err(format_error(format!(
            "too short for an IDX {what} file: {} bytes, no 4-byte magic number",
            bytes.len()
        )));
    };
    if found != magic {
        let hint = match found {
            IMAGES_MAGIC => " (this is an image file)".to_string(),
            LABELS_MAGIC => " (this is a label file)".to_string(),
            m if m >> 16 == 0 && (m >> 8) & 0xff != 0x08 => format!(
                " (element type 0x{:02x}; only unsigned bytes, 0x08, are supported)",
                (m >> 8) & 0xff
            ),
            m if m >> 16 != 0 => " (not an IDX file)".to_string(),
            _ => String::new(),
        };
        return Err(format_error(format!(
            "bad magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x}) for an IDX {what} file{hint}"
        )));
    }
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    let mut dims = Vec::with_capacity(ndims);
    for i in 1..=ndims {
        match word(i) {
            Some(d) => dims.push(d as usize),
            None => {
                return Err(format_error(format!(
                    "truncated header: expected {header} bytes, got {}",
                    bytes.len()
                )))
            }
        }
    }
    Ok((dims, &bytes[header..]))
}

fn shape(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(" x ")
}

/// The body's length in bytes that the dimensions call for.
fn body_len(path: &Path, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Format {
            path: path.to_path_buf(),
            line: None,
            message: format!("dimensions {} are too large", shape(dims)),
        })
}

/// Checks that a body of `got` bytes (`more`: and then some, not read) is what the dimensions
/// call for.
fn check_body(path: &Path, dims: &[usize], got: usize, more: bool) -> Result<()> {
    let expected = body_len(path, dims)?;
    if got == expected && !more {
        return Ok(());
    }
    let header = 4 + 4 * dims.len();
    let (what, got) = if got < expected {
        ("truncated", got.to_string())
    } else if more {
        ("trailing bytes after the", format!("more than {expected}"))
    } else {
        ("trailing bytes after the", got.to_string())
    };
    Err(Error::Format {
        path: path.to_path_buf(),
        line: None,
        message: format!(
            "{what} body: expected {expected} bytes ({}) after the {header}-byte header, got {got}",
            shape(dims)
        ),
    })
}

/// `train-images-idx3-ubyte.gz` -> `train-images-idx3-ubyte`.
fn idx_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map_or_else(|| "idx".to_string(), |n| n.to_string_lossy().into_owned());
    name.strip_suffix(".gz").map(str::to_string).unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    /// An IDX image file of `count` 2x3 images whose pixel p of image i is `i * 6 + p`
    /// (as a byte), and a label file with labels `i % 3`.
    fn tiny_idx(count: u32) -> (Vec<u8>, Vec<u8>) {
        let mut images = vec![0, 0, 8, 3];
        for d in [count, 2, 3] {
            images.extend_from_slice(&d.to_be_bytes());
        }
        images.extend((0..count * 6).map(|v| (v % 256) as u8));
        let mut labels = vec![0, 0, 8, 1];
        labels.extend_from_slice(&count.to_be_bytes());
        labels.extend((0..count).map(|i| (i % 3) as u8));
        (images, labels)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).expect("gzip");
        enc.finish().expect("gzip")
    }

    fn format_message(r: Result<Dataset>) -> String {
        match r {
            Err(Error::Format { message, .. }) => message,
            other => panic!("expected a Format error, got {other:?}"),
        }
    }

    #[test]
    fn tiny_raw_and_gzipped_pairs_load() {
        let dir = crate::data::test_temp_dir("idx");
        let (images, labels) = tiny_idx(4);
        let files = [
            ("a-images", images.clone()),
            ("a-labels", labels.clone()),
            ("b-images.gz", gzip(&images)),
            ("b-labels.gz", gzip(&labels)),
        ];
        for (name, bytes) in &files {
            std::fs::write(dir.join(name), bytes).expect("write");
        }
        let raw = load_idx(&dir.join("a-images"), &dir.join("a-labels")).expect("raw");
        let gz = load_idx(&dir.join("b-images.gz"), &dir.join("b-labels.gz")).expect("gz");
        assert_eq!(raw.name, "a-images");
        assert_eq!(gz.name, "b-images");
        assert_eq!(
            (raw.len(), raw.width, raw.targets.classes()),
            (4, 6, Some(3))
        );
        assert_eq!(raw.labels(), Some(&[0u32, 1, 2, 0][..]));
        assert_eq!(raw.row(1)[0], 6.0 / 255.0);
        assert_eq!(raw.row(3)[5], 23.0 / 255.0);
        assert_eq!(raw.features, gz.features);
        assert_eq!(raw.targets, gz.targets);
        raw.validate().expect("valid");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_headers_and_sizes_are_format_errors() {
        let dir = crate::data::test_temp_dir("idx-bad");
        let (images, labels) = tiny_idx(4);
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).expect("write");
            p
        };
        let good_images = write("images", &images);
        let good_labels = write("labels", &labels);

        let mut bad = images.clone();
        bad[3] = 2;
        let m = format_message(load_idx(&write("bad-magic", &bad), &good_labels));
        assert!(
            m.contains("bad magic number 2050") && m.contains("2051"),
            "{m}"
        );
        let m = format_message(load_idx(&good_labels, &good_labels));
        assert!(m.contains("label file"), "{m}");
        let mut float = images.clone();
        float[2] = 0x0d;
        let m = format_message(load_idx(&write("float", &float), &good_labels));
        assert!(m.contains("0x0d"), "{m}");

        let m = format_message(load_idx(
            &write("short", &images[..images.len() - 5]),
            &good_labels,
        ));
        assert!(
            m.contains("truncated") && m.contains("expected 24 bytes") && m.contains("got 19"),
            "{m}"
        );
        let mut long = images.clone();
        long.push(0);
        let m = format_message(load_idx(&write("long", &long), &good_labels));
        assert!(m.contains("trailing") && m.contains("got 25"), "{m}");
        let m = format_message(load_idx(&write("head", &images[..10]), &good_labels));
        assert!(m.contains("truncated header"), "{m}");
        let m = format_message(load_idx(&write("empty", &[]), &good_labels));
        assert!(m.contains("too short"), "{m}");

        let (_, labels3) = tiny_idx(3);
        let m = format_message(load_idx(&good_images, &write("labels3", &labels3)));
        assert!(m.contains("3 labels") && m.contains("4 images"), "{m}");

        let broken_gz = gzip(&images)[..20].to_vec();
        let m = format_message(load_idx(&write("broken.gz", &broken_gz), &good_labels));
        assert!(m.contains("gzip"), "{m}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn headers_claiming_more_than_the_file_holds_are_refused() {
        let (images, labels) = tiny_idx(4);
        let (img, lab) = (Path::new("in/images.gz"), Path::new("in/labels"));
        // Raw and gzipped: 4 billion images of 2x3 in a file of 4.
        let mut huge = images.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        for bytes in [huge.clone(), gzip(&huge)] {
            let m = format_message(parse_idx(img, &bytes, lab, &labels));
            assert!(
                m.contains("truncated body") && m.contains("expected 25769803770 bytes"),
                "{m}"
            );
        }
        // Dimensions whose product overflows.
        huge[8..16].copy_from_slice(&[0xff; 8]);
        let m = format_message(parse_idx(img, &gzip(&huge), lab, &labels));
        assert!(m.contains("too large"), "{m}");
        // A gzipped body far longer than its header says is read no further than that.
        let mut long = images.clone();
        long.resize(images.len() + 50_000_000, 0);
        let m = format_message(parse_idx(img, &gzip(&long), lab, &labels));
        assert!(
            m.contains("trailing") && m.contains("got more than 24"),
            "{m}"
        );
        let err = parse_idx(img, &gzip(&images[..10]), lab, &labels).unwrap_err();
        assert_eq!(
            err.to_string(),
            "in/images.gz: truncated header: expected 16 bytes, got 10"
        );
        let ds = parse_idx(img, &gzip(&images), lab, &gzip(&labels)).expect("gzipped pair");
        assert_eq!((ds.name.as_str(), ds.len()), ("images", 4));
    }

    #[test]
    fn mnist_dir_accepts_both_spellings_and_names_missing_paths() {
        let dir = crate::data::test_temp_dir("mnist");
        let (images, labels) = tiny_idx(5);
        std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gzip(&images)).expect("w");
        std::fs::write(dir.join("train-labels.idx1-ubyte"), &labels).expect("w");
        std::fs::write(dir.join("t10k-images.idx3-ubyte"), &images[..]).expect("w");
        match load_mnist_dir(&dir) {
            Err(Error::Io { source, .. }) => {
                let m = source.to_string();
                assert!(
                    m.contains("t10k-labels-idx1-ubyte.gz") && m.contains("t10k-labels.idx1-ubyte"),
                    "{m}"
                );
            }
            other => panic!("expected a missing-file error, got {other:?}"),
        }
        let (_, two_labels) = tiny_idx(2);
        let (two_images, _) = tiny_idx(2);
        std::fs::write(dir.join("t10k-images.idx3-ubyte"), &two_images).expect("w");
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), &two_labels).expect("w");
        let (train, test) = load_mnist_dir(&dir).expect("mnist dir");
        assert_eq!((train.name.as_str(), train.len()), ("mnist-train", 5));
        assert_eq!((test.name.as_str(), test.len()), ("mnist-test", 2));
        // Test labels are 0,1 only, but both sets share the class count.
        assert_eq!(test.targets.classes(), Some(3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn real_mnist_when_present() {
        let Some(dir) = crate::data::shared_data("mnist") else {
            return;
        };
        let dir = dir.as_path();
        let test = load_idx(
            &dir.join("t10k-images-idx3-ubyte.gz"),
            &dir.join("t10k-labels-idx1-ubyte.gz"),
        )
        .expect("mnist test");
        assert_eq!(
            (test.len(), test.width, test.targets.classes()),
            (10000, 784, Some(10))
        );
        assert_eq!(
            &test.labels().expect("labels")[..10],
            &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
        );
        let mean =
            test.features.iter().map(|&v| f64::from(v)).sum::<f64>() / test.features.len() as f64;
        assert!((mean - 0.132515).abs() < 1e-5, "{mean}");
        test.validate().expect("valid");

        let (train, test2) = load_mnist_dir(dir).expect("mnist dir");
        assert_eq!(test2.features, test.features);
        assert_eq!((train.len(), train.targets.classes()), (60000, Some(10)));
        assert_eq!(
            &train.labels().expect("labels")[..10],
            &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
        );
    }
}
