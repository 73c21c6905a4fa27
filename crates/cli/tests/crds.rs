//! The CRDs checked in under deploy/ are exactly what `devheal crds` generates from the code:
//! change the types, regenerate with `devheal crds > deploy/crds/devheal.io.yaml`.

use std::process::Command;

#[test]
fn checked_in_crds_match_the_code() {
    let out = Command::new(env!("CARGO_BIN_EXE_devheal")).arg("crds").output().expect("run devheal crds");
    assert!(out.status.success(), "devheal crds failed: {}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8(out.stdout).expect("UTF-8");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/crds/devheal.io.yaml");
    let checked_in = std::fs::read_to_string(path).expect("deploy/crds/devheal.io.yaml exists");
    assert!(
        generated == checked_in,
        "deploy/crds/devheal.io.yaml is stale: regenerate it with `cargo run -p devheal -- crds > deploy/crds/devheal.io.yaml`"
    );
    assert!(generated.contains("kind: CustomResourceDefinition"));
    assert!(generated.contains("name: nodedevicehealths.devheal.io"));
}
