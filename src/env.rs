//! The one place that names environment variables, and [`Env`], a snapshot of
//! them.
//!
//! Library code never calls `std::env::var`: it takes an [`Env`] (or the
//! lookup closure from [`Env::lookup`]) so that tests build the environment
//! they need with [`Env::from_pairs`] instead of mutating the process's. Only
//! `cli` takes the snapshot, once, with [`Env::from_process`]; clap's `env =`
//! attributes reuse the constants here. What the variables *mean* for tags and
//! annotations is `tags`' business, for credentials `registry`'s.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Version to publish (`v1.2.3`, `2024.01.15`); `--version` wins over it.
pub const VERSION: &str = "VERSION";
/// Full ref that triggered a GitHub Actions run (`refs/heads/main`,
/// `refs/tags/v1.2.3`, `refs/pull/7/merge`).
pub const GITHUB_REF: &str = "GITHUB_REF";
/// Short name of [`GITHUB_REF`] (`main`, `v1.2.3`, `7/merge`).
pub const GITHUB_REF_NAME: &str = "GITHUB_REF_NAME";
/// `branch` or `tag`: what [`GITHUB_REF_NAME`] names.
pub const GITHUB_REF_TYPE: &str = "GITHUB_REF_TYPE";
/// Head branch of a pull request (pull-request events only).
pub const GITHUB_HEAD_REF: &str = "GITHUB_HEAD_REF";
/// Event that triggered the run (`push`, `pull_request`, `schedule`, …).
pub const GITHUB_EVENT_NAME: &str = "GITHUB_EVENT_NAME";
/// Path of the JSON file holding the triggering event's payload.
pub const GITHUB_EVENT_PATH: &str = "GITHUB_EVENT_PATH";
/// Commit the run is for (for pull requests, GitHub's merge commit).
pub const GITHUB_SHA: &str = "GITHUB_SHA";
/// `https://github.com`, or a GitHub Enterprise Server's URL.
pub const GITHUB_SERVER_URL: &str = "GITHUB_SERVER_URL";
/// `owner/name` of the repository the workflow runs in.
pub const GITHUB_REPOSITORY: &str = "GITHUB_REPOSITORY";
/// `true` inside GitHub Actions.
pub const GITHUB_ACTIONS: &str = "GITHUB_ACTIONS";
/// Login of the user or app that triggered the run; the default registry
/// user for `ghcr.io`.
pub const GITHUB_ACTOR: &str = "GITHUB_ACTOR";
/// Workflow token; a secret, never printed.
pub const GITHUB_TOKEN: &str = "GITHUB_TOKEN";
/// File that step outputs (`name=value` lines) are appended to.
pub const GITHUB_OUTPUT: &str = "GITHUB_OUTPUT";
/// File that a step's Markdown job summary is appended to.
pub const GITHUB_STEP_SUMMARY: &str = "GITHUB_STEP_SUMMARY";
/// Seconds since the epoch for reproducible timestamps (the `created`
/// annotation); `315532800` is nixpkgs' placeholder and is ignored.
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";
/// Set by most CI systems; selects plain progress lines over bars.
pub const CI: &str = "CI";
/// Directory of Docker's `config.json` (default `~/.docker`).
pub const DOCKER_CONFIG: &str = "DOCKER_CONFIG";
/// Path of a containers-auth.json (podman, skopeo, buildah).
pub const REGISTRY_AUTH_FILE: &str = "REGISTRY_AUTH_FILE";
/// Per-user runtime directory; holds `containers/auth.json`.
pub const XDG_RUNTIME_DIR: &str = "XDG_RUNTIME_DIR";
/// Per-user configuration directory (default `~/.config`).
pub const XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";
/// Per-user cache directory (default `~/.cache`).
pub const XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";
/// The user's home directory.
pub const HOME: &str = "HOME";
/// Any non-empty value turns colour off (<https://no-color.org>).
pub const NO_COLOR: &str = "NO_COLOR";
/// Directory for spool files (default `/tmp`).
pub const TMPDIR: &str = "TMPDIR";

/// A snapshot of environment variables.
///
/// [`Env::get`] treats a value that is empty after trimming as unset:
/// workflows often write `VERSION: ${{ inputs.version }}`, which is `""`
/// when the input is absent. Its `Debug` output redacts secret-looking values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// Snapshots the process environment. Variables whose name or value is
    /// not UTF-8 are left out (none that manifold reads may be).
    pub fn from_process() -> Env {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Env { vars }
    }

    /// An environment holding exactly `pairs` (later pairs win), for tests and
    /// for callers that assemble one.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Env {
        let vars = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Env { vars }
    }

    /// The value of `key`, trimmed; `None` when unset or blank.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The value of `key` exactly as set, blank or not.
    pub fn get_raw(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// A closure doing [`Env::get`], for modules that take a lookup function.
    pub fn lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        move |key| self.get(key).map(str::to_owned)
    }

    /// [`Env::get`] as a path.
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        self.get(key).map(PathBuf::from)
    }

    /// Whether `key` is set to `true` or `1` (case-insensitive).
    pub fn is_true(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    }

    /// Whether this is a GitHub Actions run (`GITHUB_ACTIONS=true`).
    pub fn github_actions(&self) -> bool {
        self.is_true(GITHUB_ACTIONS)
    }

    /// Whether this is a CI run (`CI` set to anything but `false`/`0`, or
    /// GitHub Actions).
    pub fn ci(&self) -> bool {
        let ci = self
            .get(CI)
            .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
        ci || self.github_actions()
    }
}

/// Whether a variable's value may be a credential, so `Debug` must hide it.
fn is_secret_name(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    ["TOKEN", "PASSWORD", "PASSWD", "SECRET", "CREDENTIAL", "AUTH", "KEY"]
        .iter()
        .any(|word| key.contains(word))
        // These name paths, not secrets, and are useful when debugging.
        && key != REGISTRY_AUTH_FILE
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.vars {
            if is_secret_name(k) {
                map.entry(k, &"<redacted>");
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_values_count_as_unset() {
        let env = Env::from_pairs(&[(VERSION, "  "), (GITHUB_REF, ""), (HOME, " /root\n")]);
        assert_eq!(env.get(VERSION), None);
        assert_eq!(env.get(GITHUB_REF), None);
        assert_eq!(env.get(HOME), Some("/root"));
        assert_eq!(env.get_raw(VERSION), Some("  "));
        assert_eq!(env.get_raw(GITHUB_REF), Some(""));
        assert_eq!(env.get_raw(CI), None);
    }

    #[test]
    fn lookup_follows_get() {
        let env = Env::from_pairs(&[(VERSION, "1.2.3"), (CI, "")]);
        let look = env.lookup();
        assert_eq!(look(VERSION).as_deref(), Some("1.2.3"));
        assert_eq!(look(CI), None);
        assert_eq!(look(HOME), None);
    }

    #[test]
    fn later_pairs_win() {
        let env = Env::from_pairs(&[(VERSION, "1"), (VERSION, "2")]);
        assert_eq!(env.get(VERSION), Some("2"));
    }

    #[test]
    fn flags_for_ci() {
        assert!(Env::from_pairs(&[(GITHUB_ACTIONS, "true")]).ci());
        assert!(Env::from_pairs(&[(CI, "true")]).ci());
        assert!(Env::from_pairs(&[(CI, "1")]).ci());
        assert!(!Env::from_pairs(&[(CI, "false")]).ci());
        assert!(!Env::from_pairs(&[(CI, "")]).ci());
        assert!(!Env::from_pairs(&[]).github_actions());
    }

    #[test]
    fn debug_redacts_secrets() {
        let env = Env::from_pairs(&[
            (GITHUB_TOKEN, "ghs_supersecret"),
            ("REGISTRY_PASSWORD", "hunter2"),
            (REGISTRY_AUTH_FILE, "/run/auth.json"),
            (VERSION, "1.2.3"),
        ]);
        let shown = format!("{env:?}");
        assert!(!shown.contains("ghs_supersecret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("/run/auth.json"), "{shown}");
        assert!(shown.contains("1.2.3"), "{shown}");
    }

    #[test]
    fn process_snapshot_sees_path() {
        // PATH is set in every environment the tests run in.
        let env = Env::from_process();
        assert_eq!(env.get_raw("PATH"), std::env::var("PATH").ok().as_deref());
    }
}
