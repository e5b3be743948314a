//! The committed `openapi.yaml` must be exactly what the server serves.
//!
//! On a mismatch, regenerate it with `cargo run -- openapi > openapi.yaml`,
//! or run this test with `HERALD_UPDATE_OPENAPI=1` to rewrite the file.

use std::path::PathBuf;

#[test]
fn openapi_yaml_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml");
    let generated = herald::controller::rest::openapi_spec_yaml();

    if std::env::var("HERALD_UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("cannot write openapi.yaml");
        return;
    }

    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first_diff = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "openapi.yaml is out of date with the REST API (first difference at line {}).\n\
             Regenerate it with:\n\n    cargo run -- openapi > openapi.yaml\n\n\
             (or run this test with HERALD_UPDATE_OPENAPI=1) and commit the result.",
            first_diff + 1
        );
    }
}
