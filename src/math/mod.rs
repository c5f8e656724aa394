//! Which arithmetic the kernels' divisions, square roots, exponentials and logarithms use,
//! on both sides of a kernel: [`Math::Native`] (the adapter's `/`, `sqrt`, `exp`, `log`, and
//! Rust's on the CPU: fastest, equal to rounding) or [`Math::Strict`] (soma's own routines
//! in [`strict`], the same operations in Rust and WGSL, so the same bits on every adapter
//! that passes the strict self-test). The shader files call `soma_div`, `soma_sqrt`,
//! `soma_exp`, `soma_log` and their vec4 forms; the pipeline prepends the prelude of the
//! kernels' `Math` ([`Math::prelude`]); the CPU twins take a `Math` and call its methods.

pub mod strict;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The arithmetic of the routines WGSL leaves to the driver (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Math {
    /// The adapter's own `/`, `sqrt`, `exp` and `log` (Rust's on the CPU).
    #[default]
    Native,
    /// soma's routines: division and square root correctly rounded with integer
    /// arithmetic, `exp` and `log` from `+ - *` in a fixed order.
    Strict,
}

/// `shaders/math_native.wgsl`: the `soma_*` routines as the WGSL builtins.
pub const NATIVE_WGSL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/shaders/math_native.wgsl"
));
/// `shaders/math_strict.wgsl`: the `soma_*` routines as in [`strict`].
pub const STRICT_WGSL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/shaders/math_strict.wgsl"
));
/// `shaders/math_vec4.wgsl`: the vec4 forms, component by component, for both.
pub const VEC4_WGSL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/shaders/math_vec4.wgsl"
));

impl Math {
    /// `a / b`.
    #[inline(always)]
    pub fn div(self, a: f32, b: f32) -> f32 {
        match self {
            Math::Native => a / b,
            Math::Strict => strict::div(a, b),
        }
    }

    /// `sqrt(x)`.
    #[inline(always)]
    pub fn sqrt(self, x: f32) -> f32 {
        match self {
            Math::Native => x.sqrt(),
            Math::Strict => strict::sqrt(x),
        }
    }

    /// `e^x`.
    #[inline(always)]
    pub fn exp(self, x: f32) -> f32 {
        match self {
            Math::Native => x.exp(),
            Math::Strict => strict::exp(x),
        }
    }

    /// `ln(x)`.
    #[inline(always)]
    pub fn log(self, x: f32) -> f32 {
        match self {
            Math::Native => x.ln(),
            Math::Strict => strict::log(x),
        }
    }

    /// The WGSL that defines `soma_div`, `soma_sqrt`, `soma_exp`, `soma_log` and their vec4
    /// forms in this arithmetic, to put before a shader that calls them.
    pub fn prelude(self) -> String {
        let scalar = match self {
            Math::Native => NATIVE_WGSL,
            Math::Strict => STRICT_WGSL,
        };
        format!("{scalar}\n{VEC4_WGSL}\n")
    }

    /// A shader's source with this prelude before it, when it calls the routines (a shader
    /// that calls none is returned as it is).
    pub fn source(self, shader: &str) -> std::borrow::Cow<'_, str> {
        if shader.contains("soma_") {
            format!("{}{shader}", self.prelude()).into()
        } else {
            shader.into()
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Math::Native => "native",
            Math::Strict => "strict",
        }
    }
}

/// The promise a run makes about its bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Determinism {
    /// The fastest kernels the tuner finds: the same bits from one run to the next on one
    /// adapter (with the same tuned choices), equal to rounding elsewhere.
    #[default]
    Default,
    /// The same bits on every adapter that passes the strict self-test (`exec::strict::self_test`) and on the CPU reference:
    /// strict kernels (`Tuning::strict`) and soma's own arithmetic ([`Math::Strict`]).
    Strict,
}

impl Determinism {
    /// The mode a `--deterministic` flag names (`None`: not given, the default), or an error
    /// that names the flag.
    pub fn from_flag(value: Option<&str>) -> Result<Determinism> {
        match value {
            None => Ok(Determinism::Default),
            Some(d) => d
                .parse()
                .map_err(|_| Error::Config(format!("--deterministic {d}: use default or strict"))),
        }
    }

    pub fn math(self) -> Math {
        match self {
            Determinism::Default => Math::Native,
            Determinism::Strict => Math::Strict,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Determinism::Default => "default",
            Determinism::Strict => "strict",
        }
    }
}

impl std::fmt::Display for Determinism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Determinism {
    type Err = Error;
    fn from_str(s: &str) -> Result<Determinism> {
        match s {
            "default" => Ok(Determinism::Default),
            "strict" => Ok(Determinism::Strict),
            _ => Err(Error::Config(format!(
                "unknown determinism '{s}': use default or strict"
            ))),
        }
    }
}
