//! The fully fused training pass of a small MLP (every width at most [`MAX_WIDTH`]): one
//! dispatch runs the forward pass, the loss gradient (mean squared error, or binary
//! cross-entropy on the logits) and the backward pass of a tile of 32 or 64 batch rows per
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
//! 32 or 64 rows per workgroup, and 1, 2, 4 or 8 rows per invocation. A hardware GPU wants
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

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::ACTIVATION;

/// Rows per workgroup: 32 (16 KiB of workgroup memory for 64-wide layers, the WebGPU
/// default) or 64 (32 KiB), per form.
pub const TILE_ROWS: [u32; 2] = [32, 64];

/// The widest layer input or output the fused pass takes (its workgroup memory holds a
/// tile's deltas and inputs, `tile_rows x MAX_WIDTH` each).
pub const MAX_WIDTH: usize = 64;

/// The most layers the fused pass takes.
pub const MAX_LAYERS: usize = 8;

/// When the trainer runs a network's training pass fused (`SOMA_FUSED_MLP`, or
/// `Gpu::set_fused_mlp`).
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
    /// `_gather` and `_bce` to the entry point.
    Form {
        tile_rows: u8,
        rows_per_invocation: u8,
        staged: bool,
    },
    /// Never.
    Off,
}

impl std::str::FromStr for FusedMlp {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<FusedMlp> {
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
            None => Err(crate::error::Error::Config(format!(
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
    /// (another 16 KiB for a 64 x 64 layer); otherwise every row reads them from the arena.
    pub staged: bool,
    /// The loss: mean squared error, or binary cross-entropy on the logits (both over
    /// value targets).
    pub bce: bool,
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
            bce: false,
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
    /// bias, then `bce` for binary cross-entropy, e.g. `2-64a1-64a1-1a0`.
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
        if self.bce {
            name.push_str(" bce");
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

    /// The same network trained with binary cross-entropy on its logits rather than MSE.
    pub fn with_bce(self, bce: bool) -> MlpShape {
        MlpShape { bce, ..self }
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

/// The generated source of `shape` and its entry point.
pub fn generated(shape: MlpShape) -> (&'static str, &'static str) {
    type Sources = HashMap<MlpShape, (&'static str, &'static str)>;
    static CACHE: OnceLock<Mutex<Sources>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    // One source per network shape and form a process trains: few, so keeping them is cheap.
    *map.entry(shape).or_insert_with(|| {
        let entry: &'static str = Box::leak(entry_name(shape).into_boxed_str());
        let source: &'static str = Box::leak(source(shape).into_boxed_str());
        (source, entry)
    })
}

fn entry_name(shape: MlpShape) -> String {
    format!(
        "fused_mlp_t{}_r{}{}{}{}",
        shape.tile_rows,
        shape.rows_per_invocation,
        if shape.staged { "_staged" } else { "" },
        if shape.gather { "_gather" } else { "" },
        if shape.bce { "_bce" } else { "" }
    )
}

/// `activate`, `derivative` and their helpers, taken from `shaders/activation.wgsl` so that
/// the fused pass and the op-by-op kernels share one text of every formula.
fn activation_functions() -> &'static str {
    let src = ACTIVATION.source;
    let start = src
        .find("fn sigmoid(")
        .expect("activation.wgsl defines sigmoid");
    let end = src[start..]
        .find("// out = act(pre + bias)")
        .expect("activation.wgsl's forward kernel follows its functions")
        + start;
    &src[start..end]
}

fn f32_lit(x: f32) -> String {
    format!("bitcast<f32>({:#010x}u)", x.to_bits())
}

/// The largest of 16, 8, 4, 2, 1 that divides `n`: a side of the weight-gradient blocks.
fn block_side(n: usize) -> usize {
    [16, 8, 4, 2, 1]
        .into_iter()
        .find(|b| n.is_multiple_of(*b))
        .unwrap_or(1)
}

/// The WGSL of the fused pass for `shape`. Invocation `i` of a workgroup takes the tile's
/// rows `i * R .. i * R + R` (R = `rows_per_invocation`), so each weight it reads serves R
/// rows; the weight gradient is summed in blocks of up to 16 x 16 entries per invocation, so
/// each delta and input read from workgroup memory serves up to 16 products. Neither changes
/// any sum's order: every row's sums run over k or o in order, every gradient entry's over
/// the tile's rows in order.
pub fn source(shape: MlpShape) -> String {
    let layers = shape.layers();
    let t = shape.tile_rows() as usize;
    let rpi = shape.rows_per_invocation as usize;
    let inv = t / rpi;
    let max_w = shape.max_width();
    let max_out = layers.iter().map(|l| l.outputs).max().unwrap_or(1);
    let max_in = layers.iter().map(|l| l.inputs).max().unwrap_or(1);
    // Per row: act holds every layer's input, then the network's output; pre every layer's
    // pre-activation; row j's part starts at j * act_len (j * pre_len).
    let mut act_at = vec![0usize];
    for l in &layers {
        act_at.push(act_at.last().unwrap() + l.inputs);
    }
    let act_len = act_at.last().unwrap() + shape.outputs();
    let mut pre_at = vec![0usize];
    for l in &layers {
        pre_at.push(pre_at.last().unwrap() + l.outputs);
    }
    let pre_len = *pre_at.last().unwrap();
    let (n_in, n_out, alen) = (shape.inputs(), shape.outputs(), shape.arena_len);
    let last = layers.len();
    let rows = 0..rpi;
    let mut s = String::new();
    let entry = entry_name(shape);
    s.push_str(&format!(
        "// Fully fused MLP training pass, generated by src/kernels/fused_mlp.rs.
struct FusedMlpParams {{
    rows: u32,
    cols: u32,
    batch_rows: u32,
    scale: f32,
    start: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}}

@group(0) @binding(0) var<storage, read_write> fm_partial: array<f32>;
@group(0) @binding(1) var<storage, read_write> fm_pred: array<f32>;
@group(0) @binding(2) var<storage, read_write> fm_row_loss: array<f32>;
@group(0) @binding(3) var<storage, read> fm_x: array<f32>;
@group(0) @binding(4) var<storage, read> fm_target: array<f32>;
@group(0) @binding(5) var<storage, read> fm_w: array<f32>;
{tail_bindings}
var<workgroup> fm_delta: array<f32, {d}>;
var<workgroup> fm_input: array<f32, {a}>;
{staged_decl}
{funcs}
@compute @workgroup_size({inv}, 1, 1)
fn {entry}(@builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(workgroup_id) wid: vec3<u32>) {{
    let inv = lid.x;
    let tile = wid.x;
    let part = tile * {alen}u;
    var act: array<f32, {act_all}>;
    var pre: array<f32, {pre_all}>;
    var dl: array<f32, {w_all}>;
    var dp: array<f32, {w_all}>;
",
        d = t * max_out,
        a = t * max_in,
        act_all = rpi * act_len,
        pre_all = rpi * pre_len,
        w_all = rpi * max_w,
        funcs = activation_functions(),
        tail_bindings = if shape.gather {
            "@group(0) @binding(6) var<storage, read> fm_idx: array<u32>;
@group(0) @binding(7) var<uniform> fm_p: FusedMlpParams;
"
        } else {
            "@group(0) @binding(6) var<uniform> fm_p: FusedMlpParams;\n"
        },
        staged_decl = if shape.staged {
            format!(
                "var<workgroup> fm_wt: array<f32, {}>;\n",
                shape.max_weights()
            )
        } else {
            String::new()
        },
    ));
    // Rows past the batch compute on row 0's data and count as zeros; rows past the live
    // rows (a partial last batch) get a zero gradient, as from the loss kernel. The gathering
    // form reads row `fm_idx[start + row]` of the tables itself, and zeros past the live rows,
    // as `gather_rows` writes them.
    for j in rows.clone() {
        s.push_str(&format!(
            "    let row{j} = tile * {t}u + inv * {rpi}u + {j}u;
    let in_batch{j} = row{j} < fm_p.batch_rows;
    let live{j} = row{j} < fm_p.rows;
    let r{j} = select(0u, row{j}, in_batch{j});
"
        ));
        if shape.gather {
            s.push_str(&format!(
                "    let src{j} = fm_idx[fm_p.start + select(0u, r{j}, live{j})];
    for (var i = 0u; i < {n_in}u; i = i + 1u) {{
        act[{aj}u + i] = select(0.0, fm_x[src{j} * {n_in}u + i], live{j});
    }}
",
                aj = j * act_len,
            ));
        } else {
            s.push_str(&format!(
                "    for (var i = 0u; i < {n_in}u; i = i + 1u) {{
        act[{aj}u + i] = fm_x[r{j} * {n_in}u + i];
    }}
",
                aj = j * act_len,
            ));
        }
    }
    // Where the weights are read: the staged copy, or the arena. Staging copies layer `l`'s
    // weights between two barriers (every invocation takes part).
    let weight = |wo: usize, index: &str| {
        if shape.staged {
            format!("fm_wt[{index}]")
        } else {
            format!("fm_w[{wo}u + {index}]")
        }
    };
    let stage = |wo: usize, nw: usize| {
        if shape.staged {
            format!(
                "    workgroupBarrier();
    for (var i = inv; i < {nw}u; i = i + {inv}u) {{
        fm_wt[i] = fm_w[{wo}u + i];
    }}
    workgroupBarrier();
"
            )
        } else {
            String::new()
        }
    };
    for (l, layer) in layers.iter().enumerate() {
        let (ni, no, wo) = (layer.inputs, layer.outputs, layer.weight_at);
        s.push_str(&stage(wo, ni * no));
        s.push_str(&format!(
            "    // layer {l} forward: {ni} -> {no}
    for (var o = 0u; o < {no}u; o = o + 1u) {{
"
        ));
        for j in rows.clone() {
            s.push_str(&format!("        var acc{j} = 0.0;\n"));
        }
        // Unrolled over k: the rows' inputs are read at constant indices (llvmpipe reads a
        // private array at a varying index one lane at a time).
        for k in 0..ni {
            s.push_str(&format!(
                "        let wv{k} = {w};\n",
                w = weight(wo, &format!("o * {ni}u + {k}u")),
            ));
            for j in rows.clone() {
                s.push_str(&format!(
                    "        acc{j} = acc{j} + act[{a}u] * wv{k};\n",
                    a = j * act_len + act_at[l] + k
                ));
            }
        }
        if let Some(b) = layer.bias_at {
            s.push_str(&format!("        let bv = fm_w[{b}u + o];\n"));
        }
        for j in rows.clone() {
            let z = if layer.bias_at.is_some() {
                format!("acc{j} + bv")
            } else {
                format!("acc{j}")
            };
            s.push_str(&format!(
                "        let z{j} = {z};
        pre[{p}u + o] = z{j};
        act[{a}u + o] = activate({kind}u, {slope}, z{j});
",
                p = j * pre_len + pre_at[l],
                a = j * act_len + act_at[l + 1],
                kind = layer.kind,
                slope = f32_lit(layer.slope),
            ));
        }
        s.push_str("    }\n");
    }
    // The loss and its gradient: mse_loss's formulas, or binary_cross_entropy's on the
    // logits.
    let (grad, term) = if shape.bce {
        (
            "(sigmoid(y) - tv) * fm_p.scale",
            "max(y, 0.0) - y * tv + log(1.0 + exp(-abs(y)))",
        )
    } else {
        ("2.0 * (y - tv) * fm_p.scale", "(y - tv) * (y - tv)")
    };
    for j in rows.clone() {
        s.push_str(&format!(
            "    var sum{j} = 0.0;
    for (var c = 0u; c < {n_out}u; c = c + 1u) {{
        let y = act[{a}u + c];
        if (in_batch{j}) {{
            fm_pred[r{j} * {n_out}u + c] = y;
        }}
        let tv = {target};
        dl[{dj}u + c] = select(0.0, {grad}, live{j});
        sum{j} = sum{j} + {term};
    }}
    if (in_batch{j}) {{
        fm_row_loss[r{j}] = select(0.0, sum{j} / f32({n_out}u), live{j});
    }}
",
            a = j * act_len + act_at[last],
            dj = j * max_w,
            target = if shape.gather {
                format!("select(0.0, fm_target[src{j} * {n_out}u + c], live{j})")
            } else {
                format!("fm_target[r{j} * {n_out}u + c]")
            },
        ));
    }
    for (l, layer) in layers.iter().enumerate().rev() {
        let (ni, no, wo) = (layer.inputs, layer.outputs, layer.weight_at);
        s.push_str(&format!(
            "    // layer {l} backward
    for (var o = 0u; o < {no}u; o = o + 1u) {{
"
        ));
        for j in rows.clone() {
            let dj = j * max_w;
            let dpre = if layer.kind == 0 {
                format!("dl[{dj}u + o]")
            } else {
                format!(
                    "dl[{dj}u + o] * derivative({}u, {}, pre[{}u + o])",
                    layer.kind,
                    f32_lit(layer.slope),
                    j * pre_len + pre_at[l]
                )
            };
            s.push_str(&format!(
                "        dp[{dj}u + o] = {dpre};
        fm_delta[(inv * {rpi}u + {j}u) * {no}u + o] = select(0.0, dp[{dj}u + o], in_batch{j});
"
            ));
        }
        s.push_str(&format!(
            "    }}
    for (var k = 0u; k < {ni}u; k = k + 1u) {{
"
        ));
        for j in rows.clone() {
            s.push_str(&format!(
                "        fm_input[(inv * {rpi}u + {j}u) * {ni}u + k] = select(0.0, act[{a}u + k], in_batch{j});\n",
                a = j * act_len + act_at[l],
            ));
        }
        s.push_str("    }\n");
        if l > 0 {
            s.push_str(&stage(wo, ni * no));
        }
        s.push_str("    workgroupBarrier();\n");
        // The weight gradient in blocks of bo x bk entries.
        let (bo, bk) = (block_side(no), block_side(ni));
        let blocks = (no / bo) * (ni / bk);
        let nbk = ni / bk;

        s.push_str(&format!(
            "    for (var blk = inv; blk < {blocks}u; blk = blk + {inv}u) {{
        let o0 = (blk / {nbk}u) * {bo}u;
        let k0 = (blk % {nbk}u) * {bk}u;
"
        ));
        for a in 0..bo {
            for b in 0..bk {
                s.push_str(&format!("        var g{a}_{b} = 0.0;\n"));
            }
        }
        s.push_str(&format!(
            "        for (var q = 0u; q < {t}u; q = q + 1u) {{\n"
        ));
        for a in 0..bo {
            s.push_str(&format!(
                "            let d{a} = fm_delta[q * {no}u + o0 + {a}u];\n"
            ));
        }
        for b in 0..bk {
            s.push_str(&format!(
                "            let x{b} = fm_input[q * {ni}u + k0 + {b}u];\n"
            ));
        }
        for a in 0..bo {
            for b in 0..bk {
                s.push_str(&format!("            g{a}_{b} = g{a}_{b} + d{a} * x{b};\n"));
            }
        }
        s.push_str("        }\n");
        for a in 0..bo {
            for b in 0..bk {
                s.push_str(&format!(
                    "        fm_partial[part + {wo}u + (o0 + {a}u) * {ni}u + k0 + {b}u] = g{a}_{b};\n"
                ));
            }
        }
        s.push_str("    }\n");
        if let Some(b) = layer.bias_at {
            s.push_str(&format!(
                "    for (var o = inv; o < {no}u; o = o + {inv}u) {{
        var acc = 0.0;
        for (var q = 0u; q < {t}u; q = q + 1u) {{
            acc = acc + fm_delta[q * {no}u + o];
        }}
        fm_partial[part + {b}u + o] = acc;
    }}
"
            ));
        }
        if l > 0 {
            s.push_str(&format!("    for (var k = 0u; k < {ni}u; k = k + 1u) {{\n"));
            for j in rows.clone() {
                s.push_str(&format!("        var acc{j} = 0.0;\n"));
            }
            // Unrolled over o: constant indices into the rows' deltas.
            for o in 0..no {
                s.push_str(&format!(
                    "        let wv{o} = {w};\n",
                    w = weight(wo, &format!("{o}u * {ni}u + k")),
                ));
                for j in rows.clone() {
                    s.push_str(&format!(
                        "        acc{j} = acc{j} + dp[{d}u] * wv{o};\n",
                        d = j * max_w + o
                    ));
                }
            }
            for j in rows.clone() {
                s.push_str(&format!(
                    "        dl[{dj}u + k] = acc{j};\n",
                    dj = j * max_w
                ));
            }
            s.push_str("    }\n");
        }
        s.push_str("    workgroupBarrier();\n");
    }
    s.push_str("}\n");
    s
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
        wide[1].outputs = 65;
        wide[2].inputs = 65;
        assert!(MlpShape::new(&wide, 9000).is_none());
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
        assert_eq!(
            b3().with_gather(true).entry_point(),
            "fused_mlp_t32_r1_gather"
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

    fn validate(shape: MlpShape) {
        use crate::params::{FusedMlpParams, Params};
        let src = source(shape);
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
