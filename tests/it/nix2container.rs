//! nix2container inputs end to end: image.json files over a temporary
//! "store" built from `testdata/nix2container/publish-fixture.json`, published
//! by the real binary to the real registry (and an OCI layout), checked with
//! skopeo and against the layer digests Go's nix2container code computes for
//! that tree (`publish-fixture.expected.json`, made by the generator in
//! `testdata/nix2container/gen/`; the tests do not need Go).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use manifold::digest::Digest;
use manifold::oci::{ImageIndex, ImageManifest, MEDIA_TYPE_LAYER, MEDIA_TYPE_LAYER_GZIP};
use serde_json::{json, Value};

use crate::harness::{skopeo, skopeo_copy_all, Auth, TestRegistry};
use crate::publish::{publish_inputs, testdata, Run};

fn fixture(name: &str) -> Value {
    let path = testdata("nix2container").join(name);
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// A temporary store holding the fixture's tree, and its layers as
/// image.json entries.
struct Store {
    dir: tempfile::TempDir,
    variants: BTreeMap<String, Value>,
    expected: BTreeMap<String, (Digest, u64)>,
}

impl Store {
    fn build() -> Store {
        let fixture = fixture("publish-fixture.json");
        let expected = fixture_expected();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut dirs = Vec::new();
        for f in fixture["files"].as_array().unwrap() {
            let p = root.join(f["Path"].as_str().unwrap());
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
                other => panic!("unexpected fixture type {other}"),
            }
        }
        for (p, mode) in dirs.iter().rev() {
            fs::set_permissions(p, fs::Permissions::from_mode(*mode)).unwrap();
        }
        let root_text = root.to_str().unwrap();
        let quoted = regex::escape(root_text);
        let variants = fixture["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let text = serde_json::to_string(&v["paths"]).unwrap();
                // Regexes get the quoted root, paths the plain one; the
                // fixture's root has no regex metacharacters but `/` and `.`.
                let text = text
                    .replace("\"^@ROOT@", &format!("\"^{}", json_escape(&quoted)))
                    .replace("@ROOT@", &json_escape(root_text));
                (
                    v["name"].as_str().unwrap().to_owned(),
                    serde_json::from_str(&text).unwrap(),
                )
            })
            .collect();
        Store {
            dir,
            variants,
            expected,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn digest(&self, name: &str) -> Digest {
        self.expected[name].0.clone()
    }

    /// An image.json layer entry as nix2container writes it.
    fn layer(&self, name: &str) -> Value {
        let (digest, size) = &self.expected[name];
        json!({
            "digest": digest.to_string(),
            "size": size,
            "diff_ids": digest.to_string(),
            "paths": self.variants[name],
            "mediatype": MEDIA_TYPE_LAYER,
            "History": {"created_by": "nix2container"},
        })
    }

    /// Writes an image.json with `layers` (names of fixture variants).
    fn image_json(&self, file: &str, arch: Option<&str>, layers: &[&str]) -> PathBuf {
        let mut doc = json!({
            "version": 1,
            "image-config": {"Env": ["PATH=/bin"], "Entrypoint": ["/bin/hello"]},
            "layers": layers.iter().map(|l| self.layer(l)).collect::<Vec<_>>(),
            "created": "0001-01-01T00:00:00Z",
        });
        if let Some(arch) = arch {
            doc["arch"] = json!(arch);
        }
        self.write_json(file, &doc)
    }

    fn write_json(&self, file: &str, doc: &Value) -> PathBuf {
        let path = self.root().join(file);
        fs::write(&path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
        path
    }

    /// Makes every store path unreadable: a publish that opens one fails.
    fn lock(&self) {
        let nix = self.root().join("nix");
        fs::set_permissions(nix, fs::Permissions::from_mode(0o000)).unwrap();
    }

    fn unlock(&self) {
        let nix = self.root().join("nix");
        fs::set_permissions(&nix, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Read-only store directories would outlive the temporary directory.
        let _ = fs::set_permissions(self.root().join("nix"), fs::Permissions::from_mode(0o755));
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(self.root())
            .status();
    }
}

fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap();
    quoted[1..quoted.len() - 1].to_owned()
}

fn fixture_expected() -> BTreeMap<String, (Digest, u64)> {
    let expected = fixture("publish-fixture.expected.json");
    expected
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, v)| {
            (
                name.clone(),
                (
                    v["sha256"].as_str().unwrap().parse().unwrap(),
                    v["size"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// The amd64 image as an older nix2container wrote it (no `arch`, no
/// `created`, no `History`, an unknown key), and a current arm64 one.
fn two_arch_inputs(store: &Store) -> (PathBuf, PathBuf) {
    let layers: Vec<Value> = ["libc", "hello-amd64", "root"]
        .iter()
        .map(|l| {
            let mut layer = store.layer(l);
            layer.as_object_mut().unwrap().remove("History");
            layer
        })
        .collect();
    let mut old = json!({
        "version": 1,
        "image-config": {"Entrypoint": ["/bin/hello"]},
        "layers": layers,
        "some-future-key": {"x": 1},
    });
    old["layers"][0]["unknown"] = json!(true);
    let amd64 = store.write_json("amd64.json", &old);
    let arm64 = store.image_json(
        "arm64.json",
        Some("arm64"),
        &["libc", "hello-arm64", "root"],
    );
    (amd64, arm64)
}

/// The config of the image manifest `digest`, read with skopeo.
fn config_of(repo: &str, digest: &Digest, manifest: &ImageManifest) -> Value {
    let config = skopeo([
        "inspect",
        "--config",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{repo}@{digest}"),
    ]);
    assert_eq!(Digest::of(&config), manifest.config.digest);
    assert_eq!(manifest.config.media_type, manifold::oci::MEDIA_TYPE_CONFIG);
    serde_json::from_slice(&config).unwrap()
}

/// (platform, manifest digest, manifest) of every index entry.
fn manifests(
    registry: &TestRegistry,
    repo: &str,
    index: &Digest,
) -> Vec<(String, Digest, ImageManifest)> {
    let raw = registry.skopeo_inspect_raw(&format!("{repo}@{index}"));
    assert_eq!(&Digest::of(&raw), index);
    let index: ImageIndex = serde_json::from_slice(&raw).unwrap();
    index
        .manifests
        .iter()
        .map(|m| {
            let raw = registry.skopeo_inspect_raw(&format!("{repo}@{}", m.digest));
            assert_eq!(Digest::of(&raw), m.digest);
            (
                m.platform.as_ref().unwrap().to_string(),
                m.digest.clone(),
                serde_json::from_slice(&raw).unwrap(),
            )
        })
        .collect()
}

fn index_digest(stdout: &str) -> Digest {
    let line = stdout.lines().next().unwrap();
    line.rsplit_once('@').unwrap().1.parse().unwrap()
}

#[test]
fn two_arch_images_publish_and_republish_without_reading_the_store() {
    let store = Store::build();
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/n2c");
    let (amd64, arm64) = two_arch_inputs(&store);
    let args = [
        "publish",
        "--repo",
        &repo,
        "--tag",
        "1.0.0",
        amd64.to_str().unwrap(),
        &format!("nix2container:{}", arm64.display()),
    ];
    let first = Run::new(&args).success();
    let index = index_digest(&first);
    let uploads = registry.blob_upload_requests();
    assert!(uploads > 0);

    let images = manifests(&registry, &repo, &index);
    let platforms: Vec<&str> = images.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for ((platform, digest, manifest), hello) in images.iter().zip(["hello-amd64", "hello-arm64"]) {
        let config = config_of(&repo, digest, manifest);
        let want: Vec<String> = ["libc", hello, "root"]
            .iter()
            .map(|l| store.digest(l).to_string())
            .collect();
        assert_eq!(config["rootfs"]["diff_ids"], json!(want), "{platform}");
        assert_eq!(config["os"], "linux");
        assert_eq!(
            config["architecture"].as_str().unwrap(),
            platform.rsplit('/').next().unwrap()
        );
        assert!(
            config.get("created").is_none(),
            "year 1 is no date: {config}"
        );
        let history = if hello == "hello-amd64" {
            json!([{}, {}, {}])
        } else {
            json!([{"created_by": "nix2container"}, {"created_by": "nix2container"}, {"created_by": "nix2container"}])
        };
        assert_eq!(config["history"], history, "{platform}");
        assert_eq!(config["config"]["Entrypoint"], json!(["/bin/hello"]));
        assert_eq!(manifest.layers.len(), 3);
        for layer in &manifest.layers {
            assert_eq!(layer.media_type, MEDIA_TYPE_LAYER_GZIP);
        }
    }
    // The shared libc layer is one blob, built and uploaded by one input
    // while the other waited for it (in-flight sharing).
    let libc = &images[0].2.layers[0].digest;
    assert_eq!(libc, &images[1].2.layers[0].digest);
    let puts = registry
        .request_log()
        .into_iter()
        .filter(|l| l.starts_with("PUT ") && l.contains(libc.hex()))
        .count();
    assert_eq!(puts, 1, "{:#?}", registry.request_log());
    // skopeo pulls everything and checks every digest (and diff_id) on the way.
    skopeo_copy_all(&format!("docker://{repo}:1.0.0"), None);

    // A fresh runner (new HOME) with no readable store: everything comes
    // from the known-layer map.
    store.lock();
    let second = Run::new(&args).success();
    store.unlock();
    assert_eq!(first, second, "same inputs, same index");
    assert_eq!(
        registry.blob_upload_requests(),
        uploads,
        "the re-publish uploaded nothing:\n{:#?}",
        registry.request_log()
    );
}

#[test]
fn uncompressed_layers_are_skipped_by_head_alone() {
    let store = Store::build();
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/plain");
    let amd64 = store.image_json(
        "amd64.json",
        Some("amd64"),
        &["libc", "hello-amd64", "empty"],
    );
    let arm64 = store.image_json("arm64.json", Some("arm64"), &["libc", "hello-arm64"]);
    let args = |tag: &'static str| {
        vec![
            "publish".to_owned(),
            "--compression".into(),
            "none".into(),
            "--repo".into(),
            repo.clone(),
            "--tag".into(),
            tag.into(),
            amd64.display().to_string(),
            arm64.display().to_string(),
        ]
    };
    let first_args = args("1");
    let first = Run::new(&first_args.iter().map(String::as_str).collect::<Vec<_>>()).success();
    let uploads = registry.blob_upload_requests();
    let images = manifests(&registry, &repo, &index_digest(&first));
    let layers: Vec<(String, Digest, u64)> = images[0]
        .2
        .layers
        .iter()
        .map(|l| (l.media_type.clone(), l.digest.clone(), l.size))
        .collect();
    let want: Vec<(String, Digest, u64)> = ["libc", "hello-amd64", "empty"]
        .iter()
        .map(|l| {
            (
                MEDIA_TYPE_LAYER.to_owned(),
                store.expected[*l].0.clone(),
                store.expected[*l].1,
            )
        })
        .collect();
    assert_eq!(layers, want, "plain tars under image.json's digests");
    skopeo_copy_all(&format!("docker://{repo}:1"), None);

    // Another tag: the known-layer map (read from tag `2`) is empty, so only
    // the HEAD on image.json's digests can spare reading the locked store.
    store.lock();
    let second_args = args("2");
    let second = Run::new(&second_args.iter().map(String::as_str).collect::<Vec<_>>()).success();
    store.unlock();
    assert_eq!(index_digest(&first), index_digest(&second));
    assert_eq!(
        registry.blob_upload_requests(),
        uploads,
        "{:#?}",
        registry.request_log()
    );
}

#[test]
fn a_changed_store_file_fails_before_any_tag() {
    let store = Store::build();
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/changed");
    let (amd64, arm64) = two_arch_inputs(&store);
    let hello = store
        .root()
        .join("nix/store/1b3kq5ks0hnl2n8wm1m4n1ydhb8k9i2-hello-amd64-1.0");
    let file = hello.join("share/greeting.txt");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(b"tampered\n")
        .unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o444)).unwrap();
    let out = publish_inputs(&repo, "1.0.0", &[&amd64, &arm64]).output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    for part in [
        "layer 1",
        hello.to_str().unwrap(),
        &store.digest("hello-amd64").to_string(),
        "hint:",
    ] {
        assert!(stderr.contains(part), "`{part}` missing from:\n{stderr}");
    }
    assert_eq!(
        registry.count_requests("PUT /v2/acme/changed/manifests/"),
        0,
        "no manifest, no tag:\n{:#?}",
        registry.request_log()
    );
}

/// A gzip tar of one file, made with the `tar` crate (not manifold's writer).
fn base_layer(dir: &Path, name: &str) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let mut builder = tar::Builder::new(Vec::new());
    let data = format!("{name} file\n").repeat(100).into_bytes();
    let mut header = tar::Header::new_ustar();
    header.set_path("etc/base-release").unwrap();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, &data[..]).unwrap();
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let path = dir.join(format!("{name}.tar.gz"));
    fs::write(&path, &gz).unwrap();
    (path, tar, gz)
}

#[test]
fn layer_path_layers_go_to_an_oci_layout_and_a_registry() {
    let store = Store::build();
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/base");
    let (base, base_tar, base_gz) = base_layer(store.root(), "base");
    // A non-reproducible layer: a ready plain tar, compressed like built ones.
    let (_, plain_tar, _) = base_layer(store.root(), "plain");
    let plain = store.root().join("plain-layer.tar");
    fs::write(&plain, &plain_tar).unwrap();
    let doc = json!({
        "version": 1,
        "image-config": {},
        "arch": "arm64",
        "layers": [
            {"digest": Digest::of(&base_gz).to_string(), "size": 0,
             "diff_ids": Digest::of(&base_tar).to_string(),
             "mediatype": MEDIA_TYPE_LAYER_GZIP, "layer-path": base.to_str().unwrap()},
            {"digest": Digest::of(&plain_tar).to_string(), "size": plain_tar.len(),
             "mediatype": MEDIA_TYPE_LAYER, "layer-path": plain.to_str().unwrap()},
            store.layer("hello-arm64"),
        ],
    });
    let image = store.write_json("image.json", &doc);
    let layout = store.root().join("layout");
    let layout_repo = format!("oci:{}", layout.display());
    // The prefix wins over `arch`.
    let input = format!("linux/arm64/v8=nix2container:{}", image.display());
    let args = [
        "publish",
        "--repo",
        &layout_repo,
        "--repo",
        &repo,
        "--tag",
        "latest",
        &input,
    ];
    let stdout = Run::new(&args).success();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(index_digest(lines[0]), index_digest(lines[1]));

    let images = manifests(&registry, &repo, &index_digest(lines[1]));
    assert_eq!(images.len(), 1);
    let (platform, digest, manifest) = &images[0];
    assert_eq!(platform, "linux/arm64/v8");
    let base_layer = &manifest.layers[0];
    assert_eq!(
        (
            base_layer.media_type.as_str(),
            &base_layer.digest,
            base_layer.size
        ),
        (
            MEDIA_TYPE_LAYER_GZIP,
            &Digest::of(&base_gz),
            base_gz.len() as u64
        ),
        "the base layer is pushed byte for byte, its size taken from the file"
    );
    assert_eq!(manifest.layers[1].media_type, MEDIA_TYPE_LAYER_GZIP);
    let config = config_of(&repo, digest, manifest);
    assert_eq!(config["variant"], "v8");
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([
            Digest::of(&base_tar).to_string(),
            Digest::of(&plain_tar).to_string(),
            store.digest("hello-arm64").to_string()
        ])
    );
    skopeo_copy_all(&format!("docker://{repo}:latest"), None);
    skopeo_copy_all(&format!("oci:{}:latest", layout.display()), None);

    // Again, with the store locked and the recompressed ready blob gone: the
    // base blob is found by HEAD, the others through the known-layer map.
    let uploads = registry.blob_upload_requests();
    fs::remove_file(&plain).unwrap();
    store.lock();
    let again = Run::new(&args).success();
    store.unlock();
    assert_eq!(again, stdout);
    assert_eq!(
        registry.blob_upload_requests(),
        uploads,
        "{:#?}",
        registry.request_log()
    );
}

/// The local layer cache is consulted from the planning of a nix2container
/// layer: a pair it remembers is checked with a HEAD, off the async
/// runtime (this used to panic: "Cannot start a runtime from within a
/// runtime"). A new tag in the same repository, so the registry's tags say
/// nothing: only the cache can spare the builds.
#[test]
fn a_locally_cached_layer_is_reused_under_a_new_tag() {
    let store = Store::build();
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/cached");
    let (amd64, arm64) = two_arch_inputs(&store);
    let cache = tempfile::tempdir().unwrap();
    let publish = |repo: &str, tag: &str| {
        // No `latest`: the registry's tags must not know the layers.
        publish_inputs(repo, tag, &[&amd64, &arm64])
            .arg("--no-auto-tags")
            .env("XDG_CACHE_HOME", cache.path())
            .success()
    };
    let first = publish(&repo, "1.0.0");
    let uploads = registry.blob_upload_requests();
    store.lock();
    let second = publish(&repo, "2.0.0");
    store.unlock();
    assert_eq!(
        index_digest(&first),
        index_digest(&second),
        "same images under another tag"
    );
    assert_eq!(
        registry.blob_upload_requests(),
        uploads,
        "nothing uploaded again:\n{:#?}",
        registry.request_log()
    );
    skopeo_copy_all(&format!("docker://{repo}:2.0.0"), None);

    // An OCI layout that does not have the blobs: the cached pair fails
    // its check there, so the layers are built again.
    let layout = tempfile::tempdir().unwrap();
    publish(&format!("oci:{}", layout.path().display()), "3.0.0");
    skopeo_copy_all(&format!("oci:{}:3.0.0", layout.path().display()), None);
}

/// Bytes process `pid` has read so far (`rchar` of `/proc/<pid>/io`, which
/// counts page-cache hits too); `None` once it has ended.
fn bytes_read(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
}

/// Against a far registry (a proxy holds the known-layer map's reads until
/// the store has been read), the wait for the map is spent building the
/// layers only it can decide: cold, the layer built meanwhile goes up; on
/// a re-run, the map says the registry has it and the build is dropped.
/// Without speculation nothing reads the store before the reads return,
/// and the proxy holds them to its limit.
#[test]
fn a_far_registry_s_wait_is_spent_building_layers_on_speculation() {
    use crate::harness::{payload, FaultProxy};

    let registry = TestRegistry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let size = 8 << 20;
    let pkg = dir
        .path()
        .join("nix/store/0f7g3s9zd0xb9kb5a2l1mz7rz6m0ik8p-big");
    fs::create_dir_all(&pkg).unwrap();
    fs::write(pkg.join("data"), payload(size, 7)).unwrap();
    // The layer's digest and size, as the tar writer synthesises it.
    let mut doc = json!({
        "version": 1,
        "image-config": {},
        "arch": "amd64",
        "layers": [{
            "digest": Digest::of(b"").to_string(),
            "size": 0,
            "diff_ids": Digest::of(b"").to_string(),
            "paths": [{"path": pkg.to_str().unwrap()}],
            "mediatype": MEDIA_TYPE_LAYER,
        }],
    });
    let draft =
        manifold::input::nix2container::parse_image_json("draft", doc.to_string().as_bytes())
            .unwrap();
    let mut tar = Vec::new();
    manifold::input::nix2container::write_layer_tar(&draft.layers[0], &mut tar).unwrap();
    let digest = Digest::of(&tar).to_string();
    doc["layers"][0]["digest"] = json!(digest);
    doc["layers"][0]["diff_ids"] = json!(digest);
    doc["layers"][0]["size"] = json!(tar.len());
    let image = dir.path().join("image.json");
    fs::write(&image, doc.to_string()).unwrap();

    for run in ["cold", "re-run", "near re-run"] {
        let store_read = dir.path().join(format!("{run}-store-read"));
        let held = FaultProxy::holding(registry.port(), "GET /v2/acme/far/manifests/", &store_read);
        // A registry that answers at once (no proxy): nothing is built.
        let host = if run == "near re-run" {
            registry.host()
        } else {
            held.host()
        };
        let marker = store_read.clone();
        let commits = || registry.count_requests("PUT /v2/acme/far/blobs/uploads/");
        let before = commits();
        let out = Run::new(&["publish", "--tag", "v1", "--repo"])
            .arg(&format!("{host}/acme/far"))
            .arg(&format!("nix2container:{}", image.display()))
            .output_watched(move |pid| {
                while let Some(read) = bytes_read(pid) {
                    if read >= size as u64 {
                        fs::write(&marker, b"").unwrap();
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{run}: {stderr}");
        let uploaded = commits() - before;
        if run == "cold" {
            // The layer and the config.
            assert_eq!(uploaded, 2, "{stderr}");
        } else {
            assert_eq!(uploaded, 0, "{run}: {stderr}");
            assert!(stderr.contains("already published"), "{run}: {stderr}");
        }
        if run == "near re-run" {
            assert!(!store_read.exists(), "the store was read: {stderr}");
        } else {
            assert!(store_read.exists(), "{run}: the store was not read");
            assert_eq!(
                held.counts().held_in_vain,
                0,
                "{run}: the layer waited for the registry reads: {stderr}"
            );
        }
    }
    skopeo_copy_all(&format!("{}/acme/far:v1", registry.host()), None);
}
