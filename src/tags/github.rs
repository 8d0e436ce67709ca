//! The run as GitHub Actions describes it (§1.1): the environment and the
//! event payload give the run kind, pull request, branch or tag; a pull
//! request from a fork is recognised.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;
use serde_json::Value;

use super::{Facts, Notes, TagError};
use crate::env::{self, Env};

pub(super) const PR_EVENTS: [&str; 4] = [
    "pull_request",
    "pull_request_target",
    "pull_request_review",
    "pull_request_review_comment",
];

static PULL_REF: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^refs/pull/([0-9]+)/(?:merge|head)$").expect("pull ref grammar compiles")
});

/// What triggered the run (§1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    PullRequest,
    MergeQueue,
    Tag,
    Branch,
    /// No ref known: a laptop, or an event whose ref isn't the run's.
    Unknown,
}

pub(super) fn json_str<'a>(payload: Option<&'a Value>, pointer: &str) -> Option<&'a str> {
    payload?
        .pointer(pointer)?
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

pub(super) fn json_u64(payload: Option<&Value>, pointer: &str) -> Option<u64> {
    let v = payload?.pointer(pointer)?;
    v.as_u64().or_else(|| v.as_str()?.trim().parse().ok())
}

pub(super) fn read_event(env: &Env) -> Result<Option<Value>, TagError> {
    let Some(path) = env.path(env::GITHUB_EVENT_PATH) else {
        return Ok(None);
    };
    let text = std::fs::read(&path).map_err(|source| TagError::EventFileUnreadable {
        path: path.clone(),
        source,
    })?;
    let value = serde_json::from_slice(&text)
        .map_err(|source| TagError::EventFileMalformed { path, source })?;
    Ok(Some(value))
}

/// The run as the environment describes it (§1.1).
pub(super) struct Detected {
    pub(super) run: RunKind,
    pub(super) pull_request: Option<u64>,
    /// The branch of a branch run.
    pub(super) branch: Option<String>,
    /// The tag name of a tag run.
    pub(super) ref_tag: Option<String>,
}

pub(super) fn detect(env: &Env, event: Option<&str>, payload: Option<&Value>) -> Detected {
    let git_ref = env.get(env::GITHUB_REF);
    let pull_ref = git_ref.and_then(|r| PULL_REF.captures(r));
    let mut d = Detected {
        run: RunKind::Unknown,
        pull_request: None,
        branch: None,
        ref_tag: None,
    };
    if event.is_some_and(|e| PR_EVENTS.contains(&e)) || pull_ref.is_some() {
        d.run = RunKind::PullRequest;
        d.pull_request = json_u64(payload, "/pull_request/number")
            .or_else(|| json_u64(payload, "/number"))
            .or_else(|| pull_ref?.get(1)?.as_str().parse().ok());
        return d;
    }
    if event == Some("merge_group") {
        d.run = RunKind::MergeQueue;
        return d;
    }
    // These runs' GITHUB_REF/GITHUB_SHA describe the default branch, not the
    // run that triggered them.
    if matches!(event, Some("workflow_run" | "repository_dispatch")) {
        return d;
    }
    let ref_type = env.get(env::GITHUB_REF_TYPE);
    // GITHUB_REF_TYPE/GITHUB_REF_NAME only stand in for a GITHUB_REF that
    // names neither a branch nor a tag.
    let by_type =
        !git_ref.is_some_and(|r| r.starts_with("refs/heads/") || r.starts_with("refs/tags/"));
    let ref_name = env.get(env::GITHUB_REF_NAME).map(str::to_owned);
    if let Some(tag) = git_ref.and_then(|r| r.strip_prefix("refs/tags/")) {
        d.run = RunKind::Tag;
        d.ref_tag = Some(tag.to_owned()).filter(|t| !t.is_empty());
    } else if by_type && ref_type == Some("tag") {
        d.run = RunKind::Tag;
        d.ref_tag = ref_name;
    } else if let Some(branch) = git_ref.and_then(|r| r.strip_prefix("refs/heads/")) {
        d.run = RunKind::Branch;
        d.branch = Some(branch.to_owned()).filter(|b| !b.is_empty());
    } else if by_type && ref_type == Some("branch") {
        d.run = RunKind::Branch;
        d.branch = ref_name;
    } else if event == Some("schedule") {
        // Scheduled runs are on the default branch; resolve fills it in.
        d.run = RunKind::Branch;
    }
    d
}

/// For a pull request from a fork, `(head repository, repository)`; warns
/// under `pull_request_target` (§1.1).
pub(super) fn check_fork(facts: &Facts, env: &Env, notes: &mut Notes) -> Option<(String, String)> {
    if facts.run != RunKind::PullRequest {
        return None;
    }
    if facts.event == Some("pull_request_target") {
        notes.warnings.push(
            "`pull_request_target` runs with a write token: the pull request's code, which may \
             be untrusted, is being published"
                .to_owned(),
        );
        return None;
    }
    let head_repo = json_str(facts.payload, "/pull_request/head/repo/full_name")?;
    let repository = env.get(env::GITHUB_REPOSITORY)?;
    (!head_repo.eq_ignore_ascii_case(repository))
        .then(|| (head_repo.to_owned(), repository.to_owned()))
}
