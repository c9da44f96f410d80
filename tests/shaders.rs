//! Every shader parses and validates with naga, as composed at run time.

use refqsr::kernels::{source, SHADERS};

#[test]
fn every_shader_validates_with_naga() {
    assert!(SHADERS.len() >= 6);
    for (name, _) in SHADERS {
        let src = source(name).unwrap();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
        let mut v = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        );
        let info = v
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        // Resolve overrides with their defaults too, as the driver will.
        naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            None,
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(
            module.entry_points.iter().any(|e| e.name == "main"),
            "{name} has no main"
        );
    }
}

#[test]
fn a_broken_shader_is_rejected() {
    // The check above must be able to fail.
    let bad = format!(
        "{}\nfn f() -> u32 {{ return 1.0; }}",
        source("binary").unwrap()
    );
    let module = naga::front::wgsl::parse_str(&bad);
    let rejected = match module {
        Err(_) => true,
        Ok(m) => naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&m)
        .is_err(),
    };
    assert!(rejected);
}
