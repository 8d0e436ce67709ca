//! nix2container input: the `image.json` a `buildImage` produces
//! (formats.md §2) and the layer tars it describes, regenerated from the
//! local Nix store byte for byte as nix2container's Go code makes them
//! (§2.1), plus the image config built from it (§2.2).
//!
//! Data flow: [`parse_image_json`] → for each layer with `paths`,
//! [`write_layer_tar`] streams the uncompressed tar into a writer the
//! caller supplies (it hashes with `crate::digest::HashingWriter` and
//! compresses with `crate::layer`), the caller compares the hash with
//! `diff_id` and reports a mismatch with [`verify_digest_error`]; layers
//! with `layer_path` are ready blobs the caller copies as they are. Then
//! [`config_json`]. Nothing here knows about registries, compression or
//! platforms beyond the `arch` string.
//!
//! Submodules: [`image`] (the JSON), [`tree`] (walk, rewrite, perms,
//! order), `go_regex` (Go RE2 semantics for rewrite and perms), [`tar`]
//! (Go `archive/tar` header encoding).

pub mod go_regex;
pub mod image;
pub mod tar;
pub mod tree;

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::digest::Digest;

pub use image::{parse_image_json, ImageJson, N2cLayer, PathOptions, Perm, Rewrite, StorePath};
pub use tar::{GoTarWriter, Header, TarError};
pub use tree::TreeOptions;

/// Go's zero `time.Time`, which nix2container writes when no `created` was
/// set; it means "no date", so it is left out of the config.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Everything that can go wrong reading a nix2container image.
#[derive(Debug, thiserror::Error)]
pub enum N2cError {
    #[error("cannot parse nix2container image `{input}` as JSON")]
    Json {
        input: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("nix2container image `{input}`: key `{key}`: {problem}")]
    Field {
        input: String,
        key: String,
        problem: String,
    },
    #[error("cannot read `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid regex `{regex}` in nix2container path options")]
    Regex {
        regex: String,
        #[source]
        source: regex::Error,
    },
    #[error("invalid octal mode `{mode}` in nix2container perms for `{}`", path.display())]
    Mode { mode: String, path: PathBuf },
    #[error("`{}` is a socket, which a layer tar cannot hold", path.display())]
    Socket { path: PathBuf },
    #[error(
        "`{}` and `{}` both map to `{}` in the layer but have different {what}",
        first.display(), second.display(), destination.display()
    )]
    Collision {
        destination: PathBuf,
        first: PathBuf,
        second: PathBuf,
        what: &'static str,
    },
    #[error(
        "`{}` is no longer {expected} bytes long (it changed while the layer was written)",
        path.display()
    )]
    FileChanged { path: PathBuf, expected: u64 },
    #[error("cannot write tar entry `{name}`")]
    Tar {
        name: String,
        #[source]
        source: TarError,
    },
    #[error(
        "the layer has no store paths but a ready blob `{}`: copy that file instead",
        path.display()
    )]
    ReadyBlob { path: PathBuf },
    #[error(
        "layer {index} ({}) regenerates as `{actual}` but image.json says `{expected}`\n\
         hint: a store path on this machine differs from the one the image was built from \
         (rebuild the image here, or `nix copy` the exact paths); images built on macOS can \
         differ through `~nix~case~hack~N` names; the tar also depends on the nix2container \
         version that wrote image.json",
        paths_list(paths)
    )]
    DigestMismatch {
        index: usize,
        paths: Vec<PathBuf>,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "layer {index} (`{}`) hashes to `{actual}` but image.json says `{expected}`\n\
         hint: the file changed since image.json was written; rebuild the image",
        path.display()
    )]
    BlobMismatch {
        index: usize,
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
}

fn paths_list(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "no store paths".to_owned();
    }
    paths
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Streams the layer's uncompressed tar, byte-identical to nix2container's,
/// into `out` (never holding the layer in memory). The caller hashes it
/// (`crate::digest::HashingWriter`) and compares with `layer.diff_id`.
pub fn write_layer_tar(layer: &N2cLayer, out: &mut dyn Write) -> Result<(), N2cError> {
    write_layer_tar_with(layer, TreeOptions::default(), out)
}

/// [`write_layer_tar`] with explicit [`TreeOptions`] (case-hack stripping).
pub fn write_layer_tar_with(
    layer: &N2cLayer,
    options: TreeOptions,
    out: &mut dyn Write,
) -> Result<(), N2cError> {
    if layer.paths.is_empty() {
        if let Some(path) = &layer.layer_path {
            return Err(N2cError::ReadyBlob { path: path.clone() });
        }
    }
    // Headers are 512-byte writes; batch them before they reach a hasher
    // or compressor.
    let buffered = BufWriter::with_capacity(256 * 1024, out);
    let mut buffered = tree::write_tree(&layer.paths, options, buffered)?;
    buffered.flush().map_err(|source| N2cError::Tar {
        name: "end of archive".into(),
        source: TarError::Io(source),
    })
}

/// The error for layer `index` whose regenerated tar hashed to `actual`
/// instead of its `diff_id`.
pub fn verify_digest_error(index: usize, layer: &N2cLayer, actual: Digest) -> N2cError {
    N2cError::DigestMismatch {
        index,
        paths: layer.paths.iter().map(|p| p.path.clone()).collect(),
        expected: layer.diff_id.clone(),
        actual,
    }
}

/// Checks a regenerated layer's digest: `Ok` when it equals `diff_id`.
pub fn verify_layer_digest(
    index: usize,
    layer: &N2cLayer,
    actual: &Digest,
) -> Result<(), N2cError> {
    if *actual == layer.diff_id {
        Ok(())
    } else {
        Err(verify_digest_error(index, layer, actual.clone()))
    }
}

/// The image config (formats.md §2.2): `created` (the argument, else the
/// image's; Go's year-1 default is dropped), `architecture` (`arch`, amd64
/// for files that predate it), `os`, `config` (image-config verbatim),
/// `rootfs.diff_ids` and one `history` entry per layer (`{}` without
/// `History`).
pub fn config_json(image: &ImageJson, diff_ids: &[Digest], created: Option<&str>) -> Value {
    let mut config = serde_json::Map::new();
    let created = created
        .or(image.created.as_deref())
        .filter(|c| !c.is_empty() && *c != GO_ZERO_TIME);
    if let Some(created) = created {
        config.insert("created".into(), json!(created));
    }
    config.insert(
        "architecture".into(),
        json!(image.arch.as_deref().unwrap_or("amd64")),
    );
    config.insert("os".into(), json!("linux"));
    config.insert("config".into(), image.image_config.clone());
    config.insert(
        "rootfs".into(),
        json!({
            "type": "layers",
            "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        }),
    );
    let history: Vec<Value> = image
        .layers
        .iter()
        .map(|l| l.history.clone().unwrap_or_else(|| json!({})))
        .collect();
    config.insert("history".into(), Value::Array(history));
    Value::Object(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::HashingWriter;
    use std::ffi::{CString, OsStr};
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/nix2container")
            .join(name)
    }

    fn read_json(name: &str) -> Value {
        serde_json::from_slice(&fs::read(testdata(name)).unwrap()).unwrap()
    }

    fn rel(file: &Value) -> Vec<u8> {
        match file.get("PathHex").and_then(Value::as_str) {
            Some(h) => hex::decode(h).unwrap(),
            None => file["Path"].as_str().unwrap().as_bytes().to_vec(),
        }
    }

    fn under(root: &Path, rel: &[u8]) -> PathBuf {
        root.join(OsStr::from_bytes(rel))
    }

    /// Builds the fixture's store exactly as the Go generator does.
    fn build_store(root: &Path, files: &[Value]) {
        let mut dirs = Vec::new();
        for f in files {
            let p = under(root, &rel(f));
            let mode = f["Mode"].as_u64().unwrap_or(0) as u32;
            match f["Type"].as_str().unwrap() {
                "dir" => {
                    fs::create_dir_all(&p).unwrap();
                    dirs.push((p, mode));
                }
                "file" => {
                    fs::write(&p, f["Data"].as_str().unwrap()).unwrap();
                    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
                }
                "symlink" => std::os::unix::fs::symlink(f["Target"].as_str().unwrap(), &p).unwrap(),
                "hardlink" => fs::hard_link(root.join(f["Target"].as_str().unwrap()), &p).unwrap(),
                "fifo" => {
                    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
                    // SAFETY: `c` is a valid NUL-terminated path.
                    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) }, 0);
                }
                other => panic!("unknown fixture type {other}"),
            }
        }
        for (p, mode) in dirs.iter().rev() {
            fs::set_permissions(p, fs::Permissions::from_mode(*mode)).unwrap();
        }
    }

    fn store_paths(paths: &Value, root: &Path) -> Vec<StorePath> {
        let root_text = root.to_str().unwrap();
        let quoted = regex::escape(root_text);
        let re = |v: &Value| v.as_str().unwrap_or("").replace("@ROOT@", &quoted);
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        paths
            .as_array()
            .unwrap()
            .iter()
            .map(|p| StorePath {
                path: PathBuf::from(p["path"].as_str().unwrap().replace("@ROOT@", root_text)),
                options: p.get("options").map(|o| PathOptions {
                    rewrite: Rewrite {
                        regex: re(&o["rewrite"]["regex"]),
                        repl: text(&o["rewrite"]["repl"]),
                    },
                    perms: o
                        .get("perms")
                        .and_then(Value::as_array)
                        .map(|ps| {
                            ps.iter()
                                .map(|pm| Perm {
                                    regex: re(&pm["regex"]),
                                    mode: text(&pm["mode"]),
                                    or_mode: String::new(),
                                    uid: pm["uid"].as_i64().unwrap(),
                                    gid: pm["gid"].as_i64().unwrap(),
                                    uname: text(&pm["uname"]),
                                    gname: text(&pm["gname"]),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
            })
            .collect()
    }

    fn layer_of(paths: Vec<StorePath>, diff_id: Digest) -> N2cLayer {
        N2cLayer {
            digest: diff_id.clone(),
            size: 0,
            diff_id,
            paths,
            media_type: crate::oci::MEDIA_TYPE_LAYER.into(),
            layer_path: None,
            history: None,
        }
    }

    #[test]
    fn tree_fixture_matches_the_go_reference() {
        let fixture = read_json("tree-fixture.json");
        let expected = read_json("tree-fixture.expected.json");
        let tmp = tempfile::tempdir().unwrap();
        build_store(tmp.path(), fixture["files"].as_array().unwrap());
        for variant in fixture["variants"].as_array().unwrap() {
            let name = variant["name"].as_str().unwrap();
            let want = &expected[name];
            let want_digest: Digest = want["sha256"].as_str().unwrap().parse().unwrap();
            let layer = layer_of(store_paths(&variant["paths"], tmp.path()), want_digest);
            let options = TreeOptions {
                strip_case_hack: variant["strip_case_hack"].as_bool().unwrap(),
            };
            // These two variants cover the writer that walks and writes at
            // once; the others need the merged tree.
            assert_eq!(
                tree::is_mounted(&layer.paths, options),
                ["side-by-side", "copy-to-root"].contains(&name),
                "variant {name}"
            );
            let mut out = HashingWriter::new(Vec::new());
            write_layer_tar_with(&layer, options, &mut out).unwrap();
            let (tar, digest, len) = out.finish();
            if let Err(e) = verify_layer_digest(0, &layer, &digest) {
                let dump = std::env::temp_dir().join(format!("n2c-{name}.tar"));
                fs::write(&dump, &tar).unwrap();
                panic!("variant {name}: {e} (tar left at {})", dump.display());
            }
            assert_eq!(len, want["size"].as_u64().unwrap(), "variant {name}");
        }
    }

    fn plain(path: &Path, rewrite: &str, perms: Vec<Perm>) -> StorePath {
        StorePath {
            path: path.to_owned(),
            options: Some(PathOptions {
                rewrite: Rewrite {
                    regex: rewrite.to_owned(),
                    repl: String::new(),
                },
                perms,
            }),
        }
    }

    fn synthesise(paths: Vec<StorePath>) -> Result<Vec<u8>, N2cError> {
        let layer = layer_of(paths, Digest::of(b""));
        let mut out = Vec::new();
        write_layer_tar(&layer, &mut out)?;
        Ok(out)
    }

    #[test]
    fn collisions_follow_nix2container() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for dir in [&a, &b] {
            fs::create_dir(dir).unwrap();
        }
        fs::write(a.join("f"), "one").unwrap();
        fs::write(b.join("f"), "two").unwrap();
        let re = |p: &Path| format!("^{}", regex::escape(p.to_str().unwrap()));
        let both = |pa: Vec<Perm>, pb: Vec<Perm>| {
            synthesise(vec![plain(&a, &re(&a), pa), plain(&b, &re(&b), pb)])
        };
        // Same mode and size: the last one wins.
        let tar = both(vec![], vec![]).unwrap();
        let last = tar.windows(3).any(|w| w == b"two") && !tar.windows(3).any(|w| w == b"one");
        assert!(last, "the second source should win");

        let perm = Perm {
            regex: "f$".into(),
            uid: 7,
            ..Perm::default()
        };
        let err = both(vec![perm], vec![]).unwrap_err();
        assert!(
            matches!(err, N2cError::Collision { what: "perms", .. }),
            "{err}"
        );

        fs::write(b.join("f"), "three").unwrap();
        let err = both(vec![], vec![]).unwrap_err();
        assert!(
            matches!(err, N2cError::Collision { what: "sizes", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("`/f`"), "{err}");

        fs::write(b.join("f"), "two").unwrap();
        fs::set_permissions(b.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        let err = both(vec![], vec![]).unwrap_err();
        assert!(
            matches!(err, N2cError::Collision { what: "modes", .. }),
            "{err}"
        );
    }

    #[test]
    fn sockets_missing_paths_and_ready_blobs_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = synthesise(vec![plain(tmp.path(), "", vec![])]).unwrap_err();
        assert!(
            matches!(&err, N2cError::Socket { path } if *path == sock),
            "{err}"
        );

        let missing = tmp.path().join("missing");
        let err = synthesise(vec![plain(&missing, "", vec![])]).unwrap_err();
        assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");

        let mut layer = layer_of(vec![], Digest::of(b""));
        layer.layer_path = Some(PathBuf::from("/nix/store/x-base/layer.tar"));
        let err = write_layer_tar(&layer, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, N2cError::ReadyBlob { .. }));
    }

    #[test]
    fn a_layer_without_paths_is_an_empty_tar() {
        assert_eq!(synthesise(vec![]).unwrap(), vec![0u8; 1024]);
    }

    #[test]
    fn digest_mismatch_names_layer_paths_digests_and_hint() {
        let paths = vec![plain(Path::new("/nix/store/a-glibc"), "", vec![])];
        let layer = layer_of(paths, Digest::of(b"expected"));
        assert!(verify_layer_digest(3, &layer, &Digest::of(b"expected")).is_ok());
        let actual = Digest::of(b"actual");
        let text = verify_layer_digest(3, &layer, &actual)
            .unwrap_err()
            .to_string();
        for part in [
            "layer 3",
            "`/nix/store/a-glibc`",
            &format!("`{actual}`"),
            &format!("`{}`", Digest::of(b"expected")),
            "hint:",
            "~nix~case~hack~",
        ] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
    }

    #[test]
    fn config_follows_section_2_2() {
        let json = format!(
            r#"{{"version": 1, "image-config": {{"Env": ["A=1"]}}, "created": "0001-01-01T00:00:00Z",
               "layers": [{{"digest": "{d}", "History": {{"created_by": "nix2container"}}}},
                          {{"digest": "{d}"}}]}}"#,
            d = Digest::of(b"l")
        );
        let image = parse_image_json("i.json", json.as_bytes()).unwrap();
        let ids = [Digest::of(b"a"), Digest::of(b"b")];
        let config = config_json(&image, &ids, None);
        assert_eq!(
            config,
            json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {"Env": ["A=1"]},
                "rootfs": {"type": "layers", "diff_ids": [ids[0].to_string(), ids[1].to_string()]},
                "history": [{"created_by": "nix2container"}, {}],
            })
        );
        let mut image = image;
        image.arch = Some("arm64".into());
        image.created = Some("2024-05-01T00:00:00Z".into());
        let config = config_json(&image, &ids, None);
        assert_eq!(config["created"], "2024-05-01T00:00:00Z");
        assert_eq!(config["architecture"], "arm64");
        let config = config_json(&image, &ids, Some("2025-01-01T00:00:00Z"));
        assert_eq!(config["created"], "2025-01-01T00:00:00Z");
    }
}
