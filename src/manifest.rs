//! Builds the documents manifold generates: a per-architecture image manifest
//! from a config and its layers, and the index that lists those manifests.
//!
//! Both are serialised canonically, once ([`RawManifest::canonical`]); the
//! resulting bytes are the ones hashed, cited and PUT.

use std::collections::BTreeMap;

use crate::oci::{
    self, Descriptor, ImageIndex, ImageManifest, Platform, RawManifest, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
};

/// An OCI image manifest citing `config` and `layers` (bottom to top).
pub fn image_manifest(
    config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
) -> RawManifest {
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_MANIFEST.to_owned(),
        config,
        layers,
        annotations,
    };
    RawManifest::canonical(&manifest, MEDIA_TYPE_MANIFEST)
}

/// An OCI image index listing `images` in the order given, each with its
/// platform.
pub fn image_index(
    images: &[(RawManifest, Platform)],
    annotations: BTreeMap<String, String>,
) -> RawManifest {
    let manifests = images
        .iter()
        .map(|(raw, platform)| Descriptor {
            platform: Some(platform.clone()),
            ..raw.descriptor()
        })
        .collect();
    let index = ImageIndex {
        schema_version: 2,
        media_type: MEDIA_TYPE_INDEX.to_owned(),
        manifests,
        annotations,
    };
    RawManifest::canonical(&index, MEDIA_TYPE_INDEX)
}

/// The config descriptor for config bytes taken from an input (uploaded byte
/// for byte; Docker and OCI image configs share one schema).
pub fn config_descriptor(config: &[u8]) -> Descriptor {
    Descriptor::new(
        oci::MEDIA_TYPE_CONFIG,
        crate::digest::Digest::of(config),
        config.len() as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn index_lists_images_in_input_order_with_platforms() {
        let cfg = config_descriptor(b"{}");
        let layer = Descriptor::new(oci::MEDIA_TYPE_LAYER_GZIP, Digest::of(b"x"), 1);
        let amd = image_manifest(cfg.clone(), vec![layer.clone()], BTreeMap::new());
        let arm = image_manifest(
            cfg,
            vec![layer],
            BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        );
        assert_ne!(amd.digest, arm.digest);
        let platforms = ["linux/arm64", "linux/amd64"].map(|p| p.parse::<Platform>().unwrap());
        let index = image_index(
            &[
                (arm.clone(), platforms[0].clone()),
                (amd.clone(), platforms[1].clone()),
            ],
            BTreeMap::new(),
        );
        let parsed: ImageIndex = serde_json::from_slice(&index.bytes).unwrap();
        assert_eq!(parsed.media_type, MEDIA_TYPE_INDEX);
        assert_eq!(parsed.manifests[0].digest, arm.digest);
        assert_eq!(parsed.manifests[0].platform.as_ref(), Some(&platforms[0]));
        assert_eq!(parsed.manifests[1].digest, amd.digest);
        assert_eq!(parsed.manifests[1].size, amd.bytes.len() as u64);
        assert_eq!(index.digest, Digest::of(&index.bytes));
    }
}
