//! Compiles the Open Inference Protocol's gRPC service
//! (`proto/open_inference_grpc.proto`) into prost messages and a tonic
//! client and server, with `protox` (a protobuf compiler written in
//! Rust), so that building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/open_inference_grpc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
