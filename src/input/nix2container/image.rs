//! The nix2container `image.json` document (formats.md §2): parsed by hand
//! from a `serde_json::Value` so that every error names the input and the
//! exact key (`layers[2].paths[0].options.perms[1].uid`), and so that files
//! of every nix2container age load: `arch`, `created` and `History` may be
//! missing, `size` may be 0, unknown keys are ignored.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::N2cError;
use crate::digest::Digest;
use crate::oci::MEDIA_TYPE_LAYER;

/// A parsed `image.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageJson {
    pub version: u64,
    /// The OCI `ImageConfig` (`Env`, `Entrypoint`, …), kept verbatim.
    pub image_config: Value,
    /// Bottom to top.
    pub layers: Vec<N2cLayer>,
    /// Go architecture name; `None` in files from before 2022-08 (amd64).
    pub arch: Option<String>,
    /// RFC 3339, as written (including Go's year-1 default).
    pub created: Option<String>,
}

/// One entry of `layers`.
#[derive(Clone, Debug, PartialEq)]
pub struct N2cLayer {
    /// The blob digest as served (for built layers, equal to `diff_id`).
    pub digest: Digest,
    /// Blob size; 0 for base-image layers (stat `layer_path`).
    pub size: u64,
    /// The uncompressed digest (the JSON key `diff_ids` holds one string).
    pub diff_id: Digest,
    /// Store paths to tar, in order.
    pub paths: Vec<StorePath>,
    pub media_type: String,
    /// A ready blob file (base-image and non-reproducible layers).
    pub layer_path: Option<PathBuf>,
    /// The layer's `History` entry, verbatim.
    pub history: Option<Value>,
}

/// One `paths[]` entry: a store path and how to place it in the layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorePath {
    pub path: PathBuf,
    pub options: Option<PathOptions>,
}

/// `options` of a store path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathOptions {
    pub rewrite: Rewrite,
    pub perms: Vec<Perm>,
}

/// Replace every match of `regex` (Go RE2) in the source path with `repl`
/// (Go `$name` expansion). An empty regex means no rewrite.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub regex: String,
    pub repl: String,
}

/// Ownership and mode for source paths matching `regex` (unanchored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Perm {
    pub regex: String,
    /// Octal; empty leaves the mode alone.
    pub mode: String,
    /// Octal bits OR-ed in after `mode` (newer nix2container forks).
    pub or_mode: String,
    pub uid: i64,
    pub gid: i64,
    /// Empty leaves `root`.
    pub uname: String,
    pub gname: String,
}

/// Parses an `image.json`; `input` names it in errors.
pub fn parse_image_json(input: &str, bytes: &[u8]) -> Result<ImageJson, N2cError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|source| N2cError::Json {
        input: input.to_owned(),
        source,
    })?;
    let p = Parser { input };
    let top = p.object(&value, "")?;
    let version = match top.get("version") {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| p.bad("version", "a non-negative integer"))?,
        None => return Err(p.missing("version")),
    };
    let image_config = top
        .get("image-config")
        .cloned()
        .ok_or_else(|| p.missing("image-config"))?;
    let layers = match top.get("layers") {
        None => return Err(p.missing("layers")),
        // Older writers marshalled an image without layers as `null`.
        Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, l)| p.layer(l, &format!("layers[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(p.bad("layers", "an array")),
    };
    let arch = p.opt_string(top, "", "arch")?.filter(|a| !a.is_empty());
    let created = p.opt_string(top, "", "created")?.filter(|c| !c.is_empty());
    Ok(ImageJson {
        version,
        image_config,
        layers,
        arch,
        created,
    })
}

struct Parser<'a> {
    input: &'a str,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Parser<'_> {
    fn bad(&self, key: &str, expected: &str) -> N2cError {
        N2cError::Field {
            input: self.input.to_owned(),
            key: key.to_owned(),
            problem: format!("expected {expected}"),
        }
    }

    fn missing(&self, key: &str) -> N2cError {
        N2cError::Field {
            input: self.input.to_owned(),
            key: key.to_owned(),
            problem: "missing".to_owned(),
        }
    }

    fn object<'v>(&self, v: &'v Value, key: &str) -> Result<&'v Map<String, Value>, N2cError> {
        v.as_object().ok_or_else(|| {
            self.bad(
                if key.is_empty() { "(top level)" } else { key },
                "an object",
            )
        })
    }

    /// A string, or `None` when absent or `null`.
    fn opt_string(
        &self,
        obj: &Map<String, Value>,
        prefix: &str,
        key: &str,
    ) -> Result<Option<String>, N2cError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(&join(prefix, key), "a string")),
        }
    }

    fn string(
        &self,
        obj: &Map<String, Value>,
        prefix: &str,
        key: &str,
    ) -> Result<String, N2cError> {
        Ok(self.opt_string(obj, prefix, key)?.unwrap_or_default())
    }

    fn int(&self, obj: &Map<String, Value>, prefix: &str, key: &str) -> Result<i64, N2cError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| self.bad(&join(prefix, key), "an integer")),
        }
    }

    fn digest(&self, s: &str, key: &str) -> Result<Digest, N2cError> {
        s.parse().map_err(|_| N2cError::Field {
            input: self.input.to_owned(),
            key: key.to_owned(),
            problem: format!("`{s}` is not a sha256 digest"),
        })
    }

    fn layer(&self, v: &Value, key: &str) -> Result<N2cLayer, N2cError> {
        let obj = self.object(v, key)?;
        let digest_text = self
            .opt_string(obj, key, "digest")?
            .ok_or_else(|| self.missing(&join(key, "digest")))?;
        let digest = self.digest(&digest_text, &join(key, "digest"))?;
        let size = self.int(obj, key, "size")?;
        let size = u64::try_from(size).map_err(|_| self.bad(&join(key, "size"), "a size ≥ 0"))?;
        let media_type = self
            .opt_string(obj, key, "mediatype")?
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| MEDIA_TYPE_LAYER.to_owned());
        let diff_id = match self
            .opt_string(obj, key, "diff_ids")?
            .filter(|d| !d.is_empty())
        {
            Some(d) => self.digest(&d, &join(key, "diff_ids"))?,
            // An uncompressed layer's diff_id is its digest; a compressed
            // one's cannot be guessed.
            None if media_type == MEDIA_TYPE_LAYER => digest.clone(),
            None => return Err(self.missing(&join(key, "diff_ids"))),
        };
        let paths = match obj.get("paths") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, p)| self.store_path(p, &format!("{key}.paths[{i}]")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(self.bad(&join(key, "paths"), "an array")),
        };
        let layer_path = self
            .opt_string(obj, key, "layer-path")?
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        // Go's encoding/json matches keys case-insensitively; the writer
        // uses `History`.
        let history = obj
            .get("History")
            .or_else(|| obj.get("history"))
            .filter(|h| !h.is_null())
            .cloned();
        Ok(N2cLayer {
            digest,
            size,
            diff_id,
            paths,
            media_type,
            layer_path,
            history,
        })
    }

    fn store_path(&self, v: &Value, key: &str) -> Result<StorePath, N2cError> {
        let obj = self.object(v, key)?;
        let path = self
            .opt_string(obj, key, "path")?
            .filter(|p| !p.is_empty())
            .ok_or_else(|| self.missing(&join(key, "path")))?;
        let options = match obj.get("options") {
            None | Some(Value::Null) => None,
            Some(o) => Some(self.options(o, &join(key, "options"))?),
        };
        Ok(StorePath {
            path: PathBuf::from(path),
            options,
        })
    }

    fn options(&self, v: &Value, key: &str) -> Result<PathOptions, N2cError> {
        let obj = self.object(v, key)?;
        let rewrite = match obj.get("rewrite") {
            None | Some(Value::Null) => Rewrite::default(),
            Some(r) => {
                let rkey = join(key, "rewrite");
                let r = self.object(r, &rkey)?;
                Rewrite {
                    regex: self.string(r, &rkey, "regex")?,
                    repl: self.string(r, &rkey, "repl")?,
                }
            }
        };
        let perms = match obj.get("perms") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let pkey = format!("{key}.perms[{i}]");
                    let p = self.object(p, &pkey)?;
                    Ok(Perm {
                        regex: self.string(p, &pkey, "regex")?,
                        mode: self.string(p, &pkey, "mode")?,
                        or_mode: self.string(p, &pkey, "orMode")?,
                        uid: self.int(p, &pkey, "uid")?,
                        gid: self.int(p, &pkey, "gid")?,
                        uname: self.string(p, &pkey, "uname")?,
                        gname: self.string(p, &pkey, "gname")?,
                    })
                })
                .collect::<Result<_, N2cError>>()?,
            Some(_) => return Err(self.bad(&join(key, "perms"), "an array")),
        };
        Ok(PathOptions { rewrite, perms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:abababababababababababababababababababababababababababababababab";
    const D2: &str = "sha256:7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d";

    fn example() -> String {
        format!(
            r#"{{
	"version": 1,
	"image-config": {{"Env": ["PATH=/bin"], "Entrypoint": ["/nix/store/x-fd-10.2.0/bin/fd"]}},
	"layers": [
		{{"digest": "{D1}", "size": 34406400, "diff_ids": "{D1}",
		 "paths": [{{"path": "/nix/store/a-glibc-2.40-66"}}, {{"path": "/nix/store/b-bash-5.2p37"}}],
		 "mediatype": "application/vnd.oci.image.layer.v1.tar",
		 "History": {{"created_by": "nix2container"}}}},
		{{"digest": "{D2}", "size": 10240, "diff_ids": "{D2}",
		 "paths": [{{"path": "/nix/store/c-root",
		            "options": {{"rewrite": {{"regex": "^/nix/store/c-root", "repl": ""}},
		                        "perms": [{{"regex": "/tmp", "mode": "1777", "uid": 0, "gid": 0, "uname": "", "gname": ""}}]}}}}],
		 "mediatype": "application/vnd.oci.image.layer.v1.tar",
		 "History": {{"created_by": "nix2container"}}}}
	],
	"arch": "amd64",
	"created": "0001-01-01T00:00:00Z"
}}"#
        )
    }

    #[test]
    fn parses_the_formats_example() {
        let img = parse_image_json("image.json", example().as_bytes()).unwrap();
        assert_eq!(img.version, 1);
        assert_eq!(img.arch.as_deref(), Some("amd64"));
        assert_eq!(img.created.as_deref(), Some("0001-01-01T00:00:00Z"));
        assert_eq!(img.image_config["Env"][0], "PATH=/bin");
        assert_eq!(img.layers.len(), 2);
        let l0 = &img.layers[0];
        assert_eq!(l0.digest.to_string(), D1);
        assert_eq!(l0.diff_id, l0.digest);
        assert_eq!(l0.size, 34406400);
        assert_eq!(l0.paths[1].path, PathBuf::from("/nix/store/b-bash-5.2p37"));
        assert_eq!(l0.paths[1].options, None);
        assert_eq!(l0.history.as_ref().unwrap()["created_by"], "nix2container");
        let opts = img.layers[1].paths[0].options.as_ref().unwrap();
        assert_eq!(opts.rewrite.regex, "^/nix/store/c-root");
        assert_eq!(opts.rewrite.repl, "");
        assert_eq!(opts.perms[0].mode, "1777");
        assert_eq!(opts.perms[0].uname, "");
    }

    #[test]
    fn tolerates_old_formats_and_unknown_keys() {
        let json = format!(
            r#"{{"version": 1, "image-config": {{}}, "future": [1, 2],
               "layers": [{{"digest": "{D1}", "size": 0, "diff_ids": "{D2}",
                           "mediatype": "application/vnd.oci.image.layer.v1.tar+gzip",
                           "layer-path": "/nix/store/d-base/layer.tar.gz", "extra": true}}]}}"#
        );
        let img = parse_image_json("old.json", json.as_bytes()).unwrap();
        assert_eq!(img.arch, None);
        assert_eq!(img.created, None);
        let l = &img.layers[0];
        assert_eq!(l.size, 0);
        assert_eq!(l.history, None);
        assert_eq!(l.diff_id.to_string(), D2);
        assert!(l.paths.is_empty());
        assert_eq!(
            l.layer_path.as_deref(),
            Some(std::path::Path::new("/nix/store/d-base/layer.tar.gz"))
        );
        let null_layers = r#"{"version": 1, "image-config": {}, "layers": null}"#;
        let img = parse_image_json("n.json", null_layers.as_bytes()).unwrap();
        assert!(img.layers.is_empty());
    }

    #[test]
    fn errors_name_the_input_and_the_key() {
        let err = parse_image_json("broken.json", b"{\"version\": 1,").unwrap_err();
        assert!(matches!(err, N2cError::Json { .. }));
        assert!(err.to_string().contains("`broken.json`"), "{err}");

        let json = format!(
            r#"{{"version": 1, "image-config": {{}}, "layers": [{{"digest": "{D1}"}},
               {{"digest": "{D1}", "paths": [{{"path": "/p", "options": {{"perms": [{{"uid": "x"}}]}}}}]}}]}}"#
        );
        let err = parse_image_json("img.json", json.as_bytes()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`img.json`"), "{text}");
        assert!(
            text.contains("`layers[1].paths[0].options.perms[0].uid`"),
            "{text}"
        );

        let json = r#"{"version": 1, "image-config": {}, "layers": [{"digest": "sha256:12"}]}"#;
        let text = parse_image_json("d.json", json.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(text.contains("`layers[0].digest`"), "{text}");

        let text = parse_image_json("v.json", br#"{"layers": []}"#)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("`version`") && text.contains("missing"),
            "{text}"
        );
    }
}
