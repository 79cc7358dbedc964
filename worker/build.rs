//! Generates the gRPC code from `proto/` with tonic 0.14: containerd's snapshots service
//! (`proto/*.proto`), and BuildKit's control API (`proto/buildkit/`, laid out as BuildKit
//! imports its files), with its session's FileSync, FileSend, Auth, Secrets, SSH and fsutil's packets,
//! and its gateway (`LLBBridge`); gRPC's health service (`proto/grpc/`), which a session's client serves; FileSend a second time with packets, as the `local`
//! exporter uses it. The `containerd-snapshots` crate would pin tonic 0.9 / prost 0.11 next
//! to the current stack; generating our own stubs keeps one tonic. protox compiles the
//! protos in Rust (well-known types included), so no `protoc` has to be installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let snapshots = protox::compile(["snapshots.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(snapshots)?;
    let buildkit = protox::compile(
        [
            "api/services/control/control.proto",
            "session/filesync/filesync.proto",
            "frontend/gateway/pb/gateway.proto",
            "session/auth/auth.proto",
            "session/secrets/secrets.proto",
            "session/sshforward/ssh.proto",
        ],
        ["proto/buildkit"],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(buildkit)?;
    // gRPC's health service, which the daemon calls on every session.
    let health = protox::compile(["grpc/health/v1/health.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(health)?;
    // `FileSend` once more with fsutil's packets (the `local` exporter): the same service
    // name, so into a directory of its own.
    let packets = protox::compile(
        ["session/filesync/filesend_packets.proto"],
        ["proto/buildkit"],
    )?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("filesend_packets");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out)
        .compile_fds(packets)?;
    Ok(())
}
