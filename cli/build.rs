//! Link-time settings of the `stargaze` binary.
//!
//! Relative relocations packed as DT_RELR (`-z pack-relative-relocs`, GNU ld 2.38+, glibc
//! 2.36+): a position-independent binary of this size carries ~35,000 of them, which the
//! loader reads at every start — 840 KiB of the file resident in each process (the snapshotter
//! daemon and the FUSE holder beside it). Packed, they take a few KiB.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
