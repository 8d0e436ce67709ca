use super::github::PR_EVENTS;
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
            .payload(
                json!({"pull_request": {"number": 3, "head": {"repo": {"full_name": full_name}}}}),
            )
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
