//! `stargaze mount` for tests: a rootfs mounted by the real binary with a private run dir and
//! cache, unmounted (and any leftovers detached) when the guard drops, even after a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted rootfs.
pub struct Mounted {
    /// The rootfs.
    pub dir: PathBuf,
    /// Private run dir (`STARGAZE_RUN_DIR`).
    pub run_dir: PathBuf,
    /// Private chunk cache.
    pub cache_dir: PathBuf,
    done: bool,
}

impl Mounted {
    /// Mounts `reference` at `work/rootfs` with extra flags; panics with the server log on failure.
    pub fn mount(reference: &str, work: &Path, extra: &[&str]) -> Mounted {
        let m = Mounted {
            dir: work.join("rootfs"),
            run_dir: work.join("run"),
            cache_dir: work.join("cache"),
            done: false,
        };
        let out = m
            .cmd()
            .arg("mount")
            .arg(reference)
            .arg(&m.dir)
            .arg("--cache-dir")
            .arg(&m.cache_dir)
            .args(extra)
            .output()
            .expect("running stargaze mount");
        assert!(
            out.status.success(),
            "stargaze mount failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        m
    }

    /// A stargaze command with this mount's run dir.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(crate::stargaze_bin());
        c.env("STARGAZE_RUN_DIR", &self.run_dir);
        c
    }

    /// `stargaze stats --json` parsed.
    pub fn stats(&self) -> serde_json::Value {
        let out = self
            .cmd()
            .arg("stats")
            .arg("--json")
            .arg(&self.dir)
            .output()
            .expect("stats");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// The serving process's PID from the state file.
    pub fn server_pid(&self) -> i32 {
        let mounts = self.run_dir.join("mounts");
        for e in std::fs::read_dir(mounts).expect("run dir").flatten() {
            if let Ok(data) = std::fs::read(e.path().join("state.json")) {
                let v: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
                if let Some(p) = v["pid"].as_i64() {
                    return p as i32;
                }
            }
        }
        panic!("no mount state under {}", self.run_dir.display());
    }

    /// Runs `stargaze umount`; returns its output.
    pub fn umount(mut self) -> std::process::Output {
        self.done = true;
        let out = self
            .cmd()
            .arg("umount")
            .arg(&self.dir)
            .output()
            .expect("umount");
        self.force_cleanup();
        out
    }

    fn force_cleanup(&self) {
        // Anything still mounted under the work dir is detached.
        let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let root = self
            .dir
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut points: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.cmd().arg("umount").arg(&self.dir).output();
            self.force_cleanup();
        }
    }
}

/// Lazily detaches every mount at or under `root`, deepest first (what a stopped daemon
/// may have left behind).
pub fn detach_under(root: &Path) {
    let root = root.to_string_lossy().into_owned();
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(p).status();
    }
}

/// Mounts a container-like `/dev` at `dev` (a directory inside a root about to be chrooted):
/// a private tmpfs with the device nodes runc creates (null, zero, full, random, urandom,
/// tty), the `fd`/`stdin`/`stdout`/`stderr` links and a tmpfs `shm`. Never a bind of the
/// host's `/dev`, so a recursive removal that meets it cannot reach the host's nodes.
pub fn container_dev(dev: &Path) {
    crate::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=755,size=65536k", "tmpfs"])
            .arg(dev),
    );
    for (name, minor) in [
        ("null", 3),
        ("zero", 5),
        ("full", 7),
        ("random", 8),
        ("urandom", 9),
    ] {
        crate::run(
            Command::new("mknod")
                .args(["-m", "666"])
                .arg(dev.join(name))
                .args(["c", "1", &minor.to_string()]),
        );
    }
    crate::run(
        Command::new("mknod")
            .args(["-m", "666"])
            .arg(dev.join("tty"))
            .args(["c", "5", "0"]),
    );
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(name));
    }
    let shm = dev.join("shm");
    let _ = std::fs::create_dir(&shm);
    crate::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=1777,size=65536k", "shm"])
            .arg(&shm),
    );
}

/// Detaches every mount at or under its path when dropped (even while panicking).
pub struct DetachOnDrop(pub PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        detach_under(&self.0);
    }
}

/// FUSE mounts under `root` now.
pub fn fuse_mounts_under(root: &Path) -> usize {
    let root = root.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&root) && l.contains(" - fuse"))
        .count()
}
