//! Compiles our copy of the CSI protocol (proto/csi.proto) into Rust with protox, a pure-Rust
//! protobuf compiler, so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let csi_proto = format!("{proto_dir}/csi.proto");
    println!("cargo:rerun-if-changed={csi_proto}");
    let descriptors = protox::compile([&csi_proto], [proto_dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
