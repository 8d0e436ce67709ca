//! Atomicity under interruption: SIGTERM or Ctrl-C stops a publish within
//! two seconds, kills its stream scripts, moves no tag, and the next run
//! completes normally.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{write_script, Auth, TestRegistry};
use crate::publish::{publish_streams, testdata};

fn interrupt_a_hanging_publish(signal: libc::c_int, expected_code: i32) {
    let registry = TestRegistry::start(Auth::None);
    let repo = registry.repo("acme/interrupted");
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("stream.pid");
    let script = dir.path().join("stream-hangs");
    // Writes part of an archive, records its pid, then hangs like a stuck build.
    write_script(
        &script,
        &format!(
            "#!/bin/sh\necho $$ > '{}'\nhead -c 1500000 '{}'\nexec sleep 600\n",
            pid_file.display(),
            testdata("fd-amd64.tar").display()
        ),
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_manifold"))
        .args(["publish", "--repo", &repo, "--tag", "1.0.0"])
        .arg(format!("stream:{}", script.display()))
        .arg(testdata("stream-arm64"))
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env_remove("GITHUB_ACTIONS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the stream script runs and some upload has started.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pid_file.exists() || registry.blob_upload_requests() == 0 {
        assert!(Instant::now() < deadline, "the publish never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stream_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let sent = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "still running 5 s after the signal"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    assert_eq!(status.code(), Some(expected_code), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(output.stdout.is_empty());
    // SAFETY: signal 0 only checks whether the process exists.
    let alive = unsafe { libc::kill(stream_pid, 0) } == 0;
    assert!(!alive, "the stream script {stream_pid} was left running");
    // No temp file can be left: spools are unlinked when created (see
    // `layer::spool`), so they vanish with the process; an emptiness check of
    // `--spool-dir` here could not fail.
    // No tag: a manifest PUT by digest (the other input's, finished before
    // the signal) moves nothing; a PUT by tag would.
    let tag_puts: Vec<String> = registry
        .request_log()
        .into_iter()
        .filter(|l| l.starts_with("PUT /v2/acme/interrupted/manifests/"))
        .filter(|l| !l.contains("/manifests/sha256:"))
        .collect();
    assert!(tag_puts.is_empty(), "{tag_puts:?}");

    // The next run completes normally.
    publish_streams(&repo, "1.0.0").success();
    registry.skopeo_inspect_raw(&format!("{repo}:1.0.0"));
}

#[test]
fn sigterm_stops_within_two_seconds_and_moves_no_tag() {
    interrupt_a_hanging_publish(libc::SIGTERM, 143);
}

#[test]
fn ctrl_c_stops_within_two_seconds_and_moves_no_tag() {
    interrupt_a_hanging_publish(libc::SIGINT, 130);
}
