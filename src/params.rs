//! What every kernel's uniform struct is: the [`Params`] trait and the `params_struct!` macro
//! that each op family (`crate::ops`) declares its structs with, shared by the WGSL side
//! (same struct name, same field names, same order) and the CPU twins. Plain data; no wgpu.
//!
//! Every struct is `#[repr(C)]`, made of 4-byte fields only, and padded to a multiple of 16
//! bytes, so its bytes are exactly the WGSL uniform's bytes. A CPU-only test
//! (`tests/shaders.rs`) parses the shaders with naga and checks names, order and sizes.

/// What a uniform struct tells the shader validation test about itself.
pub trait Params: bytemuck::Pod {
    /// The struct's name, the same in Rust and WGSL.
    const WGSL_NAME: &'static str;
    /// Field names in order, the same in Rust and WGSL.
    const FIELDS: &'static [&'static str];
}

macro_rules! params_struct {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty),*
        }
        impl $crate::params::Params for $name {
            const WGSL_NAME: &'static str = stringify!($name);
            const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
        }
    };
}

pub(crate) use params_struct;

/// A uniform struct's name, fields and size, as the kernel table records it for the naga
/// contract test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamsInfo {
    pub name: &'static str,
    pub fields: &'static [&'static str],
    pub size: usize,
}

impl ParamsInfo {
    pub const fn of<P: Params>() -> ParamsInfo {
        ParamsInfo {
            name: P::WGSL_NAME,
            fields: P::FIELDS,
            size: std::mem::size_of::<P>(),
        }
    }
}
