//! A snapshotter on local directories: the metadata store says what exists, a [`Driver`]
//! says how a snapshot's directories are made and mounted (copies, overlayfs, fuse-overlayfs).
//! Layout under the root: `metadata.db` and `snapshots/<id>/` (`fs`, plus `work` for overlays).
//!
//! Order of effects, so a crash anywhere leaves the store consistent: prepare makes the
//! directories inside the write transaction and commits last (a crash leaves at most an
//! unrecorded directory, which [`Snapshotter::cleanup`] removes); remove commits first and
//! deletes the directory after (the same).

use super::filter::AnyOf;
use super::store::{now_ns, Record, Store};
use super::usage::disk_usage;
use super::{
    io, validate_key, validate_labels, Info, Kind, Labels, Mount, Result, SnapshotError,
    Snapshotter, Usage,
};
use std::path::{Path, PathBuf};

/// How one backend lays out and mounts snapshot directories.
pub trait Driver: Send + Sync {
    /// The backend's name.
    fn name(&self) -> &str;
    /// Makes the directories of a new snapshot at `dir`; `parents` are the directories of
    /// its committed ancestors, nearest first.
    fn create(&self, dir: &Path, parents: &[PathBuf], kind: Kind) -> Result<()>;
    /// The mounts of an active snapshot or a view at `dir`.
    fn mounts(&self, dir: &Path, parents: &[PathBuf], kind: Kind) -> Vec<Mount>;
    /// Lets go of what the backend holds in `dir` (e.g. a lazy layer's FUSE mount) before
    /// the directory is deleted.
    fn release(&self, _dir: &Path) {}
}

/// A snapshotter over a store and a driver.
pub struct LocalSnapshotter<D: Driver> {
    root: PathBuf,
    store: Store,
    driver: D,
}

fn not_found(what: &str) -> SnapshotError {
    SnapshotError::NotFound(format!("snapshot {what:?}"))
}

impl<D: Driver> LocalSnapshotter<D> {
    /// Opens (or creates) a snapshotter rooted at `root`.
    pub fn open(root: &Path, driver: D) -> Result<Self> {
        stargaze_fs::sys::private_dir(&root.join("snapshots"))
            .and_then(|()| stargaze_fs::sys::private_dir(root))
            .map_err(io(format!("creating {}", root.display())))?;
        let store = Store::open(&root.join("metadata.db"))?;
        Ok(LocalSnapshotter {
            root: root.to_path_buf(),
            store,
            driver,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// The metadata store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Directory of snapshot id `id`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// Directories of `parent` and its ancestors, nearest first.
    fn chain(
        &self,
        get: &dyn Fn(&str) -> Result<Option<Record>>,
        parent: &str,
    ) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut next = parent.to_string();
        while !next.is_empty() {
            let r = get(&next)?.ok_or_else(|| not_found(&next))?;
            out.push(self.dir(r.id));
            if out.len() > 10_000 {
                return Err(SnapshotError::Store(format!(
                    "parent chain of {parent:?} loops"
                )));
            }
            next = r.parent;
        }
        Ok(out)
    }

    fn create(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create_with(kind, key, parent, labels, &|dir, chain| {
            self.driver.create(dir, chain, kind)
        })
    }

    /// A committed snapshot `name` over `parent` whose directory `fill` makes (a remote
    /// snapshotter mounts a lazy layer there): the record lands only if `fill` succeeds.
    pub fn create_committed(
        &self,
        name: &str,
        parent: &str,
        labels: Labels,
        fill: &dyn Fn(&Path, &[PathBuf]) -> Result<()>,
    ) -> Result<()> {
        self.create_with(Kind::Committed, name, parent, labels, fill)
            .map(|_| ())
    }

    /// Every committed snapshot carrying label `key`, with its directory.
    pub fn with_label(&self, key: &str) -> Result<Vec<(String, Record, PathBuf)>> {
        Ok(self
            .store
            .all()?
            .into_iter()
            .filter(|(_, r)| r.labels.contains_key(key))
            .map(|(k, r)| {
                let dir = self.dir(r.id);
                (k, r, dir)
            })
            .collect())
    }

    /// Directories of `key`'s committed ancestors and itself, nearest first.
    pub fn chain_of(&self, key: &str) -> Result<Vec<PathBuf>> {
        self.chain(&|k| self.store.get(k), key)
    }

    fn create_with(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: Labels,
        fill: &dyn Fn(&Path, &[PathBuf]) -> Result<()>,
    ) -> Result<Vec<Mount>> {
        validate_key(key)?;
        if !parent.is_empty() {
            validate_key(parent)?;
        }
        validate_labels(&labels)?;
        let mut tx = self.store.write()?;
        if tx.get(key)?.is_some() {
            return Err(SnapshotError::AlreadyExists(format!("snapshot {key:?}")));
        }
        if !parent.is_empty() {
            let p = tx
                .get(parent)?
                .ok_or_else(|| SnapshotError::NotFound(format!("parent snapshot {parent:?}")))?;
            if p.kind != Kind::Committed {
                return Err(SnapshotError::InvalidArgument(format!(
                    "parent {parent:?} is not a committed snapshot"
                )));
            }
        }
        let chain = self.chain(&|k| tx.get(k), parent)?;
        let id = tx.next_id()?;
        let dir = self.dir(id);
        // A crash after an earlier attempt made this directory but before its commit
        // handed the same id out again.
        if dir.exists() {
            self.driver.release(&dir);
            std::fs::remove_dir_all(&dir).map_err(io(format!("clearing {}", dir.display())))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let made = fill(&dir, &chain).and_then(|()| {
            let now = now_ns();
            tx.put(
                key,
                &Record {
                    id,
                    kind,
                    parent: parent.to_string(),
                    labels,
                    created_ns: now,
                    updated_ns: now,
                    size: 0,
                    inodes: 0,
                },
            )?;
            tx.commit()
        });
        if let Err(e) = made {
            self.driver.release(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        tracing::debug!(
            backend = self.driver.name(),
            key,
            parent,
            id,
            kind = kind.as_str(),
            "snapshot created"
        );
        Ok(self.driver.mounts(&dir, &chain, kind))
    }

    fn record(&self, key: &str) -> Result<Record> {
        validate_key(key)?;
        self.store.get(key)?.ok_or_else(|| not_found(key))
    }
}

impl<D: Driver> Snapshotter for LocalSnapshotter<D> {
    fn name(&self) -> &str {
        self.driver.name()
    }

    fn stat(&self, key: &str) -> Result<Info> {
        Ok(self.record(key)?.info(key))
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        validate_key(&info.name)?;
        validate_labels(&info.labels)?;
        let mut tx = self.store.write()?;
        let mut r = tx.get(&info.name)?.ok_or_else(|| not_found(&info.name))?;
        if fieldpaths.is_empty() {
            r.labels = info.labels.clone();
        }
        for f in fieldpaths {
            if f == "labels" {
                r.labels = info.labels.clone();
            } else if let Some(k) = f.strip_prefix("labels.") {
                match info.labels.get(k) {
                    Some(v) => {
                        r.labels.insert(k.to_string(), v.clone());
                    }
                    None => {
                        r.labels.remove(k);
                    }
                }
            } else {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot update field {f:?} of snapshot {:?} (only labels)",
                    info.name
                )));
            }
        }
        validate_labels(&r.labels)?;
        r.updated_ns = now_ns();
        tx.put(&info.name, &r)?;
        tx.commit()?;
        Ok(r.info(&info.name))
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let r = self.record(key)?;
        match r.kind {
            Kind::Committed => Ok(r.usage()),
            _ => disk_usage(&self.dir(r.id).join("fs")),
        }
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let r = self.record(key)?;
        if r.kind == Kind::Committed {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is committed; only active snapshots and views have mounts"
            )));
        }
        let chain = self.chain(&|k| self.store.get(k), &r.parent)?;
        Ok(self.driver.mounts(&self.dir(r.id), &chain, r.kind))
    }

    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        validate_key(name)?;
        validate_key(key)?;
        validate_labels(&labels)?;
        let mut tx = self.store.write()?;
        let r = tx.get(key)?.ok_or_else(|| not_found(key))?;
        if r.kind != Kind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is a {}, only active snapshots commit",
                r.kind.as_str()
            )));
        }
        if tx.get(name)?.is_some() {
            return Err(SnapshotError::AlreadyExists(format!("snapshot {name:?}")));
        }
        let usage = disk_usage(&self.dir(r.id).join("fs"))?;
        tx.delete(key)?;
        let now = now_ns();
        tx.put(
            name,
            &Record {
                id: r.id,
                kind: Kind::Committed,
                parent: r.parent,
                labels,
                created_ns: now,
                updated_ns: now,
                size: usage.size,
                inodes: usage.inodes,
            },
        )?;
        tx.commit()
    }

    fn remove(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        let mut tx = self.store.write()?;
        let r = tx.get(key)?.ok_or_else(|| not_found(key))?;
        if tx.has_children(key)? {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} has children; remove them first"
            )));
        }
        tx.delete(key)?;
        tx.commit()?;
        let dir = self.dir(r.id);
        self.driver.release(&dir);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "removed snapshot's directory stays until cleanup");
            }
        }
        Ok(())
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        let filter = AnyOf::parse(filters)?;
        for (k, r) in self.store.all()? {
            let info = r.info(&k);
            if filter.matches(&info) {
                f(&info)?;
            }
        }
        Ok(())
    }

    fn cleanup(&self) -> Result<()> {
        let known: std::collections::HashSet<u64> =
            self.store.all()?.into_iter().map(|(_, r)| r.id).collect();
        let dir = self.root.join("snapshots");
        for e in std::fs::read_dir(&dir).map_err(io(format!("listing {}", dir.display())))? {
            let e = e.map_err(io(format!("listing {}", dir.display())))?;
            let owned = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|id| known.contains(&id));
            if !owned {
                self.driver.release(&e.path());
                if stargaze_fs::sys::is_mount_point(&e.path().join("fs")) {
                    tracing::warn!(dir = %e.path().display(), "a directory no snapshot owns is still mounted; left alone");
                    continue;
                }
                tracing::info!(dir = %e.path().display(), "removing a directory no snapshot owns");
                std::fs::remove_dir_all(e.path())
                    .map_err(io(format!("removing {}", e.path().display())))?;
            }
        }
        Ok(())
    }
}
