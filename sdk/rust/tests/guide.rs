//! docs/sdk-rust.md shows sdk/rust/examples/scale.rs, which `cargo test`
//! compiles; this keeps the two the same text.

fn read(rel: &str) -> String {
    let path = format!("{}/../../{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_guide_shows_the_compiled_example() {
    let guide = read("docs/sdk-rust.md");
    let example = read("sdk/rust/examples/scale.rs");
    // The example minus its leading //! lines, which say where it is shown.
    let body: Vec<&str> = example
        .lines()
        .skip_while(|l| l.starts_with("//!") || l.is_empty())
        .collect();
    let at = guide
        .find("`src/main.rs`")
        .expect("docs/sdk-rust.md names `src/main.rs` before the complete stage");
    let start = at + guide[at..].find("```rust\n").expect("a rust block follows") + 8;
    let end = start + guide[start..].find("\n```").expect("the block ends");
    assert_eq!(
        guide[start..end].trim_end(),
        body.join("\n").trim_end(),
        "docs/sdk-rust.md's complete stage differs from sdk/rust/examples/scale.rs: copy the example into the guide"
    );
}

/// A project made by `pipehost new stage --lang rust` starts from the
/// workspace's lock file, so it builds the SDK with the dependency versions
/// tested here (cargo drops the workspace's other packages on first build).
#[test]
fn the_rust_template_pins_the_tested_dependencies() {
    assert!(
        read("Cargo.lock") == read("host/scaffold/templates/rust/Cargo.lock"),
        "host/scaffold/templates/rust/Cargo.lock differs from the workspace's Cargo.lock: \
         cp Cargo.lock host/scaffold/templates/rust/Cargo.lock"
    );
}
