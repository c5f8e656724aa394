//! Workgroup-tiled matmul kernels, generated: one WGSL entry point per form, tile shape and
//! epilogue, for hardware GPUs.
//!
//! A workgroup computes a `bm x bn` block of `out`. Per slice of `bk` in k its invocations
//! load a `bm x bk` slice of A and a `bk x bn` slice of B into `var<workgroup>` arrays
//! together (each value read from global memory once per workgroup, in coalesced runs), meet
//! at a barrier, and each accumulates its `tm x tn` outputs from workgroup memory. That is
//! what makes a product fast on a discrete GPU, where global memory is far and workgroup
//! memory near; on llvmpipe barriers are expensive and the register tiles of `tiled.rs`
//! win, so the tuner tries these only on hardware adapters (`autotune::candidates`).
//!
//! An invocation's outputs are strided across the block (rows `ly + i * (bm / tm)`, columns
//! `lx + j * (bn / tn)`), so neighbouring invocations read neighbouring workgroup words and
//! store neighbouring outputs.
//!
//! Each operand is read from global memory one f32 per load, or four neighbours along its
//! contiguous dimension per load (`array<vec4<f32>>`, a quarter of the load instructions)
//! where that dimension is a multiple of 4: A along k in nt and nn and along m in tn, B along
//! k in nt and along n in nn and tn. [`WgLoads`] says which operands are vec4 and the entry
//! point says it too (`_v4a`, `_v4b`, `_v4` for both, nothing for neither); the recorder
//! picks the widest the shapes allow ([`WgLoads::for_shape`]). Every tile's `bk`, `bm` and
//! `bn` are multiples of 4 and `k0` steps by `bk`, so with the dimension a multiple of 4 a
//! vec4 lies wholly inside the matrix or wholly outside it and is masked as one. A vec4
//! binding must start on 16 bytes: a tensor's own buffer starts at 0 and the slots soma lays
//! out in an arena at multiples of the device's storage offset alignment, at least 16
//! (`plan::Update::arena_layout`); a tensor that starts elsewhere (an arena laid out by hand)
//! is read one f32 per load ([`WgLoads::aligned`]). Workgroup memory stays scalar: a vec4 is
//! stored as its four words.
//!
//! The staged slices are laid out so that each store of a 32-wide group of invocations
//! falls in 32 different banks of workgroup memory. A slice whose operand runs along k in
//! memory (A of nt and nn, B of nt) is written across its k-rows, which are padded by
//! `32 / bk` words, whether an invocation stores one value or a vec4's four. A slice whose
//! operand runs along its k-rows is unpadded with scalar loads; with vec4 loads, which
//! eight invocations take along a k-row and four k-rows at a time, it is padded by one word.
//! The sums read one or two neighbouring words per k-row, which no padding changes
//! (`tests::staged_stores_fall_in_distinct_banks`).
//!
//! Any m, n and k, overwriting or accumulating: loads outside the matrices store 0, stores
//! outside are skipped, and every barrier is in uniform control flow (no early return). The
//! k-sum of every output runs in order 0..k-1 with a separate multiply and add, as in the
//! naive kernels of `shaders/matmul.wgsl` and their CPU twins, and the zeros past the end of
//! k are never added (the inner loop stops at the real k: adding `0 * x` could turn -0.0
//! into +0.0, or inf * 0 into NaN). Only the loads differ between the scalar and vec4
//! forms, never the sums. So a workgroup kernel gives the naive kernel's bits on a driver
//! that does not contract (lavapipe: `tests/kernels.rs` checks it) and strict mode may use
//! it.

use std::fmt::Write;
use std::sync::OnceLock;

use super::tiled::{cached, epilogue_for, Epilogue, Generated, MatmulForm};

/// A workgroup's block of `out` (`bm x bn`), the slice of k staged per step (`bk`) and the
/// outputs of each invocation (`tm x tn`); the workgroup is `(bn / tn) x (bm / tm)`
/// invocations. Only the shapes of [`WG_TILES`] exist outside this crate, so every shape
/// that runs is one the tests validate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgTile {
    pub(crate) bm: u32,
    pub(crate) bn: u32,
    pub(crate) bk: u32,
    pub(crate) tm: u32,
    pub(crate) tn: u32,
}

/// The most workgroup memory a tile may take: WebGPU's default limit (downlevel adapters
/// give 16352, which every tile of [`WG_TILES`] is far under).
pub const MAX_WORKGROUP_BYTES: u32 = 16384;

/// The most invocations a tile's workgroup may have (WebGPU's default limit).
pub const MAX_INVOCATIONS: u32 = 256;

impl WgTile {
    pub(crate) const fn new(bm: u32, bn: u32, bk: u32, tm: u32, tn: u32) -> WgTile {
        WgTile { bm, bn, bk, tm, tn }
    }

    /// `wg64x64k16t4x4` and the like (also what `SOMA_MATMUL` accepts).
    pub fn name(self) -> String {
        format!(
            "wg{}x{}k{}t{}x{}",
            self.bm, self.bn, self.bk, self.tm, self.tn
        )
    }

    /// The tile of [`WG_TILES`] named `s` exactly as [`WgTile::name`] spells it; `None` for
    /// any other text.
    pub fn parse(s: &str) -> Option<WgTile> {
        WG_TILES.iter().copied().find(|t| t.name() == s)
    }

    /// The workgroup's invocations: (x across columns, y across rows).
    pub fn workgroup_size(self) -> (u32, u32) {
        (self.bn / self.tn, self.bm / self.tm)
    }

    /// Invocations per workgroup.
    pub fn invocations(self) -> u32 {
        let (x, y) = self.workgroup_size();
        x * y
    }

    /// Words per k-row of the staged A slice read with `load` (`bm` and its padding: see the
    /// module docs).
    fn a_stride(self, form: MatmulForm, load: Load) -> u32 {
        self.bm + self.pad(a_run(form), load)
    }

    /// Words per k-row of the staged B slice read with `load`.
    fn b_stride(self, form: MatmulForm, load: Load) -> u32 {
        self.bn + self.pad(b_run(form), load)
    }

    /// The padding of a k-row of a slice whose operand runs along `run` in memory, read with
    /// `load`. Along k, an invocation's values go to different k-rows, and a row `32 / bk`
    /// words past a multiple of 32 spreads a group's stores over the 32 banks; along the
    /// rows, scalar stores are consecutive words and vec4 ones four k-rows of eight vec4s,
    /// which a one-word shift per k-row interleaves.
    fn pad(self, run: Run, load: Load) -> u32 {
        match (run, load) {
            (Run::K, Load::Scalar | Load::Vec4) => (32 / self.bk).max(1),
            (Run::Rows, Load::Scalar) => 0,
            (Run::Rows, Load::Vec4) => 1,
        }
    }

    /// Bytes of workgroup memory the kernel of `form` with `loads` declares.
    pub fn workgroup_bytes(self, form: MatmulForm, loads: WgLoads) -> u32 {
        4 * self.bk * (self.a_stride(form, loads.a()) + self.b_stride(form, loads.b()))
    }

    /// The grid covering an `m x n` output: ceil(n / bn) x ceil(m / bm).
    pub fn grid(self, m: usize, n: usize) -> [u32; 3] {
        [
            (n as u32).div_ceil(self.bn),
            (m as u32).div_ceil(self.bm),
            1,
        ]
    }

    /// Whether the generator can write this shape within the limits: whole invocation
    /// blocks, every invocation loading the same number of values of each slice, slices of
    /// whole vec4s in k and in rows of eight vec4s (`bk` a multiple of 4, `bm` and `bn` of
    /// 32), at most [`MAX_INVOCATIONS`] invocations and [`MAX_WORKGROUP_BYTES`] of workgroup
    /// memory in every form.
    pub fn is_valid(self) -> bool {
        let t = self.invocations();
        self.tm > 0
            && self.tn > 0
            && self.bk > 0
            && self.bm.is_multiple_of(self.tm)
            && self.bn.is_multiple_of(self.tn)
            && t > 0
            && t <= MAX_INVOCATIONS
            && (self.bm * self.bk).is_multiple_of(t)
            && (self.bk * self.bn).is_multiple_of(t)
            && self.bk.is_multiple_of(4)
            && self.bm.is_multiple_of(32)
            && self.bn.is_multiple_of(32)
            && MatmulForm::ALL.iter().all(|&f| {
                WgLoads::ALL
                    .iter()
                    .all(|&l| self.workgroup_bytes(f, l) <= MAX_WORKGROUP_BYTES)
            })
    }
}

/// The workgroup tiles soma generates, all of 256 invocations: from 32 x 32 blocks of 2 x 2
/// outputs (many workgroups for mid-sized products) to 128 x 128 blocks of 8 x 8.
pub const WG_TILES: &[WgTile] = &[
    WgTile::new(32, 32, 8, 2, 2),
    WgTile::new(64, 64, 8, 4, 4),
    WgTile::new(64, 64, 16, 4, 4),
    WgTile::new(128, 128, 8, 8, 8),
];

/// How a workgroup kernel reads its two operands from global memory (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WgLoads {
    /// One f32 per load of A and of B: any shape.
    Scalar,
    /// A as vec4 (its contiguous dimension a multiple of 4), B one f32 per load.
    Vec4A,
    /// A one f32 per load, B as vec4.
    Vec4B,
    /// A and B as vec4.
    Vec4,
}

/// How a kernel reads one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    Scalar,
    Vec4,
}

/// The dimension an operand runs along in memory, seen from its staged slice: k (the slice
/// is written across its k-rows) or the slice's rows (m of A, n of B).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    K,
    Rows,
}

/// Where A runs in memory: along k in nt and nn (a (m, k)), along m in tn (a (k, m)).
fn a_run(form: MatmulForm) -> Run {
    match form {
        MatmulForm::Nt | MatmulForm::Nn => Run::K,
        MatmulForm::Tn => Run::Rows,
    }
}

/// Where B runs in memory: along k in nt (b (n, k)), along n in nn and tn (b (k, n)).
fn b_run(form: MatmulForm) -> Run {
    match form {
        MatmulForm::Nt => Run::K,
        MatmulForm::Nn | MatmulForm::Tn => Run::Rows,
    }
}

impl WgLoads {
    pub const ALL: [WgLoads; 4] = [
        WgLoads::Scalar,
        WgLoads::Vec4A,
        WgLoads::Vec4B,
        WgLoads::Vec4,
    ];

    fn of(a: Load, b: Load) -> WgLoads {
        match (a, b) {
            (Load::Scalar, Load::Scalar) => WgLoads::Scalar,
            (Load::Vec4, Load::Scalar) => WgLoads::Vec4A,
            (Load::Scalar, Load::Vec4) => WgLoads::Vec4B,
            (Load::Vec4, Load::Vec4) => WgLoads::Vec4,
        }
    }

    fn a(self) -> Load {
        match self {
            WgLoads::Vec4A | WgLoads::Vec4 => Load::Vec4,
            WgLoads::Scalar | WgLoads::Vec4B => Load::Scalar,
        }
    }

    fn b(self) -> Load {
        match self {
            WgLoads::Vec4B | WgLoads::Vec4 => Load::Vec4,
            WgLoads::Scalar | WgLoads::Vec4A => Load::Scalar,
        }
    }

    /// The widest loads a product of `form` at these sizes allows: vec4 for each operand
    /// whose contiguous dimension is a multiple of 4 (A: k in nt and nn, m in tn; B: k in
    /// nt, n in nn and tn).
    pub fn for_shape(form: MatmulForm, m: usize, n: usize, k: usize) -> WgLoads {
        let (a_dim, b_dim) = match form {
            MatmulForm::Nt => (k, k),
            MatmulForm::Nn => (k, n),
            MatmulForm::Tn => (m, n),
        };
        let load = |dim: usize| {
            if dim.is_multiple_of(4) {
                Load::Vec4
            } else {
                Load::Scalar
            }
        };
        WgLoads::of(load(a_dim), load(b_dim))
    }

    /// These loads, less vec4 for an operand whose binding does not start on 16 bytes
    /// (`a_offset`, `b_offset`: where A's and B's data start in their buffers). soma's own
    /// tensors always do; an arena laid out by hand (`GpuTensor::arena`) may not.
    pub fn aligned(self, a_offset: u64, b_offset: u64) -> WgLoads {
        let keep = |load: Load, offset: u64| match load {
            Load::Vec4 if offset.is_multiple_of(16) => Load::Vec4,
            Load::Scalar | Load::Vec4 => Load::Scalar,
        };
        WgLoads::of(keep(self.a(), a_offset), keep(self.b(), b_offset))
    }

    /// The entry point's part (`_v4a`, `_v4b`, `_v4`; none for scalar loads).
    pub fn suffix(self) -> &'static str {
        match self {
            WgLoads::Scalar => "",
            WgLoads::Vec4A => "_v4a",
            WgLoads::Vec4B => "_v4b",
            WgLoads::Vec4 => "_v4",
        }
    }
}

/// The entry point of a generated kernel, e.g. `matmul_nt_wg64x64k16t4x4_bias_relu` (scalar
/// loads) or `matmul_nn_wg64x64k16t4x4_v4a_relu_grad` (A as vec4).
pub fn entry_name(form: MatmulForm, tile: WgTile, loads: WgLoads, epilogue: Epilogue) -> String {
    format!(
        "matmul_{}_{}{}{}",
        form.name(),
        tile.name(),
        loads.suffix(),
        epilogue.suffix()
    )
}

/// The generated source and entry point of one kernel, built once per process (an
/// epilogue the form lacks is `Store`, as in `tiled::generated`).
pub fn generated(
    form: MatmulForm,
    tile: WgTile,
    loads: WgLoads,
    epilogue: Epilogue,
) -> (&'static str, &'static str) {
    static CACHE: Generated<(WgTile, WgLoads)> = OnceLock::new();
    let epilogue = epilogue_for(form, epilogue);
    // A bounded set exists (WG_TILES x 4 loads x 3 forms, plus 3 epilogues), so leaking is
    // too.
    cached(&CACHE, (form, (tile, loads), epilogue), || {
        (
            source(form, tile, loads, epilogue),
            entry_name(form, tile, loads, epilogue),
        )
    })
}

/// The WGSL of one generated kernel (an epilogue the form lacks is `Store`). `loads` must
/// suit the shapes it runs at ([`WgLoads::for_shape`]).
pub fn source(form: MatmulForm, tile: WgTile, loads: WgLoads, epilogue: Epilogue) -> String {
    let epilogue = epilogue_for(form, epilogue);
    let entry = entry_name(form, tile, loads, epilogue);
    let WgTile { bm, bn, bk, tm, tn } = tile;
    let (wx, wy) = tile.workgroup_size();
    let threads = wx * wy;
    let (sa, sb) = (
        tile.a_stride(form, loads.a()),
        tile.b_stride(form, loads.b()),
    );
    let binding = |name: &str, load: Load| match load {
        Load::Scalar => format!("{name}: array<f32>"),
        Load::Vec4 => format!("{name}4: array<vec4<f32>>"),
    };
    let (a_binding, b_binding) = (binding("a", loads.a()), binding("b", loads.b()));
    let read_as = match loads {
        WgLoads::Scalar => "",
        WgLoads::Vec4A => " A read as vec4.",
        WgLoads::Vec4B => " B read as vec4.",
        WgLoads::Vec4 => " A and B read as vec4.",
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
    let mut s = String::new();
    let _ = write!(
        s,
        "// Generated by soma (src/ops/matmul/workgroup.rs): {entry}, a {bm} x {bn} block per \
         workgroup of {wx} x {wy}, k staged {bk} at a time, {tm} x {tn} outputs per invocation.\
         {read_as}\n\
         struct MatmulParams {{\n    m: u32,\n    n: u32,\n    k: u32,\n    accumulate: u32,\n}}\n\n\
         @group(0) @binding(0) var<storage, read_write> out: array<f32>;\n\
         @group(0) @binding(1) var<storage, read> {a_binding};\n\
         @group(0) @binding(2) var<storage, read> {b_binding};\n\
         {extra_bindings}\n\
         // a_tile[kk * {sa} + r]: A(row0 + r, k0 + kk); b_tile[kk * {sb} + c]: B(k0 + kk, col0 + c).\n\
         var<workgroup> a_tile: array<f32, {}>;\n\
         var<workgroup> b_tile: array<f32, {}>;\n\n\
         @compute @workgroup_size({wx}, {wy}, 1)\n\
         fn {entry}(@builtin(workgroup_id) wid: vec3<u32>, \
         @builtin(local_invocation_id) lid: vec3<u32>) {{\n",
        sa * bk,
        sb * bk,
    );
    let mut line = |text: String| {
        s.push_str("    ");
        s.push_str(&text);
        s.push('\n');
    };
    line(format!("let tid = lid.y * {wx}u + lid.x;"));
    line(format!("let row0 = wid.y * {bm}u;"));
    line(format!("let col0 = wid.x * {bn}u;"));
    for i in 0..tm {
        for j in 0..tn {
            line(format!("var acc{i}_{j} = 0.0;"));
        }
    }
    line(format!("for (var k0 = 0u; k0 < p.k; k0 = k0 + {bk}u) {{"));
    // The A slice (bm x bk values), then the B slice (bk x bn).
    let a_slice = Slice {
        global: "a",
        tile: "a_tile",
        names: ["ia", "ar", "ak", "av"],
        start: "row0",
        extent: "p.m",
        width: bm,
        stride: sa,
        run: a_run(form),
    };
    stage(&mut line, &a_slice, bk, threads, loads.a());
    let b_slice = Slice {
        global: "b",
        tile: "b_tile",
        names: ["ib", "bc", "bk", "bv"],
        start: "col0",
        extent: "p.n",
        width: bn,
        stride: sb,
        run: b_run(form),
    };
    stage(&mut line, &b_slice, bk, threads, loads.b());
    line("    workgroupBarrier();".into());
    // The sums, in order of k, never past the real k. A whole slice runs a loop of
    // constant length (which drivers unroll), the last partial one a loop to the end of k.
    line(format!("    let kend = min(p.k - k0, {bk}u);"));
    line(format!("    if (kend == {bk}u) {{"));
    sums(&mut line, tile, sa, sb, &format!("{bk}u"));
    line("    } else {".into());
    sums(&mut line, tile, sa, sb, "kend");
    line("    }".into());
    line("    workgroupBarrier();".into());
    line("}".into());
    store(&mut line, tile, epilogue);
    s.push_str("}\n");
    s
}

/// One operand's staged slice, `width` rows (of the operand's m or n) by `bk` (of k), as
/// the generator writes its loads: slice row `r`, k-row `kk` comes from the operand at
/// (`start + r`, `k0 + kk`) and goes to `tile[kk * stride + r]`.
struct Slice {
    /// The binding (`a`; `a4` when read as vec4).
    global: &'static str,
    /// The workgroup array.
    tile: &'static str,
    /// The locals' prefixes: the load's index, its slice row, its k-row, its value.
    names: [&'static str; 4],
    /// The block's first row in the operand (`row0`, `col0`) and the operand's rows (`p.m`,
    /// `p.n`).
    start: &'static str,
    extent: &'static str,
    width: u32,
    stride: u32,
    /// The dimension the operand runs along in memory.
    run: Run,
}

/// The loads of one slice into workgroup memory, `width * bk / threads` values per
/// invocation, or `width * bk / 4` vec4s over the invocations (some of which load none
/// where there are fewer vec4s than invocations): consecutive invocations take consecutive
/// addresses of the operand, and values outside it are 0.
fn stage(line: &mut impl FnMut(String), s: &Slice, bk: u32, threads: u32, load: Load) {
    let [idx, row, kk, val] = s.names;
    let Slice {
        global,
        tile,
        start,
        extent,
        width,
        stride,
        run,
        ..
    } = *s;
    // Where the operand holds (start + r, k0 + kk), in f32 words.
    let at = |l: u32| match run {
        Run::K => format!("({start} + {row}{l}) * p.k + k0 + {kk}{l}"),
        Run::Rows => format!("(k0 + {kk}{l}) * {extent} + {start} + {row}{l}"),
    };
    let inside = |l: u32| format!("{start} + {row}{l} < {extent} && k0 + {kk}{l} < p.k");
    match load {
        Load::Scalar => {
            for l in 0..(width * bk) / threads {
                line(format!("    let {idx}{l} = tid + {}u;", l * threads));
                match run {
                    Run::K => {
                        line(format!("    let {row}{l} = {idx}{l} / {bk}u;"));
                        line(format!("    let {kk}{l} = {idx}{l} % {bk}u;"));
                    }
                    Run::Rows => {
                        line(format!("    let {row}{l} = {idx}{l} % {width}u;"));
                        line(format!("    let {kk}{l} = {idx}{l} / {width}u;"));
                    }
                }
                line(format!("    var {val}{l} = 0.0;"));
                line(format!(
                    "    if ({}) {{ {val}{l} = {global}[{}]; }}",
                    inside(l),
                    at(l)
                ));
                line(format!(
                    "    {tile}[{kk}{l} * {stride}u + {row}{l}] = {val}{l};"
                ));
            }
        }
        Load::Vec4 => {
            let vec4s = width * bk / 4;
            for l in 0..vec4s.div_ceil(threads) {
                line(format!("    let {idx}{l} = tid + {}u;", l * threads));
                // Fewer vec4s than invocations: the rest load none (no barrier inside).
                let partial = (l + 1) * threads > vec4s;
                let pre = if partial {
                    line(format!("    if ({idx}{l} < {vec4s}u) {{"));
                    "        "
                } else {
                    "    "
                };
                // The slice row and k-row of the vec4's first value (`vec4_slot`).
                match run {
                    Run::K => {
                        line(format!("{pre}let {row}{l} = {idx}{l} / {}u;", bk / 4));
                        line(format!("{pre}let {kk}{l} = {idx}{l} % {}u * 4u;", bk / 4));
                    }
                    Run::Rows => {
                        line(format!(
                            "{pre}let {row}{l} = ({idx}{l} % 8u + {idx}{l} / {}u * 8u) * 4u;",
                            8 * bk
                        ));
                        line(format!("{pre}let {kk}{l} = {idx}{l} / 8u % {bk}u;"));
                    }
                }
                line(format!("{pre}var {val}{l} = vec4<f32>(0.0);"));
                line(format!(
                    "{pre}if ({}) {{ {val}{l} = {global}4[({}) / 4u]; }}",
                    inside(l),
                    at(l)
                ));
                for (c, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                    let to = match run {
                        Run::K => format!("({kk}{l} + {c}u) * {stride}u + {row}{l}"),
                        Run::Rows => format!("{kk}{l} * {stride}u + {row}{l} + {c}u"),
                    };
                    line(format!("{pre}{tile}[{to}] = {val}{l}.{comp};"));
                }
                if partial {
                    line("    }".into());
                }
            }
        }
    }
}

/// The slice row and k-row of the first value of vec4 `i` of a slice `width` rows by `bk`
/// whose operand runs along `run`, as `stage` computes them: along k, a slice row's `bk / 4`
/// vec4s in turn; along the rows, eight vec4s of a k-row, the same eight of the next k-rows,
/// then the next eight.
#[cfg(test)]
fn vec4_slot(run: Run, i: u32, bk: u32) -> (u32, u32) {
    match run {
        Run::K => (i / (bk / 4), i % (bk / 4) * 4),
        Run::Rows => ((i % 8 + i / (8 * bk) * 8) * 4, i / 8 % bk),
    }
}

/// The inner loop over one staged slice, `kk` from 0 to `end`: each invocation's `tm` values
/// of A and `tn` of B, then every output's multiply and add.
fn sums(line: &mut impl FnMut(String), tile: WgTile, sa: u32, sb: u32, end: &str) {
    let (wx, wy) = tile.workgroup_size();
    line(format!(
        "        for (var kk = 0u; kk < {end}; kk = kk + 1u) {{"
    ));
    for i in 0..tile.tm {
        line(format!(
            "            let x{i} = a_tile[kk * {sa}u + lid.y + {}u];",
            i * wy
        ));
    }
    for j in 0..tile.tn {
        line(format!(
            "            let y{j} = b_tile[kk * {sb}u + lid.x + {}u];",
            j * wx
        ));
    }
    for i in 0..tile.tm {
        for j in 0..tile.tn {
            line(format!(
                "            acc{i}_{j} = acc{i}_{j} + x{i} * y{j};"
            ));
        }
    }
    line("        }".into());
}

/// Stores each in-bounds output through `epilogue`: `Store` overwrites or adds as
/// `p.accumulate` says; the fused epilogues overwrite, as `tiled.rs`'s do.
fn store(line: &mut impl FnMut(String), tile: WgTile, epilogue: Epilogue) {
    let (wx, wy) = tile.workgroup_size();
    for i in 0..tile.tm {
        line(format!("let r{i} = row0 + lid.y + {}u;", i * wy));
    }
    for j in 0..tile.tn {
        line(format!("let c{j} = col0 + lid.x + {}u;", j * wx));
    }
    if let Epilogue::Store = epilogue {
        line("let add = p.accumulate != 0u;".into());
    }
    for i in 0..tile.tm {
        line(format!("if (r{i} < p.m) {{"));
        line(format!("    let o{i} = r{i} * p.n;"));
        for j in 0..tile.tn {
            line(format!("    if (c{j} < p.n) {{"));
            let at = format!("o{i} + c{j}");
            match epilogue {
                Epilogue::Store => {
                    line(format!(
                        "        if (add) {{ out[{at}] = out[{at}] + acc{i}_{j}; }} else {{ out[{at}] = acc{i}_{j}; }}"
                    ));
                }
                Epilogue::BiasAct { relu } => {
                    line(format!("        let z = acc{i}_{j} + bias_in[c{j}];"));
                    line(format!("        out[{at}] = z;"));
                    if relu {
                        line(format!("        act_out[{at}] = max(z, 0.0);"));
                    } else {
                        line(format!("        act_out[{at}] = z;"));
                    }
                }
                Epilogue::ReluGrad => {
                    line(format!(
                        "        out[{at}] = acc{i}_{j} * select(0.0, 1.0, pre_in[{at}] > 0.0);"
                    ));
                }
            }
            line("    }".into());
        }
        line("}".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPILOGUES: [Epilogue; 4] = [
        Epilogue::Store,
        Epilogue::BiasAct { relu: true },
        Epilogue::BiasAct { relu: false },
        Epilogue::ReluGrad,
    ];

    #[test]
    fn every_tile_is_within_the_limits_and_names_round_trip() {
        for &t in WG_TILES {
            assert!(t.is_valid(), "{}", t.name());
            assert_eq!(t.invocations(), 256, "{}", t.name());
            assert_eq!(WgTile::parse(&t.name()), Some(t));
        }
        assert_eq!(
            WgTile::parse("wg64x64k16t4x4"),
            Some(WgTile::new(64, 64, 16, 4, 4))
        );
        for bad in [
            "wg64x64k32t4x4",
            "wg064x64k16t4x4",
            "WG64x64k16t4x4",
            "wg64x64k16",
            "r4c4w8x8",
            "",
        ] {
            assert_eq!(WgTile::parse(bad), None, "{bad:?}");
        }
        // Too many invocations, too much workgroup memory, uneven loads.
        assert!(!WgTile::new(64, 64, 8, 2, 2).is_valid());
        assert!(!WgTile::new(128, 128, 32, 8, 8).is_valid());
        assert!(!WgTile::new(32, 32, 3, 2, 2).is_valid());
    }

    #[test]
    fn grid_covers_the_output() {
        let t = WgTile::new(64, 64, 16, 4, 4);
        assert_eq!(t.grid(1, 1), [1, 1, 1]);
        assert_eq!(t.grid(130, 70), [2, 3, 1]);
        assert_eq!(t.grid(1024, 512), [8, 16, 1]);
    }

    #[test]
    fn the_sum_is_a_separate_multiply_and_add_bounded_by_k() {
        for form in MatmulForm::ALL {
            for &t in WG_TILES {
                for loads in WgLoads::ALL {
                    for epilogue in EPILOGUES {
                        let src = source(form, t, loads, epilogue);
                        let name = entry_name(form, t, loads, epilogue_for(form, epilogue));
                        assert!(src.contains(&format!("fn {name}(")), "{name}");
                        assert!(!src.contains("fma(") && !src.contains("dot("), "{name}");
                        assert!(src.contains("kk < kend"), "{name}");
                        assert!(!src.contains("return"), "{name}: no early return");
                        // Only the loads differ between the forms: the sums are the scalar
                        // form's, word for word.
                        let sums = |src: &str| {
                            let at = src.find("workgroupBarrier();").unwrap();
                            src[at..].to_string()
                        };
                        let scalar = source(form, t, WgLoads::Scalar, epilogue);
                        let (sa, sb) = (t.a_stride(form, loads.a()), t.b_stride(form, loads.b()));
                        let (sa0, sb0) = (
                            t.a_stride(form, Load::Scalar),
                            t.b_stride(form, Load::Scalar),
                        );
                        let restrided = sums(&scalar)
                            .replace(
                                &format!("a_tile[kk * {sa0}u"),
                                &format!("a_tile[kk * {sa}u"),
                            )
                            .replace(
                                &format!("b_tile[kk * {sb0}u"),
                                &format!("b_tile[kk * {sb}u"),
                            );
                        assert_eq!(sums(&src), restrided, "{name}: the sums changed");
                        // A local named like a global would read the wrong thing afterwards.
                        for g in [
                            "out", "a", "b", "a4", "b4", "p", "act_out", "bias_in", "pre_in",
                            "a_tile", "b_tile",
                        ] {
                            assert!(
                                !src.contains(&format!("let {g} "))
                                    && !src.contains(&format!("var {g} ")),
                                "{name}: a local shadows `{g}`"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn loads_follow_the_contiguous_dimension_and_the_alignment() {
        use MatmulForm::{Nn, Nt, Tn};
        // (form, m, n, k): A runs along k in nt and nn, along m in tn; B along k in nt,
        // along n in nn and tn.
        for (form, m, n, k, want) in [
            (Nt, 3, 5, 8, WgLoads::Vec4),
            (Nt, 4, 8, 7, WgLoads::Scalar),
            (Nn, 3, 8, 8, WgLoads::Vec4),
            (Nn, 4, 5, 8, WgLoads::Vec4A),
            (Nn, 4, 8, 7, WgLoads::Vec4B),
            (Nn, 4, 5, 7, WgLoads::Scalar),
            (Tn, 4, 8, 3, WgLoads::Vec4),
            (Tn, 4, 5, 8, WgLoads::Vec4A),
            (Tn, 5, 8, 8, WgLoads::Vec4B),
            (Tn, 5, 7, 8, WgLoads::Scalar),
        ] {
            assert_eq!(
                WgLoads::for_shape(form, m, n, k),
                want,
                "{form:?} {m}x{n}x{k}"
            );
        }
        assert_eq!(WgLoads::Vec4.aligned(0, 4096), WgLoads::Vec4);
        assert_eq!(WgLoads::Vec4.aligned(8, 16), WgLoads::Vec4B);
        assert_eq!(WgLoads::Vec4.aligned(32, 4), WgLoads::Vec4A);
        assert_eq!(WgLoads::Vec4A.aligned(4, 0), WgLoads::Scalar);
        assert_eq!(WgLoads::Scalar.aligned(0, 0), WgLoads::Scalar);
        let t = WG_TILES[1];
        assert_eq!(
            entry_name(Nn, t, WgLoads::Vec4A, Epilogue::ReluGrad),
            format!("matmul_nn_{}_v4a_relu_grad", t.name())
        );
        let src = source(Nn, t, WgLoads::Vec4B, Epilogue::Store);
        assert!(src.contains("a: array<f32>") && src.contains("b4: array<vec4<f32>>"));
    }

    #[test]
    fn staged_stores_fall_in_distinct_banks() {
        // Each store instruction of a 32-wide group of invocations (tid 32g..32g+31, the
        // invocations that load) writes one word per invocation; 32 banks of 4 bytes.
        let banks = |addrs: &[u32], what: &str| {
            let mut seen: Vec<u32> = addrs.iter().map(|a| a % 32).collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), addrs.len(), "{what}: {addrs:?}");
        };
        for &t in WG_TILES {
            let threads = t.invocations();
            for form in MatmulForm::ALL {
                for (run, width, stride) in [
                    (
                        a_run(form),
                        t.bm,
                        [t.a_stride(form, Load::Scalar), t.a_stride(form, Load::Vec4)],
                    ),
                    (
                        b_run(form),
                        t.bn,
                        [t.b_stride(form, Load::Scalar), t.b_stride(form, Load::Vec4)],
                    ),
                ] {
                    let what = format!("{} {form:?} {run:?}", t.name());
                    // Scalar: value `i` of the slice, as `stage` numbers them.
                    for first in (0..width * t.bk).step_by(32) {
                        let addrs: Vec<u32> = (first..first + 32)
                            .map(|i| match run {
                                Run::K => (i % t.bk) * stride[0] + i / t.bk,
                                Run::Rows => (i / width) * stride[0] + i % width,
                            })
                            .collect();
                        banks(&addrs, &format!("{what} scalar"));
                    }
                    // vec4: the four stores of vec4 `i`, component by component.
                    let vec4s = width * t.bk / 4;
                    for first in (0..vec4s.min(threads)).step_by(32) {
                        for c in 0..4 {
                            let addrs: Vec<u32> = (first..(first + 32).min(vec4s))
                                .map(|i| {
                                    let (r, kk) = vec4_slot(run, i, t.bk);
                                    match run {
                                        Run::K => (kk + c) * stride[1] + r,
                                        Run::Rows => kk * stride[1] + r + c,
                                    }
                                })
                                .collect();
                            banks(&addrs, &format!("{what} vec4 .{c}"));
                        }
                    }
                    // Every vec4 slot is one of the slice's, and each is taken once.
                    let mut slots: Vec<(u32, u32)> =
                        (0..vec4s).map(|i| vec4_slot(run, i, t.bk)).collect();
                    slots.sort_unstable();
                    slots.dedup();
                    assert_eq!(slots.len() as u32, vec4s, "{what}");
                    assert!(
                        slots.iter().all(|&(r, kk)| r < width
                            && kk < t.bk
                            && match run {
                                Run::K => kk % 4 == 0,
                                Run::Rows => r % 4 == 0,
                            }),
                        "{what}"
                    );
                }
            }
        }
    }

    #[test]
    fn generated_sources_are_cached_and_epilogues_follow_the_form() {
        let t = WG_TILES[0];
        let (src, entry) = generated(
            MatmulForm::Nt,
            t,
            WgLoads::Scalar,
            Epilogue::BiasAct { relu: true },
        );
        assert_eq!(entry, format!("matmul_nt_{}_bias_relu", t.name()));
        let again = generated(
            MatmulForm::Nt,
            t,
            WgLoads::Scalar,
            Epilogue::BiasAct { relu: true },
        );
        assert!(std::ptr::eq(src, again.0));
        let (v4, v4_entry) = generated(
            MatmulForm::Nt,
            t,
            WgLoads::Vec4,
            Epilogue::BiasAct { relu: true },
        );
        assert_eq!(v4_entry, format!("matmul_nt_{}_v4_bias_relu", t.name()));
        assert!(!std::ptr::eq(src, v4));
        // tn takes no epilogue: its kernel is the Store one.
        let (_, tn) = generated(MatmulForm::Tn, t, WgLoads::Vec4B, Epilogue::ReluGrad);
        assert_eq!(tn, format!("matmul_tn_{}_v4b", t.name()));
    }
}
