//! Strict mode's SPIR-V pass: every floating-point arithmetic instruction of a module that
//! naga wrote gets the `NoContraction` decoration, which forbids the driver to fuse a
//! multiply with an add (an `fma`) or to reassociate, so that a kernel's sums happen in the
//! order its WGSL writes them. naga 30 emits no such decoration of its own (WGSL has no
//! `precise`). The module is then loaded through `Features::PASSTHROUGH_SHADERS`
//! (`kernels::Pipeline::build`). No wgpu here: words in, words out.

use crate::error::{Error, Result};

const MAGIC: u32 = 0x0723_0203;
const OP_DECORATE: u32 = 71;
const DECORATION_NO_CONTRACTION: u32 = 42;
const OP_CAPABILITY: u32 = 17;
const OP_EXTENSION: u32 = 10;
const OP_ENTRY_POINT: u32 = 15;
const OP_EXECUTION_MODE: u32 = 16;
/// SPIR-V's float controls (SPV_KHR_float_controls, core in SPIR-V 1.4): capabilities and
/// execution modes, for a width of 32 bits.
const CAPABILITY_DENORM_PRESERVE: u32 = 4464;
const CAPABILITY_ROUNDING_MODE_RTE: u32 = 4467;
const MODE_DENORM_PRESERVE: u32 = 4459;
const MODE_ROUNDING_MODE_RTE: u32 = 4462;

/// The float controls a module asks for, where the device advertises them for f32
/// (`Gpu::float_controls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FloatControls {
    /// `DenormPreserve`: subnormal operands and results are kept, not flushed.
    pub denorm_preserve: bool,
    /// `RoundingModeRTE`: results are rounded to nearest, ties to even.
    pub rounding_rte: bool,
}

impl FloatControls {
    pub fn any(self) -> bool {
        self.denorm_preserve || self.rounding_rte
    }

    /// The modes asked for, by their SPIR-V names (empty when none).
    pub fn names(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.denorm_preserve {
            v.push("DenormPreserve");
        }
        if self.rounding_rte {
            v.push("RoundingModeRTE");
        }
        v
    }
}

/// The instructions whose result is a float computed by rounding: the ones `NoContraction`
/// applies to (SPIR-V 1.6, 3.20 "Decoration": "apply to arithmetic instructions").
const FLOAT_ARITHMETIC: &[u32] = &[
    127, // OpFNegate
    129, // OpFAdd
    131, // OpFSub
    133, // OpFMul
    136, // OpFDiv
    140, // OpFRem
    141, // OpFMod
    142, // OpVectorTimesScalar
    143, // OpMatrixTimesScalar
    144, // OpVectorTimesMatrix
    145, // OpMatrixTimesVector
    146, // OpMatrixTimesMatrix
    147, // OpOuterProduct
    148, // OpDot
];

/// The opcodes of the module's preamble: capabilities, extensions, imports, memory model,
/// entry points, execution modes, debug information and annotations. Decorations go after
/// the last of them, before the first type.
const PREAMBLE: &[u32] = &[
    17,   // OpCapability
    10,   // OpExtension
    11,   // OpExtInstImport
    14,   // OpMemoryModel
    15,   // OpEntryPoint
    16,   // OpExecutionMode
    331,  // OpExecutionModeId
    7,    // OpString
    3,    // OpSource
    2,    // OpSourceContinued
    4,    // OpSourceExtension
    5,    // OpName
    6,    // OpMemberName
    330,  // OpModuleProcessed
    8,    // OpLine
    317,  // OpNoLine
    71,   // OpDecorate
    72,   // OpMemberDecorate
    73,   // OpDecorationGroup
    74,   // OpGroupDecorate
    75,   // OpGroupMemberDecorate
    332,  // OpDecorateId
    5632, // OpDecorateString
    5633, // OpMemberDecorateString
];

fn malformed(what: &str) -> Error {
    Error::Shader {
        label: "strict SPIR-V pass".into(),
        message: format!("malformed SPIR-V from naga: {what}"),
    }
}

/// The instructions of a module: (word offset, opcode, word count), after the 5-word header.
fn instructions(words: &[u32]) -> Result<Vec<(usize, u32, usize)>> {
    if words.len() < 5 || words[0] != MAGIC {
        return Err(malformed("no SPIR-V header"));
    }
    let mut out = Vec::new();
    let mut i = 5;
    while i < words.len() {
        let count = (words[i] >> 16) as usize;
        if count == 0 || i + count > words.len() {
            return Err(malformed(&format!(
                "an instruction of {count} words at word {i}"
            )));
        }
        out.push((i, words[i] & 0xffff, count));
        i += count;
    }
    Ok(out)
}

/// `words` with `OpDecorate %r NoContraction` for the result `%r` of every float
/// arithmetic instruction (see [`FLOAT_ARITHMETIC`]), and how many it decorated.
pub fn no_contraction(words: &[u32]) -> Result<(Vec<u32>, usize)> {
    let insts = instructions(words)?;
    let first_body = insts
        .iter()
        .find(|(_, op, _)| !PREAMBLE.contains(op))
        .map_or(words.len(), |&(at, _, _)| at);
    let mut already = std::collections::HashSet::new();
    for &(at, op, count) in &insts {
        if op == OP_DECORATE && count >= 3 && words[at + 2] == DECORATION_NO_CONTRACTION {
            already.insert(words[at + 1]);
        }
    }
    let mut decorations = Vec::new();
    for &(at, op, count) in &insts {
        if FLOAT_ARITHMETIC.contains(&op) {
            // result type, result id, operands...
            if count < 4 {
                return Err(malformed(&format!("opcode {op} of {count} words")));
            }
            let id = words[at + 2];
            if already.insert(id) {
                decorations.extend([3 << 16 | OP_DECORATE, id, DECORATION_NO_CONTRACTION]);
            }
        }
    }
    let decorated = decorations.len() / 3;
    let mut out = Vec::with_capacity(words.len() + decorations.len());
    out.extend_from_slice(&words[..first_body]);
    out.extend(decorations);
    out.extend_from_slice(&words[first_body..]);
    Ok((out, decorated))
}

/// A literal string as SPIR-V words: UTF-8, nul-terminated, zero-padded to a whole word.
fn string_words(s: &str) -> Vec<u32> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
    bytes
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `words` asking for `controls` on every entry point: the capabilities after the module's
/// capabilities, `OpExtension "SPV_KHR_float_controls"` after them, and one
/// `OpExecutionMode %entry MODE 32` per mode after the entry points.
pub fn float_controls(words: &[u32], controls: FloatControls) -> Result<Vec<u32>> {
    if !controls.any() {
        return Ok(words.to_vec());
    }
    let insts = instructions(words)?;
    let pairs: Vec<(u32, u32)> = [
        (
            controls.denorm_preserve,
            (CAPABILITY_DENORM_PRESERVE, MODE_DENORM_PRESERVE),
        ),
        (
            controls.rounding_rte,
            (CAPABILITY_ROUNDING_MODE_RTE, MODE_ROUNDING_MODE_RTE),
        ),
    ]
    .into_iter()
    .filter_map(|(on, pair)| on.then_some(pair))
    .collect();
    let last_capability = insts
        .iter()
        .filter(|(_, op, _)| *op == OP_CAPABILITY)
        .map(|&(at, _, count)| at + count)
        .max()
        .ok_or_else(|| malformed("no OpCapability"))?;
    let entries: Vec<(usize, u32)> = insts
        .iter()
        .filter(|(_, op, _)| *op == OP_ENTRY_POINT)
        .map(|&(at, _, count)| (at + count, words[at + 2]))
        .collect();
    let after_entries = entries
        .iter()
        .map(|&(end, _)| end)
        .max()
        .ok_or_else(|| malformed("no OpEntryPoint"))?;
    let mut head = Vec::new();
    for &(capability, _) in &pairs {
        head.extend([2 << 16 | OP_CAPABILITY, capability]);
    }
    let name = string_words("SPV_KHR_float_controls");
    head.push(((1 + name.len() as u32) << 16) | OP_EXTENSION);
    head.extend(name);
    let mut modes = Vec::new();
    for &(_, id) in &entries {
        for &(_, mode) in &pairs {
            modes.extend([4 << 16 | OP_EXECUTION_MODE, id, mode, 32]);
        }
    }
    let mut out = Vec::with_capacity(words.len() + head.len() + modes.len());
    out.extend_from_slice(&words[..last_capability]);
    out.extend(head);
    out.extend_from_slice(&words[last_capability..after_entries]);
    out.extend(modes);
    out.extend_from_slice(&words[after_entries..]);
    Ok(out)
}

/// A compute entry point as strict SPIR-V.
#[derive(Clone, Debug)]
pub struct StrictModule {
    pub words: Vec<u32>,
    /// The entry point's workgroup size (passthrough modules declare it to wgpu).
    pub workgroup_size: [u32; 3],
    /// How many float operations were marked `NoContraction`.
    pub decorated: usize,
}

/// Parses and validates WGSL `source`, writes `entry` as SPIR-V 1.0 the way wgpu's Vulkan
/// backend does (bounds checks that clamp, loops bounded), and applies [`no_contraction`]
/// and [`float_controls`].
pub fn strict_spirv(source: &str, entry: &str, controls: FloatControls) -> Result<StrictModule> {
    strict_spirv_with(source, entry, controls, naga::valid::Capabilities::empty())
}

/// [`strict_spirv`] of a shader that needs `capabilities` beyond WebGPU's core
/// (`Shader::capabilities`: subgroup operations, f16).
pub fn strict_spirv_with(
    source: &str,
    entry: &str,
    controls: FloatControls,
    capabilities: naga::valid::Capabilities,
) -> Result<StrictModule> {
    use naga::back::spv;
    let shader_error = |message: String| Error::Shader {
        label: entry.to_string(),
        message,
    };
    let module =
        naga::front::wgsl::parse_str(source).map_err(|e| shader_error(e.emit_to_string(source)))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
        .validate(&module)
        .map_err(|e| shader_error(e.emit_to_string(source)))?;
    let options = spv::Options {
        lang_version: (1, 0),
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: naga::proc::BoundsCheckPolicy::Restrict,
            buffer: naga::proc::BoundsCheckPolicy::Restrict,
            image_load: naga::proc::BoundsCheckPolicy::Restrict,
            binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
        },
        force_loop_bounding: true,
        ..spv::Options::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: entry.to_string(),
    };
    let workgroup_size = module
        .entry_points
        .iter()
        .find(|e| e.name == entry && e.stage == naga::ShaderStage::Compute)
        .map(|e| e.workgroup_size)
        .ok_or_else(|| shader_error(format!("no compute entry point '{entry}'")))?;
    let words = spv::write_vec(&module, &info, &options, Some(&pipeline))
        .map_err(|e| shader_error(format!("SPIR-V output: {e}")))?;
    let (words, decorated) = no_contraction(&words)?;
    let words = float_controls(&words, controls)?;
    Ok(StrictModule {
        words,
        workgroup_size,
        decorated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: &str = "
        @group(0) @binding(0) var<storage, read_write> out: array<f32>;
        @group(0) @binding(1) var<storage, read> x: array<f32>;
        @compute @workgroup_size(1)
        fn probe() {
            out[0] = x[0] * x[1] + x[2];
            out[1] = (x[0] + x[1]) - x[0];
            out[2] = -x[2] / x[1];
        }";

    fn decorated_ids(words: &[u32]) -> Vec<u32> {
        instructions(words)
            .unwrap()
            .into_iter()
            .filter(|&(at, op, _)| op == OP_DECORATE && words[at + 2] == DECORATION_NO_CONTRACTION)
            .map(|(at, _, _)| words[at + 1])
            .collect()
    }

    #[test]
    fn every_float_operation_is_decorated_before_the_types() {
        let m = strict_spirv(KERNEL, "probe", FloatControls::default()).unwrap();
        let words = m.words;
        assert_eq!(m.workgroup_size, [1, 1, 1]);
        // mul, add, add, sub, negate, div
        assert_eq!(m.decorated, 6);
        let ids = decorated_ids(&words);
        assert_eq!(ids.len(), 6);
        let insts = instructions(&words).unwrap();
        for &(at, op, _) in &insts {
            if FLOAT_ARITHMETIC.contains(&op) {
                assert!(ids.contains(&words[at + 2]), "opcode {op} not decorated");
            }
        }
        // Every decoration sits in the preamble, before the first non-preamble instruction.
        let first_body = insts
            .iter()
            .position(|(_, op, _)| !PREAMBLE.contains(op))
            .unwrap();
        assert!(insts[first_body..]
            .iter()
            .all(|&(_, op, _)| op != OP_DECORATE));
        // Running the pass again adds nothing.
        let (again, more) = no_contraction(&words).unwrap();
        assert_eq!((more, again.len()), (0, words.len()));
    }

    #[test]
    fn float_controls_go_where_spirv_puts_them() {
        let plain = strict_spirv(KERNEL, "probe", FloatControls::default()).unwrap();
        let both = FloatControls {
            denorm_preserve: true,
            rounding_rte: true,
        };
        let words = strict_spirv(KERNEL, "probe", both).unwrap().words;
        let insts = instructions(&words).unwrap();
        let ops: Vec<u32> = insts.iter().map(|&(_, op, _)| op).collect();
        // Capabilities, then extensions, then the rest, in SPIR-V's section order.
        let last_cap = ops.iter().rposition(|&o| o == OP_CAPABILITY).unwrap();
        let first_ext = ops.iter().position(|&o| o == OP_EXTENSION).unwrap();
        assert!(ops[..last_cap].iter().all(|&o| o == OP_CAPABILITY));
        assert_eq!(first_ext, last_cap + 1);
        let caps: Vec<u32> = insts
            .iter()
            .filter(|(_, op, _)| *op == OP_CAPABILITY)
            .map(|&(at, _, _)| words[at + 1])
            .collect();
        assert!(
            caps.contains(&CAPABILITY_DENORM_PRESERVE)
                && caps.contains(&CAPABILITY_ROUNDING_MODE_RTE)
        );
        let (at, _, count) = insts[first_ext];
        let text: Vec<u8> = words[at + 1..at + count]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .take_while(|&b| b != 0)
            .collect();
        assert_eq!(text, b"SPV_KHR_float_controls");
        // One mode of each kind on the entry point, after it.
        let entry = ops.iter().position(|&o| o == OP_ENTRY_POINT).unwrap();
        let id = words[insts[entry].0 + 2];
        let modes: Vec<(u32, u32, u32)> = insts
            .iter()
            .enumerate()
            .filter(|(_, (_, op, _))| *op == OP_EXECUTION_MODE)
            .map(|(i, &(at, _, _))| {
                assert!(i > entry);
                (
                    words[at + 1],
                    words[at + 2],
                    words.get(at + 3).copied().unwrap_or(0),
                )
            })
            .collect();
        for mode in [MODE_DENORM_PRESERVE, MODE_ROUNDING_MODE_RTE] {
            assert!(modes.contains(&(id, mode, 32)), "{modes:?}");
        }
        // 2 capabilities (4 words), the extension (7), 2 modes (8): nothing else changed.
        assert_eq!(words.len(), plain.words.len() + 4 + 7 + 8);
    }

    #[test]
    fn malformed_words_are_errors() {
        assert!(no_contraction(&[1, 2, 3]).is_err(), "no header");
        let mut words = strict_spirv(KERNEL, "probe", FloatControls::default())
            .unwrap()
            .words;
        let (last, _, _) = *instructions(&words).unwrap().last().unwrap();
        // The last instruction claims more words than the module has.
        words[last] = (100 << 16) | (words[last] & 0xffff);
        let e = no_contraction(&words).unwrap_err().to_string();
        assert!(e.contains("malformed SPIR-V"), "{e}");
    }
}
