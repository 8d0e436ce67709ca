//! What a registry repository was seen to hold during this publish: the
//! manifests and configs the known-layer lookup fetched by digest, and where
//! the tags it read pointed (or that they did not exist). The push steps
//! trust these reads rather than asking again, which saves a re-run its
//! HEADs of configs, manifests, the index and the tags: round trips one
//! after another at the end of the run.
//!
//! Only ever added to: what was read stays true for the few seconds of a
//! publish (a registry does not drop a manifest a tag points at), and a tag
//! this publish moves is recorded as moved.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::digest::Digest;

#[derive(Debug, Default)]
pub struct Seen {
    /// Manifests and blobs the repository was seen to hold.
    documents: Mutex<HashSet<Digest>>,
    /// Tags read: where each pointed (`None`: it did not exist).
    tags: Mutex<HashMap<String, Option<Digest>>>,
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

    /// Whether the repository was seen to hold `digest`.
    pub fn holds(&self, digest: &Digest) -> bool {
        self.documents
            .lock()
            .is_ok_and(|documents| documents.contains(digest))
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
    }
}
