//! `manifold publish` through a fault-injecting proxy in front of the real
//! registry: with about 15% of requests failing (503, 429, dropped
//! connections, bodies cut mid-upload) and as many slowed, the publish must
//! still succeed and skopeo must pull back exactly what was published.

use manifold::digest::Digest;
use manifold::oci::ImageIndex;

use crate::harness::{
    client_at, payload, skopeo_copy_all, Auth, FaultProxy, FaultRates, TestRegistry,
};
use crate::publish::{testdata, Run};

fn publish_through_faults(seed: u64, auth: Auth, extra: &[&str]) {
    let registry = TestRegistry::start(auth.clone());
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
    if auth.creds().is_some() {
        args.extend(["--username", "tester", "--password-stdin"]);
    }
    args.push(amd64.to_str().unwrap());
    args.push(arm64.to_str().unwrap());
    let out = Run::new(&args)
        .env("RUST_LOG", "manifold=debug")
        .stdin(b"s3cret-pass\n")
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let counts = proxy.counts();
    eprintln!(
        "seed {seed} ({}){}: {} requests, {} failures injected and survived \
         (503: {}, 429: {}, dropped: {}, cut bodies: {}), {} slowed",
        match auth {
            Auth::None => "anonymous",
            Auth::Basic { .. } => "basic auth",
            Auth::Token { .. } => "token auth",
        },
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
    skopeo_copy_all(&format!("{direct}:1.0.0"), auth.creds());
}

#[test]
fn publish_survives_faults_seed_1() {
    publish_through_faults(1, Auth::None, &[]);
}

#[test]
fn publish_survives_faults_seed_2_basic_auth() {
    publish_through_faults(2, Auth::basic(), &[]);
}

#[test]
fn publish_survives_faults_seed_3_token_auth() {
    publish_through_faults(3, Auth::token(), &[]);
}

#[test]
fn publish_survives_faults_seed_4_chunked() {
    publish_through_faults(4, Auth::None, &["--chunk-size", "256KiB"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_patch_with_inclusive_ranges() {
    use manifold::layer::spool;
    use manifold::registry::{BlobBody, ClientOptions, Credentials};
    use std::io::Write as _;

    let reg = TestRegistry::start(Auth::None);
    let opts = ClientOptions {
        chunk_size: Some(100_000),
        ..ClientOptions::default()
    };
    let client = client_at(&reg.host(), Credentials::anonymous(), &opts);
    // A spool still being written: chunks follow it as it grows.
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, spool) = spool::create(dir.path()).unwrap();
    let data = payload(450_000, 7);
    let expected = Digest::of(&data);
    let writing = std::thread::spawn(move || {
        for chunk in data.chunks(30_000) {
            writer.write_all(chunk).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        writer.finish()
    });
    let outcome = client
        .upload_blob("chunked/app", BlobBody::Spool(spool), &|_| {})
        .await
        .unwrap();
    writing.join().unwrap();
    assert_eq!(outcome.digest(), &expected);
    // 450 000 bytes in 100 000-byte chunks: five PATCHes, then one PUT.
    assert_eq!(
        reg.count_requests("PATCH /v2/chunked/app/blobs/uploads/"),
        5,
        "{:#?}",
        reg.request_log()
    );
    let back = client
        .get_blob("chunked/app", &expected, 1 << 20)
        .await
        .unwrap();
    assert_eq!(Digest::of(&back), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_monolithic_upload_falls_back_to_chunks() {
    use crate::harness::QuirkServer;
    use manifold::registry::BlobBody;

    // A registry that refuses one-request bodies with 413 and takes
    // `Content-Range` PATCHes only, as some proxies in front of registries do.
    let server = QuirkServer::start(|r| {
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let loc = |s: &str| vec![("Location".to_owned(), s.to_owned())];
        match (r.method.as_str(), r.target.as_str()) {
            ("GET", "/v2/") => (200, vec![], b"{}".to_vec()),
            ("HEAD", _) => (404, vec![], vec![]),
            ("POST", _) => (202, loc("/v2/a/blobs/uploads/s1"), vec![]),
            ("PUT", t) if !r.body.is_empty() && t.contains("digest=") => {
                (413, vec![], b"too large".to_vec())
            }
            ("PATCH", _) => match header("content-range") {
                Some(range) => {
                    let end = range.split_once('-').unwrap().1;
                    let mut h = loc("/v2/a/blobs/uploads/s1");
                    h.push(("Range".to_owned(), format!("0-{end}")));
                    (202, h, vec![])
                }
                None => (416, vec![], vec![]),
            },
            ("PUT", _) => (201, vec![], vec![]),
            _ => (400, vec![], vec![]),
        }
    });
    let client = server.client();
    let data = payload(5 * 1024 * 1024 + 10, 3);
    let digest = Digest::of(&data);
    let outcome = client
        .upload_blob("a", BlobBody::Bytes(data.into()), &|_| {})
        .await
        .unwrap();
    assert_eq!(outcome.digest(), &digest);
    let requests = server.requests.lock().unwrap().clone();
    let ranges: Vec<String> = requests
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| {
            let range = r
                .headers
                .iter()
                .find(|(k, _)| k == "content-range")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let length = r
                .headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            assert_eq!(length.parse::<usize>().unwrap(), r.body.len());
            range
        })
        .collect();
    let mib = 4 * 1024 * 1024;
    assert_eq!(
        ranges,
        [
            format!("0-{}", mib - 1),
            format!("{mib}-{}", 5 * 1024 * 1024 + 9)
        ],
        "{:#?}",
        server.request_lines()
    );
    let last = requests.last().unwrap();
    assert!(
        last.method == "PUT" && last.target.contains(&format!("digest={digest}")),
        "{:?}",
        server.request_lines()
    );
}

/// `--max-retries` and `--retry-timeout` bound a registry that never
/// recovers: the count, then the time.
#[test]
fn retries_are_bounded_by_count_and_time() {
    use crate::harness::QuirkServer;

    let server = QuirkServer::start(|_| (503, vec![], b"down".to_vec()));
    let repo = format!("{}/acme/down", server.host());
    let valid = testdata("bad").join("valid.tar");
    let valid = valid.to_str().unwrap();
    let out = Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "x",
        "--max-retries",
        "2",
        "--retry-base-ms",
        "10",
        valid,
    ])
    .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("503"), "{stderr}");
    assert_eq!(
        server.request_lines(),
        ["GET /v2/", "GET /v2/", "GET /v2/"],
        "one try and two retries"
    );

    let server = QuirkServer::start(|_| (503, vec![], b"down".to_vec()));
    let repo = format!("{}/acme/down", server.host());
    let started = std::time::Instant::now();
    let out = Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "x",
        "--max-retries",
        "1000",
        "--retry-timeout",
        "2",
        "--retry-base-ms",
        "100",
        valid,
    ])
    .output();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        took < std::time::Duration::from_secs(8),
        "the time bound held: {took:?}"
    );
    let tries = server.request_lines().len();
    assert!((3..1000).contains(&tries), "{tries} tries in {took:?}");
}

/// A whole-upload retry waits as long as the registry's `Retry-After`.
#[tokio::test]
async fn an_upload_retry_waits_for_retry_after() {
    use crate::harness::QuirkServer;
    use manifold::registry::BlobBody;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let data = payload(1000, 5);
    let digest = Digest::of(&data);
    let puts = Arc::new(AtomicUsize::new(0));
    let p = puts.clone();
    let server = QuirkServer::start(move |r| match r.method.as_str() {
        "GET" => (200, vec![], vec![]),
        "HEAD" => (404, vec![], vec![]),
        "POST" => (
            202,
            vec![("Location".into(), "/v2/a/blobs/uploads/s".into())],
            vec![],
        ),
        // The first PUT with the body is turned away for 2 s.
        "PUT" if p.fetch_add(1, Ordering::SeqCst) == 0 => {
            (429, vec![("Retry-After".into(), "2".into())], vec![])
        }
        "PUT" => (201, vec![], vec![]),
        _ => (400, vec![], vec![]),
    });
    let started = std::time::Instant::now();
    let outcome = server
        .client()
        .upload_blob("a", BlobBody::Bytes(data.into()), &|_| {})
        .await
        .unwrap();
    assert_eq!(outcome.digest(), &digest);
    assert_eq!(puts.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// The token service is retried like the registry: a 503 and a dropped
/// answer from the realm, then a token.
#[tokio::test]
async fn token_requests_are_retried() {
    use crate::harness::QuirkServer;
    use manifold::registry::{Credentials, Secret};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let host = Arc::new(Mutex::new(String::new()));
    let tokens = Arc::new(AtomicUsize::new(0));
    let (h, t) = (host.clone(), tokens.clone());
    let server = QuirkServer::start(move |r| {
        let realm = format!("http://{}/token", h.lock().unwrap());
        if r.target.starts_with("/token") {
            return match t.fetch_add(1, Ordering::SeqCst) {
                0 => (503, vec![], b"busy".to_vec()),
                1 => (429, vec![], b"slow down".to_vec()),
                _ => (200, vec![], br#"{"token":"tok-123456789"}"#.to_vec()),
            };
        }
        match r.authorization.as_deref() {
            Some("Bearer tok-123456789") => (200, vec![], vec![]),
            _ => (
                401,
                vec![(
                    "WWW-Authenticate".into(),
                    format!(r#"Bearer realm="{realm}",service="quirk""#),
                )],
                vec![],
            ),
        }
    });
    *host.lock().unwrap() = server.host();
    let client = server.client_with(Credentials::basic(
        "u",
        Secret::new("p"),
        "test credentials",
    ));
    let d = Digest::of(b"x");
    assert!(client.blob_exists("q", &d).await.unwrap());
    assert_eq!(
        tokens.load(Ordering::SeqCst),
        3,
        "{:?}",
        server.request_lines()
    );
}

/// A registry that takes only part of a chunk (202 with a shorter `Range`)
/// or reports where it stands with a 416: the chunk resumes from there.
#[tokio::test]
async fn a_chunk_resumes_where_the_registry_stands() {
    use crate::harness::QuirkServer;
    use manifold::registry::{BlobBody, ClientOptions, Credentials};
    use std::sync::{Arc, Mutex};

    let data = payload(300_000, 11);
    let digest = Digest::of(&data);
    // (bytes held, whether the partial answer and the 416 were given)
    let state = Arc::new(Mutex::new((0u64, false, false)));
    let st = state.clone();
    let expected = data.clone();
    let server = QuirkServer::start(move |r| {
        let loc = vec![("Location".to_owned(), "/v2/a/blobs/uploads/s".to_owned())];
        match r.method.as_str() {
            "GET" => (200, vec![], vec![]),
            "HEAD" => (404, vec![], vec![]),
            "POST" => (202, loc, vec![]),
            "PATCH" => {
                let range = r
                    .headers
                    .iter()
                    .find(|(k, _)| k == "content-range")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                let (start, end) = range.split_once('-').unwrap();
                let (start, end): (u64, u64) = (start.parse().unwrap(), end.parse().unwrap());
                let mut s = st.lock().unwrap();
                let range_of = |held: u64| {
                    let mut h = loc.clone();
                    h.push(("Range".to_owned(), format!("0-{}", held - 1)));
                    h
                };
                if start != s.0 || r.body.len() as u64 != end - start + 1 {
                    return (416, range_of(s.0), vec![]);
                }
                assert_eq!(r.body, expected[start as usize..=end as usize]);
                if start == 100_000 && !s.1 {
                    // Takes 40 bytes of the second chunk.
                    s.1 = true;
                    s.0 += 40;
                    return (202, range_of(s.0), vec![]);
                }
                if start == 200_000 && !s.2 {
                    // Claims 10 bytes more than it was sent.
                    s.2 = true;
                    s.0 += 10;
                    return (416, range_of(s.0), vec![]);
                }
                s.0 = end + 1;
                (202, range_of(s.0), vec![])
            }
            "PUT" => (201, vec![], vec![]),
            _ => (400, vec![], vec![]),
        }
    });
    // The 416's claim is a lie here (those 10 bytes were never sent), so
    // the server takes the rest from 200 010 on; the client cannot tell.
    let opts = ClientOptions {
        chunk_size: Some(100_000),
        max_retries: 0,
        ..ClientOptions::default()
    };
    let client = client_at(&server.host(), Credentials::anonymous(), &opts);
    client
        .upload_blob("a", BlobBody::Bytes(data.into()), &|_| {})
        .await
        .unwrap();
    let ranges: Vec<String> = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "content-range")
                .map(|(_, v)| v.clone())
                .unwrap()
        })
        .collect();
    assert_eq!(
        ranges,
        [
            "0-99999",
            "100000-199999",
            "100040-199999",
            "200000-299999",
            "200010-299999"
        ]
    );
    let last = server.request_lines().last().cloned().unwrap();
    assert!(
        last.starts_with("PUT") && last.contains(&digest.to_string()),
        "{last}"
    );
}
