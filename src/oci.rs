//! OCI documents: media types, descriptors, platforms, image manifests and
//! indexes, and the canonical JSON they are serialised to.
//!
//! manifold writes its own small serde types instead of `oci-spec`'s so that
//! every document it generates is serialised exactly once, canonically (keys
//! sorted, no insignificant whitespace): the bytes hashed are the bytes PUT, and
//! the same inputs always give the same digests.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The `Accept` header for every manifest GET or HEAD: without all four types
/// registries answer 404 or down-convert.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Annotation holding a tag in an OCI image layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Whether a media type names an index (OCI index or Docker manifest list).
pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_INDEX || media_type == MEDIA_TYPE_DOCKER_LIST
}

/// Whether a layer media type is foreign (Docker) or non-distributable
/// (OCI): its blob is fetched from its `urls`, not held by the registry.
pub fn is_foreign_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
        || media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
}

/// A content descriptor: what a manifest or index cites.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// An image platform: `os/architecture[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform for a Nix system double (`aarch64-linux`), if known.
    pub fn from_nix_system(system: &str) -> Option<Platform> {
        let (arch, variant) = match system {
            "x86_64-linux" => ("amd64", None),
            "aarch64-linux" => ("arm64", None),
            "armv7l-linux" => ("arm", Some("v7")),
            "armv6l-linux" => ("arm", Some("v6")),
            "i686-linux" => ("386", None),
            "riscv64-linux" => ("riscv64", None),
            "powerpc64le-linux" => ("ppc64le", None),
            "s390x-linux" => ("s390x", None),
            _ => return None,
        };
        Some(Platform {
            architecture: arch.to_owned(),
            os: "linux".to_owned(),
            variant: variant.map(str::to_owned),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Why a string is not a platform.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a platform: expected `os/arch[/variant]` (`linux/arm64`) or a Nix system (`aarch64-linux`)")]
pub struct ParsePlatformError(String);

impl FromStr for Platform {
    type Err = ParsePlatformError;
    fn from_str(s: &str) -> Result<Platform, ParsePlatformError> {
        if let Some(p) = Platform::from_nix_system(s) {
            return Ok(p);
        }
        let parts: Vec<&str> = s.split('/').collect();
        let ok_part = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok_part) {
            return Err(ParsePlatformError(s.to_owned()));
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

/// An OCI image manifest (or Docker v2s2 manifest: same shape, other types).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index (or Docker manifest list).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The parts of an image config that manifold reads. Unknown keys are kept
/// out of the way: configs taken from inputs are uploaded byte for byte.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConfigSummary {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
}

impl ConfigSummary {
    /// The platform the config names (`os` defaults to linux), if it names
    /// an architecture at all.
    pub fn platform(&self) -> Option<Platform> {
        (!self.architecture.is_empty()).then(|| Platform {
            architecture: self.architecture.clone(),
            os: if self.os.is_empty() {
                "linux".to_owned()
            } else {
                self.os.clone()
            },
            variant: self.variant.clone().filter(|v| !v.is_empty()),
        })
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ContainerConfig {
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A serialised document together with its digest and media type: the unit
/// that is hashed, cited and PUT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawManifest {
    pub bytes: Bytes,
    pub digest: Digest,
    pub media_type: String,
}

impl RawManifest {
    /// Serialises `doc` canonically, once.
    pub fn canonical<T: Serialize>(doc: &T, media_type: &str) -> RawManifest {
        let bytes = Bytes::from(canonical_json(doc));
        RawManifest {
            digest: Digest::of(&bytes),
            bytes,
            media_type: media_type.to_owned(),
        }
    }

    /// The digests the document names: an image manifest's config and
    /// layers, an index's manifests (none if it cannot be parsed).
    pub fn references(&self) -> Vec<Digest> {
        #[derive(Deserialize)]
        struct References {
            config: Option<Descriptor>,
            #[serde(default)]
            layers: Vec<Descriptor>,
            #[serde(default)]
            manifests: Vec<Descriptor>,
        }
        serde_json::from_slice::<References>(&self.bytes)
            .map(|r| {
                r.config
                    .into_iter()
                    .chain(r.layers)
                    .chain(r.manifests)
                    .map(|d| d.digest)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A descriptor citing this document.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.media_type.clone(),
            self.digest.clone(),
            self.bytes.len() as u64,
        )
    }
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant
/// whitespace. Does not depend on serde_json's `preserve_order` feature, which
/// another crate in the graph could switch on.
pub fn canonical_json<T: Serialize>(doc: &T) -> Vec<u8> {
    let value = serde_json::to_value(doc).expect("documents serialise to JSON");
    let mut out = Vec::with_capacity(1024);
    write_canonical(&value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).expect("strings serialise"));
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).expect("scalars serialise")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_names_its_config_and_layers_or_its_manifests() {
        let (config, layer) = (Digest::of(b"c"), Digest::of(b"l"));
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: MEDIA_TYPE_MANIFEST.to_owned(),
            config: Descriptor::new(MEDIA_TYPE_CONFIG, config.clone(), 1),
            layers: vec![Descriptor::new(MEDIA_TYPE_LAYER_GZIP, layer.clone(), 1)],
            annotations: BTreeMap::new(),
        };
        let manifest = RawManifest::canonical(&manifest, MEDIA_TYPE_MANIFEST);
        assert_eq!(manifest.references(), [config, layer]);
        let index = ImageIndex {
            schema_version: 2,
            media_type: MEDIA_TYPE_INDEX.to_owned(),
            manifests: vec![manifest.descriptor()],
            annotations: BTreeMap::new(),
        };
        let index = RawManifest::canonical(&index, MEDIA_TYPE_INDEX);
        assert_eq!(index.references(), [manifest.digest]);
        let garbage = RawManifest::canonical(&"not a manifest", MEDIA_TYPE_INDEX);
        assert!(garbage.references().is_empty());
    }

    #[test]
    fn foreign_and_non_distributable_layers_are_told_apart() {
        assert!(is_foreign_layer(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        ));
        assert!(is_foreign_layer(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        ));
        assert!(!is_foreign_layer(MEDIA_TYPE_LAYER_GZIP));
        assert!(!is_foreign_layer(MEDIA_TYPE_DOCKER_LAYER_GZIP));
    }

    #[test]
    fn canonical_json_sorts_keys_and_has_no_whitespace() {
        let v = serde_json::json!({"b": 1, "a": {"z": [1, {"y": 2, "x": "é"}], "c": null}});
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":{"c":null,"z":[1,{"x":"é","y":2}]},"b":1}"#
        );
    }

    #[test]
    fn manifest_serialises_canonically_and_stably() {
        let config = Descriptor::new(MEDIA_TYPE_CONFIG, Digest::of(b"c"), 1);
        let m = ImageManifest {
            schema_version: 2,
            media_type: MEDIA_TYPE_MANIFEST.into(),
            config,
            layers: vec![Descriptor::new(MEDIA_TYPE_LAYER_GZIP, Digest::of(b"l"), 2)],
            annotations: BTreeMap::new(),
        };
        let a = RawManifest::canonical(&m, MEDIA_TYPE_MANIFEST);
        let b = RawManifest::canonical(&m.clone(), MEDIA_TYPE_MANIFEST);
        assert_eq!(a, b);
        let text = std::str::from_utf8(&a.bytes).unwrap();
        assert!(
            text.starts_with(r#"{"config":{"digest":"sha256:"#),
            "{text}"
        );
        assert!(!text.contains("annotations"));
        assert_eq!(a.digest, Digest::of(&a.bytes));
    }

    #[test]
    fn platforms_parse_from_flags_and_nix_systems() {
        let p: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert_eq!(
            "armv7l-linux".parse::<Platform>().unwrap(),
            p,
            "nix systems map to the same platform"
        );
        assert_eq!(
            "x86_64-linux".parse::<Platform>().unwrap().to_string(),
            "linux/amd64"
        );
        for bad in ["", "linux", "linux/", "a/b/c/d", "linux/arm 64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}
