//! Split-runner CI (issue 8): per-architecture pushes by digest on separate
//! "runners", assembled later from `docker://` inputs; cross-repository and
//! cross-registry assembly; `--arch-tags`; batch files; `oci:` inputs. All
//! against the real registry, checked by reading back and with skopeo.

use std::path::Path;

use manifold::digest::Digest;
use manifold::oci::{ImageIndex, ImageManifest};

use manifold::registry::{BlobBody, ClientOptions, Credentials, RegistryError, Secret};

use crate::harness::{
    client_at, random_archive, skopeo, skopeo_copy_all, skopeo_copy_all_to, Auth, FaultProxy,
    FaultRates, QuirkServer, TestRegistry,
};
use crate::publish::{publish_inputs, testdata, Run};

/// `manifold publish --no-tags` of one input: the printed `<repo>@<digest>`.
fn push_by_digest(repo: &str, input: &Path) -> String {
    let out = Run::new(&[
        "publish",
        "--no-tags",
        "--repo",
        repo,
        input.to_str().unwrap(),
    ])
    .success();
    let line = out.trim().to_owned();
    assert_eq!(line.lines().count(), 1, "{out}");
    let (printed, digest) = line.split_once('@').unwrap();
    assert_eq!(printed, repo);
    digest.parse::<Digest>().unwrap();
    line
}

/// The index at `reference`, read with skopeo, and its digest.
fn index_at(registry: &TestRegistry, reference: &str) -> (Digest, ImageIndex) {
    let raw = registry.skopeo_inspect_raw(reference);
    (Digest::of(&raw), serde_json::from_slice(&raw).unwrap())
}

fn platforms(index: &ImageIndex) -> Vec<String> {
    index
        .manifests
        .iter()
        .map(|m| m.platform.as_ref().unwrap().to_string())
        .collect()
}

/// The child manifest digest of each one-image index pushed by a runner.
fn child_of(registry: &TestRegistry, by_digest: &str) -> Digest {
    let (_, index) = index_at(registry, by_digest);
    assert_eq!(index.manifests.len(), 1);
    index.manifests[0].digest.clone()
}

#[test]
fn runners_push_by_digest_and_the_final_job_assembles_with_no_upload() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/split");
    let amd64 = testdata("fd-amd64.tar");
    let arm64 = testdata("fd-arm64.tar.zst");

    // Runner 1, with GITHUB_OUTPUT: the output names the same digest.
    let outputs = tempfile::tempdir().unwrap();
    let output_file = outputs.path().join("out");
    let out = Run::new(&[
        "publish",
        "--no-tags",
        "--repo",
        &repo,
        amd64.to_str().unwrap(),
    ])
    .env("GITHUB_OUTPUT", &output_file)
    .success();
    let first = out.trim().to_owned();
    let written = std::fs::read_to_string(&output_file).unwrap();
    let (_, digest) = first.split_once('@').unwrap();
    assert!(written.contains(&format!("digest={digest}")), "{written}");
    assert!(written.contains(&format!("image={first}")), "{written}");
    assert!(
        !registry.skopeo_inspect_raw(&first).is_empty(),
        "pushed by digest"
    );
    // No tag: every manifest PUT was by digest (skopeo cannot list the tags
    // of a repository that has none: distribution answers 404).
    let puts: Vec<String> = registry
        .request_log()
        .into_iter()
        .filter(|l| l.starts_with("PUT /v2/acme/split/manifests/"))
        .collect();
    assert!(!puts.is_empty());
    assert!(
        puts.iter().all(|l| l.contains("/manifests/sha256:")),
        "--no-tags moved a tag: {puts:?}"
    );

    // Runner 2.
    let second = push_by_digest(&repo, &arm64);

    // A dry run of the final job reads, and writes nothing.
    let puts_before = registry.count_requests("PUT ");
    let plan = Run::new(&[
        "publish",
        "--dry-run",
        "--repo",
        &repo,
        "--tag",
        "1.0.0",
        &format!("docker://{first}"),
        &format!("docker://{second}"),
    ])
    .success();
    assert!(plan.starts_with("dry run: nothing was written"), "{plan}");
    assert!(plan.contains("image linux/arm64 "), "{plan}");
    assert_eq!(registry.count_requests("PUT "), puts_before);

    // The final job: both by digest, into an index, tagged.
    let uploads_before = registry.blob_upload_requests();
    let out = Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "1.0.0",
        &format!("docker://{first}"),
        &format!("docker://{second}"),
    ])
    .success();
    assert_eq!(
        registry.blob_upload_requests(),
        uploads_before,
        "assembling in the same repository uploaded or mounted blobs:\n{:#?}",
        registry.request_log()
    );
    let (digest, index) = index_at(&registry, &format!("{repo}:1.0.0"));
    assert_eq!(out.trim(), format!("{repo}@{digest}"));
    assert_eq!(platforms(&index), ["linux/amd64", "linux/arm64"]);
    // The per-architecture manifests are the runners' own, byte for byte.
    assert_eq!(index.manifests[0].digest, child_of(&registry, &first));
    assert_eq!(index.manifests[1].digest, child_of(&registry, &second));
    skopeo_copy_all(&format!("{repo}:1.0.0"), None);
}

#[test]
fn assembling_in_another_repository_mounts_and_across_registries_copies() {
    let source = TestRegistry::start(Auth::None);
    let repo = source.repo("acme/runner");
    let amd64 = push_by_digest(&repo, &testdata("fd-amd64.tar"));
    let arm64 = push_by_digest(&repo, &testdata("fd-arm64.tar.zst"));
    let inputs = [format!("docker://{amd64}"), format!("docker://{arm64}")];

    // Same registry, another repository: mounts, no PATCH of bytes. A dry
    // run plans those mounts: nothing to upload, and nothing is sent.
    let other = source.repo("acme/final");
    let posts_before = source.count_requests("POST ");
    let plan = Run::new(&[
        "publish",
        "--dry-run",
        "--repo",
        &other,
        "--tag",
        "1",
        &inputs[0],
        &inputs[1],
    ])
    .success();
    assert!(plan.contains("blobs: 0 bytes to upload, "), "{plan}");
    assert_eq!(source.count_requests("POST "), posts_before);
    let patches_before = source.count_requests("PATCH ");
    let puts_before = source.count_requests("PUT /v2/acme/final/blobs/uploads/");
    Run::new(&[
        "publish", "--repo", &other, "--tag", "1", &inputs[0], &inputs[1],
    ])
    .success();
    assert_eq!(source.count_requests("PATCH "), patches_before);
    assert_eq!(
        source.count_requests("PUT /v2/acme/final/blobs/uploads/"),
        puts_before
    );
    assert!(
        source
            .request_log()
            .iter()
            .any(|l| l.starts_with("POST /v2/acme/final/blobs/uploads/?") && l.contains("mount=")),
        "no mount was asked for"
    );
    let (_, index) = index_at(&source, &format!("{other}:1"));
    assert_eq!(platforms(&index), ["linux/amd64", "linux/arm64"]);
    skopeo_copy_all(&format!("{other}:1"), None);

    // Another registry: the bytes are copied; skopeo pulls everything back.
    let target = TestRegistry::start(Auth::None);
    let far = target.repo("acme/far");
    Run::new(&[
        "publish", "--repo", &far, "--tag", "1", &inputs[0], &inputs[1],
    ])
    .success();
    assert!(target.blob_upload_requests() > 0);
    let (_, far_index) = index_at(&target, &format!("{far}:1"));
    // Each image asks once for each blob it names: one found missing is
    // sent without a second HEAD.
    let named: usize = far_index
        .manifests
        .iter()
        .map(|child| {
            let raw = target.skopeo_inspect_raw(&format!("{far}@{}", child.digest));
            let manifest: ImageManifest = serde_json::from_slice(&raw).unwrap();
            1 + manifest.layers.len()
        })
        .sum();
    let heads: Vec<String> = target
        .request_log()
        .into_iter()
        .filter(|l| l.starts_with("HEAD /v2/acme/far/blobs/"))
        .collect();
    assert_eq!(heads.len(), named, "{heads:#?}");
    assert_eq!(
        far_index.manifests, index.manifests,
        "same children, same digests"
    );
    skopeo_copy_all(&format!("{far}:1"), None);

    // A platform prefix picks one child of an index.
    let pick = target.repo("acme/pick");
    Run::new(&[
        "publish",
        "--repo",
        &pick,
        "--tag",
        "1",
        &format!("linux/arm64=docker://{other}:1"),
    ])
    .success();
    let (_, picked) = index_at(&target, &format!("{pick}:1"));
    assert_eq!(platforms(&picked), ["linux/arm64"]);
    assert_eq!(picked.manifests[0].digest, index.manifests[1].digest);
}

#[test]
fn arch_tags_name_each_per_architecture_manifest() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/arch");
    let amd64 = testdata("fd-amd64.tar");
    let arm64 = testdata("fd-arm64.tar.zst");
    Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "2.0",
        "--arch-tags",
        amd64.to_str().unwrap(),
        &format!("linux/arm/v7={}", arm64.display()),
    ])
    .success();
    let (_, index) = index_at(&registry, &format!("{repo}:2.0"));
    for (suffix, entry) in ["amd64", "armv7"].iter().zip(&index.manifests) {
        let raw = registry.skopeo_inspect_raw(&format!("{repo}:2.0-{suffix}"));
        assert_eq!(Digest::of(&raw), entry.digest, "tag 2.0-{suffix}");
        let manifest: ImageManifest = serde_json::from_slice(&raw).unwrap();
        assert_eq!(manifest.media_type, manifold::oci::MEDIA_TYPE_MANIFEST);
    }
}

/// `publish --config DIR/images.toml` of a batch file written there with
/// `toml` (its relative paths are relative to `dir`).
fn batch(dir: &Path, toml: &str) -> Run {
    let config = dir.join("images.toml");
    std::fs::write(&config, toml).unwrap();
    Run::new(&["publish", "--config", config.to_str().unwrap()])
}

/// One image of a batch failing holds back every tag of the batch: the
/// images that got their blobs, manifests and index in place wait for the
/// others before tagging, and are left untagged when one fails.
#[test]
fn a_failing_image_holds_back_the_tags_of_the_whole_batch() {
    let registry = TestRegistry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let (good, other, bad) = (
        registry.repo("acme/good"),
        registry.repo("acme/other"),
        registry.repo("acme/bad"),
    );
    let run = batch(
        dir.path(),
        &format!(
            r#"
[[image]]
repo = "{good}"
inputs = ["{}"]

[[image]]
repo = "{other}"
inputs = ["{}"]

[[image]]
repo = "{bad}"
inputs = ["{}"]
"#,
            testdata("fd-amd64.tar").display(),
            testdata("stream-arm64").display(),
            testdata("bad").join("truncated-in-layer.tar").display(),
        ),
    );
    let out = run.arg("--tag").arg("v1").output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("image 3 of the batch failed; images 1, 2 were held back untagged"),
        "{stderr}"
    );
    assert!(stderr.contains("truncated"), "{stderr}");
    // The good images were pushed (their index is in place), not tagged.
    let log = registry.request_log();
    for name in ["acme/good", "acme/other"] {
        assert!(
            log.iter()
                .any(|l| l.starts_with(&format!("PUT /v2/{name}/manifests/sha256:"))),
            "{name}: {log:#?}"
        );
        assert!(
            !log.iter()
                .any(|l| l.starts_with(&format!("PUT /v2/{name}/manifests/v1"))),
            "{name} was tagged: {log:#?}"
        );
    }
}

#[test]
fn a_batch_uploads_shared_layers_once_per_registry() {
    let registry = TestRegistry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    // Two images with the same layers (one archive plain, one gzipped).
    std::fs::copy(testdata("fd-amd64.tar"), dir.path().join("a.tar")).unwrap();
    std::fs::copy(testdata("fd-amd64.tar.gz"), dir.path().join("b.tar.gz")).unwrap();
    std::fs::copy(testdata("fd-arm64.tar.zst"), dir.path().join("c.tar.zst")).unwrap();
    let (first, second) = (registry.repo("acme/one"), registry.repo("acme/two"));
    let run = batch(
        dir.path(),
        &format!(
            r#"
[[image]]
repo = "{first}"
inputs = ["a.tar", "c.tar.zst"]
tags = ["v1"]
annotations = {{ "org.example.batch" = "one" }}

[[image]]
repo = ["{second}"]
inputs = ["b.tar.gz"]
platforms = ["linux/amd64"]
"#
        ),
    );
    let (outputs, metadata) = (dir.path().join("outputs"), dir.path().join("meta.json"));
    let out = run
        .arg("--tag")
        .arg("all")
        .arg("--metadata-file")
        .arg(metadata.to_str().unwrap())
        .env("GITHUB_OUTPUT", &outputs)
        .success();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with(&format!("{first}@")), "{out}");
    assert!(lines[1].starts_with(&format!("{second}@")), "{out}");
    let written = std::fs::read_to_string(&outputs).unwrap();
    assert_eq!(
        written,
        format!(
            "images<<MANIFOLD_EOF_IMAGES\n{}\n{}\nMANIFOLD_EOF_IMAGES\n",
            lines[0], lines[1]
        )
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    assert_eq!(meta[1]["image"], lines[1]);
    assert_eq!(meta[0]["tags"], serde_json::json!(["all", "v1"]));

    let (_, one) = index_at(&registry, &format!("{first}:v1"));
    let (_, two) = index_at(&registry, &format!("{second}:all"));
    assert_eq!(platforms(&one), ["linux/amd64", "linux/arm64"]);
    assert_eq!(one.annotations["org.example.batch"], "one");
    index_at(&registry, &format!("{first}:all"));
    // The amd64 layers were uploaded into the first repository only (within
    // it, the amd64 and arm64 inputs may share a layer: that is a single
    // publish's business); the second repository mounted them.
    let raw = registry.skopeo_inspect_raw(&format!("{second}@{}", two.manifests[0].digest));
    let manifest: ImageManifest = serde_json::from_slice(&raw).unwrap();
    let log = registry.request_log();
    for layer in &manifest.layers {
        let streamed: Vec<&String> = log
            .iter()
            .filter(|l| l.starts_with("PUT ") && l.contains(&layer.digest.to_string()))
            .collect();
        assert!(
            !streamed.is_empty(),
            "layer {} never uploaded",
            layer.digest
        );
        assert!(
            streamed.iter().all(|l| l.contains("/acme/one/")),
            "layer {} uploaded to the second repository: {streamed:?}",
            layer.digest
        );
        assert!(
            log.iter()
                .any(|l| l.starts_with("POST /v2/acme/two/blobs/uploads/?")
                    && l.contains(&format!("mount=sha256%3A{}", layer.digest.hex()))
                    && l.ends_with(" 201")),
            "layer {} not mounted into the second repository: {:#?}",
            layer.digest,
            log.iter()
                .filter(|l| l.contains("/acme/two/"))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(
        registry.count_requests("PATCH /v2/acme/two/"),
        0,
        "the second image streamed layers:\n{log:#?}"
    );
    skopeo_copy_all(&format!("{second}:all"), None);
}

/// A later image of a batch decides its layers only once the images before
/// it on the same registry are done. Here five inputs, more than there are
/// encoding slots, reach their layer while the first image's only input has
/// not started yet: layers named after their diff_id (looked up as they are
/// met), and small ones named `layer.tar` in archives whose manifest comes
/// last (looked up at the end, when the reader learns which member is the
/// layer). Waiting for the first image with a slot in hand left it none to
/// encode with, for ever. The shared layer is still uploaded by the first
/// image and mounted into the second.
#[test]
fn a_later_image_with_more_inputs_than_slots_waits_for_the_first_without_deadlock() {
    use crate::harness::{random_archive_manifest_last, random_hinted_archive, write_script};
    use std::time::Duration;

    let registry = TestRegistry::start(Auth::None);
    for shape in ["hinted", "manifest-last"] {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (
            registry.repo(&format!("acme/first-{shape}")),
            registry.repo(&format!("acme/later-{shape}")),
        );
        let archives: Vec<_> = (0..5)
            .map(|i| {
                let path = dir.path().join(format!("{i}.tar"));
                match shape {
                    "hinted" => random_hinted_archive(&path, 1 << 20, 60 + i),
                    _ => random_archive_manifest_last(&path, 256 << 10, 70 + i),
                }
            })
            .collect();
        write_script(
            &dir.path().join("slow"),
            &format!("#!/bin/sh\nsleep 2\ncat '{}'\n", archives[0].display()),
        );
        let wanted = [
            "linux/amd64",
            "linux/arm64",
            "linux/386",
            "linux/ppc64le",
            "linux/s390x",
        ];
        let later: Vec<String> = wanted
            .iter()
            .zip(&archives)
            .map(|(platform, archive)| {
                let script = dir
                    .path()
                    .join(format!("stream-{}", platform.replace('/', "-")));
                // Past the registry reads: the layer is looked up at once.
                write_script(
                    &script,
                    &format!("#!/bin/sh\nsleep 0.5\ncat '{}'\n", archive.display()),
                );
                format!("\"{platform}=stream:{}\"", script.display())
            })
            .collect();
        let out = batch(
            dir.path(),
            &format!(
                r#"
[[image]]
repo = "{first}"
inputs = ["stream:slow"]

[[image]]
repo = "{second}"
inputs = [{}]
"#,
                later.join(", ")
            ),
        )
        .arg("--tag")
        .arg("v1")
        .output_within(Duration::from_secs(60))
        .unwrap_or_else(|stderr| panic!("{shape}: still running after 60 s: deadlocked\n{stderr}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{shape}: {stderr}");
        let (_, later_index) = index_at(&registry, &format!("{second}:v1"));
        assert_eq!(platforms(&later_index), wanted.map(String::from));
        // The first image's layer went up once, into the first repository.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let first_image = stdout.lines().next().unwrap();
        assert!(first_image.starts_with(&format!("{first}@")), "{stdout}");
        let shared = layers_of(&registry, first_image)[0].digest.clone();
        let log = registry.request_log();
        let puts: Vec<&String> = log
            .iter()
            .filter(|l| l.starts_with("PUT ") && l.contains(&shared.to_string()))
            .collect();
        assert_eq!(puts.len(), 1, "{shape}: {puts:#?}");
        assert!(
            puts[0].contains(&format!("/acme/first-{shape}/")),
            "{puts:#?}"
        );
        assert!(
            log.iter().any(|l| l
                .starts_with(&format!("POST /v2/acme/later-{shape}/blobs/uploads/?"))
                && l.contains(&format!("mount=sha256%3A{}", shared.hex()))
                && l.ends_with(" 201")),
            "{shape}: {log:#?}"
        );
        skopeo_copy_all(&format!("{second}:v1"), None);
    }
}

/// Publishes the two fd fixtures to the OCI layout `layout`, tagged `v1`,
/// and returns the index written there.
fn publish_fixtures_to_layout(layout: &Path) -> ImageIndex {
    let (amd64, arm64) = (testdata("fd-amd64.tar"), testdata("fd-arm64.tar.zst"));
    publish_inputs(
        &format!("oci:{}", layout.display()),
        "v1",
        &[&amd64, &arm64],
    )
    .success();
    let written: ImageIndex =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = &written.manifests[0];
    serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(entry.digest.hex())).unwrap(),
    )
    .unwrap()
}

#[test]
fn an_oci_layout_is_an_input() {
    let registry = TestRegistry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let layout_index = publish_fixtures_to_layout(&layout);

    let repo = registry.repo("acme/from-layout");
    Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "x",
        &format!("oci:{}:v1", layout.display()),
    ])
    .success();
    let (_, index) = index_at(&registry, &format!("{repo}:x"));
    assert_eq!(index.manifests, layout_index.manifests);
    skopeo_copy_all(&format!("{repo}:x"), None);

    // A missing name is refused, naming what the layout has.
    let out = Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "y",
        &format!("oci:{}:nope", layout.display()),
    ])
    .output();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no entry named `nope` (names: `v1`)"),
        "{stderr}"
    );
}

/// `tar -cf` of a layout directory, names `./`-prefixed as `tar -C DIR .`
/// writes them.
fn tar_layout(dir: &Path, to: &Path) {
    let status = std::process::Command::new("tar")
        .arg("-cf")
        .arg(to)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn an_oci_archive_is_an_input() {
    let registry = TestRegistry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let layout_index = publish_fixtures_to_layout(&layout);
    let archive = dir.path().join("layout.tar");
    tar_layout(&layout, &archive);

    // Named, with the entry's name; and detected, as its only entry.
    let repo = registry.repo("acme/from-archive");
    for (tag, input) in [
        ("named", format!("oci-archive:{}:v1", archive.display())),
        ("detected", archive.display().to_string()),
    ] {
        publish_inputs(&repo, tag, &[Path::new(&input)]).success();
        let (_, index) = index_at(&registry, &format!("{repo}:{tag}"));
        assert_eq!(index.manifests, layout_index.manifests, "{input}");
    }
    skopeo_copy_all(&format!("{repo}:named"), None);

    // skopeo's own archive of a docker-archive, gzip-compressed: the same
    // image as skopeo reads it.
    let sk = dir.path().join("sk.tar");
    skopeo([
        "copy".to_owned(),
        format!("docker-archive:{}", testdata("fd-amd64.tar").display()),
        format!("oci-archive:{}:v1", sk.display()),
    ]);
    let gz = dir.path().join("sk.tar.gz");
    let gzip = std::process::Command::new("gzip")
        .args(["-k", "-1"])
        .arg(&sk)
        .status()
        .unwrap();
    assert!(gzip.success());
    Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "sk",
        &format!("oci-archive:{}", gz.display()),
    ])
    .success();
    let raw = registry.skopeo_inspect_raw(&format!("{repo}:sk"));
    let index: ImageIndex = serde_json::from_slice(&raw).unwrap();
    let sk_manifest = skopeo([
        "inspect".to_owned(),
        "--raw".to_owned(),
        format!("oci-archive:{}:v1", sk.display()),
    ]);
    assert_eq!(index.manifests.len(), 1);
    assert_eq!(index.manifests[0].digest, Digest::of(&sk_manifest));

    // A platform given before the input goes into the index, with the
    // warning a built image gets when its config says otherwise.
    let input = format!("linux/arm64=oci-archive:{}", sk.display());
    let out = publish_inputs(&repo, "arm", &[Path::new(&input)]).output();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "warning: `{input}` says its platform is `linux/amd64`; publishing it as `linux/arm64` as asked"
        )),
        "{stderr}"
    );
    let (_, index) = index_at(&registry, &format!("{repo}:arm"));
    assert_eq!(
        index.manifests[0]
            .platform
            .as_ref()
            .map(ToString::to_string),
        Some("linux/arm64".to_owned())
    );

    // Without the name a compressed archive is read as a docker-archive,
    // and refused with the hint to name it.
    let out = publish_inputs(&repo, "no", &[&gz]).output();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "`{}` is an OCI image layout archive without `manifest.json`, not a docker-archive\nhint: name its kind, as in `oci-archive:PATH`",
            gz.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        registry.count_requests("PUT /v2/acme/from-archive/manifests/no "),
        0,
        "a refused input moved a tag"
    );
}

/// `manifold inspect` reads OCI layouts, as directories and archives, like
/// registry references: the entry named, its platforms, and which names
/// point at it.
#[test]
fn inspect_reads_oci_layouts_and_archives() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let index = publish_fixtures_to_layout(&layout);
    let written: ImageIndex =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = written.manifests[0].digest.to_string();
    let archive = dir.path().join("layout.tar");
    tar_layout(&layout, &archive);
    for (reference, shown) in [
        (
            format!("oci:{}:v1", layout.display()),
            format!("oci:{}", layout.display()),
        ),
        (
            format!("oci-archive:{}:v1", archive.display()),
            format!("oci-archive:{}", archive.display()),
        ),
    ] {
        let text = Run::new(&["inspect", &reference, "--tag", "v1", "--tag", "v2"]).success();
        assert!(text.starts_with(&format!("{shown}@{digest}\n")), "{text}");
        assert!(text.contains("tag v1 points here"), "{text}");
        assert!(text.contains("tag v2 points elsewhere"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&Run::new(&["inspect", "--json", &reference]).success()).unwrap();
        let platforms: Vec<&str> = json["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["platform"].as_str().unwrap())
            .collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
        for (image, entry) in json["images"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&index.manifests)
        {
            assert_eq!(image["digest"], entry.digest.to_string());
        }
    }
    let missing = Run::new(&["inspect", &format!("oci:{}:nope", layout.display())]).output();
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no entry named `nope`"), "{stderr}");
}

#[test]
fn a_docker_v2s2_image_is_refused_rather_than_mixed_into_an_oci_index() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/v2s2");
    skopeo([
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("docker-archive:{}", testdata("fd-amd64.tar").display()),
        &format!("docker://{repo}:old"),
    ]);
    let out = Run::new(&[
        "publish",
        "--repo",
        &registry.repo("acme/mixed"),
        "--tag",
        "1",
        &format!("docker://{repo}:old"),
    ])
    .output();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is a `application/vnd.docker.distribution.manifest.v2+json` document, which cannot go into an OCI index"),
        "{stderr}"
    );
    assert!(
        stderr.contains("or publish with `--format docker`"),
        "{stderr}"
    );
    assert_eq!(registry.count_requests("PUT /v2/acme/mixed/"), 0);

    // With Docker media types throughout, it is taken as it is.
    let docker = registry.repo("acme/docker-list");
    Run::new(&[
        "publish",
        "--format",
        "docker",
        "--repo",
        &docker,
        "--tag",
        "1",
        &format!("docker://{repo}:old"),
    ])
    .success();
    let (_, list) = index_at(&registry, &format!("{docker}:1"));
    assert_eq!(list.media_type, manifold::oci::MEDIA_TYPE_DOCKER_LIST);
    let original = registry.skopeo_inspect_raw(&format!("{repo}:old"));
    assert_eq!(list.manifests[0].digest, Digest::of(&original));
    assert_eq!(platforms(&list), ["linux/amd64"]);
    skopeo_copy_all(&format!("{docker}:1"), None);
}

#[test]
fn assembly_mounts_with_bearer_tokens() {
    let registry = TestRegistry::start(Auth::token());
    let repo = registry.repo("acme/tok");
    let with_creds = |args: &[&str]| {
        let mut all = vec!["publish"];
        all.extend_from_slice(args);
        Run::new(&all).signed_in(b"s3cret-pass\n").success()
    };
    let amd64 = testdata("fd-amd64.tar");
    let first = with_creds(&["--no-tags", "--repo", &repo, amd64.to_str().unwrap()]);
    let other = registry.repo("acme/tok-final");
    let patches_before = registry.count_requests("PATCH ");
    with_creds(&[
        "--repo",
        &other,
        "--tag",
        "1",
        &format!("docker://{}", first.trim()),
    ]);
    assert_eq!(registry.count_requests("PATCH "), patches_before);
    let (_, index) = index_at(&registry, &format!("{other}:1"));
    assert_eq!(platforms(&index), ["linux/amd64"]);
    // The token for the mount carried pull on the source repository.
    assert!(
        registry
            .token_requests()
            .iter()
            .any(|scopes| scopes.contains(&"repository:acme/tok:pull".to_owned())),
        "{:?}",
        registry.token_requests()
    );
}

#[test]
fn a_layout_written_by_skopeo_is_published_with_the_same_manifests() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/orig");
    let amd64 = testdata("fd-amd64.tar");
    let arm64 = testdata("fd-arm64.tar.zst");
    Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "1",
        amd64.to_str().unwrap(),
        arm64.to_str().unwrap(),
    ])
    .success();
    let (_, original) = index_at(&registry, &format!("{repo}:1"));

    let dir = tempfile::tempdir().unwrap();
    skopeo_copy_all_to(
        &format!("{repo}:1"),
        None,
        &format!("{}:pulled", dir.path().display()),
    );

    // Into a fresh registry: every blob comes from the layout's files.
    let target = TestRegistry::start(Auth::None);
    let copy = target.repo("acme/copy");
    Run::new(&[
        "publish",
        "--repo",
        &copy,
        "--tag",
        "1",
        &format!("oci:{}:pulled", dir.path().display()),
    ])
    .success();
    let (_, copied) = index_at(&target, &format!("{copy}:1"));
    assert_eq!(copied.manifests, original.manifests);
    skopeo_copy_all(&format!("{copy}:1"), None);
}

/// The layers of the one image behind a one-image index.
fn layers_of(registry: &TestRegistry, by_digest: &str) -> Vec<manifold::oci::Descriptor> {
    let repo = by_digest.split_once('@').unwrap().0;
    let child = child_of(registry, by_digest);
    let raw = registry.skopeo_inspect_raw(&format!("{repo}@{child}"));
    let manifest: ImageManifest = serde_json::from_slice(&raw).unwrap();
    manifest.layers
}

/// GETs of the blob `digest` in `registry`'s log.
fn blob_gets(registry: &TestRegistry, digest: &Digest) -> usize {
    registry.count_requests(&format!("GET /v2/acme/big/blobs/{digest}"))
}

#[test]
fn a_large_layer_streams_across_registries_monolithic_chunked_and_into_a_layout() {
    let dir = tempfile::tempdir().unwrap();
    let archive = random_archive(&dir.path().join("random.tar"), 16 << 20, 8);
    let source = TestRegistry::start(Auth::None);
    let by_digest = push_by_digest(&source.repo("acme/big"), &archive);
    let layers = layers_of(&source, &by_digest);
    assert_eq!(layers.len(), 1);
    let layer = &layers[0];
    assert!(layer.size > 16 << 20, "random bytes do not compress");
    assert_eq!(blob_gets(&source, &layer.digest), 0);
    let input = format!("docker://{by_digest}");

    // Monolithic: one GET of the source, one PUT ?digest= carrying it.
    let target = TestRegistry::start(Auth::None);
    let far = target.repo("acme/far");
    Run::new(&["publish", "--repo", &far, "--tag", "1", &input]).success();
    assert_eq!(
        blob_gets(&source, &layer.digest),
        1,
        "the layer is read once"
    );
    let puts: Vec<String> = target
        .request_log()
        .into_iter()
        .filter(|l| {
            l.starts_with("PUT /v2/acme/far/blobs/uploads/")
                && l.contains(&layer.digest.hex()[..12])
        })
        .collect();
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(target.count_requests("PATCH /v2/acme/far/"), 0);
    skopeo_copy_all(&format!("{far}:1"), None);

    // Chunked: 4 MiB PATCHes read from the source stream.
    let chunked = target.repo("acme/chunked");
    Run::new(&[
        "publish",
        "--chunk-size",
        "4MiB",
        "--repo",
        &chunked,
        "--tag",
        "1",
        &input,
    ])
    .success();
    assert_eq!(blob_gets(&source, &layer.digest), 2);
    let patches = target.count_requests("PATCH /v2/acme/chunked/blobs/uploads/");
    assert!(
        patches >= 5,
        "{patches} PATCHes for a 16 MiB layer in 4 MiB chunks"
    );
    skopeo_copy_all(&format!("{chunked}:1"), None);

    // Into an OCI layout: the blob file holds exactly the layer.
    let layout = dir.path().join("layout");
    Run::new(&[
        "publish",
        "--repo",
        &format!("oci:{}", layout.display()),
        "--tag",
        "1",
        &input,
    ])
    .success();
    assert_eq!(blob_gets(&source, &layer.digest), 3);
    let file = std::fs::read(layout.join("blobs/sha256").join(layer.digest.hex())).unwrap();
    assert_eq!(file.len() as u64, layer.size);
    assert_eq!(Digest::of(&file), layer.digest);
    let stray: Vec<_> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() != 64)
        .collect();
    assert!(stray.is_empty(), "temp files left: {stray:?}");

    // And from that layout (its files, no spool) into a third registry.
    let third = TestRegistry::start(Auth::None);
    let from_layout = third.repo("acme/from-layout");
    Run::new(&[
        "publish",
        "--repo",
        &from_layout,
        "--tag",
        "1",
        &format!("oci:{}:1", layout.display()),
    ])
    .success();
    skopeo_copy_all(&format!("{from_layout}:1"), None);
}

#[test]
fn a_cross_registry_copy_survives_faults_at_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let archive = random_archive(&dir.path().join("random.tar"), 6 << 20, 9);
    let source = TestRegistry::start(Auth::None);
    let by_digest = push_by_digest(&source.repo("acme/big"), &archive);
    let layer = layers_of(&source, &by_digest).remove(0);

    let target = TestRegistry::start(Auth::None);
    let rates = FaultRates {
        unavailable: 0.1,
        too_many: 0.0,
        drop: 0.1,
        cut_body: 0.3,
        slow: 0.0,
    };
    let proxy = FaultProxy::start(target.port(), 8, rates);
    let repo = format!("{}/acme/faulty", proxy.host());
    Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "1",
        "--max-retries",
        "12",
        "--retry-base-ms",
        "20",
        &format!("docker://{by_digest}"),
    ])
    .success();
    let counts = proxy.counts();
    assert!(counts.failures() > 0, "no fault was injected: {counts:?}");
    // Which requests the faults hit depends on timing here (blobs go up
    // concurrently); `a_cut_upload_reads_the_source_again` pins the re-read.
    let gets = blob_gets(&source, &layer.digest);
    assert!(gets >= 1);
    eprintln!("{counts:?}; the layer was read {gets} time(s)");
    // Straight from the registry, not through the proxy.
    skopeo_copy_all(&format!("{}/acme/faulty:1", target.host()), None);
}

/// Random bytes pushed into `registry` as a blob of `repo`.
async fn pushed_blob(registry: &TestRegistry, repo: &str, size: usize) -> (Digest, u64) {
    use rand::{RngCore as _, SeedableRng as _};
    let mut data = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(size as u64).fill_bytes(&mut data);
    let outcome = registry
        .client()
        .upload_blob(repo, BlobBody::Bytes(data.into()), &|_| {})
        .await
        .unwrap();
    (outcome.digest().clone(), size as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upload_reads_the_source_again() {
    let source = TestRegistry::start(Auth::None);
    let (digest, size) = pushed_blob(&source, "acme/big", 1 << 20).await;
    let target = TestRegistry::start(Auth::None);
    let rates = FaultRates {
        unavailable: 0.0,
        too_many: 0.0,
        drop: 0.0,
        cut_body: 0.5,
        slow: 0.0,
    };
    // One upload at a time through the proxy: each seed cuts the same
    // requests every run. Some seed cuts the layer's PUT.
    let mut reread = None;
    for seed in 1..=10 {
        let proxy = FaultProxy::start(target.port(), seed, rates);
        let opts = ClientOptions {
            max_retries: 20,
            retry_base: std::time::Duration::from_millis(5),
            ..ClientOptions::default()
        };
        let client = client_at(&proxy.host(), Credentials::anonymous(), &opts);
        let repo = format!("acme/seed{seed}");
        let gets_before = source.count_requests(&format!("GET /v2/acme/big/blobs/{digest}"));
        let body = BlobBody::Remote {
            client: source.client(),
            repo: "acme/big".into(),
            digest: digest.clone(),
            size,
        };
        let outcome = client.upload_blob(&repo, body, &|_| {}).await.unwrap();
        assert_eq!(outcome.digest(), &digest);
        assert!(target.client().blob_exists(&repo, &digest).await.unwrap());
        let gets = source.count_requests(&format!("GET /v2/acme/big/blobs/{digest}")) - gets_before;
        let puts = target
            .request_log()
            .iter()
            .filter(|l| l.starts_with(&format!("PUT /v2/{repo}/blobs/uploads/")))
            .count();
        // A cut PUT reaches the registry too (half its body): every try
        // GET the source anew, none reused bytes of an earlier one.
        assert_eq!(gets, puts, "one source GET per upload try");
        if gets > 1 {
            reread = Some((seed, gets, proxy.counts()));
            break;
        }
    }
    let (seed, gets, counts) = reread.expect("no seed cut the upload");
    eprintln!("seed {seed}: the source was read {gets} times; {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_serving_other_bytes_fails_the_copy_clearly() {
    let right = b"the right blob".to_vec();
    let digest = Digest::of(&right);
    let quirk = QuirkServer::start(|req| {
        if req.method == "GET" && req.target.contains("/blobs/") {
            (200, Vec::new(), b"the wrong blob".to_vec())
        } else {
            (200, Vec::new(), Vec::new())
        }
    });
    let target = TestRegistry::start(Auth::None);
    let body = BlobBody::Remote {
        client: quirk.client(),
        repo: "acme/liar".into(),
        digest: digest.clone(),
        size: right.len() as u64,
    };
    let err = target
        .client()
        .upload_blob("acme/dest", body, &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::DigestMismatch { expected, actual, .. }
            if *expected == digest && *actual == Digest::of(b"the wrong blob")),
        "{err}"
    );
    assert!(err.to_string().contains("/v2/acme/liar/blobs/"), "{err}");
    assert!(!target
        .client()
        .blob_exists("acme/dest", &digest)
        .await
        .unwrap());
    // Tried once: a wrong blob is not worth another GET.
    let gets = quirk
        .request_lines()
        .iter()
        .filter(|l| l.starts_with("GET /v2/acme/liar/blobs/"))
        .count();
    assert_eq!(gets, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_redirecting_to_storage_is_followed_without_credentials() {
    let blob = b"a layer kept in object storage".to_vec();
    let digest = Digest::of(&blob);
    let stored = blob.clone();
    let storage = QuirkServer::start(move |_| (200, Vec::new(), stored.clone()));
    let location = format!("http://{}/bucket/blob?X-Sig=abc", storage.host());
    let source = QuirkServer::start(move |req| match req.authorization {
        None => (
            401,
            vec![("WWW-Authenticate".into(), "Basic realm=\"src\"".into())],
            Vec::new(),
        ),
        Some(_) if req.method == "GET" && req.target.contains("/blobs/") => {
            (307, vec![("Location".into(), location.clone())], Vec::new())
        }
        Some(_) => (200, Vec::new(), Vec::new()),
    });
    let creds = Credentials::basic("tester", Secret::new("s3cret-pass"), "test");
    let target = TestRegistry::start(Auth::None);
    let body = BlobBody::Remote {
        client: source.client_with(creds),
        repo: "acme/src".into(),
        digest: digest.clone(),
        size: blob.len() as u64,
    };
    let outcome = target
        .client()
        .upload_blob("acme/dest", body, &|_| {})
        .await
        .unwrap();
    assert_eq!(outcome.digest(), &digest);
    assert!(target
        .client()
        .blob_exists("acme/dest", &digest)
        .await
        .unwrap());
    let fetched = storage.requests.lock().unwrap().clone();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].target, "/bucket/blob?X-Sig=abc");
    assert_eq!(
        fetched[0].authorization, None,
        "credentials followed the redirect"
    );
    assert!(
        source
            .requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.target.contains("/blobs/") && r.authorization.is_some()),
        "the registry itself got the credentials"
    );
}
