//! The OCI 1.1 referrers index of each repository: subject digest → the descriptors of the
//! manifests that name it as `subject`. Answering `GET /v2/<name>/referrers/<digest>` from
//! it costs a map lookup, not a read of every manifest. It lives in memory, is kept up to
//! date by manifest PUT and DELETE, and remembers the digest of the `index.json` it matches:
//! when the file changed behind the server's back (a layout copied in, a restart) the
//! repository's entry is rebuilt from the manifests `index.json` lists, once.

use crate::digest::Digest;
use crate::oci::{referrer_of, ReferrerEntry};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Descriptors by subject, each subject's referrers ordered by digest.
type BySubject = HashMap<Digest, BTreeMap<Digest, serde_json::Value>>;

struct RepoIndex {
    /// Digest of the `index.json` bytes this state matches.
    built_from: Digest,
    by_subject: BySubject,
}

/// The referrers indexes of every repository served.
#[derive(Default)]
pub struct Referrers {
    repos: Mutex<HashMap<String, RepoIndex>>,
}

impl Referrers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, RepoIndex>> {
        self.repos.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The referrers of `subject` in `repo`, whose `index.json` currently hashes to
    /// `index_digest`; `rebuild` lists every manifest of the repository (digest, stored
    /// media type, bytes) and is only called when the index is unknown or stale. The caller
    /// holds the repository's lock.
    pub fn lookup(
        &self,
        repo: &str,
        index_digest: Digest,
        subject: &Digest,
        rebuild: impl FnOnce() -> Vec<(String, Vec<u8>)>,
    ) -> Vec<serde_json::Value> {
        let fresh = self
            .map()
            .get(repo)
            .is_some_and(|r| r.built_from == index_digest);
        if !fresh {
            let mut by_subject = BySubject::new();
            let mut n = 0usize;
            for (media_type, data) in rebuild() {
                if let Some(r) = referrer_of(&data, &media_type) {
                    insert(&mut by_subject, r);
                    n += 1;
                }
            }
            tracing::info!(repo, referrers = n, "referrers index rebuilt");
            self.map().insert(
                repo.to_string(),
                RepoIndex {
                    built_from: index_digest,
                    by_subject,
                },
            );
        }
        self.map()
            .get(repo)
            .and_then(|r| r.by_subject.get(subject))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Records a change to `repo` made while holding its lock: `index.json` went from
    /// `before` to `after`; `added` is a referrer now stored and `removed` a manifest digest
    /// no longer in the repository. An index that did not match `before` is dropped (it is
    /// rebuilt on the next lookup).
    pub fn changed(
        &self,
        repo: &str,
        before: Option<Digest>,
        after: Option<Digest>,
        added: Option<ReferrerEntry>,
        removed: Option<&Digest>,
    ) {
        let mut map = self.map();
        let current = map
            .get(repo)
            .is_some_and(|r| before.is_some_and(|b| b == r.built_from));
        let (true, Some(after)) = (current, after) else {
            map.remove(repo);
            return;
        };
        let Some(entry) = map.get_mut(repo) else {
            return;
        };
        entry.built_from = after;
        if let Some(r) = added {
            insert(&mut entry.by_subject, r);
        }
        if let Some(d) = removed {
            entry.by_subject.retain(|_, refs| {
                refs.remove(d);
                !refs.is_empty()
            });
        }
    }
}

fn insert(by_subject: &mut BySubject, r: ReferrerEntry) {
    let Some(d) = r
        .descriptor
        .get("digest")
        .and_then(|d| d.as_str())
        .and_then(|d| d.parse::<Digest>().ok())
    else {
        return;
    };
    by_subject
        .entry(r.subject)
        .or_default()
        .insert(d, r.descriptor);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{
        test_artifact as artifact, OCI_MANIFEST as MANIFEST, TEST_SUBJECT as SUBJECT,
    };

    #[test]
    fn kept_by_changes_and_rebuilt_when_stale() {
        let refs = Referrers::default();
        let subject: Digest = SUBJECT.parse().unwrap();
        let (i0, i1, i2) = (Digest::of(b"0"), Digest::of(b"1"), Digest::of(b"2"));
        let a = artifact("x/a");
        let mut rebuilt = 0;
        let got = refs.lookup("r", i0, &subject, || {
            rebuilt += 1;
            vec![]
        });
        assert!(got.is_empty());
        refs.changed("r", Some(i0), Some(i1), referrer_of(&a, MANIFEST), None);
        let got = refs.lookup("r", i1, &subject, || panic!("index is current"));
        assert_eq!(got.len(), 1);
        refs.changed("r", Some(i1), Some(i2), None, Some(&Digest::of(&a)));
        assert!(refs
            .lookup("r", i2, &subject, || panic!("index is current"))
            .is_empty());
        // Changed behind its back: rebuilt from what the store lists.
        let got = refs.lookup("r", i0, &subject, || {
            rebuilt += 1;
            vec![(MANIFEST.to_string(), a.clone())]
        });
        assert_eq!((got.len(), rebuilt), (1, 2));
        // A change on top of a stale state drops it.
        refs.changed("r", Some(i1), Some(i2), None, None);
        let got = refs.lookup("r", i2, &subject, || {
            rebuilt += 1;
            vec![]
        });
        assert_eq!((got.len(), rebuilt), (0, 3));
    }
}
