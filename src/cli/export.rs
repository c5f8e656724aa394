//! `soma export`: a trained model as ONNX, plain PyTorch safetensors or JSON (see
//! `docs/export.md`). The conversion is the library's (`soma::export`); this file reads the
//! checkpoint, writes the output where `predict --output` would, and says what it wrote.

use std::path::PathBuf;

use clap::ValueEnum;

use soma::export::{self, Format, Head, Inference, Scaling};
use soma::fs::write_output;
use soma::Result;

use super::load_model;

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatChoice {
    /// An ONNX model (opset 13): raw features in, what `soma predict` gives out (class
    /// probabilities, or values in the targets' units)
    Onnx,
    /// The weights alone, keyed for PyTorch's nn.Sequential ({2i}.weight, {2i}.bias)
    Safetensors,
    /// Weights, activations, scaling and head in one JSON document
    Json,
}

impl From<FormatChoice> for Format {
    fn from(f: FormatChoice) -> Format {
        match f {
            FormatChoice::Onnx => Format::Onnx,
            FormatChoice::Safetensors => Format::Safetensors,
            FormatChoice::Json => Format::Json,
        }
    }
}

pub struct ExportCommand {
    pub model: PathBuf,
    pub format: FormatChoice,
    pub output: PathBuf,
    pub fold_scaling: bool,
}

pub fn run(cmd: ExportCommand) -> Result<()> {
    let (model_file, ck) = load_model(&cmd.model)?;
    let scaling = if cmd.fold_scaling {
        Scaling::Folded
    } else {
        Scaling::Separate
    };
    let format = Format::from(cmd.format);
    let bytes = export::export(&ck, format, scaling)?;
    // Never over the model, never into a run directory, never replacing a device or FIFO.
    write_output(
        &cmd.output,
        &bytes,
        &[cmd.model.as_path(), model_file.as_path()],
    )?;

    let inference = Inference::from_checkpoint(&ck, scaling)?;
    let input = match (&ck.scaler, scaling) {
        (None, Scaling::Separate | Scaling::Folded) => "raw features (the model has no scaling)",
        (Some(_), Scaling::Folded) => "raw features (scaling folded into the first layer)",
        (Some(_), Scaling::Separate) => match format {
            Format::Onnx => "raw features (scaled in the graph)",
            Format::Safetensors => {
                "scaled features: apply metadata soma.scaler first, or export with --fold-scaling"
            }
            Format::Json => "raw features, scaled by input_scaling",
        },
    };
    let head = match &inference.head {
        Head::Softmax => "class probabilities, the softmax of the outputs",
        Head::Sigmoid => "P(class 1), the sigmoid of the output",
        Head::Values { target: Some(_) } => "values in the targets' units",
        Head::Values { target: None } => "the network's outputs",
    };
    let output = match format {
        Format::Onnx => head.to_string(),
        Format::Safetensors | Format::Json => {
            format!("the last layer's outputs; soma predict gives {head}")
        }
    };
    let missing = match (&inference.imputer, format) {
        (None, _) => String::new(),
        (Some(_), Format::Onnx) => "\n  missing values: NaN, filled in the graph".into(),
        (Some(_), Format::Safetensors) => {
            "\n  missing values: fill NaN with metadata soma.imputer first (before any scaling)"
                .into()
        }
        (Some(_), Format::Json) => "\n  missing values: NaN, filled by impute first".into(),
    };
    // Standard output may be the file itself.
    eprintln!(
        "exported {} ({}) as {} to {}\n  input: {input}{missing}\n  output: {output}",
        model_file.display(),
        architecture(&inference),
        format_name(format),
        cmd.output.display()
    );
    Ok(())
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Onnx => "ONNX",
        Format::Safetensors => "safetensors",
        Format::Json => "JSON",
    }
}

fn architecture(m: &Inference) -> String {
    let widths: Vec<String> = m.network.widths().iter().map(|w| w.to_string()).collect();
    let acts: Vec<String> = m
        .network
        .layers
        .iter()
        .map(|l| l.activation.to_string())
        .collect();
    format!("{} {}", widths.join("-"), acts.join("/"))
}
