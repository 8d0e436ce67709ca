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

/// Five stream inputs share their first layer while the registry reads are
/// out: four take the four encoding slots and compress it on speculation,
/// then stall mid-layer (their scripts sleep); the fifth meets the layer
/// only once the reads are in. It must not claim the layer before it has a
/// slot: the four, resuming, would wait for its claim while it waited for
/// their slots, for ever. It waits for a slot first; one of the four
/// claims and publishes the layer, the others and the fifth find it
/// published.
#[test]
fn a_shared_layer_met_on_speculation_by_more_inputs_than_slots_does_not_deadlock() {
    use crate::harness::{random_hinted_archive, write_script, FaultProxy};
    use crate::publish::Run;
    use std::time::Duration;

    let registry = TestRegistry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let archive = random_hinted_archive(&dir.path().join("shared.tar"), 4 << 20, 41);
    let a = archive.display();
    let reads_may_end = dir.path().join("reads-may-end");
    let held = FaultProxy::holding(
        registry.port(),
        "GET /v2/acme/five/manifests/",
        &reads_may_end,
    );
    // 2 MiB into the layer (its header is the archive's first block).
    let cut = 512 + (2 << 20);
    let platforms = [
        "linux/amd64",
        "linux/arm64",
        "linux/ppc64le",
        "linux/s390x",
        "linux/386",
    ];
    let mut inputs = Vec::new();
    for (i, platform) in platforms.iter().enumerate() {
        let script = dir.path().join(format!("stream-{i}"));
        let body = if i < 4 {
            format!(
                "#!/bin/sh\nhead -c {cut} '{a}'\nsleep 4\ntail -c +{} '{a}'\n",
                cut + 1
            )
        } else {
            // After the four have stalled, let the reads end, and start
            // only once they have.
            format!(
                "#!/bin/sh\nsleep 1\ntouch '{}'\nsleep 1.5\ncat '{a}'\n",
                reads_may_end.display()
            )
        };
        write_script(&script, &body);
        inputs.push(format!("{platform}=stream:{}", script.display()));
    }
    let out = inputs
        .iter()
        .fold(
            Run::new(&["publish", "--no-cache", "--tag", "v1", "--repo"])
                .arg(&format!("{}/acme/five", held.host())),
            |run, input| run.arg(input),
        )
        .output_within(Duration::from_secs(60))
        .unwrap_or_else(|stderr| panic!("still running after 60 s: deadlocked\n{stderr}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The shared layer and the one config (the five images differ only in
    // the platform they are published as) went up once each.
    assert_eq!(
        registry.count_requests("PUT /v2/acme/five/blobs/uploads/"),
        2,
        "{stderr}"
    );
    skopeo_copy_all(&format!("docker://{}/acme/five:v1", registry.host()), None);
}
