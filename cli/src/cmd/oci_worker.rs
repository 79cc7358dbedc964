//! buildkitd's OCI worker flags (`--oci-worker-*`), shared by `stargaze build` and
//! `stargaze worker …`: each flag given overrides the config file's `[worker.oci]`. The
//! worker itself is assembled by `stargaze_worker::oci_worker`.

use clap::Args;
use stargaze_worker::config::OciWorkerFlags;
use stargaze_worker::executor::NetworkKind;
use stargaze_worker::oci_worker::WorkerSettings;
use stargaze_worker::registry_client::RegistryOverrides;
use stargaze_worker::snapshot::Backend;
use std::path::{Path, PathBuf};

/// buildkitd's OCI worker flags; each given flag overrides the config file.
#[derive(Args, Clone, Default)]
pub struct OciWorkerArgs {
    /// Enable the OCI worker: true, false or auto (when a runtime binary exists).
    #[arg(long = "oci-worker", value_name = "true|false|auto")]
    enabled: Option<String>,
    /// Worker label KEY=VALUE (repeatable).
    #[arg(long = "oci-worker-labels", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Snapshotter: auto, overlayfs, fuse-overlayfs, native, stargz.
    #[arg(long = "oci-worker-snapshotter")]
    snapshotter: Option<Backend>,
    /// A containerd snapshots gRPC socket to use as the snapshotter.
    #[arg(long = "oci-worker-proxy-snapshotter-path")]
    proxy_snapshotter_path: Option<PathBuf>,
    /// Platform to build for, OS/ARCH[/VARIANT] (repeatable).
    #[arg(long = "oci-worker-platform")]
    platforms: Vec<String>,
    /// Network mode: auto, host, cni.
    #[arg(long = "oci-worker-net")]
    net: Option<NetworkKind>,
    /// CNI config file.
    #[arg(long = "oci-cni-config-path")]
    cni_config_path: Option<PathBuf>,
    /// CNI plugin directory.
    #[arg(long = "oci-cni-binary-dir")]
    cni_binary_dir: Option<PathBuf>,
    /// OCI runtime binary (default: buildkit-runc, then runc).
    #[arg(long = "oci-worker-binary")]
    binary: Option<String>,
    /// AppArmor profile for build steps.
    #[arg(long = "oci-worker-apparmor-profile")]
    apparmor_profile: Option<String>,
    /// Rootless mode.
    #[arg(long = "oci-worker-rootless", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    rootless: Option<bool>,
    /// Steps without their own PID namespace (rootless only).
    #[arg(long = "oci-worker-no-process-sandbox", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    no_process_sandbox: Option<bool>,
    /// Garbage collection [default: true].
    #[arg(long = "oci-worker-gc", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    gc: Option<bool>,
    /// GC keep-storage in MB [default: 10% of the disk, rounded up to whole GB].
    #[arg(long = "oci-worker-gc-keepstorage", value_name = "MB")]
    gc_keep_storage_mb: Option<i64>,
    /// Steps run at once (0: unbounded).
    #[arg(long = "oci-max-parallelism")]
    max_parallelism: Option<usize>,
}

impl OciWorkerArgs {
    /// No flag given.
    pub fn is_default(&self) -> bool {
        self.enabled.is_none()
            && self.labels.is_empty()
            && self.snapshotter.is_none()
            && self.proxy_snapshotter_path.is_none()
            && self.platforms.is_empty()
            && self.net.is_none()
            && self.cni_config_path.is_none()
            && self.cni_binary_dir.is_none()
            && self.binary.is_none()
            && self.apparmor_profile.is_none()
            && self.rootless.is_none()
            && self.no_process_sandbox.is_none()
            && self.gc.is_none()
            && self.gc_keep_storage_mb.is_none()
            && self.max_parallelism.is_none()
    }

    /// As the library's flag set.
    pub fn flags(&self) -> OciWorkerFlags {
        OciWorkerFlags {
            enabled: self.enabled.clone(),
            labels: self.labels.clone(),
            snapshotter: self.snapshotter,
            proxy_snapshotter_path: self.proxy_snapshotter_path.clone(),
            platforms: self.platforms.clone(),
            net: self.net,
            cni_config_path: self.cni_config_path.clone(),
            cni_binary_dir: self.cni_binary_dir.clone(),
            binary: self.binary.clone(),
            apparmor_profile: self.apparmor_profile.clone(),
            rootless: self.rootless,
            no_process_sandbox: self.no_process_sandbox,
            gc: self.gc,
            gc_keep_storage_mb: self.gc_keep_storage_mb,
            max_parallelism: self.max_parallelism,
        }
    }

    /// The worker's settings: the config file at `config` (else the default one), then
    /// these flags, then `registry`'s hosts.
    pub fn settings(
        &self,
        config: Option<&Path>,
        registry: &RegistryOverrides,
    ) -> anyhow::Result<WorkerSettings> {
        Ok(WorkerSettings::load(config, &self.flags(), registry)?)
    }
}
