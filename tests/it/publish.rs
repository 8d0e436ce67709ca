//! `manifold publish` end to end, as a user runs it: the real binary against
//! a real registry, checked with skopeo and by reading back what was pushed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use manifold::digest::Digest;
use manifold::oci::{ImageIndex, ImageManifest};

use crate::harness::{
    random_archive, skopeo, skopeo_copy_all, write_script, Auth, FaultProxy, TestRegistry,
};

/// The repository's testdata directory.
pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// Runs the manifold binary with a clean environment: no CI variables, a
/// private HOME (so no credentials of the machine's are found), and a fixed
/// `SOURCE_DATE_EPOCH` so digests are reproducible.
pub struct Run {
    cmd: Command,
    stdin: Option<Vec<u8>>,
    _home: tempfile::TempDir,
}

impl Run {
    pub fn new(args: &[&str]) -> Run {
        let home = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_manifold"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("XDG_CACHE_HOME", home.path().join("cache"))
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .current_dir(home.path());
        Run {
            cmd,
            stdin: None,
            _home: home,
        }
    }

    /// One more argument, after those given to [`Run::new`].
    pub fn arg(mut self, arg: &str) -> Run {
        self.cmd.arg(arg);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Run {
        self.cmd.env(key, value);
        self
    }

    pub fn stdin(mut self, bytes: &[u8]) -> Run {
        self.stdin = Some(bytes.to_vec());
        self
    }

    /// Signs in as the test registries' user (`--username tester
    /// --password-stdin`), with `password` on stdin.
    pub fn signed_in(self, password: &[u8]) -> Run {
        self.arg("--username")
            .arg("tester")
            .arg("--password-stdin")
            .stdin(password)
    }

    pub fn output(mut self) -> Output {
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("manifold starts");
        if let Some(bytes) = self.stdin.take() {
            child.stdin.take().unwrap().write_all(&bytes).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs (without stdin) and also returns the peak resident memory of the
    /// manifold process in KiB (`ru_maxrss` from `wait4`; its own children,
    /// stream scripts, count too, so give it archives to measure it alone).
    pub fn output_with_peak_rss(mut self) -> (Output, u64) {
        use std::os::unix::process::ExitStatusExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (out_path, err_path) = self.output_to_files(dir.path());
        // Reaped by the wait4 below, which `Child::wait` cannot stand in for.
        #[allow(clippy::zombie_processes)]
        let child = self.cmd.spawn().expect("manifold starts");
        let pid = child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: plain syscall on our own child, with valid out-pointers.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
        let output = Output {
            status: std::process::ExitStatus::from_raw(status),
            stdout: std::fs::read(&out_path).unwrap(),
            stderr: std::fs::read(&err_path).unwrap(),
        };
        (output, usage.ru_maxrss as u64)
    }

    /// Runs (without stdin) with `watch` on a thread of its own, given the
    /// process id (to read `/proc/<pid>/…` while it runs); returns once
    /// both have ended.
    pub fn output_watched(mut self, watch: impl FnOnce(u32) + Send + 'static) -> Output {
        let dir = tempfile::tempdir().unwrap();
        let (out_path, err_path) = self.output_to_files(dir.path());
        let mut child = self.cmd.spawn().expect("manifold starts");
        let pid = child.id();
        let watcher = std::thread::spawn(move || watch(pid));
        let status = child.wait().unwrap();
        watcher.join().expect("the watcher panicked");
        Output {
            status,
            stdout: std::fs::read(&out_path).unwrap(),
            stderr: std::fs::read(&err_path).unwrap(),
        }
    }

    /// No stdin; stdout and stderr into files in `dir`, whose paths it
    /// returns (a pipe read only at the end could fill up and stall it).
    fn output_to_files(&mut self, dir: &Path) -> (PathBuf, PathBuf) {
        let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
        self.cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        (out_path, err_path)
    }

    /// Runs (without stdin), killed if it has not ended within `limit`:
    /// its output, or what it wrote to stderr before it was killed.
    pub fn output_within(mut self, limit: std::time::Duration) -> Result<Output, String> {
        let dir = tempfile::tempdir().unwrap();
        let (out_path, err_path) = self.output_to_files(dir.path());
        let mut child = self.cmd.spawn().expect("manifold starts");
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let stderr = std::fs::read(&err_path).unwrap();
        match status {
            Some(status) => Ok(Output {
                status,
                stdout: std::fs::read(&out_path).unwrap(),
                stderr,
            }),
            None => Err(String::from_utf8_lossy(&stderr).into_owned()),
        }
    }

    /// Runs and asserts success; returns stdout.
    pub fn success(self) -> String {
        let out = self.output();
        assert!(
            out.status.success(),
            "manifold failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// `manifold publish --repo REPO --tag TAG INPUT...`, ready to run.
pub fn publish_inputs(repo: &str, tag: &str, inputs: &[&Path]) -> Run {
    let mut args = vec!["publish", "--repo", repo, "--tag", tag];
    args.extend(inputs.iter().map(|input| input.to_str().unwrap()));
    Run::new(&args)
}

/// [`publish_inputs`] of the two stream fixtures.
pub fn publish_streams(repo: &str, tag: &str) -> Run {
    let (amd64, arm64) = (testdata("stream-amd64"), testdata("stream-arm64"));
    publish_inputs(repo, tag, &[&amd64, &arm64])
}

/// The regular files of a (small) tar, by name, read with a real tar reader.
fn tar_members(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut members = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            members.insert(name, bytes);
        }
    }
    members
}

/// The config digest and diff_ids of a plain docker-archive.
fn archive_facts(path: &Path) -> (Digest, Vec<Digest>) {
    let files = tar_members(path);
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config_name = manifest[0]["Config"].as_str().unwrap();
    let config = &files[config_name];
    let parsed: serde_json::Value = serde_json::from_slice(config).unwrap();
    let diff_ids = parsed["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().parse().unwrap())
        .collect();
    (Digest::of(config), diff_ids)
}

fn publish_and_verify(auth: Auth) {
    let registry = TestRegistry::start(auth.clone());
    let repo = registry.repo("acme/fd");
    let mut args = vec![
        "publish", "--repo", &repo, "--tag", "1.0.0", "--tag", "edge",
    ];
    if auth.creds().is_some() {
        args.extend(["--username", "tester", "--password-stdin"]);
    }
    let amd64 = testdata("stream-amd64");
    let arm64 = testdata("fd-arm64.tar.zst");
    args.push(amd64.to_str().unwrap());
    args.push(arm64.to_str().unwrap());
    let run = Run::new(&args).stdin(b"s3cret-pass\n");
    let out = run.output();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "publish failed:\n{stderr}");
    assert!(
        !stderr.contains("s3cret-pass"),
        "the password leaked:\n{stderr}"
    );
    // The stream script's own stderr is passed on, prefixed with the input.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(amd64.to_str().unwrap()) && l.contains("Creating layer")),
        "{stderr}"
    );

    // stdout: exactly one line, `<repo>@<index digest>`.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let (printed_repo, digest) = lines[0].split_once('@').unwrap();
    assert_eq!(printed_repo, repo);
    let digest: Digest = digest.parse().unwrap();

    // Both tags name the index, byte for byte.
    for tag in ["1.0.0", "edge"] {
        let raw = registry.skopeo_inspect_raw(&format!("{repo}:{tag}"));
        assert_eq!(Digest::of(&raw), digest, "tag {tag}");
    }
    let raw = registry.skopeo_inspect_raw(&format!("{repo}@{digest}"));
    let index: ImageIndex = serde_json::from_slice(&raw).unwrap();
    assert_eq!(index.media_type, manifold::oci::MEDIA_TYPE_INDEX);
    let platforms: Vec<String> = index
        .manifests
        .iter()
        .map(|m| m.platform.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "input order");

    // The pushed configs are the inputs' configs, byte for byte, and their
    // layers are the inputs' layers.
    for (entry, archive) in index.manifests.iter().zip(["fd-amd64.tar", "fd-amd64.tar"]) {
        let raw = registry.skopeo_inspect_raw(&format!("{repo}@{}", entry.digest));
        let manifest: ImageManifest = serde_json::from_slice(&raw).unwrap();
        assert_eq!(manifest.media_type, manifold::oci::MEDIA_TYPE_MANIFEST);
        if entry.platform.as_ref().unwrap().architecture == "amd64" {
            let (config, diff_ids) = archive_facts(&testdata(archive));
            assert_eq!(manifest.config.digest, config);
            assert_eq!(manifest.layers.len(), diff_ids.len());
        }
        for layer in &manifest.layers {
            assert_eq!(layer.media_type, manifold::oci::MEDIA_TYPE_LAYER_GZIP);
        }
    }

    // skopeo pulls everything back and checks every digest on the way.
    skopeo_copy_all(&format!("docker://{repo}:1.0.0"), auth.creds());
}

#[test]
fn publishes_a_stream_and_an_archive_anonymously() {
    publish_and_verify(Auth::None);
}

#[test]
fn publishes_with_basic_auth_from_stdin() {
    publish_and_verify(Auth::basic());
}

#[test]
fn publishes_with_bearer_tokens() {
    publish_and_verify(Auth::token());
}

#[test]
fn credentials_come_from_the_docker_config() {
    let registry = TestRegistry::start(Auth::basic());
    let repo = registry.repo("acme/cfg");
    let config_dir = tempfile::tempdir().unwrap();
    let auth = base64_encode("tester:s3cret-pass");
    std::fs::write(
        config_dir.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let amd64 = testdata("fd-amd64.tar.gz");
    Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "x",
        amd64.to_str().unwrap(),
    ])
    .env("DOCKER_CONFIG", config_dir.path())
    .success();
    registry.skopeo_inspect_raw(&format!("{repo}:x"));
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The two stream fixtures share two layers (`glibc`, streamed, and
/// `tzdata`, small): each is compressed and uploaded once, by whichever
/// input meets it first, and both manifests cite that one blob.
#[test]
fn a_layer_two_inputs_share_is_uploaded_once() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/shared");
    publish_streams(&repo, "1.0.0").success();

    let index: ImageIndex =
        serde_json::from_slice(&registry.skopeo_inspect_raw(&format!("{repo}:1.0.0"))).unwrap();
    let layers: Vec<Vec<Digest>> = index
        .manifests
        .iter()
        .map(|m| {
            let raw = registry.skopeo_inspect_raw(&format!("{repo}@{}", m.digest));
            let manifest: ImageManifest = serde_json::from_slice(&raw).unwrap();
            manifest.layers.into_iter().map(|l| l.digest).collect()
        })
        .collect();
    let shared: Vec<&Digest> = layers[0].iter().filter(|d| layers[1].contains(d)).collect();
    assert_eq!(shared.len(), 2, "glibc and tzdata: {layers:?}");
    let log = registry.request_log();
    for digest in shared {
        let puts: Vec<&String> = log
            .iter()
            .filter(|l| l.starts_with("PUT ") && l.contains("/blobs/uploads/"))
            .filter(|l| l.contains(&digest.to_string()))
            .collect();
        assert_eq!(puts.len(), 1, "{digest} uploaded once: {log:#?}");
    }
    skopeo_copy_all(&format!("docker://{repo}:1.0.0"), None);
}

#[test]
fn a_re_run_uploads_no_layer_and_gives_the_same_digest() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/rerun");
    let (amd64, arm64) = (testdata("stream-amd64"), testdata("stream-arm64"));
    let publish = || {
        Run::new(&[
            "publish",
            "--repo",
            &repo,
            "--tag",
            "1.0.0",
            "--tag",
            "stable",
            amd64.to_str().unwrap(),
            arm64.to_str().unwrap(),
        ])
        .success()
    };
    let first = publish();
    let uploads_after_first = registry.blob_upload_requests();
    assert!(uploads_after_first > 0);
    // Nothing is asked that the run already knows: the lookup found no
    // tags, so they are PUT without a HEAD first; each manifest names layers
    // just uploaded and the index names those manifests, so neither can be
    // there yet.
    let log = registry.request_log();
    let manifest_heads: Vec<_> = log
        .iter()
        .filter(|l| l.starts_with("HEAD /v2/acme/rerun/manifests/"))
        .collect();
    assert!(manifest_heads.is_empty(), "{manifest_heads:#?}");
    // A fresh runner: new HOME, so no local cache; the registry remembers.
    let log_before = log.len();
    let second = publish();
    assert_eq!(first, second, "same inputs, same index digest");
    // Its tags all point at one index: each of the two platforms' manifest
    // and config was read once, not once per tag.
    let log = registry.request_log();
    let tag_reads = log[log_before..]
        .iter()
        .filter(|l| l.starts_with("GET /v2/acme/rerun/manifests/") && !l.contains("sha256:"))
        .count();
    assert_eq!(tag_reads, 2, "{:#?}", &log[log_before..]);
    for what in ["manifests/sha256:", "blobs/sha256:"] {
        let reads = log[log_before..]
            .iter()
            .filter(|l| l.starts_with(&format!("GET /v2/acme/rerun/{what}")))
            .count();
        assert_eq!(reads, 2, "GET {what}: {:#?}", &log[log_before..]);
    }
    // What the lookup read is not asked again: no HEAD of a config it
    // fetched, of a layer a manifest it read names, of a manifest, of the
    // index or of a tag already in place; and nothing to PUT.
    let asked_again: Vec<&String> = log[log_before..]
        .iter()
        .filter(|l| {
            l.starts_with("HEAD /v2/acme/rerun/") || l.starts_with("PUT /v2/acme/rerun/manifests/")
        })
        .collect();
    assert!(asked_again.is_empty(), "{asked_again:#?}");
    // The first run compressed layers, so its configs were sent without a
    // HEAD first (the configs are the blobs the re-run read).
    let configs: Vec<&str> = log[log_before..]
        .iter()
        .filter_map(|l| l.strip_prefix("GET /v2/acme/rerun/blobs/"))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    assert_eq!(configs.len(), 2, "{:#?}", &log[log_before..]);
    let config_heads: Vec<&String> = log[..log_before]
        .iter()
        .filter(|l| {
            configs
                .iter()
                .any(|c| l.starts_with(&format!("HEAD /v2/acme/rerun/blobs/{c} ")))
        })
        .collect();
    assert!(config_heads.is_empty(), "{config_heads:#?}");
    assert_eq!(
        registry.blob_upload_requests(),
        uploads_after_first,
        "the re-run started no upload:\n{:#?}",
        registry.request_log()
    );
}

/// Re-runs over unchanged layers. The same commit again: everything is in
/// place, so nothing is PUT, and the tag guard does not read the tag lists a
/// second time (no tag will move, so none can move back). A new commit (here:
/// a new `created` time) gives a new index over the same manifests: the
/// manifests are left alone (the lookup read them), and the index, which
/// carries the run's annotations, is PUT without a HEAD first, a round trip
/// that could only answer "missing"; the lists are read again before the
/// tags move.
#[test]
fn re_runs_over_unchanged_layers_ask_only_what_they_must() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/commit");
    let (amd64, arm64) = (testdata("stream-amd64"), testdata("stream-arm64"));
    let publish = |created: &str| {
        let log_before = registry.request_log().len();
        let out = Run::new(&["publish", "--repo", &repo, "--no-auto-tags"])
            .arg("--tag")
            .arg("v1")
            .arg("--tag")
            .arg("latest")
            .arg("--created")
            .arg(created)
            .arg(amd64.to_str().unwrap())
            .arg(arm64.to_str().unwrap())
            .success();
        let log = registry.request_log()[log_before..].to_vec();
        (out, log)
    };
    let asks = |log: &[String], prefixes: &[&str]| -> Vec<String> {
        log.iter()
            .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
            .cloned()
            .collect()
    };
    let writes = [
        "HEAD /v2/acme/commit/manifests/",
        "PUT /v2/acme/commit/manifests/",
        "POST /v2/acme/commit/blobs/",
    ];
    let lists = ["GET /v2/acme/commit/tags/list"];

    let (first, _) = publish("2026-11-01T00:00:00Z");

    let (again, log) = publish("2026-11-01T00:00:00Z");
    assert_eq!(first, again, "the same commit, the same index");
    assert_eq!(asks(&log, &writes), Vec::<String>::new(), "{log:#?}");
    assert_eq!(asks(&log, &lists).len(), 1, "{log:#?}");

    let (next, log) = publish("2026-11-02T00:00:00Z");
    assert_ne!(first, next, "a new created time, a new index");
    let index = next.trim().rsplit('@').next().unwrap();
    let written = asks(&log, &writes);
    assert_eq!(written.len(), 3, "{written:#?}");
    assert!(
        written[0].starts_with(&format!("PUT /v2/acme/commit/manifests/{index} ")),
        "{written:#?}"
    );
    let mut tags: Vec<&str> = written[1..]
        .iter()
        .filter_map(|l| l.strip_prefix("PUT /v2/acme/commit/manifests/"))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    tags.sort();
    assert_eq!(tags, ["latest", "v1"], "{written:#?}");
    assert_eq!(asks(&log, &lists).len(), 2, "{log:#?}");
}

/// Stream scripts start while the registry is read for what it already has
/// (their start-up overlaps those round trips), but nothing is uploaded
/// before those reads are done: a proxy holds the known-layer lookup of the
/// tag until the stream has started, which would wait in vain (and fail the
/// check) if the streams only started after the lookup.
#[test]
fn streams_start_while_the_registry_is_read_and_upload_after() {
    let registry = TestRegistry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let proxy = FaultProxy::holding(
        registry.port(),
        "GET /v2/acme/early/manifests/1.0.0 ",
        &started,
    );
    let script = dir.path().join("stream-amd64");
    write_script(
        &script,
        &format!(
            "#!/bin/sh\ntouch '{}'\nexec '{}'\n",
            started.display(),
            testdata("stream-amd64").display()
        ),
    );
    let repo = format!("{}/acme/early", proxy.host());
    let out = Run::new(&["publish", "--repo", &repo, "--tag", "1.0.0"])
        .arg(&format!("stream:{}", script.display()))
        .success();
    assert_eq!(
        proxy.counts().held_in_vain,
        0,
        "the stream waited for the lookup"
    );
    // The lookup came before any upload.
    let log = registry.request_log();
    let lookup = log
        .iter()
        .position(|l| l.starts_with("GET /v2/acme/early/manifests/1.0.0 "))
        .expect("the tag was looked up");
    let first_upload = log
        .iter()
        .position(|l| l.starts_with("POST /v2/acme/early/blobs/uploads/"))
        .expect("layers were uploaded");
    assert!(lookup < first_upload, "{log:#?}");
    assert!(out.contains("acme/early@sha256:"), "{out}");
}

/// Two registries are reached at once, not one after the other: each
/// first request (`GET /v2/`) costs a connection, a TLS handshake and a
/// round trip. The first registry's is held until the second's has arrived,
/// which would wait in vain (and fail the check) if they went in turn.
#[test]
fn several_registries_are_reached_at_once() {
    let (first, second) = (
        TestRegistry::start(Auth::None),
        TestRegistry::start(Auth::None),
    );
    let dir = tempfile::tempdir().unwrap();
    let reached = dir.path().join("second-reached");
    let held = FaultProxy::holding(first.port(), "GET /v2/ ", &reached);
    let marking = FaultProxy::marking(second.port(), "GET /v2/ ", &reached);
    let out = Run::new(&["publish", "--tag", "1.0.0"])
        .arg("--repo")
        .arg(&format!("{}/acme/one", held.host()))
        .arg("--repo")
        .arg(&format!("{}/acme/two", marking.host()))
        .arg(testdata("stream-amd64").to_str().unwrap())
        .success();
    assert_eq!(
        held.counts().held_in_vain,
        0,
        "the registries were reached in turn"
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    skopeo_copy_all(&format!("docker://{}/acme/one:1.0.0", first.host()), None);
    skopeo_copy_all(&format!("docker://{}/acme/two:1.0.0", second.host()), None);
}

/// The stream scripts start while the registries are being reached: a
/// proxy holds the registry's first `GET /v2/` until the script has
/// started. Runs that reached the registry first held it to the limit.
#[test]
fn streams_start_while_the_registry_is_reached() {
    let registry = TestRegistry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let script = dir.path().join("stream");
    write_script(
        &script,
        &format!(
            "#!/bin/sh
touch '{}'
exec '{}'
",
            started.display(),
            testdata("stream-amd64").display()
        ),
    );
    let held = FaultProxy::holding(registry.port(), "GET /v2/ ", &started);
    Run::new(&["publish", "--tag", "v1"])
        .arg("--repo")
        .arg(&format!("{}/acme/early", held.host()))
        .arg(script.to_str().unwrap())
        .success();
    assert_eq!(
        held.counts().held_in_vain,
        0,
        "the stream started after the registry was reached"
    );
    skopeo_copy_all(&format!("docker://{}/acme/early:v1", registry.host()), None);
}

/// A registry that cannot be reached fails the publish at once with
/// `--max-retries 0`, with its own error naming it and nothing on stdout
/// (that the stream is held meanwhile is the next test's).
#[test]
fn an_unreachable_registry_fails_the_publish_by_name() {
    let out = Run::new(&["publish", "--tag", "v1", "--max-retries", "0"])
        .arg("--repo")
        .arg("127.0.0.1:1/acme/nowhere")
        .arg(testdata("stream-amd64").to_str().unwrap())
        .output();
    assert_nowhere_fails(&out);
}

/// While a registry does not answer at all, a stream is held back rather
/// than compressed on speculation for a run that may end with its error:
/// the stream script, which could get past its 8 MiB layer only once the
/// reader had taken most of it (the pipe holds 1 MiB), never gets there
/// while the ping is retried (about 4 s), and the run fails by name.
#[test]
fn a_registry_that_does_not_answer_holds_the_streams_back() {
    let dir = tempfile::tempdir().unwrap();
    let archive = crate::harness::random_hinted_archive(&dir.path().join("image.tar"), 8 << 20, 37);
    let (_, diff_ids) = archive_facts(&archive);
    let end = member_end(&archive, &format!("{}/layer.tar", diff_ids[0].hex()));
    let past = dir.path().join("past-the-layer");
    let script = dir.path().join("stream");
    // The sleep lets the first ping attempt fail before the layer comes.
    write_marking_stream(&script, "sleep 0.3", &archive, end, &past);
    let out = Run::new(&[
        "publish",
        "--tag",
        "v1",
        "--repo",
        "127.0.0.1:1/acme/nowhere",
    ])
    .arg(&format!("stream:{}", script.display()))
    .output();
    let stderr = assert_nowhere_fails(&out);
    assert!(!past.exists(), "the layer was read: {stderr}");
}

/// Writes `script`: a stream of `archive` that runs `first` (shell), then
/// writes the archive up to byte `end` and creates `past` before the rest:
/// `past` shows the reader has taken the bytes before `end` (all but the
/// pipe's 1 MiB).
fn write_marking_stream(script: &Path, first: &str, archive: &Path, end: u64, past: &Path) {
    write_script(
        script,
        &format!(
            "#!/bin/sh\n{first}\nhead -c {end} '{a}'\ntouch '{p}'\ntail -c +{} '{a}'\n",
            end + 1,
            a = archive.display(),
            p = past.display(),
        ),
    );
}

/// Asserts that `out` is the failure of a publish to `127.0.0.1:1`, where
/// nothing listens, naming that registry; returns its stderr.
fn assert_nowhere_fails(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot reach the registry `127.0.0.1:1`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    stderr
}

/// The byte offset where member `name` of the tar at `archive` ends.
fn member_end(archive: &Path, name: &str) -> u64 {
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in tar.entries().unwrap() {
        let entry = entry.unwrap();
        if &*entry.path_bytes() == name.as_bytes() {
            return (entry.raw_file_position() + entry.size()).div_ceil(512) * 512;
        }
    }
    panic!("no member {name} in {}", archive.display());
}

/// A stream is not held up while the registry reads that decide what to
/// upload are out: a layer named after its diff_id is compressed on
/// speculation meanwhile. A proxy holds those reads (the tag's manifest)
/// until the stream script has got past its 6 MiB layer, which it can only
/// once the reader has taken most of it (the pipe holds 1 MiB). A reader
/// that waited for the reads before taking the layer held them to the
/// limit (10 s). The cold run then uploads the layer, and a re-run from a
/// fresh runner, held the same way, drops the compression and uploads
/// nothing.
#[test]
fn a_stream_goes_on_while_the_registry_reads_are_out() {
    let registry = TestRegistry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let archive = crate::harness::random_hinted_archive(&dir.path().join("image.tar"), 6 << 20, 31);
    let (_, diff_ids) = archive_facts(&archive);
    let layer = format!("{}/layer.tar", diff_ids[0].hex());
    let end = member_end(&archive, &layer);
    let mut digests = Vec::new();
    for run in ["cold", "re-run"] {
        let past = dir.path().join(format!("{run}-past-the-layer"));
        let script = dir.path().join(format!("{run}-stream"));
        write_marking_stream(&script, ":", &archive, end, &past);
        let held = FaultProxy::holding(registry.port(), "GET /v2/acme/spec/manifests/", &past);
        let commits = || registry.count_requests("PUT /v2/acme/spec/blobs/uploads/");
        let before = commits();
        let out = Run::new(&["publish", "--tag", "v1"])
            .arg("--repo")
            .arg(&format!("{}/acme/spec", held.host()))
            .arg(&format!("stream:{}", script.display()))
            .output();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{run}: {stderr}");
        assert!(
            past.exists(),
            "{run}: the stream did not get past its layer"
        );
        assert_eq!(
            held.counts().held_in_vain,
            0,
            "{run}: the stream waited for the registry reads: {stderr}"
        );
        let uploaded = commits() - before;
        if run == "cold" {
            // The layer and the config.
            assert_eq!(uploaded, 2, "{stderr}");
            // The layer, encoded whole before the map said it was missing,
            // went up without a HEAD first (a round trip to learn nothing).
            assert_eq!(
                registry.count_requests("HEAD /v2/acme/spec/blobs/"),
                0,
                "{:#?}",
                registry.request_log()
            );
        } else {
            assert_eq!(uploaded, 0, "{stderr}");
            assert!(stderr.contains("already published"), "{stderr}");
        }
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        digests.push(stdout.split_once('@').map(|(_, d)| d.to_owned()));
    }
    assert!(digests[0].is_some());
    assert_eq!(digests[0], digests[1]);
    skopeo_copy_all(&format!("docker://{}/acme/spec:v1", registry.host()), None);
}

/// skopeo and podman write docker-archives with layers named
/// `<diff_id hex>.tar`: a re-run finds them in the known-layer map and
/// neither compresses nor uploads them.
#[test]
fn a_re_run_of_a_skopeo_written_archive_only_hashes_its_layers() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/skopeo-archive");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("fd.tar");
    skopeo([
        "copy",
        "-q",
        &format!("docker-archive:{}", testdata("fd-amd64.tar").display()),
        &format!("docker-archive:{}", archive.display()),
    ]);
    let (_, diff_ids) = archive_facts(&archive);
    let args = [
        "publish",
        "--repo",
        &repo,
        "--tag",
        "v1",
        archive.to_str().unwrap(),
    ];
    let first = Run::new(&args).success();
    let uploads = registry.blob_upload_requests();
    let out = Run::new(&args).output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), first);
    assert!(
        stderr.contains(&format!(
            "{} layer(s) already published will be reused",
            diff_ids.len()
        )),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("already published\n").count(),
        diff_ids.len(),
        "{stderr}"
    );
    // The closing summary counts the same.
    let summary = stderr.lines().last().unwrap_or_default();
    assert!(summary.starts_with("done in "), "{stderr}");
    assert!(summary.contains(": 0 B uploaded, "), "{summary}");
    assert!(
        summary.ends_with(&format!(
            ", {} layer(s) reused without compressing",
            diff_ids.len()
        )),
        "{summary}"
    );
    assert_eq!(registry.blob_upload_requests(), uploads);
}

/// Rewrites the plain docker-archive `src` as `docker save` does with
/// containerd's image store: each layer gzip-compressed and named by its
/// compressed digest under `blobs/sha256/`, the config there too, with an OCI
/// `index.json` and `oci-layout` beside `manifest.json`.
fn write_containerd_style_archive(src: &Path, dst: &Path) {
    let members = tar_members(src);
    let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    let blob_name = |bytes: &[u8]| format!("blobs/sha256/{}", Digest::of(bytes).hex());
    let mut blobs = Vec::new();
    let mut layers = Vec::new();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&members[layer.as_str().unwrap()]).unwrap();
        let gz = gz.finish().unwrap();
        layers.push(blob_name(&gz));
        blobs.push((blob_name(&gz), gz));
    }
    let config = members[manifest[0]["Config"].as_str().unwrap()].clone();
    let config_name = blob_name(&config);
    blobs.push((config_name.clone(), config));
    let new_manifest =
        serde_json::json!([{"Config": config_name, "RepoTags": [], "Layers": layers}]);
    let mut out = tar::Builder::new(std::fs::File::create(dst).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.append_data(&mut h, name, data).unwrap();
    };
    for (name, data) in &blobs {
        add(name, data);
    }
    add("index.json", br#"{"schemaVersion":2,"manifests":[]}"#);
    add("manifest.json", new_manifest.to_string().as_bytes());
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    out.finish().unwrap();
}

/// An archive whose layers are compressed (`docker save` from containerd's
/// image store) publishes the very image its plain form does: the layers are
/// read decompressed, checked against the diff_ids and encoded as usual.
#[test]
fn an_archive_with_compressed_layers_publishes_the_same_image() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/containerd-save");
    let dir = tempfile::tempdir().unwrap();
    let plain = testdata("fd-amd64.tar");
    let compressed = dir.path().join("fd-containerd.tar");
    write_containerd_style_archive(&plain, &compressed);
    let from_plain = publish_inputs(&repo, "plain", &[&plain]).success();
    let from_compressed = publish_inputs(&repo, "compressed", &[&compressed]).success();
    let digest = |stdout: &str| stdout.trim().rsplit_once('@').unwrap().1.to_owned();
    assert_eq!(digest(&from_compressed), digest(&from_plain));
    let raw = registry.skopeo_inspect_raw(&format!("{repo}:compressed"));
    assert_eq!(Digest::of(&raw).to_string(), digest(&from_compressed));
    assert_eq!(raw, registry.skopeo_inspect_raw(&format!("{repo}:plain")));
}

#[test]
fn an_oci_layout_gets_the_same_index_as_a_registry() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/both");
    let out = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}", out.path().join("layout").display());
    let amd64 = testdata("fd-amd64.tar");
    let arm64 = testdata("fd-arm64.tar.zst");
    let stdout = Run::new(&[
        "publish",
        "--repo",
        &layout,
        "--repo",
        &repo,
        "--tag",
        "latest",
        amd64.to_str().unwrap(),
        arm64.to_str().unwrap(),
    ])
    .success();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let digests: Vec<&str> = lines
        .iter()
        .map(|l| l.rsplit_once('@').unwrap().1)
        .collect();
    assert_eq!(digests[0], digests[1]);
    assert!(lines[0].starts_with("oci:"));
    // skopeo reads the layout (and checks every digest while copying).
    skopeo_copy_all(
        &format!("oci:{}:latest", out.path().join("layout").display()),
        None,
    );
}

#[test]
fn a_failing_stream_moves_no_tag() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/broken");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("stream-broken");
    write_script(
        &script,
        &format!(
            "#!/bin/sh\nhead -c 20000 '{}'\necho 'build exploded' >&2\nexit 3\n",
            testdata("fd-amd64.tar").display()
        ),
    );
    let arm64 = testdata("stream-arm64");
    let out = Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "1.0.0",
        &format!("stream:{}", script.display()),
        arm64.to_str().unwrap(),
    ])
    .output();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stream-broken"),
        "names the input:\n{stderr}"
    );
    assert!(
        stderr.contains("build exploded") || stderr.contains("exit"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(
        registry.count_requests("PUT /v2/acme/broken/manifests/1.0.0"),
        0,
        "no tag was touched:\n{:#?}",
        registry.request_log()
    );
}

#[test]
fn twelve_inputs_at_once_stay_under_100_mib() {
    // The issue's memory goal. Every input is read at once; without the
    // limit on layers encoded at once (`layer::slots`) each held its own
    // compression buffers, and twelve peaked at 135 MiB.
    const PLATFORMS: [&str; 12] = [
        "linux/amd64",
        "linux/arm64",
        "linux/arm/v7",
        "linux/ppc64le",
        "linux/s390x",
        "linux/386",
        "linux/riscv64",
        "linux/mips64le",
        "linux/arm/v6",
        "linux/loong64",
        "linux/mips64",
        "linux/arm/v5",
    ];
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/many");
    let dir = tempfile::tempdir().unwrap();
    let inputs: Vec<String> = PLATFORMS
        .iter()
        .enumerate()
        .map(|(i, platform)| {
            let path = dir.path().join(format!("{i}.tar"));
            let archive = random_archive(&path, 6 << 20, 100 + i as u64);
            format!("{platform}={}", archive.display())
        })
        .collect();
    let mut args = vec!["publish", "--repo", &repo, "--tag", "1.0.0"];
    args.extend(inputs.iter().map(String::as_str));
    let (out, peak_kib) = Run::new(&args).output_with_peak_rss();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        peak_kib < 100 << 10,
        "peak RSS {} MiB for twelve inputs",
        peak_kib >> 10
    );
    let index: ImageIndex =
        serde_json::from_slice(&registry.skopeo_inspect_raw(&format!("{repo}:1.0.0"))).unwrap();
    assert_eq!(index.manifests.len(), 12);
}

#[test]
fn streams_are_read_at_the_same_time() {
    // Each stream writes the first MiB of its archive (more than a pipe
    // holds, so manifold must read it), says so, then waits for the other
    // to have got as far. Read one after the other, the first would wait in
    // vain and fail. The two images share no layer (a shared one is read
    // once its first reader has published it, by design).
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/together");
    let dir = tempfile::tempdir().unwrap();
    let stream = |me: &str, other: &str, seed: u64| {
        let archive = random_archive(&dir.path().join(format!("{me}.tar")), 3 << 20, seed);
        let path = dir.path().join(format!("stream-{me}"));
        write_script(
            &path,
            &format!(
                "#!/usr/bin/env python3\n\
                 import os, sys, time\n\
                 data = open({archive:?}, 'rb').read()\n\
                 sys.stdout.buffer.write(data[:1 << 20]); sys.stdout.buffer.flush()\n\
                 open(os.path.join({dir:?}, {me:?}), 'w').close()\n\
                 deadline = time.monotonic() + 60\n\
                 while not os.path.exists(os.path.join({dir:?}, {other:?})):\n\
                 \x20   if time.monotonic() > deadline: sys.exit('{other} was not read while {me} waited')\n\
                 \x20   time.sleep(0.02)\n\
                 sys.stdout.buffer.write(data[1 << 20:])\n",
                archive = archive.to_str().unwrap(),
                dir = dir.path().to_str().unwrap(),
            ),
        );
        path
    };
    let (amd64, arm64) = (stream("amd64", "arm64", 21), stream("arm64", "amd64", 22));
    Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "1.0.0",
        &format!("linux/amd64=stream:{}", amd64.display()),
        &format!("linux/arm64=stream:{}", arm64.display()),
    ])
    .success();
    let index: ImageIndex =
        serde_json::from_slice(&registry.skopeo_inspect_raw(&format!("{repo}:1.0.0"))).unwrap();
    assert_eq!(index.manifests.len(), 2);
}

#[test]
fn two_inputs_of_one_platform_are_a_usage_error() {
    let out = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}", out.path().display());
    let a = testdata("fd-amd64.tar");
    let b = testdata("fd-amd64.tar.gz");
    let run = Run::new(&[
        "publish",
        "--repo",
        &layout,
        "--tag",
        "x",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    let output = run.output();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("linux/amd64"), "{stderr}");
}

#[test]
fn a_platform_prefix_overrides_the_config() {
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("l");
    let a = testdata("fd-amd64.tar");
    Run::new(&[
        "publish",
        "--repo",
        &format!("oci:{}", layout.display()),
        "--tag",
        "x",
        &format!("linux/arm/v7=archive:{}", a.display()),
    ])
    .success();
    let index: ImageIndex =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = &index.manifests[0].digest;
    let inner: ImageIndex = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(digest.hex())).unwrap(),
    )
    .unwrap();
    assert_eq!(
        inner.manifests[0].platform.as_ref().unwrap().to_string(),
        "linux/arm/v7"
    );
}

#[test]
fn the_local_cache_skips_layers_for_a_tag_not_yet_pushed() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/cached");
    let cache = tempfile::tempdir().unwrap();
    let publish = |tag: &str| {
        publish_streams(&repo, tag)
            .env("XDG_CACHE_HOME", cache.path())
            .success()
    };
    publish("1.0.0");
    let uploads = registry.blob_upload_requests();
    // `1.0.1` does not exist in the registry, so only the local cache knows
    // which blobs were pushed for these layers.
    publish("1.0.1");
    assert_eq!(
        registry.blob_upload_requests(),
        uploads,
        "{:#?}",
        registry.request_log()
    );
    assert!(cache.path().join("manifold/layers.json").is_file());
}

#[test]
fn a_second_repository_on_one_registry_mounts_instead_of_uploading() {
    let registry = TestRegistry::start(Auth::token());
    let first = registry.repo("acme/one");
    let second = registry.repo("acme/two");
    let amd64 = testdata("stream-amd64");
    let out = publish_inputs(&first, "1.0.0", &[&amd64])
        .arg("--repo")
        .arg(&second)
        .signed_in(b"s3cret-pass")
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("mounted"), "{stderr}");
    // Layer bytes went to the first repository only.
    let patches_to_second = registry.count_requests("PATCH /v2/acme/two/");
    let mounts = registry
        .request_log()
        .iter()
        .filter(|l| {
            l.starts_with("POST /v2/acme/two/blobs/uploads/?")
                && l.contains("mount=")
                && l.ends_with(" 201")
        })
        .count();
    assert!(mounts >= 1, "{:#?}", registry.request_log());
    assert_eq!(patches_to_second, 0, "{:#?}", registry.request_log());
    for repo in [&first, &second] {
        skopeo_copy_all(&format!("docker://{repo}:1.0.0"), Auth::token().creds());
    }
}

/// Whether the registry's request log shows `digest` mounted into the
/// repository `into` from `from` (a `POST …?mount=&from=` answered 201).
fn was_mounted(log: &[String], into: &str, from: &str, digest: &str) -> bool {
    let (mount, from) = (
        format!("mount={}", digest.replace(':', "%3A")),
        format!("from={}", from.replace('/', "%2F")),
    );
    log.iter().any(|l| {
        l.starts_with(&format!("POST /v2/{into}/blobs/uploads/?"))
            && l.contains(&mount)
            && l.contains(&from)
            && l.ends_with(" 201")
    })
}

/// The local cache remembers where each blob was published: a publish to
/// another repository of the same registry (`acme/prod` after `acme/dev`,
/// no tag of it in the registry) mounts every layer from there, compresses
/// and uploads none, and reports each layer blob as mounted once.
#[test]
fn the_local_cache_mounts_layers_from_the_repository_they_went_to() {
    let registry = TestRegistry::start(Auth::token());
    let (dev, prod) = (registry.repo("acme/dev"), registry.repo("acme/prod"));
    let cache = tempfile::tempdir().unwrap();
    let metadata = cache.path().join("metadata.json");
    // (stdout, stderr) of a publish of the two streams with the cache.
    let publish = |repo: &str, extra: &[&str]| {
        let run = extra
            .iter()
            .fold(publish_streams(repo, "1.0.0"), |run, a| run.arg(a));
        let out = run
            .env("XDG_CACHE_HOME", cache.path())
            .signed_in(b"s3cret-pass")
            .output();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let metadata_file = ["--metadata-file", metadata.to_str().unwrap()];
    publish(&dev, &metadata_file);
    // The plan reads the cache as the publish will: nothing but the two
    // configs to upload.
    let (planned, _) = publish(&prod, &["--dry-run"]);
    let cached = std::fs::read(cache.path().join("manifold/layers.json")).unwrap();
    let (_, stderr) = publish(&prod, &metadata_file);

    let index: ImageIndex =
        serde_json::from_slice(&registry.skopeo_inspect_raw(&format!("{prod}:1.0.0"))).unwrap();
    let (mut layers, mut configs) = (BTreeMap::new(), 0);
    for m in &index.manifests {
        let raw = registry.skopeo_inspect_raw(&format!("{prod}@{}", m.digest));
        let manifest: ImageManifest = serde_json::from_slice(&raw).unwrap();
        configs += manifest.config.size;
        layers.extend(
            manifest
                .layers
                .iter()
                .map(|l| (l.digest.to_string(), l.size)),
        );
    }
    // The totals count each mounted blob once.
    let totals: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    assert_eq!(
        totals["bytes_mounted"],
        layers.values().sum::<u64>(),
        "{totals}"
    );
    assert!(stderr.contains(" mounted, "), "{stderr}");
    let log = registry.request_log();
    for digest in layers.keys() {
        assert!(
            was_mounted(&log, "acme/prod", "acme/dev", digest),
            "{digest} was not mounted from acme/dev: {log:#?}"
        );
        let short = &digest["sha256:".len().."sha256:".len() + 12];
        let reports: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with(&format!("{prod}: blob {short}")))
            .collect();
        // Once per image that has the layer: mounted by the first, found
        // in place by the other (the two arches share glibc and tzdata).
        let mounted = reports.iter().filter(|r| r.ends_with(" mounted")).count();
        assert_eq!(mounted, 1, "{reports:?} in:\n{stderr}");
        assert!(
            reports
                .iter()
                .all(|r| r.ends_with(" mounted") || r.ends_with(" already present")),
            "{reports:?}"
        );
    }
    // Only the two configs' bytes went to acme/prod, as planned.
    assert_eq!(
        registry.count_requests("PATCH /v2/acme/prod/"),
        0,
        "{log:#?}"
    );
    let want = format!("blobs: {configs} bytes to upload,");
    assert!(planned.contains(&want), "want `{want}` in:\n{planned}");
    // The dry run left the cache as it was; the publish added acme/prod.
    let after =
        String::from_utf8(std::fs::read(cache.path().join("manifold/layers.json")).unwrap())
            .unwrap();
    assert!(!String::from_utf8(cached).unwrap().contains("acme/prod"));
    assert!(after.contains("acme/prod"), "{after}");
    skopeo_copy_all(&format!("docker://{prod}:1.0.0"), Auth::token().creds());
}

/// A wrong password fails the run before any upload (the tag guard's tag
/// list is the first request that needs it), with the credentials hint and
/// not the ECR permission one, which a 401 does not call for.
#[test]
fn a_wrong_password_fails_before_uploading_with_the_credentials_hint() {
    let registry = TestRegistry::start(Auth::basic());
    let repo = registry.repo("acme/denied");
    let archive = testdata("fd-amd64.tar");
    let out = publish_inputs(&repo, "1.0.0", &[&archive])
        .signed_in(b"not-the-password")
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("401 Unauthorized"), "{stderr}");
    assert!(stderr.contains("hint: check the credentials"), "{stderr}");
    assert!(!stderr.contains("ecr:ListImages"), "{stderr}");
    assert!(!stderr.contains("not-the-password"), "{stderr}");
    assert_eq!(
        registry.blob_upload_requests(),
        0,
        "{:#?}",
        registry.request_log()
    );
}

/// `--cache-from` naming an image in another repository of the registry:
/// the layers it has are mounted from there, neither compressed nor uploaded
/// again, as `docker buildx --cache-from` reuses a base image's layers.
#[test]
fn cache_from_another_repository_mounts_its_layers() {
    let registry = TestRegistry::start(Auth::token());
    let base = registry.repo("acme/base");
    let app = registry.repo("acme/app");
    let (amd64, arm64) = (testdata("stream-amd64"), testdata("stream-arm64"));
    let publish = |repo: &str, extra: &[&str], inputs: &[&Path]| {
        let run = extra
            .iter()
            .fold(publish_inputs(repo, "1.0.0", inputs), |run, a| run.arg(a));
        let out = run.signed_in(b"s3cret-pass").output();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    publish(&base, &[], &[&amd64]);
    let cache_from = format!("{base}:1.0.0");
    // The plan counts the mounts as the publish then does them.
    let (plan, _) = publish(
        &app,
        &["--cache-from", &cache_from, "--dry-run"],
        &[&amd64, &arm64],
    );
    let (_, stderr) = publish(&app, &["--cache-from", &cache_from], &[&amd64, &arm64]);
    assert!(stderr.contains("will be mounted from there"), "{stderr}");

    let manifests_of = |repo: &str| -> Vec<ImageManifest> {
        let index: ImageIndex =
            serde_json::from_slice(&registry.skopeo_inspect_raw(&format!("{repo}:1.0.0"))).unwrap();
        index
            .manifests
            .iter()
            .map(|m| {
                let raw = registry.skopeo_inspect_raw(&format!("{repo}@{}", m.digest));
                serde_json::from_slice::<ImageManifest>(&raw).unwrap()
            })
            .collect()
    };
    let layers_of = |manifests: &[ImageManifest]| -> Vec<Digest> {
        manifests
            .iter()
            .flat_map(|m| m.layers.iter().map(|l| l.digest.clone()))
            .collect()
    };
    let app_manifests = manifests_of(&app);
    let base_layers = layers_of(&manifests_of(&base));
    let app_layers = layers_of(&app_manifests);
    // To upload: the configs, and each layer the base lacks, once.
    let mut to_upload: BTreeMap<&Digest, u64> = BTreeMap::new();
    for m in &app_manifests {
        to_upload.insert(&m.config.digest, m.config.size);
        for l in m.layers.iter().filter(|l| !base_layers.contains(&l.digest)) {
            to_upload.insert(&l.digest, l.size);
        }
    }
    let planned = format!(
        "blobs: {} bytes to upload,",
        to_upload.values().sum::<u64>()
    );
    assert!(plan.contains(&planned), "want `{planned}` in:\n{plan}");
    let log = registry.request_log();
    let mut mounted = 0;
    for digest in app_layers.iter().filter(|d| base_layers.contains(d)) {
        let digest = digest.to_string();
        let uploads = log
            .iter()
            .filter(|l| l.starts_with("PUT /v2/acme/app/blobs/uploads/") && l.contains(&digest))
            .count();
        assert_eq!(uploads, 0, "{digest} was uploaded again: {log:#?}");
        assert!(
            was_mounted(&log, "acme/app", "acme/base", &digest),
            "{digest} was not mounted from acme/base: {log:#?}"
        );
        mounted += 1;
    }
    // All four amd64 layers; arm64 shares glibc and tzdata with them.
    assert!(mounted >= 4, "{mounted} mounted: {log:#?}");
    assert!(app_layers.iter().any(|d| !base_layers.contains(d)));
    skopeo_copy_all(&format!("docker://{app}:1.0.0"), Auth::token().creds());
}

#[test]
fn the_docker_format_pushes_a_manifest_list_of_v2s2_manifests() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/docker");
    let amd64 = testdata("fd-amd64.tar");
    let arm64 = testdata("fd-arm64.tar.zst");
    let out = Run::new(&[
        "publish",
        "--format",
        "docker",
        "--repo",
        &repo,
        "--version",
        "1.0.0",
        amd64.to_str().unwrap(),
        arm64.to_str().unwrap(),
    ])
    .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no annotations"),
        "the dropped annotations are said: {stderr}"
    );
    let raw = registry.skopeo_inspect_raw(&format!("{repo}:1.0.0"));
    let list: ImageIndex = serde_json::from_slice(&raw).unwrap();
    assert_eq!(list.media_type, manifold::oci::MEDIA_TYPE_DOCKER_LIST);
    for entry in &list.manifests {
        assert_eq!(entry.media_type, manifold::oci::MEDIA_TYPE_DOCKER_MANIFEST);
        let raw = registry.skopeo_inspect_raw(&format!("{repo}@{}", entry.digest));
        let m: ImageManifest = serde_json::from_slice(&raw).unwrap();
        assert_eq!(m.config.media_type, manifold::oci::MEDIA_TYPE_DOCKER_CONFIG);
        assert!(m
            .layers
            .iter()
            .all(|l| l.media_type == manifold::oci::MEDIA_TYPE_DOCKER_LAYER_GZIP));
    }
    skopeo_copy_all(&format!("docker://{repo}:1.0.0"), None);

    let zstd = Run::new(&[
        "publish",
        "--format",
        "docker",
        "--compression",
        "zstd",
        "--repo",
        &repo,
        "--tag",
        "x",
        amd64.to_str().unwrap(),
    ])
    .output();
    assert_eq!(zstd.status.code(), Some(2));
}

#[test]
fn inspect_shows_platforms_and_which_tags_point_here() {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/inspected");
    let amd64 = testdata("fd-amd64.tar");
    let arm64 = testdata("fd-arm64.tar.zst");
    let stdout = Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "a",
        "--tag",
        "b",
        amd64.to_str().unwrap(),
        arm64.to_str().unwrap(),
    ])
    .success();
    Run::new(&[
        "publish",
        "--repo",
        &repo,
        "--tag",
        "c",
        amd64.to_str().unwrap(),
    ])
    .success();
    let digest = stdout.trim().rsplit_once('@').unwrap().1.to_owned();
    let text = Run::new(&["inspect", &format!("{repo}:a"), "--tag", "b", "--tag", "c"]).success();
    assert!(text.starts_with(&format!("{repo}@{digest}")), "{text}");
    assert!(
        text.contains("linux/amd64") && text.contains("linux/arm64"),
        "{text}"
    );
    assert!(text.contains("tag b points here"), "{text}");
    assert!(text.contains("tag c points elsewhere"), "{text}");
    let json: serde_json::Value = serde_json::from_str(
        &Run::new(&["inspect", "--json", &format!("{repo}@{digest}")]).success(),
    )
    .unwrap();
    assert_eq!(json["images"].as_array().unwrap().len(), 2);
    let missing = Run::new(&["inspect", &format!("{repo}:nope")]).output();
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn completions_are_printed_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = Run::new(&["completions", shell]).success();
        assert!(script.contains("publish"), "{shell}");
    }
}

/// `docker save a b c`: one archive holding both fixtures' images, tagged
/// `fd:amd64` and `fd:arm64`, and a third image with a 3 MB random layer
/// (streamed, unlike the fixtures' small ones), `rand:1`.
fn write_three_image_archive(dst: &Path) {
    let arm64_tar = dst.with_extension("arm64.tar");
    let zst = std::fs::File::open(testdata("fd-arm64.tar.zst")).unwrap();
    zstd::stream::copy_decode(zst, std::fs::File::create(&arm64_tar).unwrap()).unwrap();
    let random = random_archive(&dst.with_extension("rand.tar"), 3 << 20, 7);
    let mut members = BTreeMap::new();
    let mut entries = Vec::new();
    for (source, tag) in [
        (testdata("fd-amd64.tar"), "fd:amd64"),
        (arm64_tar, "fd:arm64"),
        (random, "rand:1"),
    ] {
        let mut files = tar_members(&source);
        let mut list: serde_json::Value =
            serde_json::from_slice(&files.remove("manifest.json").unwrap()).unwrap();
        list[0]["RepoTags"] = serde_json::json!([tag]);
        entries.push(list[0].clone());
        members.extend(files);
    }
    members.insert(
        "manifest.json".to_owned(),
        serde_json::to_vec(&entries).unwrap(),
    );
    let mut out = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for (name, data) in &members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.append_data(&mut h, name, &data[..]).unwrap();
    }
    out.finish().unwrap();
}

/// Each image of a several-image archive is picked by tag or position, as
/// skopeo's `docker-archive:PATH:REF` does: the index is the one the
/// single-image archives give, and the other images' layers are never
/// compressed nor uploaded.
#[test]
fn one_image_of_a_several_image_archive_is_chosen_by_tag_or_position() {
    let registry = TestRegistry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let two = dir.path().join("three.tar");
    write_three_image_archive(&two);
    let direct = registry.repo("acme/direct");
    let chosen = registry.repo("acme/chosen");
    let (amd64, arm64) = (testdata("fd-amd64.tar"), testdata("fd-arm64.tar.zst"));
    publish_inputs(&direct, "x", &[&amd64, &arm64]).success();
    let by_tag = format!("archive:{}:fd:arm64", two.display());
    let by_position = format!("archive:{}:@0", two.display());
    let out = publish_inputs(&chosen, "arm", &[Path::new(&by_tag)]).output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let arm64_index: ImageIndex =
        serde_json::from_slice(&registry.skopeo_inspect_raw(&format!("{chosen}:arm"))).unwrap();
    let manifest: ImageManifest = serde_json::from_slice(
        &registry.skopeo_inspect_raw(&format!("{chosen}@{}", arm64_index.manifests[0].digest)),
    )
    .unwrap();
    // Only the arm64 image's layers were compressed (and so uploaded): the
    // random image's big layer was skipped unread.
    let compressed: Vec<&str> = stderr
        .lines()
        .filter(|l| l.ends_with(" compressed"))
        .collect();
    assert_eq!(compressed.len(), manifest.layers.len(), "{stderr}");
    publish_inputs(&chosen, "x", &[Path::new(&by_position), Path::new(&by_tag)]).success();
    assert_eq!(
        registry.skopeo_inspect_raw(&format!("{chosen}:x")),
        registry.skopeo_inspect_raw(&format!("{direct}:x"))
    );
    // Unchosen, the archive is refused naming its images; a wrong choice too.
    for (input, message) in [
        (
            two.display().to_string(),
            "lists 3 images (@0 `fd:amd64`; @1 `fd:arm64`; @2 `rand:1`)".to_owned(),
        ),
        (
            format!("archive:{}:fd:riscv64", two.display()),
            format!(
                "`archive:{}:fd:riscv64` has no image `fd:riscv64`",
                two.display()
            ),
        ),
    ] {
        let out = publish_inputs(&chosen, "no", &[Path::new(&input)]).output();
        assert_eq!(out.status.code(), Some(1), "{input}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&message), "{stderr}");
    }
}
