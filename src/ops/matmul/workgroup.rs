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
//! store neighbouring outputs. A slice stored across its rows (A of nt and nn, B of nt) is
//! padded by one word per row against bank conflicts.
//!
//! Any m, n and k, overwriting or accumulating: loads outside the matrices store 0, stores
//! outside are skipped, and every barrier is in uniform control flow (no early return). The
//! k-sum of every output runs in order 0..k-1 with a separate multiply and add, as in the
//! naive kernels of `shaders/matmul.wgsl` and their CPU twins, and the zeros past the end of
//! k are never added (the inner loop stops at the real k: adding `0 * x` could turn -0.0
//! into +0.0, or inf * 0 into NaN). So a workgroup kernel gives the naive kernel's bits on a
//! driver that does not contract (lavapipe: `tests/kernels.rs` checks it) and strict mode
//! may use it.

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

    /// Words per k-row of the staged A slice (`bm`, plus one of padding where the slice is
    /// written across its rows: nt and nn read A along k).
    fn a_stride(self, form: MatmulForm) -> u32 {
        match form {
            MatmulForm::Nt | MatmulForm::Nn => self.bm + 1,
            MatmulForm::Tn => self.bm,
        }
    }

    /// Words per k-row of the staged B slice (`bn`, plus one where nt reads B along k).
    fn b_stride(self, form: MatmulForm) -> u32 {
        match form {
            MatmulForm::Nt => self.bn + 1,
            MatmulForm::Nn | MatmulForm::Tn => self.bn,
        }
    }

    /// Bytes of workgroup memory the kernel of `form` declares.
    pub fn workgroup_bytes(self, form: MatmulForm) -> u32 {
        4 * self.bk * (self.a_stride(form) + self.b_stride(form))
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
    /// blocks, every invocation loading the same number of values of each slice, at most
    /// [`MAX_INVOCATIONS`] invocations and [`MAX_WORKGROUP_BYTES`] of workgroup memory.
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
            && MatmulForm::ALL
                .iter()
                .all(|&f| self.workgroup_bytes(f) <= MAX_WORKGROUP_BYTES)
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

/// The entry point of a generated kernel, e.g. `matmul_nt_wg64x64k16t4x4_bias_relu`.
pub fn entry_name(form: MatmulForm, tile: WgTile, epilogue: Epilogue) -> String {
    format!(
        "matmul_{}_{}{}",
        form.name(),
        tile.name(),
        epilogue.suffix()
    )
}

/// The generated source and entry point of one kernel, built once per process (an
/// epilogue the form lacks is `Store`, as in `tiled::generated`).
pub fn generated(
    form: MatmulForm,
    tile: WgTile,
    epilogue: Epilogue,
) -> (&'static str, &'static str) {
    static CACHE: Generated<WgTile> = OnceLock::new();
    let epilogue = epilogue_for(form, epilogue);
    // A bounded set exists (WG_TILES x 3 forms, plus 3 epilogues), so leaking is too.
    cached(&CACHE, (form, tile, epilogue), || {
        (
            source(form, tile, epilogue),
            entry_name(form, tile, epilogue),
        )
    })
}

/// The WGSL of one generated kernel (an epilogue the form lacks is `Store`).
pub fn source(form: MatmulForm, tile: WgTile, epilogue: Epilogue) -> String {
    let epilogue = epilogue_for(form, epilogue);
    let entry = entry_name(form, tile, epilogue);
    let WgTile { bm, bn, bk, tm, tn } = tile;
    let (wx, wy) = tile.workgroup_size();
    let threads = wx * wy;
    let (sa, sb) = (tile.a_stride(form), tile.b_stride(form));
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
         workgroup of {wx} x {wy}, k staged {bk} at a time, {tm} x {tn} outputs per invocation.\n\
         struct MatmulParams {{\n    m: u32,\n    n: u32,\n    k: u32,\n    accumulate: u32,\n}}\n\n\
         @group(0) @binding(0) var<storage, read_write> out: array<f32>;\n\
         @group(0) @binding(1) var<storage, read> a: array<f32>;\n\
         @group(0) @binding(2) var<storage, read> b: array<f32>;\n\
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
    // The A slice: bm x bk values, (bm * bk) / threads per invocation; consecutive
    // invocations take consecutive addresses of the operand's contiguous dimension.
    for l in 0..(bm * bk) / threads {
        let off = l * threads;
        line(format!("    let ia{l} = tid + {off}u;"));
        match form {
            MatmulForm::Nt | MatmulForm::Nn => {
                // a (m, k): contiguous along k.
                line(format!("    let ar{l} = ia{l} / {bk}u;"));
                line(format!("    let ak{l} = ia{l} % {bk}u;"));
                line(format!("    var av{l} = 0.0;"));
                line(format!(
                    "    if (row0 + ar{l} < p.m && k0 + ak{l} < p.k) {{ av{l} = a[(row0 + ar{l}) * p.k + k0 + ak{l}]; }}"
                ));
            }
            MatmulForm::Tn => {
                // a (k, m): contiguous along m.
                line(format!("    let ar{l} = ia{l} % {bm}u;"));
                line(format!("    let ak{l} = ia{l} / {bm}u;"));
                line(format!("    var av{l} = 0.0;"));
                line(format!(
                    "    if (row0 + ar{l} < p.m && k0 + ak{l} < p.k) {{ av{l} = a[(k0 + ak{l}) * p.m + row0 + ar{l}]; }}"
                ));
            }
        }
        line(format!("    a_tile[ak{l} * {sa}u + ar{l}] = av{l};"));
    }
    // The B slice: bk x bn values.
    for l in 0..(bk * bn) / threads {
        let off = l * threads;
        line(format!("    let ib{l} = tid + {off}u;"));
        match form {
            MatmulForm::Nt => {
                // b (n, k): contiguous along k.
                line(format!("    let bc{l} = ib{l} / {bk}u;"));
                line(format!("    let bk{l} = ib{l} % {bk}u;"));
                line(format!("    var bv{l} = 0.0;"));
                line(format!(
                    "    if (col0 + bc{l} < p.n && k0 + bk{l} < p.k) {{ bv{l} = b[(col0 + bc{l}) * p.k + k0 + bk{l}]; }}"
                ));
            }
            MatmulForm::Nn | MatmulForm::Tn => {
                // b (k, n): contiguous along n.
                line(format!("    let bc{l} = ib{l} % {bn}u;"));
                line(format!("    let bk{l} = ib{l} / {bn}u;"));
                line(format!("    var bv{l} = 0.0;"));
                line(format!(
                    "    if (col0 + bc{l} < p.n && k0 + bk{l} < p.k) {{ bv{l} = b[(k0 + bk{l}) * p.n + col0 + bc{l}]; }}"
                ));
            }
        }
        line(format!("    b_tile[bk{l} * {sb}u + bc{l}] = bv{l};"));
    }
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
                for epilogue in EPILOGUES {
                    let src = source(form, t, epilogue);
                    let name = entry_name(form, t, epilogue_for(form, epilogue));
                    assert!(src.contains(&format!("fn {name}(")), "{name}");
                    assert!(!src.contains("fma(") && !src.contains("dot("), "{name}");
                    assert!(src.contains("kk < kend"), "{name}");
                    assert!(!src.contains("return"), "{name}: no early return");
                    // A local named like a global would read the wrong thing afterwards.
                    for g in [
                        "out", "a", "b", "p", "act_out", "bias_in", "pre_in", "a_tile", "b_tile",
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

    #[test]
    fn generated_sources_are_cached_and_epilogues_follow_the_form() {
        let t = WG_TILES[0];
        let (src, entry) = generated(MatmulForm::Nt, t, Epilogue::BiasAct { relu: true });
        assert_eq!(entry, format!("matmul_nt_{}_bias_relu", t.name()));
        let again = generated(MatmulForm::Nt, t, Epilogue::BiasAct { relu: true });
        assert!(std::ptr::eq(src, again.0));
        // tn takes no epilogue: its kernel is the Store one.
        let (_, tn) = generated(MatmulForm::Tn, t, Epilogue::ReluGrad);
        assert_eq!(tn, format!("matmul_tn_{}", t.name()));
    }
}
