//! `soma predict`: a CSV of feature rows in, a CSV of predictions out (the class and its
//! probabilities for a classifier, the outputs for a regressor). The checkpoint's scaling is
//! applied first, exactly as in training.

use std::path::PathBuf;

use soma::fs::write_output;
use soma::{Error, Loss, Model, Result};

use super::eval::predicted_classes;
use super::{load_model, open_device, DeviceChoice};

pub struct PredictCommand {
    pub model: PathBuf,
    pub input: PathBuf,
    pub output: Option<PathBuf>,
    /// A column of the input to drop (the label, when the file has one): name or index.
    pub drop_column: Option<String>,
    pub device: DeviceChoice,
}

fn parse_rows(cmd: &PredictCommand, width: usize) -> Result<(Vec<f32>, usize)> {
    let path = &cmd.input;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .peekable();
    let mut header: Option<Vec<String>> = None;
    if let Some((_, first)) = lines.peek() {
        if first.split(',').any(|c| c.trim().parse::<f32>().is_err()) {
            header = Some(first.split(',').map(|c| c.trim().to_string()).collect());
            lines.next();
        }
    }
    let drop = match &cmd.drop_column {
        None => None,
        Some(c) => Some(match c.parse::<usize>() {
            Ok(i) => i,
            Err(_) => header
                .as_ref()
                .and_then(|h| h.iter().position(|n| n == c))
                .ok_or_else(|| Error::Format {
                    path: path.clone(),
                    line: Some(1),
                    message: format!("no column named '{c}' in the header"),
                })?,
        }),
    };
    let mut values = Vec::new();
    let mut rows = 0;
    for (i, line) in lines {
        let cells: Vec<&str> = line.trim_end_matches('\r').split(',').collect();
        let want = width + drop.is_some() as usize;
        if cells.len() != want {
            return Err(Error::Format {
                path: path.clone(),
                line: Some(i + 1),
                message: format!(
                    "{} columns, expected {want} (the model takes {width} features)",
                    cells.len()
                ),
            });
        }
        for (c, cell) in cells.iter().enumerate() {
            if Some(c) == drop {
                continue;
            }
            let v: f32 = cell
                .trim()
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| Error::Format {
                    path: path.clone(),
                    line: Some(i + 1),
                    message: format!("column {c}: '{}' is not a finite number", cell.trim()),
                })?;
            values.push(v);
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(Error::Format {
            path: path.clone(),
            line: None,
            message: "no data rows".into(),
        });
    }
    Ok((values, rows))
}

pub fn run(cmd: PredictCommand) -> Result<()> {
    let (model_file, ck) = load_model(&cmd.model)?;
    let model = Model::with_params(ck.network.clone(), ck.params.clone())?;
    let width = model.network.input_width();
    let (mut x, rows) = parse_rows(&cmd, width)?;
    if let Some(s) = &ck.scaler {
        for row in x.chunks_mut(width) {
            s.apply_row(row)?;
        }
    }
    let opened = open_device(cmd.device)?;
    let outputs = model.predict(opened.device(), &x, rows)?;
    let out_w = model.network.output_width();
    let mut text = String::new();
    match ck.loss {
        Loss::SoftmaxCrossEntropy => {
            text.push_str("class");
            for c in 0..out_w {
                text.push_str(&format!(",p_{c}"));
            }
            text.push('\n');
            let classes = predicted_classes(&outputs, out_w, 0.0);
            for (row, class) in outputs.chunks(out_w).zip(classes) {
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = row.iter().map(|v| (v - m).exp()).sum();
                text.push_str(&class.to_string());
                for v in row {
                    text.push_str(&format!(",{}", (v - m).exp() / s));
                }
                text.push('\n');
            }
        }
        Loss::BinaryCrossEntropy if out_w == 1 => {
            text.push_str("class,p_1\n");
            for v in &outputs {
                let p = soma::cpu::sigmoid(*v);
                text.push_str(&format!("{},{p}\n", (*v >= 0.0) as u32));
            }
        }
        _ => {
            let names: Vec<String> = (0..out_w).map(|c| format!("y_{c}")).collect();
            text.push_str(&names.join(","));
            text.push('\n');
            // Back from the scaled units the network was trained in to the targets' own.
            let mut outputs = outputs;
            if let Some(s) = &ck.target_scaler {
                for row in outputs.chunks_mut(out_w) {
                    s.invert_row(row)?;
                }
            }
            for row in outputs.chunks(out_w) {
                let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                text.push_str(&cells.join(","));
                text.push('\n');
            }
        }
    }
    // Never over the input or the model, never replacing a device, FIFO or symlink.
    let output = cmd.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    write_output(
        &output,
        text.as_bytes(),
        &[
            cmd.input.as_path(),
            cmd.model.as_path(),
            model_file.as_path(),
        ],
    )
}
