//! Concurrent publishers to the same tags: each tag ends up pointing at one
//! complete index, never at a half-pushed one.

use std::process::{Command, Stdio};

use manifold::digest::Digest;

use crate::harness::{skopeo_copy_all, Auth, TestRegistry};
use crate::publish::testdata;

#[test]
fn racing_publishers_leave_every_tag_on_a_complete_index() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/race");
    let home = tempfile::tempdir().unwrap();
    // Four publishers at once, two contents (different annotations, so two
    // different indexes), all moving `shared` and `latest`.
    let children: Vec<_> = (0..4)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_manifold"))
                .args([
                    "publish",
                    "--repo",
                    &repo,
                    "--tag",
                    "shared",
                    "--tag",
                    "latest",
                    "--no-cache",
                ])
                .arg("--annotation")
                .arg(format!("org.example.writer={}", i % 2))
                .arg(testdata("stream-amd64"))
                .arg(testdata("fd-arm64.tar.zst"))
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", home.path())
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut published = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap();
        published.push(
            line.trim()
                .rsplit_once('@')
                .unwrap()
                .1
                .parse::<Digest>()
                .unwrap(),
        );
    }
    published.sort();
    published.dedup();
    assert_eq!(published.len(), 2, "two contents, two indexes");
    for tag in ["shared", "latest"] {
        let raw = registry.skopeo_inspect_raw(&format!("{repo}:{tag}"));
        assert!(
            published.contains(&Digest::of(&raw)),
            "{tag} points at a published index"
        );
        // Complete: skopeo pulls every manifest and blob and checks them.
        skopeo_copy_all(&format!("{repo}:{tag}"), None);
    }
}
