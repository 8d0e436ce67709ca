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

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::env::{self, Env};

// The pre-defined OCI annotation keys manifold writes on the index (§6).
pub const ANNOTATION_VERSION: &str = "org.opencontainers.image.version";
pub const ANNOTATION_REVISION: &str = "org.opencontainers.image.revision";
pub const ANNOTATION_SOURCE: &str = "org.opencontainers.image.source";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
pub const ANNOTATION_DESCRIPTION: &str = "org.opencontainers.image.description";
pub const ANNOTATION_URL: &str = "org.opencontainers.image.url";
pub const ANNOTATION_LICENSES: &str = "org.opencontainers.image.licenses";
pub const ANNOTATION_VENDOR: &str = "org.opencontainers.image.vendor";
pub const ANNOTATION_AUTHORS: &str = "org.opencontainers.image.authors";

/// The descriptive keys filled from the event payload, else from config labels.
const DESCRIPTIVE_KEYS: [&str; 6] = [
    ANNOTATION_TITLE,
    ANNOTATION_DESCRIPTION,
    ANNOTATION_URL,
    ANNOTATION_LICENSES,
    ANNOTATION_VENDOR,
    ANNOTATION_AUTHORS,
];

/// nixpkgs' `nix develop` shells export this placeholder (1980-01-01); it says
/// nothing about the build, so it must not become every image's `created`.
const SOURCE_DATE_EPOCH_PLACEHOLDER: i64 = 315_532_800;

const PR_EVENTS: [&str; 4] = [
    "pull_request",
    "pull_request_target",
    "pull_request_review",
    "pull_request_review_comment",
];

// `[0-9]`, not `\d`: the regex crate's `\d` matches every Unicode digit.
static TAG_GRAMMAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$").expect("tag grammar compiles")
});
static NOT_TAG_CHARS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[^A-Za-z0-9._-]+").expect("sanitiser compiles"));
static RELEASE_GRAMMAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([0-9]+(?:\.[0-9]+){0,3})(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?$")
        .expect("release grammar compiles")
});
static COUNTED_TAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[0-9]+\.[0-9]+(?:\.[0-9]+)?$").expect("counted tag grammar compiles")
});
static PULL_REF: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^refs/pull/([0-9]+)/(?:merge|head)$").expect("pull ref grammar compiles")
});
static REPOSITORY_GRAMMAR: LazyLock<Regex> = LazyLock::new(|| {
    let component = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*";
    Regex::new(&format!("^{component}(?:/{component})*$")).expect("name grammar compiles")
});

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

/// Parses `--annotation KEY=VALUE` (split at the first `=`; the value is kept
/// verbatim, commas and all; an empty value deletes the key).
pub fn parse_annotation(arg: &str) -> Result<(String, String), TagError> {
    let bad = || TagError::BadAnnotation {
        arg: arg.to_owned(),
    };
    let (key, value) = arg.split_once('=').ok_or_else(bad)?;
    let key = key.trim();
    if key.is_empty() || key.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok((key.to_owned(), value.to_owned()))
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

/// How a version matched the release grammar (§1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionKind {
    Stable,
    PreRelease,
    Opaque,
}

/// A version, normalised (§1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    /// Trimmed, one leading `v`/`V` dropped before a digit; build metadata
    /// kept. This is the `version` annotation.
    pub text: String,
    pub kind: VersionKind,
    /// Numeric parts as written (leading zeros kept); empty when opaque.
    pub parts: Vec<String>,
    pub pre_release: Option<String>,
    pub build: Option<String>,
}

impl Version {
    /// Parses a version; `None` when blank.
    pub fn parse(raw: &str) -> Option<Version> {
        let text = normalise_version(raw);
        if text.is_empty() {
            return None;
        }
        let Some(caps) = RELEASE_GRAMMAR.captures(&text) else {
            return Some(Version {
                text,
                kind: VersionKind::Opaque,
                parts: Vec::new(),
                pre_release: None,
                build: None,
            });
        };
        let parts = caps[1].split('.').map(str::to_owned).collect();
        let pre_release = caps.get(2).map(|m| m.as_str().to_owned());
        let build = caps.get(3).map(|m| m.as_str().to_owned());
        let kind = if pre_release.is_some() {
            VersionKind::PreRelease
        } else {
            VersionKind::Stable
        };
        Some(Version {
            text,
            kind,
            parts,
            pre_release,
            build,
        })
    }

    /// The text the version tag is made from: build metadata dropped when the
    /// grammar matched (`+` is not allowed in tags).
    pub fn tag_text(&self) -> &str {
        match self.kind {
            VersionKind::Opaque => &self.text,
            _ => self.text.split('+').next().unwrap_or(&self.text),
        }
    }
}

/// Trims and drops one leading `v`/`V` when a digit follows.
fn normalise_version(raw: &str) -> String {
    let text = raw.trim();
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some('v' | 'V'), Some(d)) if d.is_ascii_digit() => text[1..].to_owned(),
        _ => text.to_owned(),
    }
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

fn json_str<'a>(payload: Option<&'a Value>, pointer: &str) -> Option<&'a str> {
    payload?
        .pointer(pointer)?
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn json_u64(payload: Option<&Value>, pointer: &str) -> Option<u64> {
    let v = payload?.pointer(pointer)?;
    v.as_u64().or_else(|| v.as_str()?.trim().parse().ok())
}

fn read_event(env: &Env) -> Result<Option<Value>, TagError> {
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
struct Detected {
    run: RunKind,
    pull_request: Option<u64>,
    /// The branch of a branch run.
    branch: Option<String>,
    /// The tag name of a tag run.
    ref_tag: Option<String>,
}

fn detect(env: &Env, event: Option<&str>, payload: Option<&Value>) -> Detected {
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

/// For a pull request from a fork, `(head repository, repository)`; warns
/// under `pull_request_target` (§1.1).
fn check_fork(facts: &Facts, env: &Env, notes: &mut Notes) -> Option<(String, String)> {
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

/// The index annotations (§6) with the `--annotation`s applied, and where
/// `created` came from.
fn index_annotations(
    facts: &Facts,
    env: &Env,
    git: &dyn GitInfo,
    now: i64,
    notes: &mut Notes,
) -> Result<(BTreeMap<String, String>, String), TagError> {
    let payload = facts.payload;
    let mut annotations = BTreeMap::new();
    let version = facts
        .version
        .as_ref()
        .map(|v| v.text.clone())
        .or_else(|| facts.branch.clone())
        .or_else(|| facts.pull_request.map(|n| format!("pr-{n}")));
    let (created, created_from) = created_time(facts, env, git, now, notes)?;
    let url = json_str(payload, "/repository/homepage")
        .or_else(|| json_str(payload, "/repository/html_url"));
    // GitHub reports an unrecognised license as `NOASSERTION`: better none.
    let licenses = json_str(payload, "/repository/license/spdx_id")
        .filter(|l| !l.eq_ignore_ascii_case("NOASSERTION"));
    let repo = |field: &str| json_str(payload, &format!("/repository/{field}"));
    for (key, value) in [
        (ANNOTATION_VERSION, version.as_deref()),
        (ANNOTATION_REVISION, facts.revision.as_deref()),
        (ANNOTATION_SOURCE, facts.source.as_deref()),
        (ANNOTATION_CREATED, Some(&format_utc(created))),
        (ANNOTATION_TITLE, repo("name")),
        (ANNOTATION_DESCRIPTION, repo("description")),
        (ANNOTATION_URL, url),
        (ANNOTATION_LICENSES, licenses),
        (ANNOTATION_VENDOR, repo("owner/login")),
        (ANNOTATION_AUTHORS, repo("owner/html_url")),
    ] {
        if let Some(value) = value {
            annotations.insert(key.to_owned(), value.to_owned());
        }
    }
    apply_overrides(&mut annotations, &facts.opts.annotations);
    Ok((annotations, created_from))
}

fn apply_overrides(annotations: &mut BTreeMap<String, String>, overrides: &[(String, String)]) {
    for (key, value) in overrides {
        let key = key.trim();
        if value.is_empty() {
            annotations.remove(key);
        } else {
            annotations.insert(key.to_owned(), value.clone());
        }
    }
}

/// The `created` time and where it came from (§6).
fn created_time(
    facts: &Facts,
    env: &Env,
    git: &dyn GitInfo,
    now: i64,
    notes: &mut Notes,
) -> Result<(i64, String), TagError> {
    let revision = facts.revision.as_deref();
    if let Some(value) = flag(&facts.opts.created) {
        let secs = parse_time(value).ok_or_else(|| TagError::BadCreated {
            value: value.to_owned(),
        })?;
        return Ok((secs, "--created".to_owned()));
    }
    if let Some(value) = env.get(env::SOURCE_DATE_EPOCH) {
        match value.parse::<i64>() {
            Ok(SOURCE_DATE_EPOCH_PLACEHOLDER) => notes.notices.push(format!(
                "ignoring `{}={SOURCE_DATE_EPOCH_PLACEHOLDER}`, the placeholder nixpkgs shells \
                 export",
                env::SOURCE_DATE_EPOCH
            )),
            Ok(secs) if format_utc_checked(secs).is_some() => {
                return Ok((secs, env::SOURCE_DATE_EPOCH.to_owned()))
            }
            _ => notes.warnings.push(format!(
                "ignoring `{}={value}`: not a time in seconds since the epoch",
                env::SOURCE_DATE_EPOCH
            )),
        }
    }
    if let Some(secs) = revision.and_then(|rev| git.commit_time(rev)) {
        return Ok((secs, "git".to_owned()));
    }
    // The push payload's head commit is only the revision's if the ids agree.
    let head_id = json_str(facts.payload, "/head_commit/id");
    if revision.is_none() || head_id.is_none() || head_id == revision {
        if let Some(secs) =
            json_str(facts.payload, "/head_commit/timestamp").and_then(parse_rfc3339)
        {
            return Ok((secs, "event payload".to_owned()));
        }
    }
    Ok((now, "now".to_owned()))
}

/// Seconds since the epoch, or an RFC 3339 time.
fn parse_time(value: &str) -> Option<i64> {
    match value.parse::<i64>() {
        Ok(secs) => format_utc_checked(secs).map(|_| secs),
        Err(_) => parse_rfc3339(value),
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2024-05-01T12:00:00Z`,
/// `2024-05-01 14:00:00.5+02:00`); a fraction of a second is dropped.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    Some(at.unix_timestamp())
}

/// `YYYY-MM-DDTHH:MM:SSZ`, or `None` outside years 0–9999.
fn format_utc_checked(secs: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC), clamped
/// to years 0–9999.
pub fn format_utc(secs: i64) -> String {
    const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    format_utc_checked(secs.clamp(MIN, MAX)).unwrap_or_default()
}

/// Fills the descriptive annotations (`title` … `authors`) the event payload
/// left empty from the images' config labels of the same key, where every
/// per-arch config has the label with the same value. The `--annotation`s
/// are applied last, so `KEY=` still deletes a label-derived value.
pub fn annotations_from_labels(
    plan: &TagPlan,
    per_arch_labels: &[BTreeMap<String, String>],
) -> BTreeMap<String, String> {
    let mut annotations = plan.annotations.clone();
    let Some((first, rest)) = per_arch_labels.split_first() else {
        return annotations;
    };
    for key in DESCRIPTIVE_KEYS {
        if annotations.contains_key(key) {
            continue;
        }
        let Some(value) = first.get(key).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        if rest.iter().all(|labels| labels.get(key) == Some(value)) {
            annotations.insert(key.to_owned(), value.clone());
        }
    }
    apply_overrides(&mut annotations, &plan.annotation_overrides);
    annotations
}

/// Which tags to push and which to withhold (§3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardOutcome {
    pub kept: Vec<String>,
    /// `(tag, reason)`, e.g. `("1", "`1.3.0` exists")`.
    pub withheld: Vec<(String, String)>,
}

/// A listed tag's numeric parts if the guard counts it: one leading `v`/`V`
/// dropped, then two or three numeric parts and nothing else.
fn counted_parts(tag: &str) -> Option<Vec<&str>> {
    let t = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
    COUNTED_TAG.is_match(t).then(|| t.split('.').collect())
}

/// Compares digit strings numerically, whatever their length.
fn cmp_number(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Compares numeric parts, missing ones counting as 0.
fn cmp_parts(a: &[&str], b: &[&str]) -> Ordering {
    (0..a.len().max(b.len()))
        .map(|i| cmp_number(a.get(i).unwrap_or(&"0"), b.get(i).unwrap_or(&"0")))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// Withholds the guarded floating tags that would move backwards given the
/// repository's `existing_tags` (§3). Call once per destination repository.
pub fn apply_guard(plan: &TagPlan, existing_tags: &[String]) -> GuardOutcome {
    let published: Vec<&str> = plan
        .version
        .as_ref()
        .map(|v| v.parts.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let counted: Vec<(&str, Vec<&str>)> = existing_tags
        .iter()
        .filter_map(|t| Some((t.as_str(), counted_parts(t)?)))
        .collect();
    let mut outcome = GuardOutcome {
        kept: Vec::new(),
        withheld: Vec::new(),
    };
    for tag in &plan.tags {
        let floating = plan
            .guarded
            .iter()
            .find(|g| g.tag == *tag)
            .map(|g| g.floating);
        let blocker = floating.and_then(|floating| {
            let same = |n: usize, parts: &[&str]| {
                (0..n).all(|i| match (parts.get(i), published.get(i)) {
                    (Some(a), Some(b)) => cmp_number(a, b).is_eq(),
                    _ => false,
                })
            };
            counted
                .iter()
                .filter(|(_, parts)| match floating {
                    Floating::Major => same(1, parts),
                    Floating::Minor => same(2, parts),
                    Floating::Latest => true,
                })
                .filter(|(_, parts)| cmp_parts(parts, &published).is_gt())
                .max_by(|a, b| cmp_parts(&a.1, &b.1))
        });
        match blocker {
            Some((existing, _)) => outcome
                .withheld
                .push((tag.clone(), format!("`{existing}` exists"))),
            None => outcome.kept.push(tag.clone()),
        }
    }
    outcome
}

/// Checks a tag against the OCI grammar `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), TagError> {
    if TAG_GRAMMAR.is_match(tag) {
        Ok(())
    } else {
        Err(TagError::InvalidTag {
            tag: tag.to_owned(),
        })
    }
}

/// Makes a derived tag valid: each run of characters outside
/// `[A-Za-z0-9._-]` becomes `-`, leading `.`/`-` are dropped, and the result is
/// cut to 128 characters. May return `""`.
pub fn sanitize(text: &str) -> String {
    let replaced = NOT_TAG_CHARS.replace_all(text, "-");
    let trimmed = replaced.trim_start_matches(['.', '-']);
    // Only ASCII is left, so a byte cut is a character cut.
    trimmed[..trimmed.len().min(128)].to_owned()
}

/// Checks a repository path (`owner/name`, without the registry) against the
/// OCI name grammar.
pub fn validate_repository_path(path: &str) -> Result<(), TagError> {
    if REPOSITORY_GRAMMAR.is_match(path) {
        Ok(())
    } else {
        Err(TagError::InvalidRepository {
            name: path.to_owned(),
        })
    }
}

/// Lower-cases a repository path derived from `GITHUB_REPOSITORY` (GitHub
/// names may have capitals, registry paths may not), with a notice when that
/// changed it.
pub fn repository_from_github(name: &str) -> (String, Option<String>) {
    let lower = name.trim().to_ascii_lowercase();
    let notice = (lower != name.trim())
        .then(|| format!("using repository `{lower}`: `{}` lower-cased", name.trim()));
    (lower, notice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    const NOW: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[derive(Default)]
    struct FakeGit {
        rev: Option<&'static str>,
        time: Option<(&'static str, i64)>,
    }

    impl GitInfo for FakeGit {
        fn head_revision(&self) -> Option<String> {
            self.rev.map(str::to_owned)
        }
        fn commit_time(&self, rev: &str) -> Option<i64> {
            self.time.filter(|(r, _)| *r == rev).map(|(_, t)| t)
        }
    }

    #[derive(Default)]
    struct Case {
        env: Vec<(String, String)>,
        payload: Option<Value>,
        opts: TagOptions,
        git: FakeGit,
    }

    fn case() -> Case {
        Case::default()
    }

    impl Case {
        fn env(mut self, key: &str, value: &str) -> Self {
            self.env.push((key.to_owned(), value.to_owned()));
            self
        }
        fn actions(self, event: &str, git_ref: &str) -> Self {
            self.env(env::GITHUB_ACTIONS, "true")
                .env(env::GITHUB_EVENT_NAME, event)
                .env(env::GITHUB_REF, git_ref)
                .env(env::GITHUB_SHA, SHA)
                .env(env::GITHUB_SERVER_URL, "https://github.com")
                .env(env::GITHUB_REPOSITORY, "acme/app")
        }
        fn push(self, branch: &str) -> Self {
            self.actions("push", &format!("refs/heads/{branch}"))
        }
        fn tag_run(self, tag: &str) -> Self {
            self.actions("push", &format!("refs/tags/{tag}"))
        }
        fn version(self, v: &str) -> Self {
            self.env(env::VERSION, v)
        }
        fn payload(mut self, payload: Value) -> Self {
            self.payload = Some(payload);
            self
        }
        fn opts(mut self, f: impl FnOnce(&mut TagOptions)) -> Self {
            f(&mut self.opts);
            self
        }
        fn git(mut self, git: FakeGit) -> Self {
            self.git = git;
            self
        }
        fn resolve(self) -> Result<TagPlan, TagError> {
            let mut file = tempfile::NamedTempFile::new().expect("temp file");
            let mut pairs: Vec<(&str, &str)> = self
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let path = file.path().to_str().expect("utf-8 temp path").to_owned();
            if let Some(payload) = &self.payload {
                file.write_all(payload.to_string().as_bytes())
                    .expect("write payload");
                pairs.push((env::GITHUB_EVENT_PATH, &path));
            }
            resolve_at(&self.opts, &Env::from_pairs(&pairs), &self.git, NOW)
        }
        fn plan(self) -> TagPlan {
            match self.resolve() {
                Ok(plan) => plan,
                Err(e) => panic!("resolve failed: {e}"),
            }
        }
        fn tags(self) -> Vec<String> {
            self.plan().tags
        }
    }

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn status(plan: &TagPlan, kind: AutoTag) -> &AutoTagStatus {
        plan.auto_tags
            .iter()
            .find(|s| s.kind == kind)
            .expect("every kind has a status")
    }

    fn existing(tags: &str) -> Vec<String> {
        words(tags)
    }

    /// tags.md §5, every row: (situation, case, existing tags, pushed, withheld).
    #[test]
    fn examples_table() {
        let rows: Vec<(&str, Case, &str, &str, &str)> = vec![
            ("main v1.2.3", case().push("main").version("v1.2.3"), "", "main latest 1.2.3 1.2 1", ""),
            ("main no version", case().push("main"), "", "main latest", ""),
            ("main rc", case().push("main").version("1.2.3-rc.1"), "", "main latest 1.2.3-rc.1", ""),
            (
                "main date version",
                case().push("main").version("2024.01.15"),
                "",
                "main latest 2024.01.15 2024.01 2024",
                "",
            ),
            ("tag v2.0.0", case().tag_run("v2.0.0"), "", "latest 2.0.0 2.0 2", ""),
            ("tag beta", case().tag_run("v2.1.0-beta.2"), "", "2.1.0-beta.2", ""),
            (
                "release pre-release",
                case()
                    .actions("release", "refs/tags/v2.0.0")
                    .payload(json!({"action": "published", "release": {"prerelease": true, "tag_name": "v2.0.0"}})),
                "",
                "2.0.0",
                "",
            ),
            ("tag release/1.2.3", case().tag_run("release/1.2.3"), "", "release-1.2.3", ""),
            ("feature branch", case().push("feature/Login"), "", "feature-Login", ""),
            (
                "pr 133",
                case()
                    .actions("pull_request", "refs/pull/133/merge")
                    .version("1.2.3")
                    .payload(json!({"number": 133, "pull_request": {"number": 133}})),
                "",
                "pr-133",
                "",
            ),
            (
                "pull_request_target 7",
                // GITHUB_REF names the base branch here and must not count.
                case()
                    .actions("pull_request_target", "refs/heads/main")
                    .payload(json!({"number": 7, "pull_request": {"number": 7, "head": {"sha": "feedbeef00"}}})),
                "",
                "pr-7",
                "",
            ),
            (
                "schedule on main",
                case().actions("schedule", "refs/heads/main").payload(json!({"schedule": "0 3 * * *"})),
                "",
                "main latest",
                "",
            ),
            (
                "--tag nightly on main",
                case().push("main").opts(|o| o.tags = vec!["nightly".into()]),
                "",
                "nightly main latest",
                "",
            ),
            (
                "no ref, --version 1.2.3",
                case().opts(|o| o.version = Some("1.2.3".into())),
                "",
                "latest 1.2.3 1.2 1",
                "",
            ),
            ("tag v1.2.9 after 1.3.0", case().tag_run("v1.2.9"), "1.3.0", "1.2.9 1.2", "latest 1"),
            (
                "main 1.2.9 after 1.3.0",
                case().push("main").version("1.2.9"),
                "1.3.0",
                "main latest 1.2.9 1.2",
                "1",
            ),
        ];
        for (name, case, before, pushed, withheld) in rows {
            let plan = case.plan();
            let outcome = apply_guard(&plan, &existing(before));
            assert_eq!(outcome.kept, words(pushed), "{name}: kept");
            let held: Vec<String> = outcome.withheld.iter().map(|(t, _)| t.clone()).collect();
            assert_eq!(held, words(withheld), "{name}: withheld");
            if before.is_empty() {
                assert_eq!(plan.tags, words(pushed), "{name}: plan");
            }
        }
    }

    /// tags.md §7, the manifold column.
    #[test]
    fn differences_from_flocken() {
        let never = |o: &mut TagOptions| o.latest = LatestMode::Never;
        assert_eq!(case().tag_run("v1.2.3").tags(), words("latest 1.2.3 1.2 1"));
        assert_eq!(case().push("feature/x").tags(), words("feature-x"));
        assert_eq!(
            case()
                .actions("pull_request", "refs/pull/84/merge")
                .payload(json!({"number": 84, "pull_request": {"number": 84}}))
                .tags(),
            words("pr-84")
        );
        let plan = case().version("1.2.3+build.5").opts(never).plan();
        assert_eq!(plan.tags, words("1.2.3 1.2 1"));
        assert_eq!(plan.annotations[ANNOTATION_VERSION], "1.2.3+build.5");
        assert_eq!(
            case().version("V1.2.3").opts(never).tags(),
            words("1.2.3 1.2 1")
        );
        assert_eq!(
            case().version("1.2.3rc1").opts(never).tags(),
            words("1.2.3rc1")
        );
        let plan = case().push("main").version("1.2.9").plan();
        let outcome = apply_guard(&plan, &existing("1.3.0"));
        assert_eq!(
            outcome.withheld,
            vec![("1".to_owned(), "`1.3.0` exists".to_owned())]
        );
    }

    #[test]
    fn sanitising() {
        assert_eq!(sanitize("feature/x"), "feature-x");
        assert_eq!(sanitize("a//b c"), "a-b-c");
        assert_eq!(sanitize(".hidden"), "hidden");
        assert_eq!(sanitize("-.-x"), "x");
        assert_eq!(sanitize("/x"), "x");
        assert_eq!(sanitize("ünï"), "n-");
        assert_eq!(sanitize("///"), "");
        let long = "a".repeat(200);
        assert_eq!(sanitize(&long).len(), 128);
        assert!(validate_tag(&sanitize(&format!("-{long}/x"))).is_ok());
        assert_eq!(case().push("-/weird//Branch").tags(), words("weird-Branch"));
    }

    #[test]
    fn tag_and_repository_grammar() {
        for ok in ["latest", "_x", "1.2.3", "a-b_c.d", &"a".repeat(128)] {
            assert!(validate_tag(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a+b", "ä", &"a".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
        for ok in ["acme/app", "a", "a.b_c__d---e/f0", "library/nginx/x"] {
            assert!(validate_repository_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "Acme/app", "", "a//b", "a/", "/a", "a___b", "a_-b", "-a", "a:b",
        ] {
            assert!(validate_repository_path(bad).is_err(), "{bad}");
        }
        let (name, notice) = repository_from_github("Acme/App");
        assert_eq!(name, "acme/app");
        assert!(notice.is_some_and(|n| n.contains("`Acme/App`")));
        assert_eq!(
            repository_from_github("acme/app"),
            ("acme/app".to_owned(), None)
        );
    }

    #[test]
    fn user_tags_first_and_deduplicated() {
        let plan = case()
            .tag_run("v1.2.3")
            .opts(|o| o.tags = words("1 custom  1.2.3 custom"))
            .plan();
        assert_eq!(plan.tags, words("1 custom 1.2.3 latest 1.2"));
        // The user's `1` came first: it is theirs, not the guarded major tag.
        assert!(plan.guarded.iter().all(|g| g.tag != "1"));
        assert_eq!(status(&plan, AutoTag::Major).tag, None);
        let plan = case()
            .push("main")
            .opts(|o| o.tags = vec!["  ".into(), "x".into()])
            .plan();
        assert_eq!(plan.tags, words("x main latest"));
    }

    #[test]
    fn invalid_user_tag_is_a_usage_error_naming_it() {
        let err = case()
            .push("main")
            .opts(|o| o.tags = vec!["feature/x".into()])
            .resolve()
            .expect_err("invalid tag");
        assert!(matches!(&err, TagError::InvalidTag { tag } if tag == "feature/x"));
        assert!(err.is_usage_error());
        assert!(err.to_string().contains("`feature/x`"));
    }

    #[test]
    fn pull_request_runs() {
        for event in PR_EVENTS {
            let plan = case()
                .actions(event, "refs/heads/main")
                .payload(json!({"pull_request": {"number": 12}}))
                .plan();
            assert_eq!(plan.run, RunKind::PullRequest, "{event}");
            assert_eq!(plan.tags, words("pr-12"), "{event}");
            assert_eq!(plan.branch, None, "{event}");
        }
        // The ref alone marks a PR run; its number is the fallback.
        for r in ["refs/pull/5/merge", "refs/pull/5/head"] {
            let plan = case().actions("issue_comment", r).plan();
            assert_eq!(plan.run, RunKind::PullRequest);
            assert_eq!(plan.tags, words("pr-5"));
            assert_eq!(plan.annotations[ANNOTATION_VERSION], "pr-5");
        }
        // The payload's number wins over the ref's; `number` is the fallback.
        let plan = case()
            .actions("pull_request", "refs/pull/5/merge")
            .payload(json!({"number": 6, "pull_request": {"number": 7}}))
            .plan();
        assert_eq!(plan.pull_request, Some(7));
        let plan = case()
            .actions("pull_request", "refs/pull/5/merge")
            .payload(json!({"number": 6}))
            .plan();
        assert_eq!(plan.pull_request, Some(6));
        // Not `refs/pull/5/merge`: not a PR run.
        assert_eq!(
            case()
                .actions("push", "refs/pull/x/merge")
                .opts(|o| o.tags = vec!["t".into()])
                .plan()
                .run,
            RunKind::Unknown
        );
    }

    #[test]
    fn pull_request_version_tag_only_on_request() {
        let pr = || {
            case()
                .actions("pull_request", "refs/pull/9/merge")
                .version("1.2.3")
                .payload(json!({"pull_request": {"number": 9}}))
        };
        let plan = pr().plan();
        assert_eq!(plan.tags, words("pr-9"));
        assert!(status(&plan, AutoTag::Version)
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("--auto-tags")));
        let plan = pr()
            .opts(|o| {
                o.auto_tags = Some(vec![
                    AutoTag::Pr,
                    AutoTag::Version,
                    AutoTag::Major,
                    AutoTag::Latest,
                ])
            })
            .plan();
        assert_eq!(plan.tags, words("pr-9 1.2.3"));
        assert_eq!(plan.annotations[ANNOTATION_VERSION], "1.2.3");
    }

    #[test]
    fn pull_request_target_revision_and_warning() {
        let plan = case()
            .actions("pull_request_target", "refs/heads/main")
            .payload(json!({"pull_request": {"number": 7, "head": {"sha": "feedbeef00", "repo": {"full_name": "evil/app"}}}}))
            .plan();
        assert_eq!(plan.revision.as_deref(), Some("feedbeef00"));
        assert_eq!(plan.annotations[ANNOTATION_REVISION], "feedbeef00");
        assert!(plan.warnings.iter().any(|w| w.contains("write token")));
        // Its token can write, even from a fork.
        assert!(plan.fork_error.is_none());
        assert!(plan.check_writable(false).is_ok());
        // A plain pull_request uses GITHUB_SHA (the merge commit).
        let plan = case()
            .actions("pull_request", "refs/pull/7/merge")
            .payload(json!({"pull_request": {"number": 7, "head": {"sha": "feedbeef00"}}}))
            .plan();
        assert_eq!(plan.revision.as_deref(), Some(SHA));
    }

    #[test]
    fn fork_pull_request_cannot_push() {
        let fork = |full_name: &str| {
            case()
                .actions("pull_request", "refs/pull/3/merge")
                .payload(json!({"pull_request": {"number": 3, "head": {"repo": {"full_name": full_name}}}}))
                .plan()
        };
        let plan = fork("someone/app");
        assert!(plan
            .fork_error
            .as_deref()
            .is_some_and(|e| e.contains("read-only")));
        let err = plan.check_writable(false).expect_err("fork");
        assert!(
            matches!(&err, TagError::ForkPullRequest { head_repo, .. } if head_repo == "someone/app")
        );
        assert!(!err.is_usage_error());
        assert!(plan.check_writable(true).is_ok());
        // Same repository, whatever the case: not a fork.
        let plan = fork("Acme/App");
        assert!(plan.fork_error.is_none());
        assert!(plan.check_writable(false).is_ok());
    }

    #[test]
    fn merge_queue_has_no_branch_or_latest() {
        let plan = case()
            .actions("merge_group", "refs/heads/gh-readonly-queue/main/pr-1-abc")
            .version("1.2.3")
            .opts(|o| o.tags = vec!["mq".into()])
            .plan();
        assert_eq!(plan.run, RunKind::MergeQueue);
        assert_eq!(plan.tags, words("mq 1.2.3 1.2 1"));
        assert_eq!(
            status(&plan, AutoTag::Branch).reason.as_deref(),
            Some("merge-queue run")
        );
        assert_eq!(
            status(&plan, AutoTag::Latest).reason.as_deref(),
            Some("merge-queue run")
        );
    }

    #[test]
    fn schedule_default_branch() {
        let sched = |r: &str, payload: Value| case().actions("schedule", r).payload(payload).plan();
        // Without `repository.default_branch`, the scheduled branch is the default.
        let plan = sched("refs/heads/develop", json!({"schedule": "0 3 * * *"}));
        assert_eq!(plan.default_branch, "develop");
        assert_eq!(plan.tags, words("develop latest"));
        // With it, it decides.
        let plan = sched(
            "refs/heads/develop",
            json!({"schedule": "0 3 * * *", "repository": {"default_branch": "main"}}),
        );
        assert_eq!(plan.tags, words("develop"));
        // No ref at all: the default branch.
        let plan = case()
            .env(env::GITHUB_EVENT_NAME, "schedule")
            .payload(json!({"repository": {"default_branch": "trunk"}}))
            .plan();
        assert_eq!(plan.run, RunKind::Branch);
        assert_eq!(plan.tags, words("trunk latest"));
    }

    #[test]
    fn default_branch_from_event_file_and_flag() {
        let payload = json!({"repository": {"default_branch": "develop"}});
        assert_eq!(
            case().push("develop").payload(payload.clone()).tags(),
            words("develop latest")
        );
        assert_eq!(
            case().push("main").payload(payload.clone()).tags(),
            words("main")
        );
        let plan = case()
            .push("main")
            .payload(payload)
            .opts(|o| o.default_branch = Some("main".into()))
            .plan();
        assert_eq!(plan.tags, words("main latest"));
        // No payload, no flag: `main`.
        assert_eq!(case().push("master").tags(), words("master"));
    }

    #[test]
    fn release_event_prerelease_flag() {
        let release = |pre: bool| {
            case()
                .actions("release", "refs/tags/v2.0.0")
                .payload(json!({"release": {"prerelease": pre}}))
                .plan()
        };
        let plan = release(true);
        assert_eq!(
            plan.version.as_ref().map(|v| v.kind),
            Some(VersionKind::PreRelease)
        );
        assert_eq!(plan.tags, words("2.0.0"));
        assert_eq!(release(false).tags, words("latest 2.0.0 2.0 2"));
    }

    #[test]
    fn version_grammar() {
        let v = |s: &str| Version::parse(s).expect("a version");
        let stable = v(" v1.2.3 ");
        assert_eq!(
            (stable.text.as_str(), stable.kind),
            ("1.2.3", VersionKind::Stable)
        );
        assert_eq!(stable.parts, words("1 2 3"));
        assert_eq!(v("V1.2.3").text, "1.2.3");
        let pre = v("1.2.3-rc.1+b.7");
        assert_eq!(pre.kind, VersionKind::PreRelease);
        assert_eq!(pre.pre_release.as_deref(), Some("rc.1"));
        assert_eq!(pre.build.as_deref(), Some("b.7"));
        assert_eq!(pre.tag_text(), "1.2.3-rc.1");
        assert_eq!(v("1.2.3+b").kind, VersionKind::Stable);
        for opaque in [
            "1.2.3rc1",
            "release/1.2",
            "nightly",
            "vnext",
            "1.2.3.4.5",
            "v",
            "1..2",
        ] {
            let o = v(opaque);
            assert_eq!(o.kind, VersionKind::Opaque, "{opaque}");
            assert!(o.parts.is_empty());
        }
        assert_eq!(v("vnext").text, "vnext");
        assert_eq!(v("v1.x").text, "1.x");
        assert_eq!(
            v("１.２").kind,
            VersionKind::Opaque,
            "full-width digits are not digits here"
        );
        assert!(Version::parse("  ").is_none());
    }

    #[test]
    fn version_tags() {
        let never = |o: &mut TagOptions| o.latest = LatestMode::Never;
        let tags = |v: &str| case().version(v).opts(never).tags();
        assert_eq!(tags("1.2"), words("1.2 1"));
        assert_eq!(tags("2"), words("2"));
        assert_eq!(tags("1.2.3.4"), words("1.2.3.4 1.2 1"));
        assert_eq!(tags("0.3.1"), words("0.3.1 0.3 0"));
        assert_eq!(tags("007.010"), words("007.010 007"));
        assert_eq!(tags("v2024.01.15"), words("2024.01.15 2024.01 2024"));
        assert_eq!(tags("1.2.3-rc1"), words("1.2.3-rc1"));
        assert_eq!(tags("1.2.3-rc1+exp.sha.5114f85"), words("1.2.3-rc1"));
        assert_eq!(tags("nightly"), words("nightly"));
        assert_eq!(tags("1.2.3rc1"), words("1.2.3rc1"));
        // Opaque and pre-release versions give no version-derived latest.
        assert_eq!(case().version("nightly").tags(), words("nightly"));
        assert_eq!(case().version("1.0.0-alpha").tags(), words("1.0.0-alpha"));
        // A two-part version's own tag is its version tag, never guarded.
        let plan = case().version("1.2").plan();
        assert_eq!(plan.tags, words("latest 1.2 1"));
        let guarded: Vec<&str> = plan.guarded.iter().map(|g| g.tag.as_str()).collect();
        assert_eq!(guarded, ["latest", "1"]);
    }

    #[test]
    fn flags_win_over_environment() {
        let plan = case()
            .push("main")
            .version("1.0.0")
            .opts(|o| {
                o.version = Some("2.0.0".into());
                o.branch = Some("release".into());
                o.revision = Some("abcdef1234".into());
                o.source = Some("https://example.com/x".into());
                o.default_branch = Some("release".into());
            })
            .plan();
        assert_eq!(plan.tags, words("release latest 2.0.0 2.0 2"));
        assert_eq!(plan.revision.as_deref(), Some("abcdef1234"));
        assert_eq!(plan.annotations[ANNOTATION_SOURCE], "https://example.com/x");
        // Without flags, the environment.
        let plan = case().push("main").plan();
        assert_eq!(plan.revision.as_deref(), Some(SHA));
        assert_eq!(
            plan.annotations[ANNOTATION_SOURCE],
            "https://github.com/acme/app"
        );
        // Blank flags count as unset.
        let plan = case()
            .push("main")
            .opts(|o| {
                o.branch = Some(" ".into());
                o.revision = Some("".into());
            })
            .plan();
        assert_eq!(plan.branch.as_deref(), Some("main"));
        assert_eq!(plan.revision.as_deref(), Some(SHA));
    }

    #[test]
    fn revision_falls_back_to_git() {
        let git = FakeGit {
            rev: Some("1111111222222"),
            time: None,
        };
        let plan = case().opts(|o| o.tags = vec!["x".into()]).git(git).plan();
        assert_eq!(plan.revision.as_deref(), Some("1111111222222"));
        // GITHUB_SHA wins over git.
        let git = FakeGit {
            rev: Some("1111111222222"),
            time: None,
        };
        assert_eq!(
            case().push("main").git(git).plan().revision.as_deref(),
            Some(SHA)
        );
    }

    #[test]
    fn empty_environment_values_are_unset() {
        // VERSION="" on a tag run: the tag name is the version.
        assert_eq!(
            case().tag_run("v1.0.0").version("").tags(),
            words("latest 1.0.0 1.0 1")
        );
        assert_eq!(
            case().push("main").version("  ").tags(),
            words("main latest")
        );
        // GITHUB_REF="" falls back to GITHUB_REF_TYPE/GITHUB_REF_NAME.
        let plan = case()
            .env(env::GITHUB_REF, "")
            .env(env::GITHUB_REF_TYPE, "branch")
            .env(env::GITHUB_REF_NAME, "dev")
            .plan();
        assert_eq!(plan.run, RunKind::Branch);
        assert_eq!(plan.tags, words("dev"));
        let plan = case()
            .env(env::GITHUB_REF, "refs/weird")
            .env(env::GITHUB_REF_TYPE, "branch")
            .env(env::GITHUB_REF_NAME, "dev")
            .plan();
        assert_eq!(plan.tags, words("dev"));
        // A branch GITHUB_REF wins over a contradicting GITHUB_REF_TYPE.
        let plan = case()
            .env(env::GITHUB_REF, "refs/heads/dev")
            .env(env::GITHUB_REF_TYPE, "tag")
            .env(env::GITHUB_REF_NAME, "v1.0.0")
            .plan();
        assert_eq!(plan.run, RunKind::Branch);
        let plan = case()
            .env(env::GITHUB_REF_TYPE, "tag")
            .env(env::GITHUB_REF_NAME, "v3.1.0")
            .plan();
        assert_eq!(plan.run, RunKind::Tag);
        assert_eq!(plan.tags, words("latest 3.1.0 3.1 3"));
    }

    #[test]
    fn explicit_empty_version_clears() {
        let plan = case()
            .tag_run("v1.0.0")
            .version("9.9.9")
            .opts(|o| {
                o.version = Some(String::new());
                o.tags = vec!["x".into()];
            })
            .plan();
        assert_eq!(plan.version, None);
        assert_eq!(plan.tags, words("x"));
        assert!(!plan.annotations.contains_key(ANNOTATION_VERSION));
        let err = case()
            .tag_run("v1.0.0")
            .opts(|o| o.version = Some(" ".into()))
            .resolve()
            .expect_err("no tags");
        assert!(matches!(err, TagError::NoTags));
        assert!(err.is_usage_error());
    }

    #[test]
    fn version_mismatch_on_tag_run_warns() {
        let plan = case().tag_run("v1.0.0").version("1.0.1").plan();
        assert_eq!(plan.tags, words("latest 1.0.1 1.0 1"));
        let warning = plan
            .warnings
            .iter()
            .find(|w| w.contains("`v1.0.0`"))
            .expect("a warning");
        assert!(warning.contains("`1.0.1`"), "{warning}");
        let plan = case().tag_run("v1.0.0").version("1.0.0").plan();
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn latest_modes() {
        let pr = || {
            case()
                .actions("pull_request", "refs/pull/1/merge")
                .payload(json!({"pull_request": {"number": 1}}))
        };
        assert_eq!(
            pr().opts(|o| o.latest = LatestMode::Always).tags(),
            words("pr-1 latest")
        );
        let plan = case()
            .push("feature")
            .opts(|o| o.latest = LatestMode::Always)
            .plan();
        assert_eq!(plan.tags, words("feature latest"));
        assert!(plan.guarded.is_empty());
        assert_eq!(
            case()
                .push("main")
                .opts(|o| o.latest = LatestMode::Never)
                .tags(),
            words("main")
        );
        assert_eq!(
            "ALWAYS".parse::<LatestMode>().ok(),
            Some(LatestMode::Always)
        );
        assert!(
            matches!("sometimes".parse::<LatestMode>(), Err(TagError::BadLatestMode { word }) if word == "sometimes")
        );
        // 2(a) is unguarded, 2(b) guarded.
        let main = case().push("main").version("1.0.0").plan();
        assert!(main.guarded.iter().all(|g| g.tag != "latest"));
        let tag = case().tag_run("1.0.0").plan();
        assert!(tag.guarded.contains(&GuardedTag {
            tag: "latest".into(),
            floating: Floating::Latest
        }));
    }

    #[test]
    fn auto_tags_selection() {
        assert_eq!(
            parse_auto_tags("sha, Version,,sha").ok(),
            Some(vec![AutoTag::Sha, AutoTag::Version])
        );
        let err = parse_auto_tags("branch,lastest").expect_err("bad word");
        assert!(matches!(&err, TagError::BadAutoTag { word } if word == "lastest"));
        assert!(err.is_usage_error() && err.to_string().contains("`lastest`"));
        // Output order is fixed, whatever the order asked.
        let plan = case()
            .push("main")
            .version("1.2.3")
            .opts(|o| o.auto_tags = Some(vec![AutoTag::Sha, AutoTag::Major, AutoTag::Branch]))
            .plan();
        assert_eq!(plan.tags, words("main 1 sha-0123456"));
        assert_eq!(
            status(&plan, AutoTag::Latest).reason.as_deref(),
            Some("not requested")
        );
        // sha without a revision: dropped with a warning.
        let plan = case()
            .opts(|o| {
                o.auto_tags = Some(vec![AutoTag::Sha]);
                o.tags = vec!["x".into()];
            })
            .plan();
        assert_eq!(plan.tags, words("x"));
        assert!(plan.warnings.iter().any(|w| w.contains("`sha`")));
        // --no-auto-tags: only the user's.
        let plan = case()
            .tag_run("v1.0.0")
            .opts(|o| {
                o.auto_tags = Some(vec![]);
                o.tags = vec!["mine".into()];
            })
            .plan();
        assert_eq!(plan.tags, words("mine"));
        let err = case()
            .tag_run("v1.0.0")
            .opts(|o| o.auto_tags = Some(vec![]))
            .resolve();
        assert!(matches!(err, Err(TagError::NoTags)));
    }

    #[test]
    fn no_tags_publishes_by_digest() {
        let plan = case().push("main").opts(|o| o.no_tags = true).plan();
        assert!(plan.tags.is_empty() && plan.guarded.is_empty());
        assert_eq!(
            status(&plan, AutoTag::Branch).reason.as_deref(),
            Some("`--no-tags`")
        );
        assert!(plan.notices.iter().any(|n| n.contains("`main`")));
        let plan = case().opts(|o| o.no_tags = true).plan();
        assert!(plan.tags.is_empty());
    }

    #[test]
    fn reserved_branch_names_dropped() {
        for (branch, version) in [
            ("latest", ""),
            ("1.2", ""),
            ("v1.2.3", ""),
            ("release/1.2", "1.0.0"),
        ] {
            let mut c = case()
                .push(branch)
                .opts(|o| o.default_branch = Some("other".into()));
            if !version.is_empty() {
                c = c.version(version);
            }
            let plan = c.opts(|o| o.tags = vec!["t".into()]).plan();
            let wanted = if branch == "release/1.2" {
                "t release-1.2 1.0.0 1.0 1"
            } else {
                "t"
            };
            assert_eq!(plan.tags, words(wanted), "{branch}");
            assert_eq!(
                plan.warnings.is_empty(),
                branch == "release/1.2",
                "{branch}"
            );
        }
        // A branch named latest that is the default still gets `latest`.
        assert_eq!(
            case()
                .push("latest")
                .opts(|o| o.default_branch = Some("latest".into()))
                .tags(),
            words("latest")
        );
        // `1` is not counted as a version, so branch `1` stays.
        assert_eq!(case().push("1").tags(), words("1"));
    }

    #[test]
    fn branch_flag_outside_ci() {
        // Locally the branch is never read from git: --branch gives it.
        let git = FakeGit {
            rev: Some("abcdef0123"),
            time: None,
        };
        let plan = case()
            .git(git)
            .opts(|o| o.branch = Some("main".into()))
            .plan();
        assert_eq!(
            (plan.run, plan.tags.clone()),
            (RunKind::Unknown, words("main latest"))
        );
        assert_eq!(plan.annotations[ANNOTATION_VERSION], "main");
        let plan = case()
            .tag_run("v1.0.0")
            .opts(|o| o.branch = Some("main".into()))
            .plan();
        assert_eq!(plan.tags, words("main latest 1.0.0 1.0 1"));
        assert!(
            plan.guarded.iter().all(|g| g.tag != "latest"),
            "2(a) is unguarded"
        );
        // Nothing known at all: nothing to tag.
        assert!(matches!(case().resolve(), Err(TagError::NoTags)));
    }

    #[test]
    fn unknown_ref_events_warn() {
        for event in ["workflow_run", "repository_dispatch"] {
            let plan = case().actions(event, "refs/heads/main").plan_or_tags();
            assert_eq!(plan.run, RunKind::Unknown, "{event}");
            assert!(plan.tags.iter().all(|t| t != "main"), "{event}");
            assert!(
                plan.warnings.iter().any(|w| w.contains("--branch")),
                "{event}"
            );
        }
        let plan = case()
            .actions("workflow_run", "refs/heads/main")
            .opts(|o| {
                o.branch = Some("feature".into());
                o.version = Some("1.0.0".into());
                o.revision = Some("abc1234".into());
            })
            .plan();
        assert!(plan.warnings.is_empty());
        assert_eq!(plan.tags, words("feature 1.0.0 1.0 1"));
    }

    impl Case {
        fn plan_or_tags(self) -> TagPlan {
            self.opts(|o| o.tags.push("t".into())).plan()
        }
    }

    #[test]
    fn guard_counting_rules() {
        let plan = case()
            .version("1.2.9")
            .opts(|o| o.tags = vec!["mine".into()])
            .plan();
        assert_eq!(plan.tags, words("mine latest 1.2.9 1.2 1"));
        let held = |tags: &str| -> Vec<String> {
            apply_guard(&plan, &existing(tags))
                .withheld
                .into_iter()
                .map(|(t, _)| t)
                .collect()
        };
        // One-part tags never count.
        assert!(held("2 2024 20240115 latest main").is_empty());
        // A leading v counts, once.
        assert_eq!(held("v1.3.0"), words("latest 1"));
        assert_eq!(held("V1.2.10"), words("latest 1.2 1"));
        assert!(held("vv1.3.0").is_empty());
        // Pre-releases, four parts and suffixes don't count.
        assert!(held("1.3.0-rc1 1.3.0.1 1.3.0a 1.3.0+b").is_empty());
        // Equal is not greater; numbers compare numerically.
        assert!(held("1.2.9 1.2.09 01.2.9 1.2").is_empty());
        assert_eq!(held("1.2.10"), words("latest 1.2 1"));
        assert!(held("1.2.8 0.9.9 1.1").is_empty());
        // Only the same X (and Y) blocks X (and X.Y); anything greater blocks latest.
        assert_eq!(held("2.0"), words("latest"));
        assert_eq!(held("1.3"), words("latest 1"));
        // Huge numbers don't overflow.
        assert_eq!(held("1.99999999999999999999999.0"), words("latest 1"));
        let outcome = apply_guard(&plan, &existing("1.3.0 1.4.0 v1.3.5"));
        assert_eq!(outcome.kept, words("mine 1.2.9 1.2"));
        assert_eq!(
            outcome.withheld[0],
            ("latest".to_owned(), "`1.4.0` exists".to_owned())
        );
        // Leading zeros in the published version.
        let plan = case()
            .version("2024.01.15")
            .opts(|o| o.latest = LatestMode::Never)
            .plan();
        let outcome = apply_guard(&plan, &existing("2024.1.16 2024.02.1"));
        assert_eq!(outcome.kept, words("2024.01.15"));
    }

    #[test]
    fn created_annotation() {
        let created = |c: Case| c.plan().annotations[ANNOTATION_CREATED].clone();
        let main = || case().push("main");
        assert_eq!(created(main()), "2023-11-14T22:13:20Z");
        assert_eq!(main().plan().created_from, "now");
        assert_eq!(
            created(main().env(env::SOURCE_DATE_EPOCH, "0")),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            created(main().env(env::SOURCE_DATE_EPOCH, "951782400")),
            "2000-02-29T00:00:00Z"
        );
        // The nixpkgs placeholder is ignored, with a notice.
        let plan = main().env(env::SOURCE_DATE_EPOCH, "315532800").plan();
        assert_eq!(plan.annotations[ANNOTATION_CREATED], "2023-11-14T22:13:20Z");
        assert!(plan.notices.iter().any(|n| n.contains("315532800")));
        let plan = main().env(env::SOURCE_DATE_EPOCH, "soon").plan();
        assert_eq!(plan.created_from, "now");
        assert!(plan
            .warnings
            .iter()
            .any(|w| w.contains("`SOURCE_DATE_EPOCH=soon`")));
        // --created wins, normalised to UTC.
        let plan = main()
            .env(env::SOURCE_DATE_EPOCH, "0")
            .opts(|o| o.created = Some("2024-03-01T01:30:00+02:00".into()))
            .plan();
        assert_eq!(plan.annotations[ANNOTATION_CREATED], "2024-02-29T23:30:00Z");
        assert_eq!(
            created(main().opts(|o| o.created = Some("1700000001".into()))),
            "2023-11-14T22:13:21Z"
        );
        let err = main()
            .opts(|o| o.created = Some("yesterday".into()))
            .resolve()
            .expect_err("bad");
        assert!(matches!(&err, TagError::BadCreated { value } if value == "yesterday"));
        assert!(err.is_usage_error());
        // The revision's commit time, from git, then from the push payload.
        let git = FakeGit {
            rev: None,
            time: Some((SHA, 1_600_000_000)),
        };
        let plan = main().git(git).plan();
        assert_eq!(plan.annotations[ANNOTATION_CREATED], "2020-09-13T12:26:40Z");
        assert_eq!(plan.created_from, "git");
        let payload = json!({"head_commit": {"id": SHA, "timestamp": "2021-06-01T12:00:00-07:00"}});
        assert_eq!(created(main().payload(payload)), "2021-06-01T19:00:00Z");
        // ...but only if the payload's head commit is the revision.
        let payload = json!({"head_commit": {"id": "other", "timestamp": "2021-06-01T12:00:00Z"}});
        assert_eq!(created(main().payload(payload)), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn time_parsing_and_formatting() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00.123Z"), Some(951_868_800));
        // GitHub's payload form, and a space instead of `T` (RFC 3339 §5.6).
        assert_eq!(
            parse_rfc3339("2000-03-01T01:30:00+01:30"),
            Some(951_868_800)
        );
        assert_eq!(
            parse_rfc3339(" 2000-02-29 23:00:00-01:00\n"),
            Some(951_868_800)
        );
        // A leap second is the last second of its day.
        assert_eq!(parse_rfc3339("1998-12-31T23:59:60Z"), Some(915_148_799));
        assert_eq!(parse_rfc3339("2000-02-30T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2001-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2000-01-01T24:00:00Z"), None);
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00"), None);
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00+0100"), None);
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00Zjunk"), None);
        assert_eq!(parse_rfc3339("２000-01-01T00:00:00Z"), None);
        for secs in [0, 1, 86_399, 951_782_400, 4_102_444_800, -1] {
            assert_eq!(parse_rfc3339(&format_utc(secs)), Some(secs), "{secs}");
        }
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_utc(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(format_utc(i64::MIN), "0000-01-01T00:00:00Z");
        assert_eq!(parse_time("99999999999999"), None);
    }

    #[test]
    fn annotations_from_payload_and_overrides() {
        let payload = json!({"repository": {
            "name": "app", "description": "An app", "homepage": "", "html_url": "https://github.com/acme/app",
            "license": {"spdx_id": "MIT"}, "owner": {"login": "acme", "html_url": "https://github.com/acme"}
        }});
        let plan = case()
            .tag_run("v1.0.0+b1")
            .payload(payload)
            .opts(|o| {
                o.annotations = vec![
                    ("org.opencontainers.image.vendor".into(), "".into()),
                    ("com.example.list".into(), "a,b=c".into()),
                ]
            })
            .plan();
        let a = &plan.annotations;
        assert_eq!(a[ANNOTATION_TITLE], "app");
        assert_eq!(a[ANNOTATION_DESCRIPTION], "An app");
        assert_eq!(a[ANNOTATION_URL], "https://github.com/acme/app");
        assert_eq!(a[ANNOTATION_LICENSES], "MIT");
        assert_eq!(a[ANNOTATION_AUTHORS], "https://github.com/acme");
        assert!(!a.contains_key(ANNOTATION_VENDOR));
        assert_eq!(a["com.example.list"], "a,b=c");
        assert_eq!(a[ANNOTATION_VERSION], "1.0.0+b1");
        assert_eq!(a[ANNOTATION_REVISION], SHA);
        assert_eq!(a[ANNOTATION_SOURCE], "https://github.com/acme/app");
        // Homepage wins over html_url; NOASSERTION says nothing.
        let plan = case()
            .push("main")
            .payload(json!({"repository": {"homepage": "https://app.example", "html_url": "x", "license": {"spdx_id": "NOASSERTION"}}}))
            .plan();
        assert_eq!(plan.annotations[ANNOTATION_URL], "https://app.example");
        assert!(!plan.annotations.contains_key(ANNOTATION_LICENSES));
        assert_eq!(plan.annotations[ANNOTATION_VERSION], "main");
        // Bad --annotation keys.
        let err = case()
            .push("main")
            .opts(|o| o.annotations = vec![("".into(), "x".into())])
            .resolve();
        assert!(matches!(err, Err(TagError::BadAnnotation { .. })));
    }

    #[test]
    fn annotation_arguments() {
        assert_eq!(
            parse_annotation("k=v=w").ok(),
            Some(("k".into(), "v=w".into()))
        );
        assert_eq!(
            parse_annotation("k=").ok(),
            Some(("k".into(), String::new()))
        );
        assert_eq!(
            parse_annotation("k= a, b ").ok(),
            Some(("k".into(), " a, b ".into()))
        );
        for bad in ["k", "=v", " =v", "a b=c"] {
            let err = parse_annotation(bad).expect_err(bad);
            assert!(
                err.is_usage_error() && err.to_string().contains(&format!("`{bad}`")),
                "{bad}"
            );
        }
    }

    #[test]
    fn labels_fill_descriptive_annotations() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let plan = case()
            .push("main")
            .payload(json!({"repository": {"name": "from-payload"}}))
            .opts(|o| o.annotations = vec![(ANNOTATION_AUTHORS.into(), "".into())])
            .plan();
        let amd = labels(&[
            (ANNOTATION_TITLE, "label-title"),
            (ANNOTATION_DESCRIPTION, "same"),
            (ANNOTATION_LICENSES, "MIT"),
            (ANNOTATION_AUTHORS, "me"),
            (ANNOTATION_REVISION, "nope"),
        ]);
        let arm = labels(&[
            (ANNOTATION_TITLE, "label-title"),
            (ANNOTATION_DESCRIPTION, "same"),
            (ANNOTATION_LICENSES, "Apache-2.0"),
            (ANNOTATION_AUTHORS, "me"),
        ]);
        let a = annotations_from_labels(&plan, &[amd.clone(), arm]);
        assert_eq!(a[ANNOTATION_TITLE], "from-payload", "the payload wins");
        assert_eq!(a[ANNOTATION_DESCRIPTION], "same");
        assert!(!a.contains_key(ANNOTATION_LICENSES), "configs disagree");
        assert!(
            !a.contains_key(ANNOTATION_AUTHORS),
            "--annotation KEY= deletes"
        );
        assert_eq!(
            a[ANNOTATION_REVISION], SHA,
            "only descriptive keys come from labels"
        );
        // A label missing from one config doesn't count.
        let a = annotations_from_labels(&plan, &[amd.clone(), labels(&[])]);
        assert!(!a.contains_key(ANNOTATION_DESCRIPTION));
        assert_eq!(annotations_from_labels(&plan, &[]), plan.annotations);
        assert_eq!(
            annotations_from_labels(&plan, &[amd])[ANNOTATION_LICENSES],
            "MIT"
        );
    }

    #[test]
    fn event_file_errors_name_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.json");
        let missing = missing.to_str().expect("utf-8");
        let err = case()
            .env(env::GITHUB_EVENT_PATH, missing)
            .resolve()
            .expect_err("missing");
        assert!(
            matches!(&err, TagError::EventFileUnreadable { path, .. } if path.to_str() == Some(missing))
        );
        assert!(err.to_string().contains(missing) && !err.is_usage_error());
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").expect("write");
        let bad = bad.to_str().expect("utf-8");
        let err = case()
            .env(env::GITHUB_EVENT_PATH, bad)
            .resolve()
            .expect_err("malformed");
        assert!(matches!(err, TagError::EventFileMalformed { .. }));
        assert!(err.to_string().contains(bad));
        // A blank path counts as unset.
        assert!(case()
            .env(env::GITHUB_EVENT_PATH, "")
            .push("main")
            .resolve()
            .is_ok());
    }

    #[test]
    fn plan_serialises() {
        let plan = case().tag_run("v1.2.3").plan();
        let json = serde_json::to_value(&plan).expect("serialises");
        assert_eq!(json["run"], "tag");
        assert_eq!(json["version"]["kind"], "stable");
        assert_eq!(json["version"]["parts"], json!(["1", "2", "3"]));
        assert_eq!(json["tags"], json!(["latest", "1.2.3", "1.2", "1"]));
        assert_eq!(
            json["guarded"][0],
            json!({"tag": "latest", "floating": "latest"})
        );
        assert_eq!(
            json["auto_tags"][0],
            json!({"kind": "branch", "tag": null, "reason": "no branch known"})
        );
        let pre = serde_json::to_value(Version::parse("1-rc")).expect("serialises");
        assert_eq!(pre["kind"], "pre-release");
    }

    #[test]
    fn system_git_reads_this_work_tree() {
        // Tests run in the crate directory, a git work tree.
        let git = SystemGit;
        let Some(head) = git.head_revision() else {
            return; // not a checkout (e.g. a source tarball): nothing to check
        };
        assert!(
            head.len() >= 40 && head.chars().all(|c| c.is_ascii_hexdigit()),
            "{head}"
        );
        assert!(git.commit_time(&head).is_some_and(|t| t > 1_600_000_000));
        assert_eq!(git.commit_time("--no-such-option"), None);
        assert_eq!(
            git.commit_time("0000000000000000000000000000000000000000"),
            None
        );
    }
}
