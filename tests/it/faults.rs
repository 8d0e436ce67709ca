//! `manifold publish` through a fault-injecting proxy in front of the real
//! registry: with about 15% of requests failing (503, 429, dropped
//! connections, bodies cut mid-upload) and as many slowed, the publish must
//! still succeed and skopeo must pull back exactly what was published.

use std::path::Path;
use std::process::Command;

use manifold::digest::Digest;
use manifold::oci::ImageIndex;

use crate::harness::{Auth, FaultProxy, FaultRates, TestRegistry};
use crate::publish::{testdata, Run};

/// `skopeo copy --all` straight from the registry (not through the proxy),
/// which checks every digest on the way.
fn skopeo_copy_all(reference: &str, dir: &Path) {
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--all",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:copied", dir.display()))
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo copy --all {reference} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn publish_through_faults(seed: u64, extra: &[&str]) {
    let registry = TestRegistry::start(Auth::None);
    let proxy = FaultProxy::start(registry.port(), seed, FaultRates::failing(0.15));
    let repo = format!("{}/acme/faulty", proxy.host());
    let amd64 = testdata("stream-amd64");
    let arm64 = testdata("fd-arm64.tar.zst");
    let mut args = vec![
        "publish",
        "--repo",
        &repo,
        "--tag",
        "1.0.0",
        "--max-retries",
        "10",
        "--retry-base-ms",
        "20",
    ];
    args.extend_from_slice(extra);
    args.push(amd64.to_str().unwrap());
    args.push(arm64.to_str().unwrap());
    let out = Run::new(&args).env("RUST_LOG", "manifold=debug").output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let counts = proxy.counts();
    eprintln!(
        "seed {seed}{}: {} requests, {} failures injected and survived \
         (503: {}, 429: {}, dropped: {}, cut bodies: {}), {} slowed",
        if extra.is_empty() {
            String::new()
        } else {
            format!(" {extra:?}")
        },
        counts.requests,
        counts.failures(),
        counts.unavailable,
        counts.too_many,
        counts.dropped,
        counts.cut_bodies,
        counts.slowed
    );
    assert!(
        out.status.success(),
        "publish failed under faults (seed {seed}, {counts:?}):\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(counts.failures() > 0, "no fault was injected: {counts:?}");

    // What was printed is what the registry holds, under the tag.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let digest: Digest = stdout
        .trim()
        .rsplit_once('@')
        .expect("`repo@digest` on stdout")
        .1
        .parse()
        .unwrap();
    let direct = registry.repo("acme/faulty");
    let raw = registry.skopeo_inspect_raw(&format!("{direct}:1.0.0"));
    assert_eq!(Digest::of(&raw), digest);
    let index: ImageIndex = serde_json::from_slice(&raw).unwrap();
    assert_eq!(index.manifests.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    skopeo_copy_all(&format!("{direct}:1.0.0"), dir.path());
}

#[test]
fn publish_survives_faults_seed_1() {
    publish_through_faults(1, &[]);
}

#[test]
fn publish_survives_faults_seed_2() {
    publish_through_faults(2, &[]);
}

#[test]
fn publish_survives_faults_seed_3() {
    publish_through_faults(3, &[]);
}

#[test]
fn publish_survives_faults_seed_4_chunked() {
    publish_through_faults(4, &["--chunk-size", "256KiB"]);
}
