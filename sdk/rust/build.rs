// Generates the protocol types and gRPC service traits from the repository's
// .proto files (the single source of truth) with the system `protoc`.
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../proto");
    let root = root
        .canonicalize()
        .unwrap_or_else(|e| panic!("pipehost-sdk: proto directory {}: {e}", root.display()));
    let protos = [
        root.join("pipehost/v1/stage.proto"),
        root.join("goplugin/controller.proto"),
        root.join("goplugin/stdio.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .build_transport(false)
        .compile_protos(&protos, &[root])
        .unwrap_or_else(|e| {
            panic!("pipehost-sdk: generating code from {}: {e}\n(the system protoc is needed: scripts/ensure-deps.sh protoc)", protos[0].display())
        });
}
