//! `soma predict`: a CSV of feature rows in, a CSV of predictions out (the class, by name
//! where the classes have names, and its probabilities for a classifier; the outputs for a
//! regressor). Where the model knows its features' names, the input's columns are matched
//! by header name, whatever their order (`--by-position` takes them in order instead).
//! Missing values are filled with the model's imputer when it has one, and the checkpoint's
//! scaling is applied, exactly as in training.

use std::collections::HashMap;
use std::path::PathBuf;

use soma::checkpoint::Checkpoint;
use soma::data::{read_table, HeaderMode, Table};
use soma::fs::write_output;
use soma::{Error, Loss, Model, Result};

use super::{load_model, open_device, DeviceChoice};

pub struct PredictCommand {
    pub model: PathBuf,
    pub input: PathBuf,
    pub output: Option<PathBuf>,
    /// A column of the input to drop (the label, when the file has one): name or index.
    pub drop_column: Option<String>,
    /// Take the input's columns in order, ignoring the header's names.
    pub by_position: bool,
    pub device: DeviceChoice,
}

/// Which input column feeds each of the model's features.
fn column_map(cmd: &PredictCommand, ck: &Checkpoint, table: &Table) -> Result<Vec<usize>> {
    let path = &cmd.input;
    let error = |message: String| Error::Format {
        path: path.clone(),
        line: None,
        message,
    };
    let width = ck.network.input_width();
    let named = &ck.names.features;
    let columns = table.columns();
    // At most 8 names, then how many in all.
    let quoted = |names: &[&String]| {
        let mut text = names
            .iter()
            .take(8)
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > 8 {
            text += &format!(", ... ({} in all)", names.len());
        }
        text
    };
    let drop = match &cmd.drop_column {
        None => None,
        Some(c) => Some(match (c.parse::<usize>(), &table.header) {
            (Ok(i), _) if i < columns => i,
            (Ok(i), _) => {
                return Err(error(format!(
                    "--drop-column {i}: the input has {columns} columns (0..{})",
                    columns.saturating_sub(1)
                )))
            }
            (Err(_), Some(h)) => h.iter().position(|n| n == c).ok_or_else(|| {
                error(format!(
                    "--drop-column '{c}': no column of that name in the header"
                ))
            })?,
            (Err(_), None) => {
                return Err(error(format!(
                    "--drop-column '{c}': the input has no header row; give the column's index"
                )))
            }
        }),
    };
    let header = match &table.header {
        Some(header) if !cmd.by_position && !named.is_empty() => header,
        _ => {
            // Without a header there is nothing to match: the columns are taken in order,
            // as scikit-learn takes an array without feature names, with a warning.
            if table.header.is_none() && !named.is_empty() && !cmd.by_position {
                eprintln!(
                    "warning: {} has no header row; its columns are taken in order as the model's features ({}). Add a header row to have them matched by name, or pass --by-position",
                    path.display(),
                    quoted(&named.iter().collect::<Vec<_>>())
                );
            }
            return positional(columns, drop, width).map_err(error);
        }
    };
    let mut position: HashMap<&str, usize> = HashMap::new();
    for (c, name) in header.iter().enumerate() {
        if position.insert(name.as_str(), c).is_some() {
            return Err(error(format!("the header names column '{name}' twice")));
        }
    }
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| !position.contains_key(n.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(error(format!(
            "missing column{} {} (the model's features: {})",
            if missing.len() == 1 { "" } else { "s" },
            quoted(&missing),
            quoted(&named.iter().collect::<Vec<_>>())
        )));
    }
    let extra: Vec<&String> = header
        .iter()
        .enumerate()
        .filter(|&(c, n)| {
            Some(c) != drop && !named.contains(n) && ck.names.target.as_ref() != Some(n)
        })
        .map(|(_, n)| n)
        .collect();
    if !extra.is_empty() {
        return Err(error(format!(
            "extra column{} {}: the model takes no such feature (--drop-column NAME ignores one)",
            if extra.len() == 1 { "" } else { "s" },
            quoted(&extra)
        )));
    }
    Ok(named.iter().map(|n| position[n.as_str()]).collect())
}

/// The input's columns in order, but `drop`, as the model's `width` features.
fn positional(
    columns: usize,
    drop: Option<usize>,
    width: usize,
) -> std::result::Result<Vec<usize>, String> {
    let kept: Vec<usize> = (0..columns).filter(|&c| Some(c) != drop).collect();
    if kept.len() != width {
        return Err(format!(
            "{} columns{}, but the model takes {width} features",
            kept.len(),
            if drop.is_some() {
                " besides the dropped one"
            } else {
                ""
            }
        ));
    }
    Ok(kept)
}

/// The feature rows of the input, mapped to the model's columns, a missing value as NaN
/// (for the model's imputer; an error where it has none): `(values, rows)`.
fn read_rows(cmd: &PredictCommand, ck: &Checkpoint) -> Result<(Vec<f32>, usize)> {
    let path = &cmd.input;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let table = read_table(&text, path, HeaderMode::Auto)?;
    if table.rows.is_empty() {
        return Err(Error::Format {
            path: path.clone(),
            line: None,
            message: "no data rows".into(),
        });
    }
    let map = column_map(cmd, ck, &table)?;
    let columns = table.columns();
    let column_name = |c: usize| match table.header.as_ref().and_then(|h| h.get(c)) {
        Some(n) => format!("column {c} ('{n}')"),
        None => format!("column {c}"),
    };
    let mut values = Vec::with_capacity(table.rows.len() * map.len());
    for (line, cells) in &table.rows {
        let error = |message: String| Error::Format {
            path: path.clone(),
            line: Some(*line),
            message,
        };
        if cells.len() != columns {
            return Err(error(format!(
                "{} columns, expected {columns} (as in the first row)",
                cells.len()
            )));
        }
        for &c in &map {
            let cell = cells[c].as_str();
            if cell.is_empty() {
                if ck.imputer.is_some() {
                    values.push(f32::NAN);
                    continue;
                }
                return Err(error(format!(
                    "empty cell in {} (a missing value): the model was trained without --impute, so it has no value to fill in",
                    column_name(c)
                )));
            }
            let v: f32 = cell
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| {
                    error(format!(
                        "{}: '{cell}' is not a finite number",
                        column_name(c)
                    ))
                })?;
            values.push(v);
        }
    }
    Ok((values, table.rows.len()))
}

/// `cells` as one CSV record (quoted where a cell needs it).
fn record(cells: &[String]) -> Result<String> {
    let mut w = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(cells)
        .map_err(|e| Error::Config(format!("cannot write a CSV record: {e}")))?;
    let bytes = w
        .into_inner()
        .map_err(|e| Error::Config(format!("cannot write a CSV record: {e}")))?;
    String::from_utf8(bytes).map_err(|e| Error::Config(format!("cannot write a CSV record: {e}")))
}

pub fn run(cmd: PredictCommand) -> Result<()> {
    let (model_file, ck) = load_model(&cmd.model)?;
    let (x, rows) = read_rows(&cmd, &ck)?;
    // The model fills missing values, scales the features and maps regression outputs
    // back to the targets' units itself.
    let model = Model::from_checkpoint(ck)?;
    let opened = open_device(cmd.device)?;
    let outputs = model.predict(opened.device(), &x, rows)?;
    let out_w = model.network.output_width();
    let class = |c: usize| model.names.class(c);
    let mut text = String::new();
    match model.loss {
        Loss::SoftmaxCrossEntropy => {
            let mut header = vec!["class".to_string()];
            header.extend((0..out_w).map(|c| format!("p_{}", class(c))));
            text += &record(&header)?;
            let probabilities = model.probabilities(&outputs)?;
            let classes = model.classes_of(&outputs);
            for (row, c) in probabilities.chunks(out_w).zip(classes) {
                let mut cells = vec![class(c as usize)];
                cells.extend(row.iter().map(|p| p.to_string()));
                text += &record(&cells)?;
            }
        }
        Loss::BinaryCrossEntropy if out_w == 1 => {
            text += &record(&["class".to_string(), format!("p_{}", class(1))])?;
            let probabilities = model.probabilities(&outputs)?;
            let classes = model.classes_of(&outputs);
            for (pair, c) in probabilities.chunks(2).zip(classes) {
                text += &record(&[class(c as usize), pair[1].to_string()])?;
            }
        }
        Loss::BinaryCrossEntropy | Loss::Mse => {
            let names: Vec<String> = match (&model.names.target, out_w) {
                (Some(name), 1) => vec![name.clone()],
                _ => (0..out_w).map(|c| format!("y_{c}")).collect(),
            };
            text += &record(&names)?;
            for row in outputs.chunks(out_w) {
                let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                text += &record(&cells)?;
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
