//! Generates the Open Inference Protocol's gRPC messages, client and server from
//! `proto/inference.proto`, with a protobuf compiler written in Rust (so a build needs no
//! `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    let descriptors = protox::compile(["inference.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Raw tensor bytes as `bytes::Bytes`: slices of the message as received, not copies.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
