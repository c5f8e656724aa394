//! The fully fused training pass of a small MLP (every width at most [`MAX_WIDTH`]): one
//! dispatch runs the forward pass, the mean-squared-error gradient and the backward pass of
//! a tile of [`TILE_ROWS`] batch rows, one invocation per row, with every activation and
//! delta in the invocation's registers, in the manner of tiny-cuda-nn's fully fused MLP.
//! Weights and biases are read from the parameter arena (one binding; the slots' offsets
//! are constants of the generated source). For the weight gradient the tile's deltas and
//! layer inputs go through workgroup memory, and each invocation sums some of the layer's
//! gradient entries over the tile's rows; the tile's sums land in its row of a partials
//! table laid out like the parameter arena, and `column_sum` then adds the tiles' rows, in
//! tile order, into the gradient arena.
//!
//! Every row's forward and backward arithmetic is the op-by-op path's, in the same order.
//! The weight and bias gradients are summed per tile and then over tiles, where the op-by-op
//! path sums the batch's rows in one run: the same terms in another grouping, so the last
//! bits can differ (with one tile, the batch fits it, they cannot). The CPU twin
//! `cpu::fused_mlp` groups its sums the same way and gives the kernel's bits.
//!
//! One source per network shape is generated (and kept for the process).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::ACTIVATION;

/// Rows per workgroup (one invocation each).
pub const TILE_ROWS: u32 = 32;

/// The widest layer input or output the fused pass takes (its workgroup memory holds a
/// tile's `TILE_ROWS x MAX_WIDTH` deltas and inputs: 16 KiB, the WebGPU default).
pub const MAX_WIDTH: usize = 64;

/// The most layers the fused pass takes.
pub const MAX_LAYERS: usize = 8;

/// When the trainer runs a network's training pass fused (`SOMA_FUSED_MLP`, or
/// `Gpu::set_fused_mlp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FusedMlp {
    /// Where the network fits and one step is at least `autotune::TUNE_MIN_FLOPS`, whichever
    /// of the fused pass and the op-by-op kernels measures faster on this adapter (cached).
    #[default]
    Auto,
    /// Wherever the network fits.
    On,
    /// Never.
    Off,
}

impl std::str::FromStr for FusedMlp {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<FusedMlp> {
        match s {
            "auto" => Ok(FusedMlp::Auto),
            "on" | "1" => Ok(FusedMlp::On),
            "off" | "0" => Ok(FusedMlp::Off),
            _ => Err(crate::error::Error::Config(format!(
                "unknown fused MLP setting '{s}' (auto, on, off)"
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

    /// A short name of the network for logs and the tuner's cache: widths with each
    /// layer's activation code (and slope where it has one), `nb` for a layer without bias,
    /// e.g. `2-64a1-64a1-1a0`.
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

    /// Workgroup memory the kernel declares, in bytes.
    pub fn workgroup_bytes(&self) -> u64 {
        let layers = self.layers();
        let outs = layers.iter().map(|l| l.outputs).max().unwrap_or(1);
        let ins = layers.iter().map(|l| l.inputs).max().unwrap_or(1);
        let tiles = (TILE_ROWS as u64) * (outs + ins) as u64 * 4;
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
    static CACHE: OnceLock<Mutex<HashMap<MlpShape, &'static str>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    // One source per network shape a process trains: few, so keeping them is cheap.
    let source = *map
        .entry(shape)
        .or_insert_with(|| Box::leak(source(shape).into_boxed_str()));
    (source, entry_point(shape))
}

fn entry_point(shape: MlpShape) -> &'static str {
    if shape.staged {
        "fused_mlp_staged"
    } else {
        "fused_mlp"
    }
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

/// The WGSL of the fused pass for `shape`.
pub fn source(shape: MlpShape) -> String {
    let layers = shape.layers();
    let t = TILE_ROWS;
    let max_w = shape.max_width();
    let max_out = layers.iter().map(|l| l.outputs).max().unwrap_or(1);
    let max_in = layers.iter().map(|l| l.inputs).max().unwrap_or(1);
    // act: every layer's input, then the network's output; pre: every layer's pre-activation.
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
    let mut s = String::new();
    s.push_str(&format!(
        "// Fully fused MLP training pass, generated by src/kernels/fused_mlp.rs.
struct LossParams {{
    rows: u32,
    cols: u32,
    batch_rows: u32,
    scale: f32,
}}

@group(0) @binding(0) var<storage, read_write> fm_partial: array<f32>;
@group(0) @binding(1) var<storage, read_write> fm_pred: array<f32>;
@group(0) @binding(2) var<storage, read_write> fm_row_loss: array<f32>;
@group(0) @binding(3) var<storage, read> fm_x: array<f32>;
@group(0) @binding(4) var<storage, read> fm_target: array<f32>;
@group(0) @binding(5) var<storage, read> fm_w: array<f32>;
@group(0) @binding(6) var<uniform> fm_p: LossParams;

var<workgroup> fm_delta: array<f32, {d}>;
var<workgroup> fm_input: array<f32, {a}>;
{staged_decl}
{funcs}
@compute @workgroup_size({t}, 1, 1)
fn {entry}(@builtin(local_invocation_id) lid: vec3<u32>,
             @builtin(workgroup_id) wid: vec3<u32>) {{
    let s = lid.x;
    let tile = wid.x;
    let row = tile * {t}u + s;
    // Rows past the batch compute on row 0's data and count as zeros; rows past the live
    // rows (a partial last batch) get a zero gradient, as from the loss kernel.
    let in_batch = row < fm_p.batch_rows;
    let live = row < fm_p.rows;
    let r = select(0u, row, in_batch);
    let part = tile * {alen}u;
    var act: array<f32, {act_len}>;
    var pre: array<f32, {pre_len}>;
    var dl: array<f32, {max_w}>;
    var dp: array<f32, {max_w}>;
    for (var i = 0u; i < {n_in}u; i = i + 1u) {{
        act[i] = fm_x[r * {n_in}u + i];
    }}
",
        d = t as usize * max_out,
        a = t as usize * max_in,
        funcs = activation_functions(),
        staged_decl = if shape.staged {
            format!(
                "var<workgroup> fm_wt: array<f32, {}>;\n",
                shape.max_weights()
            )
        } else {
            String::new()
        },
        entry = entry_point(shape),
    ));
    // Where the weights are read: the staged copy, or the arena. Staging copies layer `l`'s
    // weights between two barriers (every invocation takes part).
    let weight = |wo: usize| {
        if shape.staged {
            "fm_wt[".to_string()
        } else {
            format!("fm_w[{wo}u + ")
        }
    };
    let stage = |wo: usize, nw: usize| {
        if shape.staged {
            format!(
                "    workgroupBarrier();
    for (var i = s; i < {nw}u; i = i + {t}u) {{
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
        let bias = match layer.bias_at {
            Some(b) => format!("acc + fm_w[{b}u + o]"),
            None => "acc".to_string(),
        };
        s.push_str(&stage(wo, ni * no));
        s.push_str(&format!(
            "    // layer {l} forward: {ni} -> {no}
    for (var o = 0u; o < {no}u; o = o + 1u) {{
        var acc = 0.0;
        for (var k = 0u; k < {ni}u; k = k + 1u) {{
            acc = acc + act[{ai}u + k] * {w}o * {ni}u + k];
        }}
        let z = {bias};
        pre[{po}u + o] = z;
        act[{ao}u + o] = activate({kind}u, {slope}, z);
    }}
",
            ai = act_at[l],
            ao = act_at[l + 1],
            po = pre_at[l],
            w = weight(wo),
            kind = layer.kind,
            slope = f32_lit(layer.slope),
        ));
    }
    s.push_str(&format!(
        "    // mean squared error and its gradient (mse_loss's formulas)
    var sum = 0.0;
    for (var c = 0u; c < {n_out}u; c = c + 1u) {{
        let y = act[{ao}u + c];
        if (in_batch) {{
            fm_pred[r * {n_out}u + c] = y;
        }}
        let d = y - fm_target[r * {n_out}u + c];
        dl[c] = select(0.0, 2.0 * d * fm_p.scale, live);
        sum = sum + d * d;
    }}
    if (in_batch) {{
        fm_row_loss[r] = select(0.0, sum / f32({n_out}u), live);
    }}
",
        ao = act_at[last],
    ));
    for (l, layer) in layers.iter().enumerate().rev() {
        let (ni, no, wo) = (layer.inputs, layer.outputs, layer.weight_at);
        let dpre = if layer.kind == 0 {
            "dl[o]".to_string()
        } else {
            format!(
                "dl[o] * derivative({}u, {}, pre[{}u + o])",
                layer.kind,
                f32_lit(layer.slope),
                pre_at[l]
            )
        };
        s.push_str(&format!(
            "    // layer {l} backward
    for (var o = 0u; o < {no}u; o = o + 1u) {{
        dp[o] = {dpre};
        fm_delta[s * {no}u + o] = select(0.0, dp[o], in_batch);
    }}
    for (var k = 0u; k < {ni}u; k = k + 1u) {{
        fm_input[s * {ni}u + k] = select(0.0, act[{ai}u + k], in_batch);
    }}
{stage}    workgroupBarrier();
    for (var i = s; i < {nw}u; i = i + {t}u) {{
        let o = i / {ni}u;
        let k = i % {ni}u;
        var acc = 0.0;
        for (var q = 0u; q < {t}u; q = q + 1u) {{
            acc = acc + fm_delta[q * {no}u + o] * fm_input[q * {ni}u + k];
        }}
        fm_partial[part + {wo}u + i] = acc;
    }}
",
            ai = act_at[l],
            nw = ni * no,
            stage = if l > 0 {
                stage(wo, ni * no)
            } else {
                String::new()
            },
        ));
        if let Some(b) = layer.bias_at {
            s.push_str(&format!(
                "    for (var o = s; o < {no}u; o = o + {t}u) {{
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
            s.push_str(&format!(
                "    for (var k = 0u; k < {ni}u; k = k + 1u) {{
        var acc = 0.0;
        for (var o = 0u; o < {no}u; o = o + 1u) {{
            acc = acc + dp[o] * {w}o * {ni}u + k];
        }}
        dl[k] = acc;
    }}
",
                w = weight(wo),
            ));
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
            validate(b3().with_staged(staged));
        }
        assert_eq!(
            b3().with_staged(true).workgroup_bytes(),
            (32 * 128 + 64 * 64) * 4
        );
    }

    fn validate(shape: MlpShape) {
        let src = source(shape);
        assert!(src.contains(&format!("fn {}(", entry_point(shape))));
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{e}\n{src}"));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{e:?}"));
    }
}
