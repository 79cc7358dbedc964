//! The OCI runtime spec of one build step, BuildKit's way: containerd's default Linux spec
//! (its mounts, masked and read-only paths, capabilities), minus `/run`, plus read-only
//! binds of the worker's `resolv.conf` and `hosts` and a read-only cgroup mount; setuid
//! binaries work (no `noNewPrivileges`), no rlimits, hostname `buildkitsandbox`. The network
//! mode picks the network namespace, the process mode the PID namespace, and rootless mode
//! drops what an unprivileged user cannot mount.

use super::user::User;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The PATH of a step whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which network namespace a step gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// The host's.
    Host,
    /// A fresh one with only loopback.
    None,
    /// A prepared one (CNI), by path.
    Join(PathBuf),
}

/// A mount a step asks for (`RUN --mount`), over whatever the default spec has there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepMount {
    /// A host path bound at `target`.
    Bind {
        /// Where, inside the container.
        target: String,
        /// The host path (a directory or a file).
        source: PathBuf,
        /// Read-only.
        readonly: bool,
    },
    /// A fresh tmpfs at `target`.
    Tmpfs {
        /// Where, inside the container.
        target: String,
        /// Size limit in bytes (none: the kernel's default).
        size: Option<u64>,
    },
}

impl StepMount {
    /// Where it goes inside the container.
    pub fn target(&self) -> &str {
        match self {
            StepMount::Bind { target, .. } | StepMount::Tmpfs { target, .. } => target,
        }
    }
}

/// Everything a spec is made from.
#[derive(Debug, Clone)]
pub struct SpecInput {
    /// The mounted rootfs.
    pub rootfs: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// `K=V` environment.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// Who runs it.
    pub user: User,
    /// Hostname.
    pub hostname: String,
    /// The worker's resolv.conf.
    pub resolv_conf: PathBuf,
    /// The worker's hosts file.
    pub hosts: PathBuf,
    /// Network namespace.
    pub network: Network,
    /// Own PID namespace and procfs (false only for rootless no-process-sandbox).
    pub process_sandbox: bool,
    /// AppArmor profile, when configured.
    pub apparmor_profile: Option<String>,
    /// Rootless: no sysfs or cgroup mounts, no resources.
    pub rootless: bool,
    /// The step's own mounts, in order.
    pub mounts: Vec<StepMount>,
}

/// Why a spec could not be made.
#[derive(Debug, thiserror::Error)]
#[error("building the OCI spec: {0}")]
pub struct SpecError(String);

fn e(err: impl std::fmt::Display) -> SpecError {
    SpecError(err.to_string())
}

fn mount(dest: &str, typ: &str, source: &str, opts: &[&str]) -> Result<Mount, SpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(e)
}

fn bind_ro(dest: &str, source: &Path) -> Result<Mount, SpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(
            ["nosuid", "noexec", "nodev", "rbind", "ro"]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(e)
}

/// containerd's default capability set.
fn default_caps() -> HashSet<Capability> {
    use Capability::*;
    [
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
    .into_iter()
    .collect()
}

/// The env with `PATH` and `HOME` filled in when the image and step set none.
pub fn step_env(env: &[String], home: &str) -> Vec<String> {
    let mut out = env.to_vec();
    if !out.iter().any(|v| v.starts_with("PATH=")) {
        out.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !out.iter().any(|v| v.starts_with("HOME=")) {
        out.push(format!("HOME={home}"));
    }
    out
}

/// Builds the spec.
pub fn generate(i: &SpecInput) -> Result<Spec, SpecError> {
    let caps = default_caps();
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .args(i.args.clone())
        .env(step_env(&i.env, &i.user.home))
        .cwd(if i.cwd.is_empty() { "/" } else { &i.cwd })
        .user(
            UserBuilder::default()
                .uid(i.user.uid)
                .gid(i.user.gid)
                .additional_gids(i.user.additional_gids.clone())
                .build()
                .map_err(e)?,
        )
        .no_new_privileges(false)
        .rlimits(Vec::new())
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()
                .map_err(e)?,
        )
        .build()
        .map_err(e)?;
    if let Some(p) = i.apparmor_profile.as_ref().filter(|p| !p.is_empty()) {
        process.set_apparmor_profile(Some(p.clone()));
    }

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
    ];
    if !i.rootless {
        mounts.push(mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?);
        mounts.push(mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["ro", "nosuid", "noexec", "nodev"],
        )?);
    }
    if !i.process_sandbox {
        // The host's /proc replaces a fresh one: the step shares the host PID namespace.
        mounts[0] = MountBuilder::default()
            .destination("/proc")
            .typ("bind")
            .source("/proc")
            .options(vec!["rbind".to_string()])
            .build()
            .map_err(e)?;
    }
    mounts.push(bind_ro("/etc/resolv.conf", &i.resolv_conf)?);
    mounts.push(bind_ro("/etc/hosts", &i.hosts)?);
    for m in &i.mounts {
        // A step's mount replaces a default one at the same place (`/dev/shm`).
        mounts.retain(|d| d.destination() != Path::new(m.target()));
        mounts.push(match m {
            StepMount::Bind {
                target,
                source,
                readonly,
            } => {
                let mut opts = vec!["rbind", "nosuid", "nodev"];
                if *readonly {
                    opts.push("ro");
                }
                MountBuilder::default()
                    .destination(target)
                    .typ("bind")
                    .source(source)
                    .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .build()
                    .map_err(e)?
            }
            StepMount::Tmpfs { target, size } => {
                let size = size.map(|s| format!("size={s}"));
                let mut opts = vec!["nosuid", "nodev", "mode=1777"];
                if let Some(s) = &size {
                    opts.push(s);
                }
                mount(target, "tmpfs", "tmpfs", &opts)?
            }
        });
    }

    let mut namespaces: Vec<LinuxNamespace> = Vec::new();
    let ns = |t: LinuxNamespaceType, path: Option<&Path>| -> Result<LinuxNamespace, SpecError> {
        let mut b = LinuxNamespaceBuilder::default().typ(t);
        if let Some(p) = path {
            b = b.path(p);
        }
        b.build().map_err(e)
    };
    if i.process_sandbox {
        namespaces.push(ns(LinuxNamespaceType::Pid, None)?);
    }
    namespaces.push(ns(LinuxNamespaceType::Ipc, None)?);
    namespaces.push(ns(LinuxNamespaceType::Uts, None)?);
    namespaces.push(ns(LinuxNamespaceType::Mount, None)?);
    match &i.network {
        Network::Host => {}
        Network::None => namespaces.push(ns(LinuxNamespaceType::Network, None)?),
        Network::Join(p) => namespaces.push(ns(LinuxNamespaceType::Network, Some(p))?),
    }

    let defaults = oci_spec::runtime::Linux::default();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .build()
        .map_err(e)?;
    if !i.process_sandbox {
        // Host /proc entries cannot be masked per step.
        let keep = |v: &Option<Vec<String>>| -> Vec<String> {
            v.clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| !p.starts_with("/proc"))
                .collect()
        };
        linux.set_masked_paths(Some(keep(linux.masked_paths())));
        linux.set_readonly_paths(Some(keep(linux.readonly_paths())));
    }
    if i.rootless {
        linux.set_resources(None);
        linux.set_cgroups_path(None);
    }

    let mut spec = Spec::default();
    spec.set_hostname(Some(i.hostname.clone()));
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path(&i.rootfs)
            .readonly(false)
            .build()
            .map_err(e)?,
    ));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    spec.set_annotations(None);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SpecInput {
        SpecInput {
            rootfs: "/r".into(),
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into()],
            cwd: "/work".into(),
            user: User {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10],
                home: "/home/u".into(),
            },
            hostname: "buildkitsandbox".into(),
            resolv_conf: "/x/resolv.conf".into(),
            hosts: "/x/hosts".into(),
            network: Network::Host,
            process_sandbox: true,
            apparmor_profile: None,
            rootless: false,
            mounts: Vec::new(),
        }
    }

    #[test]
    fn step_mounts_replace_defaults_at_their_target() {
        let mut i = input();
        i.mounts = vec![
            StepMount::Tmpfs {
                target: "/dev/shm".into(),
                size: Some(128 << 20),
            },
            StepMount::Bind {
                target: "/ctx".into(),
                source: "/host/ctx".into(),
                readonly: true,
            },
        ];
        let v = serde_json::to_value(generate(&i).unwrap()).unwrap();
        let ms = v["mounts"].as_array().unwrap();
        let at = |d: &str| -> Vec<&serde_json::Value> {
            ms.iter().filter(|m| m["destination"] == d).collect()
        };
        assert_eq!(at("/dev/shm").len(), 1);
        assert_eq!(at("/dev/shm")[0]["type"], "tmpfs");
        assert!(at("/dev/shm")[0]["options"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("size=134217728")));
        assert_eq!(at("/ctx")[0]["source"], "/host/ctx");
        assert!(at("/ctx")[0]["options"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("ro")));
    }

    #[test]
    fn spec_has_buildkits_shape() {
        let s = generate(&input()).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/etc/resolv.conf",
            "/etc/hosts",
        ] {
            assert!(dests.contains(&d), "{d} missing from {dests:?}");
        }
        assert!(!dests.contains(&"/run"));
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"pid") && !ns.contains(&"network"), "{ns:?}");
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["noNewPrivileges"], false);
        let env: Vec<&str> = v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert!(env.iter().any(|e| e.starts_with("PATH=")) && env.contains(&"HOME=/home/u"));
        assert_eq!(v["hostname"], "buildkitsandbox");

        let mut none = input();
        none.network = Network::None;
        none.rootless = true;
        none.process_sandbox = false;
        let v = serde_json::to_value(generate(&none).unwrap()).unwrap();
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"network") && !ns.contains(&"pid"), "{ns:?}");
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert!(!dests.contains(&"/sys"));
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p.as_str().unwrap().starts_with("/proc")));
    }
}
