//! Which open mode each inode is in. The kernel refuses (EIO to the opener) a passthrough
//! open of an inode that has files open through the page cache, and the reverse, and wants
//! one backing file per inode while it is in passthrough mode. So every open is counted here
//! under its mode, later opens of an inode follow the mode of the ones still open, and a
//! backing ID lives until the last passthrough open of its inode is released (the kernel
//! looks it up after our reply, so dropping it early would fail the open).
//!
//! The kernel drops its own count before it sends RELEASE, so this table can only lag
//! behind it towards "still open", which never leads to a refused open.

use fuser::BackingId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How a layer's files have been opened, for `stats`.
#[derive(Debug, Default)]
pub struct OpenCounters {
    /// The kernel agreed to passthrough at mount (and has not refused a backing file).
    pub passthrough: AtomicBool,
    /// Opens served by passthrough.
    pub passthrough_opens: AtomicU64,
    /// Opens of regular files served through FUSE reads.
    pub fuse_opens: AtomicU64,
}

/// A copy of [`OpenCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OpenSnapshot {
    /// Whether passthrough is in use.
    pub passthrough: bool,
    /// Opens served by passthrough.
    pub passthrough_opens: u64,
    /// Opens of regular files served through FUSE reads.
    pub fuse_opens: u64,
}

impl OpenCounters {
    /// The current values.
    pub fn snapshot(&self) -> OpenSnapshot {
        OpenSnapshot {
            passthrough: self.passthrough.load(Ordering::Relaxed),
            passthrough_opens: self.passthrough_opens.load(Ordering::Relaxed),
            fuse_opens: self.fuse_opens.load(Ordering::Relaxed),
        }
    }
}

/// File handle of an open served through the page cache.
pub const FH_CACHED: u64 = 1;
/// File handle of an open served by passthrough.
pub const FH_PASSTHROUGH: u64 = 2;

enum Mode {
    Cached(usize),
    Passthrough(Arc<BackingId>, usize),
}

/// What an open of an inode must be, given the opens still live.
pub enum Decision {
    /// Nothing open: either mode may be chosen.
    Free,
    /// Cached opens are live: this one is cached too.
    Cached,
    /// Passthrough opens are live: reuse their backing file.
    Passthrough(Arc<BackingId>),
}

/// Live opens per inode.
#[derive(Default)]
pub struct OpenModes {
    table: Mutex<HashMap<u64, Mode>>,
}

impl OpenModes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Mode>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The mode an open of `ino` must take now.
    pub fn decide(&self, ino: u64) -> Decision {
        match self.lock().get(&ino) {
            None => Decision::Free,
            Some(Mode::Cached(_)) => Decision::Cached,
            Some(Mode::Passthrough(b, _)) => Decision::Passthrough(b.clone()),
        }
    }

    /// Counts a cached open of `ino`. Fails (and counts nothing) if passthrough opens
    /// appeared meanwhile; returns their backing file then.
    pub fn open_cached(&self, ino: u64) -> Result<(), Arc<BackingId>> {
        let mut t = self.lock();
        match t.entry(ino).or_insert(Mode::Cached(0)) {
            Mode::Cached(n) => {
                *n += 1;
                Ok(())
            }
            Mode::Passthrough(b, _) => Err(b.clone()),
        }
    }

    /// Counts a passthrough open of `ino` with `backing`, or with the backing file another
    /// open registered meanwhile (returned). `Err` if cached opens appeared meanwhile.
    pub fn open_passthrough(
        &self,
        ino: u64,
        backing: Arc<BackingId>,
    ) -> Result<Arc<BackingId>, ()> {
        let mut t = self.lock();
        match t.entry(ino).or_insert(Mode::Passthrough(backing, 0)) {
            Mode::Passthrough(b, n) => {
                *n += 1;
                Ok(b.clone())
            }
            Mode::Cached(_) => Err(()),
        }
    }

    /// A RELEASE for an open of `ino` made with file handle `fh`.
    pub fn release(&self, ino: u64, fh: u64) {
        let mut t = self.lock();
        let gone = match t.get_mut(&ino) {
            Some(Mode::Cached(n)) if fh == FH_CACHED => {
                *n -= 1;
                *n == 0
            }
            Some(Mode::Passthrough(_, n)) if fh == FH_PASSTHROUGH => {
                *n -= 1;
                *n == 0
            }
            _ => false,
        };
        if gone {
            t.remove(&ino);
        }
    }
}
