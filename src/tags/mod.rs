//! Tag and annotation rules: from flags, the CI environment and the GitHub
//! event payload to the list of tags to push and the index annotations
//! (the reference `tags.md` is the spec; its section numbers appear below).
//!
//! Everything here is pure: the environment comes in as an [`Env`], git sits
//! behind [`GitInfo`], and the clock is read once, in [`resolve`]. Reading a
//! repository's existing tags is `registry`'s job; [`apply_guard`] only
//! decides, from that list, which floating tags would move backwards. Nothing
//! here prints: warnings and notices are returned in the [`TagPlan`] for the
//! caller to show.
//!
//! This file works out the tag plan (§1–2); the parts it stands on have a
//! module each: `github` (what run this is, from the environment and the
//! event payload), `version`, `annotations` (§6), `guard` (§3), `grammar`
//! (tag and repository syntax) and `git`.
//!
//! Where the spec is silent, these choices were made:
//! - `--branch` is a branch wherever the run isn't a pull request or merge
//!   queue: locally, or alongside a tag run, it gives the branch tag and
//!   case 2(a)'s `latest`.
//! - `--latest always` adds `latest` even when `--auto-tags` leaves it out.
//! - A `--version` that differs from the tag being built warns like
//!   `VERSION` does.
//! - An automatic tag equal to an earlier one is dropped (the first wins), so
//!   a `--tag 1` is the user's and never guarded.
//! - `sha-` needs a hex revision; GitHub's `NOASSERTION` license is left out;
//!   the push payload's `head_commit.timestamp` is used only when its `id` is
//!   the revision; a `SOURCE_DATE_EPOCH` that is not a number is ignored with
//!   a warning.
//! - Fork pull requests are recognised by `pull_request.head.repo.full_name`
//!   (case-insensitively); under `pull_request_target` the token can write,
//!   so only the untrusted-code warning applies.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

use crate::env::{self, Env};

mod annotations;
mod git;
mod github;
mod grammar;
mod guard;
mod version;

pub use annotations::{
    annotations_from_labels, format_utc, parse_annotation, ANNOTATION_AUTHORS, ANNOTATION_CREATED,
    ANNOTATION_DESCRIPTION, ANNOTATION_LICENSES, ANNOTATION_REVISION, ANNOTATION_SOURCE,
    ANNOTATION_TITLE, ANNOTATION_URL, ANNOTATION_VENDOR, ANNOTATION_VERSION,
};
pub use git::{GitInfo, SystemGit};
pub use github::RunKind;
pub use grammar::{repository_from_github, sanitize, validate_repository_path, validate_tag};
pub use guard::{apply_guard, GuardOutcome};
pub use version::{Version, VersionKind};

use annotations::index_annotations;
use github::{check_fork, detect, json_str, read_event, Detected};
use guard::counted_parts;
use version::normalise_version;

/// Why tags or annotations can't be worked out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TagError {
    /// A `--tag` breaks the OCI tag grammar.
    #[error(
        "`{tag}` is not a valid tag\n\
         hint: a tag is 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
    )]
    InvalidTag { tag: String },
    /// Nothing to tag, and `--no-tags` was not given.
    #[error(
        "no tags to publish\n\
         hint: pass `--tag`, `--version` or `--branch`, or `--no-tags` to publish by digest only"
    )]
    NoTags,
    /// An `--annotation` without `=` or with an empty key.
    #[error("`{arg}` is not an annotation\nhint: write `--annotation KEY=VALUE`, or `KEY=` to delete one")]
    BadAnnotation { arg: String },
    /// An unknown word in `--auto-tags`.
    #[error(
        "`{word}` is not an automatic tag kind\n\
         hint: use a comma-separated list of `branch`, `pr`, `latest`, `version`, `minor`, `major`, `sha`"
    )]
    BadAutoTag { word: String },
    /// An unknown `--latest` mode.
    #[error("`{word}` is not a `--latest` mode\nhint: use `auto`, `always` or `never`")]
    BadLatestMode { word: String },
    /// `--created` is neither seconds since the epoch nor an RFC 3339 time.
    #[error(
        "`{value}` is not a time\nhint: pass seconds since the epoch or `YYYY-MM-DDTHH:MM:SSZ`"
    )]
    BadCreated { value: String },
    /// A repository path breaks the OCI name grammar.
    #[error(
        "`{name}` is not a valid repository path\n\
         hint: use lowercase letters and digits, separated by `.`, `_`, `__`, `-` or `/`"
    )]
    InvalidRepository { name: String },
    /// The event payload at `GITHUB_EVENT_PATH` can't be read.
    #[error("cannot read the GitHub event payload `{}`", path.display())]
    EventFileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The event payload at `GITHUB_EVENT_PATH` is not JSON.
    #[error("the GitHub event payload `{}` is not valid JSON", path.display())]
    EventFileMalformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A pull request from a fork runs with a read-only token.
    #[error(
        "pull request from fork `{head_repo}` into `{repository}`: its `GITHUB_TOKEN` is read-only, \
         so nothing can be pushed\n\
         hint: publish on `push` after merging, or pass `--dry-run` to check the build only"
    )]
    ForkPullRequest {
        head_repo: String,
        repository: String,
    },
}

impl TagError {
    /// Whether the user's command line or inputs are at fault (exit status 2).
    pub fn is_usage_error(&self) -> bool {
        matches!(
            self,
            TagError::InvalidTag { .. }
                | TagError::NoTags
                | TagError::BadAnnotation { .. }
                | TagError::BadAutoTag { .. }
                | TagError::BadLatestMode { .. }
                | TagError::BadCreated { .. }
                | TagError::InvalidRepository { .. }
        )
    }
}

/// A kind of automatic tag (§2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoTag {
    Branch,
    Pr,
    Latest,
    Version,
    Minor,
    Major,
    Sha,
}

impl AutoTag {
    /// Every kind, in the order their tags are listed.
    pub const ALL: [AutoTag; 7] = [
        AutoTag::Branch,
        AutoTag::Pr,
        AutoTag::Latest,
        AutoTag::Version,
        AutoTag::Minor,
        AutoTag::Major,
        AutoTag::Sha,
    ];

    /// The kinds used when `--auto-tags` is not given (all but `sha`).
    pub const DEFAULT: [AutoTag; 6] = [
        AutoTag::Branch,
        AutoTag::Pr,
        AutoTag::Latest,
        AutoTag::Version,
        AutoTag::Minor,
        AutoTag::Major,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AutoTag::Branch => "branch",
            AutoTag::Pr => "pr",
            AutoTag::Latest => "latest",
            AutoTag::Version => "version",
            AutoTag::Minor => "minor",
            AutoTag::Major => "major",
            AutoTag::Sha => "sha",
        }
    }
}

impl fmt::Display for AutoTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AutoTag {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let word = s.trim();
        AutoTag::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(word))
            .ok_or_else(|| TagError::BadAutoTag {
                word: word.to_owned(),
            })
    }
}

/// Parses `--auto-tags branch,pr,…`: empty entries are skipped, repeats
/// removed; an empty list means no automatic tags.
pub fn parse_auto_tags(list: &str) -> Result<Vec<AutoTag>, TagError> {
    let mut kinds = Vec::new();
    for word in list.split(',').filter(|w| !w.trim().is_empty()) {
        let kind: AutoTag = word.parse()?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

/// `--latest`: when to add the `latest` tag (§2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LatestMode {
    /// On the default branch, or for a stable version with no branch known.
    #[default]
    Auto,
    /// On every run, unguarded.
    Always,
    /// Never.
    Never,
}

impl FromStr for LatestMode {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(LatestMode::Auto),
            "always" => Ok(LatestMode::Always),
            "never" => Ok(LatestMode::Never),
            _ => Err(TagError::BadLatestMode {
                word: s.trim().to_owned(),
            }),
        }
    }
}

/// The tag-related flags, as given; `None` means not given.
#[derive(Debug, Clone, Default)]
pub struct TagOptions {
    /// `--version`; `Some("")` explicitly clears it (no tag-name fallback).
    pub version: Option<String>,
    pub branch: Option<String>,
    pub default_branch: Option<String>,
    pub revision: Option<String>,
    pub source: Option<String>,
    /// `--created`: seconds since the epoch or RFC 3339.
    pub created: Option<String>,
    /// `--tag`s, listed first in this order.
    pub tags: Vec<String>,
    /// `--auto-tags` (replaces the default set); `Some(vec![])` for
    /// `--no-auto-tags`.
    pub auto_tags: Option<Vec<AutoTag>>,
    pub latest: LatestMode,
    /// `--no-tags`: publish by digest only.
    pub no_tags: bool,
    /// `--annotation KEY=VALUE`, applied last; an empty value deletes.
    pub annotations: Vec<(String, String)>,
}

/// Which floating tag a guarded tag is (§3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Floating {
    /// `X`: withheld when a counted tag with the same X is greater.
    Major,
    /// `X.Y`: withheld when a counted tag with the same X and Y is greater.
    Minor,
    /// `latest` of case 2(b): withheld when any counted tag is greater.
    Latest,
}

/// A tag that must not move backwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardedTag {
    pub tag: String,
    pub floating: Floating,
}

/// What became of one kind of automatic tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutoTagStatus {
    pub kind: AutoTag,
    /// The tag added, if one was.
    pub tag: Option<String>,
    /// Why none was, if none was.
    pub reason: Option<String>,
}

/// Everything [`resolve`] worked out; serialised by `manifold tags --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagPlan {
    pub run: RunKind,
    pub event: Option<String>,
    pub branch: Option<String>,
    pub default_branch: String,
    pub pull_request: Option<u64>,
    pub version: Option<Version>,
    pub revision: Option<String>,
    pub source: Option<String>,
    /// Tags to push, in order: the user's first, then automatic ones.
    pub tags: Vec<String>,
    /// The tags of `tags` that [`apply_guard`] may withhold.
    pub guarded: Vec<GuardedTag>,
    /// One entry per automatic kind, in [`AutoTag::ALL`] order.
    pub auto_tags: Vec<AutoTagStatus>,
    /// Index annotations (§6), `--annotation`s applied.
    pub annotations: BTreeMap<String, String>,
    /// Where `created` came from (`--created`, `SOURCE_DATE_EPOCH`, `git`,
    /// `event payload`, `now`).
    pub created_from: String,
    /// The `--annotation`s, kept so label-derived values never undo them.
    pub annotation_overrides: Vec<(String, String)>,
    pub warnings: Vec<String>,
    pub notices: Vec<String>,
    /// Set for a pull request from a fork: its token can't push. The caller
    /// fails with [`TagPlan::check_writable`] unless it is a dry run.
    pub fork_error: Option<String>,
    #[serde(skip)]
    fork: Option<(String, String)>,
}

impl TagPlan {
    /// Fails for a pull request from a fork (read-only token), unless
    /// `dry_run`.
    pub fn check_writable(&self, dry_run: bool) -> Result<(), TagError> {
        match &self.fork {
            Some((head_repo, repository)) if !dry_run => Err(TagError::ForkPullRequest {
                head_repo: head_repo.clone(),
                repository: repository.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// Works out tags and annotations from flags, environment and event payload.
pub fn resolve(opts: &TagOptions, env: &Env, git: &dyn GitInfo) -> Result<TagPlan, TagError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    resolve_at(opts, env, git, now)
}

/// A flag's value unless blank.
fn flag(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// Tags collected in order, duplicates dropped (the first wins).
#[derive(Default)]
struct TagList {
    tags: Vec<String>,
    guarded: Vec<GuardedTag>,
}

impl TagList {
    /// Adds `tag`; false when it was already there.
    fn push(&mut self, tag: &str, floating: Option<Floating>) -> bool {
        if tag.is_empty() || self.tags.iter().any(|t| t == tag) {
            return false;
        }
        self.tags.push(tag.to_owned());
        if let Some(floating) = floating {
            self.guarded.push(GuardedTag {
                tag: tag.to_owned(),
                floating,
            });
        }
        true
    }
}

/// Warnings and notices gathered while resolving, for the caller to show.
#[derive(Default)]
struct Notes {
    warnings: Vec<String>,
    notices: Vec<String>,
}

/// What the automatic tags and annotations are derived from.
struct Facts<'a> {
    opts: &'a TagOptions,
    event: Option<&'a str>,
    payload: Option<&'a Value>,
    run: RunKind,
    pull_request: Option<u64>,
    branch: Option<String>,
    default_branch: String,
    version: Option<Version>,
    revision: Option<String>,
    source: Option<String>,
}

/// A tag and whether it floats, or why there is none.
type Candidate = Result<(String, Option<Floating>), String>;

fn resolve_at(
    opts: &TagOptions,
    env: &Env,
    git: &dyn GitInfo,
    now: i64,
) -> Result<TagPlan, TagError> {
    let mut notes = Notes::default();
    // Usage errors first, before anything is read.
    for (key, _) in &opts.annotations {
        if key.trim().is_empty() || key.chars().any(char::is_whitespace) {
            return Err(TagError::BadAnnotation {
                arg: format!("{key}="),
            });
        }
    }
    let mut list = TagList::default();
    for tag in opts.tags.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        validate_tag(tag)?;
        list.push(tag, None);
    }

    let payload = read_event(env)?;
    let payload = payload.as_ref();
    let event = env.get(env::GITHUB_EVENT_NAME);
    let detected = detect(env, event, payload);
    if matches!(event, Some("workflow_run" | "repository_dispatch"))
        && (flag(&opts.branch).is_none()
            || opts.version.is_none()
            || flag(&opts.revision).is_none())
    {
        notes.warnings.push(format!(
            "the `{}` event's environment describes the default branch, not the run that \
             triggered it\nhint: pass `--branch`, `--version` and `--revision`",
            event.unwrap_or_default()
        ));
    }
    let (branch, default_branch) = resolve_branch(opts, event, payload, &detected);
    let facts = Facts {
        opts,
        event,
        payload,
        run: detected.run,
        pull_request: detected.pull_request,
        branch,
        default_branch,
        version: resolve_version(opts, env, event, payload, &detected, &mut notes),
        revision: resolve_revision(opts, env, git, event, payload, detected.run),
        source: flag(&opts.source).map(str::to_owned).or_else(|| {
            let server = env.get(env::GITHUB_SERVER_URL)?;
            let repo = env.get(env::GITHUB_REPOSITORY)?;
            Some(format!("{}/{}", server.trim_end_matches('/'), repo))
        }),
    };
    let fork = check_fork(&facts, env, &mut notes);

    // Automatic tags, after the user's (§2, §4).
    let mut auto_tags = Vec::new();
    for kind in AutoTag::ALL {
        let (tag, reason) = match auto_tag(kind, &facts, &mut notes) {
            Ok((tag, floating)) if list.push(&tag, floating) => (Some(tag), None),
            Ok((tag, _)) => (None, Some(format!("`{tag}` is already listed"))),
            Err(reason) => (None, Some(reason)),
        };
        auto_tags.push(AutoTagStatus { kind, tag, reason });
    }
    if opts.no_tags {
        if !list.tags.is_empty() {
            let listed: Vec<String> = list.tags.iter().map(|t| format!("`{t}`")).collect();
            notes
                .notices
                .push(format!("`--no-tags`: not pushing {}", listed.join(", ")));
        }
        list = TagList::default();
        for status in &mut auto_tags {
            if status.tag.take().is_some() {
                status.reason = Some("`--no-tags`".to_owned());
            }
        }
    } else if list.tags.is_empty() {
        return Err(TagError::NoTags);
    }

    let (annotations, created_from) = index_annotations(&facts, env, git, now, &mut notes)?;
    let fork_error = fork.as_ref().map(|(h, r)| {
        TagError::ForkPullRequest {
            head_repo: h.clone(),
            repository: r.clone(),
        }
        .to_string()
    });
    Ok(TagPlan {
        run: facts.run,
        event: event.map(str::to_owned),
        branch: facts.branch,
        default_branch: facts.default_branch,
        pull_request: facts.pull_request,
        version: facts.version,
        revision: facts.revision,
        source: facts.source,
        tags: list.tags,
        guarded: list.guarded,
        auto_tags,
        annotations,
        created_from,
        annotation_overrides: opts.annotations.clone(),
        warnings: notes.warnings,
        notices: notes.notices,
        fork_error,
        fork,
    })
}

/// The branch and the default branch (§1.2).
fn resolve_branch(
    opts: &TagOptions,
    event: Option<&str>,
    payload: Option<&Value>,
    detected: &Detected,
) -> (Option<String>, String) {
    let is_schedule = event == Some("schedule");
    // A schedule payload has no `repository`: the branch it runs on is the
    // default one.
    let default_branch = flag(&opts.default_branch)
        .or(json_str(payload, "/repository/default_branch"))
        .or(detected.branch.as_deref().filter(|_| is_schedule))
        .unwrap_or("main")
        .to_owned();
    let env_branch = match (&detected.branch, detected.run) {
        (Some(b), _) => Some(b.clone()),
        (None, RunKind::Branch) if is_schedule => Some(default_branch.clone()),
        _ => None,
    };
    let branch = flag(&opts.branch).map(str::to_owned).or(env_branch);
    (branch, default_branch)
}

/// The version (§1.2, §1.3): `--version`, else `VERSION`, else a tag run's tag.
fn resolve_version(
    opts: &TagOptions,
    env: &Env,
    event: Option<&str>,
    payload: Option<&Value>,
    detected: &Detected,
    notes: &mut Notes,
) -> Option<Version> {
    let explicit = match opts.version.as_deref() {
        // `--version ""`: no version, not even the tag name.
        Some(v) if v.trim().is_empty() => return None,
        Some(v) => Some(("--version", v.trim())),
        None => env.get(env::VERSION).map(|v| (env::VERSION, v)),
    };
    let raw = match (explicit, detected.ref_tag.as_deref()) {
        (Some((source, v)), Some(tag)) => {
            if normalise_version(v) != normalise_version(tag) {
                notes.warnings.push(format!(
                    "`{source}` is `{v}` but the run is for tag `{tag}`: using `{v}`"
                ));
            }
            v
        }
        (Some((_, v)), None) => v,
        (None, tag) => tag?,
    };
    let mut version = Version::parse(raw)?;
    let marked_pre_release = event == Some("release")
        && payload
            .and_then(|p| p.pointer("/release/prerelease"))
            .and_then(Value::as_bool)
            == Some(true);
    if marked_pre_release && version.kind == VersionKind::Stable {
        version.kind = VersionKind::PreRelease;
        notes.notices.push(format!(
            "the release is marked as a pre-release: `{}` gets no `latest`, minor or major tag",
            version.text
        ));
    }
    Some(version)
}

/// The revision (§1.1, §1.2).
fn resolve_revision(
    opts: &TagOptions,
    env: &Env,
    git: &dyn GitInfo,
    event: Option<&str>,
    payload: Option<&Value>,
    run: RunKind,
) -> Option<String> {
    // Under `pull_request_target`, GITHUB_SHA is the base branch's commit.
    let pr_head = (run == RunKind::PullRequest && event == Some("pull_request_target"))
        .then(|| json_str(payload, "/pull_request/head/sha"))
        .flatten();
    flag(&opts.revision)
        .or(pr_head)
        .or_else(|| env.get(env::GITHUB_SHA))
        .map(str::to_owned)
        .or_else(|| git.head_revision())
}

/// One kind of automatic tag (§2), or why there is none.
fn auto_tag(kind: AutoTag, facts: &Facts, notes: &mut Notes) -> Candidate {
    let opts = facts.opts;
    let requested = match &opts.auto_tags {
        Some(kinds) => kinds.contains(&kind),
        None => AutoTag::DEFAULT.contains(&kind),
    };
    // `--latest always` is explicit enough to need no `--auto-tags latest`.
    let forced = kind == AutoTag::Latest && opts.latest == LatestMode::Always;
    if !(requested || forced) {
        return Err("not requested".to_owned());
    }
    let is_pr = facts.run == RunKind::PullRequest;
    let stable = facts
        .version
        .as_ref()
        .filter(|v| v.kind == VersionKind::Stable);
    let not_stable = || match &facts.version {
        None => "no version".to_owned(),
        Some(v) if v.kind == VersionKind::Opaque => {
            format!("`{}` is not a release version", v.text)
        }
        Some(v) => format!("`{}` is a pre-release", v.text),
    };
    match kind {
        AutoTag::Branch => {
            let b = match (facts.run, &facts.branch) {
                (RunKind::PullRequest, _) => return Err("pull-request run".to_owned()),
                (RunKind::MergeQueue, _) => return Err("merge-queue run".to_owned()),
                (_, None) => return Err("no branch known".to_owned()),
                (_, Some(b)) => b,
            };
            let tag = sanitize(b);
            if tag.is_empty() {
                return Err(format!("branch `{b}` has no usable characters"));
            }
            if tag == "latest" || counted_parts(&tag).is_some() {
                let taken_for = if tag == "latest" {
                    "the `latest` tag"
                } else {
                    "a version"
                };
                notes.warnings.push(format!(
                    "branch tag `{tag}` dropped: it would be taken for {taken_for}\n\
                     hint: pass `--tag {tag}` to push it anyway"
                ));
                return Err(format!("branch tag `{tag}` is reserved"));
            }
            Ok((tag, None))
        }
        AutoTag::Pr => match (is_pr, facts.pull_request) {
            (true, Some(n)) => Ok((format!("pr-{n}"), None)),
            (true, None) => {
                notes
                    .warnings
                    .push("pull-request number unknown: no `pr-` tag".to_owned());
                Err("pull-request number unknown".to_owned())
            }
            (false, _) => Err("not a pull-request run".to_owned()),
        },
        AutoTag::Latest => match opts.latest {
            LatestMode::Never => Err("`--latest never`".to_owned()),
            LatestMode::Always => Ok(("latest".to_owned(), None)),
            LatestMode::Auto if is_pr => Err("pull-request run".to_owned()),
            LatestMode::Auto if facts.run == RunKind::MergeQueue => {
                Err("merge-queue run".to_owned())
            }
            // 2(a): `latest` follows the default branch, unguarded.
            LatestMode::Auto => match (&facts.branch, stable) {
                (Some(b), _) if *b == facts.default_branch => Ok(("latest".to_owned(), None)),
                (Some(b), _) => Err(format!(
                    "branch `{b}` is not the default branch `{}`",
                    facts.default_branch
                )),
                // 2(b): a stable version with no branch, guarded.
                (None, Some(_)) => Ok(("latest".to_owned(), Some(Floating::Latest))),
                (None, None) => Err(not_stable()),
            },
        },
        AutoTag::Version => {
            let Some(v) = &facts.version else {
                return Err("no version".to_owned());
            };
            let asked = opts.auto_tags.as_ref().is_some_and(|k| k.contains(&kind));
            if is_pr && !asked {
                return Err(
                    "pull-request run (add `version` to `--auto-tags` to get it)".to_owned(),
                );
            }
            let tag = sanitize(v.tag_text());
            if tag.is_empty() {
                return Err(format!("version `{}` has no usable characters", v.text));
            }
            Ok((tag, None))
        }
        AutoTag::Minor | AutoTag::Major => {
            if is_pr {
                return Err("pull-request run".to_owned());
            }
            let Some(v) = stable else {
                return Err(not_stable());
            };
            match (kind, v.parts.as_slice()) {
                (AutoTag::Minor, [x, y, ..]) => Ok((format!("{x}.{y}"), Some(Floating::Minor))),
                (AutoTag::Minor, _) => Err(format!("`{}` has one numeric part", v.text)),
                (_, [x, ..]) => Ok((x.clone(), Some(Floating::Major))),
                (_, []) => Err(not_stable()),
            }
        }
        AutoTag::Sha => {
            let Some(rev) = facts.revision.as_deref() else {
                notes.warnings.push(
                    "`sha` tag dropped: the revision is unknown\nhint: pass `--revision`"
                        .to_owned(),
                );
                return Err("revision unknown".to_owned());
            };
            let short: String = rev.chars().take(7).collect();
            if short.len() < 7 || !short.chars().all(|c| c.is_ascii_hexdigit()) {
                notes.warnings.push(format!(
                    "`sha` tag dropped: revision `{rev}` is not a hex commit id"
                ));
                return Err("revision is not hex".to_owned());
            }
            Ok((format!("sha-{}", short.to_ascii_lowercase()), None))
        }
    }
}

#[cfg(test)]
mod tests;
