//! The metadata store: one redb file per snapshotter root. redb is embedded, pure Rust and
//! transactional with copy-on-write pages and a checksummed commit, so a `kill -9` at any
//! point leaves either the old or the new state — never half of a prepare, commit or remove
//! (bolt plays this part in containerd; sled is unmaintained, SQLite would add C). One
//! process owns the file at a time (redb locks it).
//!
//! Tables: `snapshots` (key → record as JSON), `children` ((parent, child) → ()) so that
//! "has children" is one range scan, and `meta` (the id counter).

use super::{Info, Kind, Labels, SnapshotError, Usage};
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: TableDefinition<(&str, &str), ()> = TableDefinition::new("children");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";

/// One snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Directory id (`snapshots/<id>`); a commit keeps the active snapshot's id.
    pub id: u64,
    /// Kind.
    pub kind: Kind,
    /// Committed parent, or empty.
    pub parent: String,
    /// Labels.
    pub labels: Labels,
    /// Creation time, nanoseconds since the epoch.
    pub created_ns: u128,
    /// Last change, nanoseconds since the epoch.
    pub updated_ns: u128,
    /// Usage, fixed at commit.
    pub size: i64,
    /// Inodes, fixed at commit.
    pub inodes: i64,
}

impl Record {
    /// As containerd's `Info` under `name`.
    pub fn info(&self, name: &str) -> Info {
        let t = |ns: u128| UNIX_EPOCH + Duration::from_nanos(ns.min(u64::MAX as u128) as u64);
        Info {
            name: name.to_string(),
            parent: self.parent.clone(),
            kind: self.kind,
            labels: self.labels.clone(),
            created: t(self.created_ns),
            updated: t(self.updated_ns),
        }
    }

    /// Its usage when committed.
    pub fn usage(&self) -> Usage {
        Usage {
            size: self.size,
            inodes: self.inodes,
        }
    }
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn db_err(e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Store(e.to_string())
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, SnapshotError> {
    serde_json::from_slice(bytes).map_err(|e| SnapshotError::Store(format!("record {key:?}: {e}")))
}

fn encode(r: &Record) -> Result<Vec<u8>, SnapshotError> {
    serde_json::to_vec(r).map_err(db_err)
}

/// The store.
pub struct Store {
    db: Database,
}

/// A write transaction: everything in it lands together at [`Txn::commit`], or not at all.
pub struct Txn {
    tx: redb::WriteTransaction,
}

impl Store {
    /// Opens (or creates) the store file.
    pub fn open(path: &Path) -> Result<Store, SnapshotError> {
        let db = Database::create(path)
            .map_err(|e| SnapshotError::Store(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            tx.open_table(SNAPSHOTS).map_err(db_err)?;
            tx.open_table(CHILDREN).map_err(db_err)?;
            tx.open_table(META).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Store { db })
    }

    /// Starts a write transaction (writers take turns).
    pub fn write(&self) -> Result<Txn, SnapshotError> {
        Ok(Txn {
            tx: self.db.begin_write().map_err(db_err)?,
        })
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Record>, SnapshotError> {
        let rx = self.db.begin_read().map_err(db_err)?;
        let t = rx.open_table(SNAPSHOTS).map_err(db_err)?;
        match t.get(key).map_err(db_err)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every snapshot, by key.
    pub fn all(&self) -> Result<Vec<(String, Record)>, SnapshotError> {
        let rx = self.db.begin_read().map_err(db_err)?;
        let t = rx.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }
}

impl Txn {
    /// The record of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Record>, SnapshotError> {
        let t = self.tx.open_table(SNAPSHOTS).map_err(db_err)?;
        let got = t.get(key).map_err(db_err)?;
        match got {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    /// A fresh directory id.
    pub fn next_id(&mut self) -> Result<u64, SnapshotError> {
        let mut t = self.tx.open_table(META).map_err(db_err)?;
        let id = t.get(NEXT_ID).map_err(db_err)?.map_or(1, |v| v.value());
        t.insert(NEXT_ID, id + 1).map_err(db_err)?;
        Ok(id)
    }

    /// Writes `key`'s record (and its parent link).
    pub fn put(&mut self, key: &str, r: &Record) -> Result<(), SnapshotError> {
        let bytes = encode(r)?;
        self.tx
            .open_table(SNAPSHOTS)
            .map_err(db_err)?
            .insert(key, bytes.as_slice())
            .map_err(db_err)?;
        if !r.parent.is_empty() {
            self.tx
                .open_table(CHILDREN)
                .map_err(db_err)?
                .insert((r.parent.as_str(), key), ())
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Deletes `key`'s record (and its parent link).
    pub fn delete(&mut self, key: &str) -> Result<Option<Record>, SnapshotError> {
        let old = self.get(key)?;
        self.tx
            .open_table(SNAPSHOTS)
            .map_err(db_err)?
            .remove(key)
            .map_err(db_err)?;
        if let Some(r) = &old {
            if !r.parent.is_empty() {
                self.tx
                    .open_table(CHILDREN)
                    .map_err(db_err)?
                    .remove((r.parent.as_str(), key))
                    .map_err(db_err)?;
            }
        }
        Ok(old)
    }

    /// Whether `key` is the parent of any snapshot.
    pub fn has_children(&self, key: &str) -> Result<bool, SnapshotError> {
        let t = self.tx.open_table(CHILDREN).map_err(db_err)?;
        let mut range = t.range((key, "")..).map_err(db_err)?;
        let first = match range.next() {
            Some(item) => {
                let (k, _) = item.map_err(db_err)?;
                k.value().0 == key
            }
            None => false,
        };
        Ok(first)
    }

    /// Makes it all durable.
    pub fn commit(self) -> Result<(), SnapshotError> {
        self.tx.commit().map_err(db_err)
    }
}
