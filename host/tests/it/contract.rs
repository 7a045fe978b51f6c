//! The contract's version (issue 16): a component built against another version
//! of `creditgate:policy` is refused when it is loaded, with a message naming
//! both versions, before anything is linked or instantiated.
//!
//! The components here are stubs made from a WIT file: every function traps,
//! but their imports and exports are exactly what a component built against
//! that WIT names. The 0.1.0 WIT is kept as a fixture
//! (`tests/fixtures/contract-0.1.0/policy.wit`, the last release's contract).

use creditgate::runtime::{CONTRACT, ComponentSource, LoadError, Runtime, RuntimeConfig};

/// A component implementing world `policy-engine` of `wit`, every function a trap.
fn stub_component(wit: &str) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str("policy.wit", wit)
        .expect("the WIT parses");
    let world = resolve
        .select_world(&[package], Some("policy-engine"))
        .expect("the WIT has the world");
    let mut module =
        wit_component::dummy_module(&resolve, world, wit_parser::ManglingAndAbi::Standard32);
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("metadata embeds");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("the module is a core module")
        .validate(true)
        .encode()
        .expect("the component encodes")
}

fn load(wasm: &[u8]) -> Result<Runtime, LoadError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("policy.wasm");
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
    let old = stub_component(include_str!("../fixtures/contract-0.1.0/policy.wit"));
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
fn a_component_built_against_this_contract_loads() {
    let current = stub_component(include_str!("../../../wit/policy.wit"));
    load(&current).expect("a stub of the current contract links");
}
