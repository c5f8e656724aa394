//! Register-tiled matmul kernels, generated: one WGSL entry point per form and tile shape.
//!
//! Each invocation computes a `rows x cols` block of `out`, keeping every partial sum in its
//! own variable and loading its operands as vec4. Per step of 4 in k an invocation loads
//! `4 * (rows + cols)` values for `4 * rows * cols` multiply-adds, so a bigger tile does more
//! arithmetic per load. That is what counts on a software adapter like llvmpipe, which runs
//! eight invocations per 256-bit vector and fetches each invocation's loads one lane at a
//! time: there the biggest tile runs 1024³ about three times as fast as a 4 x 4 one
//! (BENCHMARKS.md has the figures).
//! A hardware GPU wants small tiles and many invocations instead. The tile sizes are unrolled
//! into the source (WGSL cannot size a private array or unroll a loop by an `override`), so
//! the source is generated here, once per shape, and cached; which shape runs is chosen per
//! adapter and problem size by `autotune/`.
//!
//! The k-sum of every output runs in order 0..k-1 with a separate multiply and add, as in the
//! naive kernels and their CPU twins, so a tiled kernel gives the same bits as the naive one
//! on a driver that does not contract them into fused multiply-adds (lavapipe does not:
//! `tests/kernels.rs` checks it there).
//!
//! Shapes each form needs (vec4 loads along the contiguous dimension):
//! - nt `out (m, n) = a (m, k) · b (n, k)ᵀ`: k a multiple of 4;
//! - nn `out (m, n) = a (m, k) · b (k, n)`: k a multiple of 4;
//! - tn `out (m, n) = a (k, m)ᵀ · b (k, n)`: any k;
//!
//! and for all three, whole blocks only (m a multiple of `rows`, n of `cols`, both tile sizes
//! multiples of 4) and overwriting only. Every bounds check, edge clamp or accumulate branch
//! per output was tried and multiplied llvmpipe's compile time of the bigger tiles
//! (BENCHMARKS.md), so the other shapes go to the blocked kernel instead ([`Tile::fits`]).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

/// Which operand of a product is read transposed (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatmulForm {
    /// `out = a · bᵀ`, the forward product `Y = X·Wᵀ`.
    Nt,
    /// `out = a · b`, the input delta `dX = dY·W`.
    Nn,
    /// `out = aᵀ · b`, the weight gradient `dW = dYᵀ·X`.
    Tn,
}

impl MatmulForm {
    pub const ALL: [MatmulForm; 3] = [MatmulForm::Nt, MatmulForm::Nn, MatmulForm::Tn];

    pub fn name(self) -> &'static str {
        match self {
            MatmulForm::Nt => "nt",
            MatmulForm::Nn => "nn",
            MatmulForm::Tn => "tn",
        }
    }
}

/// The block of outputs one invocation computes, and the workgroup shape. Only the shapes
/// of [`TILES`] exist outside this crate (through [`TILES`] and [`Tile::parse`]): no other
/// shape can reach the generator, so every tile that runs is one the tests validate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tile {
    pub(crate) rows: u8,
    pub(crate) cols: u8,
    pub(crate) wx: u8,
    pub(crate) wy: u8,
}

impl Tile {
    pub(crate) const fn new(rows: u8, cols: u8, wx: u8, wy: u8) -> Tile {
        Tile { rows, cols, wx, wy }
    }

    /// `r64c32w8x1` and the like (also what `SOMA_MATMUL` accepts).
    pub fn name(self) -> String {
        format!("r{}c{}w{}x{}", self.rows, self.cols, self.wx, self.wy)
    }

    /// The tile of [`TILES`] named `s` exactly as [`Tile::name`] spells it; `None` for any
    /// other text, a well-formed name of a shape soma does not generate included.
    pub fn parse(s: &str) -> Option<Tile> {
        TILES.iter().copied().find(|t| t.name() == s)
    }

    /// Outputs each invocation computes (rows x columns of its block).
    pub fn outputs(self) -> u32 {
        self.rows as u32 * self.cols as u32
    }

    /// Outputs per workgroup: (rows, columns).
    pub fn workgroup_block(self) -> (u32, u32) {
        (
            self.rows as u32 * self.wy as u32,
            self.cols as u32 * self.wx as u32,
        )
    }

    /// Whether this tile can run `form` at these sizes: whole blocks only (m a multiple of
    /// `rows`, n of `cols`), overwriting only, and the vec4 rules above.
    pub fn fits(
        self,
        form: MatmulForm,
        m: usize,
        n: usize,
        k: usize,
        acc: crate::ops::Accumulate,
    ) -> bool {
        if acc != crate::ops::Accumulate::Overwrite
            || !m.is_multiple_of(self.rows as usize)
            || !n.is_multiple_of(self.cols as usize)
        {
            return false;
        }
        match form {
            MatmulForm::Nt => k.is_multiple_of(4) && self.cols.is_multiple_of(4),
            MatmulForm::Nn => k.is_multiple_of(4) && self.cols.is_multiple_of(4),
            MatmulForm::Tn => self.rows.is_multiple_of(4) && self.cols.is_multiple_of(4),
        }
    }

    /// The grid covering an `m x n` output.
    pub fn grid(self, m: usize, n: usize) -> [u32; 3] {
        let (br, bc) = self.workgroup_block();
        [(n as u32).div_ceil(bc), (m as u32).div_ceil(br), 1]
    }
}

/// What a generated kernel does with its sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Epilogue {
    /// `out = sums`.
    Store,
    /// The forward pass of a dense layer (nt only): `out = sums + bias` (the pre-activation,
    /// kept for backprop) and `act_out = act(out)`, with ReLU (`relu`) or the identity, in
    /// the scalar kernels' formulas. Other activations keep their separate kernel: a branch
    /// per output would multiply llvmpipe's compile time.
    BiasAct { relu: bool },
    /// The input delta of a ReLU layer (nn only): `out = sums * relu'(pre)`, with `pre` the
    /// previous layer's pre-activation, in `activation_backward`'s formula. Only for tiles of
    /// at most [`RELU_GRAD_MAX_OUTPUTS`] outputs: it loads `pre` once per output, and more
    /// unrolled loads multiply llvmpipe's compile time.
    ReluGrad,
}

/// The biggest tile (rows x cols) that takes the `ReluGrad` epilogue.
pub const RELU_GRAD_MAX_OUTPUTS: u32 = 256;

/// Whether `tile` takes the `ReluGrad` epilogue.
pub fn relu_grad_allowed(tile: Tile) -> bool {
    tile.outputs() <= RELU_GRAD_MAX_OUTPUTS
}

impl Epilogue {
    /// The entry point's suffix (`_bias_relu`, ...; none for `Store`).
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Epilogue::Store => "",
            Epilogue::ReluGrad => "_relu_grad",
            Epilogue::BiasAct { relu: true } => "_bias_relu",
            Epilogue::BiasAct { relu: false } => "_bias",
        }
    }
}

/// The tile shapes soma generates, from the GPU-friendly 4 x 4 (256 outputs per 8 x 8
/// workgroup) to the 64 x 32 blocks that suit a software rasteriser.
pub const TILES: &[Tile] = &[
    Tile::new(4, 4, 8, 8),
    Tile::new(8, 8, 8, 8),
    Tile::new(16, 16, 8, 2),
    Tile::new(32, 32, 8, 1),
    Tile::new(64, 32, 8, 1),
];

/// The entry point name of a generated kernel, e.g. `matmul_nn_r64c32w8x1` or
/// `matmul_nt_r8c8w8x8_bias_relu`.
pub fn entry_name(form: MatmulForm, tile: Tile, epilogue: Epilogue) -> String {
    format!(
        "matmul_{}_{}{}",
        form.name(),
        tile.name(),
        epilogue.suffix()
    )
}

/// The generated source and entry point of one kernel, built once per process.
pub fn generated(form: MatmulForm, tile: Tile, epilogue: Epilogue) -> (&'static str, &'static str) {
    static CACHE: Generated<Tile> = OnceLock::new();
    let epilogue = epilogue_for(form, epilogue);
    // A bounded set exists (TILES x 3 forms, plus 2 epilogues of nt), so leaking is too.
    cached(&CACHE, (form, tile, epilogue), || {
        (
            source(form, tile, epilogue),
            entry_name(form, tile, epilogue),
        )
    })
}

/// A generator's kernels by form, shape and epilogue: source and entry point.
pub(crate) type Generated<S> =
    OnceLock<Mutex<HashMap<(MatmulForm, S, Epilogue), (&'static str, &'static str)>>>;

/// The kernel under `key` in `cache`, generated by `build` (source, entry point) the first
/// time and kept for the process. Every generator's keys are a bounded set (its shapes x 3
/// forms x its epilogues), so the leaked texts are bounded too.
pub(crate) fn cached<S: Copy + Eq + std::hash::Hash>(
    cache: &'static Generated<S>,
    key: (MatmulForm, S, Epilogue),
    build: impl FnOnce() -> (String, String),
) -> (&'static str, &'static str) {
    let mut map = cache
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *map.entry(key).or_insert_with(|| {
        let (source, entry) = build();
        (
            Box::leak(source.into_boxed_str()),
            Box::leak(entry.into_boxed_str()),
        )
    })
}

/// `epilogue` where `form` has it (bias and activation: nt; relu': nn), else `Store`.
pub(crate) fn epilogue_for(form: MatmulForm, epilogue: Epilogue) -> Epilogue {
    match (form, epilogue) {
        (MatmulForm::Nt, Epilogue::BiasAct { .. }) | (MatmulForm::Nn, Epilogue::ReluGrad) => {
            epilogue
        }
        _ => Epilogue::Store,
    }
}

/// The WGSL of one generated kernel (an epilogue the form lacks is `Store`).
pub fn source(form: MatmulForm, tile: Tile, epilogue: Epilogue) -> String {
    let mut s = String::new();
    let epilogue = epilogue_for(form, epilogue);
    let entry = entry_name(form, tile, epilogue);
    let extra_bindings = match epilogue {
        Epilogue::Store => "@group(0) @binding(3) var<uniform> p: MatmulParams;\n".to_string(),
        Epilogue::BiasAct { .. } => {
            "@group(0) @binding(3) var<storage, read_write> act_out: array<vec4<f32>>;\n\
             @group(0) @binding(4) var<storage, read> bias_in: array<vec4<f32>>;\n\
             @group(0) @binding(5) var<uniform> p: MatmulParams;\n"
                .to_string()
        }
        Epilogue::ReluGrad => {
            "@group(0) @binding(3) var<storage, read> pre_in: array<vec4<f32>>;\n\
             @group(0) @binding(4) var<uniform> p: MatmulParams;\n"
                .to_string()
        }
    };
    let (r, c, wx, wy) = (tile.rows as u32, tile.cols as u32, tile.wx, tile.wy);
    let out_ty = "array<vec4<f32>>";
    let _ = write!(
        s,
        "// Generated by soma (src/ops/matmul/tiled.rs): {entry}, {r} x {c} outputs per invocation.\n\
         struct MatmulParams {{\n    m: u32,\n    n: u32,\n    k: u32,\n    accumulate: u32,\n}}\n\n\
         @group(0) @binding(0) var<storage, read_write> out: {out_ty};\n\
         @group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;\n\
         @group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;\n\
         {extra_bindings}\n\
         @compute @workgroup_size({wx}, {wy}, 1)\n\
         fn {entry}(@builtin(global_invocation_id) gid: vec3<u32>) {{\n"
    );
    let mut line = |text: String| {
        s.push_str("    ");
        s.push_str(&text);
        s.push('\n');
    };
    match form {
        MatmulForm::Nt => {
            // acc_i_j: vec4 of 4 columns. Rows of a and of b are vec4 along k; the four
            // b rows of a column group are read across (y0.x, y1.x, y2.x, y3.x) per step.
            let cv = c / 4;
            line("let kv = p.k / 4u;".into());
            line("let nv = p.n / 4u;".into());
            line(format!("let row0 = gid.y * {r}u;"));
            line(format!("let cv0 = gid.x * {cv}u;"));
            line("if (row0 >= p.m || cv0 >= nv) { return; }".into());
            for i in 0..r {
                line(format!("let ra{i} = (row0 + {i}u) * kv;"));
            }
            for j in 0..c {
                line(format!("let cb{j} = (cv0 * 4u + {j}u) * kv;"));
            }
            zero_accumulators(&mut line, r, cv);
            line("for (var kk = 0u; kk < kv; kk = kk + 1u) {".into());
            for j in 0..c {
                line(format!("    let y{j} = b4[cb{j} + kk];"));
            }
            for j in 0..cv {
                let (y0, y1, y2, y3) = (4 * j, 4 * j + 1, 4 * j + 2, 4 * j + 3);
                for comp in ["x", "y", "z", "w"] {
                    line(format!(
                        "    let b{comp}_{j} = vec4<f32>(y{y0}.{comp}, y{y1}.{comp}, y{y2}.{comp}, y{y3}.{comp});"
                    ));
                }
            }
            for i in 0..r {
                line(format!("    let x{i} = a4[ra{i} + kk];"));
                for j in 0..cv {
                    line(format!(
                        "    acc{i}_{j} = acc{i}_{j} + x{i}.x * bx_{j} + x{i}.y * by_{j} + x{i}.z * bz_{j} + x{i}.w * bw_{j};"
                    ));
                }
            }
            line("}".into());
            store(&mut line, r, cv, "row0", "cv0", "nv", epilogue);
        }
        MatmulForm::Nn => {
            // acc_i_j: vec4 of 4 columns; rows of a vec4 along k, rows of b vec4 along n.
            let cv = c / 4;
            line("let kv = p.k / 4u;".into());
            line("let nv = p.n / 4u;".into());
            line(format!("let row0 = gid.y * {r}u;"));
            line(format!("let cv0 = gid.x * {cv}u;"));
            line("if (row0 >= p.m || cv0 >= nv) { return; }".into());
            for i in 0..r {
                line(format!("let ra{i} = (row0 + {i}u) * kv;"));
            }
            for j in 0..cv {
                line(format!("let cb{j} = cv0 + {j}u;"));
            }
            zero_accumulators(&mut line, r, cv);
            line("for (var kk = 0u; kk < kv; kk = kk + 1u) {".into());
            line("    let kb = 4u * kk * nv;".into());
            for q in 0..4 {
                for j in 0..cv {
                    line(format!("    let b{q}_{j} = b4[kb + {q}u * nv + cb{j}];"));
                }
            }
            for i in 0..r {
                line(format!("    let x{i} = a4[ra{i} + kk];"));
                for j in 0..cv {
                    line(format!(
                        "    acc{i}_{j} = acc{i}_{j} + x{i}.x * b0_{j} + x{i}.y * b1_{j} + x{i}.z * b2_{j} + x{i}.w * b3_{j};"
                    ));
                }
            }
            line("}".into());
            store(&mut line, r, cv, "row0", "cv0", "nv", epilogue);
        }
        MatmulForm::Tn => {
            // acc_i_j: vec4 of 4 columns; a (k, m) read as vec4 along m, b (k, n) along n.
            let (rv, cv) = (r / 4, c / 4);
            line("let mv = p.m / 4u;".into());
            line("let nv = p.n / 4u;".into());
            line(format!("let rv0 = gid.y * {rv}u;"));
            line(format!("let cv0 = gid.x * {cv}u;"));
            line("let row0 = rv0 * 4u;".into());
            line("if (rv0 >= mv || cv0 >= nv) { return; }".into());
            for i in 0..rv {
                line(format!("let ra{i} = rv0 + {i}u;"));
            }
            for j in 0..cv {
                line(format!("let cb{j} = cv0 + {j}u;"));
            }
            zero_accumulators(&mut line, r, cv);
            line("for (var kk = 0u; kk < p.k; kk = kk + 1u) {".into());
            line("    let ka = kk * mv;".into());
            line("    let kb = kk * nv;".into());
            for j in 0..cv {
                line(format!("    let y{j} = b4[kb + cb{j}];"));
            }
            for i in 0..rv {
                line(format!("    let x{i} = a4[ka + ra{i}];"));
                for (q, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                    let row = 4 * i + q as u32;
                    for j in 0..cv {
                        line(format!(
                            "    acc{row}_{j} = acc{row}_{j} + x{i}.{comp} * y{j};"
                        ));
                    }
                }
            }
            line("}".into());
            store(&mut line, r, cv, "row0", "cv0", "nv", Epilogue::Store);
        }
    }
    s.push_str("}\n");
    s
}

/// Declares the `r x cv` vec4 accumulators `acc{i}_{j}`, zeroed.
fn zero_accumulators(line: &mut impl FnMut(String), r: u32, cv: u32) {
    for i in 0..r {
        for j in 0..cv {
            line(format!("var acc{i}_{j} = vec4<f32>(0.0);"));
        }
    }
}

/// Stores the `r x c` accumulators `acc{i}_{j}` at (row0, col0) of an output `width`
/// elements wide, through `epilogue`. Only whole blocks run and only overwriting (see
/// `Tile::fits`), so the stores need neither a bounds check nor a branch: a branch, a
/// select or a load per output costs llvmpipe seconds of compile time at these tile sizes.
fn store(
    line: &mut impl FnMut(String),
    r: u32,
    c: u32,
    row0: &str,
    col0: &str,
    width: &str,
    epilogue: Epilogue,
) {
    if let Epilogue::BiasAct { .. } = epilogue {
        for j in 0..c {
            line(format!("let bv{j} = bias_in[{col0} + {j}u];"));
        }
    }
    for i in 0..r {
        line(format!("let o{i} = ({row0} + {i}u) * {width} + {col0};"));
        for j in 0..c {
            match epilogue {
                Epilogue::Store => line(format!("out[o{i} + {j}u] = acc{i}_{j};")),
                Epilogue::BiasAct { relu } => {
                    line(format!("let z{i}_{j} = acc{i}_{j} + bv{j};"));
                    line(format!("out[o{i} + {j}u] = z{i}_{j};"));
                    if relu {
                        line(format!(
                            "act_out[o{i} + {j}u] = max(z{i}_{j}, vec4<f32>(0.0));"
                        ));
                    } else {
                        line(format!("act_out[o{i} + {j}u] = z{i}_{j};"));
                    }
                }
                Epilogue::ReluGrad => {
                    line(format!("let q{i}_{j} = pre_in[o{i} + {j}u];"));
                    line(format!(
                        "out[o{i} + {j}u] = acc{i}_{j} * select(vec4<f32>(0.0), vec4<f32>(1.0), q{i}_{j} > vec4<f32>(0.0));"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Accumulate::{Add, Overwrite};

    #[test]
    fn tile_names_round_trip_and_unknown_ones_are_refused() {
        for &t in TILES {
            assert_eq!(Tile::parse(&t.name()), Some(t));
        }
        assert_eq!(Tile::parse("r64c32w8x1"), Some(Tile::new(64, 32, 8, 1)));
        // Well-formed but not generated, other spellings of a generated one, and malformed.
        for bad in [
            "r12c12w8x8",
            "r4c4w64x64",
            "r064c32w8x1",
            "r+64c32w8x1",
            "R64C32W8X1",
            " r64c32w8x1",
            "r64c32",
            "blocked",
            "",
        ] {
            assert_eq!(Tile::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fits_takes_whole_blocks_overwriting_only() {
        let t = Tile::new(16, 16, 8, 2);
        assert!(t.fits(MatmulForm::Nn, 32, 48, 8, Overwrite));
        assert!(
            !t.fits(MatmulForm::Nn, 32, 48, 8, Add),
            "accumulating goes to blocked"
        );
        assert!(
            !t.fits(MatmulForm::Nn, 33, 48, 8, Overwrite),
            "m not whole blocks"
        );
        assert!(
            !t.fits(MatmulForm::Nn, 32, 40, 8, Overwrite),
            "n not whole blocks"
        );
        assert!(
            !t.fits(MatmulForm::Nn, 32, 48, 6, Overwrite),
            "nn loads k as vec4"
        );
        assert!(
            !t.fits(MatmulForm::Nt, 32, 48, 6, Overwrite),
            "nt loads k as vec4"
        );
        assert!(
            t.fits(MatmulForm::Tn, 32, 48, 6, Overwrite),
            "tn takes any k"
        );
    }

    #[test]
    fn grid_covers_the_output_with_whole_workgroups() {
        let t = Tile::new(64, 32, 8, 1);
        assert_eq!(t.workgroup_block(), (64, 256));
        assert_eq!(t.grid(1024, 1024), [4, 16, 1]);
        assert_eq!(t.grid(128, 288), [2, 2, 1]);
    }

    #[test]
    fn no_generated_local_shadows_a_binding() {
        // A local named like a global (`let a4 = a4[...]`) compiles and silently reads the
        // wrong thing afterwards; the generator's names must never collide.
        let globals = ["out", "a4", "b4", "p", "act_out", "bias_in", "pre_in"];
        for form in MatmulForm::ALL {
            for &t in TILES {
                for epilogue in [
                    Epilogue::Store,
                    Epilogue::BiasAct { relu: true },
                    Epilogue::BiasAct { relu: false },
                    Epilogue::ReluGrad,
                ] {
                    let src = source(form, t, epilogue);
                    for g in globals {
                        assert!(
                            !src.contains(&format!("let {g} "))
                                && !src.contains(&format!("var {g} ")),
                            "{}: a local shadows `{g}`",
                            entry_name(form, t, epilogue)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn generated_sources_are_cached_and_name_their_entry_point() {
        let t = Tile::new(8, 8, 8, 8);
        let (src, entry) = generated(MatmulForm::Tn, t, Epilogue::Store);
        assert_eq!(entry, "matmul_tn_r8c8w8x8");
        assert!(src.contains(&format!("fn {entry}(")));
        // The same leaked strings come back the second time.
        let again = generated(MatmulForm::Tn, t, Epilogue::Store);
        assert!(std::ptr::eq(src, again.0));
    }
}
