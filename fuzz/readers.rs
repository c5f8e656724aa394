//! Each reader as the fuzz targets (`fuzz_targets/`) and the seeded mutation test
//! (`tests/readers_fuzz.rs`) drive it: arbitrary bytes in, whether the reader accepted them
//! out, and a panic where the reader breaks its contract: a dataset it accepts that is not
//! valid, a checkpoint it accepts that does not save and load back the same, an error that
//! does not name the file. The readers themselves must never panic on any input.

use std::io::Write;
use std::path::Path;

use flate2::{write::GzEncoder, Compression};
use soma::data::{
    parse_csv, parse_idx, CsvOptions, HeaderMode, ImputeKind, Imputer, LabelColumn, Task,
};

/// The command's own options module, compiled here as it is (it is not part of the library).
#[path = "../src/cli/options.rs"]
#[allow(dead_code)]
pub mod options;

/// What a reader made of an input.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Accepted,
    /// The error's message.
    Refused(String),
}

/// The names the readers see, which every error must mention.
pub const IMAGES: &str = "in-images";
pub const LABELS: &str = "in-labels";
pub const CSV: &str = "in.csv";
pub const CHECKPOINT: &str = "in.safetensors";
pub const TOML: &str = "in.toml";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// The IDX reader, raw and gzipped. Input: one flag byte (bit 0: gzip the image file first,
/// bit 1: the label file), the image file's length as 4 bytes little-endian, the image file,
/// then the label file. A file that starts with `1f 8b` takes the gzip path as it is.
pub fn idx(data: &[u8]) -> Outcome {
    let Some((&flags, rest)) = data.split_first() else {
        return Outcome::Refused("no flag byte".into());
    };
    let Some((len, rest)) = rest.split_first_chunk::<4>() else {
        return Outcome::Refused("no length".into());
    };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (images, labels) = rest.split_at(len);
    let images = if flags & 1 != 0 {
        gzip(images)
    } else {
        images.to_vec()
    };
    let labels = if flags & 2 != 0 {
        gzip(labels)
    } else {
        labels.to_vec()
    };
    match parse_idx(Path::new(IMAGES), &images, Path::new(LABELS), &labels) {
        Ok(ds) => {
            ds.validate()
                .expect("a dataset the IDX reader accepts is valid");
            Outcome::Accepted
        }
        Err(e) => refused(e, &[IMAGES, LABELS]),
    }
}

/// The CSV reader. Input: one byte of options (bits 0-1: the label column, last, index
/// (bits 2-3) or the names `y` and `target`; bits 4-5: the header mode; bit 6: empty cells
/// read as missing values; bit 7: regression),
/// then the text (invalid UTF-8 replaced: `load_csv` refuses it before parsing).
pub fn csv(data: &[u8]) -> Outcome {
    let Some((&o, text)) = data.split_first() else {
        return Outcome::Refused("no options byte".into());
    };
    let opts = CsvOptions {
        label_column: match o & 3 {
            0 => LabelColumn::Last,
            1 => LabelColumn::Index(usize::from((o >> 2) & 3)),
            2 => LabelColumn::Name("y".into()),
            _ => LabelColumn::Name("target".into()),
        },
        header: match (o >> 4) & 3 {
            0 => HeaderMode::Auto,
            1 => HeaderMode::Present,
            _ => HeaderMode::Absent,
        },
        task: if o & 0x80 != 0 {
            Task::Regression
        } else {
            Task::Classification
        },
        allow_missing: o & 0x40 != 0,
    };
    let text = String::from_utf8_lossy(text);
    match parse_csv(&text, Path::new(CSV), &opts) {
        Ok(mut ds) => {
            // Missing values are NaN until an imputer fills them; a column with none at
            // all is refused by name.
            if opts.allow_missing {
                match Imputer::fit(ImputeKind::Mean, &ds) {
                    Ok(imputer) => {
                        imputer
                            .apply(&mut ds)
                            .expect("an imputer fits its own data");
                    }
                    Err(e) => {
                        let m = e.to_string();
                        assert!(m.contains("no value in any training row"), "{m}");
                        return Outcome::Refused(m);
                    }
                }
            }
            ds.validate()
                .expect("a dataset the CSV reader accepts is valid");
            Outcome::Accepted
        }
        Err(e) => refused(e, &[CSV]),
    }
}

/// The checkpoint loader: the safetensors header, every tensor and every metadata key.
/// Input: the file's bytes. What it accepts must save and load back unchanged.
pub fn checkpoint(data: &[u8]) -> Outcome {
    match soma::checkpoint::load_bytes(Path::new(CHECKPOINT), data) {
        Ok(ckpt) => {
            let path = Path::new(CHECKPOINT);
            let bytes = soma::checkpoint::save_bytes(path, &ckpt)
                .unwrap_or_else(|e| panic!("an accepted checkpoint does not save: {e}"));
            let back = soma::checkpoint::load_bytes(path, &bytes)
                .unwrap_or_else(|e| panic!("a saved checkpoint does not load: {e}"));
            assert!(back == ckpt, "a checkpoint changed through save and load");
            Outcome::Accepted
        }
        Err(e) => refused(e, &[CHECKPOINT]),
    }
}

/// The training configuration (`TrainOptions::from_toml_str` of the `soma` command), then
/// its defaults and named choices as `soma train --config` applies them. Input: the file's
/// text (`from_toml` refuses invalid UTF-8 before parsing).
pub fn toml(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else {
        return Outcome::Refused("not UTF-8".into());
    };
    match options::TrainOptions::from_toml_str(text, Path::new(TOML)) {
        Ok(o) => {
            // Errors here are configuration errors, which name the setting, not the file.
            if let Ok(r) = o.resolve() {
                let _ = r.choices();
            }
            Outcome::Accepted
        }
        Err(e) => refused(e, &[TOML]),
    }
}

/// An error's message, checked to name one of `files`.
fn refused(e: soma::Error, files: &[&str]) -> Outcome {
    let m = e.to_string();
    assert!(
        files.iter().any(|f| m.contains(f)),
        "an error that names none of {files:?}: {m}"
    );
    Outcome::Refused(m)
}
