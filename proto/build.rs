//! Generates the nodeagent.v1 messages, client and server without a system protoc: protox
//! compiles the .proto files into a descriptor set, tonic-prost-build generates from it, and the
//! encoded set is written to OUT_DIR for server reflection.

use std::path::PathBuf;

use prost::Message as _;

/// Every .proto file of the API, relative to this crate (which is also the include root).
const PROTOS: &[&str] = &["nodeagent/v1/agent.proto"];

/// The collector's Fleet API, compiled on its own (see `main`).
const FLEET_PROTOS: &[&str] = &["nodeagent/fleet/v1/fleet.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Nothing else emits these on the compile_fds path. The directory catches added files.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=nodeagent");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    // Includes the imported well-known types (google/protobuf/timestamp.proto), which
    // reflection clients need to resolve the messages.
    let fds = protox::compile(PROTOS, ["."])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // compile_fds ignores file_descriptor_set_path(): encode the set ourselves.
    std::fs::write(
        out_dir.join("nodeagent_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    // The collector's Fleet API (package nodeagent.fleet.v1): a descriptor set of its own, so
    // the agent's reflection and its API record stay exactly nodeagent.v1.
    for proto in FLEET_PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fleet = protox::compile(FLEET_PROTOS, ["."])?;
    std::fs::write(out_dir.join("fleet_descriptor.bin"), fleet.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fleet)?;
    Ok(())
}
