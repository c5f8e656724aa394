//! The weights `--init` starts a run from.

use std::path::{Path, PathBuf};

use soma::checkpoint;
use soma::{Error, Loss, Network, Result};

use super::prepare::join;

/// The weights `--init` names: a soma checkpoint (a run directory or its file), whose
/// metadata must agree with the run, or a plain PyTorch state dict (see `soma::state_dict`).
pub struct InitWeights {
    file: PathBuf,
    pub widths: Vec<usize>,
    params: soma::Parameters,
    /// A soma checkpoint's network and loss.
    soma: Option<(Network, Loss)>,
}

impl InitWeights {
    pub fn read(path: &Path) -> Result<InitWeights> {
        let file = if path.is_dir() {
            path.join("checkpoint.safetensors")
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        if soma::state_dict::has_soma_metadata(&file, &bytes)? {
            let ck = checkpoint::load_bytes(&file, &bytes)?;
            Ok(InitWeights {
                widths: ck.network.widths(),
                params: ck.params,
                soma: Some((ck.network, ck.loss)),
                file,
            })
        } else {
            let sd = soma::state_dict::parse(&file, &bytes)?;
            Ok(InitWeights {
                widths: sd.widths,
                params: sd.params,
                soma: None,
                file,
            })
        }
    }

    /// The parameters for `network`, checked: the shapes, and whatever soma metadata the
    /// file has (activations, biases, loss) against the run.
    pub fn fit(&self, network: &Network, loss: Loss) -> Result<soma::Parameters> {
        let mismatch = |message: String| Error::Checkpoint {
            path: self.file.clone(),
            message,
        };
        let mut params = self.params.clone();
        // A layer saved without a bias starts from a zero one where the run has biases.
        for (p, layer) in params.layers.iter_mut().zip(&network.layers) {
            if p.bias.is_none() && layer.bias && self.soma.is_none() {
                p.bias = Some(vec![0.0; layer.outputs]);
            }
        }
        params
            .check(network, &self.file.display().to_string())
            .map_err(|e| {
                mismatch(format!(
                    "does not fit --layers {}: {e}",
                    join(&network.widths())
                ))
            })?;
        if let Some((net, l)) = &self.soma {
            if *l != loss {
                return Err(mismatch(format!(
                    "it was trained with {l} but this run uses {loss} (set --loss)"
                )));
            }
            for (i, (a, b)) in net.layers.iter().zip(&network.layers).enumerate() {
                if a.activation != b.activation {
                    return Err(mismatch(format!(
                        "its layer {i} has the activation {} but this run's has {} (set --activation / --output-activation)",
                        a.activation, b.activation
                    )));
                }
            }
        }
        Ok(params)
    }
}
