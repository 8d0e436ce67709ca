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

/// Which family of media types the documents use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// OCI image index and manifests (the default).
    #[default]
    Oci,
    /// Docker manifest list and v2s2 manifests, for old clients. Layers must
    /// be gzip, and annotations cannot be written.
    Docker,
}

impl Format {
    /// Whether a document of this format built with `annotations` carries
    /// any (Docker's drop them).
    pub fn carries(self, annotations: &BTreeMap<String, String>) -> bool {
        self == Format::Oci && !annotations.is_empty()
    }

    fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => MEDIA_TYPE_MANIFEST,
            Format::Docker => oci::MEDIA_TYPE_DOCKER_MANIFEST,
        }
    }

    fn index_type(self) -> &'static str {
        match self {
            Format::Oci => MEDIA_TYPE_INDEX,
            Format::Docker => oci::MEDIA_TYPE_DOCKER_LIST,
        }
    }
}

/// A layer that a Docker manifest cannot cite.
#[derive(Debug, thiserror::Error)]
#[error("layer `{digest}` is `{media_type}`, which a Docker v2s2 manifest cannot cite\nhint: Docker manifests take gzip layers only; use `--compression gzip`, or keep the default `--format oci`")]
pub struct UnsupportedLayer {
    pub digest: crate::digest::Digest,
    pub media_type: String,
}

/// The media type `descriptor` takes in `format` (the blob is the same).
fn layer_media_type(format: Format, descriptor: &Descriptor) -> Result<String, UnsupportedLayer> {
    let gzip = descriptor.media_type == oci::MEDIA_TYPE_LAYER_GZIP
        || descriptor.media_type == oci::MEDIA_TYPE_DOCKER_LAYER_GZIP;
    match format {
        Format::Oci if descriptor.media_type == oci::MEDIA_TYPE_DOCKER_LAYER_GZIP => {
            Ok(oci::MEDIA_TYPE_LAYER_GZIP.to_owned())
        }
        Format::Oci => Ok(descriptor.media_type.clone()),
        Format::Docker if gzip => Ok(oci::MEDIA_TYPE_DOCKER_LAYER_GZIP.to_owned()),
        Format::Docker => Err(UnsupportedLayer {
            digest: descriptor.digest.clone(),
            media_type: descriptor.media_type.clone(),
        }),
    }
}

/// An image manifest citing `config` and `layers` (bottom to top). In the
/// Docker format, annotations are dropped (the caller warns).
pub fn image_manifest(
    format: Format,
    mut config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
) -> Result<RawManifest, UnsupportedLayer> {
    let layers = layers
        .into_iter()
        .map(|d| {
            Ok(Descriptor {
                media_type: layer_media_type(format, &d)?,
                ..d
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if format == Format::Docker {
        config.media_type = oci::MEDIA_TYPE_DOCKER_CONFIG.to_owned();
    }
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: format.manifest_type().to_owned(),
        config,
        layers,
        annotations: if format == Format::Docker {
            BTreeMap::new()
        } else {
            annotations
        },
    };
    Ok(RawManifest::canonical(&manifest, format.manifest_type()))
}

/// An image index (or Docker manifest list) listing `images` in the order
/// given, each with its platform.
pub fn image_index(
    format: Format,
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
        media_type: format.index_type().to_owned(),
        manifests,
        annotations: if format == Format::Docker {
            BTreeMap::new()
        } else {
            annotations
        },
    };
    RawManifest::canonical(&index, format.index_type())
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
        let amd = image_manifest(
            Format::Oci,
            cfg.clone(),
            vec![layer.clone()],
            BTreeMap::new(),
        )
        .unwrap();
        let arm = image_manifest(
            Format::Oci,
            cfg,
            vec![layer],
            BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        )
        .unwrap();
        assert_ne!(amd.digest, arm.digest);
        let platforms = ["linux/arm64", "linux/amd64"].map(|p| p.parse::<Platform>().unwrap());
        let index = image_index(
            Format::Oci,
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

    #[test]
    fn the_docker_format_uses_docker_types_and_drops_annotations() {
        let cfg = config_descriptor(b"{}");
        let gzip = Descriptor::new(oci::MEDIA_TYPE_LAYER_GZIP, Digest::of(b"x"), 1);
        let notes = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let m = image_manifest(Format::Docker, cfg.clone(), vec![gzip], notes.clone()).unwrap();
        let parsed: ImageManifest = serde_json::from_slice(&m.bytes).unwrap();
        assert_eq!(parsed.media_type, oci::MEDIA_TYPE_DOCKER_MANIFEST);
        assert_eq!(parsed.config.media_type, oci::MEDIA_TYPE_DOCKER_CONFIG);
        assert_eq!(
            parsed.layers[0].media_type,
            oci::MEDIA_TYPE_DOCKER_LAYER_GZIP
        );
        assert!(parsed.annotations.is_empty());
        let list = image_index(
            Format::Docker,
            &[(m, "linux/amd64".parse().unwrap())],
            notes,
        );
        assert_eq!(list.media_type, oci::MEDIA_TYPE_DOCKER_LIST);
        assert!(!std::str::from_utf8(&list.bytes)
            .unwrap()
            .contains("annotations"));

        let zstd = Descriptor::new(oci::MEDIA_TYPE_LAYER_ZSTD, Digest::of(b"z"), 1);
        assert!(image_manifest(Format::Docker, cfg, vec![zstd], BTreeMap::new()).is_err());
    }
}
