//! What `publish` prints and writes: `<repo>@<digest>` lines on stdout (or
//! the `--dry-run` plan), GitHub Actions outputs and step summary, and the
//! `--metadata-file` JSON.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::env::{self, Env};
use crate::progress::Totals;
use crate::publish::{self, outputs::Metadata};

/// Prints each report and writes the CI outputs (not for a dry run).
pub fn print_reports(
    reports: &[publish::Report],
    version: Option<String>,
    totals: Totals,
    dry_run: bool,
    batch: bool,
    metadata_file: Option<&PathBuf>,
    env: &Env,
) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    let mut all = Vec::new();
    for report in reports {
        let metadata = Metadata::new(report, version.clone(), totals);
        if dry_run {
            write!(stdout, "{}", dry_run_plan(report, &metadata))?;
            continue;
        }
        for reference in &metadata.references {
            writeln!(stdout, "{reference}")?;
        }
        all.push(metadata);
    }
    stdout.flush()?;
    if dry_run {
        return Ok(());
    }
    match all.as_slice() {
        [single] if !batch => write_ci_outputs(single, metadata_file, env),
        _ => write_batch_outputs(&all, metadata_file, env),
    }
}

/// Appends to a file GitHub Actions reads (`$GITHUB_OUTPUT`, the summary).
fn append(path: &str, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open `{path}`"))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write `{path}`"))
}

/// Fails before anything is published when `--metadata-file` could not be
/// written at the end (a missing directory, no permission): a publish that
/// moved tags and then exits 1 would leave a CI step red for nothing. Leaves
/// no file behind.
pub fn check_metadata_file(path: &Path) -> Result<()> {
    let existed = path.symlink_metadata().is_ok();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| {
            format!(
                "cannot write the metadata file `{}`; nothing was published",
                path.display()
            )
        })?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn write_metadata_file(path: &PathBuf, json: Vec<u8>) -> Result<()> {
    std::fs::write(path, json)
        .with_context(|| format!("cannot write the metadata file `{}`", path.display()))
}

/// A batch's outputs: `images` (every `<repo>@<digest>`, one a line) for
/// GitHub Actions, each image's summary, and a JSON array for
/// `--metadata-file`; `digest` and `image` describe a single publish only.
fn write_batch_outputs(all: &[Metadata], metadata_file: Option<&PathBuf>, env: &Env) -> Result<()> {
    if let Some(path) = env.get(env::GITHUB_OUTPUT) {
        let mut text = String::from("images<<MANIFOLD_EOF_IMAGES\n");
        for m in all {
            for reference in &m.references {
                text.push_str(reference);
                text.push('\n');
            }
        }
        text.push_str("MANIFOLD_EOF_IMAGES\n");
        append(path, &text)?;
    }
    if let Some(path) = env.get(env::GITHUB_STEP_SUMMARY) {
        for m in all {
            append(path, &m.step_summary())?;
        }
    }
    if let Some(path) = metadata_file {
        write_metadata_file(path, serde_json::to_vec_pretty(all)?)?;
    }
    Ok(())
}

/// What `--dry-run` prints: what would be pushed where.
fn dry_run_plan(report: &publish::Report, metadata: &Metadata) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("dry run: nothing was written\n");
    for image in &report.images {
        let _ = writeln!(
            out,
            "image {} {} from {}",
            image.platform, image.manifest.digest, image.input
        );
    }
    let _ = writeln!(out, "index {}", report.index.digest);
    if let Ok(index) = serde_json::from_slice::<crate::oci::ImageIndex>(&report.index.bytes) {
        for (key, value) in &index.annotations {
            let _ = writeln!(out, "annotation {key}={value}");
        }
    }
    for d in &report.destinations {
        let _ = writeln!(out, "destination {}@{}", d.destination, report.index.digest);
        let _ = writeln!(out, "  tags {}", d.tags.join(" "));
        for (tag, reason) in &d.withheld {
            let _ = writeln!(out, "  withheld {tag}: {reason}");
        }
    }
    let _ = writeln!(
        out,
        "blobs: {} bytes to upload, {} bytes already present or to be mounted",
        metadata.totals.bytes_uploaded, metadata.totals.bytes_skipped
    );
    out
}

/// GitHub Actions outputs and summary, and `--metadata-file`.
fn write_ci_outputs(metadata: &Metadata, metadata_file: Option<&PathBuf>, env: &Env) -> Result<()> {
    if let Some(path) = env.get(env::GITHUB_OUTPUT) {
        append(path, &metadata.github_output())?;
    }
    if let Some(path) = env.get(env::GITHUB_STEP_SUMMARY) {
        append(path, &metadata.step_summary())?;
    }
    if let Some(path) = metadata_file {
        write_metadata_file(path, serde_json::to_vec_pretty(metadata)?)?;
    }
    Ok(())
}
