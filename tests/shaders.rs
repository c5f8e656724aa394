//! CPU-only: every file in shaders/ parses and validates with naga; every entry point the
//! Rust side dispatches exists in its file with the binding count the Rust side binds; and
//! every params struct has the same name, field names, order and size in Rust and WGSL.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use soma::kernels::{Kernel, SHADERS};
use soma::params::*;

fn parse(file: &str, source: &str) -> naga::Module {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(source)));
    Validator::new(ValidationFlags::all(), Capabilities::empty())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(source)));
    module
}

#[test]
fn every_shader_parses_and_validates() {
    for s in SHADERS {
        parse(s.file, s.source);
    }
    // The files on disk are the ones embedded.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = SHADERS.iter().map(|s| s.file.to_string()).collect();
    embedded.sort();
    assert_eq!(
        on_disk, embedded,
        "every .wgsl file in shaders/ is listed in kernels::SHADERS"
    );
}

#[test]
fn every_kernel_entry_point_exists_with_its_bindings() {
    for k in Kernel::all() {
        let (shader, entry, storage, uniform) = k.spec();
        let module = parse(shader.file, shader.source);
        let ep = module
            .entry_points
            .iter()
            .find(|e| e.name == entry)
            .unwrap_or_else(|| panic!("{}: no entry point {entry}", shader.file));
        assert_eq!(ep.stage, naga::ShaderStage::Compute, "{entry}");
        // The globals the entry point uses, by binding.
        let info = Validator::new(ValidationFlags::all(), Capabilities::empty())
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
                    storage[i] == soma::kernels::Access::Read,
                    "{entry}: binding {i} access"
                );
            } else {
                assert_eq!(
                    *space,
                    naga::AddressSpace::Uniform,
                    "{entry}: last binding is the uniform"
                );
                assert_eq!(ty, uniform, "{entry}: uniform struct name");
            }
        }
    }
}

fn check_params<P: Params>() {
    let mut found = false;
    for s in SHADERS {
        let module = parse(s.file, s.source);
        for (_, ty) in module.types.iter() {
            if ty.name.as_deref() != Some(P::WGSL_NAME) {
                continue;
            }
            found = true;
            let naga::TypeInner::Struct { members, span } = &ty.inner else {
                panic!("{}: {} is not a struct", s.file, P::WGSL_NAME);
            };
            let names: Vec<&str> = members
                .iter()
                .map(|m| m.name.as_deref().unwrap_or(""))
                .collect();
            assert_eq!(
                names,
                P::FIELDS,
                "{}: {} fields (Rust vs WGSL)",
                s.file,
                P::WGSL_NAME
            );
            assert_eq!(
                *span as usize,
                std::mem::size_of::<P>(),
                "{}: {} size",
                s.file,
                P::WGSL_NAME
            );
            for (i, m) in members.iter().enumerate() {
                assert_eq!(
                    m.offset as usize,
                    4 * i,
                    "{}: {}.{} offset",
                    s.file,
                    P::WGSL_NAME,
                    names[i]
                );
            }
        }
    }
    assert!(found, "{} appears in no shader", P::WGSL_NAME);
}

#[test]
fn params_structs_match_wgsl() {
    check_params::<MatmulParams>();
    check_params::<ActivationParams>();
    check_params::<DenseParams>();
    check_params::<RowsParams>();
    check_params::<LossParams>();
    check_params::<SgdParams>();
    check_params::<AdamParams>();
    check_params::<GatherParams>();
    check_params::<BlockedMatmulParams>();
    check_params::<ReduceParams>();
    check_params::<PerceptronParams>();
    for p in [
        std::mem::size_of::<MatmulParams>(),
        std::mem::size_of::<ActivationParams>(),
        std::mem::size_of::<AdamParams>(),
    ] {
        assert_eq!(p % 16, 0, "uniform structs are padded to 16 bytes");
    }
}
