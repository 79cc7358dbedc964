//! The lock on a worker's state directory (`ROOT/runc-<snapshotter>/worker.lock`): shared
//! while building, so builds run side by side, exclusive while pruning, so GC never races a
//! build. Taken without waiting: a busy directory is an error that says who holds it.

use super::OpenError;
use std::os::fd::AsRawFd;
use std::path::Path;

/// How the state directory is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Builds: any number at once.
    Shared,
    /// GC on demand: nothing else at the same time.
    Exclusive,
}

/// A held lock; released when dropped (the descriptor closes).
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock on `dir` in `mode`, or fails at once when it is held in the other one.
    pub fn take(dir: &Path, mode: LockMode) -> Result<StateLock, OpenError> {
        let path = dir.join("worker.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| OpenError::Lock {
                path: path.clone(),
                source,
            })?;
        let op = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        } | libc::LOCK_NB;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            return Err(OpenError::Busy {
                dir: dir.to_path_buf(),
                building: mode == LockMode::Exclusive,
            });
        }
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_coexist_and_exclude_a_prune() {
        let dir = tempfile::tempdir().unwrap();
        let a = StateLock::take(dir.path(), LockMode::Shared).unwrap();
        let b = StateLock::take(dir.path(), LockMode::Shared).unwrap();
        let e = StateLock::take(dir.path(), LockMode::Exclusive).unwrap_err();
        assert!(e.to_string().contains("a build is running"), "{e}");
        drop((a, b));
        let x = StateLock::take(dir.path(), LockMode::Exclusive).unwrap();
        let e = StateLock::take(dir.path(), LockMode::Shared).unwrap_err();
        assert!(e.to_string().contains("a prune is running"), "{e}");
        drop(x);
        StateLock::take(dir.path(), LockMode::Shared).unwrap();
    }
}
