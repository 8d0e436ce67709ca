//! Which blobs a lookup of the known-layer map mounted into which
//! destination. The mount happens while an input is read, but the layer is
//! reported once the image is in place, with every other reused layer: this
//! ledger lets that report say "mounted" where a mount put the blob there and
//! "already present" where the registry had it, counting each blob once.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::digest::Digest;
use crate::progress::BlobOutcome;
use crate::reference::Repository;

use super::destination::Destination;

#[derive(Default)]
pub struct Mounted(Mutex<HashSet<(String, Digest)>>);

impl Mounted {
    /// `digest` was mounted into `destination`.
    pub fn record(&self, destination: &Destination, digest: &Digest) {
        if let Ok(mut set) = self.0.lock() {
            set.insert((destination.to_string(), digest.clone()));
        }
    }

    /// How a reused `digest` came to be at `destination`. The first image
    /// that asks gets "mounted"; another image reusing the same layer then
    /// found it in place.
    pub fn outcome(&self, destination: &Destination, digest: &Digest) -> BlobOutcome {
        let mounted = self
            .0
            .lock()
            .is_ok_and(|mut set| set.remove(&(destination.to_string(), digest.clone())));
        if mounted {
            BlobOutcome::Mounted
        } else {
            BlobOutcome::AlreadyPresent
        }
    }
}

/// Makes `digest` present at every destination: by HEAD, or by a mount from
/// the first of `holders` (repositories that have it) on the destination's
/// registry, recorded in `mounted`. False as soon as one destination would
/// need the bytes.
pub async fn mount_where_missing(
    destinations: &[Destination],
    digest: &Digest,
    holders: &[Repository],
    mounted: &Mounted,
) -> bool {
    for destination in destinations {
        if destination.has_blob(digest).await.unwrap_or(false) {
            continue;
        }
        if !destination.mount_from_any(holders, digest).await {
            return false;
        }
        mounted.record(destination, digest);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use std::sync::Arc;

    #[test]
    fn a_mount_is_reported_once_then_the_blob_is_present() {
        let layout = Destination::Layout(Arc::new(Layout::unopened("/nowhere".as_ref())));
        let digest = Digest::of(b"layer");
        let mounted = Mounted::default();
        assert_eq!(
            mounted.outcome(&layout, &digest),
            BlobOutcome::AlreadyPresent
        );
        mounted.record(&layout, &digest);
        assert_eq!(mounted.outcome(&layout, &digest), BlobOutcome::Mounted);
        assert_eq!(
            mounted.outcome(&layout, &digest),
            BlobOutcome::AlreadyPresent
        );
    }
}
