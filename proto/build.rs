//! Compiles the .proto files with protox (pure Rust, no system protoc) and generates the
//! prost messages and tonic client and server. The encoded file descriptor set is written to
//! OUT_DIR so that the aggregator can serve gRPC reflection from it.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "duban/report/v1/report.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("duban_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `connect` helper: it would tie every user of the wire crate to tonic's transport.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
