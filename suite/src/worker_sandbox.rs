//! The integration sandbox of the OCI worker, after BuildKit's: each worker test runs once
//! per available variant — `oci` (root, the auto-chosen snapshotter) always,
//! `oci-snapshotter-NAME` when `STARGAZE_INTEGRATION_SNAPSHOTTER=NAME`, `oci-rootless` when
//! `STARGAZE_INTEGRATION_ROOTLESS_IDPAIR=uid:gid` is set and rootlesskit works for that
//! user — each in a fresh worker root, skipping a variant with a printed reason when its
//! binary or privileges are missing. A sandbox fails its test if anything under its root
//! is still mounted when it ends ("leaked mountpoint"), and detaches it either way. A test
//! either runs `stargaze build` in process (`build`) or starts the variant's daemon as
//! BuildKit's OCI backend starts buildkitd (`daemon`) and builds through it with the
//! project's buildctl-like client (`build_on`: `stargaze build --addr`).

use crate::buildkit_client::{buildkitd_on_path, sandbox_args, Buildkitd};
use crate::{have, is_root, stargaze_bin};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One worker variant.
#[derive(Debug, Clone)]
pub struct Variant {
    /// `oci`, `oci-rootless`, `oci-snapshotter-NAME`.
    pub name: String,
    /// `--oci-worker-snapshotter` value (none: auto).
    pub snapshotter: Option<String>,
    /// uid:gid to run as, for rootless.
    pub rootless: Option<(u32, u32)>,
}

impl Variant {
    /// A root variant with snapshotter `snapshotter` (tests that need one in particular).
    pub fn with_snapshotter(name: &str, snapshotter: Option<&str>) -> Variant {
        Variant {
            name: name.into(),
            snapshotter: snapshotter.map(str::to_string),
            rootless: None,
        }
    }
}

/// The variants available here; unavailable ones are printed with why.
pub fn variants() -> Vec<Variant> {
    let mut out = Vec::new();
    if !is_root() {
        eprintln!("variant oci skipped: requires root");
    } else if !have("runc") {
        eprintln!("variant oci skipped: failed to lookup runc binary");
    } else {
        out.push(Variant {
            name: "oci".into(),
            snapshotter: None,
            rootless: None,
        });
    }
    if let Ok(pair) = std::env::var("STARGAZE_INTEGRATION_ROOTLESS_IDPAIR") {
        let parsed = pair
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)));
        match parsed {
            None => panic!("STARGAZE_INTEGRATION_ROOTLESS_IDPAIR={pair:?}: expected uid:gid"),
            Some((_, 0)) => eprintln!("variant oci-rootless skipped: gid must not be 0"),
            Some((uid, gid)) if rootless_supported(uid) => out.push(Variant {
                name: "oci-rootless".into(),
                snapshotter: None,
                rootless: Some((uid, gid)),
            }),
            Some((uid, _)) => eprintln!(
                "variant oci-rootless skipped: `sudo -u #{uid} -i -- exec rootlesskit true` does not work here"
            ),
        }
    }
    if let Ok(name) = std::env::var("STARGAZE_INTEGRATION_SNAPSHOTTER") {
        if is_root() && have("runc") {
            out.push(Variant {
                name: format!("oci-snapshotter-{name}"),
                snapshotter: Some(name),
                rootless: None,
            });
        } else {
            eprintln!("variant oci-snapshotter-{name} skipped: requires root and runc");
        }
    }
    out
}

fn rootless_supported(uid: u32) -> bool {
    have("sudo")
        && have("rootlesskit")
        && Command::new("sudo")
            .args([
                "-u",
                &format!("#{uid}"),
                "-i",
                "--",
                "exec",
                "rootlesskit",
                "true",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// One fresh worker.
pub struct Sandbox {
    /// The variant.
    pub variant: Variant,
    /// Scratch directory; the worker root is `root()`.
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// A fresh sandbox for `variant`.
    pub fn new(variant: &Variant) -> Sandbox {
        Sandbox {
            variant: variant.clone(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The worker root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `stargaze ARGS… --root ROOT [--oci-worker-snapshotter X]`, as the variant's user.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.push("--root".into());
        all.push(self.root().display().to_string());
        if let Some(s) = &self.variant.snapshotter {
            if !args
                .iter()
                .any(|a| a.starts_with("--oci-worker-snapshotter"))
            {
                all.push(format!("--oci-worker-snapshotter={s}"));
            }
        }
        if let Some((uid, _)) = self.variant.rootless {
            self.give_to_user();
            if args.first() != Some(&"worker") || args.get(1) != Some(&"info") {
                all.push("--oci-worker-rootless".into());
            }
            let mut c = Command::new("sudo");
            c.args(["-u", &format!("#{uid}"), "-i", "--", "exec", "rootlesskit"])
                .arg(stargaze_bin())
                .args(&all);
            return c;
        }
        let mut c = Command::new(stargaze_bin());
        c.args(&all);
        c
    }

    /// For rootless: what the test put in the sandbox becomes the variant's user's; a
    /// worker root (`root`, a daemon's `bk-*/root`) stays the worker's own (its files carry
    /// the image's ownership, mapped).
    fn give_to_user(&self) {
        let Some((uid, gid)) = self.variant.rootless else {
            return;
        };
        let owner = format!("{uid}:{gid}");
        let chown = |p: &Path, recursive: bool| {
            let mut c = Command::new("chown");
            if recursive {
                c.arg("-R");
            }
            crate::run(c.arg(&owner).arg(p));
        };
        chown(self.dir.path(), false);
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let name = e.file_name();
            if name == "root" {
                continue;
            }
            if name.to_string_lossy().starts_with("bk-") {
                chown(&e.path(), false);
                for inner in std::fs::read_dir(e.path()).unwrap().flatten() {
                    if inner.file_name() != "root" {
                        chown(&inner.path(), true);
                    }
                }
                continue;
            }
            chown(&e.path(), true);
        }
    }

    /// Starts `buildkitd` for this variant exactly as BuildKit's OCI backend starts it
    /// (`--oci-worker=true --containerd-worker=false --oci-worker-gc=false
    /// --oci-worker-labels=org.mobyproject.buildkit.worker.sandbox=true
    /// [--oci-worker-snapshotter=X]`, `--root`, `--addr`, `extra`), rootless through
    /// `sudo -u #UID -i -- exec rootlesskit buildkitd …`, with
    /// `BUILDKIT_DEBUG_FORCE_OVERLAY_DIFF=true` unless the snapshotter is native; waits for
    /// its socket. `buildkitd` is a symlink to the stargaze binary. Stopped by PID on drop.
    pub fn daemon(&self, extra: &[&str]) -> Buildkitd {
        let dir = tempfile::Builder::new()
            .prefix("bk-")
            .tempdir_in(self.dir.path())
            .expect("daemon dir");
        let root = dir.path().join("root");
        let socket = dir.path().join("buildkitd.sock");
        let mut flags: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(s) = &self.variant.snapshotter {
            flags.push(format!("--oci-worker-snapshotter={s}"));
        }
        let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        let args = sandbox_args(&root, &socket, &flag_refs);
        let bin = buildkitd_on_path(dir.path());
        let mut cmd = match self.variant.rootless {
            Some((uid, _)) => {
                self.give_to_user();
                let mut c = Command::new("sudo");
                c.args(["-u", &format!("#{uid}"), "-i", "--", "exec", "rootlesskit"])
                    .arg(bin.join("buildkitd"));
                c
            }
            None => Command::new(bin.join("buildkitd")),
        };
        cmd.args(&args).env_remove("STARGAZE_LOG");
        if self.variant.snapshotter.as_deref() != Some("native") {
            cmd.env("BUILDKIT_DEBUG_FORCE_OVERLAY_DIFF", "true");
        }
        Buildkitd::spawn_command(dir, root, socket, cmd)
    }

    /// Runs `stargaze build --addr` against `daemon` with `args`, as the variant's user
    /// (a rootless daemon lets in only its own user); returns its output.
    pub fn build_on(&self, daemon: &Buildkitd, args: &[&str]) -> Output {
        let mut c = match self.variant.rootless {
            Some((uid, _)) => {
                self.give_to_user();
                let mut c = Command::new("sudo");
                c.args(["-u", &format!("#{uid}"), "--"]).arg(stargaze_bin());
                c
            }
            None => Command::new(stargaze_bin()),
        };
        c.arg("build")
            .args(args)
            .args(["--addr", &daemon.addr()])
            .output()
            .unwrap()
    }

    /// Runs `stargaze build` with `args`; returns its output.
    pub fn build(&self, args: &[&str]) -> Output {
        let mut a = vec!["build"];
        a.extend_from_slice(args);
        self.cmd(&a).output().unwrap()
    }

    /// Mount points under the sandbox now.
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(self.dir.path())
    }
}

/// Mount points under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&d))
        .collect()
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let leaked = self.mounts();
        crate::mounts::detach_under(self.dir.path());
        if !leaked.is_empty() && !std::thread::panicking() {
            panic!(
                "variant {}: leaked mountpoints: {leaked:?}",
                self.variant.name
            );
        }
    }
}

/// Runs `test` in a fresh sandbox of every variant, naming the variant on failure.
pub fn run(test_name: &str, test: impl Fn(&Sandbox)) {
    let vs = variants();
    if vs.is_empty() {
        assert!(
            !crate::in_ci(),
            "{test_name}: no worker variant available under CI"
        );
        eprintln!("SKIPPED {test_name}: no worker variant available");
    }
    for v in &vs {
        eprintln!("=== {test_name}/worker={}", v.name);
        let sb = Sandbox::new(v);
        test(&sb);
    }
}

/// Text of an output, both streams.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
