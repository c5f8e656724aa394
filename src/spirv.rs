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
/// backend does (bounds checks that clamp, loops bounded), and applies [`no_contraction`].
pub fn strict_spirv(source: &str, entry: &str) -> Result<StrictModule> {
    use naga::back::spv;
    let shader_error = |message: String| Error::Shader {
        label: entry.to_string(),
        message,
    };
    let module =
        naga::front::wgsl::parse_str(source).map_err(|e| shader_error(e.emit_to_string(source)))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
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
        let m = strict_spirv(KERNEL, "probe").unwrap();
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
    fn malformed_words_are_errors() {
        assert!(no_contraction(&[1, 2, 3]).is_err(), "no header");
        let mut words = strict_spirv(KERNEL, "probe").unwrap().words;
        let (last, _, _) = *instructions(&words).unwrap().last().unwrap();
        // The last instruction claims more words than the module has.
        words[last] = (100 << 16) | (words[last] & 0xffff);
        let e = no_contraction(&words).unwrap_err().to_string();
        assert!(e.contains("malformed SPIR-V"), "{e}");
    }
}
