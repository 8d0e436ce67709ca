//! Tag and annotation rules: from flags, the CI environment and the GitHub
//! event payload to the list of tags to push and the index annotations
//! (`docs/reference/tags.md` is the spec; its section numbers appear below).
//!
//! Everything here is pure: the environment comes in as an [`Env`], git sits
//! behind [`GitInfo`], and the clock is read once, in [`resolve`]. Reading a
//! repository's existing tags is `registry`'s job; [`apply_guard`] only
//! decides, from that list, which floating tags would move backwards. Nothing
//! here prints: warnings and notices are returned in the [`TagPlan`] for the
//! caller to show.

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

use crate::env::{self, Env};

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
    let ref_name = env.get(env::GITHUB_REF_NAME).map(str::to_owned);
    if let Some(tag) = git_ref.and_then(|r| r.strip_prefix("refs/tags/")) {
        d.run = RunKind::Tag;
        d.ref_tag = Some(tag.to_owned()).filter(|t| !t.is_empty());
    } else if git_ref.is_none() && ref_type == Some("tag") {
        d.run = RunKind::Tag;
        d.ref_tag = ref_name;
    } else if let Some(branch) = git_ref.and_then(|r| r.strip_prefix("refs/heads/")) {
        d.run = RunKind::Branch;
        d.branch = Some(branch.to_owned()).filter(|b| !b.is_empty());
    } else if git_ref.is_none() && ref_type == Some("branch") {
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

fn resolve_at(
    opts: &TagOptions,
    env: &Env,
    git: &dyn GitInfo,
    now: i64,
) -> Result<TagPlan, TagError> {
    let mut warnings = Vec::new();
    let mut notices = Vec::new();

    for (key, _) in &opts.annotations {
        if key.trim().is_empty() || key.chars().any(char::is_whitespace) {
            return Err(TagError::BadAnnotation {
                arg: format!("{key}="),
            });
        }
    }
    let mut user_tags = Vec::new();
    for tag in opts.tags.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        validate_tag(tag)?;
        user_tags.push(tag);
    }

    let payload = read_event(env)?;
    let payload = payload.as_ref();
    let event = env.get(env::GITHUB_EVENT_NAME);
    let detected = detect(env, event, payload);
    let run = detected.run;

    if matches!(event, Some("workflow_run" | "repository_dispatch"))
        && (flag(&opts.branch).is_none()
            || opts.version.is_none()
            || flag(&opts.revision).is_none())
    {
        warnings.push(format!(
            "the `{}` event's environment describes the default branch, not the run that \
             triggered it\nhint: pass `--branch`, `--version` and `--revision`",
            event.unwrap_or_default()
        ));
    }

    // Default branch, then branch (§1.2).
    let payload_default = json_str(payload, "/repository/default_branch");
    let is_schedule = event == Some("schedule");
    let default_branch = flag(&opts.default_branch)
        .or(payload_default)
        .or(if is_schedule {
            detected.branch.as_deref()
        } else {
            None
        })
        .unwrap_or("main")
        .to_owned();
    let env_branch = match (&detected.branch, run) {
        (Some(b), _) => Some(b.clone()),
        (None, RunKind::Branch) if is_schedule => Some(default_branch.clone()),
        _ => None,
    };
    let branch = flag(&opts.branch).map(str::to_owned).or(env_branch);

    // Version (§1.2, §1.3).
    let explicit = match opts.version.as_deref() {
        Some(v) if v.trim().is_empty() => Err(()),
        Some(v) => Ok(Some(("--version", v.trim()))),
        None => Ok(env.get(env::VERSION).map(|v| (env::VERSION, v))),
    };
    let raw_version = match (explicit, detected.ref_tag.as_deref()) {
        // `--version ""`: no version, not even the tag name.
        (Err(()), _) => None,
        (Ok(Some((source, v))), Some(tag)) => {
            if normalise_version(v) != normalise_version(tag) {
                warnings.push(format!(
                    "`{source}` is `{v}` but the run is for tag `{tag}`: using `{v}`"
                ));
            }
            Some(v)
        }
        (Ok(Some((_, v))), None) => Some(v),
        (Ok(None), tag) => tag,
    };
    let mut version = raw_version.and_then(Version::parse);
    if let Some(v) = &mut version {
        let marked = event == Some("release")
            && payload
                .and_then(|p| p.pointer("/release/prerelease"))
                .and_then(Value::as_bool)
                == Some(true);
        if marked && v.kind == VersionKind::Stable {
            v.kind = VersionKind::PreRelease;
            notices.push(format!(
                "the release is marked as a pre-release: `{}` gets no `latest`, minor or major tag",
                v.text
            ));
        }
    }

    // Revision and source (§1.2).
    let revision = flag(&opts.revision)
        .map(str::to_owned)
        .or_else(|| {
            (run == RunKind::PullRequest && event == Some("pull_request_target"))
                .then(|| json_str(payload, "/pull_request/head/sha").map(str::to_owned))
                .flatten()
        })
        .or_else(|| env.get(env::GITHUB_SHA).map(str::to_owned))
        .or_else(|| git.head_revision());
    let source = flag(&opts.source).map(str::to_owned).or_else(|| {
        let server = env.get(env::GITHUB_SERVER_URL)?;
        let repo = env.get(env::GITHUB_REPOSITORY)?;
        Some(format!("{}/{}", server.trim_end_matches('/'), repo))
    });

    // Pull requests from forks (§1.1).
    let mut fork = None;
    if run == RunKind::PullRequest {
        let head_repo = json_str(payload, "/pull_request/head/repo/full_name");
        let repository = env.get(env::GITHUB_REPOSITORY);
        let is_fork = match (head_repo, repository) {
            (Some(h), Some(r)) => !h.eq_ignore_ascii_case(r),
            _ => false,
        };
        if event == Some("pull_request_target") {
            warnings.push(
                "`pull_request_target` runs with a write token: the pull request's code, which \
                 may be untrusted, is being published"
                    .to_owned(),
            );
        } else if let (true, Some(h), Some(r)) = (is_fork, head_repo, repository) {
            fork = Some((h.to_owned(), r.to_owned()));
        }
    }

    // Tags (§2, §4).
    let mut list = TagList::default();
    for tag in user_tags {
        list.push(tag, None);
    }
    let requested = opts
        .auto_tags
        .clone()
        .unwrap_or_else(|| AutoTag::DEFAULT.to_vec());
    let asked_for = |kind| opts.auto_tags.as_ref().is_some_and(|k| k.contains(&kind));
    let is_pr = run == RunKind::PullRequest;
    let is_mq = run == RunKind::MergeQueue;
    let stable = version.as_ref().filter(|v| v.kind == VersionKind::Stable);
    let version_reason = |v: &Option<Version>| match v {
        None => "no version".to_owned(),
        Some(v) => match v.kind {
            VersionKind::Stable => String::new(),
            VersionKind::PreRelease => format!("`{}` is a pre-release", v.text),
            VersionKind::Opaque => format!("`{}` is not a release version", v.text),
        },
    };

    let mut auto_tags = Vec::new();
    for kind in AutoTag::ALL {
        let wanted = requested.contains(&kind)
            || (kind == AutoTag::Latest && opts.latest == LatestMode::Always);
        let candidate: Result<(String, Option<Floating>), String> = if !wanted {
            Err("not requested".to_owned())
        } else {
            match kind {
                AutoTag::Branch => match (&branch, run) {
                    (_, RunKind::PullRequest) => Err("pull-request run".to_owned()),
                    (_, RunKind::MergeQueue) => Err("merge-queue run".to_owned()),
                    (None, _) => Err("no branch known".to_owned()),
                    (Some(b), _) => {
                        let tag = sanitize(b);
                        if tag.is_empty() {
                            Err(format!("branch `{b}` has no usable characters"))
                        } else if tag == "latest" || counted_parts(&tag).is_some() {
                            warnings.push(format!(
                                "branch tag `{tag}` dropped: it would be taken for a {}\n\
                                 hint: pass `--tag {tag}` to push it anyway",
                                if tag == "latest" {
                                    "`latest` tag"
                                } else {
                                    "version tag"
                                }
                            ));
                            Err(format!("branch tag `{tag}` is reserved"))
                        } else {
                            Ok((tag, None))
                        }
                    }
                },
                AutoTag::Pr => match (run, detected.pull_request) {
                    (RunKind::PullRequest, Some(n)) => Ok((format!("pr-{n}"), None)),
                    (RunKind::PullRequest, None) => {
                        warnings.push("pull-request number unknown: no `pr-` tag".to_owned());
                        Err("pull-request number unknown".to_owned())
                    }
                    _ => Err("not a pull-request run".to_owned()),
                },
                AutoTag::Latest => match opts.latest {
                    LatestMode::Never => Err("`--latest never`".to_owned()),
                    LatestMode::Always => Ok(("latest".to_owned(), None)),
                    LatestMode::Auto if is_pr => Err("pull-request run".to_owned()),
                    LatestMode::Auto if is_mq => Err("merge-queue run".to_owned()),
                    LatestMode::Auto => match (&branch, stable) {
                        (Some(b), _) if *b == default_branch => Ok(("latest".to_owned(), None)),
                        (Some(b), _) => Err(format!(
                            "branch `{b}` is not the default branch `{default_branch}`"
                        )),
                        (None, Some(_)) => Ok(("latest".to_owned(), Some(Floating::Latest))),
                        (None, None) => Err(version_reason(&version)),
                    },
                },
                AutoTag::Version => match &version {
                    None => Err("no version".to_owned()),
                    Some(_) if is_pr && !asked_for(AutoTag::Version) => Err(
                        "pull-request run (add `version` to `--auto-tags` to get it)".to_owned(),
                    ),
                    Some(v) => {
                        let tag = sanitize(v.tag_text());
                        if tag.is_empty() {
                            Err(format!("version `{}` has no usable characters", v.text))
                        } else {
                            Ok((tag, None))
                        }
                    }
                },
                AutoTag::Minor | AutoTag::Major => match stable {
                    _ if is_pr => Err("pull-request run".to_owned()),
                    None => Err(version_reason(&version)),
                    Some(v) if kind == AutoTag::Minor => match v.parts.as_slice() {
                        [x, y, ..] => Ok((format!("{x}.{y}"), Some(Floating::Minor))),
                        _ => Err(format!("`{}` has one numeric part", v.text)),
                    },
                    Some(v) => match v.parts.first() {
                        Some(x) => Ok((x.clone(), Some(Floating::Major))),
                        None => Err(version_reason(&version)),
                    },
                },
                AutoTag::Sha => match revision.as_deref() {
                    None => {
                        warnings.push(
                            "`sha` tag dropped: the revision is unknown\nhint: pass `--revision`"
                                .to_owned(),
                        );
                        Err("revision unknown".to_owned())
                    }
                    Some(rev) => {
                        let short: String = rev.chars().take(7).collect();
                        if short.len() == 7 && short.chars().all(|c| c.is_ascii_hexdigit()) {
                            Ok((format!("sha-{}", short.to_ascii_lowercase()), None))
                        } else {
                            warnings.push(format!(
                                "`sha` tag dropped: revision `{rev}` is not a hex commit id"
                            ));
                            Err("revision is not hex".to_owned())
                        }
                    }
                },
            }
        };
        let status = match candidate {
            Ok((tag, floating)) if opts.no_tags => {
                let _ = (tag, floating);
                AutoTagStatus {
                    kind,
                    tag: None,
                    reason: Some("`--no-tags`".to_owned()),
                }
            }
            Ok((tag, floating)) => {
                if list.push(&tag, floating) {
                    AutoTagStatus {
                        kind,
                        tag: Some(tag),
                        reason: None,
                    }
                } else {
                    AutoTagStatus {
                        kind,
                        tag: None,
                        reason: Some(format!("`{tag}` is already listed")),
                    }
                }
            }
            Err(reason) => AutoTagStatus {
                kind,
                tag: None,
                reason: Some(reason),
            },
        };
        auto_tags.push(status);
    }
    if opts.no_tags {
        if !list.tags.is_empty() {
            notices.push(format!(
                "`--no-tags`: not pushing {}",
                list.tags
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        list = TagList::default();
    } else if list.tags.is_empty() {
        return Err(TagError::NoTags);
    }

    // Annotations (§6).
    let mut annotations = BTreeMap::new();
    let version_annotation = version
        .as_ref()
        .map(|v| v.text.clone())
        .or_else(|| branch.clone())
        .or_else(|| detected.pull_request.map(|n| format!("pr-{n}")));
    if let Some(v) = version_annotation {
        annotations.insert(ANNOTATION_VERSION.to_owned(), v);
    }
    if let Some(rev) = &revision {
        annotations.insert(ANNOTATION_REVISION.to_owned(), rev.clone());
    }
    if let Some(src) = &source {
        annotations.insert(ANNOTATION_SOURCE.to_owned(), src.clone());
    }
    let (created, created_from) = created_time(
        opts,
        env,
        git,
        payload,
        revision.as_deref(),
        now,
        &mut warnings,
        &mut notices,
    )?;
    annotations.insert(ANNOTATION_CREATED.to_owned(), format_utc(created));
    let url = json_str(payload, "/repository/homepage")
        .or_else(|| json_str(payload, "/repository/html_url"));
    // GitHub reports an unrecognised license as `NOASSERTION`: say nothing
    // rather than that.
    let licenses = json_str(payload, "/repository/license/spdx_id")
        .filter(|l| !l.eq_ignore_ascii_case("NOASSERTION"));
    for (key, value) in [
        (ANNOTATION_TITLE, json_str(payload, "/repository/name")),
        (
            ANNOTATION_DESCRIPTION,
            json_str(payload, "/repository/description"),
        ),
        (ANNOTATION_URL, url),
        (ANNOTATION_LICENSES, licenses),
        (
            ANNOTATION_VENDOR,
            json_str(payload, "/repository/owner/login"),
        ),
        (
            ANNOTATION_AUTHORS,
            json_str(payload, "/repository/owner/html_url"),
        ),
    ] {
        if let Some(value) = value {
            annotations.insert(key.to_owned(), value.to_owned());
        }
    }
    apply_overrides(&mut annotations, &opts.annotations);

    let fork_error = fork.as_ref().map(|(h, r)| {
        TagError::ForkPullRequest {
            head_repo: h.clone(),
            repository: r.clone(),
        }
        .to_string()
    });
    Ok(TagPlan {
        run,
        event: event.map(str::to_owned),
        branch,
        default_branch,
        pull_request: detected.pull_request,
        version,
        revision,
        source,
        tags: list.tags,
        guarded: list.guarded,
        auto_tags,
        annotations,
        created_from,
        annotation_overrides: opts.annotations.clone(),
        warnings,
        notices,
        fork_error,
        fork,
    })
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
#[allow(clippy::too_many_arguments)]
fn created_time(
    opts: &TagOptions,
    env: &Env,
    git: &dyn GitInfo,
    payload: Option<&Value>,
    revision: Option<&str>,
    now: i64,
    warnings: &mut Vec<String>,
    notices: &mut Vec<String>,
) -> Result<(i64, String), TagError> {
    if let Some(value) = flag(&opts.created) {
        let secs = parse_time(value).ok_or_else(|| TagError::BadCreated {
            value: value.to_owned(),
        })?;
        return Ok((secs, "--created".to_owned()));
    }
    if let Some(value) = env.get(env::SOURCE_DATE_EPOCH) {
        match value.parse::<i64>() {
            Ok(SOURCE_DATE_EPOCH_PLACEHOLDER) => notices.push(format!(
                "ignoring `{}={SOURCE_DATE_EPOCH_PLACEHOLDER}`, the placeholder nixpkgs shells \
                 export",
                env::SOURCE_DATE_EPOCH
            )),
            Ok(secs) if format_utc_checked(secs).is_some() => {
                return Ok((secs, env::SOURCE_DATE_EPOCH.to_owned()))
            }
            _ => warnings.push(format!(
                "ignoring `{}={value}`: not a time in seconds since the epoch",
                env::SOURCE_DATE_EPOCH
            )),
        }
    }
    if let Some(secs) = revision.and_then(|rev| git.commit_time(rev)) {
        return Ok((secs, "git".to_owned()));
    }
    // The push payload's head commit is only the revision's if the ids agree.
    let head_id = json_str(payload, "/head_commit/id");
    if revision.is_none() || head_id.is_none() || head_id == revision {
        if let Some(secs) = json_str(payload, "/head_commit/timestamp").and_then(parse_rfc3339) {
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

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` to seconds since the epoch.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = std::str::from_utf8(b.get(range)?).ok()?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let sep = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in_month || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && sep(i + 3, b":") => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s.min(59) - offset)
}

/// `YYYY-MM-DDTHH:MM:SSZ`, or `None` outside years 0–9999.
fn format_utc_checked(secs: i64) -> Option<String> {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (0..=9999).contains(&y).then(|| {
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    })
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
