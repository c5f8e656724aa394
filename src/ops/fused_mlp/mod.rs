//! The fully fused training pass of a small MLP (every width at most [`MAX_WIDTH`]): one
//! dispatch runs the forward pass, the loss gradient (mean squared error, binary
//! cross-entropy on the logits, or softmax cross-entropy on the logits against class
//! labels) and the backward pass of a tile of 32 or 64 batch rows per
//! workgroup, with every row's activations and deltas in its invocation's private memory,
//! in the manner of tiny-cuda-nn's fully fused MLP.
//! Weights and biases are read from the parameter arena (one binding; the slots' offsets
//! are constants of the generated source), or each layer's weights are first staged in
//! workgroup memory. For the weight gradient the tile's deltas and layer inputs go through
//! workgroup memory, and each invocation sums blocks of up to 16 x 16 gradient entries over
//! the tile's rows; the tile's sums land in its row of a partials table laid out like the
//! parameter arena, and `column_sum` then adds the tiles' rows, in tile order, into the
//! gradient arena.
//!
//! The kernel comes in forms with the same arithmetic: weights from the arena or staged,
//! 32 or 64 rows per workgroup, and 1, 2, 4 or 8 rows per invocation (at most 2 for layers
//! over 64 wide), each used only where the device has the workgroup memory and invocations
//! it needs ([`fused_mlp_fits`]). A hardware GPU wants
//! one row per invocation and many invocations; a CPU adapter such as lavapipe, which pays
//! for every load once per invocation, wants 8 rows per invocation (each weight read once
//! for all 8) and 8 invocations per workgroup (one 256-bit vector).
//!
//! Every row's forward and backward sums run over the same terms in the same order as the
//! op-by-op path's. The weight and bias gradients are summed per tile and then over tiles,
//! where the op-by-op path sums the batch's rows in one run: the same terms in another
//! grouping, so the last bits can differ (with one tile, the batch fits it, they cannot).
//! The CPU twin `cpu::fused_mlp` groups its sums like the kernel. A driver may also contract
//! the kernel's multiply-adds into fused multiply-adds (llvmpipe does in some of its short
//! unrolled sums), so the kernel is held to its twin within rounding, not to its bits.
//!
//! One source per network shape and form is generated (and kept for the process).

use crate::error::{Error, Result};
use crate::kernels::Dispatch;
use crate::params::params_struct;
use crate::tensor::{DType, GpuTensor};

use super::{dispatch, expect_dtype, expect_len, expect_shape, matrix, Kernel, Kernels, Loss};

pub mod cpu;
mod source;

pub use source::{generated, source};

/// Rows per workgroup: 32 or 64, per form. A tile's deltas and layer inputs take
/// `tile_rows x (widest output + widest input) x 4` bytes of workgroup memory: 16 KiB for
/// 32 rows of 64-wide layers (the WebGPU default limit), 32 KiB for 32 rows of 128-wide
/// layers or 64 rows of 64-wide ones, 64 KiB for 64 rows of 128-wide ones.
pub const TILE_ROWS: [u32; 2] = [32, 64];

/// The widest layer input or output the fused pass takes (tiny-cuda-nn's widths are 64 and
/// 128). Its workgroup memory holds a tile's deltas and inputs, `tile_rows x` the widest
/// layer each, and, staged, the largest layer's weights (64 KiB for a 128 x 128 layer): a
/// form is used only where [`fused_mlp_fits`] says the device has room for it.
pub const MAX_WIDTH: usize = 128;

/// The most layers the fused pass takes.
pub const MAX_LAYERS: usize = 8;

/// When the trainer runs a network's training pass fused (`SOMA_FUSED_MLP`, or
/// `Tuning::fused_mlp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FusedMlp {
    /// Where the network fits and one step is at least `autotune::TUNE_MIN_FLOPS`, whichever
    /// of the fused pass's forms and the op-by-op kernels measures fastest on this adapter
    /// (cached).
    #[default]
    Auto,
    /// Wherever the network fits, in the first form the device runs.
    On,
    /// Wherever the network fits, in this form (named like its entry point,
    /// `fused_mlp_t64_r8` or `t64_r8`; `_staged` for staged weights). Whether the pass
    /// gathers its rows and which loss it computes follow from the training step, and add
    /// `_gather` and `_bce` or `_softmax` to the entry point. A form that the device or the network does
    /// not fit (workgroup memory, invocations, rows per invocation) is an `Error::Config`
    /// naming the limit.
    Form {
        tile_rows: u8,
        rows_per_invocation: u8,
        staged: bool,
    },
    /// Never.
    Off,
}

impl std::str::FromStr for FusedMlp {
    type Err = Error;
    fn from_str(s: &str) -> Result<FusedMlp> {
        match s {
            "auto" => return Ok(FusedMlp::Auto),
            "on" | "1" => return Ok(FusedMlp::On),
            "off" | "0" => return Ok(FusedMlp::Off),
            _ => {}
        }
        let form = s.strip_prefix("fused_mlp_").unwrap_or(s);
        let (form, staged) = match form.strip_suffix("_staged") {
            Some(f) => (f, true),
            None => (form, false),
        };
        let parsed = form.strip_prefix('t').and_then(|f| {
            let (t, r) = f.split_once("_r")?;
            let (t, r) = (t.parse::<u8>().ok()?, r.parse::<u8>().ok()?);
            (TILE_ROWS.contains(&(t as u32)) && matches!(r, 1 | 2 | 4 | 8)).then_some((t, r))
        });
        match parsed {
            Some((tile_rows, rows_per_invocation)) => Ok(FusedMlp::Form {
                tile_rows,
                rows_per_invocation,
                staged,
            }),
            None => Err(Error::Config(format!(
                "unknown fused MLP setting '{s}' (auto, on, off, or a form such as t64_r8 or \
                 t32_r1_staged: 32 or 64 rows per workgroup, 1, 2, 4 or 8 per invocation)"
            ))),
        }
    }
}

/// What the generated source depends on: the layer widths, activations and bias flags, and
/// where each weight and bias sits in the parameter arena (in floats).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MlpShape {
    pub layers: u8,
    /// `widths[0]` inputs, `widths[l + 1]` outputs of layer `l`.
    pub widths: [u8; MAX_LAYERS + 1],
    pub kinds: [u8; MAX_LAYERS],
    /// Leaky ReLU's negative slope per layer, as f32 bits.
    pub slopes: [u32; MAX_LAYERS],
    /// Bit `l`: layer `l` has a bias.
    pub bias: u8,
    /// Offsets of each layer's weight and bias slots in the arena, in floats.
    pub weight_at: [u32; MAX_LAYERS],
    pub bias_at: [u32; MAX_LAYERS],
    /// Floats in the arena (and in each partials row).
    pub arena_len: u32,
    /// Each layer's weights are first copied into workgroup memory and read from there
    /// (another 16 KiB for a 64 x 64 layer, 64 KiB for a 128 x 128 one); otherwise every
    /// row reads them from the arena.
    pub staged: bool,
    /// The loss, with `mse_loss`'s, `binary_cross_entropy`'s or `softmax_cross_entropy`'s
    /// formulas: the first two over value targets (f32, batch x outputs), softmax
    /// cross-entropy over class labels (u32, one per row).
    pub loss: Loss,
    /// Rows per workgroup, one of [`TILE_ROWS`].
    pub tile_rows: u8,
    /// The pass gathers its batch from the data tables through the row order itself (the
    /// gather ops' work) rather than reading a gathered batch.
    pub gather: bool,
    /// Rows of the tile each invocation takes (1, 2, 4 or 8; the workgroup has
    /// `tile_rows / rows_per_invocation` invocations).
    pub rows_per_invocation: u8,
}

/// One layer of an [`MlpShape`], in plain numbers.
#[derive(Clone, Copy, Debug)]
pub struct MlpLayer {
    pub inputs: usize,
    pub outputs: usize,
    pub kind: u32,
    pub slope: f32,
    pub weight_at: usize,
    pub bias_at: Option<usize>,
}

impl MlpShape {
    /// The shape of `layers`, or `None` where the fused pass does not take it (too many
    /// layers, a width over [`MAX_WIDTH`], consecutive widths that do not chain).
    pub fn new(layers: &[MlpLayer], arena_len: usize) -> Option<MlpShape> {
        if layers.is_empty() || layers.len() > MAX_LAYERS || arena_len > u32::MAX as usize {
            return None;
        }
        let mut s = MlpShape {
            layers: layers.len() as u8,
            widths: [0; MAX_LAYERS + 1],
            kinds: [0; MAX_LAYERS],
            slopes: [0; MAX_LAYERS],
            bias: 0,
            weight_at: [0; MAX_LAYERS],
            bias_at: [0; MAX_LAYERS],
            arena_len: arena_len as u32,
            staged: false,
            loss: Loss::Mse,
            tile_rows: 32,
            gather: false,
            rows_per_invocation: 1,
        };
        s.widths[0] = layers[0].inputs as u8;
        for (l, layer) in layers.iter().enumerate() {
            let fits = |w: usize| (1..=MAX_WIDTH).contains(&w);
            if !fits(layer.inputs) || !fits(layer.outputs) || layer.kind > 255 {
                return None;
            }
            if l > 0 && layers[l - 1].outputs != layer.inputs {
                return None;
            }
            s.widths[l + 1] = layer.outputs as u8;
            s.kinds[l] = layer.kind as u8;
            s.slopes[l] = layer.slope.to_bits();
            s.weight_at[l] = layer.weight_at as u32;
            if let Some(b) = layer.bias_at {
                s.bias |= 1 << l;
                s.bias_at[l] = b as u32;
            }
        }
        Some(s)
    }

    /// The layers in plain numbers.
    pub fn layers(&self) -> Vec<MlpLayer> {
        (0..self.layers as usize)
            .map(|l| MlpLayer {
                inputs: self.widths[l] as usize,
                outputs: self.widths[l + 1] as usize,
                kind: self.kinds[l] as u32,
                slope: f32::from_bits(self.slopes[l]),
                weight_at: self.weight_at[l] as usize,
                bias_at: (self.bias & (1 << l) != 0).then_some(self.bias_at[l] as usize),
            })
            .collect()
    }

    /// A short name of the network and loss for logs and the tuner's cache: widths with
    /// each layer's activation code (and slope where it has one), `nb` for a layer without
    /// bias, then `bce` for binary cross-entropy or `softmax` for softmax cross-entropy, e.g.
    /// `2-64a1-64a1-1a0`.
    pub fn name(&self) -> String {
        let mut name = self.inputs().to_string();
        for l in self.layers() {
            name.push_str(&format!("-{}a{}", l.outputs, l.kind));
            if l.slope != 0.0 {
                name.push_str(&format!("s{}", l.slope));
            }
            if l.bias_at.is_none() {
                name.push_str("nb");
            }
        }
        match self.loss {
            Loss::Mse => {}
            Loss::BinaryCrossEntropy => name.push_str(" bce"),
            Loss::SoftmaxCrossEntropy => name.push_str(" softmax"),
        }
        name
    }

    pub fn inputs(&self) -> usize {
        self.widths[0] as usize
    }

    pub fn outputs(&self) -> usize {
        self.widths[self.layers as usize] as usize
    }

    /// The widest layer input and output.
    fn max_width(&self) -> usize {
        self.widths[..=self.layers as usize]
            .iter()
            .map(|&w| w as usize)
            .max()
            .unwrap_or(1)
    }

    /// The same network with its weights staged in workgroup memory, or not.
    pub fn with_staged(self, staged: bool) -> MlpShape {
        MlpShape { staged, ..self }
    }

    /// The same network with `rows` rows per invocation (1, 2, 4 or 8).
    pub fn with_rows_per_invocation(self, rows: u8) -> MlpShape {
        assert!(
            matches!(rows, 1 | 2 | 4 | 8),
            "rows per invocation: 1, 2, 4 or 8"
        );
        MlpShape {
            rows_per_invocation: rows,
            ..self
        }
    }

    /// The same network trained with `loss`.
    pub fn with_loss(self, loss: Loss) -> MlpShape {
        MlpShape { loss, ..self }
    }

    /// The same network, gathering its batch itself or not.
    pub fn with_gather(self, gather: bool) -> MlpShape {
        MlpShape { gather, ..self }
    }

    /// The same network with `rows` rows per workgroup (one of [`TILE_ROWS`]).
    pub fn with_tile_rows(self, rows: u32) -> MlpShape {
        assert!(TILE_ROWS.contains(&rows), "tile rows: 32 or 64");
        MlpShape {
            tile_rows: rows as u8,
            ..self
        }
    }

    /// Rows per workgroup.
    pub fn tile_rows(&self) -> u32 {
        self.tile_rows as u32
    }

    /// The most rows per invocation the pass is built with for this network: 8 where every
    /// layer is at most 64 wide, 2 where one is wider. The source is unrolled over each
    /// layer's inputs (outputs, backward) for every row an invocation takes, so it grows as
    /// rows x width²: for 8-128-128-4 llvmpipe (Vulkan) compiles the 1-row form in 1.0 s,
    /// the 4-row one in 8.1 s and the 8-row one in 34 s, and the 8-row form holds some 24
    /// KiB of private arrays per invocation.
    pub fn most_rows_per_invocation(&self) -> u8 {
        if self.max_width() > 64 {
            2
        } else {
            8
        }
    }

    /// Invocations per workgroup.
    pub fn invocations(&self) -> u32 {
        self.tile_rows() / self.rows_per_invocation as u32
    }

    /// Workgroups (tiles) for a batch of `rows`.
    pub fn tiles(&self, rows: usize) -> usize {
        rows.div_ceil(self.tile_rows() as usize)
    }

    /// The kernel's entry point, which names its form: `fused_mlp_t{rows per
    /// workgroup}_r{rows per invocation}`, then `_staged` where the weights are staged and
    /// `_gather` where it gathers its batch.
    pub fn entry_point(&self) -> &'static str {
        generated(*self).1
    }

    /// Workgroup memory the kernel declares, in bytes.
    pub fn workgroup_bytes(&self) -> u64 {
        let layers = self.layers();
        let outs = layers.iter().map(|l| l.outputs).max().unwrap_or(1);
        let ins = layers.iter().map(|l| l.inputs).max().unwrap_or(1);
        let tiles = self.tile_rows() as u64 * (outs + ins) as u64 * 4;
        tiles
            + if self.staged {
                self.max_weights() as u64 * 4
            } else {
                0
            }
    }

    /// The most weights of one layer.
    fn max_weights(&self) -> usize {
        self.layers()
            .iter()
            .map(|l| l.inputs * l.outputs)
            .max()
            .unwrap_or(1)
    }

    /// Multiply-adds of one row's forward and backward pass (for deciding whether the pass
    /// is worth measuring).
    pub fn macs_per_row(&self) -> usize {
        self.layers().iter().map(|l| 3 * l.inputs * l.outputs).sum()
    }
}

params_struct! {
    /// One step of the fully fused small-MLP pass (`ops::fused_mlp`): the loss's rows and
    /// scale (as in `LossParams`), and where the step's rows start in the row order when the
    /// pass gathers its batch itself.
    FusedMlpParams {
        /// Live rows (the rest of the batch gets a zero gradient).
        rows: u32,
        /// Outputs of the network.
        cols: u32,
        /// Rows in the batch (>= rows).
        batch_rows: u32,
        /// The gradient's factor for the mean: 1/(rows*cols).
        scale: f32,
        /// The step's first position in the row order (gathering forms only).
        start: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// Whether the device's limits let it run the fused pass in the form `shape` (enough storage
/// buffers per stage, six or seven to gather, workgroup memory and invocations), and the
/// form is one built for the network (see [`MlpShape::most_rows_per_invocation`]).
pub fn fused_mlp_fits(k: &Kernels, shape: MlpShape) -> bool {
    fused_mlp_misfit(k, shape).is_none()
}

/// What keeps the fused pass from running in the form `shape` (the limit it needs more of,
/// with both numbers, or too many rows per invocation for its widths), or `None` where the
/// form fits.
pub fn fused_mlp_misfit(k: &Kernels, shape: MlpShape) -> Option<String> {
    let limits = k.gpu().limits();
    let buffers = if shape.gather { 7 } else { 6 };
    let form = shape.entry_point();
    if shape.rows_per_invocation > shape.most_rows_per_invocation() {
        return Some(format!(
            "{form} is not built for {}: layers wider than 64 take at most {} rows per \
             invocation (its unrolled source compiles for too long)",
            shape.name(),
            shape.most_rows_per_invocation()
        ));
    }
    if limits.max_storage_buffers_per_shader_stage < buffers {
        return Some(format!(
            "{form} binds {buffers} storage buffers; the device binds {} per stage",
            limits.max_storage_buffers_per_shader_stage
        ));
    }
    let bytes = shape.workgroup_bytes();
    let limit = limits.max_compute_workgroup_storage_size as u64;
    if bytes > limit {
        return Some(format!(
            "{form} needs {bytes} bytes of workgroup memory for {} (max_compute_workgroup_storage_size {limit})",
            shape.name()
        ));
    }
    let invocations = shape.invocations();
    let most = limits
        .max_compute_invocations_per_workgroup
        .min(limits.max_compute_workgroup_size_x);
    if invocations > most {
        return Some(format!(
            "{form} runs {invocations} invocations per workgroup; the device runs {most}"
        ));
    }
    None
}

/// The fully fused training pass of a small network with MSE, binary cross-entropy or
/// softmax cross-entropy (see the module's documentation):
/// `partial` (tiles, arena length) gets each tile's gradient sums laid out like the parameter
/// arena `weights`, `pred` (batch, outputs) the network's output and `row_loss` each row's
/// loss. It reads the batch `x` (batch, inputs) and `target` (batch, outputs), or, for a
/// gathering shape, rows `indices[start + r]` of the tables `x` and `target` (any number of
/// rows). For softmax cross-entropy `target` is the batch's class labels (u32, batch), read
/// as they are by the gathering forms too: the labels' own gather stays in the step, since
/// the correct count reads them as well. `params` holds the loss's live rows and scale and the step's `start`. `None` where
/// the form does not fit ([`fused_mlp_misfit`] says why): fewer storage buffers per stage
/// than it binds (six, seven to gather), less workgroup memory or fewer invocations than it
/// needs, or more rows per invocation than the network's widths are built with.
#[allow(clippy::too_many_arguments)]
pub fn fused_mlp(
    k: &Kernels,
    partial: &GpuTensor,
    pred: &GpuTensor,
    row_loss: &GpuTensor,
    x: &GpuTensor,
    target: &GpuTensor,
    weights: &GpuTensor,
    indices: Option<&GpuTensor>,
    shape: MlpShape,
    params: FusedMlpParams,
) -> Result<Option<Dispatch>> {
    let op = "fused_mlp";
    if !fused_mlp_fits(k, shape) {
        return Ok(None);
    }
    let rows = params.batch_rows as usize;
    expect_shape(op, pred, (rows, shape.outputs()))?;
    expect_len(op, row_loss, rows)?;
    expect_len(op, weights, shape.arena_len as usize)?;
    let tiles = shape.tiles(rows);
    expect_shape(op, partial, (tiles, shape.arena_len as usize))?;
    if params.cols as usize != shape.outputs() || params.rows > params.batch_rows {
        return Err(Error::shape(
            op,
            format!("parameters for {rows} rows of {} outputs", shape.outputs()),
            format!(
                "{} of {} rows, {} outputs",
                params.rows, params.batch_rows, params.cols
            ),
        ));
    }
    let mut bound = vec![partial, pred, row_loss, x, target, weights];
    if shape.gather {
        let Some(indices) = indices else {
            return Err(Error::shape(op, "a row order to gather by", "none"));
        };
        let (data_rows, _) = matrix(op, x)?;
        expect_shape(op, x, (data_rows, shape.inputs()))?;
        if !shape.loss.takes_labels() {
            expect_shape(op, target, (data_rows, shape.outputs()))?;
        }
        if indices.dtype() != DType::U32 {
            return Err(Error::shape(
                op,
                "u32 row indices",
                format!("{:?}", indices.dtype()),
            ));
        }
        bound.push(indices);
    } else {
        expect_shape(op, x, (rows, shape.inputs()))?;
        if !shape.loss.takes_labels() {
            expect_shape(op, target, (rows, shape.outputs()))?;
        }
    }
    if shape.loss.takes_labels() {
        expect_dtype(op, target, DType::U32)?;
        expect_len(op, target, rows)?;
    } else {
        expect_dtype(op, target, DType::F32)?;
    }
    dispatch(
        k,
        Kernel::FusedMlp(shape),
        &bound,
        &[params],
        [tiles as u32, 1, 1],
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b3() -> MlpShape {
        let layers = [
            MlpLayer {
                inputs: 2,
                outputs: 64,
                kind: 1,
                slope: 0.0,
                weight_at: 0,
                bias_at: Some(128),
            },
            MlpLayer {
                inputs: 64,
                outputs: 64,
                kind: 1,
                slope: 0.0,
                weight_at: 192,
                bias_at: Some(4288),
            },
            MlpLayer {
                inputs: 64,
                outputs: 1,
                kind: 0,
                slope: 0.0,
                weight_at: 4352,
                bias_at: Some(4416),
            },
        ];
        MlpShape::new(&layers, 4480).unwrap()
    }

    /// B3's network with its second hidden layer 128 wide: 2-64-128-1.
    fn wide_b3() -> MlpShape {
        let mut l = b3().layers();
        l[1].outputs = 128;
        l[1].bias_at = Some(192 + 64 * 128);
        l[2].inputs = 128;
        l[2].weight_at = 192 + 64 * 128 + 128;
        l[2].bias_at = Some(l[2].weight_at + 128);
        MlpShape::new(&l, l[2].weight_at + 144).unwrap()
    }

    #[test]
    fn shapes_round_trip_and_limits_hold() {
        let s = b3();
        let l = s.layers();
        assert_eq!(l.len(), 3);
        assert_eq!(
            (l[1].inputs, l[1].outputs, l[1].bias_at),
            (64, 64, Some(4288))
        );
        assert_eq!(s.workgroup_bytes(), 32 * 128 * 4);
        assert_eq!(s.name(), "2-64a1-64a1-1a0");
        assert!(s.workgroup_bytes() <= 16384);
        let mut wide = l.clone();
        wide[1].outputs = 129;
        wide[2].inputs = 129;
        assert!(MlpShape::new(&wide, 9000).is_none());
        // 128 wide: 32 KiB for a tile of 32 rows, 32 KiB more with the 64 x 128 layer
        // staged, and at most 2 rows per invocation.
        let w = wide_b3();
        assert_eq!(w.workgroup_bytes(), 32 * 256 * 4);
        assert_eq!(
            w.with_staged(true).workgroup_bytes(),
            (32 * 256 + 64 * 128) * 4
        );
        assert_eq!(w.most_rows_per_invocation(), 2);
        assert_eq!(s.most_rows_per_invocation(), 8);
        let mut broken = l.clone();
        broken[2].inputs = 32;
        assert!(MlpShape::new(&broken, 4480).is_none());
    }

    #[test]
    fn generated_source_parses_and_validates() {
        for staged in [false, true] {
            for tile in TILE_ROWS {
                for rows in [1, 2, 4, 8] {
                    for gather in [false, true] {
                        let shape = b3()
                            .with_staged(staged)
                            .with_tile_rows(tile)
                            .with_rows_per_invocation(rows)
                            .with_gather(gather);
                        validate(shape);
                    }
                }
            }
        }
        // The widest network's forms that are built (at most 2 rows per invocation).
        let wide = wide_b3();
        for (rows, staged, gather) in [(1, true, true), (2, false, false)] {
            validate(
                wide.with_rows_per_invocation(rows)
                    .with_staged(staged)
                    .with_gather(gather),
            );
        }
        for loss in [Loss::BinaryCrossEntropy, Loss::SoftmaxCrossEntropy] {
            for rows in [1, 8] {
                validate(
                    b3().with_loss(loss)
                        .with_gather(true)
                        .with_rows_per_invocation(rows),
                );
            }
        }
        assert_eq!(
            b3().with_gather(true).entry_point(),
            "fused_mlp_t32_r1_gather"
        );
        assert_eq!(
            b3().with_gather(true)
                .with_loss(Loss::SoftmaxCrossEntropy)
                .entry_point(),
            "fused_mlp_t32_r1_gather_softmax"
        );
        assert_eq!(
            b3().with_loss(Loss::SoftmaxCrossEntropy).name(),
            "2-64a1-64a1-1a0 softmax"
        );
        assert_eq!(
            b3().with_tile_rows(64)
                .with_rows_per_invocation(8)
                .entry_point(),
            "fused_mlp_t64_r8"
        );
        let form = FusedMlp::Form {
            tile_rows: 32,
            rows_per_invocation: 1,
            staged: true,
        };
        assert_eq!("fused_mlp_t32_r1_staged".parse::<FusedMlp>().unwrap(), form);
        assert_eq!("t32_r1_staged".parse::<FusedMlp>().unwrap(), form);
        assert_eq!("auto".parse::<FusedMlp>().unwrap(), FusedMlp::Auto);
        for bad in ["t48_r1", "t32_r3", "t32", "fast", ""] {
            assert!(bad.parse::<FusedMlp>().is_err(), "{bad}");
        }
        assert_eq!(
            b3().with_staged(true).workgroup_bytes(),
            (32 * 128 + 64 * 64) * 4
        );
    }

    #[test]
    fn activation_functions_come_from_between_the_markers() {
        let f = source::activation_functions();
        assert!(crate::kernels::ACTIVATION
            .source
            .contains("// BEGIN activation functions"));
        assert!(crate::kernels::ACTIVATION
            .source
            .contains("// END activation functions"));
        assert!(
            f.contains("fn activate(") && f.contains("fn derivative("),
            "{f}"
        );
        assert!(!f.contains("@compute"), "only functions: {f}");
    }

    fn validate(shape: MlpShape) {
        use crate::params::Params;
        // As the pipeline compiles it: after the prelude of the routines it calls.
        let src = crate::math::Math::Native
            .source(&source(shape))
            .into_owned();
        assert!(src.contains(&format!("fn {}(", shape.entry_point())));
        // The uniform struct is the Rust one, field for field.
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{e}\n{src}"));
        let (_, ty) = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(FusedMlpParams::WGSL_NAME))
            .expect("the uniform struct");
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("not a struct");
        };
        let names: Vec<&str> = members
            .iter()
            .map(|m| m.name.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(names, FusedMlpParams::FIELDS);
        assert_eq!(*span as usize, std::mem::size_of::<FusedMlpParams>());
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{e}\n{src}"));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{e:?}"));
    }
}
