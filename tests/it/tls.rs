//! TLS against a real registry serving HTTPS on loopback with a certificate
//! from a test CA (rcgen): refused by default with a clear error, accepted
//! with `--ca-file` or `--insecure-registry`. And secrets: with
//! `RUST_LOG=trace`, no password, Basic credential or bearer token reaches
//! stdout or stderr.

use base64::Engine as _;

use crate::harness::{Auth, TestRegistry};
use crate::publish::{testdata, Run};

fn valid() -> String {
    testdata("bad").join("valid.tar").display().to_string()
}

#[test]
fn an_untrusted_certificate_is_refused_with_a_hint() {
    let registry = TestRegistry::start_tls(Auth::None);
    let repo = registry.repo("acme/tls");
    let started = std::time::Instant::now();
    let out = Run::new(&["publish", "--repo", &repo, "--tag", "x", &valid()]).output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("https://127.0.0.1:"),
        "tried https: {stderr}"
    );
    assert!(
        stderr.contains("TLS certificate is not trusted"),
        "{stderr}"
    );
    assert!(stderr.contains("--ca-file"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A refused certificate is not retried with backoff.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(registry.count_requests("PUT /v2/acme/tls/manifests/"), 0);
}

#[test]
fn the_test_ca_makes_the_registry_trusted() {
    let registry = TestRegistry::start_tls(Auth::None);
    let repo = registry.repo("acme/tls");
    let ca = registry.ca_file().unwrap().display().to_string();
    let stdout = Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "x",
        "--ca-file",
        &ca,
        &valid(),
    ])
    .success();
    let digest = stdout.trim().rsplit_once('@').unwrap().1.to_owned();
    let raw = registry.skopeo_inspect_raw(&format!("{repo}:x"));
    assert_eq!(manifold::digest::Digest::of(&raw).to_string(), digest);
}

#[test]
fn an_insecure_registry_skips_verification_but_keeps_tls() {
    let registry = TestRegistry::start_tls(Auth::None);
    let repo = registry.repo("acme/tls");
    let host = registry.host();
    Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "x",
        "--insecure-registry",
        &host,
        &valid(),
    ])
    .success();
    registry.skopeo_inspect_raw(&format!("{repo}:x"));
}

/// Publishes with trace logging and returns stdout + stderr.
fn traced_publish(registry: &TestRegistry) -> String {
    let repo = registry.repo("acme/secret");
    let amd64 = testdata("fd-amd64.tar.gz");
    let out = Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "x",
        "-vv",
        "--username",
        "tester",
        "--password-stdin",
        amd64.to_str().unwrap(),
    ])
    .env("RUST_LOG", "trace")
    .stdin(b"s3cret-pass\n")
    .output();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // The trace really is verbose: requests are logged.
    assert!(text.contains("registry request"), "{text}");
    text
}

fn assert_no_secrets(text: &str, extra: &[String]) {
    let basic = base64::engine::general_purpose::STANDARD.encode("tester:s3cret-pass");
    assert!(!text.contains("s3cret-pass"), "the password leaked");
    assert!(!text.contains(&basic), "the Basic credential leaked");
    for secret in extra {
        assert!(!text.contains(secret.as_str()), "a token leaked");
    }
    // No `Bearer <value>` whatever the value.
    let bearer = regex::Regex::new(r"Bearer [A-Za-z0-9_\-\.=]{8,}").unwrap();
    assert!(bearer.find(text).is_none(), "{:?}", bearer.find(text));
}

#[test]
fn trace_logs_hold_no_basic_credentials() {
    let registry = TestRegistry::start(Auth::basic());
    let text = traced_publish(&registry);
    assert_no_secrets(&text, &[]);
}

#[test]
fn trace_logs_hold_no_bearer_tokens() {
    let registry = TestRegistry::start(Auth::token());
    let text = traced_publish(&registry);
    let tokens = registry.issued_tokens();
    assert!(!tokens.is_empty(), "tokens were used");
    // Also no part of a token long enough to matter (its signature).
    let signatures: Vec<String> = tokens
        .iter()
        .filter_map(|t| t.rsplit('.').next().map(str::to_owned))
        .collect();
    assert_no_secrets(&text, &[tokens, signatures].concat());
}

/// An insecure host that is not loopback by name (`0.0.0.0` reaches the
/// loopback registry on Linux, but is not a loopback address) starts on
/// https without verification and falls back to plain HTTP, as Docker.
#[test]
fn an_insecure_host_tries_https_then_plain_http() {
    for tls in [true, false] {
        let registry = if tls {
            TestRegistry::start_tls(Auth::None)
        } else {
            TestRegistry::start(Auth::None)
        };
        let host = format!("0.0.0.0:{}", registry.port());
        let repo = format!("{host}/acme/insecure");
        let out = Run::new(&[
            "publish",
            "--repo",
            &repo,
            "--tag",
            "x",
            "--insecure-registry",
            &host,
            "-v",
            &valid(),
        ])
        .env("RUST_LOG", "manifold=debug")
        .output();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "tls {tls}: {stderr}");
        assert_eq!(
            stderr.contains("trying plain HTTP"),
            !tls,
            "tls {tls}: {stderr}"
        );
        registry.skopeo_inspect_raw(&format!("{}:x", registry.repo("acme/insecure")));
        // Without the flag, a host that is not loopback is https only and
        // verified.
        if tls {
            let out = Run::new(&["publish", "--repo", &repo, "--tag", "y", &valid()]).output();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains("not trusted"), "{stderr}");
        }
    }
}
