//! Tensor-core matmul kernels (cooperative matrices), generated: one WGSL entry point per
//! form, fragment shape and element types ([`CoopShape`]), workgroup block ([`CoopTile`])
//! and epilogue, in two kinds (staged through workgroup memory: any shape, every epilogue;
//! direct: whole fragments only, no workgroup memory), and the list of shapes an adapter
//! offers that soma can generate ([`supported_shapes`], [`adapter_shapes`]). It does not
//! open devices, build pipelines or record dispatches: the caller requests
//! [`CoopShape::features`] and experimental features when it opens the device, and looks
//! the kernels up with [`generated`] and [`generated_direct`].
//!
//! These forms run only on an adapter that has `Features::EXPERIMENTAL_COOPERATIVE_MATRIX`
//! (Vulkan with `VK_KHR_cooperative_matrix` and the Vulkan memory model at device scope, or
//! Metal on Apple7+/Mac2+); lavapipe and the GL backend have none, so here they are only
//! parsed, validated and translated to SPIR-V by naga, in the tests below. No kernel here
//! has run on a device yet.
//!
//! # What wgpu and naga 30 offer
//! - WGSL: `enable wgpu_cooperative_matrix;`, the types `coop_mat8x8<T, R>` and
//!   `coop_mat16x16<T, R>` only (square: naga's WGSL front end has no other size), `T` f16
//!   or f32 (naga's validator refuses any other element type), role `R` one of `A`, `B`,
//!   `C`; `coopLoad` / `coopStore` (column-major) and `coopLoadT` / `coopStoreT`
//!   (row-major) through a pointer to one element and a stride in elements; and
//!   `coopMultiplyAdd(a, b, c)`, whose `a` and `b` may be f16 while `c` is f32. The
//!   matrices have subgroup scope (naga writes `Scope::Subgroup` in SPIR-V).
//! - A fragment is opaque: naga 30 allows `+` and `-` between two fragments of one type and
//!   `*` by a scalar of the element type, and nothing else (no element access, no
//!   conversion between element types, no `max` or `select`). So no epilogue can run on a
//!   fragment in registers: the staged kernels store their fragments to workgroup memory,
//!   and the epilogue (the add of `p.accumulate`, bias and ReLU or identity, ReLU's
//!   derivative: the [`Epilogue`]s of the other generated kernels) runs from there, one
//!   output per invocation, with the bounds checks of the matrix's edges; an f16
//!   accumulator is widened to f32 there too. The direct kernels can only overwrite or
//!   accumulate (a fragment loaded from `out` is the accumulator's start).
//! - Cooperative operations must run in uniform control flow, and naga checks it with its
//!   own analysis: an `if` whose condition derives from anything but `workgroup_id`,
//!   `num_workgroups`, uniforms and read-only storage makes every cooperative operation
//!   under it an error ("Required uniformity of control flow for COOP_OPS ... is not
//!   fulfilled"), `subgroup_id` included, although it is the same across a subgroup, the
//!   operations' scope. A loop's exit, `break` or `continue` does not count against
//!   uniformity in naga 30, so a subgroup picks its fragments with loops (in the staged
//!   kernels, loops that run once or never: `for (var t = sg; t < T; t = t + T)`), which
//!   are uniform across the subgroup in fact. The test
//!   `naga_rejects_a_subgroup_branch_around_a_cooperative_operation` keeps this checked.
//! - naga 30's SPIR-V for cooperative matrices declares the Vulkan memory model, but still
//!   writes every load and store as private and its barriers without availability and
//!   visibility operations (wgpu issue 8805). The staged kernels pass values between
//!   invocations through workgroup memory and a barrier, as every other workgroup kernel
//!   does, and so rely on drivers that treat the two memory models alike; the direct
//!   kernels pass nothing between invocations.
//! - naga 30 writes no SPIR-V for a `coopStore` whose stride is computed in the call (see
//!   [`coop_direct_source`]); the kernels bind such a stride to a `let` first.
//! - wgpu: `Adapter::cooperative_matrix_properties()` lists the configurations (M, N, K,
//!   A/B and C element types, saturating); wgpu-hal's Vulkan backend keeps only those of
//!   subgroup scope with M, N and K each 8 or 16 and A = B, C = result types; Metal
//!   reports three, all 8 x 8 x 8: f32 x f32 -> f32, f16 x f16 -> f16 and f16 x f16 ->
//!   f32. soma generates the square ones naga can write ([`CoopShape::from_properties`]).
//!   The device needs the feature, `DeviceDescriptor::experimental_features:
//!   unsafe { wgpu::ExperimentalFeatures::enabled() }` (without it `request_device` fails
//!   with `ExperimentalFeaturesNotEnabled`), `Features::SUBGROUP` for `subgroup_id` and
//!   `num_subgroups`, and `Features::SHADER_F16` for f16 fragments or buffers.
//!
//! # The staged kernels ([`coop_source`])
//! A workgroup computes a `bm x bn` block of `out` as `rows x cols` fragments of `s x s`
//! (`bm = rows * s`, `bn = cols * s`). Per slice of `bk = steps * s` in k, its invocations
//! copy a `bm x bk` slice of A and a `bk x bn` slice of B into workgroup memory in the
//! operand's own orientation (coalesced on both sides; values outside the matrices are 0),
//! meet at a barrier, and each subgroup multiplies and adds its fragments from there
//! (`coopLoadT` where the slice is row-major in the fragment's terms, `coopLoad` where it
//! is column-major, which is how nt, nn and tn differ), then meets again. After the last
//! slice the fragments go to workgroup memory and the epilogue writes `out`.
//!
//! A workgroup's subgroup count depends on the adapter's subgroup size (32 on NVIDIA and
//! Apple, 32 or 64 on AMD, 8 to 32 on Intel, up to 128 on Qualcomm) and is not known when
//! the source is written, so fragment `t` of the block goes to subgroup `t % nsg`, in its
//! slot `t / nsg`: each subgroup keeps one accumulator per slot in registers, and a tile
//! has the slots its fragments need over the fewest subgroups its workgroup can have (its
//! invocations over wgpu's largest subgroup size, 128: [`CoopTile::slots`]); the slots a
//! subgroup does not fill stay idle. The workgroup has 32 invocations per fragment, at
//! most 256, so with 32-wide subgroups a subgroup holds one fragment (two in a 4 x 4 block).
//!
//! Any m, n and k, overwriting or accumulating: edges go through the zero-padded slices
//! and the bounds-checked epilogue, so the caller needs no fallback. Every cooperative load
//! and store is of workgroup memory at an offset and stride that are multiples of 16 bytes
//! (Vulkan asks a cooperative load's pointer and stride to be aligned, to 16 bytes where a
//! fragment's row is that wide); the operands' buffers need no alignment beyond their
//! element's. The base of a workgroup array is placed by the driver (naga declares no
//! explicit layout for workgroup memory).
//!
//! # The direct kernels ([`coop_direct_source`])
//! The same blocks, with each fragment loaded from `a` and `b` and stored into `out` by
//! the cooperative operations themselves, where m, n and k are multiples of the fragment
//! side and the accumulator is f32 ([`direct_fits`]); elsewhere the caller takes a staged
//! kernel.
//!
//! Tensor cores sum in their own order, with f16 products, so these kernels do not give
//! the naive kernel's bits, and strict mode must not use them; their twin comparison needs
//! a tolerance for f16 operands (a relative 2^-11 per operand rounding, which soma's f16
//! storage already pays when it converts).

use std::fmt::Write;
use std::sync::OnceLock;

use super::tiled::{cached, epilogue_for, Epilogue, Generated, MatmulForm};
use super::workgroup::{MAX_INVOCATIONS, MAX_WORKGROUP_BYTES};

/// The side of a square fragment: naga 30 writes 8 x 8 and 16 x 16 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CoopSize {
    Eight,
    Sixteen,
}

impl CoopSize {
    pub const ALL: [CoopSize; 2] = [CoopSize::Eight, CoopSize::Sixteen];

    /// Rows (and columns) of a fragment.
    pub fn get(self) -> u32 {
        match self {
            CoopSize::Eight => 8,
            CoopSize::Sixteen => 16,
        }
    }

    /// The size of `n` rows, if naga writes it.
    pub fn of(n: u32) -> Option<CoopSize> {
        match n {
            8 => Some(CoopSize::Eight),
            16 => Some(CoopSize::Sixteen),
            _ => None,
        }
    }
}

/// An element type of a fragment and of its buffer: naga 30 takes f16 and f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CoopScalar {
    F16,
    F32,
}

impl CoopScalar {
    pub const ALL: [CoopScalar; 2] = [CoopScalar::F16, CoopScalar::F32];

    /// The WGSL type.
    pub fn wgsl(self) -> &'static str {
        match self {
            CoopScalar::F16 => "f16",
            CoopScalar::F32 => "f32",
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> u32 {
        match self {
            CoopScalar::F16 => 2,
            CoopScalar::F32 => 4,
        }
    }

    /// A WGSL zero of this type.
    fn zero(self) -> &'static str {
        match self {
            CoopScalar::F16 => "0.0h",
            CoopScalar::F32 => "0.0f",
        }
    }

    /// Elements in 16 bytes: the alignment of a cooperative load's offsets and strides.
    fn per_16_bytes(self) -> u32 {
        16 / self.bytes()
    }

    fn of(t: wgpu::CooperativeScalarType) -> Option<CoopScalar> {
        match t {
            wgpu::CooperativeScalarType::F16 => Some(CoopScalar::F16),
            wgpu::CooperativeScalarType::F32 => Some(CoopScalar::F32),
            wgpu::CooperativeScalarType::I32 | wgpu::CooperativeScalarType::U32 => None,
        }
    }
}

/// A cooperative-matrix configuration soma generates: square fragments of `size`, A and B
/// (and their buffers) of `operand`, the accumulator of `accumulator`. The output buffer
/// is f32 whatever the accumulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoopShape {
    pub size: CoopSize,
    pub operand: CoopScalar,
    pub accumulator: CoopScalar,
}

impl CoopShape {
    /// Every configuration naga 30 can write: 8 x 8 and 16 x 16, f16 or f32 operands, f16
    /// or f32 accumulators.
    pub const ALL: [CoopShape; 8] = [
        CoopShape::new(CoopSize::Eight, CoopScalar::F16, CoopScalar::F32),
        CoopShape::new(CoopSize::Eight, CoopScalar::F16, CoopScalar::F16),
        CoopShape::new(CoopSize::Eight, CoopScalar::F32, CoopScalar::F32),
        CoopShape::new(CoopSize::Eight, CoopScalar::F32, CoopScalar::F16),
        CoopShape::new(CoopSize::Sixteen, CoopScalar::F16, CoopScalar::F32),
        CoopShape::new(CoopSize::Sixteen, CoopScalar::F16, CoopScalar::F16),
        CoopShape::new(CoopSize::Sixteen, CoopScalar::F32, CoopScalar::F32),
        CoopShape::new(CoopSize::Sixteen, CoopScalar::F32, CoopScalar::F16),
    ];

    pub const fn new(size: CoopSize, operand: CoopScalar, accumulator: CoopScalar) -> CoopShape {
        CoopShape {
            size,
            operand,
            accumulator,
        }
    }

    /// `coop16` (f16 operands, f32 accumulator: the tensor cores' usual mixed precision),
    /// `coop16_f16acc`, `coop8_f32in`, `coop8_f32in_f16acc`.
    pub fn name(self) -> String {
        let operand = match self.operand {
            CoopScalar::F16 => "",
            CoopScalar::F32 => "_f32in",
        };
        let accumulator = match self.accumulator {
            CoopScalar::F32 => "",
            CoopScalar::F16 => "_f16acc",
        };
        format!("coop{}{operand}{accumulator}", self.size.get())
    }

    /// Whether any fragment or buffer of these kernels is f16.
    pub fn uses_f16(self) -> bool {
        self.operand == CoopScalar::F16 || self.accumulator == CoopScalar::F16
    }

    /// The device features these kernels need: the cooperative matrices, subgroups (the
    /// kernels read `subgroup_id` and `num_subgroups`) and, with an f16 fragment, f16 in
    /// shaders. `EXPERIMENTAL_COOPERATIVE_MATRIX` is requested only with
    /// `DeviceDescriptor::experimental_features` set to
    /// `unsafe { wgpu::ExperimentalFeatures::enabled() }`.
    pub fn features(self) -> wgpu::Features {
        let mut f = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SUBGROUP;
        if self.uses_f16() {
            f |= wgpu::Features::SHADER_F16;
        }
        f
    }

    /// The shape of one configuration an adapter reports, where soma generates it: M = N =
    /// K = 8 or 16 (naga's fragments are square) and f16 or f32 elements. The saturating
    /// flag concerns integer accumulators only and is ignored.
    pub fn from_properties(p: &wgpu::CooperativeMatrixProperties) -> Option<CoopShape> {
        if p.m_size != p.n_size || p.n_size != p.k_size {
            return None;
        }
        Some(CoopShape::new(
            CoopSize::of(p.m_size)?,
            CoopScalar::of(p.ab_type)?,
            CoopScalar::of(p.cr_type)?,
        ))
    }
}

/// The shapes of `properties` (as `Adapter::cooperative_matrix_properties` lists them) that
/// soma generates, each once, in [`CoopShape`] order.
pub fn supported_shapes(properties: &[wgpu::CooperativeMatrixProperties]) -> Vec<CoopShape> {
    let mut shapes: Vec<CoopShape> = properties
        .iter()
        .filter_map(CoopShape::from_properties)
        .collect();
    shapes.sort_unstable();
    shapes.dedup();
    shapes
}

/// The shapes `adapter` can run: those of its cooperative-matrix configurations that soma
/// generates ([`supported_shapes`]) and whose [`CoopShape::features`] it has. Empty where
/// the adapter lacks the feature (every adapter of the GL backend, lavapipe, most Vulkan
/// drivers without `VK_KHR_cooperative_matrix` or `vulkanMemoryModelDeviceScope`).
/// `Gpu` keeps no adapter, so the caller asks this when it opens the device, and requests
/// the features of the shapes it means to use.
pub fn adapter_shapes(adapter: &wgpu::Adapter) -> Vec<CoopShape> {
    let features = adapter.features();
    if !features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        return Vec::new();
    }
    supported_shapes(&adapter.cooperative_matrix_properties())
        .into_iter()
        .filter(|s| features.contains(s.features()))
        .collect()
}

/// wgpu's largest subgroup size (`wgpu::MAXIMUM_SUBGROUP_MAX_SIZE`): a workgroup of `w`
/// invocations has at least `w / 128` subgroups (and at least one).
const MAX_SUBGROUP: u32 = 128;

/// Invocations per fragment of a block: one 32-wide subgroup, the size of most adapters
/// that have tensor cores.
const INVOCATIONS_PER_FRAGMENT: u32 = 32;

/// A workgroup's block: `rows x cols` fragments, and k staged `steps` fragments at a time.
/// Only the tiles of [`COOP_TILES`] exist outside this crate, so every tile that runs is
/// one the tests validate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoopTile {
    pub(crate) rows: u32,
    pub(crate) cols: u32,
    pub(crate) steps: u32,
}

/// The blocks soma generates. Not every one suits every shape: [`CoopTile::is_valid`]
/// says which fit the workgroup-memory limit ([`tiles_for`] lists them).
pub const COOP_TILES: &[CoopTile] = &[
    CoopTile::new(2, 2, 2),
    CoopTile::new(4, 2, 1),
    CoopTile::new(4, 4, 1),
];

/// Which way an operand runs in memory, seen from its staged slice: along k (A of nt and
/// nn, B of nt) or along the slice's rows (m of A in tn, n of B in nn and tn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    K,
    Rows,
}

fn a_run(form: MatmulForm) -> Run {
    match form {
        MatmulForm::Nt | MatmulForm::Nn => Run::K,
        MatmulForm::Tn => Run::Rows,
    }
}

fn b_run(form: MatmulForm) -> Run {
    match form {
        MatmulForm::Nt => Run::K,
        MatmulForm::Nn | MatmulForm::Tn => Run::Rows,
    }
}

impl CoopTile {
    pub(crate) const fn new(rows: u32, cols: u32, steps: u32) -> CoopTile {
        CoopTile { rows, cols, steps }
    }

    /// `2x2k2` and the like.
    pub fn name(self) -> String {
        format!("{}x{}k{}", self.rows, self.cols, self.steps)
    }

    /// The tile of [`COOP_TILES`] named `s` exactly as [`CoopTile::name`] spells it.
    pub fn parse(s: &str) -> Option<CoopTile> {
        COOP_TILES.iter().copied().find(|t| t.name() == s)
    }

    /// Fragments per block.
    pub fn fragments(self) -> u32 {
        self.rows * self.cols
    }

    /// Invocations per workgroup: 32 per fragment, at most [`MAX_INVOCATIONS`].
    pub fn invocations(self) -> u32 {
        (INVOCATIONS_PER_FRAGMENT * self.fragments()).min(MAX_INVOCATIONS)
    }

    /// Accumulators per subgroup: the fragments over the fewest subgroups the workgroup can
    /// have (its invocations over wgpu's largest subgroup size), rounded up.
    pub fn slots(self) -> u32 {
        self.fragments()
            .div_ceil((self.invocations() / MAX_SUBGROUP).max(1))
    }

    /// The block of `out` (`bm`, `bn`) and the slice of k (`bk`) with `shape`'s fragments.
    pub fn block(self, shape: CoopShape) -> (u32, u32, u32) {
        let s = shape.size.get();
        (self.rows * s, self.cols * s, self.steps * s)
    }

    /// The grid covering an `m x n` output: ceil(n / bn) x ceil(m / bm).
    pub fn grid(self, shape: CoopShape, m: usize, n: usize) -> [u32; 3] {
        let (bm, bn, _) = self.block(shape);
        [(n as u32).div_ceil(bn), (m as u32).div_ceil(bm), 1]
    }

    fn layout(self, form: MatmulForm, shape: CoopShape) -> Layout {
        let (bm, bn, bk) = self.block(shape);
        // Rows padded by 16 bytes, which keeps every fragment's offset and stride on 16
        // bytes and staggers the rows across workgroup-memory banks.
        let pad = shape.operand.per_16_bytes();
        let (sa, a_lines) = match a_run(form) {
            Run::K => (bk + pad, bm),
            Run::Rows => (bm + pad, bk),
        };
        let (sb, b_lines) = match b_run(form) {
            Run::K => (bk + pad, bn),
            Run::Rows => (bn + pad, bk),
        };
        let sc = bn + shape.accumulator.per_16_bytes();
        Layout {
            sa,
            sb,
            sc,
            a_len: sa * a_lines,
            b_len: sb * b_lines,
            c_len: sc * bm,
        }
    }

    /// Bytes of workgroup memory the kernel of `form` with `shape` declares.
    pub fn workgroup_bytes(self, form: MatmulForm, shape: CoopShape) -> u32 {
        let l = self.layout(form, shape);
        (l.a_len + l.b_len) * shape.operand.bytes() + l.c_len * shape.accumulator.bytes()
    }

    /// Whether this tile's kernels with `shape` keep within WebGPU's default limits in every
    /// form: at most [`MAX_INVOCATIONS`] invocations and [`MAX_WORKGROUP_BYTES`] of
    /// workgroup memory.
    pub fn is_valid(self, shape: CoopShape) -> bool {
        self.fragments() > 0
            && self.steps > 0
            && self.invocations() <= MAX_INVOCATIONS
            && MatmulForm::ALL
                .iter()
                .all(|&f| self.workgroup_bytes(f, shape) <= MAX_WORKGROUP_BYTES)
    }
}

/// The tiles of [`COOP_TILES`] valid with `shape`.
pub fn tiles_for(shape: CoopShape) -> impl Iterator<Item = CoopTile> {
    COOP_TILES
        .iter()
        .copied()
        .filter(move |t| t.is_valid(shape))
}

/// Where a kernel keeps its slices, in elements: the stride of a staged line of A, of B and
/// of the output block (`sa`, `sb`, `sc`), and each array's length.
struct Layout {
    sa: u32,
    sb: u32,
    sc: u32,
    a_len: u32,
    b_len: u32,
    c_len: u32,
}

/// The entry point of a generated kernel, e.g. `matmul_nt_coop16_2x2k2` or
/// `matmul_nn_coop8_f32in_4x4k1_relu_grad`.
pub fn entry_name(
    form: MatmulForm,
    shape: CoopShape,
    tile: CoopTile,
    epilogue: Epilogue,
) -> String {
    format!(
        "matmul_{}_{}_{}{}",
        form.name(),
        shape.name(),
        tile.name(),
        epilogue.suffix()
    )
}

/// The generated source and entry point of one kernel, built once per process (an
/// epilogue the form lacks is `Store`, as in `tiled::generated`).
pub fn generated(
    form: MatmulForm,
    shape: CoopShape,
    tile: CoopTile,
    epilogue: Epilogue,
) -> (&'static str, &'static str) {
    static CACHE: Generated<(CoopShape, CoopTile)> = OnceLock::new();
    let epilogue = epilogue_for(form, epilogue);
    // A bounded set exists (8 shapes x COOP_TILES x 3 forms, plus 3 epilogues).
    cached(&CACHE, (form, (shape, tile), epilogue), || {
        (
            coop_source(form, shape, tile, epilogue),
            entry_name(form, shape, tile, epilogue),
        )
    })
}

/// The WGSL of one kernel (an epilogue the form lacks is `Store`), with the bindings of the
/// other matmul kernels: `out` (f32), `a` and `b` (of `shape.operand`), the epilogue's
/// buffers (f32), then `MatmulParams`. Its grid is [`CoopTile::grid`].
pub fn coop_source(
    form: MatmulForm,
    shape: CoopShape,
    tile: CoopTile,
    epilogue: Epilogue,
) -> String {
    let epilogue = epilogue_for(form, epilogue);
    let entry = entry_name(form, shape, tile, epilogue);
    let s = shape.size.get();
    let (bm, bn, bk) = tile.block(shape);
    let (wg, frags, slots) = (tile.invocations(), tile.fragments(), tile.slots());
    let Layout {
        sa,
        sb,
        sc,
        a_len,
        b_len,
        c_len,
    } = tile.layout(form, shape);
    let (e, ce) = (shape.operand.wgsl(), shape.accumulator.wgsl());
    let frag = |role: &str, t: &str| format!("coop_mat{s}x{s}<{t}, {role}>");
    let enable_f16 = if shape.uses_f16() {
        "enable f16;\n"
    } else {
        ""
    };
    let extra_bindings = match epilogue {
        Epilogue::Store => "@group(0) @binding(3) var<uniform> p: MatmulParams;\n",
        Epilogue::BiasAct { .. } => {
            "@group(0) @binding(3) var<storage, read_write> act_out: array<f32>;\n\
             @group(0) @binding(4) var<storage, read> bias_in: array<f32>;\n\
             @group(0) @binding(5) var<uniform> p: MatmulParams;\n"
        }
        Epilogue::ReluGrad => {
            "@group(0) @binding(3) var<storage, read> pre_in: array<f32>;\n\
             @group(0) @binding(4) var<uniform> p: MatmulParams;\n"
        }
    };
    let a_layout = match a_run(form) {
        Run::K => format!("a_tile[r * {sa} + kk] = A(row0 + r, k0 + kk)"),
        Run::Rows => format!("a_tile[kk * {sa} + r] = A(row0 + r, k0 + kk)"),
    };
    let b_layout = match b_run(form) {
        Run::K => format!("b_tile[c * {sb} + kk] = B(k0 + kk, col0 + c)"),
        Run::Rows => format!("b_tile[kk * {sb} + c] = B(k0 + kk, col0 + c)"),
    };
    let mut src = String::new();
    let _ = write!(
        src,
        "// Generated by soma (src/ops/matmul/coop.rs): {entry}, a {bm} x {bn} block per \
         workgroup of {wg} invocations as {rows} x {cols} fragments of {s} x {s} ({e} \
         operands, {ce} accumulators), k staged {bk} at a time; {slots} fragment slot(s) per \
         subgroup.\n\
         {enable_f16}\
         enable wgpu_cooperative_matrix;\n\n\
         struct MatmulParams {{\n    m: u32,\n    n: u32,\n    k: u32,\n    accumulate: u32,\n}}\n\n\
         @group(0) @binding(0) var<storage, read_write> out: array<f32>;\n\
         @group(0) @binding(1) var<storage, read> a: array<{e}>;\n\
         @group(0) @binding(2) var<storage, read> b: array<{e}>;\n\
         {extra_bindings}\n\
         // {a_layout}; {b_layout};\n\
         // c_tile[r * {sc} + c]: out(row0 + r, col0 + c) before the epilogue.\n\
         var<workgroup> a_tile: array<{e}, {a_len}>;\n\
         var<workgroup> b_tile: array<{e}, {b_len}>;\n\
         var<workgroup> c_tile: array<{ce}, {c_len}>;\n\n\
         @compute @workgroup_size({wg}, 1, 1)\n\
         fn {entry}(@builtin(workgroup_id) wid: vec3<u32>, \
         @builtin(local_invocation_index) tid: u32, @builtin(subgroup_id) sg: u32, \
         @builtin(num_subgroups) nsg: u32) {{\n",
        rows = tile.rows,
        cols = tile.cols,
    );
    let mut line = |text: String| {
        src.push_str("    ");
        src.push_str(&text);
        src.push('\n');
    };
    line(format!("let row0 = wid.y * {bm}u;"));
    line(format!("let col0 = wid.x * {bn}u;"));
    for j in 0..slots {
        line(format!("var acc{j}: {};", frag("C", ce)));
    }
    line(format!("for (var k0 = 0u; k0 < p.k; k0 = k0 + {bk}u) {{"));
    stage(
        &mut line,
        Operand::A,
        a_run(form),
        bm,
        bk,
        sa,
        wg,
        shape.operand,
    );
    stage(
        &mut line,
        Operand::B,
        b_run(form),
        bn,
        bk,
        sb,
        wg,
        shape.operand,
    );
    line("    workgroupBarrier();".into());
    for j in 0..slots {
        slot_loop(&mut line, "    ", j, frags, tile.cols, s);
        for step in 0..tile.steps {
            let kk = step * s;
            let a_load = match a_run(form) {
                // Row-major (m, k): rows sa apart.
                Run::K => format!(
                    "coopLoadT<{}>(&a_tile[fr * {sa}u + {kk}u], {sa}u)",
                    frag("A", e)
                ),
                // Column-major: the k columns sa apart.
                Run::Rows => format!(
                    "coopLoad<{}>(&a_tile[{kk}u * {sa}u + fr], {sa}u)",
                    frag("A", e)
                ),
            };
            let b_load = match b_run(form) {
                // Column-major (k, n): the n columns sb apart.
                Run::K => format!(
                    "coopLoad<{}>(&b_tile[fc * {sb}u + {kk}u], {sb}u)",
                    frag("B", e)
                ),
                // Row-major: the k rows sb apart.
                Run::Rows => format!(
                    "coopLoadT<{}>(&b_tile[{kk}u * {sb}u + fc], {sb}u)",
                    frag("B", e)
                ),
            };
            line(format!(
                "        acc{j} = coopMultiplyAdd({a_load}, {b_load}, acc{j});"
            ));
        }
        line("    }".into());
    }
    line("    workgroupBarrier();".into());
    line("}".into());
    for j in 0..slots {
        slot_loop(&mut line, "", j, frags, tile.cols, s);
        line(format!(
            "    coopStoreT(acc{j}, &c_tile[fr * {sc}u + fc], {sc}u);"
        ));
        line("}".into());
    }
    line("workgroupBarrier();".into());
    store(&mut line, bm, bn, sc, wg, shape.accumulator, epilogue);
    src.push_str("}\n");
    src
}

/// The loop that gives a subgroup's slot `j` its fragment `t = sg + j * nsg` of the block,
/// when there is one (`t < frags`): it runs once or never, in the stead of an `if` that
/// naga would refuse around cooperative operations (see the module docs). `fr` and `fc`
/// are the fragment's first row and column in the block.
fn slot_loop(line: &mut impl FnMut(String), pre: &str, j: u32, frags: u32, cols: u32, s: u32) {
    let first = if j == 0 {
        "sg".to_string()
    } else {
        format!("sg + {j}u * nsg")
    };
    line(format!(
        "{pre}for (var t = {first}; t < {frags}u; t = t + {frags}u) {{"
    ));
    line(format!("{pre}    let fr = t / {cols}u * {s}u;"));
    line(format!("{pre}    let fc = t % {cols}u * {s}u;"));
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Operand {
    A,
    B,
}

/// The copy of one operand's slice (`width` rows of m or n by `bk` of k) into workgroup
/// memory, in the operand's own orientation: consecutive invocations read consecutive
/// elements of the operand and write consecutive words of the slice. Values outside the
/// matrix are 0, so the fragments at the edges multiply zeros there.
#[allow(clippy::too_many_arguments)]
fn stage(
    line: &mut impl FnMut(String),
    operand: Operand,
    run: Run,
    width: u32,
    bk: u32,
    stride: u32,
    wg: u32,
    scalar: CoopScalar,
) {
    // The slice's first row in the operand, the operand's rows, its line index.
    let (global, tile, start, extent, idx) = match operand {
        Operand::A => ("a", "a_tile", "row0", "p.m", "r"),
        Operand::B => ("b", "b_tile", "col0", "p.n", "c"),
    };
    line(format!(
        "    for (var i = tid; i < {}u; i = i + {wg}u) {{",
        width * bk
    ));
    let (at, to) = match run {
        Run::K => {
            line(format!("        let {idx} = i / {bk}u;"));
            line(format!("        let kk = i % {bk}u;"));
            (
                format!("({start} + {idx}) * p.k + k0 + kk"),
                format!("{idx} * {stride}u + kk"),
            )
        }
        Run::Rows => {
            line(format!("        let kk = i / {width}u;"));
            line(format!("        let {idx} = i % {width}u;"));
            (
                format!("(k0 + kk) * {extent} + {start} + {idx}"),
                format!("kk * {stride}u + {idx}"),
            )
        }
    };
    line(format!("        var v = {};", scalar.zero()));
    line(format!(
        "        if ({start} + {idx} < {extent} && k0 + kk < p.k) {{ v = {global}[{at}]; }}"
    ));
    line(format!("        {tile}[{to}] = v;"));
    line("    }".into());
}

/// The epilogue: each in-bounds output of the block, from `c_tile`, through `epilogue`.
/// `Store` overwrites or adds as `p.accumulate` says; the fused epilogues overwrite, as the
/// other generated kernels' do.
fn store(
    line: &mut impl FnMut(String),
    bm: u32,
    bn: u32,
    sc: u32,
    wg: u32,
    accumulator: CoopScalar,
    epilogue: Epilogue,
) {
    if let Epilogue::Store = epilogue {
        line("let add = p.accumulate != 0u;".into());
    }
    line(format!(
        "for (var i = tid; i < {}u; i = i + {wg}u) {{",
        bm * bn
    ));
    line(format!("    let r = i / {bn}u;"));
    line(format!("    let c = i % {bn}u;"));
    line("    if (row0 + r < p.m && col0 + c < p.n) {".into());
    line("        let o = (row0 + r) * p.n + col0 + c;".into());
    let value = format!("c_tile[r * {sc}u + c]");
    line(match accumulator {
        CoopScalar::F32 => format!("        let v = {value};"),
        CoopScalar::F16 => format!("        let v = f32({value});"),
    });
    match epilogue {
        Epilogue::Store => {
            line("        if (add) { out[o] = out[o] + v; } else { out[o] = v; }".into());
        }
        Epilogue::BiasAct { relu } => {
            line("        let z = v + bias_in[col0 + c];".into());
            line("        out[o] = z;".into());
            if relu {
                line("        act_out[o] = max(z, 0.0);".into());
            } else {
                line("        act_out[o] = z;".into());
            }
        }
        Epilogue::ReluGrad => {
            line("        out[o] = v * select(0.0, 1.0, pre_in[o] > 0.0);".into());
        }
    }
    line("    }".into());
    line("}".into());
}

/// Whether the direct kernels ([`coop_direct_source`]) of `shape` can run a product of
/// these sizes with `out`, `a` and `b` starting `offsets` bytes into their buffers: an f32
/// accumulator (stored straight into the f32 output), m, n and k multiples of the fragment
/// side (a fragment never reaches past the matrices, and every row of a fragment and every
/// stride then falls on 16 bytes), and each binding on 16 bytes (soma's own tensors are;
/// an arena laid out by hand may not be). Elsewhere the staged kernels take the product.
pub fn direct_fits(shape: CoopShape, m: usize, n: usize, k: usize, offsets: [u64; 3]) -> bool {
    let s = shape.size.get() as usize;
    shape.accumulator == CoopScalar::F32
        && m.is_multiple_of(s)
        && n.is_multiple_of(s)
        && k.is_multiple_of(s)
        && offsets.iter().all(|o| o.is_multiple_of(16))
}

/// The entry point of a direct kernel, e.g. `matmul_tn_coop16_4x2_direct`.
pub fn direct_entry_name(form: MatmulForm, shape: CoopShape, tile: CoopTile) -> String {
    format!(
        "matmul_{}_{}_{}x{}_direct",
        form.name(),
        shape.name(),
        tile.rows,
        tile.cols
    )
}

/// The generated source and entry point of one direct kernel, built once per process;
/// `None` for an f16 accumulator (see [`coop_direct_source`]).
pub fn generated_direct(
    form: MatmulForm,
    shape: CoopShape,
    tile: CoopTile,
) -> Option<(&'static str, &'static str)> {
    static CACHE: Generated<(CoopShape, CoopTile)> = OnceLock::new();
    let source = coop_direct_source(form, shape, tile)?;
    Some(cached(
        &CACHE,
        (form, (shape, tile), Epilogue::Store),
        || (source, direct_entry_name(form, shape, tile)),
    ))
}

/// The WGSL of a direct kernel: the staged kernel's product and bindings (`out`, `a`, `b`,
/// `MatmulParams`; `Store` only, accumulating as `p.accumulate` says), with every fragment
/// loaded from the operands' buffers and stored into `out` by the cooperative operations
/// themselves, for the shapes of [`direct_fits`]. No workgroup memory and no barrier: a
/// subgroup takes fragments `sg`, `sg + nsg`, ... of its block and runs each through all
/// of k, one fragment of k at a time; `steps` of `tile` is not used. `None` for an f16
/// accumulator, which a fragment cannot convert to the f32 output.
///
/// Nothing passes between invocations through plain memory here, which matters under
/// naga 30's SPIR-V: cooperative matrices switch the module to the Vulkan memory model,
/// where naga still writes its loads and stores as private and its barriers without
/// availability and visibility operations (wgpu issue 8805), so the staged kernels'
/// exchange through workgroup memory relies on drivers that treat the two models alike.
///
/// The store's stride is bound to a `let` first: naga 30's WGSL front end pushes the
/// `CooperativeStore` statement without emitting the expressions computed in its arguments
/// (front/wgsl/lower/mod.rs, `coopStore`, unlike `textureStore`), so `coopStoreT(acc,
/// &out[o], p.n)` validates but its SPIR-V output panics ("Expression [..] is not
/// cached!", back/spv/block.rs:4160). A literal stride, as the staged kernels have, is a
/// constant and unaffected.
pub fn coop_direct_source(form: MatmulForm, shape: CoopShape, tile: CoopTile) -> Option<String> {
    if shape.accumulator != CoopScalar::F32 {
        return None;
    }
    let entry = direct_entry_name(form, shape, tile);
    let s = shape.size.get();
    let (bm, bn, _) = tile.block(shape);
    let (wg, frags, cols) = (tile.invocations(), tile.fragments(), tile.cols);
    let e = shape.operand.wgsl();
    let frag = |role: &str, t: &str| format!("coop_mat{s}x{s}<{t}, {role}>");
    let enable_f16 = if shape.uses_f16() {
        "enable f16;\n"
    } else {
        ""
    };
    // A (r, k0) and B (k0, c) as fragments, in each form's layout (see `coop_source`).
    let a_load = match a_run(form) {
        // a (m, k), row-major: rows k apart.
        Run::K => format!("coopLoadT<{}>(&a[r * p.k + k0], p.k)", frag("A", e)),
        // a (k, m): column-major in A's terms, columns m apart.
        Run::Rows => format!("coopLoad<{}>(&a[k0 * p.m + r], p.m)", frag("A", e)),
    };
    let b_load = match b_run(form) {
        // b (n, k): column-major in B's terms, columns k apart.
        Run::K => format!("coopLoad<{}>(&b[c * p.k + k0], p.k)", frag("B", e)),
        // b (k, n), row-major: rows n apart.
        Run::Rows => format!("coopLoadT<{}>(&b[k0 * p.n + c], p.n)", frag("B", e)),
    };
    let c_frag = frag("C", "f32");
    let mut src = String::new();
    let _ = write!(
        src,
        "// Generated by soma (src/ops/matmul/coop.rs): {entry}, a {bm} x {bn} block per \
         workgroup of {wg} invocations as {rows} x {cols} fragments of {s} x {s} ({e} \
         operands, f32 accumulators) read and written in place; m, n and k are multiples of \
         {s}.\n\
         {enable_f16}\
         enable wgpu_cooperative_matrix;\n\n\
         struct MatmulParams {{\n    m: u32,\n    n: u32,\n    k: u32,\n    accumulate: u32,\n}}\n\n\
         @group(0) @binding(0) var<storage, read_write> out: array<f32>;\n\
         @group(0) @binding(1) var<storage, read> a: array<{e}>;\n\
         @group(0) @binding(2) var<storage, read> b: array<{e}>;\n\
         @group(0) @binding(3) var<uniform> p: MatmulParams;\n\n\
         @compute @workgroup_size({wg}, 1, 1)\n\
         fn {entry}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_id) sg: u32, \
         @builtin(num_subgroups) nsg: u32) {{\n\
         \x20   let row0 = wid.y * {bm}u;\n\
         \x20   let col0 = wid.x * {bn}u;\n\
         \x20   // Fragment t of the block, (r, c) in out; past the matrix's edge the subgroup\n\
         \x20   // skips it (a `continue` does not count against uniformity in naga 30, an `if`\n\
         \x20   // around the operations would).\n\
         \x20   for (var t = sg; t < {frags}u; t = t + nsg) {{\n\
         \x20       let r = row0 + t / {cols}u * {s}u;\n\
         \x20       let c = col0 + t % {cols}u * {s}u;\n\
         \x20       if (r >= p.m || c >= p.n) {{ continue; }}\n\
         \x20       let o = r * p.n + c;\n\
         \x20       // The stride as a `let`: naga 30 writes no SPIR-V for a coopStoreT whose\n\
         \x20       // stride is computed in the call (see `coop_direct_source`).\n\
         \x20       let ld = p.n;\n\
         \x20       var acc: {c_frag};\n\
         \x20       if (p.accumulate != 0u) {{ acc = coopLoadT<{c_frag}>(&out[o], ld); }}\n\
         \x20       for (var k0 = 0u; k0 < p.k; k0 = k0 + {s}u) {{\n\
         \x20           acc = coopMultiplyAdd({a_load}, {b_load}, acc);\n\
         \x20       }}\n\
         \x20       coopStoreT(acc, &out[o], ld);\n\
         \x20   }}\n\
         }}\n",
        rows = tile.rows,
    );
    Some(src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use naga::back::spv;
    use naga::valid::{Capabilities, ValidationFlags, Validator};

    const EPILOGUES: [Epilogue; 4] = [
        Epilogue::Store,
        Epilogue::BiasAct { relu: true },
        Epilogue::BiasAct { relu: false },
        Epilogue::ReluGrad,
    ];

    /// Every kernel soma generates, once each: (form, shape, tile, epilogue).
    fn every_kernel() -> Vec<(MatmulForm, CoopShape, CoopTile, Epilogue)> {
        let mut all = Vec::new();
        for form in MatmulForm::ALL {
            for shape in CoopShape::ALL {
                for tile in tiles_for(shape) {
                    for epilogue in EPILOGUES {
                        let k = (form, shape, tile, epilogue_for(form, epilogue));
                        if !all.contains(&k) {
                            all.push(k);
                        }
                    }
                }
            }
        }
        all
    }

    /// What a device must grant for `shape`'s kernels, in naga's terms: cooperative
    /// matrices, subgroups (`subgroup_id`, `num_subgroups`) and f16 where any fragment or
    /// buffer is f16 (the validator's counterparts of [`CoopShape::features`]).
    fn capabilities(shape: CoopShape) -> Capabilities {
        let mut caps = Capabilities::COOPERATIVE_MATRIX | Capabilities::SUBGROUP;
        if shape.uses_f16() {
            caps |= Capabilities::SHADER_FLOAT16;
        }
        caps
    }

    /// Parses and validates `src`, or the naga error, rendered against the source.
    fn validate(
        src: &str,
        caps: Capabilities,
    ) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
        let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
        let info = Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .map_err(|e| e.emit_to_string(src))?;
        Ok((module, info))
    }

    #[test]
    fn every_generated_kernel_validates_with_naga_and_names_its_entry_point() {
        let kernels = every_kernel();
        // 3 forms x 8 shapes x their tiles, nt with 3 epilogues, nn with 2, tn with 1.
        assert!(kernels.len() >= 6 * 8, "{} kernels", kernels.len());
        for (form, shape, tile, epilogue) in kernels {
            let name = entry_name(form, shape, tile, epilogue);
            let src = coop_source(form, shape, tile, epilogue);
            let (module, _) = validate(&src, capabilities(shape))
                .unwrap_or_else(|e| panic!("{name} does not validate:\n{e}\n{src}"));
            assert_eq!(module.entry_points.len(), 1, "{name}");
            let ep = &module.entry_points[0];
            assert_eq!(ep.name, name, "the source names another entry point");
            assert_eq!(ep.stage, naga::ShaderStage::Compute, "{name}");
            assert_eq!(ep.workgroup_size, [tile.invocations(), 1, 1], "{name}");
            // The same bindings as the other generated matmul kernels.
            let mut bindings: Vec<(u32, String)> = module
                .global_variables
                .iter()
                .filter_map(|(_, g)| Some((g.binding.as_ref()?.binding, g.name.clone()?)))
                .collect();
            bindings.sort();
            let want: &[&str] = match epilogue {
                Epilogue::Store => &["out", "a", "b", "p"],
                Epilogue::BiasAct { .. } => &["out", "a", "b", "act_out", "bias_in", "p"],
                Epilogue::ReluGrad => &["out", "a", "b", "pre_in", "p"],
            };
            let got: Vec<&str> = bindings.iter().map(|(_, n)| n.as_str()).collect();
            assert_eq!(got, want, "{name}");
            assert!(
                bindings
                    .iter()
                    .enumerate()
                    .all(|(i, (b, _))| *b == i as u32),
                "{name}: bindings are 0.."
            );
            // The workgroup memory the tile says, within the limit.
            let bytes: u32 = module
                .global_variables
                .iter()
                .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
                .map(|(_, g)| module.types[g.ty].inner.size(module.to_ctx()))
                .sum();
            assert_eq!(bytes, tile.workgroup_bytes(form, shape), "{name}");
            assert!(bytes <= MAX_WORKGROUP_BYTES, "{name}");
            // A local named like a global would read the wrong thing afterwards.
            for g in [
                "out", "a", "b", "p", "act_out", "bias_in", "pre_in", "a_tile", "b_tile", "c_tile",
            ] {
                assert!(
                    !src.contains(&format!("let {g} ")) && !src.contains(&format!("var {g} ")),
                    "{name}: a local shadows `{g}`"
                );
            }
        }
    }

    /// The SPIR-V capabilities wgpu-hal 30's Vulkan backend grants a device opened with
    /// `features` (vulkan/adapter.rs, `naga_options`: the ones every device has, then those
    /// of each feature; with `EXPERIMENTAL_COOPERATIVE_MATRIX`, `CooperativeMatrixKHR` and
    /// `VulkanMemoryModel`). naga refuses to write a module that needs any other.
    fn vulkan_capabilities(features: wgpu::Features) -> naga::FastHashSet<spv::Capability> {
        use spv::Capability as C;
        let mut caps = vec![
            C::Shader,
            C::Matrix,
            C::Sampled1D,
            C::Image1D,
            C::ImageQuery,
            C::DerivativeControl,
            C::StorageImageExtendedFormats,
        ];
        if features.contains(wgpu::Features::SUBGROUP) {
            caps.extend([
                C::GroupNonUniform,
                C::GroupNonUniformVote,
                C::GroupNonUniformArithmetic,
                C::GroupNonUniformBallot,
                C::GroupNonUniformShuffle,
                C::GroupNonUniformShuffleRelative,
                C::GroupNonUniformQuad,
            ]);
        }
        if features.contains(wgpu::Features::SHADER_F16) {
            caps.push(C::Float16);
        }
        if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            caps.extend([C::CooperativeMatrixKHR, C::VulkanMemoryModel]);
        }
        caps.into_iter().collect()
    }

    /// Each instruction of a SPIR-V module: (opcode, operands).
    fn instructions(words: &[u32]) -> Vec<(u32, &[u32])> {
        let mut all = Vec::new();
        let mut at = 5; // past the header
        while at < words.len() {
            let count = (words[at] >> 16) as usize;
            assert!(count > 0 && at + count <= words.len(), "malformed SPIR-V");
            all.push((words[at] & 0xffff, &words[at + 1..at + count]));
            at += count;
        }
        all
    }

    /// `entry` of `module` as SPIR-V `lang_version`, written as wgpu-hal 30's Vulkan backend
    /// writes it for a device with `shape`'s features: its capabilities only, indices
    /// clamped (no robustBufferAccess2), workgroup memory zeroed by code, loops bounded.
    fn write_spirv(
        module: &naga::Module,
        info: &naga::valid::ModuleInfo,
        shape: CoopShape,
        entry: &str,
        lang_version: (u8, u8),
    ) -> Vec<u32> {
        let options = spv::Options {
            lang_version,
            flags: spv::WriterFlags::empty(),
            capabilities: Some(vulkan_capabilities(shape.features())),
            bounds_check_policies: naga::proc::BoundsCheckPolicies {
                index: naga::proc::BoundsCheckPolicy::Restrict,
                buffer: naga::proc::BoundsCheckPolicy::Restrict,
                image_load: naga::proc::BoundsCheckPolicy::Restrict,
                binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
            },
            zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::Polyfill,
            force_loop_bounding: true,
            ..spv::Options::default()
        };
        let pipeline = spv::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: entry.to_string(),
        };
        spv::write_vec(module, info, &options, Some(&pipeline))
            .unwrap_or_else(|e| panic!("{entry}: SPIR-V {lang_version:?}: {e}"))
    }

    // SPIR-V opcodes and operands (SPIR-V 1.6 and SPV_KHR_cooperative_matrix).
    const OP_MEMORY_MODEL: u32 = 14;
    const OP_CAPABILITY: u32 = 17;
    const OP_COOP_LOAD: u32 = 4457;
    const OP_COOP_STORE: u32 = 4458;
    const OP_COOP_MUL_ADD: u32 = 4459;
    const MEMORY_MODEL_VULKAN: u32 = 3;

    /// Checks that `words` declare cooperative matrices under the Vulkan memory model,
    /// subgroups, and f16 where `shape` has it, and returns how many cooperative
    /// (loads, stores, multiply-adds) they hold.
    fn check_spirv(words: &[u32], shape: CoopShape, name: &str) -> (u32, u32, u32) {
        let ops = instructions(words);
        let count = |op: u32| ops.iter().filter(|(o, _)| *o == op).count() as u32;
        let caps: Vec<u32> = ops
            .iter()
            .filter(|(o, _)| *o == OP_CAPABILITY)
            .map(|(_, operands)| operands[0])
            .collect();
        for cap in [
            spv::Capability::CooperativeMatrixKHR,
            spv::Capability::VulkanMemoryModel,
            spv::Capability::GroupNonUniform,
        ] {
            assert!(caps.contains(&(cap as u32)), "{name}: no {cap:?}");
        }
        assert_eq!(
            caps.contains(&(spv::Capability::Float16 as u32)),
            shape.uses_f16(),
            "{name}"
        );
        let model = ops.iter().find(|(o, _)| *o == OP_MEMORY_MODEL).unwrap();
        assert_eq!(model.1[1], MEMORY_MODEL_VULKAN, "{name}");
        (
            count(OP_COOP_LOAD),
            count(OP_COOP_STORE),
            count(OP_COOP_MUL_ADD),
        )
    }

    #[test]
    fn every_generated_kernel_translates_to_spirv_for_vulkan() {
        for (form, shape, tile, epilogue) in every_kernel() {
            let name = entry_name(form, shape, tile, epilogue);
            let src = coop_source(form, shape, tile, epilogue);
            let (module, info) = validate(&src, capabilities(shape)).unwrap();
            // SPIR-V 1.3 (what wgpu-hal writes for a Vulkan 1.1 device) and 1.6 (from 1.3).
            for lang_version in [(1, 3), (1, 6)] {
                let words = write_spirv(&module, &info, shape, &name, lang_version);
                let (loads, stores, mul_adds) = check_spirv(&words, shape, &name);
                // One multiply-add per slot and step of k, two loads each, one store per
                // slot: the cooperative operations the source has, and no others.
                let (slots, steps) = (tile.slots(), tile.steps);
                assert_eq!(mul_adds, slots * steps, "{name}");
                assert_eq!(loads, 2 * slots * steps, "{name}");
                assert_eq!(stores, slots, "{name}");
            }
        }
    }

    #[test]
    fn every_direct_kernel_validates_and_translates_to_spirv() {
        let mut count = 0;
        for form in MatmulForm::ALL {
            for shape in CoopShape::ALL {
                for &tile in COOP_TILES {
                    let Some(src) = coop_direct_source(form, shape, tile) else {
                        assert_eq!(shape.accumulator, CoopScalar::F16, "{}", shape.name());
                        continue;
                    };
                    count += 1;
                    let name = direct_entry_name(form, shape, tile);
                    let (module, info) = validate(&src, capabilities(shape))
                        .unwrap_or_else(|e| panic!("{name} does not validate:\n{e}\n{src}"));
                    assert_eq!(module.entry_points.len(), 1, "{name}");
                    let ep = &module.entry_points[0];
                    assert_eq!(ep.name, name, "the source names another entry point");
                    assert_eq!(ep.workgroup_size, [tile.invocations(), 1, 1], "{name}");
                    let mut bindings: Vec<(u32, String)> = module
                        .global_variables
                        .iter()
                        .filter_map(|(_, g)| Some((g.binding.as_ref()?.binding, g.name.clone()?)))
                        .collect();
                    bindings.sort();
                    let names: Vec<&str> = bindings.iter().map(|(_, n)| n.as_str()).collect();
                    assert_eq!(names, ["out", "a", "b", "p"], "{name}");
                    assert!(
                        module
                            .global_variables
                            .iter()
                            .all(|(_, g)| g.space != naga::AddressSpace::WorkGroup),
                        "{name}: no workgroup memory"
                    );
                    for lang_version in [(1, 3), (1, 6)] {
                        let words = write_spirv(&module, &info, shape, &name, lang_version);
                        // A and B per step of k, and out when accumulating; one store, one
                        // multiply-add.
                        assert_eq!(check_spirv(&words, shape, &name), (3, 1, 1), "{name}");
                    }
                }
            }
        }
        // 3 forms x 4 shapes with f32 accumulators x the tiles.
        assert_eq!(count, 3 * 4 * COOP_TILES.len());
        let shape = CoopShape::ALL[4];
        assert_eq!(
            direct_entry_name(MatmulForm::Tn, shape, CoopTile::new(4, 2, 1)),
            "matmul_tn_coop16_4x2_direct"
        );
        let (src, entry) = generated_direct(MatmulForm::Nt, shape, COOP_TILES[0]).unwrap();
        assert_eq!(entry, "matmul_nt_coop16_2x2_direct");
        let again = generated_direct(MatmulForm::Nt, shape, COOP_TILES[0]).unwrap();
        assert!(std::ptr::eq(src, again.0));
    }

    #[test]
    fn direct_kernels_take_whole_fragments_on_16_bytes() {
        let s16 = CoopShape::new(CoopSize::Sixteen, CoopScalar::F16, CoopScalar::F32);
        let s8 = CoopShape::new(CoopSize::Eight, CoopScalar::F32, CoopScalar::F32);
        let acc16 = CoopShape::new(CoopSize::Sixteen, CoopScalar::F16, CoopScalar::F16);
        assert!(direct_fits(s16, 64, 784, 256, [0, 0, 4096]));
        assert!(direct_fits(s16, 16, 16, 16, [0, 16, 32]));
        assert!(!direct_fits(s16, 64, 10, 256, [0, 0, 0]), "n = 10");
        assert!(!direct_fits(s16, 64, 32, 8, [0, 0, 0]), "k = 8 < 16");
        assert!(!direct_fits(s16, 7, 32, 16, [0, 0, 0]), "m = 7");
        assert!(!direct_fits(s16, 64, 32, 16, [0, 8, 0]), "a at 8 bytes");
        assert!(direct_fits(s8, 8, 24, 40, [0, 0, 0]));
        assert!(!direct_fits(s8, 8, 20, 40, [0, 0, 0]));
        assert!(
            !direct_fits(acc16, 64, 64, 64, [0, 0, 0]),
            "f16 accumulator"
        );
        assert!(coop_direct_source(MatmulForm::Nn, acc16, COOP_TILES[0]).is_none());
        assert!(generated_direct(MatmulForm::Nn, acc16, COOP_TILES[0]).is_none());
    }

    #[test]
    fn each_capability_is_needed() {
        for shape in CoopShape::ALL {
            let tile = tiles_for(shape).next().unwrap();
            let src = coop_source(MatmulForm::Nn, shape, tile, Epilogue::Store);
            let all = capabilities(shape);
            assert!(validate(&src, all).is_ok(), "{}", shape.name());
            let mut needed = vec![Capabilities::COOPERATIVE_MATRIX, Capabilities::SUBGROUP];
            if shape.uses_f16() {
                needed.push(Capabilities::SHADER_FLOAT16);
            }
            for cap in needed {
                assert!(
                    validate(&src, all - cap).is_err(),
                    "{} validates without {cap:?}",
                    shape.name()
                );
            }
            assert_eq!(
                shape.features().contains(wgpu::Features::SHADER_F16),
                shape.uses_f16()
            );
            assert!(shape.features().contains(
                wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SUBGROUP
            ));
        }
    }

    #[test]
    fn naga_rejects_a_subgroup_branch_around_a_cooperative_operation() {
        // Why a subgroup picks its fragments with loops (module docs): the same kernel with
        // an `if` on subgroup_id in place of slot 0's loops does not validate.
        let shape = CoopShape::new(CoopSize::Sixteen, CoopScalar::F16, CoopScalar::F32);
        let tile = CoopTile::new(2, 2, 2);
        let src = coop_source(MatmulForm::Nt, shape, tile, Epilogue::Store);
        let slot0 = "for (var t = sg; t < 4u; t = t + 4u) {";
        assert_eq!(src.matches(slot0).count(), 2, "{src}");
        let branched = src.replace(slot0, "if (sg < 4u) { let t = sg;");
        let err = validate(&branched, capabilities(shape)).unwrap_err();
        assert!(
            err.contains("Required uniformity of control flow") && err.contains("COOP_OPS"),
            "{err}"
        );
    }

    fn props(
        m: u32,
        n: u32,
        k: u32,
        ab: wgpu::CooperativeScalarType,
        cr: wgpu::CooperativeScalarType,
        saturating: bool,
    ) -> wgpu::CooperativeMatrixProperties {
        wgpu::CooperativeMatrixProperties {
            m_size: m,
            n_size: n,
            k_size: k,
            ab_type: ab,
            cr_type: cr,
            saturating_accumulation: saturating,
        }
    }

    #[test]
    fn supported_shapes_keep_the_square_float_configurations() {
        use wgpu::CooperativeScalarType::{F16, F32, I32, U32};
        use CoopScalar as S;
        // What wgpu-hal's Metal backend reports (all 8 x 8 x 8).
        let metal = [
            props(8, 8, 8, F32, F32, false),
            props(8, 8, 8, F16, F16, false),
            props(8, 8, 8, F16, F32, false),
        ];
        assert_eq!(
            supported_shapes(&metal),
            vec![
                CoopShape::new(CoopSize::Eight, S::F16, S::F16),
                CoopShape::new(CoopSize::Eight, S::F16, S::F32),
                CoopShape::new(CoopSize::Eight, S::F32, S::F32),
            ]
        );
        // A Vulkan list as wgpu-hal passes it on: non-square and integer configurations,
        // and the same one twice (saturating or not).
        let vulkan = [
            props(16, 8, 16, F16, F16, false),
            props(16, 16, 16, F16, F32, false),
            props(16, 16, 16, F16, F32, true),
            props(16, 16, 16, F16, F16, false),
            props(8, 8, 16, F16, F32, false),
            props(16, 16, 16, I32, I32, true),
            props(8, 8, 8, U32, U32, false),
        ];
        let shapes = supported_shapes(&vulkan);
        assert_eq!(
            shapes,
            vec![
                CoopShape::new(CoopSize::Sixteen, S::F16, S::F16),
                CoopShape::new(CoopSize::Sixteen, S::F16, S::F32),
            ]
        );
        assert_eq!(shapes[1].name(), "coop16");
        assert_eq!(shapes[0].name(), "coop16_f16acc");
        assert!(supported_shapes(&[]).is_empty());
        // Every shape soma generates comes back from the configuration it names.
        for shape in CoopShape::ALL {
            let t = |s: CoopScalar| match s {
                S::F16 => F16,
                S::F32 => F32,
            };
            let n = shape.size.get();
            let p = props(n, n, n, t(shape.operand), t(shape.accumulator), false);
            assert_eq!(CoopShape::from_properties(&p), Some(shape));
        }
    }

    #[test]
    fn slots_hold_every_fragment_whatever_the_subgroup_size() {
        for &tile in COOP_TILES {
            let frags = tile.fragments();
            for width in [4, 8, 16, 32, 64, 128] {
                // Subgroups of the workgroup (one partial one where it is narrower).
                let nsg = (tile.invocations() / width).max(1);
                let mut seen = vec![0; frags as usize];
                for sg in 0..nsg {
                    for j in 0..tile.slots() {
                        let t = sg + j * nsg;
                        if t < frags {
                            seen[t as usize] += 1;
                        }
                    }
                }
                assert!(
                    seen.iter().all(|&c| c == 1),
                    "{} with {width}-wide subgroups: {seen:?}",
                    tile.name()
                );
                if width == INVOCATIONS_PER_FRAGMENT {
                    // 32-wide subgroups: one fragment each, two in 4 x 4 blocks (256
                    // invocations for 16 fragments).
                    let most = frags.div_ceil(nsg);
                    assert_eq!(most, if frags <= 8 { 1 } else { 2 }, "{}", tile.name());
                }
            }
        }
    }

    #[test]
    fn tiles_keep_within_the_limits_and_align_every_fragment() {
        for shape in CoopShape::ALL {
            assert!(
                tiles_for(shape).next().is_some(),
                "{}: no tile",
                shape.name()
            );
            for tile in tiles_for(shape) {
                assert!(tile.invocations() <= MAX_INVOCATIONS);
                assert_eq!(CoopTile::parse(&tile.name()), Some(tile));
                let (e, c) = (shape.operand.bytes(), shape.accumulator.bytes());
                let s = shape.size.get();
                for form in MatmulForm::ALL {
                    assert!(tile.workgroup_bytes(form, shape) <= MAX_WORKGROUP_BYTES);
                    // Strides, and the fragment offsets (multiples of s in each
                    // direction), on 16 bytes.
                    let l = tile.layout(form, shape);
                    assert_eq!((l.sa * e) % 16, 0);
                    assert_eq!((l.sb * e) % 16, 0);
                    assert_eq!((l.sc * c) % 16, 0);
                    assert_eq!((s * e) % 16, 0);
                    assert_eq!((s * c) % 16, 0);
                }
            }
        }
        assert_eq!(CoopTile::parse("2x2k2"), Some(CoopTile::new(2, 2, 2)));
        assert_eq!(CoopTile::parse("3x3k1"), None);
        // 64 x 64 blocks of f32 accumulators outgrow 16 KiB; of f16 ones they fit.
        let big = CoopTile::new(4, 4, 1);
        assert!(!big.is_valid(CoopShape::new(
            CoopSize::Sixteen,
            CoopScalar::F16,
            CoopScalar::F32
        )));
        assert!(big.is_valid(CoopShape::new(
            CoopSize::Sixteen,
            CoopScalar::F16,
            CoopScalar::F16
        )));
        let shape = CoopShape::ALL[4];
        assert_eq!(CoopTile::new(2, 2, 2).grid(shape, 1, 1), [1, 1, 1]);
        assert_eq!(CoopTile::new(4, 2, 1).grid(shape, 65, 33), [2, 2, 1]);
    }

    #[test]
    fn generated_sources_are_cached_and_epilogues_follow_the_form() {
        let shape = CoopShape::ALL[4];
        let tile = COOP_TILES[0];
        let (src, entry) = generated(
            MatmulForm::Nt,
            shape,
            tile,
            Epilogue::BiasAct { relu: true },
        );
        assert_eq!(entry, "matmul_nt_coop16_2x2k2_bias_relu");
        let again = generated(
            MatmulForm::Nt,
            shape,
            tile,
            Epilogue::BiasAct { relu: true },
        );
        assert!(std::ptr::eq(src, again.0));
        // tn takes no epilogue: its kernel is the Store one.
        let (_, tn) = generated(MatmulForm::Tn, shape, tile, Epilogue::ReluGrad);
        assert_eq!(tn, "matmul_tn_coop16_2x2k2");
        let f32in = CoopShape::new(CoopSize::Eight, CoopScalar::F32, CoopScalar::F32);
        assert_eq!(
            entry_name(MatmulForm::Nn, f32in, tile, Epilogue::ReluGrad),
            "matmul_nn_coop8_f32in_2x2k2_relu_grad"
        );
        let src = coop_source(MatmulForm::Nn, f32in, tile, Epilogue::Store);
        assert!(!src.contains("enable f16;") && src.contains("a: array<f32>"));
    }
}
