//! What a registry repository was seen to hold during this publish: the
//! manifests and configs the known-layer lookup fetched, the layers those
//! manifests name, the blobs a HEAD found, and where the tags it read pointed
//! (or that they did not exist). The push steps trust these reads rather
//! than asking again, which saves a re-run its HEADs of layers, configs,
//! manifests, the index and the tags: round trips one after another.
//!
//! It also records what this publish put there that was not there before
//! (a blob uploaded or mounted, a manifest PUT): a manifest that names such
//! a blob cannot be there yet either, so a cold push PUTs its manifests and
//! index without a HEAD first.
//!
//! Only ever added to: what was read stays true for the few seconds of a
//! publish (a registry does not drop a manifest a tag points at), and a tag
//! this publish moves is recorded as moved. Were it wrong, a step would
//! only repeat a PUT the registry takes again unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::digest::Digest;

#[derive(Debug, Default)]
pub struct Seen {
    /// Manifests and blobs the repository was seen to hold.
    documents: Mutex<HashSet<Digest>>,
    /// Tags read: where each pointed (`None`: it did not exist).
    tags: Mutex<HashMap<String, Option<Digest>>>,
    /// What this publish put there that was missing.
    created: Mutex<HashSet<Digest>>,
}

impl Seen {
    /// The repository holds the manifest or blob `digest`.
    pub fn record_document(&self, digest: &Digest) {
        if let Ok(mut documents) = self.documents.lock() {
            documents.insert(digest.clone());
        }
    }

    /// `tag` pointed at `target` (`None`: it did not exist).
    pub fn record_tag(&self, tag: &str, target: Option<&Digest>) {
        if let Ok(mut tags) = self.tags.lock() {
            tags.insert(tag.to_owned(), target.cloned());
        }
        if let Some(target) = target {
            self.record_document(target);
        }
    }

    /// This publish put `digest` there, and it was not there before.
    pub fn record_created(&self, digest: &Digest) {
        if let Ok(mut created) = self.created.lock() {
            created.insert(digest.clone());
        }
        self.record_document(digest);
    }

    /// Whether a document naming `references` cannot be there already:
    /// one of them was missing until this publish put it there.
    pub fn names_created(&self, references: &[Digest]) -> bool {
        self.created
            .lock()
            .is_ok_and(|created| references.iter().any(|r| created.contains(r)))
    }

    /// Whether the repository was seen to hold `digest`.
    pub fn holds(&self, digest: &Digest) -> bool {
        self.documents
            .lock()
            .is_ok_and(|documents| documents.contains(digest))
    }

    /// Whether every one of `tags` was seen to point at `digest`.
    pub fn tags_point_at(&self, tags: &[String], digest: &Digest) -> bool {
        tags.iter()
            .all(|tag| self.tag(tag).flatten().as_ref() == Some(digest))
    }

    /// Where `tag` was seen to point: `Some(None)` if it did not exist,
    /// `None` if it was not read.
    pub fn tag(&self, tag: &str) -> Option<Option<Digest>> {
        self.tags.lock().ok()?.get(tag).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_remembered_and_an_unread_tag_is_unknown() {
        let seen = Seen::default();
        let index = Digest::of(b"index");
        let config = Digest::of(b"config");
        seen.record_tag("1.0", Some(&index));
        seen.record_tag("latest", None);
        seen.record_document(&config);

        assert_eq!(seen.tag("1.0"), Some(Some(index.clone())));
        assert_eq!(seen.tag("latest"), Some(None));
        assert_eq!(seen.tag("main"), None);
        // A tag's target is a document the repository holds.
        assert!(seen.holds(&index));
        assert!(seen.holds(&config));
        assert!(!seen.holds(&Digest::of(b"other")));
        // Tags all in place only when each was read pointing there.
        let tags = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(seen.tags_point_at(&tags(&["1.0"]), &index));
        assert!(!seen.tags_point_at(&tags(&["1.0", "latest"]), &index));
        assert!(!seen.tags_point_at(&tags(&["1.0", "main"]), &index));
        assert!(!seen.tags_point_at(&tags(&["1.0"]), &config));
    }

    #[test]
    fn a_document_naming_something_created_is_new() {
        let seen = Seen::default();
        let (old, new) = (Digest::of(b"old layer"), Digest::of(b"new layer"));
        seen.record_document(&old);
        assert!(!seen.names_created(std::slice::from_ref(&old)));
        seen.record_created(&new);
        assert!(seen.holds(&new));
        assert!(seen.names_created(&[old, new]));
        assert!(!seen.names_created(&[]));
    }
}
