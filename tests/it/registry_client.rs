//! The registry client against the real distribution registry, under no
//! auth, Basic auth and token auth.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use manifold::digest::Digest;
use manifold::layer::spool;
use manifold::oci::{
    Descriptor, ImageIndex, ImageManifest, Platform, RawManifest, MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST,
};
use manifold::registry::client::REQUESTS_PER_JOB;
use manifold::registry::upload::STREAM_AFTER;
use manifold::registry::{BlobBody, Credentials, RegistryClient, Secret, UploadOutcome};

use crate::harness::{payload, Auth, QuirkServer, TestRegistry};

/// Runs one async test body against a registry of each auth kind.
macro_rules! each_auth {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn no_auth() { super::$name(TestRegistry::start(Auth::None)).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn basic_auth() { super::$name(TestRegistry::start(Auth::basic())).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn token_auth() { super::$name(TestRegistry::start(Auth::token())).await }
        }
    )*};
}

each_auth!(
    ping_and_blob_round_trip,
    streamed_spool_upload,
    cross_repository_mount,
    manifests_and_index_round_trip,
    tag_listing_follows_links,
    stale_location_is_rejected,
);

fn no_progress(_: i64) {}

async fn ping_and_blob_round_trip(reg: TestRegistry) {
    let client = reg.client();
    client.ping().await.unwrap();
    let data = Bytes::from(payload(10_000, 1));
    let digest = Digest::of(&data);
    assert!(!client.blob_exists("app", &digest).await.unwrap());

    let progress = Arc::new(AtomicI64::new(0));
    let p = progress.clone();
    let on_progress = move |n: i64| {
        p.fetch_add(n, Ordering::SeqCst);
    };
    let outcome = client
        .upload_blob("app", BlobBody::Bytes(data.clone()), &on_progress)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        UploadOutcome::Uploaded {
            digest: digest.clone(),
            size: 10_000
        }
    );
    assert_eq!(progress.load(Ordering::SeqCst), 10_000);
    assert!(client.blob_exists("app", &digest).await.unwrap());
    assert_eq!(
        client.get_blob("app", &digest, 1 << 20).await.unwrap(),
        data
    );
    assert!(
        client.get_blob("app", &digest, 100).await.is_err(),
        "the size cap holds"
    );

    // Monolithic: one POST and one PUT, no PATCH.
    let uploads = reg.blob_upload_requests();
    assert_eq!(reg.count_requests("POST /v2/app/blobs/uploads/"), 1);
    assert_eq!(reg.count_requests("PATCH /v2/app/"), 0);

    let again = client
        .upload_blob("app", BlobBody::Bytes(data), &no_progress)
        .await
        .unwrap();
    assert_eq!(
        again,
        UploadOutcome::AlreadyPresent {
            digest,
            size: 10_000
        }
    );
    assert_eq!(reg.blob_upload_requests(), uploads, "no new session");
}

async fn streamed_spool_upload(reg: TestRegistry) {
    let client = reg.client();
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, spool) = spool::create(dir.path()).unwrap();
    let data = payload(3_000_000, 2);
    let expected = Digest::of(&data);
    // The writer is still going when the upload starts: it finishes only
    // once the registry has seen the upload session start.
    let log_of = reg.log_path();
    let writing = std::thread::spawn(move || {
        for chunk in data.chunks(100_000) {
            writer.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log_of)
            .unwrap_or_default()
            .contains("POST /v2/streamed/app/blobs/uploads/")
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        writer.finish()
    });
    assert!(spool.finished().is_none());
    let progress = Arc::new(AtomicI64::new(0));
    let p = progress.clone();
    let on_progress = move |n: i64| {
        p.fetch_add(n, Ordering::SeqCst);
    };
    let outcome = client
        .upload_blob("streamed/app", BlobBody::Spool(spool.clone()), &on_progress)
        .await
        .unwrap();
    let (digest, size) = writing.join().unwrap();
    assert_eq!(digest, expected);
    assert_eq!(
        outcome,
        UploadOutcome::Uploaded {
            digest: digest.clone(),
            size
        }
    );
    assert_eq!(progress.load(Ordering::SeqCst), size as i64);
    assert_eq!(
        reg.count_requests("PATCH /v2/streamed/app/blobs/uploads/"),
        1,
        "one streamed PATCH: {:?}",
        reg.request_log()
    );
    assert!(client.blob_exists("streamed/app", &digest).await.unwrap());

    // Finished now: HEAD says it is there.
    let again = client
        .upload_blob("streamed/app", BlobBody::Spool(spool.clone()), &no_progress)
        .await
        .unwrap();
    assert!(matches!(again, UploadOutcome::AlreadyPresent { .. }));

    // A finished spool into another repository: one PUT with the body.
    let other = client
        .upload_blob("streamed/other", BlobBody::Spool(spool), &no_progress)
        .await
        .unwrap();
    assert_eq!(other, UploadOutcome::Uploaded { digest, size });
    assert_eq!(reg.count_requests("PATCH /v2/streamed/other/"), 0);
    assert_eq!(
        reg.count_requests("PUT /v2/streamed/other/blobs/uploads/"),
        1
    );
}

/// A spool smaller than STREAM_AFTER that is still being written when the
/// session opens is waited for and sent in one PUT: no PATCH, a request less
/// per small layer for the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_spool_still_being_written_goes_in_one_put() {
    let reg = TestRegistry::start(Auth::None);
    let client = reg.client();
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, spool) = spool::create(dir.path()).unwrap();
    let data = payload(50_000, 4);
    writer.write_all(&data[..1000]).unwrap();
    let log_of = reg.log_path();
    let writing = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log_of)
            .unwrap_or_default()
            .contains("POST /v2/small/app/blobs/uploads/")
        {
            assert!(std::time::Instant::now() < deadline, "no session started");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        writer.write_all(&data[1000..]).unwrap();
        writer.finish()
    });
    let outcome = client
        .upload_blob("small/app", BlobBody::Spool(spool), &no_progress)
        .await
        .unwrap();
    let (digest, size) = writing.join().unwrap();
    assert_eq!(
        outcome,
        UploadOutcome::Uploaded {
            digest: digest.clone(),
            size
        }
    );
    assert_eq!(size, 50_000);
    assert_eq!(
        reg.count_requests("PATCH /v2/small/app/"),
        0,
        "{:?}",
        reg.request_log()
    );
    assert_eq!(reg.count_requests("PUT /v2/small/app/blobs/uploads/"), 1);
    assert_eq!(
        client
            .get_blob("small/app", &digest, 1 << 20)
            .await
            .unwrap()
            .len(),
        50_000
    );
}

async fn cross_repository_mount(reg: TestRegistry) {
    let client = reg.client();
    let data = Bytes::from(payload(5_000, 3));
    let digest = Digest::of(&data);
    client
        .upload_blob("src/app", BlobBody::Bytes(data.clone()), &no_progress)
        .await
        .unwrap();
    assert!(client
        .mount_blob("dst/app", &digest, "src/app")
        .await
        .unwrap());
    assert!(client.blob_exists("dst/app", &digest).await.unwrap());
    assert_eq!(reg.count_requests("PATCH /v2/dst/app/"), 0);

    // A blob the source does not have: 202, session cancelled, not mounted.
    let missing = Digest::of(b"not uploaded anywhere");
    assert!(!client
        .mount_blob("dst/app", &missing, "src/app")
        .await
        .unwrap());
    // Distribution wants `delete` for this; a refused cancel is harmless
    // (the session expires), so only the attempt is checked.
    assert!(reg.count_requests("DELETE /v2/dst/app/blobs/uploads/") >= 1);

    if let Auth::Token { .. } = reg.auth {
        // The mount's token carried pull on the source.
        assert!(reg.token_requests().iter().any(|scopes| scopes
            .contains(&"repository:src/app:pull".to_owned())
            && scopes.contains(&"repository:dst/app:pull,push".to_owned())));
        // The issuer now refuses the source: the mount falls back cleanly and
        // a plain upload still works.
        reg.deny_repository("src/app");
        let fresh = reg.client();
        assert!(!fresh
            .mount_blob("third/app", &digest, "src/app")
            .await
            .unwrap());
        let outcome = fresh
            .upload_blob("third/app", BlobBody::Bytes(data), &no_progress)
            .await
            .unwrap();
        assert!(matches!(outcome, UploadOutcome::Uploaded { .. }));
    }
}

/// Pushes a config and a layer, returns the image manifest.
async fn push_image(client: &RegistryClient, repo: &str, seed: u8) -> RawManifest {
    let config = Bytes::from(
        serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "seed": seed})
            .to_string(),
    );
    let layer = Bytes::from(payload(2_000, seed));
    for blob in [&config, &layer] {
        client
            .upload_blob(repo, BlobBody::Bytes(blob.clone()), &no_progress)
            .await
            .unwrap();
    }
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_MANIFEST.into(),
        config: Descriptor::new(MEDIA_TYPE_CONFIG, Digest::of(&config), config.len() as u64),
        layers: vec![Descriptor::new(
            MEDIA_TYPE_LAYER_GZIP,
            Digest::of(&layer),
            layer.len() as u64,
        )],
        annotations: BTreeMap::new(),
    };
    RawManifest::canonical(&manifest, MEDIA_TYPE_MANIFEST)
}

async fn manifests_and_index_round_trip(reg: TestRegistry) {
    let client = reg.client();
    let repo = "images/app";
    assert_eq!(client.head_manifest(repo, "latest").await.unwrap(), None);
    assert_eq!(client.get_manifest(repo, "latest").await.unwrap(), None);

    let image = push_image(&client, repo, 4).await;
    let by_digest = image.digest.to_string();
    client.put_manifest(repo, &by_digest, &image).await.unwrap();
    let head = client
        .head_manifest(repo, &by_digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head, image.descriptor());
    let got = client
        .get_manifest(repo, &by_digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, image, "exact bytes, digest and media type");

    let mut entry = image.descriptor();
    entry.platform = Some(Platform::from_nix_system("x86_64-linux").unwrap());
    let index = ImageIndex {
        schema_version: 2,
        media_type: MEDIA_TYPE_INDEX.into(),
        manifests: vec![entry],
        annotations: BTreeMap::from([("org.opencontainers.image.version".into(), "1.0".into())]),
    };
    let index = RawManifest::canonical(&index, MEDIA_TYPE_INDEX);
    client
        .put_manifest(repo, &index.digest.to_string(), &index)
        .await
        .unwrap();
    client.put_manifest(repo, "v1", &index).await.unwrap();
    let head = client.head_manifest(repo, "v1").await.unwrap().unwrap();
    assert_eq!(head.digest, index.digest);
    assert_eq!(head.media_type, MEDIA_TYPE_INDEX);
    assert_eq!(
        client.get_manifest(repo, "v1").await.unwrap().unwrap(),
        index
    );

    // Another tool sees exactly the bytes that were hashed.
    let host_repo = reg.repo(repo);
    assert_eq!(
        reg.skopeo_inspect_raw(&format!("{host_repo}:v1")),
        index.bytes
    );
    assert_eq!(
        reg.skopeo_inspect_raw(&format!("{host_repo}@{}", image.digest)),
        image.bytes
    );
    let out = tempfile::tempdir().unwrap();
    reg.skopeo_copy_to_oci(&format!("{host_repo}:v1"), &out.path().join("layout"));
    assert!(out.path().join("layout/index.json").is_file());

    // A manifest citing a blob the registry lacks is refused, with its code.
    let mut broken: ImageManifest = serde_json::from_slice(&image.bytes).unwrap();
    broken.layers[0].digest = Digest::of(b"missing layer");
    let broken = RawManifest::canonical(&broken, MEDIA_TYPE_MANIFEST);
    let e = client
        .put_manifest(repo, "broken", &broken)
        .await
        .unwrap_err();
    assert!(e.codes().contains(&"MANIFEST_BLOB_UNKNOWN"), "{e}");
}

async fn tag_listing_follows_links(reg: TestRegistry) {
    let client = reg.client();
    let repo = "tags/app";
    assert!(client.list_tags(repo).await.unwrap().is_empty());
    let image = push_image(&client, repo, 5).await;
    for tag in ["a", "b", "c"] {
        client.put_manifest(repo, tag, &image).await.unwrap();
    }
    // distribution 2.8 ignores `n` on tag lists (pagination came in 3.0);
    // Link following is checked on a quirk server below.
    let mut tags = client.list_tags_paged(repo, 2).await.unwrap();
    tags.sort();
    assert_eq!(tags, ["a", "b", "c"]);
    assert_eq!(client.list_tags(repo).await.unwrap().len(), 3);
}

async fn stale_location_is_rejected(reg: TestRegistry) {
    let client = reg.client();
    let repo = "stale/app";
    let first = payload(1000, 6);
    let second = payload(1000, 7);
    let whole: Vec<u8> = first.iter().chain(second.iter()).copied().collect();
    let digest = Digest::of(&whole);
    let l1 = client.start_upload(repo).await.unwrap();
    let l2 = client
        .patch_upload(repo, &l1, Bytes::from(first))
        .await
        .unwrap();
    let l3 = client
        .patch_upload(repo, &l2, Bytes::from(second))
        .await
        .unwrap();
    let e = client.commit_upload(repo, &l2, &digest).await.unwrap_err();
    assert!(
        e.codes().contains(&"BLOB_UPLOAD_INVALID"),
        "a replayed Location is refused: {e}"
    );
    assert!(
        !e.to_string().contains("_state="),
        "URLs print redacted: {e}"
    );
    client.commit_upload(repo, &l3, &digest).await.unwrap();
    assert!(client.blob_exists(repo, &digest).await.unwrap());
}

/// The error a wrong password gets from a registry with `auth`: a 401 with
/// the credentials hint, and never the password itself.
async fn wrong_password_error(auth: Auth) -> String {
    let reg = TestRegistry::start(auth);
    let client = reg.client_with(Credentials::basic(
        "tester",
        Secret::new("wrong-password"),
        "test flags",
    ));
    let e = client
        .blob_exists("app", &Digest::of(b"x"))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(401), "{text}");
    assert!(text.contains("hint: check the credentials"), "{text}");
    assert!(!text.contains("wrong-password"), "{text}");
    text
}

#[tokio::test]
async fn wrong_password_basic() {
    let text = wrong_password_error(Auth::basic()).await;
    assert!(
        text.contains("test flags"),
        "names where they came from: {text}"
    );
}

#[tokio::test]
async fn wrong_password_token() {
    let text = wrong_password_error(Auth::token()).await;
    assert!(text.contains("token"), "{text}");
}

#[tokio::test]
async fn anonymous_against_token_auth_is_refused_clearly() {
    let reg = TestRegistry::start(Auth::token());
    let client = reg.client_with(Credentials::anonymous());
    let e = client
        .upload_blob(
            "app",
            BlobBody::Bytes(Bytes::from_static(b"x")),
            &no_progress,
        )
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(401), "{e}");
    assert!(e.to_string().contains("no credentials were found"), "{e}");
}

#[tokio::test]
async fn a_failed_spool_fails_the_upload_without_retrying() {
    let reg = TestRegistry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, spool) = spool::create(dir.path()).unwrap();
    writer.write_all(&payload(200_000, 10)).unwrap();
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ev = events.clone();
    let on_progress = move |n: i64| ev.lock().unwrap().push(n);
    let client = reg.client();
    let upload = tokio::spawn(async move {
        client
            .upload_blob("broken", BlobBody::Spool(spool), &on_progress)
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while reg.count_requests("POST /v2/broken/blobs/uploads/") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no upload session was started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer.fail("the input command exited with status 1");
    let e = upload.await.unwrap().unwrap_err();
    assert!(
        matches!(e, manifold::registry::RegistryError::Spool(_)),
        "{e:?}"
    );
    let total: i64 = events.lock().unwrap().iter().sum();
    assert_eq!(total, 0, "a failed try gives its bytes back");
    assert_eq!(
        reg.count_requests("POST /v2/broken/blobs/uploads/"),
        1,
        "no retry"
    );
}

#[tokio::test]
async fn tag_pages_are_followed_through_link_headers() {
    let server = QuirkServer::start(|r| {
        let target = r.target.as_str();
        let json = |tags: &[&str]| {
            serde_json::json!({"name": "q", "tags": tags})
                .to_string()
                .into_bytes()
        };
        match target {
            "/v2/" => (200, vec![], b"{}".to_vec()),
            "/v2/q/tags/list?n=2" => (
                200,
                vec![(
                    "Link".into(),
                    r#"</v2/q/tags/list?n=2&last=b>; rel="next""#.into(),
                )],
                json(&["a", "b"]),
            ),
            "/v2/q/tags/list?n=2&last=b" => (200, vec![], json(&["c"])),
            _ => (
                404,
                vec![],
                br#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#.to_vec(),
            ),
        }
    });
    let client = server.client();
    assert_eq!(
        client.list_tags_paged("q", 2).await.unwrap(),
        ["a", "b", "c"]
    );
    assert!(client
        .list_tags_paged("missing", 2)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn relative_locations_with_queries_and_201_on_patch() {
    // ECR answers a PATCH with 201; Location is relative and carries a query.
    // Larger than STREAM_AFTER, so the spool is streamed in a PATCH.
    let head = STREAM_AFTER as usize + 1000;
    let data = payload(head + 2000, 8);
    let digest = Digest::of(&data);
    let size = data.len() as u64;
    let want = format!("PUT /v2/q/blobs/uploads/s2?state=x&digest={digest}");
    let server = QuirkServer::start(move |r| match (r.method.as_str(), r.target.as_str()) {
        ("GET", "/v2/") => (200, vec![], vec![]),
        ("POST", "/v2/q/blobs/uploads/") => (
            202,
            vec![("Location".into(), "/v2/q/blobs/uploads/s1?state=a".into())],
            vec![],
        ),
        ("PATCH", "/v2/q/blobs/uploads/s1?state=a") => {
            (201, vec![("Location".into(), "s2?state=x".into())], vec![])
        }
        ("PUT", t) if format!("PUT {t}") == want => (201, vec![], vec![]),
        _ => (
            400,
            vec![],
            br#"{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"unexpected"}]}"#.to_vec(),
        ),
    });
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, spool) = spool::create(dir.path()).unwrap();
    writer.write_all(&data[..head]).unwrap();
    let client = server.client();
    let upload = tokio::spawn({
        let spool = spool.clone();
        async move {
            client
                .upload_blob("q", BlobBody::Spool(spool), &no_progress)
                .await
        }
    });
    // Finish the spool only once the session exists, so the upload has
    // chosen the streamed PATCH (a loaded machine can take longer than any
    // fixed sleep to get there).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !server.request_lines().iter().any(|l| l.starts_with("POST")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no upload session was started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer.write_all(&data[head..]).unwrap();
    writer.finish();
    let outcome = upload.await.unwrap().unwrap();
    assert_eq!(outcome, UploadOutcome::Uploaded { digest, size });
    let log = server.request_lines();
    assert_eq!(
        log.iter().filter(|r| r.starts_with("PATCH")).count(),
        1,
        "{log:?}"
    );
}

#[tokio::test]
async fn transient_statuses_are_retried_honouring_retry_after() {
    let d = Digest::of(b"x");
    let target = format!("/v2/q/blobs/{d}");
    let heads = Arc::new(AtomicI64::new(0));
    let h = heads.clone();
    let server = QuirkServer::start(move |r| {
        if r.target == "/v2/" {
            return (200, vec![], vec![]);
        }
        if r.target == target && h.fetch_add(1, Ordering::SeqCst) == 0 {
            return (503, vec![("Retry-After".into(), "1".into())], vec![]);
        }
        if r.target == target {
            return (200, vec![], vec![]);
        }
        (404, vec![], vec![])
    });
    let started = std::time::Instant::now();
    assert!(server.client().blob_exists("q", &d).await.unwrap());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as asked"
    );
    assert_eq!(heads.load(Ordering::SeqCst), 2);

    // A 4xx is final: one try.
    let server = QuirkServer::start(|r| match r.target.as_str() {
        "/v2/" => (200, vec![], vec![]),
        _ => (
            400,
            vec![],
            br#"{"errors":[{"code":"DIGEST_INVALID","message":"no"}]}"#.to_vec(),
        ),
    });
    let e = server.client().get_blob("q", &d, 100).await.unwrap_err();
    assert_eq!(e.codes(), ["DIGEST_INVALID"]);
    assert_eq!(server.request_lines().len(), 2, "ping and one GET");
}

/// Eventually consistent storage (and distribution's filesystem driver while
/// another publisher rewrites a blob's link) can answer a manifest PUT with
/// "blob unknown" for a blob that is in place: it is tried again, briefly.
#[tokio::test]
async fn a_manifest_citing_a_blob_not_visible_yet_is_put_again() {
    let manifest = RawManifest::canonical(
        &serde_json::json!({"schemaVersion": 2, "manifests": []}),
        MEDIA_TYPE_INDEX,
    );
    let target = format!("/v2/q/manifests/{}", manifest.digest);
    let puts = Arc::new(AtomicI64::new(0));
    let (p, digest) = (puts.clone(), manifest.digest.to_string());
    let server = QuirkServer::start(move |r| match (r.method.as_str(), r.target.as_str()) {
        ("GET", "/v2/") => (200, vec![], vec![]),
        ("PUT", t) if t == target && p.fetch_add(1, Ordering::SeqCst) == 0 => (
            400,
            vec![],
            br#"{"errors":[{"code":"DIGEST_INVALID"},{"code":"MANIFEST_BLOB_UNKNOWN"}]}"#.to_vec(),
        ),
        ("PUT", t) if t == target => (
            201,
            vec![("Docker-Content-Digest".into(), digest.clone())],
            vec![],
        ),
        _ => (404, vec![], vec![]),
    });
    let client = server.client();
    client
        .put_manifest("q", &manifest.digest.to_string(), &manifest)
        .await
        .unwrap();
    assert_eq!(puts.load(Ordering::SeqCst), 2);

    // Other refusals stay final: one try.
    let server = QuirkServer::start(|r| match r.target.as_str() {
        "/v2/" => (200, vec![], vec![]),
        _ => (
            400,
            vec![],
            br#"{"errors":[{"code":"MANIFEST_INVALID"}]}"#.to_vec(),
        ),
    });
    let e = server
        .client()
        .put_manifest("q", "v1", &manifest)
        .await
        .unwrap_err();
    assert_eq!(e.codes(), ["MANIFEST_INVALID"]);
    assert_eq!(server.request_lines().len(), 2, "ping and one PUT");
}

/// A session the registry has lost (expired, or unknown to the replica the
/// PUT reached) is not the end: the upload starts again with a new one.
#[tokio::test]
async fn a_lost_upload_session_is_replaced() {
    let data = Bytes::from(payload(4000, 10));
    let digest = Digest::of(&data);
    let posts = Arc::new(AtomicI64::new(0));
    let (p, d) = (posts.clone(), digest.to_string());
    let server = QuirkServer::start(move |r| {
        match (r.method.as_str(), r.target.as_str()) {
        ("GET", "/v2/") => (200, vec![], vec![]),
        ("HEAD", _) => (404, vec![], vec![]),
        ("POST", _) => {
            let n = p.fetch_add(1, Ordering::SeqCst) + 1;
            let location = format!("/v2/q/blobs/uploads/s{n}");
            (202, vec![("Location".into(), location)], vec![])
        }
        ("PUT", t) if t.starts_with("/v2/q/blobs/uploads/s1") => (
            404,
            vec![],
            br#"{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"blob upload unknown to registry"}]}"#.to_vec(),
        ),
        ("PUT", _) => (201, vec![("Docker-Content-Digest".into(), d.clone())], vec![]),
        _ => (400, vec![], vec![]),
    }
    });
    let outcome = server
        .client()
        .upload_blob("q", BlobBody::Bytes(data), &no_progress)
        .await
        .unwrap();
    assert_eq!(outcome, UploadOutcome::Uploaded { digest, size: 4000 });
    assert_eq!(
        posts.load(Ordering::SeqCst),
        2,
        "{:?}",
        server.request_lines()
    );
}

#[tokio::test]
async fn a_failed_upload_is_retried_as_a_unit_and_gives_its_bytes_back() {
    let data = Bytes::from(payload(4000, 9));
    let digest = Digest::of(&data);
    let puts = Arc::new(AtomicI64::new(0));
    let p = puts.clone();
    let server = QuirkServer::start(move |r| match (r.method.as_str(), r.target.as_str()) {
        ("GET", "/v2/") => (200, vec![], vec![]),
        ("HEAD", _) => (404, vec![], vec![]),
        ("POST", _) => (
            202,
            vec![("Location".into(), "/v2/q/blobs/uploads/s".into())],
            vec![],
        ),
        ("PUT", _) if p.fetch_add(1, Ordering::SeqCst) == 0 => (500, vec![], vec![]),
        ("PUT", _) => (
            201,
            vec![("Docker-Content-Digest".into(), digest.to_string())],
            vec![],
        ),
        _ => (400, vec![], vec![]),
    });
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ev = events.clone();
    let on_progress = move |n: i64| ev.lock().unwrap().push(n);
    let outcome = server
        .client()
        .upload_blob("q", BlobBody::Bytes(data), &on_progress)
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        UploadOutcome::Uploaded { size: 4000, .. }
    ));
    assert_eq!(*events.lock().unwrap(), [4000, -4000, 4000]);
    let posts = server
        .request_lines()
        .iter()
        .filter(|l| l.starts_with("POST"))
        .count();
    assert_eq!(posts, 2, "a new session for the retry");
}

#[tokio::test]
async fn blob_redirects_drop_authorization_on_another_host() {
    let blob = b"config bytes".to_vec();
    let digest = Digest::of(&blob);
    let storage = {
        let blob = blob.clone();
        QuirkServer::start(move |_| (200, vec![], blob.clone()))
    };
    let storage_url = format!("http://{}/bucket/blob?X-Signature=abc", storage.host());
    let registry = QuirkServer::start(move |r| {
        if r.authorization.is_none() {
            return (
                401,
                vec![("WWW-Authenticate".into(), r#"Basic realm="quirk""#.into())],
                vec![],
            );
        }
        match r.target.as_str() {
            "/v2/" => (200, vec![], vec![]),
            _ => (307, vec![("Location".into(), storage_url.clone())], vec![]),
        }
    });
    let client = registry.client_with(Credentials::basic("u", Secret::new("p"), "test"));
    assert_eq!(client.get_blob("q", &digest, 1000).await.unwrap(), blob);
    let seen = storage.requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].target.starts_with("/bucket/blob?X-Signature="));
    assert_eq!(
        seen[0].authorization, None,
        "credentials stay with the registry"
    );
    assert!(registry.requests.lock().unwrap().iter().any(|r| r
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Basic "))));
}

#[tokio::test]
async fn identity_tokens_are_exchanged_with_a_refresh_token_grant() {
    let port = Arc::new(std::sync::OnceLock::<String>::new());
    let p = port.clone();
    let server = QuirkServer::start(move |r| {
        let realm = format!("http://{}/token", p.get().cloned().unwrap_or_default());
        match (r.method.as_str(), r.target.as_str()) {
            ("POST", "/token") => (200, vec![], br#"{"access_token":"acc-123"}"#.to_vec()),
            _ if r.authorization.as_deref() == Some("Bearer acc-123") => (200, vec![], vec![]),
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
    port.set(server.host()).unwrap();
    let client = server.client_with(Credentials::identity_token(
        Secret::new("refresh-xyz"),
        "test",
    ));
    assert!(client.blob_exists("q", &Digest::of(b"x")).await.unwrap());
    let token_request = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.target == "/token")
        .cloned()
        .unwrap();
    let form = String::from_utf8(token_request.body).unwrap();
    assert!(form.contains("grant_type=refresh_token"), "{form}");
    assert!(form.contains("refresh_token=refresh-xyz"), "{form}");
    assert!(form.contains("service=quirk"), "{form}");
    assert!(
        form.contains("scope=repository%3Aq%3Apull%2Cpush"),
        "{form}"
    );
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_before_a_streamed_upload() {
    let port = Arc::new(std::sync::OnceLock::<String>::new());
    let p = port.clone();
    let issued = Arc::new(AtomicI64::new(0));
    let i = issued.clone();
    let server = QuirkServer::start(move |r| {
        let realm = format!("http://{}/token", p.get().cloned().unwrap_or_default());
        let challenge = vec![(
            "WWW-Authenticate".into(),
            format!(r#"Bearer realm="{realm}",service="quirk""#),
        )];
        if r.target.starts_with("/token") {
            let n = i.fetch_add(1, Ordering::SeqCst) + 1;
            // 30 s: fine for quick requests, too short for a long body.
            let body = format!(r#"{{"token":"t{n}","expires_in":30}}"#);
            return (200, vec![], body.into_bytes());
        }
        if r.authorization.is_none() {
            return (401, challenge, vec![]);
        }
        match (r.method.as_str(), r.target.as_str()) {
            ("HEAD", _) => (404, vec![], vec![]),
            ("POST", _) => (
                202,
                vec![("Location".into(), "/v2/q/blobs/uploads/s".into())],
                vec![],
            ),
            ("PATCH", _) => (
                202,
                vec![("Location".into(), "/v2/q/blobs/uploads/s2".into())],
                vec![],
            ),
            ("PUT", _) => (201, vec![], vec![]),
            _ => (404, vec![], vec![]),
        }
    });
    port.set(server.host()).unwrap();
    let client = server.client();
    assert!(!client.blob_exists("q", &Digest::of(b"a")).await.unwrap());
    assert!(!client.blob_exists("q", &Digest::of(b"b")).await.unwrap());
    assert_eq!(
        issued.load(Ordering::SeqCst),
        1,
        "quick requests share a token"
    );

    let dir = tempfile::tempdir().unwrap();
    let (mut writer, spool) = spool::create(dir.path()).unwrap();
    // Larger than STREAM_AFTER, so the spool is streamed in a PATCH.
    writer
        .write_all(&payload(STREAM_AFTER as usize + 16, 3))
        .unwrap();
    let upload = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .upload_blob("q", BlobBody::Spool(spool), &no_progress)
                .await
        }
    });
    // Finish only once the session exists: the streamed PATCH is chosen then.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !server
        .request_lines()
        .iter()
        .any(|l| l.starts_with("POST /v2/q/blobs/uploads/"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no upload session was started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer.finish();
    upload.await.unwrap().unwrap();
    let patch = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.method == "PATCH")
        .cloned()
        .unwrap();
    assert_eq!(
        patch.authorization.as_deref(),
        Some("Bearer t2"),
        "the streamed PATCH got a fresh token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_blob_are_capped_by_jobs_times_requests_per_job() {
    let in_flight = Arc::new(AtomicI64::new(0));
    let peak = Arc::new(AtomicI64::new(0));
    let (f, pk) = (in_flight.clone(), peak.clone());
    let server = QuirkServer::start(move |r| {
        if r.method == "HEAD" {
            let now = f.fetch_add(1, Ordering::SeqCst) + 1;
            pk.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(150));
            f.fetch_sub(1, Ordering::SeqCst);
        }
        (if r.method == "HEAD" { 404 } else { 200 }, vec![], vec![])
    });
    let opts = manifold::registry::ClientOptions {
        jobs: 2,
        ..Default::default()
    };
    let client = server.client_with_options(Credentials::anonymous(), &opts);
    let checks = (0..12u8).map(|i| {
        let client = client.clone();
        async move { client.blob_exists("q", &Digest::of(&[i])).await.unwrap() }
    });
    let found = futures::future::join_all(checks).await;
    assert_eq!(found, [false; 12]);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        (2 * REQUESTS_PER_JOB) as i64,
        "at most `jobs` × REQUESTS_PER_JOB at once, and that many"
    );
}

/// An upload holds one of `jobs` while its body goes out, which may take
/// minutes; a HEAD (or a session POST, a commit) meanwhile does not wait
/// for it. With `jobs` 1, the HEAD is asked while a streamed upload is
/// still waiting for the rest of its spool, which comes only after the HEAD
/// has returned (or after 10 s, which fails the check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_does_not_wait_for_an_upload_in_flight() {
    let reg = TestRegistry::start(Auth::None);
    let opts = manifold::registry::ClientOptions {
        jobs: 1,
        ..Default::default()
    };
    let client =
        manifold::registry::RegistryClient::new(&reg.registry(), reg.credentials(), &opts).unwrap();
    client.ping().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, spool) = spool::create(dir.path()).unwrap();
    let data = payload(3 * STREAM_AFTER as usize, 7);
    let half = data.len() / 2;
    writer.write_all(&data[..half]).unwrap();
    let sent = Arc::new(AtomicI64::new(0));
    let upload = {
        let (client, spool, sent) = (client.clone(), spool.clone(), sent.clone());
        tokio::spawn(async move {
            let on_progress = move |n: i64| {
                sent.fetch_add(n, Ordering::SeqCst);
            };
            client
                .upload_new_blob("inflight/app", BlobBody::Spool(spool), &on_progress)
                .await
        })
    };
    // The body is going out: the upload holds the only job.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sent.load(Ordering::SeqCst) < half as i64 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        sent.load(Ordering::SeqCst),
        half as i64,
        "the upload started"
    );
    let head = tokio::time::timeout(
        Duration::from_secs(10),
        client.blob_exists("inflight/app", &Digest::of(b"something else")),
    )
    .await;
    writer.write_all(&data[half..]).unwrap();
    let (digest, _) = writer.finish();
    assert!(
        matches!(head, Ok(Ok(false))),
        "the HEAD waited for the upload: {head:?}"
    );
    let outcome = upload.await.unwrap().unwrap();
    assert_eq!(
        outcome,
        UploadOutcome::Uploaded {
            digest: digest.clone(),
            size: data.len() as u64
        }
    );
    assert_eq!(digest, Digest::of(&data));
}
