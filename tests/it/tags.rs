//! Tags, annotations and CI outputs, end to end against the real registry.

use manifold::digest::Digest;
use manifold::oci::ImageIndex;

use crate::harness::{Auth, TestRegistry};
use crate::publish::{testdata, Run};

fn inputs() -> [String; 2] {
    [
        testdata("fd-amd64.tar").display().to_string(),
        testdata("fd-arm64.tar.zst").display().to_string(),
    ]
}

/// The digest a tag points at, read with skopeo.
fn tag_digest(registry: &TestRegistry, repo: &str, tag: &str) -> Digest {
    Digest::of(&registry.skopeo_inspect_raw(&format!("{repo}:{tag}")))
}

fn publish_version(repo: &str, version: &str) -> (Digest, String) {
    let [a, b] = inputs();
    let out = Run::new(&["publish", "--repo", repo, "--version", version, &a, &b]).output();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let digest = stdout.trim().rsplit_once('@').unwrap().1.parse().unwrap();
    (digest, stderr)
}

#[test]
fn floating_tags_never_go_backwards() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/guard");
    let (newer, _) = publish_version(&repo, "1.3.0");
    for tag in ["latest", "1.3.0", "1.3", "1"] {
        assert_eq!(tag_digest(&registry, &repo, tag), newer, "{tag}");
    }
    // The index differs (its version annotation), so moves are visible.
    let (older, stderr) = publish_version(&repo, "1.2.9");
    assert_ne!(older, newer);
    assert_eq!(tag_digest(&registry, &repo, "1.2.9"), older);
    assert_eq!(tag_digest(&registry, &repo, "1.2"), older, "1.2 moves");
    assert_eq!(tag_digest(&registry, &repo, "1"), newer, "1 stays");
    assert_eq!(
        tag_digest(&registry, &repo, "latest"),
        newer,
        "latest stays"
    );
    assert!(
        stderr.contains("`1.3.0` exists"),
        "the withheld tags are said:\n{stderr}"
    );

    // `tags --repo` applies the same check.
    let out = Run::new(&["tags", "--version", "1.2.10", "--repo", &repo]).success();
    assert_eq!(out.lines().collect::<Vec<_>>(), ["1.2.10", "1.2"]);
}

#[test]
fn the_index_carries_reproducible_annotations() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/annotated");
    let [a, b] = inputs();
    let args = [
        "publish",
        "--repo",
        &repo,
        "--version",
        "v2.0.0+build.7",
        "--revision",
        "0123456789abcdef0123456789abcdef01234567",
        "--source",
        "https://example.org/acme/fd",
        "--annotation",
        "org.example.team=tools",
        "--annotation",
        "org.opencontainers.image.title=",
        &a,
        &b,
    ];
    let first = Run::new(&args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .success();
    let raw = registry.skopeo_inspect_raw(&format!("{repo}:2.0.0"));
    let index: ImageIndex = serde_json::from_slice(&raw).unwrap();
    let a = &index.annotations;
    assert_eq!(a["org.opencontainers.image.version"], "2.0.0+build.7");
    assert_eq!(
        a["org.opencontainers.image.revision"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(
        a["org.opencontainers.image.source"],
        "https://example.org/acme/fd"
    );
    assert_eq!(
        a["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(a["org.example.team"], "tools");
    assert!(
        !a.contains_key("org.opencontainers.image.title"),
        "KEY= deletes: {a:?}"
    );
    for tag in ["latest", "2.0.0", "2.0", "2"] {
        registry.skopeo_inspect_raw(&format!("{repo}:{tag}"));
    }
    // The same commit published again gives the same index digest.
    let second = Run::new(&args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .success();
    assert_eq!(first, second);
}

#[test]
fn github_actions_outputs_and_summary_are_written() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/gha");
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("output");
    let summary = dir.path().join("summary");
    let event = dir.path().join("event.json");
    std::fs::write(&event, r#"{"repository":{"default_branch":"main","name":"fd","description":"A find alternative"}}"#).unwrap();
    let metadata = dir.path().join("meta.json");
    let [a, b] = inputs();
    let stdout = Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--metadata-file",
        metadata.to_str().unwrap(),
        &a,
        &b,
    ])
    .env("GITHUB_ACTIONS", "true")
    .env("GITHUB_EVENT_NAME", "push")
    .env("GITHUB_REF", "refs/heads/main")
    .env("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567")
    .env("GITHUB_REPOSITORY", "acme/fd")
    .env("GITHUB_SERVER_URL", "https://github.com")
    .env("GITHUB_EVENT_PATH", &event)
    .env("VERSION", "1.4.0")
    .env("GITHUB_OUTPUT", &output)
    .env("GITHUB_STEP_SUMMARY", &summary)
    .success();
    let digest = stdout.trim().rsplit_once('@').unwrap().1.to_owned();
    let outputs = std::fs::read_to_string(&output).unwrap();
    assert!(outputs.contains(&format!("digest={digest}\n")), "{outputs}");
    assert!(
        outputs.contains(&format!("image={repo}@{digest}\n")),
        "{outputs}"
    );
    assert!(outputs.contains("version=1.4.0\n"), "{outputs}");
    let tags_block: Vec<&str> = outputs
        .split("tags<<")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("MANIFOLD_EOF"))
        .collect();
    assert_eq!(tags_block, ["main", "latest", "1.4.0", "1.4", "1"]);
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(
        summary.contains("linux/amd64") && summary.contains("linux/arm64"),
        "{summary}"
    );
    assert!(summary.contains(&digest), "{summary}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    assert_eq!(meta["digest"], digest.as_str());
    assert_eq!(meta["tags"][0], "main");
    // Annotations came from the event payload, not a network call.
    let index: ImageIndex =
        serde_json::from_slice(&registry.skopeo_inspect_raw(&format!("{repo}:main"))).unwrap();
    assert_eq!(
        index.annotations["org.opencontainers.image.description"],
        "A find alternative"
    );
    assert_eq!(
        index.annotations["org.opencontainers.image.source"],
        "https://github.com/acme/fd"
    );
}

#[test]
fn bad_tags_and_no_tags_are_usage_errors() {
    let out = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}", out.path().display());
    let [a, _] = inputs();
    let bad = Run::new(&["publish", "--repo", &layout, "--tag", "no/slashes", &a]).output();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no/slashes"));
    let none = Run::new(&["publish", "--repo", &layout, &a]).output();
    assert_eq!(
        none.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    // By digest only is fine.
    let stdout = Run::new(&["publish", "--repo", &layout, "--no-tags", &a]).success();
    assert!(stdout.starts_with("oci:"));
}

#[test]
fn an_uppercase_repository_is_lowered_with_a_notice() {
    let registry = TestRegistry::start(Auth::None);
    let [a, _] = inputs();
    let out = Run::new(&[
        "publish",
        "--repo",
        &format!("{}/Acme/FD", registry.host()),
        "--tag",
        "x",
        &a,
    ])
    .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("acme/fd"), "{stderr}");
    registry.skopeo_inspect_raw(&format!("{}:x", registry.repo("acme/fd")));
}

#[test]
fn dry_run_plans_and_writes_nothing() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/dry");
    let [a, b] = inputs();
    let stdout = Run::new(&[
        "publish",
        "--dry-run",
        "--repo",
        &repo,
        "--version",
        "1.0.0",
        &a,
        &b,
    ])
    .success();
    assert!(stdout.starts_with("dry run"), "{stdout}");
    assert!(stdout.contains("tags latest 1.0.0 1.0 1"), "{stdout}");
    assert!(stdout.contains("image linux/arm64"), "{stdout}");
    let writes = registry
        .request_log()
        .into_iter()
        .filter(|l| l.starts_with("PUT") || l.starts_with("POST") || l.starts_with("PATCH"))
        .count();
    assert_eq!(writes, 0, "{:#?}", registry.request_log());
}

#[test]
fn tags_prints_the_tags_one_per_line_and_json() {
    let out = Run::new(&[
        "tags",
        "--version",
        "v1.2.3",
        "--branch",
        "main",
        "--tag",
        "nightly",
    ])
    .success();
    assert_eq!(out, "nightly\nmain\nlatest\n1.2.3\n1.2\n1\n");
    let json = Run::new(&["tags", "--json", "--version", "1.2.3-rc.1"]).success();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["1.2.3-rc.1"]));
}
