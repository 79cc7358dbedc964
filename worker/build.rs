//! Generates the containerd snapshots gRPC service from `proto/` with tonic 0.14. The
//! `containerd-snapshots` crate would pin tonic 0.9 / prost 0.11 next to the current stack;
//! generating our own server stubs keeps one tonic. protox compiles the protos in Rust, so
//! no `protoc` has to be installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["snapshots.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
