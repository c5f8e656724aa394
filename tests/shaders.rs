//! CPU-only: every file in shaders/ parses and validates with naga; every entry point the
//! Rust side dispatches (the kernel table, `Kernel::all`) exists in its file with the
//! bindings the Rust side binds; and every kernel's uniform struct has the same name, field
//! names, order and size in Rust and WGSL.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use soma::kernels::{Access, KernelSpec, SHADERS};
use soma::params::ParamsInfo;
use soma::{Kernel, Math};

/// A shader as the pipeline compiles it by default: after the `soma_*` routines' native
/// prelude (`Math::source`).
fn parse(file: &str, source: &str) -> naga::Module {
    parse_with(file, source, Math::Native)
}

fn parse_with(file: &str, source: &str, math: Math) -> naga::Module {
    let source = &*math.source(source);
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(source)));
    Validator::new(ValidationFlags::all(), capabilities(file))
        .validate(&module)
        .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(source)));
    module
}

/// What a device must have to compile `file`: subgroup operations and f16 for the files that
/// say they use them (`Shader::subgroups`, `Shader::f16`, through `Shader::capabilities`),
/// nothing beyond WebGPU's core for every other (the generated kernels among them).
fn capabilities(file: &str) -> Capabilities {
    SHADERS
        .iter()
        .find(|s| s.file == file)
        .map_or(Capabilities::empty(), |s| s.capabilities())
}

#[test]
fn only_the_subgroup_shaders_need_subgroups() {
    // A file marked as using subgroups fails without them (so the mark is needed), and the
    // others validate without them (checked by `parse` above).
    let marked: Vec<_> = SHADERS.iter().filter(|s| s.subgroups).collect();
    assert!(!marked.is_empty());
    for s in marked {
        let source = &*Math::Native.source(s.source);
        let module = naga::front::wgsl::parse_str(source).unwrap();
        assert!(
            Validator::new(ValidationFlags::all(), Capabilities::empty())
                .validate(&module)
                .is_err(),
            "{} validates without subgroups: unmark it",
            s.file
        );
    }
}

#[test]
fn only_the_f16_shaders_need_f16() {
    // A file marked as using f16 fails without the capability (so the mark is needed), and
    // validates with it alone (beside any subgroup mark); the others validate without it.
    let marked: Vec<_> = SHADERS.iter().filter(|s| s.f16).collect();
    assert!(marked.iter().any(|s| s.file == "matmul_f16.wgsl"));
    for s in marked {
        let source = &*Math::Native.source(s.source);
        assert!(
            source.starts_with("enable f16;"),
            "{}: the enable directive comes first",
            s.file
        );
        let module = naga::front::wgsl::parse_str(source).unwrap();
        let without = s.capabilities() - Capabilities::SHADER_FLOAT16;
        assert!(
            Validator::new(ValidationFlags::all(), without)
                .validate(&module)
                .is_err(),
            "{} validates without f16: unmark it",
            s.file
        );
        Validator::new(ValidationFlags::all(), s.capabilities())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", s.file, e.emit_to_string(source)));
    }
    for s in SHADERS.iter().filter(|s| !s.f16) {
        assert!(!s.capabilities().contains(Capabilities::SHADER_FLOAT16));
    }
}

#[test]
fn f16_kernels_write_strict_spirv() {
    // Strict mode compiles every kernel it records through naga's SPIR-V writer with its
    // shader's capabilities: the f16 kernels come out as SPIR-V too.
    let s = soma::kernels::MATMUL_F16;
    for entry in [
        "matmul_nt_f16",
        "matmul_nn_f16",
        "matmul_tn_f16",
        "cast_f16",
    ] {
        let m = soma::spirv::strict_spirv_with(
            s.source,
            entry,
            soma::spirv::FloatControls::default(),
            s.capabilities(),
        )
        .unwrap_or_else(|e| panic!("{entry}: {e}"));
        // The products' multiplies and adds are marked; the cast has no arithmetic to mark.
        assert_eq!(
            m.decorated > 0,
            entry != "cast_f16",
            "{entry}: {} float operations marked",
            m.decorated
        );
    }
}

#[test]
fn every_shader_parses_and_validates() {
    for s in SHADERS {
        parse(s.file, s.source);
        // Strict mode compiles every kernel with its own routines instead.
        parse_with(s.file, s.source, Math::Strict);
    }
    // The files on disk are the ones embedded.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    on_disk.sort();
    // The kernels' files, and the preludes `Math::source` puts before them.
    let mut embedded: Vec<String> = SHADERS.iter().map(|s| s.file.to_string()).collect();
    embedded.extend(["math_native.wgsl", "math_strict.wgsl", "math_vec4.wgsl"].map(String::from));
    embedded.sort();
    assert_eq!(
        on_disk, embedded,
        "every .wgsl file in shaders/ is listed in kernels::SHADERS"
    );
}

#[test]
fn every_kernel_entry_point_exists_with_its_bindings() {
    // entry point -> (file, bindings): one entry point is one kernel (Adam and AdamW, say,
    // are one kernel with a flag), never two different ones.
    let mut entries = std::collections::HashMap::new();
    for k in Kernel::all() {
        let KernelSpec {
            shader,
            entry,
            storage,
            uniform,
        } = k.spec();
        let seen = entries.entry(entry).or_insert((shader.file, storage));
        assert_eq!(
            *seen,
            (shader.file, storage),
            "{entry}: two kernels share an entry point"
        );
        let module = parse(shader.file, shader.source);
        let ep = module
            .entry_points
            .iter()
            .find(|e| e.name == entry)
            .unwrap_or_else(|| panic!("{}: no entry point {entry}", shader.file));
        assert_eq!(ep.stage, naga::ShaderStage::Compute, "{entry}");
        // The globals the entry point uses, by binding.
        let info = Validator::new(ValidationFlags::all(), capabilities(shader.file))
            .validate(&module)
            .unwrap();
        let idx = module
            .entry_points
            .iter()
            .position(|e| e.name == entry)
            .unwrap();
        let ep_info = info.get_entry_point(idx);
        let mut used: Vec<(u32, naga::AddressSpace, String)> = module
            .global_variables
            .iter()
            .filter(|(h, _)| !ep_info[*h].is_empty())
            .filter_map(|(_, g)| {
                g.binding.as_ref().map(|b| {
                    let ty_name = module.types[g.ty].name.clone().unwrap_or_default();
                    (b.binding, g.space, ty_name)
                })
            })
            .collect();
        used.sort_by_key(|u| u.0);
        let want = storage.len() + 1;
        assert_eq!(
            used.len(),
            want,
            "{entry}: uses {} bindings, Rust binds {want}",
            used.len()
        );
        for (i, (binding, space, ty)) in used.iter().enumerate() {
            assert_eq!(*binding as usize, i, "{entry}: bindings are 0..{want}");
            if i < storage.len() {
                let read_only = matches!(space, naga::AddressSpace::Storage { access } if !access.contains(naga::StorageAccess::STORE));
                let is_storage = matches!(space, naga::AddressSpace::Storage { .. });
                assert!(is_storage, "{entry}: binding {i} should be storage");
                assert_eq!(
                    read_only,
                    storage[i] == Access::Read,
                    "{entry}: binding {i} access"
                );
            } else {
                assert_eq!(
                    *space,
                    naga::AddressSpace::Uniform,
                    "{entry}: last binding is the uniform"
                );
                assert_eq!(ty, uniform.name, "{entry}: uniform struct name");
            }
        }
    }
}

/// The uniform struct `p` as declared in `source`: the same field names in order, 4 bytes
/// each, and the same size as in Rust.
fn check_params(file: &str, source: &str, p: ParamsInfo) {
    let module = parse(file, source);
    let (_, ty) = module
        .types
        .iter()
        .find(|(_, ty)| ty.name.as_deref() == Some(p.name))
        .unwrap_or_else(|| panic!("{file}: no struct {}", p.name));
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        panic!("{file}: {} is not a struct", p.name);
    };
    let names: Vec<&str> = members
        .iter()
        .map(|m| m.name.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(names, p.fields, "{file}: {} fields (Rust vs WGSL)", p.name);
    assert_eq!(*span as usize, p.size, "{file}: {} size", p.name);
    for (i, m) in members.iter().enumerate() {
        assert_eq!(
            m.offset as usize,
            4 * i,
            "{file}: {}.{} offset",
            p.name,
            names[i]
        );
    }
    assert_eq!(
        p.size % 16,
        0,
        "{}: uniform structs are padded to 16 bytes",
        p.name
    );
}

#[test]
fn every_kernels_uniform_matches_wgsl() {
    let mut checked = std::collections::HashSet::new();
    for k in Kernel::all() {
        let spec = k.spec();
        if checked.insert((spec.shader.file, spec.uniform.name)) {
            check_params(spec.shader.file, spec.shader.source, spec.uniform);
        }
    }
    // Every file's structs are some kernel's uniform.
    assert!(checked.len() >= SHADERS.len(), "{checked:?}");
}

#[test]
fn every_workgroup_tile_is_validated_with_every_load() {
    // The kernels the tests above validate include each workgroup tile of each form and
    // epilogue with scalar loads, A or B as vec4, and both (`WgLoads`), so no entry point the
    // recorders choose by shape escapes naga.
    use soma::ops::matmul::{Epilogue, MatmulForm, WgLoads, WG_TILES};
    let all = Kernel::all();
    for &t in WG_TILES {
        for loads in WgLoads::ALL {
            let mut want: Vec<Kernel> = MatmulForm::ALL
                .iter()
                .map(|&form| Kernel::MatmulWorkgroup(form, t, loads, Epilogue::Store))
                .collect();
            want.extend([
                Kernel::MatmulWorkgroup(MatmulForm::Nt, t, loads, Epilogue::BiasAct { relu: true }),
                Kernel::MatmulWorkgroup(
                    MatmulForm::Nt,
                    t,
                    loads,
                    Epilogue::BiasAct { relu: false },
                ),
                Kernel::MatmulWorkgroup(MatmulForm::Nn, t, loads, Epilogue::ReluGrad),
            ]);
            for k in want {
                assert!(all.contains(&k), "{k:?} is not in Kernel::all");
            }
        }
    }
}
