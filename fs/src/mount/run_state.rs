//! The run state of a served image mount (`stargaze mount` / `umount` / `stats`): a private
//! directory per target under the run dir (`$STARGAZE_RUN_DIR`, default `/run/stargaze`),
//! named by a digest of the canonical target path, holding the serving process's record
//! (`state.json`: PID, image, layer mount points), `stats.json` (rewritten while it serves),
//! a `ready` marker and the server's log. Keeping this in the library lets any front end find,
//! report on and tear down a mount another process serves, including one whose server died.

use super::LayerStats;
use crate::small_file::{read_small_file, SmallFileError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest `state.json` / `stats.json` read back (they are ours, but live in a shared dir).
const MAX_STATE_FILE: u64 = 16 << 20;

/// Why the run state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RunStateError {
    /// A state file could not be read (or is too large).
    #[error(transparent)]
    Read(#[from] SmallFileError),
    /// A state file or directory could not be written or created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A state file is not what this version writes.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RunStateError + '_ {
    move |source| RunStateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The runtime directory holding mount states (and FUSE holder sockets whose snapshotter
/// root is too long to hold them): `$STARGAZE_RUN_DIR`, default `/run/stargaze`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("STARGAZE_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/stargaze"))
}

/// What the serving process records about its mount.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MountRecord {
    /// The rootfs (canonical path).
    pub target: PathBuf,
    /// The image reference mounted.
    pub reference: String,
    /// The manifest digest mounted.
    pub manifest: String,
    /// The serving process.
    pub pid: i32,
    /// Each layer's mount point or unpacked directory.
    pub layers: Vec<PathBuf>,
}

/// The figures a served mount reports (`stats.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StatsFile {
    /// The image reference mounted.
    pub reference: String,
    /// Seconds since the mount was requested.
    pub elapsed_secs: f64,
    /// Each layer's [`LayerStats`], as JSON (read back by older or newer versions alike).
    pub layers: Vec<serde_json::Value>,
}

impl StatsFile {
    /// The figures of `layers` for the mount of `reference` requested at `start`.
    pub fn of(reference: &str, start: Instant, layers: &[LayerStats]) -> StatsFile {
        StatsFile {
            reference: reference.to_string(),
            elapsed_secs: start.elapsed().as_secs_f64(),
            layers: layers
                .iter()
                .map(|l| serde_json::to_value(l).unwrap_or_default())
                .collect(),
        }
    }
}

/// The run-state directory of the mount at one target.
#[derive(Debug, Clone)]
pub struct MountState {
    dir: PathBuf,
}

impl MountState {
    /// The state of the mount at `target` (a canonical path), under [`run_dir`].
    pub fn for_target(target: &Path) -> MountState {
        let key = crate::Digest::of(target.as_os_str().as_encoded_bytes()).hex();
        MountState {
            dir: run_dir().join("mounts").join(&key[..16]),
        }
    }

    /// The directory itself (the mount's layer mount points go below it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The serving process's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Creates the run dir, its `mounts/` and this state dir, each private (0700): they hold
    /// the layer mount points, whose FUSE file systems other users could otherwise walk into.
    pub fn create_private(&self) -> Result<(), RunStateError> {
        let run = run_dir();
        for d in [run.as_path(), &run.join("mounts"), &self.dir] {
            crate::sys::private_dir(d).map_err(io_at(d))?;
        }
        Ok(())
    }

    /// The serving process's record, if there is a readable one.
    pub fn record(&self) -> Result<MountRecord, RunStateError> {
        self.read_json(&self.dir.join("state.json"))
    }

    /// Writes the serving process's record.
    pub fn write_record(&self, r: &MountRecord) -> Result<(), RunStateError> {
        self.write_json(&self.dir.join("state.json"), r)
    }

    /// The last figures the server wrote.
    pub fn stats(&self) -> Result<StatsFile, RunStateError> {
        self.read_json(&self.dir.join("stats.json"))
    }

    /// The last figures the server wrote, as stored.
    pub fn stats_raw(&self) -> Result<Vec<u8>, RunStateError> {
        let p = self.dir.join("stats.json");
        Ok(read_small_file(&p, MAX_STATE_FILE)?)
    }

    /// Replaces the figures (atomically: readers see the old or the new file).
    pub fn write_stats(&self, s: &StatsFile) -> Result<(), RunStateError> {
        self.write_json(&self.dir.join("stats.json"), s)
    }

    /// Marks the mount ready (what a starting `mount` waits for).
    pub fn mark_ready(&self) -> Result<(), RunStateError> {
        let p = self.dir.join("ready");
        std::fs::write(&p, b"ok").map_err(io_at(&p))
    }

    /// Whether the server marked the mount ready.
    pub fn is_ready(&self) -> bool {
        self.dir.join("ready").exists()
    }

    /// Whether anything of a state is left.
    pub fn exists(&self) -> bool {
        self.dir.exists()
    }

    /// After a clean unmount: everything but `stats.json` (kept for a last `umount`
    /// report) and the log goes.
    pub fn remove_served_parts(&self) {
        for sub in ["l", "upper", "work", "empty", "state.json", "ready"] {
            let p = self.dir.join(sub);
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }

    /// Detaches whatever a dead or hung server left behind at `target` (the overlay, then
    /// each layer mount point the record names or `l/` holds) and removes the state.
    pub fn clean_up(&self, record: Option<&MountRecord>, target: &Path) {
        if crate::sys::is_mount_point(target) {
            let _ = crate::sys::unmount(target, true);
        }
        let mut layer_dirs: Vec<PathBuf> = record.map(|s| s.layers.clone()).unwrap_or_default();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("l")) {
            layer_dirs.extend(rd.flatten().map(|e| e.path()));
        }
        for d in layer_dirs {
            if crate::sys::is_mount_point(&d) {
                let _ = crate::sys::unmount(&d, true);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, p: &Path) -> Result<T, RunStateError> {
        let data = read_small_file(p, MAX_STATE_FILE)?;
        serde_json::from_slice(&data).map_err(|source| RunStateError::Json {
            path: p.to_path_buf(),
            source,
        })
    }

    fn write_json<T: serde::Serialize>(&self, p: &Path, v: &T) -> Result<(), RunStateError> {
        let data = serde_json::to_vec_pretty(v).map_err(|source| RunStateError::Json {
            path: p.to_path_buf(),
            source,
        })?;
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, data).map_err(io_at(&tmp))?;
        std::fs::rename(&tmp, p).map_err(io_at(p))
    }
}

/// Whether process `pid` exists.
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Asks the serving process `pid` to stop (SIGTERM) and waits up to `grace`; a server still
/// there then is killed. Returns whether it had to be killed.
pub fn stop_server(pid: i32, grace: Duration) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    // SAFETY: SIGTERM to a server PID recorded in our own state file.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while pid_alive(pid) && Instant::now() < deadline {
        // Reap it if it is our child (it is not, normally; harmless otherwise).
        // SAFETY: waitpid with WNOHANG on a specific pid.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !pid_alive(pid) {
        return false;
    }
    tracing::warn!(pid, "the mount server did not stop; killing it");
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dirs_are_named_by_the_target_and_records_read_back() {
        let a = MountState::for_target(Path::new("/mnt/a"));
        let b = MountState::for_target(Path::new("/mnt/b"));
        assert_ne!(a.dir(), b.dir());
        assert_eq!(a.dir(), MountState::for_target(Path::new("/mnt/a")).dir());
        let tmp = tempfile::tempdir().unwrap();
        let s = MountState {
            dir: tmp.path().join("s"),
        };
        std::fs::create_dir(s.dir()).unwrap();
        assert!(s.record().is_err());
        let r = MountRecord {
            target: "/mnt/a".into(),
            reference: "localhost:5000/x:1".into(),
            manifest: "sha256:00".into(),
            pid: 7,
            layers: vec!["/run/l/0".into()],
        };
        s.write_record(&r).unwrap();
        let back = s.record().unwrap();
        assert_eq!((back.pid, back.layers), (7, r.layers.clone()));
        std::fs::write(s.dir().join("state.json"), b"{not json").unwrap();
        assert!(matches!(s.record(), Err(RunStateError::Json { .. })));
        assert!(!s.is_ready());
        s.mark_ready().unwrap();
        assert!(s.is_ready());
        s.remove_served_parts();
        assert!(!s.is_ready() && s.exists());
    }

    #[test]
    fn a_process_that_is_gone_is_not_stopped_again() {
        assert!(!pid_alive(0) && !pid_alive(-1));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!stop_server(pid, Duration::from_millis(10)));
    }
}
