//! What git says about the work tree (the revision and its commit time),
//! behind a trait so tests need no git.

use std::process::{Command, Stdio};

/// What git can tell about the work tree; a trait so tests need no git.
pub trait GitInfo {
    /// The commit checked out (`git rev-parse HEAD`), if in a work tree.
    fn head_revision(&self) -> Option<String>;
    /// The committer time of `rev`, in seconds since the epoch.
    fn commit_time(&self, rev: &str) -> Option<i64>;
}

/// [`GitInfo`] from the `git` on `PATH`, in the current directory. Any failure
/// (no git, not a work tree, unknown revision) is `None`, silently: git only
/// fills gaps the flags and environment left.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemGit;

impl SystemGit {
    fn run(args: &[&str]) -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    }
}

impl GitInfo for SystemGit {
    fn head_revision(&self) -> Option<String> {
        Self::run(&["rev-parse", "--verify", "--quiet", "HEAD"])
    }

    fn commit_time(&self, rev: &str) -> Option<i64> {
        // `--end-of-options` keeps a revision starting with `-` from being
        // read as an option.
        Self::run(&["show", "-s", "--format=%ct", "--end-of-options", rev])?
            .parse()
            .ok()
    }
}
