//! The contract's version (issue 16): a component built against another version
//! of `creditgate:policy` is refused when it is loaded, with a message naming
//! both versions, before anything is linked or instantiated.
//!
//! The components here are stubs made from a WIT file: they import, as
//! instances, every interface its `policy-engine` world imports, under the names
//! a component built against that WIT uses (`creditgate:policy/state@0.1.0`).
//! The 0.1.0 WIT is kept as a fixture (`tests/fixtures/contract-0.1.0/policy.wit`,
//! the last release's contract).

use creditgate::runtime::{CONTRACT, ComponentSource, LoadError, Runtime, RuntimeConfig};

/// A component importing each interface world `policy-engine` of the WIT at
/// `wit` (a file, or a directory of one package's files) imports, under its
/// versioned name, as an instance with nothing in it.
fn stub_component(wit: &std::path::Path) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_path(wit).expect("the WIT parses");
    let world = resolve
        .select_world(&[package], Some("policy-engine"))
        .expect("the WIT has the world");
    let mut types = wasm_encoder::ComponentTypeSection::new();
    types.instance(&wasm_encoder::InstanceType::new());
    let mut imports = wasm_encoder::ComponentImportSection::new();
    for key in resolve.worlds[world].imports.keys() {
        imports.import(
            &resolve.name_world_key(key),
            wasm_encoder::ComponentTypeRef::Instance(0),
        );
    }
    let mut component = wasm_encoder::Component::new();
    component.section(&types);
    component.section(&imports);
    component.finish()
}

fn manifest_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn load(wasm: &[u8]) -> Result<Runtime, LoadError> {
    let (_dir, path) = crate::harness::temp_path("policy.wasm");
    std::fs::write(&path, wasm).expect("writes the component");
    Runtime::new(
        &ComponentSource::File(path),
        RuntimeConfig {
            cache_dir: None,
            ..RuntimeConfig::default()
        },
    )
}

#[test]
fn a_component_built_against_0_1_0_is_refused_naming_both_versions() {
    let old = stub_component(&manifest_path("tests/fixtures/contract-0.1.0/policy.wit"));
    let err = load(&old).expect_err("a 0.1.0 component is refused");
    assert!(
        matches!(&err, LoadError::Version { found, .. } if found == "0.1.0"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("creditgate:policy@0.1.0") && message.contains("creditgate:policy@0.2.0"),
        "{message}"
    );
    assert_eq!(CONTRACT, "creditgate:policy@0.2.0");
}

#[test]
fn a_component_importing_this_contract_passes_the_version_check() {
    let current = stub_component(&manifest_path("../wit"));
    // It exports nothing, so it is refused, but as a component that lacks the
    // world's exports, not for its version.
    match load(&current) {
        Err(LoadError::Version { .. }) => panic!("the current contract refused for its version"),
        Err(LoadError::Component { .. }) | Ok(_) => {}
        Err(other) => panic!("{other:?}"),
    }
}
