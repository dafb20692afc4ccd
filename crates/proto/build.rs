//! Generates the prost messages and tonic clients/servers for every `.proto` file under the
//! repository's `proto/` directory, plus one file descriptor set for gRPC server reflection.
//!
//! protoc comes from `protoc-bin-vendored`, so a plain `cargo build` works on a machine with
//! no protoc installed. It is handed to prost-build with `Config::protoc_executable` rather
//! than through the `PROTOC` environment variable: setting a variable is `unsafe` in edition
//! 2024, and the workspace forbids unsafe code; both routes reach the same binary.

use std::error::Error;
use std::path::{Path, PathBuf};

/// The wire contract, relative to this crate's manifest directory.
const PROTO_ROOT: &str = "../../proto";

fn main() -> Result<(), Box<dyn Error>> {
    let root = Path::new(PROTO_ROOT);
    // A directory makes cargo re-run this script when any file beneath it changes, including
    // a newly added .proto (prost-build's own per-file lines would miss new files).
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let mut protos = Vec::new();
    collect_protos(root, &mut protos)?;
    protos.sort();
    if protos.is_empty() {
        return Err(format!("no .proto files under {}", root.display()).into());
    }

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // The well-known types (google/protobuf/*.proto) ship with the vendored protoc.
    let well_known = protoc_bin_vendored::include_path()?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Record payloads are `bytes::Bytes`, so the broker serves stored batches and clients
    // decode them without copying.
    config.bytes([
        ".runnel.v1.ProduceRequest.batch",
        ".runnel.v1.FetchResponse.batches",
        ".runnel.v1.Record",
        ".runnel.v1.RecordHeader",
        ".runnel.v1.ReplicaFetchPartitionData.batches",
    ]);

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let includes = [root.to_path_buf(), well_known];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("runnel_descriptor.bin"))
        // One generated module tree for every package, so a new package needs no edit here.
        .include_file("runnel_protos.rs")
        .compile_with_config(config, &protos, &includes)?;
    Ok(())
}

/// Appends every `.proto` file under `dir`, recursively.
fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Box<dyn Error>> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
