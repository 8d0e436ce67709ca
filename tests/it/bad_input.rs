//! The bad-input corpus (`testdata/bad/`, see its README) through the real
//! binary: each case must fail with the exit code the table gives (1: the
//! input or the run failed, 2: usage), name its input on stderr with a
//! phrase of the problem, never panic, print nothing on stdout and tag
//! nothing at its `oci:` destination.

use std::path::Path;

use crate::publish::{testdata, Run};

/// One case: the inputs (relative to `testdata/bad/`, or a whole argument
/// when it holds `=` or `:`), extra flags, the exit code, and what stderr
/// must contain besides the input's name.
struct Case {
    inputs: &'static [&'static str],
    flags: &'static [&'static str],
    code: i32,
    /// The name stderr must show (defaults to the first input's).
    names: Option<&'static str>,
    phrases: &'static [&'static str],
}

const fn case(input: &'static [&'static str], code: i32, phrases: &'static [&'static str]) -> Case {
    Case {
        inputs: input,
        flags: &[],
        code,
        names: None,
        phrases,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case(&["empty.tar"], 1, &["an empty file"]),
        case(&["garbage.bin"], 1, &["not a tar archive"]),
        case(&["garbage.tar.gz"], 1, &["gzip", "not a tar archive"]),
        case(&["garbage.tar.zst"], 1, &["zstd", "cannot be decompressed"]),
        case(&["truncated-in-first-header.tar"], 1, &["truncated"]),
        case(&["truncated-in-layer.tar"], 1, &["layer.tar", "truncated"]),
        case(&["truncated-before-manifest.tar"], 1, &["truncated"]),
        case(
            &["truncated-in-manifest.tar"],
            1,
            &["manifest.json", "truncated"],
        ),
        case(
            &["truncated.tar.gz"],
            1,
            &["not a valid tar archive", "the gzip data ends"],
        ),
        case(
            &["truncated.tar.zst"],
            1,
            &["zstd", "cannot be decompressed"],
        ),
        case(&["no-manifest.tar"], 1, &["no `manifest.json`"]),
        case(
            &["manifest-malformed.tar"],
            1,
            &["`manifest.json`", "is not valid"],
        ),
        case(
            &["manifest-not-a-list.tar"],
            1,
            &["`manifest.json`", "expected a sequence"],
        ),
        case(&["two-images.tar"], 1, &["lists 2 images"]),
        case(
            &["missing-config.tar"],
            1,
            &["has no member", "as the config"],
        ),
        case(&["missing-layer.tar"], 1, &["has no member", "as a layer"]),
        case(&["config-not-json.tar"], 1, &["not a valid image config"]),
        case(
            &["wrong-diff-ids.tar"],
            1,
            &["expects diff_id", "sha256:0000"],
        ),
        case(&["too-few-diff-ids.tar"], 1, &["lists 0 diff_ids"]),
        case(
            &["stream-exits-nonzero"],
            1,
            &["exit status: 3", "nix build exploded"],
        ),
        case(&["stream-writes-nothing"], 1, &["wrote nothing"]),
        Case {
            flags: &["--stream-timeout", "2"],
            ..case(
                &["stream-hangs"],
                1,
                &["did not finish within 2s", "killed"],
            )
        },
        case(
            &["stream-not-executable"],
            1,
            &["without execute permission", "chmod +x"],
        ),
        case(&["n2c-malformed.json"], 1, &["not a nix2container image"]),
        case(&["n2c-wrong-types.json"], 1, &["key `version`"]),
        case(
            &["n2c-missing-store-path.json"],
            1,
            &["cannot read", "-missing"],
        ),
        case(
            &["not-a-layout"],
            1,
            &["without `oci-layout` and `index.json`"],
        ),
        case(
            &["symlink-loop-a"],
            1,
            &["cannot open input", "symbolic links"],
        ),
        case(
            &["does-not-exist.tar"],
            1,
            &["cannot open input", "No such file"],
        ),
        // An invalid platform prefix makes the whole argument a path.
        case(
            &["linux/amd64/v9/extra=valid.tar"],
            1,
            &["cannot open input"],
        ),
        Case {
            names: Some("linux/amd64"),
            ..case(
                &["valid.tar", "linux/amd64=valid.tar"],
                2,
                &["are both", "one image per platform"],
            )
        },
        Case {
            flags: &["--tag", "bad tag!"],
            names: Some("bad tag!"),
            ..case(&["valid.tar"], 2, &["is not a valid tag", "hint:"])
        },
        Case {
            flags: &["--repo", "UPPER/Case::x"],
            names: Some("UPPER/Case::x"),
            ..case(&["valid.tar"], 2, &["not a valid image reference"])
        },
        case(
            &["valid.tar", "valid.tar"],
            2,
            &["are the same input", "one image per platform"],
        ),
        Case {
            flags: &["--metadata-file", "/nonexistent-manifold-dir/meta.json"],
            names: Some("meta.json"),
            ..case(
                &["valid.tar"],
                1,
                &["cannot write the metadata file", "nothing was published"],
            )
        },
        Case {
            flags: &["--cache-from", "garbage::ref"],
            names: Some("garbage::ref"),
            ..case(
                &["valid.tar"],
                2,
                &["not a tag, a digest or an image reference", "hint:"],
            )
        },
        Case {
            flags: &["--chunk-size", "4 parsecs"],
            names: Some("4 parsecs"),
            ..case(&["valid.tar"], 2, &["unknown unit"])
        },
    ]
}

/// The argument for `input`: a file of the corpus, keeping any
/// `PLATFORM=` prefix.
fn argument(input: &str) -> String {
    let dir = testdata("bad");
    match input.split_once('=') {
        Some((platform, file)) if !platform.contains('.') => {
            if platform.matches('/').count() > 2 {
                // Not a platform: the whole text is (meant as) the path.
                dir.join(input).display().to_string()
            } else {
                format!("{platform}={}", dir.join(file).display())
            }
        }
        _ => dir.join(input).display().to_string(),
    }
}

/// Whether the `oci:` layout at `dir` names any tag.
fn tagged(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("index.json"))
        .map(|t| t.contains("org.opencontainers.image.ref.name"))
        .unwrap_or(false)
}

#[test]
fn the_corpus_has_enough_cases_and_a_readme_row_for_each() {
    let readme = std::fs::read_to_string(testdata("bad").join("README.md")).unwrap();
    let cases = cases();
    assert!(cases.len() >= 25, "{}", cases.len());
    for c in &cases {
        let first = c.inputs[0].rsplit('=').next().unwrap();
        assert!(
            readme.contains(&format!("`{first}`")),
            "no README row for {first}"
        );
    }
}

#[test]
fn every_bad_input_fails_cleanly() {
    let mut failures = Vec::new();
    for c in cases() {
        let out_dir = tempfile::tempdir().unwrap();
        let layout = out_dir.path().join("out");
        let dest = format!("oci:{}", layout.display());
        let mut args: Vec<String> = vec!["publish".into()];
        if !c.flags.contains(&"--repo") {
            args.extend(["--repo".into(), dest.clone()]);
        }
        if !c.flags.contains(&"--tag") {
            args.extend(["--tag".into(), "x".into()]);
        }
        args.extend(c.flags.iter().map(|s| s.to_string()));
        args.extend(c.inputs.iter().map(|i| argument(i)));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = Run::new(&argv).output();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let name = c
            .names
            .unwrap_or_else(|| c.inputs[0].rsplit('/').next().unwrap());
        let mut problems = Vec::new();
        if out.status.code() != Some(c.code) {
            problems.push(format!("exit {:?}, want {}", out.status.code(), c.code));
        }
        if stderr.contains("panicked") || out.status.code() == Some(101) {
            problems.push("panicked".into());
        }
        if !stderr.contains(name) {
            problems.push(format!("stderr does not name `{name}`"));
        }
        for p in c.phrases {
            if !stderr.contains(p) {
                problems.push(format!("stderr lacks `{p}`"));
            }
        }
        if !out.stdout.is_empty() {
            problems.push(format!("stdout: {}", String::from_utf8_lossy(&out.stdout)));
        }
        if tagged(&layout) {
            problems.push("something was tagged".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{:?}: {}\n{stderr}", c.inputs, problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// The control: the corpus's base archive publishes, and is tagged, so the
/// checks above can tell a failure from a success.
#[test]
fn the_valid_base_archive_publishes() {
    let out_dir = tempfile::tempdir().unwrap();
    let layout = out_dir.path().join("out");
    let stdout = Run::new(&[
        "publish",
        "--repo",
        &format!("oci:{}", layout.display()),
        "--tag",
        "x",
        &argument("valid.tar"),
    ])
    .success();
    assert!(stdout.contains("@sha256:"), "{stdout}");
    assert!(tagged(&layout));
}
