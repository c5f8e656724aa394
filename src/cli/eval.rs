//! `soma eval`: loss, accuracy and the confusion matrix of a trained model on a dataset
//! (by default the test split of the run that made it).

use std::path::{Path, PathBuf};

use serde::Serialize;

use soma::data::Dataset;
use soma::{Error, Model, Result};

use super::options::DataOptions;
use super::train::{prepare_data, RunConfig};
use super::{load_model, open_device, DeviceChoice};

pub struct EvalCommand {
    pub model: PathBuf,
    pub data: DataOptions,
    pub device: DeviceChoice,
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    data: String,
    samples: usize,
    loss: f32,
    accuracy: Option<f32>,
    /// rows: true class, columns: predicted class.
    confusion: Option<Vec<Vec<u32>>>,
}

/// The class each row of `outputs (rows, width)` predicts.
pub fn predicted_classes(outputs: &[f32], width: usize, threshold: f32) -> Vec<u32> {
    outputs
        .chunks(width.max(1))
        .map(|row| {
            if width == 1 {
                (row[0] >= threshold) as u32
            } else {
                let mut best = 0;
                for (c, v) in row.iter().enumerate() {
                    if *v > row[best] {
                        best = c;
                    }
                }
                best as u32
            }
        })
        .collect()
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    let (file, ck) = load_model(&cmd.model)?;
    let config_path = cmd.model.join("config.json");
    let run_config: Option<RunConfig> = if cmd.model.is_dir() && config_path.exists() {
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        Some(serde_json::from_str(&text).map_err(|e| Error::Format {
            path: config_path.clone(),
            line: Some(e.line()),
            message: e.to_string(),
        })?)
    } else {
        None
    };
    // The data: as given (whole, scaled with the checkpoint's scaler), or the run's test split.
    let (name, test): (String, Dataset) =
        match (&cmd.data.data, &run_config) {
            (Some(spec_text), _) => {
                let o = cmd.data.as_train_options().resolve()?;
                let choices = o.choices()?;
                let (all, own_test) = choices.data.load(&o, &choices)?;
                let mut d = own_test.unwrap_or(all);
                if d.width != ck.network.input_width() {
                    return Err(Error::Data(format!(
                        "{spec_text} has {} features per row but the model {} takes {}",
                        d.width,
                        file.display(),
                        ck.network.input_width()
                    )));
                }
                if let Some(s) = &ck.scaler {
                    s.apply(&mut d)?;
                }
                if let Some(s) = &ck.target_scaler {
                    super::train::scale_targets(&mut d, s)?;
                }
                (spec_text.clone(), d)
            }
            (None, _) if cmd.data != DataOptions::default() => return Err(Error::Config(
                "--label-column, --header and --task describe the data of --data; pass --data too"
                    .into(),
            )),
            (None, Some(rc)) => {
                let choices = rc.options.choices()?;
                (
                    format!("{} (test split)", rc.options.data),
                    prepare_data(&rc.options, &choices)?.test,
                )
            }
            (None, None) => {
                return Err(Error::Config(format!(
                    "{}: no run directory config to take the test split from; pass --data",
                    file.display()
                )))
            }
        };
    let model = Model::with_params(ck.network.clone(), ck.params.clone())?;
    let opened = open_device(cmd.device)?;
    let device = opened.device();
    let e = model.evaluate(device, ck.loss, &test, 1024)?;
    let confusion = match test.targets.classes() {
        Some(classes) => {
            let outputs = model.predict(device, &test.features, test.len())?;
            let threshold = if ck.loss == soma::Loss::Mse { 0.5 } else { 0.0 };
            let predicted = predicted_classes(&outputs, model.network.output_width(), threshold);
            let mut m = vec![vec![0u32; classes.max(2)]; classes.max(2)];
            for (t, p) in test.labels().unwrap_or(&[]).iter().zip(&predicted) {
                if let Some(cell) = m.get_mut(*t as usize).and_then(|r| r.get_mut(*p as usize)) {
                    *cell += 1;
                }
            }
            Some(m)
        }
        None => None,
    };
    let report = Report {
        data: name,
        samples: e.samples,
        loss: e.loss,
        accuracy: e.accuracy,
        confusion,
    };
    // Built whole, then written once: a closed pipe (`eval | head`) ends quietly.
    let mut out = String::new();
    if cmd.json {
        out = serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        out.push('\n');
        return soma::fs::write_output(Path::new("-"), out.as_bytes(), &[]);
    }
    out += &format!(
        "{}: {} samples on {}\n",
        report.data,
        report.samples,
        device.name()
    );
    out += &format!("loss {:.5}\n", report.loss);
    if let Some(a) = report.accuracy {
        out += &format!("accuracy {:.2}%\n", 100.0 * a);
    }
    if let Some(m) = &report.confusion {
        out += "confusion matrix (rows: true class, columns: predicted):\n      ";
        for c in 0..m.len() {
            out += &format!("{c:>6}");
        }
        out.push('\n');
        for (t, row) in m.iter().enumerate() {
            out += &format!("{t:>6}");
            for v in row {
                out += &format!("{v:>6}");
            }
            out.push('\n');
        }
    }
    soma::fs::write_output(Path::new("-"), out.as_bytes(), &[])
}
